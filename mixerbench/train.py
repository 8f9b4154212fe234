"""The one training loop, for pre-training and fine-tuning alike (they differ only by config).

`train(cfg)` reads top to bottom, nanoGPT style: `prepare` checks everything and builds the
data, model and schedule (nothing is written before it has succeeded); `claim_run_dir` makes
the run directory this config's own; `restore` picks up the last checkpoint; then the loop
(`train_step`, evaluation, checkpoint on schedule) and `write_results` (summary and accuracy row).
Recipes are in `presets.py`, with the paper's settings cited there (paper section 3, Table 4).

Guarantees the tests hold us to:
- `config.json` is written before the first step, with the hash of the config that owns the
  run directory; a different config under the same name is refused, and a resume may change
  only the device, the compile switch, the data folder and (for an unfinished run) its length.
- `metrics.csv` gets one row per evaluation. Checkpoints are written atomically (temp file,
  fsync, rename): `state-last.pt` holds everything needed to resume exactly (weights,
  optimizer, scheduler, RNG, step, timers) as plain tensors and numbers, loaded with
  `weights_only=True` so a planted file cannot run code; `checkpoint-last.safetensors` is the
  weights-only export for `--init` and `evaluate`. A kill at any moment leaves the previous
  checkpoint loadable.
- Batches depend only on (seed, epoch, index) (`mixerbench.data`), and RNG state is saved, so
  a resumed CPU run ends with bitwise the same weights as an uninterrupted one.
- Ctrl-C / SIGTERM finish the current step, save, and raise `Interrupted` (the CLI says how to
  resume). A non-finite loss raises `TrainingStopped` before the bad update is saved; no row is
  written from non-finite weights or metrics.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixerbench import files, results
from mixerbench.config import (
    LENGTH,
    RESUMABLE_CHANGES,
    RunConfig,
    check_warmup,
    config_hash,
    read_run_config,
    recipe_id,
    run_binding,
    run_id,
    to_dict,
)
from mixerbench.errors import UserError
from mixerbench.events import Log

STATE = "state-last.pt"
SUMMARY = "summary.json"
CONFIG = "config.json"
RUN_LOCK = "run"  # the run directory's lock file is run.lock (files.locked)


class Event:
    """The progress events `train` emits as `log(event, info)`; `view.ProgressView` renders
    them and `trackers.Tracked` records start, eval and end."""

    STAGE = "stage"        # a phase without steps began: what (loading data, final evaluation)
    RESUMED = "resumed"    # an unfinished run continues: step, run_dir
    RESTARTED = "restarted"  # a run without training state starts again at 0: run_dir, dropped
    START = "start"        # the loop starts: run_dir, total_steps, step, model, dataset, ...
    STEP = "step"          # an optimizer step: step, total_steps, epoch, loss, lr, img_per_sec
    EVAL = "eval"          # an evaluation: the metrics.csv row (step, top1, top5, eval_loss)
    END = "end"            # the run finished: its summary, run_dir
    FINISHED = "finished"  # an already finished run was read back: its summary, run_dir


class TrainingStopped(RuntimeError):
    """The run cannot go on (non-finite loss, disk full); the last checkpoint is intact."""


class Interrupted(RuntimeError):
    """Ctrl-C or SIGTERM: a checkpoint was saved at `step`; the same command resumes."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"interrupted at step {step}")
        self.run_dir, self.step = run_dir, step


# ------------------------------------------------------------------------------------ helpers


def lr_factor(step: int, total: int, warmup: int, schedule: str, end_factor: float) -> float:
    """Multiplier on the peak lr at `step` (0-based): linear warm-up from 0, then decay.

    Linear decay ends at `end_factor` (big_vision `linear_end`); cosine ends at 0 (paper
    section 3: linear warm-up of 10k steps then linear decay for pre-training, cosine for
    fine-tuning).
    """
    if warmup and step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return end_factor + (1.0 - end_factor) * (1.0 - progress)


def make_optimizer(model, cfg: RunConfig, fused: bool):
    """AdamW or SGD with weight decay on kernels only (matrices and conv filters, not biases,
    norms, position embeddings or class tokens), as big_vision's `.*/kernel$` rule."""
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and name.endswith("weight") else no_decay).append(p)
    o = cfg.optim
    groups = [dict(params=decay, weight_decay=o.weight_decay),
              dict(params=no_decay, weight_decay=0.0)]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, fused=fused or None)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=1e-8,
                             fused=fused or None)


