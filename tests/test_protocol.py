"""The paper's evaluation protocol off the embedded default: fine-tuning recipes found by the
dataset's canonical name, a class-stratified minival, capped evaluations that name their subset,
ReaL labels matched by file name, resize-crop above the trained resolution, and the transfer
protocol with its "Avg 5" table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import refused
from typer.testing import CliRunner

from mixerbench import results
from mixerbench.cli import app
from mixerbench.data import canonical_name, get_dataset, minival_mask, stratified_subset
from mixerbench.errors import UserError

runner = CliRunner()


@pytest.fixture(scope="module")
def proto_checkpoint(tmp_path_factory):
    """A mixerbench checkpoint of a 1-block width-16 Mixer at 28 px, patch 7, 10 classes."""
    from mixerbench.models import create_model
    from mixerbench.models.weights import model_description, save_checkpoint

    over = dict(width=16, depth=1)
    torch.manual_seed(0)
    model = create_model("mixer-t4", num_classes=10, img_size=28, patch_size=7, **over)
    path = tmp_path_factory.mktemp("proto") / "tiny.safetensors"
    save_checkpoint(path, model, model_description("mixer-t4", 10, 28, 7, over))
    return path


def _config(*args) -> dict:
    out = runner.invoke(app, ["finetune", *args, "--print-config"])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def _png_folder(root: Path, layout: dict[str, list[str]], size: int = 12) -> Path:
    """Real image files: `layout` maps a class folder to its file names (PNG or JPEG bytes by
    suffix), each image a flat colour of its class plus its index."""
    from PIL import Image

    for c, (cls, names) in enumerate(layout.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            img = Image.new("RGB", (size, size), (40 * c, 7 * i % 256, 128))
            img.save(root / cls / name, format="JPEG" if name.lower().endswith((".jpeg", ".jpg")) else "PNG")
    return root


# ------------------------------------------------------------ fine-tuning recipe by canonical name

@pytest.mark.parametrize("spelling,steps,warmup", [
    ("imagenet-1k", 20_000, 500), ("imagenet", 20_000, 500), ("ImageNet", 20_000, 500),
    ("cifar10", 10_000, 500), ("cifar-10", 10_000, 500), ("CIFAR-10", 10_000, 500),
    ("hf:uoft-cs/cifar10", 10_000, 500), ("hf:uoft-cs/cifar100", 10_000, 500),
    ("CIFAR-100", 10_000, 500), ("oxford-iiit-pet", 500, 100), ("Flowers-102", 500, 100),
    ("data/cifar10", 10_000, 500), ("copies/CIFAR-10.parquet", 10_000, 500),
])
def test_finetune_recipe_is_found_by_the_canonical_name(proto_checkpoint, spelling, steps, warmup):
    cfg = _config("--init", str(proto_checkpoint), "--dataset", spelling)
    assert (cfg["steps"], cfg["optim"]["warmup_steps"]) == (steps, warmup)
    assert cfg["preset"].startswith("finetune-")
    # a registry spelling is the registry name (one dataset, one run id); a hub id or a path
    # names itself (a path is identified by where it is)
    registry = "/" not in spelling and "." not in spelling
    assert cfg["data"]["dataset"] == (canonical_name(spelling) if registry else spelling)


def test_finetune_recipe_of_a_local_copy_under_data_dir(proto_checkpoint, data_shared_dir):
    """The offline CIFAR-10 copy, by name under --data-dir and by its folder path."""
    by_name = _config("--init", str(proto_checkpoint), "--dataset", "cifar10",
                      "--data-dir", str(data_shared_dir))
    by_path = _config("--init", str(proto_checkpoint), "--dataset", str(data_shared_dir / "cifar10"))
    assert by_name["steps"] == by_path["steps"] == 10_000
    assert by_name["preset"] == by_path["preset"] == "finetune-cifar10"


def test_unknown_dataset_without_steps_is_refused_in_one_sentence(proto_checkpoint, tmp_path):
    for dataset in ("mnist-5k", str(tmp_path / "my-digits")):
        out = runner.invoke(app, ["finetune", "--init", str(proto_checkpoint), "--dataset", dataset,
                                  "--print-config"])
        assert out.exit_code == 2, out.output
        msg = " ".join(out.output.split())
        assert "--steps" in msg and msg.count(". ") == 0 and "Traceback" not in out.output
    for given in (["--steps", "700"], ["--set", "steps=700"]):
        cfg = _config("--init", str(proto_checkpoint), "--dataset", "mnist-5k", *given)
        assert cfg["preset"] == "finetune" and cfg["steps"] == 700


def test_finetuning_above_the_trained_resolution_evaluates_with_resize_crop(proto_checkpoint):
    """Paper App. C: the 448 px Mixers were evaluated with resize-crop, the 224 px ones with
    resmall-crop; a crop the user sets is kept."""
    init = ["--init", str(proto_checkpoint), "--dataset", "cifar10"]
    assert _config(*init)["data"]["eval_pipeline"] == "eval-resmall"
    assert _config(*init, "--img-size", "1x")["data"]["eval_pipeline"] == "eval-resmall"
    two = _config(*init, "--img-size", "2x")
    assert two["data"]["eval_pipeline"] == "eval-resize" and two["model"]["img_size"] == 56
    assert _config(*init, "--img-size", "56")["data"]["eval_pipeline"] == "eval-resize"
    kept = _config(*init, "--img-size", "2x", "--set", "data.eval_pipeline=eval-resmall")
    assert kept["data"]["eval_pipeline"] == "eval-resmall"


# ----------------------------------------------------------------------- stratified minival

def _check_minival(name, num_classes, **kw):
    train = get_dataset(name, "train", **kw)
    mv = get_dataset(name, "minival", **kw)
    rest = get_dataset(name, "train-minus-minival", **kw)
    assert set(mv.labels.tolist()) == set(range(num_classes))  # every class held out
    assert set(rest.labels.tolist()) == set(range(num_classes))  # and every class still trained
    a, b = set(mv.indices.tolist()), set(rest.indices.tolist())
    assert not a & b and a | b == set(range(len(train)))
    assert torch.equal(mv.labels, train.labels[mv.indices])
    again = get_dataset(name, "minival", **kw)
    assert torch.equal(again.indices, mv.indices)  # the same images every time
    return train, mv


def test_minival_of_a_class_sorted_image_folder_holds_out_every_class(tmp_path):
    folder = _png_folder(tmp_path / "digits", {c: [f"{c}-{i:02d}.png" for i in range(12)]
                                               for c in ("ant", "bee", "cat")})
    train, mv = _check_minival(str(folder), 3)
    assert train.labels.tolist() == sorted(train.labels.tolist())  # read class by class
    assert torch.bincount(mv.labels).tolist() == [1, 1, 1]  # 1 % of 12, at least one per class


def test_minival_of_mnist_5k_is_stratified_and_seeded():
    train, mv = _check_minival("mnist-5k", 10)
    assert torch.bincount(mv.labels).tolist() == [4] * 10  # 1 % of 400 per class
    other = minival_mask(train.labels, 0.01, seed=1)
    assert not torch.equal(other.nonzero().flatten(), mv.indices)  # another seed, other images
    assert torch.equal(minival_mask(train.labels, 0.01, seed=1), other)


def test_stratified_subset_keeps_class_proportions_and_is_seeded():
    labels = torch.arange(10).repeat_interleave(torch.tensor([100] * 9 + [10]))  # class-sorted
    idx = stratified_subset(labels, 64)
    counts = torch.bincount(labels[idx], minlength=10)
    assert counts.tolist() == [7] * 9 + [1]  # 64 * 100 / 910 = 7.03 each, 0.70 for the small class
    assert torch.equal(idx, stratified_subset(labels, 64)) and idx.tolist() == sorted(idx.tolist())
    assert not torch.equal(idx, stratified_subset(labels, 64, seed=3))
    assert len(stratified_subset(labels, 10_000)) == len(labels)


# ----------------------------------------------------------------- capped evaluation subsets

def test_capped_evaluation_is_stratified_and_its_row_names_the_subset(proto_checkpoint, tmp_path):
    out = runner.invoke(app, ["evaluate", "--checkpoint", str(proto_checkpoint), "--dataset",
                              "mnist-5k", "--max-examples", "64", "--device", "cpu",
                              "--results-dir", str(tmp_path), "--format", "json"])
    assert out.exit_code == 0, out.output
    row = results.load("accuracy", tmp_path).iloc[-1]
    assert row["split"] == "test[stratified:64]"
    test = get_dataset("mnist-5k", "test")
    assert test.labels[:64].unique().tolist() == [0]  # the first 64 would be one class
    assert len(test.labels[stratified_subset(test.labels, 64)].unique()) == 10


def test_training_with_max_eval_examples_names_its_stratified_subset(tmp_path):
    from mixerbench.presets import resolve
    from mixerbench.train import train

    cfg = resolve("smoke", dataset="mnist-5k", flags={"steps": 2, "device": "cpu", "eval_every": 2},
                  overrides={"model.width": "16", "model.depth": "1", "max_eval_examples": "64",
                             "data.batch_size": "32"})
    s = train(cfg, tmp_path)
    assert s["split"] == "test[stratified:64]"
    assert results.load("accuracy", tmp_path).iloc[-1]["split"] == "test[stratified:64]"


# ------------------------------------------------------------------ ReaL labels by file name

WNIDS = ("n01440764", "n01443537", "n01484850")


@pytest.fixture(scope="module")
def proto_imagenet(tmp_path_factory):
    """ImageNet layout: `val/<wnid>/ILSVRC2012_val_*.JPEG` with the file numbers spread over the
    classes, so the class-folder reading order is not the file-name order, and a ReaL json in
    the canonical (file-name) order whose labels are each image's own class."""
    root = tmp_path_factory.mktemp("imagenet-layout") / "ilsvrc"
    owner = [2, 0, 1, 1, 2, 0, 0, 2, 1]  # class of ILSVRC2012_val_00000001 ... 09
    layout = {w: [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i, c in enumerate(owner) if c == k]
              for k, w in enumerate(WNIDS)}
    _png_folder(root / "val", layout, size=28)
    _png_folder(root / "train", {w: [f"{w}_{i}.JPEG" for i in range(3)] for w in WNIDS}, size=28)
    real = [[c] for c in owner]
    real[4] = []  # an image ReaL leaves out
    (root.parent / "real.json").write_text(json.dumps(real))
    return dict(root=root, real=root.parent / "real.json", owner=owner)


