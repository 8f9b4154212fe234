"""Loading and saving weights: run directories, safetensors, timm hub names, official `.npz`.

A mixerbench checkpoint is a `.safetensors` state dict whose metadata carries the model recipe
(`name`, `num_classes`, `img_size`, `patch_size`, `overrides`), so a checkpoint file alone
rebuilds its model. Sources accepted by `load_model` (the `--init` / `--checkpoint` contract):

- a run directory (`results/runs/<run_id>/`, its `checkpoint-last.safetensors`);
- a `.safetensors` file written by mixerbench;
- `timm:<name>[.<tag>]`: timm's pretrained weights from the Hugging Face hub (online only);
- an official Mixer `.npz` (keys of vit_jax's `models_mixer.py`, paper.md section 7.1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mixerbench.errors import UserError

CHECKPOINT = "checkpoint-last.safetensors"


def recipe(name: str, num_classes: int, img_size: int, patch_size: int | None,
           overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return dict(name=name, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                overrides=dict(overrides or {}))


def save_checkpoint(path: str | os.PathLike, model, model_recipe: dict[str, Any]) -> None:
    """Write the state dict with its recipe atomically (temp file, fsync, rename)."""
    from safetensors.torch import save

    from mixerbench.results import atomic_write_bytes

    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"mixerbench_model": json.dumps(model_recipe)}))


def unwrap(model):
    """The plain module under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, Any] | None]:
    """(state dict, recipe or None) from a safetensors file; UserError if unreadable."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist; pass a run directory or a .safetensors file.")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise UserError(f"Checkpoint {path} is not a readable safetensors file ({exc}).") from None
    model_recipe = json.loads(meta["mixerbench_model"]) if "mixerbench_model" in meta else None
    return state, model_recipe


def resolve_source(src: str) -> Path | str:
    """A run directory becomes its checkpoint file; `timm:` names pass through."""
    if src.startswith("timm:"):
        return src
    path = Path(src)
    if path.is_dir():
        ckpt = path / CHECKPOINT
        if not ckpt.is_file():
            raise UserError(f"Run directory {path} has no {CHECKPOINT}; was the run started?")
        return ckpt
    if not path.exists():
        raise UserError(f"No run directory or checkpoint at {src}; pass a run directory, a "
                        ".safetensors file, an official .npz or timm:<name>.")
    return path


def load_model(src: str, *, num_classes: int | None = None, img_size: int | None = None,
               device: str = "cpu", model_name: str | None = None):
    """Build a model from `src` and load its weights.

    Args:
        src: run dir, `.safetensors`, `timm:<name>[.<tag>]` or official Mixer `.npz`.
        num_classes: if given and different from the checkpoint's, the head is replaced by a
            fresh zero-initialised one (the fine-tuning rule, paper.md 6.2).
        img_size: if given and different, the model is resized (Mixer block-diagonal expansion,
            ViT position-embedding resample; paper section 3).
        model_name: for `.npz` files, which Mixer (default guessed from the shapes).

    Returns:
        (model, recipe) where recipe describes the returned model.
    """
    from mixerbench.models import create_model
    from mixerbench.models.resize import resize_model

    where = resolve_source(src)
    if isinstance(where, str):
        model, rec = _load_timm(where)
    elif where.suffix == ".npz":
        model, rec = _load_npz(where, model_name)
    else:
        state, rec = read_checkpoint(where)
        if rec is None:
            if not model_name:
                raise UserError(f"{where} has no mixerbench metadata; pass --model to say which "
                                "architecture it holds.")
            rec = recipe(model_name, _head_size(state), img_size or 224, None)
        model = create_model(rec["name"], num_classes=rec["num_classes"],
                             img_size=rec["img_size"], patch_size=rec["patch_size"],
                             **rec.get("overrides", {}))
        _load_state(model, state, where)
    if num_classes is not None and num_classes != rec["num_classes"]:
        model.reset_classifier(num_classes)
        rec = dict(rec, num_classes=num_classes)
    if img_size and img_size != rec["img_size"]:
        model = resize_model(model, img_size, rec["name"], rec["num_classes"])
        rec = dict(rec, img_size=img_size)
        if hasattr(model, "tokens_dim"):
            rec["overrides"] = dict(rec.get("overrides", {}), tokens_dim=model.tokens_dim)
    return model.to(device), rec


def _head_size(state: dict) -> int:
    for key in ("head.weight", "head.fc.weight", "fc.weight"):
        if key in state:
            return int(state[key].shape[0])
    return 0


def _load_state(model, state: dict, where) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise UserError(f"Checkpoint {where} does not fit this architecture ({first[:200]}).") from None


def _load_timm(name: str):
    """timm pretrained weights (needs the hub; fails fast with a clear sentence offline)."""
    import timm

    from mixerbench.models import get_spec

    spec = get_spec(name.split(".")[0])
    arch_tag = name[5:]
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"Cannot fetch {name} while HF_HUB_OFFLINE=1; download it once online, or "
                        "pass a local .safetensors / .npz file to --init.")
    try:
        model = timm.create_model(arch_tag, pretrained=True)
    except Exception as exc:
        raise UserError(f"Could not load {name} from the Hugging Face hub ({type(exc).__name__}); "
                        "check the name and your connection, or pass a local checkpoint.") from None
    size = model.pretrained_cfg.get("input_size", (3, spec.img_size, spec.img_size))[-1]
    return model, recipe(name, model.num_classes, size, spec.patch_size)


# Official vit_jax Mixer parameter names -> timm / mixerbench names (paper.md section 7.1).
def _npz_to_state(arrays: dict) -> tuple[dict, int, int, int]:
    import numpy as np
    import torch

    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float32))

    state = {
        "stem.proj.weight": t(arrays["stem/kernel"]).permute(3, 2, 0, 1),
        "stem.proj.bias": t(arrays["stem/bias"]),
        "norm.weight": t(arrays["pre_head_layer_norm/scale"]),
        "norm.bias": t(arrays["pre_head_layer_norm/bias"]),
        "head.weight": t(arrays["head/kernel"]).T,
        "head.bias": t(arrays["head/bias"]),
    }
    depth = 1 + max(int(k.split("/")[0].split("_")[-1]) for k in arrays if k.startswith("MixerBlock_"))
    for i in range(depth):
        p = f"MixerBlock_{i}/"
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_1")):
            state[f"blocks.{i}.{ours}.weight"] = t(arrays[p + theirs + "/scale"])
            state[f"blocks.{i}.{ours}.bias"] = t(arrays[p + theirs + "/bias"])
        for ours, theirs in (("mlp_tokens", "token_mixing"), ("mlp_channels", "channel_mixing")):
            for j in (1, 2):
                state[f"blocks.{i}.{ours}.fc{j}.weight"] = t(arrays[f"{p}{theirs}/Dense_{j-1}/kernel"]).T
                state[f"blocks.{i}.{ours}.fc{j}.bias"] = t(arrays[f"{p}{theirs}/Dense_{j-1}/bias"])
    patch = state["stem.proj.weight"].shape[-1]
    seq = state["blocks.0.mlp_tokens.fc1.weight"].shape[1]
    return state, depth, patch, int(round(seq ** 0.5)) * patch


def _load_npz(path: Path, model_name: str | None):
    import numpy as np

    from mixerbench.models import create_model

    try:
        with np.load(path) as fh:
            arrays = {k: fh[k] for k in fh.files}
        state, depth, patch, size = _npz_to_state(arrays)
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"{path} is not an official Mixer checkpoint (missing {exc}).") from None
    dim = state["stem.proj.bias"].shape[0]
    from mixerbench.models import REGISTRY

    size_letter = {(12, 768): "b", (24, 1024): "l", (8, 512): "s", (32, 1280): "h"}.get((depth, dim))
    guess = f"mixer-{size_letter}{patch}"
    # The overrides below fix every shape, so any Mixer entry serves as the base.
    name = model_name or (guess if guess in REGISTRY else "mixer-b16")
    overrides = dict(width=dim, depth=depth,
                     tokens_dim=state["blocks.0.mlp_tokens.fc1.weight"].shape[0],
                     channels_dim=state["blocks.0.mlp_channels.fc1.weight"].shape[0])
    classes = state["head.weight"].shape[0]
    model = create_model(name, num_classes=classes, img_size=size, patch_size=patch, **overrides)
    _load_state(model, state, path)
    return model, recipe(name, classes, size, patch, overrides)