@contextmanager
def stop_signals():
    """SIGINT/SIGTERM set a flag checked between steps, so a step is never cut in half."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["stop"] = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_summary(run_dir: Path) -> dict | None:
    """A finished run's summary, or None when it has none; one we did not write, or one that
    disagrees with its run's config.json (`summary_disagrees`), is refused, never recorded."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    try:
        s = files.read_json(path)  # bounded; a FIFO or link planted there is refused
    except (OSError, UnicodeDecodeError, ValueError):
        s = None
    ok = (isinstance(s, dict) and s.get("run_id") == Path(run_dir).name
          and isinstance(s.get("model"), str) and isinstance(s.get("dataset"), str)
          and all(_finite(s.get(k)) for k in ("top1", "top5", "loss", "steps", "img_size"))
          and 0 <= s["top1"] <= 100
          # a cost is a finite number of seconds (an inf would be an infinite-cost row)
          and all(s.get(k) is None or (_finite(s[k]) and s[k] >= 0)
                  for k in ("train_seconds", "device_hours", "train_flops")))
    if not ok:
        raise UserError(f"{path} is not a summary this version wrote; move the run directory "
                        f"{Path(run_dir).name} away (or delete it) and run again.")
    cfg = read_run_config(run_dir)
    wrong = "its config.json is missing" if cfg is None else summary_disagrees(s, cfg)
    if wrong:
        raise UserError(f"{path} does not belong to its run ({wrong}), so it is not recorded; "
                        f"move the run directory {Path(run_dir).name} away (or delete it) and "
                        "run again.")
    if not s.get("recipe_id"):  # written before runs recorded their recipe
        s["recipe_id"] = recipe_id(cfg, s.get("dtype"))
    return s


def summary_disagrees(s: dict, cfg: RunConfig) -> str:
    """What in a summary contradicts the config of its run (model, dataset, split, kind,
    source weights, resolution), as a few words; "" when they agree."""
    split = str(s.get("split"))  # `test`, or `test[...]` when max_eval_examples capped it
    checks = (
        ("model", s["model"].split("[", 1)[0], cfg.model.name),
        ("dataset", s["dataset"], cfg.data.dataset),
        ("split", split.split("[", 1)[0] if "[" not in split or cfg.max_eval_examples
         else split, cfg.data.eval_split),
        ("kind", s.get("kind"), cfg.kind),
        ("init", s.get("init") or "", cfg.init or ""),
        ("img_size", s["img_size"], cfg.model.img_size or s["img_size"]),
    )
    return next((f"{k} {a!r} there, {b!r} in config.json" for k, a, b in checks if a != b), "")


# ------------------------------------------------------------------------ building the run


@dataclass
class Run:
    """Everything the loop needs, built and checked by `prepare` before anything is written."""

    cfg: RunConfig
    root: Path
    run_dir: Path
    rank: int
    world: int
    device: str
    dtype: str
    compiled: bool
    model: Any
    rec: dict
    train_batches: Any
    eval_batches: Any
    train_size: int
    eval_size: int
    steps_per_epoch: int
    total: int
    warmup: int
    eval_every: int
    ckpt_every: int
    macs_per_img: int

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")


@dataclass
class TrainState:
    """What a checkpoint restores besides weights, optimizer and RNG."""

    step: int = 0
    train_seconds: float = 0.0
    loss_sum: float = 0.0
    loss_count: int = 0
    pending: list = field(default_factory=list)  # per-step loss tensors not yet checked


def build_model(cfg: RunConfig, num_classes: int):
    """(model, model description): from scratch, or from `--init` with the run's own
    regularisers, the new resolution and a fresh zero head (paper section 3)."""
    from mixerbench.models import create_model, get_spec
    from mixerbench.models.weights import load_for_finetuning, model_description

    m = cfg.model
    if cfg.init:
        # the model section names the architecture of an init file that does not (`--arch`)
        return load_for_finetuning(cfg.init, num_classes=num_classes, img_size=m.img_size,
                                   regularisers=dict(drop_path=m.drop_path, dropout=m.dropout),
                                   model_name=m.name)
    overrides = model_overrides(cfg)
    check_model(cfg, num_classes)
    spec = get_spec(m.name)
    model = create_model(m.name, num_classes=num_classes, img_size=m.img_size,
                         patch_size=m.patch_size, **overrides)
    return model, model_description(m.name, num_classes, m.img_size or spec.img_size,
                                    m.patch_size or spec.patch_size, overrides)


def model_overrides(cfg: RunConfig) -> dict:
    """The zoo constructor's arguments for `cfg.model` (width, depth, regularisers, options)."""
    from mixerbench.models import get_spec

    m = cfg.model
    overrides = dict(m.options)
    for key in ("width", "depth", "drop_path", "dropout"):
        if getattr(m, key):
            overrides[key] = getattr(m, key)
    if get_spec(m.name).family == "mixer" and not m.name.startswith("timm:"):
        overrides["gelu"] = m.gelu
    return overrides


