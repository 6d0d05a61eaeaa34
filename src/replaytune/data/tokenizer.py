"""Tokenizers: load any Hugging Face tokenizer, fingerprint it, or train a byte-level BPE.

* :func:`load_tokenizer` - a local directory or a hub id through ``AutoTokenizer``. A path
  that looks local (absolute, ``./``, ``~``) and does not exist is an error at once, so a typo
  never turns into a hub lookup.
* :func:`tokenizer_fingerprint` - sha256 of what decides the token ids: the serialized
  ``tokenizer.json`` (vocabulary, merges, normalizer, pre-tokenizer, added tokens) for fast
  tokenizers, the sorted vocabulary otherwise, plus the special tokens and the chat template.
  The same tokenizer saved in two places has one fingerprint.
* :func:`train_tokenizer` - byte-level BPE with the ``tokenizers`` library, one special token
  ``<|endoftext|>`` (EOS, also used as padding), saved with ``save_pretrained`` so
  ``AutoTokenizer`` loads it. Byte-level means no unknown tokens: the 256 byte symbols are
  the initial alphabet and merges add the rest (a vocabulary of 2,048 = 256 bytes + 1 special
  + 1,791 merges). 2k-4k is what CPU-sized models want (measured on a 2-core CPU: an 8k vocabulary
  halves a d128 model's throughput).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

from replaytune.errors import ConfigError, DataError
from replaytune.fsio import replace_dir, temp_dir
from replaytune.hub import looks_like_path

EOS_TOKEN = "<|endoftext|>"
MIN_VOCAB = 257  # 256 byte symbols + EOS


def load_tokenizer(path_or_id: str | os.PathLike) -> Any:
    """A Hugging Face tokenizer from a local directory or a hub id; DataError naming the path."""
    from transformers import AutoTokenizer

    name = str(path_or_id)
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise DataError(f"tokenizer {name}: not a directory (give the folder holding tokenizer.json / tokenizer_config.json)")
        try:
            tok = AutoTokenizer.from_pretrained(str(local))
        except Exception as exc:  # transformers raises OSError/ValueError/KeyError for bad folders
            raise DataError(f"tokenizer {name}: cannot load it ({type(exc).__name__}: {_first_line(exc)})") from None
        tok.name_or_path = str(local.resolve())
        return tok
    if not name or looks_like_path(name):
        raise DataError(f"tokenizer {name}: no such directory; train one with `replaytune tokenizer train` or fix the path")
    from replaytune.hub import require_hub

    require_hub("tokenizer", name)
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # hub errors: not found, offline, gated
        raise DataError(
            f"tokenizer {name}: no such local directory, and loading it from the Hugging Face hub failed "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def tokenizer_fingerprint(tok: Any) -> str:
    """Stable sha256 (16 hex digits) of the tokenizer's content; see the module docstring."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        body = json.dumps(sorted(tok.get_vocab().items()))
    extra = {
        "special": {k: str(v) for k, v in sorted((tok.special_tokens_map or {}).items())},
        "chat_template": getattr(tok, "chat_template", None),
    }
    h = hashlib.sha256(body.encode("utf-8"))
    h.update(json.dumps(extra, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()[:16]


def vocab_size(tok: Any) -> int:
    """Ids the model must embed: the base vocabulary plus added tokens (``len(tok)``)."""
    return int(len(tok))


def eos_id(tok: Any, name: str = "") -> int:
    eid = getattr(tok, "eos_token_id", None)
    if eid is None:
        raise DataError(
            f"tokenizer {name or getattr(tok, 'name_or_path', '')} has no EOS token; documents in a store are "
            f"separated by EOS (set tokenizer.eos_token and save it)"
        )
    return int(eid)


def tokenizer_info(tok: Any) -> dict[str, Any]:
    """What a store records about its tokenizer."""
    return {
        "vocab_size": vocab_size(tok),
        "eos_id": eos_id(tok),
        "fingerprint": tokenizer_fingerprint(tok),
        "path": getattr(tok, "name_or_path", None) or None,
    }


def _training_texts(sources: Iterable[Any], max_bytes: int | None, counter: dict[str, int]) -> Iterator[str]:
    from replaytune.data.sources import SourceReader

    for src in sources:
        reader = SourceReader(src)
        for text in reader.texts():
            if max_bytes is not None and counter["bytes"] >= max_bytes:
                return
            if max_bytes is not None:
                text = text[: max(0, max_bytes - counter["bytes"])]
            counter["bytes"] += len(text.encode("utf-8"))
            counter["docs"] += 1
            yield text


def train_tokenizer(
    sources: Iterable[Any],
    vocab_size: int,
    out_dir: str | os.PathLike,
    *,
    max_bytes: int | None = None,
    min_frequency: int = 2,
    progress: bool = False,
) -> dict[str, Any]:
    """Train a byte-level BPE on ``sources`` (SourceSpec or paths) and save it in HF format.

    The tokenizer is written to a temporary folder beside ``out_dir`` and renamed into place,
    replacing an earlier tokenizer there; a folder holding something else is refused.
    ``max_bytes`` caps the training text (BPE training memory grows with distinct words).
    Returns ``{"path", "vocab_size", "eos_id", "fingerprint", "docs", "bytes"}``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB:
        raise ConfigError(f"--vocab-size {vocab_size}: must be at least {MIN_VOCAB} (256 bytes + EOS)")
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "tokenizer.json").is_file())):
        raise DataError(f"{out}: exists and is not a tokenizer folder; choose another --out")
    sources = list(sources)
    if not sources:
        raise ConfigError("tokenizer training needs at least one source")

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    counter = {"bytes": 0, "docs": 0}
    bpe.train_from_iterator(_training_texts(sources, max_bytes, counter), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out)
    try:
        fast.save_pretrained(str(tmp))
        info = {
            "vocab_size": int(len(fast)),
            "eos_id": int(fast.eos_token_id),
            "fingerprint": tokenizer_fingerprint(fast),
            "docs": counter["docs"],
            "bytes": counter["bytes"],
            "requested_vocab_size": vocab_size,
            "sources": [str(getattr(s, "path", s)) for s in sources],
        }
        (tmp / "replaytune_tokenizer.json").write_text(json.dumps(info, indent=2))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info["path"] = str(out)
    return info
