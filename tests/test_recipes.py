"""Recipes: every number knows what produced it.

A run's recipe id (`config.recipe_id`) hashes everything its numbers depend on but the seed and
the images they are measured on; `config.NO_EFFECT` lists the settings left out because they
cannot change a number. Every row derived from a run carries its run's recipe id, and
`mixerbench upgrade` gives older rows theirs only from what their run recorded, verified by
the run id. Tiny Mixers on the embedded `synthetic` set, CPU, offline.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, TINY, cli

from mixerbench import config, presets
from mixerbench.config import recipe_id, run_id

pytestmark = pytest.mark.usefixtures("one_thread")


def ok(r):
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def pretrain(root, *extra):
    return ok(cli("pretrain", *TINY, "--steps", "4", "--results-dir", root, *extra))


def trained(root) -> dict:
    """accuracy.csv's training rows under `root` by run id."""
    return {r["run_id"]: r for r in rows(root / "accuracy.csv") if r["kind"] != "evaluate"}


# ------------------------------------------------------------------------ the recipe id


def test_the_settings_that_cannot_change_a_number_change_no_number_and_no_recipe(tmp_path):
    """Every setting of `NO_EFFECT` that a CPU run can vary (all but `device` and `compile`),
    changed at once, trains another run with the same numbers and the same recipe id; another
    seed is the same recipe, another length another recipe."""
    pretrain(tmp_path, "--set", "eval_every=2")
    pretrain(tmp_path, "--set", "eval_every=4", "--set", "ckpt_every=1", "--set",
             "data.eval_batch_size=7", "--run-name", "named", "--data-dir", tmp_path,
             "--set", "preset=none")
    pretrain(tmp_path, "--set", "eval_every=2", "--seed", "1")
    pretrain(tmp_path, "--set", "eval_every=2", "--set", "steps=5")
    (a, b, seed, longer) = trained(tmp_path).values()
    assert b["run_id"] == "named" and a["run_id"] != b["run_id"]
    assert {k: a[k] for k in ("top1", "top5", "recipe_id")} == {
        k: b[k] for k in ("top1", "top5", "recipe_id")}
    assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-6)  # float rounding only
    assert seed["recipe_id"] == a["recipe_id"] and seed["run_id"] != a["run_id"]
    assert longer["recipe_id"] != a["recipe_id"]
    assert a["recipe_id"].startswith("mixer-t4-synthetic-")
    changed = {"device", "compile"} | {"eval_every", "ckpt_every", "data.eval_batch_size",
                                       "run_name", "data.data_dir", "preset"}
    assert changed == set(config.NO_EFFECT)


def test_the_recipe_counts_the_precision_a_run_used_and_not_its_seed():
    cfg = presets.resolve("smoke", dataset="synthetic", flags={"steps": 4})
    from dataclasses import replace

    assert recipe_id(cfg, "fp32") == recipe_id(replace(cfg, dtype="fp32"), "fp32")
    assert recipe_id(cfg, "fp32") != recipe_id(cfg, "bf16")  # auto: a CPU run and a GPU run
    assert recipe_id(replace(cfg, seed=7), "fp32") == recipe_id(cfg, "fp32")
    assert run_id(replace(cfg, seed=7)) != run_id(cfg)
    # what a row records in its split is not the recipe: a capped evaluation is the same recipe
    assert recipe_id(replace(cfg, max_eval_examples=97), "fp32") == recipe_id(cfg, "fp32")
    # a shuffle patch without a shuffle changes nothing; with one it is the experiment
    patched = replace(cfg, data=replace(cfg.data, shuffle_patch=4))
    assert recipe_id(patched, "fp32") == recipe_id(cfg, "fp32")
    shuffled = replace(patched, data=replace(patched.data, shuffle="patch"))
    assert recipe_id(shuffled, "fp32") != recipe_id(replace(
        shuffled, data=replace(shuffled.data, shuffle_patch=8)), "fp32")


def test_every_row_derived_from_a_run_carries_its_recipe(tmp_path):
    pretrain(tmp_path)
    (run,) = (tmp_path / "runs").iterdir()
    recipe = trained(tmp_path)[run.name]["recipe_id"]
    ok(cli("evaluate", "--checkpoint", run, "--dataset", "synthetic", "--fewshot", "2",
           "--seeds", "1", "--shuffle", "none", "--results-dir", tmp_path))
    for table in ("accuracy", "fewshot", "shuffle"):
        got = rows(tmp_path / f"{table}.csv")
        assert got and {r["recipe_id"] for r in got} == {recipe}, table
    assert json.loads((run / "summary.json").read_text())["recipe_id"] == recipe


# ------------------------------------------------------------------------------ subsets


