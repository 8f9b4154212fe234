"""report.tables / report.figures / report.regenerate on small hand-made fixtures.

Checks values and the artists drawn (lines, collections, offsets), never pixels. CPU, offline.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from mixerbench import report, results
from mixerbench.errors import UserError
from mixerbench.report import figures, style, tables


def frame(table: str, rows: list[dict]) -> pd.DataFrame:
    """Rows with every column of `results.SCHEMAS[table]` (missing ones blank), as load() gives."""
    cols = list(results.SCHEMAS[table])
    return pd.DataFrame([{c: r.get(c, np.nan) for c in cols} for r in rows], columns=cols)


def accuracy_fixture() -> pd.DataFrame:
    base = dict(dataset="cifar10", split="test", img_size=32, epochs=10,
                device_name="cpu (x86_64, 2 cores)", num_devices=1, experiment="compare:small")
    return frame("accuracy", [
        dict(base, run_id="mixer-a-s0", recipe_id="mixer-a", model="mixer-b16", top1=80.0,
             train_seconds=3600, device_hours=1.0, train_flops=2e15, seed=0),
        dict(base, run_id="mixer-a-s1", recipe_id="mixer-a", model="mixer-b16", top1=82.0,
             train_seconds=3600, device_hours=1.0, train_flops=2e15, seed=1),
        dict(base, run_id="vit-a-s0", recipe_id="vit-a", model="vit-b16", top1=85.0,
             train_seconds=7200, device_hours=2.0, train_flops=4e15, seed=0),
        dict(base, run_id="bit-a-s0", recipe_id="bit-a", model="bit-r50x1", top1=83.0,
             train_seconds=10800, device_hours=3.0, train_flops=3e15, seed=0),
        # a re-evaluation of bit-a-s0 appended later: only this last row counts
        dict(base, run_id="bit-a-s0", recipe_id="bit-a", model="bit-r50x1", top1=84.0,
             train_seconds=10800, device_hours=3.0, train_flops=3e15, seed=0),
        dict(base, run_id="mixer-in-s0", recipe_id="mixer-in", model="mixer-b16",
             dataset="imagenet", img_size=224, epochs=300, top1=76.0, train_seconds=36000,
             device_hours=80.0, seed=0, experiment="compare:imagenet-mixer-b16"),
    ])


def throughput_fixture() -> pd.DataFrame:
    dev = dict(device_name="NVIDIA H100", num_devices=1, img_size=32)
    return frame("throughput", [
        dict(dev, model="mixer-b16", mode="infer", batch_size=64, img_per_sec_mean=1000.0,
             img_per_sec_std=10.0, params=59_880_472, gmacs=12.6),
        dict(dev, model="mixer-b16", mode="infer", batch_size=256, img_per_sec_mean=1500.0,
             img_per_sec_std=60.0, params=59_880_472, gmacs=12.6),
        dict(dev, model="vit-b16", mode="infer", batch_size=256, img_per_sec_mean=3000.0,
             params=86_567_656, gmacs=17.6),
        dict(dev, model="bit-r50x1", mode="infer", batch_size=256, img_per_sec_mean=750.0,
             params=25_549_352, gmacs=4.2),
        dict(dev, model="mixer-b16", mode="train", batch_size=256, img_per_sec_mean=500.0),
        dict(dev, model="vit-b16", mode="train", batch_size=256, img_per_sec_mean=400.0),
    ])


def fewshot_fixture() -> pd.DataFrame:
    return frame("fewshot", [
        dict(run_id="mixer-a-s0", model="mixer-b16", dataset="cifar10", shots=5, top1_mean=40.0),
        dict(run_id="mixer-a-s1", model="mixer-b16", dataset="cifar10", shots=5, top1_mean=42.0),
        dict(run_id="mixer-a-s1", model="mixer-b16", dataset="cifar10", shots=10, top1_mean=60.0),
    ])


def scaling_fixture() -> pd.DataFrame:
    rows = []
    for model, acc in (("mixer-b16", (40, 55, 70, 85)), ("vit-b16", (45, 58, 71, 86)),
                       ("bit-r50x1", (60, 70, 78, 84))):
        for (frac, ep), a in zip(((0.03, 233), (0.1, 70), (0.3, 23), (1.0, 7)), acc):
            for metric, off in (("fewshot5", -20.0), ("finetune", 0.0)):
                rows.append(dict(run_id=f"{model}-{frac}", recipe_id=f"{model}-{frac}",
                                 model=model, dataset="cifar10", fraction=frac, epochs=ep,
                                 metric=metric, top1=a + off, seed=0))
    # a second seed for one point of one model: a band is drawn, the line count stays the same
    rows.append(dict(run_id="mixer-b16-1.0-s1", recipe_id="mixer-b16-1.0", model="mixer-b16",
                     dataset="cifar10", fraction=1.0, epochs=7, metric="finetune", top1=87.0,
                     seed=1))
    return frame("scaling", rows)


def shuffle_fixture() -> pd.DataFrame:
    rows = []
    for model, accs in (("bit-r50x1", (90.0, 70.0, 40.0)), ("mixer-b16", (80.0, 80.0, 50.0))):
        for shuf, a in zip(("none", "patch", "global"), accs):
            rows.append(dict(run_id=f"{model}-{shuf}", recipe_id=f"{model}-{shuf}",
                             model=model, dataset="cifar10", split="test", train_shuffle=shuf,
                             eval_shuffle=shuf, metric="top1", top1=a))
    # cross-evaluation rows (trained on original, evaluated shuffled) are left out of the bars
    rows.append(dict(run_id="mixer-b16-none", recipe_id="mixer-b16-none", model="mixer-b16",
                     dataset="cifar10", split="test", train_shuffle="none",
                     eval_shuffle="global", metric="top1", top1=10.0))
    return frame("shuffle", rows)


def metrics_fixture() -> dict[str, pd.DataFrame]:
    def run(k):
        steps = np.arange(0, 50, 10)
        return pd.DataFrame({
            "step": steps, "epoch": steps / 10, "train_loss": 2.3 - 0.02 * k * steps,
            "eval_loss": 2.4 - 0.02 * k * steps, "top1": 10 + k * steps, "top5": 50 + steps,
            "lr": 1e-3, "img_per_sec": 100.0, "elapsed_s": steps * 2.0,
        })
    return {"mixer-b16-cifar10-s0-abcd1234": run(1), "vit-b16-cifar10-s0-abcd1234": run(0.5)}


def zoo_fixture() -> pd.DataFrame:
    # Head-less counts computed from the closed form (docs/paper-notes.md §7, M) and the exact VT models_test counts.
    rows = [
        ("mixer-s32", 32, 19_100_000, 18_590_000), ("mixer-s16", 16, 18_530_000, 18_020_000),
        ("mixer-b32", 32, 60_293_428, 59_524_000), ("mixer-b16", 16, 59_880_472, 59_111_000),
        ("mixer-l32", 32, 206_940_000, 205_910_000), ("mixer-l16", 16, 208_196_168, 207_170_000),
        ("mixer-h14", 14, 432_350_000, 431_070_000), ("vit-b16", 16, 86_567_656, 85_798_656),
    ]
    return pd.DataFrame([dict(name=n, patch_size=p, params=a, params_no_head=b, gflops=1.0)
                         for n, p, a, b in rows])


def scatter_offsets(ax) -> np.ndarray:
    cols = [c for c in ax.collections if isinstance(c, PathCollection)]
    return np.concatenate([c.get_offsets() for c in cols]) if cols else np.zeros((0, 2))


# ----------------------------------------------------------------------------- style

@pytest.mark.parametrize("name, family", [
    ("mixer-b16", "mixer"), ("Mixer-B/16", "mixer"), ("timm:mixer_b16_224", "mixer"),
    ("vit-l16", "vit"), ("ViT-H/14", "vit"), ("timm:vit_base_patch16_224", "vit"),
    ("bit-r50x1", "resnet"), ("BiT-R152x4", "resnet"), ("resnet50", "resnet"),
    ("timm:resnetv2_50x1_bit", "resnet"), ("HaloNet", "other"), ("timm:convnext_tiny", "other"),
    ("gmlp-t4[depth=2,width=64]", "gmlp"), ("timm:gmlp_s16_224", "gmlp"),
    ("resmlp-12", "resmlp"), ("timm:resmlp_12_224", "resmlp"), ("ResMLP-24", "resmlp"),
])
def test_family_of(name, family):
    assert style.family_of(name) == family
    assert style.color(name) == style.COLORS[family]
    assert style.marker(name) == style.MARKERS[family]


def test_one_colour_and_marker_per_family():
    assert len(set(style.COLORS.values())) == len(style.order()) >= 6  # five and "other"
    assert len(set(style.MARKERS.values())) == len(style.order())


# ----------------------------------------------------------------------------- tables

def test_table1_matches_paper_for_zoo():
    t = tables.table1(zoo_fixture())
    assert list(t.columns) == list(tables.TABLE1_COLUMNS)
    assert len(t) == 7 and t["match"].all()
    assert list(t["params_m_ours"]) == [19, 18, 60, 59, 206, 207, 431]
    b16 = t.set_index("model").loc["mixer-b16"]
    assert b16["params_with_head_ours"] == b16["params_with_head_paper"] == 59_880_472


def test_table1_flags_mismatch_and_missing():
    zoo = zoo_fixture()
    zoo.loc[zoo["name"] == "mixer-b16", "params"] += 1  # exact head-inclusive count now off by one
    zoo = zoo[zoo["name"] != "mixer-h14"]
    t = tables.table1(zoo).set_index("model")
    assert not t.at["mixer-b16", "match"] and not t.at["mixer-h14", "match"]
    assert math.isnan(t.at["mixer-h14", "params_m_ours"])
    assert t.at["mixer-s32", "match"]


def test_compare_table_values():
    t = tables.compare_table(accuracy_fixture(), throughput_fixture(), fewshot_fixture(),
                             dataset="cifar10")
    assert list(t.columns) == list(tables.COMPARE_COLUMNS)
    assert list(t["model"]) == ["mixer-b16", "vit-b16", "bit-r50x1"]
    m = t.set_index("model")
    assert m.at["mixer-b16", "top1_mean"] == pytest.approx(81.0)
    assert m.at["mixer-b16", "top1_std"] == pytest.approx(math.sqrt(2.0))
    assert m.at["mixer-b16", "n"] == 2
    assert m.at["bit-r50x1", "top1_mean"] == 84.0 and m.at["bit-r50x1", "n"] == 1  # last row wins
    assert math.isnan(m.at["bit-r50x1", "top1_std"])
    assert m.at["mixer-b16", "infer_img_per_sec"] == 1500.0  # best batch size
    assert m.at["mixer-b16", "infer_img_per_sec_std"] == 60.0  # that batch size's own spread
    assert math.isnan(m.at["vit-b16", "infer_img_per_sec_std"])  # none measured
    assert m.at["mixer-b16", "train_img_per_sec"] == 500.0
    assert math.isnan(m.at["bit-r50x1", "train_img_per_sec"])
    assert m.at["mixer-b16", "gflops"] == pytest.approx(25.2)  # 2 x GMACs
    assert m.at["mixer-b16", "params"] == 59_880_472
    assert m.at["vit-b16", "device_hours"] == 2.0 and m.at["vit-b16", "wall_time_s"] == 7200
    assert m.at["vit-b16", "train_flops"] == 4e15
    assert m.at["mixer-b16", "fewshot_top1"] == pytest.approx(41.0)  # 5-shot rows only
    assert t["paper_top1"].isna().all() and t["diff"].isna().all()  # no paper value for CIFAR-10


def test_two_recipes_of_one_model_are_two_rows_labelled_by_what_differs():
    """Runs of one model under two recipes (steps 20 and 40) are never averaged as seeds: each
    is its own row and n, labelled by the setting that differs; a recipe whose settings are not
    known is labelled by its id, and a row without a recipe id is a recipe of its own."""
    base = dict(model="mixer-t4", dataset="d", split="test", img_size=28, kind="pretrain")
    acc = frame("accuracy", [
        dict(base, run_id="a0", recipe_id="r20", top1=40.0, seed=0),
        dict(base, run_id="b0", recipe_id="r40", top1=60.0, seed=0),
        dict(base, run_id="b1", recipe_id="r40", top1=62.0, seed=1),
        dict(base, run_id="c0", recipe_id="r80", top1=70.0, seed=0),
        dict(base, run_id="old0", top1=10.0, seed=0),
        dict(base, run_id="old1", top1=12.0, seed=1),
        dict(base, model="vit-t4", run_id="v0", recipe_id="v20", top1=30.0, seed=0),
    ])
    recipe = dict(steps=20, **{"optim.lr": 0.01, "model.name": "mixer-t4"})
    t = tables.compare_table(acc, settings={"r20": recipe, "r40": dict(recipe, steps=40)})
    assert list(zip(t["settings"], t["n"], t["top1_mean"])) == [
        ("steps=20", 1, 40.0), ("steps=40", 2, 61.0), ("recipe r80", 1, 70.0),
        ("recipe old0", 1, 10.0), ("recipe old1", 1, 12.0), ("", 1, 30.0)]
    assert list(t["recipe_id"]) == ["r20", "r40", "r80", "", "", "v20"]


def test_few_shot_is_joined_by_run_id_on_the_whole_split_in_one_probe_setting():
    """Another run's probe of a model of the same name never enters the cell; a capped probe
    never stands in for the whole split; a run probed twice counts once, in the setting most
    of the recipe's runs were probed with."""
    base = dict(model="vit-t4", dataset="d", split="test", img_size=28, kind="pretrain",
                recipe_id="v")
    acc = frame("accuracy", [dict(base, run_id=r, top1=90.0) for r in ("v0", "v1", "v2")])
    probe = dict(model="vit-t4", dataset="d", shots=5, l2_reg=1024.0, num_seeds=3)
    few = frame("fewshot", [
        dict(probe, run_id="v0", top1_mean=87.0), dict(probe, run_id="v1", top1_mean=88.0),
        dict(probe, run_id="v2", top1_mean=87.0),
        dict(probe, run_id="vit-smoke", top1_mean=88.4),  # another run, same model name
        dict(probe, run_id="v0", top1_mean=20.0, split="test[stratified:97]"),
        dict(probe, run_id="v1", top1_mean=50.0, l2_reg=1.0),
    ])
    row = tables.compare_table(acc, fewshot_df=few).iloc[0]
    assert row["fewshot_top1"] == pytest.approx((87 + 88 + 87) / 3)
    assert row["fewshot_n"] == 3 and row["fewshot_split"] == "test"


