"""The training loop: schedule, presets, run directory, exact resume, faults, DDP, fine-tuning."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import cli

from mixerbench import results
from mixerbench.presets import resolve
from mixerbench.errors import UserError
from mixerbench.presets import get_preset, names, run_config
from mixerbench.optim import lr_factor
from mixerbench.train import Interrupted, TrainingStopped, train

TINY_SETTINGS = {"model.width": "32", "model.depth": "2", "data.eval_batch_size": "100"}


def tiny_cfg(**flags):
    """A Mixer of width 32 and 2 blocks on the synthetic set (1,000 train / 200 test, 32 px)."""
    base = {"steps": 12, "data.batch_size": 50, "eval_every": 6, "ckpt_every": 3,
            "model.img_size": 32, "model.patch_size": 8, "device": "cpu"}
    base.update(flags)
    return resolve("smoke", dataset="synthetic", flags=base, overrides=TINY_SETTINGS)


def final_state(summary):
    from safetensors.torch import load_file

    return load_file(str(Path(summary["run_dir"]) / "checkpoint-last.safetensors"))


# ------------------------------------------------------------------------------- pure pieces


def test_schedule_values_at_chosen_steps():
    # linear warm-up from 0 over 10 steps, then linear decay to end_factor (paper section 3)
    assert lr_factor(0, 110, 10, "linear", 1e-5) == 0.0
    assert lr_factor(5, 110, 10, "linear", 1e-5) == 0.5
    assert lr_factor(10, 110, 10, "linear", 1e-5) == 1.0
    assert lr_factor(60, 110, 10, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(110, 110, 10, "linear", 1e-5) == pytest.approx(1e-5)
    # cosine (fine-tuning): half way through the decay is half the peak; the end is 0
    assert lr_factor(60, 110, 10, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(110, 110, 10, "cosine", 0.0) == pytest.approx(0.0, abs=1e-12)


def test_table4_presets_resolve_to_the_papers_numbers():
    b = get_preset("imagenet-mixer-b16")
    assert (b.optim.name, b.optim.beta1, b.optim.beta2) == ("adam", 0.9, 0.999)
    assert (b.data.batch_size, b.optim.warmup_steps, b.optim.schedule) == (4096, 10_000, "linear")
    assert (b.epochs, b.optim.lr, b.optim.weight_decay, b.optim.clip_norm) == (300, 1e-3, 0.1, 1.0)
    assert (b.data.randaug_m, b.data.mixup_p, b.model.dropout, b.model.drop_path) == (15, 0.5, 0.0, 0.1)
    l21 = get_preset("in21k-mixer-l16")
    assert (l21.data.randaug_m, l21.data.mixup_p) == (20, 0.5)
    b21 = get_preset("in21k-mixer-b16")
    assert (b21.data.randaug_m, b21.data.mixup_p) == (10, 0.2)
    jb = get_preset("jft-mixer-b")
    assert (jb.epochs, jb.optim.lr, jb.optim.weight_decay, jb.data.randaug_m, jb.data.mixup_p) == (7, 3e-3, 0.03, 0, 0.0)
    assert get_preset("jft-mixer-h").epochs == 14 and get_preset("jft-mixer-s").epochs == 5


def test_finetune_presets_follow_the_vit_protocol():
    # steps: ViT paper Table 4; warm-up: 500 (vision_transformer) or 100 (BiT-HyperRule, < 20k images)
    for name, steps, warmup in [("finetune-imagenet", 20_000, 500), ("finetune-cifar10", 10_000, 500),
                                ("finetune-cifar100", 10_000, 500), ("finetune-pets", 500, 100),
                                ("finetune-flowers102", 500, 100), ("finetune", 500, 100)]:
        c = get_preset(name)
        assert (c.optim.name, c.optim.momentum, c.data.batch_size) == ("sgd", 0.9, 512)
        assert (c.optim.schedule, c.optim.clip_norm, c.optim.weight_decay) == ("cosine", 1.0, 0.0)
        assert (c.model.drop_path, c.model.dropout) == (0.0, 0.0)
        assert c.steps == steps and c.kind == "finetune" and c.optim.warmup_steps == warmup


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A mixerbench checkpoint of a 2-block width-32 Mixer at 32 px, patch 8, 10 classes."""
    from mixerbench.models import create_model
    from mixerbench.models.weights import model_description, save_checkpoint

    over = dict(width=32, depth=2, gelu="tanh", drop_path=0.1)
    model = create_model("mixer-t4", num_classes=10, img_size=32, patch_size=8, **over)
    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    save_checkpoint(path, model, model_description("mixer-t4", 10, 32, 8, over))
    return path


