"""Launching: the documented torchrun commands, and `--launcher local|slurm` for sweeps.

The torchrun tests run the commands as a user types them (`python -m torch.distributed.run
--standalone --nproc_per_node 2 -m mixerbench ...`, two CPU processes over gloo) and check what
the user sees: exit 0, one accuracy row, the summary printed once (by rank 0). The launcher
tests run `compare` through submitit's local executor (real processes) and its debug executor
(in this process, standing in for SLURM), against the serial path.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixerbench import results

ROOT = Path(__file__).resolve().parents[1]

# A tiny Mixer (width 16, one block) on the embedded synthetic set (1,000 / 200 images, 32 px).
TINY = ["--dataset", "synthetic", "--set", "model.width=16", "--set", "model.depth=1",
        "--set", "data.batch_size=50", "--steps", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def child_env(data_offline_cache):
    """Environment of every child process: this checkout's package, offline, one shared
    dataset cache, one thread per process (2 cores are shared by all of them)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               MIXERBENCH_CACHE=str(data_offline_cache), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    for key in ("MIXERBENCH_RESULTS", "MIXERBENCH_DATA", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    return env


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
    code, out = torchrun(["pretrain", "--preset", "smoke", "--img-size", "32", *TINY, *res],
                         child_env)
    assert code == 0, out[-3000:]
    acc = rows(tmp_path / "accuracy.csv")
    assert len(acc) == 1 and acc[0]["num_devices"] == "2"
    src = acc[0]["run_id"]
    assert out.count(f"on synthetic (test): top-1 {float(acc[0]['top1']):.2f} %") == 1, out
    assert out.count("batch 50 x 2 process(es)") == 1  # the start line: rank 0 only

    code, out = torchrun(["finetune", "--init", tmp_path / "runs" / src, *TINY,
                          "--set", "optim.warmup_steps=1", *res], child_env)
    assert code == 0, out[-3000:]
    acc = rows(tmp_path / "accuracy.csv")
    ft = [r for r in acc if r["run_id"] != src]
    assert len(acc) == 2 and len(ft) == 1 and ft[0]["kind"] == "finetune"
    assert ft[0]["init"] == str(tmp_path / "runs" / src)
    assert out.count(f"on synthetic (test): top-1 {float(ft[0]['top1']):.2f} %") == 1, out

    code, out = torchrun(["evaluate", "--checkpoint", tmp_path / "runs" / src, "--dataset",
                          "synthetic", "--fewshot", "2", "--seeds", "1", "--device", "cpu",
                          *res], child_env)
    assert code == 0, out[-3000:]
    evals = [r for r in rows(tmp_path / "accuracy.csv") if r["kind"] == "evaluate"]
    assert len(evals) == 1 and evals[0]["run_id"] == src
    assert len(rows(tmp_path / "fewshot.csv")) == 1
    assert out.count("on synthetic (test, 32 px") == 1, out
    assert out.count("rows appended under") == 1
