"""Recomputing a layer a piece of time at a time.

Once nothing inside a layer is stored, a training step's peak is set by the transient of one layer's recompute: at
1024 frames one SlowFast bottleneck or stem recomputed whole holds a dozen tensors of 0.4 GB. Most video layers are
local in time — a convolution with a temporal kernel k reads k frames, a LayerNorm or an MLP one token, Swin's window
attention one window — so output frames [t0, t1) can be recomputed from input frames [t0 − h, t1 + h) alone (h: the
layer's reach, its "halo") and their gradients taken, a piece at a time. The pieces' input gradients overlap on the
halos and are summed; every other output frame of a piece is discarded.

A layer declares its `TimeLocality`; `split_ok` says whether its modules allow splitting now (not while BatchNorm
normalises with batch statistics or an elementwise dropout draws a shape-dependent mask; drop-path draws one value per
sample, the same in every piece once the generator state is replayed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge

from re2tal_cli.reversible.remake import keep, kept, mark
from re2tal_cli.reversible.replay import AutocastState, RngState, running_stats_frozen

PIECES = 4  # pieces a recompute is split into, at least ...
PIECE_BYTES = 2**25  # ... and more where a piece's input would exceed this (its transient sets the step's peak) ...
MAX_PIECES = 16  # ... up to this many
MAX_HALO_COST = 1.25  # a split may compute at most this many times the frames of the whole (halos overlap)
# Smaller inputs are run whole: the memory a split saves is not worth its calls — nor, where pieces overlap on halos,
# the frames it computes twice (up to MAX_HALO_COST − 1 more work), or where a piece is not contiguous in memory (a
# convolution's frames, (B, C, T, H, W)), the copies and the less efficient kernels of short clips. Chosen on the CPU
# step time at 32×112² (a Swin stage of two windows split costs 9 %; SlowFast's slow res3 stage, 3.2 MB, split costs
# 13–24 % of that stage, its res2 stage, 6.4 MB, gains) and memprofile at every arch's default input
# (docs/benchmarks.md).
MIN_SPLIT_BYTES = 2**21
MIN_HALO_SPLIT_BYTES = 2**22


@dataclass(frozen=True)
class TimeLocality:
    """Output frame t (along `out_dim`) reads only frames of its inputs within `halo` output frames of t; input i has
    `scales[i]` frames per output frame along `dims[i]`, and padding beyond the ends is the layer's own (zeros, as if
    the input stopped there). Piece boundaries fall on multiples of `align` output frames (window boundaries)."""

    dims: tuple[int, ...]
    out_dim: int
    halo: int = 0
    scales: tuple[int, ...] = (1,)
    align: int = 1
    min_frames: int = 1  # no piece shorter than this many output frames (a window: a shorter one would shrink it)

    @classmethod
    def same(cls, dim: int, halo: int = 0, align: int = 1, min_frames: int = 1) -> TimeLocality:
        """A shape-keeping layer (one input, time along `dim` in and out)."""
        return cls((dim,), dim, halo, (1,), align, min_frames)


@dataclass(frozen=True)
class Piece:
    """Output frames [start, stop), recomputed from output-frame range [lo, hi) of the inputs (halos included)."""

    start: int
    stop: int
    lo: int
    hi: int

    def narrow_input(self, x: torch.Tensor, dim: int, scale: int) -> torch.Tensor:
        stop = min(self.hi * scale, x.shape[dim])
        return x.narrow(dim, self.lo * scale, stop - self.lo * scale)

    def narrow_output(self, out: torch.Tensor, dim: int) -> torch.Tensor:
        """This piece's own frames of an output computed from `narrow_input`s."""
        return out.narrow(dim, self.start - self.lo, self.stop - self.start)


