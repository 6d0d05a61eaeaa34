"""Replay weights and step count of a fine-tune: what a replay fraction means in sequences.

The weights and steps themselves come from :func:`replaytune.schedule.finetune`, the one
route from rho to a schedule (the study's fine-tuning phases take it too). What this module
adds is measuring the stores: how many training sequences each source has, and how much of
the unit rho counts (loss-bearing tokens, examples, sequences) one sequence brings, so that
a chat target with masked prompts gets its share of the *gradient*, not of the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from replaytune import schedule
from replaytune.data.store import TokenStore
from replaytune.errors import ConfigError, DataError
from replaytune.finetune.config import UNITS, label
from replaytune.schedule import GENERIC, TARGET, Schedule


def sequence_units(store: TokenStore, seq_len: int, unit: str, sequences: int | None = None) -> np.ndarray:
    """What each training sequence contributes in ``unit`` (float array [n]).

    tokens: loss-bearing targets of window i, ``mask[i*L + 1 : i*L + L + 1]`` (L for text);
    sequences: 1; examples: documents starting inside the window's inputs ``[i*L, i*L + L)``.
    """
    if unit not in UNITS:
        raise ConfigError(f"replay_unit {unit!r}: must be one of {', '.join(UNITS)}")
    split = store.train
    n = split.num_sequences(seq_len) if sequences is None else int(sequences)
    if unit == "sequences" or n == 0:
        return np.ones(n)
    if unit == "tokens":
        if split.mask is None:
            return np.full(n, float(seq_len))
        return np.asarray(split.mask[1 : n * seq_len + 1], dtype=np.int64).reshape(n, seq_len).sum(axis=1).astype(float)
    starts = np.asarray(split.docs[:-1], dtype=np.int64)
    starts = starts[starts < n * seq_len]
    return np.bincount(starts // seq_len, minlength=n).astype(float)


@dataclass(frozen=True)
class ReplayPlan:
    """Sequence weights and step count of a fine-tuning run with replay fraction rho.

    ``schedule`` is the run's one stage (from :func:`replaytune.schedule.finetune`); the
    training config and :class:`replaytune.hf.ReplayDataset` both draw from it.
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

    @property
    def weights(self) -> dict[str, float]:
        """Sequence share of each source in every batch."""
        return dict(self.schedule.stages[0].weights)

    @property
    def target_batches(self) -> float:
        return self.sequences[TARGET] / self.batch_size

    def to_dict(self) -> dict[str, Any]:
        w_t = self.weights[TARGET]
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
            "steps_formula": f"ceil({self.sequences[TARGET]} x {self.epochs:g} / ({self.batch_size} x {w_t:.6g})) = {self.steps}",
        }


def plan_replay(
    target: TokenStore,
    generic: TokenStore | None,
    *,
    replay_fraction: float,
    epochs: float,
    seq_len: int,
    batch_size: int,
    unit: str = "tokens",
) -> ReplayPlan:
    """Weights ``w_i ~ share_i / m_i`` (m_i: mean ``unit`` per sequence) and ``steps``.

    Example (token counting): chat target with 9.6 loss tokens per 32-token sequence, text
    replay with 32, rho = 0.5: w_t = (0.5/9.6) / (0.5/9.6 + 0.5/32) = 0.769; 100 target
    sequences x 3 epochs at batch 8 give ceil(300 / (8 x 0.769)) = 49 steps (39 without replay).
    Inputs that cannot make a plan are refused here with the user's words (flags, sources),
    so :func:`replaytune.schedule.finetune` only ever sees valid ones.
    """
    rho = float(replay_fraction)
    if not (0.0 <= rho < 1.0):
        raise ConfigError(f"replay_fraction must be in [0, 1), got {rho:g}")
    if not (epochs > 0 and math.isfinite(epochs)):
        raise ConfigError(f"epochs must be > 0, got {epochs}")
    stores = {TARGET: target} if generic is None else {TARGET: target, GENERIC: generic}
    sequences, units = {}, {}
    for role, store in stores.items():
        n = store.train.num_sequences(seq_len)
        if n < 1:
            raise DataError(
                f"{label(role)} source ({store.path}): {store.train.num_tokens} training tokens, fewer than one sequence of "
                f"{seq_len} + 1; add data or lower --seq-len"
            )
        sequences[role] = n
        units[role] = float(sequence_units(store, seq_len, unit).mean())
    if units[TARGET] <= 0:
        raise DataError(
            f"target source ({target.path}): no {unit} carry loss (every token is masked); check the data, and "
            f"that --max-length does not cut examples before their reply"
        )
    if generic is None and rho > 0:
        raise ConfigError(f"replay_fraction {rho:g} needs a replay source")
    if generic is not None and rho > 0 and units[GENERIC] <= 0:
        raise DataError(
            f"replay source ({generic.path}): no loss-bearing {unit}, so a replay fraction counted in {unit} "
            f"cannot be met; use a source whose tokens carry loss, or --replay-unit sequences"
        )
    target_batches = sequences[TARGET] / batch_size
    if generic is None:
        steps = schedule.finetune(target_batches, epochs, 0.0).steps
        sched = schedule.constant(TARGET)  # no generic source to keep at weight 0
    else:
        # rho = 0 keeps generic at weight 0: its held-out loss measures forgetting
        fp = schedule.finetune(target_batches, epochs, rho, units=(units[TARGET], units[GENERIC]))
        steps, sched = fp.steps, fp.schedule
    return ReplayPlan(rho, unit, float(epochs), batch_size, seq_len, sequences, units, sched, steps)


def replay_read_cap(
    target: TokenStore, *, replay_fraction: float, epochs: float, seq_len: int, batch_size: int, unit: str = "tokens",
    val_fraction: float | None = None, eval_sequences: int = 64, margin: float = 0.1,
) -> int | None:
    """Tokens to read from a text replay source: what the run draws, plus held-out and a margin.

    The weights are :func:`plan_replay`'s for a text replay source (every token carries loss,
    so a sequence brings ``seq_len`` tokens or 1 sequence). The held-out split takes
    ``val_fraction`` of what is read, and must hold ``eval_sequences`` sequences. None: read
    everything (no replay, or a unit a text source cannot be sized in ahead).
    """
    if replay_fraction <= 0 or unit == "examples":
        return None
    n_target = target.train.num_sequences(seq_len)
    u_target = float(sequence_units(target, seq_len, unit).mean()) if n_target else 0.0
    if n_target < 1 or u_target <= 0:
        return None  # plan_replay refuses this target with its own message
    u_replay = float(seq_len) if unit == "tokens" else 1.0
    fp = schedule.finetune(n_target / batch_size, epochs, replay_fraction, units=(u_target, u_replay))
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
