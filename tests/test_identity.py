"""Run identity: what names a run, how runs survive upgrades, and what is credited to a run.

The contract (mixerbench/config.py, "Run identity"): the run id hashes what identifies the
experiment, the settings of the first release exactly as it hashed them (so every committed
row still names its run), later settings only when not at their default, a dataset given as a
path by its absolute path, `--init` weights by their sha256. Read-back is checked, not
trusted: a checkpoint, training state or summary that is not its run's own is refused; a run
restarted without training state writes no metric row twice; fewshot.csv keeps one row per
(run, shots, probe), shuffle.csv one per (run, permutation, metric, images, probe). Tiny Mixers on the embedded `synthetic` set, CPU, offline.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import field, make_dataclass
from pathlib import Path

import pytest
from conftest import ROOT, TINY, cli, refused, start

from mixerbench import config, presets, results
from mixerbench.config import from_dict, run_id

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = ["--model", "vit"]  # the smoke ViT: small, and a shape timm rebuilds (so `export` works)


@pytest.fixture(autouse=True)
def shipped_results_untouched():
    """No test here writes into the repository's own results folder."""
    before = {p.name: p.read_bytes() for p in (ROOT / "results").glob("*.csv")}
    yield
    assert {p.name: p.read_bytes() for p in (ROOT / "results").glob("*.csv")} == before


def ok(r):
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def pretrain(root, *extra):
    return cli("pretrain", *TINY, "--steps", "4", "--set", "eval_every=2", "--results-dir", root,
               *extra)


def finetune(root, init, *extra):
    return cli("finetune", "--init", init, "--dataset", "synthetic", "--steps", "2", "--device",
               "cpu", "--set", "data.batch_size=50", "--set", "optim.warmup_steps=1",
               "--results-dir", root, *extra)


def printed_id(*args) -> str:
    return json.loads(ok(cli(*args, "--print-config")))["run_id"]


# ------------------------------------------------------------- ids of the committed results


def test_every_committed_pretraining_row_keeps_its_run_id(monkeypatch, tmp_path):
    """The commands behind results/*.csv (results/README.md) give today the run ids their rows
    carry: compare (mnist-5k), the 30-epoch CIFAR-10 runs, shuffle, data scaling and transfer's
    upstream and from-scratch runs. Transfer's two fine-tuning rows change id: their source
    weights are now part of their identity, and those rows do not record them."""
    from committed import SEEDS

    from mixerbench import experiments

    committed = {r["run_id"]: r for r in rows(ROOT / "results" / "accuracy.csv")}
    # the five-family compare, measured after the smoke ResNet lost its no-op stem_width
    compared = [c.config() for c in experiments.compare_cells(
        ["mixer", "vit", "resnet", "gmlp", "resmlp"], dataset=None, preset="smoke", seeds=3,
        epochs=None, root="results", data_dir=None, device=None, overrides=None)]
    cfgs = []
    for family in ("mixer", "vit", "resnet"):
        cfgs.append(presets.resolve("smoke", model=family, dataset="cifar10",
                                    flags={"data.data_dir": "../shared/data", "epochs": 30},
                                    overrides={"data.pipeline": "small", "model.img_size": "32",
                                               "eval_every": "1172"}))

    # transfer's upstream run: a checkpoint holding only its model description (the downstream
    # cells read it to rebuild the architecture from scratch)
    import torch
    from safetensors.torch import save_file

    upstream = tmp_path / "upstream"
    upstream.mkdir()
    save_file({"w": torch.zeros(1)}, str(upstream / "checkpoint-last.safetensors"), metadata={
        "mixerbench_model": json.dumps(dict(name="mixer-t4", num_classes=10, img_size=32,
                                            patch_size=4, overrides=dict(width=64, depth=2)))})

    class Planned(Exception):
        pass

    def plan(cells, launcher, log):
        configs = [c.config() for c in cells]
        cfgs.extend(c for c in configs if c.kind == "pretrain")  # fine-tuning ids changed
        if cells[0].experiment == "transfer" and len(cells) == 1:
            return [dict(run_dir=str(upstream))]
        raise Planned

    monkeypatch.setattr(experiments, "run_cells", plan)
    for artifact, seeds in SEEDS.items():  # seed 0 is the command without --set seed
        for seed in seeds:
            with pytest.raises(Planned):
                experiments.reproduce(artifact, budget="cpu", data_dir="../shared/data",
                                      root="results",
                                      overrides={"seed": str(seed)} if seed else None)
    # The committed ResNet rows were trained with a `stem_width` option that had no effect and
    # that the smoke preset no longer sets, so today's ResNet command is another experiment (the
    # old runs still read back); every other one keeps its id.
    cfgs = compared + [c for c in cfgs if c.model.name != "resnet18"]
    ids = [run_id(c) for c in cfgs]
    assert set(ids) <= set(committed), sorted(set(ids) - set(committed))
    pretraining = {i for i, r in committed.items()
                   if r["kind"] == "pretrain" and "stem_width" not in r["model"]}
    # seed 0: 15 compare, 2 30-epoch, 3 shuffle, 8 data scaling and 2 transfer runs (upstream,
    # from scratch); each later transfer seed 2 more
    assert pretraining == set(ids) and len(set(ids)) == 30 + 2 * (len(SEEDS["transfer"]) - 1)
    assert all(c.data.path is None and c.init_sha256 is None for c in cfgs)  # registry names