def test_compare_table_paper_value_and_zoo():
    zoo = pd.DataFrame({"name": ["mixer-b16"], "params": [123], "gflops": [4.5]})
    t = tables.compare_table(accuracy_fixture(), dataset="imagenet", zoo_df=zoo)
    assert len(t) == 1
    row = t.iloc[0]
    assert row["paper_top1"] == 76.44 and row["diff"] == pytest.approx(76.0 - 76.44)
    assert row["paper_row"] == "paper Table 3, Mixer-B/16 pre-trained on imagenet at 224 px"
    assert row["params"] == 123 and row["gflops"] == 4.5
    assert row["device_hours"] == 80.0
    low_res = accuracy_fixture().assign(img_size=160)
    t = tables.compare_table(low_res, dataset="imagenet")
    # never the nearest row: a 160-px run has no comparable paper row, and the table says so
    assert math.isnan(t.iloc[0]["paper_top1"]) and math.isnan(t.iloc[0]["diff"])
    assert t.iloc[0]["paper_row"].startswith("no comparable paper row")


def test_compare_table_empty_names_producer():
    with pytest.raises(UserError, match="mixerbench pretrain"):
        tables.compare_table(frame("accuracy", []))
    with pytest.raises(UserError, match="cifar10"):
        tables.compare_table(accuracy_fixture(), dataset="pets")