def test_every_preset_resolves(small_checkpoint):
    for name in names():
        kw = {"init": str(small_checkpoint)} if name.startswith("finetune") else {}
        assert run_config(name, **kw).preset == name


def test_a_warmup_as_long_as_the_run_is_refused():
    with pytest.raises(UserError, match="warm-up"):
        resolve("smoke", flags={"steps": 100}, overrides={"optim.warmup_frac": "none",
                                                          "optim.warmup_steps": "100"})
    with pytest.raises(UserError, match="warmup_frac"):
        resolve("smoke", overrides={"optim.warmup_frac": "1.0"})


def test_a_finetune_config_records_the_model_it_trains(small_checkpoint):
    cfg = run_config("finetune", kind="finetune", init=str(small_checkpoint), dataset="synthetic",
                     flags={"model.img_size": "2x"})
    m = cfg.model
    assert (m.name, m.img_size, m.patch_size, m.width, m.depth) == ("mixer-t4", 64, 8, 32, 2)
    assert m.drop_path == 0.0  # the fine-tuning recipe's, not the checkpoint's 0.1
    with pytest.raises(UserError, match="architecture"):
        run_config("finetune", kind="finetune", init=str(small_checkpoint), overrides={"model.width": "64"})
    with pytest.raises(UserError, match="2x"):
        run_config("finetune", kind="finetune", init=str(small_checkpoint), flags={"model.img_size": "0x"})


def test_resolve_reads_no_file_its_caller_reads_the_inputs(small_checkpoint, tmp_path):
    """`resolve` is a pure function: what the run's inputs are on this machine (the --init
    weights' description and hash, a dataset folder's absolute path) comes in as `Inputs`,
    which `read_inputs` reads; `run_config` is the two in a row."""
    from dataclasses import replace

    from mixerbench.presets import Inputs, read_inputs

    spec = dict(kind="finetune", init=str(small_checkpoint), dataset="synthetic")
    found = read_inputs("finetune", **spec)
    assert found.source["name"] == "mixer-t4" and len(found.init_sha256) == 64
    assert found.data_path is None  # a registry name identifies itself
    gone = dict(spec, init=str(tmp_path / "moved-away.safetensors"))  # no such file: not read
    cfg = resolve("finetune", **gone, inputs=found)
    assert (cfg.model.name, cfg.init_sha256) == ("mixer-t4", found.init_sha256)
    assert replace(cfg, init=spec["init"]) == run_config("finetune", **spec)
    with pytest.raises(ValueError, match="read_inputs"):
        resolve("finetune", **spec)  # fine-tuning without the weights' description
    folder = tmp_path / "digits"
    folder.mkdir()
    assert read_inputs("smoke", dataset=str(folder)).data_path == str(folder.resolve())
    assert resolve("smoke", dataset="digits", inputs=Inputs(data_path="/x/digits")).data.path \
        == "/x/digits"


def test_settings_are_typed_and_checked():
    assert resolve("smoke", overrides={"optim.lr": "0.01"}).optim.lr == 0.01
    for bad in ({"optim.lrr": "1"}, {"optim.lr": "fast"}, {"model.depth": "2.5"}, {"nope": "1"}):
        with pytest.raises(UserError):
            resolve("smoke", overrides=bad)


# --------------------------------------------------------------------------- training runs


def test_training_writes_run_directory_and_accuracy_row(tmp_path):
    s = train(tiny_cfg(steps=40, eval_every=20), tmp_path)
    run = Path(s["run_dir"])
    for name in ("config.json", "metrics.csv", "summary.json", "checkpoint-last.safetensors",
                 "state-last.pt"):
        assert (run / name).is_file(), name
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert metrics[0].split(",") == list(results.METRICS) and len(metrics) == 3  # steps 20, 40
    acc = results.load("accuracy", tmp_path)
    assert len(acc) == 1 and acc.loc[0, "run_id"] == run.name
    assert acc.loc[0, "top1"] > 30  # 10 classes: chance is 10 %
    assert acc.loc[0, "train_flops"] > 0 and acc.loc[0, "device_name"].startswith("cpu")
    recorded = json.loads((run / "summary.json").read_text())["data_wait_fraction"]
    assert recorded == s["data_wait_fraction"] and 0 <= recorded < 0.5  # in-memory batches: not input-bound
    # the same command again reads the finished run back: no retraining, no second row
    again = train(tiny_cfg(steps=40, eval_every=20), tmp_path)
    assert again["reused"] and again["top1"] == s["top1"]
    assert len(results.load("accuracy", tmp_path)) == 1


