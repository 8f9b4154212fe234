"""Export a run (or a mixerbench checkpoint) as the folder timm and the Hugging Face hub load.

`export(src, out_dir)` writes the layout timm 1.0's `local-dir:` / `hf-hub:` model sources read
(`timm/models/_hub.py` `load_model_config_from_path`, `_builder.py` `load_pretrained`):

- `config.json`: `architecture` (a timm model name), `num_classes`, `model_args` (the constructor
  arguments that give this checkpoint's shapes), `num_features`, `global_pool`, `label_names`
  when the dataset names its classes, and `pretrained_cfg` with the preprocessing mixerbench
  evaluated the run with (input size, crop, interpolation, mean/std of the [-1, 1] value range).
  It is written by timm's own `save_for_hf`, so it is exactly what timm's loader expects.
- `model.safetensors`: the state dict under timm's parameter names.
- `README.md`: a model card: metrics, dataset, recipe, provenance, usage and the paper citation.

The folder is built beside `out_dir`, loaded back with `timm.create_model("local-dir:...",
pretrained=True)` and compared with mixerbench's own model on a batch of images, and only then
renamed into place: a failure at any point leaves nothing behind, and an existing non-empty
folder is never written into. `push(out_dir, repo_id)` uploads a finished folder to the hub.

Each model family says how timm holds its weights (`Family.to_timm`). Mixers of timm's six
entry points' shapes (S/32, S/16, B/32, B/16, L/32, L/16) are exported as those (image size and
the MLP widths D_S, D_C, as `mlp_ratio`, can be set); every other Mixer shape (Mixer-H/14,
mixer-t4, a width or depth override: each `mixer_*` function fixes patch size, depth and width
and raises on a second value) as timm's `MlpMixer` class with config.json's `model_args`, which
`local-dir:` cannot build, so the card shows that route instead. The card's routes are
`routes()`, each run by the tests in a process that imports only timm.

What timm 1.0.31 cannot express is refused rather than approximated:
- gMLP and ResMLP shapes other than timm's `gmlp_*` / `resmlp_*` entry points: timm's MlpMixer
  takes their blocks as Python classes, which config.json cannot name; a ViT with the
  representation layer of an official checkpoint, which timm's ViT no longer builds.
- `resnet18-c`: timm's ResNet stem is a stride-2 7x7 conv or a 3-conv "deep" stem whose first
  conv has stride 2, always followed by a stride-2 pool (`stem_type`, `stem_width` and
  `replace_stem_pool` change the convs, not the strides); the 32 px stem is one stride-1 3x3
  conv with no pool.
- runs trained on the fixed pixel shuffles of paper Figure 4: timm's preprocessing cannot apply
  the permutation, so the exported model would be fed images it never saw.

The native Mixer's GELU is the official code's tanh approximation (paper section 2 follows the
Flax `nn.gelu`); timm's `MlpMixer` instantiates `act_layer` as a class (`Mlp` calls
`act_layer()`) and never resolves a name, so `"act_layer": "gelu_tanh"` in config.json fails
to build. Such a Mixer is exported with timm's exact GELU, and the difference is measured on a
batch and stated in the result and the model card. `gelu="exact"` Mixers, ViTs and ResNets are
checked to agree to float precision, or the export fails.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from mixerbench.errors import UserError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
FILES = (CONFIG, WEIGHTS, CARD)
LICENSE = "apache-2.0"  # the project's licence (CITATION.cff); `--license` for anything else
# images the timm rebuild is compared on: enough for a top-1 agreement worth quoting, few
# enough that a 224 px Mixer-L/16 check stays within seconds on a CPU
CHECK_IMAGES = 64
CHECK_IMAGES_LARGE = 16
# logits of a faithful rebuild differ only by float rounding (timm's Mixer transposes for token
# mixing where ours multiplies from the left): relative to the largest logit
EXACT_TOLERANCE = 1e-4
PUSH_TIMEOUT = 60.0  # s per connect / read / write of one request (not the whole upload)

# mixerbench's eval pipelines in timm's eval-transform terms (timm/data/transforms_factory.py
# transforms_imagenet_eval): "squash" resizes both sides to floor(img / crop_pct) and crops the
# centre, "center" resizes the shorter side and crops the centre. Both resize bilinearly with
# antialiasing, as mixerbench.data.transforms.eval_geometry does.
CROP_MODES = {"eval-resize": "squash", "eval-resmall": "center", "eval-plain": "squash"}
DEFAULT_EVAL = "eval-resize"  # `mixerbench evaluate`'s crop for a checkpoint without its run

CITATION = """@inproceedings{tolstikhin2021mixer,
  title     = {{MLP}-Mixer: An all-{MLP} Architecture for Vision},
  author    = {Tolstikhin, Ilya and Houlsby, Neil and Kolesnikov, Alexander and Beyer, Lucas and
               Zhai, Xiaohua and Unterthiner, Thomas and Yung, Jessica and Steiner, Andreas and
               Keysers, Daniel and Uszkoreit, Jakob and Lucic, Mario and Dosovitskiy, Alexey},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2021},
  eprint    = {2105.01601},
  archivePrefix = {arXiv}
}"""


# ------------------------------------------------------------------------------------ sources


def _source(src: str) -> tuple[Path, Path | None]:
    """(checkpoint file, run directory or None) for `src`; anything else is refused."""
    from mixerbench.models.weights import CHECKPOINT

    text = str(src)
    if text.startswith("timm:"):
        raise UserError(f"{text} is one of timm's own models, already loadable with "
                        f"timm.create_model('{text[5:]}', pretrained=True); export a mixerbench "
                        "run directory or checkpoint instead.")
    path = Path(text)
    if not path.exists():
        raise UserError(f"No run directory or checkpoint at {text}; pass a run directory "
                        "(results/runs/<run_id>) or a mixerbench .safetensors file.")
    if path.is_dir():
        ckpt = path / CHECKPOINT
        if not ckpt.is_file():
            raise UserError(f"{path} has no {CHECKPOINT}; pass a run directory that has trained "
                            "at least to its first checkpoint.")
        return ckpt, path
    if path.suffix == ".npz":
        raise UserError(f"{path} is an official .npz checkpoint, which timm already hosts "
                        "(mixer_*.goog_*); fine-tune it with `mixerbench finetune --init` "
                        "and export that run directory.")
    if path.suffix != ".safetensors":
        raise UserError(f"{path} is neither a run directory nor a .safetensors checkpoint; "
                        "pass one of those.")
    # the run's own checkpoint file stands for its run (its config and summary fill the card)
    if path.name == CHECKPOINT and (path.parent / "config.json").is_file():
        return path, path.parent
    return path, None


def _run_config(run_dir: Path | None):
    """The RunConfig of a run directory (read strictly), or None without one."""
    from mixerbench.config import read_run_config

    return None if run_dir is None else read_run_config(run_dir)


def _check_out_dir(out: Path) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise UserError(f"{out} already exists and is not a folder; choose a new folder "
                            "to export into.")
        if any(out.iterdir()):
            raise UserError(f"{out} already exists and is not empty; choose a new folder (an "
                            "export never overwrites one).")


# ----------------------------------------------------------------------------- architecture


def _timm_model(model, rec: dict, label: str) -> dict:
    """How timm holds the checkpoint's weights: the model family's `to_timm` (the native Mixer
    as timm's MlpMixer, refusals for what timm cannot express), else the model itself (ViT,
    ResNet, BiT and `timm:` models are timm modules, built by timm's factory, which recorded the
    constructor arguments that save_for_hf writes as model_args)."""
    from mixerbench.models import family_for, get_spec

    spec = get_spec(rec["name"])
    to_timm = family_for(rec["name"]).to_timm
    if to_timm is not None:
        return to_timm(spec, model, label)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return dict(module=model, architecture=cfg.get("architecture") or spec.timm_name,
                constructor=None, model_args=None, gelu=None)


def _crop_pct(img: int, big: int) -> float:
    """crop_pct with floor(img / crop_pct) == big, timm's resize size (224 / 256 = 0.875 exactly;
    for a few sizes, e.g. 443, img / big divides back a rounding step short of big)."""
    pct = img / big
    while math.floor(img / pct) < big:
        pct = math.nextafter(pct, 0.0)
    return pct


# the pretrained_cfg fields `preprocessing` sets (timm's eval transform reads them)
PREPROCESSING = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def preprocessing(pipeline: str, img_size: int, in_chans: int = 3) -> dict[str, Any]:
    """timm pretrained_cfg entries that reproduce a mixerbench eval pipeline at img_size."""
    from mixerbench.data.transforms import eval_resize_size

    if pipeline not in CROP_MODES:
        raise UserError(f"Unknown eval pipeline '{pipeline}'; expected one of "
                        f"{', '.join(CROP_MODES)}.")
    pct = 1.0 if pipeline == "eval-plain" else _crop_pct(img_size, eval_resize_size(img_size))
    # value_range(-1, 1), i.e. (x / 255 - 0.5) / 0.5 per channel
    return dict(input_size=(in_chans, img_size, img_size), interpolation="bilinear",
                crop_pct=pct, crop_mode=CROP_MODES[pipeline], mean=(0.5,) * in_chans,
                std=(0.5,) * in_chans)


# Keys of the zoo model's pretrained_cfg that describe the architecture; the rest (url, tag,
# licence, paper, test sizes, ImageNet preprocessing) describe timm's weights, not these.
_STRUCTURAL = ("architecture", "fixed_input_size", "first_conv", "classifier")


# ------------------------------------------------------------------------------ the check


def _check_images(cfg, img_size: int, in_chans: int, n: int) -> tuple[Any, str]:
    """(batch in [-1, 1], what it is): a class-stratified n images of the run's eval split
    (`data.stratified_subset`: every class, not the first n of a class-sorted split) through its
    eval pipeline when they can be read locally, else n smooth random images (fixed seed)."""
    import torch

    if cfg is not None and in_chans == 3:
        try:
            from mixerbench.data import capped_split, get_dataset, make_loader, stratified_subset
            from mixerbench.data.sources import _hf_offline

            with _hf_offline():  # an export never downloads a dataset to check itself
                ds = get_dataset(cfg.data.dataset, cfg.data.eval_split,
                                 data_dir=cfg.data.data_dir, seed=cfg.seed)
            if ds.images is not None:  # held in memory (not streamed)
                ds = ds.subset(stratified_subset(ds.labels, n))
                batches = make_loader(ds, batch_size=len(ds), train=False,
                                      pipeline=cfg.data.eval_pipeline, img_size=img_size,
                                      device="cpu", workers=0)
                try:
                    x, _ = next(iter(batches.epoch(0)))
                finally:
                    batches.close()
                return x.float(), (f"{len(x)} class-stratified '{cfg.data.eval_split}' images of "
                                   f"{ds.name} ({capped_split(cfg.data.eval_split, len(x))})")
        except Exception:  # noqa: BLE001 - the data only makes the check realistic; any
            pass           # failure to read it falls back to random images, never fails the export
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, in_chans, 8, 8, generator=gen) * 2 - 1
    x = torch.nn.functional.interpolate(coarse, size=(img_size, img_size), mode="bilinear",
                                        align_corners=False)
    return x, f"{n} smooth random images (seed 0)"


def _compare(ours, theirs, x) -> dict[str, Any]:
    import torch

    with torch.no_grad():
        a = ours.eval()(x).float()
        b = theirs.eval()(x).float()
    out = dict(images=len(x), max_abs_diff=float((a - b).abs().max()),
               scale=float(a.abs().max()), top1_agreement=None)
    if a.ndim == 2 and a.shape[1] > 1:
        out["top1_agreement"] = float((a.argmax(1) == b.argmax(1)).float().mean() * 100)
    return out


# ------------------------------------------------------------------------------- the card


def _yaml_front(license: str, datasets: list[str]) -> str:
    # JSON strings are YAML strings: every value is quoted, so no name can break the header
    lines = ["---", "tags:", "- image-classification", "- timm", "- mixerbench",
             "library_name: timm", "pipeline_tag: image-classification",
             f"license: {json.dumps(license)}"]
    if datasets:
        lines += ["datasets:"] + [f"- {json.dumps(d)}" for d in datasets]
    return "\n".join(lines + ["---", ""])


def _hub_datasets(name: str) -> list[str]:
    """The hub id of the run's dataset, for the card's `datasets` (none for local folders and
    the embedded sets, which have no hub page)."""
    from mixerbench.data import KNOWN_DATASETS

    if name.startswith("hf:"):
        return [name[3:]]
    hub_id = KNOWN_DATASETS.get(name, {}).get("hub_id")
    return [hub_id] if hub_id else []


def _card(*, title: str, run_id: str | None, src: Path, rec: dict, label: str, family: str,
          paper_name: str | None, arch: str, config: dict, cfg, summary: dict | None, gelu: str | None,
          check: dict, pipeline: str, routes: dict[str, str], license: str, repo_id: str | None,
          out_dir: Path) -> str:
    """The model card: what was exported, its results, recipe, provenance, how timm rebuilds
    it, how to use it, and the paper's citation (one section per helper below)."""
    lines = [_yaml_front(license, _hub_datasets(cfg.data.dataset) if cfg else []), f"# {_md(title)}", ""]
    who = f"run {_code(run_id)}" if run_id else f"the checkpoint {_code(src.name)}"
    what = (f"timm's `{config['constructor']}` (no timm entry point has these shapes)"
            if config.get("constructor") else f"timm's `{arch}`")
    # the zoo entry's paper name ("Mixer-T/4 (32 px)") only for the entry itself: a model of
    # other width, depth, patch or size is named by its label and size alone
    named = (f"{paper_name} (`{label}`, {family} family)" if paper_name else
             f"`{label}` at {rec['img_size']} px ({family} family)")
    lines.append(f"{named} exported from mixerbench {who} as "
                 f"{what}. mixerbench reproduces the benchmarks of *MLP-Mixer: An all-MLP "
                 "Architecture for Vision* (Tolstikhin et al., 2021, arXiv:2105.01601).")
    lines.append("")
    lines += _card_results(run_id, src, rec, cfg, summary, pipeline)
    if cfg is not None:
        lines += _card_recipe(cfg, rec, summary, family, gelu)
    lines += _card_provenance(run_id, cfg, summary)
    lines += _card_timm(arch, config, cfg, gelu, check, pipeline)
    lines += _card_usage(config, repo_id, routes)
    lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def _card_results(run_id, src: Path, rec: dict, cfg, summary: dict | None, pipeline: str) -> list[str]:
    lines = ["## Results", ""]
    if summary:
        return lines + [
            "| dataset | split | top-1 (%) | top-5 (%) | loss | image size | eval crop |",
            "|---|---|---|---|---|---|---|",
            f"| {_md(summary['dataset'])} | {_md(summary['split'])} | {summary['top1']:.2f} | "
            f"{summary['top5']:.2f} | {summary['loss']:.4f} | {summary['img_size']} | "
            f"{pipeline} |", ""]
    if cfg is not None:
        return lines + [f"Unknown: run {_code(run_id)} has no summary.json (it had not finished), so "
                        f"there are no final metrics; the weights are its last checkpoint (step "
                        f"{rec.get('step', 'unknown')}).", ""]
    return lines + [f"Unknown: the checkpoint {_code(src.name)} records only the architecture (and "
                    f"step {rec.get('step', 'unknown')}); the training data, recipe, metrics and "
                    "provenance are not known. Export the run directory instead of the file to "
                    "include them.", ""]