def check_model(cfg: RunConfig, num_classes: int = 10) -> None:
    """Build `cfg`'s model on the meta device (no memory, no weights) and trace one image
    through it: an option the architecture does not take is a UserError before any work (a
    sweep checks every cell this way before training the first), and so is a model whose
    weights, gradients and Adam moments (4 x 4 bytes per parameter) plus the activations of a
    single image (`models.memory`) exceed this machine's memory: a 4096 px input is refused
    here, not by the allocator."""
    from mixerbench.models import build_on_meta, count_params, get_spec
    from mixerbench.runtime import memory_bytes

    m = cfg.model
    img_size = m.img_size or get_spec(m.name).img_size
    have = memory_bytes(cfg.device)

    def refuse(params: int, activations: int) -> None:
        need = 16 * params + activations
        if have and need > have:
            per_image = f" and {activations / 2**30:,.1f} GiB of activations per image" if activations else ""
            raise UserError(f"{m.name} at {img_size} px has {params:,} parameters{per_image}: "
                            f"training needs at least {need / 2**30:,.1f} GiB, more than this "
                            f"machine's {have / 2**30:,.1f} GiB; choose a smaller model, image "
                            "size or width.")

    model, (activations, _) = build_on_meta(
        m.name, num_classes=num_classes, img_size=m.img_size, patch_size=m.patch_size,
        before_trace=lambda model: refuse(count_params(model)[0], 0),
        element_size=4 if cfg.dtype == "fp32" else 2, **model_overrides(cfg))
    refuse(count_params(model)[0], activations)


def prepare(cfg: RunConfig, root: Path, run_dir: Path, log: Log) -> Run:
    """Check and build everything before the run directory is touched: devices, data, model,
    loaders and schedule. Every problem found here is a `UserError` and nothing is written."""
    import torch

    from mixerbench.data import get_dataset, make_loader, stratified_subset
    from mixerbench.models import get_spec
    from mixerbench.models.weights import unwrap
    from mixerbench.runtime import choose, setup_distributed, use_device

    rank, world, local_rank = setup_distributed()
    device, dtype = choose(cfg.device, cfg.dtype, local_rank, training=True)
    use_device(device)
    compiled = cfg.compile if cfg.compile is not None else device.startswith("cuda")
    dcfg = cfg.data
    if dcfg.batch_size % world:
        raise UserError(f"The batch size {dcfg.batch_size} does not split over {world} processes.")
    rank_batch = dcfg.batch_size // world
    if rank_batch % cfg.accum_steps:
        raise UserError(f"The per-process batch {rank_batch} is not divisible by --accum-steps "
                        f"{cfg.accum_steps}.")
    log(Event.STAGE, dict(what=f"loading {dcfg.dataset} ({dcfg.train_split} and {dcfg.eval_split}; "
                           "decoded once into the tensor cache)"))
    where = dcfg.path or dcfg.dataset  # the folder the run's identity names, when it has one
    train_ds = get_dataset(where, dcfg.train_split, data_dir=dcfg.data_dir,
                           fraction=dcfg.fraction, seed=cfg.seed)
    eval_ds = get_dataset(where, dcfg.eval_split, data_dir=dcfg.data_dir, seed=cfg.seed)
    if eval_ds.num_classes != train_ds.num_classes:
        raise UserError(f"The {dcfg.eval_split} split of {train_ds.name} has {eval_ds.num_classes} "
                        f"classes but {dcfg.train_split} has {train_ds.num_classes}; check the data.")
    eval_size = len(eval_ds)
    if cfg.max_eval_examples and cfg.max_eval_examples < eval_size:
        # a seeded class-stratified subset (the same for every run), not the first N images:
        # those are one class on a class-sorted split
        eval_ds = eval_ds.subset(stratified_subset(eval_ds.labels, cfg.max_eval_examples))

    torch.manual_seed(cfg.seed)  # the model's initialisation
    model, rec = build_model(cfg, train_ds.num_classes)
    img_size = rec["img_size"]
    model.to(device)
    if device.startswith("cuda") and get_spec(rec["name"]).family == "resnet":
        model.to(memory_format=torch.channels_last)
    from mixerbench.models.flops import count_macs

    macs = count_macs(unwrap(model), img_size, device=device)
    patch = dcfg.shuffle_patch or rec["patch_size"]
    common = dict(img_size=img_size, device=device, seed=cfg.seed, shuffle=dcfg.shuffle,
                  shuffle_patch=patch)
    train_batches = make_loader(
        train_ds, batch_size=rank_batch, train=True, pipeline=dcfg.pipeline,
        randaug_m=dcfg.randaug_m, mixup_p=dcfg.mixup_p, label_smoothing=dcfg.label_smoothing,
        num_classes=train_ds.num_classes, rank=rank, world_size=world, **common)
    eval_batches = make_loader(eval_ds, batch_size=dcfg.eval_batch_size, train=False,
                               pipeline=dcfg.eval_pipeline, **common)
    steps_per_epoch = train_batches.steps_per_epoch
    if steps_per_epoch < 1:
        raise UserError(f"The batch size {dcfg.batch_size} is larger than the training set "
                        f"({len(train_ds)} images); choose a smaller --batch-size.")
    total = cfg.steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    o = cfg.optim
    warmup = round(o.warmup_frac * total) if o.warmup_frac is not None else o.warmup_steps
    check_warmup(cfg, warmup, total)
    eval_every = cfg.eval_every or steps_per_epoch
    return Run(cfg=cfg, root=root, run_dir=run_dir, rank=rank, world=world, device=device,
               dtype=dtype, compiled=compiled, model=model, rec=rec, train_batches=train_batches,
               eval_batches=eval_batches, train_size=len(train_ds), eval_size=eval_size,
               steps_per_epoch=steps_per_epoch, total=total, warmup=warmup,
               eval_every=eval_every, ckpt_every=cfg.ckpt_every or eval_every, macs_per_img=macs)