# ---------------------------------------------------------------- runs survive new settings


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny ViT run, written before any setting below was added."""
    root = tmp_path_factory.mktemp("finished")
    ok(pretrain(root, *VIT))
    (run,) = (root / "runs").iterdir()
    return root, run


def with_new_setting(monkeypatch, **new) -> type:
    """Add top-level settings with defaults to the config classes, as a contributor adds one
    (one dataclass field), for every module that builds configs."""
    cls = make_dataclass("RunConfig", [(k, type(v), field(default=v)) for k, v in new.items()],
                         bases=(config.RunConfig,), frozen=True)
    monkeypatch.setattr(config, "RunConfig", cls)
    monkeypatch.setattr(presets, "RunConfig", cls)
    return cls


def test_a_new_setting_changes_no_run_id_and_finished_runs_still_read_back(finished, monkeypatch,
                                                                          tmp_path):
    root, run = finished
    before = json.loads((run / "config.json").read_text())
    cmd = ["pretrain", *TINY, "--steps", "4", "--set", "eval_every=2", *VIT]
    assert printed_id(*cmd) == run.name
    cls = with_new_setting(monkeypatch, warmup_shape="linear", grad_noise=0.0)
    assert printed_id(*cmd) == run.name  # the same command names the same run
    back = from_dict(before, "config.json")  # written before the settings existed
    assert isinstance(back, cls) and back.warmup_shape == "linear" and run_id(back) == run.name
    # every command works on the old run, and the same pretrain command reads it back
    out = ok(cli(*cmd, "--results-dir", root))
    assert "already finished" in out
    assert len(rows(root / "accuracy.csv")) == 1
    ok(cli("evaluate", "--checkpoint", run, "--dataset", "synthetic", "--results-dir", tmp_path))
    ok(cli("export", run, tmp_path / "exported"))
    ok(finetune(tmp_path, run))
    # a run that uses a new setting at another value is another run
    assert printed_id(*cmd, "--set", "grad_noise=0.1") != run.name
    # unknown keys are still refused
    planted = tmp_path / "runs" / run.name
    shutil.copytree(run, planted)
    (planted / "config.json").write_text(json.dumps(dict(before, from_the_future=1)))
    assert "not a config this version wrote" in refused(
        cli("evaluate", "--checkpoint", planted, "--dataset", "synthetic", "--results-dir",
            tmp_path))


def test_a_config_json_without_later_settings_reads_back_with_their_defaults(finished, tmp_path):
    """A config.json without `ckpt_every` and `compile` (both at their defaults, as one written
    before they existed): evaluate, export, finetune --init and the same pretrain command all
    work."""
    root, run = finished
    old_root = tmp_path / "old"
    shutil.copytree(root, old_root)
    old = old_root / "runs" / run.name
    stored = json.loads((old / "config.json").read_text())
    for key in ("ckpt_every", "compile"):
        del stored[key]
    (old / "config.json").write_text(json.dumps(stored, indent=2))
    assert "already finished" in ok(pretrain(old_root, *VIT))
    ok(cli("evaluate", "--checkpoint", old, "--dataset", "synthetic", "--results-dir", old_root))
    ok(cli("export", old, tmp_path / "exported"))
    ok(finetune(tmp_path / "ft", old))


def test_a_run_whose_stored_settings_really_differ_is_refused(finished, tmp_path):
    ok(pretrain(tmp_path, "--run-name", "named"))
    line = refused(pretrain(tmp_path, "--run-name", "named", "--set", "optim.lr=0.002"))
    assert "another configuration" in line and "optim.lr" in line


# ------------------------------------------------- identity includes what inputs resolve to


def image_folder(path: Path, classes: int, per_class: int = 6) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(classes)
    for split in ("train", "test"):
        for c in range(classes):
            for i in range(per_class):
                f = path / split / f"class{c}" / f"{i}.png"
                f.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(f)


def test_a_relative_dataset_path_from_two_folders_is_two_runs(tmp_path, monkeypatch):
    """`--dataset ds` in a/ (2 classes) and in b/ (3 classes): two runs, each on its own data;
    the run on a/ds is never returned for b/ds."""
    root = tmp_path / "results"
    image_folder(tmp_path / "a" / "ds", 2)
    image_folder(tmp_path / "b" / "ds", 3)
    cmd = ["pretrain", "--preset", "smoke", "--dataset", "ds", "--img-size", "16", "--device",
           "cpu", "--set", "model.width=16", "--set", "model.depth=1", "--set",
           "data.batch_size=4", "--steps", "2", "--set", "data.pipeline=small", "--results-dir",
           root]
    made = {}
    for folder in ("a", "b"):
        monkeypatch.chdir(tmp_path / folder)
        out = ok(cli(*cmd))
        assert "already finished" not in out
        made[folder] = json.loads(ok(cli(*cmd, "--print-config")))
    assert made["a"]["run_id"] != made["b"]["run_id"]
    for folder, classes in (("a", 2), ("b", 3)):
        run = root / "runs" / made[folder]["run_id"]
        stored = json.loads((run / "config.json").read_text())
        assert stored["data"]["path"] == str((tmp_path / folder / "ds").resolve())
        from mixerbench.models.weights import read_metadata

        assert read_metadata(run / "checkpoint-last.safetensors")["num_classes"] == classes
    assert len(rows(root / "accuracy.csv")) == 2
    # a registry name keeps its id wherever it is found
    assert "path" not in config.identity(presets.resolve("smoke", dataset="synthetic"))["data"]


def test_one_dataset_is_one_run_whatever_its_spelling():
    """A registry name's spellings (any case, its aliases) name one dataset, so one run; the
    config records the registry name."""
    spellings = ("cifar10", "CIFAR-10", "cifar-10")
    ids = {printed_id("pretrain", "--preset", "smoke", "--dataset", d) for d in spellings}
    assert len(ids) == 1
    assert {presets.resolve("smoke", dataset=d).data.dataset for d in spellings} == {"cifar10"}


def test_init_is_identified_by_its_weights(tmp_path):
    """finetune --init SRC after SRC was re-trained under another config is another run, not
    the stale fine-tuning of the old weights."""
    root = tmp_path / "r"
    ok(pretrain(root, "--run-name", "src"))
    src = root / "runs" / "src"
    first = json.loads(ok(finetune(root, src, "--print-config")))
    assert first["init_sha256"] and len(first["init_sha256"]) == 64
    assert "already finished" not in ok(finetune(root, src))
    assert "already finished" in ok(finetune(root, src))
    shutil.rmtree(src)
    ok(pretrain(root, "--run-name", "src", "--set", "optim.lr=0.002"))  # re-trained: other weights
    second = json.loads(ok(finetune(root, src, "--print-config")))
    assert second["run_id"] != first["run_id"]
    assert "already finished" not in ok(finetune(root, src))
    finetuned = [r for r in rows(root / "accuracy.csv") if r["kind"] == "finetune"]
    assert sorted(r["run_id"] for r in finetuned) == sorted([first["run_id"], second["run_id"]])


def test_a_named_fine_tuning_from_before_weights_were_recorded_is_refused_with_the_reason(
        tmp_path):
    ok(pretrain(tmp_path, "--run-name", "src"))
    src = tmp_path / "runs" / "src"
    ok(finetune(tmp_path, src, "--run-name", "ft"))
    path = tmp_path / "runs" / "ft" / "config.json"
    stored = json.loads(path.read_text())
    del stored["init_sha256"], stored["config_hash"]  # as written before the setting existed
    path.write_text(json.dumps(dict(stored, config_hash=config.config_hash(from_dict(stored)))))
    line = refused(finetune(tmp_path, src, "--run-name", "ft"))
    assert "fine-tuned before runs recorded their source weights" in line


# -------------------------------------------------------- only a run's own files are its own


def test_a_checkpoint_copied_from_another_run_is_refused(tmp_path):
    ok(pretrain(tmp_path, "--run-name", "one"))
    ok(pretrain(tmp_path, "--run-name", "two", "--set", "optim.lr=0.002"))
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    shutil.copy(two / "checkpoint-last.safetensors", one / "checkpoint-last.safetensors")
    before = (tmp_path / "accuracy.csv").read_bytes()
    for r in (cli("evaluate", "--checkpoint", one, "--dataset", "synthetic", "--results-dir",
                  tmp_path),
              cli("evaluate", "--checkpoint", one / "checkpoint-last.safetensors", "--dataset",
                  "synthetic", "--results-dir", tmp_path),
              finetune(tmp_path, one),
              cli("export", one, tmp_path / "out")):
        assert "was not written by run one" in refused(r)
    assert (tmp_path / "accuracy.csv").read_bytes() == before
    assert not (tmp_path / "out").exists()


def test_training_state_copied_from_another_run_is_refused(tmp_path):
    """An unfinished run given another run's state-last.pt does not resume from it."""
    ok(pretrain(tmp_path, "--run-name", "one"))
    ok(pretrain(tmp_path, "--run-name", "two", "--set", "optim.lr=0.002"))
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    (one / "summary.json").unlink()  # unfinished again
    shutil.copy(two / "state-last.pt", one / "state-last.pt")
    assert "was not written by run one" in refused(pretrain(tmp_path, "--run-name", "one"))