def _card_recipe(cfg, rec: dict, summary: dict | None, family: str, gelu: str | None) -> list[str]:
    from mixerbench.data.transforms import PIPELINES

    d, o, m = cfg.data, cfg.optim, cfg.model
    opt = (f"{o.name}, lr {o.lr:g}, weight decay {o.weight_decay:g}, "
           + (f"betas ({o.beta1:g}, {o.beta2:g})" if o.name == "adam" else f"momentum {o.momentum:g}"))
    warm = (f"{o.warmup_frac:g} of the steps" if o.warmup_frac is not None else f"{o.warmup_steps:,} steps")
    length = (f"{summary['steps']:,} steps ({summary['epochs']:g} epochs)" if summary else
              f"{cfg.steps:,} steps" if cfg.steps else f"{cfg.epochs:g} epochs")
    rows = [("kind", cfg.kind + (f" from {_code(cfg.init)}" if cfg.init else "")),
            ("preset", _md(cfg.preset or "none")),
            ("model", f"`{m.name}`, image size {rec['img_size']}"
             + (f", patch {rec['patch_size']}" if rec.get("patch_size") else "")),
            ("dataset", f"{_md(d.dataset)} (train split {_code(d.train_split)}"
             + (f", fraction {d.fraction:g}" if d.fraction else "") + ")"),
            ("optimizer", opt),
            ("schedule", f"{o.schedule}, warm-up {warm}, gradient clipping at norm {o.clip_norm:g}"),
            ("length", length),
            ("batch", f"{d.batch_size:,}" + (f" ({cfg.accum_steps} accumulation steps)" if cfg.accum_steps > 1 else "")),
            ("augmentation", f"`{d.pipeline}`: {PIPELINES.get(d.pipeline, '')}; RandAugment m "
             f"{d.randaug_m}, mixup p {d.mixup_p:g}, label smoothing {d.label_smoothing:g}"),
            ("regularisation", f"drop_path {m.drop_path:g}, dropout {m.dropout:g}"),
            ("eval pipeline", f"`{d.eval_pipeline}`: {PIPELINES.get(d.eval_pipeline, '')}"),
            ("seed", str(cfg.seed))]
    if gelu:  # a family whose GELU is a setting (`Family.gelu`) says which it trained with
        rows.append(("GELU", "tanh approximation (the official code's)" if gelu == "tanh" else "exact"))
    return (["## Recipe", "", "| setting | value |", "|---|---|"]
            + [f"| {k} | {_cell(v)} |" for k, v in rows]
            + ["", f"The full configuration is the run's `config.json` (config hash "
               f"`{_config_hash(cfg)}`).", ""])


