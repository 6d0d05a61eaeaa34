"""Ramp shapes, the solver, the phase specs that resolve to ramps, and `replaytune schedule ramp`."""


import pytest

from replaytune import ramp as R
from replaytune.config import PhaseConfig
from replaytune.schedule import ScheduleError
from replaytune.train.plan import resolve_phase


def test_presets_give_rho_at_points():
    assert R.shape_points("linear:0.75:0.25") == [(0.0, 0.75), (1.0, 0.25)]
    assert R.shape_points("upsample-end:0.2:0.9:0.5") == [(0.0, 0.9), (0.8, 0.9), (1.0, 0.5)]
    assert R.shape_points("follow-lr:0.8:0.2", lr_schedule="wsd", decay=0.25) == [(0.0, 0.8), (0.75, 0.8), (1.0, 0.2)]
    pts = R.shape_points("stepped:2:0.9:0.5", lr_schedule="wsd", decay=0.1)
    assert pts == [(0.0, 0.9), (0.3, 0.9), (0.3, 0.7), (0.6, 0.7), (0.6, 0.5), (1.0, 0.5)]
    cos = R.shape_points("follow-lr:1:0", lr_schedule="cosine")
    assert cos[0] == (0.0, 1.0) and cos[-1] == (1.0, 0.0) and len(cos) == 33
    assert R.shape_points([[0, 0.5], [0.5, 0.2], [1, 0.2]]) == [(0.0, 0.5), (0.5, 0.2), (1.0, 0.2)]


@pytest.mark.parametrize("shape, message", [
    ("wobble:1:2", "unknown preset 'wobble'"),
    ("linear:0.5", "write linear:A:B"),
    ("linear:0.5:x", "must be numbers"),
    ("linear:0.5:1.5", r"rho must be in \[0, 1\], got 1.5 at t = 1"),
    ("stepped:1.5:0.9:0.5", "whole number >= 1, got 1.5"),
    ("upsample-end:0:0.9:0.5", r"must be in \(0, 1\], got 0"),
    ([[0, 0.5], [0.6, 0.1], [0.4, 0.2], [1, 0]], "out of order: t = 0.4 after t = 0.6"),
    ([[0.1, 0.5], [1, 0.5]], "from t = 0 to t = 1"),
])
def test_bad_shapes_are_refused_with_one_line(shape, message):
    with pytest.raises(ScheduleError, match=message):
        R.shape_points(shape)


def test_finetune_ramp_in_loss_tokens_weights_sequences_by_share_over_units():
    # target sequences carry 64 loss tokens, generic 256: at rho = 0.5 a target sequence weighs 4x
    plan = R.finetune_ramp(1, 8, [(0, 0.5), (1, 0.5)], units={"target": 64.0, "generic": 256.0})
    w = plan.ramp.points[0][1]
    assert w[0] == pytest.approx(0.8) and w[1] == pytest.approx(0.2)
    assert plan.steps == 10  # 8 epochs / 0.8
    assert len(plan.ramp.points) == 17  # one segment cut in 16


def test_midtrain_ramp_refuses_a_shape_too_peaked_for_gamma():
    with pytest.raises(ScheduleError, match="target weight of 4 > 1"):
        R.midtrain_ramp(100, 0.5, R.shape_points("upsample-end:0.25:1:0"))


def test_phase_specs_resolve_to_ramps():
    mid = PhaseConfig(steps=1024, ramp={"gamma": 1 / 32, "shape": "follow-lr:1:0"}, lr={"schedule": "wsd", "decay": 0.1})
    ramp, steps, info = resolve_phase(mid)
    assert steps == 1024 and info["setting"] == "midtrain" and info["rho_points"] == [[0.0, 1.0], [0.9, 1.0], [1.0, 0.0]]
    assert ramp.weights_at(0)["target"] == 0.0
    assert ramp.mean_weights()["target"] == pytest.approx(1 / 32)
    ft = PhaseConfig(finetune={"target_steps": 2, "epochs": 16, "ramp": "linear:0.75:0.25"})
    ramp, steps, info = resolve_phase(ft)
    assert steps == 64 and info["setting"] == "finetune" and info["unit"] == "sequences"
    with pytest.raises(ValueError, match=r"give replay \(0.5\) or ramp"):
        PhaseConfig(finetune={"target_steps": 2, "epochs": 16, "replay": 0.5, "ramp": "linear:0.75:0.25"})
    with pytest.raises(ValueError, match="give exactly one of"):
        PhaseConfig(steps=10, uniform={"gamma": 0.1}, ramp={"gamma": 0.1, "shape": "linear:0:0"})


def test_schedule_command_prints_and_plots_a_ramp(tmp_path, capsys):
    from replaytune.cli import main

    out = tmp_path / "ramp.png"
    assert main(["schedule", "ramp", "--shape", "linear:0.75:0.25", "--target-steps", "1", "--epochs", "64",
                 "--plot", str(out)]) == 0
    text = capsys.readouterr().out
    assert "steps: 128" in text and "0.7500" in text
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["schedule", "ramp", "--shape", "linear:0.75:0.25", "--steps", "100"]) == 2
    assert "--target-fraction" in capsys.readouterr().err
