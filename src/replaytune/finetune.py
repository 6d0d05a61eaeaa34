"""Practical fine-tuning with replay: a pretrained model, a small target set, a generic set, one flag.

``replaytune finetune --model M --target T --replay G --replay-fraction 0.5`` (or the same
as a YAML file, :class:`FinetuneConfig`) does, in order:

1. checks what can be checked cheaply (model path, tokenizer, chat template, sources), so a
   bad input fails before anything is written;
2. tokenizes target and replay with the *model's* tokenizer into token stores under
   ``OUT/data/`` (``replaytune.data.prepare``: fingerprinted, so an unchanged source is not
   rebuilt on the next run); chat/instruction stores carry loss masks;
3. turns the replay fraction into sequence weights (:func:`plan_replay`) and the target
   epochs into a step count;
4. builds a :class:`~replaytune.config.RunConfig` with one phase from the pretrained model and
   runs the one training loop (``replaytune.train``), full fine-tuning or LoRA;
5. moves the Hugging Face model into place (merged, or the adapter), writes the forgetting
   report (:mod:`replaytune.forgetting`) and, last, ``OUT/finetune.json``.

The replay fraction counts loss-bearing tokens
-------------------------------------------
The loop's loss is the mean over every loss-bearing token of the global batch, so a source's
pull on the update is its share of those tokens. A chat sequence whose assistant turns hold
30% of its tokens brings 0.3 L loss tokens; a text sequence brings L. Counting sequences,
rho = 0.5 would give replay text 1 / (1 + 0.3) = 77% of the gradient and the target 23%.
So by default rho is the *token* share: with ``m_i`` loss tokens per sequence of source i
(measured on its store), the sequence weights are::

    w_target ~ (1 - rho) / m_target,   w_generic ~ rho / m_generic   (normalised to sum to 1)

(``replay_unit: sequences`` uses ``m = 1``; ``examples`` uses documents per sequence.)
For text on both sides ``m_target = m_generic = L`` and this is the paper's weighting.

Steps
-----
The target is seen ``epochs`` times whatever rho is: with ``N_t`` target training sequences,
batch B and target weight ``w_t``, ``steps = ceil(N_t * epochs / (B * w_t))``. The target
size in batches, ``N_t / B``, need not be an integer; rounding up to whole steps shows the
target at most one batch's target share more than asked (reported as the realised epochs).
Text only: ``w_t = 1 - rho`` and steps = target_batches * epochs / (1 - rho), as in METHOD.md.

Output directory
----------------
``data/`` (token stores), ``tokenizer/``, ``run/`` (the loop's run: config.yaml,
metrics.jsonl, record.json, checkpoints while training), ``model/`` (merged or full model),
``adapter/`` (LoRA), ``forgetting.json``/``forgetting.md``, and ``finetune.json``, written
last: a directory without it is not finished (``--resume`` continues it).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from replaytune.config import LoraSpec, format_validation_error, read_yaml_mapping
from replaytune.data.store import TokenStore
from replaytune.errors import ConfigError, DataError

TARGET, GENERIC = "target", "generic"
UNITS = ("tokens", "sequences", "examples")
DEFAULT_EPOCHS = {"text": 1.0, "chat": 3.0, "instruction": 3.0}
DEFAULT_LR = {"full": 1e-5, "lora": 1e-4}  # full: the paper's Basque run; LoRA adapters want ~10x more
DEFAULT_REPLAY_FRACTION = 0.5  # METHOD.md: the best rho is most often 0.5
DEFAULT_VAL = {TARGET: 0.05, GENERIC: 0.01}  # held-out share of documents
SUMMARY = "finetune.json"
MARKER = ".replaytune-finetune"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceArg(_Frozen):
    """A target or replay source: a path (file, folder, glob, hub dataset, or a token store)."""

    path: str = Field(description="File, directory, glob, save_to_disk folder, hub dataset, or a prepared token store.")
    kind: Literal["auto", "text", "chat", "instruction"] = Field(
        "auto", description="auto: from the first record's fields (messages -> chat, prompt/completion -> instruction)."
    )
    format: Literal["auto", "txt", "jsonl", "parquet", "arrow", "hf"] = "auto"
    text_field: str = "text"
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    paragraphs: bool = Field(False, description=".txt: blank-line-separated paragraphs are documents.")
    split: str = "train"
    hf_config: str | None = None
    revision: str | None = None
    val: float | None = Field(
        None, gt=0, description="Held-out documents: a fraction (< 1) or a count (>= 1); default 0.05 target, 0.01 replay."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value):
        return {"path": value} if isinstance(value, (str, os.PathLike)) else value


class FinetuneConfig(_Frozen):
    """Everything ``replaytune finetune`` needs; the YAML file's keys are these field names."""

    model: str = Field(description="Local folder, hub id, or a .gguf file of a pretrained causal LM.")
    gguf_file: str | None = Field(None, description="GGUF file inside the model folder.")
    tokenizer: str | None = Field(None, description="Tokenizer folder (default: the model's own).")
    target: SourceArg
    replay: SourceArg | None = None
    replay_fraction: float | None = Field(
        None, ge=0, lt=1, description="rho: replay share of each batch (default 0.5 with a replay source, else 0)."
    )
    replay_unit: Literal["tokens", "sequences", "examples"] = Field(
        "tokens", description="What rho counts: loss-bearing tokens (default), sequences, or examples."
    )
    epochs: float | None = Field(None, gt=0, description="Passes over the target (default 1 for text, 3 for chat/instruction).")
    seq_len: int = Field(2048, ge=2, description="Tokens per packed training sequence.")
    batch_size: int = Field(32, ge=1, description="Global batch in sequences.")
    micro_batch_size: int | None = Field(4, ge=1, description="Sequences per forward pass (gradient accumulation).")
    lr: float | None = Field(None, gt=0, description="Peak LR (default 1e-5 full fine-tuning, 1e-4 LoRA).")
    lr_schedule: Literal["cosine", "wsd", "constant", "linear"] = "cosine"
    warmup: float = Field(0.01, ge=0, lt=1, description="Fraction of steps of linear warmup.")
    final_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters (true, or {r, alpha, dropout, target_modules}).")
    save: Literal["merged", "adapter"] = Field("merged", description="LoRA output: merged model (+ adapter) or the adapter only.")
    chat_template: str | None = Field(None, description="Jinja file, or 'chatml', for a tokenizer without a template.")
    max_length: int | None = Field(None, ge=2, description="Chat/instruction: tokens per example (default seq_len).")
    strict: bool = Field(False, description="Refuse over-long examples and undecodable bytes instead of fixing them.")
    skip_invalid: bool = Field(False, description="Skip (and count) chat examples that break the role rule.")
    eval_sequences: int = Field(64, ge=1, description="Held-out sequences per source for the loss evaluations.")
    eval_interval: int | None = Field(None, ge=0, description="Evaluate every N steps (default: ~5% of the time).")
    eval_tasks: list[str] = Field(default_factory=list, description="lm-evaluation-harness tasks, e.g. xcopa_eu.")
    eval_limit: int | None = Field(None, ge=1, description="Examples per lm-eval task (default: all).")
    activation_checkpointing: bool = Field(False, description="Recompute activations in backward (big models).")
    checkpoint_every: int = Field(0, ge=0, description="Checkpoint every N steps for --resume (0: only at the end).")
    keep_checkpoints: bool = Field(False, description="Keep run/checkpoints after a finished run.")
    output: str = Field("runs/finetune", description="Output directory.")
    name: str = "finetune"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    parallel: Literal["ddp", "fsdp"] = "ddp"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE for the underlying run config (--set).")
    progress: bool = True

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_flag(cls, value):
        if value is True:
            return {}
        return None if value is False else value

    @model_validator(mode="after")
    def _checks(self):
        if self.replay is None and (self.replay_fraction or 0) > 0:
            raise ValueError(f"replay_fraction {self.replay_fraction} needs a replay source (--replay)")
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            object.__setattr__(self, "micro_batch_size", self.batch_size)
        return self

    @property
    def rho(self) -> float:
        if self.replay_fraction is not None:
            return float(self.replay_fraction)
        return DEFAULT_REPLAY_FRACTION if self.replay is not None else 0.0

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR["lora" if self.lora is not None else "full"]


