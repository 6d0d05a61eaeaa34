"""The paper's controlled study as a list of runs, run as sweeps (settings: study/config.py; results: study/collect.py).

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
import statistics
from pathlib import Path
from typing import Any

from replaytune import rundir
from replaytune.fsio import write_text
from replaytune import schedule as sched
from replaytune.config import RunConfig, validate
from replaytune.study import ramps as study_ramps
from replaytune.study.config import (  # noqa: F401  (the study's interface)
    PAPER, PRESETS, FinetuneGrid, MidtrainGrid, PretrainSpec, ReferenceGrid, StudyConfig, load_study,
)
from replaytune.study.collect import (  # noqa: F401  (the study's interface)
    analyse, collect, data_fingerprint, final_loss, midtrain_geometry, replay_search,
)


def _lr(peak: float, kind: str, warmup: float, decay: float = 0.1, warmup_steps: int | None = None) -> dict[str, Any]:
    out = {"peak": peak, "schedule": kind, "warmup": warmup, "decay": decay}
    if warmup_steps is not None:
        out["warmup_steps"] = warmup_steps
    return out


def _block(study: StudyConfig) -> int:
    """Sequences of one seed's block of unique target data: the most any run of the study uses."""
    xs = [study.target_batches] + (list(study.reference.target_batches) if study.reference is not None else [])
    return max(max(1, int(round(x * study.batch_size))) for x in xs)


def _first(study: StudyConfig, seed: int, n: int) -> int:
    """First sequence of seed ``seed``'s draw of ``n`` sequences: its own block of the shuffle
    (with ``draw``), else the s-th run of n sequences of the store's order."""
    return seed * (_block(study) if study.draw is not None else n)


def _base(study: StudyConfig, name: str, target_sequences: int, first: int = 0) -> dict[str, Any]:
    target = {"store": study.target_store, "sequences": target_sequences, "first": first}
    if study.draw is not None:
        target["draw"] = study.draw
    return {
        "name": name,
        "model": study.model.model_dump(mode="json", exclude_none=True),
        "data": {
            "seq_len": study.seq_len,
            "batch_size": study.batch_size,
            **({"micro_batch_size": study.micro_batch_size} if study.micro_batch_size else {}),
            "sources": {
                study.target_name: target,
                study.generic_name: {"store": study.generic_store},
                **{name: {"store": store} for name, store in study.heldout.items()},
            },
        },
        "optim": study.optim.model_dump(mode="json"),
        "eval": _eval(study),
        # from a pretrained model no run continues another (no shared prefix): a checkpoint of the
        # model and its optimizer would outweigh the run's few steps, and its weights the disk
        **({"checkpoint": {"at_end": False, "final_model": False}} if study.pretrain is None else {}),
        **({"report_to": list(study.report_to)} if study.report_to else {}),
    }


def _eval(study: StudyConfig, generic: bool = True) -> dict[str, Any]:
    """The runs' evaluation: the study's, less the validation halves of the generic and held-out-only
    sources (no choice is made on them) and, for reference runs (``generic=False``), those sources
    altogether."""
    ev = study.eval.model_dump(mode="json")
    others = [study.generic_name, *study.heldout]
    extra = others if not generic else [f"{name}/val" for name in others] if study.eval.split else []
    ev["skip"] = sorted(set(ev["skip"]) | set(extra))
    return ev


def _as_reference(study: StudyConfig, cfg: RunConfig) -> RunConfig:
    """A reference run: only its target loss is used, so its generic set is not evaluated."""
    return validate({**cfg.model_dump(mode="json"), "eval": _eval(study, generic=False)}, f"study run {cfg.name}")


def midtrain_lrs(study: StudyConfig) -> list[float]:
    """The mid-training peak LRs the baseline is tuned over (``midtrain.lrs``, else ``lr`` alone)."""
    mt = study.midtrain or MidtrainGrid()
    return list(mt.lrs) if mt.lrs else [mt.lr]


