"""Continuous replay schedules: a piecewise-linear mixture over a phase (a *ramp*).

Kotha & Liang (2026) study two data stages; continuous schedules (the mixture annealed along
with the learning rate) are the open question they leave (docs/method.md, "Ramps"). A ramp
gives the replay fraction rho at points ``[(t0, rho0), (t1, rho1), ...]`` in fractions of the
phase (t from 0 to 1, non-decreasing; two points at one t make a jump) and is linear between
them. The mixture then draws, up to the end of step s, exactly the rounded integral of each
source's weight (``data/mixture.py``), so a ramp is as exact and as resumable as stages.

Two settings, as for stages:

* :func:`finetune_ramp` - the target data is seen ``epochs`` times whatever the shape; the
  phase length is solved from the mean target weight, ``steps = ceil(T * E / mean(w_t))``,
  and the target weight is then scaled by ``T * E / (steps * mean(w_t)) <= 1`` (at most one
  step's worth), so the target side's integral is exactly ``T * E`` batches. rho may count
  loss tokens: at every point the shares become sequence weights ``w ~ share / m`` as
  :func:`replaytune.schedule.finetune` does (each segment cut into 16 so the token share
  stays linear to within its curvature).
* :func:`midtrain_ramp` - a run of N steps holding a fraction gamma of target data, as
  :func:`replaytune.schedule.two_stage`: the points give the *shape* ``1 - rho(t)`` of the
  target weight, scaled so its mean is gamma (equal target data to any two-stage arm).

Presets (``shape_points``): ``linear:A:B`` (rho from A to B), ``upsample-end:K:A:B`` (rho A,
then linear to B over the last fraction K), ``follow-lr:A:B`` (rho = B + (A - B) * LR factor:
the mixture tied to the LR decay; for WSD a linear move over the decay window), and
``stepped:K:A:B`` (K equal steps from A to B inside the LR plateau, B held through the decay).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from replaytune.schedule import GENERIC, TARGET, ScheduleError, _side, _units, lr_factor

PRESETS = ("linear", "upsample-end", "follow-lr", "stepped")
_UNIT_CUTS = 16  # sub-segments per segment when units per sequence differ


@dataclass(frozen=True)
class Ramp:
    """Weights per source at points of a phase of ``steps`` steps, linear between points.

    ``points`` are (t in [0, 1], weights normalized to sum to 1); every point names every
    source in ``sources`` order. The mixture reads :meth:`cumulative`, the integral of each
    weight from the phase's start, in steps.
    """

    points: tuple[tuple[float, tuple[float, ...]], ...]
    steps: int
    sources: tuple[str, ...]

    def __post_init__(self):
        if int(self.steps) != self.steps or self.steps < 1:
            raise ScheduleError(f"a ramp needs a positive whole number of steps, got {self.steps}")
        _check_times([t for t, _ in self.points])
        for t, w in self.points:
            if len(w) != len(self.sources) or any(not (x >= 0 and math.isfinite(x)) for x in w):
                raise ScheduleError(f"ramp point t={t:g}: weights must be >= 0 and finite, one per source, got {w}")
            if abs(sum(w) - 1.0) > 1e-9:
                raise ScheduleError(f"ramp point t={t:g}: weights sum to {sum(w):g}, not 1")

    @property
    def stages(self) -> tuple:
        return ()  # no stage switches: the mixture moves every step

    def _knots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.array([t for t, _ in self.points], dtype=np.float64) * self.steps
        w = np.array([ws for _, ws in self.points], dtype=np.float64)
        seg = np.diff(x)[:, None] * (w[1:] + w[:-1]) / 2.0
        c = np.zeros_like(w)
        np.cumsum(seg, axis=0, out=c[1:])
        return x, w, c

    def cumulative(self, at: np.ndarray | Sequence[float]) -> np.ndarray:
        """Integral of each source's weight over steps ``[0, at)``, shape ``(len(at), sources)``."""
        x, w, c = self._knots()
        at = np.clip(np.asarray(at, dtype=np.float64), 0.0, float(self.steps))
        j = np.clip(np.searchsorted(x, at, side="right") - 1, 0, len(x) - 2)
        span = x[j + 1] - x[j]
        frac = np.divide(at - x[j], span, out=np.zeros_like(at), where=span > 0)
        here = w[j] + (w[j + 1] - w[j]) * frac[:, None]
        return c[j] + (at - x[j])[:, None] * (w[j] + here) / 2.0

    def weights_at(self, step: int) -> dict[str, float]:
        """The mean weight of each source over step ``step``."""
        cum = self.cumulative([step, step + 1])
        return {n: float(v) for n, v in zip(self.sources, cum[1] - cum[0])}

    def mean_weights(self) -> dict[str, float]:
        cum = self.cumulative([self.steps])[0] / self.steps
        return {n: float(v) for n, v in zip(self.sources, cum)}

    def to_dict(self) -> dict[str, Any]:
        return {"ramp": {"steps": self.steps, "points": [
            {"t": t, "weights": dict(zip(self.sources, w))} for t, w in self.points]}}


