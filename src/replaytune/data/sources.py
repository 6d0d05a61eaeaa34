"""Sources: where documents come from, read streaming, with one-line errors for bad input.

A :class:`SourceSpec` names a source and says how to read it; :class:`SourceReader` turns it
into a stream of :class:`Document` records without ever holding the corpus in memory.
:func:`detect_kind` tells text, chat and instruction data apart by the first record's fields,
looking at the very inputs the reader will read.

Inputs and how each is read
---------------------------
* ``.txt`` (also ``.text``, ``.md``): a file is one document, or, with ``paragraphs=True``,
  blank-line-separated paragraphs are documents. Read line by line.
* ``.jsonl``: one JSON object per line; the document is field ``text`` (``text_field``),
  ``messages`` (chat) or ``prompt``/``completion`` (instruction). Blank lines are skipped.
* ``.parquet``: read in record batches of 1,024 rows, only the needed columns.
* ``.gz`` of ``.txt`` / ``.jsonl``: decompressed on the fly.
* a directory (walked recursively, sorted, hidden entries skipped) or a glob (sorted); each
  file is read by its suffix, or all by ``format``. A capped read (``prepare --max-tokens``)
  samples instead: see :mod:`~replaytune.data.sampling`.
* a directory written by ``datasets`` ``save_to_disk`` (``Dataset`` or ``DatasetDict``).
* a Hugging Face hub dataset (``format="hf"``, or an ``owner/name`` that is not a local path):
  ``datasets.load_dataset(..., streaming=True)``.

Decoding: bytes that are not UTF-8 are replaced by U+FFFD and counted
(``reader.replaced_bytes``); with ``strict=True`` the first one is an error naming file and line.

Documents longer than :data:`PIECE_CHARS` (65,536) characters are yielded in pieces (``cont=True`` on
every piece after the first), cut only after a newline that sits between two non-space
characters. A byte-level BPE pre-tokenizer (GPT-2 / Llama-3 style regex) always splits there,
so tokenizing the pieces one by one gives exactly the tokens of the whole document, while
memory stays bounded by the piece size, not the file size.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from replaytune.data.sampling import SHUFFLE_BUFFER, sampled_files
from replaytune.errors import ConfigError, DataError
from replaytune.hub import HUB_ID

KINDS = ("text", "chat", "instruction")
FORMATS = ("auto", "txt", "jsonl", "parquet", "arrow", "hf")
# Split documents longer than this into pieces. The tokenizer's working memory grows with the
# longest sequence it encodes (~180 bytes per character measured for one 1M-character string,
# byte-level BPE): 64k-character pieces keep a 100 MB one-document file to ~100 MB over the
# fixed cost, at no loss of speed (a 2 MB batch still holds 32 pieces for the thread pool).
PIECE_CHARS = 1 << 16
_SUFFIXES = {".txt": "txt", ".text": "txt", ".md": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
_GLOB_CHARS = re.compile(r"[*?\[]")
# A safe cut: just after "\n" that has a non-space character on both sides.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


@dataclass(frozen=True)
class SourceSpec:
    """How to read one source. Only ``path`` is required.

    Attributes:
        path: file, directory, glob, ``save_to_disk`` directory or hub dataset name.
        name: the source's name (default: the file or directory name without suffix).
        format: ``auto`` (by suffix), ``txt``, ``jsonl``, ``parquet``, ``arrow``
            (``save_to_disk``) or ``hf`` (``datasets.load_dataset``, streaming).
        kind: ``text`` (LM loss on every token), ``chat`` (``messages``: loss on assistant
            turns) or ``instruction`` (``prompt``/``completion``: loss on the completion).
        text_field / messages_field / prompt_field / completion_field: record fields.
        paragraphs: ``.txt`` only: blank-line-separated paragraphs are documents.
        strict: undecodable bytes (and, in ``prepare``, over-long examples) are errors
            instead of counted fixes.
        split / hf_config / revision: which split, configuration and revision of a
            ``datasets`` source.
    """

    path: str
    name: str = ""
    format: str = "auto"
    kind: str = "text"
    text_field: str = "text"
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    paragraphs: bool = False
    strict: bool = False
    split: str = "train"
    hf_config: str | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"source kind '{self.kind}': must be one of {', '.join(KINDS)}")
        if self.format not in FORMATS:
            raise ConfigError(f"source format '{self.format}': must be one of {', '.join(FORMATS)}")
        if not str(self.path):
            raise ConfigError("source path is empty")

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        base = os.path.basename(str(self.path).rstrip("/")) or str(self.path)
        for suffix in (".gz", ".jsonl", ".txt", ".text", ".md", ".parquet"):
            base = base.removesuffix(suffix)
        return base or "source"

    def read_settings(self) -> dict[str, Any]:
        """The settings that change which documents are read (part of a store's fingerprint)."""
        d = asdict(self)
        d.pop("path")
        d.pop("name")
        return d


class Document(NamedTuple):
    """One document, or one piece of a long text document.

    ``content`` is a ``str`` (text), a list of ``{"role", "content"}`` dicts (chat) or a
    ``(prompt, completion)`` pair (instruction). ``where`` names file and line (or row) for
    error messages. ``cont`` is True when this piece continues the previous document.
    """

    where: str
    content: Any
    cont: bool = False


def split_long(text: str, limit: int | None = None) -> list[str]:
    """Cut ``text`` into pieces of about ``limit`` (default PIECE_CHARS) characters at safe newlines."""
    limit = PIECE_CHARS if limit is None else limit
    if len(text) <= limit:
        return [text]
    pieces, start = [], 0
    while len(text) - start > limit:
        m = _SAFE_CUT.search(text, start + limit)
        if m is None:
            break
        pieces.append(text[start : m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def _count_bad_bytes(raw: bytes) -> int:
    """Bytes that ``decode('utf-8', 'replace')`` replaces (the strict decoder's error spans)."""
    bad, pos = 0, 0
    while True:
        try:
            raw[pos:].decode("utf-8")
            return bad
        except UnicodeDecodeError as exc:
            bad += exc.end - exc.start
            pos += exc.end


class SourceReader:
    """Resolves a :class:`SourceSpec` to its inputs and streams its documents.

    Counters filled while reading: ``replaced_bytes`` (undecodable bytes replaced),
    ``empty_docs`` (documents with no text, skipped), ``bytes_read`` (raw input bytes, for
    progress), ``docs_read``. ``skipped_files`` lists files in a directory whose suffix is
    not a known format (read them with an explicit ``format``).
    """

    def __init__(self, spec: SourceSpec | str):
        self.spec = spec if isinstance(spec, SourceSpec) else SourceSpec(str(spec))
        self.replaced_bytes = 0
        self.empty_docs = 0
        self.bytes_read = 0
        self.docs_read = 0
        self.skipped_files: list[str] = []
        self.sample_seed: int | None = None  # set: a capped, sampled read (data/sampling.py)
        self.files_read = 0
        self.files: list[tuple[Path, str]] = []  # (path, format) for file sources
        self.root: Path | None = None
        self.mode = self._resolve()

    # ------------------------------------------------------------------ resolution
    def _resolve(self) -> str:
        spec, raw = self.spec, str(self.spec.path)
        if spec.format == "hf":
            return "hf"
        p = Path(raw).expanduser()
        if p.is_dir():
            if spec.format in ("auto", "arrow") and _is_saved_dataset(p):
                self.root = p
                return "arrow"
            if spec.format == "arrow":
                raise DataError(f"{p}: not a `datasets` save_to_disk directory (no dataset_info.json/state.json)")
            self.root = p
            self.files = self._walk(p)
            return "files"
        if p.is_file():
            self.root = p.parent
            self.files = [(p, self._file_format(p, explicit=True))]
            return "files"
        if _GLOB_CHARS.search(raw):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(raw), recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise DataError(f"{raw}: no files match this pattern")
            self.root = Path(os.path.commonpath([str(m.parent) for m in matches]))
            self.files = [(m, self._file_format(m, explicit=True)) for m in matches]
            return "files"
        if spec.format == "auto" and HUB_ID.match(raw) and Path(raw).suffix.lower() not in _SUFFIXES:
            return "hf"
        raise DataError(f"{raw}: no such file or directory")

    def _file_format(self, p: Path, *, explicit: bool) -> str:
        if self.spec.format in ("txt", "jsonl", "parquet"):
            return self.spec.format
        name = p.name.lower().removesuffix(".gz")
        fmt = _SUFFIXES.get(Path(name).suffix)
        if fmt is None or (fmt == "parquet" and p.name.lower().endswith(".gz")):
            if not explicit:
                return ""
            raise DataError(
                f"{p}: unknown format '{''.join(p.suffixes) or p.name}' (known: .txt, .jsonl, .parquet, "
                f".txt.gz, .jsonl.gz); pass --format txt|jsonl|parquet to read it anyway"
            )
        return fmt

    def _walk(self, root: Path) -> list[tuple[Path, str]]:
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                path = Path(dirpath) / fn
                fmt = self._file_format(path, explicit=False)
                if fmt:
                    found.append((path, fmt))
                else:
                    self.skipped_files.append(str(path.relative_to(root)))
        found.sort(key=lambda t: str(t[0].relative_to(root)))
        if not found:
            extra = ""
            if self.skipped_files:
                sfx = sorted({Path(s).suffix or Path(s).name for s in self.skipped_files})[:5]
                extra = f" ({len(self.skipped_files)} other files, e.g. {', '.join(sfx)}; pass --format txt to read them as text)"
            raise DataError(f"{root}: empty source: no .txt, .jsonl or .parquet files{extra}")
        return found

    # ------------------------------------------------------------------ identity
    @property
    def total_bytes(self) -> int:
        if self.mode == "files":
            return sum(p.stat().st_size for p, _ in self.files)
        if self.mode == "arrow":
            return sum(f.stat().st_size for f in self.root.rglob("*.arrow"))
        return 0

    def content_fingerprint(self, *, hash_bytes: bool = True) -> dict[str, Any]:
        """What identifies the source's content: every input file's bytes, or a hub identity.

        ``hash_bytes=False``: files by size and modification time only (a capped read of a
        large source must not read it whole to identify it).

        Files: ``{"files": [{"path", "bytes", "sha256"}], "sha256": ...}`` with paths relative
        to the source root, so moving a source leaves it up to date. Hub datasets cannot be
        hashed without downloading them, so they are identified by name, configuration, split
        and revision (pin ``revision`` to make that exact).
        """
        if self.mode == "files":
            files = [self._file_entry(p, p.relative_to(self.root), hash_bytes) for p, _ in self.files]
        elif self.mode == "arrow":
            files = [self._file_entry(f, f.relative_to(self.root), hash_bytes) for f in sorted(self.root.rglob("*")) if f.is_file()]
        elif Path(self.spec.path).expanduser().exists():  # a local stand-in for a hub dataset
            local = Path(self.spec.path).expanduser()
            found = [local] if local.is_file() else sorted(f for f in local.rglob("*") if f.is_file())
            files = [self._file_entry(f, f.relative_to(local.parent if local.is_file() else local), hash_bytes) for f in found]
        else:
            ident = {"hub": str(self.spec.path), "config": self.spec.hf_config, "split": self.spec.split,
                     "revision": self.spec.revision}
            return {"hub": ident, "sha256": hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()}
        total = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        return {"files": files, "sha256": total}

    @staticmethod
    def _file_entry(path: Path, rel: Path, hash_bytes: bool = True) -> dict[str, Any]:
        st = path.stat()
        if not hash_bytes:
            return {"path": rel.as_posix(), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        return {"path": rel.as_posix(), "bytes": st.st_size, "sha256": digest}

    # ------------------------------------------------------------------ peeking
    def first_fields(self) -> tuple[list[str], str] | None:
        """Field names of the source's first record, and where it is (for error messages).

        None when there is no record to look at: the first input with content is plain text,
        or the source is a hub dataset (streaming one just to peek is not worth a download).
        """
        if self.mode == "arrow":
            ds, where = self._saved_split()
            return list(ds.column_names), where
        for path, fmt in self.files:
            if fmt == "txt":
                return None
            if fmt == "parquet":
                return list(_open_parquet(path).schema_arrow.names), str(path)
            lines = self._lines(path)
            try:
                for lineno, line in lines:
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise DataError(f"{path}:{lineno}: not a JSON line; fix it or pass --format txt") from None
                    return (list(row) if isinstance(row, dict) else []), str(path)
            finally:
                lines.close()
        return None

    # ------------------------------------------------------------------ reading
    def documents(self) -> Iterator[Document]:
        """Every document of the source, in a deterministic order; DataError if there are none."""
        self.bytes_read = 0
        self.docs_read = 0
        self.replaced_bytes = 0
        self.empty_docs = 0
        if self.mode == "files" and self.sample_seed is not None:
            gen = sampled_files(self, self.sample_seed)
        elif self.mode == "files":
            self.files_read = len(self.files)
            gen = (d for p, fmt in self.files for d in self._read_file(p, fmt))
        elif self.mode == "arrow":
            gen = self._read_saved()
        else:
            gen = self._read_hub()
        for doc in gen:
            if not doc.cont:
                self.docs_read += 1
            yield doc
        if self.docs_read == 0:
            where = self.spec.path if self.mode != "files" else ", ".join(str(p) for p, _ in self.files[:3])
            more = f" and {len(self.files) - 3} more" if len(self.files) > 3 else ""
            raise DataError(f"source '{self.spec.display_name}': empty source: no documents in {where}{more}")

    def texts(self) -> Iterator[str]:
        """Plain text of every document (chat: the message contents; instruction: both fields)."""
        for doc in self.documents():
            c = doc.content
            if self.spec.kind == "text":
                yield c
            elif self.spec.kind == "chat":
                yield "\n".join(m.get("content") or "" for m in c if isinstance(m, dict))
            else:
                yield f"{c[0]}\n{c[1]}"

    def _read_file(self, path: Path, fmt: str) -> Iterator[Document]:
        if fmt == "parquet":
            yield from self._read_parquet(path)
            return
        if fmt == "txt" and self.spec.kind != "text":
            raise DataError(f"{path}: a .txt file holds plain text; kind '{self.spec.kind}' needs .jsonl, .parquet or a dataset")
        lines = self._lines(path)
        if fmt == "jsonl":
            for lineno, line in lines:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path}:{lineno}: malformed JSON line ({exc.msg}, column {exc.colno}); each line must be one JSON object"
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                yield from self._row_docs(row, f"{path}:{lineno}")
        else:
            yield from self._text_docs(path, lines, self.spec.paragraphs)

    def _lines(self, path: Path) -> Iterator[tuple[int, str]]:
        """(line number, decoded line) of a text or gzip file; counts or refuses bad bytes."""
        gz = path.name.lower().endswith(".gz")
        with open(path, "rb") as raw_f:
            f = gzip.GzipFile(fileobj=raw_f, mode="rb") if gz else raw_f
            last = 0
            try:
                for lineno, raw in enumerate(f, 1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        if self.spec.strict:
                            raise DataError(
                                f"{path}:{lineno}: undecodable bytes (not UTF-8) at byte {exc.start} of the line; "
                                f"fix the file, or drop --strict to replace them with U+FFFD (counted)"
                            ) from None
                        self.replaced_bytes += _count_bad_bytes(raw)
                        line = raw.decode("utf-8", errors="replace")
                    if lineno == 1 and line.startswith("\ufeff"):
                        line = line[1:]
                    if lineno % 256 == 0:
                        pos = raw_f.tell()
                        self.bytes_read += pos - last
                        last = pos
                    yield lineno, line
            except (OSError, EOFError) as exc:
                if gz:
                    raise DataError(f"{path}: not a readable gzip file ({exc})") from None
                raise
            self.bytes_read += raw_f.tell() - last

    def _text_docs(self, path: Path, lines: Iterator[tuple[int, str]], paragraphs: bool) -> Iterator[Document]:
        """Documents of a text file: the whole file, or each blank-line-separated paragraph.

        A document is emitted in pieces once ~PIECE_CHARS are buffered, cut before a line that
        starts with a non-space when the previous line ends "X\\n" (X not a space): a cut
        the byte-level pre-tokenizer makes anyway, so memory stays bounded without changing tokens.
        """
        buf: list[str] = []
        size, start, cont, prev = 0, 0, False, ""
        for lineno, line in lines:
            if paragraphs and not line.strip():
                if buf:
                    yield Document(f"{path}:{start}", "".join(buf).rstrip("\r\n"), cont)
                buf, size, cont = [], 0, False
                continue
            if not buf and not cont:
                start = lineno
            if size >= PIECE_CHARS and line[:1].strip() and len(prev) >= 2 and prev[-1] == "\n" and prev[-2].strip():
                yield Document(f"{path}:{start}" if paragraphs else str(path), "".join(buf), cont)
                buf, size, cont = [], 0, True
            buf.append(line)
            size += len(line)
            prev = line
        text = "".join(buf)
        where = f"{path}:{start}" if paragraphs else str(path)
        if paragraphs:
            if buf:
                yield Document(where, text.rstrip("\r\n"), cont)
        elif cont:
            yield Document(where, text, True)
        elif text.strip():
            yield Document(where, text)
        else:
            self.empty_docs += 1

    def _row_docs(self, row: dict, where: str) -> Iterator[Document]:
        """The document held by one record, by kind; missing or mistyped fields are errors."""
        spec = self.spec
        if spec.kind == "text":
            text = _field(row, spec.text_field, where, "--text-field")
            if not isinstance(text, str):
                raise DataError(f"{where}: field '{spec.text_field}' is {type(text).__name__}, not a string")
            if not text.strip():
                self.empty_docs += 1
                return
            pieces = split_long(text)
            for i, piece in enumerate(pieces):
                yield Document(where, piece, i > 0)
        elif spec.kind == "chat":
            msgs = _field(row, spec.messages_field, where, "--messages-field")
            yield Document(where, msgs)
        else:
            prompt = _field(row, spec.prompt_field, where, "--prompt-field")
            completion = _field(row, spec.completion_field, where, "--completion-field")
            for fname, v in ((spec.prompt_field, prompt), (spec.completion_field, completion)):
                if not isinstance(v, str):
                    raise DataError(f"{where}: field '{fname}' is {type(v).__name__}, not a string")
            yield Document(where, (prompt, completion))

    def _columns(self) -> list[str]:
        s = self.spec
        return {"text": [s.text_field], "chat": [s.messages_field], "instruction": [s.prompt_field, s.completion_field]}[s.kind]

    def _check_columns(self, names: list[str] | None, where: str) -> None:
        if names is None:
            return
        flag = {"text": "--text-field", "chat": "--messages-field", "instruction": "--prompt-field/--completion-field"}
        for col in self._columns():
            if col not in names:
                raise DataError(
                    f"{where}: no field '{col}' (fields: {', '.join(sorted(names)[:12])}); choose one with {flag[self.spec.kind]}"
                )

    def _read_parquet(self, path: Path) -> Iterator[Document]:
        pf = _open_parquet(path)
        self._check_columns(pf.schema_arrow.names, str(path))
        size, rows = path.stat().st_size, max(1, pf.metadata.num_rows)
        i, done = 0, 0
        for batch in pf.iter_batches(batch_size=1024, columns=self._columns()):
            for row in batch.to_pylist():
                yield from self._row_docs(row, f"{path}[row {i}]")
                i += 1
            new = size * i // rows
            self.bytes_read += new - done
            done = new

    def _saved_split(self):
        """The ``save_to_disk`` dataset (its ``split`` for a DatasetDict) and how to name it in errors."""
        import datasets

        ds = datasets.load_from_disk(str(self.root))
        where = str(self.root)
        if isinstance(ds, datasets.DatasetDict):
            if self.spec.split not in ds:
                raise DataError(f"{where}: no split '{self.spec.split}' (splits: {', '.join(ds)}); choose one with --split")
            ds = ds[self.spec.split]
            where = f"{where}[{self.spec.split}]"
        return ds, where

    def _read_saved(self) -> Iterator[Document]:
        ds, where = self._saved_split()
        self._check_columns(ds.column_names, where)
        if self.sample_seed is not None:
            ds = ds.shuffle(seed=self.sample_seed)
        total, rows, done, i = self.total_bytes, max(1, len(ds)), 0, 0
        for batch in ds.select_columns(self._columns()).iter(batch_size=1000):
            cols = list(batch)
            for j in range(len(batch[cols[0]])):
                yield from self._row_docs({c: batch[c][j] for c in cols}, f"{where}[row {i}]")
                i += 1
            new = total * i // rows
            self.bytes_read += new - done
            done = new

    def _read_hub(self) -> Iterator[Document]:
        import datasets

        from replaytune.hub import require_hub

        spec = self.spec
        require_hub("dataset", str(spec.path))  # one quick probe, not half a minute of retries
        try:
            ds = datasets.load_dataset(
                str(spec.path), spec.hf_config, split=spec.split, streaming=True, revision=spec.revision
            )
        except Exception as exc:  # datasets raises many types (not found, offline, bad config)
            msg = (str(exc).splitlines() or [""])[0][:200]
            raise DataError(
                f"{spec.path}: not a local file, and loading it as a Hugging Face dataset failed "
                f"({type(exc).__name__}: {msg}); check the name and --split, and that you are online"
            ) from None
        self._check_columns(getattr(ds, "column_names", None), str(spec.path))
        if self.sample_seed is not None:
            ds = ds.shuffle(seed=self.sample_seed, buffer_size=SHUFFLE_BUFFER)
        for i, row in enumerate(ds):
            doc_where = f"{spec.path}[row {i}]"
            self.bytes_read += sum(len(v) for v in row.values() if isinstance(v, str))
            yield from self._row_docs(row, doc_where)


def _field(row: dict, name: str, where: str, flag: str) -> Any:
    if name not in row:
        keys = ", ".join(sorted(map(str, row))[:12]) or "none"
        raise DataError(f"{where}: no field '{name}' (fields: {keys}); choose one with {flag}")
    return row[name]


def _is_saved_dataset(p: Path) -> bool:
    return (p / "dataset_dict.json").is_file() or ((p / "state.json").is_file() and (p / "dataset_info.json").is_file())


def _open_parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def detect_kind(source: SourceSpec | SourceReader) -> str:
    """The kind a source's first record shows: ``messages`` -> chat, ``prompt`` and
    ``completion`` -> instruction, ``text`` -> text (field names as the spec gives them).

    For callers that let the user leave the kind out (``replaytune finetune``). The source is
    resolved as :class:`SourceReader` reads it (same walk, globs, saved datasets and formats),
    so the record looked at is the first one the reader will yield; ``spec.kind`` is not
    consulted. Pass the reader itself to resolve the source once. Plain text, and hub datasets
    (nothing local to look at), are text: the reader then names a missing field.
    """
    reader = source if isinstance(source, SourceReader) else SourceReader(source)
    if reader.mode == "hf" and Path(reader.spec.path).expanduser().exists():
        try:  # a local stand-in for a hub dataset: its files show the kind
            reader = SourceReader(replace(reader.spec, format="auto"))
        except DataError:
            return "text"
    found = reader.first_fields()
    if found is None:
        return "text"
    names, where = found
    return _kind_from_fields(names, reader.spec, where)


def _kind_from_fields(names: list[str], spec: SourceSpec, where: str) -> str:
    if spec.messages_field in names:
        return "chat"
    if spec.prompt_field in names and spec.completion_field in names:
        return "instruction"
    if spec.text_field in names:
        return "text"
    raise DataError(
        f"{where}: cannot tell the kind of this source from its fields ({', '.join(sorted(names)[:8])}); "
        f"give it (--target-kind / --replay-kind text|chat|instruction) or name the field"
    )


def open_source(spec: SourceSpec | str) -> SourceReader:
    """Resolve a source (DataError for a missing path, an unknown format, an empty directory)."""
    return SourceReader(spec)
