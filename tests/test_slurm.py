"""Sweeps on a real SLURM cluster: `--launcher slurm` against the one-node cluster that
`tests/slurm/start-cluster.sh` starts on this machine (slurmctld + slurmd + munge, partition
`debug`, no GPUs, no accounting database). Skipped, with the reason, where it is not up.

Every scenario is a command as a user types it, run in the background the moment the module
starts (the cluster runs their jobs side by side), and each test then checks its own: the
sweep gives the serial table; a GPU request on a GPU-less partition is refused before
anything is submitted; `scontrol requeue` (what preemption does) and the time limit resume
the cell from its checkpoint; `scancel` fails the sweep naming the cell and the same command
finishes only that cell; two tasks on CPU train one DDP run through srun; the parent prints
one line per job event and none of submitit's own warnings.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import start

PARTITION = "debug"


def _cluster_problem() -> str | None:
    """Why the tests cannot use a cluster here, or None when partition `debug` is up."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client here; start the test cluster with `sudo tests/slurm/start-cluster.sh`"
    try:
        out = subprocess.run(["sinfo", "--noheader", "--partition", PARTITION, "--format=%T"],
                             capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s"
    if out.stdout.strip() not in ("idle", "mixed", "allocated"):
        return (f"SLURM partition {PARTITION} is not up ({(out.stderr or out.stdout).strip()}); "
                "start the test cluster with `sudo tests/slurm/start-cluster.sh`")
    return None


pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(_cluster_problem() is not None,
                                 reason=str(_cluster_problem()))]

# The smoke preset on the embedded synthetic set at 32 px, CPU, no benchmark, a CSV table.
SMOKE = ["--preset", "smoke", "--dataset", "synthetic", "--set", "model.img_size=32",
         "--no-bench", "--device", "cpu", "--format", "csv"]
SLURM = ["--launcher", "slurm", "--partition", PARTITION, "--time-limit", "10"]
# submitit's own log lines and Python's, which the parent's terminal must not show
RAW = ("Bypassing", "sacct", "submitit", "Traceback", "Warning")


class Command:
    """`mixerbench --quiet ARGS` in the background; its stderr lines collected as they come,
    so a scenario can act on them (a job id, the job folder) while the command runs."""

    running: list[Command] = []  # stopped (SIGTERM: their jobs are cancelled) after the module

    def __init__(self, args, env):
        self.proc = start(args, env)
        Command.running.append(self)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 600) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            assert self.proc.poll() is None or self._reader.is_alive(), self.err
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r} in:\n{self.err}")

    def finish(self, timeout: float = 400) -> tuple[int, str, str]:
        out = self.proc.stdout.read()
        self.proc.wait(timeout)
        self._reader.join(10)
        return self.proc.returncode, out, self.err

    @property
    def err(self) -> str:
        return "\n".join(self.lines)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def table_of(out: str) -> list[dict]:
    """The compare table (--format csv) without the columns that measure time."""
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "device_hours")}
            for r in csv.DictReader(out.splitlines())]


