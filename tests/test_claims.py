"""`mixerbench claims`: verdicts from results folders built row by row, and on the committed one.

Each folder is real CSVs written through `results.append_row`, read back by the command as a
user runs it; the numbers are chosen so that a claim holds, fails, or lacks seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixerbench import results
from mixerbench.cli import app
from mixerbench.reference.claims import CLAIMS, HELD, NOT_HELD, UNDECIDED, VERDICTS
from mixerbench.report.claims import MARKERS

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"mixer": "mixer-t4", "vit": "vit-t4", "resnet": "resnet18"}


def compare_rows(root: Path, tops: dict[str, list[float]], experiment="compare:smoke",
                 steps=496, recipe: str = "a") -> None:
    """accuracy.csv rows of one `compare`: family -> the top-1 of seeds 0, 1, ..."""
    for family, values in tops.items():
        for seed, top1 in enumerate(values):
            results.append_row("accuracy", dict(
                run_id=f"{MODELS[family]}-mnist-5k-s{seed}-{steps}{recipe}",
                recipe_id=f"{MODELS[family]}-mnist-5k-{recipe}", model=MODELS[family],
                family=family, dataset="mnist-5k", split="test", img_size=28, epochs=16,
                steps=steps, top1=top1, kind="pretrain", experiment=experiment, seed=seed,
                dtype="fp32"), root)


def verdicts(root: Path) -> dict[str, dict]:
    r = CliRunner().invoke(app, ["claims", "--results-dir", str(root), "--format", "json"])
    assert r.exit_code == 0, r.output
    return {c["id"]: c for c in json.loads(r.output)}


@pytest.mark.parametrize("tops,expected", [
    # the Mixer within 1.25 points of both, seeds' spread 0.2: held
    ({"mixer": [90.0, 90.2, 90.4], "vit": [85.0, 85.2, 85.4], "resnet": [90.4, 90.6, 90.8]},
     HELD),
    # the ResNet 5 points ahead, outside every spread: not held
    ({"mixer": [90.0, 90.2, 90.4], "vit": [85.0, 85.2, 85.4], "resnet": [95.0, 95.2, 95.4]},
     NOT_HELD),
    # the same means from one seed each: no spread to test against
    ({"mixer": [90.2], "vit": [85.2], "resnet": [95.2]}, UNDECIDED),
])
def test_competitive_holds_fails_or_lacks_seeds(tmp_path, tops, expected):
    compare_rows(tmp_path, tops)
    claim = verdicts(tmp_path)["competitive"]
    assert claim["verdict"] == expected
    n = len(tops["mixer"])
    for comp in claim["comparisons"]:
        assert comp["a"]["n"] == n and comp["b"]["n"] == n
        assert sorted(comp["a"]["seeds"]) == list(range(n))
        assert len(comp["a"]["rows"]) == n
    by_other = {c["b"]["label"]: c for c in claim["comparisons"]}
    assert set(by_other) == {"vit-t4", "resnet18"}
    assert by_other["vit-t4"]["verdict"] == (HELD if n == 3 else UNDECIDED)
    if expected == UNDECIDED:
        assert claim["next"] == ["mixerbench compare --models mixer,vit,resnet --preset smoke "
                                 "--dataset mnist-5k --seeds 3"]
        assert "n = 1 and 1 seeds, 3 needed" in by_other["resnet18"]["why"]
    else:
        assert claim["next"] == []


def test_a_gap_inside_the_spread_is_not_enough_evidence_and_says_how_many_seeds(tmp_path):
    compare_rows(tmp_path, {"mixer": [88.0, 90.0, 92.0], "vit": [80.0, 80.2, 80.4],
                            "resnet": [87.5, 89.5, 91.5]})
    claim = verdicts(tmp_path)["competitive"]
    assert claim["verdict"] == UNDECIDED
    resnet = next(c for c in claim["comparisons"] if c["b"]["label"] == "resnet18")
    assert resnet["verdict"] == UNDECIDED and resnet["p"] >= 0.05
    assert "inside the spread" in resnet["why"] and "seeds a side would decide" in resnet["why"]


def test_two_recipes_of_one_model_are_never_averaged(tmp_path):
    """Same model, dataset and schedule, another recipe id (say another lr): two sides."""
    compare_rows(tmp_path, {"mixer": [90.0, 90.2, 90.4], "vit": [85.0, 85.2, 85.4],
                            "resnet": [90.4, 90.6, 90.8]})
    compare_rows(tmp_path, {"mixer": [60.0, 61.0, 62.0]}, recipe="b")
    claim = verdicts(tmp_path)["competitive"]
    mixers = [c["a"] for c in claim["comparisons"]]
    assert len(mixers) == 4 and {m["n"] for m in mixers} == {3}
    assert sorted({round(m["mean"], 2) for m in mixers}) == [61.0, 90.2]


def shuffle_rows(root: Path, family: str, model: str, none: list[float], patch: list[float]):
    for kind, values in (("none", none), ("patch", patch)):
        for seed, top1 in enumerate(values):
            rid, recipe = f"{model}-cifar10-{kind}-s{seed}", f"{model}-cifar10-{kind}"
            results.append_row("accuracy", dict(
                run_id=rid, recipe_id=recipe, model=model, family=family, dataset="cifar10",
                split="test", img_size=32, epochs=10, steps=3900, top1=top1, kind="pretrain",
                experiment="shuffle", seed=seed), root)
            results.append_row("shuffle", dict(
                run_id=rid, recipe_id=recipe, model=model, family=family, dataset="cifar10",
                train_shuffle=kind, eval_shuffle=kind, metric="top1", top1=top1, img_size=32,
                seed=seed), root)


def test_shuffle_claims_hold_fail_and_lack_seeds(tmp_path):
    held, failed, few = (tmp_path / n for n in ("held", "failed", "few"))
    shuffle_rows(held, "mixer", "mixer-t4", [67.6, 67.8, 68.0], [67.7, 67.9, 68.1])
    shuffle_rows(held, "resnet", "resnet18", [73.2, 73.4, 73.6], [56.4, 56.6, 56.8])
    shuffle_rows(failed, "mixer", "mixer-t4", [67.6, 67.8, 68.0], [60.6, 60.8, 61.0])
    shuffle_rows(failed, "resnet", "resnet18", [73.2, 73.4, 73.6], [73.3, 73.5, 73.7])
    shuffle_rows(few, "mixer", "mixer-t4", [67.8], [68.7])
    shuffle_rows(few, "resnet", "resnet18", [73.4], [56.5])
    for folder, expected in ((held, HELD), (failed, NOT_HELD), (few, UNDECIDED)):
        got = verdicts(folder)
        assert got["shuffle-mixer"]["verdict"] == expected, folder.name
        assert got["shuffle-resnet"]["verdict"] == expected, folder.name
    nxt = verdicts(few)["shuffle-mixer"]["next"]
    assert nxt == [f"mixerbench reproduce shuffle --budget cpu --data-dir ~/data --set seed={s}"
                   for s in (1, 2)]


def test_a_checkpoint_taken_mid_training_is_no_evidence_for_the_shuffle_claim(tmp_path):
    """An `evaluate --shuffle` of a checkpoint taken half-way through a patch run (step 1950
    of 3900: no recipe id yet), recorded after the run's own row, neither replaces that row
    nor stands as a recipe of its own: the verdict is the finished runs'."""
    shuffle_rows(tmp_path, "mixer", "mixer-t4", [67.6, 67.8, 68.0], [67.7, 67.9, 68.1])
    shuffle_rows(tmp_path, "resnet", "resnet18", [73.2, 73.4, 73.6], [56.4, 56.6, 56.8])
    results.append_row("shuffle", dict(
        run_id="mixer-t4-cifar10-patch-s0", recipe_id="", model="mixer-t4", family="mixer",
        dataset="cifar10", train_shuffle="patch", eval_shuffle="patch", metric="top1",
        top1=31.0, img_size=32, steps=1950, seed=0), tmp_path)
    claim = verdicts(tmp_path)["shuffle-mixer"]
    assert claim["verdict"] == HELD
    assert all(c["b"]["n"] == 3 and c["b"]["mean"] > 67 for c in claim["comparisons"])


