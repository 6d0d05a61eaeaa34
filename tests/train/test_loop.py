"""The loop: records and metrics format, per-source losses, phases, accumulation, LoRA."""

from __future__ import annotations

import json
import math

import pytest
import torch

from .helpers import TINY, UNIFORM_LOSS, VOCAB, tiny_config
from replaytune import config
from replaytune.data.store import TokenStore
from replaytune.schedule import lr_factor
from replaytune.train import RunPlan, open_stores, read_metrics, train
from replaytune.data.window import windows

TRAIN_KEYS = {"kind", "step", "phase", "phase_step", "lr", "loss", "grad_norm", "train_loss", "tokens", "epochs", "tokens_per_s", "elapsed_s"}
EVAL_KEYS = {"kind", "step", "phase", "phase_step", "eval", "epochs"}
RECORD_KEYS = {"name", "config", "fingerprints", "phases", "final", "tokens", "epochs", "steps", "wall_time_s", "train_time_s", "tokens_per_s"}


def test_record_fields(reference):
    rec = reference.record
    assert set(rec) == RECORD_KEYS
    assert json.loads((reference.out / "record.json").read_text()) == rec
    assert rec["steps"] == 12 + 8  # finetune: 1 target batch x 4 epochs / (1 - 0.5) = 8 steps
    assert [(p["name"], p["start_step"], p["steps"]) for p in rec["phases"]] == [("pre", 0, 12), ("ft", 12, 8)]
    assert rec["phases"][1]["schedule"]["setting"] == "finetune"
    assert rec["phases"][1]["lr"]["peak"] == 1e-3
    assert rec["fingerprints"]["config"] == reference.cfg.fingerprint()
    assert rec["fingerprints"]["data"] == {"generic": "fp-generic", "target": "fp-target"}
    assert len(rec["fingerprints"]["phases"]) == 2
    # generic: 12 steps x 8 + 8 steps x 4 (replay 0.5); target: 8 steps x 4; 16 tokens each
    assert rec["tokens"] == {"generic": (12 * 8 + 8 * 4) * 16, "target": 8 * 4 * 16}
    stores = open_stores(reference.cfg)
    for name, n_seq in (("generic", 12 * 8 + 8 * 4), ("target", 8 * 4)):
        assert rec["epochs"][name] == pytest.approx(n_seq / stores[name].train.num_sequences(16), abs=1e-12)
    assert set(rec["final"]["eval"]) == {"generic", "target"}
    assert rec["final"]["eval"] == reference.metrics[-1]["eval"]
    assert all(v is not None and math.isfinite(v) for v in rec["final"]["train_loss"].values())
    assert rec["wall_time_s"] > 0 and rec["tokens_per_s"] > 0
    assert config.load(reference.out / "config.yaml") == reference.cfg


def test_metrics_lines(reference):
    lines = reference.metrics
    train_lines = [r for r in lines if r["kind"] == "train"]
    evals = [r for r in lines if r["kind"] == "eval"]
    assert all(set(r) == TRAIN_KEYS for r in train_lines)
    assert all(set(r) == EVAL_KEYS for r in evals)
    assert [r["step"] for r in train_lines] == list(range(1, 21))
    assert [r["step"] for r in evals] == [5, 10, 12, 15, 20]  # every 5 steps + both phase ends
    by_step = {r["step"]: r for r in train_lines}
    assert (by_step[12]["phase"], by_step[12]["phase_step"]) == ("pre", 12)
    assert (by_step[13]["phase"], by_step[13]["phase_step"]) == ("ft", 1)
    for r in train_lines:  # the LR of the update that ended at this step
        phase = reference.cfg.phases[0 if r["phase"] == "pre" else 1]
        steps = 12 if r["phase"] == "pre" else 8
        lr = phase.lr
        expect = lr.peak * lr_factor(r["phase_step"] - 1, steps, kind=lr.schedule, warmup=lr.warmup, decay=lr.decay)
        assert r["lr"] == expect
    # pre-training has no target data: its train loss is null there, and present in fine-tuning
    assert all(r["train_loss"]["target"] is None for r in train_lines if r["phase"] == "pre")
    assert all(r["train_loss"]["target"] is not None for r in train_lines if r["phase"] == "ft")
    assert by_step[20]["tokens"] == reference.record["tokens"]
    # the step loss is the token-weighted mean of the per-source losses (16 tokens per sequence)
    plan = RunPlan(reference.cfg, open_stores(reference.cfg))
    for r in train_lines[12:]:
        counts = plan.phases[1].mixture.counts(r["phase_step"] - 1)
        mix = sum(r["train_loss"][s] * counts[s] for s in counts) / sum(counts.values())
        assert r["loss"] == pytest.approx(mix, rel=1e-12)


