"""A row's model label says what was built: its width, depth and patch are the module's own.

Model options that would contradict the model section's fields (`embed_dim` is a ViT's width,
`num_blocks` a ResMLP's depth) are refused with the field to set instead; option values outside
what makes a model of the family are refused; `--arch` naming another patch than the weights'
gives a label with the weights' patch. Each refusal: exit 2, one sentence, nothing written.
"""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import cli, refused

from mixerbench.errors import UserError
from mixerbench.models import FAMILIES, build_on_meta, create_model, facts, model_label

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = ["pretrain", "--preset", "smoke", "--dataset", "synthetic", "--device", "cpu",
         "--steps", "1", "--set", "data.batch_size=16", "--set", "max_eval_examples=16"]


@pytest.mark.parametrize("model,option,field", [
    ("gmlp", "embed_dim=96", "model.width=96"),
    ("vit", "embed_dim=96", "model.width=96"),
    ("resmlp", "num_blocks=3", "model.depth=3"),
    ("mixer", "dim=96", "model.width=96"),
    ("gmlp", "patch_size=7", "model.patch_size=7"),
    ("vit", "img_size=32", "model.img_size=32"),
    ("mixer", "drop_path=0.2", "model.drop_path=0.2"),
    ("vit", "drop_path_rate=0.2", "model.drop_path=0.2"),
])
def test_an_option_that_is_a_field_is_refused_naming_the_field(model, option, field, tmp_path):
    line = refused(cli(*SMOKE, "--model", model, "--set", f"model.options.{option}",
                       "--results-dir", tmp_path / "r"))
    assert f"model.options.{option.split('=')[0]}" in line and field in line, line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("model,option", [
    ("gmlp", "mlp_ratio=0"), ("resmlp", "mlp_ratio=-1"), ("vit", "mlp_ratio=0"),
    ("mixer", "tokens_dim=0"), ("mixer", "channels_dim=-4"), ("vit", "num_heads=0"),
    ("resnet", "layers=[1,0,1,1]"), ("resnet", "channels=[16,32,64,0]"),
    ("resmlp", "init_values=5"), ("vit", "mlp_ratio=0.01"),
])
def test_an_option_outside_what_makes_the_model_is_refused(model, option, tmp_path):
    line = refused(cli(*SMOKE, "--model", model, "--set", f"model.options.{option}",
                       "--results-dir", tmp_path / "r"))
    assert f"model.options.{option.split('=')[0]}" in line and (
        "from " in line or "at least" in line), line
    assert not (tmp_path / "r").exists()


def test_the_field_itself_trains_and_the_label_says_the_width_built(tmp_path):
    r = cli(*SMOKE, "--model", "gmlp", "--set", "model.width=96", "--results-dir", tmp_path)
    assert r.exit_code == 0, r.output
    row, = csv.DictReader(open(tmp_path / "accuracy.csv"))
    assert row["model"] == "gmlp-t4[depth=2,width=96]"


def test_arch_of_another_patch_labels_the_weights_patch(tmp_path):
    """A timm state dict of a patch-4, width-64, 2-block Mixer named `--arch mixer_s32_224`:
    the model built has the file's shapes, and so does its row's label (not S/32's)."""
    from safetensors.torch import save_file
    from timm.models.mlp_mixer import MlpMixer

    torch.manual_seed(0)
    m = MlpMixer(img_size=32, patch_size=4, embed_dim=64, num_blocks=2, num_classes=10)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "m.safetensors")
    r = cli("evaluate", "--checkpoint", tmp_path / "m.safetensors", "--arch", "mixer_s32_224",
            "--dataset", "synthetic", "--device", "cpu", "--max-examples", "16",
            "--results-dir", tmp_path / "r")
    assert r.exit_code == 0, r.output
    row, = csv.DictReader(open(tmp_path / "r" / "accuracy.csv"))
    assert row["model"] == "mixer-s32[depth=2,patch_size=4,width=64]"


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("change", [{}, dict(width=48), dict(depth=3), dict(patch_size=7)])
def test_every_family_builds_what_its_label_says(family, change):
    """The smoke model of each family, with a field changed: the width, depth and patch read
    from the module are the ones `model_label` prints (a ResNet has none of them)."""
    small = dict(FAMILIES[family].small["smoke"].model)
    if any(k in change and k not in FAMILIES[family].options for k in ("width", "depth")):
        pytest.skip("no single width or depth")
    small.update(change)
    if small.get("patch_size") and small["img_size"] % small["patch_size"]:
        small["img_size"] = 28 if small["patch_size"] == 7 else small["img_size"]
    overrides = {**small.get("options", {}),
                 **{k: small[k] for k in ("width", "depth") if small.get(k)}}
    with torch.device("meta"):
        model = create_model(small["name"], num_classes=10, img_size=small["img_size"],
                             patch_size=small.get("patch_size"), **overrides)
    built = facts(model)
    label = model_label(small["name"], overrides, small.get("patch_size"))
    for key in ("width", "depth", "patch_size"):
        if built[key] is not None and (key in change or key in overrides):
            assert f"{key}={built[key]}" in label, (label, built)


def test_a_constructor_option_that_overrides_a_field_is_caught_where_the_model_is_built():
    """Behind the refusal of `presets.resolve`: the meta-device build itself compares the module
    with what the label will say (a recorded config or a sweep that skips resolve)."""
    with pytest.raises(UserError, match="width 96, not the 64"):
        build_on_meta("gmlp-t4", img_size=28, patch_size=4, width=64, depth=2, embed_dim=96)


@pytest.mark.parametrize("options", ["0", "[1,2]", '"x"'])
def test_options_that_are_no_mapping_are_one_sentence(options, tmp_path):
    line = refused(cli(*SMOKE, "--set", f"model.options={options}", "--print-config",
                       "--results-dir", tmp_path / "r"))
    assert "model.options" in line
