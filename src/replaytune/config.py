"""Validated, frozen run configuration: YAML in, ``--set key=value`` overrides, saved with every run.

A run (``replaytune train CONFIG.yaml``) is a model, named data sources (token stores),
and a list of *phases*. A phase has a step count, a mixture schedule and an LR schedule,
and says whether the optimizer is reset (and the LR re-warmed) at its start. The paper's
settings are configurations of this one shape:

* pre-training: one phase, schedule ``constant: generic``;
* fine-tuning: pre-training phase, then a phase with ``finetune: {target_steps, epochs,
  replay, unit, target, generic}`` and ``reset_optimizer: true``;
* mid-training: one phase with ``two_stage: {gamma, replay, alpha}`` under WSD.

Each field's ``description`` is its documentation (``replaytune train --help-config``).
Validation checks fields and names only; schedules are built from the phases, against the
stores, by the plan (``train/plan.py``), the one place that makes a mixture.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from replaytune.errors import ConfigError
from replaytune.trackers import ReportTo


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_Frozen = Frozen  # the name used inside this module


class SourceConfig(_Frozen):
    store: str = Field(description="Path of a token store built by `replaytune prepare`.")
    max_epochs: float | None = Field(None, gt=0, description="Refuse schedules needing more passes over this source.")
    sequences: int | None = Field(
        None, ge=1, description="Use only N training sequences, from `first` on (fixes the unique data of a "
        "source, e.g. one batch of target data); default: all of them."
    )
    first: int = Field(
        0, ge=0, description="Index of the first training sequence used: disjoint ranges give independent "
        "draws of the unique data (seed-to-seed noise of which target data one has)."
    )
    draw: int | None = Field(
        None, ge=0, description="Shuffle the training sequences with this seed before taking `first` to `first + "
        "sequences`: disjoint ranges of one shuffle are disjoint random draws (not neighbouring documents of "
        "sorted files); default: the store's order."
    )


class DataConfig(_Frozen):
    sources: dict[str, SourceConfig] = Field(description="Named sources; schedules refer to these names.")
    seq_len: int = Field(128, ge=2, description="Tokens per training sequence (the model sees seq_len, predicts seq_len).")
    batch_size: int = Field(16, ge=1, description="Global batch size in sequences.")
    micro_batch_size: int | None = Field(
        None, ge=1, description="Sequences per forward pass per rank; gradient accumulation makes up the rest."
    )
    seed: int = Field(0, description="Data seed: fixes which sequences land in which batch.")
    document_attention: Literal["auto", "block", "full"] = Field(
        "auto", description="Packed windows hold several documents. block: each token attends to its own document "
        "only (positions restart after every EOS; the token after an EOS is not predicted from the previous "
        "document), as if each document ran alone; full: tokens attend to earlier documents of the window too. "
        "auto: block when a source carries a loss mask (chat, instruction), full for plain text (the paper's setup).")


# Kept here (plain data, no torch import) so that validation can name the allowed presets;
# replaytune.model holds the architectures themselves.
PRESET_NAMES = ("tiny", "small", "150m", "300m", "600m")


class LoraSpec(_Frozen):
    """Low-rank adapters (peft LoraConfig) instead of full fine-tuning."""

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' (every linear layer but the output head)."
    )


class ModelConfig(_Frozen):
    preset: str | None = Field(None, description="Named from-scratch architecture: tiny, small, 150m, 300m, 600m.")
    pretrained: str | None = Field(None, description="Local path or hub id of a Hugging Face causal LM to start from.")
    gguf_file: str | None = Field(None, description="With pretrained: load this GGUF file of that folder/repo.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Fields of the transformers config to override.")
    init_seed: int = Field(0, description="Seed of the random initialization (from-scratch models).")
    tokenizer: str | None = Field(None, description="Tokenizer path; defaults to the one the stores were built with.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel (sdpa: PyTorch scaled_dot_product_attention)."
    )
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters (peft) instead of all weights.")
    weights_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="dtype of the frozen pretrained weights (the base under LoRA). Trainable weights and their "
        "AdamW state stay fp32 (mixed precision). auto: bf16 for a LoRA base when the run computes in bf16, else fp32."
    )
    load_in_4bit: bool = Field(
        False, description="QLoRA: load the frozen base in 4-bit NF4 (bitsandbytes, CUDA only) and train LoRA adapters."
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value):
        if value is not None and value not in PRESET_NAMES:
            raise ValueError(f"unknown preset {value!r}; allowed: {', '.join(PRESET_NAMES)}")
        return value

    @model_validator(mode="after")
    def _one_of(self):
        if (self.preset is None) == (self.pretrained is None):
            raise ValueError("set exactly one of model.preset or model.pretrained")
        if self.gguf_file is not None and self.pretrained is None:
            raise ValueError("model.gguf_file needs model.pretrained (the folder or repo holding it)")
        if self.load_in_4bit and (self.pretrained is None or self.lora is None):
            raise ValueError("model.load_in_4bit (QLoRA) trains LoRA adapters on a pretrained base: set model.pretrained "
                             "and model.lora (finetune: --lora)")
        if self.weights_dtype == "bf16" and self.pretrained is None:
            raise ValueError("model.weights_dtype bf16 applies to pretrained weights; a from-scratch model trains in fp32")
        return self


class LRConfig(_Frozen):
    peak: float = Field(3e-4, gt=0, description="Peak learning rate.")
    schedule: Literal["cosine", "wsd", "constant", "linear"] = Field("cosine", description="Shape after warmup.")
    warmup: float = Field(0.01, ge=0, lt=1, description="Fraction of the phase's steps spent in linear warmup.")
    warmup_steps: int | None = Field(
        None, ge=0, description="Warmup length in steps (overrides warmup). Runs of different lengths with the same "
        "warmup_steps and a WSD or constant schedule have the same LR up to their decay, so they can share a prefix."
    )
    decay: float = Field(0.1, ge=0, le=1, description="WSD only: final fraction of steps with linear decay.")
    final_ratio: float = Field(0.0, ge=0, le=1, description="Final LR as a fraction of the peak.")


Side = str | dict[str, float]  # one source by name, or several names with their parts of the side


def side_names(side: Side | None) -> list[str]:
    """The source names of one side of a phase spec (a bare name, a mapping, or none)."""
    if side is None:
        return []
    return [side] if isinstance(side, str) else list(side)


class FinetuneSpec(_Frozen):
    """A fine-tuning phase: target data seen ``epochs`` times, replay fraction rho counted in ``unit``.

    The one spelling of a fine-tuning phase, for a study, a ``train`` YAML and ``replaytune
    finetune`` alike. The plan (``train/plan.py``) resolves it against the stores: the unit's
    amount per sequence of each source, the target data when ``target_steps`` is not given,
    then :func:`replaytune.schedule.finetune` for the weights and the phase length.
    """

    target_steps: int | float | None = Field(
        None, gt=0, description="Unique target data, in batches (steps of pure target); may be a fraction of a "
        "batch. Default: the target sources' training sequences over the batch size.")
    epochs: float = Field(gt=0, description="Passes over the target data (over the whole target side).")
    replay: float = Field(0.0, ge=0, lt=1, description="Replay fraction rho: the generic side's share of every "
                          "batch, counted in `unit`.")
    unit: Literal["sequences", "tokens", "examples"] = Field(
        "sequences", description="What rho counts: sequences (the paper, text), tokens (loss-bearing tokens: a chat "
        "target with masked prompts gets its share of the gradient) or examples (documents starting in a sequence).")
    target: Side = Field("target", description="The target source, or names with their parts of the target side.")
    generic: Side | None = Field("generic", description="The replay source, or names with their parts of the generic "
                                 "side; null or {} for none (rho must then be 0).")
    ramp: str | list[tuple[float, float]] | None = Field(
        None, description="A replay schedule instead of one rho: a preset (linear:A:B, upsample-end:K:A:B, "
        "follow-lr:A:B, stepped:K:A:B) or points [[t, rho], ...] over the phase (t from 0 to 1); rho still counts "
        "`unit`, the target epochs stay exact and the phase length follows (replaytune.ramp).")

    @model_validator(mode="after")
    def _one_rho(self):
        if self.ramp is not None and self.replay != 0:
            raise ValueError(f"give replay ({self.replay:g}) or ramp ({self.ramp!r}), not both")
        return self

    @property
    def sources(self) -> list[str]:
        return side_names(self.target) + side_names(self.generic)


class TwoStageSpec(_Frozen):
    gamma: float = Field(gt=0, le=1, description="Fraction of all steps' data that is target data.")
    replay: float = Field(0.0, ge=0, lt=1, description="Replay fraction rho of Stage 2.")
    alpha: float = Field(1.0, ge=0, le=1, description="Share of the target data placed in Stage 2.")
    target: str = "target"
    generic: str = "generic"


class RampSpec(_Frozen):
    """Mid-training under a replay ramp: gamma of the phase is target data, in the shape of ``1 - rho(t)``."""

    gamma: float = Field(gt=0, le=1, description="Fraction of all steps' data that is target data.")
    shape: str | list[tuple[float, float]] = Field(
        description="A preset (linear:A:B, upsample-end:K:A:B, follow-lr:A:B, stepped:K:A:B) or points [[t, rho], ...]; "
        "the target weight is scaled so the phase holds gamma.")
    target: str = "target"
    generic: str = "generic"


class UniformSpec(_Frozen):
    gamma: float = Field(ge=0, le=1, description="Target weight through the whole phase.")
    target: str = "target"
    generic: str = "generic"


class PhaseConfig(_Frozen):
    name: str = Field("train", description="Phase name, used in metrics and checkpoints.")
    steps: int | None = Field(None, ge=1, description="Steps in this phase (derived for `finetune` schedules).")
    stages: list[dict[str, Any]] | None = Field(None, description="Explicit stages: [{start_step, weights}].")
    constant: str | None = Field(None, description="Train on this one source only.")
    finetune: FinetuneSpec | None = None
    two_stage: TwoStageSpec | None = None
    uniform: UniformSpec | None = None
    ramp: RampSpec | None = None
    lr: LRConfig = LRConfig()
    reset_optimizer: bool = Field(False, description="Fresh optimizer state and LR re-warm at this phase's start.")
    eval_interval: int | None = Field(
        None, ge=1, description="Evaluate every N steps of this phase (overrides eval.interval here), e.g. densely "
        "during a short fine-tuning phase to see over-fitting across epochs."
    )
    eval_at: list[int] = Field(
        default_factory=list, description="Also evaluate after these steps of this phase (phase-relative), e.g. "
        "densely around a switch to target data; steps past the phase's end are ignored."
    )
    seed: int | None = Field(
        None, description="Mixture seed of this phase; default derived from data.seed and the phase index. "
        "Varying it varies this phase's batches only (e.g. fine-tuning seeds after one shared pre-training)."
    )

    @model_validator(mode="after")
    def _one_schedule(self):
        kinds = ("stages", "constant", "finetune", "two_stage", "uniform", "ramp")
        given = [k for k in kinds if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(kinds)} (got {given or 'none'})")
        if self.finetune is None and self.steps is None:
            raise ValueError("steps is required (only a finetune schedule derives its own)")
        return self

    def source_names(self) -> list[str]:
        """The sources this phase's schedule names (no schedule is built: the plan does that)."""
        if self.finetune is not None:
            return self.finetune.sources
        if self.two_stage is not None:
            return [self.two_stage.target, self.two_stage.generic]
        if self.uniform is not None:
            return [self.uniform.target, self.uniform.generic]
        if self.ramp is not None:
            return [self.ramp.target, self.ramp.generic]
        if self.constant is not None:
            return [self.constant]
        return list(dict.fromkeys(name for st in self.stages or [] for name in dict(st.get("weights") or {})))


