"""The demo's set-up: corpus discovery, user files, and the study it builds (training is
covered by tests/train; a full demo takes ~15 minutes and is measured in BENCHMARKS.md)."""

import math

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


def test_demo_study_has_a_protocol_without_leaks_and_the_papers_midtraining_geometry(tmp_path):
    from replaytune.study.runs import midtrain_geometry

    data = demo.DemoData(tmp_path / "tok", tmp_path / "generic", {"basque": tmp_path / "eu", "python": tmp_path / "py"})
    full = demo.demo_study(data, "basque", full=True)
    second = demo.demo_study(data, "python", full=False)
    assert second.midtrain is None and second.seeds == demo.DEMO_SEEDS
    # unique target data is one batch, seen for tens of epochs, a small fraction of the run
    assert full.target_batches == 1 and full.finetune.epochs >= 16
    # choices on the validation half, reports from the test half, >= 512 held-out sequences
    assert full.eval.split and full.eval.sequences >= 512
    stage1 = build_runs(full)
    # the first sweep: fine-tuning and its references at every LR, the mid-training baseline at every peak LR
    mt1 = [lab for lab, _ in stage1 if lab["setting"] == "midtrain"]
    assert {(lab["rho"], lab["lr"]) for lab in mt1} == {(0.0, lr) for lr in demo.MT_LRS}
    assert {lab["seed"] for lab in mt1} == set(demo.DEMO_SEEDS)
    ft = [lab for lab, _ in stage1 if lab["setting"] == "finetune"]
    cells = {(lab["rho"], lab["x"]) for lab in ft}
    assert cells == {(r, 1) for r in demo.FT_REPLAY} | {(0.0, x) for x in demo.REF_X}
    for cell in cells:  # >= 2 LRs and >= 4 seeds for every arm and every reference point
        mine = [lab for lab in ft if (lab["rho"], lab["x"]) == cell]
        assert len({lab["lr"] for lab in mine}) >= 2 and len({lab["seed"] for lab in mine}) >= 4
    # the second sweep: every rho (0.875 included) and every reference point at the chosen peak LR, every seed
    stage2 = build_runs(full, midtrain_lr=1e-3)
    assert all(cfg.data.micro_batch_size is None for _, cfg in stage2)  # the whole batch in one pass
    split = build_runs(demo.demo_study(data, "basque", full=True, micro_batch_size=8), midtrain_lr=1e-3)
    assert [c.data.micro_batch_size for _, c in split] == [8] * len(split) and len(split) == len(stage2)
    mt2 = [lab for lab, _ in stage2 if lab["setting"] == "midtrain"]
    assert {lab["lr"] for lab in mt2} == {1e-3}
    assert {lab["rho"] for lab in mt2} == {0.0, 0.25, 0.5, 0.75, 0.875}
    assert all(len({lab["seed"] for lab in mt2 if lab["rho"] == r}) >= 4 for r in demo.MT_REPLAY)
    # Stage 2 in the paper's LR window at every rho
    mine = midtrain_geometry(full.steps, full.midtrain.epochs, demo.MT_REPLAY, full.midtrain.decay, 6)
    paper = midtrain_geometry(1024, 32, demo.MT_REPLAY, 0.1, 11)
    for a, b in zip(mine, paper):
        assert a["lr_at_switch"] == pytest.approx(b["lr_at_switch"], abs=0.02)
        assert a["stage2_at_peak"] == pytest.approx(b["stage2_at_peak"], abs=0.02)
    # a seed is one draw, shared by every arm and reference point: one shuffle, disjoint blocks per seed
    draws = {}
    for lab, cfg in stage2:
        src = cfg.data.sources["basque"]
        assert src.draw == 0
        draws.setdefault(lab["seed"], set()).add(src.first)
    assert all(len(firsts) == 1 for firsts in draws.values())
    firsts = sorted(f for v in draws.values() for f in v)
    block = max(int(round(x * full.batch_size)) for x in [1, *demo.REF_X])
    assert firsts == [s * block for s in range(len(demo.DEMO_SEEDS))]


def test_quick_demo_studies_build_for_both_targets(tmp_path):
    data = demo.DemoData(tmp_path / "tok", tmp_path / "generic", {"basque": tmp_path / "eu", "python": tmp_path / "py"})
    for name, full in (("basque", True), ("python", False)):
        runs = build_runs(demo.demo_study(data, name, full=full, quick=True))
        assert runs and all(sum(resolve_phase(p)[1] for p in cfg.phases) == 96 for _, cfg in runs)


def test_headline_prints_the_fingerprint_the_geometry_and_every_arm_with_its_paired_interval():
    from replaytune.study.runs import PAPER, analyse, midtrain_geometry

    rows = []
    shared = {0: 0.05, 1: -0.03, 2: 0.0, 3: 0.02}  # a seed's luck, shared by all its runs
    for s, e in shared.items():
        for x in (0.5, 1.0, 2.0):  # the baseline recipe, 0.3 nats per doubling; x = 1 is the baseline itself
            for lr, worse in ((3e-4, 0.0), (1e-3, 0.05)):
                loss = 5.0 - 0.3 * math.log2(x) + e + worse
                rows.append({"name": f"ft0_x{x:g}_lr{lr:g}_s{s}", "setting": "finetune", "rho": 0.0, "alpha": None,
                             "lr": lr, "x": x, "seed": s, "target_loss": loss, "target_val": loss + 0.01,
                             "generic_loss": 4.0, "reference": x != 1.0})
        for lr, worse in ((3e-4, 0.0), (1e-3, 0.05)):  # rho = 0.75: worth 2^(0.15 / 0.3) = 1.41x
            loss = 5.0 - 0.15 + e + worse
            rows.append({"name": f"ft75_lr{lr:g}_s{s}", "setting": "finetune", "rho": 0.75, "alpha": None, "lr": lr,
                         "x": 1.0, "seed": s, "target_loss": loss, "target_val": loss + 0.01, "generic_loss": 3.8})
    results = {"runs": rows, "meta": {"data_fingerprint": "0123456789ab", "held_out": "test half"},
               **analyse(rows, "baseline", level=0.9),
               "midtrain_geometry": midtrain_geometry(512, 16, [0.0, 0.75], 0.1, 6),
               "midtrain_geometry_paper": midtrain_geometry(1024, 32, PAPER["midtrain"]["replay"], 0.1, 11)}
    c = results["efficiency"]["comparisons"]["finetune_replay"]
    assert c["multiplier"] == pytest.approx(2 ** 0.5) and c["interval"] == pytest.approx([2 ** 0.5, 2 ** 0.5])
    assert c["paired"] and c["seeds"] == 4 and c["fit"] == "log-linear" and c["interpolated"]
    text = "\n".join(demo.headline(results))
    assert "data fingerprint 0123456789ab" in text
    assert "finetune (4 seeds" in text and "lr=0.0003" in text and "lr=0.001 " not in text  # the LR chosen on validation
    assert "rho=0.75  496  0.31  0.00    2.7" not in text and "rho=0.75   448  1.00  0.22    9.8  |   896  1.00  0.21   19.4" in text
    assert "fine-tuning replay   1.41x [1.41, 1.41]; between the measured points 1.41x" in text
    assert "best of 1 arms, chosen on validation; log-linear fit, 0.300 nats per doubling" in text
    assert demo.FAMILY in text and "paired seed jackknife" in text and "4 seeds, paired" in text
