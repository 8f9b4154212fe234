"""Run configuration: frozen dataclasses, `--set key=value` overrides, validation, JSON.

A run's configuration comes from `presets.resolve` (a preset, then the flags, then `--set`
overrides, then what `presets.read_inputs` found of its inputs); this module owns the dataclasses, the typed overrides
(unknown keys and wrong types are `UserError`s), the checks every number must pass, the hash
that names a run, and the strict reading of a run's `config.json` (`from_dict`).

Run identity (how `run_id` names a run, and why runs survive upgrades):
- The hash covers what identifies the experiment: every setting except where and how it runs
  (`device`, `compile`, `run_name`), plus what the inputs resolve to
  (`presets.read_inputs`): a dataset given as a path is identified by its absolute resolved
  path (`data.path`), and `--init` weights by the sha256 of their file (`init_sha256`).
  Registry names and hub ids (`cifar10`, `hf:owner/name`, `timm:<name>`) identify themselves.
- A checkpoint and training state record the run that wrote them (`run_binding`), and are
  credited to no other run.
- Its recipe (`recipe_id`) is the same hash without the seed and the settings that cannot
  change a number (`NO_EFFECT`) or that pick the images it is measured on (`SUBSET`, recorded in
  each row's `split`): the runs of one recipe are seeds of one measurement.
- The settings of the first release (`FIRST_FIELDS`) are hashed exactly as that release hashed
  them, at every value, so every run id it made is still the id of the same command. A setting
  added later is hashed only when it differs from its default: adding one (one dataclass
  field with a default) changes no existing run id, and a `config.json` written before it
  existed reads back with its default (`from_dict`). A run that uses the new setting at another
  value gets another id, as it should.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, get_type_hints

from mixerbench.errors import UserError, close_matches
from mixerbench.names import check_run_name, slug


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mixer-t4"
    img_size: int | None = None      # None: the registry entry's size
    patch_size: int | None = None    # None: the registry entry's patch
    width: int | None = None         # Mixer C / ViT embed_dim
    depth: int | None = None
    drop_path: float = 0.0           # stochastic depth at the last block (paper Table 4: s)
    dropout: float = 0.0             # paper Table 4: d
    gelu: str = "tanh"               # Mixer only: "tanh" (official) or "exact" (timm)
    options: dict = field(default_factory=dict)  # any other constructor argument (timm kwargs)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    fraction: float | None = None    # class-balanced subset of train (data-scaling runs)
    pipeline: str = "pretrain"       # pretrain | finetune | small (data.transforms)
    eval_pipeline: str = "eval-plain"
    randaug_m: int = 0               # RandAugment(2, m); paper Table 4
    mixup_p: float = 0.0             # paper Table 4: p
    label_smoothing: float = 0.0
    shuffle: str = "none"            # none | patch | global (paper Figure 4)
    shuffle_patch: int | None = None
    batch_size: int = 4096           # global effective batch (paper section 3: 4096)
    eval_batch_size: int = 512
    # Identity of a dataset given as a path: its absolute resolved path (set by
    # `presets.read_inputs`, and where the data is read from); None for registry names and hub ids.
    path: str | None = None


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"               # adam (pre-training) | sgd (fine-tuning), paper section 3
    lr: float = 1e-3
    # Decoupled weight decay on kernels only, multiplied by the scheduled lr (torch AdamW):
    # p -= lr_t * wd * p. With the paper's wd 0.1 and lr 1e-3 this is big_vision's
    # decoupled 1e-4 * sched(t) on `.*/kernel$` (docs/paper-notes.md §2), the one reading that matches
    # the official re-implementation.
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    momentum: float = 0.9
    schedule: str = "linear"         # linear (pre-training) | cosine (fine-tuning)
    warmup_steps: int = 10_000       # paper section 3: 10k linear warm-up
    end_factor: float = 1e-5         # big_vision linear_end: final lr = lr * end_factor
    clip_norm: float = 1.0           # global norm, paper section 3
    warmup_frac: float | None = None  # if set, warmup = frac * total steps (short runs)


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    kind: str = "pretrain"           # pretrain | finetune
    init: str | None = None          # fine-tuning source (run dir, .safetensors, timm:, .npz)
    # sha256 of the `init` weights file (`presets.read_inputs`): a source re-trained under
    # another config is another fine-tuning run; for timm:<name>, the hub cache's file, checked
    # against its blob's sha256 name (a tag's weights may change on the hub).
    init_sha256: str | None = None
    # What the fine-tuned model leaves out of the `init` weights (set by `presets.resolve` from
    # the source): "pre_logits", an official ViT's representation layer, dropped as
    # vision_transformer's `load_pretrained` drops it for fine-tuning; None when nothing is.
    init_dropped: str | None = None
    epochs: float | None = None
    steps: int | None = None         # wins over epochs when both are set
    accum_steps: int = 1
    seed: int = 0
    device: str | None = None        # None: cuda if available, else cpu
    dtype: str = "auto"              # auto: bf16 on CUDA, fp32 on CPU
    compile: bool | None = None      # None: on for CUDA; on a CPU when it pays back (runtime.compile_pays)
    eval_every: int = 0              # steps between evaluations; 0: once per epoch
    ckpt_every: int = 0              # steps between checkpoints; 0: at every evaluation
    max_eval_examples: int | None = None  # evaluate on a stratified N of the eval images (row split `test[stratified:N]`)
    preset: str | None = None
    run_name: str | None = None


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig}


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: Any, where: str = "config.json") -> RunConfig:
    """The RunConfig a run's config.json holds, read strictly: every key known, every value of
    its field's type, in range, and exactly what `to_dict` writes for it (a hand-edited or
    foreign file is refused, never coerced). A setting the file lacks (it was written before
    the setting existed) takes its default. `config_hash`, which the training loop adds, is
    checked too: it is this version's hash, or the one the first release gave the file as stored."""
    if not isinstance(d, dict):
        raise UserError(f"{where} is not a config this version wrote; re-create the run.")
    d = dict(d)
    stored_hash = d.pop("config_hash", None)
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    try:
        cfg = validate(apply_overrides(RunConfig(), flat))
    except UserError as exc:
        raise UserError(f"{where} is not a config this version wrote ({exc}); re-create the "
                        "run.") from None
    full = to_dict(cfg)
    # the file's values as this version writes them (settings the file lacks are not compared)
    written = {k: {n: full[k][n] for n in v} if k in SECTIONS else full[k] for k, v in d.items()}
    if written != d or stored_hash not in (None, config_hash(cfg), _first_hash(d)):
        raise UserError(f"{where} is not a config this version wrote (its values or hash do not "
                        "round-trip); re-create the run.")
    return cfg


