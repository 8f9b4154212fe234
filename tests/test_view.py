"""What a person sees: one number formatter, tables that fit 80 and 120 columns without a cut
cell, progress that degrades cleanly, a config that round-trips, `settings`, and `--dry-run`."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from conftest import TINY, cli, refused

from mixerbench import formatting as f

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ the formatter


def test_one_rule_per_kind_of_number():
    assert f.value("params", 77036.0) == "77,036"
    assert f.value("train_flops", 1433752043520.0) == "1.43 TFLOPs"
    assert f.value("gflops", 0.00752768) == "7.53 MFLOPs"
    assert f.value("gmacs", 12.6) == "12.6 GMACs"
    assert f.value("top1_mean", 96.0666) == "96.1" and f.value("cifar10", 84.2) == "84.2"
    assert f.value("diff", -0.33) == "-0.3" and f.value("mfu", 0.123) == "12.3 %"
    assert f.value("train_img_per_sec", 1392.9) == "1,393" and f.value("img_per_sec", 5.94) == "5.94"
    assert f.value("ratio", 1.2106) == "1.21x" and f.value("device_hours", 0.26651) == "0.267"
    assert f.value("wall_time_s", 959.4) == "16 min" and f.seconds(131) == "2.2 min" and f.value("train_seconds", 6.44) == "6.4 s"
    assert f.value("top1", None) == "" and f.value("top1", float("nan")) == ""
    assert f.spread(96.0666, 0.5507, 3) == "96.1 ± 0.6 (3)" and f.spread(93.2, None, 1) == "93.2 (1)"
    assert f.spread(1392.9, 28.8, rule=f.rate) == "1,393 ± 29"


def test_a_spread_is_one_cell_and_headers_read_as_words():
    d = f.display([dict(model="mixer-t4[depth=2,width=64]", top1_mean=96.07, top1_std=0.55, n=3,
                        train_img_per_sec=1392.9, train_img_per_sec_std=28.8)])
    assert [c.header for c in d.columns] == ["model", "top-1 %", "train img/s"]
    assert d.rows == [["mixer-t4[depth=2,width=64]", "96.1 ± 0.6 (3)", "1,393 ± 29"]]


def test_labels_say_the_shape_so_the_smoke_mixer_is_not_the_zoo_entry():
    assert f.label("mixer-t4") == "mixer-t4"
    assert f.label("mixer-t4[depth=2,width=64]") == "mixer-t4 d2 w64"
    from mixerbench.report.tables import short_labels

    assert short_labels(["mixer-t4[depth=2,width=64]", "mixer-t4"]) == ["mixer-t4 d2 w64",
                                                                        "mixer-t4"]


def test_markdown_tables_use_the_formatter():
    import pandas as pd

    from mixerbench.report.tables import to_markdown

    md = to_markdown(pd.DataFrame([dict(model="vit-t4", params=107018.0, gflops=0.0112,
                                        top1_mean=93.1667, top1_std=1.16, n=3)]))
    assert "107,018" in md and "11.2 MFLOPs" in md and "93.2 ± 1.2 (3)" in md
    assert "107018" not in md and "0.0112" not in md


# ------------------------------------------------------------------------ tables that fit


def _tables():
    """(name, rows) of every wide table the commands print: the committed results' tables, the
    paper's, the zoo, the datasets, the settings, and an Avg 5 and a released table built from
    their columns."""
    import pandas as pd

    from mixerbench.config import settings_table
    from mixerbench.data import known_datasets
    from mixerbench.models import zoo
    from mixerbench.reference import TABLES, load_table
    from mixerbench.report import tables
    from mixerbench.view import records

    out = [(f"paper-{t}", records(load_table(t))) for t in TABLES]
    out.append(("settings", settings_table()))
    out.append(("models", zoo()))
    out.append(("datasets", known_datasets()))
    for csv in sorted((ROOT / "results" / "tables").glob("*.csv")):
        df = pd.read_csv(csv)
        name = "compare" if csv.stem.startswith("compare") else csv.stem
        if name == "compare":
            df = tables.compare_view(df)
        out.append((name, records(df)))
    avg5 = dict(model="mixer-b16", upstream="imagenet-21k", resolution="1x", img_size=224,
                **{d: 90.123 for d in tables.AVG5_DATASETS}, avg=91.2, datasets=5, avg5=91.2,
                paper_avg5=92.5, avg5_diff=-1.3, paper_imagenet=80.64, imagenet_diff=-0.2,
                official_cifar10=98.6, cifar10_diff=-0.4, runs=1, init="timm:mixer_b16_224.goog_in21k")
    out.append(("avg5", [avg5, dict(avg5, resolution="2x", img_size=448)]))
    released = {c: None for c in tables.RELEASED_COLUMNS}
    released.update(paper_name="Mixer-B/16", checkpoint="timm:mixer_b16_224.goog_in21k_ft_in1k",
                    model="mixer-b16", upstream="imagenet21k", img_size=224, pipeline="eval-resmall",
                    n=50000, top1=80.1, paper_top1=80.64, top1_diff=-0.5, real_top1=85.9,
                    paper_real=85.8, real_diff=0.1, note="timm calls these weights ImageNet-1k ones",
                    dtype="bf16", device_name="NVIDIA H100 80GB HBM3", timm_version="1.0.31",
                    git_sha="0123456789ab", timestamp="2026-12-02T10:00:00Z")
    out.append(("released", [released]))
    return out


@pytest.mark.parametrize("width", [80, 120])
def test_every_table_fits_the_terminal_without_a_cut_cell(width, capsys, monkeypatch):
    from mixerbench import view

    monkeypatch.setenv("COLUMNS", str(width))
    for name, rows in _tables():
        view.table(name, rows, view.Format.table, False, title=f"{name} table")
        out = capsys.readouterr().out
        assert "…" not in out, f"{name} at {width} columns:\n{out}"
        lines = out.splitlines()
        table = [ln for ln in lines if not ln.startswith(("more column", f"{name} table"))
                 and "more column" not in ln]
        assert max(len(ln) for ln in table) <= width, f"{name} wider than {width}:\n{out}"
        # the model (or key) column is always there, with every row's value whole
        first = rows[0]
        key = "name" if name in ("models", "datasets") else next(
            k for k in ("paper_name", "model", "key", "name") if k in first)
        for r in rows:
            shown = f.label(r[key]) if name == "compare" else str(r[key])
            assert shown in out or shown.split(" ")[0] in out, (name, shown)


@pytest.mark.parametrize("width", [80, 120])
def test_bench_and_input_bench_tables_fit(width, capsys, monkeypatch, tmp_path):
    """`bench` and `datasets --bench` print the committed rows' tables without a cut cell."""
    import pandas as pd

    from mixerbench import view
    from mixerbench.view import records

    monkeypatch.setenv("COLUMNS", str(width))
    bench = pd.read_csv(ROOT / "results" / "throughput.csv")
    for _, rows in bench.groupby("bench_id", sort=False):  # as bench returns them
        rows = [dict(r, matmul_precision="ieee", ratio_to_first=r["img_per_sec_mean"]
                     / rows["img_per_sec_mean"].iloc[0]) for r in records(rows)]
        view.bench(rows, 20, tmp_path, view.Format.table, False)
        out = capsys.readouterr().out
        assert "…" not in out and f.label(rows[-1]["model"]) in out, out
        assert max(len(ln) for ln in out.splitlines()  # but the path, which may be long
                   if "more column" not in ln and "appended to" not in ln) <= width, out
    inputs = records(pd.read_csv(ROOT / "results" / "inputs.csv"))
    view.datasets(dict(dataset="jpegs", rows=inputs), "jpegs", True, view.Format.table, False, 3)
    out = capsys.readouterr().out
    assert "…" not in out and "img/s per core" in out, out


