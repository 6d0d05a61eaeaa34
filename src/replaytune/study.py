"""The paper's controlled study as a list of runs, and its results.

Given a model, a generic and a target token store and a step budget N, the study builds
(METHOD.md, "Controlled setup"):

* fine-tuning runs: pre-train on generic for ``N - F`` steps, then fine-tune for
  ``F = T * E / (1 - rho)`` steps (T target batches, E epochs) with a fresh optimizer and
  a re-warmed LR; total steps fixed at N, so replay shortens pre-training. Each rho is
  tried at every LR of a small grid and the best LR is kept, per rho, as in the paper;
* mid-training runs: one WSD schedule of N steps, the two-stage schedule over the
  rho x alpha grid, gamma = T * E / N;
* reference runs: target mixed uniformly through the run for several amounts x of unique
  target data (x target batches, the same E epochs: gamma = x * E / N), for the fit
  ``L(x) = A / x^B + C`` from which data-efficiency multipliers are read.

Fine-tuning runs that differ only in fine-tuning LR or seed share their pre-training, and
mid-training runs with alpha = 1 share their pure-generic Stage 1 up to the earliest
switch step; the sweep executor finds these prefixes from the runs' step signatures.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from replaytune import efficiency as eff
from replaytune import rundir
from replaytune.fsio import write_text
from replaytune import schedule as sched
from replaytune.config import EvalConfig, ModelConfig, OptimConfig, RunConfig, validate


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
    decay: float = 0.1
    warmup: float = 0.01


class ReferenceGrid(_Frozen):
    target_batches: list[float] = Field([0.5, 1, 2, 4], description="Unique target data x, in batches.")


class StudyConfig(_Frozen):
    name: str = "study"
    target_store: str = Field(description="Token store of the target domain.")
    generic_store: str = Field(description="Token store of the generic (replay) domain.")
    target_name: str = "target"
    generic_name: str = "generic"
    model: ModelConfig = ModelConfig(preset="tiny")
    seq_len: int = 128
    batch_size: int = 16
    steps: int = Field(512, ge=8, description="Total steps N of every run (the fixed budget).")
    target_batches: int = Field(1, ge=1, description="Unique target data T of the method runs, in batches.")
    seeds: list[int] = Field(
        [0], description="Seeds: seed s uses the s-th disjoint draw of unique target data (and its own fine-tuning "
        "order); fine-tuning runs and mid-training runs with alpha in midtrain.seed_alphas use them all."
    )
    pretrain: PretrainSpec = PretrainSpec()
    finetune: FinetuneGrid | None = FinetuneGrid()
    midtrain: MidtrainGrid | None = MidtrainGrid()
    reference: ReferenceGrid | None = ReferenceGrid()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()


def _lr(peak: float, kind: str, warmup: float, decay: float = 0.1, warmup_steps: int | None = None) -> dict[str, Any]:
    out = {"peak": peak, "schedule": kind, "warmup": warmup, "decay": decay}
    if warmup_steps is not None:
        out["warmup_steps"] = warmup_steps
    return out


def _base(study: StudyConfig, name: str, target_sequences: int, first: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "model": study.model.model_dump(mode="json", exclude_none=True),
        "data": {
            "seq_len": study.seq_len,
            "batch_size": study.batch_size,
            "sources": {
                study.target_name: {"store": study.target_store, "sequences": target_sequences, "first": first},
                study.generic_name: {"store": study.generic_store},
            },
        },
        "optim": study.optim.model_dump(mode="json"),
        "eval": study.eval.model_dump(mode="json"),
    }


def build_runs(study: StudyConfig) -> list[tuple[dict[str, Any], RunConfig]]:
    """[(labels, run config)]: labels carry setting, rho, alpha, lr, x, seed for results."""
    runs: list[tuple[dict[str, Any], RunConfig]] = []
    N, T, B = study.steps, study.target_batches, study.batch_size
    names = {"target": study.target_name, "generic": study.generic_name}
    pre = study.pretrain
    # One warmup length (in steps) for every run that starts from scratch: pre-training runs
    # of different lengths and the mid-training runs then agree on the LR until their decays
    # begin, which is what lets the sweep share those steps.
    warm = math.ceil(pre.warmup * N)
    if study.finetune is not None:
        ft = study.finetune
        for rho in ft.replay:
            plan = sched.finetune(T, ft.epochs, rho)
            if plan.steps >= N:
                raise sched.ScheduleError(f"fine-tuning at rho={rho} needs {plan.steps} steps, not less than the budget {N}")
            for lr in ft.lrs:
                for seed in study.seeds:
                    name = f"ft_rho{rho:g}_lr{lr:g}_s{seed}"
                    # seed s: the s-th disjoint draw of unique target data, and its own fine-tuning order
                    d = _base(study, name, T * B, first=seed * T * B)
                    d["phases"] = [
                        {"name": "pretrain", "steps": N - plan.steps, "constant": study.generic_name,
                         "lr": _lr(pre.lr, pre.schedule, pre.warmup, pre.decay, warm)},
                        {"name": "finetune", "finetune": {"target_steps": T, "epochs": ft.epochs, "replay": rho, **names},
                         "lr": _lr(lr, ft.schedule, ft.warmup), "reset_optimizer": True, "seed": seed,
                         # evaluate 4 times in the fine-tuning phase (and at its end): the over-fitting
                         # curve across epochs, at a cost that stays small next to the phase itself
                         "eval_interval": max(1, plan.steps // 4)},
                    ]
                    labels = {"setting": "finetune", "rho": rho, "alpha": None, "lr": lr, "x": T, "seed": seed,
                              "switch_step": N - plan.steps}
                    runs.append((labels, validate(d, f"study run {name}")))
    if study.midtrain is not None:
        mt = study.midtrain
        gamma = T * mt.epochs / N
        for alpha in mt.alpha:
            for rho in mt.replay:
                plan = sched.two_stage(N, gamma, rho, alpha)
                all_seeds = mt.seeds if mt.seeds is not None else study.seeds
                seeds = all_seeds if alpha in mt.seed_alphas else all_seeds[:1]
                for seed in seeds:
                    # seeds draw other unique target data; Stage 1 batches stay the same, so the
                    # alpha = 1 runs of every seed still share their pure-generic Stage 1
                    name = f"mt_rho{rho:g}_alpha{alpha:g}" + (f"_s{seed}" if len(seeds) > 1 else "")
                    d = _base(study, name, T * B, first=seed * T * B)
                    d["phases"] = [{"name": "midtrain", "steps": N,
                                    "two_stage": {"gamma": gamma, "replay": rho, "alpha": alpha, **names},
                                    "lr": _lr(mt.lr, "wsd", mt.warmup, mt.decay, warm)}]
                    labels = {"setting": "midtrain", "rho": rho, "alpha": alpha, "lr": mt.lr, "x": T, "seed": seed,
                              "switch_step": plan.switch_step}
                    runs.append((labels, validate(d, f"study run {name}")))
    if study.reference is not None:
        mt = study.midtrain or MidtrainGrid()
        for x in study.reference.target_batches:
            g = x * mt.epochs / N
            if g > 1:
                raise sched.ScheduleError(f"reference x={x:g} batches x {mt.epochs:g} epochs exceeds the {N}-step run")
            name = f"ref_x{x:g}"
            d = _base(study, name, max(1, int(round(x * B))))
            d["phases"] = [{"name": "reference", "steps": N, "uniform": {"gamma": g, **names},
                            "lr": _lr(mt.lr, "wsd", mt.warmup, mt.decay, warm)}]
            labels = {"setting": "reference", "rho": None, "alpha": None, "lr": mt.lr, "x": x, "seed": 0, "switch_step": None}
            runs.append((labels, validate(d, f"study run {name}")))
    return runs


# --------------------------------------------------------------------------------------
# Results: from records on disk to results.json
# --------------------------------------------------------------------------------------


def _final(record: dict[str, Any], source: str) -> float | None:
    val = (record.get("final") or {}).get("eval", {}).get(source)
    return None if val is None or not math.isfinite(val) else float(val)


def collect(study: StudyConfig, labelled: list[tuple[dict[str, Any], Path]], out_dir: Path) -> dict[str, Any]:
    """Build results.json content from the run directories' record.json files."""
    rows = []
    for labels, run_dir in labelled:
        record = rundir.read_record(run_dir)
        rows.append({
            "name": record.get("name", run_dir.name), **labels,
            "target_loss": _final(record, study.target_name),
            "generic_loss": _final(record, study.generic_name),
            "run_dir": os.path.relpath(run_dir, out_dir),
            "wall_time_s": record.get("wall_time_s"),
        })
    results: dict[str, Any] = {"runs": rows, "meta": {
        "target_source": study.target_name, "generic_source": study.generic_name,
        "steps": study.steps, "batch_size": study.batch_size, "seq_len": study.seq_len,
        "target_batches": study.target_batches, "model": study.model.model_dump(mode="json", exclude_none=True),
        "seeds": study.seeds,
    }}
    results.update(analyse(rows))
    return results


