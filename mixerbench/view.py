"""What a person sees: the CLI's one view of tables, progress, results and errors.

`cli.py` parses options and calls one library function; everything it prints goes through
here. The library never prints: it returns values and reports progress as `log(event,
info)` events (declared beside their emitters, `events.Log`), which `ProgressView` renders (a
rich bar on a terminal, a line every few seconds in a log) and `trackers.Tracked` records.

Tables (`emit`) are fitted to the terminal: every number goes through `formatting` (the
markdown files use the same), a short view of the columns that matter shows by default with
as many more as fit, `--wide` shows them all, and a table that would still not fit prints as
one block per row, so that no cell is ever cut. Nothing heavy is imported at module level:
`mixerbench --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from enum import Enum
from pathlib import Path

import typer
from typer.core import TyperGroup

from mixerbench import formatting


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def rank0() -> bool:
    from mixerbench.runtime import rank

    return rank() == 0


def console(stderr: bool = False):
    """The terminal (stdout, or stderr for progress and errors); under torchrun only rank 0
    has one. A pipe or a file gets `$COLUMNS` columns, else 200, so a log keeps whole tables."""
    from rich.console import Console

    if not rank0():  # other torchrun ranks stay silent: one process speaks for the run
        return Console(file=open(os.devnull, "w"))
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty():
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 0 else 200
    return Console(stderr=stderr, highlight=False, width=width)


def setup(quiet: bool) -> dict:
    """The view's settings for a command (`ctx.obj`: --quiet). A terminal that cannot show a
    character (PYTHONIOENCODING=ascii, a file name that is not UTF-8) gets a replacement
    character, never a UnicodeEncodeError. A working folder deleted under the shell is one
    sentence (`process.check_working_folder`)."""
    from mixerbench.errors import UserError
    from mixerbench.process import check_working_folder

    try:
        check_working_folder()
    except UserError as exc:
        fail(str(exc))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="replace")
        except (AttributeError, ValueError, OSError):
            pass
    return {"quiet": quiet}


def is_quiet(ctx: typer.Context) -> bool:
    """--quiet, stderr not a terminal, or not rank 0: plain lines instead of live progress."""
    return bool((ctx.obj or {}).get("quiet")) or not sys.stderr.isatty() or not rank0()


def e(value) -> str:
    """A value from a user or a file (a path, a dataset, a run name) as literal rich text: a
    `[/]` in it is shown, never read as markup."""
    from rich.markup import escape

    return escape(str(value))


def say(*lines: str) -> None:
    """Lines on stdout (rich markup allowed; values escaped with `e`): wrapped between words
    on a terminal, never between a number and its unit, one line each on a pipe or in a log."""
    out = console()
    for line in lines:
        _line(out, line)


def _line(out, line: str) -> None:
    """`line` on `out`: on a terminal wrapped between words (`_wrapped`), on a pipe or in a log
    whole; `say`'s lines and the progress view's alike."""
    out.print(_wrapped(out, line) if out.is_terminal else line, soft_wrap=True)


# The space between a number and its unit ("99.7 %", "32 px", "1,692 img/s", "3 x"), which
# `say` and `claims` never wrap at (an 80-column terminal showed "top-5 99.7" and "%" on two
# lines). Rich wraps at every space and has no way to keep two words together, so `_wrapped`
# stands a one-cell character that is no whitespace (a private-use code point) in for these
# spaces while it wraps.
_UNIT_SPACE = re.compile(r"(?<=\d) (?=(?:%|px|img/s|ms|s|min|h|[kMGTP]?FLOPs|[kMG]i?B|x)(?![\w/]))")
_KEEP = "\ue000"


def _wrapped(out, line: str):
    """`line` (rich markup) as rich wraps it at `out`'s width, never breaking at `_UNIT_SPACE`."""
    from rich.text import Text

    text = Text.from_markup(line)
    lines = Text(_UNIT_SPACE.sub(_KEEP, text.plain), spans=text.spans).wrap(out, out.width)
    joined = Text("\n").join(lines)
    return Text(joined.plain.replace(_KEEP, " "), spans=joined.spans)


def wrote(paths) -> None:
    say(*(f"wrote {e(p)}" for p in paths))


# ----------------------------------------------------------------------------------- errors


def fail(message: str, code: int = 2) -> None:
    """Print one sentence to stderr and exit (status 2 for bad input)."""
    from rich.markup import escape

    from mixerbench.errors import shorten

    # escaped: a message quoting user input such as `[/x]` must print, not be read as markup;
    # control characters a user typed (a newline in a --set value) are shown, not obeyed, so
    # the message stays one line
    message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    message = shorten(message)  # a 100,000-character name in it is not a 100,000-character line
    console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str, printer=None) -> None:
    """One yellow line on stderr (a tracker that stopped); the command goes on."""
    message = " ".join(message.split())  # one line, however long (a tracker's error text)
    (printer or console(stderr=True).print)(f"[yellow]warning:[/] {e(message)}")


