"""The `mixerbench` command line: one thin command per verb.

Each command parses its options, calls one library function and prints what came back; the
library never prints. Heavy imports (torch, timm, pandas, datasets) happen inside the commands
so that `mixerbench --help` stays fast. Bad input, raised by the library as `UserError`, exits
with status 2 and one sentence. Under torchrun only rank 0 talks to the terminal.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from typer.core import TyperCommand, TyperGroup

# Spin-waiting OpenMP threads make the small tensor ops of augmentation ~70x slower on a busy
# 2-core machine (measured); passive waiting costs nothing on an idle one. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _is_usage_error(exc: BaseException) -> bool:
    """Click's UsageError (bad option, missing value, unknown command), recognised without
    importing the Click that Typer vendors privately."""
    return any(c.__name__ == "UsageError" for c in type(exc).__mro__)


class _OneLineUsageErrors(TyperGroup):
    """Click's usage errors (unknown command or option, wrong type, missing value) as one
    sentence with exit status 2, like every other bad input, instead of a usage box."""

    def parse_args(self, ctx, args):  # options of `mixerbench` itself, e.g. a misspelt --quiet
        if not args:  # no arguments at all shows the help (no_args_is_help)
            return super().parse_args(ctx, args)
        _refuse_non_utf8(args)
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:
            if not _is_usage_error(exc):
                raise
            _usage_error(exc, ctx)

    def invoke(self, ctx):  # unknown command; the options and arguments of a command
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if not _is_usage_error(exc):
                raise
            _usage_error(exc, ctx)


def _refuse_non_utf8(args) -> None:
    """A path named in bytes that are not UTF-8 (an argument, or a folder in the environment)
    could be neither written to a results CSV nor shown: refused before any work, shown with
    replacement characters."""
    named = [(a, "The argument") for a in args] + [
        (os.environ.get(k, ""), f"${k}") for k in ("MIXERBENCH_RESULTS", "MIXERBENCH_DATA")]
    for value, what in named:
        try:
            value.encode()
        except UnicodeEncodeError:
            shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            fail(f"{what} '{shown}' is not UTF-8 (a file or folder name in another encoding); "
                 "rename it to a UTF-8 name.")


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


def _rank0() -> bool:
    from mixerbench.runtime import rank

    return rank() == 0


def _console(stderr: bool = False):
    from rich.console import Console

    if not _rank0():  # other torchrun ranks stay silent: one process speaks for the run
        return Console(file=open(os.devnull, "w"))
    stream = sys.stderr if stderr else sys.stdout
    # Piped output gets a wide console so tables are not truncated to 80 columns.
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 200)


def _quiet(ctx: typer.Context) -> bool:
    """--quiet, stderr not a terminal, or not rank 0: plain lines instead of live progress."""
    return bool((ctx.obj or {}).get("quiet")) or not sys.stderr.isatty() or not _rank0()


def _e(value) -> str:
    """A value from a user or a file (a path, a dataset, a run name) as literal rich text: a
    `[/]` in it is shown, never read as markup."""
    from rich.markup import escape

    return escape(str(value))


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
        from mixerbench.files import describe

        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            fail(str(exc))
        except OSError as exc:  # read-only, full disk, a file or folder in the way: one sentence
            sentence = describe(exc)
            if sentence is None:
                raise
            fail(sentence)

    return wrapper


def emit(rows: list[dict], fmt: Format, title: str | None = None,
         columns: list[str] | None = None) -> None:
    """Print rows as a rich table, CSV or JSON (machine-readable formats go to stdout bare)."""
    columns = columns or (list(rows[0]) if rows else [])
    if not _rank0():
        return
    if fmt == Format.json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    if fmt == Format.csv:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore",
                                lineterminator="\n")
        from mixerbench.results import neutral

        writer.writeheader()  # text cells as the results CSVs hold them: never a formula
        writer.writerows({k: neutral(v) if isinstance(v, str) else v for k, v in r.items()}
                         for r in rows)
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title) if title else title, show_lines=False)
    for c in columns:
        numeric = bool(rows) and isinstance(rows[0].get(c), (int, float))
        table.add_column(escape(str(c)), justify="right" if numeric else "left")
    for r in rows:  # escaped: labels like mixer-t4[width=64] are not rich markup
        table.add_row(*[escape(_cell(r.get(c))) for c in columns])
    _console().print(table)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def _records(df) -> list[dict]:
    """DataFrame rows as dicts with NaN as None (blank cells, JSON null)."""
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in df.to_dict("records")]


def _version(value: bool) -> None:
    if value:
        from mixerbench import __version__

        typer.echo(f"mixerbench {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain periodic lines, no progress bars.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Reproduce the MLP-Mixer benchmarks: Mixer against ViT and ResNet/BiT from timm."""
    ctx.obj = {"quiet": quiet}
    # a terminal that cannot show a character (PYTHONIOENCODING=ascii, a file name that is not
    # UTF-8) gets a replacement character, never a UnicodeEncodeError
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="replace")
        except (AttributeError, ValueError, OSError):
            pass


# ------------------------------------------------------------------------------ shared options

def _folder_name(value: str) -> Path:
    """--results-dir: an empty value (an unset shell variable) is refused, not taken for `.`."""
    if not str(value).strip():
        raise typer.BadParameter("it is empty (an unset shell variable?); pass a folder")
    return Path(value)


ResultsDir = Annotated[Optional[Path], typer.Option(
    "--results-dir", envvar="MIXERBENCH_RESULTS", parser=_folder_name,
    help="Where CSVs, runs/, tables/ and figures/ are (default ./results).")]
DataDir = Annotated[Optional[Path], typer.Option(
    "--data-dir", envvar="MIXERBENCH_DATA", help="Folder holding local dataset copies by name, e.g. cifar10/.")]