# ------------------------------------------------------------------ owning the run directory


def _comparable(d: dict, unfinished: bool) -> dict:
    """A config dict without the settings a resume may change."""
    d = json.loads(json.dumps(d, default=str))
    d.pop("config_hash", None)
    for key in RESUMABLE_CHANGES + (LENGTH if unfinished else ()):
        section, _, name = key.rpartition(".")
        (d.get(section, {}) if section else d).pop(name, None)
    return d


def check_owner(run_dir: Path, cfg: RunConfig) -> None:
    """A run directory belongs to the one config stored in its config.json: refuse any other
    (a reused --run-name, a planted or damaged config.json, a foreign folder)."""
    path = run_dir / CONFIG
    if not run_dir.exists():
        return
    if not run_dir.is_dir() or run_dir.is_symlink():
        raise UserError(f"{run_dir} is not a run directory; choose another --run-name.")
    if not path.exists():
        if any(p.name != f"{RUN_LOCK}.lock" and not p.name.endswith(".tmp")
               for p in run_dir.iterdir()):
            raise UserError(f"{run_dir} exists but was not made by mixerbench (no {CONFIG}); "
                            "choose another --run-name or move that folder away.")
        return  # an empty directory left by a run killed before its first write
    try:
        # settings added since the file was written read back at their defaults (from_dict)
        stored_cfg = read_run_config(run_dir)
    except UserError:
        raise UserError(f"{path} is not a config this version wrote; move the run directory "
                        f"{run_dir.name} away (or delete it) to start it again.") from None
    stored, stored_hash = to_dict(stored_cfg), config_hash(stored_cfg)
    unfinished = not (run_dir / SUMMARY).exists()
    mine = to_dict(cfg)
    if _comparable(stored, unfinished) != _comparable(mine, unfinished):
        if stored_cfg.init and stored_cfg.init_sha256 is None and cfg.init_sha256 and \
                _comparable(dict(stored, init_sha256=None), unfinished) == _comparable(
                    dict(mine, init_sha256=None), unfinished):
            raise UserError(f"Run {run_dir.name} was fine-tuned before runs recorded their "
                            "source weights, so whether --init still holds them cannot be "
                            "told; choose another --run-name (or move that run away) to "
                            "fine-tune again.")
        diff = _first_difference(_comparable(stored, unfinished), _comparable(mine, unfinished))
        raise UserError(f"Run {run_dir.name} was made with another configuration ({diff}, hash "
                        f"{stored_hash} vs {config_hash(cfg)}); choose another --run-name, or "
                        "repeat the original settings to resume it.")


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')} {a!r} there, {b!r} now"


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    files.atomic_write_json(run_dir / CONFIG, dict(to_dict(cfg), config_hash=config_hash(cfg)))


# ------------------------------------------------------------------- checkpoints and restore


