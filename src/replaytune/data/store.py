"""Token stores: one flat memory-mapped token array per split, document offsets, metadata.

Layout of a store directory::

    meta.json          format, fingerprints, tokenizer, dtype, counts, build settings
    train.tokens       raw little-endian uint16 (vocab <= 65536) or uint32 tokens; EOS ends each document
    train.docs.npy     int64 document start offsets into train.tokens, plus the end (n_docs + 1)
    train.mask         optional uint8 per token: 1 where the token is a loss target (chat/instruction data)
    val.tokens / val.docs.npy / val.mask   the held-out split, same format

Sequences are packed across documents (``packing: bfd`` stores hold whole examples in bins of
L tokens instead, see :mod:`~replaytune.data.packing`; the layout below is the same): sequence i of length L is
``tokens[i*L : i*L + L + 1]`` (L inputs and L next-token targets; consecutive sequences
share one boundary token), so a split of n tokens has ``(n - 1) // L`` sequences.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from replaytune.errors import DataError
from replaytune.fsio import recover_dir, replace_dir, temp_dir

FORMAT_VERSION = 1
SPLITS = ("train", "val")
UNITS = ("tokens", "sequences", "examples")  # what a replay fraction can count


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


@dataclass
class TokenSplit:
    """One split of a store, memory-mapped."""

    tokens: np.ndarray
    docs: np.ndarray
    mask: np.ndarray | None
    packed_len: int | None = None  # ``packing: bfd``: the seq_len its whole-example bins were made for
    where: str = ""

    @property
    def num_tokens(self) -> int:
        return int(len(self.tokens))

    @property
    def num_docs(self) -> int:
        return max(0, int(len(self.docs)) - 1)

    def num_sequences(self, seq_len: int) -> int:
        if self.packed_len is not None and seq_len != self.packed_len:
            raise DataError(
                f"{self.where or 'store'}: packed (bfd) for seq_len {self.packed_len}, not {seq_len}; rebuild it with "
                f"`replaytune prepare --seq-len {seq_len}` (or --packing wrapped), or run with --seq-len {self.packed_len}"
            )
        return max(0, (self.num_tokens - 1) // seq_len)

    def units(self, seq_len: int, unit: str, sequences: int | None = None, first: int = 0) -> np.ndarray:
        """What each training sequence ``first .. first + sequences - 1`` brings in ``unit`` (float array).

        tokens: loss-bearing targets of window i, ``mask[i*L + 1 : i*L + L + 1]`` (L for text);
        sequences: 1; examples: documents starting inside the window's inputs ``[i*L, i*L + L)``.
        A replay fraction counted in tokens weighs a chat source by the tokens that carry loss.
        """
        if unit not in UNITS:
            raise DataError(f"unit {unit!r}: must be one of {', '.join(UNITS)}")
        n = self.num_sequences(seq_len) - first if sequences is None else int(sequences)
        if unit == "sequences" or n <= 0:
            return np.ones(max(n, 0))
        lo = first * seq_len
        if unit == "tokens":
            if self.mask is None:
                return np.full(n, float(seq_len))
            m = np.asarray(self.mask[lo + 1: lo + n * seq_len + 1], dtype=np.int64)
            return m.reshape(n, seq_len).sum(axis=1).astype(float)
        starts = np.asarray(self.docs[:-1], dtype=np.int64)
        starts = starts[(starts >= lo) & (starts < lo + n * seq_len)] - lo
        return np.bincount(starts // seq_len, minlength=n).astype(float)

    def _windows(self, arr: np.ndarray, ids: np.ndarray, seq_len: int) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        n = self.num_sequences(seq_len)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise IndexError(f"sequence id out of range [0, {n}) for seq_len {seq_len}")
        idx = ids[:, None] * seq_len + np.arange(seq_len + 1, dtype=np.int64)[None, :]
        return arr[idx]

    def sequences(self, ids: np.ndarray, seq_len: int) -> np.ndarray:
        """Token windows [len(ids), seq_len + 1] as int64."""
        return self._windows(self.tokens, ids, seq_len).astype(np.int64)

    def masks(self, ids: np.ndarray, seq_len: int) -> np.ndarray | None:
        """Loss masks aligned with :meth:`sequences` (bool), or None for plain text."""
        if self.mask is None:
            return None
        return self._windows(self.mask, ids, seq_len).astype(bool)


class TokenStore:
    """An opened store. ``store.train`` and ``store.val`` are :class:`TokenSplit`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not self.path.exists():
            recover_dir(self.path)  # a swap killed between its renames: the previous store comes back
        if not meta_path.is_file():
            raise DataError(f"{self.path}: not a token store (no meta.json); build it with `replaytune prepare`")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{meta_path}: unreadable store metadata ({exc}); rebuild with `replaytune prepare`") from None
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{self.path}: store format {self.meta.get('format_version')} is not {FORMAT_VERSION}; rebuild it"
            )
        self.dtype = np.dtype(self.meta["dtype"])
        self._splits = {name: self._open_split(name) for name in SPLITS}

    def _open_split(self, name: str) -> TokenSplit:
        tok_path = self.path / f"{name}.tokens"
        n = int(self.meta["splits"][name]["tokens"])
        if n == 0:
            tokens = np.zeros(0, dtype=self.dtype)
        else:
            if not tok_path.is_file() or tok_path.stat().st_size != n * self.dtype.itemsize:
                raise DataError(f"{tok_path}: missing or truncated (expected {n} tokens); rebuild the store")
            tokens = np.memmap(tok_path, dtype=self.dtype, mode="r", shape=(n,))
        docs = np.load(self.path / f"{name}.docs.npy", mmap_mode="r")
        mask = None
        if self.meta.get("has_loss_mask"):
            mask = np.memmap(self.path / f"{name}.mask", dtype=np.uint8, mode="r", shape=(n,)) if n else np.zeros(0, np.uint8)
        settings = self.meta.get("settings", {})
        packed = int(settings["seq_len"]) if settings.get("packing") == "bfd" else None
        return TokenSplit(tokens, docs, mask, packed, str(self.path))

    @property
    def train(self) -> TokenSplit:
        return self._splits["train"]

    @property
    def val(self) -> TokenSplit:
        return self._splits["val"]

    def split(self, name: str) -> TokenSplit:
        if name not in self._splits:
            raise KeyError(f"no split {name!r}; splits are {SPLITS}")
        return self._splits[name]

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["tokenizer"]["eos_id"])

    @property
    def tokenizer_fingerprint(self) -> str:
        return str(self.meta["tokenizer"]["fingerprint"])

    @property
    def tokenizer_path(self) -> str | None:
        return self.meta["tokenizer"].get("path")

    @property
    def has_loss_mask(self) -> bool:
        return bool(self.meta.get("has_loss_mask"))

    @property
    def kind(self) -> str:
        """The source kind the store was built from; stores without the key: chat if masked, else text."""
        return self.meta.get("kind") or ("chat" if self.has_loss_mask else "text")

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, train={self.train.num_tokens} tokens, val={self.val.num_tokens} tokens)"


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a built store (metadata and train tokens), without opening it.

    Lets callers that accept "a source or a store" tell the two apart before choosing how
    to read the path; :class:`TokenStore` then checks the store itself.
    """
    p = Path(path).expanduser()
    return p.is_dir() and (p / "meta.json").is_file() and (p / "train.tokens").exists()


def open_store(path: str | Path, *, tokenizer_fingerprint: str | None = None) -> TokenStore:
    """Open a store; refuse it when it was built with another tokenizer than expected."""
    store = TokenStore(path)
    if tokenizer_fingerprint is not None and store.tokenizer_fingerprint != tokenizer_fingerprint:
        raise DataError(
            f"{store.path}: built with tokenizer {store.tokenizer_path} (fingerprint {store.tokenizer_fingerprint}), "
            f"not the expected one ({tokenizer_fingerprint}); rebuild it with `replaytune prepare`"
        )
    return store


class StoreWriter:
    """Writes a store into a temporary directory beside ``path``; :meth:`commit` renames it in place.

    Nothing appears at ``path`` until commit, so an interrupted build leaves no half store.
    """

    def __init__(self, path: str | Path, vocab_size: int, *, loss_mask: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_dir(self.path)
        self.dtype = token_dtype(vocab_size)
        self.loss_mask = loss_mask
        self._files = {s: open(self.tmp / f"{s}.tokens", "wb") for s in SPLITS}
        self._masks = {s: open(self.tmp / f"{s}.mask", "wb") for s in SPLITS} if loss_mask else {}
        self._docs: dict[str, list[int]] = {s: [0] for s in SPLITS}
        self._n = {s: 0 for s in SPLITS}

    def add(self, split: str, tokens: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Append one document (already ending with EOS) to ``split``."""
        arr = np.asarray(tokens, dtype=self.dtype)
        self._files[split].write(arr.tobytes())
        if self.loss_mask:
            m = np.ones(len(arr), np.uint8) if mask is None else np.asarray(mask, dtype=np.uint8)
            if len(m) != len(arr):
                raise ValueError("mask and tokens differ in length")
            self._masks[split].write(m.tobytes())
        self._n[split] += len(arr)
        self._docs[split].append(self._n[split])

    def add_many(self, split: str, docs: list[np.ndarray], masks: list[np.ndarray] | None = None) -> None:
        """Append several documents (each ending with EOS) with one write per file."""
        if not docs:
            return
        lengths = [len(d) for d in docs]
        m = None
        if self.loss_mask:
            if masks is None:
                m = np.ones(sum(lengths), np.uint8)
            else:
                if [len(x) for x in masks] != lengths:
                    raise ValueError("mask and tokens differ in length")
                m = np.concatenate([np.asarray(x, dtype=np.uint8) for x in masks])
        # One contiguous buffer written through a memoryview: no extra copy of a long document.
        arr = np.ascontiguousarray(docs[0], dtype=self.dtype) if len(docs) == 1 else \
            np.concatenate([np.asarray(d, dtype=self.dtype) for d in docs])
        self._files[split].write(memoryview(arr).cast("B"))
        if m is not None:
            self._masks[split].write(memoryview(m).cast("B"))
        ends = self._n[split] + np.cumsum(lengths)
        self._docs[split].extend(int(e) for e in ends)
        self._n[split] = int(ends[-1])

    def extend_last(self, split: str, tokens: np.ndarray) -> None:
        """Append ``tokens`` (loss mask 0) to the split's last document (a packed split's boundary token)."""
        arr = np.ascontiguousarray(tokens, dtype=self.dtype)
        self._files[split].write(memoryview(arr).cast("B"))
        if self.loss_mask:
            self._masks[split].write(bytes(len(arr)))
        self._n[split] += len(arr)
        self._docs[split][-1] = self._n[split]

    def count(self, split: str) -> int:
        return self._n[split]

    def docs(self, split: str) -> int:
        return len(self._docs[split]) - 1

    def commit(self, meta: Mapping[str, Any]) -> TokenStore:
        for f in list(self._files.values()) + list(self._masks.values()):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for s in SPLITS:
            np.save(self.tmp / f"{s}.docs.npy", np.asarray(self._docs[s], dtype=np.int64))
        full = dict(meta)
        full["format_version"] = FORMAT_VERSION
        full["dtype"] = self.dtype.name
        full["has_loss_mask"] = self.loss_mask
        full["splits"] = {s: {"tokens": self._n[s], "docs": self.docs(s)} for s in SPLITS}
        (self.tmp / "meta.json").write_text(json.dumps(full, indent=2, sort_keys=True))
        replace_dir(self.tmp, self.path)
        return TokenStore(self.path)

    def abort(self) -> None:
        for f in list(self._files.values()) + list(self._masks.values()):
            if not f.closed:
                f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_store(
    path: str | Path,
    train_docs: list[np.ndarray],
    val_docs: list[np.ndarray],
    *,
    vocab_size: int,
    eos_id: int,
    tokenizer_fingerprint: str = "synthetic",
    fingerprint: str = "synthetic",
    masks: Mapping[str, list[np.ndarray]] | None = None,
) -> TokenStore:
    """Write a store from token arrays directly (tests, synthetic data, benchmarks)."""
    with StoreWriter(path, vocab_size, loss_mask=masks is not None) as w:
        for split, docs in (("train", train_docs), ("val", val_docs)):
            for j, d in enumerate(docs):
                w.add(split, d, None if masks is None else masks[split][j])
        meta = {
            "fingerprint": fingerprint,
            "tokenizer": {"vocab_size": vocab_size, "eos_id": eos_id, "fingerprint": tokenizer_fingerprint, "path": None},
        }
        return w.commit(meta)