Device = Annotated[Optional[str], typer.Option(help="cuda, cuda:1 or cpu (default: cuda if available).")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override any setting, e.g. --set optim.lr=0.01 --set model.drop_path=0.1.")]


# Options of the sweeps (compare, reproduce), declared once.
class LauncherKind(str, Enum):
    local = "local"
    slurm = "slurm"


LauncherOpt = Annotated[Optional[LauncherKind], typer.Option(
    "--launcher", help="Run the cells as jobs through submitit: local (processes here, --parallel at once) or slurm (a job per cell). Default: one after another in this process.")]
ParallelOpt = Annotated[Optional[int], typer.Option(
    "--parallel", help="Cells at once (local default: one per GPU slot, else 1; slurm: all, queued).")]
GpusPerJobOpt = Annotated[Optional[int], typer.Option(
    "--gpus-per-job", help="GPUs per cell, one torch.distributed process each (default: 1 on CUDA machines and slurm partitions with GPUs, else 0).")]
TasksPerJobOpt = Annotated[Optional[int], typer.Option(
    "--tasks-per-job", help="Processes per cell, one torch.distributed rank each (default: one per GPU, else 1; on CPU they train over gloo).")]
PartitionOpt = Annotated[Optional[str], typer.Option("--partition", help="slurm: the partition.")]
TimeLimitOpt = Annotated[Optional[int], typer.Option(
    "--time-limit", help="Wall-clock minutes per job (required for slurm; a timed-out job requeues and resumes).")]
SlurmArgOpt = Annotated[Optional[list[str]], typer.Option(
    "--slurm-arg", help="slurm: another sbatch option as key=value, e.g. --slurm-arg account=my-lab.")]


def _launcher(kind: LauncherKind | None, parallel, gpus_per_job, partition, time_limit,
              slurm_args, tasks_per_job=None):
    """The `--launcher` options as a `launch.Launcher` (None: serial); launcher options
    without `--launcher` are an error rather than silently serial."""
    if kind is None:
        given = [name for name, v in (("--parallel", parallel), ("--gpus-per-job", gpus_per_job),
                                      ("--partition", partition), ("--time-limit", time_limit),
                                      ("--slurm-arg", slurm_args),
                                      ("--tasks-per-job", tasks_per_job)) if v not in (None, [])]
        if given:
            fail(f"{', '.join(given)} only apply with --launcher local or --launcher slurm.")
        return None
    from mixerbench.launch import make_launcher

    return make_launcher(kind.value, parallel=parallel, gpus_per_job=gpus_per_job,
                         partition=partition, time_limit=time_limit, slurm_args=slurm_args,
                         tasks_per_job=tasks_per_job)


# Options shared by pretrain and finetune, declared once.
Epochs = Annotated[Optional[float], typer.Option(help="Training length in epochs.")]
Steps = Annotated[Optional[int], typer.Option(help="Training length in optimizer steps (wins over --epochs).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Global effective batch.")]
AccumSteps = Annotated[Optional[int], typer.Option(help="Gradient accumulation steps per optimizer step.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed.")]
RunName = Annotated[Optional[str], typer.Option(help="Run directory name (default: model-dataset-seed-hash).")]
Resume = Annotated[bool, typer.Option(help="Continue an unfinished run (the same command does too).")]
Compile = Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile (default: on for CUDA).")]
PrintConfig = Annotated[bool, typer.Option(
    "--print-config", help="Print the resolved configuration (config.json) and exit.")]
TrackerOpt = Annotated[Optional[str], typer.Option(
    "--tracker", help="Also log to experiment trackers, any of tensorboard,wandb,mlflow "
    "(comma-separated; offline files under the results folder; pip install "
    "\"mixerbench\\[trackers]\"). The CSVs stay the record.")]


# -------------------------------------------------------------------------------- progress


class ProgressView:
    """Renders the library's events: a rich bar on a terminal, a line every few seconds on a
    pipe (or with --quiet). A `stage` (loading data, the final evaluation) shows a spinner on a
    terminal, and on a pipe a line once it has lasted `STAGE_SECONDS`: a phase that ends at
    once (or fails at once, before its one-line error) prints nothing."""

    STAGE_SECONDS = 3.0

    def __init__(self, quiet: bool):
        self.console = _console(stderr=True)
        self.live = not quiet
        self.bar = None
        self.task = None
        self.last_plain = 0.0
        self.pending = None  # the current stage's spinner or timer
        self.handlers = None  # built at the first event (see `_handlers`)

    def _handlers(self) -> dict:
        """Each event the library emits, by the name its emitting module declares, and how it
        is shown (imported at the first event, so that `--help` and commands that emit none
        stay fast)."""
        from mixerbench.experiments import Event as ExperimentEvent
        from mixerbench.launch import Event as CellEvent
        from mixerbench.trackers import Event as TrackerEvent
        from mixerbench.train import Event as TrainEvent

        return {TrainEvent.START: self._start, TrainEvent.RESUMED: self._resumed,
                TrainEvent.RESTARTED: lambda info: _warn(
                    f"{Path(info['run_dir']).name} has no checkpoint to resume from, so it starts "
                    f"again from step 0; the {info['dropped']} metric row(s) of the earlier "
                    "attempt were dropped.", self._print),
                TrainEvent.STEP: self._step, TrainEvent.EVAL: self._eval,
                TrainEvent.STAGE: lambda info: self._stage(info["what"]),
                TrainEvent.FINISHED: self._finished, TrainEvent.END: lambda info: self.stop(),
                CellEvent.CELL: self._cell, CellEvent.LAUNCH: self._launch,
                CellEvent.JOB: self._job,
                ExperimentEvent.FEWSHOT: lambda info: self._print(
                    f"linear {info['shots']}-shot probe of {_e(info['run_id'])}"),
                ExperimentEvent.BENCH: lambda info: self._print(
                    f"benchmarking {_e(', '.join(info['models']))} on this device"),
                TrackerEvent.WARNING: lambda info: _warn(info["message"], self._print)}

    def __call__(self, event: str, info: dict) -> None:
        self._end_stage()
        if self.handlers is None:
            self.handlers = self._handlers()
        handler = self.handlers.get(event)
        if handler is not None:
            handler(info)

    def _start(self, info: dict) -> None:
        self.stop()
        self.console.print(
            f"[bold]{_e(info['model'])}[/] on [bold]{_e(info['dataset'])}[/] at {info['img_size']} px "
            f"(pipeline {_e(info['pipeline'])}, eval {_e(info['eval_pipeline'])}): "
            f"{info['total_steps']:,} steps, batch {info['batch_size']} x {info['world_size']} "
            f"process(es), {_e(info['device'])} {info['dtype']} -> {_e(info['run_dir'])}")
        self._bar("train", info["total_steps"], info["step"])

    def _resumed(self, info: dict) -> None:
        self.console.print(f"resuming {_e(info['run_dir'])} from step {info['step']:,}")

    def _step(self, info: dict) -> None:
        import time

        stats = (f"epoch {info['epoch']:.2f}  loss {info['loss']:.4f}  lr {info['lr']:.2e}  "
                 f"{info['img_per_sec']:,.0f} img/s")
        if self.bar is not None:
            self.bar.update(self.task, completed=info["step"], stats=stats)
        elif time.monotonic() - self.last_plain > 10 or info["step"] == info["total_steps"]:
            self.last_plain = time.monotonic()
            self.console.print(f"step {info['step']:,}/{info['total_steps']:,}  {stats}")

    def _eval(self, info: dict) -> None:
        if info.get("top1") is not None:
            self._print(f"eval @ step {info['step']:,}: top-1 {info['top1']:.2f} %  top-5 "
                        f"{info['top5']:.2f} %  loss {info['eval_loss']:.4f}")

    def _finished(self, info: dict) -> None:
        self.stop()
        self.console.print(f"{_e(info['run_id'])}: already finished, read back (top-1 {info['top1']:.2f} %)")

    def _cell(self, info: dict) -> None:
        self.stop()
        what = _e(", ".join(f"{k} {v}" for k, v in info.items() if k not in ("of", "index")))
        count = _e(f"[{info['index']}/{info['of']}] ") if "of" in info else ""
        self.console.print(f"[bold magenta]{count}{what}[/]")

    def _launch(self, info: dict) -> None:
        from rich.markup import escape

        self.stop()
        self.console.print(f"[bold magenta]{info['cells']} cells as {info['launcher']} jobs, "
                           f"up to {info['parallel']} at once[/]; job logs in "
                           f"{escape(info['folder'])}", soft_wrap=True)

    def _job(self, info: dict) -> None:
        """A launched cell: submitted, started, requeued, finished, read back or failed."""
        from rich.markup import escape  # paths and error messages are not markup

        from mixerbench.launch import JobState

        keys = ("state", "job_id", "index", "of", "run_id", "top1", "error", "log", "restarts")
        what = escape(", ".join(f"{k} {v}" for k, v in info.items() if k not in keys))
        count = escape(f"[{info['index']}/{info['of']}] ") if "index" in info else ""
        state, job = info["state"], escape(str(info["job_id"]))
        if state in (JobState.SUBMITTED, JobState.STARTED):
            line = f"{state} {what} (job {job})"
        elif state == JobState.REQUEUED:
            line = (f"requeued {what} (job {job}, restart {info['restarts']}): it resumes from "
                    "its last checkpoint")
        elif state == JobState.FAILED:
            line = (f"[bold red]{count}{what} failed[/] (job {job}): {escape(info['error'])}; "
                    f"log {escape(info['log'])}")
        else:
            done = "read back" if state == JobState.REUSED else "trained"
            line = (f"[bold magenta]{count}{what}[/]: {escape(info['run_id'])} {done}, "
                    f"top-1 {info['top1']:.2f} %")
        self.console.print(line, soft_wrap=True)

    def progress(self, description: str, done: int, total: int) -> None:
        """The `progress(description, done, total)` callback of evaluate, bench and datasets."""
        if self.bar is None and self.live:
            self._bar("", total, done)
        if self.bar is not None:
            self.bar.update(self.task, description=_e(description), completed=done, total=total)
        else:  # on a pipe: each stage a line, if it lasts
            self._end_stage()
            if done < total:
                self._stage(description)

    def _bar(self, label: str, total: int, done: int) -> None:
        if not self.live:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self.bar = Bar(TextColumn(f"[bold blue]{label or '{task.description}'}"), BarColumn(),
                       MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                       TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                       console=self.console, transient=False)
        self.bar.start()
        self.task = self.bar.add_task(label, total=total, completed=done, stats="")

    def _print(self, line: str) -> None:
        (self.bar.console if self.bar is not None else self.console).print(line, soft_wrap=True)

    def _stage(self, what: str) -> None:
        import threading

        if self.live and self.bar is None:
            self.pending = self.console.status(_e(what))
            self.pending.start()
        else:
            self.pending = threading.Timer(self.STAGE_SECONDS, self._print, [f"[dim]{_e(what)}[/]"])
            self.pending.daemon = True
            self.pending.start()

    def _end_stage(self) -> None:
        if self.pending is not None:
            (self.pending.cancel if hasattr(self.pending, "cancel") else self.pending.stop)()
            self.pending = None

    def stop(self) -> None:
        self._end_stage()
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _warn(message: str, printer=None) -> None:
    """One yellow line on stderr (a tracker that stopped); the command goes on."""
    from rich.markup import escape

    message = " ".join(message.split())  # one line, however long (a tracker's error text)
    if printer is None:
        _console(stderr=True).print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)
    else:
        printer(f"[yellow]warning:[/] {escape(message)}")


