"""Schedules: validation at build time, the paper's constructors, durations, LR shapes, CLI contract."""

import json
import math

import pytest

from replaytune import schedule as sched
from replaytune.cli import main
from replaytune.schedule import Schedule, ScheduleError, Stage


def test_weights_are_normalized_and_every_stage_names_every_source():
    s = Schedule([Stage(0, {"a": 1, "b": 3}), Stage(10, {"c": 2})])
    assert s.sources == ("a", "b", "c")
    assert s.stages[0].weights == {"a": 0.25, "b": 0.75, "c": 0.0}
    assert s.stages[1].weights == {"a": 0.0, "b": 0.0, "c": 1.0}
    assert s.weights_at(9)["b"] == 0.75 and s.weights_at(10)["c"] == 1.0


@pytest.mark.parametrize(
    "stages, message",
    [
        ([], "at least one stage"),
        ([Stage(5, {"a": 1})], "stage 0 must start at step 0"),
        ([Stage(0, {"a": 1}), Stage(10, {"a": 1}), Stage(10, {"a": 1})], "stages out of order: stage 2"),
        ([Stage(0, {"a": 1}), Stage(20, {"a": 1}), Stage(10, {"a": 1})], "stages out of order"),
        ([Stage(0, {"a": -0.1, "b": 1})], "weight of source 'a' must be >= 0"),
        ([Stage(0, {"a": 0, "b": 0})], "weights are all zero"),
        ([Stage(0, {"a": float("nan")})], "weight of source 'a'"),
    ],
)
def test_impossible_schedules_are_refused_when_built(stages, message):
    with pytest.raises(ScheduleError, match=message):
        Schedule(stages)


def test_round_trip_through_dict():
    s = Schedule([Stage(0, {"t": 0.1, "g": 0.9}), Stage(7, {"t": 0.5, "g": 0.5})])
    assert Schedule.from_dict(json.loads(json.dumps(s.to_dict()))) == s


@pytest.mark.parametrize("m", [1, 1.125, 1.25, 1.5, 2, 3, 4])
def test_finetune_budget_grows_by_the_replay_multiplier(m):
    rho = 1 - 1 / m
    plan = sched.finetune(target_steps=16, epochs=64, replay=rho)
    assert plan.steps == round(16 * 64 * m)  # 1024 target steps x m
    w = plan.schedule.stages[0].weights
    assert w["target"] == pytest.approx(1 - rho) and w["generic"] == pytest.approx(rho)
    # the target data is still seen exactly 64 times over
    assert w["target"] * plan.steps == pytest.approx(16 * 64)


def test_finetune_rejects_rho_one_and_bad_sizes():
    with pytest.raises(ScheduleError, match=r"rho must be in \[0, 1\), got 1"):
        sched.finetune(1, 64, 1.0)
    with pytest.raises(ScheduleError, match="target_steps"):
        sched.finetune(0, 64, 0.5)
    with pytest.raises(ScheduleError, match="epochs"):
        sched.finetune(1, 0, 0.5)


@pytest.mark.parametrize("rho", [0, 0.25, 0.5, 0.75, 0.875])
@pytest.mark.parametrize("alpha", [1, 0.5, 0.25, 0.125])
def test_two_stage_relations_of_the_paper(rho, alpha):
    N, gamma = 1024, 32 / 1024  # one batch of target data x 32 epochs
    plan = sched.two_stage(N, gamma, rho, alpha)
    assert plan.delta == pytest.approx(gamma * alpha / (1 - rho))
    assert plan.switch_step == math.floor((1 - plan.delta) * N)
    assert plan.w2 == pytest.approx(1 - rho)
    assert plan.w1 * (1 - plan.delta) + plan.w2 * plan.delta == pytest.approx(gamma)
    st = plan.schedule.stages
    assert st[0].start_step == 0 and st[0].weights["target"] == pytest.approx(plan.w1)
    assert st[1].start_step == plan.switch_step and st[1].weights["target"] == pytest.approx(1 - rho)


