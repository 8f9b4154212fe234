"""Results on disk: every CSV schema and column type declared once, strict reads, atomic locked
appends, provenance.

Layout (results/README.md): append-only tidy CSVs under the results directory
(`accuracy.csv`, `fewshot.csv`, `throughput.csv`, `shuffle.csv`, `scaling.csv`), raw numbers
(percent as 0-100 floats named `top1`), one observation per row, and the same provenance
columns on every row. Run directories live in `<results>/runs/<run_id>/`.

Results folders are shared and downloaded, so nothing here guesses at a file it reads back:
`load`, `read_metrics` and `append_to` accept only files some mixerbench version wrote (header,
whole lines, UTF-8 text, cells of their column's type) and raise `DamagedFileError` naming the
file otherwise, changing no byte. `upgrade_file` is the one explicit way to bring an older
file's header up to date.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import io
import os
import re
import stat
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mixerbench.errors import DamagedFileError, UserError
from mixerbench import files
from mixerbench.files import locked
from mixerbench.names import check_run_name

PROVENANCE = (
    "git_sha", "mixerbench_version", "torch_version", "timm_version", "device_name",
    "num_devices", "dtype", "compiled", "seed", "timestamp",
)

# One place declares each CSV's columns; writers and readers both use these tuples.
# `recipe_id` (`config.recipe_id`): everything a row's number depends on but the seed and the
# images it is measured on (`split`); a table averages the rows of one recipe id as seeds and
# never those of two. Empty where no finished run of this version's recording stands behind
# the row (a released checkpoint, a run folder that is gone).
# `pipeline` (accuracy, fewshot, shuffle, avg5, released): the eval crop the images went
# through (`eval-plain`, `eval-resize`, `eval-resmall`, `eval-weights`; a training row's is its
# run's `data.eval_pipeline`, an `evaluate` row's its `--crop`). Empty where no record says
# which (a row an older version wrote): a crop of its own, never taken for another.
SCHEMAS: dict[str, tuple[str, ...]] = {
    "accuracy": (
        "run_id", "recipe_id", "model", "family", "dataset", "split", "pipeline", "img_size",
        "epochs", "steps", "top1", "top5",
        "loss", "train_seconds", "device_hours", "train_flops", "init", "kind", "experiment",
    ) + PROVENANCE,
    # `dataset` / `split`: the images the probe is scored on (`test`, `test[stratified:N]`),
    # `shots_split` the split its shots are drawn from, `pipeline` the eval crop both go through.
    # `steps` (fewshot, shuffle): the training step of the weights measured, as an `evaluate`
    # row of accuracy.csv has it (a finished run's last step; empty for released weights).
    "fewshot": (
        "run_id", "recipe_id", "model", "family", "dataset", "split", "upstream", "shots",
        "shots_split", "l2_reg", "num_seeds", "pipeline", "top1_mean", "top1_std", "img_size",
        "steps",
    ) + PROVENANCE,
    # `gmacs`: forward GMACs per image, unrounded (exact MACs / 1e9). `mfu` = achieved_tflops /
    # peak_tflops, `peak_tflops` the datasheet dense peak of the device in the dtype's matmul
    # precision (TF32 for fp32 on CUDA), both empty where no peak is known (CPUs, unlisted GPUs);
    # `matmul_tflops`: dense matmul rate measured in the same run, not an MFU denominator.
    # `bench_id`: shared by the rows of one `bench` call (models measured side by side).
    # `threads`: the torch threads of the process that timed the row (on a CPU, how many of
    # `device_name`'s cores it used; a one-thread row is not a whole-CPU figure); empty in rows
    # older versions wrote, which did not record it.
    "throughput": (
        "model", "family", "mode", "batch_size", "img_size", "img_per_sec_mean", "img_per_sec_std",
        "step_ms_median", "repeats", "params", "gmacs", "achieved_tflops", "mfu", "peak_tflops",
        "matmul_tflops", "channels_last", "driver_version", "cuda_version", "bench_id", "threads",
    ) + PROVENANCE,
    # shuffle / scaling: `split` the images a row's number is measured on (for a `fewshot<k>`
    # row, those its probe is scored on); a probe's settings as in fewshot.csv.
    "shuffle": (
        "run_id", "recipe_id", "model", "family", "dataset", "split", "train_shuffle",
        "eval_shuffle", "metric", "top1", "probe_dataset", "shots_split", "l2_reg", "num_seeds",
        "pipeline", "img_size", "steps",
    ) + PROVENANCE,
    "scaling": (
        "run_id", "recipe_id", "model", "family", "dataset", "split", "fraction", "epochs",
        "steps", "metric", "top1", "probe_dataset",
    ) + PROVENANCE,
    # `weights_sha256` (released) and `init_sha256` (avg5): the sha256 of the exact weights file
    # a row's model started from (a hub blob checked against its name).
    # `reproduce released`: one released checkpoint (`timm:<arch>.<tag>`) evaluated on ImageNet
    # val, with the paper row it stands for (`paper_name`, `upstream`, `paper_img_size`; the
    # numbers themselves are read from mixerbench/reference when the table is drawn). `top1`:
    # original labels over `n` images; `real_top1`: ReaL over the `real_n` images ReaL labels;
    # `fewshot5_*`: linear 5-shot on ImageNet (train shots, val accuracy), when measured.
    "released": (
        "checkpoint", "weights_sha256", "model", "family", "paper_name", "upstream",
        "paper_img_size", "note",
        "dataset", "split", "img_size", "pipeline", "n", "top1", "top5", "real_top1", "real_n",
        "fewshot5_mean", "fewshot5_std",
    ) + PROVENANCE,
    # The transfer protocol (paper section 3, App. C): one row per fine-tuning run reported on
    # a dataset's test split, after its lr was selected on the stratified minival. `model` is
    # the --init weights' architecture, `upstream` their pre-training dataset, `dataset` the
    # canonical name; `lr_grid` lists `lr=minival top-1` for every lr tried.
    # `budget`: the protocol's (`full`, `smoke`); `pipeline`: the eval crop of the final run;
    # `note`: what the row cannot show (a smoke budget measures no transfer, an lr-grid tie).
    "avg5": (
        "run_id", "recipe_id", "model", "family", "init", "init_sha256", "upstream", "budget",
        "dataset",
        "split", "resolution", "img_size", "pipeline", "steps", "lr", "lr_grid", "minival_top1",
        "top1", "note",
    ) + PROVENANCE,
    # `datasets DIR --bench`: one row per input pipeline (`data.inputbench.BENCH_PIPELINES`) of one
    # call (`bench_id`), all measured in the same interleaved rounds on the same `images` images.
    # `img_per_cpu_sec`: images per CPU-second of the process and its loader workers (median,
    # min, max over `repeats` rounds), i.e. img/s per core; `img_per_sec` wall-clock (median);
    # `timm_ratio`: img_per_cpu_sec over timm's create_loader's in the same round.
    "inputs": (
        "bench_id", "dataset", "pipeline", "images", "img_size", "batch_size", "workers",
        "randaug_m", "mixup_p", "img_per_sec", "img_per_cpu_sec", "img_per_cpu_sec_min",
        "img_per_cpu_sec_max", "timm_ratio", "timm_ratio_min", "timm_ratio_max", "repeats",
    ) + PROVENANCE,
}

# Which command writes each CSV: named in the message when a reader finds it missing.
PRODUCERS = {
    "accuracy": "mixerbench pretrain / finetune / evaluate / compare",
    "fewshot": "mixerbench evaluate --fewshot 5",
    "throughput": "mixerbench bench --models ...",
    "shuffle": "mixerbench reproduce shuffle",
    "scaling": "mixerbench reproduce data-scaling",
    "released": "mixerbench reproduce released",
    "avg5": "mixerbench reproduce avg5 --init SRC",
    "inputs": "mixerbench datasets DIR --bench",
}


def results_dir(path: str | os.PathLike | None = None) -> Path:
    """The results directory: the argument, else $MIXERBENCH_RESULTS, else ./results; from here
    on every path below it is read and written through `files` (no link followed, nothing but
    regular files and folders). An empty name (an unset shell variable) is refused rather than
    taken for the current folder."""
    if path is None:
        path = os.environ.get("MIXERBENCH_RESULTS")
        if path is not None and not path.strip():
            raise UserError("MIXERBENCH_RESULTS is set but empty (an unset shell variable?); "
                            "set it to a folder, or unset it to use ./results.")
    elif not str(path).strip():
        raise UserError("--results-dir is empty (an unset shell variable?); pass a folder.")
    return files.confine(Path(path or "results"))


def writable_results_dir(path: str | os.PathLike | None = None) -> Path:
    """The results directory, checked before anything is written: a folder (or a path that can
    become one) this process may write; a file, a read-only folder or a symlinked one is a
    UserError. Nothing is created here."""
    root = results_dir(path)
    _check_name(root)
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


def _check_name(root: Path) -> None:
    """A results folder whose name is not UTF-8 cannot be named in a CSV or a message."""
    try:
        str(root).encode()
    except UnicodeEncodeError:
        raise UserError(f"The results directory {printable(str(root))} has a name that is not "
                        "UTF-8; rename it or pass another --results-dir.") from None


def printable(text: str) -> str:
    """`text` with bytes that are not UTF-8 (a file name in another encoding) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def run_path(root: Path, name: str) -> Path:
    """`<root>/runs/<name>`, refusing a name or a planted `runs` link that would lead outside."""
    check_run_name(name)
    runs = Path(root) / "runs"
    for p in (runs, runs / name):
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            raise UserError(f"{p} is a link or a file, not a run folder mixerbench made; move it "
                            "away or pass another --results-dir.")
    run = files.open_folder(runs / name)  # nor a link or file further up
    if run is not None:
        # what the run's files are (locks, metrics, configs) is known before any work: a link,
        # FIFO or device among them is refused now, not hours later when it is written. Listed
        # and looked at through the folder's descriptor: the folder checked is the one listed.
        with run:
            for entry in run.names():
                st = run.lstat(entry)
                if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                    run.check(entry, "dir" if entry == "tb" else "file")
    return runs / name


