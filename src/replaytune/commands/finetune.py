"""``replaytune finetune``: fine-tune a pretrained model on a target set with replay (logic in replaytune.finetune)."""

from __future__ import annotations

import argparse

from replaytune.commands import REPORT_TO_METAVAR, report_to

DESCRIPTION = """\
Fine-tune a pretrained Hugging Face model on a small target set while replaying generic data
inside every batch (Kotha & Liang 2026). Replay is one flag:

  replaytune finetune --model PATH_OR_ID --target eu.txt --replay web.jsonl --replay-fraction 0.5

--replay-fraction 0 is plain fine-tuning (the baseline to compare with). Sources are text
(continued pre-training, packed), chat (`messages`; loss on assistant turns) or instruction
(`prompt`/`completion`; loss on the completion), found from the first record's fields.
The replay fraction counts loss-bearing tokens (--replay-unit sequences|examples to change
that). Target epochs are fixed: steps = target sequences x epochs / (batch x target weight).

Several sources on a side: repeat the flag with PATH:WEIGHT, e.g. --replay web.jsonl:0.7
--replay chat.jsonl:0.3: rho is split 0.7 / 0.3 between them (weights are normalized within
each side; --target likewise splits 1 - rho). Each source is named <side>.<file stem> in the
metrics and reports (generic.web, generic.chat), and the forgetting report gives each one's
held-out loss as well as each side's.

Writes OUT/model (Hugging Face, merged) or OUT/adapter (LoRA), OUT/forgetting.md|json (held-out
target and generic loss, base vs fine-tuned), OUT/run (metrics), and OUT/finetune.json last.
Every flag can also be a key of --config FILE.yaml (flags win). Transformers' and TRL's names
work too, as flags and as file keys (docs/finetune.md has the table): --model_name_or_path,
--learning_rate, --num_train_epochs, --output_dir, --run_name, --warmup_ratio, --lr_scheduler_type,
--weight_decay, --gradient_checkpointing, --bf16/--fp16, --attn_implementation, --use_peft,
--lora_r/--lora_alpha/--lora_dropout/--lora_target_modules, --logging_steps, --eval_steps,
--save_steps, --save_total_limit, --resume_from_checkpoint, --report_to, and
--per_device_train_batch_size with --gradient_accumulation_steps (global batch = their product
x processes). --max_length is the packed sequence length (--seq-len), as in TRL with packing.
Several GPUs:
torchrun --nproc_per_node 8 -m replaytune.cli finetune ... --parallel fsdp (docs/finetune.md)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a pretrained model with replay (one flag)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--config", metavar="FILE.yaml", help="settings file (keys: the long flag names with underscores); flags override it")
    a("--model", "--model_name_or_path", dest="model", help="pretrained model: local folder, hub id, or a .gguf file")
    a("--gguf-file", help="GGUF file inside the --model folder")
    a("--tokenizer", help="tokenizer folder (default: the model's own)")
    a("--target", metavar="SOURCE[:W]", action="append", type=_source,
      help="target data: .txt/.jsonl/.parquet file, folder, glob, dataset, or token store; repeat it for several "
           "sources, each with its weight within the target side, e.g. --target eu.txt:0.8 --target eu_chat.jsonl:0.2")
    a("--target-kind", choices=["auto", "text", "chat", "instruction"], help="default: from the first record (each target source)")
    a("--target-val", type=float, metavar="F|N", help="held-out target documents: fraction < 1 or count (default 0.05)")
    a("--replay", metavar="SOURCE[:W]", action="append", type=_source,
      help="generic data to replay (same forms as --target); repeat it for several, e.g. --replay web.jsonl:0.7 "
           "--replay chat.jsonl:0.3 (weights split the replay fraction)")
    a("--replay-kind", choices=["auto", "text", "chat", "instruction"], help="default: from the first record (each replay source)")
    a("--replay-val", type=float, metavar="F|N", help="held-out replay documents: fraction or count (default 0.01)")
    a("--replay-fraction", type=_rho, metavar="RHO|auto",
      help="replay share of every batch, in [0, 1) (default 0.5 with --replay); auto: search the candidates by held-out "
           "target loss (successive halving, ~40%% of the grid's steps), then finish the best")
    a("--replay-candidates", type=_floats, metavar="R,R,...", help="auto: rho values to search (default 0,0.25,0.5,0.75,0.875)")
    a("--lr-candidates", type=_floats, metavar="LR,LR,...", help="auto: peak LRs to search too (default: --lr only)")
    a("--max-forgetting", type=float, metavar="NATS",
      help="auto: only candidates whose held-out generic loss rose by at most NATS over the base model")
    a("--search-margin", type=float, metavar="NATS",
      help="auto: stop a candidate once it trails the best by more than NATS (e.g. the seed noise)")
    a("--replay-unit", choices=["tokens", "sequences", "examples"], help="what the fraction counts (default tokens: loss-bearing tokens)")
    a("--epochs", "--num_train_epochs", dest="epochs", type=float, help="passes over the target (default 1 for text, 3 for chat/instruction)")
    a("--seq-len", "--max_length", dest="seq_len", type=int,
      help="tokens per packed sequence (default 2048); --max_length is TRL's name for it under packing")
    a("--document-attention", choices=["auto", "block", "full"],
      help="packed documents attend to themselves only (block) or to earlier ones too (full); "
           "default auto: block for chat/instruction data, full for text")
    a("--batch-size", type=int, help="global batch in sequences (default 32)")
    a("--micro-batch-size", "--per_device_train_batch_size", dest="micro_batch_size", type=int,
      help="sequences per forward pass; the rest is gradient accumulation (default 4)")
    a("--gradient_accumulation_steps", type=int, metavar="N",
      help="with --per_device_train_batch_size: global batch = per-device x N x processes")
    a("--lr", "--learning_rate", dest="lr", type=float, help="peak LR (default 1e-5 full fine-tuning, 1e-4 LoRA)")
    a("--lr-schedule", "--lr_scheduler_type", dest="lr_schedule", type=_schedule, metavar="{cosine,wsd,constant,linear}",
      help="after warmup (default cosine); Transformers' constant_with_warmup and warmup_stable_decay are accepted")
    a("--warmup", "--warmup_ratio", dest="warmup", type=float, help="warmup fraction of the steps (default 0.01)")
    a("--weight-decay", "--weight_decay", dest="weight_decay", type=float, help="AdamW weight decay on matrices (default 0.1)")
    a("--lora", "--use_peft", dest="lora", action="store_true", default=None, help="train LoRA adapters (peft) instead of all weights")
    a("--lora-r", "--lora_r", dest="lora_r", type=int, help="adapter rank (default 16)")
    a("--lora-alpha", "--lora_alpha", dest="lora_alpha", type=float, help="LoRA alpha (default 32)")
    a("--lora-dropout", "--lora_dropout", dest="lora_dropout", type=float, help="adapter dropout (default 0)")
    a("--lora-targets", "--lora_target_modules", dest="lora_targets", help="comma-separated module names, or all-linear (default)")
    a("--save", choices=["merged", "adapter"], help="LoRA output: merged model plus adapter (default), or the adapter only")
    a("--chat-template", metavar="FILE", help="Jinja chat template, or 'chatml', for a tokenizer without one")
    a("--max-example-length", dest="max_example_length", type=int,
      help="chat/instruction: tokens per example, below --seq-len; longer ones are truncated and counted (default seq-len)")
    a("--strict", action="store_true", default=None, help="refuse over-long examples (and undecodable bytes) instead of fixing them")
    a("--skip-invalid", action="store_true", default=None, help="skip and count chat examples that break the role rule")
    a("--eval-sequences", type=int, help="held-out sequences per source (default 64)")
    a("--eval-interval", "--eval_steps", dest="eval_interval", type=int, help="evaluate every N steps (default: ~5%% of training time)")
    a("--logging-steps", "--logging_steps", dest="log_interval", type=int, metavar="N",
      help="write a train line to metrics.jsonl and the trackers every N steps (default 1)")
    a("--eval-tasks", help="comma-separated lm-evaluation-harness tasks, e.g. xcopa_eu (needs replaytune[eval]); "
                           "base and fine-tuned scores go into OUT/forgetting.md|json")
    a("--eval-include", action="append", metavar="DIR",
      help="folder of your own lm-eval task YAML files (lm-eval's include_path), searched first (repeatable)")
    a("--eval-limit", type=int, help="examples per lm-eval task")
    a("--activation-checkpointing", "--gradient_checkpointing", dest="activation_checkpointing", action="store_true", default=None, help="recompute activations in backward (big models)")
    a("--checkpoint-every", "--save_steps", dest="checkpoint_every", type=int,
      help="checkpoint every N steps so --resume loses little (default: at the end)")
    a("--save-total-limit", "--save_total_limit", dest="save_total_limit", type=int, metavar="N",
      help="keep the last N checkpoints in OUT/run/checkpoints, also after the run (default: none kept)")
    a("--keep-checkpoints", action="store_true", default=None, help="keep OUT/run/checkpoints after success")
    a("--output", "--out", "--output_dir", dest="output", metavar="DIR", help="output directory (default runs/finetune)")
    a("--name", "--run_name", dest="name", help="run name")
    a("--seed", type=int, help="data and init seed (default 0)")
    a("--device", choices=["auto", "cpu", "cuda"])
    a("--dtype", choices=["auto", "fp32", "bf16", "fp16"],
      help="compute precision; auto: bf16 autocast on GPU (fp16 with a gradient scaler without bf16), fp32 on CPU")
    a("--bf16", action="store_true", default=None, help="the same as --dtype bf16 (Transformers' flag)")
    a("--fp16", action="store_true", default=None, help="the same as --dtype fp16 (Transformers' flag; GPU only)")
    a("--attn-implementation", "--attn_implementation", dest="attn_implementation",
      choices=["sdpa", "eager", "flash_attention_2"], help="attention kernel of the model (default sdpa)")
    a("--weights-dtype", choices=["auto", "fp32", "bf16"], help="frozen base weights under LoRA (auto: bf16 when computing in bf16); trainable weights stay fp32")
    a("--load-in-4bit", "--load_in_4bit", dest="load_in_4bit", action="store_true", default=None, help="QLoRA: 4-bit NF4 base (bitsandbytes, CUDA only; with --lora)")
    a("--parallel", choices=["ddp", "fsdp"], help="under torchrun: replicate (ddp) or shard (fsdp) the model")
    a("--set", dest="overrides", action="append", metavar="KEY=VALUE",
      help="override a field of the underlying run config, e.g. --set optim.beta2=0.99 (repeatable)")
    a("--prepare-only", action="store_true",
      help="tokenize the sources, print the plan, and stop (before a multi-GPU launch)")
    a("--resume", action="store_true", help="continue an unfinished fine-tune in OUT (or print a finished one's report)")
    a("--resume_from_checkpoint", nargs="?", const="true", metavar="true|PATH",
      help="Transformers' name for --resume: true, or OUT's latest checkpoint (a fine-tune continues from its latest "
           "checkpoint only)")
    a("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    a("--report-to", "--report_to", dest="report_to", type=report_to, metavar=REPORT_TO_METAVAR,
      help="also log to these trackers, comma-separated (Transformers' name; metrics.jsonl is always written)")
    a("--save-dtype", "--save_dtype", dest="save_dtype", choices=["auto", "bf16", "fp16", "fp32"],
      help="dtype of the saved model (auto: the base model's own, fp32 when it names none)")
    a("--push-to-hub", "--push_to_hub", dest="push_to_hub", action="store_true", default=None,
      help="upload OUT's model files to --hub_model_id (huggingface_hub; needs a login)")
    a("--hub-model-id", "--hub_model_id", dest="hub_model_id", metavar="OWNER/NAME", help="hub repository to push to")
    a("--hub-private-repo", "--hub_private_repo", dest="hub_private_repo", action="store_true", default=None,
      help="create the hub repository private")
    a("--replay-schedule", metavar="SHAPE", help="a replay ramp instead of one fraction: linear:A:B (rho from A to B), "
      "upsample-end:K:A:B, follow-lr:A:B, stepped:K:A:B; counted like --replay-fraction, target epochs unchanged")
    p.set_defaults(func=run)


def _source(text: str) -> tuple[str, float | None]:
    """``PATH`` or ``PATH:W`` (a trailing number only: other colons stay in the path)."""
    import math

    from replaytune.finetune.config import split_weight

    try:
        path, weight = split_weight(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if weight is not None and not (weight > 0 and math.isfinite(weight)):
        raise argparse.ArgumentTypeError(f"{text!r}: the weight after ':' must be > 0, got {weight:g} (PATH:WEIGHT, "
                                         f"e.g. web.jsonl:0.7)")
    return path, weight


def _sources(given: list[tuple[str, float | None]] | None, kind: str | None, val: float | None):
    """One side's flags: the fields of one source (merged into a config file's), or a list of several."""
    if given is not None and len(given) > 1:
        return [{"path": path, "weight": weight, "kind": kind, "val": val} for path, weight in given]
    path, weight = given[0] if given else (None, None)
    return {"path": path, "weight": weight, "kind": kind, "val": val}


def _rho(text: str):
    """``auto`` or a number in [0, 1)."""
    import math

    if text.strip() == "auto":
        return "auto"
    try:
        rho = float(text)
    except ValueError:
        rho = math.nan
    if not 0 <= rho < 1:  # NaN too
        raise argparse.ArgumentTypeError(f"{text!r}: give the replay share of the batch as a number in [0, 1), "
                                         f"e.g. 0.5, or auto to search for it")
    return rho


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _schedule(text: str) -> str:
    from replaytune.finetune.names import HF_SCHEDULES

    if text not in HF_SCHEDULES:
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(HF_SCHEDULES)})")
    return HF_SCHEDULES[text]


def _batch_size(args: argparse.Namespace) -> int | None:
    """--batch-size, or Transformers' per-device batch x accumulation x processes."""
    if args.gradient_accumulation_steps is None:
        return args.batch_size
    from replaytune.errors import ConfigError

    if args.micro_batch_size is None:
        raise ConfigError("--gradient_accumulation_steps needs --per_device_train_batch_size (the micro-batch)")
    from replaytune.finetune.names import accumulated_batch

    total, how = accumulated_batch(args.micro_batch_size, args.gradient_accumulation_steps)
    if args.batch_size is not None and args.batch_size != total:
        raise ConfigError(f"--batch-size {args.batch_size} disagrees with {how} = {total}; give one or the other")
    return total


