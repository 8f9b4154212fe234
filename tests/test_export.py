"""`mixerbench export`: runs and checkpoints as timm `local-dir:` / hub folders (CPU, offline).

The contract: timm's own loader (`timm.create_model("local-dir:DIR", pretrained=True)`) rebuilds
the model mixerbench trained and predicts what it predicts, with the preprocessing mixerbench
evaluated it with; the card names the run, its accuracy and the paper; anything timm cannot
express is refused with one sentence and nothing written.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import cli, refused

from mixerbench.presets import resolve
from mixerbench.errors import UserError
from mixerbench.export import _crop_pct, export, preprocessing
from mixerbench.models import count_params, create_model
from mixerbench.models.families.mixer import _ratio
from mixerbench.models.weights import load_model, model_description, save_checkpoint
from mixerbench.train import train

FLAGS = {"steps": 4, "model.img_size": 32, "device": "cpu", "data.batch_size": 50,
         "eval_every": 4, "data.eval_batch_size": 100, "max_eval_examples": 100}
# Mixer-S/16 is the smallest Mixer timm has (timm fixes patch, depth and width per entry point);
# narrow MLPs keep it at 1.2M parameters, and exercise the mlp_ratio mapping.
MIXER_MLPS = {"model.options.tokens_dim": "8", "model.options.channels_dim": "96"}


@pytest.fixture(scope="module")
def export_runs(tmp_path_factory):
    """One finished 4-step run per family on the synthetic set: {family: run dir}."""
    root = tmp_path_factory.mktemp("export-results")
    runs = {}
    for family, model, overrides in [("mixer", "mixer-s16", MIXER_MLPS), ("vit", "vit", None),
                                     ("resnet", "resnet", None)]:
        cfg = resolve("smoke", model=model, dataset="synthetic", flags=FLAGS, overrides=overrides)
        runs[family] = Path(train(cfg, root)["run_dir"])
    return runs


@pytest.fixture(scope="module")
def export_done(export_runs, tmp_path_factory):
    """Each run exported once: {family: (result, out dir)}."""
    out = tmp_path_factory.mktemp("exports")
    return {f: (export(run, out / f), out / f) for f, run in export_runs.items()}


def images(n=16, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def timm_load(folder):
    import timm

    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


def bare_checkpoint(path: Path, name: str, img_size=32, num_classes=5, **overrides) -> Path:
    """A mixerbench checkpoint with random weights, the head too (a fresh head is all zeros)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, img_size=img_size, **overrides)
    with torch.no_grad():
        head = model.get_classifier()
        head.weight.normal_(0, 0.1)
    save_checkpoint(path, model, model_description(name, num_classes, img_size, None, overrides))
    return path


# ---------------------------------------------------------------------------- timm loads it


@pytest.mark.parametrize("family", ["mixer", "vit", "resnet"])
def test_timm_rebuilds_the_trained_model(export_runs, export_done, family):
    res, out = export_done[family]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    ours, _ = load_model(str(export_runs[family]))
    theirs = timm_load(out)
    x = images()
    with torch.no_grad():
        a, b = ours.eval()(x), theirs(x)
    assert a.std() > 0  # a trained head, so top-1 is not decided by ties
    if family == "mixer":
        # trained with the official tanh GELU; timm's MlpMixer has exact GELU only. Its output
        # is the same weights under exact GELU, and close to the trained model's.
        assert ours.gelu == "tanh" and res["gelu"] == "tanh" and not res["check"]["exact"]
        twin = create_model("mixer-s16", num_classes=10, img_size=32, gelu="exact",
                            tokens_dim=8, channels_dim=96)
        twin.load_state_dict(ours.state_dict())
        with torch.no_grad():
            exact = twin.eval()(x)
        torch.testing.assert_close(b, exact, atol=1e-5, rtol=1e-4)
        assert (a - b).abs().max() < 1e-2
    else:
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
        assert res["check"]["exact"] and res["check"]["max_abs_diff"] < 1e-5
    assert torch.equal(a.argmax(1), b.argmax(1))
    # the export measured itself on the run's own eval images
    assert res["check"]["images"] == 64 and "synthetic" in res["check"]["what"]
    assert res["check"]["top1_agreement"] == 100.0