def test_real_labels_are_matched_by_file_name(proto_imagenet):
    from mixerbench.evaluate import real_labels_for

    val = get_dataset(str(proto_imagenet["root"]), "validation")
    names = val.file_names()
    assert names != sorted(names)  # class folders: not the canonical order
    matched = real_labels_for(names, proto_imagenet["real"])
    expected = [[] if n.endswith("00000005.JPEG") else [int(y)] for n, y in zip(names, val.labels)]
    assert matched == expected
    by_position = json.loads(proto_imagenet["real"].read_text())
    assert by_position != expected  # what matching by position would have scored against
    sub = val.subset([3, 0])
    assert sub.file_names() == [names[3], names[0]]


def test_real_labels_of_a_streamed_imagenet_copy_are_matched_by_file_name(proto_imagenet, tmp_path):
    """A folder named imagenet-1k is the registry's ImageNet, streamed from its files rather
    than decoded into memory; its rows keep their file names all the same."""
    import shutil

    from mixerbench.evaluate import real_labels_for

    copy = tmp_path / "imagenet-1k"
    shutil.copytree(proto_imagenet["root"], copy)
    val = get_dataset(str(copy), "validation")
    assert val.images is None and val.name == "imagenet-1k"  # streamed
    names = val.file_names()
    assert [Path(p).name for p in val.hf] == names
    matched = real_labels_for(names, proto_imagenet["real"])
    assert matched == [[] if n.endswith("00000005.JPEG") else [int(y)] for n, y in zip(names, val.labels)]


