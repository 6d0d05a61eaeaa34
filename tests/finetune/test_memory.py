"""Memory that fits big models: a bf16 frozen base under LoRA, QLoRA (GPU only), clear refusals."""

from __future__ import annotations

import json

import pytest
import torch

from replaytune.config import ModelConfig
from replaytune.errors import ConfigError
from replaytune.finetune import load_config, run_finetune
from replaytune.model import build_model, frozen_dtype

from .conftest import base_values


def _bytes(model, *, trainable: bool) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad == trainable)


def test_lora_base_in_bf16_halves_frozen_memory_and_keeps_adapters_fp32(assets):
    spec = ModelConfig(pretrained=str(assets.model), lora={"r": 4})
    vocab = 500
    fp32 = build_model(spec, vocab_size=vocab, seq_len=32, precision="fp32")
    bf16 = build_model(spec, vocab_size=vocab, seq_len=32, precision="bf16")
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    frozen = {p.dtype for p in bf16.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in bf16.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    assert _bytes(bf16, trainable=False) * 2 == _bytes(fp32, trainable=False)
    assert _bytes(bf16, trainable=True) == _bytes(fp32, trainable=True) > 0


def test_full_finetuning_keeps_fp32_master_weights_even_when_asked_for_bf16(assets):
    spec = ModelConfig(pretrained=str(assets.model), weights_dtype="bf16")
    model = build_model(spec, vocab_size=500, seq_len=32, precision="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # AdamW updates fp32 copies


def test_frozen_dtype_rules(assets):
    lora = ModelConfig(pretrained=str(assets.model), lora={})
    assert frozen_dtype(lora, "bf16") == "bf16" and frozen_dtype(lora, "fp32") == "fp32"
    assert frozen_dtype(lora, "bf16", "fsdp") == "fp32"  # FSDP shards one dtype per group
    assert frozen_dtype(ModelConfig(pretrained=str(assets.model)), "bf16") == "fp32"
    with pytest.raises(ConfigError, match="needs bf16 compute"):
        frozen_dtype(lora.model_copy(update={"weights_dtype": "bf16"}), "fp32")
    with pytest.raises(ConfigError, match="fsdp"):
        frozen_dtype(lora.model_copy(update={"weights_dtype": "bf16"}), "bf16", "fsdp")
    with pytest.raises(ValueError, match="from-scratch"):
        ModelConfig(preset="tiny", weights_dtype="bf16")


def test_lora_with_bf16_base_trains_and_saves_a_usable_merged_model(assets, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = load_config(None, base_values(assets, tmp_path / "out", lora={"r": 4}, lr=1e-2, dtype="bf16", epochs=0.5))
    res = run_finetune(cfg, log=lambda s: None)
    run_cfg = (res.output / "run" / "config.yaml").read_text()
    assert "weights_dtype: auto" in run_cfg
    loss = res.report["loss"]["target"]
    assert loss["finetuned"] < loss["base"]  # it learned, through bf16 compute on a bf16 base
    merged = AutoModelForCausalLM.from_pretrained(str(res.output / "model"))
    ids = torch.arange(1, 30).reshape(1, -1)
    assert torch.isfinite(merged(ids).logits).all()
    assert json.loads((res.output / "model" / "config.json").read_text())["use_cache"] is True


def test_load_in_4bit_on_cpu_is_one_clear_error(assets, tmp_path):
    cfg = load_config(None, base_values(assets, tmp_path / "out", lora=True, load_in_4bit=True, dtype="bf16"))
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU.*drop --load-in-4bit"):
        run_finetune(cfg, log=lambda s: None)
    assert not (tmp_path / "out").exists()  # refused before any data was tokenized


def test_load_in_4bit_needs_lora(assets, tmp_path):
    with pytest.raises(ConfigError, match="add --lora"):
        load_config(None, base_values(assets, tmp_path / "out", load_in_4bit=True))


def _bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels)")
@pytest.mark.skipif(not _bitsandbytes(), reason="QLoRA needs bitsandbytes: pip install 'replaytune[qlora]'")
def test_qlora_on_gpu_trains_and_merges_into_bf16(assets, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = load_config(None, base_values(assets, tmp_path / "out", lora={"r": 4}, lr=1e-2, load_in_4bit=True,
                                        device="cuda", dtype="bf16", epochs=0.5))
    res = run_finetune(cfg, log=lambda s: None)
    loss = res.report["loss"]["target"]
    assert loss["finetuned"] < loss["base"]
    merged = AutoModelForCausalLM.from_pretrained(str(res.output / "model"))
    assert not any("lora" in k for k in merged.state_dict())
    assert (res.output / "adapter" / "adapter_config.json").is_file()
