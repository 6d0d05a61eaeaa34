"""Atomic file-system writes shared by every writer (stores, tokenizers, models, records).

A directory is built under a temporary name beside its destination, then swapped in with
renames: the old one (if any) moves aside, the new one takes its name, the old one is
deleted. A reader never sees a half-written directory, and a crash before the swap leaves
the old one in place.

A kill can still strand what it was building: ``.NAME.tmp-PID-*`` (a build not finished) or
``.NAME.old-PID`` (between the two renames of a swap, or before the old copy was deleted).
:func:`recover_dir` puts such a destination right: a missing destination gets its old copy
back (complete by construction; the interrupted build is redone by whoever asks again), and
leftovers of processes that are no longer alive are deleted. Every writer calls it through
:func:`temp_dir` before building, and readers of stores call it when the path is missing.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(dest: Path) -> list[tuple[str, int | None, Path]]:
    """(kind "tmp" or "old", owner pid or None, path) of the temporaries beside ``dest``."""
    out = []
    if not dest.parent.is_dir():
        return out
    for p in dest.parent.glob(f".{glob.escape(dest.name)}.*"):
        m = _LEFTOVER.match(p.name[len(dest.name) + 2:])
        if m and p.is_dir():
            out.append((m.group(1), int(m.group(2)) if m.group(2) else None, p))
    return out


_LEFTOVER = re.compile(r"^(tmp|old)-(?:(\d+)(?:-|$))?")


def recover_dir(dest: str | os.PathLike) -> list[Path]:
    """Undo what a killed writer left around ``dest``; returns the paths removed or restored.

    A leftover whose owner is alive (another process building the same path) is left alone.
    """
    dest = Path(dest)
    dead = [(kind, p) for kind, pid, p in _leftovers(dest) if pid is None or not _alive(pid)]
    touched = []
    if not dest.exists():
        olds = sorted((p for kind, p in dead if kind == "old"), key=lambda p: p.stat().st_mtime)
        if olds:
            os.rename(olds[-1], dest)  # the swap was cut between its renames: the old copy returns
            touched.append(olds[-1])
    for kind, p in dead:
        if p.exists():
            shutil.rmtree(p, ignore_errors=True)
            touched.append(p)
    return touched


def temp_dir(dest: str | os.PathLike) -> Path:
    """A fresh ``.NAME.tmp-PID-*`` folder beside ``dest`` to build into (after :func:`recover_dir`)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(dest)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{os.getpid()}-", dir=dest.parent))


def replace_dir(tmp: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move the finished directory ``tmp`` to ``dest``, replacing what was there."""
    tmp, dest = Path(tmp), Path(dest)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.rename(dest, old)
    os.rename(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_TEMP_DIR = re.compile(r"^\.(?P<name>.+?)\.(?:tmp|old)-\d+(?:-[^/]*)?$")  # temp_dir / replace_dir
_TEMP_STEP = re.compile(r"^\.(?:tmp|old)-(?P<name>step-\d{8})$")  # a checkpoint being written or deleted
_TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}$")  # write_bytes' mkstemp name


def public_path(path: str | os.PathLike) -> str:
    """``path`` as the user knows it, for messages: each writer's temporary shown as the name it becomes.

    ``out/.store.tmp-18081-x1y2/train`` -> ``out/store/train``; ``run/checkpoints/.tmp-step-00000004``
    -> ``run/checkpoints/step-00000004``; a file's ``.record.json.ab12cd34`` -> ``record.json``.
    """
    parts = list(Path(path).parts)
    for i, part in enumerate(parts):
        m = _TEMP_DIR.match(part) or _TEMP_STEP.match(part) or (_TEMP_FILE.match(part) if i == len(parts) - 1 else None)
        if m:
            parts[i] = m["name"]
    return str(Path(*parts)) if parts else str(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file through a temporary name in its directory (fsynced, then renamed).

    A crash leaves either the old file or the new one, never a partial one, and no temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")
