"""Reliability of the whole program: killed runs, concurrent writers, bad input, faults in training.

Most tests run `python -m mixerbench` as separate processes (SIGKILL and SIGINT need a real
process); the bad-input matrix and the disk-full faults run in-process through typer's CliRunner
to keep the file fast. Every run is a tiny Mixer (width 16, one block) on the embedded
`synthetic` dataset (1,000 train / 200 test images of 32 px), offline, on the CPU.

Each test proves one line of the "Guarantees" section of `results/README.md`.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, refusal_lines, start, tree
from typer.testing import CliRunner

from mixerbench import results
from mixerbench.cli import app

# in-process runs on one thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]

# The run that gets killed: 60 steps, an evaluation every 4 steps and a checkpoint every 3 (so
# a kill usually lands after metrics rows the checkpoint does not cover yet).
RUN = ["pretrain", *TINY, "--steps", "60", "--set", "eval_every=4", "--set", "ckpt_every=3"]
TOTAL = 60
# Columns that measure time (or the code's git state, which a commit between two runs changes).
NOT_RESULTS = {"train_seconds", "device_hours", "timestamp", "git_sha", "img_per_sec", "elapsed_s"}


# ------------------------------------------------------------------------------------ helpers


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run_dir(root: Path) -> Path:
    dirs = [p for p in (root / "runs").iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def metrics_step(root: Path) -> int:
    """The last step in the run's metrics.csv (0 before the first evaluation)."""
    runs = root / "runs"
    if not runs.is_dir():
        return 0
    for d in runs.iterdir():
        path = d / "metrics.csv"
        if path.is_file():
            lines = path.read_text().splitlines()
            return int(lines[-1].split(",")[0]) if len(lines) > 1 else 0
    return 0


def saved_step(run: Path) -> int:
    return torch.load(run / "state-last.pt", map_location="cpu", weights_only=True)["step"]


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoint-last.safetensors"))


def result_columns(path: Path, drop=NOT_RESULTS) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(fh)]


def assert_same_run(a_root: Path, b_root: Path) -> None:
    """Bitwise the same weights, metrics and accuracy row (all but timing columns)."""
    a, b = run_dir(a_root), run_dir(b_root)
    assert a.name == b.name
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and torch.equal(wa[k], wb[k]), k
    ma, mb = result_columns(a / "metrics.csv"), result_columns(b / "metrics.csv")
    assert len(ma) == TOTAL // 4 and ma == mb
    assert list(ma[0]) == ["step", "epoch", "train_loss", "eval_loss", "top1", "top5", "lr"]
    ra, rb = result_columns(a_root / "accuracy.csv"), result_columns(b_root / "accuracy.csv")
    assert len(ra) == 1 and ra == rb
    assert not list(b.glob("*.tmp")) and not list(b.glob(".*.tmp"))  # no temp file left behind


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip().startswith("error:")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, child_env):
    """The uninterrupted run, started in the background as soon as a test asks for it."""
    root = tmp_path_factory.mktemp("reference")
    proc = start([*RUN, "--results-dir", root], child_env)

    class Ref:
        def get(self) -> Path:
            if proc.returncode is None:
                code, _, err = finish(proc)
                assert code == 0, err[-3000:]
            return root

    yield Ref()
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------- 1. kill -9 and run again


