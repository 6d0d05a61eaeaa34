"""--report-to wandb / mlflow / trackio / tensorboard: what each tracker holds is read back
and compared with metrics.jsonl (same names, steps and values), on fresh, resumed and
branched runs."""

from __future__ import annotations

import glob
import json
import math
import struct
import sys
from pathlib import Path

import pytest

from replaytune import trackers
from replaytune.errors import ConfigError
from replaytune.train import read_metrics, train

from .helpers import tiny_config


def expected(lines: list[dict]) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} as metrics.jsonl has them (the mixture is checked on its own)."""
    out: dict[str, dict[int, float]] = {}

    def put(key, step, value):
        if value is not None:
            out.setdefault(key, {})[step] = value

    for m in lines:
        if m["kind"] == "train":
            put("train/lr", m["step"], m["lr"])
            put("train/loss", m["step"], m["loss"])
            for src, v in m["train_loss"].items():
                put(f"train_loss/{src}", m["step"], v)
        else:
            for src, v in m["eval"].items():
                put(f"eval/{src}", m["step"], v)
    return out


def assert_mixture(series: dict[int, float], lines: list[dict]) -> None:
    """mix/generic: 1 while pre-training on generic only, 0.5 while fine-tuning at rho = 0.5."""
    phase = {m["step"]: m["phase"] for m in lines if m["kind"] == "train"}
    assert sorted(series) == sorted(phase)
    for step, share in series.items():
        if phase[step] == "pre":
            assert share == 1.0
        else:
            assert 0.3 <= share <= 0.7, (step, share)


def _clear_env(monkeypatch, *names):
    for n in names:
        monkeypatch.delenv(n, raising=False)


# -- W&B offline files ----------------------------------------------------------------------


def read_wandb(path: Path):
    """The records of an offline run's .wandb file (W&B's LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            records.append(rec)
    return records


def _wandb_contents(path: str):
    records = read_wandb(path)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    series: dict[str, dict[int, float]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            for key, value in row.items():
                if not key.startswith("_"):
                    series.setdefault(key, {})[r.history.step.num] = value
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    return run, series, exits[-1] if exits else None


def wandb_run(out: Path, index: int = 0):
    """(run record, {metric: {step: value}}, exit code) of the index-th offline run under out/wandb.

    Runs in the order of their first logged step: folder names carry the start time to the
    second only, so a resumed run started within the same second may sort either way.
    """
    runs = [_wandb_contents(p) for p in glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))]
    runs.sort(key=lambda r: min((s for steps in r[1].values() for s in steps), default=0))
    return runs[index]


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    _clear_env(monkeypatch, "WANDB_PROJECT", "WANDB_NAME", "WANDB_RUN_ID", "WANDB_DIR", "WANDB_RESUME", "WANDB_ENTITY")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / sub))


@pytest.fixture
def mlflow_local(monkeypatch):
    pytest.importorskip("mlflow")
    _clear_env(monkeypatch, "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")


