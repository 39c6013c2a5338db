"""Every G-TAD hyperparameter in one validated dataclass; defaults are the release's ActivityNet-1.3 setting.

The release (github frostinassiky/gtad, branch `anet`) spreads these over `gtad_lib/opts.py` and constants of
`gtad_lib/models.py` and `gtad_lib/loss_function.py`; the mapping is in docs/gtad.md.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from re2tal_cli.errors import BadInputError
from re2tal_cli.localizers.config import check_float, check_int
from re2tal_cli.localizers.postprocess import NmsMethod, PostprocessConfig

__all__ = ["GTADConfig", "ScoreFusion"]


class ScoreFusion(enum.StrEnum):
    FILTER = "filter"  # the release: anchors whose start and end steps are boundary peaks, score = cls · reg
    PRODUCT = "product"  # BMN: every anchor, score = start · end · cls · reg


def anet_postprocess() -> PostprocessConfig:
    """The release's ActivityNet test setting: Gaussian soft-NMS exp(-IoU² / 0.8) (its nms_thr, the same form as
    `PostprocessConfig.sigma`), at most 100 segments per video."""
    return PostprocessConfig(nms_method=NmsMethod.SOFT, sigma=0.8, max_segments=100)


@dataclass(frozen=True)
class GTADConfig:
    # --- GCNeXt backbone: input conv → GCNeXt → [start, end heads] → GCNeXt → SGAlign
    hidden_dim: int = 256  # channels of the GCNeXt blocks (the release's h_dim_1d)
    input_groups: int = 4  # groups of the input conv (kernel 3); in_channels must be divisible by it
    k: int = 3  # semantic neighbours per step (itself included), recomputed in every block
    block_width: int = 128  # channels inside both branches of a block (the release's groups × width_group = 32 × 4)
    block_groups: int = 32  # groups of the temporal branch's k3 conv and of the semantic branch's middle conv
    # --- SGAlign: anchor features
    inner_samples: int = 32  # samples of the block's features over each extended anchor (the release's resolution)
    context_samples: int = 4  # samples of the neighbour-averaged features over the same extended anchor
    anchor_extension: float = 0.5  # an anchor of length d is sampled over [start - e·d, end + e·d]
    # --- anchor map head: 1×1 convs (hidden · (inner + context) → map_dim → map_hidden_dim ×3 → 2)
    map_dim: int = 512  # the release's h_dim_3d
    map_hidden_dim: int = 128  # the release's h_dim_2d
    # --- anchors and targets (lengths in feature steps)
    max_seq_len: int = 100  # training sequence length (the release's temporal_scale: ActivityNet resampled to 100)
    max_duration: int | None = None  # longest anchor D (steps); None: max_seq_len (the release's max_duration)
    boundary_radius: float = 1.5  # a step's start (end) boundary is positive within this of a ground-truth one
    # (half the release's 3-step boundary region)
    class_iou_threshold: float = 0.5  # re2tal's class extension (num_classes > 1): anchors whose best IoU with a
    # ground truth is at least this learn its class
    # --- losses
    reg_loss_weight: float = 10.0  # total = boundary + reg_loss_weight × IoU regression + IoU classification (+ class)
    # --- test time
    score_fusion: ScoreFusion = ScoreFusion.FILTER  # filter (the release's ActivityNet inference) | product (BMN)
    postprocess: PostprocessConfig = field(default_factory=anet_postprocess)  # overridable per `predict` call

    def __post_init__(self):
        if isinstance(self.postprocess, dict):
            object.__setattr__(self, "postprocess", PostprocessConfig(**self.postprocess))
        try:
            object.__setattr__(self, "score_fusion", ScoreFusion(self.score_fusion))
        except ValueError:
            choices = ", ".join(m.value for m in ScoreFusion)
            raise BadInputError(f"score_fusion must be one of {choices}, got {self.score_fusion!r}") from None
        for name in ("hidden_dim", "input_groups", "k", "block_width", "block_groups", "inner_samples",
                     "context_samples", "map_dim", "map_hidden_dim", "max_seq_len"):  # fmt: skip
            check_int(self, name, minimum=1)
        if self.max_duration is not None:
            check_int(self, "max_duration", minimum=1)
        if self.block_width % self.block_groups:
            raise BadInputError(f"block_width {self.block_width} must be divisible by block_groups {self.block_groups}")
        check_float(self, "anchor_extension", 0.0, math.inf, high_open=True)
        check_float(self, "boundary_radius", 0.0, math.inf, low_open=True, high_open=True)
        check_float(self, "class_iou_threshold", 0.0, 1.0, low_open=True)
        check_float(self, "reg_loss_weight", 0.0, math.inf, high_open=True)
        if not isinstance(self.postprocess, PostprocessConfig):
            raise BadInputError(f"postprocess must be a PostprocessConfig, got {type(self.postprocess).__name__}")

    @property
    def pad_multiple(self) -> int:
        return 1

    @property
    def duration(self) -> int:
        """D: anchors last 1 … D steps."""
        return self.max_duration if self.max_duration is not None else self.max_seq_len
