"""Experiment trackers: each tool's own reader finds the config, the metrics.csv rows at their
steps and the summary; everything stays under the results folder; bad or missing trackers
exit 2 before any work; a failing tracker costs a warning, never a CSV row; rank 0 alone logs."""

import csv
import importlib.util
import json
import os
import struct
import sys
from pathlib import Path

import pytest
from conftest import TINY, cli, refused

from mixerbench import results

# conftest's TINY for 4 steps, evaluated every 2
RUN = [*TINY, "--steps", "4", "--set", "eval_every=2"]
# the trackers whose packages are here: tensorboard always (the dev extra), the others if present
OPTIONAL = [t for t in ("wandb", "mlflow") if importlib.util.find_spec(t)]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One tiny pretrain run logged to every tracker installed here, from an empty working
    folder with an empty HOME, so that any file written outside the results folder shows."""
    pytest.importorskip("tensorboard")
    base = tmp_path_factory.mktemp("trackers")
    home, cwd, root = base / "home", base / "cwd", base / "results"
    home.mkdir(), cwd.mkdir()
    saved = {k: os.environ.get(k) for k in ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME",
                                            "XDG_DATA_HOME", "WANDB_MODE", "MLFLOW_TRACKING_URI")}
    for k in saved:
        os.environ.pop(k, None)
    os.environ["HOME"] = str(home)
    old_cwd = os.getcwd()
    os.chdir(cwd)
    try:
        r = cli("pretrain", *RUN, "--results-dir", str(root),
                "--tracker", ",".join(["tensorboard", *OPTIONAL]))
    finally:
        os.chdir(old_cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output, r.output
    run_dir = next((root / "runs").iterdir())
    # the command says where each tracker wrote the run
    assert f"tensorboard: {run_dir.name} in {run_dir / 'tb'}" in " ".join(r.output.split()), r.output
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return dict(root=root, run_dir=run_dir, rows=rows, home=home, cwd=cwd,
                summary=json.loads((run_dir / "summary.json").read_text()))


def test_tensorboard_event_files_hold_the_metrics_and_hyperparameters(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    ea = EventAccumulator(str(tracked["run_dir"] / "tb"))
    ea.Reload()
    # the groups tracker users expect: train/..., and test/... for a run evaluated on test
    top1 = [(e.step, e.value) for e in ea.Scalars("test/top1")]
    assert [s for s, _ in top1] == [2, 4]
    assert top1 == [(int(r["step"]), pytest.approx(float(r["top1"]))) for r in tracked["rows"]]
    loss = [(e.step, e.value) for e in ea.Scalars("train/loss")]
    assert loss == [(int(r["step"]), pytest.approx(float(r["train_loss"]))) for r in tracked["rows"]]
    assert {"train/lr", "train/img_per_sec", "test/loss", "test/top5"} <= set(ea.Tags()["scalars"])
    assert not {"top1", "train_loss", "eval_loss"} & set(ea.Tags()["scalars"])
    assert ea.Scalars("summary/top1")[-1].value == pytest.approx(tracked["summary"]["top1"])
    hp = plugin_data_pb2.HParamsPluginData.FromString(
        ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info.hparams
    assert hp["model.width"].number_value == 16 and hp["data.dataset"].string_value == "synthetic"


def test_mlflow_run_holds_params_metric_history_summary_and_stays_in_the_results_folder(tracked):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    root = tracked["root"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mixerbench").experiment_id],
                                f"tags.`mixerbench.run_id` = '{tracked['run_dir'].name}'")
    assert run.info.run_name == tracked["run_dir"].name and run.info.status == "FINISHED"
    assert run.data.params["model.width"] == "16" and run.data.params["data.dataset"] == "synthetic"
    history = client.get_metric_history(run.info.run_id, "test/top1")
    assert sorted((m.step, m.value) for m in history) == [
        (int(r["step"]), pytest.approx(float(r["top1"]))) for r in tracked["rows"]]
    assert run.data.metrics["summary/top1"] == pytest.approx(tracked["summary"]["top1"])
    assert "train/loss" in run.data.metrics
    assert run.data.tags["mixerbench.model"] == tracked["summary"]["model"]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["summary.json"]
    assert run.info.artifact_uri.startswith((root / "mlflow").as_uri())


def _wandb_records(path: Path):
    """The records of an offline W&B run file (LevelDB log blocks of protobuf `Record`s), read
    without the network or the wandb service."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, chunk = path.read_bytes(), 7, b""  # 7: the ':W&B' file header
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer padding
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            break
        chunk = data[pos + 7:pos + 7 + n] if kind in (1, 2) else chunk + data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a whole record, or the last piece of one
            yield pb.Record.FromString(chunk)


