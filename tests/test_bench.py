"""Throughput benchmark: timing protocol, FLOPs accounting, batch back-off, dtype checks, CLI."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import cli

from mixerbench import bench as B
from mixerbench import runtime as R
from mixerbench.errors import UserError

# in-process runs on one thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_summarize_is_pure_arithmetic():
    s = B.summarize([2.0, 1.0, 4.0], batch_size=10, steps=5)  # 25, 50, 12.5 img/s
    assert s["repeats"] == 3
    assert s["img_per_sec_mean"] == pytest.approx((25 + 50 + 12.5) / 3)
    assert s["img_per_sec_std"] == pytest.approx(torch.tensor([25, 50, 12.5]).std().item())
    assert s["step_ms_median"] == pytest.approx(2.0 / 5 * 1e3)
    assert B.summarize([1.0], batch_size=1, steps=1)["img_per_sec_std"] == 0.0
    with pytest.raises(ValueError):
        B.summarize([], batch_size=1, steps=1)


def test_time_steps_times_exactly_r_repeats_after_warmup(monkeypatch):
    """Warm-up steps are not timed; each repeat's time covers exactly its own steps."""
    import time as real_time

    clock = {"now": 0.0}
    monkeypatch.setattr(real_time, "perf_counter", lambda: clock["now"])
    calls = []

    def step():  # each step takes 1 s on the fake clock
        calls.append(1)
        clock["now"] += 1.0

    out = B.time_steps(step, device="cpu", warmup=3, repeats=4, steps_per_repeat=5)
    assert out == [5.0, 5.0, 5.0, 5.0]  # the 3 warm-up seconds are in none of them
    assert len(calls) == 3 + 4 * 5


@pytest.mark.slow
def test_bench_rows_repeats_flops_and_timm_side_by_side():
    from mixerbench.models import model_info

    rows = B.bench(["mixer-t4", "timm:resnet18"], mode="both", batch_size=4, img_size=32,
                   repeats=3, warmup=0, steps_per_repeat=1, device="cpu")
    assert [(r["model"], r["mode"]) for r in rows] == [
        ("mixer-t4", "infer"), ("mixer-t4", "train"), ("timm:resnet18", "infer"),
        ("timm:resnet18", "train")]
    assert len({r["bench_id"] for r in rows}) == 1 and rows[0]["bench_id"]  # one call, one id
    for r in rows:
        assert len(r["repeat_seconds"]) == 3 and r["repeats"] == 3
        info = model_info(r["model"], img_size=32)
        assert r["gmacs"] == info["gmacs"] and r["params"] == info["params"]
        assert r["macs"] == info["macs"]
        factor = 3 if r["mode"] == "train" else 1  # forward + backward ~ 3 forwards
        assert r["achieved_tflops"] == pytest.approx(
            2 * info["macs"] * factor * r["img_per_sec_mean"] / 1e12)
        # a CPU has no datasheet peak: MFU stays empty, the measured matmul rate is its own column
        assert r["mfu"] is None and r["peak_tflops"] is None and r["matmul_tflops"] > 0
        assert r["batch_size"] == 4 and r["dtype"] == "fp32" and r["compiled"] is False
        assert r["driver_version"] == "" and r["cuda_version"] == ""  # a CPU row
        assert r["device_name"].startswith("cpu") and r["torch_version"] == torch.__version__
        assert r["img_per_sec_mean"] == pytest.approx(B.summarize(
            r["repeat_seconds"], batch_size=4, steps=1)["img_per_sec_mean"])


