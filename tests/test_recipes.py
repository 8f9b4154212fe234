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
from conftest import ROOT, TINY, TINY_MODEL, cli

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
    capped = " ".join(ok(cli(*probe, "--max-examples", "97")).split())
    # the screen's few-shot table names its images too, not only the accuracy line above it
    assert "few-shot top-1 (%) on synthetic (test[stratified:97])" in capped
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


def test_every_accuracy_row_names_its_crop_and_an_evaluation_is_recorded_once(tmp_path):
    """accuracy.csv's `pipeline`: a training row its run's eval crop, an `evaluate` row its
    `--crop` (the run's own without one). The default, `--crop resize` and `--crop weights`
    are three rows; the same evaluate again appends nothing and says so in one line."""
    pretrain(tmp_path)
    (run,) = (tmp_path / "runs").iterdir()
    own = json.loads((run / "config.json").read_text())["data"]["eval_pipeline"]
    evaluate = ["evaluate", "--checkpoint", run, "--dataset", "synthetic", "--device", "cpu",
                "--results-dir", tmp_path]
    for crop in ([], ["--crop", "resize"], ["--crop", "weights"]):
        assert "already held" not in ok(cli(*evaluate, *crop))
    before = (tmp_path / "accuracy.csv").read_bytes()
    for crop in ([], ["--crop", "resize"]):
        out = " ".join(ok(cli(*evaluate, *crop)).split())
        assert "accuracy.csv already held this evaluation" in out and "rows appended" not in out
    assert (tmp_path / "accuracy.csv").read_bytes() == before
    got = [(r["kind"], r["pipeline"]) for r in rows(tmp_path / "accuracy.csv")]
    assert own == "eval-plain"
    assert got == [("pretrain", own), ("evaluate", own), ("evaluate", "eval-resize"),
                   ("evaluate", "eval-weights")]


def test_an_evaluation_the_key_cannot_tell_apart_is_recorded_not_taken_for_an_old_one(tmp_path):
    """A run trained under the patch shuffle, evaluated under its own patch side and then under
    `--shuffle-patch 2`: the two top-1 differ in what they measured, which accuracy.csv's key
    cells do not hold, so the second is appended (never reported 'already held' and lost)."""
    pretrain(tmp_path, "--set", "data.shuffle=patch")
    (run,) = (tmp_path / "runs").iterdir()
    evaluate = ["evaluate", "--checkpoint", run, "--dataset", "synthetic", "--device", "cpu",
                "--results-dir", tmp_path]
    ok(cli(*evaluate))
    out = " ".join(ok(cli(*evaluate, "--shuffle-patch", "2")).split())
    assert "already held" not in out
    got = [r["kind"] for r in rows(tmp_path / "accuracy.csv")]
    assert got == ["pretrain", "evaluate", "evaluate"]


def test_a_table_never_averages_two_crops_of_one_recipe(tmp_path):
    """Two seeds of one recipe evaluated into a results folder of their own (no training rows
    there), one of them also with `--crop resize`: the compare table has one row per crop,
    each labelled with it, never the resize-crop of one seed averaged with the other's own."""
    from mixerbench import results
    from mixerbench.report import tables

    pretrain(tmp_path)
    pretrain(tmp_path, "--seed", "1")
    s0, s1 = sorted((tmp_path / "runs").iterdir())
    out = tmp_path / "evaluated"
    for run, crop in ((s0, []), (s0, ["--crop", "resize"]), (s1, [])):
        ok(cli("evaluate", "--checkpoint", run, "--dataset", "synthetic", "--device", "cpu",
               *crop, "--results-dir", out))
    acc = rows(out / "accuracy.csv")
    t = tables.compare_table(results.load("accuracy", out))
    assert list(zip(t["settings"], t["n"])) == [("crop eval-plain", 2), ("crop eval-resize", 1)]
    plain = [float(r["top1"]) for r in acc if r["pipeline"] == "eval-plain"]
    assert list(t["top1_mean"]) == pytest.approx(
        [sum(plain) / 2, float(next(r["top1"] for r in acc if r["pipeline"] == "eval-resize"))])
    # beside the runs' training rows, those stand for the runs (the table as it was)
    t = tables.compare_table(results.load("accuracy", tmp_path))
    assert list(zip(t["settings"], t["n"])) == [("", 2)]


