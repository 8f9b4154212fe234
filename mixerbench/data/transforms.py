"""The paper's input pipelines and the Figure 4 pixel shuffles.

Owns the image geometry (crops, flips, eval resizes), RandAugment, mixup, the [-1, 1] value range and
the fixed pixel permutations, in two forms that share their random draws' definitions:

- batched tensor ops for datasets held in memory (`apply_geometry` on a whole batch, on the device that
  holds the batch: the GPU-resident fast path of design.md section 7, the same code on CPU);
- per-image PIL geometry for the worker path (`pil_geometry`), run in DataLoader workers on full-size
  decoded images; RandAugment, mixup, value range and shuffles then run batched in the main process.

Pipelines (paper.md 6.1, 6.2, Table 4 in 4.1, Appendix C):

- `pretrain`: inception crop (random resized crop, area (0.05, 1) as big_vision's inception_crop,
  aspect (3/4, 4/3)), flip, RandAugment (2 layers, magnitude m), mixup with strength p, value range
  (-1, 1) (big_vision i1k config).
- `finetune`: vision_transformer's train pipeline: random crop of area (0.05, 1.0), resize, flip.
- `small`: 32 px recipe: zero-pad 4 px, random crop back to the stored size, flip (optional RandAugment).
- `eval-resize` ("resize-crop"): resize to img_size*256/224 square, centre crop img_size.
- `eval-resmall` ("resmall-crop"): shorter side to img_size*256/224, centre crop img_size.
- `eval-plain`: resize to img_size (for small datasets stored at the model's size).

Every random draw comes from a `torch.Generator` the caller seeds (the loader seeds it from
(seed, epoch, batch index, rank)); nothing here reads or changes a global RNG.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
import torch

from mixerbench.errors import UserError, close_matches

PIPELINES = {
    "pretrain": "inception crop (area 0.05-1) + flip + RandAugment(2, m) + mixup p; paper Table 4",
    "finetune": "random crop area 0.05-1, resize, flip; vision_transformer fine-tuning (paper 6.2)",
    "small": "pad 4 + random crop + flip (+ RandAugment if m > 0); 32 px images",
    "digits": "pad 2 + random crop, no flip (mirroring changes a digit's class); MNIST-size images",
    "eval-resize": "resize to img_size*256/224 square, centre crop img_size ('resize-crop', App. C)",
    "eval-resmall": "shorter side to img_size*256/224, centre crop img_size ('resmall-crop', App. C)",
    "eval-plain": "resize to img_size",
}
TRAIN_PIPELINES = ("pretrain", "finetune", "small", "digits")
EVAL_PIPELINES = ("eval-resize", "eval-resmall", "eval-plain")
SHUFFLES = ("none", "patch", "global")

# fraction of the image area. pretrain: big_vision/pp/ops_image.py inception_crop and
# decode_jpeg_and_inception_crop default to area_min=5 (percent), not torchvision's 8 %.
CROP_AREA = {"pretrain": (0.05, 1.0), "finetune": (0.05, 1.0)}
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # aspect range of inception crop and TF sample_distorted_bounding_box
SMALL_PAD = 4  # px, the usual CIFAR pad-and-crop
PAD = {"small": SMALL_PAD, "digits": 2}  # px of zero padding before the random crop
FLIP = {"pretrain": True, "finetune": True, "small": True, "digits": False}
EVAL_RESIZE_RATIO = 256 / 224  # resize to 256 then crop 224 (paper App. C), scaled to any img_size
FILL = 128  # grey fill for geometric RandAugment ops, as timm / TF use


def check_pipeline(pipeline: str) -> None:
    if pipeline not in PIPELINES:
        raise UserError(f"Unknown pipeline '{pipeline}': use one of {', '.join(PIPELINES)}."
                        + close_matches(pipeline, PIPELINES))


def mix_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings, stable across processes and Python runs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def eval_resize_size(img_size: int) -> int:
    return int(round(img_size * EVAL_RESIZE_RATIO))


# ---------------------------------------------------------------- random crop boxes (shared by both paths)

def sample_crop_boxes(gen: torch.Generator, n: int, height: int, width: int,
                      area: tuple[float, float], ratio: tuple[float, float] = CROP_RATIO,
                      attempts: int = 10) -> torch.Tensor:
    """Random resized crop boxes, torchvision's RandomResizedCrop algorithm vectorised over `n` images.

    Returns int64 (n, 4) rows (top, left, h, w) in pixels. Written out rather than calling
    v2.RandomResizedCrop because that draws one box per call from the global torch RNG; this draws
    `n` independent boxes from `gen`.
    """
    total = height * width
    target = total * torch.empty(n, attempts).uniform_(area[0], area[1], generator=gen)
    log_r = torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.long().argmax(dim=1)  # first valid attempt per image
    any_ok = ok.any(dim=1)
    rows = torch.arange(n)
    h, w = h[rows, first], w[rows, first]
    # fallback (no attempt fits): the central crop clamped to the ratio range, as torchvision does
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fh, fw = height, int(round(height * ratio[1]))
    else:
        fw, fh = width, height
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    u = torch.rand(n, 2, generator=gen)
    top = (u[:, 0] * (height - h + 1).float()).floor().long()
    left = (u[:, 1] * (width - w + 1).float()).floor().long()
    top = torch.where(any_ok, top, (height - h) // 2)
    left = torch.where(any_ok, left, (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def sample_pad_offsets(gen: torch.Generator, n: int, pad: int = SMALL_PAD) -> torch.Tensor:
    """(n, 2) int64 (dy, dx) in [0, 2*pad]: where the crop starts inside the zero-padded image."""
    return torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)


# ---------------------------------------------------------------- batched geometry (tensor path)

def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop a different box from every image and resize it to size x size in one kernel.

    x: float (B, C, H, W); boxes: (B, 4) (top, left, h, w). Uses torchvision.ops.roi_align (aligned):
    bilinear, and it averages ceil(box/size)^2 samples per output pixel, so downscaling is antialiased;
    an integer box of exactly size x size copies pixels exactly.
    """
    from torchvision.ops import roi_align

    b = boxes.to(device=x.device, dtype=torch.float32)
    rois = torch.stack([torch.arange(len(x), device=x.device, dtype=torch.float32),
                        b[:, 1], b[:, 0], b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]], dim=1)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                     aligned=True)


