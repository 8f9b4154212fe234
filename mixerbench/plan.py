"""What a command would train, and what it would cost, before it runs (`--dry-run`).

A plan lists the training runs (cells) of `pretrain`, `finetune`, `compare` or a `reproduce`
experiment with their steps, images and training FLOPs (6 x the forward MACs per image, as the
accuracy rows count them: forward and backward are 3 forward passes, 2 FLOPs per MAC), plus the
evaluations and, for `compare`, the probes and benchmark that follow. It then estimates:

- on this machine: each run's images over the img/s of its own training loop, measured by a
  short probe here (`loop_rates`: a few seconds of steps through its loader, augmentation
  included, model and optimizer, and a few evaluation batches, run by `prepare` and
  `train_step` without touching a run folder, at the torch threads the run will have), its
  evaluations over the evaluation img/s, and a few seconds a run and a command for what
  neither times (start-up, checkpoints, the rows). The runs then go as the launcher will run
  them (`Lanes`: one after another here, or several at once as processes of their own, which
  share the cores, `shared_wall`). On a shared machine the probe measures the load of its
  minute.
- on a named GPU (`--on h100`): the training FLOPs over its datasheet dense bf16 peak
  (`bench.DATASHEET_PEAKS_TFLOPS`) at a stated model FLOP utilisation (`--mfu`, 0.4 by
  default: what well-tuned training of models this size reaches, not a measurement).
- beside the paper's TPU-v3 core-days where the run is one of its rows (Tables 2-3).

Nothing is written to the results folder; dataset splits are opened (and decoded into the
tensor cache like any read) to count their images.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from mixerbench.errors import UserError

# What the probe does not time, measured on the main job (`compare --preset smoke`, 2-core CPU;
# docs/dry-run.md): seconds a run spends outside its steps and evaluations (model build, the
# dataset from the tensor cache, checkpoints, metrics and its row), and a command once (imports).
RUN_S = 5.0
COMMAND_S = 10.0
# The probe: its first steps run slower than the loop's steady state (a fresh model's first
# tens of steps, measured 2.5x slower than its steps 60-100 on the 2-core CPU), so it warms up
# for a few seconds before it times a few more; at least a few steps each, however slow.
PROBE_WARMUP_S, PROBE_TIMED_S, PROBE_MIN_STEPS, PROBE_EVAL_BATCHES = 6.0, 3.0, 3, 3
DEFAULT_MFU = 0.4
# A launched run's own process: torch and timm imported again, ~3 CPU-s on the 2-core CPU.
JOB_START_S = 3.0


@dataclass
class Lanes:
    """How the runs of one stage go (`experiments.lanes`): `parallel` at once (1: one after another in
    this process), `threads` torch threads each, on `cores` cores; `jobs`: each in a process
    of its own (a launcher's job)."""

    parallel: int = 1
    threads: int = 1
    cores: int = 1
    jobs: bool = False


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def shared_wall(seconds: list[float], lanes: Lanes) -> float:
    """Wall seconds of runs that take `seconds` each alone, started in order `lanes.parallel`
    at a time: while k run, each goes at min(1, cores / (k x threads)) of its speed alone (a
    processor-sharing queue, written by hand: no library we use models one)."""
    pending, running, wall = [s for s in seconds if s > 0], [], 0.0
    while pending or running:
        while pending and len(running) < max(1, lanes.parallel):
            running.append(pending.pop(0))
        speed = min(1.0, lanes.cores / (len(running) * max(1, lanes.threads)))
        step = min(running)
        wall += step / speed
        running = [r - step for r in running if r - step > 1e-9]
    return wall


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
    cfg: Any = None        # the RunConfig it trains (what the probe runs)
    finished: bool = False  # its run folder holds a finished run: read back, not trained

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


def plan_config(cfg, label: str = "", note: str = "", root=None) -> Cell:
    """The plan of one run: its length from the data it reads, its MACs from its model, and
    whether `root` holds it finished already (then it is read back, not trained)."""
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
                describe=dict(d, num_classes=classes), cfg=cfg, finished=bool(
                    root and not note and (root / "runs" / run_id(cfg) / "summary.json").is_file()))


