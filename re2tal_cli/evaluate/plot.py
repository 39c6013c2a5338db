"""PNG of the length breakdown (Re²TAL Fig. 5): mAP and false-negative rate per bin. matplotlib is an optional extra."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from re2tal_cli.plotting import new_figure, save_figure

if TYPE_CHECKING:
    from re2tal_cli.evaluate import EvaluationResult


def plot_breakdown(result: EvaluationResult, path: str | Path) -> Path:
    """Two bar charts side by side."""
    if result.breakdown is None:
        raise ValueError("plot_breakdown needs a result computed with breakdown=True")
    names = [f"{b.name}\n({b.num_gt})" for b in result.breakdown]
    mAP = [0.0 if b.num_gt == 0 else 100 * b.average_mAP for b in result.breakdown]
    fn = [0.0 if b.num_gt == 0 else 100 * b.average_fn_rate for b in result.breakdown]
    fig = new_figure(9, 3.6)
    for ax, values, title, color in zip(
        fig.subplots(1, 2),
        (mAP, fn),
        ("(a) average mAP by action length", "(b) false negatives by action length"),
        ("#386cb0", "#f0027f"),
        strict=True,
    ):
        bars = ax.bar(names, values, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("%")
        ax.set_ylim(0, max(max(values), 1.0) * 1.15)
        ax.grid(axis="y", linestyle=":")
        ax.set_axisbelow(True)
    fig.suptitle(f"{result.protocol}, subset {result.subset} (bin: #instances)", fontsize=10)

    return save_figure(fig, path)
