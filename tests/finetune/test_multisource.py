"""Several sources on each side: weights within a side, loss-token shares, names, per-source forgetting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from .conftest import base_values
from replaytune import schedule
from replaytune.cli import build_parser
from replaytune.commands.finetune import flag_values
from replaytune.data.store import TokenStore
from replaytune.errors import ConfigError
from replaytune.finetune import load_config, plan_replay, run_finetune, sequence_units
from replaytune.finetune.config import source_names, split_weight
from replaytune.finetune.forgetting import side_loss
from replaytune.train import read_metrics
from replaytune.train.metrics import TIMING_KEYS


def _two_replay(assets, out, **overrides):
    """Text target; replay 0.5 split 0.7 / 0.3 between a text source and a chat source (seq 64: whole replies).

    Held-out documents are counts large enough for a few sequences of 64 on every source.
    """
    values = base_values(assets, out, model=str(assets.chat_model), seq_len=64, target={"path": str(assets.target), "val": 6},
                         replay=[{"path": str(assets.generic), "weight": 0.7, "val": 10},
                                 {"path": str(assets.chat), "weight": 0.3, "val": 8}])
    values.update(overrides)
    return load_config(None, values)


def _flags(*argv):
    return flag_values(build_parser().parse_args(["finetune", *argv]))


# ------------------------------------------------------------------------------------------
# Flags, config files, names
# ------------------------------------------------------------------------------------------


def test_weight_is_a_trailing_number_only(tmp_path):
    assert split_weight("web.jsonl:0.7") == ("web.jsonl", 0.7)
    assert split_weight("web.jsonl:2") == ("web.jsonl", 2.0)
    assert split_weight("web.jsonl:.5") == ("web.jsonl", 0.5)
    assert split_weight("web.jsonl:1e-1") == ("web.jsonl", 0.1)
    assert split_weight("web.jsonl") == ("web.jsonl", None)
    assert split_weight(r"C:\data\web.jsonl") == (r"C:\data\web.jsonl", None)  # a drive letter is no weight
    assert split_weight(r"C:\data\web.jsonl:0.3") == (r"C:\data\web.jsonl", 0.3)
    assert split_weight("org/dataset:main") == ("org/dataset:main", None)  # a hub id with a revision
    assert split_weight("org/dataset:main:0.25") == ("org/dataset:main", 0.25)
    with pytest.raises(ValueError, match="the weight after ':' must be a number > 0, got 'nan'"):
        split_weight("web.jsonl:nan")  # a data file's name, then not a plain number: a bad weight, not a path
    assert split_weight("web.jsonl:-1") == ("web.jsonl", -1.0)  # read as a weight, refused by the flag (below)
    odd = tmp_path / "shard:3"  # a file that exists under the whole string is a path
    odd.write_text("x")
    assert split_weight(str(odd)) == (str(odd), None)


def test_repeated_flags_give_several_sources_with_weights(assets):
    values = _flags("--model", "m", "--target", str(assets.target), "--replay", f"{assets.generic}:0.7",
                    "--replay", f"{assets.chat}:0.3", "--replay-val", "5")
    assert values["target"] == {"path": str(assets.target), "weight": None, "kind": None, "val": None}
    assert values["replay"] == [{"path": str(assets.generic), "weight": 0.7, "kind": None, "val": 5.0},
                                {"path": str(assets.chat), "weight": 0.3, "kind": None, "val": 5.0}]
    cfg = load_config(None, values)
    assert [(a.path, a.weight, a.val) for a in cfg.replay_sources] == [(str(assets.generic), 0.7, 5), (str(assets.chat), 0.3, 5)]
    assert list(source_names(cfg)) == ["target", "generic.generic", "generic.chat"]
    assert {n: side for n, (side, _) in source_names(cfg).items()} == {
        "target": "target", "generic.generic": "generic", "generic.chat": "generic"}
    # one flag is one source, as before: named by its side, its weight kept but irrelevant
    one = load_config(None, _flags("--model", "m", "--target", str(assets.target), "--replay", f"{assets.generic}:0.7"))
    assert one.replay.path == str(assets.generic) and list(source_names(one)) == ["target", "generic"]


@pytest.mark.parametrize("bad, says", [
    ("web.jsonl:0", r"'web\.jsonl:0': the weight after ':' must be > 0, got 0"),
    ("web.jsonl:-0.5", r"'web\.jsonl:-0\.5': the weight after ':' must be > 0, got -0\.5"),
])
def test_a_bad_weight_on_the_command_line_is_one_line_naming_the_flag(bad, says, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--replay", "ok.jsonl:1", "--replay", bad])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --replay:" in err
    assert __import__("re").search(says, err)


def test_config_file_lists_sources_relative_to_the_file(assets, tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("web.jsonl", "chat.jsonl"):
        (tmp_path / "data" / name).write_text(assets.generic.read_text())
    values = base_values(assets, tmp_path / "out")
    values["replay"] = [{"path": "data/web.jsonl", "weight": 3, "kind": "text"}, "data/chat.jsonl:1"]
    cfg_file = tmp_path / "ft.yaml"
    cfg_file.write_text(yaml.safe_dump(values))
    cfg = load_config(cfg_file, {})
    assert [(a.path, a.weight, a.kind) for a in cfg.replay_sources] == [
        (str(tmp_path / "data" / "web.jsonl"), 3.0, "text"), (str(tmp_path / "data" / "chat.jsonl"), 1.0, "auto")]
    # --replay-kind / --replay-val apply to every source of the file's list; --replay flags replace the list
    cfg = load_config(cfg_file, {"replay": {"kind": "text", "val": 7}})
    assert [(a.kind, a.val, a.weight) for a in cfg.replay_sources] == [("text", 7, 3.0), ("text", 7, 1.0)]
    cfg = load_config(cfg_file, {"replay": {"path": str(assets.generic)}})
    assert cfg.replay.path == str(assets.generic)
    # a list of one is that one source, exactly
    one = load_config(None, base_values(assets, tmp_path / "o", replay=[{"path": str(assets.generic), "val": 10}]))
    assert one.replay == load_config(None, base_values(assets, tmp_path / "o")).replay


def test_bad_source_lists_name_the_field_and_the_value(assets, tmp_path):
    def fails(match, **values):
        with pytest.raises(ConfigError, match=match):
            load_config(None, base_values(assets, tmp_path / "o", **values))

    fails(r"^finetune flags: field 'replay\.1\.weight': Input should be greater than 0$",
          replay=[{"path": "a.jsonl"}, {"path": "b.jsonl", "weight": -1}])
    fails(r"^finetune flags: field 'replay\.0\.weight': Input should be a finite number$",
          replay=[{"path": "a.jsonl", "weight": float("inf")}, {"path": "b.jsonl"}])
    fails(r"target: an empty list; give at least one source", target=[])
    fails(r"replay: two sources are named 'web'; give each its own name",
          replay=[{"path": "a.jsonl", "name": "web"}, {"path": "b.jsonl", "name": "web"}])
    fails(r"field 'target\.1\.name': String should match pattern",
          target=[{"path": "a.jsonl"}, {"path": "b.jsonl", "name": "a/b"}])
    # one source: the field as before
    fails(r"^finetune flags: field 'target\.kind': must be one of 'auto', 'text', 'chat' or 'instruction'$",
          target={"path": "a.jsonl", "kind": "bogus"})
    fails(r"^finetune flags: field 'replay\.weight': Input should be greater than 0$", replay={"path": "b.jsonl", "weight": 0})


def test_names_are_readable_unique_and_valid_as_folders(assets, tmp_path):
    cfg = load_config(None, base_values(assets, tmp_path / "o", target=[
        "data/a/train.jsonl", "data/b/train.jsonl", "shards/*.parquet", "HuggingFaceFW/fineweb-edu",
        r"C:\corpora\eu web.v2.txt", {"path": "x.jsonl", "name": "train-2"}, "**/*.jsonl"]))
    names = list(source_names(cfg))
    # a given name is kept; a repeated stem gets -2, -3 (skipping given names); a glob takes its folder's name
    assert names[:7] == ["target.train", "target.train-3", "target.shards", "target.fineweb-edu", "target.eu_web",
                         "target.train-2", "target.7"]
    assert names[-1] == "generic"
    for name in names:
        assert (tmp_path / "folders" / name).resolve().parent == (tmp_path / "folders").resolve()
        assert all(c.isalnum() or c in "._-" for c in name)


# ------------------------------------------------------------------------------------------
# The plan: shares, epochs, and one source per side as before
# ------------------------------------------------------------------------------------------


def test_schedule_splits_each_side_by_weight_and_counts_target_epochs_over_the_side():
    plan = schedule.finetune(10, 2, 0.5, target={"t1": 3, "t2": 1}, generic={"g1": 1, "g2": 1},
                             units={"t1": 32, "t2": 16, "g1": 32, "g2": 8})
    # shares 0.375, 0.125, 0.25, 0.25 of the loss tokens; sequence weights ~ share / units
    per = {"t1": 0.375 / 32, "t2": 0.125 / 16, "g1": 0.25 / 32, "g2": 0.25 / 8}
    assert plan.weights == pytest.approx({k: v / sum(per.values()) for k, v in per.items()})
    w_t = plan.weights["t1"] + plan.weights["t2"]
    assert plan.steps == math.ceil(10 * 2 / w_t)  # the target side's 10 batches drawn twice in all
    # rho = 0: the generic sources stay in the schedule at weight 0; no generic side at all: target only
    assert schedule.finetune(4, 1, 0.0, target={"a": 1, "b": 1}, generic={"g1": 1, "g2": 2}).weights == {
        "a": 0.5, "b": 0.5, "g1": 0.0, "g2": 0.0}
    assert schedule.finetune(4, 1, 0.0, generic={}).weights == {"target": 1.0}
    with pytest.raises(schedule.ScheduleError, match="needs a generic source"):
        schedule.finetune(4, 1, 0.5, generic={})
    with pytest.raises(schedule.ScheduleError, match="generic source 'g2': weight must be > 0"):
        schedule.finetune(4, 1, 0.5, generic={"g1": 1, "g2": 0})


@pytest.mark.parametrize("rho", [0.0, 0.25, 0.5, 0.875])
@pytest.mark.parametrize("units", [None, (32.0, 32.0), (9.6, 32.0), (32.0, 7.3)])
def test_one_source_per_side_is_the_pair_formula_to_the_last_bit(rho, units):
    pair = schedule.finetune(12.5, 3, rho, units=units)
    named = schedule.finetune(12.5, 3, rho, units=None if units is None else {"target": units[0], "generic": units[1]},
                              target={"target": 0.4}, generic={"generic": 7})
    assert named == pair
    # the closed form of one source per side: 1 - rho (equal units) or ((1 - rho) / m_t) / (... + rho / m_g)
    if rho == 0:
        want = {"target": 1.0, "generic": 0.0}
    elif units is None or units[0] == units[1]:
        want = {"target": 1.0 - rho, "generic": rho}
    else:
        a, b = (1.0 - rho) / units[0], rho / units[1]
        want = {"target": a / (a + b), "generic": b / (a + b)}
    assert pair.weights == {k: v / sum(want.values()) for k, v in want.items()}  # Schedule normalizes, bit for bit
    assert pair.steps == max(1, math.ceil(12.5 * 3 / want["target"] - 1e-9))


def test_realised_loss_token_shares_are_the_asked_ones(assets, tmp_path):
    """rho 0.5 split 0.7 / 0.3 over text and chat replay: realised shares within the whole-sequence rounding bound.

    The mixture draws whole sequences, and each source's count c_i stays within one sequence of
    its exact share w_i * B * steps (the deficit rule of data/mixture.py), checked exactly. So a
    source's loss tokens u_i differ from their exact value K * share_i (K: the exact total) by
    at most D_i = m_i (one sequence, m_i its mean loss tokens per sequence) plus what the r_i
    sequences of an unfinished epoch bring beyond r_i * m_i (at most r_i times the largest
    |units - m_i| of the source; whole epochs bring exactly n_i * m_i). Then
    |u_i / T - share_i| <= (D_i + share_i * sum_j D_j) / (K - sum_j D_j). A long plan (no
    training: --prepare-only) keeps that bound small, and it is asserted below 0.03.
    """
    cfg = _two_replay(assets, tmp_path / "out", epochs=40)
    res = run_finetune(cfg, prepare_only=True, log=lambda s: None)
    plan = res.summary["plan"]
    realised = plan["realised"]
    asked = {"target": 0.5, "generic.generic": 0.35, "generic.chat": 0.15}
    assert plan["shares"] == pytest.approx(asked) and plan["parts"] == pytest.approx({"target": 1.0, "generic.generic": 0.7, "generic.chat": 0.3})
    L, B, S = cfg.seq_len, cfg.batch_size, plan["steps"]
    stores = {name: TokenStore(tmp_path / "out" / "data" / name) for name in asked}
    assert plan["units_per_sequence"]["generic.chat"] < 0.5 * L  # masked prompts: fewer loss tokens per chat sequence
    D = {}
    for name, store in stores.items():
        c, n, m = realised["sequences"][name], plan["sequences"][name], plan["units_per_sequence"][name]
        assert abs(c - plan["weights"][name] * B * S) <= 1  # whole-sequence rounding, no more
        per = sequence_units(store, L, "tokens")
        D[name] = m + (c % n) * float(np.abs(per - m).max())
    total = sum(realised["tokens"].values())
    K = B * S / sum(asked[n] / plan["units_per_sequence"][n] for n in asked)  # loss tokens the exact weights draw
    assert abs(total - K) <= sum(D.values())
    for name, share in asked.items():
        bound = (D[name] + share * sum(D.values())) / (K - sum(D.values()))
        assert bound < 0.03
        assert realised["shares"][name] == pytest.approx(realised["tokens"][name] / total)
        assert abs(realised["shares"][name] - share) <= bound, (name, realised["shares"][name], share, bound)
    assert realised["replay_share"] == pytest.approx(realised["shares"]["generic.generic"] + realised["shares"]["generic.chat"])
    # target epochs count the whole target side (here one source: its own epochs)
    assert realised["target_epochs"] == pytest.approx(40, abs=B / plan["sequences"]["target"])


def test_target_epochs_are_the_whole_sides_and_split_by_weight(assets, tmp_path):
    """Two text targets weighted 3:1: the side is drawn E times in all; source i about E * part_i * N / N_i times."""
    cfg = load_config(None, base_values(assets, tmp_path / "out", epochs=6, target=[
        {"path": str(assets.target), "weight": 3}, {"path": str(assets.generic), "weight": 1, "val": 10}],
        replay=None, replay_fraction=0.0))
    plan = run_finetune(cfg, prepare_only=True, log=lambda s: None).summary["plan"]
    seqs, B = plan["sequences"], cfg.batch_size
    n_side = seqs["target.target"] + seqs["target.generic"]
    assert plan["steps"] == math.ceil(n_side * 6 / B)  # no replay: every slot is target data
    r = plan["realised"]
    assert r["target_epochs"] == pytest.approx(6, abs=B / n_side)
    for name, part in (("target.target", 0.75), ("target.generic", 0.25)):
        assert r["epochs"][name] == pytest.approx(6 * part * n_side / seqs[name], abs=1.0 / seqs[name])


def test_plan_replay_with_one_named_source_per_side_is_the_plain_plan(assets, tmp_path):
    res = run_finetune(_two_replay(assets, tmp_path / "out", epochs=1), prepare_only=True, log=lambda s: None)
    t, g = (TokenStore(tmp_path / "out" / "data" / n) for n in ("target", "generic.chat"))
    for rho in (0.0, 0.5):
        plain = plan_replay(t, g, replay_fraction=rho, epochs=3, seq_len=64, batch_size=4)
        named = plan_replay({"target": t}, {"generic": g}, replay_fraction=rho, epochs=3, seq_len=64, batch_size=4,
                            weights={"target": 5.0, "generic": 0.2})
        assert named.to_dict() == plain.to_dict() and named.schedule == plain.schedule
        assert "sides" not in plain.to_dict()
    assert res.summary["plan"]["steps_formula"].startswith(f"ceil({res.summary['plan']['sequences']['target']} x 1 /")


# ------------------------------------------------------------------------------------------
# Training runs
# ------------------------------------------------------------------------------------------


def test_forgetting_report_has_a_row_per_source_and_per_side(assets, tmp_path):
    cfg = _two_replay(assets, tmp_path / "out", epochs=1)
    res = run_finetune(cfg, log=lambda s: None)
    out, report = res.output, res.report
    names = ["target", "generic.generic", "generic.chat"]
    assert list(report["loss"]) == names
    assert all((out / "data" / n).is_dir() for n in names)  # out/data/<name>
    step0 = next(m["eval"] for m in read_metrics(out / "run") if m["kind"] == "eval" and m["step"] == 0)
    final = res.summary["final_eval"]
    for name in names:
        row = report["loss"][name]
        assert row["base"] == step0[name] and row["finetuned"] == final[name] and row["sequences"] >= 1
    assert report["loss"]["generic.chat"]["source"] == str(assets.chat)
    # each side: its sources' losses averaged with their weights within the side
    sides = report["sides"]
    assert sides["target"]["sources"] == ["target"] and sides["target"]["base"] == step0["target"]
    g = sides["generic"]
    assert g["sources"] == ["generic.generic", "generic.chat"]
    assert g["base"] == pytest.approx(0.7 * step0["generic.generic"] + 0.3 * step0["generic.chat"])
    assert g["finetuned"] == pytest.approx(0.7 * final["generic.generic"] + 0.3 * final["generic.chat"])
    assert report["forgetting"] == pytest.approx(g["change"])
    assert report["target_gain"] == pytest.approx(-report["loss"]["target"]["change"])
    md = (out / "forgetting.md").read_text()
    for name in names:
        assert f"| {name} (" in md
    assert "| generic (generic.generic, generic.chat) |" in md and f"{g['finetuned']:.4f}" in md
    # metrics: every source evaluated and trained on under its name
    train = [m for m in read_metrics(out / "run") if m["kind"] == "train"]
    assert set(train[0]["train_loss"]) == set(names)


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def test_one_source_per_side_runs_exactly_as_before(assets, tmp_path):
    """The plain single-source settings, a list of one, and `PATH:W` flags: same run config, same metrics."""
    runs = {
        "plain": base_values(assets, tmp_path / "plain", epochs=0.5),
        "lists": base_values(assets, tmp_path / "lists", epochs=0.5, target=[{"path": str(assets.target), "weight": 2}],
                             replay=[{"path": str(assets.generic), "val": 10, "weight": 0.3}]),
        "flags": {**base_values(assets, tmp_path / "flags", epochs=0.5),
                  "target": {"path": str(assets.target), "weight": 4.0}, "replay": {"path": str(assets.generic), "weight": 0.7, "val": 10}},
    }
    results = {k: run_finetune(load_config(None, v), log=lambda s: None) for k, v in runs.items()}
    texts = {}
    for key, res in results.items():
        text = (res.output / "run" / "config.yaml").read_text().replace(str(res.output), "OUT")
        texts[key] = text
        assert "generic:" in text and "target:" in text
        metrics = [_strip(m) for m in read_metrics(res.output / "run")]
        if key == "plain":
            reference = metrics
        assert metrics == reference, key
        assert res.report["loss"].keys() == {"target", "generic"} and "sides" not in res.report
        assert {k: v for k, v in res.summary["plan"].items()} == results["plain"].summary["plan"]
    assert texts["lists"] == texts["plain"] == texts["flags"]
    assert (results["plain"].output / "forgetting.md").read_text() == (results["lists"].output / "forgetting.md").read_text()


def test_replay_fraction_auto_with_two_replay_sources(assets, tmp_path):
    cfg = load_config(None, base_values(
        assets, tmp_path / "out", replay_fraction="auto", replay_candidates=[0.0, 0.5], epochs=2, seq_len=32,
        replay=[{"path": str(assets.generic), "weight": 0.6, "val": 10}, {"path": str(assets.instruction), "weight": 0.4, "val": 6}]))
    res = run_finetune(cfg, log=lambda s: None)
    search = json.loads((res.output / "replay_search.json").read_text())
    assert [c["rho"] for c in search["candidates"]] == [0.0, 0.5]
    assert res.summary["plan"]["replay_fraction"] == search["chosen_rho"]
    # the search judges each side by its weighted loss: the chosen run's final losses give its numbers
    chosen = next(c for c in search["candidates"] if c["rho"] == search["chosen_rho"] and c["eliminated_at"] is None)
    final = res.summary["final_eval"]
    assert chosen["target_loss"] == pytest.approx(final["target"])
    assert chosen["generic_loss"] == pytest.approx(side_loss(final, {"generic.generic": 0.6, "generic.instruction": 0.4}))
    assert list(res.report["loss"]) == ["target", "generic.generic", "generic.instruction"]


def test_replay_dataset_from_stores_takes_several_sources(assets, tmp_path):
    from replaytune.finetune.run import build_run_config
    from replaytune.finetune.hf import ReplayDataset
    from replaytune.train.plan import RunPlan

    cfg = _two_replay(assets, tmp_path / "out", epochs=2)
    res = run_finetune(cfg, prepare_only=True, log=lambda s: None)
    data = tmp_path / "out" / "data"
    ds = ReplayDataset.from_stores(data / "target", {"generic.generic": data / "generic.generic", "generic.chat": data / "generic.chat"},
                                   replay_fraction=0.5, epochs=2, seq_len=64, batch_size=4, weights={"generic.generic": 7, "generic.chat": 3})
    assert ds.plan.weights == res.summary["plan"]["weights"] and ds.steps == res.summary["plan"]["steps"]
    # the same batches as the fine-tune's run
    stores = {n: TokenStore(data / n) for n in ds.plan.sides}
    run_cfg = build_run_config(cfg, ds.plan, {n: data / n for n in stores}, tmp_path / "run", None)
    assert ds.mixture.fingerprint() == RunPlan(run_cfg, stores).phases[0].mixture.fingerprint()
    assert {s for s, _ in ds.batch_items(0)} <= set(stores)


def test_a_large_replay_source_among_several_is_read_for_its_part(assets, tmp_path):
    from .test_replay_cap import _big_replay

    big = _big_replay(tmp_path / "web.jsonl", 6000)
    values = base_values(assets, tmp_path / "out", epochs=2,
                         target=[{"path": str(assets.target), "weight": 3}, {"path": str(assets.instruction), "weight": 1}],
                         replay=[{"path": str(big), "weight": 1, "val": 0.2}, {"path": str(assets.generic), "weight": 1, "val": 10}])
    res = run_finetune(load_config(None, values), prepare_only=True, log=lambda s: None)
    plan = res.summary["plan"]
    half = TokenStore(res.output / "data" / "generic.web").meta["stats"]
    assert half["complete"] is False  # read only as far as its half of the replay needs
    assert plan["realised"]["epochs"]["generic.web"] <= 1.0  # and that was enough: no sequence repeats
    # alone on the replay side it gets all of rho: it reads further
    values.update(output=str(tmp_path / "alone"), replay={"path": str(big), "val": 0.2})
    run_finetune(load_config(None, values), prepare_only=True, log=lambda s: None)
    alone = TokenStore(tmp_path / "alone" / "data" / "generic").meta["stats"]
    assert alone["documents_read"] > half["documents_read"]
