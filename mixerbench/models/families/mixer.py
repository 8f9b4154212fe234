"""The MLP-Mixer family: the paper's subject (section 2, Table 1), built as the native Mixer of
`models/mixer.py` (the official code's GELU, init and stochastic-depth rule).

Entries: Table 1's S/32 ... H/14 (depth, patch, hidden size C; D_S = C/2 and D_C = 4C by
default) and `mixer-t4`, a small-image Mixer for CIFAR-size inputs that is not in the paper.
timm's `MlpMixer` shares the native Mixer's parameter names, so timm's Mixers load into it and
it exports to timm (`to_timm`).
"""

from __future__ import annotations

import math

from mixerbench.errors import UserError
from mixerbench.models.registry import REGISTRY, Family, ModelSpec, Small, register_family

# paper Table 1: depth, patch, hidden size C
_TABLE1 = {
    "S/32": (8, 32, 512), "S/16": (8, 16, 512), "B/32": (12, 32, 768), "B/16": (12, 16, 768),
    "L/32": (24, 32, 1024), "L/16": (24, 16, 1024), "H/14": (32, 14, 1280),
}
_MODELS = [ModelSpec("mixer-" + v.replace("/", "").lower(), "mixer", f"Mixer-{v}",
                     None if v == "H/14" else f"mixer_{v.replace('/', '').lower()}_224", 224,
                     patch, dict(dim=dim, depth=depth))
           for v, (depth, patch, dim) in _TABLE1.items()]
# Small-image model for CIFAR-size inputs (not in the paper): 32 px, patch 4 gives 64 tokens.
_MODELS.append(ModelSpec("mixer-t4", "mixer", "Mixer-T/4 (32 px)", None, 32, 4,
                         dict(dim=256, depth=8), note="small-image Mixer: width 256, 8 blocks"))


def create(spec: ModelSpec, num_classes: int, **kw):
    """The native Mixer (`models/mixer.py`) of `spec`'s shapes with the run's arguments."""
    from mixerbench.models.mixer import Mixer

    return Mixer(num_classes=num_classes, **kw)


def _ratio(hidden: int, dim: int) -> float:
    """mlp_ratio with int(ratio * dim) == hidden, as timm's MixerBlock computes the width
    (hidden / dim can land a rounding step below, e.g. 15 / 11 * 11 = 14.999...)."""
    r = hidden / dim
    while int(r * dim) < hidden:
        r = math.nextafter(r, math.inf)
    return r


def to_timm(spec: ModelSpec, model, label: str) -> dict:
    """The native Mixer as timm's `MlpMixer` holding the same weights (the parameter names are
    timm's by construction), for export: built by its `mixer_*` entry point where one has these
    shapes (each fixes patch, depth and width: S/32, S/16, B/32, B/16, L/32, L/16), else by the
    class itself, `timm.models.mlp_mixer.MlpMixer(**model_args)` (Mixer-H/14, mixer-t4, any
    width or depth override). timm's MlpMixer uses the exact GELU and cannot be told otherwise
    (it calls `act_layer()` and never resolves a name), so a tanh-GELU Mixer is exported with
    it and the difference is measured by the export."""
    import timm
    from timm.models.mlp_mixer import MlpMixer

    entries = {(s.patch_size, s.kwargs["depth"], s.kwargs["dim"]): s.timm_name
               for s in REGISTRY.values() if s.family == "mixer" and s.timm_name}
    arch = entries.get((model.patch_size, len(model.blocks), model.embed_dim))
    args = dict(num_classes=model.num_classes, img_size=model.img_size,
                mlp_ratio=[_ratio(model.tokens_dim, model.embed_dim),
                           _ratio(model.channels_dim, model.embed_dim)])
    in_chans = model.stem.proj.in_channels
    if in_chans != 3:
        args["in_chans"] = in_chans
    if arch is not None:
        tm, constructor = timm.create_model(arch, pretrained=False, **args), None
    else:
        args.update(patch_size=model.patch_size, num_blocks=len(model.blocks),
                    embed_dim=model.embed_dim)
        tm, constructor = MlpMixer(**args), "timm.models.mlp_mixer.MlpMixer"
    missing, unexpected = tm.load_state_dict(model.state_dict(), strict=False)
    if missing or unexpected:  # the names are timm's by construction; say so if that ever breaks
        raise UserError(f"{label} does not map onto timm's MlpMixer (missing {missing[:2]}, "
                        f"unexpected {unexpected[:2]}); it cannot be exported.")
    return dict(module=tm, architecture=arch, constructor=constructor, model_args=args,
                gelu=model.gelu)


register_family(Family(
    "mixer", "Mixer", "mixer-b16",
    color="#D55E00", marker="o", linestyle="-",  # vermillion: the paper's subject stands out
    models=tuple(_MODELS), prefixes=("mixer",),
    # the native Mixer takes C as `dim` and names its regularisers itself
    options={"width": "dim", "depth": "depth", "img_size": "img_size", "patch_size": "patch_size",
             "drop_path": "drop_path", "dropout": "dropout"},
    create=create, gelu=True, to_timm=to_timm, paper_role="subject",
    limits={"tokens_dim": (1, 65_536), "channels_dim": (1, 262_144)},
    small={
        "cifar10-scratch": Small(dict(name="mixer-t4", img_size=32, patch_size=4, drop_path=0.1)),
        "smoke": Small(dict(name="mixer-t4", img_size=28, patch_size=4, width=64, depth=2)),
    },
))
