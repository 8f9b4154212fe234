"""The one training loop, for pre-training and fine-tuning alike (they differ only by config).

Reads top to bottom: distributed setup, run directory, data, model, optimizer and schedule,
resume, the loop (forward, backward, clip, step; evaluate and checkpoint on schedule), summary.
Recipes are in `presets.py`; the paper's settings are cited there (paper section 3, Table 4).

Guarantees the tests hold us to:
- `config.json` is written before the first step; `metrics.csv` gets one row per evaluation.
- Checkpoints are written atomically (temp file, fsync, rename): `state-last.pt` holds
  everything needed to resume exactly (weights, optimizer, scheduler, RNG, step, timers) and is
  written first; `checkpoint-last.safetensors` is the weights-only export for `--init` and
  `evaluate`. A kill at any moment leaves the previous checkpoint loadable.
- Batches depend only on (seed, epoch, index) (`mixerbench.data`), and RNG state is saved, so
  a resumed CPU run ends with bitwise the same weights as an uninterrupted one.
- Ctrl-C / SIGTERM finish the current step, save, and raise `Interrupted` (the CLI says how to
  resume). A non-finite loss raises `TrainingStopped` before the bad update is saved.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable

from mixerbench import results
from mixerbench.config import RunConfig, check_warmup, run_id, to_dict
from mixerbench.errors import UserError

STATE = "state-last.pt"
SUMMARY = "summary.json"


class TrainingStopped(RuntimeError):
    """The run cannot go on (non-finite loss, disk full); the last checkpoint is intact."""


class Interrupted(RuntimeError):
    """Ctrl-C or SIGTERM: a checkpoint was saved at `step`; the same command resumes."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"interrupted at step {step}")
        self.run_dir, self.step = run_dir, step


# ------------------------------------------------------------------------------------ helpers


def lr_factor(step: int, total: int, warmup: int, schedule: str, end_factor: float) -> float:
    """Multiplier on the peak lr at `step` (0-based): linear warm-up from 0, then decay.

    Linear decay ends at `end_factor` (big_vision `linear_end`); cosine ends at 0 (paper
    section 3: linear warm-up of 10k steps then linear decay for pre-training, cosine for
    fine-tuning).
    """
    if warmup and step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return end_factor + (1.0 - end_factor) * (1.0 - progress)


def make_optimizer(model, cfg: RunConfig, fused: bool):
    """AdamW or SGD with weight decay on kernels only (matrices and conv filters, not biases,
    norms, position embeddings or class tokens), as big_vision's `.*/kernel$` rule."""
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and name.endswith("weight") else no_decay).append(p)
    o = cfg.optim
    groups = [dict(params=decay, weight_decay=o.weight_decay),
              dict(params=no_decay, weight_decay=0.0)]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, fused=fused or None)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=1e-8,
                             fused=fused or None)


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) under torchrun; (0, 1, 0) for a plain process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        import torch

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if world > 1:
        return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def pick_device(cfg: RunConfig, local_rank: int) -> str:
    """The configured device (checked as `bench` checks it), else this rank's GPU, else CPU."""
    import torch

    from mixerbench.bench import resolve_device

    if cfg.device:
        return resolve_device(cfg.device)
    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


@contextmanager
def run_lock(run_dir: Path):
    """One process trains a given run at a time; a second waits, then finds it finished."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def stop_signals():
    """SIGINT/SIGTERM set a flag checked between steps, so a step is never cut in half."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["stop"] = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def read_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


# -------------------------------------------------------------------------------------- train