def csv_path(table: str, root: str | os.PathLike | None = None) -> Path:
    if table not in SCHEMAS:
        raise UserError(f"Unknown results table '{table}'; known tables: {', '.join(SCHEMAS)}.")
    return results_dir(root) / f"{table}.csv"


# Spreadsheets run a cell that starts with one of these as a formula (=HYPERLINK(...), @SUM,
# +cmd|...). Text cells that would are written behind a single quote, as spreadsheet-safe
# writers do (OWASP "CSV injection"), and `load` takes the quote off again. A cell that already
# starts with a quote gets one more, so every text reads back exactly as it was written; a
# signed number in a text column is left alone (it is a number, not a formula).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def _would_run(text: str) -> bool:
    if not text.startswith(_FORMULA_START):
        return False
    return not (text[0] in "+-" and _NUMBER.fullmatch(text))


def neutral(text: str) -> str:
    """`text` as a CSV cell no spreadsheet runs as a formula (a quote in front when needed)."""
    return "'" + text if _would_run(text) else text


def unneutral(cell: str) -> str:
    """The text `neutral` was given: the inverse of `neutral` on every cell it writes."""
    return cell[1:] if cell.startswith("'") and _would_run(cell[1:]) else cell


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):  # numpy's float64 too, whose repr is "np.float64(82.0)"
        return repr(float(value)) if value == value else ""
    return str(value)


