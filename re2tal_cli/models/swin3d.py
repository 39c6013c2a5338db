"""Video Swin Transformer 3D (Liu et al., CVPR 2022), whose torchvision and mmaction2 / Video-Swin-Transformer
checkpoints load directly.

Each Swin block contributes two residual blocks (Re²TAL §3.2): F_attn = drop_path(proj(SW-MSA(norm1(x)))) and
F_mlp = drop_path(mlp(norm2(x))), kept as named submodules `layers.S.blocks.I.attn` and `layers.S.blocks.I.mlp`; the
blocks of a stage form one `ResidualStage`, and the patch merging between stages stays an ordinary layer. F works on
channel-last tokens (B, D, H, W, C) and keeps their shape: padding to whole windows, the cyclic shift, the window
partition and the shift mask are all computed from the input's shape inside F, so F is a pure function of its input
(what a reversible recompute needs).

Window attention runs through `_WindowAttention`, which keeps no N×N matrix for the backward: the forward uses fused
SDPA with (relative position bias + shift mask) as `attn_mask`, the backward recomputes softmax a few windows at a
time and returns the bias gradient as well (PyTorch's CPU SDPA has no gradient for a mask). One block's recompute is
what sets a reversible network's peak memory, and an explicit attention matrix would dominate it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from re2tal_cli.errors import BadCheckpointError
from re2tal_cli.models.base import InputSpec, VideoBackbone
from re2tal_cli.models.layers import DropPath, drop_path_rates
from re2tal_cli.models.registry import Arch, ConvertedCheckpoint, register_arch
from re2tal_cli.reversible.stage import ResidualStage

__all__ = ["Swin3dConfig", "SwinTransformer3d", "convert_swin3d"]

Size3 = tuple[int, int, int]

# Scores (windows, heads, N, N) materialised at a time: the bias+mask of the forward, the recomputed probabilities
# and their gradient in the backward. At most max(_CHUNK_BYTES, a quarter of a token tensor): small against the
# stage's token tensors, of which a recompute holds a dozen anyway, and few chunks (operators) on long inputs.
_CHUNK_BYTES = 8 * 2**20
_MASKED = -100.0  # the shift mask's value for token pairs from different regions (torchvision and mmaction use -100)


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


# --- helpers ----------------------------------------------------------------------------------------------------


def _window_and_shift(size: Size3, window: Size3, shift: Size3) -> tuple[Size3, Size3]:
    """Where the input is no larger than the window along an axis, the window shrinks to the input and that axis is
    not shifted (torchvision's `_get_window_and_shift_size`, mmaction's `get_window_size`)."""
    w = tuple(s if s <= win else win for s, win in zip(size, window, strict=True))
    sh = tuple(0 if s <= win else sft for s, win, sft in zip(size, window, shift, strict=True))
    return w, sh  # type: ignore[return-value]


def relative_position_index(window: Size3) -> torch.Tensor:
    """(N, N) index into the (2Wd−1)(2Wh−1)(2Ww−1)-row bias table for each token pair of a window, N = Wd·Wh·Ww."""
    wd, wh, ww = window
    coords = torch.stack(torch.meshgrid(*(torch.arange(n) for n in window), indexing="ij")).flatten(1)  # (3, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (3, N, N), each offset in [−(W−1), W−1]
    rel = rel + torch.tensor([wd - 1, wh - 1, ww - 1])[:, None, None]
    return rel[0] * (2 * wh - 1) * (2 * ww - 1) + rel[1] * (2 * ww - 1) + rel[2]


def _region_ids(padded: Size3, window: Size3, shift: Size3) -> torch.Tensor:
    """(nW, N) region label of each token of each shifted window; tokens attend only within their region.

    The regions are the references' slices [0, L−W), [L−W, L−S), [L−S, L) per axis of the padded, shifted grid: a
    token's label along an axis counts the boundaries L−W and L−S at or before it. (Along an unshifted axis the
    references make the whole axis one region and this makes [0, L−W) and [L−W, L): no window straddles L−W, so the
    windows' masks are the same.)"""
    labels = [
        (torch.arange(n, dtype=torch.int32) >= n - win).int() + (torch.arange(n, dtype=torch.int32) >= n - s).int()
        for n, win, s in zip(padded, window, shift, strict=True)
    ]
    ids = (labels[0][:, None, None] * 9 + labels[1][:, None] * 3) + labels[2]  # (D, H, W), labels 0…26
    return _partition(ids[None, ..., None], window)[0, ..., 0]  # (nW, N)


