"""Every VSGN hyperparameter in one validated dataclass; defaults are the THUMOS-14 (I3D) setting of the VSGN release
(github coolbay/VSGN) and OpenTAD's rerun of it (configs/vsgn/thumos_i3d_gcn.py). The mapping to the releases'
names is in docs/vsgn.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from re2tal_cli.errors import BadInputError
from re2tal_cli.localizers.config import check_float, check_int
from re2tal_cli.localizers.postprocess import PostprocessConfig

__all__ = ["CLS_LOSSES", "VSGNConfig"]

CLS_LOSSES = ("balanced_ce", "focal")  # softmax over background + K classes | sigmoid per class, no background


def _thumos_postprocess() -> PostprocessConfig:
    """OpenTAD's THUMOS-14 test settings for VSGN (post_processing.nms in configs/vsgn/thumos_i3d.py)."""
    return PostprocessConfig(sigma=0.4, min_score=0.0001, max_segments=200, multiclass=True, voting_threshold=0.95)


@dataclass(frozen=True)
class VSGNConfig:
    # --- xGPN encoder: stem conv → num_levels xGN levels, each ×2 coarser
    embed_dim: int = 256  # channels everywhere after the stem (the release's out_channels / feat_dim)
    stem_stride: int = 2  # stride of the stem conv (k3); level l then has stride stem_stride · 2^(l+1)
    num_levels: int = 5  # pyramid levels (xGN blocks in the encoder, fusions in the decoder)
    use_graph: bool = True  # xGN: k-NN graph conv beside the temporal conv (False: the temporal conv alone)
    num_neighbours: int = 12  # k of the k-NN graph (OpenTAD: 10); stitched: k // 2 of them from the other scale
    # --- heads
    head_num_layers: int = 4  # conv k3 → GroupNorm → ReLU layers in each tower before its output conv
    head_groups: int = 32  # GroupNorm groups in the towers; embed_dim must be divisible by it
    anchor_scales: tuple[float, ...] = (1.0, 1.5)  # anchors per position: lengths = scale × the level's stride
    # (ActivityNet: (3.0, 7.5))
    boundary_ratio: float = 8.0  # stage 2 reads each boundary b at b and b ± length / boundary_ratio (beta)
    # --- label assignment and losses
    cls_loss: str = "balanced_ce"  # balanced_ce (THUMOS) | focal (ActivityNet, class-agnostic)
    iou_threshold: float = 0.5  # stage 1: an anchor is positive when its IoU with a segment is ≥ this
    refine_iou_threshold: float = 0.7  # stage 2: a proposal is positive when its IoU with a segment is ≥ this
    focal_alpha: float = 0.35  # focal loss: weight of positives
    focal_gamma: float = 2.0  # focal loss: focusing exponent
    boundary_width: float = 3.0  # start/end targets: a segment's boundary region is this long (feature steps)
    boundary_pos_threshold: float = 0.5  # start/end/actionness: a step is positive when its target is > this
    init_loss_normalizer: float = 100.0  # starting value of the EMAs of positives that divide focal and GIoU losses
    loss_normalizer_momentum: float = 0.9  # EMA: n ← m·n + (1 - m)·max(positives, 1), once per training loss
    # --- video self-stitching (VSS)
    self_stitching: bool = True  # short windows get a magnified copy stitched after them (training and test)
    stitch_ratio: float = 0.4  # a window is short when its valid length ≤ this × the window length
    stitch_gap: int = 30  # masked steps between the original and the magnified copy
    max_seq_len: int = 1280  # window length L (feature steps); divisible by pad_multiple
    # --- test time
    postprocess: PostprocessConfig = field(default_factory=_thumos_postprocess)  # overridable per `predict` call

    def __post_init__(self):
        if isinstance(self.anchor_scales, list | tuple):
            object.__setattr__(self, "anchor_scales", tuple(self.anchor_scales))
        if isinstance(self.postprocess, dict):
            object.__setattr__(self, "postprocess", PostprocessConfig(**self.postprocess))
        for name in ("embed_dim", "stem_stride", "num_levels", "num_neighbours", "head_groups", "max_seq_len"):
            check_int(self, name, minimum=1)
        for name in ("head_num_layers", "stitch_gap"):
            check_int(self, name, minimum=0)
        for name in ("use_graph", "self_stitching"):
            if not isinstance(getattr(self, name), bool):
                raise BadInputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.embed_dim % self.head_groups:
            raise BadInputError(f"embed_dim {self.embed_dim} must be divisible by head_groups {self.head_groups}")
        scales = self.anchor_scales
        if (
            not isinstance(scales, tuple)
            or not scales
            or not all(isinstance(s, int | float) and not isinstance(s, bool) and s > 0 for s in scales)
        ):
            raise BadInputError(f"anchor_scales must be a non-empty list of positive numbers, got {scales!r}")
        if self.cls_loss not in CLS_LOSSES:
            raise BadInputError(f"cls_loss must be one of {', '.join(CLS_LOSSES)}, got {self.cls_loss!r}")
        for name in ("iou_threshold", "refine_iou_threshold", "stitch_ratio"):
            check_float(self, name, 0.0, 1.0, low_open=True, high_open=True)
        for name in ("boundary_pos_threshold", "loss_normalizer_momentum", "focal_alpha"):
            check_float(self, name, 0.0, 1.0, high_open=name != "focal_alpha")
        check_float(self, "focal_gamma", 0.0, math.inf, high_open=True)
        for name in ("boundary_ratio", "boundary_width", "init_loss_normalizer"):
            check_float(self, name, 0.0, math.inf, low_open=True, high_open=True)
        if self.max_seq_len % self.pad_multiple:
            raise BadInputError(
                f"max_seq_len {self.max_seq_len} must be divisible by {self.pad_multiple} (stem_stride · "
                f"2^num_levels, the coarsest level's stride)"
            )
        if not isinstance(self.postprocess, PostprocessConfig):
            raise BadInputError(f"postprocess must be a PostprocessConfig, got {type(self.postprocess).__name__}")

    @property
    def level_strides(self) -> tuple[int, ...]:
        """Stride of each pyramid level in input feature steps, finest first."""
        return tuple(self.stem_stride * 2 ** (level + 1) for level in range(self.num_levels))

    @property
    def pad_multiple(self) -> int:
        """An input length must be a multiple of the coarsest level's stride."""
        return self.level_strides[-1]
