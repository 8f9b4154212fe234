"""The model families, one file each: every module here builds its family's models and
registers it (`registry.register_family`) when imported.

All of them are imported by `mixerbench.models`: first the paper's three (its subject and two
baselines, in the paper's order, which is the order of every legend), then the rest by file
name, so a new family is one new file in this folder. Modules starting with `_` are helpers.
Nothing here imports torch or timm at import time.
"""

from __future__ import annotations

import importlib
import pkgutil

_PAPER_ORDER = ("mixer", "vit", "resnet")


def load_all() -> None:
    """Import every family module of this folder (each registers itself once)."""
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in (*[n for n in _PAPER_ORDER if n in found], *[n for n in found if n not in _PAPER_ORDER]):
        importlib.import_module(f"{__name__}.{name}")
