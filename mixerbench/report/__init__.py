"""Reports: the paper's tables and figures regenerated from the results CSVs.

`tables.py` and `figures.py` hold one pure function per paper table and figure; `style.py` the
colours and markers. This module owns the only file-writing step, `regenerate`, which
`mixerbench plot` calls: `REPORTS` names each figure and table, the paper artifact it stands
for and the results it is drawn from; `regenerate` loads those, calls the pure function and
writes `<out>/figures/*.png` (150 dpi) and `<out>/tables/*.csv|md` atomically.
Paper sources: arXiv 2105.01601 Tables 1-3 and Figures 2-5.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixerbench import files, results
from mixerbench.errors import DamagedFileError, UserError, close_matches
from mixerbench.events import Log, noop
from mixerbench.models.weights import CHECKPOINT
from mixerbench.names import slug
from mixerbench.report import style
from mixerbench.report.figures import (
    accuracy_throughput,
    curves,
    data_scaling,
    pareto_cost,
    pareto_frontier,
    shuffle,
    token_mixing,
)
from mixerbench.report.tables import (
    avg5_table,
    compare_table,
    compare_view,
    released_table,
    table1,
    throughput_table,
    to_markdown,
    transfer_table,
)

MAX_CURVES = 8  # runs drawn by default in `curves` (the most recent); more are unreadable
# the name of the first token-mixing weight in timm's (and our) Mixer: block i, fc1
TOKEN_KEY = "blocks.{}.mlp_tokens.fc1.weight"


def load_token_mixing_weights(checkpoint: str | os.PathLike, blocks=(0, 1, 2)) -> dict:
    """The (D_S, S) fc1 weights of the first token-mixing MLPs from a safetensors state dict.

    Args:
        checkpoint: a `.safetensors` file, or a run directory holding
            a checkpoint (`models.weights.CHECKPOINT`). Keys may carry a prefix (`module.`, `model.`).
        blocks: block indices to read; block 0 is required, later ones are read when present.

    Returns:
        {"block 0": ndarray (D_S, S), "block 1": ..., ...}.
    """
    path = Path(checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist; pass a .safetensors file or run dir.")
    try:
        from safetensors.torch import load

        # read once from one descriptor (files: no link inside a results folder, no FIFO) and
        # loaded from those bytes; torch tensors, since numpy has no bf16
        state = load(files.read_bytes(path, limit=None))
        out = {}
        for b in blocks:
            hit = [k for k in state if k == TOKEN_KEY.format(b) or
                   k.endswith("." + TOKEN_KEY.format(b))]
            if hit:
                out[f"block {b}"] = state[hit[0]].float().numpy()
    except UserError:
        raise
    except Exception as exc:  # a corrupt or non-safetensors file
        raise UserError(f"Could not read {path} as safetensors ({exc}).") from exc
    if f"block {blocks[0]}" not in out:
        raise UserError(f"{path} has no '{TOKEN_KEY.format(blocks[0])}'; "
                        "token-mixing needs a Mixer checkpoint.")
    return out


@dataclass
class Inputs:
    """What an artifact may draw from: the results CSVs (loaded once, on first use), the run
    directories, and what `plot` was given (a checkpoint, run ids, the model zoo)."""

    root: Path
    checkpoint: str | os.PathLike | None = None
    runs: list[str] | None = None
    zoo_df: Any = None
    _frames: dict = field(default_factory=dict)

    def csv(self, table: str, required: bool = True):
        key = (table, required)
        if key not in self._frames:
            self._frames[key] = results.load(table, self.root, required=required)
        return self._frames[key].copy()


@dataclass(frozen=True)
class Report:
    """One figure or table `plot` regenerates: `make(inputs)` returns (file stem, Figure or
    DataFrame) pairs; `paper` says which paper artifact it stands for; `default` whether a bare
    `mixerbench plot` draws it (token-mixing needs a checkpoint)."""

    make: Callable[[Inputs], list[tuple[str, Any]]]
    paper: str
    default: bool = True


def _compare_tables(i: Inputs) -> list[tuple[str, Any]]:
    """tables/compare-<dataset>-<preset>[-<digest>]: every run of one `compare` setting on each
    dataset (its `experiment` tag: the preset, and the settings given on top of it, which the
    file name carries as a digest and the title in words), one row per recipe. A run another
    command trained under one of those recipes (a `pretrain` of the same settings, which the
    compare then read back rather than train again) is one of its runs too."""
    acc = i.csv("accuracy")
    exps = acc["experiment"].astype(object).where(acc["experiment"].notna(), "").astype(str)
    trained = acc["kind"].astype(str) != "evaluate"
    out = []
    for (ds, exp), g in acc[exps.str.startswith("compare")].groupby(["dataset", exps]):
        same = trained & (acc["dataset"] == ds) & acc["recipe_id"].isin(g["recipe_id"].dropna())
        g = acc[(exps == exp) & (acc["dataset"] == ds) | same & (exps != exp)]
        stem, title = compare_name(str(ds), exp)
        runs = list(dict.fromkeys(g["run_id"].dropna().astype(str)))
        # params and FLOPs of the models these runs built (their checkpoints), never a zoo
        # given for other runs: a model name at another image size or class count differs
        table = compare_table(g, i.csv("throughput", False), i.csv("fewshot", False), dataset=ds,
                              zoo_df=_zoo_of(i.root, runs), settings=recipe_settings(i.root, g))
        table.attrs["title"] = title
        out.append((stem, table))
    if not out:
        raise UserError("accuracy.csv has no compare runs; run `mixerbench compare` first.")
    return out


def compare_name(dataset: str, experiment: str) -> tuple[str, str]:
    """(file stem, title) of the compare table of `experiment` (`compare:<preset>` or
    `compare:<preset>[k=v,...]`, the settings given on top of the preset) on `dataset`: the
    settings go into the stem as a digest and into the title in words, so two budgets never
    share a file."""
    import hashlib

    preset, _, given = experiment.split(":", 1)[-1].partition("[")
    given = given.removesuffix("]")
    stem = f"compare-{slug(dataset)}-{slug(preset)}"
    if given:
        stem += "-" + hashlib.sha256(given.encode()).hexdigest()[:8]
    return stem, f"compare on {dataset}, preset {preset}" + (f", {given}" if given else "")


def recipe_settings(root: Path, acc) -> dict[str, dict]:
    """recipe id -> its settings (`config.recipe`, dotted keys) for the recipes of `acc`'s rows
    whose run folder is there; a folder that is gone or not ours leaves its recipe unlabelled."""
    from mixerbench.config import read_run_config, recipe

    out = {}
    for rid, run, dtype in zip(acc["recipe_id"], acc["run_id"], acc["dtype"]):
        if not isinstance(rid, str) or rid in out or not isinstance(run, str):
            continue
        try:
            cfg = read_run_config(results.run_path(root, run))
        except (UserError, OSError):
            cfg = None
        if cfg is not None:
            out[rid] = _flat(recipe(cfg, dtype if isinstance(dtype, str) else None))
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[prefix + k] = v
    return flat


def _zoo_of(root: Path, runs: list[str]):
    """The zoo rows (params, GFLOPs) of the models of `runs`, from the descriptions their
    checkpoints hold (None when no run folder is there)."""
    import pandas as pd

    from mixerbench.models import label_of, model_info
    from mixerbench.models.weights import CHECKPOINT, read_metadata

    rows = {}
    for run in runs:
        try:
            rec = read_metadata(results.run_path(root, run) / CHECKPOINT)
        except (UserError, OSError):
            rec = None
        if not rec:
            continue
        label = label_of(rec)
        if label not in rows:
            rows[label] = dict(model_info(rec["name"], num_classes=rec["num_classes"],
                                          img_size=rec["img_size"],
                                          patch_size=rec.get("patch_size"),
                                          **rec.get("overrides", {})), name=label)
    return pd.DataFrame(list(rows.values())) if rows else None


def _token_mixing(i: Inputs) -> list[tuple[str, Any]]:
    if i.checkpoint is None:
        raise UserError("token-mixing needs a Mixer checkpoint; pass --checkpoint SRC.")
    return [("token-mixing", token_mixing(
        load_token_mixing_weights(i.checkpoint),
        title=f"Token-mixing MLP hidden units of {Path(i.checkpoint).name}"))]


def _table1(i: Inputs) -> list[tuple[str, Any]]:
    zoo = i.zoo_df
    if zoo is None:  # kept to this table: the paper's zoo is not the compare's models
        import pandas as pd

        from mixerbench.models import model_info, paper_models

        zoo = pd.DataFrame([model_info(n) for n in paper_models()])
    return [("table1", table1(zoo))]


REPORTS: dict[str, Report] = {
    "pareto-cost": Report(lambda i: [("pareto-cost", pareto_cost(i.csv("accuracy")))],
                          "Figure 2 (left), Figure 3 (left): top-1 vs training cost"),
    "accuracy-throughput": Report(
        lambda i: [("accuracy-throughput", accuracy_throughput(i.csv("accuracy"),
                                                               i.csv("throughput")))],
        "Figure 3 (right): top-1 vs throughput"),
    "data-scaling": Report(lambda i: [("data-scaling", data_scaling(i.csv("scaling")))],
                           "Figure 2 (right): accuracy vs pre-training data"),
    "shuffle": Report(lambda i: [("shuffle", shuffle(
        i.csv("shuffle"), metrics_by_run=_run_metrics(i.root, list(i.csv("shuffle")["run_id"]
                                                                   .dropna().astype(str)),
                                                      missing_ok=True)))],
                      "Figure 4: invariance to patch and pixel shuffling"),
    "token-mixing": Report(_token_mixing, "Figure 5: token-mixing weights (needs --checkpoint)",
                           default=False),
    "curves": Report(lambda i: [("curves", curves(_run_metrics(i.root, i.runs)))],
                     "training curves of the last command's runs (runs/*/metrics.csv)"),
    # drawn from the model zoo, not from results: `reproduce table1` or `plot table1`
    "table1": Report(_table1, "Table 1: the Mixer shapes and parameter counts", default=False),
    "compare": Report(_compare_tables, "Tables 2-3 at our scale: top-1 beside cost and speed"),
    "throughput": Report(lambda i: [("throughput", throughput_table(i.csv("throughput")))],
                         "Table 3 throughput column beside this device's"),
    "transfer": Report(lambda i: [("transfer", transfer_table(i.csv("accuracy")))],
                       "Section 3 fine-tuning at 1x and 2x vs from scratch"),
    "released": Report(lambda i: [("released", released_table(i.csv("released")))],
                       "Tables 2-3: released checkpoints on ImageNet val (top-1, ReaL)"),
    "avg5": Report(lambda i: [("avg5", avg5_table(i.csv("avg5")))],
                   "Tables 2-3 \"Avg 5\": the transfer protocol on the five datasets"),
}


def _targets(obj, out: Path, stem: str) -> list[Path]:
    """Where `_save` writes `obj`: figures/<stem>.png, or tables/<stem>.csv and .md."""
    if hasattr(obj, "savefig"):
        return [out / "figures" / f"{stem}.png"]
    return [out / "tables" / f"{stem}.csv", out / "tables" / f"{stem}.md"]


def _render(obj, out: Path, stem: str) -> list[tuple[Path, bytes]]:
    """(path, bytes) of what `obj` is written as: a Figure as figures/<stem>.png, a DataFrame
    as tables/<stem>.csv and .md."""
    paths = _targets(obj, out, stem)
    if hasattr(obj, "savefig"):
        buf = io.BytesIO()
        obj.savefig(buf, format="png", dpi=style.DPI)
        return [(paths[0], buf.getvalue())]
    shown = compare_view(obj) if stem.startswith("compare-") else obj
    title = obj.attrs.get("title")
    return [(paths[0], _safe_csv(obj).encode()),
            (paths[1], ((f"{title}\n\n" if title else "") + to_markdown(shown)).encode())]


def _safe_csv(df) -> str:
    """The table as CSV with its text cells neutralised as the results CSVs are (no cell a
    spreadsheet would run as a formula)."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object or str(df[c].dtype) in ("str", "string"):
            df[c] = df[c].map(lambda v: results.neutral(v) if isinstance(v, str) else v)
    return df.to_csv(index=False)


