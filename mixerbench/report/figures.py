"""The paper's figures regenerated from our CSVs: pure functions DataFrame -> matplotlib Figure.

One function per figure (paper arXiv 2105.01601, section 3 and
section 5), no I/O and no pyplot state: figures are `matplotlib.figure.Figure` objects on the
Agg canvas, saved by the caller (`report.regenerate`) at `style.DPI`.

- `pareto_cost`: top-1 vs training cost, Pareto frontier dashed (Figure 2 left, Figure 3 left).
- `accuracy_throughput`: top-1 vs img/s per device, log x (Figure 3 right).
- `data_scaling`: top-1 vs training-set fraction, one line per model (Figure 2 right).
- `shuffle`: accuracy under original / patch+pixel / global shuffling (Figure 4).
- `token_mixing`: hidden units of the token-mixing MLPs as sqrt(S) x sqrt(S) images (Figure 5).
- `curves`: loss and top-1 vs step for chosen runs (ours; no paper counterpart).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    NullFormatter,
    NullLocator,
)

from mixerbench import reference
from mixerbench.errors import UserError
from mixerbench.report import style
from mixerbench.report.tables import (
    device_hours,
    latest_bench,
    latest_per_run,
    numeric,
    one_measurement,
    pick_comparison,
    pick_dataset,
    recipe_key,
    require,
    text,
)

# ----------------------------------------------------------------------------- helpers


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] | None = None):
    """A Figure on an Agg canvas with `nrows x ncols` axes (never touches pyplot)."""
    w, h = size or style.PANEL_SIZE
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(axes.ravel())


def pareto_frontier(cost: Sequence[float], score: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower cost, higher score).

    Returned in order of increasing cost; a point with equal cost and lower score, or higher
    cost and no better score, is dominated. NaNs are ignored.
    """
    pts = [(c, s, i) for i, (c, s) in enumerate(zip(cost, score))
           if c == c and s == s and c is not None and s is not None]
    pts.sort(key=lambda t: (t[0], -t[1]))  # cheapest first; at equal cost the best first
    keep, best = [], -math.inf
    for c, s, i in pts:
        if s > best:
            keep.append(i)
            best = s
    return keep


def _hardware(df: pd.DataFrame) -> str:
    """'NVIDIA H100 x 8' / 'cpu (...)' / 'mixed hardware' / '' from provenance columns."""
    if "device_name" not in df.columns:
        return ""
    names = df["device_name"].dropna().astype(str)
    names = names[names != ""].unique()
    if len(names) == 0:
        return ""
    if len(names) > 1:
        return "mixed hardware"
    nd = pd.to_numeric(df.get("num_devices"), errors="coerce").dropna().unique() \
        if "num_devices" in df.columns else []
    return names[0] + (f" x {int(nd[0])}" if len(nd) == 1 and nd[0] > 1 else "")


def _scatter_families(ax, x, y, names, labels=None, *, hollow=None, size=46,
                      seen: set | None = None, fams: Sequence[str] | None = None):
    """One PathCollection per family (colour + marker from `style`); returns the labels.
    `fams`: each point's family (a row's `family` column); default guessed from the names."""
    x, y, names = np.asarray(x, float), np.asarray(y, float), [str(n) for n in names]
    labels = names if labels is None else [str(s) for s in labels]
    hollow = np.zeros(len(x), bool) if hollow is None else np.asarray(hollow, bool)
    seen = set() if seen is None else seen
    fams = [style.family_of(n) for n in names] if fams is None else list(fams)
    for fam in style.order():
        for hol in (False, True):
            idx = [i for i, f in enumerate(fams) if f == fam and hollow[i] == hol]
            if not idx:
                continue
            c = style.COLORS[fam]
            legend = style.LABELS[fam] if fam not in seen else "_nolegend_"
            seen.add(fam)
            ax.scatter(x[idx], y[idx], s=size, marker=style.MARKERS[fam], label=legend, zorder=3,
                       facecolors="white" if hol else c, edgecolors=c, linewidths=1.3)
    return labels


def label_points(ax, x, y, labels, fontsize: float | None = None, draw: bool = True) -> None:
    """Annotate points, choosing for each label the first of a few offsets that overlaps no
    earlier label and no marker (a greedy placement; call after scales and limits are set)."""
    fig = ax.figure
    fs = fontsize or style.FONT_SIZE - 2.5
    if draw:
        fig.draw_without_rendering()  # settle the layout so data -> points is final
    xy = np.column_stack([np.asarray(x, float), np.asarray(y, float)])
    ok = np.isfinite(xy).all(axis=1)
    pts = np.full_like(xy, np.nan)
    pts[ok] = ax.transData.transform(xy[ok]) * 72.0 / fig.dpi  # in points
    x0, y0, x1, y1 = (np.asarray(ax.bbox.extents) * 72.0 / fig.dpi).tolist()
    boxes = [(px - 4, py - 4, px + 4, py + 4) for px, py in pts[ok]]
    h = 1.25 * fs

    def free(b):
        inside = b[0] >= x0 and b[2] <= x1 and b[1] >= y0 and b[3] <= y1
        return inside and not any(b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3]
                                  for o in boxes)

    order = np.argsort(-np.nan_to_num(pts[:, 1], nan=-1e9), kind="stable")  # top labels first
    for i in order:
        if not ok[i]:
            continue
        px, py = pts[i]
        text = style.short_name(labels[i])
        w = 0.58 * fs * len(text)
        cands = [(5, 2), (5, -2 - h), (-5 - w, 2), (-5 - w, -2 - h), (5, 2 + h), (5, -2 - 2 * h),
                 (-5 - w, 2 + h), (-5 - w, -2 - 2 * h), (-w / 2, 6), (-w / 2, -6 - h)]
        k = next((j for j, c in enumerate(cands) if free((px + c[0], py + c[1], px + c[0] + w,
                                                          py + c[1] + h))), 0)
        dx, dy = cands[k]
        boxes.append((px + dx, py + dy, px + dx + w, py + dy + h))
        t = ax.annotate(text, (xy[i, 0], xy[i, 1]), xytext=(dx, dy),
                        textcoords="offset points", ha="left", va="bottom", fontsize=fs,
                        color="#333333", zorder=4, annotation_clip=False,
                        bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.75),
                        arrowprops=dict(arrowstyle="-", lw=0.6, color="#888888", shrinkA=0,
                                        shrinkB=4) if k >= 1 else None)
        t.set_in_layout(False)