def _partition(x: torch.Tensor, window: Size3) -> torch.Tensor:
    """(B, D, H, W, C) with D, H, W multiples of the window → (B, nW, N, C), windows in (d, h, w) order."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, wd * wh * ww, c)


def _window_order(size: Size3, padded: Size3, window: Size3, shift: Size3) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices that do pad-grid → rolled-by-−shift → window partition in one `index_select`, and back.

    order: (Lp,) flat padded-grid position of each token in window order (windows in (d, h, w) order, tokens in each
    window likewise); back: (L,) window-order position of each real (uncropped) grid token, in grid order. One copy
    each way instead of roll + partition (+ reverse, un-roll, crop): fewer token-sized temporaries in a recompute."""
    grid = torch.arange(math.prod(padded)).view(padded)
    if any(shift):
        grid = torch.roll(grid, shifts=tuple(-s for s in shift), dims=(0, 1, 2))
    order = _partition(grid[None, ..., None], window).reshape(-1)  # (Lp,)
    back = torch.argsort(order).view(padded)[: size[0], : size[1], : size[2]].reshape(-1)  # (L,)
    return order, back


class _WindowCache:
    """Bias-table indices and shift-mask regions, computed once per window/shape/device and shared by a model's
    blocks. Derived from shapes only (no parameters), so recomputing F reads the same values."""

    def __init__(self):
        self._index: dict[tuple, torch.Tensor] = {}
        self._regions: dict[tuple, torch.Tensor] = {}
        self._order: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def index(self, full_window: Size3, window: Size3, device: torch.device) -> torch.Tensor:
        """The full window's index cut to the first N×N entries, as both references do when the window shrinks to a
        small input (this keeps pretrained outputs identical, though the cut is not the smaller window's geometry)."""
        key = (full_window, window, device)
        if key not in self._index:
            n = math.prod(window)
            self._index[key] = relative_position_index(full_window)[:n, :n].reshape(-1).to(device)
        return self._index[key]

    def regions(self, padded: Size3, window: Size3, shift: Size3, device: torch.device) -> torch.Tensor:
        key = (padded, window, shift, device)
        if key not in self._regions:
            self._regions[key] = _region_ids(padded, window, shift).to(device)
        return self._regions[key]

    def order(self, size: Size3, padded: Size3, window: Size3, shift: Size3, device: torch.device):
        key = (size, padded, window, shift, device)
        if key not in self._order:
            self._order[key] = tuple(t.to(device) for t in _window_order(size, padded, window, shift))
        return self._order[key]


