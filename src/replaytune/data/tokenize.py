"""Tokenizing a stream of documents into a store's files, and the held-out split.

Validation split (deterministic, by document or chunk)
------------------------------------------------------
Unit i (in reader order) gets the key ``u_i = splitmix64(seed * 2**32 + i) / 2**64``,
uniform in [0, 1) and independent of content and of other units. A unit is a document;
in ``val_fraction`` mode a text document longer than ``VAL_CHUNK`` tokens is cut into
chunks of that size, each a unit, so one huge file cannot carry most of a corpus into
validation (a folder of 49 files, one of them 66% of the tokens, held out 67% of its tokens
at f = 0.05 when whole documents were the units; by chunks it holds out about 5%).

* ``val_fraction=f``: unit i is held out iff ``u_i < f`` (about f of the tokens, once units
  are small next to the source); if that holds out none (a small source) and f > 0, the one
  unit with the smallest key is held out, so a source of two or more units always has a
  validation split. Held-out tokens stop at ``max_val_tokens`` (default 50M, above the
  paper's 10,240 sequences of 4,096 tokens); later units go to training. A realised share
  under half or over twice ``f`` is reported (``stats["val_share"]``) with a warning.
* ``val_docs=N``: the N documents with the smallest keys are held out (exactly N). They are
  kept in a max-heap while reading; a document pushed out of it goes to training then.

Neither given: ``val_fraction = 0.01``. Training documents keep reader order, except those
pushed out of the ``val_docs`` heap (appended when pushed) and, in ``val_fraction`` mode, the
smallest-key document seen before the first held-out one (held back, appended at the end
of training unless it becomes the one held-out document). Held-out documents keep reader order. The same source, seed and setting always
give the same split, and no document is in both splits.
"""

from __future__ import annotations

import heapq

import numpy as np

from replaytune.data import chat as chatmod
from replaytune.data.packing import Packer
from replaytune.data.sources import SourceSpec
from replaytune.data.store import StoreWriter
from replaytune.errors import DataError

_MASK64 = (1 << 64) - 1
PREPARE_VERSION = 2  # 2: text documents split into chunks for the held-out split
DEFAULT_MAX_VAL_TOKENS = 50_000_000
VAL_CHUNK = 8192  # tokens: the unit of the held-out split for long text documents

def split_key(seed: int, index: int) -> float:
    """Uniform [0, 1) key of document ``index`` (splitmix64 finalizer of seed and index)."""
    z = ((seed & 0xFFFFFFFF) * (1 << 32) + index + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) / 2.0**64