@pytest.mark.parametrize("field_,value", [("model", "vit-b16"), ("dataset", "cifar10"),
                                          ("split", "train")])
def test_a_summary_that_disagrees_with_its_config_is_refused_and_not_recorded(
        finished, tmp_path, field_, value):
    root, run = finished
    copy = tmp_path / "r"
    shutil.copytree(root, copy)
    (copy / "accuracy.csv").unlink()
    summary = copy / "runs" / run.name / "summary.json"
    summary.write_text(json.dumps(dict(json.loads(summary.read_text()), **{field_: value})))
    line = refused(pretrain(copy, *VIT))
    assert "does not belong to its run" in line and field_ in line
    assert not (copy / "accuracy.csv").exists()


# ---------------------------------------------------------------------- no duplicate rows


def test_fewshot_rows_are_kept_once_per_run_shots_and_probe(finished, tmp_path):
    root, run = finished
    args = ["evaluate", "--checkpoint", run, "--dataset", "synthetic", "--fewshot", "5",
            "--seeds", "1", "--results-dir", tmp_path]
    ok(cli(*args))
    assert "fewshot.csv already held 1 of these probes" in ok(cli(*args))
    few = rows(tmp_path / "fewshot.csv")
    assert [(r["run_id"], r["shots"], r["dataset"]) for r in few] == [(run.name, "5", "synthetic")]
    ok(cli(*args[:-4], "--fewshot", "5,10", "--seeds", "1", "--results-dir", tmp_path))
    assert [r["shots"] for r in rows(tmp_path / "fewshot.csv")] == ["5", "10"]
    # the three evaluations' top-1 is one observation (same run, images, crop): one row
    assert len(rows(tmp_path / "accuracy.csv")) == 1


