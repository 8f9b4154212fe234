"""The zoo's registry: one `Family` per model family, each owning its `ModelSpec` entries.

A family is one file in `models/families/` that builds its models and registers itself
(`register_family`), as timm does with a create function per family plus `@register_model`;
everything else reads the registry: the zoo (`mixerbench models`), the alias a user types
(`--models gmlp`), how the zoo's options map onto the constructor (width, depth, image size,
patch), what the loop and the benchmark need to know (the `model.gelu` setting, the memory
format), which option values make a model, the small model each small preset trains for it,
its role in the paper's comparisons and its colour, marker and line style in every figure.
Nothing here imports torch or timm at import time (`mixerbench --help` reads it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Mapping

from mixerbench.errors import UserError


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
    """A model family: its entries, its names, how it builds its models and what the loop must
    know about them, its small-scale shapes and its plot style.

    options: the zoo's option names (`width`, `depth`, `img_size`, `patch_size`, `drop_path`,
        `dropout`) -> the constructor's argument. `width` missing means the family has no single
        width (refused); `img_size` / `patch_size` present means the constructor is told the
        input size (ViT, the MLP families), absent means it adapts by itself (ResNet);
        `drop_path` / `dropout` default to timm's `drop_path_rate` / `drop_rate`.
    create: `create(spec, num_classes, **kw)` -> the torch module, `kw` being the entry's own
        constructor arguments updated by the mapped options (imports torch / timm inside);
        None builds `timm.create_model(spec.timm_name, num_classes=..., **kw)`.
    gelu: the run's `model.gelu` setting ("tanh" as the official code, "exact" as timm) reaches
        the constructor; other families keep their own activation.
    channels_last: trained and benchmarked in NHWC memory format on CUDA (convolutions: the
        layout cuDNN's fastest kernels read); token models stay NCHW (their first layer is the
        only convolution).
    limits: option -> (lowest, highest) value a model is made of (every element of a list);
        anything outside is refused in one sentence before a model is built.
    rules: `rules(spec, options)` -> a sentence refusing a combination of options that builds
        something other than what the options say (None when they are fine).
    to_timm: `to_timm(spec, model, label)` -> dict(module: the timm module holding the weights,
        architecture: its timm entry point or None, constructor: the timm class to call with
        model_args where no entry point builds these shapes, else None, model_args, gelu: the
        activation timm cannot reproduce or None), for `mixerbench export`; a UserError where
        timm cannot express the model. None: the model is a timm module already.
    paper_role: the family's part in the paper's comparisons: "subject" (the Mixer),
        "attention" and "convolution" (its two baselines, paper section 3); "" otherwise.
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
    create: Callable[..., Any] | None = None
    gelu: bool = False
    channels_last: bool = False
    limits: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    rules: Callable[[ModelSpec, dict], str | None] | None = None
    to_timm: Callable[..., dict] | None = None
    paper_role: str = ""
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


# ------------------------------------------------------------------------ building a model

# The model section's own fields (`model.width`, `--patch-size` ...): set there, never as
# constructor options, so a row's label and the model built cannot say two things.
FIELDS = ("width", "depth", "img_size", "patch_size", "drop_path", "dropout", "gelu")
# timm's spelling of the two regularisers, for families that do not name their own
TIMM_OPTIONS = {"drop_path": "drop_path_rate", "dropout": "drop_rate"}


def argument_names(fam: Family) -> dict[str, str]:
    """The zoo's option names -> `fam`'s constructor arguments (`Family.options` over timm's)."""
    return {**TIMM_OPTIONS, **fam.options}


