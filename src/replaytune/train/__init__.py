"""The training engine: one loop for every setting, exact resume, prefix sharing, DDP/FSDP.

Public API::

    train(cfg, *, resume=False, init_from=None, save_at=(), out_dir=None, callbacks=()) -> record
    step_signatures(cfg, *, upto=None, precision=None) -> list[str]   # prefix fingerprints
    prefix_fingerprint(cfg, k, *, precision=None) -> str
    shared_prefix(a, b) -> int                                         # longest common prefix
    RunPlan(cfg, stores)                                               # what every step does

Importing this package does not import torch (the command line stays fast).
"""

from replaytune.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMismatch,
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    open_checkpoint,
)
from replaytune.train.loop import Trainer, TrainingError, train
from replaytune.train.metrics import read_metrics
from replaytune.train.plan import RunPlan, open_stores, phase_seed, prefix_fingerprint, shared_prefix, step_signatures

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointMismatch",
    "RunPlan",
    "Trainer",
    "TrainingError",
    "find_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "open_checkpoint",
    "open_stores",
    "phase_seed",
    "prefix_fingerprint",
    "read_metrics",
    "shared_prefix",
    "step_signatures",
    "train",
]
