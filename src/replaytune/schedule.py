"""Mixture schedules, the paper's schedule constructors and LR schedules.

A *schedule* is a validated list of stages. Each stage starts at a step and gives a
weight to every source; weights are normalized when the schedule is built, so a stage
written ``{"target": 1, "generic": 3}`` means 25 % target. Everything that can be wrong
with a schedule (negative or all-zero weights, stages out of order, a first stage that
does not start at step 0, rho >= 1, delta > 1) is refused here, when the schedule is
built, never when training reaches it.

The constructors implement the two settings of Kotha & Liang (2026), see docs/method.md:

* :func:`finetune` - target data for ``target_steps`` batches repeated ``epochs`` times,
  with replay fraction rho: the stage grows to ``target_steps * epochs / (1 - rho)`` steps
  (64 epochs x 1 batch = 64 steps; rho = 0.5 doubles it to 128).
* :func:`two_stage` - mid-training: gamma of all steps is target data, a share alpha of
  it goes to Stage 2 where it is mixed with replay rho;
  ``delta = gamma * alpha / (1 - rho)``, ``w2 = 1 - rho``,
  ``w1 = gamma * (1 - alpha) / (1 - delta)``, Stage 2 starts at ``floor((1 - delta) * N)``.
* :func:`uniform` - target spread evenly through the run (the efficiency reference runs).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from replaytune.errors import ReplaytuneError

TARGET = "target"
GENERIC = "generic"
GAMMA_TOLERANCE = 1.1  # a two-stage run whose realised target share is off by more than 10% warns


class ScheduleError(ReplaytuneError, ValueError):
    """An impossible schedule. The message is one line that names the offending value."""


def _check_fraction(name: str, value: float, *, low: float, high: float, high_open: bool) -> float:
    value = float(value)
    bad = math.isnan(value) or value < low or (value >= high if high_open else value > high)
    if bad:
        bracket = ")" if high_open else "]"
        raise ScheduleError(f"{name} must be in [{low:g}, {high:g}{bracket}, got {value:g}")
    return value


@dataclass(frozen=True)
class Stage:
    """From ``start_step`` on (until the next stage), draw sources with these weights."""

    start_step: int
    weights: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"start_step": self.start_step, "weights": dict(self.weights)}


@dataclass(frozen=True)
class Schedule:
    """Stages sorted by start step, the first at step 0; weights normalized to sum to 1.

    Every stage carries a weight for every source of the schedule (0 where a stage
    does not use it), in one fixed source order, so that later code can index by it.
    """

    stages: tuple[Stage, ...]
    sources: tuple[str, ...] = field(default=())

    def __init__(self, stages: Iterable[Stage | Mapping[str, Any]]):
        raw = [s if isinstance(s, Stage) else Stage(int(s["start_step"]), dict(s["weights"])) for s in stages]
        if not raw:
            raise ScheduleError("a schedule needs at least one stage")
        names: list[str] = []
        for st in raw:
            for name in st.weights:
                if name not in names:
                    names.append(name)
        built: list[Stage] = []
        prev = -1
        for i, st in enumerate(raw):
            if i == 0 and st.start_step != 0:
                raise ScheduleError(f"stage 0 must start at step 0, got start_step={st.start_step}")
            if st.start_step <= prev:
                raise ScheduleError(
                    f"stages out of order: stage {i} starts at step {st.start_step}, "
                    f"not after stage {i - 1} (step {prev})"
                )
            prev = st.start_step
            for name, w in st.weights.items():
                w = float(w)
                if math.isnan(w) or w < 0 or math.isinf(w):
                    raise ScheduleError(f"stage {i}: weight of source '{name}' must be >= 0 and finite, got {w:g}")
            total = sum(float(w) for w in st.weights.values())
            if total <= 0:
                raise ScheduleError(f"stage {i} (step {st.start_step}): weights are all zero")
            norm = {name: float(st.weights.get(name, 0.0)) / total for name in names}
            built.append(Stage(st.start_step, norm))
        object.__setattr__(self, "stages", tuple(built))
        object.__setattr__(self, "sources", tuple(names))

    # -- queries ---------------------------------------------------------------------------
    def stage_index(self, step: int) -> int:
        idx = 0
        for i, st in enumerate(self.stages):
            if st.start_step <= step:
                idx = i
        return idx

    def weights_at(self, step: int) -> dict[str, float]:
        return dict(self.stages[self.stage_index(step)].weights)

    def stage_spans(self, steps: int) -> list[tuple[int, int, Stage]]:
        """(start, end) of every stage that begins before ``steps``, end exclusive."""
        spans = []
        for i, st in enumerate(self.stages):
            if st.start_step >= steps:
                break
            end = self.stages[i + 1].start_step if i + 1 < len(self.stages) else steps
            spans.append((st.start_step, min(end, steps), st))
        return spans

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Schedule":
        stages = data["stages"] if isinstance(data, Mapping) and "stages" in data else data
        return cls(stages)


# --------------------------------------------------------------------------------------
# The paper's constructors
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetunePlan:
    """A fine-tuning stage: ``steps`` steps at the schedule's weights (target share 1 - rho)."""

    schedule: Schedule
    steps: int
    target_steps: float  # unique target data in batches (not always whole: a user's file)
    epochs: float
    replay: float

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.schedule.stages[0].weights)

    def to_dict(self) -> dict[str, Any]:
        return {
            "setting": "finetune",
            "steps": self.steps,
            "target_steps": self.target_steps,
            "epochs": self.epochs,
            "replay": self.replay,
            **self.schedule.to_dict(),
        }


