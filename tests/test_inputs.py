"""Inputs a user or a downloaded file hands mixerbench: datasets, caches, devices, weights,
model options, labels files and tracker servers (CPU, offline).

The contract for each: exit status 2 and one sentence (no traceback, no hang), or the work
done right. Every dataset here is a few images written by the test. Cases that used to hang
run in a child process with a deadline, so a regression fails instead of stalling the suite.
Filesystem cases that need a tmpfs (read-only HOME, full cache disk) run as root, as in CI.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, cli, interrupted_run, run

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
# conftest's tiny pretrain without its dataset (each case names its own), one step
PRETRAIN = ["pretrain", "--preset", "smoke", "--img-size", "32", *TINY_MODEL[2:], "--steps", "1"]


def _one_error(text: str) -> str:
    """The refusal in `text`: one `error:` line, the last, no traceback, no raw warning (the
    lines before it are the command's own progress lines for work done before the refusal)."""
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in text and "Warning:" not in text and "warn(" not in text, text
    assert len(errors) == 1 and lines[-1] == errors[0], text
    return errors[0]


def refusal(r) -> str:
    """The one sentence of a refusal (exit 2) by the command run in this process; unlike
    conftest's `refused`, progress lines of work done before it may precede it."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    return _one_error(r.output)


def child_refused(args, env, timeout=90) -> str:
    """`refusal` for the command run in a child process with a deadline (cases that used to hang)."""
    proc = run(args, env, timeout)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    return _one_error(proc.stdout + proc.stderr)


def png(color=(0, 0, 0), size=8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none (what a decompression bomb
    looks like before it is decoded: Pillow reads the size from this header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def image_folder(root: Path, layout: dict[str, list[str]]) -> Path:
    """`layout` maps a folder (relative to root) to image file names in it."""
    for i, (folder, names) in enumerate(layout.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / folder / name).write_bytes(png((40 * i % 256, 0, 0)))
    return root


def parquet(path: Path, images: list, labels: list) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": images, "label": labels}), path / "train-00000-of-00001.parquet")
    return path


def pretrain(dataset, results: Path, *extra, env=None):
    return cli(*PRETRAIN, "--dataset", dataset, "--results-dir", results, *extra, env=env)


# ------------------------------------------------------------------------ damaged datasets


def _garbage_parquet(tmp):
    (tmp / "garbage.parquet").write_bytes(b"not a parquet file\x00\x01")
    return tmp / "garbage.parquet"


def _garbage_dataset_dict(tmp):
    (tmp / "dd").mkdir()
    (tmp / "dd" / "dataset_dict.json").write_text("{garbage")
    return tmp / "dd"


def _only_state_json(tmp):
    (tmp / "st").mkdir()
    (tmp / "st" / "state.json").write_text("{}")
    return tmp / "st"


def _label_lists(tmp):
    return parquet(tmp / "lists", [{"bytes": png(), "path": None}] * 4, [[0], [1], [0], [1]])


def _label_of_a_billion(tmp):
    return parquet(tmp / "billion", [{"bytes": png(), "path": None}] * 4, [0, 10**9, 0, 1])


def _root_of_the_filesystem(tmp):
    return "/"


def _loose_test_images(tmp):  # train/<class>/ and loose test/*.png: once a "train vs test" classifier
    return image_folder(tmp / "loose", {"train/ant": ["0.png", "1.png"], "train/bee": ["0.png", "1.png"],
                                        "test": ["0.png", "1.png"]})


def _images_beside_split_folders(tmp):
    return image_folder(tmp / "beside", {"train/ant": ["0.png"], "train/bee": ["0.png"],
                                         "test/ant": ["0.png"], "test/bee": ["0.png"], ".": ["x.png"]})


def _class_folders_beside_split_folders(tmp):
    return image_folder(tmp / "mixed", {"train/ant": ["0.png"], "train/bee": ["0.png"],
                                        "cat": ["0.png"]})


def _bomb_pngs(tmp):  # four 9,500 px PNGs (headers only: Pillow refuses them by their size)
    for cls in ("ant", "bee"):
        (tmp / "bomb" / cls).mkdir(parents=True)
        for i in range(2):
            (tmp / "bomb" / cls / f"{i}.png").write_bytes(png_header(9500, 9500))
    return tmp / "bomb"


DATASETS = {
    "garbage-parquet": (_garbage_parquet, "not a dataset mixerbench can read"),
    "garbage-dataset-dict-json": (_garbage_dataset_dict, "not a dataset mixerbench can read"),
    "folder-with-only-state-json": (_only_state_json, "not a dataset mixerbench can read"),
    "label-column-of-lists": (_label_lists, "holds lists"),
    "label-of-a-billion-without-class-list": (_label_of_a_billion, "label 1,000,000,000"),
    "the-filesystem-root": (_root_of_the_filesystem, "root of the file system"),
    "loose-test-images-beside-train-classes": (_loose_test_images, "outside class folders"),
    "images-beside-split-folders": (_images_beside_split_folders, "outside class folders"),
    "class-folders-beside-split-folders": (_class_folders_beside_split_folders, "mixes split folders"),
    "four-9500-px-pngs": (_bomb_pngs, "9,500x9,500 pixels"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(DATASETS))
def test_a_damaged_or_ambiguous_dataset_is_one_sentence(case, tmp_path):
    make, expected = DATASETS[case]
    start = time.monotonic()
    line = refusal(pretrain(make(tmp_path), tmp_path / "results"))
    assert expected in line, line
    assert "Warning" not in line  # Pillow's raw DecompressionBombWarning is not printed
    assert not (tmp_path / "results").exists()  # refused before anything was written
    assert time.monotonic() - start < 60  # `/` is looked at, not walked


@pytest.mark.timeout(120)
def test_an_image_linked_to_a_fifo_is_refused_without_blocking(tmp_path, child_env):
    ds = image_folder(tmp_path / "fifo", {"ant": ["0.png", "1.png"], "bee": ["0.png"]})
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "pipe", ds / "bee" / "1.png")
    line = child_refused([*PRETRAIN, "--dataset", ds, "--results-dir", tmp_path / "r"], child_env)
    assert "FIFO" in line and "1.png" in line


@pytest.mark.timeout(120)
def test_paths_named_inside_a_parquet_file_are_never_opened(tmp_path, child_env):
    """Cells without bytes that name /dev/zero, a FIFO and a private file: a data file never
    chooses what this machine reads (this hung, reading /dev/zero without end)."""
    os.mkfifo(tmp_path / "pipe")
    secret = tmp_path / "secret.png"
    secret.write_bytes(png((255, 0, 0)))
    cells = [{"bytes": None, "path": p} for p in ("/dev/zero", str(tmp_path / "pipe"), str(secret), "/etc/passwd")]
    ds = parquet(tmp_path / "outside", cells, [0, 1, 0, 1])
    line = child_refused([*PRETRAIN, "--dataset", ds, "--results-dir", tmp_path / "r"], child_env)
    assert "never opens a path named inside a data file" in line and "/dev/zero" in line
    # a column of plain path strings is refused the same way
    ds2 = parquet(tmp_path / "strings", [{"bytes": png(), "path": None}] * 4, [0, 1, 0, 1])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": ["/dev/zero"] * 4, "label": [0, 1, 0, 1]}),
                   ds2 / "train-00000-of-00001.parquet")
    assert "never opens a path" in refusal(pretrain(ds2, tmp_path / "r2"))


def test_a_huge_folder_is_looked_at_not_walked(tmp_path, monkeypatch):
    from mixerbench.data import get_dataset, sources
    from mixerbench.errors import UserError

    ds = image_folder(tmp_path / "huge", {f"c{i}": ["0.png", "1.png"] for i in range(20)})
    monkeypatch.setattr(sources, "SCAN_ENTRIES", 25)  # 2,000,000 in use: a tree is not walked past it
    with pytest.raises(UserError, match="more than 25 files and folders"):
        get_dataset(str(ds), cache_dir=tmp_path / "c")
    deep = image_folder(tmp_path / "deep", {"a/b/c/d": ["0.png"]})  # deeper than any layout
    with pytest.raises(UserError, match="folder inside class folder"):
        get_dataset(str(deep), cache_dir=tmp_path / "c")


def test_split_folders_are_splits_and_class_folders_are_classes(tmp_path):
    from mixerbench.data import get_dataset

    ds = image_folder(tmp_path / "ok", {"train/ant": ["0.png", "1.png"], "train/bee": ["0.png", "1.png"],
                                        "test/ant": ["0.png"], "test/bee": ["0.png"]})
    (ds / "README.md").write_text("notes beside the splits are not images")
    train = get_dataset(str(ds), "train", cache_dir=tmp_path / "c")
    test = get_dataset(str(ds), "test", cache_dir=tmp_path / "c")
    assert train.class_names == test.class_names == ["ant", "bee"]
    assert train.labels.tolist() == [0, 0, 1, 1] and test.labels.tolist() == [0, 1]


# ------------------------------------------------------------------------ caches and devices


def test_a_cache_that_is_dev_null_is_one_sentence(tmp_path):
    line = refusal(pretrain("synthetic", tmp_path / "r", env={"MIXERBENCH_CACHE": "/dev/null"}))
    assert "MIXERBENCH_CACHE" in line and "/dev/null" in line


def test_a_read_only_home_is_one_sentence(tmp_path, tmpfs):
    home = tmpfs(tmp_path / "home", "ro,size=1m")
    line = refusal(pretrain("synthetic", tmp_path / "r", env={"HOME": str(home), "MIXERBENCH_CACHE": None}))
    assert "read-only" in line and "MIXERBENCH_CACHE" in line


def test_a_full_cache_disk_is_one_sentence_and_leaves_no_partial_file(tmp_path, tmpfs):
    cache = tmpfs(tmp_path / "cache", "size=64k")
    line = refusal(pretrain("synthetic", tmp_path / "r", env={"MIXERBENCH_CACHE": str(cache)}))
    assert "no space left" in line
    assert [p for p in cache.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("device", ["cpux", "cuda:x", "gpu", "cuda:"])
def test_an_unknown_device_is_one_sentence(tmp_path, device):
    args = [a if a != "cpu" else device for a in PRETRAIN]
    line = refusal(cli(*args, "--dataset", "synthetic", "--results-dir", tmp_path))
    assert "Unknown device" in line


def test_a_permuted_tensor_cache_is_decoded_again(tmp_path):
    """The cache carries its source's fingerprint, and a local copy's labels are checked
    against the source: a cache file whose labels were permuted is rebuilt, not trusted."""
    from mixerbench.data import get_dataset

    ds = image_folder(tmp_path / "ds", {"ant": ["0.png", "1.png", "2.png"], "bee": ["0.png", "1.png"]})
    cache = tmp_path / "c"
    first = get_dataset(str(ds), cache_dir=cache)
    (path,) = (cache / "tensors").glob("*.pt")
    for refingerprint in (False, True):
        payload = torch.load(path, weights_only=True)
        payload["labels"] = payload["labels"].flip(0)
        if refingerprint:  # forged consistently: still caught by the source's labels
            from mixerbench.data import decode
            from mixerbench.data.sources import local_reader

            key = local_reader(ds).cache_key()
            payload["fingerprint"] = decode.cache_fingerprint(key, payload["labels"].numpy(),
                                                              payload["class_names"], payload["images"].shape)
        torch.save(payload, path)
        again = get_dataset(str(ds), cache_dir=cache)
        assert again.labels.tolist() == first.labels.tolist() == [0, 0, 0, 1, 1]
        assert torch.load(path, weights_only=True)["labels"].tolist() == [0, 0, 0, 1, 1]  # rewritten


def test_an_embedded_cache_with_a_wrong_fingerprint_is_decoded_again(tmp_path):
    from mixerbench.data import get_dataset

    first = get_dataset("synthetic", "test", cache_dir=tmp_path)
    (path,) = [p for p in (tmp_path / "tensors").glob("*.pt") if "-test-" in p.name]
    payload = torch.load(path, weights_only=True)
    payload["labels"] = payload["labels"].roll(1)
    torch.save(payload, path)
    assert torch.equal(get_dataset("synthetic", "test", cache_dir=tmp_path).labels, first.labels)


# ------------------------------------------------------------------------ weights and costs


def _npz(path: Path, *, width=8, tokens=(64, 4), channels=None) -> Path:
    """A vit_jax Mixer .npz of one block (patch 4, 32 px), with shapes that can be broken."""
    f32 = np.float32
    channels = channels or (width, 16)
    arrays = {"stem/kernel": np.zeros((4, 4, 3, width), f32), "stem/bias": np.zeros(width, f32),
              "pre_head_layer_norm/scale": np.ones(width, f32), "pre_head_layer_norm/bias": np.zeros(width, f32),
              "head/kernel": np.zeros((width, 10), f32), "head/bias": np.zeros(10, f32)}
    p = "MixerBlock_0/"
    for ln in ("LayerNorm_0", "LayerNorm_1"):
        arrays[p + ln + "/scale"], arrays[p + ln + "/bias"] = np.ones(width, f32), np.zeros(width, f32)
    for mix, (a, b) in (("token_mixing", tokens), ("channel_mixing", channels)):
        arrays[f"{p}{mix}/Dense_0/kernel"], arrays[f"{p}{mix}/Dense_0/bias"] = np.zeros((a, b), f32), np.zeros(b, f32)
        arrays[f"{p}{mix}/Dense_1/kernel"], arrays[f"{p}{mix}/Dense_1/bias"] = np.zeros((b, a), f32), np.zeros(a, f32)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("shape", [dict(width=0), dict(tokens=(0, 4)), dict(tokens=(2, 0))],
                         ids=["width-0", "token-kernel-0x4", "token-kernel-2x0"])
def test_an_npz_with_impossible_shapes_is_one_sentence(tmp_path, shape):
    npz = _npz(tmp_path / "w.npz", **shape)
    line = refusal(cli("finetune", "--dataset", "synthetic", "--steps", "1", "--device", "cpu",
                       "--set", "optim.warmup_steps=0", "--init", npz, "--results-dir", tmp_path / "r"))
    assert "shape" in line and str(npz) in line


def test_a_well_formed_npz_still_loads(tmp_path):
    from mixerbench.models.weights import load_model

    model, rec = load_model(str(_npz(tmp_path / "w.npz")))
    assert rec["img_size"] == 32 and rec["patch_size"] == 4 and rec["overrides"]["width"] == 8


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory):
    """A run of 4 steps killed after its step-1 checkpoint (its state is planted on below)."""
    base = tmp_path_factory.mktemp("unfinished") / "results"
    return base, interrupted_run(base, steps=4, ckpt_every=1, kill_at=2)


def test_a_planted_infinite_training_time_is_refused(unfinished, tmp_path):
    import shutil

    from mixerbench.errors import UserError
    from mixerbench.train import train

    base, cfg = unfinished
    res = tmp_path / "results"
    shutil.copytree(base, res)
    state = res / "runs" / "unf" / "state-last.pt"
    torch.save(dict(torch.load(state, weights_only=True), train_seconds=float("inf")), state)
    with pytest.raises(UserError, match="train_seconds inf") as err:
        train(cfg, res)
    assert "\n" not in str(err.value)
    assert not (res / "accuracy.csv").exists() or "inf" not in (res / "accuracy.csv").read_text()


def test_an_infinite_cost_in_a_summary_is_refused(checkpoint, tmp_path):
    import shutil

    res = tmp_path / "results"
    shutil.copytree(checkpoint.parents[1], res)
    summary = res / "runs" / "fin" / "summary.json"
    summary.write_text(json.dumps(dict(json.loads(summary.read_text()), train_seconds=float("inf"))))
    before = (res / "accuracy.csv").read_text()
    line = refusal(cli(*FIN, "--results-dir", res))
    assert "summary.json" in line
    assert (res / "accuracy.csv").read_text() == before


def test_an_infinite_cost_cell_is_left_empty_in_tables():
    import pandas as pd

    from mixerbench.report.tables import device_hours

    df = pd.DataFrame({"train_seconds": ["3600", "inf", "-inf"], "num_devices": [1, 1, 1]})
    assert device_hours(df).tolist()[0] == 1.0 and device_hours(df).isna().tolist() == [False, True, True]


# ------------------------------------------------------------------------ options and resources


OPTIONS = ["mlp_ratio=NaN", "num_heads=0", "drop_rate=5", "global_pool=foo", "embed_dim=-8",
           "in_chans=0", "in_chans=1", "mlp_ratio=Infinity"]


@pytest.mark.parametrize("option", OPTIONS)
def test_model_options_are_checked_on_the_meta_device_before_any_work(option, tmp_path, monkeypatch):
    from mixerbench import data

    def no_data(*a, **k):
        raise AssertionError("a dataset was read before the options were checked")

    monkeypatch.setattr(data, "get_dataset", no_data)
    line = refusal(cli(*PRETRAIN, "--model", "vit-t4", "--dataset", "synthetic",
                       "--set", f"model.options.{option}", "--results-dir", tmp_path / "r"))
    assert option.split("=")[0] in line
    assert not (tmp_path / "r").exists()


def _peak_rss_child(args, env, timeout=120) -> tuple[int, str, float]:
    """(exit code, output, peak resident GiB) of the command in a child process. The peak is
    the child's own VmHWM: getrusage's ru_maxrss keeps the high-water mark of the process it
    was forked from across exec (here pytest's, GiBs after a long session)."""
    code = ("import re, sys\n"
            "from mixerbench.cli import app\n"
            "try:\n    app(sys.argv[1:], prog_name='mixerbench')\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "hwm = re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "sys.stderr.write(f'\\nRSS {hwm}\\n')\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code, "--quiet", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    rss = int(out.rsplit("RSS ", 1)[1].split()[0]) / 2**20
    return proc.returncode, out.rsplit("\nRSS ", 1)[0], rss


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", ["pretrain", "bench"])
def test_a_4096_px_input_is_refused_before_allocating(command, tmp_path, child_env):
    if command == "pretrain":
        args = ["pretrain", "--preset", "smoke", "--model", "vit-t4", "--img-size", "4096", "--device", "cpu",
                "--dataset", "synthetic", "--steps", "1", "--results-dir", tmp_path]
    else:
        args = ["bench", "-m", "vit-t4", "--img-size", "4096", "--device", "cpu", "--mode", "train",
                "-b", "1", "--results-dir", tmp_path]
    code, out, rss = _peak_rss_child(args, child_env)
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "GiB" in lines[0], out
    assert rss < 2.0, f"peak RSS {rss:.2f} GiB: something was allocated before the refusal"
    assert not (tmp_path / "throughput.csv").exists()


def test_bench_at_img_size_0_is_refused_not_measured_at_the_default(tmp_path):
    line = refusal(cli("bench", "-m", "mixer-t4", "--img-size", "0", "--device", "cpu", "--results-dir", tmp_path))
    assert "--img-size 0" in line
    assert not (tmp_path / "throughput.csv").exists()


FIN = ["pretrain", "--preset", "smoke", "--img-size", "32", "--device", "cpu", "--set", "model.width=16",
       "--set", "model.depth=1", "--set", "data.batch_size=50", "--steps", "1", "--dataset", "synthetic",
       "--run-name", "fin"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A finished 10-class run (runs/fin) to evaluate with a labels file or plant on."""
    base = tmp_path_factory.mktemp("ckpt") / "results"
    r = cli(*FIN, "--results-dir", base)
    assert r.exit_code == 0, r.output
    return base / "runs" / "fin"


def _deep(path):
    path.write_text("[" * 100_000 + "]" * 100_000)


REAL_FILES = {
    "100k-deep-json": _deep,
    "strings": lambda p: p.write_text('[["a"], ["b"]]'),
    "1e400": lambda p: p.write_text("[[1e400]]"),
    "negative-and-past-1000": lambda p: p.write_text("[[-1], [1000]]"),
    "booleans": lambda p: p.write_text("[[true]]"),
    "an-object": lambda p: p.write_text('{"0": [1]}'),
    "empty-list": lambda p: p.write_text("[]"),
    "fifo": lambda p: os.mkfifo(p),
    "dev-zero": lambda p: os.symlink("/dev/zero", p),
    "not-json": lambda p: p.write_bytes(b"\xff\xfe garbage"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(REAL_FILES))
def test_a_bad_real_labels_file_is_one_sentence_before_any_work(case, checkpoint, tmp_path):
    path = tmp_path / "real.json"
    REAL_FILES[case](path)
    line = refusal(cli("evaluate", "--checkpoint", checkpoint, "--dataset", "synthetic", "--device", "cpu",
                       "--real-labels", path, "--results-dir", checkpoint.parents[1]))
    assert "real.json" in line or "ReaL" in line, line


@pytest.mark.parametrize("option,value", [("--images", "1e12"), ("--images", "0"), ("--images", "-1"),
                                          ("--repeats", "0"), ("--repeats", "1000"), ("--img-size", "0")])
def test_datasets_bench_sizes_are_bounded(option, value, tmp_path):
    assert option in refusal(cli("datasets", "synthetic", "--bench", option, value, "--device", "cpu",
                                 "--results-dir", tmp_path))


# ------------------------------------------------------------------------ tracker servers


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound and closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_an_unreachable_tracker_server_costs_one_warning_within_seconds(tracker, tmp_path):
    pytest.importorskip(tracker)
    from mixerbench import trackers

    url = f"http://127.0.0.1:{_closed_port()}"
    env = ({"MLFLOW_TRACKING_URI": url} if tracker == "mlflow"
           else {"WANDB_MODE": "online", "WANDB_BASE_URL": url})
    warnings = []
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        start = time.monotonic()
        t = trackers.open_trackers([tracker], tmp_path, "probe", on_warning=warnings.append)
        elapsed = time.monotonic() - start
        t.close()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert len(warnings) == 1 and "not reachable" in warnings[0], warnings
    assert elapsed < 30, f"{elapsed:.0f} s to give up on {url}"  # minutes before (retries)
    r = cli(*PRETRAIN, "--dataset", "synthetic", "--results-dir", tmp_path / "r",
            "--tracker", tracker, env=env)
    assert r.exit_code == 0, r.output
    assert [line.startswith("warning:") for line in r.output.splitlines()].count(True) == 1, r.output
