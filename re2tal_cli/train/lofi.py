"""LoFi-E2E (Xu et al., "Low-Fidelity End-to-End Video Encoder Pre-training for Temporal Action Localization"):
train the backbone and localizer end to end on training batches of reduced fidelity, then retrain the localizer at
full fidelity on the frozen backbone.

A batch of L frames at H × W becomes, per configuration (the paper's §3.2):

    s   spatial    L × H/r_s × W/r_s        (paper: r_s = 2)
    t   temporal   L/r_t × H × W            (r_t = 4: every r_t-th frame, the same span of time)
    st  both       L/r_t' × H/r_s' × W/r_s' (r_s' = √2, r_t' = 2)

so each has about a quarter of the pixels and the per-video memory stays about constant across them (`re2tal
memprofile` at the reduced sizes shows it). The cyclic modes cycle s → t → st: `cyclic-short` every `short_cycle`
optimizer updates (the paper's c_s = 16 batches), `cyclic-long` every `long_cycle` epochs (the paper's default).
Evaluation is always at full fidelity. The reduction is applied to decoded batches: frames are subsampled in time
and resized with antialiasing, so a cycle changes nothing in the data pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Fidelity", "fidelities", "fidelity_at", "reduce_batch", "reduced_size"]


@dataclass(frozen=True)
class Fidelity:
    name: str  # s, t or st
    spatial: float  # r_s ≥ 1: height and width divided by it
    temporal: int  # r_t ≥ 1: every r_t-th frame kept


def fidelities(lofi) -> list[Fidelity]:
    """The configurations a recipe's `lofi` section trains with, in cycle order (empty: full fidelity)."""
    spatial = Fidelity("s", lofi.r_s, 1)
    temporal = Fidelity("t", 1.0, lofi.r_t)
    both = Fidelity("st", lofi.st_r_s, lofi.st_r_t)
    return {
        "none": [],
        "s": [spatial],
        "t": [temporal],
        "st": [both],
        "cyclic-short": [spatial, temporal, both],
        "cyclic-long": [spatial, temporal, both],
    }[str(lofi.mode)]


def fidelity_at(lofi, step: int, updates_per_epoch: int) -> Fidelity | None:
    """The configuration of optimizer update `step` (0-based; None: full fidelity). A function of the step alone,
    so a resumed run continues the cycle where it stopped."""
    cycle = fidelities(lofi)
    if not cycle:
        return None
    if str(lofi.mode) == "cyclic-short":
        return cycle[(step // lofi.short_cycle) % len(cycle)]
    if str(lofi.mode) == "cyclic-long":
        return cycle[(step // updates_per_epoch // lofi.long_cycle) % len(cycle)]
    return cycle[0]


def reduced_size(frames: int, size: int, fidelity: Fidelity) -> tuple[int, int]:
    """(frames, size) of a batch of `frames` frames at size × size after the reduction."""
    return frames // fidelity.temporal, max(1, round(size / fidelity.spatial))


def reduce_batch(batch: dict[str, Any], fidelity: Fidelity | None) -> dict[str, Any]:
    """A frames batch (video (B, 3, T, H, W), times (B, T), fps) at `fidelity`: every r_t-th frame with its time,
    the frame period r_t times longer (the grid's frame span), frames resized (bilinear, antialiased)."""
    if fidelity is None:
        return batch
    video, times, fps = batch["video"], batch["times"], batch["fps"]
    size = reduced_size(video.shape[2], video.shape[-1], fidelity)[1]
    if fidelity.temporal > 1:
        video, times = video[:, :, :: fidelity.temporal], times[:, :: fidelity.temporal]
        fps = fps / fidelity.temporal if isinstance(fps, torch.Tensor) else [f / fidelity.temporal for f in fps]
    if size != video.shape[-1] or video.shape[-2] != size:
        b, c, t, h, w = video.shape
        flat = video.transpose(1, 2).reshape(b * t, c, h, w)
        flat = F.interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        video = flat.reshape(b, t, c, size, size).transpose(1, 2)
    return {**batch, "video": video.contiguous(), "times": times, "fps": fps}
