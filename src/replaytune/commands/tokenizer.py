"""`replaytune tokenizer train`: a byte-level BPE on your sources (logic in replaytune.data.tokenizer)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="train a tokenizer",
                              description="Tokenizer tools. `train` fits a byte-level BPE and saves it in Hugging Face format.")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = sub.add_parser(
        "train", help="train a byte-level BPE on sources",
        description=(
            "Train a byte-level BPE (tokenizers library) on one or more sources and save it with save_pretrained, "
            "so AutoTokenizer and `replaytune prepare --tokenizer DIR` load it. One special token, <|endoftext|>, "
            "is EOS and padding. 2k-4k tokens suit CPU-sized models."
        ),
    )
    t.add_argument("sources", nargs="+", metavar="SOURCE", help="files, directories, globs or datasets to learn from")
    t.add_argument("--vocab-size", type=int, default=2048, help="vocabulary size including 256 bytes and EOS (default 2048)")
    t.add_argument("--out", required=True, metavar="DIR", help="folder to write the tokenizer to")
    t.add_argument("--format", default="auto", choices=["auto", "txt", "jsonl", "parquet", "arrow", "hf"],
                   help="input format (default: by file suffix)")
    t.add_argument("--kind", default="text", choices=["text", "chat", "instruction"],
                   help="how records hold text (chat/instruction: the message / prompt and completion texts)")
    t.add_argument("--text-field", default="text", help="jsonl/parquet field holding the text")
    t.add_argument("--max-bytes", type=int, default=None, help="train on at most this many bytes of text")
    t.add_argument("--min-frequency", type=int, default=2, help="merge only pairs seen at least this often")
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from replaytune.data.sources import SourceSpec
    from replaytune.data.tokenizer import train_tokenizer

    specs = [SourceSpec(path=s, format=args.format, kind=args.kind, text_field=args.text_field) for s in args.sources]
    info = train_tokenizer(specs, args.vocab_size, args.out, max_bytes=args.max_bytes,
                           min_frequency=args.min_frequency, progress=sys.stderr.isatty())
    print(
        f"tokenizer: wrote {info['path']}: vocabulary {info['vocab_size']:,} (EOS id {info['eos_id']}), "
        f"trained on {info['docs']:,} documents, {info['bytes']:,} bytes; fingerprint {info['fingerprint']}"
    )
    return 0
