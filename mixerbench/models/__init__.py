"""The model zoo: one registry keyed by slug, the paper's spellings and family aliases.

`create_model(name, ...)` builds any entry (each family builds its own: `models/families/`, one
file per family; `timm:<name>` for anything else timm has); `list_models(pattern)` lists the
slugs; `model_info(name)` gives the zoo row (params, params without head, exact MACs, GMACs,
GFLOPs) shown by `mixerbench models`. Shapes come from the paper's Table 1 (Mixer) and the ViT /
BiT papers through timm's names.

This module is imported by `mixerbench --help` paths, so torch and timm load inside functions.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from mixerbench.errors import UserError, close_matches
from mixerbench.models import families as _families
from mixerbench.models import registry
from mixerbench.models.registry import (
    FAMILIES,
    REGISTRY,
    Family,
    ModelSpec,
    Small,
    family,
    family_of,
    facts,
    register,
    register_family,
)
from mixerbench.names import squash

_families.load_all()  # every family file registers itself


def family_aliases() -> dict[str, str]:
    """What a family alias means: {alias: zoo entry}, e.g. `mixer` -> `mixer-b16`, `bit` ->
    `bit-r50x1` (small presets train their own model of the family instead)."""
    return {alias: f.default for f in FAMILIES.values() for alias in (f.name, *f.aliases)}


def family_alias(name: str) -> str | None:
    """The family that `name` names as an alias (`mixer`, `BiT`), else None."""
    key = name.strip().lower()
    return next((f.name for f in FAMILIES.values() if key in (f.name, *f.aliases)), None)


def resolve_name(name: str) -> str:
    """Registry slug for a slug, a paper spelling (`Mixer-B/16`) or a family alias; `timm:` kept.

    Raises UserError with the closest names for anything unknown.
    """
    name = name.strip()
    if name.startswith("timm:"):
        return name
    aliases = family_aliases()
    if name.lower() in aliases:
        return aliases[name.lower()]
    if name in REGISTRY:
        return name
    paper = {squash(s.paper_name.split(" ")[0]): s.name for s in REGISTRY.values()}
    paper.update({squash(s.name): s.name for s in REGISTRY.values()})
    hit = paper.get(squash(name))
    if hit:
        return hit
    raise UserError(
        f"Unknown model '{name}'.{close_matches(name, list(REGISTRY) + list(aliases))} "
        "Run `mixerbench models` for the zoo, or use timm:<name> for any timm model."
    )


def get_spec(name: str) -> ModelSpec:
    """The registry entry for `name`; `timm:<arch>` gets an ad-hoc spec."""
    slug = resolve_name(name)
    if slug.startswith("timm:"):
        arch = slug[5:].split(".")[0]
        import timm

        if not timm.is_model(arch):
            raise UserError(
                f"timm has no model '{arch}'.{close_matches(arch, timm.list_models(), 3)}"
            )
        cfg = timm.get_pretrained_cfg(arch)
        size = (cfg.input_size[-1] if cfg is not None and cfg.input_size else 224)
        m = re.search(r"patch(\d+)", arch)
        return ModelSpec(slug, family_of(slug), slug, arch, size, int(m.group(1)) if m else None)
    return REGISTRY[slug]


def list_models(pattern: str | None = None) -> list[str]:
    """Registry slugs, optionally filtered by a shell-style pattern (`mixer-*`)."""
    names = list(REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)
                 or fnmatch.fnmatch(REGISTRY[n].paper_name, pattern)]
    return names


def create_model(name: str, num_classes: int = 1000, img_size: int | None = None,
                 patch_size: int | None = None, **overrides: Any):
    """Build a model from the zoo.

    Args:
        name: slug, paper spelling, family alias or `timm:<name>` (a `.tag` suffix is ignored
            here; weights are loaded by `mixerbench.models.weights`).
        num_classes: head outputs (0 for a feature extractor).
        img_size / patch_size: override the entry's input size and patch size.
        **overrides: architecture arguments: `width`, `depth`, `drop_path`, `dropout` (mapped
            by the family, `Family.options`: C for Mixer, embed_dim for ViT, gMLP and ResMLP),
            `gelu` (families with `Family.gelu`; "tanh" for an official ViT), or any argument
            of the family's constructor.

    Returns:
        A torch module with timm's `forward_features` / `forward_head(pre_logits=)` /
        `reset_classifier` API.
    """
    spec = get_spec(name)
    size = img_size or spec.img_size
    patch = patch_size or spec.patch_size
    if patch and size % patch:
        raise UserError(
            f"Patch size {patch} does not divide image size {size}; choose an image size that "
            f"is a multiple of {patch}."
        )
    return registry.build(spec, num_classes, size, patch, overrides)


def build_on_meta(name: str, num_classes: int = 10, img_size: int | None = None,
                  patch_size: int | None = None, before_trace=None, element_size: int = 4,
                  **overrides: Any):
    """`create_model` on the meta device (no memory, no weights), followed by one forward pass
    of an RGB image, so that any option timm or the Mixer cannot take is one sentence before
    any work: a NaN or infinite number, `num_heads=0`, `drop_rate=5`, `global_pool='foo'`,
    `embed_dim=-8`, `in_chans=0` (the data is RGB, so `in_chans` must be 3). Returns the model
    and the (sum, largest) bytes of one image's activations at `element_size` (`models.memory`).

    `before_trace(model)` runs between building and tracing: a size check on the parameters
    alone refuses a 1024-block, 65536-wide model before its forward pass is traced."""
    import math
    import warnings

    import torch

    from mixerbench.models.memory import forward_bytes

    given = {k: v for k, v in overrides.items() if v is not None}
    shown = ", ".join(f"{k}={v!r}" for k, v in sorted(given.items(), key=lambda kv: kv[0])) or "its defaults"

    def finite(v) -> bool:
        if isinstance(v, float):
            return math.isfinite(v)
        if isinstance(v, (list, tuple)):
            return all(finite(x) for x in v)
        if isinstance(v, dict):
            return all(finite(x) for x in v.values())
        return True

    bad = next((k for k, v in given.items() if not finite(v)), None)
    if bad is not None:
        raise UserError(f"Model option {bad}={given[bad]!r} is not a finite number; give a number.")
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "zero-element tensors": the error says it
            model = create_model(name, num_classes=num_classes, img_size=img_size,
                                 patch_size=patch_size, **overrides)
            if before_trace is not None:
                before_trace(model)
            activations = forward_bytes(model, img_size or get_spec(name).img_size,
                                        element_size=element_size)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to build is the options' fault
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{name} cannot be built with {shown} ({type(exc).__name__}: {first}); "
                        f"fix those model options (--set model.options.KEY=VALUE).") from None
    _check_built(name, model, shown, given, patch_size)
    return model, activations


def _check_built(name: str, model, shown: str, given: dict, patch_size: int | None) -> None:
    """The model built is the one its label describes: the width, depth and patch read from
    the module (`registry.facts`) are the ones asked for."""
    built = facts(model)
    claims = dict(width=given.get("width"), depth=given.get("depth"),
                  patch_size=patch_size or get_spec(name).patch_size)
    for key, claim in claims.items():
        if claim is not None and built[key] is not None and built[key] != claim:
            raise UserError(f"{name} with {shown} builds a model of {key.replace('_', ' ')} "
                            f"{built[key]}, not the {claim} its label says; set model.{key} "
                            "instead of a constructor option.")


# The one list of constructor arguments that regularise training without changing the
# architecture, in our spelling and timm's. A fine-tuning run sets its own (paper section 3: the
# fine-tuning recipe), so every one of them is dropped from what a checkpoint was trained with,
# and a row's model label leaves them out (they change neither speed nor size). Nor does it
# hold `gelu`, which changes no size but does change the speed on a CPU: `bench` refuses it in a
# typed label, so no throughput row passes one GELU's speed off as the other's.
REGULARISERS = ("drop_path", "dropout", "drop_path_rate", "drop_rate", "attn_drop_rate",
                "proj_drop_rate", "pos_drop_rate", "patch_drop_rate", "drop_block_rate")
_NOT_IN_LABEL = {*REGULARISERS, "gelu"}


def model_label(name: str, overrides: dict[str, Any] | None = None,
                patch_size: int | None = None) -> str:
    """The name results rows use: the registry name, plus any architecture overrides and a
    patch other than the entry's own, e.g. `mixer-t4[depth=2,width=64]` or
    `mixer-s32[depth=2,patch_size=4,width=64]`, so a resized variant never shares a row label
    with the zoo entry it came from."""
    arch = {k: v for k, v in (overrides or {}).items() if k not in _NOT_IN_LABEL}
    if patch_size and patch_size != _entry_patch(name):
        arch["patch_size"] = patch_size
    if not arch:
        return name
    def fmt(v):
        return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return name + "[" + ",".join(f"{k}={fmt(v)}" for k, v in sorted(arch.items())) + "]"


def label_of(rec: dict[str, Any]) -> str:
    """`model_label` of a model description (`weights.model_description`: the model built)."""
    return model_label(rec["name"], rec.get("overrides"), rec.get("patch_size"))


def parse_models(text: str) -> list[str | dict[str, Any]]:
    """Comma-separated model names, each a name or a `model_label` spelling such as
    `mixer-t4[depth=2,width=64]` (commas inside the brackets belong to the label): a label
    becomes the model description it names (name, patch_size, overrides)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    out: list[str | dict[str, Any]] = []
    for part in filter(None, parts):
        base, bracket, rest = part.partition("[")
        if not bracket:
            out.append(part)
            continue
        if not rest.endswith("]") or "[" in rest:
            raise UserError(f"'{part}' is not a model label; spell it as NAME[KEY=VALUE,...], "
                            "for example mixer-t4[depth=2,width=64].")
        over: dict[str, Any] = {}
        for item in rest[:-1].split(","):
            key, eq, value = (t.strip() for t in item.partition("="))
            if not eq or not key or not value:
                raise UserError(f"'{item}' in '{part}' is not KEY=VALUE; spell a label as "
                                "NAME[KEY=VALUE,...], for example mixer-t4[depth=2,width=64].")
            over[key] = _label_value(value)
        patch = over.pop("patch_size", None)
        out.append(dict(name=base.strip(), patch_size=patch, overrides=over))
    return out


