"""Video Swin's shifted-window attention as one autograd Function, with the window geometry it needs: relative
position indices, shift-mask regions, and the gather order that pads, shifts and partitions tokens in one copy.

`_WindowAttention` keeps no N×N matrix for the backward: the forward uses fused SDPA with (relative position bias +
shift mask) as `attn_mask`, the backward recomputes softmax a few windows at a time and returns the bias gradient as
well (PyTorch's CPU SDPA has no gradient for a mask). One block's recompute is what sets a reversible network's peak
memory, and an explicit attention matrix would dominate it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

Size3 = tuple[int, int, int]

# Scores (windows, heads, N, N) materialised at a time: the bias+mask of the forward, the recomputed probabilities
# and their gradient in the backward. At most max(_CHUNK_BYTES, a quarter of a token tensor): small against the
# stage's token tensors, of which a recompute holds a dozen anyway, and few chunks (operators) on long inputs.
_CHUNK_BYTES = 8 * 2**20
_MASKED = -100.0  # the shift mask's value for token pairs from different regions (torchvision and mmaction use -100)
# Scores are floored here before their exp on a CPU (`_exp_`): −87, the first whole exponent whose exp is a normal
# float32 (the smallest normal is e^−87.34)
_SMALLEST_NORMAL_EXP = math.ceil(math.log(torch.finfo(torch.float32).tiny))


def window_and_shift(size: Size3, window: Size3, shift: Size3) -> tuple[Size3, Size3]:
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


class WindowCache:
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


class WindowAttention(torch.autograd.Function):
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
    _exp_(s.sub_(s.amax(-1, keepdim=True)))
    return s.div_(s.sum(-1, keepdim=True))


def _exp_(s: torch.Tensor) -> torch.Tensor:
    """exp in place of scores less their row's maximum. On a CPU, in float32 or bfloat16, scores below −87 are
    raised to −87 first: their exp would be subnormal, which x86 CPUs make several times slower than any other (the
    shift mask's −100 puts about half of a shifted window's scores there: on 2 AVX2 cores, Swin-T's first-stage
    attention backward at 32×112² took 273 ms, 100 ms with the floor). e^−87, 1.6e-38, is as nothing beside the row
    maximum's 1, as the subnormal was: those gradients came out bit for bit the same."""
    if s.device.type == "cpu" and s.dtype in (torch.float32, torch.bfloat16):
        s.clamp_min_(_SMALLEST_NORMAL_EXP)
    return s.exp_()


def _chunks(qkv: torch.Tensor, bytes_per_window: int):
    """(sample, first window, end window) slices of qkv (B, nW, N, 3C) with a bounded amount of scores each, as
    `chunk_plan` orders them."""
    batch, windows = qkv.shape[:2]
    budget = max(_CHUNK_BYTES, qkv.numel() * qkv.element_size() // 12)  # qkv is three token tensors
    return chunk_plan(batch, windows, max(1, budget // bytes_per_window))


def every_chunk(batch: int, windows: int, step: int) -> Iterator[tuple[int, int, int]]:
    for i in range(batch):
        for w0 in range(0, windows, step):
            yield i, w0, min(w0 + step, windows)


def first_chunk(batch: int, windows: int, step: int) -> Iterator[tuple[int, int, int]]:
    """Only the first chunk: what a shape-only run needs. Every chunk frees what it allocates before the next
    begins, and none allocates more than the first (the last may be shorter), so one chunk has the full loop's peaks
    at a cost (per operator) that does not grow with the input."""
    yield 0, 0, min(step, windows)


# The chunks a call computes; a hook for callers that run on tensors without values: memprofile's fake-tensor
# estimate sets `first_chunk` while it runs (memory/estimate.py), so the models need no special case for it.
chunk_plan: Callable[[int, int, int], Iterable[tuple[int, int, int]]] = every_chunk


def _shift_mask(regions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(c, N) region labels → (c, N, N) additive mask: 0 within a region, −100 across."""
    return (regions[:, :, None] != regions[:, None, :]).to(dtype) * _MASKED
