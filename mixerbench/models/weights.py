"""Loading and saving weights: run directories, safetensors, timm hub names, official `.npz`.

A mixerbench checkpoint is a `.safetensors` state dict whose metadata carries the model recipe
(`name`, `num_classes`, `img_size`, `patch_size`, `overrides`), so a checkpoint file alone
rebuilds its model. Sources accepted by `load_model` (the `--init` / `--checkpoint` contract):

- a run directory (`results/runs/<run_id>/`, its `checkpoint-last.safetensors`);
- a `.safetensors` file written by mixerbench;
- `timm:<name>[.<tag>]`: timm's pretrained weights from the Hugging Face hub (online only);
- an official Mixer `.npz` (the parameter names of vit_jax's `models_mixer.py`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mixerbench import files
from mixerbench.errors import UserError

CHECKPOINT = "checkpoint-last.safetensors"


def recipe(name: str, num_classes: int, img_size: int, patch_size: int | None,
           overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return dict(name=name, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                overrides=dict(overrides or {}))


def save_checkpoint(path: str | os.PathLike, model, model_recipe: dict[str, Any]) -> None:
    """Write the state dict with its recipe atomically (temp file, fsync, rename)."""
    from safetensors.torch import save

    from mixerbench.files import atomic_write_bytes

    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"mixerbench_model": json.dumps(model_recipe)}))


def unwrap(model):
    """The plain module under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, Any] | None]:
    """(state dict, recipe or None) from a safetensors file; UserError if unreadable."""
    from safetensors.torch import load_file

    path = Path(path)
    model_recipe = read_metadata(path)
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise UserError(f"Checkpoint {path} is not a readable safetensors file ({exc}); "
                        "re-create it or pass another checkpoint.") from None
    return state, model_recipe


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The model recipe in a safetensors file's header (None when it has none), read without
    loading any tensor; a damaged header or recipe is a UserError, never a guess."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist; pass a run directory or a .safetensors file.")
    files.check_file(path)  # a regular file: safetensors would block on a FIFO
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise UserError(f"Checkpoint {path} is not a readable safetensors file ({exc}); "
                        "re-create it or pass another checkpoint.") from None
    if "mixerbench_model" not in meta:
        return None
    try:
        # bounded: metadata nested 100,000 deep would end Python's parser in RecursionError
        rec = files.loads_json(meta["mixerbench_model"], f"Checkpoint {path}'s header")
    except UserError:
        raise
    except ValueError:
        rec = None
    if not _valid_recipe(rec):
        raise UserError(f"Checkpoint {path} has a damaged model description in its header; "
                        "re-create it or pass another checkpoint.")
    return rec


def _valid_recipe(rec: Any) -> bool:
    def size(v):
        return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096

    return (isinstance(rec, dict) and isinstance(rec.get("name"), str)
            and isinstance(rec.get("num_classes"), int) and rec["num_classes"] >= 0
            and size(rec.get("img_size"))
            and (rec.get("patch_size") is None or size(rec["patch_size"]))
            and isinstance(rec.get("overrides", {}), dict))


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


# Constructor arguments that regularise training without changing the architecture; a
# fine-tuning run sets its own (paper section 3: the fine-tuning recipe), whatever the
# checkpoint was pre-trained with.
REGULARISERS = ("drop_path", "dropout")


