"""Every command line README.md and results/README.md show runs as typed and exits 0.

The lines are read from the documents' ```bash blocks (a `\\` continues a line, `#` starts a
comment), so the docs cannot drift from the code again. Each runs in a scratch folder (the
working directory, where `results/` goes) with a scratch home: `~` expands as the shell would,
and the docs' `~/data` (a user's folder of local dataset copies) is this machine's offline copy
when there is one (`conftest.SHARED_DATA`). Lines run in the order the documents give them
(later lines use the runs of earlier ones); a line (a torchrun line: its mixerbench command)
only gains `SHRINK`'s arguments, which make it smaller (fewer steps, fewer images), never
different, and a `--dry-run` line's probe of each run's training loop times its minimum of
steps instead of 9 s a run (the estimate is less precise; tests/test_view.py checks what it
says). Lines that need the CIFAR-10 copy skip when there is none.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixerbench.cli import app

from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "results" / "README.md"]

# Arguments appended to a documented line (matched by regex) so it runs in seconds on 2 CPU
# cores; each only shrinks the work. The first matching entry wins.
SHRINK: list[tuple[str, list[str]]] = [
    # a launched sweep: two of its cells, one job each at once (a job is a process: ~4 CPU-s)
    (r"^compare .*--launcher local", ["--models", "mixer,vit", "--seeds", "1", "--set", "steps=4",
                                      "--set", "max_eval_examples=200", "--no-bench"]),
    (r"^compare ", ["--seeds", "1", "--set", "steps=4", "--set", "max_eval_examples=200",
                    "--no-bench"]),
    (r"^reproduce throughput", ["--models", "mixer-s32,vit-s32", "--batch-size", "2"]),
    (r"^reproduce (shuffle|data-scaling|transfer|avg5)",
     ["--set", "steps=2", "--set", "max_eval_examples=100"]),
    (r"^datasets .*--write-jpegs", ["--write-jpegs", "20"]),
    (r"^datasets .*--bench", ["--images", "16", "--batch-size", "8", "--repeats", "1"]),
    (r"^pretrain .*--list-presets|--print-config|^models|^paper|^datasets|^plot|^export", []),
    (r"^pretrain ", ["--steps", "4"]),
    (r"^finetune ", ["--steps", "2", "--set", "optim.warmup_steps=1", "--set",
                     "max_eval_examples=200"]),
    (r"^evaluate ", ["--max-examples", "200"]),
    (r"^bench ", ["--batch-size", "1", "--repeats", "1", "--steps", "1", "--warmup", "0"]),
]


def documented_commands() -> list[tuple[str, str]]:
    """(document name, command line) for every `mixerbench` / `torchrun` line, in order."""
    out = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            text = re.sub(r"\\\n\s*", " ", block)
            for line in text.splitlines():
                for part in line.split("&&"):
                    part = part.split(" #")[0].strip()
                    if part.startswith(("mixerbench ", "torchrun ")):
                        out.append((doc.relative_to(ROOT).as_posix(), part))
    return out


COMMANDS = documented_commands()


def shrink(args: list[str]) -> list[str]:
    line = " ".join(args)
    for pattern, extra in SHRINK:
        if re.search(pattern, line):
            return args + extra
    return args


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """`work/` (the cwd, results go to work/results) beside `home/`, the user's home for `~`,
    whose `data/` links to the offline copies when present."""
    base = tmp_path_factory.mktemp("docs")
    work = base / "work"
    work.mkdir()
    (base / "home").mkdir()
    if (SHARED_DATA / "cifar10").is_dir():
        small_cifar10(SHARED_DATA / "cifar10", base / "home" / "data" / "cifar10")
    return work


# Images per class of the docs' CIFAR-10 (`~/data/cifar10`): a copy of the offline one in the
# same hub parquet layout, class-balanced, so every documented line runs as typed on the same
# kind of data in seconds (the full copy's 10,000 test images made the probes of one
# data-scaling line take a minute). 430 train images a class: data-scaling's smallest share
# (3 %) still fills the smoke preset's batch of 128.
SMALL_CIFAR10 = {"train": 430, "test": 30}


def small_cifar10(src: Path, dst: Path) -> None:
    """The first SMALL_CIFAR10[split] images of every class of each split of `src`."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for f in sorted(src.rglob("*.parquet")):
        table = pq.read_table(f)
        split = f.name.split("-")[0]
        labels = table.column("label")
        keep = [i for c in range(10) for i in pc.indices_nonzero(pc.equal(labels, c)).to_pylist()[:SMALL_CIFAR10[split]]]
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(sorted(keep)), out)


