"""mixerbench.data: sources, splits and subsets, pipelines, shuffles, deterministic loading, bad input.

Offline and on CPU. CIFAR-10 comes from the local copy conftest.SHARED_DATA names (decoded once per session into a
temp cache); the other local sources are small datasets written to temp folders here.
"""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch

from mixerbench.data import (KNOWN_DATASETS, PIPELINES, class_balanced_subset, describe,
                             get_dataset, k_shot_subset, known_datasets, make_loader)
from mixerbench.data import decode, hub
from mixerbench.data import transforms as T
from mixerbench.errors import UserError

# in-process runs on one thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["ant", "bee", "cat"]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def data_cifar10(data_shared_dir, tmp_path_factory):
    """CIFAR-10 train and test from the offline copy, decoded once into a session cache."""
    cache = tmp_path_factory.mktemp("cifar-cache")
    train = get_dataset("cifar10", "train", data_dir=data_shared_dir, cache_dir=cache)
    test = get_dataset("cifar10", "test", data_dir=data_shared_dir, cache_dir=cache)
    return dict(train=train, test=test, cache=cache, data_dir=data_shared_dir)


def _rand_images(n, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def local_sets(tmp_path_factory):
    """The same 12/6-image, 3-class dataset as hub parquet, save_to_disk output and an image folder."""
    import datasets
    from PIL import Image

    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("local")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    splits = {"train": (_rand_images(12, seed=1), [i % 3 for i in range(12)]),
              "test": (_rand_images(6, seed=2), [i % 3 for i in range(6)])}
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict({"image": x, "label": y}, features=feats)
                               for s, (x, y) in splits.items()})
    (root / "pq" / "data").mkdir(parents=True)
    for s, d in dd.items():
        d.to_parquet(str(root / "pq" / "data" / f"{s}-00000-of-00001.parquet"))
    dd.save_to_disk(str(root / "disk"))
    for s, (x, y) in splits.items():
        for i, (a, lab) in enumerate(zip(x, y)):
            f = root / "folder" / s / CLASSES[lab] / f"{i:03d}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(f)
    # variable-size images (one class folder layout, no split folders)
    for i in range(6):
        f = root / "varied" / CLASSES[i % 3] / f"{i}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rand_images(1, size=10 + 3 * i, seed=i)[0][:, : 8 + 2 * i]).save(f)
    return dict(root=root, splits=splits)


def _order(ds, x_list, y_list):
    """Map dataset rows back to the written images (folder order is by class, then file name)."""
    return {a.tobytes(): y for a, y in zip(x_list, y_list)}


# ---------------------------------------------------------------- sources

def test_registry_lists_every_dataset():
    rows = known_datasets()
    assert [r["name"] for r in rows] == list(KNOWN_DATASETS)
    assert {"cifar10", "cifar100", "pets", "flowers102", "imagenet-1k", "mnist-5k", "synthetic"} <= set(KNOWN_DATASETS)
    assert KNOWN_DATASETS["cifar10"]["hub_id"] == "uoft-cs/cifar10"
    assert KNOWN_DATASETS["cifar100"]["label_column"] == "fine_label"
    assert all(r["offline"] for r in rows if r["name"] in ("mnist-5k", "synthetic"))


