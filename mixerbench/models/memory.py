"""Memory a model needs, traced on the meta device before anything is allocated.

`forward_bytes` runs one forward pass of one image on meta tensors (no memory, no compute)
under a dispatch mode that adds up the bytes of every tensor an operator creates. Views share
their input's storage and are not counted. The sum is what a training step keeps for the
backward pass at most (autograd saves a subset of these outputs), the largest single output is
what even inference must hold at once: together with the weights they are lower bounds that
refuse an input size no device here can run (a 4096 px ViT's activations) without trying.
Hand-written: torch offers no ahead-of-time activation estimate for an arbitrary module.
"""

from __future__ import annotations


def forward_bytes(model, img_size: int, *, in_chans: int = 3, element_size: int = 4) -> tuple[int, int]:
    """(sum, largest) bytes of the tensors one image's forward pass creates, at `element_size`
    bytes per element (4: fp32, 2: bf16/fp16 autocast). `model` must live on the meta device."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Count(TorchDispatchMode):
        total = largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not getattr(func, "is_view", False):
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        n = t.numel() * element_size
                        Count.total += n
                        Count.largest = max(Count.largest, n)
            return out

    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, img_size, img_size, device="meta")
    try:
        with torch.no_grad(), Count():
            model(x)
    finally:
        model.train(was_training)
    return Count.total, Count.largest