def test_throughput_table_best_batch_and_ratio_to_the_vit_baseline():
    t = tables.throughput_table(throughput_fixture())
    inf = t[t["mode"] == "infer"].set_index("model")
    assert list(inf.index) == ["mixer-b16", "vit-b16", "bit-r50x1"]
    assert inf.at["mixer-b16", "img_per_sec"] == 1500.0 and inf.at["mixer-b16", "batch_size"] == 256
    # paper Table 3 (TPU-v3, 224 px): Mixer-B/16 1384 vs ViT-B/16 861 img/s/core
    assert inf.at["mixer-b16", "baseline"] == "vit-b16"
    assert inf.at["mixer-b16", "ratio"] == pytest.approx(1500 / 3000)
    assert inf.at["mixer-b16", "paper_ratio"] == pytest.approx(1384 / 861)
    assert inf.at["mixer-b16", "same_run"] is False  # rows without a bench_id: settings only
    for other in ("vit-b16", "bit-r50x1"):  # no paper pair: no ratio
        assert inf.at[other, "baseline"] == "" and math.isnan(inf.at[other, "ratio"])
        assert math.isnan(inf.at[other, "paper_ratio"])
    assert inf.at["bit-r50x1", "paper_img_per_sec_core"] == 2159
    tr = t[t["mode"] == "train"].set_index("model")
    assert tr.at["mixer-b16", "ratio"] == pytest.approx(500 / 400)


