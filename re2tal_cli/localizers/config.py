"""Every ActionFormer hyperparameter in one validated dataclass; defaults are the release's THUMOS-14 (I3D) config.

The release spreads these over a YAML file, its defaults and the model's keyword arguments (`backbone_arch`,
`n_mha_win_size`, `train_cfg`, `test_cfg`); the mapping is in docs/localizers.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from re2tal_cli.errors import BadInputError
from re2tal_cli.localizers.blocks import GLOBAL_ATTENTION
from re2tal_cli.localizers.postprocess import PostprocessConfig

__all__ = ["ActionFormerConfig", "check_float", "check_int"]

THUMOS_REGRESSION_RANGES = ((0.0, 4.0), (4.0, 8.0), (8.0, 16.0), (16.0, 32.0), (32.0, 64.0), (64.0, math.inf))


@dataclass(frozen=True)
class ActionFormerConfig:
    # --- encoder: projection convs → stem blocks → branch blocks (the release's backbone_arch = (2, 2, 5))
    embed_dim: int = 512  # channels of the encoder and the neck (the release's embd_dim = fpn_dim)
    embed_kernel_size: int = 3  # kernel of the projection convs (odd)
    embed_layer_norm: bool = True  # LayerNorm after each projection conv (its bias then dropped)
    num_embed_convs: int = 2  # projection convs, each conv → LayerNorm → ReLU
    num_stem_blocks: int = 2  # transformer blocks at full resolution
    num_branch_blocks: int = 5  # transformer blocks each downsampling ×2; pyramid levels = this + 1
    num_heads: int = 4  # attention heads; embed_dim must be divisible by it
    window_size: int | tuple[int, ...] = (
        19  # local attention window (odd ≥ 3) or -1 = global; one value or one per level
    )
    mlp_ratio: int = 4  # hidden channels of each block's MLP = mlp_ratio × embed_dim
    dropout: float = 0.1  # dropout after the attention projection and in the MLP (the release's train_cfg.dropout)
    attn_dropout: float = 0.0  # dropout on attention probabilities
    path_drop: float = 0.1  # stochastic depth of every block branch (same rate in every block, as the release)
    layer_scale_init: float = 1e-4  # per-channel scale on each block branch, initial value; 0 = none
    abs_position_embedding: bool = False  # add a fixed sinusoidal embedding / √embed_dim after the projection convs
    # (the release's use_abs_pe: off for THUMOS, on in its ActivityNet config)
    # --- neck and heads
    neck_layer_norm: bool = True  # identity FPN: a LayerNorm per pyramid level (the release's fpn_with_ln)
    head_dim: int = 512  # channels inside both heads
    head_kernel_size: int = 3  # kernel of every head conv (odd)
    head_num_layers: int = 3  # convs per head, the output conv included
    head_layer_norm: bool = True  # LayerNorm after each hidden head conv (its bias then dropped)
    cls_prior_prob: float = 0.01  # initial foreground probability: output bias = -log((1 - p) / p)
    # --- label assignment (all lengths in feature steps)
    regression_ranges: tuple[tuple[float, float], ...] = THUMOS_REGRESSION_RANGES  # per level: a point is positive
    # only if its larger distance to the segment's ends is in [low, high]
    center_sample_radius: float | None = 1.5  # positives within radius × stride of a segment's centre; None = anywhere
    max_seq_len: int = 2304  # training window length (steps): `pad_features(..., max_length=...)`; divisible by
    # downsample_factor
    # --- losses
    focal_alpha: float = 0.25  # sigmoid focal loss: weight of positives (negatives: 1 - alpha)
    focal_gamma: float = 2.0  # sigmoid focal loss: focusing exponent
    reg_loss_weight: float = 1.0  # total = cls_loss + reg_loss_weight × reg_loss
    label_smoothing: float = 0.0  # classification targets t → t·(1 - ε) + ε / (K + 1)
    init_loss_normalizer: float = 100.0  # starting value of the EMA of positives per batch (release default 2000)
    loss_normalizer_momentum: float = 0.9  # EMA: n ← m·n + (1 - m)·max(positives, 1), once per training loss
    # --- test time
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)  # overridable per `predict` call

    def __post_init__(self):
        windows = self.window_size
        if isinstance(windows, list | tuple):
            object.__setattr__(self, "window_size", windows := tuple(windows))
        ranges = tuple(tuple(float(v) for v in r) for r in _as_sequence(self.regression_ranges, "regression_ranges"))
        object.__setattr__(self, "regression_ranges", ranges)
        if isinstance(self.postprocess, dict):
            object.__setattr__(self, "postprocess", PostprocessConfig(**self.postprocess))

        for name in ("embed_dim", "num_embed_convs", "num_heads", "mlp_ratio", "head_dim", "head_num_layers"):
            check_int(self, name, minimum=1)
        for name in ("num_stem_blocks", "num_branch_blocks"):
            check_int(self, name, minimum=0)
        for name in ("embed_kernel_size", "head_kernel_size"):
            check_int(self, name, minimum=1)
            if getattr(self, name) % 2 == 0:
                raise BadInputError(f"{name} must be odd, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise BadInputError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        for name in ("embed_layer_norm", "abs_position_embedding", "neck_layer_norm", "head_layer_norm"):
            if not isinstance(getattr(self, name), bool):
                raise BadInputError(f"{name} must be true or false, got {getattr(self, name)!r}")

        levels = self.num_levels
        per_level = windows if isinstance(windows, tuple) else (windows,) * levels
        if len(per_level) != levels:
            raise BadInputError(f"window_size has {len(per_level)} values; the pyramid has {levels} levels")
        for w in per_level:
            if isinstance(w, bool) or not isinstance(w, int) or not (w == GLOBAL_ATTENTION or (w >= 3 and w % 2)):
                raise BadInputError(f"window_size must be odd and ≥ 3, or -1 for global attention; got {w!r}")
        if len(ranges) != levels:
            raise BadInputError(f"regression_ranges has {len(ranges)} entries; the pyramid has {levels} levels")
        for low_high in ranges:
            if len(low_high) != 2 or not 0.0 <= low_high[0] < low_high[1]:
                raise BadInputError(f"each regression range must be (low, high) with 0 ≤ low < high, got {low_high}")

        for name in ("dropout", "attn_dropout", "path_drop", "label_smoothing"):
            check_float(self, name, 0.0, 1.0, high_open=True)
        for name in ("cls_prior_prob", "loss_normalizer_momentum"):
            check_float(self, name, 0.0, 1.0, low_open=name == "cls_prior_prob", high_open=True)
        check_float(self, "focal_alpha", 0.0, 1.0)
        check_float(self, "focal_gamma", 0.0, math.inf, high_open=True)
        check_float(self, "layer_scale_init", 0.0, math.inf, high_open=True)
        check_float(self, "reg_loss_weight", 0.0, math.inf, low_open=True, high_open=True)
        check_float(self, "init_loss_normalizer", 0.0, math.inf, low_open=True, high_open=True)
        if self.center_sample_radius is not None:
            check_float(self, "center_sample_radius", 0.0, math.inf, low_open=True, high_open=True)
        check_int(self, "max_seq_len", minimum=1)
        if self.max_seq_len % self.downsample_factor:
            raise BadInputError(
                f"max_seq_len {self.max_seq_len} must be divisible by downsample_factor {self.downsample_factor} "
                f"(2^num_branch_blocks)"
            )
        if not isinstance(self.postprocess, PostprocessConfig):
            raise BadInputError(f"postprocess must be a PostprocessConfig, got {type(self.postprocess).__name__}")

    @property
    def num_levels(self) -> int:
        """Pyramid levels: the stem's output plus one per branch block."""
        return self.num_branch_blocks + 1

    @property
    def downsample_factor(self) -> int:
        """Stride of the coarsest level; an input length T must be a multiple of it."""
        return 2**self.num_branch_blocks

    @property
    def pad_multiple(self) -> int:
        return self.downsample_factor

    @property
    def level_strides(self) -> tuple[int, ...]:
        return tuple(2**level for level in range(self.num_levels))

    @property
    def level_window_sizes(self) -> tuple[int, ...]:
        """Attention window of each level: level 0 for the stem blocks, level l for the l-th branch block."""
        w = self.window_size
        return w if isinstance(w, tuple) else (w,) * self.num_levels


def _as_sequence(value, name: str):
    if not isinstance(value, list | tuple):
        raise BadInputError(f"{name} must be a list, got {value!r}")
    for item in value:
        if not isinstance(item, list | tuple) or not all(isinstance(v, int | float) for v in item):
            raise BadInputError(f"{name} must be a list of (low, high) pairs, got {value!r}")
    return value


def check_int(config, name: str, minimum: int) -> None:
    """A localizer config's field `name` is an integer ≥ `minimum` (BadInputError naming it otherwise)."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadInputError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


def check_float(config, name: str, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
    value = getattr(config, name)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise BadInputError(f"{name} must be in {interval}, got {value!r}")