def _last_runs(root: Path) -> list[str]:
    """The runs of the last command that trained, read from accuracy.csv: the rows at its end
    that share the last training row's experiment tag (a compare's cells, a reproduction's
    runs, one pretrain or a string of them), in the order they were written."""
    acc = results.load("accuracy", root, required=False)
    if acc.empty or "run_id" not in acc.columns:
        return []
    if "kind" in acc.columns:
        acc = acc[acc["kind"].astype(str) != "evaluate"]
    tags = (acc["experiment"].astype(object).where(acc["experiment"].notna(), "").astype(str)
            if "experiment" in acc.columns else [""] * len(acc))
    ids = [str(r) for r in acc["run_id"]]
    tags = list(tags)
    out = []
    for rid, tag in zip(reversed(ids), reversed(tags)):
        if tag != tags[-1]:
            break
        out.append(rid)
    return list(dict.fromkeys(reversed(out)))


def _run_metrics(root: Path, runs, missing_ok: bool = False) -> dict:
    """run id -> its metrics.csv rows: the `runs` named (with `missing_ok`, those that have
    one), else the runs of the last command that trained, else the `MAX_CURVES` most recent."""
    import pandas as pd

    # lstat: a planted link or FIFO is listed here and refused by read_metrics, not followed
    found = sorted((root / "runs").glob("*/metrics.csv"), key=lambda p: p.lstat().st_mtime)
    # a folder name that is not UTF-8 is labelled with replacement characters (fonts draw text)
    by_id = {results.printable(p.parent.name): p for p in found}
    if runs:
        unknown = [r for r in runs if r not in by_id]
        if unknown and not missing_ok:
            raise UserError(f"No metrics.csv for run '{unknown[0]}' under {root / 'runs'}."
                            + close_matches(unknown[0], by_id))
        chosen = [r for r in dict.fromkeys(runs) if r in by_id]
    else:
        last = [r for r in _last_runs(root) if r in by_id]
        chosen = last or list(by_id)[-MAX_CURVES:]
    out = {}
    for r in chosen:
        rows = results.read_metrics(by_id[r])  # strict: a damaged file is refused, not plotted
        if rows:
            out[r] = pd.DataFrame(rows, columns=list(results.METRICS), dtype=float)
    return out


