"""The results folder under a hostile filesystem and hostile names (CPU, offline, in-process).

Planted links, FIFOs, sockets and devices, a read-only or full disk, a file or folder where the
other goes, JSON nested without end, and names that are formulas, rich markup, mathtext,
markdown or not UTF-8. The contract, for every case: exit 0 with correct behaviour, or exit 2
with one sentence naming the path and what to do; nothing blocks; nothing is written outside
the results folder; a refusal changes nothing in it. Read-only and full-disk cases mount a small
tmpfs, so they need root (CI has it) and are skipped with the reason otherwise. The last test
fuzzes the folder itself with Hypothesis.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, cli, refused
from test_hostile import EV_OF, FINISHED, UNFINISHED, folder, template  # noqa: F401

from mixerbench import results

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
HANG_SECONDS = 120  # any command here ends in seconds; one still running after this hangs


@pytest.fixture(autouse=True)
def no_hang():
    """A command that blocks (on a FIFO, on /dev/zero) fails the test instead of the suite."""
    def stop(signum, frame):
        raise TimeoutError(f"the command blocked for {HANG_SECONDS} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(HANG_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under `root` without following a link or opening anything but a regular
    file: links by target, FIFOs and sockets by kind, files by content."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISREG(st.st_mode):
                out[rel] = digest(p)
            else:
                out[rel] = f"special:{stat.S_IFMT(st.st_mode)}"
    return out


def digest(path) -> str:
    """A regular file's content: the sha256 of its bytes; for a sparse file (a planted 3 GB one,
    whose holes read as zeros), its size and the sha256 of the offsets and bytes of its data
    extents (SEEK_DATA / SEEK_HOLE), which any change of a byte changes too: hashing 3 GB of
    zeros took ~0.6 s a snapshot, most of the hub fuzz test's time."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        if st.st_blocks * 512 >= st.st_size:
            return hashlib.sha256(fh.read()).hexdigest()
        h, fd, pos = hashlib.sha256(), fh.fileno(), 0
        while pos < st.st_size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole from `pos` to the end
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            os.lseek(fd, start, os.SEEK_SET)
            h.update(b"@%d:" % start)
            for _ in range(start, pos, 2**20):
                h.update(os.read(fd, min(2**20, pos - os.lseek(fd, 0, os.SEEK_CUR))))
        return f"sparse:{st.st_size}:{h.hexdigest()}"


def refused_after_work(r) -> str:
    """The refusal of a command that may show progress first (a benchmark, an evaluation):
    exit 2, no traceback, and its last line the one error sentence."""
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and lines[-1].startswith("error: "), r.output
    assert sum(line.startswith("error: ") for line in lines) == 1, r.output
    return lines[-1]


def older_header(path: Path) -> None:
    """Rewrite a results CSV as a version without its last column wrote it (for `upgrade`)."""
    rows = list(csv.reader(io.StringIO(path.read_text())))
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([r[:-1] for r in rows])


def fifo(path: Path) -> None:
    os.mkfifo(path)


