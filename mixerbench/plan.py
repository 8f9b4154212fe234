"""What a command would train, and what it would cost, before it runs (`--dry-run`).

A plan lists the training runs (cells) of `pretrain`, `finetune`, `compare` or a `reproduce`
experiment with their steps, images and training FLOPs (6 x the forward MACs per image, as the
accuracy rows count them: forward and backward are 3 forward passes, 2 FLOPs per MAC), plus the
evaluations and, for `compare`, the probes and benchmark that follow. It then estimates:

- on this machine: the images of each run over that model's measured img/s, from the
  `throughput.csv` rows this machine holds for the model, image size and device (the best
  batch size), else from a short probe of one train and one inference step timing
  (`bench.bench` with nothing written); plus a start-up cost per run. The training loop adds
  augmentation and bookkeeping to the pure model steps bench times: `TRAIN_OVERHEAD`, measured
  on the main job (see `docs/dry-run.md`), accounts for that.
- on a named GPU (`--on h100`): the training FLOPs over its datasheet dense bf16 peak
  (`bench.DATASHEET_PEAKS_TFLOPS`) at a stated model FLOP utilisation (`--mfu`, 0.4 by
  default: what well-tuned training of models this size reaches, not a measurement).
- beside the paper's TPU-v3 core-days where the run is one of its rows (Tables 2-3).

Nothing is written to the results folder; dataset splits are opened (and decoded into the
tensor cache like any read) to count their images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mixerbench.errors import UserError

# The training loop's wall time over the images / bench train img/s of its model: data
# augmentation, the optimizer step's bookkeeping, metrics and checkpoints that bench's timed
# steps leave out. Measured on the main job (`compare --preset smoke`, 2-core CPU): see
# docs/dry-run.md for the runs behind it.
TRAIN_OVERHEAD = 1.3
# Seconds per run before its first step and after its last (process, dataset from the tensor
# cache, model build, checkpoint and row), on the same runs.
RUN_STARTUP_S = 3.0
DEFAULT_MFU = 0.4


@dataclass
class Cell:
    """One training run of a plan, with what it costs."""

    label: str
    model: str             # the label its rows will carry (mixer-t4[depth=2,width=64])
    img_size: int
    steps: int
    batch: int
    images: int            # training images: steps x batch
    evaluations: int
    eval_images: int       # all evaluations together
    macs: float            # forward MACs per image
    run_id: str | None = None
    note: str = ""
    describe: dict = field(default_factory=dict)  # name, img_size, patch_size, overrides

    @property
    def train_flops(self) -> float:
        return 6.0 * self.macs * self.images

    @property
    def eval_flops(self) -> float:
        return 2.0 * self.macs * self.eval_images


def _sizes(cfg) -> tuple[int, int, int]:
    """(train images, evaluated images, classes) of a config's splits."""
    from mixerbench.data import get_dataset

    d = cfg.data
    where = d.path or d.dataset
    train = get_dataset(where, d.train_split, data_dir=d.data_dir, fraction=d.fraction,
                        seed=cfg.seed)
    test = get_dataset(where, d.eval_split, data_dir=d.data_dir, seed=cfg.seed)
    n_eval = min(len(test), cfg.max_eval_examples or len(test))
    return len(train), n_eval, train.num_classes


