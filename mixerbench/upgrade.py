"""`mixerbench upgrade`: a results folder an older mixerbench wrote, brought to this version's
columns.

Every cell a row has is kept. A column older versions did not write is left empty, except
`recipe_id` (`config.recipe_id`), which is worked out from what the row's run recorded and
nothing else: the run's `config.json` (read strictly, `config.read_run_config`) stands for the
row only when today's run id of that config is the row's run id, and the run must have finished
(its `summary.json`, or its training row in accuracy.csv, also says the precision it trained
in). A row whose run folder is gone, or does not verify, keeps an empty recipe id: tables then
show its run on its own, never averaged with another.
"""

from __future__ import annotations

import os
from pathlib import Path

from mixerbench import files, results


def upgrade(root: str | os.PathLike | None = None) -> dict:
    """Upgrade the results folder `root` (`results.upgrade_all`, all files or none) and give
    older rows their recipe ids where their runs recorded enough to verify one.

    Returns:
        dict(written=[Path], filled=rows given a recipe id, unknown=sorted run ids whose rows
        keep an empty recipe id because no finished run folder verifies them).
    """
    root = results.results_dir(root)
    found: dict[str, str | None] = {}
    filled = [0]
    trained = _training_dtypes(root)

    def fill(table: str, row: dict) -> dict:
        if "recipe_id" not in row or row["recipe_id"] or not row.get("run_id"):
            return {}
        rid = row["run_id"]
        if rid not in found:
            found[rid] = recipe_of_run(root, rid, trained.get(rid))
        if found[rid] is None:
            return {}
        filled[0] += 1
        return {"recipe_id": found[rid]}

    written = results.upgrade_all(root, fill)
    if not written:
        filled[0] = 0  # worked out, but every file was already up to date
    return dict(written=written, filled=filled[0],
                unknown=sorted(r for r, v in found.items() if v is None))


def _training_dtypes(root: Path) -> dict[str, str]:
    """run id -> the precision its training row in accuracy.csv says it trained in."""
    acc = results.load("accuracy", root, required=False)
    acc = acc[acc["kind"].astype(str) != "evaluate"]
    return {str(r): str(d) for r, d in zip(acc["run_id"], acc["dtype"])
            if isinstance(r, str) and isinstance(d, str)}


def recipe_of_run(root: Path, run: str, dtype: str | None = None) -> str | None:
    """The recipe id of the finished run `run` under `root`, from its config.json, or None when
    the folder is gone, holds no config.json, names another run, or never finished. `dtype`:
    the precision its training row records, for a run without summary.json."""
    from mixerbench.config import read_run_config, recipe_id, run_id

    if not results.RUN_NAME.fullmatch(run):
        return None
    folder = results.run_path(root, run)
    if not folder.is_dir():
        return None
    cfg = read_run_config(folder)  # one this version did not write is refused, not guessed at
    if cfg is None or run_id(cfg) != run:
        return None
    try:
        summary = files.read_json(folder / "summary.json")
    except (OSError, UnicodeDecodeError, ValueError):
        summary = None
    finished = isinstance(summary, dict) and summary.get("run_id") == run
    if finished and summary.get("recipe_id"):
        return summary["recipe_id"]
    dtype = (summary.get("dtype") if finished else None) or dtype
    if not (finished or dtype) or (cfg.dtype == "auto" and not dtype):
        return None  # unfinished, or its precision is recorded nowhere
    return recipe_id(cfg, dtype)