def user_errors(fn):
    """Turn the library's `UserError` into exit status 2 with its one-sentence message."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mixerbench.errors import UserError
        from mixerbench.files import describe

        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            fail(str(exc))
        except OSError as exc:  # read-only, full disk, a file or folder in the way: one sentence
            sentence = describe(exc)
            if sentence is None:
                raise
            fail(sentence)

    return wrapper


def _is_usage_error(exc: BaseException) -> bool:
    """Click's UsageError (bad option, missing value, unknown command), recognised without
    importing the Click that Typer vendors privately."""
    return any(c.__name__ == "UsageError" for c in type(exc).__mro__)


class OneLineUsageErrors(TyperGroup):
    """Click's usage errors (unknown command or option, wrong type, missing value) as one
    sentence with exit status 2, like every other bad input, instead of a usage box."""

    def parse_args(self, ctx, args):  # options of `mixerbench` itself, e.g. a misspelt --quiet
        if not args:  # no arguments at all shows the help (no_args_is_help)
            return super().parse_args(ctx, args)
        _refuse_non_utf8(args)
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:
            if not _is_usage_error(exc):
                raise
            _usage_error(exc, ctx)

    def invoke(self, ctx):  # unknown command; the options and arguments of a command
        from mixerbench.process import Terminated, stdout_broken

        try:
            out = super().invoke(ctx)
        except Exception as exc:
            if not _is_usage_error(exc):
                raise
            _usage_error(exc, ctx)
        except KeyboardInterrupt:
            fail("Interrupted (Ctrl-C); files already written are complete.", code=130)
        except Terminated:
            fail("Stopped by SIGTERM; files already written are complete.", code=143)
        if stdout_broken():  # the reader of stdout went away; the work itself was done
            raise typer.Exit(141)
        return out

    def main(self, *args, **kwargs):
        """The process made safe first (`mixerbench.process`): an empty HOME, closed or broken
        standard streams, SIGTERM as an exception (restored afterwards: tests call this
        in-process)."""
        import signal
        import threading

        from mixerbench.process import guard_streams, raise_on_sigterm, settle_home

        guard_streams()
        settle_home()
        before = signal.getsignal(signal.SIGTERM)
        raise_on_sigterm()
        try:
            return super().main(*args, **kwargs)
        finally:
            if before is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, before)


def _refuse_non_utf8(args) -> None:
    """A path named in bytes that are not UTF-8 (an argument, or a folder in the environment)
    could be neither written to a results CSV nor shown: refused before any work, shown with
    replacement characters."""
    named = [(a, "The argument") for a in args] + [
        (os.environ.get(k, ""), f"${k}") for k in ("MIXERBENCH_RESULTS", "MIXERBENCH_DATA")]
    for value, what in named:
        try:
            value.encode()
        except UnicodeEncodeError:
            shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            fail(f"{what} '{shown}' is not UTF-8 (a file or folder name in another encoding); "
                 "rename it to a UTF-8 name.")


def _usage_error(exc, ctx) -> None:
    where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
    text = " ".join(exc.format_message().split())
    fail(f"{text if text.endswith(('.', '?')) else text + '.'} See `{where} --help`.",
         code=exc.exit_code)


# ----------------------------------------------------------------------------------- tables


def records(df) -> list[dict]:
    """DataFrame rows as dicts with NaN as None (blank cells, JSON null)."""
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in df.to_dict("records")]


# Columns of prose (a setting's meaning, a paper row's source or note): wrapped at word
# boundaries within `PROSE_WIDTH` columns, where every other cell is kept on one line.
PROSE = {"meaning", "source", "note", "group", "value", "class_names", "what"}
PROSE_WIDTH = 36


def _rich_table(d: "formatting.Display", title: str | None, caption: str | None = None):
    from rich import box
    from rich.table import Table

    table = Table(title=e(title) if title else None, caption=e(caption) if caption else None,
                  box=box.SIMPLE_HEAD, title_justify="left", caption_justify="left")
    for c in d.columns:  # a cell is never cut: a table that does not fit is not drawn
        prose = c.key in PROSE
        table.add_column(e(c.header), justify="right" if c.numeric else "left",
                         no_wrap=not prose, max_width=PROSE_WIDTH if prose else None,
                         overflow="fold" if prose else "ellipsis")  # a long path folds
    for row in d.rows:  # escaped: labels like mixer-t4[width=64] are not rich markup
        table.add_row(*(e(v) for v in row))
    return table


def _fits(d: "formatting.Display", out, width: int) -> bool:
    """Whether `d` drawn at its natural width (no cell wrapped or cut) fits in `width`."""
    unbounded = out.options.update_width(10**6)
    return out.measure(_rich_table(d, None), options=unbounded).maximum <= width


def fitted(d: "formatting.Display", out, width: int, short: list[str] | None,
           wide: bool) -> "formatting.Display | None":
    """The columns of `d` to show in `width` columns: with `wide` all of them; else the
    `short` ones (all when there is no short list) and then, in the table's order, every other
    one that still fits. None when even those do not fit (the caller prints records)."""
    if wide or not short:
        return d if _fits(d, out, width) else None
    keys = [k for k in short if k in d.keys()]
    while len(keys) > 1 and not _fits(d.only(keys), out, width):
        keys = keys[:-1]  # the short list is in order of importance: the last goes first
    if not _fits(d.only(keys), out, width):
        return None
    for k in d.keys():
        if k not in keys and _fits(d.only([*keys, k]), out, width):
            keys.append(k)
    return d.only(keys)


def _record_view(d: "formatting.Display", out, title: str | None) -> None:
    """One block per row, `header: value` a line each: for tables wider than the terminal."""
    if title:
        out.print(f"[bold]{e(title)}[/]", soft_wrap=True)
    pad = max((len(c.header) for c in d.columns), default=0)
    for row in d.rows:
        out.print()
        for c, v in zip(d.columns, row):
            if v:
                out.print(f"  {e(c.header.ljust(pad))}  {e(v)}", soft_wrap=True)


def emit(rows: list[dict], fmt: Format, title: str | None = None,
         columns: list[str] | None = None, *, short: list[str] | None = None,
         wide: bool = False, headers: dict | None = None, caption: str | None = None,
         paper: bool = False) -> None:
    """Print rows as a table fitted to the terminal, or as CSV or JSON (machine-readable
    formats go to stdout bare, every column, raw numbers).

    `short` names the columns a person needs first, in order of importance (`fitted`);
    `--wide` passes `wide`. Columns blank in every row are not shown. `paper`: the rows are
    the paper's own table (its accuracies keep the paper's digits).
    """
    columns = columns or (list(rows[0]) if rows else [])
    if not rank0():
        return
    if fmt == Format.json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    if fmt == Format.csv:
        import csv

        from mixerbench.results import neutral

        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()  # text cells as the results CSVs hold them: never a formula
        writer.writerows({k: neutral(v) if isinstance(v, str) else v for k, v in r.items()}
                         for r in rows)
        return
    out = console()
    full = formatting.display(rows, columns, headers, paper).drop_empty()
    shown = fitted(full, out, out.width, short, wide)
    if shown is None:
        _record_view(full, out, title)
        return
    out.print(_rich_table(shown, title, caption))
    hidden = [c.header for c in full.columns if c.key not in shown.keys()]
    if hidden:
        say(f"[dim]{len(hidden)} more column{'s' if len(hidden) > 1 else ''} "
            f"({e(', '.join(hidden))}): --wide shows every column, --format csv the raw values[/]")


# --------------------------------------------------------------------------------- progress


class ProgressView:
    """Renders the library's events: a rich bar on a terminal, a line every few seconds on a
    pipe (or with --quiet). A `stage` (loading data, the final evaluation) shows a spinner on a
    terminal, and on a pipe a line once it has lasted `STAGE_SECONDS`: a phase that ends at
    once (or fails at once, before its one-line error) prints nothing. The bar's columns are
    chosen for the terminal's width, so that at 80 columns nothing in it is cut."""

    STAGE_SECONDS = 3.0
    PLAIN_SECONDS = 10.0  # on a pipe, a line every so often while training or a part goes on
    WIDE = 110  # columns from which the bar shows epoch and lr besides loss and img/s

    def __init__(self, quiet: bool):
        self.console = console(stderr=True)
        self.live = not quiet
        self.bar = None
        self.task = None
        self.last_plain = 0.0
        self.pending = None  # the current stage's spinner or timer
        self.part = None  # the description of the part `progress` counts now
        self.handlers: dict = {}

    # the modules that declare events, each imported only once it has emitted one
    EMITTERS = ("mixerbench.events", "mixerbench.train", "mixerbench.launch",
                "mixerbench.experiments", "mixerbench.trackers", "mixerbench.evaluate",
                "mixerbench.report")

    def _handlers(self, loaded_only: bool = False) -> dict:
        """Each event the library emits, by the name its emitting module declares, and how it
        is shown. With `loaded_only`, only the events of modules already imported (an event's
        emitter always is), so that rendering a bench does not import the report."""
        import importlib

        out = {}
        for name in self.EMITTERS:
            if loaded_only and name not in sys.modules:
                continue
            event = importlib.import_module(name).Event
            out.update({getattr(event, k): h for k, h in self._rendering(name).items()})
        return out

    def _rendering(self, module: str) -> dict:
        """Event attribute name -> how it is shown, for each emitting module."""
        done = self._print
        return {
            "mixerbench.events": {"PROGRESS": lambda i: self.progress(i["what"], i["done"], i["total"])},
            "mixerbench.train": {
                "START": self._start, "RESUMED": lambda i: done(
                    f"resuming {e(i['run_dir'])} from step {formatting.count(i['step'])}"),
                "RESTARTED": lambda i: warn(
                    f"{Path(i['run_dir']).name} has no checkpoint to resume from, so it starts "
                    f"again from step 0; the {i['dropped']} metric row(s) of the earlier "
                    "attempt were dropped.", done),
                "STEP": self._step, "EVAL": self._eval, "STAGE": lambda i: self._stage(i["what"]),
                "FINISHED": self._finished, "END": lambda i: self.stop()},
            "mixerbench.launch": {"CELL": self._cell, "LAUNCH": self._launch, "JOB": self._job,
                                  "CELLS": self._cells},
            "mixerbench.experiments": {
                "FEWSHOT": lambda i: done(f"linear {i['shots']}-shot probe of {e(i['run_id'])}"),
                "BENCH": lambda i: done("benchmarking " + e(", ".join(
                    formatting.label(m) for m in i["models"])) + " on this device"),
                "COMPARED": lambda i: None},  # the table follows, printed by the command
            "mixerbench.trackers": {
                "WARNING": lambda i: warn(i["message"], done),
                "WROTE": lambda i: done(f"[dim]{i['tool']}: {e(i['name'])} in {e(i['where'])}[/]")},
            "mixerbench.evaluate": {"EVALUATED": lambda i: self.stop()},
            "mixerbench.report": {"DRAWN": lambda i: None},  # the command lists the files
        }[module]

    def __call__(self, event: str, info: dict) -> None:
        from mixerbench.events import Event

        if event != Event.PROGRESS:  # `progress` ends its stage when its part changes
            self._end_stage()
            self.part = None
        if event not in self.handlers:
            self.handlers = self._handlers(loaded_only=True)
        handler = self.handlers.get(event)
        if handler is not None:
            handler(info)

    def _start(self, info: dict) -> None:
        self.stop()
        world, batch = info["world_size"], info["batch_size"]
        procs = (f"{batch // world:,} per process x {world} processes" if world > 1
                 else "1 process")
        _line(self.console,
              f"[bold]{e(formatting.label(info['model']))}[/] on [bold]{e(info['dataset'])}[/] at "
              f"{info['img_size']} px (pipeline {e(info['pipeline'])}, eval "
              f"{e(info['eval_pipeline'])}): {formatting.count(info['total_steps'])} steps at "
              f"global batch {batch:,} ({procs}), {e(info['device'])} {info['dtype']}")
        _line(self.console, f"[dim]run folder {e(info['run_dir'])}[/]")
        self._bar("train", info["total_steps"], info["step"])

    def _stats(self, info: dict) -> str:
        loss, speed = f"loss {info['loss']:.4f}", f"{formatting.rate(info['img_per_sec'])} img/s"
        if self.console.width < self.WIDE:
            return f"{loss}  {speed}"
        return f"epoch {info['epoch']:.2f}  {loss}  lr {info['lr']:.2e}  {speed}"

    def _step(self, info: dict) -> None:
        import time

        if self.bar is not None:
            self.bar.update(self.task, completed=info["step"], stats=self._stats(info))
        elif (time.monotonic() - self.last_plain > self.PLAIN_SECONDS
              or info["step"] == info["total_steps"]):
            self.last_plain = time.monotonic()
            stats = (f"epoch {info['epoch']:.2f}  loss {info['loss']:.4f}  lr {info['lr']:.2e}  "
                     f"{formatting.rate(info['img_per_sec'])} img/s")
            _line(self.console, f"step {formatting.count(info['step'])}/"
                                f"{formatting.count(info['total_steps'])}  {stats}")

    def _eval(self, info: dict) -> None:
        if info.get("top1") is not None:
            self._print(f"eval @ step {formatting.count(info['step'])}: top-1 "
                        f"{formatting.pct(info['top1'])} %  top-5 {formatting.pct(info['top5'])} %"
                        f"  loss {info['eval_loss']:.4f}")

    def _finished(self, info: dict) -> None:
        self.stop()
        self.console.print(f"{e(info['run_id'])}: already finished, read back (top-1 "
                           f"{formatting.pct(info['top1'])} %)", soft_wrap=True)

    def _cell(self, info: dict) -> None:
        self.stop()
        what = e(", ".join(f"{k} {formatting.label(v)}" for k, v in info.items()
                           if k not in ("of", "index")))
        count = e(f"[{info['index']}/{info['of']}] ") if "of" in info else ""
        _line(self.console, f"[bold magenta]{count}{what}[/]")

    def _launch(self, info: dict) -> None:
        self.stop()
        how = f"{info['launcher']} jobs"
        if info.get("auto"):  # no --launcher: the command chose processes (launch.auto_launcher)
            how = (f"processes of {info['threads']} torch thread each (on a CPU, faster than "
                   "one after another; --launcher picks another way)")
        _line(self.console, f"[bold magenta]{info['cells']} cells as {how}, up to "
                            f"{info['parallel']} at once[/]; job logs in {e(info['folder'])}")

    def _cells(self, info: dict) -> None:
        """Launched cells' progress on a terminal: a bar of cells (each running one counted by
        its share of steps), at its full count once they have all ended. On a pipe the job
        events' lines (submitted, started, finished) are the progress."""
        if self.live and self.bar is None and info["running"]:
            self._bar("cells", info["of"], 0)
        if self.bar is not None:
            self.bar.update(self.task, completed=info["done"], total=info["of"],
                            stats=f"{info['running']} running")
            if not info["running"] and info["done"] >= info["of"]:  # all of them have ended
                self.stop()

    def _job(self, info: dict) -> None:
        """A launched cell: submitted, started, requeued, finished, read back or failed."""
        from mixerbench.launch import JobState

        keys = ("state", "job_id", "index", "of", "run_id", "top1", "error", "log", "restarts")
        what = e(", ".join(f"{k} {v}" for k, v in info.items() if k not in keys))
        count = e(f"[{info['index']}/{info['of']}] ") if "index" in info else ""
        state, job = info["state"], e(info["job_id"])
        if state in (JobState.SUBMITTED, JobState.STARTED):
            line = f"{state} {what} (job {job})"
        elif state == JobState.REQUEUED:
            line = (f"requeued {what} (job {job}, restart {info['restarts']}): it resumes from "
                    "its last checkpoint")
        elif state == JobState.FAILED:
            line = (f"[bold red]{count}{what} failed[/] (job {job}): {e(info['error'])}; "
                    f"log {e(info['log'])}")
        else:
            done = "read back" if state == JobState.REUSED else "trained"
            line = (f"[bold magenta]{count}{what}[/]: {e(info['run_id'])} {done}, "
                    f"top-1 {formatting.pct(info['top1'])} %")
        _line(self.console, line)

    def progress(self, description: str, done: int, total: int) -> None:
        """A phase counted in parts (evaluate's stages, bench's models, JPEGs written): each
        new part a line, and on a terminal a bar of the parts below them. On a pipe a part
        gets its line once it has lasted `STAGE_SECONDS`, and while it goes on, a line with
        its count every `PLAIN_SECONDS` (a log gets a few lines, not one per update)."""
        import time

        new, self.part = description != self.part, description
        if self.live:
            if self.bar is None:
                self._bar("", total, done)
            if done < total and new:
                self._print(f"[dim]{e(description)}[/]")
            self.bar.update(self.task, completed=done, total=total)
            return
        if done >= total or new:
            self._end_stage()
            self.last_plain = time.monotonic()
        if done >= total:
            self.part = None
        elif new:
            self._stage(description)
        elif time.monotonic() - self.last_plain > self.PLAIN_SECONDS:
            self.last_plain = time.monotonic()
            self._print(f"[dim]{e(description)}: {formatting.count(done)}/"
                        f"{formatting.count(total)}[/]")

    def _bar(self, label: str, total: int, done: int) -> None:
        if not self.live:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar
        from rich.progress import TimeRemainingColumn

        wide = self.console.width >= self.WIDE
        self.bar = Bar(TextColumn(f"[bold blue]{label}"), BarColumn(bar_width=30 if wide else 12),
                       MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                       TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                       console=self.console, transient=False)
        self.bar.start()
        self.task = self.bar.add_task(label, total=total, completed=done, stats="")

    def _print(self, line: str) -> None:
        _line(self.bar.console if self.bar is not None else self.console, line)

    def _stage(self, what: str) -> None:
        import threading

        if self.live and self.bar is None:
            self.pending = self.console.status(e(what))
            self.pending.start()
        else:
            self.pending = threading.Timer(self.STAGE_SECONDS, self._print, [f"[dim]{e(what)}[/]"])
            self.pending.daemon = True
            self.pending.start()

    def _end_stage(self) -> None:
        if self.pending is not None:
            (self.pending.cancel if hasattr(self.pending, "cancel") else self.pending.stop)()
            self.pending = None

    def stop(self) -> None:
        self._end_stage()
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def run(ctx: typer.Context, fn, tracker: str | None = None, group: str | None = None, *,
        rank0_only: bool = False, **kw):
    """Call a library function with a progress renderer as its `log` (plain lines with
    --quiet or on a pipe), teed to the trackers `--tracker` names (`trackers.Tracked`, the one
    way trackers are fed; checked before any work): Ctrl-C exits 130 and a run that cannot go
    on exits 1, each with one sentence. Under torchrun the process group is torn down once the
    function has succeeded on this rank; with `rank0_only` (one process measures, the others
    would only compete for the device) it runs on rank 0 alone and the others get None."""
    if rank0_only and not rank0():
        return None
    from mixerbench.launch import SweepInterrupted
    from mixerbench.runtime import teardown_distributed
    from mixerbench.trackers import Tracked, parse_trackers
    from mixerbench.train import Interrupted, TrainingStopped

    tracked = parse_trackers(tracker)
    progress = ProgressView(is_quiet(ctx))
    log = Tracked(progress, tracked, group=group)
    status = "failed"  # what a tracker run still open at the end is marked as
    try:
        out = fn(log=log, **kw)
        teardown_distributed()
        status = "finished"
        return out
    except Interrupted as exc:
        status = "killed"
        progress.stop()
        fail(f"Interrupted at step {exc.step:,} of {exc.run_dir.name}; a checkpoint was saved in "
             f"{exc.run_dir}. Run the same command again to continue where it stopped.", code=130)
    except SweepInterrupted as exc:
        progress.stop()
        fail(str(exc), code=130)
    except TrainingStopped as exc:
        progress.stop()
        fail(str(exc), code=1)
    finally:
        log.close(status)
        progress.stop()


