"""Experiments built from the one training loop: compare, and the scaled-down paper artifacts.

Every experiment is resumable: a cell whose run already finished is read back (the training
loop returns its summary), and few-shot / throughput / shuffle / scaling rows that are already
in their CSV are not measured again. Several sweeps may share a results directory: each run is
trained under its own lock, so no cell is trained twice.

Each experiment lists its training runs as cells (`launch.Cell`), trains them with
`launch.run_cells` (one after another here, or as jobs with `--launcher`), then joins the
results from the run summaries and CSVs, the same code whichever way the cells ran.

`EXPERIMENTS` maps each `mixerbench reproduce` name to a function whose docstring states the
paper's claim, what the scaled version measures, the expected outcome and the runtime.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixerbench import files, results
from mixerbench.errors import UserError
from mixerbench.events import Log, noop
from mixerbench.evaluate import probe_of
from mixerbench.launch import AUTO, Cell, Launcher, run_cells
from mixerbench.launch import Event as CellEvent
from mixerbench.runtime import rank



class Event:
    """The progress events of the experiments' own work besides training cells (those are
    `launch.Event`), emitted as `log(event, info)`; `view.ProgressView` renders them."""

    FEWSHOT = "fewshot"  # linear few-shot probes of a run: run_id, shots
    BENCH = "bench"      # throughput of the compared models on this device: models
    COMPARED = "compared"  # a comparison is joined: root, group, runs, written, config



def _done_keys(table: str, root, *cols: str) -> set[tuple]:
    df = results.load(table, root, required=False)
    if df.empty:
        return set()
    return {_key(*r) for r in df[list(cols)].itertuples(index=False)}


def _key(*values) -> tuple[str, ...]:
    """Values as `_done_keys` compares them: text, a blank cell (None, NaN) as "", a whole
    number as an integer whatever its type (pandas reads a column of integers with a blank
    cell, such as `threads` beside rows older versions wrote, as floats: 2.0 is 2)."""
    return tuple("" if v is None or v != v
                 else str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                 for v in values)


def _joined_here() -> bool:
    """Whether this process joins the results of the cells it just trained: always in a plain
    process; under torchrun rank 0 alone (every rank trained the cells together; the few-shot
    probes, benchmarks and tables that follow need one process). The process group is torn
    down first, so no rank waits for rank 0 in a collective while it joins."""
    from mixerbench.runtime import teardown_distributed

    teardown_distributed()
    return rank() == 0


def resolve_run(kind: str, *, preset: str | None = None, model: str | None = None,
                dataset: str | None = None, init: str | None = None, arch: str | None = None,
                lr: str | float | None = None, flags: dict | None = None,
                overrides: dict | None = None, config_settings: dict | None = None):
    """(config, lrs) of a `pretrain` or `finetune` command: the preset (a fine-tuning run's
    default is its dataset's, `presets.finetune_preset`), the model (`mixer` when neither a
    model nor a preset is named), a `--config` file's settings, flags and `--set`; `lr` is one
    learning rate or a grid. What the command line names (`--model`, `--dataset`, `--init`)
    wins over the file's settings of it."""
    from mixerbench.models import paper_family
    from mixerbench.presets import finetune_preset, run_config

    flags, overrides = dict(flags or {}), dict(overrides or {})
    settings = dict(config_settings or {})
    if settings.get("kind", kind) != kind:
        raise UserError(f"The --config file is a {settings['kind']} config; run it with "
                        f"`mixerbench {settings['kind']} --config FILE`.")
    preset = preset or settings.get("preset")
    if kind == "pretrain" and not (model or preset or "model.name" in settings):
        model = paper_family("subject")
    if kind == "finetune" and preset is None:
        length_given = (flags.get("steps") is not None or flags.get("epochs") is not None
                        or bool({"steps", "epochs"} & (set(overrides) | set(settings))))
        preset = finetune_preset(dataset or settings.get("data.dataset"),
                                 length_given=length_given)
    lrs = parse_lrs(lr)
    init = init or settings.get("init")  # a fine-tuning config names its weights
    named = [k for k in settings if (model and k.startswith("model."))
             or (dataset and k in ("data.dataset", "data.path")) or k in ("init", "init_sha256")]
    for key in named:
        settings.pop(key)
    cfg = run_config(preset, model=model, dataset=dataset, kind=kind, init=init, arch=arch,
                     flags={**flags, "optim.lr": lrs[0] if lrs else None}, overrides=overrides,
                     settings=settings)
    return cfg, lrs


def resolved_config(kind: str, **spec) -> dict:
    """The config.json a `pretrain` / `finetune` command would write, with its run id and, under
    `resolved`, what its empty settings resolve to (the model's own width, depth, image and
    patch size, parameters and FLOPs per image), without running it (`--print-config`; `--config`
    reads it back, leaving `run_id` and `resolved` out); `spec` as `resolve_run` takes it."""
    from mixerbench.config import run_id, to_dict

    cfg, _ = resolve_run(kind, **spec)
    return dict(to_dict(cfg), run_id=run_id(cfg), resolved=resolved_model(cfg))


def resolved_model(cfg) -> dict:
    """The model a config trains, with its empty settings filled in from the registry: name,
    width, depth, img_size, patch_size (as the constructor gets them), params and FLOPs per
    image (the head sized for the dataset's classes when the data is at hand, else 1000)."""
    from mixerbench.models import get_spec, model_info
    from mixerbench.models.registry import family

    m = cfg.model
    spec = get_spec(m.name)
    options = family(spec.family).options if spec.family != "other" else {}
    kwargs = spec.kwargs or {}

    def own(option: str):
        return kwargs.get(options.get(option, option))

    out = dict(name=m.name, width=m.width or own("width"), depth=m.depth or own("depth"),
               img_size=m.img_size or spec.img_size, patch_size=m.patch_size or spec.patch_size)
    if cfg.kind == "pretrain":
        over = {k: v for k, v in (("width", m.width), ("depth", m.depth)) if v is not None}
        try:
            info = model_info(m.name, num_classes=_classes(cfg), img_size=out["img_size"],
                              patch_size=m.patch_size, **over, **m.options)
            out.update(params=info["params"], flops_per_image=info["gflops"] * 1e9)
        except UserError:
            pass  # a shape the model cannot take is refused when the run starts
    return out


def _classes(cfg) -> int:
    """The number of classes of the config's dataset, when it can be told without loading it."""
    try:
        from mixerbench.data import get_dataset

        return get_dataset(cfg.data.path or cfg.data.dataset, cfg.data.eval_split,
                           data_dir=cfg.data.data_dir).num_classes
    except Exception:  # not at hand (a hub dataset offline): the zoo's 1000-class head
        return 1000


def train_command(kind: str, *, what: str = "run", plan: dict | None = None, root=None,
                  resume: bool = False, settings: list[str] | None = None, config=None,
                  log: Log = noop, **spec) -> dict:
    """`pretrain` / `finetune`: train (`what` "run": `train_run`), or print the resolved config
    ("print-config": `resolved_config`), or plan and cost the run ("dry-run": `dry_run`, with
    `plan`'s `on` and `mfu`). `settings` are `--set` items, `config` a `--config` file;
    `spec` as `resolve_run` takes it. Returns {"summary"}, {"configs"} or {"plan"}."""
    from mixerbench.config import parse_set, read_settings

    spec = dict(spec, overrides=parse_set(settings), config_settings=read_settings(config))
    if what == "print-config":
        return dict(configs=resolved_config(kind, **spec))
    if what == "dry-run":
        return dict(plan=dry_run(kind, root=root, **(plan or {}), **spec))
    return dict(summary=train_run(kind, root=root, resume=resume, log=log, **spec))


def train_run(kind: str, *, root=None, resume: bool = False, log: Log = noop, **spec) -> dict:
    """A `pretrain` or `finetune` command: one run, or with several learning rates the lr grid
    selected on minival (`finetune_lr_grid`, paper App. C); `spec` as `resolve_run` takes it.

    Returns:
        The run's summary; for a grid, the final run's with `lr_grid`, `selected_lr` and
        `reported_on` (the split the final run is reported on).
    """
    from mixerbench.train import train

    cfg, lrs = resolve_run(kind, **spec)
    if len(lrs) <= 1:
        return train(cfg, root, resume=resume, log=log)
    if resume:
        raise UserError("--resume continues one run; run the lr grid without it (finished runs "
                        "of the grid are read back, unfinished ones continue).")
    return dict(finetune_lr_grid(cfg, lrs, root=root, log=log), reported_on=cfg.data.eval_split)


def parse_lrs(text: str | float | None) -> list[float]:
    """`--lr 0.003,0.01,0.03,0.06` -> [0.003, 0.01, 0.03, 0.06] (one value: a plain run)."""
    if text is None:
        return []
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        lrs = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"--lr takes a learning rate or a comma-separated grid such as "
                        f"0.003,0.01,0.03,0.06, not '{text}'.") from None
    if not lrs or len(set(lrs)) != len(lrs):
        raise UserError(f"--lr '{text}' must list distinct learning rates, e.g. 0.003,0.01,0.03,0.06.")
    return lrs


def finetune_lr_grid(cfg, lrs: list[float], *, root=None, log: Log = noop) -> dict:
    """The paper's fine-tuning lr selection (App. C, following the ViT paper's App. B.1.1): each
    lr of the grid fine-tunes on the train split minus a held-out minival (a seeded share of every
    class: 2 % for CIFAR, 10 % for Pets and Flowers, 1 % otherwise; `data.minival_mask`) and is
    scored on that minival; the best one is then
    fine-tuned on the whole train split and reported on `cfg`'s eval split (test).

    Every run is an ordinary run directory with its accuracy row (the grid's rows have split
    `minival`); the selection is written to `lr-grid.json` in the final run's directory.

    Returns:
        The final run's summary plus `lr_grid` (one dict per lr: lr, minival top1, run_id) and
        `selected_lr`.
    """
    from dataclasses import replace

    from mixerbench.config import validate
    from mixerbench.train import train

    root = results.writable_results_dir(root)  # refused before any cell is trained or launched
    base = replace(cfg, run_name=None)
    held_out = replace(base, data=replace(base.data, train_split="train-minus-minival",
                                          eval_split="minival"))
    cells = [validate(replace(held_out, optim=replace(held_out.optim, lr=lr))) for lr in lrs]
    grid = []
    for i, c in enumerate(cells):
        log(CellEvent.CELL, dict(stage="lr grid on minival", lr=c.optim.lr, index=i + 1,
                                 of=len(cells) + 1))
        s = train(c, root, log=log, experiment="lr-grid")
        if s.get("top1") is None:
            raise UserError(f"The lr-grid run {s['run_id']} has no minival accuracy; check the data.")
        grid.append(dict(lr=c.optim.lr, minival_top1=s["top1"], run_id=s["run_id"]))
    best = best_lr(grid)
    log(CellEvent.CELL, dict(stage="final run on train, reported on " + cfg.data.eval_split,
                             lr=best["lr"], index=len(cells) + 1, of=len(cells) + 1))
    final = train(replace(cfg, optim=replace(cfg.optim, lr=best["lr"])), root, log=log,
                  experiment="lr-grid")
    record = dict(selected_lr=best["lr"], selected_on="minival", lr_grid=grid,
                  reported_split=cfg.data.eval_split, final_run_id=final["run_id"])
    if rank() == 0:  # under torchrun every rank has the record; one writes it
        files.atomic_write_json(Path(final["run_dir"]) / "lr-grid.json", record)
    return dict(final, lr_grid=grid, selected_lr=best["lr"])


def best_lr(grid: list[dict]) -> dict:
    """The entry of an lr grid with the best minival top-1 (paper App. C); the first of equals,
    so the grid's order decides ties."""
    return max(grid, key=lambda g: g["minival_top1"])


def description_of(summary: dict) -> dict:
    """The model description stored in a run's checkpoint (name, img_size, overrides, classes)."""
    from mixerbench.models.weights import CHECKPOINT, read_metadata

    return read_metadata(Path(summary["run_dir"]) / CHECKPOINT)


def fewshot_rows(summary: dict, shots: tuple[int, ...], *, root, data_dir=None,
                 device: str | None = None, seeds: int | None = None,
                 log: Log = noop) -> list[dict]:
    """Linear few-shot of a finished run's frozen features (docs/paper-notes.md §5), unless
    already in fewshot.csv; rows are appended there and returned. The probe is measured on the
    whole of the run's eval split, even when its own accuracy used a stratified N of its images."""
    from mixerbench.evaluate import evaluate

    probe = own_probe(summary, device, seeds)
    # a row of exactly this probe (fewshot.csv's key, `results.KEYS`) stands for it; one of the
    # run on other images, through another crop or in another precision does not
    done = _done_keys("fewshot", root, *results.KEYS["fewshot"])
    todo = [k for k in shots if _probe_key(probe, k) not in done]
    if not todo:
        return []
    log(Event.FEWSHOT, dict(run_id=summary["run_id"], shots=",".join(map(str, todo))))
    out = evaluate(summary["run_dir"], summary["dataset"], split=probe["split"],
                   data_dir=data_dir, fewshot=todo, device=device, seeds=probe["num_seeds"],
                   root=None)
    rows = out["rows"]["fewshot"]
    for r in rows:  # a concurrent sweep may have recorded it meanwhile: one row stays
        results.append_once("fewshot", r, root)
    return rows


def own_probe(summary: dict, device: str | None = None, seeds: int | None = None) -> dict:
    """fewshot.csv's key cells (`results.KEYS`, but `shots`) of the probe `fewshot_rows` makes of
    a finished run on `device`: its last step's weights, the whole of its eval split
    (`test[stratified:N]` -> `test`), shots from `train`, the default l2 and `seeds` draws, the
    run's own eval crop and resolution, in the precision `evaluate` picks there."""
    from mixerbench.evaluate import FEWSHOT_L2, FEWSHOT_SEEDS
    from mixerbench.runtime import choose

    return dict(run_id=summary["run_id"], recipe_id=summary.get("recipe_id"),
                steps=summary.get("steps"), dataset=summary["dataset"],
                split=(summary.get("split") or "test").split("[")[0], shots_split="train",
                l2_reg=FEWSHOT_L2, num_seeds=seeds or FEWSHOT_SEEDS,
                pipeline=_eval_pipeline(summary), img_size=summary.get("img_size"),
                dtype=choose(device, None)[1])


def _probe_key(probe: dict, shots: int) -> tuple[str, ...]:
    """`own_probe`'s cells at `shots` shots, as `_done_keys("fewshot", root, *KEYS)` has them."""
    return _key(*(dict(probe, shots=shots)[c] for c in results.KEYS["fewshot"]))


def own_probe_rows(few, probes: list[dict], shots: int):
    """The rows of fewshot.csv (a `results.load` frame) that are one of `probes` at `shots`."""
    mine = {_probe_key(p, shots) for p in probes}
    cells = few[list(results.KEYS["fewshot"])].itertuples(index=False)
    return few.loc[[_key(*r) in mine for r in cells]]


def bench_rows(models: list[dict], *, root, device: str | None = None, batch_size: int = 256,
               repeats: int = 3, dtype: str | None = None, log: Log = noop) -> list[dict]:
    """Inference and training throughput for each model description on this device in `dtype`
    (None: the device's default, as training's `auto`), unless a row for that model, mode,
    image size, device, precision, torch threads and compilation is already in throughput.csv
    (a one-thread `bench --vs-timm` row of a model is not what this process measures on all
    its threads, and set beside the other models' rows it made that model look slower)."""
    import torch

    from mixerbench.bench import bench, compiles_by_default
    from mixerbench.models import label_of
    from mixerbench.results import device_name
    from mixerbench.runtime import choose, resolve_device

    dev = resolve_device(device)
    name = device_name(dev)
    dtype = choose(dev, dtype, cpu_half=True)[1]  # what bench resolves it to
    here = (name, dtype, str(torch.get_num_threads()), str(compiles_by_default(dev)))
    done = _done_keys("throughput", root, "model", "mode", "img_size", "device_name", "dtype",
                      "threads", "compiled")
    todo = [r for r in models
            if any((label_of(r), m, str(r["img_size"]), *here) not in done
                   for m in ("infer", "train"))]
    if not todo:
        return []
    log(Event.BENCH, dict(models=[label_of(r) for r in todo]))
    return bench(todo, mode="both", batch_size=batch_size, device=dev, dtype=dtype, repeats=repeats,
                 root=root, steps_per_repeat=5 if dev == "cpu" else 20,
                 warmup=2 if dev == "cpu" else 10)


# Bounds on what `compare` is asked to train: the paper averages 3 seeds (Table 2's std over
# them); a thousand seeds or ten thousand runs is a typo, not a campaign one command runs.
MAX_SEEDS = 1000
MAX_CELLS = 10_000


def compare(models: list[str], *, dataset: str | None = None, preset: str | None = "smoke",
            seeds: int = 1, epochs: float | None = None, steps: int | None = None,
            fewshot: int | None = None, with_bench: bool = True, root=None, data_dir=None,
            device: str | None = None, overrides: dict | None = None,
            launcher: Launcher | None = None, log: Log = noop) -> dict[str, Any]:
    """Train each model under one preset and budget, for `seeds` seeds; evaluate, optionally
    few-shot and bench them; write the joined table.

    The cells train one after another here, or as jobs (`launcher`); the few-shot probes,
    benchmarks and tables follow in this process either way, from the CSVs. The comparison
    ends with `Event.COMPARED` (its settings, runs and files), which trackers record as one
    more tracker run, `compare-<preset>`, beside the training runs'.

    Returns:
        dict(table=DataFrame (`report.tables.compare_table` columns) of these models' runs,
        runs=[summaries], dataset=name, written=[paths]). The files,
        tables/compare-<dataset>-<preset>.{csv,md}, hold every run of that comparison in the
        results folder, as `mixerbench plot compare` regenerates them. Under torchrun, ranks
        other than 0 return {} once the cells are trained.
    """
    if not models:
        from mixerbench.models import paper_families

        raise UserError("No models to compare; pass --models "
                        f"{','.join(paper_families())} for example.")
    # every option checked before any cell is trained: a bad --fewshot found after training
    # would leave accuracy rows of a command that was refused
    if isinstance(seeds, bool) or not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"--seeds {seeds} must be between 1 and {MAX_SEEDS:,} (runs per model).")
    if len(models) * seeds > MAX_CELLS:
        raise UserError(f"{len(models):,} models x {seeds:,} seeds is {len(models) * seeds:,} "
                        f"training runs, more than the {MAX_CELLS:,} one compare trains; pass "
                        "fewer models or seeds.")
    if fewshot is not None:
        from mixerbench.evaluate import parse_shots

        parse_shots(str(fewshot))
    root = results.writable_results_dir(root)  # refused before any cell is trained or launched
    cells = compare_cells(models, dataset=dataset, preset=preset, seeds=seeds, epochs=epochs,
                          steps=steps, root=root, data_dir=data_dir, device=device,
                          overrides=overrides)
    runs = run_cells(cells, launcher, log)
    if not _joined_here():
        return {}
    out = join_compare(runs, preset=preset, fewshot=fewshot, with_bench=with_bench, root=root,
                       data_dir=data_dir, device=device, tag=cells[0].experiment, log=log)
    log(Event.COMPARED, dict(
        root=root, group=f"compare-{preset}", runs=[s["run_id"] for s in runs],
        written=out["written"], config=dict(
            models=",".join(models), dataset=out["dataset"], preset=preset, seeds=seeds,
            epochs=epochs, steps=steps, fewshot=fewshot,
            settings=[f"{k}={v}" for k, v in (overrides or {}).items()])))
    return out


def compare_cells(models: list[str], *, dataset=None, preset="smoke", seeds: int = 1,
                  epochs=None, steps=None, root, data_dir=None, device=None, overrides=None,
                  **_) -> list[Cell]:
    """The cells of `compare`: each model, for each seed, under one preset and budget."""
    return [Cell(preset, model, str(root), dataset=dataset,
                 experiment=compare_experiment(
                     preset, epochs, {**(overrides or {}), **({"steps": steps} if steps else {})}),
                 flags={"seed": seed, "epochs": epochs, "steps": steps,
                        "data.data_dir": str(data_dir) if data_dir else None, "device": device},
                 overrides=dict(overrides or {}), label=dict(model=model, seed=seed))
            for model in models for seed in range(seeds)]


def compare_experiment(preset: str | None, epochs: float | None, overrides: dict | None) -> str:
    """The `experiment` tag of a compare's rows: `compare:<preset>`, with the settings given on
    top of the preset (`--epochs`, `--set`) in brackets, `compare:smoke[steps=20]`, so that
    compares of two budgets never share a table (`report.compare_name`). Settings that cannot
    change a number (`config.NO_EFFECT`) are left out: such compares measure the same."""
    from mixerbench.config import NO_EFFECT

    given = {**({"epochs": _canonical(epochs)} if epochs is not None else {}),
             **{k: _canonical(v) for k, v in (overrides or {}).items() if k not in NO_EFFECT}}
    tag = f"compare:{preset or 'default'}"
    return tag + ("[" + ",".join(f"{k}={v}" for k, v in sorted(given.items())) + "]"
                  if given else "")