def _card_provenance(run_id, cfg, summary: dict | None) -> list[str]:
    if summary:
        g = {k: _md(v) for k, v in summary.items()}  # every field as literal text
        prov = [("run id", _code(summary["run_id"])), ("date", g.get("timestamp", "unknown")),
                ("git commit", _code(summary.get("git_sha", "unknown"))),
                ("versions", f"mixerbench {g.get('mixerbench_version')}, torch "
                 f"{g.get('torch_version')}, timm {g.get('timm_version')}"),
                ("device", f"{g.get('device_name')} x {g.get('num_devices')}, "
                 f"{g.get('dtype')}" + (", compiled" if summary.get("compiled") else "")),
                ("training time", f"{summary.get('train_seconds', 0):,.1f} s "
                 f"({summary.get('device_hours', 0):g} device-hours)")]
        return ["## Provenance", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in prov] + [""]
    if cfg is not None:
        return ["## Provenance", "", f"Run id `{run_id}`; no summary.json, so the commit, "
                "versions, device and date are unknown.", ""]
    return []


def _card_timm(arch: str, config: dict, cfg, gelu: str | None, check: dict,
               pipeline: str) -> list[str]:
    pc = config["pretrained_cfg"]
    crop = (f"resize to {pc['input_size'][-1]} px" if pipeline == "eval-plain" else
            f"{'resize to a square' if pc['crop_mode'] == 'squash' else 'resize the shorter side'} of "
            f"{math.floor(pc['input_size'][-1] / pc['crop_pct'])} px, centre crop {pc['input_size'][-1]} px")
    built = (f"class `{config['constructor']}`" if config.get("constructor")
             else f"architecture `{arch}`")
    lines = ["## timm", "",
             f"- {built}, model_args `{json.dumps(config.get('model_args', {}))}`",
             f"- preprocessing as mixerbench evaluated it (`{pipeline}`"
             + ("" if cfg is not None else ", mixerbench evaluate's default for a checkpoint without its run")
             + f"): {crop}, {pc['interpolation']}, values scaled to [-1, 1] (mean = std = 0.5)"]
    agree = ("" if check["top1_agreement"] is None else
             f"top-1 agreement {check['top1_agreement']:.2f} %, ")
    lines.append(f"- checked at export: timm's rebuild against mixerbench's model on {check['what']}: "
                 f"{agree}largest logit difference {check['max_abs_diff']:.2g}")
    if gelu == "tanh":
        lines.append("- GELU: this Mixer was trained with the tanh-approximate GELU of the official "
                     "code; timm's MlpMixer uses the exact GELU and cannot be configured otherwise, "
                     "so its outputs differ slightly from the trained model's (the figures above)")
    return lines + [""]