def test_a_figure_point_is_one_crop_and_says_which(tmp_path):
    """`evaluate --shuffle none` of a run, then the same with `--crop resize`: shuffle.csv holds
    both, each naming its crop, and a figure's point (`tables.one_measurement`, as the shuffle
    bars pick theirs) keeps one crop, the first recorded of equals, and says so; the later crop
    never stands in for it."""
    from mixerbench import results
    from mixerbench.report import tables

    pretrain(tmp_path)
    (run,) = (tmp_path / "runs").iterdir()
    for crop in ([], ["--crop", "resize"]):
        ok(cli("evaluate", "--checkpoint", run, "--dataset", "synthetic", "--device", "cpu",
               "--shuffle", "none", *crop, "--results-dir", tmp_path))
    sh = rows(tmp_path / "shuffle.csv")
    assert [r["pipeline"] for r in sh] == ["eval-plain", "eval-resize"]
    kept, notes = tables.one_measurement(results.load("shuffle", tmp_path),
                                         ["model", "train_shuffle", "metric"], str)
    assert list(kept["pipeline"]) == ["eval-plain"]
    assert list(kept["top1"]) == pytest.approx([float(sh[0]["top1"])])
    assert len(notes) == 1 and notes[0].endswith("through eval-plain only")


def test_a_figure_point_is_one_precision_and_says_which(tmp_path):
    """A run's shuffle row measured again in another precision (as `evaluate --shuffle none`
    on a GPU, bf16, records it for a CPU-trained run): a figure's point keeps one precision,
    the first recorded of equals, and says so; the other never replaces it."""
    from mixerbench import results
    from mixerbench.report import tables

    pretrain(tmp_path)
    (run,) = (tmp_path / "runs").iterdir()
    ok(cli("evaluate", "--checkpoint", run, "--dataset", "synthetic", "--device", "cpu",
           "--shuffle", "none", "--results-dir", tmp_path))
    (row,) = rows(tmp_path / "shuffle.csv")
    results.append_row("shuffle", dict(row, dtype="bf16", top1=float(row["top1"]) - 7),
                       tmp_path)
    kept, notes = tables.one_measurement(results.load("shuffle", tmp_path),
                                         ["model", "train_shuffle", "metric"], str)
    assert list(kept["dtype"]) == ["fp32"]
    assert list(kept["top1"]) == pytest.approx([float(row["top1"])])
    assert len(notes) == 1 and notes[0].endswith("in fp32 only")


def test_a_probe_made_another_way_is_not_the_compares_own(tmp_path):
    """`evaluate --crop resize --fewshot 5` and `evaluate --fewshot 5 --seeds 1` of a compare's
    run, then `compare --fewshot 5`: the compare still probes the run its own way (its eval
    crop, three draws), and its table's 5-shot cell is that probe, not one recorded first."""
    compare = ["compare", "--models", "mixer", "--preset", "smoke", "--steps", "2", "--no-bench",
               *TINY_MODEL, "--results-dir", tmp_path]
    ok(cli(*compare))
    (run,) = (tmp_path / "runs").iterdir()
    for other in (["--crop", "resize"], ["--seeds", "1"]):
        ok(cli("evaluate", "--checkpoint", run, "--dataset", "synthetic", "--device", "cpu",
               "--fewshot", "5", *other, "--results-dir", tmp_path))
    ok(cli(*compare, "--fewshot", "5"))
    probes = {(r["pipeline"], r["num_seeds"]): r["top1_mean"]
              for r in rows(tmp_path / "fewshot.csv")}
    assert set(probes) == {("eval-resize", "3"), ("eval-plain", "1"), ("eval-plain", "3")}
    ok(cli("plot", "compare", "--results-dir", tmp_path))
    (table,) = (tmp_path / "tables").glob("compare-*.csv")
    assert float(rows(table)[0]["fewshot_top1"]) == pytest.approx(
        float(probes[("eval-plain", "3")]))


def test_a_compare_table_keeps_the_size_of_its_own_models_after_another_compare(tmp_path):
    """Params and FLOPs of a compare table are those of its runs' models: a later compare of
    the same model name at another image size (another table) leaves them as they were."""
    def compare(size):
        ok(cli("compare", "--models", "mixer", "--preset", "smoke", "--steps", "2", "--no-bench",
               *TINY_MODEL, "--set", f"model.img_size={size}", "--results-dir", tmp_path))
        return {p.stem: rows(p)[0] for p in (tmp_path / "tables").glob("compare-*.csv")}

    first = compare(32)
    both = compare(16)
    (stem,) = first
    assert set(both) - {stem} and both[stem] == first[stem]
    (other,) = set(both) - {stem}
    assert int(both[other]["params"]) < int(first[stem]["params"])  # fewer tokens to mix