def test_throughput_shows_the_latest_bench_with_its_id_and_date_not_the_best_ever():
    """A new bench row replaces an older, faster one (the machine got busier, the code slower:
    the table says what this device does now), and the table names the bench and its date."""
    dev = dict(device_name="cpu", dtype="fp32", compiled=False, img_size=28, batch_size=128,
               mode="infer", model="mixer-t4")
    t = tables.throughput_table(frame("throughput", [
        dict(dev, img_per_sec_mean=4000.0, bench_id="old", timestamp="2026-12-01T10:00:00+00:00"),
        dict(dev, img_per_sec_mean=3000.0, bench_id="new", timestamp="2026-12-03T10:00:00+00:00"),
        dict(dev, img_per_sec_mean=2000.0, bench_id="new", batch_size=64,
             timestamp="2026-12-03T10:00:01+00:00"),
    ]))
    (row,) = t.itertuples()
    assert (row.img_per_sec, row.batch_size, row.bench_id, row.date) == (
        3000.0, 128, "new", "2026-12-03")
    acc = frame("accuracy", [dict(run_id="r", recipe_id="m", model="mixer-t4", dataset="d",
                                  split="test", img_size=28, top1=90.0, device_name="cpu")])
    c = tables.compare_table(acc, frame("throughput", [
        dict(dev, img_per_sec_mean=4000.0, bench_id="old"),
        dict(dev, img_per_sec_mean=3000.0, bench_id="new")])).iloc[0]
    assert (c["infer_img_per_sec"], c["bench_id"]) == (3000.0, "new")
    # a later bench in another precision is not the speed of runs trained in fp32
    c = tables.compare_table(acc.assign(dtype="fp32"), frame("throughput", [
        dict(dev, img_per_sec_mean=3000.0, bench_id="fp32"),
        dict(dev, dtype="bf16", img_per_sec_mean=9000.0, bench_id="bf16")])).iloc[0]
    assert (c["infer_img_per_sec"], c["bench_id"]) == (3000.0, "fp32")


def test_a_one_thread_bench_is_its_own_row_and_never_divided_by_a_whole_cpu_one():
    """A bench timed on one torch thread of a 2-core CPU and one on both are two rows of the
    throughput table, and a Mixer's ratio is to a ViT timed on as many threads."""
    cpu = dict(device_name="cpu (x86_64, 2 cores)", dtype="fp32", compiled=False, img_size=224,
               batch_size=8, mode="infer")
    t = tables.throughput_table(frame("throughput", [
        dict(cpu, model="mixer-b16", threads=2, img_per_sec_mean=12.0, bench_id="both"),
        dict(cpu, model="vit-b16", threads=2, img_per_sec_mean=10.0, bench_id="both"),
        dict(cpu, model="mixer-b16", threads=1, img_per_sec_mean=6.0, bench_id="one"),
    ]))
    row = {(r.model, r.threads): r for r in t.itertuples()}
    assert set(row) == {("mixer-b16", "2"), ("vit-b16", "2"), ("mixer-b16", "1")}
    assert row["mixer-b16", "2"].ratio == pytest.approx(1.2) and row["mixer-b16", "2"].same_run
    assert math.isnan(row["mixer-b16", "1"].ratio)  # no ViT on one thread to divide by


def test_throughput_table_pairs_like_with_like_and_prefers_the_same_run():
    h100 = dict(device_name="NVIDIA H100 80GB HBM3", num_devices=1, img_size=224, dtype="bf16",
                compiled=True, batch_size=256)
    t = tables.throughput_table(frame("throughput", [
        # listed first, as on the committed CSV: it used to be every row's denominator
        dict(h100, model="mixer-t4[depth=2,width=64]", img_size=28, mode="infer",
             img_per_sec_mean=90000.0, bench_id="a"),
        dict(h100, model="mixer-b16", mode="infer", batch_size=64, img_per_sec_mean=1000.0,
             bench_id="a"),
        dict(h100, model="mixer-b16", mode="infer", img_per_sec_mean=1500.0, bench_id="a"),
        dict(h100, model="vit-b16", mode="infer", img_per_sec_mean=1200.0, bench_id="a"),
        dict(h100, model="vit-b16", mode="infer", img_per_sec_mean=2000.0, bench_id="b"),
        dict(h100, model="vit-b16", mode="infer", dtype="fp32", img_per_sec_mean=300.0,
             bench_id="a"),
        dict(h100, model="mixer-b32", mode="infer", img_per_sec_mean=5000.0, bench_id="a"),
        dict(h100, model="mixer-l16", mode="train", img_per_sec_mean=100.0, bench_id="c"),
        dict(h100, model="vit-l16", mode="train", img_per_sec_mean=80.0, bench_id="d"),
        dict(h100, model="mixer-b16", mode="train", img_per_sec_mean=500.0, bench_id="a"),
        dict(h100, model="vit-b16", mode="train", device_name="NVIDIA A100-SXM4-80GB",
             img_per_sec_mean=400.0, bench_id="e"),
    ]))
    row = {(r.model, r.mode, r.dtype, r.device_name[7:11]): r for r in t.itertuples()}
    assert len(row) == len(t) == 9

    b16 = row["mixer-b16", "infer", "bf16", "H100"]
    assert b16.img_per_sec == 1500.0 and b16.baseline == "vit-b16"
    assert b16.ratio == pytest.approx(1500 / 1200)  # ViT-B/16 of the same call, not run b's 2000
    assert b16.same_run is True and b16.paper_ratio == pytest.approx(1384 / 861)
    assert row["vit-b16", "infer", "bf16", "H100"].img_per_sec == 2000.0  # its own best row

    l16 = row["mixer-l16", "train", "bf16", "H100"]  # ViT-L/16 only in another run: still paired
    assert l16.ratio == pytest.approx(100 / 80) and l16.same_run is False
    assert l16.paper_ratio == pytest.approx(419 / 280)

    # a ViT-B/16 train row exists only on another device: no ratio, the paper's still shown
    b16_train = row["mixer-b16", "train", "bf16", "H100"]
    assert math.isnan(b16_train.ratio) and b16_train.same_run is None
    assert b16_train.paper_ratio == pytest.approx(1384 / 861)

    for model in ("mixer-t4[depth=2,width=64]", "mixer-b32"):  # no ViT in the paper beside them
        r = row[model, "infer", "bf16", "H100"]
        assert r.baseline == "" and math.isnan(r.ratio) and math.isnan(r.paper_ratio)
    assert row["mixer-b32", "infer", "bf16", "H100"].paper_img_per_sec_core == 4208
    md = tables.to_markdown(t)
    assert "vit-b16" in md and "1.25" in md and "1.61" in md