def test_a_parquet_copy_keeps_the_file_names_of_its_image_cells(tmp_path):
    """Hub-layout parquet: the `path` of each image cell is its file name; a copy whose cells
    keep no path (as the hub's CIFAR-10) has none, so ReaL labels would be refused."""
    import io

    import datasets
    from PIL import Image

    cells = []
    for i in (3, 1, 2):
        buf = io.BytesIO()
        Image.new("RGB", (12, 12), (60 * i, 0, 0)).save(buf, format="JPEG")
        cells.append({"bytes": buf.getvalue(), "path": f"ILSVRC2012_val_{i:08d}.JPEG"})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    datasets.Dataset.from_dict({"image": cells, "label": [0, 1, 0]}, features=features).to_parquet(
        str(tmp_path / "val-copy" / "validation-00000-of-00001.parquet"))
    val = get_dataset(str(tmp_path / "val-copy"), "validation")
    assert val.file_names() == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (3, 1, 2)]
    nameless = [dict(c, path=None) for c in cells]
    datasets.Dataset.from_dict({"image": nameless, "label": [0, 1, 0]}, features=features).to_parquet(
        str(tmp_path / "no-names" / "validation-00000-of-00001.parquet"))
    assert get_dataset(str(tmp_path / "no-names"), "validation").file_names() is None


