"""Results files are read back strictly and appended to only when whole; unlearnable labels refused.

Results folders travel between people, so every damage a file can suffer on the way (a column
from another version, a torn last line, binary bytes, a value typed over) is planted in a file
mixerbench wrote itself, and each reader and writer must refuse it with one sentence naming the
file, changing no byte. Hypothesis then throws generated file contents (valid and not) at
`load` and `append_row`. Datasets whose labels fall outside their classes, or that hold one
class, are refused when opened. CPU, offline, a few seconds.
"""

from __future__ import annotations

import csv
import io
import random
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mixerbench import report, results
from mixerbench.cli import app
from mixerbench.data import get_dataset
from mixerbench.errors import DamagedFileError, UserError

ROOT = Path(__file__).resolve().parents[1]
TABLE = "accuracy"
COLUMNS = results.SCHEMAS[TABLE]


def good_row(i: int) -> dict:
    """An accuracy row as mixerbench writes one: text with commas and quotes, an empty number,
    a digits-only git sha that must stay text, a bool."""
    return dict(run_id=f"run-{i}", model="mixer-t4[depth=2,width=64]", dataset="cifar10",
                split="test", img_size=32, epochs=7.5, steps=100 + i, top1=91.25 + i, top5=None,
                loss=0.1 * i, init="", kind="pretrain", experiment="compare:smoke",
                git_sha="0123456789", device_name='cpu (x86_64, "2" cores)', num_devices=1,
                dtype="fp32", compiled=False, seed=i, timestamp="2026-01-01T00:00:00+00:00")


@pytest.fixture
def good(tmp_path) -> Path:
    """A results folder whose accuracy.csv holds three rows written by append_row."""
    root = tmp_path / "results"
    for i in range(3):
        results.append_row(TABLE, good_row(i), root)
    return root


