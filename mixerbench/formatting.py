"""The one way numbers are written for people: terminal tables, markdown tables, the README.

The results CSVs hold raw numbers (percent as 0-100 floats, FLOPs as counts, seconds); this
module turns them into text, one rule per kind of quantity, so a number reads the same wherever
it is shown:

- counts (parameters, images, steps) with thousands separators: 77,036;
- FLOPs and MACs in engineering form with their unit: 7.53 MFLOPs, 1.43 TFLOPs, 12.6 GMACs;
- accuracies (top-1, few-shot, differences) in percent with one decimal, a spread as
  mean ± std over n runs: 96.1 ± 0.6 (3); the paper's own numbers (`paper_*` columns, the
  `paper` command's tables) with the digits the paper printed, never rounded: 80.64, 85.8;
- rates (img/s) to 3 significant digits with separators: 1,393 img/s, 5.94 img/s;
- durations as seconds, minutes or hours, 2 significant digits at least: 42 s, 2.2 min;
  device-hours to 3 significant digits; ratios as 1.21x.

`value(column, v)` picks the rule from a results column's name, and `display(rows)` makes a
table of text from result rows (a spread merged into one cell, headers people read), which the
terminal (`mixerbench.view`) and the markdown files (`report.tables.to_markdown`) both print.
Nothing here imports anything heavy: the CLI's `--help` stays fast.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PLUS_MINUS = "±"
_PREFIXES = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool) or type(v).__name__ == "bool_"  # numpy's too


def missing(v: Any) -> bool:
    """Blank: None, NaN, pandas' NA, an empty string."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return True
    try:
        return bool(v != v)  # NaN and pandas.NA
    except (TypeError, ValueError):
        return False


def _float(v: Any) -> float | None:
    if missing(v) or _is_bool(v):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _sig(x: float, digits: int = 3) -> str:
    """`x` to `digits` significant digits, thousands separated, no exponent below 10^15."""
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    text = f"{x:,.{decimals}f}"
    # rounding may add a digit (9.996 -> 10.00): keep `digits` significant ones
    if decimals and len(text.replace(",", "").replace("-", "").replace(".", "").lstrip("0")) > digits:
        text = f"{x:,.{decimals - 1}f}"
    return text


def count(v: Any) -> str:
    """Parameters, images, steps: 77,036."""
    x = _float(v)
    if x is None:
        return ""
    return f"{x:,.0f}" if x == round(x) else _sig(x)


def engineering(v: Any, unit: str) -> str:
    """3 significant digits and an SI prefix: 7.53 MFLOPs, 1.43 TFLOPs, 512 FLOPs."""
    x = _float(v)
    if x is None:
        return ""
    for scale, prefix in _PREFIXES:
        if abs(x) >= scale * 0.9995:
            return f"{_sig(x / scale)} {prefix}{unit}"
    return f"{_sig(x)} {unit}"


def flops(v: Any) -> str:
    """A FLOP count: 1.43 TFLOPs."""
    return engineering(v, "FLOPs")


def pct(v: Any) -> str:
    """An accuracy in percent (0-100), one decimal: 96.1."""
    x = _float(v)
    return "" if x is None else f"{x:.1f}"


# How each number of the transcribed tables was printed (`reference` tells, `printed_as`).
_PRINTED: dict[float, str] = {}


def printed_as(cells: Iterable[str]) -> None:
    """Remember how the decimal numbers among `cells` were printed where they were transcribed
    from (the paper's tables: 80.00, 85.8), for `paper_pct`. A value printed two ways (85.8 and
    85.80) keeps the shorter: never a digit that was not printed."""
    for cell in cells:
        if "." not in cell:  # a count (300 epochs, 1384 img/s) says nothing of decimals
            continue
        try:
            x = float(cell)
        except ValueError:
            continue
        if math.isfinite(x) and (x not in _PRINTED or len(cell.strip()) < len(_PRINTED[x])):
            _PRINTED[x] = cell.strip()


