"""The two ways mixerbench normalises a name, each written once.

- `slug`: the file-name form (run directories, table files, cache files): lower case, every run
  of other characters one `-`; a registry name is its own slug (`mixer-b16`, `mnist-5k`).
- `squash`: the comparison key (matching the paper's spellings to the registry): lower-case
  letters and digits only, so `Mixer-B/16`, `mixer-b16` and `mixer_b16` are one model.
"""

from __future__ import annotations

import re


def slug(text: str) -> str:
    """`cifar10` -> `cifar10`, `hf:uoft-cs/cifar10` -> `hf-uoft-cs-cifar10`."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def squash(text: str) -> str:
    """`Mixer-B/16` -> `mixerb16`, the key two spellings of one name share."""
    return re.sub(r"[^a-z0-9]", "", str(text).lower())
