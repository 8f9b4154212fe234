"""Evaluation: top-1 / top-5 accuracy and loss, features, linear few-shot, shuffle invariance.

`accuracy` is the one evaluation routine, used by the training loop at every evaluation and by
`mixerbench evaluate`, so a checkpoint re-evaluated later reproduces the number its run logged.
"""

from __future__ import annotations

from mixerbench.events import Log, noop, progress
from mixerbench.runtime import autocast


def accuracy(model, batches, *, device: str = "cpu", dtype: str = "fp32") -> dict:
    """Top-1 and top-5 accuracy (percent, 0-100) and mean cross-entropy over one pass.

    Args:
        model: a classifier returning logits (B, K).
        batches: an iterable of (x, y) with integer labels y (an eval loader's `epoch(0)`).

    Returns:
        dict(top1, top5, loss, n) summed over every example exactly once.
    """
    import torch

    from mixerbench.loss import cross_entropy

    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    loss_sum = 0.0
    n = 0
    with torch.no_grad():
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, dtype):
                logits = model(x)
            logits = logits.float()
            loss_sum += cross_entropy(logits, y, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(dim=1).sum().item()
            n += y.numel()
    model.train(was_training)
    if n == 0:
        return dict(top1=float("nan"), top5=float("nan"), loss=float("nan"), n=0)
    return dict(top1=100.0 * correct1 / n, top5=100.0 * correct5 / n, loss=loss_sum / n, n=n)


def predict(model, batches, *, device: str = "cpu", dtype: str = "fp32"):
    """Logits (N, K) float32 on the CPU in loader order (the dataset's order, for ReaL)."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for x, _ in batches:
            with autocast(device, dtype):
                out.append(model(x.to(device, non_blocking=True)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def features(model, batches, *, device: str = "cpu", dtype: str = "fp32"):
    """Pre-logits of a frozen model: after the final norm and pooling, before the head.

    `forward_head(forward_features(x), pre_logits=True)` is timm's API, shared by the native
    Mixer (LayerNorm then global average pooling, docs/paper-notes.md §1), ViT and ResNet/BiT, so the
    representation is the one big_vision's few-shot evaluator reads (`pre_logits`).

    Returns:
        (X float32 (N, D), y int64 (N,)), both on the CPU.
    """
    import torch

    was_training = model.training
    model.eval()
    xs, ys = [], []
    with torch.no_grad():
        for x, y in batches:
            with autocast(device, dtype):
                f = model.forward_head(model.forward_features(x.to(device, non_blocking=True)),
                                       pre_logits=True)
            xs.append(f.float().flatten(1).cpu())
            ys.append(y.cpu().long())
    model.train(was_training)
    if not xs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------------------------------ few-shot
#
# The paper's linear few-shot metric (paper section 3 "Metrics", docs/paper-notes.md §5), written by hand
# after big_vision's `evaluators/fewshot_lsr.py` (neither timm nor torch has it): features
# standardised with the few-shot train set's mean and (population) std + 1e-5, a constant
# feature of 100 appended so the bias is almost unregularised, one-hot targets in {-1, 1},
# ridge regression in closed form, in the primal (D x D system) when N >= D and in the dual
# (N x N system) otherwise. big_vision eigendecomposes to reuse one factorisation for many l2
# values; we solve once per l2, which gives the same weights. Everything in float64.

FEWSHOT_BIAS = 100.0   # big_vision BIAS_CONSTANT
FEWSHOT_STD_EPS = 1e-5  # added to the std, as big_vision does
FEWSHOT_L2 = 2.0**10    # big_vision's default l2_reg (common_fewshot.py)
FEWSHOT_SEEDS = 3       # draws of the shots a probe averages (`--seeds`; compare's probes)


def _f64(a):
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor):
        return a.detach().cpu().to(torch.float64)
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def _long(a):
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor):
        return a.detach().cpu().long().flatten()
    return torch.from_numpy(np.asarray(a).astype(np.int64)).flatten()


def lsr_fit(train_x, train_y, num_classes: int, l2_reg: float = FEWSHOT_L2) -> dict:
    """Closed-form ridge regression to {-1, 1} one-hot targets (big_vision fewshot_lsr).

    Returns:
        dict(mean (1, D), std (1, D), w (D + 1, K)) in float64; scores are
        `[(x - mean) / std, 100] @ w` (see `lsr_scores`).
    """
    import torch
    import torch.nn.functional as F

    x = _f64(train_x).flatten(1)
    y = _long(train_y)
    mean = x.mean(0, keepdim=True)
    std = x.std(0, unbiased=False, keepdim=True) + FEWSHOT_STD_EPS
    x = F.pad((x - mean) / std, (0, 1), value=FEWSHOT_BIAS)  # (N, D + 1)
    t = 2.0 * F.one_hot(y, num_classes).to(torch.float64) - 1.0  # (N, K) in {-1, 1}
    n, d = x.shape
    if n >= d:  # primal: w = (X^T X + l2 I_D)^-1 X^T Y
        w = torch.linalg.solve(x.T @ x + l2_reg * torch.eye(d, dtype=x.dtype), x.T @ t)
    else:       # dual:   w = X^T (X X^T + l2 I_N)^-1 Y   (the same w, a smaller system)
        w = x.T @ torch.linalg.solve(x @ x.T + l2_reg * torch.eye(n, dtype=x.dtype), t)
    return dict(mean=mean, std=std, w=w)


def lsr_scores(fit: dict, x):
    """Class scores (N, K) float64 of a fitted `lsr_fit` on features x (N, D)."""
    import torch.nn.functional as F

    x = F.pad((_f64(x).flatten(1) - fit["mean"]) / fit["std"], (0, 1), value=FEWSHOT_BIAS)
    return x @ fit["w"]


def linear_fewshot(train_x, train_y, test_x, test_y, num_classes: int,
                   l2_reg: float = FEWSHOT_L2) -> float:
    """Linear few-shot top-1 (percent): ridge regression on frozen features (docs/paper-notes.md §5).

    Args:
        train_x / test_x: features (N, D), torch tensors or numpy arrays (float64 inside).
        train_y / test_y: integer labels (N,).
        num_classes: K, the number of target columns.
        l2_reg: ridge strength (big_vision default 2^10).
    """
    fit = lsr_fit(train_x, train_y, num_classes, l2_reg)
    test_y = _long(test_y)
    if test_y.numel() == 0:
        return float("nan")
    pred = lsr_scores(fit, test_x).argmax(dim=1)
    return 100.0 * (pred == test_y).double().mean().item()


def fewshot_indices(labels, shots: int, seed: int, num_classes: int):
    """Indices of `shots` training examples per class for one seed, as big_vision draws them:
    a numpy `default_rng(seed)` permutation of each class's indices, the first `shots` kept.

    Drawing for the largest shot count and taking prefixes gives nested sets (1 in 5 in 10 ...).
    """
    import numpy as np

    labels = np.asarray(_long(labels))
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    return np.concatenate([idx[:shots] for idx in per_class]).astype(np.int64)


def parse_shots(shots) -> tuple[int, ...]:
    """`"1,5,10,25"` or an iterable of ints -> sorted unique positive shot counts."""
    from mixerbench.errors import UserError

    if isinstance(shots, str):
        parts = [p.strip() for p in shots.split(",") if p.strip()]
    else:
        parts = list(shots or ())
    try:
        out = sorted({int(p) for p in parts})
    except (TypeError, ValueError):
        raise UserError(f"--fewshot takes shot counts like 1,5,10,25, not '{shots}'.") from None
    if not out or out[0] < 1:
        raise UserError(f"--fewshot takes positive shot counts like 1,5,10,25, not '{shots}'.")
    return tuple(out)


def check_shots(labels, shots, num_classes: int, where: str = "the train split",
                class_names=None) -> None:
    """UserError when some class has fewer training images than the largest shot count."""
    import numpy as np

    from mixerbench.errors import UserError

    counts = np.bincount(np.asarray(_long(labels)), minlength=num_classes)[:num_classes]
    need = max(shots)
    small = int(counts.argmin())
    if counts[small] < need:
        name = class_names[small] if class_names is not None and small < len(class_names) else small
        raise UserError(f"--fewshot {need} needs {need} images of every class, but class '{name}' "
                        f"has only {int(counts[small])} in {where}; choose at most "
                        f"{int(counts[small])} shots.")


def _loader(ds, *, batch_size, pipeline, img_size, device, shuffle="none", shuffle_patch=None,
            shuffle_seed=0, preprocess=None):
    """One deterministic pass over `ds` in stored order through the eval pipeline (and a fixed
    Figure 4 pixel shuffle, seeded by `shuffle_seed` as the training loaders seed it)."""
    from mixerbench.data import make_loader

    batches = make_loader(ds, batch_size=batch_size, train=False, pipeline=pipeline,
                          img_size=img_size, device=device, preprocess=preprocess,
                          shuffle=None if shuffle in (None, "none") else shuffle,
                          shuffle_patch=shuffle_patch, shuffle_seed=shuffle_seed)
    try:
        yield from batches.epoch(0)
    finally:
        batches.close()  # stop worker processes of streamed datasets


def _stored_size(ds) -> int:
    from mixerbench.errors import UserError

    if getattr(ds, "images", None) is None:
        raise UserError(f"{ds.name} is streamed (images of several sizes); pass img_size.")
    return int(ds.images.shape[1])


def fewshot_eval(model, ds_train, ds_test, shots=(1, 5, 10, 25), seeds: int = FEWSHOT_SEEDS, *,
                 l2_reg: float = FEWSHOT_L2, batch_size: int = 256,
                 pipeline: str = "eval-resize", img_size: int | None = None,
                 device: str = "cpu", dtype: str = "fp32", shuffle: str = "none",
                 shuffle_patch: int | None = None, shuffle_seed: int = 0,
                 preprocess=None) -> list[dict]:
    """Linear few-shot accuracy for each shot count, mean and std over seeds (docs/paper-notes.md §5).

    Train shots are drawn from `ds_train` per class (big_vision's sampling, seeds 0..seeds-1);
    only the drawn images are embedded. Accuracy is measured on all of `ds_test`. Both go through
    the same eval pipeline (and the same fixed pixel shuffle, if any: paper Figure 4).

    Returns:
        One dict per shot count: shots, l2_reg, num_seeds, top1_mean, top1_std (sample std over
        seeds; 0 for one seed), top1_per_seed.
    """
    import statistics

    import numpy as np

    shots = parse_shots(shots)
    k = int(ds_train.num_classes)
    check_shots(ds_train.labels, shots, k, f"the {ds_train.name} {ds_train.split} split",
                getattr(ds_train, "class_names", None))
    size = img_size or _stored_size(ds_test)
    kw = dict(batch_size=batch_size, pipeline=pipeline, img_size=size, device=device,
              shuffle=shuffle, shuffle_patch=shuffle_patch, shuffle_seed=shuffle_seed,
              preprocess=preprocess)
    draws = [fewshot_indices(ds_train.labels, max(shots), s, k) for s in range(seeds)]
    pool = np.unique(np.concatenate(draws))  # embed each drawn image once
    pool_x, pool_y = features(model, _loader(ds_train.subset(pool), **kw), device=device,
                              dtype=dtype)
    where = {int(i): j for j, i in enumerate(pool)}
    test_x, test_y = features(model, _loader(ds_test, **kw), device=device, dtype=dtype)
    rows = []
    for n in shots:
        accs = []
        for s in range(seeds):
            # draws[s] is class-major with max(shots) per class; keep each class's first n
            per_class = draws[s].reshape(k, max(shots))[:, :n].reshape(-1)
            sel = [where[int(i)] for i in per_class]
            accs.append(linear_fewshot(pool_x[sel], pool_y[sel], test_x, test_y, k, l2_reg))
        rows.append(dict(shots=n, l2_reg=l2_reg, num_seeds=seeds,
                         top1_mean=statistics.fmean(accs),
                         top1_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                         top1_per_seed=accs))
    return rows


# ------------------------------------------------------------------------- shuffle invariance

def shuffle_eval(model, ds, kinds=("none", "patch", "global"), *, batch_size: int = 256,
                 pipeline: str = "eval-resize", img_size: int | None = None,
                 device: str = "cpu", dtype: str = "fp32", patch_size: int | None = None,
                 shuffle_seed: int = 0, train_shuffle: str = "none", head: bool = True,
                 ds_train=None, shots=(), seeds: int = FEWSHOT_SEEDS, l2_reg: float = FEWSHOT_L2,
                 preprocess=None) -> list[dict]:
    """Accuracy under the fixed pixel permutations of paper Figure 4.

    Each kind (`none`, `patch`, `global`; `mixerbench.data.transforms.make_shuffle`) permutes
    every eval image the same way (seeded by `shuffle_seed`, patch size `patch_size`, as the
    training loaders do: `mixerbench.data.make_loader`). For a model
    trained under the same permutation this is the Figure 4 protocol. With `head`, the metric is
    the classifier's top-1; with `ds_train` and `shots`, also linear k-shot top-1 (Figure 4's
    y-axis is linear 5-shot), the shots drawn under the same permutation.

    Returns:
        Rows: train_shuffle, eval_shuffle, metric (`top1` or `fewshot<k>`), top1, and for `top1`
        also top5, loss, n; for few-shot also top1_std and num_seeds.
    """
    from mixerbench.data.transforms import SHUFFLES
    from mixerbench.errors import UserError, close_matches

    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    for kind in kinds:
        if kind not in SHUFFLES:
            raise UserError(f"Unknown shuffle '{kind}'; use none, patch or global."
                            + close_matches(kind, SHUFFLES))
    size = img_size or _stored_size(ds)
    rows = []
    for kind in kinds:
        base = dict(train_shuffle=train_shuffle, eval_shuffle=kind)
        if head:
            acc = accuracy(model, _loader(ds, batch_size=batch_size, pipeline=pipeline,
                                          img_size=size, device=device, shuffle=kind,
                                          shuffle_patch=patch_size, shuffle_seed=shuffle_seed,
                                          preprocess=preprocess),
                           device=device, dtype=dtype)
            rows.append(dict(base, metric="top1", **acc))
        if ds_train is not None and shots:
            for r in fewshot_eval(model, ds_train, ds, shots, seeds, l2_reg=l2_reg,
                                  batch_size=batch_size, pipeline=pipeline, img_size=size,
                                  device=device, dtype=dtype, shuffle=kind,
                                  shuffle_patch=patch_size, shuffle_seed=shuffle_seed,
                                  preprocess=preprocess):
                rows.append(dict(base, metric=f"fewshot{r['shots']}", top1=r["top1_mean"],
                                 top1_std=r["top1_std"], num_seeds=r["num_seeds"]))
    return rows


# ------------------------------------------------------------------------------- ImageNet ReaL

REAL_MAX_BYTES = 64 * 2**20  # the public real.json is 1.5 MB (50,000 short lists)
REAL_MAX_CLASS = 1000  # ReaL labels are ImageNet-1k class indices (0-999)


def load_real_labels(src):
    """ReaL labels (Beyer et al. 2020, the public `real.json`): per ImageNet validation image
    in file-name order, the list of correct class indices (empty: the image is left out).

    The file is read as data that may be hostile (`files.read_bytes`, `files.loads_json`): a
    regular file only (a FIFO or `/dev/zero` is refused, not read), at most REAL_MAX_BYTES,
    parsed only when it nests no deeper than real.json's two levels, and every entry must be a
    list of class indices 0-999 (strings, 1e400 or booleans are refused, not coerced)."""
    import numbers
    from pathlib import Path

    from mixerbench.errors import UserError

    if not isinstance(src, (str, Path)):
        data = src
        path = "the ReaL labels"
    else:
        from mixerbench import files

        path = Path(src)
        raw = files.read_bytes(path, REAL_MAX_BYTES)  # a FIFO or /dev/zero is refused, not read
        if raw is None:
            raise UserError(f"There is no ReaL labels file at {path}; pass the public real.json.")
        try:  # real.json is a list of label lists: two levels deep
            data = files.loads_json(raw, path, REAL_MAX_BYTES, depth=2)
        except ValueError:
            raise UserError(f"{path} is not JSON; pass the public real.json (a list of label "
                            "lists).") from None

    def index(x) -> bool:
        return isinstance(x, numbers.Integral) and not isinstance(x, bool) and 0 <= x < REAL_MAX_CLASS

    if (not isinstance(data, list) or not data
            or not all(isinstance(v, list) and all(map(index, v)) for v in data)):
        raise UserError(f"{path} is not in the real.json format (a non-empty list of lists of "
                        f"ImageNet class indices 0-{REAL_MAX_CLASS - 1}); pass the public real.json.")
    return [[int(x) for x in v] for v in data]


REAL_NAME = "ILSVRC2012_val_{:08d}"  # timm RealLabelsDataset's key (without `.JPEG`), 1-based


def real_labels_for(file_names, real_labels, what: str = "the dataset") -> list[list[int]]:
    """The ReaL labels of each image, matched by its ImageNet validation file name as timm's
    `RealLabelsDataset` matches them (`real.json` entry i belongs to
    `ILSVRC2012_val_{i+1:08d}.JPEG`), never by position: an image folder lists val class by
    class, not in file-name order. The extension is not compared, so a re-encoded copy
    (`.png`) still matches.

    Args:
        file_names: each evaluated image's file name, in evaluation order (`Dataset.file_names`).
        real_labels: the `real.json` list (or its path).

    Raises:
        UserError: when there are no file names, some are not a validation image's name, or
            one name is there twice (the same image under two class folders, or in two
            encodings): ReaL scores each validation image once, so it would count twice.
    """
    from collections import Counter
    from pathlib import PurePath

    from mixerbench.errors import UserError

    labels = load_real_labels(real_labels)
    if file_names is None:
        raise UserError(f"ReaL labels are matched by ImageNet validation file name and {what} "
                        "keeps no file names; evaluate a copy of ImageNet val that keeps them "
                        "(an image folder, or parquet with image paths).")
    key = {REAL_NAME.format(i + 1): v for i, v in enumerate(labels)}
    stems = [PurePath(str(n)).stem for n in file_names]
    missing = [n for n, s in zip(file_names, stems) if s not in key]
    if missing:
        raise UserError(f"ReaL labels are matched by ImageNet validation file name, but "
                        f"{len(missing):,} of the {len(stems):,} images of {what} have none of the "
                        f"{len(labels):,} names in the labels file (e.g. {str(missing[0])!r}); "
                        "evaluate ImageNet val with its original ILSVRC2012_val_* file names.")
    twice = [(s, k) for s, k in Counter(stems).items() if k > 1]
    if twice:
        raise UserError(f"ReaL counts each ImageNet validation image once, but {what} holds "
                        f"{len(twice):,} of them more than once (e.g. {twice[0][0]} {twice[0][1]} "
                        "times, under two class folders or in two encodings); keep one copy of "
                        "each and evaluate again.")
    return [key[s] for s in stems]


def real_accuracy(outputs, real_labels, topk=(1, 5)) -> dict:
    """ReaL top-k accuracy (percent) as timm's `RealLabelsImagenet` scores it: an image counts
    if any of its top-k predictions is among its ReaL labels; images without labels are skipped.

    Args:
        outputs: logits (N, K), or predicted indices (N,) / top-k indices (N, k).
        real_labels: one label list per output row, aligned with `outputs` (from
            `real_labels_for`, which matches them by file name), or the `real.json` list (or
            path) when `outputs` are in validation file-name order.

    Returns:
        dict(top1, top5 (when available), n): n is the number of images with labels.
    """
    import torch

    from mixerbench.errors import UserError

    labels = load_real_labels(real_labels)
    out = outputs if isinstance(outputs, torch.Tensor) else torch.as_tensor(outputs)
    if out.shape[0] != len(labels):
        raise UserError(f"The ReaL labels cover {len(labels)} images but {out.shape[0]} were "
                        "evaluated; use the full ImageNet validation split in file-name order.")
    if out.is_floating_point():
        k = min(max(topk), out.shape[1])
        top = out.topk(k, dim=1).indices
    else:
        top = out.long().reshape(out.shape[0], -1)
    keep = [i for i, v in enumerate(labels) if v]
    res = dict(n=len(keep))
    for k in topk:
        if k > top.shape[1]:
            continue
        hits = sum(bool(set(top[i, :k].tolist()) & set(labels[i])) for i in keep)
        res[f"top{k}"] = 100.0 * hits / len(keep) if keep else float("nan")
    return res


# ------------------------------------------------------------------------------- the command

CROPS = {"resize": "eval-resize", "resmall": "eval-resmall", "plain": "eval-plain",
         "weights": "eval-weights"}


def probe_of(metric: str, dataset: str) -> str | None:
    """The dataset a row's linear probe ran on (its shots and test images): `dataset` for a
    few-shot metric, None for the classifier's own top-1. The paper probes ImageNet after
    pre-training on JFT (section 3.3, Figure 4); the scaled experiments probe the dataset they
    trained on, and the rows say so."""
    return dataset if str(metric).startswith("fewshot") else None


def _run_config(src: str):
    """(RunConfig, run id) of the training run of a checkpoint (its run dir, or the run's
    checkpoint file in it), or (None, "") when there is none; a config.json we did not write
    in a run folder is refused. Any other file stands for itself: the config.json beside
    another name is not a run's (timm's export and hub folders hold one beside
    model.safetensors), as `weights.resolve_source` credits only the run's own checkpoint."""
    from pathlib import Path

    from mixerbench.config import read_run_config
    from mixerbench.models.weights import CHECKPOINT

    if str(src).startswith("timm:"):
        return None, ""
    path = Path(src)
    if not path.is_dir() and path.name != CHECKPOINT:
        return None, ""
    folder = path if path.is_dir() else path.parent
    cfg = read_run_config(folder)
    return (cfg, folder.name) if cfg is not None else (None, "")