def test_a_shuffle_evaluation_in_another_precision_is_a_comparison_of_its_own(tmp_path):
    """One patch run measured again in bf16 (a GPU's `evaluate` of CPU-trained runs) is not
    averaged with the fp32 seeds, nor does it replace its run's fp32 row: the fp32 comparison
    keeps its three seeds and verdict; the bf16 row, with no original beside it, pairs
    with nothing."""
    shuffle_rows(tmp_path, "mixer", "mixer-t4", [67.6, 67.8, 68.0], [67.7, 67.9, 68.1])
    shuffle_rows(tmp_path, "resnet", "resnet18", [73.2, 73.4, 73.6], [56.4, 56.6, 56.8])
    results.append_row("shuffle", dict(
        run_id="mixer-t4-cifar10-patch-s0", recipe_id="mixer-t4-cifar10-patch", model="mixer-t4",
        family="mixer", dataset="cifar10", train_shuffle="patch", eval_shuffle="patch",
        metric="top1", top1=31.0, img_size=32, dtype="bf16", seed=0), tmp_path)
    claim = verdicts(tmp_path)["shuffle-mixer"]
    (sweep,) = [c for c in claim["comparisons"] if not c["label"].endswith("bf16")]
    assert sweep["verdict"] == HELD and claim["verdict"] == HELD
    sides = (sweep["a"], sweep["b"])  # the originals and the patch-shuffled, three seeds each
    assert [s["n"] for s in sides] == [3, 3]
    assert sorted(s["mean"] for s in sides) == pytest.approx([67.8, 67.9])


