"""Points of the feature pyramid and the training targets of each point (ActionFormer's label assignment).

A *point* is one step of one pyramid level: level l, index i sits at position i·2^l on the input feature grid, has
stride 2^l and a regression range [low_l, high_l]. A point is positive for a ground-truth segment [s, e] when

1. it lies inside the segment — with centre sampling, inside its central part
   [c - r·stride, c + r·stride] ∩ [s, e] (c the segment's centre, r the radius), strictly (boundaries excluded);
2. its larger distance to the segment's ends, max(t - s, e - t), lies in [low_l, high_l] (ends included), so long
   segments are learned on coarse levels and short ones on fine levels.

When several segments claim a point, the shortest wins (easiest to regress); segments within 1e-3 of that length
all give their class, so the point's class target can be multi-hot, and the first of them gives the offsets.
Regression targets are (t - s, e - t) / stride.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["POINT_CENTRE", "POINT_RANGE_HIGH", "POINT_RANGE_LOW", "POINT_STRIDE", "assign_targets", "make_points"]

# columns of a points tensor (P, 4)
POINT_CENTRE, POINT_RANGE_LOW, POINT_RANGE_HIGH, POINT_STRIDE = 0, 1, 2, 3
TIE_TOLERANCE = 1e-3  # segments this close to the shortest length count as equally short (feature steps)


def make_points(
    lengths: Sequence[int], regression_ranges: Sequence[tuple[float, float]], device: torch.device | str | None = None
) -> list[torch.Tensor]:
    """Per level l with T_l steps: (T_l, 4) float32 rows (centre i·2^l, range low, range high, stride 2^l)."""
    points = []
    for level, (length, (low, high)) in enumerate(zip(lengths, regression_ranges, strict=True)):
        stride = 2**level
        centre = torch.arange(length, device=device, dtype=torch.float32) * stride
        fixed = torch.tensor([low, high, stride], device=device, dtype=torch.float32).expand(length, 3)
        points.append(torch.cat((centre[:, None], fixed), dim=1))
    return points


@torch.no_grad()
def assign_targets(
    points: torch.Tensor,
    segments: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    center_sample_radius: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of one video. points (P, 4) (all levels concatenated), segments (N, 2) [start, end] in feature steps,
    labels (N,) long in [0, K). Returns class targets (P, K) in {0, 1} and offsets (P, 2) in stride units (zero on
    negative points). N = 0 gives all-negative targets."""
    num_points = points.shape[0]
    if segments.shape[0] == 0:
        return points.new_zeros(num_points, num_classes), points.new_zeros(num_points, 2)
    segments = segments.to(points.dtype)
    centre = points[:, POINT_CENTRE, None]  # (P, 1)
    stride = points[:, POINT_STRIDE, None]
    start, end = segments[None, :, 0], segments[None, :, 1]  # (1, N)
    distances = torch.stack((centre - start, end - centre), dim=-1)  # (P, N, 2) (left, right)

    if center_sample_radius is None:
        inside = distances.min(dim=-1).values > 0
    else:
        middle = 0.5 * (start + end)
        low = torch.maximum(middle - center_sample_radius * stride, start)  # (P, N)
        high = torch.minimum(middle + center_sample_radius * stride, end)
        inside = (centre > low) & (centre < high)
    farthest = distances.max(dim=-1).values  # (P, N)
    in_range = (farthest >= points[:, POINT_RANGE_LOW, None]) & (farthest <= points[:, POINT_RANGE_HIGH, None])

    lengths = (end - start).expand(num_points, -1).masked_fill(~(inside & in_range), float("inf"))  # (P, N)
    shortest, winner = lengths.min(dim=1)  # (P,)
    claims = (lengths <= shortest[:, None] + TIE_TOLERANCE) & torch.isfinite(lengths)  # (P, N)
    one_hot = F.one_hot(labels.long(), num_classes).to(points.dtype)  # (N, K)
    cls_targets = (claims.to(points.dtype) @ one_hot).clamp(max=1.0)  # (P, K)
    reg_targets = distances[torch.arange(num_points, device=points.device), winner] / stride  # (P, 2)
    positive = torch.isfinite(shortest)
    return cls_targets, reg_targets * positive[:, None]
