"""Paired multipliers over seeds: every arm, the best one, and an interval that covers.

A *seed* of a study is one random draw of unique target data (and the pre-training prefix
and data order that go with it), shared by every arm and every reference point run with
that seed. Two runs of one seed share its luck: a lucky draw lowers the baseline, every
replay arm and every point of the reference curve alike. The multiplier compares runs of
the same seeds, so that shared part cancels; an interval that resamples the method and the
baseline independently ignores this and, with a handful of seeds, is too narrow or too wide
depending on the sizes of the two noises (the project's simulation of the demo's design put
a percentile bootstrap of that kind at 63-75 % coverage for a nominal 90 %).

Design (:class:`Design`): reference losses ``ref[s, i]`` of seed s at unique data ``xs[i]``,
the baseline's losses ``base[s]`` (at ``base_x``), and each arm's losses ``arms[name][s]``,
all on the test half of the held-out set; optionally the arms' validation losses, on which
the best arm is chosen.

Estimator. ``theta = log2(x_eff(arm) / x_eff(baseline))`` from the reference curve fitted to
the per-x means over the seeds:

* ``log-linear``: ``L = a - b log2 x`` (b: nats per doubling of unique target data). Then
  ``theta = (mean base - mean arm) / b``: the intercept cancels. This is the limit of the
  paper's ``A / x^B + C`` as B -> 0 with C -> -infinity, which is what that fit returns on
  curves whose asymptote the data do not identify.
* ``curve``: the paper's ``A / x^B + C`` (:func:`replaytune.study.fit.fit_reference`), used
  when its fit is the unbounded one and C lies in [0, the lowest mean loss): an asymptote
  that is a loss, below the data.

Interval: a leave-one-seed-out jackknife of the whole estimator (the fit, both effective data,
and for the best arm the choice of the arm on validation losses, all recomputed without seed
s), standard error ``sqrt((S-1)/S sum_s (theta_-s - mean)^2)``, and a t interval with S - 1
degrees of freedom on theta, mapped back by 2^theta. For the log-linear estimator the
jackknife equals the delta method of the ratio of seed means to first order. The t quantile
(instead of a normal or percentile one) is what keeps coverage with 4 seeds:
tests/study/test_coverage.py simulates the demo's design and checks it.

Only seeds that have every arm, the baseline and every reference point enter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from replaytune.study.fit import Fit, FitError, effective_data, fit_reference

INTERVAL_METHOD = "paired seed jackknife, t interval (S - 1 df) on log multiplier"
MIN_SEEDS = 2


@dataclass(frozen=True)
class Design:
    xs: np.ndarray  # [X] distinct reference amounts of unique target data, ascending
    ref: np.ndarray  # [S, X] reference losses per seed
    base: np.ndarray  # [S] the baseline's losses
    base_x: float  # the baseline's own amount of unique target data
    arms: Mapping[str, np.ndarray]  # name -> [S] losses
    arms_val: Mapping[str, np.ndarray] | None = None  # name -> [S] losses the best arm is chosen on
    seeds: Sequence[Any] = field(default_factory=tuple)

    def __post_init__(self):
        S, X = np.shape(self.ref)
        if X != len(self.xs) or np.shape(self.base) != (S,):
            raise FitError(f"paired design: ref is {S} x {X}, xs has {len(self.xs)}, base has {np.size(self.base)}")
        for name, v in {**self.arms, **(self.arms_val or {})}.items():
            if np.shape(v) != (S,):
                raise FitError(f"paired design: arm {name} has {np.size(v)} losses, not one per seed ({S})")


def loglinear(xs: np.ndarray, means: np.ndarray) -> tuple[float, float]:
    """(a, b) of the least-squares line L = a - b log2 x through the per-x means."""
    u = np.log2(np.asarray(xs, dtype=float))
    uc = u - u.mean()
    b = -float(np.dot(uc, means - means.mean()) / np.dot(uc, uc))
    return float(means.mean() + b * u.mean()), b


def curve_identified(fit: Fit, means: np.ndarray) -> bool:
    """The paper's fit has a real asymptote: unbounded fit, 0 <= C < lowest mean loss."""
    return fit.method == "paper" and 0.0 <= fit.C < float(np.min(means))


