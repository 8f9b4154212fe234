"""An official `.npz` checked from its headers before any array is read.

An `.npz` is a zip of `.npy` files, each a small header (dtype, shape) then the raw data.
NumPy allocates what a header declares before reading the data, so a header declaring 2^40
elements over 16 bytes of data would try to allocate terabytes. Here every member's header is
read first: its dtype must be a real number (a complex array would be cast with a warning,
objects would need pickles), the bytes it declares must be the bytes the zip holds for it, and
all arrays together must fit in this machine's memory. The file is opened once without
blocking and must be a regular file (a FIFO named `x.npz` is refused, not waited on).

Hand-written: `numpy.load` checks none of this before allocating.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

from mixerbench import files
from mixerbench.errors import UserError

MAX_MEMBERS = 100_000  # the official ViT-H/14 .npz has ~600 arrays


def check_npz(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """{array name: (shape, dtype)} of the `.npz` at `path`, read from its headers only; any
    lie or impossibility is a UserError naming the file."""
    import numpy as np
    from numpy.lib import format as npy

    path = Path(path)
    try:
        fd = files.open_file(path)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; check the path.") from None

    def bad(why: str) -> UserError:
        return UserError(f"{path} is not an official Mixer or ViT checkpoint ({why}); pass a "
                         "vision_transformer .npz.")

    out: dict[str, tuple[tuple[int, ...], str]] = {}
    total = 0
    try:
        with os.fdopen(fd, "rb") as fh, zipfile.ZipFile(fh) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                raise bad(f"{len(members):,} arrays")
            for info in members:
                if not info.filename.endswith(".npy"):
                    raise bad(f"{info.filename[:100]} is not an array")
                with zf.open(info) as member:
                    version = npy.read_magic(member)
                    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                    shape, _, dtype = read(member, max_header_size=2**16)
                    header = member.tell() if member.seekable() else None
                if dtype.kind not in "fiub" or dtype.hasobject:
                    raise bad(f"{info.filename[:-4][:100]} holds {dtype} values, not real numbers")
                nbytes = math.prod(shape) * dtype.itemsize
                if header is not None and nbytes != info.file_size - header:
                    raise bad(f"{info.filename[:-4][:100]} declares {math.prod(shape):,} values "
                              f"of {dtype} ({nbytes:,} bytes) but holds "
                              f"{info.file_size - header:,} bytes")
                total += nbytes
                out[info.filename[:-4]] = (tuple(int(d) for d in shape), str(dtype))
    except UserError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, TypeError) as exc:
        raise bad(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    _check_fits(path, total)
    return out


def _check_fits(path: Path, nbytes: int) -> None:
    """Arrays of `nbytes` in all, read and then converted to float32 tensors (about twice that
    at once), must fit in this machine's memory."""
    from mixerbench.runtime import memory_bytes

    have = memory_bytes("cpu")
    if have and 2 * nbytes > have:
        raise UserError(f"{path} holds {nbytes / 2**30:,.1f} GiB of arrays; reading it needs about "
                        f"{2 * nbytes / 2**30:,.1f} GiB, more than this machine's "
                        f"{have / 2**30:,.1f} GiB; pass a smaller checkpoint.")
