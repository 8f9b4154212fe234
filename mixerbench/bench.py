"""Throughput, MFU and the machine fingerprint (MACs are counted in `models.flops`).

`bench(models, ...)` times inference and/or training steps of several models in one process on
one device: warm-up excluded, device synchronised around each timed repeat, R repeats ->
mean/std img/s and median step time (`summarize`), achieved TFLOP/s from the exact counted
MACs, MFU against the device's datasheet dense peak for the dtype (`datasheet_peak_tflops`;
empty where the peak is not known, e.g. on every CPU), the dense matmul rate measured in the
same run as a separate number (`measure_matmul_tflops`), and a fingerprint of the machine and
software on every row (`fingerprint`). The paper's img/s/core on TPU-v3 (Tables 2-3) is not
comparable across hardware; our unit is img/s per device.
"""

from __future__ import annotations

from mixerbench.events import Log, noop, progress
from mixerbench.runtime import autocast, choose, synchronize, torch_dtype

# ------------------------------------------------------------------------------ throughput
#
# Protocol (timm's benchmark.py conventions): a synthetic batch
# resident on the device, warm-up steps excluded (they also absorb torch.compile and cuDNN
# autotuning), the device synchronised before and after each timed repeat, R repeats of
# `steps_per_repeat` steps each, reported as mean and std of img/s and the median step time.
# Paper Tables 2-3 report img/s per TPU-v3 core at the best batch size; our rows are img/s per
# device (one process, one device), which names its hardware and is comparable only on it.

