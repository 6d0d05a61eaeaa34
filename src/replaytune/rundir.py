"""The layout of a run directory, and the two questions asked of it: finished? resumable?

One run of the training loop writes into ``out_dir``::

    config.yaml                   the resolved run config (written at the start)
    metrics.jsonl                 a line per logged step and per evaluation
    checkpoints/step-00001234/    complete checkpoints (state.json written inside, then renamed)
    model/                        save_pretrained output
    record.json                   written last: its presence means the run finished

Every module that reads or writes these paths takes the names from here (the loop, the
checkpoint code, the sweep executor, the study, the report, the fine-tuning command), so a
change of layout is a change of this file. Nothing here imports torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RECORD = "record.json"
CHECKPOINTS = "checkpoints"
MODEL = "model"
STATE = "state.json"  # inside a checkpoint folder: written before the folder is renamed into place

_STEP = re.compile(r"^step-(\d{8})$")


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def step_of(name: str) -> int | None:
    """The step of a checkpoint folder name, or None for anything else (temporaries too)."""
    m = _STEP.match(name)
    return int(m.group(1)) if m else None


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / step_name(step)


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints of a run, ascending."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    steps = [step_of(p.name) for p in root.iterdir()]
    return sorted(s for s in steps if s is not None and (root / step_name(s) / STATE).is_file())


def is_finished(run_dir: str | Path) -> bool:
    """The run wrote its record (the loop writes record.json last)."""
    return (Path(run_dir) / RECORD).is_file()


def is_started(run_dir: str | Path) -> bool:
    """Something of a run is on disk (it may have been killed before its first checkpoint)."""
    p = Path(run_dir)
    return any((p / name).exists() for name in (CONFIG, METRICS, CHECKPOINTS, RECORD))


def is_resumable(run_dir: str | Path) -> bool:
    """Not finished, and at least one complete checkpoint to continue from."""
    return not is_finished(run_dir) and bool(checkpoint_steps(run_dir))


def read_record(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / RECORD).read_text(encoding="utf-8"))