def restore(run: Run, optimizer, scheduler, log: Log) -> TrainState:
    """The state of the last checkpoint (or a fresh start); a file we did not write is
    refused. Loaded with `weights_only=True`: only tensors and plain data, never code."""
    import torch

    from mixerbench.models.weights import unwrap

    path = run.run_dir / STATE
    if not path.is_file():
        if run.world > 1:
            torch.manual_seed(run.cfg.seed + run.rank)  # per-rank stochastic depth draws
        if run.rank == 0:
            _start_clean(run, log)
        return TrainState()
    files.check_file(path)  # a regular file inside the run directory, not a FIFO or a link
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        mine = _binding(run)
        if any(k in state for k in mine) and {k: state.get(k) for k in mine} != mine:
            raise UserError(f"{path} was not written by run {run.run_dir.name} (it belongs to "
                            f"{state.get('run_id')}); move it away to start the run again.")
        unwrap(run.model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = TrainState(step=int(state["step"]), train_seconds=float(state["train_seconds"]),
                              loss_sum=float(state["loss_sum"]), loss_count=int(state["loss_count"]))
        rngs = state["rng"]
        rng = rngs[run.rank] if run.rank < len(rngs) else rngs[0]
        torch.set_rng_state(rng["cpu"])
        if run.on_cuda and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], run.device)
    except UserError:
        raise
    except Exception as exc:  # truncated, foreign or hostile files all fail here, before use
        raise UserError(f"{path} is not a training state this version wrote ({type(exc).__name__}); "
                        f"move the run directory {run.run_dir.name} away (or delete it) to start "
                        "again.") from None
    if not (math.isfinite(progress.train_seconds) and progress.train_seconds >= 0
            and math.isfinite(progress.loss_sum) and progress.loss_count >= 0):
        # a planted train_seconds=inf would become a row with an infinite cost
        raise UserError(f"{path} is not a training state this version wrote (train_seconds "
                        f"{progress.train_seconds}, loss sum {progress.loss_sum}); move the run "
                        f"directory {run.run_dir.name} away (or delete it) to start again.")
    if not 0 <= progress.step <= run.total:
        raise UserError(f"{path} is at step {progress.step}, outside this run's {run.total} "
                        "steps; repeat the original --steps to resume it.")
    if run.rank == 0:
        _truncate_metrics(run.run_dir / "metrics.csv", progress.step)
    log(Event.RESUMED, dict(step=progress.step, run_dir=str(run.run_dir)))
    return progress


def _binding(run: Run) -> dict:
    return run_binding(run.run_dir.name, run.cfg)


def _start_clean(run: Run, log: Log) -> None:
    """A run with no training state (killed before its first checkpoint, or its state file
    lost) starts again from step 0: the metric rows of the earlier attempt are dropped, so
    none is written twice, and the user is told."""
    path = run.run_dir / "metrics.csv"
    rows = results.read_metrics(path) if path.is_file() else []
    if rows:
        results.rewrite_metrics(path, [])
        log(Event.RESTARTED, dict(run_dir=str(run.run_dir), dropped=len(rows)))


def save_state(run: Run, optimizer, scheduler, p: TrainState) -> None:
    """Everything needed to resume (written first), then the weights-only export."""
    import io

    import torch
    import torch.distributed as dist

    from mixerbench.models.weights import CHECKPOINT, save_checkpoint, unwrap

    rngs = [dict(cpu=torch.get_rng_state(),
                 cuda=torch.cuda.get_rng_state(run.device) if run.on_cuda else None)]
    if run.world > 1:
        gathered = [None] * run.world
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if run.rank != 0:
        return
    buf = io.BytesIO()
    bound = _binding(run)  # both files say which run wrote them (weights.check_credited)
    torch.save(dict(model=unwrap(run.model).state_dict(), optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), step=p.step,
                    train_seconds=p.train_seconds, loss_sum=p.loss_sum,
                    loss_count=p.loss_count, rng=rngs, **bound), buf)
    try:
        files.atomic_write_bytes(run.run_dir / STATE, buf.getvalue())
        save_checkpoint(run.run_dir / CHECKPOINT, run.model, dict(run.rec, step=p.step, **bound))
    except OSError as exc:
        raise TrainingStopped(
            f"Could not write the checkpoint to {run.run_dir} ({exc.strerror or exc}); the "
            "previous checkpoint is intact: free space and run the same command to resume."
        ) from None


# ------------------------------------------------------------------------- one step, checks


