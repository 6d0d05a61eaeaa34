"""A store's fingerprint, and whether a store is fresh for its source, tokenizer and settings.

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
import json
import os
from pathlib import Path
from typing import Any


from replaytune.data.sampling import sample_settings
from replaytune.data.sources import SourceReader, SourceSpec
from replaytune.data.store import FORMAT_VERSION, TokenStore
from replaytune.data.tokenizer import load_tokenizer, tokenizer_info
from replaytune.errors import DataError
from replaytune.data.tokenize import DEFAULT_MAX_VAL_TOKENS, PREPARE_VERSION, VAL_CHUNK


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def store_settings(spec: SourceSpec, val_docs, val_fraction, seed, max_length, template, skip_invalid,
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


def capped_settings(settings: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    """The settings of a store read up to ``max_tokens``, a sampled read (data/sampling.py); none: the whole source."""
    if max_tokens is None:
        return settings
    return {**settings, "max_tokens": max_tokens, "sample": sample_settings(settings["seed"])}


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


def existing_store(out: Path) -> TokenStore | None:
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