def test_a_compare_never_takes_another_cpus_benchmark_for_this_ones(tmp_path):
    """A compare reuses only throughput rows of this device. Rows another CPU of the same
    architecture wrote (an older version named a CPU by its architecture alone: `cpu (x86_64,
    2 cores)`, and a Xeon and an EPYC differ in img/s) are not this machine's: the same compare
    in that folder benches its model again, in rows that name this CPU's model."""
    from mixerbench import results

    compare = ["compare", "--models", "mixer", "--preset", "smoke", "--steps", "2", *TINY_MODEL,
               "--set", "model.img_size=32", "--results-dir", tmp_path]
    ok(cli(*compare))
    here = results.device_name("cpu")
    benched = rows(tmp_path / "throughput.csv")
    assert {r["device_name"] for r in benched} == {here} and len(benched) == 2  # train, infer
    model = results.cpu_model()
    assert here.startswith(f"cpu ({model}, " if model else "cpu (")
    elsewhere = here.replace(f"{model}, ", "") if model else here.replace("cpu (", "cpu (Other, ")
    with open(tmp_path / "throughput.csv", "w", newline="") as fh:  # as that other CPU wrote them
        out = csv.DictWriter(fh, fieldnames=list(benched[0]), lineterminator="\n")
        out.writeheader()
        out.writerows(dict(r, device_name=elsewhere) for r in benched)
    ok(cli(*compare))
    assert [r["device_name"] for r in rows(tmp_path / "throughput.csv")] == [elsewhere] * 2 + [here] * 2
    ok(cli(*compare))  # and this CPU's own rows it does reuse
    assert len(rows(tmp_path / "throughput.csv")) == 4


def test_two_generations_of_one_cpu_line_are_two_devices():
    """A virtual machine may name its CPU by vendor and line alone (an Ice Lake Xeon VM:
    "Intel(R) Xeon(R) Processor @ 2.80GHz"), a name any generation of the line can give: such
    a name gains the family and model numbers /proc/cpuinfo gives, a name with a model number
    is kept as it is, and this machine's own name is read the same way."""
    from mixerbench import results

    def block(name, family, model):
        return (f"processor\t: 0\nvendor_id\t: x\ncpu family\t: {family}\nmodel\t\t: {model}\n"
                f"model name\t: {name}\nflags\t\t: fpu\n\nprocessor\t: 1\ncpu family\t: 9\n"
                f"model\t\t: 9\nmodel name\t: other\n")

    named = results.cpu_model_of
    assert named(block("Intel(R) Xeon(R) Processor @ 2.80GHz", 6, 106)) == "Intel Xeon family 6 model 106"
    assert named(block("Intel(R) Xeon(R) Processor @ 2.80GHz", 6, 143)) == "Intel Xeon family 6 model 143"
    assert named(block("AMD EPYC Processor", 25, 1)) == "AMD EPYC family 25 model 1"
    assert named(block("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", 6, 143)) == "Intel Xeon Platinum 8481C"
    assert named("") == ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        assert results.cpu_model() == named(cpuinfo.read_text())


def test_a_compare_counts_the_runs_it_read_back_from_a_pretrain_of_its_recipe(tmp_path):
    """`pretrain` of the smoke settings, then a compare of those settings: a compare that only
    reads the run back prints its table and says no file holds it (it failed with 'no compare
    runs'); with a second seed the compare trains, its file counts both seeds (n=2) as its own
    table on the screen does."""
    compare = ["compare", "--models", "mixer", "--preset", "smoke", "--no-bench", *TINY_MODEL,
               "--steps", "2", "--results-dir", tmp_path]
    ok(cli("pretrain", "--preset", "smoke", *TINY_MODEL, "--steps", "2", "--results-dir",
           tmp_path))
    out = " ".join(ok(cli(*compare)).split())
    assert "read back from an earlier command" in out and "no tables/compare-* file" in out
    assert not list((tmp_path / "tables").glob("compare-*.csv"))
    ok(cli(*compare, "--seeds", "2"))
    (table,) = (tmp_path / "tables").glob("compare-*.csv")
    assert [r["n"] for r in rows(table)] == ["2"]