def test_real_labels_that_cannot_be_matched_are_refused(proto_imagenet, tmp_path):
    from mixerbench.evaluate import real_labels_for

    with pytest.raises(UserError, match="file name"):
        real_labels_for(None, proto_imagenet["real"], "mnist-5k test")
    with pytest.raises(UserError, match="1 of the 2 images"):
        real_labels_for(["ILSVRC2012_val_00000001.JPEG", "cat.png"], proto_imagenet["real"])
    with pytest.raises(UserError, match="names"):
        real_labels_for(["ILSVRC2012_val_00000010.JPEG"], proto_imagenet["real"])  # past the file


def test_a_validation_image_twice_is_refused_with_real_labels(proto_imagenet, tmp_path):
    """One ILSVRC2012_val_* name is one image: the same name under two class folders (or as
    .JPEG and .png) is refused in one sentence, never counted twice in ReaL's denominator."""
    import shutil

    from mixerbench.evaluate import real_labels_for

    copy = tmp_path / "ilsvrc"
    shutil.copytree(proto_imagenet["root"], copy)
    first = next((copy / "val" / WNIDS[0]).iterdir())
    shutil.copy(first, copy / "val" / WNIDS[1] / first.name)
    val = get_dataset(str(copy), "validation")
    with pytest.raises(UserError, match=f"{first.stem} 2 times"):
        real_labels_for(val.file_names(), proto_imagenet["real"], "the copy")
    with pytest.raises(UserError, match="more than once"):
        real_labels_for(["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000001.png"],
                        proto_imagenet["real"])
    from mixerbench.models import create_model
    from mixerbench.models.weights import model_description, save_checkpoint

    model = create_model("mixer-t4", num_classes=3, img_size=28, patch_size=7, width=16, depth=1)
    ckpt = tmp_path / "three.safetensors"
    save_checkpoint(ckpt, model, model_description("mixer-t4", 3, 28, 7, dict(width=16, depth=1)))
    line = refused(runner.invoke(app, [
        "evaluate", "--checkpoint", str(ckpt), "--dataset", str(copy), "--split", "validation",
        "--device", "cpu", "--real-labels", str(proto_imagenet["real"]),
        "--results-dir", str(tmp_path / "res")]))
    assert "more than once" in line
    assert not (tmp_path / "res" / "accuracy.csv").exists()


def test_evaluate_scores_real_labels_by_file_name(proto_imagenet, proto_checkpoint, tmp_path):
    """End to end: a 3-class head on the ImageNet-layout folder; ReaL labels equal to each
    image's own class give ReaL top-1 = top-1 over the labelled images, whatever the order."""
    from mixerbench.models import create_model
    from mixerbench.models.weights import model_description, save_checkpoint

    torch.manual_seed(1)
    model = create_model("mixer-t4", num_classes=3, img_size=28, patch_size=7, width=16, depth=1)
    ckpt = tmp_path / "three.safetensors"
    save_checkpoint(ckpt, model, model_description("mixer-t4", 3, 28, 7, dict(width=16, depth=1)))
    args = ["evaluate", "--checkpoint", str(ckpt), "--dataset", str(proto_imagenet["root"]),
            "--split", "validation", "--device", "cpu", "--results-dir", str(tmp_path),
            "--format", "json"]
    out = runner.invoke(app, [*args, "--real-labels", str(proto_imagenet["real"])])
    assert out.exit_code == 0, out.output
    rows = {r["split"]: r for r in json.loads(out.output)}
    from mixerbench.evaluate import predict, _loader

    val = get_dataset(str(proto_imagenet["root"]), "validation")
    logits = predict(model, _loader(val, batch_size=16, pipeline="eval-resize", img_size=28, device="cpu"))
    keep = [i for i, n in enumerate(val.file_names()) if not n.endswith("00000005.JPEG")]
    expected = 100.0 * float((logits.argmax(1)[keep] == val.labels[keep]).float().mean())
    assert rows["validation-real"]["top1"] == pytest.approx(expected)

    digits = runner.invoke(app, ["evaluate", "--checkpoint", str(proto_checkpoint), "--dataset", "mnist-5k",
                                 "--device", "cpu", "--results-dir", str(tmp_path / "other"),
                                 "--real-labels", str(proto_imagenet["real"])])
    assert digits.exit_code == 2 and "file name" in digits.output
    assert not (tmp_path / "other" / "accuracy.csv").exists()


