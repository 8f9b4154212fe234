"""The one training loop, for pre-training and fine-tuning alike (they differ only by config).

`train(cfg)` reads top to bottom, nanoGPT style: `prepare.prepare` checks everything and builds
the data, model and schedule (nothing is written before it has succeeded); `rundir.write_config`
makes the run directory this config's own; `restore` picks up the last checkpoint; then the
loop (`train_step`, evaluation, checkpoint on schedule) and `write_results` (summary and
accuracy row). Recipes are in `presets.py`, with the paper's settings cited there (paper
section 3, Table 4); what the run folder holds and who owns it is `rundir.py`.

Guarantees the tests hold us to:
- Batches depend only on (seed, epoch, index) (`mixerbench.data`), and RNG state is saved with
  the weights, optimizer, scheduler, step and timers, so a resumed CPU run ends with bitwise
  the same weights as an uninterrupted one.
- Ctrl-C / SIGTERM finish the current step, save, and raise `Interrupted` (the CLI says how to
  resume). A non-finite loss raises `TrainingStopped` before the bad update is saved; no row is
  written from non-finite weights or metrics.
"""

from __future__ import annotations

import errno
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixerbench import files, results, rundir
from mixerbench.config import RunConfig, recipe_id, run_binding, run_id, to_dict
from mixerbench.errors import UserError
from mixerbench.events import Log
from mixerbench.optim import make_optimizer, make_scheduler
from mixerbench.prepare import Run, check_model, prepare
from mixerbench.runtime import COMPILE_PROBE_STEPS, compile_pays, stop_signals


class Event:
    """The progress events `train` emits as `log(event, info)`; `view.ProgressView` renders
    them and `trackers.Tracked` records start, eval and end."""

    STAGE = "stage"        # a phase without steps began: what (loading data, final evaluation)
    RESUMED = "resumed"    # an unfinished run continues: step, run_dir
    RESTARTED = "restarted"  # a run without training state starts again at 0: run_dir, dropped
    START = "start"        # the loop starts: run_dir, total_steps, step, model, dataset, img_size, pipeline, ...
    STEP = "step"          # an optimizer step: step, total_steps, epoch, loss, lr, img_per_sec
    EVAL = "eval"          # an evaluation: the metrics.csv row (step, top1, top5, eval_loss)
    END = "end"            # the run finished: its summary, run_dir
    FINISHED = "finished"  # an already finished run was read back: its summary, run_dir


class TrainingStopped(RuntimeError):
    """The run cannot go on (non-finite loss, disk full); the last checkpoint is intact."""


