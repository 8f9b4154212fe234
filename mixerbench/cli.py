"""The `mixerbench` command line: a thin command per verb, which calls one library function and
hands its result to `view.py`, the one module that prints (shared options: `options.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

try:
    import typer
except KeyboardInterrupt:  # Ctrl-C while Python loads the command line: 130, not a traceback
    raise SystemExit(130) from None
from mixerbench import options as o, view
from mixerbench.view import Format

app = o.App(name="mixerbench", help="Reproduce the MLP-Mixer benchmarks (arXiv 2105.01601): "
            "Mixer vs ViT vs ResNet/BiT.")


@app.callback()
def main(
    ctx: typer.Context,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain periodic lines, no progress bars.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=o.version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Reproduce the MLP-Mixer benchmarks: Mixer against ViT and ResNet/BiT from timm."""
    ctx.obj = view.setup(quiet)


@app.command()
def models(
    pattern: Annotated[Optional[str], typer.Argument(help="Shell pattern, e.g. 'mixer-*', or one name.")] = None,
    fmt: o.FormatOpt = Format.table,
    wide: o.Wide = False,
    img_size: Annotated[Optional[int], typer.Option(help="Count FLOPs at this input size.")] = None,
    num_classes: Annotated[int, typer.Option(help="Head size used for `params`.")] = 1000,
) -> None:
    """The model zoo: shapes, parameters and FLOPs per image (FlopCounterMode)."""
    from mixerbench.models import zoo

    view.table("models", zoo(pattern, num_classes=num_classes, img_size=img_size), fmt, wide,
               f"mixerbench model zoo (params with a {num_classes}-class head; FLOPs per image)")


@app.command(cls=o.RegistryHelp)
def paper(
    table: Annotated[str, typer.Argument(help="One of the paper's tables.")] = "table1",
    fmt: o.FormatOpt = Format.table,
    wide: o.Wide = False,
) -> None:
    """The paper's reference tables (transcribed with a source column)."""
    from mixerbench.reference import load_table

    view.table(f"paper-{table}", view.records(load_table(table)), fmt, wide,
               title=f"MLP-Mixer paper, {table} (arXiv 2105.01601)")


@app.command(cls=o.RegistryHelp, help=o.PLOT_HELP)
def plot(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(help="One figure or table (see above); all when omitted.")] = None,
    results_dir: o.ResultsDir = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where figures/ and tables/ go (default: the results dir).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="Mixer checkpoint or run dir for token-mixing.")] = None,
    runs: Annotated[Optional[str], typer.Option(help="Comma-separated run ids for curves (default: the runs of the last command that trained).")] = None,
    tracker: o.TrackerOpt = None,
) -> None:
    from mixerbench.report import draw

    view.drawn(view.run(ctx, draw, tracker, root=results_dir, out=out, names=name,
                        checkpoint=checkpoint, runs=runs.split(",") if runs else None))


def _train(ctx, kind: str, tracker, print_config, dry_run, on, **kw) -> None:
    from mixerbench.experiments import train_command

    view.result(view.run(ctx, train_command, tracker, kind=kind, **o.what(print_config, dry_run, on), **kw))


@app.command()
def claims(
    results_dir: o.ResultsDir = None,
    fmt: o.FormatOpt = Format.table,
    write_md: Annotated[Optional[Path], typer.Option("--write-md", help="Also put the verdicts as markdown between the '<!-- mixerbench claims: start/end -->' lines of this file.")] = None,
) -> None:
    """The paper's claims decided from the results: held, not held or not enough evidence, with
    the numbers, the seeds and the command that would add the missing evidence."""
    from mixerbench.report.claims import check, to_markdown, write_markdown_section

    verdicts = check(results_dir)  # --write-md: also into that document, between its markers
    view.claims(verdicts, fmt, write_md, write_md and write_markdown_section(write_md, to_markdown(verdicts)))


@app.command()
def report(
    results_dir: o.ResultsDir = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="The HTML file to write (default: <results-dir>/report/index.html).")] = None,
) -> None:
    """One self-contained HTML page of the whole reproduction: the claims, every table and figure
    beside the paper's numbers, and each run's provenance."""
    from mixerbench.report.page import write_report

    view.wrote([write_report(results_dir, out)])