# ------------------------------------------------------------- the transfer protocol, "Avg 5"

def _avg5_frame(rows):
    import pandas as pd

    cols = list(results.SCHEMAS["avg5"])
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)


def test_avg5_table_puts_our_mean_beside_the_papers():
    import math

    from mixerbench.report.tables import avg5_table

    b16 = dict(model="mixer-b16", upstream="imagenet-21k", init="timm:mixer_b16_224.goog_in21k",
               resolution="1x",
               img_size=224, budget="full", pipeline="eval-resmall")
    scores = {"imagenet-1k": 80.0, "cifar10": 98.0, "cifar100": 88.0, "pets": 92.0, "flowers102": 99.0}
    rows = [dict(b16, dataset=d, top1=v, recipe_id=f"1x-{d}") for d, v in scores.items()]
    # a second seed of CIFAR-10's recipe: averaged; another recipe of it: not
    rows.append(dict(b16, dataset="cifar10", top1=97.0, recipe_id="1x-cifar10"))
    rows += [dict(b16, resolution="2x", img_size=448, dataset=d, top1=v + 1,
                  pipeline="eval-resize", recipe_id=f"2x-{d}")
             for d, v in scores.items() if d != "pets"]
    rows.append(dict(rows[-1], top1=50.0, recipe_id="2x-other"))
    tied = next(r for r in rows if r["recipe_id"] == "2x-cifar100")
    tied["note"] = "lr grid tie: 0.003, 0.03 all scored 90.00 on minival; the first was taken"
    table = avg5_table(_avg5_frame(rows))
    assert list(table.columns[:10]) == ["model", "upstream", "budget", "resolution", "img_size",
                                        "imagenet-1k", "cifar10", "cifar100", "pets", "flowers102"]
    one, two = table.iloc[0], table.iloc[1]
    assert one["cifar10"] == 97.5 and one["runs"] == 1 and one["datasets"] == 5
    assert one["note"] == "" and "Table 3" in one["paper_row"]
    assert one["avg5"] == pytest.approx((80 + 97.5 + 88 + 92 + 99) / 5) == one["avg"]
    assert one["paper_avg5"] == 92.50 and one["paper_imagenet"] == 80.64  # Table 3, B/16 in21k 224
    assert one["avg5_diff"] == pytest.approx(one["avg5"] - 92.50)
    assert one["imagenet_diff"] == pytest.approx(80.0 - 80.64)
    # the official repository's README: Mixer-B/16 from ImageNet-21k, CIFAR-10 at 224 px
    assert one["official_cifar10"] == 96.82 and one["cifar10_diff"] == pytest.approx(97.5 - 96.82)
    # four of the five: a mean of what is there, never called Avg 5; no paper B/16 at 448
    assert two["datasets"] == 4 and math.isnan(two["avg5"]) and math.isnan(two["pets"])
    assert two["flowers102"] == 50.0 and "flowers102: the latest of 2 recipes" in two["note"]
    assert "cifar100: lr grid tie: 0.003, 0.03" in two["note"]  # whose grid tied
    assert two["avg"] == pytest.approx((81 + 99 + 89 + 50) / 4)
    assert math.isnan(two["paper_avg5"]) and math.isnan(two["paper_imagenet"])
    assert two["paper_row"].startswith("no comparable paper row")
    assert math.isnan(two["official_cifar10"])
    with pytest.raises(UserError, match="reproduce avg5"):
        avg5_table(_avg5_frame([]))


def test_the_upstream_of_released_weights_is_read_from_the_timm_tag():
    from mixerbench.experiments import upstream_of_tag

    assert upstream_of_tag("timm:mixer_b16_224.goog_in21k") == "imagenet-21k"
    assert upstream_of_tag("timm:vit_base_patch16_224.augreg_in21k_ft_in1k") == "imagenet-21k"
    assert upstream_of_tag("timm:vit_base_patch16_224.augreg_in1k") == "imagenet-1k"
    # timm's tag says in21k, its docstring and the paper's numbers say ImageNet-1k
    # (docs/paper-notes.md §8)
    assert upstream_of_tag("timm:mixer_l16_224.goog_in21k_ft_in1k") == "imagenet-1k"
    assert upstream_of_tag("timm:mixer_b16_224.goog_in21k_ft_in1k") == "imagenet-1k"
    assert upstream_of_tag("timm:mixer_b16_224") == upstream_of_tag("weights/in21k.safetensors") == ""


