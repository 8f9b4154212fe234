"""Run the README's commands in tmux at 80 and 120 columns and keep what the terminal shows.

    python docs/screens/capture.py [--only REGEX] [--widths 80,120]

Each `mixerbench` line of README.md's bash blocks runs as typed (the line is not shrunk: these
are the real commands and their real output) in a fresh tmux pane of that width, from a scratch
folder whose `~/data` is a local CIFAR-10 copy when one is at hand ($MIXERBENCH_TEST_DATA, else
the test suite's default data folder, as tests/conftest.py finds it). The pane's text (`tmux capture-pane`, the whole scrollback)
goes to docs/screens/<n>-<width>.txt, and docs/screens/README.md lists every command beside its
captures. Lines that draw a table are checked for a cut cell ("…"); the script exits 1 if any
has one. The first width trains; the second reads the same runs back (and bench measures again).

It also times each `compare` that trains (the main job) against its `--dry-run` estimate made
just before it in the same folder, and records both: a line in docs/screens/main-job.txt and a
row in docs/dry-run.md's table, with the load average before and after (a row taken while
other jobs ran says so). `--only` captures the matching lines alone and keeps the others'
captures; the screenshots keep their README order in their names.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_docs import documented_commands  # noqa: E402  (the docs test's own parser)

DATA = Path(os.environ.get("MIXERBENCH_TEST_DATA") or ROOT.parent / "shared" / "data")


def tmux(*args: str, check: bool = True) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=check).stdout


def run_in_pane(line: str, width: int, cwd: Path, env: dict, timeout: float) -> tuple[str, float]:
    """`line` in a new tmux session `width` columns wide; its screen text and seconds taken."""
    name = f"mb{width}-{os.getpid()}"
    envs = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    for attempt in range(5):  # a server still shutting down after the last session refuses
        started = subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(width), "-y",
                                  "50", "-c", str(cwd), *envs, "bash --norc --noprofile"],
                                 capture_output=True, text=True)
        if started.returncode == 0:
            break
        time.sleep(1 + attempt)
    else:
        raise RuntimeError(f"tmux would not start: {started.stderr.strip()}")
    tmux("set-option", "-t", name, "history-limit", "20000")
    tmux("send-keys", "-t", name, "PS1='$ '; clear", "Enter")
    time.sleep(0.5)
    tmux("clear-history", "-t", name)
    start = time.monotonic()
    tmux("send-keys", "-t", name, f"{line}; tmux wait-for -S {name}-done", "Enter")
    subprocess.run(["tmux", "wait-for", f"{name}-done"], timeout=timeout, check=True)
    took = time.monotonic() - start
    text = tmux("capture-pane", "-p", "-J", "-S", "-", "-t", name)
    tmux("kill-session", "-t", name, check=False)
    lines = text.rstrip().splitlines()
    return "\n".join(ln.rstrip() for ln in lines) + "\n", took


def seconds_of(text: str) -> float | None:
    """Seconds of a duration as the formatter writes it (42 s, 2.2 min, 1.5 h)."""
    m = re.fullmatch(r"([\d.,]+) (s|min|h|days)", text.strip())
    if not m:
        return None
    return float(m.group(1).replace(",", "")) * {"s": 1, "min": 60, "h": 3600, "days": 86400}[m.group(2)]


TABLE_END = "<!-- capture.py adds a row above -->"


def record_main_job(line: str, estimate: str | None, took: float, load: tuple[float, float]):
    """The main job's --dry-run estimate beside its measured wall time: a line in
    main-job.txt and a row in docs/dry-run.md's table."""
    when, cores = time.strftime("%Y-%m-%d %H:%M"), len(os.sched_getaffinity(0))
    note = (f"{line}\n  --dry-run estimate: {estimate}; measured: {took:.0f} s ({when}, load "
            f"{load[0]:.1f} before, {load[1]:.1f} after)\n")
    print(note, end="")
    with open(HERE / "main-job.txt", "a") as fh:
        fh.write(note)
    est = seconds_of(estimate or "")
    busy = max(load) >= 0.5 * cores  # more than our own runs: other jobs shared the cores
    machine = (f"{cores}-core CPU, load {load[0]:.1f} before / {load[1]:.1f} after "
               f"({'under load: other jobs running' if busy else 'idle'})")
    row = (f"| {when} | `{line.removeprefix('mixerbench ')}` | {machine} | {estimate} | "
           f"{took:.0f} s | {f'{est / took:.2f}' if est else '?'} |")
    doc = ROOT / "docs" / "dry-run.md"
    text = doc.read_text()
    if TABLE_END in text:
        doc.write_text(text.replace(TABLE_END, f"{row}\n{TABLE_END}"))


