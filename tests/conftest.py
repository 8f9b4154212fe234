"""Shared test fixtures. Each module's fixtures carry its prefix (`data_` for mixerbench.data)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# As the CLI does: spin-waiting OpenMP threads slow small tensor ops ~70x on a busy 2-core box.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A folder of local dataset copies by name (cifar10/ in the hub's parquet layout) for the tests
# that need real CIFAR-10: $MIXERBENCH_TEST_DATA, else shared/data beside the checkout's folder;
# those tests skip when it has no cifar10/.
SHARED_DATA = Path(os.environ.get("MIXERBENCH_TEST_DATA")
                   or Path(__file__).resolve().parents[2] / "shared" / "data")


# The order files start in. With `--dist loadfile` (the README's test command) a file is what a
# worker is handed, and the suite ends when its last file does; xdist would queue files by their
# number of tests, which says little here (test_slurm.py's 7 tests wait ~2 minutes on the
# cluster, test_models.py's 74 take 20 s), and a long file handed out last leaves the other
# worker idle. So the longest files start first, in the order of their measured time (2-core
# CPU, the whole suite on 2 workers; the SLURM scenarios' jobs then train beside the other
# files), and the rest fill in after them in name order.
LONGEST_FIRST = ["test_slurm.py", "test_docs.py", "test_launcher.py", "test_reliability.py",
                 "test_untrusted.py", "test_models.py", "test_export.py", "test_hostile.py",
                 "test_recipes.py", "test_filesystem.py", "test_races.py", "test_identity.py",
                 "test_claims.py", "test_inputs.py", "test_tables_property.py", "test_data.py"]


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's reordering, off: ours below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's order kept


@pytest.fixture(scope="session", autouse=True)
def data_offline_cache(tmp_path_factory):
    """Every test runs offline and caches decoded datasets in a session temp dir, never in ~/.cache."""
    saved = {k: os.environ.get(k) for k in ("MIXERBENCH_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    root = tmp_path_factory.mktemp("mixerbench-cache")
    os.environ["MIXERBENCH_CACHE"] = str(root)
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def signal_handlers_kept():
    """Each test leaves the signal handlers as it found them: a command run in this process
    (`cli`) installs its SIGTERM handler, a job run inside it submitit's, and left behind they
    reach every process forked later (an image decode pool's workers among them)."""
    import signal

    kept = {s: signal.getsignal(s)
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGCONT)}
    yield
    for s, h in kept.items():
        if h is not None and signal.getsignal(s) is not h:
            signal.signal(s, h)


@pytest.fixture(scope="session")
def data_shared_dir() -> Path:
    """The offline copies folder (used as data_dir / MIXERBENCH_DATA); skips when it is absent."""
    if not (SHARED_DATA / "cifar10").is_dir():
        pytest.skip(f"no offline CIFAR-10 copy at {SHARED_DATA / 'cifar10'}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for in-process runs, restored after the module. The models here are
    tiny, and on a busy 2-core machine OpenMP threads waiting on each other make small ops
    20-100x slower (measured: 4 ms vs 500 ms per batched-op sweep, a LayerNorm 20x)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def child_env(data_offline_cache):
    """Environment of every child process: this checkout's package, offline, one shared
    dataset cache, one thread per process (2 cores are shared by all of them)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               MIXERBENCH_CACHE=str(data_offline_cache), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    for key in ("MIXERBENCH_RESULTS", "MIXERBENCH_DATA", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    return env


def start(args, env, **kw) -> subprocess.Popen:
    """`python -m mixerbench --quiet ARGS` in the background from this checkout, output captured
    (the end-to-end tests' one way to start the command as a user would)."""
    return subprocess.Popen([sys.executable, "-m", "mixerbench", "--quiet", *map(str, args)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def run(args, env, timeout: float = 300) -> subprocess.CompletedProcess:
    """`start`, waited for: the finished command's exit status, stdout and stderr."""
    proc = start(args, env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ------------------------------------------------------------------ the CLI as tests drive it

# A tiny Mixer (width 16, one block, batch 50) on the embedded synthetic set (1,000 / 200
# images, 32 px), on the CPU: the options of every test that trains through the command line.
TINY_MODEL = ["--dataset", "synthetic", "--device", "cpu", "--set", "model.width=16",
              "--set", "model.depth=1", "--set", "data.batch_size=50"]
# `pretrain`'s: the smoke preset at 32 px (the model options above; add --steps)
TINY = ["--preset", "smoke", *TINY_MODEL[:2], "--img-size", "32", *TINY_MODEL[2:]]
# The environment of an in-process command: offline, no results or data folder from the shell.
CLI_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MIXERBENCH_DATA": None,
           "MIXERBENCH_RESULTS": None}


def cli(*args, env=None):
    """`mixerbench --quiet ARGS` in this process (typer's CliRunner), offline."""
    from typer.testing import CliRunner

    from mixerbench.cli import app

    return CliRunner().invoke(app, ["--quiet", *map(str, args)], env={**CLI_ENV, **(env or {})})


def refusal_lines(output: str) -> list[str]:
    """The lines of a command's output but the `loading ...` line the progress view prints when
    loading lasts over 3 s (on a busy machine, before an offline dataset is refused): a
    refusal's contract is one error line and no traceback, whatever progress came before it."""
    return [line for line in output.splitlines()
            if line.strip() and not line.startswith("loading ")]


def refused(r) -> str:
    """The one line of a refusal (exit 2, no traceback)."""
    lines = refusal_lines(r.output)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def interrupted_run(base: Path, *, steps: int, ckpt_every: int, kill_at: int):
    """The tiny smoke run `unf` under `base`, stopped by Ctrl-C at step `kill_at` (in this
    process), as `pretrain ... --run-name unf` leaves it; returns its config."""
    from mixerbench.presets import resolve
    from mixerbench.train import train

    cfg = resolve("smoke", dataset="synthetic",
                  flags={"steps": steps, "model.img_size": 32, "device": "cpu", "run_name": "unf"},
                  overrides={"model.width": "16", "model.depth": "1", "data.batch_size": "50",
                             "ckpt_every": str(ckpt_every), "eval_every": "4"})

    def kill(event, info):
        if event == "step" and info["step"] == kill_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, base, log=kill)
    assert (base / "runs" / "unf" / "state-last.pt").is_file()
    return cfg


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` with a hash of its bytes (directories marked as such)."""
    import hashlib

    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs (root only, as in CI): yields mount(path, options) -> the mounted folder
    (`options` as `mount -o` takes them: "size=2m", "ro,size=1m"), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted = []

    def mount(path: Path, options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)
