"""A results folder that nothing can poison, escape, mix or corrupt (CPU, offline).

Results folders are shared between people and downloaded with papers, so everything mixerbench
reads back (run directories, checkpoints, configs, summaries, CSVs) and everything it is given
(flags, --set values, environment) is tried here as a hostile user would. The contract: exit 0
with correct behaviour, or exit 2 with one sentence and not a byte changed in the results
folder; nothing read from disk runs code; nothing is written outside the results folder.

Categories: files planted or damaged in a results folder; the environment; two processes that
race for one run name; property-based fuzzing of `--set` values. Typed bad input (flags and
numbers) is the matrix in `test_reliability.py`.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from conftest import CLI_ENV, TINY, cli, interrupted_run, refused, tree
from typer.testing import CliRunner

from mixerbench import results
from mixerbench.cli import app

# in-process runs on one thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
FINISHED = ["pretrain", *TINY, "--steps", "4", "--run-name", "fin"]
UNFINISHED = ["pretrain", *TINY, "--steps", "8", "--set", "ckpt_every=3", "--set", "eval_every=4",
              "--run-name", "unf"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A results folder with a finished run `fin` and a run `unf` stopped at its step-3
    checkpoint (killed before step 4), as the commands above leave them."""
    base = tmp_path_factory.mktemp("template") / "results"
    assert cli(*FINISHED, "--results-dir", base).exit_code == 0
    # the config UNFINISHED resolves to on the command line
    interrupted_run(base, steps=8, ckpt_every=3, kill_at=4)
    return base


@pytest.fixture
def folder(template, tmp_path):
    res = tmp_path / "results"
    shutil.copytree(template, res)
    return res


# ------------------------------------------------------------------ files planted or damaged