def analyse(rows: list[dict[str, Any]], resamples: int = 200) -> dict[str, Any]:
    """Fit the reference curve and compute the paper's multipliers (replaytune.efficiency),
    plus seed-to-seed noise per setting (std of the target loss over seeds, pooled)."""
    groups = eff.group_runs(rows)
    noise: dict[str, dict[str, float]] = {}
    for setting in dict.fromkeys(g["setting"] for g in groups):
        mine = [g for g in groups if g["setting"] == setting]
        for which in ("target", "generic"):
            sd = eff.pooled_std(mine, which)
            if sd is not None:
                noise.setdefault(setting, {})[which] = sd
    out: dict[str, Any] = {
        "multipliers": {"finetune_replay": None, "midtrain_replay": None, "full_schedule": None},
        "noise": noise,
    }
    xs, losses = eff.reference_points(rows)
    try:
        fit = eff.fit_reference(xs, losses)
    except eff.FitError as exc:  # a failed fit is reported, never hidden
        out["efficiency"] = {"error": str(exc)}
        return out
    comparisons = eff.compare_best(fit, rows, resamples=resamples)
    out["multipliers"] = {k: (v["multiplier"] if v else None) for k, v in comparisons.items()}
    out["efficiency"] = {
        "fit": fit.to_dict(),
        "comparisons": {
            k: None if v is None else {
                "method": v["method"]["name"], "baseline": v["baseline"]["name"], "candidates": v["candidates"],
                "method_x": v["method_x"], "baseline_x": v["baseline_x"], "multiplier": v["multiplier"],
                "interval": v["interval"],
            }
            for k, v in comparisons.items()
        },
    }
    return out