def driver_version() -> str:
    """NVIDIA driver version from nvidia-smi, or "" where there is none."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if not exe:
        return ""
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


def fingerprint(device: str, dtype: str, *, compiled: bool, channels_last: bool,
                batch_size: int | None = None) -> dict:
    """The machine and software on a throughput row: provenance + driver, CUDA, layout, batch."""
    import torch

    from mixerbench.results import provenance

    row = provenance(device=device, num_devices=1, dtype=dtype, compiled=compiled)
    cuda = device.startswith("cuda")  # a CPU row names no driver nor CUDA (torch may be a CUDA build)
    row.update(driver_version=driver_version() if cuda else "",
               cuda_version=(torch.version.cuda or "") if cuda else "", channels_last=channels_last,
               threads=torch.get_num_threads())
    if batch_size is not None:
        row["batch_size"] = batch_size
    return row


# ------------------------------------------------------------------------- datasheet peaks
#
# MFU (model FLOPs utilisation, PaLM, Chowdhery et al. 2022, appendix B) divides the achieved
# model FLOP/s by the hardware's theoretical peak, as Lightning's ThroughputMonitor does with its
# `_CUDA_FLOPS` table. The peaks below are NVIDIA's published numbers in TFLOP/s, DENSE: the
# datasheets print tensor-core rates "with sparsity" (2:4 structured, marked *), and those are
# halved here. Keys are the dtype the matmuls run in:
#   bf16, fp16: tensor cores with FP32 accumulation (what cuBLAS uses under torch autocast);
#   tf32: fp32 matmuls when torch's float32 matmul precision is "high", as `bench` and the
#         training loop set on CUDA (Ampere and newer round the inputs to TF32);
#   fp32: the non-tensor FP32 rate (precision "highest", or GPUs without TF32 such as Volta).
# A dtype a GPU has no matmul units for (bf16 on Volta) is absent, so its MFU stays empty.
#
# GeForce cards run FP16/BF16 tensor math with FP32 accumulation at half the rate of FP16
# accumulation; the FP32-accumulate rows of the architecture whitepapers are used for them.
DATASHEET_PEAKS_TFLOPS: dict[str, dict[str, float]] = {
    # NVIDIA H100 Tensor Core GPU datasheet, "H100 SXM" column: FP32 67, TF32 989*, BF16 1,979*,
    # FP16 1,979*.
    "H100 SXM": dict(fp32=67.0, tf32=989 / 2, bf16=1979 / 2, fp16=1979 / 2),
    # Same datasheet, "H100 PCIe" column: FP32 51, TF32 756*, BF16 1,513*, FP16 1,513*.
    "H100 PCIe": dict(fp32=51.0, tf32=756 / 2, bf16=1513 / 2, fp16=1513 / 2),
    # NVIDIA H200 Tensor Core GPU datasheet, "H200 SXM" column: FP32 67, TF32 989*,
    # BF16 1,979*, FP16 1,979*.
    "H200 SXM": dict(fp32=67.0, tf32=989 / 2, bf16=1979 / 2, fp16=1979 / 2),
    # Same datasheet, "H200 NVL" column: FP32 60, TF32 835*, BF16 1,671*, FP16 1,671*.
    "H200 NVL": dict(fp32=60.0, tf32=835 / 2, bf16=1671 / 2, fp16=1671 / 2),
    # NVIDIA A100 Tensor Core GPU datasheet (40 GB and 80 GB, SXM4 and PCIe print the same
    # rates): FP32 19.5, TF32 156 | 312*, BF16 312 | 624*, FP16 312 | 624*.
    "A100": dict(fp32=19.5, tf32=156.0, bf16=312.0, fp16=312.0),
    # NVIDIA A10 Tensor Core GPU datasheet: FP32 31.2, TF32 62.5 | 125*, BF16 125 | 250*,
    # FP16 125 | 250*.
    "A10": dict(fp32=31.2, tf32=62.5, bf16=125.0, fp16=125.0),
    # A10G (AWS G5): NVIDIA publishes no datasheet for this AWS variant of the A10, and its
    # tensor rates are not the A10's, so it has no entry: MFU is left empty rather than divided
    # by the A10's numbers (see `_CHIPS`).
    # NVIDIA L4 Tensor Core GPU datasheet: FP32 30.3, TF32 120*, BF16 242*, FP16 242*.
    "L4": dict(fp32=30.3, tf32=120 / 2, bf16=242 / 2, fp16=242 / 2),
    # NVIDIA L40S GPU datasheet: FP32 91.6, TF32 183 | 366*, BF16 362.05 | 733*,
    # FP16 362.05 | 733*.
    "L40S": dict(fp32=91.6, tf32=183.0, bf16=362.05, fp16=362.05),
    # NVIDIA Ada GPU architecture whitepaper, appendix A, GeForce RTX 4090: peak FP32 82.6,
    # TF32 tensor 82.6 | 165.2*, BF16 and FP16 tensor with FP32 accumulate 165.2 | 330.4*.
    "RTX 4090": dict(fp32=82.6, tf32=82.6, bf16=165.2, fp16=165.2),
    # NVIDIA Ampere GA102 GPU architecture whitepaper, appendix A, GeForce RTX 3090: peak FP32
    # 35.6, TF32 tensor 35.6 | 71*, BF16 and FP16 tensor with FP32 accumulate 71 | 142*.
    "RTX 3090": dict(fp32=35.6, tf32=35.6, bf16=71.0, fp16=71.0),
    # NVIDIA V100 Tensor Core GPU datasheet: SXM2 FP32 15.7 and tensor (FP16) 125; PCIe 14 and
    # 112; V100S PCIe 16.4 and 130. Volta has no TF32 and no BF16 units (no sparsity either).
    "V100 SXM2": dict(fp32=15.7, fp16=125.0),
    "V100 PCIe": dict(fp32=14.0, fp16=112.0),
    "V100S PCIe": dict(fp32=16.4, fp16=130.0),
}

# `torch.cuda.get_device_name` spellings -> table key, first match wins; searched in the
# lower-cased name. None marks a GPU recognised but without a published dense peak here, so it is
# not mistaken for a neighbour (an H100 NVL for an H100 SXM, an A10G for an A10). Examples:
# "NVIDIA H100 80GB HBM3" (SXM5), "NVIDIA H100 PCIe", "NVIDIA H200", "NVIDIA H200 NVL",
# "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe", "NVIDIA A10G", "NVIDIA L4", "NVIDIA L40S",
# "NVIDIA GeForce RTX 4090", "Tesla V100-SXM2-32GB", "Tesla V100S-PCIE-32GB".
_CHIPS: tuple[tuple[str, str | None], ...] = (
    (r"\bh100\b.*\bnvl\b", None),              # per-GPU NVL rates differ between datasheet issues
    (r"\bh100\b.*\b(pcie|hbm2e)\b", "H100 PCIe"),
    (r"\bh100\b.*\b(sxm\w*|hbm3)\b", "H100 SXM"),
    (r"\bh200\b.*\bnvl\b", "H200 NVL"),
    (r"\bh200\b", "H200 SXM"),                 # the SXM board reports plain "NVIDIA H200"
    (r"\ba100\b", "A100"),
    (r"\ba10g\b", None),
    (r"\ba10\b", "A10"),
    (r"\bl40s\b", "L40S"),
    (r"\bl4\b", "L4"),
    (r"geforce rtx 4090$", "RTX 4090"),        # not the 4090 D nor the laptop part
    (r"geforce rtx 3090$", "RTX 3090"),        # not the 3090 Ti
    (r"\bv100s\b.*\bpcie\b", "V100S PCIe"),
    (r"\bv100\b.*\bsxm2\b", "V100 SXM2"),
    (r"\bv100\b.*\bpcie\b", "V100 PCIe"),
)


def datasheet_chip(device_name: str | None) -> str | None:
    """The `DATASHEET_PEAKS_TFLOPS` key for a CUDA device name, or None (CPUs, unknown GPUs)."""
    import re

    name = " ".join(str(device_name or "").lower().split())
    if not name or name.startswith("cpu"):
        return None
    for pattern, chip in _CHIPS:
        if re.search(pattern, name):
            return chip
    return None


def matmul_precision(dtype: str, device: str, float32_precision: str = "high") -> str:
    """The precision the matmuls of a `dtype` run execute in: `tf32` for fp32 on CUDA when
    torch's float32 matmul precision is "high" or "medium" (bench sets "high"), else `dtype`."""
    if dtype == "fp32" and device.startswith("cuda") and float32_precision != "highest":
        return "tf32"
    return dtype


