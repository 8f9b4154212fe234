"""Where the cells of a sweep run: one after another in this process (the default), or as
separate jobs through submitit: `local` runs up to `parallel` cells at once as processes on this
machine, `slurm` submits one SLURM job per cell.

A `Cell` is a picklable, pure description of one training run (preset, model, dataset, kind,
init, flags, overrides, experiment, results root); `run_cell` trains it, or reads it back when
it has finished, through the one training loop, in whatever process it lands in. Launching
changes where cells run, never what they compute: each cell is still a resumable run directory
trained under its own lock and writing its accuracy row through the locked CSV append, so a
sweep can be interrupted, launched again and joined, and several sweeps may share a results
folder. The parent waits for the jobs and returns their summaries in cell order; the
experiment then joins the CSVs exactly as after a serial sweep.

submitit (the launcher of DeiT and many labs) is an optional dependency, imported only when a
launcher is asked for. Its files (the pickled job each process runs, the job logs) go to a
private folder outside the results folder (`private_folder`), and the parent never unpickles
what a job wrote: it follows the jobs (`squeue` on SLURM, no accounting database needed) and
reads each finished cell back from its run directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixerbench.errors import UserError
from mixerbench.events import Log, noop
from mixerbench.train import Event as TrainEvent
from mixerbench.train import TrainingStopped

LAUNCHERS = ("local", "slurm")
AUTO = "auto"  # the launcher of a command that names none: `auto_launcher` decides
INSTALL = 'pip install "mixerbench[launchers]"'
# The local executor ends a job after timeout_min (default 2 minutes): without --time-limit a
# local cell may run for a week.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
STOP_GRACE_S = 30  # how long an interrupted local job may take to save its checkpoint


class Event:
    """The progress events of running cells, emitted as `log(event, info)` (by `run_cells`, and
    by sweeps that run cells of their own); `view.ProgressView` renders them."""

    CELL = "cell"      # a cell starts here: its label, index, of
    LAUNCH = "launch"  # cells go out as jobs: launcher, cells, parallel, folder
    JOB = "job"        # a job was submitted or ended: its label, state, job_id, run_id, top1, ...
    CELLS = "cells"    # launched cells' progress: done (finished + running fractions), of, running



class CellsFailed(TrainingStopped):
    """Some launched cells failed; the others finished and their results are recorded."""


class SweepInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM while jobs ran: they were stopped (checkpoints kept); rerun to go on."""


@dataclass(frozen=True)
class Cell:
    """One training run of a sweep, as `presets.run_config` takes it: plain strings, numbers and
    dicts, so it can be pickled to another process or machine. `label` is only how progress
    names it (e.g. model and seed)."""

    preset: str | None
    model: str | None
    root: str
    dataset: str | None = None
    kind: str | None = None
    init: str | None = None
    flags: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    experiment: str = ""
    label: dict = field(default_factory=dict)

    def config(self):
        from mixerbench.presets import run_config

        return run_config(self.preset, model=self.model, dataset=self.dataset, kind=self.kind,
                          init=self.init, flags=self.flags, overrides=self.overrides)


def run_cell(cell: Cell, log: Log = noop) -> dict:
    """Train one cell (or read it back when it has finished); its summary."""
    from mixerbench.train import train

    return train(cell.config(), cell.root, log=log, experiment=cell.experiment)


@dataclass(frozen=True)
class Launcher:
    """How `--launcher` runs cells. `parallel`: cells at once (local: default one per GPU slot,
    else 1; slurm: default all, SLURM queues them). `gpus_per_job`: devices per cell, one
    torch.distributed process each (default: 1 on SLURM and on a CUDA machine, else 0).
    `tasks_per_job`: processes per cell, one torch.distributed rank each (default: one per
    GPU, else 1; more than one on CPU trains over gloo). `time_limit`: minutes per job.
    `slurm_args`: more `#SBATCH --key=value` lines."""

    kind: str
    parallel: int | None = None
    gpus_per_job: int | None = None
    partition: str | None = None
    time_limit: int | None = None
    slurm_args: dict = field(default_factory=dict)
    tasks_per_job: int | None = None
    threads: int | None = None  # torch threads per CPU job (None: the cores shared out)
    auto: bool = False  # chosen by `auto_launcher` for a command that named no launcher


# Bounds on the launcher options: more cells at once than a cluster queues, a job longer than a
# year (minutes), more processes in one cell than any node or allocation has, are typos.
MAX_PARALLEL = 10_000
MAX_TIME_LIMIT_MIN = 366 * 24 * 60
MAX_PROCESSES_PER_JOB = 4096


