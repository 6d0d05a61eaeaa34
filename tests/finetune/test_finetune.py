"""End to end: a tiny Llama saved with save_pretrained, fine-tuned by path with replay, full and LoRA."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

from .conftest import base_values
from replaytune.cli import main
from replaytune.errors import ConfigError, ReplaytuneError
from replaytune.finetune import load_config, run_finetune
from replaytune.train import read_metrics


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_cli_text_replay_full_finetune(assets, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    code = main([
        "finetune", "--model", str(assets.model), "--target", str(assets.target), "--replay", str(assets.generic),
        "--replay-fraction", "0.5", "--replay-val", "10", "--epochs", "2", "--seq-len", "32", "--batch-size", "4",
        "--lr", "3e-3", "--eval-sequences", "8", "--eval-interval", "0", "--device", "cpu", "--no-progress",
        "--output", str(out),
    ])
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "finetune.json").read_text())
    plan = summary["plan"]
    n_t = plan["sequences"]["target"]
    # text on both sides: tokens and sequences agree, w_t = 1 - rho, steps = N_t x E / (B (1 - rho))
    assert plan["weights"] == {"target": 0.5, "generic": 0.5}
    assert plan["steps"] == math.ceil(n_t * 2 / (4 * 0.5)) == summary["run"]["steps"]
    assert plan["realised"]["target_epochs"] == pytest.approx(2.0, abs=4 / n_t)
    record = json.loads((out / "run" / "record.json").read_text())
    assert record["phases"][0]["lr"]["schedule"] == "cosine" and record["phases"][0]["lr"]["warmup"] == 0.01
    # the model: Hugging Face format, tokenizer beside it, loadable by path
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    assert len(tok) == model.config.vocab_size and model.config.use_cache is True
    base = AutoModelForCausalLM.from_pretrained(str(assets.model))
    ids = torch.tensor([tok("Etxe mendi ur itsaso.")["input_ids"]])
    assert not torch.allclose(_logits(model, ids), _logits(base, ids))
    # the forgetting report: base = the step-0 evaluation, fine-tuned = the final one
    report = json.loads((out / "forgetting.json").read_text())
    step0 = next(m["eval"] for m in read_metrics(out / "run") if m["kind"] == "eval" and m["step"] == 0)
    for name in ("target", "generic"):
        row = report["loss"][name]
        assert row["base"] == step0[name] and row["finetuned"] == record["final"]["eval"][name]
        assert row["change"] == pytest.approx(row["finetuned"] - row["base"])
        assert row["sequences"] >= 1 and row["loss_tokens"] == row["sequences"] * 32
    assert report["loss"]["target"]["change"] < 0  # it learned the target
    md = (out / "forgetting.md").read_text()
    assert "| held-out set |" in md and "# Forgetting report" in printed and f"{report['loss']['target']['finetuned']:.4f}" in md
    assert not (out / "run" / "checkpoints").exists()  # removed after success; the model is in model/
    card = (out / "model" / "README.md").read_text()  # a model card beside the weights
    assert "base_model" not in card.split("---")[1]  # a local path is no hub id: not named as base_model
    assert "replay fraction 0.5 of the batch's tokens" in card
    assert f"{report['loss']['target']['finetuned']:.4f}" in card and "AutoModelForCausalLM" in card


def test_baseline_rho_zero_still_measures_forgetting(finetune_cfg):
    res = run_finetune(finetune_cfg(replay_fraction=0.0), log=lambda s: None)
    plan = res.summary["plan"]
    assert plan["weights"] == {"target": 1.0, "generic": 0.0}
    assert plan["steps"] == math.ceil(plan["sequences"]["target"] / 4)
    assert plan["realised"]["replay_share"] == 0.0 and plan["realised"]["sequences"]["generic"] == 0
    assert res.report["loss"]["generic"]["finetuned"] is not None and res.report["forgetting"] is not None


def test_chat_target_with_text_replay_mixes_inside_batches(assets, finetune_cfg):
    res = run_finetune(finetune_cfg(model=str(assets.chat_model), target={"path": str(assets.chat)}, epochs=3, seq_len=64), log=lambda s: None)
    s = res.summary
    assert s["data"]["target"]["kind"] == "chat" and s["data"]["generic"]["kind"] == "text"
    plan = s["plan"]
    assert plan["units_per_sequence"]["target"] < 0.5 * 64 == 0.5 * plan["units_per_sequence"]["generic"]  # prompts carry no loss
    assert plan["weights"]["target"] > 0.5  # fewer loss tokens per chat sequence: more sequences for the same share
    assert abs(plan["realised"]["replay_share"] - 0.5) < 0.03
    # one batch held masked chat and unmasked text sequences, and both produced a training loss
    train_lines = [m for m in read_metrics(res.output / "run") if m["kind"] == "train"]
    both = [m for m in train_lines if m["train_loss"]["target"] is not None and m["train_loss"]["generic"] is not None]
    assert len(both) >= len(train_lines) // 2
    assert all(math.isfinite(v) for m in both for v in m["train_loss"].values())


def test_instruction_target_is_detected_and_masked(assets, finetune_cfg):
    res = run_finetune(finetune_cfg(target={"path": str(assets.instruction)}, replay_fraction=0.25, epochs=1), log=lambda s: None)
    assert res.summary["data"]["target"]["kind"] == "instruction"
    stats = res.summary["data"]["target"]["stats"]
    assert 0 < stats["loss_tokens"]["train"] < stats["tokens"]["train"]


def test_lora_merged_and_adapter_load_with_transformers_and_peft(assets, finetune_cfg):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    res = run_finetune(finetune_cfg(lora={"r": 4, "alpha": 8}, lr=1e-2), log=lambda s: None)
    out = res.output
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    merged = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(assets.model)), str(out / "adapter"))
    base = AutoModelForCausalLM.from_pretrained(str(assets.model))
    ids = torch.arange(1, 30).reshape(1, -1)
    assert torch.allclose(_logits(merged, ids), _logits(with_adapter, ids), atol=1e-5)
    assert not torch.allclose(_logits(merged, ids), _logits(base, ids), atol=1e-4)
    assert not any("lora" in k for k in merged.state_dict())
    # LoRA starts at B = 0: the step-0 evaluation is the base model's own held-out loss
    from replaytune.data.store import TokenStore
    from replaytune.train.distributed import Dist
    from replaytune.train.evaluation import eval_set, evaluate

    stores = {name: TokenStore(out / "data" / name) for name in ("target", "generic")}
    direct = evaluate(base, stores, eval_set(stores, 32, 8), seq_len=32, batch_size=8, dist=Dist(), precision="fp32")
    for name in stores:
        assert res.report["loss"][name]["base"] == pytest.approx(direct[name], rel=1e-5)


def test_lora_adapter_only(assets, finetune_cfg):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    res = run_finetune(finetune_cfg(lora=True, save="adapter", epochs=0.5), log=lambda s: None)
    assert not (res.output / "model").exists() and res.summary["outputs"] == {"adapter": str(res.output / "adapter")}
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(assets.model)), str(res.output / "adapter"))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


def test_config_file_with_flag_overrides(assets, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.jsonl").write_text(assets.target.read_text())
    cfg_file = tmp_path / "ft.yaml"
    values = base_values(assets, tmp_path / "out")
    values["target"] = "data/t.jsonl"  # relative to the file
    values["epochs"] = 1
    cfg_file.write_text(yaml.safe_dump(values))
    cfg = load_config(cfg_file, {"epochs": 2, "replay": {"val": 5}, "lora": None})
    assert cfg.epochs == 2 and cfg.target.path == str(tmp_path / "data" / "t.jsonl")
    assert cfg.replay.val == 5 and cfg.replay.path == str(assets.generic)  # merged into the file's entry
    assert load_config(cfg_file, {}).epochs == 1


def test_failed_run_is_not_complete_and_resumes_to_the_same_result(finetune_cfg, tmp_path, monkeypatch):
    from replaytune.finetune import run as finetune_run

    reference = run_finetune(finetune_cfg(output=str(tmp_path / "ref")), log=lambda s: None)
    cfg = finetune_cfg(output=str(tmp_path / "broken"), checkpoint_every=4)
    original = finetune_run.FinetuneTrainer._update

    def failing(self, s):
        if s == 9:
            raise RuntimeError("simulated crash at update 10")
        return original(self, s)

    monkeypatch.setattr(finetune_run.FinetuneTrainer, "_update", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_finetune(cfg, log=lambda s: None)
    out = tmp_path / "broken"
    assert not (out / "finetune.json").exists() and not (out / "model").exists() and not (out / "forgetting.json").exists()
    assert (out / "run" / "checkpoints" / "step-00000008").is_dir()
    monkeypatch.setattr(finetune_run.FinetuneTrainer, "_update", original)
    with pytest.raises(ReplaytuneError, match="--resume"):
        run_finetune(cfg, log=lambda s: None)
    resumed = run_finetune(cfg, resume=True, log=lambda s: None)
    assert resumed.summary["final_eval"] == reference.summary["final_eval"]  # bit-identical on CPU
    # finished: a second run into it is refused, --resume just reports
    with pytest.raises(ReplaytuneError, match="holds a finished fine-tune"):
        run_finetune(cfg, log=lambda s: None)
    again = run_finetune(cfg, resume=True, log=lambda s: None)
    assert again.report == resumed.report


def test_unchanged_sources_are_not_prepared_again(finetune_cfg, tmp_path):
    cfg = finetune_cfg(output=str(tmp_path / "o"), checkpoint_every=2)
    lines: list[str] = []
    run_finetune(cfg, log=lines.append)
    assert any("wrote" in ln for ln in lines)
    (tmp_path / "o" / "finetune.json").unlink()  # pretend it stopped after training
    lines.clear()
    run_finetune(cfg, resume=True, log=lines.append)
    assert sum("up to date" in ln for ln in lines) == 2 and not any("wrote" in ln for ln in lines)


def test_downstream_tasks_without_lm_eval_refuse_the_start(finetune_cfg, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError, installed or not
    with pytest.raises(ConfigError, match=r"^--eval-tasks xcopa_eu needs lm-evaluation-harness, which is not installed: "
                                          r"pip install 'replaytune\[eval\]', or drop --eval-tasks$"):
        run_finetune(finetune_cfg(eval_tasks=["xcopa_eu"], epochs=0.5), log=lambda s: None)
    assert not (tmp_path / "out").exists()  # refused before anything was tokenized or written


def test_activation_checkpointing_recomputes_and_changes_nothing(finetune_cfg, tmp_path, monkeypatch):
    import transformers.modeling_utils as mu

    plain = run_finetune(finetune_cfg(output=str(tmp_path / "a"), epochs=0.5), log=lambda s: None)
    calls = []
    real = mu.checkpoint
    monkeypatch.setattr(mu, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    ckpt = run_finetune(finetune_cfg(output=str(tmp_path / "b"), epochs=0.5, activation_checkpointing=True), log=lambda s: None)
    assert len(calls) >= 2 * plain.summary["run"]["steps"]  # 2 layers per forward, every micro-batch
    for name, value in plain.summary["final_eval"].items():
        assert ckpt.summary["final_eval"][name] == pytest.approx(value, rel=1e-6)


def test_kind_detection(assets, tmp_path):
    from replaytune.errors import DataError
    from replaytune.finetune import SourceArg, detect_kind

    assert detect_kind(SourceArg(path=str(assets.chat))) == "chat"
    assert detect_kind(SourceArg(path=str(assets.instruction))) == "instruction"
    assert detect_kind(SourceArg(path=str(assets.target))) == "text"
    assert detect_kind(SourceArg(path=str(assets.chat), kind="text")) == "text"  # given wins
    (tmp_path / "a.txt").write_text("Kaixo.\n")
    assert detect_kind(SourceArg(path=str(tmp_path / "a.txt"))) == "text"
    (tmp_path / "shards").mkdir()
    for i in range(2):
        (tmp_path / "shards" / f"part{i}.jsonl").write_text(assets.chat.read_text())
    assert detect_kind(SourceArg(path=str(tmp_path / "shards" / "*.jsonl"))) == "chat"
    assert detect_kind(SourceArg(path=str(tmp_path / "shards"))) == "chat"
    (tmp_path / "odd.jsonl").write_text('{"question": "x", "answer": "y"}\n')
    with pytest.raises(DataError, match=r"odd\.jsonl: cannot tell the kind .* \(answer, question\)"):
        detect_kind(SourceArg(path=str(tmp_path / "odd.jsonl")))


def test_transformers_flag_names_mean_the_same_settings(monkeypatch):
    from replaytune.cli import build_parser
    from replaytune.commands.finetune import flag_values
    from replaytune.errors import ConfigError

    ours = build_parser().parse_args([
        "finetune", "--model", "m", "--lr", "2e-5", "--epochs", "2", "--output", "o", "--warmup", "0.03",
        "--lr-schedule", "wsd", "--activation-checkpointing", "--seq-len", "512", "--micro-batch-size", "4",
        "--batch-size", "32"])
    theirs = build_parser().parse_args([
        "finetune", "--model_name_or_path", "m", "--learning_rate", "2e-5", "--num_train_epochs", "2",
        "--output_dir", "o", "--warmup_ratio", "0.03", "--lr_scheduler_type", "warmup_stable_decay",
        "--gradient_checkpointing", "--max_length", "512", "--per_device_train_batch_size", "4",
        "--gradient_accumulation_steps", "4"])
    monkeypatch.setenv("WORLD_SIZE", "2")  # 4 per device x 4 accumulation x 2 processes = 32
    assert flag_values(theirs) == flag_values(ours)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match="disagrees"):
        flag_values(build_parser().parse_args(["finetune", "--per_device_train_batch_size", "4",
                                               "--gradient_accumulation_steps", "2", "--batch-size", "16"]))


TRL_FLAGS = [  # a TRL sft.py command line (Transformers' and TRL's argument names)
    "--model_name_or_path", "m", "--learning_rate", "2e-4", "--num_train_epochs", "2", "--output_dir", "o",
    "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--gradient_checkpointing", "--max_length", "512",
    "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "8", "--report_to", "tensorboard",
    "--save_steps", "50", "--save_total_limit", "2", "--use_peft", "--lora_r", "8", "--lora_alpha", "16",
    "--lora_dropout", "0.05", "--lora_target_modules", "q_proj,v_proj", "--weight_decay", "0.0", "--run_name", "eu",
    "--eval_steps", "25", "--logging_steps", "10", "--attn_implementation", "eager", "--bf16"]
OURS = {"model": "m", "lr": 2e-4, "epochs": 2.0, "output": "o", "warmup": 0.03, "lr_schedule": "cosine",
        "activation_checkpointing": True, "seq_len": 512, "micro_batch_size": 2, "batch_size": 16,
        "report_to": ["tensorboard"], "checkpoint_every": 50, "save_total_limit": 2, "weight_decay": 0.0, "name": "eu",
        "eval_interval": 25, "log_interval": 10, "attn_implementation": "eager", "dtype": "bf16"}


def test_a_trl_command_line_and_the_same_keys_in_yaml_give_the_same_settings(tmp_path, monkeypatch):
    import yaml

    from replaytune.cli import build_parser
    from replaytune.commands.finetune import flag_values
    from replaytune.finetune import load_config

    monkeypatch.setenv("WORLD_SIZE", "1")
    target = ["--target", "eu.txt"]
    from_flags = load_config(None, flag_values(build_parser().parse_args(["finetune", *TRL_FLAGS, *target])))
    keys, it = {}, iter(TRL_FLAGS)
    for flag in it:  # the same settings as a YAML file with the same (HF) key names
        name = flag[2:]
        keys[name] = True if name in ("gradient_checkpointing", "use_peft", "bf16") else yaml.safe_load(next(it))
    keys["lora_target_modules"] = "q_proj,v_proj"
    (tmp_path / "trl.yaml").write_text(yaml.safe_dump({**keys, "target": "eu.txt"}))
    from_yaml = load_config(tmp_path / "trl.yaml")
    for cfg in (from_flags, from_yaml):
        got = cfg.model_dump(mode="json")
        assert {k: got[k] for k in OURS} == OURS
        assert cfg.lora.model_dump() == {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
    # the same setting under both names, with two values, is refused naming both
    (tmp_path / "two.yaml").write_text(yaml.safe_dump({"learning_rate": 1e-4, "lr": 2e-4, "target": "eu.txt"}))
    with pytest.raises(ConfigError, match=r"learning_rate \(0.0001\) and lr \(0.0002\) are the same setting"):
        load_config(tmp_path / "two.yaml")
    with pytest.raises(ConfigError, match="--bf16, --fp16 and --dtype disagree"):
        flag_values(build_parser().parse_args(["finetune", "--bf16", "--fp16"]))


def test_a_trl_style_command_line_runs(assets, tmp_path, monkeypatch):
    """Transformers' flags end to end: LoRA, accumulation, logging, checkpoint and tracker settings take effect."""
    monkeypatch.setenv("WORLD_SIZE", "1")
    out = tmp_path / "out"
    assert main(["finetune", "--model_name_or_path", str(assets.model), "--target", str(assets.target),
                 "--replay", str(assets.generic), "--replay-val", "10", "--learning_rate", "3e-3",
                 "--num_train_epochs", "1", "--max_length", "32", "--per_device_train_batch_size", "2",
                 "--gradient_accumulation_steps", "2", "--logging_steps", "2", "--save_steps", "2",
                 "--save_total_limit", "2", "--use_peft", "--lora_r", "4", "--eval_steps", "0", "--report_to", "none",
                 "--run_name", "trl", "--output_dir", str(out), "--eval-sequences", "8", "--device", "cpu",
                 "--no-progress"]) == 0
    run_cfg = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert run_cfg["data"]["seq_len"] == 32 and run_cfg["data"]["batch_size"] == 4 and run_cfg["model"]["lora"]["r"] == 4
    assert run_cfg["name"] == "trl" and run_cfg["log_interval"] == 2 and run_cfg["checkpoint"]["keep"] == 2
    train = [m for m in read_metrics(out / "run") if m["kind"] == "train"]
    steps = train[-1]["step"]
    assert [m["step"] for m in train] == sorted({*range(2, steps + 1, 2), steps})  # every 2 steps, and the end
    assert all(m["grad_norm"] is not None and m["grad_norm"] > 0 for m in train)
    kept = sorted(p.name for p in (out / "run" / "checkpoints").iterdir())  # the last 2, kept after the run
    assert len(kept) == 2 and kept[-1].endswith(f"{steps:08d}")