def datasheet_peak_tflops(device_name: str | None, precision: str) -> float | None:
    """Theoretical dense peak TFLOP/s of `device_name` for matmuls in `precision`, or None.

    Args:
        device_name: as `torch.cuda.get_device_name` (or a results row's `device_name`) spells
            it; a CPU name ("cpu (...)") or an unknown GPU gives None: no peak is invented.
        precision: bf16, fp16, tf32 or fp32 (see `matmul_precision`). tf32 on a GPU without
            TF32 units (Volta) is its FP32 rate, since the matmuls then run in plain FP32.
    """
    chip = datasheet_chip(device_name)
    if chip is None:
        return None
    peaks = DATASHEET_PEAKS_TFLOPS[chip]
    if precision == "tf32" and "tf32" not in peaks:
        precision = "fp32"
    return peaks.get(precision)


def measure_matmul_tflops(device: str, dtype: str = "fp32", *, n: int | None = None,
                          iters: int | None = None, repeats: int = 3) -> float:
    """Dense matmul TFLOP/s measured on this device in this dtype (row column `matmul_tflops`).

    A square (n x n) @ (n x n) product in a loop (2 n^3 FLOPs each), best of `repeats` timed
    runs after a warm-up, under the caller's float32 matmul precision. It says what this card,
    driver and torch build reach on a large GEMM, beside the datasheet peak; it is NOT the MFU
    denominator (MFU is against the datasheet, `datasheet_peak_tflops`).
    """
    import time

    import torch

    cuda = device.startswith("cuda")
    n = n or (8192 if cuda else 1024)
    iters = iters or (50 if cuda else 8)
    a = torch.randn(n, n, device=device, dtype=torch_dtype(dtype))
    b = torch.randn(n, n, device=device, dtype=torch_dtype(dtype))
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * iters / best / 1e12


