"""What a finished fine-tune leaves in OUT: the model or adapter (by rename), its tokenizer and its model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from replaytune import config as rconfig
from replaytune import rundir
from replaytune.finetune.config import FinetuneConfig
from replaytune.finetune.phase import FinetuneTrainer
from replaytune.finetune.hub import model_card  # noqa: F401  (the card, built with huggingface_hub)
from replaytune.fsio import replace_dir, temp_dir, write_json


def save_tokenizer(tok, template: str | None, path: Path) -> None:
    """A copy of the tokenizer saved beside the model (with the chat template trained with)."""
    tmp = temp_dir(path)
    try:
        old_template = getattr(tok, "chat_template", None)
        if template:
            tok.chat_template = template
        try:
            tok.save_pretrained(str(tmp))
        finally:
            if template:
                tok.chat_template = old_template
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def short_stats(stats: dict[str, Any]) -> dict[str, Any]:
    keep = ("docs", "tokens", "loss_tokens", "truncated", "skipped_invalid", "dropped_trailing_user", "replaced_bytes",
            "empty_docs", "invalid_examples", "up_to_date", "given_store", "seconds", "tokens_per_s")
    return {k: stats[k] for k in keep if k in stats}


def finalize_model(cfg: FinetuneConfig, run_cfg: rconfig.RunConfig, trainer: FinetuneTrainer, out: Path) -> dict[str, str]:
    """run/model -> model/ (full fine-tuning) or adapter/ (+ merged model/ unless save=adapter)."""
    from replaytune.model import load_tokenizer as tokenizer_for_save
    from replaytune.model import save_model

    saved = Path(run_cfg.out_dir) / rundir.MODEL
    if cfg.lora is None:
        if saved.exists():
            replace_dir(saved, out / "model")
        _use_cache(out / "model")
        return {"model": str(out / "model")}
    if saved.exists():
        replace_dir(saved, out / "adapter")
    outputs = {"adapter": str(out / "adapter")}
    if cfg.save == "adapter":
        return outputs
    if not (out / "model" / "config.json").is_file():
        model = getattr(trainer, "model", None)
        from replaytune.model import is_quantized

        if (model is None or getattr(trainer, "sharded", False) or not hasattr(model, "merge_and_unload")
                or is_quantized(model)):  # a 4-bit base would round the merged weights to 4 bits: merge into bf16
            model = load_with_adapter(run_cfg, out / "adapter")
        merged = model.merge_and_unload()  # W + (alpha / r) B A, in place
        save_model(merged, out / "model", tokenizer=tokenizer_for_save(str(out / "tokenizer")))
        _use_cache(out / "model")
    outputs["model"] = str(out / "model")
    return outputs


def load_with_adapter(run_cfg: rconfig.RunConfig, adapter: Path):
    from peft import PeftModel

    from replaytune.model import load_pretrained

    spec, dtype = plain_base(run_cfg)
    return PeftModel.from_pretrained(load_pretrained(spec, dtype=dtype), str(adapter))


def plain_base(run_cfg: rconfig.RunConfig) -> tuple[Any, str]:
    """(model spec, dtype) of the base model without adapters, unquantized (bf16 if it trained in 4 bits)."""
    spec = run_cfg.model
    dtype = "bf16" if spec.load_in_4bit or spec.weights_dtype == "bf16" else "fp32"
    return spec.model_copy(update={"lora": None, "load_in_4bit": False}), dtype


def _use_cache(model_dir: Path) -> None:
    """Training switched the KV cache off; the saved model is for inference, so switch it back on."""
    path = model_dir / "config.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("use_cache") is False:
            data["use_cache"] = True
            write_json(path, data)