def _label_value(text: str) -> Any:
    """A value as `model_label` writes it: an int, a float, an x-joined list, else the text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    items = text.split("x")
    if len(items) > 1 and all(_label_value(i) != i for i in items):
        return [_label_value(i) for i in items]
    return text


def _entry_patch(name: str) -> int | None:
    """The patch of a zoo entry, or of a `timm:` name that spells one (`..._patch16_...`)."""
    base = str(name).split("[")[0]
    if base in REGISTRY:
        return REGISTRY[base].patch_size
    m = re.search(r"patch(\d+)", base)
    return int(m.group(1)) if m else None


def family_for(name: str) -> Family:
    """The family that builds `name` (a zoo name or `timm:<name>`), or the grey "other"."""
    return family(get_spec(name).family)


def takes_gelu(name: str) -> bool:
    """Whether a run's `model.gelu` setting reaches `name`'s constructor (`Family.gelu`: the
    native Mixer's; a `timm:` model keeps timm's activation)."""
    return family_for(name).gelu and not name.startswith("timm:")


def channels_last(name: str) -> bool:
    """Whether `name` trains and benchmarks channels-last on CUDA (`Family.channels_last`)."""
    return family_for(name).channels_last


def check_options(name: str, options: dict[str, Any], width: int | None = None) -> None:
    """Refuse `model.options` of a new run that contradict the model section's fields or are
    outside what makes a model of `name`'s family (at `width`, the model section's), in one
    sentence (`registry.check_options`)."""
    registry.check_options(get_spec(name), options, width)


def paper_family(role: str) -> str:
    """The family with `role` in the paper's comparisons (`Family.paper_role`): "subject" (the
    Mixer), "attention" or "convolution"."""
    return next(f.name for f in FAMILIES.values() if f.paper_role == role)


def paper_families() -> tuple[str, ...]:
    """The paper's three families, subject first (the default of `compare --models`)."""
    return tuple(f.name for f in FAMILIES.values() if f.paper_role)


