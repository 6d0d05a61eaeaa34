"""A study's settings: the grids of the paper's controlled experiment, its presets, and the loader.

See :mod:`replaytune.study.runs` for the runs these settings build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from replaytune.study import ramps as study_ramps
from replaytune.config import EvalConfig, ModelConfig, OptimConfig
from replaytune.config import Frozen as _Frozen
from replaytune.trackers import ReportTo


class PretrainSpec(_Frozen):
    lr: float = Field(3e-3, gt=0, description="Peak LR of pre-training.")
    schedule: Literal["cosine", "wsd", "constant", "linear"] = Field(
        "wsd", description="WSD lets runs of different pre-training length share the stable part."
    )
    warmup: float = 0.01
    decay: float = 0.1


class FinetuneGrid(_Frozen):
    epochs: float = Field(32, gt=0, description="Passes over the target data in fine-tuning.")
    replay: list[float] = Field([0.0, 0.5, 0.75], description="Replay fractions rho; 0 is the baseline.")
    lrs: list[float] = Field([3e-4, 1e-3], description="Fine-tuning peak LRs; the best per rho is kept.")
    schedule: Literal["cosine", "wsd", "constant", "linear"] = "cosine"
    warmup: float = 0.01


class MidtrainGrid(_Frozen):
    epochs: float = Field(32, gt=0, description="Passes over the target data (gamma = T * epochs / steps).")
    replay: list[float] = Field([0.0, 0.25, 0.5, 0.75], description="Stage 2 replay fractions rho.")
    alpha: list[float] = Field([1.0, 0.25], description="Share of target data placed in Stage 2.")
    seeds: list[int] | None = Field(None, description="Seeds of the mid-training runs (default: the study's seeds).")
    seed_alphas: list[float] = Field(
        [1.0], description="Alphas run with every seed of `seeds` (cheap for alpha = 1: the runs share Stage 1); "
        "the others run with the first seed only."
    )
    lr: float = Field(3e-3, gt=0, description="Peak LR of the single WSD schedule.")
    lrs: list[float] | None = Field(
        None, description="Peak LRs tried on the baseline (rho = 0, alpha = 1) only, as the paper tunes it; every "
        "other mid-training run (and mid-training reference point) then runs at the one with the lowest mean "
        "validation loss. Default: `lr` alone.")
    decay: float = Field(0.1, gt=0, lt=1, description="Cooldown: the WSD schedule's final linear decay, as a fraction "
                         "of the run.")
    warmup: float = 0.01


class ReferenceGrid(_Frozen):
    target_batches: list[float] = Field([0.5, 1, 2, 4], description="Unique target data x, in batches.")
    family: Literal["uniform", "baseline"] = Field(
        "uniform", description="uniform: target mixed uniformly through one cosine run (the paper's definition); "
        "baseline: each setting's own baseline recipe repeated at x (fine-tuning without replay; mid-training "
        "rho = 0, alpha = 1), so a multiplier reads 'worth k times more target data under the same recipe'.")
    seeds: list[int] | None = Field(None, description="Seeds of every reference point (default: the study's seeds).")
    schedule: Literal["cosine", "wsd"] = Field(
        "cosine", description="LR shape of uniform reference runs (the paper's launcher: cosine at the mid-training LR).")
    level: float = Field(0.9, gt=0, lt=1, description="Confidence level of the multipliers' bootstrap intervals.")


class StudyConfig(_Frozen):
    name: str = "study"
    target_store: str = Field(description="Token store of the target domain.")
    generic_store: str = Field(description="Token store of the generic (replay) domain.")
    target_name: str = "target"
    generic_name: str = "generic"
    model: ModelConfig = ModelConfig(preset="tiny")
    seq_len: int = 128
    batch_size: int = 16
    micro_batch_size: int | None = Field(
        None, ge=1, description="Sequences per forward pass, the rest gradient accumulation (default: the whole "
        "batch): the same updates up to rounding, in another summation order.")
    steps: int = Field(512, ge=8, description="Total steps N of every run (the fixed budget).")
    target_batches: int = Field(1, ge=1, description="Unique target data T of the method runs, in batches.")
    seeds: list[int] = Field(
        [0], description="Seeds: seed s uses the s-th disjoint draw of unique target data (and its own fine-tuning "
        "order), shared by every arm and every reference point of that seed; fine-tuning runs and mid-training runs "
        "with alpha in midtrain.seed_alphas use them all."
    )
    draw: int | None = Field(
        0, ge=0, description="Seed of the shuffle of the target's training sequences from which every seed takes "
        "its own disjoint block (seed s: sequences s * n to s * n + n of the shuffle, n the most any run of the "
        "study uses), so nested amounts of data of one seed share their sequences; null: blocks of the store's "
        "order (neighbouring documents of sorted files).")
    pretrain: PretrainSpec | None = Field(
        PretrainSpec(), description="Pre-training of the fine-tuning runs' generic phase (N - F steps). null: start "
        "every run from model.pretrained as it is, the paper's practice protocol: a fine-tuning run is its fine-tuning "
        "phase alone, x * E / (1 - rho) steps, so replay makes it longer at fixed target epochs; `steps` is then "
        "unused and there is no mid-training.")
    heldout: dict[str, str] = Field(
        default_factory=dict, description="Held-out-only sources, name -> token store: never trained on, evaluated at "
        "the end of every method run (reference runs skip them), e.g. a third domain showing forgetting beyond the "
        "replay source itself.")
    finetune: FinetuneGrid | None = FinetuneGrid()
    midtrain: MidtrainGrid | None = MidtrainGrid()
    reference: ReferenceGrid | None = ReferenceGrid()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    report_to: list[ReportTo] = Field(default_factory=list, description="Trackers every run logs to.")
    replay_search: bool = Field(
        False, description="Replay the replay-fraction search (replaytune.search) on the fine-tuning grid: the runs "
        "are also evaluated at the search's rungs, and results.json reports per seed what the search chose, at what "
        "share of the grid's steps, next to the grid's best.")
    ramps: study_ramps.RampGrid | None = Field(
        None, description="Ramp arms (continuous replay schedules) beside the two-stage grid (study/ramps.py).")
    curve_evals: int = Field(
        4, ge=0, description="Held-out evaluations spread through the first seed's fine-tuning phase (the over-fitting "
        "curve across epochs in the plots), at one evaluation each; 0: only at the phase's end.")
    switch_evals: list[int] = Field(
        [], description="Extra held-out evaluations at these offsets from the switch to target data (e.g. -32, 8, 64), "
        "in the first seed's fine-tuning and mid-training runs: the loss spike the paper's 'distribution shift' "
        "explanation is about, at the cost of one evaluation each.")

    @model_validator(mode="after")
    def _practice(self):
        clash = sorted(set(self.heldout) & {self.target_name, self.generic_name})
        if clash:
            raise ValueError(f"heldout: {clash[0]!r} is already the target or generic source's name")
        if self.pretrain is None:
            if self.model.pretrained is None:
                raise ValueError("pretrain: null starts every run from a pretrained model: set model.pretrained")
            if self.midtrain is not None or self.ramps is not None:
                raise ValueError("pretrain: null (fine-tuning a pretrained model) has no mid-training or ramp arms: "
                                 "set midtrain and ramps to null")
            if self.reference is not None and self.reference.family != "baseline":
                raise ValueError("pretrain: null needs reference.family baseline (uniform references mix the target "
                                 "through a pre-training run of `steps`)")
        return self


PAPER = {
    # docs/method.md, "The controlled setup": 150M Llama, seq 4096, batch 1024, 1024 steps (4.3B tokens),
    # unique target = 1 batch; 64 fine-tuning epochs, 32 mid-training epochs.
    "model": {"preset": "150m"},
    "seq_len": 4096,
    "batch_size": 1024,
    "steps": 1024,
    "target_batches": 1,
    "pretrain": {"lr": 1e-3, "schedule": "cosine", "warmup": 0.01},
    "finetune": {"epochs": 64, "replay": [0.0] + [round(1 - 1 / m, 6) for m in (1.125, 1.25, 1.5, 2, 3, 4)],
                 "lrs": [1e-4, 3e-4, 1e-3], "schedule": "cosine", "warmup": 0.01},
    "midtrain": {"epochs": 32, "replay": [0.0, 0.25, 0.5, 0.75, 0.875], "alpha": [1.0, 0.5, 0.25, 0.125],
                 "lr": 3e-3, "decay": 0.1, "warmup": 0.01},
    "reference": {"target_batches": [1, 2, 4, 8, 16]},
    "eval": {"interval": 64, "sequences": 10240, "batch_size": 64},
}

# The paper's setup with ramp arms (study/ramps.py) beside its two-stage grid, at the same seeds.
RAMPS = {**PAPER, "ramps": {"seeds": [0, 1, 2, 3]}, "seeds": [0, 1, 2, 3], "midtrain": {**PAPER["midtrain"], "seed_alphas": [1.0]}}

PRESETS = {"paper": PAPER, "ramps": RAMPS}


def load_study(path: str | Path | None, overrides: list[str] | None = None, preset: str | None = None) -> StudyConfig:
    """A study config from a preset and/or a YAML file, then ``--set`` overrides."""

    from replaytune.config import apply_overrides, format_validation_error, read_yaml_mapping, resolve_path
    from replaytune.errors import ConfigError

    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown study preset {preset!r}; choose one of {sorted(PRESETS)}")
        data = json.loads(json.dumps(PRESETS[preset]))
    base = Path(".")
    if path is not None:
        path = Path(path)
        data.update(read_yaml_mapping(path))
        base = path.parent
    data = apply_overrides(data, overrides or [])
    for key in ("target_store", "generic_store"):
        if isinstance(data.get(key), str):
            data[key] = resolve_path(data[key], base)
    try:
        return StudyConfig.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            raise ConfigError(format_validation_error(exc, str(path or preset))) from None
        raise