def build(spec: ModelSpec, num_classes: int, img_size: int, patch_size: int | None,
          overrides: dict[str, Any]):
    """Create the model of `spec`: the zoo's overrides mapped to the constructor's arguments by
    the spec's family (`Family.options`), then the family's `create`, or timm's factory for
    families without one and for any `timm:<name>`."""
    fam = family(spec.family)
    names = argument_names(fam)
    kw = dict(spec.kwargs)
    over = {k: v for k, v in overrides.items() if v is not None}
    if "width" in over and "width" not in names:
        raise UserError(f"{spec.name} has no single width; set its timm arguments with "
                        "--set model.options.KEY=VALUE instead.")
    registered = not spec.name.startswith("timm:")
    if "depth" in over and "depth" not in names and registered:
        raise UserError(f"{spec.name} has no single depth; set its constructor's own arguments "
                        "(a ResNet's blocks per stage: layers) with --set model.options.KEY=VALUE "
                        "instead.")
    for ours in ("width", "depth", "drop_path", "dropout"):
        if ours in over:
            kw[names.get(ours, ours)] = over.pop(ours)
    own = fam.create is not None and registered
    if not own:
        over.pop("gelu", None)  # timm's models keep their own activation
    kw.update(over)
    if "img_size" in names:  # the token count depends on it (ViT, the MLP families)
        kw.setdefault(names["img_size"], img_size)
        if patch_size:
            kw.setdefault(names["patch_size"], patch_size)
    try:
        if own:
            return fam.create(spec, num_classes, **kw)
        import timm

        return timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes, **kw)
    except TypeError as exc:
        raise UserError(f"{spec.name} does not accept these options ({exc}); check the "
                        "model.options you set.") from None


def check_options(spec: ModelSpec, options: dict[str, Any], width: int | None = None) -> None:
    """Refuse, in one sentence, `model.options` of a new run that would make the row's label
    lie: an option that is one of the model section's fields or the constructor argument a
    field sets (`embed_dim` is a ViT's width: `model.width`), a value outside the family's
    `limits`, an `mlp_ratio` that gives an MLP of no unit at the model's `width` (timm then
    builds one as wide as the model instead), or a combination its `rules` refuse."""
    if not isinstance(options, dict):
        raise UserError(f"model.options must map constructor arguments to values, not "
                        f"{_shown(options)}; set one with --set model.options.KEY=VALUE.")
    fam = family(spec.family)
    names = argument_names(fam) if not spec.name.startswith("timm:") else TIMM_OPTIONS
    field_of = {arg: ours for ours, arg in names.items()}
    for key, value in options.items():
        ours = key if key in FIELDS else field_of.get(key)
        if ours is not None:
            raise UserError(f"model.options.{key} is {spec.name}'s {ours.replace('_', ' ')}, a "
                            f"field of the model section; use --set model.{ours}={_shown(value)} "
                            "instead.")
        if key in fam.limits:
            lo, hi = fam.limits[key]
            values = value if isinstance(value, (list, tuple)) else [value]
            ok = values and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                and lo <= v <= hi for v in values)
            if not ok:
                each = "each value " if isinstance(value, (list, tuple)) else ""
                raise UserError(f"model.options.{key}={_shown(value)} does not make a "
                                f"{fam.label} ({each}from {lo:g} to {hi:g}); choose a value in "
                                "that range.")
    ratio = options.get("mlp_ratio")
    width = width or spec.kwargs.get(argument_names(fam).get("width", ""))
    if width and isinstance(ratio, (int, float, list, tuple)) and not isinstance(ratio, bool):
        ratios = ratio if isinstance(ratio, (list, tuple)) else [ratio]
        if any(isinstance(r, (int, float)) and math.isfinite(r * width) and int(r * width) < 1
               for r in ratios):
            raise UserError(f"model.options.mlp_ratio={_shown(ratio)} gives an MLP of no unit at "
                            f"width {width}; choose at least {1 / width:.3g}.")
    if fam.rules is not None:
        sentence = fam.rules(spec, dict(options))
        if sentence:
            raise UserError(sentence)


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def facts(model) -> dict[str, int | None]:
    """Width, depth and patch of a built model, read from the module itself (timm's
    `embed_dim`, its `blocks`, the stride of its patch stem); None where the model has no such
    thing (a ResNet has no single width). What a row's label says is checked against these."""
    width = getattr(model, "embed_dim", None)
    blocks = getattr(model, "blocks", None)
    depth = len(blocks) if blocks is not None and hasattr(blocks, "__len__") else None
    patch = None
    for stem in (getattr(model, "patch_embed", None), getattr(model, "stem", None)):
        proj = getattr(stem, "proj", None)
        if proj is not None and hasattr(proj, "stride"):
            patch = int(proj.stride[0])
            break
    return dict(width=int(width) if isinstance(width, int) else None, depth=depth,
                patch_size=patch)