def regenerate(
    root: str | os.PathLike | None,
    out_dir: str | os.PathLike | None = None,
    names: str | list[str] | None = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    runs: list[str] | None = None,
    zoo_df: Any = None,
) -> dict[str, Any]:
    """Regenerate figures and tables from the CSVs under `root`.

    Args:
        root: the results directory (None: `$MIXERBENCH_RESULTS` or `results`).
        out_dir: where `figures/` and `tables/` go (default: `root`).
        names: names from `REPORTS` (a string or list); None regenerates every default one,
            skipping those whose inputs are missing.
        checkpoint: Mixer safetensors file or run dir for `token-mixing`.
        runs: run ids for `curves` (default: the `MAX_CURVES` most recent with metrics.csv).
        zoo_df: the model zoo DataFrame for `table1` (default: `table1` builds the zoo
            itself); a compare table reads params/GFLOPs from its own runs' checkpoints.

    Returns:
        {"written": [Path, ...], "skipped": {name: reason}}.

    Raises:
        UserError: an unknown name, or a named artifact whose inputs are missing (the message names
            the command that produces them); `DamagedFileError` for a damaged input CSV, whether
            or not the artifact was named.
    """
    root = results.results_dir(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"The results directory {root} is a file; pass another --results-dir.")
    # --out is a results folder of its own: figures/ and tables/ are written only through it
    out = files.confine(out_dir) if out_dir is not None else root
    specific = bool(names)
    names = [names] if isinstance(names, str) else list(
        names or [n for n, a in REPORTS.items() if a.default or (n == "token-mixing" and checkpoint)])
    # an artifact that is not drawn by default is not reported as skipped either
    for n in names:
        if n not in REPORTS:
            raise UserError(f"Unknown figure or table '{n}'; choose from {', '.join(REPORTS)}."
                            + close_matches(n, REPORTS))
    import matplotlib

    inputs = Inputs(root, checkpoint=checkpoint, runs=runs, zoo_df=zoo_df)
    written, skipped = [], {}
    # names come from users (a dataset folder called $\foo$): labels are text, never mathtext
    with matplotlib.rc_context({"text.parse_math": False}):
        made = []  # everything is drawn before anything is written: a refusal changes nothing
        for n in names:
            try:
                made += REPORTS[n].make(inputs)
            except UserError as err:
                if specific or isinstance(err, DamagedFileError):  # damage is never a skip
                    raise
                skipped[n] = str(err)
        for stem, obj in made:  # where each goes is checked first (a link, a folder in the way)
            for path in _targets(obj, out, stem):
                files.check(path.parent, "dir")
                files.check(path, "file")
        # a file that cannot be written is an error, not a skip; all are written or none (a
        # full disk part way leaves every figure and table as it was)
        rendered = [item for stem, obj in made for item in _render(obj, out, stem)]
        files.write_all(rendered)
        written = [path for path, _ in rendered]
    return {"written": written, "skipped": skipped}


