"""Measuring a rewired network against ordinary autograd: Dr²Net's gradient error level and the reconstruction error.

The reference is the *same* rewired network (same α, β, same random draws) trained with ordinary autograd, so any
difference is the reversible backward's numerical error, not a change of architecture.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from re2tal_cli.reversible.stage import Coupling, Execution, ResidualStage


def gradient_error_level(
    actual: Sequence[torch.Tensor | None], expected: Sequence[torch.Tensor | None], rtol: float = 1e-5
) -> float:
    """Dr²Net's metric: the smallest atol for which `torch.allclose(actual, expected, rtol=rtol, atol=atol)` holds for
    every pair, i.e. max(|a − e| − rtol·|e|) clipped at 0."""
    level = 0.0
    for a, e in zip(actual, expected, strict=True):
        if a is None or e is None:
            if (a is None) != (e is None):
                return float("inf")
            continue
        level = max(level, ((a - e).abs() - rtol * e.abs()).max().clamp_min(0).item())
    return level


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
    """One training step (train mode: dropout and drop-path active) with ordinary autograd and one reversible, on a
    copy of `model` (its weights and BatchNorm statistics are left untouched), with identical random draws."""
    model = copy.deepcopy(model).to(video.dtype).train()
    stages = [m for m in model.modules() if isinstance(m, ResidualStage)]
    video = video.detach().requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    generator_state = torch.get_rng_state()
    results = {}
    for execution in (Execution.AUTOGRAD, Execution.REVERSIBLE):
        for stage in stages:
            stage.set_wiring(coupling, execution, tolerance)
            stage.guard.reset()
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(generator_state)
            out = model(video)
            weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype).to(out.device)
            grads = torch.autograd.grad((out * weights).sum(), [video, *params], allow_unused=True)
        results[execution] = (out.detach(), grads)
    (out_ref, g_ref), (out_rev, g_rev) = results[Execution.AUTOGRAD], results[Execution.REVERSIBLE]
    abs_errors = [
        (a - e).abs().max().item() for a, e in zip(g_rev, g_ref, strict=True) if a is not None and e is not None
    ]
    return CheckReport(
        input_shape=tuple(video.shape),
        dtype=str(video.dtype).removeprefix("torch."),
        alpha=coupling.alpha,
        beta=coupling.beta,
        gradient_error_level=gradient_error_level(g_rev, g_ref, rtol),
        max_abs_gradient_error=max(abs_errors, default=0.0),
        output_error=(out_rev - out_ref).abs().max().item(),
        reconstruction_error=max((s.guard.max_error for s in stages), default=0.0),
        fallbacks=sum(s.guard.fallbacks for s in stages),
        backward_passes=sum(s.guard.backward_passes for s in stages),
    )
