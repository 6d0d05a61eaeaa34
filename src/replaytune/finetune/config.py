"""Settings of ``replaytune finetune`` (:class:`FinetuneConfig`) and the sources they name.

The YAML file's keys are the field names; :func:`load_config` lays command-line flags over
the file. :func:`resolve_sources` turns the target and replay settings into :class:`Source`
objects before anything is written, so a missing path or an undetectable kind fails first.
Reading a source and detecting its kind is the data layer's work
(:mod:`replaytune.data.sources`); prepared stores are opened through
:mod:`replaytune.data.store`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field, ValidationError, field_validator, model_validator

from replaytune.config import Frozen, LoraSpec, format_validation_error, read_yaml_mapping, resolve_path, validation_messages
from replaytune.data import sources as data_sources
from replaytune.data.store import TokenStore, is_store
from replaytune.errors import ConfigError, DataError
from replaytune.finetune.names import hf_names
from replaytune.schedule import GENERIC, TARGET
from replaytune.trackers import ReportTo

DEFAULT_EPOCHS = {"text": 1.0, "chat": 3.0, "instruction": 3.0}
DEFAULT_LR = {"full": 1e-5, "lora": 1e-4}  # full: the paper's Basque run; LoRA adapters want ~10x more
DEFAULT_REPLAY_FRACTION = 0.5  # docs/method.md: the paper's best rho is most often 0.5
DEFAULT_VAL = {TARGET: 0.05, GENERIC: 0.01}  # held-out share of documents
SUMMARY = "finetune.json"
MARKER = ".replaytune-finetune"


# `PATH:W`: a trailing `:` and a plain decimal number is the source's weight; other colons
# (a Windows drive, a hub id's revision) stay in the path.
_WEIGHT = re.compile(r"^(?P<path>.+):(?P<weight>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")
NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # a source name's own part: valid in a mixture and as a folder name


def split_weight(text: str) -> tuple[str, float | None]:
    """``"web.jsonl:0.7"`` -> ``("web.jsonl", 0.7)``; no trailing number (or an existing path) -> ``(text, None)``.

    Only a trailing ``:<number>`` is read as the weight, so ``C:\\data\\web.jsonl:0.7`` and
    ``org/name:rev`` keep their colons; a file or folder that exists under the whole string
    is a path, whatever it ends in.
    """
    m = _WEIGHT.match(text)
    if m is None or Path(text).expanduser().exists():
        _check_not_a_bad_weight(text)
        return text, None
    return m["path"], float(m["weight"])


_DATA_SUFFIXES = (".txt", ".text", ".jsonl", ".json", ".parquet", ".arrow", ".gz", ".zst")


def _check_not_a_bad_weight(text: str) -> None:
    """``web.jsonl:abc``: what precedes the last ``:`` is a data file, so what follows was meant as its weight.

    Raises ValueError naming the weight (rather than letting ``web.jsonl:abc`` be looked for as
    a file, and reported missing). A hub id's ``org/name:rev`` is left alone.
    """
    head, sep, tail = text.rpartition(":")
    if not sep or not head or Path(text).expanduser().exists():
        return
    local = Path(head).expanduser()
    if local.exists() or head.lower().endswith(_DATA_SUFFIXES):
        raise ValueError(f"{text!r}: the weight after ':' must be a number > 0, got {tail!r} (PATH:WEIGHT, "
                         f"e.g. {head}:0.7)")


def _source_entry(value: Any) -> Any:
    """A source written as a string, ``PATH`` or ``PATH:W``, as SourceArg fields."""
    if isinstance(value, os.PathLike):
        return {"path": os.fspath(value)}
    if isinstance(value, str):
        path, weight = split_weight(value)
        return {"path": path} if weight is None else {"path": path, "weight": weight}
    return value


class SourceArg(Frozen):
    """A target or replay source: a path (file, folder, glob, hub dataset, or a token store)."""

    path: str = Field(description="File, directory, glob, save_to_disk folder, hub dataset, or a prepared token store.")
    weight: float = Field(1.0, gt=0, allow_inf_nan=False, description=(
        "With several sources on a side: this source's part of that side's share (normalized within the side); "
        "`PATH:W` on the command line."))
    name: str | None = Field(None, pattern=NAME.pattern, description=(
        "With several sources on a side: the source's name in metrics and reports (side.NAME); default the file stem."))
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

    packing: Literal["auto", "bfd", "wrapped"] = Field("auto", description=(
        "auto: chat/instruction examples packed whole (bfd) into windows of seq_len tokens, text wrapped."))

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value):
        return _source_entry(value)

    def spec(self, name: str = "", kind: str = "text", strict: bool = False) -> data_sources.SourceSpec:
        """How the data layer reads this source as ``kind`` (``auto`` is resolved before, by detection)."""
        return data_sources.SourceSpec(
            path=self.path, name=name, format=self.format, kind=kind, text_field=self.text_field,
            messages_field=self.messages_field, prompt_field=self.prompt_field, completion_field=self.completion_field,
            paragraphs=self.paragraphs, strict=strict, split=self.split, hf_config=self.hf_config, revision=self.revision,
        )


class FinetuneConfig(Frozen):
    """Everything ``replaytune finetune`` needs; the YAML file's keys are these field names."""

    model: str = Field(description="Local folder, hub id, or a .gguf file of a pretrained causal LM.")
    gguf_file: str | None = Field(None, description="GGUF file inside the model folder.")
    tokenizer: str | None = Field(None, description="Tokenizer folder (default: the model's own).")
    target: SourceArg | list[SourceArg] = Field(description="One source, or a list of them (each with a weight).")
    replay: SourceArg | list[SourceArg] | None = Field(None, description="One source, or a list of them (each with a weight).")
    replay_fraction: float | Literal["auto"] | None = Field(
        None, description="rho: replay share of each batch (default 0.5 with a replay source, else 0); 'auto' searches "
        "replay_candidates (and lr_candidates) by held-out target loss at a fraction of the grid's compute."
    )
    replay_schedule: str | list[tuple[float, float]] | None = Field(
        None, description="A replay ramp instead of one rho: linear:A:B, upsample-end:K:A:B, follow-lr:A:B, stepped:K:A:B "
        "or points [[t, rho], ...] (rho still counted in replay_unit; target epochs exact; replaytune.ramp).")

    @model_validator(mode="after")
    def _schedule_alone(self):
        if self.replay_schedule is not None and self.replay_fraction not in (None, "auto"):
            raise ValueError(f"give replay_fraction ({self.replay_fraction}) or replay_schedule, not both")
        if self.replay_schedule is not None and self.replay is None:
            raise ValueError("replay_schedule needs a replay source (--replay)")
        if self.replay_schedule is not None:
            from replaytune.ramp import shape_points
            from replaytune.schedule import ScheduleError

            try:
                shape_points(self.replay_schedule, lr_schedule=self.lr_schedule)
            except ScheduleError as exc:
                raise ValueError(f"replay_schedule (--replay-schedule) {self.replay_schedule}: {exc}") from None
        return self

    replay_candidates: list[float] = Field(
        [0.0, 0.25, 0.5, 0.75, 0.875], description="replay fraction auto: the rho values searched.")
    lr_candidates: list[float] | None = Field(None, description="replay fraction auto: peak LRs searched (default: lr only).")
    max_forgetting: float | None = Field(
        None, gt=0, description="replay fraction auto: only candidates whose held-out generic loss rose by at most this "
        "many nats over the base model.")
    search_margin: float | None = Field(
        None, ge=0, description="replay fraction auto: stop a candidate early once its target loss is worse than the best "
        "by more than this (the seed noise); default: only halving.")
    replay_unit: Literal["tokens", "sequences", "examples"] = Field(
        "tokens", description="What rho counts: loss-bearing tokens (default), sequences, or examples."
    )
    epochs: float | None = Field(None, gt=0, description="Passes over the target (default 1 for text, 3 for chat/instruction).")
    seq_len: int = Field(2048, ge=2, description="Tokens per packed training sequence.")
    document_attention: Literal["auto", "block", "full"] = Field(
        "auto", description="Packed documents attend to themselves only (block) or to earlier ones too (full); "
        "auto: block for chat/instruction data, full for text.")
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
    max_example_length: int | None = Field(
        None, ge=2, description="Chat/instruction: tokens per example, at most seq_len (default seq_len); longer ones are "
        "truncated and counted. Not TRL's max_length, which is seq_len here (packing).")
    strict: bool = Field(False, description="Refuse over-long examples and undecodable bytes instead of fixing them.")
    skip_invalid: bool = Field(False, description="Skip (and count) chat examples that break the role rule.")
    eval_sequences: int = Field(64, ge=1, description="Held-out sequences per source for the loss evaluations.")
    eval_interval: int | None = Field(None, ge=0, description="Evaluate every N steps (default: ~5% of the time).")
    eval_tasks: list[str] = Field(default_factory=list, description="lm-evaluation-harness tasks, e.g. xcopa_eu.")
    eval_include: list[str] = Field(
        default_factory=list, description="Folders of lm-evaluation-harness task YAML files (its include_path), searched "
        "for eval_tasks before the harness's own tasks.")
    eval_limit: int | None = Field(None, ge=1, description="Examples per lm-eval task (default: all).")
    activation_checkpointing: bool = Field(False, description="Recompute activations in backward (big models).")
    checkpoint_every: int = Field(0, ge=0, description="Checkpoint every N steps for --resume (0: only at the end).")
    keep_checkpoints: bool = Field(False, description="Keep run/checkpoints after a finished run.")
    save_total_limit: int | None = Field(
        None, ge=1, description="Keep the last N checkpoints under run/checkpoints, also after a finished run "
        "(Transformers' name; default: the last one, removed at the end unless keep_checkpoints).")
    log_interval: int = Field(1, ge=1, description="Write a train line (and log to the trackers) every N steps.")
    resume_from_checkpoint: bool | str | None = Field(
        None, exclude=True, description="Transformers' name for --resume: true, or the latest checkpoint of the "
        "output's run (a fine-tune continues from its latest checkpoint only).")
    output: str = Field("runs/finetune", description="Output directory.")
    name: str = "finetune"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Compute precision: auto is bf16 autocast on GPU (fp16 + gradient scaler without bf16), fp32 on CPU.")
    weights_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Frozen base weights (LoRA): auto is bf16 when computing in bf16. Trainable weights stay fp32."
    )
    load_in_4bit: bool = Field(False, description="QLoRA: 4-bit NF4 base through bitsandbytes (CUDA only; needs lora).")
    parallel: Literal["ddp", "fsdp"] = "ddp"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE for the underlying run config (--set).")
    report_to: list[ReportTo] = Field(default_factory=list, description="Trackers to log to.")
    progress: bool = True
    save_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="dtype of the saved model: auto is the base model's own (fp32 when it names none).")
    push_to_hub: bool = Field(False, description="Upload OUT's model files to the hub repository hub_model_id.")
    hub_model_id: str | None = Field(None, description="OWNER/NAME of the hub repository (push_to_hub).")
    hub_private_repo: bool = Field(False, description="Create the hub repository private.")

    @model_validator(mode="after")
    def _hub_repository(self):
        if self.push_to_hub and not self.hub_model_id:  # refused before training, not after it
            raise ValueError("push_to_hub needs hub_model_id OWNER/NAME (--hub_model_id)")
        return self

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_flag(cls, value):
        if value is True:
            return {}
        return None if value is False else value

    @field_validator("report_to", mode="before")
    @classmethod
    def _tracker_list(cls, value):
        if isinstance(value, str):  # `report_to: tensorboard,wandb` (or none), as Transformers takes it
            return [t.strip() for t in value.split(",") if t.strip() and t.strip() != "none"]
        return value

    @field_validator("eval_tasks", mode="before")
    @classmethod
    def _task_list(cls, value):
        if isinstance(value, str):  # `eval_tasks: a,b` in a file, as on the command line
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("eval_include", mode="before")
    @classmethod
    def _folder_list(cls, value):
        return [str(value)] if isinstance(value, (str, os.PathLike)) else value  # one folder

    @model_validator(mode="before")
    @classmethod
    def _source_lists(cls, data):
        """Each source checked on its own, its errors naming ``target.kind`` or ``replay.1.weight``; a list of one is that source."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in (TARGET, "replay"):
            value = data.get(key)
            if value is None:
                continue
            if not isinstance(value, (list, tuple)):
                data[key] = _check_source(value, key)
                continue
            if not value:
                raise ValueError(f"{key}: an empty list; give at least one source" if key == TARGET
                                 else "replay: an empty list; give a source or leave replay out")
            items = [_check_source(item, f"{key}.{i}") for i, item in enumerate(value)]
            names = [a.name for a in items if a.name is not None]
            dup = next((n for n in names if names.count(n) > 1), None)
            if dup is not None:
                raise ValueError(f"{key}: two sources are named {dup!r}; give each its own name")
            data[key] = items[0] if len(items) == 1 else items
        return data

    @model_validator(mode="after")
    def _checks(self):
        if self.replay_fraction == "auto":
            if self.replay is None:
                raise ValueError("replay_fraction auto needs a replay source (--replay)")
            bad = [r for r in self.replay_candidates if not 0 <= r < 1]
            if bad or not self.replay_candidates:
                raise ValueError(f"replay_candidates must be a non-empty list in [0, 1), got {self.replay_candidates}")
        elif self.replay_fraction is not None and not 0 <= self.replay_fraction < 1:
            raise ValueError(f"replay_fraction must be in [0, 1) or 'auto', got {self.replay_fraction}")
        elif self.replay is None and (self.replay_fraction or 0) > 0:
            raise ValueError(f"replay_fraction {self.replay_fraction} needs a replay source (--replay)")
        if self.load_in_4bit and self.lora is None:
            raise ValueError("load_in_4bit (QLoRA) trains LoRA adapters on the 4-bit base: add --lora")
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            object.__setattr__(self, "micro_batch_size", self.batch_size)
        return self

    @property
    def target_sources(self) -> list[SourceArg]:
        return list(self.target) if isinstance(self.target, list) else [self.target]

    @property
    def replay_sources(self) -> list[SourceArg]:
        if self.replay is None:
            return []
        return list(self.replay) if isinstance(self.replay, list) else [self.replay]

    @property
    def auto_replay(self) -> bool:
        return self.replay_fraction == "auto"

    @property
    def rho(self) -> float:
        if self.replay_fraction == "auto":
            raise ValueError("replay fraction auto: the search chooses rho (replaytune.finetune.search)")
        if self.replay_fraction is not None:
            return float(self.replay_fraction)
        return DEFAULT_REPLAY_FRACTION if self.replay is not None else 0.0

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR["lora" if self.lora is not None else "full"]


def _check_source(value: Any, at: str) -> SourceArg:
    try:
        return SourceArg.model_validate(value)
    except ValidationError as exc:
        raise ValueError("; ".join(validation_messages(exc, at))) from None


def load_config(path: str | os.PathLike | None = None, values: Mapping[str, Any] | None = None) -> FinetuneConfig:
    """The config file (if any) with ``values`` (command-line flags; None = not given) on top.

    Paths in the file are relative to the file. ``values["target"]`` / ``["replay"]`` /
    ``["lora"]`` may be dicts of sub-fields merged into the file's entries (into each source
    of a file's list of sources when no path is given); a list of sources replaces the file's.
    """
    data: dict[str, Any] = {}
    where = "finetune flags"
    if path is not None:
        p = Path(path)
        where = str(p)
        data = _relative_to(hf_names(read_yaml_mapping(p), where), p.parent)
    for key, value in (values or {}).items():
        if value is None or (isinstance(value, dict) and not any(v is not None for v in value.values())):
            continue
        if value is True and isinstance(data.get(key), dict):
            continue  # --lora with a `lora: {...}` section in the file: keep its settings
        if isinstance(value, dict):
            given = {k: v for k, v in value.items() if v is not None}
            old = data.get(key)
            if isinstance(old, list) and "path" not in given:  # --replay-kind over the file's list: each source
                data[key] = [{**_as_fields(item), **given} for item in old]
                continue
            old = _as_fields(old) if not isinstance(old, list) else {}
            old.update(given)
            data[key] = old
        elif isinstance(value, list) and key in (TARGET, "replay"):  # several sources: they replace the file's
            data[key] = [{k: v for k, v in item.items() if v is not None} if isinstance(item, dict) else item for item in value]
        else:
            data[key] = value
    model = data.get("model")
    if isinstance(model, str) and model.endswith(".gguf") and not data.get("gguf_file"):
        data["model"], data["gguf_file"] = str(Path(model).parent), Path(model).name  # a .gguf file path
    try:
        return FinetuneConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None


def _as_fields(entry: Any) -> dict[str, Any]:
    """A file's entry (a path string, a mapping, ``true`` or nothing) as a dict of fields."""
    if isinstance(entry, str):
        return {"path": entry}
    return dict(entry) if isinstance(entry, dict) else {}


