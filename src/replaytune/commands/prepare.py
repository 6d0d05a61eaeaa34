"""`replaytune prepare`: tokenize a source into a token store (logic in replaytune.data.prepare)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Tokenize SOURCE into a token store: one flat memory-mapped token array per split (uint16 when
the vocabulary fits, else uint32), document offsets, EOS after every document, and a held-out
validation split chosen by document (long text documents by 8,192-token chunks, so the held-out
share of tokens stays close to the asked fraction). SOURCE is a .txt/.jsonl/.parquet file (or .gz of
txt/jsonl), a directory or glob of them, a `datasets` save_to_disk folder, or a Hugging Face
hub dataset name. The store is written atomically and fingerprinted by (source content,
tokenizer, settings): running it again on an unchanged source prints "up to date".
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="tokenize a source into a token store", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="file, directory, glob, save_to_disk folder or hub dataset")
    p.add_argument("--tokenizer", required=True, metavar="PATH", help="tokenizer folder (or hub id)")
    p.add_argument("--out", required=True, metavar="DIR", help="store folder to write")
    p.add_argument("--name", default="", help="source name (default: file or folder name)")
    p.add_argument("--format", default="auto", choices=["auto", "txt", "jsonl", "parquet", "arrow", "hf"],
                   help="input format (default: by file suffix; hf = datasets.load_dataset, streaming)")
    p.add_argument("--kind", default="text", choices=["text", "chat", "instruction"],
                   help="text: loss on all tokens; chat: `messages`, loss on assistant turns; "
                        "instruction: `prompt`/`completion`, loss on the completion")
    p.add_argument("--text-field", default="text", help="jsonl/parquet/dataset field holding the text (kind text)")
    p.add_argument("--messages-field", default="messages", help="field holding the conversation (kind chat)")
    p.add_argument("--prompt-field", default="prompt", help="prompt field (kind instruction)")
    p.add_argument("--completion-field", default="completion", help="completion field (kind instruction)")
    p.add_argument("--paragraphs", action="store_true",
                   help=".txt: blank-line-separated paragraphs are documents (default: a file is a document)")
    p.add_argument("--split", default="train", help="split of a save_to_disk DatasetDict or hub dataset")
    p.add_argument("--hf-config", default=None, help="configuration name of a hub dataset")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-docs", type=int, default=None, metavar="N", help="hold out exactly N documents")
    val.add_argument("--val-fraction", type=float, default=None, metavar="F",
                     help="hold out about F of the tokens, by documents or chunks of long ones (default 0.01)")
    p.add_argument("--max-val-tokens", type=int, default=None, metavar="N",
                   help="with --val-fraction: stop holding out at N tokens (default 50M)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="stop reading after N tokens (both splits): tokenize only what runs will draw from a huge "
                        "source; a later call with a larger N reads further")
    p.add_argument("--seq-len", type=int, default=None, metavar="N",
                   help="training sequence length: with it, chat/instruction examples are packed whole (bfd) "
                        "into windows of N tokens; the store then serves --seq-len N only")
    p.add_argument("--packing", default=None, choices=["bfd", "wrapped"],
                   help="bfd: whole examples in padded windows (default for chat/instruction with --seq-len); "
                        "wrapped: one stream cut every --seq-len tokens (text; chat without --seq-len)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split, the packing and a capped read")
    p.add_argument("--strict", action="store_true",
                   help="refuse instead of fixing: undecodable bytes and examples over --max-example-length are errors")
    p.add_argument("--max-example-length", "--max-length", dest="max_length", type=int, default=None, metavar="N",
                   help="chat/instruction: tokens per example; longer ones are truncated (counted)")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="Jinja chat template file, or 'chatml' (default: the tokenizer's own)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip and count chat examples that break the role rule instead of stopping")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from replaytune.data.prepare import format_stats, prepare
    from replaytune.data.sources import SourceSpec

    spec = SourceSpec(
        path=args.source, name=args.name, format=args.format, kind=args.kind, text_field=args.text_field,
        messages_field=args.messages_field, prompt_field=args.prompt_field, completion_field=args.completion_field,
        paragraphs=args.paragraphs, strict=args.strict, split=args.split, hf_config=args.hf_config,
    )
    store, stats = prepare(
        spec, args.tokenizer, args.out, val_docs=args.val_docs, val_fraction=args.val_fraction, seed=args.seed,
        max_length=args.max_length, chat_template=args.chat_template, skip_invalid=args.skip_invalid,
        **({"max_val_tokens": args.max_val_tokens} if args.max_val_tokens is not None else {}),
        max_tokens=args.max_tokens, packing=args.packing, seq_len=args.seq_len,
        progress=not args.no_progress, force=args.force,
    )
    print(format_stats(spec.display_name, stats, store.path))
    return 0