class _Hostile:
    """Unpickling this runs `touch <marker>`: what a planted state-last.pt could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_hostile_state(res: Path, outside: Path) -> None:
    torch.save({"model": _Hostile(outside / "pwned")}, res / "runs" / "unf" / "state-last.pt")


def plant_hostile_raw_pickle(res: Path, outside: Path) -> None:
    (res / "runs" / "unf" / "state-last.pt").write_bytes(pickle.dumps(_Hostile(outside / "pwned")))


def write(rel: str, data: bytes | str):
    def plant(res: Path, outside: Path) -> None:
        p = res / rel
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return plant


def edit_json(rel: str, change):
    def plant(res: Path, outside: Path) -> None:
        p = res / rel
        d = json.loads(p.read_text())
        change(d)
        p.write_text(json.dumps(d))
    return plant


def truncate(rel: str):
    def plant(res: Path, outside: Path) -> None:
        p = res / rel
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return plant


def runs_link_outside(res: Path, outside: Path) -> None:
    shutil.rmtree(res / "runs")
    (res / "runs").symlink_to(outside, target_is_directory=True)


def nan_checkpoint(res: Path, outside: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save

    src = res / "runs" / "fin" / "checkpoint-last.safetensors"
    with safe_open(str(src), "pt") as fh:
        meta = fh.metadata()
        state = {k: torch.full_like(fh.get_tensor(k), float("nan")) for k in fh.keys()}
    (outside / "nan.safetensors").write_bytes(save(state, metadata=meta))


def bad_npz(res: Path, outside: Path) -> None:
    import numpy as np

    arrays = {"stem/kernel": np.zeros((4, 4, 3, 8), np.float32), "stem/bias": np.zeros(8, np.float32),
              "MixerBlock_0/token_mixing/Dense_0/kernel": np.zeros((7, 3), np.float32),
              "MixerBlock_0/channel_mixing/Dense_0/kernel": np.zeros((8, 2), np.float32),
              "head/kernel": np.zeros((8, 10), np.float32)}  # 7 tokens: not a square grid
    np.savez(outside / "wrong.npz", **arrays)


def foreign_folder(res: Path, outside: Path) -> None:
    (res / "runs" / "foreign").mkdir()
    (res / "runs" / "foreign" / "notes.txt").write_text("not a run")


def extra_column(rel: str):
    def plant(res: Path, outside: Path) -> None:
        p = res / rel
        lines = p.read_text().splitlines()
        p.write_text("\n".join([lines[0] + ",newer_column"] + [ln + ",1" for ln in lines[1:]]) + "\n")
    return plant


FT_FROM = ["finetune", "--dataset", "synthetic", "--steps", "2", "--device", "cpu",
           "--set", "optim.warmup_steps=1", "--init"]
EV_OF = ["evaluate", "--dataset", "synthetic", "--device", "cpu", "--checkpoint"]

PLANTED = {
    # nothing read from disk runs code
    "state-pickle-that-runs-code": (plant_hostile_state, UNFINISHED),
    "state-raw-pickle-that-runs-code": (plant_hostile_raw_pickle, UNFINISHED),
    # checkpoints and state damaged
    "state-empty": (write("runs/unf/state-last.pt", b""), UNFINISHED),
    "state-truncated": (truncate("runs/unf/state-last.pt"), UNFINISHED),
    "state-step-past-the-run": (
        lambda res, out: torch.save(dict(torch.load(res / "runs/unf/state-last.pt",
                                                    weights_only=True), step=99),
                                    res / "runs/unf/state-last.pt"), UNFINISHED),
    "checkpoint-nan-weights": (nan_checkpoint, EV_OF + ["{O}/nan.safetensors"]),
    "checkpoint-header-damaged": (
        lambda res, out: (out / "meta.safetensors").write_bytes(
            _with_metadata(res, '{"name": 7}')), EV_OF + ["{O}/meta.safetensors"]),
    "npz-wrong-shapes": (bad_npz, FT_FROM + ["{O}/wrong.npz"]),
    # run directories that are not the command's own
    "config-json-damaged": (write("runs/unf/config.json", "{not json"), UNFINISHED),
    "config-json-wrong-types": (edit_json("runs/fin/config.json",
                                          lambda d: d["optim"].update(lr="fast")),
                                EV_OF + ["{R}/runs/fin"]),
    "config-json-types-coerced": (edit_json("runs/fin/config.json",
                                            lambda d: d.update(seed="0")),
                                  EV_OF + ["{R}/runs/fin"]),
    "summary-json-empty-object": (write("runs/fin/summary.json", "{}"), FINISHED),
    "summary-json-nan-accuracy": (edit_json("runs/fin/summary.json",
                                            lambda d: d.update(top1=float("nan"))), FINISHED),
    "run-name-reused-with-another-config": (None, FINISHED + ["--set", "model.width=32"]),
    "resume-with-another-lr": (None, UNFINISHED + ["--lr", "0.5"]),
    "run-folder-not-made-by-mixerbench": (foreign_folder, [*FINISHED[:-1], "foreign"]),
    "runs-is-a-link-outside": (runs_link_outside, ["pretrain", *TINY, "--steps", "2"]),
    # results CSVs and metrics that are not what this version writes
    "accuracy-csv-extra-column": (extra_column("accuracy.csv"), ["pretrain", *TINY, "--steps", "2"]),
    "accuracy-csv-binary": (write("accuracy.csv", bytes(range(256))), EV_OF + ["{R}/runs/fin"]),
    "metrics-csv-torn": (lambda res, out: (res / "runs/unf/metrics.csv").open("a").write("8,0.5"),
                         UNFINISHED),
}


def _with_metadata(res: Path, text: str) -> bytes:
    from safetensors.torch import load_file, save

    return save(load_file(str(res / "runs/fin/checkpoint-last.safetensors")),
                metadata={"mixerbench_model": text})


@pytest.mark.parametrize("case", list(PLANTED))
def test_a_planted_or_damaged_file_is_refused_and_changes_nothing(case, folder, tmp_path):
    plant, args = PLANTED[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    if plant is not None:
        plant(folder, outside)
    before, before_out = tree(folder), tree(outside)
    args = [a.format(R=folder, O=outside) for a in args]
    line = refused(cli(*args, "--results-dir", folder))
    assert tree(folder) == before, f"{case}: the refusal changed the results folder"
    assert tree(outside) == before_out, f"{case}: something was written outside the results folder"
    assert not (outside / "pwned").exists(), f"{case}: a file read back ran code"
    assert len(line) < 400


def test_a_resume_may_change_only_the_device_and_the_length(folder):
    """What may change on resume: the device, compile, the data folder, and (unfinished) the
    length; the run then finishes and its config.json records the new length."""
    r = cli(*UNFINISHED[:UNFINISHED.index("--steps")], "--steps", "9",
            *UNFINISHED[UNFINISHED.index("--steps") + 2:], "--results-dir", folder)
    assert r.exit_code == 0, r.output
    written = json.loads((folder / "runs/unf/config.json").read_text())
    assert written["steps"] == 9 and (folder / "runs/unf/summary.json").is_file()


def test_evaluate_never_replaces_the_training_row(folder):
    """An evaluation of a trained run adds its own row (kind evaluate, no cost); readers keep
    the training record, so the run's cost stays in the figures and the compare averages."""
    from mixerbench.report.tables import latest_per_run

    r = cli(*EV_OF, folder / "runs/fin", "--results-dir", folder)
    assert r.exit_code == 0, r.output
    acc = results.load("accuracy", folder)
    fin = acc[acc["run_id"] == "fin"]
    assert sorted(fin["kind"]) == ["evaluate", "pretrain"]
    kept = latest_per_run(fin)
    assert len(kept) == 1 and kept.iloc[0]["kind"] == "pretrain"
    assert kept.iloc[0]["train_seconds"] > 0