def rows_of(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


def csv_bytes(rows) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def folder(root: Path) -> dict[str, bytes]:
    """Every file in the folder and its bytes (lock and temp files included)."""
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def one_sentence_naming(err: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg and msg.endswith("."), msg


def with_cell(data: bytes, line: int, column: str, value: str) -> bytes:
    rows = rows_of(data)
    rows[line][rows[0].index(column)] = value
    return csv_bytes(rows)


def swap_columns(data: bytes, a: str, b: str) -> bytes:
    rows = rows_of(data)
    i, j = rows[0].index(a), rows[0].index(b)
    for r in rows:
        r[i], r[j] = r[j], r[i]
    return csv_bytes(rows)


def drop_column(data: bytes, name: str, header_only: bool = False) -> bytes:
    rows = rows_of(data)
    i = rows[0].index(name)
    return csv_bytes([r[:i] + r[i + 1:] if n == 0 or not header_only else r
                      for n, r in enumerate(rows)])


def last_line(data: bytes) -> int:
    return data.rstrip(b"\n").rindex(b"\n") + 1


# Each damage turns the bytes of a good accuracy.csv into a damaged one.
DAMAGES = {
    "extra-column-from-a-newer-version": lambda d: csv_bytes(
        [r + (["stars"] if n == 0 else ["5"]) for n, r in enumerate(rows_of(d))]),
    "missing-column-name-rows-still-full": lambda d: drop_column(d, "top1", header_only=True),
    "reordered-columns": lambda d: swap_columns(d, "top1", "top5"),
    "duplicated-column-name": lambda d: d.replace(b",top5,", b",top1,", 1),
    "torn-last-line": lambda d: d[:-25],
    "torn-inside-a-quoted-field": lambda d: d[:d.rindex(b'"cpu (x86') + 6],
    "unterminated-quote-then-newline": lambda d: d[:d.rindex(b'"cpu (x86') + 6] + b"\n",
    "last-line-short-of-fields": lambda d: d[:last_line(d)] + b"run-9,mixer,cifar10\n",
    "binary-bytes": lambda d: random.Random(0).randbytes(300),
    "nul-byte-inside": lambda d: d[:120] + b"\x00" + d[120:],
    "not-utf8": lambda d: d.replace(b"cifar10", b"cifar\xff10", 1),
    "empty-file": lambda d: b"",
    "header-only-without-newline": lambda d: d[:d.index(b"\n")],
    "blank-line-between-rows": lambda d: d[:last_line(d)] + b"\n" + d[last_line(d):],
    "starts-with-a-blank-line": lambda d: b"\n" + d,
    "non-numeric-in-numeric-column": lambda d: with_cell(d, 2, "top1", "91.25%"),
    "decimal-comma-in-numeric-column": lambda d: with_cell(d, 2, "top1", "91,25"),
    "thousands-underscore-in-numeric-column": lambda d: with_cell(d, 1, "steps", "1_000"),
    "not-a-bool": lambda d: with_cell(d, 1, "compiled", "yes"),
    "wrong-field-count-in-a-middle-row": lambda d: csv_bytes(
        [r + ["x"] if n == 2 else r for n, r in enumerate(rows_of(d))]),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_file_is_refused_by_append_and_load_and_left_as_it_was(good, damage):
    path = good / "accuracy.csv"
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    for lock in good.glob("*.lock"):
        lock.unlink()  # a refused append must not even leave a lock file behind
    before = folder(good)
    with pytest.raises(DamagedFileError) as err:
        results.append_row(TABLE, good_row(9), good)
    one_sentence_naming(err, path)
    with pytest.raises(DamagedFileError):  # what a long command checks before it starts
        results.ensure_appendable(TABLE, good)
    assert folder(good) == before
    for required in (True, False):  # experiments read with required=False: no guess there either
        with pytest.raises(DamagedFileError) as err:
            results.load(TABLE, good, required=required)
        one_sentence_naming(err, path)
    assert folder(good) == before


def test_good_file_round_trips_with_declared_types(good, tmp_path):
    results.ensure_appendable(TABLE, good)
    results.ensure_appendable(TABLE, tmp_path / "no-results-yet")
    assert not (tmp_path / "no-results-yet").exists()
    df = results.load(TABLE, good)
    assert list(df.columns) == list(COLUMNS) and len(df) == 3
    assert df["git_sha"].tolist() == ["0123456789"] * 3  # digits, but a text column: kept as text
    assert df["device_name"][0] == 'cpu (x86_64, "2" cores)'
    assert df["model"][0] == "mixer-t4[depth=2,width=64]"
    assert df["img_size"].dtype == np.int64 and df["steps"].tolist() == [100, 101, 102]
    assert df["top1"].dtype == np.float64 and df["top1"].tolist() == [91.25, 92.25, 93.25]
    assert df["top5"].isna().all() and df["top5"].dtype == np.float64
    assert df["init"].isna().all()  # an empty cell is NaN in every column
    assert df["compiled"].dtype == bool and not df["compiled"].any()


def test_text_with_line_breaks_and_quotes_round_trips(tmp_path):
    """The csv module leaves a lone carriage return unquoted: written bare, it tears the row."""
    for i, name in enumerate(["cr\rinside", "lf\ninside", "crlf\r\n", 'q"uo,te', " padded "]):
        results.append_row(TABLE, dict(good_row(i), experiment=name), tmp_path)
    df = results.load(TABLE, tmp_path)
    assert df["experiment"].tolist() == ["cr\rinside", "lf\ninside", "crlf\r\n", 'q"uo,te',
                                         " padded "]
    assert df["steps"].tolist() == [100, 101, 102, 103, 104]


def test_an_integer_too_long_for_int_reads_as_a_float(good):
    path = good / "accuracy.csv"
    path.write_bytes(with_cell(path.read_bytes(), 1, "steps", "9" * 5000))
    assert results.load(TABLE, good)["steps"].tolist() == [float("inf"), 101.0, 102.0]


def test_every_column_has_one_declared_type():
    declared = set(results.COLUMN_TYPES)
    used = {c for cols in [*results.SCHEMAS.values(), results.METRICS] for c in cols}
    assert declared == used  # no column without a type, no type for a column nobody writes
    assert set(results.COLUMN_TYPES.values()) == {results.NUMBER, results.TEXT, results.BOOL}
    for name in ("top1", "img_size", "seed", "step", "lr"):
        assert results.COLUMN_TYPES[name] == results.NUMBER
    for name in ("run_id", "git_sha", "model", "experiment", "timestamp"):
        assert results.COLUMN_TYPES[name] == results.TEXT


@pytest.mark.parametrize("table", list(results.SCHEMAS))
def test_the_shipped_results_folder_reads_back_as_pandas_read_it(table):
    """The strict reader accepts every CSV this repository ships and gives the same values."""
    if not (ROOT / "results" / f"{table}.csv").is_file():
        pytest.skip(f"no results/{table}.csv in this checkout")
    ours = results.load(table, ROOT / "results")
    theirs = pd.read_csv(ROOT / "results" / f"{table}.csv")
    assert list(ours.columns) == list(theirs.columns) == list(results.SCHEMAS[table])
    for c in ours.columns:
        if theirs[c].notna().any():  # all-empty columns: pandas guesses float, we say text
            pd.testing.assert_series_equal(ours[c], theirs[c], check_dtype=False, obj=c)


def test_older_header_reads_with_empty_columns_and_is_upgraded_before_appending(good):
    path = good / "accuracy.csv"
    current = results.load(TABLE, good)
    path.write_bytes(drop_column(path.read_bytes(), "experiment"))  # as before that column
    old = path.read_bytes()
    df = results.load(TABLE, good)
    assert list(df.columns) == list(COLUMNS) and df["experiment"].isna().all()
    pd.testing.assert_frame_equal(df.drop(columns="experiment"),
                                  current.drop(columns="experiment"))
    with pytest.raises(DamagedFileError, match="older mixerbench version.*mixerbench upgrade") as err:
        results.append_row(TABLE, good_row(9), good)  # would land shifted by one column
    one_sentence_naming(err, path)
    assert path.read_bytes() == old
    assert results.upgrade(TABLE, good) is True
    assert rows_of(path.read_bytes())[0] == list(COLUMNS)
    upgraded = results.load(TABLE, good)
    pd.testing.assert_frame_equal(upgraded, df)
    before = path.read_bytes()
    assert results.upgrade(TABLE, good) is False and path.read_bytes() == before
    results.append_row(TABLE, good_row(9), good)
    assert results.load(TABLE, good)["experiment"].tolist()[-1] == "compare:smoke"


def test_upgrade_puts_reordered_columns_back_and_refuses_what_it_cannot_know(good, tmp_path):
    path = good / "accuracy.csv"
    original = path.read_bytes()
    path.write_bytes(swap_columns(original, "top1", "top5"))
    assert results.upgrade_file(path) is True  # the file name says which schema
    assert path.read_bytes() == original
    for damage in ("extra-column-from-a-newer-version", "torn-last-line", "binary-bytes",
                   "non-numeric-in-numeric-column", "missing-column-name-rows-still-full"):
        path.write_bytes(DAMAGES[damage](original))
        before = path.read_bytes()
        with pytest.raises(DamagedFileError) as err:
            results.upgrade(TABLE, good)
        one_sentence_naming(err, path)
        assert path.read_bytes() == before
    assert results.upgrade("fewshot", tmp_path / "nothing-here") is False
    assert not (tmp_path / "nothing-here").exists()
    with pytest.raises(UserError, match="not a mixerbench results file"):
        results.upgrade_file(tmp_path / "notes.csv")


def test_header_only_file_is_no_rows_yet_and_can_be_appended_to(tmp_path):
    path = tmp_path / "accuracy.csv"
    header = csv_bytes([COLUMNS])
    path.write_bytes(header)
    with pytest.raises(UserError, match="no rows; run `mixerbench pretrain") as err:
        results.load(TABLE, tmp_path)
    assert not isinstance(err.value, DamagedFileError)  # `plot` may skip it like a missing file
    empty = results.load(TABLE, tmp_path, required=False)
    assert list(empty.columns) == list(COLUMNS) and empty.empty
    results.append_row(TABLE, good_row(0), tmp_path)
    added = path.read_bytes()[len(header):]
    assert path.read_bytes().startswith(header) and len(rows_of(added)) == 1
    with pytest.raises(UserError, match="is missing; run `mixerbench bench"):
        results.load("throughput", tmp_path)
    assert results.load("throughput", tmp_path, required=False).empty


def test_append_refuses_values_a_reader_would_refuse(tmp_path):
    path = tmp_path / "accuracy.csv"
    results.append_row(TABLE, good_row(0), tmp_path)
    before = path.read_bytes()
    for bad in (dict(top1="91%"), dict(compiled="yes"), dict(model="a\x00b"),
                dict(top1=float("nan"), steps="12 steps")):
        with pytest.raises(ValueError, match="unreadable|not"):
            results.append_row(TABLE, dict(good_row(1), **bad), tmp_path)
    with pytest.raises(KeyError):
        results.append_row(TABLE, dict(good_row(1), topl=90.0), tmp_path)
    assert path.read_bytes() == before


def test_a_byte_order_mark_and_windows_line_ends_are_not_damage(good):
    path = good / "accuracy.csv"
    expected = results.load(TABLE, good)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    pd.testing.assert_frame_equal(results.load(TABLE, good), expected)
    before = path.read_bytes()
    results.append_row(TABLE, good_row(3), good)
    assert path.read_bytes().startswith(before) and len(results.load(TABLE, good)) == 4


# ------------------------------------------------------------------------ metrics.csv

def metric_row(step: int) -> dict:
    return dict(step=step, epoch=step / 12, train_loss=2.3 / step, eval_loss=2.4 / step,
                top1=10.0 + step, top5=None, lr=1e-3 * step, img_per_sec=1234.5,
                elapsed_s=step * 0.7)


def test_a_numpy_number_is_written_as_the_number_it_holds(tmp_path):
    """A value read back through pandas (numpy's float64, a float subclass whose repr is
    `np.float64(82.0)` under numpy 2) is written as the same digits a float's would be."""
    path = tmp_path / "runs" / "r" / "metrics.csv"
    results.append_to(path, results.METRICS, dict(metric_row(4), top1=np.float64(82.0),
                                                  lr=np.float64(1e-3 / 3)))
    row, = results.read_metrics(path)
    assert (row["top1"], row["lr"]) == (82.0, 1e-3 / 3)


def test_read_metrics_and_rewrite_metrics_keep_the_bytes(tmp_path):
    path = tmp_path / "runs" / "r" / "metrics.csv"
    for step in (4, 8, 12):
        results.append_to(path, results.METRICS, metric_row(step))
    original = path.read_bytes()
    rows = results.read_metrics(path)
    assert [r["step"] for r in rows] == [4, 8, 12] and all(type(r["step"]) is int for r in rows)
    assert rows[0]["top5"] is None and rows[0]["epoch"] == 4 / 12 and list(rows[0]) == list(
        results.METRICS)
    results.rewrite_metrics(path, [r for r in rows if r["step"] <= 8])  # a resume at step 8
    assert path.read_bytes() == b"".join(original.splitlines(keepends=True)[:3])
    results.rewrite_metrics(path, rows)
    assert path.read_bytes() == original


def test_damaged_or_older_metrics(tmp_path):
    path = tmp_path / "metrics.csv"
    with pytest.raises(UserError, match="is missing"):
        results.read_metrics(path)
    for step in (4, 8):
        results.append_to(path, results.METRICS, metric_row(step))
    good_bytes = path.read_bytes()
    for damaged in (good_bytes[:-7], good_bytes.replace(b"1234.5", b"fast", 1), b"\x00" * 9):
        path.write_bytes(damaged)
        with pytest.raises(DamagedFileError) as err:
            results.read_metrics(path)
        one_sentence_naming(err, path)
        with pytest.raises(DamagedFileError):
            results.append_to(path, results.METRICS, metric_row(12))
        assert path.read_bytes() == damaged
    older = drop_column(drop_column(good_bytes, "elapsed_s"), "img_per_sec")
    path.write_bytes(older)
    rows = results.read_metrics(path)
    assert rows[1]["step"] == 8 and rows[1]["img_per_sec"] is None and rows[1]["elapsed_s"] is None
    assert results.upgrade_file(path) is True
    assert rows_of(path.read_bytes())[0] == list(results.METRICS)


# ------------------------------------------------------------------------ plot

def test_plot_stops_on_a_damaged_file_instead_of_skipping_it(good, tmp_path):
    """A missing CSV is a figure skipped; a damaged one must stop `plot` with one sentence, or
    the damage would hide behind a figure quietly left out."""
    path = good / "accuracy.csv"
    intact = path.read_bytes()
    path.write_bytes(DAMAGES["extra-column-from-a-newer-version"](intact))
    with pytest.raises(DamagedFileError):
        report.regenerate(good, tmp_path / "out")
    before = folder(good)
    r = CliRunner().invoke(app, ["--quiet", "plot", "--results-dir", str(good)],
                           env={"MIXERBENCH_RESULTS": None})
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert folder(good) == before
    path.write_bytes(intact)  # curves reads accuracy.csv too (the last command's runs)
    run = good / "runs" / "r"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_bytes(b"step,epoch\n4,0.5\n8,")
    with pytest.raises(DamagedFileError, match="metrics.csv"):
        report.regenerate(good, tmp_path / "out", "curves")


# ------------------------------------------------------------------------ fuzzing

TABLES = sorted(results.SCHEMAS)


def _is_binary(text: str) -> bool:
    return any((ord(ch) < 32 and ch not in "\t\n\r") or ord(ch) == 127 for ch in text)


PLAIN_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=10)
VALID_CELLS = {
    results.NUMBER: st.one_of(st.just(""), st.integers(-10**20, 10**20).map(str),
                              st.floats().map(repr)),
    results.BOOL: st.sampled_from(["", "true", "false", "True", "FALSE"]),
    results.TEXT: st.one_of(PLAIN_TEXT, st.sampled_from(['a,b', 'say "hi"', "two\nlines", "\r"])),
}
BAD_CELLS = {
    results.NUMBER: st.sampled_from(["abc", "1,5", "1_000", " 1", "١٢", "-", ".", "1e", "0x10",
                                     "91%", "true"]),
    results.BOOL: st.sampled_from(["yes", "1", "0", "t", "tru"]),
    results.TEXT: st.text(max_size=6).map(lambda s: s + "\x01"),
}


@st.composite
def results_files(draw):
    """(table, file bytes, what a strict reader must say: "ok", "refuse" or "either")."""
    table = draw(st.sampled_from(TABLES))
    columns = list(results.SCHEMAS[table])
    kind = draw(st.sampled_from(["file", "file", "file", "bytes", "text"]))
    if kind == "bytes":
        return table, draw(st.binary(max_size=200)), "either"
    if kind == "text":
        return table, draw(st.text(max_size=200)).encode(), "either"
    header = list(columns)
    change = draw(st.sampled_from(["same", "same", "same", "older", "extra", "swap", "dup"]))
    if change == "older":
        for c in draw(st.sets(st.sampled_from(columns), max_size=len(columns) - 1)):
            header.remove(c)
    elif change == "extra":
        header.insert(draw(st.integers(0, len(header))), "stars")
    elif change == "swap":
        i, j = draw(st.lists(st.integers(0, len(header) - 1), min_size=2, max_size=2,
                             unique=True))
        header[i], header[j] = header[j], header[i]
    elif change == "dup":
        i, j = draw(st.lists(st.integers(0, len(header) - 1), min_size=2, max_size=2,
                             unique=True))
        header[i] = header[j]
    kinds = [results.COLUMN_TYPES.get(c, results.TEXT) for c in header]
    rows = [[draw(VALID_CELLS[k]) for k in kinds] for _ in range(draw(st.integers(0, 3)))]
    bad_cell = bool(rows) and draw(st.integers(0, 4)) == 0
    if bad_cell:  # one cell a reader must refuse, somewhere
        n, i = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(header) - 1))
        rows[n][i] = draw(BAD_CELLS[kinds[i]])
    out = io.StringIO()
    quote_all = draw(st.booleans())
    for r in [header, *rows]:  # a lone \r must be quoted: the csv module leaves it bare
        quoting = csv.QUOTE_ALL if quote_all or any("\r" in c for c in r) else csv.QUOTE_MINIMAL
        csv.writer(out, lineterminator="\n", quoting=quoting).writerow(r)
    data = out.getvalue().encode()
    damage = draw(st.sampled_from(["none", "none", "crlf", "bom", "cut", "insert", "delete"]))
    if damage == "crlf":
        data = data.replace(b"\n", b"\r\n")
    elif damage == "bom":
        data = b"\xef\xbb\xbf" + data
    elif damage == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif damage == "insert":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    elif damage == "delete":
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        data = data[:at] + data[at + 1:]
    if damage in ("none", "crlf", "bom"):
        if change in ("extra", "swap", "dup") or bad_cell:
            return table, data, "refuse"
        return table, data, "ok"
    return table, data, "either"


