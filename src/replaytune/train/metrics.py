"""Run records: metrics.jsonl lines, record.json, the resolved config, the trackers, progress bar.

metrics.jsonl has one JSON object per line, written by rank 0 only:

* train: ``{"kind": "train", "step", "phase", "phase_step", "lr", "loss", "train_loss": {src:
  float|null}, "tokens": {src: int}, "epochs": {src: float}, "tokens_per_s", "elapsed_s"}``
  where ``step`` counts optimizer steps completed (global over phases), ``phase_step`` those
  completed in the phase, ``loss``/``train_loss`` are token-weighted means over the updates
  since the previous train line (the step's own loss with ``log_interval: 1``), ``tokens``
  and ``epochs`` are cumulative per source;
* eval: ``{"kind": "eval", "step", "phase", "phase_step", "eval": {src: float|null},
  "epochs": {src: float}}``.

Exact resume: a checkpoint stores the byte length of metrics.jsonl when it was taken; a
resumed run truncates the file to it (dropping lines, or half a line, written after the
checkpoint by the killed process) and appends from there, so the file ends up as if the run
had never stopped. Only ``tokens_per_s`` and ``elapsed_s`` depend on the wall clock.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from replaytune import trackers
from replaytune.errors import DataError
from replaytune.rundir import METRICS

TIMING_KEYS = ("tokens_per_s", "elapsed_s")


def clean(value: float | None) -> float | None:
    """JSON has no NaN/inf: write null instead (a NaN loss stops the run anyway)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line of a metrics.jsonl (of a run directory, or the file itself), the one reader.

    A last line without its newline is a write cut short by a kill: skipped (a resume truncates
    the file back to its checkpoint anyway). Blank lines are skipped. A complete line that is not
    a JSON object is damage: DataError naming the file and line.
    """
    out = []
    p = Path(path)
    if p.is_dir():
        p = p / METRICS
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.endswith("\n") or not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{i}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{p}:{i}: expected a JSON object")
            out.append(row)
    return out


class MetricsLog:
    """Appends metrics lines (rank 0) and mirrors them to the trackers in ``report_to``.

    Knows its byte offset for checkpoints.
    """

    def __init__(self, run_dir: Path, *, enabled: bool, report_to: Sequence[str] = (), run_name: str = "run",
                 config: Mapping[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS
        self.enabled = enabled
        self.report_to = trackers.enabled(report_to) if enabled else []
        self.run_name = run_name
        self.config = dict(config or {})
        self._f = None
        self._trackers: list[trackers.Tracker] = []
        self._scalars = trackers.Scalars()

    def open(self, *, truncate_to: int | None = None, prefix: bytes = b"", resume_step: int | None = None) -> list[str]:
        """Start the file: fresh (with ``prefix``), or cut back to ``truncate_to`` bytes.

        ``resume_step`` (with ``truncate_to``): the checkpoint's step, so that the trackers
        continue their runs. Returns warnings (a file shorter than the checkpoint says it was).
        """
        warnings: list[str] = []
        if not self.enabled:
            return warnings
        if truncate_to is None:
            with open(self.path, "wb") as f:
                f.write(prefix)
        else:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size < truncate_to:
                warnings.append(f"{self.path} has {size} bytes, fewer than the {truncate_to} the checkpoint recorded")
            else:
                os.truncate(self.path, truncate_to)
        self._f = open(self.path, "ab")
        if self.report_to:
            kept = read_metrics(self.path) if self.path.exists() else []
            resumed = truncate_to is not None
            self._trackers = trackers.open_trackers(self.report_to, self.run_dir, name=self.run_name, config=self.config,
                                                    resume_step=(resume_step or 0) if resumed else None)
            # the lines already in the file (a branch's prefix, or those before the checkpoint) go
            # to each tracker that does not hold them yet; the mixture continues from the last one
            new = [t for t in self._trackers if not t.continued]
            for rec in kept:
                values = self._scalars(rec)
                for t in new:
                    t.log(rec["step"], values)
        return warnings

    @property
    def offset(self) -> int:
        return self._f.tell() if self._f is not None else 0

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        assert self._f is not None, "MetricsLog.open() first"
        self._f.write((json.dumps(record) + "\n").encode())
        self._f.flush()  # survives SIGKILL (the page cache does); fsync is left to the OS
        self._mirror(record)

    def _mirror(self, record: Mapping[str, Any]) -> None:
        if self._trackers:
            values = self._scalars(record)
            for t in self._trackers:
                t.log(record["step"], values)

    def close(self, ok: bool = True) -> None:
        """Close the file and the trackers (``ok``: False marks the trackers' runs failed)."""
        if self._f is not None:
            self._f.close()
            self._f = None
        opened, self._trackers = self._trackers, []
        for t in opened:
            t.close(ok)


def prefix_lines(source: Path, nbytes: int, rename) -> bytes:
    """The first ``nbytes`` of another run's metrics.jsonl, each line passed through ``rename``.

    Used when a run branches from another run's checkpoint: the shared steps' lines are the
    same numbers, relabelled with this run's phase names.
    """
    if not source.is_file():
        return b""
    with open(source, "rb") as f:
        head = f.read(nbytes)
    out = []
    for raw in head.splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            break
        rec = rename(json.loads(raw))
        if rec is not None:
            out.append((json.dumps(rec) + "\n").encode())
    return b"".join(out)


class Progress:
    """A tqdm bar with step, loss and tokens/s; tqdm itself shows the time left."""

    def __init__(self, total: int, initial: int, *, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, smoothing=0.1)

    def update(self, loss: float | None, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix({"loss": f"{loss:.4f}" if loss is not None else "-", "tok/s": f"{tokens_per_s:,.0f}"}, refresh=False)
            self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
