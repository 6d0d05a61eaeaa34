"""AdamW as the paper sets it up: decay on matrices only, hyperparameters from OptimConfig.

Weight decay (default 0.1) multiplies the weights by ``1 - lr * wd`` each step. The paper
(and Levanter, whose recipe it uses) exempts norm gains, biases and embeddings: norm gains
and biases are 1-D scales and offsets, not capacity to regularize, and decaying the input
embedding shrinks the rows of rare tokens, which get few gradient updates to push back.
They go in a group with weight_decay 0; the output head, a matrix, is decayed.
On CUDA the fused implementation runs (one kernel per step for all parameters).
A "reset" (phase ``reset_optimizer``) is a new optimizer from this function: zeroed moments
and step counts, so bias correction restarts too.
"""

from __future__ import annotations

from replaytune.config import OptimConfig


def make_optimizer(model, optim: OptimConfig):
    """AdamW with weight decay on matrices only (not norms, biases, input embedding)."""
    import torch

    embedding = {id(p) for p in model.get_input_embeddings().parameters()}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or id(p) in embedding else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one CUDA kernel for all parameters instead of a few per tensor (same update, float rounding aside)
    fused = bool(decay or no_decay) and all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=0.0, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                             fused=fused or None)