def _check_times(ts: Sequence[float]) -> None:
    if len(ts) < 2:
        raise ScheduleError(f"a ramp needs at least two points (t = 0 and t = 1), got {len(ts)}")
    if ts[0] != 0 or ts[-1] != 1:
        raise ScheduleError(f"a ramp's points must run from t = 0 to t = 1, got t = {ts[0]:g} .. {ts[-1]:g}")
    for a, b in zip(ts, ts[1:]):
        if not b >= a:
            raise ScheduleError(f"ramp points out of order: t = {b:g} after t = {a:g}")
    for a, b, c in zip(ts, ts[1:], ts[2:]):
        if a == b == c:
            raise ScheduleError(f"three ramp points at t = {a:g}; a jump needs two")


# --------------------------------------------------------------------------------------
# Shapes: rho at points
# --------------------------------------------------------------------------------------


def shape_points(shape: str | Sequence[Sequence[float]], *, lr_schedule: str = "wsd",
                 decay: float = 0.1) -> list[tuple[float, float]]:
    """rho at points ``[(t, rho), ...]`` from a preset string or explicit points.

    ``linear:0.75:0.25``, ``upsample-end:0.2:0.9:0.5``, ``follow-lr:0.75:0.25``,
    ``stepped:3:0.9:0.5``; the LR schedule and decay fraction place ``follow-lr`` and
    ``stepped`` (the plateau of a WSD schedule ends at ``1 - decay``; other schedules have
    the whole phase as plateau).
    """
    if not isinstance(shape, str):
        pts = [(float(p[0]), float(p[1])) for p in shape]
        _check_points(pts, "ramp points")
        return pts
    name, *args = shape.strip().split(":")
    want = {"linear": 2, "upsample-end": 3, "follow-lr": 2, "stepped": 3}
    if name not in want:
        raise ScheduleError(f"ramp shape {shape!r}: unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    if len(args) != want[name]:
        usage = {"linear": "linear:A:B", "upsample-end": "upsample-end:K:A:B", "follow-lr": "follow-lr:A:B",
                 "stepped": "stepped:K:A:B"}[name]
        raise ScheduleError(f"ramp shape {shape!r}: write {usage} (rho from A to B)")
    try:
        nums = [float(a) for a in args]
    except ValueError:
        raise ScheduleError(f"ramp shape {shape!r}: the numbers after {name}: must be numbers") from None
    plateau = 1.0 - decay if lr_schedule == "wsd" else 1.0
    if name == "linear":
        pts = [(0.0, nums[0]), (1.0, nums[1])]
    elif name == "upsample-end":
        k, a, b = nums
        if not 0 < k <= 1:
            raise ScheduleError(f"ramp shape {shape!r}: K (the final fraction) must be in (0, 1], got {k:g}")
        pts = [(0.0, a), (1.0 - k, a), (1.0, b)] if k < 1 else [(0.0, a), (1.0, b)]
    elif name == "follow-lr":
        a, b = nums
        if lr_schedule == "wsd":
            pts = [(0.0, a), (plateau, a), (1.0, b)] if plateau < 1 else [(0.0, a), (1.0, a)]
        else:  # the LR curve itself, at 33 points (warmup left out: the plateau level holds there)
            ts = np.linspace(0.0, 1.0, 33)
            pts = [(float(t), b + (a - b) * lr_factor(int(round(t * 4096)), 4096, kind=lr_schedule, warmup=0.0))
                   for t in ts]
    else:
        k, a, b = nums
        if k < 1 or not float(k).is_integer():
            raise ScheduleError(f"ramp shape {shape!r}: K (steps up) must be a whole number >= 1, got {k:g}")
        k = int(k)
        pts = [(0.0, a)]
        for j in range(1, k + 1):
            t = plateau * j / (k + 1)
            pts += [(t, a + (b - a) * (j - 1) / k), (t, a + (b - a) * j / k)]
        pts.append((1.0, b))
    _check_points(pts, f"ramp shape {shape!r}")
    return pts


def mean_rho(points: Sequence[tuple[float, float]]) -> float:
    """The shape's mean replay fraction over the phase (trapezoids between its points)."""
    return float(sum((t1 - t0) * (r0 + r1) / 2.0 for (t0, r0), (t1, r1) in zip(points, points[1:])))


def _check_points(pts: list[tuple[float, float]], what: str) -> None:
    try:
        _check_times([t for t, _ in pts])
    except ScheduleError as exc:
        raise ScheduleError(f"{what}: {exc}") from None
    for t, r in pts:
        if not 0 <= r <= 1:
            raise ScheduleError(f"{what}: replay fraction rho must be in [0, 1], got {r:g} at t = {t:g}")


# --------------------------------------------------------------------------------------
# The two settings
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RampPlan:
    ramp: Ramp
    steps: int
    shape: tuple[tuple[float, float], ...]  # rho at points, as asked
    setting: str
    target_sources: tuple[str, ...]
    extra: Mapping[str, Any]

    @property
    def schedule(self) -> Ramp:
        return self.ramp

    @property
    def target_weight(self) -> float:
        """The phase's mean target-side weight (its target data over steps, in batches per step)."""
        m = self.ramp.mean_weights()
        return sum(m[n] for n in self.target_sources)

    def to_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "steps": self.steps, **dict(self.extra),
                "rho_points": [list(p) for p in self.shape], "mean_target_weight": self.target_weight,
                **self.ramp.to_dict()}