# ---------------------------------------------------------------------- what commands print


def summary(s: dict) -> None:
    """A training run's result (and, for an lr grid, the grid)."""
    if not rank0():
        return
    if "lr_grid" in s:
        emit([dict(lr=g["lr"], minival_top1=g["minival_top1"], run_id=g["run_id"],
                   selected="yes" if g["lr"] == s["selected_lr"] else "")
              for g in s["lr_grid"]], Format.table,
             title="fine-tuning lr grid: selected on minival (paper App. C), reported on "
                   f"{s['reported_on']}")
    if s.get("reused"):
        say(f"run {e(s['run_id'])} had already finished; its result:")
    say(f"[bold green]{e(formatting.label(s['model']))}[/] on {e(s['dataset'])} ({e(s['split'])}): "
        f"top-1 [bold]{formatting.pct(s['top1'])} %[/], top-5 {formatting.pct(s['top5'])} %, "
        f"loss {s['loss']:.4f}, {formatting.count(s['steps'])} steps in "
        f"{formatting.seconds(s['train_seconds'])}",
        f"[dim]run folder {e(s['run_dir'])}[/]")


def config(cfg: dict) -> None:
    """A resolved configuration, as the JSON `--config` reads back."""
    if rank0():
        sys.stdout.write(json.dumps(cfg, indent=2) + "\n")


