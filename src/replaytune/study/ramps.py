"""Ramp arms of the study: continuous replay schedules beside the two-stage grid.

Kotha & Liang (2026) leave continuous schedules open (docs/method.md, "Ramps"). This module
adds, for each shape of :class:`RampGrid`, one arm per seed in each setting, at the same
target data and the same total steps as the two-stage arms:

* fine-tuning: pre-train on generic for ``N - F`` steps, then fine-tune under the ramp, where
  ``F = T * E / mean(1 - rho)`` (:func:`replaytune.ramp.finetune_ramp`); a ramp whose mean rho
  equals a grid rho has the grid arm's exact length, so only the shape differs;
* mid-training: one WSD run of N steps whose target weight follows ``1 - rho(t)``, scaled to
  hold ``gamma = T * E / N`` (:func:`replaytune.ramp.midtrain_ramp`).

A seed draws the same unique target data in every arm (the s-th disjoint draw), so arms are
*paired* by seed. :func:`compare_ramps` sets each ramp against the best two-stage arm of its
setting (lowest mean target loss, best LR): per seed the difference in final target loss and,
when the setting's reference fit is there, the log of the effective-data ratio; the interval
is a leave-one-seed-out jackknife with a t quantile (n - 1 degrees of freedom). The shape
wins only when the whole interval is on its side.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterator

from pydantic import Field

from replaytune import ramp as R
from replaytune.config import Frozen as _Frozen

RAMP_SETTINGS = {"finetune": "finetune_ramp", "midtrain": "midtrain_ramp"}


class RampGrid(_Frozen):
    finetune: list[str] = Field(
        ["linear:1:0.5", "follow-lr:1:0.5", "stepped:3:0.9:0.6"],
        description="Fine-tuning shapes (rho at points; mean rho 0.75 each: the length of the rho = 0.75 arm).")
    midtrain: list[str] = Field(
        ["upsample-end:0.25:1:0", "upsample-end:0.5:1:0", "linear:1:0"],
        description="Mid-training shapes of 1 - rho(t), scaled to gamma (the same target data as the two-stage arms).")
    seeds: list[int] | None = Field(None, description="Seeds of the ramp arms (default: the study's seeds).")
    lr: float | None = Field(None, gt=0, description="Fine-tuning peak LR of the ramp arms (default: the grid's first).")
    level: float = Field(0.9, gt=0, lt=1, description="Confidence level of the jackknife t intervals.")


def _lr(peak: float, kind: str, warmup: float, decay: float = 0.1, warmup_steps: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"peak": peak, "schedule": kind, "warmup": warmup, "decay": decay}
    if warmup_steps is not None:
        out["warmup_steps"] = warmup_steps
    return out


def ramp_arms(study: Any, warm: int) -> Iterator[tuple[dict[str, Any], str, int, list[dict[str, Any]]]]:
    """(labels, run name, target sequences, phases) of every ramp arm (the study places each seed's
    target sequences, as for its two-stage arms).

    ``study`` is a ``study.runs.StudyConfig`` with ``ramps`` set; the run config around the
    phases is the study's own (``runs._base``), so the arms differ from the grid only in schedule.
    """
    grid: RampGrid = study.ramps
    N, T, B = study.steps, study.target_batches, study.batch_size
    seeds = grid.seeds if grid.seeds is not None else study.seeds
    n = max(1, int(round(T * B)))
    pre = study.pretrain
    if study.finetune is not None:
        ft = study.finetune
        lr = grid.lr if grid.lr is not None else ft.lrs[0]
        for shape in grid.finetune:
            pts = R.shape_points(shape, lr_schedule=ft.schedule)
            plan = R.finetune_ramp(T, ft.epochs, pts)
            if plan.steps >= N:
                raise R.ScheduleError(f"fine-tuning ramp {shape} needs {plan.steps} steps, not less than the budget {N}")
            for seed in seeds:
                name = f"ftramp_{_slug(shape)}_s{seed}"
                phases = [
                    {"name": "pretrain", "steps": N - plan.steps, "constant": study.generic_name,
                     "lr": _lr(pre.lr, pre.schedule, pre.warmup, pre.decay, warm)},
                    {"name": "finetune", "finetune": {"target_steps": T, "epochs": ft.epochs, "ramp": shape,
                                                      "target": study.target_name, "generic": study.generic_name},
                     "lr": _lr(lr, ft.schedule, ft.warmup), "reset_optimizer": True, "seed": seed},
                ]
                labels = {"setting": RAMP_SETTINGS["finetune"], "schedule": shape, "rho": R.mean_rho(pts),
                          "alpha": None, "lr": lr, "x": T, "seed": seed, "switch_step": N - plan.steps}
                yield labels, name, n, phases
    if study.midtrain is not None:
        mt = study.midtrain
        gamma = T * mt.epochs / N
        for shape in grid.midtrain:
            pts = R.shape_points(shape, lr_schedule="wsd", decay=mt.decay)
            plan = R.midtrain_ramp(N, gamma, pts)  # refused here, before anything runs, if gamma does not fit
            first_target = next((s for s in range(N) if plan.ramp.weights_at(s)[R.TARGET] > 0), N)
            for seed in seeds:
                name = f"mtramp_{_slug(shape)}_s{seed}"
                phases = [{"name": "midtrain", "steps": N,
                           "ramp": {"gamma": gamma, "shape": shape, "target": study.target_name,
                                    "generic": study.generic_name},
                           "lr": _lr(mt.lr, "wsd", mt.warmup, mt.decay, warm)}]
                labels = {"setting": RAMP_SETTINGS["midtrain"], "schedule": shape, "rho": R.mean_rho(pts),
                          "alpha": None, "lr": mt.lr, "x": T, "seed": seed, "switch_step": first_target}
                yield labels, name, n, phases


def _slug(shape: str) -> str:
    return shape.replace(":", "_")


# --------------------------------------------------------------------------------------
# Analysis (numbers from results rows only)
# --------------------------------------------------------------------------------------


def jackknife_t(values: list[float], level: float) -> dict[str, Any]:
    """Mean of paired differences with a leave-one-seed-out jackknife t interval (n - 1 dof), the
    headline's interval (study/paired.py) applied to a plain mean."""
    from replaytune.study.paired import t_quantile

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "interval": None, "n": n, "se": None}
    loo = [(sum(values) - v) / (n - 1) for v in values]
    centre = statistics.fmean(loo)
    se = math.sqrt((n - 1) / n * sum((x - centre) ** 2 for x in loo))
    q = t_quantile(level, n - 1)
    return {"mean": mean, "interval": [mean - q * se, mean + q * se], "n": n, "se": se}