def _card_usage(config: dict, repo_id: str | None, routes: dict[str, str]) -> list[str]:
    """How to load and run the model with timm alone: the first route with preprocessing and
    the label names, then the other route (every route here is run by the tests)."""
    first, *others = routes.items()
    code = first[1]
    if repo_id and first[0] == "local-dir":
        code = code.replace(routes["local-dir"].split('"')[1], f"hf-hub:{repo_id}")
    if config.get("constructor"):
        data = ('data = timm.data.resolve_data_config(pretrained_cfg=config["pretrained_cfg"])',
                'labels = config.get("label_names")')
    else:
        data = ("data = timm.data.resolve_model_data_config(model)",
                'labels = model.pretrained_cfg.get("label_names")')
    if first[0] == "local-dir":
        intro = ("`pretrained=True` loads these weights; without it timm builds the architecture "
                 "with random weights." + ("" if repo_id else ' Once uploaded, `"hf-hub:<repo '
                                           'id>"` replaces `"local-dir:..."`.'))
    else:
        intro = ("No timm entry point builds these shapes (each `mixer_*` one fixes patch, depth "
                 "and width), so the model is timm's class called with config.json's "
                 "`model_args`:")
    lines = ["## How to use", "", intro, "", "```python", code, "", "import torch",
             "from PIL import Image", "", data[0],
             "transform = timm.data.create_transform(**data, is_training=False)",
             'image = Image.open("image.jpg").convert("RGB")', "with torch.no_grad():",
             "    top = model(transform(image).unsqueeze(0)).argmax(-1).item()", data[1],
             "print(labels[top] if labels else top)", "```", ""]
    for name, other in others:
        lines += ["The weights file alone, with timm's `pretrained_cfg_overlay`: give "
                  "`num_classes` both to the overlay and to the model, or timm replaces the "
                  "trained head with a random one, and the preprocessing to the overlay, or "
                  "timm's data config is that of its own weights for the architecture (the "
                  "block above then works unchanged):", "", "```python", other, "```", ""]
    return lines