def _frontier(ax, x, y):
    """The Pareto frontier as a dashed line, and its legend entry, when it has two points or
    more: one point that beats the rest is no line, and a legend never lists a mark not drawn."""
    idx = pareto_frontier(list(x), list(y))
    if len(idx) >= 2:
        ax.plot(np.asarray(x, float)[idx], np.asarray(y, float)[idx], "--", color="black",
                linewidth=1.2, alpha=0.8, label="Pareto frontier", zorder=2)
    return idx


def _plain(v, _pos=None) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:g}"


def log_x(ax) -> None:
    """Log x axis with plain-number ticks at 1, 2, 5 x 10^k (no 10^k notation, no minor labels)."""
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    subs = (1.0, 2.0, 5.0) if hi / max(lo, 1e-12) < 1e3 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _log_x_if_wide(ax, x):
    x = np.asarray(x, float)
    x = x[np.isfinite(x) & (x > 0)]
    if len(x) and x.max() / x.min() > 20:
        log_x(ax)


def fit_title(ax, title: str, fontsize: float) -> str:
    """`title` broken into lines as wide as `ax`: matplotlib never wraps a title, and a long
    compare tag (`compare:smoke[model.width=...,steps=...]`) ran over the next panel's. Lines
    break at spaces and after a tag's commas and brackets (written by hand: textwrap breaks
    only at spaces and hyphens)."""
    width_pt = ax.get_position().width * ax.figure.get_figwidth() * 72
    chars = max(24, int(width_pt / (0.5 * fontsize)))  # DejaVu Sans: ~0.5 em a character
    out = []
    for line in title.split("\n"):
        cur = ""
        for token in re.split(r"(?<=[ ,\[])", line):
            while len(token) > chars:  # one token wider than the axes: cut it where it must
                if cur:
                    out.append(cur.rstrip())
                    cur = ""
                out.append(token[:chars])
                token = token[chars:]
            if cur and len(cur + token.rstrip()) > chars:
                out.append(cur.rstrip())
                cur = ""
            cur += token
        out.append(cur.rstrip())
    return "\n".join(out)


def _finish(ax, xlabel, ylabel, title, legend=True):
    ax.set_xlabel(xlabel, fontsize=style.FONT_SIZE)
    ax.set_ylabel(ylabel, fontsize=style.FONT_SIZE)
    ax.set_title(fit_title(ax, title, style.FONT_SIZE + 1), fontsize=style.FONT_SIZE + 1)
    ax.grid(True, which="major", alpha=0.3)
    ax.tick_params(labelsize=style.FONT_SIZE - 1)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=style.FONT_SIZE - 2, loc="best", framealpha=0.85)


def _pad_limits(ax, y, err=None):
    y = np.asarray(y, float)
    e = np.zeros_like(y) if err is None else np.nan_to_num(np.asarray(err, float))
    lo_all, hi_all = y - e, y + e
    ok = np.isfinite(y)
    if ok.any():
        lo, hi = lo_all[ok].min(), hi_all[ok].max()
        pad = max(1.0, 0.12 * (hi - lo))
        ax.set_ylim(lo - pad, hi + pad)


# ----------------------------------------------------------------------------- Figure 2 / 3


def paper_cost_points() -> pd.DataFrame:
    """The paper's points for the cost panels: all Table 2 rows (Figure 2 left) and the
    JFT-300M rows of Table 3 (Figure 3 left), with a `table` column naming which."""
    t2 = reference.load_table("table2").assign(table="Table 2")
    t3 = reference.load_table("table3")
    t3 = t3[t3["pretrain"] == "jft300m"].assign(table="Table 3")
    df = pd.concat([t2, t3], ignore_index=True)
    return df[df["top1"].notna() & df["core_days"].notna()].reset_index(drop=True)


_PRETRAIN_SHORT = {"imagenet": "IN", "imagenet21k": "21k", "jft300m": "JFT",
                   "jft300m-unlabelled": "JFT", "web-image-text": "web"}
_PAPER_PANEL_TITLES = {
    "Table 2": "Paper Table 2 (Fig. 2 left): SOTA, fine-tuned at >=448",
    "Table 3": "Paper Table 3 (Fig. 3 left): JFT-300M, fine-tuned at 224",
}


def _paper_label(r, with_pretrain: bool) -> str:
    size = r.get("img_size")
    at = f"@{int(size)}" if size == size and size is not None and size != 224 else ""
    ep = f" {round(r['epochs']):g}ep" if r.get("_dup") and r.get("epochs") == r.get("epochs") else ""
    up = f" ({_PRETRAIN_SHORT.get(r['pretrain'], r['pretrain'])})" if with_pretrain else ""
    return f"{r['paper_name']}{at}{ep}{up}"


