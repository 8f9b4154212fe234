"""The paper's input pipelines and the Figure 4 pixel shuffles.

Owns the image geometry (crops, flips, eval resizes), RandAugment, mixup, the [-1, 1] value range and
the fixed pixel permutations, in two forms that share their random draws' definitions:

- batched tensor ops for datasets held in memory (`apply_geometry` on a whole batch, on the device that
  holds the batch: the GPU-resident fast path, the same code on CPU);
- per-image geometry for the worker path (`worker_geometry`), run in DataLoader workers, each JPEG
  decoded at the scale its crop needs; RandAugment, mixup, value range and shuffles then run batched.

Pipelines (docs/paper-notes.md §2-3; paper Table 4 and Appendix C):

- `pretrain`: inception crop (random resized crop, area (0.05, 1) as big_vision's inception_crop,
  aspect (3/4, 4/3)), flip, RandAugment (2 layers, magnitude m, big_vision's op list and arguments,
  every chosen op applied), mixup with strength p, value range (-1, 1) (big_vision i1k config).
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
from dataclasses import dataclass

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
    "eval-weights": "the weights' own eval crop: shorter side to img_size/crop_pct, centre crop "
                    "img_size (timm's pretrained_cfg; `Preprocess`)",
}
TRAIN_PIPELINES = ("pretrain", "finetune", "small", "digits")
EVAL_PIPELINES = ("eval-resize", "eval-resmall", "eval-plain", "eval-weights")
SHUFFLES = ("none", "patch", "global")

# fraction of the image area. pretrain: big_vision/pp/ops_image.py inception_crop and
# decode_jpeg_and_inception_crop default to area_min=5 (percent), not torchvision's 8 %.
CROP_AREA = {"pretrain": (0.05, 1.0), "finetune": (0.05, 1.0)}
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # aspect range of inception crop and TF sample_distorted_bounding_box
SMALL_PAD = 4  # px, the usual CIFAR pad-and-crop
PAD = {"small": SMALL_PAD, "digits": 2}  # px of zero padding before the random crop
FLIP = {"pretrain": True, "finetune": True, "small": True, "digits": False}
EVAL_RESIZE_RATIO = 256 / 224  # resize to 256 then crop 224 (paper App. C), scaled to any img_size
FILL = 128  # RandAugment's grey for pixels moved in from outside and for Cutout (the reference's replace)


def check_pipeline(pipeline: str) -> None:
    if pipeline not in PIPELINES:
        raise UserError(f"Unknown pipeline '{pipeline}': use one of {', '.join(PIPELINES)}."
                        + close_matches(pipeline, PIPELINES))


def mix_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings, stable across processes and Python runs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def eval_resize_size(img_size: int, ratio: float = EVAL_RESIZE_RATIO) -> int:
    return int(round(img_size * ratio))


@dataclass(frozen=True)
class Preprocess:
    """How pixels reach a model: per-channel `mean` / `std` of [0, 1] values, the `interpolation`
    of eval resizes, and `crop_pct` of the `eval-weights` crop. `UNIT` is the paper's: [-1, 1]
    (big_vision's value_range(-1, 1)), bilinear, 224/256; weights trained another way carry
    their own (timm's pretrained_cfg: `models.preprocess.of_weights`)."""

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"
    crop_pct: float = 1 / EVAL_RESIZE_RATIO

    def describe(self) -> str:
        if self.mean == UNIT.mean and self.std == UNIT.std:
            return f"[-1, 1], {self.interpolation}"
        return (f"mean {', '.join(f'{m:g}' for m in self.mean)} / std "
                f"{', '.join(f'{v:g}' for v in self.std)}, {self.interpolation}")


UNIT = Preprocess()


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


def crop_box(u: list[float], height: int, width: int, area: tuple[float, float],
             ratio: tuple[float, float] = CROP_RATIO, attempts: int = 10) -> tuple[int, int, int, int]:
    """One box of `sample_crop_boxes`' algorithm in plain Python from 2 * attempts + 2 uniforms
    in [0, 1): the worker path's per-image form (20 tiny torch ops cost 0.25 ms an image)."""
    total = height * width
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(attempts):
        target = total * (area[0] + (area[1] - area[0]) * u[2 * k])
        aspect = math.exp(lo + (hi - lo) * u[2 * k + 1])
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = math.floor(u[-2] * (height - h + 1))
            left = math.floor(u[-1] * (width - w + 1))
            return top, left, h, w
    in_ratio = width / height  # no attempt fits: the central crop clamped to the ratio range
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


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


def eval_geometry(x: torch.Tensor, pipeline: str, img_size: int,
                  pre: Preprocess = UNIT) -> torch.Tensor:
    """Deterministic eval resizes on a float batch (B, C, H, W) -> (B, C, img_size, img_size),
    with `pre`'s interpolation (and crop_pct for `eval-weights`)."""
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode

    mode = InterpolationMode(pre.interpolation)
    if pipeline == "eval-plain":
        if x.shape[-2:] != (img_size, img_size):
            x = F.resize(x, [img_size, img_size], interpolation=mode, antialias=True)
        return x
    ratio = 1 / pre.crop_pct if pipeline == "eval-weights" else EVAL_RESIZE_RATIO
    big = eval_resize_size(img_size, ratio)
    if pipeline == "eval-resize":
        x = F.resize(x, [big, big], interpolation=mode, antialias=True)
    else:  # eval-resmall, eval-weights: shorter side to `big`, keep aspect
        x = F.resize(x, big, interpolation=mode, antialias=True)
    return F.center_crop(x, [img_size, img_size])


def apply_geometry(x: torch.Tensor, pipeline: str, img_size: int, gen: torch.Generator,
                   pre: Preprocess = UNIT) -> torch.Tensor:
    """Crop/flip/resize a batch (B, 3, H, W) of values in [0, 255] to (B, 3, img_size, img_size).

    uint8 in, float32 out, except `small` at the stored size, which stays uint8 (a pure gather).
    """
    if pipeline in EVAL_PIPELINES:
        return eval_geometry(x.float(), pipeline, img_size, pre)
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

def resize_u8(x: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Antialiased resize of one uint8 (3, h, w) image (bilinear or bicubic), staying uint8.

    Through torch's uint8 kernel on a channels-last copy (the layout it vectorises; PIL's
    algorithm, within 1 of it): 0.16 ms for a 375 px crop to 224 px where PIL took 0.6 ms
    with the conversions around it (2-core Xeon, one thread).
    """
    import torch.nn.functional as tnf

    if tuple(x.shape[-2:]) == (height, width):
        return x
    x = x[None].contiguous(memory_format=torch.channels_last)
    return tnf.interpolate(x, size=(height, width), mode=mode, antialias=True, align_corners=False)[0]


def worker_geometry(enc, pipeline: str, img_size: int, gen: torch.Generator | None,
                    pre: Preprocess = UNIT) -> torch.Tensor:
    """The geometry of `pipeline` on one encoded image (`decode.Encoded`), for DataLoader workers.

    Returns uint8 (3, img_size, img_size). The crop box is drawn from the header's size before
    any pixel is decoded, so a JPEG is decoded only at the scale that crop needs (an inception
    crop keeping at least img_size px each way, an eval resize at least its resize size). `gen`
    is a per-example generator (train pipelines: the box, then the flip); eval pipelines ignore it
    and resize with `pre`'s interpolation.
    """
    width, height = enc.size
    s = img_size
    if pipeline == "eval-plain":
        return resize_u8(enc.decode(s, s), s, s, pre.interpolation)
    if pipeline in ("eval-resize", "eval-resmall", "eval-weights"):
        big = eval_resize_size(s, 1 / pre.crop_pct if pipeline == "eval-weights" else EVAL_RESIZE_RATIO)
        x = enc.decode(big, big)
        if pipeline == "eval-resize":
            nh, nw = big, big
        else:
            scale = big / min(width, height)
            nw, nh = max(big, round(width * scale)), max(big, round(height * scale))
        x = resize_u8(x, nh, nw, pre.interpolation)
        top, left = (nh - s) // 2, (nw - s) // 2
        return x[:, top:top + s, left:left + s]
    if pipeline in PAD:
        import torch.nn.functional as tnf

        pad = PAD[pipeline]
        dy, dx = sample_pad_offsets(gen, 1, pad)[0].tolist()
        x = tnf.pad(enc.decode(), (pad,) * 4)[:, dy:dy + height, dx:dx + width]  # zeros outside
        return _flip(resize_u8(x, s, s), torch.rand(1, generator=gen).item() < 0.5 and FLIP[pipeline])
    u = torch.rand(23, generator=gen).tolist()  # 10 attempts' area and aspect, the position, the flip
    top, left, h, w = crop_box(u[:22], height, width, CROP_AREA[pipeline])
    # decoded at the scale that keeps the box at least s px each way, the box scaled with it
    x = enc.decode(math.ceil(width * s / w), math.ceil(height * s / h))
    fy, fx = x.shape[-2] / height, x.shape[-1] / width
    t, l = int(top * fy), int(left * fx)
    b, r = max(t + 1, round((top + h) * fy)), max(l + 1, round((left + w) * fx))
    return _flip(resize_u8(x[:, t:b, l:r], s, s), u[22] < 0.5 and FLIP[pipeline])


def _flip(x: torch.Tensor, flip: bool) -> torch.Tensor:
    return x.flip(-1) if flip else x


# ---------------------------------------------------------------- RandAugment (batched, per-example ops)

# big_vision's `randaug(2, m)` op calls `distort_image_with_randaugment` in big_vision/pp/autoaugment.py,
# itself forked from tensorflow/tpu models/official/efficientnet/autoaugment.py. Everything below
# follows that code; paper App. B (Table 4) uses it with 2 layers and m = 10, 15 or 20. The op list is
# the reference's `available_ops`, in its order (a layer's draw indexes into it).
RANDAUG_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
               "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")
RANDAUG_LAYERS = 2  # ops applied in sequence to every image (paper App. B)
RANDAUG_MAX_LEVEL = 10.0  # the reference's _MAX_LEVEL: arguments scale with m / 10, unclamped, so m=15 > m=10
RANDAUG_REF_SIDE = 224  # px: the reference's two pixel constants below are for 224 px training images
RANDAUG_TRANSLATE_PX = 100  # px at 224 px, HParams(translate_const=100) in distort_image_with_randaugment
RANDAUG_CUTOUT_PX = 40  # px at 224 px, HParams(cutout_const=40): half the side of the Cutout square at m = 10
# The reference's Contrast blends towards sum(histogram) / 256, i.e. the pixel count / 256, not the mean
# grey level: 224 * 224 / 256 = 196 on the 224 px images of the paper. Kept at 196 for every image size,
# like the pixel constants above are scaled, so that a 32 px image gets the op the paper's images got
# (the literal formula would give 4 there: a blend towards near-black that brightens almost every pixel).
RANDAUG_CONTRAST_GREY = RANDAUG_REF_SIDE * RANDAUG_REF_SIDE // 256


def randaug_args(op: str, magnitude: float, img_size: int = RANDAUG_REF_SIDE) -> tuple:
    """The reference's `level_to_arg` for one op at magnitude m, on img_size x img_size images.

    Rotate: degrees; Posterize: bits kept; Solarize: threshold (compared as uint8, see `_randaug_op`);
    SolarizeAdd: amount added below 128; Color/Contrast/Brightness/Sharpness: blend factor (1 = identity);
    ShearX/ShearY: shear coefficient; TranslateX/TranslateY: pixels; Cutout: half the side of the grey
    square, pixels. The signed ops (Rotate, Shear*, Translate*) return the magnitude; `rand_augment`
    flips the sign per example.

    The reference's translate (100 px) and cutout (40 px) constants are absolute pixels for 224 px
    images; they are scaled by img_size / 224 here so that an image of any size is moved and masked by
    the same fraction of its side (unscaled, a 100 px translation would push a 32 px image out of frame).
    At img_size 224 every value equals the reference's.
    """
    level = magnitude / RANDAUG_MAX_LEVEL
    px = img_size / RANDAUG_REF_SIDE
    if op in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if op == "Rotate":
        return (level * 30.0,)
    if op == "Posterize":
        return (int(level * 4),)
    if op == "Solarize":
        return (int(level * 256),)
    if op == "SolarizeAdd":
        return (int(level * 110),)
    if op in ("Color", "Contrast", "Brightness", "Sharpness"):
        return (level * 1.8 + 0.1,)
    if op in ("ShearX", "ShearY"):
        return (level * 0.3,)
    if op in ("TranslateX", "TranslateY"):
        return (level * (RANDAUG_TRANSLATE_PX * px),)
    if op == "Cutout":
        return (int(level * (RANDAUG_CUTOUT_PX * px)),)
    raise ValueError(f"unknown RandAugment op {op!r}; the ops are {', '.join(RANDAUG_OPS)}")


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: float) -> torch.Tensor:
    """The reference's blend: degenerate + factor * (image - degenerate) in float32, clipped, truncated."""
    if factor == 1.0:
        return image
    # in place, the same float32 roundings as a + factor * (image - a): 4 passes instead of 7 allocations
    a = degenerate.float() if isinstance(degenerate, torch.Tensor) else degenerate
    d = image.float().sub_(a).mul_(factor)
    return (d.add_(a) if isinstance(a, torch.Tensor) or a else d).clamp_(0, 255).to(torch.uint8)  # truncates, as TF


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.where(mask, a, b) for uint8 tensors as b + (a - b) * mask in wrapping uint8 arithmetic
    (exact: the wrap cancels). torch.where on uint8 was 30x slower on the CPU (0.8 ms per 224 px image)."""
    return (a - b).mul_(mask.to(torch.uint8)).add_(b)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """tf.image.rgb_to_grayscale on uint8 (b, 3, H, W) -> (b, 1, H, W): to [0, 1], weigh, back via * 255.5."""
    f = x.float() * (1.0 / 255)
    g = f[:, 0:1] * 0.2989 + f[:, 1:2] * 0.5870 + f[:, 2:3] * 0.1140
    return (g * 255.5).to(torch.uint8)


# PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 as the reference's float32 constant, row-major
_SMOOTH = (torch.tensor([1, 1, 1, 1, 5, 1, 1, 1, 1], dtype=torch.float32) / 13.0).tolist()


def _smooth_taps(x: torch.Tensor) -> torch.Tensor:
    """The reference's 3x3 SMOOTH depthwise conv (valid) of uint8 (n, 1, H, W), tap by tap in
    row-major order, each tap rounded to float32 once (a fused multiply-add), as float32."""
    h, w = x.shape[-2:]
    f = x.double()
    smooth = torch.zeros((*x.shape[:-2], h - 2, w - 2), dtype=torch.float32, device=x.device)
    wide = torch.empty(smooth.shape, dtype=torch.float64, device=x.device)
    for dy in range(3):
        for dx in range(3):
            torch.add(smooth, f[..., dy:h - 2 + dy, dx:w - 2 + dx], alpha=_SMOOTH[dy * 3 + dx], out=wide)
            smooth.copy_(wide)
    return smooth


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    """C's round(): halves away from zero (torch.round goes to even), as TF's nearest sampling does."""
    t = torch.trunc(v)
    return t + torch.sign(v) * ((v - t).abs() >= 0.5)


def _transform_nearest(x: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    """The reference's geometric ops: tfa.image.transform (nearest) on wrap(image), then unwrap(image, 128).

    mats: float32 (b, 6) rows [a0, a1, a2, b0, b1, b2], one per image, mapping each output pixel
    (x = column, y = row) to the input pixel (a0 x + a1 y + a2, b0 x + b1 y + b2), rounded half away from
    zero; pixels that map outside the image take the fill value 128 in every channel.
    """
    b, c, h, w = x.shape
    dev = x.device
    m = mats.to(dev)[:, :, None, None]  # (b, 6, 1, 1)
    xs = torch.arange(w, device=dev, dtype=torch.float32)[None, None, :]
    ys = torch.arange(h, device=dev, dtype=torch.float32)[None, :, None]
    ix = _round_half_away(m[:, 0] * xs + m[:, 1] * ys + m[:, 2])  # (b, H, W)
    iy = _round_half_away(m[:, 3] * xs + m[:, 4] * ys + m[:, 5])
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    src = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).long().reshape(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, src).reshape(b, c, h, w)
    return out.masked_fill_(~inside[:, None], FILL)


def _geometry_mats(op: str, arg: float, signs: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(b, 6) float32 transforms of the reference's rotate / shear_x/y / translate_x/y, signed per image.

    The reference draws the sign into a float32 tensor and tfa builds the matrices in float32, so they
    are built in float32 here too, on the CPU whatever the images' device (the same values everywhere).
    """
    p = signs.to(torch.float32) * torch.tensor(arg, dtype=torch.float32)
    one, zero = torch.ones_like(p), torch.zeros_like(p)
    if op == "Rotate":  # tfa angles_to_projective_transforms: counter-clockwise about the image centre
        rad = p * torch.tensor(math.pi / 180.0, dtype=torch.float32)
        cos, sin = torch.cos(rad), torch.sin(rad)
        wf, hf = torch.tensor(float(w), dtype=torch.float32), torch.tensor(float(h), dtype=torch.float32)
        x_off = ((wf - 1) - (cos * (wf - 1) - sin * (hf - 1))) / 2.0
        y_off = ((hf - 1) - (sin * (wf - 1) + cos * (hf - 1))) / 2.0
        rows = (cos, -sin, x_off, sin, cos, y_off)
    elif op == "ShearX":  # [1 level; 0 1]: shear about the top-left corner, as PIL
        rows = (one, p, zero, zero, one, zero)
    elif op == "ShearY":
        rows = (one, zero, zero, p, one, zero)
    elif op == "TranslateX":  # translate(image, [-pixels, 0]): output (x, y) reads input (x + pixels, y)
        rows = (one, zero, p, zero, one, zero)
    elif op == "TranslateY":
        rows = (one, zero, zero, zero, one, p)
    else:
        raise ValueError(op)
    return torch.stack(rows, dim=1)


def _randaug_op(x: torch.Tensor, op: str, args: tuple, signs: torch.Tensor,
                centers: torch.Tensor) -> torch.Tensor:
    """One reference op on a uint8 sub-batch (b, 3, H, W); signs (b,) and Cutout centres (b, 2) on the CPU."""
    h, w = x.shape[-2:]
    if op == "AutoContrast":  # per image and channel: x * 255 / (hi - lo) - lo * scale, in float32
        lo = x.amin(dim=(-2, -1), keepdim=True).float()
        hi = x.amax(dim=(-2, -1), keepdim=True).float()
        # tensor / tensor: torch computes `255.0 / t` as 255 * (1 / t), which rounds differently from TF
        scale = torch.full_like(hi, 255.0) / (hi - lo)  # inf where hi == lo: kept as they are (x * 1 + 0)
        offset = torch.where(hi > lo, -lo * scale, 0.0)
        scale = torch.where(hi > lo, scale, 1.0)
        return x.float().mul_(scale).add_(offset).clamp_(0, 255).to(torch.uint8)
    if op == "Equalize":  # torchvision's kernel is PIL's / the reference's (step = non-max pixels // 255)
        import torchvision.transforms.v2.functional as F

        return F.equalize(x)
    if op == "Invert":
        return 255 - x
    if op == "Posterize":
        # TF turns the shift 8 - bits into a uint8 tensor (a negative one wraps) and clamps shifts to 7, so
        # 0 bits (m < 2.5) keeps the top bit and 9+ bits (m >= 22.5) keep 1; in between it is the plain
        # shift (m = 10: 4 bits, m = 15: 6, m = 20: 8 bits, a no-op).
        shift = min((8 - args[0]) % 256, 7)
        return (x >> shift) << shift
    if op == "Solarize":
        # tf.where(image < threshold, image, 255 - image) converts the Python threshold to the image's
        # uint8 dtype, which wraps it mod 256: m = 10 (256) inverts every pixel, m = 15 (384) is threshold 128.
        # 255 - x is x ^ 255 in uint8: invert where x >= threshold with one xor
        return x ^ (x >= args[0] % 256).to(torch.uint8).mul_(255)
    if op == "SolarizeAdd":  # add (widened), clip, only where the pixel is below 128; no cap on the amount
        added = (x.to(torch.int16) + args[0]).clamp_(0, 255).to(torch.uint8)
        return _select(x < 128, added, x)
    if op == "Color":
        return _blend(_grey(x), x, args[0])
    if op == "Contrast":
        return _blend(float(RANDAUG_CONTRAST_GREY), x, args[0])
    if op == "Brightness":
        return _blend(0.0, x, args[0])
    if op == "Sharpness":  # PIL's SMOOTH kernel, valid conv, borders of the original, then blend
        # TF's depthwise conv sums the 9 taps in row-major order with a fused multiply-add each, rounding
        # to float32 once per tap. Emulated exactly here (product and sum are exact in float64) instead of
        # conv2d, so that every device gives the same bits (cuDNN may use TF32 or another order): each tap is
        # one add into a float64 buffer (exact) and one copy back to float32 (the tap's rounding), one
        # ~64k pixels at a time on the CPU (the buffers stay in cache: 2.7x faster at 224 px than all at once).
        planes = x.reshape(-1, 1, h, w)
        step = len(planes) if x.device.type != "cpu" else max(1, 2**16 // (h * w))
        smooth = torch.cat([_smooth_taps(planes[i:i + step]) for i in range(0, len(planes), step)])
        degenerate = x.clone()
        degenerate[..., 1:-1, 1:-1] = smooth.reshape(x.shape[0], x.shape[1], h - 2, w - 2).clamp_(0, 255).to(torch.uint8)
        return _blend(degenerate, x, args[0])
    if op == "Cutout":  # a (2 pad) px square of 128 centred on a uniform pixel, clipped at the borders
        pad = args[0]
        cy, cx = centers[:, 0:1].to(x.device), centers[:, 1:2].to(x.device)
        r = torch.arange(h, device=x.device)
        c = torch.arange(w, device=x.device)
        rows = (r >= (cy - pad).clamp(min=0)) & (r < (cy + pad).clamp(max=h))  # (b, H)
        cols = (c >= (cx - pad).clamp(min=0)) & (c < (cx + pad).clamp(max=w))  # (b, W)
        return x.masked_fill((rows[:, :, None] & cols[:, None, :])[:, None], FILL)
    return _transform_shared(x, op, args[0], signs)


def _transform_shared(x: torch.Tensor, op: str, arg: float, signs: torch.Tensor) -> torch.Tensor:
    """`_transform_nearest` for images that share their transform up to the sign: one source index
    map per sign (at most two, not one per image) and one gather; the fill is an extra pixel of 128
    appended to every image. The same pixels as `_transform_nearest`, 2-3x faster on the CPU."""
    b, c, h, w = x.shape
    flat = torch.cat([x.reshape(b, c, h * w), torch.full((b, c, 1), FILL, dtype=x.dtype, device=x.device)], 2)
    xs = torch.arange(w, device=x.device, dtype=torch.float32)[None, :]
    ys = torch.arange(h, device=x.device, dtype=torch.float32)[:, None]
    values = signs.unique().tolist()
    maps = []
    for sign in values:
        m = _geometry_mats(op, arg, torch.tensor([sign]), h, w)[0].to(x.device)
        ix = _round_half_away(m[0] * xs + m[1] * ys + m[2])  # (H, W), as _transform_nearest
        iy = _round_half_away(m[3] * xs + m[4] * ys + m[5])
        inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        maps.append(torch.where(inside, iy * w + ix, float(h * w)).long().reshape(h * w))
    which = torch.searchsorted(torch.tensor(values, dtype=signs.dtype), signs.contiguous()).to(x.device)
    src = torch.stack(maps)[which]  # (b, H*W)
    return flat.gather(2, src[:, None].expand(b, c, h * w)).reshape(b, c, h, w)


def randaug_draws(gen: torch.Generator, n: int, h: int, w: int) -> tuple[torch.Tensor, ...]:
    """One layer's draws for n images of h x w px, in this order from `gen` (CPU int64 tensors):
    op index into RANDAUG_OPS (n,), sign +-1 (n,), Cutout centre (row, column) (n, 2).

    Drawn for every image whatever its op, so the generator advances by the same amount every layer.
    """
    ops = torch.randint(0, len(RANDAUG_OPS), (n,), generator=gen)
    signs = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
    centers = torch.stack([torch.randint(0, h, (n,), generator=gen),
                           torch.randint(0, w, (n,), generator=gen)], dim=1)
    return ops, signs, centers


def rand_augment(x: torch.Tensor, gen: torch.Generator, magnitude: float,
                 layers: int = RANDAUG_LAYERS) -> torch.Tensor:
    """big_vision's RandAugment(layers, m) with an independent draw per example, batched.

    x: uint8 (B, 3, H, W) on any device. Each of `layers` layers gives every example one op drawn
    uniformly from RANDAUG_OPS and always applies it (the reference also draws a `prob` per op but never
    uses it), with the arguments of `randaug_args` at this image size, a random sign for the signed ops
    and a uniform centre for Cutout. All draws come from `gen` (on the CPU, a fixed count per layer);
    m <= 0 means no RandAugment (the reference would still apply m = 0 ops).

    Hand-written because no maintained implementation reproduces the reference: timm's
    rand_augment_transform works on one PIL image at a time from the global Python and numpy RNGs, has
    no Cutout, caps Solarize at 256 (there a no-op) and SolarizeAdd at 128, uses PIL's true-mean Contrast
    and bilinear or bicubic resampling where the reference samples nearest pixels; torchvision's
    RandAugment applies one op to the whole batch from the global torch RNG, has no Cutout or SolarizeAdd,
    adds Identity and maps magnitudes on its own 31-bin scale. Here examples are grouped by op, so a
    layer costs at most 16 batched calls whatever B. Checked bit for bit against the reference's op
    functions (TensorFlow 2.15, tensorflow-addons 0.23) at 32 and 224 px, m = 3, 10, 15, 20, both signs
    (Contrast at 224 px only: see RANDAUG_CONTRAST_GREY).
    """
    if magnitude <= 0:
        return x
    n, _, h, w = x.shape
    args = {op: randaug_args(op, magnitude, min(h, w)) for op in RANDAUG_OPS}
    for _ in range(layers):
        ops, signs, centers = randaug_draws(gen, n, h, w)
        # images grouped by op (a stable sort), each group a contiguous slice; one gather in and one
        # out per layer (scattering each group back by index was 8x slower on the CPU)
        order = torch.argsort(ops, stable=True)
        counts = torch.bincount(ops, minlength=len(RANDAUG_OPS)).tolist()
        grouped = x.index_select(0, order.to(x.device))
        parts, lo = [], 0
        for k, op in enumerate(RANDAUG_OPS):
            if counts[k]:
                sel = order[lo:lo + counts[k]]
                parts.append(_randaug_op(grouped[lo:lo + counts[k]], op, args[op], signs[sel], centers[sel]))
                lo += counts[k]
        x = torch.cat(parts).index_select(0, torch.argsort(order).to(x.device))
    return x


# ---------------------------------------------------------------- value range, mixup, targets

def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 255] -> [-1, 1], big_vision's value_range(-1, 1): (x - 127.5) / 127.5."""
    return x.float().div_(127.5).sub_(1.0)


def normalize(x: torch.Tensor, pre: Preprocess = UNIT) -> torch.Tensor:
    """[0, 255] -> the values `pre`'s model was trained on: (x / 255 - mean) / std per channel
    (timm's and torchvision's Normalize); `UNIT` is exactly `to_unit_range`."""
    if pre.mean == UNIT.mean and pre.std == UNIT.std:
        return to_unit_range(x)
    mean = torch.tensor(pre.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255.0 - mean) / std


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
    # x * lam + x.flip(0) * (1 - lam) with its roundings, two temporaries instead of four
    x = (x * lam).add_(x.flip(0).mul_(1.0 - lam))
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

    return shuffle
