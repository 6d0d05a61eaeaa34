"""A chat target is packed whole (bfd) by ``finetune``: no target example straddles a window in the
loop's batches or in ReplayDataset items, and the replay fraction in loss tokens stays exact."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from replaytune.data.store import TokenStore
from replaytune.data.window import IGNORE
from replaytune.finetune import realised_units, run_finetune
from replaytune.finetune.hf import ReplayDataset
from replaytune.train.loop import Trainer
from replaytune.train.plan import RunPlan

L = 96  # the fixture's conversations are 40-70 tokens: whole at this length


@pytest.fixture(scope="module")
def prepared(assets, tmp_path_factory):
    from replaytune.finetune import load_config
    from .conftest import base_values

    out = tmp_path_factory.mktemp("packing") / "out"
    cfg = load_config(None, base_values(assets, out, model=str(assets.chat_model), target={"path": str(assets.chat)},
                                        epochs=2, seq_len=L))
    res = run_finetune(cfg, prepare_only=True, log=lambda *_: None)
    stores = {name: TokenStore(s.store) for name, s in res.run_config.data.sources.items()}
    return res.run_config, stores


def _example_of(store, seq_id, t):
    """(start, end) of the document holding target t (0-based) of window seq_id."""
    docs = np.asarray(store.train.docs)
    g = seq_id * L + t + 1
    d = int(np.searchsorted(docs, g, side="right")) - 1
    return int(docs[d]), int(docs[d + 1])


def _check_window(store, seq_id, labels):
    """Every loss-bearing target of the window belongs to an example that starts and ends inside it."""
    for t in np.flatnonzero(labels != IGNORE):
        a, b = _example_of(store, seq_id, int(t))
        assert seq_id * L <= a and b <= seq_id * L + L + 1, (seq_id, t, a, b)


def test_chat_target_is_packed_whole_and_batches_never_cut_an_example(prepared):
    run_cfg, stores = prepared
    target = stores["target"]
    assert target.meta["settings"]["packing"] == "bfd" and target.meta["settings"]["seq_len"] == L
    assert target.meta["stats"]["truncated"] == 0 and target.meta["stats"]["packing"]["fill"] > 0.8
    assert "packing" not in stores["generic"].meta["settings"]  # text stays wrapped
    plan = RunPlan(run_cfg, stores)
    loop = SimpleNamespace(cfg=run_cfg, plan=plan, stores=stores)
    checked = 0
    for step in range(plan.total_steps):
        batch, src = plan.global_batch(step)
        x, y, pos = Trainer._load(loop, src, batch.ids)  # the loop's own loading
        for j in np.flatnonzero(np.asarray(plan.sources)[src] == "target"):
            seq = int(batch.ids[j]) + plan.first["target"]
            _check_window(target, seq, y[j])
            checked += int((y[j] != IGNORE).sum())
    assert checked > 0
    ds = ReplayDataset.from_run_config(run_cfg, with_source=True)
    for step in range(ds.steps):
        for name, seq in ds.batch_items(step):
            if name == "target":
                item = ds.item(name, seq)
                _check_window(target, seq, item["labels"][1:].numpy())


def test_replay_fraction_in_loss_tokens_is_exact_with_padding(prepared):
    run_cfg, stores = prepared
    plan = RunPlan(run_cfg, stores)
    mixture = plan.phases[0].mixture
    got = realised_units(mixture, stores, L, "tokens")
    share = got["generic"] / (got["generic"] + got["target"])
    # counted from the loop's own targets: padding and prompts are IGNORE
    loop = SimpleNamespace(cfg=run_cfg, plan=plan, stores=stores)
    loss = {"target": 0, "generic": 0}
    for step in range(plan.total_steps):
        batch, src = plan.global_batch(step)
        _, y, _ = Trainer._load(loop, src, batch.ids)
        names = np.asarray(plan.sources)[src]
        for name in loss:
            loss[name] += int((y[names == name] != IGNORE).sum())
    # the mixture's unit counts every target with mask 1 (the generic side: L per window; the loop also drops
    # the target after each EOS of a text window, which the unit does not see)
    assert got["target"] == loss["target"]
    assert share == pytest.approx(0.5, abs=0.08)
