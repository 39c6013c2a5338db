"""The figure of a memprofile sweep: estimated peak per wiring against depth, frames or size (Re²TAL's Fig. 7 for the
user's setting), with GPUs' usable memory as lines and what does not fit marked."""

from __future__ import annotations

import os
from pathlib import Path

from re2tal_cli.memory.gpus import Gpu
from re2tal_cli.memory.sweep import Series
from re2tal_cli.plotting import new_figure, save_figure

_XLABEL = {"depth": "backbone", "frames": "frames per clip", "size": "crop size"}


def plot_sweep(series: Series, targets: list[Gpu], path: str | os.PathLike) -> Path:
    """Peak per wiring along the series (a line per wiring and swept configuration), a dashed line per GPU's usable
    memory, × where a point does not fit the smallest of them."""
    fig = new_figure(6 if len(set(series.groups)) == 1 else 8, 4)
    ax = fig.subplots()
    x = list(range(len(series.points)))
    smallest = min(targets, key=lambda t: t.usable_bytes) if targets else None
    colors = {}
    for wiring, estimates in series.estimates.items():
        y = [e.total_peak / 2**30 for e in estimates]
        for group in dict.fromkeys(series.groups):
            at = [i for i in x if series.groups[i] == group]
            (line,) = ax.plot(at, [y[i] for i in at], marker="o", color=colors.get(wiring),
                              label=wiring if wiring not in colors else None)  # fmt: skip
            colors[wiring] = line.get_color()
        if smallest is not None:
            over = [(i, v) for i, v in zip(x, y, strict=True) if v * 2**30 > smallest.usable_bytes]
            if over:
                ax.scatter(*zip(*over, strict=True), marker="x", s=80, color=colors[wiring], zorder=3)
    for style, target in zip(
        ("--", ":", "-.", (0, (5, 1))), sorted(targets, key=lambda t: t.usable_bytes), strict=False
    ):
        ax.axhline(target.usable_bytes / 2**30, color="black", linestyle=style, label=f"{target.name} usable")
    ax.set_xticks(x, series.points, rotation=30 if series.axis.value == "depth" else 0)
    ax.set_xlabel(_XLABEL[series.axis.value])
    ax.set_ylabel("peak training memory (GiB)")
    c = next(iter(series.estimates.values()))[0].config
    setting = f"B={c.batch}" + ("" if series.axis.value == "frames" else f", T={c.frames}")
    setting += "" if series.axis.value == "size" else f", {c.size}²"
    setting += f", amp {c.amp.value}, {c.optimizer.value}" + (f", + {c.head.value}" if c.head is not None else "")
    fits = f" (× = does not fit {smallest.name})" if smallest is not None else ""
    ax.set_title(f"estimated peak per training step{fits}\n{setting}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
