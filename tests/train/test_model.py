"""Presets, pretrained loading and the errors bad model settings get."""

from __future__ import annotations

import pytest
import torch

from .helpers import TINY, VOCAB, tiny_config
from replaytune import config
from replaytune.errors import ConfigError, DataError, ReplaytuneError
from replaytune.model import PRESETS, build_model, preset_config, train_flops_per_token
from replaytune.train import train

LLAMA3_VOCAB = 128256


def _meta_model(name, vocab):
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(preset_config(name, vocab))


@pytest.mark.parametrize(
    "name, hidden, mlp, layers, heads",
    [
        ("tiny", 128, 448, 4, 4),
        ("small", 192, 672, 4, 4),
        ("150m", 512, 1792, 6, 8),  # the paper's sizes from here on
        ("300m", 768, 2688, 12, 12),
        ("600m", 1024, 3584, 24, 16),
    ],
)
def test_preset_shapes(name, hidden, mlp, layers, heads):
    c = preset_config(name, LLAMA3_VOCAB)
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads) == (hidden, mlp, layers, heads)
    assert c.num_key_value_heads == heads and not c.tie_word_embeddings and c.vocab_size == LLAMA3_VOCAB
    n = sum(p.numel() for p in _meta_model(name, LLAMA3_VOCAB).parameters())
    # untied embeddings 2 V h; per layer q,k,v,o (4 h^2), SwiGLU (3 h m), two norms (2 h); final norm h
    assert n == 2 * LLAMA3_VOCAB * hidden + layers * (4 * hidden**2 + 3 * hidden * mlp + 2 * hidden) + hidden


def test_flops_count_matmul_parameters():
    c = preset_config("150m", LLAMA3_VOCAB)
    model = _meta_model("150m", LLAMA3_VOCAB)
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "embed_tokens" not in n)
    assert train_flops_per_token(c, 4096) == 6 * matmul + 12 * 6 * 512 * 4096


def test_unknown_preset_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"field 'model.preset': unknown preset 'huge'; allowed: tiny, small, 150m, 300m, 600m"):
        config.validate({"model": {"preset": "huge"}, "data": {"sources": {}}, "phases": [{"steps": 1, "constant": "a"}]})
    with pytest.raises(ConfigError, match="allowed: tiny, small"):
        preset_config("huge", 100)
    assert set(PRESETS) == set(config.PRESET_NAMES)


def test_init_is_deterministic_and_leaves_global_rng_alone():
    spec = config.ModelConfig(preset="tiny", overrides=TINY)
    state = torch.get_rng_state()
    a = build_model(spec, vocab_size=VOCAB, seq_len=16)
    assert torch.equal(state, torch.get_rng_state())
    b = build_model(spec, vocab_size=VOCAB, seq_len=16)
    c = build_model(spec.model_copy(update={"init_seed": 1}), vocab_size=VOCAB, seq_len=16)
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not torch.equal(pa["lm_head.weight"], pc["lm_head.weight"])


def test_missing_pretrained_path(stores, tmp_path):
    cfg = tiny_config(stores, tmp_path / "run", model={"pretrained": str(tmp_path / "no/such/model")})
    with pytest.raises(DataError, match="model.pretrained: no such directory"):
        train(cfg)


def test_unreachable_hub_id_is_one_clear_error():
    spec = config.ModelConfig(pretrained="nobody-xyz/no-such-model")
    with pytest.raises(ReplaytuneError, match="could not load 'nobody-xyz/no-such-model' as a hub id"):
        build_model(spec, vocab_size=VOCAB, seq_len=16)


def test_store_vocabulary_larger_than_model_is_refused(stores, tmp_path):
    small = build_model(config.ModelConfig(preset="tiny", overrides=TINY), vocab_size=32, seq_len=16)
    small.save_pretrained(tmp_path / "small")
    message = "vocabulary mismatch: the token stores use 64 token ids but the model's embedding has only 32 rows"
    with pytest.raises(DataError, match=message):
        train(tiny_config(stores, tmp_path / "a", model={"pretrained": str(tmp_path / "small")}))
    with pytest.raises(DataError, match=message):
        train(tiny_config(stores, tmp_path / "b", model={"preset": "tiny", "overrides": {**TINY, "vocab_size": 32}}))


def test_pretrained_folder_continues_from_its_weights(stores, tmp_path):
    base = build_model(config.ModelConfig(preset="tiny", overrides=TINY, init_seed=5), vocab_size=VOCAB, seq_len=16)
    base.save_pretrained(tmp_path / "base")
    loaded = build_model(config.ModelConfig(pretrained=str(tmp_path / "base")), vocab_size=VOCAB, seq_len=16)
    ref = dict(base.named_parameters())
    assert all(torch.equal(p, ref[n]) for n, p in loaded.named_parameters())
    assert loaded.config._attn_implementation == "sdpa"


def test_a_pretrained_model_trains_in_training_mode(tmp_path):
    """from_pretrained returns eval mode; the loop must switch dropout back on."""
    from replaytune.train.loop import Trainer

    seen = {}

    class Probe(Trainer):
        def build_model(self):
            model = super().build_model()
            model.eval()  # what from_pretrained hands back
            return model

    from .helpers import make_stores, tiny_config

    stores = make_stores(tmp_path / "stores")
    cfg = tiny_config(stores, tmp_path / "run", phases=[{"name": "pre", "steps": 2, "constant": "generic"}])
    trainer = Probe(cfg, out_dir=tmp_path / "run", callbacks=[lambda t: seen.setdefault("training", t.model.training)])
    trainer.run()
    assert seen["training"] is True


def test_a_missing_local_path_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    from replaytune.hub import looks_like_path as _looks_like_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert _looks_like_path("models/mine")  # its folder is here: a local path, missing
    assert _looks_like_path("./x") and _looks_like_path("a/b/c")
    assert not _looks_like_path("HuggingFaceTB/SmolLM2-135M") and not _looks_like_path("gpt2")
