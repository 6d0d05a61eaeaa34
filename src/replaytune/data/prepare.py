"""``prepare``: tokenize a source into a token store, streaming, atomically, fingerprinted.

Pipeline: documents stream from :class:`~replaytune.data.sources.SourceReader`, are grouped
into batches of about ``batch_chars`` characters, tokenized with the tokenizer's batch
encoder (Rust, both cores), get EOS appended (unless the document already ends with it), are
assigned to a split, and are appended to the store's files. Memory is bounded by one batch
plus the held-out documents of ``val_docs`` mode, never the corpus.

Its parts: :mod:`~replaytune.data.tokenize` (batches of documents to tokens, the held-out
split, the store's files) and :mod:`~replaytune.data.freshness` (the fingerprint, what changed,
:func:`verify_store`). This module drives them: read, tokenize, cap, report.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from replaytune.data import chat as chatmod
from replaytune.data.sources import SourceReader, SourceSpec
from replaytune.data.store import StoreWriter, TokenStore
from replaytune.data.tokenizer import load_tokenizer, tokenizer_info
from replaytune.data.freshness import capped_settings, describe_changes, existing_store, store_fingerprint, store_settings
from replaytune.data.freshness import verify_store  # noqa: F401  (part of this module's interface)
from replaytune.data.packing import MODES as PACKINGS
from replaytune.data.tokenize import DEFAULT_MAX_VAL_TOKENS, PREPARE_VERSION, VAL_CHUNK, _Builder
from replaytune.data.tokenize import split_key  # noqa: F401  (part of this module's interface)
from replaytune.errors import ConfigError, DataError

DEFAULT_VAL_FRACTION = 0.01


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
    packing: str | None = None,
    seq_len: int | None = None,
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
            source needs only what a run draws, not all of a web-scale corpus. A capped read is
            a seeded sample of the source, not its head (:mod:`~replaytune.data.sampling`). The store is
            then identified by its files' sizes and modification times (hashing every byte
            would read it all) and records what was read (``stats["complete"]``). A store
            built with a larger cap, or complete, serves a smaller one as it is.
        packing: ``bfd`` (chat/instruction: whole examples in bins of ``seq_len`` tokens, padded and
            masked, see :mod:`~replaytune.data.packing`; the store then serves that ``seq_len`` only)
            or ``wrapped`` (one stream cut every ``seq_len`` tokens). Default: ``bfd`` for
            chat/instruction when ``seq_len`` is given, else ``wrapped``. Under ``bfd`` an example
            longer than ``seq_len`` keeps its first ``seq_len`` tokens (counted as ``truncated``).
        seq_len: the training sequence length (``bfd`` needs it).
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
            raise ConfigError("--max-example-length applies to chat and instruction data; text is packed across documents")
        if max_length < 2:
            raise ConfigError(f"--max-example-length {max_length}: must be at least 2")

    packing = packing or ("bfd" if spec.kind != "text" and seq_len is not None else "wrapped")
    if packing not in PACKINGS:
        raise ConfigError(f"--packing {packing!r}: choose {' or '.join(PACKINGS)}")
    if packing == "bfd":
        if spec.kind == "text":
            raise ConfigError("--packing bfd keeps chat/instruction examples whole; text is packed wrapped (--packing wrapped)")
        if seq_len is None or seq_len < 2:
            raise ConfigError(f"--packing bfd needs --seq-len N (N >= 2), the training sequence length; got {seq_len}")
        max_length = seq_len if max_length is None else min(max_length, seq_len)

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
    settings = store_settings(spec, val_docs, val_fraction, seed, max_length, template, skip_invalid, max_val_tokens)
    if packing == "bfd":  # wrapped stores keep the settings (and fingerprints) they had before packing existed
        settings = {**settings, "packing": "bfd", "seq_len": seq_len}
    out = Path(out_dir).expanduser()
    existing = existing_store(out)
    if existing is not None and not force and max_tokens is not None:
        # a store read further (a larger cap, or the whole source) serves a smaller cap as it is
        held = existing.meta.get("settings", {}).get("max_tokens")
        if held is None or held >= max_tokens:
            same = content if held is not None else reader.content_fingerprint()
            if existing.fingerprint == store_fingerprint(same["sha256"], tinfo["fingerprint"], capped_settings(settings, held)):
                return existing, {**existing.meta.get("stats", {}), "up_to_date": True}
    settings = capped_settings(settings, max_tokens)
    fp = store_fingerprint(content["sha256"], tinfo["fingerprint"], settings)
    if existing is not None and existing.fingerprint == fp and not force:
        return existing, {**existing.meta.get("stats", {}), "up_to_date": True}
    because = describe_changes(existing.meta, content, tinfo, settings) if existing is not None else []

    if max_tokens is not None:  # a sampled read (data/sampling.py), seeded like the split
        reader.sample_seed = seed
    if max_tokens is not None:  # check the cap often enough to overshoot it by ~1/8 at most (~4 characters a token)
        batch_chars = max(1 << 14, min(batch_chars, max_tokens // 2))
    t0 = time.perf_counter()
    bar = _progress_bar(progress, reader, spec.display_name)
    with StoreWriter(out, tinfo["vocab_size"], loss_mask=spec.kind != "text") as writer:
        b = _Builder(tok, spec, writer, tinfo["eos_id"], template=template, max_length=max_length,
                     val_docs=val_docs, val_fraction=val_fraction, seed=seed, skip_invalid=skip_invalid,
                     max_val_tokens=max_val_tokens, pack_len=seq_len if packing == "bfd" else None)
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
            "files_read": reader.files_read,
            "val_note": note,
            "packing": _packing_stats(packing, seq_len, b, writer),
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


def _packing_stats(packing: str, seq_len: int | None, b: _Builder, writer: StoreWriter) -> dict[str, Any]:
    """``bfd``: bins per split and the non-pad share of the stored tokens (the packing efficiency)."""
    if packing != "bfd":
        return {"mode": packing}
    real = sum(p.real for p in b.packers.values())
    total = writer.count("train") + writer.count("val")
    return {"mode": "bfd", "seq_len": seq_len, "bins": {s: p.bins for s, p in b.packers.items()},
            "fill": round(real / total, 6) if total else 0.0}


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
    pk = stats.get("packing") or {}
    if pk.get("mode") == "bfd":
        lines.append(f"  packing bfd: whole examples in {pk['bins']['train']:,} + {pk['bins']['val']:,} windows of "
                     f"{pk['seq_len']} tokens, {pk['fill']:.1%} of the tokens are not padding")
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
