"""One colour, one marker and one line style per model family, shared by every figure.

The paper's figures (arXiv 2105.01601, Figures 2-4) show Mixer, ViT and ResNet/BiT side by side;
Figure 2 (right) draws Mixer solid, ViT dashed and BiT dotted, which `LINESTYLES` follows.
Colours are from the colour-blind-safe Okabe-Ito palette.
"""

from __future__ import annotations

FAMILIES = ("mixer", "vit", "resnet", "other")

COLORS = {
    "mixer": "#D55E00",   # vermillion: the paper's subject stands out
    "vit": "#0072B2",     # blue
    "resnet": "#009E73",  # bluish green (ResNet and BiT)
    "other": "#6E6E6E",   # grey (HaloNet, NFNet, MPL, ALIGN, unknown timm models)
}
MARKERS = {"mixer": "o", "vit": "s", "resnet": "^", "other": "D"}
LINESTYLES = {"mixer": "-", "vit": "--", "resnet": ":", "other": "-."}
LABELS = {"mixer": "Mixer", "vit": "ViT", "resnet": "ResNet / BiT", "other": "other"}

DPI = 150          # saved figures: 150 dpi reads well on screen and in a PDF
FONT_SIZE = 10     # base size for labels; titles a little larger
PANEL_SIZE = (5.2, 4.2)  # inches per panel


def short_name(model_name: str) -> str:
    """`mixer-t4[depth=2,width=64]` -> `mixer-t4`: point labels stay readable; the legend and
    the CSVs keep the full shape."""
    import re

    return re.sub(r"\[[^\]]*\]", "", str(model_name))


def family_of(model_name: str) -> str:
    """The family of a registry slug, paper name or `timm:` name: mixer, vit, resnet or other.

    Slugs and paper names are matched by prefix (`mixer-b16`, `Mixer-B/16`, `vit-`, `bit-`,
    `BiT-R152x4`, `resnet50`); `timm:` names by substring (`timm:resnetv2_50x1_bit` -> resnet).
    """
    name = str(model_name).strip().lower()
    if name.startswith("timm:"):
        name = name[len("timm:"):]
        if "mixer" in name:
            return "mixer"
        if "vit" in name or "deit" in name:
            return "vit"
        if "resnet" in name or "_bit" in name or name.startswith("bit"):
            return "resnet"
        return "other"
    if name.startswith("mixer"):
        return "mixer"
    if name.startswith("vit"):
        return "vit"
    if name.startswith(("bit-", "bit_", "resnet")):
        return "resnet"
    return "other"


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