def bench_pair(root: Path, bench_id: str, mixer, vit, batch: int = 8) -> None:
    for model, (mean, std) in (("mixer-b16", mixer), ("vit-b16", vit), ("vit-b32", (9, 0.1))):
        results.append_row("throughput", dict(
            model=model, family=model.split("-")[0], mode="train", batch_size=batch,
            img_size=224, img_per_sec_mean=mean, img_per_sec_std=std, repeats=3,
            bench_id=bench_id, device_name="cpu", dtype="fp32", compiled=False), root)


def test_throughput_pairs_a_mixer_with_its_table3_vit_from_one_bench_call(tmp_path):
    """Each pair from one bench call; per setting the latest call decides, as the throughput
    table shows the latest bench, so re-benching with more repeats (the command an
    inconclusive verdict gives) settles it; a call at another batch size stands beside it."""
    bench_pair(tmp_path, "b1", (2.20, 0.05), (1.82, 0.01))
    bench_pair(tmp_path, "b2", (5.9, 0.2), (5.8, 0.2))
    claim = verdicts(tmp_path)["throughput-train"]
    assert [c["verdict"] for c in claim["comparisons"]] == [UNDECIDED]
    assert claim["verdict"] == UNDECIDED
    assert [c["a"]["rows"] for c in claim["comparisons"]] == [["b2"]]
    assert claim["comparisons"][0]["a"]["unit"] == "repeats"
    assert verdicts(tmp_path)["throughput-infer"]["comparisons"][0]["label"] == "no qualifying rows"
    bench_pair(tmp_path, "b3", (6.4, 0.05), (5.8, 0.05))
    bench_pair(tmp_path, "b4", (3.0, 0.5), (2.9, 0.5), batch=16)
    claim = verdicts(tmp_path)["throughput-train"]
    assert [(c["a"]["rows"], c["verdict"]) for c in claim["comparisons"]] == [
        (["b3"], HELD), (["b4"], UNDECIDED)]