@pytest.mark.slow
def test_sigkill_at_random_steps_then_same_command_is_bitwise_exact(tmp_path, reference,
                                                                     child_env):
    """One run killed with SIGKILL three times, at seeded random steps (early, middle, late),
    each time started again by the same command: it ends with the weights, metrics and
    accuracy row of the uninterrupted run."""
    rng = random.Random(9)
    targets = [rng.randrange(6, 17), rng.randrange(20, 32), rng.randrange(35, TOTAL - 16)]
    last = 0
    for target in targets:
        target = max(target, last + 4)  # beyond the rows the previous process left
        proc = start([*RUN, "--results-dir", tmp_path], child_env)
        deadline = time.monotonic() + 120
        try:
            while metrics_step(tmp_path) < target:
                assert proc.poll() is None, f"ended before the kill: {finish(proc)[2][-2000:]}"
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            finish(proc)
        assert proc.returncode == -signal.SIGKILL
        run = run_dir(tmp_path)
        assert not (run / "summary.json").exists() and not (tmp_path / "accuracy.csv").exists()
        assert target - 3 <= saved_step(run) < TOTAL  # killed mid-run, after real progress
        last = metrics_step(tmp_path)
    code, _, err = finish(start([*RUN, "--results-dir", tmp_path], child_env))
    assert code == 0 and "resuming" in err, err[-3000:]
    assert_same_run(reference.get(), tmp_path)


CHILD_WRITER = textwrap.dedent("""
    import os, signal, sys, time
    from mixerbench import files

    target, payloads, hook = sys.argv[1], sys.argv[2:4], sys.argv[4]
    data = [open(p, "rb").read() for p in payloads]
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if hook == "fsync":      # the new bytes are in the temp file, not yet durable or renamed
        os.fsync = die
    elif hook == "replace":  # durable in the temp file, killed just before the rename
        os.replace = die
    i = 0
    while True:              # hook "none": rewrite forever until killed from outside
        files.atomic_write_bytes(target, data[i % 2])
        print(i, flush=True)
        i += 1
""")