def test_two_stage_example_numbers():
    plan = sched.two_stage(1024, 1 / 32, 0.5, 1)
    assert (plan.delta, plan.switch_step, plan.w1) == (0.0625, 960, 0.0)


@pytest.mark.parametrize(
    "args, message",
    [
        ((100, 0.6, 0.5, 1.0), "stage 2 would be longer than the run"),
        ((100, 0.1, 1.0, 1.0), "rho must be in"),
        ((100, 0.1, 0.5, 1.5), "alpha must be in"),
        ((100, 0.0, 0.5, 1.0), "gamma must be > 0"),
        ((0, 0.1, 0.5, 1.0), "steps must be a positive integer"),
    ],
)
def test_two_stage_refuses_impossible_inputs(args, message):
    with pytest.raises(ScheduleError, match=message):
        sched.two_stage(*args)


def test_uniform_and_constant():
    assert sched.uniform(0.125).stages[0].weights == {"target": 0.125, "generic": 0.875}
    assert sched.constant("generic").sources == ("generic",)


def test_finetune_with_unequal_units_counts_the_target_share_in_units():
    # chat target: 9.6 loss tokens per 32-token sequence; text replay: 32; rho = 0.5 of tokens
    plan = sched.finetune(100 / 8, 3, 0.5, units=(9.6, 32.0))
    w = plan.weights
    assert w["target"] == pytest.approx((0.5 / 9.6) / (0.5 / 9.6 + 0.5 / 32))
    assert w["target"] * 9.6 / (w["target"] * 9.6 + w["generic"] * 32) == pytest.approx(0.5)
    assert plan.steps == math.ceil(100 * 3 / (8 * w["target"]))  # the target still seen 3 times


def test_lr_shapes():
    f = lambda s, **kw: sched.lr_factor(s, 100, **kw)  # noqa: E731
    assert f(0) == 1.0 and f(1) == pytest.approx(1.0)  # 1 % of 100 steps = 1 warmup step
    assert f(0, warmup=0.1) == pytest.approx(0.1) and f(9, warmup=0.1) == pytest.approx(1.0)
    cos = [f(s, warmup=0.1) for s in range(100)]
    assert all(a >= b for a, b in zip(cos[9:], cos[10:])) and cos[-1] < 0.01
    wsd = [f(s, kind="wsd", warmup=0.0, decay=0.1) for s in range(100)]
    assert wsd[:90] == [1.0] * 90 and wsd[95] == pytest.approx(0.5) and wsd[-1] == pytest.approx(0.1)
    assert f(50, kind="constant") == 1.0
    with pytest.raises(ValueError, match="lr schedule"):
        f(0, kind="step")


def test_cli_json_contract(capsys):
    assert main(["schedule", "two-stage", "--steps", "1024", "--target-fraction", "0.03125", "--replay", "0.5",
                 "--stage2-allocation", "0.25", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["switch_step"] == math.floor((1 - out["delta"]) * 1024)
    assert [s["start_step"] for s in out["stages"]] == [0, out["switch_step"]]
    for s in out["stages"]:
        assert set(s["weights"]) == {"target", "generic"}
        assert s["weights"]["target"] + s["weights"]["generic"] == pytest.approx(1)
    assert main(["schedule", "finetune", "--target-steps", "4", "--epochs", "64", "--replay", "0.75", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 1024 and out["stages"][0]["weights"] == {"target": 0.25, "generic": 0.75}


def test_cli_impossible_schedule_is_one_line_exit_2(capsys):
    assert main(["schedule", "finetune", "--target-steps", "4", "--epochs", "64", "--replay", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rho" in err and "Traceback" not in err


def test_two_stage_warns_when_rounding_makes_the_target_share_far_from_gamma():
    with pytest.warns(UserWarning, match=r"Stage 2 rounds to 1 of 10 steps.*10.000% target data.*100x"):
        plan = sched.two_stage(10, 0.001, 0.0, 1.0)
    assert plan.realised_gamma == pytest.approx(0.1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the paper's setting is exact: no warning
        assert sched.two_stage(1024, 1 / 32, 0.5, 1.0).realised_gamma == pytest.approx(1 / 32)