def finetune(
    target_steps: float,
    epochs: float,
    replay: float,
    *,
    units: tuple[float, float] | Mapping[str, float] | None = None,
    target: str | Mapping[str, float] = TARGET,
    generic: str | Mapping[str, float] = GENERIC,
) -> FinetunePlan:
    """Fine-tuning with replay fraction ``replay`` (rho): the one route from rho to a schedule.

    The target data (``target_steps`` batches' worth, a whole number in the paper's study, any
    positive amount for a user's file) is seen ``epochs`` times whatever rho is; the stage
    grows to ``target_steps * epochs / w_target`` steps, rounded up, the extra steps being
    generic data. rho = 1 - 1/m for the paper's multipliers m.

    ``units = (m_target, m_generic)``: what one sequence of each source brings in the unit rho
    counts (loss-bearing tokens per sequence, for chat data with masked prompts). Sequence
    weights are then ``w ~ share / m``: ``w_target = ((1 - rho) / m_t) / ((1 - rho) / m_t +
    rho / m_g)``. Equal units (text on both sides, the paper) give exactly ``1 - rho`` and
    ``target_steps * epochs / (1 - rho)`` (64 epochs x 1 batch = 64 steps; rho = 0.5: 128).

    Several sources on a side: ``target`` and ``generic`` map source names to weights within
    their side (normalized there; ``generic={}``: no generic source, rho must be 0), and
    ``units`` maps names to their units per sequence. Source i's share of the unit is
    ``(1 - rho) * t_i`` on the target side, ``rho * g_i`` on the generic side, its sequence
    weight ``w_i ~ share_i / m_i``; ``target_steps`` counts the whole target side and
    ``w_target`` is the target sources' summed weight, so the target side's sequences are
    drawn ``epochs`` times in total.
    """
    if not (target_steps > 0 and math.isfinite(target_steps)):
        raise ScheduleError(f"target_steps must be > 0, got {target_steps}")
    if not (epochs > 0 and math.isfinite(epochs)):
        raise ScheduleError(f"epochs must be > 0, got {epochs}")
    rho = _check_fraction("replay fraction rho", replay, low=0.0, high=1.0, high_open=True)
    t_side, g_side = _side("target", target), _side("generic", generic)
    if not t_side:
        raise ScheduleError("a finetune schedule needs at least one target source")
    both = set(t_side) & set(g_side)
    if both:
        raise ScheduleError(f"source {sorted(both)[0]!r} is on both the target and the generic side")
    if rho > 0 and not g_side:
        raise ScheduleError(f"replay fraction rho {rho:g} needs a generic source")
    # share of the counted unit; rho = 0 keeps generic at weight 0: its held-out loss measures forgetting
    shares = {**{n: (1.0 - rho) * t for n, t in t_side.items()}, **{n: rho * g for n, g in g_side.items()}}
    m = _units(units, list(t_side), list(g_side))
    used = {n: m[n] for n in shares if shares[n] > 0} if m is not None else {}
    if len(set(used.values())) <= 1:
        weights = shares  # equal units: the shares are the sequence weights
    else:
        bad = {n: u for n, u in used.items() if not u > 0}
        if bad:
            raise ScheduleError("units per sequence must be > 0, got " + ", ".join(f"{n} {u:g}" for n, u in m.items()))
        per = {n: (s / m[n] if s > 0 else 0.0) for n, s in shares.items()}
        total = sum(per.values())
        weights = {n: v / total for n, v in per.items()}
    exact = target_steps * epochs / sum(weights[n] for n in t_side)
    steps = max(1, math.ceil(exact - 1e-9))  # 1e-9: 16 * 64 / (1 - 0.75) is 4096, not 4096.0000001
    ts = int(target_steps) if float(target_steps).is_integer() else float(target_steps)
    return FinetunePlan(Schedule([Stage(0, weights)]), steps, ts, float(epochs), rho)


