"""`replaytune batches`: each step's batch, computed from the step, equals what training uses."""

from __future__ import annotations

import json

import numpy as np

from .helpers import dump_config, tiny_config
from replaytune.cli import main
from replaytune.train import RunPlan, open_stores


def test_batches_json_matches_the_run_plan(stores, tmp_path, capsys):
    cfg = tiny_config(stores, tmp_path / "run")
    path = dump_config(cfg, tmp_path / "cfg.yaml")  # JSON is valid YAML
    assert main(["batches", str(path), "--start", "10", "--count", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["step"] for r in rows] == [10, 11, 12, 13]
    assert [r["phase"] for r in rows] == ["pre", "pre", "ft", "ft"]
    plan = RunPlan(cfg, open_stores(cfg))
    for r in rows:
        batch, src = plan.global_batch(r["step"])
        for name, info in r["sources"].items():
            sel = np.array([plan.sources[i] == name for i in src])
            assert info["count"] == int(sel.sum())
            assert info["ids"] == [int(i) for i in batch.ids[sel]]
    ft = rows[2]["sources"]
    assert ft["target"]["count"] == 4 and ft["generic"]["count"] == 4  # rho = 0.5 of a batch of 8
    assert ft["target"]["epoch"] == [0]


def test_batches_table_and_bad_start(stores, tmp_path, capsys):
    path = dump_config(tiny_config(stores, tmp_path / "run"), tmp_path / "cfg.yaml")
    assert main(["batches", str(path), "--count", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("step      0") and "generic:   8 seq" in out[0]
    assert main(["batches", str(path), "--start", "99"]) == 2
    assert "--start 99: the run has steps 0..19" in capsys.readouterr().err