@pytest.mark.parametrize("hook", ["fsync", "replace", "none"])
def test_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, hook):
    """SIGKILL during `atomic_write_bytes` (before fsync, before rename, or at a random instant
    of a 32 MB write): the checkpoint is the old or the new file, whole, and loads; the temp
    file that may be left is never taken for a checkpoint."""
    from safetensors.torch import save

    from mixerbench.models.weights import read_checkpoint, resolve_source

    gen = torch.Generator().manual_seed(0)
    def rec(i):  # a valid model description whose overrides tell the three writes apart
        return dict(name="mixer-t4", num_classes=10, img_size=32, patch_size=4,
                    overrides={"version": i})

    blobs = [save({"w": torch.randn(8 * 2**20, generator=gen)},
                  metadata={"mixerbench_model": json.dumps(rec(i))}) for i in range(3)]
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    ckpt = run / "checkpoint-last.safetensors"
    ckpt.write_bytes(blobs[0])
    for i in (1, 2):
        (tmp_path / f"new{i}").write_bytes(blobs[i])
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_WRITER, str(ckpt), str(tmp_path / "new1"),
         str(tmp_path / "new2"), hook],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
    if hook == "none":
        assert proc.stdout.readline().strip() == "0"  # one whole write done, the next under way
        time.sleep(random.Random(3).uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    allowed = {hashlib.sha256(b).hexdigest(): i for i, b in enumerate(blobs)}
    now = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert now in allowed, "the checkpoint is a mix of two writes"
    if hook != "none":
        assert allowed[now] == 0  # killed before the rename: the previous checkpoint, intact
    state, found = read_checkpoint(ckpt)
    assert found == rec(allowed[now]) and state["w"].numel() == 8 * 2**20
    # a left-over temp file is hidden (dot prefix), is not *.safetensors, and never chosen
    leftovers = [p.name for p in run.iterdir() if p.name != ckpt.name]
    assert all(n.startswith(".checkpoint-last.safetensors.") and n.endswith(".tmp")
               for n in leftovers), leftovers
    if hook != "none":
        assert leftovers, "the kill was meant to land mid-write"
    assert [p.name for p in run.glob("*.safetensors")] == [ckpt.name]
    assert resolve_source(str(run)) == ckpt


def test_atomic_writes_keep_the_mode_of_the_file_they_replace(tmp_path):
    """The temp-file-and-rename write does not leave results private to their owner (mkstemp's
    0600), and does not undo a chmod at the next append."""
    path = tmp_path / "accuracy.csv"
    results.append_row("accuracy", {"run_id": "a"}, tmp_path)
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    results.append_row("accuracy", {"run_id": "b"}, tmp_path)
    assert path.stat().st_mode & 0o777 == 0o640
    assert [r["run_id"] for r in result_columns(path)] == ["a", "b"]


# ---------------------------------------------------------------- 2. concurrent writers


CHILD_APPENDER = textwrap.dedent("""
    import os, sys, time
    from mixerbench import results

    root, writer, gate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    open(f"{gate}.ready{writer}", "w").close()
    while not os.path.exists(gate):   # a barrier: every writer starts at once
        time.sleep(0.0005)
    for j in range(50):
        run_id = f"w{writer}-r{j}"
        results.append_row("fewshot", dict(run_id=run_id, model=run_id[::-1],
                                           dataset=f'set,"{writer}"', shots=j, top1_mean=j / 7),
                           root)
""")


def check_rows(rows: list[list[str]], width: int) -> None:
    model = results.SCHEMAS["fewshot"].index("model")
    for r in rows:
        assert len(r) == width, f"torn row {r}"
        assert r[model] == r[0][::-1], f"torn row {r}"  # model is run_id reversed


@pytest.mark.slow
def test_eight_processes_appending_at_once_lose_and_tear_nothing(tmp_path):
    """8 processes x 50 appends to fewshot.csv: exactly 400 whole rows, all distinct payloads;
    a reader polling the file meanwhile only ever sees whole rows, each read a prefix of the
    next."""
    columns = results.SCHEMAS["fewshot"]
    gate = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", CHILD_APPENDER, str(tmp_path), str(w),
                               str(gate)], env=env) for w in range(8)]
    deadline = time.monotonic() + 60
    while not all(Path(f"{gate}.ready{w}").exists() for w in range(8)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.005)
    gate.touch()
    path = tmp_path / "fewshot.csv"
    seen, reads = [], 0
    while any(p.poll() is None for p in procs):
        if path.exists():
            text = path.read_text()
            if text:
                assert text.endswith("\n"), "a half-written line is visible"
                rows = list(csv.reader(text.splitlines(keepends=True)))
                assert tuple(rows[0]) == columns
                check_rows(rows[1:], len(columns))
                assert rows[1:len(seen) + 1] == seen, "a row seen before was lost"
                seen = rows[1:]
                reads += 1
        assert time.monotonic() < deadline + 60
    assert all(p.returncode == 0 for p in procs)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == columns
    check_rows(rows[1:], len(columns))
    assert len(rows) - 1 == 400
    assert {r[0] for r in rows[1:]} == {f"w{w}-r{j}" for w in range(8) for j in range(50)}
    assert reads > 0
    df = results.load("fewshot", tmp_path)
    assert len(df) == 400 and set(df["dataset"]) == {f'set,"{w}"' for w in range(8)}


COMPARE = ["compare", "--models", "mixer,vit", "--preset", "smoke", "--dataset", "synthetic",
           "--set", "model.img_size=32", "--set", "model.width=16", "--set", "model.depth=1",
           "--set", "data.batch_size=50", "--set", "steps=40", "--set", "eval_every=20",
           "--no-bench", "--device", "cpu", "--format", "csv"]


@pytest.mark.slow
def test_two_compare_sweeps_sharing_a_results_dir_train_each_cell_once(tmp_path, child_env):
    """Two `compare` processes started at once on one results dir: each cell is trained by one
    of them and read back by the other; one run dir and one accuracy row per cell, none lost."""
    procs = [start([*COMPARE, "--results-dir", tmp_path], child_env) for _ in range(2)]
    outs = [finish(p) for p in procs]
    for code, out, err in outs:
        assert code == 0, err[-3000:]
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert [r.name.split("-synthetic")[0] for r in runs] == ["mixer-t4", "vit-t4"]
    errs = "".join(err for _, _, err in outs)
    for run in runs:
        started = errs.count(str(run))  # the trainer's start line names the run directory
        assert started == 1, f"{run.name} trained {started} times"
        assert errs.count(f"{run.name}: already finished, read back") == 1
        steps = [r["step"] for r in result_columns(run / "metrics.csv")]
        assert steps == ["20", "40"]
    acc = result_columns(tmp_path / "accuracy.csv")
    assert sorted(r["run_id"] for r in acc) == sorted(r.name for r in runs)
    for _, out, _ in outs:  # each sweep's table has both models
        table = list(csv.DictReader(out.splitlines()))
        assert len(table) == 2