# Per-run training curve, `runs/<run_id>/metrics.csv`, one row per evaluation.
METRICS = ("step", "epoch", "train_loss", "eval_loss", "top1", "top5", "lr", "img_per_sec",
           "elapsed_s")

# The type of every column of every CSV above, declared once: readers check each cell against
# it and writers refuse a value that a reader would refuse later. A column name means the same
# thing in every file it appears in (top1 is always a percentage), so one map serves them all.
NUMBER, TEXT, BOOL = "number", "text", "bool"
COLUMN_TYPES: dict[str, str] = {
    **dict.fromkeys((
        "img_size", "epochs", "steps", "top1", "top5", "loss", "train_seconds", "device_hours",
        "train_flops", "num_devices", "seed", "shots", "l2_reg", "num_seeds", "top1_mean",
        "top1_std", "batch_size", "img_per_sec_mean", "img_per_sec_std", "step_ms_median",
        "repeats", "params", "gmacs", "achieved_tflops", "mfu", "peak_tflops", "fraction",
        "step", "epoch", "train_loss", "eval_loss", "lr", "img_per_sec", "elapsed_s",
        "matmul_tflops", "paper_img_size", "n", "real_top1", "real_n", "fewshot5_mean",
        "fewshot5_std", "minival_top1", "images", "workers", "randaug_m", "mixup_p",
        "img_per_cpu_sec", "img_per_cpu_sec_min", "img_per_cpu_sec_max", "timm_ratio",
        "timm_ratio_min", "timm_ratio_max", "threads",
    ), NUMBER),
    **dict.fromkeys(("compiled", "channels_last"), BOOL),
    **dict.fromkeys((
        "run_id", "recipe_id", "model", "dataset", "split", "init", "kind", "experiment", "git_sha",
        "mixerbench_version", "torch_version", "timm_version", "device_name", "dtype",
        "timestamp", "mode", "driver_version", "cuda_version", "train_shuffle", "eval_shuffle",
        "metric", "upstream", "probe_dataset", "bench_id", "family", "checkpoint",
        "paper_name", "note", "pipeline", "resolution", "lr_grid", "shots_split", "budget",
        "weights_sha256", "init_sha256",
    ), TEXT),
}

# What a cell of each type may hold; an empty cell (no value) is allowed in every column.
# Numbers are what repr(float) / str(int) write, plus nan and inf: ASCII digits only, no
# thousands separators or underscores (float() would accept "1_000" and "١٢"; we do not guess).
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
                     r"|[+-]?(?:inf|infinity|nan)", re.IGNORECASE)
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")  # longer ones are read as floats (int() caps digits)
_BOOLS = {"true": True, "false": False}
# Control characters never occur in a text CSV: finding one means binary bytes (a truncated
# download, a file of another kind saved under this name). Tab, LF and CR are text.
_BINARY = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_INT64 = (-(2**63), 2**63 - 1)


def _valid(kind: str, cell: str) -> bool:
    if cell == "":
        return True
    if kind == NUMBER:
        return _NUMBER.fullmatch(cell) is not None
    if kind == BOOL:
        return cell.lower() in _BOOLS
    return _BINARY.search(cell) is None


def _columns_of(path: Path) -> tuple[str, ...]:
    """The schema a results file has by its name (`<table>.csv` or a run's `metrics.csv`)."""
    if path.name == "metrics.csv":
        return METRICS
    if path.suffix == ".csv" and path.stem in SCHEMAS:
        return SCHEMAS[path.stem]
    raise UserError(f"{path} is not a mixerbench results file; expected metrics.csv or one of "
                    f"{', '.join(t + '.csv' for t in SCHEMAS)}.")