def _paper_panel(ax, p: pd.DataFrame, x: str, title: str, xlabel: str, jobs: list,
                 frontier: bool = True) -> None:
    p = p.reset_index(drop=True).copy()
    p["_dup"] = p.duplicated(["paper_name", "pretrain", "img_size"], keep=False)
    with_pretrain = p["pretrain"].nunique() > 1
    labels = [_paper_label(r, with_pretrain) for _, r in p.iterrows()]
    _scatter_families(ax, p[x], p["top1"], p["paper_name"], labels, size=38)
    if frontier:
        _frontier(ax, p[x], p["top1"])
    ax.set_xscale("log")
    _pad_limits(ax, p["top1"])
    ax.set_xlim(p[x].min() / 1.6, p[x].max() * 2.5)  # room for labels at the right edge
    log_x(ax)
    _finish(ax, xlabel, "ImageNet top-1 (%)", title)
    jobs.append((ax, p[x], p["top1"], labels))


def _place_all(fig, jobs) -> None:
    """Label every scatter once the layout is final (one layout pass for the whole figure)."""
    if jobs:
        fig.draw_without_rendering()
    for ax, x, y, labels in jobs:
        label_points(ax, x, y, labels, draw=False)


def pareto_cost(
    accuracy_df: pd.DataFrame,
    paper_df: pd.DataFrame | None = None,
    *,
    dataset: str | None = None,
    experiment: str | None = None,
    paper: bool = True,
) -> Figure:
    """Top-1 vs training cost with the Pareto frontier dashed (paper Figure 2 left, Figure 3 left).

    Panels: our runs against device-hours; against total training PFLOPs when `train_flops` is
    recorded; then one panel per paper table (`table` column of `paper_df`) against TPU-v3
    core-days (log x). Four panels are laid out 2 x 2.

    Args:
        accuracy_df: `accuracy.csv` rows (`model, dataset, img_size, epochs, top1, device_hours`
            or `train_seconds`, `train_flops`, `device_name`, `num_devices`). Rows of one model,
            resolution and epoch budget are averaged (seeds); the std is drawn as an error bar.
        paper_df: the paper's points (`paper_name, pretrain, img_size, epochs, top1, core_days,
            table`); default `paper_cost_points()` (Table 2, and Table 3's JFT-300M rows).
        dataset: which dataset's runs (default: the one with most rows).
        experiment: whose runs the "ours" panels show (default: the `compare` with the most
            rows; `tables.pick_experiment`): one experiment per panel, never a mix.
        paper: draw the paper panels.
    """
    acc = require(accuracy_df, "accuracy", "The pareto-cost figure")
    numeric(acc, "top1", "train_flops", "img_size", "epochs")
    acc["device_hours"] = device_hours(acc)
    acc = latest_per_run(acc)
    if "kind" in acc.columns:
        acc = acc[acc["kind"].astype(str) != "evaluate"]
    acc, dataset, experiment = pick_comparison(acc, dataset, experiment, "The pareto-cost figure")
    acc = acc[acc["top1"].notna()]
    if "train_flops" not in acc.columns:
        acc["train_flops"] = np.nan
    acc["pflops"] = acc["train_flops"] / 1e15
    # one point per recipe (its seeds averaged), never two recipes of one model name
    acc["_recipe"] = recipe_key(acc)
    keys = ["_recipe"] + [k for k in ("model", "img_size", "epochs") if k in acc.columns]
    acc["family"] = style.families(acc)
    agg = acc.groupby(keys, sort=False, dropna=False).agg(
        top1=("top1", "mean"), top1_std=("top1", "std"), n=("top1", "size"),
        device_hours=("device_hours", "mean"), pflops=("pflops", "mean"),
        family=("family", "first")).reset_index()
    several = agg["model"].duplicated(keep=False)
    epochs = agg["epochs"] if "epochs" in agg.columns else pd.Series(np.nan, index=agg.index)
    agg["label"] = [f"{m} {round(e):g}ep" if dup and e == e else str(m)
                    for m, e, dup in zip(agg["model"], epochs, several)]
    same = agg["label"].duplicated(keep=False)  # two recipes the epochs do not tell apart
    agg["label"] = [f"{lab} ({r.removeprefix('run:')[-8:]})" if dup else lab
                    for lab, r, dup in zip(agg["label"], agg["_recipe"], same)]
    panels = [(c, lab) for c, lab in (
        ("device_hours", "training cost (device-hours)"),
        ("pflops", "training compute (PFLOPs)"),
    ) if agg[c].notna().any()]
    if not panels:
        raise UserError(
            "The pareto-cost figure needs device_hours, train_seconds or train_flops in "
            "accuracy.csv; rerun `mixerbench pretrain / finetune` to record them."
        )
    if paper_df is None and paper:
        paper_df = paper_cost_points()
    groups = []
    if paper and paper_df is not None and len(paper_df):
        if "table" in paper_df.columns:
            groups = [(str(k), g) for k, g in paper_df.groupby("table", sort=True)]
        else:
            groups = [("Paper", paper_df)]
    n = len(panels) + len(groups)
    fig, axes = new_figure(2, 2) if n == 4 else new_figure(n)
    hw = _hardware(acc)
    jobs: list = []
    for ax, (col, xlabel) in zip(axes, panels):
        d = agg[agg[col].notna()].reset_index(drop=True)
        _scatter_families(ax, d[col], d["top1"], d["model"], d["label"], fams=d["family"])
        err = d[d["n"] > 1]
        if len(err):
            ax.errorbar(err[col], err["top1"], yerr=err["top1_std"], fmt="none",
                        ecolor="#888888", elinewidth=1, capsize=3, zorder=1)
        _frontier(ax, d[col], d["top1"])
        _log_x_if_wide(ax, d[col])
        _pad_limits(ax, d["top1"], d["top1_std"])
        where = f" on {hw}" if hw and col == "device_hours" else ""
        what = f"\n({experiment})" if experiment else ""
        _finish(ax, xlabel + where, f"{dataset} top-1 (%)",
                f"Ours: {dataset} top-1 vs {'cost' if col == 'device_hours' else 'compute'}{what}")
        jobs.append((ax, d[col], d["top1"], list(d["label"])))
    for ax, (name, g) in zip(axes[len(panels):], groups):
        _paper_panel(ax, g, "core_days", _PAPER_PANEL_TITLES.get(name, name),
                     "pre-training cost (TPU-v3 core-days, log)", jobs)
    _place_all(fig, jobs)
    return fig


