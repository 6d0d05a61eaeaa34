"""The chunked linear + cross-entropy equals the full-logits loss: values, gradients, per-source sums."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from .helpers import tiny_config
from replaytune.errors import ConfigError
from replaytune.train import read_metrics, train
from replaytune.train.loss import (
    CHUNKED_MIN_VOCAB,
    IGNORE,
    chunk_tokens,
    chunked_head,
    forward_losses,
    linear_cross_entropy,
    sequence_losses,
)

TOL = dict(rtol=1e-5, atol=1e-5)


def _data(n=3, length=37, d=16, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, length, d, generator=g)
    weight = torch.randn(vocab, d, generator=g) * 0.5
    targets = torch.randint(0, vocab, (n, length), generator=g)
    targets[torch.rand(n, length, generator=g) < 0.3] = IGNORE  # a loss mask
    targets[1, :] = IGNORE  # a sequence with no target at all
    return hidden, weight, targets


def _plain(hidden, weight, targets):
    logits = hidden @ weight.t()
    ce = F.cross_entropy(logits.reshape(-1, weight.shape[0]), targets.reshape(-1), ignore_index=IGNORE, reduction="none")
    return ce.sum(), ce.view(targets.shape)


@pytest.mark.parametrize("chunk", [1, 7, 50, 111, 500])  # 111 = all tokens; 7 and 50 do not divide 111
def test_loss_and_gradients_equal_the_full_logits(chunk):
    hidden, weight, targets = _data()
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    total1, tok1 = _plain(h1, w1, targets)
    total2, tok2 = linear_cross_entropy(h2, w2, targets, chunk_size=chunk)
    assert total2.dtype == torch.float32 and tok2.shape == targets.shape and not tok2.requires_grad
    torch.testing.assert_close(total2, total1, **TOL)
    torch.testing.assert_close(tok2, tok1.detach(), **TOL)
    assert (tok2[targets == IGNORE] == 0).all() and (tok2[targets != IGNORE] > 0).all()
    (total1 * 0.37).backward()
    (total2 * 0.37).backward()
    torch.testing.assert_close(h2.grad, h1.grad, **TOL)
    torch.testing.assert_close(w2.grad, w1.grad, **TOL)
    assert (h2.grad[1] == 0).all()  # no targets in sequence 1: no gradient


def test_per_source_sums_equal():
    hidden, weight, targets = _data(n=6, length=20, seed=1)
    src = torch.tensor([0, 2, 1, 0, 2, 2])
    _, tok1 = _plain(hidden, weight, targets)
    _, tok2 = linear_cross_entropy(hidden, weight, targets, chunk_size=9)
    sums1 = torch.zeros(3, dtype=torch.float64).index_add_(0, src, tok1.sum(1).double())
    sums2 = torch.zeros(3, dtype=torch.float64).index_add_(0, src, tok2.sum(1).double())
    torch.testing.assert_close(sums2, sums1, rtol=1e-6, atol=1e-5)
    assert sums1.min() > 0


def test_only_the_hidden_states_or_only_the_weight_train():
    hidden, weight, targets = _data(seed=2)
    h = hidden.clone().requires_grad_()
    total, _ = linear_cross_entropy(h, weight, targets, chunk_size=16)
    total.backward()
    ref = hidden.clone().requires_grad_()
    _plain(ref, weight, targets)[0].backward()
    torch.testing.assert_close(h.grad, ref.grad, **TOL)
    w = weight.clone().requires_grad_()  # a frozen body under a trainable head
    linear_cross_entropy(hidden, w, targets, chunk_size=16)[0].backward()
    ref = weight.clone().requires_grad_()
    _plain(hidden, ref, targets)[0].backward()
    torch.testing.assert_close(w.grad, ref.grad, **TOL)


def test_without_gradients_only_losses():
    hidden, weight, targets = _data(seed=3)
    with torch.inference_mode():
        total, tok = linear_cross_entropy(hidden, weight, targets, chunk_size=10)
    ref_total, ref_tok = _plain(hidden, weight, targets)
    torch.testing.assert_close(total, ref_total, **TOL)
    torch.testing.assert_close(tok, ref_tok, **TOL)


def test_bf16_autocast_matches_the_autocast_full_path():
    """Under bf16 autocast both paths do the matmuls in bf16 and the softmax in fp32.

    Gradients: compared with an fp64 reference on the bf16-rounded inputs, the chunked path
    is no less accurate than autocast's full path (it sums the chunks' weight gradients in
    fp32, where the full path rounds one bf16 matmul).
    """
    hidden, weight, targets = _data(seed=4)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(h1, w1)
        assert logits.dtype == torch.bfloat16
        total1 = sequence_losses(logits, targets).sum()
        total2, _ = linear_cross_entropy(h2, w2, targets, chunk_size=13)
    total1.backward()
    total2.backward()
    assert w2.grad.dtype == torch.float32 and h2.grad.dtype == torch.float32
    torch.testing.assert_close(total2, total1, rtol=1e-5, atol=1e-4)  # same bf16 logits, fp32 softmax
    fp32_total = _plain(hidden, weight, targets)[0]
    assert abs(float(total2.detach()) - float(fp32_total)) > 1e-3  # really computed in bf16, not silently in fp32
    h64 = hidden.bfloat16().double().requires_grad_()
    w64 = weight.bfloat16().double().requires_grad_()
    _plain(h64, w64, targets)[0].backward()
    for ours, autocast_full, exact in ((h2.grad, h1.grad, h64.grad), (w2.grad, w1.grad, w64.grad)):
        err_ours = float((ours.double() - exact).abs().max())
        err_full = float((autocast_full.double() - exact).abs().max())
        assert err_ours <= 1.1 * err_full + 1e-6
        assert err_ours < 0.02 * float(exact.abs().max())  # bf16 rounding of the logits' gradient


def test_backward_twice_is_refused():
    hidden, weight, targets = _data(seed=5)
    total, _ = linear_cross_entropy(hidden.requires_grad_(), weight, targets, chunk_size=8)
    total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward runs once"):
        total.backward()


def test_shape_mismatch_is_named():
    hidden, weight, targets = _data()
    with pytest.raises(ValueError, match="111 hidden states but 74 targets"):
        linear_cross_entropy(hidden, weight, targets[:2])


def test_chunk_tokens():
    assert chunk_tokens(128_256) == 512  # 2^26 / 128,256 = 523 -> 512: 256 MB of fp32 logits
    assert chunk_tokens(32_000) == 2048
    assert chunk_tokens(10_000_000) == 64


# -- models -------------------------------------------------------------------------------------


def _llama(vocab=96, tie=False, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie, use_cache=False)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def _batch(vocab=96, n=3, length=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, length), generator=g)
    y = torch.randint(0, vocab, (n, length), generator=g)
    y[:, :5] = IGNORE  # a prompt
    pos = torch.cat([torch.arange(10), torch.arange(length - 10)]).repeat(n, 1)  # two packed documents
    return x, y, pos


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tie", [False, True])
def test_llama_end_to_end_equals_full_logits(tie):
    """Every parameter's gradient (the embedding, a layer, the head; tied or not) and the per-sequence losses."""
    model = _llama(tie=tie)
    head = chunked_head(model, "chunked")
    assert head is model.lm_head and (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    x, y, pos = _batch()
    total1, seq1 = forward_losses(model, x, y, head=None, position_ids=pos)
    (total1 * 0.1).backward()
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    total2, seq2 = forward_losses(model, x, y, head=head, position_ids=pos)
    (total2 * 0.1).backward()
    chunked = _grads(model)
    torch.testing.assert_close(total2, total1, **TOL)
    torch.testing.assert_close(seq2, seq1, **TOL)
    assert set(chunked) == set(full) and len(full) == (20 if tie else 21)  # 2 layers x 9, embedding, norm, head
    for name in full:
        torch.testing.assert_close(chunked[name], full[name], **TOL, msg=name)
    assert full["model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0


def test_lora_model_equals_full_logits():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(_llama(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    head = chunked_head(model, "chunked")
    assert head is model.get_base_model().lm_head and not head.weight.requires_grad
    x, y, _ = _batch(seed=1)
    total1, seq1 = forward_losses(model, x, y)
    total1.backward()
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    total2, seq2 = forward_losses(model, x, y, head=head)
    total2.backward()
    chunked = _grads(model)
    torch.testing.assert_close(seq2, seq1, **TOL)
    assert set(chunked) == set(full) and all("lora_" in n for n in full) and len(full) == 2 * 7 * 2
    for name in full:
        torch.testing.assert_close(chunked[name], full[name], **TOL, msg=name)


def test_which_path_runs():
    small = _llama(vocab=96)
    assert chunked_head(small) is None  # auto: below CHUNKED_MIN_VOCAB the logits are small
    assert chunked_head(small, "full") is None
    assert chunked_head(small, "chunked") is small.lm_head
    large = _llama(vocab=CHUNKED_MIN_VOCAB)
    assert chunked_head(large) is large.lm_head
    assert chunked_head(large, "full") is None
    assert chunked_head(large, sharded=True) is None  # FSDP: full logits
    with pytest.raises(ConfigError, match="loss: chunked cannot run here: under parallel: fsdp .*set loss: full"):
        chunked_head(large, "chunked", sharded=True)
    with pytest.raises(ConfigError, match="loss: unknown mode 'fused'; allowed: auto, chunked, full"):
        chunked_head(large, "fused")


def test_other_model_types_keep_the_full_logits():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=CHUNKED_MIN_VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    assert chunked_head(model) is None
    with pytest.raises(ConfigError, match="model type 'gpt2' is not one whose logits are a plain linear head"):
        chunked_head(model, "chunked")


# -- the loop -------------------------------------------------------------------------------------


def _lines(path):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in read_metrics(path)]


def _close(a, b):
    """Equal structure; floats within 1e-5 relative."""
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    else:
        assert a == b


def test_loop_with_the_chunked_loss_trains_as_with_full_logits(masked_stores, tmp_path):
    """Two sources, loss masks, block attention, micro-batches of 3: the same losses, per source and held out."""
    phases = [{"name": "mix", "steps": 5, "uniform": {"gamma": 0.5}, "lr": {"peak": 3e-3}}]
    runs = {}
    for mode in ("full", "chunked"):
        cfg = tiny_config(masked_stores, tmp_path / mode, phases=phases, loss=mode, data={"micro_batch_size": 3},
                          eval={"interval": 2}, checkpoint={"interval": 0})
        train(cfg)
        runs[mode] = _lines(tmp_path / mode)
    full, chunked = runs["full"], runs["chunked"]
    assert [r["kind"] for r in full] == ["train", "train", "eval", "train", "train", "eval", "train", "eval"]
    assert all(set(r["train_loss"]) == {"generic", "target"} for r in full if r["kind"] == "train")
    assert len(full) == len(chunked)
    for a, b in zip(full, chunked):
        _close(a, b)
    assert full[-2]["loss"] < full[0]["loss"]  # it trained
    for mode in runs:  # the checkpoint records which path ran (a resume with the other one warns)
        states = sorted((tmp_path / mode).rglob("state.json"))
        assert states and all(json.loads(p.read_text())["execution"]["loss"] == mode for p in states)


def test_loop_config_names_the_loss_modes(stores, tmp_path):
    from replaytune.config import validate

    data = tiny_config(stores, tmp_path / "r").model_dump(mode="json")
    assert data["loss"] == "auto"
    data["loss"] = "fused"
    with pytest.raises(ConfigError, match="loss"):
        validate(data)


def test_ddp_with_the_chunked_loss_matches_one_process_with_full_logits(masked_stores, tmp_path):
    """Under DDP the head's gradient comes from the chunked loss, outside the model's forward:
    it must still be averaged over ranks (2 processes, gloo) like every other gradient."""
    from .test_distributed import _assert_close, _torchrun

    one = tiny_config(masked_stores, tmp_path / "one", loss="full")
    train(one)
    lines = _torchrun(one, tmp_path, tmp_path / "ddp", "--set", "data.micro_batch_size=3", "--set", "loss=chunked")
    _assert_close(lines, read_metrics(tmp_path / "one"))
    states = sorted((tmp_path / "ddp").rglob("state.json"))
    assert states and all(json.loads(p.read_text())["execution"]["loss"] == "chunked" for p in states)