def test_a_probe_of_a_checkpoint_taken_mid_training_never_stands_in_for_the_finished_run(
        tmp_path):
    """`evaluate --fewshot 5 --shuffle none` of a run stopped at step 4 of 12 (its checkpoint:
    step 3, no recipe yet), again once stopped at step 8 (checkpoint: step 6), then of the same
    run once finished: three probes, three rows, each with the step of the weights it measured
    (the later checkpoint's was dropped as a repeat of the first, which has the same run id and
    no recipe either), the finished run's under its recipe; the same probe again adds none."""
    from conftest import interrupted_run

    from mixerbench.report import tables

    interrupted_run(tmp_path, steps=12, ckpt_every=3, kill_at=4)
    run = tmp_path / "runs" / "unf"
    probe = ["evaluate", "--checkpoint", run, "--dataset", "synthetic", "--device", "cpu",
             "--fewshot", "5", "--shuffle", "none", "--results-dir", tmp_path]
    assert "has not finished: these are the numbers of its checkpoint at step 3" in \
        " ".join(ok(cli(*probe)).split())
    interrupted_run(tmp_path, steps=12, ckpt_every=3, kill_at=8)
    assert "already held" not in ok(cli(*probe))
    finish = cli("pretrain", *TINY, "--steps", "12", "--run-name", "unf", "--set", "ckpt_every=3",
                 "--set", "eval_every=4", "--results-dir", tmp_path)
    assert finish.exit_code == 0, finish.output
    recipe = json.loads((run / "summary.json").read_text())["recipe_id"]
    out = ok(cli(*probe))
    assert "already held" not in out and "has not finished" not in out
    assert "already held" in ok(cli(*probe))
    for table in ("fewshot", "shuffle"):
        mine = [(r["steps"], r["recipe_id"]) for r in rows(tmp_path / f"{table}.csv")
                if r.get("metric", "fewshot5") == "fewshot5"]
        assert mine == [("3", ""), ("6", ""), ("12", recipe)], table
    # a probe of the step-6 checkpoint that finished last (it started while the run trained):
    # the run's 5-shot cell and its shuffle figure's point are still its trained weights'
    for table in ("fewshot", "shuffle"):
        for r in [r for r in rows(tmp_path / f"{table}.csv") if r["steps"] == "6"]:
            results.append_row(table, r, tmp_path)
    finished = {r["metric"]: float(r["top1"]) for r in rows(tmp_path / "shuffle.csv")
                if r["steps"] == "12"}
    table = tables.compare_table(results.load("accuracy", tmp_path), None,
                                 results.load("fewshot", tmp_path))
    assert list(table["fewshot_top1"]) == pytest.approx([finished["fewshot5"]])
    kept, _ = tables.one_measurement(results.load("shuffle", tmp_path),
                                     ["model", "train_shuffle", "metric"], str)
    assert dict(zip(kept["metric"], kept["top1"])) == pytest.approx(finished)
    # a folder of the evaluations alone, the step-6 one recorded last: the run's compare row
    # is its trained weights' evaluation; with only the mid-training ones, the latest of those
    evaluated = {r["steps"]: r for r in rows(tmp_path / "accuracy.csv") if r["kind"] == "evaluate"}
    for steps, stands in ((("3", "12", "6"), "12"), (("3", "6"), "6")):
        folder = tmp_path / f"evaluations-{len(steps)}"
        for s in steps:
            results.append_row("accuracy", evaluated[s], folder)
        table = tables.compare_table(results.load("accuracy", folder))
        assert list(table["top1_mean"]) == pytest.approx([float(evaluated[stands]["top1"])])
        # and the report's section of the run gives that evaluation's numbers and step
        ok(cli("report", "--results-dir", folder))
        page = (folder / "report" / "index.html").read_text()
        section = page.split('id="run-unf"')[1].split("</section>")[0]
        assert f"steps <code>{stands}</code>" in section, section
        shown = float(re.search(r"top1 <code>([0-9.]+)</code>", section).group(1))
        assert shown == pytest.approx(float(evaluated[stands]["top1"]), abs=0.05), section