def _upgrade_hint(path: Path) -> str:
    return (f"upgrade it with `mixerbench upgrade --results-dir {path.parent}` (rows are kept, "
            "new columns left empty)")


def upgrade_all(root: str | os.PathLike | None = None,
                fill: Callable[[str, dict], dict] | None = None) -> list[Path]:
    """Rewrite every results CSV under `root` (and every run's metrics.csv) that an older
    mixerbench wrote under today's header; the files rewritten. With `fill`, the empty cells of
    a row that `fill(table, row)` gives a value for (a column an older version did not write,
    worked out from what the row's run recorded) are filled in; no written cell changes. A
    file with columns this version does not know, a damaged one, or a `fill` that raises, is
    refused before anything is rewritten."""
    root = results_dir(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"The results directory {root} is a file; pass another --results-dir.")
    paths = [csv_path(t, root) for t in SCHEMAS] + sorted((root / "runs").glob("*/metrics.csv"))
    fills = {}
    for p in paths:  # check every file and work out every fill first: all are upgraded or none
        data = _read(p)
        if data is not None:
            header, rows = _parse(p, data, _columns_of(p), "subset")
            if fill is not None and p.name != "metrics.csv":
                fills[p] = _fills(p.stem, header, rows, fill)
    return [p for p in paths if upgrade_file(p, fill=fills.get(p))]


def _fills(table: str, header: list[str], rows: list[list[str]], fill) -> list[dict[str, str]]:
    """For each row, the cells `fill` gives to its empty (or missing) columns, as CSV text."""
    columns = SCHEMAS[table]
    out = []
    for r in rows:
        row = {c: unneutral(r[header.index(c)]) if c in header else "" for c in columns}
        new = {c: _format(v) for c, v in (fill(table, row) or {}).items()
               if c in columns and not row[c] and v not in (None, "")}
        for c, v in new.items():
            if not _valid(COLUMN_TYPES[c], v):
                raise ValueError(f"{c}={_show(v)} is not {_KIND_WORDS[COLUMN_TYPES[c]]}")
        out.append(new)
    return out


# What to do about a damaged file: mixerbench never repairs one, it would have to guess.
_DAMAGED = "restore it from its source or fix that line by hand (mixerbench changes nothing in it)"
_KIND_WORDS = {NUMBER: "numbers", BOOL: "true or false", TEXT: "text"}


def _show(text: str) -> str:
    """A cell or column name as one short line of a message (newlines and controls escaped)."""
    return repr(text[:40])


