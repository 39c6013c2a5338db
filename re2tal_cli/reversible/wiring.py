"""How a backbone's residual stages are wired and executed, as one value saved beside the weights, and the three
wirings people compare (plain, per-block checkpointing, reversible)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from re2tal_cli.errors import BadCheckpointError
from re2tal_cli.reversible.recompute import Outside, default_outside
from re2tal_cli.reversible.stage import Coupling, Execution

if TYPE_CHECKING:
    from re2tal_cli.models.base import VideoBackbone


@dataclass(frozen=True)
class Wiring:
    """How the residual stages of a backbone are wired and executed."""

    alpha: float = 1.0
    beta: float = 0.0
    execution: Execution = Execution.PLAIN
    stages: tuple[int, ...] | None = None  # indices of the rewired stages; None: all
    outside: Outside | None = None  # the layers outside the stages in training; None: recomputed unless plain

    def __post_init__(self):
        outside = default_outside(self.execution) if self.outside is None else Outside(self.outside)
        object.__setattr__(self, "outside", outside)

    def apply(self, model: VideoBackbone, tolerance: float | None = None) -> list[int]:
        """Set the wiring on the model's stages; returns the indices of the stages it applied to."""
        try:
            coupling = Coupling(self.alpha, self.beta)
            return model.set_wiring(coupling, self.execution, tolerance, self.stages, self.outside)
        except IndexError as error:
            raise BadCheckpointError(str(error)) from None

    @classmethod
    def of(cls, model: VideoBackbone) -> Wiring | None:
        """The wiring a model's residual stages run with now (its first stage's: every command wires them alike);
        None for a model without residual stages."""
        stage = next(iter(model.residual_stages()), None)
        if stage is None:
            return None
        return cls(stage.coupling.alpha, stage.coupling.beta, stage.execution, outside=model.outside)

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "execution": self.execution.value,
            "stages": None if self.stages is None else list(self.stages),
            "outside": self.outside.value,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Wiring:
        try:
            stages, outside = data.get("stages"), data.get("outside")
            return cls(
                float(data["alpha"]),
                float(data["beta"]),
                Execution(data["execution"]),
                None if stages is None else tuple(int(i) for i in stages),
                None if outside is None else Outside(outside),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise BadCheckpointError(
                f"a wiring needs alpha, beta, execution (plain, checkpoint or reversible), optional stages and "
                f"optional outside (keep or recompute); got {dict(data)!r} ({error})"
            ) from None


class WiringName(enum.StrEnum):
    """The wirings a user chooses between by name (memprofile, train-tal's `backbone.wiring`)."""

    PLAIN = "plain"  # the original residual network, ordinary autograd (every activation kept)
    CHECKPOINT = "checkpoint"  # the original network, torch.utils.checkpoint per block (and per layer outside them)
    REVERSIBLE = "reversible"  # Re²TAL's rewiring (α=0, β=1), reversible backward, the other layers recomputed

    @property
    def wiring(self) -> Wiring:
        return {
            WiringName.PLAIN: Wiring(1.0, 0.0, Execution.PLAIN),
            WiringName.CHECKPOINT: Wiring(1.0, 0.0, Execution.CHECKPOINT),
            WiringName.REVERSIBLE: Wiring(0.0, 1.0, Execution.REVERSIBLE),
        }[self]