def _side(which: str, sources: str | Mapping[str, float]) -> dict[str, float]:
    """One side's sources with their weights normalized to sum to 1 (a bare name: weight 1)."""
    if isinstance(sources, str):
        return {sources: 1.0}
    for name, w in sources.items():
        if not (float(w) > 0 and math.isfinite(float(w))):
            raise ScheduleError(f"{which} source {name!r}: weight must be > 0 and finite, got {float(w):g}")
    total = sum(float(w) for w in sources.values())
    return {name: float(w) / total for name, w in sources.items()}


def _units(units, t_names: list[str], g_names: list[str]) -> dict[str, float] | None:
    """Units per sequence by source name (a pair: one source per side)."""
    if units is None:
        return None
    if isinstance(units, Mapping):
        missing = [n for n in t_names + g_names if n not in units]
        if missing:
            raise ScheduleError(f"units per sequence: no value for source {missing[0]!r}")
        return {n: float(units[n]) for n in t_names + g_names}
    if len(t_names) != 1 or len(g_names) > 1:
        raise ScheduleError("units as a (target, generic) pair needs one source per side; map source names to units")
    return {t_names[0]: float(units[0]), **({g_names[0]: float(units[1])} if g_names else {})}


@dataclass(frozen=True)
class TwoStagePlan:
    """Mid-training: Stage 1 (generic with a little target), then Stage 2 (target + replay)."""

    schedule: Schedule
    steps: int
    gamma: float
    replay: float
    alpha: float
    delta: float
    switch_step: int
    w1: float
    w2: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "setting": "midtrain",
            "steps": self.steps,
            "gamma": self.gamma,
            "replay": self.replay,
            "alpha": self.alpha,
            "delta": self.delta,
            "switch_step": self.switch_step,
            "stage1_target_weight": self.w1,
            "stage2_target_weight": self.w2,
            "realised_gamma": self.realised_gamma,
            **self.schedule.to_dict(),
        }

    @property
    def realised_gamma(self) -> float:
        """The run's actual target share once the switch is a whole step."""
        return (self.w1 * self.switch_step + self.w2 * (self.steps - self.switch_step)) / self.steps