def finetune_ramp(
    target_steps: float, epochs: float, shape: Sequence[tuple[float, float]], *,
    units: tuple[float, float] | Mapping[str, float] | None = None,
    target: str | Mapping[str, float] = TARGET, generic: str | Mapping[str, float] = GENERIC,
) -> RampPlan:
    """Fine-tuning under a replay ramp: ``epochs`` passes over the target data, exactly.

    ``shape``: rho at points (:func:`shape_points`). Example: ``linear:0.75:0.25`` has mean
    target weight 0.5, so 1 batch x 64 epochs takes 128 steps, as a constant rho = 0.5.
    """
    if not (target_steps > 0 and math.isfinite(target_steps)):
        raise ScheduleError(f"target_steps must be > 0, got {target_steps}")
    if not (epochs > 0 and math.isfinite(epochs)):
        raise ScheduleError(f"epochs must be > 0, got {epochs}")
    shape = [(float(t), float(r)) for t, r in shape]
    _check_points(shape, "ramp")
    t_side, g_side = _side("target", target), _side("generic", generic)
    if not t_side:
        raise ScheduleError("a finetune ramp needs at least one target source")
    if max(r for _, r in shape) > 0 and not g_side:
        raise ScheduleError("a replay ramp with rho > 0 needs a generic source")
    if min(r for _, r in shape) >= 1:
        raise ScheduleError("a finetune ramp with rho = 1 everywhere holds no target data")
    names = list(t_side) + list(g_side)
    m = _units(units, list(t_side), list(g_side))
    differ = m is not None and len({m[n] for n in names}) > 1
    if differ and any(not m[n] > 0 for n in names):
        raise ScheduleError("units per sequence must be > 0, got " + ", ".join(f"{n} {m[n]:g}" for n in names))
    pts = _refine(shape) if differ else shape

    def weights(rho: float) -> list[float]:
        share = [(1.0 - rho) * t_side[n] for n in t_side] + [rho * g_side[n] for n in g_side]
        per = [s / m[n] for s, n in zip(share, names)] if differ else share
        total = sum(per)
        return [p / total for p in per]

    raw = Ramp(tuple((t, tuple(weights(r))) for t, r in pts), 1, tuple(names))
    nt = len(t_side)
    mean_t = sum(raw.mean_weights()[n] for n in t_side)
    exact = target_steps * epochs / mean_t
    steps = max(1, math.ceil(exact - 1e-9))
    c = exact / steps  # <= 1: the target weight shrinks by under one step's worth, so T * E is exact
    g_rest = [g_side[n] / (m[n] if differ else 1.0) for n in g_side]
    g_rest = [v / sum(g_rest) for v in g_rest] if g_side else []
    scaled = []
    for t, w in raw.points:
        if not g_side or c >= 1.0:
            scaled.append((t, w))
            continue
        wt = [x * c for x in w[:nt]]
        gsum = sum(w[nt:])
        left = 1.0 - sum(wt)
        wg = [x / gsum * left for x in w[nt:]] if gsum > 0 else [p * left for p in g_rest]
        scaled.append((t, tuple(wt + wg)))
    ramp = Ramp(tuple(scaled), steps, tuple(names))
    ts = int(target_steps) if float(target_steps).is_integer() else float(target_steps)
    return RampPlan(ramp, steps, tuple(shape), "finetune", tuple(t_side),
                    {"target_steps": ts, "epochs": float(epochs)})


