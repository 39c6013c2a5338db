"""The Re² idea: a residual stage rewired into a reversible one with the same parameters.

A residual stage is a sequence of shape-keeping blocks F₁…Fₙ, originally wired ``h ← h + Fᵢ(h)``. Rewired with the
dual residual of Dr²Net (coefficients α, β), per block i and stage input a::

    x₀ = a,   y₀ = β·a
    xᵢ = Fᵢ(xᵢ₋₁) + yᵢ₋₁ + α·xᵢ₋₁            (forward)
    yᵢ = β·xᵢ₋₁
    out = (xₙ + yₙ) / (1 + β)
    xᵢ₋₁ = yᵢ / β                            (inverse)
    yᵢ₋₁ = xᵢ − Fᵢ(xᵢ₋₁) − α·xᵢ₋₁

α=1, β=0 is the original network exactly (yᵢ = 0, xᵢ = xᵢ₋₁ + Fᵢ(xᵢ₋₁)); α=0, β=1 is Re²TAL's rewiring. A block
may compute xᵢ₋₁ + Fᵢ(xᵢ₋₁) itself (`adds_input`: a ReLU-in ResNet block, whose F is ReLU(h + branch) − h only so that
h + F(h) is the original block): the stage runs it as it is, with α − 1 for α (`_alpha`), and never computes F's −h.

Any β ≠ 0 is invertible, so training need not store the activations inside the stage: `_ReversibleStageFunction`
keeps the stage input and yₙ of the last pair (xₙ is made again from the output, which the next layer holds anyway),
and its backward walks the blocks in reverse, rebuilding each block's input from its output and recomputing Fᵢ with
grad. Parameter gradients are *returned* from the Function (weights are explicit inputs), so `torch.autograd.grad`
and DDP see them like any other gradient.

The reconstructed stage input is compared with the kept one; when they differ by more than the tolerance (small β
divides, reduced precision accumulates) the stage redoes that step's backward from the kept input, exactly, and
counts the event in its guard (`guard.py`).
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch._C import _is_alias_of
from torch.autograd.graph import get_gradient_edge

from re2tal_cli.reversible import pieces as pieces_module
from re2tal_cli.reversible.guard import (
    DEFAULT_TOLERANCE,
    REDUCED_PRECISION_TOLERANCE,
    GuardStats,
    max_abs,
    sampled,
    sampled_within,
)
from re2tal_cli.reversible.pieces import Piece, TimeLocality, piece_count, run_in_pieces, split_ok, time_pieces
from re2tal_cli.reversible.recompute import checkpointed
from re2tal_cli.reversible.remake import is_remade, keep, kept_one
from re2tal_cli.reversible.replay import AutocastState, RngState, running_stats_frozen


class Execution(enum.StrEnum):
    """How a training step through a stage keeps what the backward needs."""

    PLAIN = "plain"  # ordinary autograd: every block's activations stored
    CHECKPOINT = "checkpoint"  # torch.utils.checkpoint per block: block inputs stored, each block recomputed
    REVERSIBLE = "reversible"  # stage input and output stored, block inputs rebuilt by the inverse (needs β ≠ 0)


@dataclass(frozen=True)
class Coupling:
    """The dual-residual coefficients; (1, 0) is the original residual wiring, (0, 1) Re²TAL's reversible one."""

    alpha: float = 1.0
    beta: float = 0.0

    def __post_init__(self):
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"coupling {name} must be a finite number ≥ 0, got {value}")

    @property
    def is_residual(self) -> bool:
        """The original wiring, computed directly as h + F(h)."""
        return self.alpha == 1.0 and self.beta == 0.0

    @property
    def invertible(self) -> bool:
        return self.beta > 0.0


RE2TAL = Coupling(alpha=0.0, beta=1.0)
ORIGINAL = Coupling(alpha=1.0, beta=0.0)