def test_wandb_offline_run_holds_config_history_and_summary_under_the_results_folder(tracked):
    pytest.importorskip("wandb")
    (offline,) = (tracked["root"] / "wandb").glob("offline-run-*/run-*.wandb")
    recs = list(_wandb_records(offline))
    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    config = {u.key: json.loads(u.value_json)
              for r in recs if r.WhichOneof("record_type") == "config" for u in r.config.update}
    assert run.display_name == tracked["run_dir"].name and run.run_group == ""
    assert config["model"]["width"] == 16 and config["data"]["dataset"] == "synthetic"
    history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
               for r in recs if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["test/top1"]) for h in history if "test/top1" in h] == [
        (int(r["step"]), pytest.approx(float(r["top1"]))) for r in tracked["rows"]]
    summary = {(u.key or "/".join(u.nested_key)): json.loads(u.value_json)
               for r in recs if r.WhichOneof("record_type") == "summary" for u in r.summary.update}
    assert summary["train_seconds"] == pytest.approx(tracked["summary"]["train_seconds"])
    assert summary["model"] == tracked["summary"]["model"]


def test_nothing_is_written_outside_the_results_folder(tracked):
    assert list(tracked["cwd"].iterdir()) == []
    leaked = [p for p in tracked["home"].rglob("*") if any(
        t in p.name.lower() for t in ("wandb", "mlflow", "mlruns", "mlartifacts", "tensorboard"))]
    assert leaked == []


def test_evaluate_and_plot_log_their_numbers_and_figures(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, run_dir = tracked["root"], tracked["run_dir"]
    r = cli("evaluate", "--checkpoint", str(run_dir), "--dataset", "synthetic", "--device", "cpu",
            "--max-examples", "100", "--results-dir", str(root), "--tracker", "tensorboard")
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    (tb,) = (root / "tb").glob("evaluate-*")
    ea = EventAccumulator(str(tb))
    ea.Reload()
    acc = results.load("accuracy", root)
    measured = acc[acc["kind"] == "evaluate"].iloc[-1]
    assert ea.Scalars("test/top1")[-1].value == pytest.approx(measured["top1"])
    r = cli("plot", "curves", "--results-dir", str(root), "--tracker", "tensorboard")
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    (tb,) = (root / "tb").glob("plot-*")
    ea = EventAccumulator(str(tb))
    ea.Reload()
    assert ea.Tags()["images"] == ["figures/curves"]


def test_resumed_run_continues_its_mlflow_run(tracked):
    pytest.importorskip("mlflow")
    from mixerbench.trackers import open_trackers

    from mlflow.tracking import MlflowClient

    first = open_trackers(["mlflow"], tracked["root"], "interrupted-run")
    first.log_metrics(2, {"top1": 10.0})
    first.close("killed")
    again = open_trackers(["mlflow"], tracked["root"], "interrupted-run", resume_step=2)
    again.log_metrics(4, {"top1": 20.0})
    again.close()
    client = MlflowClient(f"sqlite:///{tracked['root'] / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mixerbench").experiment_id],
                              filter_string="tags.`mixerbench.run_id` = 'interrupted-run'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "top1")] == [2, 4]


