"""Pure parts of sweeps: grid expansion, run keys, prefix plan (the trie bound)."""


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replaytune.errors import ConfigError
from replaytune.study.sweep import common_prefix, expand_grid, plan


def chain(steps):
    """Prefix-hash chain of a list of per-step tokens (element k covers the first k steps)."""
    out, acc = ["init"], "init"
    for s in steps:
        acc = f"{acc}|{s}"
        out.append(acc)
    return out


def test_expand_grid_is_the_cartesian_product_first_key_slowest():
    base = {"name": "r", "phases": [{"lr": {"peak": 1}}, {"finetune": {"replay": 0}}]}
    runs = expand_grid(base, {"phases.1.finetune.replay": [0, 0.5], "phases.0.lr.peak": [1e-3, 3e-3, 1e-2]})
    assert len(runs) == 6
    assert [c["phases.1.finetune.replay"] for c, _ in runs] == [0, 0, 0, 0.5, 0.5, 0.5]
    assert runs[4][1]["phases"][0]["lr"]["peak"] == 3e-3 and runs[4][1]["phases"][1]["finetune"]["replay"] == 0.5
    assert base["phases"][1]["finetune"]["replay"] == 0  # base untouched
    assert expand_grid(base, {}) == [({}, base)]
    with pytest.raises(ConfigError, match="grid.x: expected a non-empty list"):
        expand_grid(base, {"x": []})


def test_common_prefix_on_chains():
    a, b = chain("aaaab"), chain("aaaac")
    assert common_prefix(a, b) == 4
    assert common_prefix(a, a) == 5
    assert common_prefix(chain("abc"), chain("abcdef")) == 3
    assert common_prefix(["x"], ["y"]) == -1


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(alphabet="ab", min_size=1, max_size=12), min_size=1, max_size=7))
def test_plan_computes_each_distinct_prefix_once(words):
    sigs = [chain(w) for w in words]
    branches = plan(sigs)
    computed = sum(len(w) - k for w, (_, k) in zip(words, branches))
    distinct_prefixes = {w[:i] for w in words for i in range(1, len(w) + 1)}
    assert computed == len(distinct_prefixes)  # the number of trie nodes: the least possible
    for i, (src, k) in enumerate(branches):
        if src is not None:
            assert src < i and words[src][:k] == words[i][:k]
            assert all(common_prefix(sigs[i], sigs[j]) <= k for j in range(i))


def test_plan_ignores_prefixes_too_short_to_be_worth_a_checkpoint():
    sigs = [chain("aaaaaaaaaa"), chain("aabbbbbbbb"), chain("aaaaaaaaab")]
    assert plan(sigs, min_shared=0.3) == [(None, 0), (None, 0), (0, 9)]  # 2 of 10 shared: not enough
    assert plan(sigs, min_shared=2) == [(None, 0), (0, 2), (0, 9)]


def test_a_sweep_whose_base_file_is_missing_names_it(tmp_path):
    from replaytune.errors import ConfigError
    from replaytune.study.sweep import load_sweep

    (tmp_path / "s.yaml").write_text("base: nope.yaml\ngrid: {}\n")
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        load_sweep(tmp_path / "s.yaml")