def bench(rows: list[dict] | None, steps: int, root: Path, fmt: Format, wide: bool) -> None:
    """`bench`'s rows: a fitted table with what the numbers measure under it."""
    if rows is None:  # not rank 0
        return
    if fmt != Format.table:
        emit([{k: v for k, v in r.items() if k != "repeat_seconds"} for r in rows], fmt)
        return
    r0 = rows[0]
    peak, prec = r0["peak_tflops"], r0["matmul_precision"]
    tf32 = " (fp32 matmuls run as TF32 on CUDA)" if prec == "tf32" else ""
    if peak:
        mfu = (f"MFU = achieved FLOP/s / the datasheet dense peak of this device in {prec}, "
               f"{formatting.value('peak_tflops', peak)}{tf32}")
    else:
        mfu = (f"MFU n/a: no datasheet peak is known for {r0['device_name']} in {prec} "
               "(CPUs and unlisted GPUs get none)")
    emit([dict(model=formatting.label(r["model"]), mode=r["mode"], batch_size=r["batch_size"],
               img_per_sec=r["img_per_sec_mean"], img_per_sec_std=r["img_per_sec_std"],
               x_first=r["ratio_to_first"], step_ms_median=r["step_ms_median"], gmacs=r["gmacs"],
               achieved_tflops=r["achieved_tflops"], mfu=r["mfu"]) for r in rows],
         Format.table, short=["model", "mode", "img_per_sec", "x_first", "mfu"], wide=wide,
         headers={"x_first": "x first", "gmacs": "MACs/img"},
         title=f"throughput on {r0['device_name']}"
               + (f", {r0['threads']} torch thread{'s' if r0['threads'] != 1 else ''}"
                  if r0.get("threads") and str(r0["device_name"]).startswith("cpu") else "")
               + f" ({r0['dtype']}, "
               f"{'compiled' if r0['compiled'] else 'eager'}), {r0['repeats']} repeats x "
               f"{steps} steps",
         caption=f"img/s per device, measured here: not comparable to the paper's img/s/core on "
                 f"TPU-v3 (Tables 2-3). {mfu}; train FLOPs = 3 x forward. Dense {prec} matmul "
                 f"measured in this run: {formatting.value('matmul_tflops', r0['matmul_tflops'])}.")
    say(f"{len(rows)} row{'s' if len(rows) != 1 else ''} appended to {e(root / 'throughput.csv')}")