# ---------------------------------------------------------------------- 3. bad input


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """A results dir with one finished tiny run, corrupt checkpoints beside it, an empty folder."""
    base = tmp_path_factory.mktemp("bad-input")
    res, files, empty = base / "results", base / "files", base / "empty"
    files.mkdir()
    empty.mkdir()
    finished = [*TINY, "--steps", "4", "--results-dir", str(res)]
    r = CliRunner().invoke(app, ["--quiet", "pretrain", *finished])
    assert r.exit_code == 0, r.output
    run = run_dir(res)
    good = (run / "checkpoint-last.safetensors").read_bytes()
    (files / "empty.safetensors").write_bytes(b"")
    (files / "random.safetensors").write_bytes(random.Random(1).randbytes(4096))
    (files / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(run / "checkpoint-last.safetensors"), "pt") as fh:
        meta = fh.metadata()
    vit = {"cls_token": torch.zeros(1, 1, 16), "head.weight": torch.zeros(10, 16)}
    (files / "other-arch.safetensors").write_bytes(save(vit, metadata=meta))  # a ViT's tensors
    (files / "no-metadata.safetensors").write_bytes(save(vit))
    return dict(base=base, R=str(res), F=str(files), E=str(empty), RUN=str(run),
                finished=finished)


def pretrain(**change) -> list[str]:
    """`pretrain` with TINY's options, some replaced (None drops an option)."""
    opts = {"--preset": "smoke", "--dataset": "synthetic", "--img-size": "32", "--device": "cpu",
            "--steps": "4"}
    sets = ["model.width=16", "model.depth=1", "data.batch_size=50"]
    for k, v in change.items():
        if k == "sets":
            sets = v
        else:
            opts[k] = v
    args = ["pretrain"]
    for k, v in opts.items():
        if v is not None:
            args += [k, v]
    for s in sets:
        args += ["--set", s]
    return args + ["--results-dir", "{R}"]


FT = ["finetune", "--dataset", "synthetic", "--steps", "2", "--device", "cpu",
      "--results-dir", "{R}", "--init"]
EV = ["evaluate", "--dataset", "synthetic", "--device", "cpu", "--results-dir", "{R}",
      "--checkpoint"]

