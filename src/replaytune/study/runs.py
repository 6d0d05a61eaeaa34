"""The paper's controlled study as a list of runs, and its results.

Given a model, a generic and a target token store and a step budget N, the study builds
(docs/method.md, "The controlled setup"):

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
import statistics
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from replaytune.study import efficiency as eff
from replaytune.study import ramps as study_ramps
from replaytune import rundir
from replaytune.fsio import write_text
from replaytune.trackers import ReportTo
from replaytune import schedule as sched
from replaytune.config import EvalConfig, Frozen as _Frozen, ModelConfig, OptimConfig, RunConfig, validate




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
    report_to: list[ReportTo] = Field(default_factory=list, description="Trackers every run logs to.")
    replay_search: bool = Field(
        False, description="Replay the replay-fraction search (replaytune.search) on the fine-tuning grid: the runs "
        "are also evaluated at the search's rungs, and results.json reports per seed what the search chose, at what "
        "share of the grid's steps, next to the grid's best.")
    ramps: study_ramps.RampGrid | None = Field(
        None, description="Ramp arms (continuous replay schedules) beside the two-stage grid (study/ramps.py).")
    switch_evals: list[int] = Field(
        [], description="Extra held-out evaluations at these offsets from the switch to target data (e.g. -32, 8, 64), "
        "in the first seed's fine-tuning and mid-training runs: the loss spike the paper's 'distribution shift' "
        "explanation is about, at the cost of one evaluation each.")


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
        **({"report_to": list(study.report_to)} if study.report_to else {}),
    }


def build_runs(study: StudyConfig) -> list[tuple[dict[str, Any], RunConfig]]:
    """[(labels, run config)]: labels carry setting, rho, alpha, lr, x, seed for results."""
    runs: list[tuple[dict[str, Any], RunConfig]] = []
    N, T = study.steps, study.target_batches
    pre = study.pretrain
    # One warmup length (in steps) for every run that starts from scratch: pre-training runs
    # of different lengths and the mid-training runs then agree on the LR until their decays
    # begin, which is what lets the sweep share those steps.
    warm = math.ceil(pre.warmup * N)
    if study.finetune is not None:
        ft = study.finetune
        for rho in ft.replay:
            for lr in ft.lrs:
                for seed in study.seeds:
                    name = f"ft_rho{rho:g}_lr{lr:g}_s{seed}"
                    cfg = _finetune_run(study, name, T, rho, lr, seed, warm, dense=seed == study.seeds[0])
                    labels = {"setting": "finetune", "rho": rho, "alpha": None, "lr": lr, "x": T, "seed": seed,
                              "switch_step": cfg.phases[0].steps}
                    runs.append((labels, cfg))
    if study.midtrain is not None:
        mt = study.midtrain
        gamma = T * mt.epochs / N
        all_seeds = mt.seeds if mt.seeds is not None else study.seeds
        for alpha in mt.alpha:
            for rho in mt.replay:
                switch = sched.two_stage(N, gamma, rho, alpha).switch_step
                seeds = all_seeds if alpha in mt.seed_alphas else all_seeds[:1]
                for seed in seeds:
                    # seeds draw other unique target data; Stage 1 batches stay the same, so the
                    # alpha = 1 runs of every seed still share their pure-generic Stage 1
                    name = f"mt_rho{rho:g}_alpha{alpha:g}" + (f"_s{seed}" if len(seeds) > 1 else "")
                    labels = {"setting": "midtrain", "rho": rho, "alpha": alpha, "lr": mt.lr, "x": T, "seed": seed,
                              "switch_step": switch}
                    runs.append((labels, _midtrain_run(study, name, T, rho, alpha, seed, warm, dense=seed == seeds[0])))
    if study.reference is not None:
        runs += _reference_runs(study, warm)
    if study.ramps is not None:
        for labels, name, n, first, phases in study_ramps.ramp_arms(study, warm):
            runs.append((labels, validate({**_base(study, name, n, first), "phases": phases}, f"study run {name}")))
    return runs


def _finetune_run(study: StudyConfig, name: str, x: float, rho: float, lr: float, seed: int, warm: int,
                  dense: bool = False) -> RunConfig:
    """Pre-training on generic for N - F steps, then fine-tuning on x batches of target data for
    F = x * E / (1 - rho) steps: the total stays N, so more fine-tuning means less pre-training."""
    ft = study.finetune or FinetuneGrid()
    pre, B, N = study.pretrain, study.batch_size, study.steps
    plan = sched.finetune(x, ft.epochs, rho)
    if plan.steps >= N:
        raise sched.ScheduleError(f"fine-tuning at rho={rho:g}, x={x:g} batches needs {plan.steps} steps, not less "
                                  f"than the budget {N}")
    n = max(1, int(round(x * B)))
    # seed s: the s-th disjoint draw of unique target data, and its own fine-tuning order
    d = _base(study, name, n, first=seed * n)
    d["phases"] = [
        {"name": "pretrain", "steps": N - plan.steps, "constant": study.generic_name,
         "lr": _lr(pre.lr, pre.schedule, pre.warmup, pre.decay, warm)},
        {"name": "finetune",
         "finetune": {"target_steps": x, "epochs": ft.epochs, "replay": rho,
                      "target": study.target_name, "generic": study.generic_name},
         "lr": _lr(lr, ft.schedule, ft.warmup), "reset_optimizer": True, "seed": seed},
    ]
    if study.replay_search and x == study.target_batches:  # method runs, not references
        from replaytune.search import rung_steps

        d["phases"][1]["eval_at"] = rung_steps(plan.steps)
    if dense:
        # the first seed's curves are the ones plotted: evaluate 4 times in the fine-tuning phase
        # (the over-fitting curve across epochs), and at the study's offsets from the switch:
        # before it in pre-training, after it in fine-tuning
        d["phases"][1]["eval_interval"] = max(1, plan.steps // 4)
        P = N - plan.steps
        d["phases"][0]["eval_at"] = sorted(P + o for o in study.switch_evals if -P < o < 0)
        d["phases"][1]["eval_at"] = sorted(set(d["phases"][1].get("eval_at", []))
                                           | {o for o in study.switch_evals if 0 < o <= plan.steps})
    return validate(d, f"study run {name}")


def _midtrain_run(study: StudyConfig, name: str, x: float, rho: float, alpha: float, seed: int, warm: int,
                  dense: bool = False, epochs: float | None = None) -> RunConfig:
    """One WSD run of N steps: gamma = x * E / N of it target data, the two-stage schedule."""
    mt = study.midtrain or MidtrainGrid()
    E = mt.epochs if epochs is None else epochs
    n = max(1, int(round(x * study.batch_size)))
    d = _base(study, name, n, first=seed * n)
    d["phases"] = [{"name": "midtrain", "steps": study.steps,
                    "two_stage": {"gamma": x * E / study.steps, "replay": rho, "alpha": alpha,
                                  "target": study.target_name, "generic": study.generic_name},
                    "lr": _lr(mt.lr, "wsd", mt.warmup, mt.decay, warm)}]
    switch = sched.two_stage(study.steps, x * E / study.steps, rho, alpha).switch_step
    at: set[int] = set()
    if study.replay_search and alpha == 1.0 and epochs is None:  # the search's rungs, as fractions of Stage 2
        from replaytune.search import rung_steps

        at |= {switch + k for k in rung_steps(study.steps - switch)}
    if dense:
        at |= {switch + o for o in study.switch_evals if 0 < switch + o <= study.steps}
    if at:
        d["phases"][0]["eval_at"] = sorted(at)
    return validate(d, f"study run {name}")


def _reference_runs(study: StudyConfig, warm: int) -> list[tuple[dict[str, Any], RunConfig]]:
    """The reference curve(s) for the efficiency fit (README, "Data efficiency").

    uniform: one run per (x, seed), target mixed uniformly at gamma = x * E / N under the
    mid-training peak LR; cosine as the paper's launcher (``reference.schedule``).
    baseline: the fine-tuning baseline (rho = 0, every LR; E epochs, so x * E fine-tuning steps
    and N - x * E of pre-training) and the mid-training baseline (rho = 0, alpha = 1, Stage 2
    of the baseline's T * E steps holding x batches) at every x other than the study's own T,
    whose runs are already there; labelled ``reference: true`` so they are never picked as methods.
    """
    ref, N, T = study.reference, study.steps, study.target_batches
    assert ref is not None
    mt = study.midtrain or MidtrainGrid()
    seeds = ref.seeds if ref.seeds is not None else study.seeds
    out: list[tuple[dict[str, Any], RunConfig]] = []
    for x in ref.target_batches:
        if ref.family == "uniform" and x * mt.epochs > N:
            raise sched.ScheduleError(f"reference x={x:g} batches x {mt.epochs:g} epochs exceeds the {N}-step run")
        for seed in seeds:
            tag = f"_s{seed}" if len(seeds) > 1 else ""
            if ref.family == "uniform":
                name = f"ref_x{x:g}{tag}"
                n = max(1, int(round(x * study.batch_size)))
                d = _base(study, name, n, first=seed * n)
                lr = _lr(mt.lr, ref.schedule, mt.warmup, mt.decay, warm if ref.schedule == "wsd" else None)
                d["phases"] = [{"name": "reference", "steps": N, "uniform": {
                    "gamma": x * mt.epochs / N, "target": study.target_name, "generic": study.generic_name}, "lr": lr}]
                labels = {"setting": "reference", "rho": None, "alpha": None, "lr": mt.lr, "x": x, "seed": seed,
                          "switch_step": None}
                out.append((labels, validate(d, f"study run {name}")))
                continue
            if x == T:
                continue  # the baselines themselves are the points at x = T
            if study.finetune is not None:
                for lr in study.finetune.lrs:
                    name = f"ftref_x{x:g}_lr{lr:g}_s{seed}"
                    cfg = _finetune_run(study, name, x, 0.0, lr, seed, warm)
                    labels = {"setting": "finetune", "rho": 0.0, "alpha": None, "lr": lr, "x": x, "seed": seed,
                              "switch_step": cfg.phases[0].steps, "reference": True}
                    out.append((labels, cfg))
            if study.midtrain is not None:
                # Stage 2 keeps the baseline's length (T * E steps) and holds x batches of unique
                # data, seen E * T / x times: at a fixed E, Stage 2 would grow with x, and a longer
                # pure stage at the peak LR memorizes its data (measured at CPU scale: x = 4, 128
                # steps, train loss 0.05 and held-out 6.6-7.2 against 4.9 at x = 1)
                name = f"mtref_x{x:g}{tag}"
                cfg = _midtrain_run(study, name, x, 0.0, 1.0, seed, warm, epochs=mt.epochs * T / x)
                switch = sched.two_stage(N, T * mt.epochs / N, 0.0, 1.0).switch_step
                labels = {"setting": "midtrain", "rho": 0.0, "alpha": 1.0, "lr": mt.lr, "x": x, "seed": seed,
                          "switch_step": switch, "reference": True}
                out.append((labels, cfg))
    return out


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
    family = study.reference.family if study.reference is not None else "uniform"
    results["meta"]["reference_family"] = family
    results.update(analyse(rows, family, level=study.reference.level if study.reference is not None else eff.LEVEL))
    if study.ramps is not None:
        results["ramps"] = study_ramps.compare_ramps(rows, results["efficiency"].get("curves"), level=study.ramps.level)
    if study.replay_search:
        results["replay_search"] = {s: replay_search(study, labelled, s, results.get("noise", {}))
                                    for s in ("finetune", "midtrain") if getattr(study, s) is not None}
    return results


def replay_search(study: StudyConfig, labelled: list[tuple[dict[str, Any], Path]], setting: str,
                  noise: dict[str, Any]) -> dict[str, Any]:
    """What ``--replay-fraction auto`` would have chosen on each seed's grid of ``setting``, and at what cost.

    Fine-tuning: candidates rho x LR, each judged at fractions of its fine-tuning phase.
    Mid-training: candidates rho at alpha = 1 (they share Stage 1), each judged at fractions of
    its Stage 2, the part where they differ.

    The grid's runs were also evaluated at the search's rungs (``replay_search: true``), and an
    evaluation does not change training, so reading a candidate's held-out loss at a rung from
    its metrics is exactly what the search measures there; the steps it would have computed are
    counted from the switch (the shared pre-training or Stage 1 is not part of the choice).
    """
    from replaytune.search import Candidate, Outcome, successive_halving
    from replaytune.train.metrics import read_metrics

    ft = [(lab, d) for lab, d in labelled if lab["setting"] == setting and not lab.get("reference")
          and (setting == "finetune" or lab["alpha"] == 1.0)]
    target = study.target_name
    finals: dict[tuple[float, float], list[float]] = {}
    evals: dict[tuple[float, float, int], dict[int, float]] = {}
    lengths: dict[tuple[float, float], int] = {}
    for lab, d in ft:
        start = int(lab["switch_step"])
        rec = rundir.read_record(d)
        key = (lab["rho"], lab["lr"])
        lengths[key] = int(rec["steps"]) - start
        evals[(*key, lab["seed"])] = {m["step"] - start: m["eval"].get(target) for m in read_metrics(d)
                                      if m["kind"] == "eval" and m["step"] >= start}
        finals.setdefault(key, []).append(_final(rec, target))
    mean = {k: statistics.fmean(v) for k, v in finals.items() if all(x is not None for x in v)}
    best = min(mean, key=lambda k: mean[k])
    std = (noise.get(setting) or {}).get("target")
    out = []
    for seed in sorted({lab["seed"] for lab, _ in ft}):
        cands = [Candidate(rho, lr, lengths[(rho, lr)]) for rho, lr in dict.fromkeys(k[:2] for k in evals if k[2] == seed)]
        res = successive_halving(cands, lambda c, step, seed=seed: Outcome(evals[(c.rho, c.lr, seed)][step]))
        k = (res.chosen.candidate.rho, res.chosen.candidate.lr)
        out.append({"seed": seed, "chosen_rho": k[0], "chosen_lr": k[1], "chosen_mean_loss": mean[k],
                    "within_std": None if std is None else mean[k] - mean[best] <= std,
                    "steps_computed": res.steps_computed, "steps_grid": res.steps_grid})
    return {"grid_best": {"rho": best[0], "lr": best[1], "mean_loss": mean[best]}, "seed_std": std, "per_seed": out}


def analyse(rows: list[dict[str, Any]], family: str = "uniform", *, resamples: int = eff.RESAMPLES,
            level: float = eff.LEVEL) -> dict[str, Any]:
    """The paper's multipliers, each read off its reference curve of ``family``
    (:func:`replaytune.study.efficiency.compare`), with bootstrap intervals over the seeds of the
    reference points and of the compared runs, plus seed-to-seed noise per setting (pooled)."""
    groups = eff.group_runs(rows)
    noise: dict[str, dict[str, float]] = {}
    for setting in dict.fromkeys(g["setting"] for g in groups):
        mine = [g for g in groups if g["setting"] == setting]
        for which in ("target", "generic"):
            sd = eff.pooled_std(mine, which)
            if sd is not None:
                noise.setdefault(setting, {})[which] = sd
    comparisons, curves = eff.compare(rows, family, resamples=resamples, level=level)
    curve_out = {}
    for name, c in curves.items():
        entry: dict[str, Any] = {"x": c["xs"], "losses": c["losses"]}
        if "fit" in c:
            entry["fit"] = c["fit"].to_dict()
        else:
            entry["error"] = c["error"]  # a failed or refused fit is reported, never hidden
        curve_out[name] = entry
    efficiency: dict[str, Any] = {"reference": family, "level": level, "resamples": resamples, "curves": curve_out}
    if family == "uniform" and "fit" in curve_out.get("uniform", {}):
        efficiency["fit"] = curve_out["uniform"]["fit"]
    efficiency["comparisons"] = {
        k: None if v is None else {
            "reference": v["reference"], "method": v["method"]["name"], "baseline": v["baseline"]["name"],
            "candidates": v["candidates"], "method_x": v["method_x"], "baseline_x": v["baseline_x"],
            "multiplier": v["multiplier"], "interval": v["interval"],
            **({"error": v["error"]} if v.get("error") else {}),
        }
        for k, v in comparisons.items()
    }
    return {
        "multipliers": {k: (v["multiplier"] if v else None) for k, v in comparisons.items()},
        "noise": noise,
        "efficiency": efficiency,
    }


# --------------------------------------------------------------------------------------
# Presets and the end-to-end runner
# --------------------------------------------------------------------------------------

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


def run_study(study: StudyConfig, out_dir: str | Path, *, share_prefixes: bool = True, launcher=None,
              workers: int = 1, executor=None) -> dict[str, Any]:
    """Run (or resume) every run of the study, then write results.json."""
    return run_studies([(study, Path(out_dir))], Path(out_dir) / "runs", share_prefixes=share_prefixes,
                       launcher=launcher, workers=workers, executor=executor)[0]


def run_studies(studies: list[tuple[StudyConfig, Path]], runs_dir: str | Path, *, share_prefixes: bool = True,
                launcher=None, workers: int = 1, executor=None) -> list[dict[str, Any]]:
    """Several studies planned as one sweep, so that identical prefixes are computed once even
    across studies (two target domains share their generic pre-training), then one
    results.json per study in its own directory. ``launcher``, ``workers`` and ``executor``
    choose where the runs execute (:func:`replaytune.study.sweep.execute`)."""
    from replaytune.study import sweep

    labelled_all: list[tuple[int, dict[str, Any], RunConfig]] = []
    for i, (study, out_dir) in enumerate(studies):
        labelled_all += [(i, labels, cfg) for labels, cfg in build_runs(study)]
    # planning opens every store: a bad one is refused here, before anything is written
    tasks = sweep.build_tasks([cfg for _, _, cfg in labelled_all], runs_dir, share_prefixes=share_prefixes)
    for study, out_dir in studies:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "study.json", json.dumps(study.model_dump(mode="json"), indent=2))
    result = sweep.execute(tasks, launcher, workers=workers, executor=executor)
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
