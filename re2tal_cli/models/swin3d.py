"""Video Swin Transformer 3D (Liu et al., CVPR 2022), whose torchvision and mmaction2 / Video-Swin-Transformer
checkpoints load directly.

Each Swin block contributes two residual blocks (Re²TAL §3.2): F_attn = drop_path(proj(SW-MSA(norm1(x)))) and
F_mlp = drop_path(mlp(norm2(x))), kept as named submodules `layers.S.blocks.I.attn` and `layers.S.blocks.I.mlp`; the
blocks of a stage form one `ResidualStage`, and the patch merging between stages stays an ordinary layer. F works on
channel-last tokens (B, D, H, W, C) and keeps their shape: padding to whole windows, the cyclic shift, the window
partition and the shift mask are all computed from the input's shape inside F, so F is a pure function of its input
(what a reversible recompute needs).

Window attention and its geometry (relative position indices, shift masks, the window order) are in
`swin_attention.py`; each stage owns one `WindowCache` for its blocks (a stage's blocks share one grid size).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from re2tal_cli.errors import BadCheckpointError
from re2tal_cli.models.base import InputSpec, VideoBackbone
from re2tal_cli.models.layers import DropPath, drop_path_rates
from re2tal_cli.models.layouts import Rule, rename_keys
from re2tal_cli.models.registry import Arch, ConvertedCheckpoint, register_family
from re2tal_cli.models.swin_attention import (
    Size3,
    WindowAttention,
    WindowCache,
    relative_position_index,
    window_and_shift,
)
from re2tal_cli.reversible.pieces import TimeLocality
from re2tal_cli.reversible.stage import ResidualStage

__all__ = ["Swin3dConfig", "SwinTransformer3d", "convert_swin3d"]


@dataclass(frozen=True)
class Swin3dConfig:
    embed_dim: int = 96  # channels after the patch embedding; each patch merging doubles them
    depths: tuple[int, ...] = (2, 2, 6, 2)  # Swin blocks per stage; each gives two residual blocks (attention, MLP)
    heads: tuple[int, ...] = (3, 6, 12, 24)  # attention heads per stage
    window: Size3 = (8, 7, 7)  # attention window (T, H, W) in tokens; odd blocks shift it by half
    patch_size: Size3 = (2, 4, 4)  # (frames, pixels, pixels) per token
    mlp_ratio: float = 4.0  # MLP hidden width / channels
    norm_eps: float = 1e-5  # every LayerNorm (torchvision and mmaction use the default)
    num_classes: int = 0  # classifier outputs; 0 = no head
    drop_path: float = 0.1  # stochastic depth at the last block (linear from 0 over all blocks), as both references
    dropout: float = 0.0  # dropout after the patch embedding, the attention projection and each MLP layer


# --- modules ----------------------------------------------------------------------------------------------------


class WindowAttentionBlock(nn.Module):
    """F = drop_path(dropout(proj(SW-MSA(norm(x))))) on tokens (B, D, H, W, C), shape-preserving.

    Inside: pad D, H, W to whole windows (after the norm, so padded tokens are zeros, as in both references), roll by
    −shift, attend within windows (relative position bias; shift mask when shifted), roll back, crop."""

    def __init__(
        self, dim: int, heads: int, window: Size3, shift: Size3, cfg: Swin3dConfig, drop_path: float, cache: WindowCache
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"channels {dim} are not divisible by heads {heads}")
        self.heads, self.window, self.shift = heads, window, shift
        self._cache = cache
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        table_rows = math.prod(2 * w - 1 for w in window)
        self.relative_position_bias_table = nn.Parameter(torch.empty(table_rows, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, window={self.window}, shift={self.shift}"

    @property
    def time_locality(self) -> TimeLocality:
        """Windows are independent: a piece of whole windows along D is recomputed exactly from its own tokens, if it
        is at least a window long (a shorter one would shrink its window and pad differently). Unshifted, that is
        all; shifted, a piece's own shift regions differ from the whole input's in its first half window and its
        last window and a half, so it reads two windows beyond its own on each side."""
        w = self.window[0]
        return TimeLocality.same(1, halo=2 * w if self.shift[0] else 0, align=w, min_frames=w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        window, shift = window_and_shift((d, h, w), self.window, self.shift)
        x = self.norm(x)
        pad = [(-s) % win for s, win in zip((d, h, w), window, strict=True)]
        if any(pad):
            x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        padded: Size3 = (d + pad[0], h + pad[1], w + pad[2])
        n = math.prod(window)
        order, back = self._cache.order((d, h, w), padded, window, shift, x.device)
        x = x.reshape(b, -1, c).index_select(1, order).view(b, -1, n, c)  # shifted windows (B, nW, N, C)
        index = self._cache.index(self.window, window, x.device)
        bias = self.relative_position_bias_table[index].view(n, n, self.heads).permute(2, 0, 1).contiguous()
        regions = self._cache.regions(padded, window, shift, x.device) if any(shift) else None
        x = WindowAttention.apply(self.qkv(x), bias, regions, self.heads, (c // self.heads) ** -0.5)  # (B, nW, N, C)
        x = self.dropout(self.proj(x))
        x = x.view(b, -1, c).index_select(1, back).view(b, d, h, w, c)  # un-shifted, cropped grid
        return self.drop_path(x)


class MlpBlock(nn.Module):
    """F = drop_path(dropout(fc2(dropout(gelu(fc1(norm(x))))))) on (..., C)."""

    time_locality = TimeLocality.same(1)  # each token alone: the reversible backward may recompute it in pieces

    def __init__(self, dim: int, cfg: Swin3dConfig, drop_path: float):
        super().__init__()
        hidden = int(dim * cfg.mlp_ratio)
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(self.norm(x)))))))


class SwinBlock(nn.Module):
    """One Swin block: its two residual branches as named submodules (called by the stage, never as a unit)."""

    def __init__(self, dim: int, heads: int, shift: Size3, cfg: Swin3dConfig, drop_path: float, cache: WindowCache):
        super().__init__()
        self.attn = WindowAttentionBlock(dim, heads, cfg.window, shift, cfg, drop_path, cache)
        self.mlp = MlpBlock(dim, cfg, drop_path)


class PatchMerging(nn.Module):
    """(B, D, H, W, C) → (B, D, ⌈H/2⌉, ⌈W/2⌉, 2C): concatenate each 2×2 spatial neighbourhood (H, W padded to even),
    norm, project. Time is not merged. An ordinary (non-reversible) layer between stages."""

    def __init__(self, dim: int, cfg: Swin3dConfig):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=cfg.norm_eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # The references' order: (even h, even w), (odd h, even w), (even h, odd w), (odd h, odd w).
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class Stage(nn.Module):
    """Swin blocks (one residual stage of 2·depth blocks), then the patch merging if any."""

    def __init__(self, dim: int, depth: int, heads: int, cfg: Swin3dConfig, rates: list[float], merge: bool):
        super().__init__()
        cache = WindowCache()  # the geometry its blocks share; derived from shapes, not registered (no state to save)
        half = tuple(w // 2 for w in cfg.window)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, (0, 0, 0) if i % 2 == 0 else half, cfg, rates[i], cache) for i in range(depth)
        )
        self.stage = ResidualStage([branch for block in self.blocks for branch in (block.attn, block.mlp)])
        self.downsample = PatchMerging(dim, cfg) if merge else None

    def forward(self, x: torch.Tensor, outside: Callable[..., torch.Tensor]) -> torch.Tensor:
        """`outside` calls the patch merging (the backbone's `run_outside`: it is not part of the residual stage)."""
        x = self.stage(x)
        return x if self.downsample is None else outside(self.downsample, x, locality=TimeLocality.same(1))


class PatchEmbed3d(nn.Module):
    """(B, 3, T, H, W) → (B, T/pt, ⌈H/ph⌉, ⌈W/pw⌉, C): pad to whole patches, non-overlapping conv, norm."""

    def __init__(self, cfg: Swin3dConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv3d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        pad = [(-s) % p for s, p in zip(video.shape[2:], self.patch_size, strict=True)]
        if any(pad):
            video = F.pad(video, (0, pad[2], 0, pad[1], 0, pad[0]))
        return self.norm(self.proj(video).permute(0, 2, 3, 4, 1))  # (B, T', H', W', C)


# --- model ------------------------------------------------------------------------------------------------------


class SwinTransformer3d(VideoBackbone):
    def __init__(self, cfg: Swin3dConfig):
        super().__init__()
        if len(cfg.depths) != len(cfg.heads) or not cfg.depths:
            raise ValueError(f"depths {cfg.depths} and heads {cfg.heads} must be non-empty and of equal length")
        self.cfg = cfg
        stages = len(cfg.depths)
        self.out_channels = cfg.embed_dim * 2 ** (stages - 1)
        self.temporal_stride = cfg.patch_size[0]  # patch merging keeps time
        self.min_frames = cfg.patch_size[0]
        rates = drop_path_rates(cfg.drop_path, sum(cfg.depths))
        self.patch_embed = PatchEmbed3d(cfg)
        self.pos_drop = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()
        self.layers = nn.ModuleList()
        start = 0
        for s, (depth, heads) in enumerate(zip(cfg.depths, cfg.heads, strict=True)):
            dim = cfg.embed_dim * 2**s
            self.layers.append(Stage(dim, depth, heads, cfg, rates[start : start + depth], s < stages - 1))
            start += depth
        self.norm = nn.LayerNorm(self.out_channels, eps=cfg.norm_eps)
        self.head = nn.Linear(self.out_channels, cfg.num_classes) if cfg.num_classes else None
        for m in self.modules():  # both references: Linear weights ~ TruncNormal(0.02), biases 0
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def tokens(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) → normalised last-stage tokens (B, T', H', W', C)."""
        self.check_input(video)
        t = self.cfg.patch_size[0]  # frames per token
        embed = TimeLocality((2,), 1, scales=(t,))
        x = self.run_outside(self._embed, video, modules=[self.patch_embed, self.pos_drop], locality=embed)
        for layer in self.layers:
            x = layer(x, self.run_outside)
        return self.norm(x)

    def _embed(self, video: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(self.patch_embed(video))

    def feature_maps(self, video: torch.Tensor) -> torch.Tensor:
        return self.tokens(video).permute(0, 4, 1, 2, 3)  # (B, C, T', H', W')

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) with a head, else the pooled (B, C) feature (mean over T', H', W')."""
        pooled = self.tokens(video).mean(dim=(1, 2, 3))
        return pooled if self.head is None else self.head(pooled)


# --- checkpoint layouts -----------------------------------------------------------------------------------------

MMACTION_RULES: list[Rule] = [  # mmaction2 1.x (final norm `norm3`) and the Video-Swin-Transformer release (`norm`)
    (r"(?:backbone\.)?(layers\.\d+\.blocks\.\d+)\.norm1\.(\w+)", r"\1.attn.norm.\2"),
    (r"(?:backbone\.)?(layers\.\d+\.blocks\.\d+)\.norm2\.(\w+)", r"\1.mlp.norm.\2"),
    (r"(?:backbone\.)?norm\d*\.(weight|bias)", r"norm.\1"),
    (r"cls_head\.fc_cls\.(\w+)", r"head.\1"),
    (r"backbone\.(.+)", r"\1"),  # attn.qkv/proj/bias table, mlp.fc1/fc2, patch_embed, downsample keep their names
]
_TORCHVISION_BLOCK = {"norm1": "attn.norm", "norm2": "mlp.norm", "mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2"}
TORCHVISION_RULES: list[Rule] = [  # features.2s: stage s's blocks; features.2s+1: its patch merging; `head`, `norm`
    (
        r"features\.(\d*[02468])\.(\d+)\.(norm1|norm2|mlp\.0|mlp\.3|attn\.qkv|attn\.proj)\.(\w+)",
        lambda m: f"layers.{int(m[1]) // 2}.blocks.{m[2]}.{_TORCHVISION_BLOCK.get(m[3], m[3])}.{m[4]}",
    ),
    (
        r"features\.(\d*[02468])\.(\d+)\.attn\.relative_position_bias_table",
        lambda m: f"layers.{int(m[1]) // 2}.blocks.{m[2]}.attn.relative_position_bias_table",
    ),
    (r"features\.(\d*[13579])\.(reduction|norm)\.(\w+)", lambda m: f"layers.{int(m[1]) // 2}.downsample.{m[2]}.{m[3]}"),
]


def convert_swin3d(sd: Mapping[str, torch.Tensor], arch: Arch | None = None) -> ConvertedCheckpoint:
    """Map a Swin3D checkpoint to our keys: torchvision `swin3d_t/s/b`, mmaction2 (1.x: `backbone.norm3`) or the
    official Video-Swin-Transformer release (mmaction 0.x: `backbone.norm`), or our own layout. Values are untouched;
    `relative_position_index` buffers are checked against the window their table implies and dropped (we compute
    them). A layout recognised as none of these passes through unchanged, so the strict key check names the first
    missing and unexpected keys."""
    if any(re.fullmatch(r"layers\.\d+\.blocks\.\d+\.attn\.norm\.weight", k) for k in sd):
        return ConvertedCheckpoint(dict(sd), "re2tal")
    if any(re.match(r"features\.\d+\.\d+\.norm1\.", k) for k in sd):
        fmt, rules = "torchvision", TORCHVISION_RULES
    elif any(re.match(r"(backbone\.)?layers\.\d+\.blocks\.\d+\.norm1\.", k) for k in sd):
        fmt, rules = "mmaction2", MMACTION_RULES
    else:
        return ConvertedCheckpoint(dict(sd), "unknown")
    dropped = tuple(k for k in sd if k.endswith("relative_position_index"))
    _check_position_indices({k: sd[k] for k in dropped}, sd)
    return ConvertedCheckpoint(rename_keys({k: v for k, v in sd.items() if k not in dropped}, rules), fmt, dropped)


def _check_position_indices(indices: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> None:
    """Each stored index must be the one computed for the window its bias table implies (it is derived, not learned;
    a different one would mean a different model)."""
    computed: dict[tuple[int, int], list[torch.Tensor]] = {}
    for key, index in indices.items():
        table = sd.get(key.replace("relative_position_index", "relative_position_bias_table"))
        if table is None or index.ndim != 2:
            raise BadCheckpointError(f"{key}: relative_position_index without a matching bias table")
        size = (index.shape[0], table.shape[0])
        if size not in computed:
            computed[size] = [relative_position_index(w) for w in _windows_for(*size)]
        if not any(index.shape == c.shape and torch.equal(index.to(c.dtype), c) for c in computed[size]):
            raise BadCheckpointError(
                f"{key}: relative_position_index differs from the one of a {index.shape[0]}-token window with a "
                f"{table.shape[0]}-row bias table"
            )


def _windows_for(tokens: int, table_rows: int) -> list[Size3]:
    """Windows (d, h, w) with d·h·w tokens and a (2d−1)(2h−1)(2w−1)-row table."""
    found = []
    for d in range(1, tokens + 1):
        for h in range(1, tokens // d + 1):
            w, rest = divmod(tokens, d * h)
            if not rest and (2 * d - 1) * (2 * h - 1) * (2 * w - 1) == table_rows:
                found.append((d, h, w))
    return found


# --- architectures ----------------------------------------------------------------------------------------------


_register = register_family("swin3d", SwinTransformer3d, convert_swin3d)

# Kinetics-400 training of the Video Swin release: 32 frames, stride 2, 224² crops; ImageNet mean/std.
_KINETICS_INPUT = InputSpec(num_frames=32, image_size=224, frame_stride=2)
_T = Swin3dConfig(embed_dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24))
_register("swin3d-t", _T, _KINETICS_INPUT, "Video Swin-T, patch 2×4×4, window 8×7×7, 32×224²")
_register("swin3d-s", replace(_T, depths=(2, 2, 18, 2)), _KINETICS_INPUT, "Video Swin-S, patch 2×4×4, window 8×7×7")
_register(
    "swin3d-b",
    Swin3dConfig(embed_dim=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32)),
    _KINETICS_INPUT,
    "Video Swin-B, patch 2×4×4, window 8×7×7, 32×224²",
)
_TINY_INPUT = InputSpec(num_frames=8, image_size=32, frame_stride=2)
_TINY = Swin3dConfig(embed_dim=16, depths=(2, 2), heads=(1, 2), window=(2, 4, 4), drop_path=0.0)
_register("swin3d-tiny", _TINY, _TINY_INPUT, "test model: depths 2-2, dim 16, window 2×4×4", test_only=True)
_register(
    "swin3d-tiny-d3",
    replace(_TINY, depths=(3, 1)),
    _TINY_INPUT,
    "test model: depths 3-1 (odd blocks per stage), dim 16",
    test_only=True,
)