def make_launcher(kind: str, *, parallel: int | None = None, gpus_per_job: int | None = None,
                  partition: str | None = None, time_limit: int | None = None,
                  slurm_args: list[str] | None = None,
                  tasks_per_job: int | None = None) -> Launcher:
    """Check the `--launcher` options (every mistake a one-sentence `UserError`, before any
    cell trains) and that submitit is installed."""
    if kind not in LAUNCHERS:
        raise UserError(f"Unknown launcher '{kind}'; choose local or slurm.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--launcher starts its own processes, so run the sweep without torchrun "
                        "(--gpus-per-job N gives each cell N processes).")
    # bounded before any work: 2^63 tasks per job would be a list of 2^63 ranks in the job
    for name, value, low, high in (("--parallel", parallel, 1, MAX_PARALLEL),
                                   ("--time-limit", time_limit, 1, MAX_TIME_LIMIT_MIN),
                                   ("--tasks-per-job", tasks_per_job, 1, MAX_PROCESSES_PER_JOB),
                                   ("--gpus-per-job", gpus_per_job, 0, MAX_PROCESSES_PER_JOB)):
        if value is not None and value < low:
            raise UserError(f"{name} must be {'at least 1' if low else '0 or more'}, not {value}.")
        if value is not None and value > high:
            raise UserError(f"{name} must be at most {high:,}, not {value}.")
    if gpus_per_job and tasks_per_job and tasks_per_job != gpus_per_job:
        raise UserError(f"A cell runs one process per GPU: --tasks-per-job {tasks_per_job} "
                        f"does not match --gpus-per-job {gpus_per_job}; drop one of them.")
    if kind == "local" and (partition or slurm_args):
        raise UserError("--partition and --slurm-arg apply to --launcher slurm only.")
    if kind == "slurm" and time_limit is None:
        raise UserError("--launcher slurm needs --time-limit MINUTES, each job's wall-clock "
                        "limit (submitit would otherwise ask SLURM for 5 minutes).")
    extra = {}
    for text in slurm_args or []:
        key, sep, value = text.partition("=")
        if not sep or not key.strip().lstrip("-"):
            raise UserError(f"--slurm-arg takes key=value (an sbatch option without its dashes, "
                            f"e.g. account=my-lab), not '{text}'.")
        extra[key.strip().lstrip("-").replace("-", "_")] = value.strip()
    import_submitit()
    return Launcher(kind, parallel, gpus_per_job, partition, time_limit, extra, tasks_per_job)


# A sweep's cells on a CPU when the command names no launcher: one process per cell, one torch
# thread each, up to two processes per core at once, instead of one after another here. The
# smoke models are too small for a second intra-op thread to help: the serial main job
# (`compare --models mixer,vit,resnet --preset smoke`) kept 1.0 of 2 idle cores busy (108 CPU-s,
# 110 s), while one-thread processes keep every core busy. One thread per cell is also how the
# committed compare rows were trained: a CPU run's float sums, and so its numbers, depend on its
# thread count. A process costs ~3 CPU-s to start (torch and timm imports), ~50 steps of a
# smoke model, so cells shorter than AUTO_MIN_STEPS stay in this process.
AUTO_MIN_STEPS = 100


def auto_launcher(cells: list[Cell]) -> Launcher | None:
    """How to run `cells` when no launcher was asked for: local processes of one torch thread
    each (see AUTO_MIN_STEPS), up to two per core, when they train on the CPU, at least two
    have yet to train, none is set to fewer than AUTO_MIN_STEPS steps, the machine has two
    cores or more and two processes fit at once (an `OMP_NUM_THREADS` the user set is each
    one's threads, two threads per core at most), the process is not one of
    torchrun's, and submitit is installed; else None (one after another here). It reads only
    the cells' configs and which of their runs have finished: nothing is started."""
    threads = _omp_threads() or 1
    room = 2 * _cores() // threads
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or _cores() < 2 or room < 2:
        return None
    try:
        import submitit  # noqa: F401
    except ImportError:
        return None
    from mixerbench.runtime import resolve_device

    configs = [cell.config() for cell in cells]
    if any(resolve_device(cfg.device) != "cpu" or (cfg.steps is not None
                                                   and cfg.steps < AUTO_MIN_STEPS)
           for cfg in configs):
        return None
    todo = sum(1 for cell in cells if not _finished(cell))
    if todo < 2:
        return None
    return Launcher("local", parallel=min(todo, room), threads=threads, auto=True)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _omp_threads() -> int | None:
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return None