def _run(ctx: typer.Context, fn, tracked: tuple[str, ...] = (), group: str | None = None, **kw):
    """Call a library function with a progress renderer as its `log` (teed to the
    trackers named in `tracked`, one tracker run per training run): Ctrl-C exits 130 and a run that cannot go on exits 1,
    each with one sentence. Under torchrun the process group is torn down once the function has
    succeeded on this rank."""
    from mixerbench.launch import SweepInterrupted
    from mixerbench.runtime import teardown_distributed
    from mixerbench.trackers import Tracked
    from mixerbench.train import Interrupted, TrainingStopped

    progress = ProgressView(_quiet(ctx))
    log = Tracked(progress, tracked, group=group)
    status = "failed"  # what a tracker run still open at the end is marked as
    try:
        out = fn(log=log, **kw)
        teardown_distributed()
        status = "finished"
        return out
    except Interrupted as exc:
        status = "killed"
        progress.stop()
        fail(f"Interrupted at step {exc.step:,} of {exc.run_dir.name}; a checkpoint was saved in "
             f"{exc.run_dir}. Run the same command again to continue where it stopped.", code=130)
    except SweepInterrupted as exc:
        progress.stop()
        fail(str(exc), code=130)
    except TrainingStopped as exc:
        progress.stop()
        fail(str(exc), code=1)
    finally:
        log.close(status)
        progress.stop()


