"""Models: Llama-style presets trained from scratch, or a pretrained Hugging Face causal LM.

Everything is a ``transformers`` model (``LlamaForCausalLM`` for the presets) and is saved
with ``save_pretrained``, so transformers, peft and lm-evaluation-harness load our outputs
unchanged. The presets follow Kotha & Liang (2026), see docs/method.md:

=======  ======  =====  ======  =====  ==========================================
preset   hidden  MLP    layers  heads  use
=======  ======  =====  ======  =====  ==========================================
tiny     128     448    4       4      CPU tests and examples
small    192     672    4       4      the CPU study size (measured, see below)
150m     512     1792   6       8      the paper's controlled model
300m     768     2688   12      12     the paper's larger runs
600m     1024    3584   24      16     the paper's largest runs
=======  ======  =====  ======  =====  ==========================================

All presets: key/value heads = heads (no grouped-query attention), untied input and output
embeddings, SwiGLU MLP, RMSNorm eps 1e-5, RoPE theta 10,000, init std 0.02, no biases.
The vocabulary size is not part of a preset: it comes from the tokenizer the token stores
were built with (``store.vocab_size``), since an 8k vocabulary already halves the speed of
a d128 model on a CPU and a 128k one dominates the 150m model's parameter count
(2 x 128k x 512 = 131M of its ~150M with untied embeddings).

Why ``small`` is d192 x 4 layers: measured with the loop on the 2-core Zen 3 CPU
(2026-11-27, fp32, seq 128 x batch 16, vocabulary 2048 = the project tokenizer's default,
``python benchmarks/bench_loop.py --presets tiny,small,d256``, best of 5 alternated rounds):
tiny (d128) 17.9k tokens/s, d192 9.9k, d256 6.6k. Non-embedding parameters: 0.95M, 2.1M,
3.8M. d192 more than doubles tiny's capacity while keeping ~10k tokens/s, so a study of 20
runs x 1M tokens takes about 35 minutes; d256 would cost another 1.5x for 1.8x capacity.

Tokenizer/model vocabulary mismatch is refused: a store whose tokenizer has more ids than the
model's embedding rows would index out of range (a device-side assert on GPU, an
IndexError deep in torch on CPU), so :func:`check_vocab` says it up front.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping

from replaytune.config import PRESET_NAMES, ModelConfig
from replaytune.hub import looks_like_path
from replaytune.errors import ConfigError, DataError, ReplaytuneError
from replaytune.fsio import replace_dir, temp_dir

# Architecture of each preset; vocabulary size and sequence length are added at build time.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "intermediate_size": 448, "num_hidden_layers": 4, "num_attention_heads": 4},
    "small": {"hidden_size": 192, "intermediate_size": 672, "num_hidden_layers": 4, "num_attention_heads": 4},
    "150m": {"hidden_size": 512, "intermediate_size": 1792, "num_hidden_layers": 6, "num_attention_heads": 8},
    "300m": {"hidden_size": 768, "intermediate_size": 2688, "num_hidden_layers": 12, "num_attention_heads": 12},
    "600m": {"hidden_size": 1024, "intermediate_size": 3584, "num_hidden_layers": 24, "num_attention_heads": 16},
}
assert tuple(PRESETS) == PRESET_NAMES  # config.py validates names without importing this module

COMMON: dict[str, Any] = {
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "attention_bias": False,
    "mlp_bias": False,
    "attention_dropout": 0.0,
    "use_cache": False,
}


def preset_config(
    name: str,
    vocab_size: int,
    *,
    seq_len: int = 4096,
    eos_id: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    attn_implementation: str = "sdpa",
):
    """The ``LlamaConfig`` of a preset for a given vocabulary (``overrides`` win)."""
    from transformers import LlamaConfig

    if name not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    arch = dict(PRESETS[name])
    arch["num_key_value_heads"] = arch["num_attention_heads"]
    fields: dict[str, Any] = {**COMMON, **arch, "vocab_size": int(vocab_size)}
    fields["max_position_embeddings"] = max(4096, int(seq_len))
    if eos_id is not None:
        fields["eos_token_id"] = int(eos_id)
        fields["bos_token_id"] = int(eos_id)  # documents are separated by EOS only (GPT-2 style)
    fields.update(overrides or {})
    if "num_attention_heads" in (overrides or {}) and "num_key_value_heads" not in (overrides or {}):
        fields["num_key_value_heads"] = fields["num_attention_heads"]
    if fields["hidden_size"] % fields["num_attention_heads"]:
        raise ConfigError(
            f"model.overrides: hidden_size {fields['hidden_size']} must divide by "
            f"num_attention_heads {fields['num_attention_heads']}"
        )
    config = LlamaConfig(**fields)
    config._attn_implementation = attn_implementation
    return config


def frozen_dtype(spec: ModelConfig, precision: str, parallel: str = "ddp") -> str:
    """``fp32`` or ``bf16``: the dtype the frozen pretrained weights are kept in.

    Trainable weights stay fp32 whatever this says: AdamW's update of a bf16 weight loses
    every change under its 8-bit mantissa's resolution, so mixed precision keeps fp32 master
    weights and computes in bf16 (autocast). Only weights that never change (the base under
    LoRA) can live in bf16, halving their memory: 16 GB instead of 32 for an 8B base.
    """
    if spec.pretrained is None:
        return "fp32"
    want = spec.weights_dtype
    if spec.load_in_4bit:
        want = "bf16"  # the layers bitsandbytes leaves unquantized, and the compute dtype
    if want == "bf16" and precision != "bf16":
        raise ConfigError(
            "model.weights_dtype bf16 (or load_in_4bit) needs bf16 compute: set dtype: bf16 (finetune: --dtype bf16); "
            "on CPU bf16 is slow and fp32 is the default"
        )
    if want == "bf16" and parallel == "fsdp" and spec.lora is not None:
        raise ConfigError(
            "model.weights_dtype bf16 with LoRA under parallel: fsdp: FSDP shards a bf16 base and fp32 adapters in one "
            "group, which it cannot; use weights_dtype fp32 (the shards already divide the memory) or parallel: ddp"
        )
    if want == "auto":
        return "bf16" if precision == "bf16" and spec.lora is not None and parallel != "fsdp" else "fp32"
    return want


def check_4bit(device: str | None) -> None:
    """A 4-bit base (QLoRA) can load here, or one line says why not (before any work is done)."""
    if device is None or not str(device).startswith("cuda"):
        raise ConfigError(
            f"model.load_in_4bit (--load-in-4bit, QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run on "
            f"this run's device ({device or 'cpu'}); drop --load-in-4bit, or use LoRA with --dtype bf16 for a base "
            f"at half the fp32 memory"
        )
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("model.load_in_4bit needs bitsandbytes: pip install 'replaytune[qlora]'")


def _quantization(spec: ModelConfig, device: str | None) -> dict[str, Any]:
    """from_pretrained arguments of a 4-bit NF4 base (QLoRA), or a clear refusal."""
    if not spec.load_in_4bit:
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    check_4bit(device)
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    return {"quantization_config": config, "device_map": {"": torch.device(device)}}


def is_quantized(model) -> bool:
    """Whether bitsandbytes holds some weights packed (such a model cannot be moved or cast)."""
    return any(type(p).__name__ == "Params4bit" for p in model.parameters())


def load_pretrained(spec: ModelConfig, *, dtype: str = "fp32", device: str | None = None, meta: bool = False):
    """``AutoModelForCausalLM.from_pretrained`` from a local folder or a hub id.

    Weights in ``dtype`` (fp32 or bf16; see ``frozen_dtype``), on the CPU, except for a 4-bit
    base (``load_in_4bit``), which bitsandbytes places on ``device``. ``meta``: the same
    model without weights (on the meta device, nothing read but the config), for FSDP ranks
    that receive their shards from rank 0.
    """
    import torch
    from transformers import AutoModelForCausalLM

    name = str(spec.pretrained)
    local = Path(name).expanduser()
    if not local.exists() and looks_like_path(name):
        raise DataError(f"model.pretrained: no such directory {name!r}; give a saved model folder or a hub id")
    if not local.exists():
        from replaytune.hub import require_hub

        require_hub("model.pretrained", name)
    source = str(local) if local.exists() else name
    kwargs: dict[str, Any] = {
        "dtype": torch.bfloat16 if dtype == "bf16" else torch.float32,
        "attn_implementation": spec.attn_implementation,
        **_quantization(spec, device),
    }
    if spec.gguf_file:
        kwargs["gguf_file"] = spec.gguf_file
        try:  # unpack the GGUF blocks into dense fp32 weights: trainable, and savable with save_pretrained
            from transformers.utils.quantization_config import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # older transformers always de-quantize GGUF files
            pass
    try:
        if meta:
            from transformers import AutoConfig

            extra = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
            config = AutoConfig.from_pretrained(source, **extra, **dict(spec.overrides))
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(
                    config, dtype=kwargs["dtype"], attn_implementation=spec.attn_implementation
                )
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs, **dict(spec.overrides))
    except (OSError, ValueError) as exc:
        where = "folder" if local.exists() else "hub id (offline? set a local path)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReplaytuneError(f"model.pretrained: could not load {name!r} as a {where}: {first}") from None
    model.config.use_cache = False
    if spec.gguf_file and not meta:
        _forget_gguf_quantizer(model)
    return model


def _forget_gguf_quantizer(model) -> None:
    """A GGUF model loaded with dense weights is a plain model: drop the quantizer record.

    transformers keeps an ``hf_quantizer`` on some GGUF loads even when every weight was
    unpacked into an ordinary ``Linear``, and then refuses ``save_pretrained`` ("quantized with
    gguf and is not serializable"); the trained model could not be saved.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    packed = getattr(quantizer, "supported", False) and not getattr(quantizer.quantization_config, "dequantize", True)
    if packed:
        raise ReplaytuneError(
            "model.gguf_file: transformers kept the GGUF weights packed (not trainable); "
            "upgrade transformers or convert the model to safetensors first"
        )
    quantizer.remove_quantization_config(model)


def check_vocab(model, vocab_size: int, where: str = "the token stores") -> None:
    """Refuse a model whose embedding or output layer has fewer rows than the tokenizer has ids."""
    emb = model.get_input_embeddings().num_embeddings
    out = model.get_output_embeddings()
    rows = min(emb, out.out_features if out is not None else emb)
    if vocab_size > rows:
        raise DataError(
            f"vocabulary mismatch: {where} use {vocab_size} token ids but the model's embedding has only {rows} rows; "
            f"prepare the stores with the model's own tokenizer, or (from scratch) raise model.overrides.vocab_size"
        )


def build_model(
    spec: ModelConfig, *, vocab_size: int, seq_len: int, eos_id: int | None = None,
    precision: str = "fp32", parallel: str = "ddp", device: str | None = None, meta: bool = False,
):
    """A fresh preset model (deterministic in ``spec.init_seed``) or a pretrained one, on CPU.

    Trainable weights are fp32; frozen pretrained weights are in ``frozen_dtype(spec,
    precision, parallel)`` (bf16 for a LoRA base computed in bf16), or 4-bit on ``device``
    (QLoRA). ``meta``: the same model on the meta device, no weights (FSDP ranks but the first).

    Initialization runs under a forked RNG seeded by ``init_seed``, so building the model
    neither depends on nor disturbs the global RNG streams (data order never uses them).
    """
    import torch
    from transformers import LlamaForCausalLM

    if spec.pretrained is not None:
        # a 4-bit base keeps its unquantized parts (embedding, head, norms) in bf16 as loaded:
        # they are frozen, and bf16 autocast computes with them as it does with a bf16 LoRA base
        # (peft's k-bit preparation would upcast them to fp32: 4.2 GB more for an 8B model)
        model = load_pretrained(spec, dtype=frozen_dtype(spec, precision, parallel), device=device, meta=meta)
    else:
        config = preset_config(
            str(spec.preset),
            vocab_size,
            seq_len=seq_len,
            eos_id=eos_id,
            overrides=spec.overrides,
            attn_implementation=spec.attn_implementation,
        )
        with torch.random.fork_rng(devices=[]), torch.device("meta") if meta else contextlib.nullcontext():
            torch.manual_seed(spec.init_seed)
            model = LlamaForCausalLM(config)
    check_vocab(model, vocab_size)
    if spec.lora is not None:
        model = apply_lora(model, spec)
    for p in model.parameters():  # fp32 master weights for whatever trains (mixed precision)
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def apply_lora(model, spec: ModelConfig):
    """Wrap in peft LoRA adapters: only adapter weights train; the base stays frozen."""
    import torch
    from peft import LoraConfig, get_peft_model

    lora = spec.lora
    assert lora is not None
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        return get_peft_model(model, config)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def tokenizer_to_save(path: str | None):
    """A tokenizer to save beside the model, or None (then only the model is saved): never an error.

    Accepts a tokenizer folder (read by ``data/tokenizer.load_tokenizer``, the one loader) or a
    ``tokenizers`` JSON file. A tokenizer that cannot be read must not cost the trained model.
    """
    if not path:
        return None
    p = Path(path).expanduser()
    try:
        if p.is_file() and p.suffix == ".json":
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast(tokenizer_file=str(p))
        if p.is_dir() and not any((p / f).exists() for f in _TOKENIZER_FILES):
            return None  # a model folder saved without its tokenizer
        if p.exists():
            from replaytune.data.tokenizer import load_tokenizer

            return load_tokenizer(p)
    except Exception as exc:  # a tokenizer we cannot read must not cost the trained model
        warnings.warn(f"could not load tokenizer {path}: {exc}; saving the model without it")
    return None


def save_model(model, path: str | Path, *, tokenizer=None, state_dict: Mapping[str, Any] | None = None) -> Path:
    """``save_pretrained`` into a temporary folder beside ``path``, then rename it in place.

    A peft model saves its adapter (``adapter_config.json`` names the base model); anything
    else saves full weights as safetensors. ``state_dict`` lets a sharded (FSDP) model pass
    its gathered full weights.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per save is noise in our logs
    try:
        kwargs = {} if state_dict is None else {"state_dict": dict(state_dict)}
        model.save_pretrained(str(tmp), **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return path


def count_parameters(model, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def train_flops_per_token(config, seq_len: int) -> float:
    """Model FLOPs per trained token (forward + backward), for MFU.

    ``6 N`` for the matrix multiplies (N = parameters in matmuls: every layer's projections
    plus the output head; the input embedding is a lookup, not a matmul), plus attention's
    ``12 * layers * hidden * seq_len`` (QK^T and AV, forward and backward; causal masking
    not discounted, the PaLM convention). 150m at the Llama-3 vocabulary (128,256) and
    seq 4096: layers 6 * (4 * 512^2 + 3 * 512 * 1792) = 22.8M, head 512 * 128,256 = 65.7M,
    so 6 * 88.5M + 12 * 6 * 512 * 4096 = 0.68 GFLOP per token.
    """
    h = config.hidden_size
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2  # q, o and k, v projections
    mlp = 3 * h * config.intermediate_size
    matmul_params = layers * (attn + mlp) + h * config.vocab_size
    return 6.0 * matmul_params + 12.0 * layers * h * seq_len


def describe(model) -> str:
    n = count_parameters(model)
    t = count_parameters(model, trainable_only=True)
    scale = int(math.log10(max(n, 1)) // 3)
    unit = ["", "k", "M", "B"][min(scale, 3)]
    value = n / 1000 ** min(scale, 3)
    return f"{type(model).__name__} {value:.1f}{unit} parameters ({t:,} trainable)"
