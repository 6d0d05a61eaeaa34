"""Issue 23's GPU figures in one short run: 150m MFU by lever, the paper's study scaled down, a ~1B LoRA fine-tune.

Parts (``--parts``, default all three, in this order; each step is a subprocess with its
own timeout, and every result is written to ``$OUT/gpu_check.json`` as soon as it exists,
so a run cut short keeps what it measured):

``mfu``    ``bench_gpu_150m.py`` on the paper's 150m model (vocabulary 128,256, seq 4096,
           batch 64, bf16), the same card, one process per variant:

           ============== ======= ============= ========== ======= ===========
           variant        loss    compile       attention  AdamW   micro-batch
           ============== ======= ============= ========== ======= ===========
           current        full    each layer    default    foreach 8
           chunked        chunked each layer    default    fused   8
           chunked-cudnn  chunked each layer    cuDNN      fused   8
           chunked-flash  chunked each layer    flash      fused   8
           chunked-model  chunked whole model   default    fused   16
           ============== ======= ============= ========== ======= ===========

           ``current`` is the path before the chunked loss (BENCHMARKS.md, 2026-11-30:
           24 % MFU at micro-batch 8 on an H200). Each row gives tokens/s, peak memory and
           MFU both ways: ``mfu`` (primary: 6 x matmul parameters, head included, input
           embedding not, + attention) and ``mfu_6n`` (6 x all parameters, nanoGPT/MPT-style).
``study``  ``replaytune study --preset paper`` with the paper's geometry (150m, seq 4096,
           128k vocabulary) on synthetic stores (a Markov chain for generic, counting runs
           for target, both 128k-token ids), scaled down by ``--set``: 32 steps of 8
           sequences, 2 replay fractions per setting, one LR; prints the multipliers, then
           seconds per update and the share of each run's wall time outside updates.
``lora``   ``bench_gpu_memory.py`` (a ~0.9B Llama, vocabulary 32,000, through the same
           loop ``replaytune finetune`` runs): LoRA on a bf16 base and full fine-tuning,
           peak memory and tokens/s.

Length on an H100/H200: not yet measured; expected 60-150 s per mfu variant (compilation
dominates; inductor's cache, shared between the processes, shortens the later ones), 2-4
minutes for the study, 1-2 for LoRA. ``--budget-s`` (default 540) bounds one invocation:
a step gets at most what is left (mfu 150 s, study 300 s, lora 200 s each at most), and
steps that no longer fit are skipped and marked so. If the first run did not reach every
part, run the rest with ``--parts``/``--variants``, e.g. ``--parts study,lora``.
Without a CUDA GPU it stops at once with one line; ``--dry-run`` checks every part on the
CPU at tiny sizes instead (on the loaded 2-core development CPU: 15-28 s per mfu variant,
201 s for the whole-model compile, 241 s for the study, 43 s for LoRA; the cuDNN variant
fails there, as it must: the CPU has no cuDNN attention).

Usage: python benchmarks/gpu_check.py [--parts mfu,study,lora] [--variants current,chunked,...]
    [--budget-s 540] [--out DIR] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

MFU_VARIANTS = {
    "current": ["--loss", "full", "--compile", "layers", "--no-fused", "--micro-batch", "8"],
    "chunked": ["--loss", "chunked", "--compile", "layers", "--micro-batch", "8"],
    "chunked-cudnn": ["--loss", "chunked", "--compile", "layers", "--sdpa", "cudnn", "--micro-batch", "8"],
    "chunked-flash": ["--loss", "chunked", "--compile", "layers", "--sdpa", "flash", "--micro-batch", "8"],
    "chunked-model": ["--loss", "chunked", "--compile", "model", "--micro-batch", "16"],
}
DRY_MFU = ["--dry-run", "--preset", "tiny", "--vocab", "2048", "--seq-len", "128", "--batch", "4", "--steps", "4",
           "--skip", "1"]


class Results:
    """gpu_check.json, rewritten (atomically) after every step."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.data: dict = {"meta": meta, "mfu": {}, "study": None, "lora": None}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def environment(dry: bool) -> dict:
    import torch
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if not dry else "cpu (dry run)", "date_utc": time.strftime("%Y-%m-%d %H:%M")}
    if not dry and shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True)
        out["driver_and_memory"] = q.stdout.strip()
    return out


DEADLINE = [float("inf")]  # perf_counter time by which every step must have ended (--budget-s)