def accuracy_throughput(
    accuracy_df: pd.DataFrame,
    throughput_df: pd.DataFrame,
    *,
    dataset: str | None = None,
    mode: str = "infer",
    experiment: str | None = None,
    paper: bool = True,
) -> Figure:
    """Top-1 against img/s per device, log x (paper Figure 3 right).

    Args:
        accuracy_df: `accuracy.csv` rows (`model, dataset, top1`, optional `experiment`); mean
            and std over runs, over the `compare` runs alone when there are any.
        throughput_df: `throughput.csv` rows (`model, mode, img_per_sec_mean, num_devices,
            device_name`); per recipe, its model's latest bench at its resolution (on the device
            it trained on where benched there; `tables.latest_bench`), its best batch size,
            divided by `num_devices`.
        dataset: which dataset's accuracy (default: the one with most rows).
        mode: `infer` or `train` throughput.
        paper: add a panel with the paper's Table 3 JFT-300M rows at 224 (TPU-v3 img/s/core).
    """
    acc = require(accuracy_df, "accuracy", "The accuracy-throughput figure")
    thr = require(throughput_df, "throughput", "The accuracy-throughput figure")
    numeric(acc, "top1")
    numeric(thr, "img_per_sec_mean", "num_devices")
    acc = latest_per_run(acc)
    # One point per model means one comparison: one experiment (the `compare` with the most
    # rows by default), so data-scaling or transfer runs of the same model do not blur it.
    acc, dataset, experiment = pick_comparison(acc, dataset, experiment,
                                               "The accuracy-throughput figure")
    thr = thr[(thr["mode"] == mode) & thr["img_per_sec_mean"].notna()]
    nd = thr["num_devices"].fillna(1).clip(lower=1) if "num_devices" in thr.columns else 1
    # img/s per device, from the latest bench of the model at the recipe's size (tables)
    thr = numeric(thr.assign(img_per_sec_mean=thr["img_per_sec_mean"] / nd), "img_size")
    numeric(acc, "img_size")
    acc = acc.assign(family=style.families(acc), _recipe=recipe_key(acc),
                     _crop=text(acc, "pipeline"), _compiled=text(acc, "compiled"))
    # one point per recipe and eval crop: its seeds averaged, never two recipes of one model
    # name, nor an `evaluate --crop` of its runs with their own crop
    agg = acc.groupby(["_recipe", "_crop", "model"], sort=False).agg(
        mean=("top1", "mean"), std=("top1", "std"), size=("top1", "size"),
        family=("family", "first"), img_size=("img_size", "first"),
        devices=("device_name", lambda d: set(text(d.to_frame(), "device_name"))),
        dtypes=("dtype", lambda d: set(text(d.to_frame(), "dtype"))),
        compiled=("_compiled", set)).reset_index()
    peers = set(zip(agg["model"], agg["img_size"]))
    agg["speed"] = [latest_bench(thr, m, size, devs, dts, comp, peers)[mode][0]
                    for m, size, devs, dts, comp in zip(agg["model"], agg["img_size"],
                                                        agg["devices"], agg["dtypes"],
                                                        agg["compiled"])]
    agg = agg[agg["speed"].notna() & agg["mean"].notna()].reset_index(drop=True)
    if agg.empty:
        raise UserError(
            "The accuracy-throughput figure needs models with both accuracy and "
            f"{mode} throughput rows; run `mixerbench bench --models ... --mode {mode}`."
        )
    fig, axes = new_figure(2 if paper else 1)
    ax = axes[0]
    jobs: list = []
    _scatter_families(ax, agg["speed"], agg["mean"], agg["model"], fams=agg["family"])
    err = agg[agg["size"] > 1]
    if len(err):
        ax.errorbar(err["speed"], err["mean"], yerr=err["std"], fmt="none", ecolor="#888888",
                    elinewidth=1, capsize=3, zorder=1)
    ax.set_xscale("log")
    ax.set_xlim(agg["speed"].min() / 1.5, agg["speed"].max() * 2.0)
    log_x(ax)
    _pad_limits(ax, agg["mean"], agg["std"])
    hw = _hardware(thr) or "this device"
    _finish(ax, f"{mode} throughput (img/s per device, log)",
            f"{dataset} top-1 (%)",
            f"Ours: {dataset} top-1 vs {mode} speed on {hw}"
            + (f"\n({experiment})" if experiment else ""))
    jobs.append((ax, agg["speed"], agg["mean"], list(agg["model"])))
    if paper:
        t3 = reference.load_table("table3")
        t3 = t3[(t3["pretrain"] == "jft300m") & (t3["img_size"] == 224)]
        _paper_panel(axes[1], t3, "throughput",
                     "Paper Table 3 (Fig. 3 right): JFT-300M,\nfine-tuned at 224, TPU-v3",
                     "throughput (img/s/core, TPU-v3, log)", jobs, frontier=False)
    _place_all(fig, jobs)
    return fig


# ----------------------------------------------------------------------------- Figure 2 right


_METRIC_LABELS = {"fewshot5": "linear 5-shot", "fewshot": "linear few-shot",
                  "finetune": "fine-tuned", "top1": "top-1", "linear": "linear probe"}


def _metric_label(m: str) -> str:
    key = str(m).lower().replace("-", "").replace("_", "")
    if key in _METRIC_LABELS:
        return _METRIC_LABELS[key]
    if key.startswith("fewshot") and key[7:].isdigit():
        return f"linear {key[7:]}-shot"
    return str(m)