class OptimConfig(_Frozen):
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = Field(0.1, ge=0, description="AdamW decay; never on norms, embeddings or biases.")
    grad_clip: float = Field(1.0, ge=0, description="Global gradient-norm clip (0 disables).")


class EvalConfig(_Frozen):
    interval: int | None = Field(
        None,
        ge=0,
        description="Evaluate every N steps; 0: only at phase ends and stage switches; "
        "unset: chosen so evaluation costs about 5% of training time.",
    )
    sequences: int = Field(64, ge=1, description="Held-out sequences per source per evaluation (a fixed set).")
    split: bool = Field(
        False, description="Also report each half of every source's evaluation set: `<source>/val` (the first "
        "half, for choices such as the LR or the replay fraction) and `<source>/test` (the second half, for the "
        "reported numbers), so that no reported loss was used to make a choice.")
    batch_size: int = Field(
        32, ge=1, description="Sequences per evaluation forward pass (at most data.micro_batch_size when that is set)."
    )
    skip: list[str] = Field(
        default_factory=list, description="Held-out sets left out of every evaluation, to save its cost: a source's "
        "name (none of it: its loss is null), or '<source>/val' (its validation half: only '<source>/test' is "
        "computed; needs split). A study skips the generic validation half, which no choice uses.")
    train_loss: bool = Field(True, description="Also log training loss per source (from the batch's composition).")
    at_start: bool = Field(False, description="Also evaluate the initial model (step 0).")
    at_stage_switch: bool = Field(True, description="Also evaluate where a phase's mixture changes stage.")