def flag_values(args: argparse.Namespace) -> dict:
    """The flags given, as FinetuneConfig keys (None: not given, the file or default decides)."""
    lora = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
            "target_modules": _targets(args.lora_targets)}
    values = {
        "model": args.model, "gguf_file": args.gguf_file, "tokenizer": args.tokenizer,
        "target": _sources(args.target, args.target_kind, args.target_val),
        "replay": _sources(args.replay, args.replay_kind, args.replay_val),
        "replay_fraction": args.replay_fraction, "replay_unit": args.replay_unit, "epochs": args.epochs,
        "replay_candidates": args.replay_candidates, "lr_candidates": args.lr_candidates,
        "max_forgetting": args.max_forgetting, "search_margin": args.search_margin,
        "seq_len": args.seq_len, "document_attention": args.document_attention, "batch_size": _batch_size(args), "micro_batch_size": args.micro_batch_size,
        "lr": args.lr, "lr_schedule": args.lr_schedule, "warmup": args.warmup, "weight_decay": args.weight_decay,
        "lora": lora if any(v is not None for v in lora.values()) else (True if args.lora else None),
        "save": args.save, "chat_template": args.chat_template, "max_example_length": args.max_example_length,
        "strict": args.strict,
        "skip_invalid": args.skip_invalid, "eval_sequences": args.eval_sequences, "eval_interval": args.eval_interval,
        "eval_tasks": [t.strip() for t in args.eval_tasks.split(",") if t.strip()] if args.eval_tasks else None,
        "eval_include": args.eval_include, "eval_limit": args.eval_limit, "activation_checkpointing": args.activation_checkpointing,
        "checkpoint_every": args.checkpoint_every, "keep_checkpoints": args.keep_checkpoints, "output": args.output,
        "name": args.name, "seed": args.seed, "device": args.device, "dtype": _dtype(args), "weights_dtype": args.weights_dtype, "load_in_4bit": args.load_in_4bit, "parallel": args.parallel,
        "overrides": args.overrides, "progress": args.progress, "report_to": args.report_to,
        **{k: getattr(args, k) for k in ("save_dtype", "push_to_hub", "hub_model_id", "hub_private_repo",
                                         "attn_implementation", "log_interval", "save_total_limit",
                                         "resume_from_checkpoint")},
        "replay_schedule": args.replay_schedule,
    }
    return values


def _dtype(args: argparse.Namespace) -> str | None:
    """--dtype, or Transformers' --bf16 / --fp16 (one of them)."""
    given = [d for d in ("bf16", "fp16") if getattr(args, d)]
    if args.dtype is not None:
        given.append(args.dtype)
    if len(set(given)) > 1:
        from replaytune.errors import ConfigError

        raise ConfigError(f"--bf16, --fp16 and --dtype disagree ({', '.join(given)}); give one precision")
    return given[0] if given else None


def _targets(text: str | None):
    if text is None:
        return None
    return text if text == "all-linear" else [t.strip() for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    from replaytune.finetune import load_config, run_finetune

    from replaytune.finetune.names import resume_requested

    cfg = load_config(args.config, flag_values(args))
    run_finetune(cfg, resume=args.resume or resume_requested(cfg), prepare_only=args.prepare_only)  # prints the plan, the data stats and the forgetting report
    return 0
