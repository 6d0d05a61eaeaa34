"""Checks made before anything is written or tokenized: the model, the tokenizer, the optional packages, the search."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from replaytune.data.store import TokenStore
from replaytune.errors import ConfigError, DataError
from replaytune.finetune.config import FinetuneConfig, label


def check_model(cfg: FinetuneConfig) -> None:
    """A model path that cannot be a model fails here, before any data is tokenized."""
    from replaytune.hub import looks_like_path
    from replaytune.model import check_4bit

    if cfg.load_in_4bit:
        from replaytune.train.distributed import resolve_device

        check_4bit(resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0))))
    local = Path(cfg.model).expanduser()
    if not local.exists():
        if looks_like_path(cfg.model):
            raise DataError(f"model {cfg.model}: no such file or directory; give a saved model folder, a .gguf file or a hub id")
        from replaytune.hub import require_hub

        require_hub("model", cfg.model)  # a hub id: one quick probe, not a minute of retries
        return
    if cfg.gguf_file:
        if not (local / cfg.gguf_file).is_file():
            raise DataError(f"model {cfg.model}: no GGUF file {cfg.gguf_file!r} in this folder")
    elif local.is_file() or not (local / "config.json").is_file():
        raise DataError(
            f"model {cfg.model}: not a Hugging Face model folder (no config.json); "
            f"for a GGUF model give the .gguf file, or the folder with --gguf-file NAME"
        )


def check_vocab_early(cfg: FinetuneConfig, tok) -> None:
    """A tokenizer with more ids than the model's embedding fails here, before any data is tokenized.

    Read from the model folder's config.json (no weights loaded); GGUF and hub models are
    checked when the model is built (``model.check_vocab``).
    """
    path = Path(cfg.model).expanduser() / "config.json"
    if cfg.gguf_file or not path.is_file():
        return
    try:
        rows = int(json.loads(path.read_text()).get("vocab_size") or 0)
    except (ValueError, OSError):
        return  # the loader gives the precise error
    if rows and len(tok) > rows:
        raise DataError(
            f"vocabulary mismatch: the tokenizer {getattr(tok, 'name_or_path', cfg.tokenizer)} has {len(tok)} ids but the "
            f"model {cfg.model} has {rows} embedding rows; use the model's own tokenizer (drop --tokenizer)"
        )


def model_tokenizer(cfg: FinetuneConfig):
    """The model's tokenizer (or ``cfg.tokenizer``); GGUF models carry theirs in the file."""
    from replaytune.data.tokenizer import load_tokenizer as load

    if cfg.tokenizer:
        return load(cfg.tokenizer)
    if cfg.gguf_file:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(cfg.model, gguf_file=cfg.gguf_file)
        except Exception as exc:  # transformers raises several types for a bad GGUF
            raise DataError(f"model {cfg.model}: cannot read the tokenizer of {cfg.gguf_file} ({type(exc).__name__}: {exc})") from None
        tok.name_or_path = str(Path(cfg.model).expanduser().resolve() / cfg.gguf_file)
        return tok
    return load(cfg.model)


def check_store_tokenizer(role: str, store: TokenStore, tok) -> None:
    """A prepared store must use the model's tokenizer: other ids mean other words to the model."""
    from replaytune.data.tokenizer import tokenizer_fingerprint

    fp = tokenizer_fingerprint(tok)
    if store.tokenizer_fingerprint != fp:
        raise DataError(
            f"{label(role)} source {store.path}: a token store built with tokenizer {store.tokenizer_path} (fingerprint "
            f"{store.tokenizer_fingerprint}), but the model's tokenizer {getattr(tok, 'name_or_path', '')} has fingerprint "
            f"{fp}; its token ids would mean other text to this model, so it cannot be mixed in. Give the raw "
            f"source (text/jsonl/parquet) instead: it is tokenized with the model's tokenizer"
        )


def check_extras(cfg: FinetuneConfig) -> None:
    """The optional packages the settings need (trackers, lm-evaluation-harness) are installed.

    First of the checks: a missing extra refuses the start at once, not after tokenizing, and
    not (``eval_tasks``) after a whole fine-tune that then skips the evaluation asked for.
    """
    from replaytune import trackers

    trackers.require(cfg.report_to)
    if cfg.eval_tasks:
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            raise ConfigError(f"--eval-tasks {','.join(cfg.eval_tasks)} needs lm-evaluation-harness, which is not "
                              f"installed: pip install 'replaytune[eval]', or drop --eval-tasks") from None


def one_candidate(cfg: FinetuneConfig, say: Callable[[str], None]) -> FinetuneConfig:
    """``auto`` over a single rho (and at most one LR) has nothing to search: say so, and fine-tune with it.

    Otherwise the search would train that one candidate through every rung of successive
    halving, which only adds evaluations.
    """
    if not cfg.auto_replay:
        return cfg
    rhos, lrs = sorted(set(cfg.replay_candidates)), sorted(set(cfg.lr_candidates or []))
    if len(rhos) > 1 or len(lrs) > 1:
        return cfg
    lr = lrs[0] if lrs else cfg.lr
    unchecked = "; --max-forgetting is not applied (the forgetting report shows the rise)" if cfg.max_forgetting else ""
    say(f"replay fraction auto: one candidate (rho {rhos[0]:g}" + ("" if not lrs else f", LR {lr:g}")
        + f"), so nothing to search; fine-tuning with it{unchecked}")
    return cfg.model_copy(update={"replay_fraction": float(rhos[0]), "lr": lr})