def read_run_config(run_dir, folder=None) -> RunConfig | None:
    """The config of the run in `run_dir` (its config.json, read by `from_dict`), or None when
    the folder has no config.json; one we did not write is a UserError. `folder`: the run
    directory already open (`files.Folder`), so that the config is read from the same folder
    as the run's other files even if its path is swapped meanwhile."""
    from pathlib import Path

    from mixerbench import files

    path = Path(run_dir) / "config.json"
    try:
        # bounded in size and depth; a FIFO, device or link planted there is refused, not read
        if folder is not None:
            raw = folder.read_bytes(path.name, files.MAX_JSON_BYTES)
            data = None if raw is None else files.loads_json(raw, path)
        else:
            data = files.read_json(path)
        if data is None:
            return None
    except (OSError, UnicodeDecodeError, ValueError):  # UserError is a ValueError
        data = False
    return from_dict(data, str(path))


# Settings that say where and how a run runs, not what it trains: never hashed.
NOT_IDENTITY = ("device", "run_name", "compile")
# Every setting of the first release, whose run ids must not change: hashed at every value, as
# that release hashed them. A setting not listed here was added later and is hashed only when
# it differs from its default (see the module docstring). Never add to this list.
FIRST_FIELDS = frozenset((
    "model.name", "model.img_size", "model.patch_size", "model.width", "model.depth",
    "model.drop_path", "model.dropout", "model.gelu", "model.options",
    "data.dataset", "data.data_dir", "data.train_split", "data.eval_split", "data.fraction",
    "data.pipeline", "data.eval_pipeline", "data.randaug_m", "data.mixup_p",
    "data.label_smoothing", "data.shuffle", "data.shuffle_patch", "data.batch_size",
    "data.eval_batch_size",
    "optim.name", "optim.lr", "optim.weight_decay", "optim.beta1", "optim.beta2",
    "optim.momentum", "optim.schedule", "optim.warmup_steps", "optim.end_factor",
    "optim.clip_norm", "optim.warmup_frac",
    "kind", "init", "epochs", "steps", "accum_steps", "seed", "device", "dtype", "compile",
    "eval_every", "ckpt_every", "max_eval_examples", "preset", "run_name",
))


