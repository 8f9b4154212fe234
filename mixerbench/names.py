"""The two ways mixerbench normalises a name, each written once, and what a run's name may be.

- `slug`: the file-name form (run directories, table files, cache files): lower case, every run
  of other characters one `-`; a registry name is its own slug (`mixer-b16`, `mnist-5k`).
- `squash`: the comparison key (matching the paper's spellings to the registry): lower-case
  letters and digits only, so `Mixer-B/16`, `mixer-b16` and `mixer_b16` are one model.
- `check_run_name`: a run directory's name is one safe path component, never `.`, `..` or hidden.
"""

from __future__ import annotations

import re

from mixerbench.errors import UserError


def slug(text: str) -> str:
    """`cifar10` -> `cifar10`, `hf:uoft-cs/cifar10` -> `hf-uoft-cs-cifar10`."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def squash(text: str) -> str:
    """`Mixer-B/16` -> `mixerb16`, the key two spellings of one name share."""
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


# A run directory's name: one path component of safe characters, never hidden, `.` or `..`.
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def check_run_name(name: str) -> str:
    """`name` if it is one safe path component (letters, digits, `.`, `_`, `-`, at most 128
    characters, not starting with a dot), else a UserError: a run name never leaves `runs/`."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        shown = name if len(str(name)) <= 60 else str(name)[:57] + "..."
        raise UserError(f"--run-name '{shown}' is not a plain folder name; use letters, digits, "
                        "'.', '_' and '-' (at most 128, not starting with a dot).")
    return name