def test_config_json_describes_shapes_and_preprocessing(export_done):
    cfgs = {f: json.loads((out / "config.json").read_text()) for f, (_, out) in export_done.items()}
    for c in cfgs.values():
        pc = c["pretrained_cfg"]
        assert c["num_classes"] == pc["num_classes"] == 10
        assert pc["input_size"] == [3, 32, 32]
        # the smoke preset evaluates with eval-plain: a plain resize to 32 px, values in [-1, 1]
        assert (pc["crop_pct"], pc["crop_mode"], pc["interpolation"]) == (1.0, "squash", "bilinear")
        assert pc["mean"] == pc["std"] == [0.5, 0.5, 0.5]
        assert c["label_names"] == [f"class{i}" for i in range(10)]
        # nothing left over from timm's own pretrained weights of the same architecture
        assert not {"url", "hf_hub_id", "tag", "paper_ids", "test_input_size"} & set(pc)
    mixer, vit, resnet = cfgs["mixer"], cfgs["vit"], cfgs["resnet"]
    assert mixer["architecture"] == "mixer_s16_224"
    assert mixer["model_args"]["mlp_ratio"] == [8 / 512, 96 / 512]
    assert mixer["model_args"]["img_size"] == [32, 32]
    assert vit["architecture"] == "vit_tiny_patch16_224"
    assert {k: vit["model_args"][k] for k in ("embed_dim", "depth", "num_heads", "patch_size")} == \
        dict(embed_dim=64, depth=2, num_heads=2, patch_size=4)
    assert resnet["architecture"] == "resnet18"
    assert resnet["model_args"]["layers"] == [1, 1, 1, 1]
    assert resnet["model_args"]["channels"] == [16, 32, 64, 128]


def test_card_names_the_run_its_accuracy_and_the_paper(export_runs, export_done):
    for family, (res, out) in export_done.items():
        card = (out / "README.md").read_text()
        summary = json.loads((export_runs[family] / "summary.json").read_text())
        head = card.split("---")[1]
        assert "- image-classification" in head and "- timm" in head and "- mixerbench" in head
        assert "library_name: timm" in head and 'license: "apache-2.0"' in head
        assert summary["run_id"] == res["run_id"] and summary["run_id"] in card
        assert f"{summary['top1']:.2f}" in card and f"{summary['top5']:.2f}" in card
        assert summary["git_sha"] in card and summary["timestamp"] in card
        assert "tolstikhin2021mixer" in card and "2105.01601" in card
        assert "adam, lr 0.01" in card and "pretrained=True" in card
    assert "tanh" in (export_done["mixer"][1] / "README.md").read_text()


def test_card_cites_the_paper_as_the_readme_does():
    from mixerbench.export import CITATION

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert CITATION in readme  # one bibtex, so the two cannot drift apart


