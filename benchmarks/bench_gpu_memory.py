"""Peak GPU memory of fine-tuning one pretrained model four ways: full, LoRA on an fp32 base, LoRA on a bf16 base, QLoRA.

Goal (issue 12): the memory a practitioner's 8B fine-tune needs, from measured bytes per
parameter rather than arithmetic alone (docs/finetune.md scales these numbers to 8B).

What runs: a Llama (default hidden 2048, MLP 5632, 16 layers, 16 heads, vocabulary 32,000,
untied: ~0.9B parameters) saved with ``save_pretrained`` and loaded by path through the real
loop (``replaytune.train.train``, bf16 compute), --steps steps of --batch sequences of
--seq-len tokens from a random-token store, in one process, one mode after another:

* ``full``: every weight trains (fp32 weights, gradients, AdamW moments);
* ``lora-fp32-base``: LoRA r=16 on all linear layers, base kept fp32 (``weights_dtype: fp32``);
* ``lora-bf16-base``: the same, base in bf16 (``weights_dtype: auto`` under bf16 compute);
* ``qlora``: the base in 4-bit NF4 (``load_in_4bit``; needs bitsandbytes).

Reported per mode: ``torch.cuda.max_memory_allocated`` over the whole run (load, training,
final save), its bytes per base parameter, the median step time and tokens/s (batch x
seq_len / median step).

Usage (one GPU): python benchmarks/bench_gpu_memory.py [--steps 6] [--batch 8] [--seq-len 1024]
    [--modes full,lora-fp32-base,lora-bf16-base,qlora]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fsdp_memory import setup  # noqa: E402

MODEL = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
             num_key_value_heads=16, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)
MODES = {
    "full": {},
    "lora-fp32-base": {"lora": {"r": 16}, "weights_dtype": "fp32"},
    "lora-bf16-base": {"lora": {"r": 16}},
    "qlora": {"lora": {"r": 16}, "load_in_4bit": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--dry-run", action="store_true", help="check the script on the CPU with a tiny model")
    ap.add_argument("--out", default=os.environ.get("OUT", ".") + "/bench_gpu_memory.json")
    args = ap.parse_args()

    import torch

    from replaytune import config
    from replaytune.train import train

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        sys.exit("bench_gpu_memory needs a CUDA GPU (--dry-run checks it on the CPU)")
    model = MODEL if cuda else {**MODEL, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 512}
    memory = torch.cuda.max_memory_allocated if cuda else (lambda: 0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base, params = setup(Path(tmp), args.steps, args.batch, model=model, seq_len=args.seq_len,
                             device="cuda" if cuda else "cpu", dtype="bf16")
        base["data"]["micro_batch_size"] = min(args.batch, 4)
        name = torch.cuda.get_device_name() if cuda else "cpu (dry run)"
        print(f"model: {params / 1e9:.2f}B parameters; {name}", flush=True)
        for mode in args.modes.split(","):
            data = copy.deepcopy(base)
            data["model"].update(MODES[mode])
            data["out_dir"] = str(Path(tmp, f"run-{mode}"))
            times: list[float] = []
            last = [time.perf_counter()]

            def on_step(*_a, **_k):
                now = time.perf_counter()
                times.append(now - last[0])
                last[0] = now

            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                train(config.validate(data, mode), callbacks=[on_step])
            except Exception as exc:  # e.g. qlora without bitsandbytes: report and go on
                rows.append({"mode": mode, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                print(mode, rows[-1]["error"], flush=True)
                continue
            peak = memory()
            step = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else float("nan")
            tps = args.batch * args.seq_len / step
            rows.append({"mode": mode, "peak_gb": peak / 1e9, "bytes_per_param": peak / params, "step_s": step, "tokens_per_s": tps})
            print(f"{mode:>15}: peak {peak / 1e9:6.2f} GB = {peak / params:5.2f} bytes/parameter, step {step:.3f} s, "
                  f"{tps:,.0f} tokens/s", flush=True)
    Path(args.out).write_text(json.dumps({"params": params, "device": name,
                                          "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len,
                                          "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
