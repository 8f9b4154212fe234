"""`mixerbench upgrade`: a results folder an older mixerbench wrote, brought to this version's
columns.

Every cell a row has is kept. A column older versions did not write is left empty, except
where what the row's run, or the command that wrote it, recorded says its value:

- `recipe_id` (`config.recipe_id`): the run's `config.json` (read strictly,
  `config.read_run_config`) stands for the row only when today's run id of that config is the
  row's run id, and the run must have finished (its `summary.json`, or its training row in
  accuracy.csv, also says the precision it trained in).
- `split` of a probe or shuffle row: an `evaluate` wrote its accuracy row in the same call
  (same run, dataset and timestamp), and that row names the split. A probe row no such call
  wrote came from the sweeps' `fewshot_rows`, which probes the whole of its run's eval split
  (the run's training row names it; its `pipeline` is then the run's own eval crop, from its
  config.json). A shuffle or scaling row's `top1` is its run's own, on the run's split; its
  `fewshot5` is the fewshot.csv row of its run with the same value, whose probe it copies.
- `shots_split`: `train`, the only split any version drew shots from.
- `steps` of a probe or shuffle row: the step of the weights it measured. A row with a recipe
  id (written with one, or given one above) measured its finished run, whose last step its
  training row in accuracy.csv records; a row without one keeps it empty.
- `pipeline` of a shuffle row's `top1` that no `evaluate` wrote: the sweep measured it through
  its run's own eval crop (its verified config.json, as below).
- `pipeline` of an accuracy row: a training row's is its run's eval crop, from a config.json
  that today's run id of verifies as the row's run. An `evaluate` row's is not recorded
  anywhere (its `--crop`, or the run's own crop without one), so it stays empty: a crop of its
  own, never averaged with a known one.

A row for which nothing verifies a value keeps the cell empty: a recipe id left empty makes
its run a recipe of its own in tables, never averaged with another.
"""

from __future__ import annotations

import os
from pathlib import Path

from mixerbench import files, results
from mixerbench.errors import UserError
from mixerbench.names import RUN_NAME

# Columns the probe of a fewshot<k> row in shuffle.csv / scaling.csv copies from fewshot.csv.
_PROBE = ("split", "shots_split", "l2_reg", "num_seeds", "pipeline")


def upgrade(root: str | os.PathLike | None = None) -> dict:
    """Upgrade the results folder `root` (`results.upgrade_all`, all files or none) and fill
    the columns of older rows that their runs and commands recorded (module docstring).

    Returns:
        dict(written=[Path], filled=rows given a recipe id, unknown=sorted run ids whose rows
        keep an empty recipe id because no finished run folder verifies them).
    """
    root = results.results_dir(root)
    if root.exists() and not root.is_dir():  # before anything in it is read
        raise UserError(f"The results directory {root} is a file; pass another --results-dir.")
    found: dict[str, str | None] = {}
    filled = [0]
    facts = _Facts(root)

    def fill(table: str, row: dict) -> dict:
        new = facts.subset(table, row)
        if "recipe_id" not in row or not row.get("run_id"):
            return new
        if not row["recipe_id"]:
            rid = row["run_id"]
            if rid not in found:
                found[rid] = recipe_of_run(root, rid, facts.dtype.get(rid))
            if found[rid] is None:
                return new
            filled[0] += 1
            new = dict(new, recipe_id=found[rid])
        return dict(new, **facts.last_step(table, row))

    written = results.upgrade_all(root, fill)
    if not written:
        filled[0] = 0  # worked out, but every file was already up to date
    return dict(written=written, filled=filled[0],
                unknown=sorted(r for r, v in found.items() if v is None))