# ------------------------------------------------------------------------------ estimates


def _probe_key(c: Cell) -> tuple:
    d = c.cfg.data
    return (c.model, c.img_size, c.batch, d.dataset, d.pipeline, d.randaug_m, d.mixup_p)


def loop_rates(cfg, root, threads: int | None = None) -> tuple[float, float]:
    """(train img/s, eval img/s) of `cfg`'s own training loop on this machine at `threads`
    torch threads (default: this process's): optimizer steps through its train loader
    (augmentation included), model, optimizer and learning-rate schedule, untimed for `PROBE_WARMUP_S` then timed for
    `PROBE_TIMED_S` (at least `PROBE_MIN_STEPS` each), then `PROBE_EVAL_BATCHES` evaluation
    batches. `prepare` builds the run without touching its folder, so nothing is written."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return _loop_rates(cfg, root)
    finally:
        torch.set_num_threads(before)


def _loop_rates(cfg, root) -> tuple[float, float]:
    import itertools
    import time

    from mixerbench.evaluate import accuracy
    from mixerbench.optim import make_optimizer, make_scheduler
    from mixerbench.prepare import prepare
    from mixerbench.runtime import synchronize
    from mixerbench.train import train_step

    run = prepare(cfg, root, root / "runs" / "dry-run", lambda what: None)
    model = run.model.train()
    optimizer = make_optimizer(model, cfg, fused=False)
    # the run's own warm-up too: at the peak learning rate from the first step the smoke ViT's
    # numbers fall into denormals, which this CPU computes slowly: one thread of the 2-core CPU
    # trained it at ~2,000 img per CPU-second that way, at 2,750-2,860 with the schedule or with
    # denormals flushed (its loop, with the schedule: 2,530 img/s idle)
    scheduler = make_scheduler(optimizer, cfg, run.total, run.warmup)
    batches = itertools.chain.from_iterable(run.train_batches.epoch(e) for e in itertools.count())
    start, timed, limit = time.perf_counter(), None, PROBE_WARMUP_S
    for i, (x, y) in enumerate(batches):
        train_step(run, model, x, y)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(run.device)
        steps = i + 1 - (timed or 0)
        if steps >= PROBE_MIN_STEPS and time.perf_counter() - start >= limit:
            if timed is not None:
                break
            timed, start, limit = i + 1, time.perf_counter(), PROBE_TIMED_S
    train = steps * cfg.data.batch_size / (time.perf_counter() - start)
    start = time.perf_counter()
    seen = accuracy(model, itertools.islice(run.eval_batches.epoch(0), PROBE_EVAL_BATCHES),
                    device=run.device, dtype=run.dtype)["n"]
    return train, seen / (time.perf_counter() - start)


def here_seconds(cells: list[Cell], rates: dict, lanes: list[Lanes]) -> list[float]:
    """Each cell's estimated wall time on this machine, alone on its lane (`lanes[i]` is
    cell i's); a launched run also starts a process."""
    out = []
    for c, lane in zip(cells, lanes):
        if c.finished:
            out.append(0.0)
            continue
        train, infer = rates[_probe_key(c), lane.threads]
        out.append(RUN_S + JOB_START_S * lane.jobs + c.images / train + c.eval_images / infer)
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


def compare_seconds(cells: list[Cell], rates: list, known: set, *, fewshot: int | None,
                    bench: bool, preset: str | None) -> tuple[float, list[str]]:
    """Seconds of what `compare` does after training: a `fewshot`-shot probe of every run (its
    eval split and the drawn shots through the model) and, with `bench`, the benchmark of each
    model this machine's throughput.csv has no rows for (`known`); with a note of what was
    counted. `rates[i]` is cell i's probed (train, eval) img/s; they stand for bench's, whose
    timed steps skip the loader."""
    seconds, notes = 0.0, []
    if fewshot:
        for c, (_, infer) in zip(cells, rates):  # one in fewshot.csv is counted all the same
            shots = fewshot * c.describe["num_classes"] * FEWSHOT_SEEDS
            seconds += RUN_S + (c.eval_images / max(c.evaluations, 1) + shots) / infer
        notes.append(f"a linear {fewshot}-shot probe of each run")
    if bench:
        todo = {(c.model, c.img_size): (c, r) for c, r in zip(cells, rates)
                if (c.model, c.img_size) not in known}
        for c, (train, infer) in todo.values():
            seconds += BENCH_STEPS * min(256, c.batch) * (1 / train + 1 / infer)
        if todo:
            seconds += MATMUL_S
            notes.append(f"the benchmark of {len(todo)} model{'s' if len(todo) > 1 else ''} "
                         "(train and inference) on this device")
    return seconds, notes