def test_resume_from_checkpoint_means_resume_or_names_the_checkpoint_it_can_use(finetune_cfg, tmp_path):
    from replaytune.finetune.names import resume_requested

    out = tmp_path / "out"
    assert resume_requested(finetune_cfg(resume_from_checkpoint=True)) is True
    assert resume_requested(finetune_cfg(resume_from_checkpoint="true")) is True
    assert resume_requested(finetune_cfg()) is False
    assert "resume_from_checkpoint" not in finetune_cfg(resume_from_checkpoint=True).model_dump()  # not a setting
    with pytest.raises(ConfigError, match="continues from the latest checkpoint of its output"):
        resume_requested(finetune_cfg(resume_from_checkpoint=str(tmp_path / "elsewhere" / "checkpoint-10")))
    assert resume_requested(finetune_cfg(resume_from_checkpoint=str(out))) is True


def test_replay_fraction_auto_searches_then_finishes_the_choice(finetune_cfg, tmp_path, monkeypatch):
    from replaytune.finetune import run as frun
    from replaytune.finetune import run_finetune

    cfg = finetune_cfg(replay_fraction="auto", replay_candidates=[0.0, 0.5, 0.75], epochs=4, seq_len=16)
    res = run_finetune(cfg)
    out = res.output
    search = json.loads((out / "replay_search.json").read_text())
    assert set(search) >= {"chosen_rho", "chosen_lr", "candidates", "steps_computed", "steps_grid"}
    assert [c["rho"] for c in search["candidates"]] == [0.0, 0.5, 0.75]
    for c in search["candidates"]:
        assert set(c) >= {"rho", "lr", "target_loss", "generic_loss", "steps_run", "eliminated_at"}
    assert search["steps_computed"] < search["steps_grid"]
    chosen = [c for c in search["candidates"] if c["eliminated_at"] is None and c["steps_run"] == c["steps_full"]]
    best = min(chosen, key=lambda c: c["target_loss"])
    assert best["rho"] == search["chosen_rho"] == res.summary["plan"]["replay_fraction"]
    # the fine-tuned model is the chosen run's, finished; its final loss is the search's
    assert res.summary["final_eval"]["target"] == pytest.approx(best["target_loss"])
    assert (out / "model" / "config.json").is_file() and (out / "replay_search.md").is_file()
    assert (out / "replay_search.png").is_file() and res.summary["search"] == search

    # killed mid-search: the rerun ends with the same choice and the same files
    calls = {"n": 0}
    real = frun.FinetuneTrainer.run

    def dying(self):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("killed")
        return real(self)

    out2 = tmp_path / "killed"
    cfg2 = cfg.model_copy(update={"output": str(out2)})
    monkeypatch.setattr(frun.FinetuneTrainer, "run", dying)
    with pytest.raises(RuntimeError, match="killed"):
        run_finetune(cfg2)
    monkeypatch.setattr(frun.FinetuneTrainer, "run", real)
    again = run_finetune(cfg2, resume=True)
    strip = lambda d: {k: v for k, v in d.items()}  # noqa: E731
    assert strip(json.loads((out2 / "replay_search.json").read_text())) == strip(search)
    assert again.summary["final_eval"] == res.summary["final_eval"]


def test_a_second_finetune_on_one_output_is_refused_and_changes_nothing(finetune_cfg, tmp_path):
    """While one finetune holds --output (its lock), another is refused in one line naming the holder."""
    from replaytune.rundir import RunLock, RunLocked

    cfg = finetune_cfg()
    out = Path(cfg.output)
    with RunLock(out):  # stands for a live finetune on the same --output
        with pytest.raises(RunLocked, match=r"is in use by pid \d+ on host"):
            run_finetune(cfg, log=lambda text: None)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing tokenized, nothing written
    assert not out.exists()  # the holder made it and wrote nothing: its release removes it
    run_finetune(cfg, log=lambda text: None)  # free again: the same command runs
    assert (out / "finetune.json").is_file() and not (out / ".lock").exists()
