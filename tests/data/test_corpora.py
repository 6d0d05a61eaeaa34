"""Corpus finders (man pages, Python stdlib and docs, translation catalogs) and roff stripping."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from replaytune.data import corpora
from replaytune.data.roff import roff_to_text
from replaytune.data.sources import SourceReader
from replaytune.errors import DataError


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def write_mo(path, pairs):
    """A minimal GNU .mo catalog (little-endian, no hash table) holding ``pairs``."""
    pairs = sorted([("", "Content-Type: text/plain; charset=UTF-8\n")] + list(pairs))
    ids = [k.encode() for k, _ in pairs]
    strs = [v.encode() for _, v in pairs]
    n = len(pairs)
    header = 7 * 4
    orig_off, trans_off = header, header + 8 * n
    data_off = trans_off + 8 * n
    blob, orig, trans = b"", [], []
    for s in ids:
        orig.append((len(s), data_off + len(blob)))
        blob += s + b"\0"
    for s in strs:
        trans.append((len(s), data_off + len(blob)))
        blob += s + b"\0"
    out = struct.pack("<7I", 0x950412DE, 0, n, orig_off, trans_off, 0, 0)
    out += b"".join(struct.pack("<2I", *t) for t in orig) + b"".join(struct.pack("<2I", *t) for t in trans) + blob
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(out)


# ------------------------------------------------------------------------ roff
def test_roff_man_macros_to_text():
    src = "\n".join([
        '.\\" a comment',
        '.TH LS 1 "2022"',
        ".SH NAME",
        "ls \\- list directory contents",
        ".SH DESCRIPTION",
        "List \\fBall\\fR the",
        "files \\(em sorted.",
        ".TP",
        ".BR \\-a , \\-\\-all",
        "do not ignore entries",
        ".de XX",
        "macro body",
        "..",
        ".nf",
        "code line 1",
        "  code line 2",
        ".fi",
        '.B "bold words"',
    ])
    assert roff_to_text(src) == (
        "NAME\nls - list directory contents\n\nDESCRIPTION\nList all the files \u2014 sorted.\n\n"
        "-a,--all\ndo not ignore entries\ncode line 1\n  code line 2\nbold words\n"
    )


def test_roff_mdoc_and_alias():
    src = "\n".join([".Dd May 1", ".Sh NAME", ".Nm ssh", ".Nd remote login", ".Sh SYNOPSIS", ".Nm",
                     ".Op Fl p Ar port", "See", ".Xr ssh_config 5 ."])
    assert roff_to_text(src) == "NAME\nssh \u2014 remote login\n\nSYNOPSIS\nssh [-p port] See ssh_config(5).\n"
    assert roff_to_text(".so man1/other.1\n") == ""


# ------------------------------------------------------------------------ man pages
def make_man(root):
    (root / "man1").mkdir(parents=True)
    (root / "man3").mkdir()
    page = ".TH X 1\n.SH NAME\n{0} \\- the {0} tool, which does a great many useful things\n"
    for name in ("alpha", "beta", "gamma"):
        (root / "man1" / f"{name}.1.gz").write_bytes(gzip.compress(page.format(name).encode()))
    (root / "man3" / "alias.3.gz").write_bytes(gzip.compress(b".so man1/alpha.1\n"))
    os.symlink(root / "man1" / "alpha.1.gz", root / "man1" / "link.1.gz")


def test_man_pages_order_budget_aliases(tmp_path):
    root = tmp_path / "man"
    make_man(root)
    info = corpora.man_pages(tmp_path / "out" / "man.jsonl", root=root)
    rows = read_jsonl(info.path)
    rels = ["man1/alpha.1.gz", "man1/beta.1.gz", "man1/gamma.1.gz"]
    assert [r["source"] for r in rows] == sorted(rels, key=lambda r: hashlib.sha1(r.encode()).hexdigest())
    assert rows[0]["text"].startswith("NAME\n")
    assert (info.docs, info.files, info.skipped, info.budget_reached) == (3, 3, 1, False)  # alias skipped, symlink ignored
    assert info.bytes == sum(len(r["text"].encode()) for r in rows)
    small = corpora.man_pages(tmp_path / "small.jsonl", root=root, max_bytes=10)
    assert small.docs == 1 and small.budget_reached
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["man.jsonl"]  # no temp files


def test_missing_man_pages_name_the_flag(tmp_path):
    with pytest.raises(DataError) as e:
        corpora.man_pages(tmp_path / "m.jsonl", root=tmp_path / "none")
    assert str(e.value) == (
        f"no man pages under {tmp_path / 'none'}/man[1-8] (install man-db pages, or use --generic PATH to point at your own text)"
    )
    assert not (tmp_path / "m.jsonl").exists()


# ------------------------------------------------------------------------ Python
def test_stdlib_excludes_tests_and_site_packages(tmp_path):
    root = tmp_path / "lib"
    for rel in ("os.py", "json/decoder.py", "json/tests/x.py", "test/test_os.py", "unittest/test_case.py",
                "site-packages/pkg/mod.py", "pydoc_data/topics.py", "email/README.txt", "ctypes/util_test.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\nx = 1\n")
    info = corpora.python_stdlib(tmp_path / "py.jsonl", root=root)
    assert sorted(r["source"] for r in read_jsonl(info.path)) == ["json/decoder.py", "os.py"]
    with pytest.raises(DataError, match="no Python standard-library sources under .*; use --target PATH to point at your own code"):
        corpora.python_stdlib(tmp_path / "none.jsonl", root=tmp_path / "empty")


def test_python_docs_topics(tmp_path):
    info = corpora.python_docs(tmp_path / "d.jsonl", topics={"b": "Beta text.", "a": "Alpha text.", "c": "  "})
    assert [r["text"] for r in read_jsonl(info.path)] == ["Alpha text.", "Beta text."]
    with pytest.raises(DataError, match="pydoc_data.topics is missing from this Python; use --generic PATH"):
        corpora.python_docs(tmp_path / "e.jsonl", topics={})


# ------------------------------------------------------------------------ translations
def test_translations_grouped_per_catalog(tmp_path):
    root = tmp_path / "locale"
    write_mo(root / "eu/LC_MESSAGES/a.mo", [("Open", "Ireki"), ("Close", "Itxi"), ("Save", "Gorde")])
    write_mo(root / "eu/LC_MESSAGES/b.mo", [("Yes", "Bai"), ("No", "Ez")])
    write_mo(root / "eu/LC_MESSAGES/empty.mo", [])
    info = corpora.translations("eu", tmp_path / "eu.jsonl", root=root, group_chars=8)
    rows = read_jsonl(info.path)
    # sorted by English id: Close, Open, Save; groups close at >= 8 characters (+1 per line)
    assert [(r["source"], r["text"]) for r in rows] == [
        ("a.mo#0", "Itxi\nIreki"), ("a.mo#1", "Gorde"), ("b.mo#0", "Ez\nBai")]
    assert (info.files, info.skipped, info.docs) == (2, 1, 3)
    assert corpora.languages(root) == ["eu"]


def test_missing_language_names_the_flag(tmp_path):
    root = tmp_path / "locale"
    write_mo(root / "de/LC_MESSAGES/a.mo", [("Yes", "Ja")])
    with pytest.raises(DataError) as e:
        corpora.translations("eu", tmp_path / "eu.jsonl", root=root)
    assert str(e.value) == (
        f"no translation catalogs for language 'eu' under {root}/eu/LC_MESSAGES (languages here: de); "
        "use --target PATH to point at your own text"
    )


# ------------------------------------------------------------------------ this machine
@pytest.mark.skipif(not Path(corpora.MAN_ROOT, "man1").is_dir(), reason="no man pages here")
def test_real_man_pages_small_budget(tmp_path, tiny_tok):
    from replaytune.data.prepare import prepare

    info = corpora.man_pages(tmp_path / "man.jsonl", max_bytes=30_000)
    assert info.budget_reached and 30_000 <= info.bytes and info.docs >= 2
    store, stats = prepare(info.path, tiny_tok, tmp_path / "st", progress=False)  # a finder's output is a source
    # every document is in the store once, ended by one EOS (long ones may be cut into held-out chunks)
    eos = sum(int((np.asarray(s.tokens) == store.eos_id).sum()) for s in (store.train, store.val))
    assert eos == info.docs and stats["docs"]["train"] + stats["docs"]["val"] >= info.docs
    assert "\\f" not in Path(info.path).read_text()  # font escapes stripped


@pytest.mark.skipif(not corpora.translation_files("eu"), reason="no Basque catalogs here")
def test_real_basque_catalogs(tmp_path):
    info = corpora.translations("eu", tmp_path / "eu.jsonl")
    assert info.docs > 10 and info.bytes > 100_000
    assert [d.content for d in SourceReader(info.path).documents()][:1] == [read_jsonl(info.path)[0]["text"]]


def test_real_stdlib_and_docs(tmp_path):
    info = corpora.python_stdlib(tmp_path / "py.jsonl", max_bytes=50_000)
    assert info.budget_reached and all("test" not in r["source"].split("/")[0] for r in read_jsonl(info.path))
    docs = corpora.python_docs(tmp_path / "d.jsonl")
    assert docs.docs > 20


def test_without_man_pages_or_catalogs_the_demo_falls_back_to_what_python_carries(tmp_path, monkeypatch):
    from replaytune.study.demo import find_corpora

    empty = tmp_path / "empty"
    (empty / "man" / "man1").mkdir(parents=True)
    (empty / "locale").mkdir()
    monkeypatch.setattr(corpora, "MAN_ROOT", str(empty / "man"))
    monkeypatch.setattr(corpora, "LOCALE_ROOT", str(empty / "locale"))
    gpath, targets, lines = find_corpora(tmp_path / "work", None, None)
    assert lines[0].startswith("generic: python docs (pydoc_data; no man pages here): ")
    assert any(line.startswith("target basque: not found (no translation catalogs for language 'eu'") for line in lines)
    assert list(targets) == ["python"] and lines[-1].startswith("target python: python stdlib")
    rows = [json.loads(line) for line in gpath.read_text().splitlines()]
    assert rows and all(r["source"].startswith("pydoc_data/topics.py#") for r in rows)
