"""The replay mixture as a torch IterableDataset: exact items, resume, sharding, Trainer."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from replaytune.data.prepare import prepare
from replaytune.data.sources import SourceSpec
from replaytune.data.store import TokenStore
from replaytune.errors import DataError
from replaytune.finetune import build_run_config, load_config, plan_replay
from replaytune.finetune.hf import IGNORE, ReplayDataset
from replaytune.data.window import document_positions, windows
from replaytune.train.evaluation import sequence_losses
from replaytune.train.plan import RunPlan

L, B = 32, 4


@pytest.fixture(scope="module")
def stores(assets, tmp_path_factory):
    """A chat target (masked) and a text replay store, prepared with the chat model's tokenizer."""
    root = tmp_path_factory.mktemp("hf_stores")
    tok = str(assets.chat_model)
    target, _ = prepare(SourceSpec(str(assets.chat), kind="chat"), tok, root / "target", progress=False, val_docs=4)
    generic, _ = prepare(SourceSpec(str(assets.generic)), tok, root / "generic", progress=False, val_docs=10)
    return {"target": target, "generic": generic}


def _dataset(stores, **kw):
    return ReplayDataset.from_stores(stores["target"], stores["generic"], replay_fraction=0.5, epochs=1,
                                     seq_len=L, batch_size=B, **kw)