PLOT_HELP = ("Regenerate the figures (PNG, 150 dpi, in <out>/figures/) and tables (CSV and "
             "markdown, in <out>/tables/) from the results CSVs alone; with no NAME, every one "
             "whose inputs exist.")


def _plot_names(command) -> None:
    """`plot --help`: every figure and table in `report.REPORTS` with the paper artifact it
    stands for."""
    from mixerbench.report import REPORTS

    names = "; ".join(f"{name}: {r.paper}" for name, r in REPORTS.items())
    command.help = f"{PLOT_HELP} Names: {names}."


def _argument_choices(argument: str, choices) -> Callable:
    def fill(command) -> None:
        for param in command.params:
            if param.name == argument:
                param.help = " | ".join(choices())
    return fill


def _experiment_names():
    from mixerbench.experiments import EXPERIMENTS

    return EXPERIMENTS


def _paper_tables():
    from mixerbench.reference import TABLES

    return TABLES


def _family_help(command) -> None:
    """`compare --help`: the family aliases the model registry holds."""
    from mixerbench.models import FAMILIES

    for param in command.params:
        if param.name == "models":
            param.help = (f"Comma-separated: family aliases ({', '.join(FAMILIES)}; in a small "
                          "preset each is that family's small model) or zoo names.")


class _RegistryHelp(TyperCommand):
    """A command whose help lists what a registry holds, read from the registry when the help
    is shown: importing the registries on every start would break `--help`'s half second
    (report alone takes seconds, matplotlib and pandas)."""

    FILL = {"plot": _plot_names, "reproduce": _argument_choices("artifact", _experiment_names),
            "paper": _argument_choices("table", _paper_tables), "compare": _family_help}

    def format_help(self, ctx, formatter):
        self.FILL[self.name](self)
        return super().format_help(ctx, formatter)


# ---------------------------------------------------------------------------- models, paper


@app.command()
@user_errors
def models(
    pattern: Annotated[Optional[str], typer.Argument(help="Shell pattern, e.g. 'mixer-*', or one name.")] = None,
    fmt: FormatOpt = Format.table,
    img_size: Annotated[Optional[int], typer.Option(help="Count FLOPs at this input size.")] = None,
    num_classes: Annotated[int, typer.Option(help="Head size used for `params`.")] = 1000,
) -> None:
    """The model zoo: shapes, parameters and GMACs per image (FlopCounterMode)."""
    from mixerbench.models import zoo

    rows = zoo(pattern, num_classes=num_classes, img_size=img_size)
    emit(rows, fmt, title=f"mixerbench model zoo (params with a {num_classes}-class head; "
                          "GMACs per image)")


@app.command(cls=_RegistryHelp)
@user_errors
def paper(
    table: Annotated[str, typer.Argument(help="One of the paper's tables.")] = "table1",
    fmt: FormatOpt = Format.table,
) -> None:
    """The paper's reference tables (transcribed with a source column)."""
    from mixerbench.reference import load_table

    emit(_records(load_table(table)), fmt, title=f"MLP-Mixer paper, {table} (arXiv 2105.01601)")


@app.command(cls=_RegistryHelp, help=PLOT_HELP)
@user_errors
def plot(
    name: Annotated[Optional[str], typer.Argument(help="One figure or table (see above); all when omitted.")] = None,
    results_dir: ResultsDir = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where figures/ and tables/ go (default: the results dir).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="Mixer checkpoint or run dir for token-mixing.")] = None,
    runs: Annotated[Optional[str], typer.Option(help="Comma-separated run ids for curves.")] = None,
    tracker: TrackerOpt = None,
) -> None:
    from mixerbench.report import draw
    from mixerbench.trackers import parse_trackers

    done = draw(results_dir, out, name, checkpoint, runs=runs.split(",") if runs else None,
                trackers=parse_trackers(tracker), on_warning=_warn)
    con = _console()
    for path in done["written"]:
        con.print(f"wrote {_e(path)}")
    for skipped, why in done["skipped"].items():  # what was left out, and why
        con.print(f"[dim]skipped {skipped}: {_e(why)}[/]", soft_wrap=True)


