"""Project contracts: the README's commands are CI's, the CLI starts without torch, CITATION parses."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readmes_install_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2, "the quick start is exactly two commands"
    install, test = block
    assert install.startswith('pip install -e ".[dev]"') and "--preset smoke" in install
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in ci
    assert test in ci


def test_cli_imports_no_torch_so_help_is_fast():
    code = "import sys, mixerbench.cli; print(sorted(m for m in ('torch', 'timm', 'pandas', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


def test_help_lists_every_command_and_version_prints():
    """The top-level help's command table is exactly the registered commands (not substrings
    of other help text), and --version answers like every CLI of this ecosystem."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from mixerbench import __version__
    from mixerbench.cli import app

    registered = set(get_command(app).commands)
    assert {"models", "paper", "datasets", "pretrain", "finetune", "evaluate", "bench", "compare",
            "plot", "reproduce"} <= registered
    out = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    listed = set(re.findall(r"^│ (\S+)\s{2,}", out, re.M)) - {
        "--help", "-h", "--quiet", "-q", "--version", "--install-completion", "--show-completion"}
    assert listed == registered
    version = CliRunner().invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"mixerbench {__version__}"


def _imports(path: Path, modules: dict) -> set:
    """Modules of the package that `path` imports, at module level or inside functions."""
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    pkg = pkg[: -len(".__init__")] if pkg.endswith(".__init__") else pkg.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            bases = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + [base])
            bases = [(base, [a.name for a in node.names])]
        else:
            continue
        for base, names in bases:
            if not base.startswith("mixerbench"):
                continue
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            while base not in modules:
                base = base.rsplit(".", 1)[0]
            out |= set(subs) if subs and len(subs) == len(names) else {base, *subs}
    return out


def _package_modules() -> dict:
    """{dotted module name: path} of every module in the package."""
    modules = {}
    for p in (ROOT / "mixerbench").rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        modules[name[: -len(".__init__")] if name.endswith(".__init__") else name] = p
    return modules


def test_the_package_has_no_import_circles():
    """Data flows one way (flags -> config -> run -> CSV -> table/figure): no module reaches,
    even lazily inside a function, into one that imports it back."""
    modules = _package_modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}

    def reaches(start, goal, seen):
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen))
                   for n in graph[start])

    circles = sorted((a, b) for a in graph for b in graph[a] if reaches(b, a, set()))
    assert not circles, circles


# Each module's floor: a module imports from its own floor or the ones below, never above
# (data flows flags -> config -> run -> CSV -> table/figure). A module missing here fails the
# test, so a new one is placed on purpose. `mixerbench` itself (the version) stands apart.
FLOORS = (
    ("errors", "names", "files", "runtime", "loss", "events", "formatting", "process"),
    ("config",),
    ("data", "models", "results"),
    ("presets", "reference", "optim", "rundir", "prepare", "evaluate", "bench", "export",
     "upgrade"),
    ("train", "plan"),  # plan probes the loop itself
    ("experiments", "launch", "report", "trackers"),  # trackers follow what the others emit
    ("cli", "__main__", "view", "options"),
)


def test_no_module_imports_from_a_floor_above_its_own():
    modules = _package_modules()
    floor_of = {name: i for i, names in enumerate(FLOORS) for name in names}

    def floor(module: str) -> int | None:
        top = module.split(".")[1] if "." in module else None
        return floor_of.get(top, -1) if top else None

    unplaced = sorted(m for m in modules if m != "mixerbench" and floor(m) == -1)
    assert not unplaced, f"place these modules on a floor in FLOORS: {unplaced}"
    upward = sorted(f"{m} -> {n}" for m, p in modules.items() if floor(m) is not None
                    for n in _imports(p, modules) if n != "mixerbench" and floor(n) > floor(m))
    assert not upward, upward


def test_the_loop_file_is_the_loop():
    """train.py holds the loop and what it needs; the run folder (`rundir`), the run's parts
    (`prepare`) and the optimizer (`optim`) are their own modules."""
    lines = len((ROOT / "mixerbench" / "train.py").read_text().splitlines())
    assert lines < 450, f"train.py has {lines} lines"


def test_no_function_is_over_80_lines_without_saying_why():
    long = []
    for p in (ROOT / "mixerbench").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node) or ""
                first = node.body[1] if doc and len(node.body) > 1 else node.body[0]
                lines = node.end_lineno - first.lineno + 1
                if lines > 80 and "Long because" not in doc:
                    long.append(f"{p.relative_to(ROOT)}:{node.name} ({lines} lines)")
    assert not long, long


def test_code_tests_and_docs_cite_nothing_outside_the_repository():
    """The paper by section, or docs/paper-notes.md: never a planning file or an issue number."""
    pattern = re.compile(r"\b(design|paper|peers|style)\.md\b|\bissues? #?\d|#\d+'s")
    files = [*(ROOT / "mixerbench").rglob("*.py"), *(ROOT / "tests").rglob("*.py"),
             ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "results" / "README.md",
             *(ROOT / "docs").rglob("*.md")]
    hits = [f"{f.relative_to(ROOT)}:{i}" for f in files
            for i, line in enumerate(f.read_text().splitlines(), 1)
            if pattern.search(line) and "paper-notes.md" not in line]
    assert not hits, hits


def test_citation_cff_has_software_root_and_paper_reference():
    yaml = __import__("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert isinstance(cff["date-released"], str)
    assert any("2105.01601" in str(r.get("url", "")) for r in cff["references"])
    assert "preferred-citation" not in cff


def test_shell_completion_installs_through_typer():
    """`mixerbench --install-completion` (Typer's) is offered, and the completion script it
    would install names the program."""
    from typer.testing import CliRunner

    from mixerbench.cli import app

    out = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    assert "--install-completion" in out and "--show-completion" in out
    shown = subprocess.run([sys.executable, "-m", "mixerbench", "--show-completion=bash"],
                           capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT),
                                "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert shown.returncode == 0 and "complete" in shown.stdout, shown.stderr
    assert "_MIXERBENCH_COMPLETE" in shown.stdout  # the program's own completion variable


def test_the_command_line_module_stays_small():
    """cli.py holds the commands only (parse, call one library function, hand the result to
    the view): under 400 lines; what it prints lives in view.py, its shared options in options.py."""
    lines = len((ROOT / "mixerbench" / "cli.py").read_text().splitlines())
    assert lines < 400, f"cli.py has {lines} lines"
