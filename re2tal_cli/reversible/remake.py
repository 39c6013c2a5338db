"""Tensors a training step makes again instead of keeping.

A layer recomputed in the backward (recompute.py) keeps only its inputs; its output — the next layer's input, which
that layer would keep for its own backward — can be made again by running the layer on them, and a reversible stage
whose input comes from such a layer need not keep that input either. Every backward runs before the backward of the
layer that made its inputs, so those are still there when needed.

A Function that makes such an output attaches its `remake` to the tensor (`mark`); a Function that would save an
input for its backward saves the remake instead when the input has one (`keep` / `kept`). Other consumers (ordinary
layers, torch's checkpoint) save the tensor as usual, so nothing depends on this beyond memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

_REMAKE = "_re2tal_remake"  # the attribute a remakeable tensor carries


def mark(tensor: torch.Tensor, remake: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Declare that `remake()` makes `tensor`'s values again (without a graph) for as long as the graph lives."""
    setattr(tensor, _REMAKE, remake)
    return tensor


def keep(ctx, tensors: Sequence[torch.Tensor]) -> None:
    """Save `tensors` for ctx's backward: each one's remake where it has one, the tensor itself otherwise. A tensor
    that needs no gradient (made by a frozen layer, e.g. a frozen stem) came from a Function that recorded no graph
    and so kept nothing to remake it from: it is saved itself."""
    remakes = [getattr(t, _REMAKE, None) if t.requires_grad else None for t in tensors]
    ctx.save_for_backward(*(t for t, remake in zip(tensors, remakes, strict=True) if remake is None))
    ctx.remakes = remakes


def kept(ctx) -> list[torch.Tensor]:
    """The tensors of `keep`, remade where they were not saved."""
    saved = iter(ctx.saved_tensors)
    return [next(saved) if remake is None else remake() for remake in ctx.remakes]


def is_remade(ctx, index: int) -> bool:
    """Whether the `index`-th tensor of `keep` is made again rather than saved."""
    return ctx.remakes[index] is not None


def kept_one(ctx, index: int) -> torch.Tensor:
    """The `index`-th tensor of `keep` alone (remade only if it was not saved)."""
    remake = ctx.remakes[index]
    if remake is not None:
        return remake()
    return ctx.saved_tensors[sum(r is None for r in ctx.remakes[:index])]