def _default(cls, name: str) -> Any:
    f = next(f for f in fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def identity(cfg: RunConfig) -> dict[str, Any]:
    """What the run id hashes: the config without `NOT_IDENTITY`, and without the settings
    added after the first release that are at their defaults."""
    d = to_dict(cfg)
    for k in NOT_IDENTITY:
        d.pop(k, None)
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in SECTIONS:
            for g in fields(value):
                if (f"{f.name}.{g.name}" not in FIRST_FIELDS
                        and getattr(value, g.name) == _default(type(value), g.name)):
                    d[f.name].pop(g.name)
        elif f.name not in FIRST_FIELDS and value == _default(type(cfg), f.name):
            d.pop(f.name, None)
    return d


# Settings a resume may change without changing what is trained: where the data copy lives,
# and (while the run is unfinished) its length. `device`, `compile` and `run_name` too
# (`NOT_IDENTITY`).
RESUMABLE_CHANGES = ("device", "compile", "run_name", "data.data_dir")
LENGTH = ("steps", "epochs")


def run_binding(run_id: str, cfg: RunConfig) -> dict[str, str]:
    """What a run's checkpoint and training state record about the run that wrote them: its id
    and the hash of its identity without the settings a resume may change (so a resume that
    moves the data or lengthens the run keeps its checkpoints). A file recording another run
    is not credited to this one (`models.weights.check_credited`, `train.restore`)."""
    d = identity(cfg)
    for key in RESUMABLE_CHANGES + LENGTH:
        section, _, name = key.rpartition(".")
        (d.get(section, {}) if section else d).pop(name, None)
    return dict(run_id=run_id, run_hash=_digest(d))


def _digest(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


def config_hash(cfg: RunConfig) -> str:
    """8 hex digits of `identity(cfg)`; names the run directory."""
    return _digest(identity(cfg))


# What a run's numbers depend on is its recipe: its identity (`identity`) without the seed and
# without the settings below, which cannot change a number it reports. Where and how it runs
# (`device`, `compile`: the same arithmetic up to float rounding, as the thread count, which
# training can carry to within a seed's spread: the smoke ViT's seed 0 scores 94.3 on one
# thread and 92.9 on two; `run_name`), where its copy of
# a registry dataset lives (`data.data_dir`), how often it evaluates and saves (`eval_every`,
# `ckpt_every`: evaluations draw no random numbers and the final one is at the last step either
# way), the batch size of its evaluations (`data.eval_batch_size`: the loss may move in its
# last float digits) and the preset it started from (`preset`: the preset's values are in the
# other settings). Tracker, launcher and thread settings are no settings of a run at all.
# tests/test_recipes.py trains with each of them changed and gets the same numbers. Changing this
# list changes recipe ids: rows recorded before would no longer group with new runs.
NO_EFFECT = ("device", "compile", "run_name", "preset", "eval_every", "ckpt_every",
             "data.data_dir", "data.eval_batch_size")
# Settings that choose the images a number is measured on: every row records them in its
# `split` column (`test`, `minival`, `test[stratified:N]`), so tables group by recipe and split.
SUBSET = ("data.eval_split", "max_eval_examples")


def recipe(cfg: RunConfig, dtype: str | None = None) -> dict[str, Any]:
    """What `recipe_id` hashes: `identity(cfg)` without the seed, `NO_EFFECT` and `SUBSET`, and
    with `dtype` "auto" replaced by the precision the run actually used (`dtype`, e.g. fp32 on
    a CPU and bf16 on a GPU: two recipes) when it is given."""
    d = identity(cfg)
    for key in ("seed", *NO_EFFECT, *SUBSET):
        section, _, name = key.rpartition(".")
        (d.get(section, {}) if section else d).pop(name, None)
    if cfg.dtype == "auto" and dtype:
        d["dtype"] = dtype
    if cfg.data.shuffle == "none":  # the patch of a shuffle that is not done changes nothing
        d["data"].pop("shuffle_patch", None)
    return d


def recipe_id(cfg: RunConfig, dtype: str | None = None) -> str:
    """`<model>-<dataset>-<hash8>` (`<dataset>-ft-<source>-<hash8>` for a fine-tuning run):
    the run id without the seed, hashing `recipe(cfg, dtype)`. Runs that differ only in their
    seed (or in `NO_EFFECT`) share it, so tables average them as seeds of one recipe; any other
    difference is another recipe, never averaged with it."""
    return f"{_name(cfg)}-{_digest(recipe(cfg, dtype))}"


def _name(cfg: RunConfig) -> str:
    """What a run id says before its seed: the model and dataset, or the fine-tuned weights."""
    if cfg.init:  # the architecture comes from the weights: name the run after them
        from pathlib import PurePath

        source = slug(PurePath(cfg.init.rstrip("/")).name.removesuffix(".safetensors"))[:48]
        return f"{slug(cfg.data.dataset)}-ft-{source}"
    return f"{slug(cfg.model.name)}-{slug(cfg.data.dataset)}"


def _first_hash(stored: dict) -> str:
    """The hash the first release gave a config.json as stored (all of its settings but
    `NOT_IDENTITY`): a file written before some setting existed keeps the hash it was given."""
    return _digest({k: v for k, v in stored.items() if k not in NOT_IDENTITY})


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a `--set` string (or a flag value) to the field's type, or raise UserError."""
    text = str(value)
    allowed = [t for t in getattr(hint, "__args__", (hint,))]
    if value is None or (type(None) in allowed and text.lower() in ("none", "null")):
        if type(None) in allowed:
            return None
        raise UserError(f"{key} cannot be empty.")
    for t in allowed:
        if t is type(None):
            continue
        try:
            if t is bool:
                if isinstance(value, bool):
                    return value
                if text.lower() in ("true", "1", "yes", "on"):
                    return True
                if text.lower() in ("false", "0", "no", "off"):
                    return False
                continue
            if t is int:
                if isinstance(value, float) and value.is_integer():
                    return int(value)
                return int(text.replace("_", ""))
            if t is float:
                return float(text)
            if t is str:
                return text
            if t is dict:
                return dict(value) if isinstance(value, dict) else _bounded_json(text, key)
        except (TypeError, ValueError):
            continue
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed if t is not type(None))
    raise UserError(f"{key}={text} is not a valid {names}; fix the value of {key}.")


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply dotted overrides (`optim.lr`, `model.options.num_heads`, `epochs`) to `cfg`."""
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] in SECTIONS:
            section_cls = SECTIONS[parts[0]]
            section = getattr(cfg, parts[0])
            hints = get_type_hints(section_cls)
            if len(parts) == 3 and parts[1] == "options":
                opts = dict(section.options)
                opts[parts[2]] = _literal(value)
                cfg = replace(cfg, **{parts[0]: replace(section, options=opts)})
                continue
            if len(parts) != 2 or parts[1] not in hints:
                name = parts[1] if len(parts) > 1 else ""
                valid = [f"{parts[0]}.{f.name}" for f in fields(section_cls)]
                raise UserError(f"Unknown setting '{key}'.{close_matches(key, valid)} "
                                f"Valid {parts[0]} settings: {', '.join(valid)}." if name else
                                f"Setting '{key}' needs a field name, e.g. {valid[0]}.")
            new = replace(section, **{parts[1]: _coerce(value, hints[parts[1]], key)})
            cfg = replace(cfg, **{parts[0]: new})
        else:
            hints = get_type_hints(RunConfig)
            if len(parts) != 1 or key not in hints or key in SECTIONS:
                valid = [f.name for f in fields(RunConfig) if f.name not in SECTIONS]
                valid += [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in fields(c)]
                raise UserError(f"Unknown setting '{key}'.{close_matches(key, valid)} "
                                "`mixerbench settings` lists them.")
            cfg = replace(cfg, **{key: _coerce(value, hints[key], key)})
    return cfg


def _literal(text: Any) -> Any:
    """`--set model.options.x=...` values: JSON literals when they parse, else the string."""
    if not isinstance(text, str):
        return text
    try:
        return _bounded_json(text, "a --set model.options key")
    except ValueError as exc:
        if isinstance(exc, UserError):
            raise
        return text


def _bounded_json(text: str, where: str) -> Any:
    """json.loads bounded in size and nesting (`files.loads_json`): Python's parser recurses, so
    a value nested 100,000 deep would end in RecursionError."""
    from mixerbench.files import MAX_JSON_DEPTH, json_depth

    if json_depth(text) > MAX_JSON_DEPTH:
        raise UserError(f"The value of {where} nests more than {MAX_JSON_DEPTH} levels of JSON "
                        "lists or objects; give a plain value.")
    return json.loads(text)


def parse_set(items: list[str] | None) -> dict[str, str]:
    """`["optim.lr=0.01", ...]` -> {"optim.lr": "0.01"}; a missing '=' is a UserError."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}'; for example --set optim.lr=0.01.")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


