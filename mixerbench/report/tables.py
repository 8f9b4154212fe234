"""The paper's tables regenerated from our CSVs: pure functions DataFrame(s) -> DataFrame.

One function per table, no I/O:

- `table1(zoo_df)`: our model zoo beside the paper's Table 1 (architecture and parameter counts).
- `compare_table(accuracy_df, ...)`: one row per model and resolution, our accuracy, cost and
  speed beside the paper's top-1 (Tables 2/3) where the paper has one.
- `throughput_table(throughput_df)`: best img/s per model and mode; each Mixer as a ratio to the
  same-size ViT the paper compares it with (Table 3), measured alike, beside the paper's ratio.
- `released_table(released_df)`: released checkpoints on ImageNet val (top-1, ReaL) beside the
  paper's Tables 2-3 rows, with the differences and provenance.
- `avg5_table(avg5_df)`: the transfer protocol per source and resolution, the five datasets'
  top-1 and their mean beside the paper's "Avg 5" and ImageNet top-1 (Tables 2/3).
- `to_markdown(df)`: a pipe table without the `tabulate` package.

Inputs carry the columns declared in `mixerbench.results.SCHEMAS`; outputs are raw numbers
(formatting is `to_markdown`'s job).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mixerbench import reference
from mixerbench.errors import UserError
from mixerbench.results import PRODUCERS

COMPARE_COLUMNS = (
    "dataset", "model", "settings", "img_size", "split", "params", "gflops",
    "train_img_per_sec", "train_img_per_sec_std", "infer_img_per_sec", "infer_img_per_sec_std",
    "bench_id", "wall_time_s", "device_hours", "train_flops", "top1_mean", "top1_std", "n",
    "fewshot_shots", "fewshot_top1", "fewshot_n", "fewshot_split", "paper_top1", "diff",
    "paper_row", "recipe_id",
)
THROUGHPUT_COLUMNS = (
    "device_name", "threads", "dtype", "compiled", "mode", "model", "img_size", "batch_size",
    "img_per_sec",
    "img_per_sec_std", "step_ms_median", "params", "gmacs", "achieved_tflops", "mfu",
    "peak_tflops", "baseline", "same_run", "ratio", "paper_img_per_sec_core", "paper_ratio",
    "bench_id", "date",
)
RELEASED_COLUMNS = (
    "paper_name", "checkpoint", "model", "upstream", "img_size", "pipeline", "n", "top1",
    "paper_top1", "top1_diff", "real_top1", "paper_real", "real_diff", "real_n", "fewshot5_mean",
    "fewshot5_std", "paper_fewshot5", "paper_source", "note", "dtype", "device_name",
    "timm_version", "git_sha", "timestamp",
)
TABLE1_COLUMNS = (
    "model", "paper_name", "layers", "patch", "hidden", "seq_len", "mlp_channels", "mlp_tokens",
    "params_m_paper", "params_m_ours", "params_with_head_paper", "params_with_head_ours", "match",
)


# ----------------------------------------------------------------------------- helpers

def require(df: pd.DataFrame | None, table: str, what: str) -> pd.DataFrame:
    """`df` as a copy, or UserError naming the command that writes `<table>.csv`."""
    if df is None or len(df) == 0:
        raise UserError(
            f"{what} needs rows from {table}.csv and there are none; "
            f"run `{PRODUCERS[table]}` first to produce it."
        )
    return df.copy()


def numeric(df: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Coerce `columns` (those present) to floats in place; blanks become NaN, and so does an
    infinite cell (no measurement is infinite: a cost of inf is left empty, not plotted)."""
    for c in columns:
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce").replace([np.inf, -np.inf], np.nan)
    return df


def device_hours(df: pd.DataFrame) -> pd.Series:
    """`device_hours`, else `train_seconds * num_devices / 3600` (results/README.md)."""
    numeric(df, "device_hours", "train_seconds", "num_devices")
    dh = df["device_hours"] if "device_hours" in df.columns else pd.Series(np.nan, index=df.index)
    if "train_seconds" in df.columns:
        nd = df["num_devices"].fillna(1) if "num_devices" in df.columns else 1
        dh = dh.fillna(df["train_seconds"] * nd / 3600.0)
    return dh


def pick_dataset(df: pd.DataFrame, dataset: str | None, what: str) -> tuple[pd.DataFrame, str]:
    """Rows of `dataset` (default: the dataset with the most rows) and its name."""
    if "dataset" not in df.columns or df["dataset"].isna().all():
        return df, dataset or ""
    names = df["dataset"].dropna().astype(str)
    if dataset is None:
        counts = names.value_counts()
        dataset = sorted(counts[counts == counts.max()].index)[0]
    rows = df[df["dataset"].astype(str) == str(dataset)].copy()
    if rows.empty:
        known = ", ".join(sorted(names.unique()))
        raise UserError(f"{what}: no rows for dataset '{dataset}'; the CSV has: {known}.")
    return rows, str(dataset)


