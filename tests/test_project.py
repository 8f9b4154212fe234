"""Project contracts: the README's commands are CI's, the CLI starts without torch, CITATION parses."""

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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_every_command():
    from typer.testing import CliRunner

    from mixerbench.cli import app

    out = CliRunner().invoke(app, ["--help"]).output
    for cmd in ("models", "paper", "datasets", "pretrain", "finetune", "evaluate", "bench",
                "compare", "plot", "reproduce"):
        assert cmd in out


def test_citation_cff_has_software_root_and_paper_reference():
    yaml = __import__("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert isinstance(cff["date-released"], str)
    assert any("2105.01601" in str(r.get("url", "")) for r in cff["references"])
    assert "preferred-citation" not in cff
