"""Transformers' and TRL's names for ``replaytune finetune`` settings, in config files and as flags.

One table (:data:`HF_KEYS`) and the few names that are not plain renames (LoRA fields, the
precision flags, gradient accumulation, ``resume_from_checkpoint``). docs/finetune.md,
"Transformers and TRL names", gives each one's meaning here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from replaytune.errors import ConfigError

# Transformers' and TRL's names for FinetuneConfig keys, accepted in config files and as flags
# (docs/finetune.md, "Transformers and TRL names", gives each one's meaning here).
HF_KEYS = {
    "model_name_or_path": "model", "learning_rate": "lr", "num_train_epochs": "epochs", "output_dir": "output",
    "warmup_ratio": "warmup", "lr_scheduler_type": "lr_schedule", "gradient_checkpointing": "activation_checkpointing",
    "max_length": "seq_len",  # TRL: with packing, the packed sequence length
    "per_device_train_batch_size": "micro_batch_size", "save_steps": "checkpoint_every", "eval_steps": "eval_interval",
    "logging_steps": "log_interval", "run_name": "name",
}
HF_LORA = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "lora_target_modules": "target_modules"}
HF_SCHEDULES = {"cosine": "cosine", "wsd": "wsd", "constant": "constant", "linear": "linear",
                "constant_with_warmup": "constant", "warmup_stable_decay": "wsd"}  # Transformers' names -> ours


def hf_names(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``data`` with Transformers/TRL keys turned into FinetuneConfig keys (pure).

    Plain renames (:data:`HF_KEYS`), ``lora_*`` into the ``lora`` section, ``bf16``/``fp16``
    into ``dtype``, ``gradient_accumulation_steps`` into the global ``batch_size``
    (per-device batch x steps x processes), Transformers' scheduler names into ours. A key
    given under both names with two values is refused, naming both.
    """
    out = dict(data)

    def put(ours: str, value: Any, theirs: str) -> None:
        if ours in out and out[ours] is not None and out[ours] != value:
            raise ConfigError(f"{where}: {theirs} ({value!r}) and {ours} ({out[ours]!r}) are the same setting; give one")
        out[ours] = value

    for theirs, ours in HF_KEYS.items():
        if theirs in out:
            put(ours, out.pop(theirs), theirs)
    if "use_peft" in out:  # true: LoRA with the lora section's settings (or the defaults)
        peft, lora_now = out.pop("use_peft"), out.get("lora")
        if not peft and lora_now not in (None, False):
            raise ConfigError(f"{where}: use_peft is false but a lora section is given; give one")
        out["lora"] = (lora_now if isinstance(lora_now, dict) else True) if peft else False
    lora = {ours: out.pop(theirs) for theirs, ours in HF_LORA.items() if theirs in out}
    if lora:
        if isinstance(lora.get("target_modules"), str) and lora["target_modules"] != "all-linear":
            lora["target_modules"] = [t.strip() for t in lora["target_modules"].split(",") if t.strip()]
        if out.get("lora") is False:
            raise ConfigError(f"{where}: {', '.join('lora_' + k for k in lora)} given with use_peft/lora off")
        base = out.get("lora")
        out["lora"] = {**(base if isinstance(base, dict) else {}), **lora}
    for flag in ("bf16", "fp16"):
        if out.pop(flag, None):
            put("dtype", flag, flag)
    if isinstance(out.get("lr_schedule"), str) and out["lr_schedule"] in HF_SCHEDULES:
        out["lr_schedule"] = HF_SCHEDULES[out["lr_schedule"]]
    steps = out.pop("gradient_accumulation_steps", None)
    if steps is not None:
        micro = out.get("micro_batch_size")
        total, how = accumulated_batch(micro, steps, f"{where}: ")
        put("batch_size", total, how)
    return out


def accumulated_batch(micro: Any, steps: Any, where: str = "") -> tuple[int, str]:
    """Transformers' global batch: per-device batch x accumulation steps x processes
    (``WORLD_SIZE``), and how it was computed; the flags and the config files share it."""
    if micro is None:
        raise ConfigError(f"{where}gradient_accumulation_steps needs per_device_train_batch_size (the micro-batch)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    total = int(micro) * int(steps) * world
    return total, f"per_device_train_batch_size {micro} x gradient_accumulation_steps {steps} x {world} processes"


def resume_requested(cfg: Any) -> bool:
    """Whether a FinetuneConfig's ``resume_from_checkpoint`` asks to continue: true, or a path that is the output's run or
    its latest checkpoint (a fine-tune continues from its latest checkpoint only)."""
    value = cfg.resume_from_checkpoint
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("false", "")):
        return False
    if value is True or (isinstance(value, str) and value.strip().lower() == "true"):
        return True
    from replaytune import rundir

    out, given = Path(cfg.output).resolve(), Path(str(value)).resolve()
    steps = rundir.checkpoint_steps(out / "run")
    latest = rundir.checkpoint_dir(out / "run", steps[-1]).resolve() if steps else None
    if given in (out, out / "run") or given == latest:
        return True
    where = f"its latest is {latest}" if latest else f"{out / 'run'} has none yet"
    raise ConfigError(f"resume_from_checkpoint {value}: a fine-tune continues from the latest checkpoint of its output "
                      f"({where}); give true, or --resume, with --output {cfg.output}")