def load_config(path: str | os.PathLike | None = None, values: Mapping[str, Any] | None = None) -> FinetuneConfig:
    """The config file (if any) with ``values`` (command-line flags; None = not given) on top.

    Paths in the file are relative to the file. ``values["target"]`` / ``["replay"]`` /
    ``["lora"]`` may be dicts of sub-fields merged into the file's entries.
    """
    data: dict[str, Any] = {}
    where = "finetune flags"
    if path is not None:
        p = Path(path)
        data = _relative_to(read_yaml_mapping(p), p.parent)
        where = str(p)
    for key, value in (values or {}).items():
        if value is None or (isinstance(value, dict) and not any(v is not None for v in value.values())):
            continue
        if value is True and isinstance(data.get(key), dict):
            continue  # --lora with a `lora: {...}` section in the file: keep its settings
        if isinstance(value, dict):
            old = data.get(key)
            old = {"path": old} if isinstance(old, str) else dict(old or {}) if old is not True else {}
            old.update({k: v for k, v in value.items() if v is not None})
            data[key] = old
        else:
            data[key] = value
    model = data.get("model")
    if isinstance(model, str) and model.endswith(".gguf") and not data.get("gguf_file"):
        data["model"], data["gguf_file"] = str(Path(model).parent), Path(model).name  # a .gguf file path
    try:
        return FinetuneConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None