def data_scaling(scaling_df: pd.DataFrame, *, dataset: str | None = None) -> Figure:
    """Top-1 against training-set fraction, one line per model, one panel per metric
    (few-shot and fine-tuned; paper Figure 2 right).

    Args:
        scaling_df: `scaling.csv` rows (`model, dataset, fraction` in (0, 1], `epochs`, `metric`,
            `top1`). Seeds are averaged; a band shows +-1 std where n > 1. Line style per family
            as in the paper (Mixer solid, ViT dashed, ResNet/BiT dotted).
        dataset: which dataset (default: the one with most rows).
    """
    df = require(scaling_df, "scaling", "The data-scaling figure")
    numeric(df, "fraction", "epochs", "top1")
    df, dataset = pick_dataset(df, dataset, "The data-scaling figure")
    df = df[df["fraction"].notna() & df["top1"].notna()]
    if df.empty:
        raise UserError("scaling.csv has no rows with both fraction and top1; "
                        "run `mixerbench reproduce data-scaling`.")
    if "metric" not in df.columns:
        df["metric"] = "top1"
    df["metric"] = df["metric"].fillna("top1").astype(str)
    # a point is one recipe's seeds on one subset: never two recipes of a model averaged
    df, left_out = one_measurement(df, ["model", "fraction", "metric"], lambda k: (
        f"{style.short_name(k[0])} at {k[1]:.0%} ({_metric_label(k[2])})"))
    metrics = sorted(df["metric"].unique(), key=lambda m: (not m.lower().startswith("few"), m))
    df = df.assign(family=style.families(df))
    fam = dict(zip(df["model"].astype(str), df["family"]))
    probes = _probe_note(df)
    fig, axes = new_figure(len(metrics))
    fractions = np.sort(df["fraction"].unique())
    epochs_at = df.groupby("fraction")["epochs"].agg(lambda s: s.dropna().unique())
    # the paper's Figure 2 right in the numbers its text states (reference/figures.csv): the
    # same four subsets at equal compute; no accuracy of any point is stated, so none is drawn
    notes = reference.figure_notes("figure2_right")
    epochs_rows = notes[notes["quantity"] == "pretrain_epochs"]
    paper = (" / ".join(epochs_rows["setting"]) + " of JFT-300M at "
             + " / ".join(f"{float(v):g}" for v in epochs_rows["value"]) + " epochs")
    said = notes[notes["quantity"] != "pretrain_epochs"]["note"].iloc[0]
    for ax, metric in zip(axes, metrics):
        d = df[df["metric"] == metric]
        models = sorted(d["model"].astype(str).unique(),
                        key=lambda m: (style.order().index(fam[m]), list(d["model"]).index(m)))
        for model in models:
            g = d[d["model"] == model].groupby("fraction")["top1"].agg(["mean", "std", "size"])
            x = g.index.to_numpy() * 100
            f = fam[model]
            ax.plot(x, g["mean"], linestyle=style.LINESTYLES[f], marker=style.MARKERS[f],
                    color=style.COLORS[f], label=style.short_name(model), linewidth=1.8,
                    markersize=5)
            if (g["size"] > 1).any():
                sd = g["std"].fillna(0)
                ax.fill_between(x, g["mean"] - sd, g["mean"] + sd, color=style.COLORS[f],
                                alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(fractions * 100))
        ax.xaxis.set_minor_locator(NullLocator())

        def fmt(v, _pos):
            f = v / 100
            ep = epochs_at.get(min(fractions, key=lambda q: abs(q - f)), [])
            pct = f"{v:g}%"
            return pct + (f"\n{round(ep[0]):g} ep" if len(ep) == 1 else "")

        ax.xaxis.set_major_formatter(FuncFormatter(fmt))
        _pad_limits(ax, d["top1"])
        _finish(ax, "training-set fraction (log; epochs scaled for equal compute)",
                f"{_metric_label(metric)} top-1 (%)",
                f"{dataset}: {_metric_label(metric)} vs data size")
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    handles, labels = axes[0].get_legend_handles_labels()
    # one legend for every panel, above them: never over the lines
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(handles), 3),
               fontsize=style.FONT_SIZE - 2, frameon=False)
    note = (f"Ours: {probes.strip()[0].upper()}{probes.strip()[1:]}.\n" if probes else "")
    if left_out:
        note += _wrap("Drawn: " + "; ".join(left_out) + ".", 85 * len(metrics)) + "\n"
    fig.supxlabel(note + _wrap(f"Paper, Figure 2 right ({notes['source'].iloc[0]}): {paper}, "
                               f"linear 5-shot ImageNet; {said}.", 85 * len(metrics)),
                  fontsize=style.FONT_SIZE - 2, color="#444444")
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


# ----------------------------------------------------------------------------- Figure 4

_SHUFFLE_ORDER = {"original": 0, "patch": 1, "global": 2}
_SHUFFLE_ALIASES = {"": "original", "none": "original", "original": "original", "orig": "original",
                    "patch": "patch", "patchpixel": "patch", "patch+pixel": "patch",
                    "global": "global", "globalpixel": "global", "pixel": "global"}
_SHUFFLE_LABELS = {"original": "original", "patch": "patch + pixel\nshuffle",
                   "global": "global pixel\nshuffle"}


def _shuffle_name(v) -> str:
    s = "" if v is None or v != v else str(v).strip().lower().replace("_", "").replace(" ", "")
    return _SHUFFLE_ALIASES.get(s, str(v))


