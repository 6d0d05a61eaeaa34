"""The reference fit, its inversion and multipliers, with the unpaired bootstrap (pure, on numbers).

Pure functions on numbers (no files, no models), following Kotha & Liang (2026) as
restated in docs/method.md, "Target data efficiency":

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
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from replaytune.errors import ReplaytuneError

P0 = (0.1, 0.2, 2.0)  # the paper's initial guess for (A, B, C)
MAXFEV = 10000  # the paper's evaluation budget
MIN_B = 1e-6  # a fitted exponent at or below this is a flat curve: not invertible
RESAMPLES = 1000
LEVEL = 0.95
MIN_GOOD_RESAMPLES = 20  # fewer successful refits than this: no interval
TOL = 1e-9


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
