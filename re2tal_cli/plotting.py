"""Figures for the reporting commands (matplotlib is the optional extra `re2tal[plot]`): made without pyplot's global
state and written atomically, so a failed or killed run leaves no half-written PNG."""

from __future__ import annotations

import os
from pathlib import Path

from re2tal_cli.errors import Re2talError
from re2tal_cli.fileio import atomic_path, check_creatable


def check_plot_path(path: str | os.PathLike) -> Path:
    """Call before the work: the figure's path can be written and matplotlib is installed."""
    require_matplotlib()
    return check_creatable(path)


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise Re2talError("`plot` needs matplotlib: pip install 're2tal[plot]'") from None


def new_figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no display, no pyplot state)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