class _Facts:
    """What accuracy.csv, fewshot.csv and the run folders under `root` record, for `subset`."""

    def __init__(self, root: Path):
        self.root = root
        acc = results.load("accuracy", root, required=False)
        acc = acc.astype(object).where(acc.notna(), "")
        self.dtype, self.trained, self.evaluated = {}, {}, {}
        for r in acc.to_dict("records"):
            if r["kind"] != "evaluate":
                self.trained[r["run_id"]] = r
                self.dtype[r["run_id"]] = r["dtype"]
            elif not str(r["split"]).endswith("-real"):
                self.evaluated[(r["run_id"], r["dataset"], r["timestamp"])] = r["split"]
        few = results.load("fewshot", root, required=False)
        self.few = few.astype(object).where(few.notna(), "").to_dict("records")
        self._pipelines: dict[str, str] = {}

    def subset(self, table: str, row: dict) -> dict:
        """The split (and probe settings) of an older probe, shuffle or scaling row; the eval
        crop of an older training row of accuracy.csv and of a sweep's shuffle top-1."""
        if table == "accuracy":
            if row.get("pipeline") or row.get("kind") == "evaluate" or not row.get("run_id"):
                return {}
            pipeline = self._pipeline(row["run_id"])
            return {"pipeline": pipeline} if pipeline else {}
        if table not in ("fewshot", "shuffle", "scaling"):
            return {}
        same_call = self.evaluated.get((row["run_id"], row["dataset"], row["timestamp"]))
        crop = {}
        if table == "shuffle" and row["metric"] == "top1" and not row.get("pipeline") \
                and not same_call and row["run_id"]:  # the sweep's: its run's own crop
            crop = {"pipeline": self._pipeline(row["run_id"])}
        return {**self._split(table, row, same_call), **crop}

    def last_step(self, table: str, row: dict) -> dict:
        """The step of the weights an older probe or shuffle row of a finished run measured:
        its run's last (the training row's `steps`)."""
        run = self.trained.get(row["run_id"])
        if table not in ("fewshot", "shuffle") or row.get("steps") or not run \
                or run["steps"] in ("", None):
            return {}
        return {"steps": run["steps"]}

    def _split(self, table: str, row: dict, same_call: str | None) -> dict:
        if row.get("split"):
            return {}
        if table == "fewshot":
            return self._probe(row, same_call)
        if row["metric"] == "top1":
            run = self.trained.get(row["run_id"]) if row["run_id"] else None
            split = same_call or (run["split"] if run else "")
            return {"split": split} if split else {}
        if same_call:  # evaluate --shuffle --fewshot: its probe scored the call's split
            return {"split": same_call, "shots_split": "train"}
        shots = row["metric"].removeprefix("fewshot")
        for f in self.few:  # the probe whose value this row holds
            if (f["run_id"] == row["run_id"] and str(f["shots"]) == shots
                    and f["dataset"] == row["dataset"] and _same(f["top1_mean"], row["top1"])):
                probe = {k: v for k, v in {**f, **self._probe(f, None)}.items() if k in _PROBE}
                return {k: v for k, v in probe.items()
                        if k in results.SCHEMAS[table] and v not in ("", None)}
        return {}

    def _probe(self, row: dict, same_call: str | None) -> dict:
        if row.get("split"):
            return {}
        if same_call:
            return {"split": same_call, "shots_split": "train"}
        run = self.trained.get(row["run_id"]) if row["run_id"] else None
        if run is None or run["dataset"] != row["dataset"]:
            return {}  # not the sweeps' probe of its own run: nothing says which images
        out = {"split": str(run["split"]).split("[", 1)[0], "shots_split": "train"}
        pipeline = self._pipeline(row["run_id"])
        return dict(out, pipeline=pipeline) if pipeline else out

    def _pipeline(self, run: str) -> str:
        """The eval crop of `run` from its config.json ("" when its folder is gone, or its
        config.json is another run's: today's run id of it is not `run`)."""
        from mixerbench.config import read_run_config, run_id

        if run not in self._pipelines:
            folder = self.root / "runs" / run
            cfg = read_run_config(folder) if RUN_NAME.fullmatch(run) and \
                folder.is_dir() else None
            mine = cfg is not None and run_id(cfg) == run
            self._pipelines[run] = cfg.data.eval_pipeline if mine else ""
        return self._pipelines[run]


def _same(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def recipe_of_run(root: Path, run: str, dtype: str | None = None) -> str | None:
    """The recipe id of the finished run `run` under `root`, from its config.json, or None when
    the folder is gone, holds no config.json, names another run, or never finished. `dtype`:
    the precision its training row records, for a run without summary.json."""
    from mixerbench.config import read_run_config, recipe_id, run_id

    if not RUN_NAME.fullmatch(run):
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
