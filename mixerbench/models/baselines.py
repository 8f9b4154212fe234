"""The paper's baselines and the Mixer's all-MLP contemporaries, mapped to timm
(docs/paper-notes.md §8).

ViT-S/B/L/H and BiT-R50x1 ... R152x4 (timm's `resnetv2_*_bit`, BiT-M shapes) plus torchvision's
ResNet-50 shape (`resnet50`); gMLP and ResMLP (timm's `gmlp_*`, `resmlp_*`); and a small-image
model of each family for CIFAR-size inputs that sits beside `mixer-t4` in the small presets.
Each family is one `register_family` call.
"""

from __future__ import annotations

from typing import Any

from mixerbench.errors import UserError
from mixerbench.models.registry import Family, ModelSpec, Small, family, register_family

_VIT = {  # paper name -> (timm architecture, patch)
    "S/16": ("vit_small_patch16_224", 16), "S/32": ("vit_small_patch32_224", 32),
    "B/16": ("vit_base_patch16_224", 16), "B/32": ("vit_base_patch32_224", 32),
    "L/16": ("vit_large_patch16_224", 16), "L/32": ("vit_large_patch32_224", 32),
    "H/14": ("vit_huge_patch14_224", 14),
}
# timm's constructor arguments for the zoo's options, shared by ViT and timm's MlpMixer class
_TOKENS = {"width": "embed_dim", "img_size": "img_size", "patch_size": "patch_size"}

# Every zoo ViT starts from the ViT paper's own initialisation (vision_transformer's JAX code:
# lecun-normal patch embedding, xavier-uniform attention and MLP kernels, zero head), which timm
# reproduces with `weight_init="jax"`; timm's default (truncated normal 0.02 everywhere) is not
# what the paper's baselines were trained from, and it hurt the small ViT.
# The small-image ViT (not in the paper), sized like mixer-t4 for 32 px inputs, pools its tokens
# (global average, no class token: the ViT paper's App. D.3 finds it as good given the right lr,
# and it gives the ViT the Mixer's head).
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
    prefixes=("vit", "deit"), options={**_TOKENS, "depth": "depth"},
    small={
        "cifar10-scratch": Small(dict(name="vit-t4", img_size=32, patch_size=4, drop_path=0.1)),
        "smoke": Small(dict(name="vit-t4", img_size=28, patch_size=4, width=64, depth=2,
                            options={"num_heads": 2})),
    },
))