def _recipe_of(src: str, cfg) -> str | None:
    """The recipe id of the finished run beside a checkpoint (`config.recipe_id`, with the
    precision its summary says it trained in), or None: no run, or one still training, whose
    checkpoint is not yet what its recipe produces."""
    from pathlib import Path

    from mixerbench import files
    from mixerbench.config import recipe_id

    if cfg is None:
        return None
    path = Path(src)
    folder = path if path.is_dir() else path.parent
    try:
        summary = files.read_json(folder / "summary.json")
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("run_id") != folder.name:
        return None
    return summary.get("recipe_id") or recipe_id(cfg, summary.get("dtype"))


class Event:
    """What `evaluate` emits as `log(event, info)` besides its `events.Event.PROGRESS` stages;
    `view.ProgressView` renders it and `trackers.Tracked` records it."""

    EVALUATED = "evaluated"  # an evaluation finished: result (evaluate's dict), options, root


def evaluate(checkpoint_src: str, dataset: str, *, arch: str | None = None,
             split: str = "test", crop: str | None = None,
             data_dir: str | None = None, fewshot=None, shuffle=None, real_labels=None,
             device: str | None = None, dtype: str | None = None, batch_size: int = 256,
             seeds: int = FEWSHOT_SEEDS, l2_reg: float = FEWSHOT_L2, fewshot_split: str = "train",
             shuffle_patch: int | None = None, max_examples: int | None = None, root=None,
             log: Log = noop, sha256: str | None = None) -> dict:
    """Evaluate a checkpoint: accuracy, ReaL, linear few-shot and shuffle invariance.

    Args:
        checkpoint_src: run directory, `.safetensors`, `timm:<name>[.<tag>]` or official `.npz`
            (as `finetune --init`).
        arch: the architecture of a `.safetensors` without mixerbench metadata (a timm name).
        dataset / split / data_dir: what to evaluate on (`mixerbench.data.get_dataset`).
        crop: `resize` (resize-crop), `resmall` (resmall-crop; paper App. C), `plain`, or
            `weights` (the weights' own: timm's crop_pct). Default: the training run's own eval
            pipeline when the checkpoint comes from a run (so the number reproduces the one its
            run logged), `weights` for `timm:` weights, else `resize`. Values and resizes follow
            the weights (`models.preprocess.of_weights`: timm's pretrained_cfg mean, std and
            interpolation; [-1, 1] and bilinear for ours and the paper's own).
        fewshot: shot counts ("1,5,10,25"); train shots come from `fewshot_split`, accuracy from
            `split`. Needs no head, so it works for any checkpoint.
        shuffle: kinds ("none,patch,global") of paper Figure 4's fixed pixel permutations.
        max_examples: measure on a seeded class-stratified N images of `split` only
            (`data.stratified_subset`; its rows then name the split `<split>[stratified:N]`);
            default all of them.
        shuffle_patch: patch side of the `patch` shuffle (default: the one the run trained with,
            else the model's patch size; a CNN has none, so it must be given).
        real_labels: path of ImageNet's `real.json` for ReaL accuracy on the validation split.
        device / dtype: default CUDA + bf16 when present, else CPU + fp32.
        root: if given, rows are appended to accuracy.csv (kind "evaluate", `pipeline` the
            crop), fewshot.csv and shuffle.csv there; a row already there (`results.KEYS`:
            same run, step, images, crop, ...) is not appended again but returned in `kept`.
        log: progress, as `events.Event.PROGRESS` events (one per stage), and the result
            as `Event.EVALUATED` (what trackers record).
        sha256: the hash the weights file must have (recorded earlier by a sweep): a file
            changed since is refused (`weights.load_model`).

    Returns:
        dict(model, dataset, split, img_size, pipeline, top1, top5, loss, n, real, fewshot,
        shuffle, rows, kept) where `rows` maps each CSV table to the rows built for it and
        `kept` lists those of them not appended (already recorded).
    """
    from mixerbench.data import get_dataset
    from mixerbench.models import get_spec, label_of
    from mixerbench.results import provenance

    device, dtype, shots, kinds = _check_options(device, dtype, crop, fewshot, shuffle, l2_reg,
                                                 seeds, batch_size)
    if real_labels is not None:  # a bad labels file is refused before the model or data load
        real_labels = load_real_labels(real_labels)
    steps = _Steps(log, 2 + bool(real_labels) + bool(shots) + len(kinds))
    steps.tick("loading model")
    s = _open(checkpoint_src, dataset, split, arch=arch, data_dir=data_dir, device=device, crop=crop,
              shots=shots, kinds=kinds, real_labels=real_labels, max_examples=max_examples,
              shuffle_patch=shuffle_patch, sha256=sha256)
    ds, split = s["ds"], s["split"]
    kw = dict(batch_size=batch_size, pipeline=s["pipeline"], img_size=s["img_size"],
              device=device, preprocess=s["preprocess"])
    shuffled = dict(shuffle=s["train_shuffle"], shuffle_patch=s["patch"])
    # rows name the model as training runs do (shapes included), so tables join on it
    label = label_of(s["rec"])
    out = dict(model=label, dataset=ds.name, split=split, img_size=s["img_size"],
               pipeline=s["pipeline"], top1=None, top5=None, loss=None, n=None, real=None,
               fewshot=[], shuffle=[], num_classes=ds.num_classes, head=s["has_head"])
    prov = provenance(device=device, num_devices=1, dtype=dtype, compiled=False,
                      seed=s["seed"] if s["run_id"] else None)
    # `steps`: the step of the weights measured (tells an unfinished run's checkpoints apart)
    common = dict(run_id=s["run_id"], recipe_id=s["recipe_id"], model=label, family=get_spec(s["rec"]["name"]).family,
                  dataset=ds.name, img_size=s["img_size"], steps=s["rec"].get("step"), **prov)
    evaluated = dict(common, init=str(checkpoint_src), kind="evaluate", pipeline=s["pipeline"])
    rows = {"accuracy": [], "fewshot": [], "shuffle": []}
    model = s["model"]

    if s["has_head"]:
        steps.tick(f"accuracy on {ds.name} {split}")
        acc = accuracy(model, _loader(ds, **shuffled, **kw), device=device, dtype=dtype)
        out.update(acc)
        rows["accuracy"].append(dict(evaluated, split=split, top1=acc["top1"],
                                     top5=acc["top5"], loss=acc["loss"]))
    if real_labels:
        steps.tick("ReaL labels")
        logits = predict(model, _loader(ds, **shuffled, **kw), device=device, dtype=dtype)
        out["real"] = real = real_accuracy(logits, s["real"])
        rows["accuracy"].append(dict(evaluated, split=f"{split}-real", top1=real["top1"],
                                     top5=real.get("top5")))
    ds_train, fs = None, []
    # how a linear probe was measured (fewshot.csv): on which images, shots from where, how
    probe = dict(split=split, shots_split=fewshot_split, l2_reg=l2_reg, pipeline=s["pipeline"])
    if shots:
        steps.tick(f"{'/'.join(map(str, shots))}-shot linear probe")
        ds_train = get_dataset(dataset, fewshot_split, data_dir=data_dir, seed=s["seed"])
        out["fewshot"] = fs = fewshot_eval(model, ds_train, ds, shots, seeds, l2_reg=l2_reg,
                                           dtype=dtype, **shuffled, **kw)
        rows["fewshot"] += [dict(common, upstream=s["upstream"], **probe,
                                 **{k: r[k] for k in ("shots", "num_seeds", "top1_mean",
                                                      "top1_std")}) for r in fs]
    for kind in kinds:
        steps.tick(f"shuffle {kind}")
        if kind == s["train_shuffle"]:  # measured above under this very permutation: reuse
            sh = [dict(metric="top1", **acc)] if s["has_head"] else []
            sh = [dict(r, train_shuffle=kind, eval_shuffle=kind) for r in sh + [
                dict(metric=f"fewshot{r['shots']}", top1=r["top1_mean"]) for r in fs]]
        else:
            sh = shuffle_eval(model, ds, [kind], dtype=dtype, patch_size=s["patch"],
                              train_shuffle=s["train_shuffle"], head=s["has_head"],
                              ds_train=ds_train, shots=shots, seeds=seeds, l2_reg=l2_reg, **kw)
        out["shuffle"] += sh
        rows["shuffle"] += [dict(common, split=split, pipeline=s["pipeline"],
                                 train_shuffle=r["train_shuffle"],
                                 eval_shuffle=r["eval_shuffle"], metric=r["metric"],
                                 top1=r["top1"], probe_dataset=probe_of(r["metric"], ds.name),
                                 **({k: probe[k] for k in ("shots_split", "l2_reg")} | dict(
                                     num_seeds=seeds) if r["metric"] != "top1" else {}))
                            for r in sh]
    steps.tick("done")
    out["rows"], out["kept"] = _record(rows, root, checkpoint_src, shuffle_patch=shuffle_patch,
                                       real_labels=real_labels)
    log(Event.EVALUATED, dict(result=out, root=root, options=dict(
        checkpoint=str(checkpoint_src), arch=arch, dataset=dataset, split=split, crop=crop,
        fewshot=fewshot, shuffle=shuffle, shuffle_patch=shuffle_patch, seeds=seeds,
        l2_reg=l2_reg, max_examples=max_examples, batch_size=batch_size, device=device)))
    return out