def expand_home(args: list[str], home: Path) -> list[str]:
    """`~` and `~/x` at the start of a word become `home` and `home/x`, as the shell does
    before mixerbench sees them (other words are left alone)."""
    return [str(home) + a[1:] if a == "~" or a.startswith("~/") else a for a in args]


def test_the_documents_show_commands():
    assert len(COMMANDS) >= 10
    assert any(line.startswith("torchrun ") for _, line in COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize("doc,line", COMMANDS, ids=[f"{d}:{i}" for i, (d, _) in enumerate(COMMANDS)])
def test_a_documented_command_runs_as_typed(doc, line, checkout, monkeypatch):
    home = checkout.parent / "home"
    if "~/data" in line and not (home / "data").exists():
        pytest.skip("needs an offline CIFAR-10 copy")
    args = expand_home(shlex.split(line), home)
    monkeypatch.chdir(checkout)
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MIXERBENCH_RESULTS": None,
           "MIXERBENCH_DATA": None, "OMP_NUM_THREADS": "1", "HOME": str(home)}
    if args[0] == "torchrun":  # its own processes: the command as typed, SHRINK's arguments added
        at = args.index("mixerbench") + 1
        args = args[:at] + shrink(args[at:])
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", *args[1:]],
                              cwd=checkout, capture_output=True, text=True, timeout=300,
                              env={**os.environ, **{k: v for k, v in env.items() if v},
                                   "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return
    assert args[0] == "mixerbench", line
    target = None
    if ">" in args:  # `... > FILE`: the shell puts stdout in FILE (in the working folder)
        at = args.index(">")
        args, target = args[:at], args[at + 1]
    if "--dry-run" in args:  # its probe of each run's loop, cut to PROBE_MIN_STEPS steps
        from mixerbench import plan

        for name in ("PROBE_WARMUP_S", "PROBE_TIMED_S"):
            monkeypatch.setattr(plan, name, 0.0)
    r = CliRunner().invoke(app, shrink(args[1:]), env=env)
    assert r.exit_code == 0, f"{doc}: `{line}` exited {r.exit_code}:\n{r.output[-3000:]}"
    assert "Traceback" not in r.output
    if target:
        (checkout / target).write_text(r.stdout)


def test_shrinking_only_adds_size_arguments():
    """What SHRINK appends makes a command smaller, never another experiment."""
    allowed = {"--set", "--steps", "--max-examples", "--no-bench", "--repeats", "--warmup",
               "--batch-size", "--models", "--seeds", "--write-jpegs", "--images"}
    sizes = re.compile(r"(steps|max_eval_examples|optim\.warmup_steps)=\d+|\d+|[a-z0-9-]+,[a-z0-9-]+")
    for _, extra in SHRINK:
        for arg in extra:
            assert arg in allowed or sizes.fullmatch(arg), arg


def test_the_documents_name_data_a_user_has():
    """Paths in the docs are the user's (`~/data`), never this project's own folders."""
    for doc in DOCS:
        text = doc.read_text()
        assert "../shared" not in text and "/work/" not in text, doc.name
    assert any("--data-dir ~/data" in line for _, line in COMMANDS)


def test_torchrun_is_on_the_path_of_this_python():
    """The README's torchrun line runs the venv's torchrun (the test runs it as its module)."""
    assert shutil.which("torchrun") or (Path(sys.executable).parent / "torchrun").exists()


def test_the_readmes_claims_section_is_the_generated_one(tmp_path, monkeypatch):
    """README.md's claims section is what the command it names writes from the committed rows:
    that command, run as typed in a copy of the checkout, leaves README.md unchanged."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"`(mixerbench claims --results-dir results\s+--write-md README\.md)`", readme)
    assert found, "the README names the command that writes its claims section"
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "results", tmp_path / "results", ignore=shutil.ignore_patterns("runs"))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, shlex.split(found.group(1))[1:])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "README.md").read_text() == readme, (
        "README.md's claims section is stale: run `mixerbench claims --results-dir results "
        "--write-md README.md`")
