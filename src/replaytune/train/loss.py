"""The training and evaluation loss, with or without the full logits tensor.

The plain path computes ``logits = hidden @ W_head^T`` for every token, then cross-entropy.
With a 128,256-token vocabulary and 4096-token sequences the logits of one sequence are
4096 x 128,256 = 525M numbers: 1.05 GB in bf16, 2.1 GB after the fp32 upcast the loss
needs, and autograd keeps that, the log-softmax and their gradients alive: the loss, not
the model, limits the micro-batch (BENCHMARKS.md).

The chunked path (:func:`linear_cross_entropy`) never builds them. It walks the tokens in
chunks of ``c`` (``c x V`` about 2^26 logits, 256 MB in fp32: 512 tokens at V = 128,256)
and, for each chunk, computes the logits ``z``, the per-token loss ``logsumexp(z) - z_target``
and at once its gradient ``dz = softmax(z) - onehot(target)`` (zero for ignored targets) in
one fp32 buffer rewritten in place,
then ``dL/dhidden = dz @ W`` and ``dL/dW += dz^T @ hidden``; the chunk's logits are freed
before the next. Both gradients are kept until backward, which only multiplies them by
the incoming gradient of the summed loss. The head therefore costs the same three matmuls
as the plain path (forward, and two in backward), with no recomputation, and memory of one
chunk's logits instead of all of them.

The gradient is computed for the *sum* of the token losses (what the loop backpropagates,
scaled by ``world / T_global``); the per-token losses come out detached, so per-source
sums stay exact. Under bf16 autocast the chunk's matmuls run in bf16 and the softmax in
fp32, as autocast does on the plain path. On CUDA the per-chunk arithmetic is compiled with
``torch.compile`` (one fused kernel for the softmax, gather and subtraction); on the CPU it
runs eagerly (compiling costs 35-70 s there).

Which path runs: ``loss: auto`` (the default) takes the chunked one when the output layer
has at least :data:`CHUNKED_MIN_VOCAB` rows (32,000: Llama-2/Mistral and larger) and the
model is one whose output is a plain linear head on the last hidden state (Llama, Mistral,
Qwen2/3, with or without LoRA adapters, tied or untied); ``loss: full`` always builds the
logits; ``loss: chunked`` asks for the chunked path and refuses a model that cannot use
it. Under FSDP the head's weight is a shard outside the model's forward, so the full path
runs there. Liger's fused linear cross-entropy (``liger-kernel``, Triton, CUDA only) does the
same job in one kernel; it is not used here (not measured against this on a card yet).
"""

from __future__ import annotations

import inspect
from typing import Any

from replaytune.data.window import IGNORE  # noqa: F401 (target id cross-entropy skips; re-exported)
from replaytune.errors import ConfigError

