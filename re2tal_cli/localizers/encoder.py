"""ActionFormer's encoder (the release's "backbone", renamed so it is not confused with the video backbone):
projection convs, stem transformer blocks, then branch blocks that each halve T.

feats (B, C_in, T) ─ conv → LN → ReLU (× num_embed_convs) ─ stem blocks (stride 1) ─► level 0 (B, D, T)
                    ─ branch block 1 (stride 2) ─► level 1 (B, D, T/2) ─ … ─► level L-1 (B, D, T/2^(L-1))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from re2tal_cli.localizers.blocks import ChannelLayerNorm, MaskedConv1d, TransformerBlock, masked
from re2tal_cli.localizers.config import ActionFormerConfig

__all__ = ["ConvTransformerEncoder", "sinusoidal_embedding"]


def sinusoidal_embedding(length: int, dim: int) -> torch.Tensor:
    """(dim, length) table: channel 2j is sin(t / 10000^(2j/dim)), channel 2j+1 the cosine (Vaswani et al.)."""
    position = torch.arange(length, dtype=torch.float64)[None, :]
    frequency = 10000.0 ** (-(torch.arange(dim) // 2 * 2).to(torch.float64) / dim)[:, None]
    angle = frequency * position  # (dim, length)
    table = torch.where(torch.arange(dim)[:, None] % 2 == 0, angle.sin(), angle.cos())
    return table.float()


class ConvTransformerEncoder(nn.Module):
    """(B, C_in, T), mask (B, T) → a feature pyramid: num_levels maps (B, embed_dim, T / 2^l) and their masks."""

    def __init__(self, in_channels: int, config: ActionFormerConfig):
        super().__init__()
        dim = config.embed_dim
        self.embed_convs = nn.ModuleList(
            MaskedConv1d(
                in_channels if i == 0 else dim, dim, config.embed_kernel_size, bias=not config.embed_layer_norm
            )
            for i in range(config.num_embed_convs)
        )
        self.embed_norms = nn.ModuleList(
            ChannelLayerNorm(dim) if config.embed_layer_norm else nn.Identity() for _ in range(config.num_embed_convs)
        )
        if config.abs_position_embedding:
            table = sinusoidal_embedding(config.max_seq_len, dim) / math.sqrt(dim)
            self.register_buffer("position_embedding", table, persistent=False)  # (D, max_seq_len)
        else:
            self.position_embedding = None
        windows = config.level_window_sizes

        def block(window_size: int, stride: int) -> TransformerBlock:
            return TransformerBlock(
                dim,
                config.num_heads,
                window_size,
                stride=stride,
                mlp_ratio=config.mlp_ratio,
                dropout=config.dropout,
                attn_dropout=config.attn_dropout,
                path_drop=config.path_drop,
                layer_scale_init=config.layer_scale_init,
            )

        self.stem = nn.ModuleList(block(windows[0], 1) for _ in range(config.num_stem_blocks))
        self.branch = nn.ModuleList(block(windows[level], 2) for level in range(1, config.num_levels))

    def _position_embedding(self, length: int) -> torch.Tensor:
        """(D, length): the table's first steps, or for sequences longer than max_seq_len the table stretched to
        the length (linear interpolation, as the release does at inference)."""
        table = self.position_embedding
        if length <= table.shape[1]:
            return table[:, :length]
        return F.interpolate(table[None], size=length, mode="linear", align_corners=False)[0]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        for conv, norm in zip(self.embed_convs, self.embed_norms, strict=True):
            x, _ = conv(x, mask)
            x = torch.relu(norm(x))
        if self.position_embedding is not None:
            x = x + self._position_embedding(x.shape[2]).to(x.dtype)
        x = masked(x, mask)  # blocks expect zeros at padded steps (LayerNorm's bias put something there)
        for block in self.stem:
            x, mask = block(x, mask)
        feats, masks = [x], [mask]
        for block in self.branch:
            x, mask = block(x, mask)
            feats.append(x)
            masks.append(mask)
        return feats, masks
