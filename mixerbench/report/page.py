"""One self-contained HTML page of a whole reproduction (`mixerbench report`).

`build(root)` returns the page for a results folder; `write_report(root, out)` writes it to
`<root>/report/index.html` (or `out`). The page needs nothing but itself: figures are PNGs inline
as data URIs, the style sheet is inline, there is no script and no font to fetch, so it opens
the same offline, from a download or from a CI artifact. What it holds, top to bottom:

1. the claims card: each claim of `mixerbench.reference.claims` with its verdict, numbers, seeds
   and the command that would add missing evidence (`mixerbench.report.claims`, the same
   verdicts `mixerbench claims` prints);
2. every table and figure `mixerbench plot` draws (`report.REPORTS`), each beside the paper's
   numbers or statement for that artifact;
3. the rows of every results CSV, each run id a link to
4. one section per run: its provenance (code, versions, device, seed), its config.json, data
   and curves when the run folder is there (`runs/` is not committed), and per `bench` call its
   device and versions.

Hand-written HTML: pandas' `to_html` cannot link cells, and no templating library is a
dependency; every value from a file is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from pathlib import Path

import pandas as pd

from mixerbench import files, results
from mixerbench.errors import DamagedFileError, UserError
from mixerbench.names import RUN_NAME
from mixerbench.reference.claims import HELD, NOT_HELD
from mixerbench.report import claims as claims_mod

# The claims whose paper statement belongs beside each figure or table of `report.REPORTS`.
ARTIFACT_CLAIMS = {
    "pareto-cost": ("competitive",),
    "accuracy-throughput": ("throughput-infer", "throughput-train"),
    "data-scaling": ("data-scaling-resnet", "data-scaling-vit"),
    "shuffle": ("shuffle-mixer", "shuffle-resnet"),
    "compare": ("competitive",),
    "throughput": ("throughput-train", "throughput-infer"),
    "transfer": ("higher-resolution",),
    "released": ("released",),
    "avg5": ("avg5",),
    "table1": ("table1-sizes",),
}
# Columns of the results CSVs that name a run or a bench call: their cells link to its section.
LINKED = {"run_id": "run", "bench_id": "bench"}
MAX_RUN_CURVES = 200
# Figures on the page: 100 dpi fills the page's 1,180 px column (the PNG files are 150 dpi, for
# print) at under half the bytes.
PAGE_DPI = 100  # runs drawn with their curves; beyond that the page would be unwieldy

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1b1b;
background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:1.2em 1.5em 4em}
h1{font-size:1.6em;margin:.4em 0 .1em}h2{margin-top:2em;border-bottom:2px solid #ddd}
h3{margin:1.4em 0 .3em}code,pre{font:13px/1.35 ui-monospace,Menlo,Consolas,monospace}
pre{background:#f0f0f0;padding:.6em;overflow-x:auto;max-height:24em}
.meta{color:#555}.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em 1em;
margin:.8em 0}.claim{border-left:6px solid #b58900}.claim.held{border-left-color:#2e7d32}
.claim.not-held{border-left-color:#c62828}.badge{display:inline-block;padding:.05em .5em;
border-radius:3px;font-weight:600;font-size:.85em;color:#fff;background:#b58900}
.held .badge,.badge.held{background:#2e7d32}.not-held .badge,.badge.not-held{background:#c62828}
.claim h3{margin:.1em 0 .3em}.paper{color:#333;background:#eef3f8;padding:.4em .6em;
border-radius:4px}.comparisons li{margin:.25em 0}.summary td{padding:.15em .6em}
table.rows{border-collapse:collapse;font-size:13px;margin:.4em 0;background:#fff}
table.rows th,table.rows td{border:1px solid #ddd;padding:.2em .45em;text-align:left;
vertical-align:top;white-space:nowrap}table.rows td.num{text-align:right}
.scroll{overflow-x:auto}img{max-width:100%;height:auto;border:1px solid #eee;background:#fff}
details>summary{cursor:pointer;font-weight:600}.run{scroll-margin-top:1em}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def anchor(kind: str, value) -> str:
    """The id of a run's (`run`) or bench call's (`bench`) section: the value with anything
    but letters, digits, `.`, `_` and `-` replaced, so any id a file holds is a valid anchor."""
    return f"{kind}-" + re.sub(r"[^A-Za-z0-9._-]", "_", str(value))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PAGE_DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _cell(value) -> tuple[str, bool]:
    if value is None or (isinstance(value, float) and value != value):
        return "", False
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value), True
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return (f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))), True
        return (f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"), True
    return str(value), False


def table_html(df: pd.DataFrame, known: set[str] = frozenset()) -> str:
    """A DataFrame as an HTML table; `run_id` / `bench_id` cells whose section is on the page
    (`known` anchors) link to it."""
    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for col, v in zip(df.columns, row):
            if isinstance(v, tuple):  # run ids behind an aggregate (a recipe's seeds)
                cells.append("<td>" + " ".join(
                    f'<a href="#{anchor("run", r)}">{_e(r)}</a>' if anchor("run", r) in known
                    else _e(r) for r in v) + "</td>")
                continue
            text, num = _cell(v.item() if hasattr(v, "item") else v)
            shown = _e(text)
            if col in LINKED and text and anchor(LINKED[col], text) in known:
                shown = f'<a href="#{anchor(LINKED[col], text)}">{shown}</a>'
            cells.append(f'<td class="num">{shown}</td>' if num else f"<td>{shown}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="rows"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


# -------------------------------------------------------------------------------- claims

def _claim_html(v: claims_mod.Verdict, known: set[str]) -> str:
    c = v.claim
    cls = {HELD: "held", NOT_HELD: "not-held"}.get(v.verdict, "undecided")
    items = []
    for comp in v.comparisons:
        rows = [r for s in (comp.a, comp.b) if s for r in s.rows]
        links = " ".join(f'<a href="#{anchor(k, r)}">{_e(r)}</a>' for r in dict.fromkeys(rows)
                         for k in ("run", "bench") if anchor(k, r) in known)
        src = f" <span class=meta>({_e(comp.source)})</span>" if comp.source else ""
        items.append(f'<li><span class="badge {_verdict_class(comp.verdict)}">'
                     f"{_e(comp.verdict)}</span> {_e(claims_mod.comparison_text(comp))}{src}"
                     + (f"<br><span class=meta>rows:</span> {links}" if links else "") + "</li>")
    nxt = "".join(f"<li><code>{_e(cmd)}</code></li>" for cmd in v.next)
    return (f'<article class="card claim {cls}" id="claim-{_e(c.id)}" data-claim="{_e(c.id)}" '
            f'data-verdict="{_e(v.verdict)}"><h3><span class="badge">{_e(v.verdict)}</span> '
            f"{_e(c.title)} <span class=meta>({_e(c.source)})</span></h3>"
            f'<p class="paper"><b>Paper:</b> {_e(c.paper)}</p>'
            f"<p><b>Claim at our scale:</b> {_e(c.statement)}<br><b>Test:</b> "
            f"{_e(claims_mod._rule_text(c))} ({_e(c.why)}).<br><b>Rows:</b> {_e(c.rows)}.</p>"
            f'<ul class="comparisons">{"".join(items)}</ul>'
            + (f"<p><b>Next:</b></p><ul>{nxt}</ul>" if nxt else "") + "</article>")


def _verdict_class(verdict: str) -> str:
    return {HELD: "held", NOT_HELD: "not-held"}.get(verdict, "")


# ----------------------------------------------------------------------- tables, figures

def _artifacts(root: Path, frames: dict, verdicts, known: set[str]) -> list[str]:
    """Every table and figure `plot` draws by default, each beside the paper's side of it."""
    import matplotlib

    from mixerbench.report import REPORTS, Inputs, compare_view
    from mixerbench.reference.claims import get_claim

    by_id = {v.claim.id: v for v in verdicts}
    inputs = Inputs(root)
    out = []
    names = ["table1"] + [n for n, r in REPORTS.items() if r.default]
    with matplotlib.rc_context({"text.parse_math": False}):
        for name in names:
            paper = "".join(
                f'<p class="paper"><b>Paper ({_e(get_claim(i).source)}):</b> '
                f'{_e(get_claim(i).paper)} <a href="#claim-{_e(i)}">Verdict: '
                f"{_e(by_id[i].verdict)}</a></p>" for i in ARTIFACT_CLAIMS.get(name, ()))
            try:
                made = ([("table1", frames["table1"])] if name == "table1"
                        else REPORTS[name].make(inputs))
                if name == "table1" and frames["table1"] is None:
                    raise UserError("no tables/table1.csv; run `mixerbench reproduce table1`.")
            except DamagedFileError:
                raise
            except UserError as err:
                out.append(f'<section class="card" id="artifact-{name}"><h3>{_e(name)}</h3>'
                           f"{paper}<p class=meta>Not drawn: "  # paths inside the folder
                           f"{_e(str(err).replace(str(root) + os.sep, ''))}</p></section>")
                continue
            what = "Table 1: the Mixer shapes and parameter counts" if name == "table1" else \
                REPORTS[name].paper
            body = []
            for stem, obj in made:
                if hasattr(obj, "savefig"):
                    body.append(f'<figure><img alt="{_e(stem)}" src="{_png(obj)}"></figure>')
                else:
                    shown = compare_view(obj) if stem.startswith("compare-") else obj
                    body.append(f"<h4>{_e(stem)}</h4>{table_html(with_runs(shown, frames), known)}")
            out.append(f'<section class="card" id="artifact-{name}"><h3>{_e(what)}</h3>'
                       f"{paper}{''.join(body)}</section>")
    return out


