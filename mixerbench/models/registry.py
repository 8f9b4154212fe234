"""The zoo's registry: one `ModelSpec` per entry, keyed by slug. `models/__init__.py` registers
the paper's Mixers (Table 1) and `models/baselines.py` the ViT and ResNet/BiT baselines; both
import this module, so the registry has no import circle with the package that fills it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. `kwargs` are the architecture's constructor arguments."""

    name: str              # slug: mixer-b16
    family: str            # mixer | vit | resnet
    paper_name: str        # Mixer-B/16
    timm_name: str | None  # timm architecture with the same shapes, if any
    img_size: int
    patch_size: int | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    cifar_stem: bool = False  # ResNet with a 3x3 stride-1 stem and no max-pool (32 px inputs)
    note: str = ""


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec
