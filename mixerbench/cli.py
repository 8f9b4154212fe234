"""The `mixerbench` command line: one thin command per verb (design.md section 4).

Each command parses options, calls one library function and prints. Heavy imports (torch,
timm, pandas, datasets) happen inside the commands so that `mixerbench --help` stays fast.
Bad input raised by the library as `UserError` exits with status 2 and one sentence.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click as typer._click; older versions use click itself
    from typer._click.exceptions import UsageError as _UsageError
except ImportError:  # pragma: no cover
    from click import UsageError as _UsageError

# Spin-waiting OpenMP threads make the small tensor ops of augmentation ~70x slower on a busy
# 2-core machine (measured); passive waiting costs nothing on an idle one. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

class _OneLineUsageErrors(TyperGroup):
    """Click's usage errors (unknown command or option, wrong type, missing value) as one
    sentence with exit status 2, like every other bad input, instead of a usage box."""

    def parse_args(self, ctx, args):  # options of `mixerbench` itself, e.g. a misspelt --quiet
        if not args:  # no arguments at all shows the help (no_args_is_help)
            return super().parse_args(ctx, args)
        try:
            return super().parse_args(ctx, args)
        except _UsageError as exc:
            _usage_error(exc, ctx)

    def invoke(self, ctx):  # unknown command; the options and arguments of a command
        try:
            return super().invoke(ctx)
        except _UsageError as exc:
            _usage_error(exc, ctx)


def _usage_error(exc, ctx) -> None:
    where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
    text = " ".join(exc.format_message().split())
    fail(f"{text if text.endswith(('.', '?')) else text + '.'} See `{where} --help`.",
         code=exc.exit_code)


app = typer.Typer(
    cls=_OneLineUsageErrors,
    name="mixerbench",
    help="Reproduce the MLP-Mixer benchmarks (arXiv 2105.01601): Mixer vs ViT vs ResNet/BiT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


_QUIET = {"on": False}


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output gets a wide console so tables are not truncated to 80 columns.
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 200)


def fail(message: str, code: int = 2) -> None:
    """Print one sentence to stderr and exit (status 2 for bad input)."""
    from rich.markup import escape

    # escaped: a message quoting user input such as `[/x]` must print, not be read as markup;
    # control characters a user typed (a newline in a --set value) are shown, not obeyed, so
    # the message stays one line
    message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    _console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def user_errors(fn):
    """Turn the library's `UserError` into exit status 2 with its one-sentence message."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mixerbench.errors import UserError

        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            fail(str(exc))

    return wrapper


def emit(rows: list[dict], fmt: Format, title: str | None = None,
         columns: list[str] | None = None) -> None:
    """Print rows as a rich table, CSV or JSON (machine-readable formats go to stdout bare)."""
    columns = columns or (list(rows[0]) if rows else [])
    if fmt == Format.json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    if fmt == Format.csv:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for c in columns:
        numeric = bool(rows) and isinstance(rows[0].get(c), (int, float))
        table.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in columns])
    _console().print(table)


def _cell(v) -> str:
    from rich.markup import escape

    return escape(_fmt_cell(v))  # labels like mixer-t4[width=64] are not rich markup


def _fmt_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


@app.callback()
def main(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain periodic lines, no progress bars.")] = False,
) -> None:
    """Reproduce the MLP-Mixer benchmarks: Mixer against ViT and ResNet/BiT from timm."""
    _QUIET["on"] = quiet


# --------------------------------------------------------------------------------------- models


@app.command()
@user_errors
def models(
    pattern: Annotated[Optional[str], typer.Argument(help="Shell pattern, e.g. 'mixer-*'.")] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    img_size: Annotated[Optional[int], typer.Option(help="Count FLOPs at this input size.")] = None,
    num_classes: Annotated[int, typer.Option(help="Head size used for `params`.")] = 1000,
) -> None:
    """The model zoo: shapes, parameters and GMACs per image (FlopCounterMode)."""
    from mixerbench.errors import UserError
    from mixerbench.models import list_models, model_info, resolve_name

    names = list_models(pattern)
    if not names and pattern:
        if any(ch in pattern for ch in "*?["):
            raise UserError(f"No model matches '{pattern}'; run `mixerbench models` for the zoo.")
        names = [resolve_name(pattern)]  # a single name or alias, e.g. `Mixer-B/16`
    rows = []
    for n in names:
        patch = None
        if img_size:
            from mixerbench.models import get_spec

            patch = get_spec(n).patch_size
            if patch and img_size % patch:
                continue  # this architecture cannot take that size
        rows.append(model_info(n, num_classes=num_classes, img_size=img_size))
    emit(rows, fmt, title="mixerbench model zoo (params with a %d-class head; GMACs per image)" % num_classes)


# ---------------------------------------------------------------------------------------- paper


@app.command()
@user_errors
def paper(
    table: Annotated[str, typer.Argument(help="table1 | table2 | table3 | table4")] = "table1",
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """The paper's reference tables (transcribed with a source column)."""
    from mixerbench.reference import load_table

    df = load_table(table)
    rows = [{k: (None if v != v else v) for k, v in r.items()} for r in df.to_dict("records")]
    emit(rows, fmt, title=f"MLP-Mixer paper, {table} (arXiv 2105.01601)")


def zoo_frame(names: list[str]):
    """The zoo rows of `names` as a DataFrame (for table1 and the compare table)."""
    import pandas as pd

    from mixerbench.models import model_info

    return pd.DataFrame([model_info(n) for n in names])


@app.command()
@user_errors
def plot(
    figure: Annotated[Optional[str], typer.Argument(help="One figure or table; all when omitted.")] = None,
    results_dir: Annotated[Optional[Path], typer.Option("--results-dir", envvar="MIXERBENCH_RESULTS", help="Where the CSVs are.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where figures/ and tables/ go (default: the results dir).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="Mixer checkpoint or run dir for token-mixing.")] = None,
    runs: Annotated[Optional[str], typer.Option(help="Comma-separated run ids for curves.")] = None,
) -> None:
    """Regenerate the figures (PNG, 150 dpi) and tables from the CSVs alone."""
    from mixerbench.models import list_models
    from mixerbench.report import regenerate

    # All at once: everything drawn from CSVs (table1 comes from the zoo: only when named).
    wanted = [figure] if figure else None
    zoo = zoo_frame(list_models("mixer-*")) if figure == "table1" else None
    done = regenerate(results_dir, out, wanted, checkpoint,
                      runs=runs.split(",") if runs else None, zoo_df=zoo)
    con = _console()
    for path in done["written"]:
        con.print(f"wrote {path}")
    for name, why in done["skipped"].items() if done["written"] else ():
        if name == "table1" and figure is None:
            continue
        con.print(f"[dim]skipped {name}: {why}[/]", soft_wrap=True)
    if not done["written"]:
        where = results_dir or os.environ.get("MIXERBENCH_RESULTS") or "results"
        fail(f"Nothing to plot in {where}: it has no results CSVs yet; run `mixerbench compare "
             "--preset smoke` (or pretrain, bench, reproduce) first.")


# ------------------------------------------------------------------------- pretrain / finetune

ResultsDir = Annotated[Optional[Path], typer.Option(
    "--results-dir", envvar="MIXERBENCH_RESULTS", help="Where CSVs and runs/ go (default ./results).")]
DataDir = Annotated[Optional[Path], typer.Option(
    "--data-dir", envvar="MIXERBENCH_DATA", help="Folder holding local dataset copies by name, e.g. cifar10/.")]
Device = Annotated[Optional[str], typer.Option(help="cuda, cuda:1 or cpu (default: cuda if available).")]
# Options shared by pretrain and finetune, declared once.
Epochs = Annotated[Optional[float], typer.Option(help="Training length in epochs.")]
Steps = Annotated[Optional[int], typer.Option(help="Training length in optimizer steps (wins over --epochs).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Global effective batch.")]
AccumSteps = Annotated[Optional[int], typer.Option(help="Gradient accumulation steps per optimizer step.")]
Lr = Annotated[Optional[float], typer.Option(help="Peak learning rate.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed.")]
RunName = Annotated[Optional[str], typer.Option(help="Run directory name (default: model-dataset-seed-hash).")]
Resume = Annotated[bool, typer.Option(help="Continue an unfinished run (the same command does too).")]
Compile = Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile (default: on for CUDA).")]
PrintConfig = Annotated[bool, typer.Option(
    "--print-config", help="Print the resolved configuration (config.json) and exit.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override any setting, e.g. --set optim.lr=0.01 --set model.drop_path=0.1.")]


class TrainProgress:
    """Renders the training loop's events: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool):
        self.console = _console(stderr=True)
        self.live = not quiet and sys.stderr.isatty()
        self.progress = None
        self.task = None
        self.last_plain = 0.0

    def __call__(self, event: str, info: dict) -> None:
        import time

        if event == "start":
            self.console.print(
                f"[bold]{info['model']}[/] on [bold]{info['dataset']}[/]: {info['total_steps']:,} steps, "
                f"batch {info['batch_size']} x {info['world_size']} process(es), {info['device']} {info['dtype']}"
                f" -> {info['run_dir']}")
            if self.live:
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                           TimeElapsedColumn, TimeRemainingColumn)

                self.progress = Progress(
                    TextColumn("[bold blue]train"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=self.console, transient=False)
                self.progress.start()
                self.task = self.progress.add_task("train", total=info["total_steps"],
                                                   completed=info["step"], stats="")
        elif event == "resumed":
            self.console.print(f"resuming {info['run_dir']} from step {info['step']:,}")
        elif event == "step":
            stats = (f"epoch {info['epoch']:.2f}  loss {info['loss']:.4f}  lr {info['lr']:.2e}  "
                     f"{info['img_per_sec']:,.0f} img/s")
            if self.progress is not None:
                self.progress.update(self.task, completed=info["step"], stats=stats)
            elif time.monotonic() - self.last_plain > 10 or info["step"] == info["total_steps"]:
                self.last_plain = time.monotonic()
                self.console.print(f"step {info['step']:,}/{info['total_steps']:,}  {stats}")
        elif event == "eval":
            line = (f"eval @ step {info['step']:,}: top-1 {info['top1']:.2f} %  top-5 {info['top5']:.2f} %  "
                    f"loss {info['eval_loss']:.4f}") if info.get("top1") is not None else ""
            if line:
                (self.progress.console if self.progress else self.console).print(line)
        elif event in ("end", "finished"):
            self.stop()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _train_command(*, kind: str, preset, model, dataset, init, epochs, steps, batch_size,
                   accum_steps, lr, img_size, patch_size, seed, settings, run_name, resume,
                   results_dir, data_dir, device, compile_, list_presets,
                   print_config=False) -> None:
    from mixerbench.config import parse_set, resolve

    if list_presets:
        from mixerbench import presets

        emit(presets.describe(), Format.table, title="presets (mixerbench/presets.py)")
        return
    from mixerbench.experiments import finetune_lr_grid, parse_lrs

    lrs = parse_lrs(lr)
    flags = {"epochs": epochs, "steps": steps, "data.batch_size": batch_size,
             "accum_steps": accum_steps, "optim.lr": lrs[0] if lrs else None,
             "model.img_size": img_size, "model.patch_size": patch_size, "seed": seed,
             "run_name": run_name, "device": device, "compile": compile_,
             "data.data_dir": str(data_dir) if data_dir else None}
    cfg = resolve(preset, model=model, dataset=dataset, kind=kind, init=init, flags=flags,
                  overrides=parse_set(settings))
    if print_config:  # the resolved config.json of the run, without running it
        from mixerbench.config import run_id, to_dict

        sys.stdout.write(json.dumps(dict(to_dict(cfg), run_id=run_id(cfg)), indent=2) + "\n")
        return
    if len(lrs) > 1:
        if resume:
            fail("--resume continues one run; run the lr grid without it (finished runs of the "
                 "grid are read back, unfinished ones continue).")
        summary = _run_experiment(finetune_lr_grid, cfg=cfg, lrs=lrs, root=results_dir)
        emit([dict(lr=g["lr"], minival_top1=g["minival_top1"], run_id=g["run_id"],
                   selected="yes" if g["lr"] == summary["selected_lr"] else "")
              for g in summary["lr_grid"]], Format.table,
             title="fine-tuning lr grid: selected on minival (paper App. C), reported on "
                   f"{cfg.data.eval_split}")
    else:
        summary = _run_training(cfg, results_dir, resume)
    _print_summary(summary)


def _run_training(cfg, results_dir, resume: bool) -> dict:
    from mixerbench.train import Interrupted, TrainingStopped, train

    progress = TrainProgress(_QUIET["on"])
    try:
        return train(cfg, results_dir, resume=resume, log=progress)
    except Interrupted as exc:
        progress.stop()
        fail(f"Interrupted at step {exc.step:,}; a checkpoint was saved in {exc.run_dir}. Run the "
             "same command again (or add --resume) to continue.", code=130)
    except TrainingStopped as exc:
        progress.stop()
        fail(str(exc), code=1)
    finally:
        progress.stop()


def _print_summary(s: dict) -> None:
    if s.get("reused"):
        _console().print(f"run {s['run_id']} had already finished; its result:")
    _console().print(
        f"[bold green]{s['model']}[/] on {s['dataset']} ({s['split']}): top-1 [bold]{s['top1']:.2f} %[/], "
        f"top-5 {s['top5']:.2f} %, loss {s['loss']:.4f}, {s['steps']:,} steps in "
        f"{s['train_seconds']:.1f} s -> {s['run_dir']}")


@app.command()
@user_errors
def pretrain(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Zoo name, paper spelling, family alias or timm:<name>.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset name or path (default: the preset's, else cifar10).")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Named recipe; see --list-presets.")] = None,
    epochs: Epochs = None,
    steps: Steps = None,
    batch_size: BatchSize = None,
    accum_steps: AccumSteps = None,
    lr: Lr = None,
    img_size: Annotated[Optional[int], typer.Option(help="Input side in pixels.")] = None,
    patch_size: Annotated[Optional[int], typer.Option(help="Patch side in pixels (Mixer, ViT).")] = None,
    seed: Seed = None,
    settings: SetOpt = None,
    run_name: RunName = None,
    resume: Resume = False,
    results_dir: ResultsDir = None,
    data_dir: DataDir = None,
    device: Device = None,
    compile_: Compile = None,
    list_presets: Annotated[bool, typer.Option("--list-presets", help="List the presets and exit.")] = False,
    print_config: PrintConfig = False,
) -> None:
    """Train a model from scratch; writes a run directory and a row in accuracy.csv."""
    if model is None and preset is None and not list_presets:
        model = "mixer"
    _train_command(kind="pretrain", preset=preset, model=model, dataset=dataset, init=None,
                   epochs=epochs, steps=steps, batch_size=batch_size, accum_steps=accum_steps,
                   lr=lr, img_size=img_size, patch_size=patch_size, seed=seed, settings=settings,
                   run_name=run_name, resume=resume, results_dir=results_dir, data_dir=data_dir,
                   device=device, compile_=compile_, list_presets=list_presets,
                   print_config=print_config)


@app.command()
@user_errors
def finetune(
    init: Annotated[str, typer.Option("--init", help="Run dir, .safetensors, timm:<name>[.<tag>] or official .npz.")],
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset name or path.")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Named recipe (default: finetune-<dataset> when one exists).")] = None,
    img_size: Annotated[Optional[str], typer.Option(help="Fine-tuning resolution in pixels, or Kx for K times the trained size (2x: paper App. C); Mixers need a whole multiple.")] = None,
    epochs: Epochs = None,
    steps: Steps = None,
    batch_size: BatchSize = None,
    accum_steps: AccumSteps = None,
    lr: Annotated[Optional[str], typer.Option(help="Peak learning rate, or a grid such as 0.003,0.01,0.03,0.06: each is scored on a held-out minival split, the best is re-run on all of train and reported on test (paper App. C).")] = None,
    seed: Seed = None,
    settings: SetOpt = None,
    run_name: RunName = None,
    resume: Resume = False,
    results_dir: ResultsDir = None,
    data_dir: DataDir = None,
    device: Device = None,
    compile_: Compile = None,
    print_config: PrintConfig = False,
) -> None:
    """Fine-tune from weights with a fresh zero head (paper section 3), optionally at a higher resolution."""
    from mixerbench.presets import PRESETS

    if preset is None:  # the dataset's own recipe, else the paper's recipe with a generic length
        preset = ("finetune-cifar10" if dataset is None else
                  f"finetune-{dataset}" if f"finetune-{dataset}" in PRESETS else "finetune")
    _train_command(kind="finetune", preset=preset, model=None, dataset=dataset, init=init,
                   epochs=epochs, steps=steps, batch_size=batch_size, accum_steps=accum_steps,
                   lr=lr, img_size=img_size, patch_size=None, seed=seed, settings=settings,
                   run_name=run_name, resume=resume, results_dir=results_dir, data_dir=data_dir,
                   device=device, compile_=compile_, list_presets=False,
                   print_config=print_config)


# ------------------------------------------------------------------------------ evaluate / bench


class _StageBar:
    """A rich progress bar fed by a library `progress(description, done, total)` callback; silent
    when stderr is not a terminal or with --quiet."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None
        self.task = None

    def __enter__(self):
        if not _QUIET["on"] and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn(f"[bold blue]{self.label}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.description}"), TimeElapsedColumn(),
                                console=_console(stderr=True), transient=True)
            self.bar.start()
        return self

    def __call__(self, description: str, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task(description, total=total)
        self.bar.update(self.task, description=description, completed=done, total=total)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


class EvalCrop(str, Enum):
    resize = "resize"
    resmall = "resmall"
    plain = "plain"


@app.command()
@user_errors
def evaluate(
    checkpoint: Annotated[str, typer.Option("--checkpoint", "-c", help="Run dir, .safetensors, timm:<name>[.<tag>] or official .npz.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name or path.")],
    split: Annotated[str, typer.Option(help="Split to measure accuracy on.")] = "test",
    crop: Annotated[Optional[EvalCrop], typer.Option(help="Eval crop (paper App. C): resize-crop, resmall-crop, or plain resize; default: the run's own, else resize.")] = None,
    real_labels: Annotated[Optional[Path], typer.Option("--real-labels", help="ImageNet ReaL labels (the public real.json) for ReaL top-1.")] = None,
    fewshot: Annotated[Optional[str], typer.Option("--fewshot", help="Linear few-shot shots, e.g. 1,5,10,25 (needs no head; paper section 3).")] = None,
    shuffle: Annotated[Optional[str], typer.Option("--shuffle", help="Fixed pixel shuffles of paper Figure 4, e.g. none,patch,global.")] = None,
    seeds: Annotated[int, typer.Option(help="Few-shot seeds (mean and std reported).")] = 3,
    l2_reg: Annotated[float, typer.Option("--l2-reg", help="Few-shot ridge strength (big_vision default 2^10).")] = 1024.0,
    results_dir: ResultsDir = None,
    data_dir: DataDir = None,
    device: Device = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per eval batch.")] = 256,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Accuracy (top-1, top-5, loss, ReaL), linear few-shot and shuffle invariance of a checkpoint."""
    from mixerbench.evaluate import evaluate as run_evaluate
    from mixerbench.results import results_dir as resolve_results

    root = resolve_results(results_dir)
    with _StageBar("evaluate") as bar:
        res = run_evaluate(checkpoint, dataset, split=split, crop=crop.value if crop else None,
                           data_dir=str(data_dir) if data_dir else None, fewshot=fewshot,
                           shuffle=shuffle, real_labels=real_labels, device=device,
                           batch_size=batch_size, seeds=seeds, l2_reg=l2_reg, results_root=root,
                           progress=bar)
    if fmt != Format.table:
        emit([dict(table=t, **r) for t, rs in res["rows"].items() for r in rs], fmt)
        return
    console = _console()
    where = f"{res['model']} on {res['dataset']} ({res['split']}, {res['img_size']} px, {res['pipeline']})"
    if res["top1"] is not None:
        console.print(f"[bold green]{where}[/]: top-1 [bold]{res['top1']:.2f} %[/], top-5 "
                      f"{res['top5']:.2f} %, loss {res['loss']:.4f} over {res['n']:,} images")
    else:
        console.print(f"[bold]{where}[/]: the head does not match the dataset's "
                      f"{res['num_classes']} classes; few-shot only")
    if res["real"]:
        console.print(f"ReaL top-1 [bold]{res['real']['top1']:.2f} %[/] over {res['real']['n']:,} labelled images")
    if res["fewshot"]:
        emit([dict(shots=r["shots"], top1_mean=r["top1_mean"], top1_std=r["top1_std"],
                   seeds=r["num_seeds"], l2_reg=r["l2_reg"]) for r in res["fewshot"]],
             Format.table, title="linear few-shot top-1 (%), mean and std over seeds")
    if res["shuffle"]:
        emit([dict(train_shuffle=r["train_shuffle"], eval_shuffle=r["eval_shuffle"],
                   metric=r["metric"], top1=r["top1"]) for r in res["shuffle"]],
             Format.table, title="pixel shuffles (paper Figure 4)")
    console.print(f"rows appended under {root}")


class BenchMode(str, Enum):
    infer = "infer"
    train = "train"
    both = "both"


@app.command()
@user_errors
def bench(
    models: Annotated[str, typer.Option("--models", "-m", help="Comma-separated zoo names or timm:<name>, e.g. mixer-b16,vit-b16,bit-r50x1.")],
    mode: Annotated[BenchMode, typer.Option(help="infer, train (forward+backward+AdamW step) or both.")] = BenchMode.infer,
    batch_size: Annotated[str, typer.Option("--batch-size", "-b", help="Images per step, or 'auto' for the largest that fits.")] = "256",
    img_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (default: each model's own).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="bf16, fp16 or fp32 (default: bf16 on CUDA, fp32 on CPU).")] = None,
    compile_: Compile = None,
    repeats: Annotated[int, typer.Option(help="Timed repeats (mean and std of img/s).")] = 5,
    steps: Annotated[int, typer.Option(help="Steps per timed repeat.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up steps.")] = 10,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="NHWC layout (default: CNNs on CUDA).")] = None,
    device: Device = None,
    results_dir: ResultsDir = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Throughput (img/s per device), GMACs, achieved TFLOP/s and MFU against the GPU's datasheet
    peak (n/a on CPUs and unlisted GPUs); appends to throughput.csv."""
    from mixerbench.bench import bench as run_bench
    from mixerbench.results import results_dir as resolve_results

    root = resolve_results(results_dir)
    size = batch_size.strip().lower()
    if size != "auto":
        try:
            size = int(size)
        except ValueError:
            fail(f"--batch-size takes a number or 'auto', not '{batch_size}'.")
    with _StageBar("bench") as bar:
        rows = run_bench([m for m in models.split(",") if m.strip()], mode=mode.value,
                         batch_size=size, img_size=img_size, dtype=dtype, compile=compile_,
                         repeats=repeats, warmup=warmup, steps_per_repeat=steps, device=device,
                         channels_last=channels_last, results_root=root, progress=bar)
    first = {}
    for r in rows:
        first.setdefault(r["mode"], r["img_per_sec_mean"])
        r["ratio_to_first"] = r["img_per_sec_mean"] / first[r["mode"]]
    if fmt != Format.table:
        emit([{k: v for k, v in r.items() if k != "repeat_seconds"} for r in rows], fmt)
        return
    from rich import box
    from rich.table import Table

    r0 = rows[0]
    peak, prec = r0["peak_tflops"], r0["matmul_precision"]
    tf32 = " (fp32 matmuls run as TF32 on CUDA)" if prec == "tf32" else ""
    if peak:
        mfu_note = (f"MFU = achieved TFLOP/s / the datasheet dense peak of this device in {prec}, "
                    f"{peak:,.1f} TFLOP/s{tf32}")
    else:
        mfu_note = (f"MFU n/a: no datasheet peak is known for {r0['device_name']} in {prec} "
                    "(CPUs and unlisted GPUs get none)")
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"throughput on {r0['device_name']} ({r0['dtype']}, "
              f"{'compiled' if r0['compiled'] else 'eager'}), {r0['repeats']} repeats x {steps} steps",
        caption=(f"img/s per device, measured here: not comparable to the paper's img/s/core on "
                 f"TPU-v3 (Tables 2-3). {mfu_note}; train FLOPs = 3 x forward. Dense {prec} "
                 f"matmul measured in this run: {r0['matmul_tflops']:,.3g} TFLOP/s."))
    for c in ("model", "mode", "batch", "img/s (± std)", "x first", "ms/step", "GMACs", "TFLOP/s",
              "MFU % (datasheet)"):
        table.add_column(c, justify="left" if c in ("model", "mode") else "right",
                         no_wrap=c in ("model", "img/s (± std)"))
    for r in rows:
        table.add_row(r["model"], r["mode"], str(r["batch_size"]),
                      f"{r['img_per_sec_mean']:,.1f} ± {r['img_per_sec_std']:,.1f}",
                      f"{r['ratio_to_first']:.2f}", f"{r['step_ms_median']:,.1f}",
                      f"{r['gmacs']:.3g}", f"{r['achieved_tflops']:.3g}",
                      "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}")
    _console().print(table)
    _console().print(f"{len(rows)} row{'s' if len(rows) != 1 else ''} appended to {root / 'throughput.csv'}")


# ------------------------------------------------------------------------ compare / reproduce


class ExperimentProgress(TrainProgress):
    """Training progress plus one line per experiment cell."""

    def __call__(self, event: str, info: dict) -> None:
        if event == "cell":
            self.stop()
            what = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("of", "index"))
            count = f"[{info['index']}/{info['of']}] " if "of" in info else ""
            self.console.print(f"[bold magenta]{count}{what}[/]")
        elif event == "fewshot":
            self.console.print(f"linear {info['shots']}-shot probe of {info['run_id']}")
        elif event == "bench":
            self.console.print(f"benchmarking {', '.join(info['models'])} on this device")
        elif event == "finished":
            self.console.print(f"{info['run_id']}: already finished, read back (top-1 {info['top1']:.2f} %)")
        else:
            super().__call__(event, info)


def _run_experiment(fn, **kw) -> dict:
    from mixerbench.train import Interrupted, TrainingStopped

    progress = ExperimentProgress(_QUIET["on"])
    try:
        return fn(log=progress, **kw)
    except Interrupted as exc:
        progress.stop()
        fail(f"Interrupted at step {exc.step:,} of {exc.run_dir.name}; a checkpoint was saved. "
             "Run the same command again to continue where it stopped.", code=130)
    except TrainingStopped as exc:
        progress.stop()
        fail(str(exc), code=1)
    finally:
        progress.stop()


def _table_rows(df) -> list[dict]:
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in df.to_dict("records")]


@app.command()
@user_errors
def compare(
    models: Annotated[str, typer.Option("--models", help="Comma-separated: family aliases (mixer,vit,resnet) or zoo names.")] = "mixer,vit,resnet",
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset (default: the preset's).")] = None,
    preset: Annotated[str, typer.Option("--preset", "-p", help="One recipe and budget for every model.")] = "smoke",
    seeds: Annotated[int, typer.Option(help="Seeds per model (mean +- std over them).")] = 1,
    epochs: Annotated[Optional[float], typer.Option(help="Override the preset's epochs.")] = None,
    init: Annotated[Optional[str], typer.Option(help="Fine-tune every model from this source instead.")] = None,
    fewshot: Annotated[Optional[int], typer.Option(help="Also report linear k-shot top-1 (e.g. 5).")] = None,
    with_bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Measure train and inference img/s on this device.")] = True,
    settings: SetOpt = None,
    results_dir: ResultsDir = None,
    data_dir: DataDir = None,
    device: Device = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format of the table.")] = Format.table,
) -> None:
    """Train each model under one preset and budget, evaluate and bench it; one joined table."""
    from mixerbench.config import parse_set
    from mixerbench.experiments import compare as run_compare

    out = _run_experiment(run_compare, models=[m.strip() for m in models.split(",") if m.strip()],
                          dataset=dataset, preset=preset, seeds=seeds, epochs=epochs, init=init,
                          fewshot=fewshot, with_bench=with_bench, results_root=results_dir,
                          data_dir=data_dir, device=device, overrides=parse_set(settings))
    from mixerbench.report.tables import compare_view

    rows = []
    shown = compare_view(out["table"])
    for r, full in zip(_table_rows(shown), _table_rows(out["table"])):
        std = "" if r.get("top1_std") is None else f" +- {r['top1_std']:.2f}"
        view = {"model": r["model"], "params": r["params"], "GFLOPs/img": r["gflops"],
                "train img/s": r["train_img_per_sec"], "infer img/s": r["infer_img_per_sec"],
                "wall s": r["wall_time_s"], "device-h": r["device_hours"],
                "train FLOPs": r["train_flops"],
                "top-1 %": f"{r['top1_mean']:.2f}{std} (n={r['n']})"}
        if fewshot:
            view[f"{fewshot}-shot %"] = r.get("fewshot_top1")
        if "paper_top1" in r:
            view["paper %"] = r.get("paper_top1")
            view["diff"] = r.get("diff")
        rows.append(view if fmt == Format.table else full)
    emit(rows, fmt, title=f"compare on {out['dataset']} (preset {preset}; img/s on this device)")
    if fmt == Format.table:
        for path in out["written"]:
            _console().print(f"wrote {path}")


@app.command()
@user_errors
def reproduce(
    artifact: Annotated[str, typer.Argument(help="table1 | throughput | shuffle | data-scaling | transfer")],
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset (default: the budget's).")] = None,
    budget: Annotated[str, typer.Option(help="smoke (CPU minutes) | small (GPU minutes) | full (the preset's schedule).")] = "smoke",
    upstream: Annotated[Optional[str], typer.Option(help="transfer: the pre-training dataset.")] = None,
    models: Annotated[Optional[str], typer.Option(help="throughput: comma-separated models.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="throughput: batch size.")] = None,
    settings: SetOpt = None,
    results_dir: ResultsDir = None,
    data_dir: DataDir = None,
    device: Device = None,
) -> None:
    """Run the scaled-down experiment behind a paper table or figure; CSV and figure in results/."""
    from mixerbench.experiments import ARTIFACTS, reproduce as run

    if artifact not in ARTIFACTS:
        run(artifact)  # raises the UserError with close matches
    from mixerbench.config import parse_set

    kw = dict(results_root=results_dir, dataset=dataset, budget=budget, device=device,
              data_dir=data_dir, overrides=parse_set(settings))
    if artifact == "transfer":
        kw["upstream"] = upstream
    if artifact == "throughput":
        kw.update(models=models.split(",") if models else None, batch_size=batch_size)
    out = _run_experiment(lambda log, **k: run(artifact, log=log, **k), **kw)
    if "table" in out:
        emit(_table_rows(out["table"]), Format.table, title=f"reproduce {artifact}")
    for path in out.get("written", []):
        _console().print(f"wrote {path}")


# ------------------------------------------------------------------------------------- datasets


@app.command("datasets")
@user_errors
def datasets_cmd(
    name_or_path: Annotated[Optional[str], typer.Argument(help="Known name, hf:<hub id> or a folder; none lists the known datasets.")] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    data_dir: DataDir = None,
    bench: Annotated[bool, typer.Option("--bench", help="Measure images/s of the tensor and worker loading paths on the train split.")] = False,
    device: Device = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Batch size for --bench.")] = 256,
    seconds: Annotated[float, typer.Option(help="Seconds per loading path for --bench.")] = 5.0,
) -> None:
    """Known datasets; with NAME_OR_PATH: where it was found, its splits, sizes and classes."""
    from mixerbench.data import datasets_command

    if bench and name_or_path:
        import torch

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        r = datasets_command(name_or_path, data_dir, fmt.value, True, seconds=seconds, batch_size=batch_size, device=dev)
        rows = [dict(dataset=r["dataset"], split=r["split"], path=p, device=r["device"], batch_size=r["batch_size"],
                     pipeline=r["pipeline"], img_size=r["img_size"], workers=v["workers"],
                     img_per_sec=round(v["img_per_sec"]), batches=v["batches"]) for p, v in r["paths"].items()]
        emit(rows, fmt, title=f"loader throughput, {r['dataset']} {r['split']} ({r['n']:,} images)")
        return
    out = datasets_command(name_or_path, data_dir, fmt.value, False)
    if name_or_path is None:
        emit(out, fmt, title="known datasets (mixerbench/data/__init__.py; any hf:<id> or folder also works)")
    elif fmt == Format.json:
        sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")
    elif fmt == Format.csv:
        emit([dict(dataset=out["name"], split=s, images=n) for s, n in out["splits"].items()], fmt)
    else:
        names = out["class_names"] or []
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        rows = [dict(field=k, value=v) for k, v in out.items() if k not in ("splits", "class_names") and v is not None]
        rows += [dict(field=f"split {s}", value=f"{n:,}") for s, n in out["splits"].items()]
        rows.append(dict(field="class_names", value=shown))
        emit(rows, fmt, title=out["name"])


# --------------------------------------------------------------------------------------- export


@app.command("export")
@user_errors
def export_cmd(
    source: Annotated[str, typer.Argument(metavar="RUN_OR_CHECKPOINT", help="Run directory (its config and summary fill the model card) or a mixerbench .safetensors checkpoint.")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="New folder to write config.json, model.safetensors and README.md into (must not exist, or be empty).")],
    push: Annotated[Optional[str], typer.Option("--push", help="Then upload the folder to this Hugging Face hub repo, e.g. you/mixer-b16-cifar10.")] = None,
    license: Annotated[str, typer.Option("--license", help="Licence identifier for the model card.")] = "apache-2.0",
) -> None:
    """Export a run as a timm model folder: timm.create_model('local-dir:OUT_DIR', pretrained=True)."""
    from rich.markup import escape

    from mixerbench.export import export as run_export, push as run_push

    res = run_export(source, out_dir, repo_id=push, license=license)
    # pushed before anything is printed, so a failed push is one sentence (which says the
    # export itself is complete) rather than a success report followed by an error
    url = run_push(res["out_dir"], push) if push else None
    console = _console()
    c = res["check"]
    console.print(f"[bold green]wrote {escape(res['out_dir'])}[/]: {', '.join(Path(f).name for f in res['files'])} "
                  f"({escape(res['label'])} as timm's {res['architecture']})")
    agree = "" if c["top1_agreement"] is None else f"top-1 agreement {c['top1_agreement']:.2f} %, "
    console.print(f"timm's rebuild vs mixerbench's model on {escape(c['what'])}: {agree}"
                  f"largest logit difference {c['max_abs_diff']:.2g}")
    if res["gelu"] == "tanh":
        console.print("note: this Mixer was trained with tanh-approximate GELU (the official code's); "
                      "timm's MlpMixer only has exact GELU, hence the difference above (also in the card)")
    console.print(f"load it with timm.create_model(\"local-dir:{escape(res['out_dir'])}\", pretrained=True)")
    if url:
        console.print(f"pushed to {escape(url)}")


# ---------------------------------------------------------------------------------------- entry


def run() -> None:  # pragma: no cover - console entry for `python -m mixerbench`
    app()


if __name__ == "__main__":  # pragma: no cover
    run()
