"""Recomputing what cannot be inverted: a layer run so that its backward keeps only its inputs.

A reversible stage rebuilds its blocks' inputs from its output; the layers between stages cannot be inverted (a
stem, a stage's first block that changes channels or strides, SlowFast's lateral fusions, Swin's patch merging), so a
training step would keep every activation inside them — on SlowFast-101 at 1024 frames, 70 % of what it holds. Run
through `recomputed`, such a layer keeps its inputs (which its neighbours hold anyway: the previous stage's output)
and runs a second time in the backward, with a graph, to take its gradients — in pieces of time when it is local in
time (pieces.py). The engine's replay holds here too: the same random draws, the same autocast as the forward, and
BatchNorm running statistics updated once (frozen in the recompute, as in the reversible backward).

`Outside` is the choice a wiring makes for these layers: keep (ordinary autograd) or recompute.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Sequence

import torch
import torch.utils.checkpoint
from torch import nn

from re2tal_cli.reversible.pieces import TimeLocality, recomputed_in_pieces, split_ok
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


def recomputed(
    fn: Callable[..., torch.Tensor],
    *args,
    modules: Sequence[nn.Module],
    locality: TimeLocality | None = None,
) -> torch.Tensor:
    """fn(*args) whose backward recomputes it from `args` instead of keeping what it made — a piece of time at a time
    when its `locality` is given (tensor args only, then) and its `modules` (the layers fn runs) allow splitting
    (pieces.py). Their training-mode BatchNorm layers update their running statistics in the forward only."""
    if locality is not None and split_ok(modules):
        return recomputed_in_pieces(fn, args, modules, locality)
    return torch.utils.checkpoint.checkpoint(
        fn, *args, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), running_stats_frozen(*modules))
    )
