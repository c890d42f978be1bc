"""The house plotting style, used by every figure of the book."""
from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

__all__ = ["use_style", "COLORS", "subplots"]

#: Colour-blind-safe palette (Okabe & Ito), in the order series are drawn.
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

_STYLE = {
    "figure.figsize": (6.4, 3.8),
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=COLORS),
    "legend.frameon": False,
    "legend.fontsize": 9,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "svg.hashsalt": "gnebook",
}


def use_style() -> None:
    """Apply the house style to matplotlib's rcParams."""
    mpl.rcParams.update(_STYLE)


def subplots(ncols: int = 1, nrows: int = 1, width: float = 3.4, height: float = 3.0, **kw):
    """``plt.subplots`` with a panel size in inches and the house layout."""
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                        layout="constrained", **kw)
