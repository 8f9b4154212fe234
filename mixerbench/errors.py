"""User-facing errors.

Anything a user can get wrong (a name, a path, a shape, an option) raises `UserError` with one plain
sentence that says what was wrong and what to do. `cli.py` turns it into exit status 2 without a
traceback; the library never prints.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input: the message is one sentence meant for the terminal."""


class DamagedFileError(UserError):
    """A file mixerbench reads back is damaged or not one it wrote (torn, binary, another header).

    Callers that pass over a missing input (e.g. `plot` skipping a figure with no CSV yet) must
    not pass over this one: skipping would hide the damage behind a figure quietly left out.
    """


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean a, b?' for the closest names, or '' when none is close."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)
    if not hits:
        return ""
    return " Did you mean " + ", ".join(lowered[h] for h in hits) + "?"


# An error line names what was wrong, not all of it: a name (a path, a --set key, an --arch)
# longer than this is shown by its two ends, and the line as a whole is bounded too.
MAX_NAME_CHARS = 100
MAX_LINE_CHARS = 1000


def shorten(message: str) -> str:
    """`message` with every run of non-space characters over MAX_NAME_CHARS shortened to its
    start and end around '...', and at most MAX_LINE_CHARS characters in all."""
    import re

    def cut(m: re.Match) -> str:
        word = m.group()
        return word[:60] + "..." + word[-30:]

    message = re.sub(r"\S{%d,}" % (MAX_NAME_CHARS + 1), cut, message)
    if len(message) > MAX_LINE_CHARS:
        message = message[:MAX_LINE_CHARS - 3] + "..."
    return message
