"""Tokenizer training, loading, fingerprints, and the `replaytune tokenizer train` command."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from replaytune.cli import main
from replaytune.data.sources import SourceSpec
from replaytune.data.tokenizer import (
    EOS_TOKEN,
    load_tokenizer,
    tokenizer_fingerprint,
    tokenizer_info,
    train_tokenizer,
)
from replaytune.errors import ConfigError, DataError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def test_trained_tokenizer_loads_with_autotokenizer(tiny_tok_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tok_path)
    assert len(tok) == 512
    assert tok.eos_token == EOS_TOKEN and tok.eos_token_id == tok.convert_tokens_to_ids(EOS_TOKEN)
    assert tok.pad_token_id == tok.eos_token_id
    text = "Zer moduz? naïve café — ünïcödé 🙂\n\tdef f(x): return x"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level: every string round-trips, no unknown tokens
    assert tok("hi", add_special_tokens=True)["input_ids"] == tok("hi", add_special_tokens=False)["input_ids"]  # no BOS


def test_training_info_and_no_leftovers(tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps({"text": f"sample text number {i} here"}) + "\n" for i in range(200)))
    out = tmp_path / "tok"
    info = train_tokenizer([SourceSpec(str(src))], 300, out)
    assert info["vocab_size"] == len(load_tokenizer(out)) <= 300 and info["docs"] == 200
    assert info["bytes"] == sum(len(f"sample text number {i} here") for i in range(200))
    saved = json.loads((out / "replaytune_tokenizer.json").read_text())
    assert saved["fingerprint"] == tokenizer_fingerprint(load_tokenizer(out)) == info["fingerprint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl", "tok"]  # temp folder renamed away


def test_retraining_replaces_and_max_bytes_caps(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("abc def ghi " * 500)
    out = tmp_path / "tok"
    train_tokenizer([str(src)], 300, out)
    info = train_tokenizer([str(src)], 280, out, max_bytes=1000)
    assert info["bytes"] == 1000 and len(load_tokenizer(out)) <= 280
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt", "tok"]


def test_refuses_a_folder_that_is_not_a_tokenizer(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("abc")
    out = tmp_path / "data"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match=rf"^{out}: exists and is not a tokenizer folder; choose another --out$"):
        train_tokenizer([str(src)], 300, out)
    assert (out / "precious.txt").read_text() == "keep me"


def test_vocab_too_small(tmp_path):
    with pytest.raises(ConfigError, match=r"--vocab-size 100: must be at least 257 \(256 bytes \+ EOS\)"):
        train_tokenizer(["x.txt"], 100, tmp_path / "t")


def test_unknown_local_path_names_it(tmp_path):
    missing = tmp_path / "no_such_tok"
    with pytest.raises(DataError) as e:
        load_tokenizer(missing)
    assert str(e.value) == (
        f"tokenizer {missing}: no such directory; train one with `replaytune tokenizer train` or fix the path"
    )


def test_unknown_hub_id_offline_is_one_line():
    with pytest.raises(DataError) as e:
        load_tokenizer("no-such-org-xyz/no-such-tokenizer")
    msg = str(e.value)
    assert msg.startswith("tokenizer no-such-org-xyz/no-such-tokenizer: no such local directory, and loading it from the Hugging Face hub failed")
    assert "\n" not in msg


def test_a_file_is_not_a_tokenizer(tmp_path):
    f = tmp_path / "tok.json"
    f.write_text("{}")
    with pytest.raises(DataError, match=r"tok.json: not a directory"):
        load_tokenizer(f)


def test_fingerprint_stable_across_loads_and_copies(tiny_tok_path, tmp_path):
    a = tokenizer_fingerprint(load_tokenizer(tiny_tok_path))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_tok_path, copy)
    assert tokenizer_fingerprint(load_tokenizer(tiny_tok_path)) == a
    assert tokenizer_fingerprint(load_tokenizer(copy)) == a
    assert len(a) == 16


def test_fingerprint_changes_with_chat_template_and_vocabulary(tiny_tok_path, tmp_path):
    tok = load_tokenizer(tiny_tok_path)
    base = tokenizer_fingerprint(tok)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert tokenizer_fingerprint(tok) != base
    src = tmp_path / "t.txt"
    src.write_text("different words entirely " * 50)
    train_tokenizer([str(src)], 300, tmp_path / "other")
    assert tokenizer_fingerprint(load_tokenizer(tmp_path / "other")) != base


def test_tokenizer_info(tiny_tok):
    info = tokenizer_info(tiny_tok)
    assert info["vocab_size"] == 512 and info["eos_id"] == tiny_tok.eos_token_id
    assert info["path"] == tiny_tok.name_or_path and os.path.isabs(info["path"])


def test_cli_tokenizer_train(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("".join(f"the cat {i} sat on the mat {i * 3}. " for i in range(100))[:5000])
    src2 = tmp_path / "b.txt"
    src2.write_text("".join(f"le chat {i} est sur le tapis {i * 7}. " for i in range(100))[:5000])
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(src), str(src2), "--vocab-size", "300", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"tokenizer: wrote {out}: vocabulary 300 (EOS id 0), trained on 2 documents, "
                              f"{src.stat().st_size + src2.stat().st_size:,} bytes")
    assert len(load_tokenizer(out)) == 300


def test_cli_tokenizer_train_missing_source_exit_2(tmp_path, capsys):
    rc = main(["tokenizer", "train", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == f"replaytune tokenizer: error: {tmp_path / 'nope.txt'}: no such file or directory\n"
