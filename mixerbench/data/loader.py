"""Batches: deterministic, resumable batching for training and evaluation (GPU-resident small datasets, worker processes for large ones).

Owns the epoch order, the sharding over ranks, the two delivery paths and the throughput bench:

- tensor path (datasets in memory): the uint8 dataset lives on `device` (moved once), each batch is
  gathered and augmented there with batched tensor ops (`transforms.apply_geometry`, RandAugment,
  mixup): no workers, no host-device copy per batch on a GPU;
- worker path (streamed datasets, or `workers > 0`): DataLoader worker processes decode each
  image at the scale its crop needs, crop it and collate uint8 batches into shared memory
  (pinned memory, workers forked for each pass); RandAugment runs batched on `device` (in the workers
  when that is the CPU), then mixup, value range and shuffles on `device`.

Determinism: the batch at (epoch, index) depends only on (seed, epoch, index, rank, world_size).
The order is a `torch.randperm` from a generator seeded by (seed, epoch); augmentation draws come
from generators seeded by (seed, epoch, index, rank) (per example in the worker path); no global
RNG is read or changed. `batch_size` is per rank: a global batch is batch_size * world_size
consecutive positions of the epoch order, and rank r takes the r-th slice. Train loaders drop the
last partial global batch; eval loaders visit every example once, in order (rank r takes the r-th
contiguous shard, so ranks may differ by one batch).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator

import torch

from mixerbench.data import transforms as T
from mixerbench.errors import UserError


def _default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))


class _Rows(torch.utils.data.Dataset):
    """Worker side: decode + geometry for one (row, per-example seed, batch seed) key ->
    (uint8 (3,S,S), error, batch seed)."""

    def __init__(self, ds, pipeline: str, img_size: int, what: str, pre: T.Preprocess = T.UNIT):
        self.images, self.hf, self.column = ds.images, ds.hf, ds.image_column
        self.pipeline, self.img_size, self.what, self.pre = pipeline, img_size, what, pre

    def __len__(self):
        return len(self.images) if self.images is not None else len(self.hf)

    def __getitem__(self, key):
        from mixerbench.data.decode import Encoded, image_error

        row, seed, batch_seed = key
        try:
            if self.images is not None:
                enc = Encoded(self.images[row].numpy())
            else:
                value = self.hf[row]
                if isinstance(value, dict) and self.column in value:
                    value = value[self.column]
                enc = Encoded(value)
            gen = torch.Generator().manual_seed(seed) if self.pipeline in T.TRAIN_PIPELINES else None
            return T.worker_geometry(enc, self.pipeline, self.img_size, gen, self.pre), "", batch_seed
        except Exception as exc:  # noqa: BLE001 - reported as one sentence by the main process
            return None, image_error(row, self.what, exc), batch_seed


class _Collate:
    """Worker side: one uint8 batch, written straight into shared memory (the main process
    receives a handle, not a copy), with RandAugment applied here when `randaug_m` is set (the
    batch's own generator, so the bits equal those of RandAugment run on the device)."""

    def __init__(self, randaug_m: float = 0):
        self.randaug_m = randaug_m

    def __call__(self, items):
        errors = [e for _, e, _ in items if e]
        if errors:
            return None, errors[0]
        first = items[0][0]
        out = torch.empty((len(items), *first.shape), dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:
            out.share_memory_()
        torch.stack([x for x, _, _ in items], out=out)
        if self.randaug_m > 0:  # back into the shared buffer
            out.copy_(T.rand_augment(out, torch.Generator().manual_seed(items[0][2]), self.randaug_m))
        return out, ""


class _Sampler:
    """Batch sampler of the worker path: batches `start`.. of `epoch`, each a list of
    (row, example seed, batch seed) keys."""

    def __init__(self, batches: "Batches"):
        self.b, self.epoch, self.start = batches, 0, 0

    def __iter__(self):
        b = self.b
        for i in range(self.start, b.steps_per_epoch):
            pos = b.positions(self.epoch, i).tolist()
            aug = T.mix_seed(b.seed, "aug", self.epoch, i, b.rank)
            yield [(r, T.mix_seed(b.seed, "example", self.epoch, i, b.rank, k), aug) for k, r in enumerate(pos)]

    def __len__(self):
        return max(0, self.b.steps_per_epoch - self.start)


class Batches:
    """`epoch(e, start)` yields (x, y): x float32 (B, 3, S, S) in [-1, 1] (or `preprocess`'s
    range) on `device`; y int64 (B,),
    or float (B, num_classes) soft targets for train loaders with mixup or label smoothing."""

    def __init__(self, ds, *, batch_size: int, train: bool, pipeline: str, img_size: int, device="cpu",
                 seed: int = 0, randaug_m: float = 0, mixup_p: float = 0.0, num_classes: int | None = None,
                 shuffle: str | Callable | None = None, shuffle_patch: int | None = None, rank: int = 0,
                 world_size: int = 1, drop_last: bool | None = None, workers: int | None = None,
                 label_smoothing: float = 0.0, shuffle_seed: int = 0,
                 preprocess: T.Preprocess | None = None):
        T.check_pipeline(pipeline)
        self.pre = preprocess or T.UNIT
        if not train and pipeline not in T.EVAL_PIPELINES:
            raise UserError(f"Pipeline '{pipeline}' augments; evaluation loaders take "
                            f"{', '.join(T.EVAL_PIPELINES)}.")
        if batch_size < 1 or img_size < 1:
            raise UserError(f"batch_size and img_size must be positive, got {batch_size} and {img_size}.")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside world_size {world_size}.")
        if mixup_p < 0 or not 0 <= label_smoothing < 1:
            raise UserError(f"mixup_p must be >= 0 and label_smoothing in [0, 1), got {mixup_p} and {label_smoothing}.")
        self.ds, self.batch_size, self.train, self.pipeline, self.img_size = ds, batch_size, train, pipeline, img_size
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.augment = train and pipeline in T.TRAIN_PIPELINES
        self.randaug_m = randaug_m if self.augment else 0
        self.mixup_p = mixup_p if self.augment else 0.0
        self.label_smoothing = label_smoothing if train else 0.0
        self.num_classes = int(num_classes or ds.num_classes)
        self.soft = self.mixup_p > 0 or self.label_smoothing > 0
        if callable(shuffle):
            self.shuffle = shuffle
        elif shuffle in (None, "none"):
            self.shuffle = None
        else:  # fixed permutation (shuffle_seed, not `seed`): train and eval loaders always agree
            if shuffle == "patch" and not shuffle_patch:
                # a guessed patch as large as the image would silently be a global shuffle
                raise UserError("The patch shuffle needs a patch size and this model has none (a "
                                "CNN); pass one, e.g. --set data.shuffle_patch=4.")
            self.shuffle = T.make_shuffle(shuffle, img_size, shuffle_patch or img_size, shuffle_seed)
        self.drop_last = train if drop_last is None else drop_last
        n = self.num_examples = len(ds)
        self.global_batch = batch_size * world_size
        if train:
            self.steps_per_epoch = n // self.global_batch if self.drop_last else math.ceil(n / self.global_batch)
        else:
            self._lo, self._hi = rank * n // world_size, (rank + 1) * n // world_size
            m = self._hi - self._lo
            self.steps_per_epoch = m // batch_size if self.drop_last else math.ceil(m / batch_size)
        self.path = "worker" if (ds.images is None or (workers or 0) > 0) else "tensor"
        self.workers = (_default_workers() if workers is None else workers) if self.path == "worker" else 0
        # On a CPU the workers run RandAugment beside decoding (in parallel, off the training
        # process); on an accelerator it runs there, batched, and the host only decodes and crops.
        self.randaug_in_workers = self.path == "worker" and self.device.type == "cpu" and self.randaug_m > 0
        self._order_cache: tuple[int, torch.Tensor] | None = None
        self._labels = ds.labels.to(self.device)
        self._images = None
        self._loader = None
        if self.path == "tensor":  # move the whole uint8 set once; on CPU this is the same tensor
            self._images = ds.images if self.device.type == "cpu" else ds.images.to(self.device)

    def __len__(self) -> int:
        return self.steps_per_epoch

    # ---- which examples
    def _order(self, epoch: int) -> torch.Tensor:
        if self._order_cache is None or self._order_cache[0] != epoch:
            gen = torch.Generator().manual_seed(T.mix_seed(self.seed, "order", epoch))
            self._order_cache = (epoch, torch.randperm(self.num_examples, generator=gen))
        return self._order_cache[1]

    def positions(self, epoch: int, index: int) -> torch.Tensor:
        """Dataset rows of this rank's batch `index` of `epoch` (int64, CPU)."""
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch {index} outside 0..{self.steps_per_epoch - 1}")
        b = self.batch_size
        if self.train:
            lo = index * self.global_batch + self.rank * b
            return self._order(epoch)[lo:min(lo + b, self.num_examples)]
        lo = self._lo + index * b
        return torch.arange(lo, min(lo + b, self._hi))

    # ---- the two paths
    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start, start+1, ... of `epoch`; identical to the same batches of a full pass."""
        if self.path == "tensor":
            for i in range(start, self.steps_per_epoch):
                yield self._tensor_batch(epoch, i)
            return
        loader = self._worker_loader()
        loader.batch_sampler.epoch, loader.batch_sampler.start = epoch, start
        for i, (x, err) in enumerate(loader, start):
            if err:
                raise UserError(err)
            y = self._labels[self.positions(epoch, i).to(self._labels.device)]
            x = x.to(self.device, non_blocking=True)
            gen = torch.Generator().manual_seed(T.mix_seed(self.seed, "aug", epoch, i, self.rank))
            yield self._finish(x, y, gen, epoch, i, randaug=not self.randaug_in_workers)

    def host_batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """The worker path's uint8 batches (B, 3, S, S) as the workers deliver them, before
        anything runs on `device`: the host's share of the pipeline (`inputbench`)."""
        if self.path != "worker":
            raise ValueError("host_batches is the worker path's; this loader holds its images in memory")
        loader = self._worker_loader()
        loader.batch_sampler.epoch, loader.batch_sampler.start = epoch, start
        for x, err in loader:
            if err:
                raise UserError(err)
            yield x

    def _tensor_batch(self, epoch: int, i: int):
        pos = self.positions(epoch, i)
        xb = self._images[pos.to(self._images.device)].to(self.device, non_blocking=True)  # (B, H, W, 3) uint8
        y = self._labels[pos.to(self._labels.device)]
        x = xb.permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
        gen = torch.Generator().manual_seed(T.mix_seed(self.seed, "aug", epoch, i, self.rank))
        if self.augment or x.shape[-2:] != (self.img_size, self.img_size) or self.pipeline != "eval-plain":
            x = T.apply_geometry(x, self.pipeline, self.img_size, gen, self.pre)
        if self.randaug_m > 0 and x.dtype != torch.uint8:
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        return self._finish(x, y, gen, epoch, i)

    def _finish(self, x, y, gen, epoch, i, randaug: bool = True):
        """RandAugment (uint8) unless the workers applied it, value range, mixup / soft
        targets, fixed shuffle."""
        if self.randaug_m > 0 and randaug:
            x = T.rand_augment(x, gen, self.randaug_m)
        x = T.normalize(x, self.pre)
        if self.mixup_p > 0:
            x, y = T.mixup(x, y, self.mixup_p, T.mix_seed(self.seed, "mixup", epoch, i, self.rank),
                           self.num_classes, self.label_smoothing)
        elif self.soft:
            y = T.soft_targets(y, self.num_classes, smoothing=self.label_smoothing)
        if self.shuffle is not None:
            x = self.shuffle(x)
        return x.contiguous(), y

    def close(self) -> None:
        """Stop the worker processes of a pass still open (they also stop when its iterator is
        garbage collected)."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader = None

    def _worker_loader(self):
        if self._loader is None:
            what = f"'{self.ds.split}' of {self.ds.name}"
            # Workers end with each pass (not persistent): persistent workers each took the
            # DataLoader's whole 5 s join timeout to stop (torch 2.14, fork), 5-10 s per loader
            # at the end of every run; a new pass forks them again in milliseconds.
            kw = dict(prefetch_factor=4) if self.workers > 0 else {}
            self._loader = torch.utils.data.DataLoader(
                _Rows(self.ds, self.pipeline, self.img_size, what, self.pre), batch_sampler=_Sampler(self),
                num_workers=self.workers, collate_fn=_Collate(self.randaug_m if self.randaug_in_workers else 0),
                pin_memory=self.device.type == "cuda", **kw)
        return self._loader


def make_loader(ds, *, batch_size: int, train: bool, pipeline: str, img_size: int, device="cpu", seed: int = 0,
                randaug_m: float = 0, mixup_p: float = 0.0, num_classes: int | None = None,
                shuffle: str | Callable | None = None, shuffle_patch: int | None = None, rank: int = 0,
                world_size: int = 1, drop_last: bool | None = None, workers: int | None = None,
                label_smoothing: float = 0.0, shuffle_seed: int = 0,
                preprocess: T.Preprocess | None = None) -> Batches:
    """Deterministic batches of `ds` through a named pipeline (see `transforms.PIPELINES`).

    Args:
        batch_size: per rank; the global batch is batch_size * world_size.
        train: shuffled order, last partial batch dropped, augmentation on; False: every example
            once, in order, never augmented (eval pipelines only).
        randaug_m, mixup_p, label_smoothing: RandAugment(2, m), mixup strength p (paper Table 4),
            label smoothing; train pipelines only. Soft targets (B, num_classes) come back when
            mixup_p > 0 or label_smoothing > 0.
        shuffle: `none`, `patch`, `global` (paper Figure 4; patch size `shuffle_patch`, default 16),
            or a callable from `transforms.make_shuffle`; the permutation is seeded by
            `shuffle_seed`, not `seed`, so train and eval loaders use the same one.
        workers: None = automatic (tensor path for in-memory datasets, min(8, cores) workers when
            streaming); > 0 forces the worker path; 0 decodes streamed images in this process.
        preprocess: the weights' value range and eval resizing (`transforms.Preprocess`; default
            the paper's [-1, 1], bilinear).
    """
    return Batches(ds, batch_size=batch_size, train=train, pipeline=pipeline, img_size=img_size, device=device,
                   seed=seed, randaug_m=randaug_m, mixup_p=mixup_p, num_classes=num_classes, shuffle=shuffle,
                   shuffle_patch=shuffle_patch, rank=rank, world_size=world_size, drop_last=drop_last,
                   workers=workers, label_smoothing=label_smoothing, shuffle_seed=shuffle_seed,
                   preprocess=preprocess)


def loader_throughput(ds, *, batch_size: int = 256, pipeline: str | None = None, img_size: int | None = None,
                      device="cpu", seconds: float = 5.0, workers: int | None = None, randaug_m: float = 0,
                      mixup_p: float = 0.0, paths=("tensor", "worker")) -> dict:
    """Images per second delivered by each path on `device` (first batch excluded: startup).

    Returns:
        {dataset, split, n, device, batch_size, pipeline, img_size, paths: {path: {img_per_sec,
        batches, seconds, workers}}}; the tensor path only for in-memory datasets.
    """
    stored = int(ds.images.shape[1]) if ds.images is not None else None
    img_size = img_size or stored or 224
    pipeline = pipeline or ("small" if (stored or 224) <= 64 else "pretrain")
    dev = torch.device(device)
    out = dict(dataset=ds.name, split=ds.split, n=len(ds), device=str(dev), batch_size=batch_size,
               pipeline=pipeline, img_size=img_size, randaug_m=randaug_m, mixup_p=mixup_p, paths={})
    for path in paths:
        if path == "tensor" and ds.images is None:
            continue
        w = None if path == "tensor" else (workers or _default_workers())
        b = make_loader(ds, batch_size=batch_size, train=True, pipeline=pipeline, img_size=img_size,
                        device=dev, randaug_m=randaug_m, mixup_p=mixup_p, workers=w)
        if b.steps_per_epoch < 2:
            raise UserError(f"{ds.name} has too few images ({len(ds)}) for a batch of {batch_size}; use a smaller batch.")
        count, n_batches, t0, epoch = 0, 0, None, 0
        while t0 is None or time.perf_counter() - t0 < seconds:
            for x, _ in b.epoch(epoch):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                if t0 is None:
                    t0 = time.perf_counter()  # after the first batch: workers are up, caches warm
                    continue
                count, n_batches = count + len(x), n_batches + 1
                if time.perf_counter() - t0 >= seconds:
                    break
            epoch += 1
        elapsed = time.perf_counter() - t0
        out["paths"][path] = dict(img_per_sec=count / elapsed, batches=n_batches, seconds=elapsed,
                                  workers=b.workers)
        b.close()
    return out