# --------------------------------------------------------------------------------------
# Presets and the end-to-end runner
# --------------------------------------------------------------------------------------

PAPER = {
    # METHOD.md, "Controlled setup": 150M Llama, seq 4096, batch 1024, 1024 steps (4.3B tokens),
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

PRESETS = {"paper": PAPER}


def load_study(path: str | Path | None, overrides: list[str] | None = None, preset: str | None = None) -> StudyConfig:
    """A study config from a preset and/or a YAML file, then ``--set`` overrides."""
    import yaml

    from replaytune.config import apply_overrides, format_validation_error
    from replaytune.errors import ConfigError

    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown study preset {preset!r}; choose one of {sorted(PRESETS)}")
        data = json.loads(json.dumps(PRESETS[preset]))
    base = Path(".")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"study config not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        data.update(loaded)
        base = path.parent
    data = apply_overrides(data, overrides or [])
    for key in ("target_store", "generic_store"):
        if key in data and not Path(data[key]).is_absolute() and not Path(data[key]).exists():
            data[key] = str(base / data[key])
    try:
        return StudyConfig.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            raise ConfigError(format_validation_error(exc, str(path or preset))) from None
        raise


def run_study(study: StudyConfig, out_dir: str | Path, *, share_prefixes: bool = True, launcher=None,
              workers: int = 1) -> dict[str, Any]:
    """Run (or resume) every run of the study, then write results.json."""
    return run_studies([(study, Path(out_dir))], Path(out_dir) / "runs", share_prefixes=share_prefixes,
                       launcher=launcher, workers=workers)[0]


def run_studies(studies: list[tuple[StudyConfig, Path]], runs_dir: str | Path, *, share_prefixes: bool = True,
                launcher=None, workers: int = 1) -> list[dict[str, Any]]:
    """Several studies planned as one sweep, so that identical prefixes are computed once even
    across studies (two target domains share their generic pre-training), then one
    results.json per study in its own directory."""
    from replaytune import sweep

    labelled_all: list[tuple[int, dict[str, Any], RunConfig]] = []
    for i, (study, out_dir) in enumerate(studies):
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "study.json", json.dumps(study.model_dump(mode="json"), indent=2))
        labelled_all += [(i, labels, cfg) for labels, cfg in build_runs(study)]
    tasks = sweep.build_tasks([cfg for _, _, cfg in labelled_all], runs_dir, share_prefixes=share_prefixes)
    result = sweep.execute(tasks, launcher, workers=workers)
    sweep.write_summary(Path(runs_dir), tasks, result)
    compute = {"steps_alone": result.total_steps, "steps_computed": result.computed_steps,
               "saved_fraction": result.saved_fraction}
    out = []
    for i, (study, out_dir) in enumerate(studies):
        mine = [(labels, t.run_dir) for (j, labels, _), t in zip(labelled_all, tasks) if j == i]
        results = collect(study, mine, out_dir)
        results["compute"] = compute
        write_text(out_dir / "results.json", json.dumps(results, indent=2))
        out.append(results)
    return out
