"""The optimizer and learning-rate schedule of a run (paper section 3, big_vision's recipe).

torch's AdamW/SGD and `LambdaLR` do the work; what is written here is the parameter split
(weight decay on kernels only) and the schedule's shape, which torch has no single scheduler for
(linear warm-up, then linear decay to an end factor or cosine to 0).
"""

from __future__ import annotations

import math

from mixerbench.config import RunConfig


def lr_factor(step: int, total: int, warmup: int, schedule: str, end_factor: float) -> float:
    """Multiplier on the peak lr at `step` (0-based): linear warm-up from 0, then decay.

    Linear decay ends at `end_factor` (big_vision `linear_end`); cosine ends at 0 (paper
    section 3: linear warm-up of 10k steps then linear decay for pre-training, cosine for
    fine-tuning).
    """
    if warmup and step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return end_factor + (1.0 - end_factor) * (1.0 - progress)


def make_optimizer(model, cfg: RunConfig, fused: bool):
    """AdamW or SGD with weight decay on kernels only (matrices and conv filters, not biases,
    norms, position embeddings or class tokens), as big_vision's `.*/kernel$` rule."""
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and name.endswith("weight") else no_decay).append(p)
    o = cfg.optim
    groups = [dict(params=decay, weight_decay=o.weight_decay),
              dict(params=no_decay, weight_decay=0.0)]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, fused=fused or None)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=1e-8,
                             fused=fused or None)


def make_scheduler(optimizer, cfg: RunConfig, total: int, warmup: int):
    """`LambdaLR` stepping `lr_factor` once per optimizer step."""
    import torch

    o = cfg.optim
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, total, warmup, o.schedule, o.end_factor))
