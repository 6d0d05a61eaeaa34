"""Readers: every input format, deterministic order, and every bad input's one-line error."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from replaytune.data import sources as S
from replaytune.data.sources import SourceReader, SourceSpec
from replaytune.errors import ConfigError, DataError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def docs(spec, **kw):
    r = SourceReader(spec if isinstance(spec, SourceSpec) else SourceSpec(str(spec), **kw))
    return [d.content for d in r.documents()], r


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------ formats
def test_txt_file_is_one_document(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("line one\n\nline two\n")
    got, r = docs(p)
    assert got == ["line one\n\nline two\n"]
    assert r.mode == "files" and r.bytes_read == p.stat().st_size


def test_txt_paragraphs_are_documents_with_line_numbers(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("first para\nstill first\n\n\nsecond\n  \nthird\n")
    r = SourceReader(SourceSpec(str(p), paragraphs=True))
    out = list(r.documents())
    assert [d.content for d in out] == ["first para\nstill first", "second", "third"]
    assert [d.where for d in out] == [f"{p}:1", f"{p}:5", f"{p}:7"]


def test_jsonl_default_and_custom_field_skip_blank_lines(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "alpha", "body": "A"}\n\n{"text": "beta", "body": "B"}\n')
    assert docs(p)[0] == ["alpha", "beta"]
    assert docs(p, text_field="body")[0] == ["A", "B"]


def test_parquet_in_batches_keeps_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "a.parquet"
    texts = [f"row {i}" for i in range(2500)]  # 3 record batches of 1024
    pq.write_table(pa.table({"text": texts, "other": list(range(2500))}), p, row_group_size=700)
    got, r = docs(p)
    assert got == texts
    assert r.bytes_read == p.stat().st_size


def test_gz_of_txt_and_jsonl(tmp_path):
    t = tmp_path / "a.txt.gz"
    t.write_bytes(gzip.compress(b"p1\n\np2\n"))
    j = tmp_path / "b.jsonl.gz"
    j.write_bytes(gzip.compress(b'{"text": "x"}\n{"text": "y"}\n'))
    assert docs(SourceSpec(str(t), paragraphs=True))[0] == ["p1", "p2"]
    assert docs(j)[0] == ["x", "y"]


def test_directory_sorted_recursive_hidden_and_unknown_skipped(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("bz")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "c.jsonl").write_text('{"text": "c"}\n')
    (tmp_path / ".hidden.txt").write_text("hidden")
    (tmp_path / "notes.csv").write_text("x,y")
    got, r = docs(tmp_path)
    assert got == ["a", "bz", "c"]  # a.txt, b/z.txt, c.jsonl
    assert r.skipped_files == ["notes.csv"]


def test_directory_with_explicit_format_reads_every_file(tmp_path):
    (tmp_path / "m.py").write_text("x = 1\n")
    (tmp_path / "n.py").write_text("y = 2\n")
    assert docs(SourceSpec(str(tmp_path), format="txt"))[0] == ["x = 1\n", "y = 2\n"]


def test_glob_sorted(tmp_path):
    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / name).write_text(name)
    assert docs(str(tmp_path / "*.txt"))[0] == ["a.txt", "b.txt"]


def test_save_to_disk_dataset_and_datasetdict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["one", "two", "three"], "n": [1, 2, 3]})
    ds.save_to_disk(str(tmp_path / "ds"))
    got, r = docs(tmp_path / "ds")
    assert got == ["one", "two", "three"] and r.mode == "arrow"
    dd = datasets.DatasetDict({"train": ds, "validation": ds.select([0])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert docs(SourceSpec(str(tmp_path / "dd"), split="validation"))[0] == ["one"]
    with pytest.raises(DataError, match=r"dd: no split 'test' \(splits: train, validation\); choose one with --split"):
        docs(SourceSpec(str(tmp_path / "dd"), split="test"))


def test_hf_loader_with_local_stand_in(tmp_path):
    d = tmp_path / "hubds"
    d.mkdir()
    write_jsonl(d / "train.jsonl", [{"text": f"doc {i}"} for i in range(5)])
    got, r = docs(SourceSpec(str(d), format="hf"))
    assert r.mode == "hf" and got == [f"doc {i}" for i in range(5)]
    # a local stand-in is fingerprinted by its files, like any local source
    assert [f["path"] for f in r.content_fingerprint()["files"]] == ["train.jsonl"]


def test_hub_name_that_cannot_load_is_one_line_error():
    r = SourceReader("no-such-owner/no-such-dataset")
    assert r.mode == "hf"
    with pytest.raises(DataError) as e:
        list(r.documents())
    msg = str(e.value)
    assert msg.startswith("no-such-owner/no-such-dataset: not a local file, and loading it as a Hugging Face dataset failed")
    assert "\n" not in msg


def test_long_document_pieces_tokenize_like_the_whole(tmp_path, monkeypatch, tiny_tok):
    monkeypatch.setattr(S, "PIECE_CHARS", 200)
    lines = [f"line {i} of text, with words\n" if i % 3 else f"    indented {i}\n" for i in range(60)]
    text = "".join(lines)
    p = tmp_path / "big.txt"
    p.write_text(text)
    out = list(SourceReader(str(p)).documents())
    assert len(out) > 3
    assert [d.cont for d in out] == [False] + [True] * (len(out) - 1)
    assert "".join(d.content for d in out) == text
    backend = tiny_tok.backend_tokenizer
    whole = backend.encode(text, add_special_tokens=False).ids
    pieces = [i for d in out for i in backend.encode(d.content, add_special_tokens=False).ids]
    assert pieces == whole
    # the same for a long jsonl text
    j = write_jsonl(tmp_path / "big.jsonl", [{"text": text}])
    jout = list(SourceReader(str(j)).documents())
    assert "".join(d.content for d in jout) == text and len(jout) > 3 and jout[1].cont


def test_content_fingerprint_tracks_bytes_not_location(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "x.txt").write_text("hello")
    fp1 = SourceReader(str(a)).content_fingerprint()
    b = tmp_path / "b"
    a.rename(b)
    assert SourceReader(str(b)).content_fingerprint() == fp1
    (b / "x.txt").write_text("hellO")
    assert SourceReader(str(b)).content_fingerprint()["sha256"] != fp1["sha256"]


# ------------------------------------------------------------------------ undecodable bytes
def test_undecodable_bytes_replaced_and_counted(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"ok line\nbad \xff\xfe here \xc3 end\n")
    got, r = docs(p)
    assert got == ["ok line\nbad \ufffd\ufffd here \ufffd end\n"]
    assert r.replaced_bytes == 3


def test_undecodable_bytes_strict_names_file_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"ok line\nbad \xff here\n")
    with pytest.raises(DataError) as e:
        docs(SourceSpec(str(p), strict=True))
    assert str(e.value) == (
        f"{p}:2: undecodable bytes (not UTF-8) at byte 4 of the line; fix the file, "
        "or drop --strict to replace them with U+FFFD (counted)"
    )


def test_undecodable_bytes_in_jsonl(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    got, r = docs(p)
    assert got == ["fine", "caf\ufffd"] and r.replaced_bytes == 1
    with pytest.raises(DataError, match=rf"^{p}:2: undecodable bytes"):
        docs(SourceSpec(str(p), strict=True))


# ------------------------------------------------------------------------ bad input
def test_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        SourceReader(str(tmp_path / "nope.txt"))
    assert str(e.value) == f"{tmp_path / 'nope.txt'}: no such file or directory"


def test_glob_without_matches(tmp_path):
    with pytest.raises(DataError, match=r"\*\.jsonl: no files match this pattern"):
        SourceReader(str(tmp_path / "*.jsonl"))


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_txt_source(tmp_path, content):
    p = tmp_path / "empty.txt"
    p.write_text(content)
    with pytest.raises(DataError) as e:
        docs(p)
    assert str(e.value) == f"source 'empty': empty source: no documents in {p}"


def test_empty_jsonl_and_empty_directory(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text("\n\n")
    with pytest.raises(DataError, match="source 'e': empty source: no documents in"):
        docs(p)
    d = tmp_path / "d"
    d.mkdir()
    (d / "x.py").write_text("code")
    with pytest.raises(DataError) as e:
        SourceReader(str(d))
    assert str(e.value) == (
        f"{d}: empty source: no .txt, .jsonl or .parquet files (1 other files, e.g. .py; pass --format txt to read them as text)"
    )


def test_malformed_json_line_names_file_and_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"\n')
    with pytest.raises(DataError) as e:
        docs(p)
    assert str(e.value).startswith(f"{p}:3: malformed JSON line (")
    assert str(e.value).endswith("each line must be one JSON object")


def test_json_line_not_an_object(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('["a"]\n')
    with pytest.raises(DataError, match=rf"^{p}:1: expected a JSON object, got list$"):
        docs(p)


def test_missing_text_field_names_file_line_and_field(tmp_path):
    p = write_jsonl(tmp_path / "f.jsonl", [{"text": "ok"}, {"body": "no text", "id": 3}])
    with pytest.raises(DataError) as e:
        docs(p)
    assert str(e.value) == f"{p}:2: no field 'text' (fields: body, id); choose one with --text-field"


def test_missing_column_in_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": ["x"]}), p)
    with pytest.raises(DataError, match=rf"^{p}: no field 'text' \(fields: content\); choose one with --text-field$"):
        docs(p)


def test_text_field_not_a_string(tmp_path):
    p = write_jsonl(tmp_path / "f.jsonl", [{"text": 5}])
    with pytest.raises(DataError, match=rf"^{p}:1: field 'text' is int, not a string$"):
        docs(p)


def test_unknown_format(tmp_path):
    p = tmp_path / "table.csv"
    p.write_text("a,b\n")
    with pytest.raises(DataError) as e:
        SourceReader(str(p))
    assert str(e.value).startswith(f"{p}: unknown format '.csv' (known: .txt, .jsonl, .parquet")
    assert "pass --format txt|jsonl|parquet" in str(e.value)


def test_bad_spec_values():
    with pytest.raises(ConfigError, match="source kind 'dialog': must be one of text, chat, instruction"):
        SourceSpec("x.jsonl", kind="dialog")
    with pytest.raises(ConfigError, match="source format 'csv'"):
        SourceSpec("x.jsonl", format="csv")


def test_chat_kind_from_txt_is_refused(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("hi")
    with pytest.raises(DataError, match="a .txt file holds plain text; kind 'chat' needs .jsonl"):
        docs(SourceSpec(str(p), kind="chat"))


def test_instruction_and_chat_records(tmp_path):
    p = write_jsonl(tmp_path / "i.jsonl", [{"prompt": "Q?", "completion": " A."}])
    assert docs(SourceSpec(str(p), kind="instruction"))[0] == [("Q?", " A.")]
    q = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    assert docs(SourceSpec(str(q), kind="chat"))[0] == [[{"role": "user", "content": "hi"}]]
    with pytest.raises(DataError, match=rf"^{q}:1: no field 'conv' \(fields: messages\); choose one with --messages-field$"):
        docs(SourceSpec(str(q), kind="chat", messages_field="conv"))
