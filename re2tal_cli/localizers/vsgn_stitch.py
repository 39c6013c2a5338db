"""Video self-stitching (VSGN's VSS): a short window's clip magnified by linear interpolation and stitched after the
original, so that one input holds the clip at two scales.

    window of length L with n valid steps, n ≤ ratio · L:
    [ original: n steps | gap: masked steps | magnified: m = L - n - gap steps ]      (m > n, else no stitching)

Positions follow the localizers' grid (feature t centred at t, the sequence spans [-0.5, n - 0.5]). Linear
interpolation with `align_corners=False` maps that span onto [o - 0.5, o + m - 0.5], o = n + gap the magnified
part's first step, so a position x of the original is x' = o - 0.5 + (x + 0.5) · m / n in the stitched window and
`to_original` inverts it. The gap is masked: the localizer recognises the magnified part as the valid steps that
follow a masked one (`magnified_part`), which needs no record beside the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Stitch", "magnified_part", "plan_stitch", "prefix_lengths", "stitch_sequence", "stitch_training_batch"]


@dataclass(frozen=True)
class Stitch:
    """Where one video's magnified copy sits: `length` original steps, the copy from step `offset`, `magnified`
    steps long."""

    length: int
    offset: int
    magnified: int

    @property
    def scale(self) -> float:
        return self.magnified / self.length

    def to_stitched(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions on the original grid → the same instants in the magnified copy."""
        return self.offset - 0.5 + (positions + 0.5) * self.scale

    def to_original(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions in the magnified copy → the original grid (the inverse of `to_stitched`)."""
        return (positions - self.offset + 0.5) / self.scale - 0.5


def plan_stitch(valid_length: int, window: int, ratio: float, gap: int) -> Stitch | None:
    """The stitch of a window of `window` steps whose first `valid_length` are valid; None when the window is not
    short (valid_length > ratio · window) or the copy would not be longer than the original."""
    magnified = window - valid_length - gap
    if valid_length < 1 or valid_length > ratio * window or magnified <= valid_length:
        return None
    return Stitch(valid_length, valid_length + gap, magnified)


def stitch_sequence(feats: torch.Tensor, stitch: Stitch, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """feats (C, ≥ n) of one video → stitched features (C, window) and mask (window,)."""
    original = feats[:, : stitch.length]
    magnified = F.interpolate(original[None].float(), size=stitch.magnified, mode="linear", align_corners=False)
    out = feats.new_zeros(feats.shape[0], window)
    out[:, : stitch.length] = original
    out[:, stitch.offset : stitch.offset + stitch.magnified] = magnified[0].to(feats.dtype)
    mask = torch.zeros(window, dtype=torch.bool, device=feats.device)
    mask[: stitch.length] = True
    mask[stitch.offset : stitch.offset + stitch.magnified] = True
    return out, mask


def stitch_training_batch(
    feats: torch.Tensor,
    mask: torch.Tensor,
    segments: list[torch.Tensor],
    labels: list[torch.Tensor],
    ratio: float,
    gap: int,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """A training batch with every short window stitched (shape kept: (B, C, T)); each stitched window's segments
    get their magnified copies (same labels). Windows whose valid steps are not a prefix are left alone."""
    window = feats.shape[2]
    feats, mask, segments, labels = feats.clone(), mask.clone(), list(segments), list(labels)
    for b, valid in enumerate(prefix_lengths(mask)):
        stitch = plan_stitch(valid, window, ratio, gap) if valid is not None else None
        if stitch is None:
            continue
        feats[b], mask[b] = stitch_sequence(feats[b], stitch, window)
        video_segments = segments[b].float()
        segments[b] = torch.cat([video_segments, stitch.to_stitched(video_segments)])
        labels[b] = torch.cat([labels[b], labels[b]])
    return feats, mask, segments, labels


def prefix_lengths(mask: torch.Tensor) -> list[int | None]:
    """mask (B, T) → per video its number of valid steps when they are the first ones (padding at the end only),
    else None. Reads the mask on the host."""
    valid = mask.sum(1).tolist()
    prefix = mask.long().cumprod(1).sum(1).tolist()
    return [n if n == p else None for n, p in zip(valid, prefix, strict=True)]


def magnified_part(mask: torch.Tensor) -> torch.Tensor:
    """mask (B, T) → (B, T) bool: valid steps after a masked step (the magnified copy of a stitched window; empty
    for a window padded at the end only). Tensor operations only (no host read)."""
    masked_before = (~mask).cumsum(1) > 0
    return mask & masked_before
