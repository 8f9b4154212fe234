"""Reports: the paper's tables and figures regenerated from the results CSVs (issue 6, item 2).

`tables.py` and `figures.py` hold one pure function per paper table and figure (style.md
habit 8); `style.py` the colours and markers. This module owns the only file-writing step,
`regenerate`, which `mixerbench plot` calls: read CSVs with `results.load`, call the pure
functions, write `<out>/figures/*.png` (150 dpi) and `<out>/tables/*.csv|md` atomically.
Paper sources: arXiv 2105.01601 Tables 1-3 and Figures 2-5 (see `paper.md` section 5).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from mixerbench import files, results
from mixerbench.names import slug
from mixerbench.errors import DamagedFileError, UserError, close_matches
from mixerbench.report import style
from mixerbench.report.figures import (
    FIGURES, accuracy_throughput, curves, data_scaling, pareto_cost, pareto_frontier, shuffle,
    token_mixing,
)
from mixerbench.report.tables import (
    TABLES, compare_table, table1, throughput_table, to_markdown,
)

MAX_CURVES = 8  # runs drawn by default in `curves` (the most recent); more are unreadable
TOKEN_KEY = "blocks.{}.mlp_tokens.fc1.weight"  # timm / mixerbench parameter name (design.md 6)


def load_token_mixing_weights(checkpoint: str | os.PathLike, blocks=(0, 1, 2)) -> dict:
    """The (D_S, S) fc1 weights of the first token-mixing MLPs from a safetensors state dict.

    Args:
        checkpoint: a `.safetensors` file, or a run directory holding
            `checkpoint-last.safetensors`. Keys may carry a prefix (`module.`, `model.`).
        blocks: block indices to read; block 0 is required, later ones are read when present.

    Returns:
        {"block 0": ndarray (D_S, S), "block 1": ..., ...}.
    """
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "checkpoint-last.safetensors"
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist; pass a .safetensors file or run dir.")
    try:
        from safetensors import safe_open

        out = {}
        with safe_open(str(path), framework="pt") as fh:  # "pt" also reads bf16 tensors
            keys = list(fh.keys())
            for b in blocks:
                hit = [k for k in keys if k == TOKEN_KEY.format(b) or
                       k.endswith("." + TOKEN_KEY.format(b))]
                if hit:
                    out[f"block {b}"] = fh.get_tensor(hit[0]).float().numpy()
    except UserError:
        raise
    except Exception as exc:  # a corrupt or non-safetensors file
        raise UserError(f"Could not read {path} as safetensors ({exc}).") from exc
    if f"block {blocks[0]}" not in out:
        raise UserError(f"{path} has no '{TOKEN_KEY.format(blocks[0])}'; "
                        "token-mixing needs a Mixer checkpoint.")
    return out


def _save_figure(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=style.DPI)
    files.atomic_write_bytes(path, buf.getvalue())
    return path


def _save_table(df, path_stem: Path) -> list[Path]:
    csv_path, md_path = path_stem.with_suffix(".csv"), path_stem.with_suffix(".md")
    files.atomic_write_text(csv_path, df.to_csv(index=False))
    files.atomic_write_text(md_path, to_markdown(df))
    return [csv_path, md_path]


def _run_metrics(root: Path, runs) -> dict:
    import pandas as pd

    found = sorted((root / "runs").glob("*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    by_id = {p.parent.name: p for p in found}
    if runs:
        unknown = [r for r in runs if r not in by_id]
        if unknown:
            raise UserError(f"No metrics.csv for run '{unknown[0]}' under {root / 'runs'}."
                            + close_matches(unknown[0], by_id))
        chosen = list(runs)
    else:
        chosen = list(by_id)[-MAX_CURVES:]
    out = {}
    for r in chosen:
        rows = results.read_metrics(by_id[r])  # strict: a damaged file is refused, not plotted
        if rows:
            out[r] = pd.DataFrame(rows, columns=list(results.METRICS), dtype=float)
    return out


def _produce(name: str, root: Path, out: Path, checkpoint, runs, zoo_df) -> list[Path]:
    """Write one artifact; raises UserError when its inputs are missing."""
    load = lambda t, required=True: results.load(t, root, required=required)  # noqa: E731
    fig_dir, tab_dir = out / "figures", out / "tables"
    if name == "pareto-cost":
        return [_save_figure(pareto_cost(load("accuracy")), fig_dir / "pareto-cost.png")]
    if name == "accuracy-throughput":
        fig = accuracy_throughput(load("accuracy"), load("throughput"))
        return [_save_figure(fig, fig_dir / "accuracy-throughput.png")]
    if name == "data-scaling":
        return [_save_figure(data_scaling(load("scaling")), fig_dir / "data-scaling.png")]
    if name == "shuffle":
        return [_save_figure(shuffle(load("shuffle")), fig_dir / "shuffle.png")]
    if name == "token-mixing":
        if checkpoint is None:
            raise UserError("token-mixing needs a Mixer checkpoint; pass --checkpoint SRC.")
        fig = token_mixing(load_token_mixing_weights(checkpoint),
                           title=f"Token-mixing MLP hidden units of {Path(checkpoint).name}")
        return [_save_figure(fig, fig_dir / "token-mixing.png")]
    if name == "curves":
        metrics = _run_metrics(root, runs)
        return [_save_figure(curves(metrics), fig_dir / "curves.png")]
    if name == "table1":
        if zoo_df is None:
            raise UserError("table1 needs the model zoo; run `mixerbench reproduce table1`.")
        return _save_table(table1(zoo_df), tab_dir / "table1")
    if name == "compare":
        acc = load("accuracy")
        thr, few = load("throughput", False), load("fewshot", False)
        written = []
        for ds in sorted(acc["dataset"].dropna().astype(str).unique()):
            df = compare_table(acc, thr, few, dataset=ds, zoo_df=zoo_df)
            written += _save_table(df, tab_dir / f"compare-{slug(ds)}")
        return written
    if name == "throughput":
        return _save_table(throughput_table(load("throughput")), tab_dir / "throughput")
    raise AssertionError(name)  # names are validated before


def regenerate(
    results_root: str | os.PathLike | None,
    out_dir: str | os.PathLike | None = None,
    figures: str | list[str] | None = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    runs: list[str] | None = None,
    zoo_df: Any = None,
) -> dict[str, Any]:
    """Regenerate figures and tables from the CSVs under `results_root`.

    Args:
        results_root: the results directory (None: `$MIXERBENCH_RESULTS` or `results`).
        out_dir: where `figures/` and `tables/` go (default: `results_root`).
        figures: names from `FIGURES` or `TABLES` (a string or list); None regenerates all,
            skipping those whose inputs are missing.
        checkpoint: Mixer safetensors file or run dir for `token-mixing`.
        runs: run ids for `curves` (default: the `MAX_CURVES` most recent with metrics.csv).
        zoo_df: the model zoo DataFrame for `table1` and params/GFLOPs in `compare`.

    Returns:
        {"written": [Path, ...], "skipped": {name: reason}}.

    Raises:
        UserError: an unknown name, or a named artifact whose inputs are missing (the message names
            the command that produces them); `DamagedFileError` for a damaged input CSV, whether
            or not the artifact was named.
    """
    root = results.results_dir(results_root)
    out = Path(out_dir) if out_dir is not None else root
    known = list(FIGURES) + list(TABLES)
    specific = bool(figures)
    # `compare` tables are written by `mixerbench compare`, which knows which runs belong to
    # one comparison; accuracy.csv alone does not (data-scaling and shuffle runs share model
    # names), so regenerating everything leaves them alone.
    names = [figures] if isinstance(figures, str) else list(
        figures or [n for n in known if n != "compare"])
    for n in names:
        if n not in known:
            raise UserError(f"Unknown figure or table '{n}'; choose from {', '.join(known)}."
                            + close_matches(n, known))
    written, skipped = [], {}
    for n in names:
        try:
            written += _produce(n, root, out, checkpoint, runs, zoo_df)
        except UserError as err:
            if specific or isinstance(err, DamagedFileError):  # damage is never a skip
                raise
            skipped[n] = str(err)
    return {"written": written, "skipped": skipped}


__all__ = [
    "FIGURES", "TABLES", "regenerate", "load_token_mixing_weights", "style",
    "table1", "compare_table", "throughput_table", "to_markdown",
    "pareto_cost", "accuracy_throughput", "data_scaling", "shuffle", "token_mixing", "curves",
    "pareto_frontier",
]
