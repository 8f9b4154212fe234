"""Weights from everywhere a researcher has them: timm names read offline from a real Hugging Face
cache layout (built here), timm state dicts named by `--arch`, distilled timm heads, and the
rules a fine-tuning start follows (one regulariser list, JAX init for ViTs, real model options).
Official vision_transformer `.npz` files: tests/test_official_layouts.py."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mixerbench.errors import UserError
from mixerbench.models import create_model
from mixerbench.models.weights import (
    load_for_finetuning,
    load_model,
    model_description,
    save_checkpoint,
)

# ----------------------------------------------------------------- a real hub cache layout


def hub_cache(home: Path, repo: str, model, model_args: dict | None = None) -> Path:
    """Store `model` in `home/hub` as huggingface_hub does after a download of timm's `repo`
    (`timm/<arch>.<tag>`): files under blobs/<sha256>, the commit in refs/main, and
    snapshots/<commit>/{model.safetensors,config.json} linking to the blobs. The files are the
    ones timm's `save_for_hf` writes for the hub."""
    from timm.models import save_for_hf

    tmp = home / "tmp-save"
    save_for_hf(model, str(tmp), model_args=model_args, safe_serialization=True)
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snap = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    for f in tmp.iterdir():
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.move(str(f), root / "blobs" / sha)
        (snap / f.name).symlink_to(Path("../../blobs") / sha)
    tmp.rmdir()
    return snap


def tiny_timm_mixer(num_classes=10, seed=0):
    """timm's MlpMixer at stand-in size (28 px, patch 4, width 16, 2 blocks), random weights."""
    import timm
    from timm.models.mlp_mixer import MlpMixer

    torch.manual_seed(seed)
    m = MlpMixer(img_size=28, patch_size=4, embed_dim=16, num_blocks=2, num_classes=num_classes)
    m.pretrained_cfg = timm.get_pretrained_cfg("mixer_b16_224.goog_in21k_ft_in1k").to_dict()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m.eval()


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_timm_mixer_loads_offline_from_the_cache_into_the_native_mixer(offline_home, one_thread):
    """timm:mixer_* from a cached snapshot: the native Mixer, exact GELU recorded, same logits
    as timm's own MlpMixer with these weights; then fine-tuned at 2x (block diagonal)."""
    from mixerbench.models.mixer import Mixer

    ref = tiny_timm_mixer()
    hub_cache(offline_home, "timm/mixer_b16_224.goog_in21k_ft_in1k", ref)
    model, rec = load_model("timm:mixer_b16_224.goog_in21k_ft_in1k")
    assert isinstance(model, Mixer) and model.gelu == "exact"
    assert rec["name"] == "mixer-b16" and rec["img_size"] == 28 and rec["patch_size"] == 4
    assert rec["overrides"] == dict(width=16, depth=2, gelu="exact")
    x = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref(x), rtol=1e-5, atol=1e-5)
    big, rec2 = load_for_finetuning("timm:mixer_b16_224.goog_in21k_ft_in1k", num_classes=5,
                                    img_size=56)
    assert isinstance(big, Mixer) and big.tokens_dim == 4 * model.tokens_dim
    assert rec2["img_size"] == 56 and rec2["overrides"]["tokens_dim"] == 4 * model.tokens_dim


def test_timm_vit_loads_offline_from_the_cache(offline_home, one_thread):
    """A non-Mixer timm name goes through timm's own loader, from the cached file only."""
    import timm

    torch.manual_seed(1)
    ref = timm.create_model("test_vit", pretrained=False).eval()
    hub_cache(offline_home, "timm/test_vit.r160_in1k", ref)
    model, rec = load_model("timm:test_vit.r160_in1k")
    assert rec["img_size"] == 160 and rec["num_classes"] == ref.num_classes
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref(x))
    for name in ("timm:test_vit.r160_in1k", "timm:mixer_b16_224.goog_in21k_ft_in1k"):
        if name.startswith("timm:mixer"):
            hub_cache(offline_home, "timm/mixer_b16_224.goog_in21k_ft_in1k", tiny_timm_mixer())
        moved, _ = load_model(name, device="meta")  # on the device asked for (evaluate's GPU)
        assert {p.device.type for p in moved.parameters()} == {"meta"}