class ResidualStage(nn.Module):
    """A sequence of shape-keeping blocks, wired as the original residual network or as a dual-residual one.

    The blocks are *not* registered here: they stay where the backbone defines them (so checkpoint keys never change
    with the wiring) and the stage only holds references, in order.
    """

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        if not blocks:
            raise ValueError("a residual stage needs at least one block")
        self._blocks = tuple(blocks)  # a tuple is not registered by nn.Module
        self.coupling = ORIGINAL
        self.execution = Execution.PLAIN
        self.tolerance: float | None = None  # None: DEFAULT_TOLERANCE by precision
        self.guard = GuardStats()

    @property
    def blocks(self) -> tuple[nn.Module, ...]:
        return self._blocks

    def set_wiring(self, coupling: Coupling, execution: Execution | str, tolerance: float | None = None) -> None:
        execution = Execution(execution)
        if execution is Execution.REVERSIBLE and not coupling.invertible:
            raise ValueError(f"reversible execution needs beta > 0, got beta={coupling.beta}")
        self.coupling, self.execution, self.tolerance = coupling, execution, tolerance

    def extra_repr(self) -> str:
        c = self.coupling
        return f"blocks={len(self._blocks)}, alpha={c.alpha:g}, beta={c.beta:g}, execution={self.execution.value}"

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if self.execution is Execution.REVERSIBLE and torch.is_grad_enabled():
            params = [p for p in self.parameters_of_blocks() if p.requires_grad]
            if a.requires_grad or params:
                return _ReversibleStageFunction.apply(self, a, *params)
        if self.execution is Execution.CHECKPOINT and torch.is_grad_enabled():
            return self._run(a, per_block_checkpoint=True)
        return self._run(a, per_block_checkpoint=False)

    def parameters_of_blocks(self) -> list[nn.Parameter]:
        """Each parameter once, in block order (a tied weight appears once)."""
        seen: dict[int, nn.Parameter] = {}
        for block in self._blocks:
            for p in block.parameters():
                seen.setdefault(id(p), p)
        return list(seen.values())

    def _run(self, a: torch.Tensor, per_block_checkpoint: bool) -> torch.Tensor:
        """Forward with ordinary autograd (or per-block checkpointing): the reference the reversible path matches."""
        alpha, beta = self.coupling.alpha, self.coupling.beta
        if self.coupling.is_residual:
            h = a
            for f in self._blocks:
                h = checkpointed(_residual_step, f, h, modules=[f]) if per_block_checkpoint else _residual_step(f, h)
            return h
        x, y = a, beta * a
        for f in self._blocks:
            step = (f, x, y, _alpha(f, alpha), beta)
            x, y = checkpointed(_dual_step, *step, modules=[f]) if per_block_checkpoint else _dual_step(*step)
        return (x + y) / (1 + beta)

    def default_tolerance(self, dtype: torch.dtype, autocast: AutocastState) -> float:
        if self.tolerance is not None:
            return self.tolerance
        if autocast.enabled and autocast.dtype in (torch.float16, torch.bfloat16):
            return REDUCED_PRECISION_TOLERANCE
        return DEFAULT_TOLERANCE.get(dtype, REDUCED_PRECISION_TOLERANCE)