def benched(root, device: str | None) -> set[tuple[str, int]]:
    """(model, img_size) pairs this machine's throughput.csv has train and infer rows for on
    the device `device` resolves to: `compare` benches only the others."""
    from mixerbench import results
    from mixerbench.runtime import resolve_device

    name = results.device_name(resolve_device(device))
    df = results.load("throughput", root, required=False)
    seen: dict = {}
    for r in ([] if df.empty else df.to_dict("records")):
        if str(r.get("device_name")) == name:
            try:
                key = (str(r.get("model")), int(float(r.get("img_size"))))
            except (TypeError, ValueError):
                continue
            seen.setdefault(key, set()).add(str(r.get("mode")))
    return {k for k, modes in seen.items() if {"train", "infer"} <= modes}


def estimate(cells: list[Cell], *, root=None, device: str | None = None, on: str | None = None,
             mfu: float = DEFAULT_MFU, compare: dict | None = None,
             stages: list[tuple[int, Lanes]] | None = None) -> dict:
    """Totals and estimates of a plan: here (each distinct run's loop probed once at its
    threads, `loop_rates`) and on GPU `on`; `compare` (fewshot, bench, preset) adds what
    `compare` does after training. `stages`: (how many of the cells, in order, how they run),
    one stage after another; default all of them one after another in this process."""
    from pathlib import Path

    if not 0 < mfu <= 1:
        raise UserError(f"--on's MFU {mfu} is not a utilisation; pass a share in (0, 1], e.g. "
                        "h100:0.4.")
    import torch

    stages = stages or [(len(cells), Lanes(1, torch.get_num_threads(), cores()))]
    lane_of = [lane for n, lane in stages for _ in range(n)]
    rates = {}
    for c, lane in zip(cells, lane_of):
        if (_probe_key(c), lane.threads) not in rates and (not c.finished or compare):
            rates[_probe_key(c), lane.threads] = loop_rates(c.cfg, Path(root), lane.threads)
    seconds = here_seconds(cells, rates, lane_of)
    extra_seconds, notes = (compare_seconds(
        cells, [rates.get((_probe_key(c), lane.threads)) for c, lane in zip(cells, lane_of)],
        benched(root, device), **compare) if compare else (0.0, []))
    wall, first = 0.0, 0
    for n, lane in stages:
        wall += shared_wall(seconds[first:first + n], lane)
        first += n
        if lane.parallel > 1:
            notes.append(f"{lane.parallel} runs at once as processes of {lane.threads} torch "
                         f"thread{'s' if lane.threads > 1 else ''} on {lane.cores} cores")
    out = dict(cells=len(cells), steps=sum(c.steps for c in cells),
               images=sum(c.images for c in cells),
               train_flops=sum(c.train_flops for c in cells),
               eval_flops=sum(c.eval_flops for c in cells),
               seconds_per_cell=seconds, extra_seconds=extra_seconds, notes=notes,
               wall_seconds=COMMAND_S + wall + extra_seconds,
               rates_from=f"a probe of each run's training loop ({len(rates)} here)")
    out["device_hours"] = out["wall_seconds"] / 3600
    if on:
        chip, peak = gpu_peak(on)
        secs = (out["train_flops"] + out["eval_flops"]) / (peak * 1e12 * mfu)
        out["gpu"] = dict(name=chip, peak_tflops=peak, mfu=mfu, seconds=secs,
                          device_hours=secs / 3600)
    return out