def _cell(text: str) -> str:
    """A value in a table row: one line, a pipe escaped (it would split the row)."""
    return " ".join(str(text).split()).replace("|", "\\|")


# Characters that make markdown of plain text (emphasis, links, HTML, code, headings, tables)
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")  # mid-line syntax; no value starts a line


def _md(text) -> str:
    """Text from a user or a file (a dataset, a device name, a summary field) as literal
    markdown: one line, every character markdown would read as syntax escaped."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _code(text) -> str:
    """Text as an inline code span that no backtick, newline or pipe in it can end or split."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def _config_hash(cfg) -> str:
    from mixerbench.config import config_hash

    return config_hash(cfg)


def _label_names(cfg, num_classes: int) -> list[str] | None:
    """The class names of the run's dataset when it names them (read from metadata only)."""
    if cfg is None or not num_classes:
        return None
    try:
        from mixerbench.data import describe

        names = describe(cfg.data.dataset, cfg.data.data_dir).get("class_names")
    except Exception:  # noqa: BLE001 - names are optional metadata and must not block an export
        return None
    if not names or len(names) != num_classes:
        return None
    return list(names)


# ----------------------------------------------------------------------------------- export


def _refuse_shuffled(cfg, run_dir) -> None:
    if cfg is not None and cfg.data.shuffle != "none":
        raise UserError(f"Run {run_dir.name} was trained on images under the fixed '{cfg.data.shuffle}' "
                        "pixel shuffle (paper Figure 4), which timm's preprocessing cannot apply; "
                        "it is not exported.")