class _Steps:
    """Reports `events.Event.PROGRESS` one stage at a time."""

    def __init__(self, log: Log, total: int):
        self.log, self.total, self.done = log, total, 0

    def tick(self, what: str) -> None:
        progress(self.log, what, min(self.done, self.total), self.total)
        self.done += 1


def _check_options(device, dtype, crop, fewshot, shuffle, l2_reg, seeds, batch_size):
    """(device, dtype, shots, shuffle kinds), every option checked before any work."""
    import math

    from mixerbench.errors import UserError
    from mixerbench.runtime import choose

    device, dtype = choose(device, dtype)
    if crop is not None and crop not in CROPS:
        raise UserError(f"Unknown crop '{crop}'; use {', '.join(CROPS)}.")
    shots = parse_shots(fewshot) if fewshot not in (None, "", ()) else ()
    kinds = ([k.strip() for k in shuffle.split(",") if k.strip()] if isinstance(shuffle, str)
             else list(shuffle or ()))
    if not (math.isfinite(l2_reg) and l2_reg > 0):
        raise UserError(f"--l2-reg {l2_reg} must be a positive finite number (big_vision uses 1024).")
    if shots and not 1 <= seeds <= 1000:
        raise UserError(f"--seeds {seeds} must be between 1 and 1000 (few-shot draws to average).")
    if not 1 <= batch_size <= 2**20:
        raise UserError(f"--batch-size {batch_size} must be between 1 and {2**20:,} images.")
    return device, dtype, shots, kinds