def choose_kind(xs: np.ndarray, ref: np.ndarray) -> tuple[str, Fit | None]:
    """``("curve", fit)`` when the paper's curve is identified on all seeds, else ``("log-linear", fit or None)``."""
    S, X = ref.shape
    try:
        fit = fit_reference(np.tile(xs, S), ref.ravel())
    except FitError:
        return "log-linear", None
    return ("curve" if curve_identified(fit, ref.mean(axis=0)) else "log-linear"), fit


def _theta(kind: str, xs: np.ndarray, ref: np.ndarray, base: float, losses: np.ndarray) -> np.ndarray:
    """log2 multipliers of mean losses ``losses`` [k] over mean baseline loss ``base``."""
    means = ref.mean(axis=0)
    if kind == "log-linear":
        _, b = loglinear(xs, means)
        if not b > 0:
            return np.full(losses.shape, np.nan)
        return (base - losses) / b
    try:
        fit = fit_reference(np.tile(xs, ref.shape[0]), ref.ravel())
    except FitError:
        return np.full(losses.shape, np.nan)
    xb = effective_data(fit, base)
    out = []
    for L in losses:
        xe = effective_data(fit, float(L))
        out.append(math.log2(xe / xb) if (xe and xb) else (math.inf if (xe is None and xb) else math.nan))
    return np.asarray(out)


def _all_thetas(d: Design, kind: str, keep: np.ndarray) -> tuple[np.ndarray, int | None]:
    """thetas of every arm on seeds ``keep``, and the index of the best arm (lowest mean
    validation loss on those seeds; test losses when no validation losses are given)."""
    names = list(d.arms)
    arm = np.array([d.arms[n][keep].mean() for n in names])
    th = _theta(kind, d.xs, d.ref[keep], float(d.base[keep].mean()), arm)
    choose = d.arms_val if d.arms_val is not None else d.arms
    best = int(np.argmin([choose[n][keep].mean() for n in names])) if names else None
    return th, best


def t_quantile(level: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf((1 + level) / 2, df))


def bracket(xs: np.ndarray, means: np.ndarray, loss: float) -> float | None:
    """Effective data by interpolating log2 x linearly in loss between the two measured
    points whose mean losses bracket ``loss``; None outside the measured range or where
    the bracketing segment does not fall."""
    u = np.log2(np.asarray(xs, dtype=float))
    for i in range(len(xs) - 1):
        hi, lo = means[i], means[i + 1]
        if hi > lo and lo <= loss <= hi:
            return float(2 ** (u[i] + (hi - loss) / (hi - lo) * (u[i + 1] - u[i])))
    return None


