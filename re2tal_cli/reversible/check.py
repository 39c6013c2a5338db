"""Measuring a rewired network against ordinary autograd: Dr²Net's gradient error level and the reconstruction error.

The reference is the *same* rewired network (same α, β, same random draws) trained with ordinary autograd, so any
difference is the reversible backward's numerical error, not a change of architecture.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from re2tal_cli.reversible.recompute import default_outside
from re2tal_cli.reversible.stage import Coupling, Execution, ResidualStage


def gradient_error_level(
    actual: Sequence[torch.Tensor | None], expected: Sequence[torch.Tensor | None], rtol: float = 1e-5
) -> float:
    """Dr²Net's metric: the smallest atol for which `torch.allclose(actual, expected, rtol=rtol, atol=atol)` holds for
    every pair, i.e. max(|a − e| − rtol·|e|) clipped at 0. NaN when any difference is NaN (a NaN gradient has no
    atol at which it is close: `max` would skip it), inf when one side lacks a gradient the other has."""
    levels = [0.0]
    for a, e in zip(actual, expected, strict=True):
        if a is None or e is None:
            if (a is None) != (e is None):
                return float("inf")
            continue
        levels.append(((a - e).abs() - rtol * e.abs()).max().clamp_min(0).item())
    return _max(levels)


def _max(values: Sequence[float]) -> float:
    """The largest value, NaN if any is NaN (Python's `max(0.0, nan)` is 0.0)."""
    return math.nan if any(math.isnan(v) for v in values) else max(values, default=0.0)


@dataclass(frozen=True)
class CheckReport:
    input_shape: tuple[int, ...]
    dtype: str
    alpha: float
    beta: float
    gradient_error_level: float  # over the input and every parameter gradient
    max_abs_gradient_error: float
    output_error: float  # max |reversible − autograd| of the forward output
    reconstruction_error: float  # max over stages of |rebuilt − kept stage input| / max|kept stage input|
    fallbacks: int  # stage backward passes that fell back to exact recompute
    backward_passes: int


def check_reversibility(
    model: nn.Module, video: torch.Tensor, coupling: Coupling, tolerance: float | None = None, rtol: float = 1e-5
) -> CheckReport:
    """One training step (train mode: dropout and drop-path active) with ordinary autograd and one reversible (a
    backbone's layers outside the stages recomputed, as a reversible wiring runs them), on a copy of `model` on the
    video's device and dtype (its weights and BatchNorm statistics are left untouched), with identical random draws:
    the CPU generator and the video's device's generator start from the same state."""
    model = copy.deepcopy(model).to(device=video.device, dtype=video.dtype).train()
    stages = [m for m in model.modules() if isinstance(m, ResidualStage)]
    video = video.detach().requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    devices = [video.device] if video.device.type == "cuda" else []
    generator_state = torch.get_rng_state()
    device_states = [torch.cuda.get_rng_state(d) for d in devices]
    results = {}
    for execution in (Execution.PLAIN, Execution.REVERSIBLE):
        for stage in stages:
            stage.set_wiring(coupling, execution, tolerance)
            stage.guard.reset()
        if hasattr(model, "outside"):  # a backbone: the layers outside its stages kept, then recomputed
            model.outside = default_outside(execution)
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(generator_state)
            for device, state in zip(devices, device_states, strict=True):
                torch.cuda.set_rng_state(state, device)
            out = model(video)
            weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype).to(out.device)
            grads = torch.autograd.grad((out * weights).sum(), [video, *params], allow_unused=True)
        results[execution] = (out.detach(), grads)
    (out_ref, g_ref), (out_rev, g_rev) = results[Execution.PLAIN], results[Execution.REVERSIBLE]
    abs_errors = [
        (a - e).abs().max().item() for a, e in zip(g_rev, g_ref, strict=True) if a is not None and e is not None
    ]
    return CheckReport(
        input_shape=tuple(video.shape),
        dtype=str(video.dtype).removeprefix("torch."),
        alpha=coupling.alpha,
        beta=coupling.beta,
        gradient_error_level=gradient_error_level(g_rev, g_ref, rtol),
        max_abs_gradient_error=_max(abs_errors),
        output_error=(out_rev - out_ref).abs().max().item(),
        reconstruction_error=_max([s.guard.max_error for s in stages]),
        fallbacks=sum(s.guard.fallbacks for s in stages),
        backward_passes=sum(s.guard.backward_passes for s in stages),
    )


@dataclass(frozen=True)
class ErrorMap:
    """Dr²Net's gradient error level (supplementary Fig. 3) over a grid of α (columns) and β (rows)."""

    alphas: tuple[float, ...]
    betas: tuple[float, ...]
    levels: tuple[tuple[float, ...], ...]  # levels[i][j]: at β = betas[i], α = alphas[j]
    input_shape: tuple[int, ...]
    dtype: str


def error_map(
    model: nn.Module, video: torch.Tensor, grid: int, rtol: float = 1e-5, on_point=lambda done: None
) -> ErrorMap:
    """The gradient error level at every (α, β) of a `grid` × `grid` lattice, α in [0, 1] and β in [0.1, 1] (the
    square of Dr²Net's map), with the guard off (tolerance ∞): the raw reversible gradients against autograd's.
    `on_point(done)` is told after each point."""
    alphas = [i / (grid - 1) for i in range(grid)]
    betas = [0.1 + 0.9 * i / (grid - 1) for i in range(grid)]
    levels = []
    for b in betas:
        row = []
        for a in alphas:
            row.append(check_reversibility(model, video, Coupling(a, b), tolerance=math.inf, rtol=rtol)
                       .gradient_error_level)  # fmt: skip
            on_point(len(levels) * grid + len(row))
        levels.append(tuple(row))
    return ErrorMap(
        tuple(alphas), tuple(betas), tuple(levels), tuple(video.shape), str(video.dtype).removeprefix("torch.")
    )