def test_shuffle_rows_are_kept_once_per_run_permutation_and_images(finished, tmp_path):
    """The same `evaluate --shuffle` of a run again adds no row to shuffle.csv; the same
    permutations on a capped part of the split are another measurement, with rows of their own,
    and so is a patch shuffle of another `--shuffle-patch` (which no cell records: appended)."""
    root, run = finished
    evaluate = ["evaluate", "--checkpoint", run, "--dataset", "synthetic", "--results-dir",
                tmp_path]
    args = [*evaluate, "--shuffle", "none,patch,global"]
    ok(cli(*args))
    first = (tmp_path / "shuffle.csv").read_bytes()
    assert len(rows(tmp_path / "shuffle.csv")) == 3
    assert "shuffle.csv already held 3" in ok(cli(*args))
    assert (tmp_path / "shuffle.csv").read_bytes() == first
    ok(cli(*args, "--max-examples", "97"))
    sh = rows(tmp_path / "shuffle.csv")
    assert [(r["split"], r["eval_shuffle"]) for r in sh] == [
        (split, kind) for split in ("test", "test[stratified:97]")
        for kind in ("none", "patch", "global")]
    assert "already held" not in ok(cli(*evaluate, "--shuffle", "patch", "--shuffle-patch", "2"))
    assert len(rows(tmp_path / "shuffle.csv")) == 7


