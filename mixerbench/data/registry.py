"""The dataset registry: one record per dataset, everything else derived from it.

A record states a dataset in one place, as big_vision's transfer configs state a task in one
line (`_set_task(config, 'cifar10', 'train[:98%]', 'train[98%:]', 'test', 10, steps=10_000,
warmup=500)`): its name and aliases, where it lives (hub id and config name), its splits and
their sizes, the minival share, the number of classes, the resolution of its images, the
training pipeline its images need, and its fine-tuning recipe's length. Derived from the
records: `KNOWN_DATASETS` and `ALIASES` (what `get_dataset` looks up), `mixerbench datasets`,
and the fine-tuning presets `finetune-<dataset>` (`presets.py`). Adding a dataset is one
`register_dataset(DatasetRecord(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass

# big_vision's train[99%:] for ImageNet; the minival share of any dataset that states none
DEFAULT_MINIVAL = 0.01


@dataclass(frozen=True)
class Finetune:
    """A dataset's fine-tuning recipe (paper section 3: SGD 0.9, batch 512, lr 0.03, cosine,
    clip 1, no weight decay), of which only the length differs between datasets."""

    steps: int     # ViT paper Table 4 (App. B.1.1), which the Mixer paper follows (App. C)
    warmup: int    # 500 (vision_transformer) for long runs; BiT-HyperRule's 100 for 500 steps
    preset: str    # the recipe's name: `finetune-cifar10`
    expected: str  # what it should reach and how long it takes (the preset's docstring)


@dataclass(frozen=True)
class DatasetRecord:
    """One dataset. `splits` maps our split names (`train`, `validation`, `test`) to the
    source's (`a+b` concatenates two); `sizes` counts images per split of ours."""

    name: str
    title: str                     # how docs and recipes name it: `CIFAR-10`
    num_classes: int
    splits: dict[str, str]
    sizes: dict[str, int]
    aliases: tuple[str, ...] = ()  # other spellings, matched case-insensitively
    hub_id: str | None = None      # the Hugging Face hub dataset; None: local copies only
    hub_config: str | None = None  # the hub dataset's config (subset) name, where it has several
    image_column: str | None = None  # None: detected from the data's features
    label_column: str | None = None
    image_size: int | None = None  # the images' side in px (resolution); None: sizes vary
    minival: float = DEFAULT_MINIVAL  # share of train held out as minival (paper App. C)
    pipeline: str | None = None    # the training pipeline its images need instead of a
    #                                recipe's (`digits`: a mirrored digit is another class)
    finetune: Finetune | None = None  # its fine-tuning recipe, where the paper gives one
    paper: str = "-"               # where the paper uses it
    gated: bool = False            # the hub asks for accepted terms and a login
    stream: bool = False           # too large to hold in memory: read image by image
    embedded: bool = False         # shipped inside the package (offline)

    def info(self) -> dict:
        """The record as `KNOWN_DATASETS` holds it (the lookups of `get_dataset`)."""
        return dict(hub_id=self.hub_id, hub_config=self.hub_config, image_column=self.image_column,
                    label_column=self.label_column, num_classes=self.num_classes,
                    splits=dict(self.splits), sizes=dict(self.sizes), image_size=self.image_size,
                    minival=self.minival, offline=self.embedded, paper=self.paper,
                    gated=self.gated, stream=self.stream, embedded=self.embedded,
                    pipeline=self.pipeline, title=self.title)


DATASETS: dict[str, DatasetRecord] = {}
KNOWN_DATASETS: dict[str, dict] = {}  # name -> record.info(), derived
ALIASES: dict[str, str] = {}          # lower-case alias -> name, derived


def register_dataset(record: DatasetRecord) -> DatasetRecord:
    """Add `record` to the registry (and what is derived from it). A name or alias already
    taken by another dataset is a ValueError: one spelling names one dataset."""
    taken = {record.name.lower(), *(a.lower() for a in record.aliases)}
    clash = sorted(t for t in taken if (ALIASES.get(t) or (t if t in DATASETS else None))
                   not in (None, record.name))
    if clash:
        raise ValueError(f"dataset {record.name}: {', '.join(clash)} already names another dataset")
    DATASETS[record.name] = record
    KNOWN_DATASETS[record.name] = record.info()
    for alias in record.aliases:
        ALIASES[alias.lower()] = record.name
    return record