def _paper_shuffle(family: str) -> str:
    """What the paper's Figure 4 text states for a family's model (reference/figures.csv), as
    one line under its panel: the patch and global shuffles' effect in its words and numbers."""
    notes = reference.figure_notes("figure4")
    rows = notes[notes["family"] == family]
    if rows.empty:
        return ""
    said = []
    for _, r in rows.iterrows():
        what = {"patch": "patch+pixel", "global": "global"}.get(r["setting"], r["setting"])
        if r["quantity"] == "change" and r["value"] == 0:
            said.append(f"{what}: matches original")
        elif r["value"] == r["value"] and r["value"] is not None:
            said.append(f"{what}: ~{float(r['value']):g}{r['unit']} drop")
        else:
            said.append(f"{what}: drops (no value)")
    return (f"paper, Fig. 4 ({rows['paper_name'].iloc[0]}, JFT-300M, 5-shot): "
            + "; ".join(said))


def shuffle(shuffle_df: pd.DataFrame, *, dataset: str | None = None,
            metrics_by_run: Mapping[str, pd.DataFrame] | None = None) -> Figure:
    """Accuracy of models trained and evaluated on original, patch+pixel-shuffled and globally
    shuffled inputs, one panel per model, Mixer first (paper Figure 4), with the paper's
    stated effects under each panel (`reference.figure_notes("figure4")`) and, where the runs'
    metrics.csv are at hand, their eval top-1 over training below (the paper draws curves over
    pre-training).

    Args:
        shuffle_df: `shuffle.csv` rows (`run_id, model, dataset, train_shuffle, eval_shuffle,
            metric, top1`). Shuffle names `none|original`, `patch`, `global`. Rows whose
            `eval_shuffle` differs from `train_shuffle` are left out when matching rows exist
            (the paper trains and evaluates on the same pipeline). Seeds averaged, std as error
            bar; each bar is labelled with its value and its change from `original` (points, and
            relative). Several metrics -> grouped bars.
        dataset: which dataset (default: the one with most rows).
        metrics_by_run: run id -> its metrics.csv rows; the rows' runs found here are drawn.
    """
    df = require(shuffle_df, "shuffle", "The shuffle figure")
    numeric(df, "top1")
    df, dataset = pick_dataset(df, dataset, "The shuffle figure")
    df, left_out = _bars(df)
    df["family"] = style.families(df)
    fam = dict(zip(df["model"].astype(str), df["family"]))
    models = sorted(df["model"].astype(str).unique(),
                    key=lambda m: (style.order().index(fam[m]), list(df["model"]).index(m)))
    settings = sorted(df["train_shuffle"].unique(), key=lambda s: (_SHUFFLE_ORDER.get(s, 9), s))
    metrics = sorted(df["metric"].unique(), key=_metric_order)
    probes = _probe_note(df)
    runs = {}  # model -> {setting: metrics of its run}
    for _, r in df.drop_duplicates(["model", "train_shuffle"]).iterrows():
        m = (metrics_by_run or {}).get(str(r.get("run_id", "")))
        if m is not None and len(m):
            runs.setdefault(str(r["model"]), {})[r["train_shuffle"]] = m
    ncols = min(3, len(models))
    curves_row = bool(runs) and len(models) <= 3
    nrows = math.ceil(len(models) / ncols) + curves_row
    fig, axes = new_figure(ncols, nrows, size=(min(5.8, 2.2 + 0.9 * len(settings) * len(metrics)),
                                               4.4))
    bar_axes, curve_axes = axes[:len(models)], axes[ncols:ncols + len(models)] if curves_row else []
    for extra in axes[len(models):ncols * (nrows - curves_row)] + axes[ncols + len(models):]:
        fig.delaxes(extra)
    ymax = df["top1"].max()
    width = 0.8 / len(metrics)
    hatches = ["", "//", "..", "xx"]
    for ax, model in zip(bar_axes, models):
        d = df[df["model"] == model]
        for k, metric in enumerate(metrics):
            g = d[d["metric"] == metric].groupby("train_shuffle")["top1"].agg(
                ["mean", "std", "size"]).reindex(settings)
            x = np.arange(len(settings)) + (k - (len(metrics) - 1) / 2) * width
            ok = g["mean"].notna().to_numpy()
            # fading from 0.9 to 0.4 over however many metrics there are (any number of
            # `evaluate --fewshot 1,5,10,25` rows draws)
            ax.bar(x[ok], g["mean"][ok], width * 0.92, color=style.COLORS[fam[model]],
                   alpha=0.9 - 0.5 * k / max(len(metrics) - 1, 1),
                   hatch=hatches[k % len(hatches)], edgecolor="black",
                   linewidth=0.6, label=_metric_label(metric) if len(metrics) > 1 else None)
            yerr = g["std"].where(g["size"] > 1).fillna(0.0)
            if (yerr[ok] > 0).any():
                ax.errorbar(x[ok], g["mean"][ok], yerr=yerr[ok], fmt="none", ecolor="black",
                            elinewidth=1, capsize=3)
            base = g["mean"].get("original", np.nan)
            for xi, s_, v, e in zip(x[ok], np.array(settings)[ok], g["mean"][ok], yerr[ok]):
                delta = ("" if s_ == "original" or base != base or not base else
                         f"\n{v - base:+.1f}\n({100 * (v - base) / base:+.0f}%)")
                ax.text(xi, v + e + 0.012 * max(ymax, 1), f"{v:.1f}{delta}", ha="center",
                        va="bottom", fontsize=style.FONT_SIZE - 2.5 - (len(metrics) > 2))
        ax.set_xticks(np.arange(len(settings)),
                      [_SHUFFLE_LABELS.get(s, s) for s in settings])
        # room above the tallest bar for its three-line label (past 100 %, ticks stop at 100)
        ax.set_ylim(0, ymax * 1.2 + 10 if ymax > 0 else 1)
        ax.set_yticks([t for t in ax.get_yticks() if 0 <= t <= 100])
        paper = _paper_shuffle(fam[model])
        _finish(ax, "input pipeline (train and eval)" + (f"\n{_wrap(paper, 60)}" if paper else ""),
                f"{dataset} top-1 (%)" if len(metrics) == 1 else f"{dataset} accuracy (%)",
                f"{style.short_name(model)} ({style.LABELS[fam[model]]})", legend=False)
        if len(metrics) > 1:  # below the panel, off the bars
            ax.legend(fontsize=style.FONT_SIZE - 2.5, loc="upper center", frameon=False,
                      bbox_to_anchor=(0.5, -0.42), ncols=len(metrics))
        ax.grid(False, axis="x")
    _shuffle_curves(curve_axes, models, settings, runs, fam, dataset)
    fig.suptitle(f"Shuffling invariance on {dataset} (one fixed permutation for all images)"
                 + probes + ("\n" + _wrap("drawn: " + "; ".join(left_out), 110)
                             if left_out else ""), fontsize=style.FONT_SIZE + 1)
    return fig


