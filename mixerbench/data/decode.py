"""Image bytes to uint8 tensors, and the on-disk tensor cache (GPU-resident small datasets, worker processes for large ones).

Owns decoding image cells (parquet/HF `{'bytes','path'}`, bytes, paths, PIL images, arrays) into one
uint8 (N, H, W, 3) tensor, in a pool of forked processes for large splits, and the cache those
tensors live in: `<cache>/tensors/<name>-<split>-<size>-<hash>.pt`, written to a temp file and
renamed so that a reader never sees half a file and a failed decode leaves nothing behind.
The cache root is `cache_dir`, else $MIXERBENCH_CACHE, else ~/.cache/mixerbench.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from mixerbench.errors import UserError
from mixerbench.files import atomic_write_bytes
from mixerbench.names import slug


class LocalImage(str):
    """The path of an image file found by listing a dataset folder (`FolderReader`).

    Only these are opened as files: a path written inside a data file (a parquet or
    save_to_disk cell without bytes) is data, never a file to open, or a planted `/dev/zero`,
    a FIFO or another user's files would be read into the cache and the model."""

    __slots__ = ()


CACHE_FORMAT = 2  # bump when the cached payload changes (2: a fingerprint of the source)


# ---------------------------------------------------------------- cache directory and tensor cache

