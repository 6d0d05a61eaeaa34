"""Target data efficiency: the reference fit, its inversion and replay multipliers.

Pure functions on numbers (no files, no models), following Kotha & Liang (2026) as
restated in METHOD.md, "Target data efficiency":

1. Reference runs mix target data uniformly through the whole run at several amounts of
   unique target data x. Their final target losses are fitted with

       L(x) = A / x^B + C

   by non-linear least squares (scipy ``curve_fit``, initial guess A=0.1, B=0.2, C=2.0,
   maxfev 10000, as the paper). C is the asymptote: the loss with unlimited target data.
2. A run with target loss L has *effective data* ``x_eff = (A / (L - C))^(1/B)``: the
   amount of unique target data a reference run would need to reach L. A loss at or below
   C has no finite effective data; we return ``None`` and never a made-up number.
3. The multiplier of run M over baseline R is ``x_eff(M) / x_eff(R)``. The unit of x
   cancels: x may be counted in batches, sequences or tokens.

Units. The fit is made on x divided by the smallest reference x, then A is converted back
(A / (x/s)^B = A s^B / x^B). With the paper's x = 1, 2, 4, 8, 16 batches this is exactly
the paper's fit; with x in sequences or tokens it keeps the paper's initial guess sensible
(from x ~ 1e5 tokens the unscaled fit lands on B ~ 25 with a poor residual).

Bounds. The paper's fit is unbounded (Levenberg-Marquardt). A curve that does not fall
with x (A <= 0 or B <= 0) cannot be inverted, so when the unbounded fit fails or lands
there we refit once with A >= 0, B >= 0, C >= 0 (trust-region reflective) and record
``method="bounded"`` in the :class:`Fit`; a bounded fit that still has B ~ 0 is refused.

Uncertainty (:func:`bootstrap`). The reference points are resampled with replacement and
refitted ``resamples`` times (default 1000, seed 0); with several losses per x (seeds),
the losses are resampled within each x instead, keeping the design. A run given as a list
of seed losses is resampled the same way. Each multiplier's interval is the percentile
interval of the refits that succeeded; failed refits (including resamples with fewer than
3 distinct x) are counted and reported, not hidden. In a resample where a run's loss is at
or below C its effective data counts as +infinity, so an interval's upper end may be
unbounded (``None`` in JSON).

"Best" runs (:func:`best_runs`) follow the paper: fine-tuning replay = best replay
fine-tuning run over fine-tuning without replay; mid-training replay = best alpha = 1,
rho > 0 run over (rho = 0, alpha = 1); full schedule = best other (rho, alpha) over the
same baseline. Candidates exclude the baseline itself, so a multiplier below 1 honestly
says replay hurt. Runs repeated over seeds are averaged per configuration, and over a
learning-rate grid the best LR is kept for each configuration (baselines included).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from replaytune.errors import ReplaytuneError

P0 = (0.1, 0.2, 2.0)  # the paper's initial guess for (A, B, C)
MAXFEV = 10000  # the paper's evaluation budget
MIN_B = 1e-6  # a fitted exponent at or below this is a flat curve: not invertible
RESAMPLES = 1000
LEVEL = 0.95
MIN_GOOD_RESAMPLES = 20  # fewer successful refits than this: no interval
COMPARISONS = ("finetune_replay", "midtrain_replay", "full_schedule")
_TOL = 1e-9


class FitError(ReplaytuneError, ValueError):
    """The reference fit cannot be made (too few points, bad numbers, no convergence)."""


def curve(x: Any, A: float, B: float, C: float) -> Any:
    """L(x) = A / x^B + C (vectorized over x)."""
    return A * np.power(x, -B) + C


@dataclass(frozen=True)
class Fit:
    """A fitted reference curve L(x) = A / x^B + C and the points it was fitted to."""

    A: float
    B: float
    C: float
    xs: tuple[float, ...] = ()
    losses: tuple[float, ...] = ()
    rmse: float | None = None
    method: str = "paper"  # "paper": unbounded curve_fit as the paper; "bounded": A, B, C >= 0

    def loss_at(self, x: Any) -> Any:
        return curve(np.asarray(x, dtype=float), self.A, self.B, self.C)

    def to_dict(self) -> dict[str, Any]:
        return {"A": self.A, "B": self.B, "C": self.C, "rmse": self.rmse, "n_points": len(self.xs), "method": self.method}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Fit":
        """A fit saved by :meth:`to_dict` (only A, B and C are needed)."""
        try:
            A, B, C = (float(data[k]) for k in ("A", "B", "C"))
        except (KeyError, TypeError, ValueError) as exc:
            raise FitError(f"fit needs numbers A, B and C, got {dict(data)!r}") from exc
        if not (A > 0 and B > 0 and math.isfinite(A) and math.isfinite(B) and math.isfinite(C)):
            raise FitError(f"fit A={A:g}, B={B:g}, C={C:g} is not a falling curve (need A > 0, B > 0)")
        return cls(A, B, C, method=str(data.get("method", "paper")), rmse=data.get("rmse"))


def _check_points(xs: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(xs, dtype=float).ravel()
    y = np.asarray(losses, dtype=float).ravel()
    if x.shape != y.shape:
        raise FitError(f"reference: {x.size} x values but {y.size} losses")
    for i, (xi, yi) in enumerate(zip(x, y)):
        if not (math.isfinite(xi) and xi > 0):
            raise FitError(f"reference[{i}]: x must be a finite number > 0, got {xi:g}")
        if not math.isfinite(yi):
            raise FitError(f"reference[{i}]: loss must be a finite number, got {yi:g}")
    distinct = np.unique(x).size
    if distinct < 3:
        raise FitError(
            f"reference: need at least 3 distinct x values to fit A, B and C, got {distinct} "
            f"({x.size} point(s)); add reference runs at more amounts of target data"
        )
    return x, y


def _accept(params: np.ndarray, x: np.ndarray, y: np.ndarray) -> bool:
    """A falling curve: A > 0, B > 0, and a drop over the reference range that is not
    negligible next to the spread of the losses (a flat fit to rising data has A ~ 1e-8)."""
    A, B, C = params
    if not (np.all(np.isfinite(params)) and A > 0 and B > MIN_B):
        return False
    drop = A * (x.min() ** -B - x.max() ** -B)
    return bool(drop > 1e-3 * (y.max() - y.min()))


def fit_reference(xs: Sequence[float], losses: Sequence[float]) -> Fit:
    """Fit L(x) = A / x^B + C to reference points (x: unique target data, loss: target loss).

    Several losses at one x (seeds) are all fitted, which weights each x by its count.
    Raises :class:`FitError` with fewer than 3 distinct x, non-positive x, non-finite
    values, or when neither the paper's fit nor the bounded retry gives a falling curve.
    """
    from scipy.optimize import curve_fit

    x_all, y = _check_points(xs, losses)
    scale = float(x_all.min())
    x = x_all / scale  # fit in units of the smallest reference amount (see the module docstring)
    params = None
    method = "paper"
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # OptimizeWarning: no covariance with 3 points; overflow in trials
        try:
            params, _ = curve_fit(curve, x, y, p0=P0, maxfev=MAXFEV)
        except (RuntimeError, ValueError, FloatingPointError):
            params = None
        if params is None or not _accept(params, x, y):
            method = "bounded"
            try:
                params, _ = curve_fit(
                    curve, x, y, p0=P0, bounds=([0.0, 0.0, 0.0], [np.inf, np.inf, np.inf]), max_nfev=MAXFEV
                )
            except (RuntimeError, ValueError, FloatingPointError) as exc:
                raise FitError(f"reference: the fit L(x) = A / x^B + C did not converge ({exc})") from exc
    if not _accept(params, x, y):
        A, B, C = params
        raise FitError(
            f"reference: fitted A={A:.4g}, B={B:.4g}, C={C:.4g} is not a curve falling with x; "
            f"check that the reference losses decrease as target data grows"
        )
    An, B, C = (float(p) for p in params)
    A = An * scale**B  # A / (x/s)^B = (A s^B) / x^B
    rmse = float(np.sqrt(np.mean((curve(x_all, A, B, C) - y) ** 2)))
    return Fit(A, B, C, tuple(float(v) for v in x_all), tuple(float(v) for v in y), rmse, method)


def effective_data(fit: Fit, loss: float) -> float | None:
    """x_eff = (A / (L - C))^(1/B), or ``None`` when L <= C (no finite effective data).

    ``None`` also when the value overflows a float (L a hair above C): effectively
    unlimited data, which is no number to report either.
    """
    loss = float(loss)
    if not math.isfinite(loss) or loss <= fit.C:
        return None
    try:
        x = (fit.A / (loss - fit.C)) ** (1.0 / fit.B)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _mean(value: float | Sequence[float]) -> float:
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) == 0:
            raise FitError("a run's list of seed losses is empty")
        return float(np.mean(np.asarray(value, dtype=float)))
    return float(value)


def multipliers(
    fit: Fit, runs: Mapping[str, float | Sequence[float]], baseline: str
) -> dict[str, dict[str, float | None]]:
    """Per run: ``loss``, ``effective_x`` and ``multiplier`` = x_eff(run) / x_eff(baseline).

    A run may give one loss or a list of seed losses (their mean is used). ``effective_x``
    is ``None`` for a loss at or below C; the multiplier is ``None`` when either side has
    no finite effective data. The baseline's own multiplier is 1.0 when defined.
    """
    if baseline not in runs:
        raise FitError(f"baseline '{baseline}' is not one of the runs ({', '.join(runs) or 'none'})")
    base_x = effective_data(fit, _mean(runs[baseline]))
    out: dict[str, dict[str, float | None]] = {}
    for name, value in runs.items():
        loss = _mean(value)
        x_eff = effective_data(fit, loss)
        mult = x_eff / base_x if (x_eff is not None and base_x) else None  # base_x 0.0: underflow
        out[name] = {"loss": loss, "effective_x": x_eff, "multiplier": mult}
    return out


# -- bootstrap ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    """Percentile intervals from refits on resampled data (see the module docstring)."""

    resamples: int
    seed: int
    level: float
    mode: str  # "points": reference points resampled; "seeds": losses resampled within each x
    failed: int  # refits that failed (fewer than 3 distinct x, no convergence, flat curve)
    intervals: dict[str, dict[str, Any]]  # name -> {"effective_x": [lo, hi] | None, "multiplier": ..., "below_C": n}
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "resamples": self.resamples, "seed": self.seed, "level": self.level, "mode": self.mode,
            "failed": self.failed, "note": self.note,
        }


def _order_interval(values: np.ndarray, level: float) -> list[float | None] | None:
    """Percentile interval by order statistics (works with +inf; ``None`` for an unbounded end)."""
    v = np.sort(values[~np.isnan(values)])
    if v.size < MIN_GOOD_RESAMPLES:
        return None
    lo = v[int(math.floor((1 - level) / 2 * (v.size - 1)))]
    hi = v[int(math.ceil((1 + level) / 2 * (v.size - 1)))]
    return [float(lo) if math.isfinite(lo) else None, float(hi) if math.isfinite(hi) else None]


def bootstrap(
    xs: Sequence[float],
    losses: Sequence[float],
    runs: Mapping[str, float | Sequence[float]],
    baseline: str,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Bootstrap:
    """Bootstrap intervals of every run's effective data and multiplier over ``baseline``.

    Cost: ``resamples`` curve fits on a handful of points (about a millisecond each).
    """
    x, y = _check_points(xs, losses)
    if baseline not in runs:
        raise FitError(f"baseline '{baseline}' is not one of the runs ({', '.join(runs) or 'none'})")
    if resamples < 1:
        raise FitError(f"bootstrap resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(x == v) for v in np.unique(x)]
    mode = "seeds" if any(g.size > 1 for g in groups) else "points"
    names = list(runs)
    seeds_of = {n: np.atleast_1d(np.asarray(runs[n], dtype=float)) for n in names}
    xe = np.full((resamples, len(names)), np.nan)
    failed = 0
    few = mode == "points" and len(groups) < 4  # every resample repeats the data or degenerates
    for i in range(0 if few else resamples):
        if mode == "points":
            idx = rng.integers(0, x.size, x.size)
        else:  # keep every x, resample its seed losses
            idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        run_loss = [float(np.mean(s[rng.integers(0, s.size, s.size)])) if s.size > 1 else float(s[0]) for s in seeds_of.values()]
        try:
            f = fit_reference(x[idx], y[idx])
        except FitError:
            failed += 1
            continue
        for j, loss in enumerate(run_loss):
            e = effective_data(f, loss)
            xe[i, j] = math.inf if e is None else e
    b = names.index(baseline)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = xe / xe[:, [b]]  # inf/inf -> nan (dropped); x/inf -> 0; inf/x -> inf
    intervals = {}
    for j, name in enumerate(names):
        if few:
            intervals[name] = {"effective_x": None, "multiplier": None, "below_C": 0}
            continue
        good = ~np.isnan(xe[:, j])
        intervals[name] = {
            "effective_x": _order_interval(xe[:, j], level),
            "multiplier": _order_interval(ratio[:, j], level),
            "below_C": int(np.sum(np.isinf(xe[good, j]))),
        }
    note = ""
    if few:
        note = f"only {len(groups)} reference points: a resample can only repeat or degenerate; no interval (need >= 4)"
    elif resamples - failed < MIN_GOOD_RESAMPLES:
        note = f"only {resamples - failed} of {resamples} refits succeeded: no interval"
    return Bootstrap(int(resamples), int(seed), float(level), mode, failed, intervals, note)


# -- choosing the paper's comparisons from a results.json "runs" list ------------------------------


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
    zero = lambda v: abs(v) < _TOL  # noqa: E731
    one = lambda v: abs(v - 1.0) < _TOL  # noqa: E731
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
        groups = [g for g in group_runs(runs) if g["setting"] == curve and abs(g["rho"]) < _TOL
                  and (curve == "finetune" or abs(g["alpha"] - 1.0) < _TOL)]
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
    """One comparison by :func:`replaytune.paired.analyse` over the seeds that ran every arm,
    the baseline and every reference point; None when fewer than 2 seeds did.

    Arms: every candidate configuration of the comparison at its best LR (on validation
    losses); the best arm is chosen on validation losses inside the analysis; reference points:
    the best LR of each x of the curve. Reported losses are the runs' ``target_loss``.
    """
    from replaytune import paired

    main = group_runs(_main(runs))
    base = pick["baseline"]
    setting = base["setting"]
    zero = lambda v: abs(v) < _TOL  # noqa: E731
    one = lambda v: abs(v - 1.0) < _TOL  # noqa: E731
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
