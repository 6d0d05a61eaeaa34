"""The run plan: what every step of a run does, computed before any model exists.

A run is a list of phases laid end to end on one global step axis. Phase ``i`` covers
global steps ``[start_i, start_i + steps_i)``; its batches come from its own
:class:`~replaytune.data.mixture.Mixture` (seed :func:`phase_seed` of ``data.seed`` and
``i``) indexed by the *phase* step, and its learning rate is
``peak * lr_factor(phase_step, steps_i, ...)``. Because all of this is a pure function of
the config and the stores, the plan answers "what happens at step s" without training.

Prefix fingerprints
-------------------
Two runs compute the same first k updates iff they start from the same weights and
optimizer settings and, at each step s < k, use the same learning rate, reset (or not) the
optimizer the same way and feed the same global batch in the same order. The plan turns
that into a hash chain::

    sig[0]   = H(base)                       base: model spec, vocabulary, seq_len,
                                                   optimizer, precision, seed
    sig[s+1] = H(sig[s], reset_s, lr_s, batch_s)   batch_s: hash of the global batch's
                                                   (source name, store fingerprint, id) in order

``sig[k]`` is the *prefix fingerprint at k*: a checkpoint taken after k steps stores it, and
any config whose own ``sig[k]`` agrees may continue from that checkpoint (``--resume`` of the
same run is the special case of an identical config). Execution details that change only
float rounding (micro-batch size, world size, fused kernels) are deliberately left out; the
checkpoint records them and a mismatch is reported as a warning.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from replaytune import ramp as ramps
from replaytune import schedule as sched
from replaytune.config import DataConfig, LRConfig, PhaseConfig, RunConfig, side_names
from replaytune.data.mixture import Batch, Mixture
from replaytune.data.store import TokenStore
from replaytune.data.window import block_attention
from replaytune.errors import ConfigError, DataError
from replaytune.schedule import Schedule, ScheduleError, lr_factor


def phase_seed(data_seed: int, index: int) -> int:
    """The mixture seed of phase ``index``: 56 bits of sha256("data_seed/index").

    Distinct phases draw independent orders even over the same source; the same
    (data.seed, index) always gives the same seed, in every run of a sweep.
    """
    digest = hashlib.sha256(f"{int(data_seed)}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
        h.update(b"\x00")
    return h.hexdigest()[:32]


def open_stores(cfg: RunConfig) -> dict[str, TokenStore]:
    """Open every source's store (in ``data.sources`` order); all must share one tokenizer."""
    stores: dict[str, TokenStore] = {}
    for name, src in cfg.data.sources.items():
        try:
            stores[name] = TokenStore(src.store)
        except DataError as exc:
            raise DataError(f"data.sources.{name}.store: {exc}") from None
    tok = {name: s.tokenizer_fingerprint for name, s in stores.items()}
    if len(set(tok.values())) > 1:
        pairs = ", ".join(f"{n}={fp}" for n, fp in tok.items())
        raise DataError(f"data.sources: stores were built with different tokenizers ({pairs}); rebuild them with one")
    return stores