def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $MIXERBENCH_CACHE, else ~/.cache/mixerbench (an empty HOME is no home:
    `process.cache_home`)."""
    from mixerbench.process import cache_home

    root = cache_dir or os.environ.get("MIXERBENCH_CACHE") or cache_home() / "mixerbench"
    return Path(root).expanduser()


def tensor_cache_path(root: Path, name: str, key: str, split: str, size: int | None) -> Path:
    digest = hashlib.sha1(f"{CACHE_FORMAT}|{key}".encode()).hexdigest()[:10]
    size_key = "native" if size is None else f"{size}px"
    return root / "tensors" / f"{slug(name)[:80]}-{slug(split)}-{size_key}-{digest}.pt"


def cache_fingerprint(key: str, labels, class_names, images_shape) -> str:
    """What a cached split must agree with: its source's identity (`Reader.cache_key`), its
    labels, class names and image shape. The images themselves are not hashed on every load
    (0.4 s for CIFAR-10's 150 MB, measured); a torn file fails to load, and `_in_memory` also
    checks the labels against the source wherever reading them is cheap."""
    h = hashlib.sha256(f"{CACHE_FORMAT}|{key}|{list(class_names)}|{tuple(images_shape)}|".encode())
    h.update(np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).tobytes())
    return h.hexdigest()


def load_tensor_cache(path: Path, key: str) -> dict | None:
    """The cached split at `path`, or None when it is absent, torn, foreign or does not carry
    the fingerprint of `key` and its own contents (it is then decoded again and rewritten)."""
    if not path.is_file():
        return None
    try:  # mmap: a 150 MB CIFAR cache maps in milliseconds and pages in on use
        payload = torch.load(path, mmap=True, weights_only=True)
        if payload.get("format") != CACHE_FORMAT:
            return None
        images, labels = payload["images"], payload["labels"]
        ok = (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
              and images.dtype == torch.uint8 and images.ndim == 4 and labels.ndim == 1
              and len(images) == len(labels) and payload.get("fingerprint") == cache_fingerprint(
                  key, labels.numpy(), payload["class_names"], images.shape))
    except Exception:  # torn or foreign file: ignore it, it will be rewritten
        return None
    return payload if ok else None


def save_tensor_cache(path: Path, payload: dict, key: str) -> None:
    """Written atomically (readers never see half a file), with its fingerprint; a cache that
    cannot be written (read-only, full, not a folder) is one sentence naming the way out."""
    buf = io.BytesIO()
    fp = cache_fingerprint(key, payload["labels"].numpy(), payload["class_names"], payload["images"].shape)
    torch.save({**payload, "format": CACHE_FORMAT, "fingerprint": fp}, buf)
    try:
        os.makedirs(path.parent, exist_ok=True)  # here, so the sentence names MIXERBENCH_CACHE
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise cache_error(exc, path) from None


def cache_error(exc: OSError, path: Path) -> UserError:
    """The one sentence for a dataset cache that cannot be written."""
    why = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
           errno.ENOTDIR: "a file is in the way of a folder"}.get(exc.errno, exc.strerror or type(exc).__name__)
    return UserError(f"Cannot write the dataset cache at {path.parent} ({why}); set MIXERBENCH_CACHE "
                     f"to a writable folder with free space.")


def file_stats_key(files: list[Path]) -> str:
    """Identity of a local copy: paths, sizes and mtimes (a changed copy gets a new cache entry)."""
    h = hashlib.sha1()
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns};".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- image decoding

class ImageRefused(ValueError):
    """An image cell or file mixerbench will not open; the message completes "Image N of X ..."."""


# Pillow's own decompression-bomb threshold (about 89.5 megapixels, checked from the header
# before any pixel is decoded): larger images are refused with their size, not a raw warning.
MAX_IMAGE_BYTES = 512 * 2**20  # an image file larger than this is not read into memory


def _read_local(path) -> bytes:
    """The bytes of an image file found by listing a dataset folder, read through
    `files.read_bytes`: opened without blocking and only if it is a regular file (a FIFO or
    device behind a link is refused, not read), at most MAX_IMAGE_BYTES."""
    from mixerbench import files

    try:
        data = files.read_bytes(path, MAX_IMAGE_BYTES)
    except UserError as exc:
        raise ImageRefused(f"cannot be read: {str(exc).rstrip('.')}.") from None
    if data is None:
        raise ImageRefused(f"({path}) is gone; list the dataset again.")
    return data


def _source(value):
    """Encoded bytes, a PIL image or an array from an image cell, with `open_image`'s refusals."""
    from PIL import Image

    if isinstance(value, dict):
        if value.get("bytes") is None:
            where = f", only the path {value.get('path')!r}" if value.get("path") else ""
            raise ImageRefused(f"holds no image bytes{where}, and mixerbench never opens a path named "
                               f"inside a data file; store the images in the file (embedded bytes).")
        value = value["bytes"]
    if isinstance(value, (LocalImage, Path)):
        return _read_local(value)
    if isinstance(value, str):
        raise ImageRefused(f"is the path {value[:200]!r}, and mixerbench never opens a path named "
                           f"inside a data file; store the images in the file (embedded bytes).")
    if value is None:
        raise ImageRefused("is an empty cell; fill it or remove that row.")
    if isinstance(value, (bytes, bytearray, memoryview, Image.Image)):
        return value
    arr = np.asarray(value)
    return arr.astype(np.uint8) if arr.dtype != np.uint8 else arr


def _open_bytes(data):
    """A lazily opened PIL image (header read, no pixels), refused when too large to decode."""
    from PIL import Image

    with warnings.catch_warnings():  # the size is checked below, in one sentence
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise ImageRefused(f"is larger than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, far more "
                               f"than the {Image.MAX_IMAGE_PIXELS:,} Pillow decodes safely; "
                               f"downscale it.") from None
    w, h = img.size
    if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
        raise ImageRefused(f"is {w:,}x{h:,} pixels ({w * h / 1e6:.1f} megapixels), more than the "
                           f"{Image.MAX_IMAGE_PIXELS / 1e6:.1f} megapixels Pillow decodes without a "
                           f"decompression-bomb warning; downscale it.")
    return img


def open_image(value, draft: int | None = None):
    """A PIL RGB image from a parquet/HF cell ({'bytes','path'}), bytes, a listed image file
    (`LocalImage` or a `pathlib.Path`), a PIL image or an array.

    A path written inside a data file (a plain string, or a cell whose bytes are missing) is
    never opened: the data file would choose what this machine reads (`/dev/zero`, a FIFO,
    another user's files). Hub parquet and save_to_disk output carry the bytes themselves.
    """
    from PIL import Image

    src = _source(value)
    if isinstance(src, Image.Image):
        img = src
    elif isinstance(src, np.ndarray):
        img = Image.fromarray(src)
    else:
        img = _open_bytes(src)
    if draft and img.format == "JPEG":
        img.draft("RGB", (draft, draft))  # JPEG DCT downscale: decode big photos 2-8x faster
    img.load()
    return img.convert("RGB")


class Encoded:
    """One image cell, opened for the worker path: `size` (width, height) from the header
    alone, then `decode(min_w, min_h)` to a uint8 (3, h, w) tensor (channels-last strides:
    the layout torch's uint8 antialiased resize is fast on).

    A JPEG is decoded at the largest DCT scale (1/2, 1/4 or 1/8, PIL's draft mode) that keeps
    at least min_w x min_h pixels, and at full scale by torchvision's `decode_jpeg`, which
    writes the tensor directly (1.16 vs 1.76 ms for a 500x375 q90 photo through PIL and
    numpy, measured on a 2-core Xeon); other formats, and JPEGs torchvision cannot read, go
    through PIL. Grey, CMYK and palette images come out RGB either way.
    """

    def __init__(self, value):
        from PIL import Image

        src = _source(value)
        self._data, self._img = None, None
        if isinstance(src, np.ndarray):
            self._img = Image.fromarray(src)
        elif isinstance(src, Image.Image):
            self._img = src
        else:
            self._data = bytes(src)
            self._img = _open_bytes(self._data)
        self.size = self._img.size

    def decode(self, min_w: int | None = None, min_h: int | None = None) -> torch.Tensor:
        img = self._img
        w, h = self.size
        if img.format == "JPEG" and self._data is not None:
            if min_w and min_h and 2 * min_w <= w and 2 * min_h <= h:
                img.draft("RGB", (min_w, min_h))  # picks the largest scale keeping >= min size
            if img.size == self.size:
                try:  # deprecated since torchvision 0.29 (for TorchCodec), still its fastest decoder
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DeprecationWarning)
                        from torchvision.io import ImageReadMode, decode_jpeg
                    return decode_jpeg(torch.frombuffer(bytearray(self._data), dtype=torch.uint8),
                                       mode=ImageReadMode.RGB)
                except (ImportError, RuntimeError):  # gone, or a JPEG it refuses: PIL reads it
                    img = _open_bytes(self._data)
        img.load()
        arr = np.array(img.convert("RGB"), dtype=np.uint8)  # writable: torch.from_numpy warns on read-only
        return torch.from_numpy(arr).permute(2, 0, 1)


