"""Official vision_transformer `.npz` checkpoints in every layout they were released in.

Each layout is checked against an independent NumPy forward pass written here from the official
model definitions (google-research/vision_transformer `models_vit.py`, `models_mixer.py`: Flax
LayerNorm with eps 1e-6, Flax's tanh GELU, per-head query / key / value kernels, attention
scaled by 1/sqrt(head width)), on random weights where every kernel, bias, scale, class token
and position embedding is drawn (zeros would hide a missing mapping): ViT with a class token and
with global average pooling, with and without the representation layer (`pre_logits`), in the
pre-Linen module numbering of the released files and the current Flax one; the Mixer at 1x and,
block-diagonally expanded, on an image tiled 2x2.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import cli, refused

from mixerbench.errors import UserError
from mixerbench.models import create_model
from mixerbench.models.resize import resize_model
from mixerbench.models.weights import linen_names, load_for_finetuning, load_model

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-5  # relative to the largest reference logit


# ------------------------------------------------------------------ the official forward passes


def _ln(x, g, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * g + b


def _gelu_tanh(x):  # Flax's nn.gelu (approximate=True), as the official checkpoints use
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _patches(img, p):
    """(H, W, 3) -> (S, p*p*3) in raster order, each patch flattened (row, col, channel) as the
    kernel (p, p, 3, C) of a stride-p convolution reads it."""
    h = img.shape[0] // p
    return img.reshape(h, p, h, p, 3).transpose(0, 2, 1, 3, 4).reshape(h * h, p * p * 3)


def vit_forward(a, img, p):
    """`models_vit.py` VisionTransformer on one image, in current Flax names: classifier
    'token' when the weights have `cls`, else 'gap'; the representation layer when they have
    `pre_logits`. Returns (logits, pre-logits features)."""
    w = a["embedding/kernel"]
    x = _patches(img, p) @ w.reshape(-1, w.shape[-1]) + a["embedding/bias"]
    if "cls" in a:
        x = np.concatenate([a["cls"][0], x])
    x = x + a["Transformer/posembed_input/pos_embedding"][0]
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in a:
        b = f"Transformer/encoderblock_{i}/"
        att = b + "MultiHeadDotProductAttention_0/"
        y = _ln(x, a[b + "LayerNorm_0/scale"], a[b + "LayerNorm_0/bias"])
        q, k, v = (np.einsum("nd,dhk->hnk", y, a[att + n + "/kernel"])
                   + a[att + n + "/bias"][:, None] for n in ("query", "key", "value"))
        logits = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        x = x + np.einsum("hnk,hkd->nd", attn @ v, a[att + "out/kernel"]) + a[att + "out/bias"]
        y = _ln(x, a[b + "LayerNorm_1/scale"], a[b + "LayerNorm_1/bias"])
        h = _gelu_tanh(y @ a[b + "MlpBlock_0/Dense_0/kernel"] + a[b + "MlpBlock_0/Dense_0/bias"])
        x = x + h @ a[b + "MlpBlock_0/Dense_1/kernel"] + a[b + "MlpBlock_0/Dense_1/bias"]
        i += 1
    x = _ln(x, a["Transformer/encoder_norm/scale"], a["Transformer/encoder_norm/bias"])
    x = x[0] if "cls" in a else x.mean(0)
    if "pre_logits/kernel" in a:
        x = np.tanh(x @ a["pre_logits/kernel"] + a["pre_logits/bias"])
    return x @ a["head/kernel"] + a["head/bias"], x


def mixer_forward(a, img, p):
    """`models_mixer.py` MlpMixer on one image."""
    w = a["stem/kernel"]
    x = _patches(img, p) @ w.reshape(-1, w.shape[-1]) + a["stem/bias"]   # (S, C)
    i = 0
    while f"MixerBlock_{i}/LayerNorm_0/scale" in a:
        b = f"MixerBlock_{i}/"
        y = _ln(x, a[b + "LayerNorm_0/scale"], a[b + "LayerNorm_0/bias"]).T   # (C, S)
        t = b + "token_mixing/"
        y = _gelu_tanh(y @ a[t + "Dense_0/kernel"] + a[t + "Dense_0/bias"]) @ a[t + "Dense_1/kernel"]
        x = x + (y + a[t + "Dense_1/bias"]).T
        y = _ln(x, a[b + "LayerNorm_1/scale"], a[b + "LayerNorm_1/bias"])
        ch = b + "channel_mixing/"
        y = _gelu_tanh(y @ a[ch + "Dense_0/kernel"] + a[ch + "Dense_0/bias"])
        x = x + y @ a[ch + "Dense_1/kernel"] + a[ch + "Dense_1/bias"]
        i += 1
    x = _ln(x, a["pre_head_layer_norm/scale"], a["pre_head_layer_norm/bias"]).mean(0)
    return x @ a["head/kernel"] + a["head/bias"]


# ------------------------------------------------------------------ random official weights


def vit_arrays(rng, *, token=True, representation=None, p=4, side=8, d=8, heads=2, mlp=16,
               depth=2, k=3):
    """A random official ViT in current Flax names (float64: the reference computes in it)."""
    n = (side // p) ** 2 + token
    a = {"embedding/kernel": rng.normal(size=(p, p, 3, d)), "embedding/bias": rng.normal(size=d),
         "Transformer/posembed_input/pos_embedding": rng.normal(size=(1, n, d)),
         "Transformer/encoder_norm/scale": 1 + 0.1 * rng.normal(size=d),
         "Transformer/encoder_norm/bias": rng.normal(size=d)}
    if token:
        a["cls"] = rng.normal(size=(1, 1, d))
    features = d
    if representation:
        a["pre_logits/kernel"] = rng.normal(size=(d, representation)) / np.sqrt(d)
        a["pre_logits/bias"] = rng.normal(size=representation)
        features = representation
    a["head/kernel"] = rng.normal(size=(features, k))
    a["head/bias"] = rng.normal(size=k)
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_1"):
            a[b + ln + "/scale"], a[b + ln + "/bias"] = 1 + 0.1 * rng.normal(size=d), rng.normal(size=d)
        att = b + "MultiHeadDotProductAttention_0/"
        for q in ("query", "key", "value"):
            a[att + q + "/kernel"] = rng.normal(size=(d, heads, d // heads)) / np.sqrt(d)
            a[att + q + "/bias"] = rng.normal(size=(heads, d // heads))
        a[att + "out/kernel"] = rng.normal(size=(heads, d // heads, d)) / np.sqrt(d)
        a[att + "out/bias"] = rng.normal(size=d)
        a[b + "MlpBlock_0/Dense_0/kernel"] = rng.normal(size=(d, mlp)) / np.sqrt(d)
        a[b + "MlpBlock_0/Dense_0/bias"] = rng.normal(size=mlp)
        a[b + "MlpBlock_0/Dense_1/kernel"] = rng.normal(size=(mlp, d)) / np.sqrt(mlp)
        a[b + "MlpBlock_0/Dense_1/bias"] = rng.normal(size=d)
    return {k: v.astype(np.float32) for k, v in a.items()}


# Flax's pre-Linen numbering of an encoder block's modules: one counter for the block
_PRE_LINEN = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
              "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}


def pre_linen(arrays: dict) -> dict:
    """The same weights under the names of the released ViT files (pre-Linen Flax)."""
    def rename(name):
        return "/".join(_PRE_LINEN.get(part, part) if part in _PRE_LINEN and "encoderblock" in name
                        else part for part in name.split("/"))
    return {rename(k): v for k, v in arrays.items()}


def mixer_arrays(rng, p=4, side=8, c=8, ds=6, dc=16, depth=2, k=3):
    s = (side // p) ** 2
    a = {"stem/kernel": rng.normal(size=(p, p, 3, c)), "stem/bias": rng.normal(size=c),
         "pre_head_layer_norm/scale": 1 + 0.1 * rng.normal(size=c),
         "pre_head_layer_norm/bias": rng.normal(size=c),
         "head/kernel": rng.normal(size=(c, k)), "head/bias": rng.normal(size=k)}
    for i in range(depth):
        b = f"MixerBlock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_1"):
            a[b + ln + "/scale"], a[b + ln + "/bias"] = 1 + 0.1 * rng.normal(size=c), rng.normal(size=c)
        for mix, n, h in (("token_mixing", s, ds), ("channel_mixing", c, dc)):
            a[f"{b}{mix}/Dense_0/kernel"] = rng.normal(size=(n, h)) / np.sqrt(n)
            a[f"{b}{mix}/Dense_0/bias"] = rng.normal(size=h)
            a[f"{b}{mix}/Dense_1/kernel"] = rng.normal(size=(h, n)) / np.sqrt(h)
            a[f"{b}{mix}/Dense_1/bias"] = rng.normal(size=n)
    return {k: v.astype(np.float32) for k, v in a.items()}


def ours(model, imgs: np.ndarray, pre_logits: bool = False) -> np.ndarray:
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    with torch.no_grad():
        model.eval()
        out = model.forward_head(model.forward_features(x), pre_logits=True) if pre_logits else model(x)
    return out.double().numpy()


def assert_close(got, want):
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel <= TOLERANCE, rel


IMGS = np.random.default_rng(1).uniform(-1, 1, size=(3, 8, 8, 3)).astype(np.float32)


# ------------------------------------------------------------------------------- the layouts


@pytest.mark.parametrize("names", ["pre-linen", "linen"])
@pytest.mark.parametrize("classifier", ["token", "gap"])
@pytest.mark.parametrize("representation", [None, 5])
def test_vit_layout_matches_the_official_forward(tmp_path, names, classifier, representation):
    """Every released ViT layout loads exactly for evaluation: the representation layer kept
    (Dense + tanh, as the official model computes it)."""
    arrays = vit_arrays(np.random.default_rng(0), token=classifier == "token",
                        representation=representation)
    path = tmp_path / "vit.npz"
    np.savez(path, **(pre_linen(arrays) if names == "pre-linen" else arrays))
    model, rec = load_model(str(path))
    assert (rec["img_size"], rec["patch_size"], rec["num_classes"]) == (8, 4, 3)
    assert rec["overrides"]["gelu"] == "tanh"
    assert rec["overrides"].get("representation_size") == representation
    want = np.stack([vit_forward(arrays, im, 4)[0] for im in IMGS])
    assert_close(ours(model, IMGS), want)
    # the model description rebuilds the same model (what a checkpoint of it records)
    again = create_model(rec["name"], num_classes=3, img_size=8, patch_size=4, **rec["overrides"])
    again.load_state_dict(model.state_dict())
    assert_close(ours(again, IMGS), want)


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_finetuning_a_vit_drops_its_representation_layer_as_load_pretrained_does(tmp_path,
                                                                              classifier):
    """The fine-tuning start has no representation layer: its features are the pooled,
    normed tokens the official model feeds `pre_logits`, and its head is a fresh zero one."""
    arrays = vit_arrays(np.random.default_rng(2), token=classifier == "token", representation=5)
    path = tmp_path / "vit21k.npz"
    np.savez(path, **pre_linen(arrays))
    model, rec = load_for_finetuning(str(path), num_classes=4)
    assert "representation_size" not in rec["overrides"] and "dropped" not in rec
    assert not any(k.startswith("pre_logits") for k in model.state_dict())
    assert all(float(p.detach().abs().sum()) == 0 for p in model.get_classifier().parameters())
    arrays_no_rep = {k: v for k, v in arrays.items() if not k.startswith("pre_logits")}
    arrays_no_rep["head/kernel"] = np.zeros((8, 4), np.float32)
    arrays_no_rep["head/bias"] = np.zeros(4, np.float32)
    want = np.stack([vit_forward(arrays_no_rep, im, 4)[1] for im in IMGS])
    assert_close(ours(model, IMGS, pre_logits=True), want)


def test_mixer_layout_matches_the_official_forward_at_1x_and_tiled_at_2x(tmp_path):
    arrays = mixer_arrays(np.random.default_rng(0))
    path = tmp_path / "mixer.npz"
    np.savez(path, **arrays)
    model, rec = load_model(str(path))
    assert (rec["img_size"], rec["patch_size"], rec["num_classes"]) == (8, 4, 3)
    want = np.stack([mixer_forward(arrays, im, 4) for im in IMGS])
    assert_close(ours(model, IMGS), want)
    # the block-diagonal 2x expansion on an image of four parts = the mean of the four at 1x
    # (paper section 3; models/resize.py)
    big = resize_model(model, 16, rec["name"], rec["num_classes"], rec["overrides"])
    a, b, c, d = IMGS[0], IMGS[1], IMGS[2], IMGS[0][::-1].copy()
    tiled = np.concatenate([np.concatenate([a, b], 1), np.concatenate([c, d], 1)], 0)[None]
    want2 = np.mean([mixer_forward(arrays, im, 4) for im in (a, b, c, d)], axis=0)
    assert_close(ours(big, tiled)[0], want2)


def test_linen_names_renumber_as_flax_convert_pre_linen_does():
    """Per parent, `<module>_<n>` children are renumbered per module class in natural order
    (encoderblock_10 after encoderblock_9), current names are left as they are."""
    names = ["Transformer/encoderblock_10/LayerNorm_2/scale",
             "Transformer/encoderblock_10/MultiHeadDotProductAttention_1/query/kernel",
             "Transformer/encoderblock_9/MlpBlock_3/Dense_1/bias",
             "Transformer/encoderblock_9/MlpBlock_3/Dense_0/bias",
             "Transformer/encoderblock_9/LayerNorm_0/bias", "cls"]
    assert linen_names(names) == {
        "Transformer/encoderblock_1/LayerNorm_0/scale": names[0],
        "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel": names[1],
        "Transformer/encoderblock_0/MlpBlock_0/Dense_1/bias": names[2],
        "Transformer/encoderblock_0/MlpBlock_0/Dense_0/bias": names[3],
        "Transformer/encoderblock_0/LayerNorm_0/bias": names[4], "cls": "cls"}
    current = list(linen_names(names))
    assert linen_names(current) == {n: n for n in current}


@pytest.mark.parametrize("change,named", [
    (lambda a: a.update({"Transformer/encoderblock_0/LayerScale_0/gamma": np.ones(8, np.float32)}),
     "LayerScale_0/gamma"),
    (lambda a: a.update({"conv_root/kernel": np.ones((7, 7, 3, 8), np.float32)}), "conv_root/kernel"),
    (lambda a: a.pop("Transformer/encoder_norm/bias"), "Transformer/encoder_norm/bias"),
])
def test_a_name_the_layout_lacks_or_needs_is_one_sentence_naming_it(tmp_path, change, named):
    arrays = vit_arrays(np.random.default_rng(0))
    change(arrays)
    path = tmp_path / "odd.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=named.replace("/", "/")) as err:
        load_model(str(path))
    assert "\n" not in str(err.value)
    r = cli("evaluate", "--checkpoint", path, "--dataset", "synthetic", "--device", "cpu",
            "--results-dir", tmp_path / "res")
    assert named in refused(r)


def test_finetune_init_of_a_pre_logits_file_runs_and_its_config_notes_the_dropped_layer(tmp_path):
    arrays = vit_arrays(np.random.default_rng(3), representation=5, side=32, p=8, d=16, heads=2,
                        mlp=32, depth=1, k=21)
    path = tmp_path / "vit21k.npz"
    np.savez(path, **pre_linen(arrays))
    res = tmp_path / "res"
    from typer.testing import CliRunner

    from mixerbench.cli import app

    r = CliRunner().invoke(app, [
        "finetune", "--init", str(path), "--dataset", "synthetic", "--steps", "2", "--device",
        "cpu", "--set", "data.batch_size=20", "--set", "optim.warmup_steps=1",
        "--set", "max_eval_examples=20", "--results-dir", str(res)], env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code == 0, r.output
    # the run says so (on its first line, however the terminal wraps it)
    assert "without the pre_logits layer" in " ".join(r.output.split())
    run, = (res / "runs").iterdir()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["init_dropped"] == "pre_logits"
    assert "representation_size" not in cfg["model"]["options"]