def test_a_length_means_one_run_however_it_is_spelled(tmp_path):
    """`--set steps=2` on the 16-epoch smoke preset is the run `--steps 2` is: one run id, one
    recipe, one row of one compare table (n=1), never the same measurement twice under two
    recipes labelled `epochs=16` / `epochs=none`; and `--set epochs=1` on a 500-step fine-tuning
    preset trains one epoch, as `--epochs 1` does, rather than the preset's 500 steps."""
    for length in (["--set", "steps=2"], ["--steps", "2"], ["--config", tmp_path / "c.json"]):
        (tmp_path / "c.json").write_text(json.dumps({"steps": 2}))
        out = ok(cli("compare", "--models", "mixer", "--preset", "smoke", "--no-bench",
                     *TINY_MODEL, *length, "--results-dir", tmp_path / "r"))
        # without a bench the table shows no speed, and its title promises none
        title = next(line for line in out.splitlines() if line.startswith("compare on"))
        assert "img/s" not in title
    assert len(list((tmp_path / "r" / "runs").iterdir())) == 1
    (table,) = (tmp_path / "r" / "tables").glob("compare-*.csv")
    assert [r["n"] for r in rows(table)] == ["1"]
    # one length however it is spelled on top of the preset, each spelling training a seed of
    # its own: one compare file, its runs all counted
    for seeds, epochs in enumerate((["--epochs", "1"], ["--set", "epochs=1.0"],
                                    ["--set", "epochs=1"]), start=1):
        ok(cli("compare", "--models", "mixer", "--preset", "smoke", "--no-bench", *TINY_MODEL,
               *epochs, "--seeds", seeds, "--results-dir", tmp_path / "epochs"))
    assert len(list((tmp_path / "epochs" / "runs").iterdir())) == 3
    (table,) = (tmp_path / "epochs" / "tables").glob("compare-*.csv")
    assert [r["n"] for r in rows(table)] == ["3"]

    for given in (["--set", "epochs=1"], ["--epochs", "1"]):
        cfg = json.loads(ok(cli("finetune", "--init", next((tmp_path / "r" / "runs").iterdir()),
                                "--dataset", "synthetic", *given, "--print-config")))
        assert (cfg["epochs"], cfg["steps"]) == (1.0, None), given
    # a whole config (--print-config's: epochs 16, steps null) with --steps on top is --steps
    (tmp_path / "whole.json").write_text(ok(cli("pretrain", *TINY, "--print-config")))
    for given in (["--config", tmp_path / "whole.json", "--steps", "2"], ["--steps", "2"]):
        cfg = json.loads(ok(cli("pretrain", *TINY, *given, "--print-config")))
        assert (cfg["epochs"], cfg["steps"]) == (None, 2), given


@pytest.mark.slow
def test_an_evaluate_of_a_shuffle_run_never_blocks_its_own_row(tmp_path):
    """The Mixer run `reproduce shuffle` trains on original images, trained first by `pretrain`,
    evaluated under the global shuffle on 50 images and on its own original images through
    another crop: `reproduce shuffle` still records the run's own top-1 (original images, whole
    split, the run's crop), once however often it runs."""
    shuffle = ["--dataset", "synthetic", "--device", "cpu", "--steps", "2", "--results-dir",
               tmp_path]
    ok(cli("pretrain", "--preset", "smoke", "--model", "mixer", "--set", "data.shuffle=none",
           "--set", "data.shuffle_patch=4", *shuffle))
    (run,) = (tmp_path / "runs").iterdir()
    ok(cli("evaluate", "--checkpoint", run, "--dataset", "synthetic", "--device", "cpu",
           "--shuffle", "global", "--max-examples", "50", "--results-dir", tmp_path))
    ok(cli("evaluate", "--checkpoint", run, "--dataset", "synthetic", "--device", "cpu",
           "--shuffle", "none", "--crop", "resize", "--results-dir", tmp_path))
    for _ in range(2):
        ok(cli("reproduce", "shuffle", "--budget", "smoke", *shuffle))
    own = [(r["split"], r["metric"]) for r in rows(tmp_path / "shuffle.csv")
           if r["run_id"] == run.name and r["eval_shuffle"] == "none" and r["pipeline"] != "eval-resize"]
    assert sorted(own) == [("test", "fewshot5"), ("test", "top1")]


