"""The numerical guard of a reversible stage: is the stage input rebuilt by inversion close enough to the kept one?

fp32 additive coupling reconstructs to ~1e-6 relative (docs/reversible.md); reduced precision inside F to ~1e-2; an
inverse that divides by a small β (Dr²Net's early coefficients) can explode with depth. When the error exceeds the
tolerance the stage redoes that backward exactly from its kept input, so training never uses wrong gradients.

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
