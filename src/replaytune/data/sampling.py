"""A sampled read: what a capped ``prepare`` (``--max-tokens``, the fine-tune's replay cap) reads.

Without a cap a source is read whole, in its sorted order. With a cap, reading the sorted
order would make "2M tokens of a web corpus" mean "its first shards", not a sample of it.
So a capped read is seeded (``seed``, the store's seed):

* **files and shards** (a folder, a glob): the files are taken in a seeded permutation, and up
  to :data:`OPEN_FILES` of them are read at once; each next document comes from one of the open
  files chosen at random with probability proportional to its bytes not yet read, so every
  open file is read down at about the same rate (a file that ends is replaced by the next one of
  the permutation). A folder of up to 256 files is thus sampled in proportion to the size of
  each file; with more files, the cap covers a seeded random subset of them. Within a file,
  documents are read from its start, in order (cheap for every format, gzip included); a
  document and its continuation pieces always stay together.
* **a save_to_disk dataset**: ``Dataset.shuffle(seed)``, a uniform permutation of its rows;
* **a hub dataset** (streaming): ``IterableDataset.shuffle(seed, buffer_size=SHUFFLE_BUFFER)``:
  shards in a seeded order, rows through a shuffle buffer of 10,000 rows.

The document order depends on the seed only, never on the cap, so a store read with a larger
cap starts with the documents of a smaller one (and serves it, see ``prepare``), and the same
settings always rebuild the same store. The store's settings record ``read: sampled`` with these
constants; its stats ``files_read`` (files opened) and ``documents_read``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

OPEN_FILES = 256
SHUFFLE_BUFFER = 10_000


def sample_settings(seed: int) -> dict:
    """What a capped read records in the store's settings (part of its fingerprint)."""
    return {"order": "sampled", "seed": seed, "open_files": OPEN_FILES, "shuffle_buffer": SHUFFLE_BUFFER}


def sampled_files(reader, seed: int) -> Iterator:
    """Documents of ``reader.files`` in the seeded interleave of the module docstring."""
    rng = np.random.default_rng([seed, 0x5A])
    order = iter([reader.files[i] for i in rng.permutation(len(reader.files))])
    active: list[list] = []  # [generator, next document, bytes left]

    def advance(entry) -> None:
        before = reader.bytes_read
        entry[1] = next(entry[0], None)
        entry[2] = max(1, entry[2] - (reader.bytes_read - before))

    def fill() -> None:
        while len(active) < OPEN_FILES:
            nxt = next(order, None)
            if nxt is None:
                return
            path, fmt = nxt
            reader.files_read += 1
            entry = [reader._read_file(path, fmt), None, max(1, path.stat().st_size)]
            advance(entry)
            if entry[1] is not None:
                active.append(entry)

    fill()
    while active:
        left = np.array([e[2] for e in active], dtype=float)
        k = int(rng.choice(len(active), p=left / left.sum()))
        entry = active[k]
        yield entry[1]
        advance(entry)
        while entry[1] is not None and entry[1].cont:  # a long document's pieces stay together
            yield entry[1]
            advance(entry)
        if entry[1] is None:
            active.pop(k)
            fill()
