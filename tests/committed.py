"""The configs behind results/accuracy.csv, rebuilt from the commands results/README.md lists.

`committed_configs` plans those commands (nothing trains) and returns each planned config by
the run id it gives today; a row of the committed results names a run of that command only when
its run id is one of these exactly. Two kinds of committed row need one more step, each checked
by the same exact run id:
- the ResNet rows were trained while the smoke preset still gave the ResNet a `stem_width` of
  16 that timm's plain stem ignores (a new run may no longer record it), so the option is put
  back into today's config of the same command;
- transfer's two seed-0 fine-tuning rows were trained before runs recorded their source
  weights' sha256 (`init_sha256`), so that setting is left at its default (unrecorded); the
  later seeds' fine-tunes recorded it, and `UPSTREAM_SHA256` holds what they recorded.

The commands ran at the seeds `SEEDS` lists (seed 0 is the command without `--set seed`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from mixerbench import config, experiments, presets
from mixerbench.config import run_id

# The folder the committed runs read CIFAR-10 from (`--data-dir`): part of a run id since the
# first release (results/README.md).
DATA_DIR = "../shared/data"
# The seeds each `reproduce ... --budget cpu` command of results/README.md ran at.
SEEDS = {"shuffle": (0,), "data-scaling": (0,), "transfer": (0, 1, 2)}
# The sha256 of each upstream run's weights as its fine-tunes recorded it (`init_sha256` in
# their config.json): part of their run ids, and not derivable without the weights.
UPSTREAM_SHA256 = {
    "mixer-t4-cifar10-s1-f9adf1f1":
        "74f78db20e423181bafae310f019f96ec0d34f22fba4b0fc9ee2fd869b393048",
    "mixer-t4-cifar10-s2-f3cb7224":
        "7700d3fc3d26baeab06e2c05eeeae71316618e4205cd2a3677bb4885507db8e6",
}


class _Planned(Exception):
    pass


def _planned(monkeypatch, tmp_path: Path) -> list:
    """The configs of every command behind the committed rows, as today plans them."""
    import torch
    from safetensors.torch import save_file

    cfgs = [c.config() for c in experiments.compare_cells(
        ["mixer", "vit", "resnet", "gmlp", "resmlp"], dataset=None, preset="smoke", seeds=3,
        epochs=None, root="results", data_dir=None, device=None, overrides=None)]
    for family in ("mixer", "vit", "resnet"):
        cfgs.append(presets.resolve(
            "smoke", model=family, dataset="cifar10",
            flags={"data.data_dir": DATA_DIR, "epochs": 30},
            overrides={"data.pipeline": "small", "model.img_size": "32", "eval_every": "1172"}))
    work = tmp_path / "work"  # the commands ran here: ../shared/data is the data folder
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(Path(DATA_DIR).resolve())

    def plan(cells, launcher, log):
        cfgs.extend(c.config() for c in cells)
        if cells[0].experiment == "transfer" and len(cells) == 1:
            # transfer's upstream run, as its downstream cells read it: a checkpoint holding
            # only its model description, at the committed path (results/runs/<its run id>)
            upstream = Path("results", "runs", run_id(cfgs[-1]))
            upstream.mkdir(parents=True, exist_ok=True)
            save_file({"w": torch.zeros(1)}, str(upstream / "checkpoint-last.safetensors"),
                      metadata={"mixerbench_model": json.dumps(dict(
                          name="mixer-t4", num_classes=10, img_size=32, patch_size=4,
                          overrides=dict(width=64, depth=2)))})
            return [dict(run_dir=str(upstream))]
        raise _Planned

    monkeypatch.setattr(experiments, "run_cells", plan)
    work.mkdir()
    monkeypatch.chdir(work)  # the fine-tuning cells' --init is that relative path
    for artifact, seeds in SEEDS.items():
        for seed in seeds:
            try:
                experiments.reproduce(artifact, budget="cpu", data_dir=DATA_DIR, root="results",
                                      overrides={"seed": str(seed)} if seed else None)
            except _Planned:
                pass
    return cfgs


def committed_configs(monkeypatch, tmp_path: Path) -> dict:
    """run id -> the config of the command that trained it, for every run the commands behind
    results/ plan, in the committed forms described in the module docstring."""
    out = {}
    for cfg in _planned(monkeypatch, tmp_path):
        if cfg.init_sha256 is not None:  # what the run recorded: nothing before it was recorded
            cfg = replace(cfg, init_sha256=UPSTREAM_SHA256.get(Path(cfg.init).name))
        out[run_id(cfg)] = cfg
        if cfg.model.name == "resnet18":
            old = replace(cfg, model=replace(cfg.model, options={**cfg.model.options,
                                                                 "stem_width": 16}))
            out[run_id(config.validate(old))] = config.validate(old)
    return out
