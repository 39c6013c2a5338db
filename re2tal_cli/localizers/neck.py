"""The neck ActionFormer's published configs use: the identity FPN, a LayerNorm per pyramid level, no top-down path.

(The release also has a top-down FPN; none of its configs use it for the transformer encoder.)
"""

from __future__ import annotations

import torch
from torch import nn

from re2tal_cli.localizers.blocks import ChannelLayerNorm

__all__ = ["IdentityNeck"]


class IdentityNeck(nn.Module):
    """Per level l: (B, D, T_l) → LayerNorm over D (or nothing). Padded steps are left to the heads, which never read
    them."""

    def __init__(self, num_levels: int, dim: int, layer_norm: bool = True):
        super().__init__()
        self.norms = nn.ModuleList(ChannelLayerNorm(dim) if layer_norm else nn.Identity() for _ in range(num_levels))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [norm(x) for norm, x in zip(self.norms, feats, strict=True)]