@contextlib.contextmanager
def unix_socket(path: Path):
    """A listening-ready Unix socket bound at `path` (a relative name: AF_UNIX paths are short)."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    try:
        yield
    finally:
        s.close()


# ------------------------------------------------ one way in: links, FIFOs, sockets, devices

EVAL_FIN = [*EV_OF, "{R}/runs/fin"]
NEW_RUN = ["pretrain", *TINY, "--steps", "2", "--run-name", "new"]


def link(rel: str, target: str):
    """Plant `rel` as a symbolic link to `target` ({O}: the outside folder)."""
    def plant(res: Path, out: Path) -> None:
        p = res / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target.format(O=out))
    return plant


def make_fifo(rel: str):
    def plant(res: Path, out: Path) -> None:
        p = res / rel
        p.unlink(missing_ok=True)
        p.parent.mkdir(parents=True, exist_ok=True)
        fifo(p)
    return plant


def both(*plants):
    def plant(res: Path, out: Path) -> None:
        for p in plants:
            p(res, out)
    return plant


def outside_csv(res: Path, out: Path) -> None:
    shutil.copy(res / "accuracy.csv", out / "theirs.csv")
    link("accuracy.csv", "{O}/theirs.csv")(res, out)


def outside_run(res: Path, out: Path) -> None:
    shutil.copytree(res / "runs/fin", out / "fin")
    older_header(out / "fin/metrics.csv")
    link("runs/fin", "{O}/fin")(res, out)


def outside_runs(res: Path, out: Path) -> None:
    shutil.copytree(res / "runs", out / "runs")
    older_header(out / "runs/fin/metrics.csv")
    link("runs", "{O}/runs")(res, out)


def new_run_folder_with(rel: str, plant):
    def go(res: Path, out: Path) -> None:
        (res / "runs/new").mkdir()
        plant(res, out)
    return go


# (plant, command): each must end in exit 2 with one sentence, nothing written outside the
# folder and nothing changed inside it
REFUSED = {
    # writes that would escape through a link
    "accuracy-csv-lock-links-out": (link("accuracy.csv.lock", "{O}/made.lock"), EVAL_FIN),
    "accuracy-ensure-lock-links-out": (link("accuracy.ensure.lock", "{O}/made.lock"), NEW_RUN),
    "run-lock-links-out": (new_run_folder_with("runs/new/run.lock", link(
        "runs/new/run.lock", "{O}/made.lock")), NEW_RUN),
    "metrics-csv-lock-links-out": (link("runs/unf/metrics.csv.lock", "{O}/made.lock"), UNFINISHED),
    "tables-links-out": (link("tables", "{O}"), ["plot", "compare"]),
    "figures-links-out": (link("figures", "{O}"), ["plot", "curves"]),
    "run-folder-links-out-upgrade": (outside_run, ["upgrade"]),
    "runs-links-out-upgrade": (outside_runs, ["upgrade"]),
    "accuracy-csv-links-to-an-outside-csv": (outside_csv, EVAL_FIN),
    # FIFOs and devices where a file should be: nothing blocks
    "accuracy-csv-fifo-pretrain": (make_fifo("accuracy.csv"), NEW_RUN),
    "accuracy-csv-fifo-plot": (make_fifo("accuracy.csv"), ["plot"]),
    "accuracy-csv-fifo-evaluate": (make_fifo("accuracy.csv"), EVAL_FIN),
    "accuracy-csv-fifo-upgrade": (make_fifo("accuracy.csv"), ["upgrade"]),
    "accuracy-csv-links-to-a-fifo": (both(lambda r, o: fifo(o / "pipe"),
                                          link("accuracy.csv", "{O}/pipe")), ["plot"]),
    "accuracy-csv-lock-fifo": (make_fifo("accuracy.csv.lock"), EVAL_FIN),
    "config-json-fifo": (make_fifo("runs/unf/config.json"), UNFINISHED),
    "metrics-csv-fifo-resume": (make_fifo("runs/unf/metrics.csv"), UNFINISHED),
    # curves draws the last command's runs by default (not unf): asked for unf by name
    "metrics-csv-fifo-plot": (make_fifo("runs/unf/metrics.csv"), ["plot", "curves", "--runs", "unf"]),
    "metrics-csv-fifo-upgrade": (make_fifo("runs/unf/metrics.csv"), ["upgrade"]),
    "metrics-csv-lock-fifo": (make_fifo("runs/unf/metrics.csv.lock"), UNFINISHED),
    "accuracy-csv-is-dev-zero-plot": (link("accuracy.csv", "/dev/zero"), ["plot"]),
    "accuracy-csv-is-dev-zero-evaluate": (link("accuracy.csv", "/dev/zero"), EVAL_FIN),
    # a file or folder where the other goes
    "folder-where-a-figure-goes": (lambda r, o: (r / "figures/curves.png").mkdir(parents=True),
                                   ["plot", "curves"]),
    "file-where-figures-goes": (lambda r, o: (r / "figures").write_text("x"), ["plot", "curves"]),
    "file-where-tables-goes": (lambda r, o: (r / "tables").write_text("x"), ["plot", "compare"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_links_fifos_and_devices_in_the_folder_are_refused_in_one_sentence(case, folder, tmp_path):
    plant, args = REFUSED[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    plant(folder, outside)
    before, before_out = snapshot(folder), snapshot(outside)
    line = refused(cli(*[a.format(R=folder, O=outside) for a in args], "--results-dir", folder))
    assert snapshot(folder) == before, f"{case}: the refusal changed the results folder"
    assert snapshot(outside) == before_out, f"{case}: something was written outside"
    assert len(line) < 400


@pytest.mark.parametrize("command", [["plot"], EVAL_FIN, ["upgrade"]])
def test_a_socket_as_accuracy_csv_is_refused(command, folder, monkeypatch):
    (folder / "accuracy.csv").unlink()
    monkeypatch.chdir(folder)  # AF_UNIX paths are short (108 bytes): bind by a relative name
    with unix_socket(Path("accuracy.csv")):
        before = snapshot(folder)
        line = refused(cli(*[a.format(R=folder) for a in command], "--results-dir", folder))
        assert "socket" in line and snapshot(folder) == before


def test_a_results_dir_that_is_itself_a_link_is_the_users_choice(folder, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(folder)
    r = cli("plot", "curves", "--results-dir", alias)
    assert r.exit_code == 0, r.output
    assert (folder / "figures/curves.png").is_file()


def test_a_run_tensorboard_folder_linked_outside_is_refused_before_training(folder, tmp_path):
    pytest.importorskip("tensorboard")
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "runs/unf/tb").symlink_to(outside)
    before = snapshot(folder)
    assert "symbolic link" in refused(cli(*UNFINISHED, "--tracker", "tensorboard",
                                          "--results-dir", folder))
    assert snapshot(folder) == before and not any(outside.iterdir())


@pytest.mark.parametrize("tracker,sub", [("tensorboard", "tb"), ("mlflow", "mlflow"),
                                         ("wandb", "wandb")])
def test_a_tracker_folder_linked_outside_is_switched_off_with_a_warning(tracker, sub, folder,
                                                                        tmp_path, monkeypatch):
    pytest.importorskip(tracker)
    for var in ("MLFLOW_TRACKING_URI", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / sub).symlink_to(outside)
    r = cli("plot", "curves", "--tracker", tracker, "--results-dir", folder)
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output and "symbolic link" in " ".join(r.output.split()), r.output
    assert not any(outside.iterdir()), "the tracker wrote through the link"


# ------------------------------------------------------------ results dir: empty, a file


@pytest.mark.parametrize("command", [["plot"], ["upgrade"], NEW_RUN])
def test_an_empty_results_dir_is_refused(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = refused(cli(*command, "--results-dir", ""))
    assert "empty" in line
    line = refused(cli(*command, env={"MIXERBENCH_RESULTS": ""}))
    assert "empty" in line
    assert not any(tmp_path.iterdir()), "something was written in the current folder"


@pytest.mark.parametrize("command", [["plot"], ["upgrade"]])
def test_a_results_dir_that_is_a_file(command, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    assert "is a file" in refused(cli(*command, "--results-dir", f))
    assert f.read_text() == "x"


# ------------------------------------------------------------------- JSON bounded in depth

DEEP = "[" * 100_000 + "]" * 100_000


def _deep_checkpoint(folder: Path, out: Path) -> Path:
    from safetensors.torch import load_file, save

    path = out / "deep.safetensors"
    path.write_bytes(save(load_file(str(folder / "runs/fin/checkpoint-last.safetensors")),
                          metadata={"mixerbench_model": DEEP}))
    return path


@pytest.mark.parametrize("command", [
    EV_OF, ["finetune", "--dataset", "synthetic", "--steps", "2", "--device", "cpu", "--init"],
    ["export"]])
def test_checkpoint_metadata_nested_100000_deep_is_refused(command, folder, tmp_path):
    ckpt = _deep_checkpoint(folder, tmp_path)
    args = [*command, ckpt] + ([tmp_path / "exported"] if command == ["export"] else
                               ["--results-dir", folder])
    before = snapshot(folder)
    assert "levels deep" in refused(cli(*args))
    assert snapshot(folder) == before and not (tmp_path / "exported").exists()


@pytest.mark.parametrize("rel,command", [("runs/unf/config.json", UNFINISHED),
                                         ("runs/fin/summary.json", FINISHED)])
def test_run_json_nested_100000_deep_is_refused(rel, command, folder):
    (folder / rel).write_text(DEEP)
    before = snapshot(folder)
    refused(cli(*command, "--results-dir", folder))
    assert snapshot(folder) == before


# --------------------------------------------------- read-only and full disks (tmpfs, root)


@pytest.fixture
def tmpfs(tmpfs, tmp_path):
    """conftest's tmpfs holding a copy of a results folder: mount(size, res) -> the copy."""
    def mount(size: str, res: Path) -> Path:
        mnt = tmpfs(tmp_path / "mnt", f"size={size}")
        shutil.copytree(res, mnt / "results", symlinks=True)
        return mnt / "results"

    return mount


