"""How released weights expect their pixels: timm's pretrained_cfg as a `Preprocess`.

The paper's models (and every model trained here) take values in [-1, 1] (big_vision's
value_range(-1, 1)); timm records what each released weight was trained on instead: ImageNet's
mean and std for torchvision's ResNets, DeiT and ResMLP, [0, 1] for MIIL's Mixer, 0.5 / 0.5
(which is [-1, 1]) for Google's Mixers and ViTs, with the interpolation and crop_pct of their
eval transform. `of_weights` reads it, so a `timm:` model is evaluated and fine-tuned on the
values it was trained on, whatever its name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the data pipeline imports torch: only when weights are looked up
    from mixerbench.data.transforms import Preprocess

# timm tag prefixes of the weights the paper's authors' group released (Google's Mixers, ViTs
# and BiTs): the paper's own preprocessing, [-1, 1] and bilinear resizes (App. C), which is
# also how its rows were measured.
PAPER_TAGS = ("goog", "augreg")


def of_weights(src: str | None) -> Preprocess:
    """The `Preprocess` of the weights `src`: a `timm:<arch>[.<tag>]` name's pretrained_cfg
    (mean, std, interpolation, crop_pct), else the paper's `UNIT` (our own runs and files, the
    paper's authors' releases, `PAPER_TAGS`, and timm names without a pretrained
    configuration)."""
    from mixerbench.data.transforms import UNIT, Preprocess

    text = str(src or "")
    tag = text.partition(".")[2]
    if not text.startswith("timm:") or tag.split("_", 1)[0] in PAPER_TAGS:
        return UNIT
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(text[len("timm:"):])
    except (RuntimeError, ValueError, KeyError):
        cfg = None
    if cfg is None:
        return UNIT
    mode = cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic", "nearest") \
        else "bilinear"
    return Preprocess(mean=tuple(float(m) for m in cfg.mean), std=tuple(float(v) for v in cfg.std),
                      interpolation=mode, crop_pct=float(cfg.crop_pct or UNIT.crop_pct))
