"""A capped read samples the whole source (seeded), not its first files."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy import stats as sstats

from replaytune.data.prepare import prepare
from replaytune.data.sources import SourceReader, SourceSpec

FILES, DOCS = 100, 40


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for f in range(FILES):  # sorted names: a head read would take files 000, 001, ... only
        rows = [{"text": f"file{f:03d} doc{d:02d} " + "word " * 12} for d in range(DOCS)]
        (root / f"{f:03d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _files_of(store, tok):
    text = tok.decode(np.asarray(store.train.tokens).tolist() + np.asarray(store.val.tokens).tolist())
    return [int(m) for m in re.findall(r"file(\d{3}) doc", text)]


def test_capped_read_draws_from_every_file_in_proportion(folder, tiny_tok, tmp_path):
    total = sum(s.train.num_tokens for s in [prepare(str(folder), tiny_tok, tmp_path / "full", progress=False)[0]])
    cap = total // 5  # about a fifth of the corpus
    store, st = prepare(str(folder), tiny_tok, tmp_path / "capped", max_tokens=cap, progress=False)
    assert st["complete"] is False and st["files_read"] == FILES
    assert store.meta["settings"]["sample"] == {"order": "sampled", "seed": 0, "open_files": 256, "shuffle_buffer": 10000}
    files = _files_of(store, tiny_tok)
    counts = np.bincount(files, minlength=FILES)
    assert len(files) == st["documents_read"] and (counts > 0).all()
    # equal files: documents per file uniform within sampling error (chi-square, 99 degrees of freedom)
    p = sstats.chisquare(counts).pvalue
    assert p > 0.001, (p, counts)
    # same settings, same store; another seed, another sample
    again, _ = prepare(str(folder), tiny_tok, tmp_path / "again", max_tokens=cap, progress=False)
    assert np.array_equal(np.asarray(again.train.tokens), np.asarray(store.train.tokens))
    assert again.fingerprint == store.fingerprint
    other, _ = prepare(str(folder), tiny_tok, tmp_path / "other", max_tokens=cap, seed=1, progress=False)
    assert other.fingerprint != store.fingerprint and _files_of(other, tiny_tok) != files


def test_a_larger_cap_starts_with_the_smaller_caps_documents(folder, tiny_tok, tmp_path):
    small, _ = prepare(str(folder), tiny_tok, tmp_path / "s", max_tokens=3000, progress=False, val_docs=0)
    large, _ = prepare(str(folder), tiny_tok, tmp_path / "l", max_tokens=9000, progress=False, val_docs=0)
    n = small.train.num_tokens
    assert np.array_equal(np.asarray(large.train.tokens)[:n], np.asarray(small.train.tokens))


def test_uncapped_read_keeps_sorted_order(folder):
    reader = SourceReader(SourceSpec(str(folder)))
    first = next(iter(reader.documents()))
    assert first.content.startswith("file000 doc00")


def test_capped_read_of_a_saved_dataset_is_a_seeded_permutation_of_its_rows(tiny_tok, tmp_path):
    import datasets

    rows = [f"row{i:03d} end " + "word " * 10 for i in range(400)]
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "ds"))
    store, st = prepare(str(tmp_path / "ds"), tiny_tok, tmp_path / "s", max_tokens=1500, val_docs=0, progress=False)
    text = tiny_tok.decode(np.asarray(store.train.tokens).tolist())
    got = [int(m) for m in re.findall(r"row(\d{3}) end", text)]
    assert st["complete"] is False and len(got) == st["documents_read"] < 400
    assert got != sorted(got) and max(got) > 300 and min(got) < 100  # drawn from the whole dataset, not its head
