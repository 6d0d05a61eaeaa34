"""`prepare`: exact token content, dtype, fingerprint skip/refusal, atomicity, validation split, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from replaytune.cli import main
from replaytune.data.prepare import prepare, split_key, verify_store
from replaytune.data.sources import SourceSpec
from replaytune.data.store import open_store
from replaytune.data.tokenizer import tokenizer_fingerprint
from replaytune.errors import ConfigError, DataError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DOCS = [f"document {i}: the quick brown fox {i * 13} jumps." for i in range(40)]


def jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def split_texts(tok, split):
    """Decode each document of a split (EOS stripped)."""
    out = []
    for a, b in zip(split.docs[:-1], split.docs[1:]):
        ids = np.asarray(split.tokens[a:b])
        assert ids[-1] == tok.eos_token_id
        out.append(tok.decode(ids[:-1].tolist()))
    return out


def no_leftovers(parent):
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


def test_tokens_are_documents_plus_eos(tmp_path, tiny_tok):
    src = jsonl(tmp_path / "a.jsonl", DOCS)
    store, stats = prepare(src, tiny_tok, tmp_path / "st", val_fraction=0.0, progress=False)
    expected = []
    for t in DOCS:
        expected += tiny_tok(t, add_special_tokens=False)["input_ids"] + [tiny_tok.eos_token_id]
    assert np.array_equal(np.asarray(store.train.tokens), np.asarray(expected))
    assert store.train.tokens.dtype == np.uint16 and store.dtype == np.uint16
    assert store.train.num_docs == 40 and store.val.num_docs == 0
    assert stats["docs"] == {"train": 40, "val": 0} and stats["tokens"] == {"train": len(expected), "val": 0}
    assert stats["up_to_date"] is False and stats["replaced_bytes"] == 0
    assert store.meta["stats"]["tokens"]["train"] == len(expected)
    assert store.vocab_size == 512 and store.eos_id == tiny_tok.eos_token_id
    assert store.tokenizer_fingerprint == tokenizer_fingerprint(tiny_tok) and not store.has_loss_mask
    assert store.tokenizer_path == tiny_tok.name_or_path


def test_tokenizer_given_by_path_and_progress_bar(tmp_path, tiny_tok_path, tiny_tok, capsys):
    src = jsonl(tmp_path / "a.jsonl", DOCS[:5])
    store, stats = prepare(str(src), tiny_tok_path, tmp_path / "st", val_docs=1, progress=True)
    assert stats["docs"] == {"train": 4, "val": 1}
    assert store.tokenizer_fingerprint == tokenizer_fingerprint(tiny_tok)


def test_uint32_when_vocabulary_exceeds_uint16(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(70000)}
    vocab.update({"<unk>": 70000, "<|endoftext|>": 70001})
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", unk_token="<unk>").save_pretrained(tmp_path / "big")
    src = jsonl(tmp_path / "a.jsonl", ["w69999 w5", "w65536 w0"])
    store, _ = prepare(src, str(tmp_path / "big"), tmp_path / "st", val_fraction=0.0, progress=False)
    assert store.dtype == np.uint32 and store.vocab_size == 70002
    assert store.train.tokens.tolist() == [69999, 5, 70001, 65536, 0, 70001]


def test_unchanged_source_is_up_to_date(tmp_path, tiny_tok):
    src = jsonl(tmp_path / "a.jsonl", DOCS)
    store, _ = prepare(src, tiny_tok, tmp_path / "st", progress=False)
    inode = os.stat(tmp_path / "st" / "meta.json").st_ino
    again, stats = prepare(src, tiny_tok, tmp_path / "st", progress=False)
    assert stats["up_to_date"] is True and stats["tokens"] == store.meta["stats"]["tokens"]
    assert os.stat(tmp_path / "st" / "meta.json").st_ino == inode  # not rewritten
    # another setting is another store: rebuilt, and the reason is given
    _, stats = prepare(src, tiny_tok, tmp_path / "st", val_docs=3, progress=False)
    assert stats["up_to_date"] is False
    assert stats["rebuilt_because"] == ["settings differ: val_docs None -> 3, val_fraction 0.01 -> None"]


def test_changed_source_is_refused_then_rebuilt(tmp_path, tiny_tok):
    d = tmp_path / "src"
    d.mkdir()
    jsonl(d / "a.jsonl", DOCS[:20])
    jsonl(d / "b.jsonl", DOCS[20:])
    store, _ = prepare(SourceSpec(str(d)), tiny_tok, tmp_path / "st", progress=False)
    verify_store(store, SourceSpec(str(d)), tiny_tok)  # matches: no error
    jsonl(d / "b.jsonl", DOCS[20:] + ["one more document"])
    jsonl(d / "c.jsonl", ["new file"])
    with pytest.raises(DataError) as e:
        verify_store(tmp_path / "st", SourceSpec(str(d)), tiny_tok)
    assert str(e.value) == (
        f"{tmp_path / 'st'}: out of date: source files changed: b.jsonl (changed), c.jsonl (added); "
        "rebuild it with `replaytune prepare`"
    )
    _, stats = prepare(SourceSpec(str(d)), tiny_tok, tmp_path / "st", progress=False)
    assert stats["up_to_date"] is False and stats["docs"]["train"] + stats["docs"]["val"] == 42
    assert stats["rebuilt_because"] == ["source files changed: b.jsonl (changed), c.jsonl (added)"]


def test_store_built_with_another_tokenizer_is_refused(tmp_path, tiny_tok, tiny_tok_path):
    from replaytune.data.tokenizer import load_tokenizer

    src = jsonl(tmp_path / "a.jsonl", DOCS)
    store, _ = prepare(src, tiny_tok, tmp_path / "st", progress=False)
    other = load_tokenizer(tiny_tok_path)
    other.chat_template = "{{ messages }}"
    fp = tokenizer_fingerprint(other)
    with pytest.raises(DataError) as e:
        verify_store(store, str(src), other)
    assert str(e.value) == (
        f"{store.path}: out of date: tokenizer differs: built with {tiny_tok.name_or_path} "
        f"(fingerprint {store.tokenizer_fingerprint}), given {other.name_or_path} (fingerprint {fp}); "
        "rebuild it with `replaytune prepare`"
    )
    with pytest.raises(DataError, match="not the expected one"):
        open_store(store.path, tokenizer_fingerprint=fp)


def test_failure_mid_build_leaves_no_store_and_no_temp(tmp_path, tiny_tok):
    src = tmp_path / "a.jsonl"
    jsonl(src, DOCS * 5)
    with open(src, "a") as f:
        f.write('{"text": broken\n')
    out = tmp_path / "st"
    with pytest.raises(DataError, match=rf"{src}:201: malformed JSON line"):
        prepare(src, tiny_tok, out, batch_chars=200, progress=False)  # many batches written before line 201
    assert not out.exists() and no_leftovers(tmp_path)


def test_failed_rebuild_keeps_the_old_store(tmp_path, tiny_tok):
    src = jsonl(tmp_path / "a.jsonl", DOCS)
    store, _ = prepare(src, tiny_tok, tmp_path / "st", progress=False)
    before = np.asarray(store.train.tokens).copy()
    src.write_text(src.read_text() + "{oops\n")
    with pytest.raises(DataError, match=":41: malformed JSON line"):
        prepare(src, tiny_tok, tmp_path / "st", progress=False)
    assert np.array_equal(np.asarray(open_store(tmp_path / "st").train.tokens), before)
    assert no_leftovers(tmp_path)


def test_empty_source_leaves_nothing(tmp_path, tiny_tok):
    src = tmp_path / "e.jsonl"
    src.write_text("\n")
    with pytest.raises(DataError, match="source 'e': empty source: no documents in"):
        prepare(src, tiny_tok, tmp_path / "st", progress=False)
    assert not (tmp_path / "st").exists() and no_leftovers(tmp_path)


@pytest.mark.parametrize("mode", [{"val_fraction": 0.25}, {"val_docs": 7}])
def test_validation_split_deterministic_and_disjoint(tmp_path, tiny_tok, mode):
    src = jsonl(tmp_path / "a.jsonl", DOCS)
    s1, st1 = prepare(src, tiny_tok, tmp_path / "s1", **mode, progress=False)
    s2, _ = prepare(src, tiny_tok, tmp_path / "s2", **mode, progress=False)
    train, val = split_texts(tiny_tok, s1.train), split_texts(tiny_tok, s1.val)
    assert split_texts(tiny_tok, s2.val) == val and split_texts(tiny_tok, s2.train) == train
    assert not set(train) & set(val) and sorted(train + val) == sorted(DOCS)
    keys = [split_key(0, i) for i in range(len(DOCS))]
    if "val_docs" in mode:
        expected = sorted(sorted(range(40), key=lambda i: keys[i])[:7])
    else:
        expected = [i for i in range(40) if keys[i] < 0.25]
    assert val == [DOCS[i] for i in expected]  # held-out documents keep source order
    assert st1["docs"]["val"] == len(expected)
    s3, _ = prepare(src, tiny_tok, tmp_path / "s3", **mode, seed=1, progress=False)
    assert split_texts(tiny_tok, s3.val) != val  # another seed, another split


def test_small_source_still_gets_one_validation_document(tmp_path, tiny_tok):
    src = jsonl(tmp_path / "a.jsonl", DOCS[:10])
    keys = [split_key(0, i) for i in range(10)]
    assert min(keys) >= 0.01  # 1% of 10 documents would hold out none
    store, stats = prepare(src, tiny_tok, tmp_path / "st", progress=False)
    assert stats["docs"] == {"train": 9, "val": 1}
    assert split_texts(tiny_tok, store.val) == [DOCS[int(np.argmin(keys))]]


def test_all_documents_in_validation_is_refused(tmp_path, tiny_tok):
    src = jsonl(tmp_path / "a.jsonl", DOCS[:3])
    with pytest.raises(DataError) as e:
        prepare(src, tiny_tok, tmp_path / "st", val_docs=3, progress=False)
    assert str(e.value) == "source 'a': all 3 documents went to the validation split; lower --val-docs / --val-fraction"
    assert not (tmp_path / "st").exists() and no_leftovers(tmp_path)


def test_bad_settings(tmp_path, tiny_tok):
    src = jsonl(tmp_path / "a.jsonl", DOCS)
    with pytest.raises(ConfigError, match="give --val-docs or --val-fraction, not both"):
        prepare(src, tiny_tok, tmp_path / "st", val_docs=1, val_fraction=0.1)
    with pytest.raises(ConfigError, match=r"--val-fraction 1.0: must be in \[0, 1\)"):
        prepare(src, tiny_tok, tmp_path / "st", val_fraction=1.0)
    with pytest.raises(ConfigError, match="--max-example-length applies to chat and instruction data"):
        prepare(src, tiny_tok, tmp_path / "st", max_length=10)


def test_out_dir_that_is_not_a_store_is_refused(tmp_path, tiny_tok):
    src = jsonl(tmp_path / "a.jsonl", DOCS)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match=rf"^{out}: exists and is not a token store; choose another --out or remove it$"):
        prepare(src, tiny_tok, out, progress=False)
    assert (out / "notes.txt").read_text() == "keep"


def test_replaced_bytes_counted_in_stats_and_strict_refuses(tmp_path, tiny_tok):
    src = tmp_path / "a.txt"
    src.write_bytes(b"good text\n\nbad \xff\xff text\n")
    _, stats = prepare(SourceSpec(str(src), paragraphs=True), tiny_tok, tmp_path / "st", progress=False)
    assert stats["replaced_bytes"] == 2 and stats["docs"]["train"] + stats["docs"]["val"] == 2
    with pytest.raises(DataError, match=rf"^{src}:3: undecodable bytes"):
        prepare(SourceSpec(str(src), paragraphs=True), tiny_tok, tmp_path / "st2", strict=True, progress=False)
    assert not (tmp_path / "st2").exists()


def test_long_text_file_in_pieces_equals_whole(tmp_path, tiny_tok, monkeypatch):
    from replaytune.data import sources

    monkeypatch.setattr(sources, "PIECE_CHARS", 300)
    text = "".join(f"Line {i} says something.\n" for i in range(400))
    src = tmp_path / "one.txt"
    src.write_text(text)
    store, stats = prepare(src, tiny_tok, tmp_path / "st", val_fraction=0.0, batch_chars=1000, progress=False)
    expected = tiny_tok(text, add_special_tokens=False)["input_ids"] + [tiny_tok.eos_token_id]
    assert stats["docs"]["train"] == 1 and store.train.tokens.tolist() == expected


# ------------------------------------------------------------------------ command line
def test_cli_prepare_then_up_to_date(tmp_path, tiny_tok_path, capsys):
    src = jsonl(tmp_path / "a.jsonl", DOCS)
    out = tmp_path / "st"
    args = ["prepare", str(src), "--tokenizer", tiny_tok_path, "--out", str(out), "--val-docs", "4", "--no-progress"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith(f"a: wrote {out}\n  docs: 36 train, 4 val; tokens: ")
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"a: up to date ({out}):")
    assert open_store(out).val.num_docs == 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{tmp}/missing.jsonl", "--tokenizer", "{tok}"], "{tmp}/missing.jsonl: no such file or directory"),
        (["{tmp}/a.jsonl", "--tokenizer", "{tmp}/notok"],
         "tokenizer {tmp}/notok: no such directory; train one with `replaytune tokenizer train` or fix the path"),
        (["{tmp}/a.jsonl", "--tokenizer", "{tok}", "--text-field", "body"],
         "{tmp}/a.jsonl:1: no field 'body' (fields: text); choose one with --text-field"),
    ],
)
def test_cli_prepare_errors_exit_2_one_line(tmp_path, tiny_tok_path, capsys, argv, message):
    jsonl(tmp_path / "a.jsonl", DOCS)
    argv = [a.format(tmp=tmp_path, tok=tiny_tok_path) for a in argv]
    rc = main(["prepare", *argv, "--out", str(tmp_path / "st"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == f"replaytune prepare: error: {message.format(tmp=tmp_path)}\n"
    assert not (tmp_path / "st").exists()


def test_one_huge_file_does_not_carry_the_corpus_into_validation(tmp_path, tiny_tok):
    # 48 small files and one holding about two thirds of the tokens, as a user's folder of .txt files
    folder = tmp_path / "texts"
    folder.mkdir()
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "fox", "jumps", "over", "lazy", "dog", "the"]
    for i in range(48):
        (folder / f"small{i:02d}.txt").write_text(" ".join(rng.choice(words, 400)) + "\n")
    (folder / "huge.txt").write_text(" ".join(rng.choice(words, 40000)) + "\n")
    store, stats = prepare(str(folder), tiny_tok, tmp_path / "st", val_fraction=0.05, progress=False)
    share = stats["tokens"]["val"] / (stats["tokens"]["val"] + stats["tokens"]["train"])
    assert 0.025 <= share <= 0.10 and stats["val_share"] == pytest.approx(share, abs=1e-6)
    assert stats["val_note"] is None
    assert store.train.num_tokens + store.val.num_tokens == stats["tokens"]["train"] + stats["tokens"]["val"]
    # every token of the source is in exactly one split: the chunks of the huge file are cut, not copied
    total_docs_tokens = sum(len(tiny_tok(p.read_text(), add_special_tokens=False)["input_ids"]) + 1
                            for p in folder.iterdir())
    assert store.train.num_tokens + store.val.num_tokens == total_docs_tokens


def test_held_out_tokens_stop_at_the_cap_and_a_far_share_is_reported(tmp_path, tiny_tok):
    src = tmp_path / "one.txt"
    src.write_text(" ".join(["the quick brown fox"] * 30000) + "\n")
    with pytest.warns(UserWarning, match="max-val-tokens"):
        _, stats = prepare(str(src), tiny_tok, tmp_path / "st", val_fraction=0.5, max_val_tokens=9000, progress=False)
    assert 0 < stats["tokens"]["val"] <= 9000
    assert "max-val-tokens" in stats["val_note"]


def test_a_store_swap_cut_between_its_renames_is_undone_on_the_next_open(tmp_path, tiny_tok):
    from replaytune.data.store import TokenStore

    src = jsonl(tmp_path / "a.jsonl", DOCS)
    store, _ = prepare(src, tiny_tok, tmp_path / "st", progress=False)
    tokens = store.train.num_tokens
    os.rename(tmp_path / "st", tmp_path / ".st.old-999999")  # killed after moving the old store aside
    (tmp_path / ".st.tmp-999999-q").mkdir()  # ... with the new one never renamed in
    assert TokenStore(tmp_path / "st").train.num_tokens == tokens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "st"]


def test_an_output_under_a_file_is_one_line_not_a_traceback(tmp_path, tiny_tok_path, capsys):
    src = jsonl(tmp_path / "a.jsonl", DOCS)
    (tmp_path / "afile").write_text("x")
    code = main(["prepare", str(src), "--tokenizer", str(tiny_tok_path), "--out", str(tmp_path / "afile" / "st")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "afile" in err[0] and "Traceback" not in err[0]


def test_max_tokens_reads_only_what_is_needed_and_a_larger_cap_serves_a_smaller_one(tmp_path, tiny_tok_path):
    """--max-tokens: stop reading a big source; the store is reused for any cap it covers."""
    import json as _json

    src = tmp_path / "big.jsonl"
    lines = [_json.dumps({"text": f"document number {i} " + "word " * 200}) for i in range(2000)]
    src.write_text("\n".join(lines) + "\n")
    _, full_stats = prepare(str(src), tiny_tok_path, tmp_path / "full", progress=False, batch_chars=20_000)
    assert full_stats["complete"] is True
    total = full_stats["tokens"]["train"] + full_stats["tokens"]["val"]
    cap = total // 10
    capped, stats = prepare(str(src), tiny_tok_path, tmp_path / "capped", progress=False, batch_chars=20_000,
                           max_tokens=cap)
    stored = stats["tokens"]["train"] + stats["tokens"]["val"]
    assert stats["complete"] is False and cap <= stored < cap + 20_000  # stops within one batch of the cap
    assert stats["documents_read"] < 2000 / 5
    meta = capped.meta["source"]["content"]["files"][0]
    assert "sha256" not in meta and meta["bytes"] == src.stat().st_size  # identified without reading it all
    # a smaller cap is served by this store as it is; a larger one reads further
    _, again = prepare(str(src), tiny_tok_path, tmp_path / "capped", progress=False, batch_chars=20_000, max_tokens=cap // 2)
    assert again["up_to_date"] is True
    _, more = prepare(str(src), tiny_tok_path, tmp_path / "capped", progress=False, batch_chars=20_000, max_tokens=cap * 3)
    assert more["up_to_date"] is False and more["tokens"]["train"] > stats["tokens"]["train"]
    assert any("max_tokens" in r for r in more["rebuilt_because"])
    # the complete store serves any cap without reading further
    _, served = prepare(str(src), tiny_tok_path, tmp_path / "full", progress=False, batch_chars=20_000, max_tokens=cap)
    assert served["up_to_date"] is True
    with pytest.raises(ConfigError, match="--max-tokens 0"):
        prepare(str(src), tiny_tok_path, tmp_path / "x", progress=False, max_tokens=0)