def export(src: str | os.PathLike, out_dir: str | os.PathLike, *, repo_id: str | None = None,
           license: str = LICENSE) -> dict[str, Any]:
    """Write `out_dir` (config.json, model.safetensors, README.md) for `timm.create_model(
    "local-dir:<out_dir>", pretrained=True)` and the hub.

    Args:
        src: a run directory (its config.json and summary.json fill the model card) or a
            mixerbench `.safetensors` checkpoint.
        out_dir: a folder that does not exist yet, or an empty one.
        repo_id: the hub repo the folder is meant for (only named in the card's usage).
        license: the card's licence identifier.

    Returns:
        dict(out_dir, files, architecture, model_args, pretrained_cfg, run_id, source, label,
        family, gelu, check) where check = dict(images, what, max_abs_diff, top1_agreement,
        exact): timm's rebuild compared with mixerbench's model (exact is False for a
        tanh-GELU Mixer, whose difference is expected and reported).
    """
    import torch

    from mixerbench.models import get_spec, label_of
    from mixerbench.models.weights import load_model
    from mixerbench.rundir import read_summary

    out = Path(out_dir)
    ckpt, run_dir = _source(str(src))
    _check_out_dir(out)
    cfg = _run_config(run_dir)
    summary = read_summary(run_dir) if run_dir is not None else None
    _refuse_shuffled(cfg, run_dir)

    model, rec = load_model(str(ckpt))
    label = label_of(rec)
    if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
        raise UserError(f"{ckpt} holds non-finite weights (NaN or inf); export a run that trained.")
    spec = get_spec(rec["name"])
    t = _timm_model(model, rec, label)
    tm, gelu = t["module"], t["gelu"]
    # no entry point builds these shapes: config.json names the class its model_args are for
    arch = t["architecture"] or t["constructor"].rsplit(".", 1)[-1]

    img = int(rec["img_size"])
    in_chans = int(getattr(tm, "in_chans", 3) or 3)
    pipeline = cfg.data.eval_pipeline if cfg is not None else DEFAULT_EVAL
    pre = preprocessing(pipeline, img, in_chans)
    structural = {k: v for k, v in dict(getattr(tm, "pretrained_cfg", None) or {}).items()
                  if k in _STRUCTURAL}
    # pool_size describes the zoo model's 224 px feature map, not this one
    tm.pretrained_cfg = dict(structural, architecture=arch, num_classes=tm.num_classes,
                             pool_size=None, license=license, **pre)
    names = _label_names(cfg, tm.num_classes)
    run_id = run_dir.name if run_dir is not None else None

    parent = out.resolve().parent
    created = [p for p in [parent, *parent.parents] if not p.exists()]
    tmp = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{out.name}.export-{os.getpid()}.tmp"
        if tmp.exists():  # left by a killed export of this same process id
            shutil.rmtree(tmp)
        tmp.mkdir()
        _save_for_hf(tm, tmp, names, t)
        config = json.loads((tmp / CONFIG).read_text())
        check = _check(model, tmp, cfg, img, in_chans, gelu, label, t)
        title = label + (f" on {cfg.data.dataset}" if cfg else "") + (f": {run_id}" if run_id else "")
        (tmp / CARD).write_text(_card(
            title=title, run_id=run_id, src=ckpt, rec=rec, label=label, family=spec.family,
            paper_name=(spec.paper_name if label == spec.name and img == spec.img_size
                        else None), arch=arch, config=config, cfg=cfg, summary=summary,
            gelu=gelu, check=check, pipeline=pipeline, routes=routes(t, config, out.resolve()),
            license=license, repo_id=repo_id, out_dir=out))
        for f in FILES:
            _fsync(tmp / f)
        try:
            os.rename(tmp, out)  # replaces only an empty folder; never merges into a full one
        except OSError as exc:
            raise UserError(f"Could not move the export into {out} ({exc.strerror}); it may have "
                            "been filled meanwhile; choose a new folder.") from None
        tmp = None
    except OSError as exc:  # disk full, read-only or forbidden folder: nothing is left behind
        raise UserError(f"Could not write the export for {out} ({exc.strerror or exc}); free "
                        "space or choose a folder you can write to.") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            for p in created:  # folders made for this export only, innermost first
                try:
                    p.rmdir()
                except OSError:
                    break
    return dict(out_dir=str(out), files=[str(out / f) for f in FILES], architecture=arch,
                constructor=t["constructor"], model_args=config.get("model_args", {}),
                pretrained_cfg=config["pretrained_cfg"], run_id=run_id, source=str(ckpt),
                label=label, family=spec.family, gelu=gelu, label_names=bool(names),
                routes=routes(t, config, out.resolve()), check=check)