def _same(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def test_items_are_the_loops_windows_with_labels_masked(stores):
    ds = _dataset(stores, with_source=True)
    items = list(islice(iter(ds), 3 * B))
    seen = set()
    for item in items:
        name = item["source"]
        seen.add(name)
        # a chat target: block document attention (positions restart after each EOS, no attention mask)
        assert item["input_ids"].shape == item["labels"].shape == item["position_ids"].shape == (L + 1,)
        assert item["labels"][0] == IGNORE and "attention_mask" not in item
        ids_np = item["input_ids"].numpy()
        assert np.array_equal(item["position_ids"].numpy(), document_positions(ids_np[None], ds.eos)[0])
        split = stores[name].train
        # find the window: the loop's targets are input_ids[1:] masked as data/window.windows does
        matches = [i for i in range(split.num_sequences(L))
                   if np.array_equal(split.sequences(np.array([i]), L)[0], item["input_ids"].numpy())]
        w = windows(split, np.array(matches[:1]), L)
        x, y = w.inputs, w.targets
        y[x == ds.eos] = IGNORE  # the loop in block mode: no target across a document boundary
        assert np.array_equal(item["labels"][1:].numpy(), y[0])
        if name == "generic":  # text: every token a target but the one after an EOS
            after_eos = np.flatnonzero(ids_np[:-1] == ds.eos) + 1
            expect = item["input_ids"].clone()
            expect[0] = IGNORE
            expect[torch.from_numpy(after_eos)] = IGNORE
            assert torch.equal(item["labels"], expect)
    assert seen == {"target", "generic"}  # one batch holds chat and text
    assert (items[0]["labels"] == IGNORE).sum() >= 1


def test_same_batches_as_replaytune_finetune(assets, stores, tmp_path):
    ds = _dataset(stores, seed=5)
    cfg = load_config(None, {"model": str(assets.chat_model), "target": str(assets.chat), "replay": str(assets.generic),
                             "replay_fraction": 0.5, "epochs": 1, "seq_len": L, "batch_size": B, "seed": 5})
    plan = plan_replay(stores["target"], stores["generic"], replay_fraction=0.5, epochs=1, seq_len=L, batch_size=B)
    run_cfg = build_run_config(cfg, plan, {k: s.path for k, s in stores.items()}, tmp_path / "run", None)
    mixture = RunPlan(run_cfg, stores).phases[0].mixture
    assert ds.steps == plan.steps == mixture.steps and ds.mixture.fingerprint() == mixture.fingerprint()
    assert len(ds) == plan.steps * B
    ref = ReplayDataset.from_run_config(run_cfg)
    for step in (0, 1, plan.steps - 1):
        assert ds.batch_items(step) == ref.batch_items(step)


def test_deterministic_resumable_from_a_step_and_from_state(stores):
    full = list(_dataset(stores))
    assert _same(full, list(_dataset(stores)))
    later = _dataset(stores, start_step=3)
    assert len(later) == len(full) - 3 * B and _same(list(later), full[3 * B:])
    ds = _dataset(stores)
    it = iter(ds)
    head = [next(it) for _ in range(2 * B + 1)]
    state = ds.state_dict()
    assert state == {"step": 2, "offset": 1}
    fresh = _dataset(stores)
    fresh.load_state_dict(state)
    assert _same(head + list(fresh), full)
    peek = next(iter(fresh))  # a new iteration starts at the resume point again (a peek does not eat items)
    assert torch.equal(peek["input_ids"], full[2 * B + 1]["input_ids"])


def test_shards_by_rank_are_slices_of_the_global_batch(stores):
    full = list(islice(iter(_dataset(stores)), 5 * B))
    ranks = [list(islice(iter(_dataset(stores, rank=r, world=2)), 5 * B // 2)) for r in range(2)]
    for step in range(5):
        glob = full[step * B:(step + 1) * B]
        per = B // 2
        joined = ranks[0][step * per:(step + 1) * per] + ranks[1][step * per:(step + 1) * per]
        assert _same(joined, glob)
    with pytest.raises(Exception, match="must divide by the world size"):
        _dataset(stores, rank=0, world=3)


def test_hf_loss_equals_the_loops_loss(assets, stores):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(assets.chat_model))
    ds = _dataset(stores)
    items = list(islice(iter(ds), 2 * B))
    ids = torch.stack([i["input_ids"] for i in items])
    labels = torch.stack([i["labels"] for i in items])
    pos = torch.stack([i["position_ids"] for i in items])  # block document attention, as the loop
    with torch.no_grad():
        # use_cache=False: with a cache transformers does not read restarted positions as packed documents
        hf_loss = model(input_ids=ids, labels=labels, position_ids=pos, use_cache=False).loss
        # the loop feeds L tokens with restarted positions and predicts the next L
        logits = model(input_ids=ids[:, :-1], position_ids=pos[:, :-1], use_cache=False).logits
    targets = labels[:, 1:]
    ours = sequence_losses(logits, targets).sum() / (targets != IGNORE).sum()
    assert hf_loss.item() == pytest.approx(ours.item(), rel=1e-5)


def test_transformers_trainer_trains_a_few_steps(assets, stores, tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    model = AutoModelForCausalLM.from_pretrained(str(assets.chat_model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds = _dataset(stores)
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=2, gradient_accumulation_steps=2,  # 2 x 2 = B
        max_steps=3, learning_rate=1e-3, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator)
    result = trainer.train()
    assert trainer.state.global_step == 3 and np.isfinite(result.training_loss)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_datasets_iterable_yields_the_same_items(stores):
    ds = _dataset(stores)
    hf = ds.to_hf_dataset()
    for ours, theirs in zip(islice(iter(ds), 6), islice(iter(hf), 6)):
        assert ours["input_ids"].tolist() == theirs["input_ids"] and ours["labels"].tolist() == theirs["labels"]


def test_stores_of_two_tokenizers_are_refused(stores, tmp_path):
    from replaytune.data.store import write_store

    other = write_store(tmp_path / "o", [np.arange(1, 200)], [np.arange(1, 50)], vocab_size=300, eos_id=0,
                        tokenizer_fingerprint="other")
    with pytest.raises(DataError, match="different tokenizers cannot be mixed"):
        ReplayDataset.from_stores(stores["target"], other, replay_fraction=0.5, epochs=1, seq_len=L, batch_size=B)
    assert isinstance(stores["target"], TokenStore)


def test_trl_sft_trainer_trains_on_the_mixture_with_its_masks(assets, stores, tmp_path):
    """The docs' TRL recipe, run: SFTTrainer consumes the mixture's items untouched (assistant-only
    labels of the chat target, every token of the text replay) in the mixture's order."""
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator

    model = AutoModelForCausalLM.from_pretrained(str(assets.chat_model))
    model.config.use_cache = False  # so that restarted position_ids mean packed documents while training
    tokenizer = AutoTokenizer.from_pretrained(str(assets.chat_model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds = _dataset(stores)
    seen = []

    def collate(features):
        batch = default_data_collator(features)
        seen.append(batch)
        return batch

    cfg = trl.SFTConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                        max_steps=3, learning_rate=1e-3, packing=False, max_length=None, remove_unused_columns=False,
                        dataset_kwargs={"skip_prepare_dataset": True}, report_to=[], use_cpu=True, save_strategy="no",
                        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0)
    # TRL takes a `datasets` dataset: the same items through ReplayDataset.to_hf_dataset()
    trainer = trl.SFTTrainer(model=model, args=cfg, train_dataset=ds.to_hf_dataset(), data_collator=collate,
                             processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 3
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    # what TRL trained on is the mixture, item for item, labels included
    expected = list(islice(iter(_dataset(stores, with_source=True)), 3 * B))
    got_ids = torch.cat([b["input_ids"] for b in seen])[: 3 * B]
    got_labels = torch.cat([b["labels"] for b in seen])[: 3 * B]
    assert torch.equal(got_ids, torch.stack([e["input_ids"] for e in expected]))
    assert torch.equal(got_labels, torch.stack([e["labels"] for e in expected]))
    # chat items learn on assistant tokens only; replay text on every token but the first
    loss = {"target": 0, "generic": 0}
    for e in expected:
        n = int((e["labels"] != IGNORE).sum())
        loss[e["source"]] += n
        if e["source"] == "generic":  # every target but those after an EOS (block document attention)
            assert n == L - int((e["input_ids"][:L] == ds.eos).sum())
        else:
            assert n < L
    full = _dataset(stores, with_source=True)
    totals = {"target": 0, "generic": 0}
    for e in full:  # over the whole run the replay share of loss tokens is rho = 0.5
        totals[e["source"]] += int((e["labels"] != IGNORE).sum())
    assert totals["generic"] / sum(totals.values()) == pytest.approx(0.5, abs=0.05)
