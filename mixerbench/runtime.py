"""The device runtime shared by training, evaluation and benchmarks: which device and compute
dtype a command uses (`choose`, the only place that decides), mixed-precision autocast, device
synchronisation, the process group under torchrun, and Ctrl-C / SIGTERM as a flag between steps.

On CUDA the default is bf16 autocast; on CPU fp32 (bf16/fp16 only where the CPU has native
matrix units, so a number never measures emulation).
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

DTYPES = ("bf16", "fp16", "fp32")


def choose(device: str | None, dtype: str | None, local_rank: int | None = None, *,
           cpu_half: bool = False, training: bool = False) -> tuple[str, str]:
    """(device, dtype) of a command: the one decision `train`, `evaluate` and `bench` share.

    `device` None picks CUDA when present, else the CPU; `dtype` None (or the config's "auto")
    picks bf16 on CUDA and fp32 on a CPU (`resolve_dtype`). Training and evaluation run in fp32
    on a CPU, so a run's numbers do not depend on which CPU it met; only `bench` (`cpu_half`)
    times bf16/fp16 there, where the CPU has native units for them. With `local_rank` (a training
    process) a plain `cuda` means this rank's GPU, so `--device cuda` under torchrun does not
    put every rank on GPU 0. Ranks are mapped onto the GPUs this process can see: all of the
    node's (as torchrun leaves them: cuda:LOCAL_RANK) or only its own (a SLURM task bound to one
    GPU, or CUDA_VISIBLE_DEVICES set per rank: cuda:0).

    `training`: the training loop has no loss scaling, which fp16 gradients need (they underflow
    without it), so a GPU without bf16 trains in fp32 by default and an explicit fp16 is refused.
    """
    from mixerbench.errors import UserError

    device = resolve_device(device)
    if local_rank is not None and device == "cuda":
        import torch

        device = f"cuda:{local_rank % torch.cuda.device_count()}"
    asked = None if dtype == "auto" else dtype
    chosen = resolve_dtype(asked, device, cpu_half=cpu_half)
    if training and chosen == "fp16":
        if asked is None:
            return device, "fp32"
        raise UserError("Training in fp16 needs loss scaling, which mixerbench's training loop "
                        "does not do; use --set dtype=bf16 on a GPU that has it, or fp32.")
    return device, chosen


def use_device(device: str) -> None:
    """Make `device` this process's current device; on CUDA let fp32 matmuls and convolutions
    run as TF32 (the training loop's setting; `bench` sets and restores its own)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_device(device: str | None = None) -> str:
    """`cuda` when present, else `cpu`; anything but cpu, cuda or cuda:N of a GPU this machine
    has is a UserError (torch would fail later with a traceback, or `cpux` would pass as cpu)."""
    import re

    import torch

    from mixerbench.errors import UserError

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device).strip().lower()
    m = re.fullmatch(r"cpu|cuda(?::(\d{1,4}))?", device)
    if not m:
        raise UserError(f"Unknown device '{device}'; use cuda, cuda:N or cpu.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was requested but this machine has no CUDA GPU; "
                        "use --device cpu.")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise UserError(f"--device {device} names GPU {int(m.group(1))}, but this machine has "
                        f"{torch.cuda.device_count()} (cuda:0 to cuda:{torch.cuda.device_count() - 1}).")
    return device


def resolve_dtype(dtype: str | None, device: str, cpu_half: bool = True) -> str:
    """Validate the compute dtype for `device`; default bf16 on CUDA, fp32 on CPU.

    bf16/fp16 on a CPU are accepted only with `cpu_half` and where oneDNN has native kernels
    for them (AVX512-BF16 or AMX); elsewhere autocast would emulate them and the "throughput"
    would measure emulation.
    """
    import torch

    from mixerbench.errors import UserError, close_matches

    cuda = device.startswith("cuda")
    if dtype is None:
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    name = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32",
            "float": "fp32"}.get(dtype.strip().lower(), dtype.strip().lower())
    if name not in DTYPES:
        raise UserError(f"Unknown dtype '{dtype}'.{close_matches(dtype, DTYPES)} "
                        "Choose one of bf16, fp16, fp32.")
    if cuda and name == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError(f"{torch.cuda.get_device_name(device)} has no bf16 support; use "
                        "--dtype fp16 or fp32.")
    if not cuda and name != "fp32" and not cpu_half:
        raise UserError(f"dtype {name} is only used on CUDA here; use --set dtype=fp32 on CPU.")
    if not cuda and name != "fp32":
        fast = (torch.ops.mkldnn._is_mkldnn_bf16_supported() if name == "bf16"
                else torch.ops.mkldnn._is_mkldnn_fp16_supported())
        if not fast:
            raise UserError(f"This CPU has no native {name} matrix units, so {name} would only be "
                            "emulated; use --dtype fp32 on it.")
    return name


