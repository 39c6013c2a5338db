"""Resize, crop, normalise and augment clips as tensors (no torchvision: it is not a dependency).

A clip is a float tensor (C, T, H, W) in [0, 1] — the layout backbones take once batched — made from decoded frames
with `to_tensor`. The augmentations are those of the Re²TAL supplementary (Table 6): random crop, flip, temporal
jitter, rotation and colour jitter. Spatial ones draw their parameters once per clip and apply them to every frame
(a flipped action stays one action); all randomness comes from an explicit `torch.Generator`, so a sample's
augmentation depends only on its seed, never on which DataLoader worker drew it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "to_tensor",
    "resize",
    "resize_short",
    "center_crop",
    "crop",
    "normalize",
    "hflip",
    "rotate",
    "color_jitter",
    "Augment",
]


def to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames → (3, T, H, W) float32 in [0, 1]."""
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3), got {tuple(x.shape)}")
    return x.permute(3, 0, 1, 2).float().div_(255.0)


def _over_frames(x: torch.Tensor, fn) -> torch.Tensor:
    """Apply an image op batched over T: (C, T, H, W) → (T, C, H, W) → op → (C, T, H', W')."""
    y = fn(x.transpose(0, 1))
    return y.transpose(0, 1).contiguous()


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (antialiased when shrinking) of a (C, T, H, W) clip to `size` = (H', W')."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return _over_frames(x, lambda f: F.interpolate(f, size=size, mode="bilinear", align_corners=False, antialias=True))


def resize_short(x: torch.Tensor, short: int) -> torch.Tensor:
    """Resize so the shorter side is `short`, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    scale = short / min(h, w)
    return resize(x, (max(round(h * scale), 1), max(round(w * scale), 1)))


def crop(x: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    return x[..., top : top + height, left : left + width]


def center_crop(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if th > h or tw > w:
        x = resize(x, (max(th, h), max(tw, w)))
        h, w = x.shape[-2:]
    return crop(x, (h - th) // 2, (w - tw) // 2, th, tw)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x − mean) / std per channel of a (C, T, H, W) or (B, C, T, H, W) clip."""
    shape = (-1, 1, 1, 1)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate every frame by `degrees` about the centre (bilinear, zeros outside)."""
    if degrees == 0:
        return x
    a = math.radians(degrees)
    h, w = x.shape[-2:]
    # affine_grid works in normalised coordinates; correct for the aspect ratio so the rotation is rigid.
    theta = torch.tensor(
        [[math.cos(a), -math.sin(a) * h / w, 0.0], [math.sin(a) * w / h, math.cos(a), 0.0]], dtype=x.dtype
    )
    frames = x.transpose(0, 1)  # (T, C, H, W)
    grid = F.affine_grid(theta.expand(frames.shape[0], 2, 3), list(frames.shape), align_corners=False)
    out = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.transpose(0, 1).contiguous()


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)


def color_jitter(
    x: torch.Tensor, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0, hue: float = 0.0
) -> torch.Tensor:
    """Scale brightness, contrast (about the clip's mean grey), saturation; rotate hue by `hue` turns (YIQ)."""
    x = x * brightness
    if contrast != 1.0:
        x = (x - _gray(x).mean()) * contrast + _gray(x).mean()
    if saturation != 1.0:
        g = _gray(x)
        x = (x - g) * saturation + g
    if hue != 0.0:
        yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=x.dtype)
        c, s = math.cos(2 * math.pi * hue), math.sin(2 * math.pi * hue)
        rot = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=x.dtype)
        m = torch.linalg.inv(yiq) @ rot @ yiq
        x = torch.einsum("ij,jthw->ithw", m, x)
    return x.clamp_(0.0, 1.0)


@dataclass
class Augment:
    """Training augmentations of Re²TAL (supplementary Table 6), each off when its strength is 0.

    Spatial parameters are drawn once per clip from `generator` and applied to all its frames. Temporal jitter acts
    on frame numbers before decoding: see `sampling.jitter_indices` (`temporal_jitter` is its amount).
    """

    size: int = 224  # output side (square)
    crop_scale: tuple[float, float] = (1.0, 1.0)  # random crop: area fraction range of the (short-side) resized frame
    flip: float = 0.0  # probability of a horizontal flip
    rotation: float = 0.0  # max |degrees| of a random rotation
    brightness: float = 0.0  # colour jitter strengths, as in the usual ColorJitter: factor in [1-b, 1+b]
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0  # max |turns| (0.5 = half the hue circle)
    temporal_jitter: float = 0.0

    @classmethod
    def re2tal(cls, size: int = 224) -> Augment:
        """All five augmentations on (Table 6's best row), at moderate strengths."""
        return cls(
            size=size,
            crop_scale=(0.5, 1.0),
            flip=0.5,
            rotation=10.0,
            brightness=0.2,
            contrast=0.2,
            saturation=0.2,
            hue=0.05,
            temporal_jitter=0.5,
        )

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(C, T, H, W) in [0, 1] → (C, T, size, size), the same transform on every frame."""

        def u(lo: float, hi: float) -> float:
            return lo + (hi - lo) * float(torch.rand((), generator=generator))

        x = resize_short(x, self.size)
        h, w = x.shape[-2:]
        lo, hi = self.crop_scale
        if hi < 1.0 or lo < 1.0:
            area = u(lo, hi) * self.size * self.size
            side = int(round(min(math.sqrt(area), h, w)))
            top = int(u(0, h - side + 1 - 1e-9))
            left = int(u(0, w - side + 1 - 1e-9))
            x = resize(crop(x, top, left, side, side), (self.size, self.size))
        else:
            top, left = int(u(0, h - self.size + 1 - 1e-9)), int(u(0, w - self.size + 1 - 1e-9))
            x = crop(x, top, left, self.size, self.size)
        if self.flip > 0 and u(0, 1) < self.flip:
            x = hflip(x)
        if self.rotation > 0:
            x = rotate(x, u(-self.rotation, self.rotation))
        if self.brightness or self.contrast or self.saturation or self.hue:
            x = color_jitter(
                x,
                brightness=u(1 - self.brightness, 1 + self.brightness),
                contrast=u(1 - self.contrast, 1 + self.contrast),
                saturation=u(1 - self.saturation, 1 + self.saturation),
                hue=u(-self.hue, self.hue),
            )
        return x


def eval_transform(x: torch.Tensor, size: int) -> torch.Tensor:
    """Deterministic test-time preprocessing: short side to `size`, centre crop `size`×`size`."""
    return center_crop(resize_short(x, size), size)