def _bars(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The shuffle rows the bars are drawn from, and what was left out: trained and evaluated
    under one permutation, and each bar one recipe's seeds on one subset, each run once (an
    `evaluate --shuffle` run again appends its rows again): never two recipes of a model, or a
    capped part beside the whole test split, averaged (`tables.one_measurement`)."""
    df = df[df["top1"].notna()].copy()
    df["train_shuffle"] = df["train_shuffle"].map(_shuffle_name)
    if "eval_shuffle" in df.columns:
        ev = df["eval_shuffle"].map(lambda v: None if v is None or v != v or v == "" else
                                    _shuffle_name(v))
        same = ev.isna() | (ev == df["train_shuffle"])
        if same.any():
            df = df[same]
    if "metric" not in df.columns:
        df["metric"] = "top1"
    df["metric"] = df["metric"].fillna("top1").astype(str)
    return one_measurement(df, ["model", "train_shuffle", "metric"], lambda k: (
        f"{style.short_name(k[0])} {_SHUFFLE_LABELS.get(k[1], k[1]).replace(chr(10), ' ')} "
        f"({_metric_label(k[2])})"))


def _shuffle_curves(axes, models, settings, runs: dict, fam: dict, dataset: str) -> None:
    """Each model's eval top-1 over training under each pipeline (the runs at hand)."""
    for ax, model in zip(axes, models):
        for setting in settings:
            m = runs.get(model, {}).get(setting)
            if m is None:
                continue
            m = numeric(m.copy(), "step", "top1")
            m = m[m["top1"].notna()]
            ax.plot(m["step"], m["top1"], color=style.COLORS[fam[model]],
                    linestyle={"original": "-", "patch": "--"}.get(setting, ":"),
                    marker="o" if len(m) < 30 else None, markersize=3, linewidth=1.6,
                    label=_SHUFFLE_LABELS.get(setting, setting).replace("\n", " "))
        _finish(ax, "training step", f"{dataset} eval top-1 (%)",
                f"{style.short_name(model)}: over training", legend=False)
        if ax.get_lines():
            ax.legend(fontsize=style.FONT_SIZE - 2.5, loc="upper center", frameon=False,
                      bbox_to_anchor=(0.5, -0.2), ncols=len(settings))


def _metric_order(m: str):
    """top-1 first, then few-shot by shot count (fewshot5 before fewshot10)."""
    m = str(m)
    if m.startswith("fewshot") and m[7:].isdigit():
        return (1, int(m[7:]), m)
    return (0 if m == "top1" else 2, 0, m)


def _probe_note(df: pd.DataFrame) -> str:
    """'; linear probes on cifar10, the training set' when the probe datasets are recorded."""
    if "probe_dataset" not in df.columns:
        return ""
    probes = sorted({str(p) for p in df["probe_dataset"].dropna() if str(p)})
    if not probes:
        return ""
    same = set(probes) <= {str(d) for d in df["dataset"].dropna()}
    return (f"\nlinear probes on {', '.join(probes)}"
            + (" (the training set; the paper probes ImageNet after JFT)" if same else ""))


# ----------------------------------------------------------------------------- Figure 5


def _as_array(w) -> np.ndarray:
    if hasattr(w, "detach"):  # a torch tensor, without importing torch here
        w = w.detach().float().cpu().numpy()
    return np.asarray(w, dtype=np.float32)


def _radial_frequency(units: np.ndarray) -> np.ndarray:
    """Mean spatial frequency of each (side, side) unit: power-weighted radius of its 2-D FFT."""
    n, side, _ = units.shape
    power = np.abs(np.fft.fft2(units)) ** 2
    power[:, 0, 0] = 0.0  # ignore the mean
    f = np.fft.fftfreq(side)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    return (power * radius).sum(axis=(1, 2)) / np.maximum(power.sum(axis=(1, 2)), 1e-12)