def describe(cfg) -> dict:
    """The model a config trains, as `models.model_info` takes it: name, img_size, patch_size,
    overrides. A fine-tuning run's architecture comes from its `--init` weights; a Mixer
    fine-tuned at K times their resolution has K^2 times their token-mixing width (the
    block-diagonal expansion, paper section 3)."""
    from mixerbench.models import get_spec, paper_family
    from mixerbench.prepare import model_overrides

    m = cfg.model
    if not cfg.init:
        spec = get_spec(m.name)
        return dict(name=m.name, img_size=m.img_size or spec.img_size,
                    patch_size=m.patch_size or spec.patch_size, overrides=model_overrides(cfg))
    from mixerbench.models.weights import source_description

    rec = source_description(cfg.init, m.name)
    over = {k: v for k, v in (rec.get("overrides") or {}).items()
            if k not in ("drop_path", "dropout")}
    size = m.img_size or rec["img_size"]
    k = size // rec["img_size"] if rec["img_size"] else 1
    # the paper's subject (the Mixer) fine-tunes at Kx by expanding its token-mixing MLPs
    if k > 1 and get_spec(rec["name"]).family == paper_family("subject") \
            and not rec["name"].startswith("timm:"):
        dim = over.get("width") or over.get("dim") or get_spec(rec["name"]).kwargs.get("dim", 0)
        over["tokens_dim"] = (over.get("tokens_dim") or dim // 2) * k * k
    return dict(name=rec["name"], img_size=size, patch_size=rec.get("patch_size"),
                overrides=over)


def plan_config(cfg, label: str = "", note: str = "") -> Cell:
    """The plan of one run: its length from the data it reads, its MACs from its model."""
    from mixerbench.config import run_id
    from mixerbench.models import model_info, model_label

    n_train, n_eval, classes = _sizes(cfg)
    batch = cfg.data.batch_size
    per_epoch = n_train // batch  # the train loader drops the last partial batch
    if per_epoch < 1:
        raise UserError(f"The batch size {batch} is larger than the training set ({n_train:,} "
                        "images); choose a smaller --batch-size.")
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * per_epoch))
    every = cfg.eval_every or per_epoch
    evaluations = steps // every + (1 if steps % every else 0)
    d = describe(cfg)
    info = model_info(d["name"], num_classes=classes, img_size=d["img_size"],
                      patch_size=d["patch_size"], **d["overrides"])
    return Cell(label=label, model=model_label(d["name"], d["overrides"]), img_size=d["img_size"],
                steps=steps, batch=batch, images=steps * batch, evaluations=evaluations,
                eval_images=evaluations * n_eval, macs=float(info["macs"]),
                run_id=None if note else run_id(cfg), note=note,
                describe=dict(d, num_classes=classes))


# ------------------------------------------------------------------------------ estimates


def measured_rates(root, device: str | None) -> dict[tuple[str, int, str], float]:
    """(model, img_size, mode) -> the best img/s this machine's `throughput.csv` holds for the
    device `device` resolves to (none when the folder has no such rows)."""
    from mixerbench import results
    from mixerbench.runtime import resolve_device

    name = results.device_name(resolve_device(device))
    df = results.load("throughput", root, required=False)
    out: dict = {}
    if df.empty:
        return out
    for r in df.to_dict("records"):
        try:
            rate = float(r.get("img_per_sec_mean"))
            size = int(float(r.get("img_size")))
        except (TypeError, ValueError):
            continue
        if str(r.get("device_name")) != name or not math.isfinite(rate):
            continue
        key = (str(r.get("model")), size, str(r.get("mode")))
        out[key] = max(out.get(key, 0.0), rate)
    return out


def probe_rates(cells: list[Cell], device: str | None, known: dict) -> dict:
    """Train and inference img/s of each model of `cells` that `known` lacks, from a short
    `bench` in this process (one timed repeat of 2 steps, nothing written)."""
    from mixerbench.bench import bench

    todo, seen = [], set()
    for c in cells:
        key = (c.model, c.img_size)
        if key in seen or all((c.model, c.img_size, m) in known for m in ("train", "infer")):
            continue
        seen.add(key)
        todo.append(c)
    out = dict(known)
    for c in todo:
        d = c.describe
        rec = dict(name=d["name"], img_size=d["img_size"], patch_size=d["patch_size"],
                   overrides=d["overrides"], num_classes=d["num_classes"])
        rows = bench([rec], mode="both", batch_size=min(c.batch, 256), device=device,
                     repeats=1, steps_per_repeat=2, warmup=1, root=None)
        for r in rows:
            out[(c.model, c.img_size, r["mode"])] = r["img_per_sec_mean"]
    return out


def here_seconds(cells: list[Cell], rates: dict) -> list[float]:
    """Each cell's estimated wall time on this machine."""
    out = []
    for c in cells:
        train = rates.get((c.model, c.img_size, "train"))
        infer = rates.get((c.model, c.img_size, "infer")) or (3 * train if train else None)
        if not train:
            out.append(math.nan)
            continue
        out.append(RUN_STARTUP_S + TRAIN_OVERHEAD * c.images / train + c.eval_images / infer)
    return out


def gpu_peak(name: str) -> tuple[str, float]:
    """(datasheet name, dense bf16 peak TFLOP/s) of a GPU named loosely (h100, A100, v100)."""
    from mixerbench.bench import DATASHEET_PEAKS_TFLOPS, datasheet_chip
    from mixerbench.names import squash

    chip = datasheet_chip(name)
    if chip is None:
        chip = next((k for k in DATASHEET_PEAKS_TFLOPS if squash(k).startswith(squash(name))), None)
    if chip is None:
        raise UserError(f"No datasheet peak is known for '{name}'; --on takes one of "
                        f"{', '.join(DATASHEET_PEAKS_TFLOPS)}.")
    peaks = DATASHEET_PEAKS_TFLOPS[chip]
    return chip, peaks.get("bf16") or peaks["fp16"]