def piece_count(inputs: Iterable[torch.Tensor]) -> int:
    """How many pieces a recompute on `inputs` is split into: PIECES, or more on inputs so large that a quarter of the
    largest would exceed PIECE_BYTES (at 1024 frames; on smaller inputs more pieces would only cost calls)."""
    largest = max(x.numel() * x.element_size() for x in inputs)
    return min(MAX_PIECES, max(PIECES, -(-largest // PIECE_BYTES)))


def time_pieces(length: int, locality: TimeLocality, count: int = PIECES) -> list[Piece]:
    """Up to `count` pieces covering `length` output frames, boundaries on `align`, none shorter than `min_frames`,
    as many as keep the halos' cost within MAX_HALO_COST (fewer on short inputs); one piece (the whole) when the
    output is too short to split."""
    for n in range(count, 1, -1):
        pieces = _split(length, locality, n)
        if len(pieces) > 1 and sum(p.hi - p.lo for p in pieces) <= MAX_HALO_COST * length:
            return pieces
    return [Piece(0, length, 0, length)]


def _split(length: int, locality: TimeLocality, count: int) -> list[Piece]:
    align = locality.align
    halo = -(-locality.halo // align) * align
    units = -(-length // align)
    step = -(-units // count) * align
    if step >= length or step < locality.min_frames:
        return [Piece(0, length, 0, length)]
    bounds = [[t0, min(t0 + step, length)] for t0 in range(0, length, step)]
    if bounds[-1][1] - bounds[-1][0] < locality.min_frames:  # a short remainder joins the piece before it
        last = bounds.pop()
        bounds[-1][1] = last[1]
    return [Piece(t0, t1, max(0, t0 - halo), min(length, t1 + halo)) for t0, t1 in bounds]


def every_piece(pieces: list[Piece]) -> list[Piece]:
    return pieces


def one_of_each_shape(pieces: list[Piece]) -> list[Piece]:
    """The first piece and one piece of each other shape: what a shape-only run needs. Pieces of one shape make the
    same tensors (and the same shape caches); every piece frees what it makes before the next begins; the first
    makes what the loop keeps (the output, the parameter gradients), which every later piece has beside its own. So
    these pieces have the whole loop's peaks."""
    shapes: dict[tuple[int, int], Piece] = {}
    for piece in pieces[1:]:
        shapes.setdefault((piece.hi - piece.lo, piece.stop - piece.start), piece)
    return pieces[:1] + list(shapes.values())


# The pieces a call computes; a hook for callers that run on tensors without values: memprofile's fake-tensor
# estimate sets `one_of_each_shape` while it runs (memory/estimate.py), as Swin's attention's `chunk_plan`.
piece_plan: Callable[[list[Piece]], list[Piece]] = every_piece


def split_ok(modules: Iterable[nn.Module], inputs: Sequence[torch.Tensor], locality: TimeLocality) -> bool:
    """Whether layers made of `modules` may be recomputed in pieces now (see the module docstring), and it is worth
    it on these `inputs`: one of them at least MIN_SPLIT_BYTES, or MIN_HALO_SPLIT_BYTES where pieces have halos or are
    not contiguous."""
    costly = bool(locality.halo) or not all(map(_contiguous_pieces, inputs, locality.dims))
    if not worth_splitting(inputs, costly=costly):
        return False
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
                return False
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
                return False
    return True


def worth_splitting(inputs: Iterable[torch.Tensor], costly: bool = False) -> bool:
    """Whether a recompute on `inputs` is worth splitting: one of them at least MIN_SPLIT_BYTES, or
    MIN_HALO_SPLIT_BYTES where its parts cost more than their share of the whole (`costly`: halos, or pieces that are
    not contiguous)."""
    least = MIN_HALO_SPLIT_BYTES if costly else MIN_SPLIT_BYTES
    return any(x.numel() * x.element_size() >= least for x in inputs)


def _contiguous_pieces(x: torch.Tensor, dim: int) -> bool:
    """Whether pieces of `x` along `dim` are contiguous: `x` is, and every dimension before `dim` has one element
    (tokens (1, T·H·W, C) split along time are; a convolution's (1, C, T, H, W) is not)."""
    return x.is_contiguous() and all(size == 1 for size in x.shape[:dim])


def run_in_pieces(
    layer: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    locality: TimeLocality | None,
    rng: RngState | None = None,
    advance: bool = False,
) -> torch.Tensor:
    """layer(*inputs) (without a graph: call it under no_grad or in a Function's forward), a piece of time at a time
    when `locality` is given: its transient is a piece's, not the whole layer's. Each piece draws what one whole
    call draws (the generator replayed from `rng`, captured before); with `advance`, the generator ends where one
    whole call leaves it (the last piece draws from it)."""
    pieces = (
        [None] if locality is None else time_pieces(_output_length(inputs, locality), locality, piece_count(inputs))
    )
    computed = pieces if len(pieces) == 1 else piece_plan(pieces)
    out = None
    for k, piece in enumerate(computed):
        replay = rng is not None and not (advance and k == len(computed) - 1)
        with rng.replay() if replay else contextlib.nullcontext():
            if piece is None:
                return layer(*inputs)
            own = piece.narrow_output(layer(*_narrowed(piece, inputs, locality)), locality.out_dim)
        if len(pieces) == 1:
            return own
        if out is None:
            shape = list(own.shape)
            shape[locality.out_dim] = pieces[-1].stop
            out = own.new_empty(shape)
        out.narrow(locality.out_dim, piece.start, piece.stop - piece.start).copy_(own)
        del own
    return out


def _output_length(inputs: Sequence[torch.Tensor], locality: TimeLocality) -> int:
    return -(-inputs[0].shape[locality.dims[0]] // locality.scales[0])


def _narrowed(piece: Piece, inputs: Sequence[torch.Tensor], locality: TimeLocality) -> list[torch.Tensor]:
    return [piece.narrow_input(x, d, s) for x, d, s in zip(inputs, locality.dims, locality.scales, strict=True)]


def recomputed_in_pieces(
    layer: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    modules: Sequence[nn.Module],
    locality: TimeLocality | None,
    kept_below: int = 0,
) -> torch.Tensor:
    """layer(*inputs), keeping only `inputs` — or how the layers before make them again (remake.py) — for the
    backward, which recomputes it (a piece of time at a time when `locality` is given and the modules allow it:
    `split_ok`), random draws and autocast replayed, BatchNorm statistics untouched, and returns the gradients of
    the inputs and of the modules' trainable parameters. The output can be made again the same way, and the layers
    that read it keep that instead of the output — unless the output is smaller than `kept_below` bytes: then they
    keep it (for a layer costly to run again beside the memory its output would free)."""
    params = _parameters(modules)
    locality = locality if locality is not None and split_ok(modules, inputs, locality) else None
    return _Recomputed.apply(layer, locality, tuple(modules), kept_below, len(inputs), *inputs, *params)


def _parameters(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    return list(seen.values())


class _Recomputed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layer, locality: TimeLocality | None, modules, kept_below: int, n_inputs: int, *tensors):
        inputs = tensors[:n_inputs]
        device = inputs[0].device
        ctx.layer, ctx.locality, ctx.modules = layer, locality, modules
        ctx.rng = RngState.capture(device)
        ctx.autocast = AutocastState.capture(device)
        ctx.params = tensors[n_inputs:]
        out = run_in_pieces(layer, inputs, locality, ctx.rng, advance=True)
        keep(ctx, inputs)  # each input, or how the layer before makes it again
        if out.numel() * out.element_size() < kept_below:
            return out
        return mark(out, partial(_remade_output, ctx))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        inputs = kept(ctx)
        where: TimeLocality | None = ctx.locality
        wanted = [ctx.needs_input_grad[5 + i] for i in range(len(inputs))]
        input_grads = [torch.zeros_like(x) if w else None for x, w in zip(inputs, wanted, strict=True)]
        param_grads: list[torch.Tensor | None] = [None] * len(ctx.params)
        pieces = (
            [None]
            if where is None
            else piece_plan(time_pieces(grad_out.shape[where.out_dim], where, piece_count(inputs)))
        )
        for piece in pieces:
            parts = list(inputs) if piece is None else _narrowed(piece, inputs, where)
            parts = [part.detach().requires_grad_(w) for part, w in zip(parts, wanted, strict=True)]
            with torch.enable_grad(), _replay(ctx):
                out = ctx.layer(*parts)
                if piece is not None:
                    out = piece.narrow_output(out, where.out_dim)
            out = get_gradient_edge(out)  # the output itself is not needed by its backward: freed before it
            g_out = grad_out if piece is None else grad_out.narrow(where.out_dim, piece.start, piece.stop - piece.start)
            targets = [part for part, w in zip(parts, wanted, strict=True) if w] + list(ctx.params)
            grads = iter(torch.autograd.grad(out, targets, g_out, allow_unused=True))
            del out, parts  # this piece's recompute graph is dead: free it before the next piece's
            for k, w in enumerate(wanted):
                g = next(grads) if w else None
                if g is not None:
                    target = input_grads[k] if piece is None else piece.narrow_input(input_grads[k], where.dims[k],
                                                                                     where.scales[k])  # fmt: skip
                    target.add_(g)
            for k, g in enumerate(grads):
                if g is not None:
                    param_grads[k] = g if param_grads[k] is None else param_grads[k].add_(g)
        return (None, None, None, None, None, *input_grads, *param_grads)


def _replay(ctx) -> contextlib.ExitStack:
    """The forward's random draws and precision, BatchNorm statistics untouched."""
    stack = contextlib.ExitStack()
    for context in (ctx.rng.replay(), ctx.autocast(), running_stats_frozen(*ctx.modules)):
        stack.enter_context(context)
    return stack


def _remade_output(ctx) -> torch.Tensor:
    """The layer's output again (for the next layer's backward), without a graph, a piece of time at a time as in
    the forward (the same values)."""
    with torch.no_grad(), ctx.autocast(), running_stats_frozen(*ctx.modules):
        return run_in_pieces(ctx.layer, kept(ctx), ctx.locality, ctx.rng)