def cut_cells(text: str) -> list[str]:
    """Table lines (rich's rules and columns) holding a cut cell."""
    return [ln for ln in text.splitlines() if "…" in ln]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="run only the README lines matching this regex")
    ap.add_argument("--widths", default="80,120")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()
    if not shutil.which("tmux"):
        print("tmux is not installed", file=sys.stderr)
        return 2
    widths = [int(w) for w in args.widths.split(",")]
    lines = [line for doc, line in documented_commands()
             if doc == "README.md" and line.startswith("mixerbench ")]
    base = Path(tempfile.mkdtemp(prefix="mixerbench-screens-"))
    work, home = base / "work", base / "home"
    work.mkdir(), home.mkdir()
    if (DATA / "cifar10").is_dir():
        (home / "data").symlink_to(DATA, target_is_directory=True)
    venv_bin = Path(sys.executable).parent
    env = {"HOME": str(home), "PATH": f"{venv_bin}:/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TERM": "xterm-256color"}
    if "OMP_NUM_THREADS" in os.environ:  # else as a user's shell: torch picks the threads
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    bad = []
    for n, line in enumerate(lines):
        if not re.search(args.only, line):
            continue
        if "~/data" in line and not (home / "data").exists():
            print(f"skipped (no CIFAR-10 copy): {line}")
            continue
        for width in widths:
            if line.startswith("mixerbench compare") and "--dry-run" not in line \
                    and width == widths[0]:  # the main job, on a fresh folder: plan, then run
                text, _ = run_in_pane(line + " --dry-run", width, work, env, args.timeout)
                estimate = re.search(r"here: about ([^,]+),", " ".join(text.split()))
                before = os.getloadavg()[0]
                text_run, took = run_in_pane(line, width, work, env, args.timeout)
                record_main_job(line, estimate and estimate.group(1), took,
                                (before, os.getloadavg()[0]))
                text = text + "\n" + text_run
            else:
                if line.startswith("mixerbench export "):  # it writes into a new folder only
                    shutil.rmtree(work / line.split()[3], ignore_errors=True)
                if "--write-jpegs" in line:  # so does --write-jpegs
                    shutil.rmtree(work / line.split()[2], ignore_errors=True)
                text, took = run_in_pane(line, width, work, env, args.timeout)
            out = HERE / f"{n:02d}-{width}.txt"
            out.write_text(text)
            bad += [f"{out.name}: {c}" for c in cut_cells(text)]
            print(f"{out.name}: {took:.0f} s  {line}")
    doc = ["# The README's commands in a terminal", "",
           "What `python docs/screens/capture.py` saw running each `mixerbench` line of the "
           "README, in order, in tmux at 80 and 120 columns (`tmux capture-pane`; the first "
           "width trains, the second reads the same runs back): tables fit, or list one block "
           "per row; nothing is cut.", ""]
    for stale in HERE.glob("[0-9][0-9]-*.txt"):  # of a line the README no longer has
        if int(stale.name[:2]) >= len(lines):
            stale.unlink()
    for n, line in enumerate(lines):  # every capture there is, whichever this call made
        shots = sorted(HERE.glob(f"{n:02d}-*.txt"), key=lambda p: int(p.stem.split("-")[1]))
        if shots:
            doc += [f"- `{line}`: " + ", ".join(f"[{p.stem.split('-')[1]} columns]({p.name})"
                                                for p in shots)]
    (HERE / "README.md").write_text("\n".join(doc) + "\n")
    shutil.rmtree(base, ignore_errors=True)
    for b in bad:
        print("cut cell:", b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