def _finished(cell: Cell) -> bool:
    """Whether `cell`'s run has finished (its summary is in its run directory)."""
    from mixerbench import results
    from mixerbench.config import run_id
    from mixerbench.rundir import read_summary

    return read_summary(results.run_path(Path(cell.root), run_id(cell.config()))) is not None


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError(f"--launcher needs submitit, an optional dependency: {INSTALL}.") from None
    return submitit


# --------------------------------------------------------------------------- running cells


def run_cells(cells: list[Cell], launcher: Launcher | None = None, log: Log = noop) -> list[dict]:
    """Train every cell and return their summaries in cell order: here one after another
    (`launcher` None), or as submitit jobs. Every cell's settings are checked first, so a typo
    in the last cell stops the sweep before the first one trains (a model built on the meta
    device: an option one family does not take is refused up front too)."""
    from mixerbench.prepare import check_model

    for cell in cells:
        check_model(cell.config())
    if launcher is not None and launcher.kind == AUTO:
        launcher = auto_launcher(cells)
    if launcher is None:
        out = []
        for i, cell in enumerate(cells):
            log(Event.CELL, dict(cell.label, index=i + 1, of=len(cells)))
            out.append(run_cell(cell, log))
        return out
    return _launched(cells, launcher, log)


class CellJob:
    """What submitit pickles for each job: trains one cell. The pickle lives in the sweep's
    private folder (see `private_folder`), and the parent never unpickles what a job wrote: it
    reads each cell's result back from the run directory and the CSVs."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __call__(self, cell: Cell) -> dict:
        return run_cell_job(cell, self.threads)

    def checkpoint(self, cell: Cell):
        """What submitit calls on SLURM's time-limit warning (USR2) if it comes before
        `run_cell_job` answers it itself (while the job still loads): requeue the same cell."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, cell)


def run_cell_job(cell: Cell, threads: int | None = None) -> dict:
    """The worker of a launched job: train `cell` and return its summary.

    A job of several tasks (a cell with `gpus_per_job` > 1) is one torch.distributed process
    per task: submitit's view of the job (SLURM_PROCID, SLURM_NTASKS, the node list, or the
    local executor's equivalents) is exported as the variables torchrun sets (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT), which `runtime.setup_distributed` reads.

    Stopping: SIGTERM (scancel, `scontrol requeue`, preemption, the time limit itself) stops
    the training loop after its step with a checkpoint. The warning SLURM sends before the time
    limit (submitit's `--signal=USR2@...`) does the same, and then the job requeues itself, so
    the requeued job resumes from that checkpoint. A job that ends otherwise leaves one line of
    why in `<job id>_<rank>_error.json` beside its log, for the parent.
    """
    import torch

    from mixerbench.runtime import teardown_distributed
    from mixerbench.train import Interrupted

    if not threads and "SLURM_JOB_ID" in os.environ and "OMP_NUM_THREADS" not in os.environ:
        # the CPUs SLURM gave each task (1 unless --slurm-arg cpus-per-task=N), not the node's
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK") or 1)
    if threads:
        torch.set_num_threads(threads)
    # the job's log file is its stderr (submitit's folder), not a terminal
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logger = logging.getLogger("mixerbench.job")
    warned = {"usr2": False}
    if "SUBMITIT_EXECUTOR" in os.environ:  # a job process of its own (not submitit's debug)
        # submitit ignores SIGTERM in jobs and answers USR2 by pickling a resubmission
        # mid-step; a stopped cell should end as a plain run does: at once while it loads,
        # with a checkpoint once it trains (the loop's own SIGTERM handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

        def usr2(signum, frame):
            warned["usr2"] = True
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and _on_slurm():
                # not in the training loop (loading, or the final evaluation): nothing to
                # save since the last checkpoint, so straight back into the queue
                restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
                if restarts < MAX_IDLE_REQUEUES:
                    _requeue(logger, "before training resumed")
            os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGUSR2, usr2)
    error_file = _error_file()
    if error_file is not None:
        error_file.unlink(missing_ok=True)  # a requeued job: the last attempt's is stale
    job_log, began = _job_log(logger), {}

    def log(event: str, info: dict) -> None:
        if event == TrainEvent.START:
            began.setdefault("step", info["step"])
        job_log(event, info)

    try:
        export_distributed_env()
        summary = run_cell(cell, log)
    except Interrupted as exc:
        if warned["usr2"] and _on_slurm():
            if exc.step > began.get("step", exc.step):
                _requeue(logger, f"checkpoint at step {exc.step}")
            # no step since the last start: requeuing would only repeat this (submitit's
            # own guard against endless requeues is a count of time-outs)
            exc = Interrupted(exc.run_dir, exc.step)
            exc.args = (f"the time limit came before the job trained a step past {exc.step}; "
                        "raise --time-limit",)
        _record_error(error_file, exc)
        raise exc from None
    except BaseException as exc:
        _record_error(error_file, exc)
        raise
    teardown_distributed()
    return summary