def test_mixer_t4_macs_match_the_closed_form():
    """Paper section 2: stem S*3P^2*C, per block 2*C*S*D_S + 2*S*C*D_C, head C*K, exactly."""
    from mixerbench.models import model_info

    s, p, c, depth, k = 64, 4, 256, 8, 1000
    macs = s * 3 * p * p * c + depth * (2 * c * s * (c // 2) + 2 * s * c * 4 * c) + c * k
    info = model_info("mixer-t4")
    assert info["macs"] == macs
    assert info["gmacs"] == macs / 1e9 and info["gflops"] == 2 * macs / 1e9  # unrounded


def test_achieved_tflops_use_the_exact_mac_count():
    """A tiny Mixer has 0.0038272 GMACs: rounded to 0.004 it would overstate FLOP/s by 4.5 %."""
    from torch.utils.flop_counter import FlopCounterMode

    from mixerbench.models import create_model, model_info

    arch = dict(depth=2, width=64)
    info = model_info("mixer-t4", img_size=28, patch_size=4, **arch)
    model = create_model("mixer-t4", img_size=28, patch_size=4, **arch).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 28, 28))
    assert isinstance(info["macs"], int) and info["macs"] == counter.get_total_flops() // 2
    assert info["gmacs"] == info["macs"] / 1e9

    rows = B.bench([dict(name="mixer-t4", img_size=28, patch_size=4, overrides=arch)],
                   mode="both", batch_size=4, repeats=2, warmup=0, steps_per_repeat=1,
                   device="cpu")
    infer, train = rows
    assert infer["model"] == "mixer-t4[depth=2,width=64]" and infer["macs"] == info["macs"]
    assert infer["achieved_tflops"] == 2 * info["macs"] * infer["img_per_sec_mean"] / 1e12
    assert train["achieved_tflops"] == 2 * info["macs"] * 3 * train["img_per_sec_mean"] / 1e12


# ------------------------------------------------------------------------------------- MFU


@pytest.mark.parametrize("name,chip", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", None), ("NVIDIA H100", None),  # variant unknown: no guess
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA GH200 480GB", None),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100-PCIE-40GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA A10", "A10"), ("NVIDIA A10G", None),
    ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"), ("NVIDIA L40", None),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA GeForce RTX 4090 Laptop GPU", None),
    ("NVIDIA GeForce RTX 3090", "RTX 3090"), ("NVIDIA GeForce RTX 3090 Ti", None),
    ("Tesla V100-SXM2-32GB", "V100 SXM2"), ("Tesla V100-PCIE-16GB", "V100 PCIe"),
    ("Tesla V100S-PCIE-32GB", "V100S PCIe"), ("NVIDIA B200", None),
    ("cpu (x86_64, 2 cores)", None), ("", None), (None, None),
])
def test_device_names_map_to_datasheet_chips(name, chip):
    assert B.datasheet_chip(name) == chip


def test_datasheet_peaks_are_dense_and_per_precision():
    peak = B.datasheet_peak_tflops
    # H100 SXM / H200 datasheets: BF16 1,979 and TF32 989 TFLOP/s with sparsity -> half dense
    assert peak("NVIDIA H100 80GB HBM3", "bf16") == 989.5
    assert peak("NVIDIA H100 80GB HBM3", "tf32") == 494.5
    assert peak("NVIDIA H100 80GB HBM3", "fp32") == 67.0
    assert peak("NVIDIA H100 PCIe", "fp16") == 756.5
    assert peak("NVIDIA H200", "bf16") == 989.5
    assert peak("NVIDIA A100-SXM4-40GB", "bf16") == 312.0
    assert peak("NVIDIA A100-SXM4-40GB", "tf32") == 156.0
    assert peak("NVIDIA L4", "bf16") == 121.0
    assert peak("NVIDIA L40S", "bf16") == 362.05
    assert peak("NVIDIA GeForce RTX 4090", "bf16") == 165.2  # FP32 accumulate, not 330.3
    assert peak("Tesla V100-SXM2-16GB", "fp16") == 125.0
    assert peak("Tesla V100-SXM2-16GB", "tf32") == 15.7  # no TF32 on Volta: plain FP32
    assert peak("Tesla V100-SXM2-16GB", "bf16") is None  # no BF16 units on Volta
    assert peak("NVIDIA A10G", "bf16") is None and peak("NVIDIA B200", "bf16") is None
    assert peak("cpu (x86_64, 2 cores)", "fp32") is None
    for chip, rates in B.DATASHEET_PEAKS_TFLOPS.items():
        # dense numbers: the largest dense rate listed (H100 SXM BF16) is under 1,000 TFLOP/s;
        # TF32 never beats BF16 and FP32 never beats TF32 on the same chip
        assert all(0 < v < 1000 for v in rates.values()), chip
        assert rates["fp32"] <= rates.get("tf32", rates["fp32"]) <= rates.get("bf16", 1e9), chip


def test_fp32_on_cuda_is_costed_as_tf32():
    assert B.matmul_precision("fp32", "cuda") == "tf32"
    assert B.matmul_precision("fp32", "cuda:1", "highest") == "fp32"
    assert B.matmul_precision("fp32", "cpu") == "fp32"
    assert B.matmul_precision("bf16", "cuda") == "bf16"