def test_to_markdown_without_tabulate():
    df = pd.DataFrame({"model": ["mixer-b16", "a|b"], "top1": [76.4412, math.nan],
                       "n": [3, 1], "ok": [True, False], "flops": [1.5e18, 2.0]})
    md = tables.to_markdown(df)
    lines = md.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].split("|")[1].strip() == "model"
    assert set(lines[1].replace("|", "").replace(" ", "")) <= {"-", ":"}
    # the one formatter of every table: one decimal for accuracy, FLOPs with their unit
    assert "76.4 " in lines[2] and "1.50 EFLOPs" in lines[2] and "yes" in lines[2]
    assert "a\\|b" in lines[3]
    assert all(line.count("|") == lines[0].count("|") for line in lines[:3])


# ----------------------------------------------------------------------------- figures

def test_pareto_frontier_hand_made():
    cost = [1, 2, 3, 4, 5, 2, float("nan")]
    score = [70, 80, 75, 90, 90, 60, 99]
    # 1->70, 2->80 (beats 70), 3->75 dominated, 4->90, 5->90 dominated (tie on score), (2,60)
    # dominated by (2,80), NaN ignored
    assert figures.pareto_frontier(cost, score) == [0, 1, 3]
    assert figures.pareto_frontier([], []) == []


def test_pareto_cost_points_and_frontier():
    fig = figures.pareto_cost(accuracy_fixture(), dataset="cifar10")
    assert isinstance(fig, Figure)
    ax_hours, ax_flops, ax_t2, ax_t3 = fig.axes  # 2 x 2: ours (hours, PFLOPs), paper T2, T3
    pts = scatter_offsets(ax_hours)
    # mixer (2 seeds averaged), vit, bit (last row): three points
    assert sorted(map(tuple, pts.tolist())) == [(1.0, 81.0), (2.0, 85.0), (3.0, 84.0)]
    frontier = [l for l in ax_hours.lines if l.get_linestyle() == "--"]
    assert len(frontier) == 1
    assert frontier[0].get_xydata().tolist() == [[1.0, 81.0], [2.0, 85.0]]
    assert sorted(scatter_offsets(ax_flops)[:, 0].tolist()) == [2.0, 3.0, 4.0]  # PFLOPs
    assert "cifar10" in ax_hours.get_title() and "cpu" in ax_hours.get_xlabel()
    # paper panels: all 10 Table 2 rows (Fig. 2 left), the 17 JFT rows of Table 3 (Fig. 3 left)
    points = figures.paper_cost_points()
    assert (points["table"] == "Table 2").sum() == 10 and (points["table"] == "Table 3").sum() == 17
    assert len(scatter_offsets(ax_t2)) == 10 and len(scatter_offsets(ax_t3)) == 17
    assert "Table 2" in ax_t2.get_title() and "Table 3" in ax_t3.get_title()
    for ax in (ax_t2, ax_t3):
        assert ax.get_xscale() == "log"
        assert len([l for l in ax.lines if l.get_linestyle() == "--"]) == 1
    # Table 3 frontier starts at Mixer-S/32 (10 core-days, 68.70) and ends at ViT-L/16@512
    xy = [l for l in ax_t3.lines if l.get_linestyle() == "--"][0].get_xydata()
    assert xy[0].tolist() == [10, 68.70] and xy[-1].tolist() == [650, 87.76]
    assert len(ax_hours.texts) == 3  # every point is labelled


def test_pareto_cost_without_flops_has_no_flops_panel():
    acc = accuracy_fixture().assign(train_flops=np.nan)
    fig = figures.pareto_cost(acc, dataset="cifar10", paper=False)
    assert len(fig.axes) == 1


def test_accuracy_throughput():
    fig = figures.accuracy_throughput(accuracy_fixture(), throughput_fixture(), dataset="cifar10")
    ours, paper = fig.axes[:2]
    pts = sorted(map(tuple, scatter_offsets(ours).tolist()))
    assert pts == [(750.0, 84.0), (1500.0, 81.0), (3000.0, 85.0)]
    # the title wraps to its panel: the device is named, wherever the line breaks
    assert ours.get_xscale() == "log" and "NVIDIA H100" in " ".join(ours.get_title().split())
    assert len(scatter_offsets(paper)) == 15  # Table 3 JFT-300M rows fine-tuned at 224
    assert paper.get_xscale() == "log" and "TPU-v3" in paper.get_xlabel()


def test_accuracy_throughput_needs_overlap():
    thr = throughput_fixture().assign(model="timm:other")
    with pytest.raises(UserError, match="mixerbench bench"):
        figures.accuracy_throughput(accuracy_fixture(), thr)


def test_data_scaling_lines_per_model_and_panels():
    fig = figures.data_scaling(scaling_fixture())
    assert len(fig.axes) == 2
    few, ft = fig.axes
    assert "5-shot" in few.get_title() and "fine-tuned" in ft.get_title()
    for ax in (few, ft):
        assert len(ax.lines) == 3 and ax.get_xscale() == "log"
        assert [l.get_label() for l in ax.lines] == ["mixer-b16", "vit-b16", "bit-r50x1"]
        assert [l.get_linestyle() for l in ax.lines] == ["-", "--", ":"]
    mixer_ft = ft.lines[0].get_xydata()
    assert mixer_ft[:, 0].tolist() == pytest.approx([3, 10, 30, 100])
    assert mixer_ft[-1, 1] == pytest.approx(86.0)  # seeds averaged: (85 + 87) / 2
    assert len(ft.collections) == 1 and len(few.collections) == 0  # std band only where n > 1


def test_a_figure_point_is_one_recipe_on_one_subset_each_run_once():
    """Another recipe of a model at one fraction (another lr), a repeated row of one run and a
    capped evaluation beside the whole split: each point averages one recipe's runs, once each,
    on the whole split, and the figure says what it left out."""
    rows = scaling_fixture()
    extra = rows[(rows["model"] == "mixer-b16") & (rows["fraction"] == 1.0)
                 & (rows["metric"] == "finetune")].assign(
        run_id=lambda d: d["run_id"] + "-lr", recipe_id="mixer-b16-1.0-lr", top1=10.0)
    fig = figures.data_scaling(pd.concat([rows, extra]))
    ft = fig.axes[1]
    assert ft.lines[0].get_xydata()[-1, 1] == pytest.approx(10.0)  # the latest recipe alone
    assert "mixer-b16 at 100% (fine-tuned): the latest of 2 recipes" in " ".join(
        fig.get_supxlabel().split())
    sh = shuffle_fixture()
    again = sh[sh["run_id"] == "mixer-b16-patch"]
    capped = again.assign(split="test[stratified:97]", top1=0.0)
    fig = figures.shuffle(pd.concat([sh, again, again, capped]))
    mixer = next(ax for ax in fig.axes if "mixer" in ax.get_title())
    heights = [round(p.get_height(), 1) for p in mixer.patches]
    assert heights == [80.0, 80.0, 50.0] and not mixer.collections  # no error bar: one run
    assert "on test only" in fig._suptitle.get_text()


