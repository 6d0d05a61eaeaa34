"""From the records of a study's runs on disk to results.json: losses, noise, multipliers, the geometry.

Reads run records only (never live objects), so results can be rebuilt from disk.
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

from replaytune import rundir
from replaytune import schedule as sched
from replaytune.study import efficiency as eff
from replaytune.study import ramps as study_ramps
from replaytune.study.config import PAPER, StudyConfig


def final_loss(record: dict[str, Any], source: str) -> float | None:
    val = (record.get("final") or {}).get("eval", {}).get(source)
    return None if val is None or not math.isfinite(val) else float(val)


def _reported(record: dict[str, Any], source: str) -> float | None:
    """The reported loss: the test half of the held-out set where the run split it (``eval.split``)."""
    ev = (record.get("final") or {}).get("eval", {})
    return final_loss(record, f"{source}/test" if f"{source}/test" in ev else source)


def data_fingerprint(stores: list[str | Path]) -> str:
    """A short digest of the prepared training and held-out tokens of every store (in the order
    given): two results with the same fingerprint were computed on the same token streams."""
    import hashlib

    import numpy as np

    from replaytune.data.store import open_store

    h = hashlib.sha256()
    for path in stores:
        store = open_store(path)
        for split in (store.train, store.val):
            tokens = np.ascontiguousarray(split.tokens)
            h.update(str(tokens.dtype).encode() + str(tokens.size).encode())
            h.update(memoryview(tokens).cast("B"))
    return h.hexdigest()[:12]


def collect(study: StudyConfig, labelled: list[tuple[dict[str, Any], Path]], out_dir: Path,
            extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build results.json content from the run directories' record.json files.

    ``target_loss`` and ``generic_loss`` are the reported losses (the test half of the held-out
    set where runs split it), ``target_val`` the validation half that choices are made on.
    """
    rows = []
    for labels, run_dir in labelled:
        record = rundir.read_record(run_dir)
        rows.append({
            "name": record.get("name", run_dir.name), **labels,
            "target_loss": _reported(record, study.target_name),
            "target_val": final_loss(record, f"{study.target_name}/val"),
            "generic_loss": _reported(record, study.generic_name),
            **({"heldout": {name: _reported(record, name) for name in study.heldout}} if study.heldout else {}),
            "run_dir": os.path.relpath(run_dir, out_dir),
            "wall_time_s": record.get("wall_time_s"),
        })
    results: dict[str, Any] = {"runs": rows, "meta": {
        "target_source": study.target_name, "generic_source": study.generic_name,
        "steps": study.steps, "batch_size": study.batch_size, "seq_len": study.seq_len,
        "target_batches": study.target_batches, "model": study.model.model_dump(mode="json", exclude_none=True),
        "seeds": study.seeds, "draw": study.draw,
        "held_out": "test half (choices on the validation half)" if study.eval.split else "one set (choices and reports)",
        "data_fingerprint": data_fingerprint([study.target_store, study.generic_store, *study.heldout.values()]),
        **({"heldout_sources": list(study.heldout)} if study.heldout else {}),
        **(extra_meta or {}),
    }}
    if study.pretrain is None:
        results["meta"]["protocol"] = ("fine-tuning from the pretrained model at fixed target epochs: x * E / (1 - rho) "
                                       "steps, no pre-training phase")
        results["base"] = base_losses(study, labelled)
    family = study.reference.family if study.reference is not None else "uniform"
    results["meta"]["reference_family"] = family
    results.update(analyse(rows, family, level=study.reference.level if study.reference is not None else eff.LEVEL))
    if study.midtrain is not None:
        mt = study.midtrain
        results["midtrain_geometry"] = midtrain_geometry(study.steps, study.target_batches * mt.epochs, mt.replay,
                                                         mt.decay, math.ceil(study.pretrain.warmup * study.steps))
        results["midtrain_geometry_paper"] = midtrain_geometry(1024, 32, PAPER["midtrain"]["replay"], 0.1,
                                                               math.ceil(0.01 * 1024))
    if study.ramps is not None:
        results["ramps"] = study_ramps.compare_ramps(rows, results["efficiency"].get("curves"), level=study.ramps.level)
    if study.replay_search:
        results["replay_search"] = {s: replay_search(study, labelled, s, results.get("noise", {}))
                                    for s in ("finetune", "midtrain") if getattr(study, s) is not None}
    return results


