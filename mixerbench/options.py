"""The command line's shared options, declared once, and help texts read from the registries.

`cli.py` holds the commands; the options several commands take (results and data folders,
`--set`, `--config`, the launcher's, the training length) are declared here so each reads the
same everywhere. Help that lists a registry (figures, experiments, paper tables, families) is
filled in only when the help is shown (`RegistryHelp`), so `mixerbench --help` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from mixerbench.view import Format, OneLineUsageErrors, fail, user_errors

# Spin-waiting OpenMP threads make the small tensor ops of augmentation ~70x slower on a busy
# 2-core machine (measured); passive waiting costs nothing on an idle one. Set before torch
# loads (the CLI imports this module first).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class App(typer.Typer):
    """The Typer app: usage errors as one sentence (`view.OneLineUsageErrors`), `-h` for help,
    no traceback decoration, and every command turning the library's `UserError` (and an
    `OSError` with a plain cause) into exit status 2 and one sentence (`view.user_errors`)."""

    def __init__(self, **kwargs):
        super().__init__(cls=OneLineUsageErrors, no_args_is_help=True,
                         pretty_exceptions_enable=False,
                         context_settings={"help_option_names": ["-h", "--help"]}, **kwargs)

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)
        return lambda fn: register(user_errors(fn))


def version(value: bool) -> None:
    """--version: print it and exit."""
    if value:
        from mixerbench import __version__

        typer.echo(f"mixerbench {__version__}")
        raise typer.Exit()


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
Wide = Annotated[bool, typer.Option("--wide", help="Every column of the table (one block per row when wider than the terminal); the default shows what fits, the most telling columns first.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override any setting, e.g. --set optim.lr=0.01 --set model.drop_path=0.1 (`mixerbench settings` lists them).")]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="Settings from a JSON or YAML file, as --print-config writes them (a whole config, or any of its keys); --set and the options win over it.")]
DryRun = Annotated[bool, typer.Option(
    "--dry-run", help="Print the plan (cells, steps, images, train FLOPs) and its estimated wall time and device-hours, here and on a named GPU; run and write nothing.")]
DryRunDevice = Annotated[Optional[str], typer.Option(
    "--on", metavar="GPU[:MFU]", help="--dry-run: also estimate on this GPU from its datasheet bf16 peak (h100, a100, l4, v100, ...) at a model FLOP utilisation (default 0.4: h100:0.4).")]
PrintConfig = Annotated[bool, typer.Option(
    "--print-config", help="Print the resolved configuration (what --config reads back) and exit.")]
TrackerOpt = Annotated[Optional[str], typer.Option(
    "--tracker", help="Also log to experiment trackers, any of tensorboard,wandb,mlflow "
    "(comma-separated; offline files under the results folder; pip install "
    "\"mixerbench\\[trackers]\"). The CSVs stay the record.")]

# Options of the training commands, declared once.
Epochs = Annotated[Optional[float], typer.Option(help="Training length in epochs.")]
Steps = Annotated[Optional[int], typer.Option(help="Training length in optimizer steps (wins over --epochs).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Global batch: images per optimizer step over all processes.")]
AccumSteps = Annotated[Optional[int], typer.Option(help="Gradient accumulation steps per optimizer step.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed.")]
RunName = Annotated[Optional[str], typer.Option(help="Run directory name (default: model-dataset-seed-hash).")]
Resume = Annotated[bool, typer.Option(help="Continue an unfinished run (the same command does too).")]
Compile = Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile (default: on for CUDA).")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture of a .safetensors without mixerbench metadata: a timm name (mixer_b16_224, vit_base_patch16_224) or a zoo name.")]


class EvalCrop(str, Enum):
    resize = "resize"
    resmall = "resmall"
    plain = "plain"
    weights = "weights"


class BenchMode(str, Enum):
    infer = "infer"
    train = "train"
    both = "both"


# Options of the sweeps (compare, reproduce), declared once.
class LauncherKind(str, Enum):
    local = "local"
    slurm = "slurm"


LauncherOpt = Annotated[Optional[LauncherKind], typer.Option(
    "--launcher", help="Run the cells as jobs through submitit: local (processes here, --parallel at once) or slurm (a job per cell). Default: on a CPU, cells of 100 steps or more as processes of one torch thread each; else one after another in this process.")]
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


def what(print_config: bool, dry_run: bool, on: str | None) -> dict:
    """What a training command does: run, print its config, or plan it (`--on GPU[:MFU]`)."""
    if not dry_run and on is not None:
        fail("--on names a GPU for --dry-run's estimate; add --dry-run.")
    plan = None
    if dry_run:
        gpu, _, mfu = (on or "").partition(":")
        try:
            plan = dict(on=gpu or None, mfu=float(mfu) if mfu else None)
        except ValueError:
            fail(f"--on {on}: the part after ':' is the MFU, a share such as 0.4.")
    return dict(what="dry-run" if dry_run else "print-config" if print_config else "run",
                plan=plan)


def launcher(kind: LauncherKind | None, parallel, gpus_per_job, partition, time_limit,
             slurm_args, tasks_per_job=None, tracker: str | None = None):
    """The `--launcher` options as a `launch.Launcher`; launcher options without `--launcher`
    are an error rather than silently serial. Without them: `launch.AUTO` (`auto_launcher`
    decides from the cells), or None (serial) with a `--tracker`, which follows the runs this
    process trains."""
    if kind is None:
        given = [name for name, v in (("--parallel", parallel), ("--gpus-per-job", gpus_per_job),
                                      ("--partition", partition), ("--time-limit", time_limit),
                                      ("--slurm-arg", slurm_args),
                                      ("--tasks-per-job", tasks_per_job)) if v not in (None, [])]
        if given:
            fail(f"{', '.join(given)} only apply with --launcher local or --launcher slurm.")
        if tracker:
            return None
        from mixerbench.launch import AUTO, Launcher

        return Launcher(AUTO)
    from mixerbench.launch import make_launcher

    return make_launcher(kind.value, parallel=parallel, gpus_per_job=gpus_per_job,
                         partition=partition, time_limit=time_limit, slurm_args=slurm_args,
                         tasks_per_job=tasks_per_job)


# ------------------------------------------------------------------ help read from registries

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


class RegistryHelp(TyperCommand):
    """A command whose help lists what a registry holds, read from the registry when the help
    is shown: importing the registries on every start would break `--help`'s half second
    (report alone takes seconds, matplotlib and pandas)."""

    FILL = {"plot": _plot_names, "reproduce": _argument_choices("artifact", _experiment_names),
            "paper": _argument_choices("table", _paper_tables), "compare": _family_help}

    def format_help(self, ctx, formatter):
        self.FILL[self.name](self)
        return super().format_help(ctx, formatter)