def test_mfu_divides_by_the_datasheet_peak_of_the_named_device(monkeypatch):
    """MFU is achieved / datasheet peak of the device the row names, never the measured rate."""
    from mixerbench import results

    monkeypatch.setattr(results, "device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(B, "measure_matmul_tflops", lambda *a, **k: 0.5)
    tiny = dict(name="mixer-t4", img_size=28, patch_size=4, overrides=dict(depth=2, width=64))
    (r,) = B.bench([tiny], batch_size=2, repeats=1, warmup=0, steps_per_repeat=1, device="cpu")
    assert r["device_name"] == "NVIDIA H100 80GB HBM3"
    assert r["matmul_precision"] == "fp32"  # on a CPU device fp32 stays fp32 (no TF32)
    assert r["peak_tflops"] == 67.0 and r["matmul_tflops"] == 0.5
    assert r["mfu"] == r["achieved_tflops"] / 67.0


def test_auto_batch_backs_off_on_oom(monkeypatch):
    def fake_step(name, mode, batch, **kw):
        if batch > 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return lambda: None

    monkeypatch.setattr(B, "_make_step", fake_step)
    batch, _ = B._fit("mixer-t4", "infer", 16, device="cpu")
    assert batch == 4  # timm decay_batch_step: 16 -> 12 -> 8 -> 6 -> 4

    def never(name, mode, batch, **kw):
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(B, "_make_step", never)
    with pytest.raises(UserError, match="even at batch size 1"):
        B._fit("mixer-t4", "train", 8, device="cpu")

    def other(name, mode, batch, **kw):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(B, "_make_step", other)
    with pytest.raises(RuntimeError, match="shape"):  # not an OOM: no silent back-off
        B._fit("mixer-t4", "infer", 8, device="cpu")


def test_dtype_and_device_validation():
    assert R.resolve_dtype(None, "cpu") == "fp32"
    assert R.resolve_dtype("float32", "cpu") == "fp32"
    with pytest.raises(UserError, match="Unknown dtype 'bf61'"):
        R.resolve_dtype("bf61", "cpu")
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        with pytest.raises(UserError, match="emulated"):
            R.resolve_dtype("bf16", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA"):
            R.resolve_device("cuda")
    with pytest.raises(UserError):
        B.bench(["mixer-t4"], mode="sideways", device="cpu")


# ------------------------------------------------------------------------------------- CLI


def test_cli_bench_writes_a_throughput_row(tmp_path):
    out = cli("bench", "--models", "mixer-t4", "--device", "cpu", "--batch-size", "8",
                "--repeats", "2", "--steps", "1", "--warmup", "0", "--no-compile",
                "--results-dir", str(tmp_path))
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "not comparable to the paper's img/s/core" in text
    assert "MFU n/a: no datasheet peak" in text and "n/a" in text
    with open(tmp_path / "throughput.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    r = rows[0]
    assert (r["model"], r["mode"], r["batch_size"], r["repeats"]) == ("mixer-t4", "infer", "8", "2")
    assert float(r["img_per_sec_mean"]) > 0 and float(r["matmul_tflops"]) > 0
    assert r["mfu"] == "" and r["peak_tflops"] == ""  # no datasheet peak for a CPU
    assert r["channels_last"] == "false" and r["compiled"] == "false"
    # the torch threads that timed it: a one-thread row is not the whole CPU's figure
    import torch

    assert r["threads"] == str(torch.get_num_threads())
    assert f"{r['threads']} torch thread" in text


def test_cli_bench_json_has_ratio_to_first(tmp_path):
    import json

    out = cli("bench", "--models", "mixer-t4,mixer-t4", "--device", "cpu", "--batch-size", "2",
                "--repeats", "1", "--steps", "1", "--warmup", "0", "--format", "json",
               env={"MIXERBENCH_RESULTS": str(tmp_path)})
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert [r["ratio_to_first"] for r in rows][0] == 1.0 and len(rows) == 2


@pytest.mark.parametrize("args,needle", [
    (["--dtype", "fp8"], "Unknown dtype"),
    (["--batch-size", "lots"], "number or 'auto'"),
    (["--models", "mixr-t4"], "Unknown model"),
    # rows leave the GELU out of the label, though it changes the speed on a CPU
    (["--models", "mixer-t4[gelu=exact]"], "do not record the GELU"),
])
def test_cli_bench_bad_input_exits_2(args, needle, tmp_path):
    base = {"--models": "mixer-t4", "--device": "cpu", "--repeats": "1", "--batch-size": "2"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    out = cli("bench", *[x for kv in base.items() for x in kv],
              env={"MIXERBENCH_RESULTS": str(tmp_path)})
    assert out.exit_code == 2, out.output
    assert needle in out.output and "Traceback" not in out.output
    assert not (tmp_path / "throughput.csv").exists()


def test_a_compares_bench_is_measured_in_the_precision_its_runs_trained_in(tmp_path):
    """A bench of the model in another precision does not stand in for the runs' own: the
    compare's bench step measures the model again in theirs, and only once."""
    from mixerbench import results
    from mixerbench.experiments import bench_rows

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bf16 units, so bench refuses bf16 on it")
    tiny = dict(name="mixer-t4", img_size=28, patch_size=4, overrides=dict(depth=1, width=16))
    assert len(bench_rows([tiny], root=tmp_path, device="cpu", dtype="bf16", batch_size=2)) == 2
    assert len(bench_rows([tiny], root=tmp_path, device="cpu", dtype="fp32", batch_size=2)) == 2
    assert bench_rows([tiny], root=tmp_path, device="cpu", dtype="fp32", batch_size=2) == []
    thr = results.load("throughput", tmp_path)
    assert sorted(thr["dtype"]) == ["bf16", "bf16", "fp32", "fp32"]


def test_a_compares_bench_is_measured_on_its_own_threads(tmp_path):
    """A one-thread bench of the model (`OMP_NUM_THREADS=1 bench --vs-timm`) does not stand
    in for the compare's bench on all its threads: the compare measures it again, once, also
    beside a row an older version wrote without `threads`."""
    from mixerbench import results
    from mixerbench.experiments import bench_rows

    tiny = dict(name="mixer-t4", img_size=28, patch_size=4, overrides=dict(depth=1, width=16))
    assert torch.get_num_threads() == 1  # the module's (conftest.one_thread)
    one = bench_rows([tiny], root=tmp_path, device="cpu", batch_size=2)
    assert len(one) == 2
    older = {k: v for k, v in one[0].items() if k in results.SCHEMAS["throughput"]}
    results.append_row("throughput", dict(older, model="mixer-b16", threads=None), tmp_path)
    torch.set_num_threads(2)
    try:
        assert len(bench_rows([tiny], root=tmp_path, device="cpu", batch_size=2)) == 2
        assert bench_rows([tiny], root=tmp_path, device="cpu", batch_size=2) == []
    finally:
        torch.set_num_threads(1)
    thr = results.load("throughput", tmp_path)
    assert thr["threads"].isna().sum() == 1 and sorted(thr["threads"].dropna()) == [1, 1, 2, 2]
    assert not thr["compiled"].any()


def test_cli_bench_vs_timm_times_timms_mixer_of_the_smoke_shapes(tmp_path):
    """`--vs-timm` times, after the native Mixer, the module export writes for its shapes:
    timm's MlpMixer class for the smoke preset's Mixer (no timm entry point has them)."""
    out = cli("bench", "--models", "mixer-t4[depth=2,width=64]", "--img-size", "28", "--vs-timm",
              "--device", "cpu", "--batch-size", "4", "--repeats", "2", "--steps", "1",
              "--warmup", "0", "--no-compile", "--results-dir", str(tmp_path))
    assert out.exit_code == 0, out.output
    with open(tmp_path / "throughput.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model"] for r in rows] == ["mixer-t4[depth=2,width=64]",
                                          "timm:MlpMixer[depth=2,patch_size=4,width=64]"]
    assert {r["img_size"] for r in rows} == {"28"} and len({r["bench_id"] for r in rows}) == 1
    assert rows[0]["params"] == rows[1]["params"] and rows[0]["gmacs"] == rows[1]["gmacs"]


def test_bench_vs_timm_names_timms_entry_point_and_refuses_timm_models():
    from mixerbench.models import parse_models

    assert B.timm_twin("mixer-s16", img_size=224, num_classes=10)[1] == "timm:mixer_s16_224"
    assert parse_models("mixer-s16, mixer-t4[depth=2,patch_size=4,width=64],vit-b16") == [
        "mixer-s16", dict(name="mixer-t4", patch_size=4, overrides=dict(depth=2, width=64)),
        "vit-b16"]
    with pytest.raises(UserError, match="no timm counterpart"):
        B.bench("timm:mixer_s16_224", vs_timm=True, device="cpu")
    with pytest.raises(UserError, match="NAME\\[KEY=VALUE"):
        parse_models("mixer-t4[depth2]")