@app.command()
@user_errors
def claims(
    results_dir: ResultsDir = None,
    fmt: FormatOpt = Format.table,
    write_md: Annotated[Optional[Path], typer.Option("--write-md", help="Also put the verdicts as markdown between the '<!-- mixerbench claims: start/end -->' lines of this file.")] = None,
) -> None:
    """The paper's claims decided from the results: held, not held or not enough evidence, with
    the numbers, the seeds and the command that would add the missing evidence."""
    from mixerbench.report.claims import check, flat_records, to_markdown, to_records, to_text

    verdicts = check(results_dir)
    if write_md is not None:
        from mixerbench.report.claims import write_markdown_section

        changed = write_markdown_section(write_md, to_markdown(verdicts))
        _console(stderr=True).print(f"{'wrote' if changed else 'unchanged:'} {_e(write_md)}")
    if fmt == Format.json:
        sys.stdout.write(json.dumps(to_records(verdicts), indent=2) + "\n")
    elif fmt == Format.csv:
        emit(flat_records(verdicts), fmt)
    else:
        import textwrap

        colours = {"held": "bold green", "not held": "bold red", "not enough evidence": "bold yellow"}
        con = _console()
        for style, line in to_text(verdicts):  # a terminal wraps under the line's indent + 4
            if sys.stdout.isatty() and line:
                indent = " " * (len(line) - len(line.lstrip()) + 4)
                line = textwrap.fill(line, con.width, subsequent_indent=indent,
                                     break_long_words=False, break_on_hyphens=False)
            con.print(f"[{colours[style]}]{_e(line)}[/]" if style else _e(line), soft_wrap=True)


@app.command()
@user_errors
def report(
    results_dir: ResultsDir = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="The HTML file to write (default: <results-dir>/report/index.html).")] = None,
) -> None:
    """One self-contained HTML page of the whole reproduction: the claims, every table and figure
    beside the paper's numbers, and each run's provenance."""
    from mixerbench.report.page import write_report

    _console().print(f"wrote {_e(write_report(results_dir, out))}")


# ------------------------------------------------------------------------- pretrain / finetune


def _train_command(ctx, *, kind: str, preset, model, dataset, init, lr, settings, resume,
                   results_dir, print_config, tracker, flags: dict, arch=None) -> None:
    """Print the run's resolved config, or run it (several `--lr` values: the lr grid,
    selected on minival, paper App. C) and print its result."""
    from mixerbench.config import parse_set
    from mixerbench.experiments import resolved_config, train_run
    from mixerbench.trackers import parse_trackers

    trackers = parse_trackers(tracker)
    spec = dict(preset=preset, model=model, dataset=dataset, init=init, arch=arch, lr=lr,
                flags=flags, overrides=parse_set(settings))
    if print_config:  # the resolved config.json of the run, without running it
        config = resolved_config(kind, **spec)
        if _rank0():
            sys.stdout.write(json.dumps(config, indent=2) + "\n")
        return
    summary = _run(ctx, train_run, trackers, kind=kind, root=results_dir, resume=resume, **spec)
    if "lr_grid" in summary and _rank0():
        emit([dict(lr=g["lr"], minival_top1=g["minival_top1"], run_id=g["run_id"],
                   selected="yes" if g["lr"] == summary["selected_lr"] else "")
              for g in summary["lr_grid"]], Format.table,
             title="fine-tuning lr grid: selected on minival (paper App. C), reported on "
                   f"{summary['reported_on']}")
    _print_summary(summary)


def _print_summary(s: dict) -> None:
    if not _rank0():
        return
    if s.get("reused"):
        _console().print(f"run {_e(s['run_id'])} had already finished; its result:")
    _console().print(
        f"[bold green]{_e(s['model'])}[/] on {_e(s['dataset'])} ({_e(s['split'])}): top-1 [bold]{s['top1']:.2f} %[/], "
        f"top-5 {s['top5']:.2f} %, loss {s['loss']:.4f}, {s['steps']:,} steps in "
        f"{s['train_seconds']:.1f} s -> {_e(s['run_dir'])}")