@pytest.fixture(scope="module")
def proto_run(tmp_path_factory):
    """A finished run directory (a tiny Mixer trained on synthetic) to fine-tune from."""
    from mixerbench.presets import resolve
    from mixerbench.train import train

    cfg = resolve("smoke", dataset="synthetic", flags={
        "steps": 4, "data.batch_size": 50, "eval_every": 4, "model.img_size": 32,
        "model.patch_size": 8, "device": "cpu"},
        overrides={"model.width": "16", "model.depth": "1", "data.eval_batch_size": "200"})
    return train(cfg, tmp_path_factory.mktemp("upstream"))["run_dir"]


@pytest.mark.slow
def test_reproduce_avg5_runs_the_protocol_at_a_tiny_budget(proto_run, tmp_path):
    args = ["--quiet", "reproduce", "avg5", "--init", proto_run, "--budget", "smoke", "--dataset",
            "mnist-5k", "--device", "cpu", "--results-dir", str(tmp_path),
            "--set", "steps=2", "--set", "max_eval_examples=100"]
    out = runner.invoke(app, args, terminal_width=200)
    assert out.exit_code == 0, out.output
    rows = results.load("avg5", tmp_path)
    assert sorted(rows["resolution"]) == ["1x", "2x"] and sorted(rows["img_size"]) == [32, 64]
    assert set(rows["dataset"]) == {"mnist-5k"} and set(rows["upstream"]) == {"synthetic"}
    acc = results.load("accuracy", tmp_path)
    for _, r in rows.iterrows():
        grid = dict(g.split("=") for g in r["lr_grid"].split(";"))
        assert set(grid) == {"0.003", "0.03"} and r["lr"] in (0.003, 0.03)
        assert float(grid[f"{r['lr']:g}"]) == pytest.approx(r["minival_top1"], abs=0.005)
        assert r["minival_top1"] == max(float(v) for v in grid.values())
        final = json.loads((tmp_path / "runs" / r["run_id"] / "config.json").read_text())
        assert final["data"]["train_split"] == "train" and final["optim"]["lr"] == r["lr"]
        assert final["data"]["eval_pipeline"] == ("eval-resize" if r["resolution"] == "2x" else "eval-resmall")
        assert r["split"] == "test[stratified:100]"
    held_out = acc[acc["split"].astype(str).str.startswith("minival")]
    assert len(held_out) == 4  # two lrs at 1x and at 2x, scored on the minival
    for run_id in held_out["run_id"]:
        cfg = json.loads((tmp_path / "runs" / run_id / "config.json").read_text())
        assert cfg["data"]["train_split"] == "train-minus-minival"
    table = (tmp_path / "tables" / "avg5.csv").read_text().splitlines()
    assert len(table) == 3 and table[0].startswith(
        "model,upstream,budget,resolution,img_size,mnist-5k,avg")
    # the smoke budget says, on screen and in every row, that it measures no transfer
    assert "checks the plumbing, not transfer" in " ".join(out.output.split())
    assert all("checks the plumbing, not transfer" in n for n in rows["note"])
    assert "checks the plumbing" in (tmp_path / "tables" / "avg5.md").read_text()
    for _, r in rows.iterrows():  # an lr-grid tie is reported as a tie
        scores = [float(g.split("=")[1]) for g in r["lr_grid"].split(";")]
        assert ("lr grid tie" in r["note"]) == (scores.count(max(scores)) > 1)
    assert (tmp_path / "tables" / "avg5.md").is_file()
    again = runner.invoke(app, args)  # finished runs are read back, no row is added twice
    assert again.exit_code == 0 and len(results.load("avg5", tmp_path)) == 2


def test_reproduce_avg5_refuses_what_it_cannot_run(proto_run, tmp_path):
    base = ["reproduce", "avg5", "--device", "cpu", "--results-dir", str(tmp_path)]
    for extra, says in ((["--budget", "smoke"], "--init"),
                        (["--init", proto_run, "--budget", "full", "--dataset", "mnist-5k"], "--steps"),
                        (["--init", proto_run, "--budget", "cpu"], "smoke"),
                        (["--init", proto_run, "--dataset", "cifar10,CIFAR-10"], "twice")):
        out = runner.invoke(app, base + extra)
        assert out.exit_code == 2 and says in out.output, out.output
    out = runner.invoke(app, ["reproduce", "shuffle", "--init", proto_run, "--results-dir", str(tmp_path)])
    assert out.exit_code == 2 and "--init" in out.output
    assert not (tmp_path / "runs").exists()