def test_the_papers_numbers_keep_the_papers_digits(capsys, monkeypatch):
    """Ours are shown to one decimal; the paper's to the digits it printed (Table 3's 80.64)."""
    from mixerbench import view

    assert f.value("top1", 80.64) == "80.6" and f.value("paper_top1", 80.64) == "80.64"
    assert f.value("paper_real", 85.8) == "85.8" and f.value("official_cifar10", 98.34) == "98.34"
    monkeypatch.setenv("COLUMNS", "120")
    name, rows = next(t for t in _tables() if t[0] == "released")
    view.table(name, rows, view.Format.table, False)
    out = capsys.readouterr().out
    assert " 80.64 " in out and " 80.1 " in out, out
    r = cli("paper", "table2", env={"COLUMNS": "120"})
    assert r.exit_code == 0 and "84.15" in r.output and "85.8 " in r.output, r.output
    r = cli("paper", "table3", env={"COLUMNS": "120"})  # Mixer-B/16 on JFT-300M: 80.00
    assert r.exit_code == 0 and " 80.00 " in r.output and " 92.60" in r.output, r.output


@pytest.mark.parametrize("width", [80, 120])
def test_wide_shows_every_column_as_records_when_wider_than_the_terminal(width, capsys,
                                                                         monkeypatch):
    from mixerbench import view

    monkeypatch.setenv("COLUMNS", str(width))
    name, rows = next(t for t in _tables() if t[0] == "paper-table3")
    view.table(name, rows, view.Format.table, True)
    out = capsys.readouterr().out
    assert "…" not in out and "TPU-v3 core-days" in out and "P Table 3" in out