@app.command()
def pretrain(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Zoo name, paper spelling, family alias or timm:<name>.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset name or path (default: the preset's, else cifar10).")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Named recipe; see --list-presets.")] = None,
    epochs: o.Epochs = None,
    steps: o.Steps = None,
    batch_size: o.BatchSize = None,
    accum_steps: o.AccumSteps = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Input side in pixels.")] = None,
    patch_size: Annotated[Optional[int], typer.Option(help="Patch side in pixels (Mixer, ViT).")] = None,
    seed: o.Seed = None,
    settings: o.SetOpt = None,
    config: o.ConfigOpt = None,
    run_name: o.RunName = None,
    resume: o.Resume = False,
    results_dir: o.ResultsDir = None,
    data_dir: o.DataDir = None,
    device: o.Device = None,
    compile_: o.Compile = None,
    list_presets: Annotated[bool, typer.Option("--list-presets", help="List the presets and exit.")] = False,
    print_config: o.PrintConfig = False,
    dry_run: o.DryRun = False,
    on: o.DryRunDevice = None,
    tracker: o.TrackerOpt = None,
) -> None:
    """Train a model from scratch; writes a run directory and a row in accuracy.csv."""
    if list_presets:
        from mixerbench.presets import describe

        return view.table("presets", describe(), Format.table, False, "presets (mixerbench/presets.py)")
    _train(ctx, "pretrain", tracker, print_config, dry_run, on, preset=preset, model=model,
           dataset=dataset, lr=lr, settings=settings, config=config, resume=resume,
           root=results_dir, flags={
               "epochs": epochs, "steps": steps, "data.batch_size": batch_size,
               "accum_steps": accum_steps, "model.img_size": img_size,
               "model.patch_size": patch_size, "seed": seed, "run_name": run_name,
               "device": device, "compile": compile_,
               "data.data_dir": str(data_dir) if data_dir else None})


@app.command()
def finetune(
    ctx: typer.Context,
    init: Annotated[Optional[str], typer.Option("--init", help="Run dir, .safetensors, timm:<name>[.<tag>] or official .npz (required unless --config names it).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset name or path.")] = None,
    arch: o.ArchOpt = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Named recipe (default: finetune-<dataset> when one exists, else finetune).")] = None,
    img_size: Annotated[Optional[str], typer.Option(help="Fine-tuning resolution in pixels, or Kx for K times the trained size (2x: paper App. C); Mixers need a whole multiple.")] = None,
    epochs: o.Epochs = None,
    steps: o.Steps = None,
    batch_size: o.BatchSize = None,
    accum_steps: o.AccumSteps = None,
    lr: Annotated[Optional[str], typer.Option(help="Peak learning rate, or a grid such as 0.003,0.01,0.03,0.06: each is scored on a held-out minival split, the best is re-run on all of train and reported on test (paper App. C).")] = None,
    seed: o.Seed = None,
    settings: o.SetOpt = None,
    config: o.ConfigOpt = None,
    run_name: o.RunName = None,
    resume: o.Resume = False,
    results_dir: o.ResultsDir = None,
    data_dir: o.DataDir = None,
    device: o.Device = None,
    compile_: o.Compile = None,
    print_config: o.PrintConfig = False,
    dry_run: o.DryRun = False,
    on: o.DryRunDevice = None,
    tracker: o.TrackerOpt = None,
) -> None:
    """Fine-tune from weights with a fresh zero head (paper section 3), optionally at a higher resolution."""
    _train(ctx, "finetune", tracker, print_config, dry_run, on, preset=preset,
           dataset=dataset, init=init, arch=arch, lr=lr, settings=settings, config=config,
           resume=resume, root=results_dir, flags={
               "epochs": epochs, "steps": steps, "data.batch_size": batch_size,
               "accum_steps": accum_steps, "model.img_size": img_size, "seed": seed,
               "run_name": run_name, "device": device, "compile": compile_,
               "data.data_dir": str(data_dir) if data_dir else None})


@app.command()
def settings(
    pattern: Annotated[Optional[str], typer.Argument(help="Shell pattern of keys, e.g. 'optim.*'.")] = None,
    fmt: o.FormatOpt = Format.table,
    wide: o.Wide = False,
) -> None:
    """Every setting --set and --config take: type, default, range and meaning (from the config schema)."""
    from mixerbench.config import settings_table

    view.table("settings", settings_table(pattern), fmt, wide,
               title="settings (mixerbench/config.py): --set KEY=VALUE, or a --config file")


@app.command()
def evaluate(
    ctx: typer.Context,
    checkpoint: Annotated[str, typer.Option("--checkpoint", "-c", help="Run dir, .safetensors, timm:<name>[.<tag>] or official .npz.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name or path.")],
    arch: o.ArchOpt = None,
    split: Annotated[str, typer.Option(help="Split to measure accuracy on.")] = "test",
    crop: Annotated[Optional[o.EvalCrop], typer.Option(help="Eval crop (paper App. C): resize-crop, resmall-crop, plain resize, or the weights' own (timm's crop_pct); default: the run's own, timm: weights' own, else resize.")] = None,
    real_labels: Annotated[Optional[Path], typer.Option("--real-labels", help="ImageNet ReaL labels (the public real.json) for ReaL top-1.")] = None,
    fewshot: Annotated[Optional[str], typer.Option("--fewshot", help="Linear few-shot shots, e.g. 1,5,10,25 (needs no head; paper section 3).")] = None,
    shuffle: Annotated[Optional[str], typer.Option("--shuffle", help="Fixed pixel shuffles of paper Figure 4, e.g. none,patch,global.")] = None,
    shuffle_patch: Annotated[Optional[int], typer.Option("--shuffle-patch", help="Patch side of the patch shuffle (default: the run's, else the model's; CNNs need it).")] = None,
    seeds: Annotated[int, typer.Option(help="Few-shot seeds (mean and std reported).")] = 3,
    l2_reg: Annotated[float, typer.Option("--l2-reg", help="Few-shot ridge strength (big_vision default 2^10).")] = 1024.0,
    max_examples: Annotated[Optional[int], typer.Option("--max-examples", help="Measure on a seeded class-stratified N images of the split (rows name it split[stratified:N]; default: all of it).")] = None,
    results_dir: o.ResultsDir = None,
    data_dir: o.DataDir = None,
    device: o.Device = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per eval batch.")] = 256,
    fmt: o.FormatOpt = Format.table,
    tracker: o.TrackerOpt = None,
) -> None:
    """Accuracy (top-1, top-5, loss, ReaL), linear few-shot and shuffle invariance of a checkpoint."""
    from mixerbench.evaluate import evaluate as run_evaluate
    from mixerbench.results import writable_results_dir

    root = writable_results_dir(results_dir)
    res = view.run(ctx, run_evaluate, tracker, rank0_only=True,
                   checkpoint_src=checkpoint, dataset=dataset, arch=arch, split=split,
                   crop=crop.value if crop else None, data_dir=str(data_dir) if data_dir else None,
                   fewshot=fewshot, shuffle=shuffle, shuffle_patch=shuffle_patch,
                   real_labels=real_labels, device=device, batch_size=batch_size, seeds=seeds,
                   l2_reg=l2_reg, max_examples=max_examples, root=root)
    view.evaluation(res, root, fmt)


@app.command()
def bench(
    ctx: typer.Context,
    models: Annotated[str, typer.Option("--models", "-m", help="Comma-separated zoo names, timm:<name> or row labels, e.g. mixer-b16,vit-b16,bit-r50x1 or 'mixer-t4[depth=2,width=64]'.")],
    mode: Annotated[o.BenchMode, typer.Option(help="infer, train (forward+backward+AdamW step) or both.")] = o.BenchMode.infer,
    batch_size: Annotated[str, typer.Option("--batch-size", "-b", help="Images per step, or 'auto' for the largest that fits.")] = "256",
    img_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (default: each model's own).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="bf16, fp16 or fp32 (default: bf16 on CUDA, fp32 on CPU).")] = None,
    compile_: o.Compile = None,
    repeats: Annotated[int, typer.Option(help="Timed repeats (mean and std of img/s).")] = 5,
    steps: Annotated[int, typer.Option(help="Steps per timed repeat.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up steps.")] = 10,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="NHWC layout (default: CNNs on CUDA).")] = None,
    vs_timm: Annotated[bool, typer.Option("--vs-timm", help="After each native model, timm's model of the same shapes (the module export writes), timed in the same rounds.")] = False,
    device: o.Device = None,
    results_dir: o.ResultsDir = None,
    fmt: o.FormatOpt = Format.table,
    wide: o.Wide = False,
) -> None:
    """Throughput (img/s per device), FLOPs, achieved FLOP/s and MFU; appends to throughput.csv."""
    from mixerbench.bench import bench as run_bench
    from mixerbench.results import writable_results_dir

    rows = view.run(ctx, run_bench, rank0_only=True, models=models, vs_timm=vs_timm,
                    mode=mode.value, batch_size=batch_size, img_size=img_size, dtype=dtype,
                    compile=compile_, repeats=repeats, warmup=warmup, steps_per_repeat=steps,
                    device=device, channels_last=channels_last, root=(root := writable_results_dir(results_dir)))
    view.bench(rows, steps, root, fmt, wide)


