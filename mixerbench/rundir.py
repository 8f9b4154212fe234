"""A run's folder, `<results>/runs/<run id>/`: what is in it and which config it belongs to.

- `config.json` is written before the first step, with the hash of the config that owns the
  folder (`write_config`); a different config under the same name is refused (`check_owner`),
  and a resume may change only the device, the compile switch, the data folder and (for an
  unfinished run) its length.
- `metrics.csv` gets one row per evaluation; rows written after the checkpoint a resume starts
  from are dropped (they will be redone).
- `state-last.pt` holds everything needed to resume exactly, as plain tensors and numbers,
  loaded with `weights_only=True` so a planted file cannot run code; `checkpoint-last.
  safetensors` is the weights-only export for `--init` and `evaluate`. Both are written
  atomically (temp file, fsync, rename), so a kill at any moment leaves the previous pair
  loadable, and both name the run that wrote them (`config.run_binding`).
- `summary.json` marks a finished run; its accuracy row in `accuracy.csv` is written exactly
  once (`ensure_row`), even when a kill falls between the two.
A file here that this version did not write is refused with a sentence, never guessed at.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from mixerbench import files, results
from mixerbench.config import (
    LENGTH,
    RESUMABLE_CHANGES,
    RunConfig,
    config_hash,
    read_run_config,
    recipe_id,
    to_dict,
)
from mixerbench.errors import UserError

STATE = "state-last.pt"
SUMMARY = "summary.json"
CONFIG = "config.json"
METRICS = "metrics.csv"
RUN_LOCK = "run"  # the run folder's lock file is run.lock (files.locked)


def finite(v: Any) -> bool:
    """A real number that is neither NaN nor infinite (a bool is not a number here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------- owning it


def _comparable(d: dict, unfinished: bool) -> dict:
    """A config dict without the settings a resume may change."""
    d = json.loads(json.dumps(d, default=str))
    d.pop("config_hash", None)
    for key in RESUMABLE_CHANGES + (LENGTH if unfinished else ()):
        section, _, name = key.rpartition(".")
        (d.get(section, {}) if section else d).pop(name, None)
    return d


def check_owner(run_dir: Path, cfg: RunConfig) -> None:
    """A run directory belongs to the one config stored in its config.json: refuse any other
    (a reused --run-name, a planted or damaged config.json, a foreign folder), and refuse a
    folder, FIFO or link where one of its files goes (`check_files`)."""
    path = run_dir / CONFIG
    if not run_dir.exists():
        return
    if not run_dir.is_dir() or run_dir.is_symlink():
        raise UserError(f"{run_dir} is not a run directory; choose another --run-name.")
    check_files(run_dir)
    if not path.exists():
        if any(p.name != f"{RUN_LOCK}.lock" and not p.name.endswith(".tmp")
               for p in run_dir.iterdir()):
            raise UserError(f"{run_dir} exists but was not made by mixerbench (no {CONFIG}); "
                            "choose another --run-name or move that folder away.")
        return  # an empty directory left by a run killed before its first write
    try:
        # settings added since the file was written read back at their defaults (from_dict)
        stored_cfg = read_run_config(run_dir)
    except UserError:
        raise UserError(f"{path} is not a config this version wrote; move the run directory "
                        f"{run_dir.name} away (or delete it) to start it again.") from None
    stored, stored_hash = to_dict(stored_cfg), config_hash(stored_cfg)
    unfinished = not (run_dir / SUMMARY).exists()
    mine = to_dict(cfg)
    if _comparable(stored, unfinished) != _comparable(mine, unfinished):
        if stored_cfg.init and stored_cfg.init_sha256 is None and cfg.init_sha256 and \
                _comparable(dict(stored, init_sha256=None), unfinished) == _comparable(
                    dict(mine, init_sha256=None), unfinished):
            raise UserError(f"Run {run_dir.name} was fine-tuned before runs recorded their "
                            "source weights, so whether --init still holds them cannot be "
                            "told; choose another --run-name (or move that run away) to "
                            "fine-tune again.")
        diff = _first_difference(_comparable(stored, unfinished), _comparable(mine, unfinished))
        raise UserError(f"Run {run_dir.name} was made with another configuration ({diff}, hash "
                        f"{stored_hash} vs {config_hash(cfg)}); choose another --run-name, or "
                        "repeat the original settings to resume it.")


def check_files(run_dir: Path) -> None:
    """Every file a run writes is a regular file or absent (a folder, FIFO or link where
    `state-last.pt` or `summary.json` goes is refused now, before any of the run's files is
    rewritten: found at the first checkpoint, the refusal would follow a rewritten
    metrics.csv)."""
    from mixerbench.models.weights import CHECKPOINT

    for name in (CONFIG, METRICS, STATE, CHECKPOINT, SUMMARY):
        files.check(Path(run_dir) / name, "file")


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')} {a!r} there, {b!r} now"


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    """Claim the folder for `cfg` (after dropping the temp files of writes a kill cut short)."""
    # listed, removed and written through one descriptor of the run folder: removed by path,
    # a folder swapped for a link meanwhile would lose files outside the results folder
    with files.open_folder(run_dir, create=True) as folder:
        folder.remove_temporary()
        folder.write_bytes(CONFIG, files.json_bytes(dict(to_dict(cfg),
                                                         config_hash=config_hash(cfg))))


# -------------------------------------------------------------------- summary and its row


def read_summary(run_dir: Path) -> dict | None:
    """A finished run's summary, or None when it has none; one we did not write, or one that
    disagrees with its run's config.json (`summary_disagrees`), is refused, never recorded."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    try:
        s = files.read_json(path)  # bounded; a FIFO or link planted there is refused
    except (OSError, UnicodeDecodeError, ValueError):
        s = None
    ok = (isinstance(s, dict) and s.get("run_id") == Path(run_dir).name
          and isinstance(s.get("model"), str) and isinstance(s.get("dataset"), str)
          and all(finite(s.get(k)) for k in ("top1", "top5", "loss", "steps", "img_size"))
          and 0 <= s["top1"] <= 100
          # a cost is a finite number of seconds (an inf would be an infinite-cost row)
          and all(s.get(k) is None or (finite(s[k]) and s[k] >= 0)
                  for k in ("train_seconds", "device_hours", "train_flops"))
          and (s.get("checkpoint_sha256") is None or _is_sha256(s["checkpoint_sha256"])))
    if not ok:
        raise UserError(f"{path} is not a summary this version wrote; move the run directory "
                        f"{Path(run_dir).name} away (or delete it) and run again.")
    cfg = read_run_config(run_dir)
    wrong = "its config.json is missing" if cfg is None else summary_disagrees(s, cfg)
    if wrong:
        raise UserError(f"{path} does not belong to its run ({wrong}), so it is not recorded; "
                        f"move the run directory {Path(run_dir).name} away (or delete it) and "
                        "run again.")
    if not s.get("recipe_id"):  # written before runs recorded their recipe
        s["recipe_id"] = recipe_id(cfg, s.get("dtype"))
    if not s.get("pipeline"):  # written before runs recorded their eval crop: its config's
        s["pipeline"] = cfg.data.eval_pipeline
    return s


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def summary_disagrees(s: dict, cfg: RunConfig) -> str:
    """What in a summary contradicts the config of its run (model, dataset, split, kind,
    source weights, resolution, eval crop), as a few words; "" when they agree."""
    split = str(s.get("split"))  # `test`, or `test[...]` when max_eval_examples capped it
    checks = (
        ("model", s["model"].split("[", 1)[0], cfg.model.name),
        ("dataset", s["dataset"], cfg.data.dataset),
        ("split", split.split("[", 1)[0] if "[" not in split or cfg.max_eval_examples
         else split, cfg.data.eval_split),
        ("kind", s.get("kind"), cfg.kind),
        ("init", s.get("init") or "", cfg.init or ""),
        ("img_size", s["img_size"], cfg.model.img_size or s["img_size"]),
        ("pipeline", s.get("pipeline") or cfg.data.eval_pipeline, cfg.data.eval_pipeline),
    )
    return next((f"{k} {a!r} there, {b!r} in config.json" for k, a, b in checks if a != b), "")


def write_summary(run_dir: Path, root: Path, summary: dict) -> None:
    """Mark the run finished (summary.json), then record its accuracy row."""
    files.atomic_write_json(run_dir / SUMMARY, summary)
    ensure_row(summary, root)


def ensure_row(summary: dict, root: Path) -> None:
    """Append the run's accuracy row unless it is already there (a kill between summary.json
    and the append must neither lose the row nor, on a rerun, write it twice)."""
    path = results.csv_path("accuracy", root)
    with files.locked(path.with_suffix(".ensure")):
        if any(r["run_id"] == summary["run_id"] and r["kind"] != "evaluate"
               for r in results.text_rows("accuracy", root)):
            return
        row = {k: summary.get(k) for k in results.SCHEMAS["accuracy"]}
        results.append_row("accuracy", row, root)


# ------------------------------------------------------------------------------- metrics


def append_metrics(run_dir: Path, row: dict) -> None:
    results.append_to(run_dir / METRICS, results.METRICS, row)


def last_metrics(run_dir: Path) -> dict:
    return results.read_metrics(run_dir / METRICS)[-1]


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric rows written after the checkpoint we resume from (they will be redone)."""
    path = run_dir / METRICS
    if not path.is_file():
        return
    rows = results.read_metrics(path)
    keep = [r for r in rows if r["step"] is not None and r["step"] <= step]
    if len(keep) != len(rows):
        results.rewrite_metrics(path, keep)


