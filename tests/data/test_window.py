"""data/window.py: the one place ids become (inputs, targets, positions); the loop, evaluation and hf agree."""

from __future__ import annotations

import numpy as np
import pytest

from replaytune.data.store import TokenSplit
from replaytune.data.window import IGNORE, block_attention, document_positions, hf_example, windows
from replaytune.errors import ConfigError

EOS = 0


def _split(tokens, mask=None):
    tokens = np.asarray(tokens, dtype=np.int64)
    return TokenSplit(tokens, np.array([0, len(tokens)]), None if mask is None else np.asarray(mask, dtype=bool))


def test_targets_are_the_next_tokens_masked_by_the_loss_mask():
    split = _split([5, 6, 7, 8, 9, 10, 11, 12, 13], mask=[0, 0, 1, 1, 0, 1, 1, 1, 0])
    w = windows(split, np.array([0, 1]), 4)
    assert w.tokens.tolist() == [[5, 6, 7, 8, 9], [9, 10, 11, 12, 13]]
    assert w.inputs.tolist() == [[5, 6, 7, 8], [9, 10, 11, 12]]
    # target k is token k + 1, kept where the mask of token k + 1 is set
    assert w.targets.tolist() == [[IGNORE, 7, 8, IGNORE], [10, 11, 12, IGNORE]]
    assert w.positions is None


def test_block_attention_drops_the_target_after_an_eos_and_restarts_positions():
    split = _split([5, 6, EOS, 7, 8, EOS, 9, 10, 11])
    w = windows(split, np.array([0, 1]), 4, eos=EOS)
    assert w.targets.tolist() == [[6, EOS, IGNORE, 8], [EOS, IGNORE, 10, 11]]
    assert w.positions.tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    assert document_positions(w.inputs, EOS).tolist() == w.positions.tolist()


@pytest.mark.parametrize("eos", [None, EOS])
def test_the_hf_example_is_the_loops_window_shifted(eos):
    split = _split([5, 6, EOS, 7, 8, EOS, 9, 10, 11], mask=[1, 1, 1, 0, 1, 1, 1, 0, 1])
    w = windows(split, np.array([1]), 4, eos=eos)
    ex = hf_example(split, 1, 4, eos=eos)
    assert ex["input_ids"].tolist() == w.tokens[0].tolist()
    # HF shifts inside the model: label k + 1 is what input k predicts; nothing predicts token 0
    assert ex["labels"][0] == IGNORE and ex["labels"][1:].tolist() == w.targets[0].tolist()
    if eos is None:
        assert "position_ids" not in ex
    else:
        assert ex["position_ids"][:-1].tolist() == w.positions[0].tolist()


class _Store:
    def __init__(self, masked):
        self.has_loss_mask = masked


def test_block_attention_rule():
    assert block_attention("auto", [_Store(False), _Store(True)]) is True
    assert block_attention("auto", [_Store(False)]) is False
    assert block_attention("block", [_Store(False)]) is True
    assert block_attention("full", [_Store(True)]) is False
    with pytest.raises(ConfigError, match="document_attention 'blocks': choose auto, block or full"):
        block_attention("blocks", [])