def shift_crop(x: torch.Tensor, offsets: torch.Tensor, height: int, width: int,
               flip: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image integer crops x[b, :, dy:dy+height, dx:dx+width], mirrored where `flip`, as one gather.

    Works on any dtype (uint8 stays uint8); ~10x cheaper on CPU than roi_align for pad-and-crop.
    """
    n, c, hp, wp = x.shape
    dev = x.device
    cols = torch.arange(width, device=dev).expand(n, width)
    if flip is not None:
        cols = torch.where(flip.to(dev)[:, None], width - 1 - cols, cols)
    cols = cols + offsets[:, 1:2].to(dev)  # (B, W)
    rows = torch.arange(height, device=dev) + offsets[:, 0:1].to(dev)  # (B, H)
    idx = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, height * width).expand(n, c, -1)
    return x.reshape(n, c, hp * wp).gather(2, idx).reshape(n, c, height, width)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def eval_geometry(x: torch.Tensor, pipeline: str, img_size: int) -> torch.Tensor:
    """Deterministic eval resizes on a float batch (B, C, H, W) -> (B, C, img_size, img_size)."""
    import torchvision.transforms.v2.functional as F

    if pipeline == "eval-plain":
        if x.shape[-2:] != (img_size, img_size):
            x = F.resize(x, [img_size, img_size], antialias=True)
        return x
    big = eval_resize_size(img_size)
    if pipeline == "eval-resize":
        x = F.resize(x, [big, big], antialias=True)
    else:  # eval-resmall: shorter side to `big`, keep aspect
        x = F.resize(x, big, antialias=True)
    return F.center_crop(x, [img_size, img_size])


def apply_geometry(x: torch.Tensor, pipeline: str, img_size: int, gen: torch.Generator) -> torch.Tensor:
    """Crop/flip/resize a batch (B, 3, H, W) of values in [0, 255] to (B, 3, img_size, img_size).

    uint8 in, float32 out, except `small` at the stored size, which stays uint8 (a pure gather).
    """
    if pipeline in EVAL_PIPELINES:
        return eval_geometry(x.float(), pipeline, img_size)
    n, _, height, width = x.shape
    if pipeline in PAD:
        import torch.nn.functional as tnf

        off = sample_pad_offsets(gen, n, PAD[pipeline])
        x = tnf.pad(x, (PAD[pipeline],) * 4)  # zeros, like torchvision RandomCrop(padding=4)
        if (height, width) == (img_size, img_size):  # integer shift, no resize: one gather, flip folded in
            flip = torch.rand(n, generator=gen) < 0.5
            return shift_crop(x, off, height, width, flip if FLIP[pipeline] else None)
        boxes = torch.stack([off[:, 0], off[:, 1], torch.full((n,), height), torch.full((n,), width)], 1)
    else:
        boxes = sample_crop_boxes(gen, n, height, width, CROP_AREA[pipeline])
    x = crop_resize(x.float(), boxes, img_size)
    return random_flip(x, gen) if FLIP[pipeline] else x


# ---------------------------------------------------------------- per-image geometry (worker path)

def pil_geometry(img, pipeline: str, img_size: int, gen: torch.Generator | None):
    """The same geometry on one PIL image (full resolution), for DataLoader workers.

    Returns a uint8 numpy array (img_size, img_size, 3). `gen` is a per-example generator (train
    pipelines); eval pipelines ignore it.
    """
    from PIL import Image

    img = img.convert("RGB")
    width, height = img.size
    s = img_size
    if pipeline == "eval-plain":
        out = img if img.size == (s, s) else img.resize((s, s), Image.BILINEAR)
    elif pipeline in ("eval-resize", "eval-resmall"):
        big = eval_resize_size(s)
        if pipeline == "eval-resize":
            nw, nh = big, big
        else:
            scale = big / min(width, height)
            nw, nh = max(big, round(width * scale)), max(big, round(height * scale))
        img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - s) // 2, (nh - s) // 2
        out = img.crop((left, top, left + s, top + s))
    else:
        if pipeline in PAD:
            pad = PAD[pipeline]
            dy, dx = sample_pad_offsets(gen, 1, pad)[0].tolist()
            box = (dx - pad, dy - pad, dx - pad + width, dy - pad + height)
            img = img.crop(box)  # PIL fills outside the image with zeros
            out = img if img.size == (s, s) else img.resize((s, s), Image.BILINEAR)
        else:
            top, left, h, w = sample_crop_boxes(gen, 1, height, width, CROP_AREA[pipeline])[0].tolist()
            out = img.resize((s, s), Image.BILINEAR, box=(left, top, left + w, top + h))
        if torch.rand(1, generator=gen).item() < 0.5 and FLIP[pipeline]:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.array(out, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only)


# ---------------------------------------------------------------- RandAugment (batched, per-example ops)

# timm's `rand-mM-n2` op list and level->argument maps, which follow the TF/big_vision autoaugment
# (level / 10 scale, so m=15 is stronger than m=10; no clamp at 10, as in TF).
RANDAUG_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
               "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
               "TranslateXRel", "TranslateYRel")
_SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}


def _randaug_op(x: torch.Tensor, op: str, m: float, sign: float) -> torch.Tensor:
    """One RandAugment op on a uint8 sub-batch (b, 3, H, W) with torchvision v2 functionals."""
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode

    level = m / 10.0
    fill = [float(FILL)] * 3
    bil = InterpolationMode.BILINEAR
    if op == "AutoContrast":
        return F.autocontrast(x)
    if op == "Equalize":
        return F.equalize(x)
    if op == "Invert":
        return F.invert(x)
    if op == "Rotate":
        return F.rotate(x, sign * level * 30.0, interpolation=bil, fill=fill)
    if op == "Posterize":
        bits = int(level * 4)  # TF: keep 0..4 MSBs, weaker with level; >= 8 is a no-op
        return x if bits >= 8 else F.posterize(x, bits)
    if op == "Solarize":
        thresh = min(256, int(level * 256))
        return x if thresh >= 256 else F.solarize(x, thresh)
    if op == "SolarizeAdd":  # no torchvision functional: add to pixels below 128, as timm/TF do
        add = min(128, int(level * 110))
        return torch.where(x < 128, (x.int() + add).clamp_(max=255).to(torch.uint8), x)
    if op in ("Color", "Contrast", "Brightness", "Sharpness"):
        factor = level * 1.8 + 0.1
        fn = {"Color": F.adjust_saturation, "Contrast": F.adjust_contrast,
              "Brightness": F.adjust_brightness, "Sharpness": F.adjust_sharpness}[op]
        return fn(x, factor)
    if op in ("ShearX", "ShearY"):
        deg = math.degrees(math.atan(sign * level * 0.3))  # PIL shear factor -> degrees, as torchvision does
        shear = [deg, 0.0] if op == "ShearX" else [0.0, deg]
        return F.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=bil,
                        fill=fill, center=[0, 0])
    # TranslateXRel / TranslateYRel: up to 45 % of the side at level 10
    h, w = x.shape[-2:]
    t = sign * level * 0.45
    move = [int(round(t * w)), 0] if op == "TranslateXRel" else [0, int(round(t * h))]
    return F.affine(x, angle=0.0, translate=move, scale=1.0, shear=[0.0, 0.0], interpolation=bil,
                    fill=fill)


def rand_augment(x: torch.Tensor, gen: torch.Generator, magnitude: float, layers: int = 2,
                 prob: float = 0.5) -> torch.Tensor:
    """RandAugment with an independent op choice per example, batched.

    x: uint8 (B, 3, H, W). For each of `layers` layers every example draws an op, a sign, and whether
    the op applies (probability `prob`, timm's default; TF draws it in [0.2, 0.8]). Written by hand
    around torchvision's functionals because v2.RandAugment on a batch applies one op to all images;
    here examples are grouped by (op, sign), so a layer costs at most 2 x 15 functional calls whatever B.
    """
    if magnitude <= 0:
        return x
    n = len(x)
    x = x.clone()
    for _ in range(layers):
        ops = torch.randint(0, len(RANDAUG_OPS), (n,), generator=gen)
        signs = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
        apply = torch.rand(n, generator=gen) < prob
        for k, op in enumerate(RANDAUG_OPS):
            for sign in ((-1, 1) if op in _SIGNED else (None,)):
                sel = apply & (ops == k)
                if sign is not None:
                    sel &= signs == sign
                idx = sel.nonzero().flatten()
                if len(idx) == 0:
                    continue
                idx = idx.to(x.device)
                x[idx] = _randaug_op(x[idx], op, magnitude, float(sign or 1))
    return x


# ---------------------------------------------------------------- value range, mixup, targets

def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 255] -> [-1, 1], big_vision's value_range(-1, 1): (x - 127.5) / 127.5."""
    return x.float().div_(127.5).sub_(1.0)


def soft_targets(y: torch.Tensor, num_classes: int, lam: float = 1.0, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot (optionally smoothed) targets mixed with the batch flipped: timm's mixup_target."""
    from timm.data.mixup import mixup_target

    return mixup_target(y, num_classes, lam=lam, smoothing=smoothing)


def mixup(x: torch.Tensor, y: torch.Tensor, p: float, seed: int, num_classes: int,
          smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-level mixup with strength p (paper Table 4): lam ~ Beta(p, p), pairs are the batch flipped.

    timm's Mixup draws lam from numpy's global RNG; here lam comes from a local numpy Generator seeded
    by the caller, and the images are mixed the way timm's 'batch' mode does (x.flip(0)) so that
    timm's mixup_target builds the matching soft labels.
    """
    lam = float(np.random.default_rng(seed).beta(p, p))
    x = x * lam + x.flip(0) * (1.0 - lam)
    return x, soft_targets(y, num_classes, lam=lam, smoothing=smoothing)


# ---------------------------------------------------------------- Figure 4 shuffles

def shuffle_index(kind: str, img_size: int, patch_size: int = 16, seed: int = 0) -> torch.Tensor:
    """Source pixel index (img_size**2,) for each output pixel in raster order."""
    if kind not in SHUFFLES:
        raise UserError(f"Unknown shuffle '{kind}': use one of {', '.join(SHUFFLES)}." + close_matches(kind, SHUFFLES))
    n = img_size * img_size
    if kind == "none":
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    if kind == "global":
        return torch.randperm(n, generator=gen)
    p = patch_size
    if p <= 0 or img_size % p:
        raise UserError(f"Patch shuffle needs img_size ({img_size}) divisible by the patch size ({p}); "
                        f"pass a patch size that divides it.")
    g = img_size // p
    patch_perm = torch.randperm(g * g, generator=gen)  # which source patch fills each output patch
    pixel_perm = torch.randperm(p * p, generator=gen)  # the same within-patch pixel order for all patches
    # (patch, pixel-in-patch) -> raster source index
    grid = torch.arange(n).view(g, p, g, p).permute(0, 2, 1, 3).reshape(g * g, p * p)
    src = grid[patch_perm][:, pixel_perm]
    return src.view(g, g, p, p).permute(0, 2, 1, 3).reshape(n)


def make_shuffle(kind: str, img_size: int, patch_size: int = 16, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fixed pixel permutation of paper Figure 4, as a function on (B, C, H, W) batches.

    kind: `none`; `patch` (one fixed permutation of the patch order and one fixed permutation of the
    pixels inside each patch); `global` (all pixel positions). The permutation depends only on
    (kind, img_size, patch_size, seed), so it is the same on every call, image, split and process.
    """
    src = shuffle_index(kind, img_size, patch_size, seed)
    cache: dict[torch.device, torch.Tensor] = {}

    def shuffle(x: torch.Tensor) -> torch.Tensor:
        if kind == "none":
            return x
        b, c, h, w = x.shape
        if (h, w) != (img_size, img_size):
            raise ValueError(f"shuffle built for {img_size}x{img_size} images got {h}x{w}")
        idx = cache.setdefault(x.device, src.to(x.device))
        return x.reshape(b, c, h * w)[:, :, idx].reshape(b, c, h, w)

    shuffle.kind = kind  # type: ignore[attr-defined]
    return shuffle