@app.command()
@user_errors
def pretrain(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Zoo name, paper spelling, family alias or timm:<name>.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset name or path (default: the preset's, else cifar10).")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Named recipe; see --list-presets.")] = None,
    epochs: Epochs = None,
    steps: Steps = None,
    batch_size: BatchSize = None,
    accum_steps: AccumSteps = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
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
    tracker: TrackerOpt = None,
) -> None:
    """Train a model from scratch; writes a run directory and a row in accuracy.csv."""
    if list_presets:
        from mixerbench.presets import describe

        emit(describe(), Format.table, title="presets (mixerbench/presets.py)")
        return
    _train_command(ctx, kind="pretrain", preset=preset, model=model, dataset=dataset, init=None,
                   lr=lr, settings=settings, resume=resume, results_dir=results_dir,
                   print_config=print_config, tracker=tracker, flags={
                       "epochs": epochs, "steps": steps, "data.batch_size": batch_size,
                       "accum_steps": accum_steps, "model.img_size": img_size,
                       "model.patch_size": patch_size, "seed": seed, "run_name": run_name,
                       "device": device, "compile": compile_,
                       "data.data_dir": str(data_dir) if data_dir else None})


ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture of a .safetensors without mixerbench metadata: a timm name (mixer_b16_224, vit_base_patch16_224) or a zoo name.")]


@app.command()
@user_errors
def finetune(
    ctx: typer.Context,
    init: Annotated[str, typer.Option("--init", help="Run dir, .safetensors, timm:<name>[.<tag>] or official .npz.")],
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset name or path.")] = None,
    arch: ArchOpt = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Named recipe (default: finetune-<dataset> when one exists, else finetune).")] = None,
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
    tracker: TrackerOpt = None,
) -> None:
    """Fine-tune from weights with a fresh zero head (paper section 3), optionally at a higher resolution."""
    _train_command(ctx, kind="finetune", preset=preset, model=None, dataset=dataset, init=init,
                   arch=arch, lr=lr, settings=settings, resume=resume,
                   results_dir=results_dir, print_config=print_config, tracker=tracker, flags={
                       "epochs": epochs, "steps": steps, "data.batch_size": batch_size,
                       "accum_steps": accum_steps, "model.img_size": img_size, "seed": seed,
                       "run_name": run_name, "device": device, "compile": compile_,
                       "data.data_dir": str(data_dir) if data_dir else None})


# ------------------------------------------------------------------------------ evaluate / bench


class EvalCrop(str, Enum):
    resize = "resize"
    resmall = "resmall"
    plain = "plain"
    weights = "weights"


@app.command()
@user_errors
def evaluate(
    ctx: typer.Context,
    checkpoint: Annotated[str, typer.Option("--checkpoint", "-c", help="Run dir, .safetensors, timm:<name>[.<tag>] or official .npz.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name or path.")],
    arch: ArchOpt = None,
    split: Annotated[str, typer.Option(help="Split to measure accuracy on.")] = "test",
    crop: Annotated[Optional[EvalCrop], typer.Option(help="Eval crop (paper App. C): resize-crop, resmall-crop, plain resize, or the weights' own (timm's crop_pct); default: the run's own, timm: weights' own, else resize.")] = None,
    real_labels: Annotated[Optional[Path], typer.Option("--real-labels", help="ImageNet ReaL labels (the public real.json) for ReaL top-1.")] = None,
    fewshot: Annotated[Optional[str], typer.Option("--fewshot", help="Linear few-shot shots, e.g. 1,5,10,25 (needs no head; paper section 3).")] = None,
    shuffle: Annotated[Optional[str], typer.Option("--shuffle", help="Fixed pixel shuffles of paper Figure 4, e.g. none,patch,global.")] = None,
    shuffle_patch: Annotated[Optional[int], typer.Option("--shuffle-patch", help="Patch side of the patch shuffle (default: the run's, else the model's; CNNs need it).")] = None,
    seeds: Annotated[int, typer.Option(help="Few-shot seeds (mean and std reported).")] = 3,
    l2_reg: Annotated[float, typer.Option("--l2-reg", help="Few-shot ridge strength (big_vision default 2^10).")] = 1024.0,
    max_examples: Annotated[Optional[int], typer.Option("--max-examples", help="Measure on a seeded class-stratified N images of the split (rows name it split[stratified:N]; default: all of it).")] = None,
    results_dir: ResultsDir = None,
    data_dir: DataDir = None,
    device: Device = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per eval batch.")] = 256,
    fmt: FormatOpt = Format.table,
    tracker: TrackerOpt = None,
) -> None:
    """Accuracy (top-1, top-5, loss, ReaL), linear few-shot and shuffle invariance of a checkpoint."""
    if not _rank0():  # one process measures and writes the rows; the others have nothing to do
        return
    from mixerbench.evaluate import evaluate as run_evaluate
    from mixerbench.results import writable_results_dir
    from mixerbench.trackers import parse_trackers, record_evaluation

    trackers = parse_trackers(tracker)
    root = writable_results_dir(results_dir)
    progress = ProgressView(_quiet(ctx))
    try:
        res = run_evaluate(checkpoint, dataset, arch=arch, split=split, crop=crop.value if crop else None,
                           data_dir=str(data_dir) if data_dir else None, fewshot=fewshot,
                           shuffle=shuffle, shuffle_patch=shuffle_patch, real_labels=real_labels,
                           device=device, batch_size=batch_size, seeds=seeds, l2_reg=l2_reg,
                           max_examples=max_examples, root=root, progress=progress.progress)
    finally:
        progress.stop()
    record_evaluation(trackers, root, res, on_warning=_warn, options=dict(
        checkpoint=checkpoint, arch=arch, dataset=dataset, split=split, crop=crop.value if crop else None,
        fewshot=fewshot, shuffle=shuffle, shuffle_patch=shuffle_patch, seeds=seeds,
        l2_reg=l2_reg, max_examples=max_examples, batch_size=batch_size, device=device))
    if fmt != Format.table:
        emit([dict(table=t, **r) for t, rs in res["rows"].items() for r in rs], fmt)
        return
    console = _console()
    where = _e(f"{res['model']} on {res['dataset']} ({res['split']}, {res['img_size']} px, "
               f"{res['pipeline']})")
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
             Format.table, title=f"linear few-shot top-1 (%) on {res['dataset']}, mean and std over seeds")
    if res["shuffle"]:
        emit([dict(train_shuffle=r["train_shuffle"], eval_shuffle=r["eval_shuffle"],
                   metric=r["metric"], top1=r["top1"]) for r in res["shuffle"]],
             Format.table, title="pixel shuffles (paper Figure 4)")
    console.print(f"rows appended under {_e(root)}")
    if res.get("kept"):
        console.print(f"fewshot.csv already held {len(res['kept'])} of these probes (one row per "
                      "run, shots and probe dataset); the recorded rows were kept")


class BenchMode(str, Enum):
    infer = "infer"
    train = "train"
    both = "both"