def train(cfg: RunConfig, results_root: str | os.PathLike | None = None, *, resume: bool = False,
          log: Callable[[str, dict], None] | None = None, experiment: str = "") -> dict[str, Any]:
    """Train (or fine-tune) per `cfg`; return the summary (the accuracy row plus `run_dir`).

    A finished run is read back, not retrained (unless `resume`, which is then an error); an
    unfinished one continues from its last checkpoint. `experiment` tags the accuracy row
    (`compare:<preset>`, `shuffle`, ...) so tables and figures can tell experiments apart; it is
    not part of the configuration, so the same run serves any experiment that asks for it.
    """
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from mixerbench.data import get_dataset, make_loader
    from mixerbench.evaluate import accuracy, autocast
    from mixerbench.models import create_model, get_spec, model_label
    from mixerbench.models.weights import load_for_finetuning, recipe, save_checkpoint, unwrap

    log = log or (lambda event, info: None)
    rank, world, local_rank = setup_distributed()
    device = pick_device(cfg, local_rank)
    on_cuda = device.startswith("cuda")
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bf16" if on_cuda else "fp32")
    if dtype != "fp32" and not on_cuda:
        raise UserError(f"dtype {dtype} is only used on CUDA here; use --set dtype=fp32 on CPU.")
    compiled = cfg.compile if cfg.compile is not None else on_cuda
    if on_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    root = results.results_dir(results_root)
    run_dir = root / "runs" / run_id(cfg)

    done = read_summary(run_dir)
    if done is not None:  # finished: read back, never retrained
        return _finished(done, run_dir, root, resume, log, experiment)
    if resume and not (run_dir / STATE).is_file():
        raise UserError(f"Nothing to resume in {run_dir}: it has no checkpoint yet; run the "
                        "command without --resume.")

    # ---- data: batches depend only on (seed, epoch, index), see mixerbench.data
    dcfg = cfg.data
    world_batch = dcfg.batch_size
    if world_batch % world:
        raise UserError(f"The batch size {world_batch} does not split over {world} processes.")
    rank_batch = world_batch // world
    if rank_batch % cfg.accum_steps:
        raise UserError(f"The per-process batch {rank_batch} is not divisible by --accum-steps "
                        f"{cfg.accum_steps}.")
    train_ds = get_dataset(dcfg.dataset, dcfg.train_split, data_dir=dcfg.data_dir,
                           fraction=dcfg.fraction, seed=cfg.seed)
    eval_ds = get_dataset(dcfg.dataset, dcfg.eval_split, data_dir=dcfg.data_dir, seed=cfg.seed)

    # ---- model: from scratch, or from --init with a fresh head and the new resolution
    torch.manual_seed(cfg.seed)
    m = cfg.model
    overrides = dict(m.options)
    for key in ("width", "depth"):
        if getattr(m, key) is not None:
            overrides[key] = getattr(m, key)
    if m.drop_path:
        overrides["drop_path"] = m.drop_path
    if m.dropout:
        overrides["dropout"] = m.dropout
    if get_spec(m.name).family == "mixer" and not m.name.startswith("timm:"):
        overrides["gelu"] = m.gelu
    if cfg.init:  # the run's own regularisers and resolution, a fresh zero head (paper section 3)
        model, rec = load_for_finetuning(
            cfg.init, num_classes=train_ds.num_classes, img_size=m.img_size,
            regularisers=dict(drop_path=m.drop_path, dropout=m.dropout))
    else:
        model = create_model(m.name, num_classes=train_ds.num_classes, img_size=m.img_size,
                             patch_size=m.patch_size, **overrides)
        spec = get_spec(m.name)
        rec = recipe(m.name, train_ds.num_classes, m.img_size or spec.img_size,
                     m.patch_size or spec.patch_size, overrides)
    img_size = rec["img_size"]
    model.to(device)
    if on_cuda and get_spec(rec["name"]).family == "resnet":
        model.to(memory_format=torch.channels_last)
    from mixerbench.bench import count_macs

    macs_per_img = count_macs(unwrap(model), img_size, device=device)

    train_batches = make_loader(
        train_ds, batch_size=rank_batch, train=True, pipeline=dcfg.pipeline,
        img_size=img_size, device=device, seed=cfg.seed, randaug_m=dcfg.randaug_m,
        mixup_p=dcfg.mixup_p, label_smoothing=dcfg.label_smoothing,
        num_classes=train_ds.num_classes, shuffle=dcfg.shuffle,
        shuffle_patch=dcfg.shuffle_patch or rec["patch_size"], rank=rank, world_size=world)
    eval_batches = make_loader(
        eval_ds, batch_size=dcfg.eval_batch_size, train=False, pipeline=dcfg.eval_pipeline,
        img_size=img_size, device=device, seed=cfg.seed, shuffle=dcfg.shuffle,
        shuffle_patch=dcfg.shuffle_patch or rec["patch_size"])
    steps_per_epoch = train_batches.steps_per_epoch
    if steps_per_epoch < 1:
        raise UserError(f"The batch size {world_batch} is larger than the training set "
                        f"({len(train_ds)} images); choose a smaller --batch-size.")
    total = cfg.steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    o = cfg.optim
    warmup = round(o.warmup_frac * total) if o.warmup_frac is not None else o.warmup_steps
    check_warmup(cfg, warmup, total)
    eval_every = cfg.eval_every or steps_per_epoch
    ckpt_every = cfg.ckpt_every or eval_every

    created = not run_dir.exists()
    try:
        with (run_lock(run_dir) if rank == 0 else nullcontext()):
            done = read_summary(run_dir)  # another process may have finished it while we waited
            if done is not None:
                return _finished(done, run_dir, root, resume, log, experiment)
            state_path = run_dir / STATE
            if rank == 0:
                for tmp in run_dir.glob(".*.tmp"):  # writes cut short by a kill (atomic_write_bytes)
                    tmp.unlink(missing_ok=True)
                results.atomic_write_json(run_dir / "config.json", to_dict(cfg))

            # ---- optimizer, schedule (torch's LambdaLR over our pure lr_factor), wrappers
            optimizer = make_optimizer(model, cfg, fused=on_cuda)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: lr_factor(s, total, warmup, o.schedule, o.end_factor))
            step, train_seconds, loss_sum, loss_count = 0, 0.0, 0.0, 0

            if state_path.is_file():  # ---- resume exactly where the last checkpoint left off
                state = torch.load(state_path, map_location="cpu", weights_only=False)
                unwrap(model).load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                step, train_seconds = state["step"], state["train_seconds"]
                loss_sum, loss_count = state["loss_sum"], state["loss_count"]
                rng = state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0]
                torch.set_rng_state(rng["cpu"])
                if on_cuda and rng.get("cuda") is not None:
                    torch.cuda.set_rng_state(rng["cuda"], device)
                if rank == 0:
                    _truncate_metrics(run_dir / "metrics.csv", step)
                log("resumed", dict(step=step, run_dir=str(run_dir)))
            elif world > 1:
                torch.manual_seed(cfg.seed + rank)  # per-rank stochastic depth draws

            train_model = model
            if world > 1:
                from torch.nn.parallel import DistributedDataParallel as DDP

                train_model = DDP(model, device_ids=[device] if on_cuda else None)
            if compiled:
                train_model = torch.compile(train_model)

            def save(at_step: int) -> None:
                """Everything needed to resume (written first), then the weights-only export."""
                rngs = [dict(cpu=torch.get_rng_state(),
                             cuda=torch.cuda.get_rng_state(device) if on_cuda else None)]
                if world > 1:
                    gathered = [None] * world
                    dist.all_gather_object(gathered, rngs[0])
                    rngs = gathered
                if rank != 0:
                    return
                import io

                buf = io.BytesIO()
                torch.save(dict(model=unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                                scheduler=scheduler.state_dict(), step=at_step,
                                train_seconds=train_seconds, loss_sum=loss_sum,
                                loss_count=loss_count, rng=rngs), buf)
                try:
                    results.atomic_write_bytes(state_path, buf.getvalue())
                    save_checkpoint(run_dir / "checkpoint-last.safetensors", model,
                                    dict(rec, step=at_step))
                except OSError as exc:
                    raise TrainingStopped(
                        f"Could not write the checkpoint to {run_dir} ({exc.strerror or exc}); the "
                        "previous checkpoint is intact: free space and run the same command to resume."
                    ) from None

            def evaluate(max_examples: int | None) -> dict:
                batches = eval_batches.epoch(0)
                if max_examples:
                    batches = _take_examples(batches, max_examples)
                return accuracy(unwrap(model), batches, device=device, dtype=dtype)

            log("start", dict(run_dir=str(run_dir), total_steps=total, step=step,
                              steps_per_epoch=steps_per_epoch, device=device, dtype=dtype,
                              model=rec["name"], dataset=dcfg.dataset, world_size=world,
                              batch_size=world_batch, accum_steps=cfg.accum_steps))

            device_losses: list = []

            def check_losses(at_step: int) -> list[float]:
                """Fold the pending per-step losses (averaged over processes) into the running
                mean; a non-finite one stops the run before anything is saved."""
                nonlocal loss_sum, loss_count
                values = torch.stack(device_losses)
                if world > 1:
                    dist.all_reduce(values, op=dist.ReduceOp.AVG)
                values = values.tolist()
                device_losses.clear()
                if not all(math.isfinite(v) for v in values):
                    raise TrainingStopped(
                        f"The loss became {values[-1]} near step {at_step}; the run stopped "
                        f"and its last good checkpoint in {run_dir} is intact. Lower "
                        "--lr or raise warm-up, then run the same command to resume.")
                loss_sum += sum(values)
                loss_count += len(values)
                return values

            # ---- the loop
            model.train()
            window_start, window_imgs = time.perf_counter(), 0
            with stop_signals() as stop:
                while step < total:
                    epoch, index = divmod(step, steps_per_epoch)
                    for x, y in train_batches.epoch(epoch, start=index):
                        t0 = time.perf_counter()
                        micro_x, micro_y = x.chunk(cfg.accum_steps), y.chunk(cfg.accum_steps)
                        step_loss = torch.zeros((), device=device)
                        try:
                            for i, (mx, my) in enumerate(zip(micro_x, micro_y)):
                                sync = i == cfg.accum_steps - 1 or world == 1
                                with (nullcontext() if sync else train_model.no_sync()):
                                    with autocast(device, dtype):
                                        logits = train_model(mx)
                                    loss = F.cross_entropy(logits.float(), my) / cfg.accum_steps
                                    loss.backward()
                                step_loss += loss.detach()
                        except torch.cuda.OutOfMemoryError:
                            raise UserError(
                                f"Out of GPU memory at {rank_batch // cfg.accum_steps} images per "
                                f"device; try --accum-steps {cfg.accum_steps * 2} or a smaller "
                                "--batch-size.") from None
                        if o.clip_norm:
                            torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
                        device_losses.append(step_loss)
                        check = (step + 1) % 10 == 0 or (step + 1) % eval_every == 0 \
                            or (step + 1) % ckpt_every == 0 or step + 1 == total or stop["stop"]
                        if check:  # sync with the device only every few steps (no per-step .item())
                            values = check_losses(step + 1)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        step += 1
                        if on_cuda and check:
                            torch.cuda.synchronize(device)
                        train_seconds += time.perf_counter() - t0
                        window_imgs += world_batch
                        if check:
                            now = time.perf_counter()
                            ips = window_imgs / max(now - window_start, 1e-9)
                            window_start, window_imgs = now, 0
                            log("step", dict(step=step, total_steps=total, epoch=step / steps_per_epoch,
                                             loss=values[-1],
                                             lr=optimizer.param_groups[0]["lr"], img_per_sec=ips))
                        if step % eval_every == 0 or step == total:
                            final = step == total
                            ev = evaluate(None if final else cfg.max_eval_examples) if rank == 0 else {}
                            row = dict(step=step, epoch=round(step / steps_per_epoch, 4),
                                       train_loss=loss_sum / max(loss_count, 1),
                                       eval_loss=ev.get("loss"), top1=ev.get("top1"),
                                       top5=ev.get("top5"), lr=optimizer.param_groups[0]["lr"],
                                       img_per_sec=step * world_batch / max(train_seconds, 1e-9),
                                       elapsed_s=round(train_seconds, 3))
                            loss_sum, loss_count = 0.0, 0
                            if rank == 0:
                                results.append_to(run_dir / "metrics.csv", results.METRICS, row)
                            log("eval", row)
                            window_start = time.perf_counter()
                        if stop["stop"]:  # one save, whether or not this is a checkpoint step
                            if device_losses:  # the signal came after this step's loss check
                                check_losses(step)
                            save(step)
                            raise Interrupted(run_dir, step)
                        if step % ckpt_every == 0 or step == total:
                            save(step)
                        if step >= total:
                            break
                        if world > 1 and step % eval_every == 0:
                            dist.barrier()

            # ---- summary and the accuracy row (rank 0 only)
            summary = {}
            if rank == 0:
                last = _last_metrics(run_dir / "metrics.csv")
                prov = results.provenance(device=device, num_devices=world, dtype=dtype,
                                          compiled=compiled, seed=cfg.seed)
                summary = dict(
                    run_id=run_dir.name, model=model_label(rec["name"], rec.get("overrides")),
                    dataset=dcfg.dataset,
                    split=dcfg.eval_split, img_size=img_size,
                    epochs=round(total * world_batch / len(train_ds), 4), steps=total,
                    top1=last.get("top1"), top5=last.get("top5"), loss=last.get("eval_loss"),
                    train_seconds=round(train_seconds, 3),
                    device_hours=round(train_seconds * world / 3600, 6),
                    # forward + backward = 3 forward passes' FLOPs (2 FLOPs per MAC) per image seen
                    train_flops=float(6 * macs_per_img * total * world_batch),
                    init=cfg.init or "", kind=cfg.kind, experiment=experiment, **prov)
                results.atomic_write_json(run_dir / SUMMARY, summary)
                _ensure_row(summary, root)
            if world > 1:
                dist.barrier()
            log("end", dict(summary, run_dir=str(run_dir)))
            return dict(summary, run_dir=str(run_dir), reused=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # disk full outside a checkpoint (metrics, summary, accuracy row): every write is atomic
        raise TrainingStopped(
            f"Could not write to {run_dir} ({exc.strerror or exc}); its files and the last "
            "checkpoint are intact: free space and run the same command to resume.") from None
    except UserError:
        # bad input found late (e.g. out of memory): leave no empty run directory behind
        if created and rank == 0 and not (run_dir / STATE).exists():
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _finished(done: dict, run_dir: Path, root: Path, resume: bool, log,
              experiment: str = "") -> dict:
    if resume:
        raise UserError(f"Run {run_dir.name} already finished; start a new run with another "
                        "--seed or --run-name instead of --resume.")
    # a run whose summary predates the experiment tag takes the tag of the one reading it back
    done = dict(done, experiment=done.get("experiment") or experiment)
    _ensure_row(done, root)
    log("finished", dict(done, run_dir=str(run_dir)))
    return dict(done, run_dir=str(run_dir), reused=True)


# ----------------------------------------------------------------------------------- internals


def _take_examples(batches, n: int):
    seen = 0
    for x, y in batches:
        if seen >= n:
            return
        keep = min(len(y), n - seen)
        seen += keep
        yield x[:keep], y[:keep]


def _last_metrics(path: Path) -> dict:
    import csv

    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return {k: (float(v) if v not in ("", None) else None) for k, v in rows[-1].items()}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows written after the checkpoint we resume from (they will be redone)."""
    import csv
    import io

    if not path.is_file():
        return
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if int(float(r["step"])) <= step]
    if len(keep) == len(rows):
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(results.METRICS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(keep)
    results.atomic_write_text(path, out.getvalue())


def _ensure_row(summary: dict, root: Path) -> None:
    """Append the run's accuracy row unless it is already there (a kill between summary.json
    and the append must neither lose the row nor, on a rerun, write it twice)."""
    path = results.csv_path("accuracy", root)
    with results.locked(path.with_suffix(".ensure")):
        if path.is_file():
            import csv

            with open(path) as fh:
                if any(r.get("run_id") == summary["run_id"] for r in csv.DictReader(fh)):
                    return
        row = {k: summary.get(k) for k in results.SCHEMAS["accuracy"]}
        results.append_row("accuracy", row, root)
