"""The ResNet / BiT family: the paper's convolutional baseline (BiT-R50x1 ... R152x4, timm's
`resnetv2_*_bit`, BiT-M shapes; section 3 and Tables 2-3), torchvision's ResNet-50 shape, and
ResNet-18, the smoke preset's small CNN (not in the paper), also with a 32 px stem.

Convolutions take any input size (no `img_size` option) and have no single width (no `width`);
their shapes are timm arguments (`layers`, `channels`). Trained and benchmarked channels-last
on CUDA, the layout cuDNN's fastest convolution kernels read.
"""

from __future__ import annotations

from mixerbench.errors import UserError
from mixerbench.models.registry import Family, ModelSpec, Small, register_family


def _plain_stem_ignores(options: dict, kw: dict | None = None) -> bool:
    """True when `stem_width` is given to a ResNet whose stem is timm's plain 7x7 one, which
    ignores it (only `stem_type='deep'` stems read stem_width)."""
    if "stem_width" not in options:
        return False
    return not str(options.get("stem_type", (kw or {}).get("stem_type", ""))).startswith("deep")


def rules(spec: ModelSpec, options: dict) -> str | None:
    """A new run may not record an option its model never reads (a run recorded with it
    before still reads back: `create` builds it without, as it was trained)."""
    if _plain_stem_ignores(options, spec.kwargs):
        return (f"{spec.name} ignores stem_width without stem_type='deep' (timm's plain stem has "
                "64 channels); drop stem_width or add stem_type='deep'.")
    return None


def create(spec: ModelSpec, num_classes: int, **kw):
    """timm's ResNet of `spec`; `cifar_stem` entries get a 3x3 stride-1 stem and no max-pool."""
    import timm
    from torch import nn

    if _plain_stem_ignores(kw):
        # timm's ResNet reads stem_width only for a deep stem; its plain stem is 64 wide whatever
        # stem_width says. A run recorded with it (the smoke ResNet of 0.1.0) was built
        # without it, so it is built the same way.
        kw.pop("stem_width")
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes, **kw)
    if spec.cifar_stem:
        # The usual CIFAR ResNet: keep the full 32x32 resolution into the first stage.
        width = model.conv1.out_channels
        model.conv1 = nn.Conv2d(kw.get("in_chans", 3), width, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model


def to_timm(spec: ModelSpec, model, label: str) -> dict:
    """timm's own module, unless its stem is the 32 px one timm cannot express."""
    if spec.cifar_stem:
        raise UserError(f"{label} has a 3x3 stride-1 stem without max-pool, which timm's ResNet "
                        "cannot express (its stems downsample by 2 and are followed by a stride-2 "
                        "pool), so it cannot be exported to timm.")
    return dict(module=model, architecture=model.pretrained_cfg.get("architecture"),
                constructor=None, model_args=None, gelu=None)


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
    create=create, channels_last=True, rules=rules, to_timm=to_timm, paper_role="convolution",
    limits={"layers": (1, 1_000), "channels": (1, 65_536), "stem_width": (1, 65_536)},
    small={
        "cifar10-scratch": Small(dict(name="resnet18-c", img_size=32)),
        "smoke": Small(dict(name="resnet18", img_size=28,
                            options={"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128]})),
    },
))