def typed_rows(table: str):
    """A row of valid Python values for some of the table's columns."""
    values = {results.NUMBER: st.one_of(st.none(), st.integers(-10**6, 10**6), st.floats()),
              results.BOOL: st.one_of(st.none(), st.booleans()),
              results.TEXT: st.one_of(st.none(), PLAIN_TEXT)}
    return st.fixed_dictionaries(
        {}, optional={c: values[results.COLUMN_TYPES[c]] for c in results.SCHEMAS[table]})


FUZZ = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(results_files())
def test_load_gives_the_schema_or_refuses_never_anything_else(case):
    table, data, expect = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{table}.csv"
        path.write_bytes(data)
        try:
            df = results.load(table, d, required=False)
        except UserError as err:
            assert expect != "ok", f"a valid file was refused: {err}"
            assert "\n" not in str(err)
            return
        finally:
            assert path.read_bytes() == data  # reading never writes
        assert expect != "refuse", "a damaged file was read"
        assert list(df.columns) == list(results.SCHEMAS[table])
        for c in df.columns:
            kind = results.COLUMN_TYPES[c]
            if kind == results.NUMBER:
                assert df[c].dtype in (np.int64, np.float64), c
            elif kind == results.BOOL:
                assert all(v is True or v is False or v != v for v in df[c]), c