def _parse(path: Path, data: bytes, columns: tuple[str, ...], accept: str
           ) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a results CSV's bytes, or DamagedFileError naming the file and problem.

    `accept` says which headers pass: "exact" (the schema itself, for appending), "older" (also
    the header of an older version: a subset of the schema in schema order, for reading), or
    "subset" (any subset in any order, for `upgrade_file`). Every row must have as many fields
    as the header and every cell must be of its column's type (`COLUMN_TYPES`).
    """
    bad = DamagedFileError
    if not data:
        raise bad(f"{path} is empty (0 bytes), which mixerbench never writes; restore it from "
                  "its source, or delete it to start the table afresh.")
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (spreadsheet export) is not content
    except UnicodeDecodeError as exc:
        raise bad(f"{path} is not UTF-8 text (bad byte at offset {exc.start}); restore it from "
                  "its source or move it aside.") from None
    if _BINARY.search(text):
        raise bad(f"{path} holds binary bytes, not CSV text; restore it from its source or move "
                  "it aside.")
    if not text.endswith("\n"):
        # every write ends with a newline, so a missing one means the last line was cut short
        raise bad(f"{path} does not end with a newline, so its last line was cut short; "
                  f"{_DAMAGED}.")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, lines = [], []
    try:
        header = next(reader)
        if header in ([], [""]):
            raise bad(f"{path} starts with an empty line instead of its header; {_DAMAGED}.")
        for record in reader:
            if len(record) != len(header):
                raise bad(f"Line {reader.line_num} of {path} has {len(record)} fields where the "
                          f"header has {len(header)}; {_DAMAGED}.")
            rows.append(record)
            lines.append(reader.line_num)
    except csv.Error as exc:  # an unterminated quote, a character after a closing quote
        raise bad(f"{path} is not well-formed CSV at line {reader.line_num} ({exc}); "
                  f"{_DAMAGED}.") from None
    _check_header(path, header, columns, "older" if accept == "exact" else accept)
    if accept == "exact" and tuple(header) != columns:
        # appending a row in today's column order under an older header would shift its values
        missing = ", ".join(c for c in columns if c not in header)
        raise bad(f"{path} has the columns of an older mixerbench version (without {missing}); "
                  f"{_upgrade_hint(path)} before adding rows.")
    kinds = [COLUMN_TYPES[c] for c in header]
    for line, record in zip(lines, rows):
        for name, kind, cell in zip(header, kinds, record):
            if not _valid(kind, cell):
                raise bad(f"Line {line} of {path} has {_show(cell)} in column {name}, which "
                          f"holds {_KIND_WORDS[kind]}; {_DAMAGED}.")
    return header, rows


def _check_header(path: Path, header: list[str], columns: tuple[str, ...], accept: str) -> None:
    if tuple(header) == columns:
        return
    bad = DamagedFileError
    unknown = [c for c in header if c not in columns]
    if unknown:
        raise bad(f"{path} has columns this mixerbench version does not write "
                  f"({', '.join(map(_show, unknown[:5]))}), so it comes from a newer version or "
                  "was edited; read it with the version that wrote it, or move it aside.")
    if len(set(header)) != len(header):
        dup = next(c for c in header if header.count(c) > 1)
        raise bad(f"{path} names column {dup} twice in its header; {_DAMAGED}.")
    if accept == "older" and [c for c in columns if c in header] != header:
        # no version of mixerbench wrote its columns in another order: the file was edited
        raise bad(f"{path} has its columns in another order than mixerbench writes them; "
                  f"{_upgrade_hint(path)}.")


def _frame(columns: tuple[str, ...], header: list[str], rows: list[list[str]]):
    """A DataFrame with exactly `columns`, typed by `COLUMN_TYPES` (missing columns empty)."""
    import numpy as np
    import pandas as pd

    where = {c: i for i, c in enumerate(header)}
    text_dtype = "str" if int(pd.__version__.split(".")[0]) >= 3 else object
    data = {}
    for c in columns:
        cells = [r[where[c]] for r in rows] if c in where else [""] * len(rows)
        kind = COLUMN_TYPES[c]
        if kind == NUMBER:
            data[c] = _numbers(cells)
        elif kind == BOOL:
            values = [_BOOLS[v.lower()] if v else np.nan for v in cells]
            data[c] = pd.Series(values, dtype=bool if "" not in cells else object)
        else:
            data[c] = pd.Series([unneutral(v) if v else np.nan for v in cells], dtype=text_dtype)
    return pd.DataFrame(data, columns=list(columns))


def _numbers(cells: list[str]):
    """int64 when every cell is an integer that fits (as pandas reads them), else float64."""
    import numpy as np
    import pandas as pd

    if cells and all(_INTEGER.fullmatch(v) for v in cells):
        ints = [int(v) for v in cells]
        if _INT64[0] <= min(ints) and max(ints) <= _INT64[1]:
            return pd.Series(ints, dtype="int64")
    return pd.Series([float(v) if v else np.nan for v in cells], dtype="float64")


def _cell_value(cell: str) -> int | float | None:
    if cell == "":
        return None
    return int(cell) if _INTEGER.fullmatch(cell) else float(cell)


def _line(path: Path, columns: tuple[str, ...], row: Mapping[str, Any]) -> str:
    """One CSV line for `row` under `columns`; a value a reader would refuse is a ValueError."""
    unknown = set(row) - set(columns)
    if unknown:
        raise KeyError(f"columns not in the schema of {path.name}: {sorted(unknown)}")
    cells = [_format(row.get(c)) for c in columns]
    cells = [neutral(v) if COLUMN_TYPES[c] == TEXT else v for c, v in zip(columns, cells)]
    for c, cell in zip(columns, cells):
        if not _valid(COLUMN_TYPES[c], cell):
            raise ValueError(f"{c}={_show(cell)} is not {_KIND_WORDS[COLUMN_TYPES[c]]}; "
                             f"it would make {path} unreadable")
        try:
            cell.encode()
        except UnicodeEncodeError:  # a file or folder name in another encoding
            raise UserError(f"{c} {_show(printable(cell))} is not UTF-8 text, so it cannot be "
                            f"written to {printable(str(path))}; rename that file or folder to "
                            "a UTF-8 name.") from None
    return _csv_line(cells)


def _csv_line(cells) -> str:
    """One CSV record ending in a newline. The csv module quotes only the delimiter, the quote
    and the line terminator's characters, so a lone carriage return in a value would go out bare
    and read back as a line break: such a record is written with every field quoted."""
    out = io.StringIO()
    quoting = csv.QUOTE_ALL if any("\r" in c for c in cells) else csv.QUOTE_MINIMAL
    csv.writer(out, lineterminator="\n", quoting=quoting).writerow(cells)
    return out.getvalue()


def _header_line(columns: tuple[str, ...]) -> str:
    return _csv_line(columns)


def _read(path: Path, folder: files.Folder | None = None) -> bytes | None:
    """The file's bytes, None when there is no file; a link, folder, FIFO, device, oversized or
    unreadable file is a DamagedFileError (read through `files`: nothing blocks). With `folder`
    (the one `files.locked` yields), read through its descriptor: the file the lock guards."""
    try:
        if folder is not None:
            return folder.read_bytes(Path(path).name)
        return files.read_bytes(path)
    except DamagedFileError:
        raise
    except UserError as exc:
        raise DamagedFileError(str(exc)) from None


def append_row(table: str, row: Mapping[str, Any], root: str | os.PathLike | None = None) -> Path:
    """Append one row to `<root>/<table>.csv` (schema `SCHEMAS[table]`), atomically and locked."""
    path = csv_path(table, root)  # raises on an unknown table
    append_to(path, SCHEMAS[table], row)
    return path


# The columns that make a row of a table one observation: a second row with the same values
# there is a duplicate and is not appended (`append_once`). fewshot.csv: one row per run, shot
# count and probe: the images it is scored on (dataset and split: a capped probe never blocks
# the full one) and how (shots' split, l2, draws, crop, resolution, precision: a GPU's bf16
# features are not a CPU's fp32 ones).
# The recipe id tells a run's finished weights (its recipe) from a checkpoint evaluated while
# the run still trained (none yet), which the run id alone does not; the step tells two such
# checkpoints of one run apart.
KEYS: dict[str, tuple[str, ...]] = {"fewshot": (
    "run_id", "recipe_id", "steps", "shots", "dataset", "split", "shots_split", "l2_reg",
    "num_seeds", "pipeline", "img_size", "dtype"),
    # accuracy.csv's `evaluate` rows (`append_once`; a training row is appended once per run
    # by `rundir.ensure_row`): one per run, checkpoint step, images scored, crop, resolution
    # and precision, so the same evaluate run again adds nothing and another crop is its own
    # row. `kind` keeps an evaluation from being taken for its run's training row.
    "accuracy": ("run_id", "kind", "dataset", "split", "pipeline", "img_size", "steps",
                 "dtype"),
    # shuffle.csv's rows (`append_once`): one per run and checkpoint step, permutation its
    # images trained and were scored under, metric, images scored, crop, resolution, precision
    # and (a `fewshot<k>` row) probe, so the same `evaluate --shuffle` run again adds nothing
    # and a capped split or another crop is its own row.
    "shuffle": ("run_id", "recipe_id", "steps", "dataset", "split", "train_shuffle",
                "eval_shuffle", "metric", "probe_dataset", "shots_split", "l2_reg", "num_seeds",
                "pipeline", "img_size", "dtype"),
    # scaling.csv's rows (`append_once`): one per run and checkpoint step, metric, images
    # scored, probe and precision, so the same `reproduce data-scaling` run again adds nothing
    # and a probe in another precision (a GPU's of runs trained on a CPU) is its own row.
    "scaling": ("run_id", "recipe_id", "steps", "metric", "split", "probe_dataset", "dtype"),
    # released.csv (`append_rows`): one row per released checkpoint measured on one split, at
    # one resolution and crop, with or without ReaL (`real_n`: the images ReaL labels) and the
    # 5-shot probe; the same command run again adds nothing.
    "released": ("checkpoint", "dataset", "split", "img_size", "pipeline", "n", "real_n",
                 "fewshot5_mean")}
# Key columns that hold a measurement: only whether the row has one tells two observations
# apart (a re-run's 5-shot accuracy may differ in its last digits, and is still a repeat).
MEASURED_KEYS = frozenset({"fewshot5_mean"})


def append_once(table: str, row: Mapping[str, Any], root: str | os.PathLike | None = None) -> bool:
    """Append `row` to `<root>/<table>.csv` unless a row with the same `KEYS[table]` values is
    there; True if it was appended. The check and the write happen under the file's lock, so
    concurrent writers of the same observation leave exactly one row. A row without a run id
    (a checkpoint evaluated without its run) is appended as it is; an empty cell among the
    other keys is a value like any other."""
    key = KEYS[table] if row.get(KEYS[table][0]) not in (None, "") else ()
    return append_to(csv_path(table, root), SCHEMAS[table], row, key=key)


def append_rows(table: str, rows: list[Mapping[str, Any]],
                root: str | os.PathLike | None = None) -> list[Mapping[str, Any]]:
    """Append `rows` to `<root>/<table>.csv` in one atomic write under its lock: all of them
    land or, on any error, none (a refusal or a kill leaves the file as it was). A row whose
    `KEYS[table]` cells equal those of a row already there, or of an earlier one of `rows`, is
    not appended; those rows are returned."""
    path = csv_path(table, root)
    added = _append(path, SCHEMAS[table], rows, KEYS.get(table, ()))
    return [r for r, a in zip(rows, added) if not a]


def append_to(path: str | os.PathLike, columns: tuple[str, ...], row: Mapping[str, Any],
              key: tuple[str, ...] = ()) -> bool:
    """Append one row to the CSV at `path` with the given columns, atomically and under a lock.

    The whole file is rewritten to a temporary file, fsynced and renamed over the old one while
    the lock is held, so a reader never sees a torn row and concurrent writers never lose one;
    the new file is the old bytes plus one line.

    A file that is there must be one this version could have written: its header exactly
    `columns`, every line whole (ending in a newline, as many fields as the header, quotes
    closed), UTF-8 text, every cell of its column's type. Anything else raises `UserError` and
    leaves every byte as it was: a row appended under another header lands in the wrong columns,
    and a row appended after a torn line is glued onto it. An empty (0-byte) file is refused too,
    since no write ever leaves one. Keys outside the columns are a KeyError (a typo would
    silently drop a number otherwise) and a value of the wrong type a ValueError.

    With `key` (column names), a row whose cells in those columns equal the new row's is
    looked for under the lock, and when one is there nothing is written (False).
    """
    return _append(path, columns, [row], key)[0]


def _append(path, columns: tuple[str, ...], rows, key: tuple[str, ...]) -> list[bool]:
    """`append_to` for several rows in one write; which of them were appended."""
    path = Path(path)
    lines = [_line(path, columns, r) for r in rows]  # every row checked before any write
    where = [columns.index(c) for c in key]

    def ident(cells: list[str]) -> tuple:
        return tuple(bool(cells[i]) if columns[i] in MEASURED_KEYS else cells[i] for i in where)

    # the cells as they will be written
    mine = [ident(next(csv.reader(io.StringIO(line, newline="")))) for line in lines]
    # checked once before taking the lock, so a refusal does not even leave a lock file behind
    old = _read(path)
    if old is not None:
        _parse(path, old, columns, "exact")
    # the lock, the read and the write go through one descriptor of the CSV's folder: a folder
    # swapped for a link meanwhile cannot make them three different files (files.Folder)
    with locked(path) as folder:
        old = _read(path, folder)
        seen = set()
        if old is None:
            old = _header_line(columns).encode()
        else:
            rows_there = _parse(path, old, columns, "exact")[1]  # another writer may have written
            seen = {ident(r) for r in rows_there} if key else set()
        added = []
        for k in mine:
            added.append(not key or k not in seen)
            seen.add(k)
        if any(added):
            new = "".join(line for line, a in zip(lines, added) if a)
            folder.write_bytes(path.name, old + new.encode())
    return added


def ensure_appendable(table: str, root: str | os.PathLike | None = None) -> None:
    """Raise `DamagedFileError` now if `append_row(table, ..., root)` would refuse the file later.

    For commands that work for minutes or hours before appending their row (training,
    evaluation, benchmarks): checking first spares the work. No file is fine (it gets created);
    nothing is written.
    """
    path = csv_path(table, root)
    data = _read(path)
    if data is not None:
        _parse(path, data, SCHEMAS[table], "exact")
    for lock in (f"{table}.csv.lock", f"{table}.ensure.lock"):  # taken when the row is added
        files.check(path.parent / lock, "file")


def upgrade_file(path: str | os.PathLike, columns: tuple[str, ...] | None = None,
                 fill: list[dict[str, str]] | None = None) -> bool:
    """Rewrite a results CSV from an older version under the current header; True if rewritten.

    `columns` defaults to the schema the file name says (`accuracy.csv`: `SCHEMAS["accuracy"]`,
    `metrics.csv`: `METRICS`). The file's columns must all be in the schema (in any order); the
    columns it lacks are left empty, every other cell is kept as written, except that `fill`
    (one dict per row, as `upgrade_all` works them out) gives empty cells their values. A file
    already in the current header with nothing to fill, or no file, is left alone (False).
    Unknown columns, torn or binary content, wrong field counts or ill-typed cells raise
    `UserError` and change nothing: upgrading must not turn a damaged file into a
    well-formed-looking one.
    """
    path = Path(path)
    columns = _columns_of(path) if columns is None else tuple(columns)
    data = _read(path)

    def done(header, rows) -> bool:
        filled = fill is not None and len(fill) == len(rows) and any(fill)
        return tuple(header) == columns and not filled

    if data is None or done(*_parse(path, data, columns, "subset")):
        return False  # checked before taking the lock: a refusal leaves no lock file behind
    with locked(path) as folder:
        data = _read(path, folder)
        if data is None:
            return False
        header, rows = _parse(path, data, columns, "subset")
        if done(header, rows):
            return False
        if fill is not None and len(fill) != len(rows):  # rows came in since they were worked out
            raise UserError(f"{path} changed while it was being upgraded; run `mixerbench "
                            "upgrade` again when no other command writes to it.")
        where = {c: i for i, c in enumerate(header)}
        extra = fill or [{}] * len(rows)

        def cell(r, c, new):  # a formula an older version wrote bare is neutralised on the way
            v = r[where[c]] if c in where else ""
            v = v or new.get(c, "")
            return neutral(unneutral(v)) if v and COLUMN_TYPES[c] == TEXT else v

        text = _csv_line(columns) + "".join(_csv_line([cell(r, c, new) for c in columns])
                                            for r, new in zip(rows, extra))
        folder.write_bytes(path.name, text.encode())
    return True


def upgrade(table: str, root: str | os.PathLike | None = None) -> bool:
    """`upgrade_file` for `<root>/<table>.csv`: True if it was rewritten under today's header."""
    return upgrade_file(csv_path(table, root), SCHEMAS[table])


