"""The one way into a results folder, and files that are either whole or absent.

Every reader and writer of a results folder (CSVs, locks, run directories, tables, figures,
tracker folders, checkpoints, upgrades) goes through the functions here:

- A results folder, once named through `results.results_dir`, is a confinement root
  (`confine`). Below it no symbolic link is followed, whether it points inside or out: a
  planted link could otherwise turn a write into one outside the folder, or a read into one of
  `/dev/zero`. The folder itself may be a link (the user chose it). Each existing part of a path
  below the root must be a real folder, and the last one a regular file where a file is read or
  replaced.
- Below a root nothing is opened by its full path. The root is opened once as a directory file
  descriptor, each folder below it from its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`
  (`openat`: `os.open(name, dir_fd=...)`), and files are opened, created, renamed, removed and
  listed relative to the descriptor of their folder (`Folder`, `open_folder`). Why: a check by
  path followed by a use by path is a race. Another process that swaps a folder for a link
  between the two (a rename is atomic) turns the use into one outside the results folder, or
  into a read of another file than the one checked. A descriptor stays the folder that was
  opened whatever its path names later, and the open itself refuses a link, so there is no
  moment between check and use. (A folder that someone moves out of the results folder while
  it is open takes the files written into it along; that is their move, not a path we
  followed.)
- Files are opened with `O_NONBLOCK` (and `O_NOFOLLOW` below a root) and checked with `fstat`
  before a byte is read, so a FIFO, socket or device where a file should be cannot block or
  stream; reads are bounded in size, JSON in size and nesting depth. Whatever is judged by its
  bytes (a checkpoint's owner, a content hash) is judged on bytes read once from one
  descriptor, and those same bytes are used (`read_bytes`, `Folder.read_bytes`): reading the
  file again by name could read another file.
- Writes go to a temporary file in the same folder, are fsynced and renamed over the target
  (atomic: a kill or a full disk at any instant leaves the previous file whole), and one advisory
  lock serialises read-modify-write. Temporary files a killed writer left are removed by the next
  writer of the same file, under its lock.
- `describe` turns an `OSError` (read-only, full disk, not a folder, a folder, no such device)
  into the one sentence the command line prints.

Outside a results folder (datasets, checkpoints given by path, caches) links are followed, as
users expect of a path they typed. The tracker libraries (TensorBoard, wandb, MLflow) take a
folder's path and write by it: their folders are checked here (`make_dirs`) when they start,
not held open.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
from contextlib import contextmanager, suppress
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


# The openat-style calls everything below a root goes through. Linux and macOS have all of
# them (os.replace takes os.rename's src_dir_fd/dst_dir_fd too, but is missing from the set).
_AT_CALLS = {os.open, os.mkdir, os.stat, os.unlink, os.rmdir, os.rename}
if not (_AT_CALLS <= os.supports_dir_fd and os.listdir in os.supports_fd):  # pragma: no cover
    raise ImportError("mixerbench needs directory file descriptors (openat, mkdirat, renameat): "
                      "run it on Linux or macOS.")

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int | None, where: str, create: bool, follow: bool) -> int | None:
    """The folder `name` (relative to `dir_fd`, or a full path when it is None) opened as a
    descriptor, made first when missing and `create`; None when missing otherwise. Without
    `follow` a link there is refused by the open itself (`O_NOFOLLOW`), never checked first."""
    flags = _DIR | (0 if follow else os.O_NOFOLLOW)
    for _ in range(3):  # another process may make, remove or swap it between two calls
        try:
            return os.open(name, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            if not create:
                return None
            try:
                os.mkdir(name, dir_fd=dir_fd)
            except FileExistsError:
                pass  # made meanwhile, or something else is there: the next open tells
            except OSError as exc:
                raise UserError(describe(exc, where)) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):  # read-only, permissions, ...
                raise UserError(describe(exc, where)) from None
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=follow)
            except OSError:
                st = None
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise _refuse(where, _kind(st.st_mode), "a folder") from None
            if st is None and dir_fd is None:  # a file among the folders of a full path
                raise UserError(describe(exc, where)) from None
            # a link a moment ago, a folder again now (or gone): open it again
    raise UserError(f"{where} keeps changing between a folder and something else while "
                    "mixerbench opens it; stop what renames it and run the command again.")


class Folder:
    """An open folder: the names in it are stat-ed, opened, written, renamed, removed and
    listed relative to its descriptor, so they are the names of this very folder even if its
    path is swapped for a link meanwhile. Below a results folder (`confined`) no link among them
    is followed. Use as a context manager, or `close()` it."""

    def __init__(self, fd: int, path: str | os.PathLike, confined: bool):
        self.fd, self.path, self.confined = fd, str(path), confined

    def __enter__(self) -> "Folder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def where(self, name: str) -> str:
        """How `name` in this folder is named in messages."""
        return os.path.join(self.path, name)

    def lstat(self, name: str) -> os.stat_result | None:
        """`name`'s stat (its own, not a link's target, when confined); None when absent."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=not self.confined)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UserError(describe(exc, self.where(name))) from None

    def check(self, name: str, expected: str = "file") -> os.stat_result | None:
        """`lstat(name)` when it is `expected` ("file": a regular file, "dir": a folder) or
        absent (None); anything else (a link, FIFO, socket, device) is a UserError."""
        st = self.lstat(name)
        want = stat.S_ISDIR if expected == "dir" else stat.S_ISREG
        if st is not None and not want(st.st_mode):
            raise _refuse(self.where(name), _kind(st.st_mode),
                          "a folder" if expected == "dir" else "a file")
        return st

    def folder(self, name: str, create: bool = False) -> "Folder | None":
        """The folder `name` in this one, opened (made first when missing and `create`);
        None when it is missing."""
        fd = _open_dir(name, self.fd, self.where(name), create, follow=not self.confined)
        return None if fd is None else Folder(fd, self.where(name), self.confined)

    def names(self) -> list[str]:
        """The names in this folder (of the folder opened, whatever its path names now)."""
        try:
            return os.listdir(self.fd)
        except OSError as exc:
            raise UserError(describe(exc, self.path)) from None

    def open(self, name: str, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
        """A descriptor for the regular file `name` in this folder (FileNotFoundError when it
        is absent and `flags` do not create it), opened without blocking on a FIFO and, when
        confined, without following a link (`O_NOFOLLOW`: a link swapped in after the check is
        refused by the open, not followed), then checked by fstat."""
        self.check(name, "file")  # names what is there (a FIFO, a link) before any open
        if self.confined:
            flags |= os.O_NOFOLLOW
        try:
            fd = os.open(name, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=self.fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            st = self.lstat(name)  # swapped since the check: say what is there now
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise _refuse(self.where(name), _kind(st.st_mode), "a file") from None
            if exc.errno == errno.ELOOP:
                raise _refuse(self.where(name), "a symbolic link", "a file") from None
            raise UserError(describe(exc, self.where(name))) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped in since the check, or a device outside
            os.close(fd)
            raise _refuse(self.where(name), _kind(st.st_mode), "a file")
        return fd

    def read_bytes(self, name: str, limit: int | None = MAX_TEXT_BYTES) -> bytes | None:
        """The bytes of the regular file `name`, None when there is none (`read_fd`)."""
        try:
            fd = self.open(name)
        except FileNotFoundError:
            return None
        try:
            return read_fd(fd, self.where(name), limit)
        finally:
            os.close(fd)

    def unlink(self, name: str) -> None:
        with suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def remove_tree(self, name: str) -> None:
        """`rm -r name` in this folder: every folder below opened without following a link
        (a link is removed, never followed), so a swap cannot turn it into a removal outside."""
        sub = self.folder(name)
        if sub is None:
            return
        with sub:
            for other in sub.names():
                st = sub.lstat(other)
                if st is not None and stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                    sub.remove_tree(other)
                else:
                    sub.unlink(other)
        try:
            os.rmdir(name, dir_fd=self.fd)
        except OSError as exc:
            raise UserError(describe(exc, self.where(name))) from None

    def remove_temporary(self, name: str | None = None) -> None:
        """Remove the temporary files killed writers left here (`.<name>.*.tmp`; of any file
        when `name` is None). Only while no writer of those files can be running (its lock
        held, or the folder claimed by this process)."""
        for other in self.names():
            if other.startswith(f".{name}." if name else ".") and other.endswith(".tmp"):
                self.unlink(other)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace `name` in this folder by `data` atomically: a temporary file made beside it
        (`O_EXCL`, never through a link), fsynced, then renamed over it, both relative to this
        folder's descriptor (a rename replaces a link planted at `name` meanwhile instead of
        following it). A link or anything but a regular file at `name` now is refused. An
        OSError (full disk, read-only) leaves the previous file as it was and is raised naming
        `name`, not the temporary file."""
        tmp = self.stage(name, data)
        self.commit(tmp, name)

    def stage(self, name: str, data: bytes) -> str:
        """The first half of `write_bytes`: `data` in a new temporary file beside `name`,
        fsynced; returns its name (`commit` renames it over `name`). Nothing is left behind
        when it fails."""
        st = self.check(name, "file")
        tmp = None
        try:
            while tmp is None:
                candidate = f".{name}.{os.urandom(4).hex()}.tmp"
                try:
                    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
                    tmp = candidate
                except FileExistsError:
                    continue
            # keep the mode of the file being replaced, or give a new one the usual umask
            # mode, so results stay readable like any other file
            os.fchmod(fd, st.st_mode & 0o777 if st is not None else 0o666 & ~_UMASK)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            return tmp
        except OSError as exc:
            if tmp is not None:
                self.unlink(tmp)
            raise OSError(exc.errno, exc.strerror, self.where(name)) from None
        except BaseException:
            if tmp is not None:
                self.unlink(tmp)
            raise

    def commit(self, tmp: str, name: str) -> None:
        """The second half of `write_bytes`: rename the staged `tmp` over `name` (a rename needs
        no space: it fails only where the folder itself cannot be written)."""
        try:
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError as exc:
            self.unlink(tmp)
            raise OSError(exc.errno, exc.strerror, self.where(name)) from None
        except BaseException:
            self.unlink(tmp)
            raise

    @contextmanager
    def locked(self, name: str):
        """An exclusive advisory lock on `<name>.lock` in this folder (`locked`); yields self."""
        fd = self.open(name + ".lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self.remove_temporary(name)  # every writer of `name` holds this lock
                yield self
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def open_folder(path: str | os.PathLike, create: bool = False) -> Folder | None:
    """The folder `path` opened as a `Folder` (made first, with its parents, when missing and
    `create`); None when it is missing otherwise. Below a results folder it is reached one
    component at a time from the root's descriptor, never through a link; a results folder
    itself, or a folder outside any, is opened by its path (a link there is followed)."""
    ap = os.path.abspath(path)
    root = _root_of(ap)
    if root is None:
        if create:
            make_dirs(path)
        fd = _open_dir(ap, None, str(path), False, follow=True)
        return None if fd is None else Folder(fd, path, ap in _ROOTS)  # a root: confined
    if create:
        make_dirs(root)
    fd = _open_dir(root, None, root, False, follow=True)
    if fd is None:
        return None
    cur = root
    parts = os.path.relpath(ap, root).split(os.sep)
    for i, part in enumerate(parts):
        cur = os.path.join(cur, part)
        where = str(path) if i == len(parts) - 1 else cur
        try:
            sub = _open_dir(part, fd, where, create, follow=False)
        finally:
            os.close(fd)
        if sub is None:
            return None
        fd = sub
    return Folder(fd, path, True)


def _parent(path: str | os.PathLike, create: bool = False) -> tuple[Folder | None, str]:
    """(the folder holding `path`, opened; `path`'s name in it)."""
    p = Path(path)
    return open_folder(p.parent, create), p.name


def check(path: str | os.PathLike, expected: str = "file") -> os.stat_result | None:
    """lstat `path` after checking every part of it below its results folder: each a real folder
    (no link), the last one `expected` ("file": a regular file, "dir": a folder) when it
    exists. Returns its lstat, or None when it does not exist. Outside a results folder only the
    last part is checked, and links are followed (a dataset or checkpoint may be one). A check
    answers for the moment it was made: what is then read or written goes through `Folder`."""
    ap = os.path.abspath(path)
    if _root_of(ap) is None:
        try:
            st = os.stat(ap)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UserError(describe(exc, path)) from None
        want = stat.S_ISDIR if expected == "dir" else stat.S_ISREG
        if not want(st.st_mode):
            raise _refuse(path, _kind(st.st_mode), "a folder" if expected == "dir" else "a file")
        return st
    folder, name = _parent(path)
    if folder is None:
        return None
    with folder:
        return folder.check(name, expected)


def make_dirs(path: str | os.PathLike) -> Path:
    """`mkdir -p path`, refusing a link, file or device on the way (below a results folder)."""
    ap = os.path.abspath(path)
    if _root_of(ap) is not None:
        open_folder(path, create=True).close()
        return Path(path)
    if check(path, "dir") is None:
        try:
            os.makedirs(ap, exist_ok=True)
        except OSError as exc:
            raise UserError(describe(exc, path)) from None
        check(path, "dir")  # made, or something else made there meanwhile
    return Path(path)


def open_file(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
    """A descriptor for the regular file `path` (FileNotFoundError when there is none): below
    a results folder through `Folder.open` (no link followed anywhere on the way), elsewhere by
    its path (a link followed); never blocking on a FIFO, checked by fstat."""
    ap = os.path.abspath(path)
    if _root_of(ap) is not None:
        folder, name = _parent(path, create=bool(flags & os.O_CREAT))
        if folder is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        with folder:
            return folder.open(name, flags, mode)
    check(path, "file")
    try:
        fd = os.open(ap, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UserError(describe(exc, path)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # swapped in since the check, or a device
        os.close(fd)
        raise _refuse(path, _kind(st.st_mode), "a file")
    return fd


def read_fd(fd: int, where: str | os.PathLike, limit: int | None = MAX_TEXT_BYTES) -> bytes:
    """Every byte of the open regular file `fd`, at most `limit` (a UserError naming `where`
    beyond it); read to the end, never past the limit, since a file may grow while read."""
    try:
        size = os.fstat(fd).st_size
        if limit is not None and size > limit:
            raise UserError(f"{where} is {size:,} bytes, more than the {limit:,} mixerbench reads "
                            "from such a file; it is not one mixerbench wrote: move it aside.")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 24)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if limit is not None and total > limit:
                raise UserError(f"{where} holds more than the {limit:,} bytes mixerbench reads "
                                "from such a file; move it aside.")
        return b"".join(chunks)
    except OSError as exc:
        raise UserError(describe(exc, where)) from None


def read_bytes(path: str | os.PathLike, limit: int | None = MAX_TEXT_BYTES) -> bytes | None:
    """The bytes of the regular file `path`, None when there is none; a link below a results
    folder, a FIFO, socket or device, or more than `limit` bytes is a UserError."""
    try:
        fd = open_file(path)
    except FileNotFoundError:
        return None
    try:
        return read_fd(fd, path, limit)
    finally:
        os.close(fd)


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
def locked(path: str | os.PathLike):
    """An exclusive advisory lock on `<path>.lock`, held across read-modify-write (one writer
    of a results CSV, one trainer of a run directory). The lock file is never followed through
    a link nor opened if it is not a regular file. Holding it, the temporary files of earlier
    writers of `path` that were killed mid-write are removed. Yields the `Folder` of `path`,
    opened once: reads and writes of `path` through it reach the file under this very lock,
    even if the folder's path is swapped meanwhile."""
    path = Path(path)
    folder, name = _parent(path, create=True)
    with folder, folder.locked(name):
        yield folder


def remove_tree(path: str | os.PathLike) -> None:
    """`rm -r path` (`Folder.remove_tree`); errors are ignored, as for a clean-up after a
    failure, whose own error is the one to report."""
    with suppress(UserError, OSError):
        folder, name = _parent(path)
        if folder is not None:
            with folder:
                folder.remove_tree(name)


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask can only be read by setting it


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`
    (`Folder.write_bytes`, through the folder's descriptor). Below a results folder `path` must
    be a regular file or absent (a link there is refused, never replaced). An OSError (full
    disk, read-only) leaves the previous file as it was and is raised naming `path`, not the
    temporary file."""
    path = Path(path)
    folder, name = _parent(path, create=True)
    with folder:
        folder.write_bytes(name, data)


def write_all(items: list[tuple[str | os.PathLike, bytes]]) -> None:
    """Write several files as one: every one staged (written and fsynced beside its target)
    before any is renamed over its target, so a full disk or a refusal part way leaves every
    target as it was, and removes the folders made for them. (Renames need no free space; only
    a crash between two renames can leave some files new and some old, each whole.)"""
    made: list[Path] = []
    staged: list[tuple[Folder, str, str]] = []
    opened: list[Folder] = []
    done = False
    try:
        for path, data in items:
            p = Path(path)
            missing = [q for q in [p.parent, *p.parent.parents] if not os.path.lexists(q)]
            folder, name = _parent(p, create=True)
            made += [q for q in missing if q not in made]
            opened.append(folder)
            staged.append((folder, folder.stage(name, data), name))
        for folder, tmp, name in staged:
            folder.commit(tmp, name)
        done = True
    finally:
        if not done:  # a failure before the renames: nothing replaced, nothing left
            for folder, tmp, _ in staged:
                folder.unlink(tmp)
        for folder in opened:
            folder.close()
        if not done:
            for q in sorted(made, key=lambda q: len(q.parts), reverse=True):
                with suppress(OSError):
                    q.rmdir()  # only if still empty


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def json_bytes(obj: Any) -> bytes:
    """`obj` as mixerbench writes JSON files (indented, keys sorted, one newline at the end)."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


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