# ------------------------------------------------------------------------------ upgrade

@pytest.mark.slow
def test_a_probe_in_another_precision_is_a_row_of_its_own_with_its_own_provenance(
        tmp_path, monkeypatch):
    """`reproduce data-scaling` and `reproduce shuffle` over runs trained on this CPU in fp32,
    run again where `evaluate` probes in bf16 (as a GPU does; here the precision is picked for
    this CPU, where autocast runs the probe in bf16): each probe is a row of its own in scaling.csv
    and shuffle.csv, saying the precision it ran in, with the number fewshot.csv holds for that
    probe; the runs' own top-1 rows are not repeated."""
    from mixerbench import runtime

    common = ["--budget", "smoke", "--dataset", "synthetic", "--steps", "2", "--set",
              "data.batch_size=8", "--device", "cpu", "--results-dir", tmp_path]
    commands = (["reproduce", "data-scaling", "--models", "mixer", *common],
                ["reproduce", "shuffle", *common])
    for command in commands:
        ok(cli(*command))
    choose = runtime.choose
    monkeypatch.setattr(runtime, "choose", lambda device, dtype, *a, training=False, **k: (
        (choose(device, dtype, *a, training=training, **k)[0], "bf16")
        if dtype is None and not training else choose(device, dtype, *a, training=training, **k)))
    for command in commands:
        ok(cli(*command))
    probes = {(r["run_id"], r["dtype"]): float(r["top1_mean"])
              for r in rows(tmp_path / "fewshot.csv")}
    for table, runs in (("scaling", 4), ("shuffle", 6)):
        got = rows(tmp_path / f"{table}.csv")
        assert sorted((r["metric"], r["dtype"]) for r in got) == sorted(
            [("top1", "fp32")] * runs + [("fewshot5", "fp32"), ("fewshot5", "bf16")] * runs), table
        for r in got:
            if r["metric"] == "fewshot5":
                assert float(r["top1"]) == pytest.approx(probes[r["run_id"], r["dtype"]]), table


def older(path: Path, drop: str = "recipe_id") -> None:
    """`path` as the version before `drop` existed wrote it."""
    with open(path, newline="") as fh:
        table = list(csv.reader(fh))
    i = table[0].index(drop)
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([r[:i] + r[i + 1:] for r in table])


def test_upgrade_gives_older_rows_the_recipe_their_run_recorded_and_no_other(tmp_path):
    """Rows of a run whose folder verifies get its recipe id (a training row its eval crop, a
    probe the step of its finished run's weights);
    a row whose folder is gone, or whose folder's config.json names another run, keeps an empty
    one and the command says so; an older evaluate row's crop was recorded nowhere: empty."""
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
    older(tmp_path / "accuracy.csv", "pipeline")
    for column in ("recipe_id", "split", "shots_split", "pipeline", "steps"):
        older(tmp_path / "fewshot.csv", column)
    shutil.rmtree(runs[1])  # gone
    shutil.copy(runs[0] / "config.json", runs[2] / "config.json")  # names another run
    out = ok(cli("upgrade", "--results-dir", tmp_path))
    assert "gave 3 row(s)" in out and "2 run(s) have no finished run folder" in out
    got = {(r["run_id"], r["kind"]): r["recipe_id"] for r in rows(tmp_path / "accuracy.csv")}
    assert got == {(runs[0].name, "pretrain"): expected[runs[0].name],
                   (runs[0].name, "evaluate"): expected[runs[0].name],
                   (runs[1].name, "pretrain"): "", (runs[2].name, "pretrain"): ""}
    # a training row's crop is its verified run's config's; an older evaluate's is unknown
    got = {(r["run_id"], r["kind"]): r["pipeline"] for r in rows(tmp_path / "accuracy.csv")}
    assert got == {(runs[0].name, "pretrain"): "eval-plain", (runs[0].name, "evaluate"): "",
                   (runs[1].name, "pretrain"): "", (runs[2].name, "pretrain"): ""}
    (probe,) = rows(tmp_path / "fewshot.csv")
    assert probe["recipe_id"] == expected[runs[0].name]
    # of the finished run: the weights of its last step, which its training row records
    assert probe["steps"] == [r["steps"] for r in rows(tmp_path / "accuracy.csv")
                              if r["run_id"] == runs[0].name and r["kind"] == "pretrain"][0]
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
        # every committed row is a training row: its crop is its command's eval crop
        assert r["pipeline"] == cfgs[r["run_id"]].data.eval_pipeline, r["run_id"]
    # the shuffle sweep's top-1 and probes went through each run's own eval crop too
    assert all(r["pipeline"] == cfgs[r["run_id"]].data.eval_pipeline
               for r in rows(ROOT / "results" / "shuffle.csv"))
    recipes = {r["run_id"]: r["recipe_id"] for r in acc}
    steps = {r["run_id"]: r["steps"] for r in acc}
    for table in ("fewshot", "shuffle", "scaling"):
        derived = rows(ROOT / "results" / f"{table}.csv")
        assert derived and all(r["recipe_id"] == recipes[r["run_id"]] for r in derived), table
        # each measured its finished run: the weights of the run's last step
        assert all(r["steps"] == steps[r["run_id"]] for r in derived), table
        # the sweeps probed the whole test split, through each run's own eval crop
        assert {r["split"] for r in derived} == {"test"}, table
    assert {(r["shots_split"], r["pipeline"]) for r in rows(ROOT / "results" / "fewshot.csv")} \
        == {("train", cfgs[r["run_id"]].data.eval_pipeline) for r in acc}
    # the same recipe is one measurement: the transfer's upstream and shuffle's unshuffled run
    # (its seed-0 runs, of which the later seeds are more runs of the same recipe)
    same = [r for r in acc if r["recipe_id"] == recipes["mixer-t4-cifar10-s0-693502d3"]]
    seed0 = [r for r in same if r["seed"] == "0"]
    assert {r["top1"] for r in seed0} == {"67.78"} and len(seed0) == 2
    assert {r["seed"] for r in same} == {"0", "1", "2"}


