"""The zoo: Table 1 parameter counts, FLOPs against the closed form (docs/paper-notes.md §7), timm equivalence, forward passes."""

import pytest
import torch

from mixerbench.errors import UserError
from mixerbench.models import FAMILIES, create_model, get_spec, list_models, model_info, resolve_name
from mixerbench.models.resize import resize_mixer

MIXERS = ["mixer-s32", "mixer-s16", "mixer-b32", "mixer-b16", "mixer-l32", "mixer-l16", "mixer-h14"]
BASELINES = ["vit-s16", "vit-s32", "vit-b16", "vit-b32", "vit-l16", "vit-l32", "vit-h14",
             "resnet50", "bit-r50x1", "bit-r50x3", "bit-r101x1", "bit-r101x3", "bit-r152x2",
             "bit-r152x4"]


def test_zoo_lists_every_paper_model():
    names = list_models()
    for n in MIXERS + BASELINES:
        assert n in names
    assert list_models("mixer-*")[:7] == MIXERS


@pytest.mark.parametrize("name,millions", list(zip(MIXERS, [19, 18, 60, 59, 206, 207, 431])))
def test_table1_params_without_head(name, millions):
    # paper Table 1: parameters at 224 px, excluding the classifier head
    assert round(model_info(name)["params_no_head"] / 1e6) == millions


@pytest.mark.parametrize("name,count", [("mixer-b16", 59_880_472), ("mixer-b32", 60_293_428),
                                        ("mixer-l16", 208_196_168)])
def test_exact_params_with_1000_class_head(name, count):
    # vision_transformer models_test.py (docs/paper-notes.md §1)
    assert model_info(name)["params"] == count


@pytest.mark.parametrize("name,gmacs", [("mixer-b16", 12.6), ("vit-b16", 17.6), ("resnet50", 4.1),
                                        ("mixer-l16", 44.55), ("mixer-s32", 1.00)])
def test_gmacs_match_paper_md_within_one_percent(name, gmacs):
    info = model_info(name)
    assert info["gmacs"] == pytest.approx(gmacs, rel=0.01)
    assert info["gflops"] == pytest.approx(2 * info["gmacs"], rel=1e-3)


@pytest.mark.parametrize("alias,slug", [("Mixer-B/16", "mixer-b16"), ("ViT-L/16", "vit-l16"),
                                        ("BiT-R152x4", "bit-r152x4"), ("mixer", "mixer-b16"),
                                        ("vit", "vit-b16"), ("resnet", "bit-r50x1"),
                                        ("timm:resnet18", "timm:resnet18")])
def test_names_resolve(alias, slug):
    assert resolve_name(alias) == slug


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UserError, match="mixer-b16"):
        resolve_name("mixer-b61")


def test_patch_must_divide_image():
    with pytest.raises(UserError, match="does not divide"):
        create_model("mixer-b16", img_size=100)


@pytest.mark.parametrize("name", list_models())
def test_every_entry_runs_forward(name):
    """Every entry builds and runs a small-image forward pass. Entries above ~100M parameters
    run on the meta device (same code path, shapes checked, no 4 GB of CPU weights); the rest
    run for real on CPU."""
    spec_patch = model_info(name)["patch_size"] or 8
    sized = "img_size" in FAMILIES[get_spec(name).family].options  # told its input size
    size = 2 * int(spec_patch) if sized else 32
    big = model_info(name)["params"] > 100e6
    with torch.device("meta"):  # building is the slow part on 2 cores; weights filled below
        model = create_model(name, num_classes=7, img_size=size if sized else None)
    x = torch.randn(2, 3, size, size, device="meta" if big else "cpu")
    if not big:
        model = _materialise(model)
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert tuple(y.shape) == (2, 7)
    if not big:
        assert torch.isfinite(y).all()


def _materialise(model):
    """Real CPU weights for a meta-built model: small random values, unit norms, BN stats."""
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.dtype.is_floating_point:
                t.normal_(0, 0.02) if ("weight" in name and t.ndim > 1) or "bias" in name or \
                    "pos_embed" in name or "cls_token" in name else t.fill_(1.0)
    return model


