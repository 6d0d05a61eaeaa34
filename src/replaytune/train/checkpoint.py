"""Atomic checkpoints, the checks that decide whether one may continue a run, and pruning.

Layout: ``out_dir/checkpoints/step-00001234/`` holds

* ``model.safetensors`` - the weights (only the trainable ones for LoRA: the frozen base is
  rebuilt from ``model.pretrained``); tensors shared between names (tied embeddings) are
  stored once and their other names listed in the file's metadata;
* ``optimizer.pt`` - the AdamW state dict (under FSDP both live in ``dcp/``, a sharded
  ``torch.distributed.checkpoint`` that can be reloaded with any number of ranks);
* ``rng-<rank>.pt`` - torch, CUDA, numpy and Python RNG states of every rank;
* ``history.json`` - per step before the checkpoint: LR, optimizer resets, batch hashes;
* ``state.json`` - step, prefix fingerprint, the plan's base, config and data fingerprints,
  offset of metrics.jsonl, logging accumulators, elapsed time, execution settings.

There is no separate LR-scheduler state: the LR is a pure function of (phase, phase step),
which the step determines.

Atomicity: everything is written into ``.tmp-step-XXXXXXXX``, fsynced, and renamed to its
final name in one ``os.rename``; a crash (or a failed write, which removes the temporary
folder) never leaves a half checkpoint under a ``step-*`` name. Only complete checkpoints
are listed. After each save all but the newest ``keep`` are deleted, except pinned ones
(``checkpoint.save_at``: branch points for other runs).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from replaytune import rundir
from replaytune.errors import DataError, ReplaytuneError
from replaytune.rundir import STATE, step_name
from replaytune.train.distributed import Dist
from replaytune.train.plan import RunPlan, base_signature, chain

DIRNAME = rundir.CHECKPOINTS


class CheckpointError(ReplaytuneError):
    """A checkpoint could not be written (disk full, permissions) or read."""


class CheckpointMismatch(ReplaytuneError):
    """A checkpoint was made by a run whose first steps differ from this one."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]
    _history: dict[str, Any] | None = field(default=None, repr=False)

    def history(self) -> dict[str, Any]:
        if self._history is None:
            self._history = json.loads((self.path / "history.json").read_text())
        return self._history

    @property
    def run_dir(self) -> Path:
        return self.path.parent.parent


def open_checkpoint(path: str | Path) -> Checkpoint:
    """A complete checkpoint folder (``.../checkpoints/step-XXXXXXXX``)."""
    p = Path(path)
    state_file = p / STATE
    if not p.is_dir():
        raise DataError(f"checkpoint not found: {p} (expected a folder out_dir/checkpoints/step-XXXXXXXX)")
    if not state_file.is_file():
        raise DataError(f"{p}: not a complete checkpoint (no state.json)")
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{state_file}: unreadable ({exc})") from None
    return Checkpoint(p, int(state["step"]), state)


def list_checkpoints(run_dir: str | Path) -> list[Checkpoint]:
    """Complete checkpoints of a run, oldest first."""
    return [open_checkpoint(rundir.checkpoint_dir(run_dir, s)) for s in rundir.checkpoint_steps(run_dir)]


def latest_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def find_checkpoint(run_dir: str | Path, step: int) -> Checkpoint:
    return open_checkpoint(rundir.checkpoint_dir(run_dir, step))


# ------------------------------------------------------------------------------------------
# Weights with shared tensors
# ------------------------------------------------------------------------------------------


def _save_weights(state_dict: Mapping[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    tensors, aliases, seen = {}, {}, {}
    for name, t in state_dict.items():
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride())) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    save_file(tensors, str(path), metadata={"aliases": json.dumps(aliases)})


