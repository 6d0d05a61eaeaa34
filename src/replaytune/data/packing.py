"""Whole-example packing (``packing: bfd``): chat and instruction examples never straddle a window.

``wrapped`` packing (text, and the layout of every store) cuts the token stream every
``seq_len`` tokens, so an example crossing a cut would train its second half without its
prompt; block attention would then hide the prompt from it. ``bfd`` instead places whole
examples into bins of ``seq_len`` tokens by seeded best-fit decreasing and pads the rest of
each bin with EOS tokens whose loss mask is 0:

* examples are sorted by length, longest first (ties in a seeded random order); each goes into
  the open bin with the least room that still holds it, or opens a new bin;
* the finished bins are written in a seeded random order, bin ``i`` at ``[i*L, (i+1)*L)``, and
  one more EOS (mask 0) ends the split, so window ``i`` of the store's layout
  (``tokens[i*L : i*L + L + 1]``, see :mod:`~replaytune.data.store`) is bin ``i`` plus the first
  token of bin ``i+1``: sequence id = bin. Every bin ends with an EOS, so under block
  attention that last target is never trained, and an example's first token carries no loss
  (its mask is set to 0), so it is not trained under full attention either;
* an example longer than ``L`` is truncated by the caller to its first ``L`` tokens, EOS
  last with mask 0 (the tail of the reply is lost; the prompt is kept), and counted;
* examples are binned in buffers of ``BUFFER_TOKENS`` tokens (memory stays bounded); only the
  last bins of a buffer are less full than best fit over the whole split would make them.

Padding follows the examples of its bin: with position ids restarting after every EOS (block
attention) no real token attends to it, and with plain causal attention nothing attends to
tokens after it. The replay fraction counts loss tokens (``TokenSplit.units``), so pads count 0.
"""

from __future__ import annotations

import bisect

import numpy as np

from replaytune.data.store import StoreWriter

MODES = ("bfd", "wrapped")
BUFFER_TOKENS = 1 << 22  # ~4M tokens binned at a time


def best_fit_decreasing(lengths: list[int], capacity: int, rng: np.random.Generator) -> list[list[int]]:
    """Bins (lists of item indices) of items of ``lengths`` (each <= capacity), best fit decreasing."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.lexsort((rng.random(len(lengths)), -lengths))  # longest first, ties seeded
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        n = int(lengths[i])
        k = bisect.bisect_left(room, (n, -1))
        if k < len(room):
            left, b = room.pop(k)
            bins[b].append(int(i))
            if left - n > 0:
                bisect.insort(room, (left - n, b))
        else:
            bins.append([int(i)])
            if capacity - n > 0:
                bisect.insort(room, (capacity - n, len(bins) - 1))
    return bins


class Packer:
    """Collects one split's examples and writes them to ``writer`` as bins of ``seq_len`` tokens."""

    def __init__(self, writer: StoreWriter, split: str, seq_len: int, eos: int, seed: int):
        self.w, self.split, self.L, self.eos, self.seed = writer, split, seq_len, eos, seed
        self.items: list[tuple[np.ndarray, np.ndarray]] = []
        self.held = 0
        self.flushes = 0
        self.bins = 0
        self.real = 0  # non-pad tokens written

    def add(self, ids: np.ndarray, mask: np.ndarray) -> None:
        if len(ids) > self.L:
            raise ValueError(f"example of {len(ids)} tokens over the bin of {self.L}")  # the caller truncates
        self.items.append((ids, mask))
        self.held += len(ids)
        if self.held >= BUFFER_TOKENS:
            self.flush()

    def flush(self) -> None:
        if not self.items:
            return
        rng = np.random.default_rng([self.seed, self.flushes, 1 if self.split == "val" else 0])
        self.flushes += 1
        bins = best_fit_decreasing([len(t) for t, _ in self.items], self.L, rng)
        docs, masks = [], []
        for b in rng.permutation(len(bins)):
            members = [self.items[i] for i in bins[b]]
            pad = self.L - sum(len(t) for t, _ in members)
            for j, (t, m) in enumerate(members):
                if j == len(members) - 1 and pad:  # padding joins the bin's last example (mask 0)
                    t = np.concatenate([t, np.full(pad, self.eos, dtype=t.dtype)])
                    m = np.concatenate([m, np.zeros(pad, np.uint8)])
                docs.append(t)
                masks.append(m)
        self.w.add_many(self.split, docs, masks)
        self.bins += len(bins)
        self.real += self.held
        self.items, self.held = [], 0

    def finish(self) -> None:
        self.flush()
        if self.bins:  # the boundary token after the last bin: window i = bin i (+ next bin's first token)
            self.w.extend_last(self.split, np.array([self.eos], dtype=self.w.dtype))