@app.command()
@user_errors
def bench(
    ctx: typer.Context,
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
    fmt: FormatOpt = Format.table,
) -> None:
    """Throughput (img/s per device), GMACs, achieved TFLOP/s and MFU; appends to throughput.csv."""
    if not _rank0():  # one process measures; the others would only compete for the device
        return
    from mixerbench.bench import bench as run_bench
    from mixerbench.results import writable_results_dir

    root = writable_results_dir(results_dir)
    progress = ProgressView(_quiet(ctx))
    try:
        rows = run_bench([m for m in models.split(",") if m.strip()], mode=mode.value,
                         batch_size=batch_size, img_size=img_size, dtype=dtype, compile=compile_,
                         repeats=repeats, warmup=warmup, steps_per_repeat=steps, device=device,
                         channels_last=channels_last, root=root, progress=progress.progress)
    finally:
        progress.stop()
    if fmt != Format.table:
        emit([{k: v for k, v in r.items() if k != "repeat_seconds"} for r in rows], fmt)
        return
    _console().print(_bench_table(rows, steps))
    _console().print(f"{len(rows)} row{'s' if len(rows) != 1 else ''} appended to {_e(root / 'throughput.csv')}")


def _bench_table(rows: list[dict], steps: int):
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
    return table


# ------------------------------------------------------------------------ compare / reproduce