def evaluation(res: dict | None, root: Path, fmt: Format) -> None:
    """`evaluate`'s result: accuracy, ReaL, few-shot and shuffle tables, where rows went."""
    if res is None:  # not rank 0
        return
    if fmt != Format.table:
        emit([dict(table=t, **r) for t, rs in res["rows"].items() for r in rs], fmt)
        return
    where = e(f"{formatting.label(res['model'])} on {res['dataset']} ({res['split']}, "
              f"{res['img_size']} px, {res['pipeline']})")
    if res["top1"] is not None:
        say(f"[bold green]{where}[/]: top-1 [bold]{formatting.pct(res['top1'])} %[/], top-5 "
            f"{formatting.pct(res['top5'])} %, loss {res['loss']:.4f} over "
            f"{formatting.count(res['n'])} images")
    else:
        say(f"[bold]{where}[/]: the head does not match the dataset's {res['num_classes']} "
            "classes; few-shot only")
    # a run folder whose run has no recipe yet: it is still training (or was stopped)
    first = next((r for rs in res["rows"].values() for r in rs), {})
    if first.get("run_id") and not first.get("recipe_id") and first.get("steps") is not None:
        say(f"[yellow]run {e(first['run_id'])} has not finished: these are the numbers of its "
            f"checkpoint at step {formatting.count(first['steps'])}[/] (rows without a recipe "
            "id, which tables, figures and claims leave out)")
    if res["real"]:
        say(f"ReaL top-1 [bold]{formatting.pct(res['real']['top1'])} %[/] over "
            f"{formatting.count(res['real']['n'])} labelled images")
    if res["fewshot"]:
        emit([dict(shots=r["shots"], top1=r["top1_mean"], top1_std=r["top1_std"],
                   seeds=r["num_seeds"], l2_reg=r["l2_reg"]) for r in res["fewshot"]],
             Format.table, title=f"linear few-shot top-1 (%) on {res['dataset']} "
                                 f"({res['split']}), mean ± std over seeds")
    if res["shuffle"]:
        emit([dict(train_shuffle=r["train_shuffle"], eval_shuffle=r["eval_shuffle"],
                   metric=r["metric"], top1=r["top1"]) for r in res["shuffle"]],
             Format.table, title=f"pixel shuffles (paper Figure 4) on {res['dataset']} "
                                 f"({res['split']})")
    kept = res.get("kept") or []
    # which table a kept row is of, by its schema's columns: fewshot's have a mean, shuffle's
    # a permutation, accuracy's neither
    few = [r for r in kept if "top1_mean" in r]
    sh = [r for r in kept if "eval_shuffle" in r]
    acc = len(kept) - len(few) - len(sh)
    if len(kept) < sum(len(rs) for rs in res["rows"].values()):
        say(f"rows appended under {e(root)}")
    if acc:
        what = "this evaluation" if acc == 1 else f"these {acc} evaluations"
        say(f"accuracy.csv already held {what} (one row per run, checkpoint step, images "
            "scored, crop, resolution and precision); the recorded row stays")
    if few:
        say(f"fewshot.csv already held {len(few)} of these probes (one row per run, "
            "checkpoint step, shots, images scored and probe setting); the recorded rows were "
            "kept")
    if sh:
        say(f"shuffle.csv already held {len(sh)} of these measurements (one row per run, "
            "checkpoint step, permutation, metric, images scored, crop and precision); the "
            "recorded rows were kept")


