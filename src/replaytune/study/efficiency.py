"""Target data efficiency from run records: groups of runs, the best arm, reference points, comparisons.

The fit itself (``L(x) = A / x^B + C``, effective data, the unpaired bootstrap) is
:mod:`~replaytune.study.fit`; paired multipliers over seeds are :mod:`~replaytune.study.paired`.

"Best" runs (:func:`best_runs`) follow the paper: fine-tuning replay = best replay
fine-tuning run over fine-tuning without replay; mid-training replay = best alpha = 1,
rho > 0 run over (rho = 0, alpha = 1); full schedule = best other (rho, alpha) over the
same baseline. Candidates exclude the baseline itself, so a multiplier below 1 honestly
says replay hurt. Runs repeated over seeds are averaged per configuration, and over a
learning-rate grid the best LR is kept for each configuration (baselines included).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from replaytune.study.fit import (  # noqa: F401  (part of this module's interface)
    LEVEL, MAXFEV, MIN_B, MIN_GOOD_RESAMPLES, P0, RESAMPLES, TOL, Bootstrap, Fit, FitError, bootstrap, effective_data,
    fit_reference, multipliers,
)

COMPARISONS = ("finetune_replay", "midtrain_replay", "full_schedule")


def _num(value: Any, default: float) -> float:
    return default if value is None else float(value)


def group_runs(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Average seeds: one entry per (setting, rho, alpha, lr, x), in first-seen order.

    Each entry: ``setting, rho, alpha, lr, names, seeds, target_losses, target_loss`` (mean),
    ``generic_loss`` (mean of the available ones, or None), ``target_std`` and
    ``generic_std`` (ddof=1; None with one seed), ``reference`` (True for reference points of
    the ``baseline`` family), ``name`` and ``run`` (the record of the lowest seed, for curves).
    """
    groups: dict[tuple, dict[str, Any]] = {}
    for r in runs:
        if r.get("target_loss") is None:
            continue
        key = (r.get("setting"), _num(r.get("rho"), 0.0), _num(r.get("alpha"), 1.0), r.get("lr"), r.get("x"))
        g = groups.setdefault(key, {
            "setting": key[0], "rho": key[1], "alpha": key[2], "lr": key[3], "x": key[4],
            "names": [], "seeds": [], "target_losses": [], "target_vals": [], "generic_losses": [], "runs": [],
        })
        g["names"].append(r.get("name"))
        g["seeds"].append(r.get("seed"))
        g["target_losses"].append(float(r["target_loss"]))
        g["target_vals"].append(None if r.get("target_val") is None else float(r["target_val"]))
        if r.get("generic_loss") is not None:
            g["generic_losses"].append(float(r["generic_loss"]))
        g["runs"].append(r)
    out = []
    for g in groups.values():
        t = np.asarray(g["target_losses"])
        g["target_loss"] = float(t.mean())
        # validation losses (the first half of the held-out set) make the choices when every seed has one
        vals = g["target_vals"]
        g["target_val"] = float(np.mean(vals)) if vals and all(v is not None for v in vals) else None
        g["target_std"] = float(t.std(ddof=1)) if t.size > 1 else None
        gl = np.asarray(g["generic_losses"])
        g["generic_loss"] = float(gl.mean()) if gl.size else None
        g["generic_std"] = float(gl.std(ddof=1)) if gl.size > 1 else None
        g["reference"] = any(r.get("reference") for r in g["runs"])  # a baseline-family reference point
        g["run"] = min(g.pop("runs"), key=lambda r: (r.get("seed") is None, r.get("seed") or 0))
        g["name"] = g["run"].get("name")
        out.append(g)
    return out


def choice_loss(g: Mapping[str, Any]) -> float:
    """The loss a choice (LR, best configuration) is made on: the mean validation loss when the
    runs have one (``target_val``), else the reported loss itself."""
    v = g.get("target_val")
    return float(g["target_loss"] if v is None else v)


def _best(groups: list[dict[str, Any]]) -> dict[str, Any] | None:
    return min(groups, key=choice_loss) if groups else None


def best_per(groups: Iterable[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Any]) -> dict[Any, dict[str, Any]]:
    """The group with the lowest mean target loss for each ``key(group)``, keys in first-seen order
    (the validation loss where the runs have one: :func:`choice_loss`).

    With ``key = (rho, alpha)`` over the groups of one setting this is "the best LR of each
    configuration", the paper's choice (ties keep the first group seen).
    """
    out: dict[Any, dict[str, Any]] = {}
    for g in groups:
        k = key(g)
        if k not in out or choice_loss(g) < choice_loss(out[k]):
            out[k] = g  # type: ignore[assignment]
    return out


