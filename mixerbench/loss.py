"""The one loss: softmax cross-entropy, used by training, evaluation and the train benchmark.

One function so that the loss a run logs while training, the loss `evaluate` reports for its
checkpoint and the step `bench --mode train` times are the same computation (paper section 3:
all models are trained with cross-entropy; Mixup and label smoothing arrive as soft targets).
"""

from __future__ import annotations


def cross_entropy(logits, targets, reduction: str = "mean"):
    """Cross-entropy of `logits` (B, K) against integer labels (B,) or soft targets (B, K).

    The logits are cast to float32 first: under bf16/fp16 autocast the log-softmax of a
    low-precision tensor loses digits a loss curve needs.
    """
    import torch.nn.functional as F

    return F.cross_entropy(logits.float(), targets, reduction=reduction)
