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
launcher is asked for. Job logs and submitit's pickles go to `<results>/launcher/<sweep id>/`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixerbench.errors import UserError
from mixerbench.train import Event as TrainEvent
from mixerbench.train import TrainingStopped

Log = Callable[[str, dict], None]
LAUNCHERS = ("local", "slurm")
INSTALL = 'pip install "mixerbench[launchers]"'
# The local executor ends a job after timeout_min (default 2 minutes): without --time-limit a
# local cell may run for a week.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
STOP_GRACE_S = 30  # how long an interrupted local job may take to save its checkpoint


class Event:
    """The progress events of running cells, emitted as `log(event, info)` (by `run_cells`, and
    by sweeps that run cells of their own); `cli.ProgressView` renders them."""

    CELL = "cell"      # a cell starts here: its label, index, of
    LAUNCH = "launch"  # cells go out as jobs: launcher, cells, parallel, folder
    JOB = "job"        # a job was submitted or ended: its label, state, job_id, run_id, top1, ...


def _noop(event: str, info: dict) -> None:
    pass


class CellsFailed(TrainingStopped):
    """Some launched cells failed; the others finished and their results are recorded."""


class SweepInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM while jobs ran: they were stopped (checkpoints kept); rerun to go on."""


@dataclass(frozen=True)
class Cell:
    """One training run of a sweep, as `presets.resolve` takes it: plain strings, numbers and
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
        from mixerbench.presets import resolve

        return resolve(self.preset, model=self.model, dataset=self.dataset, kind=self.kind,
                       init=self.init, flags=self.flags, overrides=self.overrides)


def run_cell(cell: Cell, log: Log = _noop) -> dict:
    """Train one cell (or read it back when it has finished); its summary."""
    from mixerbench.train import train

    return train(cell.config(), cell.root, log=log, experiment=cell.experiment)


@dataclass(frozen=True)
class Launcher:
    """How `--launcher` runs cells. `parallel`: cells at once (local: default one per GPU slot,
    else 1; slurm: default all, SLURM queues them). `gpus_per_job`: devices per cell, one
    torch.distributed process each (default: 1 on SLURM and on a CUDA machine, else 0).
    `time_limit`: minutes per job. `slurm_args`: more `#SBATCH --key=value` lines."""

    kind: str
    parallel: int | None = None
    gpus_per_job: int | None = None
    partition: str | None = None
    time_limit: int | None = None
    slurm_args: dict = field(default_factory=dict)