def image_error(index: int, what: str, exc: BaseException) -> str:
    """The one sentence for an image that cannot be decoded (main process or a worker)."""
    if isinstance(exc, ImageRefused):
        return f"Image {index} of {what} {exc}"
    return (f"Image {index} of {what} cannot be read ({type(exc).__name__}: {exc}); replace or "
            f"remove that image.")


def square_resize(img, size: int):
    """Shorter side to `size` (bilinear, antialiased), then the central size x size square."""
    from PIL import Image

    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


DECODE_CHUNK = 1024  # images per task of the decode pool
DECODE_POOL_MIN = 4096  # below this many images, decode in this process (pool start-up costs ~0.1 s)


def _decode_chunk(task) -> list[np.ndarray]:
    """Decode one chunk of cells to uint8 arrays: native size, or square-resized when `resize`."""
    values, start, size, resize, what = task
    out = []
    for j, value in enumerate(values):
        try:
            img = open_image(value, draft=size if resize else None)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the user's file
            raise UserError(image_error(start + j, what, exc)) from None
        out.append(np.asarray(square_resize(img, size) if resize else img))
    return out


def _decoded(values, n: int, size, resize: bool, what: str):
    """Arrays in row order; a pool of forked processes decodes chunks when there are many images."""
    def chunks():
        buf, start = [], 0
        for v in values:
            buf.append(v)
            if len(buf) == DECODE_CHUNK:
                yield buf, start, size, resize, what
                buf, start = [], start + DECODE_CHUNK
        if buf:
            yield buf, start, size, resize, what

    procs = min(os.cpu_count() or 1, 8)
    if n < DECODE_POOL_MIN or procs < 2:
        for task in chunks():
            yield from _decode_chunk(task)
        return
    import multiprocessing as mp

    with mp.get_context("fork").Pool(procs, initializer=_pool_worker_signals) as pool:
        for arrays in pool.imap(_decode_chunk, chunks()):
            yield from arrays


def _pool_worker_signals() -> None:
    """A decode worker dies of SIGTERM and leaves Ctrl-C to the command. A forked worker
    inherits the parent's Python handlers, and the pool stops its workers with SIGTERM (an
    error in one chunk, or the last chunk read, while others still wait on the task queue):
    under the training loop's handler, which only sets a flag, the workers lived on and the
    pool's exit waited for them forever."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def decode_images(values, n: int, *, img_size: int | None, resize: bool, what: str) -> torch.Tensor:
    """Decode `n` image cells into one uint8 tensor (n, H, W, 3).

    Images keep their size when they all share one square size no larger than `img_size` (CIFAR at 32
    stays 32 for a 224 model: the loader upsamples per batch). Otherwise, with `img_size`, every image
    is stored as its central square resized to img_size ("resmall" geometry, paper App. C); without
    `img_size`, images of different sizes are an error. Nothing is returned (or cached) on error.
    """
    from PIL import Image

    out: np.ndarray | None = None
    kept: list[np.ndarray] = []  # native arrays, re-used if we must switch to resizing midway
    count = 0
    for i, a in enumerate(_decoded(values, n, img_size, resize, what)):
        if i >= n:
            raise UserError(f"Split {what} has more images than labels; check the files.")
        count = i + 1
        if out is None:
            h, w = a.shape[:2]
            first = kept[0].shape[:2] if kept else (h, w)
            fits = img_size is None or (w == h and w <= img_size)
            if not resize and (h, w) == first and fits:
                kept.append(a)
                continue
            if img_size is None:
                raise UserError(f"Images of {what} have different sizes ({first[1]}x{first[0]} and "
                                f"{w}x{h} at index {i}); pass img_size to store them resized.")
            out = np.empty((n, img_size, img_size, 3), dtype=np.uint8)
            for j, k in enumerate(kept):  # switch to resizing: convert the native ones decoded so far
                out[j] = np.asarray(square_resize(Image.fromarray(k), img_size))
            kept = []
        if a.shape[:2] != (img_size, img_size):
            a = np.asarray(square_resize(Image.fromarray(a), img_size))
        out[i] = a
    if count == 0:
        raise UserError(f"Split {what} is empty; choose another split or check the files.")
    if count != n:
        raise UserError(f"Split {what} has {count} images for {n} labels; check the files.")
    if out is None:
        out = np.stack(kept)
    return torch.from_numpy(out)