def _residual_step(f: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """h + Fᵢ(h), the original wiring: the block itself where it `adds_input` (as the original network computes it)."""
    return f(h) if _adds_input(f) else h + f(h)


def _adds_input(f: nn.Module) -> bool:
    """Whether the block's forward returns h + Fᵢ(h) rather than Fᵢ(h)."""
    return getattr(f, "adds_input", False)


def _alpha(f: nn.Module, alpha: float) -> float:
    """The α of the dual step run with the block's forward: α − 1 where the forward is h + Fᵢ(h). The same function
    as Fᵢ with α, minus Fᵢ's −h: a pass over the block's output forward, and backward the −gradient that autograd
    would hold beside the whole block's backward (the walk adds it in place instead)."""
    return alpha - 1.0 if _adds_input(f) else alpha


def _dual_step(f: nn.Module, x: torch.Tensor, y: torch.Tensor, alpha: float, beta: float, graph_free: bool = False):
    """xᵢ = (Fᵢ(xᵢ₋₁) + yᵢ₋₁) + α·xᵢ₋₁,  yᵢ = β·xᵢ₋₁ — the one definition every execution computes (same order of
    rounding). α=0 and β=1 cost no arithmetic: at Re²TAL's point yᵢ *is* xᵢ₋₁, no copy. A `graph_free` step (no
    autograd graph records it) adds into Fᵢ's output where that is a tensor of its own in the streams' dtype
    (`_own_tensor`): the same values without a block-sized temporary beside it."""
    fx = f(x)
    if graph_free and _own_tensor(fx, y.dtype, x, y):
        x_next = fx.add_(y)
        if alpha:
            x_next.add_(x, alpha=alpha)
    else:
        x_next = fx + y  # promotes F's autocast dtype back to the streams' dtype
        if alpha:
            x_next = torch.add(x_next, x, alpha=alpha)
    return x_next, _scaled(x, beta)


def _own_tensor(t: torch.Tensor, dtype: torch.dtype, *streams: torch.Tensor) -> bool:
    """Whether `t` is a new tensor of `dtype` that nothing else refers to: not a view, not a parameter, no alias of
    the streams (an F may return its input)."""
    fresh = t.dtype == dtype and t._base is None and not t.requires_grad
    return fresh and not any(_is_alias_of(t, stream) for stream in streams)


def _scaled(t: torch.Tensor, c: float) -> torch.Tensor:
    return t if c == 1.0 else t * c


class _ReversibleStageFunction(torch.autograd.Function):
    """Forward without a graph; backward rebuilds each block's input from its output (minREV's shape, one Function
    for every backbone family: it calls the blocks, never looks inside them)."""

    @staticmethod
    def forward(ctx, stage: ResidualStage, a: torch.Tensor, *params: nn.Parameter) -> torch.Tensor:
        alpha, beta = stage.coupling.alpha, stage.coupling.beta
        training = any(block.training for block in stage.blocks)
        ctx.stage, ctx.params, ctx.coupling = stage, params, stage.coupling  # coefficients as of this forward
        ctx.autocast = AutocastState.capture(a.device)
        ctx.rng = []  # one generator state per block, replayed in the recompute
        x, y = a.detach(), _scaled(a.detach(), beta)
        for f in stage.blocks:
            rng = RngState.capture(a.device) if training else None
            ctx.rng.append(rng)
            x, y = _dual_step(_forward_of(f, rng, x), x, y, _alpha(f, alpha), beta, graph_free=True)
        out = _output(x, y, beta)
        # The stage input (the guard's reference, the fallback's start) is kept, or how to make it again if the
        # layer before can (remake.py); when it is made again, the guard compares on a sample of it (guard.py), taken
        # now with max|a|. Of the last pair only yₙ is kept: xₙ = (1+β)·out − yₙ, and the output is held anyway by
        # the next layer, which needs it for its own backward. Both are dead once the first block is inverted, so
        # they are held where the backward can drop them early rather than in save_for_backward, which keeps them to
        # the end of the backward (at the price of saved-tensor hooks not seeing them); the output through a detached
        # alias (no reference cycle through its grad_fn), whose version counter is the output's: an in-place change
        # of the output after the forward is caught, as autograd would catch it.
        keep(ctx, [a])
        ctx.input_sample = (sampled(a.detach()).clone(), max_abs(a)) if is_remade(ctx, 0) else None
        ctx.input_dtype = a.dtype
        ctx.last_pair = [out.detach(), y]
        ctx.output_version = out._version
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        stage: ResidualStage = ctx.stage
        tolerance = stage.default_tolerance(ctx.input_dtype, ctx.autocast)
        pair, ctx.last_pair = ctx.last_pair, None
        if pair is not None:  # (None: a second backward through a retained graph; the first one freed the pair)
            pair = _last_pair(ctx, pair)
            grads, error = _reversible_walk(ctx, pair, grad_out)
            if stage.guard.accept(error, tolerance):
                return (None, *grads)
            del grads
        return (None, *_exact_walk(ctx, kept_one(ctx, 0), grad_out))


def _output(x: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """(xₙ + yₙ)/(1+β), in xₙ's storage (a block's sum: the forward's own)."""
    return x.add_(y).div_(1 + beta)


def _last_pair(ctx, kept: list) -> list:
    """[xₙ, yₙ] from the kept [out, yₙ] (emptied: the output's alias is dropped as soon as xₙ is made). At β=1,
    2·out is the forward's xₙ + yₙ exactly; xₙ carries that sum's rounding, one more step of the inverse's."""
    out, y = kept
    kept.clear()
    if out._version != ctx.output_version:
        raise RuntimeError(
            "the output of a reversible stage was modified in place after its forward; its backward rebuilds the "
            "stage from that output: modify a copy instead"
        )
    x = out.mul(1 + ctx.coupling.beta).sub_(y)
    return [x, y]


# The backward, step by step. Per block i, from xᵢ = Fᵢ(xᵢ₋₁) + yᵢ₋₁ + α·xᵢ₋₁ and yᵢ = β·xᵢ₋₁:
#
#   invert      xᵢ₋₁ = yᵢ / β,   yᵢ₋₁ = xᵢ − Fᵢ(xᵢ₋₁) − α·xᵢ₋₁
#   gradient    ∂L/∂θᵢ = Jᵀ_θ·gxᵢ,   ∂L/∂xᵢ₋₁ = Jᵀ_F·gxᵢ + α·gxᵢ + β·gyᵢ,   ∂L/∂yᵢ₋₁ = gxᵢ
#   stage input (x₀ = a, y₀ = β·a): ∂L/∂a = gx₀ + β·gy₀
#
# out = (xₙ + yₙ)/(1+β) gives both streams the gradient grad_out/(1+β); every gradient is linear in it, so the
# division is done once, on whichever is smaller: grad_out at the start (`_incoming`: deep stages on short clips,
# where the parameters outweigh the activations) or the results at the end (no stage-sized copy at long inputs). The
# working set decides the step's peak memory (the transient of one block's recompute, not the stored activations),
# so besides the recompute graph only xᵢ₋₁, yᵢ₋₁, gxᵢ, gyᵢ are alive when a block's gradient is taken, tensors are
# dropped as soon as they are dead (arguments that a step consumes come in a list it empties), and gradients are
# updated in place.


def _reversible_walk(ctx, pair: list, grad_out: torch.Tensor):
    """Blocks n…1 from the last pair [xₙ, yₙ] (emptied: the pair is freed as soon as it is inverted): each block's
    input by inversion, then its gradient. Returns the gradients for (a, *params) and the reconstruction error of
    (x₀, y₀) against the kept (a, β·a), relative to max|a|, as a 0-d tensor (the guard reads it). The comparison
    runs in the rebuilt tensors' storage, each once the walk is done with it: it allocates nothing stage-sized."""
    beta = ctx.coupling.beta
    grads = _ParameterGradients(ctx.params)
    gx = gy = incoming = _incoming(ctx, grad_out)
    error = None
    for i in reversed(range(len(ctx.stage.blocks))):
        y = pair.pop()
        x_prev = y if beta == 1.0 else y / beta  # xᵢ₋₁ = yᵢ / β  (at β=1, yᵢ *is* xᵢ₋₁)
        del y
        owned = _owned_by_walk(gy, gx, grad_out)
        y_prev, grad_in = _block_backward(ctx, i, x_prev, gx, gy, grads, owned, x_next=pair, check_input=i == 0)
        if i == 0:
            error, y_prev = y_prev, None  # block 0 returned y₀'s error in place of y₀
        gx, gy = grad_in, gx  # (∂L/∂xᵢ₋₁, ∂L/∂yᵢ₋₁ = gxᵢ)
        pair[:] = [x_prev, y_prev]
    error = torch.maximum(error, _input_error(ctx, x_prev, 1.0))  # x₀, dead now: compared in its own storage
    return _stage_gradients(ctx, gx, gy, grads, scaled=incoming is not grad_out), error / _input_scale(ctx)


def _exact_walk(ctx, a: torch.Tensor, grad_out: torch.Tensor) -> list:
    """The fallback: the block inputs recomputed forward from the kept stage input, without a graph (checkpointing's
    cost), then each block's gradient as in the reversible walk. Exact whatever β."""
    inputs = _replayed_forward(ctx, a)[0]
    grads = _ParameterGradients(ctx.params)
    gx = gy = incoming = _incoming(ctx, grad_out)
    for i in reversed(range(len(ctx.stage.blocks))):
        _, grad_in = _block_backward(ctx, i, inputs.pop(), gx, gy, grads, _owned_by_walk(gy, gx, grad_out))
        gx, gy = grad_in, gx
    return _stage_gradients(ctx, gx, gy, grads, scaled=incoming is not grad_out)


def _incoming(ctx, grad_out: torch.Tensor) -> torch.Tensor:
    """The gradient the walk starts from: grad_out/(1+β) when it is smaller than the stage's parameters together
    (dividing it costs less than dividing their gradients at the end), else grad_out itself (the comment above
    `_reversible_walk`)."""
    if grad_out.numel() < sum(p.numel() for p in ctx.params):
        return grad_out / (1 + ctx.coupling.beta)
    return grad_out


def _owned_by_walk(gy: torch.Tensor, gx: torch.Tensor, grad_out: torch.Tensor) -> bool:
    """Whether a block's backward may overwrite gyᵢ: not the gradient the stage was given (not ours), nor gxᵢ itself
    (the first block's, when the walk starts from a scaled copy: still to be read)."""
    return gy is not grad_out and gy is not gx


def _replayed_forward(ctx, a: torch.Tensor) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The forward again from the stage input, without a graph: the block inputs x₀…xₙ₋₁ and the last pair."""
    stage: ResidualStage = ctx.stage
    alpha, beta = ctx.coupling.alpha, ctx.coupling.beta
    xs, x, y = [], a.detach(), _scaled(a.detach(), beta)
    with torch.no_grad(), ctx.autocast():
        for f, rng in zip(stage.blocks, ctx.rng, strict=True):
            xs.append(x)
            with _replayed(rng), running_stats_frozen(f):
                x, y = _dual_step(_forward_of(f, rng, x), x, y, _alpha(f, alpha), beta, graph_free=True)
    return xs, (x, y)


def _block_backward(
    ctx,
    i: int,
    x_prev: torch.Tensor,
    gx: torch.Tensor,
    gy: torch.Tensor,
    grads: _ParameterGradients,
    gy_owned: bool,
    x_next: list | None = None,
    check_input: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Recompute Fᵢ(xᵢ₋₁) with a graph and take its vector-Jacobian products with gxᵢ: the parameters' go into
    `grads`, and ∂L/∂xᵢ₋₁ = Jᵀ_F·gxᵢ + α·gxᵢ + β·gyᵢ is returned (in gyᵢ's storage when `gy_owned`: it is dead
    after). With `x_next` = [xᵢ] (emptied once used), the same recompute also inverts the block: yᵢ₋₁ = xᵢ −
    Fᵢ(xᵢ₋₁) − α·xᵢ₋₁ is returned first (else None), computed in xᵢ's storage; with `check_input` (block 0), y₀ is
    compared with β·a as soon as it is known (before the gradient's transient) and its error is returned in its
    place.

    An F local in time (its `time_locality`; see pieces.py) is done a piece of time at a time, and an F that is a
    sum of terms (its `summands`: attention's head groups) a term at a time: the step's peak is this transient, and a
    part's is a fraction of it."""
    f = ctx.stage.blocks[i]
    alpha, beta = _alpha(f, ctx.coupling.alpha), ctx.coupling.beta
    block_params = grads.of(f)
    parts = _parts(f, x_prev)
    if len(parts) < 2:
        x_in, fx = _recompute(ctx, i, f, f, x_prev)
        y_prev = None
        if x_next is not None:
            y_prev = x_next.pop().sub_(fx.detach())  # xᵢ becomes yᵢ₋₁, before the gradient's transient
            if alpha:
                y_prev.sub_(x_prev, alpha=alpha)
            if check_input:
                y_prev = _input_error(ctx, y_prev, beta)
        fx = get_gradient_edge(fx)  # F's output itself is not needed by its backward: freed before the gradient
        grad_in, *grad_params = torch.autograd.grad(fx, [x_in, *block_params], gx, allow_unused=True)
        del fx, x_in  # this block's recompute graph is dead: free it before the next block's
        grads.add(block_params, grad_params, gx, gy)
        del grad_params
        grad_in = torch.zeros_like(gx) if grad_in is None else _owned(grad_in, gx, gy)  # None: F ignores x
        for g, coefficient in _stream_terms(gx, gy, alpha, beta):
            grad_in.add_(g, alpha=coefficient)
        return y_prev, grad_in

    y_prev = x_next.pop() if x_next is not None else None  # xᵢ, becoming yᵢ₋₁ a part at a time
    # At the walk's last block y₀ is only compared, a piece's frames at a time, and dead after: where ∂L/∂x₀ would
    # need a tensor of its own (gy not the walk's), it is made in those frames instead (`_GradientInFrames`).
    in_y = check_input and not gy_owned and parts[0].piece is not None
    if in_y:
        grad_in, error = _GradientInFrames(y_prev, parts[0].dim, gx, gy, alpha, beta), None
    else:
        grad_in = _scaled_gradients(gx, gy, alpha, beta, gy_owned)  # the parts' Jᵀ_F·gxᵢ are added (halos overlap)
    leaves = None if parts[0].slices_parameters else _Leaves(f, block_params)
    for part in parts:
        sliced: list[tuple[nn.Parameter, object, torch.Tensor]] = []  # (parameter, index, the slice the term used)
        if leaves is None:
            term = partial(part.term, take=partial(_take, sliced, grads))
        else:
            term = partial(leaves.run, part.term)
        x_in, fx = _recompute(ctx, i, f, term, part.of_input(x_prev))
        with torch.enable_grad():  # (the backward runs without grad mode: a view taken there would have no graph)
            fx = part.of_term(fx)
        if y_prev is not None:
            part.of_output(y_prev).sub_(fx.detach())
            if in_y:
                if alpha:
                    part.of_output(y_prev).sub_(part.of_output(x_prev), alpha=alpha)
                error = _maximum(error, _input_error(ctx, y_prev, beta, part.piece, part.dim))
        fx = get_gradient_edge(fx)  # (as above: the output freed before the gradient)
        if leaves is None:
            whole = [p for p in block_params if all(p is not q for q, _, _ in sliced)]
            targets = [x_in, *whole, *(view for _, _, view in sliced)]
            g_part, *grad_params = torch.autograd.grad(fx, targets, part.of_output(gx), allow_unused=True)
            grads.add(whole, grad_params[: len(whole)], gx, gy)
            grads.add_slices([(p, index) for p, index, _ in sliced], grad_params[len(whole) :])
            del grad_params, sliced
        else:
            torch.autograd.backward(fx, part.of_output(gx), inputs=[x_in, *leaves.tensors])
            g_part = x_in.grad
        del fx, x_in
        if in_y:
            grad_in.add(part.piece, g_part)
        elif g_part is not None:
            part.of_input(grad_in).add_(g_part)
        del g_part
    if leaves is not None:
        grads.add(block_params, [leaf.grad for leaf in leaves.tensors], gx, gy)
    if in_y:
        return error, grad_in.target
    if y_prev is not None and alpha:
        y_prev.sub_(x_prev, alpha=alpha)
    if check_input:
        y_prev = _input_error(ctx, y_prev, beta)
    return y_prev, grad_in


class _GradientInFrames:
    """∂L/∂xᵢ₋₁ made in a tensor whose frames (along `dim`) become free a time piece at a time, in order (y₀ at the
    walk's last block, once compared): a piece's own frames are set to α·gxᵢ + β·gyᵢ when it is done with them, and
    each piece's Jᵀ_F·gxᵢ (its own frames and halos) is added where the frames are free already — its left halo at
    once, its right halo (the next piece's first frames, still y₀) when the next piece has freed them."""

    def __init__(self, target: torch.Tensor, dim: int, gx: torch.Tensor, gy: torch.Tensor, alpha: float, beta: float):
        self.target, self.dim, self.streams = target, dim, (gx, gy, alpha, beta)
        self.free = 0  # frames [0, free) hold the gradient
        self.pending: list[tuple[int, torch.Tensor]] = []  # (first frame, gradient) still to add

    def add(self, piece: Piece, gradient: torch.Tensor | None) -> None:
        gx, gy, alpha, beta = self.streams
        frames = slice(piece.start, piece.stop)
        own, gx_own = _narrow(self.target, self.dim, frames), _narrow(gx, self.dim, frames)
        gy_own = gx_own if gy is gx else _narrow(gy, self.dim, frames)  # (one tensor, one term: `_stream_terms`)
        _set_stream_terms(own, gx_own, gy_own, alpha, beta)
        self.free = piece.stop
        if gradient is not None:
            self.pending.append((piece.lo, gradient))
        waiting = []
        for first, g in self.pending:
            frames = g.shape[self.dim]
            ready = min(frames, self.free - first)
            if ready > 0:
                self.target.narrow(self.dim, first, ready).add_(g.narrow(self.dim, 0, ready))
            if ready < frames:  # (a copy: a view would keep the piece's whole gradient alive)
                waiting.append((first + ready, g.narrow(self.dim, ready, frames - ready).clone()))
        self.pending = waiting


def _maximum(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else torch.maximum(a, b)


class _Leaves:
    """Detached aliases of a block's trainable parameters (`tensors`, in the block's parameter order) that a recompute
    in pieces runs the block with (`run`): a backward into them accumulates each piece's parameter gradients into
    their `.grad` in place, one parameter's gradient at a time, where `torch.autograd.grad` would return a whole set
    of them per piece beside the sum (at the end of a ViT-H backward, two MLP weights: 50 MiB)."""

    def __init__(self, block: nn.Module, params: list[nn.Parameter]):
        position = {id(p): k for k, p in enumerate(params)}
        self.tensors = [p.detach().requires_grad_(True) for p in params]
        self._by_name = {
            name: self.tensors[position[id(p)]] for name, p in block.named_parameters() if id(p) in position
        }

    def run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(block, self._by_name, (x,))


@dataclass(frozen=True)
class _Part:
    """One part of a block's recompute: `term` on the part's view of the block input is the part's share of F —
    a time piece's frames (with halos), or one of F's summands (on the whole input)."""

    term: Callable[..., torch.Tensor]  # a piece's is the block itself, run with its parameters' leaves (`_Leaves`)
    of_input: Callable[[torch.Tensor], torch.Tensor]  # the part's view of an input-shaped tensor (xᵢ₋₁, its gradient)
    of_term: Callable[[torch.Tensor], torch.Tensor]  # the part's own frames of the term's output
    of_output: Callable[[torch.Tensor], torch.Tensor]  # the part's view of an output-shaped tensor (xᵢ, gxᵢ)
    # The term takes slices of parameters through `take(parameter, index)`: their gradients are taken for the
    # slices, not through the slicing (which would make a zero-filled gradient of the whole parameter per part).
    slices_parameters: bool = False
    piece: Piece | None = None  # a time piece's frames along `dim`; None for a summand (it spans the whole)
    dim: int = 0


def _parts(f: nn.Module, x: torch.Tensor) -> list[_Part]:
    """The parts F's recompute on `x` is done in: its summands (`f.summands(x)` of them, `f.summand(x, index,
    count)` computing one), else its time pieces; [] when it is done whole."""
    count = f.summands(x) if hasattr(f, "summands") else 1
    if count > 1:
        summand = [partial(f.summand, index=k, count=count) for k in range(count)]
        return [_Part(term, _whole, _whole, _whole, slices_parameters=True) for term in summand]
    locality = _locality(f, x)
    if locality is None:
        return []
    dim = locality.out_dim
    pieces = pieces_module.piece_plan(time_pieces(x.shape[dim], locality, piece_count([x])))
    return [
        _Part(f, partial(p.narrow_input, dim=dim, scale=1), partial(p.narrow_output, dim=dim),
              partial(_narrow, dim=dim, piece=slice(p.start, p.stop)), piece=p, dim=dim)
        for p in pieces
    ] if len(pieces) > 1 else []  # fmt: skip


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t


def _take(sliced: list, grads: _ParameterGradients, parameter: nn.Parameter, index) -> torch.Tensor:
    """parameter[index], recorded in `sliced` with the slice when the stage differentiates the parameter."""
    view = parameter[index]
    if grads.differentiates(parameter):
        sliced.append((parameter, index, view))
    return view


def _stream_terms(gx: torch.Tensor, gy: torch.Tensor, alpha: float, beta: float) -> list[tuple[torch.Tensor, float]]:
    """α·gxᵢ + β·gyᵢ as (gradient, coefficient) terms, none with coefficient 0: one, (α + β)·gxᵢ, where the two are one
    tensor (the walk's first block: both streams get the stage's gradient) — for a ReLU-in block at α=0, β=1 (α − 1
    + β = 0: `_alpha`) none at all."""
    terms = [(gx, alpha + beta)] if gy is gx else [(gx, alpha), (gy, beta)]
    return [(g, c) for g, c in terms if c]


def _set_stream_terms(out: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """out ← α·gxᵢ + β·gyᵢ (`out` another tensor than both)."""
    terms = _stream_terms(gx, gy, alpha, beta)
    if terms:
        torch.mul(*terms[0], out=out)
    else:
        out.zero_()
    for g, coefficient in terms[1:]:
        out.add_(g, alpha=coefficient)
    return out


def _scaled_gradients(gx: torch.Tensor, gy: torch.Tensor, alpha: float, beta: float, gy_owned: bool) -> torch.Tensor:
    """α·gxᵢ + β·gyᵢ, in gyᵢ's storage when it is ours."""
    if gy is gx:
        return _set_stream_terms(torch.empty_like(gx), gx, gy, alpha, beta)
    out = gy if gy_owned else gy.clone()
    if beta != 1.0:
        out.mul_(beta)
    return out.add_(gx, alpha=alpha) if alpha else out


def _stage_gradients(ctx, gx: torch.Tensor, gy: torch.Tensor, grads: _ParameterGradients, scaled: bool) -> list:
    """[∂L/∂a, *∂L/∂θ], each scaled by 1/(1+β) unless the walk started from a `scaled` gradient: ∂L/∂a = (gx₀ +
    β·gy₀)/(1+β) (comment above `_reversible_walk`), in one pass in gx₀'s storage (the walk's own: the last block's
    input gradient)."""
    beta = ctx.coupling.beta
    if scaled:
        grad_a = gx.add_(gy, alpha=beta) if ctx.needs_input_grad[1] else None
        return [grad_a, *grads.values]
    grad_a = gx.lerp_(gy, beta / (1 + beta)) if ctx.needs_input_grad[1] else None
    present = [grad for grad in grads.values if grad is not None]
    if present:
        torch._foreach_div_(present, 1 + beta)
    return [grad_a, *grads.values]


class _ParameterGradients:
    """The stage's parameter gradients, accumulated block by block in the Function's parameter order."""

    def __init__(self, params: Sequence[nn.Parameter]):
        self._position = {id(p): k for k, p in enumerate(params)}
        self.values: list[torch.Tensor | None] = [None] * len(params)

    def of(self, block: nn.Module) -> list[nn.Parameter]:
        """The block's parameters that the Function differentiates (trainable ones)."""
        return [p for p in block.parameters() if self.differentiates(p)]

    def differentiates(self, param: nn.Parameter) -> bool:
        return id(param) in self._position

    def add_slices(self, slices: list[tuple[nn.Parameter, object]], grads: list) -> None:
        """The gradients of slices param[index] of parameters, added into the parameters' gradients."""
        for (p, index), grad in zip(slices, grads, strict=True):
            if grad is not None:
                k = self._position[id(p)]
                if self.values[k] is None:
                    self.values[k] = torch.zeros_like(p)
                self.values[k][index].add_(grad)

    def add(self, params: list, grads: list, *incoming: torch.Tensor) -> None:
        for p, grad in zip(params, grads, strict=True):
            if grad is not None:
                k = self._position[id(p)]
                grad = _owned(grad, *incoming)
                self.values[k] = grad if self.values[k] is None else self.values[k].add_(grad)


def _forward_of(f: nn.Module, rng: RngState | None, x: torch.Tensor):
    """F as the graph-free forward runs it on `x`: a piece of time at a time when it is local (its transient is a
    piece's), each piece drawing what one call draws."""
    locality = _locality(f, x)
    return f if locality is None else partial(_in_pieces, f, locality, rng)


def _in_pieces(f: nn.Module, locality: TimeLocality, rng: RngState | None, x: torch.Tensor) -> torch.Tensor:
    return run_in_pieces(f, (x,), locality, rng, advance=True)


def _locality(f: nn.Module, x: torch.Tensor) -> TimeLocality | None:
    """How F reaches along time, as its module declares (`time_locality`), if running it on `x` may be split now."""
    locality = getattr(f, "time_locality", None)
    return locality if locality is not None and split_ok([f], [x], locality) else None


def _narrow(t: torch.Tensor, dim: int, piece: slice) -> torch.Tensor:
    return t.narrow(dim, piece.start, piece.stop - piece.start)


def _recompute(ctx, i: int, f: nn.Module, term, x_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """term(xᵢ₋₁) — Fᵢ, or a part of it — with a graph, replaying the forward's random draws and precision, Fᵢ's
    BatchNorm statistics untouched."""
    with torch.enable_grad(), _replayed(ctx.rng[i]), ctx.autocast(), running_stats_frozen(f):
        x_in = x_prev.detach().requires_grad_(True)
        return x_in, term(x_in)


def _input_error(ctx, rebuilt: torch.Tensor, coefficient: float, piece: Piece | None = None, dim: int = 0):
    """max|rebuilt − coefficient·a| over the kept stage input a — computed in `rebuilt`'s storage, which the walk owns
    and no longer needs — or over the forward's sample of a when a is made again rather than kept (guard.py); over a
    `piece`'s own frames along `dim` only when given."""
    if ctx.input_sample is not None:
        difference = sampled(rebuilt) - coefficient * ctx.input_sample[0]
        if piece is not None:  # (a mask, not a selection: its size would depend on values, which fake tensors lack)
            inside = sampled_within(rebuilt.shape, dim, piece.start, piece.stop, rebuilt.device)
            difference = torch.where(inside, difference, 0)
        return max_abs(difference)
    a = kept_one(ctx, 0)
    if _is_alias_of(rebuilt, a):  # x₀ of a one-block stage at β=1 is yₙ = β·a: a itself, not rebuilt
        return torch.zeros((), dtype=a.dtype, device=a.device)
    if piece is not None:
        rebuilt, a = (t.narrow(dim, piece.start, piece.stop - piece.start) for t in (rebuilt, a))
    return max_abs(rebuilt.sub_(a, alpha=coefficient))


def _input_scale(ctx) -> torch.Tensor:
    """max|a| of the stage input, which the reconstruction error is relative to (the forward took it with the sample
    when a is made again)."""
    sample, ctx.input_sample = ctx.input_sample, None  # its last use: ctx itself lives as long as the whole graph
    scale = max_abs(kept_one(ctx, 0)) if sample is None else sample[1]
    return scale.clamp_min(torch.finfo(scale.dtype).tiny)


def _owned(grad: torch.Tensor, *incoming: torch.Tensor) -> torch.Tensor:
    """`grad`, or a copy when it shares memory with an incoming gradient (F passed it through), since the walk
    updates its gradients in place."""
    return grad.clone() if any(_is_alias_of(grad, g) for g in incoming) else grad


def _replayed(rng: RngState | None) -> contextlib.AbstractContextManager:
    return rng.replay() if rng is not None else contextlib.nullcontext()