def latest_per_run(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run_id, dataset, split, img_size): the run's own training row when it has
    one, else its last evaluation per eval crop (`pipeline`: two crops are two measurements,
    and a caller that groups runs keeps them apart) of its trained weights where it has one
    (an evaluation of a checkpoint taken mid-training, `of_trained_weights`, stands for the
    run only when nothing else does). An `evaluate` of a trained run re-measures
    accuracy but has no cost columns, so it never replaces the training record (cost figures
    and compare averages would silently lose that run)."""
    if "run_id" not in df.columns:
        return df
    keys = [c for c in ("run_id", "dataset", "split", "img_size") if c in df.columns]
    df = df.reset_index(drop=True)  # rows keep the order they came in (a caller may sort them)
    has_id = df["run_id"].notna() & (df["run_id"].astype(str) != "")
    trained = (df["kind"].astype(str) != "evaluate") if "kind" in df.columns else has_id
    done = ~mid_training(df)
    ranked = df[has_id].assign(_trained=trained[has_id], _done=done[has_id],
                               _crop=text(df, "pipeline")[has_id])
    ranked = ranked.sort_values(["_trained", "_done"], kind="stable")
    kept = ranked.drop_duplicates(subset=keys + ["_crop"], keep="last")
    if len(kept):  # a run's training row stands for it alone
        owned = kept.groupby(keys, sort=False, dropna=False)["_trained"].transform("any")
        kept = kept[kept["_trained"] | ~owned]
    return df[df.index.isin(kept.index) | ~has_id].copy()


def pick_experiment(df: pd.DataFrame, experiment: str | None = None) -> tuple[pd.DataFrame, str]:
    """The rows of one experiment (`experiment` column): the one named, else the `compare` run
    with the most rows, else the experiment with the most rows. A figure that mixed experiments
    (data-scaling runs at 233 epochs beside a compare at 8) would compare unlike with unlike."""
    if "experiment" not in df.columns or df.empty:
        return df, experiment or ""
    names = df["experiment"].astype(object).where(df["experiment"].notna(), "").astype(str)
    if experiment is not None:
        if experiment not in set(names):
            known = ", ".join(sorted(set(names) - {""})) or "none"
            raise UserError(f"No rows of experiment '{experiment}'; the results have: {known}.")
        return df[names == experiment], experiment
    counts = names.value_counts()
    compares = [n for n in counts.index if n.startswith("compare")]
    chosen = compares[0] if compares else counts.index[0]
    return df[names == chosen], chosen


def pick_comparison(df: pd.DataFrame, dataset: str | None, experiment: str | None,
                    what: str) -> tuple[pd.DataFrame, str, str]:
    """The rows of one experiment on one dataset, and their names. With neither named, the
    experiment is chosen first (`pick_experiment`: the `compare` with the most rows), then its
    dataset: picking the dataset first would hide a compare on a smaller dataset behind the
    runs of another experiment on a bigger one."""
    if dataset is None:
        df, experiment = pick_experiment(df, experiment)
        df, dataset = pick_dataset(df, None, what)
    else:
        df, dataset = pick_dataset(df, dataset, what)
        df, experiment = pick_experiment(df, experiment)
    return df, dataset, experiment


# ----------------------------------------------------------------------------- Table 1

def table1(zoo_df: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 beside our zoo.

    Args:
        zoo_df: the model zoo (`mixerbench models --format csv`) with columns `name`,
            `params` (with a 1000-class head), `params_no_head`; `patch_size` is checked if present.

    Returns:
        One row per Mixer of Table 1, columns `TABLE1_COLUMNS`. `match` is True when our
        head-less count rounds to the paper's millions, the exact head-inclusive count equals
        VT models_test's where known, and the patch size agrees.
    """
    if zoo_df is None or len(zoo_df) == 0:
        raise UserError("table1 needs the model zoo; run `mixerbench models --format csv`.")
    ref = reference.load_table("table1")
    missing = {"name", "params", "params_no_head"} - set(zoo_df.columns)
    if missing:
        raise UserError(
            f"table1 needs zoo columns {sorted(missing)}; pass `mixerbench models` rows.")
    zoo = numeric(zoo_df.copy(), "params", "params_no_head", "patch_size")
    zoo = zoo.drop_duplicates("name", keep="last").set_index("name")
    out = ref.rename(columns={"params_m": "params_m_paper",
                              "params_with_head": "params_with_head_paper"})
    ours = zoo.reindex(out["model"])
    out["params_m_ours"] = (ours["params_no_head"].to_numpy() / 1e6).round().astype(float)
    out["params_with_head_ours"] = ours["params"].to_numpy()
    match = out["params_m_ours"] == out["params_m_paper"]
    exact = out["params_with_head_paper"].isna() | (
        out["params_with_head_ours"] == out["params_with_head_paper"])
    if "patch_size" in ours.columns:
        match &= ours["patch_size"].to_numpy() == out["patch"].to_numpy()
    out["match"] = (match & exact).astype(bool)
    return out[list(TABLE1_COLUMNS)].reset_index(drop=True)


# ----------------------------------------------------------------------------- compare

