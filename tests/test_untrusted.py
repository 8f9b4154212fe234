"""What a command cannot trust, tried as an attacker would (CPU, offline, seconds each).

Weights credited by content (a hub blob checked against its sha256 name, a run's checkpoint
against the hash its run recorded, an avg5 or transfer source that changes midway), files that
would block or allocate (FIFOs named `.npz`, `.npy` headers that lie, a 3 GB `refs/main`, a hub
that accepts and never answers), sizes bounded before any work, memory estimated before a
fine-tuning model is built, the process's surroundings (an empty HOME, a deleted working folder,
closed pipes, signals), and the refusals themselves (one bounded line, the folder unchanged).

The contract for every case: exit 0 with the work done right, or exit 2 with one sentence and
nothing changed; never a traceback, a hang or an allocation the machine cannot make. Commands
run as a user runs them: the command line, in a child process where the surroundings matter
(real pipes, signals, a deleted folder), against real files, FIFOs and sockets.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, TINY_MODEL, cli, refused, start, tree

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
BIG = 2**63  # one past the largest signed 64-bit integer


def one_error(text: str) -> str:
    """The one `error:` line that ends `text` (progress lines of earlier work may precede it)."""
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in text and len(errors) == 1 and lines[-1] == errors[0], text
    return errors[0]


def refusal(r) -> str:
    """The refusal (exit 2) of a command run in this process: its one closing error line."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    return one_error(r.output)