@app.command(cls=o.RegistryHelp)
def compare(
    ctx: typer.Context,
    models: Annotated[str, typer.Option("--models", help="Comma-separated: family aliases or zoo names.")] = "mixer,vit,resnet",
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset (default: the preset's).")] = None,
    preset: Annotated[str, typer.Option("--preset", "-p", help="One recipe and budget for every model.")] = "smoke",
    seeds: Annotated[int, typer.Option(help="Seeds per model (mean ± std over them).")] = 1,
    epochs: Annotated[Optional[float], typer.Option(help="Override the preset's epochs.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Override the preset's length: optimizer steps per run (wins over --epochs).")] = None,
    fewshot: Annotated[Optional[int], typer.Option(help="Also report linear k-shot top-1 (e.g. 5).")] = None,
    with_bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Measure train and inference img/s on this device.")] = True,
    settings: o.SetOpt = None,
    config: o.ConfigOpt = None,
    results_dir: o.ResultsDir = None,
    data_dir: o.DataDir = None,
    device: o.Device = None,
    fmt: o.FormatOpt = Format.table,
    wide: o.Wide = False,
    print_config: o.PrintConfig = False,
    dry_run: o.DryRun = False,
    on: o.DryRunDevice = None,
    tracker: o.TrackerOpt = None,
    launcher: o.LauncherOpt = None,
    parallel: o.ParallelOpt = None,
    gpus_per_job: o.GpusPerJobOpt = None,
    partition: o.PartitionOpt = None,
    time_limit: o.TimeLimitOpt = None,
    slurm_arg: o.SlurmArgOpt = None,
    tasks_per_job: o.TasksPerJobOpt = None,
) -> None:
    """Train each model under one preset and budget, evaluate and bench it; one joined table."""
    from mixerbench.experiments import sweep

    out = view.run(ctx, sweep, tracker, f"compare-{preset}", name="compare", **o.what(print_config, dry_run, on),
                   models=[m.strip() for m in models.split(",") if m.strip()], dataset=dataset,
                   preset=preset, seeds=seeds, epochs=epochs, steps=steps, fewshot=fewshot,
                   with_bench=with_bench, root=results_dir, data_dir=data_dir, device=device,
                   settings=settings, config=config, launcher=o.launcher(
                       launcher, parallel, gpus_per_job, partition, time_limit, slurm_arg, tasks_per_job, tracker))
    view.sweep("compare", out, fmt, wide)


@app.command(cls=o.RegistryHelp)
def reproduce(
    ctx: typer.Context,
    artifact: Annotated[str, typer.Argument(help="The experiment to run.")],
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset (default: the budget's); avg5: a comma-separated list; released: ImageNet, by default imagenet-1k.")] = None,
    init: Annotated[Optional[str], typer.Option("--init", help="avg5: the weights to fine-tune (run dir, .safetensors, timm:<name>[.<tag>]).")] = None,
    budget: Annotated[str, typer.Option(help="smoke (CPU minutes) | cpu (CIFAR-10, about an hour on 2 cores) | small (GPU minutes) | full (the preset's schedule).")] = "smoke",
    upstream: Annotated[Optional[str], typer.Option(help="transfer: the pre-training dataset; avg5: the one --init was pre-trained on, for the paper's row (default: the run's own, or the released weights' provenance).")] = None,
    models: Annotated[Optional[str], typer.Option(help="throughput: the models to bench; data-scaling: which of mixer,vit,resnet.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="throughput, released: batch size.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training length of every cell in optimizer steps (as --set steps=N).")] = None,
    real_labels: Annotated[Optional[Path], typer.Option("--real-labels", help="released: ImageNet ReaL labels (the public real.json), matched by ILSVRC2012_val_* file name.")] = None,
    fewshot: Annotated[bool, typer.Option("--fewshot", help="released: also the linear 5-shot probe on ImageNet (shots from its train split).")] = False,
    settings: o.SetOpt = None,
    config: o.ConfigOpt = None,
    results_dir: o.ResultsDir = None,
    data_dir: o.DataDir = None,
    device: o.Device = None,
    wide: o.Wide = False,
    print_config: o.PrintConfig = False,
    dry_run: o.DryRun = False,
    on: o.DryRunDevice = None,
    launcher: o.LauncherOpt = None,
    parallel: o.ParallelOpt = None,
    gpus_per_job: o.GpusPerJobOpt = None,
    partition: o.PartitionOpt = None,
    time_limit: o.TimeLimitOpt = None,
    slurm_arg: o.SlurmArgOpt = None,
    tasks_per_job: o.TasksPerJobOpt = None,
) -> None:
    """Run the scaled-down experiment behind a paper table or figure; CSV and figure in results/."""
    from mixerbench.experiments import sweep

    out = view.run(ctx, sweep, name=artifact, **o.what(print_config, dry_run, on),
                   root=results_dir, dataset=dataset, budget=budget, device=device,
                   data_dir=data_dir, settings=settings, config=config, steps=steps,
                   upstream=upstream, init=init, models=models.split(",") if models else None,
                   batch_size=batch_size, real_labels=real_labels, fewshot=fewshot,
                   launcher=o.launcher(launcher, parallel, gpus_per_job, partition, time_limit, slurm_arg, tasks_per_job))
    view.sweep(artifact, out, Format.table, wide, title=f"reproduce {artifact}")


@app.command("datasets")
def datasets_cmd(
    ctx: typer.Context,
    name_or_path: Annotated[Optional[str], typer.Argument(help="Known name, hf:<hub id> or a folder; none lists the known datasets.")] = None,
    fmt: o.FormatOpt = Format.table,
    wide: o.Wide = False,
    data_dir: o.DataDir = None,
    bench: Annotated[bool, typer.Option("--bench", help="Img/s per CPU core of the train input pipeline (ours, its host share, timm's create_loader, a decode floor) on the train split; appends to inputs.csv.")] = False,
    device: o.Device = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Batch size for --bench.")] = 128,
    workers: Annotated[Optional[int], typer.Option(help="Loader worker processes for --bench (default: min(8, cores)).")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Output side for --bench (default 224, or the stored size).")] = None,
    randaug: Annotated[float, typer.Option(help="RandAugment(2, m) magnitude for --bench; 0 turns it off.")] = 15,
    mixup: Annotated[float, typer.Option(help="Mixup strength for --bench; 0 turns it off.")] = 0.5,
    images: Annotated[int, typer.Option(help="Images per measured pass for --bench.")] = 2048,
    repeats: Annotated[int, typer.Option(help="Rounds for --bench, each measuring every pipeline once.")] = 3,
    results_dir: o.ResultsDir = None,
    write_jpegs: Annotated[Optional[int], typer.Option("--write-jpegs", metavar="N", help="First write N photo-like 500x375 JPEGs (quality 90, 10 class folders) into the new folder NAME_OR_PATH: a stand-in for ImageNet for --bench.")] = None,
) -> None:
    """Known datasets; with NAME_OR_PATH: where it was found, its splits, sizes and classes."""
    from mixerbench.data import datasets_command

    out = view.run(ctx, datasets_command, name_or_path=name_or_path,
                   data_dir=data_dir, bench=bench and name_or_path is not None, device=device,
                   root=results_dir, write_jpegs=write_jpegs, batch_size=batch_size,
                   workers=workers, img_size=img_size, randaug_m=randaug, mixup_p=mixup,
                   images=images, repeats=repeats)
    view.datasets(out, name_or_path, bench, fmt, wide, repeats)


@app.command("export")
def export_cmd(
    source: Annotated[str, typer.Argument(metavar="RUN_OR_CHECKPOINT", help="Run directory (its config and summary fill the model card) or a mixerbench .safetensors checkpoint.")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="New folder to write config.json, model.safetensors and README.md into (must not exist, or be empty).")],
    push: Annotated[Optional[str], typer.Option("--push", help="Then upload the folder to this Hugging Face hub repo, e.g. you/mixer-b16-cifar10.")] = None,
    license: Annotated[str, typer.Option("--license", help="Licence identifier for the model card.")] = "apache-2.0",
) -> None:
    """Export a run as a timm model folder: timm.create_model('local-dir:OUT_DIR', pretrained=True)."""
    from mixerbench.export import export as run_export, push as run_push

    res = run_export(source, out_dir, repo_id=push, license=license)
    view.export(res, run_push(res["out_dir"], push) if push else None)  # pushed before printing


@app.command()
def upgrade(results_dir: o.ResultsDir = None) -> None:
    """Rewrite older results CSVs under today's columns (rows kept, a row's recipe id worked out
    from its run's config.json where the run folder is there); unknown columns are refused."""
    from mixerbench.upgrade import upgrade as upgrade_folder

    view.upgraded(upgrade_folder(results_dir), results_dir)