def dataset(out: dict, fmt: Format) -> None:
    """`datasets NAME`: where it was found, its splits and classes."""
    if fmt == Format.json:
        sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")
        return
    if fmt == Format.csv:
        emit([dict(dataset=out["name"], split=s, images=n) for s, n in out["splits"].items()], fmt)
        return
    names = out["class_names"] or []
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    rows = [dict(field=k, value=formatting.text(v)) for k, v in out.items()
            if k not in ("splits", "class_names") and v is not None]
    rows += [dict(field=f"split {s}", value=formatting.count(n)) for s, n in out["splits"].items()]
    rows.append(dict(field="class_names", value=shown))
    emit(rows, fmt, title=out["name"])


def export(res: dict, url: str | None) -> None:
    """`export`'s report: what was written, how timm's rebuild agreed, how to load it."""
    c = res["check"]
    agree = "" if c["top1_agreement"] is None else f"top-1 agreement {c['top1_agreement']:.2f} %, "
    say(f"[bold green]wrote {e(res['out_dir'])}[/]: {', '.join(Path(f).name for f in res['files'])} "
        f"({e(res['label'])} as timm's {res['architecture']})",
        f"timm's rebuild vs mixerbench's model on {e(c['what'])}: {agree}"
        f"largest logit difference {c['max_abs_diff']:.2g}")
    if res["gelu"] == "tanh":
        say("note: this Mixer was trained with tanh-approximate GELU (the official code's); "
            "timm's MlpMixer only has exact GELU, hence the difference above (also in the card)")
    if res.get("constructor"):  # no timm entry point builds these shapes
        say(f"load it with {res['constructor']}(**model_args) of {e(res['out_dir'])}/config.json "
            "and load_state_dict (see its README.md)")
    else:
        say(f"load it with timm.create_model(\"local-dir:{e(res['out_dir'])}\", pretrained=True)")
    if url:
        say(f"pushed to {e(url)}")