def test_a_seed_of_transfer_seeds_every_stage_and_keeps_the_recipes(monkeypatch, tmp_path):
    """`reproduce transfer --set seed=s` is one more seed of the whole pipeline: the pre-training,
    both fine-tunes and the from-scratch run carry seed s; the pre-training and from-scratch runs
    keep seed 0's recipes, and fine-tunes of one upstream keep theirs (the claims pool fine-tunes
    by their upstream's recipe and count the seeds of the rows). Seed 0 is the command without
    `--set seed`. Nothing trains: the cells are planned."""
    import torch
    from safetensors.torch import save_file

    from mixerbench import experiments

    upstream = tmp_path / "runs" / "upstream"
    upstream.mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(upstream / "checkpoint-last.safetensors"), metadata={
        "mixerbench_model": json.dumps(dict(name="mixer-t4", num_classes=10, img_size=32,
                                            patch_size=4, overrides=dict(width=64, depth=2)))})
    planned: list = []

    class Planned(Exception):
        pass

    def plan(cells, launcher, log):
        planned.extend(c.config() for c in cells)
        if len(cells) == 1:
            return [dict(run_dir=str(upstream))]
        raise Planned

    monkeypatch.setattr(experiments, "run_cells", plan)
    by_seed = {}
    for seed in (None, "0", "1", "2"):
        planned.clear()
        with pytest.raises(Planned):
            experiments.reproduce("transfer", budget="cpu", data_dir=tmp_path, root=tmp_path,
                                  overrides=None if seed is None else {"seed": seed})
        assert [c.seed for c in planned] == [int(seed or 0)] * 4
        by_seed[seed] = planned[:]
    assert [run_id(c) for c in by_seed[None]] == [run_id(c) for c in by_seed["0"]]
    recipes = {s: [recipe_id(c, "fp32") for c in cfgs] for s, cfgs in by_seed.items()}
    assert recipes[None] == recipes["1"] == recipes["2"]
    assert len({run_id(c) for cfgs in by_seed.values() for c in cfgs}) == 12


# ------------------------------------------------------------------- the paper row of a result