def test_a_run_builds_its_model_once_on_meta_and_once_for_real(tmp_path, monkeypatch):
    """The checks before the data is read (options, memory) and the MAC count share one build
    on the meta device; the weights are built once; train_flops is 6 x the trained model's
    MACs x the images seen (forward + backward = 3 forward passes, 2 FLOPs per MAC)."""
    from mixerbench import models
    from mixerbench.models.flops import count_macs

    real, built = models.create_model, []

    def create_model(*args, **kwargs):
        model = real(*args, **kwargs)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(models, "create_model", create_model)
    s = train(tiny_cfg(steps=2, eval_every=2), tmp_path)
    assert sorted(built) == ["cpu", "meta"]
    trained = real("mixer-t4", num_classes=10, img_size=32, patch_size=8, width=32, depth=2)
    assert s["train_flops"] == 6 * count_macs(trained, 32) * 2 * 50


@pytest.mark.parametrize("family", ["mixer", "vit", "resnet", "gmlp", "resmlp"])
def test_the_meta_check_with_the_datas_classes_counts_what_is_trained(family):
    """Checked with 10 classes before the data is read, then given the data's 37: the meta
    model's parameters and MACs are those of the model then built for real."""
    import torch

    from mixerbench.models import count_params
    from mixerbench.models.flops import count_macs
    from mixerbench.prepare import build_model, check_model

    cfg = resolve("smoke", model=family, flags={"device": "cpu"})
    check = check_model(cfg).with_classes(37)
    torch.manual_seed(0)
    model, rec = build_model(cfg, 37)
    assert (check.params, check.macs) == (count_params(model)[0],
                                          count_macs(model, rec["img_size"]))
    assert check.num_classes == 37 and check_model(cfg).macs < check.macs


def test_compile_is_chosen_when_it_pays_back():
    from mixerbench.runtime import CPU_COMPILE_SECONDS, compile_pays

    assert not compile_pays(496, 0.05)  # the smoke preset's run on 2 CPU cores: 25 s of steps
    assert compile_pays(1_000_000, 0.05)  # a long run: hours of steps
    # the break-even: compile time = steps x step time x (1 - 1/speedup)
    assert compile_pays(10_000, CPU_COMPILE_SECONDS / 1000) != compile_pays(1_000, CPU_COMPILE_SECONDS / 1000)


@pytest.mark.slow
def test_compiled_and_eager_runs_agree(tmp_path):
    """compile changes neither the run id nor, beyond float rounding, the results; a short
    CPU run left to decide stays eager (compiling would not pay back)."""
    eager = train(tiny_cfg(steps=8, eval_every=8, compile=False), tmp_path / "eager")
    compiled = train(tiny_cfg(steps=8, eval_every=8, compile=True), tmp_path / "compiled")
    auto = train(tiny_cfg(steps=8, eval_every=8), tmp_path / "auto")
    assert eager["run_id"] == compiled["run_id"] == auto["run_id"]
    assert compiled["compiled"] and not eager["compiled"] and not auto["compiled"]
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-3)
    assert abs(compiled["top1"] - eager["top1"]) <= 1.0  # 200 test images: one image is 0.5
    assert auto["loss"] == eager["loss"] and auto["top1"] == eager["top1"]


def test_resume_after_a_kill_is_bitwise_exact(tmp_path):
    cfg = tiny_cfg(steps=14, **{"model.drop_path": 0.2, "data.mixup_p": 0.5})
    straight = train(cfg, tmp_path / "a")

    def kill_at_10(event, info):  # an exception mid-run: nothing saved after the step-9 checkpoint
        if event == "step" and info["step"] == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", log=kill_at_10)
    state = torch.load(Path(straight["run_dir"].replace("/a/", "/b/")) / "state-last.pt",
                       weights_only=True)
    assert state["step"] == 9
    resumed = train(cfg, tmp_path / "b")
    a, b = final_state(straight), final_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["top1"] == straight["top1"] and resumed["loss"] == straight["loss"]
    strip = lambda p: [r.split(",")[:7] for r in Path(p, "metrics.csv").read_text().splitlines()]  # noqa: E731
    assert strip(straight["run_dir"]) == strip(resumed["run_dir"])  # all but timing columns