def test_final_model_loads_with_transformers(reference):
    from transformers import AutoModelForCausalLM

    from replaytune.train import latest_checkpoint
    from replaytune.train.checkpoint import _load_weights

    model = AutoModelForCausalLM.from_pretrained(reference.out / "model")
    assert model.config.vocab_size == VOCAB and not model.config.tie_word_embeddings
    last = latest_checkpoint(reference.out)
    assert last.step == 20
    saved = _load_weights(last.path / "model.safetensors", "cpu")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_learns_each_source(stores, tmp_path):
    """Mixed training: target (counting) ends far below generic (Markov), both below uniform."""
    cfg = tiny_config(
        stores, tmp_path / "run",
        phases=[{"name": "mix", "steps": 60, "uniform": {"gamma": 0.5}, "lr": {"peak": 1e-2, "warmup": 0.05}}],
        eval={"interval": 0, "sequences": 16, "at_start": True},
    )
    rec = train(cfg)
    evals = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 60]
    first, last = evals[0]["eval"], evals[-1]["eval"]
    assert first["generic"] == pytest.approx(UNIFORM_LOSS, abs=0.1) and first["target"] == pytest.approx(UNIFORM_LOSS, abs=0.1)
    assert last["target"] < last["generic"] < UNIFORM_LOSS - 0.5
    final_train = rec["final"]["train_loss"]
    assert final_train["target"] < final_train["generic"]


def _step_losses(path):
    return [r["loss"] for r in read_metrics(path) if r["kind"] == "train"]


@pytest.mark.parametrize("masked", [False, True])
def test_accumulation_equals_one_batch(request, tmp_path, masked):
    """micro_batch_size 3 (chunks 3+3+2) gives the losses of one 8-sequence batch."""
    stores = request.getfixturevalue("masked_stores" if masked else "stores")
    phases = [{"name": "mix", "steps": 6, "uniform": {"gamma": 0.5}, "lr": {"peak": 3e-3}}]
    whole = tiny_config(stores, tmp_path / "whole", phases=phases, eval={"interval": 0})
    parts = tiny_config(stores, tmp_path / "parts", phases=phases, eval={"interval": 0}, data={"micro_batch_size": 3})
    train(whole)
    train(parts)
    assert _step_losses(tmp_path / "parts") == pytest.approx(_step_losses(tmp_path / "whole"), rel=1e-5)


def test_loss_is_mean_over_global_target_tokens(masked_stores, tmp_path):
    """With loss masks, step 1's loss = sum of CE over all unmasked targets / their count."""
    from replaytune.model import build_model

    cfg = tiny_config(
        masked_stores, tmp_path / "run",
        phases=[{"name": "mix", "steps": 1, "uniform": {"gamma": 0.5}}],
        # full attention: the reference below runs the plain windows (block attention: tests/train/test_packing.py)
        data={"micro_batch_size": 3, "document_attention": "full"}, eval={"interval": 0},
    )
    train(cfg)
    logged = _step_losses(tmp_path / "run")[0]
    plan = RunPlan(cfg, open_stores(cfg))
    batch, src = plan.global_batch(0)
    model = build_model(cfg.model, vocab_size=VOCAB, seq_len=16)
    total, count = 0.0, 0
    for j, name in enumerate(plan.sources):
        sel = src == j
        w = windows(TokenStore(cfg.data.sources[name].store).train, batch.ids[sel], 16)
        x, y = w.inputs, w.targets
        with torch.no_grad():
            logits = model(input_ids=torch.from_numpy(x)).logits
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), torch.from_numpy(y).reshape(-1), ignore_index=-100, reduction="sum")
        total += float(ce)
        count += int((y != -100).sum())
    assert count < 8 * 16  # the masks really removed targets
    assert logged == pytest.approx(total / count, rel=1e-5)