def test_released_weights_are_set_against_the_paper_row_their_provenance_gives():
    """timm's `goog_in21k_ft_in1k` Mixers are the paper's ImageNet-1k models (docs/paper-notes.md
    §8): beside Table 3's ImageNet row, saying why; another group's weights of the same
    architecture have no comparable row; a result at a resolution the paper did not measure has
    none either (never the nearest one); at 448 px the crop picks Table 2's row (resize-crop)
    or keeps Table 3's and says the crops differ."""
    from mixerbench import reference
    from mixerbench.experiments import released_of

    b16 = released_of("timm:mixer_b16_224.goog_in21k_ft_in1k")
    assert (b16.paper_name, b16.upstream, b16.paper_img_size, b16.crop) == (
        "Mixer-B/16", "imagenet", 224, "resmall")
    assert "ImageNet-1k" in b16.note
    assert reference.comparable_row("Mixer-B/16", b16.upstream, 224, "eval-resmall")["top1"] == 76.44
    vit = released_of("timm:vit_base_patch16_224.augreg_in21k_ft_in1k")
    assert (vit.paper_name, vit.upstream) == ("ViT-B/16", "imagenet21k")
    bit = released_of("timm:resnetv2_152x4_bit.goog_in21k_ft_in1k")
    assert (bit.paper_name, bit.crop) == ("BiT-R152x4", "resize")

    miil = reference.reference_for("timm:mixer_b16_224.miil_in21k_ft_in1k", "mixer-b16", 224)
    assert miil["top1"] is None and miil["note"].startswith("no comparable paper row")
    at160 = reference.reference_for("imagenet", "mixer-b16", 160)
    assert at160["top1"] is None and "160 px" in at160["note"]
    l16 = "timm:mixer_l16_224.goog_in21k"
    resize = reference.reference_for(l16, "mixer-l16", 448, "eval-resize")
    assert (resize["table"], resize["avg5"]) == ("table2", 93.91)
    resmall = reference.reference_for(l16, "mixer-l16", 448, "eval-resmall")
    assert (resmall["table"], resmall["avg5"]) == ("table3", 93.86)
    table3 = reference.reference_for("imagenet-21k", "mixer-b16", 224, "eval-resize")
    assert table3["top1"] == 80.64 and "measured with resize-crop" in table3["note"]


def test_an_lr_grid_tie_is_reported_as_a_tie():
    from mixerbench.experiments import avg5_caveat, best_lr, lr_tie

    grid = [dict(lr=0.003, minival_top1=90.0), dict(lr=0.03, minival_top1=90.0),
            dict(lr=0.06, minival_top1=20.0)]
    assert best_lr(grid)["lr"] == 0.003
    assert lr_tie(grid) == "lr grid tie: 0.003, 0.03 all scored 90.00 on minival; the first was taken"
    assert lr_tie(grid[1:]) == ""
    assert "fine-tuned on mnist-5k, the dataset" in avg5_caveat("smoke", "mnist-5k", "mnist-5k")
    assert avg5_caveat("full", "mnist-5k", "mnist-5k") == ""


# --------------------------------------------------------------- preprocessing of the weights


def test_a_torchvision_resnet_is_evaluated_with_its_own_normalisation(tmp_path, monkeypatch):
    """`timm:resnet18.tv_in1k` (torchvision's weights: ImageNet mean / std, bilinear, crop 0.875)
    is fed what timm's own eval transform feeds it, not the paper's [-1, 1]: the batches match
    timm's `create_transform` to resizing noise and the recorded top-1 is the model's on timm's
    inputs. Random weights in an offline hub cache, a 3-class head on a 3-class folder."""
    import numpy as np
    import timm
    import torch
    from PIL import Image
    from test_weights import hub_cache

    from mixerbench.data import get_dataset, make_loader
    from mixerbench.data.transforms import UNIT
    from mixerbench.evaluate import evaluate
    from mixerbench.models.preprocess import of_weights

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=3).eval()
    hub_cache(home, "timm/resnet18.tv_in1k", model)
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    for split in ("train", "test"):
        for c in range(3):
            (folder / split / f"c{c}").mkdir(parents=True)
            for i in range(3):  # smooth photos: two resizers differ little on them
                small = Image.fromarray(rng.integers(0, 255, (6, 7, 3), dtype=np.uint8))
                small.resize((300, 260), Image.BICUBIC).save(folder / split / f"c{c}" / f"{i}.png")

    pre = of_weights("timm:resnet18.tv_in1k")
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert of_weights("timm:mixer_b16_224.goog_in21k_ft_in1k") == UNIT  # the paper's own
    ds = get_dataset(str(folder), "test")
    ours = torch.cat([x for x, _ in make_loader(ds, batch_size=9, train=False,
                                                pipeline="eval-weights", img_size=224,
                                                preprocess=pre).epoch(0)])
    tv = timm.models.get_pretrained_cfg("resnet18.tv_in1k").to_dict()
    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, pretrained_cfg=tv))
    assert tuple(ds.images.shape[1:3]) == (260, 300)  # held as decoded, in the loader's order
    theirs = torch.stack([tf(Image.fromarray(im.numpy())) for im in ds.images])
    unit = torch.cat([x for x, _ in make_loader(ds, batch_size=9, train=False,
                                                pipeline="eval-weights", img_size=224).epoch(0)])
    assert (ours - theirs).abs().mean() < 0.02 < (unit - theirs).abs().mean()

    out = evaluate("timm:resnet18.tv_in1k", str(folder), split="test", device="cpu")
    assert out["pipeline"] == "eval-weights"
    with torch.no_grad():
        expected = 100 * float((model(theirs).argmax(1) == ds.labels).float().mean())
    assert out["top1"] == pytest.approx(expected)