class Interrupted(RuntimeError):
    """Ctrl-C or SIGTERM: a checkpoint was saved at `step`; the same command resumes."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"interrupted at step {step}")
        self.run_dir, self.step = run_dir, step


@dataclass
class TrainState:
    """What a checkpoint restores besides weights, optimizer and RNG."""

    step: int = 0
    train_seconds: float = 0.0
    data_seconds: float = 0.0  # waiting for the next batch, between steps (not in train_seconds)
    loss_sum: float = 0.0
    loss_count: int = 0
    checkpoint_sha256: str | None = None  # of the last checkpoint written (summary.json records it)
    pending: list = field(default_factory=list)  # per-step loss tensors not yet checked


# ------------------------------------------------------------------- checkpoints and restore


def restore(run: Run, optimizer, scheduler, log: Log) -> TrainState:
    """The state of the last checkpoint (`rundir.read_state` refuses a file we did not write),
    or a fresh start: a run with no training state (killed before its first checkpoint, or
    its state file lost) starts again from step 0 without the metric rows of the earlier
    attempt, so none is written twice, and the user is told."""
    import torch

    from mixerbench.models.weights import unwrap

    if not rundir.has_state(run.run_dir):
        if run.world > 1:
            torch.manual_seed(run.cfg.seed + run.rank)  # per-rank stochastic depth draws
        dropped = rundir.clear_metrics(run.run_dir) if run.rank == 0 else 0
        if dropped:
            log(Event.RESTARTED, dict(run_dir=str(run.run_dir), dropped=dropped))
        return TrainState()
    state = rundir.read_state(run.run_dir, _binding(run), run.total)
    try:
        unwrap(run.model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        rng = rngs[run.rank] if run.rank < len(rngs) else rngs[0]
        torch.set_rng_state(rng["cpu"])
        if run.on_cuda and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], run.device)
    except Exception as exc:  # a foreign or damaged state fails here, before any step
        raise rundir.not_a_state(run.run_dir, type(exc).__name__) from None
    progress = TrainState(**{k: state[k] for k in ("step", "train_seconds", "loss_sum",
                                                   "loss_count", "checkpoint_sha256")})
    progress.data_seconds = float(state.get("data_seconds", 0.0))  # absent before 0.2
    if not (math.isfinite(progress.data_seconds) and progress.data_seconds >= 0):
        raise rundir.not_a_state(run.run_dir, f"data_seconds {progress.data_seconds}")
    if run.rank == 0:
        rundir.truncate_metrics(run.run_dir, progress.step)
    log(Event.RESUMED, dict(step=progress.step, run_dir=str(run.run_dir)))
    return progress


def _binding(run: Run) -> dict:
    return run_binding(run.run_dir.name, run.cfg)


def save_state(run: Run, optimizer, scheduler, p: TrainState) -> None:
    """Everything needed to resume (weights, optimizer, scheduler, every rank's RNG, step,
    timers), then the weights-only export (`rundir.write_state`)."""
    import torch
    import torch.distributed as dist

    from mixerbench.models.weights import unwrap

    rngs = [dict(cpu=torch.get_rng_state(),
                 cuda=torch.cuda.get_rng_state(run.device) if run.on_cuda else None)]
    if run.world > 1:
        gathered = [None] * run.world
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if run.rank != 0:
        return
    state = dict(model=unwrap(run.model).state_dict(), optimizer=optimizer.state_dict(),
                 scheduler=scheduler.state_dict(), step=p.step, train_seconds=p.train_seconds,
                 data_seconds=p.data_seconds, loss_sum=p.loss_sum, loss_count=p.loss_count, rng=rngs)
    try:
        p.checkpoint_sha256 = rundir.write_state(run.run_dir, state, run.model, run.rec,
                                                 _binding(run), previous=p.checkpoint_sha256)
    except OSError as exc:
        raise TrainingStopped(
            f"Could not write the checkpoint to {run.run_dir} ({exc.strerror or exc}); the "
            "previous checkpoint is intact: free space and run the same command to resume."
        ) from None


# ------------------------------------------------------------------------- one step, checks


def train_step(run: Run, train_model, x, y):
    """Forward and backward over `accum_steps` micro-batches (gradients synchronised across
    processes on the last one) and the global-norm clip; returns the step's loss on device."""
    import torch

    from mixerbench.loss import cross_entropy
    from mixerbench.runtime import autocast

    cfg = run.cfg
    loss_sum = torch.zeros((), device=run.device)
    try:
        for i, (mx, my) in enumerate(zip(x.chunk(cfg.accum_steps), y.chunk(cfg.accum_steps))):
            sync = i == cfg.accum_steps - 1 or run.world == 1
            with nullcontext() if sync else train_model.no_sync():
                with autocast(run.device, run.dtype):
                    logits = train_model(mx)
                loss = cross_entropy(logits, my) / cfg.accum_steps
                loss.backward()
            loss_sum += loss.detach()
    except torch.cuda.OutOfMemoryError:
        raise UserError(
            f"Out of GPU memory at {len(x) // cfg.accum_steps} images per device; try "
            f"--accum-steps {cfg.accum_steps * 2} or a smaller --batch-size.") from None
    if cfg.optim.clip_norm:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.optim.clip_norm)
    return loss_sum


def check_losses(run: Run, p: TrainState, at_step: int) -> list[float]:
    """Fold the pending per-step losses (averaged over processes) into the running mean; a
    non-finite one stops the run before anything is saved."""
    import torch
    import torch.distributed as dist

    values = torch.stack(p.pending)
    if run.world > 1:
        dist.all_reduce(values, op=dist.ReduceOp.AVG)
    values = values.tolist()
    p.pending.clear()
    if not all(math.isfinite(v) for v in values):
        raise TrainingStopped(
            f"The loss became {values[-1]} near step {at_step}; the run stopped and its last "
            f"good checkpoint in {run.run_dir} is intact. Lower --lr or raise warm-up, then run "
            "the same command to resume.")
    p.loss_sum += sum(values)
    p.loss_count += len(values)
    return values


