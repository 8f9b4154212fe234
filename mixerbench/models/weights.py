"""Loading and saving weights: run directories, safetensors, timm hub names, official `.npz`.

A mixerbench checkpoint is a `.safetensors` state dict whose metadata carries the model
description (`name`, `num_classes`, `img_size`, `patch_size`, `overrides`), so a checkpoint file
alone rebuilds its model. Sources accepted by `load_model` (the `--init` / `--checkpoint` contract):

- a run directory (`results/runs/<run_id>/`, its `checkpoint-last.safetensors`);
- a `.safetensors` file written by mixerbench;
- a `.safetensors` state dict without that metadata (a timm model's, for instance), with the
  architecture named by the caller (`--arch`);
- `timm:<name>[.<tag>]`: timm's pretrained weights, read from the Hugging Face cache without any
  network access when they are there (as timm itself does offline), else downloaded;
- an official `.npz` of google-research/vision_transformer: a Mixer (`models_mixer.py` names) or a
  ViT (`models_vit.py` names: a class token or global average pooling, with or without the
  representation layer), in Flax's pre-Linen or current module numbering.

timm's Mixers (`mixer_b16_224` ...) load into the native Mixer (same parameter names), recording
`gelu="exact"` since timm's Mixer uses exact GELU, so they fine-tune at Kx like any native Mixer.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from mixerbench import files
from mixerbench.errors import UserError

CHECKPOINT = "checkpoint-last.safetensors"


def model_description(name: str, num_classes: int, img_size: int, patch_size: int | None,
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return dict(name=name, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                overrides=dict(overrides or {}))


def save_checkpoint(path: str | os.PathLike, model, description: dict[str, Any]) -> None:
    """Write the state dict with its model description atomically (temp file, fsync, rename)."""
    from mixerbench.files import atomic_write_bytes

    atomic_write_bytes(path, checkpoint_bytes(model, description))


def checkpoint_bytes(model, description: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint file: the state dict as safetensors, the model description in
    its header (so its sha256 can be recorded before the file is written)."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    return save(state, metadata={"mixerbench_model": json.dumps(description)})


def unwrap(model):
    """The plain module under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


# safetensors' own bound on a header (its N_MAX_HEADER / MAX_HEADER_SIZE: 100 MB)
MAX_HEADER_BYTES = 100 * 2**20


def _safetensors_header(read, size: int, where) -> dict:
    """The JSON header of a safetensors file of `size` bytes, `read(offset, n)` giving its bytes:
    8 bytes of little-endian header length, then that much JSON (the format's definition).
    Read here rather than by `safetensors.safe_open`, which opens a path: the bytes judged (the
    model description, the run that wrote it) must come from the descriptor that is then
    loaded, not from whatever the path names a moment later. As safetensors requires, the
    tensors must cover the rest of the file exactly, so a truncated file is refused here too."""
    bad = UserError(f"Checkpoint {where} is not a readable safetensors file (its header or size "
                    "is wrong); re-create it or pass another checkpoint.")
    if size < 8:
        raise bad
    n = int.from_bytes(read(0, 8), "little")
    if n > min(MAX_HEADER_BYTES, size - 8):
        raise bad
    try:
        header = files.loads_json(read(8, n), f"Checkpoint {where}'s header", MAX_HEADER_BYTES)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, UserError):
            raise
        raise bad from None
    if not isinstance(header, dict):
        raise bad
    ends = [0]
    for k, v in header.items():
        if k == "__metadata__":
            if not (v is None or isinstance(v, dict) and all(isinstance(x, str) for x in v.values())):
                raise bad
            continue
        offsets = v.get("data_offsets") if isinstance(v, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] and isinstance(v.get("shape"), list)):
            raise bad
        ends.append(offsets[1])
    if 8 + n + max(ends) != size:
        raise bad
    return header