def _read_only(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)


def _fill(mnt: Path) -> None:
    """Fill the disk: every write of a new block from here on is ENOSPC."""
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


SWEEP = ["compare", "--models", "mixer", "--preset", "smoke", "--dataset", "synthetic",
         "--set", "model.img_size=32", "--no-bench", "--device", "cpu", "--format", "csv"]
BENCH = ["bench", "--models", "mixer-t4", "--device", "cpu", "--batch-size", "2", "--repeats",
         "1", "--steps", "1", "--warmup", "0", "--no-compile"]


@pytest.mark.parametrize("command", [["plot"], ["upgrade"], ["reproduce", "table1"],
                                     [*SWEEP, "--launcher", "local"], NEW_RUN, EVAL_FIN])
def test_a_read_only_results_folder(command, folder, tmpfs):
    if command == ["upgrade"]:
        older_header(folder / "accuracy.csv")  # something for upgrade to do
    res = tmpfs("4m", folder)
    _read_only(res.parent)
    before = snapshot(res)
    line = refused(cli(*[a.format(R=res) for a in command], "--results-dir", res))
    assert "read-only" in line or "cannot be written" in line, line
    assert snapshot(res) == before


@pytest.mark.parametrize("command", [["plot"], ["upgrade"], EVAL_FIN, BENCH])
def test_a_full_disk_leaves_every_file_as_it_was(command, folder, tmpfs):
    """Every write is a temporary file renamed into place, so ENOSPC mid-write leaves the
    previous file whole. Taking a lock creates its (empty) lock file, which needs no space:
    that is the one thing a refusal here may add."""
    if command == ["upgrade"]:
        older_header(folder / "accuracy.csv")  # something for upgrade to rewrite
    for sub in ("figures", "tables"):  # as after an earlier plot
        (folder / sub).mkdir()
    res = tmpfs("4m", folder)
    _fill(res.parent)
    before = snapshot(res)
    line = refused_after_work(cli(*[a.format(R=res) for a in command], "--results-dir", res))
    assert "disk is full" in line, line
    after = snapshot(res)
    empty = hashlib.sha256(b"").hexdigest()
    added = {k for k in set(after) - set(before) if k.endswith(".lock") and after[k] == empty}
    assert {k: v for k, v in after.items() if k not in added} == before