def routes(t: dict, config: dict, folder: Path) -> dict[str, str]:
    """The Python that loads the exported folder with timm alone, by every route that works
    for it (each defines `model`, in eval mode): `local-dir:` and timm's architecture with
    `pretrained_cfg_overlay=dict(file=...)`, where `num_classes` must be given both to the
    overlay and to the model, or timm drops the trained head for a random one, and the
    preprocessing (`PREPROCESSING`) to the overlay, or timm's data config for the model is
    that of its own weights of the architecture (224 px, bicubic); or, for shapes
    no timm entry point builds, the class itself with config.json's `model_args`."""
    weights, cfg_file = json.dumps(str(folder / WEIGHTS)), json.dumps(str(folder / CONFIG))
    if t["constructor"]:
        return {"model_args": "\n".join([
            "import json", "", "import timm", "from safetensors.torch import load_file", "",
            f"config = json.load(open({cfg_file}))",
            f"model = {t['constructor']}(**config[\"model_args\"])",
            f"model.load_state_dict(load_file({weights}))", "model.eval()"])}
    n = int(config["num_classes"])
    args = [f"{k}={v!r}" for k, v in config.get("model_args", {}).items() if k != "num_classes"]
    # the overlay replaces fields of timm's own pretrained config of the architecture, whose
    # preprocessing is its zoo weights' (224 px, bicubic, ImageNet crop): the run's goes in too
    pre = [f"{k}={config['pretrained_cfg'][k]!r}" for k in PREPROCESSING
           if k in config["pretrained_cfg"]]
    call = ", ".join([json.dumps(config["architecture"]), "pretrained=True",
                      f"pretrained_cfg_overlay=dict(file={weights}, num_classes={n}, "
                      + ", ".join(pre) + ")", f"num_classes={n}", *args])
    return {"local-dir": "\n".join([
                "import timm", "",
                f"model = timm.create_model({json.dumps(f'local-dir:{folder}')}, pretrained=True)",
                "model.eval()"]),
            "pretrained_cfg_overlay": "\n".join([
                "import timm", "", f"model = timm.create_model({call})", "model.eval()"])}


