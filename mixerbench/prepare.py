"""Everything a run needs, checked and built from its config before its folder is touched.

`prepare` chooses the device, reads the data, builds the model and loaders and sizes the
schedule into a `Run`, the one object the training loop reads; every problem it finds is a
`UserError` and nothing is written. `check_model` refuses an option the architecture does not
take, or a model this machine cannot hold, on the meta device, before any data is read or
memory allocated (a sweep checks every cell with it before training the first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mixerbench.config import RunConfig, check_warmup
from mixerbench.errors import UserError


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



def prepare(cfg: RunConfig, root: Path, run_dir: Path, stage: Callable[[str], None],
            check: ModelCheck | None = None) -> Run:
    """Check and build everything before the run directory is touched: devices, data, model,
    loaders and schedule. Every problem found here is a `UserError` and nothing is written.
    `check` is the run's model as `check_model` built it on the meta device (built here when
    not given; a fine-tuning run's model comes from its `--init` weights instead)."""
    import torch

    from mixerbench.data import get_dataset, make_loader, stratified_subset
    from mixerbench.models import channels_last
    from mixerbench.models.weights import unwrap
    from mixerbench.runtime import choose, setup_distributed, use_device

    rank, world, local_rank = setup_distributed()
    device, dtype = choose(cfg.device, cfg.dtype, local_rank, training=True)
    use_device(device)
    # None: on CUDA, compiled from the start; on a CPU, decided after a few eager steps by
    # whether compiling pays back within the run (`runtime.compile_pays`)
    compiled = cfg.compile if cfg.compile is not None else device.startswith("cuda")
    dcfg = cfg.data
    if dcfg.batch_size % world:
        raise UserError(f"The batch size {dcfg.batch_size} does not split over {world} processes.")
    rank_batch = dcfg.batch_size // world
    if rank_batch % cfg.accum_steps:
        raise UserError(f"The per-process batch {rank_batch} is not divisible by --accum-steps "
                        f"{cfg.accum_steps}.")
    stage(f"loading {dcfg.dataset} ({dcfg.train_split} and {dcfg.eval_split}; decoded once "
          "into the tensor cache)")
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

    if not cfg.init:  # the meta model of `check_model`, with the data's number of classes
        check = (check or check_model(cfg)).with_classes(train_ds.num_classes)
    torch.manual_seed(cfg.seed)  # the model's initialisation
    model, rec = build_model(cfg, train_ds.num_classes)  # the one real build
    img_size = rec["img_size"]
    model.to(device)
    if device.startswith("cuda") and channels_last(rec["name"]):  # the family's layout
        model.to(memory_format=torch.channels_last)
    if cfg.init:  # weights loaded from a file: their MACs counted on them (nothing rebuilt)
        from mixerbench.models.flops import count_macs

        macs = count_macs(unwrap(model), img_size, device=device)
    else:
        macs = check.macs
    patch = dcfg.shuffle_patch or rec["patch_size"]
    # fine-tuning released weights: the values they were trained on (`models.preprocess`)
    from mixerbench.models.preprocess import of_weights

    common = dict(img_size=img_size, device=device, seed=cfg.seed, shuffle=dcfg.shuffle,
                  shuffle_patch=patch, preprocess=of_weights(cfg.init))
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


def build_model(cfg: RunConfig, num_classes: int):
    """(model, model description): from scratch, or from `--init` with the run's own
    regularisers, the new resolution and a fresh zero head (paper section 3)."""
    from mixerbench.models import create_model, get_spec
    from mixerbench.models.weights import load_for_finetuning, model_description

    m = cfg.model
    if cfg.init:
        # the model section names the architecture of an init file that does not (`--arch`)
        # the bytes loaded must hash to the init_sha256 the run id was made from (read once:
        # the file hashed is the file loaded, not one swapped in since presets.read_inputs)
        return load_for_finetuning(cfg.init, num_classes=num_classes, img_size=m.img_size,
                                   regularisers=dict(drop_path=m.drop_path, dropout=m.dropout),
                                   model_name=m.name, sha256=cfg.init_sha256)
    overrides = model_overrides(cfg)  # checked on the meta device before (`check_model`)
    spec = get_spec(m.name)
    model = create_model(m.name, num_classes=num_classes, img_size=m.img_size,
                         patch_size=m.patch_size, **overrides)
    return model, model_description(m.name, num_classes, m.img_size or spec.img_size,
                                    m.patch_size or spec.patch_size, overrides)


def model_overrides(cfg: RunConfig) -> dict:
    """The zoo constructor's arguments for `cfg.model` (width, depth, regularisers, options,
    and `model.gelu` where the model's family takes it)."""
    from mixerbench.models import takes_gelu

    m = cfg.model
    overrides = dict(m.options)
    for key in ("width", "depth", "drop_path", "dropout"):
        if getattr(m, key):
            overrides[key] = getattr(m, key)
    if takes_gelu(m.name):
        overrides["gelu"] = m.gelu
    return overrides