def test_append_once_checks_under_the_lock_and_leaves_runless_rows_alone(tmp_path):
    from mixerbench import results

    row = {c: None for c in results.SCHEMAS["fewshot"]}
    row.update(run_id="r", shots=5, dataset="=cmd|' /C calc'!A0", top1_mean=50.0)
    assert results.append_once("fewshot", row, tmp_path)
    assert not results.append_once("fewshot", dict(row, top1_mean=51.0), tmp_path)
    assert results.append_once("fewshot", dict(row, shots=10), tmp_path)
    runless = dict(row, run_id=None)
    assert results.append_once("fewshot", runless, tmp_path)
    assert results.append_once("fewshot", runless, tmp_path)
    assert len(results.load("fewshot", tmp_path)) == 4


COMPARE = ["compare", "--models", "mixer", "--preset", "smoke", "--dataset", "synthetic",
           "--set", "model.img_size=32", "--set", "model.width=16", "--set", "model.depth=1",
           "--set", "data.batch_size=50", "--set", "steps=8", "--set", "eval_every=8",
           "--fewshot", "5", "--no-bench", "--device", "cpu", "--format", "csv"]


def test_a_compare_probes_and_joins_its_own_fewshot_rows_not_an_evaluates(tmp_path):
    """A compare's 5-shot probe is its own (the whole split, the crop, draws and precision it
    probes in): a run's probe of a capped split, or one in another precision (a results folder
    shared from a GPU, whose evaluate probed in bf16), neither stands in for it nor is joined
    into its table."""
    without = [a for a in COMPARE if a not in ("--fewshot", "5")]
    ok(cli(*without, "--results-dir", tmp_path))
    (run,) = (tmp_path / "runs").iterdir()
    probe = ["evaluate", "--checkpoint", run, "--dataset", "synthetic", "--fewshot", "5",
             "--device", "cpu", "--results-dir", tmp_path]
    ok(cli(*probe, "--max-examples", "97"))
    ok(cli(*probe))
    path = tmp_path / "fewshot.csv"
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns, (capped, whole) = reader.fieldnames, list(reader)
    assert (capped["split"], whole["split"], whole["dtype"]) == (
        "test[stratified:97]", "test", "fp32")
    # the same probe as a GPU's evaluate records it: in bf16, with a number of its own
    gpu = dict(whole, dtype="bf16", device_name="NVIDIA H100 80GB HBM3", top1_mean="12.5")
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows([capped, gpu])
    compared = cli(*COMPARE, "--results-dir", tmp_path)
    ok(compared)
    (row,) = csv.DictReader(compared.stdout.splitlines())
    few = rows(path)
    assert [(r["split"], r["dtype"]) for r in few] == [
        ("test[stratified:97]", "fp32"), ("test", "bf16"), ("test", "fp32")]
    assert (row["fewshot_split"], row["fewshot_n"]) == ("test", "1")
    assert float(row["fewshot_top1"]) == pytest.approx(float(few[2]["top1_mean"]))
    assert float(few[2]["top1_mean"]) == pytest.approx(float(whole["top1_mean"]))
    # the compare's file (what `plot` regenerates from every row) joins the same probe
    (table,) = (tmp_path / "tables").glob("compare-*.csv")
    (filed,) = rows(table)
    assert filed["fewshot_top1"] == row["fewshot_top1"]