def with_runs(table: pd.DataFrame, frames: dict) -> pd.DataFrame:
    """A table whose rows name a recipe (`recipe_id`) gains a `runs` column: the run ids of
    that recipe's rows in accuracy.csv, each a link to its section."""
    if "recipe_id" not in table.columns or "runs" in table.columns:
        return table
    acc = frames["accuracy"]
    by_recipe = {}
    for rid, run in zip(acc["recipe_id"].astype(object), acc["run_id"].astype(object)):
        if rid == rid and run == run:
            by_recipe.setdefault(str(rid), []).append(str(run))
    runs = [tuple(dict.fromkeys(by_recipe.get(str(r), ()))) for r in table["recipe_id"]]
    return table.assign(runs=runs)


# -------------------------------------------------------------------------------- runs

def _runs(root: Path, frames: dict) -> list[tuple[str, str]]:
    """(anchor, section) per run id and bench id found in the rows."""
    from mixerbench.report.tables import mid_training

    acc = frames["accuracy"]
    ids = []
    for table in ("accuracy", "fewshot", "shuffle", "scaling", "avg5"):
        df = frames.get(table)
        if df is not None and len(df) and "run_id" in df.columns:
            ids += [str(x) for x in df["run_id"].dropna()]
    out, drawn = [], 0
    # a run's own training row, else its last evaluation of its trained weights, else its last
    # of a checkpoint taken mid-training (`tables.of_trained_weights`), as `latest_per_run`
    # ranks them (a later capped `evaluate` of a trained run does not stand for what the run
    # measured, nor a later probe of an early checkpoint for the finished run)
    trained = _text_col(acc, "kind") != "evaluate"
    mid = mid_training(acc)
    ranked = pd.concat([acc[~trained & mid], acc[~trained & ~mid], acc[trained]])
    by_id = {str(r["run_id"]): r for _, r in ranked.iterrows() if r["run_id"] == r["run_id"]}
    for rid in dict.fromkeys(ids):
        row = by_id.get(rid)
        facts = []
        if row is not None:
            for label, cols in (
                ("result", ("model", "family", "dataset", "split", "pipeline", "img_size",
                            "epochs", "steps", "top1", "top5", "loss", "kind", "experiment", "init",
                            "recipe_id")),
                ("code", ("git_sha", "mixerbench_version", "torch_version", "timm_version")),
                ("device", ("device_name", "num_devices", "dtype", "compiled", "seed",
                            "train_seconds", "timestamp"))):
                cells = ", ".join(f"{c} <code>{_e(_cell(row[c])[0])}</code>" for c in cols
                                  if c in row.index and _cell(row[c])[0] != "")
                facts.append(f"<p><b>{label}:</b> {cells}</p>")
        else:
            facts.append("<p class=meta>No accuracy.csv row for this run id.</p>")
        run_dir = root / "runs" / rid
        extra = ""
        if RUN_NAME.fullmatch(rid) and files.check(run_dir, "dir") is not None:
            extra, drawn = _run_folder(run_dir, rid, drawn)
        else:
            extra = (f"<p class=meta>Its run folder (runs/{_e(rid)}: config.json, metrics.csv, "
                     "checkpoints) is not in this results folder.</p>")
        out.append((anchor("run", rid), f'<section class="card run" id="{anchor("run", rid)}">'
                    f"<h3>run {_e(rid)}</h3>{''.join(facts)}{extra}</section>"))
    thr = frames["throughput"]
    for bid, g in thr.groupby(thr["bench_id"].astype(object).fillna(""), sort=False):
        if not bid:
            continue
        r = g.iloc[0]
        cols = ("device_name", "num_devices", "dtype", "compiled", "driver_version",
                "cuda_version", "git_sha", "mixerbench_version", "torch_version", "timm_version",
                "timestamp")
        cells = ", ".join(f"{c} <code>{_e(_cell(r[c])[0])}</code>" for c in cols
                          if _cell(r[c])[0] != "")
        models = ", ".join(_e(m) for m in dict.fromkeys(g["model"].astype(str)))
        out.append((anchor("bench", bid), f'<section class="card run" id="{anchor("bench", bid)}">'
                    f"<h3>bench call {_e(bid)}</h3><p><b>models:</b> {models}</p>"
                    f"<p><b>measured on:</b> {cells}</p></section>"))
    return out