def compare_table(
    accuracy_df: pd.DataFrame,
    throughput_df: pd.DataFrame | None = None,
    fewshot_df: pd.DataFrame | None = None,
    dataset: str | None = None,
    *,
    zoo_df: pd.DataFrame | None = None,
    pretrain: str | None = None,
    shots: int | None = None,
    split: str | None = None,
    settings: dict[str, dict] | None = None,
) -> pd.DataFrame:
    """One row per recipe and split: the seeds of one recipe id averaged, with their cost, speed
    and few-shot accuracy, beside the paper's top-1.

    Args:
        accuracy_df: `accuracy.csv` rows (`run_id, recipe_id, model, dataset, split, img_size,
            top1, train_seconds, device_hours, train_flops`, provenance `num_devices`,
            `device_name`). Several rows of one run (re-evaluations) count once
            (`latest_per_run`). A row without a recipe id is a recipe of its own.
        throughput_df: `throughput.csv` rows; each recipe's model is matched by name and image
            size on the device its runs trained on where that was benched, and read from the
            latest bench that measured it (`bench_id`), its best batch size per mode.
        fewshot_df: `fewshot.csv` rows, joined by run id (never by model name): the recipe's
            runs' `shots`-shot probes of `dataset` on the whole of its split, one probe setting
            (`_fewshot_of`); `fewshot_n` is how many runs it averages.
        dataset: keep only this dataset (default: all, one block per dataset).
        zoo_df: the zoo (`name, params, gflops`); else params/GMACs come from that bench.
        pretrain: upstream dataset for the paper lookup (None: trained from scratch on `dataset`).
        shots: which few-shot rows to report (default: 5 where the runs were probed with 5
            shots, else the shot count most of them were probed with; `fewshot_shots`).
        split: keep only this evaluation split.
        settings: recipe id -> its settings (`config.recipe`, flattened to dotted keys) where
            known, to label recipes that share a model name by what differs between them.

    Returns:
        Columns `COMPARE_COLUMNS`, recipes in the order they first appear. `settings` says what
        sets a recipe apart from another of the same model (empty when none shares its name);
        `top1_std` is the sample std (NaN for n=1); on ImageNet `paper_top1` is the paper's row
        of the model, pre-training and resolution (`reference.reference_for`; never the row of
        another resolution) and `paper_row` says which, or that none is comparable;
        `diff = top1_mean - paper_top1`.
    """
    acc = require(accuracy_df, "accuracy", "The compare table")
    numeric(acc, "img_size", "top1", "train_seconds", "train_flops", "num_devices")
    acc["device_hours"] = device_hours(acc)
    if dataset is not None:
        acc, dataset = pick_dataset(acc, dataset, "The compare table")
    if split is not None and "split" in acc.columns:
        acc = acc[acc["split"].astype(str) == split]
    acc = latest_per_run(acc)
    acc["_recipe"] = recipe_key(acc)
    acc["_split"] = text(acc, "split")
    acc["_crop"] = text(acc, "pipeline")  # an evaluate's other crop is another measurement

    thr = None
    if throughput_df is not None and len(throughput_df):
        thr = numeric(throughput_df.copy(), "img_size", "img_per_sec_mean", "img_per_sec_std",
                      "params", "gmacs")
    few = None
    if fewshot_df is not None and len(fewshot_df):
        few = numeric(fewshot_df.copy(), "shots", "top1_mean")
        few = few[few["shots"] == shots] if shots is not None else few
    zoo = None
    if zoo_df is not None and len(zoo_df):
        zoo = numeric(zoo_df.copy(), "params", "gflops").drop_duplicates("name").set_index("name")

    peers = set(zip(acc["model"], acc["img_size"]))
    rows = []
    for (ds, key, sp, crop), g in acc.groupby(["dataset", "_recipe", "_split", "_crop"],
                                              sort=False, dropna=False):
        model, img_size = g["model"].iloc[0], g["img_size"].iloc[0]
        top1 = g["top1"].dropna()
        bench = latest_bench(thr, model, img_size, set(text(g, "device_name")),
                             set(text(g, "dtype")), set(text(g, "compiled")), peers)
        params, gflops = bench["params"], 2.0 * bench["gmacs"]  # 1 MAC = 2 FLOPs
        if zoo is not None and model in zoo.index:
            params, gflops = zoo.at[model, "params"], zoo.at[model, "gflops"]
        fs, fs_n, fs_split, fs_shots = _fewshot_of(
            few, g["run_id"], ds, sp,
            crop or (settings or {}).get(key, {}).get("data.eval_pipeline"),
            set(text(g, "dtype")) - {""})
        size = None if img_size != img_size else int(img_size)
        # the paper reports ImageNet only: a run measured on ImageNet, pre-trained on `pretrain`
        # (or trained there from scratch: the paper's "pre-trained on ImageNet" rows)
        row_ref = (reference.reference_for(pretrain or "imagenet", str(model), size)
                   if _is_imagenet(ds, sp) else None)
        paper = row_ref["top1"] if row_ref else None
        mean = float(top1.mean()) if len(top1) else math.nan
        rows.append({
            "dataset": ds, "model": model, "settings": "", "img_size": img_size, "split": sp,
            "params": params, "gflops": gflops,
            # the spread over repeats beside each rate: a gap inside it orders nothing
            "train_img_per_sec": bench["train"][0], "train_img_per_sec_std": bench["train"][1],
            "infer_img_per_sec": bench["infer"][0], "infer_img_per_sec_std": bench["infer"][1],
            "bench_id": bench["bench_id"],
            "wall_time_s": g["train_seconds"].mean() if "train_seconds" in g else math.nan,
            "device_hours": g["device_hours"].mean(),
            "train_flops": g["train_flops"].mean() if "train_flops" in g else math.nan,
            "top1_mean": mean,
            "top1_std": float(top1.std(ddof=1)) if len(top1) > 1 else math.nan,
            "n": int(len(top1)),
            "fewshot_shots": fs_shots, "fewshot_top1": fs, "fewshot_n": fs_n,
            "fewshot_split": fs_split,
            "paper_top1": math.nan if paper is None else paper,
            "diff": math.nan if paper is None else mean - paper,
            "paper_row": row_ref["note"] if row_ref else "",
            "recipe_id": key if not key.startswith(_RUN_ONLY) else "",
            "_recipe": key, "_crop": crop,
        })
    out = pd.DataFrame(rows, columns=[*COMPARE_COLUMNS, "_recipe", "_crop"])
    out["settings"] = crop_labels(out, recipe_labels(out, settings or {}))
    return out.drop(columns=["_recipe", "_crop"])


def _is_imagenet(dataset, split: str) -> bool:
    """Whether a number is on ImageNet's validation images (the paper's only per-model numbers;
    a capped part of them is not the paper's measurement)."""
    from mixerbench.data import canonical_name

    return canonical_name(str(dataset)) == "imagenet-1k" and "[" not in split


# A row without a recipe id (a run recorded before recipes, whose folder is gone) is a recipe
# of its own: keyed by its run id, never averaged with another run.
_RUN_ONLY = "run:"


def text(df: pd.DataFrame, column: str) -> pd.Series:
    """A text column with blanks as "" (an all-blank column reads back as floats)."""
    if column not in df.columns:
        return pd.Series("", index=df.index, dtype=object)
    return df[column].astype(object).where(df[column].notna(), "").astype(str)


def of_trained_weights(df: pd.DataFrame) -> pd.DataFrame:
    """`df` without the rows that measured a checkpoint taken while its run still trained (a
    run id, no recipe id yet, and the step of the weights: `evaluate` of an unfinished run), so
    a table, figure or verdict is never about a half-trained model, nor takes such a probe for
    its run's. Rows that did not record their step (older versions) are kept, as before."""
    return df[~mid_training(df)]


def mid_training(df: pd.DataFrame) -> pd.Series:
    """Which rows `of_trained_weights` leaves out (a mask: callers that rank rather than drop
    them, `latest_per_run` and the report's run sections, share it)."""
    if "steps" not in df.columns or "run_id" not in df.columns:
        return pd.Series(False, index=df.index)
    return (text(df, "run_id") != "") & (text(df, "recipe_id") == "") & df["steps"].notna()


