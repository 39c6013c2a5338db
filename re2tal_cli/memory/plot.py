"""The figure of a memprofile sweep: estimated peak per wiring against depth, frames or size (Re²TAL's Fig. 7 for the
user's setting), with the GPU's usable memory as a line and its overflows marked."""

from __future__ import annotations

import os
from pathlib import Path

from re2tal_cli.memory.gpus import Gpu
from re2tal_cli.memory.sweep import Series
from re2tal_cli.plotting import new_figure, save_figure

_XLABEL = {"depth": "backbone", "frames": "frames per clip", "size": "crop size"}


def plot_sweep(series: Series, target: Gpu | None, path: str | os.PathLike) -> Path:
    fig = new_figure(6, 4)
    ax = fig.subplots()
    x = list(range(len(series.points)))
    for wiring, estimates in series.estimates.items():
        y = [e.total_peak / 2**30 for e in estimates]
        (line,) = ax.plot(x, y, marker="o", label=wiring)
        if target is not None:
            over = [(i, v) for i, v in zip(x, y, strict=True) if v * 2**30 > target.usable_bytes]
            if over:
                ax.scatter(*zip(*over, strict=True), marker="x", s=80, color=line.get_color(), zorder=3)
    if target is not None:
        ax.axhline(target.usable_bytes / 2**30, color="black", linestyle="--", label=f"{target.name} usable")
    ax.set_xticks(x, series.points, rotation=30 if series.axis.value == "depth" else 0)
    ax.set_xlabel(_XLABEL[series.axis.value])
    ax.set_ylabel("peak training memory (GiB)")
    c = next(iter(series.estimates.values()))[0].config
    setting = f"B={c.batch}" + ("" if series.axis.value == "frames" else f", T={c.frames}")
    setting += "" if series.axis.value == "size" else f", {c.size}²"
    setting += f", amp {c.amp.value}, {c.optimizer.value}" + (f", + {c.head.value}" if c.head is not None else "")
    ax.set_title(f"estimated peak per training step (× = out of memory)\n{setting}", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
