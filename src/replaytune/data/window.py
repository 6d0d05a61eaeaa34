"""A training window: sequence ids of a store to (inputs, targets, positions), the one place for it.

Sequence i of a split is the tokens ``[i*L, i*L + L]`` (L + 1 of them): the inputs are the
first L, the targets the last L (next-token prediction). Three rules decide which targets count,
for the training loop, evaluation and ``finetune/hf.ReplayDataset`` alike:

* **the loss mask**: a store of chat or instruction data marks the tokens that carry loss
  (assistant turns, completions); every other target is :data:`IGNORE`;
* **block attention** (:func:`block_attention`): ``document_attention: block``, or ``auto`` when
  any store carries a loss mask. Position ids restart at 0 after every EOS, so transformers'
  causal LMs attend within each packed document only (:func:`document_positions`);
* **no target after an EOS** (block attention only): the token after an EOS starts the next
  document, and a document run alone has no prediction for its first token either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from replaytune.data.store import TokenSplit, TokenStore
from replaytune.errors import ConfigError

IGNORE = -100  # target id that cross_entropy skips (masked-out tokens)
MODES = ("auto", "block", "full")


def block_attention(mode: str, stores: Iterable[TokenStore]) -> bool:
    """Whether packed documents attend within themselves only: ``block``, or ``auto`` with a loss-masked store."""
    if mode not in MODES:
        raise ConfigError(f"document_attention {mode!r}: choose auto, block or full")
    return mode == "block" or (mode == "auto" and any(s.has_loss_mask for s in stores))


@dataclass(frozen=True)
class Windows:
    """Windows of ``n`` sequences: ``tokens`` [n, L + 1] as stored, ``inputs`` and ``targets`` [n, L],
    ``positions`` [n, L] under block attention (else None)."""

    tokens: np.ndarray
    inputs: np.ndarray
    targets: np.ndarray
    positions: np.ndarray | None


def windows(split: TokenSplit, ids: np.ndarray, seq_len: int, *, eos: int | None = None) -> Windows:
    """The windows of sequences ``ids``; ``eos`` given: block attention (positions, no target after an EOS)."""
    tokens = split.sequences(ids, seq_len)
    targets = tokens[:, 1:].copy()
    masks = split.masks(ids, seq_len)
    if masks is not None:
        targets[~masks[:, 1:]] = IGNORE
    inputs = tokens[:, :-1]
    positions = None
    if eos is not None:
        targets[inputs == eos] = IGNORE
        positions = document_positions(inputs, eos)
    return Windows(tokens, inputs, targets, positions)


def document_positions(x: np.ndarray, eos: int) -> np.ndarray:
    """Position ids that restart at 0 after every EOS in each row of inputs ``x`` [n, L].

    Given as ``position_ids`` with no attention mask, transformers' causal LMs read the restarts
    as packed documents and attend within each one only (SDPA/eager: a block-diagonal causal
    mask; flash-attention: variable-length segments), so every document is computed as if alone.
    A window that starts inside a document starts that document at position 0.
    """
    n, length = x.shape
    t = np.arange(length)
    start = np.zeros((n, length), dtype=bool)
    start[:, 0] = True
    start[:, 1:] = x[:, :-1] == eos
    last_start = np.maximum.accumulate(np.where(start, t, 0), axis=1)
    return (t - last_start).astype(np.int64)


def hf_example(split: TokenSplit, seq_id: int, seq_len: int, *, eos: int | None = None) -> dict[str, np.ndarray]:
    """One window in Hugging Face's convention: ``input_ids`` and ``labels`` of L + 1 tokens (the model
    shifts; ``labels[0]`` is IGNORE, no position predicts it), ``position_ids`` under block attention."""
    w = windows(split, np.array([seq_id]), seq_len, eos=eos)
    labels = np.concatenate([[IGNORE], w.targets[0]]).astype(np.int64)
    out = {"input_ids": w.tokens[0], "labels": labels}
    if eos is not None:
        out["position_ids"] = document_positions(w.tokens[:, :], eos)[0]
    return out