def test_the_table_commands_print_fitted_tables():
    r = cli("paper", "table3", env={"COLUMNS": "80"})
    assert r.exit_code == 0 and "…" not in r.output and "ImageNet %" in r.output
    assert "--wide shows every column" in r.output
    r = cli("models", "mixer-*", "--format", "csv")  # machine formats keep the raw numbers
    assert r.exit_code == 0 and "59880472" in r.output


def test_progress_fits_80_columns():
    """The training bar, its start line and a stage line at 80 columns: nothing cut, and the
    launch line (a long job-log folder in it) wrapped between words."""
    from rich.console import Console

    from mixerbench.train import Event
    from mixerbench.view import ProgressView

    view = ProgressView(quiet=False)
    buf = io.StringIO()
    view.console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    view(Event.START, dict(run_dir="results/runs/mixer-t4-mnist-5k-s0-63d53555", total_steps=2000,
                           step=0, device="cpu", dtype="fp32", model="mixer-t4[depth=2,width=64]",
                           dataset="mnist-5k", world_size=2, batch_size=128, img_size=28,
                           pipeline="digits", eval_pipeline="eval-plain"))
    view(Event.STEP, dict(step=1234, total_steps=2000, epoch=12.34, loss=0.12345, lr=1e-3,
                          img_per_sec=1234.5))
    view.stop()
    out = buf.getvalue()
    assert "…" not in out, out
    assert "global batch 128 (64 per process x 2 processes)" in " ".join(out.split())
    assert "1234/2000" in out and "loss 0.1235" in out

    # cells a sweep sent out as processes by itself: the launch line, then a bar of cells
    # (running ones counted by their share of steps), ending at its full count
    from mixerbench.launch import Event as CellEvent

    buf.seek(0)
    buf.truncate()
    view(CellEvent.LAUNCH, dict(launcher="local", cells=3, parallel=3, threads=1, auto=True,
                                folder="/home/someone/.cache/mixerbench/launcher/compare-smoke-"
                                       "20261206-123543-24625"))
    view(CellEvent.CELLS, dict(done=1.4, of=3, running=2))
    view(CellEvent.CELLS, dict(done=3, of=3, running=0))
    assert view.bar is None  # stopped once every cell has ended
    out = buf.getvalue()
    assert "…" not in out, out
    assert "3 cells as processes of 1 torch thread each" in " ".join(out.split())
    assert "3/3" in out and "0 running" in out
    # wrapped between words at 80 columns, not left for the terminal to cut mid-word (the
    # bar's redraws, carriage returns and cursor codes, are not lines)
    printed = [ln for ln in out.splitlines() if "\r" not in ln and "\x1b" not in ln]
    assert printed[0].startswith("3 cells as") and len(printed) >= 3, out
    assert max(len(ln.rstrip()) for ln in printed) <= 80, out