def test_a_local_copy_of_a_hub_dataset_with_configs_reads_the_registrys_config(local_sets, tmp_path):
    """SVHN's hub copy holds two configs side by side (`cropped_digits`, `full_numbers`); its
    record names the one it is (the 32 px digit crops), and only that folder is read."""
    import shutil

    from mixerbench.data import dataset_record

    assert dataset_record("svhn").hub_config == "cropped_digits"
    pq = local_sets["root"] / "pq" / "data"
    (tmp_path / "svhn" / "cropped_digits").mkdir(parents=True)
    (tmp_path / "svhn" / "full_numbers").mkdir()
    for s in ("train", "test"):
        shutil.copy(pq / f"{s}-00000-of-00001.parquet", tmp_path / "svhn" / "cropped_digits")
        shutil.copy(pq / "test-00000-of-00001.parquet",  # another config: other rows
                    tmp_path / "svhn" / "full_numbers" / f"{s}-00000-of-00001.parquet")
    ds = get_dataset("SVHN", "train", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert ds.name == "svhn" and len(ds) == 12 and "cropped_digits" in ds.source


@pytest.mark.parametrize("name,n_train,n_test,size", [("mnist-5k", 4000, 1000, 28), ("synthetic", 1000, 200, 32)])
def test_embedded_sets_load(name, n_train, n_test, size):
    tr, te = get_dataset(name, "train"), get_dataset(name, "test")
    assert (len(tr), len(te)) == (n_train, n_test)
    for ds in (tr, te):
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (size, size, 3)
        assert ds.labels.dtype == torch.int64 and ds.num_classes == 10 == len(ds.class_names)
        assert torch.bincount(ds.labels).tolist() == [len(ds) // 10] * 10  # class-stratified
    if name == "mnist-5k":  # grayscale digits become 3 equal channels
        assert torch.equal(tr.images[..., 0], tr.images[..., 2])


def test_cifar10_offline_copy(data_cifar10):
    tr, te = data_cifar10["train"], data_cifar10["test"]
    assert (len(tr), len(te)) == (50_000, 10_000)
    assert tr.num_classes == te.num_classes == 10
    assert tr.class_names[:3] == ["airplane", "automobile", "bird"]
    assert tr.images.shape == (50_000, 32, 32, 3) and tr.images.dtype == torch.uint8
    assert torch.bincount(te.labels).tolist() == [1000] * 10
    assert str(data_cifar10["data_dir"] / "cifar10") in tr.source


def test_cifar10_found_through_mixerbench_data(data_cifar10, monkeypatch):
    monkeypatch.setenv("MIXERBENCH_DATA", str(data_cifar10["data_dir"]))
    ds = get_dataset("cifar10", "test", cache_dir=data_cifar10["cache"])  # cached: no decode
    assert torch.equal(ds.images[:5], data_cifar10["test"].images[:5])


@pytest.mark.parametrize("layout", ["pq", "disk", "folder", "single-file", "data-dir"])
def test_local_sources_load(local_sets, layout, tmp_path):
    root = local_sets["root"]
    kw = dict(cache_dir=tmp_path)
    target = {"pq": root / "pq", "disk": root / "disk", "folder": root / "folder",
              "single-file": root / "pq" / "data" / "train-00000-of-00001.parquet", "data-dir": "pq"}[layout]
    if layout == "data-dir":
        kw["data_dir"] = root
    ds = get_dataset(str(target), "train", **kw)
    x, y = local_sets["splits"]["train"]
    assert len(ds) == 12 and ds.class_names == CLASSES and ds.num_classes == 3
    truth = _order(ds, x, y)  # PNG is lossless: every decoded image is one of ours, with its label
    for img, lab in zip(ds.images.numpy(), ds.labels.tolist()):
        assert truth[img.tobytes()] == lab
    if layout != "single-file":
        assert len(get_dataset(str(target), "test", **kw)) == 6


def test_differently_sized_images(local_sets, tmp_path):
    folder = str(local_sets["root"] / "varied")
    with pytest.raises(UserError, match="different sizes"):
        get_dataset(folder, cache_dir=tmp_path)
    ds = get_dataset(folder, img_size=12, cache_dir=tmp_path)  # central squares resized to 12
    assert ds.images.shape == (6, 12, 12, 3)
    st = get_dataset(folder, stream=True, cache_dir=tmp_path)  # streamed: decoded per batch
    assert st.images is None and len(st.hf) == 6 and st.labels.tolist() == ds.labels.tolist()
    b = make_loader(st, batch_size=4, train=True, pipeline="finetune", img_size=16, workers=0)
    (x, y), = list(b.epoch(0))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and -1 <= x.min() <= x.max() <= 1
    ev = list(make_loader(st, batch_size=4, train=False, pipeline="eval-resmall", img_size=16, workers=0).epoch(0))
    assert [len(y) for _, y in ev] == [4, 2]


def test_cache_is_reused(local_sets, tmp_path, monkeypatch):
    path = str(local_sets["root"] / "pq")
    first = get_dataset(path, "train", cache_dir=tmp_path)
    files = list((tmp_path / "tensors").glob("*.pt"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns

    def no_decode(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode, "decode_images", no_decode)
    again = get_dataset(path, "train", cache_dir=tmp_path)
    assert torch.equal(first.images, again.images) and files[0].stat().st_mtime_ns == mtime
    monkeypatch.setenv("MIXERBENCH_CACHE", str(tmp_path))  # the env var names the same cache
    assert torch.equal(get_dataset(path, "train").labels, first.labels)


# ---------------------------------------------------------------- splits and subsets

def test_minival_is_a_stratified_share_of_train(data_cifar10):
    kw = dict(data_dir=data_cifar10["data_dir"], cache_dir=data_cifar10["cache"])
    mv = get_dataset("cifar10", "minival", **kw)
    rest = get_dataset("cifar10", "train-minus-minival", **kw)
    assert len(mv) == 1000 and len(rest) == 49_000  # 2 % for CIFAR (docs/paper-notes.md §3)
    assert torch.bincount(mv.labels).tolist() == [100] * 10  # 2 % of every class
    assert not set(mv.indices.tolist()) & set(rest.indices.tolist())
    assert torch.equal(mv.images, data_cifar10["train"].images[mv.indices])
    assert len(get_dataset("synthetic", "minival")) == 10  # 1 % otherwise


def test_fractions_are_nested_and_class_balanced(data_cifar10):
    kw = dict(data_dir=data_cifar10["data_dir"], cache_dir=data_cifar10["cache"])
    subsets = {f: get_dataset("cifar10", fraction=f, **kw) for f in (0.03, 0.1, 0.3, 1.0)}
    for f, ds in subsets.items():
        assert torch.bincount(ds.labels).tolist() == [int(np.ceil(5000 * f))] * 10
    sets = [set(subsets[f].indices.tolist()) for f in (0.03, 0.1, 0.3, 1.0)]
    assert sets[0] < sets[1] < sets[2] < sets[3]
    again = get_dataset("cifar10", fraction=0.1, **kw)
    assert torch.equal(again.indices, subsets[0.1].indices)  # deterministic
    labels = torch.tensor([0] * 7 + [1] * 3)
    assert labels[class_balanced_subset(labels, 0.5)].tolist() == [0, 0, 0, 0, 1, 1]  # ceil(3.5), ceil(1.5)


def test_k_shot_draws_k_per_class():
    tr = get_dataset("synthetic", "train", k_shot=5, seed=1)
    assert torch.bincount(tr.labels).tolist() == [5] * 10
    assert torch.equal(get_dataset("synthetic", k_shot=5, seed=1).indices, tr.indices)
    assert not torch.equal(get_dataset("synthetic", k_shot=5, seed=2).indices, tr.indices)
    one = set(get_dataset("synthetic", k_shot=1, seed=1).indices.tolist())
    assert one < set(tr.indices.tolist())  # 1-shot inside 5-shot for one seed
    with pytest.raises(UserError, match="smallest class"):
        k_shot_subset(torch.tensor([0, 0, 0, 1, 1]), 3)


# ---------------------------------------------------------------- bad input

def _corrupt_parquet(root, tmp):
    """The local parquet train split with image 2's bytes broken, and a copy without labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(root / "pq" / "data" / "train-00000-of-00001.parquet")
    cells = table.column("image").to_pylist()
    cells[2] = {"bytes": b"not an image", "path": None}
    bad = table.set_column(0, "image", pa.array(cells, type=table.schema.field("image").type))
    (tmp / "bad" / "data").mkdir(parents=True)
    pq.write_table(bad.replace_schema_metadata(table.schema.metadata), tmp / "bad" / "data" / "train-0.parquet")
    (tmp / "nolabel").mkdir()
    pq.write_table(table.drop(["label"]).replace_schema_metadata(None), tmp / "nolabel" / "train-0.parquet")


def test_bad_inputs_raise_user_errors(local_sets, tmp_path):
    cache = tmp_path / "cache"
    _corrupt_parquet(local_sets["root"], tmp_path)
    cases = [
        (dict(name_or_path=str(tmp_path / "missing")), "No dataset"),
        (dict(name_or_path="./nowhere/cifar"), "No dataset folder"),
        (dict(name_or_path="cifar-1O"), "Did you mean"),
        (dict(name_or_path="synthetic", fraction=0.0), r"\(0, 1\]"),
        (dict(name_or_path="synthetic", fraction=1.5), r"\(0, 1\]"),
        (dict(name_or_path="synthetic", k_shot=101), "smallest class"),
        (dict(name_or_path="synthetic", split="validation"), "no split 'validation'"),
        (dict(name_or_path=str(tmp_path / "nolabel")), "no label column"),
        (dict(name_or_path=str(tmp_path / "bad")), "Image 2 of"),
        (dict(name_or_path=str(local_sets["root"] / "pq"), label_column="species"), "no label column 'species'"),
        (dict(name_or_path="synthetic", data_dir=str(tmp_path / "nodir")), None),  # embedded ignores data_dir
    ]
    for kw, pattern in cases:
        name = kw.pop("name_or_path")
        if pattern is None:
            assert len(get_dataset(name, cache_dir=cache, **kw)) == 1000
            continue
        with pytest.raises(UserError, match=pattern) as err:
            get_dataset(name, cache_dir=cache, **kw)
        assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    leftovers = [p.name for p in (cache / "tensors").glob("*")] if (cache / "tensors").exists() else []
    assert not any("bad" in p or p.endswith(".tmp") for p in leftovers)  # nothing half-written


def test_empty_split(tmp_path):
    from PIL import Image

    (tmp_path / "ds" / "test" / "ant").mkdir(parents=True)
    (tmp_path / "ds" / "train" / "ant").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "ds" / "train" / "ant" / "a.png")
    with pytest.raises(UserError, match="empty"):
        get_dataset(str(tmp_path / "ds"), "test", cache_dir=tmp_path / "c")


def test_hub_offline_fails_fast_with_local_options(tmp_path, monkeypatch):
    t0 = time.perf_counter()
    for name in ("cifar100", "hf:someone/some-images", "imagenet-1k"):
        with pytest.raises(UserError, match="--data-dir") as err:
            get_dataset(name, cache_dir=tmp_path)
        assert "MIXERBENCH_DATA" in str(err.value)
    assert time.perf_counter() - t0 < 5
    info = describe("cifar100", cache_dir=tmp_path)  # described from the registry when offline
    assert info["found"] is False and info["splits"]["train"] == 50_000


def test_failed_hub_probe_is_remembered(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise OSError("network unreachable")

    import socket

    monkeypatch.setattr(socket, "create_connection", refuse)  # the probe of runtime.reachable
    monkeypatch.setattr(hub, "hf_datasets_cache", lambda: tmp_path / "no-hf-cache")
    for _ in range(2):
        with pytest.raises(UserError, match="not reachable"):
            get_dataset("cifar100", cache_dir=tmp_path)
    assert len(calls) == 1 and (tmp_path / "hub-unreachable").exists()  # second call: no probe


# ---------------------------------------------------------------- shuffles (paper Figure 4)

@pytest.mark.parametrize("kind", ["none", "patch", "global"])
def test_shuffles_are_fixed_permutations(kind):
    x = torch.rand(4, 3, 32, 32)
    f, g = T.make_shuffle(kind, 32, patch_size=8, seed=3), T.make_shuffle(kind, 32, patch_size=8, seed=3)
    y = f(x)
    assert torch.equal(y, f(x)) and torch.equal(y, g(x))  # same on every call and every instance
    assert torch.equal(y.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values)  # a permutation
    assert torch.equal(y, x) == (kind == "none")
    if kind == "patch":  # every output patch is one input patch, pixels permuted the same way in each
        patches = lambda t: t.unfold(2, 8, 8).unfold(3, 8, 8).reshape(4, 3, 16, 64)
        px, py = patches(x), patches(y)
        src = [next(j for j in range(16) if torch.equal(py[0, 0, i].sort().values, px[0, 0, j].sort().values))
               for i in range(16)]
        assert sorted(src) == list(range(16))
        perms = [torch.argsort(px[0, 0, src[i]])[torch.argsort(torch.argsort(py[0, 0, i]))] for i in range(16)]
        assert all(torch.equal(p, perms[0]) for p in perms)
    with pytest.raises(UserError):
        T.make_shuffle("patch", 30, patch_size=8)


# ---------------------------------------------------------------- pipelines and loader

@pytest.fixture(scope="module")
def synth():
    return get_dataset("synthetic", "train")


@pytest.mark.parametrize("pipeline", list(PIPELINES))
@pytest.mark.parametrize("img_size", [32, 48])
def test_pipelines_shape_dtype_range(synth, pipeline, img_size):
    train = pipeline in T.TRAIN_PIPELINES
    b = make_loader(synth, batch_size=64, train=train, pipeline=pipeline, img_size=img_size,
                    randaug_m=15 if train else 0)
    x, y = next(iter(b.epoch(0)))
    assert x.shape == (64, 3, img_size, img_size) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.05
    assert y.dtype == torch.int64 and y.shape == (64,)


def test_eval_loader_keeps_every_example_in_order(synth):
    te = get_dataset("synthetic", "test")
    b = make_loader(te, batch_size=64, train=False, pipeline="eval-plain", img_size=32)
    batches = list(b.epoch(0))
    assert b.steps_per_epoch == 4 and [len(y) for _, y in batches] == [64, 64, 64, 8]
    assert torch.equal(torch.cat([y for _, y in batches]), te.labels)
    x0 = batches[0][0]
    assert torch.allclose(x0, te.images[:64].permute(0, 3, 1, 2).float() / 127.5 - 1)  # no augmentation
    with pytest.raises(UserError, match="evaluation loaders"):
        make_loader(te, batch_size=8, train=False, pipeline="pretrain", img_size=32)


def test_soft_targets_with_mixup_and_smoothing(synth):
    b = make_loader(synth, batch_size=32, train=True, pipeline="pretrain", img_size=32, mixup_p=0.5,
                    label_smoothing=0.1)
    x, y = next(iter(b.epoch(0)))
    assert y.shape == (32, 10) and y.dtype == torch.float32
    assert torch.allclose(y.sum(1), torch.ones(32)) and y.min() > 0
    _, y2 = next(iter(make_loader(synth, batch_size=32, train=True, pipeline="small", img_size=32,
                                  label_smoothing=0.1).epoch(0)))
    assert torch.allclose(y2.max(1).values, torch.full((32,), 0.91))


def _batches(b, epoch, start=0):
    return [(x.clone(), y.clone()) for x, y in b.epoch(epoch, start)]


def test_loader_is_deterministic_and_resumable(synth):
    kw = dict(batch_size=100, train=True, pipeline="pretrain", img_size=32, seed=7, randaug_m=10, mixup_p=0.2,
              shuffle="patch", shuffle_patch=8)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    a, b = make_loader(synth, **kw), make_loader(synth, **kw)
    full = _batches(a, 1)
    assert a.steps_per_epoch == 10 and len(full) == 10
    for (x1, y1), (x2, y2) in zip(full, _batches(b, 1)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    for (x1, y1), (x2, y2) in zip(full[6:], _batches(b, 1, start=6)):  # resume mid-epoch
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(full[0][0], _batches(a, 2)[0][0])  # a new epoch, a new order
    other = make_loader(synth, **{**kw, "seed": 8})
    assert not torch.equal(full[0][0], _batches(other, 1)[0][0])
    assert torch.equal(states[0], torch.get_rng_state())  # no global RNG touched
    assert np.array_equal(states[1], np.random.get_state()[1]) and states[2] == random.getstate()


def test_ranks_get_disjoint_shards(synth):
    kw = dict(batch_size=50, pipeline="small", img_size=32, world_size=2)
    r0, r1 = (make_loader(synth, train=True, rank=r, **kw) for r in (0, 1))
    single = make_loader(synth, train=True, batch_size=100, pipeline="small", img_size=32)
    assert r0.steps_per_epoch == r1.steps_per_epoch == 10
    for i in range(r0.steps_per_epoch):
        p0, p1 = set(r0.positions(3, i).tolist()), set(r1.positions(3, i).tolist())
        assert not p0 & p1 and p0 | p1 == set(single.positions(3, i).tolist())
    te = get_dataset("synthetic", "test")
    e0, e1 = (make_loader(te, train=False, rank=r, world_size=2, batch_size=64, pipeline="eval-plain", img_size=32)
              for r in (0, 1))
    rows = [e.positions(0, i) for e in (e0, e1) for i in range(e.steps_per_epoch)]
    assert torch.equal(torch.cat(rows), torch.arange(200))  # each example once, in order


def test_worker_path_matches_itself_across_worker_counts(local_sets, tmp_path):
    ds = get_dataset(str(local_sets["root"] / "folder"), stream=True, cache_dir=tmp_path)
    kw = dict(batch_size=4, train=True, pipeline="pretrain", img_size=8, seed=1, randaug_m=10)
    a = _batches(make_loader(ds, workers=0, **kw), 0)
    w = make_loader(ds, workers=2, **kw)
    b = _batches(w, 0)
    c = _batches(w, 0, start=1)  # a second pass of the same loader, resumed
    w.close()
    assert len(a) == 3
    for (x1, y1), (x2, y2) in zip(a, b):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a[1:], c))


# ---------------------------------------------------------------- RandAugment (big_vision's)

def _images(n, side, seed=0, lo=40, hi=200):
    """Distinct noise images in [lo, hi): no channel is flat or full range, none has a 128 square."""
    return torch.randint(lo, hi, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# big_vision/pp/autoaugment.py level_to_arg (_MAX_LEVEL = 10, no clamp) with distort_image_with_randaugment's
# HParams(cutout_const=40, translate_const=100), at 224 px: rotate m/10*30 deg, posterize int(m/10*4) bits,
# solarize threshold int(m/10*256), solarize_add int(m/10*110), enhance factors m/10*1.8+0.1, shear m/10*0.3,
# translate m/10*100 px, cutout pad int(m/10*40) px (a square of twice that side).
BIG_VISION_ARGS = {
    10: {"AutoContrast": (), "Equalize": (), "Invert": (), "Rotate": (30.0,), "Posterize": (4,), "Solarize": (256,),
         "Color": (1.9,), "Contrast": (1.9,), "Brightness": (1.9,), "Sharpness": (1.9,), "ShearX": (0.3,),
         "ShearY": (0.3,), "TranslateX": (100.0,), "TranslateY": (100.0,), "Cutout": (40,), "SolarizeAdd": (110,)},
    15: {"AutoContrast": (), "Equalize": (), "Invert": (), "Rotate": (45.0,), "Posterize": (6,), "Solarize": (384,),
         "Color": (2.8,), "Contrast": (2.8,), "Brightness": (2.8,), "Sharpness": (2.8,), "ShearX": (0.45,),
         "ShearY": (0.45,), "TranslateX": (150.0,), "TranslateY": (150.0,), "Cutout": (60,), "SolarizeAdd": (165,)},
}


@pytest.mark.parametrize("m", [10, 15])
def test_randaug_args_match_big_vision(m):
    assert T.RANDAUG_OPS == ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
                             "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
                             "Cutout", "SolarizeAdd")  # the reference's available_ops, in its order
    for op, want in BIG_VISION_ARGS[m].items():
        got = T.randaug_args(op, m, 224)
        assert got == pytest.approx(want, rel=1e-12), op
        assert all(type(g) is type(w) for g, w in zip(got, want)), op  # ints stay ints (bits, thresholds, px)
    # 32 px: the two pixel constants scale by 32/224 (translate 100 -> 14.3 px, cutout pad 40 -> 5 px at m=10)
    assert T.randaug_args("TranslateY", m, 32) == pytest.approx((m / 10 * 100 * 32 / 224,))
    assert T.randaug_args("Cutout", m, 32) == (int(m / 10 * 40 * 32 / 224),)
    assert T.randaug_args("Rotate", m, 32) == T.randaug_args("Rotate", m, 224)
    with pytest.raises(ValueError):
        T.randaug_args("Identity", m)


# sha256[:16] of big_vision/pp/autoaugment.py's op functions (run under tf.function, TF 2.15,
# tensorflow-addons 0.23, replace [128] * 3, arguments of level_to_arg at 224 px, Cutout centred on
# row 30, column 200) applied to `_formula_image()` as HWC uint8 bytes; key "op m sign".
BIG_VISION_DIGESTS = {
    "AutoContrast 10 +1": "ed4816550910a1ef", "Equalize 10 +1": "9691605f6da66910",
    "Invert 10 +1": "4faf3fa3cf14ba3b", "Rotate 10 +1": "975559c91d89eb40", "Rotate 10 -1": "492458bcb307786b",
    "Rotate 15 +1": "8940a5d88146f739", "Rotate 15 -1": "267d137ae2c63a2b", "Posterize 10 +1": "379b75a067ad5ee9",
    "Posterize 15 +1": "eeb4a6b28065829a", "Solarize 10 +1": "4faf3fa3cf14ba3b", "Solarize 15 +1": "626faa78719eada0",
    "Color 10 +1": "d63a1cea04e587d4", "Color 15 +1": "1ec589d3261f59f3", "Contrast 10 +1": "d07030b851b8972b",
    "Contrast 15 +1": "55ec9808946008f2", "Brightness 10 +1": "f8c75dd5faf5e027",
    "Brightness 15 +1": "224c2ec079938fe0", "Sharpness 10 +1": "52285c8a1a3cb0e6",
    "Sharpness 15 +1": "17d5916633b23829", "ShearX 10 +1": "6680f00597fb28a3", "ShearX 10 -1": "9b20fca126798a1b",
    "ShearX 15 +1": "877a383bd00037e6", "ShearX 15 -1": "c1656b5ac4681cd6", "ShearY 10 +1": "60c5c58a56b15a47",
    "ShearY 10 -1": "d4cd05c77c0311ab", "ShearY 15 +1": "db8632c8bc2f7491", "ShearY 15 -1": "a272ff2598c6a1f7",
    "TranslateX 10 +1": "1499fc4a203f6270", "TranslateX 10 -1": "066f7dc1b7d4bb01",
    "TranslateX 15 +1": "356ded6b56d58b0e", "TranslateX 15 -1": "fb9eb62f77e0bb90",
    "TranslateY 10 +1": "e8ff3a3471d6b7bf", "TranslateY 10 -1": "d2b0724242dc4c08",
    "TranslateY 15 +1": "0c9b5bae66f5022b", "TranslateY 15 -1": "5c539945cea7b4ef",
    "Cutout 10 +1": "b8d578c49dc4bcc9", "Cutout 15 +1": "83b4b64e6e9c12f9",
    "SolarizeAdd 10 +1": "2bc18981284f25f5", "SolarizeAdd 15 +1": "d0a24f11f3a8d3a9",
}


def _formula_image(side=224):
    """A fixed (1, 3, side, side) uint8 image in [30, 220) from integer arithmetic (no RNG, no version drift)."""
    i = torch.arange(side)[:, None]
    j = torch.arange(side)[None, :]
    chans = [(i * i * 7 + j * 13 + i * j * 3 + c * 85 + (i // 7) * (j // 11) * 29) % 190 + 30 for c in range(3)]
    return torch.stack(chans)[None].to(torch.uint8)


def test_randaug_ops_match_big_vision_bit_for_bit():
    import hashlib

    x = _formula_image()
    for key, digest in BIG_VISION_DIGESTS.items():
        op, m, sign = key.split()
        y = T._randaug_op(x, op, T.randaug_args(op, int(m)), torch.tensor([int(sign)]), torch.tensor([[30, 200]]))
        assert hashlib.sha256(y[0].permute(1, 2, 0).contiguous().numpy().tobytes()).hexdigest()[:16] == digest, key
    # the reference's uint8 threshold wraps: m=10 (256) is a full inversion, m=15 (384) is threshold 128
    assert BIG_VISION_DIGESTS["Solarize 10 +1"] == BIG_VISION_DIGESTS["Invert 10 +1"]


def test_rand_augment_always_applies_the_chosen_op():
    n, side, m = 96, 32, 10
    x = _images(n, side)
    y = T.rand_augment(x, torch.Generator().manual_seed(3), m, layers=1)
    ops, _, centers = T.randaug_draws(torch.Generator().manual_seed(3), n, side, side)
    assert len(set(ops.tolist())) >= 14  # the draw reaches (almost) every op
    # on these images every op at m=10 changes every image: no op is skipped with some probability
    assert (y != x).flatten(1).any(1).all()
    names = [T.RANDAUG_OPS[k] for k in ops.tolist()]
    for i, op in enumerate(names):
        if op in ("Invert", "Solarize"):  # Solarize at m=10: threshold 256 wraps to 0 in uint8, all inverted
            assert torch.equal(y[i], 255 - x[i]), op
        if op == "Cutout":
            changed = (y[i] != x[i]).any(0)
            rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
            cy, cx = centers[i].tolist()
            pad = T.randaug_args("Cutout", m, side)[0]
            assert rows.tolist() == list(range(max(0, cy - pad), min(side, cy + pad)))
            assert cols.tolist() == list(range(max(0, cx - pad), min(side, cx + pad)))
    # two layers: a second op on top of the first for every image
    y2 = T.rand_augment(x, torch.Generator().manual_seed(3), m)
    assert (y2 != y).flatten(1).any(1).float().mean() > 0.9


def test_cutout_paints_a_grey_square_of_twice_the_pad():
    x = torch.full((2, 3, 224, 224), 7, dtype=torch.uint8)
    pad = T.randaug_args("Cutout", 10, 224)[0]
    assert pad == 40  # big_vision cutout_const 40 at m=10: an 80 px square
    y = T._randaug_op(x, "Cutout", (pad,), torch.ones(2), torch.tensor([[100, 120], [10, 220]]))
    assert set(y.unique().tolist()) == {7, T.FILL}
    assert (y[0, :, 60:140, 80:160] == T.FILL).all() and (y[0] == T.FILL).sum() == 3 * 80 * 80
    assert (y[1, :, 0:50, 180:224] == T.FILL).all() and (y[1] == T.FILL).sum() == 3 * 50 * 44  # clipped at the edges


def test_rand_augment_is_seeded_and_batched():
    x = _images(64, 16)
    out = lambda s, m=15, **kw: T.rand_augment(x, torch.Generator().manual_seed(s), m, **kw)
    assert torch.equal(out(0), out(0)) and not torch.equal(out(0), out(1))
    assert out(0).dtype == torch.uint8 and out(0).shape == x.shape
    assert torch.equal(out(0, m=0), x)
    assert (out(0) != x).flatten(1).any(1).float().mean() > 0.95  # every op applies
    # batched = the same ops applied one image at a time with that image's draws
    gen = torch.Generator().manual_seed(0)
    draws = [T.randaug_draws(gen, len(x), 16, 16) for _ in range(2)]
    one_by_one = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        for ops, signs, centers in draws:
            op = T.RANDAUG_OPS[ops[i]]
            xi = T._randaug_op(xi, op, T.randaug_args(op, 15, 16), signs[i:i + 1], centers[i:i + 1])
        one_by_one.append(xi)
    assert torch.equal(out(0), torch.cat(one_by_one))
    # m=15 is stronger than m=10 (no clamp at 10): larger mean change
    assert (out(0).float() - x.float()).abs().mean() > (out(0, m=10).float() - x.float()).abs().mean()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rand_augment_same_bits_on_gpu():
    x = _images(64, 32)
    cpu = T.rand_augment(x, torch.Generator().manual_seed(5), 15)
    gpu = T.rand_augment(x.cuda(), torch.Generator().manual_seed(5), 15)
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


def test_crop_boxes_inside_the_image():
    assert T.CROP_AREA["pretrain"] == (0.05, 1.0)  # big_vision inception_crop(area_min=5)
    boxes = T.sample_crop_boxes(torch.Generator().manual_seed(0), 1000, 40, 30, T.CROP_AREA["pretrain"])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 30).all()
    area = (h * w).float() / 1200
    assert area.min() >= 0.04 and area.min() < 0.08 and area.max() <= 1.0  # rounding to whole px: ~0.05


# ---------------------------------------------------------------- describe / bench

def test_describe_local_copy(data_cifar10):
    info = describe("cifar10", data_cifar10["data_dir"])
    assert info["found"] and info["splits"] == {"train": 50_000, "test": 10_000, "minival": 1000,
                                                "train-minus-minival": 49_000}
    assert info["num_classes"] == 10 and info["image_size"] == 32
    assert str(data_cifar10["data_dir"]) in info["source"]


def test_input_bench_rows_ours_timm_and_the_floor(tmp_path):
    """`datasets DIR --write-jpegs N --bench`: photo-sized JPEGs written, then one row per
    pipeline in inputs.csv under one bench id, each a positive per-core rate, timm's the unit
    of the ratios; the same folder again is refused (it exists)."""
    from conftest import cli, refused

    from mixerbench import results

    folder, res = tmp_path / "jpegs", tmp_path / "res"
    r = cli("datasets", folder, "--write-jpegs", 20, "--bench", "--images", 16, "--batch-size", 8,
            "--repeats", 1, "--workers", 1, "--device", "cpu", "--results-dir", res)
    assert r.exit_code == 0, r.output
    files = sorted(folder.rglob("*.jpg"))
    assert len(files) == 20 and len({f.parent for f in files}) == 10
    from PIL import Image

    assert Image.open(files[0]).size == (500, 375) and 40_000 < files[0].stat().st_size < 300_000
    rows = results.load("inputs", res)
    assert list(rows["pipeline"]) == ["decode", "ours-host", "ours", "timm"]
    assert rows["bench_id"].nunique() == 1 and (rows["images"] == 16).all()
    assert (rows["img_per_cpu_sec"] > 0).all() and (rows["img_per_sec"] > 0).all()
    assert rows.set_index("pipeline").loc["timm", "timm_ratio"] == 1.0
    assert "exists" in refused(cli("datasets", folder, "--write-jpegs", 2))


def test_input_bench_of_an_in_memory_set_has_the_tensor_path():
    from mixerbench.data.inputbench import input_bench

    ds = get_dataset("synthetic", "train")
    rows = input_bench(ds, batch_size=32, images=64, repeats=1, workers=1)
    assert [r["pipeline"] for r in rows] == ["tensor", "ours-host", "ours"]
    assert all(r["img_per_cpu_sec"] > 0 and r["timm_ratio"] is None for r in rows)
    with pytest.raises(UserError, match="--images"):
        input_bench(ds, batch_size=32, images=16)


def test_worker_decode_at_the_crop_scale_keeps_the_picture(tmp_path):
    """A big JPEG is decoded at a DCT scale only as far as the crop keeps img_size px each
    way: the crop comes out as it does from the full decode (within JPEG and resize error);
    grey, CMYK and PNG images come out RGB."""
    from PIL import Image

    yy, xx = np.mgrid[0:1500, 0:2000]
    smooth = np.stack([(xx * 0.1) % 256, (yy * 0.15) % 256, ((xx + yy) * 0.05) % 256], -1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    enc = decode.Encoded(decode.LocalImage(path))
    assert enc.size == (2000, 1500)
    full = decode.Encoded(decode.LocalImage(path)).decode()
    small = enc.decode(500, 375)  # a crop of the whole image to 224 px needs no more than 1/4
    assert tuple(full.shape) == (3, 1500, 2000) and tuple(small.shape) == (3, 375, 500)
    a = T.resize_u8(full, 224, 224).float()
    b = T.resize_u8(small, 224, 224).float()
    assert (a - b).abs().mean() < 2
    gen = torch.Generator().manual_seed(0)
    out = T.worker_geometry(decode.Encoded(decode.LocalImage(path)), "pretrain", 224, gen)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    for mode, ext in (("L", "jpg"), ("CMYK", "jpg"), ("RGBA", "png"), ("P", "png")):
        f = tmp_path / f"{mode}.{ext}"
        Image.fromarray(smooth[:40, :50]).convert(mode).save(f)
        x = decode.Encoded(decode.LocalImage(f)).decode()
        assert x.shape == (3, 40, 50) and x.dtype == torch.uint8, mode


def test_import_is_lazy():
    import subprocess
    import sys

    code = "import sys, mixerbench.data; print('datasets' in sys.modules, 'PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_cli_datasets_command(data_cifar10):
    import json

    from typer.testing import CliRunner

    from mixerbench.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["datasets", "--format", "json"])
    assert r.exit_code == 0 and [d["name"] for d in json.loads(r.stdout)] == list(KNOWN_DATASETS)
    r = runner.invoke(app, ["datasets", "cifar10", "--data-dir", str(data_cifar10["data_dir"]), "-f", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["splits"]["test"] == 10_000
    for bad in (["datasets", "cifar-1O"], ["datasets", "/no/such/folder"]):
        r = runner.invoke(app, bad)
        assert r.exit_code == 2 and "Traceback" not in r.output


def test_a_known_dataset_has_the_same_splits_by_name_and_by_path(data_shared_dir):
    """The ViT minival protocol (2 % of CIFAR train) holds whether cifar10 is named or pointed at."""
    by_name = describe("cifar10", data_dir=data_shared_dir)
    by_path = describe(str(data_shared_dir / "cifar10"))
    assert by_name["name"] == by_path["name"] == "cifar10"
    assert by_name["splits"] == by_path["splits"]
    assert by_path["splits"]["minival"] == 1_000  # 2 % of 50,000


def test_a_bad_image_in_a_pooled_decode_under_the_training_loops_handler_is_one_error(child_env):
    """A split big enough for the decode pool, with one image that cannot be read, decoded while
    the training loop's SIGTERM handler (a flag) is in place: the error comes back as its one
    sentence within seconds. The pool stops its workers with SIGTERM, and forked workers that
    inherited the flag handler outlived it, so the command waited forever (every time, 3 of 3,
    before the workers were given the default handler)."""
    import os
    import signal
    import subprocess
    import sys

    code = """
import io
from PIL import Image
from mixerbench.data import decode
from mixerbench.errors import UserError
from mixerbench.runtime import stop_signals
buf = io.BytesIO(); Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
cells = [{"bytes": buf.getvalue(), "path": None}] * (4 * decode.DECODE_POOL_MIN)
cells[3000] = {"bytes": b"not an image", "path": None}
with stop_signals():
    try:
        decode.decode_images(cells, len(cells), img_size=None, resize=False, what="train")
    except UserError as exc:
        print(exc)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], env=child_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its stuck workers
        proc.communicate()
        pytest.fail("the pooled decode never returned after its error")
    assert proc.returncode == 0, err
    assert out.startswith("Image 3000 of train cannot be read"), out