def test_an_unfinished_run_exports_with_what_is_unknown(tmp_path, export_runs):
    import shutil

    run = tmp_path / export_runs["vit"].name
    shutil.copytree(export_runs["vit"], run)
    (run / "summary.json").unlink()  # as a run stopped before its end leaves it
    # its checkpoint file stands for the run, config and all
    res = export(run / "checkpoint-last.safetensors", tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert res["run_id"] == run.name and run.name in card
    assert "had not finished" in card and "## Recipe" in card and "top-1 (%)" not in card


# ------------------------------------------------------- the card's routes, in plain timm

# Runs each card route (it defines `model`) in a process of its own that imports timm and no
# mixerbench, then the logits of its images, to `out-<i>.npy`, and the preprocessing timm
# resolves for the model (what the card's usage block feeds it), to `data-<i>.json`. One parent
# imports numpy, torch and timm (3 CPU-s a process on the 2-core CPU) and forks a child per
# route, so each route starts from a fresh timm process, as on its own, at one import for all.
_ROUTES = """
import json
import os
import sys
import traceback
import numpy as np
import timm
import timm.data
import torch
folder = sys.argv[1]
for i, code in enumerate(json.load(open(os.path.join(folder, "routes.json")))):
    pid = os.fork()
    if pid == 0:
        try:
            ns = {"__name__": "__main__"}
            exec(compile(code, f"route {i}", "exec"), ns)
            model = ns["model"]
            assert "mixerbench" not in sys.modules
            x = torch.from_numpy(np.load(os.path.join(folder, f"x-{i}.npy")))
            with torch.no_grad():
                np.save(os.path.join(folder, f"out-{i}.npy"), model(x).numpy())
            if getattr(model, "pretrained_cfg", None):
                with open(os.path.join(folder, f"data-{i}.json"), "w") as fh:
                    json.dump(timm.data.resolve_model_data_config(model), fh)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1]:
        sys.exit(f"route {i} failed")
"""


def run_routes(routes: list[tuple[str, torch.Tensor]], folder: Path) -> list[tuple]:
    """(logits, data config or None) of each (route code, images), each route in a plain timm
    process of its own (`_ROUTES`)."""
    import subprocess
    import sys

    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routes.json").write_text(json.dumps([code for code, _ in routes]))
    for i, (_, x) in enumerate(routes):
        np.save(folder / f"x-{i}.npy", x.numpy())
    r = subprocess.run([sys.executable, "-c", _ROUTES, str(folder)], capture_output=True,
                       text=True, timeout=300, cwd=folder,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr
    data = [folder / f"data-{i}.json" for i in range(len(routes))]
    return [(torch.from_numpy(np.load(folder / f"out-{i}.npy")),
             json.loads(d.read_text()) if d.exists() else None) for i, d in enumerate(data)]


@pytest.fixture(scope="module")
def routes_run(export_done, tmp_path_factory):
    """Every route of every family's card, run once in plain timm on `images(8)`:
    {family: {route: (logits, data config)}}."""
    jobs = [(f, name, code) for f, (res, _) in export_done.items()
            for name, code in res["routes"].items()]
    got = run_routes([(code, images(8)) for *_, code in jobs], tmp_path_factory.mktemp("routes"))
    out = {}
    for (family, name, _), result in zip(jobs, got):
        out.setdefault(family, {})[name] = result
    return out


@pytest.mark.parametrize("family", ["mixer", "vit", "resnet"])
def test_both_timm_routes_of_the_card_rebuild_the_trained_model(export_runs, export_done,
                                                                routes_run, family):
    """`local-dir:` and the weights file through `pretrained_cfg_overlay` with num_classes:
    each route's code, as the card prints it, run in a plain timm process, gives the model
    mixerbench trained and the preprocessing mixerbench evaluated it with (the overlay carries
    it too: without it timm resolves the zoo weights' own, 224 px bicubic for these)."""
    res, out = export_done[family]
    card = (out / "README.md").read_text()
    pc = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    keys = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
    assert set(res["routes"]) == {"local-dir", "pretrained_cfg_overlay"}
    ours, _ = load_model(str(export_runs[family]))
    x = images(8)
    with torch.no_grad():
        want = ours.eval()(x)
    for name, code in res["routes"].items():
        assert code in card, name
        got, data = routes_run[family][name]
        assert torch.equal(got.argmax(1), want.argmax(1)), name
        tol = 1e-2 if res["gelu"] == "tanh" else 1e-4  # timm's MlpMixer has exact GELU only
        assert (got - want).abs().max() < tol, name
        assert {k: data[k] for k in keys} == {k: pc[k] for k in keys}, name


def test_the_smoke_mixer_exports_as_timms_mlpmixer_class_and_agrees_in_plain_timm(tmp_path):
    """No `mixer_*` entry point builds patch 4 at 28 px (width 64, 2 blocks); timm's MlpMixer
    class does, with config.json's model_args: the same 77,036 parameters, top-1 agreement 1.00
    on the run's own images, label names from the dataset."""
    res_dir = tmp_path / "res"
    r = cli("pretrain", "--preset", "smoke", "--steps", "3", "--device", "cpu",
            "--set", "max_eval_examples=64", "--results-dir", res_dir)
    assert r.exit_code == 0, r.output
    run, = (res_dir / "runs").iterdir()
    out = tmp_path / "out"
    res = export(run, out)
    config = json.loads((out / "config.json").read_text())
    assert res["constructor"] == config["constructor"] == "timm.models.mlp_mixer.MlpMixer"
    want = dict(num_classes=10, img_size=28, mlp_ratio=[0.5, 4.0], patch_size=4, num_blocks=2,
                embed_dim=64)
    assert {k: config["model_args"][k] for k in want} == want
    assert config["label_names"] == [str(i) for i in range(10)]  # mnist-5k's digits
    # named by what it is (2 blocks of width 64 at 28 px), not by the zoo entry it varies
    # (Mixer-T/4: 8 blocks of width 256 at 32 px)
    intro = (out / "README.md").read_text().split("\n# ")[1].split("\n\n")[1]
    assert intro.startswith("`mixer-t4[depth=2,width=64]` at 28 px (mixer family) exported")
    assert "Mixer-T/4" not in intro and "32 px" not in intro
    assert res["check"]["top1_agreement"] == 100.0 and "mnist-5k" in res["check"]["what"]
    ours, _ = load_model(str(run))
    assert count_params(ours)[0] == 77_036
    code, = res["routes"].values()
    assert code in (out / "README.md").read_text()
    x = images(64, size=28)
    with torch.no_grad():
        want = ours.eval()(x)
    (got, _), = run_routes([(code, x)], tmp_path / "route")
    assert (got.argmax(1) == want.argmax(1)).float().mean() == 1.0
    assert (got - want).abs().max() < 1e-2  # tanh GELU trained, exact GELU in timm
    # the card's whole usage block, on an image file, prints one of the dataset's names
    import subprocess
    import sys

    from PIL import Image

    usage = (out / "README.md").read_text().split("```python\n")[1].split("```")[0]
    Image.new("RGB", (40, 30), (200, 30, 90)).save(tmp_path / "image.jpg")
    r = subprocess.run([sys.executable, "-c", usage], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0 and r.stdout.strip() in config["label_names"], r.stderr


def test_the_exported_weights_evaluate_in_mixerbench_beside_timms_config_json(export_done,
                                                                             tmp_path):
    """The folder an export writes (or any timm / hub folder: config.json beside
    model.safetensors) is not a run folder: its weights evaluate with `--arch`, timm's
    config.json neither refused as a damaged run config nor read as one."""
    res, out = export_done["mixer"]
    r = cli("evaluate", "--checkpoint", out / "model.safetensors", "--arch", res["architecture"],
            "--dataset", "synthetic", "--max-examples", 20, "--results-dir", tmp_path / "res")
    assert r.exit_code == 0, r.output
    row, = [line for line in (tmp_path / "res" / "accuracy.csv").read_text().splitlines()[1:]]
    assert row.startswith(",,")  # no run id, no recipe: the file stands for itself


# -------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("pipeline,img", [("eval-resize", 224), ("eval-resmall", 224),
                                          ("eval-resize", 32), ("eval-resize", 384),
                                          ("eval-resmall", 443),
                                          ("eval-plain", 32)])
def test_timm_eval_transform_is_mixerbench_eval_geometry(pipeline, img):
    """timm's eval transform from the exported pretrained_cfg resizes and crops as mixerbench's
    eval pipeline does (paper Appendix C: resize to img * 256 / 224, centre crop img)."""
    import timm.data
    from PIL import Image

    from mixerbench.data.transforms import eval_geometry, eval_resize_size, to_unit_range

    pc = preprocessing(pipeline, img)
    if pipeline != "eval-plain":
        assert math.floor(img / pc["crop_pct"]) == eval_resize_size(img)
    tf = timm.data.create_transform(**pc, is_training=False)
    gen = torch.Generator().manual_seed(1)
    small = torch.rand(1, 3, 12, 16, generator=gen) * 255  # 4:3, so squash and shorter-side differ
    raw = torch.nn.functional.interpolate(small, size=(img + 40, img + 90), mode="bilinear")
    raw = raw.round().clamp(0, 255).to(torch.uint8)
    theirs = tf(Image.fromarray(raw[0].permute(1, 2, 0).numpy()))
    ours = to_unit_range(eval_geometry(raw.float(), pipeline, img)[0])
    assert theirs.shape == ours.shape == (3, img, img)
    # PIL's bilinear and torchvision's antialiased tensor resize round differently (about 0.002
    # here); another crop mode or crop_pct differs by 0.13 or more on this image (measured)
    assert (theirs - ours).abs().mean() < 0.01


def test_mlp_ratio_and_crop_pct_survive_timms_rounding():
    # timm computes int(mlp_ratio * dim) and floor(img / crop_pct); plain division can land a
    # float step short (15 / 11 * 11 = 14.999...)
    for dim in (11, 13, 64, 512, 768, 1000):
        for hidden in range(1, 4 * dim + 1, 3):
            r = _ratio(hidden, dim)
            assert int(r * dim) == hidden and json.loads(json.dumps(r)) == r
    for img in range(8, 1025):
        big = round(img * 256 / 224)
        assert math.floor(img / _crop_pct(img, big)) == big
    assert _crop_pct(224, 256) == 0.875


# ------------------------------------------------------------------------- bare checkpoints


def test_bare_checkpoint_with_exact_gelu_matches_to_float_precision(tmp_path):
    ckpt = bare_checkpoint(tmp_path / "m.safetensors", "mixer-s16", gelu="exact",
                           tokens_dim=8, channels_dim=96)
    res = export(ckpt, tmp_path / "out")
    assert res["check"]["exact"] and res["gelu"] == "exact" and res["run_id"] is None
    ours, _ = load_model(str(ckpt))
    x = images(8)
    with torch.no_grad():
        torch.testing.assert_close(timm_load(tmp_path / "out")(x), ours.eval()(x), atol=1e-5, rtol=1e-4)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "m.safetensors" in card and "Unknown" in card and "not known" in card
    assert "datasets:" not in card  # no dataset to name
    pc = json.loads((tmp_path / "out" / "config.json").read_text())["pretrained_cfg"]
    # no run, so the crop is `mixerbench evaluate`'s default for a bare checkpoint: resize-crop
    assert pc["crop_mode"] == "squash" and math.floor(32 / pc["crop_pct"]) == 37


def test_bare_tanh_mixer_reports_the_gelu_difference(tmp_path):
    ckpt = bare_checkpoint(tmp_path / "t.safetensors", "mixer-s16", tokens_dim=8, channels_dim=96)
    r = cli("export", ckpt, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "tanh" in r.output and "top-1 agreement" in r.output and "smooth random images" in r.output
    assert "tanh-approximate GELU" in (tmp_path / "out" / "README.md").read_text()


# -------------------------------------------------------------------------------- refusals


def test_refusals_exit_2_and_write_nothing(tmp_path, export_runs):
    run = export_runs["vit"]
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    npz = tmp_path / "official.npz"
    npz.write_bytes(b"not read")
    gmlp = bare_checkpoint(tmp_path / "g.safetensors", "gmlp-t4", width=64, depth=2)
    cifar = bare_checkpoint(tmp_path / "c.safetensors", "resnet18-c", num_classes=10)
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [((run, full), "not empty"),
             (("timm:mixer_b16_224", tmp_path / "o1"), "timm's own"),
             ((tmp_path / "nothing-here", tmp_path / "o2"), "No run directory"),
             ((npz, tmp_path / "o3"), "fine-tune"),
             ((gmlp, tmp_path / "o4"), "none of timm's gmlp_* entry points"),
             ((cifar, tmp_path / "o5"), "stride-1 stem")]
    for args, words in cases:
        line = refused(cli("export", *args))
        assert words in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no o*/ and no temp folders
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and (full / "keep.txt").read_text() == "mine"


def test_a_failed_export_leaves_nothing_behind(tmp_path, export_runs, monkeypatch):
    import mixerbench.export as ex

    def broken(*a, **k):
        raise UserError("the check failed.")

    monkeypatch.setattr(ex, "_check", broken)
    with pytest.raises(UserError, match="check failed"):
        export(export_runs["resnet"], tmp_path / "new" / "deeper" / "out")
    assert list(tmp_path.iterdir()) == []  # the parents made for it are gone too


def test_push_offline_keeps_the_export_and_says_so(tmp_path, export_runs):
    out = tmp_path / "pushed"
    line = refused(cli("export", export_runs["resnet"], out, "--push", "me/resnet-smoke"))
    assert f"Exported to {out}" in line and "not pushed" in line and "hf upload me/resnet-smoke" in line
    # the folder is a complete export, and the card is written for the hub repo
    assert "hf-hub:me/resnet-smoke" in (out / "README.md").read_text()
    timm_load(out)


def test_push_to_an_unreachable_hub_fails_fast(tmp_path, export_runs, monkeypatch):
    import huggingface_hub

    from mixerbench.export import push

    export(export_runs["resnet"], tmp_path / "out")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.setenv("MIXERBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="not reachable"):
        push(tmp_path / "out", "me/x")


# ------------------------------------------------------------------------------------- CLI


def test_cli_export_as_a_user_types_it(tmp_path, export_runs):
    out = tmp_path / "exports" / "mixer"
    r = cli("export", export_runs["mixer"], out)
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output and "mixer_s16_224" in r.output
    assert f'local-dir:{out}' in r.output and "top-1 agreement" in r.output
    assert os.path.isfile(out / "model.safetensors")
    # --help stays a fast, import-light path and documents the command
    h = cli("export", "--help")
    assert h.exit_code == 0 and "local-dir" in h.output and "--push" in h.output
    assert "export" in cli("--help").output