def base_losses(study: StudyConfig, labelled: list[tuple[dict[str, Any], Path]]) -> dict[str, float | None] | None:
    """The model's reported losses before any fine-tuning: the step-0 evaluation of the run that
    made one (``eval.at_start``), per source (target, generic, held-out-only); None if no run did."""
    from replaytune.train.metrics import read_metrics

    for _, run_dir in labelled:
        for m in read_metrics(run_dir):
            if m["kind"] == "eval" and m["step"] == 0:
                ev = m["eval"]
                pick = {name: ev.get(f"{name}/test", ev.get(name))
                        for name in (study.target_name, study.generic_name, *study.heldout)}
                return {k: (None if v is None or not math.isfinite(v) else float(v)) for k, v in pick.items()}
    return None


def midtrain_geometry(steps: int, target_steps: float, rhos: list[float], decay: float, warmup_steps: int,
                      alpha: float = 1.0) -> list[dict[str, Any]]:
    """Where Stage 2 sits in the WSD schedule, per rho: the LR window the target data gets.

    Per row: ``switch_step``, ``stage2_steps``, ``lr_at_switch`` (over the peak), ``stage2_at_peak``
    (share of Stage 2's steps at the peak LR, before the cooldown) and ``target_dose``, the
    LR-weighted target steps ``sum over Stage 2 of lr/peak x (1 - rho)``. The paper (1024 steps,
    32 target steps, 10 % cooldown = 102 steps) at rho = 0: switch 992, LR at switch 0.31 of the
    peak, none of Stage 2 at the peak; a 512-step run with 32 target steps and the same 10 %
    cooldown (51 steps) gives rho = r the paper's window of a larger rho.
    """
    rows = []
    for rho in rhos:
        plan = sched.two_stage(steps, target_steps / steps, rho, alpha)
        f = [sched.lr_factor(k, steps, kind="wsd", decay=decay, warmup_steps=warmup_steps)
             for k in range(plan.switch_step, steps)]
        rows.append({"rho": rho, "switch_step": plan.switch_step, "stage2_steps": steps - plan.switch_step,
                     "lr_at_switch": f[0] if f else None,
                     "stage2_at_peak": sum(v >= 1.0 - 1e-12 for v in f) / len(f) if f else None,
                     "target_dose": sum(f) * (1.0 - rho) * alpha})
    return rows


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
        finals.setdefault(key, []).append(final_loss(rec, target))
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
            # "log-linear": A / x^B + C did not identify its asymptote (B tiny, C far below the
            # data, or the bounded fallback); the multipliers come from L = a - b log2 x
            for k in ("kind", "slope_per_doubling", "intercept", "paired_error"):
                if k in c:
                    entry[k] = c[k]
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
            "multiplier": v["multiplier"], "interval": v["interval"], "level": v.get("level", level),
            "interval_method": v.get("interval_method"), "paired": bool(v.get("paired", False)),
            "seeds": v.get("seeds") if v.get("seeds") is not None else min(len(v["method"]["seeds"]), len(v["baseline"]["seeds"])),
            "interpolated": v.get("interpolated"), "bracket_multiplier": v.get("bracket_multiplier"),
            "lower_bound": v.get("lower_bound"), "seeds_past_range": v.get("seeds_past_range"),
            "fit": v.get("kind"), "slope_per_doubling": v.get("slope_per_doubling"), "x_range": v.get("x_range"),
            "best_of": v["candidates"], "chosen_on": v.get("chosen_on"),
            "method_loss": v["method"]["target_loss"], "baseline_loss": v["baseline"]["target_loss"],
            "arms": v.get("arms"),
            **({"error": v["error"]} if v.get("error") else {}),
        }
        for k, v in comparisons.items()
    }
    return {
        "multipliers": {k: (v["multiplier"] if v else None) for k, v in comparisons.items()},
        "noise": noise,
        "efficiency": efficiency,
    }
