"""The numerical guard of a reversible stage: is the stage input rebuilt by inversion close enough to the kept one?

fp32 additive coupling reconstructs to ~1e-6 relative (docs/reversible.md); reduced precision inside F to ~1e-2; an
inverse that divides by a small β (Dr²Net's early coefficients) can explode with depth. When the error exceeds the
tolerance the stage redoes that backward exactly from its kept input, so training never uses wrong gradients.

The comparison covers every element when the stage keeps its input. When the input would have to be made again (a
forward of the layer before it: remake.py) the stage instead keeps, from its forward, `SAMPLED_ELEMENTS` of the
input's elements (1/63 of a smaller input) spread evenly over it, and compares the rebuilt input there: a
reconstruction error is not local (every F mixes channels and space, and errors compound block after block), so it
shows in any such sample, and a check that almost always passes no longer costs a forward of the layer before. The
fallback makes the input again.

A stage asks its `guard` to `accept(error, tolerance)`; `GuardStats` reads the error and counts what it saw. A caller
that runs steps on tensors without values (memprofile's fake-tensor estimate) gives the stages a guard that accepts
without reading: the engine itself has no special case for such runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# Largest tolerated |reconstructed − kept stage input| / max|kept input| before a stage falls back to exact recompute.
DEFAULT_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}
REDUCED_PRECISION_TOLERANCE = 5e-2
SAMPLED_ELEMENTS = 2**16  # elements of a stage input the guard compares when the input itself is not kept ...
MIN_SAMPLE_STRIDE = 63  # ... or 1/63 of them in a smaller input: a small sample costs 1.6 % of the input it spares


def sampled(t: torch.Tensor) -> torch.Tensor:
    """About SAMPLED_ELEMENTS elements of `t` (every MIN_SAMPLE_STRIDE-th of a smaller one), evenly spread: an odd
    stride through the flattened tensor, so that it cycles through every channel, row and frame rather than landing
    on one. The same positions for any tensor of t's shape; a view where `t` is contiguous."""
    return t.reshape(-1)[:: _sample_stride(t.numel())]


def sampled_within(shape: torch.Size, dim: int, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Which elements of `sampled` of a tensor of `shape` lie at indices [start, stop) along `dim` (a mask)."""
    numel = math.prod(shape)
    position = torch.arange(0, numel, _sample_stride(numel), device=device)
    index = position // math.prod(shape[dim + 1 :]) % shape[dim]
    return (index >= start) & (index < stop)


def _sample_stride(numel: int) -> int:
    return max(MIN_SAMPLE_STRIDE, numel // SAMPLED_ELEMENTS | 1)


def max_abs(t: torch.Tensor) -> torch.Tensor:
    """max|t| as a 0-d tensor, without a temporary the size of `t`."""
    low, high = torch.aminmax(t.detach())
    return torch.maximum(-low, high)


@dataclass
class GuardStats:
    """What the guard saw, accumulated over backward passes until `reset()`."""

    backward_passes: int = 0
    fallbacks: int = 0
    max_error: float = 0.0
    errors: list[float] = field(default_factory=list, repr=False)

    def accept(self, error: torch.Tensor, tolerance: float) -> bool:
        """Whether the reversible gradients stand (else the stage falls back); NaN is never accepted."""
        value = error.item()
        fell_back = not value <= tolerance
        self.record(value, fell_back)
        return not fell_back

    def record(self, error: float, fell_back: bool) -> None:
        self.backward_passes += 1
        self.fallbacks += int(fell_back)
        if not math.isnan(self.max_error) and not error <= self.max_error:  # a NaN stays (`max` would drop it)
            self.max_error = error
        self.errors.append(error)

    def reset(self) -> None:
        self.backward_passes, self.fallbacks, self.max_error, self.errors = 0, 0, 0.0, []