def clear_metrics(run_dir: Path) -> int:
    """Drop every metric row (a run starting again from step 0); returns how many there were."""
    path = run_dir / METRICS
    rows = results.read_metrics(path) if path.is_file() else []
    if rows:
        results.rewrite_metrics(path, [])
    return len(rows)


# --------------------------------------------------------------------------- checkpoints


def has_state(run_dir: Path) -> bool:
    return (run_dir / STATE).is_file()


def write_state(run_dir: Path, state: dict, model, rec: dict, binding: dict,
                previous: str | None = None) -> str:
    """The training state (written first), then the weights-only export; both say which run
    wrote them (`binding`, checked by `read_state` and `weights.check_credited`), and the state
    records the export's sha256 (and the `previous` one's, which a kill between the two writes
    leaves in place), so a checkpoint copied in from elsewhere is not credited to the run
    (`weights.check_recorded`). An OSError (disk full) leaves the previous pair intact.
    Returns the export's sha256 (the finished run's summary records the last one)."""
    import hashlib

    import torch

    from mixerbench.models.weights import CHECKPOINT, checkpoint_bytes

    weights = checkpoint_bytes(model, dict(rec, step=state["step"], **binding))
    sha = hashlib.sha256(weights).hexdigest()
    buf = io.BytesIO()
    torch.save(dict(state, checkpoint_sha256=sha, previous_checkpoint_sha256=previous,
                    **binding), buf)
    files.atomic_write_bytes(run_dir / STATE, buf.getvalue())
    files.atomic_write_bytes(run_dir / CHECKPOINT, weights)
    return sha