def test_sigterm_saves_and_resume_continues(tmp_path):
    cfg = tiny_cfg(steps=14)
    straight = train(cfg, tmp_path / "a")

    def term_at_10(event, info):
        if event == "step" and info["step"] == 10:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(Interrupted) as exc:
        train(cfg, tmp_path / "b", log=term_at_10)
    assert exc.value.step == 10
    resumed = train(cfg, tmp_path / "b")
    a, b = final_state(straight), final_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # SGD at lr 10 without clipping: the first steps are finite (zero head), then it diverges
    cfg = tiny_cfg(steps=40, ckpt_every=1, **{"optim.name": "sgd", "optim.lr": 10.0,
                                              "optim.warmup_frac": 0.0, "optim.clip_norm": 0.0})
    with pytest.raises(TrainingStopped, match="intact"):
        train(cfg, tmp_path)
    run = next((tmp_path / "runs").iterdir())
    assert not (run / "summary.json").exists()
    from safetensors.torch import load_file

    state = load_file(str(run / "checkpoint-last.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())
    saved = torch.load(run / "state-last.pt", weights_only=True)["step"]
    assert 1 <= saved < 40


def test_finetune_at_twice_the_resolution_from_a_run(tmp_path):
    src = train(tiny_cfg(steps=6, **{"model.drop_path": 0.1}), tmp_path)
    for size in ("1x", "2x"):
        cfg = run_config("finetune-cifar10", dataset="synthetic", init=src["run_dir"],
                         kind="finetune", flags={"steps": 4, "data.batch_size": 20,
                                                 "model.img_size": size, "device": "cpu",
                                                 "eval_every": 4, "data.pipeline": "small"},
                         overrides={"data.eval_batch_size": "100", "max_eval_examples": "40",
                                    "optim.warmup_steps": "1", "model.drop_path": "0.05"})
        s = train(cfg, tmp_path)
        k = int(size[0])
        assert s["img_size"] == 32 * k and s["kind"] == "finetune" and s["init"] == src["run_dir"]
        rec = json.loads(__import__("safetensors").safe_open(
            str(Path(s["run_dir"]) / "checkpoint-last.safetensors"), "pt").metadata()["mixerbench_model"])
        assert rec["img_size"] == 32 * k and rec["overrides"].get("tokens_dim", 16) == k * k * 16
        # the fine-tuning recipe's stochastic depth at 1x and 2x alike, and config.json says so
        assert rec["overrides"]["drop_path"] == 0.05
        written = json.loads((Path(s["run_dir"]) / "config.json").read_text())
        assert written["model"]["drop_path"] == 0.05 and written["model"]["name"] == "mixer-t4"
        assert written["model"]["img_size"] == 32 * k and written["model"]["width"] == 32


# --------------------------------------------------------------------------------- the CLI


def test_cli_smoke_preset_runs_and_bad_input_exits_2(tmp_path):
    common = ["--results-dir", str(tmp_path), "--dataset", "synthetic", "--steps", "4",
              "--img-size", "32", "--set", "model.width=16", "--set", "data.batch_size=50",
              "--device", "cpu"]
    ok = cli("pretrain", "--preset", "smoke", *common)
    assert ok.exit_code == 0, ok.output
    assert "top-1" in ok.output
    runs_before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    csv_before = (tmp_path / "accuracy.csv").read_text()
    for args in (
        ["pretrain", "--preset", "smoke", *common, "--resume"],           # finished run resumed
        ["pretrain", "--preset", "smoke", *common, "--set", "optim.lrr=1"],  # unknown key
        ["pretrain", "--preset", "smoke", *common, "--set", "optim.lr=x"],   # wrong type
        ["pretrain", "--preset", "smok", *common],                        # unknown preset
        ["pretrain", "--model", "mixer-b61", *common],                    # unknown model
        ["pretrain", "--preset", "smoke", *common, "--patch-size", "5"],  # patch does not divide
        ["finetune", "--init", str(tmp_path / "nope"), "--dataset", "synthetic"],  # missing init
    ):
        r = cli(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output and r.output.strip().count("\n") == 0, r.output
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == runs_before
    assert (tmp_path / "accuracy.csv").read_text() == csv_before


def test_list_presets():
    r = cli("pretrain", "--list-presets")
    assert r.exit_code == 0 and "imagenet-mixer-b16" in r.output and "smoke" in r.output


# --------------------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_two_process_ddp_gives_identical_weights(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch
        from mixerbench.presets import resolve
        from mixerbench.train import train
        from mixerbench.models.weights import unwrap
        cfg = resolve("smoke", dataset="synthetic", flags={{"steps": 6, "data.batch_size": 40,
              "eval_every": 3, "model.img_size": 32, "model.patch_size": 8, "device": "cpu"}},
              overrides={{"model.width": "16", "model.depth": "1", "model.drop_path": "0.1"}})
        import mixerbench.train as T
        captured = {{}}
        orig = T.make_optimizer
        def spy(model, cfg, fused):
            captured["model"] = model
            return orig(model, cfg, fused)
        T.make_optimizer = spy
        s = train(cfg, {str(tmp_path)!r})
        rank = int(os.environ["RANK"])
        torch.save(unwrap(captured["model"]).state_dict(), {str(tmp_path)!r} + f"/rank{{rank}}.pt")
        from mixerbench.runtime import teardown_distributed
        teardown_distributed()  # as the CLI does: an exit mid-collective aborts now and then
    """))
    # this checkout's package (not an installed one), and --standalone: a free port each time
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(results.load("accuracy", tmp_path)) == 1  # rank 0 alone writes
    assert results.load("accuracy", tmp_path).loc[0, "num_devices"] == 2


def test_accuracy_row_carries_the_experiment_tag(tmp_path):
    s = train(tiny_cfg(steps=4, eval_every=4), tmp_path, experiment="compare:smoke")
    acc = results.load("accuracy", tmp_path)
    assert acc.loc[0, "experiment"] == "compare:smoke" and s["experiment"] == "compare:smoke"


def test_finetune_lr_grid_selects_on_minival_and_reports_on_test(tmp_path):
    """`finetune --lr a,b`: each lr fine-tunes on train minus minival and is scored on minival;
    the best is re-run on all of train and reported on test (paper App. C); all of it recorded."""
    src = train(tiny_cfg(steps=6), tmp_path)
    args = ["finetune", "--init", src["run_dir"], "--dataset", "synthetic",
            "--lr", "0.001,0.03", "--steps", "4", "--batch-size", "20", "--device", "cpu",
            "--set", "optim.warmup_steps=1", "--set", "data.pipeline=small",
            "--set", "data.eval_batch_size=100", "--results-dir", str(tmp_path)]
    out = cli(*args)
    assert out.exit_code == 0, out.output
    acc = results.load("accuracy", tmp_path)
    grid = acc[acc["experiment"] == "lr-grid"]
    assert sorted(grid["split"]) == ["minival", "minival", "test"]
    final = grid[grid["split"] == "test"].iloc[0]
    record = json.loads((tmp_path / "runs" / final["run_id"] / "lr-grid.json").read_text())
    best = max(record["lr_grid"], key=lambda g: g["minival_top1"])
    assert record["selected_lr"] == best["lr"] and record["reported_split"] == "test"
    written = json.loads((tmp_path / "runs" / final["run_id"] / "config.json").read_text())
    assert written["optim"]["lr"] == best["lr"] and written["data"]["train_split"] == "train"
    assert "selected on minival" in out.output


def test_every_preset_round_trips_through_config_json(small_checkpoint):
    """What the training loop writes to config.json reads back as the same config with the same
    hash (a preset's whole-number epochs once hashed as 8 and read back as 8.0)."""
    from mixerbench.config import config_hash, from_dict, to_dict

    for name in names():
        kw = {"init": str(small_checkpoint)} if name.startswith("finetune") else {}
        cfg = run_config(name, **kw)
        back = from_dict(json.loads(json.dumps(dict(to_dict(cfg), config_hash=config_hash(cfg)))))
        assert back == cfg and config_hash(back) == config_hash(cfg), name