def recipe_key(df: pd.DataFrame) -> pd.Series:
    """What a table groups rows by: the recipe id, or `run:<run id>` for a row without one."""
    rid, run = text(df, "recipe_id"), text(df, "run_id")
    return rid.where(rid != "", _RUN_ONLY + run)


def recipe_labels(table: pd.DataFrame, settings: dict[str, dict]) -> list[str]:
    """For each row of `table` (columns dataset, model, `_recipe`), what sets its recipe apart
    from the other recipes of the same model and dataset in the table: the settings whose values
    differ (`steps=20`), or the recipe id where a recipe's settings are not known; "" for a
    recipe that no other shares its model with."""
    labels = [""] * len(table)
    groups = table.groupby(["dataset", "model"], sort=False, dropna=False).indices
    for idx in groups.values():
        keys = list(dict.fromkeys(table["_recipe"].iloc[i] for i in idx))
        if len(keys) < 2:
            continue
        known = [k for k in keys if k in settings]
        differ = sorted({name for k in known for name in settings[k]
                         if len({repr(settings[j].get(name)) for j in known}) > 1})
        for i in idx:
            k = table["_recipe"].iloc[i]
            if k in settings and differ:
                labels[i] = ", ".join(f"{n}={_setting(settings[k].get(n))}" for n in differ)
            else:
                labels[i] = f"recipe {k.removeprefix(_RUN_ONLY)}"
    return labels


def crop_labels(table: pd.DataFrame, labels: list[str]) -> list[str]:
    """`labels` with the eval crop added (`crop eval-resize`; `crop unrecorded` for a row an
    older version wrote without one) to each row of a recipe that the table shows under more
    than one crop (an `evaluate --crop` of its runs beside their own)."""
    out = list(labels)
    groups = table.groupby(["dataset", "_recipe", "split"], sort=False, dropna=False).indices
    for idx in groups.values():
        if len({table["_crop"].iloc[i] for i in idx}) > 1:
            for i in idx:
                crop = f"crop {table['_crop'].iloc[i] or 'unrecorded'}"
                out[i] = f"{out[i]}, {crop}" if out[i] else crop
    return out