# Each table's columns a person needs first, in order of importance: the default view shows
# these and then whatever else fits the terminal (`fitted`); --wide shows every column.
SHORT: dict[str, list[str]] = {
    "compare": ["model", "params", "top1_mean", "fewshot_top1", "train_img_per_sec",
                "device_hours", "paper_top1", "diff"],
    "avg5": ["model", "resolution", "avg", "avg5", "paper_avg5", "avg5_diff", "upstream"],
    "released": ["paper_name", "top1", "paper_top1", "top1_diff", "real_top1", "paper_real",
                 "real_diff"],
    "transfer": ["model", "how", "resolution", "top1", "dataset", "upstream"],
    "table1": ["model", "params_m_paper", "params_m_ours", "match"],
    "models": ["name", "params", "gflops", "img_size", "patch_size", "paper_name"],
    "paper-table1": ["paper_name", "params_m", "layers", "patch", "hidden"],
    "paper-table2": ["paper_name", "pretrain", "top1", "top1_real", "top1_avg5", "throughput",
                     "core_days"],
    "paper-table3": ["paper_name", "pretrain", "epochs", "top1", "top1_real", "top1_avg5",
                     "throughput", "core_days"],
    "paper-table4": ["paper_name", "pretrain", "epochs", "lr", "wd", "randaug_m", "mixup_p"],
    "settings": ["key", "default", "meaning", "range", "type"],
    "presets": ["name", "model", "dataset", "epochs"],
    "datasets": ["name", "classes", "splits", "offline", "hub_id"],
    "plan": ["run", "steps", "images", "train_flops", "here_s"],
}
# Headers of the paper's tables, whose columns name the paper's quantities.
PAPER_HEADERS = {"paper_name": "model", "model": "zoo name", "top1": "ImageNet %",
                 "top1_real": "ReaL %", "top1_avg5": "Avg 5 %", "top1_vtab": "VTAB %",
                 "throughput": "img/s/core", "core_days": "TPU-v3 core-days",
                 "core_days_extrapolated": "core-days extrapolated", "params_m": "params (M)",
                 "params_with_head": "params with head", "pretrain": "pre-trained on"}


def table(name: str, rows: list[dict], fmt: Format, wide: bool, title: str | None = None) -> None:
    """A named table (`SHORT`) fitted to the terminal, or CSV / JSON."""
    headers = PAPER_HEADERS if name.startswith("paper-") else None
    columns = [c for c in (rows[0] if rows else {}) if not (name == "models" and c == "gmacs")]
    emit(rows, fmt, title=title, columns=columns, short=SHORT.get(name), wide=wide,
         headers=headers, paper=headers is not None)


def sweep(name: str, out: dict, fmt: Format, wide: bool, title: str | None = None) -> None:
    """What `compare` or `reproduce` returned: its table and files, its cells' configs
    (--print-config) or its plan (--dry-run)."""
    if not out or not rank0():  # under torchrun rank 0 joined the results and reports them
        return
    if "configs" in out:
        return config(out["configs"])
    if "plan" in out:
        return plan(out["plan"])
    if "table" in out and fmt != Format.table:
        return emit(records(out["table"]), fmt)
    if "table" in out:
        shown = out["table"]
        if name == "compare":  # the columns of the markdown table written beside it
            from mixerbench.report.tables import compare_view

            shown = compare_view(shown)
            # a speed is that of the bench its row names (`--no-bench` shows none; runs read
            # back from another device may show that device's bench), not "this device" always
            speed = any(str(c).endswith("img_per_sec") for c in shown.columns)
            title = (f"{out.get('title') or 'compare on ' + str(out.get('dataset'))}"
                     + (" (img/s: the bench each row names)" if speed else ""))
        table(name, records(shown), fmt, wide, title=title)
    for note in out.get("notes", []):  # what the numbers cannot show (a smoke budget, a tie)
        say(f"[bold yellow]note:[/] {e(note)}")
    wrote(out.get("written", []))


