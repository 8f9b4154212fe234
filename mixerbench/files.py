"""The one way into a results folder, and files that are either whole or absent.

Every reader and writer of a results folder (CSVs, locks, run directories, tables, figures,
tracker folders, upgrades) goes through the functions here:

- A results folder, once named through `results.results_dir`, is a confinement root
  (`confine`). Below it no symbolic link is followed, whether it points inside or out: a
  planted link could otherwise turn a write into one outside the folder, or a read into one of
  `/dev/zero`. The folder itself may be a link (the user chose it). Each existing part of a path
  below the root must be a real folder, and the last one a regular file where a file is read or
  replaced.
- Files are opened with `O_NONBLOCK` (and `O_NOFOLLOW` below a root) and checked with `fstat`
  before a byte is read, so a FIFO, socket or device where a file should be cannot block or
  stream; reads are bounded in size, JSON in size and nesting depth.
- Writes go to a temporary file in the same folder, are fsynced and renamed over the target
  (atomic: a kill or a full disk at any instant leaves the previous file whole), and one advisory
  lock serialises read-modify-write. Temporary files a killed writer left are removed by the next
  writer of the same file, under its lock.
- `describe` turns an `OSError` (read-only, full disk, not a folder, a folder, no such device)
  into the one sentence the command line prints.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mixerbench.errors import UserError

# Bounds on what is read back. Results CSVs of a long campaign are a few MB; JSON files
# (configs, summaries, checkpoint metadata) a few kB. Nothing mixerbench writes nests JSON more
# than a handful of levels.
MAX_TEXT_BYTES = 256 * 2**20
MAX_JSON_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 64

_ROOTS: set[str] = set()


def confine(root: str | os.PathLike) -> Path:
    """Register `root` as a results folder: from now on paths below it are read and written
    only through real folders and regular files (no link below it is followed). Returns it."""
    _ROOTS.add(os.path.abspath(root))
    return Path(root)


def _root_of(path: str) -> str | None:
    best = None
    for r in _ROOTS:
        if (path.startswith(r.rstrip(os.sep) + os.sep) and path != r
                and (best is None or len(r) > len(best))):
            best = r
    return best


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a regular file"


def _refuse(path: str | os.PathLike, what: str, expected: str) -> UserError:
    if what == "a symbolic link":
        return UserError(f"{path} is a symbolic link inside the results folder, which mixerbench "
                         "never follows (only the folder itself may be one); move the link away "
                         "or put the real file or folder there.")
    return UserError(f"{path} is {what} where mixerbench expects {expected}; move it away and "
                     "run the command again.")


def check(path: str | os.PathLike, expected: str = "file") -> os.stat_result | None:
    """lstat `path` after checking every part of it below its results folder: each a real folder
    (no link), the last one `expected` ("file": a regular file, "dir": a folder) when it
    exists. Returns its lstat, or None when it does not exist. Outside a results folder only the
    last part is checked, and links are followed (a dataset or checkpoint may be one)."""
    ap = os.path.abspath(path)
    root = _root_of(ap)
    parts = [] if root is None else os.path.relpath(ap, root).split(os.sep)
    cur = root
    for part in parts[:-1]:
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UserError(describe(exc, cur)) from None
        if not stat.S_ISDIR(st.st_mode):
            raise _refuse(cur, _kind(st.st_mode), "a folder")
    try:
        st = os.lstat(ap) if root is not None else os.stat(ap)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(describe(exc, path)) from None
    want = stat.S_ISDIR if expected == "dir" else stat.S_ISREG
    if not want(st.st_mode):
        raise _refuse(path, _kind(st.st_mode), "a folder" if expected == "dir" else "a file")
    return st


def make_dirs(path: str | os.PathLike) -> Path:
    """`mkdir -p path`, refusing a link, file or device on the way (below a results folder)."""
    path = Path(path)
    if check(path, "dir") is not None:
        return path
    ap = os.path.abspath(path)
    root = _root_of(ap)
    try:
        if root is None:
            os.makedirs(ap, exist_ok=True)
            return path
        if not os.path.isdir(root):
            os.makedirs(root, exist_ok=True)
        cur = root
        for part in os.path.relpath(ap, root).split(os.sep):
            cur = os.path.join(cur, part)
            try:
                os.mkdir(cur)
            except FileExistsError:
                check(cur, "dir")  # a folder, or a refusal naming what is there instead
    except OSError as exc:
        raise UserError(describe(exc, path)) from None
    return path


def _open(path: str | os.PathLike, flags: int, expected: str = "file", mode: int = 0o666) -> int:
    """An fd for `path` that is a regular file (fstat), opened without blocking on a FIFO and,
    below a results folder, without following a link."""
    check(path, expected)
    ap = os.path.abspath(path)
    if _root_of(ap) is not None:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(ap, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, "a symbolic link", "a file") from None
        raise UserError(describe(exc, path)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # swapped in since the check, or a device outside a root
        os.close(fd)
        raise _refuse(path, _kind(st.st_mode), "a file")
    return fd


def read_bytes(path: str | os.PathLike, limit: int | None = MAX_TEXT_BYTES) -> bytes | None:
    """The bytes of the regular file `path`, None when there is none; a link below a results
    folder, a FIFO, socket or device, or more than `limit` bytes is a UserError."""
    try:
        fd = _open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if limit is not None and size > limit:
            raise UserError(f"{path} is {size:,} bytes, more than the {limit:,} mixerbench reads "
                            "from such a file; it is not one mixerbench wrote: move it aside.")
        chunks, total = [], 0
        while True:  # read to the end, never past the limit (a file may grow while read)
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if limit is not None and total > limit:
                raise UserError(f"{path} holds more than the {limit:,} bytes mixerbench reads "
                                "from such a file; move it aside.")
        return b"".join(chunks)
    except OSError as exc:
        raise UserError(describe(exc, path)) from None
    finally:
        os.close(fd)


def check_file(path: str | os.PathLike) -> Path:
    """`path` if it is a regular file that a library may open by name (safetensors, torch),
    else a UserError: opened once without blocking, so a FIFO or device is refused, not read."""
    try:
        os.close(_open(path, os.O_RDONLY))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; check the path.") from None
    return Path(path)


# One JSON token that matters for nesting: a whole string (skipped) or a bracket.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def json_depth(text: str, stop: int = MAX_JSON_DEPTH) -> int:
    """How deep `text`'s arrays and objects nest (counting stops past `stop`)."""
    depth = deepest = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop:
                    break
        elif c in "]}":
            depth -= 1
    return deepest