def unit_mosaic(weights, grid: tuple[int, int] | None = None, *, sort: bool = True) -> np.ndarray:
    """Tile the rows of a (D_S, S) token-MLP fc1 weight as sqrt(S) x sqrt(S) images.

    Each unit is scaled to [-1, 1] by its largest absolute weight; tiles are separated by a
    one-pixel NaN border. Returns an array of shape (rows*(side+1)-1, cols*(side+1)-1).
    """
    w = _as_array(weights)
    if w.ndim != 2:
        raise UserError(f"Token-mixing weights must be 2-D (D_S, S); got shape {w.shape}.")
    d_s, s = w.shape
    if d_s < 1 or s < 1:  # no unit or no token: nothing to tile (and a division by zero)
        raise UserError(f"Token-mixing weights of shape {tuple(w.shape)} hold no unit to draw; "
                        "pass the checkpoint of a Mixer that trained.")
    side = math.isqrt(s)
    if side * side != s:
        raise UserError(f"Token-mixing weights have S={s} tokens, not a square grid; "
                        "expected a (D_S, S) fc1 weight of a square-patch Mixer.")
    units = w.reshape(d_s, side, side)  # tokens are row-major over the patch grid (paper 7.1)
    if sort:
        units = units[np.argsort(_radial_frequency(units), kind="stable")]
    units = units / np.maximum(np.abs(units).max(axis=(1, 2), keepdims=True), 1e-12)
    if grid is None:
        cols = math.ceil(math.sqrt(d_s * 1.5))  # a little wider than tall
        rows = math.ceil(d_s / cols)
    else:
        rows, cols = grid
        if rows * cols < d_s:
            units = units[: rows * cols]
    step = side + 1
    mosaic = np.full((rows * step - 1, cols * step - 1), np.nan, dtype=np.float32)
    for k, u in enumerate(units):
        r, c = divmod(k, cols)
        mosaic[r * step:r * step + side, c * step:c * step + side] = u
    return mosaic


def token_mixing(
    weights: Any,
    grid: tuple[int, int] | None = None,
    *,
    title: str | None = None,
    sort: bool = True,
) -> Figure:
    """Hidden units of the first token-mixing MLPs drawn as sqrt(S) x sqrt(S) images (Figure 5).

    Args:
        weights: one (D_S, S) array or tensor (`blocks.0.mlp_tokens.fc1.weight`), a sequence of
            them, or a dict label -> array (one panel per block, e.g. blocks 0, 1, 2).
        grid: (rows, cols) of units per panel; default about 1.5 times wider than tall. Units
            beyond rows*cols are not drawn.
        title: figure title (e.g. the checkpoint and its training data).
        sort: order units by spatial frequency, low first (the paper sorts by frequency).
    """
    if isinstance(weights, Mapping):
        blocks = dict(weights)
    elif isinstance(weights, (list, tuple)):
        blocks = {f"block {i}": w for i, w in enumerate(weights)}
    else:
        blocks = {"block 0": weights}
    if not blocks:
        raise UserError("token-mixing needs at least one (D_S, S) weight; pass --checkpoint.")
    mosaics = {k: unit_mosaic(w, grid, sort=sort) for k, w in blocks.items()}
    shapes = {k: _as_array(w).shape for k, w in blocks.items()}
    h, w = next(iter(mosaics.values())).shape
    panel_w = 6.0
    fig, axes = new_figure(len(mosaics), size=(panel_w, panel_w * h / w + 0.9))
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")
    im = None
    for ax, (label, m) in zip(axes, mosaics.items()):
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=-1, vmax=1,
                       interpolation="nearest")
        d_s, s = shapes[label]
        side = math.isqrt(s)
        ax.set_title(f"{label}: {d_s} units, each {side}x{side} (S={s})",
                     fontsize=style.FONT_SIZE)
        ax.set_axis_off()
    cb = fig.colorbar(im, ax=axes, shrink=0.8, pad=0.01)
    cb.set_label("weight / max |weight| of the unit", fontsize=style.FONT_SIZE - 1)
    cb.ax.tick_params(labelsize=style.FONT_SIZE - 2)
    default = "Token-mixing MLP hidden units (fc1 rows)" + (", low frequency first" if sort else "")
    fig.suptitle(title or default, fontsize=style.FONT_SIZE + 1)
    return fig


# ----------------------------------------------------------------------------- curves


def curves(metrics_by_run: Mapping[str, pd.DataFrame], *, title: str | None = None) -> Figure:
    """Loss (train solid, eval dashed) and eval top-1 against step, one colour per run.

    Args:
        metrics_by_run: run id -> that run's `metrics.csv` (`step, epoch, train_loss, eval_loss,
            top1, top5, lr, img_per_sec, elapsed_s`); `epoch` is the x axis when `step` is absent.
        title: figure title (default names the number of runs).
    """
    runs = {k: v for k, v in (metrics_by_run or {}).items() if v is not None and len(v)}
    if not runs:
        raise UserError("The curves figure needs at least one run with metrics.csv; run "
                        "`mixerbench pretrain` or `mixerbench finetune` first.")
    fig, (ax_loss, ax_acc) = new_figure(2)
    palette = ["#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
               "#8C564B", "#7F7F7F", "#BCBD22"]
    xlabel = "step"
    for i, (run, m) in enumerate(runs.items()):
        m = numeric(m.copy(), "step", "epoch", "train_loss", "eval_loss", "top1")
        x = "step" if "step" in m.columns and m["step"].notna().any() else "epoch"
        xlabel = x
        c = palette[i % len(palette)]
        for col, ax, ls in (("train_loss", ax_loss, "-"), ("eval_loss", ax_loss, "--"),
                            ("top1", ax_acc, "-")):
            if col in m.columns and m[col].notna().any():
                d = m[m[col].notna()]
                ax.plot(d[x], d[col], ls, color=c, linewidth=1.6,
                        marker="o" if len(d) < 30 else None, markersize=3,
                        label=run if col != "eval_loss" else "_nolegend_")
    _finish(ax_loss, xlabel, "cross-entropy loss", "Loss (solid: train, dashed: eval)",
            legend=False)
    _finish(ax_acc, xlabel, "eval top-1 (%)", "Eval top-1", legend=False)
    handles, labels = ax_acc.get_legend_handles_labels()
    if not handles:
        handles, labels = ax_loss.get_legend_handles_labels()
    # below the panels, never over the data: one entry per run, in as many columns as fit
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 2),
               fontsize=style.FONT_SIZE - 2.5, frameon=False)
    fig.suptitle(title or f"Training curves ({len(runs)} run{'s' * (len(runs) > 1)})",
                 fontsize=style.FONT_SIZE + 1)
    return fig
