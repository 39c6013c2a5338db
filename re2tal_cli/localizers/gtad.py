"""G-TAD (Xu, Zhao, Rojas, Thabet, Ghanem, CVPR 2020): sub-graph localization on a graph of snippets, in plain torch.

    feats (B, C, T), mask (B, T)
      → input conv (k3, grouped) → GCNeXt ─┬→ GCNeXt → start logits (B, T); GCNeXt → end logits (B, T)
                                           └→ GCNeXt → SGAlign: per anchor (start s, duration d ≤ D), features
                                              sampled over the extended anchor, and their semantic neighbours' mean
      → 1×1 convs on the anchor map (B, ·, D, T) → IoU logits (B, 2, D, T): regression and classification maps
    loss:    boundary balanced BCE + 10 × balanced L2 on the regression map + balanced BCE on the classification map
    predict: anchors at boundary peaks, score = classification · regression → soft-NMS (postprocess.py)

GCNeXt: a temporal branch (1×1 → grouped k3 → 1×1) and a semantic branch (an edge convolution over each step's k
nearest steps in feature space, `graph.py`, recomputed from the block's input: concat(neighbour, step) → 1×1 →
grouped 1×1 → 1×1, max over the k), summed with the identity, ReLU.

Anchors, on the feature grid of `actionformer.py` (feature t centred at position t): anchor (s, d) covers steps
s … s + d - 1, i.e. the segment [s - 0.5, s + d - 0.5]; it exists where those steps are valid. The start head at
step t scores a boundary at t - 0.5 (the step's left edge), the end head a boundary at t + 0.5 (its right edge), so
anchor (s, d) pairs start[s] with end[s + d - 1]. The maps are indexed [duration - 1, start] as in the release.

SGAlign samples both the features (`inner_samples` points) and the mean of each step's k semantic neighbours
(`context_samples` points) over the anchor extended by `anchor_extension` × its length on each side, as the release
does for both. Each sample point is the mean of linear interpolations at ceil(extended length / samples) points
spread evenly over its bin (the release's Align1D with sampling ratio 0). All anchors of one duration share their
sample offsets from s, so the whole alignment is one convolution with a fixed interpolation kernel per (sample,
duration): no compiled extension, and memory linear in T.

Where this differs from the release, and why:
- The sequence is extended by zeros on both sides for interpolation (the release clamps within one step of the
  ends, zero beyond): with padded steps zeroed, padding at the end then changes no valid output.
- Anchors are whole steps [s - 0.5, s + d - 0.5] for sampling, targets and detections; the release samples
  [s, s + d - 1] (centre to centre) and labels [s, s + d] in its own normalised units.
- Boundary targets are centred on the boundary (the release's are half a step late, inherited from BMN).
- Balanced L2 keeps only anchors of the IoU bins it samples from; the release's sampling mask also keeps every
  other anchor whenever the high-IoU bin outnumbers a lower one.
- Losses are computed from logits (BCE with logits) and guard empty classes instead of dividing by zero.

Classes (re2tal's extension). G-TAD is class-agnostic: with num_classes == 1 this is the release (ActivityNet recipes
use one class and external video-level scores). With K > 1 classes, one more 1×1 conv on the anchor map's last
hidden features gives K class logits per anchor, trained by softmax cross-entropy on the anchors whose best IoU
with a ground truth is at least `class_iou_threshold` (that ground truth's class); a detection's score is the
proposal score × the class probability, one candidate per (anchor, class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from re2tal_cli.errors import BadInputError
from re2tal_cli.localizers.base import Localizer
from re2tal_cli.localizers.graph import knn_indices, neighbour_features
from re2tal_cli.localizers.gtad_config import GTADConfig, ScoreFusion
from re2tal_cli.localizers.postprocess import Detections, postprocess_video, segment_iou

__all__ = [
    "GCNeXt",
    "GTAD",
    "GTADOutput",
    "anchor_mask",
    "anchor_segments",
    "balanced_bce",
    "balanced_l2",
    "sub_graph_align",
]

IOU_HIGH, IOU_LOW = 0.7, 0.3  # balanced L2: anchors sampled per IoU bin (0.7, 1], (0.3, 0.7], (0, 0.3]
IOU_POSITIVE = 0.9  # the classification map's positives: IoU above this


@dataclass
class GTADOutput:
    """What `GTAD.forward` returns."""

    start_logits: torch.Tensor  # (B, T) a start at the step's left edge
    end_logits: torch.Tensor  # (B, T) an end at the step's right edge
    iou_logits: torch.Tensor  # (B, 2, D, T) [0]: regression map, [1]: classification map; [d - 1, s] = anchor (s, d)
    class_logits: torch.Tensor | None  # (B, K, D, T) re2tal's class extension, None with one class
    masks: torch.Tensor  # (B, T) bool, True = valid step


class GCNeXt(nn.Module):
    """One GCNeXt block: identity + temporal branch + semantic (k-NN edge convolution) branch, ReLU. Padded steps
    are zeroed on the way in and out, and are nobody's neighbour."""

    def __init__(self, channels: int, width: int, groups: int, k: int):
        super().__init__()
        self.k = k
        self.temporal_in = nn.Conv1d(channels, width, 1)
        self.temporal_conv = nn.Conv1d(width, width, 3, padding=1, groups=groups)
        self.temporal_out = nn.Conv1d(width, channels, 1)
        self.semantic = nn.Sequential(
            nn.Conv2d(2 * channels, width, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, channels, 1),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = mask[:, None, :].to(x.dtype)
        x = x * valid
        return F.relu(x + self.temporal_branch(x, valid) + self.semantic_branch(x, mask)) * valid

    def temporal_branch(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, C, T) → (B, C, T): 1×1 → grouped k3 → 1×1, padded steps zeroed before the k3 conv reads them."""
        hidden = F.relu(self.temporal_in(x)) * valid
        return self.temporal_out(F.relu(self.temporal_conv(hidden)))

    def semantic_branch(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, T) → (B, C, T): max over each step's k nearest steps of the edge MLP on concat(neighbour, step)."""
        neighbours = neighbour_features(x, knn_indices(x, self.k, mask))  # (B, C, T, k)
        edges = torch.cat((neighbours, x[..., None].expand_as(neighbours)), dim=1)  # (B, 2C, T, k)
        return self.semantic(edges).amax(dim=-1)


def _align_kernel(
    max_duration: int, samples: int, extension: float, device: torch.device
) -> tuple[torch.Tensor, int, int]:
    """SGAlign's interpolation kernel: weight (samples · D, 1, W) float64, row k·D + (d - 1) giving sample k of
    anchors of duration d as weights on offsets -left … right from the anchor's start step. Shape-only (runs on
    fake tensors)."""
    left = -math.floor(-0.5 - extension * max_duration)
    right = math.floor(-0.5 + max_duration * (1 + extension)) + 1
    width = left + right + 1
    duration = torch.arange(1, max_duration + 1, device=device, dtype=torch.float64)[:, None, None]  # (D, 1, 1)
    length = duration * (1 + 2 * extension)
    bin_size = length / samples
    grid = torch.ceil(bin_size)  # interpolations averaged per sample (the release's ceil(length / samples))
    most = math.ceil(max_duration * (1 + 2 * extension) / samples)
    step = torch.arange(samples, device=device, dtype=torch.float64)[None, :, None]  # (1, S, 1)
    point = torch.arange(most, device=device, dtype=torch.float64)[None, None, :]  # (1, 1, G)
    position = -0.5 - extension * duration + step * bin_size + (point + 0.5) * bin_size / grid  # (D, S, G)
    weight = (point < grid) / grid  # unused points of short anchors weigh 0
    low = torch.floor(position)
    fraction = position - low
    index = (low.long() + left).clamp(0, width - 2)  # unused points may fall outside; their weight is 0
    kernel = torch.zeros(max_duration, samples, width, device=device, dtype=torch.float64)
    kernel.scatter_add_(2, index, (1 - fraction) * weight)
    kernel.scatter_add_(2, index + 1, fraction * weight)
    return kernel.transpose(0, 1).reshape(samples * max_duration, 1, width), left, right


def sub_graph_align(feats: torch.Tensor, max_duration: int, samples: int, extension: float) -> torch.Tensor:
    """SGAlign on (B, C, T) → (B, C · samples, D, T): channel c · samples + k at [d - 1, s] is sample k of channel c
    over anchor (s, d) = [s - 0.5, s + d - 0.5] extended by `extension` × d on each side (module docstring). Steps
    outside [0, T) count as zeros."""
    batch, channels, length = feats.shape
    kernel, left, right = _align_kernel(max_duration, samples, extension, feats.device)
    padded = F.pad(feats, (left, right)).reshape(batch * channels, 1, length + left + right)
    aligned = F.conv1d(padded, kernel.to(feats.dtype))  # (B · C, samples · D, T)
    return aligned.reshape(batch, channels * samples, max_duration, length)


def anchor_segments(max_duration: int, length: int, device: torch.device | None = None) -> torch.Tensor:
    """(D, T, 2): [start, end] of anchor (s, d) at [d - 1, s], in feature steps: [s - 0.5, s + d - 0.5]."""
    start = torch.arange(length, device=device, dtype=torch.float32)[None, :] - 0.5
    duration = torch.arange(1, max_duration + 1, device=device, dtype=torch.float32)[:, None]
    return torch.stack(torch.broadcast_tensors(start, start + duration), dim=-1)


def anchor_mask(mask: torch.Tensor, max_duration: int) -> torch.Tensor:
    """Step mask (B, T) → anchor mask (B, D, T): anchor (s, d) is valid when its steps s … s + d - 1 all are.
    Fixed-shape operations only."""
    length = mask.shape[1]
    invalid_before = F.pad((~mask).long().cumsum(dim=1), (1, 0))  # (B, T + 1): invalid steps before each index
    start = torch.arange(length, device=mask.device)[None, :]
    end = start + torch.arange(1, max_duration + 1, device=mask.device)[:, None]  # (D, T) one past the last step
    inside = end <= length
    end = end.clamp(max=length).flatten()
    invalid = invalid_before[:, end].reshape(-1, max_duration, length) - invalid_before[:, None, :length]
    return inside & (invalid == 0)


def balanced_bce(logits: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BMN's weighted binary cross-entropy: half the mean over the valid positives plus half the mean over the valid
    negatives (the release's coefficients 0.5·N/P and 0.5·N/(N - P) on a mean over N entries); a side without
    entries contributes 0. In float32."""
    logits = logits.float()
    chosen_positive, chosen_negative = positive & valid, ~positive & valid
    on_positives = torch.where(chosen_positive, F.softplus(-logits), 0.0).sum()  # -log σ(x)
    on_negatives = torch.where(chosen_negative, F.softplus(logits), 0.0).sum()  # -log(1 - σ(x))
    return 0.5 * on_positives / chosen_positive.sum().clamp(min=1) + 0.5 * on_negatives / chosen_negative.sum().clamp(
        min=1
    )


def balanced_l2(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, uniform: torch.Tensor):
    """BMN's balanced L2 on IoU: all valid anchors of IoU in (0.7, 1], and those of (0.3, 0.7] and of (0, 0.3] each
    kept with probability (high count / its count), through `uniform` (draws in [0, 1), the shape of the map);
    0.5 × the mean squared error over the kept anchors (0 if none). Anchors of IoU 0 never enter, as in the
    release."""
    high = valid & (target > IOU_HIGH)
    medium = valid & (target > IOU_LOW) & (target <= IOU_HIGH)
    low = valid & (target > 0) & (target <= IOU_LOW)
    num_high = high.sum()
    kept = high
    for part in (medium, low):
        ratio = num_high / part.sum().clamp(min=1)
        kept = kept | (part & (uniform > 1 - ratio))
    squared = (prediction.float() - target.float()) ** 2
    return 0.5 * torch.where(kept, squared, 0.0).sum() / kept.sum().clamp(min=1)


class GTAD(Localizer):
    """G-TAD on pre-computed (or end-to-end computed) features (B, C, T); see the module docstring."""

    def __init__(self, in_channels: int, num_classes: int, config: GTADConfig | None = None):
        super().__init__(in_channels, num_classes, config or GTADConfig())
        config = self.config
        if in_channels % config.input_groups:
            raise BadInputError(
                f"in_channels {in_channels} must be divisible by the G-TAD input_groups {config.input_groups}"
            )
        hidden = config.hidden_dim

        def block():
            return GCNeXt(hidden, config.block_width, config.block_groups, config.k)

        self.embed = nn.Conv1d(in_channels, hidden, 3, padding=1, groups=config.input_groups)
        self.block1, self.block2 = block(), block()
        self.start_block, self.end_block = block(), block()
        self.start_out, self.end_out = nn.Conv1d(hidden, 1, 1), nn.Conv1d(hidden, 1, 1)
        # the first 1×1 conv of the anchor map, split over the inner and context samples (one conv on their
        # concatenation, without building it)
        self.inner_proj = nn.Conv2d(hidden * config.inner_samples, config.map_dim, 1)
        self.context_proj = nn.Conv2d(hidden * config.context_samples, config.map_dim, 1, bias=False)
        width = config.map_hidden_dim
        self.map_trunk = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(config.map_dim, width, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1),
            nn.ReLU(inplace=True),
        )
        self.iou_out = nn.Conv2d(width, 2, 1)
        self.class_out = nn.Conv2d(width, num_classes, 1) if num_classes > 1 else None

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> GTADOutput:
        """feats (B, C, T) float, mask (B, T) bool (True = valid step; pad at the end, with `pad_features`)."""
        self.check_input(feats, mask)
        config = self.config
        x = F.relu(self.embed(feats * mask[:, None, :].to(feats.dtype)))
        base = self.block1(x, mask)
        start = self.start_out(self.start_block(base, mask))[:, 0]
        end = self.end_out(self.end_block(base, mask))[:, 0]
        top = self.block2(base, mask)
        context = neighbour_features(top, knn_indices(top, config.k, mask)).mean(dim=-1)
        context = context * mask[:, None, :].to(context.dtype)
        duration = min(config.duration, feats.shape[2])
        inner = sub_graph_align(top, duration, config.inner_samples, config.anchor_extension)
        around = sub_graph_align(context, duration, config.context_samples, config.anchor_extension)
        hidden = self.map_trunk(self.inner_proj(inner) + self.context_proj(around))
        return GTADOutput(
            start_logits=start,
            end_logits=end,
            iou_logits=self.iou_out(hidden),
            class_logits=self.class_out(hidden) if self.class_out is not None else None,
            masks=mask,
        )

    def targets(
        self, out: GTADOutput, segments: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """On the host, from the output's shapes: start and end targets (B, T) (1 where the step's boundary lies
        within `boundary_radius` of a ground truth's), the best IoU of every anchor with a ground truth (B, D, T),
        and its class (B, D, T), -1 where that IoU is below `class_iou_threshold` (or there is no ground truth)."""
        duration, length = out.iou_logits.shape[2], out.iou_logits.shape[3]
        anchors = anchor_segments(duration, length).reshape(-1, 2)
        radius = self.config.boundary_radius
        left_edges = torch.arange(length, dtype=torch.float32) - 0.5
        starts, ends, ious, classes = [], [], [], []
        for video_segments, video_labels in zip(segments, labels, strict=True):
            truth = video_segments.detach().cpu().float().clamp(-0.5, length - 0.5)
            if truth.shape[0] == 0:
                starts.append(torch.zeros(length))
                ends.append(torch.zeros(length))
                ious.append(torch.zeros(duration, length))
                classes.append(torch.full((duration, length), -1, dtype=torch.long))
                continue
            starts.append(((left_edges[:, None] - truth[None, :, 0]).abs() < radius).any(dim=1).float())
            ends.append(((left_edges[:, None] + 1 - truth[None, :, 1]).abs() < radius).any(dim=1).float())
            best, which = segment_iou(anchors, truth).max(dim=1)
            ious.append(best.reshape(duration, length))
            label = video_labels.cpu().long()[which]
            classes.append(torch.where(best >= self.config.class_iou_threshold, label, -1).reshape(duration, length))
        return torch.stack(starts), torch.stack(ends), torch.stack(ious), torch.stack(classes)

    def loss_from_targets(
        self,
        out: GTADOutput,
        start_targets: torch.Tensor,
        end_targets: torch.Tensor,
        iou_targets: torch.Tensor,
        class_targets: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """`loss` given the targets of `targets`: fixed-shape tensor operations only (runs under FakeTensorMode).
        The balanced L2 draws its anchor sample with `torch.rand` (the release's random sampling)."""
        steps = out.masks
        anchors = anchor_mask(steps, out.iou_logits.shape[2])
        iou_targets = torch.where(anchors, iou_targets.float(), 0.0)
        boundary_loss = balanced_bce(out.start_logits, start_targets > 0.5, steps) + balanced_bce(
            out.end_logits, end_targets > 0.5, steps
        )
        uniform = torch.rand(iou_targets.shape, device=iou_targets.device)
        iou_reg_loss = balanced_l2(out.iou_logits[:, 0].float().sigmoid(), iou_targets, anchors, uniform)
        iou_cls_loss = balanced_bce(out.iou_logits[:, 1], iou_targets > IOU_POSITIVE, anchors)
        losses = {
            "boundary_loss": boundary_loss,
            "iou_reg_loss": iou_reg_loss,
            "iou_cls_loss": iou_cls_loss,
        }
        total = boundary_loss + self.config.reg_loss_weight * iou_reg_loss + iou_cls_loss
        if out.class_logits is not None:
            trained = anchors & (class_targets >= 0)
            cross_entropy = F.cross_entropy(out.class_logits.float(), class_targets.clamp(min=0), reduction="none")
            losses["class_loss"] = torch.where(trained, cross_entropy, 0.0).sum() / trained.sum().clamp(min=1)
            total = total + losses["class_loss"]
        return {"loss": total, **losses}

    @torch.no_grad()
    def predict(self, out: GTADOutput, **overrides) -> list[Detections]:
        """Per video: Detections (segments (M, 2) in feature steps, scores (M,), labels (M,)), best first, after
        NMS. Keyword arguments override fields of `config.postprocess` for this call."""
        config = self.postprocess_config(**overrides)
        duration, length = out.iou_logits.shape[2], out.iou_logits.shape[3]
        anchors = anchor_mask(out.masks, duration)  # (B, D, T)
        segments = anchor_segments(duration, length, out.masks.device).reshape(-1, 2)
        steps = torch.arange(length, device=out.masks.device)
        end_step = (steps[None, :] + torch.arange(duration, device=steps.device)[:, None]).clamp(max=length - 1)
        detections = []
        for b in range(out.masks.shape[0]):
            valid = out.masks[b]
            start, end = out.start_logits[b].float().sigmoid(), out.end_logits[b].float().sigmoid()
            regression, classification = out.iou_logits[b].float().sigmoid()
            scores = regression * classification  # (D, T)
            if self.config.score_fusion is ScoreFusion.PRODUCT:
                scores = scores * start[None, :] * end[end_step]
                chosen = anchors[b]
            else:
                chosen = anchors[b] & _boundary_candidates(start, valid, first=True)[None, :]
                chosen &= _boundary_candidates(end, valid, first=False)[end_step]
            scores = torch.where(chosen, scores, 0.0).flatten()
            if out.class_logits is not None:
                probabilities = out.class_logits[b].float().softmax(dim=0).flatten(1)  # (K, D·T)
                scores = (scores[None, :] * probabilities).flatten()  # index = class · D·T + anchor
            detections.append(self._postprocess(scores, segments, config))
        return detections

    def _postprocess(self, scores: torch.Tensor, segments: torch.Tensor, config) -> Detections:
        """Candidates (class · anchors + anchor) → threshold, top-k, minimum length, NMS."""
        candidates = (scores > config.pre_nms_threshold).nonzero().squeeze(1)
        kept_scores, order = scores[candidates].sort(descending=True)
        candidates = candidates[order[: config.pre_nms_topk]]
        kept_scores = kept_scores[: config.pre_nms_topk]
        anchor, label = candidates % len(segments), candidates // len(segments)
        chosen = segments[anchor]
        long_enough = chosen[:, 1] - chosen[:, 0] > config.min_duration
        return postprocess_video(chosen[long_enough], kept_scores[long_enough], label[long_enough], config)


def _boundary_candidates(probability: torch.Tensor, valid: torch.Tensor, first: bool) -> torch.Tensor:
    """The release's (BMN's) boundary filter over one video's valid steps (T,) → (T,) bool: a strict local maximum,
    above half the maximum, or the first (start) / last (end) valid step."""
    masked = torch.where(valid, probability, -1.0)
    before = F.pad(masked[:-1], (1, 0), value=-1.0)
    after = F.pad(masked[1:], (0, 1), value=-1.0)
    candidate = ((masked > before) & (masked > after)) | (masked > 0.5 * masked.max())
    steps = torch.arange(len(valid), device=valid.device)
    edge = steps == (steps[valid].min() if first else steps[valid].max()) if valid.any() else torch.zeros_like(valid)
    return (candidate | edge) & valid