def run(cmd: list[str], timeout: float, log: Path) -> tuple[int, str]:
    """Run a step; its output goes to ``log``; returns (exit code, last lines). 124: timed out.

    The step gets ``timeout`` seconds or what is left of the budget, whichever is less; with
    under 20 s left it is skipped (exit 125)."""
    timeout = min(timeout, DEADLINE[0] - time.perf_counter())
    if timeout < 20:
        log.write_text("skipped: the --budget-s is spent\n")
        print(f"  [skipped: budget spent] {' '.join(cmd[1:4])} ...", flush=True)
        return 125, "skipped: the --budget-s is spent"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    t0 = time.perf_counter()
    with log.open("w") as fh:
        try:
            code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = 124
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-6:])
    print(f"  [{time.perf_counter() - t0:5.0f} s, exit {code}] {' '.join(cmd[1:4])} ...", flush=True)
    return code, tail


# -- part 1: MFU ------------------------------------------------------------------------------------


def part_mfu(out: Path, res: Results, dry: bool) -> None:
    for name, flags in MFU_VARIANTS.items():
        target = out / f"mfu-{name}.json"
        cmd = [sys.executable, str(HERE / "bench_gpu_150m.py"), "--steps", "10", "--skip", "3", "--batch", "64",
               *flags, "--out", str(target)]
        if dry:
            cmd = [c for c in cmd if c not in ("--steps", "10", "--skip", "3", "--batch", "64")] + DRY_MFU
            cmd = _replace(cmd, "--micro-batch", "2")
            if "layers" in cmd:  # compiling costs a minute per process on a CPU: only the whole-model variant compiles
                cmd = _replace(cmd, "--compile", "none")
        code, tail = run(cmd, (400 if "model" in cmd else 100) if dry else 150, out / f"mfu-{name}.log")
        if code == 0 and target.exists():
            r = json.loads(target.read_text())
            res.data["mfu"][name] = r
            mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
            mfu6 = "-" if r["mfu_6n"] is None else f"{100 * r['mfu_6n']:.1f} %"
            mem = "-" if r["max_memory_gb"] is None else f"{r['max_memory_gb']:.1f} GiB"
            print(f"  {name:>14}: {r['tokens_per_s']:,.0f} tokens/s, MFU {mfu} (primary) / {mfu6} (6N), peak {mem}, "
                  f"loss path {r['loss_path']}, fused AdamW {r['fused_adamw']}", flush=True)
        else:
            res.data["mfu"][name] = {"error": f"exit {code}", "tail": tail}
            print(f"  {name:>14}: FAILED (exit {code}): {tail.splitlines()[-1] if tail else ''}", flush=True)
        res.save()


def _replace(cmd: list[str], flag: str, value: str) -> list[str]:
    cmd = list(cmd)
    cmd[cmd.index(flag) + 1] = value
    return cmd


# -- part 2: the paper's study, scaled down --------------------------------------------------------