def _refine(shape: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out = [shape[0]]
    for (t0, r0), (t1, r1) in zip(shape, shape[1:]):
        if t1 == t0:
            out.append((t1, r1))
            continue
        out += [(t0 + (t1 - t0) * k / _UNIT_CUTS, r0 + (r1 - r0) * k / _UNIT_CUTS) for k in range(1, _UNIT_CUTS + 1)]
    return out


def midtrain_ramp(steps: int, gamma: float, shape: Sequence[tuple[float, float]], *,
                  target: str = TARGET, generic: str = GENERIC) -> RampPlan:
    """Mid-training over ``steps`` steps with a fraction ``gamma`` of target data, in the ramp's shape.

    The target weight is ``c * (1 - rho(t))`` with ``c = gamma / mean(1 - rho)``: the same
    target data as a two-stage arm of the same gamma. Example: gamma = 1/32 with
    ``upsample-end:0.125:1:0`` puts none before the last 1/8 and rises to 2 * gamma / 0.125 = 0.5.
    """
    if int(steps) != steps or steps < 1:
        raise ScheduleError(f"steps must be a positive integer, got {steps}")
    if not 0 < gamma <= 1:
        raise ScheduleError(f"target fraction gamma must be in (0, 1], got {gamma:g}")
    shape = [(float(t), float(r)) for t, r in shape]
    _check_points(shape, "ramp")
    raw = Ramp(tuple((t, (1.0 - r, r)) for t, r in shape), 1, (target, generic))
    mean_t = raw.mean_weights()[target]
    if mean_t <= 0:
        raise ScheduleError("ramp shape has rho = 1 everywhere: no target data to place")
    c = gamma / mean_t
    peak = c * max(1.0 - r for _, r in shape)
    if peak > 1.0 + 1e-12:
        raise ScheduleError(f"ramp shape would need a target weight of {peak:.4g} > 1 to hold gamma = {gamma:g}; "
                            "use a flatter shape or a smaller gamma")
    pts = tuple((t, (min(1.0, c * (1.0 - r)), 1.0 - min(1.0, c * (1.0 - r)))) for t, r in shape)
    return RampPlan(Ramp(pts, int(steps), (target, generic)), int(steps), tuple(shape), "midtrain", (target,),
                    {"gamma": float(gamma)})