def build_runs(study: StudyConfig, midtrain_lr: float | None = None) -> list[tuple[dict[str, Any], RunConfig]]:
    """[(labels, run config)]: labels carry setting, rho, alpha, lr, x, seed for results.

    With several ``midtrain.lrs`` and no ``midtrain_lr``: the first stage of the study, every
    run that does not depend on the mid-training LR plus the mid-training baseline (rho = 0,
    alpha = 1) at every LR, the runs that choose it. With ``midtrain_lr``: the whole study,
    every mid-training run at that LR (:func:`run_studies` runs the new ones after the choice).
    """
    runs: list[tuple[dict[str, Any], RunConfig]] = []
    N, T = study.steps, study.target_batches
    pre = study.pretrain
    # One warmup length (in steps) for every run that starts from scratch: pre-training runs
    # of different lengths and the mid-training runs then agree on the LR until their decays
    # begin, which is what lets the sweep share those steps.
    warm = math.ceil(pre.warmup * N) if pre is not None else 0
    if study.finetune is not None:
        ft = study.finetune
        for rho in ft.replay:
            for lr in ft.lrs:
                for seed in study.seeds:
                    name = f"ft_rho{rho:g}_lr{lr:g}_s{seed}"
                    cfg = _finetune_run(study, name, T, rho, lr, seed, warm, dense=seed == study.seeds[0])
                    labels = {"setting": "finetune", "rho": rho, "alpha": None, "lr": lr, "x": T, "seed": seed,
                              "switch_step": _switch(cfg)}
                    runs.append((labels, cfg))
    lrs = midtrain_lrs(study)
    tuning = midtrain_lr is None and len(lrs) > 1
    mt_lr = lrs[0] if midtrain_lr is None else midtrain_lr
    if study.midtrain is not None:
        mt = study.midtrain
        gamma = T * mt.epochs / N
        all_seeds = mt.seeds if mt.seeds is not None else study.seeds
        for alpha in mt.alpha:
            for rho in mt.replay:
                base = rho == 0.0 and alpha == 1.0
                if tuning and not base:
                    continue
                switch = sched.two_stage(N, gamma, rho, alpha).switch_step
                seeds = all_seeds if alpha in mt.seed_alphas else all_seeds[:1]
                for lr in (lrs if tuning else [mt_lr]):
                    for seed in seeds:
                        # seeds draw other unique target data; Stage 1 batches stay the same, so the
                        # alpha = 1 runs of every seed still share their pure-generic Stage 1
                        name = (f"mt_rho{rho:g}_alpha{alpha:g}" + (f"_lr{lr:g}" if len(lrs) > 1 else "")
                                + (f"_s{seed}" if len(seeds) > 1 else ""))
                        labels = {"setting": "midtrain", "rho": rho, "alpha": alpha, "lr": lr, "x": T, "seed": seed,
                                  "switch_step": switch}
                        runs.append((labels, _midtrain_run(study, name, T, rho, alpha, seed, warm,
                                                           dense=seed == seeds[0], lr=lr)))
    if study.reference is not None:
        runs += _reference_runs(study, warm, None if tuning else mt_lr)
    if study.ramps is not None and not tuning:
        for labels, name, n, phases in study_ramps.ramp_arms(study, warm):
            # the seed's own block of unique target data, as every two-stage arm of that seed draws
            base = _base(study, name, n, first=_first(study, labels["seed"], n))
            runs.append((labels, validate({**base, "phases": phases}, f"study run {name}")))
    return runs


def _switch(cfg: RunConfig) -> int:
    """The step where fine-tuning starts: after the pre-training phase, or 0 from a pretrained model."""
    return cfg.phases[0].steps if len(cfg.phases) > 1 else 0