register_family(Family(
    "resnet", "ResNet / BiT", "bit-r50x1", color="#009E73", marker="^", linestyle=":",
    models=(
        ModelSpec("resnet50", "resnet", "ResNet-50", "resnet50", 224, None),
        ModelSpec("resnet18", "resnet", "ResNet-18", "resnet18", 224, None,
                  note="not in the paper; the smoke preset's small CNN"),
        *(ModelSpec(f"bit-r{depth}x{width}", "resnet", f"BiT-R{depth}x{width}",
                    f"resnetv2_{depth}x{width}_bit", 224, None)
          for depth, width in ((50, 1), (50, 3), (101, 1), (101, 3), (152, 2), (152, 4))),
        ModelSpec("resnet18-c", "resnet", "ResNet-18 (32 px stem)", "resnet18", 32, None,
                  cifar_stem=True,
                  note="ResNet-18 with a 3x3 stride-1 stem and no max-pool for 32 px inputs"),
    ),
    aliases=("bit",), prefixes=("resnet", "bit-", "bit_", "bit"),
    options={},  # convolutions take any input size; no single width
    small={
        "cifar10-scratch": Small(dict(name="resnet18-c", img_size=32)),
        "smoke": Small(dict(name="resnet18", img_size=28,
                            options={"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128]})),
    },
))

# The paper's all-MLP contemporaries (not in its tables), both timm's `MlpMixer` class with
# other blocks. gMLP (Liu et al. 2021, arXiv 2105.08050): a gated MLP whose spatial gating unit
# mixes tokens with one N x N projection; timm's gmlp_{ti,s,b}16_224 (30 blocks, expansion 6).
# ResMLP (Touvron et al. 2021, arXiv 2105.03404): a linear token-mixing layer and an MLP, affine
# normalisation; timm's resmlp_{12,24,36}_224 (expansion 4). Small shapes: the small Mixer's
# width, depth and patch (256 x 8 blocks at 32 px, 64 x 2 in the smoke preset), which puts their
# parameters and FLOPs within 15 % of the Mixer's (`mixerbench models '*-t4' --img-size 32`).
_MLP_BLOCKS = {"width": "embed_dim", "depth": "num_blocks", "img_size": "img_size",
               "patch_size": "patch_size"}
register_family(Family(
    "gmlp", "gMLP", "gmlp-s16", color="#CC79A7", marker="v", linestyle=(0, (3, 1, 1, 1, 1, 1)),
    models=(*(ModelSpec(f"gmlp-{v.lower()}16", "gmlp", f"gMLP-{v}", f"gmlp_{v.lower()}16_224",
                        224, 16, dict(embed_dim=dim, num_blocks=30, mlp_ratio=6))
              for v, dim in (("Ti", 128), ("S", 256), ("B", 512))),
            ModelSpec("gmlp-t4", "gmlp", "gMLP-T/4 (32 px)", None, 32, 4,
                      dict(embed_dim=256, num_blocks=8, mlp_ratio=6),
                      note="small-image gMLP: width 256, 8 blocks, patch 4")),
    prefixes=("gmlp",), options=_MLP_BLOCKS,
    constructor="timm.models.mlp_mixer:MlpMixer",
    layers=dict(block_layer="SpatialGatingBlock", mlp_layer="GatedMlp"),
    small={
        "cifar10-scratch": Small(dict(name="gmlp-t4", img_size=32, patch_size=4, drop_path=0.1)),
        "smoke": Small(dict(name="gmlp-t4", img_size=28, patch_size=4, width=64,
                            depth=2)),
    },
))
register_family(Family(
    "resmlp", "ResMLP", "resmlp-12", color="#E69F00", marker="P", linestyle=(0, (5, 1)),
    models=(*(ModelSpec(f"resmlp-{depth}", "resmlp", f"ResMLP-{depth}", f"resmlp_{depth}_224",
                        224, 16, dict(embed_dim=384, num_blocks=depth, mlp_ratio=4,
                                      block_layer=("ResBlock", dict(init_values=scale))))
              for depth, scale in ((12, 0.1), (24, 1e-5), (36, 1e-6))),
            ModelSpec("resmlp-t4", "resmlp", "ResMLP-T/4 (32 px)", None, 32, 4,
                      dict(embed_dim=256, num_blocks=8, mlp_ratio=4),
                      note="small-image ResMLP: width 256, 8 blocks, patch 4")),
    prefixes=("resmlp",), options=_MLP_BLOCKS,
    constructor="timm.models.mlp_mixer:MlpMixer",
    # LayerScale starts at 0.1 up to 12 blocks, 1e-5 at 24, 1e-6 at 36 as in the ResMLP
    # authors' code (facebookresearch/deit resmlp_models.py); timm's resmlp_12_224 keeps
    # ResBlock's 1e-4, which leaves a shallow ResMLP's residual branches near zero at the start
    layers=dict(block_layer=("ResBlock", dict(init_values=0.1)), norm_layer="Affine"),
    small={
        "cifar10-scratch": Small(dict(name="resmlp-t4", img_size=32, patch_size=4,
                                      drop_path=0.1)),
        "smoke": Small(dict(name="resmlp-t4", img_size=28, patch_size=4, width=64,
                            depth=2)),
    },
))


def plain_stem_ok(family_name: str, options: dict, kw: dict | None = None) -> bool:
    """False when `stem_width` is given to a ResNet whose stem is timm's plain 7x7 one, which
    ignores it (only `stem_type='deep'` stems read stem_width)."""
    if family_name != "resnet" or "stem_width" not in options:
        return True
    return str(options.get("stem_type", (kw or {}).get("stem_type", ""))).startswith("deep")


def build(spec: ModelSpec, num_classes: int, img_size: int, patch_size: int | None,
          overrides: dict[str, Any]):
    """Create a timm model for `spec`, the zoo's overrides mapped to timm's arguments by the
    spec's family (`Family.options`): its own constructor class when the family names one,
    else `timm.create_model(spec.timm_name)`."""
    import importlib

    import timm
    from torch import nn

    fam = family(spec.family)
    kw = dict(spec.kwargs)
    overrides = dict(overrides)
    if "drop_path" in overrides:
        kw["drop_path_rate"] = overrides.pop("drop_path")
    if "dropout" in overrides:
        kw["drop_rate"] = overrides.pop("dropout")
    if "width" in overrides and "width" not in fam.options:
        raise UserError(f"{spec.name} has no 'width' option; pass timm arguments instead.")
    for ours in ("width", "depth"):
        if ours in overrides and ours in fam.options:
            kw[fam.options[ours]] = overrides.pop(ours)
    gelu = overrides.pop("gelu", None)
    if gelu == "tanh" and spec.family == "vit":
        # Flax's nn.gelu (tanh approximation), recorded for ViTs read from official .npz files;
        # otherwise timm's baselines keep their own activation (exact GELU, ReLU)
        kw["act_layer"] = "gelu_tanh"
    if not plain_stem_ok(spec.family, overrides, kw):
        # timm's ResNet reads stem_width only for a deep stem; its plain stem is 64 wide whatever
        # stem_width says. A new run is refused that option (`presets.resolve`); a run recorded
        # with it (the smoke ResNet of 0.1.0) was built without it, so it is built the same way.
        overrides.pop("stem_width")
    kw.update(overrides)
    if "img_size" in fam.options:  # the token count depends on it (ViT, the MLP families)
        kw.setdefault(fam.options["img_size"], img_size)
        if patch_size:
            kw.setdefault(fam.options["patch_size"], patch_size)
    registered = not spec.name.startswith("timm:")
    try:
        if fam.constructor and registered:
            module, cls = fam.constructor.split(":")
            module = importlib.import_module(module)
            for key, layer in fam.layers.items():  # the entry's own (kwargs) overrides
                kw[key] = _layer(module, kw.get(key, layer))
            model = getattr(module, cls)(num_classes=num_classes, **kw)
        else:
            model = timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes,
                                      **kw)
    except TypeError as exc:
        raise UserError(f"{spec.name} does not accept these options: {exc}.") from None
    if spec.cifar_stem:
        # The usual CIFAR ResNet: keep the full 32x32 resolution into the first stage.
        width = model.conv1.out_channels
        model.conv1 = nn.Conv2d(kw.get("in_chans", 3), width, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model


def _layer(module, layer):
    """A `Family.layers` value: a class of `module` by name, or (name, arguments) for that class
    with some arguments fixed (ResMLP's layer-scale init)."""
    import functools

    if isinstance(layer, str):
        return getattr(module, layer)
    if isinstance(layer, tuple):
        return functools.partial(getattr(module, layer[0]), **layer[1])
    return layer