def pooled_std(groups: Iterable[Mapping[str, Any]], which: str = "target") -> float | None:
    """Seed-to-seed std of one run's final loss, pooled over configurations run with seeds.

    ``sqrt(sum_g sum_s (L_gs - mean_g)^2 / sum_g (n_g - 1))``: the pooled variance, which
    weights each configuration by its degrees of freedom (averaging the per-group stds would
    bias low and overweight groups with two seeds). None when no group has two seeds.
    """
    devs, dof = 0.0, 0
    for g in groups:
        vals = np.asarray(g[f"{which}_losses"], dtype=float)
        if vals.size > 1:
            devs += float(np.sum((vals - vals.mean()) ** 2))
            dof += vals.size - 1
    return math.sqrt(devs / dof) if dof else None


def _main(runs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The method runs: without the ``reference`` label that baseline-family reference runs carry."""
    return [r for r in runs if not r.get("reference")]


def best_runs(runs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """The paper's three comparisons, or None where the runs for one are missing.

    Each: ``{"method": group, "baseline": group, "candidates": n}`` with groups from
    :func:`group_runs`; best = lowest mean target loss, so over an LR grid the best LR of
    each configuration wins; ``candidates`` counts the groups the method was picked from
    (the more, the more a lucky seed can flatter the best one).
    """
    groups = group_runs(_main(runs))
    ft = [g for g in groups if g["setting"] == "finetune"]
    mt = [g for g in groups if g["setting"] == "midtrain"]
    zero = lambda v: abs(v) < TOL  # noqa: E731
    one = lambda v: abs(v - 1.0) < TOL  # noqa: E731
    ft_base = _best([g for g in ft if zero(g["rho"])])
    mt_base = _best([g for g in mt if zero(g["rho"]) and one(g["alpha"])])
    candidates = {
        "finetune_replay": ([g for g in ft if not zero(g["rho"])], ft_base),
        "midtrain_replay": ([g for g in mt if one(g["alpha"]) and not zero(g["rho"])], mt_base),
        "full_schedule": ([g for g in mt if not (zero(g["rho"]) and one(g["alpha"]))], mt_base),
    }
    out: dict[str, dict[str, Any] | None] = {}
    for key, (cands, base) in candidates.items():
        ok = cands and base is not None
        out[key] = {"method": _best(cands), "baseline": base, "candidates": len(cands)} if ok else None
    return out


FAMILIES = ("uniform", "baseline")
CURVES = {  # comparison -> the reference curve it reads its effective data from, per family
    "uniform": {"finetune_replay": "uniform", "midtrain_replay": "uniform", "full_schedule": "uniform"},
    "baseline": {"finetune_replay": "finetune", "midtrain_replay": "midtrain", "full_schedule": "midtrain"},
}


def reference_points(runs: Iterable[Mapping[str, Any]], curve: str = "uniform") -> tuple[list[float], list[float]]:
    """(xs, losses) of one reference curve, every seed a point.

    ``uniform``: the ``setting == "reference"`` runs (target mixed uniformly through the run).
    ``finetune``: fine-tuning without replay at every amount x of unique target data (the
    baseline itself at its own x included), the best LR of each x with all its seeds.
    ``midtrain``: mid-training with rho = 0, alpha = 1 at every x.
    """
    runs = [r for r in runs if r.get("x") is not None and r.get("target_loss") is not None]
    if curve == "uniform":
        chosen = [r for r in runs if r.get("setting") == "reference"]
    elif curve in ("finetune", "midtrain"):
        groups = [g for g in group_runs(runs) if g["setting"] == curve and abs(g["rho"]) < TOL
                  and (curve == "finetune" or abs(g["alpha"] - 1.0) < TOL)]
        best = best_per(groups, lambda g: g["x"])  # the best LR of each x, as for the baseline
        chosen = [r for r in runs if any(r.get("name") in g["names"] for g in best.values())]
    else:
        raise FitError(f"unknown reference curve {curve!r}; expected uniform, finetune or midtrain")
    return [float(r["x"]) for r in chosen], [float(r["target_loss"]) for r in chosen]


def falls_beyond_noise(xs: Sequence[float], losses: Sequence[float], z: float = 2.0) -> str | None:
    """Why the curve cannot carry a multiplier (None when it can, or when noise is unmeasured).

    Compares the mean loss at the smallest and the largest x: the drop must exceed ``z``
    standard errors of that difference, the seed-to-seed std pooled over every x with
    several seeds. A curve that does not fall beyond its noise has no measurable slope, and
    any effective data read from it would be noise.
    """
    x, y = np.asarray(xs, dtype=float), np.asarray(losses, dtype=float)
    if x.size == 0:
        return None
    groups = [{"x": v, "target_losses": y[x == v]} for v in np.unique(x)]
    sd = pooled_std(groups)
    if sd is None:
        return None
    lo, hi = groups[0], groups[-1]
    drop = float(np.mean(lo["target_losses"]) - np.mean(hi["target_losses"]))
    se = sd * math.sqrt(1 / lo["target_losses"].size + 1 / hi["target_losses"].size)
    if drop > z * se:
        return None
    return (f"the reference curve does not fall beyond its seed noise: loss {np.mean(lo['target_losses']):.4f} at "
            f"x = {lo['x']:g} vs {np.mean(hi['target_losses']):.4f} at x = {hi['x']:g} (drop {drop:+.4f}, "
            f"{z:g} standard errors = {z * se:.4f} with seed-to-seed std {sd:.4f})")


def compare(
    runs: Sequence[Mapping[str, Any]],
    family: str = "uniform",
    *,
    resamples: int = 0,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[dict[str, dict[str, Any] | None], dict[str, dict[str, Any]]]:
    """The paper's three comparisons, each read off its reference curve of ``family``.

    Returns (comparisons, curves). ``curves[name]`` holds the curve's points and its
    :class:`Fit` (``"fit"``) or the reason there is none (``"error"``: too few points, a
    failed fit, a curve flat within its seed noise). Each comparison is
    :func:`compare_best`'s entry for its curve plus ``reference`` (the curve's name); where
    the curve has no fit the multiplier and interval are None and ``error`` says why.
    """
    if family not in FAMILIES:
        raise FitError(f"reference family {family!r}: expected one of {', '.join(FAMILIES)}")
    curves: dict[str, dict[str, Any]] = {}
    out: dict[str, dict[str, Any] | None] = {}
    picks = best_runs(runs)
    for key, pick in picks.items():
        name = CURVES[family][key]
        if pick is None:
            out[key] = None
            continue
        if name not in curves:
            xs, ys = reference_points(runs, name)
            curves[name] = {"xs": xs, "losses": ys}
            try:
                if not xs:
                    raise FitError("no reference runs for this curve")
                why = falls_beyond_noise(xs, ys)
                if why:
                    raise FitError(why)
                curves[name]["fit"] = fit_reference(xs, ys)
            except FitError as exc:
                curves[name]["error"] = str(exc)
        c = curves[name]
        if "fit" in c:
            entry = None
            try:
                entry = paired_entry(runs, key, name, pick, level)
            except FitError as exc:
                c.setdefault("paired_error", str(exc))
            if entry is None:  # no seed has every arm and reference point: the unpaired bootstrap
                entry = compare_best(c["fit"], runs, resamples=resamples, seed=seed, level=level, only=key)[key]
                assert entry is not None
                entry.update(paired=False, level=level, seeds=min(len(entry["method"]["seeds"]), len(entry["baseline"]["seeds"])),
                             interval_method="percentile bootstrap, unpaired" if resamples > 0 else None,
                             interpolated=None, bracket_multiplier=None)
            else:
                c.update(kind=entry["kind"], slope_per_doubling=entry["slope_per_doubling"], intercept=entry["intercept"])
        else:
            entry = {**pick, "multiplier": None, "interval": None, "method_x": None, "baseline_x": None,
                     "bootstrap": None, "error": c["error"]}
        out[key] = {**entry, "reference": name}
    return out, curves


def _label(g: Mapping[str, Any]) -> str:
    return f"rho={g['rho']:g}" + (f", alpha={g['alpha']:g}" if g["setting"] == "midtrain" else "")


def paired_entry(runs: Sequence[Mapping[str, Any]], key: str, curve_name: str, pick: Mapping[str, Any],
                 level: float) -> dict[str, Any] | None:
    """One comparison by :func:`replaytune.study.paired.analyse` over the seeds that ran every arm,
    the baseline and every reference point; None when fewer than 2 seeds did.

    Arms: every candidate configuration of the comparison at its best LR (on validation
    losses); the best arm is chosen on validation losses inside the analysis; reference points:
    the best LR of each x of the curve. Reported losses are the runs' ``target_loss``.
    """
    from replaytune.study import paired

    main = group_runs(_main(runs))
    base = pick["baseline"]
    setting = base["setting"]
    zero = lambda v: abs(v) < TOL  # noqa: E731
    one = lambda v: abs(v - 1.0) < TOL  # noqa: E731
    mine = [g for g in main if g["setting"] == setting and g["x"] == base["x"]]
    if key == "finetune_replay":
        cands = [g for g in mine if not zero(g["rho"])]
    elif key == "midtrain_replay":
        cands = [g for g in mine if one(g["alpha"]) and not zero(g["rho"])]
    else:
        cands = [g for g in mine if not (zero(g["rho"]) and one(g["alpha"]))]
    arms = {_label(g): g for g in best_per(cands, lambda g: (g["rho"], g["alpha"])).values()}
    if curve_name == "uniform":
        refs = best_per([g for g in group_runs(runs) if g["setting"] == "reference"], lambda g: g["x"])
    else:
        refs = best_per([g for g in group_runs(runs) if g["setting"] == curve_name and zero(g["rho"])
                         and (curve_name == "finetune" or one(g["alpha"]))], lambda g: g["x"])
    if len(refs) < 3 or not arms:
        return None
    by_seed = lambda g: dict(zip(g["seeds"], g["target_losses"]))  # noqa: E731
    has_val = all(g["target_val"] is not None for g in arms.values())
    val_of = (lambda g: dict(zip(g["seeds"], g["target_vals"]))) if has_val else None  # noqa: E731
    design = paired.design_from_groups({float(x): g for x, g in refs.items()}, base, float(base["x"] if base["x"] is not None else "nan"), arms, by_seed, val_of)
    if len(design.seeds) < paired.MIN_SEEDS:
        return None
    r = paired.analyse(design, level)
    best = arms[r["best"]]
    return {
        "method": best, "baseline": base, "candidates": len(arms), "method_x": r["method_x"],
        "baseline_x": r["baseline_x"], "multiplier": r["multiplier"], "interval": r["interval"], "bootstrap": None,
        "level": level, "interval_method": r["interval_method"], "paired": True, "seeds": r["seeds"],
        "interpolated": r["interpolated"], "bracket_multiplier": r["bracket_multiplier"], "kind": r["kind"],
        "lower_bound": r.get("lower_bound"), "seeds_past_range": r.get("seeds_past_range"),
        "slope_per_doubling": r["slope_per_doubling"], "intercept": r["intercept"], "x_range": r["x_range"],
        "chosen_on": "validation" if has_val else "test (no validation losses)",
        "arms": {n: {k: v for k, v in a.items()} | {"lr": arms[n]["lr"], "name": arms[n]["name"]}
                 for n, a in r["arms"].items()},
    }


def compare_best(
    fit: Fit,
    runs: Sequence[Mapping[str, Any]],
    *,
    resamples: int = 0,
    seed: int = 0,
    level: float = LEVEL,
    only: str | None = None,
) -> dict[str, dict[str, Any] | None]:
    """The paper's multipliers with details, from a results.json ``runs`` list (``only``: one of them).

    Per comparison: ``method``, ``baseline`` and ``candidates`` (see :func:`best_runs`),
    ``method_x``/``baseline_x`` (effective data or None), ``multiplier`` (or None) and,
    with ``resamples`` > 0 and the fit's reference points, ``interval`` ([lo, hi], an end
    None when unbounded) and ``bootstrap`` (:meth:`Bootstrap.to_dict`).
    """
    out: dict[str, dict[str, Any] | None] = {}
    for key, pick in best_runs(runs).items():
        if only is not None and key != only:
            continue
        if pick is None:
            out[key] = None
            continue
        method, base = pick["method"], pick["baseline"]
        m = multipliers(fit, {"method": method["target_losses"], "baseline": base["target_losses"]}, "baseline")
        entry = {
            "method": method, "baseline": base, "candidates": pick["candidates"], "method_x": m["method"]["effective_x"],
            "baseline_x": m["baseline"]["effective_x"], "multiplier": m["method"]["multiplier"],
            "interval": None, "bootstrap": None,
        }
        if resamples > 0 and len(fit.xs) >= 3:
            bs = bootstrap(fit.xs, fit.losses, {"method": method["target_losses"], "baseline": base["target_losses"]},
                           "baseline", resamples=resamples, seed=seed, level=level)
            entry["interval"] = bs.intervals["method"]["multiplier"]
            entry["bootstrap"] = {**bs.to_dict(), "below_C": bs.intervals["method"]["below_C"]}
        out[key] = entry
    return out


# -- the `replaytune efficiency` input and output -------------------------------------------------


def parse_input(data: Any, source: str = "input") -> tuple[list[float], list[float], dict[str, Any], str]:
    """Check ``{"reference": [{"x", "loss"}, ...], "runs": {name: loss}, "baseline": name}``.

    Returns (xs, losses, runs, baseline). A run's loss may be a number or a list of seed
    losses. Errors name ``source`` and the field.
    """
    def bad(field: str, why: str) -> FitError:
        return FitError(f"{source}: {field} {why}")

    def number(value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad(field, f"must be a finite number, got {value!r}")
        return float(value)

    if not isinstance(data, dict):
        raise bad("top level", 'must be an object with "reference", "runs" and "baseline"')
    for key in ("reference", "runs", "baseline"):
        if key not in data:
            raise bad(f"'{key}'", 'is missing; expected {"reference": [{"x": ..., "loss": ...}], "runs": {name: loss}, "baseline": name}')
    ref, runs_in, baseline = data["reference"], data["runs"], data["baseline"]
    if not isinstance(ref, list):
        raise bad("'reference'", 'must be a list of {"x": number, "loss": number}')
    xs, losses = [], []
    for i, pt in enumerate(ref):
        if not isinstance(pt, dict) or "x" not in pt or "loss" not in pt:
            raise bad(f"reference[{i}]", f'must be {{"x": number, "loss": number}}, got {pt!r}')
        x = number(pt["x"], f"reference[{i}].x")
        if x <= 0:
            raise bad(f"reference[{i}].x", f"must be > 0 (unique target data), got {x:g}")
        xs.append(x)
        losses.append(number(pt["loss"], f"reference[{i}].loss"))
    if len(set(xs)) < 3:
        raise bad("'reference'", f"needs at least 3 distinct x values to fit A, B and C, got {len(set(xs))}")
    if not isinstance(runs_in, dict) or not runs_in:
        raise bad("'runs'", "must be a non-empty object {name: loss}")
    runs: dict[str, Any] = {}
    for name, value in runs_in.items():
        if isinstance(value, list):
            if not value:
                raise bad(f"runs['{name}']", "is an empty list of seed losses")
            runs[name] = [number(v, f"runs['{name}'][{k}]") for k, v in enumerate(value)]
        else:
            runs[name] = number(value, f"runs['{name}']")
    if not isinstance(baseline, str) or baseline not in runs:
        raise bad("'baseline'", f"{baseline!r} is not one of the runs ({', '.join(runs)})")
    return xs, losses, runs, baseline


def analyze(
    xs: Sequence[float],
    losses: Sequence[float],
    runs: Mapping[str, float | Sequence[float]],
    baseline: str,
    *,
    resamples: int = 0,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """The JSON-ready result of ``replaytune efficiency``.

    ``{"fit": {A, B, C, rmse, n_points, method}, "baseline": name, "runs": {name: {loss,
    effective_x, multiplier}}}``; with ``resamples`` > 0 every run also gets
    ``effective_x_interval``, ``multiplier_interval`` ([lo, hi], None where unbounded or
    unavailable) and ``below_C``, and the result a ``bootstrap`` block.
    """
    fit = fit_reference(xs, losses)
    out: dict[str, Any] = {"fit": fit.to_dict(), "baseline": baseline, "runs": multipliers(fit, runs, baseline)}
    if resamples > 0:
        bs = bootstrap(xs, losses, runs, baseline, resamples=resamples, seed=seed, level=level)
        for name, iv in bs.intervals.items():
            out["runs"][name].update(
                effective_x_interval=iv["effective_x"], multiplier_interval=iv["multiplier"], below_C=iv["below_C"]
            )
        out["bootstrap"] = bs.to_dict()
    return out