# --------------------------------------------------------------------------- temp files


def test_temp_files_of_a_killed_upgrade_are_removed_by_the_next(folder):
    older_header(folder / "accuracy.csv")
    stale = folder / ".accuracy.csv.k1ll3d.tmp"  # what SIGKILL mid-write leaves
    stale.write_text("half a file")
    r = cli("upgrade", "--results-dir", folder)
    assert r.exit_code == 0, r.output
    assert not stale.exists()
    assert not list(folder.glob(".*.tmp"))
    results.load("accuracy", folder)  # whole and current


# -------------------------------------------------------------------------- names as data


FORMULAS = ['=HYPERLINK("http://x","y")', "@SUM(1+1)", "+cmd|' /C calc'!A0", "-1+1",
            "\tx", "\rx", "'already quoted", "''=x"]


def test_formula_cells_are_neutralised_and_read_back_unchanged(tmp_path):
    row = {c: None for c in results.SCHEMAS["accuracy"]}
    for i, name in enumerate(FORMULAS + ["-5", "+2.5e3", "plain"]):
        results.append_row("accuracy", dict(row, run_id=f"r{i}", dataset=name, top1=-1.5), tmp_path)
    with open(tmp_path / "accuracy.csv", newline="") as fh:
        cells = [r["dataset"] for r in csv.DictReader(fh)]
    for cell in cells:  # what a spreadsheet sees
        assert not cell.startswith(("=", "+", "@", "\t", "\r")) or cell in ("+2.5e3",), cell
        assert not cell.startswith("-") or cell == "-5", cell
    df = results.load("accuracy", tmp_path)
    assert list(df["dataset"]) == FORMULAS + ["-5", "+2.5e3", "plain"]
    assert list(df["top1"]) == [-1.5] * len(df)  # negative numbers stay numbers


def test_upgrade_neutralises_formulas_an_older_version_wrote_bare(tmp_path):
    row = {c: "" for c in results.SCHEMAS["accuracy"][:-1]}
    text = ",".join(row) + "\n" + ",".join(dict(row, run_id="r", dataset="=cmd|x").values()) + "\n"
    (tmp_path / "accuracy.csv").write_text(text)
    assert cli("upgrade", "--results-dir", tmp_path).exit_code == 0
    assert ",'=cmd|x," in (tmp_path / "accuracy.csv").read_text()
    assert list(results.load("accuracy", tmp_path)["dataset"]) == ["=cmd|x"]


