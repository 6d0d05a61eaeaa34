"""Packing without cross-talk: with block document attention every document of a packed window
gets the loss it gets when run alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from .helpers import EOS, TINY, VOCAB, tiny_config
from replaytune.config import ModelConfig
from replaytune.model import build_model
from replaytune.data.window import IGNORE, document_positions
from replaytune.train.plan import RunPlan, open_stores


def _token_losses(model, x, y, pos=None):
    extra = {} if pos is None else {"position_ids": torch.from_numpy(pos)}
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(x), use_cache=False, **extra).logits
    return F.cross_entropy(logits[0].float(), torch.from_numpy(y[0]), ignore_index=IGNORE, reduction="none").numpy()


def test_document_positions_restart_after_every_eos():
    x = np.array([[5, 6, EOS, 7, 8, 9, EOS, 3], [EOS, 1, 2, 3, 4, 5, 6, 7]])
    assert document_positions(x, EOS).tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 0, 1, 2, 3, 4, 5, 6]]


def test_packed_documents_have_the_loss_they_have_alone():
    model = build_model(ModelConfig(preset="tiny", overrides=dict(TINY)), vocab_size=VOCAB, seq_len=32).eval()
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(1, VOCAB, n - 1), EOS) for n in (5, 7, 5)]  # 17 tokens: one window of 16 + 1
    window = np.concatenate(docs)
    x, y = window[None, :-1].copy(), window[None, 1:].copy()
    y_block = y.copy()
    y_block[x == EOS] = IGNORE  # the next document's first token is not predicted from the previous one
    packed = _token_losses(model, x, y_block, document_positions(x, EOS))
    full = _token_losses(model, x, y)
    start = 0
    for d in docs:
        alone = _token_losses(model, d[None, :-1], d[None, 1:])
        got = packed[start: start + len(d) - 1]
        np.testing.assert_allclose(got, alone, rtol=0, atol=1e-5)
        start += len(d)
    # without the block mask the later documents see the earlier ones: their losses differ
    assert not np.allclose(full[5:11], packed[5:11], atol=1e-5)


@pytest.mark.parametrize("masked, mode, block", [(True, "auto", True), (False, "auto", False), (False, "block", True),
                                                  (True, "full", False)])
def test_block_attention_is_on_for_masked_data_by_default(request, tmp_path, masked, mode, block):
    stores = request.getfixturevalue("masked_stores" if masked else "stores")
    cfg = tiny_config(stores, tmp_path / "run", data={"document_attention": mode})
    plan = RunPlan(cfg, open_stores(cfg))
    assert plan.block is block and (plan.base().get("document_attention") == "block") is block


def test_a_block_attention_run_trains_and_resumes_exactly(masked_stores, tmp_path):
    from replaytune.train import read_metrics, train

    from .helpers import strip_timing

    cfg = tiny_config(masked_stores, tmp_path / "a")
    record = train(cfg)
    assert np.isfinite(record["final"]["eval"]["target"])
    half = tiny_config(masked_stores, tmp_path / "b")
    with pytest.raises(RuntimeError):
        train(half, callbacks=[lambda t: (_ for _ in ()).throw(RuntimeError("stop")) if t.step == 10 else None])
    train(half, resume=True)
    assert strip_timing(read_metrics(tmp_path / "b")) == strip_timing(read_metrics(tmp_path / "a"))