def read_metrics(path: str | os.PathLike) -> list[dict[str, int | float | None]]:
    """The rows of a run's `metrics.csv`, strictly read: one dict per row with every `METRICS`
    key, each value an int (integer cell), a float, or None (empty cell).

    The same checks as `load` (header `METRICS` or an older subset of it, whole lines, numbers
    only); any problem, or no file, raises `UserError` naming the file.
    """
    path = Path(path)
    data = _read(path)
    if data is None:
        raise UserError(f"{path} is missing; it is written while the run trains, so check the "
                        "run directory or train the run again.")
    header, rows = _parse(path, data, METRICS, "older")
    where = {c: i for i, c in enumerate(header)}
    return [{c: _cell_value(r[where[c]]) if c in where else None for c in METRICS} for r in rows]


def rewrite_metrics(path: str | os.PathLike, rows: list[Mapping[str, Any]]) -> None:
    """Replace a run's `metrics.csv` with the header `METRICS` and `rows`, atomically and locked.

    Values are written as `append_to` writes them, so the rows `read_metrics` returned come back
    byte for byte (integers stay integers, floats keep their repr).
    """
    path = Path(path)
    text = _header_line(METRICS) + "".join(_line(path, METRICS, r) for r in rows)
    with locked(path) as folder:
        folder.write_bytes(path.name, text.encode())