def _relative_to(data: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(data)

    def fix(value: Any) -> Any:
        return resolve_path(value, base) if isinstance(value, str) else value

    for key in ("model", "tokenizer", "chat_template"):
        out[key] = fix(out.get(key)) if key in out else None
    if isinstance(out.get("eval_include"), list):
        out["eval_include"] = [fix(v) for v in out["eval_include"]]
    elif isinstance(out.get("eval_include"), str):
        out["eval_include"] = fix(out["eval_include"])

    def fix_source(src: Any) -> Any:
        if isinstance(src, str):
            if fix(src) != src:  # the whole string is a path beside the file
                return {"path": fix(src)}
            src = _source_entry(src)  # PATH:W
        if isinstance(src, dict) and "path" in src:
            return {**src, "path": fix(src["path"])}
        return src

    for key in (TARGET, "replay"):
        src = out.get(key)
        out[key] = [fix_source(s) for s in src] if isinstance(src, list) else fix_source(src)
    return {k: v for k, v in out.items() if v is not None or k in data}


# ------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------


def label(role: str) -> str:
    """The user's word for a source role (the loop calls the replay source 'generic')."""
    return "replay" if role == GENERIC else role


def source_names(cfg: FinetuneConfig) -> dict[str, tuple[str, SourceArg]]:
    """Every source's name in the mixture, metrics and ``OUT/data/<name>``, with its side and settings.

    One source on a side is named as the side (``target``, ``generic``). Several are
    ``<side>.<name>``, ``name`` being the source's own ``name`` or its path's stem (``web`` for
    ``data/web.jsonl``, ``fineweb`` for ``org/fineweb``, the folder for a glob), letters,
    digits, ``_`` and ``-`` only, with ``-2``, ``-3`` added to repeats in the order given.
    Target sources come first, then replay sources, each side in the order given.
    """
    out: dict[str, tuple[str, SourceArg]] = {}
    for side, args in ((TARGET, cfg.target_sources), (GENERIC, cfg.replay_sources)):
        if len(args) == 1:
            out[side] = (side, args[0])
            continue
        taken = {a.name for a in args if a.name is not None}  # a given name is kept as it is
        names = []
        for i, arg in enumerate(args, 1):
            own = arg.name
            if own is None:
                stem = _stem(arg.path) or str(i)
                own, k = stem, 2
                while own in taken:
                    own, k = f"{stem}-{k}", k + 1
                taken.add(own)
            names.append(own)
        for own, arg in zip(names, args):
            out[f"{side}.{own}"] = (side, arg)
    return out


def _stem(path: str) -> str:
    """A readable name for a source path: the last part without glob characters, less its suffix."""
    parts = [p for p in re.split(r"[\\/]+", path) if p and not any(c in p for c in "*?[")]
    if not parts:
        return ""
    last = parts[-1]
    stem = last.split(".", 1)[0] if not last.startswith(".") else last
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")


def detect_kind(arg: SourceArg, reader: data_sources.SourceReader | None = None) -> str:
    """``arg.kind`` if given; a store's own kind; else what the source's first record shows.

    The last is :func:`replaytune.data.sources.detect_kind`, which looks at the inputs the
    reader will read; pass ``reader`` when the source is already resolved.
    """
    if arg.kind != "auto":
        return arg.kind
    if is_store(arg.path):
        return TokenStore(Path(arg.path).expanduser()).kind
    return data_sources.detect_kind(reader or arg.spec())


@dataclass
class Source:
    """A resolved source: how to read it, or a prepared store to use as it is.

    ``role`` is its side (``target`` or ``generic``), ``name`` its name in the mixture
    (:func:`source_names`; the side's name when the side has one source).
    """

    role: str
    arg: SourceArg
    kind: str
    store: Path | None = None  # a prepared token store given by the user
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.role

    def spec(self, strict: bool) -> data_sources.SourceSpec:
        return self.arg.spec(self.name, self.kind, strict)

    def val(self) -> dict[str, Any]:
        v = self.arg.val if self.arg.val is not None else DEFAULT_VAL[self.role]
        if v >= 1:
            if v != int(v):
                raise ConfigError(f"{self.name}.val {v}: a count of documents must be a whole number (or give a fraction < 1)")
            return {"val_docs": int(v)}
        return {"val_fraction": float(v)}


def resolve_sources(cfg: FinetuneConfig) -> dict[str, Source]:
    """Every source by name (:func:`source_names`) with its kind; a missing path or an unknown kind fails here, before any writing."""
    out = {}
    for name, (role, arg) in source_names(cfg).items():
        if is_store(arg.path):
            out[name] = Source(role, arg, detect_kind(arg), store=Path(arg.path).expanduser(), name=name)
            continue
        try:
            reader = data_sources.SourceReader(arg.spec(name))
            if reader.mode == "hf" and not Path(arg.path).expanduser().exists():
                from replaytune.hub import require_hub

                require_hub("dataset", arg.path)  # before anything is written, not when it is first read
            out[name] = Source(role, arg, detect_kind(arg, reader), name=name)
        except DataError as exc:
            raise DataError(f"{label(name)} source: {exc}") from None
    return out
