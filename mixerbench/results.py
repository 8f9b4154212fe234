"""Results on disk: every CSV schema declared once, atomic locked appends, provenance.

Layout (design.md section 5): append-only tidy CSVs under the results directory
(`accuracy.csv`, `fewshot.csv`, `throughput.csv`, `shuffle.csv`, `scaling.csv`), raw numbers
(percent as 0-100 floats named `top1`), one observation per row, and the same provenance
columns on every row. Run directories live in `<results>/runs/<run_id>/`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import fcntl
import io
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mixerbench.errors import UserError

PROVENANCE = (
    "git_sha", "mixerbench_version", "torch_version", "timm_version", "device_name",
    "num_devices", "dtype", "compiled", "seed", "timestamp",
)

# One place declares each CSV's columns; writers and readers both use these tuples.
SCHEMAS: dict[str, tuple[str, ...]] = {
    "accuracy": (
        "run_id", "model", "dataset", "split", "img_size", "epochs", "steps", "top1", "top5",
        "loss", "train_seconds", "device_hours", "train_flops", "init", "kind", "experiment",
    ) + PROVENANCE,
    "fewshot": (
        "run_id", "model", "dataset", "upstream", "shots", "l2_reg", "num_seeds", "top1_mean",
        "top1_std", "img_size",
    ) + PROVENANCE,
    # `gmacs`: forward GMACs per image, unrounded (exact MACs / 1e9). `mfu` = achieved_tflops /
    # peak_tflops, `peak_tflops` the datasheet dense peak of the device in the dtype's matmul
    # precision (TF32 for fp32 on CUDA), both empty where no peak is known (CPUs, unlisted GPUs);
    # `matmul_tflops`: dense matmul rate measured in the same run, not an MFU denominator.
    # `bench_id`: shared by the rows of one `bench` call (models measured side by side).
    "throughput": (
        "model", "mode", "batch_size", "img_size", "img_per_sec_mean", "img_per_sec_std",
        "step_ms_median", "repeats", "params", "gmacs", "achieved_tflops", "mfu", "peak_tflops",
        "matmul_tflops", "channels_last", "driver_version", "cuda_version", "bench_id",
    ) + PROVENANCE,
    "shuffle": (
        "run_id", "model", "dataset", "train_shuffle", "eval_shuffle", "metric", "top1",
        "probe_dataset", "img_size",
    ) + PROVENANCE,
    "scaling": (
        "run_id", "model", "dataset", "fraction", "epochs", "steps", "metric", "top1",
        "probe_dataset",
    ) + PROVENANCE,
}

# Which command writes each CSV: named in the message when a reader finds it missing.
PRODUCERS = {
    "accuracy": "mixerbench pretrain / finetune / evaluate / compare",
    "fewshot": "mixerbench evaluate --fewshot 5",
    "throughput": "mixerbench bench --models ...",
    "shuffle": "mixerbench reproduce shuffle",
    "scaling": "mixerbench reproduce data-scaling",
}


def results_dir(path: str | os.PathLike | None = None) -> Path:
    """The results directory: the argument, else $MIXERBENCH_RESULTS, else ./results."""
    return Path(path or os.environ.get("MIXERBENCH_RESULTS") or "results")


# A run directory's name: one path component of safe characters, never hidden, `.` or `..`.
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def check_run_name(name: str) -> str:
    """`name` if it is one safe path component (letters, digits, `.`, `_`, `-`, at most 128
    characters, not starting with a dot), else a UserError: a run name never leaves `runs/`."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        shown = name if len(str(name)) <= 60 else str(name)[:57] + "..."
        raise UserError(f"--run-name '{shown}' is not a plain folder name; use letters, digits, "
                        "'.', '_' and '-' (at most 128, not starting with a dot).")
    return name


def writable_results_dir(path: str | os.PathLike | None = None) -> Path:
    """The results directory, checked before anything is written: a folder (or a path that can
    become one) this process may write; a file, a read-only folder or a symlinked one is a
    UserError. Nothing is created here."""
    root = results_dir(path)
    if root.is_symlink() and not root.is_dir():
        raise UserError(f"The results directory {root} is a broken link; pass --results-dir.")
    if root.exists() and not root.is_dir():
        raise UserError(f"The results directory {root} is a file; pass another --results-dir.")
    probe = root.absolute()
    while not probe.exists() and probe != probe.parent:  # the nearest folder that exists
        probe = probe.parent
    if probe.exists() and (not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK)):
        raise UserError(f"The results directory {root} cannot be written here ({probe} is "
                        "read-only or not a folder); pass another --results-dir.")
    return root