def summarize(repeat_seconds, *, batch_size: int, steps: int) -> dict:
    """Reduce raw timings to the row's numbers (pure; timm benchmark.py style).

    Args:
        repeat_seconds: wall seconds of each timed repeat (each repeat = `steps` steps).
        batch_size: images per step.  steps: steps per repeat.

    Returns:
        dict(img_per_sec_mean, img_per_sec_std (sample std, 0 for one repeat),
        step_ms_median (median over repeats of the repeat's mean step time), repeats).
    """
    import statistics

    secs = [float(s) for s in repeat_seconds]
    if not secs or any(s <= 0 for s in secs):
        raise ValueError("summarize needs at least one positive repeat time")
    rates = [batch_size * steps / s for s in secs]
    return dict(
        img_per_sec_mean=statistics.fmean(rates),
        img_per_sec_std=statistics.stdev(rates) if len(rates) > 1 else 0.0,
        step_ms_median=1e3 * statistics.median(secs) / steps,
        repeats=len(secs),
    )


def time_steps(step, *, device: str, warmup: int, repeats: int, steps_per_repeat: int) -> list[float]:
    """Run `warmup` untimed steps, then `repeats` timed blocks of `steps_per_repeat` steps.

    Returns exactly `repeats` wall-clock durations in seconds, each bracketed by a device sync.
    """
    import time

    for _ in range(warmup):
        step()
    out = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps_per_repeat):
            step()
        synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def timm_twin(name: str, *, img_size: int, num_classes: int, patch_size: int | None = None,
              overrides: dict | None = None):
    """(module, row label) of timm's own model with the shapes of the native model `name`: the
    module `export` writes (the family's `to_timm`: timm's entry point of these shapes, else
    its class built from the same arguments, e.g. `MlpMixer(**model_args)`), so the native
    model and timm's can be timed side by side at any size, the smoke preset's included. The
    label is `timm:<entry point>`, or `timm:<class>[...]` with the native label's shapes."""
    from mixerbench.models import create_model, family_for, get_spec, model_label

    check_twin(name)
    to_timm = family_for(name).to_timm
    model = create_model(name, num_classes=num_classes, img_size=img_size,
                         patch_size=patch_size, **(overrides or {}))
    label = model_label(name, overrides, patch_size)
    out = to_timm(get_spec(name), model, label)
    if out["architecture"]:
        return out["module"], "timm:" + out["architecture"]
    shapes = {k: v for k, v in (overrides or {}).items() if k in ("width", "depth")}
    cls = out["constructor"].rsplit(".", 1)[-1]
    return out["module"], model_label("timm:" + cls, shapes, getattr(model, "patch_size", None))


def check_twin(name: str) -> None:
    """Refuse a model `timm_twin` cannot pair: a timm model, or a family with no timm export."""
    from mixerbench.errors import UserError
    from mixerbench.models import family_for

    if name.startswith("timm:") or family_for(name).to_timm is None:
        raise UserError(f"{name} has no timm counterpart to bench beside it; --vs-timm takes "
                        "native models, e.g. mixer-s16.")