def test_shuffle_bars():
    fig = figures.shuffle(shuffle_fixture())
    assert len(fig.axes) == 2
    mixer_ax, bit_ax = fig.axes  # Mixer first, as in the paper's Figure 4
    assert "mixer-b16" in mixer_ax.get_title() and "bit-r50x1" in bit_ax.get_title()
    assert [p.get_height() for p in mixer_ax.patches] == [80.0, 80.0, 50.0]  # cross-eval row out
    assert [p.get_height() for p in bit_ax.patches] == [90.0, 70.0, 40.0]
    labels = [t.get_text() for t in bit_ax.texts]
    assert labels == ["90.0", "70.0\n-20.0\n(-22%)", "40.0\n-50.0\n(-56%)"]
    # the paper's stated effects beside ours (reference/figures.csv), under each panel
    assert "~45% drop" in mixer_ax.get_xlabel() and "~75% drop" in bit_ax.get_xlabel()


def test_shuffle_draws_curves_over_training_where_the_runs_are_at_hand():
    df = shuffle_fixture()
    df["run_id"] = [f"run-{i}" for i in range(len(df))]
    steps = pd.DataFrame(dict(step=[10.0, 20.0], top1=[30.0, 60.0]))
    fig = figures.shuffle(df, metrics_by_run={"run-3": steps})  # the Mixer on original images
    assert len(fig.axes) == 4  # the bars, and below them each model over training
    curve = next(ax for ax in fig.axes if "over training" in ax.get_title())
    assert curve.lines[0].get_xydata().tolist() == [[10.0, 30.0], [20.0, 60.0]]


def test_data_scaling_states_the_papers_numbers_and_no_invented_curve():
    fig = figures.data_scaling(scaling_fixture())
    note = fig.get_supxlabel()
    assert "233 / 70 / 23 / 7 epochs" in note and "no value stated" in note
    assert all(len(ax.lines) == 3 for ax in fig.axes)  # ours only: the paper gives no values
    assert fig.legends and not any(ax.get_legend() for ax in fig.axes)  # off the data


def test_curves_legend_sits_below_the_panels_and_a_lone_frontier_point_has_no_legend():
    m = pd.DataFrame(dict(step=[1.0, 2.0], train_loss=[2.0, 1.0], eval_loss=[2.1, 1.2],
                          top1=[40.0, 60.0]))
    fig = figures.curves({"a": m, "b": m})
    assert fig.legends and not any(ax.get_legend() for ax in fig.axes)
    fig = figures.pareto_cost(pd.DataFrame(dict(
        run_id=["r1", "r2"], model=["mixer-b16", "vit-b16"], dataset=["d", "d"], img_size=[224, 224],
        top1=[80.0, 70.0], train_seconds=[100.0, 200.0], train_flops=[1e15, 2e15])), paper=False)
    for ax in fig.axes:  # one point beats the other: no frontier line, and no legend entry for it
        assert "Pareto frontier" not in [t.get_text() for t in ax.get_legend().get_texts()]


def test_token_mixing_mosaic_and_figure():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 16)).astype(np.float32)  # D_S=12 units, S=16 -> 4x4 images
    mosaic = figures.unit_mosaic(w, grid=(3, 4), sort=False)
    assert mosaic.shape == (3 * 5 - 1, 4 * 5 - 1)
    unit0 = w[0].reshape(4, 4) / np.abs(w[0]).max()
    np.testing.assert_allclose(mosaic[:4, :4], unit0, rtol=1e-6)
    assert np.isnan(mosaic[4, :]).all()  # separator row
    fig = figures.token_mixing({"block 0": w, "block 1": w * 2}, grid=(3, 4))
    img_axes = [ax for ax in fig.axes if ax.images]
    assert len(img_axes) == 2 and img_axes[0].images[0].get_array().shape == mosaic.shape
    with pytest.raises(UserError, match="square"):
        figures.token_mixing(np.zeros((4, 15)))


def test_token_mixing_sorts_low_frequency_first():
    x = np.arange(4)
    smooth = np.ones((4, 4)).ravel()
    checker = ((x[:, None] + x[None, :]) % 2 * 2 - 1).astype(float).ravel()
    m = figures.unit_mosaic(np.stack([checker, smooth]), grid=(1, 2), sort=True)
    np.testing.assert_allclose(m[:4, :4], 1.0)


def test_curves_lines():
    fig = figures.curves(metrics_fixture())
    loss, acc = fig.axes[:2]
    assert len(loss.lines) == 4  # train + eval per run
    assert len(acc.lines) == 2
    assert acc.lines[0].get_xydata()[:, 0].tolist() == [0, 10, 20, 30, 40]
    with pytest.raises(UserError, match="mixerbench pretrain"):
        figures.curves({})


@pytest.mark.parametrize("fn, table", [
    (figures.pareto_cost, "accuracy"), (figures.data_scaling, "scaling"),
    (figures.shuffle, "shuffle"),
])
def test_empty_input_names_producer(fn, table):
    with pytest.raises(UserError, match=results.PRODUCERS[table].split()[1]):
        fn(frame(table, []))