def test_an_empty_folder_lacks_evidence_for_every_claim_and_a_missing_one_is_refused(tmp_path):
    got = verdicts(tmp_path)
    assert list(got) == [c.id for c in CLAIMS]
    assert {c["verdict"] for c in got.values()} == {UNDECIDED}
    assert all(c["next"] for c in got.values())
    r = CliRunner().invoke(app, ["claims", "--results-dir", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "No results folder" in r.output


def test_the_committed_results_give_every_claim_a_verdict_and_its_evidence():
    r = CliRunner().invoke(app, ["claims", "--results-dir", str(ROOT / "results")],
                           terminal_width=120)
    assert r.exit_code == 0, r.output
    got = verdicts(ROOT / "results")
    assert list(got) == [c.id for c in CLAIMS]
    for claim in CLAIMS:
        v = got[claim.id]
        assert v["verdict"] in VERDICTS and v["verdict"].upper() in r.output
        assert claim.title in r.output
        assert v["comparisons"], claim.id
        for comp in v["comparisons"]:
            for side in (comp["a"], comp["b"]):
                if side is not None and side["unit"] == "seeds":
                    assert len(side["seeds"]) == side["n"]
        if v["verdict"] == UNDECIDED:
            assert v["next"] and all(n in r.output for n in v["next"])


def test_write_md_replaces_only_the_marked_section(tmp_path):
    compare_rows(tmp_path, {"mixer": [90.2], "vit": [85.2], "resnet": [95.2]})
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\n\nbefore\n{MARKERS[0]}\nold text\n{MARKERS[1]}\nafter\n")
    args = ["claims", "--results-dir", str(tmp_path), "--write-md", str(doc)]
    assert CliRunner().invoke(app, args).exit_code == 0
    text = doc.read_text()
    assert text.startswith("# Title\n\nbefore\n") and text.endswith(f"{MARKERS[1]}\nafter\n")
    assert "old text" not in text and "**Mixer competitive with ViT and ResNet" in text
    assert CliRunner().invoke(app, args).exit_code == 0 and doc.read_text() == text
    bare = tmp_path / "bare.md"
    bare.write_text("# no markers\n")
    r = CliRunner().invoke(app, ["claims", "--results-dir", str(tmp_path), "--write-md", str(bare)])
    assert r.exit_code == 2 and MARKERS[0] in r.output and bare.read_text() == "# no markers\n"


def test_more_seeds_than_three_are_asked_for_when_three_leave_the_gap_inside_the_spread(tmp_path):
    shuffle_rows(tmp_path, "resnet", "resnet18", [73.0, 74.0, 75.0], [71.0, 72.5, 74.0])
    claim = verdicts(tmp_path)["shuffle-resnet"]
    assert claim["verdict"] == UNDECIDED
    why, nxt = claim["comparisons"][0]["why"], claim["next"]
    k = int(why.split("about ")[1].split(" seeds")[0])
    assert k > 3 and nxt == [f"for s in $(seq 3 {k - 1}); do mixerbench reproduce shuffle "
                             "--budget cpu --data-dir ~/data --set seed=$s; done"]


def test_a_compares_next_command_runs_that_same_compare_setting(tmp_path):
    """A compare run with settings on top of its preset gets more seeds only from a command
    with those settings: the one printed gives its rows the same experiment tag."""
    import shlex

    from mixerbench.experiments import compare_experiment

    tag = "compare:smoke[optim.lr=0.002,steps=20]"
    compare_rows(tmp_path, {"mixer": [90.2], "vit": [85.2], "resnet": [95.2]}, experiment=tag)
    (nxt,) = verdicts(tmp_path)["competitive"]["next"]
    words = shlex.split(nxt)
    sets = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--set")
    assert words[words.index("--preset") + 1] == "smoke" and words[-2:] == ["--seeds", "3"]
    assert compare_experiment("smoke", None, sets) == tag
    results.append_row("accuracy", dict(  # a compare on a dataset the user keeps a copy of
        run_id="r", recipe_id="r", model="mixer-t4", family="mixer", dataset="cifar10",
        split="test", img_size=32, top1=60.0, kind="pretrain", experiment="compare:smoke",
        seed=0), tmp_path)
    assert ("mixerbench compare --models mixer,vit,resnet --preset smoke --dataset cifar10 "
            "--data-dir ~/data") in verdicts(tmp_path)["competitive"]["next"]


def test_shuffled_runs_are_set_beside_the_original_trained_alike_never_another_recipe(tmp_path):
    """Two lrs of one Mixer, each trained on original and patch-shuffled images: each original
    is compared with its own twin (their settings tell which), never across lrs; without the
    run folders to tell them apart nothing is decided."""
    from mixerbench.report.claims import INPUTS, evaluate

    shuffle_rows(tmp_path, "mixer", "mixer-t4", [67.6, 67.8, 68.0], [67.7, 67.9, 68.1])
    shuffle_rows(tmp_path / "low", "mixer", "mixer-t4", [60.6, 60.8, 61.0], [60.7, 60.9, 61.1])
    for table in ("accuracy", "shuffle"):  # one folder: the second lr's rows appended
        for row in results.load(table, tmp_path / "low").to_dict("records"):
            row = {k: v for k, v in row.items() if v == v}
            row.update(run_id=row["run_id"] + "-lr", recipe_id=row["recipe_id"] + "-lr")
            results.append_row(table, row, tmp_path)
    frames = {t: results.load(t, tmp_path, required=False) for t in INPUTS}

    def claim(settings):
        return next(v for v in evaluate(frames | {"settings": settings})
                    if v.claim.id == "shuffle-mixer")

    blind = claim({})
    assert blind.verdict == UNDECIDED and len(blind.comparisons) == 1
    assert "trained alike" in blind.comparisons[0].why
    settings = {f"mixer-t4-cifar10-{kind}{lr}": {"optim.lr": value, "data.shuffle": kind,
                                                 **({"data.shuffle_patch": 4} if kind == "patch"
                                                    else {})}
                for lr, value in (("", 0.01), ("-lr", 0.003)) for kind in ("none", "patch")}
    seen = claim(settings)
    assert seen.verdict == HELD
    assert sorted(round(c.a.mean - c.b.mean, 2) for c in seen.comparisons) == [0.1, 0.1]


def test_smoke_budget_transfer_rows_are_no_evidence_for_a_claim(tmp_path):
    """`reproduce avg5 --budget smoke` measures nothing (6 steps on the embedded sets): its
    1x and 2x rows decide neither the higher-resolution claim nor the Avg 5 one."""
    for seed in range(3):
        for res, size, top1 in (("1x", 28, 20.9 + seed), ("2x", 56, 14.7 + seed)):
            results.append_row("avg5", dict(
                run_id=f"ft-{res}-s{seed}", recipe_id=f"ft-{res}-s{seed}", model="mixer-t4",
                family="mixer", init="timm:mixer_b16_224.goog_in21k", upstream="imagenet-21k",
                budget="smoke", dataset="mnist-5k", split="test", resolution=res,
                img_size=size, steps=6, top1=top1, seed=seed), tmp_path)
    got = verdicts(tmp_path)
    for claim in ("higher-resolution", "avg5"):
        assert got[claim]["verdict"] == UNDECIDED
        assert [c["label"] for c in got[claim]["comparisons"]] == ["no qualifying rows"], claim


@pytest.mark.usefixtures("one_thread")
def test_a_capped_shuffle_evaluation_never_stands_in_for_the_full_one(tmp_path):
    """Real runs: a Mixer trained on original images and its twin trained patch-shuffled, each
    evaluated under its own permutation on the whole test split; then the twin again on 50
    images. The claim sets the full-split numbers side by side, not the later capped one."""
    from conftest import TINY, cli

    def ok(*args):
        r = cli(*args, "--results-dir", tmp_path)
        assert r.exit_code == 0, r.output
        return r

    for extra in ([], ["--set", "data.shuffle=patch"]):
        ok("pretrain", *TINY, "--steps", "4", *extra)
    runs = {json.loads((p / "config.json").read_text())["data"]["shuffle"]: p
            for p in (tmp_path / "runs").iterdir()}
    for kind, extra in (("none", []), ("patch", []), ("patch", ["--max-examples", "50"])):
        ok("evaluate", "--checkpoint", runs[kind], "--dataset", "synthetic", "--device", "cpu",
           "--shuffle", kind, *extra)
    full = {r["eval_shuffle"]: r["top1"] for r in results.load("shuffle", tmp_path).to_dict(
        "records") if r["split"] == "test" and r["metric"] == "top1"}
    (comp,) = verdicts(tmp_path)["shuffle-mixer"]["comparisons"]
    assert (comp["a"]["mean"], comp["b"]["mean"]) == (full["patch"], full["none"])


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_capped_data_scaling_rerun_is_a_comparison_of_its_own(tmp_path):
    """Real runs: data-scaling of a Mixer and a ResNet, then the same again measured on 50 test
    images (the same recipes and seeds, other run ids). Each gain is taken from runs on one
    subset: the whole-split comparison holds only whole-split runs, the capped one says so."""
    from conftest import cli

    scaling = ["reproduce", "data-scaling", "--budget", "smoke", "--dataset", "synthetic",
               "--models", "mixer,resnet", "--steps", "2", "--set", "data.batch_size=8",
               "--device", "cpu", "--results-dir", tmp_path]
    for extra in ([], ["--set", "max_eval_examples=50"]):
        r = cli(*scaling, *extra)
        assert r.exit_code == 0, r.output
    split = {r["run_id"]: r["split"] for r in results.load("scaling", tmp_path).to_dict("records")
             if r["metric"] == "top1"}
    comps = verdicts(tmp_path)["data-scaling-resnet"]["comparisons"]
    assert len(comps) == 2
    for comp in comps:
        on = {split[rid] for side in ("a", "b") for rid in comp[side]["rows"]}
        assert len(on) == 1, comp["label"]
        assert ("test[stratified:50]" in comp["label"]) == (on == {"test[stratified:50]"})