def test_text_with_markup_mathtext_and_formulas_plots_and_prints(folder):
    """A dataset called `$\\foo$ [/] =cmd` goes through plot (mathtext off, markup escaped,
    tables' CSV neutralised)."""
    acc = results.load("accuracy", folder)
    row = {k: (None if v != v else v) for k, v in acc.iloc[0].to_dict().items()}
    name = "$\\foo$ [/] =cmd|x"
    for model in ("mixer-t4", "vit-ti16"):
        results.append_row("accuracy", dict(row, run_id=f"x-{model}", model=model, dataset=name,
                                            experiment="compare:smoke"), folder)
    r = cli("plot", "--results-dir", folder)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    for table in (folder / "tables").glob("*.csv"):
        for record in csv.reader(io.StringIO(table.read_text())):
            assert not any(c.startswith(("=", "@")) for c in record), (table, record)


def test_a_checkpoint_named_as_mathtext_plots(folder, tmp_path):
    ckpt = tmp_path / "$\\foo$.safetensors"
    shutil.copy(folder / "runs/fin/checkpoint-last.safetensors", ckpt)
    r = cli("plot", "token-mixing", "--checkpoint", ckpt, "--results-dir", folder)
    assert r.exit_code == 0, r.output


def test_a_results_dir_with_rich_markup_in_its_name(folder, tmp_path):
    odd = tmp_path / "res[/]ults[bold]"
    shutil.copytree(folder, odd)
    for command in (["plot", "curves"], ["upgrade"], NEW_RUN, [*EV_OF, odd / "runs/fin"]):
        r = cli(*command, "--results-dir", odd)
        assert r.exit_code == 0, (command, r.output)
        assert "Traceback" not in r.output
    assert "[/]" in r.output  # shown as typed


def test_the_model_card_escapes_markdown_in_summary_fields(tmp_path):
    from mixerbench.presets import resolve
    from mixerbench.train import train

    cfg = resolve("smoke", model="resnet", dataset="synthetic", overrides={}, flags={
        "steps": 2, "model.img_size": 32, "device": "cpu", "data.batch_size": 50,
        "eval_every": 2, "max_eval_examples": 100})
    run = Path(train(cfg, tmp_path / "res")["run_dir"])  # timm can rebuild a ResNet of any depth
    s = json.loads((run / "summary.json").read_text())
    s["device_name"] = "cpu | two\n# Heading [link](http://x) <b>"
    (run / "summary.json").write_text(json.dumps(s))
    r = cli("export", run, tmp_path / "card")
    assert r.exit_code == 0, r.output
    card = (tmp_path / "card" / "README.md").read_text()
    device = next(line for line in card.splitlines() if line.startswith("| device |"))
    assert device.count(" | ") == 1 and "\\|" in device and "\\[link\\]" in device
    assert "\n# Heading" not in card and "<b>" not in card


def test_a_path_that_is_not_utf8_is_refused_and_shown(folder, tmp_path):
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/r\xffsults"))
    shutil.copytree(folder, odd)
    before = snapshot(odd)
    for command in (NEW_RUN, ["plot", "curves"], ["upgrade"]):
        line = refused(cli(*command, "--results-dir", odd))
        assert "not UTF-8" in line and "\ufffd" in line, line
        line = refused(cli(*command, env={"MIXERBENCH_RESULTS": os.fsdecode(bytes(odd))}))
        assert "not UTF-8" in line
    assert snapshot(odd) == before


def test_a_run_folder_named_in_another_encoding_is_plotted_with_replacement_characters(folder):
    shutil.copytree(folder / "runs/fin", os.fsdecode(bytes(folder) + b"/runs/f\xffn"))
    r = cli("plot", "curves", "--results-dir", folder)
    assert r.exit_code == 0, (r.output, r.exception)
    assert (folder / "figures/curves.png").is_file()


