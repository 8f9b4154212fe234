"""Model families live in the registry: one file per family with a `create` function and one
`register_family` call gives a family its zoo entries, alias, options, small-preset model and
plot style; gMLP and ResMLP join that way."""

from __future__ import annotations

import matplotlib.colors as mc
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PathCollection
from typer.testing import CliRunner

from mixerbench.cli import app
from mixerbench.models import create_model, model_info
from mixerbench.models.registry import (
    FAMILIES,
    Family,
    ModelSpec,
    Small,
    register_family,
    unregister_family,
)
from mixerbench.presets import resolve
from mixerbench.report import figures, style

SMALL = ["--preset", "smoke", "--dataset", "synthetic", "--device", "cpu", "--no-bench",
         "--set", "steps=2", "--set", "data.batch_size=16", "--set", "max_eval_examples=32",
         "--set", "data.eval_batch_size=32"]


def _create_convmixer(spec, num_classes, **kw):
    """timm's ConvMixer class (its named entries fix width and depth), as a family file builds it."""
    from timm.models.convmixer import ConvMixer

    return ConvMixer(num_classes=num_classes, **kw)


@pytest.fixture
def convmixer():
    """A family none of the package registers (timm's ConvMixer), added by one call."""
    fam = register_family(Family(
        "convmixer", "ConvMixer", "convmixer-t", color="#56B4E9", marker="X", linestyle="-",
        models=(ModelSpec("convmixer-t", "convmixer", "ConvMixer-T", "convmixer_768_32", 32, 4,
                          dict(dim=32, depth=2, kernel_size=3)),),
        options={"width": "dim", "depth": "depth", "patch_size": "patch_size"},
        create=_create_convmixer,
        small={"smoke": Small(dict(name="convmixer-t", img_size=28, width=24))}))
    yield fam
    unregister_family("convmixer")


@pytest.mark.slow
def test_a_family_joins_compare_and_the_figures_with_one_registration(convmixer, tmp_path,
                                                                      one_thread):
    r = CliRunner().invoke(app, ["compare", "--models", "mixer,convmixer", "--results-dir",
                                 str(tmp_path), *SMALL], env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code == 0, r.output
    acc = pd.read_csv(tmp_path / "accuracy.csv")
    row = acc[acc["family"] == "convmixer"].iloc[0]
    assert row["model"] == "convmixer-t[width=24]"  # the family's smoke model, its option mapped
    # a compare with --set settings writes its own table (its settings' hash in the name)
    table_file, = (tmp_path / "tables").glob("compare-synthetic-smoke*.csv")
    table = pd.read_csv(table_file)
    assert list(table["model"]) == ["mixer-t4[depth=2,width=64]", "convmixer-t[width=24]"]
    assert table["params"].iloc[1] == model_info("convmixer-t", num_classes=10, img_size=28,
                                                 width=24)["params"]

    fig = figures.pareto_cost(acc, paper=False)
    drawn = {(tuple(np.round(c.get_facecolor()[0][:3], 3)), c.get_label())
             for c in fig.axes[0].collections if isinstance(c, PathCollection)}
    assert (tuple(np.round(mc.to_rgb("#56B4E9"), 3)), "ConvMixer") in drawn
    assert style.marker("convmixer-t") == "X" and style.LABELS["convmixer"] == "ConvMixer"
    assert style.order().index("convmixer") < style.order().index("other")


def test_compare_help_lists_the_registered_families(convmixer):
    out = CliRunner().invoke(app, ["compare", "--help"], terminal_width=400).output
    assert "mixer, vit, resnet, gmlp, resmlp, convmixer" in " ".join(out.replace("│", " ").split())


def test_every_family_names_a_small_model_for_each_small_preset():
    for fam in FAMILIES.values():
        for preset, size in (("smoke", 28), ("cifar10-scratch", 32)):
            cfg = resolve(preset, model=fam.name)
            assert cfg.model.name == fam.small[preset].model["name"], (fam.name, preset)
            assert cfg.model.img_size == size


def test_two_families_cannot_look_alike():
    with pytest.raises(ValueError, match="colour"):
        register_family(Family("twin", "Twin", "", color=FAMILIES["gmlp"].color, marker="*",
                               linestyle="-"))
    with pytest.raises(ValueError, match="marker"):
        register_family(Family("twin", "Twin", "", color="#000000", marker="o", linestyle="-"))
    assert "twin" not in FAMILIES


@pytest.mark.parametrize("family", ["gmlp", "resmlp"])
@pytest.mark.parametrize("size", [28, 32])
def test_mlp_families_train_a_step_at_28_and_32_px(family, size, one_thread):
    torch.manual_seed(0)
    m = resolve("smoke", model=family, overrides={"model.img_size": str(size)}).model
    model = create_model(m.name, num_classes=10, img_size=m.img_size, patch_size=m.patch_size,
                         width=m.width, depth=m.depth)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 3, size, size), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert sum(not torch.equal(a, p) for a, p in zip(before, model.parameters())) > 0


@pytest.mark.parametrize("name,kw,count", [
    # the smoke preset's shapes (28 px, patch 4, width 64, 2 blocks, 10 classes) beside its Mixer
    ("gmlp-t4", dict(img_size=28, width=64, depth=2), 84_462),
    ("resmlp-t4", dict(img_size=28, width=64, depth=2), 75_758),
    ("mixer-t4", dict(img_size=28, width=64, depth=2), 77_036),
    # the cifar10-scratch preset's (32 px, width 256, 8 blocks)
    ("gmlp-t4", dict(img_size=32), 4_798_218),
    ("resmlp-t4", dict(img_size=32), 4_265_738),
])
def test_exact_params_of_the_small_shapes(name, kw, count):
    assert model_info(name, num_classes=10, **kw)["params"] == count


@pytest.mark.parametrize("name,timm_name", [("gmlp-s16", "gmlp_s16_224"),
                                            ("resmlp-12", "resmlp_12_224")])
def test_zoo_entries_are_timms_shapes(name, timm_name):
    """Built from timm's MlpMixer class with the family's blocks, an entry is exactly timm's
    named model (same parameters, same MACs)."""
    ours, theirs = model_info(name), model_info(f"timm:{timm_name}")
    assert (ours["params"], ours["macs"]) == (theirs["params"], theirs["macs"])
    assert ours["family"] == theirs["family"]


def test_no_family_is_named_outside_the_models_package():
    """What a family is and does lives in its file under models/families/: the loop, the
    benchmark, evaluation, the experiments and the report never test or name a family (a
    string literal that is a family's name or alias, or a `name-*` pattern of its entries);
    they ask the registry (`takes_gelu`, `channels_last`, `paper_family`, ...)."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "mixerbench"
    files = [root / f for f in ("train.py", "prepare.py", "rundir.py", "optim.py", "bench.py",
                                "evaluate.py", "experiments.py")] + sorted((root / "report").glob("*.py"))
    names = {n for f in FAMILIES.values() for n in (f.name, *f.aliases)}
    hits = []
    for path in (p for p in files if p.is_file()):
        tree = ast.parse(path.read_text())
        docs = {id(node.body[0].value) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                and node.body and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                tokens = re.split(r"[^A-Za-z0-9_*-]+", node.value)
                bad = [t for t in tokens if t in names or t.removesuffix("-*") in names]
                if bad:
                    hits.append(f"{path.relative_to(root.parent)}:{node.lineno} {bad[0]!r}")
    assert not hits, hits
