"""Experiment trackers (TensorBoard, Weights & Biases, MLflow): views of what the CSVs hold.

The results CSVs and run directories stay the record; a tracker only shows the same numbers in
its own tool. So a tracker never decides the fate of a run: every call into a tracker library
is guarded, and a tool that fails is switched off for the rest of that tracker run with one
warning (through `on_warning`), while training goes on and every CSV row is written.

Each tool is used through its own library, imported only when asked for (`pip install
"mixerbench[trackers]"`), and writes only under the results folder unless the user points it
elsewhere:
- tensorboard: `torch.utils.tensorboard.SummaryWriter`, event files in `<run_dir>/tb/` for a
  training run, `<results>/tb/<name>-<time>/` for evaluate, compare and plot.
- wandb: offline unless `WANDB_MODE` is set; then runs, cache, config and logs all go under
  `<results>/wandb/` (`wandb sync <results>/wandb/offline-run-*` uploads them later).
- mlflow: `MLFLOW_TRACKING_URI` if set, else a SQLite store `<results>/mlflow/mlflow.db` with
  artifacts in `<results>/mlflow/artifacts/` (MLflow 3 refuses a bare `file:` store unless
  told to, and points it at SQLite instead).

What goes in (one tracker run per training run, named by its run id): the RunConfig as
hyper-parameters (`model.width` keys), each metrics.csv row at its step in the groups tracker
users expect (`train/loss`, `train/lr`, `train/img_per_sec`; `test/top1`, `test/loss` when the
run evaluates on test, `val/...` on a held-out split: `grouped`), the final summary (the
accuracy.csv row: numbers as `summary/<key>` in TensorBoard and MLflow, W&B's run summary;
text as tags), and the figures (PNG) and tables of
`compare` and `plot`. `Tracked` is the one way trackers are fed: it follows the `log(event,
info)` events of training, `evaluate`, `compare` and `plot`, so none of them knows of trackers. A resumed run continues its TensorBoard folder (steps after
the checkpoint are purged, as metrics.csv drops them) and its MLflow run; W&B offline runs
cannot be resumed, so it gets a new one of the same name. A finished run read back is not
logged again. Under torchrun only rank 0 logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mixerbench.errors import UserError, close_matches
from mixerbench.names import slug
from mixerbench.runtime import reachable

TRACKERS = ("tensorboard", "wandb", "mlflow")
# A tracker server (W&B, an MLflow URI) is probed before a run opens on it: one that does not
# answer within seconds switches the tracker off with one warning instead of minutes of retries.
SERVER_PROBE_SECONDS = 3.0
SERVER_TIMEOUT_SECONDS = 10
INSTALL = 'pip install "mixerbench[trackers]"'
Warn = Callable[[str], None]


# ------------------------------------------------------------------------ names and packages


def _modules(name: str) -> tuple[str, ...]:
    """The modules tracker `name` imports. MLflow's own local store is SQLite, which it reaches
    through SQLAlchemy and Alembic (not part of mlflow-skinny); a server URI needs neither."""
    if name == "tensorboard":
        return ("tensorboard", "torch.utils.tensorboard")
    if name == "wandb":
        return ("wandb",)
    return ("mlflow",) if os.environ.get("MLFLOW_TRACKING_URI") else ("mlflow", "sqlalchemy",
                                                                       "alembic")


def parse_trackers(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """`"tensorboard,wandb"` -> ("tensorboard", "wandb"), each known and importable; checked
    before any work starts, so a missing package costs nothing but this one error."""
    import importlib

    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"Unknown tracker '{name}'; choose any of {', '.join(TRACKERS)}, "
                            f"comma-separated.{close_matches(name, TRACKERS)}")
    for name in names:
        for module in _modules(name):
            try:
                importlib.import_module(module)
            except ImportError:
                raise UserError(f"--tracker {name} needs the {module.split('.')[0]} package, "
                                f"which is not installed here; {INSTALL}.") from None
    return names


# ---------------------------------------------------------------------------- value shaping


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"model": {"width": 16}} -> {"model.width": 16}: the keys `--set` takes."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def numbers(d: Mapping) -> dict[str, float]:
    """The finite numeric entries (blank cells, NaN and text left out)."""
    return {k: float(v) for k, v in d.items() if _number(v)}


def _scalar(v: Any) -> int | float | str | bool:
    """A hyper-parameter value every tool accepts: numbers and booleans as they are, the rest
    (None, tuples, empty dicts) as text."""
    return v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)


def evaluation_metrics(res: Mapping) -> dict[str, float]:
    """The numbers of one `evaluate` result: accuracy and ReaL under the split's group
    (`test/top1`, `test/real_top1`; `grouped`), few-shot per shot count and shuffle per
    (train, eval, metric)."""
    out = grouped({k: res[k] for k in ("top1", "top5", "loss") if _number(res.get(k))},
                  res.get("split"))
    real = res.get("real") or {}
    group = split_group(res.get("split"))
    out.update({f"{group}/real_{k}": real[k] for k in ("top1", "top5") if _number(real.get(k))})
    for r in res.get("fewshot") or []:
        out[f"fewshot/{r['shots']}shot_top1_mean"] = r.get("top1_mean")
        out[f"fewshot/{r['shots']}shot_top1_std"] = r.get("top1_std")
    for r in res.get("shuffle") or []:
        out[f"shuffle/train_{r['train_shuffle']}/eval_{r['eval_shuffle']}/{r['metric']}"] = r.get("top1")
    return numbers(out)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


@contextmanager
def _environ(values: Mapping[str, str]):
    """Set environment variables for a while, then restore them as they were."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _quiet_loggers(*names: str):
    """Libraries that announce their set-up on stderr (MLflow creating its database) stay
    quiet: the CLI alone talks to the terminal."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# -------------------------------------------------------------------------------- backends


class _TensorBoard:
    name = "tensorboard"

    def __init__(self, root: Path, run: str, *, log_dir: Path, resume_step: int, **_):
        from torch.utils.tensorboard import SummaryWriter

        from mixerbench.files import make_dirs

        make_dirs(log_dir)  # a real folder inside the results folder, never a planted link
        # purge_step: TensorBoard hides what an interrupted run logged after the checkpoint it
        # resumes from, as metrics.csv drops those rows (they are logged again)
        self.w = SummaryWriter(log_dir=str(log_dir), purge_step=resume_step or None)
        self.hparams = None
        self.where = str(log_dir)

    def config(self, config: Mapping) -> None:
        from torch.utils.tensorboard.summary import hparams

        flat = flatten(config)
        hp = {k: _scalar(v) for k, v in flat.items()}
        # the hparams dashboard lists these metrics beside each run's hyper-parameters
        group = split_group((config.get("data") or {}).get("eval_split"))
        exp, ssi, self.hparams = hparams(hp, {f"{group}/{k}": 0.0 for k in ("top1", "top5", "loss")})
        self.w.file_writer.add_summary(exp)
        self.w.file_writer.add_summary(ssi)
        self.w.add_text("config", "```\n" + json.dumps(flat, indent=1, default=str) + "\n```")
        self.w.flush()

    def metrics(self, step: int, values: dict) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)
        self.w.flush()  # a live TensorBoard shows each evaluation as it happens

    def summary(self, step: int, values: dict, text: dict) -> None:
        for k, v in values.items():
            self.w.add_scalar(k if "/" in k else f"summary/{k}", v, step)
        rows = "\n".join(f"| {k} | {v} |" for k, v in {**text, **values}.items())
        self.w.add_text("summary", "| key | value |\n| --- | --- |\n" + rows, step)

    def files(self, paths: list[Path]) -> None:
        import numpy as np
        from PIL import Image

        for p in paths:
            if p.suffix == ".png":
                with Image.open(p) as im:
                    self.w.add_image(f"figures/{p.stem}", np.asarray(im.convert("RGB")),
                                     dataformats="HWC")
            elif p.suffix == ".md":
                self.w.add_text(f"tables/{p.stem}", p.read_text())

    def close(self, status: str) -> None:
        if status == "finished" and self.hparams is not None:
            self.w.file_writer.add_summary(self.hparams)  # the hparams session ends: success
        self.w.close()


class _WandB:
    name = "wandb"

    def __init__(self, root: Path, run: str, *, group: str | None, kind: str, **_):
        import wandb

        self.env: dict[str, str] = {}
        if "WANDB_MODE" not in os.environ:
            # offline by default, and every file wandb makes (cache, settings, core logs,
            # staged media) under the results folder instead of ~/.cache and ~/.config
            base = (root / "wandb").absolute()
            self.env = {"WANDB_MODE": "offline", "WANDB_CACHE_DIR": str(base / "cache"),
                        "WANDB_CONFIG_DIR": str(base / "config"),
                        "WANDB_DATA_DIR": str(base / "data"),
                        "WANDB_ARTIFACT_DIR": str(base / "artifacts")}
        mode = (self.env.get("WANDB_MODE") or os.environ.get("WANDB_MODE", "")).strip().lower()
        online = mode not in ("offline", "disabled", "dryrun")
        if online:  # wandb.init waits 90 s for a server it cannot reach; probe it for seconds
            server = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
            if not reachable(server, SERVER_PROBE_SECONDS):
                raise ConnectionError(f"{server} is not reachable within {SERVER_PROBE_SECONDS:g} s "
                                      "(WANDB_MODE=offline logs locally)")
        from mixerbench.files import make_dirs

        make_dirs(root / "wandb")  # wandb.init(dir=root) writes there: never through a link
        self.restore = _environ(self.env)
        self.restore.__enter__()  # held until close: wandb reads them while the run lives
        try:
            self.run = wandb.init(
                dir=str(root), project=os.environ.get("WANDB_PROJECT", "mixerbench"), name=run,
                group=group, job_type=kind,
                settings=wandb.Settings(silent=True, console="off",  # the CLI owns the terminal
                                        init_timeout=SERVER_TIMEOUT_SECONDS))
        except BaseException:
            self.restore.__exit__(None, None, None)
            raise
        self.where = str(Path(self.run.dir).parent) if getattr(self.run, "dir", None) else str(root / "wandb")

    def config(self, config: Mapping) -> None:
        # nested, as W&B expects: it shows and filters `model.width` itself
        self.run.config.update(dict(config), allow_val_change=True)

    def metrics(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def summary(self, step: int, values: dict, text: dict) -> None:
        self.run.summary.update({**text, **values})

    def files(self, paths: list[Path]) -> None:
        import wandb

        media = {}
        for p in paths:
            if p.suffix == ".png":
                media[f"figures/{p.stem}"] = wandb.Image(str(p))
            elif p.suffix == ".csv":
                import pandas as pd

                media[f"tables/{p.stem}"] = wandb.Table(dataframe=pd.read_csv(p))
        if media:
            self.run.log(media)

    def close(self, status: str) -> None:
        try:
            self.run.finish(exit_code=0 if status == "finished" else 1)
        finally:
            self.restore.__exit__(None, None, None)


class _MLflow:
    name = "mlflow"
    TAG = "mixerbench.run_id"

    def __init__(self, root: Path, run: str, *, group: str | None, kind: str,
                 resume_step: int, **_):
        from mlflow.tracking import MlflowClient

        experiment = group or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "mixerbench"
        uri = artifacts = None
        server = os.environ.get("MLFLOW_TRACKING_URI", "")
        if server.lower().startswith(("http://", "https://")):
            # the client retries an unreachable server for minutes (7 retries, 120 s timeouts);
            # probe it, and bound every later request to seconds, without a retry storm
            if not reachable(server, SERVER_PROBE_SECONDS):
                raise ConnectionError(f"{server} is not reachable within {SERVER_PROBE_SECONDS:g} s")
            for key, value in (("MLFLOW_HTTP_REQUEST_TIMEOUT", str(SERVER_TIMEOUT_SECONDS)),
                               ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")):
                os.environ.setdefault(key, value)
        if not server:
            from mixerbench.files import make_dirs

            base = make_dirs((root / "mlflow").absolute())  # never through a planted link
            uri = f"sqlite:///{base / 'mlflow.db'}"
            # without it MLflow puts artifacts in ./mlartifacts, outside the results folder
            artifacts = (base / "artifacts" / slug(experiment)).as_uri()
        with _quiet_loggers("mlflow", "alembic"):
            self.client = MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                try:
                    exp_id = self.client.create_experiment(experiment, artifact_location=artifacts)
                except Exception:  # another process created it meanwhile
                    exp_id = self.client.get_experiment_by_name(experiment).experiment_id
            else:
                exp_id = exp.experiment_id
        found = []
        if resume_step:  # an interrupted run continues in its own MLflow run
            found = self.client.search_runs(
                [exp_id], filter_string=f"tags.`{self.TAG}` = '{run}' and "
                                        "attributes.status != 'FINISHED'",
                order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(
                exp_id, run_name=run, tags={self.TAG: run, "mixerbench.kind": kind}).info.run_id
        store = server or str((root / "mlflow" / "mlflow.db").absolute())
        self.where = f"{store} (experiment {experiment}, run {self.run_id})"

    def config(self, config: Mapping) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(_scalar(v))[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def metrics(self, step: int, values: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step)
                                                    for k, v in values.items()])

    def summary(self, step: int, values: dict, text: dict) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k if "/" in k else f"summary/{k}", v, now, step)
                                  for k, v in values.items()],
            tags=[RunTag(f"mixerbench.{k}", str(v)[:5000]) for k, v in text.items()])
        self.client.log_dict(self.run_id, {**text, **values}, "summary.json")

    def files(self, paths: list[Path]) -> None:
        for p in paths:
            self.client.log_artifact(self.run_id, str(p), p.parent.name)  # figures/ or tables/

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status.upper())


BACKENDS = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}


# --------------------------------------------------------------------------- one tracker run


class Trackers:
    """One tracker run, in each requested tool. Every method is safe to call: a tool that fails
    is closed and dropped with one warning; the others (and the caller) go on."""

    def __init__(self, name: str, on_warning: Warn | None = None):
        self.name = name
        self.backends: list = []
        self.warnings: list[str] = []
        self.on_warning = on_warning
        self.step = 0
        self.closed: list = []  # the tools that closed cleanly: each has `where` it wrote

    def _warn(self, tool: str, what: str, exc: BaseException) -> None:
        message = (f"{tool} tracking of {self.name} stopped ({what} failed: {_one_line(exc)}); "
                   "the CSVs and the run go on.")
        self.warnings.append(message)
        if self.on_warning:
            self.on_warning(message)

    def _each(self, method: str, *args) -> None:
        for b in list(self.backends):
            try:
                getattr(b, method)(*args)
            except Exception as exc:
                self.backends.remove(b)
                self._warn(b.name, method, exc)
                try:
                    b.close("failed")
                except Exception:
                    pass

    def log_config(self, config: Mapping) -> None:
        """The hyper-parameters (the RunConfig as `to_dict` gives it); tools that keep flat
        parameters get `model.width` keys, the keys `--set` takes."""
        self._each("config", config)

    def log_metrics(self, step: int, row: Mapping) -> None:
        """One evaluation: the finite numbers of a metrics.csv row (its `step` is the x axis)."""
        self.step = max(self.step, int(step))
        values = numbers({k: v for k, v in row.items() if k != "step"})
        if values:
            self._each("metrics", int(step), values)

    def log_summary(self, summary: Mapping, step: int | None = None) -> None:
        """The final numbers (as `summary/<key>` where the tool keeps histories) and the text
        fields (model, dataset, provenance) as tags."""
        skip = {"run_dir", "reused"}
        values = numbers({k: v for k, v in summary.items() if k not in skip})
        text = {k: str(v) for k, v in summary.items()
                if k not in skip and k not in values and v is not None and v != ""
                and not isinstance(v, (list, dict))}
        self._each("summary", self.step if step is None else int(step), values, text)

    def log_figures(self, paths: Iterable[str | os.PathLike]) -> None:
        """Figures (PNG: images) and tables (CSV or markdown: tables, text, artifacts)."""
        paths = [Path(p) for p in paths if Path(p).is_file()]
        if paths:
            self._each("files", paths)

    def close(self, status: str = "finished") -> None:
        """End the tracker run: `finished`, `failed` or `killed` (interrupted)."""
        self._each("close", status)
        self.closed, self.backends = self.backends, []


def open_trackers(names: Iterable[str], root: str | os.PathLike, name: str, *,
                  group: str | None = None, kind: str = "train",
                  tb_dir: str | os.PathLike | None = None, resume_step: int = 0,
                  on_warning: Warn | None = None) -> Trackers:
    """Start one tracker run called `name` in each tool of `names` (from `parse_trackers`).

    Args:
        root: the results folder; every default location is under it.
        group: runs that belong together (a `compare`): W&B group, MLflow experiment name.
        kind: what the run is (pretrain, finetune, evaluate, compare, plot).
        tb_dir: TensorBoard folder (default `<root>/tb/<name>-<time>`); a training run's is
            `<run_dir>/tb`.
        resume_step: the step an interrupted run continues from (0: a fresh start).

    Under torchrun, ranks other than 0 get a tracker run with no tools: one process logs.
    """
    from mixerbench.runtime import rank

    t = Trackers(name, on_warning)
    if rank() != 0:
        return t
    root = Path(root)
    log_dir = Path(tb_dir) if tb_dir else root / "tb" / f"{slug(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    for tool in names:
        try:
            t.backends.append(BACKENDS[tool](root, name, group=group, kind=kind, log_dir=log_dir,
                                             resume_step=resume_step))
        except Exception as exc:
            t._warn(tool, "opening it", exc)
    return t


def record(names: Iterable[str], root: str | os.PathLike, name: str, *,
           config: Mapping | None = None, summary: Mapping | None = None,
           files: Iterable[str | os.PathLike] = (), group: str | None = None, kind: str,
           step: int = 0, on_warning: Warn | None = None) -> Trackers:
    """A whole tracker run at once, for what is not a training run (an evaluation, the
    figures of compare and plot); returns it, closed (its `where` says where each tool wrote)."""
    t = open_trackers(tuple(names), root, name, group=group, kind=kind, on_warning=on_warning)
    t.step = step
    if config:
        t.log_config(config)
    if summary:
        t.log_summary(summary)
    t.log_figures(files)
    t.close()
    return t


def split_group(split: str | None) -> str:
    """The metric group of an evaluation split: `test` for a test split (what the paper
    reports), `val` for anything held out of train to choose with (minival, validation)."""
    base = str(split or "test").split("[")[0].removesuffix("-real")
    return "test" if base == "test" else "val"


# metrics.csv columns and summary keys -> their name under the split's group or `train/`
_EVAL_KEYS = {"top1": "top1", "top5": "top5", "eval_loss": "loss", "loss": "loss"}
_TRAIN_KEYS = {"train_loss": "loss", "lr": "lr", "img_per_sec": "img_per_sec",
               "epoch": "epoch", "elapsed_s": "elapsed_s"}


def grouped(values: Mapping[str, float], split: str | None) -> dict[str, float]:
    """Metric names as tracker users expect them: `train/loss`, `train/lr`, ...,
    `test/top1` (or `val/top1` on a held-out split); other names are kept."""
    group = split_group(split)
    out = {}
    for k, v in values.items():
        if k in _EVAL_KEYS:
            out[f"{group}/{_EVAL_KEYS[k]}"] = v
        elif k in _TRAIN_KEYS:
            out[f"train/{_TRAIN_KEYS[k]}"] = v
        else:
            out[k] = v
    return out


class Event:
    """The progress events trackers emit as `log(event, info)`; `view.ProgressView` renders
    them."""

    WARNING = "warning"  # a tracker stopped recording; the command goes on: message
    WROTE = "tracked"    # a tracker run ended: tool, name, where (a folder, a store and run)


class Tracked:
    """A `log(event, info)` callback that also feeds the trackers: the one way trackers are fed.
    Every event goes on to `log` (the progress display) unchanged, and the events trackers
    record become tracker runs: each training run's start (config), evaluations (the
    metrics.csv rows) and end (the summary) as a run named by its run id; `evaluate`'s result,
    a comparison (with the figures `plot` draws of its runs) and `plot`'s files as one run each.

    A run read back because it had finished is not logged again: it was recorded when it was
    trained. `close(status)` ends a run cut short (interrupt, error). When a tracker run ends,
    `Event.WROTE` says where each tool wrote it.
    """

    def __init__(self, log: Callable[[str, dict], None], names: Iterable[str], *,
                 group: str | None = None):
        self.log, self.names, self.group = log, tuple(names), group
        self.current: Trackers | None = None
        self.split: str | None = None

    def _warning(self, message: str) -> None:
        self.log(Event.WARNING, dict(message=message))

    def _wrote(self, t: Trackers) -> None:
        for b in t.closed:
            self.log(Event.WROTE, dict(tool=b.name, name=t.name, where=b.where))

    def __call__(self, event: str, info: dict) -> None:
        self.log(event, info)
        if self.names:
            handler = self._handlers().get(event)
            if handler is not None:
                handler(info)

    def _handlers(self) -> dict:
        from mixerbench.evaluate import Event as EvaluateEvent
        from mixerbench.experiments import Event as ExperimentEvent
        from mixerbench.report import Event as ReportEvent
        from mixerbench.train import Event as TrainEvent

        return {TrainEvent.START: self._start, TrainEvent.EVAL: self._eval,
                TrainEvent.END: self._end, EvaluateEvent.EVALUATED: self._evaluated,
                ExperimentEvent.COMPARED: self._compared, ReportEvent.DRAWN: self._drawn}

    def _start(self, info: dict) -> None:
        self.close("killed")  # a run that never reached its end event
        run_dir = Path(info["run_dir"])
        config = info.get("config") or {}
        self.split = (config.get("data") or {}).get("eval_split")
        self.current = open_trackers(
            self.names, run_dir.parent.parent, run_dir.name, group=self.group,
            kind=config.get("kind") or "train", tb_dir=run_dir / "tb",
            resume_step=int(info.get("step") or 0), on_warning=self._warning)
        self.current.step = int(info.get("step") or 0)
        self.current.log_config(config)

    def _eval(self, info: dict) -> None:
        if self.current is not None:
            self.current.log_metrics(info["step"], grouped(info, self.split))

    def _end(self, info: dict) -> None:
        if self.current is not None:
            self.current.log_summary(info, step=info.get("steps"))
            self.close("finished")

    def _evaluated(self, info: dict) -> None:
        res, options = info["result"], info["options"]
        if info.get("root") is None:
            return  # an evaluation that records nothing (a sweep's probe) is not a tracker run
        run_id = next((r["run_id"] for rows in res["rows"].values() for r in rows
                       if r.get("run_id")), None)
        source = run_id or Path(str(options.get("checkpoint"))).name
        summary = dict(model=res["model"], dataset=res["dataset"], split=res["split"],
                       img_size=res["img_size"], pipeline=res["pipeline"],
                       **evaluation_metrics(res))
        self._wrote(record(self.names, info["root"],
                           f"evaluate-{slug(source)}-{slug(res['dataset'])}", kind="evaluate",
                           config=options, summary=summary, on_warning=self._warning))

    def _compared(self, info: dict) -> None:
        """The comparison's own tracker run, grouped with its training runs as accuracy.csv
        tags them: its settings, its tables and the figures `plot` draws of these runs."""
        from mixerbench.report import regenerate

        drawn = regenerate(info["root"], None, None, runs=info["runs"])
        written = list(dict.fromkeys([*info["written"], *drawn["written"]]))
        self._wrote(record(self.names, info["root"], info["group"], group=info["group"],
                           kind="compare", files=written, config=info["config"],
                           on_warning=self._warning))

    def _drawn(self, info: dict) -> None:
        self._wrote(record(self.names, info["root"], "plot", kind="plot", files=info["written"],
                           config=info["config"], on_warning=self._warning))

    def close(self, status: str = "finished") -> None:
        if self.current is not None:
            current, self.current = self.current, None
            current.close(status)
            if status == "finished":
                self._wrote(current)
