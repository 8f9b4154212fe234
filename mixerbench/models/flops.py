"""Multiply-accumulates of a forward pass, counted by torch's `FlopCounterMode`.

One multiply-accumulate is 2 FLOPs. Attention is counted with the math kernel: the fused
scaled-dot-product kernels are invisible to some counters, so timm's `fused_attn` flag is
switched off while counting (the paper reports no FLOPs; its cost metric is TPU-v3 core-days).
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def math_attention(model):
    """Temporarily route timm attention through explicit matmuls (q @ k^T, attn @ v)."""
    touched = []
    for m in model.modules():
        if getattr(m, "fused_attn", None) is True:
            m.fused_attn = False
            touched.append(m)
    try:
        yield model
    finally:
        for m in touched:
            m.fused_attn = True


def count_macs(model, img_size: int, *, device: str = "cpu", batch: int = 1,
               in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass per image (matmuls and convolutions)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(batch, in_chans, img_size, img_size, device=device)
    counter = FlopCounterMode(display=False)
    with math_attention(model), counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2 // batch
