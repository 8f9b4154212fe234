"""How the library reports progress: one callback, `log(event, info)`.

Every long-running library function takes `log` and calls it with an event name and a dict;
the caller decides what to do with it (`mixerbench.view.ProgressView` shows it, and
`trackers.Tracked` records the events trackers care about). Each module that emits events
declares them beside its code in a class `Event` (`train.Event`, `launch.Event`, ...); this
module declares the one event several modules emit, a phase counted in parts.
"""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str, dict], None]


def noop(event: str, info: dict) -> None:
    """The `log` of a caller that wants no progress."""


class Event:
    """Events emitted by more than one module, as `log(event, info)`."""

    PROGRESS = "progress"  # a phase counted in parts (evaluate, bench): what, done, total


def progress(log: Log, what: str, done: int, total: int) -> None:
    """Report that `done` of `total` parts are finished and `what` is under way."""
    log(Event.PROGRESS, dict(what=what, done=done, total=total))