def _text_col(df: pd.DataFrame, column: str) -> pd.Series:
    return (df[column].astype(object).where(df[column].notna(), "").astype(str)
            if column in df.columns else pd.Series("", index=df.index, dtype=object))


def _run_folder(run_dir: Path, rid: str, drawn: int) -> tuple[str, int]:
    """A run folder's config.json (and its data section) and its curves."""
    from mixerbench.report.figures import curves

    parts = []
    raw = files.read_bytes(run_dir / "config.json")
    if raw is not None:
        try:
            cfg = json.loads(raw.decode())
            data = cfg.get("data") if isinstance(cfg, dict) else None
            if isinstance(data, dict):
                parts.append("<p><b>data:</b> " + ", ".join(
                    f"{_e(k)} <code>{_e(v)}</code>" for k, v in data.items()
                    if v not in (None, "", [], {})) + "</p>")
            parts.append("<details><summary>config.json</summary><pre>"
                         f"{_e(json.dumps(cfg, indent=2, sort_keys=True))}</pre></details>")
        except (ValueError, UnicodeDecodeError):
            parts.append("<p class=meta>config.json is not JSON.</p>")
    metrics = run_dir / "metrics.csv"
    if files.check(metrics, "file") is not None:
        rows = results.read_metrics(metrics)
        if rows and drawn < MAX_RUN_CURVES:
            fig = curves({rid: pd.DataFrame(rows, columns=list(results.METRICS), dtype=float)},
                         title=f"Training curves of {rid}")
            parts.append(f'<figure><img alt="curves of {_e(rid)}" src="{_png(fig)}"></figure>')
            drawn += 1
    return "".join(parts), drawn


