"""CONTRIBUTING.md's extensions, run as written there: its PoolFormer family (timm's) and its
Food-101 record, registered from outside the package, join `compare` and `plot` with nothing
else changed, and the dataset's fine-tuning recipe follows from its record."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mixerbench.cli import app

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("apple_pie", "bibimbap", "churros")


def contributing_block(heading: str) -> str:
    """The first Python code block under `## <heading>` in CONTRIBUTING.md."""
    section = (ROOT / "CONTRIBUTING.md").read_text().split(f"## {heading}", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_as_written(heading: str, name: str) -> None:
    code = contributing_block(heading)
    exec(compile(code, f"CONTRIBUTING.md ({heading})", "exec"), {"__name__": name})


@pytest.fixture
def poolformer():
    from mixerbench.models.registry import FAMILIES, unregister_family

    run_as_written("A model family", "poolformer")
    yield FAMILIES["poolformer"]
    unregister_family("poolformer")


@pytest.fixture
def food101(tmp_path):
    """The record as CONTRIBUTING.md writes it, and a small local copy in its layout (`train/`
    and `validation/` class folders of photos of varying sizes, each class its own colour)."""
    from PIL import Image

    from mixerbench.data import unregister_dataset

    run_as_written("A dataset", "food101_record")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("validation", 8)):
        for c, cls in enumerate(CLASSES):
            folder = tmp_path / "data" / "food101" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(24, 48, 2)
                pixels = np.clip(rng.normal(60 + 70 * c, 20, (h, w, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")
    yield tmp_path / "data"
    unregister_dataset("food101")


def test_the_datasets_recipe_and_spellings_follow_from_its_record(food101):
    from mixerbench.data import canonical_name, known_datasets
    from mixerbench.presets import finetune_preset, get_preset, names

    assert canonical_name("Food-101") == "food101"
    assert finetune_preset("Food-101") == "finetune-food101" in names()
    recipe = get_preset("finetune-food101")
    assert (recipe.steps, recipe.optim.warmup_steps, recipe.data.dataset) == (10_000, 500, "food101")
    row = next(r for r in known_datasets() if r["name"] == "food101")
    assert (row["hub_id"], row["classes"], row["image_size"]) == ("ethz/food101", 101, "varies")


def test_the_familys_entry_is_timms_model(poolformer):
    """Built from timm's MetaFormer class, the zoo's PoolFormer-S12 is timm's poolformer_s12
    (same parameters, same MACs), and its small model trains at the smoke preset's 28 px."""
    from mixerbench.models import model_info

    ours, theirs = model_info("poolformer-s12"), model_info("timm:poolformer_s12")
    assert (ours["params"], ours["macs"]) == (theirs["params"], theirs["macs"])
    assert ours["family"] == "poolformer" and model_info("poolformer-t", img_size=28)["params"]


@pytest.mark.slow
def test_a_family_and_a_dataset_from_outside_join_compare_and_plot(poolformer, food101, tmp_path,
                                                                    one_thread):
    from matplotlib.collections import PathCollection

    from mixerbench.report import figures

    results = tmp_path / "results"
    r = CliRunner().invoke(app, [
        "compare", "--models", "mixer,poolformer", "--preset", "smoke", "--dataset", "Food-101",
        "--data-dir", str(food101), "--device", "cpu", "--no-bench", "--results-dir",
        str(results), "--set", "steps=3", "--set", "data.batch_size=12",
        "--set", "data.eval_batch_size=24", "--set", "data.pipeline=small",
        "--set", "model.img_size=32"], env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code == 0, r.output
    acc = pd.read_csv(results / "accuracy.csv")
    assert list(acc["family"]) == ["mixer", "poolformer"]
    assert set(acc["dataset"]) == {"food101"}  # the registry name, whatever was typed
    assert list(acc["model"])[1] == "poolformer-t"  # the family's smoke model
    table_file, = (results / "tables").glob("compare-food101-smoke*.csv")
    assert list(pd.read_csv(table_file)["model"])[1] == "poolformer-t"

    r = CliRunner().invoke(app, ["plot", "--results-dir", str(results)])
    assert r.exit_code == 0, r.output
    assert list((results / "figures").glob("*.png"))
    fig = figures.pareto_cost(acc, paper=False)
    labels = {c.get_label() for c in fig.axes[0].collections if isinstance(c, PathCollection)}
    assert "PoolFormer" in labels