BAD_INPUT = {
    "models-unknown-name": ["models", "mixer-b61"],
    "models-unknown-format": ["models", "--format", "xml"],
    "paper-unknown-table": ["paper", "table9"],
    "datasets-unknown-name": ["datasets", "nosuchset"],
    "datasets-missing-folder": ["datasets", "{F}/no-such-folder/"],
    "unknown-command": ["pretrian"],
    "unknown-global-option": ["--verbose", "models"],
    "pretrain-unknown-model": pretrain(**{"--model": "mixer-b61", "--preset": None}),
    "pretrain-unknown-dataset": pretrain(**{"--dataset": "nosuchset"}),
    "pretrain-unknown-preset": pretrain(**{"--preset": "smok"}),
    "pretrain-unknown-set-key": pretrain(sets=["model.width=16", "optim.lrr=0.1"]),
    "pretrain-set-wrong-type": pretrain(sets=["model.width=16", "optim.lr=fast"]),
    "pretrain-set-without-value": pretrain(sets=["optim.lr"]),
    "pretrain-set-value-looks-like-markup": pretrain(sets=["optim.lr=[/x]"]),
    "pretrain-flag-wrong-type": pretrain(**{"--steps": "abc"}),
    "pretrain-zero-steps": pretrain(**{"--steps": "0"}),
    "pretrain-unknown-option": pretrain() + ["--learning-rate", "1"],
    "pretrain-patch-does-not-divide-image": pretrain(**{"--patch-size": "5"}),
    "pretrain-batch-larger-than-dataset": pretrain(sets=["model.width=16", "data.batch_size=2000"]),
    "pretrain-bf16-on-cpu": pretrain(sets=["model.width=16", "data.batch_size=50", "dtype=bf16"]),
    "pretrain-finished-run-resumed": "finished-resume",
    "pretrain-resume-without-checkpoint": pretrain(**{"--seed": "7"}) + ["--resume"],
    "pretrain-hub-dataset-offline": pretrain(**{"--dataset": "cifar100"}),
    "finetune-missing-init-option": ["finetune", "--dataset", "synthetic", "--results-dir", "{R}"],
    "finetune-missing-checkpoint": FT + ["{F}/nope.safetensors"],
    "finetune-empty-checkpoint": FT + ["{F}/empty.safetensors"],
    "finetune-random-bytes-checkpoint": FT + ["{F}/random.safetensors"],
    "finetune-truncated-checkpoint": FT + ["{F}/truncated.safetensors"],
    "finetune-other-architecture-checkpoint": FT + ["{F}/other-arch.safetensors"],
    "finetune-checkpoint-without-metadata": FT + ["{F}/no-metadata.safetensors"],
    "finetune-run-dir-without-checkpoint": FT + ["{E}"],
    "finetune-non-integer-resolution-factor": FT + ["{RUN}", "--img-size", "48"],
    "evaluate-missing-checkpoint": EV + ["{F}/nope.safetensors"],
    "evaluate-corrupt-checkpoint": EV + ["{F}/random.safetensors"],
    "evaluate-unknown-dataset": ["evaluate", "--dataset", "nosuchset", "--device", "cpu",
                                 "--results-dir", "{R}", "--checkpoint", "{RUN}"],
    "evaluate-more-shots-than-smallest-class": EV + ["{RUN}", "--fewshot", "500"],
    "evaluate-shots-not-a-number": EV + ["{RUN}", "--fewshot", "five"],
    "evaluate-unknown-shuffle": EV + ["{RUN}", "--shuffle", "sideways"],
    "bench-unknown-model": ["bench", "--models", "mixer-b61", "--device", "cpu",
                            "--results-dir", "{R}"],
    "bench-unknown-dtype": ["bench", "--models", "mixer-t4", "--dtype", "fp8", "--device", "cpu",
                            "--results-dir", "{R}"],
    "bench-batch-not-a-number": ["bench", "--models", "mixer-t4", "--batch-size", "lots",
                                 "--device", "cpu", "--results-dir", "{R}"],
    "bench-unknown-mode": ["bench", "--models", "mixer-t4", "--mode", "fast",
                           "--results-dir", "{R}"],
    "compare-unknown-model-after-a-good-one": [
        "compare", "--models", "mixer,mixer-b61", "--dataset", "synthetic",
        "--set", "model.img_size=32", "--set", "steps=2", "--no-bench", "--device", "cpu",
        "--results-dir", "{R}"],
    "compare-option-one-family-does-not-take": [
        "compare", "--models", "mixer,resnet", "--dataset", "synthetic", "--set",
        "model.img_size=32", "--set", "model.width=16", "--set", "steps=2", "--no-bench",
        "--device", "cpu", "--results-dir", "{R}"],
    "compare-unknown-preset": ["compare", "--models", "mixer", "--preset", "smok", "--no-bench",
                               "--results-dir", "{R}"],
    "compare-zero-seeds": ["compare", "--models", "mixer", "--seeds", "0", "--no-bench",
                           "--results-dir", "{R}"],
    # numbers typed out of range, each named with its unit (validated once, in config)
    "pretrain-lr-nan": pretrain(sets=["model.width=16", "optim.lr=nan"]),
    "pretrain-lr-inf": pretrain(sets=["model.width=16", "optim.lr=inf"]),
    "pretrain-lr-zero": pretrain(sets=["model.width=16", "optim.lr=0"]),
    "pretrain-lr-negative": pretrain(sets=["model.width=16", "optim.lr=-0.1"]),
    "pretrain-lr-absurd": pretrain(sets=["model.width=16", "optim.lr=1e300"]),
    "pretrain-epochs-nan": pretrain(**{"--steps": None, "--epochs": "nan"}),
    "pretrain-epochs-zero": pretrain(**{"--steps": None, "--epochs": "0"}),
    "pretrain-width-zero": pretrain(sets=["model.width=0"]),
    "pretrain-width-negative": pretrain(sets=["model.width=-3"]),
    "pretrain-patch-zero": pretrain(**{"--patch-size": "0"}),
    "pretrain-img-size-absurd": pretrain(**{"--img-size": "1000000"}),
    "pretrain-beta-above-one": pretrain(sets=["model.width=16", "optim.beta1=1.5"]),
    "pretrain-seed-negative": pretrain(**{"--seed": "-1"}),
    "pretrain-seed-absurd": pretrain(sets=["model.width=16", "seed=1e30"]),
    "pretrain-warmup-as-long-as-the-run": pretrain(sets=[
        "model.width=16", "optim.warmup_frac=none", "optim.warmup_steps=4"]),
    "pretrain-drop-path-one": pretrain(sets=["model.width=16", "model.drop_path=1"]),
    "pretrain-too-big-for-memory": pretrain(sets=["model.width=65536", "model.depth=1024"]),
    # run names that would leave runs/ (or make an unusable folder)
    "pretrain-run-name-parent": pretrain(**{"--run-name": "../../x"}),
    "pretrain-run-name-absolute": pretrain(**{"--run-name": "/tmp/x"}),
    "pretrain-run-name-dotdot": pretrain(**{"--run-name": ".."}),
    "pretrain-run-name-dot": pretrain(**{"--run-name": "."}),
    "pretrain-run-name-300-chars": pretrain(**{"--run-name": "r" * 300}),
    "pretrain-results-dir-is-a-file": pretrain()[:-1] + ["{F}/empty.safetensors"],
    "finetune-resolution-factor-zero": FT + ["{RUN}", "--img-size", "0x"],
    "finetune-resolution-factor-fraction": FT + ["{RUN}", "--img-size", "2.5x"],
    "finetune-lr-grid-not-numbers": FT + ["{RUN}", "--lr", "0.01,fast"],
    "finetune-architecture-changed": FT + ["{RUN}", "--set", "model.width=32"],
    "evaluate-l2-reg-nan": EV + ["{RUN}", "--fewshot", "1", "--l2-reg", "nan"],
    "evaluate-fewshot-zero-seeds": EV + ["{RUN}", "--fewshot", "5", "--seeds", "0"],
    "evaluate-batch-size-zero": EV + ["{RUN}", "--batch-size", "0"],
    "pretrain-patch-shuffle-of-a-cnn-without-patch": pretrain(
        **{"--model": "resnet18"}, sets=["data.batch_size=50", "data.shuffle=patch"]),
    "plot-empty-results-folder": ["plot", "--results-dir", "{E}"],
    "plot-unknown-figure": ["plot", "nosuchfigure", "--results-dir", "{R}"],
    "reproduce-unknown-artifact": ["reproduce", "tabel2", "--results-dir", "{R}"],
    "reproduce-unknown-budget": ["reproduce", "shuffle", "--budget", "huge",
                                 "--results-dir", "{R}"],
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_sentence_and_changes_nothing(case, bad):
    """Every command, given a wrong name, type, file, size or state, exits with status 2 and one
    line (no traceback), in seconds, leaving the results folder and runs/ byte-for-byte as they
    were."""
    args = BAD_INPUT[case]
    if args == "finished-resume":
        args = ["pretrain", *bad["finished"], "--resume"]
    args = [a.format(**bad) for a in args]
    before = tree(bad["base"])
    t0 = time.monotonic()
    r = CliRunner().invoke(app, args, env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                           "MIXERBENCH_DATA": None, "MIXERBENCH_RESULTS": None})
    elapsed = time.monotonic() - t0
    lines = refusal_lines(r.output)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and len(lines) == 1, r.output
    assert lines[0].startswith("error: "), r.output
    assert elapsed < 30, f"{case} took {elapsed:.0f} s to fail"
    assert tree(bad["base"]) == before, "the bad input changed the results folder"