def child(args, env, *, timeout=120, cwd=ROOT, prelude: str = "", **kw) -> subprocess.CompletedProcess:
    """`mixerbench --quiet ARGS` in a child process (stdout and stderr captured unless given),
    after `prelude` (Python run before the command line, e.g. a stand-in account database)."""
    code = f"import sys\n{prelude}\nfrom mixerbench.cli import app\napp(sys.argv[1:], prog_name='mixerbench')\n"
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run([sys.executable, "-c", code, "--quiet", *map(str, args)], cwd=cwd,
                          env=dict(env, PYTHONPATH=str(ROOT)), text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A results folder with one finished tiny run `fin` (2 steps)."""
    res = tmp_path_factory.mktemp("untrusted") / "results"
    assert cli("pretrain", *TINY, "--steps", "2", "--run-name", "fin", "--results-dir", res).exit_code == 0
    return res


@pytest.fixture
def folder(finished, tmp_path):
    res = tmp_path / "results"
    shutil.copytree(finished, res)
    return res


EVAL = ["evaluate", "--dataset", "synthetic", "--device", "cpu", "--checkpoint"]


# ------------------------------------------------------------------------- the environment


@pytest.mark.slow  # child processes: about 10 s on a busy 2-core machine
def test_an_empty_home_is_no_home(tmp_path, child_env):
    """HOME='' puts the dataset cache in the account's home (as with HOME unset), never at
    `/.cache` or a relative `.cache` in the working folder; with no account home either, one
    sentence names the variables to set."""
    account = tmp_path / "account"
    prelude = ("import os, pwd\nreal = pwd.getpwuid(os.getuid())\n"  # the account, homed in tmp
               "fake = pwd.struct_passwd(tuple(real)[:5] + (%r,) + tuple(real)[6:])\n"
               "pwd.getpwuid = lambda uid: fake\n" % str(account))
    env = {k: v for k, v in child_env.items() if k not in ("MIXERBENCH_CACHE", "XDG_CACHE_HOME")}
    work = tmp_path / "work"
    work.mkdir()
    root_cache = Path("/.cache/mixerbench")
    existed = root_cache.exists()
    r = child(["pretrain", *TINY, "--steps", "1", "--results-dir", tmp_path / "r"],
              dict(env, HOME=""), cwd=work, prelude=prelude)
    assert r.returncode == 0, r.stderr
    assert list((account / ".cache" / "mixerbench").rglob("*.pt")), "the cache is not in the home"
    assert root_cache.exists() == existed and not (work / ".cache").exists()
    # no home anywhere: one sentence before any work
    nobody = "import pwd\ndef gone(uid): raise KeyError(uid)\npwd.getpwuid = gone\n"
    r = child(["pretrain", *TINY, "--steps", "1", "--results-dir", tmp_path / "r2"],
              dict(env, HOME=""), cwd=work, prelude=nobody)
    assert r.returncode == 2 and "MIXERBENCH_CACHE" in one_error(r.stderr)
    assert not (tmp_path / "r2" / "runs").exists() and not (work / ".cache").exists()


@pytest.mark.parametrize("command", [["upgrade"], ["plot"], ["models", "mixer-t4"]])
def test_a_deleted_working_folder_is_one_sentence(command, tmp_path, child_env):
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import os, sys, time\nos.rmdir(sys.argv[1])\n"
                             "from mixerbench.cli import app\napp(sys.argv[2:], prog_name='mixerbench')",
                             str(gone), "--quiet", *command], cwd=gone,
                            env=dict(child_env, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "cd into an existing folder" in one_error(err)


def _closed_pipe() -> int:
    """The write end of a pipe whose reader has gone (what `| head -1` leaves behind)."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.slow  # child processes: about 10 s on a busy 2-core machine
def test_stdout_closed_by_its_reader_keeps_the_rows_and_exits_141(folder, child_env):
    w = _closed_pipe()
    try:
        r = child([*EVAL, folder / "runs/fin", "-f", "csv", "--results-dir", folder], child_env,
                  stdout=w)
    finally:
        os.close(w)
    assert r.returncode in (0, 141), r.stderr
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    rows = (folder / "accuracy.csv").read_text().splitlines()
    assert sum(",evaluate," in row for row in rows) == 1  # written once, not lost


@pytest.mark.slow  # child processes: about 10 s on a busy 2-core machine
@pytest.mark.parametrize("how", ["closed", "reader-gone"])
def test_a_closed_stderr_costs_only_the_progress_lines(how, tmp_path, child_env):
    args = ["pretrain", *TINY, "--steps", "2", "--run-name", "quiet", "--results-dir", tmp_path]
    if how == "closed":
        r = child(args, child_env, stderr=None, preexec_fn=lambda: os.close(2))
    else:
        w = _closed_pipe()
        try:
            r = child(args, child_env, stderr=w)
        finally:
            os.close(w)
    assert r.returncode == 0, r.stdout
    assert (tmp_path / "runs/quiet/summary.json").is_file()
    assert sum("quiet" in row for row in (tmp_path / "accuracy.csv").read_text().splitlines()) == 1


@pytest.mark.slow  # child processes: about 10 s on a busy 2-core machine
def test_ctrl_c_while_training_in_a_compare_is_130_and_one_line(tmp_path, child_env):
    proc = start(["compare", "--models", "mixer", "--dataset", "synthetic", "--device", "cpu",
                  *TINY_MODEL[2:], "--set", "steps=100000", "--results-dir", tmp_path], child_env)
    for line in proc.stderr:
        if line.startswith("step "):  # training has begun
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    one_error(err)


def test_ctrl_c_while_the_command_line_loads_is_130_without_a_traceback(tmp_path, child_env):
    """Ctrl-C lands while Python imports the command line's libraries (here: the moment typer
    is imported, made deterministic by a hook that sends SIGINT then). The child starts with
    Python's own SIGINT handler, as from a terminal: a suite started as a shell's background
    job (`... &` in a script) runs with SIGINT ignored, which every child inherits."""
    prelude = ("import builtins, os, signal\n"
               "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
               "orig = builtins.__import__\n"
               "def hook(name, *a, **k):\n"
               "    if name == 'typer':\n"
               "        builtins.__import__ = orig\n"
               "        os.kill(os.getpid(), signal.SIGINT)\n"
               "    return orig(name, *a, **k)\n"
               "builtins.__import__ = hook\n")
    r = child(["models", "mixer-t4"], child_env, prelude=prelude)
    assert r.returncode == 130 and "Traceback" not in r.stderr, (r.returncode, r.stderr)


# ---------------------------------------------------------------------- sizes and messages


@pytest.mark.parametrize("args", [
    ["compare", "--models", "mixer", "--seeds", 100_000],
    ["compare", "--models", "mixer", "--seeds", 10**12],
    ["compare", "--models", "mixer", "--seeds", BIG],
    ["compare", "--models", "mixer", "--fewshot", -5],
    ["compare", "--models", ",".join(["mixer"] * 20_000)],
    ["compare", "--models", "mixer", "--launcher", "local", "--tasks-per-job", BIG],
    ["compare", "--models", "mixer", "--launcher", "local", "--parallel", BIG],
    ["compare", "--models", "mixer", "--launcher", "local", "--gpus-per-job", BIG],
    ["bench", "-m", "mixer-t4", "--device", "cpu", "--steps", BIG],
    ["bench", "-m", "mixer-t4", "--device", "cpu", "--repeats", BIG],
    ["models", "--num-classes", -1],
    ["models", "--img-size", 10**6],
], ids=lambda a: "-".join(map(str, a))[:60])
def test_sizes_are_bounded_before_any_work(args, tmp_path):
    start_s = time.monotonic()
    extra = ["--dataset", "synthetic", "--results-dir", tmp_path] if args[0] == "compare" else \
        ["--results-dir", tmp_path] if args[0] == "bench" else []
    line = refused(cli(*args, *extra))
    assert time.monotonic() - start_s < 30, "refused only after work"
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == [], line


def test_set_json_nested_100000_deep_is_one_sentence(tmp_path):
    line = refused(cli("pretrain", *TINY, "--set", "model.options.x=" + "[" * 100_000 + "]" * 100_000,
                       "--results-dir", tmp_path))
    assert "64 levels" in line and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [
    ["pretrain", *TINY, "--set", ".".join(["a"] * 20_000) + "=1"],
    ["pretrain", *TINY, "--model", "m" * 100_000],
], ids=["set-key-of-20000-parts", "model-of-100000-characters"])
def test_error_lines_are_bounded_and_shorten_names(args, tmp_path):
    line = refused(cli(*args, "--results-dir", tmp_path))
    assert len(line) <= 1000 and "..." in line, len(line)


