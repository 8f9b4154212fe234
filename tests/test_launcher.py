"""Launching: the documented torchrun commands, and `--launcher local|slurm` for sweeps.

The torchrun tests run the commands as a user types them (`python -m torch.distributed.run
--standalone --nproc_per_node 2 -m mixerbench ...`, two CPU processes over gloo) and check what
the user sees: exit 0, one accuracy row, the summary printed once (by rank 0). The launcher
tests run `compare` through submitit's local executor (real processes) and its debug executor
(in this process, standing in for SLURM), against the serial path.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, TINY_MODEL, cli, start

from mixerbench.formatting import pct
from mixerbench.launch import Cell

ROOT = Path(__file__).resolve().parents[1]



def torchrun(args, env, timeout: float = 120) -> tuple[int, str]:
    """`torchrun --standalone --nproc_per_node 2 -m mixerbench --quiet ARGS`: exit status and
    stdout+stderr of all processes (torchrun passes its workers' streams through)."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "mixerbench", "--quiet",
                           *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_pretrain_finetune_evaluate_as_documented(tmp_path, child_env):
    """The README's `torchrun --nproc_per_node 2 -m mixerbench pretrain ...`, then finetune
    from that run and evaluate it: each exits 0, writes its rows once and prints its summary
    once (rank 0 speaks; rank 1 used to crash printing a summary it did not have)."""
    res = ["--results-dir", tmp_path]
    code, out = torchrun(["pretrain", *TINY, "--steps", "4", *res],
                         child_env)
    assert code == 0, out[-3000:]
    acc = rows(tmp_path / "accuracy.csv")
    assert len(acc) == 1 and acc[0]["num_devices"] == "2"
    src = acc[0]["run_id"]
    assert out.count(f"on synthetic (test): top-1 {pct(acc[0]['top1'])} %") == 1, out
    # the start line, rank 0 only; 50 is the global batch, split over the two processes
    assert " ".join(out.split()).count("global batch 50 (25 per process x 2 processes)") == 1

    code, out = torchrun(["finetune", "--init", tmp_path / "runs" / src, *TINY_MODEL,
                          "--steps", "4", "--set", "optim.warmup_steps=1", *res], child_env)
    assert code == 0, out[-3000:]
    acc = rows(tmp_path / "accuracy.csv")
    ft = [r for r in acc if r["run_id"] != src]
    assert len(acc) == 2 and len(ft) == 1 and ft[0]["kind"] == "finetune"
    assert ft[0]["init"] == str(tmp_path / "runs" / src)
    assert out.count(f"on synthetic (test): top-1 {pct(ft[0]['top1'])} %") == 1, out

    code, out = torchrun(["evaluate", "--checkpoint", tmp_path / "runs" / src, "--dataset",
                          "synthetic", "--fewshot", "2", "--seeds", "1", "--device", "cpu",
                          *res], child_env)
    assert code == 0, out[-3000:]
    evals = [r for r in rows(tmp_path / "accuracy.csv") if r["kind"] == "evaluate"]
    assert len(evals) == 1 and evals[0]["run_id"] == src
    assert len(rows(tmp_path / "fewshot.csv")) == 1
    assert out.count("on synthetic (test, 32 px") == 1, out
    assert out.count("rows appended under") == 1


@pytest.mark.slow
def test_torchrun_compare_joins_on_rank_0_only(tmp_path, child_env):
    """`compare` under torchrun: both ranks train each cell together, then rank 0 alone runs
    the few-shot probe and writes the table (rank 1 used to crash on a summary it lacked)."""
    code, out = torchrun(["compare", "--models", "mixer", "--preset", "smoke", "--dataset",
                          "synthetic", "--set", "model.img_size=32", "--set", "model.width=16",
                          "--set", "model.depth=1", "--set", "data.batch_size=50",
                          "--set", "steps=4", "--fewshot", "2", "--no-bench", "--device", "cpu",
                          "--format", "csv", "--results-dir", tmp_path], child_env)
    assert code == 0, out[-3000:]
    assert len(rows(tmp_path / "accuracy.csv")) == 1 and len(rows(tmp_path / "fewshot.csv")) == 1
    assert out.count("linear 2-shot probe of") == 1 and out.count("dataset,model,") == 1


# ------------------------------------------------------------------------------- launchers

# The smoke preset's Mixer and ViT (width 64, 2 blocks) on synthetic 32 px images, 6 steps.
SWEEP = ["compare", "--models", "mixer,vit", "--preset", "smoke", "--dataset", "synthetic",
         "--set", "model.img_size=32", "--no-bench", "--device", "cpu", "--format", "csv"]


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def table_of(out: str) -> list[dict]:
    """The compare table (--format csv) without the columns that measure time."""
    timed = {"wall_time_s", "device_hours"}
    return [{k: v for k, v in r.items() if k not in timed}
            for r in csv.DictReader(out.splitlines())]


def run_ids(root: Path) -> list[str]:
    return sorted(r["run_id"] for r in rows(root / "accuracy.csv"))


@pytest.mark.slow
def test_local_launcher_gives_the_serial_table(tmp_path, child_env, one_thread):
    """`compare --launcher local --parallel 2` trains the same cells as the serial sweep, in
    two processes at once, and joins them into the same table (CPU training is deterministic
    per seed and thread count: the same run ids and the same top-1 to the last digit)."""
    pytest.importorskip("submitit")
    sweep = [*SWEEP, "--set", "steps=6"]
    proc = start([*sweep, "--results-dir", tmp_path / "local", "--launcher", "local",
                  "--parallel", "2"], child_env)
    # meanwhile the serial sweep, in this process on one thread as each job (another folder)
    serial = cli(*sweep, "--results-dir", tmp_path / "serial")
    launched = finish(proc)
    assert serial.exit_code == 0, serial.output
    assert launched[0] == 0, launched[2][-3000:]
    assert len(table_of(serial.stdout)) == 2
    assert table_of(launched[1]) == table_of(serial.stdout)
    assert run_ids(tmp_path / "local") == run_ids(tmp_path / "serial")
    folder = job_folder(launched[2])
    assert len(list(folder.glob("*_0_log.err"))) == 2  # one job per cell, its log there
    assert "2 cells as local jobs, up to 2 at once" in launched[2]
    # submitit's files are kept out of the results folder, in a private one of the user's
    assert folder.parent == Path(child_env["MIXERBENCH_CACHE"]) / "launcher"
    assert folder.stat().st_mode & 0o777 == 0o700 and not list((tmp_path / "local").rglob("*.pkl"))


@pytest.mark.slow
def test_a_cpu_sweep_sends_its_long_cells_to_one_thread_processes(tmp_path, child_env,
                                                                  one_thread):
    """Without --launcher, a sweep whose cells train on the CPU for AUTO_MIN_STEPS steps or
    more runs them as local processes of one torch thread each (a CPU's cores are used
    that way; the smoke models gain nothing from a second thread in one process) and gets
    what one-thread training one after another gets: the same runs, the same numbers to the
    last digit. Shorter cells, or a single one, stay in the command's process."""
    pytest.importorskip("submitit")
    from mixerbench import experiments
    from mixerbench.launch import AUTO_MIN_STEPS, auto_launcher

    tiny = {"model.width": "16", "model.depth": "1", "data.batch_size": "50",
            "model.img_size": "32", "steps": str(AUTO_MIN_STEPS)}
    cells = lambda models, **over: experiments.compare_cells(  # noqa: E731
        models, dataset="synthetic", root=tmp_path / "serial", device="cpu",
        overrides={**tiny, **over})
    assert auto_launcher(cells(["mixer", "vit"], steps=str(AUTO_MIN_STEPS - 1))) is None
    assert auto_launcher(cells(["mixer"])) is None
    chosen = auto_launcher(cells(["mixer", "vit"]))
    assert (chosen.kind, chosen.threads, chosen.parallel) == ("local", 1, 2)
    with pytest.MonkeyPatch.context() as mp:  # threads the user set: two don't fit 2 per core
        mp.setenv("OMP_NUM_THREADS", str(2 * len(os.sched_getaffinity(0))))
        assert auto_launcher(cells(["mixer", "vit"])) is None

    experiments.compare(["mixer", "vit"], dataset="synthetic", with_bench=False,
                        root=tmp_path / "serial", device="cpu", overrides=tiny)  # this process
    env = {k: v for k, v in child_env.items() if k != "OMP_NUM_THREADS"}  # the launcher's pick
    code, _, err = finish(start([*SWEEP, *[a for k, v in tiny.items() for a in ("--set", f"{k}={v}")],
                                 "--results-dir", tmp_path / "auto"], env))
    assert code == 0, err[-3000:]
    assert "2 cells as processes of 1 torch thread each" in " ".join(err.split()), err
    assert len(list(job_folder(err).glob("*_0_log.err"))) == 2
    keep = ("run_id", "top1", "top5", "loss")
    serial, auto = ([{k: r[k] for k in keep} for r in sorted(rows(tmp_path / d / "accuracy.csv"),
                                                             key=lambda r: r["run_id"])]
                    for d in ("serial", "auto"))
    assert len(auto) == 2 and auto == serial


def job_folder(err: str) -> Path:
    """The sweep's private job folder, as its launch line names it."""
    return Path(re.search(r"job logs in (\S+)", err).group(1))


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _checkpoints(root: Path) -> int:
    return len(list((root / "runs").glob("*/state-last.pt"))) if (root / "runs").is_dir() else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_local_sweep_survives_sigterm_and_sigkill_without_duplicate_rows(tmp_path, child_env):
    """SIGTERM to the parent stops its jobs (each saves a checkpoint) and exits 130; SIGKILL
    leaves its jobs running on their own. Either way the same command finishes the sweep with
    one run directory, one accuracy row and one metrics row per evaluation for each cell."""
    pytest.importorskip("submitit")
    sweep = [*SWEEP, "--set", "steps=60", "--set", "eval_every=10", "--results-dir", tmp_path,
             "--launcher", "local", "--parallel", "2"]
    first = start(sweep, child_env)
    _wait_for(lambda: _checkpoints(tmp_path) == 2, first)  # both cells are mid-training
    first.send_signal(signal.SIGTERM)
    code, _, err = finish(first)
    assert code == 130 and "run the same command again to continue" in err, err[-3000:]
    controllers = [int(p.name.split("_")[0])  # a local job's id is its controller's pid
                   for p in job_folder(err).glob("*_submitted.pkl")]
    assert len(controllers) == 2 and not any(_alive(pid) for pid in controllers)

    second = start(sweep, child_env)
    steps = lambda: [len(rows(m)) for m in (tmp_path / "runs").glob("*/metrics.csv")]
    before = sum(steps())
    _wait_for(lambda: sum(steps()) > before, second)  # resumed and training again
    second.kill()  # its jobs go on alone
    second.wait()

    code, out, err = finish(start(sweep, child_env))
    assert code == 0, err[-3000:]
    assert len(table_of(out)) == 2
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert run_ids(tmp_path) == runs and len(runs) == 2
    for run in runs:
        assert [r["step"] for r in rows(tmp_path / "runs" / run / "metrics.csv")] == \
            [str(s) for s in range(10, 61, 10)]


# A tiny cell for in-process jobs: the smoke preset's Mixer at width 16, one block.
def tiny_cell(root, **kw) -> Cell:
    return Cell("smoke", "mixer", str(root), dataset="synthetic",
                flags={"steps": 4, "device": "cpu", "model.img_size": 32},
                overrides={"model.width": "16", "model.depth": "1", "data.batch_size": "50"},
                experiment="test", **kw)


def test_a_start_squeue_never_showed_is_said_all_the_same(tmp_path, monkeypatch, one_thread):
    """squeue, polled SLURM_POLL_S apart, can miss a job's whole first run (it started, saved
    a checkpoint and was requeued between two polls) and a short last one: the parent still
    says each start, before the requeue it saw and before the cell's result. (SLURM's answers
    are scripted here; tests/test_slurm.py requeues on the real cluster, where this race
    once dropped the first `started` line.)"""
    from types import SimpleNamespace

    from mixerbench import launch

    cell = tiny_cell(tmp_path)
    launch.run_cell_job(cell)  # what the job trained: the parent reads it back at the end
    answers = iter([{"7": ("PENDING", 0)}, {"7": ("PENDING", 1)}, {"7": ("COMPLETED", 1)}])
    monkeypatch.setattr(launch, "_slurm_states", lambda ids: next(answers))
    said = []
    sw = launch._Sweep([cell], launch.Launcher("slurm"), None, None, [],
                       lambda event, info: said.append(info["state"]), tmp_path, out=[None])
    sw.running[0] = launch._Job(SimpleNamespace(job_id="7"), slot=0)
    for _ in range(3):
        launch._watch(sw)
    assert said == ["started", "requeued", "started", "finished"] and not sw.running


def test_slurm_job_parameters_reach_sbatch_and_the_job_trains_its_cell(tmp_path, one_thread):
    """Against submitit's own mocked SLURM (its tests' `sbatch`/`sacct` stand-ins): partition,
    GPUs (one task each), time limit and --slurm-arg options are lines of the job's sbatch
    file, and the job, run as SLURM would run it, trains its cell and returns the summary.
    (submitit's job runner sets SIGTERM, SIGCONT and SIGUSR2 handlers in this process;
    conftest's `signal_handlers_kept` puts them back after the test.)"""
    pytest.importorskip("submitit")
    from submitit.core import submission
    from submitit.slurm.test_slurm import mocked_slurm

    from mixerbench.launch import CellJob, make_executor, make_launcher

    launcher = make_launcher("slurm", partition="gpu-a100", gpus_per_job=2, time_limit=90,
                             slurm_args=["account=my-lab", "--qos=high"])
    with mocked_slurm() as mock:
        job = make_executor(launcher, tmp_path / "launcher").submit(CellJob(), tiny_cell(tmp_path))
        sbatch = job.paths.submission_file.read_text().splitlines()
        for line in ("--partition=gpu-a100", "--gpus-per-node=2", "--ntasks-per-node=2",
                     "--nodes=1", "--time=90", "--account=my-lab", "--qos=high"):
            assert f"#SBATCH {line}" in sbatch, (line, sbatch)
    # Task 0 runs here, outside the mock (which would also stand in for the `uname` a run's
    # provenance calls); job_context sets SLURM_JOB_ID only, so the task trains alone.
    with mock.job_context(job.job_id):
        submission.process_job(job.paths.folder)
    with mocked_slurm():
        summary = job.task(0).result()
    assert rows(tmp_path / "accuracy.csv")[0]["run_id"] == summary["run_id"]
    assert summary["experiment"] == "test" and summary["steps"] == 4


@pytest.mark.slow
def test_a_multi_process_cell_gets_torchruns_variables_from_submitit(tmp_path, child_env,
                                                                    monkeypatch):
    """A cell of two tasks (as with --gpus-per-job 2), run by submitit's local executor on the
    CPU: each task exports RANK / WORLD_SIZE / MASTER_ADDR from the job, `setup_distributed`
    joins them into one gloo group, and the run records two devices."""
    submitit = pytest.importorskip("submitit")
    from mixerbench.launch import CellJob

    for k in ("PYTHONPATH", "MIXERBENCH_CACHE", "OMP_NUM_THREADS"):  # the jobs inherit them
        monkeypatch.setenv(k, child_env[k])
    ex = submitit.LocalExecutor(folder=tmp_path / "launcher")
    ex.update_parameters(tasks_per_node=2, timeout_min=5)
    job = ex.submit(CellJob(threads=1), tiny_cell(tmp_path))
    rank0, rank1 = job.results()
    assert rank0 == rank1 and rank0["num_devices"] == 2  # every rank returns rank 0's summary
    assert [r["num_devices"] for r in rows(tmp_path / "accuracy.csv")] == ["2"]


# ---------------------------------------------------------------- launcher options, errors


@pytest.mark.parametrize("args, message", [
    (["--parallel", "2"], "--parallel only apply with --launcher"),
    (["--launcher", "slurm"], "needs --time-limit"),
    (["--launcher", "local", "--partition", "gpu"], "apply to --launcher slurm only"),
    (["--launcher", "slurm", "--time-limit", "5", "--slurm-arg", "account"], "takes key=value"),
    (["--launcher", "local", "--parallel", "0"], "--parallel must be at least 1"),
    (["--launcher", "local", "--gpus-per-job", "2", "--tasks-per-job", "3"],
     "--tasks-per-job 3 does not match --gpus-per-job 2"),
    (["--launcher", "local", "--tasks-per-job", "0"], "--tasks-per-job must be at least 1"),
])
def test_launcher_options_are_checked_before_anything_runs(tmp_path, args, message):
    pytest.importorskip("submitit")
    from typer.testing import CliRunner

    from mixerbench.cli import app

    out = CliRunner().invoke(app, [*SWEEP, "--results-dir", str(tmp_path), *args])
    assert out.exit_code == 2 and message in " ".join(out.output.split()), out.output
    assert not (tmp_path / "runs").exists()


def test_launcher_without_submitit_names_the_pip_command(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mixerbench.cli import app

    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    out = CliRunner().invoke(app, [*SWEEP, "--results-dir", str(tmp_path), "--launcher", "local"])
    assert out.exit_code == 2
    assert 'pip install "mixerbench[launchers]"' in out.output and len(out.output.splitlines()) == 1


def test_launcher_under_torchrun_and_for_artifacts_without_cells_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from typer.testing import CliRunner

    from mixerbench.cli import app

    out = CliRunner().invoke(app, ["reproduce", "table1", "--results-dir", str(tmp_path),
                                   "--launcher", "local"])
    assert out.exit_code == 2 and "trains no cells" in out.output
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = CliRunner().invoke(app, [*SWEEP, "--results-dir", str(tmp_path), "--launcher", "local"])
    assert out.exit_code == 2 and "without torchrun" in out.output


@pytest.mark.slow
def test_a_failed_cell_fails_the_sweep_after_the_others_finish(tmp_path, child_env, monkeypatch):
    """One launched cell that cannot run (its data folder is missing) does not stop the others:
    they finish and are recorded, then the sweep fails with one sentence naming the cell, why
    and where its log is."""
    pytest.importorskip("submitit")
    from mixerbench.launch import CellsFailed, make_launcher, run_cells

    for k in ("PYTHONPATH", "MIXERBENCH_CACHE", "OMP_NUM_THREADS"):  # the jobs inherit them
        monkeypatch.setenv(k, child_env[k])
    bad = dataclasses.replace(tiny_cell(tmp_path), dataset=str(tmp_path / "no-such-data"),
                              label=dict(cell="bad"))
    cells = [tiny_cell(tmp_path, label=dict(cell="good")), bad]
    events = []
    with pytest.raises(CellsFailed) as err:
        run_cells(cells, make_launcher("local", parallel=2), lambda e, i: events.append((e, i)))
    message = str(err.value)
    assert message.startswith("1 of 2 cells failed (cell bad: ") and "no-such-data" in message
    assert str(Path(child_env["MIXERBENCH_CACHE"]) / "launcher") in message  # the job folder
    assert len(rows(tmp_path / "accuracy.csv")) == 1  # the good cell's row
    failed = [i for e, i in events if e == "job" and i["state"] == "failed"]
    assert len(failed) == 1 and Path(failed[0]["log"]).is_file()


# ----------------------------------------------------------- no pickle from a shared folder


class Payload:
    """A pickle that, when loaded, creates `marker`: what someone who can write to a folder a
    sweep reads pickles from would plant."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_result_pickles_planted_during_a_sweep_are_never_loaded(tmp_path, child_env):
    """While a local sweep runs, its job's result pickle is replaced again and again with a
    payload (and one waits in the old `<results>/launcher/` place): the parent never loads
    one. It takes the cell's result from the run directory, so the payload never runs and the
    row and table are the real ones."""
    pytest.importorskip("submitit")
    marker = tmp_path / "payload-ran"
    payload = pickle.dumps(Payload(marker))
    old = tmp_path / "results" / "launcher" / "compare-smoke-1"
    old.mkdir(parents=True)
    (old / "1_0_result.pkl").write_bytes(payload)
    proc = start([*SWEEP, "--models", "mixer", "--set", "steps=6", "--results-dir",
                  tmp_path / "results", "--launcher", "local"], child_env)
    lines = []
    for line in proc.stderr:  # the launch line, then the job's
        lines.append(line)
        if line.startswith("submitted "):
            break
    err = "".join(lines)
    job = re.search(r"\(job (\d+)\)", err).group(1)
    planted = job_folder(err) / f"{job}_0_result.pkl"
    while proc.poll() is None:  # as an attacker would: overwrite whatever the job writes
        planted.write_bytes(payload)
        time.sleep(0.02)
    out = proc.stdout.read()
    err += proc.stderr.read()
    assert proc.returncode == 0, err[-3000:]
    assert not marker.exists()
    acc = rows(tmp_path / "results" / "accuracy.csv")
    assert len(acc) == 1 and table_of(out)[0]["top1_mean"] == acc[0]["top1"]


def test_a_launcher_folder_others_can_write_is_refused(tmp_path, monkeypatch):
    """The private folder's parent must be the user's alone: a `<cache>/launcher` that others
    may write to is refused with one sentence before any job is submitted."""
    pytest.importorskip("submitit")
    from typer.testing import CliRunner

    from mixerbench.cli import app

    monkeypatch.setenv("MIXERBENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "launcher").mkdir(parents=True)
    (tmp_path / "cache" / "launcher").chmod(0o777)
    out = CliRunner().invoke(app, [*SWEEP, "--models", "mixer", "--results-dir",
                                   str(tmp_path / "results"), "--launcher", "local"])
    assert out.exit_code == 2 and "chmod 700" in out.output, out.output
    assert len(out.output.strip().splitlines()) == 1
    assert not (tmp_path / "results" / "runs").exists()
