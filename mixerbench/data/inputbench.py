"""How fast the train input pipeline runs, per CPU core: ours beside timm's `create_loader` and a
decode-only floor, measured in interleaved rounds on the same images (`input_bench`).

The unit is images per CPU-second: the CPU time of this process and of its loader workers
(`getrusage` of the process and of its reaped children) over one pass of the same images, so a
figure is "img/s per core" whatever else the machine runs, and what one host core contributes
to feeding an accelerator (a GPU training Mixer-B/16 at ~3,700 img/s needs 460 img/s per core
from 8 host cores). Wall-clock img/s is recorded beside it. Rows (`BENCH_PIPELINES`):

- `decode`: read and decode every image at full size, nothing else: the floor any pipeline that
  decodes each image pays (torchvision's libjpeg-turbo decode, the faster of the two we use);
- `ours-host`: our worker path up to the uint8 batch in shared memory (decode at the crop's
  scale, inception crop, flip): the host's whole share when RandAugment and mixup run batched on
  an accelerator;
- `ours`: the whole train pipeline (+ RandAugment(2, m), mixup p, the [-1, 1] value range) as
  training gets it on `device`; on a CPU the workers run RandAugment too;
- `timm`: timm's `create_loader` with the same transforms (RandomResizedCrop area 0.05-1,
  flip, `rand-m{m}-n2-p1`: every op applied, as big_vision does, FastCollateMixup, its
  prefetcher on `device`) and the same worker count;
- `tensor`: datasets held in memory, batched on the device without workers (the GPU-resident
  path of small datasets); replaces the file-based rows for in-memory datasets.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time

import torch

from mixerbench.errors import UserError
from mixerbench.events import Log, noop, progress

BENCH_PIPELINES = {
    "decode": "read + full-size decode only (floor)",
    "ours-host": "ours, host share: decode at crop scale, crop, flip, uint8 batch",
    "ours": "ours, whole pipeline: + RandAugment + mixup, into the batch",
    "timm": "timm create_loader: same transforms and workers",
    "tensor": "ours, in-memory tensors batched on the device (no workers)",
}
MAX_BENCH_IMAGES = 1_000_000  # images per measured pass
JPEG_SIZE = (500, 375)  # px: the most common ImageNet train image size
JPEG_QUALITY = 90


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have exited."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(batches, close, device) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) of one pass; `close` joins the workers, so that their
    CPU time is in RUSAGE_CHILDREN before it is read."""
    from mixerbench.runtime import synchronize

    gc.collect()
    t0, c0, n = time.perf_counter(), cpu_seconds(), 0
    for batch in batches:
        n += len(batch[0] if isinstance(batch, (tuple, list)) else batch)
    synchronize(str(device))
    wall = time.perf_counter() - t0
    close()
    return n, wall, cpu_seconds() - c0


class _DecodeOnly(torch.utils.data.Dataset):
    """The floor: each item is one image read and decoded at full size, then dropped."""

    def __init__(self, values):
        self.values = values

    def __len__(self):
        return len(self.values)

    def __getitem__(self, i):
        from mixerbench.data.decode import Encoded

        return Encoded(self.values[i]).decode().shape[-1]


def _count(items):
    return (items,)


class _Subset(torch.utils.data.Dataset):
    """timm's ImageDataset limited to our files (create_loader sets `transform` on it)."""

    def __init__(self, inner, keep: list[int]):
        self.inner, self.keep = inner, keep

    @property
    def transform(self):
        return self.inner.transform

    @transform.setter
    def transform(self, value):
        self.inner.transform = value

    def __len__(self):
        return len(self.keep)

    def __getitem__(self, i):
        return self.inner[self.keep[i]]


def _timm_dataset(folder, files: list[str]):
    """timm's own ImageDataset on `folder`, restricted to `files` (the images ours reads)."""
    from timm.data import ImageDataset

    tds = ImageDataset(str(folder))
    samples = getattr(getattr(tds, "reader", None), "samples", None)
    if samples is None:
        raise UserError(f"timm {__import__('timm').__version__} reads {folder} without a file list; "
                        "run the bench without the timm row (--no-timm).")
    index = {os.path.realpath(p): i for i, (p, _) in enumerate(samples)}
    keep = [index.get(os.path.realpath(f)) for f in files]
    if any(k is None for k in keep):
        raise UserError(f"timm's ImageDataset does not list every image mixerbench reads in {folder} "
                        "(a split folder or a file type timm skips); point the bench at a folder of "
                        "class folders.")
    return _Subset(tds, sorted(keep))