def two_stage(
    steps: int,
    gamma: float,
    replay: float,
    alpha: float,
    *,
    target: str = TARGET,
    generic: str = GENERIC,
) -> TwoStagePlan:
    """The paper's two-stage mid-training schedule (docs/method.md, "Setting 2").

    Example: N = 1024, gamma = 1/32 (1 batch x 32 epochs), rho = 0.5, alpha = 1 gives
    delta = 1/16, Stage 2 = the last 64 steps at 50 % target, Stage 1 pure generic.
    """
    if int(steps) != steps or steps < 1:
        raise ScheduleError(f"steps must be a positive integer, got {steps}")
    g = _check_fraction("target fraction gamma", gamma, low=0.0, high=1.0, high_open=False)
    if g == 0:
        raise ScheduleError("target fraction gamma must be > 0 (no target data in the run)")
    rho = _check_fraction("replay fraction rho", replay, low=0.0, high=1.0, high_open=True)
    a = _check_fraction("stage-2 allocation alpha", alpha, low=0.0, high=1.0, high_open=False)
    delta = g * a / (1.0 - rho)
    if delta > 1.0 + 1e-12:
        raise ScheduleError(
            f"stage 2 would be longer than the run: delta = gamma*alpha/(1-rho) = "
            f"{g:g}*{a:g}/(1-{rho:g}) = {delta:.4g} > 1; lower gamma or alpha, or rho"
        )
    delta = min(delta, 1.0)
    w2 = 1.0 - rho
    switch = math.floor((1.0 - delta) * steps + 1e-9)
    if delta >= 1.0 or switch <= 0:
        # Stage 2 is the whole run; that needs all target data in it.
        if a < 1.0:
            raise ScheduleError(
                f"delta = {delta:.4g} leaves no room for stage 1, yet alpha = {a:g} < 1 puts target data there"
            )
        w1 = 0.0
        stages = [Stage(0, {target: w2, generic: rho})]
        switch = 0
    else:
        w1 = g * (1.0 - a) / (1.0 - delta)
        if w1 > 1.0 + 1e-12:
            raise ScheduleError(f"stage 1 target weight w1 = {w1:.4g} > 1; lower gamma")
        w1 = min(w1, 1.0)
        stages = [Stage(0, {target: w1, generic: 1.0 - w1})]
        if switch < steps:
            stages.append(Stage(switch, {target: w2, generic: rho}))
    plan = TwoStagePlan(Schedule(stages), int(steps), g, rho, a, delta, switch, w1, w2)
    off = plan.realised_gamma / g
    if not 1 / GAMMA_TOLERANCE <= off <= GAMMA_TOLERANCE:
        warnings.warn(
            f"two-stage schedule: Stage 2 rounds to {steps - switch} of {steps} steps, so the run holds "
            f"{plan.realised_gamma:.3%} target data, not gamma = {g:.3%} ({off:.3g}x); use more steps or a larger gamma"
        )
    return plan


def uniform(gamma: float, *, target: str = TARGET, generic: str = GENERIC) -> Schedule:
    """Target mixed uniformly through the whole run at weight gamma (reference runs)."""
    g = _check_fraction("target fraction gamma", gamma, low=0.0, high=1.0, high_open=False)
    return Schedule([Stage(0, {target: g, generic: 1.0 - g})])


def constant(source: str) -> Schedule:
    """A single source for the whole run (pre-training on generic data)."""
    return Schedule([Stage(0, {source: 1.0})])


# --------------------------------------------------------------------------------------
# Learning-rate schedules
# --------------------------------------------------------------------------------------

LR_SCHEDULES = ("cosine", "wsd", "constant", "linear")


def lr_factor(
    step: int,
    total: int,
    *,
    kind: str = "cosine",
    warmup: float = 0.01,
    decay: float = 0.1,
    final_ratio: float = 0.0,
    warmup_steps: int | None = None,
) -> float:
    """Multiplier of the peak LR at ``step`` (0-based) of a phase of ``total`` steps.

    Linear warmup over ``warmup`` of the steps (at least one step when warmup > 0), then
    ``cosine`` decay to ``final_ratio``, ``wsd`` (constant, then linear decay over the
    final fraction ``decay``), ``linear`` decay, or ``constant``.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    if warmup_steps is not None:
        warm = min(int(warmup_steps), total)
    else:
        warm = int(math.ceil(warmup * total)) if warmup > 0 else 0
    if step < warm:
        return (step + 1) / warm
    if kind == "constant":
        return 1.0
    if kind == "wsd":
        decay_steps = max(1, int(round(decay * total))) if decay > 0 else 0
        start = total - decay_steps
        if decay_steps == 0 or step < start:
            return 1.0
        frac = (step - start) / decay_steps
        return 1.0 - (1.0 - final_ratio) * frac
    span = max(1, total - warm)
    frac = min(1.0, (step - warm) / span)
    if kind == "linear":
        return 1.0 - (1.0 - final_ratio) * frac
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))
