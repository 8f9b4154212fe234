"""One colour, one marker and one line style per model family, shared by every figure.

Each family's look is part of its registry entry (`mixerbench.models.registry.Family`); this
module reads it. The paper's figures (arXiv 2105.01601, Figures 2-4) show Mixer, ViT and
ResNet/BiT side by side; Figure 2 (right) draws Mixer solid, ViT dashed and BiT dotted, which the
registry follows. Colours are from the colour-blind-safe Okabe-Ito palette; rows of no
registered family (HaloNet, NFNet, any timm model) are grey.
"""

from __future__ import annotations

from collections.abc import Mapping

from mixerbench.models.registry import FAMILIES, OTHER, family
from mixerbench.models.registry import family_of as registry_family_of

class _ByFamily(Mapping):
    """family name -> one attribute of its registry entry (`Family.color`, ...), read live, so a
    family registered after this module was imported has its look too; "other" included."""

    def __init__(self, attr: str):
        self.attr = attr

    def __getitem__(self, fam: str):
        if fam != OTHER.name and fam not in FAMILIES:
            raise KeyError(fam)
        return getattr(family(fam), self.attr)

    def __iter__(self):
        return iter(order())

    def __len__(self):
        return len(FAMILIES) + 1


def order() -> tuple[str, ...]:
    """Every family in registration order (the paper's three first), then "other"."""
    return (*FAMILIES, OTHER.name)


COLORS = _ByFamily("color")
MARKERS = _ByFamily("marker")
LINESTYLES = _ByFamily("linestyle")
LABELS = _ByFamily("label")

DPI = 150          # saved figures: 150 dpi reads well on screen and in a PDF
FONT_SIZE = 10     # base size for labels; titles a little larger
PANEL_SIZE = (5.2, 4.2)  # inches per panel


def short_name(model_name: str) -> str:
    """`mixer-t4[depth=2,width=64]` -> `mixer-t4 d2 w64` (`formatting.label`): point labels
    and legends stay readable, and a model of another shape never wears the zoo entry's name;
    the CSVs keep the full shape."""
    from mixerbench.formatting import label

    return label(model_name)


def family_of(model_name: str) -> str:
    """The family of a registry slug, paper name or `timm:` name (the registry's prefixes), else
    "other": `mixer-b16`, `Mixer-B/16` -> mixer; `BiT-R152x4`, `timm:resnetv2_50x1_bit` -> resnet."""
    return registry_family_of(model_name)


def color(model_name: str) -> str:
    return COLORS[family_of(model_name)]


def marker(model_name: str) -> str:
    return MARKERS[family_of(model_name)]


def linestyle(model_name: str) -> str:
    return LINESTYLES[family_of(model_name)]


def families(df) -> list[str]:
    """The family of each row: its `family` column (written by the run that made it), else,
    for rows without one (the paper's reference points), guessed from the name."""
    names = [str(n) for n in df["model" if "model" in df.columns else "paper_name"]]
    given = list(df["family"]) if "family" in df.columns else [None] * len(names)
    return [f if isinstance(f, str) and f in FAMILIES else family_of(n)
            for f, n in zip(given, names)]
