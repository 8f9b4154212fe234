"""The paper's Tables 1-4 as data, shipped inside the package (arXiv 2105.01601).

Owns `table1.csv` ... `table4.csv` beside this file, transcribed from
the paper (arXiv 2105.01601 v4) Tables 1-4, and the small lookups other commands use to put the
paper's numbers beside ours:

- Table 1 (section 2 of the paper): Mixer architecture specs; `params_m` is the paper's count
  in millions *without* the head; `params_with_head` is the exact 1000-class count from the
  official `vit_jax/models_test.py` where it is known (B/16, B/32, L/16).
- Table 2 (section 3.1): the largest models; Mixer rows fine-tuned at 448.
- Table 3 (section 3.2): the model-scale / data-scale grid; flags `core_days_extrapolated`
  (the paper's double dagger) and `personal_communication` (the paper's telephone mark).
- Table 4 (Appendix B): pre-training hyperparameters (one row per epoch budget).

Beside them, `vt_finetune.csv`: the only per-dataset fine-tuning numbers published for the
paper's Mixers, from the official repository's README (google-research/vision_transformer,
CIFAR-10 with its default config: 224 px, 10k steps, batch 512, lr 0.03, no grid); the paper
itself gives only the mean over five datasets ("Avg 5").

And `figures.csv`: what the paper states in numbers about the figures it draws without a
table (Figure 2 right: the subsets and their epochs, and that no accuracy is stated; Figure 4:
the drops its text quotes), one row per statement with its words in `note`.

Every row has a `source` column (`P Table N`, `VT models_test`, `VT README`). Numbers are raw: `top1` is a
0-100 float, `core_days` is TPU-v3 core-days (0.41k -> 410), `throughput` is img/s/core on
TPU-v3. `model` is our registry slug where one exists and empty otherwise (HaloNet, BiT-R200x3).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from mixerbench.errors import UserError, close_matches
from mixerbench.models.preprocess import PAPER_TAGS
from mixerbench.names import squash

TABLES = ("table1", "table2", "table3", "table4")
_HERE = Path(__file__).resolve().parent

# Spellings users and results rows use for the paper's datasets -> the tables' `pretrain` values.
_PRETRAIN_ALIASES = {
    "imagenet": "imagenet", "imagenet1k": "imagenet", "in1k": "imagenet",
    "ilsvrc2012": "imagenet", "imnet": "imagenet",
    "imagenet21k": "imagenet21k", "in21k": "imagenet21k", "imnet21k": "imagenet21k",
    "jft": "jft300m", "jft300m": "jft300m",
}
# Evaluation datasets the paper reports per model -> the column holding that number.
_EVAL_COLUMNS = {
    "imagenet": "top1", "imagenet1k": "top1", "in1k": "top1", "ilsvrc2012": "top1",
    "imagenetreal": "top1_real", "real": "top1_real", "in1kreal": "top1_real",
}


def load_table(name: str):
    """One of the paper's tables as a DataFrame (a fresh copy; callers may modify it).

    Args:
        name: `table1` ... `table4` (also accepted: `1`, `Table 2`, `t3`).

    Raises:
        UserError: for an unknown name, with the closest names.
    """
    key = squash(name)
    if key.isdigit() or (key.startswith("t") and key[1:].isdigit()):
        key = "table" + key.lstrip("t")
    if key not in TABLES:
        raise UserError(
            f"Unknown paper table '{name}'; choose one of {', '.join(TABLES)}."
            + close_matches(str(name), TABLES)
        )
    return _read(key).copy()


def _printed(path: Path) -> None:
    """Tell the formatter how each number of a transcribed table was printed (80.00, 85.8), so
    the paper's numbers are shown with the paper's digits (`formatting.paper_pct`)."""
    import csv

    from mixerbench.formatting import printed_as

    with open(path, newline="") as fh:
        printed_as(cell for row in csv.reader(fh) for cell in row)


@lru_cache(maxsize=None)
def _read(name: str):
    import pandas as pd

    _printed(_HERE / f"{name}.csv")
    df = pd.read_csv(_HERE / f"{name}.csv", keep_default_na=False, na_values=[""])
    for col in ("model", "note", "paper_name", "group", "pretrain", "source", "size", "figure",
                "family", "setting", "quantity", "unit"):
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str)
    for col in ("core_days_extrapolated", "personal_communication"):
        if col in df.columns:
            df[col] = df[col].astype(str).str.lower().eq("true")
    return df


def figure_notes(figure: str):
    """The paper's stated numbers about one of its figures (`figure2_right`, `figure4`) from
    `figures.csv`: figure, paper_name, family, setting, quantity, value (blank where the text
    gives words, not a number), unit, note (the paper's words), source."""
    df = _read("figures")
    rows = df[df["figure"] == figure]
    if rows.empty:
        raise UserError(f"figures.csv has no notes on '{figure}'; it has "
                        f"{', '.join(sorted(df['figure'].unique()))}.")
    return rows.reset_index(drop=True).copy()


def _slug(model: str) -> str:
    """The registry name of `model` (`Mixer-B/16` -> `mixer-b16`), or the name itself when the
    registry does not know it (a resized variant such as `mixer-t4[width=64]`)."""
    from mixerbench.errors import UserError
    from mixerbench.models import resolve_name

    try:
        return resolve_name(str(model))
    except UserError:
        return str(model).strip().lower()


def _rows(model: str, pretrain: str | None, img_size: int | None, epochs: int | None):
    """Table 3 rows then Table 2 rows matching the filters (Table 3 is the controlled grid)."""
    import pandas as pd

    slug = _slug(model)
    frames = []
    for name in ("table3", "table2"):
        df = _read(name)
        m = df["model"].eq(slug)
        if pretrain is not None:
            m &= df["pretrain"].eq(pretrain)
        if img_size is not None:
            m &= df["img_size"].eq(img_size)
        if epochs is not None and "epochs" in df.columns:
            m &= df["epochs"].eq(epochs)
        frames.append(df[m])
    return pd.concat(frames, ignore_index=True)


def _pick(rows, column: str) -> float | None:
    rows = rows[rows[column].notna()]
    if rows.empty:
        return None
    if "epochs" in rows.columns and rows["epochs"].notna().any():
        # Several schedules (JFT Mixer-L/16: 7 and 14 epochs): the longest, i.e. the best-trained.
        rows = rows.sort_values("epochs", ascending=False, kind="stable")
    return float(rows.iloc[0][column])


def paper_top1(
    model: str, dataset: str = "imagenet", pretrain: str | None = None,
    img_size: int | None = 224, epochs: int | None = None,
) -> float | None:
    """The paper's top-1 for `model` evaluated on `dataset`, or None where the paper has none.

    The paper reports per-model numbers only for ImageNet (original and ReaL labels), so any
    other `dataset` gives None.

    Args:
        model: registry slug (`mixer-b16`) or the paper's spelling (`Mixer-B/16`).
        dataset: `imagenet` (original labels) or `imagenet-real` (ReaL labels).
        pretrain: upstream dataset (`imagenet`, `imagenet21k`, `jft300m`); None means trained
            from scratch on ImageNet itself, the setting a from-scratch run compares to.
        img_size: fine-tuning resolution (224 or 448); None matches any.
        epochs: pre-training epochs; None prefers the longest schedule when several match.

    Returns:
        A 0-100 float from Table 3 (preferred) or Table 2, or None.
    """
    column = _EVAL_COLUMNS.get(squash(dataset))
    if column is None:
        return None
    if pretrain is None:
        pretrain = "imagenet"
    pretrain = _PRETRAIN_ALIASES.get(squash(pretrain), squash(pretrain))
    return _pick(_rows(model, pretrain, img_size, epochs), column)


def paper_row(model: str, pretrain: str, img_size: int | None = 224) -> dict | None:
    """The paper's ImageNet row for `model` pre-trained on `pretrain` at `img_size` (None: any),
    Table 3 preferred, the longest schedule when several match: dict(top1, top1_real (None when
    the paper has none), img_size (None when the table does not say), source), or None."""
    pretrain = _PRETRAIN_ALIASES.get(squash(pretrain), squash(pretrain))
    rows = _rows(model, pretrain, img_size, None)
    rows = rows[rows["top1"].notna()]
    if rows.empty:
        return None
    if "epochs" in rows.columns and rows["epochs"].notna().any():
        rows = rows.sort_values("epochs", ascending=False, kind="stable")
    row = rows.iloc[0]

    def num(v):
        return None if v != v or v is None or v == "" else float(v)

    size = num(row.get("img_size"))
    return dict(top1=float(row["top1"]), top1_real=num(row.get("top1_real")),
                img_size=int(size) if size else None, source=str(row["source"]))


def paper_avg5(model: str, pretrain: str | None = None, img_size: int | None = 224,
               epochs: int | None = None) -> float | None:
    """The paper's "Avg 5" top-1 for `model` (the mean over ImageNet, CIFAR-10, CIFAR-100, Pets
    and Flowers after fine-tuning, Tables 2-3), or None where the paper has none. The paper does
    not publish the four per-dataset numbers behind it (v4), so only the mean is here.

    Args: as `paper_top1` (`pretrain` None means ImageNet).
    """
    pretrain = _PRETRAIN_ALIASES.get(squash(pretrain or "imagenet"), squash(pretrain or "imagenet"))
    return _pick(_rows(model, pretrain, img_size, epochs), "top1_avg5")


def official_finetune(model: str, dataset: str, pretrain: str | None = None,
                      img_size: int | None = 224) -> float | None:
    """The official repository's fine-tuning top-1 for `model` from `pretrain` on `dataset`
    (`vt_finetune.csv`: CIFAR-10 at 224 px only), or None where it published none."""
    from mixerbench.data import canonical_name

    df = _read_vt()
    pretrain = _PRETRAIN_ALIASES.get(squash(pretrain or "imagenet"), squash(pretrain or "imagenet"))
    m = (df["model"].eq(_slug(model)) & df["pretrain"].eq(pretrain)
         & df["dataset"].eq(canonical_name(dataset) or str(dataset)))
    if img_size is not None:
        m &= df["img_size"].eq(img_size)
    return float(df[m].iloc[0]["top1"]) if m.any() else None


@lru_cache(maxsize=None)
def _read_vt():
    import pandas as pd

    _printed(_HERE / "vt_finetune.csv")
    return pd.read_csv(_HERE / "vt_finetune.csv", keep_default_na=False, na_values=[""])


# ------------------------------------------------------------------------ the one resolver

# The eval crop behind each table's numbers (paper App. C; docs/paper-notes.md §3): Table 3's
# Mixers and ViTs resmall-crop, Table 2's 448 px Mixers (and its BiT) resize-crop.
TABLE_CROPS = {"table3": "eval-resmall", "table2": "eval-resize"}
# Released weights whose timm tag names another pre-training than the paper row they are
# (docs/paper-notes.md §8): timm says `goog_in21k_ft_in1k`, but its own docstrings call them
# ImageNet-1k pretrained weights, and their 76.6 / 72.1 % are the paper's ImageNet-1k rows (a
# Mixer author confirmed it for B/16 in timm's pull request 651).
TIMM_PROVENANCE = {
    "mixer_b16_224.goog_in21k_ft_in1k": (
        "imagenet", "timm's tag says in21k, but timm's docstring calls these ImageNet-1k "
        "pretrained weights and they are the paper's ImageNet-1k Mixer-B/16 (76.6 % in timm's "
        "results; docs/paper-notes.md §8)"),
    "mixer_l16_224.goog_in21k_ft_in1k": (
        "imagenet", "timm's tag says in21k, but timm's docstring calls these ImageNet-1k "
        "pretrained weights and they are the paper's ImageNet-1k Mixer-L/16 (72.1 % in timm's "
        "results; docs/paper-notes.md §8)"),
}
# timm tag prefixes of weights the paper's authors' group trained and released (Google): the
# paper's rows can stand for them. Other prefixes (`miil`, `fb`, `tv`, `ra`, ...) are other
# people's recipes, which no paper row measured.
PAPER_RELEASES = PAPER_TAGS


def weights_provenance(src: str, num_classes: int | None = None) -> dict:
    """Where weights come from, as the paper's rows are keyed: dict(model (registry slug, or ""
    when the paper has no row of the architecture), upstream (`imagenet`, `imagenet21k`,
    `jft300m`, or "" unknown), paper_weights (trained by the paper's authors' group), why).

    `src` is a `timm:<arch>.<tag>` name (the tag, corrected by `TIMM_PROVENANCE`; a 21,843-class
    head, as timm's pretrained_cfg gives it in `num_classes`, is ImageNet-21k) or a dataset a
    run of ours pre-trained on (then `paper_weights` is False: our own recipe).
    """
    text = str(src)
    if not text.startswith("timm:"):
        key = _PRETRAIN_ALIASES.get(squash(text), "")
        return dict(model="", upstream=key, paper_weights=False,
                    why=f"pre-trained here on {text}" if text else "")
    name = text[len("timm:"):]
    arch, _, tag = name.partition(".")
    model = _slug_of_timm(arch)
    if name in TIMM_PROVENANCE:
        upstream, why = TIMM_PROVENANCE[name]
    elif num_classes == 21843 or "in21k" in tag or "in22k" in tag:
        upstream, why = "imagenet21k", f"timm tag {tag}: pre-trained on ImageNet-21k"
    elif "in1k" in tag:
        upstream, why = "imagenet", f"timm tag {tag}: trained on ImageNet-1k"
    else:
        upstream, why = "", f"timm tag {tag or '(none)'} names no pre-training dataset"
    ours = tag.split("_", 1)[0] in PAPER_RELEASES
    if not ours:
        why += f"; {tag.split('_', 1)[0] or 'untagged'} weights are not the paper's authors'"
    return dict(model=model, upstream=upstream, paper_weights=ours, why=why)


def _slug_of_timm(arch: str) -> str:
    """The registry slug of a timm architecture the paper's tables report, else ""."""
    from mixerbench.models import REGISTRY

    reported = set(_read("table3")["model"]) | set(_read("table2")["model"])
    return next((s.name for s in REGISTRY.values()
                 if s.timm_name == arch and s.name in reported), "")


def comparable_row(model: str, upstream: str, img_size: int | None,
                   crop: str | None = None) -> dict:
    """The paper row a result of `model` pre-trained on `upstream` and measured at `img_size`
    with the eval crop `crop` is set against, and why; never the nearest row of another
    resolution, pre-training or model.

    Of the Table 3 and Table 2 rows of that model, pre-training and resolution (a row that does
    not give its resolution matches any), the one whose table's crop (`TABLE_CROPS`) is `crop`,
    else the Table 3 row with a note that the crops differ; the longest schedule of a table.

    Returns:
        dict(top1, top1_real, avg5, img_size, table, crop, source, paper_name, upstream, note);
        with no such row the numbers are None and `note` begins "no comparable paper row".
    """
    none = dict(top1=None, top1_real=None, avg5=None, img_size=None, table="", crop="",
                source="", paper_name="", upstream="")
    key = _PRETRAIN_ALIASES.get(squash(upstream or ""), "")
    if not model or not key:
        why = "the paper has no row of this model" if not model else \
            "its pre-training dataset is not one of the paper's"
        return dict(none, note=f"no comparable paper row ({why})")
    candidates = []
    for table in ("table3", "table2"):
        df = _read(table)
        m = df["model"].eq(_slug(model)) & df["pretrain"].eq(key) & df["top1"].notna()
        if img_size is not None:
            m &= df["img_size"].eq(img_size) | df["img_size"].isna()
        rows = df[m]
        if "epochs" in rows.columns and rows["epochs"].notna().any():
            rows = rows.sort_values("epochs", ascending=False, kind="stable")
        if not rows.empty:
            candidates.append((table, rows.iloc[0]))
    if not candidates:
        return dict(none, note=f"no comparable paper row (none of {model} pre-trained on "
                                f"{key} at {img_size} px)")
    table, row = next(((t, r) for t, r in candidates if TABLE_CROPS[t] == crop), candidates[0])

    def num(v):
        return None if v is None or v != v or v == "" else float(v)

    size = num(row.get("img_size"))
    note = f"paper {table.replace('table', 'Table ')}, {row['paper_name']} pre-trained on {key}"
    note += f" at {int(size)} px" if size else " (the table gives no resolution)"
    if crop and TABLE_CROPS[table] != crop:
        note += (f"; measured with {crop.removeprefix('eval-')}-crop, the paper's row with "
                 f"{TABLE_CROPS[table].removeprefix('eval-')}-crop")
    return dict(top1=num(row["top1"]), top1_real=num(row.get("top1_real")),
                avg5=num(row.get("top1_avg5")), img_size=int(size) if size else None,
                table=table, crop=TABLE_CROPS[table], source=str(row["source"]),
                paper_name=str(row["paper_name"]), upstream=key, note=note)


def reference_for(src: str, model: str, img_size: int | None, crop: str | None = None,
                  num_classes: int | None = None) -> dict:
    """`comparable_row` for a result of weights from `src` (`weights_provenance`: a timm name,
    or the dataset a run of ours pre-trained on) with the architecture `model`: released weights
    another group trained have no comparable paper row, whatever their name. `note` also says
    where the provenance came from."""
    prov = weights_provenance(src, num_classes)
    if str(src).startswith("timm:") and not prov["paper_weights"]:
        out = comparable_row("", "", None)
        return dict(out, note=f"no comparable paper row ({prov['why']})")
    out = comparable_row(prov["model"] or model, prov["upstream"], img_size, crop)
    if str(src).startswith("timm:"):
        out["note"] += f"; {prov['why']}"
    return out


def paper_throughput(model: str, img_size: int = 224) -> float | None:
    """The paper's TPU-v3 throughput (img/s/core) for `model` at `img_size`, or None."""
    rows = _rows(model, None, img_size, None)
    rows = rows[rows["throughput"].notna()]
    return float(rows.iloc[0]["throughput"]) if not rows.empty else None


def paper_baseline(model: str, img_size: int = 224) -> str | None:
    """The ViT the paper sets `model` against at `img_size`, or None.

    A Mixer is paired with the ViT of the same size and patch where the paper reports both
    throughputs at that resolution: Table 3 at 224 px has Mixer-B/16 1384 vs ViT-B/16 861
    img/s/core (1.61x), Mixer-L/16 419 vs ViT-L/16 280 and Mixer-H/14 194 vs ViT-H/14 87. Any
    other model (ViTs, ResNets, resized variants) or resolution (Mixer-L/16 at 448 has no ViT
    beside it) gets None.
    """
    slug = _slug(model)
    if not slug.startswith("mixer-"):
        return None
    vit = "vit-" + slug[len("mixer-"):]
    if paper_throughput(slug, img_size) is None or paper_throughput(vit, img_size) is None:
        return None
    return vit


__all__ = ["TABLES", "load_table", "official_finetune", "paper_avg5", "paper_row", "paper_top1",
           "paper_throughput", "paper_baseline", "comparable_row", "weights_provenance",
           "TABLE_CROPS", "reference_for"]