@dataclass
class ModelCheck:
    """What building a run's model on the meta device found (no memory, no weights): the
    model itself, which the run's MAC count reuses, its parameters and one image's activations
    in bytes (their sum and the largest one), and its multiply-accumulates per image
    (`models.flops`: the meta device counts them exactly as the real model's forward pass
    would)."""

    cfg: RunConfig
    model: Any
    num_classes: int
    params: int
    activations: tuple[int, int]
    macs: int

    def with_classes(self, num_classes: int) -> "ModelCheck":
        """The same check for a head of `num_classes` (the data's, known once it is read): the
        meta model's head is replaced (timm's `reset_classifier`, which every family's models
        have; a model without one is built on the meta device again) and its parameters,
        memory and MACs counted again. The activations of one image stay those traced with
        the first head: its logits are a few bytes per class."""
        if num_classes == self.num_classes:
            return self
        if not hasattr(self.model, "reset_classifier"):
            return check_model(self.cfg, num_classes)
        import torch

        from mixerbench.models import count_params

        with torch.device("meta"):
            self.model.reset_classifier(num_classes)
        params = count_params(self.model)[0]
        _refuse_memory(self.cfg, params, self.activations)
        return ModelCheck(self.cfg, self.model, num_classes, params, self.activations,
                          _macs(self.cfg, self.model))


def check_model(cfg: RunConfig, num_classes: int = 10) -> ModelCheck:
    """Build `cfg`'s model on the meta device (no memory, no weights) and trace one image
    through it: an option the architecture does not take is a UserError before any work (a
    sweep checks every cell this way before training the first), and so is a model that cannot
    fit this machine's memory (`_refuse_memory`): a 4096 px input is refused here, in seconds,
    not by the allocator. A run builds its model on the meta device once: here, before its data
    is read (with 10 classes until the data says how many: `ModelCheck.with_classes`).

    A fine-tuning run (`cfg.init`) is checked as the model it will train: the source's
    architecture at the run's resolution, a Mixer's token-mixing MLPs K^2 times wider at K
    times the trained side (paper section 3; `models.resize`), from the source's description
    alone (no weights read), its source's weights counted besides."""
    from mixerbench.models import build_on_meta, count_params

    m = cfg.model
    overrides = model_overrides(cfg)
    source = 0
    if cfg.init:
        overrides, source = _finetuned_shape(cfg, num_classes, overrides)
    model, activations = build_on_meta(
        m.name, num_classes=num_classes, img_size=m.img_size, patch_size=m.patch_size,
        before_trace=lambda model: _refuse_memory(cfg, count_params(model)[0], (0, 0), source),
        element_size=4 if cfg.dtype == "fp32" else 2, **overrides)
    params = count_params(model)[0]
    _refuse_memory(cfg, params, activations, source)
    return ModelCheck(cfg, model, num_classes, params, activations, _macs(cfg, model))


def _finetuned_shape(cfg: RunConfig, num_classes: int, overrides: dict) -> tuple[dict, int]:
    """(constructor overrides of the model a fine-tuning run trains, parameters of its source):
    a Mixer fine-tuned at K times its trained side has token-mixing MLPs of K^2 times the
    hidden width, and K must be a whole number (`models.resize.resize_mixer`)."""
    import torch

    from mixerbench.models import count_params, create_model
    from mixerbench.models.weights import source_description

    m = cfg.model
    src = source_description(cfg.init, m.name, finetuning=True)
    src_size = int(src["img_size"])
    target = m.img_size or src_size
    try:
        with torch.device("meta"):  # the source as saved: its shapes, no memory
            source = create_model(m.name, num_classes=int(src.get("num_classes") or num_classes),
                                  img_size=src_size, patch_size=m.patch_size, **overrides)
    except (TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"{cfg.init} describes a model that cannot be built "
                        f"({type(exc).__name__}); pass another checkpoint.") from None
    # the native Mixer (the one model with a token-mixing width) grows its token MLPs
    if hasattr(source, "tokens_dim") and target != src_size:
        if target % src_size or target < src_size:
            raise UserError(f"Mixer fine-tuning at {target} px needs an integer multiple of the "
                            f"trained size {src_size} px (paper section 3); use {2 * src_size} or "
                            f"{3 * src_size}.")
        k = target // src_size
        overrides = dict(overrides, tokens_dim=source.tokens_dim * k * k)
    return overrides, count_params(source)[0]


def _img_size(cfg: RunConfig) -> int:
    from mixerbench.models import get_spec

    return cfg.model.img_size or get_spec(cfg.model.name).img_size


def _macs(cfg: RunConfig, meta_model) -> int:
    from mixerbench.models.flops import count_macs

    return count_macs(meta_model, _img_size(cfg), device="meta")


def _refuse_memory(cfg: RunConfig, params: int, activations: tuple[int, int],
                   source_params: int = 0) -> None:
    """A UserError when training `params` parameters needs more than this machine has
    (`runtime.memory_bytes`): weights, gradients and two Adam moments (4 x 4 bytes each), plus
    the larger of one image's activations (`activations`: their sum and the largest single
    one, `models.memory`) and the largest activation times the images of a micro-batch (both
    lower bounds of what a step holds), each with the float32 input batch and one augmented
    copy of it; a fine-tuning run's `source_params` weights (4 bytes each) besides."""
    import os

    from mixerbench.runtime import memory_bytes

    have = memory_bytes(cfg.device)
    total, largest = activations
    img = _img_size(cfg)
    world = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    micro = max(1, cfg.data.batch_size // world // max(1, cfg.accum_steps))
    batch = 2 * 3 * img * img * 4  # per image: the float32 input and one augmented copy
    act = max(total + batch, (largest + batch) * micro,
              (largest + batch) * cfg.data.eval_batch_size)
    need = 16 * params + 4 * source_params + act
    if have and need > have:
        shown = f" and at least {act / 2**30:,.1f} GiB of activations and inputs" if total else ""
        raise UserError(f"{cfg.model.name} at {img} px has {params:,} parameters{shown}: "
                        f"training needs at least {need / 2**30:,.1f} GiB, more than this "
                        f"machine's {have / 2**30:,.1f} GiB; choose a smaller model, image size, "
                        "width or batch.")