def test_uncached_timm_name_offline_is_one_sentence_naming_the_options(offline_home):
    with pytest.raises(UserError) as err:
        load_model("timm:mixer_b16_224.goog_in21k_ft_in1k")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE=1" in msg and "HF_HOME" in msg and "--arch" in msg and ".npz" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")
    with pytest.raises(UserError, match="no weights on the Hugging Face hub named"):
        load_model("timm:mixer_b16_224.no_such_tag")


def test_uncached_timm_name_without_a_reachable_hub_fails_in_seconds(offline_home, tmp_path,
                                                                     monkeypatch):
    """Online mode but no hub (a closed local port stands for it): one probe, not the hub
    client's minute of retries, then the same options."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("MIXERBENCH_CACHE", str(tmp_path / "mb-cache"))
    start = time.monotonic()
    with pytest.raises(UserError, match="hub is not reachable.*--arch"):
        load_model("timm:mixer_b16_224.goog_in21k_ft_in1k")
    assert time.monotonic() - start < 10


# ------------------------------------------------------------------ state dicts via --arch


def test_plain_safetensors_needs_and_takes_arch(tmp_path, one_thread):
    from safetensors.torch import save_file

    ref = tiny_timm_mixer(num_classes=7)
    plain = tmp_path / "timm-mixer.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, plain)
    with pytest.raises(UserError, match="--arch"):
        load_model(str(plain))
    model, rec = load_model(str(plain), model_name="mixer_b16_224")
    assert rec["name"] == "mixer-b16" and rec["num_classes"] == 7 and model.gelu == "exact"
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref(x), rtol=1e-5, atol=1e-5)


def test_finetune_and_evaluate_take_arch_on_the_command_line(tmp_path, one_thread):
    import timm
    from conftest import cli, refused
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = timm.create_model("test_vit", pretrained=False, num_classes=10, img_size=28,
                            patch_size=4)
    plain = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, plain)
    res = tmp_path / "results"
    line = refused(cli("finetune", "--init", plain, "--dataset", "mnist-5k", "--steps", "200",
                       "--print-config"))
    assert "--arch" in line
    cfg = cli("finetune", "--init", plain, "--arch", "test_vit", "--dataset", "mnist-5k",
              "--steps", "200", "--print-config")
    assert cfg.exit_code == 0, cfg.output
    assert json.loads(cfg.stdout)["model"]["name"] == "timm:test_vit"
    # 160 px is test_vit's size in timm, so a 28 px state dict is refused in one sentence
    line = refused(cli("evaluate", "--checkpoint", plain, "--arch", "test_vit", "--dataset",
                       "mnist-5k", "--max-examples", "8", "--results-dir", res))
    assert "does not fit" in line


# ----------------------------------------------------------------- fine-tuning starts right


def test_distilled_timm_model_gets_both_heads_zeroed(tmp_path, one_thread):
    from mixerbench.models import count_params

    name = "timm:deit_tiny_distilled_patch16_224"
    over = dict(width=16, depth=1, num_heads=2)
    model = create_model(name, num_classes=10, img_size=16, patch_size=8, **over)
    path = tmp_path / "deit.safetensors"
    save_checkpoint(path, model, model_description(name, 10, 16, 8, over))
    ft, rec = load_for_finetuning(str(path), num_classes=4)
    heads = ft.get_classifier()
    assert isinstance(heads, tuple) and len(heads) == 2
    assert all(p.shape[0] == 4 and torch.count_nonzero(p) == 0 for h in heads for p in h.parameters())
    total, body = count_params(ft)
    assert total - body == 2 * (16 * 4 + 4)


def test_finetuning_drops_every_regulariser_and_config_records_what_trained(tmp_path, one_thread):
    """A timm-named drop_path_rate in the checkpoint does not survive into fine-tuning: the model
    built has exactly the stochastic depth config.json records."""
    from timm.layers import DropPath

    from mixerbench.config import to_dict
    from mixerbench.prepare import build_model
    from mixerbench.presets import run_config

    over = dict(width=32, depth=2, num_heads=2, drop_path_rate=0.3, attn_drop_rate=0.2)
    model = create_model("vit-t4", num_classes=10, img_size=28, patch_size=4, **over)
    path = tmp_path / "vit.safetensors"
    save_checkpoint(path, model, model_description("vit-t4", 10, 28, 4, over))
    for drop_path in (0.0, 0.1):
        cfg = run_config("finetune", kind="finetune", init=str(path), dataset="mnist-5k",
                         overrides={"model.drop_path": drop_path})
        recorded = to_dict(cfg)["model"]
        assert recorded["drop_path"] == drop_path
        assert not {"drop_path_rate", "attn_drop_rate"} & set(recorded["options"])
        built, rec = build_model(cfg, 10)
        rates = [m.drop_prob for m in built.modules() if isinstance(m, DropPath)]
        assert max(rates, default=0.0) == pytest.approx(drop_path)
        assert all(m.attn_drop.p == 0 for m in built.modules() if hasattr(m, "attn_drop"))
        assert "drop_path_rate" not in rec["overrides"]


def test_paper_scale_vits_start_from_the_jax_init(one_thread):
    """The ViT paper's init (timm weight_init='jax'): a zero head, zero patch-embedding bias."""
    vit = create_model("vit-s16", num_classes=10, depth=1)
    assert torch.count_nonzero(vit.head.weight) == 0 and torch.count_nonzero(vit.head.bias) == 0
    default = __import__("timm").create_model("vit_small_patch16_224", num_classes=10, depth=1)
    assert torch.count_nonzero(default.head.weight) > 0  # what timm's default would have done


