"""``prepare``: tokenize a source into a token store, streaming, atomically, fingerprinted.

Pipeline: documents stream from :class:`~replaytune.data.sources.SourceReader`, are grouped
into batches of about ``batch_chars`` characters, tokenized with the tokenizer's batch
encoder (Rust, both cores), get EOS appended (unless the document already ends with it), are
assigned to a split, and are appended to the store's files. Memory is bounded by one batch
plus the held-out documents of ``val_docs`` mode, never the corpus.

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

Fingerprint and freshness
-------------------------
``fingerprint = sha256(source content, tokenizer fingerprint, settings, version)``, where the
source content is the sha256 of every input file (see ``SourceReader.content_fingerprint``).
``prepare`` into a folder holding a store with the same fingerprint returns it at once
("up to date"); otherwise it rebuilds, saying what changed. :func:`verify_store` refuses a
store whose source files, tokenizer or settings no longer match, naming what differs.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from replaytune.data import chat as chatmod
from replaytune.data.sources import SourceReader, SourceSpec
from replaytune.data.store import FORMAT_VERSION, StoreWriter, TokenStore
from replaytune.data.tokenizer import load_tokenizer, tokenizer_info
from replaytune.errors import ConfigError, DataError

PREPARE_VERSION = 2  # 2: text documents split into chunks for the held-out split
DEFAULT_VAL_FRACTION = 0.01
VAL_CHUNK = 8192  # tokens: the unit of the held-out split for long text documents
DEFAULT_MAX_VAL_TOKENS = 50_000_000
_MASK64 = (1 << 64) - 1


def split_key(seed: int, index: int) -> float:
    """Uniform [0, 1) key of document ``index`` (splitmix64 finalizer of seed and index)."""
    z = ((seed & 0xFFFFFFFF) * (1 << 32) + index + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) / 2.0**64


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _settings(spec: SourceSpec, val_docs, val_fraction, seed, max_length, template, skip_invalid,
              max_val_tokens=DEFAULT_MAX_VAL_TOKENS) -> dict[str, Any]:
    return {
        "read": spec.read_settings(),
        "val_docs": val_docs,
        "val_fraction": val_fraction,
        "val_chunk": VAL_CHUNK,  # used in val_fraction mode
        "max_val_tokens": max_val_tokens,
        "seed": seed,
        "max_length": max_length,
        "chat_template_sha256": None if template is None else hashlib.sha256(template.encode()).hexdigest()[:16],
        "skip_invalid": skip_invalid,
    }


def _capped(settings: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    """The settings of a store read up to ``max_tokens`` (none: as before caps existed, same fingerprint)."""
    return settings if max_tokens is None else {**settings, "max_tokens": max_tokens}


def store_fingerprint(content_sha: str, tokenizer_fp: str, settings: dict[str, Any]) -> str:
    return _sha({"source": content_sha, "tokenizer": tokenizer_fp, "settings": settings,
                 "format": FORMAT_VERSION, "prepare": PREPARE_VERSION})[:16]


def _file_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    if "files" not in old or "files" not in new:
        return [] if old.get("sha256") == new.get("sha256") else ["source identity changed"]
    def ident(f):  # capped stores know files by size and modification time, others by their hash
        return f.get("sha256") or (f.get("bytes"), f.get("mtime_ns"))

    a = {f["path"]: ident(f) for f in old["files"]}
    b = {f["path"]: ident(f) for f in new["files"]}
    out = [f"{p} (changed)" for p in sorted(a.keys() & b.keys()) if a[p] != b[p]]
    out += [f"{p} (added)" for p in sorted(b.keys() - a.keys())]
    out += [f"{p} (removed)" for p in sorted(a.keys() - b.keys())]
    if len(out) > 5:
        out = out[:5] + [f"and {len(out) - 5} more"]
    return out


def describe_changes(meta: dict[str, Any], content: dict[str, Any], tinfo: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """What differs between a store's metadata and the current source, tokenizer and settings."""
    out = []
    files = _file_changes(meta.get("source", {}).get("content", {}), content)
    if files:
        out.append("source files changed: " + ", ".join(files))
    old_t = meta.get("tokenizer", {})
    if old_t.get("fingerprint") != tinfo["fingerprint"]:
        out.append(
            f"tokenizer differs: store built with {old_t.get('path')} (fingerprint {old_t.get('fingerprint')}), "
            f"given {tinfo['path']} (fingerprint {tinfo['fingerprint']})"
        )
    old_s = meta.get("settings", {})
    diff = sorted(k for k in set(old_s) | set(settings) if old_s.get(k) != settings.get(k))
    if diff:
        out.append("settings differ: " + ", ".join(f"{k} {old_s.get(k)!r} -> {settings.get(k)!r}" for k in diff))
    return out