@pytest.mark.slow
def test_two_concurrent_compares_with_fewshot_write_one_fewshot_row(tmp_path, child_env):
    procs = [start([*COMPARE, "--results-dir", tmp_path], child_env) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    few = rows(tmp_path / "fewshot.csv")
    assert len(few) == 1 and few[0]["shots"] == "5"


# A `mixerbench` process that kills itself with SIGKILL at its Nth checkpoint, before writing it.
KILLED_AT_SAVE = textwrap.dedent("""
    import os, signal, sys
    from mixerbench import train

    nth, calls, save = int(sys.argv[1]), [0], train.save_state
    def save_state(*a, **k):
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return save(*a, **k)
    train.save_state = save_state
    from mixerbench.cli import app
    app(["--quiet", *sys.argv[2:]], prog_name="mixerbench")
""")
RUN = ["pretrain", *TINY, "--steps", "12", "--set", "eval_every=1", "--set", "ckpt_every=3"]


def killed_at_save(nth: int, root: Path, env) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_AT_SAVE, str(nth), *RUN,
                           "--results-dir", str(root)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def metric_steps(root: Path) -> list[int]:
    (run,) = (root / "runs").iterdir()
    return [int(r["step"]) for r in rows(run / "metrics.csv")]


@pytest.mark.slow
def test_sigkill_before_the_first_checkpoint_then_same_command_writes_no_step_twice(tmp_path,
                                                                                    child_env):
    """Killed after evaluations at steps 1-3 and before the first checkpoint (step 3): the same
    command starts again from step 0, says so, and writes each step's row once."""
    killed_at_save(1, tmp_path, child_env)
    (run,) = (tmp_path / "runs").iterdir()
    assert metric_steps(tmp_path) == [1, 2, 3] and not (run / "state-last.pt").exists()
    r = cli(*RUN, "--results-dir", tmp_path)  # the same command again (in this process)
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "starts again from step 0" in said and "3 metric row(s)" in said, said
    assert metric_steps(tmp_path) == list(range(1, 13))


@pytest.mark.slow
def test_an_unfinished_run_whose_state_is_gone_restarts_without_duplicate_rows(tmp_path,
                                                                               child_env):
    killed_at_save(3, tmp_path, child_env)  # checkpoints at steps 3 and 6, rows up to step 9
    (run,) = (tmp_path / "runs").iterdir()
    assert metric_steps(tmp_path) == list(range(1, 10))
    (run / "state-last.pt").unlink()
    r = cli(*RUN, "--results-dir", tmp_path)  # the same command again (in this process)
    assert r.exit_code == 0, r.output
    assert "starts again from step 0" in " ".join(r.output.split()), r.output
    assert metric_steps(tmp_path) == list(range(1, 13))
    assert len(rows(tmp_path / "accuracy.csv")) == 1