def paper_pct(v: Any) -> str:
    """An accuracy the paper (or the official repository) printed, with its own digits: 80.64,
    80.00, 85.8 as printed (`printed_as`); a value not transcribed here, with up to two
    decimals and no trailing zero."""
    x = _float(v)
    if x is None:
        return ""
    if x in _PRINTED:
        return _PRINTED[x]
    text = f"{x:.2f}"
    return text[:-1] if text.endswith("0") else text


def signed(v: Any) -> str:
    """A difference of accuracies, one decimal with its sign: +0.3, -1.2."""
    x = _float(v)
    return "" if x is None else f"{x:+.1f}"


def spread(mean: Any, std: Any = None, n: Any = None, rule=pct) -> str:
    """mean ± std (n): 96.1 ± 0.6 (3); the std is left out when there is none (one run)."""
    m = rule(mean)
    if not m:
        return ""
    s = rule(std) if _float(std) is not None else ""
    if s and rule is rate:  # the std to the mean's last digit: 1,393 ± 29, 5.94 ± 0.16
        decimals = len(m.split(".")[1]) if "." in m else 0
        s = f"{_float(std):,.{decimals}f}"
    k = count(n) if _float(n) is not None else ""
    return f"{m}{f' {PLUS_MINUS} {s}' if s else ''}{f' ({k})' if k else ''}"


def rate(v: Any) -> str:
    """Images per second: 3 significant digits, 1,393 or 5.94."""
    x = _float(v)
    return "" if x is None else _sig(x)


def seconds(v: Any) -> str:
    """A duration: 42 s, 2.2 min, 16 min, 2.5 h, 3.1 days (2 significant digits at least)."""
    x = _float(v)
    if x is None:
        return ""
    if x < 100:
        return f"{_sig(x, 2) if x < 10 else f'{x:.0f}'} s"
    if x < 600:
        return f"{_sig(x / 60, 2)} min"
    if x < 6000:
        return f"{x / 60:.0f} min"
    if x < 3 * 86400:
        return f"{_sig(x / 3600, 2)} h"
    return f"{_sig(x / 86400, 2)} days"


def hours(v: Any) -> str:
    """Device-hours: 3 significant digits, 0.267."""
    x = _float(v)
    return "" if x is None else _sig(x)


def ratio(v: Any) -> str:
    """A ratio of two rates: 1.21x."""
    x = _float(v)
    return "" if x is None else f"{x:.2f}x"


def share(v: Any) -> str:
    """A fraction 0-1 shown in percent, one decimal: MFU 0.123 -> 12.3 %."""
    x = _float(v)
    return "" if x is None else f"{100 * x:.1f} %"


def number(v: Any) -> str:
    """Any other number: whole numbers as counts, the rest to 3 significant digits."""
    x = _float(v)
    if x is None:
        return ""
    if x == round(x) and abs(x) < 1e15:
        return count(x)
    if 1e3 <= abs(x) < 1e15:
        return _sig(x)
    return f"{x:.3g}"


def text(v: Any) -> str:
    if missing(v):
        return ""
    if _is_bool(v):
        return "yes" if v else "no"
    return str(v)


# ----------------------------------------------------------------------- by column name

# Columns of the results CSVs and tables that are not accuracies although their name is short:
# they are counted (`count`), sizes in pixels or shapes (`plain`).
_COUNTS = {"params", "params_no_head", "n", "steps", "images", "real_n", "runs", "datasets",
           "num_devices", "batch_size", "batch", "cells", "shots", "num_seeds", "seeds",
           "params_with_head_paper", "params_with_head_ours", "classes", "num_classes",
           "examples", "total_steps", "accum_steps", "evaluations", "fewshot_n", "fewshot_shots"}
_PLAIN = {"img_size", "patch_size", "patch", "layers", "hidden", "seq_len", "mlp_channels",
          "mlp_tokens", "width", "depth", "seed", "epoch", "paper_img_size", "index", "step",
          "params_m_paper", "params_m_ours", "warmup", "repeats", "steps_per_repeat"}
