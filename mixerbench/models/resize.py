"""Changing the input resolution of a trained model (fine-tuning at higher resolution).

Mixer (paper section 3 "Fine-tuning" and Appendix C; docs/paper-notes.md §4): the patch size
stays, so raising the side by an integer factor K multiplies the tokens, S' = K^2 S. The
token-mixing MLP grows to D_S' = K^2 D_S with K^2 copies of the trained weights on a block
diagonal and the biases tiled, where each block sees the tokens of one of the K x K image parts.
No public code implements this (docs/paper-notes.md §4), so it is written here.

Rather than reorder tokens at run time, the rows and columns of the new matrices are permuted
from the "parts concatenated" order into the stem's raster order; the expanded model is then a
plain `Mixer` at the new size. Its defining property, exact up to float rounding:
`m2(tile(A, B, C, D)) == mean(m(A), m(B), m(C), m(D))` for the K=2 expansion `m2` of `m`.

ViT: the position embeddings are resampled with timm's `resample_abs_pos_embed`.
ResNet: nothing to change.
"""

from __future__ import annotations

import torch

from mixerbench.errors import UserError


def part_order(grid: int, k: int) -> torch.Tensor:
    """Raster index (in the K*grid x K*grid token grid) of each token in parts-concatenated order.

    Parts are the K x K image parts in raster order; inside a part tokens are in raster order.
    """
    side = grid * k
    idx = torch.arange(side * side).view(k, grid, k, grid)  # (part row, row, part col, col)
    return idx.permute(0, 2, 1, 3).reshape(-1)


def resize_mixer(model, img_size: int):
    """Return a new Mixer at `img_size` with block-diagonally expanded token-mixing MLPs.

    Args:
        model: a `mixerbench.models.mixer.Mixer`.
        img_size: the new square side; must be K times the old side for an integer K >= 1.
    """
    from mixerbench.models.mixer import Mixer

    old = model.img_size
    if img_size == old:
        return model
    if img_size % old or img_size < old:
        raise UserError(
            f"Mixer fine-tuning at {img_size} px needs an integer multiple of the trained size "
            f"{old} px (paper section 3); use {2 * old} or {3 * old}."
        )
    k = img_size // old
    grid = old // model.patch_size
    cfg = model.config()
    cfg.update(img_size=img_size, tokens_dim=model.tokens_dim * k * k)
    ref = next(model.parameters())
    with torch.device(ref.device):
        new = Mixer(**cfg)
    new = new.to(ref.dtype)
    order = part_order(grid, k)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    src, dst = model.state_dict(), new.state_dict()
    with torch.no_grad():
        for key, value in dst.items():
            w = src[key]
            if ".mlp_tokens." not in key:
                value.copy_(w)
                continue
            if key.endswith("fc1.weight"):      # (D_S, S) -> (K^2 D_S, K^2 S)
                value.copy_(torch.block_diag(*[w] * k * k)[:, inverse])
            elif key.endswith("fc1.bias"):      # (D_S,) tiled K^2 times
                value.copy_(w.repeat(k * k))
            elif key.endswith("fc2.weight"):    # (S, D_S) -> (K^2 S, K^2 D_S)
                value.copy_(torch.block_diag(*[w] * k * k)[inverse, :])
            elif key.endswith("fc2.bias"):      # (S,) per part, then into raster order
                value.copy_(w.repeat(k * k)[inverse])
            else:  # pragma: no cover - Mlp has no other parameters
                raise KeyError(key)
    new.train(model.training)
    return new


def resize_vit(model, img_size: int, spec_name: str, num_classes: int,
               overrides: dict | None = None):
    """A timm ViT at `img_size` with its position embeddings resampled (timm's helper).

    Args:
        overrides: the architecture and regularisation arguments the model was built with
            (`width`, `depth`, `num_heads`, `drop_path`, ...): the copy is rebuilt with them, so
            a small ViT keeps its shape and a fine-tuning run keeps its regularisation.
    """
    from timm.layers import resample_abs_pos_embed

    from mixerbench.models import create_model

    patch = model.patch_embed.patch_size[0]
    if img_size % patch:
        raise UserError(f"Image size {img_size} is not a multiple of the patch size {patch}.")
    new = create_model(spec_name, num_classes=num_classes, img_size=img_size, patch_size=patch,
                       **(overrides or {}))
    state = model.state_dict()
    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"], new_size=new.patch_embed.grid_size, num_prefix_tokens=prefix)
    new.load_state_dict(state)
    new.train(model.training)
    return new.to(next(model.parameters()).device)


def resize_model(model, img_size: int, spec_name: str, num_classes: int,
                 overrides: dict | None = None):
    """Dispatch on the architecture: Mixer expansion, ViT resample, or unchanged (CNNs)."""
    from mixerbench.models.mixer import Mixer

    if isinstance(model, Mixer):
        return resize_mixer(model, img_size)
    if hasattr(model, "pos_embed") and hasattr(model, "patch_embed"):
        return resize_vit(model, img_size, spec_name, num_classes, overrides)
    return model