def test_every_artifact_is_registered_and_named_in_plot_help():
    """One registry drives `plot`: each paper figure and table once, each named (with its paper
    source) in `mixerbench plot --help`, so the help cannot drift from what plot draws."""
    from typer.testing import CliRunner

    from mixerbench.cli import app

    assert set(report.REPORTS) == {"pareto-cost", "accuracy-throughput", "data-scaling",
                                     "shuffle", "token-mixing", "curves", "table1", "compare",
                                     "throughput", "transfer", "avg5", "released"}
    import re

    raw = CliRunner().invoke(app, ["plot", "--help"], terminal_width=200).output
    help_text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", raw).split())  # rich's boxes cut lines
    for name, artifact in report.REPORTS.items():
        assert callable(artifact.make) and artifact.paper
        assert f"{name}:" in help_text, name
    assert "<out>/figures/" in help_text and "default: the results dir" in help_text


# ----------------------------------------------------------------------------- regenerate

def _write(root, table, df):
    root.mkdir(parents=True, exist_ok=True)
    df.to_csv(root / f"{table}.csv", index=False)


def test_regenerate_writes_files_and_skips_missing(tmp_path):
    root = tmp_path / "results"
    _write(root, "accuracy", accuracy_fixture())
    _write(root, "throughput", throughput_fixture())
    _write(root, "shuffle", shuffle_fixture())
    run = root / "runs" / "mixer-b16-cifar10-s0-abcd1234"
    run.mkdir(parents=True)
    metrics_fixture()["mixer-b16-cifar10-s0-abcd1234"].to_csv(run / "metrics.csv", index=False)
    out = report.regenerate(root, tmp_path / "out")
    names = {p.relative_to(tmp_path / "out").as_posix() for p in out["written"]}
    assert names == {
        "figures/pareto-cost.png", "figures/accuracy-throughput.png", "figures/shuffle.png",
        "figures/curves.png", "tables/throughput.csv", "tables/throughput.md",
        "tables/compare-cifar10-small.csv", "tables/compare-cifar10-small.md",
        "tables/compare-imagenet-imagenet-mixer-b16.csv",
        "tables/compare-imagenet-imagenet-mixer-b16.md",
    }  # one compare table per comparison (dataset and preset), as `compare` writes it
    assert set(out["skipped"]) == {"data-scaling", "transfer", "avg5", "released"}
    assert "mixerbench reproduce data-scaling" in out["skipped"]["data-scaling"]
    for p in out["written"]:
        assert p.stat().st_size > 0
    png = (tmp_path / "out" / "figures" / "shuffle.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    named = report.regenerate(root, tmp_path / "out", "compare")
    assert len(named["written"]) == 4
    cmp = pd.read_csv(tmp_path / "out" / "tables" / "compare-imagenet-imagenet-mixer-b16.csv")
    assert cmp.loc[0, "paper_top1"] == 76.44
    assert not list((tmp_path / "out").rglob("*.tmp"))  # atomic writes leave nothing behind


def test_regenerate_specific_missing_is_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="mixerbench reproduce shuffle"):
        report.regenerate(tmp_path / "empty", tmp_path / "out", names="shuffle")
    with pytest.raises(UserError, match="Did you mean"):
        report.regenerate(tmp_path / "empty", tmp_path / "out", names="shufle")
    with pytest.raises(UserError, match="--checkpoint"):
        report.regenerate(tmp_path / "empty", tmp_path / "out", names="token-mixing")
    assert not (tmp_path / "out").exists()
    out = report.regenerate(tmp_path / "empty", tmp_path / "out")
    assert out["written"] == []
    assert set(out["skipped"]) == {n for n, a in report.REPORTS.items() if a.default}


def test_regenerate_token_mixing_from_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    state = {
        "stem.proj.weight": torch.zeros(8, 3, 4, 4),
        "blocks.0.mlp_tokens.fc1.weight": torch.randn(8, 16),
        "blocks.1.mlp_tokens.fc1.weight": torch.randn(8, 16).to(torch.bfloat16),
    }
    ckpt = tmp_path / "checkpoint-last.safetensors"
    save_file(state, str(ckpt))
    w = report.load_token_mixing_weights(tmp_path)  # a run dir works too
    assert list(w) == ["block 0", "block 1"] and w["block 1"].shape == (8, 16)
    out = report.regenerate(tmp_path, tmp_path / "out", names=["token-mixing"], checkpoint=ckpt)
    assert [p.name for p in out["written"]] == ["token-mixing.png"]
    save_file({"head.weight": torch.zeros(2, 2)}, str(tmp_path / "vit.safetensors"))
    with pytest.raises(UserError, match="Mixer checkpoint"):
        report.load_token_mixing_weights(tmp_path / "vit.safetensors")


def test_shuffle_draws_any_number_of_metrics_and_runs():
    """`evaluate --fewshot 1,5,10,25 --shuffle ...` rows for many runs: five metrics per bar
    group (the alpha ramp once went negative past four), few-shot in shot order."""
    rows = []
    for r in range(6):
        for shuf in ("none", "patch", "global"):
            for metric in ("top1", "fewshot1", "fewshot5", "fewshot10", "fewshot25"):
                rows.append(dict(run_id=f"run{r}-{shuf}", model=f"mixer-t4[width={8 * (r + 1)}]",
                                 family="mixer", dataset="cifar10", train_shuffle=shuf,
                                 eval_shuffle=shuf, metric=metric, top1=50.0 + r,
                                 probe_dataset=None if metric == "top1" else "cifar10"))
    fig = figures.shuffle(frame("shuffle", rows))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["top-1", "linear 1-shot", "linear 5-shot", "linear 10-shot", "linear 25-shot"]
    assert len([a for a in fig.axes if a.patches]) == 6
    assert "linear probes on cifar10 (the training set" in fig._suptitle.get_text()


def test_figures_take_the_family_from_the_rows():
    """A row's `family` column colours it (a timm name the guess would call 'other')."""
    acc = accuracy_fixture()
    acc = pd.concat([acc, frame("accuracy", [dict(
        run_id="odd-s0", model="timm:convnext_atto", family="resnet", dataset="cifar10",
        split="test", img_size=32, epochs=10, top1=70.0, train_seconds=100, device_hours=0.1,
        train_flops=1e14)])], ignore_index=True)
    fig = figures.pareto_cost(acc, paper=False)
    colours = {tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in fig.axes[0].collections
               if isinstance(c, PathCollection) and len(c.get_offsets())}
    import matplotlib.colors as mc
    assert tuple(np.round(mc.to_rgb(style.COLORS["other"]), 3)) not in colours