def resolve_phase(
    pc: PhaseConfig, stores: Mapping[str, TokenStore] | None = None, *, sizes: Mapping[str, int] | None = None,
    first: Mapping[str, int] | None = None, seq_len: int | None = None, batch_size: int | None = None,
    drawn: Mapping[str, np.ndarray] | None = None,
) -> tuple[Schedule | ramps.Ramp, int, dict[str, Any]]:
    """A phase's schedule, its step count and how they were derived: the one place a spec becomes a schedule.

    A ``finetune`` spec is resolved against the stores: ``unit`` per sequence of each source
    (the mean over the sequences the mixture uses: ``first .. first + sizes - 1``, or ``drawn``'s ids
    for a source with a seeded draw) and, when
    ``target_steps`` is not given, the target side's sequences over the batch size. Then
    :func:`replaytune.schedule.finetune` gives the weights and the length. A spec counted in
    sequences with ``target_steps`` given needs no store (what a study's grid computes ahead).
    """
    if pc.finetune is not None:
        f = pc.finetune
        t_names, g_names = side_names(f.target), side_names(f.generic)
        needs = f.target_steps is None or f.unit != "sequences"
        if needs and (stores is None or sizes is None or seq_len is None or batch_size is None):
            raise ConfigError(f"phase '{pc.name}': a finetune spec in {f.unit} or without target_steps is resolved "
                              "against the stores (train/plan.RunPlan)")
        target_steps = f.target_steps
        if target_steps is None:
            target_steps = sum(int(sizes[n]) for n in t_names) / batch_size
        units = None
        if f.unit != "sequences":
            units = {n: float((stores[n].train.units(seq_len, f.unit)[drawn[n]] if n in (drawn or {}) else
                               stores[n].train.units(seq_len, f.unit, int(sizes[n]), (first or {}).get(n, 0))).mean())
                     for n in t_names + g_names}
        generic = f.generic if f.generic is not None else {}
        if f.ramp is not None:
            shape = ramps.shape_points(f.ramp, lr_schedule=pc.lr.schedule, decay=pc.lr.decay)
            plan = ramps.finetune_ramp(target_steps, f.epochs, shape, units=units, target=f.target, generic=generic)
        else:
            plan = sched.finetune(target_steps, f.epochs, f.replay, units=units, target=f.target, generic=generic)
        if pc.steps is not None and pc.steps != plan.steps:
            raise ScheduleError(f"phase '{pc.name}': steps={pc.steps} disagrees with the finetune schedule's "
                                f"{plan.steps}; drop steps")
        return plan.schedule, plan.steps, {**plan.to_dict(), "unit": f.unit,
                                           **({"units_per_sequence": units} if units else {})}
    steps = int(pc.steps)  # validated: only a finetune spec derives its own
    if pc.two_stage is not None:
        t = pc.two_stage
        plan2 = sched.two_stage(steps, t.gamma, t.replay, t.alpha, target=t.target, generic=t.generic)
        return plan2.schedule, steps, plan2.to_dict()
    if pc.ramp is not None:
        r = pc.ramp
        shape = ramps.shape_points(r.shape, lr_schedule=pc.lr.schedule, decay=pc.lr.decay)
        plan3 = ramps.midtrain_ramp(steps, r.gamma, shape, target=r.target, generic=r.generic)
        return plan3.schedule, steps, plan3.to_dict()
    if pc.uniform is not None:
        u = pc.uniform
        s = sched.uniform(u.gamma, target=u.target, generic=u.generic)
        return s, steps, {"setting": "uniform", "gamma": u.gamma, **s.to_dict()}
    if pc.constant is not None:
        s = sched.constant(pc.constant)
        return s, steps, {"setting": "constant", **s.to_dict()}
    s = sched.Schedule(pc.stages or [])
    return s, steps, {"setting": "stages", **s.to_dict()}


@dataclass(frozen=True)
class PhasePlan:
    index: int
    name: str
    start: int  # first global step
    steps: int
    schedule: Schedule
    description: dict[str, Any]
    mixture: Mixture
    lr: LRConfig
    reset: bool
    seed: int

    @property
    def end(self) -> int:
        return self.start + self.steps

    def lr_at(self, phase_step: int) -> float:
        lr = self.lr
        return lr.peak * lr_factor(
            phase_step, self.steps, kind=lr.schedule, warmup=lr.warmup, decay=lr.decay, final_ratio=lr.final_ratio,
            warmup_steps=lr.warmup_steps,
        )

    def stage_switches(self) -> list[int]:
        """Global steps at which a later stage of this phase's schedule begins."""
        return [self.start + st.start_step for st in self.schedule.stages[1:] if st.start_step < self.steps]


