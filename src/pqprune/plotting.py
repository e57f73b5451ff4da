"""The one way pqprune draws: matplotlib's object API (:class:`~matplotlib.figure.Figure`, never ``pyplot`` and never
``matplotlib.use``), so plotting works without a display and leaves the caller's backend and open figures alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pqprune.files import atomic_write


def new_figure(
    nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.0), dpi: int = 110, **subplot_kw: Any
) -> tuple[Any, Any]:
    """A figure and its ``nrows × ncols`` array of axes (always 2-D), each with a light grid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    return fig, axes


def series_colors(n: int) -> list[Any]:
    """``n`` distinguishable colours (matplotlib's tab10, repeating after ten)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def save_png(fig: Any, path: str | os.PathLike, dpi: int | None = None) -> Path:
    """Write ``fig`` as a PNG, atomically (its folder is created if needed)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight", dpi=dpi or fig.dpi))