def test_a_terminal_line_never_breaks_a_number_from_its_unit(capsys, monkeypatch):
    """A command's prose lines wrap between words on a terminal of 80 columns, but never
    between a number and its unit (`evaluate`'s line showed "top-5 99.7" and "%" on two)."""
    from mixerbench import view

    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal, as rich takes it
    monkeypatch.setenv("COLUMNS", "80")
    line = ("vit-t4 d2 h2 w64 on mnist-5k (test, 28 px, eval-plain): top-1 92.9 %, top-5 99.7 %, "
            "loss 0.2146 over 1,000 images at 1,692 img/s")
    view.say(f"[bold green]{line}[/]")
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert " ".join(out.split()) == line  # every word, in order
    lines = out.splitlines()
    assert len(lines) == 2 and max(len(ln.rstrip()) for ln in lines) <= 80, out
    assert lines[0].rstrip().endswith("top-5") and lines[1].startswith("99.7 %"), out
    factor = "MFU n/a: no datasheet peak is known for this CPU; train FLOPs = 3 x forward."
    for width in range(30, 81):  # a factor stays with its number too, at every width
        monkeypatch.setenv("COLUMNS", str(width))
        view.say(factor)
        out = capsys.readouterr().out
        assert " ".join(out.split()) == factor and not re.search(r"^x ", out, re.M), (width, out)


def test_claims_on_a_terminal_wrap_under_their_indent_and_keep_units(capsys, monkeypatch):
    """`claims` on a terminal of 60 to 120 columns: each verdict's lines wrap under its indent,
    every word kept in order, and never between a number and its unit ("3 x forward", "5.30
    img/s")."""
    import sys

    from mixerbench import view
    from mixerbench.report.claims import check, to_text

    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    verdicts = check(ROOT / "results")
    said = " ".join(" ".join(line for _, line in to_text(verdicts)).split())
    units = re.compile(r"^\s*(%|px|img/s|ms|s|min|h|[kMGTP]?FLOPs|x)(?![\w/])")
    for width in range(60, 121, 4):
        monkeypatch.setenv("COLUMNS", str(width))
        view.claims(verdicts, view.Format.table, None, None)
        out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
        assert " ".join(out.split()) == said, width
        lines = out.splitlines()
        assert max(len(ln.rstrip()) for ln in lines) <= width, (width, out)
        assert not [ln for ln in lines if units.match(ln)], (width, out)


def test_counted_progress_on_a_pipe_is_a_few_lines(monkeypatch):
    """A part counted in many updates (80 for 4,000 JPEGs) gives a log its line and then one
    with the count every PLAIN_SECONDS, not a line per update."""
    import time

    from rich.console import Console

    from mixerbench.events import Event
    from mixerbench.view import ProgressView

    view = ProgressView(quiet=True)  # as on a pipe
    buf = io.StringIO()
    view.console = Console(file=buf, width=80, color_system=None)
    monkeypatch.setattr(view, "STAGE_SECONDS", 0.01)
    monkeypatch.setattr(view, "PLAIN_SECONDS", 0.3)
    start = time.monotonic()
    for i in range(0, 4000, 50):  # each update slower than a stage takes to print its line
        view(Event.PROGRESS, dict(what="writing JPEGs into jpegs", done=i + 1, total=4000))
        time.sleep(0.02)
    view(Event.PROGRESS, dict(what="writing JPEGs into jpegs", done=4000, total=4000))
    took = time.monotonic() - start
    view.stop()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "writing JPEGs into jpegs", lines
    assert all(re.fullmatch(r"writing JPEGs into jpegs: [\d,]+/4,000", ln) for ln in lines[1:])
    assert 2 <= len(lines) <= 2 + took / 0.3 and len(lines) < 40, lines