def compare_ramps(rows: list[dict[str, Any]], fits: dict[str, Any] | None = None, *, level: float = 0.9) -> dict[str, Any]:
    """Each ramp shape against the best two-stage arm of its setting, paired by seed.

    ``rows``: results.json's runs; ``fits``: the efficiency curves (``{setting: {"fit": {A, B, C}}}``)
    for the log effective-data ratio; without one only the loss differences are given.
    Returned per setting: the best arm (name, rho, alpha, lr, mean loss) and per shape the seeds,
    ``loss_diff`` (ramp - best; negative is better) and ``log_multiplier`` (log x_eff ramp / x_eff
    best; positive is better), each with its interval, and ``beats_best``: the interval excludes 0
    on the ramp's side.
    """
    out: dict[str, Any] = {"level": level, "method": "paired by seed; leave-one-seed-out jackknife t interval"}
    for setting, ramp_setting in RAMP_SETTINGS.items():
        arms: dict[tuple, dict[int, float]] = {}
        for r in rows:
            if r.get("setting") != setting or r.get("reference") or r.get("target_loss") is None:
                continue
            arms.setdefault((r.get("rho"), r.get("alpha"), r.get("lr")), {})[r["seed"]] = float(r["target_loss"])
        ramps: dict[str, dict[int, float]] = {}
        for r in rows:
            if r.get("setting") == ramp_setting and r.get("target_loss") is not None:
                ramps.setdefault(r["schedule"], {})[r["seed"]] = float(r["target_loss"])
        if not arms or not ramps:
            continue
        best = min(arms, key=lambda k: statistics.fmean(arms[k].values()))
        fit = ((fits or {}).get(setting) or {}).get("fit")
        entry: dict[str, Any] = {"best": {"rho": best[0], "alpha": best[1], "lr": best[2],
                                          "mean_target_loss": statistics.fmean(arms[best].values()),
                                          "seeds": sorted(arms[best])}, "shapes": {}}
        for shape, losses in ramps.items():
            seeds = sorted(set(losses) & set(arms[best]))
            diff = [losses[s] - arms[best][s] for s in seeds]
            row: dict[str, Any] = {"seeds": seeds, "mean_target_loss": statistics.fmean(losses[s] for s in seeds)
                                   if seeds else None, "loss_diff": jackknife_t(diff, level) if seeds else None}
            if fit is not None and seeds:
                logs = [_log_ratio(fit, losses[s], arms[best][s]) for s in seeds]
                row["log_multiplier"] = jackknife_t(logs, level) if all(v is not None for v in logs) else None
                if row["log_multiplier"] is not None:
                    row["multiplier"] = math.exp(row["log_multiplier"]["mean"])
                    iv = row["log_multiplier"]["interval"]
                    row["multiplier_interval"] = None if iv is None else [math.exp(iv[0]), math.exp(iv[1])]
            iv = (row["loss_diff"] or {}).get("interval")
            row["beats_best"] = bool(iv is not None and iv[1] < 0)
            row["loses_to_best"] = bool(iv is not None and iv[0] > 0)
            entry["shapes"][shape] = row
        paired_m = paired_multipliers(rows, setting, level)
        if paired_m is not None:
            entry["paired_multipliers"] = paired_m
        out[setting] = entry
    return out


