"""Real text already on the machine, written as jsonl corpora (nothing is downloaded).

The default demo needs a generic source and targets at different distances from it
(docs/method.md). A Debian-like machine with Python has:

* man pages - English technical prose (:func:`man_pages`): ``/usr/share/man/man[1-8]/*.gz``,
  roff stripped to text (:mod:`replaytune.data.roff`), one document per page; aliases
  (symlinks and ``.so`` pages) skipped.
* Python documentation prose (:func:`python_docs`): ``pydoc_data/topics.py``, one document
  per topic.
* Python standard-library source (:func:`python_stdlib`): ``.py`` files under
  ``sysconfig``'s stdlib, without tests (``test``/``tests``/``idle_test`` folders,
  ``test_*.py``), ``site-packages`` and ``pydoc_data``; one document per file.
* translation catalogs of one language (:func:`translations`):
  ``/usr/share/locale/<lang>/LC_MESSAGES/*.mo``; the translated strings of a catalog, sorted
  by their English message id, one per line, grouped into documents of about 2,000
  characters that never span two catalogs. A catalog that cannot be decoded with its own
  declared charset is skipped and counted (``skipped``).

Order and budgets: files are visited in a deterministic pseudo-random order (sorted by
the sha1 of their relative path), so a byte budget takes a spread sample (all sections,
all packages) rather than everything starting with "a". With ``max_bytes`` the corpus stops
at the first document that reaches the budget (so it holds at least ``max_bytes`` unless
the source is smaller). Each finder writes ``{"text": ..., "source": relative path}`` lines
atomically and returns a :class:`CorpusInfo`. A missing corpus is a DataError whose message
says which flag points the caller at its own files.
"""

from __future__ import annotations

import gettext
import gzip
import hashlib
import json
import os
import sysconfig
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from replaytune.data.roff import roff_to_text
from replaytune.errors import DataError

MAN_ROOT = "/usr/share/man"
LOCALE_ROOT = "/usr/share/locale"
GROUP_CHARS = 2000  # translation documents: about this many characters each
_STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "pydoc_data"}


@dataclass
class CorpusInfo:
    """What a finder found and wrote."""

    name: str
    path: str  # the jsonl written
    root: str  # where the text came from
    files: int  # input files used
    bytes: int  # UTF-8 bytes of document text written
    docs: int
    budget_reached: bool = False
    skipped: int = 0  # input files with no usable text (aliases, empty catalogs)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        cut = " (byte budget reached)" if self.budget_reached else ""
        return f"{self.name}: {self.docs:,} documents, {self.bytes / 1e6:.2f} MB from {self.files:,} files in {self.root}{cut}"


def _spread(paths: Iterable[Path], root: Path) -> list[Path]:
    """Deterministic order that samples evenly under a budget: sha1 of the relative path."""
    return sorted(paths, key=lambda p: hashlib.sha1(p.relative_to(root).as_posix().encode()).hexdigest())


def _write(out_path: str | os.PathLike, docs: Iterator[tuple[str, str]], max_bytes: int | None, info: CorpusInfo) -> CorpusInfo:
    """Write (source, text) documents as jsonl through a temp file; fill the counts in ``info``."""
    out = Path(out_path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    sources: set[str] = set()
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for source, text in docs:
                if max_bytes is not None and info.bytes >= max_bytes:
                    info.budget_reached = True
                    break
                f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
                info.bytes += len(text.encode("utf-8"))
                info.docs += 1
                sources.add(source.split("#")[0])
        if info.docs == 0:
            raise DataError(f"{info.name}: found no text in {info.root}")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    info.files = len(sources)
    info.path = str(out)
    return info


# ---------------------------------------------------------------------------- man pages
def man_page_files(root: str | os.PathLike | None = None) -> list[Path]:
    """The real (non-symlink) pages under ``root/man[1-8]`` (default :data:`MAN_ROOT`), in the spread order."""
    base = Path(MAN_ROOT if root is None else root)
    files = [p for d in sorted(base.glob("man[1-8]")) if d.is_dir() for p in d.iterdir()
             if p.is_file() and not p.is_symlink()]
    return _spread(files, base)


def man_pages(out_path: str | os.PathLike, *, max_bytes: int | None = None, root: str | os.PathLike | None = None,
              flag: str = "--generic PATH") -> CorpusInfo:
    """English technical prose from the man pages; DataError naming ``flag`` when there are none."""
    root = MAN_ROOT if root is None else root
    files = man_page_files(root)
    if not files:
        raise DataError(f"no man pages under {root}/man[1-8] (install man-db pages, or use {flag} to point at your own text)")
    info = CorpusInfo("man pages", "", str(root), 0, 0, 0)

    def docs() -> Iterator[tuple[str, str]]:
        for p in files:
            if p.suffix == ".gz":
                with gzip.open(p, "rb") as f:
                    raw = f.read()
            else:
                raw = p.read_bytes()
            try:
                text = roff_to_text(raw.decode("utf-8"))
            except UnicodeDecodeError:
                text = roff_to_text(raw.decode("latin-1"))
            if len(text.strip()) < 40:  # aliases and stubs
                info.skipped += 1
                continue
            yield p.relative_to(root).as_posix(), text

    return _write(out_path, docs(), max_bytes, info)


# ---------------------------------------------------------------------------- Python
def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """Standard-library ``.py`` files without tests, site-packages and pydoc_data (spread order)."""
    base = Path(root) if root is not None else stdlib_root()
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS and not d.startswith("."))
        for fn in filenames:
            if fn.endswith(".py") and not fn.startswith("test_") and not fn.endswith("_test.py"):
                found.append(Path(dirpath) / fn)
    return _spread(found, base)