def test_smoke_resnet_is_the_model_its_options_say(one_thread):
    """The smoke preset's ResNet: exact parameter count of the model built; a new run with a
    stem_width that timm would silently ignore is refused, while a run recorded with it (0.1.0's
    smoke ResNet) builds the model it trained, which never read it."""
    from mixerbench.models import count_params
    from mixerbench.presets import family_model, resolve

    m = family_model("smoke", "resnet")[0]
    model = create_model(m.name, num_classes=10, img_size=m.img_size, **m.options)
    assert count_params(model)[0] == 325_866 and model.conv1.out_channels == 64
    with pytest.raises(UserError, match="stem_width"):
        resolve("smoke", model="resnet", overrides={"model.options.stem_width": 16})
    old = create_model(m.name, num_classes=10, img_size=m.img_size, stem_width=16, **m.options)
    assert count_params(old)[0] == 325_866 and old.conv1.out_channels == 64
    deep = create_model("resnet18", num_classes=10, img_size=28, stem_width=16, stem_type="deep")
    assert deep.conv1[0].out_channels == 16


# ------------------------------------------------------------ reproduce released, end to end

WNIDS = ("n01440764", "n01443537", "n01484850")
OWNER = [2, 0, 1, 1, 2, 0, 0, 2, 1]  # class of ILSVRC2012_val_00000001 ... 09