class _Builder:
    """Tokenizes batches of documents and routes finished documents to the writer."""

    def __init__(self, tok, spec: SourceSpec, writer: StoreWriter, eos: int, *, template, max_length,
                 val_docs, val_fraction, seed, skip_invalid, max_val_tokens=DEFAULT_MAX_VAL_TOKENS):
        self.tok, self.spec, self.w, self.eos = tok, spec, writer, eos
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
                    f"{where}: example has {len(ids)} tokens (with EOS), over --max-length {self.max_length}; "
                    f"shorten it, raise --max-length, or drop --strict to truncate it (counted)"
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


def _existing_store(out: Path) -> TokenStore | None:
    if not out.exists():
        return None
    if out.is_dir() and not any(out.iterdir()):
        return None
    if not (out / "meta.json").is_file():
        raise DataError(f"{out}: exists and is not a token store; choose another --out or remove it")
    try:
        return TokenStore(out)
    except (DataError, KeyError, OSError, ValueError):
        return None  # a damaged store: rebuild it


def prepare(
    source: SourceSpec | str,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    *,
    val_docs: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    strict: bool | None = None,
    max_length: int | None = None,
    chat_template: str | None = None,
    skip_invalid: bool = False,
    max_val_tokens: int = DEFAULT_MAX_VAL_TOKENS,
    max_tokens: int | None = None,
    batch_chars: int = 1 << 21,
    progress: bool = True,
    force: bool = False,
) -> tuple[TokenStore, dict[str, Any]]:
    """Tokenize ``source`` into a token store at ``out_dir``; return the store and its stats.

    Args:
        source: a :class:`SourceSpec` or a path.
        tokenizer: a tokenizer path / hub id, or a loaded tokenizer.
        val_docs / val_fraction: held-out split (module docstring); at most one.
        seed: seed of the split.
        strict: overrides ``source.strict``: undecodable bytes and examples over
            ``max_length`` become errors instead of counted fixes.
        max_length: chat/instruction only: tokens per example (EOS included); longer ones
            are truncated and counted, or refused when strict.
        chat_template: Jinja text, a file, or ``chatml``; default: the tokenizer's own.
        skip_invalid: skip (and count) chat examples that break the role rule instead of failing.
        max_val_tokens: ``val_fraction`` mode: held-out tokens stop here (later units train).
        max_tokens: stop reading once this many tokens (both splits) are stored: a replay
            source needs only what a run draws, not all of a web-scale corpus. The store is
            then identified by its files' sizes and modification times (hashing every byte
            would read it all) and records what was read (``stats["complete"]``). A store
            built with a larger cap, or complete, serves a smaller one as it is.
        batch_chars: characters per tokenizer batch (~2 MB keeps both cores busy).
        force: rebuild even when up to date.

    Stats: ``docs``/``tokens``/``loss_tokens`` per split, ``replaced_bytes``, ``truncated``,
    ``skipped_invalid``, ``dropped_trailing_user``, ``empty_docs``, ``skipped_files``,
    ``seconds``, ``tokens_per_s``, ``up_to_date`` (True when nothing was rebuilt),
    ``rebuilt_because`` (what changed since the previous build, if any).
    """
    spec = source if isinstance(source, SourceSpec) else SourceSpec(str(source))
    if strict is not None:
        spec = replace(spec, strict=strict)
    if val_docs is not None and val_fraction is not None:
        raise ConfigError("give --val-docs or --val-fraction, not both")
    if val_docs is not None and val_docs < 0:
        raise ConfigError(f"--val-docs {val_docs}: must be >= 0")
    if val_docs is None:
        val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    if max_length is not None:
        if spec.kind == "text":
            raise ConfigError("--max-length applies to chat and instruction data; text is packed across documents")
        if max_length < 2:
            raise ConfigError(f"--max-length {max_length}: must be at least 2")

    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    tinfo = tokenizer_info(tok)
    template = None
    if spec.kind == "chat":
        template = chatmod.resolve_template(tok, chatmod.load_template(chat_template), str(tinfo["path"]))
    reader = SourceReader(spec)
    if max_val_tokens < 0:
        raise ConfigError(f"--max-val-tokens {max_val_tokens}: must be >= 0")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"--max-tokens {max_tokens}: must be >= 1")
    content = reader.content_fingerprint(hash_bytes=max_tokens is None)
    settings = _settings(spec, val_docs, val_fraction, seed, max_length, template, skip_invalid, max_val_tokens)
    out = Path(out_dir).expanduser()
    existing = _existing_store(out)
    if existing is not None and not force and max_tokens is not None:
        # a store read further (a larger cap, or the whole source) serves a smaller cap as it is
        held = existing.meta.get("settings", {}).get("max_tokens")
        if held is None or held >= max_tokens:
            same = content if held is not None else reader.content_fingerprint()
            if existing.fingerprint == store_fingerprint(same["sha256"], tinfo["fingerprint"], _capped(settings, held)):
                return existing, {**existing.meta.get("stats", {}), "up_to_date": True}
    settings = _capped(settings, max_tokens)
    fp = store_fingerprint(content["sha256"], tinfo["fingerprint"], settings)
    if existing is not None and existing.fingerprint == fp and not force:
        return existing, {**existing.meta.get("stats", {}), "up_to_date": True}
    because = describe_changes(existing.meta, content, tinfo, settings) if existing is not None else []

    if max_tokens is not None:  # check the cap often enough to overshoot it by ~1/8 at most (~4 characters a token)
        batch_chars = max(1 << 14, min(batch_chars, max_tokens // 2))
    t0 = time.perf_counter()
    bar = _progress_bar(progress, reader, spec.display_name)
    with StoreWriter(out, tinfo["vocab_size"], loss_mask=spec.kind != "text") as writer:
        b = _Builder(tok, spec, writer, tinfo["eos_id"], template=template, max_length=max_length,
                     val_docs=val_docs, val_fraction=val_fraction, seed=seed, skip_invalid=skip_invalid,
                     max_val_tokens=max_val_tokens)
        batch, chars, shown = [], 0, 0
        complete = True
        for doc in reader.documents():
            batch.append(doc)
            chars += len(doc.content) if isinstance(doc.content, str) else 256
            if chars >= batch_chars:
                b.process(batch)
                batch, chars = [], 0
                shown = _tick(bar, reader, shown)
                if max_tokens is not None and writer.count("train") + writer.count("val") >= max_tokens:
                    complete = False  # stop reading (the source may have ended here too; we do not look)
                    break
        if batch:
            b.process(batch)
        b.finish()
        _tick(bar, reader, shown)
        if bar is not None:
            bar.close()
        if writer.docs("train") == 0:
            raise DataError(
                f"source '{spec.display_name}': all {writer.docs('val')} documents went to the validation split; "
                f"lower --val-docs / --val-fraction"
            )
        seconds = time.perf_counter() - t0
        n_tok = writer.count("train") + writer.count("val")
        share = writer.count("val") / n_tok if n_tok else 0.0
        note = None
        if val_docs is None and val_fraction and not 0.5 * val_fraction <= share <= 2 * val_fraction:
            capped = b.val_tokens >= max_val_tokens or (b.val_tokens and b.val_tokens + VAL_CHUNK > max_val_tokens)
            note = (f"held out {share:.1%} of the tokens, asked {val_fraction:.1%}: "
                    + ("held-out tokens reached --max-val-tokens" if capped else
                       f"the source has few split units ({writer.docs('train') + writer.docs('val')}); "
                       f"use --val-docs N to choose the count"))
            warnings.warn(f"source '{spec.display_name}': {note}")
        stats = {
            "docs": {s: writer.docs(s) for s in ("train", "val")},
            "tokens": {s: writer.count(s) for s in ("train", "val")},
            "loss_tokens": dict(b.loss_tokens) if spec.kind != "text" else {s: writer.count(s) for s in ("train", "val")},
            "replaced_bytes": reader.replaced_bytes,
            "empty_docs": reader.empty_docs,
            "skipped_files": len(reader.skipped_files),
            **b.counts,
            "invalid_examples": b.invalid_examples,
            "input_bytes": reader.total_bytes,
            "val_share": round(share, 6),
            "complete": complete,
            "documents_read": b.index + 1,
            "val_note": note,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(n_tok / seconds, 1) if seconds > 0 else None,
        }
        meta = {
            "fingerprint": fp,
            "name": spec.display_name,
            "kind": spec.kind,
            "tokenizer": tinfo,
            "source": {"path": _abs(spec.path), "mode": reader.mode, "content": content},
            "settings": settings,
            "stats": stats,
            "prepare_version": PREPARE_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        store = writer.commit(meta)
    return store, {**stats, "up_to_date": False, "rebuilt_because": because}


def _abs(path: str) -> str:
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else str(path)


def _progress_bar(progress: bool, reader: SourceReader, name: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=reader.total_bytes or None, unit="B", unit_scale=True, desc=f"prepare {name}", leave=False)


def _tick(bar, reader: SourceReader, shown: int) -> int:
    if bar is not None and reader.bytes_read > shown:
        bar.update(reader.bytes_read - shown)
        return reader.bytes_read
    return shown


def verify_store(store: TokenStore | str | os.PathLike, source: SourceSpec | str, tokenizer: Any = None) -> None:
    """Refuse a store whose source files or tokenizer changed since it was built.

    Recomputes the source's content fingerprint (and the tokenizer's, when given) and
    compares them with the store's metadata; raises DataError naming each difference.
    """
    store = store if isinstance(store, TokenStore) else TokenStore(store)
    spec = source if isinstance(source, SourceSpec) else SourceSpec(str(source))
    content = SourceReader(spec).content_fingerprint()
    problems = [f"source files changed: {', '.join(c)}" for c in [_file_changes(store.meta.get("source", {}).get("content", {}), content)] if c]
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        tinfo = tokenizer_info(tok)
        if tinfo["fingerprint"] != store.tokenizer_fingerprint:
            problems.append(
                f"tokenizer differs: built with {store.tokenizer_path} (fingerprint {store.tokenizer_fingerprint}), "
                f"given {tinfo['path']} (fingerprint {tinfo['fingerprint']})"
            )
    if problems:
        raise DataError(f"{store.path}: out of date: {'; '.join(problems)}; rebuild it with `replaytune prepare`")


def format_stats(name: str, stats: dict[str, Any], path: str | os.PathLike) -> str:
    """A few readable lines for the command line."""
    if stats.get("up_to_date"):
        return f"{name}: up to date ({path}): {stats['tokens']['train']:,} train / {stats['tokens']['val']:,} val tokens"
    lines = [
        f"{name}: wrote {path}",
        f"  docs: {stats['docs']['train']:,} train, {stats['docs']['val']:,} val; "
        f"tokens: {stats['tokens']['train']:,} train, {stats['tokens']['val']:,} val "
        f"({stats['loss_tokens']['train']:,} train tokens carry loss); held out {stats.get('val_share', 0):.1%} of the tokens",
        f"  {stats['seconds']:.1f} s, {stats['tokens_per_s'] or 0:,.0f} tokens/s",
    ]
    if stats.get("complete") is False:
        lines.append(f"  stopped at --max-tokens after {stats['documents_read']:,} documents (the rest was not read)")
    fixes = [f"{k.replace('_', ' ')}: {stats[k]:,}" for k in
             ("replaced_bytes", "truncated", "skipped_invalid", "dropped_trailing_user", "empty_docs", "skipped_files")
             if stats.get(k)]
    if fixes:
        lines.append("  fixes: " + "; ".join(fixes))
    for ex in stats.get("invalid_examples", [])[:3]:
        lines.append(f"  skipped: {ex}")
    if stats.get("rebuilt_because"):
        lines.append("  rebuilt because " + "; ".join(stats["rebuilt_because"]))
    return "\n".join(lines)