def test_an_arch_of_100000_characters_is_one_short_line(folder, tmp_path):
    from safetensors.torch import load_file, save_file

    plain = tmp_path / "plain.safetensors"
    save_file(load_file(folder / "runs/fin/checkpoint-last.safetensors"), plain)
    line = refused(cli(*EVAL, plain, "--arch", "a" * 100_000, "--results-dir", folder))
    assert len(line) <= 1000 and "..." in line


def test_a_long_dataset_folder_name_is_not_blamed_on_a_run_name(tmp_path):
    """A 200-character dataset folder names the run by a shortened id (the hash still tells
    runs apart), not a refusal of a --run-name that was never given."""
    from test_inputs import image_folder

    data = image_folder(tmp_path / ("d" * 200), {f"train/{c}": [f"{i}.png" for i in range(4)]
                                                for c in ("a", "b")})
    r = cli("pretrain", "--preset", "smoke", "--dataset", data, "--img-size", "8",
            *TINY_MODEL[2:6], "--set", "data.batch_size=4", "--set", "data.eval_split=train",
            "--steps", "1", "--results-dir", tmp_path / "r")
    assert r.exit_code == 0, r.output
    (run,) = (tmp_path / "r" / "runs").iterdir()
    assert len(run.name) <= 128 and run.name.startswith("mixer-t4-")


# --------------------------------------------------------------------------- the network


@pytest.fixture
def silent_server():
    """A local TCP server that accepts connections (the kernel completes them) and never
    answers a byte: the hub endpoint or tracker server that hangs a client."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def test_a_hub_that_accepts_and_never_answers_is_one_sentence_within_seconds(silent_server, tmp_path):
    """Online mode (HF_HUB_OFFLINE unset), nothing cached: timm weights and a hub dataset are
    refused after one bounded probe (connect, then the first byte of a reply), not after the
    client's minutes of waiting."""
    env = {"HF_HUB_OFFLINE": None, "HF_DATASETS_OFFLINE": None, "HF_ENDPOINT": silent_server,
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": None,
           "MIXERBENCH_CACHE": str(tmp_path / "cache")}
    for args in ([*EVAL, "timm:mixer_b16_224.goog_in21k_ft_in1k"],
                 ["pretrain", *TINY, "--dataset", "hf:someone/nothing", "--steps", "1"]):
        (tmp_path / "cache" / "hub-unreachable").unlink(missing_ok=True)  # probe each time
        t0 = time.monotonic()
        line = refusal(cli(*args, "--results-dir", tmp_path / "r", env=env))
        assert "not reachable" in line and time.monotonic() - t0 < 15, line
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------- weights identified by content