# Ranges of every number a user can set, checked once here: (low, high, unit or meaning).
# Bounds are generous (a sane run is never refused) but exclude values that can only be typos or
# would reach the allocator (an image side of 10^6 px); None means "no bound on that side".
_RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "epochs": (0, 1e6, "epochs"),
    "steps": (1, 1e10, "optimizer steps"),
    "accum_steps": (1, 4096, "micro-batches per step"),
    "seed": (0, 2**63 - 1, "a non-negative integer"),
    "eval_every": (0, None, "steps (0: once per epoch)"),
    "ckpt_every": (0, None, "steps (0: at every evaluation)"),
    "max_eval_examples": (1, None, "images"),
    "model.img_size": (1, 4096, "pixels"),
    "model.patch_size": (1, 4096, "pixels"),
    "model.width": (1, 65_536, "channels"),
    "model.depth": (1, 1024, "blocks"),
    "model.drop_path": (0, 1, "a probability below 1"),
    "model.dropout": (0, 1, "a probability below 1"),
    "data.fraction": (0, 1, "a share of the train split in (0, 1]"),
    "data.randaug_m": (0, 30, "RandAugment magnitude (paper Table 4 uses 0-20)"),
    "data.mixup_p": (0, 100, "mixup strength (Beta(p, p); paper Table 4 uses 0-0.8)"),
    "data.label_smoothing": (0, 1, "a share below 1"),
    "data.shuffle_patch": (1, 4096, "pixels"),
    "data.batch_size": (1, 2**20, "images per step"),
    "data.eval_batch_size": (1, 2**20, "images per batch"),
    "optim.lr": (0, 10, "learning rate"),
    "optim.weight_decay": (0, 10, "weight decay"),
    "optim.beta1": (0, 1, "Adam beta1 in [0, 1)"),
    "optim.beta2": (0, 1, "Adam beta2 in [0, 1)"),
    "optim.momentum": (0, 1, "SGD momentum in [0, 1)"),
    "optim.warmup_steps": (0, 1e10, "steps"),
    "optim.warmup_frac": (0, 1, "a share of the run below 1"),
    "optim.end_factor": (0, 1, "a multiplier on the peak lr in [0, 1]"),
    "optim.clip_norm": (0, 1e6, "global gradient norm (0: off)"),
}
# Where the upper bound itself is not allowed (probabilities, shares below 1) or the lower one
# (a learning rate, epochs and a fraction must be positive).
_OPEN_HIGH = {"model.drop_path", "model.dropout", "data.label_smoothing", "optim.beta1",
              "optim.beta2", "optim.momentum", "optim.warmup_frac"}