def load_model(src: str, *, device: str = "cpu", model_name: str | None = None,
               regularisers: dict[str, float] | None = None):
    """Build the model stored at `src` and load its weights, head included, as saved.

    Args:
        src: run dir, `.safetensors`, `timm:<name>[.<tag>]` or official Mixer `.npz`.
        model_name: for `.npz` files, which Mixer (default guessed from the shapes); for a
            `.safetensors` file without mixerbench metadata, which zoo model it holds.
        regularisers: `drop_path` / `dropout` to build the model with instead of the ones it
            was trained with (a fine-tuning run's own; `load_for_finetuning`).

    Returns:
        (model, recipe) where recipe describes the returned model.
    """
    from mixerbench.models import create_model

    reg = {k: v for k, v in (regularisers or {}).items() if v is not None}
    where = resolve_source(src)
    if isinstance(where, str):
        model, rec = _load_timm(where, reg)
    elif where.suffix == ".npz":
        model, rec = _load_npz(where, model_name, reg)
    else:
        state, rec = read_checkpoint(where)
        if rec is None:
            if not model_name:
                raise UserError(f"{where} has no mixerbench metadata; pass --model to say which "
                                "architecture it holds.")
            rec = recipe(model_name, _head_size(state), 224, None)
        rec = dict(rec, overrides=_with_regularisers(rec.get("overrides"), reg))
        try:
            model = create_model(rec["name"], num_classes=rec["num_classes"],
                                 img_size=rec["img_size"], patch_size=rec["patch_size"],
                                 **rec["overrides"])
        except (TypeError, ValueError, RuntimeError) as exc:  # UserError is a ValueError
            if isinstance(exc, UserError):
                raise
            raise UserError(f"Checkpoint {where} describes a model that cannot be built "
                            f"({type(exc).__name__}); re-create it or pass another checkpoint.") from None
        _load_state(model, state, where)
    return model.to(device), rec


def load_for_finetuning(src: str, *, num_classes: int, img_size: int | None = None,
                        regularisers: dict[str, float] | None = None, device: str = "cpu",
                        model_name: str | None = None):
    """The start of a fine-tuning run (paper section 3, "Fine-tuning"; Appendix C).

    The weights of `src` in a model built with the fine-tuning run's own `regularisers`, resized
    to `img_size` when it differs (Mixer: block-diagonal token-MLP expansion; ViT: position
    embeddings resampled), and, for every family, the pre-trained head dropped for a fresh
    zero-initialised one with `num_classes` outputs, as vision_transformer's `load_pretrained`
    does even when the class counts agree.

    Returns:
        (model, recipe) where recipe describes the returned model.
    """
    from mixerbench.models.resize import resize_model

    model, rec = load_model(src, model_name=model_name, regularisers=regularisers)
    if img_size and img_size != rec["img_size"]:
        model = resize_model(model, img_size, rec["name"], rec["num_classes"], rec["overrides"])
        rec = dict(rec, img_size=img_size)
        if hasattr(model, "tokens_dim"):
            rec["overrides"] = dict(rec["overrides"], tokens_dim=model.tokens_dim)
    zero_head(model, num_classes)
    return model.to(device), dict(rec, num_classes=num_classes)


def zero_head(model, num_classes: int) -> None:
    """Replace the classifier by a `num_classes`-way one with every weight and bias exactly 0.

    timm's `reset_classifier` draws a random head; the paper's fine-tuning starts from zeros.
    """
    import torch

    model.reset_classifier(num_classes)
    head = model.get_classifier()
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()


def source_recipe(src: str, model_name: str | None = None) -> dict[str, Any]:
    """The recipe of the model at `src` without loading its weights (where the format allows):
    safetensors metadata, a timm name's zoo entry, or an official `.npz`'s array shapes."""
    where = resolve_source(src)
    if isinstance(where, str):
        from mixerbench.models import get_spec

        spec = get_spec(where.split(".")[0])
        return recipe(where, 0, spec.img_size, spec.patch_size)
    if where.suffix == ".npz":
        return _npz_recipe(where, model_name)
    meta = read_metadata(where)
    if meta is None:
        if not model_name:
            raise UserError(f"{where} has no mixerbench metadata; pass --model to say which "
                            "architecture it holds.")
        return recipe(model_name, 0, 224, None)
    return meta


def _with_regularisers(overrides: dict | None, reg: dict) -> dict:
    if not reg:
        return dict(overrides or {})
    arch = {k: v for k, v in (overrides or {}).items() if k not in REGULARISERS}
    return {**arch, **{k: v for k, v in reg.items() if v}}


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