def _passes(ds, folder, *, img_size, batch_size, workers, randaug_m, mixup_p, device, timm_row):
    """name -> a function running one measured pass, for every row that applies to `ds`."""
    from mixerbench.data.loader import make_loader

    kw = dict(batch_size=batch_size, train=True, pipeline="pretrain", img_size=img_size, device=device,
              num_classes=ds.num_classes)
    out = {}
    if ds.images is not None:  # in memory: the tensor path, and the worker path over the arrays
        def tensor():
            b = make_loader(ds, randaug_m=randaug_m, mixup_p=mixup_p, **kw)
            return _timed(b.epoch(0), b.close, device)
        out["tensor"] = tensor
    else:
        def floor():
            loader = torch.utils.data.DataLoader(_DecodeOnly(ds.hf), batch_size=batch_size, num_workers=workers,
                                                 collate_fn=_count, drop_last=True)
            return _timed(loader, lambda: None, "cpu")
        out["decode"] = floor

    def host():
        b = make_loader(ds, workers=workers, **kw)
        return _timed(b.host_batches(0), b.close, "cpu")

    def ours():
        b = make_loader(ds, workers=workers, randaug_m=randaug_m, mixup_p=mixup_p, **kw)
        return _timed(b.epoch(0), b.close, device)
    out["ours-host"], out["ours"] = host, ours
    if timm_row and folder is not None:
        from timm.data import FastCollateMixup, create_loader

        tds = _timm_dataset(folder, [str(v) for v in ds.hf])

        def timm():
            mix = FastCollateMixup(mixup_alpha=mixup_p, num_classes=ds.num_classes) if mixup_p > 0 else None
            loader = create_loader(
                tds, input_size=(3, img_size, img_size), batch_size=batch_size, is_training=True,
                scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, color_jitter=None,
                auto_augment=f"rand-m{randaug_m:g}-n2-p1" if randaug_m > 0 else None, interpolation="bilinear",
                mean=(0.5,) * 3, std=(0.5,) * 3, num_workers=workers, collate_fn=mix,
                device=torch.device(device), use_prefetcher=True, persistent_workers=False)
            return _timed(loader, lambda: None, device)
        out["timm"] = timm
    return out


def input_bench(ds, folder=None, *, img_size: int = 224, batch_size: int = 128, workers: int | None = None,
                randaug_m: float = 15, mixup_p: float = 0.5, images: int = 2048, repeats: int = 3,
                device: str = "cpu", timm_row: bool = True, log: Log = noop) -> list[dict]:
    """Img/s per CPU core of each input pipeline row on the same `images` images of `ds`.

    Args:
        ds: a train split (`get_dataset(..., stream=True)` for encoded images).
        folder: the image folder `ds` was read from (timm's row needs one); None: no timm row.
        img_size / batch_size / workers: output side in px, images per batch, loader worker
            processes (default min(8, cores), as training uses).
        randaug_m / mixup_p: RandAugment(2, m) and mixup strength (paper Table 4's ImageNet
            recipe: m = 15, p = 0.5); 0 turns either off.
        images: images per measured pass (a seeded sample of `ds`, whole batches).
        repeats: timed rounds after an untimed one; every round measures every row once,
            in a rotated order.

    Returns:
        One dict per row: pipeline, what, images, wall img/s (median), img per CPU-second
        (median, min, max) and, with a timm row, the per-core ratio to timm's in the same round
        (median, min, max).
    """
    from mixerbench.data.loader import _default_workers

    if not 1 <= batch_size <= images <= MAX_BENCH_IMAGES:
        raise UserError(f"--images {images:,} must be between the batch size ({batch_size}) and "
                        f"{MAX_BENCH_IMAGES:,}.")
    if not 1 <= repeats <= 100:
        raise UserError(f"--repeats {repeats} must be between 1 and 100.")
    n = len(ds) - len(ds) % batch_size if images >= len(ds) else images - images % batch_size
    if n < batch_size:
        raise UserError(f"{ds.name} has {len(ds)} images, fewer than one batch of {batch_size}; "
                        "pass a smaller --batch-size.")
    if n < len(ds):
        ds = ds.subset(torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].sort().values)
    workers = _default_workers() if workers is None else workers
    passes = _passes(ds, folder, img_size=img_size, batch_size=batch_size, workers=workers,
                     randaug_m=randaug_m, mixup_p=mixup_p, device=device, timm_row=timm_row)
    names = list(passes)
    per: dict[str, list[tuple[int, float, float]]] = {k: [] for k in names}
    total, done = (repeats + 1) * len(names), 0
    for r in range(repeats + 1):  # round 0 is untimed: imports, first allocations, file cache
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotated: no row always first
            progress(log, f"{f'round {r}/{repeats}' if r else 'warm-up round'}: {name}", done, total)
            result = passes[name]()
            done += 1
            if r:
                per[name].append(result)
    progress(log, "done", total, total)
    rows = _rows(per, names, dict(images=n, img_size=img_size, batch_size=batch_size, workers=workers,
                                  randaug_m=randaug_m, mixup_p=mixup_p, repeats=repeats))
    for row in rows:
        if row["pipeline"] == "tensor":
            row["workers"] = 0
        if row["pipeline"] in ("decode", "ours-host"):  # they run neither
            row["randaug_m"], row["mixup_p"] = 0, 0.0
    return rows