def _make_step(name: str, mode: str, batch: int, *, img_size: int, num_classes: int,
               device: str, dtype: str, compile: bool, channels_last: bool,
               patch_size: int | None = None, overrides: dict | None = None, twin: bool = False):
    """A closure running one infer or train step on a device-resident synthetic batch (of
    timm's model of `name`'s shapes when `twin`, `timm_twin`)."""
    import torch

    from mixerbench.loss import cross_entropy
    from mixerbench.models import create_model

    if twin:
        model = timm_twin(name, img_size=img_size, num_classes=num_classes,
                          patch_size=patch_size, overrides=overrides)[0].to(device)
    else:
        model = create_model(name, num_classes=num_classes, img_size=img_size,
                             patch_size=patch_size, **(overrides or {})).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, img_size, img_size, device=device).to(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,), device=device)
    net = torch.compile(model, dynamic=False) if compile else model  # static shapes: fastest kernels

    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), autocast(device, dtype):
                net(x)
        return step

    # Train = forward, backward and optimizer step as in training (AdamW, fused
    # kernels on CUDA; a GradScaler for fp16 as the training loop would need).
    model.train()
    cuda = device.startswith("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    scaler = torch.amp.GradScaler("cuda") if (cuda and dtype == "fp16") else None

    def step():
        with autocast(device, dtype):
            loss = cross_entropy(net(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _fit(name: str, mode: str, batch: int, *, device: str, **kw):
    """Build the step at `batch`, backing off (timm's decay_batch_step) on out-of-memory.

    Two trial steps must pass; they count toward warm-up. Returns (batch used, step).
    """
    from timm.utils import check_batch_size_retry, decay_batch_step

    from mixerbench.errors import UserError

    while batch >= 1:
        try:
            step = _make_step(name, mode, batch, device=device, **kw)
            step()
            step()
            synchronize(device)
            return batch, step
        except Exception as exc:  # OOM surfaces as OutOfMemoryError or wrapped by compile
            if not _is_oom(exc) or not check_batch_size_retry(str(exc)):
                raise
        # Freed outside the except block, once the traceback holding the failed step is gone.
        step = None
        _free(device)
        batch = decay_batch_step(batch)
    raise UserError(f"{name} does not fit on {device} in {mode} mode even at batch size 1; "
                    "try a smaller --img-size or another device.")


def check_fits(name: str, mode: str, *, device: str, dtype: str, img_size: int, num_classes: int,
               patch_size: int | None = None, overrides: dict | None = None) -> None:
    """Refuse, before anything is allocated, a model that cannot run one image on `device`:
    traced on the meta device (`models.memory`), inference needs its weights plus the largest
    single activation, training its weights, gradients and Adam moments (4 x) plus every
    activation of the image. A 4096 px input is refused here, not by the allocator."""
    from mixerbench.errors import UserError
    from mixerbench.models import build_on_meta, count_params
    from mixerbench.runtime import memory_bytes

    weights = 4 * (4 if mode == "train" else 1)  # bytes per parameter: fp32 weights (+ grad, Adam)
    have = memory_bytes(device)

    def refuse(need: int) -> None:
        if have and need > have:
            raise UserError(f"{name} at {img_size} px needs at least {need / 2**30:,.1f} GiB for one "
                            f"image in {mode} mode, more than the {have / 2**30:,.1f} GiB of "
                            f"{device}; choose a smaller --img-size or model.")

    model, (total, largest) = build_on_meta(
        name, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
        before_trace=lambda model: refuse(weights * count_params(model)[0]),
        element_size=4 if dtype == "fp32" else 2, **(overrides or {}))
    refuse(weights * count_params(model)[0] + (total if mode == "train" else largest))


def compiles_by_default(device: str) -> bool:
    """Whether `bench` times a torch.compile'd model on `device` when not told: on CUDA only."""
    return device.startswith("cuda")


def bench(models, *, mode: str = "infer", batch_size: int | str = 256, img_size: int | None = None,
          dtype: str | None = None, compile: bool | None = None, repeats: int = 5,
          warmup: int = 10, steps_per_repeat: int = 20, device: str | None = None,
          channels_last: bool | None = None, num_classes: int = 1000, max_batch: int | None = None,
          vs_timm: bool = False, root=None, log: Log = noop) -> list[dict]:
    """Throughput of each model, in the same process on the same device.

    Args:
        models: registry names, paper spellings, `timm:<name>`, model labels such as
            `mixer-t4[depth=2,width=64]` (a comma-separated string, `models.parse_models`) or
            model descriptions; all run in this call so their ratios are measured side by side.
        mode: "infer", "train" (forward + backward + AdamW step) or "both".
        batch_size: images per step, or "auto" for the largest that fits (start at `max_batch`,
            1024 on CUDA and 64 on CPU, and back off on out-of-memory). A fixed size that does
            not fit backs off too; the row records the batch actually used.
        img_size: input side in pixels (default: each model's own, 224 for the paper's models).
        dtype: bf16 / fp16 / fp32 (default bf16 on CUDA, fp32 on CPU).
        compile: torch.compile the model (default on CUDA only).
        repeats / warmup / steps_per_repeat: R timed repeats of `steps_per_repeat` steps after
            `warmup` untimed steps; on a CPU the repeats of all models and modes alternate
            (round r times repeat r of each), so their ratios share the machine's load.
        channels_last: NHWC layout (default: for CNNs on CUDA, where cuDNN prefers it).
        num_classes: head size (1000, as the zoo's params and GMACs).
        vs_timm: after each model, timm's model of the same shapes (`timm_twin`: what `export`
            builds), timed in the same rounds.
        root: if given, rows are appended to `<root>/throughput.csv`.
        log: progress, as `events.Event.PROGRESS` events (one per model and mode).

    Returns:
        One dict per (model, mode) with the throughput.csv columns plus `ratio_to_first` (img/s
        over the first model's in that mode), `repeat_seconds` (the R
        raw timings), `steps_per_repeat`, `warmup`, `macs` (exact forward MACs per image),
        `gflops`, `matmul_precision` (bf16 / fp16 / tf32 / fp32: what `peak_tflops` is the
        datasheet peak of) and `paper_name`. `mfu` and `peak_tflops` are None where the device
        has no known datasheet peak (every CPU, unlisted GPUs); `matmul_tflops` is always the
        dense matmul rate measured in this call. Rows of one call share `bench_id`, so a table
        can pair models measured side by side.
    """
    import datetime as _dt
    import uuid

    import torch

    from mixerbench.models import family_for, get_spec, label_of, model_info
    from mixerbench.results import device_name

    modes, described, device, dtype, start_batch, auto = _check_bench(
        models, mode, batch_size, repeats, steps_per_repeat, warmup, device, dtype, max_batch,
        img_size, vs_timm)
    for rec in described:  # every model is checked before the first is timed
        for m in modes:
            check_fits(rec["name"], m, device=device, dtype=dtype,
                       img_size=img_size or rec.get("img_size") or get_spec(rec["name"]).img_size,
                       num_classes=rec.get("num_classes") or num_classes,
                       patch_size=rec.get("patch_size"), overrides=rec.get("overrides") or {})
    cuda = device.startswith("cuda")
    compile = compiles_by_default(device) if compile is None else bool(compile)
    # TF32 for fp32 matmuls on CUDA, as the training loop runs; the datasheet peak is then the
    # TF32 one (`matmul_precision`), and the measured matmul rate runs under the same setting.
    old_precision = torch.get_float32_matmul_precision()
    if cuda:
        torch.set_float32_matmul_precision("high")
    total = len(described) * len(modes) + 1
    # One id for every row of this call (UTC start time + random suffix): same run, same id.
    bench_id = (_dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-"
                + uuid.uuid4().hex[:6])
    try:
        precision = matmul_precision(dtype, device, torch.get_float32_matmul_precision())
        # Looked up from the name the rows record, so the peak always matches `device_name`.
        peak = datasheet_peak_tflops(device_name(device), precision)
        progress(log, f"{precision} matmul rate", 0, total)
        common = dict(matmul_tflops=measure_matmul_tflops(device, dtype), bench_id=bench_id,
                      peak_tflops=peak, matmul_precision=precision)
        # On a CPU every (model, mode) is built and warmed up first, then timed in interleaved
        # rounds (one repeat of each per round): a shared CPU's load drifts over minutes, and
        # ratios must compare the same minutes. On a GPU each holds the device alone, in turn.
        entries, interleave = [], not cuda
        for rec in described:
            spec = get_spec(rec["name"])
            size = img_size or rec.get("img_size") or spec.img_size
            arch = dict(patch_size=rec.get("patch_size"), overrides=rec.get("overrides") or {})
            classes = rec.get("num_classes") or num_classes
            with torch.device("meta"):  # a twin's label from a meta build: no weights made
                label = timm_twin(rec["name"], img_size=size, num_classes=classes, **arch)[1] \
                    if rec.get("twin") else label_of(rec)
            info = model_info(rec["name"], num_classes=classes, img_size=size,
                              patch_size=arch["patch_size"], **arch["overrides"])
            cl = (family_for(rec["name"]).channels_last and cuda) if channels_last is None \
                else bool(channels_last)
            for m in modes:
                progress(log, f"{label} {m}", len(entries) + 1, total)
                batch, step = _fit(rec["name"], m, start_batch, device=device, img_size=size,
                                   num_classes=classes, dtype=dtype, compile=compile,
                                   channels_last=cl, twin=bool(rec.get("twin")), **arch)
                secs = time_steps(step, device=device, warmup=max(warmup - 2, 0),
                                  repeats=0 if interleave else repeats, steps_per_repeat=steps_per_repeat)
                entry = dict(step=step if interleave else None, secs=secs, m=m, batch=batch, info=info,
                             row=dict(model=label, family=spec.family, img_size=size, params=info["params"],
                                      gmacs=info["gmacs"], gflops=info["gflops"], macs=info["macs"],
                                      steps_per_repeat=steps_per_repeat, warmup=max(warmup, 2),
                                      paper_name=spec.paper_name,
                                      batch_requested=None if auto else start_batch,
                                      **fingerprint(device, dtype, compiled=compile, channels_last=cl,
                                                    batch_size=batch)))
                del step
                if not interleave:
                    _free(device)
                entries.append(entry)
        rows = _timed_rows(entries, repeats if interleave else 0, device, steps_per_repeat, common, root)
        progress(log, "done", total, total)
        first = {}  # each row's speed relative to the first model's in the same mode
        for r in rows:
            first.setdefault(r["mode"], r["img_per_sec_mean"])
            r["ratio_to_first"] = r["img_per_sec_mean"] / first[r["mode"]]
        return rows
    finally:
        torch.set_float32_matmul_precision(old_precision)


def _timed_rows(entries: list[dict], rounds: int, device: str, steps_per_repeat: int, common: dict,
                root) -> list[dict]:
    """`rounds` interleaved rounds of one timed repeat of every built step, then one row per
    entry (appended to throughput.csv under `root` when given)."""
    from mixerbench.results import SCHEMAS, append_row

    for _ in range(rounds):
        for e in entries:
            e["secs"] += time_steps(e["step"], device=device, warmup=0, repeats=1,
                                    steps_per_repeat=steps_per_repeat)
    rows = []
    for e in entries:
        e["step"] = None
        row = dict(_row(e["m"], e["secs"], e["batch"], steps_per_repeat, e["info"], common),
                   repeat_seconds=e["secs"], **e["row"])
        rows.append(row)
        if root is not None:
            append_row("throughput", {k: row.get(k) for k in SCHEMAS["throughput"]}, root)
    _free(device)
    return rows


def _row(mode: str, secs: list[float], batch: int, steps: int, info: dict, common: dict) -> dict:
    """Speed, achieved TFLOP/s and MFU of one timed model and mode."""
    stats = summarize(secs, batch_size=batch, steps=steps)
    # Achieved FLOP/s from the exact counted forward MACs (1 MAC = 2 FLOPs; an integer, never
    # the rounded GMACs); a training step costs about 3x a forward pass (forward + backward for
    # activations and weights), the usual MFU convention.
    flops_per_img = 2 * info["macs"] * (3 if mode == "train" else 1)
    achieved = flops_per_img * stats["img_per_sec_mean"] / 1e12
    peak = common["peak_tflops"]
    return dict(common, mode=mode, achieved_tflops=achieved,
                mfu=achieved / peak if peak else None, **stats)


MAX_BENCH_STEPS = 100_000  # bound on --repeats, --steps and --warmup each


def _check_bench(models, mode, batch_size, repeats, steps_per_repeat, warmup, device, dtype,
                 max_batch, img_size=None, vs_timm=False):
    """(modes, model descriptions, device, dtype, first batch size, auto?), all checked up front."""
    from mixerbench.errors import UserError
    from mixerbench.models import parse_models, resolve_name

    if img_size is not None and not (isinstance(img_size, int) and 1 <= img_size <= 4096):
        # 0 is not "the default": a row measured at another size than asked would be a lie
        raise UserError(f"--img-size {img_size} must be between 1 and 4096 pixels (or left out "
                        "for each model's own size).")

    modes = {"infer": ["infer"], "train": ["train"], "both": ["infer", "train"]}.get(mode)
    if modes is None:
        raise UserError(f"Unknown mode '{mode}'; use infer, train or both.")
    if isinstance(models, str):
        models = parse_models(models)
        for m in models:
            # a row's label leaves the GELU out (`models.model_label`), yet on a CPU it changes
            # the speed (the tanh kernel is slower than the exact one), so a typed label may not
            # set it: its rows would pass for the registry model's
            if isinstance(m, dict) and "gelu" in (m.get("overrides") or {}):
                raise UserError(f"bench rows do not record the GELU, so {m['name']}'s "
                                f"model.gelu cannot be set in --models; bench {m['name']} as "
                                "its registry builds it.")
    if not models:
        raise UserError("No models to benchmark; pass --models mixer-b16,vit-b16 for example.")
    if repeats < 1 or steps_per_repeat < 1 or warmup < 0:
        raise UserError("--repeats and steps per repeat must be at least 1, warm-up at least 0.")
    # a benchmark is seconds to minutes: a million timed steps or repeats is a typo that would
    # run for days (bounded before the first model is built)
    for name, value in (("--repeats", repeats), ("--steps", steps_per_repeat),
                        ("--warmup", warmup)):
        if value > MAX_BENCH_STEPS:
            raise UserError(f"{name} {value} is more than the {MAX_BENCH_STEPS:,} a benchmark "
                            "takes; pass a smaller number.")
    device, dtype = choose(device, dtype, cpu_half=True)
    text = str(batch_size).strip().lower()
    auto = text == "auto"
    if not auto and not text.isdigit():
        raise UserError(f"--batch-size takes a number or 'auto', not '{batch_size}'.")
    if not auto and not 1 <= int(text) <= 2**20:
        raise UserError(f"--batch-size {batch_size} must be between 1 and {2**20:,} (or 'auto').")
    start = (max_batch or (1024 if device.startswith("cuda") else 64)) if auto else int(text)
    # A model is a name, or a model description (name, img_size, patch_size, overrides) such as a
    # run's checkpoint carries, so `compare` benches exactly the architecture it trained.
    described = [dict(m, name=resolve_name(m["name"])) if isinstance(m, dict)
               else dict(name=resolve_name(m)) for m in models]
    if vs_timm:  # each native model, then timm's of its shapes (`timm_twin`)
        for rec in described:
            check_twin(rec["name"])
        described = [d for rec in described for d in (rec, dict(rec, twin=True))]
    return modes, described, device, dtype, start, auto