def _pread(fd: int):
    def read(offset: int, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = os.pread(fd, n - len(out), offset + len(out))
            if not chunk:
                break
            out += chunk
        return out
    return read


def _file_header(path: Path) -> dict:
    """A safetensors file's header, read from one descriptor (no tensor read)."""
    try:
        fd = files.open_file(path)
    except FileNotFoundError:
        raise UserError(f"Checkpoint {path} does not exist; pass a run directory or a "
                        ".safetensors file.") from None
    try:
        return _safetensors_header(_pread(fd), os.fstat(fd).st_size, path)
    except OSError as exc:
        raise UserError(files.describe(exc, path)) from None
    finally:
        os.close(fd)


def _bytes_header(data: bytes, where) -> dict:
    return _safetensors_header(lambda o, n: data[o:o + n], len(data), where)


def read_weights_bytes(path: str | os.PathLike, sha256: str | None = None,
                       folder: files.Folder | None = None) -> bytes:
    """Every byte of the weights file `path`, read once from one descriptor (`files`: a FIFO,
    device or, inside a results folder, a link is refused), through `folder` (its folder,
    opened) when given. With `sha256`, those bytes must hash to it: the weights loaded are then
    the very ones whose hash was recorded, since they are loaded from these bytes and the file
    is not opened again."""
    import hashlib

    data = (files.read_bytes(path, limit=None) if folder is None
            else folder.read_bytes(Path(path).name, limit=None))
    if data is None:
        raise UserError(f"Checkpoint {path} does not exist; pass a run directory or a "
                        ".safetensors file.")
    digest = hashlib.sha256(data).hexdigest() if sha256 is not None else None
    if sha256 is not None and digest != sha256:
        raise UserError(f"{path} is not the weights file recorded (sha256 {sha256[:12]}..., now "
                        f"{digest[:12]}...): it changed since; pass the original weights or "
                        "start a new run from these.")
    return data


def read_checkpoint(path: str | os.PathLike, sha256: str | None = None
                    ) -> tuple[dict, dict[str, Any] | None]:
    """(state dict, model description or None) from a safetensors file, both from the same
    bytes read once (`read_weights_bytes`); UserError if unreadable."""
    path = Path(path)
    data = read_weights_bytes(path, sha256)
    description = _description(_bytes_header(data, path), path)
    return _load_safetensors(data, path), description


def _load_safetensors(data: bytes, where) -> dict:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise UserError(f"Checkpoint {where} is not a readable safetensors file ({exc}); "
                        "re-create it or pass another checkpoint.") from None


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The model description in a safetensors file's header (None when it has none), read without
    loading any tensor; a damaged header or description is a UserError, never a guess."""
    path = Path(path)
    return _description(_file_header(path), path)


def _description(header: dict, path) -> dict[str, Any] | None:
    meta = header.get("__metadata__") or {}
    if "mixerbench_model" not in meta:
        return None
    try:
        # bounded: metadata nested 100,000 deep would end Python's parser in RecursionError
        rec = files.loads_json(meta["mixerbench_model"], f"Checkpoint {path}'s header")
    except UserError:
        raise
    except ValueError:
        rec = None
    if not _valid_description(rec):
        raise UserError(f"Checkpoint {path} has a damaged model description in its header; "
                        "re-create it or pass another checkpoint.")
    return rec


def _valid_description(rec: Any) -> bool:
    def size(v):
        return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096

    return (isinstance(rec, dict) and isinstance(rec.get("name"), str)
            and isinstance(rec.get("num_classes"), int) and rec["num_classes"] >= 0
            and size(rec.get("img_size"))
            and (rec.get("patch_size") is None or size(rec["patch_size"]))
            and isinstance(rec.get("overrides", {}), dict))


def resolve_source(src: str, credit: bool = True) -> Path | str:
    """A run directory becomes its checkpoint file; `timm:` names pass through. A run's
    checkpoint (given as its run directory or as the file in it) must be that run's own
    (`check_credited`, unless `credit` is False: a caller that loads the file checks the bytes
    it loads instead)."""
    if src.startswith("timm:"):
        return src
    path = Path(src)
    if path.is_dir():
        ckpt = path / CHECKPOINT
        if not ckpt.is_file():
            raise UserError(f"Run directory {path} has no {CHECKPOINT}; was the run started?")
        if credit:
            check_credited(ckpt)
        return ckpt
    if not path.exists():
        raise UserError(f"No run directory or checkpoint at {src}; pass a run directory, a "
                        ".safetensors file, an official .npz or timm:<name>.")
    if credit and path.name == CHECKPOINT:
        check_credited(path)
    return path


def check_credited(ckpt: Path, rec: dict[str, Any] | None = None,
                   folder: files.Folder | None = None) -> None:
    """A checkpoint in a run directory counts as that run's only if it says it was written by
    that run (`config.run_binding`: its run id and settings); one copied in from another run
    is a UserError. A checkpoint from before runs were recorded in it must at least hold the
    run's model (name and resolution). `rec`: the description in the bytes that will be
    loaded (read from the file's header when not given); `folder`: the run directory they
    were read from, opened (`files.Folder`), whose config.json is then read from it too."""
    from mixerbench.config import read_run_config

    cfg = read_run_config(ckpt.parent, folder)
    if cfg is None:  # a checkpoint file outside any run directory stands for itself
        return
    check_credited_to(ckpt, ckpt.parent.name, cfg, (read_metadata(ckpt) if rec is None else rec))


def check_credited_to(ckpt, run: str, cfg, rec: dict[str, Any] | None) -> None:
    """`check_credited` against a given run id and config (the ones a row will be credited to):
    a UserError unless the checkpoint description `rec` says that run wrote it."""
    from mixerbench.config import run_binding

    rec = rec or {}
    mine = run_binding(run, cfg)
    if any(k in rec for k in mine):
        ok = all(rec.get(k) == v for k, v in mine.items())
    else:
        ok = rec.get("name") == cfg.model.name and cfg.model.img_size in (None, rec.get("img_size"))
    if not ok:
        raise UserError(f"{ckpt} was not written by run {run} (it belongs to "
                        f"{rec.get('run_id') or 'another model'}), so it is not credited to it; "
                        "move it away and run the run's own command to re-create its checkpoint.")


def recorded_checkpoints(folder: files.Folder) -> set[str]:
    """The sha256 values of the checkpoints a run folder's own files record: the final one in
    summary.json (a finished run), else the last and the one before it in state-last.pt (a kill
    between writing the state and the checkpoint leaves the one before). Empty when the run
    predates these records or they cannot be read (what reads those files refuses them)."""
    import io

    try:
        summary = files.loads_json(folder.read_bytes("summary.json") or b"null",
                                   folder.where("summary.json"))
    except (ValueError, UnicodeDecodeError):
        summary = None
    if isinstance(summary, dict):
        sha = summary.get("checkpoint_sha256")
        return {sha} if isinstance(sha, str) else set()
    data = folder.read_bytes("state-last.pt", limit=None)
    if data is None:
        return set()
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True, mmap=False)
    except Exception:  # noqa: BLE001 - a damaged state is refused where a resume reads it
        return set()
    return {v for k in ("checkpoint_sha256", "previous_checkpoint_sha256")
            if isinstance(v := state.get(k) if isinstance(state, dict) else None, str)}


def check_recorded(ckpt: Path, data: bytes, folder: files.Folder) -> None:
    """A run's checkpoint counts as that run's only if its bytes are the ones its run recorded
    (`recorded_checkpoints`): a checkpoint copied in from another training of the same
    settings carries the same header, but not the same sha256."""
    import hashlib

    from mixerbench.config import read_run_config

    if read_run_config(ckpt.parent, folder) is None:  # a file outside any run folder
        return
    recorded = recorded_checkpoints(folder)
    digest = hashlib.sha256(data).hexdigest()
    if recorded and digest not in recorded:
        raise UserError(f"{ckpt} is not the checkpoint run {ckpt.parent.name} recorded (sha256 "
                        f"{digest[:12]}..., recorded {sorted(recorded)[0][:12]}...): it was "
                        "copied or swapped in, so it is not credited to the run; move it away "
                        "and run the run's own command to re-create it.")


def weights_sha256(src: str) -> str | None:
    """sha256 of the weights file `src` names (a run directory's checkpoint, a .safetensors or
    .npz file, or the hub cache's file of `timm:<name>`, checked against its blob's name), read
    in blocks from one descriptor. To load what was hashed, pass the hash to
    `load_model(sha256=...)`."""
    import hashlib

    from mixerbench.models import hubcache

    where = resolve_source(src)
    if isinstance(where, str):  # a tag's weights may change on the hub: the file is the identity
        where = hub_file(where[5:])
        sha = hubcache.verify(where)
        if sha is not None:
            return sha
    h = hashlib.sha256()
    try:
        fd = files.open_file(where)
    except FileNotFoundError:
        raise UserError(f"{where} does not exist; check the --init path.") from None
    try:
        for block in iter(lambda: os.read(fd, 1 << 20), b""):
            h.update(block)
    except OSError as exc:
        raise UserError(f"Cannot read {where} ({exc.strerror}); check the --init path.") from None
    finally:
        os.close(fd)
    return h.hexdigest()


def load_model(src: str, *, device: str = "cpu", model_name: str | None = None,
               regularisers: dict[str, float] | None = None, sha256: str | None = None,
               finetuning: bool = False):
    """Build the model stored at `src` and load its weights, head included, as saved.

    Args:
        src: run dir, `.safetensors`, `timm:<name>[.<tag>]` or official `.npz`.
        model_name: for a `.safetensors` file without mixerbench metadata, which architecture it
            holds (a zoo name or a timm name, `--arch`); for an `.npz`, which zoo entry to name
            it by (default guessed from the shapes).
        regularisers: `drop_path` / `dropout` to build the model with instead of the ones it
            was trained with (a fine-tuning run's own; `load_for_finetuning`).
        sha256: the hash the weights file must have (`weights_sha256`, recorded earlier): the
            bytes hashed are the bytes loaded, so a file replaced since is refused.
        finetuning: the start of a fine-tuning run: an official ViT's representation layer
            (`pre_logits`) is left out, as vision_transformer's `load_pretrained` does, and the
            description lists it under `dropped`; evaluation keeps it (the official forward).

    Returns:
        (model, description) where the model description is of the returned model; weights
        that are not finite (NaN or inf) are a UserError, before any run or row uses them.
    """
    model, rec = _load_model(src, device=device, model_name=model_name,
                             regularisers=regularisers, sha256=sha256, finetuning=finetuning)
    check_finite(model, src)
    return model, rec


def check_finite(model, src) -> None:
    """A UserError when any floating-point weight of `model` is NaN or infinite."""
    import torch

    if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if t.is_floating_point() and t.device.type != "meta"):
        raise UserError(f"{src} holds non-finite weights (NaN or inf), so nothing can start "
                        "from it or be measured with it; pass weights from a run that trained.")


def _load_model(src: str, *, device: str, model_name: str | None,
                regularisers: dict[str, float] | None, sha256: str | None, finetuning: bool):
    reg = {k: v for k, v in (regularisers or {}).items() if v is not None}
    where = resolve_source(src, credit=False)  # credited below, on the bytes that are loaded
    if isinstance(where, str):
        model, rec = _load_timm(where, reg, sha256)
        return model.to(device), rec
    if where.suffix == ".npz":
        if sha256 is not None:  # np.load and timm read an .npz by name: checked just before
            read_weights_bytes(where, sha256)
        model, rec = _load_npz(where, model_name, reg, finetuning)
        return model.to(device), rec
    # One read from one descriptor: the run it belongs to (check_credited) and its hash are
    # judged on the bytes that are then loaded; reading the file again by name could load
    # another run's weights swapped in meanwhile.
    # The run folder is opened once and both its checkpoint and its config.json are read from
    # that descriptor: read by path, the config could come from another folder swapped in (or
    # none, at the instant the folder is renamed away) and credit another run's weights.
    with files.open_folder(where.parent) or nullcontext() as folder:
        if folder is None:
            raise UserError(f"Checkpoint {where} does not exist; pass a run directory or a "
                            ".safetensors file.")
        data = read_weights_bytes(where, sha256, folder)
        rec = _description(_bytes_header(data, where), where)
        if where.name == CHECKPOINT:
            check_credited(where, rec, folder)
            check_recorded(where, data, folder)
    state = _load_safetensors(data, where)
    del data
    if rec is None:
        rec = _plain_description(where, _shapes(state), model_name)
    rec = dict(rec, overrides=_with_regularisers(rec.get("overrides"), reg))
    model = _build(rec, where)
    _load_state(model, state, where)
    return model.to(device), rec


def load_for_finetuning(src: str, *, num_classes: int, img_size: int | None = None,
                        regularisers: dict[str, float] | None = None, device: str = "cpu",
                        model_name: str | None = None, sha256: str | None = None):
    """The start of a fine-tuning run (paper section 3, "Fine-tuning"; Appendix C).

    The weights of `src` in a model built with the fine-tuning run's own `regularisers`, resized
    to `img_size` when it differs (Mixer: block-diagonal token-MLP expansion; ViT: position
    embeddings resampled), and, for every family, the pre-trained head dropped for a fresh
    zero-initialised one with `num_classes` outputs, as vision_transformer's `load_pretrained`
    does even when the class counts agree; an official ViT's representation layer is dropped
    too, as `load_pretrained` does for a fine-tuning model without one.

    `sha256`: the hash the weights file must have (`load_model`).

    Returns:
        (model, description) where the model description is of the returned model.
    """
    from mixerbench.models.resize import resize_model

    model, rec = load_model(src, model_name=model_name, regularisers=regularisers, sha256=sha256,
                            finetuning=True)
    rec.pop("dropped", None)  # said by the run's config (`RunConfig.init_dropped`)
    if img_size and img_size != rec["img_size"]:
        model = resize_model(model, img_size, rec["name"], rec["num_classes"], rec["overrides"])
        rec = dict(rec, img_size=img_size)
        if hasattr(model, "tokens_dim"):
            rec["overrides"] = dict(rec["overrides"], tokens_dim=model.tokens_dim)
    zero_head(model, num_classes)
    return model.to(device), dict(rec, num_classes=num_classes)


def zero_head(model, num_classes: int) -> None:
    """Replace the classifier by a `num_classes`-way one with every weight and bias exactly 0
    (both heads of a distilled timm model, whose `get_classifier()` is a tuple).

    timm's `reset_classifier` draws a random head; the paper's fine-tuning starts from zeros.
    """
    import torch

    from mixerbench.models import classifiers

    model.reset_classifier(num_classes)
    with torch.no_grad():
        for head in classifiers(model):
            for p in head.parameters():
                p.zero_()


def source_description(src: str, model_name: str | None = None, *,
                       finetuning: bool = False) -> dict[str, Any]:
    """The model description of `src` without loading its weights (where the format allows):
    safetensors metadata or tensor shapes, a timm name's pretrained config (and, for a Mixer,
    the shapes in its cached file), or an official `.npz`'s array shapes. `finetuning`: of the
    model a fine-tuning run starts from (`load_model`'s `finetuning`; what it leaves out of
    the file is listed under `dropped`)."""
    where = resolve_source(src)
    if isinstance(where, str):
        slug = native_mixer(where)
        if slug:
            return _mixer_description(_file_shapes(hub_file(where[5:])), slug, "exact", where)
        from mixerbench.models import get_spec

        return model_description(where, 0, _timm_input_size(where[5:]),
                                 get_spec(where).patch_size)
    if where.suffix == ".npz":
        return _npz_description(where, model_name, finetuning)
    meta = read_metadata(where)
    if meta is None:
        return _plain_description(where, _file_shapes(where), model_name)
    return meta


def arch_name(name: str) -> str:
    """`--arch`: a zoo name (or paper spelling) as such, any other timm model as `timm:<name>`."""
    import timm

    from mixerbench.models import get_spec, resolve_name

    name = name.strip()
    try:
        return resolve_name(name)
    except UserError:
        if not timm.is_model(name.split(".")[0]):
            raise
    return get_spec("timm:" + name).name


def native_mixer(name: str) -> str | None:
    """The zoo Mixer that `name` is built as: itself for a zoo Mixer, and for `timm:mixer_*`
    the zoo entry with that timm architecture (timm's `MlpMixer` and the native Mixer share
    their parameter names); None for anything else."""
    from mixerbench.models import REGISTRY

    if not name.startswith("timm:"):
        spec = REGISTRY.get(name)
        return name if spec is not None and spec.family == "mixer" else None
    arch = name[5:].split(".")[0]
    return next((s.name for s in REGISTRY.values()
                 if s.family == "mixer" and s.timm_name == arch), None)


def _plain_description(where: Path, shapes: dict, model_name: str | None) -> dict[str, Any]:
    """The model description of a state dict without our metadata, from `--arch` and its shapes."""
    if not model_name:
        raise UserError(f"{where} has no mixerbench metadata; pass --arch with the timm name of "
                        "the architecture it holds (e.g. --arch mixer_b16_224).")
    from mixerbench.models import get_spec

    name = arch_name(model_name)
    slug = native_mixer(name)
    if slug:  # a Mixer state dict we did not write is timm's (or in timm's names): exact GELU
        return _mixer_description(shapes, slug, "exact", where)
    spec = get_spec(name)
    return model_description(name, _head_size(shapes), spec.img_size, spec.patch_size)


def _build(rec: dict, where):
    from mixerbench.models import create_model

    try:
        return create_model(rec["name"], num_classes=rec["num_classes"], img_size=rec["img_size"],
                            patch_size=rec["patch_size"], **rec["overrides"])
    except (TypeError, ValueError, RuntimeError) as exc:  # UserError is a ValueError
        if isinstance(exc, UserError):
            raise
        raise UserError(f"Checkpoint {where} describes a model that cannot be built "
                        f"({type(exc).__name__}); re-create it or pass another checkpoint.") from None


def _with_regularisers(overrides: dict | None, reg: dict) -> dict:
    """Architecture overrides without any regulariser (the one list, `models.REGULARISERS`),
    then the run's own `reg` (zeros left out: the constructors' default)."""
    from mixerbench.models import REGULARISERS

    if not reg:
        return dict(overrides or {})
    arch = {k: v for k, v in (overrides or {}).items() if k not in REGULARISERS}
    return {**arch, **{k: v for k, v in reg.items() if v}}


def _shapes(state: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _file_shapes(path: Path) -> dict[str, tuple]:
    """Tensor shapes of a weights file, read from the safetensors header (no tensor loaded)."""
    if path.suffix != ".safetensors":
        return _shapes(_read_weights(path))
    return {k: tuple(v["shape"]) for k, v in _file_header(path).items() if k != "__metadata__"}


def _read_weights(path: Path, sha256: str | None = None) -> dict:
    """A state dict from safetensors, or a torch file read with `weights_only=True` (no code
    runs), loaded from bytes read once from one descriptor (`read_weights_bytes`, which checks
    them against `sha256` when given)."""
    import io

    import torch

    data = read_weights_bytes(path, sha256)
    try:
        if path.suffix == ".safetensors":
            return _load_safetensors(data, path)
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path} is not a readable weights file ({type(exc).__name__}); delete "
                        "it or pass another checkpoint.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict of tensors; pass another checkpoint.")
    return state


def _head_size(shapes: dict) -> int:
    for key in ("head.weight", "head.fc.weight", "fc.weight"):
        if key in shapes:
            return int(shapes[key][0])
    return 0


def _load_state(model, state: dict, where) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise UserError(f"Checkpoint {where} does not fit this architecture ({first[:200]}).") from None


def _mixer_description(shapes: dict, name: str, gelu: str, where) -> dict[str, Any]:
    """A Mixer's model description from the shapes of its state dict (timm / native names):
    the zoo entry of that depth, width and patch when there is one (else `name`), with
    overrides only where the shapes differ from it, and the GELU the weights were trained
    with."""
    from math import isqrt

    from mixerbench.models import REGISTRY

    try:
        dim, _, patch, _ = shapes["stem.proj.weight"]
        depth = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
        tokens_dim, seq = shapes["blocks.0.mlp_tokens.fc1.weight"]
        channels_dim = shapes["blocks.0.mlp_channels.fc1.weight"][0]
    except (KeyError, ValueError, IndexError) as exc:
        raise UserError(f"{where} does not hold a Mixer's weights (no {exc} of the right "
                        "shape); pass --arch with the architecture it holds.") from None
    # Shapes a Mixer can have (paper section 2): a patch over RGB and every width at least 1;
    # a width of 0 or a (0, 4) token kernel would build an empty model or fail inside torch.
    stem = tuple(shapes["stem.proj.weight"])
    if min(dim, patch, depth, tokens_dim, seq, channels_dim) < 1 or stem[1] != 3 or stem[2] != stem[3]:
        raise UserError(f"{where} holds no Mixer of a possible shape (stem {stem}, token-mixing "
                        f"kernel {(int(seq), int(tokens_dim))}, channel-mixing width "
                        f"{int(channels_dim)}); pass another checkpoint.")
    side = isqrt(seq)
    if side * side != seq:
        raise UserError(f"{where} holds a token-mixing MLP over {seq} tokens, not a square grid; "
                        "pass another checkpoint.")
    guess = next((s.name for s in REGISTRY.values() if s.family == "mixer" and s.patch_size == patch
                  and s.kwargs == dict(dim=dim, depth=depth)), None)
    name = guess or name
    base = REGISTRY[name].kwargs
    overrides: dict[str, Any] = {}
    if dim != base["dim"]:
        overrides["width"] = int(dim)
    if depth != base["depth"]:
        overrides["depth"] = int(depth)
    if tokens_dim != dim // 2:
        overrides["tokens_dim"] = int(tokens_dim)
    if channels_dim != 4 * dim:
        overrides["channels_dim"] = int(channels_dim)
    overrides["gelu"] = gelu
    return model_description(name, _head_size(shapes), side * int(patch), int(patch), overrides)


# ------------------------------------------------------------------ timm names: the HF cache

def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it (HF_HUB_CACHE, else HF_HOME/hub,
    else ~/.cache/huggingface/hub), read when called rather than when the hub library loads."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    from mixerbench.process import cache_home

    home = os.environ.get("HF_HOME") or cache_home() / "huggingface"
    return Path(home).expanduser() / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _pretrained_cfg(arch_tag: str):
    import timm

    try:
        cfg = timm.get_pretrained_cfg(arch_tag)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        arch = arch_tag.split(".")[0]
        tags = [n for n in timm.list_pretrained(arch + ".*")][:6]
        raise UserError(f"timm has no weights on the Hugging Face hub named {arch_tag}; "
                        + (f"choose one of {', '.join(tags)}." if tags else
                           f"{arch} has no pretrained weights in timm."))
    return cfg


def _timm_input_size(arch_tag: str) -> int:
    return int(_pretrained_cfg(arch_tag).input_size[-1])


def hub_file(arch_tag: str) -> Path:
    """The local weights file of timm's `<arch>.<tag>`: from the Hugging Face cache when it is
    there (no network touched, as timm does under HF_HUB_OFFLINE=1), else downloaded into that
    cache, unless HF_HUB_OFFLINE=1 (then a UserError naming the ways to provide it)."""
    from mixerbench.models import hubcache

    cfg = _pretrained_cfg(arch_tag)
    repo = cfg.hf_hub_id
    files = ((cfg.hf_hub_filename,) if cfg.hf_hub_filename
             else ("model.safetensors", "pytorch_model.bin"))  # timm's preference order
    cache = hub_cache_dir()
    for name in files:
        # checked against its blob's sha256 name before any use; refs/main read bounded
        hit = hubcache.cached_file(cache, repo, name)
        if hit is not None:
            return hit
    options = (f"download it once with network access, point HF_HOME at a cache that holds "
               f"{repo}, or pass a local .safetensors with --arch, or an official .npz")
    if _offline():
        raise UserError(f"timm:{arch_tag} is not in the Hugging Face cache ({cache}) and "
                        f"HF_HUB_OFFLINE=1 forbids downloading it; {options}.")
    from mixerbench.data import decode
    from mixerbench.data.hub import hub_reachable

    if not hub_reachable(decode.cache_root()):  # a 3 s probe, not the hub client's retries
        raise UserError(f"timm:{arch_tag} is not in the Hugging Face cache ({cache}) and the "
                        f"hub is not reachable; {options}.")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for name in files:
        try:
            got = Path(hf_hub_download(repo, name, cache_dir=str(cache), etag_timeout=10))
            hubcache.verify(got)  # a download cut short is refused like a damaged blob
            return got
        except LocalEntryNotFoundError:  # the connection failed after all
            break
        except EntryNotFoundError:  # the repository lacks this file; try the next
            continue
        except Exception as exc:  # hub down, gated repo: all one answer
            raise UserError(f"Could not download timm:{arch_tag} from the Hugging Face hub "
                            f"({type(exc).__name__}) and it is not in the cache ({cache}); "
                            f"{options}.") from None
    raise UserError(f"Could not download timm:{arch_tag} ({repo}: none of {', '.join(files)}) "
                    f"and it is not in the cache ({cache}); {options}.")


def _load_timm(name: str, reg: dict | None = None, sha256: str | None = None):
    """timm's pretrained `<arch>.<tag>`: a Mixer into the native Mixer, anything else into the
    timm model, with the weights file found by `hub_file` (cache first, checked against its
    blob's sha256 name); with `sha256`, the file must still be the one recorded."""
    import timm

    from mixerbench.models import get_spec, hubcache

    reg = reg or {}
    spec = get_spec(name)
    arch_tag = name[5:]
    path = hub_file(arch_tag)
    slug = native_mixer(name)
    if sha256 is not None and not slug and hubcache.verify(path) not in (None, sha256):
        raise UserError(f"The weights of {name} in the Hugging Face cache changed since this "
                        f"command started (sha256 {sha256[:12]}... then, "
                        f"{hubcache.verify(path)[:12]}... now); run the command again.")
    if slug:
        # the bytes loaded are hashed: the blob's own name, or the sha256 recorded
        state = _read_weights(path, sha256 or hubcache.verify(path))
        rec = _mixer_description(_shapes(state), slug, "exact", name)
        rec = dict(rec, overrides=_with_regularisers(rec["overrides"], reg))
        model = _build(rec, name)
        _load_state(model, state, name)
        return model, rec
    timm_reg = {{"drop_path": "drop_path_rate", "dropout": "drop_rate"}[k]: v
                for k, v in reg.items() if k in ("drop_path", "dropout")}
    # the head the file holds, whatever timm's default; told to the pretrained config as well,
    # since timm drops a head whose size differs from the config's (and draws a random one)
    overlay = dict(file=str(path))
    classes = _head_size(_file_shapes(path))
    if classes:
        timm_reg["num_classes"] = overlay["num_classes"] = classes
    try:  # timm's own loader, given the file: its checkpoint filters apply
        model = timm.create_model(arch_tag, pretrained=True, pretrained_cfg_overlay=overlay,
                                  **timm_reg)
    except Exception as exc:
        raise UserError(f"timm could not load {name} from {path} ({type(exc).__name__}); "
                        "delete that file from the cache or pass another checkpoint.") from None
    size = int(model.pretrained_cfg.get("input_size", (3, spec.img_size, spec.img_size))[-1])
    return model, model_description(name, model.num_classes, size, spec.patch_size,
                         _with_regularisers(None, reg))


# ------------------------------------------------------- official vision_transformer .npz files
#
# The layouts of google-research/vision_transformer: `models_mixer.py` (MlpMixer) and
# `models_vit.py` (VisionTransformer, classifier 'token' or 'gap', with or without the
# representation layer `pre_logits`), each flattened to '/'-joined names as `checkpoint.save`
# writes them, in Flax's pre-Linen module numbering (one counter per parent: `LayerNorm_0`,
# `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`, as the released ViT files have)
# or its current one (a counter per module class: `..._0`, `LayerNorm_1`, `MlpBlock_0`, what
# flattening today's official params gives). `checkpoint.load` reads both by renaming with
# flax's `convert_pre_linen`; `linen_names` does the same, and every name is then mapped onto the
# torch model or refused.

_FLAX_NUMBERED = re.compile(r"(.*)_\d+$")


def _natural(text: str) -> list:
    """flax's natural sort key: digits compare as numbers (encoderblock_10 after _9)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def linen_names(names) -> dict[str, str]:
    """{current Flax name: name in the file} for the array names of an official `.npz`: flax's
    `checkpoints.convert_pre_linen` applied to the tree the names spell (at every level, the
    children named `<module>_<n>` renumbered 0, 1, ... per module in natural order). Current
    names are returned unchanged. A name that is both an array and a group is a UserError."""
    tree: dict = {}
    for full in names:
        node = tree
        *groups, leaf = full.split("/")
        for g in groups:
            node = node.setdefault(g, {})
            if not isinstance(node, dict):
                raise UserError(f"{_short(full)} is both an array and a group of arrays; this is "
                                "not an official vision_transformer checkpoint.")
        if leaf in node:
            raise UserError(f"{_short(full)} is both an array and a group of arrays; this is "
                            "not an official vision_transformer checkpoint.")
        node[leaf] = full
    out: dict[str, str] = {}

    def walk(node: dict, prefix: str) -> None:
        counts: dict[str, int] = {}
        for name in sorted(node, key=_natural):
            new = name
            m = _FLAX_NUMBERED.match(name)
            if m:
                n = counts.get(m.group(1), 0)
                counts[m.group(1)] = n + 1
                new = f"{m.group(1)}_{n}"
            path = f"{prefix}/{new}" if prefix else new
            if isinstance(node[name], dict):
                walk(node[name], path)
            else:
                out[path] = node[name]

    walk(tree, "")
    return out


def _short(name: str) -> str:
    return name if len(name) <= 80 else name[:77] + "..."


class _Official:
    """An open official `.npz` under current Flax names: `shape(name)` and `array(name)` read
    one array (a `.npz` loads each array on access, so the rest of the file is not read)."""

    def __init__(self, fh, path: Path):
        self.fh, self.path = fh, path
        self.names = linen_names(fh.files)
        if "stem/kernel" in self.names:
            self.kind = "mixer"
        elif "embedding/kernel" in self.names and any(n.startswith("Transformer/") for n in self.names):
            self.kind = "vit"
        else:
            raise UserError(f"{path} has neither a Mixer's stem/kernel nor a ViT's "
                            "embedding/kernel and Transformer; pass an official "
                            "vision_transformer .npz (Mixer or ViT).")

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def array(self, name: str):
        import numpy as np

        return np.asarray(self.fh[self.names[name]], dtype=np.float32)

    def shape(self, name: str) -> tuple:
        return tuple(self.fh[self.names[name]].shape)

    def count(self, group: str) -> int:
        """How many `<group>_<i>` modules the file has (the depth of a Mixer or ViT)."""
        pat = re.compile(rf"(?:.*/)?{group}_(\d+)/")
        found = {int(m.group(1)) for n in self.names if (m := pat.match(n))}
        return max(found) + 1 if found else 0

    def check_names(self, expected: set[str]) -> None:
        """Every array name of the file is one the layout has, and every one it has is there:
        an unknown or missing name is refused in one sentence that names it (never ignored)."""
        extra = sorted(set(self.names) - expected, key=_natural)
        if extra:
            raise UserError(f"{self.path} holds {_short(self.names[extra[0]])}, which the official "
                            f"{'Mixer' if self.kind == 'mixer' else 'ViT'} layout does not have "
                            f"({len(extra)} such array{'s' if len(extra) > 1 else ''}); pass an "
                            "official vision_transformer .npz.")
        missing = sorted(expected - set(self.names), key=_natural)
        if missing:
            raise UserError(f"{self.path} lacks {_short(missing[0])} of the official "
                            f"{'Mixer' if self.kind == 'mixer' else 'ViT'} layout "
                            f"({len(missing)} array{'s' if len(missing) > 1 else ''} missing); "
                            "pass a complete vision_transformer .npz.")


def _pair(group: str, leaves=("kernel", "bias")) -> set[str]:
    return {f"{group}/{leaf}" for leaf in leaves}


def _mixer_names(f: _Official) -> set[str]:
    names = _pair("stem") | _pair("pre_head_layer_norm", ("scale", "bias"))
    if "head/kernel" in f or "head/bias" in f:
        names |= _pair("head")
    for i in range(f.count("MixerBlock")):
        b = f"MixerBlock_{i}/"
        names |= _pair(b + "LayerNorm_0", ("scale", "bias")) | _pair(b + "LayerNorm_1", ("scale", "bias"))
        for mix in ("token_mixing", "channel_mixing"):
            names |= _pair(f"{b}{mix}/Dense_0") | _pair(f"{b}{mix}/Dense_1")
    return names


def _vit_names(f: _Official) -> set[str]:
    names = _pair("embedding") | {"Transformer/posembed_input/pos_embedding"}
    names |= _pair("Transformer/encoder_norm", ("scale", "bias"))
    for optional in ("cls", "pre_logits/kernel", "pre_logits/bias", "head/kernel", "head/bias"):
        if optional in f:
            names |= {optional} if optional == "cls" else _pair(optional.split("/")[0])
    for i in range(f.count("encoderblock")):
        b = f"Transformer/encoderblock_{i}/"
        names |= _pair(b + "LayerNorm_0", ("scale", "bias")) | _pair(b + "LayerNorm_1", ("scale", "bias"))
        for n in ("query", "key", "value", "out"):
            names |= _pair(f"{b}MultiHeadDotProductAttention_0/{n}")
        names |= _pair(b + "MlpBlock_0/Dense_0") | _pair(b + "MlpBlock_0/Dense_1")
    return names


def _mixer_state(f: _Official) -> dict:
    """timm / native Mixer state dict of an official Mixer (`models_mixer.py`: `stem`,
    `MixerBlock_i/{LayerNorm_0, token_mixing, LayerNorm_1, channel_mixing}/Dense_j`,
    `pre_head_layer_norm`, `head`)."""
    import torch

    def t(name):
        return torch.from_numpy(f.array(name))

    state = {
        "stem.proj.weight": t("stem/kernel").permute(3, 2, 0, 1),   # (P, P, 3, C) -> (C, 3, P, P)
        "stem.proj.bias": t("stem/bias"),
        "norm.weight": t("pre_head_layer_norm/scale"),
        "norm.bias": t("pre_head_layer_norm/bias"),
    }
    if "head/kernel" in f:
        state.update({"head.weight": t("head/kernel").T, "head.bias": t("head/bias")})
    for i in range(f.count("MixerBlock")):
        p = f"MixerBlock_{i}/"
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_1")):
            state[f"blocks.{i}.{ours}.weight"] = t(p + theirs + "/scale")
            state[f"blocks.{i}.{ours}.bias"] = t(p + theirs + "/bias")
        for ours, theirs in (("mlp_tokens", "token_mixing"), ("mlp_channels", "channel_mixing")):
            for j in (1, 2):
                state[f"blocks.{i}.{ours}.fc{j}.weight"] = t(f"{p}{theirs}/Dense_{j-1}/kernel").T
                state[f"blocks.{i}.{ours}.fc{j}.bias"] = t(f"{p}{theirs}/Dense_{j-1}/bias")
    return state


def _vit_state(f: _Official, representation: bool) -> dict:
    """timm ViT state dict of an official ViT (`models_vit.py`): the attention's per-head
    query / key / value kernels (D, H, D/H) become timm's fused `qkv` (3D, D), its output kernel
    (H, D/H, D) `proj` (D, D); `encoder_norm` is timm's `norm` (applied to every token before
    pooling, as the official model does for both classifiers); `pre_logits` the representation
    layer when `representation`, else left out (the fine-tuning rule of `load_pretrained`)."""
    import torch

    def t(name):
        return torch.from_numpy(f.array(name))

    k = t("embedding/kernel")
    state = {
        "patch_embed.proj.weight": k.permute(3, 2, 0, 1), "patch_embed.proj.bias": t("embedding/bias"),
        "pos_embed": t("Transformer/posembed_input/pos_embedding"),
        "norm.weight": t("Transformer/encoder_norm/scale"),
        "norm.bias": t("Transformer/encoder_norm/bias"),
    }
    if "cls" in f:
        state["cls_token"] = t("cls")
    dropped = not representation and "pre_logits/kernel" in f
    if "head/kernel" in f and not dropped:  # a head on the representation goes with it
        state.update({"head.weight": t("head/kernel").T, "head.bias": t("head/bias")})
    if representation and "pre_logits/kernel" in f:
        state.update({"pre_logits.fc.weight": t("pre_logits/kernel").T,
                      "pre_logits.fc.bias": t("pre_logits/bias")})
    dim = k.shape[-1]
    for i in range(f.count("encoderblock")):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        att = p + "MultiHeadDotProductAttention_0/"
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_1")):
            state[f"{b}{ours}.weight"] = t(p + theirs + "/scale")
            state[f"{b}{ours}.bias"] = t(p + theirs + "/bias")
        state[b + "attn.qkv.weight"] = torch.cat(
            [t(att + n + "/kernel").reshape(dim, -1).T for n in ("query", "key", "value")])
        state[b + "attn.qkv.bias"] = torch.cat(
            [t(att + n + "/bias").reshape(-1) for n in ("query", "key", "value")])
        state[b + "attn.proj.weight"] = t(att + "out/kernel").reshape(-1, dim).T
        state[b + "attn.proj.bias"] = t(att + "out/bias")
        for j in (1, 2):
            state[f"{b}mlp.fc{j}.weight"] = t(f"{p}MlpBlock_0/Dense_{j-1}/kernel").T
            state[f"{b}mlp.fc{j}.bias"] = t(f"{p}MlpBlock_0/Dense_{j-1}/bias")
    return state


# ViT shapes -> the zoo's letter (the ViT paper's Table 1: depth, width, heads; MLP 4x width).
_VIT_SIZES = {(12, 384, 6): "s", (12, 768, 12): "b", (24, 1024, 16): "l", (32, 1280, 16): "h"}
# The exception types reading a malformed .npz raises (numpy, zipfile, reshapes)
_NPZ_ERRORS = (KeyError, ValueError, OSError, IndexError, TypeError, RuntimeError, EOFError)


def _open_npz(path: Path, read):
    """`read(_Official)` on the open file; a file that is not an official checkpoint is one
    sentence (UserError), whatever numpy or the mapping raise."""
    import numpy as np

    from mixerbench.models.arrays import check_npz

    check_npz(path)  # headers first: a regular file, real dtypes, sizes as declared, fits
    try:
        with np.load(path, allow_pickle=False) as fh:
            return read(_Official(fh, path))
    except UserError:
        raise
    except _NPZ_ERRORS as exc:
        raise UserError(f"{path} is not an official Mixer or ViT checkpoint ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); pass a vision_transformer .npz.") from None


def _npz_description(path: Path, model_name: str | None, finetuning: bool = False) -> dict[str, Any]:
    """The model description of an official `.npz` from the shapes of a few arrays, after every
    array name is checked against its layout. `finetuning`: a ViT's representation layer is
    dropped (listed under `dropped`), as vision_transformer's `load_pretrained` drops it for a
    fine-tuning run without `representation_size`."""

    def read(f: _Official):
        if f.kind == "vit":
            f.check_names(_vit_names(f))
            return "vit", _vit_npz_description(f, model_name, finetuning)
        f.check_names(_mixer_names(f))
        blocks = f.count("MixerBlock")
        ph, pw, chans, c = f.shape("stem/kernel")                            # (P, P, 3, C)
        s, d_s = f.shape("MixerBlock_0/token_mixing/Dense_0/kernel")          # (S, D_S)
        shapes = {  # in timm's names and layout, as `_mixer_state` converts them
            "stem.proj.weight": (c, chans, ph, pw),
            "blocks.0.mlp_tokens.fc1.weight": (d_s, s),
            "blocks.0.mlp_channels.fc1.weight":
                f.shape("MixerBlock_0/channel_mixing/Dense_0/kernel")[::-1],
            **{f"blocks.{b}.norm1.weight": (c,) for b in range(blocks)},
        }
        if "head/kernel" in f:
            shapes["head.weight"] = f.shape("head/kernel")[::-1]
        return "mixer", shapes

    kind, got = _open_npz(path, read)
    if kind == "vit":
        return got
    base = native_mixer(arch_name(model_name)) if model_name else None
    return _mixer_description(got, base or "mixer-b16", "tanh", path)


def _vit_npz_description(f: _Official, model_name: str | None, finetuning: bool) -> dict[str, Any]:
    """A vision_transformer ViT (`models_vit.py` names): the zoo ViT of those shapes, or ViT-B/16
    with the shapes as overrides; the classifier ('token': a class token, read from it; 'gap':
    the mean of the normed tokens, timm's `fc_norm=False`); the representation layer; Flax's
    tanh GELU."""
    import torch

    from mixerbench.models import REGISTRY, create_model

    blk = "Transformer/encoderblock_0/"
    kernel = f.shape("embedding/kernel")                                      # (P, P, 3, D)
    patch, dim = kernel[0], kernel[-1]
    depth = f.count("encoderblock")
    heads = f.shape(blk + "MultiHeadDotProductAttention_0/query/kernel")[1]  # (D, H, D/H)
    hidden = f.shape(blk + "MlpBlock_0/Dense_0/kernel")[1]                    # (D, M)
    tokens = f.shape("Transformer/posembed_input/pos_embedding")[1]
    cls = "cls" in f
    classes = f.shape("head/kernel")[1] if "head/kernel" in f else 0
    rep = f.shape("pre_logits/kernel")[1] if "pre_logits/kernel" in f else None
    grid = int(round((tokens - cls) ** 0.5))
    if kernel[0] != kernel[1] or grid * grid != tokens - cls or min(depth, heads, patch, dim) < 1:
        raise UserError(f"{f.path} holds no ViT of a possible shape (patch kernel {kernel}, "
                        f"{tokens} position embeddings{' with a class token' if cls else ''}); "
                        "pass another checkpoint.")
    guess = f"vit-{_VIT_SIZES.get((depth, dim, heads), '?')}{patch}"
    name = arch_name(model_name) if model_name else guess if guess in REGISTRY else "vit-b16"
    with torch.device("meta"):  # the base's own shapes, so only the differences become overrides
        ref = create_model(name, num_classes=classes, img_size=grid * patch, patch_size=patch)
    overrides: dict[str, Any] = {}
    if ref.embed_dim != dim:
        overrides["width"] = int(dim)
    if len(ref.blocks) != depth:
        overrides["depth"] = int(depth)
    if ref.blocks[0].attn.num_heads != heads:
        overrides["num_heads"] = int(heads)
    if ref.blocks[0].mlp.fc1.out_features != hidden:
        overrides["mlp_ratio"] = hidden / dim
    if (ref.cls_token is not None) != cls:
        overrides.update(class_token=cls, global_pool="token" if cls else "avg")
    if not cls and ("global_pool" in overrides or type(ref.fc_norm).__name__ != "Identity"):
        # official 'gap': encoder_norm on every token, then the mean (timm's fc_norm=False);
        # timm's default for global_pool='avg' norms after pooling, which is another model
        overrides["fc_norm"] = False
    rec_extra = {}
    if rep and finetuning:
        rec_extra["dropped"] = ["pre_logits"]
    elif rep:
        overrides["representation_size"] = int(rep)
    overrides["gelu"] = "tanh"  # Flax's nn.gelu, as the checkpoint was trained
    return dict(model_description(name, int(classes), grid * int(patch), int(patch), overrides),
                **rec_extra)


def _load_npz(path: Path, model_name: str | None, reg: dict | None = None,
              finetuning: bool = False):
    rec = _npz_description(path, model_name, finetuning)
    rec = dict(rec, overrides=_with_regularisers(rec["overrides"], reg or {}))
    model = _build(rec, path)

    def read(f: _Official):
        return _vit_state(f, not finetuning) if f.kind == "vit" else _mixer_state(f)

    state = _open_npz(path, read)
    if rec.get("dropped"):  # the head on the dropped layer: the fine-tuning run replaces it
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    _load_state(model, state, path)
    return model, rec