@pytest.fixture
def imagenet_layout(tmp_path):
    """A tiny ImageNet copy in the layout users have: train/<wnid>/ and val/<wnid>/ with the
    ILSVRC2012_val_* names spread over the classes, and a ReaL json in file-name order (each
    image's own class; one image left unlabelled)."""
    from PIL import Image

    root = tmp_path / "imagenet"
    rng = np.random.default_rng(0)
    for i, c in enumerate(OWNER):
        (root / "val" / WNIDS[c]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(
            root / "val" / WNIDS[c] / f"ILSVRC2012_val_{i + 1:08d}.JPEG", format="JPEG")
    for c, w in enumerate(WNIDS):
        (root / "train" / w).mkdir(parents=True, exist_ok=True)
        for j in range(5):
            Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(
                root / "train" / w / f"{w}_{j}.JPEG", format="JPEG")
    real = [[c] for c in OWNER]
    real[4] = []
    (tmp_path / "real.json").write_text(json.dumps(real))
    return root, tmp_path / "real.json"


@pytest.mark.slow
def test_reproduce_released_offline_from_the_cache(offline_home, imagenet_layout, tmp_path,
                                                   one_thread):
    """Tiny stand-ins under a fake HF cache, one under the real Mixer-B/16 name (the native
    Mixer path) and timm's test_vit standing for ViT-B/16 (timm's loader): top-1 as an
    independent pass of timm's own model scores it, ReaL over the labelled images, the 5-shot
    probe, the paper's numbers and the differences, provenance, in released.csv and
    tables/released.{csv,md}."""
    import timm

    from mixerbench import results
    from mixerbench.data import get_dataset
    from mixerbench.evaluate import _loader
    from mixerbench.experiments import Released, reproduce_released

    folder, real = imagenet_layout
    mixer = tiny_timm_mixer(num_classes=3)
    hub_cache(offline_home, "timm/mixer_b16_224.goog_in21k_ft_in1k", mixer)
    torch.manual_seed(2)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3).eval()
    hub_cache(offline_home, "timm/test_vit.r160_in1k", vit)
    stand_ins = (
        Released("timm:mixer_b16_224.goog_in21k_ft_in1k", "Mixer-B/16", "imagenet21k", 224,
                 "resmall", "stand-in"),
        Released("timm:test_vit.r160_in1k", "ViT-B/16", "imagenet21k", 224, "resmall"),
    )
    res = tmp_path / "results"
    out = reproduce_released(root=res, dataset=str(folder), real_labels=real, fewshot=True,
                             checkpoints=stand_ins, device="cpu", batch_size=4)
    rows = results.load("released", res)
    assert list(rows["checkpoint"]) == [c.checkpoint for c in stand_ins]
    val = get_dataset(str(folder), "validation")
    for ref, size, (_, r) in zip((mixer, vit), (28, 160), rows.iterrows()):
        with torch.no_grad():
            hits = sum(int((ref(x).argmax(1) == y).sum()) for x, y in _loader(
                val, batch_size=4, pipeline="eval-resmall", img_size=size, device="cpu"))
        assert r["top1"] == pytest.approx(100 * hits / 9) and r["n"] == 9
        assert r["real_n"] == 8 and 0 <= r["real_top1"] <= 100
        assert r["img_size"] == size and r["pipeline"] == "eval-resmall"
        assert r["split"] == "validation" and r["git_sha"] and r["timm_version"] == timm.__version__
        assert 0 <= r["fewshot5_mean"] <= 100
    table = out["table"]
    assert list(table["paper_top1"]) == [80.64, 84.59] and list(table["paper_real"]) == [85.8, 88.93]
    np.testing.assert_allclose(table["top1_diff"], table["top1"] - table["paper_top1"])
    np.testing.assert_allclose(table["real_diff"], table["real_top1"] - table["paper_real"])
    assert table["paper_source"].iloc[0] == ("paper Table 3, Mixer-B/16 pre-trained on "
                                             "imagenet21k at 224 px")
    assert table["model"].iloc[0] == "mixer-b16[depth=2,patch_size=4,width=16]"  # the native Mixer, its patch
    md = (res / "tables" / "released.md").read_text()
    # the paper's 80.64 with the digits the paper printed (ours have one decimal)
    assert re.search(r"\|\s+80\.64\s+\|", md) and "timm:test_vit.r160_in1k" in md
    assert (res / "tables" / "released.csv").is_file()


