"""Replay from a huge source costs what the run draws: a 1 GB replay jsonl against a 10 MB one.

Goal (issue 12): ``replaytune finetune --replay BIG`` tokenizes only the replay sequences the
run will draw, the held-out share and a margin, so a 1 GB source and a 10 MB one cost the
same time and memory for the same run.

What runs: two replay files of the same generated English-like text (documents of 6
sentences), --small-mb and --big-mb in size; a target of 200 Basque-like documents; a
byte-level BPE of 1,024 ids trained here; a tiny Llama saved with ``save_pretrained``. For
each replay file, ``replaytune finetune --prepare-only`` (rho 0.5, seq 128, batch 8, 2
epochs) runs in a fresh process: it tokenizes the target and the replay and plans the run
(training adds the same steps to both). Measured: wall time of the process, its peak RSS
(``getrusage`` of the child), and what the replay store holds. Each file is run --repeats
times, alternating, into fresh output folders; medians are reported.

Usage: python benchmarks/bench_replay_cap.py [--small-mb 10] [--big-mb 1000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EU = ("etxe mendi ur itsaso herri lagun eguzki gaur bihar ona handia txikia da dago eta baina zer nola non "
      "euskara hitz liburu ikasle irakasle eskola kale bide zuhaitz lore euri").split()
EN = ("the a file system command option user output input default value program manual page read write list "
      "print error return line text directory mode set use when with of to").split()


def _doc(words, rng) -> str:
    return " ".join(" ".join(words[i] for i in rng.integers(0, len(words), rng.integers(5, 12))).capitalize() + "."
                    for _ in range(6))


def write_jsonl(path: Path, words, mb: float, seed: int) -> Path:
    """~``mb`` MB of documents: a 1 MB block of distinct documents, repeated with a counter."""
    rng = np.random.default_rng(seed)
    block = []
    size = 0
    while size < 1 << 20:
        block.append(_doc(words, rng))
        size += len(block[-1]) + 12
    with open(path, "w") as f:
        for rep in range(max(1, int(mb))):
            f.write("".join(json.dumps({"text": f"{rep} {d}"}) + "\n" for d in block))
    return path


def setup(root: Path, small_mb: float, big_mb: float) -> dict[str, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from replaytune.data.tokenizer import load_tokenizer, train_tokenizer

    rng = np.random.default_rng(0)
    target = root / "target.jsonl"
    target.write_text("".join(json.dumps({"text": _doc(EU, rng)}) + "\n" for _ in range(200)))
    small = write_jsonl(root / "replay_small.jsonl", EN, small_mb, 1)
    big = write_jsonl(root / "replay_big.jsonl", EN, big_mb, 1)
    corpus = root / "corpus.txt"
    corpus.write_text(target.read_text() + small.read_text()[: 1 << 20])
    train_tokenizer([str(corpus)], 1024, root / "tok")
    tok = load_tokenizer(root / "tok")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return {"target": target, "small": small, "big": big, "model": root / "model"}


def run_once(paths: dict[str, Path], replay: Path, out: Path) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "replaytune.cli", "finetune", "--model", str(paths["model"]), "--target",
           str(paths["target"]), "--replay", str(replay), "--replay-fraction", "0.5", "--epochs", "2",
           "--seq-len", "128", "--batch-size", "8", "--output", str(out), "--prepare-only", "--no-progress",
           "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if res.returncode:
        sys.exit(res.stderr[-3000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over children so far: run big last
    meta = json.loads((out / "data" / "generic" / "meta.json").read_text())
    st = meta["stats"]
    return {"wall_s": wall, "peak_rss_mb": max(peak, before) / 1024, "tokens": st["tokens"]["train"] + st["tokens"]["val"],
            "documents_read": st["documents_read"], "complete": st["complete"], "input_mb": replay.stat().st_size / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-mb", type=float, default=10)
    ap.add_argument("--big-mb", type=float, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        paths = setup(root, args.small_mb, args.big_mb)
        rows: dict[str, list[dict]] = {"small": [], "big": []}
        # RUSAGE_CHILDREN keeps the maximum over all children: measure every small run first,
        # then the big ones, so a big run's peak cannot hide in the small runs' column
        for name in ("small", "big"):
            for r in range(args.repeats):
                rows[name].append(run_once(paths, paths[name], root / f"out-{name}-{r}"))
        print(f"{'replay file':>12} {'MB':>8} {'wall s':>8} {'peak RSS MB':>12} {'tokens stored':>14} {'docs read':>10} complete")
        for name, runs in rows.items():
            med = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "peak_rss_mb", "tokens", "documents_read")}
            print(f"{name:>12} {runs[0]['input_mb']:>8.1f} {med['wall_s']:>8.2f} {med['peak_rss_mb']:>12.0f} "
                  f"{med['tokens']:>14,.0f} {med['documents_read']:>10,.0f} {runs[0]['complete']}")
        ratio = statistics.median(r["wall_s"] for r in rows["big"]) / statistics.median(r["wall_s"] for r in rows["small"])
        print(f"big / small wall time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