@FUZZ
@given(st.data())
def test_append_adds_exactly_one_whole_row_or_refuses_changing_nothing(data):
    table, content, expect = data.draw(results_files())
    row = data.draw(typed_rows(table))
    columns = results.SCHEMAS[table]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{table}.csv"
        path.write_bytes(content)
        try:
            before = len(results.load(table, d, required=False))
        except UserError:
            before = None
        try:
            results.append_row(table, row, d)
        except UserError as err:
            assert path.read_bytes() == content
            assert "\n" not in str(err)
            header_is_current = rows_of(content.lstrip(b"\xef\xbb\xbf"))[:1] == [list(columns)] \
                if expect == "ok" else False
            assert not header_is_current, f"a valid current file was refused: {err}"
            return
        after = path.read_bytes()
        assert after.startswith(content)
        added = rows_of(after[len(content):])
        assert len(added) == 1 and len(added[0]) == len(columns)
        assert before is not None  # only a file the reader accepts is appended to
        df = results.load(table, d)
        assert len(df) == before + 1


# ------------------------------------------------------------------------ dataset labels

def _png_cells(n: int, size: int = 4) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(n)
    cells = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
        cells.append({"bytes": buf.getvalue(), "path": None})
    return cells


def _parquet(path: Path, labels: list[int], names: list[str] | None, image_column="image",
             size: int = 4) -> None:
    """A hub-layout parquet file; with `names`, HF metadata declaring a ClassLabel column
    (written by pyarrow, since `datasets` itself refuses to encode an out-of-range label)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({image_column: _png_cells(len(labels), size),
                      "label": pa.array(labels, type=pa.int64())})
    if names is not None:
        features = {image_column: {"_type": "Image"}, "label": {"_type": "ClassLabel",
                                                               "names": names}}
        meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
        table = table.replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _folder(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    from PIL import Image

    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(root / split / cls / f"{i}.png")
    return root


def test_label_past_the_class_list_is_refused(tmp_path):
    cache = tmp_path / "cache"
    names = [f"c{i}" for i in range(10)]
    _parquet(tmp_path / "ten" / "data" / "train-00000-of-00001.parquet", [0, 3, 12, 9], names)
    with pytest.raises(UserError, match=r"'train' of ten has label 12, but ten has 10 classes") \
            as err:
        get_dataset(str(tmp_path / "ten"), "train", cache_dir=cache)
    assert "\n" not in str(err.value)
    # a local copy of a known 10-class dataset without ClassLabel metadata derives 13 classes
    # from its own labels: the registry's 10 still hold
    _parquet(tmp_path / "data" / "cifar10" / "data" / "train-00000-of-00001.parquet",
             [0, 1, 12, 9], None, image_column="img", size=32)
    with pytest.raises(UserError, match=r"'train' of cifar10 has label 12, but cifar10 has 10"):
        get_dataset("cifar10", "train", data_dir=tmp_path / "data", cache_dir=cache)
    _parquet(tmp_path / "ok" / "data" / "train-00000-of-00001.parquet", [0, 1, 9, 9], names)
    assert get_dataset(str(tmp_path / "ok"), "train", cache_dir=cache).num_classes == 10


def test_one_class_datasets_are_refused(tmp_path):
    cache = tmp_path / "cache"
    one = _folder(tmp_path / "one", {"train": {"ant": 3}, "test": {"ant": 2}})
    for split in ("train", "test"):
        with pytest.raises(UserError, match="has 1 class .ant.; classification needs at least 2"):
            get_dataset(str(one), split, cache_dir=cache)
    _parquet(tmp_path / "pq1" / "train-0.parquet", [0, 0, 0], ["ant"])
    with pytest.raises(UserError, match="1 class"):
        get_dataset(str(tmp_path / "pq1"), "train", cache_dir=cache)
    # two classes, but the train split holds only one of them: every prediction would be right
    lop = _folder(tmp_path / "lopsided", {"train": {"ant": 3, "bee": 0}, "test": {"bee": 2}})
    for split in ("train", "minival", "train-minus-minival"):
        with pytest.raises(UserError, match="holds only class 'ant'"):
            get_dataset(str(lop), split, cache_dir=cache)
    assert get_dataset(str(lop), "test", cache_dir=cache).num_classes == 2  # a test split may


def test_save_to_disk_string_labels_mean_the_same_class_in_every_split(tmp_path):
    import datasets

    datasets.disable_progress_bars()
    cells = [np.full((4, 4, 3), i * 30, dtype=np.uint8) for i in range(6)]
    strings = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(
            {"image": cells[:4], "label": ["ant", "bee", "cat", "cat"]}, features=strings),
        "test": datasets.Dataset.from_dict(
            {"image": cells[4:], "label": ["cat", "bee"]}, features=strings),
    })
    dd.save_to_disk(str(tmp_path / "disk"))
    train = get_dataset(str(tmp_path / "disk"), "train", cache_dir=tmp_path / "cache")
    test = get_dataset(str(tmp_path / "disk"), "test", cache_dir=tmp_path / "cache")
    assert train.class_names == test.class_names == ["ant", "bee", "cat"]
    assert test.labels.tolist() == [2, 1]  # not [1, 0] from the test split's own names
    one_class = datasets.Features({"image": datasets.Image(),
                                   "label": datasets.ClassLabel(names=["ant"])})
    one = datasets.Dataset.from_dict({"image": cells[:2], "label": [0, 0]}, features=one_class)
    one.save_to_disk(str(tmp_path / "one"))
    with pytest.raises(UserError, match="1 class"):
        get_dataset(str(tmp_path / "one"), "train", cache_dir=tmp_path / "cache")


def test_the_upgrade_command_rewrites_older_files_and_refuses_unknown_columns(tmp_path):
    """`mixerbench upgrade`: a file from an older version (a subset of today's columns) gets
    today's header with its cells kept; one with a column this version does not know is refused
    and, as every file is checked first, nothing at all is rewritten."""
    from typer.testing import CliRunner

    from mixerbench.cli import app

    old = [c for c in results.SCHEMAS["fewshot"] if c not in ("family", "upstream")]
    (tmp_path / "fewshot.csv").write_text(",".join(old) + "\n" + ",".join(
        "5" if c == "shots" else "r1" if c == "run_id" else "" for c in old) + "\n")
    r = CliRunner().invoke(app, ["upgrade", "--results-dir", str(tmp_path)])
    assert r.exit_code == 0 and "upgraded" in r.output, r.output
    df = results.load("fewshot", tmp_path)
    assert list(df.columns) == list(results.SCHEMAS["fewshot"]) and df.loc[0, "run_id"] == "r1"
    again = CliRunner().invoke(app, ["upgrade", "--results-dir", str(tmp_path)])
    assert again.exit_code == 0 and "nothing to upgrade" in again.output
    (tmp_path / "shuffle.csv").write_text("run_id,from_the_future\nr,1\n")
    before = (tmp_path / "fewshot.csv").read_bytes()
    r = CliRunner().invoke(app, ["upgrade", "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "shuffle.csv" in r.output
    assert (tmp_path / "fewshot.csv").read_bytes() == before