# Per-dataset top-1 columns of the Avg 5 table and the like are accuracies too.
_ACCURACY = re.compile(r"(^|_)(top1|top5|fewshot\d*|real|avg5?|paper_imagenet|official_cifar10|"
                       r"imagenet|cifar10|cifar100|pets|flowers102|minival_top1|accuracy)($|_)")


def rule(column: str, paper: bool = False):
    """The formatting rule of a results column, by its name (see the module docstring); with
    `paper` every accuracy is one the paper printed (the `paper` command's tables)."""
    c = str(column).lower()
    if c.endswith("_std"):
        return rule(c[: -len("_std")], paper)
    if c in _COUNTS:
        return count
    if c in _PLAIN:
        return lambda v: count(v) if _float(v) is not None and abs(_float(v)) >= 1e4 else number(v)
    if c in ("mfu",):
        return share
    if "ratio" in c or c in ("x_first", "speedup"):
        return ratio
    if c.endswith("diff") or c == "delta":
        return signed
    if c == "gflops":
        return lambda v: flops(None if _float(v) is None else _float(v) * 1e9)
    if c == "gmacs":
        return lambda v: engineering(None if _float(v) is None else _float(v) * 1e9, "MACs")
    if c.endswith("tflops"):  # a rate in TFLOP/s
        return lambda v: engineering(None if _float(v) is None else _float(v) * 1e12, "FLOP/s")
    if c == "macs" or c.endswith("_macs"):
        return lambda v: engineering(v, "MACs")
    if "flops" in c:
        return flops
    if "img_per_sec" in c or c.endswith("img_s"):
        return rate
    if c == "device_hours" or c.endswith("device_hours") or c.endswith("core_days"):
        return hours
    if c.endswith("seconds") or c.endswith("_s") or c == "wall_time":
        return seconds
    if c.endswith("_ms") or "_ms_" in c:
        return rate
    if _ACCURACY.search(c):
        return paper_pct if paper or c.startswith(("paper_", "official_")) else pct
    return number


def value(column: str, v: Any, paper: bool = False) -> str:
    """`v` of results column `column` as people read it ("" for a blank); `paper` as `rule`."""
    if isinstance(v, str) or _is_bool(v) or missing(v):
        return text(v)
    if _float(v) is None:
        return text(v)
    return rule(column, paper)(v)


# ---------------------------------------------------------------------------- a display table

# Headers people read for the results columns (the CSVs keep the column names).
HEADERS = {
    "model": "model", "dataset": "dataset", "img_size": "px", "params": "params",
    "gflops": "FLOPs/img", "train_img_per_sec": "train img/s", "infer_img_per_sec": "infer img/s",
    "img_per_sec": "img/s", "wall_time_s": "wall time", "device_hours": "device-h",
    "train_flops": "train FLOPs", "top1": "top-1 %", "top1_mean": "top-1 %",
    "fewshot_top1": "5-shot %", "paper_top1": "paper %", "diff": "Δ paper", "top5": "top-5 %",
    "train_seconds": "train time", "step_ms_median": "ms/step", "gmacs": "MACs/img",
    "achieved_tflops": "FLOP/s", "peak_tflops": "peak FLOP/s", "mfu": "MFU",
    "paper_img_per_sec_core": "paper img/s/core", "paper_ratio": "paper ratio",
    "batch_size": "batch", "device_name": "device", "params_no_head": "params w/o head",
    "real_top1": "ReaL %", "paper_real": "paper ReaL %", "top1_diff": "Δ top-1",
    "real_diff": "Δ ReaL", "fewshot5_mean": "5-shot %", "paper_fewshot5": "paper 5-shot %",
    "avg5": "Avg 5 %", "paper_avg5": "paper Avg 5 %", "avg5_diff": "Δ Avg 5", "avg": "mean %",
    "paper_imagenet": "paper ImageNet %", "imagenet_diff": "Δ ImageNet",
    "official_cifar10": "official CIFAR-10 %", "cifar10_diff": "Δ CIFAR-10",
    "minival_top1": "minival %", "patch_size": "patch", "timm_name": "timm",
    "fewshot_n": "5-shot runs", "fewshot_split": "5-shot split", "bench_id": "bench",
    "fewshot_shots": "shots",
    "recipe_id": "recipe", "settings": "settings", "split": "split",
    "paper_name": "paper name", "macs": "MACs/img", "img_per_sec_mean": "img/s",
}


