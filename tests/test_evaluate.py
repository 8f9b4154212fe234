"""Evaluation: linear few-shot (big_vision fewshot_lsr), shuffle invariance, ReaL, `evaluate`.

Tiny models (Mixer width 32, 2 blocks, 32 px) on the embedded `synthetic` set; CPU, offline.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mixerbench.errors import UserError
from mixerbench.evaluate import (
    FEWSHOT_BIAS, accuracy, check_shots, evaluate, fewshot_indices, linear_fewshot, lsr_fit,
    parse_shots, real_accuracy, shuffle_eval,
)

# in-process runs on one thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def _direct_weights(x, y, k, l2):
    """The ridge normal equations solved directly in float64 numpy: (X^T X + l2 I) w = X^T T."""
    x = np.asarray(x, dtype=np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-5
    xa = np.concatenate([(x - mean) / std, np.full((len(x), 1), FEWSHOT_BIAS)], axis=1)
    t = 2.0 * np.eye(k)[np.asarray(y)] - 1.0
    w = np.linalg.solve(xa.T @ xa + l2 * np.eye(xa.shape[1]), xa.T @ t)
    return w, mean, std


@pytest.mark.parametrize("n,d", [(200, 16), (12, 64)], ids=["primal", "dual"])
def test_linear_fewshot_equals_direct_float64_solve(n, d):
    rng = np.random.default_rng(0)
    k = 4
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 5, size=d) + rng.normal(size=d)
    y = np.arange(n) % k
    xt = rng.normal(size=(50, d))
    yt = rng.integers(0, k, 50)
    for l2 in (2.0**10, 1.0):
        fit = lsr_fit(torch.tensor(x, dtype=torch.float32), torch.tensor(y), k, l2)
        w, mean, std = _direct_weights(np.asarray(torch.tensor(x, dtype=torch.float32)), y, k, l2)
        np.testing.assert_allclose(fit["w"].numpy(), w, rtol=1e-7, atol=1e-9)
        scores = np.concatenate([(xt - mean) / std, np.full((50, 1), FEWSHOT_BIAS)], 1) @ w
        expect = 100.0 * np.mean(scores.argmax(1) == yt)
        # numpy and torch inputs give the same number
        assert linear_fewshot(x, y, xt, yt, k, l2) == pytest.approx(expect)
        assert linear_fewshot(torch.tensor(x), torch.tensor(y), torch.tensor(xt), torch.tensor(yt),
                              k, l2) == pytest.approx(expect)


def _clusters(rng, k, per_class, d, spread=0.3):
    centres = rng.normal(size=(k, d)) * 5
    y = np.repeat(np.arange(k), per_class)
    return centres[y] + spread * rng.normal(size=(len(y), d)), y


def test_linear_fewshot_separable_clusters_reach_100():
    rng = np.random.default_rng(1)
    k, d = 10, 32
    x, y = _clusters(rng, k, 5, d)  # 5-shot, the paper's setting; N = 50 > D: primal
    xt, yt = _clusters(np.random.default_rng(1), k, 40, d)
    assert linear_fewshot(x, y, xt, yt, k) == 100.0
    x1, y1 = _clusters(np.random.default_rng(1), k, 1, 512)  # 1-shot, D > N: dual
    xt1, yt1 = _clusters(np.random.default_rng(1), k, 20, 512)
    assert linear_fewshot(x1, y1, xt1, yt1, k) == 100.0


def test_linear_fewshot_invariant_to_feature_scaling():
    rng = np.random.default_rng(2)
    k, d = 5, 24
    x, y = _clusters(rng, k, 10, d, spread=3.0)  # overlapping: accuracy well below 100
    xt, yt = _clusters(np.random.default_rng(2), k, 60, d, spread=3.0)
    base = linear_fewshot(x, y, xt, yt, k)
    assert 20 < base < 100
    scale = rng.uniform(0.01, 1000, size=d)
    shift = rng.normal(size=d) * 100
    assert linear_fewshot(x * scale + shift, y, xt * scale + shift, yt, k) == pytest.approx(base)
    assert linear_fewshot(x * 1e4, y, xt * 1e4, yt, k) == pytest.approx(base)


def test_fewshot_indices_follow_big_vision_and_nest():
    labels = np.repeat(np.arange(3), [7, 5, 9])
    idx5 = fewshot_indices(labels, 5, seed=0, num_classes=3)
    assert np.bincount(labels[idx5]).tolist() == [5, 5, 5]
    # big_vision: rng = default_rng(seed); per class rng.permutation(where(labels == c))[:shots]
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:5] for c in range(3)])
    assert idx5.tolist() == ref.tolist()
    idx1 = fewshot_indices(labels, 1, seed=0, num_classes=3)
    assert set(idx1) <= set(idx5)
    assert fewshot_indices(labels, 5, seed=1, num_classes=3).tolist() != idx5.tolist()


def test_shots_larger_than_smallest_class_is_a_user_error():
    labels = np.repeat(np.arange(3), [7, 2, 9])
    with pytest.raises(UserError, match="has only 2"):
        check_shots(labels, (1, 5), 3)
    check_shots(labels, (1, 2), 3)
    assert parse_shots("25, 1,5,5") == (1, 5, 25)
    for bad in ("0", "a,b", ""):
        with pytest.raises(UserError):
            parse_shots(bad)


def test_real_accuracy_skips_images_without_labels():
    logits = torch.arange(10.0).repeat(4, 1)  # top-5 = 9, 8, 7, 6, 5 unless changed below
    logits[0, 0] = 20.0
    real = [[0], [6], [], [1, 2]]  # 0: top-1 right; 1: in top-5 only; 2: skipped; 3: missed
    res = real_accuracy(logits, real)
    assert res["n"] == 3
    assert res["top1"] == pytest.approx(100 / 3)
    assert res["top5"] == pytest.approx(200 / 3)
    assert real_accuracy(logits.argmax(1), real)["top1"] == pytest.approx(100 / 3)
    with pytest.raises(UserError):
        real_accuracy(logits[:3], real)


# ----------------------------------------------------------------------------- with models


@pytest.fixture(scope="module")
def eval_tiny_model():
    from mixerbench.models import create_model

    torch.manual_seed(0)
    model = create_model("mixer-t4", num_classes=10, img_size=32, patch_size=4, width=32, depth=2)
    torch.nn.init.normal_(model.head.weight, std=0.5)  # the zero head would predict a constant
    return model.eval()


@pytest.fixture(scope="module")
def eval_synthetic():
    from mixerbench.data import get_dataset

    return get_dataset("synthetic", "train"), get_dataset("synthetic", "test")


def test_shuffle_eval_at_a_permutation_equals_accuracy_on_permuted_data(eval_tiny_model, eval_synthetic):
    from mixerbench.data import make_loader
    from mixerbench.data.transforms import make_shuffle

    _, test = eval_synthetic
    rows = shuffle_eval(eval_tiny_model, test, ["none", "patch", "global"], batch_size=64,
                        pipeline="eval-plain", img_size=32, patch_size=4, shuffle_seed=3)
    assert [r["eval_shuffle"] for r in rows] == ["none", "patch", "global"]
    plain = make_loader(test, batch_size=64, train=False, pipeline="eval-plain", img_size=32)
    for r in rows:
        perm = make_shuffle(r["eval_shuffle"], 32, 4, 3)
        direct = accuracy(eval_tiny_model, ((perm(x), y) for x, y in plain.epoch(0)))
        assert r["metric"] == "top1"
        assert r["top1"] == pytest.approx(direct["top1"])
        assert r["loss"] == pytest.approx(direct["loss"], rel=1e-6)
    assert rows[0]["top1"] == pytest.approx(accuracy(eval_tiny_model, plain.epoch(0))["top1"])


@pytest.fixture(scope="module")
def eval_checkpoint(tmp_path_factory, eval_tiny_model):
    from mixerbench.models.weights import model_description, save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, eval_tiny_model,
                    model_description("mixer-t4", 10, 32, 4, dict(width=32, depth=2)))
    return path


def test_evaluate_accuracy_fewshot_shuffle_rows(eval_checkpoint, eval_tiny_model, eval_synthetic, tmp_path):
    from mixerbench.data import make_loader
    from mixerbench.results import load

    res = evaluate(str(eval_checkpoint), "synthetic", crop="plain", fewshot="1,5", seeds=2,
                   shuffle="none,patch", device="cpu", batch_size=100, root=tmp_path)
    _, test = eval_synthetic
    direct = accuracy(eval_tiny_model, make_loader(test, batch_size=100, train=False,
                                                   pipeline="eval-plain", img_size=32).epoch(0))
    assert res["top1"] == pytest.approx(direct["top1"]) and res["n"] == 200
    assert [r["shots"] for r in res["fewshot"]] == [1, 5]
    assert all(len(r["top1_per_seed"]) == 2 for r in res["fewshot"])
    acc, fs, sh = load("accuracy", tmp_path), load("fewshot", tmp_path), load("shuffle", tmp_path)
    assert acc["kind"].tolist() == ["evaluate"] and acc["top1"][0] == pytest.approx(direct["top1"])
    assert fs["shots"].tolist() == [1, 5] and (fs["num_seeds"] == 2).all()
    assert sorted(set(sh["metric"])) == ["fewshot1", "fewshot5", "top1"]
    assert set(sh["eval_shuffle"]) == {"none", "patch"}
    # the unshuffled few-shot number is the same with or without --shuffle
    none5 = sh[(sh["eval_shuffle"] == "none") & (sh["metric"] == "fewshot5")]["top1"].item()
    assert none5 == pytest.approx(fs[fs["shots"] == 5]["top1_mean"].item())


def test_evaluate_head_mismatch_says_so_and_fewshot_works(tmp_path, eval_tiny_model):
    from mixerbench.models import create_model
    from mixerbench.models.weights import model_description, save_checkpoint

    model = create_model("mixer-t4", num_classes=3, img_size=32, patch_size=4, width=32, depth=2)
    path = tmp_path / "three.safetensors"
    save_checkpoint(path, model, model_description("mixer-t4", 3, 32, 4, dict(width=32, depth=2)))
    with pytest.raises(UserError, match="3-class head.*--fewshot"):
        evaluate(str(path), "synthetic", device="cpu")
    res = evaluate(str(path), "synthetic", crop="plain", fewshot="2", seeds=1, device="cpu")
    assert res["top1"] is None and res["rows"]["accuracy"] == []
    assert 0 <= res["fewshot"][0]["top1_mean"] <= 100
    with pytest.raises(UserError, match="--fewshot 1000"):
        evaluate(str(path), "synthetic", fewshot="1000", device="cpu")


def test_evaluate_reproduces_the_smoke_run(tmp_path):
    """A checkpoint trained by the smoke preset evaluates to the accuracy its run logged."""
    from mixerbench.presets import resolve
    from mixerbench.train import train

    cfg = resolve("smoke", flags={"steps": 6, "device": "cpu"})
    summary = train(cfg, tmp_path)
    res = evaluate(summary["run_dir"], cfg.data.dataset, split=cfg.data.eval_split, device="cpu",
                   batch_size=500)
    assert res["pipeline"] == cfg.data.eval_pipeline
    assert res["top1"] == pytest.approx(summary["top1"], abs=1e-9)
    assert res["loss"] == pytest.approx(summary["loss"], rel=1e-5)
    assert res["rows"]["accuracy"][0]["run_id"] == summary["run_id"]


# ------------------------------------------------------------------------------------- CLI


def test_cli_evaluate_writes_rows_and_bad_input_exits_2(eval_checkpoint, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mixerbench.cli import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runner = CliRunner()
    out = runner.invoke(app, ["evaluate", "--checkpoint", str(eval_checkpoint), "--dataset", "synthetic",
                              "--crop", "plain", "--fewshot", "1", "--seeds", "1", "--device", "cpu",
                              "--results-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "top-1" in out.output
    assert (tmp_path / "accuracy.csv").is_file() and (tmp_path / "fewshot.csv").is_file()
    bad = runner.invoke(app, ["evaluate", "--checkpoint", str(eval_checkpoint), "--dataset", "synthetic",
                              "--fewshot", "500", "--device", "cpu", "--results-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    real = tmp_path / "real.json"
    real.write_text(json.dumps([[0]] * 3))
    bad = runner.invoke(app, ["evaluate", "--checkpoint", str(eval_checkpoint), "--dataset", "synthetic",
                              "--real-labels", str(real), "--device", "cpu",
                              "--results-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "matched by ImageNet validation file name" in bad.output