def _rows(per: dict, names: list[str], common: dict) -> list[dict]:
    core = {k: [c / s if s > 0 else math.nan for c, _, s in v] for k, v in per.items()}
    rows = []
    for name in names:
        ratios = [a / b for a, b in zip(core[name], core["timm"])] if "timm" in core else []
        rows.append(dict(
            pipeline=name, what=BENCH_PIPELINES[name], **common,
            img_per_sec=statistics.median(n / w for n, w, _ in per[name]),
            img_per_cpu_sec=statistics.median(core[name]), img_per_cpu_sec_min=min(core[name]),
            img_per_cpu_sec_max=max(core[name]),
            timm_ratio=statistics.median(ratios) if ratios else None,
            timm_ratio_min=min(ratios) if ratios else None, timm_ratio_max=max(ratios) if ratios else None))
    return rows


def write_jpeg_folder(root, n: int, *, seed: int = 0, classes: int = 10, log: Log = noop) -> list:
    """`n` photo-like JPEGs of ImageNet's most common size (500x375 px, quality 90) in `classes`
    class folders under `root` (which must not exist): the input bench's stand-in for ImageNet.

    Each image is noise with a 1/f^a power spectrum (a drawn in 1.8-2.4, about natural images'
    slope of 2) in three
    correlated channels: about 117 KB a file, the size of ImageNet's average JPEG (~110 KB), so a
    decoder does a photo's work; flat or random-noise images would decode faster or slower than
    photos. Hand-written: no library ships such a generator. Returns the files written.
    """
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from mixerbench.files import atomic_write_bytes

    root = Path(root)
    if not 1 <= n <= MAX_BENCH_IMAGES:
        raise UserError(f"--write-jpegs {n:,} must be between 1 and {MAX_BENCH_IMAGES:,} images.")
    if os.path.lexists(root):
        raise UserError(f"{root} exists; name a new folder for the JPEGs.")
    rng = np.random.default_rng(seed)
    w, h = JPEG_SIZE
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    out = []
    for i in range(n):
        slope = rng.uniform(1.8, 2.4)
        spec = (rng.normal(size=(3, *f.shape)) + 1j * rng.normal(size=(3, *f.shape))) / f ** (slope / 2)
        img = np.fft.irfft2(spec, s=(h, w)).transpose(1, 2, 0) @ (rng.normal(size=(3, 3)) * 0.3 + np.eye(3))
        img = (img - img.mean()) / (img.std() + 1e-9) * rng.uniform(40, 70) + rng.uniform(90, 160, size=3)
        buf = __import__("io").BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=JPEG_QUALITY)
        path = root / f"class{i % classes}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
        out.append(path)
        if i % 50 == 0 or i == n - 1:
            progress(log, f"writing JPEGs into {root}", i + 1, n)
    return out
