"""From per-point scores and offsets to a short list of segments per video: filter, decode, soft-NMS, optional voting.

Everything is in feature-grid units (see `re2tal_cli.localizers.actionformer`) and in plain torch, on whatever
device the outputs live: no compiled extension. NMS runs on all classes at once (one row per class), so its loop
has as many iterations as the longest per-class list, not the total number of candidates.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from re2tal_cli.errors import BadInputError

__all__ = [
    "Detections",
    "NmsMethod",
    "PostprocessConfig",
    "batched_nms",
    "decode_video",
    "postprocess_video",
    "score_voting",
    "segment_iou",
]


class NmsMethod(enum.StrEnum):
    SOFT = "soft"  # gaussian soft-NMS: every later segment's score × exp(-IoU² / sigma)
    HARD = "hard"  # classic NMS: later segments with IoU ≥ iou_threshold are dropped
    NONE = "none"  # keep every candidate (still sorted and capped at max_segments)


@dataclass(frozen=True)
class PostprocessConfig:
    """Test-time settings; defaults are the release's THUMOS-14 config without external classification scores."""

    pre_nms_threshold: float = 0.001  # candidates (point, class) with score ≤ this are dropped first
    pre_nms_topk: int = 2000  # then at most this many candidates per pyramid level, best first
    min_duration: float = 0.05  # decoded segments no longer than this (feature steps) are dropped
    nms_method: NmsMethod = NmsMethod.SOFT  # soft | hard | none
    iou_threshold: float = 0.1  # hard NMS: IoU at which a segment is suppressed (soft-NMS has no threshold)
    sigma: float = 0.5  # soft-NMS: score × exp(-IoU² / sigma) (the release's form, not exp(-IoU² / 2σ²))
    min_score: float = 0.001  # soft-NMS: a segment whose (decayed) score falls below this is dropped
    max_segments: int = 200  # per video (and per class inside multi-class NMS)
    multiclass: bool = True  # NMS within each class (False: across classes, as the release with external scores)
    voting_threshold: float = 0.0  # > 0: each kept segment becomes the score-weighted mean of the candidates
    # (same class when multiclass) with IoU ≥ this; the release votes in class-agnostic mode only (THUMOS: 0.7)

    def __post_init__(self):
        try:
            object.__setattr__(self, "nms_method", NmsMethod(self.nms_method))
        except ValueError:
            choices = ", ".join(m.value for m in NmsMethod)
            raise BadInputError(f"nms_method must be one of {choices}, got {self.nms_method!r}") from None
        for name in ("pre_nms_topk", "max_segments"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise BadInputError(f"{name} must be a positive integer, got {value!r}")
        for name in ("pre_nms_threshold", "min_score", "iou_threshold", "voting_threshold"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise BadInputError(f"{name} must be in [0, 1), got {value!r}")
        if not isinstance(self.sigma, int | float) or not self.sigma > 0:
            raise BadInputError(f"sigma must be > 0, got {self.sigma!r}")
        if not isinstance(self.min_duration, int | float) or not self.min_duration >= 0:
            raise BadInputError(f"min_duration must be ≥ 0, got {self.min_duration!r}")
        if not isinstance(self.multiclass, bool):
            raise BadInputError(f"multiclass must be true or false, got {self.multiclass!r}")


@dataclass
class Detections:
    """One video's detections, best first. Segments in feature steps (the model's grid, not seconds)."""

    segments: torch.Tensor  # (M, 2) float [start, end]
    scores: torch.Tensor  # (M,) float in (0, 1]
    labels: torch.Tensor  # (M,) long class index


def segment_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every segment of a (..., N, 2) with every segment of b (..., M, 2) → (..., N, M).

    Lengths get +1e-6, as in the release, so zero-length segments give 0 rather than 0/0.
    """
    inter = torch.minimum(a[..., :, None, 1], b[..., None, :, 1]) - torch.maximum(
        a[..., :, None, 0], b[..., None, :, 0]
    )
    inter = inter.clamp(min=0)
    len_a = (a[..., 1] - a[..., 0] + 1e-6)[..., :, None]
    len_b = (b[..., 1] - b[..., 0] + 1e-6)[..., None, :]
    return inter / (len_a + len_b - inter)


def decode_video(
    cls_logits: list[torch.Tensor],
    offsets: list[torch.Tensor],
    masks: list[torch.Tensor],
    points: list[torch.Tensor],
    config: PostprocessConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One video's candidates before NMS. Per level: cls_logits (T_l, K), offsets (T_l, 2), masks (T_l,),
    points (T_l, 4) (centre, range low, range high, stride). Returns segments (N, 2), scores (N,), labels (N,)."""
    all_segments, all_scores, all_labels = [], [], []
    for logits, offset, mask, point in zip(cls_logits, offsets, masks, points, strict=True):
        num_classes = logits.shape[-1]
        probs = (logits.float().sigmoid() * mask[:, None]).flatten()  # (T_l·K,), index = step·K + class
        candidates = (probs > config.pre_nms_threshold).nonzero().squeeze(1)
        scores, order = probs[candidates].sort(descending=True)
        scores, candidates = scores[: config.pre_nms_topk], candidates[order[: config.pre_nms_topk]]
        steps, labels = candidates // num_classes, candidates % num_classes
        centre, stride = point[steps, 0], point[steps, 3]
        distance = offset[steps].float() * stride[:, None]  # (N_l, 2) (left, right) in feature steps
        segments = torch.stack((centre - distance[:, 0], centre + distance[:, 1]), dim=-1)
        long_enough = segments[:, 1] - segments[:, 0] > config.min_duration
        all_segments.append(segments[long_enough])
        all_scores.append(scores[long_enough])
        all_labels.append(labels[long_enough])
    return torch.cat(all_segments), torch.cat(all_scores), torch.cat(all_labels)


def batched_nms(
    segments: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, config: PostprocessConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """NMS within each group (class, or one group for class-agnostic NMS).

    segments (N, 2), scores (N,), groups (N,) long. Returns the kept candidates' indices and their (decayed) scores,
    best first, at most `config.max_segments` per group. Greedy: the best remaining segment of each group is kept,
    the others of its group are decayed (soft) or dropped (hard), those below `min_score` leave; repeat.
    Unlike the release, a candidate starting below `min_score` is dropped even if it would be picked first.
    """
    device = segments.device
    keep = scores >= config.min_score
    segments, scores, groups, index = segments[keep], scores[keep], groups[keep], keep.nonzero().squeeze(1)
    if scores.numel() == 0:
        return index, scores
    # lay the candidates out as a (G, L) table, one row per group, padded with dead entries
    group_ids, row = groups.unique(return_inverse=True)
    order = torch.argsort(row, stable=True)
    row, segments, scores, index = row[order], segments[order], scores[order], index[order]
    counts = torch.bincount(row, minlength=len(group_ids))
    column = torch.arange(len(row), device=device) - (torch.cumsum(counts, 0) - counts)[row]  # rank within its row
    length = int(counts.max())
    table_scores = scores.new_zeros(len(group_ids), length)
    table_segments = segments.new_zeros(len(group_ids), length, 2)
    table_index = index.new_zeros(len(group_ids), length)
    alive = torch.zeros(len(group_ids), length, dtype=torch.bool, device=device)
    table_scores[row, column], table_segments[row, column], table_index[row, column] = scores, segments, index
    alive[row, column] = True

    rows = torch.arange(len(group_ids), device=device)
    kept_index, kept_scores = [], []
    for _ in range(min(length, config.max_segments)):
        best_score, best = table_scores.masked_fill(~alive, -1.0).max(dim=1)  # (G,)
        picked = alive[rows, best]
        if not picked.any():
            break
        kept_index.append(table_index[rows, best][picked])
        kept_scores.append(best_score[picked])
        alive[rows, best] = False
        if config.nms_method is NmsMethod.NONE:
            continue
        iou = segment_iou(table_segments[rows, best][:, None, :], table_segments).squeeze(1)  # (G, L)
        if config.nms_method is NmsMethod.SOFT:
            table_scores = table_scores * torch.exp(-(iou * iou) / config.sigma)
            alive &= table_scores >= config.min_score
        else:
            alive &= iou < config.iou_threshold
    kept_index, kept_scores = torch.cat(kept_index), torch.cat(kept_scores)
    order = kept_scores.argsort(descending=True)
    return kept_index[order], kept_scores[order]


def score_voting(
    kept_segments: torch.Tensor,
    kept_groups: torch.Tensor,
    segments: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """Each kept segment (M, 2) becomes the mean of the candidates (N, 2) of its group with IoU ≥ threshold,
    weighted by their scores before NMS (bounding-box voting). A kept segment is its own candidate, so the
    weights never all vanish."""
    iou = segment_iou(kept_segments, segments)  # (M, N)
    weights = (iou >= threshold) & (kept_groups[:, None] == groups[None, :])
    weights = weights.to(scores.dtype) * scores[None, :]
    return (weights @ segments) / weights.sum(dim=1, keepdim=True)


def postprocess_video(
    segments: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, config: PostprocessConfig
) -> Detections:
    """NMS (per class or across classes), optional voting, sort, cap: the candidates of one video → Detections."""
    groups = labels if config.multiclass else torch.zeros_like(labels)
    kept, kept_scores = batched_nms(segments, scores, groups, config)
    kept, kept_scores = kept[: config.max_segments], kept_scores[: config.max_segments]
    kept_segments = segments[kept]
    if config.voting_threshold > 0 and kept.numel() > 0:
        kept_segments = score_voting(kept_segments, groups[kept], segments, scores, groups, config.voting_threshold)
    return Detections(segments=kept_segments, scores=kept_scores, labels=labels[kept])
