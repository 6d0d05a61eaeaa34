"""Checkpoints: exact resume after SIGKILL, branching, refusal of foreign checkpoints, failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from .helpers import dump_config, python, strip_timing, subprocess_env, tiny_config
from replaytune import config
from replaytune.errors import DataError, ReplaytuneError
from replaytune.train import (
    CheckpointError,
    CheckpointMismatch,
    TrainingError,
    list_checkpoints,
    prefix_fingerprint,
    read_metrics,
    shared_prefix,
    train,
)
from replaytune.train.checkpoint import _load_weights

KILLABLE = """
import json, sys, time
import torch
torch.set_num_threads(1)
from replaytune import config
from replaytune.train import train
cfg = config.validate(json.loads(open(sys.argv[1]).read()))
train(cfg, callbacks=[lambda trainer: time.sleep(0.15)])  # slow enough to be killed mid-run
"""


def _override(cfg, *items):
    return config.validate(config.apply_overrides(cfg.model_dump(mode="json"), list(items)))


def _same_weights(a, b):
    wa, wb = _load_weights(a / "model" / "model.safetensors", "cpu"), _load_weights(b / "model" / "model.safetensors", "cpu")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _comparable(record):
    out = {k: v for k, v in record.items() if k not in ("wall_time_s", "train_time_s", "tokens_per_s", "config", "fingerprints")}
    return json.loads(json.dumps(out))


def test_resume_after_sigkill_is_bit_identical(reference, tmp_path):
    out = tmp_path / "killed"
    cfg = reference.cfg.model_copy(update={"out_dir": str(out)})
    script = tmp_path / "run.py"
    script.write_text(KILLABLE)
    proc = subprocess.Popen([python(), str(script), str(dump_config(cfg, tmp_path / "cfg.json"))], env=subprocess_env())
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and any(r["step"] >= 10 for r in read_metrics(metrics)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "record.json").exists()
    before = read_metrics(metrics)
    last_ckpt = list_checkpoints(out)[-1].step
    assert last_ckpt == 8 and max(r["step"] for r in before) > last_ckpt  # lines past the checkpoint exist
    (out / "checkpoints" / ".tmp-step-00000012").mkdir()  # as if killed while saving
    (out / "checkpoints" / ".tmp-step-00000012" / "model.safetensors").write_bytes(b"partial")

    record = train(cfg, resume=True)
    assert strip_timing(read_metrics(out)) == strip_timing(reference.metrics)
    assert _comparable(record) == _comparable(reference.record)
    assert _same_weights(out, reference.out)
    assert not (out / "checkpoints" / ".tmp-step-00000012").exists()


def test_branch_from_another_runs_checkpoint_is_bit_identical(stores, tmp_path):
    a = tiny_config(stores, tmp_path / "a", checkpoint={"interval": 4, "keep": 2, "save_at": [12]})
    b = _override(a, "phases.1.finetune.replay=0.75")  # fine-tuning differs, pre-training is shared
    assert shared_prefix(a, b) == 12
    assert prefix_fingerprint(a, 12) == prefix_fingerprint(b, 12)
    assert prefix_fingerprint(a, 13) != prefix_fingerprint(b, 13)
    train(a)
    assert [c.step for c in list_checkpoints(tmp_path / "a")] == [12, 16, 20]  # 12 pinned, last 2 kept
    alone = train(b, out_dir=tmp_path / "b_alone")
    branched = train(b, out_dir=tmp_path / "b_branch", init_from=tmp_path / "a/checkpoints/step-00000012")
    assert branched["steps"] == 12 + 16
    assert strip_timing(read_metrics(tmp_path / "b_branch")) == strip_timing(read_metrics(tmp_path / "b_alone"))
    assert _comparable(branched) == _comparable(alone)
    assert _same_weights(tmp_path / "b_branch", tmp_path / "b_alone")
    # branching after the runs diverged is refused, naming the first differing step
    with pytest.raises(CheckpointMismatch, match="differs from step 12"):
        train(b, out_dir=tmp_path / "b_late", init_from=tmp_path / "a/checkpoints/step-00000016")


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.overrides.hidden_size=48", "model.overrides.hidden_size is 32 in the checkpoint but 48 here"),
        ("optim.weight_decay=0.0", "optim.weight_decay is 0.1 in the checkpoint but 0.0 here"),
        ("phases.0.lr.peak=0.001", "the learning rate differs from step 0"),
        ("data.seed=7", "the batch differs from step 0"),
    ],
)
def test_mismatched_checkpoint_is_refused(reference, tmp_path, override, message):
    run = tmp_path / "run"
    shutil.copytree(reference.out, run)
    (run / "record.json").unlink()
    cfg = _override(reference.cfg, override, f"out_dir={run}")
    with pytest.raises(CheckpointMismatch, match=message):
        train(cfg, resume=True)


def test_store_change_is_named(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference.out, run)
    (run / "record.json").unlink()
    ckpt = list_checkpoints(run)[-1]
    state = json.loads((ckpt.path / "state.json").read_text())
    state["data"]["generic"] = "fp-old"
    (ckpt.path / "state.json").write_text(json.dumps(state))
    # the batches hash store fingerprints: forge the history too, as if made from another store
    hist = json.loads((ckpt.path / "history.json").read_text())
    hist["batch"][0] = "0" * 16
    (ckpt.path / "history.json").write_text(json.dumps(hist))
    state["prefix"] = "forged"
    (ckpt.path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointMismatch, match="source 'generic' store fingerprint is fp-old in the checkpoint"):
        train(reference.cfg.model_copy(update={"out_dir": str(run)}), resume=True)


def test_missing_checkpoint_and_resume_without_one(reference, tmp_path):
    with pytest.raises(DataError, match="checkpoint not found"):
        train(reference.cfg, out_dir=tmp_path / "x", init_from=tmp_path / "nope/checkpoints/step-00000004")
    # --resume where nothing was saved yet starts the run (what a sweep executor relies on)
    with pytest.warns(UserWarning, match="no checkpoint in .*absent; starting the run from step 0"):
        record = train(reference.cfg, out_dir=tmp_path / "absent", resume=True)
    assert strip_timing(read_metrics(tmp_path / "absent")) == strip_timing(reference.metrics)
    assert _comparable(record) == _comparable(reference.record)


def test_finished_run_and_reused_out_dir(reference):
    assert train(reference.cfg, resume=True) == json.loads((reference.out / "record.json").read_text())
    with pytest.raises(ReplaytuneError, match="already holds a run; continue it with --resume"):
        train(reference.cfg)


def test_failed_checkpoint_write_leaves_nothing(reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = reference.cfg.model_copy(update={"out_dir": str(out)})

    def break_disk(trainer):
        if trainer.step == 5:
            def full(*args, **kwargs):
                raise OSError(28, "No space left on device")

            monkeypatch.setattr(torch, "save", full)

    with pytest.raises(CheckpointError, match=r"checkpoint of step 8 .*\(OSError: No space left on device\); nothing of it "
                                              r"was kept; the checkpoint of step 4 is intact \(--resume continues from it\)$"):
        train(cfg, callbacks=[break_disk])
    assert [c.step for c in list_checkpoints(out)] == [4]
    assert sorted(os.listdir(out / "checkpoints")) == ["step-00000004"]
    monkeypatch.undo()
    record = train(cfg, resume=True)  # the intact checkpoint continues the run exactly
    assert strip_timing(read_metrics(out)) == strip_timing(reference.metrics)
    assert _comparable(record) == _comparable(reference.record)


def test_a_failed_first_checkpoint_does_not_claim_earlier_ones(reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = reference.cfg.model_copy(update={"out_dir": str(out)})

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out / "checkpoints" / ".tmp-step-00000004" / "rng-0.pt"))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError) as e:
        train(cfg)
    assert str(e.value) == (f"could not write the checkpoint of step 4 under {out / 'checkpoints'} (OSError: No space "
                            f"left on device); nothing of it was kept; there is no earlier checkpoint, so --resume "
                            f"starts the run again from step 0")
    assert list_checkpoints(out) == []


def test_nan_loss_stops_and_keeps_last_good_checkpoint(reference, tmp_path):
    out = tmp_path / "run"
    cfg = reference.cfg.model_copy(update={"out_dir": str(out)})

    def poison(trainer):
        if trainer.step == 5:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"diverged at update 6 .*loss is nan.*step-00000004"):
        train(cfg, callbacks=[poison])
    assert [c.step for c in list_checkpoints(out)] == [4]
    weights = _load_weights(out / "checkpoints/step-00000004/model.safetensors", "cpu")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert max(r["step"] for r in read_metrics(out)) == 5 and not (out / "record.json").exists()


def test_resume_with_another_micro_batch_warns_and_stays_close(reference, tmp_path):
    """Micro-batch size changes only float rounding: allowed, with a warning."""
    run = tmp_path / "run"
    shutil.copytree(reference.out, run)
    (run / "record.json").unlink()
    shutil.rmtree(run / "checkpoints/step-00000020")  # resume from step 16: 4 more updates
    cfg = _override(reference.cfg, "data.micro_batch_size=3", f"out_dir={run}")
    with pytest.warns(UserWarning, match="micro_batch_size was None when step-00000016 was saved and is 3 now"):
        record = train(cfg, resume=True)
    for name, loss in reference.record["final"]["eval"].items():
        assert record["final"]["eval"][name] == pytest.approx(loss, rel=1e-5)


def test_resume_before_any_checkpoint_starts_over(reference, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 9.9}\n{"kind": "tra')
    with pytest.warns(UserWarning, match="no checkpoint"):
        record = train(reference.cfg, out_dir=run, resume=True)
    assert strip_timing(read_metrics(run)) == strip_timing(reference.metrics)
    assert _comparable(record) == _comparable(reference.record)


def test_a_truncated_checkpoint_is_named_with_what_to_do(reference, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference.out, out)
    (out / "record.json").unlink()
    weights = list_checkpoints(out)[-1].path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable.*remove the folder"):
        train(reference.cfg.model_copy(update={"out_dir": str(out)}), resume=True)


def test_divergence_before_any_checkpoint_does_not_offer_resume(reference, tmp_path):
    def poison(trainer):
        if trainer.step == 2:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(float("nan"))

    with pytest.raises(TrainingError) as e:
        train(reference.cfg.model_copy(update={"out_dir": str(tmp_path / "run")}), callbacks=[poison])
    assert "rerun from the start" in str(e.value) and "--resume" not in str(e.value)
    assert "lower phases.0.lr.peak" in str(e.value)


def test_stop_at_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
    out = tmp_path / "run"
    cfg = reference.cfg.model_copy(update={"out_dir": str(out)})
    part = train(cfg, stop_at=7)
    assert part["stopped_at"] == 7 and not (out / "record.json").exists()
    assert set(part["final"]["eval"]) == {"generic", "target"}
    assert train(cfg, resume=True, stop_at=7)["stopped_at"] == 7  # already there: nothing trained
    record = train(cfg, resume=True)
    assert strip_timing(read_metrics(out)) != [] and _comparable(record) == _comparable(reference.record)
    assert _same_weights(out, reference.out)
