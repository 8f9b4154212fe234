"""The `mixerbench` command line: one thin command per verb (design.md section 4).

Each command parses options, calls one library function and prints. Heavy imports (torch,
timm, pandas, datasets) happen inside the commands so that `mixerbench --help` stays fast.
Bad input raised by the library as `UserError` exits with status 2 and one sentence.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="mixerbench",
    help="Reproduce the MLP-Mixer benchmarks (arXiv 2105.01601): Mixer vs ViT vs ResNet/BiT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


_QUIET = {"on": False}


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output gets a wide console so tables are not truncated to 80 columns.
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 200)


def fail(message: str, code: int = 2) -> None:
    """Print one sentence to stderr and exit (status 2 for bad input)."""
    _console(stderr=True).print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def user_errors(fn):
    """Turn the library's `UserError` into exit status 2 with its one-sentence message."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mixerbench.errors import UserError

        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            fail(str(exc))

    return wrapper


def emit(rows: list[dict], fmt: Format, title: str | None = None,
         columns: list[str] | None = None) -> None:
    """Print rows as a rich table, CSV or JSON (machine-readable formats go to stdout bare)."""
    columns = columns or (list(rows[0]) if rows else [])
    if fmt == Format.json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    if fmt == Format.csv:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for c in columns:
        numeric = bool(rows) and isinstance(rows[0].get(c), (int, float))
        table.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in columns])
    _console().print(table)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


@app.callback()
def main(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain periodic lines, no progress bars.")] = False,
) -> None:
    """Reproduce the MLP-Mixer benchmarks: Mixer against ViT and ResNet/BiT from timm."""
    _QUIET["on"] = quiet


# --------------------------------------------------------------------------------------- models


@app.command()
@user_errors
def models(
    pattern: Annotated[Optional[str], typer.Argument(help="Shell pattern, e.g. 'mixer-*'.")] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    img_size: Annotated[Optional[int], typer.Option(help="Count FLOPs at this input size.")] = None,
    num_classes: Annotated[int, typer.Option(help="Head size used for `params`.")] = 1000,
) -> None:
    """The model zoo: shapes, parameters and GMACs per image (FlopCounterMode)."""
    from mixerbench.errors import UserError
    from mixerbench.models import list_models, model_info, resolve_name

    names = list_models(pattern)
    if not names and pattern:
        if any(ch in pattern for ch in "*?["):
            raise UserError(f"No model matches '{pattern}'; run `mixerbench models` for the zoo.")
        names = [resolve_name(pattern)]  # a single name or alias, e.g. `Mixer-B/16`
    rows = []
    for n in names:
        patch = None
        if img_size:
            from mixerbench.models import get_spec

            patch = get_spec(n).patch_size
            if patch and img_size % patch:
                continue  # this architecture cannot take that size
        rows.append(model_info(n, num_classes=num_classes, img_size=img_size))
    emit(rows, fmt, title="mixerbench model zoo (params with a %d-class head; GMACs per image)" % num_classes)


# ---------------------------------------------------------------------------------------- entry


def run() -> None:  # pragma: no cover - console entry for `python -m mixerbench`
    app()


if __name__ == "__main__":  # pragma: no cover
    run()
