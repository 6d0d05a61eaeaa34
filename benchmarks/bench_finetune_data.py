"""Tokenizing and packing a fine-tuning target set vs training throughput (issue 5, "Speed").

Claim: preparing the target (and replay) data is never the bottleneck of ``replaytune
finetune``. Both sides are measured on one tokenizer (byte-level BPE, ``--vocab`` ids, trained
here on the benchmark's text):

1. ``prepare`` tokens/s, cold (``force=True``), for
   (a) text: Basque translation strings (continued pre-training data, packed), and
   (b) chat: synthetic conversations rendered with the ChatML template, with assistant-only
       loss masks (the slow path: one template rendering per assistant turn plus the
       character offsets of every token);
2. training tokens/s of ``replaytune finetune`` (full fine-tuning, replay 0.5, fp32 CPU,
   seq 256 x batch 16, one micro-batch) on a tiny Llama of the ``tiny`` preset's shape
   (hidden 128, MLP 448, 4 layers, 4 heads) saved with ``save_pretrained`` and loaded by path:
   the run record's ``tokens_per_s`` (trained tokens / training time, evaluation excluded);
   and, alternating with it (``--rounds``, median), ``replaytune train`` on the same run config
   with the model built from the ``tiny`` preset instead of loaded: the engine's throughput,
   so finetune / engine ~ 1 shows the practical path adds nothing per step.

ratio = prepare tokens/s / training tokens/s: how many times faster the data is made than a
tiny model eats it. A real model only eats slower (SmolLM2-135M, full fine-tuning: about 60-70
tokens/s on this CPU), so for real models the margin is larger still.

Usage: python benchmarks/bench_finetune_data.py [--workdir DIR] [--chat-examples 4000]
       [--target-kb 400] [--steps 20] [--vocab 2048] [--repeats 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

EU = ("etxe mendi ur itsaso herri lagun eguzki gaur bihar ona handia txikia da dago eta baina zer nola non "
      "euskara hitz liburu ikasle irakasle eskola kale bide zuhaitz lore euri fitxategia errorea ezin ireki").split()


def chat_corpus(path: Path, n: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)

    def sentence(k):
        return " ".join(EU[int(i)] for i in rng.integers(0, len(EU), k)).capitalize() + "."

    with open(path, "w") as f:
        for _ in range(n):
            msgs = [{"role": "system", "content": "Euskaraz erantzun."}]
            for _ in range(int(rng.integers(1, 3))):
                msgs.append({"role": "user", "content": sentence(int(rng.integers(6, 14)))})
                msgs.append({"role": "assistant", "content": " ".join(sentence(int(rng.integers(5, 12))) for _ in range(3))})
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def tiny_llama(path: Path, tok_dir: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from replaytune.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=448, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description="prepare vs training throughput for replaytune finetune")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--chat-examples", type=int, default=4000)
    ap.add_argument("--target-kb", type=int, default=400, help="Basque translation text for the text target")
    ap.add_argument("--replay-kb", type=int, default=1500, help="man-page text for replay")
    ap.add_argument("--steps", type=int, default=20, help="training steps to time")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3, help="prepare timings: best of N")
    ap.add_argument("--rounds", type=int, default=3, help="training: alternate finetune / engine runs, median")
    args = ap.parse_args()

    from replaytune.data import corpora
    from replaytune.data.chat import CHATML_TEMPLATE
    from replaytune.data.prepare import prepare
    from replaytune.data.sources import SourceSpec
    from replaytune.data.tokenizer import load_tokenizer, train_tokenizer
    from replaytune import config as rconfig
    from replaytune.finetune import load_config, run_finetune
    from replaytune.train import train

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_ft_"))
    work.mkdir(parents=True, exist_ok=True)
    eu = Path(corpora.translations("eu", work / "eu.jsonl", max_bytes=args.target_kb * 1000).path)
    man = Path(corpora.man_pages(work / "man.jsonl", max_bytes=args.replay_kb * 1000).path)
    chat = chat_corpus(work / "chat.jsonl", args.chat_examples)
    if not (work / "tok" / "tokenizer.json").is_file():
        train_tokenizer([str(eu), str(man)], args.vocab, work / "tok")
    tok = load_tokenizer(work / "tok")

    results: dict[str, dict] = {}
    for name, spec, kw in (
        ("text", SourceSpec(str(eu)), {}),
        ("chat", SourceSpec(str(chat), kind="chat"), {"chat_template": CHATML_TEMPLATE, "max_length": 1024}),
    ):
        best = None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            store, stats = prepare(spec, tok, work / f"store_{name}", progress=False, force=True, **kw)
            seconds = time.perf_counter() - t0
            best = seconds if best is None else min(best, seconds)
        tokens = stats["tokens"]["train"] + stats["tokens"]["val"]
        results[f"prepare_{name}"] = {"tokens": tokens, "loss_tokens": stats["loss_tokens"]["train"],
                                      "docs": stats["docs"]["train"] + stats["docs"]["val"], "seconds": round(best, 3),
                                      "tokens_per_s": round(tokens / best)}

    model = tiny_llama(work / "model", work / "tok") if not (work / "model" / "config.json").is_file() else work / "model"
    n_t = results["prepare_text"]["tokens"] // 256
    epochs = args.steps * 16 * 0.5 / max(n_t, 1)  # steps = N_t x E / (B x 0.5)
    finetune_tps, engine_tps, steps = [], [], 0
    for r in range(args.rounds):  # alternate: the 2 cores are shared, load drifts
        out = work / f"run-{int(time.time())}-{r}"
        cfg = load_config(None, {
            "model": str(model), "target": str(eu), "replay": {"path": str(man), "val": 3}, "replay_fraction": 0.5,
            "epochs": epochs, "seq_len": 256, "batch_size": 16, "micro_batch_size": 16, "lr": 1e-4, "eval_sequences": 8,
            "eval_interval": 0, "output": str(out), "progress": False, "device": "cpu",
        })
        res = run_finetune(cfg, log=lambda s: None)
        finetune_tps.append(res.summary["run"]["tokens_per_s"])
        steps = res.summary["run"]["steps"]
        # the engine on the same run config, the same architecture built from the `tiny` preset
        run_cfg = rconfig.load(out / "run" / "config.yaml")
        ref = run_cfg.model_copy(update={"model": rconfig.ModelConfig(preset="tiny"), "out_dir": str(out / "engine"),
                                         "eval": run_cfg.eval.model_copy(update={"at_start": False})})
        engine_tps.append(train(ref)["tokens_per_s"])
    train_tps = statistics.median(finetune_tps)
    results["train"] = {"steps": steps, "tokens_per_s": round(train_tps), "rounds": [round(x) for x in finetune_tps],
                        "engine_tokens_per_s": round(statistics.median(engine_tps)), "engine_rounds": [round(x) for x in engine_tps],
                        "finetune_over_engine": round(train_tps / statistics.median(engine_tps), 3),
                        "best_over_best": round(max(finetune_tps) / max(engine_tps), 3),  # least disturbed rounds
                        "shape": "d128 x 4 layers, seq 256 x batch 16, fp32"}
    for name in ("text", "chat"):
        results[f"prepare_{name}"]["x_training"] = round(results[f"prepare_{name}"]["tokens_per_s"] / train_tps, 1)
    print(json.dumps(results, indent=2))
    for name in ("text", "chat"):
        r = results[f"prepare_{name}"]
        print(f"prepare {name}: {r['tokens']:,} tokens in {r['seconds']:.2f} s = {r['tokens_per_s']:,} tokens/s "
              f"= {r['x_training']}x training ({train_tps:,.0f} tokens/s)")


if __name__ == "__main__":
    main()