def _open(checkpoint_src, dataset, split, *, arch=None, data_dir, device, crop, shots, kinds, real_labels,
          max_examples, shuffle_patch, sha256=None) -> dict:
    """The model (finite weights), the dataset split (a stratified `max_examples` of it), and
    what the training run says about them: its eval pipeline, its Figure 4 shuffle and patch,
    its seed."""
    import dataclasses

    import torch

    from mixerbench.data import capped_split, get_dataset, stratified_subset
    from mixerbench.errors import UserError
    from mixerbench.models import get_spec
    from mixerbench.models.preprocess import of_weights
    from mixerbench.models.weights import load_model

    run_cfg, run_id = _run_config(checkpoint_src)
    recipe = _recipe_of(checkpoint_src, run_cfg)
    data_cfg = {} if run_cfg is None else dataclasses.asdict(run_cfg.data)
    seed = run_cfg.seed if run_cfg else 0
    model, rec = load_model(checkpoint_src, device=device, model_name=arch, sha256=sha256)
    if run_cfg is not None:  # the rows go to this run: the weights loaded must be its own (the
        # run folder may have been swapped since its config was read above)
        from mixerbench.models.weights import check_credited_to

        check_credited_to(checkpoint_src, run_id, run_cfg, rec)
    ds = get_dataset(dataset, split, data_dir=data_dir, seed=seed)
    if max_examples is not None:
        if max_examples < 1:
            raise UserError(f"--max-examples {max_examples} must be at least 1.")
        if max_examples < len(ds):
            ds = ds.subset(stratified_subset(ds.labels, max_examples))
            split = capped_split(split, max_examples)
    classes = int(rec.get("num_classes") or 0)
    has_head = classes == int(ds.num_classes)
    if not has_head and not shots:
        raise UserError(
            f"{checkpoint_src} has a {classes}-class head but {ds.name} has {ds.num_classes} "
            "classes; fine-tune it first, or measure its features with --fewshot 5 (a linear "
            "probe that needs no head).")
    if real_labels and not has_head:
        raise UserError("ReaL accuracy needs a head for the ImageNet classes; this checkpoint "
                        f"has {classes} outputs.")
    # matched by file name before any image is evaluated, so a mismatch costs no pass
    real = real_labels_for(ds.file_names(), real_labels, f"{ds.name} {split}") if real_labels else None
    patch = (shuffle_patch or data_cfg.get("shuffle_patch") or rec.get("patch_size")
             or get_spec(rec["name"]).patch_size)
    if "patch" in kinds and not patch:
        raise UserError(f"The patch shuffle needs a patch size and {rec['name']} has none (a CNN); "
                        "pass --shuffle-patch N.")
    # the values and resizes the weights were trained with: timm's pretrained_cfg for released
    # weights, the paper's [-1, 1] for ours and the paper's own (`models.preprocess`)
    pre = of_weights(run_cfg.init if run_cfg is not None else checkpoint_src)
    default = "eval-weights" if str(checkpoint_src).startswith("timm:") else "eval-resize"
    return dict(model=model, rec=rec, ds=ds, split=split, run_id=run_id, recipe_id=recipe,
                preprocess=pre, seed=seed, real=real,
                has_head=has_head, img_size=int(rec["img_size"]), patch=patch,
                upstream=data_cfg.get("dataset"),
                pipeline=CROPS[crop] if crop else data_cfg.get("eval_pipeline") or default,
                # a run trained under a Figure 4 shuffle was evaluated under it: reproduce that
                train_shuffle=data_cfg.get("shuffle") or "none")


