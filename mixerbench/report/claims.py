"""The paper's claims decided from the rows of a results folder (`mixerbench claims`).

`evaluate(frames)` applies each claim of `mixerbench.reference.claims.CLAIMS` to the results
CSVs: it picks the qualifying rows, groups them (seeds by recipe, never two recipes averaged),
computes the claim's statistic per comparison and decides it by the claim's rule (Welch's
one-sided t-tests, TOST, or an exact match; see that module). A claim is *held* only when every
comparison it has holds, *not held* when any comparison does not, and otherwise *not enough
evidence* (no qualifying rows, too few seeds, or a gap inside its spread), with the command
that would produce the missing rows. Verdicts come from the rows alone.

`check(root)` loads a results folder and evaluates; `to_text` / `to_markdown` / `to_records`
render the verdicts; `write_markdown_section` puts the markdown between a document's markers.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mixerbench import files, results
from mixerbench.errors import DamagedFileError, UserError
from mixerbench.reference.claims import (
    ALPHA, CLAIMS, HELD, NOT_HELD, UNDECIDED, Claim,
)
from mixerbench.report.style import short_name
from mixerbench.report.tables import (
    AVG5_DATASETS, TABLE1_COLUMNS, avg5_table, latest_per_run, of_trained_weights,
    released_table,
)
from mixerbench.report.tables import recipe_key as tables_recipe_key

# The tables a verdict may read, all optional: a missing one leaves its claims undecided.
INPUTS = ("accuracy", "throughput", "shuffle", "scaling", "avg5", "released")
MAX_SEEDS = 64  # the most seeds a side is ever told it needs (beyond that: "more than 64")
IMAGENET_VAL = 50_000  # images in ImageNet val, the paper's evaluation set (Tables 2-3)
MARKERS = ("<!-- mixerbench claims: start -->", "<!-- mixerbench claims: end -->")


@dataclass
class Side:
    """One side of a comparison: the mean of `n` independent runs (seeds, or timing repeats)."""

    label: str
    mean: float
    std: float  # sample std over the runs (ddof 1); NaN for one run
    n: int
    seeds: tuple = ()
    rows: tuple[str, ...] = ()  # run ids (or bench ids) behind the mean
    unit: str = "seeds"

    def record(self) -> dict:
        return dict(label=self.label, mean=_num(self.mean), std=_num(self.std), n=self.n,
                    unit=self.unit, seeds=[_plain(s) for s in self.seeds], rows=list(self.rows))


@dataclass
class Comparison:
    """One qualifying group of rows and what the claim's rule made of it."""

    label: str
    verdict: str
    why: str  # the numbers that decided it, one phrase
    value: float = math.nan  # the statistic (A - B, or ours - paper)
    a: Side | None = None
    b: Side | None = None
    paper: float = math.nan  # the paper's number, for `match` claims
    p: float = math.nan  # the deciding test's p-value, where one was run
    next: list[str] = field(default_factory=list)  # what would produce the missing evidence
    source: str = ""  # the file the rows are in

    def record(self) -> dict:
        return dict(label=self.label, verdict=self.verdict, why=self.why, value=_num(self.value),
                    paper=_num(self.paper), p=_num(self.p), next=self.next, source=self.source,
                    a=self.a.record() if self.a else None, b=self.b.record() if self.b else None)


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    comparisons: list[Comparison] = field(default_factory=list)
    next: list[str] = field(default_factory=list)

    def record(self) -> dict:
        c = self.claim
        return dict(id=c.id, title=c.title, source=c.source, verdict=self.verdict,
                    paper=c.paper, statement=c.statement, statistic=c.statistic, rule=c.rule,
                    margin=c.margin, tolerance=c.tolerance, unit=c.unit,
                    min_seeds=c.min_seeds, rows=c.rows, why=c.why, next=self.next,
                    comparisons=[x.record() for x in self.comparisons])