CHUNKED_MIN_VOCAB = 32_000
CHUNK_LOGITS = 1 << 26  # logits per chunk (tokens x vocabulary): 256 MB in fp32
LOSS_MODES = ("auto", "chunked", "full")
# models whose causal-LM forward is ``logits = lm_head(hidden_states[:, logits_to_keep])``
# and nothing more (no soft-capping or logit scale between the head and the loss)
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def chunk_tokens(vocab: int) -> int:
    """Tokens per chunk: about CHUNK_LOGITS logits, a multiple of 64, at least 64."""
    return max(64, CHUNK_LOGITS // max(int(vocab), 1) // 64 * 64)


def sequence_losses(logits, targets):
    """Summed cross-entropy of each sequence's target tokens, fp32: [n] (the full-logits path)."""
    import torch.nn.functional as F

    n, length, vocab = logits.shape
    ce = F.cross_entropy(logits.reshape(n * length, vocab).float(), targets.reshape(-1), ignore_index=IGNORE, reduction="none")
    return ce.view(n, length).sum(dim=1)


def _chunk(h, w, t, grad: bool):
    """Loss of each token of one chunk and, if ``grad``, d(sum of losses)/d(logits) in h's dtype.

    One fp32 [c, V] buffer, rewritten in place: z - max, then exp(z - max), then the gradient
    softmax(z) - onehot(target) (zero rows for ignored targets); one exp pass in all.
    """
    import torch

    z = (h @ w.t()).float()  # [c, V]; the fp32 upcast of the full path
    valid = t != IGNORE
    safe = torch.where(valid, t, 0).unsqueeze(1)
    z.sub_(z.amax(dim=1, keepdim=True))
    target = z.gather(1, safe).squeeze(1)
    total = z.exp_().sum(dim=1)
    loss = torch.where(valid, total.log() - target, 0.0)
    if not grad:
        return loss, None
    keep = valid.to(z.dtype)
    dz = z.mul_((keep / total).unsqueeze(1))  # softmax; ignored targets: 0
    dz.scatter_add_(1, safe, -keep.unsqueeze(1))  # minus one-hot of the target
    return loss, dz.to(h.dtype)


_COMPILED: dict[str, Any] = {}


def _chunk_fn(compile: bool):
    if not compile:
        return _chunk
    if "fn" not in _COMPILED:
        import torch

        _COMPILED["fn"] = torch.compile(_chunk, dynamic=True)
    return _COMPILED["fn"]


def _make_function():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """(sum of token losses, token losses) of ``hidden @ weight^T``; gradients made in forward."""

        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk, dtype, compile):
            need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            fn = _chunk_fn(compile)
            n = hidden.shape[0]
            losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
            gh = torch.empty_like(hidden) if need_h else None
            gw = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device) if need_w else None
            w = weight.to(dtype)
            with torch.autocast(hidden.device.type, enabled=False):
                for lo in range(0, n, chunk):
                    hi = min(lo + chunk, n)
                    h = hidden[lo:hi].to(dtype)
                    loss, dz = fn(h, w, targets[lo:hi], need_h or need_w)
                    losses[lo:hi] = loss
                    if need_h:
                        gh[lo:hi] = dz @ w
                    if need_w:
                        if dz.dtype == gw.dtype:
                            gw.addmm_(dz.t(), h)
                        else:  # bf16 matmul as autocast's, accumulated in the weight's fp32
                            gw.add_(dz.t() @ h)
                    del dz
            ctx.save_for_backward(gh, gw)
            ctx.done = False
            total = losses.sum()
            ctx.mark_non_differentiable(losses)
            return total, losses

        @staticmethod
        def backward(ctx, grad_total, _grad_losses):
            if ctx.done:
                raise RuntimeError("the chunked loss's backward runs once (retain_graph is not supported); use loss: full")
            ctx.done = True
            gh, gw = ctx.saved_tensors
            # scaled in place: these buffers belong to this call alone
            gh = gh.mul_(grad_total) if gh is not None else None
            gw = gw.mul_(grad_total) if gw is not None else None
            return gh, gw, None, None, None, None

    return LinearCrossEntropy


_FUNCTION: dict[str, Any] = {}


def linear_cross_entropy(hidden, weight, targets, *, chunk_size: int | None = None, compile: bool | None = None):
    """Cross-entropy of ``hidden @ weight^T`` against ``targets`` without the full logits.

    ``hidden`` [..., d], ``weight`` [V, d], ``targets`` [...] (IGNORE = not a target).
    Returns ``(total, losses)``: the differentiable sum of the token losses (fp32 scalar) and
    the detached fp32 loss of every token, shaped like ``targets`` (0 where ignored).
    The matmuls run in the autocast dtype when autocast is on, else in ``weight``'s dtype.
    ``compile``: compile the per-chunk arithmetic (default: on CUDA only).
    """
    import torch

    shape = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    if h.shape[0] != t.shape[0]:
        raise ValueError(f"linear_cross_entropy: {h.shape[0]} hidden states but {t.shape[0]} targets")
    kind = h.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else weight.dtype
    chunk = int(chunk_size or chunk_tokens(weight.shape[0]))
    if chunk < 1:
        raise ValueError(f"linear_cross_entropy: chunk_size must be >= 1, got {chunk}")
    if compile is None:
        compile = kind == "cuda"
    if not torch.is_grad_enabled() or not (h.requires_grad or weight.requires_grad):
        fn = _chunk_fn(compile)
        w = weight.to(dtype)
        losses = torch.empty(t.shape[0], dtype=torch.float32, device=h.device)
        with torch.no_grad(), torch.autocast(kind, enabled=False):
            for lo in range(0, t.shape[0], chunk):
                losses[lo : lo + chunk] = fn(h[lo : lo + chunk].to(dtype), w, t[lo : lo + chunk], False)[0]
        return losses.sum(), losses.view(shape)
    if "cls" not in _FUNCTION:
        _FUNCTION["cls"] = _make_function()
    total, losses = _FUNCTION["cls"].apply(h, weight, t, chunk, dtype, compile)
    return total, losses.view(shape)