def wait_until(predicate, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def job_log(folder: str, job: str) -> str:
    return (Path(folder) / f"{job}_0_log.err").read_text()


# ------------------------------------------------------------------------------ scenarios
# Each returns what its test checks; all of them start at once (see `scenarios`).


def same_table_as_serial(root: Path, env):
    sweep = ["compare", "--models", "mixer,vit", *SMOKE, "--set", "steps=6"]
    serial = Command([*sweep, "--results-dir", root / "serial"], env)
    slurm = Command([*sweep, "--results-dir", root / "slurm", *SLURM], env)
    return serial.finish(), slurm.finish(), root


def reproduce_as_serial(root: Path, env):
    # the smallest reproduction: Figure 4's six cells (Mixer and ResNet on original, patch-
    # and globally shuffled images) at the smoke budget, 4 steps each
    exp = ["reproduce", "shuffle", "--budget", "smoke", "--dataset", "synthetic", "--device",
           "cpu", "--set", "model.img_size=32", "--set", "steps=4"]
    serial = Command([*exp, "--results-dir", root / "serial"], env)
    slurm = Command([*exp, "--results-dir", root / "slurm", *SLURM], env)
    return serial.finish(), slurm.finish(), root


def gpus_on_a_cpu_partition(root: Path, env):
    return Command(["compare", "--models", "mixer", *SMOKE, "--results-dir", root, *SLURM,
                    "--gpus-per-job", "1"], env).finish(), root


def requeued_while_training(root: Path, env):
    """`scontrol requeue JOB` once the cell has saved its first checkpoint, as preemption
    (or a node drain) does: SLURM stops the job with SIGTERM and queues it again."""
    cmd = Command(["compare", "--models", "mixer", *SMOKE, "--set", "steps=60",
                   "--set", "eval_every=10", "--set", "ckpt_every=10", "--results-dir", root,
                   *SLURM], env)
    job = cmd.wait_for(r"submitted .*\(job (\d+)\)").group(1)
    wait_until(lambda: any((root / "runs").glob("*/state-last.pt")), "a checkpoint")
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    return cmd.finish(), root, job


def step_seconds(root: Path, env) -> float:
    """Seconds per training step of the time-limit scenario's model on this machine: steps
    10 to 40 of a 40-step run, from the training time its evaluations record (the first steps,
    slower while the process warms up, would make the steps look slower than they are and the
    cell too short), measured before the other scenarios start: measured beside them, the
    steps looked slower than the job later ran alone, and the cell ended before SLURM's
    warning."""
    code, _, err = Command(["pretrain", "--preset", "smoke", "--dataset", "synthetic",
                            "--img-size", "32", "--steps", "40", "--device", "cpu",
                            "--set", "eval_every=10", "--results-dir", root / "speed"],
                           env).finish()
    assert code == 0, err
    elapsed = {int(r["step"]): float(r["elapsed_s"]) for r in rows(run_dir(root / "speed")
                                                                    / "metrics.csv")}
    return (elapsed[40] - elapsed[10]) / 30


# Seconds the time-limit scenario's cell trains, alone on this machine: SLURM's warning comes
# 20-50 s after its 1-minute job starts and must find it training (it loads for a few seconds
# first), so 60 s leaves at least 10 s to spare; beside the other scenarios it trains slower,
# which only adds to that.
LIMIT_CELL_S = 60


def past_the_time_limit(root: Path, env, step_s: float):
    """A cell of over a minute under --time-limit 1: SLURM warns the job (submitit's USR2)
    20-50 s after it starts (it checks every 30 s), the job saves a checkpoint and requeues
    itself, as often as it takes. The cell's length is set from this machine's speed
    (`step_seconds`), so that it trains for `LIMIT_CELL_S`."""
    steps = max(120, min(6000, round(LIMIT_CELL_S / step_s / 60) * 60))  # eval_every divides it
    cmd = Command(["compare", "--models", "mixer", *SMOKE, "--set", f"steps={steps}",
                   "--set", f"eval_every={steps // 6}", "--results-dir", root / "sweep",
                   "--launcher", "slurm", "--partition", PARTITION, "--time-limit", "1"], env)
    job = cmd.wait_for(r"submitted .*\(job (\d+)\)").group(1)
    return cmd.finish(), root / "sweep", job, steps


def cancelled(root: Path, env):
    sweep = ["compare", "--models", "mixer,vit", *SMOKE, "--set", "steps=6",
             "--results-dir", root, *SLURM]
    first = Command(sweep, env)
    job = first.wait_for(r"submitted model vit.*\(job (\d+)\)").group(1)
    subprocess.run(["scancel", job], check=True, timeout=30)
    return first.finish(), Command(sweep, env).finish(), root


def two_tasks_on_cpu(root: Path, env):
    return Command(["compare", "--models", "mixer", *SMOKE, "--set", "steps=4",
                    "--results-dir", root, *SLURM, "--gpus-per-job", "0",
                    "--tasks-per-job", "2"], env).finish(), root


SCENARIOS = {f.__name__: f for f in (same_table_as_serial, reproduce_as_serial,
                                     gpus_on_a_cpu_partition, requeued_while_training,
                                     past_the_time_limit, cancelled, two_tasks_on_cpu)}


@pytest.fixture(scope="module")
def scenarios(request, tmp_path_factory, child_env):
    """Start, at once, the scenario of every test of this module that will run (a test names
    its scenario with `uses`); each test waits for its own."""
    wanted = {m.args[0] for item in request.session.items if item.module is request.module
              for m in item.iter_markers("uses")}
    extra = {}
    if "past_the_time_limit" in wanted:
        extra["past_the_time_limit"] = (step_seconds(tmp_path_factory.mktemp("speed"), child_env),)
    pool = ThreadPoolExecutor(max_workers=len(wanted) or 1)
    futures = {name: pool.submit(SCENARIOS[name], tmp_path_factory.mktemp(name), child_env,
                                 *extra.get(name, ()))
               for name in sorted(wanted)}
    yield {name: f.result for name, f in futures.items()}
    for cmd in Command.running:  # a scenario that failed may have left its sweep running
        if cmd.proc.poll() is None:
            cmd.proc.terminate()
    pool.shutdown(wait=True)


EVENTS = {"submitted": r"^submitted ", "started": r"^started ", "requeued": r"^requeued ",
          "finished": r": \S+ trained, top-1 ", "read back": r": \S+ read back, top-1 ",
          "failed": r" failed \(job \d+\): "}


def events(err: str, kind: str) -> list[str]:
    """The parent's lines about job events of `kind`."""
    return [ln for ln in err.splitlines() if re.search(EVENTS[kind], ln)]


def assert_clean(err: str) -> None:
    """Nothing on the parent's terminal but its own lines: no submitit or Python warnings."""
    for raw in RAW:
        assert raw not in err, err


def job_log(err: str, job: str) -> str:
    """A job's log, in the folder the launch line names."""
    folder = Path(re.search(r"job logs in (\S+)", err).group(1))
    return (folder / f"{job}_0_log.err").read_text()


def jobs_of(err: str) -> list[str]:
    return re.findall(r"^submitted .*\(job (\d+)\)", err, re.M)


def run_dir(root: Path) -> Path:
    run, = (root / "runs").iterdir()
    return run


# -------------------------------------------------------------------------------- tests


@pytest.mark.uses("same_table_as_serial")
def test_a_slurm_sweep_gives_the_serial_table(scenarios, child_env):
    """`compare --launcher slurm` (no --gpus-per-job: the partition has no GPUs, so CPU jobs)
    trains the same runs as the serial command and joins the same table, top-1 to the digit
    (both one thread); the terminal shows one line per job event, and the job logs are in the
    private launcher folder the launch line names."""
    (code, serial, err_s), (code_l, launched, err), root = scenarios["same_table_as_serial"]()
    assert code == 0, err_s[-3000:]
    assert code_l == 0, err[-3000:]
    assert len(table_of(serial)) == 2 and table_of(launched) == table_of(serial)
    assert sorted(r["run_id"] for r in rows(root / "slurm" / "accuracy.csv")) == \
        sorted(r["run_id"] for r in rows(root / "serial" / "accuracy.csv"))
    assert [len(events(err, k)) for k in ("submitted", "started", "finished")] == [2, 2, 2], err
    assert len(err.splitlines()) == 7, err  # the launch line, 6 events
    assert_clean(err)
    assert re.search(r"job logs in (\S+)", err).group(1).startswith(
        str(Path(child_env["MIXERBENCH_CACHE"]) / "launcher"))
    for job in jobs_of(err):
        assert "Job completed successfully" in job_log(err, job)
    assert not list((root / "slurm").rglob("*.pkl"))  # no pickle in the results folder


@pytest.mark.uses("reproduce_as_serial")
def test_reproduce_on_slurm_writes_the_serial_rows(scenarios):
    """`reproduce shuffle` at the smoke budget: six cells as SLURM jobs, then the parent's
    few-shot probes and rows, the serial command's row for row (same runs, same numbers)."""
    (code, _, err_s), (code_l, _, err), root = scenarios["reproduce_as_serial"]()
    assert code == 0, err_s[-3000:]
    assert code_l == 0, err[-3000:]
    keep = ("run_id", "model", "train_shuffle", "metric", "top1")
    serial, launched = ([{k: r[k] for k in keep} for r in rows(root / d / "shuffle.csv")]
                        for d in ("serial", "slurm"))
    assert len(serial) == 12 and launched == serial
    assert [len(events(err, k)) for k in ("submitted", "finished")] == [6, 6], err
    assert_clean(err)


@pytest.mark.uses("gpus_on_a_cpu_partition")
def test_gpus_on_a_partition_without_gpus_are_refused_before_submitting(scenarios):
    """--gpus-per-job 1 on a partition without GPUs (today's sbatch gres error): exit 2 and
    one sentence naming --gpus-per-job 0, before any job is submitted or file written."""
    (code, out, err), root = scenarios["gpus_on_a_cpu_partition"]()
    assert code == 2 and out == "", err
    assert len(err.splitlines()) == 1 and "--gpus-per-job 0" in err, err
    assert f"partition '{PARTITION}' has no GPUs" in err
    assert "job logs in" not in err and not (root / "runs").exists()


@pytest.mark.uses("requeued_while_training")
def test_a_requeued_job_resumes_from_its_checkpoint(scenarios):
    """`scontrol requeue` mid-training (preemption, a node drain): the sweep says so, the job
    starts again from its last checkpoint, and the sweep ends 0 with one row per cell and
    no duplicate metric rows."""
    (code, out, err), root, job = scenarios["requeued_while_training"]()
    assert code == 0, err[-3000:]
    assert len(table_of(out)) == 1 and len(rows(root / "accuracy.csv")) == 1
    assert len(events(err, "requeued")) == 1 and len(events(err, "started")) == 2, err
    assert len(events(err, "finished")) == 1
    assert [r["step"] for r in rows(run_dir(root) / "metrics.csv")] == \
        [str(s) for s in range(10, 61, 10)]
    assert re.search(r"resumed step=[1-9]", job_log(err, job)), job_log(err, job)
    assert_clean(err)


@pytest.mark.uses("past_the_time_limit")
def test_a_cell_longer_than_its_time_limit_requeues_and_finishes(scenarios):
    """--time-limit 1 and a cell of more than a minute: SLURM's warning signal makes the job
    save a checkpoint and requeue itself; the requeued job resumes and the sweep finishes, one
    row, each evaluation once in metrics.csv, the resume in the job's log."""
    (code, out, err), root, job, steps = scenarios["past_the_time_limit"]()
    assert code == 0, err[-3000:]
    assert len(rows(root / "accuracy.csv")) == 1 and len(table_of(out)) == 1
    assert len(events(err, "requeued")) >= 1, err
    log = job_log(err, job)
    assert re.search(r"requeue: checkpoint at step [1-9]", log), log
    assert re.search(r"resumed step=[1-9]", log), log
    assert [int(r["step"]) for r in rows(run_dir(root) / "metrics.csv")] == \
        list(range(steps // 6, steps + 1, steps // 6))
    assert_clean(err)


@pytest.mark.uses("cancelled")
def test_a_cancelled_job_fails_the_sweep_and_the_same_command_finishes_it(scenarios):
    """`scancel` of one job: the sweep names the cell, exits 1 once the other finished; the
    same command reads that one back and submits only the cancelled cell."""
    (code, _, err), (code2, out2, err2), root = scenarios["cancelled"]()
    assert code == 1, err[-3000:]
    failed, = events(err, "failed")
    assert "model vit" in failed and "cancelled" in failed
    assert err.splitlines()[-1].startswith("error: 1 of 2 cells failed (model vit, seed 0: ")
    assert len(events(err, "finished")) == 1
    assert code2 == 0, err2[-3000:]
    assert [len(events(err2, k)) for k in ("read back", "submitted", "finished")] == [1, 1, 1]
    assert "submitted model vit" in events(err2, "submitted")[0]
    assert len(table_of(out2)) == 2 and len(rows(root / "accuracy.csv")) == 2
    assert_clean(err + err2)


@pytest.mark.uses("two_tasks_on_cpu")
def test_two_tasks_on_cpu_train_one_ddp_run(scenarios):
    """--gpus-per-job 0 --tasks-per-job 2: one job of two tasks, started by srun, joined over
    gloo into one run on two devices: one row."""
    (code, out, err), root = scenarios["two_tasks_on_cpu"]()
    assert code == 0, err[-3000:]
    acc = rows(root / "accuracy.csv")
    assert len(acc) == 1 and acc[0]["num_devices"] == "2" and len(table_of(out)) == 1
    assert_clean(err)