def paper_models(role: str = "subject") -> list[str]:
    """The zoo entries of the paper's tables for `role`'s family (Table 1's Mixers for the
    subject): its timm-or-paper shapes, not the small-image models added for small presets."""
    fam = FAMILIES[paper_family(role)]
    return [s.name for s in fam.models if s.img_size == 224]


def count_params(model) -> tuple[int, int]:
    """(all parameters, parameters outside the classifier head)."""
    total = sum(p.numel() for p in model.parameters())
    head_n = sum(p.numel() for h in classifiers(model) for p in h.parameters())
    return total, total - head_n


def classifiers(model) -> list:
    """The head modules: one, or two for timm's distilled models (`head`, `head_dist`), whose
    `get_classifier()` returns a tuple."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:
        return []
    return [h for h in (head if isinstance(head, (tuple, list)) else (head,)) if h is not None]


_INFO_CACHE: dict[tuple, dict] = {}


def model_info(name: str, num_classes: int = 1000, img_size: int | None = None,
               patch_size: int | None = None, **overrides: Any) -> dict[str, Any]:
    """The zoo row: name, family, paper_name, timm_name, img_size, patch_size, params,
    params_no_head, macs, gmacs, gflops (per image, forward pass).

    `macs` is the exact integer count of torch's FlopCounterMode (see
    `mixerbench.models.flops.count_macs`); `gmacs` = macs / 1e9 and `gflops` = 2 * macs / 1e9 are
    unrounded floats (round them only to display). Anything computed from the count (achieved
    FLOP/s, MFU, training FLOPs) should use `macs`: on small models a 3-decimal GMACs is off by
    several percent (0.008 for 0.0084). Built on the meta device, so even BiT-R152x4 (936M
    parameters) costs no memory.
    """
    import json

    key = (name, num_classes, img_size, patch_size, json.dumps(overrides, sort_keys=True, default=str))
    if key in _INFO_CACHE:
        return dict(_INFO_CACHE[key])
    import torch

    from mixerbench.models.flops import count_macs

    spec = get_spec(name)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, img_size=img_size,
                             patch_size=patch_size, **overrides)
    size = img_size or spec.img_size
    params, params_no_head = count_params(model)
    macs = count_macs(model, size, device="meta")
    row = dict(
        name=spec.name, family=spec.family, paper_name=spec.paper_name,
        timm_name=spec.timm_name or "", img_size=size,
        patch_size=(patch_size or spec.patch_size or ""),
        params=params, params_no_head=params_no_head,
        macs=int(macs), gmacs=macs / 1e9, gflops=2 * macs / 1e9,
    )
    _INFO_CACHE[key] = row
    return dict(row)


def zoo(pattern: str | None = None, *, num_classes: int = 1000,
        img_size: int | None = None) -> list[dict[str, Any]]:
    """The `mixerbench models` rows: every entry matching `pattern` (a shell pattern, or one
    name / paper spelling / alias), counted at `img_size` when given (entries whose patch does
    not divide it are left out)."""
    # a head of -1 classes is a negative dimension inside torch; past 100,000 (the most classes
    # a dataset may have here) a typo, and img_size as config bounds it (model.img_size)
    if isinstance(num_classes, bool) or not 0 <= num_classes <= 100_000:
        raise UserError(f"--num-classes {num_classes} must be between 0 (no head) and 100,000.")
    if img_size is not None and not 1 <= img_size <= 4096:
        raise UserError(f"--img-size {img_size} must be between 1 and 4,096 pixels.")
    names = list_models(pattern)
    if not names and pattern:
        if any(ch in pattern for ch in "*?["):
            raise UserError(f"No model matches '{pattern}'; run `mixerbench models` for the zoo.")
        names = [resolve_name(pattern)]
    rows = []
    for n in names:
        patch = get_spec(n).patch_size
        if img_size and patch and img_size % patch:
            continue
        rows.append(model_info(n, num_classes=num_classes, img_size=img_size))
    return rows


__all__ = ["zoo", "ModelSpec", "REGISTRY", "REGULARISERS", "build_on_meta", "classifiers", "FAMILIES",
           "Family", "Small", "register_family", "family_aliases", "family_alias", "family_of",
           "family_for", "create_model", "list_models", "model_label", "label_of", "model_info",
           "resolve_name", "parse_models", "get_spec", "count_params", "takes_gelu", "channels_last",
           "check_options", "paper_family", "paper_families", "paper_models", "facts"]
