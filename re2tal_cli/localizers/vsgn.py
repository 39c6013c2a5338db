"""VSGN (Zhao, Thabet, Ghanem, ICCV 2021): video self-stitching and a cross-scale graph pyramid, anchor-based.

    feats (B, C, T), mask (B, T)        [eval: short videos stitched with a magnified copy, vsgn_stitch.py]
      → stem: conv k3, stride stem_stride, ReLU
      → xGPN encoder: num_levels × xGN (temporal conv k3 ∥ k-NN edge graph conv, summed, ReLU, max-pool ×2)
      → xGPN decoder: coarsest level conv, then per finer level lateral conv + transposed conv (×2), summed, conv
      → per level: classification / regression towers (conv k3 + GroupNorm + ReLU) on |anchor_scales| anchors
         per step: class logits and (centre, log-length) offsets → stage-1 proposals
      → stage 2: each proposal's start and end read on the finest level at b - len/β, b, b + len/β → offsets
      → start / end / actionness logits per input step (finest level interpolated to T)
    loss:    stage-1 anchors matched by IoU (host) → balanced CE or focal + GIoU; stage-2 proposals matched by
             IoU in the graph → GIoU; balanced BCE on start / end / actionness
    predict: class probability × start × end score at the refined boundaries → magnified copies mapped back →
             soft-NMS (postprocess.py)

Grid: as ActionFormer (feature t centred at position t). A step of a level of stride s sits at position i·s, so an
anchor there is [i·s - scale·s/2, i·s + scale·s/2]. Segments given to `loss` and returned by `predict` are in
feature steps of the input (not of the stitched window). Padded steps are never read: convolutions zero their
inputs, the graph skips them, GroupNorm's statistics and the max-pool ignore them, so outputs at valid steps do not
depend on how much padding follows.

Cross-scale edges: in a stitched window (its magnified part is the valid run after a masked gap, see
`vsgn_stitch.magnified_part`), each step takes k - k//2 neighbours from its own part and k//2 from the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from re2tal_cli.localizers.base import Localizer
from re2tal_cli.localizers.blocks import MaskedConv1d, masked
from re2tal_cli.localizers.graph import knn_indices, neighbour_features
from re2tal_cli.localizers.losses import sigmoid_focal_loss
from re2tal_cli.localizers.postprocess import Detections, postprocess_video, segment_iou
from re2tal_cli.localizers.vsgn_config import VSGNConfig
from re2tal_cli.localizers.vsgn_stitch import (
    Stitch,
    magnified_part,
    plan_stitch,
    prefix_lengths,
    stitch_sequence,
    stitch_training_batch,
)

__all__ = [
    "VSGN",
    "EdgeGraphConv",
    "VSGNOutput",
    "balanced_bce_loss",
    "boundary_targets",
    "cross_scale_neighbours",
    "decode_offsets",
    "giou_loss_1d",
    "make_anchors",
    "match_segments",
]

REGRESSION_WEIGHTS = (10.0, 5.0)  # the release divides the (centre, log-length) offsets by these before decoding
MAX_LOG_LENGTH_RATIO = math.log(1000.0 / 16)  # the release's clamp of the log-length offset (no exp overflow)


@dataclass
class VSGNOutput:
    """What `VSGN.forward` returns; anchors A = Σ_l T_l · |anchor_scales|, ordered (level, step, scale)."""

    cls_logits: torch.Tensor  # (B, A, K + 1) with background first (balanced_ce) or (B, A, K) (focal)
    proposals: torch.Tensor  # (B, A, 2) stage 1: [start, end] decoded from the anchors, feature steps
    refined: torch.Tensor  # (B, A, 2) stage 2: the proposals' boundaries adjusted
    boundary_logits: torch.Tensor  # (B, 3, T) start / end / actionness per input step
    masks: list[torch.Tensor]  # (B, T_l) bool per level, True = valid step
    input_mask: torch.Tensor  # (B, T) the mask the pyramid saw (a stitched window's gap is masked)
    stitches: list[Stitch | None] = field(default_factory=list)  # eval: per video, the copy `forward` stitched


# --- anchors, decoding, matching ------------------------------------------------------------------------------


def make_anchors(
    lengths: list[int], strides: tuple[int, ...], scales: tuple[float, ...], device: torch.device | str | None = None
) -> torch.Tensor:
    """(A, 2) [start, end] of every anchor: level l (T_l steps, stride s_l), step i, scale c → centre i·s_l,
    length c·s_l; ordered (level, step, scale)."""
    anchors = []
    for length, stride in zip(lengths, strides, strict=True):
        centre = torch.arange(length, device=device, dtype=torch.float32)[:, None] * stride  # (T_l, 1)
        half = torch.tensor(scales, device=device, dtype=torch.float32)[None, :] * (stride / 2)  # (1, S)
        anchors.append(torch.stack((centre - half, centre + half), dim=-1).reshape(-1, 2))
    return torch.cat(anchors)


def decode_offsets(offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """offsets (..., A, 2) (centre shift, log-length ratio, both scaled by REGRESSION_WEIGHTS), anchors (A, 2)
    → segments (..., A, 2): centre + shift · length, length · exp(ratio)."""
    length = anchors[:, 1] - anchors[:, 0]
    centre = 0.5 * (anchors[:, 0] + anchors[:, 1]) + offsets[..., 0] / REGRESSION_WEIGHTS[0] * length
    new_length = length * torch.exp((offsets[..., 1] / REGRESSION_WEIGHTS[1]).clamp(max=MAX_LOG_LENGTH_RATIO))
    return torch.stack((centre - 0.5 * new_length, centre + 0.5 * new_length), dim=-1)


def match_segments(
    candidates: torch.Tensor,
    segments: torch.Tensor,
    segment_valid: torch.Tensor,
    candidate_valid: torch.Tensor,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's matcher, in fixed shapes. candidates (B, A, 2), segments (B, G, 2) with segment_valid (B, G),
    candidate_valid (B, A) → positive (B, A) bool and the matched segment's index (B, A).

    A candidate is positive when its best IoU is ≥ threshold, or when it is (with ties) the best candidate of some
    segment (low-quality matches, so every segment gets a positive); it is matched to its best segment."""
    iou = segment_iou(candidates, segments)  # (B, A, G)
    iou = iou.masked_fill(~segment_valid[:, None, :] | ~candidate_valid[:, :, None], -1.0)
    best, matched = iou.max(dim=2)
    per_segment_best = iou.max(dim=1, keepdim=True).values  # (B, 1, G)
    low_quality = ((iou == per_segment_best) & (per_segment_best > 0)).any(dim=2)
    return ((best >= threshold) | low_quality) & candidate_valid, matched