def _finetune_run(study: StudyConfig, name: str, x: float, rho: float, lr: float, seed: int, warm: int,
                  dense: bool = False) -> RunConfig:
    """Pre-training on generic for N - F steps, then fine-tuning on x batches of target data for
    F = x * E / (1 - rho) steps: the total stays N, so more fine-tuning means less pre-training.
    Without ``pretrain`` (a pretrained model): the fine-tuning phase alone, F steps, longer with replay."""
    ft = study.finetune or FinetuneGrid()
    pre, B, N = study.pretrain, study.batch_size, study.steps
    plan = sched.finetune(x, ft.epochs, rho)
    if pre is not None and plan.steps >= N:
        raise sched.ScheduleError(f"fine-tuning at rho={rho:g}, x={x:g} batches needs {plan.steps} steps, not less "
                                  f"than the budget {N}")
    n = max(1, int(round(x * B)))
    # seed s: the s-th disjoint draw of unique target data, and its own fine-tuning order
    d = _base(study, name, n, first=_first(study, seed, n))
    tune = {"name": "finetune",
            "finetune": {"target_steps": x, "epochs": ft.epochs, "replay": rho,
                         "target": study.target_name, "generic": study.generic_name},
            "lr": _lr(lr, ft.schedule, ft.warmup), "reset_optimizer": True, "seed": seed}
    if pre is None:
        d["phases"] = [tune]
        if dense and rho == ft.replay[0] and lr == ft.lrs[0]:
            d["eval"]["at_start"] = True  # one run evaluates the model as it was: the losses before fine-tuning
    else:
        d["phases"] = [{"name": "pretrain", "steps": N - plan.steps, "constant": study.generic_name,
                        "lr": _lr(pre.lr, pre.schedule, pre.warmup, pre.decay, warm)}, tune]
    if study.replay_search and x == study.target_batches:  # method runs, not references
        from replaytune.search import rung_steps

        tune["eval_at"] = rung_steps(plan.steps)
    if dense:
        # the first seed's curves are the ones plotted: evaluate curve_evals times in the
        # fine-tuning phase (the over-fitting curve across epochs), and at the study's offsets
        # from the switch: before it in pre-training, after it in fine-tuning
        if study.curve_evals:
            tune["eval_interval"] = max(1, plan.steps // study.curve_evals)
        if pre is not None:
            P = N - plan.steps
            d["phases"][0]["eval_at"] = sorted(P + o for o in study.switch_evals if -P < o < 0)
        tune["eval_at"] = sorted(set(tune.get("eval_at", [])) | {o for o in study.switch_evals if 0 < o <= plan.steps})
    return validate(d, f"study run {name}")


def _midtrain_run(study: StudyConfig, name: str, x: float, rho: float, alpha: float, seed: int, warm: int,
                  dense: bool = False, epochs: float | None = None, lr: float | None = None) -> RunConfig:
    """One WSD run of N steps: gamma = x * E / N of it target data, the two-stage schedule."""
    mt = study.midtrain or MidtrainGrid()
    E = mt.epochs if epochs is None else epochs
    n = max(1, int(round(x * study.batch_size)))
    d = _base(study, name, n, first=_first(study, seed, n))
    d["phases"] = [{"name": "midtrain", "steps": study.steps,
                    "two_stage": {"gamma": x * E / study.steps, "replay": rho, "alpha": alpha,
                                  "target": study.target_name, "generic": study.generic_name},
                    "lr": _lr(mt.lr if lr is None else lr, "wsd", mt.warmup, mt.decay, warm)}]
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


def _reference_runs(study: StudyConfig, warm: int, mt_lr: float | None = None) -> list[tuple[dict[str, Any], RunConfig]]:
    """The reference curve(s) for the efficiency fit (README, "Data efficiency").

    uniform: one run per (x, seed), target mixed uniformly at gamma = x * E / N under the
    mid-training peak LR; cosine as the paper's launcher (``reference.schedule``).
    baseline: the fine-tuning baseline (rho = 0, every LR; E epochs, so x * E fine-tuning steps
    and N - x * E of pre-training) and the mid-training baseline (rho = 0, alpha = 1, Stage 2
    of the baseline's T * E steps holding x batches) at every x other than the study's own T,
    whose runs are already there; labelled ``reference: true`` so they are never picked as methods.
    ``mt_lr``: the mid-training peak LR (None while it is being chosen: no run that needs it).
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
                if mt_lr is None:
                    continue
                name = f"ref_x{x:g}{tag}"
                n = max(1, int(round(x * study.batch_size)))
                d = _base(study, name, n, first=_first(study, seed, n))
                lr = _lr(mt_lr, ref.schedule, mt.warmup, mt.decay, warm if ref.schedule == "wsd" else None)
                d["phases"] = [{"name": "reference", "steps": N, "uniform": {
                    "gamma": x * mt.epochs / N, "target": study.target_name, "generic": study.generic_name}, "lr": lr}]
                labels = {"setting": "reference", "rho": None, "alpha": None, "lr": mt_lr, "x": x, "seed": seed,
                          "switch_step": None}
                out.append((labels, _as_reference(study, validate(d, f"study run {name}"))))
                continue
            if x == T:
                continue  # the baselines themselves are the points at x = T
            if study.finetune is not None:
                for lr in study.finetune.lrs:
                    name = f"ftref_x{x:g}_lr{lr:g}_s{seed}"
                    cfg = _as_reference(study, _finetune_run(study, name, x, 0.0, lr, seed, warm))
                    labels = {"setting": "finetune", "rho": 0.0, "alpha": None, "lr": lr, "x": x, "seed": seed,
                              "switch_step": _switch(cfg), "reference": True}
                    out.append((labels, cfg))
            if study.midtrain is not None and mt_lr is not None:
                # Stage 2 keeps the baseline's length (T * E steps) and holds x batches of unique
                # data, seen E * T / x times: at a fixed E, Stage 2 would grow with x, and a longer
                # pure stage at the peak LR memorizes its data (measured at CPU scale: x = 4, 128
                # steps, train loss 0.05 and held-out 6.6-7.2 against 4.9 at x = 1)
                name = f"mtref_x{x:g}{tag}"
                cfg = _as_reference(study, _midtrain_run(study, name, x, 0.0, 1.0, seed, warm, epochs=mt.epochs * T / x,
                                                         lr=mt_lr))
                switch = sched.two_stage(N, T * mt.epochs / N, 0.0, 1.0).switch_step
                labels = {"setting": "midtrain", "rho": 0.0, "alpha": 1.0, "lr": mt_lr, "x": x, "seed": seed,
                          "switch_step": switch, "reference": True}
                out.append((labels, cfg))
    return out


def run_study(study: StudyConfig, out_dir: str | Path, *, share_prefixes: bool = True, launcher=None,
              workers: int = 1, executor=None) -> dict[str, Any]:
    """Run (or resume) every run of the study, then write results.json."""
    return run_studies([(study, Path(out_dir))], Path(out_dir) / "runs", share_prefixes=share_prefixes,
                       launcher=launcher, workers=workers, executor=executor)[0]


def choose_midtrain_lr(study: StudyConfig, labelled: list[tuple[dict[str, Any], Path]]) -> tuple[float, dict[str, Any]]:
    """The mid-training peak LR with the lowest mean validation target loss of the baseline
    (rho = 0, alpha = 1) over its seeds, and the table it was chosen from."""
    val = f"{study.target_name}/val"
    means: dict[float, list[float]] = {}
    for labels, run_dir in labelled:
        if labels["setting"] == "midtrain" and labels["rho"] == 0.0 and labels["alpha"] == 1.0 and not labels.get("reference"):
            rec = rundir.read_record(run_dir)
            loss = final_loss(rec, val)
            means.setdefault(labels["lr"], []).append(final_loss(rec, study.target_name) if loss is None else loss)
    table = {lr: statistics.fmean(v) for lr, v in means.items() if v and all(x is not None for x in v)}
    if not table:
        raise sched.ScheduleError(f"study {study.name}: no finished mid-training baseline run to choose the peak LR from")
    best = min(table, key=lambda lr: table[lr])
    return best, {"chosen": best, "on": "validation" if study.eval.split else "held-out (no split)",
                  "mean_loss": {f"{lr:g}": v for lr, v in table.items()}}


def run_studies(studies: list[tuple[StudyConfig, Path]], runs_dir: str | Path, *, share_prefixes: bool = True,
                launcher=None, workers: int = 1, executor=None) -> list[dict[str, Any]]:
    """Several studies planned as one sweep, so that identical prefixes are computed once even
    across studies (two target domains share their generic pre-training), then one
    results.json per study in its own directory. ``launcher``, ``workers`` and ``executor``
    choose where the runs execute (:func:`replaytune.study.sweep.execute`).

    A study with several ``midtrain.lrs`` runs in two sweeps: first everything that does not
    depend on the mid-training LR plus the baseline at every LR; then, at the LR the baseline
    chose on validation losses, the other mid-training runs and references. The first sweep is
    planned with the second's runs at every candidate LR in view (:func:`_plan_first`), so it
    keeps the checkpoints they branch from: the second sweep starts from the shared stable
    part of the baseline's WSD run instead of step 0.
    """

    first = [(i, lab, cfg) for i, (study, _) in enumerate(studies) for lab, cfg in build_runs(study)]
    # planning opens every store: a bad one is refused here, before anything is written
    tasks = _plan_first(studies, first, runs_dir, share_prefixes)
    for study, out_dir in studies:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "study.json", json.dumps(study.model_dump(mode="json"), indent=2))
    labelled, total, computed = _sweep(first, runs_dir, share_prefixes, launcher, workers, executor, tasks)
    extra: dict[int, dict[str, Any]] = {}
    second = []
    for i, (study, _) in enumerate(studies):
        if study.midtrain is not None and len(midtrain_lrs(study)) > 1:
            lr, table = choose_midtrain_lr(study, [(lab, d) for j, lab, d in labelled if j == i])
            extra[i] = {"midtrain_lr": table}
            second += [(i, lab, cfg) for lab, cfg in build_runs(study, midtrain_lr=lr)]
    second = _new_runs(first, second)
    if second:
        # one plan over both sweeps: the first sweep's runs are finished (skipped), the new ones
        # branch from the checkpoints _plan_first kept; sweep.json then lists every run
        labelled, total, computed = _sweep(first + second, runs_dir, share_prefixes, launcher, workers, executor)
    compute = {"steps_alone": total, "steps_computed": computed,
               "saved_fraction": 1.0 - computed / total if total else 0.0}
    out = []
    for i, (study, out_dir) in enumerate(studies):
        mine = [(labels, d) for j, labels, d in labelled if j == i]
        results = collect(study, mine, out_dir, extra.get(i))
        results["compute"] = compute
        write_text(out_dir / "results.json", json.dumps(results, indent=2))
        out.append(results)
    return out


def _new_runs(first: list, later: list) -> list:
    """The runs of ``later`` not already in ``first`` (same run directory: the same config)."""
    from replaytune.study import sweep

    done = {sweep.run_key(cfg) for _, _, cfg in first}
    out, seen = [], set(done)
    for item in later:
        key = sweep.run_key(item[2])
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _plan_first(studies: list[tuple[StudyConfig, Path]], first: list, runs_dir: str | Path, share_prefixes: bool):
    """The first sweep's tasks, planned with the second sweep's runs at every candidate
    mid-training LR appended: those runs are dropped again, but the branch points they would
    use stay in the first sweep's ``save_at``. Whichever LR wins, the second sweep (planned
    as first + its runs, in the same order) branches at exactly those steps."""
    from replaytune.study import sweep

    later = []
    if share_prefixes:
        for i, (study, _) in enumerate(studies):
            if study.midtrain is not None and len(midtrain_lrs(study)) > 1:
                for lr in midtrain_lrs(study):
                    later += [(i, lab, cfg) for lab, cfg in build_runs(study, midtrain_lr=lr)]
    later = _new_runs(first, later)
    tasks = sweep.build_tasks([cfg for _, _, cfg in first + later], runs_dir, share_prefixes=share_prefixes)
    return tasks[:len(first)]


def _sweep(items: list[tuple[int, dict[str, Any], RunConfig]], runs_dir: str | Path, share_prefixes: bool, launcher,
           workers: int, executor, tasks=None) -> tuple[list[tuple[int, dict[str, Any], Path]], int, int]:
    """Plan (unless ``tasks`` are given) and run one sweep of (study index, labels, config);
    (labelled run dirs, steps alone, steps computed)."""
    from replaytune.study import sweep

    if tasks is None:
        tasks = sweep.build_tasks([cfg for _, _, cfg in items], runs_dir, share_prefixes=share_prefixes)
    result = sweep.execute(tasks, launcher, workers=workers, executor=executor)
    sweep.write_summary(Path(runs_dir), tasks, result)
    return ([(i, labels, t.run_dir) for (i, labels, _), t in zip(items, tasks)], result.total_steps,
            result.computed_steps)
