"""Held-out loss per source, and the token-level loss both training and evaluation use.

The evaluation set of a source is a fixed list of validation sequences: ``n = min(
eval.sequences, sequences in the val split)`` ids spread evenly over the split
(``id_j = floor(j * N_val / n)``), so every evaluation of every run with the same stores
and seq_len scores exactly the same tokens. A source without validation sequences gets
``null``. The loss is the mean cross-entropy over all target tokens of the set (tokens the
store's loss mask excludes, e.g. chat prompts, are not targets).

Cost: one evaluation is ``E`` forward sequences (``E`` summed over sources), a training step
``B`` forward+backward sequences, about ``3 B`` forward-equivalents. The default interval
(``eval.interval`` unset) allows ``n = floor(0.05 * 3 * N * B / E)`` evaluations (at most 50)
over a run of N steps, i.e. about 5% of training time, on top of the ones at phase ends and
stage switches. Example: N = 1024, B = 16, E = 2 x 64 gives n = 19, every 54 steps.
"""

from __future__ import annotations

import math
from typing import Collection, Mapping

import numpy as np

from replaytune.data.store import TokenSplit, TokenStore
from replaytune.data.window import IGNORE, windows
from replaytune.train.distributed import Dist, autocast
from replaytune.train.loss import chunked_head, forward_losses, sequence_losses  # noqa: F401 (sequence_losses re-exported)

EVAL_BUDGET = 0.05
MAX_AUTO_EVALS = 50


def eval_ids(split: TokenSplit, seq_len: int, count: int) -> np.ndarray:
    """The fixed evaluation sequence ids of one split: ``count`` evenly spread ids."""
    n_val = split.num_sequences(seq_len)
    n = min(count, n_val)
    return (np.arange(n, dtype=np.int64) * n_val) // max(n, 1)


def eval_set(stores: Mapping[str, TokenStore], seq_len: int, count: int) -> dict[str, np.ndarray]:
    return {name: eval_ids(store.val, seq_len, count) for name, store in stores.items()}


def auto_interval(total_steps: int, batch_size: int, eval_sequences: int) -> int:
    """Evaluation interval that keeps periodic evaluation near 5% of training time (0: none)."""
    if eval_sequences <= 0 or total_steps <= 0:
        return 0
    n = min(MAX_AUTO_EVALS, math.floor(EVAL_BUDGET * 3 * total_steps * batch_size / eval_sequences))
    return math.ceil(total_steps / n) if n >= 1 else 0


def evaluate(
    model,
    stores: Mapping[str, TokenStore],
    ids: Mapping[str, np.ndarray],
    *,
    seq_len: int,
    batch_size: int,
    dist: Dist,
    precision: str,
    sharded: bool = False,
    eos: int | None = None,
    loss: str = "auto",
    split: bool = False,
    test_only: Collection[str] = (),
) -> dict[str, float | None]:
    """Mean held-out loss per source. Ranks split the sequences and sum their results.

    ``eos``: block-diagonal document attention (``data/window.py``), as in training.
    ``loss``: full logits or the chunked loss (loss.py; ``auto``: chunked for large vocabularies).
    ``split``: also ``<source>/val`` and ``<source>/test``, the losses of the first and the
    second half of the source's evaluation ids (``eval.split``); the ids are spread evenly
    over the held-out split, so the halves are its first and second half, sharing at most the
    document that straddles the middle. ``test_only`` (with ``split``): sources of which only
    the second half is evaluated; their whole-set and ``/val`` losses are None.

    Under FSDP every rank must run the same number of forward passes (each one gathers
    parameters), so a rank whose share ran out runs the first sequence again at weight 0.
    """
    import torch

    names = list(stores)
    head = chunked_head(model, loss, sharded=sharded)
    # per source: loss sum and token count over all ids, then (split) over the first half (val)
    # and the second half (test)
    parts = 3 if split else 1
    totals = torch.zeros(2 * parts * len(names), dtype=torch.float64, device=dist.device)
    K = len(names)
    was_training = model.training
    model.eval()
    grad_off = torch.no_grad() if sharded else torch.inference_mode()
    with grad_off:
        for j, name in enumerate(names):
            src_ids = ids[name]
            if len(src_ids) == 0:
                continue
            held_out = stores[name].val
            step = batch_size * dist.world
            half = len(src_ids) // 2
            begin = half if split and name in test_only else 0
            for start in range(begin, len(src_ids), step):
                lo = start + dist.rank * batch_size
                mine = src_ids[lo : lo + batch_size]
                weight = 1.0
                if len(mine) == 0:
                    if not sharded:
                        continue
                    mine, weight, lo = src_ids[:1], 0.0, 0
                w = windows(held_out, mine, seq_len, eos=eos)
                x, y, pos = w.inputs, w.targets, w.positions
                xt = torch.from_numpy(x).to(dist.device)
                yt = torch.from_numpy(y).to(dist.device)
                pt = None if pos is None else torch.from_numpy(pos).to(dist.device)
                with autocast(dist.device, precision):
                    total, losses = forward_losses(model, xt, yt, head=head, position_ids=pt)
                totals[j] += weight * total.double()
                totals[K + j] += weight * float((yt != IGNORE).sum())
                if split:
                    seq_loss = weight * losses.double()
                    seq_tok = weight * (yt != IGNORE).sum(dim=1).double()
                    val = torch.from_numpy(lo + np.arange(len(mine)) < half).to(dist.device)
                    totals[2 * K + j] += seq_loss[val].sum()
                    totals[3 * K + j] += seq_tok[val].sum()
                    totals[4 * K + j] += seq_loss[~val].sum()
                    totals[5 * K + j] += seq_tok[~val].sum()
    if was_training:
        model.train()
    dist.all_reduce_sum(totals)
    out: dict[str, float | None] = {}

    def mean(k: int, j: int) -> float | None:
        tok = float(totals[(2 * k + 1) * K + j])
        return float(totals[2 * k * K + j]) / tok if tok > 0 else None

    for j, name in enumerate(names):
        out[name] = mean(0, j) if not (split and name in test_only) else None
    if split:
        for j, name in enumerate(names):
            out[f"{name}/val"], out[f"{name}/test"] = mean(1, j), mean(2, j)
    return out