def make_launcher(kind: str, *, parallel: int | None = None, gpus_per_job: int | None = None,
                  partition: str | None = None, time_limit: int | None = None,
                  slurm_args: list[str] | None = None) -> Launcher:
    """Check the `--launcher` options (every mistake a one-sentence `UserError`, before any
    cell trains) and that submitit is installed."""
    if kind not in LAUNCHERS:
        raise UserError(f"Unknown launcher '{kind}'; choose local or slurm.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--launcher starts its own processes, so run the sweep without torchrun "
                        "(--gpus-per-job N gives each cell N processes).")
    for name, value in (("--parallel", parallel), ("--time-limit", time_limit)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, not {value}.")
    if gpus_per_job is not None and gpus_per_job < 0:
        raise UserError(f"--gpus-per-job must be 0 or more, not {gpus_per_job}.")
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
    return Launcher(kind, parallel, gpus_per_job, partition, time_limit, extra)


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError(f"--launcher needs submitit, an optional dependency: {INSTALL}.") from None
    return submitit


# --------------------------------------------------------------------------- running cells


def run_cells(cells: list[Cell], launcher: Launcher | None = None, log: Log = _noop) -> list[dict]:
    """Train every cell and return their summaries in cell order: here one after another
    (`launcher` None), or as submitit jobs. Every cell's settings are checked first, so a typo
    in the last cell stops the sweep before the first one trains (a model built on the meta
    device: an option one family does not take is refused up front too)."""
    from mixerbench.train import check_model

    for cell in cells:
        cfg = cell.config()
        if not cfg.init:
            check_model(cfg)
    if launcher is None:
        out = []
        for i, cell in enumerate(cells):
            log(Event.CELL, dict(cell.label, index=i + 1, of=len(cells)))
            out.append(run_cell(cell, log))
        return out
    return _launched(cells, launcher, log)


class CellJob:
    """What submitit pickles for each job: trains one cell. Its `checkpoint` (submitit calls it
    when SLURM signals a time-out or preemption) requeues the job with the same cell, and the
    requeued job resumes the run from its last checkpoint."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __call__(self, cell: Cell) -> dict:
        return run_cell_job(cell, self.threads)

    def checkpoint(self, cell: Cell):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, cell)


def run_cell_job(cell: Cell, threads: int | None = None) -> dict:
    """The worker of a launched job: train `cell` and return its summary.

    A job of several tasks (a cell with `gpus_per_job` > 1) is one torch.distributed process
    per task: submitit's view of the job (SLURM_PROCID, SLURM_NTASKS, the node list, or the
    local executor's equivalents) is exported as the variables torchrun sets (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT), which `runtime.setup_distributed` reads.
    """
    import torch

    from mixerbench.runtime import teardown_distributed

    if threads:
        torch.set_num_threads(threads)
    if "SUBMITIT_EXECUTOR" in os.environ:  # a job process of its own (not submitit's debug)
        # submitit ignores SIGTERM in jobs; a stopped cell should end as a plain run does: at
        # once while it loads, with a checkpoint once it trains (the loop's own handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    export_distributed_env()
    # the job's log file is its stderr (submitit's folder), not a terminal
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    summary = run_cell(cell, _job_log(logging.getLogger("mixerbench.job")))
    teardown_distributed()
    return summary


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
    "slurm" (submitit's "debug" cluster runs each job inside this process: the tests use it)."""
    submitit = import_submitit()
    gpus = gpus_per_job(launcher)
    common = dict(gpus_per_node=gpus, tasks_per_node=max(1, gpus),
                  timeout_min=launcher.time_limit or LOCAL_TIMEOUT_MIN)
    if launcher.kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(**common)
        return executor
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster or "slurm")
    except RuntimeError as exc:  # no srun on this machine
        raise UserError(f"--launcher slurm needs SLURM's sbatch and srun on this machine ({exc}); "
                        "submit from a login node, or use --launcher local.") from None
    slurm = dict(slurm_partition=launcher.partition,
                 slurm_additional_parameters=dict(launcher.slurm_args) or None)
    executor.update_parameters(name="mixerbench", nodes=1, **common,
                               **{k: v for k, v in slurm.items() if v is not None})
    return executor


def gpus_per_job(launcher: Launcher) -> int:
    if launcher.gpus_per_job is not None:
        return launcher.gpus_per_job
    if launcher.kind == "slurm":
        return 1
    import torch

    return 1 if torch.cuda.is_available() else 0


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
    """Threads per CPU-only local job: the cores shared out (cells at once each take all
    cores otherwise and slow each other down); None keeps an OMP_NUM_THREADS the user set."""
    if launcher.kind != "local" or gpus_per_job(launcher) or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // parallel)


def sweep_folder(cells: list[Cell]) -> Path:
    """`<results>/launcher/<experiment>-<time>-<pid>/`: each launch of a sweep its own logs."""
    from mixerbench.names import slug

    name = f"{slug(cells[0].experiment or 'sweep')}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    return Path(cells[0].root) / "launcher" / name


@dataclass
class _Sweep:
    """The parent's view of a launched sweep while it waits."""

    cells: list[Cell]
    launcher: Launcher
    executor: Any
    job: CellJob
    slots: list[tuple[int, ...]]
    log: Log
    todo: list[int] = field(default_factory=list)
    running: dict = field(default_factory=dict)  # cell index -> (job, slot index)
    out: list = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    done: int = 0


