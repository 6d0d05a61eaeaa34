"""Whole-example packing (bfd) vs wrapped: packing efficiency (non-pad share) and prepare time.

A chat set with varied lengths: conversations of 1-4 turns whose turn lengths are drawn
log-normally (median ~60 words a reply, a long tail past the window), words from Python's
documentation prose (pydoc_data, on every machine). Tokenized with a 4,096-token byte-level BPE
trained here on the same prose, ChatML template, window --seq-len (default 2048, the fine-tune's).

    python benchmarks/bench_packing.py [--examples 4000] [--seq-len 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=4000)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from pydoc_data.topics import topics

    from replaytune.data.prepare import prepare
    from replaytune.data.sources import SourceSpec
    from replaytune.data.tokenizer import load_tokenizer, train_tokenizer

    words = re.findall(r"\S+", " ".join(topics.values()))
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="bench_packing_"))
    corpus = root / "corpus.txt"
    corpus.write_text(" ".join(words) + "\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n" * 50)
    train_tokenizer([str(corpus)], 4096, root / "tok")
    tok = load_tokenizer(root / "tok")

    def text(median_words: float) -> str:
        n = max(1, int(rng.lognormal(np.log(median_words), 0.9)))
        start = int(rng.integers(0, len(words) - n))
        return " ".join(words[start:start + n])

    rows = []
    for _ in range(args.examples):
        msgs = []
        for _ in range(int(rng.integers(1, 5))):
            msgs += [{"role": "user", "content": text(25)}, {"role": "assistant", "content": text(60)}]
        rows.append({"messages": msgs})
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    results = {}
    for packing in ("wrapped", "bfd"):
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            store, stats = prepare(SourceSpec(str(data), kind="chat"), tok, root / f"{packing}{r}", seq_len=args.seq_len,
                                   packing=packing, chat_template="chatml", val_docs=40, progress=False)
            times.append(time.perf_counter() - t0)
        results[packing] = (min(times), stats)
    w, b = results["wrapped"], results["bfd"]
    tokens = sum(w[1]["tokens"].values())
    print(f"{args.examples} conversations, {tokens:,} tokens; window {args.seq_len}; examples truncated: "
          f"wrapped {w[1]['truncated']} (no --max-length), bfd {b[1]['truncated']} (longer than the window)")
    print(f"wrapped: {w[0]:.2f} s (best of {args.repeats})")
    print(f"bfd:     {b[0]:.2f} s (best of {args.repeats}); {sum(b[1]['packing']['bins'].values()):,} windows; "
          f"non-pad share {b[1]['packing']['fill']:.2%}; loss tokens {sum(b[1]['loss_tokens'].values()):,} "
          f"(wrapped {sum(w[1]['loss_tokens'].values()):,})")


if __name__ == "__main__":
    main()
