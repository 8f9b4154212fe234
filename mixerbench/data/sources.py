"""Where images come from: local folders and the Hugging Face hub (docs/paper-notes.md §6).

Owns reading a dataset's splits, labels and image cells through one small `Reader` interface,
detecting the image and label columns, and recognising a local copy's layout (`local_reader`).

Readers: `ParquetReader` (hub layout: `<split>-xxxxx-of-xxxxx.parquet`, any depth), `DiskReader`
(`Dataset.save_to_disk` output), `FolderReader` (`class/xxx.jpg`, optionally under `train/`,
`test/`, ... folders), `hub.HubReader` (`datasets.load_dataset`, with the reachability probe); `embedded.EmbeddedReader`
for `mnist-5k` and `synthetic`. Decoding and the tensor cache are in `decode.py`. `datasets` and PIL
are imported inside functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mixerbench.data.decode import LocalImage, file_stats_key
from mixerbench.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
SPLIT_WORDS = {"train", "test", "validation", "valid", "val", "dev", "eval"}
IMAGE_NAMES = ("image", "img", "pixel_values", "picture", "png", "jpg", "jpeg")
LABEL_NAMES = ("label", "labels", "fine_label", "class", "target", "y", "cls")


# ---------------------------------------------------------------- offline guard for datasets calls

@contextmanager
def _hf_offline():
    """Force `datasets`/`huggingface_hub` offline for one call (they read the env only at import)."""
    import datasets.config as dc
    import huggingface_hub.constants as hc

    old = dc.HF_HUB_OFFLINE, dc.HF_DATASETS_OFFLINE, hc.HF_HUB_OFFLINE
    dc.HF_HUB_OFFLINE = dc.HF_DATASETS_OFFLINE = hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dc.HF_HUB_OFFLINE, dc.HF_DATASETS_OFFLINE, hc.HF_HUB_OFFLINE = old
# ---------------------------------------------------------------- column detection

def _feature_type(feature) -> str:
    if isinstance(feature, dict):  # parsed from parquet metadata JSON
        return feature.get("_type", "")
    return type(feature).__name__


def detect_columns(features: dict, image_column: str | None, label_column: str | None,
                   what: str) -> tuple[str, str]:
    """Pick the image and label columns: given names, else HF feature types, else common names."""
    cols = list(features)
    for given, kind in ((image_column, "image"), (label_column, "label")):
        if given is not None and given not in features:
            raise UserError(f"{what} has no {kind} column '{given}'; its columns are {', '.join(cols)}.")
    img = image_column or next((c for c in cols if _feature_type(features[c]) == "Image"), None) \
        or next((c for c in IMAGE_NAMES if c in features), None)
    if img is None:
        raise UserError(f"{what} has no image column (columns: {', '.join(cols)}); "
                        f"pass image_column= to name it.")
    lab = label_column or next((c for c in cols if c != img and _feature_type(features[c]) == "ClassLabel"), None) \
        or next((c for c in LABEL_NAMES if c in features and c != img), None)
    if lab is None:
        raise UserError(f"{what} has no label column (columns: {', '.join(cols)}); "
                        f"pass label_column= to name it.")
    return img, lab


def class_names_of(feature) -> list[str] | None:
    if isinstance(feature, dict):
        return list(feature["names"]) if feature.get("_type") == "ClassLabel" and "names" in feature else None
    return list(feature.names) if _feature_type(feature) == "ClassLabel" else None


def label_ids(raw: np.ndarray, names: list[str] | None, what: str = "the dataset"
              ) -> tuple[np.ndarray, list[str] | None]:
    """int64 labels; string labels are mapped through `names` (or their sorted unique values)."""
    _check_label_values(raw, what)
    if raw.dtype.kind in "iu":
        return raw.astype(np.int64), names
    raw = raw.astype(str)
    names = names or sorted(set(raw.tolist()))
    lookup = {n: i for i, n in enumerate(names)}
    unknown = next((v for v in raw if v not in lookup), None)
    if unknown is not None:
        raise UserError(f"Label {unknown!r} of {what} is not one of its {len(names)} classes; fix the "
                        f"labels or the class list of the dataset.")
    return np.array([lookup[v] for v in raw], dtype=np.int64), names


def _check_label_values(raw: np.ndarray, what: str) -> None:
    """One class id or name per image: a column of lists, arrays or records is refused."""
    nested = raw.ndim != 1 or (raw.dtype.kind == "O" and any(
        not isinstance(v, (str, int, np.integer)) for v in raw[:1000].tolist()))
    if nested or raw.dtype.kind not in "iuUSO":
        kind = "lists" if nested else f"{raw.dtype} values"
        raise UserError(f"The label column of {what} holds {kind}, not one class id or name per "
                        f"image; pass label_column= naming a column of class ids or names.")


MAX_UNNAMED_CLASSES = 100_000  # classes a label column may imply without a class list


def _names_from_labels(raw: np.ndarray, what: str = "the dataset") -> list[str]:
    """The class list of a label column without ClassLabel metadata, from every split's labels:
    0..max for integers, the sorted distinct values for strings (the same in every split).

    Integer labels name at most as many classes as there are labelled images, or
    `MAX_UNNAMED_CLASSES` (ImageNet-21k's 21,843 fit) where that is more: a label of 10^9 would
    otherwise become a list of a billion class names (and a head as wide). A small copy of a
    registry dataset keeps the registry's own class-count check."""
    _check_label_values(raw, what)
    if raw.dtype.kind in "iu" and len(raw) and int(raw.max()) >= max(len(raw), MAX_UNNAMED_CLASSES):
        raise UserError(f"{what} has label {int(raw.max()):,} but no class list and only {len(raw):,} "
                        f"labelled images; number its classes from 0, or store the labels with a "
                        f"ClassLabel feature that names the classes.")
    if raw.dtype.kind in "iu":
        return [str(i) for i in range(int(raw.max()) + 1)] if len(raw) else []
    return sorted(set(raw.astype(str).tolist()))

# ---------------------------------------------------------------- readers

class Reader:
    """A dataset's splits before decoding. Subclasses fill these in; splits may be 'a+b'."""

    kind = "?"
    location = ""
    image_column: str = "image"
    label_column: str = "label"

    def split_sizes(self) -> dict[str, int]:
        raise NotImplementedError

    def class_names(self) -> list[str] | None:
        return None

    def cache_key(self) -> str:
        raise NotImplementedError

    def labels(self, split: str) -> np.ndarray:
        return np.concatenate([self._labels(s) for s in split.split("+")])

    def image_values(self, split: str):
        for s in split.split("+"):
            yield from self._image_values(s)

    def file_names(self, split: str) -> list[str | None] | None:
        """Each row's file name (no folders) in `labels` order, None for a row whose source kept
        none; None when this source keeps no file names at all. ImageNet's ReaL labels are
        matched by these (`ILSVRC2012_val_00000001.JPEG`), as timm matches them."""
        return None

    def rows(self, split: str):
        """Random-access rows for streaming: a `datasets.Dataset` (or list of paths) of image cells."""
        raise UserError(f"{self.location} cannot be streamed; load it in memory (stream=False).")

    def describe_source(self) -> str:
        return f"{self.kind} {self.location}"

    def _labels(self, split):  # pragma: no cover - abstract
        raise NotImplementedError

    def _image_values(self, split):  # pragma: no cover - abstract
        raise NotImplementedError


def _split_of(rel: Path) -> str:
    """Split name of a parquet file in hub layout: `train-00000-of-00001`, `data/test-*`, `train/0000`."""
    token = re.split(r"[-_.]", rel.stem)[0].lower()
    if token in SPLIT_WORDS:
        return token
    for part in reversed(rel.parts[:-1]):
        if part.lower() in SPLIT_WORDS:
            return part.lower()
    return "train"


class ParquetReader(Reader):
    kind = "local parquet"

    def __init__(self, root: Path, image_column=None, label_column=None, hf_cache: Path | None = None,
                 files: list[Path] | None = None):
        import pyarrow.parquet as pq

        self.root, self.location, self.hf_cache = root, str(root.resolve()), hf_cache
        files = [root] if root.is_file() else sorted(files if files is not None else _Scan(root).parquet_files(root))
        self.files: dict[str, list[Path]] = {}
        for f in files:
            self.files.setdefault(_split_of(f.relative_to(root) if root.is_dir() else Path(f.name)), []).append(f)
        schema = pq.read_schema(files[0])
        meta = (schema.metadata or {}).get(b"huggingface")
        feats = json.loads(meta).get("info", {}).get("features", {}) if meta else {}
        features = {name: feats.get(name, {"_type": str(schema.field(name).type)}) for name in schema.names}
        for name in schema.names:  # an un-annotated struct with a `bytes` field is an image cell
            if "bytes" in str(schema.field(name).type) and name not in feats:
                features[name] = {"_type": "Image"}
        self.image_column, self.label_column = detect_columns(features, image_column, label_column, self.location)
        self._names = class_names_of(features[self.label_column])

    def split_sizes(self):
        import pyarrow.parquet as pq

        return {s: sum(pq.ParquetFile(f).metadata.num_rows for f in fs) for s, fs in self.files.items()}

    def class_names(self):
        if self._names is None:  # no ClassLabel metadata: derive from the labels of every split
            self._names = _names_from_labels(np.concatenate([self._raw_labels(s) for s in self.files]),
                                              self.location)
        return self._names

    def cache_key(self):
        return "parquet|" + file_stats_key([f for fs in self.files.values() for f in fs])

    def _raw_labels(self, split):
        import pyarrow.parquet as pq

        return np.concatenate([pq.read_table(f, columns=[self.label_column]).column(0).to_numpy(zero_copy_only=False)
                               for f in self.files[split]])

    def _labels(self, split):
        return label_ids(self._raw_labels(split), self.class_names(), self.location)[0]

    def _image_values(self, split):
        import pyarrow.parquet as pq

        for f in self.files[split]:
            for batch in pq.ParquetFile(f).iter_batches(columns=[self.image_column], batch_size=2048):
                col = batch.column(0)
                if hasattr(col.type, "get_field_index") and col.type.get_field_index("bytes") >= 0:
                    paths = col.field("path").to_pylist() if col.type.get_field_index("path") >= 0 else None
                    for i, b in enumerate(col.field("bytes").to_pylist()):
                        yield b if b is not None else {"bytes": None, "path": paths[i] if paths else None}
                else:
                    yield from col.to_pylist()

    def file_names(self, split):
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = []
        for f in (f for s in split.split("+") for f in self.files[s]):
            try:  # the `path` field of an image cell (hub layout), without reading the bytes
                col = pq.read_table(f, columns=[f"{self.image_column}.path"]).column(0)
            except (KeyError, ValueError, OSError, TypeError, pa.ArrowException):
                return None
            names += [Path(p).name if p else None for p in col.to_pylist()]
        return names

    def rows(self, split):
        import datasets

        files = [str(f) for s in split.split("+") for f in self.files[s]]
        with _hf_offline():  # local files: never touch the network
            ds = datasets.load_dataset("parquet", data_files={"rows": files}, split="rows",
                                       cache_dir=str(self.hf_cache) if self.hf_cache else None)
        return _image_only(ds, self.image_column)


def _image_only(ds, column):
    import datasets

    ds = ds.select_columns([column])
    if _feature_type(ds.features[column]) == "Image":
        ds = ds.cast_column(column, datasets.Image(decode=False))  # decode in the workers, not here
    return ds


class _HFReader(Reader):
    """Shared code for `datasets.Dataset` sources (save_to_disk output and hub datasets)."""

    def _init_columns(self, features, image_column, label_column):
        self.image_column, self.label_column = detect_columns(dict(features), image_column, label_column,
                                                              self.location)
        self._names = class_names_of(features[self.label_column])

    def class_names(self):
        return self._names

    def _raw_labels(self, split):
        return np.asarray(self._split(split).select_columns([self.label_column])[self.label_column])

    def _labels(self, split):
        ids, names = label_ids(self._raw_labels(split), self.class_names(), self.location)
        self._names = names
        return ids

    def _image_values(self, split):
        ds = _image_only(self._split(split), self.image_column)
        for batch in ds.iter(batch_size=1024):
            yield from batch[self.image_column]

    def file_names(self, split):
        names = []
        for s in split.split("+"):
            cells = _image_only(self._split(s), self.image_column)[self.image_column]
            names += [Path(c["path"]).name if isinstance(c, dict) and c.get("path") else None
                      for c in cells]
        return names

    def rows(self, split):
        import datasets

        parts = [self._split(s) for s in split.split("+")]
        ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        return _image_only(ds, self.image_column)


class DiskReader(_HFReader):
    kind = "local save_to_disk"

    def __init__(self, root: Path, image_column=None, label_column=None):
        import datasets

        self.location = str(root.resolve())
        self.root = root
        loaded = datasets.load_from_disk(str(root))
        self.splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        first = next(iter(self.splits.values()))
        self._init_columns(first.features, image_column, label_column)

    def _split(self, split):
        return self.splits[split]

    def split_sizes(self):
        return {s: d.num_rows for s, d in self.splits.items()}

    def class_names(self):
        if self._names is None:  # no ClassLabel: derive from every split, as ParquetReader does,
            # so that label i means the same class in train and test
            self._names = _names_from_labels(np.concatenate([self._raw_labels(s) for s in self.splits]),
                                              self.location)
        return self._names

    def cache_key(self):
        # "disk2": caches from before class lists were derived from every split are not reused
        return "disk2|" + file_stats_key([f for f in self.root.rglob("*") if f.is_file()])

class FolderReader(Reader):
    """`class/xxx.jpg`, or `split/class/xxx.jpg` under split folders (`train/`, `test/`, ...).

    The layout is read strictly (`folder_layout`): split folders are splits and never classes,
    images sit directly in their class folder, and anything that fits neither layout is refused
    rather than guessed at (loose `test/*.png` beside `train/<class>/` once trained a 2-class
    "train vs test" classifier)."""

    kind = "local imagefolder"

    def __init__(self, root: Path, layout: dict[str, dict[str, list[Path]]] | None = None):
        self.root, self.location = root, str(root.resolve())
        layout = layout if layout is not None else folder_layout(root)
        self.files: dict[str, list[tuple[Path, str]]] = {
            split: [(f, c) for c, fs in classes.items() for f in fs] for split, classes in layout.items()}
        self._names = sorted({c for classes in layout.values() for c in classes})
        self._index = {n: i for i, n in enumerate(self._names)}

    def split_sizes(self):
        return {s: len(v) for s, v in self.files.items()}

    def class_names(self):
        return self._names

    def cache_key(self):
        return "folder2|" + file_stats_key([f for v in self.files.values() for f, _ in v])

    def _labels(self, split):
        return np.array([self._index[c] for _, c in self.files[split]], dtype=np.int64)

    def _image_values(self, split):
        return (LocalImage(f) for f, _ in self.files[split])

    def file_names(self, split):
        return [f.name for s in split.split("+") for f, _ in self.files[s]]

    def rows(self, split):
        return [LocalImage(f) for s in split.split("+") for f, _ in self.files[s]]


# Bounds of the layout scan (a `--dataset /` must be refused in a second, not walk the disk).
SCAN_DEPTH = 3  # hub parquet: `data/train-*.parquet`, `<config>/train/*.parquet`; images: split/class/img
SCAN_ENTRIES = 2_000_000  # folder entries looked at before a folder is refused as too big


class _Scan:
    """Bounded listing of a folder: entries counted, symlinked folders not followed."""

    def __init__(self, root: Path):
        self.root, self.seen = root, 0

    def entries(self, folder: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as it:
                out = []
                for e in it:
                    self.seen += 1
                    if self.seen > SCAN_ENTRIES:
                        raise UserError(f"{self.root} holds more than {SCAN_ENTRIES:,} files and folders; "
                                        f"point --dataset at the dataset's own folder.")
                    if not e.name.startswith("."):  # .git, .cache, .DS_Store: never data
                        out.append(e)
                return sorted(out, key=lambda e: e.name)
        except OSError as exc:
            raise UserError(f"Cannot list {folder} ({exc.strerror or type(exc).__name__}); check "
                            f"the dataset path and its permissions.") from None

    def parquet_files(self, folder: Path, depth: int = SCAN_DEPTH) -> list[Path]:
        found = []
        for e in self.entries(folder):
            if e.is_dir(follow_symlinks=False) and depth > 1:
                found += self.parquet_files(Path(e.path), depth - 1)
            elif e.name.endswith(".parquet") and e.is_file():
                found.append(Path(e.path))
        return found


def _is_image(e: os.DirEntry) -> bool:
    return os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS


def _class_images(scan: _Scan, folder: Path) -> list[Path]:
    """The images of one class folder: regular files (links to regular files included) directly
    in it; a sub-folder or a special file among them is refused, never skipped or opened."""
    images = []
    for e in scan.entries(folder):
        if not _is_image(e):
            if e.is_dir():
                raise UserError(f"{Path(e.path)} is a folder inside class folder {folder.name}/; put "
                                f"each image directly in its class folder (class/xxx.jpg).")
            continue  # a README or a labels file beside the images
        try:
            mode = os.stat(e.path).st_mode  # follows a link: what would be opened
        except OSError as exc:
            raise UserError(f"Image {Path(e.path)} cannot be read ({exc.strerror}); replace or remove "
                            f"it.") from None
        if not stat.S_ISREG(mode):
            raise UserError(f"{Path(e.path)} is not a regular file (a {_file_kind(mode)}); replace it "
                            f"with the image file or remove it.")
        images.append(Path(e.path))
    return images


def _file_kind(mode: int) -> str:
    return ("folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "socket"
            if stat.S_ISSOCK(mode) else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "special file")


def folder_layout(root: Path, scan: _Scan | None = None) -> dict[str, dict[str, list[Path]]]:
    """{split: {class: [image paths]}} of an image folder, read strictly.

    Either split folders (names in SPLIT_WORDS) each holding class folders, or class folders
    alone (one `train` split). Split folders are always splits, never classes; images beside
    split folders, images loose in a split folder, or other folders beside split folders are
    refused with one sentence, since any guess would train on the wrong classes.
    """
    scan = scan or _Scan(root)
    top = scan.entries(root)
    dirs = [e for e in top if e.is_dir()]
    loose = [e.name for e in top if _is_image(e) and not e.is_dir()]
    splits = [e for e in dirs if e.name.lower() in SPLIT_WORDS]
    if loose:
        raise UserError(f"{root} holds images outside class folders ({', '.join(loose[:3])}); put "
                        f"each image in a folder named after its class (class/xxx.jpg or "
                        f"train/class/xxx.jpg).")
    if not splits:
        layout = {"train": {e.name: _class_images(scan, Path(e.path)) for e in dirs}}
    else:
        others = [e.name for e in dirs if e not in splits]
        if others:
            raise UserError(f"{root} mixes split folders ({', '.join(e.name for e in splits)}) with "
                            f"other folders ({', '.join(others[:3])}); a dataset folder holds either "
                            f"split folders of class folders or class folders alone.")
        layout = {}
        for sp in splits:
            entries = scan.entries(Path(sp.path))
            stray = [e.name for e in entries if _is_image(e) and not e.is_dir()]
            if stray:
                raise UserError(f"Split folder {Path(sp.path)} holds images outside class folders "
                                f"({', '.join(stray[:3])}); put each in a folder named after its "
                                f"class ({sp.name}/<class>/{stray[0]}).")
            layout[sp.name] = {e.name: _class_images(scan, Path(e.path)) for e in entries if e.is_dir()}
    if not any(fs for classes in layout.values() for fs in classes.values()):
        raise UserError(f"{root} holds no parquet files, save_to_disk output or class/image folders; "
                        f"point at a dataset folder.")
    return layout

# ---------------------------------------------------------------- resolving a name or path

def local_reader(path: Path, image_column=None, label_column=None, hf_cache: Path | None = None) -> Reader:
    """The reader for a local copy, found by a strict, bounded look at the folder (never a walk
    of the whole tree): one parquet file, save_to_disk output, hub-layout parquet files at most
    SCAN_DEPTH folders down, or an image folder (`folder_layout`)."""
    if not path.exists():
        raise UserError(f"No dataset at {path}; check the path.")
    if path.is_file():
        if path.suffix == ".parquet":
            return ParquetReader(path, image_column, label_column, hf_cache)
        raise UserError(f"{path} is a file; pass a folder (parquet, save_to_disk output or class/image folders).")
    if not path.is_dir():
        raise UserError(f"{path} is not a file or folder; pass a dataset folder.")
    if path.resolve() == Path(path.resolve().anchor):
        raise UserError(f"{path} is the root of the file system, not a dataset folder; pass the "
                        f"folder that holds the dataset.")
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return DiskReader(path, image_column, label_column)
    scan = _Scan(path)
    parquet = scan.parquet_files(path)
    if parquet:
        return ParquetReader(path, image_column, label_column, hf_cache, files=parquet)
    return FolderReader(path, folder_layout(path, scan))


def read_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged or foreign data file raises (pyarrow, `datasets`, json, numpy),
    besides our own UserError; `get_dataset` turns these into one sentence."""
    import pyarrow as pa

    errors: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, TypeError, IndexError,
                                               AttributeError, RecursionError, pa.ArrowException)
    try:
        from datasets.exceptions import DatasetsError
        errors += (DatasetsError,)
    except ImportError:  # pragma: no cover - older datasets
        pass
    return errors


@contextmanager
def reading(where: str):
    """Turn a failure to read a data file under `where` into one sentence (exit 2)."""
    try:
        yield
    except UserError:
        raise
    except MemoryError:
        raise UserError(f"{where} does not fit in memory; use a smaller dataset or --img-size.") from None
    except read_errors() as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{where} is not a dataset mixerbench can read ({type(exc).__name__}: "
                        f"{first}); check or replace its files.") from None