def run_path(root: Path, name: str) -> Path:
    """`<root>/runs/<name>`, refusing a name or a planted `runs` link that would lead outside."""
    check_run_name(name)
    runs = Path(root) / "runs"
    for p in (runs, runs / name):
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            raise UserError(f"{p} is a link or a file, not a run folder mixerbench made; move it "
                            "away or pass another --results-dir.")
    return runs / name


def csv_path(table: str, root: str | os.PathLike | None = None) -> Path:
    if table not in SCHEMAS:
        raise UserError(f"Unknown results table '{table}'; known tables: {', '.join(SCHEMAS)}.")
    return results_dir(root) / f"{table}.csv"


@contextmanager
def locked(path: Path):
    """An exclusive advisory lock on `<path>.lock`, held across read-modify-write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if value == value else ""
    return str(value)


# Per-run training curve, `runs/<run_id>/metrics.csv`, one row per evaluation (design.md 5).
METRICS = ("step", "epoch", "train_loss", "eval_loss", "top1", "top5", "lr", "img_per_sec",
           "elapsed_s")


def append_row(table: str, row: Mapping[str, Any], root: str | os.PathLike | None = None) -> Path:
    """Append one row to `<root>/<table>.csv` (schema `SCHEMAS[table]`), atomically and locked."""
    path = csv_path(table, root)  # raises on an unknown table
    append_to(path, SCHEMAS[table], row)
    return path


def append_to(path: str | os.PathLike, columns: tuple[str, ...], row: Mapping[str, Any]) -> None:
    """Append one row to the CSV at `path` with the given columns, atomically and under a lock.

    The whole file is rewritten to a temporary file, fsynced and renamed over the old one while
    the lock is held, so a reader never sees a torn row and concurrent writers never lose one.
    Keys outside the columns are an error (a typo would silently drop a number otherwise).
    """
    unknown = set(row) - set(columns)
    if unknown:
        raise KeyError(f"columns not in the schema of {Path(path).name}: {sorted(unknown)}")
    path = Path(path)
    line = _csv_line([_format(row.get(c)) for c in columns])
    with locked(path):
        old = path.read_text() if path.exists() else ""
        if not old:
            old = _csv_line(columns)
        atomic_write_text(path, old + line)


def _csv_line(cells) -> str:
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow(cells)
    return line.getvalue()


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask can only be read by setting it


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600): keep the mode of the file being replaced, or
        # give a new one the usual umask mode, so results stay readable like any other file
        os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def load(table: str, root: str | os.PathLike | None = None, required: bool = True):
    """Read one results CSV into a DataFrame with the schema's columns.

    A missing or empty file raises `UserError` naming the command that produces it (or returns an
    empty frame when `required` is False).
    """
    import pandas as pd

    path = csv_path(table, root)
    if not path.exists() or path.stat().st_size == 0:
        if required:
            raise UserError(
                f"{path} is missing or empty; run `{PRODUCERS[table]}` first to produce it."
            )
        return pd.DataFrame(columns=list(SCHEMAS[table]))
    df = pd.read_csv(path)
    if df.empty and required:
        raise UserError(f"{path} has no rows; run `{PRODUCERS[table]}` first to produce it.")
    for c in SCHEMAS[table]:
        if c not in df.columns:
            df[c] = pd.NA
    return df


def _git_sha() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
            text=True, timeout=5,
        )
        sha = out.stdout.strip()
        if not sha:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def device_name(device: str | None = None) -> str:
    import platform

    import torch

    dev = torch.device(device) if device else None
    if (dev is None or dev.type == "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev if dev is not None and dev.index is not None else 0)
    proc = platform.processor() or platform.machine()
    return f"cpu ({proc}, {os.cpu_count()} cores)"


def provenance(
    *, device: str | None = None, num_devices: int = 1, dtype: str = "fp32",
    compiled: bool = False, seed: int | None = None,
) -> dict[str, Any]:
    """The provenance columns shared by every row (design.md section 5)."""
    import timm
    import torch

    import mixerbench

    return {
        "git_sha": _git_sha(),
        "mixerbench_version": mixerbench.__version__,
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "device_name": device_name(device),
        "num_devices": num_devices,
        "dtype": dtype,
        "compiled": compiled,
        "seed": seed,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
