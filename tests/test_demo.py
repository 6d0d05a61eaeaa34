"""The demo's set-up: corpus discovery, user files, and the study it builds (training is
covered by tests/train; a full demo takes ~17 minutes and is measured in BENCHMARKS.md)."""

import pytest

from replaytune.train.plan import resolve_phase
from replaytune.study import demo
from replaytune.errors import DataError
from replaytune.study.runs import build_runs


def test_missing_user_corpus_names_the_flag(tmp_path):
    with pytest.raises(DataError, match="--generic nope.txt: no such file"):
        demo.find_corpora(tmp_path, "nope.txt", None)
    real = tmp_path / "g.txt"
    real.write_text("some generic text\n")
    with pytest.raises(DataError, match="--target missing.jsonl: no such file"):
        demo.find_corpora(tmp_path, str(real), ["missing.jsonl"])


def test_user_files_replace_the_defaults_in_order(tmp_path):
    g, a, b = tmp_path / "web.txt", tmp_path / "code.jsonl", tmp_path / "chat.jsonl"
    for p in (g, a, b):
        p.write_text("x\n")
    gpath, targets, lines = demo.find_corpora(tmp_path / "work", str(g), [str(a), str(b)])
    assert gpath == g and list(targets) == ["code", "chat"]  # the first gets the full study
    assert any("your files" in line for line in lines)


def test_demo_studies_keep_the_papers_regime(tmp_path):
    data = demo.DemoData(tmp_path / "tok", tmp_path / "generic", {"basque": tmp_path / "eu", "python": tmp_path / "py"})
    full = demo.demo_study(data, "basque", full=True)
    second = demo.demo_study(data, "python", full=False)
    assert full.midtrain is not None and full.reference is not None
    assert second.midtrain is None and second.seeds == demo.DEMO_SEEDS[:2]
    # unique target data is one batch, seen for tens of epochs, a small fraction of the run
    assert full.target_batches == 1 and full.finetune.epochs >= 16
    assert full.target_batches * full.midtrain.epochs / full.steps <= 0.1
    # both targets get a reference curve of their own baselines: >= 2 seeds at >= 4 amounts of target data
    for st in (full, second):
        assert st.reference.family == "baseline" and len(st.reference.seeds) >= 2
        assert len(st.reference.target_batches) >= 4 and st.target_batches in st.reference.target_batches
    runs = build_runs(full)
    ft_ref = {(lab["x"], lab["seed"]) for lab, _ in runs if lab["setting"] == "finetune" and lab["rho"] == 0.0}
    mt_ref = {(lab["x"], lab["seed"]) for lab, _ in runs if lab["setting"] == "midtrain" and lab["rho"] == 0.0}
    assert ft_ref >= {(x, s) for x in demo.REF_X for s in (0, 1)} and mt_ref >= {(x, s) for x in demo.REF_X for s in (0, 1)}
    assert {lab["rho"] for lab, _ in runs if lab["setting"] == "midtrain"} == {0.0, 0.25, 0.5, 0.75}
    assert {x for lab, _ in build_runs(second) for x in [lab["x"]] if lab.get("reference")} == set(demo.REF_X) - {1}


def test_quick_demo_studies_build_for_both_targets(tmp_path):
    data = demo.DemoData(tmp_path / "tok", tmp_path / "generic", {"basque": tmp_path / "eu", "python": tmp_path / "py"})
    for name, full in (("basque", True), ("python", False)):
        runs = build_runs(demo.demo_study(data, name, full=full, quick=True))
        assert runs and all(sum(resolve_phase(p)[1] for p in cfg.phases) == 96 for _, cfg in runs)