def test_native_mixer_matches_timm_state_dict_and_logits():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    with torch.device("meta"):  # skip both initialisations: every weight is overwritten
        ref = timm.create_model("mixer_b16_224", num_classes=1000)
        ours = create_model("mixer-b16", gelu="exact")
    ref = _materialise(ref).eval()  # random head too (timm zero-initialises it)
    ours = ours.to_empty(device="cpu").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5


def test_official_init_rules():
    m = create_model("mixer-t4", num_classes=10, width=64, depth=4, drop_path=0.3)
    assert torch.count_nonzero(m.head.weight) == 0 and torch.count_nonzero(m.head.bias) == 0
    assert torch.count_nonzero(m.blocks[0].mlp_tokens.fc1.bias) == 0
    # stochastic depth rises linearly from 0 at the first block to 0.3 at the last
    assert [round(b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0, 3)
            for b in m.blocks] == [0.0, 0.1, 0.2, 0.3]
    # lecun-normal: std of the channel-MLP kernel ~ sqrt(1 / fan_in) with fan_in = C = 256
    w = create_model("mixer-t4", width=256, depth=1).blocks[0].mlp_channels.fc1.weight
    assert w.std().item() == pytest.approx((1 / 256) ** 0.5, rel=0.05)
    assert m.blocks[0].mlp_tokens.act.approximate == "tanh"


def _tile(a, b, c, d):
    return torch.cat([torch.cat([a, b], -1), torch.cat([c, d], -1)], -2)


def test_block_diagonal_expansion_identity():
    """m2(tile(A, B, C, D)) == mean(m(A), m(B), m(C), m(D)) (paper section 3, Appendix C)."""
    torch.manual_seed(0)
    m = create_model("mixer-t4", num_classes=10, width=32, depth=3).eval()
    for p in m.parameters():
        p.data.normal_(0, 0.2)
    m2 = resize_mixer(m, 64).eval()
    assert m2.seq_len == 4 * m.seq_len and m2.tokens_dim == 4 * m.tokens_dim
    a, b, c, d = (torch.randn(3, 3, 32, 32) for _ in range(4))
    with torch.no_grad():
        out = m2(_tile(a, b, c, d))
        ref = torch.stack([m(a), m(b), m(c), m(d)]).mean(0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # K=3 also keeps every part's output: a 3x3 tiling of one image equals the image
    m3 = resize_mixer(m, 96).eval()
    with torch.no_grad():
        torch.testing.assert_close(m3(a.repeat(1, 1, 3, 3)), m(a), rtol=1e-5, atol=1e-5)


def test_non_integer_factor_refused():
    m = create_model("mixer-t4", num_classes=10, width=32, depth=1)
    with pytest.raises(UserError, match="integer multiple"):
        resize_mixer(m, 48)


# Every small-image model with the shapes the presets give it: (zoo name, trained size, patch,
# architecture overrides). Fine-tuning loads each at 1x and 2x.
SMALL_MODELS = [
    ("mixer-t4", 28, 4, dict(width=64, depth=2, gelu="tanh")),
    ("mixer-t4", 32, 4, {}),
    ("vit-t4", 28, 4, dict(width=64, depth=2, num_heads=2)),
    ("vit-t4", 32, 4, {}),
    ("resnet18", 28, None, dict(layers=[1, 1, 1, 1], channels=[16, 32, 64, 128])),
    ("resnet18-c", 32, None, {}),
]


def _checkpoint(tmp_path, name, size, patch, over, drop_path=0.1):
    """A trained-looking checkpoint: random weights everywhere, the head included."""
    from mixerbench.models.weights import model_description, save_checkpoint

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=size, patch_size=patch,
                         drop_path=drop_path, **over)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    path = tmp_path / f"{name}-{size}.safetensors"
    save_checkpoint(path, model,
                    model_description(name, 10, size, patch, dict(over, drop_path=drop_path)))
    return path, model