FT = ["finetune", "--dataset", "synthetic", "--steps", "2", "--device", "cpu",
      "--set", "optim.warmup_steps=1", "--init"]


def _retrained(src: Path, dst: Path, shift: float = 0.01) -> None:
    """`src`'s checkpoint as another training of the same settings would leave it: the same
    header (model, run id, settings hash), other weights."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(src), "pt") as fh:
        meta = fh.metadata()
        state = {k: fh.get_tensor(k) + shift for k in fh.keys()}
    dst.write_bytes(save(state, metadata=meta))


def test_a_checkpoint_from_another_training_of_the_run_is_not_credited_to_it(folder, tmp_path):
    """The run's summary records its checkpoint's sha256: a checkpoint copied in from another
    training of the same settings (same header, other weights) is refused by evaluate and by a
    fine-tune from the run, and nothing is written."""
    ckpt = folder / "runs/fin/checkpoint-last.safetensors"
    _retrained(ckpt, tmp_path / "v1.safetensors")
    shutil.copy(tmp_path / "v1.safetensors", ckpt)
    before = tree(folder)
    line = refusal(cli(*EVAL, folder / "runs/fin", "--results-dir", folder))
    assert "not the checkpoint run fin recorded" in line
    line = refusal(cli(*FT, folder / "runs/fin", "--results-dir", folder))
    assert "not the checkpoint run fin recorded" in line
    assert tree(folder) == before


def test_an_unfinished_runs_checkpoint_is_checked_against_its_training_state(tmp_path):
    from conftest import interrupted_run

    base = tmp_path / "results"
    interrupted_run(base, steps=8, ckpt_every=3, kill_at=4)
    ckpt = base / "runs/unf/checkpoint-last.safetensors"
    assert cli(*EVAL, base / "runs/unf", "--results-dir", base).exit_code == 0
    _retrained(ckpt, ckpt)
    line = refusal(cli(*EVAL, base / "runs/unf", "--results-dir", base))
    assert "not the checkpoint run unf recorded" in line


def test_a_hub_blob_that_does_not_hash_to_its_name_is_refused(tmp_path):
    """Another Mixer put in place of the cached blob of timm's released weights: refused by
    its sha256 name before it is evaluated or fine-tuned as the released weights."""
    from test_weights import hub_cache, tiny_timm_mixer

    from safetensors.torch import save_file

    home = tmp_path / "hf"
    snap = hub_cache(home, "timm/mixer_b16_224.goog_in21k_ft_in1k", tiny_timm_mixer())
    env = {"HF_HOME": str(home), "HF_HUB_CACHE": None}
    name = "timm:mixer_b16_224.goog_in21k_ft_in1k"
    blob = (snap / "model.safetensors").resolve()
    other = tiny_timm_mixer(seed=1)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, blob)
    for args in ([*EVAL, name, "--fewshot", "1"], [*FT, name]):
        line = refusal(cli(*args, "--results-dir", tmp_path / "r", env=env))
        assert "not the file the Hugging Face cache says it is" in line and "delete" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("what", ["refs-main-sparse-3GB", "refs-main-fifo", "snapshot-fifo",
                                  "refs-main-not-a-hash"])
def test_a_damaged_hub_cache_entry_is_one_sentence_without_reading_or_blocking(what, tmp_path):
    from test_weights import hub_cache, tiny_timm_mixer

    home = tmp_path / "hf"
    snap = hub_cache(home, "timm/mixer_b16_224.goog_in21k_ft_in1k", tiny_timm_mixer())
    ref = snap.parent.parent / "refs" / "main"
    if what == "refs-main-sparse-3GB":
        with open(ref, "r+b") as fh:
            fh.truncate(3 * 2**30)  # sparse: 3 GB that read() would return whole
    elif what == "refs-main-fifo":
        ref.unlink()
        os.mkfifo(ref)
    elif what == "snapshot-fifo":
        (snap / "model.safetensors").unlink()
        os.mkfifo(snap / "model.safetensors")
    else:
        ref.write_text("../../../../etc/passwd")
    t0 = time.monotonic()
    line = refusal(cli(*EVAL, "timm:mixer_b16_224.goog_in21k_ft_in1k", "--results-dir", tmp_path / "r",
                       env={"HF_HOME": str(home), "HF_HUB_CACHE": None}))
    assert "damaged" in line and "delete" in line and time.monotonic() - t0 < 30


def test_an_avg5_whose_init_changes_midway_is_refused_not_mixed(tmp_path, monkeypatch):
    """The `--init` run is re-trained under its name after the first cell: the next cell finds
    other weights than the sweep started from and the sweep stops; no avg5 row mixes the two."""
    from mixerbench import launch
    from mixerbench.errors import UserError
    from mixerbench.experiments import reproduce_avg5

    res = tmp_path / "results"
    assert cli("pretrain", *TINY, "--steps", "2", "--run-name", "up", "--results-dir", res).exit_code == 0
    up = res / "runs/up"
    cells = []
    real = launch.run_cell

    def retrain_after_first(cell, log=None):
        out = real(cell, log) if log else real(cell)
        cells.append(out)
        if len(cells) == 1:  # what a re-training of `up` leaves: other weights, its new summary
            import hashlib
            import json

            ckpt = up / "checkpoint-last.safetensors"
            _retrained(ckpt, ckpt)
            summary = json.loads((up / "summary.json").read_text())
            summary["checkpoint_sha256"] = hashlib.sha256(ckpt.read_bytes()).hexdigest()
            (up / "summary.json").write_text(json.dumps(summary))
        return out

    monkeypatch.setattr(launch, "run_cell", retrain_after_first)
    with pytest.raises(UserError, match="changed since this command started"):
        reproduce_avg5(root=res, init=str(up), dataset="synthetic", budget="smoke", device="cpu")
    assert len(cells) == 1 and not (res / "avg5.csv").exists()


# ----------------------------------------------------------------- .npz files and NaN weights


def test_a_fifo_named_npz_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "x.npz")
    for args in ([*EVAL, tmp_path / "x.npz"], [*FT, tmp_path / "x.npz"]):
        line = refusal(cli(*args, "--results-dir", tmp_path / "r"))
        assert "FIFO" in line
    assert not (tmp_path / "r").exists()


def _npy_member(descr: str, shape: tuple, data: bytes) -> bytes:
    import io

    from numpy.lib import format as npy

    buf = io.BytesIO()
    npy.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


@pytest.mark.parametrize("case", ["header-of-2^40-values-over-16-bytes", "complex-values",
                                  "object-values", "not-a-zip"])
def test_an_npz_whose_headers_lie_is_refused_before_allocating(case, tmp_path):
    import zipfile

    import numpy as np
    from test_inputs import _npz

    path = _npz(tmp_path / "w.npz")
    if case == "not-a-zip":
        path.write_bytes(b"\0" * 100)
    else:
        member = {"header-of-2^40-values-over-16-bytes": _npy_member("<f4", (2**40,), b"\0" * 16),
                  "complex-values": _npy_member("<c8", (4, 4, 3, 8), b"\0" * 8 * 384),
                  "object-values": _npy_member("|O", (2,), b"\0" * 16)}[case]
        arrays = dict(np.load(path))
        with zipfile.ZipFile(path, "w") as z:
            for k, v in arrays.items():
                z.writestr(k + ".npy", member if k == "stem/kernel" else _npy_member(
                    v.dtype.str, v.shape, v.tobytes()))
    for args in ([*EVAL, path], [*FT, path]):
        r = cli(*args, "--results-dir", tmp_path / "r")
        line = refusal(r)
        assert "not an official Mixer or ViT checkpoint" in line and "Warning" not in r.output
    assert not (tmp_path / "r").exists()


def test_nan_weights_in_an_npz_or_a_hub_file_are_refused_before_a_run_folder_exists(tmp_path):
    import numpy as np
    import torch
    from test_inputs import _npz
    from test_weights import hub_cache, tiny_timm_mixer

    path = _npz(tmp_path / "w.npz")
    arrays = dict(np.load(path))
    arrays["stem/kernel"] = np.full_like(arrays["stem/kernel"], np.nan)
    np.savez(path, **arrays)
    nan_mixer = tiny_timm_mixer()
    with torch.no_grad():
        nan_mixer.stem.proj.weight.fill_(float("inf"))
    home = tmp_path / "hf"
    hub_cache(home, "timm/mixer_b16_224.goog_in21k_ft_in1k", nan_mixer)
    for src in (path, "timm:mixer_b16_224.goog_in21k_ft_in1k"):
        line = refusal(cli(*FT, src, "--results-dir", tmp_path / "r",
                           env={"HF_HOME": str(home), "HF_HUB_CACHE": None}))
        assert "non-finite weights" in line
    assert not (tmp_path / "r" / "runs").exists()


# ------------------------------------------------------------ memory estimated before use


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    res = tmp_path_factory.mktemp("vit") / "results"
    assert cli("pretrain", *TINY, "--model", "vit", "--steps", "1", "--run-name", "v1",
               "--results-dir", res).exit_code == 0
    return res / "runs/v1"


@pytest.mark.parametrize("source, size", [("fin", "4088"), ("fin", "64x"), ("fin", "4096"),
                                          ("vit", "4096"), ("timm", "2044"), ("timm", "100x")])
def test_a_finetune_too_large_for_this_machine_is_refused_in_seconds(source, size, finished, vit_run,
                                                                     tmp_path):
    """The model a fine-tuning run would train (a Mixer's token MLPs K^2 wider at K times its
    side; a ViT's 65,536 tokens) is estimated on the meta device before the weights or the data
    are read: a size that is not a whole multiple, or one that cannot fit, is one sentence."""
    from test_weights import hub_cache, tiny_timm_mixer

    home = tmp_path / "hf"
    hub_cache(home, "timm/mixer_b16_224.goog_in21k_ft_in1k", tiny_timm_mixer())
    src = {"fin": finished / "runs/fin", "vit": vit_run,
           "timm": "timm:mixer_b16_224.goog_in21k_ft_in1k"}[source]
    t0 = time.monotonic()
    line = refusal(cli(*FT, src, "--img-size", size, "--results-dir", tmp_path / "r",
                       env={"HF_HOME": str(home), "HF_HUB_CACHE": None}))
    assert "integer multiple" in line or "GiB" in line, line
    assert time.monotonic() - t0 < 60 and not (tmp_path / "r" / "runs").exists()


@pytest.mark.parametrize("args", [["--img-size", "4096"],
                                  ["--model", "mixer-b16", "--img-size", "4096"]],
                         ids=["smoke-mixer-at-4096", "mixer-b16-at-4096"])
def test_a_pretraining_too_large_for_its_batch_is_refused_before_any_data(args, tmp_path):
    """The smoke Mixer at 4096 px fits one image, not a batch of 128: the estimate counts the
    micro-batch (the largest activation times its images), so it is refused, not trained into
    the allocator's MemoryError."""
    line = refusal(cli("pretrain", "--preset", "smoke", "--dataset", "synthetic", "--device", "cpu",
                       "--steps", "1", *args, "--results-dir", tmp_path / "r"))
    assert "GiB" in line and not (tmp_path / "r" / "runs").exists()


# ------------------------------------------------ refusals that change nothing, no traceback


@pytest.mark.parametrize("name", ["state-last.pt", "summary.json", "checkpoint-last.safetensors"])
def test_a_folder_where_a_run_file_goes_is_refused_before_any_file_is_rewritten(name, tmp_path):
    """A folder where the run's training state (or summary, or checkpoint) goes: refused when
    the run is picked up, before metrics.csv is rewritten for a fresh start."""
    from conftest import interrupted_run

    base = tmp_path / "results"
    interrupted_run(base, steps=8, ckpt_every=3, kill_at=4)
    run = base / "runs/unf"
    target = run / name
    target.unlink(missing_ok=True)
    target.mkdir()
    before = tree(base)
    line = refused(cli("pretrain", *TINY, "--steps", "8", "--set", "ckpt_every=3", "--set",
                       "eval_every=4", "--run-name", "unf", "--results-dir", base))
    assert name in line and "folder" in line
    assert tree(base) == before


def _fill(disk: Path, leave: int) -> None:
    """Fill the tmpfs at `disk` to `leave` free bytes."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


def test_plot_on_a_full_disk_writes_all_figures_or_none(finished, tmpfs):
    """Room for a figure or two, not for all of them: the refusal says files are unchanged and
    they are (no figure added, no table replaced, no folder made)."""
    disk = tmpfs(finished.parent / "disk", "size=2m")
    res = disk / "results"
    shutil.copytree(finished, res)
    _fill(disk, 80_000)
    before = tree(res)
    line = refused(cli("plot", "--results-dir", res))
    assert "disk is full" in line and "unchanged" in line
    assert tree(res) == before


@pytest.mark.parametrize("shape", [(0, 4), (2, 0)])
def test_token_mixing_weights_without_units_are_one_sentence(shape, folder, tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "empty.safetensors"
    save_file({"blocks.0.mlp_tokens.fc1.weight": torch.zeros(shape)}, path)
    before = tree(folder)
    line = refused(cli("plot", "token-mixing", "--checkpoint", path, "--results-dir", folder))
    assert "no unit" in line
    assert tree(folder) == before


def test_export_on_a_full_disk_is_one_sentence_and_leaves_nothing(vit_run, tmpfs, tmp_path):
    disk = tmpfs(tmp_path / "disk", "size=256k")
    _fill(disk, 16_000)
    line = refused(cli("export", vit_run, disk / "out"))
    assert "No space left" in line
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


@pytest.mark.slow  # child processes: about 10 s on a busy 2-core machine
def test_sigterm_during_export_leaves_nothing_beside_the_folder(vit_run, tmp_path, child_env):
    """SIGTERM while the export checks its files (made slow here, so the signal lands then):
    exit 143, one line, and no `.out.export-*.tmp` beside OUT_DIR."""
    prelude = ("import time\nimport mixerbench.export as e\nreal = e._check\n"
               "def slow(*a, **k):\n    print('checking', flush=True)\n    time.sleep(60)\n"
               "    return real(*a, **k)\ne._check = slow\n")
    code = f"import sys\n{prelude}\nfrom mixerbench.cli import app\napp(sys.argv[1:], prog_name='mixerbench')\n"
    proc = subprocess.Popen([sys.executable, "-c", code, "--quiet", "export", str(vit_run),
                             str(tmp_path / "out")], cwd=ROOT, env=dict(child_env, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "checking"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    one_error(err)
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


# ------------------------------------------------------------------------- the tensor cache


@pytest.mark.parametrize("name", ["synthetic", "mnist-5k"])
@pytest.mark.parametrize("forgery", ["labels-permuted", "other-images"])
def test_an_embedded_cache_forged_with_a_matching_fingerprint_is_rebuilt(name, forgery, tmp_path):
    """The cache file rewritten with its labels permuted (or other images in it) and the
    fingerprint recomputed to match: compared with its source, it is decoded again, and what
    trains is the source's data."""
    import torch

    from mixerbench.data import decode, get_dataset
    from mixerbench.data.embedded import EmbeddedReader

    first = get_dataset(name, "train", cache_dir=tmp_path)
    (path,) = [p for p in (tmp_path / "tensors").glob("*.pt") if "-train-" in p.name]
    payload = torch.load(path, weights_only=True)
    if forgery == "labels-permuted":
        payload["labels"] = payload["labels"].roll(1)
    else:
        payload["images"] = 255 - payload["images"]
    key = EmbeddedReader(name).cache_key()
    payload["fingerprint"] = decode.cache_fingerprint(key, payload["labels"].numpy(),
                                                      payload["class_names"], payload["images"].shape)
    torch.save(payload, path)
    again = get_dataset(name, "train", cache_dir=tmp_path)
    assert torch.equal(again.labels, first.labels)
    assert torch.equal(again.images, first.images)
    assert torch.equal(torch.load(path, weights_only=True)["labels"], first.labels)  # rewritten