def test_phase_reset_zeroes_optimizer_and_rewarms(stores, tmp_path, reference):
    def seen(run_cfg, out):
        steps = {}

        def record(trainer):
            states = trainer.optimizer.state.values()
            steps[trainer.step] = {int(st["step"]) for st in states}

        train(run_cfg, out_dir=out, callbacks=[record])
        return steps

    with_reset = seen(reference.cfg, tmp_path / "reset")
    assert with_reset[12] == {12} and with_reset[13] == {1} and with_reset[20] == {8}
    no_reset_cfg = config.validate(
        config.apply_overrides(reference.cfg.model_dump(mode="json"), ["phases.1.reset_optimizer=false"])
    )
    without = seen(no_reset_cfg, tmp_path / "noreset")
    assert without[13] == {13}
    lr = {r["step"]: r["lr"] for r in reference.metrics if r["kind"] == "train"}
    # pre: cosine to 0 over 12 steps; ft: warmup 0.25 x 8 = 2 steps, so 1e-3 x 1/2 then 1e-3
    assert lr[12] < 1e-4 and lr[13] == 1e-3 * 0.5 and lr[14] == 1e-3


def test_weight_decay_groups(reference):
    from replaytune.model import build_model
    from replaytune.train.optim import make_optimizer

    model = build_model(reference.cfg.model, vocab_size=VOCAB, seq_len=16)
    opt = make_optimizer(model, reference.cfg.optim)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "lm_head.weight" in names and "model.layers.0.mlp.up_proj.weight" in names
    assert not any("norm" in n or "embed_tokens" in n for n in names)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8


def test_lora_trains_adapters_only(stores, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from replaytune.model import build_model

    base_dir = tmp_path / "base"
    base = build_model(config.ModelConfig(preset="tiny", overrides=TINY), vocab_size=VOCAB, seq_len=16)
    base.save_pretrained(base_dir)
    cfg = tiny_config(
        stores, tmp_path / "run",
        model={"pretrained": str(base_dir), "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        phases=[{"name": "ft", "steps": 4, "uniform": {"gamma": 0.5}, "lr": {"peak": 1e-2}}],
        eval={"interval": 0},
    )
    train(cfg)
    assert (tmp_path / "run/model/adapter_config.json").is_file()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "run/model")
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)  # B starts at 0: it trained
    merged = tuned.merge_and_unload()
    fresh = AutoModelForCausalLM.from_pretrained(base_dir)
    same = {n for n, p in merged.named_parameters() if torch.equal(p, dict(fresh.named_parameters())[n])}
    assert "model.layers.0.mlp.up_proj.weight" in same and "model.layers.0.self_attn.q_proj.weight" not in same


def test_log_interval_averages_over_its_steps(reference, tmp_path):
    out = tmp_path / "run"
    cfg = config.validate(config.apply_overrides(reference.cfg.model_dump(mode="json"), ["log_interval=3", f"out_dir={out}"]))
    train(cfg)
    lines = [r for r in read_metrics(out) if r["kind"] == "train"]
    assert [r["step"] for r in lines] == [3, 6, 9, 12, 15, 18, 20]  # every 3 steps and both phase ends
    per_step = {r["step"]: r["loss"] for r in reference.metrics if r["kind"] == "train"}
    # every step trains on 8 x 16 unmasked targets, so the token-weighted mean is the plain mean
    assert lines[0]["loss"] == pytest.approx(sum(per_step[s] for s in (1, 2, 3)) / 3, rel=1e-12)
    assert lines[-1]["loss"] == pytest.approx((per_step[19] + per_step[20]) / 2, rel=1e-12)


