"""``replaytune train``: runs a config, and bad input exits 2 with one line naming the field."""

from __future__ import annotations

import pytest

from .helpers import tiny_config
from replaytune import cli
from replaytune.config import dump_yaml
from replaytune.train import read_metrics


@pytest.fixture
def cfg_file(stores, tmp_path):
    cfg = tiny_config(stores, tmp_path / "default-out")
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_yaml(cfg))
    return path


def test_train_runs_with_overrides(cfg_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", str(cfg_file), "--out", str(out), "--set", "phases.0.steps=3", "--save-at", "2"])
    assert code == 0
    assert "tiny: 11 steps" in capsys.readouterr().out  # 3 pre-training + 8 fine-tuning steps
    assert (out / "record.json").is_file() and (out / "checkpoints/step-00000002").is_dir()
    assert max(r["step"] for r in read_metrics(out)) == 11
    assert cli.main(["train", str(cfg_file), "--out", str(out), "--resume"]) == 0  # finished: a no-op


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "phases.0.lr.schedule=bogus"], "field 'phases.0.lr.schedule': must be one of 'cosine', 'wsd', 'constant' or 'linear'"),
        (["--set", "model.preset=huge"], "field 'model.preset': unknown preset 'huge'; allowed: tiny, small, 150m, 300m, 600m"),
        (["--set", "phases.1.finetune.target=math"], "phases.1 (ft): source 'math' is not in data.sources; allowed: generic, target"),
        (["--set", "data.batch_size=0"], "field 'data.batch_size': Input should be greater than or equal to 1"),
        (["--set", "parallel=zero"], "field 'parallel': must be one of 'ddp' or 'fsdp'"),
        (["--init-from", "/nonexistent/step-00000004"], "checkpoint not found: /nonexistent/step-00000004"),
        (["--save-at", "x"], "--save-at 'x': expected comma-separated step numbers"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cfg_file, tmp_path, capsys, args, message):
    code = cli.main(["train", str(cfg_file), "--out", str(tmp_path / "bad"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("replaytune train: error: ")
    assert message in err


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--resume" in text and "--set KEY=VALUE" in text and "torchrun" in text


def test_report_to_tensorboard_logs_losses_mixture_and_config(stores, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from replaytune.cli import main
    from replaytune.train import read_metrics

    from .helpers import dump_config, tiny_config

    cfg_path = dump_config(tiny_config(stores, tmp_path / "run"), tmp_path / "cfg.json")
    assert main(["train", str(cfg_path), "--report-to", "tensorboard"]) == 0
    acc = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "eval/target", "eval/generic", "mix/generic"} <= tags
    evals = [m for m in read_metrics(tmp_path / "run") if m["kind"] == "eval"]
    logged = {e.step: e.value for e in acc.Scalars("eval/target")}
    assert logged == pytest.approx({m["step"]: m["eval"]["target"] for m in evals}, rel=1e-6)
    assert any(0.4 <= e.value <= 0.6 for e in acc.Scalars("mix/generic"))  # fine-tuning at rho = 0.5
    assert "config/text_summary" in acc.Tags()["tensors"]