def test_a_capped_probe_and_the_full_one_are_both_recorded_each_labelled(tmp_path):
    """`evaluate --max-examples 97 --fewshot 5` and then the full probe: two rows, each naming
    its images, and neither blocks the other; a repeat of either is not appended again."""
    pretrain(tmp_path)
    (run,) = (tmp_path / "runs").iterdir()
    probe = ["evaluate", "--checkpoint", run, "--dataset", "synthetic", "--fewshot", "5",
             "--seeds", "1", "--results-dir", tmp_path]
    ok(cli(*probe, "--max-examples", "97"))
    ok(cli(*probe))
    assert "already held" in ok(cli(*probe))
    few = rows(tmp_path / "fewshot.csv")
    assert [r["split"] for r in few] == ["test[stratified:97]", "test"]
    assert {(r["shots_split"], r["pipeline"], r["l2_reg"]) for r in few} == {
        ("train", "eval-plain", "1024.0")}
    # a table's few-shot cell is the full probe, and says which images it scored
    from mixerbench import results
    from mixerbench.report import tables

    t = tables.compare_table(results.load("accuracy", tmp_path), None,
                             results.load("fewshot", tmp_path))
    assert list(t["split"]) == ["test", "test[stratified:97]"]  # the capped evaluate's own row
    assert list(t["fewshot_split"]) == ["test", "test"]
    assert list(t["fewshot_top1"]) == pytest.approx([float(few[1]["top1_mean"])] * 2)


# ------------------------------------------------------------------------------ upgrade


def older(path: Path, drop: str = "recipe_id") -> None:
    """`path` as the version before `drop` existed wrote it."""
    with open(path, newline="") as fh:
        table = list(csv.reader(fh))
    i = table[0].index(drop)
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([r[:i] + r[i + 1:] for r in table])


def test_upgrade_gives_older_rows_the_recipe_their_run_recorded_and_no_other(tmp_path):
    """Rows of a run whose folder verifies get its recipe id; a row whose folder is gone, or
    whose folder's config.json names another run, keeps an empty one and the command says so."""
    pretrain(tmp_path)
    pretrain(tmp_path, "--seed", "1")
    pretrain(tmp_path, "--seed", "2")
    runs = sorted((tmp_path / "runs").iterdir())
    ok(cli("evaluate", "--checkpoint", runs[0], "--dataset", "synthetic", "--fewshot", "2",
           "--seeds", "1", "--results-dir", tmp_path))
    expected = {r["run_id"]: r["recipe_id"] for r in rows(tmp_path / "accuracy.csv")}
    for run in runs:  # summaries written before runs recorded their recipe
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({k: v for k, v in summary.items()
                                                      if k != "recipe_id"}))
    older(tmp_path / "accuracy.csv")
    for column in ("recipe_id", "split", "shots_split", "pipeline"):
        older(tmp_path / "fewshot.csv", column)
    shutil.rmtree(runs[1])  # gone
    shutil.copy(runs[0] / "config.json", runs[2] / "config.json")  # names another run
    out = ok(cli("upgrade", "--results-dir", tmp_path))
    assert "gave 3 row(s)" in out and "2 run(s) have no finished run folder" in out
    got = {(r["run_id"], r["kind"]): r["recipe_id"] for r in rows(tmp_path / "accuracy.csv")}
    assert got == {(runs[0].name, "pretrain"): expected[runs[0].name],
                   (runs[0].name, "evaluate"): expected[runs[0].name],
                   (runs[1].name, "pretrain"): "", (runs[2].name, "pretrain"): ""}
    (probe,) = rows(tmp_path / "fewshot.csv")
    assert probe["recipe_id"] == expected[runs[0].name]
    # written by an evaluate with its accuracy row: that row's split; the crop is not known
    assert (probe["split"], probe["shots_split"], probe["pipeline"]) == ("test", "train", "")
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.csv")}
    assert "nothing to upgrade" in ok(cli("upgrade", "--results-dir", tmp_path))
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.csv")} == before


# ----------------------------------------------------------------- the committed results


def test_every_committed_row_carries_the_recipe_of_the_command_behind_it(
        monkeypatch, tmp_path, data_shared_dir):
    """results/*.csv: each row's recipe id is the recipe of the config its command (results/
    README.md) plans today, found by the row's exact run id; rows derived from a run carry its
    accuracy row's recipe id. Nothing here trains."""
    from committed import committed_configs

    cfgs = committed_configs(monkeypatch, tmp_path)
    acc = rows(ROOT / "results" / "accuracy.csv")
    assert acc and all(r["run_id"] in cfgs for r in acc)
    for r in acc:
        assert r["recipe_id"] == recipe_id(cfgs[r["run_id"]], r["dtype"]), r["run_id"]
    recipes = {r["run_id"]: r["recipe_id"] for r in acc}
    for table in ("fewshot", "shuffle", "scaling"):
        derived = rows(ROOT / "results" / f"{table}.csv")
        assert derived and all(r["recipe_id"] == recipes[r["run_id"]] for r in derived), table
        # the sweeps probed the whole test split, through each run's own eval crop
        assert {r["split"] for r in derived} == {"test"}, table
    assert {(r["shots_split"], r["pipeline"]) for r in rows(ROOT / "results" / "fewshot.csv")} \
        == {("train", cfgs[r["run_id"]].data.eval_pipeline) for r in acc}
    # the same recipe is one measurement: the transfer's upstream and shuffle's unshuffled run
    same = [r for r in acc if r["recipe_id"] == recipes["mixer-t4-cifar10-s0-693502d3"]]
    assert {r["top1"] for r in same} == {"67.78"} and len(same) == 2