def giou_loss_1d(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - generalised IoU of segments (N, 2) and (N, 2) → (N,); a predicted segment's ends are sorted first."""
    pred, target = pred.float(), target.float()
    low, high = torch.minimum(pred[:, 0], pred[:, 1]), torch.maximum(pred[:, 0], pred[:, 1])
    intersection = (torch.minimum(high, target[:, 1]) - torch.maximum(low, target[:, 0])).clamp(min=0)
    union = (high - low) + (target[:, 1] - target[:, 0]) - intersection + eps
    enclosing = torch.maximum(high, target[:, 1]) - torch.minimum(low, target[:, 0]) + eps
    return 1.0 - (intersection / union - (enclosing - union) / enclosing)


def boundary_targets(segments: torch.Tensor, segment_valid: torch.Tensor, length: int, width: float) -> torch.Tensor:
    """segments (B, G, 2), segment_valid (B, G) → (B, 3, length) start / end / actionness targets: per step t, the
    largest fraction of its cell [t - 0.5, t + 0.5] covered by a start region [s ± width/2], an end region
    [e ± width/2], or a segment [s, e] (the release's intersection over anchor)."""
    cells = torch.arange(length, dtype=segments.dtype, device=segments.device)[None, :, None]  # (1, T, 1)

    def coverage(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:  # (B, G) each → (B, T)
        covered = torch.minimum(cells + 0.5, high[:, None, :]) - torch.maximum(cells - 0.5, low[:, None, :])
        covered = covered.clamp(min=0).masked_fill(~segment_valid[:, None, :], 0.0)
        return covered.amax(dim=2) if segments.shape[1] else covered.new_zeros(covered.shape[:2])

    start, end = segments[..., 0], segments[..., 1]
    return torch.stack(
        (
            coverage(start - width / 2, start + width / 2),
            coverage(end - width / 2, end + width / 2),
            coverage(start, end),
        ),
        dim=1,
    )


def balanced_bce_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, threshold: float):
    """The release's balanced BCE over the valid entries of a batch: targets > threshold are positives; with both
    positives and negatives present each side weighs half (weights 0.5·N/N_pos and 0.5·N/N_neg), else a plain
    mean. logits, targets, valid of one shape → a scalar."""
    positive = (targets > threshold) & valid
    negative = valid & ~positive
    num_positive, num_negative = positive.sum(), negative.sum()
    total = (num_positive + num_negative).clamp(min=1)
    both = (num_positive > 0) & (num_negative > 0)
    weight_positive = torch.where(both, 0.5 * total / num_positive.clamp(min=1), 1.0)
    weight_negative = torch.where(both, 0.5 * total / num_negative.clamp(min=1), 1.0)
    weights = torch.where(positive, weight_positive, torch.where(negative, weight_negative, 0.0))
    bce = F.binary_cross_entropy_with_logits(logits.float(), positive.float(), reduction="none")
    return (weights * bce).sum() / total


def _sample(values: torch.Tensor, positions: torch.Tensor, last: int) -> torch.Tensor:
    """values (T,) read at float positions clamped to [0, last], linearly interpolated."""
    positions = positions.clamp(0, last)
    low = positions.floor().long()
    high = (low + 1).clamp(max=last)
    weight = positions - low
    return values[low] * (1 - weight) + values[high] * weight


# --- layers ---------------------------------------------------------------------------------------------------


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm of (B, C, T) whose statistics use the valid steps only (so padding cannot shift them)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, channels, length = x.shape
        grouped = x.float().reshape(batch, self.num_groups, channels // self.num_groups, length)
        weight = mask[:, None, None, :].to(grouped.dtype)
        count = (weight.sum(dim=(2, 3), keepdim=True) * grouped.shape[2]).clamp(min=1)
        mean = (grouped * weight).sum(dim=(2, 3), keepdim=True) / count
        var = (((grouped - mean) * weight) ** 2).sum(dim=(2, 3), keepdim=True) / count
        normed = ((grouped - mean) / torch.sqrt(var + self.eps)).reshape(batch, channels, length).to(x.dtype)
        return masked(normed * self.weight[:, None] + self.bias[:, None], mask)


class EdgeGraphConv(nn.Module):
    """Edge graph convolution: y_i = max over i's neighbours j of Linear(concat(x_j, x_i)).

    The Linear splits into a neighbour half and a centre half, so the neighbour half is applied once per step and
    gathered (B, D, T, k) instead of the concatenation (B, 2D, T, k)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """x (B, D, T), neighbours (B, T, k) indices → (B, D, T)."""
        dim = x.shape[1]
        from_neighbour = torch.einsum("oc,bct->bot", self.linear.weight[:, :dim], x)
        from_centre = torch.einsum("oc,bct->bot", self.linear.weight[:, dim:], x) + self.linear.bias[:, None]
        return neighbour_features(from_neighbour, neighbours).amax(dim=3) + from_centre


def cross_scale_neighbours(x: torch.Tensor, k: int, mask: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """(B, T, k) neighbour indices in feature space. part (B, T) marks the magnified copy of a stitched window:
    where a window has one, each step takes its k - k//2 nearest in its own part (itself first) and the k//2
    nearest in the other part; elsewhere its k nearest valid steps."""
    nearest_original = knn_indices(x, k, mask & ~part)  # unstitched windows: the plain k-NN
    nearest_magnified = knn_indices(x, k, mask & part)
    in_copy = part[:, :, None]
    own = torch.where(in_copy, nearest_magnified, nearest_original)
    other = torch.where(in_copy, nearest_original, nearest_magnified)
    across = k // 2
    mixed = torch.cat((own[:, :, : k - across], other[:, :, :across]), dim=2)
    return torch.where(part.any(dim=1)[:, None, None], mixed, nearest_original)


class CrossScaleGraphLevel(nn.Module):
    """One xGN level: temporal conv k3 ∥ edge graph conv on the k-NN graph, summed, ReLU, max-pool k3 s2."""

    def __init__(self, dim: int, num_neighbours: int, use_graph: bool):
        super().__init__()
        self.num_neighbours = num_neighbours
        self.temporal = MaskedConv1d(dim, dim, 3)
        self.graph = EdgeGraphConv(dim) if use_graph else None

    def forward(self, x, mask, part):
        """x (B, D, T) zero at padded steps, mask and part (B, T) → the same, T / 2 steps."""
        y, _ = self.temporal(x, mask)
        if self.graph is not None:
            y = y + self.graph(x, cross_scale_neighbours(x, self.num_neighbours, mask, part))
        # after the ReLU valid steps are ≥ 0, so the zeros at padded steps never win the max
        pooled = F.max_pool1d(masked(torch.relu(y), mask), 3, stride=2, padding=1)
        out_mask = mask[:, ::2]
        return masked(pooled, out_mask), out_mask, part[:, ::2]


class PyramidDecoder(nn.Module):
    """xGPN's decoder: the coarsest level through a conv, then each finer level = conv(lateral conv(encoder level)
    + transposed conv ×2 (decoder level above)), every conv followed by ReLU."""

    def __init__(self, dim: int, num_levels: int):
        super().__init__()
        self.transit = MaskedConv1d(dim, dim, 3)
        self.laterals = nn.ModuleList(MaskedConv1d(dim, dim, 3) for _ in range(num_levels - 1))
        self.upsample = nn.ModuleList(
            nn.ConvTranspose1d(dim, dim, 3, stride=2, padding=1, output_padding=1) for _ in range(num_levels - 1)
        )
        self.fuse = nn.ModuleList(MaskedConv1d(dim, dim, 3) for _ in range(num_levels - 1))

    def forward(self, feats: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        x = torch.relu(self.transit(feats[-1], masks[-1])[0])
        out = [x]
        for level in range(len(feats) - 2, -1, -1):
            lateral = torch.relu(self.laterals[level](feats[level], masks[level])[0])
            up = torch.relu(self.upsample[level](masked(x, masks[level + 1])))
            x = torch.relu(self.fuse[level](lateral + up, masks[level])[0])
            out.insert(0, x)
        return out


class AnchorTower(nn.Module):
    """num_layers × (conv k3 → GroupNorm → ReLU), then an output conv k3; shared by all levels."""

    def __init__(self, dim: int, out_channels: int, num_layers: int, groups: int):
        super().__init__()
        self.convs = nn.ModuleList(MaskedConv1d(dim, dim, 3, bias=False) for _ in range(num_layers))
        self.norms = nn.ModuleList(MaskedGroupNorm(groups, dim) for _ in range(num_layers))
        self.output = MaskedConv1d(dim, out_channels, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = torch.relu(norm(conv(x, mask)[0], mask))
        return self.output(x, mask)[0]


class BoundaryAdjustment(nn.Module):
    """Stage 2: a start (end) offset per proposal from the finest level read at three steps around its start
    (end): b - len/β, b, b + len/β, through conv k3 (no padding: one output) → ReLU → conv 1×1."""

    def __init__(self, dim: int, stride: int, ratio: float):
        super().__init__()
        self.stride, self.ratio = stride, ratio
        self.start = nn.Sequential(nn.Conv1d(dim, dim, 3), nn.ReLU(), nn.Conv1d(dim, 1, 1))
        self.end = nn.Sequential(nn.Conv1d(dim, dim, 3), nn.ReLU(), nn.Conv1d(dim, 1, 1))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        """feats (B, D, T_0), mask (B, T_0), proposals (B, A, 2) → refined (B, A, 2)."""
        batch, dim, length = feats.shape
        anchors = proposals.shape[1]
        # the last valid step: steps past it are read as it (padding-independent, as the release's clamp to the
        # window when nothing is padded)
        last_valid = (mask.long() * torch.arange(length, device=mask.device)).amax(dim=1)[:, None, None]
        spread = (proposals[..., 1] - proposals[..., 0]).detach().clamp(min=0) / self.ratio  # (B, A)

        def read(boundary: torch.Tensor) -> torch.Tensor:  # (B, A) → (B·A, D, 3)
            positions = torch.stack((boundary - spread, boundary, boundary + spread), dim=-1).detach()
            steps = torch.minimum((positions / self.stride).round().clamp(min=0).long(), last_valid)
            gathered = feats.gather(2, steps.reshape(batch, 1, anchors * 3).expand(batch, dim, anchors * 3))
            return gathered.reshape(batch, dim, anchors, 3).transpose(1, 2).reshape(batch * anchors, dim, 3)

        start = self.start(read(proposals[..., 0])).reshape(batch, anchors)
        end = self.end(read(proposals[..., 1])).reshape(batch, anchors)
        return torch.stack((proposals[..., 0] + start, proposals[..., 1] + end), dim=-1)


class BoundaryScores(nn.Module):
    """Start, end and actionness logits per input step: three branches conv k3 → ReLU → conv 1×1 on the finest
    level interpolated to the input's steps."""

    def __init__(self, dim: int):
        super().__init__()
        self.hidden = nn.ModuleList(MaskedConv1d(dim, dim, 3) for _ in range(3))
        self.output = nn.ModuleList(MaskedConv1d(dim, 1, 1) for _ in range(3))

    def forward(self, feats: torch.Tensor, stride: int, mask: torch.Tensor) -> torch.Tensor:
        """feats (B, D, T_0) of a level of `stride`, mask (B, T) → (B, 3, T)."""
        length = mask.shape[1]
        position = torch.arange(length, device=feats.device, dtype=torch.float32) / stride  # step i sits at i·s
        low = position.floor().long()
        weight = (position - low).to(feats.dtype)
        padded = F.pad(feats, (0, 1))  # past the last step reads zero, as a padded step would
        x = padded[..., low] * (1 - weight) + padded[..., low + 1] * weight
        return torch.cat(
            [
                out(torch.relu(hidden(x, mask)[0]), mask)[0]
                for hidden, out in zip(self.hidden, self.output, strict=True)
            ],
            dim=1,
        )


# --- the localizer --------------------------------------------------------------------------------------------


class VSGN(Localizer):
    """VSGN on pre-computed (or end-to-end computed) features (B, C, T); see the module docstring."""

    def __init__(self, in_channels: int, num_classes: int, config: VSGNConfig | None = None):
        super().__init__(in_channels, num_classes, config or VSGNConfig())
        config = self.config
        dim, num_scales = config.embed_dim, len(config.anchor_scales)
        self.background_class = config.cls_loss == "balanced_ce"
        self.num_logits = num_classes + 1 if self.background_class else num_classes
        self.stem = MaskedConv1d(in_channels, dim, 3, stride=config.stem_stride)
        self.encoder = nn.ModuleList(
            CrossScaleGraphLevel(dim, config.num_neighbours, config.use_graph) for _ in range(config.num_levels)
        )
        self.decoder = PyramidDecoder(dim, config.num_levels)
        self.cls_tower = AnchorTower(dim, num_scales * self.num_logits, config.head_num_layers, config.head_groups)
        self.reg_tower = AnchorTower(dim, num_scales * 2, config.head_num_layers, config.head_groups)
        self.boundary_adjustment = BoundaryAdjustment(dim, config.level_strides[0], config.boundary_ratio)
        self.boundary_scores = BoundaryScores(dim)
        # EMAs of positives per batch (stage 1, stage 2), the GIoU and focal normalisers; buffers so that
        # checkpoints resume with them
        self.register_buffer("loss_normalizer", torch.tensor(float(config.init_loss_normalizer)))
        self.register_buffer("refine_loss_normalizer", torch.tensor(float(config.init_loss_normalizer)))

    def training_batch(self, feats, mask, segments, labels):
        """Self-stitching: every short window gets its magnified copy, with the copy's segments."""
        if not self.config.self_stitching:
            return feats, mask, segments, labels
        return stitch_training_batch(feats, mask, segments, labels, self.config.stitch_ratio, self.config.stitch_gap)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> VSGNOutput:
        """feats (B, C, T), mask (B, T) bool; T a multiple of `pad_multiple`. In eval mode with self-stitching, short
        videos (padding at the end) are stitched into a window of max(T, max_seq_len) steps, recorded in
        `stitches`; in training mode nothing is read on the host (`training_batch` stitched already)."""
        self.check_input(feats, mask)
        stitches: list[Stitch | None] = []
        if not self.training and self.config.self_stitching:
            feats, mask, stitches = self._stitch_for_test(feats, mask)
        config = self.config
        x, level_mask = self.stem(feats, mask)
        x = torch.relu(x)
        part = magnified_part(mask)[:, :: config.stem_stride]
        encoded, masks = [], []
        for level in self.encoder:
            x, level_mask, part = level(x, level_mask, part)
            encoded.append(x)
            masks.append(level_mask)
        decoded = self.decoder(encoded, masks)

        batch = feats.shape[0]
        cls_logits = torch.cat(
            [
                self.cls_tower(x, m).transpose(1, 2).reshape(batch, -1, self.num_logits)
                for x, m in zip(decoded, masks, strict=True)
            ],
            dim=1,
        )
        offsets = torch.cat(
            [self.reg_tower(x, m).transpose(1, 2).reshape(batch, -1, 2) for x, m in zip(decoded, masks, strict=True)],
            dim=1,
        )
        anchors = make_anchors([m.shape[1] for m in masks], config.level_strides, config.anchor_scales, feats.device)
        proposals = decode_offsets(offsets.float(), anchors)
        refined = self.boundary_adjustment(decoded[0], masks[0], proposals.to(decoded[0].dtype))
        return VSGNOutput(
            cls_logits=cls_logits,
            proposals=proposals,
            refined=refined,
            boundary_logits=self.boundary_scores(decoded[0], config.level_strides[0], mask),
            masks=masks,
            input_mask=mask,
            stitches=stitches,
        )

    def _stitch_for_test(self, feats, mask):
        config = self.config
        window = max(feats.shape[2], config.max_seq_len)
        stitches = [
            plan_stitch(n, window, config.stitch_ratio, config.stitch_gap) if n is not None else None
            for n in prefix_lengths(mask)
        ]
        if not any(stitches):
            return feats, mask, [None] * len(stitches)
        feats = F.pad(feats, (0, window - feats.shape[2]))
        mask = F.pad(mask, (0, window - mask.shape[1]))
        for b, stitch in enumerate(stitches):
            if stitch is not None:
                feats[b], mask[b] = stitch_sequence(feats[b], stitch, window)
        return feats, mask, stitches

    def anchor_mask(self, out: VSGNOutput) -> torch.Tensor:
        """(B, A) bool: anchors at valid steps."""
        num_scales = len(self.config.anchor_scales)
        return torch.cat([m.repeat_interleave(num_scales, dim=1) for m in out.masks], dim=1)

    def targets(
        self, out: VSGNOutput, segments: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> tuple[torch.Tensor, ...]:
        """On the host, from the output's shapes: stage-1 class targets (B, A) long (0 = background, else class + 1),
        their matched segments (B, A, 2), start / end / actionness targets (B, 3, T), and the segments padded to
        (B, G, 2) with their validity (B, G) for the stage-2 matching inside the loss."""
        config = self.config
        batch = len(segments)
        most = max([1] + [len(s) for s in segments])
        padded = torch.zeros(batch, most, 2)
        padded_labels = torch.zeros(batch, most, dtype=torch.long)
        valid = torch.zeros(batch, most, dtype=torch.bool)
        for b, (video_segments, video_labels) in enumerate(zip(segments, labels, strict=True)):
            padded[b, : len(video_segments)] = video_segments.detach().cpu().float()
            padded_labels[b, : len(video_labels)] = video_labels.cpu().long()
            valid[b, : len(video_segments)] = True
        anchors = make_anchors([m.shape[1] for m in out.masks], config.level_strides, config.anchor_scales)
        all_anchors = torch.ones(batch, anchors.shape[0], dtype=torch.bool)
        positive, matched = match_segments(
            anchors.expand(batch, -1, -1), padded, valid, all_anchors, config.iou_threshold
        )
        cls_targets = torch.where(positive, padded_labels.gather(1, matched) + 1, 0)
        reg_targets = padded.gather(1, matched[..., None].expand(-1, -1, 2))
        score_targets = boundary_targets(padded, valid, out.input_mask.shape[1], config.boundary_width)
        return cls_targets, reg_targets, score_targets, padded, valid

    def loss_from_targets(
        self,
        out: VSGNOutput,
        cls_targets: torch.Tensor,
        reg_targets: torch.Tensor,
        score_targets: torch.Tensor,
        segments: torch.Tensor,
        segment_valid: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """`loss` given the targets of `targets`: fixed-shape tensor operations only (runs under FakeTensorMode).
        The stage-2 matching of proposals to segments happens here, in the graph, as it depends on the
        proposals."""
        config = self.config
        valid = self.anchor_mask(out)  # (B, A)
        positive = valid & (cls_targets > 0)
        with torch.no_grad():
            refine_positive, matched = match_segments(
                out.proposals.detach().float(), segments, segment_valid, valid, config.refine_iou_threshold
            )
        if self.training:
            with torch.no_grad():
                m = config.loss_normalizer_momentum
                self.loss_normalizer.mul_(m).add_((1 - m) * positive.sum().clamp(min=1))
                self.refine_loss_normalizer.mul_(m).add_((1 - m) * refine_positive.sum().clamp(min=1))

        logits = out.cls_logits.float()
        if self.background_class:
            cross_entropy = F.cross_entropy(logits.flatten(0, 1), cls_targets.flatten(), reduction="none")
            cross_entropy = cross_entropy.reshape(cls_targets.shape)
            negative = valid & (cls_targets == 0)
            cls_loss = torch.where(positive, cross_entropy, 0.0).sum() / positive.sum().clamp(min=1) + torch.where(
                negative, cross_entropy, 0.0
            ).sum() / negative.sum().clamp(min=1)
        else:
            one_hot = F.one_hot(cls_targets, self.num_classes + 1)[..., 1:].float()
            focal = sigmoid_focal_loss(logits, one_hot, config.focal_alpha, config.focal_gamma)
            cls_loss = torch.where(valid[..., None], focal, 0.0).sum() / self.loss_normalizer

        reg_loss = _masked_giou(out.proposals, reg_targets, positive).sum() / self.loss_normalizer
        refine_targets = segments.gather(1, matched[..., None].expand(-1, -1, 2))
        refine_loss = _masked_giou(out.refined, refine_targets, refine_positive).sum() / self.refine_loss_normalizer
        score_logits = out.boundary_logits.float()
        boundary_loss = sum(
            balanced_bce_loss(score_logits[:, i], score_targets[:, i], out.input_mask, config.boundary_pos_threshold)
            for i in range(3)
        )
        return {
            "loss": cls_loss + reg_loss + refine_loss + boundary_loss,
            "cls_loss": cls_loss,
            "reg_loss": reg_loss,
            "refine_loss": refine_loss,
            "boundary_loss": boundary_loss,
            "num_positives": positive.sum(),
        }

    @torch.no_grad()
    def predict(self, out: VSGNOutput, **overrides) -> list[Detections]:
        """Per video: Detections (segments (M, 2) in feature steps of the input, scores, labels), best first.
        Score = class probability × start score × end score at the refined boundaries; candidates above
        `pre_nms_threshold`, at most `pre_nms_topk` of all anchors, longer than `min_duration`; those of a
        magnified copy mapped back to the original times; then NMS. Keyword arguments override fields of
        `config.postprocess` for this call."""
        config = self.postprocess_config(**overrides)
        logits = out.cls_logits.float()
        probs = logits.softmax(-1)[..., 1:] if self.background_class else logits.sigmoid()  # (B, A, K)
        boundary = out.boundary_logits.float().sigmoid()
        valid = self.anchor_mask(out)
        detections = []
        for b in range(probs.shape[0]):
            last = int(out.input_mask[b].nonzero().max()) if out.input_mask[b].any() else 0
            refined = out.refined[b].float()
            refined = torch.stack((refined.amin(dim=1), refined.amax(dim=1)), dim=1)
            agreement = _sample(boundary[b, 0], refined[:, 0], last) * _sample(boundary[b, 1], refined[:, 1], last)
            scores = (probs[b] * (agreement * valid[b])[:, None]).flatten()
            candidates = (scores > config.pre_nms_threshold).nonzero().squeeze(1)
            kept_scores, order = scores[candidates].sort(descending=True)
            kept_scores, candidates = kept_scores[: config.pre_nms_topk], candidates[order[: config.pre_nms_topk]]
            anchor, label = candidates // self.num_classes, candidates % self.num_classes
            segments = refined[anchor]
            stitch = out.stitches[b] if out.stitches else None
            if stitch is not None:
                in_copy = segments.mean(dim=1, keepdim=True) > stitch.length - 0.5
                segments = torch.where(in_copy, stitch.to_original(segments), segments)
            long_enough = segments[:, 1] - segments[:, 0] > config.min_duration
            detections.append(
                postprocess_video(segments[long_enough], kept_scores[long_enough], label[long_enough], config)
            )
        return detections


def _masked_giou(pred: torch.Tensor, target: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """GIoU loss of (B, A, 2) segments where `chosen` (B, A), zero elsewhere; unchosen terms compare a dummy
    [0, 1] with itself so no 0/0 enters the graph."""
    dummy = torch.tensor([0.0, 1.0], device=pred.device)
    pick = chosen[..., None]
    loss = giou_loss_1d(
        torch.where(pick, pred.float(), dummy).flatten(0, 1), torch.where(pick, target, dummy).flatten(0, 1)
    )
    return torch.where(chosen.flatten(), loss, 0.0)
