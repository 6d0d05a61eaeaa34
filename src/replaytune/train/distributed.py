"""Processes, devices and precision: everything distributed lives here, out of model code.

One process (``replaytune train cfg.yaml``) or several started by torchrun; each rank reads
its contiguous slice of the global batch (``Mixture.batch(step, rank, world)``), so the
global batch and its order do not depend on the number of processes.

* ``parallel: ddp`` (default) replicates the model (``DistributedDataParallel``); gradients
  are averaged over ranks while the backward pass runs.
* ``parallel: fsdp`` shards parameters, gradients and optimizer state over ranks with
  PyTorch FSDP2 (``fully_shard`` on every decoder layer, then on the whole model): for models
  whose AdamW state does not fit one device (16 bytes per parameter in fp32: 600M params =
  9.6 GB before activations; an 8B model needs FSDP on 80 GB cards).

Both average gradients over ranks, while our loss is a *sum* over the rank's target tokens
divided by the global token count (see loop.py); each rank therefore scales its loss by the
world size, which the averaging divides out again.

Launch (GPU nodes, NCCL; CPU, gloo, is chosen automatically without CUDA)::

    # one node, 8 GPUs
    torchrun --standalone --nproc_per_node 8 -m replaytune.cli train cfg.yaml
    # two nodes, 8 GPUs each (run on every node; node 0's address as the rendezvous)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint NODE0_HOST:29500 --rdzv_id RUN_ID -m replaytune.cli train cfg.yaml \\
        --set parallel=fsdp
    # Slurm: srun --nodes 2 --ntasks-per-node 1 torchrun --nnodes 2 --nproc_per_node 8 \\
    #   --rdzv_backend c10d --rdzv_endpoint $(scontrol show hostnames | head -n1):29500 ...

Several nodes must see one shared out_dir (checkpoints are written by all ranks under FSDP).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

from replaytune.errors import ConfigError


def resolve_device(pref: str, local_rank: int = 0) -> str:
    import torch

    if pref == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' asked for but no CUDA device is visible; use device: auto or cpu")
        return f"cuda:{local_rank}"
    if pref == "cpu":
        return "cpu"
    raise ConfigError(f"device: must be one of auto, cpu, cuda; got {pref!r}")


def resolve_precision(dtype: str, device: str) -> str:
    """fp32 on CPU (bf16 autocast is ~12x slower on the project's CPUs), bf16 autocast on GPU, fp16 autocast
    (the loop adds a gradient scaler) on a GPU without bf16 or when asked; fp16 on CPU is refused."""
    import torch

    dev = device
    if dev in ("auto", "cuda"):
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = str(dev).startswith("cuda")
    if dtype == "fp16" and not gpu:
        raise ConfigError("dtype fp16 (with a gradient scaler) is for GPUs without bf16 (T4, V100); on CPU use fp32")
    if dtype != "auto":
        return dtype
    if not gpu:
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"  # fp16 + GradScaler where bf16 is missing


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as tdist

            tdist.barrier()

    def all_reduce_sum(self, tensor):
        """Sum over ranks in place (no-op for one process); returns the tensor."""
        if self.enabled:
            import torch.distributed as tdist

            tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """True if ``flag`` is true on any rank (all ranks get the same answer)."""
        if not self.enabled:
            return bool(flag)
        import torch

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        self.all_reduce_sum(t)
        return bool(t.item() > 0)

    def broadcast(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        import torch.distributed as tdist

        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]


def setup(device_pref: str = "auto") -> Dist:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), or run alone."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        # TF32 matmuls: ~3x an fp32 matmul on Ampere/Hopper; parameters stay fp32.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world <= 1:
        return Dist(device=device)
    import torch.distributed as tdist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    owns = False
    if not tdist.is_initialized():
        kwargs = {"device_id": torch.device(device)} if backend == "nccl" else {}
        tdist.init_process_group(backend=backend, **kwargs)
        owns = True
    return Dist(rank=tdist.get_rank(), world=tdist.get_world_size(), local_rank=local_rank, device=device, backend=backend, owns_group=owns)


def teardown(dist: Dist) -> None:
    if dist.enabled and dist.owns_group:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()


def autocast(device: str, precision: str):
    """bf16 autocast where asked (weights stay fp32: the paper's 'params fp32, compute bf16')."""
    import torch

    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.split(":")[0], dtype=dtype)
    return contextlib.nullcontext()


def decoder_layers(model) -> list:
    """The repeated blocks to shard one by one (HF decoders name them *DecoderLayer)."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def wrap(model, dist: Dist, parallel: str, precision: str, *, compile: bool = False):
    """Move to the device, optionally compile, and wrap for DDP/FSDP. Returns the module to call.

    The raw model stays reachable (and is what gets saved): DDP keeps it as ``.module``,
    FSDP2 shards it in place.
    """
    import torch

    from replaytune.model import is_quantized

    fsdp = parallel == "fsdp" and dist.enabled
    if is_quantized(model):  # bitsandbytes placed it on the device already; packed weights cannot move
        if fsdp:
            raise ConfigError("model.load_in_4bit (QLoRA) with parallel: fsdp is not supported; use parallel: ddp")
    elif not fsdp:
        model.to(dist.device)  # FSDP moves each rank's shard itself
    if compile:
        for layer in decoder_layers(model) or [model]:
            layer.compile()
    if not dist.enabled:
        if parallel == "fsdp":
            warnings.warn("parallel: fsdp with one process trains unsharded (start several with torchrun)")
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" else MixedPrecisionPolicy()
        if dist.device == "cpu":
            _return_freed_memory()
        full = model.state_dict() if dist.is_main else {}  # rank 0's weights (the other ranks' are on meta)
        for layer in decoder_layers(model):
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        _scatter_from_rank0(model, full, dist)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [torch.device(dist.device).index] if dist.device.startswith("cuda") else None
    return DDP(model, device_ids=ids)


def _return_freed_memory() -> None:
    """glibc: serve allocations of 1 MB and more by mmap, so that a freed one returns to the OS.

    glibc raises its mmap threshold each time a large block is freed (up to 32 MB) and keeps
    later ones on its heap; FSDP on the CPU gathers and frees each layer's weights and
    gradients all step long, and each rank's resident memory then grew to what one process
    holds (BENCHMARKS.md, host memory under FSDP). Same as MALLOC_MMAP_THRESHOLD_=1048576.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; fixed from now on
    except (OSError, AttributeError):  # not glibc: its allocator keeps its own rules
        pass


def _scatter_from_rank0(model, full: dict, dist: Dist) -> None:
    """Give every rank its shard of rank 0's weights, and rank 0's buffers.

    Ranks other than 0 built the model on the meta device (``build_model(meta=True)``):
    ``to_empty`` allocates their shards, which ``set_model_state_dict`` fills by
    broadcasting rank 0's tensors one at a time (peak: one full tensor beyond the shards).
    Buffers outside the state dict (rotary frequencies) are broadcast as they are.
    """
    import torch
    import torch.distributed as tdist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    on_meta = torch.tensor([int(any(t.is_meta for t in (*model.parameters(), *model.buffers())))], device=dist.device)
    tdist.all_reduce(on_meta)
    if not on_meta.item():
        return  # every rank built real weights (e.g. an older caller): they agree already
    if not dist.is_main:
        model.to_empty(device=dist.device)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buf in model.buffers():
        tdist.broadcast(buf, src=0)  # FSDP moved rank 0's to the device; to_empty put the others
    full.clear()


def sync_context(wrapped, dist: Dist, parallel: str, last: bool):
    """Gradient all-reduce only on the last micro-batch of a step (accumulate locally before)."""
    if not dist.enabled:
        return contextlib.nullcontext()
    if parallel == "fsdp":
        wrapped.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if last else wrapped.no_sync()


def full_state_dict(model, dist: Dist, parallel: str) -> dict | None:
    """Unsharded weights on CPU (rank 0 only under FSDP; None on other ranks)."""
    if dist.enabled and parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if dist.is_main else None
    return model.state_dict()