MAX_IDLE_REQUEUES = 10  # time-limit requeues before a job has begun to train: then it fails


def _on_slurm() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def _requeue(logger: logging.Logger, when: str) -> None:
    """Put this SLURM job back in the queue (its time limit is near), then end the process:
    SLURM starts the job again, which resumes the run from its last checkpoint."""
    import subprocess

    job = os.environ.get("SLURM_ARRAY_JOB_ID") and (
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}") \
        or os.environ["SLURM_JOB_ID"]
    if int(os.environ.get("SLURM_PROCID", "0")) == 0:
        logger.info("requeue: %s, the time limit is near; job %s goes back in the queue",
                    when, job)
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
    os._exit(0)  # the requeue ends this job; nothing else to report


def _error_file() -> Path | None:
    """`<job folder>/<job id>_<rank>_error.json` in a submitit job, else None."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    from submitit import JobEnvironment

    env = JobEnvironment()
    return Path(env.paths.folder) / f"{env.job_id}_{env.global_rank}_error.json"


def _record_error(path: Path | None, exc: BaseException) -> None:
    if path is None:
        return
    from mixerbench.files import atomic_write_json

    why = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:MAX_WHY]
    try:
        atomic_write_json(path, {"error": why})
    except OSError:
        pass  # the log still has the traceback


def export_distributed_env() -> None:
    """In a submitit job of more than one task, set torchrun's variables from the job's."""
    if "SUBMITIT_EXECUTOR" not in os.environ:  # not in a job (e.g. called directly)
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        # CUDA_VISIBLE_DEVICES is left alone: the local executor has already given the job
        # its GPUs, and `runtime.choose` maps LOCAL_RANK onto the GPUs a process can see
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def _job_log(logger: logging.Logger) -> Log:
    def log(event: str, info: dict) -> None:
        if event != TrainEvent.STAGE:
            logger.info("%s %s", event, " ".join(
                f"{k}={v}" for k, v in info.items() if isinstance(v, (str, int, float))))

    return log


# ------------------------------------------------------------------------ submitit jobs


def make_executor(launcher: Launcher, folder: Path, cluster: str | None = None):
    """submitit's executor for `launcher`, writing into `folder`: its `LocalExecutor` for
    local (whose GPUs per job `_fill` sets), `AutoExecutor` for SLURM. `cluster` replaces
    "slurm" (submitit's "debug" cluster runs each job inside this process)."""
    submitit = import_submitit()
    gpus = gpus_per_job(launcher)
    common = dict(gpus_per_node=gpus, tasks_per_node=max(1, gpus, launcher.tasks_per_job or 0),
                  timeout_min=launcher.time_limit or LOCAL_TIMEOUT_MIN)
    if launcher.kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(**common)
        return executor
    try:
        # submitit's time-out count guards its own requeues (a warning that comes while the
        # job still loads); `run_cell_job` bounds the others
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster or "slurm",
                                         slurm_max_num_timeout=MAX_IDLE_REQUEUES)
    except RuntimeError as exc:  # no srun on this machine
        raise UserError(f"--launcher slurm needs SLURM's sbatch and srun on this machine ({exc}); "
                        "submit from a login node, or use --launcher local.") from None
    slurm = dict(slurm_partition=launcher.partition,
                 slurm_additional_parameters=dict(launcher.slurm_args) or None,
                 slurm_signal_delay_s=signal_delay_s(launcher.time_limit or 0))
    if not gpus:  # no `--gpus-per-node=0` line: a GPU-less cluster refuses any gres request
        common.pop("gpus_per_node")
    executor.update_parameters(name="mixerbench", nodes=1, **common,
                               **{k: v for k, v in slurm.items() if v is not None})
    return executor