class RunPlan:
    """Phases, mixtures and per-step facts of a run (no model, no torch)."""

    def __init__(self, cfg: RunConfig, stores: Mapping[str, TokenStore], *, precision: str = "fp32"):
        self.cfg = cfg
        self.precision = precision
        self._plan(cfg.data, cfg.phases, stores)

    @classmethod
    def of_phases(cls, data: DataConfig, phases: list[PhaseConfig], stores: Mapping[str, TokenStore]) -> "RunPlan":
        """The data side of a plan without a model (``hf.ReplayDataset``): batches, no signatures."""
        plan = cls.__new__(cls)
        plan.cfg, plan.precision = None, "fp32"
        plan._plan(data, phases, stores)
        return plan

    def _plan(self, data: DataConfig, phase_cfgs: list[PhaseConfig], stores: Mapping[str, TokenStore]) -> None:
        self.phase_configs = tuple(phase_cfgs)
        self.stores = dict(stores)
        self.sources: tuple[str, ...] = tuple(data.sources)
        self.seq_len = data.seq_len
        self.batch_size = data.batch_size
        self.vocab_size = max(s.vocab_size for s in self.stores.values())
        self.eos_id = next(iter(self.stores.values())).eos_id
        # block-diagonal attention within each packed document (chat/instruction data by default)
        self.block = block_attention(data.document_attention, self.stores.values())
        sizes = {}
        # mixture id i of a source is its training sequence first + i
        self.first = {name: data.sources[name].first for name in self.stores}
        # data.sources.<name>.draw: mixture id i reads training sequence order[first + i], where
        # order is a permutation of all the store's training sequences seeded by ``draw``
        self.draw = {name: data.sources[name].draw for name in self.stores}
        self._order = {
            name: np.random.default_rng(d).permutation(self.stores[name].train.num_sequences(self.seq_len))
            for name, d in self.draw.items() if d is not None
        }
        for name, store in self.stores.items():
            available = store.train.num_sequences(self.seq_len) - self.first[name]
            limit = data.sources[name].sequences
            if available <= 0 or (limit is not None and limit > available):
                raise ConfigError(
                    f"data.sources.{name}: asks for {limit or 'all'} sequences of length {self.seq_len} from sequence "
                    f"{self.first[name]} on, but {store.path} has {store.train.num_sequences(self.seq_len)}; "
                    "lower sequences/first or prepare more data"
                )
            sizes[name] = available if limit is None else limit
        self.train_sequences = sizes
        caps = {name: src.max_epochs for name, src in data.sources.items()}
        # the training sequences a drawn source's mixture ids read (units are measured on them)
        drawn = {n: self.train_ids(n, np.arange(sizes[n])) for n in self._order}
        phases: list[PhasePlan] = []
        start = 0
        for i, pc in enumerate(phase_cfgs):
            seed = phase_seed(data.seed, i) if pc.seed is None else int(pc.seed)
            try:
                schedule, steps, description = resolve_phase(pc, self.stores, sizes=sizes, first=self.first, drawn=drawn,
                                                              seq_len=self.seq_len, batch_size=self.batch_size)
                unknown = [s for s in schedule.sources if s not in sizes]
                if unknown:
                    raise ConfigError(f"source {unknown[0]!r} is not in data.sources")
                mixture = Mixture(schedule, sizes, self.batch_size, steps, seed=seed, max_epochs=caps)
            except (ScheduleError, ConfigError) as exc:
                raise ConfigError(f"phases.{i} ({pc.name}): {exc}") from None
            phases.append(PhasePlan(i, pc.name, start, steps, schedule, description, mixture, pc.lr, pc.reset_optimizer, seed))
            start += steps
        self.phases: tuple[PhasePlan, ...] = tuple(phases)
        self.total_steps = start
        # Map each phase's mixture source order onto the run's source order.
        self._index = [np.array([self.sources.index(n) for n in p.mixture.sources], dtype=np.int64) for p in phases]

    # -- where is a step ------------------------------------------------------------------
    def phase_at(self, step: int) -> tuple[PhasePlan, int]:
        """Phase and phase step of the update with 0-based index ``step``."""
        if not 0 <= step < self.total_steps:
            raise IndexError(f"step {step} outside the run's [0, {self.total_steps})")
        for p in self.phases:
            if step < p.end:
                return p, step - p.start
        raise AssertionError("unreachable")

    def position(self, completed: int) -> tuple[PhasePlan, int]:
        """Phase and phase steps done after ``completed`` updates (a step count, as logged)."""
        if completed == 0:
            return self.phases[0], 0
        p, ps = self.phase_at(completed - 1)
        return p, ps + 1

    def lr_at(self, step: int) -> float:
        p, ps = self.phase_at(step)
        return p.lr_at(ps)

    def reset_at(self, step: int) -> bool:
        """True where a phase with ``reset_optimizer`` begins (never at step 0: nothing to reset)."""
        p, ps = self.phase_at(step)
        return p.reset and ps == 0 and step > 0

    def phase_ends(self) -> list[int]:
        return [p.end for p in self.phases]

    def stage_switches(self) -> list[int]:
        return [s for p in self.phases for s in p.stage_switches()]

    # -- batches --------------------------------------------------------------------------
    def global_batch(self, step: int) -> tuple[Batch, np.ndarray]:
        """The global batch at ``step`` and its sources as indices into :attr:`sources`."""
        p, ps = self.phase_at(step)
        b = p.mixture.global_batch(ps)
        return b, self._index[p.index][b.source_index]

    def train_ids(self, name: str, ids: np.ndarray) -> np.ndarray:
        """The store's training sequence ids of mixture ids ``ids`` of source ``name``
        (``first + id``, through the seeded shuffle when the source has a ``draw``)."""
        k = np.asarray(ids, dtype=np.int64) + self.first[name]
        order = self._order.get(name)
        return k if order is None else order[k]

    def sequences_seen(self, completed: int) -> dict[str, int]:
        """Training sequences drawn from each source by the first ``completed`` updates."""
        out = {name: 0 for name in self.sources}
        for p in self.phases:
            if completed <= p.start:
                break
            used = p.mixture.consumed(min(completed, p.end) - p.start)
            for name, n in used.items():
                out[name] += n
        return out

    def tokens_seen(self, completed: int) -> dict[str, int]:
        return {n: c * self.seq_len for n, c in self.sequences_seen(completed).items()}

    def epochs_seen(self, completed: int) -> dict[str, float]:
        seen = self.sequences_seen(completed)
        return {n: (seen[n] / self.train_sequences[n] if self.train_sequences[n] else 0.0) for n in self.sources}

    # -- signatures -----------------------------------------------------------------------
    def base(self) -> dict[str, Any]:
        """What fixes the weights before step 0 and how every update is computed."""
        model = self.cfg.model.model_dump(mode="json")
        model.pop("tokenizer", None)  # saved beside the model, never used in training
        return {
            "model": model,
            "vocab_size": self.vocab_size,
            "seq_len": self.seq_len,
            "optim": self.cfg.optim.model_dump(mode="json"),
            "precision": self.precision,
            "seed": self.cfg.seed,
            # only when on: signatures (and checkpoints) of runs with full attention stay as they were
            **({"document_attention": "block"} if self.block else {}),
        }

    def step_entry(self, step: int, batch: Batch | None = None, src: np.ndarray | None = None) -> dict[str, Any]:
        """What update ``step`` does: {"reset": bool, "lr": float, "batch": hash}."""
        if batch is None or src is None:
            batch, src = self.global_batch(step)
        # Only the sources this step draws from enter the hash, each by name, store fingerprint
        # and offset: a pre-training step on generic data is the same step in a run whose
        # target is Python and in one whose target is Basque (they share that prefix).
        drawn = np.unique(src)  # sorted
        names = [[self.sources[i], self.stores[self.sources[i]].fingerprint, self.first[self.sources[i]]]
                 + ([self.draw[self.sources[i]]] if self.draw[self.sources[i]] is not None else [])
                 for i in drawn.tolist()]
        local = np.searchsorted(drawn, src)
        digest = _hash(names, np.ascontiguousarray(local, dtype="<i8").tobytes(), np.ascontiguousarray(batch.ids, dtype="<i8").tobytes())
        return {"reset": self.reset_at(step), "lr": self.lr_at(step), "batch": digest[:16]}

    def iter_entries(self, upto: int) -> Iterator[dict[str, Any]]:
        for s in range(upto):
            yield self.step_entry(s)

    def signatures(self, upto: int | None = None) -> list[str]:
        """``sig[0..upto]``: the prefix fingerprint after each number of completed steps."""
        upto = self.total_steps if upto is None else upto
        if not 0 <= upto <= self.total_steps:
            raise IndexError(f"step {upto} outside [0, {self.total_steps}]")
        sigs = [base_signature(self.base())]
        for entry in self.iter_entries(upto):
            sigs.append(chain(sigs[-1], entry))
        return sigs

    def data_fingerprints(self) -> dict[str, str]:
        return {n: s.fingerprint for n, s in self.stores.items()}


