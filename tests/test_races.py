"""Reads and writes that stay inside the results folder while another process swaps its
folders and files (CPU, offline, each race bounded to a few seconds).

A check by path followed by a use by path loses to a process that renames a link into place
between the two. Here a real second process (`SWAPPER`) keeps renaming a folder or file of the
results folder to and from a link to an outside folder (or another run's file) while commands
and library calls run against it, many times over. The contract: every attempt ends in its
normal result or in a refusal, nothing is ever written outside, and nothing read through a
swapped-in path is credited to the run whose path it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli
from test_filesystem import snapshot
from test_hostile import EV_OF, FINISHED, UNFINISHED, folder, template  # noqa: F401

from mixerbench import files, results
from mixerbench.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

RACE_SECONDS = 2.0  # how long each swapper runs; every loop below stops when it stops
# how long a checkpoint race leaves each file in place (s, at most): a load checks, then loads,
# milliseconds apart, so swaps at that pace meet the load after a passed check
DWELL = 0.002

# argv: the path to swap, what to swap in (a link's target, or with --file a file or folder
# renamed in), seconds. Swaps as an attacker would, by renames (each atomic) in a loop: the
# real entry aside, the impostor in, the impostor aside, the real entry back, each in place
# for a random moment of up to `dwell` seconds (with a dwell, a command's checks mostly pass
# and its later uses meet the other entry; without, the swaps are as fast as renames go). A
# folder the command made while the real one was aside is in the way of the next rename: it
# is removed. Prints its swap count.
SWAPPER = r"""
import os, random, shutil, sys, time
target, impostor, seconds, dwell = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
aside, staged = target + ".real", target + ".impostor"
if "--file" in sys.argv:
    os.rename(impostor, staged)
else:
    os.symlink(impostor, staged)
print("ready", flush=True)
swaps, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for a, b in ((target, aside), (staged, target), (target, staged), (aside, target)):
        try:
            os.rename(a, b)
        except OSError:
            if b == target and os.path.isdir(b) and not os.path.islink(b):
                shutil.rmtree(b, ignore_errors=True)  # made by the command meanwhile
                try:
                    os.rename(a, b)
                except OSError:
                    pass
        if b == target and dwell:
            time.sleep(random.uniform(0, dwell))
    swaps += 1