def signal_delay_s(time_limit_min: int) -> int:
    """Seconds before its time limit that SLURM warns a job (USR2), for the job to finish its
    step, save a checkpoint and requeue itself: submitit's 90 s, less for short limits. SLURM
    checks time limits every 30 s and sends the warning up to 30 s early, so a 1-minute job
    hears it 20-50 s after it starts (10 s delay), after the job has loaded and begun to train."""
    return max(10, min(90, time_limit_min * 60 // 6))


def gpus_per_job(launcher: Launcher) -> int:
    if launcher.gpus_per_job is not None:
        return launcher.gpus_per_job
    if launcher.kind == "slurm":
        return 1
    import torch

    return 1 if torch.cuda.is_available() else 0


def check_partition(launcher: Launcher) -> Launcher:
    """Ask SLURM (`sinfo`) about the partition before anything is submitted: an unknown
    partition is refused, and so are GPUs on a partition that has none (sbatch would fail with
    "Invalid generic resource"); without --gpus-per-job a GPU-less partition gets CPU jobs."""
    import subprocess

    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%P|%G"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"--launcher slurm could not ask SLURM about its partitions (sinfo: "
                        f"{exc}); submit from a login node, or use --launcher local.") from None
    if out.returncode != 0:
        raise UserError(f"--launcher slurm could not ask SLURM about its partitions (sinfo: "
                        f"{out.stderr.strip() or out.returncode}); check that the cluster is "
                        "up, or use --launcher local.")
    gres: dict[str, set[str]] = {}
    default = None
    for line in out.stdout.splitlines():
        name, _, g = line.strip().partition("|")
        if name.endswith("*"):
            name = default = name[:-1]
        gres.setdefault(name, set()).update(x for x in g.split(",") if x and x != "(null)")
    name = launcher.partition or default
    if name is None:
        raise UserError("This SLURM cluster has no default partition; name one with "
                        f"--partition (sinfo lists {', '.join(sorted(gres)) or 'none'}).")
    if name not in gres:
        raise UserError(f"SLURM has no partition '{name}' (sinfo lists "
                        f"{', '.join(sorted(gres)) or 'none'}); pass one of them to --partition.")
    has_gpus = any(g.split(":")[0] == "gpu" for g in gres[name])
    if launcher.gpus_per_job is None:
        return dataclasses.replace(launcher, gpus_per_job=1 if has_gpus else 0)
    if launcher.gpus_per_job and not has_gpus:
        raise UserError(f"SLURM partition '{name}' has no GPUs (sinfo lists no gpu GRES): pass "
                        "--gpus-per-job 0 to train the cells on its CPUs, or a GPU partition "
                        "with --partition.")
    return launcher


def slots(launcher: Launcher, n_cells: int) -> list[tuple[int, ...]]:
    """One entry per cell that may run at once: the GPUs it gets (local), or () (SLURM
    allocates them, or a CPU-only cell)."""
    gpus = gpus_per_job(launcher)
    if launcher.kind == "slurm":
        return [()] * min(n_cells, launcher.parallel or n_cells)
    if not gpus:
        return [()] * min(n_cells, launcher.parallel or 1)
    visible = _visible_gpus()
    fit = len(visible) // gpus
    if fit < 1 or (launcher.parallel or 0) > fit:
        raise UserError(f"This machine has {len(visible)} GPU(s): room for {fit} cell(s) of "
                        f"{gpus} at once, not {launcher.parallel or 1}; lower --parallel or "
                        "--gpus-per-job.")
    n = min(n_cells, launcher.parallel or fit)
    return [tuple(visible[i * gpus:(i + 1) * gpus]) for i in range(n)]


def _visible_gpus() -> list[int]:
    """The GPUs this process may use, as the ids CUDA_VISIBLE_DEVICES names them."""
    import torch

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return list(range(torch.cuda.device_count()))
    try:
        return [int(x) for x in env.split(",") if x.strip()]
    except ValueError:
        raise UserError("--launcher local hands out GPUs by index; set CUDA_VISIBLE_DEVICES to "
                        f"numbers such as 0,1 rather than '{env}'.") from None


def cpu_threads(launcher: Launcher, parallel: int) -> int | None:
    """Threads per CPU-only local job: the launcher's, else the cores shared out among the
    processes at once (each takes all cores otherwise and they slow each other down); None
    keeps an OMP_NUM_THREADS the user set (and on SLURM the job takes the CPUs it was given,
    `run_cell_job`)."""
    if launcher.kind != "local" or gpus_per_job(launcher) or "OMP_NUM_THREADS" in os.environ:
        return None
    return launcher.threads or max(1, _cores() // (parallel * (launcher.tasks_per_job or 1)))


# ------------------------------------------------------------------- the sweep's own folder


def private_folder(cells: list[Cell]) -> Path:
    """A new folder for submitit's files of this launch (the pickled job it runs, the job
    logs): `<cache>/launcher/<experiment>-<time>-<pid>/`, where `<cache>` is MIXERBENCH_CACHE
    or ~/.cache/mixerbench. It is kept out of the results folder, which other people may be
    able to write to: a pickle is code, and a job runs whatever its pickle says. The folder
    and `<cache>/launcher` are created 0700 and must be owned by this user and writable by
    nobody else; one that is not is refused, never used. On SLURM it must be on a filesystem
    the compute nodes see (home folders usually are; set MIXERBENCH_CACHE otherwise)."""
    from mixerbench.data.decode import cache_root
    from mixerbench.names import slug

    base = cache_root() / "launcher"
    name = f"{slug(cells[0].experiment or 'sweep')}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_private(base.parent, strict=False)
        _check_private(base)
        folder = base / name
        folder.mkdir(mode=0o700)
        _check_private(folder)
    except OSError as exc:
        raise UserError(f"Could not make the launcher's private folder under {base} "
                        f"({exc.strerror or exc}); set MIXERBENCH_CACHE to a folder of yours."
                        ) from None
    return folder


def _check_private(path: Path, strict: bool = True) -> None:
    """Refuse a folder that is a link, not ours, or that others may write to (`strict`: that
    others may read or enter either)."""
    import stat

    st = os.lstat(path)
    others = 0o077 if strict else 0o022
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() \
            or st.st_mode & others:
        raise UserError(f"{path} must be a folder of yours that nobody else can write to (it "
                        f"holds the jobs a sweep runs; mode {stat.filemode(st.st_mode)}, owner "
                        f"uid {st.st_uid}): chmod 700 it, or set MIXERBENCH_CACHE elsewhere.")


# ------------------------------------------------------------------------------- the parent



class JobState:
    """The `state` of an `Event.JOB`: what happened to a launched cell, one terminal line each
    (`view.ProgressView._job`)."""

    SUBMITTED = "submitted"
    STARTED = "started"    # SLURM (or the local executor) started it
    REQUEUED = "requeued"  # back in the queue (requeue, preemption, time limit); it resumes
    FINISHED = "finished"  # the job trained the cell
    REUSED = "reused"      # the cell had finished before: read back, not submitted
    FAILED = "failed"


# SLURM job states after which a job will not run again (squeue --states=all keeps them for
# MinJobAge, 300 s by default; a job it no longer lists has ended too)
SLURM_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
               "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT", "REVOKED"}
SLURM_WHY = {"CANCELLED": "its job was cancelled", "TIMEOUT": "its job reached its time limit",
             "NODE_FAIL": "its node failed", "OUT_OF_MEMORY": "its job ran out of memory",
             "PREEMPTED": "its job was preempted and not requeued",
             "DEADLINE": "its job reached its deadline", "BOOT_FAIL": "its node failed to boot"}
MAX_WHY = 500  # characters of a job's error line the parent reads back


@dataclass
class _Job:
    """A submitted cell: submitit's handle (for its id, log paths and cancel, never for its
    result), what SLURM last said, and the slot it holds."""

    handle: Any
    slot: int
    state: str = "PENDING"
    restarts: int = 0


@dataclass
class _Sweep:
    """The parent's view of a launched sweep while it waits."""

    cells: list[Cell]
    launcher: Launcher
    executor: Any
    job: CellJob
    slots: list[tuple[int, ...]]
    log: Log
    folder: Path
    todo: list[int] = field(default_factory=list)
    running: dict = field(default_factory=dict)  # cell index -> _Job
    out: list = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    done: int = 0
    shown: dict = field(default_factory=dict)  # the last `Event.CELLS` info


def _launched(cells: list[Cell], launcher: Launcher, log: Log) -> list[dict]:
    """Submit the cells as jobs (at most `len(slots)` at once), wait for all of them and return
    their summaries in cell order. A cell that has already finished is read back here, not
    submitted again. Ctrl-C / SIGTERM stop the running jobs (each saves a checkpoint) and raise
    `SweepInterrupted`; failed cells raise `CellsFailed` at the end."""
    from mixerbench.runtime import stop_signals

    if launcher.kind == "slurm":
        launcher = check_partition(launcher)
    out: list = [None] * len(cells)
    todo = []
    done = 0
    for i, cell in enumerate(cells):
        summary = _read_back(cell)
        if summary is None:
            todo.append(i)
            continue
        done += 1
        out[i] = summary
        log(Event.JOB, dict(cell.label, state=JobState.REUSED, index=done, of=len(cells), job_id="-",
                        run_id=summary["run_id"], top1=summary["top1"]))
    if not todo:
        return out
    room = slots(launcher, len(todo))
    folder = private_folder(cells)
    sw = _Sweep(cells, launcher, make_executor(launcher, folder),
                CellJob(cpu_threads(launcher, len(room))), room, log, folder,
                todo=todo, out=out, done=done)
    log(Event.LAUNCH, dict(launcher=launcher.kind, cells=len(todo), parallel=len(room),
                           threads=sw.job.threads or _omp_threads(), auto=launcher.auto,
                           folder=str(folder)))
    poll = 0.5 if launcher.kind == "local" else SLURM_POLL_S
    with stop_signals() as stop, _quiet_submitit():
        while sw.todo or sw.running:
            _fill(sw)
            _watch(sw)
            _progress(sw)
            if stop["stop"]:
                _stop(sw)
            if sw.todo or sw.running:
                time.sleep(poll)
    log(Event.CELLS, dict(done=len(cells), of=len(cells), running=0))
    if sw.failed:
        raise CellsFailed(f"{len(sw.failed)} of {len(cells)} cells failed ({sw.failed[0]}); "
                          f"their logs are in {folder}. The other cells' results are recorded: "
                          "run the same command again to retry the failed ones.")
    return sw.out


SLURM_POLL_S = 5.0  # one squeue call per poll, for all of the sweep's jobs


def _read_back(cell: Cell) -> dict | None:
    """The summary of `cell`'s run if it has finished, read back from its run directory and
    the CSVs the way the serial command reads it (nothing a job pickled); else None."""
    if not _finished(cell):
        return None
    return run_cell(cell)  # a finished run is read back (and checked), never retrained


@contextmanager
def _quiet_submitit():
    """submitit's own log lines (`Bypassing sacct error ...`) stay off the parent's terminal:
    the parent asks SLURM itself and says what happened in one line per job event."""
    logger = logging.getLogger("submitit")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fill(sw: _Sweep) -> None:
    """Submit waiting cells while a slot is free."""
    while sw.todo and len(sw.running) < len(sw.slots):
        taken = {job.slot for job in sw.running.values()}
        slot = next(s for s in range(len(sw.slots)) if s not in taken)
        i = sw.todo.pop(0)
        if sw.slots[slot]:  # local GPUs: this slot's devices, not the first ones for every job
            sw.executor.update_parameters(visible_gpus=sw.slots[slot])
        try:
            handle = sw.executor.submit(sw.job, sw.cells[i])
        except Exception as exc:  # submitit's FailedJobError: sbatch refused the job
            if sw.launcher.kind != "slurm" or type(exc).__name__ != "FailedJobError":
                raise
            lines = [ln.strip() for ln in str(exc).splitlines() if "error" in ln.lower()]
            raise UserError(f"SLURM refused the job ({(lines or [str(exc)])[-1]}); check "
                            "--partition, --gpus-per-job, --time-limit and --slurm-arg.") from None
        sw.running[i] = _Job(handle, slot)
        sw.log(Event.JOB, dict(sw.cells[i].label, state=JobState.SUBMITTED, job_id=handle.job_id))


def _watch(sw: _Sweep) -> None:
    """Say what changed for each running job (started, requeued) and take the cells of the
    jobs that ended: from their run directory when they finished, else why they did not."""
    states = _slurm_states([j.handle.job_id for j in sw.running.values()]) \
        if sw.launcher.kind == "slurm" else {}
    for i, job in list(sw.running.items()):
        jid = job.handle.job_id
        if sw.launcher.kind == "slurm":
            # a job SLURM no longer lists (past MinJobAge) has ended, one way or another
            state, restarts = states.get(jid, ("GONE", job.restarts))
        else:
            state, restarts = ("RUNNING" if not job.handle.done() else "ENDED"), 0
        label = dict(sw.cells[i].label, job_id=jid)
        # a job can start and be requeued, or start and finish, between two polls (SLURM's
        # are SLURM_POLL_S apart): a requeue or a finished cell says it started all the same
        if restarts > job.restarts:
            if job.state != "RUNNING":
                sw.log(Event.JOB, dict(label, state=JobState.STARTED))
            job.restarts = restarts
            sw.log(Event.JOB, dict(label, state=JobState.REQUEUED, restarts=restarts))
            job.state = "PENDING"
        if state == "RUNNING" and job.state != "RUNNING":
            sw.log(Event.JOB, dict(label, state=JobState.STARTED))
        seen_running, job.state = job.state == "RUNNING", state
        if state == "RUNNING" or not (state in SLURM_ENDED or state in ("GONE", "ENDED")):
            continue
        del sw.running[i]
        sw.done += 1
        where = dict(label, index=sw.done, of=len(sw.cells))
        summary = None
        try:
            summary = _read_back(sw.cells[i])
            why = None if summary else _why(job, state, sw.folder)
        except UserError as exc:
            why = str(exc)
        if summary is None:
            name = ", ".join(f"{k} {v}" for k, v in sw.cells[i].label.items())
            sw.failed.append(f"{name}: {why.rstrip('.')}")
            sw.log(Event.JOB, dict(where, state=JobState.FAILED, error=why,
                               log=str(job.handle.paths.stderr)))
            continue
        sw.out[i] = summary
        if not seen_running:
            sw.log(Event.JOB, dict(label, state=JobState.STARTED))
        sw.log(Event.JOB, dict(where, state=JobState.FINISHED, run_id=summary["run_id"],
                           top1=summary["top1"]))


def _progress(sw: _Sweep) -> None:
    """`Event.CELLS` when it changed: the cells done, plus each running one's share of its
    steps (from its job's log; under 1 until its job has ended: it still evaluates)."""
    running = [_job_steps(job) for job in sw.running.values()]
    done = sw.done + sum(min(step / total, 0.99) for step, total in filter(None, running) if total)
    info = dict(done=round(done, 3), of=len(sw.cells), running=len(sw.running))
    if info != sw.shown:
        sw.shown = info
        sw.log(Event.CELLS, info)


LOG_TAIL = 16384  # bytes of a job's log read for its progress


def _job_steps(job: _Job) -> tuple[int, int] | None:
    """(step, total steps) of a running job's cell, from the last line of its log naming both
    (`_job_log` writes the loop's start and every tenth step); None before it trains. The log
    is in the sweep's private folder; it is opened without blocking, only as a regular file,
    and only its tail is read."""
    import stat

    try:
        fd = os.open(job.handle.paths.stderr, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            size = os.fstat(fh.fileno())
            if not stat.S_ISREG(size.st_mode):
                return None
            fh.seek(max(0, size.st_size - LOG_TAIL))
            lines = fh.read(LOG_TAIL).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        total, step = re.search(r"\btotal_steps=(\d+)", line), re.search(r"\bstep=(\d+)", line)
        if total and step:
            return int(step.group(1)), int(total.group(1))
    return None


def _slurm_states(job_ids: list[str]) -> dict[str, tuple[str, int]]:
    """(state, restart count) per job id, from one `squeue` call (no sacct: many clusters run
    without an accounting database). A failed call is treated as no news."""
    import subprocess

    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(job_ids)}",
                              "--Format=JobID:|,State:|,RestartCnt:|"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        out = None
    if out is None or out.returncode != 0:
        if out is not None and "Invalid job id" in out.stderr:
            return {}  # none of them is listed any more: all have ended
        return {j: ("UNKNOWN", 0) for j in job_ids}  # no news: ask again at the next poll
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 3 and parts[2].isdigit():
            states[parts[0]] = (parts[1].split()[0] if parts[1] else "UNKNOWN", int(parts[2]))
    return states


def _why(job: _Job, state: str, folder: Path) -> str:
    """One line for a cell whose job ended without finishing it: the error its job recorded
    (a JSON of one string, size-bounded and checked), else what SLURM says of the job."""
    import json
    import stat

    if state in SLURM_WHY:
        return f"{SLURM_WHY[state]} (SLURM job state {state})"
    for path in sorted(folder.glob(f"{job.handle.job_id}_*_error.json")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    continue
                data = json.loads(fh.read(4 * MAX_WHY))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            why = " ".join(data["error"].split())[:MAX_WHY]
            return re.sub(r"^(\w+Error|Interrupted): ", r"\1: ", why) or "no reason given"
    return f"the job ended ({state.lower()}) without finishing the run; see its log"


def _stop(sw: _Sweep) -> None:
    """Stop the running jobs so each saves a checkpoint, then raise `SweepInterrupted`."""
    jobs = [job.handle for job in sw.running.values()]
    for job in jobs:
        if sw.launcher.kind == "local":
            # the job id is the pid of submitit's controller, which passes SIGTERM on to the
            # cell's process: the trainer finishes its step and saves (job.cancel() sends
            # SIGINT, after which the controller kills the process a second later)
            try:
                os.kill(int(job.job_id), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        else:
            job.cancel(check=False)
    if sw.launcher.kind == "local":  # SLURM ends cancelled jobs itself, SIGTERM first
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and not all(job.done() for job in jobs):
            time.sleep(0.2)
        for job in jobs:  # those that did not stop in time end as a killed run would
            if not job.done():
                job.cancel(check=False)
    raise SweepInterrupted(
        f"Interrupted: {len(jobs)} running cell(s) were stopped with a checkpoint and "
        f"{len(sw.todo)} not started; run the same command again to continue the sweep.")