# ---------------------------------------------------------------------------- environment


def test_results_dir_from_the_environment_that_is_a_file(folder, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    refused(cli("pretrain", *TINY, "--steps", "2", env={"MIXERBENCH_RESULTS": str(f)}))
    assert f.read_text() == "x"


def test_a_read_only_results_dir_is_refused_before_any_work(folder, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real(p, mode))
    before = tree(folder)
    refused(cli("pretrain", *TINY, "--steps", "2", "--results-dir", folder))
    assert tree(folder) == before


def test_a_data_dir_that_does_not_exist(folder, tmp_path):
    refused(cli("pretrain", *TINY[:2], "--dataset", "cifar10", *TINY[4:], "--steps", "2",
                "--results-dir", folder, env={"MIXERBENCH_DATA": str(tmp_path / "nope")}))


# ----------------------------------------------------------------------------- concurrency


@pytest.mark.slow
def test_two_processes_racing_for_one_run_name_with_different_configs(tmp_path):
    """The loser does not get the winner's result: one run trains, the other is refused."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("MIXERBENCH_RESULTS", None)
    base = [sys.executable, "-m", "mixerbench", "--quiet", "pretrain", *TINY, "--steps", "6",
            "--run-name", "race", "--results-dir", str(tmp_path)]
    procs = [subprocess.Popen(base + ["--set", f"model.width={w}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for w in (16, 32)]
    outs = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert sorted(code for _, _, code in outs) == [0, 2], outs
    loser = next(err for _, err, code in outs if code == 2)
    assert "another configuration" in loser and "Traceback" not in loser
    assert len(results.load("accuracy", tmp_path)) == 1


# -------------------------------------------------------------------------------- fuzzing


def _set_keys() -> list[str]:
    from mixerbench.config import SECTIONS, RunConfig
    from dataclasses import fields

    keys = [f.name for f in fields(RunConfig) if f.name not in SECTIONS]
    keys += [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in fields(c)]
    return keys + ["model.options.num_heads", "nope", "optim", "model.width.x"]


VALUES = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "0", "-1", "1e400", "1e-400", "", "none", "true",
                     "[1,2]", "{}", '{"a": 1}', "0x10", "1_000", "１２", "[/x]", "\x00", "9" * 40,
                     "0.5", "3", "fp32", "cosine", "patch", "../x"]),
    st.integers(min_value=-10**20, max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(_set_keys()), value=VALUES)
def test_fuzzed_set_values_resolve_or_are_refused_in_one_sentence(tmp_path, key, value):
    """Any `--set key=value`: the config resolves (exit 0) or is refused with exit 2 and one
    line; never a traceback, and nothing is written (--print-config runs nothing)."""
    r = CliRunner().invoke(app, ["pretrain", *TINY, "--steps", "2", "--set", f"{key}={value}",
                                 "--print-config", "--results-dir", str(tmp_path / "r")], env=CLI_ENV)
    assert r.exit_code in (0, 2), (key, value, r.output, r.exception)
    assert "Traceback" not in r.output
    if r.exit_code == 2:
        refused(r)
    assert not (tmp_path / "r").exists()


NUMERIC = ["optim.lr", "optim.weight_decay", "optim.beta2", "optim.momentum", "optim.clip_norm",
           "optim.end_factor", "model.drop_path", "model.dropout", "data.mixup_p",
           "data.label_smoothing", "data.randaug_m", "model.width", "model.depth", "seed",
           "data.eval_batch_size", "max_eval_examples", "eval_every"]


@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(NUMERIC), value=st.one_of(
    st.floats(min_value=-5, max_value=200).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e9"]),
    st.integers(min_value=-3, max_value=300).map(str)))
def test_fuzzed_numbers_train_or_are_refused_and_a_refusal_changes_nothing(tmp_path, key, value):
    """Through a real two-step run: exit 0 (a run directory and one accuracy row), or exit 2
    with one line and the results folder as it was (no half-made run directory)."""
    import uuid

    res = tmp_path / uuid.uuid4().hex  # a fresh folder per example: no run is read back
    res.mkdir()
    before = tree(res)
    r = cli("pretrain", *TINY, "--steps", "2", "--set", f"{key}={value}", "--results-dir", res)
    assert r.exit_code in (0, 2), (key, value, r.output, r.exception)
    if r.exit_code == 2:
        refused(r)
        assert tree(res) == before
    else:
        assert results.load("accuracy", res)["run_id"].nunique() >= 1
