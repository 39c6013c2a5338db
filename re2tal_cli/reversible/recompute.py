"""Recomputing what cannot be inverted, and the choice a wiring makes for it.

A reversible stage rebuilds its blocks' inputs from its output; the layers between stages cannot be inverted (a
stem, a stage's first block that changes channels or strides, SlowFast's lateral fusions, Swin's patch embedding and
merging), so a training step would keep every activation inside them — on SlowFast-101 at 1024 frames, 70 % of what
it holds. Recomputed (`VideoBackbone.run_outside` → `pieces.recomputed_in_pieces`), such a layer keeps only its
inputs — or how the layers before make them again (remake.py) — and runs a second time in the backward, in pieces of
time when it is local in time. The engine's replay holds there too: the same random draws and autocast as the
forward, BatchNorm running statistics updated once.

`Outside` is what a wiring keeps of these layers. `checkpointed` is torch's checkpoint, the per-block checkpointing
baseline.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Sequence

import torch
import torch.utils.checkpoint
from torch import nn

from re2tal_cli.reversible.replay import running_stats_frozen


class Outside(enum.StrEnum):
    """What a training step keeps of the layers outside the residual stages."""

    KEEP = "keep"  # every activation, as ordinary autograd does
    RECOMPUTE = "recompute"  # their inputs only; recomputed in the backward


def default_outside(execution: str) -> Outside:
    """A wiring that saves memory inside the stages recomputes the layers outside them too: checkpointing every
    block (what mmaction's `with_cp` does, and the stems and fusions besides), and the reversible network's
    non-invertible layers."""
    return Outside.KEEP if execution == "plain" else Outside.RECOMPUTE


def checkpointed(fn: Callable[..., torch.Tensor], *args, modules: Sequence[nn.Module]) -> torch.Tensor:
    """fn(*args) through torch's checkpoint (per-block checkpointing, the baseline users have: mmaction's
    `with_cp`), its `modules`' training-mode BatchNorm layers updating their running statistics in the forward
    only."""
    return torch.utils.checkpoint.checkpoint(
        fn, *args, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), running_stats_frozen(*modules))
    )