def _canonical(value) -> str:
    """A setting as one spelling per value: `2`, `2.0` and `2e0` are `2`; `1e-3` and `0.001`
    are `0.001` (shortest round-trip form); anything not a number as given."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def join_compare(runs: list[dict], *, preset, fewshot, with_bench: bool, root, data_dir,
                 device, tag: str, log: Log = noop) -> dict[str, Any]:
    """`compare`'s result from its trained cells (their rows' `experiment` tag `tag`): few-shot
    and bench rows where asked (and not already measured), then the table from the CSVs."""
    import pandas as pd

    from mixerbench.models import label_of, model_info
    from mixerbench.report import compare_name, compare_table, recipe_settings, regenerate

    from mixerbench.results import device_name
    from mixerbench.runtime import resolve_device

    here = device_name(resolve_device(device)) if with_bench else None
    described, precision = {}, {}
    for s in runs:
        rec = description_of(s)
        described[label_of(rec)] = rec
        # the runs' precision where they trained on this device; runs reused from another
        # device (bf16 on a GPU, benched now on a CPU that may have no bf16 units) get this
        # device's default, as a plain `bench` would
        dtype = s.get("dtype") if s.get("device_name") == here else None
        precision.setdefault(dtype, {})[label_of(rec)] = rec
    ds_name = runs[0]["dataset"]
    if fewshot:
        for s in runs:
            fewshot_rows(s, (fewshot,), root=root, data_dir=data_dir, device=device, log=log)
    if with_bench:  # in the precision the runs trained in: a bf16 recipe's speed is bf16's
        for dtype, recs in precision.items():
            bench_rows(list(recs.values()), root=root, device=device, dtype=dtype,
                       batch_size=min(256, int(_batch_of(preset) or 256)), log=log)
    zoo = pd.DataFrame([
        dict(model_info(r["name"], num_classes=r["num_classes"], img_size=r["img_size"],
                        patch_size=r.get("patch_size"), **r.get("overrides", {})), name=label)
        for label, r in described.items()])
    order = {s["run_id"]: i for i, s in enumerate(runs)}
    acc = results.load("accuracy", root)
    acc = acc[acc["run_id"].isin(order) & (acc["kind"].astype(str) != "evaluate")]
    # the table lists models in the order of their rows: the cells' order, not the order in
    # which launched jobs happened to finish and append
    acc = acc.sort_values("run_id", key=lambda ids: ids.map(order), kind="stable")
    thr = results.load("throughput", root, required=False)
    few = results.load("fewshot", root, required=False)
    if fewshot:  # its own probes only: another of these runs (an evaluate's) is not this table's
        few = own_probe_rows(few, [own_probe(s, device) for s in runs], fewshot)
    # the table as `plot` regenerates it (tables/compare-*), its probes those of these runs
    table = compare_table(acc, thr, few, dataset=ds_name, zoo_df=zoo, shots=fewshot,
                          settings=recipe_settings(root, acc))
    # tables/compare-* hold the runs of each compare tag and of their recipes (`plot`); runs
    # all trained by earlier commands of the same recipe (a `pretrain` of these settings) left
    # no row of this tag for a file to be made from
    ours = acc["experiment"].astype(str).eq(tag).any()
    written = regenerate(root, None, ["compare"])["written"] if ours else []
    notes = [] if ours else [
        "every run was read back from an earlier command of the same recipe, so no "
        "tables/compare-* file holds this table; `mixerbench plot` draws those from runs a "
        "compare trained"]
    return dict(table=table, runs=runs, dataset=ds_name, written=written, notes=notes,
                title=compare_name(ds_name, tag)[1])


def _batch_of(preset: str | None) -> int | None:
    from mixerbench.presets import get_preset

    return get_preset(preset).data.batch_size if preset else None


# ------------------------------------------------------------------------- paper artifacts

@dataclass(frozen=True)
class Budget:
    """How big a scaled-down reproduction is: the preset (and its per-family models), the
    epochs over the full training split, the default dataset and settings on top of the preset.
    """

    preset: str
    epochs: float | None   # None: the preset's own
    dataset: str
    overrides: tuple = ()  # (key, value) pairs applied after the preset
    # data-scaling: the epochs over the full split that every subset's run gets in steps
    # (None: `epochs`). Equal compute per subset, as in the paper, whose 100 % point is itself
    # a short run (7 epochs of JFT-300M): the largest subset is not trained to convergence.
    scaling_epochs: float | None = None


BUDGETS = {
    # mnist-5k, 28 px: minutes on 2 CPU cores; shows the pipelines run, not the paper's trends
    "smoke": Budget("smoke", None, "mnist-5k", scaling_epochs=2),
    # CIFAR-10 at 32 px with the smoke preset's small models (flip allowed: natural images),
    # 10 epochs over the full training split; an hour or more per experiment on 2 CPU cores
    # (needs a local copy, --data-dir)
    # data-scaling: 10 epochs' steps per subset (333 at 3 %, the paper's 7 at 100 % is fewer);
    # 30 would take about 4 h 30 min for the 12 runs on 2 cores (ResNet-18 at ~700 img/s)
    "cpu": Budget("smoke", 10, "cifar10", (("data.pipeline", "small"), ("model.img_size", "32"))),
    # CIFAR-10 with the cifar10-scratch recipe: minutes on one GPU
    "small": Budget("cifar10-scratch", 10, "cifar10"),
    "full": Budget("cifar10-scratch", None, "cifar10"),
}
# Paper Figure 2 (right): equal compute per subset, 233 / 70 / 23 / 7 epochs for 3 / 10 / 30 / 100 %.
SCALING_EPOCHS = {0.03: 233, 0.10: 70, 0.30: 23, 1.0: 7}


def _budget(budget: str, dataset: str | None, overrides: dict | None = None):
    """(preset, epochs, dataset, overrides): the budget's, the user's `--set` on top."""
    if budget not in BUDGETS:
        raise UserError(f"Unknown budget '{budget}'; choose {', '.join(BUDGETS)}.")
    b = BUDGETS[budget]
    return b.preset, b.epochs, dataset or b.dataset, {**dict(b.overrides), **(overrides or {})}


def _common_flags(epochs, data_dir, device, seed=0) -> dict:
    return {"epochs": epochs, "seed": seed, "device": device,
            "data.data_dir": str(data_dir) if data_dir else None}


def reproduce_table1(*, root=None, **_) -> dict:
    """Paper Table 1 (architecture specifications): our zoo's seven Mixers beside the paper's.

    Claim: S/32 ... H/14 have 19 / 18 / 60 / 59 / 206 / 207 / 431 M parameters without head.
    Measures: parameter counts and shapes of `mixerbench.models`, built on the meta device.
    Expected: every row matches (column `match`). Runtime: seconds, no data, no training.
    """
    import pandas as pd

    from mixerbench.models import model_info, paper_models
    from mixerbench.report import regenerate, table1

    zoo = pd.DataFrame([model_info(n) for n in paper_models()])
    done = regenerate(root, None, ["table1"], zoo_df=zoo)
    return dict(table=table1(zoo), written=done["written"])


def reproduce_throughput(*, root=None, device=None, models=None, batch_size=None,
                         budget="smoke", **_) -> dict:
    """Paper Tables 2-3 throughput column: the paper's models benchmarked on this device.

    Claim: on TPU-v3, Mixer-B/16 runs at 1.6x ViT-B/16 (1384 vs 861 img/s/core) and Mixer-L/16
    at 1.5x ViT-L/16 (419 vs 280). Measures: inference and training img/s per device, side by
    side in one process, each model's ratio to the first, and the paper's ratio beside it.
    Expected: on GPUs the ordering depends on the implementation (timm's RTX 4090 table has
    ViT-B/16 slightly ahead of Mixer-B/16; docs/paper-notes.md §8). Runtime: about a minute per model on
    one GPU; on CPU the smoke budget benches the B/32-B/16 sizes at batch 8.
    """
    from mixerbench.bench import bench
    from mixerbench.report import regenerate
    from mixerbench.runtime import resolve_device

    dev = resolve_device(device)
    cpu = dev == "cpu"
    models = models or (["mixer-b16", "vit-b16", "bit-r50x1", "mixer-b32", "vit-b32", "mixer-s32"]
                        if cpu else ["mixer-b16", "vit-b16", "bit-r50x1", "mixer-l16", "vit-l16",
                                     "mixer-s16", "mixer-b32", "mixer-s32"])
    rows = bench(models, mode="both", device=dev,
                 batch_size=batch_size if batch_size is not None else 8 if cpu else 256,
                 repeats=3, steps_per_repeat=3 if cpu else 20, warmup=1 if cpu else 10,
                 root=root)
    done = regenerate(root, None, ["throughput"])
    return dict(rows=rows, written=done["written"])


def reproduce_shuffle(*, root=None, dataset=None, budget="smoke", device=None,
                      data_dir=None, overrides=None, launcher: Launcher | None = None,
                      log: Log = noop, **_) -> dict:
    """Paper Figure 4: invariance of Mixer to a fixed permutation of patches and pixels.

    Claim: a Mixer trained on images whose 16x16 patches and the pixels inside them are
    shuffled (one fixed permutation for all images) learns exactly as well as on the originals;
    a ResNet is hurt; with all pixels shuffled globally both drop (Mixer about 45 %, ResNet about
    75 %, linear 5-shot on ImageNet after JFT-300M pre-training).
    Measures: the budget's Mixer and ResNet each trained three times on `dataset` (original,
    patch+pixel shuffle with the Mixer's patch size, global shuffle), then test top-1 and linear
    5-shot top-1 under the same permutation. The probe runs on `dataset` itself (the paper
    probes ImageNet after JFT): its rows say so in `probe_dataset`. Rows go to shuffle.csv.
    Expected: Mixer's original and patch rows equal within seed noise, ResNet's patch row lower,
    both global rows lower. Runtime: smoke budget about 3 minutes on 2 CPU cores; cpu budget
    (CIFAR-10) about 40 minutes; small budget minutes on one GPU.
    """
    from mixerbench.report import regenerate

    root = results.writable_results_dir(root)  # refused before any cell is trained or launched
    cells = shuffle_cells(root=root, dataset=dataset, budget=budget, device=device,
                          data_dir=data_dir, overrides=overrides)
    runs = run_cells(cells, launcher, log)
    if not _joined_here():
        return {}
    out = []
    for cell, s in zip(cells, runs):
        kind = cell.label["shuffle"]
        few5 = _fewshot5(s, root, data_dir, device)
        for metric, measured in _metric_rows(s, few5):
            # its top-1 went through the run's own eval crop, its probe through the probe's
            row = dict(run_id=s["run_id"], recipe_id=s.get("recipe_id"), model=s["model"],
                       family=s.get("family"), dataset=s["dataset"], train_shuffle=kind,
                       eval_shuffle=kind, metric=metric, img_size=s["img_size"],
                       steps=s["steps"], probe_dataset=probe_of(metric, s["dataset"]),
                       **{"pipeline": s.get("pipeline"), **measured})
            # once per observation (results.KEYS): an `evaluate --shuffle` of the run under
            # another permutation, crop or precision, or on a capped part of the split,
            # measured something else and does not stand in for this row
            results.append_once("shuffle", row, root)
            out.append(row)
    written = regenerate(root, None, ["shuffle"])["written"]
    return dict(rows=out, written=written)


def shuffle_cells(*, root, dataset=None, budget="smoke", device=None, data_dir=None,
                  overrides=None, **_) -> list[Cell]:
    """The cells of `reproduce shuffle`: the budget's Mixer and ResNet, each on the original,
    patch-shuffled and globally shuffled images (the Mixer's patch size for both)."""
    from mixerbench.models import get_spec, paper_family
    from mixerbench.presets import family_model

    preset, epochs, ds, over = _budget(budget, dataset, overrides)
    # the paper's Figure 4 sides: its subject (the Mixer) and its convolutional baseline
    subject, convolution = paper_family("subject"), paper_family("convolution")
    mixer = family_model(preset, subject)[0]
    patch = int(over.get("model.patch_size") or mixer.patch_size or get_spec(mixer.name).patch_size)
    return [Cell(preset, family, str(root), dataset=ds, experiment="shuffle",
                 flags=_common_flags(epochs, data_dir, device),
                 overrides={**over, "data.shuffle": kind, "data.shuffle_patch": str(patch)},
                 label=dict(model=family, shuffle=kind))
            for family in (subject, convolution) for kind in ("none", "patch", "global")]


def _fewshot5(summary: dict, root, data_dir, device) -> dict:
    """The run's linear 5-shot probe of the whole of its eval split (fewshot.csv's row: top1_mean,
    split and the probe's settings), measured now or read back; {} when there is none."""
    few = fewshot_rows(summary, (5,), root=root, data_dir=data_dir, device=device)
    return few[0] if few else _fewshot_of(root, summary, 5, device)


def _fewshot_of(root, summary: dict, shots: int, device) -> dict:
    """The row `fewshot_rows` recorded for `summary`'s run on `device` (`own_probe`)."""
    hit = own_probe_rows(results.load("fewshot", root, required=False),
                         [own_probe(summary, device)], shots)
    return {k: (None if v != v else v) for k, v in hit.iloc[-1].items()} if len(hit) else {}


def _metric_rows(s: dict, few5: dict) -> list[tuple[str, dict]]:
    """(metric, columns) of a run's two measurements in shuffle.csv / scaling.csv: its top-1 on
    its own split, with its training's provenance, and its linear 5-shot probe with the probe's
    split, settings and provenance (fewshot.csv's row): a GPU's probe of a CPU-trained run ran
    in another precision on another device than the run, and its row says so. A run with no
    probe keeps its own provenance (its seed above all) on the empty probe row."""
    own = {k: s.get(k) for k in results.PROVENANCE}
    probe = {k: few5.get(k) for k in ("split", "shots_split", "l2_reg", "num_seeds", "pipeline",
                                      *(results.PROVENANCE if few5 else ()))}
    return [("top1", dict(own, top1=s["top1"], split=s["split"])),
            ("fewshot5", dict(own, **probe, top1=few5.get("top1_mean")))]


def scaling_steps(full_epochs: float, train_size: int, batch_size: int) -> int:
    """Optimizer steps of every data-scaling run: `full_epochs` over the whole training split,
    so each subset gets the same compute (paper Figure 2 right: 233 / 70 / 23 / 7 epochs)."""
    return max(1, round(full_epochs * train_size / batch_size))


def reproduce_data_scaling(*, root=None, dataset=None, budget="smoke", device=None,
                           data_dir=None, models=None, overrides=None,
                           launcher: Launcher | None = None, log: Log = noop, **_) -> dict:
    """Paper Figure 2 (right): accuracy against the amount of pre-training data.

    Claim: on 3 / 10 / 30 / 100 % subsets of JFT-300M at equal compute (233 / 70 / 23 / 7
    epochs), Mixers overfit strongly on the smallest subset and keep improving with more data,
    gaining faster than BiT; the gap to ViT shrinks with scale.
    Measures: the budget's Mixer, ViT and ResNet trained on class-balanced, nested 3 / 10 / 30 /
    100 % subsets of `dataset`, every run the same number of optimizer steps (the budget's
    epochs over the full split), then test top-1 and linear 5-shot top-1. The probe runs on
    `dataset` itself (the paper probes ImageNet after JFT): rows say so in `probe_dataset`.
    Rows go to scaling.csv, with each run's steps and epochs.
    Expected: the paper's claim is the test; the committed rows and results/README.md say what
    was measured. Runtime: smoke budget about 5 minutes on 2 CPU cores (2 epochs of mnist-5k:
    under-trained at 100 %); cpu budget (CIFAR-10, 10 epochs' steps at 100 %, so 333 at 3 %)
    about 47 minutes on 2 CPU cores (12 runs of 3-4 minutes and
    their probes).
    """
    from mixerbench.report import regenerate

    cells = scaling_cells(root=results.results_dir(root), dataset=dataset, budget=budget,
                          device=device, data_dir=data_dir, models=models, overrides=overrides)
    root = results.writable_results_dir(root)  # refused before any cell is trained or launched
    runs = run_cells(cells, launcher, log)
    if not _joined_here():
        return {}
    out = []
    for cell, s in zip(cells, runs):
        few5 = _fewshot5(s, root, data_dir, device)
        for metric, measured in _metric_rows(s, few5):
            row = dict(run_id=s["run_id"], recipe_id=s.get("recipe_id"), model=s["model"],
                       family=s.get("family"), dataset=s["dataset"],
                       fraction=cell.label["fraction"], epochs=s["epochs"], steps=s["steps"],
                       metric=metric, probe_dataset=probe_of(metric, s["dataset"]),
                       **{k: measured[k] for k in ("top1", "split", *results.PROVENANCE)})
            # once per observation (results.KEYS): a probe in another precision is another
            results.append_once("scaling", row, root)
            out.append(row)
    written = regenerate(root, None, ["data-scaling"])["written"]
    return dict(rows=out, written=written)


def scaling_cells(*, root, dataset=None, budget="smoke", device=None, data_dir=None,
                  models=None, overrides=None, **_) -> list[Cell]:
    """The cells of `reproduce data-scaling`: each model on each nested subset, every run the
    same number of steps (the budget's epochs over the full split)."""
    from mixerbench.data import get_dataset
    from mixerbench.models import paper_families
    from mixerbench.presets import get_preset

    preset, epochs_full, ds, over = _budget(budget, dataset, overrides)
    models = models or paper_families()  # --models picks some of the families
    base = get_preset(preset)
    # smoke: 2 epochs of the full set at batch 32, so 12 runs fit in minutes on a CPU
    full = BUDGETS[budget].scaling_epochs or epochs_full or base.epochs or 1
    if budget == "smoke":  # the smallest subset must still fill a batch: 3 % of 4,000 is 120
        over.setdefault("data.batch_size", "32")
    batch = int(over.get("data.batch_size") or base.data.batch_size)
    n_full = len(get_dataset(ds, base.data.train_split, data_dir=data_dir))
    steps = scaling_steps(full, n_full, batch)
    # the same ten evaluations for every subset (once per epoch would evaluate the 3 % run
    # 333 times on the whole test split at the cpu budget)
    return [Cell(preset, model, str(root), dataset=ds, experiment="data-scaling",
                 flags={**_common_flags(None, data_dir, device), "steps": steps},
                 overrides={"eval_every": str(max(1, steps // 10)), **over,
                            "data.fraction": str(fraction)},
                 # the steps it trains: a `steps` setting (`--steps`) wins over the budget's
                 label=dict(model=model, fraction=fraction, steps=int(over.get("steps") or steps)))
            for model in models for fraction in SCALING_EPOCHS]


def reproduce_transfer(*, root=None, dataset=None, upstream=None, budget="smoke",
                       device=None, data_dir=None, overrides=None,
                       launcher: Launcher | None = None, log: Log = noop, **_) -> dict:
    """Paper section 3 (fine-tuning) and Appendix C: pre-train, then fine-tune at 1x and 2x.

    Claim: Mixer fine-tunes at higher resolution by expanding each token-mixing MLP
    block-diagonally (K^2 copies, K = 2 here), which starts out computing the mean of the K^2
    image parts' outputs; pre-training helps transfer (Tables 2-3).
    Measures: the budget's Mixer pre-trained on `upstream` (the budget's settings, e.g. a
    `--set data.fraction` applies here only; `--set seed` seeds every stage, `--set steps` and
    `max_eval_examples` size every stage), then fine-tuned on `dataset` with the paper's
    fine-tuning recipe (SGD 0.9, cosine, clip 1, no weight decay or stochastic depth, a fresh
    zero head) at the pre-training resolution and at twice it, against the same Mixer trained
    from scratch on `dataset` with the same recipe and number of steps. The downstream runs use
    all of `dataset`. Rows go to accuracy.csv; the joined table to tables/transfer.csv.
    Expected: both fine-tuned runs beat the from-scratch run at equal downstream steps.
    Runtime: smoke budget (synthetic -> mnist-5k by default, or `--upstream cifar10` with a
    local copy) a few minutes on 2 CPU cores; cpu budget (CIFAR-10 -> mnist-5k) about 15
    minutes; small budget minutes on a GPU.
    """
    from mixerbench.models import paper_family
    from mixerbench.report import regenerate, transfer_table

    root = results.writable_results_dir(root)  # refused before any cell is trained or launched
    up_cell, dataset = transfer_upstream(root=root, dataset=dataset, upstream=upstream,
                                         budget=budget, device=device, data_dir=data_dir,
                                         overrides=overrides)
    up, = run_cells([up_cell], launcher, log)
    # both fine-tuning runs start from the upstream weights its summary recorded (or, for a run
    # from before summaries did, the file as it is now): one changed in between is refused
    from mixerbench.models.weights import weights_sha256

    pinned = up.get("checkpoint_sha256") or weights_sha256(up["run_dir"])
    runs = run_cells(_downstream_cells(up["run_dir"], description_of(up), dataset, budget, root,
                                       data_dir, device, pinned, seed=_seed_of(up_cell),
                                       sized=_sizes(overrides)),
                     launcher, log)
    if not _joined_here():
        return {}
    ids = [s["run_id"] for s in runs]
    written = regenerate(root, None, ["transfer"])["written"]
    written += regenerate(root, None, ["curves"], runs=ids)["written"]
    table = transfer_table(results.load("accuracy", root))
    table = table[table["run_id"].isin(ids)]
    return dict(table=table, written=written, upstream=up)


def transfer_upstream(*, root, dataset=None, upstream=None, budget="smoke", device=None,
                      data_dir=None, overrides=None, **_) -> tuple[Cell, str]:
    """The pre-training cell of `reproduce transfer`, and the downstream dataset."""
    from mixerbench.models import paper_family

    preset, epochs, up_default, over = _budget(budget, None, overrides)
    upstream = upstream or up_default
    if budget == "smoke" and upstream == "mnist-5k" and dataset is None:
        upstream = "synthetic"  # the embedded pair when no CIFAR-10 copy is given
    dataset = dataset or "mnist-5k"
    if dataset == upstream:
        raise UserError(f"Transfer needs two datasets; pass --dataset other than {upstream}.")
    subject = paper_family("subject")  # the paper's transfer claims are the Mixer's
    return Cell(preset, subject, str(root), dataset=upstream, experiment="transfer",
                flags=_common_flags(epochs, data_dir, device), overrides=over,
                label=dict(model=subject, stage=f"pre-train on {upstream}")), dataset


def _pipeline_of(dataset: str) -> str | None:
    """The training pipeline a dataset's images need instead of a recipe's (its registry
    record says: `digits` for digits, which are never mirrored), else None."""
    from mixerbench.data import dataset_record

    record = dataset_record(dataset)
    return record.pipeline if record else None


# The `--set` settings of `reproduce transfer` that size its downstream runs as well as its
# upstream one: how long they train and on how many test images they are scored. The budget's
# other settings (a subset fraction, a pipeline) are the upstream recipe's only.
SIZES = ("steps", "max_eval_examples")


def _sizes(overrides: dict | None) -> dict:
    return {k: v for k, v in (overrides or {}).items() if k in SIZES}


def _seed_of(up_cell: Cell):
    """The `--set seed` of a transfer (None: not given). A seed is one run of the whole
    pipeline: it seeds the pre-training and the three downstream runs alike (the claims pool
    fine-tunes by their upstream's recipe and count seeds by the rows' seed); the budget's
    other settings stay upstream."""
    return up_cell.overrides.get("seed")


def _downstream_cells(up_dir: str, rec: dict, dataset: str, budget: str, root, data_dir,
                      device, pinned: str | None = None, seed=None,
                      sized: dict | None = None) -> list[Cell]:
    """Transfer's three downstream runs: fine-tuned from the upstream run in `up_dir` (its
    model `rec`) at 1x and 2x, and the same architecture from scratch, all with the paper's
    fine-tuning recipe and equal steps, at `seed` (a `--set` value; None: the default).
    `pinned`: the sha256 of the upstream weights both fine-tuning runs must start from (one
    changed in between is refused, never mixed). `sized`: the `SIZES` settings the user gave
    (none: the budget's 300 or 1,000 steps on the whole test split)."""
    from mixerbench.models import get_spec

    family = get_spec(rec["name"]).family
    sized = dict(sized or {})
    steps = int(sized.pop("steps", None) or (300 if budget in ("smoke", "cpu") else 1000))
    # The paper's fine-tuning recipe ('finetune' preset: SGD 0.9, cosine, clip 1, no weight
    # decay, lr 0.03 from its grid) for all three downstream runs, so only the starting weights
    # differ; the upstream's settings (a subset fraction, its pipeline) do not carry over.
    # Digits are never mirrored (a flipped 2 is not a 2).
    down = {"data.batch_size": "32" if budget in ("smoke", "cpu") else "512",
            "optim.warmup_steps": str(steps // 10), "eval_every": str(steps),
            "data.eval_pipeline": "eval-plain",
            "data.pipeline": _pipeline_of(dataset) or "small", **sized}
    if seed is not None:
        down["seed"] = str(seed)
    flags = {**_common_flags(None, data_dir, device), "steps": steps}
    pin = {"init_sha256": pinned} if pinned else {}  # the upstream weights, as they were hashed
    cells = [Cell("finetune", None, str(root), dataset=dataset, kind="finetune",
                  experiment="transfer", init=up_dir,
                  flags={**flags, "model.img_size": f"{k}x", **pin}, overrides=down,
                  label=dict(model=family, stage=f"fine-tune on {dataset} at {k}x"))
             for k in (1, 2)]
    cells.append(Cell("finetune", rec["name"], str(root), dataset=dataset, kind="pretrain",
                      experiment="transfer", flags=flags,
                      overrides={**down, "model.img_size": str(rec["img_size"]),
                                 "model.patch_size": str(rec["patch_size"]),
                                 **_arch_settings(rec)},
                      label=dict(model=family, stage=f"from scratch on {dataset}")))
    return cells


def _arch_settings(rec: dict) -> dict:
    """`--set` overrides that rebuild a model description's architecture from scratch (width,
    depth, gelu, other constructor options; not its regularisers)."""
    over = {}
    for k, v in (rec.get("overrides") or {}).items():
        if k in ("width", "depth", "gelu"):
            over[f"model.{k}"] = str(v)
        elif k not in ("drop_path", "dropout"):
            over[f"model.options.{k}"] = json.dumps(v)
    return over


@dataclass(frozen=True)
class Released:
    """A released checkpoint timm names, and the paper row it is measured against."""

    checkpoint: str             # timm:<arch>.<tag>
    paper_name: str             # the paper's model (Mixer-B/16)
    upstream: str               # the pre-training dataset of that paper row
    paper_img_size: int | None  # that row's fine-tuning resolution (None: the table does not say)
    crop: str                   # the paper's eval crop for that row (App. C): resmall | resize
    note: str = ""


# The released checkpoints of the paper's models that timm names (ImageNet-1k heads), each set
# against the paper row its provenance gives (`released_of`). The paper reports no ImageNet
# 5-shot number for any of them (its 5-shot curves, Figures 2-4, give no values), so `fewshot`
# rows have nothing beside them.
RELEASED = ("timm:mixer_b16_224.goog_in21k_ft_in1k", "timm:mixer_l16_224.goog_in21k_ft_in1k",
            "timm:vit_base_patch16_224.augreg_in21k_ft_in1k",
            "timm:vit_large_patch16_224.augreg_in21k_ft_in1k",
            "timm:resnetv2_152x4_bit.goog_in21k_ft_in1k")


def released_of(checkpoint: str) -> Released:
    """A released checkpoint and the paper row it is measured against, from its provenance
    (`reference.reference_for`: timm's tag, corrected where timm's own documentation says
    otherwise, and its pretrained_cfg's resolution and head), evaluated with that row's crop
    (App. C: Table 3 resmall-crop, Table 2 resize-crop); resize-crop where no row compares."""
    from timm.models import get_pretrained_cfg

    from mixerbench import reference

    cfg = get_pretrained_cfg(checkpoint[len("timm:"):])
    size = int(cfg.input_size[-1]) if cfg is not None else None
    ref = reference.reference_for(checkpoint, "", size, None,
                                  cfg.num_classes if cfg is not None else None)
    return Released(checkpoint, ref["paper_name"], ref["upstream"], ref["img_size"],
                    ref["crop"].removeprefix("eval-") or "resize", ref["note"])


def reproduce_released(*, root=None, dataset=None, data_dir=None, device=None, real_labels=None,
                       fewshot: bool = False, checkpoints: tuple[Released, ...] | None = None,
                       batch_size: int | None = None, log: Log = noop, **_) -> dict:
    """Paper Tables 2-3 (ImageNet and ReaL top-1) from the released checkpoints timm names.

    Claim: the paper's ImageNet-21k-pre-trained Mixer, ViT and BiT reach the top-1 and ReaL
    top-1 of Tables 2-3 on ImageNet val.
    Measures: each checkpoint of `checkpoints` (default `RELEASED`) on `dataset`'s validation
    split (`imagenet-1k`: the hub's, or a local copy through --data-dir; or a folder in the
    ImageNet layout with its ILSVRC2012_val_* file names) at the checkpoint's own resolution
    with the paper's crop for its row: top-1, ReaL top-1 with `real_labels` (real.json,
    matched by file name), and with `fewshot` the linear 5-shot probe on ImageNet (shots from
    train). Rows go to released.csv; tables/released.{csv,md} puts the paper's numbers and the
    differences beside them.
    Weights: from the Hugging Face cache without network access when there (as timm does), else
    downloaded; every checkpoint is located and loaded once before any is evaluated.
    All or nothing: every input is checked first (batch size, ReaL labels, each checkpoint
    loadable), the rows are written together in one atomic step after the last evaluation (a
    failure or Ctrl-C on the way writes none), and a checkpoint already recorded the same way
    (split, resolution, crop, ReaL and 5-shot or not: `results.KEYS`) is not added again.
    Expected: close to the paper's row where the released weights are the paper's own (our
    resize filters are not TensorFlow's, so small differences remain); timm's
    `goog_in21k_ft_in1k` Mixers are the paper's ImageNet-1k models (docs/paper-notes.md §8)
    and are set against its ImageNet rows (76.44 / 71.76 %), as each row's note says. Runtime: ImageNet val is 50,000 images per model, a
    job for a GPU; no run of the full list is committed.
    """
    from mixerbench.evaluate import evaluate, load_real_labels
    from mixerbench.events import Event as ProgressEvent
    from mixerbench.models import get_spec
    from mixerbench.models.weights import load_model, weights_sha256
    from mixerbench.report import regenerate, released_table
    from mixerbench.train import Event as TrainEvent

    checkpoints = tuple(checkpoints or (released_of(c) for c in RELEASED))
    dataset = dataset or "imagenet-1k"
    batch_size = 256 if batch_size is None else batch_size  # 0 is a mistake, not "the default"
    if not 1 <= batch_size <= 2**20:
        raise UserError(f"--batch-size {batch_size} must be between 1 and {2**20:,} images.")
    root = results.writable_results_dir(root)
    if real_labels is not None:  # read and checked once, before any weights are
        real_labels = load_real_labels(real_labels)
    shas = {}
    for c in checkpoints:  # fail fast: every weights file found (or fetched) before any work,
        get_spec(c.checkpoint)  # checked against its blob's sha256 name, which its row records
        shas[c.checkpoint] = weights_sha256(c.checkpoint)
    for i, c in enumerate(checkpoints, 1):  # and loadable: a damaged one found now, not after
        log(TrainEvent.STAGE, dict(what=f"checking {c.paper_name} loads ({i}/{len(checkpoints)})"))
        # hours of evaluating the ones before it; dropped at once
        load_model(c.checkpoint, sha256=shas[c.checkpoint])
    results.ensure_appendable("released", root)
    rows = []
    for i, c in enumerate(checkpoints, 1):
        log(CellEvent.CELL, dict(checkpoint=c.checkpoint, index=i, of=len(checkpoints)))

        def stages(event, info, _c=c):  # each stage of the evaluation, named by its model
            if event == ProgressEvent.PROGRESS:
                log(TrainEvent.STAGE, dict(what=f"{_c.paper_name}: {info['what']}"))

        out = evaluate(c.checkpoint, dataset, split="validation", crop=c.crop,
                       data_dir=str(data_dir) if data_dir else None,
                       real_labels=real_labels, fewshot="5" if fewshot else None, device=device,
                       batch_size=batch_size, log=stages, sha256=shas[c.checkpoint])
        real = out.get("real") or {}
        fs = next((r for r in out.get("fewshot") or [] if r["shots"] == 5), {})
        acc = out["rows"]["accuracy"][0]
        row = dict(checkpoint=c.checkpoint, weights_sha256=shas[c.checkpoint],
                   model=out["model"], family=acc["family"],
                   paper_name=c.paper_name, upstream=c.upstream, paper_img_size=c.paper_img_size,
                   note=c.note, dataset=out["dataset"], split=out["split"],
                   img_size=out["img_size"], pipeline=out["pipeline"], n=out["n"],
                   top1=out["top1"], top5=out["top5"], real_top1=real.get("top1"),
                   real_n=real.get("n"), fewshot5_mean=fs.get("top1_mean"),
                   fewshot5_std=fs.get("top1_std"),
                   **{k: acc[k] for k in results.PROVENANCE})
        rows.append(row)
    # one atomic write for every checkpoint's row, after the last evaluation
    kept = results.append_rows("released", rows, root)
    written = regenerate(root, None, ["released"])["written"]
    table = released_table(results.load("released", root))
    notes = [f"released.csv already held {r['checkpoint']} measured this way (split, resolution, "
             "crop, ReaL and 5-shot or not); the recorded row was kept, none added" for r in kept]
    return dict(table=table[table["checkpoint"].isin([c.checkpoint for c in checkpoints])],
                written=written, kept=kept, notes=notes)


# ------------------------------------------------------------------ the transfer protocol

# Paper App. C: the fine-tuning lr grid for ImageNet, CIFAR-10/100, Pets and Flowers.
AVG5_LRS = (0.003, 0.01, 0.03, 0.06)
# budget -> (default datasets, lr grid, settings on top of each dataset's recipe)
AVG5_BUDGETS = {
    # the paper's protocol: each dataset's own recipe (`finetune-<dataset>`: batch 512, 500 to
    # 20,000 steps), all of each test split
    "full": (("imagenet-1k", "cifar10", "cifar100", "pets", "flowers102"), AVG5_LRS, {}),
    # the embedded sets, a few steps at batch 32 on 2 CPU cores: runs every stage, measures nothing
    "smoke": (("mnist-5k", "synthetic"), (0.003, 0.03),
              {"steps": "6", "data.batch_size": "32", "optim.warmup_steps": "1", "eval_every": "6",
               "data.eval_batch_size": "250"}),
}
AVG5_RESOLUTIONS = (1, 2)  # the trained resolution and twice it (Table 3's 224 and 448 rows)


# The paper's pre-training names (`reference.weights_provenance`) as registry dataset names.
_UPSTREAMS = {"imagenet": "imagenet-1k", "imagenet21k": "imagenet-21k", "jft300m": "jft-300m"}


def upstream_of_tag(src: str) -> str:
    """The registry name of the dataset released timm weights were pre-trained on, as their
    provenance says (`reference.weights_provenance`: the tag, `in21k` / `in1k`, corrected where
    timm's own documentation says otherwise), else ""."""
    from mixerbench import reference

    if not str(src).startswith("timm:"):
        return ""
    return _UPSTREAMS.get(reference.weights_provenance(src)["upstream"], "")


def _source_of(init: str, upstream: str | None) -> dict:
    """What the avg5 rows say about the --init weights: the architecture's label and family, and
    the dataset they were pre-trained on (given, a run's own config, or released weights'
    provenance: `upstream_of_tag`)."""
    from mixerbench.data import canonical_name
    from mixerbench.evaluate import _run_config
    from mixerbench.models import get_spec, label_of
    from mixerbench.models.weights import source_description

    rec = source_description(init, finetuning=True)
    if upstream is None:
        cfg, _ = _run_config(init)
        if cfg is not None:
            upstream = canonical_name(cfg.data.dataset) or cfg.data.dataset
        else:
            upstream = upstream_of_tag(str(init))
    name = rec["name"]
    try:
        family = get_spec(name.split(".")[0]).family
    except UserError:
        family = ""
    return dict(model=label_of(rec), family=family,
                upstream=upstream or "", img_size=rec["img_size"])


def reproduce_avg5(*, root=None, init=None, dataset=None, upstream=None, budget="smoke",
                   device=None, data_dir=None, overrides=None, launcher: Launcher | None = None,
                   log: Log = noop, **_) -> dict:
    """Paper section 3 and App. C, "Avg 5" of Tables 2-3: the transfer protocol from given weights.

    Claim: pre-trained Mixers fine-tune well on ImageNet, CIFAR-10, CIFAR-100, Pets and
    Flowers; e.g. Mixer-B/16 from ImageNet-21k averages 92.50 % over the five at 224 px,
    Mixer-L/16 93.63 % at 224 and 93.86 % at 448 (Table 3; the paper gives the mean only).
    Measures: for each dataset and for 1x and 2x the trained resolution, the dataset's
    fine-tuning recipe (found by its canonical name) from `init` with every lr of the grid
    {0.003, 0.01, 0.03, 0.06}, each trained on train minus the seeded class-stratified minival
    and scored on the minival; the best lr is then fine-tuned on all of train and reported on
    test (above 1x with resize-crop, App. C). Rows go to avg5.csv (with the grid's minival
    scores); the table, our per-dataset top-1 and mean beside the paper's Avg 5 and ImageNet
    top-1, to tables/avg5.{csv,md}.
    Expected: close to the paper's Avg 5 for the same released weights (the paper averages 3
    fine-tuning runs, std < 0.15; this is one). Runtime: the full budget is 40 grid runs and 10
    final ones, ImageNet's 20,000 steps at batch 512 (8 epochs) the longest; a GPU job. The
    smoke budget (mnist-5k and synthetic, 6 steps a run) takes minutes on 2 CPU cores.
    """
    from mixerbench.data import canonical_name
    from mixerbench.models.weights import weights_sha256
    from mixerbench.report import avg5_table, regenerate

    # the weights every cell starts from, hashed once: a cell that finds --init changed (a run
    # re-trained under its name midway) is refused rather than mixed in (resolve_inputs)
    init_sha = weights_sha256(str(init)) if init else None
    cell, pairs, lrs = avg5_cells(root=results.results_dir(root), init=init, dataset=dataset,
                                  budget=budget, device=device, data_dir=data_dir,
                                  overrides=overrides, init_sha256=init_sha)
    source = _source_of(init, upstream)
    root = results.writable_results_dir(root)  # refused before any cell is trained or launched
    grid_runs = run_cells([cell(ds, k, lr, True) for ds, k in pairs for lr in lrs], launcher, log)
    grids, best, notes = {}, {}, {}
    for i, pair in enumerate(pairs):
        runs = grid_runs[i * len(lrs):(i + 1) * len(lrs)]
        grids[pair] = [dict(lr=lr, minival_top1=s["top1"], run_id=s["run_id"]) for lr, s in zip(lrs, runs)]
        best[pair] = best_lr(grids[pair])
        notes[pair] = "; ".join(n for n in (avg5_caveat(budget, source["upstream"], pair[0]),
                                            lr_tie(grids[pair])) if n)
    finals = run_cells([cell(ds, k, best[(ds, k)]["lr"], False) for ds, k in pairs], launcher, log)
    if not _joined_here():
        return {}
    done = _done_keys("avg5", root, "run_id")
    ids = []
    for (ds, k), s in zip(pairs, finals):
        ids.append(s["run_id"])
        if (s["run_id"],) in done:
            continue
        results.append_row("avg5", dict(
            run_id=s["run_id"], recipe_id=s.get("recipe_id"), model=source["model"],
            family=source["family"], init=str(init), init_sha256=init_sha,
            upstream=source["upstream"], budget=budget,
            dataset=canonical_name(ds) or ds, split=s["split"], resolution=f"{k}x",
            img_size=s["img_size"], pipeline=_eval_pipeline(s), steps=s["steps"],
            lr=best[(ds, k)]["lr"],
            lr_grid=";".join(f"{g['lr']:g}={g['minival_top1']:.2f}" for g in grids[(ds, k)]),
            minival_top1=best[(ds, k)]["minival_top1"], top1=s["top1"], note=notes[(ds, k)],
            **{c: s.get(c) for c in results.PROVENANCE}), root)
    written = regenerate(root, None, ["avg5"])["written"]
    rows = results.load("avg5", root)
    table = avg5_table(rows[rows["run_id"].astype(str).isin(ids)])
    caveats = list(dict.fromkeys(n for n in notes.values() if n))
    return dict(table=table, written=written, runs=finals, notes=caveats)


def avg5_caveat(budget: str, upstream: str, dataset: str) -> str:
    """What an avg5 row cannot show: the smoke budget runs every stage of the protocol in
    minutes (6 steps a run, minivals of a few dozen images), so its numbers check the plumbing
    and measure no transfer, least of all when the weights were pre-trained on the very dataset
    they are fine-tuned on."""
    from mixerbench.data import canonical_name

    if budget != "smoke":
        return ""
    same = (canonical_name(upstream) or upstream) == (canonical_name(dataset) or dataset)
    return ("smoke budget: checks the plumbing, not transfer (a few steps a run"
            + (f", fine-tuned on {dataset}, the dataset the weights were pre-trained on" if same
               else "") + ")")


def lr_tie(grid: list[dict]) -> str:
    """A note when several lrs of the grid tie for the best minival top-1 (`best_lr` takes the
    first of them): the selection then chose nothing."""
    top = max(g["minival_top1"] for g in grid)
    tied = [g for g in grid if g["minival_top1"] == top]
    if len(tied) < 2:
        return ""
    lrs = ", ".join(f"{g['lr']:g}" for g in tied)
    return f"lr grid tie: {lrs} all scored {top:.2f} on minival; the first was taken"


def _eval_pipeline(summary: dict) -> str:
    """The eval crop a finished run used (its config.json)."""
    from mixerbench.config import read_run_config

    cfg = read_run_config(Path(summary["run_dir"]))
    return cfg.data.eval_pipeline if cfg is not None else ""


def avg5_cells(*, root, init=None, dataset=None, budget="smoke", device=None, data_dir=None,
               overrides=None, init_sha256: str | None = None, **_):
    """(cell(dataset, k, lr, grid), [(dataset, k)], lrs): how `reproduce avg5` makes its cells,
    every dataset's recipe found first (one without needs `--set steps=N`). `init_sha256`: the
    sha256 every cell's weights must have (`presets.resolve_inputs` refuses another)."""
    from mixerbench.data import canonical_name
    from mixerbench.presets import finetune_preset

    if not init:
        raise UserError("reproduce avg5 fine-tunes given weights; pass --init SRC (a run "
                        "directory, a .safetensors file or timm:<name>).")
    if budget not in AVG5_BUDGETS:
        raise UserError(f"reproduce avg5 takes --budget {' or '.join(AVG5_BUDGETS)}, not '{budget}'.")
    default, lrs, settings = AVG5_BUDGETS[budget]
    datasets = [d.strip() for d in str(dataset).split(",") if d.strip()] if dataset else list(default)
    if len({canonical_name(d) or d.lower() for d in datasets}) != len(datasets):
        raise UserError(f"--dataset '{dataset}' names a dataset twice; list each once.")
    over = {**settings, **(overrides or {})}
    given = "steps" in over or "epochs" in over
    presets = {d: finetune_preset(d, length_given=given) for d in datasets}

    def cell(ds: str, k: int, lr: float, grid: bool) -> Cell:
        o = dict(over)
        if _pipeline_of(ds):  # digits: a mirrored digit is another class
            o.setdefault("data.pipeline", _pipeline_of(ds))
        if grid:
            o.update({"data.train_split": "train-minus-minival", "data.eval_split": "minival"})
        return Cell(presets[ds], None, str(root), dataset=ds, kind="finetune", init=str(init),
                    experiment="avg5",
                    flags={**_common_flags(None, data_dir, device), "model.img_size": f"{k}x",
                           "optim.lr": lr, **({"init_sha256": init_sha256} if init_sha256 else {})},
                    overrides=o,
                    label=dict(dataset=ds, resolution=f"{k}x", lr=lr,
                               stage="lr grid on minival" if grid else "final on train"))

    return cell, [(ds, k) for ds in datasets for k in AVG5_RESOLUTIONS], lrs


EXPERIMENTS: dict[str, Callable[..., dict]] = {
    "released": reproduce_released,
    "table1": reproduce_table1,
    "throughput": reproduce_throughput,
    "shuffle": reproduce_shuffle,
    "data-scaling": reproduce_data_scaling,
    "transfer": reproduce_transfer,
    "avg5": reproduce_avg5,
}


def reproduce(artifact: str, **kw) -> dict:
    from mixerbench.errors import close_matches

    if artifact not in EXPERIMENTS:
        raise UserError(f"Unknown artifact '{artifact}'.{close_matches(artifact, EXPERIMENTS)} "
                        f"Choose from {', '.join(EXPERIMENTS)}.")
    if kw.get("init") and artifact != "avg5":
        raise UserError(f"--init is for reproduce avg5 (weights to fine-tune); reproduce "
                        f"{artifact} trains its own, so drop it.")
    if getattr(kw.get("launcher"), "kind", AUTO) != AUTO and artifact in ("table1", "throughput",
                                                                        "released"):
        raise UserError(f"reproduce {artifact} trains no cells, so --launcher does not apply; "
                        "run it without (throughput measures the machine it runs on).")
    return EXPERIMENTS[artifact](**kw)


# ------------------------------------------------------------------ plans, configs, dry runs

def _planned_cells(name: str, *, root, **kw) -> tuple[list, list[str], list | None]:
    """The training runs `compare` or `reproduce <name>` would make, as (config, label, note)
    triples, before any runs: what `--print-config` lists and `--dry-run` costs. Runs that
    depend on an earlier run's result are planned from what is known: the transfer's
    fine-tuning runs from the upstream run's model at 1x and 2x (their ids depend on its
    weights), the avg5 final runs at the grid's first lr (their cost does not depend on it).
    Also returns notes to print under the plan, and the launch cells of each stage that
    `run_cells` gets in turn (how they will run, `lanes`), None where they cannot be
    built before the runs they depend on."""
    from dataclasses import replace

    from mixerbench.config import validate
    from mixerbench.models import get_spec, paper_family

    kw = {k: v for k, v in kw.items() if k not in ("launcher",)}
    if name == "compare":
        cells = compare_cells(kw.pop("models"), root=root, **kw)
    elif name in ("shuffle", "data-scaling"):
        cells = (shuffle_cells if name == "shuffle" else scaling_cells)(root=root, **kw)
    if name in ("compare", "shuffle", "data-scaling"):
        return [(c.config(), _label(c), "") for c in cells], [], [cells]
    if name == "transfer":
        up_cell, dataset = transfer_upstream(root=root, **kw)
        up = up_cell.config()
        m = up.model
        rec = dict(name=m.name, img_size=m.img_size, patch_size=m.patch_size,
                   overrides={**m.options, **{k: getattr(m, k) for k in ("width", "depth", "gelu")
                                              if getattr(m, k) is not None}})
        *tuned, scratch = _downstream_cells("(the upstream run)", rec, dataset,
                                            kw.get("budget", "smoke"), root, kw.get("data_dir"),
                                            kw.get("device"), seed=_seed_of(up_cell),
                                            sized=_sizes(kw.get("overrides")))
        base = scratch.config()
        out = [(up, _label(up_cell), "")]
        for k, c in zip((1, 2), tuned):  # the upstream model at k times its size, as fine-tuned
            size = (m.img_size or base.model.img_size) * k
            opts = dict(base.model.options)
            if k > 1 and get_spec(m.name).family == paper_family("subject"):  # App. C expansion
                opts["tokens_dim"] = ((m.width or 0) // 2 or 1) * k * k
            cfg = validate(replace(base, model=replace(base.model, img_size=size, options=opts)))
            out.append((cfg, _label(c), "fine-tuned from the upstream run; its id depends on its weights"))
        out.append((base, _label(scratch), ""))
        return out, ["the fine-tuning runs are costed as their model from scratch at 1x and 2x"], None
    if name == "avg5":
        cell, pairs, lrs = avg5_cells(root=root, **kw)
        grid = [cell(ds, k, lr, True) for ds, k in pairs for lr in lrs]
        finals = [cell(ds, k, lrs[0], False) for ds, k in pairs]
        return ([(c.config(), _label(c), "") for c in grid]
                + [(c.config(), _label(c), "lr chosen on minival") for c in finals],
                [f"each final run takes the lr its grid scores best on minival; planned at "
                 f"{lrs[0]:g} (the cost is the same)"], [grid, finals])
    if name in EXPERIMENTS:
        raise UserError(f"reproduce {name} trains nothing, so there is no plan of training "
                        "runs; run it without --dry-run or --print-config.")
    reproduce(name)  # an unknown name: the refusal names the experiments


def _label(cell) -> str:
    return ", ".join(f"{k} {v}" for k, v in cell.label.items())


def sweep(name: str, *, what: str = "run", plan: dict | None = None, log: Log = noop,
          settings: list[str] | None = None, config=None, steps: int | None = None,
          **kw) -> dict:
    """`compare` (`name` "compare") or `reproduce <name>`: run it (`what` "run"); list the
    configs of its training runs with their run ids ("print-config"); or plan and cost it
    ("dry-run", `plan` holding `on` and `mfu`, `plan.estimate`). The last two write nothing.
    `settings` (`--set` items) and a `--config` file's settings apply to every cell (the file
    may not set what the sweep sets per cell); `steps` is each run's length: compare's flag,
    and for a reproduction every cell's `steps` setting."""
    from mixerbench.config import parse_set, read_settings

    over = {**read_settings(config, sweep="compare" if name == "compare" else "reproduce"),
            **parse_set(settings)}
    if name == "compare":
        kw.update(overrides=over, steps=steps)
    else:
        kw.update(overrides={**over, **({"steps": str(steps)} if steps else {})})
    if what == "run":
        return compare(log=log, **kw) if name == "compare" else reproduce(name, log=log, **kw)
    from mixerbench.config import run_id, to_dict

    root = results.results_dir(kw.pop("root", None))
    if name != "compare":
        kw.pop("real_labels", None), kw.pop("fewshot", None), kw.pop("batch_size", None)
        if kw.get("init") and name != "avg5":
            reproduce(name, **kw)  # --init on another artifact: its refusal
    planned, notes, stages = _planned_cells(name, root=root, **kw)
    if what == "print-config":
        return dict(configs=[dict(to_dict(c), run_id=None if note else run_id(c))
                             for c, _, note in planned])
    return dict(plan=_dry_run([(c, label, note) for c, label, note in planned], root=root,
                              extra=_compare_extra(kw, planned) if name == "compare" else None,
                              notes=notes, what=name if name == "compare" else f"reproduce {name}",
                              device=kw.get("device"), stages=stages,
                              launcher=kw.get("launcher"), **(plan or {})))


def _compare_extra(kw: dict, planned) -> dict:
    """What `compare` does after training: the few-shot probes and the benchmark."""
    return dict(fewshot=kw.get("fewshot"), bench=kw.get("with_bench", True),
                preset=kw.get("preset"))


def _dry_run(planned, *, root, extra=None, notes=(), what: str, device=None, on=None,
             mfu=None, stages=None, launcher=None) -> dict:
    """A plan's cells (`plan.plan_config`) and its estimate (`plan.estimate`), its `stages`
    of launch cells run as `launcher` will run them (`lanes`)."""
    from mixerbench import plan

    cells = [plan.plan_config(cfg, label, note, root) for cfg, label, note in planned]
    est = plan.estimate(cells, root=root, device=device, on=on, compare=extra,
                        mfu=plan.DEFAULT_MFU if mfu is None else mfu,
                        stages=stages and _stages(stages, cells, launcher))
    papers = [p for p in (plan.paper_core_days(cfg) for cfg, _, _ in planned) if p]
    return dict(what=what, cells=cells, estimate=est, notes=[*notes, *est["notes"]],
                paper=papers[0] if len(planned) == 1 and papers else None)


def _stages(stages: list[list[Cell]], planned: list, launcher) -> list:
    """(cells, `lanes`) of each stage of launch cells, `planned` (`plan.Cell`s in the same
    order) telling which have finished."""
    out, first = [], 0
    for cells in stages:
        todo = sum(not c.finished for c in planned[first:first + len(cells)])
        out.append((len(cells), lanes(launcher, cells, todo)))
        first += len(cells)
    return out


def lanes(launcher: Launcher | None, cells: list[Cell], todo: int):
    """How `run_cells(cells, launcher)` will run these cells here, `todo` of them yet to
    train (a `plan.Lanes`), by the launcher's own rules (`launch.auto_launcher` for a command
    that names none, `slots`, `cpu_threads`). SLURM's jobs run elsewhere, on cores of their
    own."""
    import torch

    from mixerbench import launch
    from mixerbench.plan import Lanes, cores

    if launcher is not None and launcher.kind == launch.AUTO:
        launcher = launch.auto_launcher(cells)
    if launcher is None:
        return Lanes(1, torch.get_num_threads(), cores())
    parallel = len(launch.slots(launcher, max(1, todo)))
    threads = (launch.cpu_threads(launcher, parallel) or int(os.environ.get("OMP_NUM_THREADS")
                                                             or 0) or torch.get_num_threads())
    return Lanes(parallel, threads, parallel * threads if launcher.kind == "slurm" else cores(),
                 jobs=True)


def dry_run(kind: str, *, root=None, on: str | None = None, mfu: float | None = None,
            log: Log = noop, **spec) -> dict:
    """`pretrain` / `finetune --dry-run`: the run (or the lr grid's runs, paper App. C) that
    the command would train and what it would cost; nothing is written."""
    from dataclasses import replace

    from mixerbench.config import validate

    cfg, lrs = resolve_run(kind, **spec)
    planned = [(cfg, kind, "")]
    if len(lrs) > 1:
        held = replace(cfg, run_name=None, data=replace(cfg.data, train_split="train-minus-minival",
                                                        eval_split="minival"))
        planned = [(validate(replace(held, optim=replace(held.optim, lr=lr))),
                    f"lr {lr:g} on minival", "") for lr in lrs]
        planned.append((replace(cfg, optim=replace(cfg.optim, lr=lrs[0])),
                        f"final run on train, reported on {cfg.data.eval_split}",
                        "lr chosen on minival"))
    return _dry_run(planned, root=results.results_dir(root), what=kind, device=cfg.device,
                    on=on, mfu=mfu)