def _record(rows: dict, root, checkpoint_src, *, shuffle_patch=None,
            real_labels=None) -> tuple[dict, list]:
    """(each table's rows in its schema, the rows not appended because their observation was
    already recorded: `results.KEYS`); appended under `root` (every file checked first, so all
    rows land or none) unless a measurement is not finite. A table whose key does not hold a
    setting given appends its rows whatever is recorded (no key holds an explicit
    `shuffle_patch`, which changes the patch rows and every number of a run trained under the
    patch shuffle; accuracy.csv's not which `real_labels` file scored the ReaL row): a second
    evaluation may differ from a recorded one with equal key cells (a repeat costs a row;
    taking a new measurement for an old one would lose it)."""
    import math

    from mixerbench import results
    from mixerbench.errors import UserError

    always = (set(rows) if shuffle_patch is not None
              else {"accuracy"} if real_labels is not None else set())
    rows = {t: [{k: r.get(k) for k in results.SCHEMAS[t]} for r in rs] for t, rs in rows.items()}
    measured = [r.get("top1", r.get("top1_mean")) for rs in rows.values() for r in rs]
    if not all(isinstance(v, float) and math.isfinite(v) for v in measured):
        raise UserError(f"Evaluating {checkpoint_src} gave a non-finite accuracy (no images, or "
                        "NaN outputs), so no row was written; check the checkpoint and the data.")
    kept = []
    if root is not None:
        for table in rows:
            results.ensure_appendable(table, root)
        for table, table_rows in rows.items():
            for r in table_rows:
                if table in results.KEYS and table not in always:
                    # one row per observation (a repeat is not appended)
                    if not results.append_once(table, r, root):
                        kept.append(r)
                else:
                    results.append_row(table, r, root)
    return rows, kept
