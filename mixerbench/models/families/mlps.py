"""The paper's all-MLP contemporaries (not in its tables): gMLP and ResMLP, each built from
timm's `MlpMixer` class with its own blocks, since timm's named `gmlp_*` / `resmlp_*` entries fix
patch, width and depth (a 28 px gMLP is the class with gMLP's blocks).

gMLP (Liu et al. 2021, arXiv 2105.08050): a gated MLP whose spatial gating unit mixes tokens
with one N x N projection; timm's gmlp_{ti,s,b}16_224 (30 blocks, expansion 6). Of its
initialisation the paper specifies the gating unit's start only (projection weights near zero,
biases one, its section 2.1), which timm's `SpatialGatingUnit.init_weights` does; the rest is
timm's `MlpMixer` init (xavier-uniform Linear weights, N(0, 1e-6) MLP biases, lecun-normal stem,
zero head), not a choice of gMLP's authors.

ResMLP (Touvron et al. 2021, arXiv 2105.03404): a linear token-mixing layer and an MLP, affine
normalisation, layer scale; timm's resmlp_{12,24,36}_224 (expansion 4). Initialised as the
authors' code (facebookresearch/deit `resmlp_models.py`) does, not as timm's MlpMixer: every
Linear weight (head included) truncated normal with std 0.02 and every Linear bias zero; the
patch stem keeps PyTorch's default convolution init, which the authors' `_init_weights` leaves
alone; layer scale starts at 0.1 up to 12 blocks, 1e-5 at 24, 1e-6 at 36 (timm's resmlp_12_224
keeps ResBlock's 1e-4, which leaves a shallow ResMLP's residual branches near zero at the start).
Measured at the smoke preset's scale (mnist-5k, width 64, 2 blocks, 16 epochs, seeds 0-2; the
`compare:smoke` rows of results/accuracy.csv and results/README.md): 91.63 ± 1.01 % top-1 from
the authors' init, 94.10 ± 0.56 % from timm's (the rows those replaced, same run ids): the
authors' smaller start trains this small ResMLP 2.5 points worse in so short a run.

Small shapes: the small Mixer's width, depth and patch (256 x 8 blocks at 32 px, 64 x 2 in the
smoke preset), which puts their parameters and FLOPs within 15 % of the Mixer's (`mixerbench
models '*-t4' --img-size 32`).
"""

from __future__ import annotations

from mixerbench.models.registry import REGISTRY, Family, ModelSpec, Small, register_family

_OPTIONS = {"width": "embed_dim", "depth": "num_blocks", "img_size": "img_size",
            "patch_size": "patch_size"}
_LIMITS = {"mlp_ratio": (0.01, 64)}


def create_gmlp(spec: ModelSpec, num_classes: int, **kw):
    """timm's MlpMixer with gMLP's spatial gating blocks."""
    from timm.models.mlp_mixer import GatedMlp, MlpMixer, SpatialGatingBlock

    return MlpMixer(num_classes=num_classes, block_layer=SpatialGatingBlock, mlp_layer=GatedMlp,
                    **kw)


def create_resmlp(spec: ModelSpec, num_classes: int, init_values: float = 0.1, **kw):
    """timm's MlpMixer with ResMLP's blocks and affine norms, initialised as the authors' code
    does (see the module docstring)."""
    import functools

    from timm.layers import trunc_normal_
    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock
    from torch import nn

    model = MlpMixer(num_classes=num_classes, norm_layer=Affine,
                     block_layer=functools.partial(ResBlock, init_values=init_values), **kw)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            m.reset_parameters()
    return model


def to_timm(spec: ModelSpec, model, label: str) -> dict:
    """The timm entry point of these shapes (`gmlp_*` / `resmlp_*`, each fixing patch, width
    and depth; image size free) holding the same weights; other shapes are refused: timm's
    MlpMixer takes the gated or affine blocks as Python classes, which config.json cannot name."""
    import timm

    from mixerbench.errors import UserError

    shape = (model.stem.patch_size[0], len(model.blocks), model.embed_dim)
    entry = next((s.timm_name for s in REGISTRY.values() if s.family == spec.family
                  and s.timm_name and (s.patch_size, s.kwargs["num_blocks"],
                                       s.kwargs["embed_dim"]) == shape), None)
    if entry is None:
        raise UserError(f"{label} (patch {shape[0]}, {shape[1]} blocks, width {shape[2]}) is none "
                        f"of timm's {spec.family}_* entry points, which fix patch, depth and width, "
                        "and timm's MlpMixer takes its blocks as Python classes that config.json "
                        "cannot name, so it cannot be exported to timm.")
    size = model.stem.img_size
    tm = timm.create_model(entry, pretrained=False, num_classes=model.num_classes,
                           img_size=list(size) if isinstance(size, tuple) else size)
    missing, unexpected = tm.load_state_dict(model.state_dict(), strict=False)
    if missing or unexpected:
        raise UserError(f"{label} does not map onto timm's {entry} (missing {missing[:2]}, "
                        f"unexpected {unexpected[:2]}); it cannot be exported.")
    return dict(module=tm, architecture=entry, constructor=None, model_args=None, gelu=None)


register_family(Family(
    "gmlp", "gMLP", "gmlp-s16", color="#CC79A7", marker="v", linestyle=(0, (3, 1, 1, 1, 1, 1)),
    models=(*(ModelSpec(f"gmlp-{v.lower()}16", "gmlp", f"gMLP-{v}", f"gmlp_{v.lower()}16_224",
                        224, 16, dict(embed_dim=dim, num_blocks=30, mlp_ratio=6))
              for v, dim in (("Ti", 128), ("S", 256), ("B", 512))),
            ModelSpec("gmlp-t4", "gmlp", "gMLP-T/4 (32 px)", None, 32, 4,
                      dict(embed_dim=256, num_blocks=8, mlp_ratio=6),
                      note="small-image gMLP: width 256, 8 blocks, patch 4")),
    prefixes=("gmlp",), options=_OPTIONS, create=create_gmlp, limits=_LIMITS, to_timm=to_timm,
    small={
        "cifar10-scratch": Small(dict(name="gmlp-t4", img_size=32, patch_size=4, drop_path=0.1)),
        "smoke": Small(dict(name="gmlp-t4", img_size=28, patch_size=4, width=64, depth=2)),
    },
))

register_family(Family(
    "resmlp", "ResMLP", "resmlp-12", color="#E69F00", marker="P", linestyle=(0, (5, 1)),
    models=(*(ModelSpec(f"resmlp-{depth}", "resmlp", f"ResMLP-{depth}", f"resmlp_{depth}_224",
                        224, 16, dict(embed_dim=384, num_blocks=depth, mlp_ratio=4,
                                      init_values=scale))
              for depth, scale in ((12, 0.1), (24, 1e-5), (36, 1e-6))),
            ModelSpec("resmlp-t4", "resmlp", "ResMLP-T/4 (32 px)", None, 32, 4,
                      dict(embed_dim=256, num_blocks=8, mlp_ratio=4),
                      note="small-image ResMLP: width 256, 8 blocks, patch 4")),
    prefixes=("resmlp",), options=_OPTIONS, create=create_resmlp, to_timm=to_timm,
    limits={**_LIMITS, "init_values": (0.0, 1.0)},
    small={
        "cifar10-scratch": Small(dict(name="resmlp-t4", img_size=32, patch_size=4,
                                      drop_path=0.1)),
        "smoke": Small(dict(name="resmlp-t4", img_size=28, patch_size=4, width=64, depth=2)),
    },
))