def _image_folder(root: Path) -> Path:
    """A two-class image folder (split folders train/ and test/) at `root`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.png")
    return root


def test_markup_in_a_dataset_folder_and_a_model_option_is_text(tmp_path):
    data = _image_folder(tmp_path / "data[/]set[bold]")
    args = ["pretrain", "--preset", "smoke", "--dataset", data, "--img-size", "32", "--device",
            "cpu", "--set", "model.width=16", "--set", "model.depth=1", "--set",
            "data.batch_size=4", "--steps", "2", "--results-dir", tmp_path / "res"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "data[/]set[bold]" in r.output  # shown as named, never read as markup
    line = refused(cli(*args, "--set", "model.options.pool[/]=1"))  # an option it does not take
    assert "pool[/]" in line, line


def test_ascii_terminal(folder, child_env):
    """PYTHONIOENCODING=ascii: output that is not ASCII is replaced, never a traceback."""
    odd = folder.parent / "résultats"
    shutil.copytree(folder, odd)
    env = dict(child_env, PYTHONIOENCODING="ascii")
    for args in (["plot", "curves", "--results-dir", odd], ["models", "mixer-t4"],
                 ["plot", "nope", "--results-dir", odd]):
        r = subprocess.run([sys.executable, "-m", "mixerbench", "--quiet", *map(str, args)],
                           cwd=ROOT, env=env, capture_output=True, timeout=120)
        assert r.returncode in (0, 2) and b"Traceback" not in r.stderr, r.stderr[-2000:]


# ------------------------------------------------------------------- fuzzing the folder itself

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Where things are planted: every file and folder a command reads or writes
PLACES = ["accuracy.csv", "accuracy.csv.lock", "accuracy.ensure.lock", "fewshot.csv",
          "throughput.csv", "runs", "runs/fin", "runs/unf", "runs/fin/metrics.csv",
          "runs/unf/metrics.csv", "runs/unf/metrics.csv.lock", "runs/fin/summary.json",
          "runs/fin/config.json", "runs/unf/config.json", "runs/unf/state-last.pt",
          "runs/fin/checkpoint-last.safetensors", "figures", "tables", "figures/curves.png",
          "tables/transfer.csv", "runs/fin/run.lock", "tb", "runs/new"]
KINDS = ["fifo", "link-out-file", "link-out-dir", "link-inside", "link-dangling", "link-dev-zero",
         "dir", "empty", "binary", "truncated", "deep-json", "older-header"]
COMMANDS = {
    "plot": ["plot"],
    "plot-curves": ["plot", "curves"],
    "upgrade": ["upgrade"],
    "evaluate": EVAL_FIN,
    "pretrain": NEW_RUN,
}


def _plant(res: Path, out: Path, rel: str, kind: str) -> None:
    p = res / rel
    if kind in ("truncated", "older-header"):
        if p.is_file() and not p.is_symlink():
            if kind == "truncated":
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
            elif p.suffix == ".csv":
                older_header(p)
        return
    if p.is_symlink() or p.is_file() or stat.S_ISFIFO(os.lstat(p).st_mode if os.path.lexists(p) else 0):
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)
    if not p.parent.is_dir() or p.parent.is_symlink():
        return  # its folder was replaced by an earlier plant
    if kind == "fifo":
        fifo(p)
    elif kind == "link-out-file":
        (out / "target.csv").write_text("run_id\nx\n")
        p.symlink_to(out / "target.csv")
    elif kind == "link-out-dir":
        p.symlink_to(out, target_is_directory=True)
    elif kind == "link-inside":
        p.symlink_to(res / "runs" / "fin")
    elif kind == "link-dangling":
        p.symlink_to(out / "nowhere")
    elif kind == "link-dev-zero":
        p.symlink_to("/dev/zero")
    elif kind == "dir":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "binary":
        p.write_bytes(bytes(range(256)) * 4)
    elif kind == "deep-json":
        p.write_text(DEEP)


def _csvs(root: Path) -> dict[str, str]:
    """Regular CSV files under `root` (not through links), by content hash."""
    snap = snapshot(root)
    return {k: v for k, v in snap.items() if k.endswith(".csv") and len(v) == 64}


@pytest.mark.slow  # 30 commands end to end: about a minute on a busy 2-core machine
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plants=st.lists(st.tuples(st.sampled_from(PLACES), st.sampled_from(KINDS)), max_size=3),
       command=st.sampled_from(list(COMMANDS)))
def test_fuzzed_results_folders_keep_the_contract(plants, command, template, tmp_path_factory):
    """Random links, FIFOs, folders and damaged files under a results folder, then a random
    command: exit 0 or 2, never a traceback or a hang; nothing written outside; nothing changed
    on exit 2; every CSV the command wrote parses strictly, without duplicate rows."""
    base = tmp_path_factory.mktemp("fuzz")
    res, out = base / "results", base / "outside"
    shutil.copytree(template, res)
    out.mkdir()
    for rel, kind in plants:
        _plant(res, out, rel, kind)
    before, before_out, csvs = snapshot(res), snapshot(out), _csvs(res)
    signal.alarm(HANG_SECONDS)  # per example: a command still running after this hangs
    r = cli(*[a.format(R=res) for a in COMMANDS[command]], "--results-dir", res)
    signal.alarm(0)
    assert r.exit_code in (0, 2), (plants, command, r.output, r.exception)
    assert "Traceback" not in r.output
    if r.exit_code == 2:
        refused(r)
        assert snapshot(res) == before, (plants, command, "a refusal changed the folder")
    assert snapshot(out) == before_out, (plants, command, "written outside the folder")
    for rel, digest in _csvs(res).items():
        if csvs.get(rel) == digest:
            continue  # untouched: planted damage is the planter's
        path = res / rel
        if rel.startswith("tables/"):
            rows = list(csv.reader(io.StringIO(path.read_text())))
        elif path.name == "metrics.csv":
            rows = [tuple(d.items()) for d in results.read_metrics(path)]
        else:
            rows = [tuple(x) for x in results.load(path.stem, res, required=False).astype(str)
                    .itertuples(index=False)]
        assert len(rows) == len(set(map(tuple, rows))), (plants, command, rel, "duplicate rows")


# ------------------------------------------------- fuzzing hub caches and official .npz files

HUB_REPO = "timm/mixer_b16_224.goog_in21k_ft_in1k"
HUB_NAME = "timm:mixer_b16_224.goog_in21k_ft_in1k"
# What is planted where, in a hub cache entry (models--timm--<arch>.<tag>/) or on the .npz:
# each place with the kinds that do something there
_SPECIAL = ["fifo", "dir", "link-dev-zero", "link-dangling", "empty", "binary"]
HUB_PLANTS = [(place, kind) for place, kinds in {
    "refs/main": _SPECIAL + ["sparse-3GB", "flip-a-byte"],
    "refs": ["fifo", "empty", "link-dangling"],
    "snapshots/{c}": ["fifo", "empty", "link-dev-zero"],
    "snapshots/{c}/model.safetensors": _SPECIAL + ["other-model"],
    "blob": _SPECIAL + ["truncated", "flip-a-byte", "other-model", "sparse-3GB"],
    "snapshots/{c}/config.json": _SPECIAL,
    # (a changed value in an .npz is another valid .npz: only damage is planted there)
    "npz": _SPECIAL + ["truncated", "nan-values", "header-lie", "sparse-3GB"],
}.items() for kind in kinds]
# the places whose damage a command must notice: everything it reads its weights through
WEIGHT_PLACES = {"timm": {"refs/main", "refs", "snapshots/{c}", "snapshots/{c}/model.safetensors",
                          "blob"}, "npz": {"npz"}}
HUB_COMMANDS = {
    "evaluate-timm": ["evaluate", "--dataset", "synthetic", "--device", "cpu", "--checkpoint",
                      HUB_NAME],
    "finetune-timm": ["finetune", "--dataset", "synthetic", "--device", "cpu", "--steps", "1",
                      "--set", "optim.warmup_steps=0", "--set", "data.batch_size=50", "--init",
                      HUB_NAME],
    "evaluate-npz": ["evaluate", "--dataset", "synthetic", "--device", "cpu", "--checkpoint",
                     "{N}"],
    "finetune-npz": ["finetune", "--dataset", "synthetic", "--device", "cpu", "--steps", "1",
                     "--set", "optim.warmup_steps=0", "--set", "data.batch_size=50", "--init",
                     "{N}"],
}


@pytest.fixture(scope="module")
def weights_template(tmp_path_factory):
    """A hub cache holding a tiny timm Mixer under a released name, another Mixer's bytes to
    swap in, and an official-layout .npz."""
    import torch
    from test_inputs import _npz
    from test_weights import hub_cache, tiny_timm_mixer

    base = tmp_path_factory.mktemp("weights-template")
    hub_cache(base / "hf", HUB_REPO, tiny_timm_mixer())
    from safetensors.torch import save_file

    other = tiny_timm_mixer(seed=1)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, base / "other.safetensors")
    _npz(base / "w.npz")
    torch.manual_seed(0)
    return base


def _entry(hf: Path) -> Path:
    return hf / "hub" / f"models--{HUB_REPO.replace('/', '--')}"


def _plant_weights(base: Path, place: str, kind: str) -> None:
    import numpy as np

    entry = _entry(base / "hf")
    ref = entry / "refs" / "main"
    commit = ""
    if ref.is_file() and not ref.is_symlink():
        with open(ref, "rb") as fh:  # bounded: an earlier plant may have made it 3 GB
            commit = fh.read(64).decode(errors="replace").strip()
    if place == "npz":
        p = base / "w.npz"
    elif place == "blob":
        snap_file = entry / "snapshots" / commit / "model.safetensors"
        if not commit or not snap_file.is_symlink():
            return
        p = snap_file.resolve()
    else:
        p = entry / place.format(c=commit)
    if not os.path.lexists(p):
        return
    if kind in ("truncated", "flip-a-byte", "other-model", "nan-values", "header-lie", "sparse-3GB"):
        if not p.is_file() or p.is_symlink() and place != "snapshots/{c}/model.safetensors":
            return
        real = p.resolve()
        size = real.stat().st_size
        if kind == "truncated":
            os.truncate(real, size // 2)
        elif kind == "flip-a-byte" and size:
            with open(real, "r+b") as fh:
                fh.seek(size - 1)
                last = fh.read(1)
                fh.seek(size - 1)
                fh.write(bytes([last[0] ^ 1]))
        elif kind == "sparse-3GB":
            with open(real, "r+b") as fh:
                fh.truncate(3 * 2**30)
        elif kind == "other-model" and real.suffix != ".npz":
            shutil.copy(base / "other.safetensors", real)
        elif kind == "nan-values" and place == "npz" and size < 2**20:
            try:
                arrays = dict(np.load(real))
            except Exception:  # noqa: BLE001 - damaged by an earlier plant already
                return
            arrays["stem/kernel"] = np.full_like(arrays["stem/kernel"], np.nan)
            np.savez(real, **arrays)
        elif kind == "header-lie" and place == "npz" and size < 2**20:
            import zipfile

            from numpy.lib import format as npy

            try:
                arrays = dict(np.load(real))
            except Exception:  # noqa: BLE001 - damaged by an earlier plant already
                return
            with zipfile.ZipFile(real, "w") as z:
                for k, v in arrays.items():
                    buf = io.BytesIO()
                    shape = (2**40,) if k == "stem/kernel" else v.shape
                    npy.write_array_header_1_0(buf, {"descr": v.dtype.str, "fortran_order": False,
                                                     "shape": shape})
                    z.writestr(k + ".npy", buf.getvalue() + v.tobytes())
        return
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dir":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "binary":
        p.write_bytes(bytes(range(256)) * 4)
    elif kind == "link-dev-zero":
        p.symlink_to("/dev/zero")
    elif kind == "link-dangling":
        p.symlink_to(base / "nowhere")


@pytest.mark.slow  # 30 commands end to end: about a minute on a busy 2-core machine
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plants=st.lists(st.sampled_from(HUB_PLANTS), max_size=3),
       command=st.sampled_from(list(HUB_COMMANDS)))
@example(plants=[("blob", "other-model")], command="evaluate-timm")  # the reviewer's cases
@example(plants=[("blob", "flip-a-byte")], command="finetune-timm")
@example(plants=[("refs/main", "sparse-3GB")], command="evaluate-timm")
@example(plants=[("npz", "header-lie")], command="evaluate-npz")
@example(plants=[("npz", "fifo")], command="finetune-npz")
@example(plants=[("npz", "nan-values")], command="finetune-npz")
def test_fuzzed_hub_caches_and_npz_files_keep_the_contract(plants, command, weights_template,
                                                           tmp_path_factory):
    """Random FIFOs, links, folders, damaged or swapped bytes in a hub cache entry and an
    official .npz, then a command that reads them: exit 0 or 2, never a traceback or a hang;
    the cache and the .npz are never written; the results folder is unchanged on exit 2; and
    weights whose bytes were changed are never used (exit 0 only from intact weights)."""
    base = tmp_path_factory.mktemp("fuzz-weights")
    shutil.copytree(weights_template, base, dirs_exist_ok=True, symlinks=True)
    res = base / "results"
    for place, kind in plants:
        _plant_weights(base, place, kind)
    before_hf, before_npz = snapshot(base / "hf"), snapshot_npz(base)
    signal.alarm(HANG_SECONDS)
    r = cli(*[a.format(N=base / "w.npz") for a in HUB_COMMANDS[command]], "--results-dir", res,
            env={"HF_HOME": str(base / "hf"), "HF_HUB_CACHE": None})
    signal.alarm(0)
    assert r.exit_code in (0, 2), (plants, command, r.output, r.exception)
    assert "Traceback" not in r.output, (plants, command, r.output)
    used = "npz" if command.endswith("npz") else "timm"
    if any(place in WEIGHT_PLACES[used] for place, _ in plants):
        assert r.exit_code == 2, (plants, command, "damaged weights were used", r.output)
    if r.exit_code == 2:
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert lines[-1].startswith("error: ") and sum(
            line.startswith("error: ") for line in lines) == 1, (plants, command, r.output)
        assert not (res / "runs").exists() or not any((res / "runs").iterdir()), (plants, command)
    assert (snapshot(base / "hf"), snapshot_npz(base)) == (before_hf, before_npz)


def snapshot_npz(base: Path) -> str:
    p = base / "w.npz"
    st = os.lstat(p) if os.path.lexists(p) else None
    if st is None or not stat.S_ISREG(st.st_mode):
        return f"special:{st and stat.S_IFMT(st.st_mode)}"
    return digest(p)
