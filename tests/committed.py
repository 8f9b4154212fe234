"""The configs behind results/accuracy.csv, rebuilt from the commands results/README.md lists.

`committed_configs` plans those commands (nothing trains) and returns each planned config by
the run id it gives today; a row of the committed results names a run of that command only when
its run id is one of these exactly. Two kinds of committed row need one more step, each checked
by the same exact run id:
- the ResNet rows were trained while the smoke preset still gave the ResNet a `stem_width` of
  16 that timm's plain stem ignores (a new run may no longer record it), so the option is put
  back into today's config of the same command;
- transfer's two fine-tuning rows were trained before runs recorded their source weights'
  sha256 (`init_sha256`), so that setting is left at its default (unrecorded).
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
    # transfer's upstream run, as its downstream cells read it: a checkpoint holding only its
    # model description, at the committed path (results/runs/<upstream run id>)
    work = tmp_path / "work"  # the commands ran here: ../shared/data is the data folder
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(Path(DATA_DIR).resolve())
    upstream = work / "results" / "runs" / "mixer-t4-cifar10-s0-693502d3"
    upstream.mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(upstream / "checkpoint-last.safetensors"), metadata={
        "mixerbench_model": json.dumps(dict(name="mixer-t4", num_classes=10, img_size=32,
                                            patch_size=4, overrides=dict(width=64, depth=2)))})

    def plan(cells, launcher, log):
        cfgs.extend(c.config() for c in cells)
        if cells[0].experiment == "transfer" and len(cells) == 1:
            return [dict(run_dir="results/runs/mixer-t4-cifar10-s0-693502d3")]
        raise _Planned

    monkeypatch.setattr(experiments, "run_cells", plan)
    monkeypatch.chdir(work)  # the fine-tuning cells' --init is that relative path
    for artifact in ("shuffle", "data-scaling", "transfer"):
        try:
            experiments.reproduce(artifact, budget="cpu", data_dir=DATA_DIR, root="results")
        except _Planned:
            pass
    return cfgs


def committed_configs(monkeypatch, tmp_path: Path) -> dict:
    """run id -> the config of the command that trained it, for every run the commands behind
    results/ plan, in the committed forms described in the module docstring."""
    out = {}
    for cfg in _planned(monkeypatch, tmp_path):
        if cfg.init_sha256 is not None:  # recorded since; the committed rows predate it
            cfg = replace(cfg, init_sha256=None)
        out[run_id(cfg)] = cfg
        if cfg.model.name == "resnet18":
            old = replace(cfg, model=replace(cfg.model, options={**cfg.model.options,
                                                                 "stem_width": 16}))
            out[run_id(config.validate(old))] = config.validate(old)
    return out