class _WindowAttention(torch.autograd.Function):
    """softmax(q·kᵀ·scale + bias + mask)·v per window and head, where mask = −100 between tokens of different regions.

    qkv: (B, nW, N, 3C), the qkv projection's output as is ([q | k | v], each split into heads); bias: (heads, N, N),
    a function of the learned table; regions: (nW, N) or None. Returns (B, nW, N, C), heads concatenated, ready for
    the output projection. Saves qkv only: the backward recomputes the probabilities P a chunk of windows at a time
    and, with O = P·v, D = rowsum(g ⊙ O) and dS = P ⊙ (g·vᵀ − D), fills dq = dS·k·scale, dk = dSᵀ·q·scale,
    dv = Pᵀ·g into one dqkv, and returns dbias = Σ_windows dS. Works in qkv's dtype (under autocast: the reduced one);
    the bias gradient comes back in the bias's dtype.
    """

    @staticmethod
    def forward(ctx, qkv, bias, regions, heads, scale):
        b, nw, n, c3 = qkv.shape
        q, k, v = _heads(qkv, 3, heads)  # (B, nW, heads, N, hd) views
        out = qkv.new_empty(b, nw, n, c3 // 3)
        (out_heads,) = _heads(out, 1, heads)
        ctx.heads, ctx.scale, ctx.bias_dtype = heads, scale, bias.dtype
        bias = bias.to(qkv.dtype)
        with torch.autocast(qkv.device.type, enabled=False):
            for i, w0, w1 in _chunks(qkv, heads * n * n * qkv.element_size()):
                mask = bias if regions is None else bias + _shift_mask(regions[w0:w1], qkv.dtype)[:, None]
                qc, kc, vc = q[i, w0:w1], k[i, w0:w1], v[i, w0:w1]  # (c, heads, N, hd)
                out_heads[i, w0:w1] = F.scaled_dot_product_attention(qc, kc, vc, mask, scale=scale)
                del mask  # nothing a chunk allocates outlives it (`_chunks` relies on it)
        ctx.save_for_backward(qkv, bias, regions)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        qkv, bias, regions = ctx.saved_tensors
        heads, scale = ctx.heads, ctx.scale
        n = qkv.shape[2]
        q, k, v = _heads(qkv, 3, heads)  # (B, nW, heads, N, hd) views
        (g,) = _heads(g.to(qkv.dtype).contiguous(), 1, heads)
        dqkv = torch.empty_like(qkv)
        dq, dk, dv = _heads(dqkv, 3, heads)
        dbias = torch.zeros_like(bias)
        with torch.autocast(qkv.device.type, enabled=False):
            for i, w0, w1 in _chunks(qkv, heads * n * n * qkv.element_size()):
                qc, kc, vc, gc = q[i, w0:w1], k[i, w0:w1], v[i, w0:w1], g[i, w0:w1]  # (c, heads, N, hd)
                p = torch.matmul(qc, kc.transpose(-2, -1)).mul_(scale).add_(bias)  # scores (c, heads, N, N)
                if regions is not None:
                    p.add_(_shift_mask(regions[w0:w1], qkv.dtype)[:, None])
                p = _softmax_(p)
                rows = (gc * torch.matmul(p, vc)).sum(-1, keepdim=True)  # D = rowsum(g ⊙ O), (c, heads, N, 1)
                dv[i, w0:w1] = torch.matmul(p.transpose(-2, -1), gc)  # dv = Pᵀ·g
                ds = torch.matmul(gc, vc.transpose(-2, -1)).sub_(rows).mul_(p)  # dS = P ⊙ (g·vᵀ − D)
                del p, rows  # nothing a chunk allocates outlives it (`_chunks` relies on it)
                dbias += ds.sum(0)
                dq[i, w0:w1] = torch.matmul(ds, kc).mul_(scale)  # dq = dS·k·scale
                dk[i, w0:w1] = torch.matmul(ds.transpose(-2, -1), qc).mul_(scale)  # dk = dSᵀ·q·scale
                del ds
        return dqkv, dbias.to(ctx.bias_dtype), None, None, None


def _heads(x: torch.Tensor, parts: int, heads: int) -> tuple[torch.Tensor, ...]:
    """(B, nW, N, parts·C) → `parts` views (B, nW, heads, N, C/heads): q, k and v of a qkv tensor, or the heads of
    one token tensor. Taken once per call, so a chunk only selects its windows from them."""
    b, nw, n, c = x.shape
    return x.view(b, nw, n, parts, heads, c // parts // heads).permute(3, 0, 1, 4, 2, 5).unbind(0)


def _softmax_(s: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, in place (one N×N chunk fewer than `torch.softmax` in the backward)."""
    s.sub_(s.amax(-1, keepdim=True)).exp_()
    return s.div_(s.sum(-1, keepdim=True))


def _chunks(qkv: torch.Tensor, bytes_per_window: int):
    """(sample, first window, end window) slices of qkv (B, nW, N, 3C) with a bounded amount of scores each.

    On fake tensors (memprofile's estimate: shapes, no values) only the first chunk runs. Every chunk frees what it
    allocates before the next begins, and none allocates more than the first (the last may be shorter), so the
    estimate's peaks are the full loop's, and its cost (per operator) does not grow with the input."""
    batch, windows = qkv.shape[:2]
    budget = max(_CHUNK_BYTES, qkv.numel() * qkv.element_size() // 12)  # qkv is three token tensors
    step = max(1, budget // bytes_per_window)
    starts = range(0, windows, step)
    if is_fake(qkv):
        batch, starts = 1, starts[:1]
    for i in range(batch):
        for w0 in starts:
            yield i, w0, min(w0 + step, windows)


def _shift_mask(regions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(c, N) region labels → (c, N, N) additive mask: 0 within a region, −100 across."""
    return (regions[:, :, None] != regions[:, None, :]).to(dtype) * _MASKED


# --- modules ----------------------------------------------------------------------------------------------------


class WindowAttentionBlock(nn.Module):
    """F = drop_path(dropout(proj(SW-MSA(norm(x))))) on tokens (B, D, H, W, C), shape-preserving.

    Inside: pad D, H, W to whole windows (after the norm, so padded tokens are zeros, as in both references), roll by
    −shift, attend within windows (relative position bias; shift mask when shifted), roll back, crop."""

    def __init__(self, dim: int, heads: int, window: Size3, shift: Size3, cfg: Swin3dConfig, drop_path: float, cache):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        window, shift = _window_and_shift((d, h, w), self.window, self.shift)
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
        x = _WindowAttention.apply(self.qkv(x), bias, regions, self.heads, (c // self.heads) ** -0.5)  # (B, nW, N, C)
        x = self.dropout(self.proj(x))
        x = x.view(b, -1, c).index_select(1, back).view(b, d, h, w, c)  # un-shifted, cropped grid
        return self.drop_path(x)


class MlpBlock(nn.Module):
    """F = drop_path(dropout(fc2(dropout(gelu(fc1(norm(x))))))) on (..., C)."""

    token_wise_dim = 1  # acts on each token alone: the reversible backward may recompute it a slice of D at a time

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

    def __init__(self, dim: int, heads: int, shift: Size3, cfg: Swin3dConfig, drop_path: float, cache):
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

    def __init__(self, dim: int, depth: int, heads: int, cfg: Swin3dConfig, rates: list[float], merge: bool, cache):
        super().__init__()
        half = tuple(w // 2 for w in cfg.window)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, (0, 0, 0) if i % 2 == 0 else half, cfg, rates[i], cache) for i in range(depth)
        )
        self.stage = ResidualStage([branch for block in self.blocks for branch in (block.attn, block.mlp)])
        self.downsample = PatchMerging(dim, cfg) if merge else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage(x)
        return x if self.downsample is None else self.downsample(x)


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
        cache = _WindowCache()  # shared by the blocks, not registered (no state to save)
        rates = drop_path_rates(cfg.drop_path, sum(cfg.depths))
        self.patch_embed = PatchEmbed3d(cfg)
        self.pos_drop = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()
        self.layers = nn.ModuleList()
        start = 0
        for s, (depth, heads) in enumerate(zip(cfg.depths, cfg.heads, strict=True)):
            dim = cfg.embed_dim * 2**s
            self.layers.append(Stage(dim, depth, heads, cfg, rates[start : start + depth], s < stages - 1, cache))
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
        x = self.pos_drop(self.patch_embed(video))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def feature_maps(self, video: torch.Tensor) -> torch.Tensor:
        return self.tokens(video).permute(0, 4, 1, 2, 3)  # (B, C, T', H', W')

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) with a head, else the pooled (B, C) feature (mean over T', H', W')."""
        pooled = self.tokens(video).mean(dim=(1, 2, 3))
        return pooled if self.head is None else self.head(pooled)


# --- checkpoint layouts -----------------------------------------------------------------------------------------

_MMACTION_BLOCK = {"norm1": "attn.norm", "norm2": "mlp.norm"}  # attn.qkv/proj/table, mlp.fc1/fc2 keep their names
_TORCHVISION_BLOCK = {"norm1": "attn.norm", "norm2": "mlp.norm", "mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2"}


def convert_swin3d(sd: Mapping[str, torch.Tensor]) -> ConvertedCheckpoint:
    """Map a Swin3D checkpoint to our keys: torchvision `swin3d_t/s/b`, mmaction2 (1.x: `backbone.norm3`) or the
    official Video-Swin-Transformer release (mmaction 0.x: `backbone.norm`), or our own layout. Values are untouched;
    `relative_position_index` buffers are checked against the window their table implies and dropped (we compute
    them). A layout recognised as none of these passes through unchanged, so the strict key check names the first
    missing and unexpected keys."""
    if any(re.fullmatch(r"layers\.\d+\.blocks\.\d+\.attn\.norm\.weight", k) for k in sd):
        return ConvertedCheckpoint(dict(sd), "re2tal")
    if any(re.match(r"features\.\d+\.\d+\.norm1\.", k) for k in sd):
        fmt, convert = "torchvision", _convert_torchvision
    elif any(re.match(r"(backbone\.)?layers\.\d+\.blocks\.\d+\.norm1\.", k) for k in sd):
        fmt, convert = "mmaction2", _convert_mmaction
    else:
        return ConvertedCheckpoint(dict(sd), "unknown")
    dropped = tuple(k for k in sd if k.endswith("relative_position_index"))
    _check_position_indices({k: sd[k] for k in dropped}, sd)
    return ConvertedCheckpoint(convert({k: v for k, v in sd.items() if k not in dropped}), fmt, dropped)


def _convert_mmaction(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        key = key.removeprefix("backbone.")
        if m := re.fullmatch(r"(layers\.\d+\.blocks\.\d+)\.(norm1|norm2)\.(weight|bias)", key):
            key = f"{m[1]}.{_MMACTION_BLOCK[m[2]]}.{m[3]}"
        elif m := re.fullmatch(r"norm\d*\.(weight|bias)", key):  # mmaction2 1.x names it after the stage: norm3
            key = f"norm.{m[1]}"
        elif m := re.fullmatch(r"cls_head\.fc_cls\.(weight|bias)", key):
            key = f"head.{m[1]}"
        out[key] = value
    return out


def _convert_torchvision(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"features\.(\d+)\.(\d+)\.(.+)\.(weight|bias|relative_position_bias_table)", key):
            feature, block, module, kind = int(m[1]), m[2], m[3], m[4]
            if feature % 2 == 0:  # features.2s is stage s's blocks, features.2s+1 its patch merging
                key = f"layers.{feature // 2}.blocks.{block}.{_TORCHVISION_BLOCK.get(module, module)}.{kind}"
        elif (m := re.fullmatch(r"features\.(\d+)\.(reduction|norm)\.(weight|bias)", key)) and int(m[1]) % 2:
            key = f"layers.{int(m[1]) // 2}.downsample.{m[2]}.{m[3]}"
        out[key] = value
    return out


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


def _register(name: str, cfg: Swin3dConfig, input_spec: InputSpec, description: str, test_only: bool = False) -> None:
    def build(**overrides) -> SwinTransformer3d:
        return SwinTransformer3d(replace(cfg, **overrides))

    register_arch(Arch(name, "swin3d", build, input_spec, convert_swin3d, description, test_only))


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