print(swaps, flush=True)
"""


class Swapper:
    """The swapper process, started and waited for (never left running)."""

    def __init__(self, target: Path, impostor: Path, seconds: float = RACE_SECONDS,
                 file: bool = False, dwell: float = 0.0):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SWAPPER, str(target), str(impostor), str(seconds), str(dwell)]
            + (["--file"] if file else []), stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.swaps = 0

    def running(self) -> bool:
        return self.proc.poll() is None

    def __enter__(self) -> "Swapper":
        return self

    def __exit__(self, *exc) -> None:
        try:
            out, _ = self.proc.communicate(timeout=60)
            self.swaps = int(out.split()[-1])
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def outside_of(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    return out


def one_sentence(r) -> None:
    """A command that met the swapped-in link: exit 2, its last line one error sentence."""
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and lines[-1].startswith("error: "), r.output


# ------------------------------------------------------------ writes never leave the folder


@pytest.mark.parametrize("sub", ["figures", "runs/fin"])
def test_atomic_writes_under_a_swapped_folder_stay_inside(sub, folder, tmp_path):
    """The primitive every writer uses, hundreds of times while `sub` is swapped for a link to
    an outside folder: each write lands in the real folder or is refused; none outside."""
    outside = outside_of(tmp_path)
    results.results_dir(folder)  # a results folder, as every command names it
    (folder / sub).mkdir(exist_ok=True)
    written = refused = 0
    with Swapper(folder / sub, outside) as sw:
        i = 0
        while sw.running():
            i += 1
            try:
                files.atomic_write_bytes(folder / sub / f"f{i % 7}.png", b"x" * 100)
                written += 1
            except UserError as exc:
                assert "symbolic link" in str(exc) or "changing" in str(exc), exc
                refused += 1
            except OSError:  # renamed away between the open of the folder and the rename
                refused += 1
    assert sw.swaps > 100 and written > 10, (sw.swaps, written, refused)
    assert refused > 0, "the race was never met: the test proves nothing"
    assert not any(outside.iterdir()), sorted(p.name for p in outside.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("subs,command", [(("figures", "tables"), ["plot"]),
                                          (("runs/fin",), ["plot", "curves"])])
def test_plot_under_swapped_folders_writes_nothing_outside(subs, command, folder, tmp_path):
    """`plot` again and again while `figures` and `tables` (or a run folder whose metrics it
    reads) are renamed to and from links to an outside folder: each run draws or refuses in
    one sentence, and the outside folder stays empty. (A check by path before each write left
    a window in which whole figures, tables and temporary files could land outside; a plot
    writes too few files in seconds to meet it reliably, so the many attempts are the
    primitive's, above, which plot's writes go through.)"""
    outside = outside_of(tmp_path)
    assert cli("plot", "--results-dir", folder).exit_code == 0  # figures/ and tables/ exist
    runs = 0
    with contextlib.ExitStack() as stack:
        swappers = [stack.enter_context(Swapper(folder / sub, outside)) for sub in subs]
        while any(sw.running() for sw in swappers) or runs == 0:
            r = cli(*command, "--results-dir", folder)
            if r.exit_code:
                one_sentence(r)
            runs += 1
    assert not any(outside.iterdir()), sorted(p.name for p in outside.iterdir())


# ------------------------------------------------- nothing credited to swapped-in weights


def state_digest(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


IMPOSTORS = {
    # the checkpoint file: a link to another run's, or another run's file renamed in
    "checkpoint-link": ("runs/fin/checkpoint-last.safetensors", "link"),
    "checkpoint-file": ("runs/fin/checkpoint-last.safetensors", "file"),
    # the whole run folder: a link to a copy of another run, or that copy renamed in
    "run-link": ("runs/fin", "link"),
    "run-folder": ("runs/fin", "file"),
}


def impostor_for(case: str, res: Path, outside: Path) -> Path:
    """What the swapper puts at `fin`'s place: run `unf`'s checkpoint (or whole folder, as
    `fin`), as a file outside (for a link) or inside the results folder (renamed in)."""
    rel, kind = IMPOSTORS[case]
    src = res / "runs/unf" / ("checkpoint-last.safetensors" if rel.endswith("safetensors") else "")
    base = outside if kind == "link" else res / "runs"
    dst = base / ("impostor.safetensors" if src.is_file() else "impostor-run")
    if src.is_file():
        shutil.copy(src, dst)
    else:
        shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("case", list(IMPOSTORS))
def test_a_loaded_checkpoint_is_the_one_credited(case, folder, tmp_path):
    """`load_model(runs/fin)` many times while `fin`'s checkpoint (or folder) is swapped with
    run `unf`'s: every load that succeeds holds `fin`'s own weights; the others are refused
    (a link, or a checkpoint that says another run wrote it)."""
    from mixerbench.models.weights import load_model

    outside = outside_of(tmp_path)
    results.results_dir(folder)
    mine = state_digest(load_model(str(folder / "runs/fin"))[0])
    theirs = state_digest(load_model(str(folder / "runs/unf"))[0])
    assert mine != theirs
    rel, kind = IMPOSTORS[case]
    impostor = impostor_for(case, folder, outside)
    loaded = refused = 0
    with Swapper(folder / rel, impostor, file=kind == "file", dwell=DWELL) as sw:
        while sw.running():
            try:
                model, _ = load_model(str(folder / "runs/fin"))
            except UserError:
                refused += 1
                continue
            assert state_digest(model) == mine, "another run's weights were loaded as fin's"
            loaded += 1
    assert loaded > 0 and refused > 0, (loaded, refused, sw.swaps)


@pytest.mark.parametrize("case", ["checkpoint-link", "checkpoint-file"])
def test_evaluate_rows_are_never_credited_to_swapped_weights(case, folder, tmp_path):
    """`evaluate --checkpoint runs/fin` while its checkpoint is swapped with run `unf`'s: every
    row credited to `fin` has `fin`'s own loss (it used to carry the other run's)."""
    outside = outside_of(tmp_path)
    args = [*EV_OF, folder / "runs/fin", "--results-dir", folder]
    assert cli(*args).exit_code == 0
    own = results.load("accuracy", folder)
    own = own[(own["run_id"] == "fin") & (own["kind"] == "evaluate")]["loss"].iloc[-1]
    rel, kind = IMPOSTORS[case]
    impostor = impostor_for(case, folder, outside)
    runs = 0
    with Swapper(folder / rel, impostor, file=kind == "file", dwell=DWELL) as sw:
        while sw.running() or runs == 0:
            r = cli(*args)
            if r.exit_code:
                one_sentence(r)
            runs += 1
    rows = results.load("accuracy", folder)
    rows = rows[(rows["run_id"] == "fin") & (rows["kind"] == "evaluate")]
    assert len(rows) >= 1 and set(rows["loss"]) == {own}, (runs, list(rows["loss"]))