# -- models ------------------------------------------------------------------------------------


def _base(model):
    """The transformers model under peft and DDP wrappers."""
    model = getattr(model, "module", model)  # DDP
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return model


def _unsupported(model, sharded: bool) -> str | None:
    """Why the chunked loss cannot run on this model, or None."""
    import torch

    if sharded:
        return "under parallel: fsdp the output layer's weight is sharded outside the model's forward"
    base = _base(model)
    kind = getattr(getattr(base, "config", None), "model_type", None)
    if kind not in PLAIN_HEAD_MODELS:
        return f"model type {kind!r} is not one whose logits are a plain linear head ({', '.join(sorted(PLAIN_HEAD_MODELS))})"
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return f"its output layer is a {type(head).__name__}{' with a bias' if head.bias is not None else ''}, not a plain Linear"
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return f"{type(base).__name__}.forward takes no logits_to_keep"
    return None


def chunked_head(model, mode: str = "auto", *, sharded: bool = False):
    """The output layer to fold into the loss (chunked path), or None (full logits).

    ``mode``: ``auto`` (chunked for vocabularies >= CHUNKED_MIN_VOCAB when the model allows),
    ``chunked`` (refused with one line when the model does not allow it), ``full``.
    """
    if mode not in LOSS_MODES:
        raise ConfigError(f"loss: unknown mode {mode!r}; allowed: {', '.join(LOSS_MODES)}")
    if mode == "full":
        return None
    reason = _unsupported(model, sharded)
    if reason is not None:
        if mode == "chunked":
            raise ConfigError(f"loss: chunked cannot run here: {reason}; set loss: full (--set loss=full)")
        return None
    head = _base(model).get_output_embeddings()
    if mode == "auto" and head.out_features < CHUNKED_MIN_VOCAB:
        return None
    return head


def forward_losses(model, input_ids, targets, *, head=None, position_ids=None):
    """Run ``model`` and return ``(total, per_sequence)``.

    ``total``: the differentiable sum of CE over all target tokens; ``per_sequence`` [n]:
    each sequence's summed CE, detached, fp32. ``head``: the output layer from
    :func:`chunked_head` (chunked path) or None (full logits). ``model`` may be the DDP
    or peft wrapper; call it under the run's autocast.
    """
    import torch

    extra = {} if position_ids is None else {"position_ids": position_ids}
    if head is None:
        logits = model(input_ids=input_ids, use_cache=False, **extra).logits
        with torch.autocast(logits.device.type, enabled=False):
            per_seq = sequence_losses(logits, targets)
        return per_seq.sum(), per_seq.detach()
    # an empty index list: the model computes no logits at all (its head sees 0 positions)
    keep = torch.zeros(0, dtype=torch.long, device=input_ids.device)
    out = model(input_ids=input_ids, use_cache=False, output_hidden_states=True, logits_to_keep=keep, **extra)
    hidden = out.hidden_states[-1]  # after the final norm: what the head would have seen
    total, losses = linear_cross_entropy(hidden, head.weight, targets)
    return total, losses.sum(dim=1)
