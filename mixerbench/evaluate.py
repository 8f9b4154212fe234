"""Evaluation: top-1 / top-5 accuracy and loss, features, linear few-shot, shuffle invariance.

`accuracy` is the one evaluation routine, used by the training loop at every evaluation and by
`mixerbench evaluate`, so a checkpoint re-evaluated later reproduces the number its run logged.
"""

from __future__ import annotations

from contextlib import nullcontext


def autocast(device: str, dtype: str):
    """bf16/fp16 autocast on CUDA; a no-op for fp32 or on CPU (design.md section 7)."""
    import torch

    if dtype == "fp32" or not str(device).startswith("cuda"):
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def accuracy(model, batches, *, device: str = "cpu", dtype: str = "fp32") -> dict:
    """Top-1 and top-5 accuracy (percent, 0-100) and mean cross-entropy over one pass.

    Args:
        model: a classifier returning logits (B, K).
        batches: an iterable of (x, y) with integer labels y (an eval loader's `epoch(0)`).

    Returns:
        dict(top1, top5, loss, n) summed over every example exactly once.
    """
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    loss_sum = 0.0
    n = 0
    with torch.no_grad():
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, dtype):
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(dim=1).sum().item()
            n += y.numel()
    model.train(was_training)
    if n == 0:
        return dict(top1=float("nan"), top5=float("nan"), loss=float("nan"), n=0)
    return dict(top1=100.0 * correct1 / n, top5=100.0 * correct5 / n, loss=loss_sum / n, n=n)