def _load_weights(path: Path, device: str) -> dict[str, Any]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
        sd = load_file(str(path), device=device)
    except Exception as exc:  # safetensors raises its own error type for a truncated or corrupt file
        raise CheckpointError(
            f"{path}: unreadable ({type(exc).__name__}: {exc}); remove the folder {path.parent} to resume "
            f"from the checkpoint before it"
        ) from None
    for alias, original in aliases.items():
        sd[alias] = sd[original]
    return sd


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------
# Save
# ------------------------------------------------------------------------------------------


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model,
    optimizer,
    dist: Dist,
    parallel: str,
    trainable_only: bool,
    state: Mapping[str, Any],
    history: Mapping[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically (collective under DDP/FSDP); prune old ones."""
    import torch

    root = Path(run_dir) / DIRNAME
    final = root / step_name(step)
    tmp = root / f".tmp-{final.name}"
    fsdp = dist.enabled and parallel == "fsdp"
    error: BaseException | None = None
    if dist.is_main:
        try:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        except OSError as exc:
            error = exc
    if dist.any(error is not None):
        raise CheckpointError(f"could not create the checkpoint of step {step} under {root} ({_why(error)}); "
                              f"check that out_dir is writable")
    try:
        if fsdp:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            msd, osd = get_state_dict(model, optimizer)
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "dcp"))
        elif dist.is_main:
            sd = model.state_dict()
            if trainable_only:
                names = _trainable_names(model)
                sd = {k: v for k, v in sd.items() if k in names}
            _save_weights(sd, tmp / "model.safetensors")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / f"rng-{dist.rank}.pt")
        if dist.is_main:
            (tmp / "history.json").write_text(json.dumps(dict(history)))
            (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=1))  # last: marks complete
            _fsync_tree(tmp)
    except Exception as exc:  # noqa: BLE001 - any failure must leave nothing behind
        error = exc
    if dist.any(error is not None):
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        raise CheckpointError(
            f"could not write the checkpoint of step {step} under {root} ({_why(error)}); "
            f"nothing of it was kept; {_what_is_kept(run_dir, step)}"
        )
    if dist.is_main:
        if final.exists():  # the same step saved again (e.g. a branch point re-saved)
            old = root / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, final)
        fd = os.open(root, os.O_RDONLY)  # files were synced above; this makes the rename durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        prune(run_dir, keep)
    dist.barrier()
    return final


def _why(error: BaseException | None) -> str:
    """An error in words without the temporary folder's name (``No space left on device``)."""
    if error is None:
        return "failed on another rank"
    if isinstance(error, OSError) and error.strerror:
        return f"{type(error).__name__}: {error.strerror}"
    return f"{type(error).__name__}: {error}"


def _what_is_kept(run_dir: Path, step: int) -> str:
    """After a failed save: the newest complete checkpoint before ``step``, or that there is none."""
    earlier = [s for s in rundir.checkpoint_steps(run_dir) if s < step]
    if earlier:
        return f"the checkpoint of step {earlier[-1]} is intact (--resume continues from it)"
    return "there is no earlier checkpoint, so --resume starts the run again from step 0"


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` unpinned checkpoints (pinned ones stay)."""
    removed = []
    unpinned = [c for c in list_checkpoints(run_dir) if not c.state.get("pinned")]
    for c in unpinned[: max(0, len(unpinned) - keep)]:
        # renamed out of the step-* namespace first: a kill mid-delete leaves a temporary that
        # clean_temporaries removes, never a step-* folder missing half its files
        gone = c.path.with_name(f".old-{c.path.name}")
        os.rename(c.path, gone)
        shutil.rmtree(gone, ignore_errors=True)
        removed.append(c.path)
    return removed


def clean_temporaries(run_dir: Path) -> None:
    """Remove leftovers of a save or a prune that was killed midway, and a model save's temporaries.

    ``.tmp-*`` (a save never renamed into place), ``.old-*`` (a pruned checkpoint), ``step-*``
    without its state file (deleted in place by an older version), and ``.model.tmp-*`` /
    ``.model.old-*`` beside the final model.
    """
    from replaytune.fsio import recover_dir

    root = Path(run_dir) / DIRNAME
    if root.is_dir():
        for child in root.iterdir():
            half_deleted = rundir.step_of(child.name) is not None and not (child / STATE).is_file()
            if child.name.startswith((".tmp-", ".old-")) or half_deleted:
                shutil.rmtree(child, ignore_errors=True)
    recover_dir(Path(run_dir) / rundir.MODEL)


# ------------------------------------------------------------------------------------------
# Restore
# ------------------------------------------------------------------------------------------


def restore_checkpoint(ckpt: Checkpoint, *, model, optimizer, dist: Dist, parallel: str, trainable_only: bool) -> None:
    """Load weights, optimizer state and this rank's RNG states."""
    import torch

    try:
        if dist.enabled and parallel == "fsdp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            msd, osd = get_state_dict(model, optimizer)
            state = {"model": msd, "optim": osd}
            dcp.load(state, checkpoint_id=str(ckpt.path / "dcp"))
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        else:
            sd = _load_weights(ckpt.path / "model.safetensors", "cpu")
            missing, unexpected = model.load_state_dict(sd, strict=False)
            expected = _trainable_names(model) if trainable_only else set(model.state_dict())
            missing = [m for m in missing if m in expected]
            if missing or unexpected:
                raise CheckpointMismatch(
                    f"checkpoint {ckpt.path}: weights do not fit this model "
                    f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})"
                )
            osd = torch.load(ckpt.path / "optimizer.pt", map_location=dist.device, weights_only=True)
            optimizer.load_state_dict(osd)
        rng_file = ckpt.path / f"rng-{dist.rank}.pt"
        if not rng_file.is_file():
            rng_file = ckpt.path / "rng-0.pt"
        set_rng_state(torch.load(rng_file, weights_only=False))
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt.path}: could not be loaded ({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------------------------------
# May this checkpoint continue this run?
# ------------------------------------------------------------------------------------------


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: data}


def history_of(entries: list[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "lr": [e["lr"] for e in entries],
        "reset": [i for i, e in enumerate(entries) if e["reset"]],
        "batch": [e["batch"] for e in entries],
    }


def check_compatible(ckpt: Checkpoint, plan: RunPlan) -> tuple[str, list[dict[str, Any]]]:
    """Refuse ``ckpt`` unless this plan's prefix fingerprint at its step equals the stored one.

    Returns (prefix fingerprint at the checkpoint's step, this plan's step entries up to it),
    which the loop extends as it trains. The error message says what differs: fields of the
    model/optimizer/precision, or the first step whose LR, optimizer reset or batch differs
    (and which source's store changed).
    """
    k = ckpt.step
    where = f"checkpoint {ckpt.path} (step {k})"
    if k > plan.total_steps:
        raise CheckpointMismatch(f"{where}: this run has only {plan.total_steps} steps")
    base_now = json.loads(json.dumps(plan.base()))
    problems = []
    theirs, ours = _flatten(ckpt.state.get("base", {})), _flatten(base_now)
    for key in sorted(set(theirs) | set(ours)):
        if theirs.get(key) != ours.get(key):
            problems.append(f"{key} is {theirs.get(key)!r} in the checkpoint but {ours.get(key)!r} here")
    entries = list(plan.iter_entries(k))
    sig = base_signature(base_now)
    for e in entries:
        sig = chain(sig, e)
    if not problems and sig != ckpt.state.get("prefix"):
        hist = ckpt.history()
        mine = history_of(entries)
        resets_t, resets_o = set(hist["reset"]), set(mine["reset"])
        for s in range(k):
            if hist["lr"][s] != mine["lr"][s]:
                problems.append(f"the learning rate differs from step {s} on ({hist['lr'][s]:.6g} in the checkpoint, {mine['lr'][s]:.6g} here)")
                break
            if (s in resets_t) != (s in resets_o):
                problems.append(f"the optimizer reset differs at step {s} (phases' reset_optimizer)")
                break
            if hist["batch"][s] != mine["batch"][s]:
                problems.append(f"the batch differs from step {s} on (schedule, data.seed, batch_size or stores)")
                break
        data_then = ckpt.state.get("data", {})
        for name, fp in plan.data_fingerprints().items():
            if name in data_then and data_then[name] != fp:
                problems.append(f"source '{name}' store fingerprint is {data_then[name]} in the checkpoint but {fp} here")
        if not problems:
            problems.append("its prefix fingerprint differs")
    if problems:
        more = f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""
        raise CheckpointMismatch(f"{where} was made by a different run: " + "; ".join(problems[:4]) + more)
    return sig, entries


def execution_warnings(ckpt: Checkpoint, now: Mapping[str, Any]) -> list[str]:
    """Settings that change only float rounding, not what is computed."""
    then = ckpt.state.get("execution", {})
    return [
        f"{key} was {then[key]!r} when {ckpt.path.name} was saved and is {now[key]!r} now: "
        f"results match the original run only to float rounding"
        for key in sorted(now)
        if key in then and then[key] != now[key]
    ]