def test_bf16_autocast_path_runs(stores, tmp_path):
    """The GPU precision path (bf16 autocast, fp32 weights) also runs on CPU, only slower."""
    cfg = tiny_config(stores, tmp_path / "run", dtype="bf16", phases=[{"name": "p", "steps": 2, "constant": "generic"}])
    with pytest.warns(UserWarning, match="bf16 on CPU"):
        rec = train(cfg)
    assert all(math.isfinite(v) for v in rec["final"]["eval"].values())
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run/model/model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())


def test_tensorboard_without_the_package_says_how_to_install(stores, tmp_path):
    try:
        import tensorboard
    except ImportError:
        tensorboard = None
    if tensorboard is None:
        cfg = tiny_config(stores, tmp_path / "run", tensorboard=True)
        with pytest.raises(config.ConfigError, match=r"pip install 'replaytune\[tensorboard\]'"):
            train(cfg)
    else:
        cfg = tiny_config(stores, tmp_path / "run", tensorboard=True, phases=[{"name": "p", "steps": 2, "constant": "generic"}])
        train(cfg)
        assert any((tmp_path / "run/tb").iterdir())


def test_phase_eval_interval_evaluates_densely_inside_that_phase(stores, tmp_path):
    from replaytune.train import read_metrics, train

    cfg = tiny_config(stores, tmp_path / "run", eval={"interval": 0, "sequences": 8, "batch_size": 8})
    cfg = config.validate(config.apply_overrides(cfg.model_dump(mode="json"), ["phases.1.eval_interval=2"]))
    train(cfg)
    steps = [m["step"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl") if m["kind"] == "eval"]
    assert steps == [12, 14, 16, 18, 20]  # phase end of pre-training, then every 2 fine-tuning steps


def test_phase_eval_at_adds_evaluations_around_the_switch(stores, tmp_path):
    from replaytune.train import read_metrics, train

    cfg = tiny_config(stores, tmp_path / "run", eval={"interval": 0, "sequences": 8, "batch_size": 8})
    sets = ["phases.0.eval_at=[9, 11]", "phases.1.eval_at=[1, 3, 99]"]  # 99: past the phase, ignored
    cfg = config.validate(config.apply_overrides(cfg.model_dump(mode="json"), sets))
    train(cfg)
    steps = [m["step"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl") if m["kind"] == "eval"]
    assert steps == [9, 11, 12, 13, 15, 20]  # pre-training ends at 12, fine-tuning at 20


def test_a_source_without_one_held_out_sequence_is_named(stores, tmp_path):
    from replaytune.train import train

    # the target's held-out split has 242 tokens (6 short documents): not one sequence of 320 + 1
    cfg = tiny_config(stores, tmp_path / "run", data={"seq_len": 320},
                      phases=[{"name": "pre", "steps": 2, "constant": "generic", "lr": {"peak": 1e-3}}])
    with pytest.warns(UserWarning, match="source 'target'.*242 tokens.*no held-out loss is recorded"):
        record = train(cfg)
    assert record["final"]["eval"].get("target") is None


def test_eval_split_reports_both_halves_whose_token_weighted_mean_is_the_whole(stores, tmp_path):
    from replaytune.train import open_stores
    from replaytune.train.evaluation import eval_set

    cfg = config.validate(config.apply_overrides(tiny_config(stores, tmp_path).model_dump(mode="json"),
                                                 ["eval.split=true", "eval.sequences=8"]))
    record = train(cfg)
    final = record["final"]["eval"]
    assert set(final) == {"generic", "target", "generic/val", "generic/test", "target/val", "target/test"}
    opened = open_stores(cfg)
    for name in ("generic", "target"):
        ids = eval_set(opened, cfg.data.seq_len, 8)[name]
        assert len(ids) == 8
        assert final[f"{name}/val"] != final[f"{name}/test"]
        lo, hi = sorted((final[f"{name}/val"], final[f"{name}/test"]))
        assert lo <= final[name] <= hi  # the whole is a token-weighted mean of its halves