def train_step(run: Run, train_model, x, y):
    """Forward and backward over `accum_steps` micro-batches (gradients synchronised across
    processes on the last one) and the global-norm clip; returns the step's loss on device."""
    import torch

    from mixerbench.loss import cross_entropy
    from mixerbench.runtime import autocast

    cfg = run.cfg
    loss_sum = torch.zeros((), device=run.device)
    try:
        for i, (mx, my) in enumerate(zip(x.chunk(cfg.accum_steps), y.chunk(cfg.accum_steps))):
            sync = i == cfg.accum_steps - 1 or run.world == 1
            with nullcontext() if sync else train_model.no_sync():
                with autocast(run.device, run.dtype):
                    logits = train_model(mx)
                loss = cross_entropy(logits, my) / cfg.accum_steps
                loss.backward()
            loss_sum += loss.detach()
    except torch.cuda.OutOfMemoryError:
        raise UserError(
            f"Out of GPU memory at {len(x) // cfg.accum_steps} images per device; try "
            f"--accum-steps {cfg.accum_steps * 2} or a smaller --batch-size.") from None
    if cfg.optim.clip_norm:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.optim.clip_norm)
    return loss_sum


def check_losses(run: Run, p: TrainState, at_step: int) -> list[float]:
    """Fold the pending per-step losses (averaged over processes) into the running mean; a
    non-finite one stops the run before anything is saved."""
    import torch
    import torch.distributed as dist

    values = torch.stack(p.pending)
    if run.world > 1:
        dist.all_reduce(values, op=dist.ReduceOp.AVG)
    values = values.tolist()
    p.pending.clear()
    if not all(math.isfinite(v) for v in values):
        raise TrainingStopped(
            f"The loss became {values[-1]} near step {at_step}; the run stopped and its last "
            f"good checkpoint in {run.run_dir} is intact. Lower --lr or raise warm-up, then run "
            "the same command to resume.")
    p.loss_sum += sum(values)
    p.loss_count += len(values)
    return values


def evaluate_now(run: Run) -> dict:
    """Top-1/top-5/loss on the eval split: all of it, or its stratified `max_eval_examples`."""
    from mixerbench.evaluate import accuracy
    from mixerbench.models.weights import unwrap

    return accuracy(unwrap(run.model), run.eval_batches.epoch(0), device=run.device, dtype=run.dtype)


def eval_split(run: Run) -> str:
    """The split the accuracy row names: `test`, or `test[stratified:N]` when only a stratified
    N of its images were used (`data.stratified_subset`)."""
    from mixerbench.data import capped_split

    n = run.cfg.max_eval_examples
    return capped_split(run.cfg.data.eval_split, n) if n and n < run.eval_size else run.cfg.data.eval_split


def metrics_row(run: Run, p: TrainState, ev: dict, lr: float) -> dict:
    return dict(step=p.step, epoch=round(p.step / run.steps_per_epoch, 4),
                train_loss=p.loss_sum / max(p.loss_count, 1), eval_loss=ev.get("loss"),
                top1=ev.get("top1"), top5=ev.get("top5"), lr=lr,
                img_per_sec=p.step * run.cfg.data.batch_size / max(p.train_seconds, 1e-9),
                elapsed_s=round(p.train_seconds, 3))


def write_results(run: Run, p: TrainState, experiment: str) -> dict:
    """The summary (summary.json) and its accuracy row, from the final evaluation; nothing is
    written from non-finite weights or metrics."""
    import torch

    from mixerbench.models import get_spec, model_label
    from mixerbench.models.weights import unwrap

    last = _last_metrics(run.run_dir / "metrics.csv")
    weights_ok = all(torch.isfinite(t).all() for t in unwrap(run.model).state_dict().values()
                     if t.is_floating_point())
    if not weights_ok or not all(_finite(last.get(k)) for k in ("top1", "top5", "eval_loss")):
        raise TrainingStopped(f"The run in {run.run_dir} ended with non-finite weights or "
                              "metrics; no result was recorded. Lower --lr, then start it again.")
    cfg = run.cfg
    prov = results.provenance(device=run.device, num_devices=run.world, dtype=run.dtype,
                              compiled=run.compiled, seed=cfg.seed)
    images = run.total * cfg.data.batch_size
    summary = dict(
        run_id=run.run_dir.name, recipe_id=recipe_id(cfg, run.dtype),
        model=model_label(run.rec["name"], run.rec.get("overrides")),
        family=get_spec(run.rec["name"]).family,
        dataset=cfg.data.dataset, split=eval_split(run), img_size=run.rec["img_size"],
        epochs=round(images / run.train_size, 4), steps=run.total,
        top1=last["top1"], top5=last["top5"], loss=last["eval_loss"],
        train_seconds=round(p.train_seconds, 3),
        device_hours=round(p.train_seconds * run.world / 3600, 6),
        # forward + backward = 3 forward passes' FLOPs (2 FLOPs per MAC) per image seen
        train_flops=float(6 * run.macs_per_img * images),
        init=cfg.init or "", kind=cfg.kind, experiment=experiment, **prov)
    files.atomic_write_json(run.run_dir / SUMMARY, summary)
    _ensure_row(summary, run.root)
    return summary