class CheckpointConfig(_Frozen):
    interval: int = Field(0, ge=0, description="Save every N steps (0: only at phase ends).")
    keep: int = Field(2, ge=1, description="Keep the last K checkpoints (save_at ones are never removed).")
    save_at: list[int] = Field(
        default_factory=list, description="Extra global steps to checkpoint and keep (branch points for prefix sharing)."
    )
    final_model: bool = Field(True, description="Save the final model with save_pretrained under out_dir/model.")
    at_end: bool = Field(
        True, description="Checkpoint at every phase end and at the end of the run. false: only the interval and "
        "save_at checkpoints, for short runs that nobody continues (a study of a pretrained model, where the model "
        "and optimizer state outweigh a run's few steps); a run killed before finishing then starts again.")

    @field_validator("save_at")
    @classmethod
    def _positive(cls, value):
        bad = [v for v in value if v < 1]
        if bad:
            raise ValueError(f"steps must be >= 1, got {bad}")
        return sorted(set(value))


class RunConfig(_Frozen):
    name: str = Field("run", description="Run name.")
    out_dir: str = Field("runs/run", description="Run directory: config, metrics.jsonl, record.json, checkpoints.")
    seed: int = Field(0, description="Seed for model init order and dropout; the data seed is data.seed.")
    model: ModelConfig
    data: DataConfig
    phases: list[PhaseConfig] = Field(min_length=1)
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    device: str = Field("auto", description="auto, cpu or cuda.")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on GPU (fp16 with a gradient scaler where bf16 is missing), fp32 on CPU.")
    compile: bool = Field(False, description="torch.compile the model (GPU; costs a minute up front).")
    loss: Literal["auto", "chunked", "full"] = Field(
        "auto", description="How the loss meets the output layer. chunked: logits and cross-entropy a few hundred tokens "
        "at a time, never the whole [tokens x vocabulary] logits tensor (same loss and gradients, a fraction of the "
        "memory); full: the model's logits, then cross-entropy; auto: chunked when the vocabulary has >= 32,000 "
        "entries and the model allows it (Llama-style heads, not under FSDP), else full.")
    report_to: list[ReportTo] = Field(
        default_factory=list, description="Also log to these trackers (Transformers' report_to): tensorboard (event "
        "files under out_dir/tb), wandb, mlflow (default store: out_dir/mlflow.db), trackio; each gets per-source train "
        "and held-out loss, LR, tokens/s, the mixture's share of each source and the resolved config. metrics.jsonl "
        "is always written.")
    tensorboard: bool = Field(False, description="Same as report_to: [tensorboard] (kept for older configs).")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="With several processes (torchrun): replicate (ddp) or shard (fsdp) the model."
    )
    log_interval: int = Field(1, ge=1, description="Write a train line to metrics.jsonl every N steps.")
    progress: bool = Field(True, description="Show a progress bar (rank 0).")

    @model_validator(mode="after")
    def _sources_known(self):
        names = set(self.data.sources)
        for i, phase in enumerate(self.phases):
            unknown = [s for s in phase.source_names() if s not in names]
            if unknown:
                raise ValueError(
                    f"phases.{i} ({phase.name}): source {unknown[0]!r} is not in data.sources; "
                    f"allowed: {', '.join(sorted(names))}"
                )
        for item in self.eval.skip:
            name, _, half = item.partition("/")
            if name not in names or half not in ("", "val"):
                raise ValueError(f"eval.skip: {item!r} is neither a source of data.sources nor '<source>/val'; "
                                 f"sources: {', '.join(sorted(names))}")
            if half and not self.eval.split:
                raise ValueError(f"eval.skip: {item!r} skips a validation half, but eval.split is off (no halves); "
                                 f"set eval.split: true or skip the whole source")
        return self

    def fingerprint(self) -> str:
        return config_hash(self.model_dump(mode="json"))