def _launched(cells: list[Cell], launcher: Launcher, log: Log) -> list[dict]:
    """Submit the cells as jobs (at most `len(slots)` at once), wait for all of them and return
    their summaries in cell order. Ctrl-C / SIGTERM stop the running jobs (each saves a
    checkpoint) and raise `SweepInterrupted`; failed cells raise `CellsFailed` at the end."""
    from mixerbench.train import stop_signals

    folder = sweep_folder(cells)
    room = slots(launcher, len(cells))
    sw = _Sweep(cells, launcher, make_executor(launcher, folder),
                CellJob(cpu_threads(launcher, len(room))), room, log,
                todo=list(range(len(cells))), out=[None] * len(cells))
    log(Event.LAUNCH, dict(launcher=launcher.kind, cells=len(cells), parallel=len(room),
                       folder=str(folder)))
    poll = 0.5 if launcher.kind == "local" else 10.0
    with stop_signals() as stop:
        while sw.todo or sw.running:
            _fill(sw)
            _collect(sw)
            if stop["stop"]:
                _stop(sw)
            if sw.todo or sw.running:
                time.sleep(poll)
    if sw.failed:
        raise CellsFailed(f"{len(sw.failed)} of {len(cells)} cells failed ({sw.failed[0]}); "
                          f"their logs are in {folder}. The other cells' results are recorded: "
                          "run the same command again to retry the failed ones.")
    return sw.out


def _fill(sw: _Sweep) -> None:
    """Submit waiting cells while a slot is free."""
    while sw.todo and len(sw.running) < len(sw.slots):
        taken = {slot for _, slot in sw.running.values()}
        slot = next(s for s in range(len(sw.slots)) if s not in taken)
        i = sw.todo.pop(0)
        if sw.slots[slot]:  # local GPUs: this slot's devices, not the first ones for every job
            sw.executor.update_parameters(visible_gpus=sw.slots[slot])
        job = sw.executor.submit(sw.job, sw.cells[i])
        sw.running[i] = (job, slot)
        sw.log(Event.JOB, dict(sw.cells[i].label, state="submitted", job_id=job.job_id))


def _collect(sw: _Sweep) -> None:
    """Take the results of the jobs that ended."""
    for i, (job, _) in list(sw.running.items()):
        if not job.done():
            continue
        del sw.running[i]
        sw.done += 1
        where = dict(sw.cells[i].label, index=sw.done, of=len(sw.cells), job_id=job.job_id)
        try:
            s = job.results()[0]  # one result per task; every rank returns rank 0's summary
        except Exception as exc:
            why = _why(exc)
            name = ", ".join(f"{k} {v}" for k, v in sw.cells[i].label.items())
            sw.failed.append(f"{name}: {why.rstrip('.')}")
            sw.log(Event.JOB, dict(where, state="failed", error=why, log=str(job.paths.stderr)))
            continue
        sw.out[i] = s
        sw.log(Event.JOB, dict(where, state="reused" if s.get("reused") else "finished",
                           run_id=s["run_id"], top1=s["top1"]))


def _why(exc: Exception) -> str:
    """One line for a failed job: the last line of its traceback, which submitit's error puts
    between dashed lines (`mixerbench.errors.UserError: ...` shortened to `UserError: ...`),
    else the first line of the error (a job killed or lost before it could report)."""
    parts = str(exc).split("-" * 22)
    lines = [ln.strip() for ln in (parts[1] if len(parts) >= 3 else str(exc)).splitlines()
             if ln.strip()]
    if not lines:
        return type(exc).__name__
    return re.sub(r"^[\w.]+\.(\w+: )", r"\1", lines[-1]) if len(parts) >= 3 else lines[0]


def _stop(sw: _Sweep) -> None:
    """Stop the running jobs so each saves a checkpoint, then raise `SweepInterrupted`."""
    jobs = [job for job, _ in sw.running.values()]
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