# -------------------------------------------------------------------------------------- train


def train(cfg: RunConfig, root: str | os.PathLike | None = None, *, resume: bool = False,
          log: Log | None = None, experiment: str = "") -> dict[str, Any]:
    """Train (or fine-tune) per `cfg`; return the summary (the accuracy row plus `run_dir`).

    A finished run is read back, not retrained (unless `resume`, which is then an error); an
    unfinished one continues from its last checkpoint. `experiment` tags the accuracy row
    (`compare:<preset>`, `shuffle`, ...) so tables and figures can tell experiments apart; it is
    not part of the configuration, so the same run serves any experiment that asks for it.
    Under torchrun every rank returns the same summary.
    """
    import torch

    from mixerbench.presets import resolve_inputs

    log = log or (lambda event, info: None)
    if cfg.device:  # a mistyped device is refused before a finished run is read back
        from mixerbench.runtime import resolve_device

        resolve_device(cfg.device)
    if not cfg.init:  # options and memory checked before any data is read (meta device)
        check_model(cfg)
    cfg = resolve_inputs(cfg)  # a config not made by presets.resolve gets its inputs' identity
    root = results.writable_results_dir(root)
    run_dir = results.run_path(root, run_id(cfg))
    check_owner(run_dir, cfg)
    if read_summary(run_dir) is not None:  # finished: read back, never retrained
        return _read_back(run_dir, root, resume, log, experiment)
    if resume and not (run_dir / STATE).is_file():
        raise UserError(f"Nothing to resume in {run_dir}: it has no checkpoint yet; run the "
                        "command without --resume.")
    results.ensure_appendable("accuracy", root)  # a damaged accuracy.csv is found before hours of work
    run = prepare(cfg, root, run_dir, log)
    created = not run_dir.exists()
    try:
        # one process trains a run at a time; a second waits, then finds it finished
        with files.locked(run_dir / RUN_LOCK) if run.rank == 0 else nullcontext():
            check_owner(run_dir, cfg)  # another process may have claimed it while we waited
            # rank 0 alone holds the lock, so its finding decides for every rank: a rank that
            # trained while rank 0 read back would wait in a collective forever
            if _from_rank0(run, read_summary(run_dir) is not None):
                return _read_back(run_dir, root, resume, log, experiment)
            if run.rank == 0:
                for tmp in run_dir.glob(".*.tmp"):  # writes cut short by a kill
                    tmp.unlink(missing_ok=True)
                write_config(run_dir, cfg)
            optimizer = make_optimizer(run.model, cfg, fused=run.on_cuda)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
                s, run.total, run.warmup, cfg.optim.schedule, cfg.optim.end_factor))
            p = restore(run, optimizer, scheduler, log)
            _loop(run, optimizer, scheduler, p, log)
            # every rank returns rank 0's summary (callers such as the lr grid read its top-1)
            summary = _from_rank0(run, write_results(run, p, experiment) if run.rank == 0 else None)
            log(Event.END, dict(summary, run_dir=str(run_dir)))
            return dict(summary, run_dir=str(run_dir), reused=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # disk full outside a checkpoint (metrics, summary, accuracy row): every write is atomic
        raise TrainingStopped(
            f"Could not write to {run_dir} ({exc.strerror or exc}); its files and the last "
            "checkpoint are intact: free space and run the same command to resume.") from None
    except (UserError, TrainingStopped):
        # found before the first checkpoint: leave no half-made run directory behind
        if created and run.rank == 0 and not (run_dir / STATE).exists():
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _from_rank0(run: Run, value):
    """`value` as rank 0 has it, on every rank (a collective: every rank must call it)."""
    if run.world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _loop(run: Run, optimizer, scheduler, p: TrainState, log: Log) -> None:
    """Steps until the run's length: train, then evaluate / checkpoint / stop on schedule."""
    import torch
    import torch.distributed as dist

    cfg = run.cfg
    train_model = run.model
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(run.model, device_ids=[run.device] if run.on_cuda else None)
    if run.compiled:
        train_model = torch.compile(train_model)
    log(Event.START, dict(run_dir=str(run.run_dir), total_steps=run.total, step=p.step,
                      steps_per_epoch=run.steps_per_epoch, device=run.device, dtype=run.dtype,
                      model=run.rec["name"], dataset=cfg.data.dataset, world_size=run.world,
                      batch_size=cfg.data.batch_size, accum_steps=cfg.accum_steps,
                      config=to_dict(cfg)))
    run.model.train()
    window = [time.perf_counter(), 0]  # start of the throughput window, images in it
    with stop_signals() as stop:
        while p.step < run.total:
            epoch, index = divmod(p.step, run.steps_per_epoch)
            for x, y in run.train_batches.epoch(epoch, start=index):
                t0 = time.perf_counter()
                p.pending.append(train_step(run, train_model, x, y))
                n = p.step + 1
                check = (n % 10 == 0 or n % run.eval_every == 0 or n % run.ckpt_every == 0
                         or n == run.total or stop["stop"])
                values = check_losses(run, p, n) if check else None  # device sync only here
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                p.step = n
                if run.on_cuda and check:
                    torch.cuda.synchronize(run.device)
                p.train_seconds += time.perf_counter() - t0
                window[1] += cfg.data.batch_size
                if check:
                    _log_step(run, p, values[-1], optimizer, window, log)
                _after_step(run, optimizer, scheduler, p, stop["stop"], log, window)
                if p.step >= run.total:
                    break
                if run.world > 1 and p.step % run.eval_every == 0:
                    dist.barrier()


def _log_step(run: Run, p: TrainState, loss: float, optimizer, window: list, log: Log) -> None:
    now = time.perf_counter()
    ips = window[1] / max(now - window[0], 1e-9)
    window[:] = [now, 0]
    log(Event.STEP, dict(step=p.step, total_steps=run.total, epoch=p.step / run.steps_per_epoch,
                     loss=loss, lr=optimizer.param_groups[0]["lr"], img_per_sec=ips))


def _after_step(run: Run, optimizer, scheduler, p: TrainState, stopping: bool, log: Log,
                window: list) -> None:
    """Evaluate, checkpoint or stop when the schedule (or a signal) says so."""
    if p.step % run.eval_every == 0 or p.step == run.total:
        if p.step == run.total:
            n = min(run.eval_size, run.cfg.max_eval_examples or run.eval_size)
            log(Event.STAGE, dict(what=f"final evaluation on {n:,} images of {eval_split(run)}"
                              + ("" if n < run.eval_size else
                                 " (all of it; --set max_eval_examples=N bounds it)")))
        ev = evaluate_now(run) if run.rank == 0 else {}
        row = metrics_row(run, p, ev, optimizer.param_groups[0]["lr"])
        p.loss_sum, p.loss_count = 0.0, 0
        if run.rank == 0:
            results.append_to(run.run_dir / "metrics.csv", results.METRICS, row)
        log(Event.EVAL, row)
        window[0] = time.perf_counter()
    if stopping:  # one save, whether or not this is a checkpoint step
        if p.pending:  # the signal came after this step's loss check
            check_losses(run, p, p.step)
        save_state(run, optimizer, scheduler, p)
        raise Interrupted(run.run_dir, p.step)
    if p.step % run.ckpt_every == 0 or p.step == run.total:
        save_state(run, optimizer, scheduler, p)


def _read_back(run_dir: Path, root: Path, resume: bool, log: Log, experiment: str = "") -> dict:
    """A finished run's summary, read back instead of retraining (its accuracy row restored if
    a crash lost it); `--resume` of a finished run is an error."""
    if resume:
        raise UserError(f"Run {run_dir.name} already finished; start a new run with another "
                        "--seed or --run-name instead of --resume.")
    done = read_summary(run_dir)
    # a run whose summary predates the experiment tag takes the tag of the one reading it back
    done = dict(done, experiment=done.get("experiment") or experiment)
    _ensure_row(done, root)
    log(Event.FINISHED, dict(done, run_dir=str(run_dir)))
    return dict(done, run_dir=str(run_dir), reused=True)


# ----------------------------------------------------------------------------------- internals


def _last_metrics(path: Path) -> dict:
    return results.read_metrics(path)[-1]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows written after the checkpoint we resume from (they will be redone)."""
    if not path.is_file():
        return
    rows = results.read_metrics(path)
    keep = [r for r in rows if r["step"] is not None and r["step"] <= step]
    if len(keep) != len(rows):
        results.rewrite_metrics(path, keep)


def _ensure_row(summary: dict, root: Path) -> None:
    """Append the run's accuracy row unless it is already there (a kill between summary.json
    and the append must neither lose the row nor, on a rerun, write it twice)."""
    path = results.csv_path("accuracy", root)
    with files.locked(path.with_suffix(".ensure")):
        acc = results.load("accuracy", root, required=False)
        mine = acc[(acc["run_id"] == summary["run_id"]) & (acc["kind"] != "evaluate")]
        if len(mine):
            return
        row = {k: summary.get(k) for k in results.SCHEMAS["accuracy"]}
        results.append_row("accuracy", row, root)