def load(table: str, root: str | os.PathLike | None = None, required: bool = True):
    """Read one results CSV into a DataFrame with exactly the schema's columns, typed.

    Accepted: the current header, or the header of an older version (some schema columns
    missing, the rest in schema order), whose missing columns come back empty. Numeric columns
    are int64 (all cells integers) or float64, `true`/`false` columns bool, text columns strings;
    an empty cell is NaN. Nothing else is guessed: another header (unknown, duplicated or
    reordered columns), a torn last line, binary or non-UTF-8 bytes, a row with the wrong number
    of fields or a cell not of its column's type (`COLUMN_TYPES`) raises `UserError` naming the
    file and what to do. A missing file, or one with only a header, raises `UserError` naming
    the command that produces it (or gives an empty frame when `required` is False); an empty
    (0-byte) file is refused either way, since no write ever leaves one.
    """
    path = csv_path(table, root)
    columns = SCHEMAS[table]
    data = _read(path)
    if data is None:
        if required:
            raise UserError(f"{path} is missing; run `{PRODUCERS[table]}` first to produce it.")
        return _frame(columns, list(columns), [])
    header, rows = _parse(path, data, columns, "older")
    if not rows and required:
        raise UserError(f"{path} has no rows; run `{PRODUCERS[table]}` first to produce it.")
    return _frame(columns, header, rows)


