"""Choosing the replay fraction: successive halving over full-length schedules.

The paper's advice is that the best replay fraction rho is usually 0.25-0.75 and must be tuned
per domain (docs/method.md). Running every candidate to the end costs the whole grid; this search
costs a fraction of it, because replaytune's runs continue exactly from any checkpoint.

Every candidate (rho, and optionally a peak LR) keeps its own full-length schedule: with more
replay a fine-tuning run is longer (``T * E / (1 - rho)`` steps), and each candidate is judged
at the same fraction of its own run, i.e. after the same number of target epochs, never after
the same number of steps (which would judge high-replay runs before they saw the target).

Rungs at fractions ``f_1 < f_2 < ... < 1`` of each run (default 1/8, 1/4, 1/2, 1):

1. every live candidate runs on to ``f_k`` of its length (from where it stopped) and is
   evaluated on held-out target (and generic) data;
2. with a forgetting budget ``max_forgetting``, a candidate whose held-out generic loss rose by
   more than that over the base model is out;
3. the rest are ranked by held-out target loss (ties: the earlier candidate first); the best
   ``ceil(n / eta)`` go on (default eta = 3), and of those any candidate worse than the best by more than
   ``margin`` (the measured seed-to-seed noise) stops too;
4. at the last rung the best final target loss is chosen.

What it can get wrong: the ranking after a quarter of the epochs need not be the final
ranking. A candidate that learns the target more slowly but ends better (replay acts as a
regularizer that pays off late, when the pure run starts to memorize) can be dropped early;
keeping more at every rung (a smaller ``eta``) is what protects such a candidate, while ``margin``
only stops candidates that are clearly behind, to save their steps. BENCHMARKS.md measures
how often the choice differs from the full grid's.

The logic here is pure: :func:`successive_halving` calls ``run_to(candidate, step)`` to
advance a candidate and read its held-out losses, so it is tested on synthetic loss curves and
driven by real training in ``replaytune.finetune``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

# Rungs and the share that goes on: with the default five candidates (rho 0 .. 0.875, whose runs
# are 1x .. 8x the shortest) halving would finish the two best, often including the 8x run; keeping
# a third at each rung finishes one, for about 40 % of the grid's steps.
FRACTIONS = (0.125, 0.25, 0.5, 1.0)
ETA = 3


@dataclass(frozen=True)
class Candidate:
    """One configuration of the search and the full length of its run."""

    rho: float
    lr: float | None
    steps: int
    schedule: str | None = None  # a replay ramp (its mean rho is ``rho``)

    @property
    def key(self) -> str:
        head = f"rho{self.rho:g}" if self.schedule is None else "ramp-" + self.schedule.replace(":", "_")
        return head + ("" if self.lr is None else f"_lr{self.lr:g}")


@dataclass(frozen=True)
class Outcome:
    """Held-out losses of a candidate after some steps."""

    target_loss: float
    generic_loss: float | None = None


@dataclass
class Entry:
    candidate: Candidate
    target_loss: float | None = None
    generic_loss: float | None = None
    steps_run: int = 0
    eliminated_at: float | None = None  # the rung fraction at which it stopped
    reason: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {"rho": c.rho, "lr": c.lr, **({"schedule": c.schedule} if c.schedule else {}), "target_loss": self.target_loss, "generic_loss": self.generic_loss,
                "steps_run": self.steps_run, "steps_full": c.steps, "eliminated_at": self.eliminated_at,
                "reason": self.reason, "history": self.history}


@dataclass
class SearchResult:
    entries: list[Entry]
    chosen: Entry
    fractions: tuple[float, ...]
    eta: int
    margin: float | None
    max_forgetting: float | None
    base_generic: float | None
    note: str = ""

    @property
    def steps_computed(self) -> int:
        return sum(e.steps_run for e in self.entries)

    @property
    def steps_grid(self) -> int:
        return sum(e.candidate.steps for e in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen_rho": self.chosen.candidate.rho,
            "chosen_lr": self.chosen.candidate.lr,
            **({"chosen_schedule": self.chosen.candidate.schedule} if self.chosen.candidate.schedule else {}),
            "candidates": [e.to_dict() for e in self.entries],
            "steps_computed": self.steps_computed,
            "steps_grid": self.steps_grid,
            "fraction_of_grid": self.steps_computed / self.steps_grid if self.steps_grid else None,
            "rungs": list(self.fractions),
            "eta": self.eta,
            "margin": self.margin,
            "max_forgetting": self.max_forgetting,
            "base_generic_loss": self.base_generic,
            "note": self.note,
        }


def rung_step(candidate: Candidate, fraction: float) -> int:
    """The step at ``fraction`` of a candidate's run (at least 1, the last rung exactly its end)."""
    return candidate.steps if fraction >= 1 else max(1, min(candidate.steps, math.ceil(fraction * candidate.steps)))