def paired_multipliers(rows: list[dict[str, Any]], setting: str, level: float = 0.9) -> dict[str, Any] | None:
    """Every two-stage arm (at its best LR) and every ramp of ``setting`` as a multiplier over the
    setting's no-replay baseline, read off its baseline reference curve (rows labelled
    ``reference``) by the headline's estimator and interval (:func:`replaytune.study.paired.analyse`:
    paired seed jackknife, t interval). None without at least 3 reference points or 2 common seeds.
    """
    from replaytune.study import efficiency as eff
    from replaytune.study import paired

    one = lambda v: abs(v - 1.0) < 1e-9  # noqa: E731
    groups = eff.group_runs(r for r in rows if r.get("setting") == setting)
    base_like = [g for g in groups if abs(g["rho"]) < 1e-9 and one(g["alpha"])]
    refs = eff.best_per(base_like, lambda g: g["x"])
    method = [g for g in groups if not g["reference"]]
    bases = [g for g in base_like if not g["reference"]]
    if len(refs) < 3 or not bases:
        return None
    base = eff.best_per(bases, lambda g: 0)[0]
    seeds_of = lambda g: dict(zip(g["seeds"], g["target_losses"]))  # noqa: E731
    arms = {f"rho={g['rho']:g}" + ("" if setting == "finetune" else f", alpha={g['alpha']:g}"): seeds_of(g)
            for g in eff.best_per([g for g in method if g["x"] == base["x"] and g not in base_like],
                                  lambda g: (g["rho"], g["alpha"])).values()}
    for r in rows:
        if r.get("setting") == RAMP_SETTINGS[setting] and r.get("target_loss") is not None:
            arms.setdefault(r["schedule"], {})[r["seed"]] = float(r["target_loss"])
    design = paired.design_from_groups({float(x): seeds_of(g) for x, g in refs.items()}, seeds_of(base),
                                       float(base["x"]), arms, lambda g: g)
    if len(design.seeds) < paired.MIN_SEEDS:
        return None
    try:
        res = paired.analyse(design, level)
    except paired.FitError as exc:
        return {"error": str(exc)}
    keep = ("multiplier", "interval", "lower_bound", "seeds_past_range", "loss", "interpolated")
    return {"baseline": f"rho=0 at x = {base['x']:g}, lr={base['lr']:g}", "interval_method": res["interval_method"],
            "kind": res["kind"], "slope_per_doubling": res["slope_per_doubling"], "seeds": res["seeds"],
            "x_range": res["x_range"], "arms": {n: {k: a.get(k) for k in keep} for n, a in res["arms"].items()}}


def _log_ratio(fit: dict[str, float], loss: float, base: float) -> float | None:
    A, B, C = fit["A"], fit["B"], fit["C"]
    if loss <= C or base <= C or A <= 0 or B == 0:
        return None
    return (math.log(A / (loss - C)) - math.log(A / (base - C))) / B


def summary_lines(comparison: dict[str, Any]) -> list[str]:
    """Printable lines: per setting the best two-stage arm and each shape's paired difference."""
    pct = f"{round(100 * comparison['level'])}%"
    lines = []
    for setting in RAMP_SETTINGS:
        c = comparison.get(setting)
        if not c:
            continue
        b = c["best"]
        lines.append(f"{setting}: best two-stage arm rho={b['rho']:g}" + (f", alpha={b['alpha']:g}" if b["alpha"] is not None else "")
                     + f", lr={b['lr']:g}: target {b['mean_target_loss']:.4f} (seeds {b['seeds']})")
        for shape, row in c["shapes"].items():
            d = row["loss_diff"]
            if d is None:
                lines.append(f"  {shape}: no paired seeds")
                continue
            iv = "n/a" if d["interval"] is None else f"[{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}]"
            verdict = "beats it" if row["beats_best"] else ("loses" if row["loses_to_best"] else "no difference shown")
            mult = (f"; multiplier {row['multiplier']:.3g}x" if "multiplier" in row else "")
            lines.append(f"  {shape}: target {row['mean_target_loss']:.4f}, ramp - best {d['mean']:+.4f} "
                         f"{pct} {iv} over {d['n']} seeds{mult}: {verdict}")
        pm = c.get("paired_multipliers") or {}
        if pm.get("arms"):
            lines.append(f"  multipliers over the no-replay baseline ({pm['baseline']}; {pct} {pm['interval_method']}, "
                         f"{pm['kind']}, {pm['slope_per_doubling']:.3f} nats per doubling):")
            for name, a in pm["arms"].items():
                m, lb, iv2 = a.get("multiplier"), a.get("lower_bound"), a.get("interval")
                value = f"{m:.2f}x" if m is not None else (f"> {lb:.1f}x" if lb else "none")
                span = f" [{iv2[0]:.2f}, {iv2[1]:.2f}]" if iv2 else ""
                lines.append(f"    {name:26s} {value}{span}  target {a['loss']:.4f}")
    return lines