def test_bad_input_matrix_covers_every_command():
    commands = {args[0] if isinstance(args, list) else "pretrain" for args in BAD_INPUT.values()}
    assert {"models", "paper", "datasets", "pretrain", "finetune", "evaluate", "bench", "compare",
            "plot", "reproduce"} <= commands
    assert len(BAD_INPUT) >= 80


# -------------------------------------------------------------------- 4. faults in training


def test_nan_loss_exits_1_with_one_message_and_keeps_last_good_checkpoint(tmp_path):
    """SGD at lr 10 without clipping diverges: the command exits 1 with one message; no summary
    and no accuracy row are written; the last checkpoint is whole, finite and loadable."""
    args = ["--quiet", "pretrain", *TINY, "--steps", "40", "--set", "ckpt_every=1", "--set",
            "optim.lr=10", "--set", "optim.name=sgd", "--set", "optim.warmup_frac=0", "--set",
            "optim.clip_norm=0", "--results-dir", str(tmp_path)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, (r.output, r.exception)
    assert "Traceback" not in r.output
    msg = error_lines(r.output)
    assert len(msg) == 1 and "loss became" in msg[0] and "intact" in msg[0], r.output
    run = run_dir(tmp_path)
    assert not (run / "summary.json").exists() and not (tmp_path / "accuracy.csv").exists()
    assert all(torch.isfinite(v).all() for v in weights(run).values())
    state = torch.load(run / "state-last.pt", map_location="cpu", weights_only=True)
    assert 1 <= state["step"] < 40
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# Short in-process runs for the disk-full faults: 12 steps, an eval every 4, a checkpoint every 3.
SHORT = ["--quiet", "pretrain", *TINY, "--steps", "12", "--set", "eval_every=4",
         "--set", "ckpt_every=3"]


@pytest.fixture(scope="module")
def short_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("short-reference")
    r = CliRunner().invoke(app, [*SHORT, "--results-dir", str(root)])
    assert r.exit_code == 0, r.output
    return root


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds fsync's file via /proc")
@pytest.mark.parametrize("name,nth", [("state-last.pt", 3), ("checkpoint-last.safetensors", 2),
                                      ("metrics.csv", 2), ("summary.json", 1),
                                      ("accuracy.csv", 1)])
def test_disk_full_is_reported_and_the_same_command_resumes(tmp_path, monkeypatch,
                                                            short_reference, name, nth):
    """ENOSPC from fsync on the Nth write of one file: exit 1 with one sentence, the previous
    checkpoint byte-for-byte intact, no temp file left; the same command then finishes with the
    result of an uninterrupted run."""
    real_fsync, calls, snapshot = os.fsync, {"n": 0}, {}

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if Path(target).name.startswith(f".{name}."):
            calls["n"] += 1
            if calls["n"] == nth:
                run = run_dir(tmp_path)
                for f in ("state-last.pt", "checkpoint-last.safetensors"):
                    if (run / f).exists():
                        snapshot[f] = (run / f).read_bytes()
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    r = CliRunner().invoke(app, [*SHORT, "--results-dir", str(tmp_path)])
    monkeypatch.undo()
    assert r.exit_code == 1, (r.output, r.exception)
    assert "Traceback" not in r.output
    msg = error_lines(r.output)
    assert len(msg) == 1, r.output
    assert "No space left on device" in msg[0] and "same command" in msg[0], r.output
    run = run_dir(tmp_path)
    assert calls["n"] == nth and snapshot
    for f, data in snapshot.items():
        assert (run / f).read_bytes() == data, f"{f} changed"
    weights(run)  # loadable
    torch.load(run / "state-last.pt", map_location="cpu", weights_only=True)
    assert not list(tmp_path.rglob("*.tmp"))
    again = CliRunner().invoke(app, [*SHORT, "--results-dir", str(tmp_path)])
    assert again.exit_code == 0, again.output
    a, b = run_dir(short_reference), run
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert result_columns(a / "metrics.csv") == result_columns(b / "metrics.csv")
    assert (result_columns(short_reference / "accuracy.csv")
            == result_columns(tmp_path / "accuracy.csv"))


@pytest.mark.slow
def test_ctrl_c_saves_says_how_to_resume_and_the_same_command_finishes(tmp_path, reference,
                                                                       child_env):
    """SIGINT to a training process: exit 130 and one message saying to run the same command;
    that command then ends with the uninterrupted run's weights, metrics and accuracy row."""
    target = random.Random(5).randrange(10, TOTAL - 20)
    proc = start([*RUN, "--results-dir", tmp_path], child_env)
    deadline = time.monotonic() + 120
    while metrics_step(tmp_path) < target:
        assert proc.poll() is None, finish(proc)[2][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err + out
    msg = error_lines(err)
    assert len(msg) == 1 and "Interrupted at step" in msg[0] and "same command" in msg[0], err
    run = run_dir(tmp_path)
    assert target <= saved_step(run) < TOTAL and not (run / "summary.json").exists()
    code, _, err = finish(start([*RUN, "--results-dir", tmp_path], child_env))
    assert code == 0, err[-3000:]
    assert_same_run(reference.get(), tmp_path)


def test_ctrl_c_between_the_loss_check_and_the_save_loses_no_loss_value(tmp_path, monkeypatch):
    """A signal that arrives during the optimizer update of a step whose loss was not yet
    checked (not an eval, checkpoint or 10th step) still leaves an exactly resumable state."""
    import mixerbench.train as T
    from mixerbench.config import parse_set
    from mixerbench.presets import resolve

    def cfg():
        return resolve("smoke", dataset="synthetic", flags={
            "steps": 12, "model.img_size": 32, "device": "cpu"}, overrides=parse_set(
            ["model.width=16", "model.depth=1", "data.batch_size=50", "eval_every=4",
             "ckpt_every=3"]))

    straight = T.train(cfg(), tmp_path / "a")
    real = T.make_optimizer

    def make_optimizer(*a, **k):
        opt = real(*a, **k)
        zero_grad, count = opt.zero_grad, {"n": 0}

        def zero_grad_then_ctrl_c(*za, **zk):  # runs after the update, before the stop check
            count["n"] += 1
            if count["n"] == 5:  # step 5: no eval (4), checkpoint (3) or 10-step loss check
                signal.raise_signal(signal.SIGINT)
            return zero_grad(*za, **zk)

        opt.zero_grad = zero_grad_then_ctrl_c
        return opt

    monkeypatch.setattr(T, "make_optimizer", make_optimizer)
    with pytest.raises(T.Interrupted) as stopped:
        T.train(cfg(), tmp_path / "b")
    monkeypatch.undo()
    assert stopped.value.step == 5  # saved at the end of the step the signal arrived in
    resumed = T.train(cfg(), tmp_path / "b")
    a, b = Path(straight["run_dir"]), Path(resumed["run_dir"])
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert result_columns(a / "metrics.csv") == result_columns(b / "metrics.csv")