def test_compare_groups_its_runs_and_logs_the_figures_plot_draws(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tracked["root"]
    tools = ["tensorboard"] + [t for t in OPTIONAL if t == "mlflow"]
    r = cli("compare", "--models", "mixer", "--no-bench", "--dataset", "synthetic", "--device",
            "cpu", *[a for k, v in (("steps", 4), ("eval_every", 2), ("model.img_size", 32),
                                    ("data.batch_size", 50), ("model.width", 8),
                                    ("model.depth", 1)) for a in ("--set", f"{k}={v}")],
            "--results-dir", str(root), "--tracker", ",".join(tools))
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    (tb,) = (root / "tb").glob("compare-smoke-*")
    ea = EventAccumulator(str(tb))
    ea.Reload()
    assert "figures/curves" in ea.Tags()["images"]
    # the table the compare wrote (its name carries the recipe's settings), logged by that name
    (table,) = (root / "tables").glob("compare-synthetic-smoke*.md")
    assert f"tables/{table.stem}/text_summary" in ea.Tags()["tensors"]
    if "mlflow" in tools:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("compare-smoke").experiment_id])
        kinds = sorted(run.data.tags["mixerbench.kind"] for run in runs)
        assert kinds == ["compare", "pretrain"]
        report = next(run for run in runs if run.data.tags["mixerbench.kind"] == "compare")
        figures = [a.path for a in client.list_artifacts(report.info.run_id, "figures")]
        assert "figures/curves.png" in figures


# ---------------------------------------------------------------------- refusals and failures


def test_unknown_tracker_exits_2_with_one_line(tmp_path):
    line = refused(cli("pretrain", *RUN, "--results-dir", str(tmp_path),
                              "--tracker", "tensorboard,nosuch"))
    assert "nosuch" in line and "tensorboard, wandb, mlflow" in line
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["pretrain", "compare"])
def test_missing_tracker_package_exits_2_naming_the_extra_before_any_work(tmp_path, monkeypatch,
                                                                          command):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    args = RUN if command == "pretrain" else ["--models", "mixer", "--dataset", "synthetic"]
    line = refused(cli(command, *args, "--results-dir", str(tmp_path),
                              "--tracker", "tensorboard,wandb"))
    assert 'pip install "mixerbench[trackers]"' in line and "wandb" in line
    assert not (tmp_path / "runs").exists()


def test_a_failing_tracker_warns_once_and_every_csv_row_is_kept(tmp_path, monkeypatch):
    from mixerbench import trackers

    class Broken(trackers._TensorBoard):
        def metrics(self, step, values):
            raise OSError("disk quota exceeded")

    monkeypatch.setitem(trackers.BACKENDS, "tensorboard", Broken)
    r = cli("pretrain", *RUN, "--results-dir", str(tmp_path), "--tracker", "tensorboard")
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "tensorboard" in warnings[0] and "disk quota" in warnings[0]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert [r["step"] for r in results.read_metrics(run_dir / "metrics.csv")] == [2, 4]
    assert len(results.load("accuracy", tmp_path)) == 1


def test_only_rank_zero_logs_under_torchrun(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from mixerbench.trackers import Tracked

    seen = []
    monkeypatch.setenv("RANK", "1")
    tracked = Tracked(lambda event, info: seen.append(event), ["tensorboard"])
    run_dir = tmp_path / "runs" / "r"
    tracked("start", dict(run_dir=str(run_dir), step=0, config={"kind": "pretrain"}))
    tracked("eval", dict(step=2, top1=50.0))
    tracked("end", dict(run_dir=str(run_dir), top1=50.0, steps=2))
    assert seen == ["start", "eval", "end"]  # the progress display still gets every event
    assert list(tmp_path.rglob("*")) == []
    monkeypatch.setenv("RANK", "0")
    tracked("start", dict(run_dir=str(run_dir), step=0, config={"kind": "pretrain"}))
    tracked.close()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
