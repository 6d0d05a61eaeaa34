"""Replay weights and step count of a fine-tune: what a replay fraction means in sequences.

The weights and steps themselves come from :func:`replaytune.schedule.finetune`, the one
route from rho to a schedule (the study's fine-tuning phases take it too). What this module
adds is measuring the stores: how many training sequences each source has, and how much of
the unit rho counts (loss-bearing tokens, examples, sequences) one sequence brings, so that
a chat target with masked prompts gets its share of the *gradient*, not of the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from replaytune import ramp as ramps
from replaytune import schedule
from replaytune.config import DataConfig, PhaseConfig
from replaytune.data.mixture import Mixture
from replaytune.data.store import UNITS, TokenStore
from replaytune.errors import ConfigError, DataError
from replaytune.finetune.config import FinetuneConfig, label, source_names
from replaytune.schedule import GENERIC, TARGET, Schedule, ScheduleError
from replaytune.train.plan import RunPlan


def sequence_units(store: TokenStore, seq_len: int, unit: str, sequences: int | None = None) -> np.ndarray:
    """What each training sequence contributes in ``unit`` (float array [n]); see ``TokenSplit.units``."""
    if unit not in UNITS:
        raise ConfigError(f"replay_unit {unit!r}: must be one of {', '.join(UNITS)}")
    return store.train.units(seq_len, unit, sequences)


@dataclass(frozen=True)
class ReplayPlan:
    """Sequence weights and step count of a fine-tuning run with replay fraction rho.

    A view of the one-phase run plan (``train/plan.RunPlan``, which resolved the phase's
    :class:`~replaytune.config.FinetuneSpec`): its one stage, steps and ``mixture``. Sources
    are by name; ``sides`` says which side each is on and ``parts`` its part of that side.
    """

    replay_fraction: float
    unit: str
    epochs: float
    batch_size: int
    seq_len: int
    sequences: dict[str, int]  # training sequences per source
    units_per_sequence: dict[str, float]
    schedule: Schedule
    steps: int
    sides: dict[str, str] = field(default_factory=dict)  # source -> target or generic
    parts: dict[str, float] = field(default_factory=dict)  # each source's part of its side (sums to 1 per side)
    mixture: Mixture | None = field(default=None, compare=False, repr=False)  # the plan's batches (train/plan.RunPlan)
    ramp: Any = None  # a replay schedule (preset or points); replay_fraction is then its mean rho

    @property
    def weights(self) -> dict[str, float]:
        """Sequence share of each source in every batch (under a ramp: over the whole phase)."""
        if isinstance(self.schedule, ramps.Ramp):
            return self.schedule.mean_weights()
        return dict(self.schedule.stages[0].weights)

    def side(self, role: str) -> list[str]:
        """The sources of one side (``target`` or ``generic``), in order."""
        return [name for name, r in self.sides.items() if r == role]

    def side_parts(self, role: str) -> dict[str, float]:
        """Each source of one side with its part of that side (what its losses are averaged with)."""
        return {name: self.parts[name] for name in self.side(role)}

    @property
    def shares(self) -> dict[str, float]:
        """The share of the counted unit asked of each source: (1 - rho) or rho times its part of its side."""
        rho = self.replay_fraction
        return {name: (rho if role == GENERIC else 1.0 - rho) * self.parts[name] for name, role in self.sides.items()}

    @property
    def several(self) -> bool:
        """More than one source on a side (names are then ``side.name``)."""
        return any(name not in (TARGET, GENERIC) for name in self.sides)

    @property
    def target_sequences(self) -> int:
        return sum(self.sequences[name] for name in self.side(TARGET))

    @property
    def target_batches(self) -> float:
        return self.target_sequences / self.batch_size

    def to_dict(self) -> dict[str, Any]:
        w_t = sum(self.weights[name] for name in self.side(TARGET))
        several = {"sides": dict(self.sides), "parts": dict(self.parts), "shares": self.shares} if self.several else {}
        return {
            "replay_fraction": self.replay_fraction,
            "replay_unit": self.unit,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "sequences": dict(self.sequences),
            "units_per_sequence": dict(self.units_per_sequence),
            "weights": self.weights,
            "target_batches": self.target_batches,
            "steps": self.steps,
            "steps_formula": f"ceil({self.target_sequences} x {self.epochs:g} / ({self.batch_size} x {w_t:.6g})) = {self.steps}",
            **({"replay_schedule": self.ramp} if self.ramp is not None else {}),
            **several,
        }


def plan_replay(
    target: TokenStore | Mapping[str, TokenStore],
    generic: TokenStore | Mapping[str, TokenStore] | None,
    *,
    replay_fraction: float,
    epochs: float,
    seq_len: int,
    batch_size: int,
    unit: str = "tokens",
    weights: Mapping[str, float] | None = None,
    seed: int = 0,
    ramp: Any = None,
) -> ReplayPlan:
    """Weights ``w_i ~ share_i / m_i`` (m_i: mean ``unit`` per sequence) and ``steps``.

    Example (token counting): chat target with 9.6 loss tokens per 32-token sequence, text
    replay with 32, rho = 0.5: w_t = (0.5/9.6) / (0.5/9.6 + 0.5/32) = 0.769; 100 target
    sequences x 3 epochs at batch 8 give ceil(300 / (8 x 0.769)) = 49 steps (39 without replay).

    Several sources on a side: ``target`` / ``generic`` map source names to stores, and
    ``weights`` gives each name its part of its side's share (default 1 each); share_i is
    ``(1 - rho)`` split over the target sources by weight, rho over the generic ones. The
    target epochs count the whole target side (its sequences drawn ``epochs`` times in all).
    Inputs that cannot make a plan are refused here with the user's words (flags, sources),
    so :func:`replaytune.schedule.finetune` only ever sees valid ones.
    """
    stores, spec = check_sides(target, generic, replay_fraction=replay_fraction, epochs=epochs, seq_len=seq_len,
                               unit=unit, weights=weights, ramp=ramp)
    data = DataConfig(sources={name: {"store": str(store.path)} for name, store in stores.items()},
                      seq_len=seq_len, batch_size=batch_size, seed=seed)
    return replay_plan(RunPlan.of_phases(data, [PhaseConfig(name="finetune", finetune=spec)], stores))


def check_sides(
    target: TokenStore | Mapping[str, TokenStore],
    generic: TokenStore | Mapping[str, TokenStore] | None,
    *,
    replay_fraction: float,
    epochs: float,
    seq_len: int,
    unit: str = "tokens",
    weights: Mapping[str, float] | None = None,
    ramp: Any = None,
) -> tuple[dict[str, TokenStore], dict[str, Any]]:
    """The stores by name and the phase spec (``config.FinetuneSpec``) of a fine-tune, checked in the user's words.

    Inputs that cannot make a plan (too little data, a target without loss-bearing tokens,
    replay without a replay source, a bad weight) are refused here, naming the flag or source,
    so the plan (``train/plan.resolve_phase``) only ever sees valid ones. ``ramp``: a replay
    schedule (``--replay-schedule``) in place of ``replay_fraction``; its largest rho is checked.
    """
    rho = float(replay_fraction)
    if ramp is not None:
        try:
            rho = max(r for _, r in ramps.shape_points(ramp))
        except ScheduleError as exc:
            raise ConfigError(f"--replay-schedule {ramp}: {exc}") from None
    if not (0.0 <= rho < 1.0):
        raise ConfigError(f"replay_fraction must be in [0, 1), got {rho:g}")
    if not (epochs > 0 and math.isfinite(epochs)):
        raise ConfigError(f"epochs must be > 0, got {epochs}")
    sides = {TARGET: _named(TARGET, target), GENERIC: _named(GENERIC, generic)}
    if not sides[TARGET]:
        raise ConfigError("a replay plan needs a target source")
    stores = {**sides[TARGET], **sides[GENERIC]}
    sequences, units = {}, {}
    for name, store in stores.items():
        n = store.train.num_sequences(seq_len)
        if n < 1:
            raise DataError(
                f"{label(name)} source ({store.path}): {store.train.num_tokens} training tokens, fewer than one sequence of "
                f"{seq_len} + 1; add data or lower --seq-len"
            )
        sequences[name] = n
        units[name] = float(sequence_units(store, seq_len, unit).mean())
    for name, store in sides[TARGET].items():
        if units[name] <= 0:
            raise DataError(
                f"{label(name)} source ({store.path}): no {unit} carry loss (every token is masked); check the data, and "
                f"that --max-length does not cut examples before their reply"
            )
    if not sides[GENERIC] and rho > 0:
        raise ConfigError(f"replay_fraction {rho:g} needs a replay source")
    for name, store in sides[GENERIC].items():
        if rho > 0 and units[name] <= 0:
            raise DataError(
                f"{label(name)} source ({store.path}): no loss-bearing {unit}, so a replay fraction counted in {unit} "
                f"cannot be met; use a source whose tokens carry loss, or --replay-unit sequences"
            )
    given = dict(weights or {})
    side_weights = {role: {name: float(given.get(name, 1.0)) for name in side} for role, side in sides.items()}
    for name, w in given.items():
        if name in stores and not (w > 0 and math.isfinite(w)):
            raise ConfigError(f"{label(name)} source: weight must be > 0, got {w:g}")
    return stores, finetune_spec(side_weights, replay_fraction=0.0 if ramp is not None else rho, epochs=epochs,
                                 unit=unit, ramp=ramp)


def finetune_spec(side_weights: Mapping[str, Mapping[str, float]], *, replay_fraction: float, epochs: float,
                  unit: str, ramp: Any = None) -> dict[str, Any]:
    """The fine-tuning phase spec (``config.FinetuneSpec``) of target and generic sources with their weights."""
    extra = {"ramp": ramp if isinstance(ramp, str) else [list(p) for p in ramp]} if ramp is not None else {}
    return {"epochs": float(epochs), "replay": 0.0 if ramp is not None else float(replay_fraction), "unit": unit, **extra,
            "target": _side_arg(dict(side_weights[TARGET])), "generic": _side_arg(dict(side_weights[GENERIC]))}


def replay_plan(run_plan: RunPlan, index: int = 0) -> ReplayPlan:
    """The :class:`ReplayPlan` view of phase ``index`` of a run plan whose phase is a finetune spec."""
    phase = run_plan.phases[index]
    f = run_plan.phase_configs[index].finetune
    t_side, g_side = _weights(f.target), _weights(f.generic)
    names = list(t_side) + list(g_side)
    units = phase.description.get("units_per_sequence") or {n: 1.0 for n in names}
    role_of = {**{n: TARGET for n in t_side}, **{n: GENERIC for n in g_side}}
    parts = {n: w / sum(side.values()) for side in (t_side, g_side) for n, w in side.items()}
    rho = float(f.replay) if f.ramp is None else ramps.mean_rho(ramps.shape_points(
        f.ramp, lr_schedule=run_plan.phase_configs[index].lr.schedule, decay=run_plan.phase_configs[index].lr.decay))
    return ReplayPlan(rho, f.unit, float(f.epochs), run_plan.batch_size, run_plan.seq_len,
                      {n: int(run_plan.train_sequences[n]) for n in names}, {n: float(units[n]) for n in names},
                      phase.schedule, phase.steps, role_of, parts, phase.mixture, f.ramp)


def _weights(side) -> dict[str, float]:
    if side is None:
        return {}
    return {side: 1.0} if isinstance(side, str) else {n: float(w) for n, w in side.items()}


def _side_arg(weights: dict[str, float]) -> str | dict[str, float]:
    """One side for :func:`replaytune.schedule.finetune`: a lone source by name, else names with weights."""
    return next(iter(weights)) if len(weights) == 1 else weights  # {} (no generic side) stays {}


def _named(role: str, stores: TokenStore | Mapping[str, TokenStore] | None) -> dict[str, TokenStore]:
    if stores is None:
        return {}
    return dict(stores) if isinstance(stores, Mapping) else {role: stores}


def plan_for(cfg: FinetuneConfig, stores: Mapping[str, TokenStore], *, replay_fraction: float, epochs: float) -> ReplayPlan:
    """:func:`plan_replay` for the sources ``cfg`` names (``stores`` by name, :func:`source_names`)."""
    names = source_names(cfg)
    side = {role: {n: stores[n] for n, (r, _) in names.items() if r == role} for role in (TARGET, GENERIC)}
    return plan_replay(side[TARGET], side[GENERIC] or None, replay_fraction=replay_fraction, epochs=epochs,
                       seq_len=cfg.seq_len, batch_size=cfg.batch_size, unit=cfg.replay_unit,
                       weights={n: arg.weight for n, (_, arg) in names.items()}, seed=cfg.seed,
                       ramp=cfg.replay_schedule if not cfg.auto_replay else None)


def spec_for(cfg: FinetuneConfig, stores: Mapping[str, TokenStore], *, epochs: float) -> dict[str, Any]:
    """The checked phase spec of ``cfg`` at its replay fraction (what ``build_run_config`` writes)."""
    names = source_names(cfg)
    side = {role: {n: stores[n] for n, (r, _) in names.items() if r == role} for role in (TARGET, GENERIC)}
    return check_sides(side[TARGET], side[GENERIC] or None, replay_fraction=cfg.rho, epochs=epochs, seq_len=cfg.seq_len,
                       unit=cfg.replay_unit, weights={n: arg.weight for n, (_, arg) in names.items()},
                       ramp=cfg.replay_schedule)[1]


def replay_read_cap(
    target: TokenStore | Mapping[str, TokenStore], *, replay_fraction: float, epochs: float, seq_len: int,
    batch_size: int, unit: str = "tokens", val_fraction: float | None = None, eval_sequences: int = 64,
    margin: float = 0.1, weights: Mapping[str, float] | None = None, part: float = 1.0,
) -> int | None:
    """Tokens to read from a text replay source: what the run draws, plus held-out and a margin.

    The weights are :func:`plan_replay`'s for a text replay source (every token carries loss,
    so a sequence brings ``seq_len`` tokens or 1 sequence). The held-out split takes
    ``val_fraction`` of what is read, and must hold ``eval_sequences`` sequences. None: read
    everything (no replay, or a unit a text source cannot be sized in ahead).

    Several target sources: a mapping by name, with ``weights``. A replay source that is one of
    several has ``part`` of the replay side; the others are not tokenized yet and are taken to
    bring as much per sequence as this one. What this source draws does not depend on them
    but through the step count's rounding up (less than one batch), which the margin covers.
    """
    if replay_fraction <= 0 or unit == "examples":
        return None
    targets, units = _named(TARGET, target), {}
    n_target = 0
    for name, store in targets.items():
        n = store.train.num_sequences(seq_len)
        units[name] = float(sequence_units(store, seq_len, unit).mean()) if n else 0.0
        if n < 1 or units[name] <= 0:
            return None  # plan_replay refuses this target with its own message
        n_target += n
    u_replay = float(seq_len) if unit == "tokens" else 1.0
    replay = {GENERIC: float(part), **({f"{GENERIC}.others": 1.0 - part} if part < 1 else {})}
    fp = schedule.finetune(n_target / batch_size, epochs, replay_fraction, units={**units, **{n: u_replay for n in replay}},
                           target=_side_arg({n: float((weights or {}).get(n, 1.0)) for n in targets}),
                           generic=_side_arg(replay))
    drawn = math.ceil(fp.steps * batch_size * fp.schedule.stages[0].weights[GENERIC])
    train_tokens = drawn * seq_len + 1
    if val_fraction:
        need = max(train_tokens / (1.0 - val_fraction), eval_sequences * (seq_len + 1) / val_fraction)
    else:  # a count of held-out documents: their size is unknown ahead, the margin covers them
        need = train_tokens + eval_sequences * (seq_len + 1)
    return int(math.ceil(need * (1.0 + margin))) + seq_len


def realised_units(mixture, stores: Mapping[str, TokenStore], seq_len: int, unit: str = "tokens", steps: int | None = None) -> dict[str, float]:
    """``unit`` drawn from each source by the first ``steps`` steps of ``mixture`` (exact).

    Source i's draws are the first ``c_i`` entries of its epoch permutations (mixture.py),
    so the sum is ``full_epochs * total + sum over the partial epoch's prefix``.
    """
    consumed = mixture.consumed(mixture.steps if steps is None else steps)
    out = {}
    for i, name in enumerate(mixture.sources):
        n, c = int(mixture.sizes[i]), consumed[name]
        if c == 0:
            out[name] = 0.0
            continue
        per = sequence_units(stores[name], seq_len, unit, n)
        full, rest = divmod(c, n)
        out[name] = float(full * per.sum() + per[mixture.permutation(i, full)[:rest]].sum())
    return out