def drawn(done: dict) -> None:
    """`plot`'s files, and what it left out and why."""
    wrote(done["written"])
    for skipped, why in done["skipped"].items():
        say(f"[dim]skipped {skipped}: {e(why)}[/]")


def datasets(out, name: str | None, bench: bool, fmt: Format, wide: bool, repeats: int) -> None:
    """`datasets`: the known ones, one dataset's facts, or the input pipeline bench."""
    if name is None:
        emit(out, fmt, title="known datasets (mixerbench/data/__init__.py; any hf:<id> or "
                             "folder also works)", short=SHORT["datasets"], wide=wide)
    elif bench:
        rows = out["rows"]
        emit(rows, fmt, wide=wide, columns=["pipeline", "what", "workers", "img_per_sec",
                                             "img_per_cpu_sec", "timm_ratio"],
             headers={"img_per_cpu_sec": "img/s per core", "timm_ratio": "x timm"},
             title=f"input pipeline, {formatting.count(rows[0]['images'])} images of "
                   f"{out['dataset']} train at {rows[0]['img_size']} px: img/s and img/s per CPU "
                   f"core (median of {repeats} rounds)")
    else:
        dataset(out, fmt)


def upgraded(done: dict, root) -> None:
    """`upgrade`'s report: the files rewritten, the recipe ids filled in and those that could not be."""
    from mixerbench.results import results_dir

    root = results_dir(root)
    for path in done["written"]:
        say(f"upgraded {e(path)}")
    if done["filled"]:
        say(f"gave {done['filled']} row(s) the recipe id of their run's config.json")
    if done["unknown"]:
        say(f"{len(done['unknown'])} run(s) have no finished run folder that names them, so their "
            "rows keep an empty recipe id (tables show each such run on its own)")
    if not done["written"]:
        say(f"nothing to upgrade in {e(root)}: every results file already has this version's "
            "columns")


def claims(verdicts, fmt: Format, write_md: Path | None, changed: bool | None) -> None:
    """`claims`: each verdict in its colour, wrapped under its indent on a terminal; or CSV/JSON."""
    from mixerbench.report.claims import flat_records, to_records, to_text

    if write_md is not None:
        console(stderr=True).print(f"{'wrote' if changed else 'unchanged:'} {e(write_md)}")
    if fmt == Format.json:
        sys.stdout.write(json.dumps(to_records(verdicts), indent=2) + "\n")
        return
    if fmt == Format.csv:
        return emit(flat_records(verdicts), fmt)
    import textwrap

    colours = {"held": "bold green", "not held": "bold red", "not enough evidence": "bold yellow"}
    out = console()
    for style, line in to_text(verdicts):  # a terminal wraps under the line's indent + 4
        if sys.stdout.isatty() and line:
            indent = " " * (len(line) - len(line.lstrip()) + 4)
            # textwrap, not rich: rich has no hanging indent; units kept as `_wrapped` keeps them
            line = textwrap.fill(_UNIT_SPACE.sub(_KEEP, line), out.width, subsequent_indent=indent,
                                 break_long_words=False, break_on_hyphens=False).replace(_KEEP, " ")
        out.print(f"[{colours[style]}]{e(line)}[/]" if style else e(line), soft_wrap=True)


def plan(p: dict) -> None:
    """A --dry-run: the runs, their length and FLOPs, and the estimates."""
    f, est = formatting, p["estimate"]
    rows = [{"run": c.label or c.model, "model": f.label(c.model), "img_size": c.img_size,
             "steps": c.steps, "batch_size": c.batch, "images": c.images,
             "train_flops": c.train_flops, "evaluations": c.evaluations,
             "here_s": "read back" if c.finished else s, "run_id": c.run_id or c.note}
            for c, s in zip(p["cells"], est["seconds_per_cell"])]
    emit(rows, Format.table, title=f"{p['what']} --dry-run: {len(rows)} training run"
                                   f"{'s' if len(rows) != 1 else ''}, nothing written",
         short=SHORT["plan"], headers={"here_s": "here", "run_id": "run id"})
    lines = [f"total: {f.count(est['steps'])} steps, {f.count(est['images'])} training images, "
             f"{f.flops(est['train_flops'])} to train and {f.flops(est['eval_flops'])} to "
             "evaluate",
             f"here: about {f.seconds(est['wall_seconds'])}, {f.hours(est['device_hours'])} "
             f"device-hours (img/s from {est['rates_from']}"
             + (f"; with {', '.join(p['notes'])})" if p["notes"] else ")")]
    if "gpu" in est:
        g = est["gpu"]
        lines.append(f"on one {g['name']}: about {f.seconds(g['seconds'])}, "
                     f"{f.hours(g['device_hours'])} device-hours (its datasheet bf16 peak, "
                     f"{f.engineering(g['peak_tflops'] * 1e12, 'FLOP/s')}, at {g['mfu']:.0%} MFU)")
    if p.get("paper"):
        lines.append(f"the paper: {f.number(p['paper']['core_days'])} TPU-v3 core-days for this "
                     f"row ({e(p['paper']['source'])})")
    say(*(e(line) for line in lines))


def result(out: dict) -> None:
    """What `pretrain` / `finetune` returned: its summary, config (--print-config) or plan."""
    if "configs" in out:
        config(out["configs"])
    elif "plan" in out:
        plan(out["plan"])
    else:
        summary(out["summary"])
