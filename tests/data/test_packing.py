"""Whole-example packing (packing: bfd): no example straddles a window, padding carries no loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

from replaytune.data.packing import best_fit_decreasing
from replaytune.data.prepare import prepare
from replaytune.data.sources import SourceSpec
from replaytune.data.window import IGNORE, windows
from replaytune.errors import ConfigError, DataError

L = 48


def _instructions(path, n=120, seed=3):
    rng = np.random.default_rng(seed)
    words = "the quick brown fox jumps over lazy dog replay model token data".split()
    rows = []
    for i in range(n):
        p = " ".join(words[int(k)] for k in rng.integers(0, len(words), int(rng.integers(2, 12))))
        c = " ".join(words[int(k)] for k in rng.integers(0, len(words), int(rng.integers(1, 25))))
        rows.append({"prompt": f"Q{i}: {p}?", "completion": " " + c})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def packed(tiny_tok, tmp_path):
    src = _instructions(tmp_path / "ins.jsonl")
    store, stats = prepare(SourceSpec(str(src), kind="instruction"), tiny_tok, tmp_path / "s", seq_len=L,
                           val_docs=10, progress=False)
    return store, stats


def _assert_whole(split):
    """Every example (a document; padding joins its bin's last one) lies inside one window [iL, iL + L)."""
    docs = np.asarray(split.docs)
    starts, ends = docs[:-1], docs[1:].copy()
    ends[-1] -= 1  # the boundary token after the last window
    assert np.array_equal(starts // L, (ends - 1) // L)
    assert (split.num_tokens - 1) % L == 0


def test_bfd_store_holds_whole_examples_and_padding_has_no_loss(packed, tiny_tok):
    store, stats = packed
    assert store.meta["settings"]["packing"] == "bfd" and store.meta["settings"]["seq_len"] == L
    pk = stats["packing"]
    for name in ("train", "val"):
        split = store.split(name)
        _assert_whole(split)
        assert split.num_sequences(L) == pk["bins"][name]
        mask = np.asarray(split.mask).astype(bool)
        tokens = np.asarray(split.tokens)
        # every masked-out token at a bin's tail is EOS padding; starts of examples never carry loss
        assert not mask[np.asarray(split.docs[:-1])].any()
        assert int(mask.sum()) == stats["loss_tokens"][name]
        # loss tokens per window (what the replay fraction counts) = the window's unmasked targets
        ids = np.arange(split.num_sequences(L))
        w = windows(split, ids, L, eos=store.eos_id)
        assert np.array_equal(split.units(L, "tokens"), (w.targets != IGNORE).sum(axis=1).astype(float))
        assert tokens[-1] == store.eos_id
    real = sum(stats["docs"].values())  # examples; non-pad tokens = their tokens
    assert real == 120
    total = stats["tokens"]["train"] + stats["tokens"]["val"]
    assert pk["fill"] == pytest.approx(1 - _pads(store) / total, abs=1e-6)


def _pads(store):
    n = 0
    for name in ("train", "val"):
        split = store.split(name)
        toks = np.asarray(split.tokens)
        for i in range(split.num_sequences(L)):  # trailing EOS run after the bin's last EOS, beyond one
            row = toks[i * L:(i + 1) * L]
            k = 0
            while k < L and row[L - 1 - k] == store.eos_id:
                k += 1
            n += k - 1  # the example's own EOS is not padding
        n += 1  # the boundary token
    return n


def test_same_seed_same_store_other_seed_other_bins(packed, tiny_tok, tmp_path):
    store, _ = packed
    src = tmp_path / "ins.jsonl"
    again, _ = prepare(SourceSpec(str(src), kind="instruction"), tiny_tok, tmp_path / "s2", seq_len=L, val_docs=10,
                       progress=False)
    other, _ = prepare(SourceSpec(str(src), kind="instruction"), tiny_tok, tmp_path / "s3", seq_len=L, val_docs=10,
                       seed=1, progress=False)
    assert np.array_equal(np.asarray(store.train.tokens), np.asarray(again.train.tokens))
    assert store.fingerprint == again.fingerprint != other.fingerprint


def test_a_bfd_store_refuses_another_seq_len(packed):
    store, _ = packed
    with pytest.raises(DataError, match=rf"packed \(bfd\) for seq_len {L}, not 64; rebuild it with `replaytune prepare --seq-len 64`"):
        store.train.num_sequences(64)


def test_long_examples_are_truncated_and_counted(tiny_tok, tmp_path):
    src = tmp_path / "long.jsonl"
    src.write_text(json.dumps({"prompt": "Q: the fox?", "completion": " the" * 200}) + "\n"
                   + json.dumps({"prompt": "Q: dog?", "completion": " dog"}) + "\n")
    store, stats = prepare(SourceSpec(str(src), kind="instruction"), tiny_tok, tmp_path / "s", seq_len=L,
                           val_docs=0, progress=False)
    assert stats["truncated"] == 1 and store.train.num_sequences(L) == 2
    _assert_whole(store.train)
    with pytest.raises(DataError, match="over --max-example-length 48"):
        prepare(SourceSpec(str(src), kind="instruction", strict=True), tiny_tok, tmp_path / "t", seq_len=L,
                val_docs=0, progress=False)


def test_bfd_refuses_text_and_needs_seq_len(tiny_tok, tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("hello world\n")
    with pytest.raises(ConfigError, match="text is packed wrapped"):
        prepare(str(txt), tiny_tok, tmp_path / "s", packing="bfd", seq_len=L, progress=False)
    ins = _instructions(tmp_path / "i.jsonl", n=5)
    with pytest.raises(ConfigError, match="--packing bfd needs --seq-len"):
        prepare(SourceSpec(str(ins), kind="instruction"), tiny_tok, tmp_path / "s", packing="bfd", progress=False)
    # without --seq-len a chat/instruction store is wrapped, as before (no packing settings)
    store, stats = prepare(SourceSpec(str(ins), kind="instruction"), tiny_tok, tmp_path / "w", val_docs=1, progress=False)
    assert "packing" not in store.meta["settings"] and stats["packing"] == {"mode": "wrapped"}


def test_best_fit_decreasing_fills_the_tightest_bin():
    bins = best_fit_decreasing([6, 5, 4, 3, 2], 10, np.random.default_rng(0))
    assert sorted(sorted(b) for b in bins) == [[0, 2], [1, 3, 4]]  # 6+4, 5+3+2


def test_prepare_command_packs_with_seq_len(tiny_tok_path, tmp_path, capsys):
    from replaytune.cli import main

    src = _instructions(tmp_path / "ins.jsonl", n=30)
    assert main(["prepare", str(src), "--kind", "instruction", "--tokenizer", tiny_tok_path, "--out", str(tmp_path / "s"),
                 "--seq-len", str(L), "--val-docs", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"packing bfd: whole examples in" in out and f"windows of {L} tokens" in out