def unregister_dataset(name: str) -> None:
    """Remove a dataset and its aliases (tests that register one undo it this way); its
    fine-tuning preset goes with it (`presets` derives them when asked)."""
    DATASETS.pop(name, None)
    KNOWN_DATASETS.pop(name, None)
    for alias in [a for a, n in ALIASES.items() if n == name]:
        del ALIASES[alias]


TRAIN_TEST = {"train": "train", "test": "test"}

for _record in (
    DatasetRecord(
        "cifar10", "CIFAR-10", 10, TRAIN_TEST, {"train": 50_000, "test": 10_000},
        aliases=("cifar-10",), hub_id="uoft-cs/cifar10", image_column="img", label_column="label",
        image_size=32, minival=0.02, paper="6.5",
        finetune=Finetune(10_000, 500, "finetune-cifar10",
                          "Expected from ImageNet Mixer-B/16 weights: 96.72 % (vision_transformer "
                          "README, 3.0 h on 4x V100). Needs `--init` weights.")),
    DatasetRecord(
        "cifar100", "CIFAR-100", 100, TRAIN_TEST, {"train": 50_000, "test": 10_000},
        aliases=("cifar-100",), hub_id="uoft-cs/cifar100", image_column="img",
        label_column="fine_label", image_size=32, minival=0.02, paper="6.5",
        finetune=Finetune(10_000, 500, "finetune-cifar100",
                          "Expected: part of the paper's \"Avg 5\" column; per-dataset numbers "
                          "are not published.")),
    DatasetRecord(
        "pets", "Oxford-IIIT Pets", 37, TRAIN_TEST, {"train": 3_680, "test": 3_669},
        aliases=("oxford-iiit-pet", "pet", "oxford_iiit_pet"), hub_id="timm/oxford-iiit-pet",
        image_column="image", label_column="label", minival=0.10, paper="6.5",
        finetune=Finetune(500, 100, "finetune-pets",
                          "Expected: part of the paper's \"Avg 5\"; per-dataset numbers are not "
                          "published.")),
    # Flowers-102 "train" is train+validation (2,040 images: the paper's "2k train", as in ViT/BiT).
    DatasetRecord(
        "flowers102", "Oxford Flowers-102", 102,
        {"train": "train+validation", "validation": "validation", "test": "test"},
        {"train": 2_040, "validation": 1_020, "test": 6_149},
        aliases=("flowers", "oxford_flowers102", "flowers-102"),
        hub_id="dpdl-benchmark/oxford_flowers102", image_column="image", label_column="label",
        minival=0.10, paper="6.5",
        finetune=Finetune(500, 100, "finetune-flowers102",
                          "Expected: part of the paper's \"Avg 5\"; per-dataset numbers are not "
                          "published.")),
    # ImageNet test labels are not public: "test" is the 50k validation set the paper reports on.
    DatasetRecord(
        "imagenet-1k", "ImageNet", 1000,
        {"train": "train", "validation": "validation", "test": "validation"},
        {"train": 1_281_167, "validation": 50_000, "test": 50_000},
        aliases=("imagenet", "imagenet1k", "imagenet2012", "ilsvrc2012"),
        hub_id="ILSVRC/imagenet-1k", image_column="image", label_column="label", minival=0.01,
        gated=True, stream=True, paper="6.5",
        finetune=Finetune(20_000, 500, "finetune-imagenet",
                          "Expected from ImageNet-21k Mixer-B/16 weights: 80.64 % at 224 (paper "
                          "Table 3). Runtime on one H100: hours.")),
    # The Street View House Numbers as 32 px crops around one digit (the hub's `cropped_digits`
    # config; `full_numbers` holds whole house numbers with boxes); one of VTAB-1k's 19 tasks.
    DatasetRecord(
        "svhn", "SVHN", 10, {"train": "train", "test": "test", "extra": "extra"},
        {"train": 73_257, "test": 26_032, "extra": 531_131}, hub_id="ufldl-stanford/svhn",
        hub_config="cropped_digits", image_column="image", label_column="label", image_size=32,
        pipeline="digits", paper="3 (VTAB-1k)"),
    DatasetRecord(
        "mnist-5k", "MNIST 5k", 10, TRAIN_TEST, {"train": 4_000, "test": 1_000},
        aliases=("mnist",), image_size=28, minival=0.01, pipeline="digits", embedded=True),
    DatasetRecord(
        # ten learnable classes x (100, 20) images for tests (`embedded.synthetic`)
        "synthetic", "synthetic", 10, TRAIN_TEST, {"train": 1_000, "test": 200}, image_size=32,
        minival=0.01, embedded=True),
):
    register_dataset(_record)
