"""The deterministic mixture: which sequences of which source form the batch at step s.

The batch is a function, not a stream: ``Mixture.batch(step, rank, world)`` depends only
on (seed, step, schedule, source sizes, batch size). Resume needs only the step, and any
step's batch can be inspected (``replaytune batches``).

Algorithm
---------
1. *Counts.* At each step, source i gets ``floor(w_i * B)`` sequences plus possibly one
   of the ``r = B - sum_i floor(w_i * B)`` leftover slots. Leftovers go to the sources
   with the largest running deficit ``share_i(s+1) - taken_i(s) - floor(w_i * B)``
   (ties to the earlier source), where ``share_i`` is the exact weighted share. So every
   batch holds floor or ceil of ``w_i * B`` sequences of source i (never alternating
   batches), and the running total follows the weighted share with the deficit carried
   across steps and stage boundaries. The per-step counts are tabulated once per mixture
   (an integer array, steps x sources; a pure-Python pass only for stages whose
   ``w_i * B`` are not all integers, about 1 s per 200k such steps).
   A *ramp* (``ramp.Ramp``, weights linear between points) is allocated on cumulative
   targets instead: with ``E_i(s) = B * integral_0^s w_i``, two sources take
   ``round(E_target(s))`` and the rest, so after every step each count is within half a
   sequence of its integral (vectorized: one pass of numpy over the run); three or more
   sources: largest remainder on the cumulative targets, no count below zero (within one sequence).
2. *Order within a source.* Source i's k-th sequence overall is position ``k mod N_i`` of
   epoch ``k div N_i``, whose order is a permutation of ``range(N_i)`` seeded by
   (seed, crc32(source name), epoch): each epoch sees every sequence once, in a fresh
   order, independent of other sources and of the schedule.
3. *Shuffle and shard.* The B picked sequences are shuffled by a permutation seeded by
   (seed, step); rank r of w gets the contiguous slice ``[r*B/w, (r+1)*B/w)`` of that
   order. The union over ranks is the global batch and the global order does not depend
   on the world size.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from replaytune.errors import ConfigError
from replaytune.ramp import Ramp
from replaytune.schedule import Schedule, ScheduleError

_SHUFFLE_TAG = 0x5EED5EED  # separates the in-batch shuffle stream from per-source streams


@dataclass(frozen=True)
class Batch:
    """One rank's share of the global batch at a step."""

    step: int
    sources: tuple[str, ...]  # names; ``source_index`` indexes into this
    source_index: np.ndarray  # int64 [b]: which source each sequence comes from
    ids: np.ndarray  # int64 [b]: sequence id within its source (training split)
    epochs: np.ndarray  # int64 [b]: the epoch of that source this sequence belongs to

    def __len__(self) -> int:
        return len(self.ids)

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.source_index, minlength=len(self.sources))
        return {name: int(c[i]) for i, name in enumerate(self.sources)}


def shard(batch_size: int, rank: int, world: int) -> slice:
    """The positions of the global batch that rank ``rank`` of ``world`` trains on.

    Contiguous ``[r*B/w, (r+1)*B/w)``: the union over ranks is the global batch, in its
    order, so the global batch does not depend on the number of processes.
    """
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is not in a world of size {world}")
    if batch_size % world:
        raise ConfigError(
            f"global batch size {batch_size} does not divide by world size {world} "
            f"(data.batch_size: use a multiple of {world})"
        )
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