def config_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------
# Loading, overrides, errors
# ------------------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b.c=value`` (value parsed as YAML); list items by index: ``phases.1.lr.peak=1e-3``."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. phases.0.lr.peak=1e-3")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = _parse_value(value)
        else:
            node[last] = _parse_value(value)
    return out


def format_validation_error(exc: ValidationError, source: str) -> str:
    return "; ".join(f"{source}: {line}" for line in validation_messages(exc))


def validation_messages(exc: ValidationError, at: str = "") -> list[str]:
    """One ``field 'LOC': message`` per error; ``at`` is put before every LOC (a value checked on its own)."""
    lines = []
    for err in exc.errors():
        loc = ".".join([at] * bool(at) + [str(p) for p in err["loc"]])
        msg = err["msg"].removeprefix("Value error, ")
        if err.get("type") == "literal_error" and "expected" in (err.get("ctx") or {}):
            msg = f"must be one of {err['ctx']['expected']}"
        # A whole-model check (e.g. a phase naming an unknown source) names its field itself.
        lines.append(f"field '{loc}': {msg}" if loc else msg)
    return lines


def validate(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping, or a one-line ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def resolve_path(value: str, base: Path) -> str:
    """The one rule for a relative path written in a config file: relative to the file's folder.

    Absolute paths stay. A relative one names ``base / value`` when that exists; otherwise it is
    kept as written: a hub id (``org/name``), or a path the command then reports as missing
    (relative to the current folder, as on the command line).
    """
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    return str(base / p) if (base / p).exists() else value


def load(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    data = read_yaml_mapping(path)
    base = path.parent
    data = apply_overrides(data, overrides or [])
    cfg = validate(data, str(path))
    return resolve_paths(cfg, base)


def resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Store paths in a config file follow :func:`resolve_path` (relative to the file)."""
    sources = {name: src.model_copy(update={"store": resolve_path(src.store, base)}) for name, src in cfg.data.sources.items()}
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"sources": sources})})


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False)
