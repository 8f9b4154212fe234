"""The zoo's registry: one `Family` per model family, each owning its `ModelSpec` entries.

A family is registered once (`register_family`) and everything else reads it: the zoo
(`mixerbench models`), the alias a user types (`--models gmlp`), how the zoo's options map onto
the constructor (width, depth, image size, patch), the small model each small preset trains for
it, and its colour, marker and line style in every figure. `models/__init__.py` registers the
paper's Mixers (Table 1) and `models/baselines.py` the ViT, ResNet/BiT, gMLP and ResMLP families;
both import this module, so the registry has no import circle with the package that fills it.
Nothing here imports torch or timm (`mixerbench --help` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. `kwargs` are the architecture's constructor arguments."""

    name: str              # slug: mixer-b16
    family: str            # the registering Family's name (mixer, vit, resnet, gmlp, ...)
    paper_name: str        # Mixer-B/16
    timm_name: str | None  # timm architecture with the same shapes, if any
    img_size: int
    patch_size: int | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    cifar_stem: bool = False  # ResNet with a 3x3 stride-1 stem and no max-pool (32 px inputs)
    note: str = ""


@dataclass(frozen=True)
class Small:
    """A family's model under one small preset: `ModelConfig` fields (name, img_size,
    patch_size, width, depth, drop_path, options, ...) and the dotted `--set` settings the family
    needs on top of the preset."""

    model: Mapping[str, Any]
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """A model family: its entries, its names, how its options reach the constructor, its
    small-scale shapes and its plot style.

    options: the zoo's option names (`width`, `depth`, `img_size`, `patch_size`) -> the
        constructor's argument; an option missing here is refused for `width` (the family has
        no single width) and passed through unchanged otherwise; `img_size` / `patch_size`
        present means the constructor is told the input size (ViT, the MLP families), absent
        means it adapts by itself (ResNet).
    constructor: "module:Class" built directly instead of `timm.create_model(timm_name)`: timm's
        named gMLP / ResMLP entries fix patch, width and depth, so a 28 px gMLP is built from
        timm's `MlpMixer` class with gMLP's blocks. String values of `layers` name attributes of
        that module (`SpatialGatingBlock`), resolved when a model is built.
    prefixes: lower-case starts of slugs, paper names and timm architectures of this family
        (to colour rows without a `family` column, such as the paper's reference points).
    small: preset name -> the `Small` model `--models <family> --preset <name>` trains.
    """

    name: str                       # the alias users type and the `family` column of results
    label: str                      # legend label: "ResNet / BiT"
    default: str                    # the zoo entry the alias means outside small presets
    color: str
    marker: str
    linestyle: Any
    models: tuple[ModelSpec, ...] = ()
    aliases: tuple[str, ...] = ()   # more names for the alias ("bit")
    prefixes: tuple[str, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)
    constructor: str | None = None
    layers: Mapping[str, Any] = field(default_factory=dict)
    small: Mapping[str, Small] = field(default_factory=dict)


REGISTRY: dict[str, ModelSpec] = {}
FAMILIES: dict[str, Family] = {}

# Rows whose family is none of the registered ones (HaloNet, NFNet or any timm model) share
# one grey look.
OTHER = Family("other", "other", "", "#6E6E6E", "D", "-.")


def register(spec: ModelSpec) -> ModelSpec:
    """Add one entry to a family registered already."""
    if spec.family not in FAMILIES:
        raise ValueError(f"register the family {spec.family!r} (register_family) before its models")
    REGISTRY[spec.name] = spec
    return spec


def register_family(family: Family) -> Family:
    """Add a family and its entries: the one call a new family needs.

    Refuses (ValueError, a programming error) a name, alias, colour or marker that another
    family has already, so two families never look alike in a figure.
    """
    taken = {f.name: f for f in FAMILIES.values() if f.name != family.name}
    for other in (*taken.values(), OTHER):
        clash = ({family.name, *family.aliases} & {other.name, *other.aliases}
                 or (family.color.lower() == other.color.lower() and "colour")
                 or (family.marker == other.marker and "marker"))
        if clash:
            raise ValueError(f"family {family.name!r} has the same {clash} as {other.name!r}")
    models = tuple(replace(s, family=family.name) for s in family.models)
    if family.default and family.default not in {s.name for s in models} | set(REGISTRY):
        raise ValueError(f"family {family.name!r}: default {family.default!r} is not registered")
    family = replace(family, models=models, options=MappingProxyType(dict(family.options)),
                     small=MappingProxyType(dict(family.small)))
    FAMILIES[family.name] = family
    for spec in models:
        register(spec)
    return family


def unregister_family(name: str) -> None:
    """Remove a family and its entries (tests that register one undo it this way)."""
    FAMILIES.pop(name, None)
    for slug in [s for s, spec in REGISTRY.items() if spec.family == name]:
        del REGISTRY[slug]


def family(name: str) -> Family:
    """The registered family called `name`, else the grey `OTHER`."""
    return FAMILIES.get(name, OTHER)


def family_of(model_name: str) -> str:
    """The family of a registry slug, paper name or `timm:` name, else "other".

    Registry slugs are looked up; other names (`Mixer-B/16`, `BiT-R152x4`,
    `timm:resnetv2_50x1_bit`) match a family's prefixes, the longest prefix first (so `resmlp`
    is not taken for a ResNet).
    """
    name = str(model_name).strip()
    base = name.split("[")[0]
    if base in REGISTRY:
        return REGISTRY[base].family
    low = base.lower()
    if low.startswith("timm:"):
        low = low[len("timm:"):].split(".")[0]
    hits = [(len(p), f.name) for f in FAMILIES.values() for p in f.prefixes if low.startswith(p)]
    return max(hits)[1] if hits else OTHER.name