_OPEN_LOW = {"epochs", "data.fraction", "optim.lr"}


def _get(cfg: RunConfig, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _check_range(key: str, value: Any) -> None:
    import math

    low, high, unit = _RANGES[key]
    if value is None:
        return
    bad = isinstance(value, float) and not math.isfinite(value)
    bad = bad or (low is not None and (value <= low if key in _OPEN_LOW else value < low))
    bad = bad or (high is not None and (value >= high if key in _OPEN_HIGH else value > high))
    if bad:
        lo = "" if low is None else ("above " if key in _OPEN_LOW else "at least ") + f"{low:g}"
        hi = "" if high is None else ("below " if key in _OPEN_HIGH else "at most ") + f"{high:g}"
        span = " and ".join(p for p in (lo, hi) if p)
        raise UserError(f"{key} = {value} is out of range: it must be {span} ({unit}).")


def _normalise(obj):
    """Whole numbers given to float fields become floats (a preset's `epochs=8`), so a config
    and its config.json round trip hash alike."""
    hints = get_type_hints(type(obj))
    changes = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        allowed = getattr(hints[f.name], "__args__", (hints[f.name],))
        if dataclasses.is_dataclass(value):
            changes[f.name] = _normalise(value)
        elif float in allowed and isinstance(value, int) and not isinstance(value, bool):
            changes[f.name] = float(value)
    return replace(obj, **changes) if changes else obj


def validate(cfg: RunConfig) -> RunConfig:
    """Every number in range and every cross-field rule a user can trip over; each failure is
    one sentence naming the setting. Returns the config with whole floats as floats."""
    cfg = _normalise(cfg)
    choices = {
        "kind": (cfg.kind, ("pretrain", "finetune")),
        "optim.name": (cfg.optim.name, ("adam", "sgd")),
        "optim.schedule": (cfg.optim.schedule, ("linear", "cosine", "constant")),
        "dtype": (cfg.dtype, ("auto", "bf16", "fp16", "fp32")),
        "model.gelu": (cfg.model.gelu, ("tanh", "exact")),
        "data.shuffle": (cfg.data.shuffle, ("none", "patch", "global")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise UserError(f"{key} must be one of {', '.join(allowed)}, not '{value}'.")
    for key in _RANGES:
        _check_range(key, _get(cfg, key))
    if cfg.device is not None and not re.fullmatch(r"cpu|cuda(:\d{1,4})?", str(cfg.device).strip().lower()):
        raise UserError(f"Unknown device '{cfg.device}'; use cuda, cuda:N or cpu.")
    if cfg.data.batch_size % cfg.accum_steps:
        raise UserError(f"The batch size {cfg.data.batch_size} is not divisible by --accum-steps "
                        f"{cfg.accum_steps}; choose a divisor.")
    if cfg.steps is None and cfg.epochs is None:
        raise UserError("Give a training length with --epochs or --steps (or a preset that sets one).")
    if cfg.optim.warmup_frac is None and cfg.steps is not None \
            and cfg.optim.warmup_steps >= cfg.steps:
        raise UserError(f"The warm-up ({cfg.optim.warmup_steps} steps) must be shorter than the run "
                        f"({cfg.steps} steps), or the learning rate never decays; lower "
                        "optim.warmup_steps or train longer.")
    if cfg.model.patch_size and cfg.model.img_size and cfg.model.img_size % cfg.model.patch_size:
        raise UserError(f"The patch size {cfg.model.patch_size} px does not divide the image size "
                        f"{cfg.model.img_size} px; choose sizes that divide.")
    if cfg.run_name is not None:
        check_run_name(cfg.run_name)
    if cfg.kind == "finetune" and not cfg.init:
        raise UserError("Fine-tuning needs --init: a run directory, a .safetensors file, "
                        "timm:<name> or an official .npz.")
    if cfg.init_dropped not in (None, "pre_logits") or (cfg.init_dropped and not cfg.init):
        raise UserError("init_dropped says which layer of the --init weights a fine-tuning run "
                        "leaves out, and is set from those weights; drop that setting.")
    return cfg


def check_warmup(cfg: RunConfig, warmup: int, total: int) -> None:
    """The warm-up must end before the run does (checked once the run's length in steps is
    known, e.g. from epochs and the dataset size)."""
    if warmup >= total:
        raise UserError(f"The warm-up ({warmup} steps) must be shorter than the run ({total} "
                        "steps), or the learning rate never decays; lower optim.warmup_steps / "
                        "optim.warmup_frac or train longer.")


def run_id(cfg: RunConfig) -> str:
    """`<model>-<dataset>-s<seed>-<hash8>`, or the user's --run-name."""
    if cfg.run_name:
        return cfg.run_name
    tail = f"-s{cfg.seed}-{config_hash(cfg)}"
    # a folder name holds 128 characters (results.RUN_NAME): a longer model or dataset name is
    # cut, the hash still telling runs apart (ids within the limit are unchanged)
    return _name(cfg)[:128 - len(tail)].rstrip("-") + tail


# ------------------------------------------------------------------------- settings and files

# One line of meaning per setting, shown by `mixerbench settings` beside its type, default and
# range (`_RANGES`); a test checks that every field of the schema has one.
MEANING: dict[str, str] = {
    "model.name": "zoo name, paper spelling, family alias or timm:<name>",
    "model.img_size": "input side in pixels (empty: the model's own)",
    "model.patch_size": "patch side in pixels (empty: the model's own)",
    "model.width": "channels: Mixer C, ViT embed dim (empty: the model's own)",
    "model.depth": "blocks (empty: the model's own)",
    "model.drop_path": "stochastic depth at the last block, rising linearly (paper Table 4)",
    "model.dropout": "dropout before the head (paper Table 4)",
    "model.gelu": "Mixer GELU: tanh (the official code's) or exact (timm's)",
    "model.options": "other constructor arguments as JSON, e.g. model.options.num_heads=2",
    "data.dataset": "dataset name, hf:<hub id> or a folder",
    "data.data_dir": "folder of local dataset copies by name",
    "data.train_split": "split trained on (train-minus-minival: train without the minival share)",
    "data.eval_split": "split evaluated on (test, minival, validation)",
    "data.fraction": "class-balanced share of the train split (data scaling, paper Figure 2)",
    "data.pipeline": "train augmentation: pretrain, finetune, small or digits",
    "data.eval_pipeline": "eval crop: eval-plain, eval-resize or eval-resmall (paper App. C)",
    "data.randaug_m": "RandAugment magnitude, 2 layers (paper Table 4)",
    "data.mixup_p": "mixup strength p (paper Table 4)",
    "data.label_smoothing": "label smoothing of the cross-entropy",
    "data.shuffle": "fixed pixel shuffle of every image: none, patch or global (paper Figure 4)",
    "data.shuffle_patch": "patch side of the patch shuffle (empty: the model's patch)",
    "data.batch_size": "global batch: images per optimizer step over all processes",
    "data.eval_batch_size": "images per evaluation batch",
    "data.path": "identity of a dataset given as a path (set by mixerbench)",
    "optim.name": "adam (pre-training) or sgd (fine-tuning), paper section 3",
    "optim.lr": "peak learning rate",
    "optim.weight_decay": "decoupled weight decay on kernels, times the scheduled lr",
    "optim.beta1": "Adam beta1",
    "optim.beta2": "Adam beta2",
    "optim.momentum": "SGD momentum",
    "optim.schedule": "lr schedule after warm-up: linear, cosine or constant",
    "optim.warmup_steps": "linear warm-up steps (paper section 3: 10k)",
    "optim.end_factor": "final lr of the linear schedule as a share of the peak",
    "optim.clip_norm": "global gradient norm clip (0: off)",
    "optim.warmup_frac": "warm-up as a share of the run (wins over warmup_steps)",
    "kind": "pretrain or finetune",
    "init": "weights to fine-tune: run dir, .safetensors, timm:<name> or .npz",
    "init_sha256": "identity of the init weights file (set by mixerbench)",
    "init_dropped": "a layer of the init weights not fine-tuned, e.g. pre_logits (set by mixerbench)",
    "epochs": "training length in epochs of the train split",
    "steps": "training length in optimizer steps (wins over epochs)",
    "accum_steps": "micro-batches per optimizer step",
    "seed": "random seed (initialisation, data order, subsets)",
    "device": "cuda, cuda:N or cpu (empty: cuda if available)",
    "dtype": "auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32",
    "compile": "torch.compile (empty: on for CUDA)",
    "eval_every": "steps between evaluations (0: once per epoch)",
    "ckpt_every": "steps between checkpoints (0: at every evaluation)",
    "max_eval_examples": "evaluate on a seeded class-stratified N images",
    "preset": "the named recipe the run started from",
    "run_name": "run folder name (empty: model-dataset-seed-hash)",
}
# Choices of the settings `validate` checks against a list.
_CHOICES = {"kind": ("pretrain", "finetune"), "optim.name": ("adam", "sgd"),
            "optim.schedule": ("linear", "cosine", "constant"),
            "dtype": ("auto", "bf16", "fp16", "fp32"), "model.gelu": ("tanh", "exact"),
            "data.shuffle": ("none", "patch", "global")}
# What a sweep sets for each of its cells: a --config file given to compare or reproduce may not.
PER_CELL = ("model.name", "seed", "run_name", "kind", "init", "init_sha256", "init_dropped", "preset",
            "data.dataset", "data.path")
# Keys `--print-config` adds beside the settings, which a file read back may hold.
PRINTED = ("run_id", "config_hash", "resolved")


def schema() -> list[tuple[str, Any, Any]]:
    """(dotted key, type, default) of every setting, in the dataclasses' order."""
    out = []
    for f in fields(RunConfig):
        if f.name in SECTIONS:
            cls = SECTIONS[f.name]
            hints = get_type_hints(cls)
            out += [(f"{f.name}.{g.name}", hints[g.name], _default(cls, g.name)) for g in fields(cls)]
        else:
            out.append((f.name, get_type_hints(RunConfig)[f.name], _default(RunConfig, f.name)))
    return out


def _type_name(hint: Any) -> str:
    names = [getattr(t, "__name__", str(t)) for t in getattr(hint, "__args__", (hint,))]
    optional = "NoneType" in names
    names = [n for n in names if n != "NoneType"]
    return " | ".join(names) + (" (optional)" if optional else "")


def _range_text(key: str) -> str:
    if key in _CHOICES:
        return " | ".join(_CHOICES[key])
    if key not in _RANGES:
        return ""
    low, high, unit = _RANGES[key]
    lo = "" if low is None else f"{'>' if key in _OPEN_LOW else '>='} {low:g}"
    hi = "" if high is None else f"{'<' if key in _OPEN_HIGH else '<='} {high:g}"
    return ", ".join(p for p in (lo, hi) if p) + f" ({unit})"


def settings_table(pattern: str | None = None) -> list[dict[str, Any]]:
    """`mixerbench settings`: each setting's key, type, default, range and meaning, generated
    from the dataclasses (`schema`), `_RANGES`, the choices `validate` checks and `MEANING`."""
    import fnmatch

    rows = []
    for key, hint, default in schema():
        if pattern and not fnmatch.fnmatchcase(key, pattern) and pattern != key:
            continue
        rows.append(dict(key=key, type=_type_name(hint),
                         default="" if default is None else json.dumps(default),
                         range=_range_text(key), meaning=MEANING.get(key, "")))
    if not rows:
        raise UserError(f"No setting matches '{pattern}'."
                        + close_matches(pattern or "", [k for k, _, _ in schema()])
                        + " Run `mixerbench settings` for the list.")
    return rows


def flat_settings(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.01}} -> {"optim.lr": 0.01}; `model.options` stays one dict."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key in SECTIONS:
            out.update(flat_settings(v, f"{key}."))
        else:
            out[key] = v
    return out


def read_settings(path, sweep: str | None = None) -> dict[str, Any]:
    """The settings of a `--config` file: JSON (what `--print-config` writes) or YAML, a whole
    config or any of its keys, nested by section or dotted (`optim.lr`). What `--print-config`
    adds beside the settings (`run_id`, `resolved`) is left out; an unknown key or a wrong type
    is refused when the settings are applied. For a `sweep` (compare, reproduce) the settings
    apply to every cell, so the keys a sweep sets per cell (`PER_CELL`) are refused. None: {}."""
    from pathlib import Path

    from mixerbench import files

    if path is None:
        return {}
    path = Path(path)
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    try:  # bounded, and never through a FIFO or device (files.read_bytes)
        raw = files.read_bytes(path, files.MAX_JSON_BYTES)
        if raw is None:
            raise UserError(f"--config {path} does not exist; pass the file --print-config wrote.")
        if yaml_file:
            import yaml

            data = yaml.safe_load(raw.decode())
        else:
            data = files.loads_json(raw, path)
    except UserError:
        raise
    except Exception as exc:  # malformed JSON or YAML (yaml.YAMLError), bytes not UTF-8
        raise UserError(f"--config {path} is not readable {'YAML' if yaml_file else 'JSON'} "
                        f"({' '.join(str(exc).split())[:120]}); pass a file --print-config "
                        "wrote.") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path} holds {type(data).__name__ if data is not None else 'nothing'}, "
                        "not settings; pass one object of settings, as --print-config writes.")
    flat = {k: v for k, v in flat_settings(data).items() if k not in PRINTED}
    if sweep:
        owned = [k for k in flat if k in PER_CELL]
        if owned:
            raise UserError(f"--config {path} sets {', '.join(owned)}, which {sweep} sets for "
                            "each of its cells; remove them from the file.")
    known = {k for k, _, _ in schema()}
    unknown = [k for k in flat if k not in known and not k.startswith("model.options.")]
    if unknown:
        raise UserError(f"--config {path}: unknown setting '{unknown[0]}'."
                        f"{close_matches(unknown[0], known)} `mixerbench settings` lists them.")
    return flat