@pytest.mark.parametrize("name,size,patch,over", SMALL_MODELS)
@pytest.mark.parametrize("k", [1, 2])
def test_finetuning_start_has_a_zero_head_the_recipe_regularisers_and_the_new_size(
        tmp_path, name, size, patch, over, k):
    """Paper section 3: a fresh zero head for every family, even for 10 -> 10 classes; the
    fine-tuning run's stochastic depth at 1x and 2x alike; the shape kept at the new size."""
    from timm.layers import DropPath

    from mixerbench.models.weights import load_for_finetuning

    path, trained = _checkpoint(tmp_path, name, size, patch, over)
    model, rec = load_for_finetuning(str(path), num_classes=10, img_size=k * size,
                                     regularisers=dict(drop_path=0.0, dropout=0.0))
    head = model.get_classifier()
    assert all(torch.count_nonzero(p) == 0 for p in head.parameters())
    assert sum(p.numel() for p in head.parameters()) == 10 * trained.num_features + 10
    # no stochastic depth left over from the pre-training run's 0.1, whatever the resolution
    assert all(m.drop_prob == 0 for m in model.modules() if isinstance(m, DropPath))
    assert rec["img_size"] == k * size and "drop_path" not in rec["overrides"]
    # every other weight came from the checkpoint (resized where the resolution changed)
    body = {n: p for n, p in trained.state_dict().items() if not n.startswith(("head", "fc."))}
    new = model.state_dict()
    same = [n for n in body if n in new and new[n].shape == body[n].shape]
    assert len(same) >= len(body) - 6 * 2 * (over.get("depth", 8))  # token-MLP tensors may grow
    assert all(torch.equal(new[n], body[n]) for n in same if "pos_embed" not in n)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, k * size, k * size))
    assert out.shape == (2, 10) and torch.count_nonzero(out) == 0  # zero head: zero logits


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
def test_tanh_gelu_compiled_is_the_same_function_as_eager(dtype, tol):
    """Compiled for a CPU, the Mixer's tanh GELU is written with a sigmoid (inductor's tanh is
    slow there); values and gradients stay those of 0.5 x (1 + tanh(k (x + c x^3))) in float64."""
    import math

    from mixerbench.models.mixer import TanhGELU

    x = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    xr = x.clone().requires_grad_()
    ref = 0.5 * xr * (1 + torch.tanh(math.sqrt(2 / math.pi) * (xr + 0.044715 * xr ** 3)))
    ref.sum().backward()
    act = TanhGELU()
    for fn in (act, torch.compile(act, dynamic=False)):
        xi = x.to(dtype).requires_grad_()
        y = fn(xi)
        y.float().sum().backward()
        assert (y.double() - ref.detach()).abs().max().item() < tol * 4  # |y| up to 8
        assert (xi.grad.double() - xr.grad).abs().max().item() < tol * 2


def test_tanh_gelu_in_bf16_on_a_cpu_is_torchs_kernel_bit_for_bit():
    """Eager bf16 on a CPU, the Mixer's tanh GELU reads the kernel's result of each bf16 value
    from a table: every one of the 65,536 values (NaN, infinities, -0 included) and a
    transposed view give the kernel's bits, forward and backward."""
    from mixerbench.models.mixer import TanhGELU

    act = TanhGELU()
    every = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    same = lambda a, b: torch.equal(a.view(torch.int16), b.view(torch.int16))  # noqa: E731
    assert same(act(every), torch.nn.functional.gelu(every, approximate="tanh"))
    x = (torch.randn(3, 5, 7) * 4).to(torch.bfloat16).transpose(1, 2)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = act(a), torch.nn.functional.gelu(b, approximate="tanh")
    assert same(ya, yb) and ya.shape == yb.shape
    g = torch.randn(ya.shape).to(torch.bfloat16)
    ya.backward(g)
    yb.backward(g)
    assert same(a.grad, b.grad)