def synthetic_stores(root: Path, vocab: int, seq_len: int, generic_docs: int, target_docs: int) -> dict[str, Path]:
    """Two learnable sources over a large vocabulary: generic = a Markov chain on the lower half
    of the ids (3 likely successors each), target = counting runs on the upper half. EOS = 0."""
    from replaytune.data.store import write_store

    rng = np.random.default_rng(0)
    half = vocab // 2
    table = rng.integers(1, half, size=(half, 3))

    def markov(n: int) -> np.ndarray:
        docs = np.empty((n, seq_len), dtype=np.int64)
        docs[:, 0] = rng.integers(1, half, size=n)
        for i in range(1, seq_len):
            docs[:, i] = table[docs[:, i - 1], rng.integers(0, 3, size=n)]
        return docs

    def counting(n: int) -> np.ndarray:
        start = rng.integers(0, half, size=(n, 1))
        return half + (start + np.arange(seq_len)) % (vocab - half)

    out = {}
    for name, make, n in (("generic", markov, generic_docs), ("target", counting, target_docs)):
        train, val = make(n), make(max(4, n // 16))
        train[:, -1] = 0
        val[:, -1] = 0
        store = write_store(root / name, list(train), list(val), vocab_size=vocab, eos_id=0, fingerprint=f"gpu-check-{name}-{vocab}")
        out[name] = Path(store.path)
    return out


def part_study(out: Path, res: Results, dry: bool) -> None:
    vocab, seq_len = (512, 64) if dry else (128_256, 4096)
    t0 = time.perf_counter()
    stores = synthetic_stores(out / "stores", vocab, seq_len + 1, generic_docs=300, target_docs=140)
    print(f"  synthetic stores: {time.perf_counter() - t0:.0f} s", flush=True)
    study_out = out / "study"
    sets = [
        f"target_store={stores['target']}", f"generic_store={stores['generic']}",
        "steps=32", "batch_size=8", "finetune.epochs=4", "finetune.replay=[0.0,0.5]", "finetune.lrs=[3e-4]",
        "midtrain.epochs=4", "midtrain.replay=[0.0,0.5]", "midtrain.alpha=[1.0]",
        "reference.target_batches=[1,2,4,8]", "eval.sequences=8", "eval.interval=8", "eval.batch_size=8",
    ]
    if dry:  # the CPU only checks that the study runs to its multipliers
        sets += ["model.preset=tiny", f"seq_len={seq_len}", "steps=16", "reference.target_batches=[1,2,4]"]
    cmd = [sys.executable, "-m", "replaytune.cli", "study", "--preset", "paper", "--out", str(study_out)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    code, tail = run(cmd, 300 if not dry else 800, out / "study.log")
    wall = time.perf_counter() - t0
    runs = []
    for record in sorted(study_out.rglob("record.json")):
        r = json.loads(record.read_text())
        train_s, wall_s, steps = r.get("train_time_s", 0.0), r.get("wall_time_s", 0.0), r.get("steps", 0)
        runs.append({"run": r["name"], "steps": steps, "s_per_update": train_s / steps if steps else None,
                     "share_outside_updates": 1 - train_s / wall_s if wall_s else None})
    multipliers = [line for line in (out / "study.log").read_text(errors="replace").splitlines() if "multiplier" in line]
    res.data["study"] = {"exit": code, "wall_s": wall, "multipliers": multipliers, "runs": runs, "command": cmd[1:],
                         **({"tail": tail} if code else {})}
    res.save()
    print(f"  study: exit {code}, {wall:.0f} s, {len(runs)} runs finished", flush=True)
    for line in multipliers:
        print("  " + line, flush=True)
    for r in runs:
        s = "-" if r["s_per_update"] is None else f"{r['s_per_update']:.3f}"
        o = "-" if r["share_outside_updates"] is None else f"{100 * r['share_outside_updates']:.0f} %"
        print(f"    {r['run']:<40} {r['steps']:>4} updates, {s} s/update, outside updates {o}", flush=True)


# -- part 3: LoRA on a ~1B model ---------------------------------------------------------------------


def part_lora(out: Path, res: Results, dry: bool) -> None:
    target = out / "lora.json"
    cmd = [sys.executable, str(HERE / "bench_gpu_memory.py"), "--modes", "lora-bf16-base,full", "--steps", "6",
           "--batch", "8", "--seq-len", "1024", "--out", str(target)]
    if dry:
        cmd = _replace(cmd, "--seq-len", "64") + ["--dry-run"]
    code, tail = run(cmd, 200, out / "lora.log")
    res.data["lora"] = json.loads(target.read_text()) if code == 0 and target.exists() else {"error": f"exit {code}", "tail": tail}
    res.save()
    for row in res.data["lora"].get("rows", []):
        if "error" in row:
            print(f"  {row['mode']:>15}: {row['error']}", flush=True)
        else:
            print(f"  {row['mode']:>15}: peak {row['peak_gb']:.2f} GB ({row['bytes_per_param']:.2f} bytes/parameter), "
                  f"{row['tokens_per_s']:,.0f} tokens/s", flush=True)


PARTS = {"mfu": part_mfu, "study": part_study, "lora": part_lora}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    ap.add_argument("--out", default=os.environ.get("OUT") or None, help="result folder (default: $OUT, else a temp dir)")
    ap.add_argument("--dry-run", action="store_true", help="check every part on the CPU at tiny sizes")
    ap.add_argument("--variants", default=",".join(MFU_VARIANTS), help="mfu variants: " + ", ".join(MFU_VARIANTS))
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop starting steps after this many seconds; each step's timeout is cut to what is left "
                    "(default 540 on a GPU, none with --dry-run)")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        sys.exit(f"gpu_check: --parts {unknown[0]!r} is not a part; choose from {', '.join(PARTS)}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in MFU_VARIANTS]
    if bad:
        sys.exit(f"gpu_check: --variants {bad[0]!r} is not a variant; choose from {', '.join(MFU_VARIANTS)}")
    for name in list(MFU_VARIANTS):
        if name not in variants:
            del MFU_VARIANTS[name]
    sys.path.insert(0, str(SRC))
    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        sys.exit(f"gpu_check needs a CUDA GPU: torch {torch.__version__} sees none on this machine; run it where "
                 f"torch.cuda.is_available() is true, or add --dry-run to check the script on the CPU at tiny sizes")
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    meta = environment(args.dry_run)
    print(json.dumps(meta), flush=True)
    res = Results(out / "gpu_check.json", meta)
    res.save()
    start = time.perf_counter()
    budget = args.budget_s if args.budget_s is not None else (float("inf") if args.dry_run else 540.0)
    DEADLINE[0] = start + budget
    for part in parts:
        print(f"== {part} ({time.perf_counter() - start:.0f} s in)", flush=True)
        PARTS[part](out, res, args.dry_run)
    res.data["meta"]["wall_s"] = time.perf_counter() - start
    res.save()
    print(f"== done in {time.perf_counter() - start:.0f} s; results: {res.path}", flush=True)


if __name__ == "__main__":
    main()
