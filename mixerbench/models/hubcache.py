"""The Hugging Face hub cache, read as untrusted files: weights identified by their content.

A cached file is `models--<owner>--<name>/snapshots/<commit>/<file>`, the commit named by
`refs/main`, the file a link to `blobs/<hash>`: for weights (Git LFS files) the hash is the
sha256 of the blob's bytes. A blob whose bytes do not hash to its name (another model copied in
its place, a torn download) is refused before its weights are used, never evaluated as the
released ones. `refs/main` is read bounded and without blocking (a 3 GB sparse file or a FIFO
there is refused, not read), and every file opened is a regular file.

Hand-written instead of `huggingface_hub.try_to_load_from_cache`, which reads `refs/main`
whole through a plain `open()` and checks no hash.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from mixerbench import files
from mixerbench.errors import UserError

MAX_REF_BYTES = 256  # a ref holds one commit hash (40 hex digits) and a newline
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_verified: dict[tuple, str] = {}  # (dev, inode, size, mtime) of a blob -> its sha256, per process


def repo_folder(cache: Path, repo: str) -> Path:
    return Path(cache) / f"models--{repo.replace('/', '--')}"


def cached_file(cache: Path, repo: str, filename: str, revision: str = "main") -> Path | None:
    """The cached `filename` of model repository `repo` at `revision` (a branch), checked
    (`verify`), or None when it is not cached. A damaged cache entry is a UserError naming the
    folder to delete."""
    folder = repo_folder(cache, repo)
    ref = folder / "refs" / revision
    try:
        data = files.read_bytes(ref, limit=MAX_REF_BYTES)
    except UserError:
        raise _damaged(folder, f"its {ref.relative_to(folder)} is not a commit hash") from None
    if data is None:
        return None
    commit = data.decode("ascii", "replace").strip()
    if not _COMMIT.fullmatch(commit):
        raise _damaged(folder, f"its {ref.relative_to(folder)} is not a commit hash")
    path = folder / "snapshots" / commit / filename
    try:
        st = os.stat(path)  # follows the snapshot's link to its blob
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(files.describe(exc, path)) from None
    if not stat.S_ISREG(st.st_mode):
        raise _damaged(folder, f"{path.relative_to(folder)} is not a regular file")
    verify(path, folder)
    return path


def _damaged(folder: Path, why: str) -> UserError:
    return UserError(f"The Hugging Face cache entry {folder} is damaged ({why}); delete that "
                     "folder to download it again.")


def verify(path: Path, folder: Path | None = None) -> str | None:
    """sha256 of the cached file `path` when its blob is named by one, checked against that
    name (once per process and file version); a mismatch is a UserError. None for a file whose
    blob is named by a Git sha1 (small files, checked against it) or not by a hash at all (a
    cache made without links), which has no sha256 to record."""
    blob = os.path.realpath(path)
    name = os.path.basename(blob)
    sha256 = _SHA256.fullmatch(name)
    sha1 = re.fullmatch(r"[0-9a-f]{40}", name)
    if not (sha256 or sha1):
        return None
    fd = files.open_file(blob)
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _verified:
            h = hashlib.sha256() if sha256 else hashlib.sha1(b"blob %d\0" % st.st_size)
            for block in iter(lambda: os.read(fd, 1 << 20), b""):
                h.update(block)
            digest = h.hexdigest()
            if digest != name:
                where = folder or Path(path).parent
                raise UserError(f"{path} is not the file the Hugging Face cache says it is: its "
                                f"bytes hash to {digest[:12]}..., its blob is named "
                                f"{name[:12]}... (another file was put in its place, or a "
                                f"download was cut); delete {where} to download it again.")
            _verified[key] = name
    except OSError as exc:
        raise UserError(files.describe(exc, blob)) from None
    finally:
        os.close(fd)
    return name if sha256 else None
