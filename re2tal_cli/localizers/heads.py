"""Classification and regression heads, each a small conv tower shared by all pyramid levels.

per level: (B, D, T_l) ─ [masked conv → LN → ReLU] × (num_layers - 1) ─ masked conv ─► (B, T_l, K) logits
                                                                                   └─► (B, T_l, 2) offsets ≥ 0
"""

from __future__ import annotations

import math

import torch
from torch import nn

from re2tal_cli.localizers.blocks import ChannelLayerNorm, MaskedConv1d

__all__ = ["ClassificationHead", "RegressionHead", "Scale"]


class _ConvTower(nn.Module):
    """(num_layers - 1) × (masked conv → LayerNorm or nothing → ReLU), then a masked output conv."""

    def __init__(self, in_dim: int, dim: int, out_dim: int, kernel_size: int, num_layers: int, layer_norm: bool):
        super().__init__()
        self.convs = nn.ModuleList(
            MaskedConv1d(in_dim if i == 0 else dim, dim, kernel_size, bias=not layer_norm)
            for i in range(num_layers - 1)
        )
        self.norms = nn.ModuleList(ChannelLayerNorm(dim) if layer_norm else nn.Identity() for _ in self.convs)
        self.output = MaskedConv1d(dim if num_layers > 1 else in_dim, out_dim, kernel_size)

    def tower(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, D_in, T), mask (B, T) → (B, out_dim, T), zero at padded steps."""
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x, _ = conv(x, mask)
            x = torch.relu(norm(x))
        return self.output(x, mask)[0]


class ClassificationHead(_ConvTower):
    """Per-point class logits. The output bias starts at -log((1 - p) / p), so every class first predicts
    probability p (RetinaNet's prior: the many background points do not swamp the focal loss at the start)."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_classes: int,
        kernel_size: int = 3,
        num_layers: int = 3,
        layer_norm: bool = True,
        prior_prob: float = 0.01,
    ):
        super().__init__(in_dim, dim, num_classes, kernel_size, num_layers, layer_norm)
        nn.init.constant_(self.output.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level (B, D, T_l) → (B, T_l, K) logits (zero at padded steps)."""
        return [self.tower(x, m).transpose(1, 2) for x, m in zip(feats, masks, strict=True)]


class Scale(nn.Module):
    """A learned scalar factor (FCOS): lets each level rescale the shared head's offsets to its own range."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class RegressionHead(_ConvTower):
    """Per-point distances (left, right) to the segment's start and end, in units of the level's stride:
    ReLU(scale_l · conv output), so never negative."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_levels: int,
        kernel_size: int = 3,
        num_layers: int = 3,
        layer_norm: bool = True,
    ):
        super().__init__(in_dim, dim, 2, kernel_size, num_layers, layer_norm)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))

    def forward(self, feats: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level (B, D, T_l) → (B, T_l, 2) offsets ≥ 0."""
        return [
            torch.relu(scale(self.tower(x, m))).transpose(1, 2)
            for scale, x, m in zip(self.scales, feats, masks, strict=True)
        ]