class Event:
    """What `draw` emits as `log(event, info)`; `view.ProgressView` renders it and
    `trackers.Tracked` records it as the tracker run `plot`."""

    DRAWN = "drawn"  # figures and tables were written: root, written, config


def draw(root=None, out=None, names=None, checkpoint=None, *, runs=None,
         log: Log = noop) -> dict:
    """`mixerbench plot`: `regenerate`, refused when nothing could be drawn (no results yet);
    what was written is reported as `Event.DRAWN`."""
    done = regenerate(root, out, names, checkpoint, runs=runs)
    if not done["written"]:
        raise UserError(f"Nothing to plot in {results.results_dir(root)}: it has no results CSVs "
                        "yet; run `mixerbench compare --preset smoke` (or pretrain, bench, "
                        "reproduce) first.")
    log(Event.DRAWN, dict(root=results.results_dir(root), written=done["written"], config=dict(
        name=names or "all", runs=",".join(runs) if runs else None, checkpoint=checkpoint)))
    return done


__all__ = [
    "REPORTS", "draw", "regenerate", "compare_name", "recipe_settings",
    "load_token_mixing_weights", "style",
    "table1", "avg5_table", "compare_table", "throughput_table", "transfer_table",
    "released_table", "to_markdown",
    "pareto_cost", "accuracy_throughput", "data_scaling", "shuffle", "token_mixing", "curves",
    "pareto_frontier",
]