def text_rows(table: str, root: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """The rows of `<root>/<table>.csv` as their cells' text, every schema column present
    (empty where an older file lacks it), checked as `load` checks them; [] without a file.
    For a process that only looks for a row: a training run's importing pandas costs 0.2 s."""
    path = csv_path(table, root)
    data = _read(path)
    if data is None:
        return []
    header, rows = _parse(path, data, SCHEMAS[table], "older")
    where = {c: i for i, c in enumerate(header)}
    return [{c: unneutral(r[where[c]]) if c in where else "" for c in SCHEMAS[table]}
            for r in rows]


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
    model = cpu_model()
    return f"cpu ({model + ', ' if model else ''}{proc}, {os.cpu_count()} cores)"


@functools.cache  # read once per process: every row's provenance names the device
def cpu_model() -> str:
    """This CPU's model as Linux's /proc/cpuinfo names it (`cpu_model_of`); "" where none is
    named. Two CPUs of one architecture run other kernels (AVX-512 and AMX, or not): their
    img/s are not one device's, and they train one run id to other last digits, so a row says
    which CPU it ran on."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return cpu_model_of(fh.read())
    except OSError:
        return ""


def cpu_model_of(cpuinfo: str) -> str:
    """The model a /proc/cpuinfo text names, without trademark signs and clock ("Intel Xeon
    Platinum 8481C"). A virtual machine may name its CPU by vendor and line alone ("Intel
    Xeon", "AMD EPYC"), which every generation of the line can give, at other speeds and with
    other vector units; such a name gains its family and model numbers ("Intel Xeon family 6
    model 106", an Ice Lake)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:  # the first processor's block is enough: one model a machine
                break
            continue
        fields.setdefault(key.strip(), value.strip())
    named = " ".join(re.sub(r"\((R|TM)\)|\bCPU\b|@.*|\bProcessor\b", " ",
                            fields.get("model name", ""), flags=re.I).split())
    if named and not re.search(r"\d", named) and fields.get("cpu family", "").isdigit() \
            and fields.get("model", "").isdigit():
        named += f" family {fields['cpu family']} model {fields['model']}"
    return named


def provenance(
    *, device: str | None = None, num_devices: int = 1, dtype: str = "fp32",
    compiled: bool = False, seed: int | None = None,
) -> dict[str, Any]:
    """The provenance columns shared by every row (results/README.md)."""
    from importlib.metadata import version

    import torch

    import mixerbench

    return {
        "git_sha": _git_sha(),
        "mixerbench_version": mixerbench.__version__,
        "torch_version": torch.__version__,
        "timm_version": version("timm"),  # not timm.__version__: a process may never import timm
        "device_name": device_name(device),
        "num_devices": num_devices,
        "dtype": dtype,
        "compiled": compiled,
        "seed": seed,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