def analyse(d: Design, level: float = 0.9, kind: str | None = None) -> dict[str, Any]:
    """Every arm's multiplier over the baseline with its paired interval, and the best arm.

    Returns ``{"kind", "slope_per_doubling", "seeds", "level", "interval_method", "paired",
    "arms": {name: {"multiplier", "interval", "loss", "effective_x", "interpolated",
    "bracket_multiplier"}}, "best": name, "best_of": k, "multiplier", "interval", ...}``
    where the top-level multiplier and interval are the best arm's, its interval taking the
    choice of the arm into account (the choice is redone in every leave-one-out sample).
    """
    S = d.ref.shape[0]
    if S < MIN_SEEDS:
        raise FitError(f"paired intervals need at least {MIN_SEEDS} seeds with every arm and reference point, got {S}")
    fit = None
    if kind is None:
        kind, fit = choose_kind(d.xs, d.ref)
    means = d.ref.mean(axis=0)
    a, b = loglinear(d.xs, means)
    if not b > 0:
        raise FitError(f"the reference curve does not fall with x (slope {b:+.4f} nats per doubling)")
    names = list(d.arms)
    allseeds = np.ones(S, dtype=bool)
    th, best = _all_thetas(d, kind, allseeds)
    loo = np.empty((S, len(names)))
    loo_best = np.empty(S)
    for s in range(S):
        keep = allseeds.copy()
        keep[s] = False
        t_s, b_s = _all_thetas(d, kind, keep)
        loo[s] = t_s
        loo_best[s] = t_s[b_s] if b_s is not None else np.nan
    q = t_quantile(level, S - 1)

    def interval(full: float, reps: np.ndarray) -> list[float] | None:
        if not (np.all(np.isfinite(reps)) and math.isfinite(full)):
            return None
        se = math.sqrt((S - 1) / S * float(np.sum((reps - reps.mean()) ** 2)))
        return [float(2 ** (full - q * se)), float(2 ** (full + q * se))]

    def xeff(L: float) -> float | None:
        if kind == "log-linear":
            return float(2 ** ((a - L) / b))
        return effective_data(fit, L) if fit is not None else None

    base_loss = float(d.base.mean())
    xb = xeff(base_loss)
    bb = bracket(d.xs, means, base_loss)
    lo_x, hi_x = float(d.xs.min()), float(d.xs.max())
    arms_out = {}
    for j, n in enumerate(names):
        L = float(d.arms[n].mean())
        xe = xeff(L)
        br = bracket(d.xs, means, L)
        inside = all(v is not None and lo_x <= v <= hi_x for v in (xe, xb))
        arms_out[n] = {
            "loss": L, "effective_x": xe, "multiplier": float(2 ** th[j]) if math.isfinite(th[j]) else None,
            "interval": interval(float(th[j]), loo[:, j]), "interpolated": inside,
            "bracket_multiplier": (br / bb) if (br is not None and bb) else None,
            "seed_gaps": [float(v) for v in d.base - d.arms[n]],
            # below the reference's mean loss at its largest x: worth more than the measured range
            # holds, whatever the fit says (the curve may flatten before reaching it)
            "lower_bound": (hi_x / (bb or d.base_x)) if L < means[-1] and (bb or d.base_x) else None,
            "seeds_past_range": int(np.sum(d.arms[n] < d.ref[:, -1])),
        }
    out: dict[str, Any] = {
        "kind": kind, "slope_per_doubling": b, "intercept": a, "seeds": S, "seed_ids": list(d.seeds),
        "level": level, "interval_method": INTERVAL_METHOD, "paired": True, "baseline_loss": base_loss,
        "baseline_x": xb, "x_range": [lo_x, hi_x], "arms": arms_out, "best_of": len(names),
        "fit": None if fit is None else fit.to_dict(),
    }
    if best is not None:
        n = names[best]
        out.update(best=n, multiplier=arms_out[n]["multiplier"], interval=interval(float(th[best]), loo_best),
                   interpolated=arms_out[n]["interpolated"], bracket_multiplier=arms_out[n]["bracket_multiplier"],
                   method_x=arms_out[n]["effective_x"], lower_bound=arms_out[n]["lower_bound"],
                   seeds_past_range=arms_out[n]["seeds_past_range"])
    return out


def design_from_groups(
    ref_groups: Mapping[float, Mapping[str, Any]],
    base_group: Mapping[str, Any],
    base_x: float,
    arm_groups: Mapping[str, Mapping[str, Any]],
    loss_of: Callable[[Mapping[str, Any]], Mapping[Any, float]],
    val_of: Callable[[Mapping[str, Any]], Mapping[Any, float]] | None = None,
) -> Design:
    """A :class:`Design` from seed groups: ``loss_of(group)`` maps seed -> loss; only the seeds
    present in every group enter (in sorted order)."""
    groups = [*ref_groups.values(), base_group, *arm_groups.values()]
    common = set(loss_of(groups[0]))
    for g in groups[1:]:
        common &= set(loss_of(g))
    if val_of is not None:
        for g in arm_groups.values():
            common &= set(val_of(g))
    seeds = sorted(common, key=lambda s: (s is None, s))
    xs = np.array(sorted(ref_groups), dtype=float)
    ref = np.array([[loss_of(ref_groups[x])[s] for x in sorted(ref_groups)] for s in seeds], dtype=float).reshape(len(seeds), len(xs))
    base = np.array([loss_of(base_group)[s] for s in seeds], dtype=float)
    arms = {n: np.array([loss_of(g)[s] for s in seeds], dtype=float) for n, g in arm_groups.items()}
    vals = None if val_of is None else {n: np.array([val_of(g)[s] for s in seeds], dtype=float) for n, g in arm_groups.items()}
    return Design(xs, ref, base, float(base_x), arms, vals, seeds)