def not_a_state(run_dir: Path, why: str) -> UserError:
    return UserError(f"{run_dir / STATE} is not a training state this version wrote ({why}); "
                     f"move the run directory {run_dir.name} away (or delete it) to start again.")


def read_state(run_dir: Path, binding: dict, total: int) -> dict:
    """The training state of the last checkpoint, checked to be this run's own, with its
    step within the run's `total` steps and finite counters; a file we did not write is a
    UserError. Loaded with `weights_only=True`: only tensors and plain data, never code."""
    import torch

    path = run_dir / STATE
    # read once from one descriptor (a regular file inside the run directory, not a FIFO or a
    # link), and the run it names is checked on the very bytes that are then resumed from
    data = files.read_bytes(path, limit=None)
    if data is None:
        raise UserError(f"{path} is gone; run the command without --resume to start again.")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        del data
        if any(k in state for k in binding) and {k: state.get(k) for k in binding} != binding:
            raise UserError(f"{path} was not written by run {run_dir.name} (it belongs to "
                            f"{state.get('run_id')}); move it away to start the run again.")
        progress = dict(step=int(state["step"]), train_seconds=float(state["train_seconds"]),
                        loss_sum=float(state["loss_sum"]), loss_count=int(state["loss_count"]),
                        checkpoint_sha256=state.get("checkpoint_sha256"))
        state.update(progress)
    except UserError:
        raise
    except Exception as exc:  # truncated, foreign or hostile files all fail here, before use
        raise not_a_state(run_dir, type(exc).__name__) from None
    if not (math.isfinite(progress["train_seconds"]) and progress["train_seconds"] >= 0
            and math.isfinite(progress["loss_sum"]) and progress["loss_count"] >= 0):
        # a planted train_seconds=inf would become a row with an infinite cost
        raise not_a_state(run_dir, f"train_seconds {progress['train_seconds']}, loss sum "
                                   f"{progress['loss_sum']}")
    if not 0 <= progress["step"] <= total:
        raise UserError(f"{path} is at step {progress['step']}, outside this run's {total} "
                        "steps; repeat the original --steps to resume it.")
    return state
