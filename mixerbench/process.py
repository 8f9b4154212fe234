"""What a command meets in the process it runs in: its home, its working folder, its standard
streams and its signals, each made safe before any work.

- An empty (or relative) `HOME` is no home: it is dropped, so mixerbench and every library it
  loads fall back to the account's home as with `HOME` unset, instead of writing
  `/.cache/...` at the root of the file system; with no home at all, a cache folder must be
  named (`cache_home`).
- A working folder deleted under the shell is one sentence, not a traceback from the first
  relative path.
- A closed standard stream at start (`2>&-`) gets /dev/null on its descriptor, so no file
  opened later takes descriptor 1 or 2 and receives a library's warnings.
- A pipe whose reader went away (`| head -1`) is written to /dev/null from then on: the
  command finishes its work (rows are written once), then exits 141 as a process killed by
  SIGPIPE does when stdout broke. A broken stderr costs only the progress lines.
- SIGTERM raises `Terminated` in the main thread, so cleanup (`finally`) runs as for Ctrl-C.

Written by hand: neither Click nor Python does any of this for a long-running command.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from pathlib import Path

from mixerbench.errors import UserError

_BROKEN_ERRNOS = (errno.EPIPE, errno.EBADF, errno.ECONNRESET)
_broken: set[int] = set()  # descriptors whose reader went away


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt (cleanup runs), never caught as an
    Exception."""


def account_home() -> Path | None:
    """The home folder: `$HOME` when it is an absolute path, else the account's entry in the
    password database; None when there is neither (a container user without an entry)."""
    home = os.environ.get("HOME", "")
    if os.path.isabs(home):
        return Path(home)
    try:
        import pwd

        entry = pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError, OSError):
        return None
    return Path(entry) if entry and os.path.isabs(entry) else None


def cache_home() -> Path:
    """`$XDG_CACHE_HOME` when absolute, else `<home>/.cache`; a UserError when there is no home
    to put it in (the caller's variable that names a cache folder is the way out)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg)
    home = account_home()
    if home is None:
        raise UserError("This account has no home folder (HOME is empty or unset and the "
                        "password database names none), so there is no cache folder; set "
                        "MIXERBENCH_CACHE and HF_HOME to folders, or HOME.")
    return home / ".cache"


def settle_home() -> None:
    """Drop an empty or relative `HOME` (see the module docstring)."""
    if "HOME" in os.environ and not os.path.isabs(os.environ["HOME"]):
        del os.environ["HOME"]
        home = account_home()
        if home is not None:
            os.environ["HOME"] = str(home)


def check_working_folder() -> None:
    """A working folder that no longer exists is a UserError (every relative path, the default
    `results` folder among them, would fail on it)."""
    try:
        os.getcwd()
    except OSError:
        raise UserError("The current folder no longer exists (it was deleted or moved while the "
                        "shell was in it); cd into an existing folder and run the command "
                        "again.") from None


class _Tolerant:
    """A text stream whose write and flush survive the reader going away: the descriptor is
    pointed at /dev/null and the loss remembered (`stdout_broken`)."""

    def __init__(self, stream, fd: int):
        self._stream, self._fd = stream, fd

    def _guard(self, call, *args):
        try:
            return call(*args)
        except OSError as exc:
            if exc.errno not in _BROKEN_ERRNOS:
                raise
            _silence(self._fd)
            try:
                return call(*args)
            except OSError:
                return None

    def write(self, text):
        return self._guard(self._stream.write, text)

    def writelines(self, lines):
        return self._guard(self._stream.writelines, lines)

    def flush(self):
        return self._guard(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _silence(fd: int) -> None:
    _broken.add(fd)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def _real_fd(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, ValueError, OSError):
        return None  # a test runner's in-memory stream: nothing to guard


def guard_streams() -> None:
    """Give closed standard descriptors /dev/null and wrap stdout and stderr (module docstring)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if stream is None:  # Python found the descriptor closed at start
            setattr(sys, name, open(fd, "w", closefd=False))
        elif not isinstance(stream, _Tolerant) and _real_fd(stream) == fd:
            setattr(sys, name, _Tolerant(stream, fd))


def stdout_broken() -> bool:
    """Whether stdout's reader went away during the command."""
    return 1 in _broken


def raise_on_sigterm() -> None:
    """SIGTERM raises `Terminated` in the main thread (a handler set by the training loop for
    the length of a run takes precedence, and restores this one)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise Terminated()

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, handler)
