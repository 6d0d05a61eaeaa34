"""One rule for relative paths in every config file: relative to the file's folder (config.resolve_path)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from replaytune import config as cfgmod
from replaytune.study.runs import load_study
from replaytune.study.sweep import load_sweep

RUN = {"model": {"preset": "tiny"}, "data": {"sources": {"generic": {"store": "stores/generic"}}},
       "phases": [{"steps": 4, "constant": "generic"}]}


def _tree(tmp_path: Path) -> Path:
    cfgdir = tmp_path / "configs"
    (cfgdir / "stores" / "generic").mkdir(parents=True)
    (cfgdir / "target.jsonl").write_text('{"text": "a"}\n')
    (cfgdir / "run.yaml").write_text(yaml.safe_dump(RUN))
    (cfgdir / "sweep.yaml").write_text(yaml.safe_dump({"base": "run.yaml", "grid": {"seed": [0, 1]}}))
    (cfgdir / "study.yaml").write_text(yaml.safe_dump({"target_store": "stores/generic", "generic_store": "stores/generic"}))
    (cfgdir / "finetune.yaml").write_text(yaml.safe_dump({"model": "org/hub-model", "target": "target.jsonl"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return cfgdir, elsewhere


def test_every_loader_reads_relative_paths_beside_the_file(tmp_path, monkeypatch):
    cfgdir, elsewhere = _tree(tmp_path)
    monkeypatch.chdir(elsewhere)  # not the config folder: a rule relative to the current folder would miss
    store = str(cfgdir / "stores" / "generic")
    assert cfgmod.load(cfgdir / "run.yaml").data.sources["generic"].store == store
    runs, _ = load_sweep(cfgdir / "sweep.yaml")
    assert [r.data.sources["generic"].store for r in runs] == [store, store]
    study = load_study(cfgdir / "study.yaml")
    assert (study.target_store, study.generic_store) == (store, store)
    from replaytune.finetune import load_config

    ft = load_config(cfgdir / "finetune.yaml", {"output": str(tmp_path / "out")})
    assert ft.target.path == str(cfgdir / "target.jsonl")
    assert ft.model == "org/hub-model"  # nothing of that name beside the file: a hub id stays as written


def test_resolve_path_rule(tmp_path):
    (tmp_path / "here.txt").write_text("x")
    assert cfgmod.resolve_path("here.txt", tmp_path) == str(tmp_path / "here.txt")
    assert cfgmod.resolve_path("/abs/path", tmp_path) == "/abs/path"
    assert cfgmod.resolve_path("org/name", tmp_path) == "org/name"
    assert os.path.isabs(cfgmod.resolve_path("~/x", tmp_path))
