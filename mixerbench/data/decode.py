"""Image bytes to uint8 tensors, and the on-disk tensor cache (GPU-resident small datasets, worker processes for large ones).

Owns decoding image cells (parquet/HF `{'bytes','path'}`, bytes, paths, PIL images, arrays) into one
uint8 (N, H, W, 3) tensor, in a pool of forked processes for large splits, and the cache those
tensors live in: `<cache>/tensors/<name>-<split>-<size>-<hash>.pt`, written to a temp file and
renamed so that a reader never sees half a file and a failed decode leaves nothing behind.
The cache root is `cache_dir`, else $MIXERBENCH_CACHE, else ~/.cache/mixerbench.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import torch

from mixerbench.errors import UserError
from mixerbench.files import atomic_write_bytes
from mixerbench.names import slug

CACHE_FORMAT = 1  # bump when the cached payload changes


# ---------------------------------------------------------------- cache directory and tensor cache

def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $MIXERBENCH_CACHE, else ~/.cache/mixerbench."""
    root = cache_dir or os.environ.get("MIXERBENCH_CACHE") or Path.home() / ".cache" / "mixerbench"
    return Path(root).expanduser()


def tensor_cache_path(root: Path, name: str, key: str, split: str, size: int | None) -> Path:
    digest = hashlib.sha1(f"{CACHE_FORMAT}|{key}".encode()).hexdigest()[:10]
    size_key = "native" if size is None else f"{size}px"
    return root / "tensors" / f"{slug(name)[:80]}-{slug(split)}-{size_key}-{digest}.pt"


def load_tensor_cache(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:  # mmap: a 150 MB CIFAR cache maps in milliseconds and pages in on use
        payload = torch.load(path, mmap=True, weights_only=True)
    except Exception:  # torn or foreign file: ignore it, it will be rewritten
        return None
    return payload if payload.get("format") == CACHE_FORMAT else None


def save_tensor_cache(path: Path, payload: dict) -> None:
    """Written atomically: readers never see half a file."""
    buf = io.BytesIO()
    torch.save({**payload, "format": CACHE_FORMAT}, buf)
    atomic_write_bytes(path, buf.getvalue())


def file_stats_key(files: list[Path]) -> str:
    """Identity of a local copy: paths, sizes and mtimes (a changed copy gets a new cache entry)."""
    h = hashlib.sha1()
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns};".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- image decoding

def open_image(value, draft: int | None = None):
    """A PIL RGB image from a parquet/HF cell ({'bytes','path'}), bytes, a path, a PIL image or an array."""
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        img = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, os.PathLike)):
        img = Image.open(value)
    elif isinstance(value, Image.Image):
        img = value
    elif value is None:
        raise ValueError("empty image cell")
    else:
        arr = np.asarray(value)
        img = Image.fromarray(arr.astype(np.uint8) if arr.dtype != np.uint8 else arr)
    if draft and img.format == "JPEG":
        img.draft("RGB", (draft, draft))  # JPEG DCT downscale: decode big photos 2-8x faster
    img.load()
    return img.convert("RGB")


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
            raise UserError(f"Image {start + j} of {what} cannot be read ({type(exc).__name__}: {exc}); "
                            f"replace or remove that image.") from None
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

    with mp.get_context("fork").Pool(procs) as pool:
        for arrays in pool.imap(_decode_chunk, chunks()):
            yield from arrays


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
