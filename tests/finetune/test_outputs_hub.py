"""Hub-grade outputs: from_pretrained(OUT), the card's hub metadata, the save dtype, a push to a stand-in hub."""

from __future__ import annotations

import torch
from huggingface_hub import HfApi, ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

from replaytune.errors import ConfigError
from replaytune.finetune import run_finetune
from replaytune.finetune.outputs import model_card, push

import pytest


def test_out_loads_directly_saved_in_bf16_and_pushed(finetune_cfg, monkeypatch):
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
                        or f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    res = run_finetune(finetune_cfg(save_dtype="bf16", push_to_hub=True, hub_model_id="me/tuned",
                                    hub_private_repo=True), log=lambda s: None)
    out = res.output
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.dtype == torch.bfloat16 and len(tok) == model.config.vocab_size
    assert res.summary["save_dtype"] == "bf16"
    merged = AutoModelForCausalLM.from_pretrained(str(out / "model"))  # the same files, hard-linked
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), merged.state_dict().values()))
    # the card: a local base model is not named as base_model; the body has the replay settings and forgetting
    card = ModelCard.load(str(out / "README.md"))
    assert card.data.base_model is None and card.data.library_name == "transformers"
    assert "replay fraction 0.5 of the batch's tokens" in card.text and "| held-out set |" in card.text
    # the push: one repository, OUT's top-level model files only
    assert calls[0] == ("create", "me/tuned", {"private": True, "exist_ok": True, "repo_type": "model"})
    upload = calls[1][1]
    assert upload["folder_path"] == str(out) and upload["repo_id"] == "me/tuned"
    files = set(upload["allow_patterns"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files
    assert all("/" not in f for f in files) and "finetune.json" not in files and "forgetting.json" not in files
    assert files == set(res.summary["top_level"]) and all((out / f).is_file() for f in files)


def test_card_names_hub_ids_only(finetune_cfg):
    res = run_finetune(finetune_cfg(), log=lambda s: None)  # save_dtype auto: the tiny base is fp32
    assert res.summary["save_dtype"] == "fp32"
    assert AutoModelForCausalLM.from_pretrained(str(res.output)).dtype == torch.float32
    summary = {**res.summary, "settings": {**res.summary["settings"], "model": "owner/base-model"}}
    summary["data"] = {**summary["data"], "generic": {**summary["data"]["generic"], "source": "owner/web-data"}}
    card = ModelCard(model_card(summary, res.report, "model"))
    assert card.data.base_model == "owner/base-model" and card.data.datasets == ["owner/web-data"]
    assert "peft" == ModelCard(model_card(summary, res.report, "adapter")).data.library_name


def test_adapter_only_loads_with_peft(finetune_cfg):
    from peft import AutoPeftModelForCausalLM

    res = run_finetune(finetune_cfg(lora=True, save="adapter"), log=lambda s: None)
    assert not (res.output / "model").exists() and (res.output / "adapter_config.json").is_file()
    model = AutoPeftModelForCausalLM.from_pretrained(str(res.output))
    assert model.peft_config["default"].r > 0


def test_push_needs_a_repository_id(finetune_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"push_to_hub needs hub_model_id OWNER/NAME \(--hub_model_id\)"):
        finetune_cfg(push_to_hub=True)
    with pytest.raises(ConfigError, match="--push_to_hub needs --hub_model_id OWNER/NAME"):
        push(tmp_path, None, private=False, files=[])


def test_hub_flags_on_the_command_line(assets, tmp_path):
    import argparse

    from replaytune.commands import finetune as cmd

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(["finetune", "--model", str(assets.model), "--target", str(assets.target),
                              "--save_dtype", "fp16", "--push_to_hub", "--hub_model_id", "me/x", "--hub_private_repo"])
    values = cmd.flag_values(args)
    assert {k: values[k] for k in ("save_dtype", "push_to_hub", "hub_model_id", "hub_private_repo")} == \
        {"save_dtype": "fp16", "push_to_hub": True, "hub_model_id": "me/x", "hub_private_repo": True}