def _num(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _plain(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _text(s: pd.Series) -> pd.Series:
    """A text column with blanks as "" (pandas reads an empty cell as NaN)."""
    return s.astype(object).where(s.notna(), "").astype(str)


# ------------------------------------------------------------------------------ the tests

def _welch_p(a: Side, b: Side, margin: float, alternative: str) -> float:
    """p of Welch's one-sided t-test of `a.mean - b.mean` against `margin` (`greater`: H1 is
    "above the margin"; `less`: "below"). Spreads of zero decide by the sign alone."""
    from scipy.stats import ttest_ind_from_stats

    d = a.mean - b.mean - margin
    if a.std ** 2 / a.n + b.std ** 2 / b.n == 0:
        return 0.0 if (d > 0 if alternative == "greater" else d < 0) else 1.0
    return float(ttest_ind_from_stats(a.mean, a.std, a.n, b.mean + margin, b.std, b.n,
                                      equal_var=False, alternative=alternative).pvalue)


def _decided(a: Side, b: Side, margin: float, k: int, alternative: str) -> bool:
    big = lambda s: Side(s.label, s.mean, s.std, k)  # noqa: E731
    return _welch_p(big(a), big(b), margin, alternative) < ALPHA


def _needed(a: Side, b: Side, margin: float, alternative: str, floor: int) -> int | None:
    """How many runs a side would decide this gap at this spread, if neither moved (None: more
    than `MAX_SEEDS`)."""
    for k in range(max(floor, a.n, b.n, 2), MAX_SEEDS + 1):
        if _decided(a, b, margin, k, alternative):
            return k
    return None


def _needed_text(k: int | None, unit: str) -> str:
    if k is None:
        return f"more than {MAX_SEEDS} {unit} a side would be needed at this spread"
    return f"about {k} {unit} a side would decide a gap this size at this spread"


def _few(a: Side, b: Side, need: int) -> str | None:
    if min(a.n, b.n) >= need and a.std == a.std and b.std == b.std:
        return None
    return f"n = {a.n} and {b.n} {a.unit}, {need} needed a side"


def _as_list(cmd, k: int) -> list[str]:
    """The next commands: `cmd` (a command, a list of them, or a function of the runs a side
    needs that returns either), for `k` runs a side."""
    cmd = cmd(k) if callable(cmd) else cmd
    return [] if not cmd else [cmd] if isinstance(cmd, str) else list(cmd)


def order(claim: Claim, label: str, a: Side, b: Side, margin: float | None = None,
          next_cmd=None, source: str = "") -> Comparison:
    """`a` exceeds `b` by more than `margin` (the claim's): Welch's one-sided t-tests."""
    margin = claim.margin if margin is None else margin
    value = a.mean - b.mean
    out = Comparison(label, UNDECIDED, "", value, a, b, source=source)
    few = _few(a, b, claim.min_seeds)
    if min(a.n, b.n) < 2 or a.std != a.std or b.std != b.std:
        out.why = f"{few}: one run has no spread to test a gap against"
        out.next = _as_list(next_cmd, claim.min_seeds)
        return out
    up, down = _welch_p(a, b, margin, "greater"), _welch_p(a, b, margin, "less")
    bound = f" {'+' if margin >= 0 else '-'} {abs(margin):g}" if margin else ""
    if few is None and up < ALPHA:
        out.verdict, out.p = HELD, up
        out.why = f"A > B{bound}: Welch one-sided p = {up:.3g} < {ALPHA}"
    elif few is None and down < ALPHA:
        out.verdict, out.p = NOT_HELD, down
        out.why = f"A < B{bound}: Welch one-sided p = {down:.3g} < {ALPHA}"
    else:
        side = "greater" if value > margin else "less"
        out.p = min(up, down)
        out.why = (f"{few}" if few else
                   f"the gap is inside the spread (Welch one-sided p = {out.p:.3g} >= {ALPHA})")
        k = _needed(a, b, margin, side, claim.min_seeds)
        out.why += "; " + _needed_text(k, a.unit)
        out.next = _as_list(next_cmd, k or MAX_SEEDS)
    return out


def equivalent(claim: Claim, label: str, a: Side, b: Side, next_cmd=None,
               source: str = "") -> Comparison:
    """`a` and `b` within the claim's tolerance either way: two one-sided Welch tests (TOST)."""
    tol = claim.tolerance
    value = a.mean - b.mean
    out = Comparison(label, UNDECIDED, "", value, a, b, source=source)
    few = _few(a, b, claim.min_seeds)
    if min(a.n, b.n) < 2 or a.std != a.std or b.std != b.std:
        out.why = f"{few}: one run has no spread to test a difference against"
        out.next = _as_list(next_cmd, claim.min_seeds)
        return out
    inside = max(_welch_p(a, b, -tol, "greater"), _welch_p(a, b, tol, "less"))
    outside = min(_welch_p(a, b, tol, "greater"), _welch_p(a, b, -tol, "less"))
    if few is None and inside < ALPHA:
        out.verdict, out.p = HELD, inside
        out.why = f"|A - B| < {tol:g}: TOST p = {inside:.3g} < {ALPHA}"
    elif few is None and outside < ALPHA:
        out.verdict, out.p = NOT_HELD, outside
        out.why = f"|A - B| > {tol:g}: Welch one-sided p = {outside:.3g} < {ALPHA}"
    else:
        out.p = inside
        out.why = few or f"the interval of A - B reaches past ±{tol:g} (TOST p = {inside:.3g})"
        out.next = _as_list(next_cmd, claim.min_seeds if few else 2 * max(a.n, b.n))
    return out


def match(claim: Claim, label: str, ours: float, paper: float, n: int | None = None,
          full: int | None = None, source: str = "", rows: tuple[str, ...] = (),
          scored: int | None = None) -> Comparison:
    """`ours` within the claim's tolerance of `paper`: exact when measured on the paper's own
    sample (`n` >= `full`, or no `n`), else by the 95 % binomial interval of a top-1 on the
    `scored` images it counts (default `n`; a capped evaluation)."""
    from scipy.stats import norm

    tol, diff = claim.tolerance, ours - paper
    side = Side("ours", ours, math.nan, 1, rows=rows, unit="runs")
    out = Comparison(label, UNDECIDED, "", diff, a=side, paper=paper, source=source)
    if n is None or full is None or n >= full:
        out.verdict = HELD if abs(diff) <= tol + 1e-9 else NOT_HELD
        out.why = f"|ours - paper| = {abs(diff):.4g} {'<=' if out.verdict == HELD else '>'} {tol:g}"
        return out
    scored = scored or n
    half = norm.ppf(1 - ALPHA / 2) * 100 * math.sqrt(
        max(ours / 100 * (1 - ours / 100), 1e-12) / scored)
    if abs(diff) + half <= tol:
        out.verdict = HELD
    elif abs(diff) - half > tol:
        out.verdict = NOT_HELD
    out.why = (f"on {scored:,} images ({n:,} of {full:,}): ours - paper = {_signed(diff, diff)} ± {_fmt(half)} (95 %), "
               f"tolerance {tol:g}")
    return out


# ------------------------------------------------------------------------- grouping rows

def recipe_key(df: pd.DataFrame) -> pd.Series:
    """Which rows are seeds of one recipe: `recipe_id`, as every table groups them (a row
    without one, of a version before recipe ids, is a recipe of its own, never averaged by
    its names: `mixerbench upgrade` gives it its run's recipe where the run folder is there)."""
    return tables_recipe_key(df)


def _pairs(left: list, right: list, settings: dict, vary: tuple[str, ...]):
    """The (left, right) pairs of recipes trained alike but for the settings in `vary` (the
    patch shuffle, the data fraction), and the recipes no pair takes. Recipes are told alike by
    their settings (`settings`: recipe id -> its flattened recipe, read from the run folders);
    where some are not known, a lone recipe on each side pairs, several do not (two of one
    model and schedule may differ in anything else: an lr, a budget)."""
    def alike(r):
        s = settings.get(r)
        return None if s is None else sorted((k, repr(v)) for k, v in s.items() if k not in vary)

    if all(alike(r) is not None for r in (*left, *right)):
        pairs = [(a, b) for a in left for b in right if alike(a) == alike(b)]
    else:
        pairs = [(left[0], right[0])] if len(left) == 1 and len(right) == 1 else []
    paired = {r for p in pairs for r in p}
    return pairs, [r for r in (*left, *right) if r not in paired]


def _unpaired(label: str, recipes: list, claim: Claim, source: str) -> Comparison:
    return Comparison(f"{label}: recipes {', '.join(map(str, recipes))}", UNDECIDED,
                      "no recipe on the other side was trained alike (same settings but the one "
                      "compared), or their run folders are not here to tell which was",
                      next=[claim.command], source=source)


def _side(label: str, values: pd.DataFrame, column: str = "top1", id_col: str = "run_id") -> Side:
    v = values[column].astype(float)
    seeds = tuple(values["seed"].tolist()) if "seed" in values.columns else ()
    return Side(label, float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                int(len(v)), seeds=seeds, rows=tuple(_text(values[id_col]).tolist()))


def _seed_cmd(cmd: str, have: tuple, need: int) -> list[str]:
    """`cmd` once for each seed that would bring a side to `need` (seeds it does not have)."""
    have = {int(s) for s in have if s == s}
    todo = [s for s in range(need + len(have)) if s not in have][: max(need - len(have), 1)]
    if len(todo) > 3 and todo == list(range(todo[0], todo[-1] + 1)):  # one shell loop
        return [f"for s in $(seq {todo[0]} {todo[-1]}); do {cmd} --set seed=$s; done"]
    return [f"{cmd} --set seed={s}" for s in todo]


def _label(model: str, others: list[str]) -> str:
    short = short_name(model)
    return model if sum(short_name(o) == short for o in others) > 1 else short


def _family(df: pd.DataFrame) -> pd.Series:
    from mixerbench.report.style import family_of

    fam = _text(df["family"]) if "family" in df.columns else pd.Series("", index=df.index)
    return fam.where(fam != "", _text(df["model"]).map(family_of))


def _none(claim: Claim, what: str) -> list[Comparison]:
    return [Comparison("no qualifying rows", UNDECIDED, what, next=[claim.command])]


# ---------------------------------------------------------------------- claim evaluators

def _table1(claim: Claim, frames: dict) -> list[Comparison]:
    t1 = frames.get("table1")
    if t1 is None or t1.empty:
        return _none(claim, "no tables/table1.csv in the results folder")
    out = []
    for _, r in t1.iterrows():
        ours, paper = float(r["params_m_ours"]), float(r["params_m_paper"])
        ok = str(r["match"]).lower() == "true"
        exact = r["params_with_head_paper"]
        why = f"{ours:g} M vs {paper:g} M without the head"
        if exact == exact and str(exact) != "":
            why += f"; {int(float(r['params_with_head_ours'])):,} vs {int(float(exact)):,} with it"
        out.append(Comparison(str(r["model"]), HELD if ok else NOT_HELD, why, ours - paper,
                              paper=paper, source="tables/table1.csv"))
    missing = {"mixer-s32", "mixer-s16", "mixer-b32", "mixer-b16", "mixer-l32", "mixer-l16",
               "mixer-h14"} - set(_text(t1["model"]))
    for m in sorted(missing):
        out.append(Comparison(m, UNDECIDED, "not in tables/table1.csv", next=[claim.command]))
    return out


def _paper_families() -> tuple[str, str, str]:
    """The paper's subject (the Mixer) and its attention and convolution baselines: the
    registry's families with those `paper_role`s."""
    from mixerbench.models import paper_family

    return tuple(paper_family(r) for r in ("subject", "attention", "convolution"))


def _competitive(claim: Claim, frames: dict) -> list[Comparison]:
    subject, *baselines = _paper_families()
    acc = frames["accuracy"]
    exp = _text(acc["experiment"])
    acc = acc[exp.str.startswith("compare") & (_text(acc["kind"]) != "evaluate")
              & acc["top1"].notna()]
    if acc.empty:
        return _none(claim, "no `compare` rows in accuracy.csv")
    acc = latest_per_run(acc)
    acc = acc.assign(_fam=_family(acc), _recipe=recipe_key(acc), _exp=_text(acc["experiment"]),
                     _split=_text(acc["split"]))
    out = []
    for (ds, exp_name, split), g in acc.groupby(["dataset", "_exp", "_split"], sort=False):
        cmd = (f"mixerbench compare --models {','.join([subject, *baselines])} "
               f"{compare_options(exp_name)} --dataset {ds}" + _data_dir(ds))
        models = list(dict.fromkeys(g["model"].astype(str)))
        sides = {fam: [(_label(str(r["model"].iloc[0]), models), r)
                       for _, r in gg.groupby("_recipe", sort=False)]
                 for fam, gg in g.groupby("_fam", sort=False)}
        where = f"{ds}, {exp_name}" + (f", {split}" if split and split != "test" else "")
        for m_label, m_rows in sides.get(subject, []):
            for other in baselines:
                if other not in sides:
                    out.append(Comparison(f"{where}: {m_label} vs {other}", UNDECIDED,
                                          f"this compare has no {other} rows", next=[cmd],
                                          source="accuracy.csv"))
                    continue
                for o_label, o_rows in sides[other]:
                    a, b = _side(m_label, m_rows), _side(o_label, o_rows)
                    nxt = lambda k: f"{cmd} --seeds {k}"  # noqa: E731 (finished seeds are read back)
                    out.append(order(claim, f"{where}: {m_label} vs {o_label}", a, b,
                                     next_cmd=nxt, source="accuracy.csv"))
        if subject not in sides:
            out.append(Comparison(f"{where}: no {subject} rows", UNDECIDED,
                                  "this compare has no Mixer", next=[cmd], source="accuracy.csv"))
    return out


def _data_dir(dataset: str) -> str:
    """` --data-dir ~/data` for a registry dataset that is not embedded (a local copy is
    needed), as the claims' own commands write it; "" for the embedded sets and a path."""
    from mixerbench.data import KNOWN_DATASETS, canonical_name

    known = KNOWN_DATASETS.get(canonical_name(dataset) or dataset)
    return " --data-dir ~/data" if known and not known.get("embedded") else ""


def compare_options(experiment: str) -> str:
    """The options that give a compare's rows the `experiment` tag `experiment` again
    (`compare:smoke[steps=20]` -> `--preset smoke --set steps=20`): more seeds join its table
    and its verdict only under the same settings."""
    import shlex

    preset, _, given = experiment.split(":", 1)[-1].partition("[")
    sets = [kv for kv in given.removesuffix("]").split(",") if kv]
    return " ".join([f"--preset {shlex.quote(preset)}"]
                    + [f"--set {shlex.quote(kv)}" for kv in sets])


def _throughput(mode: str):
    def evaluate_mode(claim: Claim, frames: dict) -> list[Comparison]:
        from mixerbench import reference

        thr = frames["throughput"]
        thr = thr[(_text(thr["mode"]) == mode) & thr["img_per_sec_mean"].notna()]
        # per pair and setting, the latest bench call that measured both decides (as the
        # throughput table shows the latest bench): a re-bench with more repeats, the command a
        # verdict suggests, replaces the call it repeats rather than standing beside it
        latest = {}
        setting = ["bench_id", "device_name", "dtype", "compiled", "batch_size", "img_size"]
        thr = thr.assign(**{f"_{c}": _text(thr[c]) for c in setting})
        for key, g in thr.groupby([f"_{c}" for c in setting], sort=False):
            bench_id, device, dtype, compiled, batch, size = key
            by_model = {str(r["model"]): r for _, r in g.iterrows()}
            for model, r in by_model.items():
                vit = reference.paper_baseline(model, 224) if size == "224" else None
                if vit is None or vit not in by_model:
                    continue
                v = by_model[vit]
                a, b = (Side(model, float(x["img_per_sec_mean"]), float(x["img_per_sec_std"]),
                             int(x["repeats"]) if x["repeats"] == x["repeats"] else 1,
                             rows=(bench_id,), unit="repeats") for x in (r, v))
                b.label = vit
                label = f"{model} vs {vit}, {device}, {dtype}, batch {batch}"
                cmd = (lambda k, model=model, vit=vit, batch=batch: f"mixerbench bench --models "
                       f"{model},{vit} --mode {mode} --batch-size {batch} --repeats {k}")
                latest.pop((model, vit, device, dtype, compiled, batch, size), None)
                latest[(model, vit, device, dtype, compiled, batch, size)] = order(
                    claim, label, a, b, next_cmd=cmd, source="throughput.csv")
        out = list(latest.values())
        return out or _none(claim, f"no `{mode}` rows of a Mixer and its Table 3 ViT (B/16, "
                                   "L/16, H/14 at 224 px) from one bench call")
    return evaluate_mode


def _shuffle_pairs(frames: dict, family: str):
    """(label, original rows, patch-shuffled rows) per model, dataset, size, schedule, subset
    and eval crop."""
    sh = frames["shuffle"]
    sh = sh[(_text(sh["metric"]) == "top1") & sh["top1"].notna()]
    sh = sh[_family(sh) == family]
    sh = sh[_text(sh["train_shuffle"]) == _text(sh["eval_shuffle"])]
    # the images a number is on (a row from before rows recorded them: the whole test split):
    # a capped evaluation is a measurement of its own, never the last word on the full one
    sh = sh.assign(_split=_text(sh["split"]).replace("", "test"))
    # and the crop they went through: an `evaluate --crop` of a run is another measurement,
    # never the last word on (nor averaged with) the one its sweep made
    sh = sh.assign(_crop=_text(sh["pipeline"]))
    acc = frames["accuracy"]
    acc = acc[_text(acc["kind"]) != "evaluate"].drop_duplicates("run_id", keep="last")
    sched = acc.set_index(_text(acc["run_id"]))[["epochs", "steps"]]
    # and the precision it ran in: a GPU's bf16 `evaluate` of CPU-trained runs is another
    # measurement, never averaged with the sweep's own fp32 ones
    sh = sh.assign(_dtype=_text(sh["dtype"]))
    # a checkpoint taken while its run trained is no evidence about the trained recipe, nor
    # the last word on its run; the group's `steps` is the run's schedule, not the row's step
    sh = of_trained_weights(sh).drop_duplicates(
        ["run_id", "eval_shuffle", "metric", "_split", "_crop", "_dtype"], keep="last")
    sh = sh.drop(columns="steps").join(sched, on="run_id")
    sh = sh.assign(_epochs=_text(sh["epochs"]), _steps=_text(sh["steps"]))
    sh = sh.assign(_recipe=recipe_key(sh))
    crops, dtypes = sh["_crop"].nunique() > 1, sh["_dtype"].nunique() > 1
    for key, g in sh.groupby(["model", "dataset", "img_size", "_epochs", "_steps", "_split",
                              "_crop", "_dtype"], sort=False):
        label = f"{short_name(key[0])}, {key[1]}, {key[2]} px" + (
            f", {key[5]}" if key[5] != "test" else "") + (
            f", crop {key[6] or 'unrecorded'}" if crops else "") + (
            f", {key[7] or 'unrecorded precision'}" if dtypes else "")
        nones = dict(list(g[_text(g["eval_shuffle"]) == "none"].groupby("_recipe", sort=False)))
        patches = dict(list(g[_text(g["eval_shuffle"]) == "patch"].groupby("_recipe", sort=False)))
        if not nones or not patches:
            continue
        # never two recipes in one mean, and each original beside its own shuffled twin
        pairs, alone = _pairs(list(nones), list(patches), frames.get("settings") or {},
                              ("data.shuffle", "data.shuffle_patch"))
        for r1, r2 in pairs:
            yield label + (f" (recipes {r1} / {r2})" if len(pairs) > 1 else ""), nones[r1], \
                patches[r2]
        if alone:
            yield label, alone, None


def _shuffle(claim: Claim, frames: dict) -> list[Comparison]:
    subject, _, convolution = _paper_families()
    family = subject if claim.id == "shuffle-mixer" else convolution
    out = []
    for label, none, patch in _shuffle_pairs(frames, family):
        if patch is None:  # `none` holds the recipes no pair took
            out.append(_unpaired(label, none, claim, "shuffle.csv"))
            continue
        have = tuple(set(none["seed"]) & set(patch["seed"]))
        nxt = lambda k, have=have: _seed_cmd(claim.command, have, k)  # noqa: E731
        if family == subject:
            a, b = _side("patch+pixel", patch), _side("original", none)
            out.append(equivalent(claim, label, a, b, next_cmd=nxt, source="shuffle.csv"))
        else:
            a, b = _side("original", none), _side("patch+pixel", patch)
            out.append(order(claim, label, a, b, next_cmd=nxt, source="shuffle.csv"))
    return out or _none(claim, f"no shuffle.csv top-1 rows of a {family} under both the "
                               "original and the patch+pixel permutation")


def _scaling(claim: Claim, frames: dict) -> list[Comparison]:
    subject, attention, convolution = _paper_families()
    other = convolution if claim.id == "data-scaling-resnet" else attention
    sc = frames["scaling"]
    sc = sc[(_text(sc["metric"]) == "top1") & sc["top1"].notna()]
    # one subset of the test images per comparison: a capped rerun of a run (same recipe and
    # seed, another run id) is never its seed's number on the whole split
    sc = sc.assign(_fam=_family(sc), _steps=_text(sc["steps"]),
                   _split=_text(sc["split"]).replace("", "test"))
    out = []
    for (ds, steps, split), g in sc.groupby(["dataset", "_steps", "_split"], sort=False):
        fams = {f: gg for f, gg in g.groupby("_fam", sort=False)}
        if subject not in fams or other not in fams:
            continue
        fractions = sorted(set(fams[subject]["fraction"]) & set(fams[other]["fraction"]))
        if len(fractions) < 2:
            continue
        lo, hi = fractions[0], fractions[-1]
        sides, unpaired = [], []
        for fam in (subject, other):
            f = fams[fam].drop_duplicates(["run_id"], keep="last")
            f = f.assign(_recipe=recipe_key(f))
            for model, gm in f.groupby("model", sort=False):
                smalls = dict(list(gm[gm["fraction"] == lo].groupby("_recipe", sort=False)))
                larges = dict(list(gm[gm["fraction"] == hi].groupby("_recipe", sort=False)))
                # never two recipes in one mean; a gain is a subset's twin run minus another's
                pairs, alone = _pairs(list(smalls), list(larges), frames.get("settings") or {},
                                      ("data.fraction",))
                for r_lo, r_hi in pairs:
                    sides.append(_gain_side(model + (f" ({r_lo} / {r_hi})" if len(pairs) > 1
                                                      else ""), smalls[r_lo], larges[r_hi]))
                if alone:
                    unpaired.append((short_name(model), alone))
        where = (f"{ds}" + (f" {split}" if split != "test" else "")
                 + f", {steps} steps, {lo:.0%} -> {hi:.0%} of the data")
        out += [_unpaired(f"{where}: {m}", alone, claim, "scaling.csv") for m, alone in unpaired]
        for a in (s for s in sides if _family_name(s.label) == subject):
            for b in (s for s in sides if _family_name(s.label) == other):
                if not a.n or not b.n:
                    continue
                have = tuple(set(a.seeds) & set(b.seeds))
                nxt = lambda k, have=have: _seed_cmd(claim.command, have, k)  # noqa: E731
                out.append(order(claim, f"{where}: {a.label} vs {b.label} (gain)", a, b,
                                 next_cmd=nxt, source="scaling.csv"))
    return out or _none(claim, f"no scaling.csv top-1 rows of a {subject} and a {other} at two or "
                               "more fractions")


def _gain_side(label: str, small: pd.DataFrame, large: pd.DataFrame) -> Side:
    """Per seed, top-1 on the largest subset minus on the smallest."""
    small = small.drop_duplicates("seed", keep="last")
    large = large.drop_duplicates("seed", keep="last")
    both = small.merge(large, on="seed", suffixes=("_lo", "_hi"))
    gains = (both["top1_hi"] - both["top1_lo"]).astype(float)
    return Side(short_name(label), float(gains.mean()) if len(gains) else math.nan,
                float(gains.std(ddof=1)) if len(gains) > 1 else math.nan, int(len(gains)),
                seeds=tuple(both["seed"].tolist()),
                rows=tuple(both["run_id_lo"].tolist() + both["run_id_hi"].tolist()))


def _family_name(label: str) -> str:
    from mixerbench.report.style import family_of

    return family_of(label)


def _higher_resolution(claim: Claim, frames: dict) -> list[Comparison]:
    out = []
    acc = frames["accuracy"]
    trained = acc[_text(acc["kind"]) != "evaluate"]
    trained = trained.drop_duplicates("run_id", keep="last")
    by_id = trained.set_index(_text(trained["run_id"]))
    ft = trained[(_text(trained["experiment"]) == "transfer") & (_text(trained["kind"]) == "finetune")]
    ft = ft.assign(_up=_text(ft["init"]).map(lambda p: Path(p).name if p else ""))
    ft = ft[ft["_up"].isin(by_id.index)]
    if len(ft):
        up = by_id.loc[ft["_up"]]
        # a seed is one run of the pipeline: the upstream pre-training and its fine-tuning, so
        # rows pool by the upstream's recipe (a fine-tune's own recipe names its upstream run)
        ft = ft.assign(_k=(ft["img_size"].to_numpy() / up["img_size"].to_numpy()),
                       _upmodel=up["model"].astype(str).map(short_name).to_numpy(),
                       _updata=up["dataset"].astype(str).to_numpy(), _split=_text(ft["split"]),
                       _uprecipe=recipe_key(up).to_numpy())
        ft = ft.assign(_recipe=recipe_key(ft))
        for key, g in ft.groupby(["_upmodel", "_updata", "dataset", "_split", "steps",
                                  "_uprecipe"], sort=False):
            one, two = g[g["_k"] == 1.0], g[g["_k"] == 2.0]
            if len(one) and len(two):
                label = f"{key[0]} from {key[1]}, fine-tuned on {key[2]} ({int(key[4])} steps)"
                # a seed is one upstream run and its one fine-tuning per resolution: two
                # fine-tuning recipes from one upstream run (another lr) are never pooled
                mixed = [r for side in (one, two) for r in
                         side.groupby("_up")["_recipe"].unique() if len(r) > 1]
                if mixed:
                    out.append(_unpaired(label, sorted(mixed[0]), claim, "accuracy.csv"))
                    continue
                have = tuple(set(one["seed"]) & set(two["seed"]))
                nxt = lambda k, have=have: _seed_cmd(claim.command, have, k)  # noqa: E731
                out.append(order(claim, label, _side("2x", two), _side("1x", one),
                                 next_cmd=nxt, source="accuracy.csv"))
    a5 = _measuring(frames["avg5"])
    if len(a5):
        a5 = a5[a5["top1"].notna()].assign(_res=_text(a5["resolution"]), _split=_text(a5["split"]),
                                           _init=_text(a5["init"]), _budget=_text(a5["budget"]))
        for key, g in a5.groupby(["model", "_init", "dataset", "_split", "steps", "_budget"],
                                 sort=False):
            one, two = g[g["_res"] == "1x"], g[g["_res"] == "2x"]
            if len(one) and len(two):
                label = f"{key[0]} ({key[1]}), fine-tuned on {key[2]} ({int(key[4])} steps)"
                have = tuple(set(one["seed"]) & set(two["seed"]))
                cmd = (f"mixerbench reproduce avg5 --init {key[1]} --dataset {key[2]} "
                       f"--budget {key[5] or 'full'}")
                nxt = lambda k, have=have, cmd=cmd: _seed_cmd(cmd, have, k)  # noqa: E731
                out.append(order(claim, label, _side("2x", two), _side("1x", one),
                                 next_cmd=nxt, source="avg5.csv"))
    return out or _none(claim, "no fine-tuning rows of one upstream run at both 1x and 2x "
                               "(accuracy.csv `transfer`, avg5.csv)")


def _measuring(a5: pd.DataFrame) -> pd.DataFrame:
    """avg5.csv rows that measure transfer: not the smoke budget's (a few steps a run on the
    embedded sets, which checks the protocol's plumbing and measures nothing)."""
    return a5[_text(a5["budget"]) != "smoke"] if "budget" in a5.columns else a5


def _avg5(claim: Claim, frames: dict) -> list[Comparison]:
    a5 = frames["avg5"]
    if a5.empty:
        return _none(claim, "no avg5.csv")
    a5 = _measuring(a5)
    if a5.empty:
        return _none(claim, "avg5.csv has only smoke-budget rows, which measure no transfer")
    full = a5[_text(a5["split"]) == "test"]  # a capped test set is not the paper's
    if full.empty:
        return _none(claim, "avg5.csv has only capped evaluations (test[stratified:N])")
    table = avg5_table(full)
    out = []
    for _, r in table.iterrows():
        label = f"{r['model']} from {r['upstream'] or '?'} at {r['resolution']} ({r['init']})"
        if r["paper_avg5"] != r["paper_avg5"]:
            continue  # no paper row for these weights: they do not qualify
        if r["avg5"] != r["avg5"]:
            have = sum(r[d] == r[d] for d in AVG5_DATASETS if d in r.index)
            out.append(Comparison(label, UNDECIDED, f"{have} of the 5 datasets "
                                  "on their full test split", paper=float(r["paper_avg5"]),
                                  next=[claim.command], source="avg5.csv"))
            continue
        out.append(match(claim, label, float(r["avg5"]), float(r["paper_avg5"]),
                         source="avg5.csv", rows=(str(r["init"]),)))
    return out or _none(claim, "no avg5.csv row has a paper Avg 5 (Tables 2-3 list only the "
                               "paper's models and upstreams)")


def _released(claim: Claim, frames: dict) -> list[Comparison]:
    rel = frames["released"]
    if rel.empty:
        return _none(claim, "no released.csv")
    table = released_table(rel)
    out = []
    for _, r in table.iterrows():
        count = int(r["n"]) if r["n"] == r["n"] else None
        for ours, paper, scored, what in (("top1", "paper_top1", "n", "top-1"),
                                          ("real_top1", "paper_real", "real_n", "ReaL")):
            if r[paper] is None or r[paper] != r[paper] or r[ours] != r[ours] or r[ours] is None:
                continue
            # on all of val (n) the paper's own sample; else the interval of the images this
            # number was scored on (ReaL: those of them ReaL labels, real_n)
            out.append(match(claim, f"{r['paper_name']} ({r['checkpoint']}), {what}",
                             float(r[ours]), float(r[paper]), n=count, full=IMAGENET_VAL,
                             source="released.csv", rows=(str(r["checkpoint"]),),
                             scored=int(r[scored]) if r[scored] == r[scored] else None))
    return out or _none(claim, "no released.csv row has a paper row to compare")


EVALUATORS = {
    "table1-sizes": _table1,
    "competitive": _competitive,
    "throughput-train": _throughput("train"),
    "throughput-infer": _throughput("infer"),
    "shuffle-mixer": _shuffle,
    "shuffle-resnet": _shuffle,
    "data-scaling-resnet": _scaling,
    "data-scaling-vit": _scaling,
    "higher-resolution": _higher_resolution,
    "avg5": _avg5,
    "released": _released,
}


# ------------------------------------------------------------------------------- verdicts

def overall(comparisons: list[Comparison]) -> str:
    """Held when every comparison holds, not held when any does not, else not enough evidence."""
    verdicts = [c.verdict for c in comparisons]
    if NOT_HELD in verdicts:
        return NOT_HELD
    if verdicts and all(v == HELD for v in verdicts):
        return HELD
    return UNDECIDED


def evaluate(frames: dict, claims=CLAIMS) -> list[Verdict]:
    """Each claim decided from `frames` (table name -> DataFrame of its rows, as
    `results.load` returns them, plus `table1`: tables/table1.csv, or None, and `settings`:
    recipe id -> its settings, from the run folders at hand, which tell the twin recipes of a
    shuffle or data-scaling comparison apart from others of one model)."""
    frames = {t: frames[t] if frames.get(t) is not None else
              pd.DataFrame(columns=list(results.SCHEMAS[t])) for t in INPUTS} | {
        "table1": frames.get("table1"), "settings": frames.get("settings") or {}}
    out = []
    for claim in claims:
        comps = EVALUATORS[claim.id](claim, frames)
        nxt = list(dict.fromkeys(n for c in comps if c.verdict == UNDECIDED for n in c.next))
        out.append(Verdict(claim, overall(comps), comps, nxt))
    return out


def read_table1(root: Path):
    """tables/table1.csv as `reproduce table1` writes it, or None when there is none; a file
    with other columns is refused, not guessed at."""
    import io

    path = root / "tables" / "table1.csv"
    data = files.read_bytes(path) if files.check(path, "file") is not None else None
    if data is None:
        return None
    try:
        df = pd.read_csv(io.BytesIO(data), keep_default_na=False, na_values=[""])
    except Exception:  # not a CSV at all
        df = None
    if df is None or tuple(df.columns) != TABLE1_COLUMNS:
        raise DamagedFileError(f"{path} is not the table `mixerbench reproduce table1` writes; "
                               "move it aside and run that command again.")
    return df


def check(root: str | os.PathLike | None = None) -> list[Verdict]:
    """Every claim decided from the results folder `root` (None: $MIXERBENCH_RESULTS or
    ./results). A folder that does not exist is refused; a missing CSV leaves its claims
    without evidence; a damaged one is refused (`DamagedFileError`)."""
    root = results.results_dir(root)
    if not root.is_dir():
        raise UserError(f"No results folder at {root}; pass --results-dir, or produce results "
                        "first (e.g. `mixerbench compare --preset smoke`).")
    frames = {t: results.load(t, root, required=False) for t in INPUTS}
    frames["table1"] = read_table1(root)
    frames["settings"] = run_settings(root, frames)
    return evaluate(frames)


def run_settings(root: Path, frames: dict) -> dict[str, dict]:
    """recipe id -> its settings, for the shuffle and data-scaling rows whose run folder is in
    `root` (what `evaluate` pairs twin recipes by)."""
    from mixerbench.report import recipe_settings

    paired = [frames[t] for t in ("shuffle", "scaling")
              if frames.get(t) is not None and len(frames[t])]
    return recipe_settings(root, pd.concat(paired)) if paired else {}


def counts(verdicts: list[Verdict]) -> str:
    n = {v: sum(x.verdict == v for x in verdicts) for v in (HELD, NOT_HELD, UNDECIDED)}
    return (f"{len(verdicts)} claims: {n[HELD]} held, {n[NOT_HELD]} not held, "
            f"{n[UNDECIDED]} without enough evidence")


# ---------------------------------------------------------------------------- rendering

def _fmt(v: float, unit: str = "") -> str:
    """A measured number as every table writes it (`formatting.rate`: 3 significant digits,
    thousands separated), "n/a" for none."""
    from mixerbench.formatting import rate

    return "n/a" if v != v else rate(v)


def _signed(v: float, like: float) -> str:
    """A difference to the last digit its sides are shown with (`_fmt(like)`): +0.9, +0.38."""
    shown = _fmt(like)
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return "n/a" if v != v else f"{v:+,.{decimals}f}"


def side_text(s: Side) -> str:
    from mixerbench.formatting import rate, spread

    shown = spread(s.mean, s.std if s.std == s.std else None, rule=rate) or "n/a"
    seeds = ""
    if s.seeds and s.unit == "seeds":
        seeds = ", seed " + ",".join(str(_plain(x)) for x in sorted(s.seeds))
    unit = s.unit[:-1] if s.n == 1 and s.unit.endswith("s") else s.unit
    return f"{s.label} {shown} (n={s.n} {unit}{seeds})"


def comparison_text(c: Comparison) -> str:
    """One line: the numbers of both sides (or ours and the paper's) and what decided it."""
    if c.a is not None and c.b is not None:
        nums = f"A = {side_text(c.a)} vs B = {side_text(c.b)}: A - B = {_signed(c.value, c.a.mean)}"
    elif c.a is not None and c.paper == c.paper:
        nums = f"ours {_fmt(c.a.mean)} vs paper {_fmt(c.paper)}"
    else:
        nums = ""
    return f"{c.label}: " + (f"{nums}; " if nums else "") + c.why


def to_text(verdicts: list[Verdict]) -> list[tuple[str, str]]:
    """(style, line) pairs for a terminal: `style` is the verdict of a claim's first line (the
    view colours it), "" for the rest."""
    lines = [("", f"The paper's claims against these results ({counts(verdicts)})"), ("", "")]
    for v in verdicts:
        c = v.claim
        lines.append((v.verdict, f"{v.verdict.upper()}  {c.title}  [{c.source}]"))
        lines.append(("", f"  claim: {c.statement}"))
        lines.append(("", f"  test: {_rule_text(c)}"))
        for comp in v.comparisons:
            lines.append(("", f"  - [{comp.verdict}] {comparison_text(comp)}"))
        for cmd in v.next:
            lines.append(("", f"  next: {cmd}"))
        lines.append(("", ""))
    return lines[:-1]


def _rule_text(c: Claim) -> str:
    if c.rule == "order":
        bound = f"by more than {c.margin:g} {c.unit}" if c.margin > 0 else (
            f"or falls short by less than {-c.margin:g} {c.unit}" if c.margin < 0 else "")
        test = (f"A exceeds B {bound}".rstrip() + f", Welch one-sided t-test at {ALPHA}, "
                f">= {c.min_seeds} {'repeats' if 'img/s' in c.unit else 'seeds'} a side")
    elif c.rule == "equivalent":
        test = (f"|A - B| < {c.tolerance:g} {c.unit}, two one-sided Welch tests at {ALPHA}, "
                f">= {c.min_seeds} seeds a side")
    else:
        test = f"|ours - paper| <= {c.tolerance:g} {c.unit}"
    return f"{c.statistic}; {test}"


def to_markdown(verdicts: list[Verdict]) -> str:
    """The verdicts as a markdown list (the README's claims section)."""
    out = [f"{counts(verdicts).capitalize()}; each verdict comes from the committed rows by "
           f"the rule beside it (`mixerbench claims`).", ""]
    for v in verdicts:
        c = v.claim
        out.append(f"- **{c.title}** ({c.source}): **{v.verdict}**. {c.statement} "
                   f"Test: {_rule_text(c)}.")
        plain = [x for x in v.comparisons if x.a is None and len(v.comparisons) > 3]
        if plain:  # many one-number checks (Table 1's seven Mixers): one line
            out.append(f"  - {', '.join(sorted({x.verdict for x in plain}))}: "
                       + "; ".join(_md_escape(comparison_text(x)) for x in plain)
                       + (f" (`{plain[0].source}`)" if plain[0].source else ""))
        for comp in v.comparisons:
            if comp in plain:
                continue
            where = f" (`{comp.source}`)" if comp.source else ""
            out.append(f"  - {comp.verdict}: {_md_escape(comparison_text(comp))}{where}")
        for cmd in v.next:
            out.append(f"  - next: `{cmd}`")
    return "\n".join(out) + "\n"


def _md_escape(text: str) -> str:
    return re.sub(r"([\[\]*_|<>])", r"\\\1", text)


def to_records(verdicts: list[Verdict]) -> list[dict]:
    return [v.record() for v in verdicts]


def write_markdown_section(path: str | os.PathLike, text: str) -> bool:
    """Replace what lies between `MARKERS` in the document at `path` with `text`; True when the
    document changed. A document without exactly one pair of markers is refused unchanged."""
    path = Path(path)
    if files.check(path, "file") is None:
        raise UserError(f"{path} does not exist; pass a markdown file holding the lines "
                        f"{MARKERS[0]} and {MARKERS[1]}.")
    doc = files.read_bytes(path).decode("utf-8", "surrogateescape")
    start, end = (doc.count(m) for m in MARKERS)
    if start != 1 or end != 1 or doc.index(MARKERS[0]) > doc.index(MARKERS[1]):
        raise UserError(f"{path} needs exactly one line {MARKERS[0]} followed by one line "
                        f"{MARKERS[1]}; add them where the claims should go.")
    head, rest = doc.split(MARKERS[0], 1)
    tail = rest.split(MARKERS[1], 1)[1]
    new = f"{head}{MARKERS[0]}\n{text}{MARKERS[1]}{tail}"
    if new == doc:
        return False
    files.atomic_write_text(path, new)
    return True


def flat_records(verdicts: list[Verdict]) -> list[dict]:
    """One row per comparison (a claim without comparisons: one row), for CSV."""
    out = []
    for v in verdicts:
        for c in v.comparisons:
            row = dict(claim=v.claim.id, claim_verdict=v.verdict, comparison=c.label,
                       verdict=c.verdict, value=_num(c.value), paper=_num(c.paper), p=_num(c.p))
            for name, s in (("a", c.a), ("b", c.b)):
                row |= {f"{name}_label": s.label if s else None, f"{name}_mean": _num(s.mean) if s else None,
                        f"{name}_std": _num(s.std) if s else None, f"{name}_n": s.n if s else None}
            out.append(row | dict(why=c.why, next="; ".join(c.next), source=c.source))
    return out
