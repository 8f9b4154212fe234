"""The Vision Transformer family: the paper's attention baseline (ViT-S/B/L/H, section 3 and
Tables 2-3), built by timm's `vision_transformer`, and `vit-t4`, a small-image ViT for
CIFAR-size inputs that is not in the paper.

Every zoo ViT starts from the ViT paper's own initialisation (vision_transformer's JAX code:
lecun-normal patch embedding, xavier-uniform attention and MLP kernels, zero head), which timm
reproduces with `weight_init="jax"`; timm's default (truncated normal 0.02 everywhere) is not
what the paper's baselines were trained from, and it hurt the small ViT. The small ViT pools its
tokens (global average, no class token: the ViT paper's App. D.3 finds it as good given the
right lr, and it gives the ViT the Mixer's head).

Official `.npz` files (`models/weights.py`) may carry what timm's ViT no longer builds: a
representation layer (`pre_logits`: Dense + tanh between pooling and head, as in the ImageNet-21k
ViT checkpoints), built here with `representation_size`; and Flax's tanh GELU (`gelu="tanh"`).
"""

from __future__ import annotations

import functools

from mixerbench.errors import UserError
from mixerbench.models.registry import Family, ModelSpec, Small, register_family

_VIT = {  # paper name -> (timm architecture, patch)
    "S/16": ("vit_small_patch16_224", 16), "S/32": ("vit_small_patch32_224", 32),
    "B/16": ("vit_base_patch16_224", 16), "B/32": ("vit_base_patch32_224", 32),
    "L/16": ("vit_large_patch16_224", 16), "L/32": ("vit_large_patch32_224", 32),
    "H/14": ("vit_huge_patch14_224", 14),
}


@functools.cache
def _representation_vit():
    """timm's VisionTransformer with vision_transformer's representation layer (a class made
    on first use, so importing this family needs no torch)."""
    from collections import OrderedDict

    from timm.models.vision_transformer import VisionTransformer
    from torch import nn

    class RepresentationViT(VisionTransformer):
        """`models_vit.py`'s head: pool, then `pre_logits` (Dense to `representation_size`,
        tanh), then the classifier; `forward_head(pre_logits=True)` is the representation."""

        def add_representation(self, size: int) -> None:
            self.pre_logits = nn.Sequential(OrderedDict(
                fc=nn.Linear(self.embed_dim, size), act=nn.Tanh()))
            self.representation_size = self.num_features = self.head_hidden_size = size
            self.reset_classifier(self.num_classes)
            if self.num_classes:  # the official head starts at zero
                nn.init.zeros_(self.head.weight)
                nn.init.zeros_(self.head.bias)

        def reset_classifier(self, num_classes: int, global_pool=None) -> None:
            super().reset_classifier(num_classes, global_pool)
            size = getattr(self, "representation_size", None)
            if size and num_classes:
                self.head = nn.Linear(size, num_classes)

        def forward_head(self, x, pre_logits: bool = False):
            x = self.head_drop(self.pre_logits(self.fc_norm(self.pool(x))))
            return x if pre_logits else self.head(x)

    return RepresentationViT


def create(spec: ModelSpec, num_classes: int, gelu: str | None = None,
           representation_size: int | None = None, **kw):
    """timm's ViT of `spec`'s architecture; `gelu="tanh"` is Flax's `nn.gelu`, recorded for
    ViTs read from official `.npz` files (otherwise timm's exact GELU); `representation_size`
    adds the official representation layer."""
    import timm

    if gelu == "tanh":
        kw["act_layer"] = "gelu_tanh"
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes, **kw)
    if representation_size:
        model.__class__ = _representation_vit()
        model.add_representation(int(representation_size))
    return model


def to_timm(spec: ModelSpec, model, label: str) -> dict:
    """A ViT is timm's module already; one with a representation layer timm cannot rebuild."""
    if getattr(model, "representation_size", None):
        raise UserError(f"{label} has the representation layer (pre_logits) of an official "
                        "checkpoint, which timm's ViT no longer builds, so it cannot be exported; "
                        "fine-tune it (which drops that layer) and export that run.")
    return dict(module=model, architecture=model.pretrained_cfg.get("architecture"),
                constructor=None, model_args=None, gelu=None)


register_family(Family(
    "vit", "ViT", "vit-b16", color="#0072B2", marker="s", linestyle="--",  # blue, dashed
    models=(*(ModelSpec("vit-" + v.replace("/", "").lower(), "vit", f"ViT-{v}", arch, 224, patch,
                        dict(weight_init="jax"))
              for v, (arch, patch) in _VIT.items()),
            ModelSpec("vit-t4", "vit", "ViT-T/4 (32 px)", "vit_tiny_patch16_224", 32, 4,
                      dict(embed_dim=256, depth=8, num_heads=4, global_pool="avg",
                           class_token=False, weight_init="jax"),
                      note="small-image ViT: width 256, 8 blocks, 4 heads, patch 4, GAP head, "
                           "JAX init")),
    prefixes=("vit", "deit"),
    options={"width": "embed_dim", "depth": "depth", "img_size": "img_size",
             "patch_size": "patch_size"},
    create=create, to_timm=to_timm, paper_role="attention",
    limits={"num_heads": (1, 1024), "mlp_ratio": (0.01, 64), "representation_size": (1, 65_536)},
    small={
        "cifar10-scratch": Small(dict(name="vit-t4", img_size=32, patch_size=4, drop_path=0.1)),
        "smoke": Small(dict(name="vit-t4", img_size=28, patch_size=4, width=64, depth=2,
                            options={"num_heads": 2})),
    },
))