def rung_steps(steps: int, fractions: Sequence[float] = FRACTIONS) -> list[int]:
    """The steps at which a run of ``steps`` steps is evaluated by the search (ascending)."""
    cand = Candidate(0.0, None, steps)
    return sorted({rung_step(cand, f) for f in fractions})


def successive_halving(
    candidates: Sequence[Candidate],
    run_to: Callable[[Candidate, int], Outcome],
    *,
    fractions: Sequence[float] = FRACTIONS,
    eta: int = ETA,
    margin: float | None = None,
    base_generic: float | None = None,
    max_forgetting: float | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> SearchResult:
    """Run the search (module docstring); ``run_to(c, step)`` advances ``c`` to ``step``."""
    if not candidates:
        raise ValueError("the search needs at least one candidate")
    fr = tuple(float(f) for f in fractions)
    if not fr or any(not 0 < f <= 1 for f in fr) or list(fr) != sorted(set(fr)) or fr[-1] != 1.0:
        raise ValueError(f"rung fractions must increase within (0, 1] and end at 1, got {list(fractions)}")
    if eta < 2:
        raise ValueError(f"eta must be >= 2, got {eta}")
    if max_forgetting is not None and base_generic is None:
        raise ValueError("a forgetting budget needs the base model's held-out generic loss")
    entries = [Entry(c) for c in candidates]
    alive = list(entries)
    note = ""
    for k, f in enumerate(fr):
        last = k == len(fr) - 1
        for e in alive:
            step = rung_step(e.candidate, f)
            if step > e.steps_run:
                out = run_to(e.candidate, step)
                e.steps_run, e.target_loss, e.generic_loss = step, out.target_loss, out.generic_loss
            e.history.append({"fraction": f, "step": e.steps_run, "target_loss": e.target_loss,
                              "generic_loss": e.generic_loss})
        if max_forgetting is not None:
            over = [e for e in alive if e.generic_loss is not None and e.generic_loss - base_generic > max_forgetting]
            if len(over) == len(alive):
                # none meets the budget: keep the least-forgetting one rather than none
                keep = min(alive, key=lambda e: (e.generic_loss, entries.index(e)))
                over = [e for e in over if e is not keep]
                note = (f"no candidate kept its generic loss within {max_forgetting:g} nats of the base model's "
                        f"{base_generic:.4f}; the least-forgetting one was kept")
            for e in over:
                e.eliminated_at, e.reason = f, f"generic loss {e.generic_loss:.4f} rose more than {max_forgetting:g} over the base"
            alive = [e for e in alive if e not in over]
        ranked = sorted(alive, key=lambda e: (e.target_loss, entries.index(e)))
        if last:
            best = ranked[0]
            for e in ranked[1:]:
                e.reason = f"finished with target loss {e.target_loss:.4f} (best {best.target_loss:.4f})"
            log(f"search: chose {best.candidate.key} (target loss {best.target_loss:.4f})")
            return SearchResult(entries, best, fr, eta, margin, max_forgetting, base_generic, note)
        keep = ranked[: max(1, math.ceil(len(ranked) / eta))]
        if margin is not None:
            keep = [e for e in keep if e.target_loss - ranked[0].target_loss <= margin] or ranked[:1]
        for e in ranked:
            if e not in keep:
                e.eliminated_at = f
                e.reason = (f"target loss {e.target_loss:.4f} at {f:g} of its run, best {ranked[0].target_loss:.4f}"
                            + (f" (margin {margin:g})" if margin else ""))
        alive = keep
        log(f"search: after {f:g} of each run, alive: " + ", ".join(f"{e.candidate.key} {e.target_loss:.4f}" for e in alive))
    raise AssertionError("unreachable: the last rung returns")