def base_signature(base: Mapping[str, Any]) -> str:
    return _hash("replaytune-prefix-v1", dict(base))


def chain(previous: str, entry: Mapping[str, Any]) -> str:
    """Next link: ``lr`` enters as its exact float repr (json writes floats round-trip exact)."""
    return _hash(previous, dict(entry))


def step_signatures(cfg: RunConfig, *, upto: int | None = None, precision: str | None = None) -> list[str]:
    """Prefix fingerprints of ``cfg`` after 0, 1, ..., ``upto`` (default: all) steps.

    Two configs can share their first k updates (one branching from the other's checkpoint
    at step k, bit-identically) iff their lists agree at index k. ``precision`` defaults to
    what the run would use here (bf16 with a GPU under ``dtype: auto``, else fp32).
    """
    from replaytune.train.distributed import resolve_precision  # torch import kept lazy

    prec = precision or resolve_precision(cfg.dtype, cfg.device)
    return RunPlan(cfg, open_stores(cfg), precision=prec).signatures(upto)


def prefix_fingerprint(cfg: RunConfig, k: int, *, precision: str | None = None) -> str:
    """The prefix fingerprint of ``cfg`` after ``k`` steps (``step_signatures(cfg)[k]``)."""
    return step_signatures(cfg, upto=k, precision=precision)[k]


def shared_prefix(a: RunConfig, b: RunConfig, *, precision: str | None = None) -> int:
    """The largest k such that runs ``a`` and ``b`` compute identical first k updates."""
    sa = step_signatures(a, precision=precision)
    sb = step_signatures(b, precision=precision)
    k = 0
    while k < min(len(sa), len(sb)) and sa[k] == sb[k]:
        k += 1
    return k - 1 if k else -1