def evaluate_now(run: Run) -> dict:
    """Top-1/top-5/loss on the eval split: all of it, or its stratified `max_eval_examples`."""
    from mixerbench.evaluate import accuracy
    from mixerbench.models.weights import unwrap

    return accuracy(unwrap(run.model), run.eval_batches.epoch(0), device=run.device, dtype=run.dtype)


def eval_split(run: Run) -> str:
    """The split the accuracy row names: `test`, or `test[stratified:N]` when only a stratified
    N of its images were used (`data.stratified_subset`)."""
    from mixerbench.data import capped_split

    n = run.cfg.max_eval_examples
    return capped_split(run.cfg.data.eval_split, n) if n and n < run.eval_size else run.cfg.data.eval_split


def metrics_row(run: Run, p: TrainState, ev: dict, lr: float) -> dict:
    return dict(step=p.step, epoch=round(p.step / run.steps_per_epoch, 4),
                train_loss=p.loss_sum / max(p.loss_count, 1), eval_loss=ev.get("loss"),
                top1=ev.get("top1"), top5=ev.get("top5"), lr=lr,
                img_per_sec=p.step * run.cfg.data.batch_size / max(p.train_seconds, 1e-9),
                elapsed_s=round(p.train_seconds, 3))


def write_results(run: Run, p: TrainState, experiment: str) -> dict:
    """The summary (summary.json) and its accuracy row, from the final evaluation; nothing is
    written from non-finite weights or metrics."""
    import torch

    from mixerbench.models import get_spec, label_of
    from mixerbench.models.weights import unwrap

    last = rundir.last_metrics(run.run_dir)
    weights_ok = all(torch.isfinite(t).all() for t in unwrap(run.model).state_dict().values()
                     if t.is_floating_point())
    if not weights_ok or not all(rundir.finite(last.get(k)) for k in ("top1", "top5", "eval_loss")):
        raise TrainingStopped(f"The run in {run.run_dir} ended with non-finite weights or "
                              "metrics; no result was recorded. Lower --lr, then start it again.")
    cfg = run.cfg
    prov = results.provenance(device=run.device, num_devices=run.world, dtype=run.dtype,
                              compiled=run.compiled, seed=cfg.seed)
    images = run.total * cfg.data.batch_size
    summary = dict(
        run_id=run.run_dir.name, recipe_id=recipe_id(cfg, run.dtype),
        model=label_of(run.rec),
        family=get_spec(run.rec["name"]).family,
        dataset=cfg.data.dataset, split=eval_split(run), pipeline=cfg.data.eval_pipeline,
        img_size=run.rec["img_size"], epochs=round(images / run.train_size, 4), steps=run.total,
        top1=last["top1"], top5=last["top5"], loss=last["eval_loss"],
        train_seconds=round(p.train_seconds, 3),
        # the share of the loop's time spent waiting for batches (input-bound when large)
        data_wait_fraction=round(p.data_seconds / max(p.data_seconds + p.train_seconds, 1e-9), 4),
        device_hours=round(p.train_seconds * run.world / 3600, 6),
        # forward + backward = 3 forward passes' FLOPs (2 FLOPs per MAC) per image seen
        train_flops=float(6 * run.macs_per_img * images), checkpoint_sha256=p.checkpoint_sha256,
        init=cfg.init or "", kind=cfg.kind, experiment=experiment, **prov)
    rundir.write_summary(run.run_dir, run.root, summary)
    return summary


# -------------------------------------------------------------------------------------- train


