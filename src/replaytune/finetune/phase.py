"""The fine-tune as one phase of the one loop: its run config (a ``finetune`` phase spec) and its Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replaytune import config as rconfig
from replaytune.errors import ConfigError
from replaytune.finetune.config import FinetuneConfig
from replaytune.finetune.plan import ReplayPlan, finetune_spec
from replaytune.schedule import GENERIC, TARGET
from replaytune.train.loop import Trainer

# Run-config fields the finetune flags derive; overriding them with --set would break the plan.
_DERIVED = ("data.", "phases.0.steps", "phases.0.stages", "phases.0.finetune", "model.pretrained", "model.gguf_file", "out_dir")


class FinetuneTrainer(Trainer):
    """The loop's Trainer, with the pretrained model put in training mode.

    ``from_pretrained`` returns a model in eval mode: dropout (LoRA dropout included) would be
    off, and transformers only recomputes activations (``activation_checkpointing``) in
    training mode. Evaluation switches to eval mode and back by itself.
    """

    def __init__(self, cfg: rconfig.RunConfig, *, activation_checkpointing: bool = False, **kwargs: Any):
        super().__init__(cfg, **kwargs)
        self.activation_checkpointing = activation_checkpointing

    def lr_setting(self, phase_index: int) -> str:
        return "--lr (lr: in a config file)"

    def build_model(self):
        model = super().build_model()
        model.train()
        if self.activation_checkpointing:
            hf = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft: the HF model
            kwargs = {"use_reentrant": False}  # the reentrant variant needs inputs that require grad (LoRA's do not)
            if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x name
                hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return model


def build_run_config(cfg: FinetuneConfig, plan: ReplayPlan | dict[str, Any], stores: dict[str, Path], run_dir: Path,
                     tokenizer_dir: Path | None) -> rconfig.RunConfig:
    """One phase from the pretrained model: the fine-tuning spec (rho, unit, epochs, sources by side).

    ``plan``: the spec itself (``finetune.plan.spec_for``) or a :class:`ReplayPlan` to take it from.

    The spec, not its stages, goes into the run config: ``config.yaml`` says which rho the run
    ran, and the loop's plan resolves it against the stores into the same mixture as ``plan``.
    """
    bad = [o for o in cfg.overrides if o.split("=", 1)[0].strip().startswith(_DERIVED)]
    if bad:
        raise ConfigError(f"--set {bad[0]}: this field follows from the finetune flags; use the flag instead")
    data: dict[str, Any] = {
        "name": cfg.name,
        "out_dir": str(run_dir),
        "seed": cfg.seed,
        "model": {
            "pretrained": cfg.model, "gguf_file": cfg.gguf_file, "attn_implementation": cfg.attn_implementation,
            "tokenizer": str(tokenizer_dir) if tokenizer_dir else None,
            "lora": cfg.lora.model_dump() if cfg.lora is not None else None,
            "weights_dtype": cfg.weights_dtype, "load_in_4bit": cfg.load_in_4bit,
        },
        "data": {
            "sources": {role: {"store": str(p)} for role, p in stores.items()},
            "seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "micro_batch_size": cfg.micro_batch_size, "seed": cfg.seed,
            "document_attention": cfg.document_attention,
        },
        "phases": [{
            "name": "finetune", "finetune": plan if isinstance(plan, dict) else finetune_spec(
                {role: plan.side_parts(role) for role in (TARGET, GENERIC)}, replay_fraction=plan.replay_fraction,
                epochs=plan.epochs, unit=plan.unit, ramp=plan.ramp),
            "lr": {"peak": cfg.peak_lr, "schedule": cfg.lr_schedule, "warmup": cfg.warmup, "final_ratio": cfg.final_lr_ratio},
        }],
        "optim": {"weight_decay": cfg.weight_decay, "grad_clip": cfg.grad_clip},
        "eval": {"sequences": cfg.eval_sequences, "interval": cfg.eval_interval, "at_start": True},  # step 0 = the base model
        "checkpoint": {"interval": cfg.checkpoint_every, "keep": cfg.save_total_limit or 1},
        "log_interval": cfg.log_interval,
        "device": cfg.device, "dtype": cfg.dtype, "parallel": cfg.parallel, "progress": cfg.progress,
        "report_to": list(cfg.report_to),
    }
    return rconfig.validate(rconfig.apply_overrides(data, cfg.overrides), "finetune run config")