class _Builder:
    """Tokenizes batches of documents and routes finished documents to the writer."""

    def __init__(self, tok, spec: SourceSpec, writer: StoreWriter, eos: int, *, template, max_length,
                 val_docs, val_fraction, seed, skip_invalid, max_val_tokens=DEFAULT_MAX_VAL_TOKENS,
                 pack_len: int | None = None):
        self.tok, self.spec, self.w, self.eos = tok, spec, writer, eos
        # packing bfd: whole examples into bins of pack_len tokens (data/packing.py)
        self.packers = {s: Packer(writer, s, pack_len, eos, seed) for s in ("train", "val")} if pack_len else None
        self.max_val_tokens = max_val_tokens
        self.units = -1  # reader-order index of the current split unit (a document or a chunk of one)
        self.val_tokens = 0
        self.backend = getattr(tok, "backend_tokenizer", None)
        self.template, self.max_length = template, max_length
        self.val_docs, self.val_fraction, self.seed = val_docs, val_fraction, seed
        self.skip_invalid = skip_invalid
        self.dtype = writer.dtype
        self.masked = spec.kind != "text"
        self.heap: list[tuple] = []
        self.candidate: tuple | None = None  # val_fraction mode: smallest-key training document so far
        self.any_val = False
        self.index = -1  # reader-order index of the current document
        self.open_doc: list[np.ndarray] = []  # pieces of a text document still being read
        self.out: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], [])}
        self.counts = {"truncated": 0, "skipped_invalid": 0, "dropped_trailing_user": 0}
        self.invalid_examples: list[str] = []
        self.loss_tokens = {"train": 0, "val": 0}

    # -------------------------------------------------------------- encoding
    def _encode(self, texts: list[str]) -> list[list[int]]:
        if self.backend is not None:
            return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
        return self.tok(texts, add_special_tokens=False)["input_ids"]

    def process(self, batch: list) -> None:
        if self.spec.kind == "text":
            self._process_text(batch)
        elif self.spec.kind == "chat":
            self._process_chat(batch)
        else:
            self._process_instruction(batch)
        self.flush()

    def _process_text(self, batch: list) -> None:
        ids = self._encode([d.content for d in batch])
        for doc, toks in zip(batch, ids):
            if not doc.cont:
                self._close_text()
                self.index += 1
            self.open_doc.append(np.asarray(toks, dtype=self.dtype))

    def _close_text(self) -> None:
        if self.open_doc:  # EOS joined here: one copy of a long document, not two
            doc = np.concatenate(self.open_doc + [np.array([self.eos], dtype=self.dtype)])
            self.open_doc = []
            if self.val_docs is None and len(doc) > VAL_CHUNK:  # long document: chunks are the units
                for lo in range(0, len(doc), VAL_CHUNK):
                    self.units += 1
                    self._finish(doc[lo: lo + VAL_CHUNK], None, "", self.units, eos=lo + VAL_CHUNK >= len(doc))
            else:
                self.units += 1
                self._finish(doc, None, "", self.units)

    def finish(self) -> None:
        self._close_text()
        for _, neg_i, toks, mask in sorted(self.heap, key=lambda t: -t[1]):
            self._write("val", toks, mask)
        self.heap = []
        if self.candidate is not None:  # no document fell under val_fraction: hold out the smallest key
            self._write("train" if self.any_val or self.index == 0 else "val",
                        self.candidate[2], self.candidate[3])
        self.flush()
        if self.packers is not None:
            for p in self.packers.values():
                p.finish()

    def _checked(self, fn, doc):
        try:
            return fn(doc)
        except chatmod.InvalidExample as exc:
            if not self.skip_invalid:
                raise
            self.counts["skipped_invalid"] += 1
            if len(self.invalid_examples) < 5:
                self.invalid_examples.append(str(exc))
            return None

    def _process_chat(self, batch: list) -> None:
        rendered = []
        for doc in batch:
            self.index += 1
            r = self._checked(self._render_chat, doc)
            if r is not None:
                rendered.append((self.index, doc.where, r))
        texts = [r[0] for _, _, r in rendered if isinstance(r[0], str)]
        if self.backend is not None:
            encs = iter(self.backend.encode_batch(texts, add_special_tokens=False))
        for index, where, (body, regions) in rendered:
            if not isinstance(body, str):  # {% generation %} fallback: ids and mask already
                ids, mask = body, regions
            elif self.backend is not None:
                e = next(encs)
                ids, mask = e.ids, chatmod.region_mask(e.offsets, regions)
            else:
                ids, mask = self._segments(body, regions)
            self._finish(np.asarray(ids, dtype=self.dtype), np.asarray(mask, dtype=np.uint8), where, index)

    def _render_chat(self, doc):
        msgs, dropped = chatmod.check_messages(doc.content, doc.where)
        out = chatmod.render(self.tok, msgs, self.template, doc.where)
        self.counts["dropped_trailing_user"] += int(dropped)
        return out

    def _segments(self, text: str, regions: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        """Tokenizers without offsets: tokenize prompt and reply regions separately."""
        ids, mask, pos = [], [], 0
        for a, b in regions + [(len(text), len(text))]:
            for seg, m in ((text[pos:a], 0), (text[a:b], 1)):
                if seg:
                    t = self.tok(seg, add_special_tokens=False)["input_ids"]
                    ids += t
                    mask += [m] * len(t)
            pos = b
        return ids, mask

    def _process_instruction(self, batch: list) -> None:
        enc = self._encode([d.content[0] for d in batch] + [d.content[1] for d in batch])
        n = len(batch)
        for j, doc in enumerate(batch):
            self.index += 1
            p, c = enc[j], enc[n + j]
            ids = np.asarray(p + c, dtype=self.dtype)
            mask = np.concatenate([np.zeros(len(p), np.uint8), np.ones(len(c), np.uint8)])
            self._finish(ids, mask, doc.where)

    # -------------------------------------------------------------- routing
    def _finish(self, ids: np.ndarray, mask: np.ndarray | None, where: str, index: int | None = None,
                eos: bool = True) -> None:
        """Append EOS (``eos``: the unit ends a document), apply the length limit, assign a split."""
        index = self.index if index is None else index
        if eos and (len(ids) == 0 or ids[-1] != self.eos):
            ids = np.append(ids, np.array([self.eos], dtype=self.dtype))
            if mask is not None:  # learn to stop right after a reply / completion, nowhere else
                mask = np.append(mask, np.uint8(mask[-1] if len(mask) else 0))
        if self.max_length is not None and len(ids) > self.max_length:
            if self.spec.strict:
                raise DataError(
                    f"{where}: example has {len(ids)} tokens (with EOS), over --max-example-length {self.max_length}; "
                    f"shorten it, raise --max-example-length, or drop --strict to truncate it (counted)"
                )
            self.counts["truncated"] += 1
            ids = np.append(ids[: self.max_length - 1], np.array([self.eos], dtype=self.dtype))
            mask = np.append(mask[: self.max_length - 1], np.uint8(0))  # cut mid-reply: do not learn to stop
        u = split_key(self.seed, index)
        if self.val_docs is not None:
            if self.val_docs == 0:
                self._write("train", ids, mask)
            elif len(self.heap) < self.val_docs:
                heapq.heappush(self.heap, (-u, -index, ids, mask))
            elif u < -self.heap[0][0]:
                _, neg_i, t, m = heapq.heapreplace(self.heap, (-u, -index, ids, mask))
                self._write("train", t, m)
            else:
                self._write("train", ids, mask)
        elif u < self.val_fraction and self.val_tokens + len(ids) <= self.max_val_tokens:
            self._write("val", ids, mask)
            self.any_val = True
        elif self.any_val or self.val_fraction == 0:
            self._write("train", ids, mask)
        else:  # hold back the smallest-key document in case no document falls under the fraction
            if self.candidate is None or u < self.candidate[0]:
                self.candidate, old = (u, index, ids, mask), self.candidate
            else:
                old = (u, index, ids, mask)
            if old is not None:
                self._write("train", old[2], old[3])

    def _write(self, split: str, ids: np.ndarray, mask: np.ndarray | None) -> None:
        if split == "val":
            self.val_tokens += len(ids)
        if self.packers is not None:  # alone, an example predicts nothing of its first token
            mask = mask.copy()
            mask[:1] = 0
            self.loss_tokens[split] += int(mask.sum())
            self.packers[split].add(ids, mask)
            return
        docs, masks = self.out[split]
        docs.append(ids)
        if mask is not None:
            masks.append(mask)
            self.loss_tokens[split] += int(mask.sum())

    def flush(self) -> None:
        for split, (docs, masks) in self.out.items():
            if docs:
                self.w.add_many(split, docs, masks if self.masked else None)
        self.out = {"train": ([], []), "val": ([], [])}