@dataclass
class Column:
    key: str        # the results column (or the first of those merged into it)
    header: str
    numeric: bool   # right-aligned


@dataclass
class Display:
    """A table of text: `columns` in order, `rows` of cells (one string per column)."""

    columns: list[Column]
    rows: list[list[str]]

    def keys(self) -> list[str]:
        return [c.key for c in self.columns]

    def only(self, keys: Iterable[str]) -> "Display":
        """The columns named in `keys` (in this table's order), those present."""
        keep = [i for i, c in enumerate(self.columns) if c.key in set(keys)]
        return Display([self.columns[i] for i in keep], [[r[i] for i in keep] for r in self.rows])

    def drop_empty(self) -> "Display":
        """Without the columns that are blank in every row."""
        return self.only([c.key for i, c in enumerate(self.columns)
                          if any(r[i] for r in self.rows) or not self.rows])


def _spreads(columns: Sequence[str]) -> dict[str, tuple[str, str | None, str | None]]:
    """Columns shown as one `mean ± std (n)` cell: {shown key: (mean col, std col, n col)}.
    `X` or `X_mean` beside `X_std` merge; the run count `n` joins the first accuracy spread."""
    cols = set(columns)
    out, n_used = {}, False
    for c in columns:
        base = c[: -len("_mean")] if c.endswith("_mean") else c
        std = f"{base}_std"
        if std in cols and c != std:
            n = "n" if "n" in cols and not n_used and rule(c) is pct else None
            n_used = n_used or n is not None
            out[c] = (c, std, n)
    return out


def display(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
            headers: Mapping[str, str] | None = None, paper: bool = False) -> Display:
    """Result rows as a table of text, every number through `value` (`paper`: rows of the
    paper's own tables, their accuracies with the paper's digits).

    A column `X` (or `X_mean`) with its `X_std` beside it becomes one cell `mean ± std`, the
    first accuracy one with the run count: `96.1 ± 0.6 (3)`; the `X_std` and `n` columns go.
    Headers come from `HEADERS` (then `headers`), else the column name.
    """
    columns = list(columns) if columns is not None else list(dict.fromkeys(
        k for r in rows for k in r))
    spreads = _spreads(columns)
    merged = {c for m, s, n in spreads.values() for c in (s, n) if c}
    names = {**HEADERS, **(headers or {})}
    out_cols, getters = [], []
    for c in columns:
        if c in merged:
            continue
        numeric = any(not isinstance(r.get(c), str) and _float(r.get(c)) is not None
                      for r in rows)
        out_cols.append(Column(c, names.get(c, c), numeric))
        if c in spreads:
            m, s, n = spreads[c]
            getters.append(lambda r, m=m, s=s, n=n: spread(r.get(m), r.get(s), r.get(n), rule(m)))
        else:
            getters.append(lambda r, c=c: value(c, r.get(c), paper))
    return Display(out_cols, [[g(r) for g in getters] for r in rows])


def label(name: Any) -> str:
    """A model label for screens and figures: `mixer-t4[depth=2,width=64]` -> `mixer-t4 d2 w64`
    (width w, depth d, heads h, channels c, layers l: short, and never the zoo entry's own name
    for a model of another shape); other names as they are."""
    s = str(name)
    m = re.fullmatch(r"(.*?)\[(.*)\]", s)
    if not m:
        return s
    short = {"width": "w", "depth": "d", "num_heads": "h", "channels": "c", "layers": "l",
             "tokens_dim": "t", "channels_dim": "cd", "mlp_ratio": "r"}
    parts = []
    for item in m.group(2).split(","):
        k, _, v = item.partition("=")
        parts.append(f"{short.get(k, k + '=')}{v}" if k in short else f"{k}={v}")
    return f"{m.group(1)} {' '.join(parts)}"
