"""Layers of the ActionFormer encoder (the release's backbone), on sequences (B, C, T) with a validity mask (B, T)
(True = valid).

Masking rule kept by every layer here: a padded step (mask False) is never *read* — each convolution zeroes its
input's padded steps first, attention never attends to them, the max-pool skip ignores them — and every block's
output is zero there. So outputs at valid steps do not depend on how much padding follows. (The release masks
outputs only; once its LayerNorm biases are trained they reach the last valid steps through the next convolution.)

Downsampling by 2 keeps the mask at even steps: output step i covers input steps 2i-1, 2i, 2i+1 and is valid when
input step 2i is (the release's nearest-neighbour interpolation of the mask, which is the same thing).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from re2tal_cli.models.layers import DropPath

__all__ = [
    "GLOBAL_ATTENTION",
    "ChannelLayerNorm",
    "LayerScale",
    "MaskedConv1d",
    "MaskedConvAttention",
    "TransformerBlock",
    "global_attention",
    "masked",
    "windowed_attention",
]

GLOBAL_ATTENTION = -1  # window size that means "attend to every valid step" (the release's convention)


def masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the padded steps of x (B, C, T); `masked_fill`, not a product, so inf/NaN in padding cannot leak."""
    return x.masked_fill(~mask[:, None, :], 0.0)


class MaskedConv1d(nn.Conv1d):
    """'Same' 1-D convolution (odd kernel, padding k//2) that reads valid steps only and zeroes padded outputs.

    With stride s the output has ceil(T/s) steps and its mask is `mask[:, ::s]`. Biases start at zero (the release
    zeroes every convolution bias it creates; the classification head overrides its own).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, **kwargs):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep steps aligned, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, **kwargs)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_mask = mask[:, :: self.stride[0]]
        return masked(super().forward(masked(x, mask)), out_mask), out_mask


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, T) tensor (each step normalised on its own)."""

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class LayerScale(nn.Module):
    """Multiply (B, C, T) by a learned per-channel factor (CaiT's LayerScale; the release's 'AffineDropPath' scale)."""

    def __init__(self, num_channels: int, init_value: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((num_channels,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[:, None]


def windowed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor, radius: int, dropout_p: float = 0.0
) -> torch.Tensor:
    """Softmax attention of each query step t to the valid key steps in [t - radius, t + radius].

    q, k, v: (B, H, T, D), already scaled; key_mask: (B, T) bool. Returns (B, H, T, D).

    Exact band attention computed block by block, so memory is O(T·radius), not O(T²): the queries are cut into
    blocks of 2·radius steps, and each block attends densely to the 4·radius keys its band can reach, with the band
    and the key mask applied as a boolean mask. A query with no valid key in reach (only possible at padded steps,
    whose outputs are discarded) attends uniformly to its window instead of producing NaN.
    """
    b, h, t, d = q.shape
    block = 2 * radius
    span = block + 2 * radius  # keys a block of queries can reach
    pad_end = (-t) % block
    num_blocks = (t + pad_end) // block

    q_blocks = F.pad(q, (0, 0, 0, pad_end)).view(b, h, num_blocks, block, d)
    # k, v: (B, H, T, D) → padded by `radius` each side → windows (B, H, num_blocks, D, span), a view (no copy)
    k_windows = F.pad(k, (0, 0, radius, radius + pad_end)).unfold(2, span, block)
    v_windows = F.pad(v, (0, 0, radius, radius + pad_end)).unfold(2, span, block)
    key_valid = F.pad(key_mask, (radius, radius + pad_end), value=False).unfold(1, span, block)  # (B, nb, span)

    # query i of a block sits at window position i + radius: its band is window positions i .. i + 2·radius
    offset = torch.arange(span, device=q.device)[None, :] - torch.arange(block, device=q.device)[:, None]
    in_band = (offset >= 0) & (offset <= 2 * radius)  # (block, span)
    allowed = in_band & key_valid[:, None, :, None, :]  # (B, 1, nb, block, span)
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)

    scores = (q_blocks @ k_windows).masked_fill(~allowed, float("-inf"))  # (B, H, nb, block, span)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p, training=dropout_p > 0)
    out = probs.to(v.dtype) @ v_windows.transpose(-1, -2)  # (B, H, nb, block, D)
    return out.reshape(b, h, num_blocks * block, d)[:, :, :t]


def global_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """Softmax attention of every query to every valid key. q, k, v: (B, H, T, D), already scaled → (B, H, T, D)."""
    allowed = key_mask | ~key_mask.any(dim=-1, keepdim=True)  # an all-padded sample attends uniformly, not NaN
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None, None, :], dropout_p=dropout_p, scale=1.0)