def _load_timm(name: str, reg: dict | None = None):
    """timm pretrained weights (needs the hub; fails fast with a clear sentence offline)."""
    import timm

    from mixerbench.models import get_spec

    spec = get_spec(name.split(".")[0])
    arch_tag = name[5:]
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"Cannot fetch {name} while HF_HUB_OFFLINE=1; download it once online, or "
                        "pass a local .safetensors / .npz file to --init.")
    timm_reg = {{"drop_path": "drop_path_rate", "dropout": "drop_rate"}[k]: v
                for k, v in (reg or {}).items()}
    try:
        model = timm.create_model(arch_tag, pretrained=True, **timm_reg)
    except Exception as exc:
        raise UserError(f"Could not load {name} from the Hugging Face hub ({type(exc).__name__}); "
                        "check the name and your connection, or pass a local checkpoint.") from None
    size = model.pretrained_cfg.get("input_size", (3, spec.img_size, spec.img_size))[-1]
    return model, recipe(name, model.num_classes, size, spec.patch_size,
                         _with_regularisers(None, reg or {}))


# Official vit_jax Mixer parameter names -> timm / mixerbench names (the official code's
# `models_mixer.py`: `stem`, `MixerBlock_i/{token,channel}_mixing/Dense_j`, `pre_head_layer_norm`).
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


def _npz_recipe(path: Path, model_name: str | None) -> dict[str, Any]:
    """The recipe of an official Mixer `.npz` from the shapes of a few arrays (a `.npz` loads
    each array on access, so the rest of the file is not read)."""
    import numpy as np

    from mixerbench.models import REGISTRY

    try:
        with np.load(path, allow_pickle=False) as fh:
            blocks = {k.split("/")[0] for k in fh.files if k.startswith("MixerBlock_")}
            depth = 1 + max(int(b.split("_")[-1]) for b in blocks)
            stem = fh["stem/kernel"].shape               # (P, P, 3, C)
            tokens = fh["MixerBlock_0/token_mixing/Dense_0/kernel"].shape   # (S, D_S)
            channels = fh["MixerBlock_0/channel_mixing/Dense_0/kernel"].shape  # (C, D_C)
            classes = fh["head/kernel"].shape[1]
        patch, dim = int(stem[0]), int(stem[-1])
        size = int(round(tokens[0] ** 0.5)) * patch
    except (KeyError, ValueError, OSError, IndexError, TypeError) as exc:
        raise UserError(f"{path} is not an official Mixer checkpoint ({type(exc).__name__}: "
                        f"{exc}); pass a vit_jax Mixer .npz.") from None
    size_letter = {(12, 768): "b", (24, 1024): "l", (8, 512): "s", (32, 1280): "h"}.get((depth, dim))
    guess = f"mixer-{size_letter}{patch}"
    # The overrides below fix every shape, so any Mixer entry serves as the base.
    name = model_name or (guess if guess in REGISTRY else "mixer-b16")
    overrides = dict(width=dim, depth=depth, tokens_dim=int(tokens[1]), channels_dim=int(channels[1]))
    return recipe(name, int(classes), size, patch, overrides)


def _load_npz(path: Path, model_name: str | None, reg: dict | None = None):
    import numpy as np

    from mixerbench.models import create_model

    rec = _npz_recipe(path, model_name)
    try:
        with np.load(path, allow_pickle=False) as fh:
            arrays = {k: fh[k] for k in fh.files}
        state, *_ = _npz_to_state(arrays)
    except (KeyError, ValueError, OSError, IndexError, TypeError, RuntimeError) as exc:
        raise UserError(f"{path} is not an official Mixer checkpoint ({type(exc).__name__}: "
                        f"{exc}); pass a vit_jax Mixer .npz.") from None
    rec = dict(rec, overrides=_with_regularisers(rec["overrides"], reg or {}))
    model = create_model(rec["name"], num_classes=rec["num_classes"], img_size=rec["img_size"],
                         patch_size=rec["patch_size"], **rec["overrides"])
    _load_state(model, state, path)
    return model, rec