class Mixture:
    """Exact, deterministic mixture of sources under a schedule.

    Args:
        schedule: stages of source weights.
        num_sequences: training sequences available per source (``N_i``).
        batch_size: global batch size B in sequences.
        steps: length of the run (the count table covers steps ``[0, steps)``).
        seed: data seed.
        max_epochs: optional cap per source; a schedule that would need more passes over a
            source than allowed is refused here, naming the source and the step.
    """

    def __init__(
        self,
        schedule: Schedule | Ramp,
        num_sequences: Mapping[str, int],
        batch_size: int,
        steps: int,
        seed: int = 0,
        max_epochs: Mapping[str, float | None] | None = None,
    ):
        if batch_size < 1:
            raise ScheduleError(f"batch_size must be >= 1, got {batch_size}")
        if steps < 0:
            raise ScheduleError(f"steps must be >= 0, got {steps}")
        self.schedule = schedule
        self.sources: tuple[str, ...] = schedule.sources
        self.batch_size = int(batch_size)
        self.steps = int(steps)
        self.seed = int(seed)
        self.sizes = np.array([int(num_sequences.get(name, 0)) for name in self.sources], dtype=np.int64)
        self._counts = self._count_table()
        # cum[s, i]: sequences of source i consumed before step s.
        self._cum = np.zeros((self.steps + 1, len(self.sources)), dtype=np.int64)
        np.cumsum(self._counts, axis=0, out=self._cum[1:])
        used = self._cum[-1]
        for i, name in enumerate(self.sources):
            if used[i] > 0 and self.sizes[i] <= 0:
                step = int(np.argmax(self._cum[1:, i] > 0))
                raise ScheduleError(f"source '{name}' has no training sequences but the schedule draws from it at step {step}")
        self.max_epochs = dict(max_epochs or {})
        for i, name in enumerate(self.sources):
            cap = self.max_epochs.get(name)
            if cap is None or self.sizes[i] == 0:
                continue
            limit = int(math.floor(cap * self.sizes[i] + 1e-9))
            if used[i] > limit:
                step = int(np.argmax(self._cum[1:, i] > limit))
                raise ScheduleError(
                    f"source '{name}' allows max_epochs={cap:g} ({limit} sequences) but the schedule needs "
                    f"{used[i] / self.sizes[i]:.3g} epochs ({int(used[i])} sequences); the cap is passed at step {step}"
                )
        self._crc = [zlib.crc32(name.encode("utf-8")) for name in self.sources]
        self._perm_cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    # -- counts ----------------------------------------------------------------------------
    def _count_table(self) -> np.ndarray:
        k, B = len(self.sources), self.batch_size
        if isinstance(self.schedule, Ramp):
            return self._ramp_table()
        table = np.zeros((self.steps, k), dtype=np.int64)
        deficit = [0.0] * k  # share_i(s) - taken_i(s), carried across steps and stages
        for start, end, stage in self.schedule.stage_spans(self.steps):
            exact = [stage.weights[name] * B for name in self.sources]
            base = [math.floor(x + 1e-9) for x in exact]
            frac = [max(0.0, x - b) for x, b in zip(exact, base)]
            spare = B - sum(base)
            table[start:end] = base
            if spare == 0:
                continue  # every w_i * B is an integer: the deficit stays where it was
            order_key = range(k)
            for s in range(start, end):
                want = [deficit[i] + frac[i] for i in order_key]
                # the `spare` sources with the largest deficit get one more sequence
                chosen = sorted(order_key, key=lambda i: (-want[i], i))[:spare]
                row = table[s]
                for i in chosen:
                    row[i] += 1
                    want[i] -= 1.0
                deficit = want
        return table

    def _ramp_table(self) -> np.ndarray:
        ramp, k, B = self.schedule, len(self.sources), self.batch_size
        if ramp.steps != self.steps:
            raise ScheduleError(f"the ramp covers {ramp.steps} steps but the mixture {self.steps}; build it for the phase")
        exact = ramp.cumulative(np.arange(self.steps + 1, dtype=np.float64)) * B  # E_i(s), s = 0 .. steps
        if k == 1:
            return np.full((self.steps, 1), B, dtype=np.int64)
        if k == 2:
            # round half up; 1e-9 keeps an exact integer (4096.0000000001 or 4095.9999999) on itself
            first = np.floor(exact[:, 0] + 0.5 + 1e-9).astype(np.int64)
            first[0] = 0
            cum = np.stack([first, np.arange(self.steps + 1, dtype=np.int64) * B - first], axis=1)
            return np.diff(cum, axis=0)
        per = np.diff(exact, axis=0).tolist()  # plain floats: a Python pass is ~5x faster than numpy per row
        table = np.zeros((self.steps, k), dtype=np.int64)
        deficit = [0.0] * k
        order = range(k)
        for s in range(self.steps):
            want = [d + e for d, e in zip(deficit, per[s])]
            # largest remainder on the cumulative targets (taken + want), never a negative count
            base = [math.floor(w + 1e-9) if w > 0 else 0 for w in want]
            spare = B - sum(base)
            if spare > 0:
                for i in sorted(order, key=lambda i: (base[i] - want[i], i))[:spare]:
                    base[i] += 1
            elif spare < 0:  # floors of carried deficits add up past B: take back from the smallest rests
                for i in sorted((i for i in order if base[i] > 0), key=lambda i: (want[i] - base[i], i))[:-spare]:
                    base[i] -= 1
            table[s] = base
            deficit = [w - b for w, b in zip(want, base)]
        return table

    def counts(self, step: int) -> dict[str, int]:
        """Sequences per source in the global batch at ``step``."""
        self._check_step(step)
        return {name: int(c) for name, c in zip(self.sources, self._counts[step])}

    def consumed(self, step: int) -> dict[str, int]:
        """Sequences per source drawn before ``step`` (``step`` may equal ``steps``)."""
        if not 0 <= step <= self.steps:
            raise IndexError(f"step {step} outside [0, {self.steps}]")
        return {name: int(c) for name, c in zip(self.sources, self._cum[step])}

    def epochs_consumed(self, step: int | None = None) -> dict[str, float]:
        """Passes over each source's training sequences before ``step`` (default: the end)."""
        cum = self._cum[self.steps if step is None else step]
        return {name: (float(c) / float(n) if n else 0.0) for name, c, n in zip(self.sources, cum, self.sizes)}

    # -- ids -------------------------------------------------------------------------------
    def permutation(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        perm = self._perm_cache.get(key)
        if perm is None:
            rng = np.random.default_rng([self.seed, self._crc[source], epoch])
            perm = rng.permutation(int(self.sizes[source]))
            self._perm_cache[key] = perm
            if len(self._perm_cache) > 64:
                self._perm_cache.popitem(last=False)
        else:
            self._perm_cache.move_to_end(key)
        return perm

    def _source_ids(self, i: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        n = int(self.sizes[i])
        k = np.arange(first, first + count, dtype=np.int64)
        ep, pos = np.divmod(k, n)
        ids = np.empty(count, dtype=np.int64)
        for e in np.unique(ep):  # at most a few epochs inside one batch
            sel = ep == e
            ids[sel] = self.permutation(i, int(e))[pos[sel]]
        return ids, ep

    def global_batch(self, step: int) -> Batch:
        """The whole batch at ``step``, in its shuffled global order."""
        self._check_step(step)
        parts_src, parts_ids, parts_ep = [], [], []
        for i in range(len(self.sources)):
            c = int(self._counts[step, i])
            if c == 0:
                continue
            ids, ep = self._source_ids(i, int(self._cum[step, i]), c)
            parts_src.append(np.full(c, i, dtype=np.int64))
            parts_ids.append(ids)
            parts_ep.append(ep)
        src = np.concatenate(parts_src)
        ids = np.concatenate(parts_ids)
        ep = np.concatenate(parts_ep)
        order = np.random.default_rng([self.seed, _SHUFFLE_TAG, step]).permutation(self.batch_size)
        return Batch(step, self.sources, src[order], ids[order], ep[order])

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        """Rank ``rank``'s contiguous slice of the global batch (B must divide by world)."""
        sl = shard(self.batch_size, rank, world)
        g = self.global_batch(step)
        if world == 1:
            return g
        return Batch(step, g.sources, g.source_index[sl], g.ids[sl], g.epochs[sl])

    def describe(self, step: int) -> dict[str, Any]:
        """What the batch at ``step`` holds, per source (for ``replaytune batches``)."""
        g = self.global_batch(step)
        out: dict[str, Any] = {"step": step, "weights": self.schedule.weights_at(step), "sources": {}}
        for i, name in enumerate(self.sources):
            sel = g.source_index == i
            ids = g.ids[sel]
            out["sources"][name] = {
                "count": int(sel.sum()),
                "ids": [int(x) for x in ids],
                "epoch": sorted({int(e) for e in g.epochs[sel]}),
                "epochs_consumed": float(self._cum[step + 1, i] / self.sizes[i]) if self.sizes[i] else 0.0,
            }
        return out

    def fingerprint(self) -> str:
        """Changes whenever any batch of the run could change."""
        blob = json.dumps(
            {
                "schedule": self.schedule.to_dict(),
                "sizes": [int(x) for x in self.sizes],
                "batch_size": self.batch_size,
                "steps": self.steps,
                "seed": self.seed,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _check_step(self, step: int) -> None:
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} outside the run's [0, {self.steps})")