def _save_for_hf(tm, folder: Path, names: list[str] | None, t: dict) -> None:
    from timm.models import save_for_hf

    config = dict(label_names=names) if names else {}
    if t["constructor"]:  # what `routes` calls with model_args: no entry point has the shapes
        config["constructor"] = t["constructor"]
    try:
        save_for_hf(tm, str(folder), model_config=config or None, model_args=t["model_args"],
                    safe_serialization=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"timm could not describe this model for export ({exc}).") from None
    except Exception as exc:  # safetensors' own error for a write that failed (a full disk)
        if type(exc).__name__ != "SafetensorError":
            raise
        import errno
        import re

        code = re.search(r"os error (\d+)", str(exc))
        number = int(code.group(1)) if code else errno.EIO
        raise OSError(number, os.strerror(number), str(folder)) from None


def _load_back(folder: Path, t: dict):
    """The exported folder loaded the way the card's first route does."""
    import timm

    if not t["constructor"]:
        return timm.create_model(f"local-dir:{folder}", pretrained=True)
    from safetensors.torch import load_file

    config = json.loads((folder / CONFIG).read_text())
    model = type(t["module"])(**config["model_args"])  # the class `constructor` names
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model


def _check(model, folder: Path, cfg, img: int, in_chans: int, gelu: str | None,
           label: str, t: dict) -> dict[str, Any]:
    """Load the folder back the way a user will and compare it with mixerbench's model."""
    try:
        theirs = _load_back(folder, t)
    except Exception as exc:  # noqa: BLE001 - whatever timm raises, the export is not usable
        raise UserError(f"timm cannot load {label} back from the exported folder "
                        f"({type(exc).__name__}: {str(exc)[:200]}); nothing was written.") from None
    n = CHECK_IMAGES if img <= 64 else CHECK_IMAGES_LARGE
    x, what = _check_images(cfg, img, in_chans, n)
    res = _compare(model, theirs, x)
    exact = gelu != "tanh"
    if exact and res["max_abs_diff"] > EXACT_TOLERANCE * max(1.0, res["scale"]):
        raise UserError(f"timm's rebuild of {label} disagrees with mixerbench's model (largest "
                        f"logit difference {res['max_abs_diff']:.3g}); nothing was written.")
    return dict(res, what=what, exact=exact)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


# ------------------------------------------------------------------------------------- push


def push(out_dir: str | os.PathLike, repo_id: str, *, private: bool = False) -> str:
    """Upload an exported folder to the hub repo `repo_id` (created if needed); its URL.

    Fails within seconds with a UserError when offline (HF_HUB_OFFLINE, or the hub endpoint
    not answering a 3 s TCP probe) or on any hub error; requests time out after PUSH_TIMEOUT s
    of silence instead of waiting forever (huggingface_hub's own client has no timeout).
    """
    from mixerbench.data import decode
    from mixerbench.data.hub import hub_offline_by_env, hub_reachable

    out = Path(out_dir)
    later = f"push it later with `hf upload {repo_id} {out}`"
    try:
        import huggingface_hub
        from huggingface_hub import HfApi, get_session
    except ImportError:
        raise UserError(f"Exported to {out}, but huggingface_hub is not installed to push it; "
                        f"install it and {later}.") from None
    # huggingface_hub reads these at import; read them again in case they changed since
    offline = any(os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
                  for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if offline or huggingface_hub.constants.HF_HUB_OFFLINE:
        raise UserError(f"Exported to {out}, but not pushed to {repo_id}: the Hugging Face hub is "
                        f"offline here (HF_HUB_OFFLINE); {later}.")
    # the probe also counts HF_DATASETS_OFFLINE as offline; with only that set, try the hub
    if not hub_offline_by_env() and not hub_reachable(decode.cache_root()):
        raise UserError(f"Exported to {out}, but not pushed to {repo_id}: the Hugging Face hub is "
                        f"not reachable; {later}.")
    session = get_session()
    old = session.timeout
    try:
        session.timeout = type(old)(PUSH_TIMEOUT, connect=10.0)  # an httpx Timeout
        api = HfApi()
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo.repo_id, folder_path=str(out),
                          commit_message="Add a mixerbench export")
        return str(repo)
    except Exception as exc:  # noqa: BLE001 - auth, network, HTTP: all mean "not pushed"
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserError(f"Exported to {out}, but pushing to {repo_id} failed ({reason}); "
                        f"{later}.") from None
    finally:
        session.timeout = old


__all__ = ["export", "push", "preprocessing", "FILES"]