# --------------------------------------------------------------------------------- page

def build(root: str | os.PathLike | None = None) -> str:
    """The report page of the results folder `root` as one HTML string (nothing written)."""
    import mixerbench

    root = results.results_dir(root)
    if not root.is_dir():
        raise UserError(f"No results folder at {root}; pass --results-dir, or produce results "
                        "first (e.g. `mixerbench compare --preset smoke`).")
    frames = {t: results.load(t, root, required=False) for t in results.SCHEMAS}
    frames["table1"] = claims_mod.read_table1(root)
    frames["settings"] = claims_mod.run_settings(root, frames)  # as `mixerbench claims` does
    verdicts = claims_mod.evaluate(frames)
    runs = _runs(root, frames)
    known = {a for a, _ in runs}

    counts = "".join(f"<tr><td><code>{t}.csv</code></td><td>{len(frames[t]):,} rows</td></tr>"
                     for t in results.SCHEMAS if len(frames[t]))
    devices = sorted({str(d) for t in results.SCHEMAS for d in frames[t]["device_name"].dropna()})
    claims_html = "".join(_claim_html(v, known) for v in verdicts)
    glance = "".join(
        f'<tr><td><span class="badge {_verdict_class(v.verdict)}">{_e(v.verdict)}</span></td>'
        f'<td><a href="#claim-{_e(v.claim.id)}">{_e(v.claim.title)}</a></td>'
        f"<td>{_e(v.claim.source)}</td></tr>" for v in verdicts)
    rows_html = "".join(
        f"<details><summary>{t}.csv ({len(frames[t]):,} rows)</summary>"
        f"{table_html(frames[t].dropna(axis=1, how='all'), known)}</details>"
        for t in results.SCHEMAS if len(frames[t]))
    artifacts = "".join(_artifacts(root, frames, verdicts, known))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mixerbench report: {_e(root.name or root)}</title><style>{STYLE}</style></head>
<body><main>
<h1>MLP-Mixer reproduction report</h1>
<p class=meta>Results folder <code>{_e(root.name or root)}</code>, drawn by mixerbench
{_e(mixerbench.__version__)} from its CSVs alone. The paper: Tolstikhin et al., MLP-Mixer: An
all-MLP Architecture for Vision, arXiv 2105.01601. Measured on: {_e("; ".join(devices)) or "no rows"}.</p>
<table class=summary>{counts}</table>
<h2 id="claims">The paper's claims</h2>
<p>{_e(claims_mod.counts(verdicts))}. A claim holds only when every qualifying comparison
holds; the rule, the tolerance and the seeds each needs are beside it.</p>
<table class="rows glance"><thead><tr><th>verdict</th><th>claim</th><th>paper</th></tr></thead>
<tbody>{glance}</tbody></table>
{claims_html}
<h2 id="artifacts">Tables and figures, beside the paper's</h2>
{artifacts}
<h2 id="rows">The rows</h2>
{rows_html}
<h2 id="runs">Runs and bench calls</h2>
{"".join(s for _, s in runs)}
</main></body></html>
"""


def write_report(root: str | os.PathLike | None = None,
                 out: str | os.PathLike | None = None) -> Path:
    """Write `build(root)` to `out` (default `<root>/report/index.html`) atomically; its path."""
    root = results.results_dir(root)
    page = build(root)
    target = Path(out) if out is not None else root / "report" / "index.html"
    if out is not None:
        files.confine(target.parent)
    files.check(target.parent, "dir")
    files.check(target, "file")
    files.atomic_write_text(target, page)
    return target