def paper_core_days(cfg) -> dict | None:
    """The paper's TPU-v3 core-days for the run a config makes, where it is one of the paper's
    rows (Tables 2-3: the model pre-trained on that dataset for that many epochs)."""
    from mixerbench.names import squash
    from mixerbench.reference import load_table

    if cfg.kind != "pretrain" or cfg.epochs is None:
        return None
    upstream = {"imagenet1k": "imagenet", "imagenet": "imagenet", "imagenet21k": "imagenet21k",
                "jft300m": "jft300m"}.get(squash(cfg.data.dataset))
    if upstream is None:
        return None
    for table in ("table3", "table2"):
        rows = load_table(table)
        hit = rows[(rows["model"].astype(str) == cfg.model.name)
                   & (rows["pretrain"].astype(str).map(squash) == upstream)]
        if "epochs" in hit.columns:
            hit = hit[hit["epochs"].astype(float) == float(cfg.epochs)]
        hit = hit[hit["core_days"].notna()]
        if len(hit):
            r = hit.iloc[0]
            return dict(core_days=float(r["core_days"]), source=str(r["source"]))
    return None


# `compare`'s benchmark of each model (experiments.bench_rows on a CPU): 2 warm-up steps and 3
# timed repeats of 5 steps per mode, and one dense matmul measurement per call.
BENCH_STEPS = 2 + 3 * 5
MATMUL_S = 2.0
FEWSHOT_SEEDS = 3


def compare_seconds(cells: list[Cell], rates: dict, known: dict, *, fewshot: int | None,
                    bench: bool, preset: str | None) -> tuple[float, list[str]]:
    """Seconds of what `compare` does after training: a `fewshot`-shot probe of every run (its
    eval split and the drawn shots through the model) and, with `bench`, the benchmark of each
    model this machine's throughput.csv has no rows for; with a note of what was counted."""
    seconds, notes = 0.0, []
    if fewshot:
        for c in cells:
            infer = rates.get((c.model, c.img_size, "infer"))
            shots = fewshot * c.describe["num_classes"] * FEWSHOT_SEEDS
            if infer:
                seconds += RUN_STARTUP_S + (c.eval_images / max(c.evaluations, 1) + shots) / infer
        notes.append(f"a linear {fewshot}-shot probe of each run")
    if bench:
        todo = {(c.model, c.img_size): c for c in cells
                if not all((c.model, c.img_size, m) in known for m in ("train", "infer"))}
        for c in todo.values():
            batch = min(256, c.batch)
            for mode in ("train", "infer"):
                rate = rates.get((c.model, c.img_size, mode))
                if rate:
                    seconds += BENCH_STEPS * batch / rate
        if todo:
            seconds += MATMUL_S
            notes.append(f"the benchmark of {len(todo)} model{'s' if len(todo) > 1 else ''} "
                         "(train and inference) on this device")
    return seconds, notes


def estimate(cells: list[Cell], *, root=None, device: str | None = None, on: str | None = None,
             mfu: float = DEFAULT_MFU, compare: dict | None = None, probe: bool = True) -> dict:
    """Totals and estimates of a plan: here (measured rates, else a probe) and on GPU `on`;
    `compare` (fewshot, bench, preset) adds what `compare` does after training."""
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu} is not a utilisation; pass a share in (0, 1], e.g. 0.4.")
    known = measured_rates(root, device)
    from_rows = {(c.model, c.img_size) for c in cells
                 if (c.model, c.img_size, "train") in known}
    rates = probe_rates(cells, device, known) if probe else known
    seconds = here_seconds(cells, rates)
    extra_seconds, notes = compare_seconds(cells, rates, known, **compare) if compare else (0.0, [])
    out = dict(cells=len(cells), steps=sum(c.steps for c in cells),
               images=sum(c.images for c in cells),
               train_flops=sum(c.train_flops for c in cells),
               eval_flops=sum(c.eval_flops for c in cells),
               seconds_per_cell=seconds, extra_seconds=extra_seconds, notes=notes,
               wall_seconds=sum(seconds) + extra_seconds,
               rates_from="throughput.csv" if len(from_rows) == len({(c.model, c.img_size)
                                                                      for c in cells})
               else "a probe" if not from_rows else "throughput.csv and a probe")
    out["device_hours"] = out["wall_seconds"] / 3600
    if on:
        chip, peak = gpu_peak(on)
        secs = (out["train_flops"] + out["eval_flops"]) / (peak * 1e12 * mfu)
        out["gpu"] = dict(name=chip, peak_tflops=peak, mfu=mfu, seconds=secs,
                          device_hours=secs / 3600)
    return out
