"""The reversible engine: dual-residual stages, their memory-free backward, and the numerical checks."""

from re2tal_cli.reversible.guard import GuardStats
from re2tal_cli.reversible.stage import (
    ORIGINAL,
    RE2TAL,
    Coupling,
    Execution,
    ResidualStage,
)

__all__ = ["ORIGINAL", "RE2TAL", "Coupling", "Execution", "GuardStats", "ResidualStage"]
