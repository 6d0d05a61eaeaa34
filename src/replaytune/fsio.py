"""Atomic file-system writes shared by every writer (stores, tokenizers, models, records).

A directory is built under a temporary name beside its destination, then swapped in with
renames: the old one (if any) moves aside, the new one takes its name, the old one is
deleted. A reader never sees a half-written directory, and a crash before the swap leaves
the old one in place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


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


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary name in the same directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