# --------------------------------------------------------------------------- config loop


def test_print_config_then_config_trains_the_same_run(tmp_path):
    run = [*TINY, "--steps", "2", "--results-dir", str(tmp_path)]
    printed = cli("pretrain", *run, "--print-config")
    assert printed.exit_code == 0, printed.output
    config = json.loads(printed.output)
    assert config["resolved"]["width"] == 16 and config["resolved"]["depth"] == 1
    path = tmp_path / "c.json"
    path.write_text(printed.output)
    again = cli("pretrain", "--config", str(path), "--print-config")
    assert json.loads(again.output) == config  # read back, printed the same
    trained = cli("pretrain", "--config", str(path), "--results-dir", str(tmp_path))
    assert trained.exit_code == 0, trained.output
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [config["run_id"]]
    # options and --set win over the file; a YAML file reads the same
    yaml = __import__("yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"optim": {"lr": 0.01}, "steps": 3}))
    over = json.loads(cli("pretrain", *run, "--config", str(tmp_path / "c.yaml"),
                          "--set", "steps=5", "--print-config").output)
    assert over["optim"]["lr"] == 0.01 and over["steps"] == 5


def test_printed_config_shows_the_resolved_width_and_depth():
    r = cli("pretrain", "--preset", "cifar10-scratch", "--print-config")
    assert r.exit_code == 0, r.output
    config = json.loads(r.output)
    assert config["model"]["width"] is None  # the run's identity is unchanged...
    assert (config["resolved"]["width"], config["resolved"]["depth"]) == (256, 8)  # ...resolved


@pytest.mark.parametrize("content,words", [
    ("[1, 2]", "not settings"), ("{not json", "not readable JSON"),
    ('{"optim": {"lrr": 0.1}}', "optim.lr"),
])
def test_a_bad_config_file_is_one_sentence(tmp_path, content, words):
    path = tmp_path / "c.json"
    path.write_text(content)
    assert words in refused(cli("pretrain", "--config", str(path), "--print-config"))


def test_a_sweep_config_may_not_set_what_each_cell_sets(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"model": {"name": "vit-t4"}, "optim": {"lr": 0.01}}')
    line = refused(cli("compare", "--config", str(path), "--print-config"))
    assert "model.name" in line and "each of its cells" in line


def test_settings_lists_every_key_with_its_meaning():
    from mixerbench.config import MEANING, schema

    keys = [k for k, _, _ in schema()]
    assert set(MEANING) == set(keys)
    r = cli("settings", "--format", "csv")
    assert r.exit_code == 0
    listed = [line.split(",")[0] for line in r.output.splitlines()[1:]]
    assert listed == keys
    assert "mixerbench settings" in refused(cli("pretrain", "--set", "nosuch=1", "--print-config"))
    r = cli("settings", "optim.*", env={"COLUMNS": "80"})
    assert r.exit_code == 0 and "peak learning rate" in r.output and "…" not in r.output


def test_compare_and_reproduce_take_steps_and_print_their_configs():
    r = cli("compare", "--models", "mixer,vit", "--steps", "3", "--print-config")
    assert r.exit_code == 0, r.output
    configs = json.loads(r.output)
    assert [c["steps"] for c in configs] == [3, 3] and all(c["epochs"] is None for c in configs)
    assert [c["model"]["name"] for c in configs] == ["mixer-t4", "vit-t4"]
    r = cli("reproduce", "shuffle", "--steps", "2", "--print-config")
    assert r.exit_code == 0, r.output
    assert {c["steps"] for c in json.loads(r.output)} == {2}
    # transfer: the sizes given reach its three downstream runs too (pre-training, fine-tuning
    # at 1x and 2x, from scratch); without them the downstream runs take the budget's 300 steps
    r = cli("reproduce", "transfer", "--steps", "2", "--set", "max_eval_examples=50",
            "--print-config")
    assert r.exit_code == 0, r.output
    configs = json.loads(r.output)
    assert [(c["steps"], c["max_eval_examples"]) for c in configs] == [(2, 50)] * 4
    r = cli("reproduce", "transfer", "--print-config")
    assert r.exit_code == 0, r.output
    assert [c["steps"] for c in json.loads(r.output)][1:] == [300, 300, 300]


# ------------------------------------------------------------------------------- dry run


def test_dry_run_plans_and_estimates_and_writes_nothing(tmp_path, monkeypatch):
    from mixerbench import plan

    # the probe's warm-up and timed phases, each its minimum of steps (9 s of probing otherwise)
    monkeypatch.setattr(plan, "PROBE_WARMUP_S", 0.1)
    monkeypatch.setattr(plan, "PROBE_TIMED_S", 0.1)
    root = tmp_path / "results"
    r = cli("compare", "--models", "mixer", *[a for k in ("steps=3", "model.width=8",
                                                        "model.depth=1")
                                               for a in ("--set", k)],
            "--dry-run", "--on", "h100:0.5", "--results-dir", str(root), env={"COLUMNS": "120"})
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "1 training run" in text and "nothing written" in text
    assert re.search(r"total: 3 steps, 384 training images, [\d.]+ [kMGT]?FLOPs to train", text), text
    assert "here: about" in text and "device-hours" in text
    assert "on one H100 SXM" in text and "at 50% MFU" in text
    assert not root.exists()


def test_runs_at_once_share_the_cores():
    """The estimate runs the cells as the launcher will: k processes of t threads on c cores
    each go at min(1, c / (k t)) of their speed alone."""
    from mixerbench.plan import Lanes, shared_wall

    assert shared_wall([10, 10, 10], Lanes(1, 2, 2)) == 30  # one after another
    assert shared_wall([10, 10, 10], Lanes(3, 1, 2, jobs=True)) == pytest.approx(15)
    assert shared_wall([10, 20], Lanes(2, 1, 2, jobs=True)) == pytest.approx(20)
    assert shared_wall([0, 10], Lanes(2, 1, 1, jobs=True)) == 10  # a finished run is read back


def test_dry_run_of_a_launched_sweep_says_how_its_runs_go(tmp_path, monkeypatch):
    from mixerbench import plan

    monkeypatch.setattr(plan, "PROBE_WARMUP_S", 0.1)
    monkeypatch.setattr(plan, "PROBE_TIMED_S", 0.1)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    r = cli("compare", "--models", "mixer,vit", *[a for k in ("steps=3", "model.width=8",
                                                             "model.depth=1")
                                                  for a in ("--set", k)],
            "--launcher", "local", "--parallel", "2", "--dry-run", "--results-dir",
            str(tmp_path / "r"), env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "…" not in r.output and re.search(r"\n  model mixer.* 3 +384 ", r.output), r.output
    text = " ".join(r.output.split())
    cores = len(__import__("os").sched_getaffinity(0))
    threads = max(1, cores // 2)
    assert (f"2 runs at once as processes of {threads} torch thread{'s' * (threads > 1)} on "
            f"{cores} cores") in text, text


def test_a_paper_row_is_costed_beside_the_papers_core_days(tmp_path):
    r = cli("pretrain", "--preset", "imagenet-mixer-b16", "--dry-run", "--results-dir",
            str(tmp_path / "r"))
    if r.exit_code == 2 and "imagenet" in r.output.lower():
        pytest.skip("no ImageNet copy here: its size cannot be counted")
    assert "TPU-v3 core-days" in r.output


def test_the_readmes_headline_table_is_the_formatters():
    """README.md's compare table is the committed table's short view through the one
    formatter (to_markdown), not numbers typed by hand; and no accuracy in the README's text
    carries more than the formatter's one decimal."""
    import pandas as pd

    from mixerbench.report.tables import compare_view, to_markdown

    readme = (ROOT / "README.md").read_text()
    head = re.search(r"<!-- mixerbench table: (\S+): [^>]*-->\n(.*?)<!-- mixerbench table: end -->",
                     readme, re.S)
    table = compare_view(pd.read_csv(ROOT / head.group(1)))
    expected = to_markdown(table[["model", "params", "gflops", "top1_mean", "top1_std", "n",
                                  "fewshot_top1"]])
    assert head.group(2) == expected, "regenerate the README's table:\n" + expected
    prose = re.sub(r"```.*?```", "", readme, flags=re.S)
    # the formatter gives one decimal to an accuracy, 3 significant digits to a rate: a number
    # of 10 or more with two decimals before a % or a spread came from somewhere else
    typed = re.findall(r"\b\d\d+\.\d\d(?: ?%| ±)", prose)
    assert not typed, typed


def test_a_long_compare_tag_stays_over_its_own_panel():
    """Titles wrap to their panel: a compare with settings on top of its preset has a long tag
    (it ran over the next panel's title)."""
    import pandas as pd

    from mixerbench.report import figures

    acc = pd.read_csv(ROOT / "results" / "accuracy.csv")
    tag = "compare:cifar10-scratch[data.randaug_m=10,model.width=256,optim.lr=0.001,steps=20000]"
    acc["experiment"] = acc["experiment"].where(~acc["experiment"].str.startswith("compare"), tag)
    for fig in (figures.pareto_cost(acc),
                figures.accuracy_throughput(acc, pd.read_csv(ROOT / "results" / "throughput.csv"))):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [(ax.title.get_window_extent(renderer), ax.get_window_extent(renderer))
                 for ax in fig.axes if ax.get_title()]
        assert any(tag.split("[")[0] in ax.get_title() for ax in fig.axes)
        for i, (title, panel) in enumerate(boxes):
            assert title.width <= panel.width * 1.05, fig.axes[i].get_title()
            assert not any(title.overlaps(other) for other, _ in boxes[i + 1:])


def test_a_long_word_in_a_prose_column_folds_and_is_never_cut(capsys, monkeypatch):
    """A dataset's source folder is one long word: it folds onto the next line whole."""
    from mixerbench import view

    monkeypatch.setenv("COLUMNS", "80")
    path = "/tmp/mixerbench-screens-mn073yeu/work/a-folder-of-jpegs-written-for-the-bench"
    view.emit([{"field": "source", "value": f"local imagefolder {path}"}], view.Format.table)
    out = capsys.readouterr().out
    assert "…" not in out and path in "".join(ln.strip() for ln in out.splitlines()[3:]), out


def test_a_compare_that_reads_back_a_pretrained_run_is_titled_by_its_own_tag(tmp_path):
    """The smoke Mixer trained by `pretrain` is the compare's seed-0 Mixer (same run id): the
    compare reads it back, and its title still names the compare's preset (it read "nan")."""
    over = [a for k in ("model.width=8", "model.depth=1") for a in ("--set", k)]
    root = str(tmp_path / "r")
    assert cli("pretrain", "--preset", "smoke", "--steps", "3", *over, "--results-dir",
               root).exit_code == 0
    r = cli("compare", "--models", "mixer,vit", "--steps", "3", *over, "--no-bench",
            "--results-dir", root, env={"COLUMNS": "120"})
    assert r.exit_code == 0, r.output
    assert "read back" in r.output and "compare on mnist-5k, preset smoke," in r.output, r.output