def python_stdlib(out_path: str | os.PathLike, *, max_bytes: int | None = None, root: str | os.PathLike | None = None,
                  flag: str = "--target PATH") -> CorpusInfo:
    """Python source code, one document per standard-library file."""
    base = Path(root) if root is not None else stdlib_root()
    files = stdlib_files(base)
    if not files:
        raise DataError(f"no Python standard-library sources under {base}; use {flag} to point at your own code")
    info = CorpusInfo("python stdlib", "", str(base), 0, 0, 0)

    def docs() -> Iterator[tuple[str, str]]:
        for p in files:
            text = p.read_bytes().decode("utf-8", errors="replace")
            if not text.strip():
                info.skipped += 1
                continue
            yield p.relative_to(base).as_posix(), text

    return _write(out_path, docs(), max_bytes, info)


def python_docs(out_path: str | os.PathLike, *, max_bytes: int | None = None, topics: dict[str, str] | None = None,
                flag: str = "--generic PATH") -> CorpusInfo:
    """Python's documentation prose (``pydoc_data.topics``), one document per topic."""
    if topics is None:
        try:
            from pydoc_data.topics import topics
        except ImportError:
            topics = {}
    if not topics:
        raise DataError(f"Python's pydoc_data.topics is missing from this Python; use {flag} to point at your own text")
    info = CorpusInfo("python docs", "", "pydoc_data/topics.py", 0, 0, 0)
    docs = ((f"pydoc_data/topics.py#{k}", topics[k]) for k in sorted(topics) if topics[k].strip())
    return _write(out_path, docs, max_bytes, info)


def generic_text(out_path: str | os.PathLike, *, max_bytes: int | None = None, flag: str = "--generic PATH") -> CorpusInfo:
    """The demo's generic English: the man pages, or, where there are none (a slim container,
    macOS), Python's documentation prose, which every Python install carries. ``info.name`` says which."""
    try:
        return man_pages(out_path, max_bytes=max_bytes, flag=flag)
    except DataError as exc:
        info = python_docs(out_path, max_bytes=max_bytes, flag=flag)
        info.name = "python docs (pydoc_data; no man pages here)"
        info.extra["fallback_because"] = str(exc)
        return info


# ---------------------------------------------------------------------------- translations
def catalog_strings(path: str | os.PathLike) -> list[str]:
    """Translated strings of one ``.mo`` catalog, sorted by English message id (header skipped)."""
    with open(path, "rb") as f:
        try:
            catalog = gettext.GNUTranslations(f)._catalog
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a readable gettext catalog ({exc})") from None
    items = [(str(k), v) for k, v in catalog.items() if k != "" and isinstance(v, str) and v.strip()]
    return [v.strip() for _, v in sorted(items)]


def translation_files(lang: str, root: str | os.PathLike = LOCALE_ROOT) -> list[Path]:
    return sorted(Path(root, lang, "LC_MESSAGES").glob("*.mo"))


def translations(lang: str, out_path: str | os.PathLike, *, max_bytes: int | None = None,
                 root: str | os.PathLike | None = None, group_chars: int = GROUP_CHARS,
                 flag: str = "--target PATH") -> CorpusInfo:
    """Text in language ``lang`` from translation catalogs; see the module docstring."""
    root = LOCALE_ROOT if root is None else root  # read when called: tests point it elsewhere
    files = translation_files(lang, root)
    if not files:
        have = ", ".join(languages(root)[:12]) or "none"
        raise DataError(
            f"no translation catalogs for language '{lang}' under {root}/{lang}/LC_MESSAGES "
            f"(languages here: {have}); use {flag} to point at your own text"
        )
    info = CorpusInfo(f"translations ({lang})", "", str(Path(root, lang, "LC_MESSAGES")), 0, 0, 0)

    def docs() -> Iterator[tuple[str, str]]:
        for p in files:
            try:
                strings = catalog_strings(p)
            except DataError:  # a catalog whose text does not match its declared charset
                strings = []
            if not strings:
                info.skipped += 1
                continue
            group: list[str] = []
            size, part = 0, 0
            for s in strings:
                group.append(s)
                size += len(s) + 1
                if size >= group_chars:
                    yield f"{p.name}#{part}", "\n".join(group)
                    group, size, part = [], 0, part + 1
            if group:
                yield f"{p.name}#{part}", "\n".join(group)

    return _write(out_path, docs(), max_bytes, info)


def languages(root: str | os.PathLike = LOCALE_ROOT) -> list[str]:
    """Languages with at least one ``.mo`` catalog under ``root``."""
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir() if any((d / "LC_MESSAGES").glob("*.mo")))


def survey(langs: Iterable[str] = ("eu", "de", "fr", "es"), *, man_root: str | os.PathLike = MAN_ROOT,
           locale_root: str | os.PathLike = LOCALE_ROOT) -> dict[str, Any]:
    """What exists here, cheaply (file counts and on-disk bytes; translations: text bytes)."""
    man = man_page_files(man_root)
    std = stdlib_files()
    out: dict[str, Any] = {
        "man_pages": {"files": len(man), "compressed_bytes": sum(p.stat().st_size for p in man)},
        "python_stdlib": {"files": len(std), "bytes": sum(p.stat().st_size for p in std), "root": str(stdlib_root())},
        "translations": {},
    }
    for lang in langs:
        files = translation_files(lang, locale_root)
        strings = []
        for p in files:
            try:
                strings += catalog_strings(p)
            except DataError:
                pass
        out["translations"][lang] = {
            "catalogs": len(files),
            "strings": len(strings),
            "text_bytes": sum(len(s.encode("utf-8")) + 1 for s in strings),
        }
    return out
