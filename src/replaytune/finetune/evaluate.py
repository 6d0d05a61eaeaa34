"""After training: held-out loss of the base and the fine-tuned model per source (forgetting), and lm-eval tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replaytune import config as rconfig
from replaytune.finetune.config import FinetuneConfig, source_names
from replaytune.finetune.outputs import load_with_adapter, plain_base


def check_eval_tasks(cfg: FinetuneConfig):
    """lm-evaluation-harness's task manager for ``eval_tasks``, their data loaded (None: no tasks, or no harness)."""
    if not cfg.eval_tasks:
        return None
    from replaytune.finetune.forgetting import task_manager

    return task_manager(cfg.eval_tasks, cfg.eval_include, load_data=True)


def held_out_report(cfg, run_cfg, stores, plan, record, out: Path, say, tasks=None) -> dict[str, Any]:
    from replaytune.finetune.forgetting import (
        build_report,
        downstream,
        format_report,
        held_out,
        write_report,
    )

    paths = {name: arg.path for name, (_, arg) in source_names(cfg).items()}
    sources = {name: {"source": paths[name], **held_out(store, cfg.seq_len, cfg.eval_sequences)}
               for name, store in stores.items()}
    report = build_report(Path(run_cfg.out_dir), plan=plan.to_dict(), held=sources)
    if cfg.eval_tasks:
        report["downstream"] = downstream(
            cfg.eval_tasks,
            base=lambda: _eval_model(run_cfg, None),
            tuned=lambda: _eval_model(run_cfg, out),
            limit=cfg.eval_limit,
            include=cfg.eval_include,
            manager=tasks,
        )
    write_report(out, report)
    say(format_report(report))
    return report


def _eval_model(run_cfg: rconfig.RunConfig, out: Path | None):
    """(model, tokenizer) for lm-evaluation-harness: the base model, or the fine-tuned one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from replaytune.model import load_pretrained

    tok = AutoTokenizer.from_pretrained(str(Path(run_cfg.model.tokenizer)))
    if out is None:
        spec, dtype = plain_base(run_cfg)
        model = load_pretrained(spec, dtype=dtype)
    elif (out / "model" / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    else:
        model = load_with_adapter(run_cfg, out / "adapter").merge_and_unload()
    return _on_run_device(model, run_cfg), tok


def _on_run_device(model, run_cfg: rconfig.RunConfig):
    """The model on the device training used (the harness runs it where it is), in bf16 where training was."""
    import torch

    from replaytune.train.distributed import resolve_device, resolve_precision

    device = resolve_device(run_cfg.device)
    if resolve_precision(run_cfg.dtype, device) == "bf16":
        model = model.to(torch.bfloat16)
    return model.to(device).eval()