def memory_bytes(device: str | None) -> int:
    """The memory of `device` in bytes (a GPU's total, else what this process may use of the
    machine's RAM: the least of the RAM, the address-space and data limits (`ulimit -v`,
    `ulimit -d`) and the cgroup's memory limit (a container, a SLURM job)); 0 if unknown."""
    import torch

    if device and device.startswith("cuda") or (device is None and torch.cuda.is_available()):
        return torch.cuda.get_device_properties(torch.device(device or "cuda")).total_memory
    limits = []
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import resource

        for which in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
            soft = resource.getrlimit(which)[0]
            if soft != resource.RLIM_INFINITY and soft > 0:
                limits.append(soft)
    except (ImportError, OSError, ValueError, AttributeError):
        pass
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(cgroup, "rb") as fh:  # a kernel file: regular, small
                text = fh.read(64).decode().strip()
            if text.isdigit() and 0 < int(text) < 2**60:
                limits.append(int(text))
        except (OSError, ValueError):
            pass
    return min(limits) if limits else 0


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def autocast(device: str, dtype: str):
    """Mixed-precision autocast for `dtype` on CUDA or CPU; a no-op for fp32."""
    import torch

    if dtype == "fp32":
        return nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch_dtype(dtype))


def synchronize(device: str) -> None:
    """Wait for queued kernels, so a wall-clock interval covers the work it claims to."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) under torchrun; (0, 1, 0) for a plain process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        import torch

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if world > 1:
        return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


@contextmanager
def stop_signals():
    """SIGINT/SIGTERM set a flag checked between steps, so a step is never cut in half."""
    import signal
    import threading

    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["stop"] = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def rank() -> int:
    """This process's rank under torchrun (0 for a plain process), read without torch."""
    return int(os.environ.get("RANK", "0"))


def teardown_distributed() -> None:
    """After a successful command: wait for every rank, then destroy the process group.

    Without it a gloo rank that exits while its peer still finishes the last collective aborts
    now and then ("terminate called without an active exception", about one exit in four with
    DDP on 2 CPU processes, measured); NCCL warns of leaked resources. Only on success: after
    an error the other ranks may sit in another collective, and a barrier there would hang
    (torchrun stops them once this rank exits).
    """
    import sys

    if "torch.distributed" not in sys.modules:  # never imported: nothing to tear down
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the server at `url` answers within `timeout` seconds (the reachability probe of
    the hub and of tracker servers: their clients retry for minutes). A TCP connection that
    opens is not enough: a server that accepts and never answers would hang the client, so the
    probe asks for `/` (over TLS for https, without checking the certificate: the client does)
    and waits for the first byte of a reply, connect and read each bounded by `timeout`.
    Run in a daemon thread, since name lookups ignore socket timeouts. Hand-written: no HTTP
    client bounds the whole exchange, name lookup included, in one deadline."""
    import re
    import socket
    import threading

    m = re.match(r"^(\w+)://(?:[^@/]*@)?(\[[^\]]+\]|[^/:?#]+)(?::(\d+))?", url.strip())
    if not m:
        return False
    scheme, host = m.group(1).lower(), m.group(2).strip("[]")
    port = int(m.group(3)) if m.group(3) else (80 if scheme == "http" else 443)
    result: list[bool] = []

    def probe():
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            try:
                sock.settimeout(timeout)
                if scheme == "https":
                    import ssl

                    ctx = ssl.create_default_context()
                    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                    sock = ctx.wrap_socket(sock, server_hostname=host)
                sock.sendall(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                             .encode())
                result.append(bool(sock.recv(1)))
            finally:
                sock.close()
        except (OSError, ValueError):
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(2 * timeout + 0.5)  # connect, then the first byte of the reply
    return bool(result and result[0])


# torch.compile on a CPU (inductor), measured on a 2-core Xeon with the smoke Mixer, ViT and
# ResNet (batch 128, one thread, CPU time per step): training steps 1.07-1.38x faster (median
# 1.15x), after 59-81 s of compiling on that busy machine (C++ kernels built by the system
# compiler). The rule compiles when the eager steps left would take longer than the compile
# time plus the compiled steps: steps_left * step_s * (1 - 1 / CPU_COMPILE_SPEEDUP) >
# CPU_COMPILE_SECONDS, i.e. more than ~7 minutes of eager training left.
CPU_COMPILE_SPEEDUP = 1.15
CPU_COMPILE_SECONDS = 60.0
COMPILE_PROBE_STEPS = 5  # eager steps timed before deciding (the first one excluded: warm-up)


def compile_pays(steps_left: int, step_seconds: float, speedup: float = CPU_COMPILE_SPEEDUP,
                 compile_seconds: float = CPU_COMPILE_SECONDS) -> bool:
    """Whether compiling now saves more time over the `steps_left` steps than it costs."""
    return steps_left * step_seconds * (1 - 1 / speedup) > compile_seconds
