"""Dr²Net's dynamic finetuning schedule for the dual-residual coefficients.

Finetuning starts near the pretrained network (α=1, β=0.1 in the Dr²Net supplement: invertible, but its inverse
divides by a small β, so gradients are imprecise there) and moves in small steps along the straight path to the
numerically precise reversible point (α=0, β=1), updating every η steps and arriving at `total_steps`. The seeds give
the start point, η and the end epoch but not the path's shape; we take the straight line (the shortest path across
Dr²Net's error-level map, its Fig. 3) and document it in docs/reversible.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from re2tal_cli.reversible.stage import RE2TAL, Coupling


@dataclass(frozen=True)
class DualResidualSchedule:
    total_steps: int  # step (iteration or epoch, the caller's unit) at which the end point is reached
    update_every: int = 1  # η: coefficients change only every η steps
    start: Coupling = field(default_factory=lambda: Coupling(1.0, 0.1))  # Dr²Net's initialisation
    end: Coupling = RE2TAL

    def __post_init__(self):
        if self.total_steps <= 0 or self.update_every <= 0:
            raise ValueError("total_steps and update_every must be positive")

    def coupling_at(self, step: int) -> Coupling:
        """The coefficients in force at `step` (0-based): piecewise constant, linear in the update count."""
        updated = (max(step, 0) // self.update_every) * self.update_every
        t = min(updated / self.total_steps, 1.0)
        return Coupling(
            alpha=self.start.alpha + t * (self.end.alpha - self.start.alpha),
            beta=self.start.beta + t * (self.end.beta - self.start.beta),
        )