def test_every_copy_of_a_known_dataset_holds_out_its_minival_share(tmp_path):
    """CIFAR-10's minival is 2 % of each class (docs/paper-notes.md §3) whether the copy is a
    folder named cifar10 or a file named CIFAR-10.parquet (it used to get the 1 % default)."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from mixerbench.data import get_dataset

    rng = np.random.default_rng(0)

    def png():
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    labels = [c for c in range(10) for _ in range(100)]
    table = pa.table({"img": [png() for _ in labels], "label": labels})
    (tmp_path / "cifar10").mkdir()
    pq.write_table(table, tmp_path / "cifar10" / "train-00000-of-00001.parquet")
    pq.write_table(table, tmp_path / "CIFAR-10.parquet")
    for copy in (tmp_path / "cifar10", tmp_path / "CIFAR-10.parquet"):
        held = get_dataset(str(copy), "minival", img_size=8)
        assert held.name == "cifar10" and len(held) == 20, copy  # 2 of every 100


# ------------------------------------------------------------------- presets fit the dataset


def test_the_smoke_preset_on_cifar10_trains_at_32_px_through_the_small_pipeline(
        data_shared_dir, tmp_path):
    """`--preset smoke` is made for 28 px digits; on CIFAR-10 it takes CIFAR-10's 32 px and the
    pad-crop-flip pipeline (what is set explicitly stays), photos of many sizes are refused in
    one sentence, and every run's header says its resolution and pipelines."""
    from conftest import refused

    base = ["pretrain", "--preset", "smoke", "--device", "cpu", "--data-dir", data_shared_dir,
            "--print-config"]
    cfg = json.loads(ok(cli(*base, "--dataset", "cifar10")))
    assert (cfg["model"]["img_size"], cfg["data"]["pipeline"]) == (32, "small")
    kept = json.loads(ok(cli(*base, "--dataset", "cifar10", "--set", "data.pipeline=digits")))
    assert (kept["model"]["img_size"], kept["data"]["pipeline"]) == (28, "digits")
    line = refused(cli(*base, "--dataset", "pets"))
    assert "--set data.pipeline=small" in line
    digits = json.loads(ok(cli(*base)))
    assert (digits["model"]["img_size"], digits["data"]["pipeline"]) == (28, "digits")
    from typer.testing import CliRunner

    from mixerbench.cli import app

    out = CliRunner().invoke(app, ["pretrain", *map(str, TINY), "--steps", "2", "--results-dir",
                                   str(tmp_path)], env={"HF_HUB_OFFLINE": "1"}, terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "on synthetic at 32 px (pipeline digits, eval eval-plain)" in out.output


def test_the_quick_starts_numbers_are_the_committed_rows():
    """The README's seed-0 numbers of the quick start's compare are the committed rows."""
    import re

    readme = " ".join((ROOT / "README.md").read_text().split())
    said = re.search(r"Mixer ([\d.]+), ViT ([\d.]+), ResNet ([\d.]+) top-1 "
                     r"\(`results/accuracy.csv`, `compare:smoke`, seed 0\)", readme)
    assert said, "the quick start's numbers are not where this test looks for them"
    seed0 = {r["family"]: r["top1"] for r in rows(ROOT / "results" / "accuracy.csv")
             if r["experiment"] == "compare:smoke" and r["seed"] == "0"}
    assert [float(x) for x in said.groups()] == [float(seed0[f]) for f in ("mixer", "vit", "resnet")]