@app.command(cls=_RegistryHelp)
@user_errors
def compare(
    ctx: typer.Context,
    models: Annotated[str, typer.Option("--models", help="Comma-separated: family aliases or zoo names.")] = "mixer,vit,resnet",
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset (default: the preset's).")] = None,
    preset: Annotated[str, typer.Option("--preset", "-p", help="One recipe and budget for every model.")] = "smoke",
    seeds: Annotated[int, typer.Option(help="Seeds per model (mean +- std over them).")] = 1,
    epochs: Annotated[Optional[float], typer.Option(help="Override the preset's epochs.")] = None,
    fewshot: Annotated[Optional[int], typer.Option(help="Also report linear k-shot top-1 (e.g. 5).")] = None,
    with_bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Measure train and inference img/s on this device.")] = True,
    settings: SetOpt = None,
    results_dir: ResultsDir = None,
    data_dir: DataDir = None,
    device: Device = None,
    fmt: FormatOpt = Format.table,
    tracker: TrackerOpt = None,
    launcher: LauncherOpt = None,
    parallel: ParallelOpt = None,
    gpus_per_job: GpusPerJobOpt = None,
    partition: PartitionOpt = None,
    time_limit: TimeLimitOpt = None,
    slurm_arg: SlurmArgOpt = None,
    tasks_per_job: TasksPerJobOpt = None,
) -> None:
    """Train each model under one preset and budget, evaluate and bench it; one joined table."""
    from mixerbench.config import parse_set
    from mixerbench.experiments import compare as run_compare
    from mixerbench.report.tables import compare_view
    from mixerbench.trackers import parse_trackers

    trackers = parse_trackers(tracker)
    # one tracker run per training run, grouped as accuracy.csv tags them (compare:<preset>)
    out = _run(ctx, run_compare, trackers, f"compare-{preset}",
               models=[m.strip() for m in models.split(",") if m.strip()],
               dataset=dataset, preset=preset, seeds=seeds, epochs=epochs, fewshot=fewshot,
               with_bench=with_bench, root=results_dir, data_dir=data_dir, device=device,
               overrides=parse_set(settings), trackers=trackers, launcher=_launcher(
                   launcher, parallel, gpus_per_job, partition, time_limit, slurm_arg,
                   tasks_per_job))
    if not _rank0():  # under torchrun rank 0 joined the results and reports them
        return
    if fmt != Format.table:
        emit(_records(out["table"]), fmt)
        return
    # the columns of the markdown table written beside it (tables/compare-*.md)
    emit(_records(compare_view(out["table"])), fmt,
         title=f"{out.get('title') or 'compare on ' + out['dataset']} (img/s on this device)")
    for path in out["written"]:
        _console().print(f"wrote {_e(path)}")


@app.command(cls=_RegistryHelp)
@user_errors
def reproduce(
    ctx: typer.Context,
    artifact: Annotated[str, typer.Argument(help="The experiment to run.")],
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset (default: the budget's); avg5: a comma-separated list; released: ImageNet, by default imagenet-1k.")] = None,
    init: Annotated[Optional[str], typer.Option("--init", help="avg5: the weights to fine-tune (run dir, .safetensors, timm:<name>[.<tag>]).")] = None,
    budget: Annotated[str, typer.Option(help="smoke (CPU minutes) | cpu (CIFAR-10, about an hour on 2 cores) | small (GPU minutes) | full (the preset's schedule).")] = "smoke",
    upstream: Annotated[Optional[str], typer.Option(help="transfer: the pre-training dataset; avg5: the one --init was pre-trained on, for the paper's row (default: the run's own, or the released weights' provenance).")] = None,
    models: Annotated[Optional[str], typer.Option(help="throughput: the models to bench; data-scaling: which of mixer,vit,resnet.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="throughput, released: batch size.")] = None,
    real_labels: Annotated[Optional[Path], typer.Option("--real-labels", help="released: ImageNet ReaL labels (the public real.json), matched by ILSVRC2012_val_* file name.")] = None,
    fewshot: Annotated[bool, typer.Option("--fewshot", help="released: also the linear 5-shot probe on ImageNet (shots from its train split).")] = False,
    settings: SetOpt = None,
    results_dir: ResultsDir = None,
    data_dir: DataDir = None,
    device: Device = None,
    launcher: LauncherOpt = None,
    parallel: ParallelOpt = None,
    gpus_per_job: GpusPerJobOpt = None,
    partition: PartitionOpt = None,
    time_limit: TimeLimitOpt = None,
    slurm_arg: SlurmArgOpt = None,
    tasks_per_job: TasksPerJobOpt = None,
) -> None:
    """Run the scaled-down experiment behind a paper table or figure; CSV and figure in results/."""
    from mixerbench.config import parse_set
    from mixerbench.experiments import reproduce as run

    out = _run(ctx, run, artifact=artifact, root=results_dir, dataset=dataset, budget=budget,
               device=device, data_dir=data_dir, overrides=parse_set(settings),
               upstream=upstream, init=init, models=models.split(",") if models else None,
               batch_size=batch_size, real_labels=real_labels, fewshot=fewshot, launcher=_launcher(
                   launcher, parallel, gpus_per_job, partition, time_limit, slurm_arg,
                   tasks_per_job))
    if not _rank0():
        return
    if "table" in out:
        emit(_records(out["table"]), Format.table, title=f"reproduce {artifact}")
    for note in out.get("notes", []):  # what the numbers cannot show (a smoke budget, a tie)
        _console().print(f"[bold yellow]note:[/] {_e(note)}")
    for path in out.get("written", []):
        _console().print(f"wrote {_e(path)}")


# ------------------------------------------------------------------------------------- datasets


@app.command("datasets")
@user_errors
def datasets_cmd(
    ctx: typer.Context,
    name_or_path: Annotated[Optional[str], typer.Argument(help="Known name, hf:<hub id> or a folder; none lists the known datasets.")] = None,
    fmt: FormatOpt = Format.table,
    data_dir: DataDir = None,
    bench: Annotated[bool, typer.Option("--bench", help="Img/s per CPU core of the train input pipeline (ours, its host share, timm's create_loader, a decode floor) on the train split; appends to inputs.csv.")] = False,
    device: Device = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Batch size for --bench.")] = 128,
    workers: Annotated[Optional[int], typer.Option(help="Loader worker processes for --bench (default: min(8, cores)).")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Output side for --bench (default 224, or the stored size).")] = None,
    randaug: Annotated[float, typer.Option(help="RandAugment(2, m) magnitude for --bench; 0 turns it off.")] = 15,
    mixup: Annotated[float, typer.Option(help="Mixup strength for --bench; 0 turns it off.")] = 0.5,
    images: Annotated[int, typer.Option(help="Images per measured pass for --bench.")] = 2048,
    repeats: Annotated[int, typer.Option(help="Rounds for --bench, each measuring every pipeline once.")] = 3,
    results_dir: ResultsDir = None,
    write_jpegs: Annotated[Optional[int], typer.Option("--write-jpegs", metavar="N", help="First write N photo-like 500x375 JPEGs (quality 90, 10 class folders) into the new folder NAME_OR_PATH: a stand-in for ImageNet for --bench.")] = None,
) -> None:
    """Known datasets; with NAME_OR_PATH: where it was found, its splits, sizes and classes."""
    from mixerbench.data import datasets_command

    progress = ProgressView(_quiet(ctx)) if bench or write_jpegs else None
    try:
        out = datasets_command(name_or_path, data_dir, bench and name_or_path is not None, device=device,
                               root=results_dir, progress=progress and progress.progress,
                               write_jpegs=write_jpegs, batch_size=batch_size, workers=workers,
                               img_size=img_size, randaug_m=randaug, mixup_p=mixup, images=images,
                               repeats=repeats)
    finally:
        if progress:
            progress.stop()
    if name_or_path is None:
        emit(out, fmt, title="known datasets (mixerbench/data/__init__.py; any hf:<id> or folder also works)")
    elif bench:
        rows = out["rows"]
        if fmt == Format.table:  # whole images, two decimals for the ratio (the CSV keeps every digit)
            rows = [dict(r, img_per_sec=round(r["img_per_sec"]), img_per_cpu_sec=round(r["img_per_cpu_sec"]),
                         timm_ratio=None if r["timm_ratio"] is None else f"{r['timm_ratio']:.2f}") for r in rows]
        emit(rows, fmt, title=f"input pipeline, {rows[0]['images']:,} images of {out['dataset']} train at "
             f"{rows[0]['img_size']} px: img/s and img/s per CPU core (median of {repeats} rounds)",
             columns=["pipeline", "what", "workers", "img_per_sec", "img_per_cpu_sec", "timm_ratio"])
    elif fmt == Format.json:
        sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")
    elif fmt == Format.csv:
        emit([dict(dataset=out["name"], split=s, images=n) for s, n in out["splits"].items()], fmt)
    else:
        names = out["class_names"] or []
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        rows = [dict(field=k, value=v) for k, v in out.items()
                if k not in ("splits", "class_names") and v is not None]
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
    if res["constructor"]:  # no timm entry point builds these shapes
        console.print(f"load it with {res['constructor']}(**model_args) of "
                      f"{escape(res['out_dir'])}/config.json and load_state_dict (see its README.md)")
    else:
        console.print(f"load it with timm.create_model(\"local-dir:{escape(res['out_dir'])}\", pretrained=True)")
    if url:
        console.print(f"pushed to {escape(url)}")


# -------------------------------------------------------------------------------------- upgrade


@app.command()
@user_errors
def upgrade(results_dir: ResultsDir = None) -> None:
    """Rewrite results CSVs written by an older mixerbench under today's columns (rows kept, new
    columns empty, a row's recipe id worked out from its run's config.json where the run folder
    is there); files with columns this version does not know are refused, never guessed at."""
    from mixerbench.results import results_dir as resolve_dir
    from mixerbench.upgrade import upgrade as upgrade_folder

    done = upgrade_folder(results_dir)
    for path in done["written"]:
        _console().print(f"upgraded {_e(path)}")
    if done["filled"]:
        _console().print(f"gave {done['filled']} row(s) the recipe id of their run's config.json")
    if done["unknown"]:
        _console().print(f"{len(done['unknown'])} run(s) have no finished run folder that names "
                         "them, so their rows keep an empty recipe id (tables show each such "
                         "run on its own)")
    if not done["written"]:
        _console().print(f"nothing to upgrade in {_e(resolve_dir(results_dir))}: every results file "
                         "already has this version's columns")