def _relative_to(data: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(data)

    def fix(value: Any) -> Any:
        if isinstance(value, str) and not Path(value).is_absolute() and (base / value).exists():
            return str(base / value)
        return value

    for key in ("model", "tokenizer", "chat_template"):
        out[key] = fix(out.get(key)) if key in out else None
    for key in (TARGET, "replay"):
        src = out.get(key)
        if isinstance(src, str):
            out[key] = fix(src)
        elif isinstance(src, dict) and "path" in src:
            out[key] = {**src, "path": fix(src["path"])}
    return {k: v for k, v in out.items() if v is not None or k in data}


# ------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------


def label(role: str) -> str:
    """The user's word for a source role (the loop calls the replay source 'generic')."""
    return "replay" if role == GENERIC else role


def is_store(path: str | os.PathLike) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and (p / "meta.json").is_file() and (p / "train.tokens").exists()


def _kind_from_fields(names: list[str], arg: SourceArg, where: str) -> str:
    if arg.messages_field in names:
        return "chat"
    if arg.prompt_field in names and arg.completion_field in names:
        return "instruction"
    if arg.text_field in names:
        return "text"
    raise DataError(
        f"{where}: cannot tell the kind of this source from its fields ({', '.join(sorted(names)[:8])}); "
        f"give it (--target-kind / --replay-kind text|chat|instruction) or name the field"
    )


def detect_kind(arg: SourceArg) -> str:
    """``arg.kind``, or the kind its first record shows (stores: the kind they were built with)."""
    if arg.kind != "auto":
        return arg.kind
    p = Path(arg.path).expanduser()
    if is_store(p):
        meta = json.loads((p / "meta.json").read_text())
        return meta.get("kind") or ("chat" if meta.get("has_loss_mask") else "text")
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    else:  # a glob, or a hub dataset (nothing local to look at)
        import glob

        files = sorted(Path(f) for f in glob.glob(os.path.expanduser(arg.path), recursive=True) if Path(f).is_file())
    if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
        import datasets

        ds = datasets.load_from_disk(str(p))
        ds = ds[arg.split] if isinstance(ds, datasets.DatasetDict) and arg.split in ds else ds
        names = ds.column_names if not isinstance(ds, datasets.DatasetDict) else next(iter(ds.values())).column_names
        return _kind_from_fields(list(names), arg, str(p))
    for f in files:
        name = f.name.lower().removesuffix(".gz")
        if name.endswith(".jsonl") or arg.format == "jsonl":
            import gzip

            opener = gzip.open if f.name.endswith(".gz") else open
            with opener(f, "rt", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError:
                            raise DataError(f"{f}:1: not a JSON line; fix it or pass --format txt") from None
                        return _kind_from_fields(list(row) if isinstance(row, dict) else [], arg, str(f))
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return _kind_from_fields(list(pq.ParquetFile(f).schema_arrow.names), arg, str(f))
        if name.endswith((".txt", ".text", ".md")):
            return "text"
    return "text"  # hub datasets and anything unrecognised: read as text (the reader names a missing field)


@dataclass
class Source:
    """A resolved source: how to read it, or a prepared store to use as it is."""

    role: str
    arg: SourceArg
    kind: str
    store: Path | None = None  # a prepared token store given by the user

    def spec(self, strict: bool):
        from replaytune.data.sources import SourceSpec

        a = self.arg
        return SourceSpec(
            path=a.path, name=self.role, format=a.format, kind=self.kind, text_field=a.text_field,
            messages_field=a.messages_field, prompt_field=a.prompt_field, completion_field=a.completion_field,
            paragraphs=a.paragraphs, strict=strict, split=a.split, hf_config=a.hf_config, revision=a.revision,
        )

    def val(self) -> dict[str, Any]:
        v = self.arg.val if self.arg.val is not None else DEFAULT_VAL[self.role]
        if v >= 1:
            if v != int(v):
                raise ConfigError(f"{self.role}.val {v}: a count of documents must be a whole number (or give a fraction < 1)")
            return {"val_docs": int(v)}
        return {"val_fraction": float(v)}


def resolve_sources(cfg: FinetuneConfig) -> dict[str, Source]:
    out = {}
    for role, arg in ((TARGET, cfg.target), (GENERIC, cfg.replay)):
        if arg is None:
            continue
        if is_store(arg.path):
            out[role] = Source(role, arg, detect_kind(arg), store=Path(arg.path).expanduser())
            continue
        from replaytune.data.sources import SourceReader

        try:
            SourceReader(Source(role, arg, "text").spec(False))  # a missing path fails here, before any writing
            out[role] = Source(role, arg, detect_kind(arg))
        except DataError as exc:
            raise DataError(f"{label(role)} source: {exc}") from None
    return out


# ------------------------------------------------------------------------------------------
# Replay weights and steps
# ------------------------------------------------------------------------------------------


def sequence_units(store: TokenStore, seq_len: int, unit: str, sequences: int | None = None) -> np.ndarray:
    """What each training sequence contributes in ``unit`` (float array [n]).

    tokens: loss-bearing targets of window i, ``mask[i*L + 1 : i*L + L + 1]`` (L for text);
    sequences: 1; examples: documents starting inside the window's inputs ``[i*L, i*L + L)``.
    """
    if unit not in UNITS:
        raise ConfigError(f"replay_unit {unit!r}: must be one of {', '.join(UNITS)}")
    split = store.train
    n = split.num_sequences(seq_len) if sequences is None else int(sequences)
    if unit == "sequences" or n == 0:
        return np.ones(n)
    if unit == "tokens":
        if split.mask is None:
            return np.full(n, float(seq_len))
        return np.asarray(split.mask[1 : n * seq_len + 1], dtype=np.int64).reshape(n, seq_len).sum(axis=1).astype(float)
    starts = np.asarray(split.docs[:-1], dtype=np.int64)
    starts = starts[starts < n * seq_len]
    return np.bincount(starts // seq_len, minlength=n).astype(float)


@dataclass(frozen=True)
class ReplayPlan:
    """Sequence weights and step count of a fine-tuning run with replay fraction rho."""

    replay_fraction: float
    unit: str
    epochs: float
    batch_size: int
    seq_len: int
    sequences: dict[str, int]  # training sequences per source
    units_per_sequence: dict[str, float]
    weights: dict[str, float]  # sequence share of each source in every batch
    steps: int

    @property
    def target_batches(self) -> float:
        return self.sequences[TARGET] / self.batch_size

    def to_dict(self) -> dict[str, Any]:
        w_t = self.weights[TARGET]
        return {
            "replay_fraction": self.replay_fraction,
            "replay_unit": self.unit,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "sequences": dict(self.sequences),
            "units_per_sequence": dict(self.units_per_sequence),
            "weights": dict(self.weights),
            "target_batches": self.target_batches,
            "steps": self.steps,
            "steps_formula": f"ceil({self.sequences[TARGET]} x {self.epochs:g} / ({self.batch_size} x {w_t:.6g})) = {self.steps}",
        }


def plan_replay(
    target: TokenStore,
    generic: TokenStore | None,
    *,
    replay_fraction: float,
    epochs: float,
    seq_len: int,
    batch_size: int,
    unit: str = "tokens",
) -> ReplayPlan:
    """Weights ``w_i ~ share_i / m_i`` (m_i: mean ``unit`` per sequence) and ``steps``.

    Example (token counting): chat target with 9.6 loss tokens per 32-token sequence, text
    replay with 32, rho = 0.5: w_t = (0.5/9.6) / (0.5/9.6 + 0.5/32) = 0.769; 100 target
    sequences x 3 epochs at batch 8 give ceil(300 / (8 x 0.769)) = 49 steps (39 without replay).
    """
    rho = float(replay_fraction)
    if not (0.0 <= rho < 1.0):
        raise ConfigError(f"replay_fraction must be in [0, 1), got {rho:g}")
    if not (epochs > 0 and math.isfinite(epochs)):
        raise ConfigError(f"epochs must be > 0, got {epochs}")
    stores = {TARGET: target} if generic is None else {TARGET: target, GENERIC: generic}
    sequences, units = {}, {}
    for role, store in stores.items():
        n = store.train.num_sequences(seq_len)
        if n < 1:
            raise DataError(
                f"{label(role)} source ({store.path}): {store.train.num_tokens} training tokens, fewer than one sequence of "
                f"{seq_len} + 1; add data or lower --seq-len"
            )
        sequences[role] = n
        units[role] = float(sequence_units(store, seq_len, unit).mean())
    if units[TARGET] <= 0:
        raise DataError(
            f"target source ({target.path}): no {unit} carry loss (every token is masked); check the data, and "
            f"that --max-length does not cut examples before their reply"
        )
    if generic is None:
        if rho > 0:
            raise ConfigError(f"replay_fraction {rho:g} needs a replay source")
        weights = {TARGET: 1.0}
    elif rho == 0:
        weights = {TARGET: 1.0, GENERIC: 0.0}  # kept as a source: its held-out loss measures forgetting
    else:
        if units[GENERIC] <= 0:
            raise DataError(
                f"replay source ({generic.path}): no loss-bearing {unit}, so a replay fraction counted in {unit} "
                f"cannot be met; use a source whose tokens carry loss, or --replay-unit sequences"
            )
        a, b = (1.0 - rho) / units[TARGET], rho / units[GENERIC]
        weights = {TARGET: a / (a + b), GENERIC: b / (a + b)}
    steps = max(1, math.ceil(sequences[TARGET] * epochs / (batch_size * weights[TARGET]) - 1e-9))
    return ReplayPlan(rho, unit, float(epochs), batch_size, seq_len, sequences, units, weights, steps)


def realised_units(mixture, stores: Mapping[str, TokenStore], seq_len: int, unit: str = "tokens", steps: int | None = None) -> dict[str, float]:
    """``unit`` drawn from each source by the first ``steps`` steps of ``mixture`` (exact).

    Source i's draws are the first ``c_i`` entries of its epoch permutations (mixture.py),
    so the sum is ``full_epochs * total + sum over the partial epoch's prefix``.
    """
    consumed = mixture.consumed(mixture.steps if steps is None else steps)
    out = {}
    for i, name in enumerate(mixture.sources):
        n, c = int(mixture.sizes[i]), consumed[name]
        if c == 0:
            out[name] = 0.0
            continue
        per = sequence_units(stores[name], seq_len, unit, n)
        full, rest = divmod(c, n)
        out[name] = float(full * per.sum() + per[mixture.permutation(i, full)[:rest]].sum())
    return out


# The orchestration (prepare, train, outputs) lives in finetune_run.py; its public names are
# reachable from here too, imported on first use (finetune_run imports this module).
_RUN_NAMES = ("FinetuneResult", "build_run_config", "check_model", "load_tokenizer", "prepare_sources", "run_finetune")


def __getattr__(name: str):
    if name in _RUN_NAMES:
        from replaytune import finetune_run

        return getattr(finetune_run, name)
    raise AttributeError(f"module 'replaytune.finetune' has no attribute {name!r}")