def train(cfg: RunConfig, root: str | os.PathLike | None = None, *, resume: bool = False,
          log: Log | None = None, experiment: str = "") -> dict[str, Any]:
    """Train (or fine-tune) per `cfg` (as `presets.run_config` made it: its inputs, a dataset
    path and the `--init` weights' hash, are part of it); return the summary (the accuracy row
    plus `run_dir`).

    A finished run is read back, not retrained (unless `resume`, which is then an error); an
    unfinished one continues from its last checkpoint. `experiment` tags the accuracy row
    (`compare:<preset>`, `shuffle`, ...) so tables and figures can tell experiments apart; it is
    not part of the configuration, so the same run serves any experiment that asks for it.
    Under torchrun every rank returns the same summary.
    """
    log = log or (lambda event, info: None)
    if cfg.device:  # a mistyped device is refused before a finished run is read back
        from mixerbench.runtime import resolve_device

        resolve_device(cfg.device)
    check = check_model(cfg)  # options, memory and MACs on the meta device, before any data
    root = results.writable_results_dir(root)
    run_dir = results.run_path(root, run_id(cfg))
    rundir.check_owner(run_dir, cfg)
    if rundir.read_summary(run_dir) is not None:  # finished: read back, never retrained
        return _read_back(run_dir, root, resume, log, experiment)
    if resume and not rundir.has_state(run_dir):
        raise UserError(f"Nothing to resume in {run_dir}: it has no checkpoint yet; run the "
                        "command without --resume.")
    results.ensure_appendable("accuracy", root)  # a damaged accuracy.csv is found before hours of work
    run = prepare(cfg, root, run_dir, lambda what: log(Event.STAGE, dict(what=what)), check)
    created = not run_dir.exists()
    try:
        # one process trains a run at a time; a second waits, then finds it finished
        with files.locked(run_dir / rundir.RUN_LOCK) if run.rank == 0 else nullcontext():
            rundir.check_owner(run_dir, cfg)  # another process may have claimed it while we waited
            # rank 0 alone holds the lock, so its finding decides for every rank: a rank that
            # trained while rank 0 read back would wait in a collective forever
            if _from_rank0(run, rundir.read_summary(run_dir) is not None):
                return _read_back(run_dir, root, resume, log, experiment)
            if run.rank == 0:
                rundir.write_config(run_dir, cfg)
            optimizer = make_optimizer(run.model, cfg, fused=run.on_cuda)
            scheduler = make_scheduler(optimizer, cfg, run.total, run.warmup)
            p = restore(run, optimizer, scheduler, log)
            _loop(run, optimizer, scheduler, p, log)
            # every rank returns rank 0's summary (callers such as the lr grid read its top-1)
            summary = _from_rank0(run, write_results(run, p, experiment) if run.rank == 0 else None)
            log(Event.END, dict(summary, run_dir=str(run_dir)))
            return dict(summary, run_dir=str(run_dir), reused=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # disk full outside a checkpoint (metrics, summary, accuracy row): every write is atomic
        raise TrainingStopped(
            f"Could not write to {run_dir} ({exc.strerror or exc}); its files and the last "
            "checkpoint are intact: free space and run the same command to resume.") from None
    except (UserError, TrainingStopped):
        # found before the first checkpoint: leave no half-made run directory behind
        if created and run.rank == 0 and not (run_dir / rundir.STATE).exists():
            files.remove_tree(run_dir)  # through descriptors: never a removal through a link
        raise


def _from_rank0(run: Run, value):
    """`value` as rank 0 has it, on every rank (a collective: every rank must call it)."""
    if run.world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _loop(run: Run, optimizer, scheduler, p: TrainState, log: Log) -> None:
    """Steps until the run's length: train, then evaluate / checkpoint / stop on schedule."""
    import torch
    import torch.distributed as dist

    from mixerbench.models import model_label  # the model by its shape, not the zoo entry's name
    cfg = run.cfg
    train_model = run.model
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(run.model, device_ids=[run.device] if run.on_cuda else None)
    if run.compiled:
        train_model = torch.compile(train_model)
    log(Event.START, dict(run_dir=str(run.run_dir), total_steps=run.total, step=p.step,
                      steps_per_epoch=run.steps_per_epoch, device=run.device, dtype=run.dtype,
                      # an official ViT's representation layer is not fine-tuned (as
                      # vision_transformer's load_pretrained drops it): the first line says so
                      model=model_label(run.rec["name"], run.rec.get("overrides")) + (
                          f" (without the {cfg.init_dropped} layer of --init)" if cfg.init_dropped else ""),
                      dataset=cfg.data.dataset, world_size=run.world,
                      batch_size=cfg.data.batch_size, accum_steps=cfg.accum_steps,
                      img_size=run.rec["img_size"], pipeline=cfg.data.pipeline,
                      eval_pipeline=cfg.data.eval_pipeline, config=to_dict(cfg)))
    run.model.train()
    window = [time.perf_counter(), 0]  # start of the throughput window, images in it
    # compile=None on a CPU: time a few eager steps, then compile if it pays back (compile_pays)
    probe = [] if cfg.compile is None and not run.compiled else None
    with stop_signals() as stop:
        while p.step < run.total:
            epoch, index = divmod(p.step, run.steps_per_epoch)
            waited = time.perf_counter()
            for x, y in run.train_batches.epoch(epoch, start=index):
                t0 = time.perf_counter()
                p.data_seconds += t0 - waited
                p.pending.append(train_step(run, train_model, x, y))
                n = p.step + 1
                check = (n % 10 == 0 or n % run.eval_every == 0 or n % run.ckpt_every == 0
                         or n == run.total or stop["stop"])
                values = check_losses(run, p, n) if check else None  # device sync only here
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                p.step = n
                if run.on_cuda and check:
                    torch.cuda.synchronize(run.device)
                p.train_seconds += time.perf_counter() - t0
                if probe is not None and len(probe) <= COMPILE_PROBE_STEPS:
                    probe.append(time.perf_counter() - t0)
                elif probe is not None:  # decide once, on the median eager step (warm-up dropped)
                    if compile_pays(run.total - p.step, sorted(probe[1:])[len(probe) // 2 - 1]):
                        train_model, run.compiled = torch.compile(train_model), True
                    probe = None
                window[1] += cfg.data.batch_size
                if check:
                    _log_step(run, p, values[-1], optimizer, window, log)
                _after_step(run, optimizer, scheduler, p, stop["stop"], log, window)
                if p.step >= run.total:
                    break
                if run.world > 1 and p.step % run.eval_every == 0:
                    dist.barrier()
                waited = time.perf_counter()


def _log_step(run: Run, p: TrainState, loss: float, optimizer, window: list, log: Log) -> None:
    now = time.perf_counter()
    ips = window[1] / max(now - window[0], 1e-9)
    window[:] = [now, 0]
    log(Event.STEP, dict(step=p.step, total_steps=run.total, epoch=p.step / run.steps_per_epoch,
                     loss=loss, lr=optimizer.param_groups[0]["lr"], img_per_sec=ips))


def _after_step(run: Run, optimizer, scheduler, p: TrainState, stopping: bool, log: Log,
                window: list) -> None:
    """Evaluate, checkpoint or stop when the schedule (or a signal) says so."""
    if p.step % run.eval_every == 0 or p.step == run.total:
        if p.step == run.total:
            n = min(run.eval_size, run.cfg.max_eval_examples or run.eval_size)
            log(Event.STAGE, dict(what=f"final evaluation on {n:,} images of {eval_split(run)}"
                              + ("" if n < run.eval_size else
                                 " (all of it; --set max_eval_examples=N bounds it)")))
        ev = evaluate_now(run) if run.rank == 0 else {}
        row = metrics_row(run, p, ev, optimizer.param_groups[0]["lr"])
        p.loss_sum, p.loss_count = 0.0, 0
        if run.rank == 0:
            rundir.append_metrics(run.run_dir, row)
        log(Event.EVAL, row)
        window[0] = time.perf_counter()
    if stopping:  # one save, whether or not this is a checkpoint step
        if p.pending:  # the signal came after this step's loss check
            check_losses(run, p, p.step)
        save_state(run, optimizer, scheduler, p)
        raise Interrupted(run.run_dir, p.step)
    if p.step % run.ckpt_every == 0 or p.step == run.total:
        save_state(run, optimizer, scheduler, p)


def _read_back(run_dir: Path, root: Path, resume: bool, log: Log, experiment: str = "") -> dict:
    """A finished run's summary, read back instead of retraining (its accuracy row restored if
    a crash lost it); `--resume` of a finished run is an error."""
    if resume:
        raise UserError(f"Run {run_dir.name} already finished; start a new run with another "
                        "--seed or --run-name instead of --resume.")
    done = rundir.read_summary(run_dir)
    # a run whose summary predates the experiment tag takes the tag of the one reading it back
    done = dict(done, experiment=done.get("experiment") or experiment)
    rundir.ensure_row(done, root)
    log(Event.FINISHED, dict(done, run_dir=str(run_dir)))
    return dict(done, run_dir=str(run_dir), reused=True)
