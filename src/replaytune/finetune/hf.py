"""The replay mixture as a torch ``IterableDataset`` for Hugging Face ``Trainer`` / TRL ``SFTTrainer``.

Each item is one packed training window of replaytune's own loop::

    {"input_ids": LongTensor[L + 1], "labels": LongTensor[L + 1], "attention_mask": LongTensor[L + 1]}

Window ``i`` of a store is ``tokens[i*L : i*L + L + 1]``: replaytune's loop feeds its first
L tokens and predicts the last L. A Hugging Face causal LM shifts labels by one inside the
model (logits at position k score ``labels[k + 1]``), so giving it the whole window with
``labels[0] = -100`` and ``labels[k] = -100`` wherever the store's loss mask is 0 (chat
prompts) scores exactly the same L targets; the logit of the last position is computed and
unused (1 / (L + 1) of the forward pass). Text stores have no mask: every target counts.

Document attention, as the loop's ``data.document_attention`` (default ``auto``: block when a
store carries a loss mask, i.e. chat or instruction data): in block mode an item carries
``position_ids`` restarting after every EOS and no ``attention_mask``, which transformers reads as
packed documents (each attends to itself only, on SDPA, eager and flash-attention), and the
token after an EOS is not a target; in full mode it carries ``attention_mask`` (all ones).

The stream is a pure function of the step: item ``j`` of step ``s`` is position ``j`` of the
mixture's shuffled global batch at ``s`` (``data/mixture.py``), so

* it is deterministic: the same stores, weights, batch size and seed give the same items;
* it resumes from any step (``start_step``, or ``load_state_dict(state_dict())``);
* it shards by rank: ``rank`` / ``world`` keep each global batch's contiguous slice
  ``[rank * B / world, (rank + 1) * B / world)``, the slice replaytune's DDP loop trains on.

With ``Trainer`` keep ``rank=0, world=1`` (accelerate splits each batch over processes
itself) and make one Trainer step one mixture step:
``per_device_train_batch_size * gradient_accumulation_steps * processes = batch_size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch.utils.data import IterableDataset, get_worker_info

from replaytune.data.mixture import Mixture
from replaytune.data.window import IGNORE, block_attention, hf_example  # noqa: F401  (IGNORE: the labels' ignore id)
from replaytune.data.store import TokenStore
from replaytune.errors import ConfigError, DataError
from replaytune.finetune.plan import plan_replay
from replaytune.schedule import GENERIC, TARGET



def _open(store: TokenStore | str | Path) -> TokenStore:
    return store if isinstance(store, TokenStore) else TokenStore(store)


def _side(name: str, stores) -> dict[str, TokenStore]:
    """One side's stores by name: a mapping as given, one store under the side's name."""
    if stores is None:
        return {}
    if isinstance(stores, Mapping):
        return {n: _open(s) for n, s in stores.items()}
    return {name: _open(stores)}


class ReplayDataset(IterableDataset):
    """Items of ``mixture`` from ``start_step`` to its end, this rank's slice of every batch.

    Build it with :meth:`from_stores` (target + replay at a replay fraction, the same weights
    and steps as ``replaytune finetune``) or :meth:`from_run_config` (the exact batches of a
    phase of a ``replaytune train`` config).
    """

    def __init__(
        self,
        mixture: Mixture,
        stores: Mapping[str, TokenStore],
        seq_len: int,
        *,
        start_step: int = 0,
        rank: int = 0,
        world: int = 1,
        with_source: bool = False,
        document_attention: str = "auto",
    ):
        super().__init__()
        missing = [s for s in mixture.sources if s not in stores]
        if missing:
            raise ConfigError(f"the mixture draws from {missing[0]!r} but no store of that name was given")
        fps = {stores[s].tokenizer_fingerprint for s in mixture.sources}
        if len(fps) > 1:
            raise DataError(
                "stores built with different tokenizers cannot be mixed: "
                + ", ".join(f"{s}={stores[s].tokenizer_fingerprint}" for s in mixture.sources)
            )
        if world < 1 or not 0 <= rank < world or mixture.batch_size % world:
            raise ConfigError(f"rank {rank} of world {world}: batch size {mixture.batch_size} must divide by the world size")
        self.mixture, self.stores, self.seq_len = mixture, dict(stores), int(seq_len)
        self.rank, self.world, self.with_source = rank, world, with_source
        self.block = block_attention(document_attention, [self.stores[s] for s in mixture.sources])
        self.eos = next(iter(self.stores.values())).eos_id
        self.start_step, self.start_offset, self.progress = 0, 0, 0
        self.skip_to(start_step)

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_stores(
        cls,
        target: TokenStore | str | Path | Mapping[str, TokenStore | str | Path],
        replay: TokenStore | str | Path | Mapping[str, TokenStore | str | Path] | None = None,
        *,
        replay_fraction: float,
        epochs: float,
        seq_len: int,
        batch_size: int,
        unit: str = "tokens",
        seed: int = 0,
        weights: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> "ReplayDataset":
        """Target + replay at ``replay_fraction`` (counted in ``unit``), target ``epochs`` fixed.

        Same weights, steps and mixture seed as ``replaytune finetune --seed SEED``, so the
        items are that run's batches, in order. Several sources on a side: a mapping of
        names to stores, with ``weights`` by name (each source's part of its side; give the
        names ``replaytune finetune`` gives, e.g. ``generic.web``, for that run's batches).
        """
        targets, replays = _side(TARGET, target), _side(GENERIC, replay)
        stores = {**targets, **replays}
        plan = plan_replay(targets, replays or None, replay_fraction=replay_fraction, epochs=epochs,
                           seq_len=seq_len, batch_size=batch_size, unit=unit, weights=weights, seed=seed)
        ds = cls(plan.mixture, stores, seq_len, **kwargs)
        ds.plan = plan
        return ds

    @classmethod
    def from_run_config(cls, cfg, *, phase: int = 0, **kwargs: Any) -> "ReplayDataset":
        """The batches of phase ``phase`` of a :class:`~replaytune.config.RunConfig`."""
        from replaytune.train.plan import RunPlan, open_stores

        stores = open_stores(cfg)
        plan = RunPlan(cfg, stores)
        kwargs.setdefault("document_attention", cfg.data.document_attention)
        return cls(plan.phases[phase].mixture, stores, cfg.data.seq_len, **kwargs)

    # -- position -----------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return self.mixture.steps

    @property
    def per_rank(self) -> int:
        return self.mixture.batch_size // self.world

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.per_rank - self.start_offset

    def skip_to(self, step: int, offset: int = 0) -> None:
        """Start every later iteration at item ``offset`` of ``step`` (this rank's items)."""
        if not 0 <= step <= self.steps or not 0 <= offset < max(self.per_rank, 1) or (step == self.steps and offset):
            raise ConfigError(f"start step {step} (item {offset}) is outside the mixture's [0, {self.steps}] steps")
        self.start_step, self.start_offset, self.progress = int(step), int(offset), 0

    def state_dict(self) -> dict[str, int]:
        """Where the latest iteration stands: its next item is item ``offset`` of step ``step``.

        Counted in this process: with DataLoader ``num_workers=1`` the worker's copy advances,
        not this one; read the position from the trainer's step count instead.
        """
        step, offset = divmod(self.start_step * self.per_rank + self.start_offset + self.progress, self.per_rank)
        return {"step": int(step), "offset": int(offset)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.skip_to(int(state["step"]), int(state.get("offset", 0)))

    # -- items --------------------------------------------------------------------------------
    def item(self, source: str, seq_id: int) -> dict[str, torch.Tensor]:
        """One training window of a source as input_ids / labels / attention_mask."""
        ex = hf_example(self.stores[source].train, seq_id, self.seq_len, eos=self.eos if self.block else None)
        item = {key: torch.from_numpy(value) for key, value in ex.items()}
        if not self.block:
            item["attention_mask"] = torch.ones(len(ex["input_ids"]), dtype=torch.long)
        if self.with_source:
            item["source"] = source
        return item

    def batch_items(self, step: int) -> list[tuple[str, int]]:
        """(source, sequence id) of this rank's slice of the global batch at ``step``."""
        b = self.mixture.batch(step, self.rank, self.world)
        return [(b.sources[int(s)], int(i)) for s, i in zip(b.source_index, b.ids)]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise ConfigError(
                "ReplayDataset with DataLoader num_workers > 1 would repeat or reorder the mixture; "
                "reading a window is a memory-mapped slice, so use num_workers 0 or 1"
            )
        self.progress = 0
        for step in range(self.start_step, self.steps):
            for j, (source, seq_id) in enumerate(self.batch_items(step)):
                if step == self.start_step and j < self.start_offset:
                    continue
                item = self.item(source, seq_id)
                self.progress += 1  # before the yield: a consumer that stops here has this item
                yield item

    def to_hf_dataset(self):
        """The same items as a ``datasets.IterableDataset`` (features: int64 sequences)."""
        import datasets

        def gen():
            for item in ReplayDataset.__iter__(self):
                yield {k: v.tolist() for k, v in item.items() if k != "source"}

        keys = ("input_ids", "labels", "position_ids" if self.block else "attention_mask")
        features = datasets.Features({k: datasets.Sequence(datasets.Value("int64")) for k in keys})
        return datasets.IterableDataset.from_generator(gen, features=features)