def mlflow_client(out: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


def mlflow_series(client, run_id: str, keys) -> dict[str, list[tuple[int, float]]]:
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


# -- the flag and the shared parts ------------------------------------------------------------


def test_report_to_flag_takes_several_trackers_on_every_command(capsys):
    from replaytune.cli import build_parser

    parser = build_parser()
    for cmd in (["train", "c.yaml"], ["finetune"], ["sweep", "s.yaml"], ["study"]):
        args = parser.parse_args(cmd + ["--report-to", "none,wandb, mlflow,trackio"])
        assert args.report_to == ["wandb", "mlflow", "trackio"]
        assert parser.parse_args(cmd + ["--report-to", "none"]).report_to == []
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(cmd + ["--report-to", "wandb,comet"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "unknown tracker 'comet'" in err and "none, tensorboard, wandb, mlflow, trackio" in err
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    assert "none|tensorboard|wandb|mlflow|trackio" in capsys.readouterr().out


def test_report_to_in_a_config_names_the_choices(stores, tmp_path):
    with pytest.raises(ConfigError, match=r"report_to\.0.*'tensorboard', 'wandb', 'mlflow' or 'trackio'"):
        tiny_config(stores, tmp_path / "run", report_to=["comet"])


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow", "trackio"])
def test_a_missing_tracker_package_names_its_extra(name, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=rf"^report_to {name} .*needs the {name} package, which is not installed: "
                                          rf"pip install 'replaytune\[{name}\]', or drop {name} from --report-to$"):
        trackers.open_trackers([name], tmp_path, name="run", config={})
    assert not (tmp_path / trackers.STATE).exists()


def test_scalars_names_values_and_mixture():
    s = trackers.Scalars()
    train = {"kind": "train", "step": 2, "lr": 1e-3, "loss": 2.0, "grad_norm": 0.5, "tokens_per_s": 10.0,
             "train_loss": {"a": 1.5, "b": None}, "tokens": {"a": 30, "b": 10}}
    assert s(train) == {"train/loss": 2.0, "train/lr": 1e-3, "train/grad_norm": 0.5, "train/tokens_per_s": 10.0,
                        "train_loss/a": 1.5, "mix/a": 0.75, "mix/b": 0.25}
    later = {**train, "step": 4, "loss": float("nan"), "tokens": {"a": 40, "b": 40}}  # +10 a, +30 b
    out = s(later)
    assert "train/loss" not in out and out["mix/a"] == 0.25 and out["mix/b"] == 0.75
    assert s({"kind": "eval", "step": 4, "eval": {"a": 3.0, "b": None}}) == {"eval/a": 3.0}
    assert trackers.flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}


# -- each tracker, read back ------------------------------------------------------------------


def test_mlflow_holds_the_metrics_and_the_config(stores, tmp_path, mlflow_local):
    out = tmp_path / "run"
    train(tiny_config(stores, out, report_to=["mlflow"]))
    lines = read_metrics(out)
    client = mlflow_client(out)
    experiment = client.get_experiment_by_name("replaytune")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert json.loads((out / trackers.STATE).read_text())["mlflow"] == run.info.run_id

    want = expected(lines)
    assert {"train/lr", "train_loss/generic", "train_loss/target", "eval/generic", "eval/target"} <= set(want)
    got = mlflow_series(client, run.info.run_id, [*want, "mix/generic"])
    for key, series in want.items():
        assert [s for s, _ in got[key]] == sorted(series), key  # every step once
        assert dict(got[key]) == pytest.approx(series, rel=1e-6), key
    assert_mixture(dict(got["mix/generic"]), lines)

    params = run.data.params
    assert params["name"] == "tiny" and params["data.seq_len"] == "16" and params["optim.beta2"] == "0.95"
    assert json.loads(params["phases"])[0]["name"] == "pre"


def test_wandb_offline_holds_the_metrics_and_the_config(stores, tmp_path, wandb_offline):
    out = tmp_path / "run"
    train(tiny_config(stores, out, report_to=["wandb"]))
    lines = read_metrics(out)
    run, got, exit_code = wandb_run(out)
    assert (run.project, run.display_name, exit_code) == ("replaytune", "tiny", 0)
    assert json.loads((out / trackers.STATE).read_text())["wandb"] == run.run_id
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["name"] == "tiny" and config["data"]["seq_len"] == 16 and config["phases"][1]["name"] == "ft"

    want = expected(lines)
    assert {"train/lr", "train_loss/generic", "train_loss/target", "eval/generic", "eval/target"} <= set(want)
    for key, series in want.items():
        assert got[key] == pytest.approx(series, rel=1e-6), key
    assert_mixture(got["mix/generic"], lines)
    assert set(got["train/tokens_per_s"]) == set(want["train/lr"])


def test_trackio_holds_the_metrics_and_the_config(stores, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    trackio = pytest.importorskip(
        "trackio", reason="trackio is an optional extra that make test does not install: pip install 'replaytune[trackio]'"
    )
    from trackio.sqlite_storage import SQLiteStorage

    if Path(trackio.utils.TRACKIO_DIR) != tmp_path / "trackio":
        pytest.skip("trackio was imported earlier with another TRACKIO_DIR")
    out = tmp_path / "run"
    train(tiny_config(stores, out, report_to=["trackio"]))
    lines = read_metrics(out)
    logs = SQLiteStorage.get_logs("replaytune", "tiny")
    got: dict[str, dict[int, float]] = {}
    for row in logs:
        for key, value in row.items():
            if "/" in key and isinstance(value, (int, float)) and math.isfinite(value):
                got.setdefault(key, {})[row["step"]] = value
    want = expected(lines)
    for key, series in want.items():
        assert got[key] == pytest.approx(series, rel=1e-6), key
    assert_mixture(got["mix/generic"], lines)
    config = SQLiteStorage.get_run_config("replaytune", "tiny")
    assert config["name"] == "tiny" and config["data"]["seq_len"] == 16


# -- resume and branch ------------------------------------------------------------------------


def test_a_resumed_run_continues_its_tracker_runs_without_duplicates(stores, tmp_path, mlflow_local, wandb_offline):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = tiny_config(stores, out, report_to=["mlflow", "wandb", "tensorboard"])

    def killed(trainer):  # after step 10 was logged; the last checkpoint is step 8
        if trainer.step == 10:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, callbacks=[killed])
    ids = json.loads((out / trackers.STATE).read_text())
    client = mlflow_client(out)
    assert client.get_run(ids["mlflow"]).info.status == "FAILED"
    assert max(s for s, _ in mlflow_series(client, ids["mlflow"], ["train/lr"])["train/lr"]) == 10
    assert wandb_run(out, 0)[2] == 1  # the W&B run's exit code says it failed

    train(cfg, resume=True)
    lines = read_metrics(out)
    want = expected(lines)
    assert json.loads((out / trackers.STATE).read_text()) == ids

    # MLflow: the same run, every step once, the values of metrics.jsonl
    experiment = client.get_experiment_by_name("replaytune")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [ids["mlflow"]]
    assert client.get_run(ids["mlflow"]).info.status == "FINISHED"
    got = mlflow_series(client, ids["mlflow"], want)
    for key, series in want.items():
        assert [s for s, _ in got[key]] == sorted(series), key
        assert dict(got[key]) == pytest.approx(series, rel=1e-6), key

    # W&B: the resumed process continues the same run id from the step after the checkpoint
    first, first_series, _ = wandb_run(out, 0)
    second, second_series, exit_code = wandb_run(out, 1)
    assert second.run_id == first.run_id == ids["wandb"] and exit_code == 0
    assert min(second_series["train/lr"]) == 9 and max(first_series["train/lr"]) == 10
    merged = {k: {**first_series.get(k, {}), **second_series.get(k, {})} for k in want}
    for key, series in want.items():
        assert merged[key] == pytest.approx(series, rel=1e-6), key

    # TensorBoard: the restart's purge step drops the stopped process's steps 9 and 10
    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    for key, series in want.items():
        events = acc.Scalars(key)
        assert [e.step for e in events] == sorted(series), key
        assert {e.step: e.value for e in events} == pytest.approx(series, rel=1e-5), key


def test_a_branched_run_logs_the_shared_steps_as_its_own(stores, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    parent = tiny_config(stores, tmp_path / "parent")
    train(parent, save_at=[12])
    child_data = parent.model_dump(mode="json")
    child_data.update(out_dir=str(tmp_path / "child"), name="child", report_to=["tensorboard"])
    child_data["phases"][1]["lr"]["peak"] = 2e-3  # differs after the switch at step 12
    from replaytune import config

    train(config.validate(child_data), init_from=tmp_path / "parent" / "checkpoints" / "step-00000012")
    lines = read_metrics(tmp_path / "child")
    acc = EventAccumulator(str(tmp_path / "child" / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    for key, series in expected(lines).items():
        assert {e.step: e.value for e in acc.Scalars(key)} == pytest.approx(series, rel=1e-5), key
    assert min(e.step for e in acc.Scalars("train/lr")) == 1  # the shared steps are there
    assert_mixture({e.step: e.value for e in acc.Scalars("mix/generic")}, lines)