def loads_json(text: str | bytes, where: str | os.PathLike,
               limit: int = MAX_JSON_BYTES, depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads, bounded: more than `limit` bytes or `depth` levels of nesting is a UserError
    naming `where` (Python's parser recurses, so 100,000 levels would end in RecursionError);
    malformed JSON is a ValueError as from json.loads."""
    if isinstance(text, bytes):
        text = text.decode()
    if len(text) > limit:
        raise UserError(f"{where} holds {len(text):,} characters of JSON, more than the "
                        f"{limit:,} mixerbench reads; it is not one mixerbench wrote.")
    if json_depth(text, depth) > depth:
        raise UserError(f"{where} nests its JSON more than {depth} levels deep, which "
                        "mixerbench never writes; it is not one mixerbench wrote.")
    return json.loads(text)


def read_json(path: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file read through `read_bytes` and `loads_json`; None when there is no file.
    Malformed JSON or non-UTF-8 bytes raise ValueError (callers word the refusal)."""
    data = read_bytes(path, limit)
    return None if data is None else loads_json(data, path, limit)


@contextmanager
def locked(path: Path):
    """An exclusive advisory lock on `<path>.lock`, held across read-modify-write (one writer
    of a results CSV, one trainer of a run directory). The lock file is never followed through
    a link nor opened if it is not a regular file. Holding it, the temporary files of earlier
    writers of `path` that were killed mid-write are removed."""
    path = Path(path)
    make_dirs(path.parent)
    fd = _open(str(path) + ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            for tmp in glob.glob(os.path.join(glob.escape(str(path.parent)),
                                              f".{glob.escape(path.name)}.*.tmp")):
                Path(tmp).unlink(missing_ok=True)  # every writer of `path` holds this lock
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask can only be read by setting it


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`. Below a
    results folder `path` must be a regular file or absent (a link there is refused, never
    replaced). An OSError (full disk, read-only) leaves the previous file as it was and is
    raised naming `path`, not the temporary file."""
    path = Path(path)
    st = check(path, "file")
    make_dirs(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        # mkstemp makes the file private (0600): keep the mode of the file being replaced, or
        # give a new one the usual umask mode, so results stay readable like any other file
        os.fchmod(fd, st.st_mode & 0o777 if st is not None else 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# --------------------------------------------------------------- OS errors as one sentence

_WHAT_TO_DO = {
    errno.EROFS: "is on a read-only file system; pass a writable --results-dir (or --out)",
    errno.ENOSPC: "could not be written because the disk is full; free some space and run the "
                  "command again (files already there are unchanged)",
    errno.EDQUOT: "could not be written because the disk quota is used up; free some space and "
                  "run the command again (files already there are unchanged)",
    errno.EACCES: "cannot be used: permission denied; fix its permissions or pass another path",
    errno.EPERM: "cannot be used: operation not permitted; fix its permissions or pass another "
                 "path",
    errno.ENOTDIR: "has a file where a folder is expected; move that file away or pass another "
                   "path",
    errno.EISDIR: "is a folder where a file is expected; move it away and run the command again",
    errno.ENXIO: "is a socket or device, not a regular file; move it away and run the command "
                 "again",
    errno.ENODEV: "is a device, not a regular file; move it away and run the command again",
    errno.ESPIPE: "is a pipe or socket, not a regular file; move it away and run the command "
                  "again",
    errno.ELOOP: "goes through a symbolic link mixerbench does not follow; move the link away",
    errno.ENAMETOOLONG: "is a name too long for the file system; choose a shorter path",
    errno.EEXIST: "is in the way of a file mixerbench writes; move it away and run the command "
                  "again",
    errno.ENOTEMPTY: "is a folder that is not empty where mixerbench writes a file; move it away",
    errno.EMFILE: "could not be opened: too many open files; raise `ulimit -n` and run again",
    errno.EIO: "could not be read or written (an I/O error of the disk); check the disk and run "
               "the command again",
}


def describe(exc: OSError, path: str | os.PathLike | None = None) -> str | None:
    """One sentence for an OSError on a file (naming it and what to do), or None for one that
    is not about a file (the caller lets it through)."""
    where = path if path is not None else exc.filename
    todo = _WHAT_TO_DO.get(exc.errno)
    if where is None:
        return None
    if todo is None:
        todo = f"could not be used ({exc.strerror or exc}); check the path and the disk"
    return f"{where} {todo}."