class MaskedConvAttention(nn.Module):
    """Multi-head self-attention whose queries, keys and values first pass a depthwise conv and a LayerNorm.

    The depthwise convs (kernel 3) give the attention relative position without a position embedding and, with
    stride 2, downsample the sequence: a stride-2 block attends at the coarser resolution. `window_size` odd: each
    step attends to window_size // 2 steps on each side; -1: to every valid step.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        stride: int = 1,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.radius = None if window_size == GLOBAL_ATTENTION else window_size // 2
        self.attn_dropout = attn_dropout
        self.query_conv, self.key_conv, self.value_conv = (
            MaskedConv1d(dim, dim, 3, stride=stride, groups=dim, bias=False) for _ in range(3)
        )
        self.query_norm, self.key_norm, self.value_norm = (ChannelLayerNorm(dim) for _ in range(3))
        self.query, self.key, self.value, self.proj = (nn.Conv1d(dim, dim, 1) for _ in range(4))
        for conv in (self.query, self.key, self.value, self.proj):
            nn.init.zeros_(conv.bias)
        self.proj_dropout = nn.Dropout(proj_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, T), mask (B, T) → (B, C, T'), mask (B, T') with T' = ceil(T / stride)."""
        q, out_mask = self.query_conv(x, mask)
        k, _ = self.key_conv(x, mask)
        v, _ = self.value_conv(x, mask)
        q = self.query(self.query_norm(q))
        k = self.key(self.key_norm(k))
        v = self.value(self.value_norm(v))
        b, c, t = q.shape
        head_dim = c // self.num_heads
        # (B, C, T') → (B, H, T', C/H)
        q, k, v = (y.view(b, self.num_heads, head_dim, t).transpose(2, 3) for y in (q, k, v))
        q = q * (1.0 / math.sqrt(head_dim))
        dropout_p = self.attn_dropout if self.training else 0.0
        if self.radius is None:
            out = global_attention(q, k, v, out_mask, dropout_p)
        else:
            out = windowed_attention(q, k, v, out_mask, self.radius, dropout_p)
        out = out.transpose(2, 3).reshape(b, c, t)  # (B, H, T', C/H) → (B, C, T')
        return masked(self.proj_dropout(self.proj(out)), out_mask), out_mask


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block on (B, C, T); with stride 2 it halves T (the pyramid's branch blocks).

        x ← skip(x) + drop_path(scale₁ · attention(norm₁(x)))
        x ← x + drop_path(scale₂ · mlp(norm₂(x)))

    skip: identity, or with stride 2 a max-pool (kernel 3, stride 2) over valid steps.

    Expects x zero at padded steps and keeps it so. `layer_scale_init` 0 leaves out the per-channel scales (the
    release has them, initialised to 1e-4, exactly when drop path is on).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        stride: int = 1,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        path_drop: float = 0.0,
        layer_scale_init: float = 0.0,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = MaskedConvAttention(dim, num_heads, window_size, stride, attn_dropout, dropout)
        self.scale1 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path1 = DropPath(path_drop)
        self.norm2 = ChannelLayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Conv1d(dim, mlp_ratio * dim, 1),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv1d(mlp_ratio * dim, dim, 1),
            nn.Dropout(dropout),
        )
        for layer in (self.mlp[0], self.mlp[3]):
            nn.init.zeros_(layer.bias)
        self.scale2 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path2 = DropPath(path_drop)

    def skip(self, x: torch.Tensor, mask: torch.Tensor, out_mask: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x
        # padded steps set to -inf so the max never picks them (as beyond the sequence end); zeroed again after
        pooled = F.max_pool1d(x.masked_fill(~mask[:, None, :], float("-inf")), 3, stride=2, padding=1)
        return masked(pooled, out_mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, T) zero at padded steps, mask (B, T) → (B, C, T / stride), its mask."""
        h, out_mask = self.attn(self.norm1(x), mask)
        x = self.skip(x, mask, out_mask) + self.drop_path1(self.scale1(h))
        return x + self.drop_path2(self.scale2(masked(self.mlp(self.norm2(x)), out_mask))), out_mask