def test_cost_panels_show_one_experiment():
    """Data-scaling runs (233 epochs) never share the 'ours' panel with a compare."""
    acc = accuracy_fixture().assign(experiment="compare:smoke")
    extra = frame("accuracy", [dict(run_id=f"ds-{f}", model="mixer-b16", dataset="cifar10",
                                    split="test", img_size=32, epochs=e, top1=50.0,
                                    train_seconds=100, device_hours=0.1, train_flops=1e14,
                                    experiment="data-scaling")
                               for f, e in ((0.03, 233), (1.0, 7))])
    fig = figures.pareto_cost(pd.concat([acc, extra], ignore_index=True), paper=False)
    n = sum(len(c.get_offsets()) for c in fig.axes[0].collections if isinstance(c, PathCollection))
    assert n == 3  # mixer, vit, bit of the compare
    assert "compare:smoke" in fig.axes[0].get_title()
    fig = figures.pareto_cost(pd.concat([acc, extra], ignore_index=True), paper=False,
                              experiment="data-scaling")
    assert "data-scaling" in fig.axes[0].get_title()
    with pytest.raises(UserError, match="experiment"):
        figures.pareto_cost(acc, paper=False, experiment="nope")


def test_an_evaluation_never_hides_the_training_row():
    acc = frame("accuracy", [
        dict(run_id="r", model="mixer-t4", dataset="d", split="test", img_size=32, top1=80.0,
             train_seconds=100.0, kind="pretrain"),
        dict(run_id="r", model="mixer-t4", dataset="d", split="test", img_size=32, top1=81.0,
             kind="evaluate")])
    kept = tables.latest_per_run(acc)
    assert len(kept) == 1 and kept.iloc[0]["train_seconds"] == 100.0


def test_the_compare_table_keeps_the_order_it_is_given():
    """Launched cells append in the order they finish; compare sorts rows into cell order and
    the table must keep it (it once re-sorted them into file order)."""
    acc = frame("accuracy", [
        dict(run_id=r, model=m, dataset="d", split="test", img_size=32, top1=t,
             train_seconds=10.0, kind="pretrain")
        for r, m, t in (("b", "vit-t4", 70.0), ("a", "mixer-t4", 80.0), ("a", "mixer-t4", 80.0))])
    given = acc.iloc[[1, 0]]  # the caller's order: mixer first, although its row came second
    assert list(tables.compare_table(given)["model"]) == ["mixer-t4", "vit-t4"]
    assert list(tables.latest_per_run(acc)["run_id"]) == ["b", "a"]


def test_data_scaling_ticks_round_the_epochs_each_subset_got():
    """Equal steps give 9.9994 epochs of the full set, not 9: the tick says 10 ep."""
    df = scaling_fixture()
    df["epochs"] = df["fraction"].map({0.03: 333.31, 0.1: 99.993, 0.3: 33.331, 1.0: 9.9994})
    ticks = [t.get_text() for t in figures.data_scaling(df).axes[0].get_xticklabels()]
    assert ticks == ["3%\n333 ep", "10%\n100 ep", "30%\n33 ep", "100%\n10 ep"], ticks


def test_the_default_panel_is_the_compare_even_on_a_smaller_dataset():
    """A compare on mnist-5k beside more data-scaling rows on cifar10: both cost figures show
    the compare (choosing the dataset with most rows first drew the data-scaling runs, and the
    throughput figure averaged their subsets as if they were seeds)."""
    acc = accuracy_fixture().assign(experiment="compare:smoke", dataset="mnist-5k")
    extra = frame("accuracy", [dict(run_id=f"ds-{m}-{f}", model=m, dataset="cifar10",
                                    split="test", img_size=32, epochs=10 / f, top1=50.0 + f,
                                    train_seconds=100, device_hours=0.1, train_flops=1e14,
                                    experiment="data-scaling")
                               for m in ("mixer-b16", "vit-b16") for f in (0.03, 0.1, 0.3, 1.0)])
    both = pd.concat([acc, extra], ignore_index=True)
    assert (both["dataset"] == "cifar10").sum() > (both["dataset"] == "mnist-5k").sum()
    title = figures.pareto_cost(both, paper=False).axes[0].get_title()
    assert "compare:smoke" in title and "mnist-5k" in title, title
    thr = frame("throughput", [dict(model=m, mode="infer", batch_size=8, img_size=224,
                                    img_per_sec_mean=100.0) for m in ("mixer-b16", "vit-b16")])
    title = figures.accuracy_throughput(both, thr, paper=False).axes[0].get_title()
    assert "compare:smoke" in title, title
    named = figures.pareto_cost(both, paper=False, dataset="cifar10").axes[0].get_title()
    assert "data-scaling" in named, named


def test_figures_draw_one_point_per_recipe_never_two_recipes_averaged():
    """Two recipes of one model in one compare (e.g. another lr): two points, each its own
    seeds' mean, in the cost figure and in the speed figure."""
    base = dict(model="mixer-t4", dataset="d", split="test", img_size=28, epochs=16,
                experiment="compare:smoke", kind="pretrain", train_seconds=10.0,
                device_hours=0.01, train_flops=1e12, device_name="cpu")
    acc = frame("accuracy", [dict(base, run_id="a0", recipe_id="a", top1=40.0),
                             dict(base, run_id="a1", recipe_id="a", top1=42.0),
                             dict(base, run_id="b0", recipe_id="b", top1=90.0)])
    fig = figures.pareto_cost(acc, paper=False)
    assert sorted(scatter_offsets(fig.axes[0])[:, 1]) == [41.0, 90.0]
    thr = frame("throughput", [dict(model="mixer-t4", mode="infer", img_size=28, batch_size=8,
                                    img_per_sec_mean=100.0, device_name="cpu", bench_id="x")])
    fig = figures.accuracy_throughput(acc, thr, paper=False)
    assert sorted(scatter_offsets(fig.axes[0])[:, 1]) == [41.0, 90.0]
