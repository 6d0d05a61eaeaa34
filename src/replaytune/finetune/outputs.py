"""What a finished fine-tune leaves in OUT: the model or adapter (by rename), its tokenizer, its card, a push.

Layout. The weights stay in ``OUT/model`` (full fine-tuning, or LoRA merged) and ``OUT/adapter``
(LoRA), and OUT's top level also holds the loadable files, hard-linked (no second copy on disk;
copied where the file system has no hard links): the model's files (``config.json``,
``model*.safetensors``, ``generation_config.json``), the tokenizer's, and the card
(``README.md``). So ``AutoModelForCausalLM.from_pretrained(OUT)`` and
``AutoTokenizer.from_pretrained(OUT)`` load the result directly. With ``save: adapter``
(LoRA, no merged model) the top level holds the adapter instead: ``AutoPeftModelForCausalLM
.from_pretrained(OUT)`` loads it on its base model. The rest of OUT (``data/``, ``run/``,
``tokenizer/``, ``forgetting.*``, ``finetune.json``) is the run's record, never uploaded.

Save dtype (``save_dtype``): ``auto`` saves in the base model's own dtype (its config's
``dtype``/``torch_dtype``; fp32 when it names none), the Hugging Face habit: a bf16 release
fine-tuned in fp32 comes back as bf16, half the size. ``bf16``/``fp16``/``fp32`` choose it.

Push (``push_to_hub``): ``HfApi.create_repo(hub_model_id, private=hub_private_repo, exist_ok=True)``
then ``upload_folder`` of OUT's top-level files only.
"""


from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from replaytune import config as rconfig
from replaytune import rundir
from replaytune.finetune.config import FinetuneConfig
from replaytune.finetune.phase import FinetuneTrainer
from replaytune.errors import ConfigError
from replaytune.hub import is_hub_id
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
    from replaytune.model import tokenizer_to_save as tokenizer_for_save
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


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def base_dtype(model: str) -> str:
    """The base model's saved dtype, as bf16/fp16/fp32 (fp32 when its config names none or cannot be read)."""
    try:
        from transformers import AutoConfig

        conf = AutoConfig.from_pretrained(model)
        d = getattr(conf, "dtype", None) or getattr(conf, "torch_dtype", None)
    except Exception:  # a GGUF file, an unreachable hub id: no claim about its dtype
        d = None
    name = str(d).removeprefix("torch.") if d is not None else "float32"
    return {v: k for k, v in DTYPES.items()}.get(name, "fp32")


def cast_saved(folder: Path, dtype: str) -> None:
    """Cast the floating tensors of a saved model folder to ``dtype``, shard by shard (atomic per file)."""
    import torch
    from safetensors.torch import load_file, save_file

    if dtype not in DTYPES:
        raise ConfigError(f"save_dtype {dtype!r}: choose bf16, fp16 or fp32")
    target = getattr(torch, DTYPES[dtype])
    total = 0
    for shard in sorted(folder.glob("model*.safetensors")):
        tensors = load_file(str(shard))
        tensors = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
        total += sum(v.numel() * v.element_size() for v in tensors.values())
        tmp = shard.with_name(shard.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, shard)
    conf_path = folder / "config.json"
    if conf_path.is_file():
        conf = json.loads(conf_path.read_text())
        conf["dtype"] = DTYPES[dtype]
        conf.pop("torch_dtype", None)
        write_json(conf_path, conf)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data.setdefault("metadata", {})["total_size"] = total
        write_json(index, data)


def link_top_level(out: Path, folder: Path, tokenizer: Path | None) -> list[str]:
    """Hard-link (or copy) the model or adapter files of ``folder`` and the tokenizer files into OUT."""
    names = []
    sources = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if tokenizer is not None and tokenizer.is_dir():
        sources += [p for p in sorted(tokenizer.iterdir()) if p.is_file() and not (folder / p.name).exists()]
    for src in sources:
        dst = out / src.name
        tmp = out / f".{src.name}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
        names.append(src.name)
    return names


def model_card(summary: dict[str, Any], report: dict[str, Any], folder: str) -> str:
    """README.md built with ``huggingface_hub``'s card data: hub metadata, replay settings, forgetting table."""
    from huggingface_hub import ModelCard, ModelCardData

    from replaytune.finetune.config import label
    from replaytune.finetune.forgetting import format_report

    s, plan, data = summary["settings"], summary["plan"], summary["data"]
    datasets = sorted({d["source"] for d in data.values() if is_hub_id(d["source"])})
    card_data = ModelCardData(
        base_model=s["model"] if is_hub_id(s["model"]) else None,
        datasets=datasets or None,
        library_name="peft" if folder == "adapter" else "transformers",
        tags=["replaytune", "replay", "fine-tuning"],
        pipeline_tag="text-generation",
    )
    rows = "\n".join(
        f"| {label(role)} | {d['source']} | {d['kind']} | {((d.get('stats') or {}).get('tokens') or {}).get('train', '-')} "
        f"| {((d.get('stats') or {}).get('tokens') or {}).get('val', '-')} |" for role, d in data.items())
    if folder == "adapter":
        use = 'from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained("PATH")'
    else:
        use = ('from transformers import AutoModelForCausalLM, AutoTokenizer\n'
               'model = AutoModelForCausalLM.from_pretrained("PATH")\ntokenizer = AutoTokenizer.from_pretrained("PATH")')
    body = f"""
# {s['name']}: {s['model']} fine-tuned with replay

Fine-tuned with `replaytune finetune`: generic data replayed inside every batch (Kotha & Liang 2026, arXiv 2603.04964).

## Data

| role | source | kind | train tokens | held-out tokens |
|---|---|---|---|---|
{rows}

## Replay and training

- replay fraction {plan['replay_fraction']:g} of the batch's {plan['replay_unit']} (realised {plan['realised']['replay_share']:.4f}); sequence weights {", ".join(f"{label(k)} {v:.4f}" for k, v in plan["weights"].items())}
- {plan['steps']} steps of {plan['batch_size']} sequences x {plan['seq_len']} tokens; target seen {plan['realised']['target_epochs']:.3g} times
- peak LR {s['lr'] if s['lr'] is not None else 'default'} ({s['lr_schedule']}, warmup {s['warmup']:g}), weight decay {s['weight_decay']:g}, {"LoRA" if s.get("lora") else "full fine-tuning"}, seed {s['seed']}

## Held-out loss, base vs fine-tuned

{format_report(report).split(chr(10), 1)[-1].strip()}

## Use

```python
{use}
```
"""
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}"))


def push(out: Path, repo_id: str | None, *, private: bool, files: list[str]) -> str:
    """Create the hub repository (if needed) and upload OUT's top-level model files; return its URL."""
    from huggingface_hub import HfApi

    if not repo_id:
        raise ConfigError("--push_to_hub needs --hub_model_id OWNER/NAME")
    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(folder_path=str(out), repo_id=repo_id, repo_type="model", allow_patterns=sorted(files),
                      commit_message="Upload a replay fine-tune (replaytune)")
    return str(url)


def publish_outputs(cfg: FinetuneConfig, out: Path) -> dict[str, Any]:
    """The model saved in its dtype, and OUT's top level made loadable (below)."""
    dtype = None
    if (out / "model").is_dir():
        dtype = base_dtype(cfg.model) if cfg.save_dtype == "auto" else cfg.save_dtype
        if dtype != "fp32":  # the loop trains and saves fp32 weights
            cast_saved(out / "model", dtype)
    folder = out / "model" if (out / "model").is_dir() else out / "adapter"
    return {"files": link_top_level(out, folder, out / "tokenizer"), "dtype": dtype}