def _setting(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def latest_bench(thr: pd.DataFrame | None, model, img_size, devices: set[str],
                 dtypes: set[str] = frozenset(), compiled: set[str] = frozenset(),
                 peers: set[tuple] = frozenset()) -> dict:
    """The latest bench of `model` at `img_size`: on one of `devices` in one of `dtypes` (the
    precision its runs trained in) and `compiled` alike (eager runs: eager benches) when it was
    benched so, else on one of `devices`, else on any; among those, the bench that also timed
    the most of `peers` ((model, img_size) of the other rows of a table or figure: their
    speeds then share the same minutes of a shared machine, and a later bench of one model
    alone does not replace them), then the last `bench_id` in file order (rows are appended);
    in that bench the fastest batch size per mode (the paper reports the best batch size).
    Returns dict(train, infer: (img/s, its std over repeats), bench_id, date, params, gmacs);
    NaN / "" where none."""
    out = dict(train=(math.nan, math.nan), infer=(math.nan, math.nan), bench_id="", date="",
               params=math.nan, gmacs=math.nan)
    if thr is None or thr.empty:
        return out
    rows = thr[(thr["model"] == model) & thr["img_per_sec_mean"].notna()]
    rows = rows[rows["img_size"] == img_size] if img_size == img_size else rows.iloc[0:0]
    here = rows[text(rows, "device_name").isin(devices)]
    alike = here[text(here, "dtype").isin(dtypes)]  # a bf16 run's speed is not fp32's
    if compiled and "compiled" in alike.columns:  # nor a compiled step an eager run's
        same = alike[text(alike, "compiled").str.lower().isin({str(c).lower() for c in compiled})]
        alike = same if not same.empty else alike
    rows = alike if not alike.empty else here if not here.empty else rows
    if rows.empty:
        return out
    bench = text(rows, "bench_id")
    last = bench.iloc[-1]
    if peers and last:
        ids = list(dict.fromkeys(bench))  # file order
        timed = thr[text(thr, "bench_id").isin(ids)]
        cover = {b: len(set(zip(g["model"], g["img_size"])) & set(peers))
                 for b, g in timed.groupby(text(timed, "bench_id"))}
        last = max(reversed(ids), key=lambda b: cover.get(b, 0))  # most peers; ties: the latest
    # rows recorded before benches had ids: each mode's last row alone
    rows = rows[bench == last] if last else rows.groupby("mode", sort=False).tail(1)
    for mode in ("train", "infer"):
        m = rows[rows["mode"] == mode]
        if not m.empty:
            best = m.loc[m["img_per_sec_mean"].idxmax()]
            out[mode] = (float(best["img_per_sec_mean"]), float(best.get("img_per_sec_std", math.nan)))
    out.update(bench_id=last, date=str(text(rows, "timestamp").iloc[-1])[:10],
               params=float(rows["params"].dropna().iloc[-1]) if rows["params"].notna().any() else math.nan,
               gmacs=float(rows["gmacs"].dropna().iloc[-1]) if rows["gmacs"].notna().any() else math.nan)
    return out


def _fewshot_of(few: pd.DataFrame | None, runs: pd.Series, dataset, split: str,
                own_crop: str | None = None,
                own_dtypes: set[str] = frozenset()) -> tuple[float, int, str, float]:
    """(mean, runs, split, shots) of the few-shot probes of `runs` on `dataset`, joined by run
    id: the probes of one shot count, one split and one probe setting (l2, draws, crop,
    resolution, shots' split, precision), chosen in this order: 5 shots (the paper's) before
    others, the whole of `split` before a capped part of it, the probe `compare --fewshot` makes
    (`_compares`: the default l2 and draws, shots from train, the runs' own eval crop
    `own_crop`, their recipe's `data.eval_pipeline`, where known, in the precision the runs
    trained in, `own_dtypes`, as a compare on their device probes) before another (`evaluate
    --crop resize --fewshot 5`, `--seeds 1` or a bf16 probe of fp32 runs is not the probe
    their compare made), then the setting most of the runs were probed with (the first of
    equals). A row recorded before probes recorded their split probed the whole split."""
    none = (math.nan, 0, "", math.nan)
    if few is None or few.empty:
        return none
    few = of_trained_weights(few)
    f = few[few["run_id"].astype(str).isin(set(runs.astype(str)))
            & (text(few, "dataset") == str(dataset)) & few["top1_mean"].notna()]
    if f.empty:
        return none
    whole = split.split("[", 1)[0]
    probed = text(f, "split").replace("", whole)
    f = f.assign(_probed=probed)[probed.str.split("[", n=1).str[0] == whole]
    if f.empty:
        return none
    probe = ["shots", "_probed"] + [c for c in PROBE_SETTINGS if c in f.columns]
    setting = pd.Series(["|".join(map(str, t)) for t in f[probe].itertuples(index=False)],
                        index=f.index)
    counts = setting.groupby(setting, sort=False).size()
    first = {k: f.loc[setting == k].iloc[0] for k in counts.index}
    chosen = max(counts.index, key=lambda k: (
        first[k]["shots"] == 5, first[k]["_probed"] == whole,
        _compares(first[k], own_crop, own_dtypes),
        counts[k]))
    f = f[setting == chosen].drop_duplicates("run_id", keep="last")
    return (float(f["top1_mean"].mean()), int(len(f)), str(f["_probed"].iloc[0]),
            float(f["shots"].iloc[0]))


def _compares(probe: pd.Series, own_crop: str | None, own_dtypes: set[str] = frozenset()
              ) -> bool:
    """Whether a few-shot row is the probe `compare --fewshot` makes: shots from `train`, the
    default l2 and draws (`evaluate`'s), through the run's own eval crop and in one of the
    runs' own precisions, where they are known."""
    from mixerbench.evaluate import FEWSHOT_L2, FEWSHOT_SEEDS

    return (str(probe.get("shots_split", "train")) in ("train", "nan", "")
            and probe.get("l2_reg", FEWSHOT_L2) == FEWSHOT_L2
            and probe.get("num_seeds", FEWSHOT_SEEDS) == FEWSHOT_SEEDS
            and (own_crop is None or str(probe.get("pipeline", "")) == own_crop)
            and (not own_dtypes or str(probe.get("dtype", "")) in own_dtypes))


# The columns of a few-shot row that say how it probed (besides its split): one table cell
# averages probes that agree on all of them.
PROBE_SETTINGS = ("shots_split", "l2_reg", "num_seeds", "pipeline", "img_size", "dtype")


def one_measurement(df: pd.DataFrame, keys: list[str], label) -> tuple[pd.DataFrame, list[str]]:
    """The rows a figure's point averages, per `keys` group (a model at one fraction, one
    shuffle, one metric): each run's trained weights once (its last row; a checkpoint taken
    mid-training is left out, `of_trained_weights`), the seeds of one recipe (the latest;
    two recipes of one model name are never averaged), one subset of the images (the whole
    split where the recipe has it, else its latest capped part), one eval crop (`pipeline`:
    the one most of those rows went through) and one precision (`dtype`, chosen alike).
    Returns those rows and one note per group that had more (`label(key)` names the group),
    for the figure to say what it left out."""
    df = of_trained_weights(df).reset_index(drop=True)
    df = df.assign(_recipe=recipe_key(df), _split=text(df, "split"), _crop=text(df, "pipeline"),
                   _dtype=text(df, "dtype"))
    if "run_id" in df.columns:  # a row without a run id is an observation of its own
        once = [c for c in ("run_id", *keys, "eval_shuffle", "_split", "_crop", "_dtype")
                if c in df.columns]
        ided = df["run_id"].notna()
        df = pd.concat([df[~ided], df[ided].drop_duplicates(once, keep="last")]).sort_index()
    kept, notes = [], []
    for key, g in df.groupby(keys, sort=False, dropna=False):
        said = []
        if g["_recipe"].nunique() > 1:
            said.append(f"the latest of {g['_recipe'].nunique()} recipes")
            g = g[g["_recipe"] == g["_recipe"].iloc[-1]]
        whole = g[~g["_split"].str.contains("[", regex=False)]
        split = (whole if len(whole) else g)["_split"].iloc[-1]
        if g["_split"].nunique() > 1:
            said.append(f"on {split or 'its split'} only")
        g = g[g["_split"] == split]
        # an `evaluate --crop`, or one in another precision (a GPU's bf16 of CPU-trained
        # runs), beside the sweep's own: one crop and one precision, each the one most of the
        # rows have (of equals, the first recorded)
        for column, said_as, blank in (("_crop", "through {} only", "an unrecorded crop"),
                                       ("_dtype", "in {} only", "an unrecorded precision")):
            if g[column].nunique() > 1:
                counts = g.groupby(column, sort=False).size()
                value = max(counts.index, key=lambda c: counts[c])
                said.append(said_as.format(value or blank))
                g = g[g[column] == value]
        kept.append(g)
        if said:
            notes.append(f"{label(key)}: {', '.join(said)}")
    out = pd.concat(kept).sort_index() if kept else df.iloc[0:0]
    return out.drop(columns=["_recipe", "_split", "_crop", "_dtype"]), notes


def short_labels(names) -> list[str]:
    """Model labels for screens and figures: the zoo name with its shape overrides in short
    (`mixer-t4[depth=2,width=64]` -> `mixer-t4 d2 w64`, `formatting.label`: never the zoo
    entry's own name for a model of another shape), unless two models would then share one
    label; the CSVs keep the full name."""
    from mixerbench.formatting import label

    names = [str(n) for n in names]
    short = [label(n) for n in names]
    clash = {s for s in short if len({n for n, t in zip(names, short) if t == s}) > 1}
    return [n if s in clash else s for n, s in zip(names, short)]


def compare_view(table: pd.DataFrame) -> pd.DataFrame:
    """The compare table as people read it (terminal, markdown): short model labels, and
    without the columns no row fills: `paper_top1` / `diff` when the paper has no number for
    any row (a dataset it did not use), `settings` when no two recipes share a model, the
    few-shot columns when nothing was probed, the speed columns when nothing was benched."""
    view = table.copy()
    view["model"] = short_labels(view["model"])
    empty = [c for c in ("paper_top1", "diff") if c in view.columns and view[c].isna().all()]
    if "paper_row" in view.columns and not view["paper_row"].astype(bool).any():
        empty.append("paper_row")
    if "settings" in view.columns and not view["settings"].astype(bool).any():
        empty.append("settings")
    if "fewshot_n" in view.columns and not view["fewshot_n"].any():
        empty += ["fewshot_shots", "fewshot_top1", "fewshot_n", "fewshot_split"]
    speed = [c for c in view.columns if c.endswith("img_per_sec") or c.endswith("img_per_sec_std")]
    if "bench_id" in view.columns and not view["bench_id"].astype(bool).any():
        empty += ["bench_id", *speed]
    return view.drop(columns=[c for c in empty if c in view.columns])


TRANSFER_COLUMNS = ("model", "upstream", "dataset", "how", "resolution", "img_size", "steps",
                    "split", "top1", "train_seconds", "run_id", "recipe_id")


def transfer_table(accuracy_df: pd.DataFrame) -> pd.DataFrame:
    """Paper section 3 transfer: fine-tuned (at 1x and Kx) against from-scratch runs.

    Args:
        accuracy_df: `accuracy.csv` rows of `reproduce transfer` (`experiment` "transfer"):
            the upstream pre-training run, fine-tuning runs whose `init` is that run's directory,
            and a from-scratch run on the downstream dataset.

    Returns:
        One row per downstream run, columns `TRANSFER_COLUMNS`: `how` is finetune or scratch,
        `resolution` the fine-tuning size over the upstream size (`2x`: the block-diagonal
        expansion of paper App. C), `upstream` the dataset the fine-tuned weights came from.
    """
    acc = require(accuracy_df, "accuracy", "The transfer table")
    acc = latest_per_run(acc)
    if "experiment" in acc.columns:
        acc = acc[acc["experiment"].astype(str) == "transfer"]
    acc = acc[acc["kind"].astype(str) != "evaluate"]
    if acc.empty:
        raise UserError("accuracy.csv has no transfer runs; run `mixerbench reproduce transfer`.")
    numeric(acc, "img_size", "steps", "top1", "train_seconds")
    by_id = {str(r["run_id"]): r for _, r in acc.iterrows()}
    sources = {Path(str(i)).name for i in acc["init"].dropna().astype(str) if i}
    rows = []
    for _, r in acc.iterrows():
        rid = str(r["run_id"])
        if rid in sources:
            continue  # the upstream pre-training run itself
        up = by_id.get(Path(str(r["init"])).name) if isinstance(r["init"], str) and r["init"] else None
        k = r["img_size"] / up["img_size"] if up is not None else 1.0
        rows.append(dict(model=r["model"], upstream=up["dataset"] if up is not None else "",
                         dataset=r["dataset"], how="finetune" if up is not None else "scratch",
                         resolution=f"{k:g}x", img_size=r["img_size"], steps=r["steps"],
                         split=r["split"], top1=r["top1"], train_seconds=r["train_seconds"],
                         run_id=rid, recipe_id=r["recipe_id"]))
    return pd.DataFrame(rows, columns=list(TRANSFER_COLUMNS))


# ------------------------------------------------------------------------ released weights

def released_table(released_df: pd.DataFrame) -> pd.DataFrame:
    """Released checkpoints on ImageNet val beside the paper's Tables 2-3 (`reproduce released`).

    Args:
        released_df: `released.csv` rows; the latest per (checkpoint, dataset, split) is shown.

    Returns:
        Columns `RELEASED_COLUMNS`: ours (`top1`, `real_top1`, `fewshot5_mean`), the paper's row
        for `paper_name` pre-trained on `upstream` at `paper_img_size` (`paper_top1`,
        `paper_real`, `paper_source`) and ours minus the paper's (`*_diff`, points), with the
        provenance of each measurement. The paper gives no ImageNet 5-shot value for these
        models, so `paper_fewshot5` is empty.
    """
    df = require(released_df, "released", "The released-weights table")
    numeric(df, "img_size", "n", "top1", "real_top1", "real_n", "fewshot5_mean", "fewshot5_std",
            "paper_img_size")
    df = df.reset_index(drop=True).drop_duplicates(["checkpoint", "dataset", "split"], keep="last")
    rows = []
    for _, r in df.iterrows():
        size = r["paper_img_size"]
        name = "" if pd.isna(r["paper_name"]) else str(r["paper_name"])
        paper = reference.comparable_row(name, "" if pd.isna(r["upstream"]) else str(r["upstream"]),
                                         None if pd.isna(size) else int(size),
                                         None if pd.isna(r["pipeline"]) else str(r["pipeline"]))
        ours_real = None if pd.isna(r["real_top1"]) else float(r["real_top1"])
        p_top1, p_real = paper["top1"], paper["top1_real"]
        where = paper["note"]
        rows.append(dict(
            paper_name=r["paper_name"], checkpoint=r["checkpoint"], model=r["model"],
            upstream=r["upstream"], img_size=r["img_size"], pipeline=r["pipeline"], n=r["n"],
            top1=r["top1"], paper_top1=p_top1,
            top1_diff=None if p_top1 is None else float(r["top1"]) - p_top1,
            real_top1=ours_real, paper_real=p_real,
            real_diff=None if p_real is None or ours_real is None else ours_real - p_real,
            real_n=r["real_n"], fewshot5_mean=r["fewshot5_mean"], fewshot5_std=r["fewshot5_std"],
            paper_fewshot5=None, paper_source=where, note=r["note"],
            **{k: r[k] for k in ("dtype", "device_name", "timm_version", "git_sha", "timestamp")}))
    return pd.DataFrame(rows, columns=list(RELEASED_COLUMNS))


# ---------------------------------------------------------------------------------- avg 5

# The paper's five downstream datasets in its order (registry names; "Avg 5", paper section 3).
AVG5_DATASETS = ("imagenet-1k", "cifar10", "cifar100", "pets", "flowers102")
AVG5_HEAD = ("model", "upstream", "budget", "resolution", "img_size")
AVG5_TAIL = ("avg", "datasets", "avg5", "paper_avg5", "avg5_diff", "paper_imagenet",
             "imagenet_diff", "official_cifar10", "cifar10_diff", "runs", "init", "paper_row",
             "note")


def avg5_table(avg5_df: pd.DataFrame) -> pd.DataFrame:
    """The transfer protocol beside the paper's "Avg 5" (Tables 2-3).

    Args:
        avg5_df: `avg5.csv` rows (`reproduce avg5`): one per fine-tuning run reported on a
            dataset's test split after lr selection on its minival.

    Returns:
        One row per (model, upstream, budget, resolution, img_size, init): a column per dataset
        with its test top-1, the mean over the rows of one recipe (its seeds; `runs` is the
        fewest rows behind a dataset's cell; where a dataset was fine-tuned under two recipes,
        the latest one, and `note` says so), the paper's five first and any other after; `avg`
        the mean over the datasets the row has (`datasets` of them); `avg5` that mean only when
        the row has all five of the paper's; `paper_avg5` and `paper_imagenet` the paper's row
        for the weights' provenance, resolution and eval crop (`reference.reference_for`; empty
        where none is comparable, e.g. any model of ours at 32 px, and `paper_row` says which
        row or why none); `official_cifar10` the official repository's CIFAR-10 fine-tune of
        that model (its README, 224 px, the only per-dataset number published;
        `reference.official_finetune`); each `*_diff` ours minus the reference; `note` what the
        rows cannot show (a smoke budget, an lr-grid tie).
    """
    df = require(avg5_df, "avg5", "The Avg 5 table")
    numeric(df, "img_size", "top1")
    df = df[df["top1"].notna()].reset_index(drop=True)
    for c in ("model", "upstream", "budget", "resolution", "init", "dataset", "pipeline", "note"):
        df[c] = text(df, c)
    df["_recipe"] = recipe_key(df)
    present = list(dict.fromkeys(df["dataset"]))
    datasets = [d for d in AVG5_DATASETS if d in present] + [d for d in present if d not in AVG5_DATASETS]
    rows = []
    for key, g in df.groupby(list(AVG5_HEAD) + ["init"], sort=False):
        row = dict(zip((*AVG5_HEAD, "init"), key))
        notes = []
        cells = {}
        for d, gd in g.groupby("dataset", sort=False):
            latest = gd["_recipe"].iloc[-1]
            if gd["_recipe"].nunique() > 1:
                notes.append(f"{d}: the latest of {gd['_recipe'].nunique()} recipes")
            gd = gd[gd["_recipe"] == latest]
            cells[d] = (float(gd["top1"].mean()), len(gd))
            # an lr-grid tie is one dataset's: the row's note names which
            notes += [n.replace("lr grid tie", f"{d}: lr grid tie") for n in gd["note"] if n]
        for d in datasets:
            row[d] = cells[d][0] if d in cells else np.nan
        row["avg"] = float(np.mean([v for v, _ in cells.values()]))
        row["datasets"] = len(cells)
        row["runs"] = min(n for _, n in cells.values())
        five = all(d in cells for d in AVG5_DATASETS)
        row["avg5"] = float(np.mean([cells[d][0] for d in AVG5_DATASETS])) if five else np.nan
        size = int(row["img_size"]) if pd.notna(row["img_size"]) else None
        src = row["init"] if row["init"].startswith("timm:") else row["upstream"]
        crops = set(g["pipeline"]) - {""}
        ref = reference.reference_for(src, row["model"], size,
                                      crops.pop() if len(crops) == 1 else None)
        row["paper_avg5"] = np.nan if ref["avg5"] is None else ref["avg5"]
        row["avg5_diff"] = row["avg5"] - row["paper_avg5"]
        row["paper_imagenet"] = np.nan if ref["top1"] is None else ref["top1"]
        row["imagenet_diff"] = row.get("imagenet-1k", np.nan) - row["paper_imagenet"]
        official = (reference.official_finetune(ref["paper_name"], "cifar10", ref["upstream"], size)
                    if ref["paper_name"] else None)
        row["official_cifar10"] = np.nan if official is None else official
        row["cifar10_diff"] = row.get("cifar10", np.nan) - row["official_cifar10"]
        row["paper_row"] = ref["note"]
        row["note"] = "; ".join(dict.fromkeys(notes))
        rows.append(row)
    return pd.DataFrame(rows, columns=[*AVG5_HEAD, *datasets, *AVG5_TAIL])


# ----------------------------------------------------------------------------- throughput

def throughput_table(throughput_df: pd.DataFrame) -> pd.DataFrame:
    """Latest img/s per model and setting; each Mixer as a ratio to the ViT the paper pairs it with.

    Args:
        throughput_df: `throughput.csv` rows (`model, mode, batch_size, img_size,
            img_per_sec_mean, img_per_sec_std, step_ms_median, params, gmacs, achieved_tflops,
            mfu, peak_tflops, bench_id`, provenance `device_name, dtype, compiled`).

    Returns:
        Columns `THROUGHPUT_COLUMNS`, one row per (device, threads, dtype, compiled, mode,
        model, img_size), from the latest bench that measured it (`bench_id`, its `date`; a later
        bench replaces an earlier one, never a best-ever row): the batch size with the highest
        img/s in that bench (the paper reports the best batch size).
        `mfu` is against the device's datasheet dense peak `peak_tflops` (empty on CPUs and
        unlisted GPUs). `baseline` is the ViT the paper compares a Mixer with at the same size
        (`reference.paper_baseline`: Mixer-B/16 vs ViT-B/16, L/16 vs L/16, H/14 vs H/14 in
        Table 3); `ratio` = the Mixer's img/s / that ViT's best img/s on the same device, dtype,
        threads, compile setting, mode and image size, taken from the same `bench` call as the Mixer's row
        when that call measured it (`same_run`), else from the ViT's own row (its latest bench
        with those settings).
        `paper_ratio` is the same division of the paper's TPU-v3 img/s/core (Table 3 at 448 for
        448-px rows, else at 224): 1384 / 861 = 1.61 for B/16. Rows without a paper pair (ViTs,
        ResNets, Mixer-B/32, resized variants) leave `baseline`, `ratio` and `paper_ratio` empty.
        The two ratios need not agree: the paper's is TPU-v3, ours is this device.
    """
    thr = require(throughput_df, "throughput", "The throughput table")
    numeric(thr, "batch_size", "img_size", "img_per_sec_mean", "img_per_sec_std",
            "step_ms_median", "params", "gmacs", "achieved_tflops", "mfu", "peak_tflops")
    for c in ("device_name", "threads", "dtype", "compiled", "bench_id"):
        if c not in thr.columns:
            thr[c] = ""
    for c in ("device_name", "bench_id"):  # blanks as "" (an all-blank column reads as floats)
        thr[c] = thr[c].astype(str).where(thr[c].notna(), "")
    # a count, blank where an older version did not record it ("1", never "1.0")
    thr["threads"] = [str(int(float(v))) if str(v) not in ("", "nan", "None") else ""
                      for v in thr["threads"]]
    thr = thr[thr["img_per_sec_mean"].notna()].reset_index(drop=True)
    # Settings a ratio must hold fixed, as strings so blanks compare equal to blanks: a
    # one-thread row is never set against a whole-CPU one.
    setting = ["device_name", "threads", "dtype", "compiled", "mode", "img_size"]
    key = thr[setting].astype(str).where(thr[setting].notna(), "")
    key.columns = [f"_{c}" for c in setting]
    thr = pd.concat([thr, key], axis=1)
    keys = list(key.columns) + ["model"]
    # the latest bench of each (setting, model): the bench id of its last row (rows are
    # appended), or that row alone when it has none; then that bench's best batch size
    last = thr.groupby(keys, sort=False)["bench_id"].transform("last")
    latest = thr[(thr["bench_id"] == last) & (last != "")]
    alone = thr[last == ""].groupby(keys, sort=False).tail(1)
    latest = pd.concat([latest, alone]).sort_index()
    best = latest.loc[latest.groupby(keys, sort=False)["img_per_sec_mean"].idxmax()]
    order = thr.drop_duplicates(keys)[keys].reset_index(drop=True).reset_index()
    best = best.merge(order, on=keys, how="left").sort_values("index", kind="stable")
    out = best.rename(columns={"img_per_sec_mean": "img_per_sec"}).reset_index(drop=True)
    out["date"] = text(out, "timestamp").str[:10]

    baselines, same_runs, ratios, paper, paper_ratios = [], [], [], [], []
    for _, r in out.iterrows():
        size = int(r["img_size"]) if r["img_size"] in (224, 448) else 224  # the paper's sizes
        mine = reference.paper_throughput(str(r["model"]), size)
        paper.append(math.nan if mine is None else mine)
        vit = reference.paper_baseline(str(r["model"]), size)
        baselines.append(vit or "")
        same_runs.append(None)
        ratios.append(math.nan)
        paper_ratios.append(math.nan)
        if vit is None:
            continue
        paper_ratios[-1] = mine / reference.paper_throughput(vit, size)
        alike = (thr["model"] == vit) & (thr[key.columns] == r[key.columns]).all(axis=1)
        rows = thr[alike]
        same = rows[rows["bench_id"] == r["bench_id"]] if r["bench_id"] else rows.iloc[0:0]
        # else the ViT's own row of this table: its latest bench with these settings
        own = out[(out["model"] == vit) & (out[key.columns] == r[key.columns]).all(axis=1)]
        best = same["img_per_sec_mean"].max() if not same.empty else (
            own["img_per_sec"].iloc[0] if not own.empty else math.nan)
        if best == best:
            ratios[-1] = r["img_per_sec"] / best
            same_runs[-1] = not same.empty
    out["baseline"] = baselines
    out["same_run"] = pd.Series(same_runs, index=out.index, dtype=object)
    out["ratio"] = ratios
    out["paper_img_per_sec_core"] = paper
    out["paper_ratio"] = paper_ratios
    for c in THROUGHPUT_COLUMNS:
        if c not in out.columns:
            out[c] = math.nan
    return out[list(THROUGHPUT_COLUMNS)]


# ----------------------------------------------------------------------------- markdown

def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub pipe table of `df` (numbers right-aligned, blanks blank), no `tabulate` needed.

    Every number goes through `mixerbench.formatting`, as the terminal's tables do: counts
    with separators, FLOPs with their unit, accuracies with one decimal, a column's `_std`
    beside it merged into one `mean ± std (n)` cell, and headers people read.
    """
    from mixerbench.formatting import display

    rows = [{k: (None if v is pd.NA or v is pd.NaT else v) for k, v in r.items()}
            for r in df.to_dict("records")]
    d = display(rows, [str(c) for c in df.columns])
    cols = [c.header.replace("|", "\\|") for c in d.columns]
    num = [c.numeric for c in d.columns]
    body = [[v.replace("|", "\\|").replace("\n", " ") for v in r] for r in d.rows]
    widths = [max([len(c), 3] + [len(r[i]) for r in body]) for i, c in enumerate(cols)]

    def line(cells):
        return "| " + " | ".join(
            (s.rjust(w) if n else s.ljust(w)) for s, w, n in zip(cells, widths, num)) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if n else "-" * w
                             for w, n in zip(widths, num)) + " |"
    return "\n".join([line(cols), rule] + [line(r) for r in body]) + "\n"