@pytest.mark.slow
def test_reproduce_released_is_all_or_nothing(offline_home, imagenet_layout, tmp_path, one_thread):
    """Every checkpoint is loaded before any is evaluated: a damaged third one (a truncated
    cached file) is refused before any row is written, not after two rows were appended. The
    rows of a run land in one write, and the same run again adds none (it used to leave 4 rows
    for 2 checkpoints); --batch-size 0 is refused instead of running as 256."""
    from conftest import cli, refused

    from mixerbench import results
    from mixerbench.experiments import Released, reproduce_released

    folder, real = imagenet_layout
    hub_cache(offline_home, "timm/mixer_b16_224.goog_in21k_ft_in1k", tiny_timm_mixer(3))
    snap = hub_cache(offline_home, "timm/mixer_l16_224.goog_in21k_ft_in1k", tiny_timm_mixer(3, 1))
    blob = (snap / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-100])  # a download cut short
    good = (Released("timm:mixer_b16_224.goog_in21k_ft_in1k", "Mixer-B/16", "imagenet21k", 224,
                     "resmall"),
            Released("timm:mixer_b16_224.goog_in21k_ft_in1k", "Mixer-B/16", "imagenet21k", 224,
                     "resize"))
    bad = Released("timm:mixer_l16_224.goog_in21k_ft_in1k", "Mixer-L/16", "imagenet21k", 224,
                   "resmall")
    res = tmp_path / "results"
    # the cache's own check (bytes against the blob's sha256 name) catches the cut download
    with pytest.raises(UserError, match="mixer_l16_224.*not the file the Hugging Face cache says"):
        reproduce_released(root=res, dataset=str(folder), real_labels=real, checkpoints=(*good, bad),
                           device="cpu", batch_size=4)
    assert not (res / "released.csv").exists()
    for _ in range(2):
        out = reproduce_released(root=res, dataset=str(folder), real_labels=real,
                                 checkpoints=good, device="cpu", batch_size=4)
    rows = results.load("released", res)
    assert list(rows["pipeline"]) == ["eval-resmall", "eval-resize"]
    assert len(out["kept"]) == 2 and len(out["notes"]) == 2
    reproduce_released(root=res, dataset=str(folder), checkpoints=good[:1], device="cpu",
                       batch_size=4)  # without ReaL: another observation, recorded
    assert list(results.load("released", res)["real_n"].isna()) == [False, False, True]
    line = refused(cli("reproduce", "released", "--batch-size", "0", "--dataset", folder,
                       "--results-dir", res))
    assert "--batch-size 0" in line


@pytest.mark.slow
def test_reproduce_released_without_the_weights_fails_fast(tmp_path, child_env,
                                                           imagenet_layout):
    from conftest import run

    env = dict(child_env, HF_HOME=str(tmp_path / "empty-hf"), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    res = tmp_path / "results"
    out = run(["reproduce", "released", "--dataset", imagenet_layout[0], "--results-dir", res],
              env)
    assert out.returncode == 2, out.stderr
    assert "HF_HUB_OFFLINE=1" in out.stderr and "--arch" in out.stderr
    assert out.stderr.count("\n") == 1 and out.stdout == ""
    assert not (res / "released.csv").exists()


@pytest.mark.slow
def test_finetune_a_timm_mixer_from_the_cache_at_2x(tmp_path, child_env):
    """The command a user types: a timm Mixer from the HF cache, offline, fine-tuned at 2x (the
    block-diagonal expansion); config.json records the native Mixer with exact GELU."""
    from conftest import run

    from mixerbench.models.weights import read_metadata

    home = tmp_path / "hf"
    hub_cache(home, "timm/mixer_b16_224.goog_in21k_ft_in1k", tiny_timm_mixer())
    env = dict(child_env, HF_HOME=str(home), HF_HUB_OFFLINE="1")
    res = tmp_path / "results"
    out = run(["finetune", "--init", "timm:mixer_b16_224.goog_in21k_ft_in1k", "--dataset",
               "mnist-5k", "--img-size", "2x", "--steps", "2", "--set", "optim.warmup_steps=1",
               "--set", "max_eval_examples=50", "--run-name", "ft2x", "--results-dir", res], env)
    assert out.returncode == 0, out.stderr
    cfg = json.loads((res / "runs" / "ft2x" / "config.json").read_text())
    assert cfg["model"]["name"] == "mixer-b16" and cfg["model"]["gelu"] == "exact"
    assert cfg["model"]["img_size"] == 56 and cfg["init"] == "timm:mixer_b16_224.goog_in21k_ft_in1k"
    desc = read_metadata(res / "runs" / "ft2x" / "checkpoint-last.safetensors")
    assert desc["img_size"] == 56 and desc["overrides"]["tokens_dim"] == 4 * 8
    assert desc["overrides"]["gelu"] == "exact"
