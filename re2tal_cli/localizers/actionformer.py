"""ActionFormer (Zhang, Wu, Li, ECCV 2022): the single-stage localizer Re²TAL trains end to end.

    feats (B, C, T), mask (B, T)
      → ConvTransformerEncoder: a pyramid of L levels (B, D, T / 2^l)           encoder.py, blocks.py
      → IdentityNeck: LayerNorm per level                                          neck.py
      → ClassificationHead (B, T_l, K) logits, RegressionHead (B, T_l, 2) offsets  heads.py
    loss:    points' targets (assignment.py) → focal + DIoU / EMA of positives     losses.py
    predict: decode, soft-NMS, voting                                              postprocess.py

Coordinate convention (the release's feature grid). Time is measured in *feature steps*: feature t of the input
sequence is centred at position t, so it covers [t - 0.5, t + 0.5] and the sequence spans [-0.5, T - 0.5]. A
point of level l, index i, sits at position i·2^l (the centre of input step i·2^l, not of the 2^l steps it pools).
Segments given to `loss` and returned by `predict` are [start, end] positions on this grid; a segment [2.0, 5.5]
starts at the centre of step 2 and ends halfway between the centres of steps 5 and 6. For features whose step t
comes from a clip of `window` frames starting at frame t·`stride`, the release converts with
seconds = (position · stride + window / 2) / fps, i.e. position t is the clip's middle frame. Regression offsets
(left, right) ≥ 0 are distances from the point to the segment's start and end in units of the point's stride:
segment = [i·2^l - left·2^l, i·2^l + right·2^l]. `predict` does not clip segments to the video: do it in seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from re2tal_cli.errors import BadInputError, UnknownNameError
from re2tal_cli.localizers.assignment import assign_targets, make_points
from re2tal_cli.localizers.config import ActionFormerConfig
from re2tal_cli.localizers.encoder import ConvTransformerEncoder
from re2tal_cli.localizers.heads import ClassificationHead, RegressionHead
from re2tal_cli.localizers.losses import detection_losses
from re2tal_cli.localizers.neck import IdentityNeck
from re2tal_cli.localizers.postprocess import Detections, PostprocessConfig, decode_video, postprocess_video

__all__ = ["ActionFormer", "LocalizerOutput", "pad_features"]


@dataclass
class LocalizerOutput:
    """What `ActionFormer.forward` returns; one list entry per pyramid level l (T_l = T / 2^l)."""

    cls_logits: list[torch.Tensor]  # (B, T_l, K) per-class logits (independent sigmoids, no background class)
    offsets: list[torch.Tensor]  # (B, T_l, 2) distances (left, right) ≥ 0 to the segment's ends, in stride units
    masks: list[torch.Tensor]  # (B, T_l) bool, True = valid step
    points: list[torch.Tensor]  # (T_l, 4) per step: position (feature steps), regression range low, high, stride


class ActionFormer(nn.Module):
    """ActionFormer on pre-computed (or end-to-end computed) features (B, C, T); see the module docstring."""

    def __init__(self, in_channels: int, num_classes: int, config: ActionFormerConfig | None = None):
        super().__init__()
        config = config or ActionFormerConfig()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels <= 0:
            raise BadInputError(f"in_channels must be a positive integer, got {in_channels!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
            raise BadInputError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.config = config
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.encoder = ConvTransformerEncoder(in_channels, config)
        self.neck = IdentityNeck(config.num_levels, config.embed_dim, config.neck_layer_norm)
        head_shape = dict(
            kernel_size=config.head_kernel_size, num_layers=config.head_num_layers, layer_norm=config.head_layer_norm
        )
        self.cls_head = ClassificationHead(
            config.embed_dim, config.head_dim, num_classes, prior_prob=config.cls_prior_prob, **head_shape
        )
        self.reg_head = RegressionHead(config.embed_dim, config.head_dim, config.num_levels, **head_shape)
        # EMA of positives per batch, the loss normaliser; a buffer so checkpoints resume with it
        self.register_buffer("loss_normalizer", torch.tensor(float(config.init_loss_normalizer)))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> LocalizerOutput:
        """feats (B, C, T) float, mask (B, T) bool (True = valid step; padding anywhere is ignored, usually at the
        end). T must be a multiple of `config.downsample_factor` (2^(levels-1)): pad with `pad_features`."""
        self._check_input(feats, mask)
        level_feats, level_masks = self.encoder(feats, mask)
        level_feats = self.neck(level_feats)
        points = make_points([m.shape[1] for m in level_masks], self.config.regression_ranges, feats.device)
        return LocalizerOutput(
            cls_logits=self.cls_head(level_feats, level_masks),
            offsets=self.reg_head(level_feats, level_masks),
            masks=level_masks,
            points=points,
        )

    def loss(
        self, out: LocalizerOutput, segments: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Training losses of a batch.

        segments[i]: (N_i, 2) float [start, end] in feature steps (module docstring); labels[i]: (N_i,) long in
        [0, K). N_i = 0 is a window without actions. Returns {"loss": cls_loss + reg_loss_weight·reg_loss (to
        backprop), "cls_loss", "reg_loss", "num_positives"}, all scalar tensors. In training mode each call first
        moves the normaliser (EMA of positives) toward this batch's count; in eval mode it is used as is.
        """
        return self.loss_from_targets(out, *self.targets(out, segments, labels))

    def targets(
        self, out: LocalizerOutput, segments: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Label assignment of a batch (arguments as `loss`): class targets (B, P, K) and offsets (B, P, 2) of every
        point of every level (`assignment.py`). Checks the targets' values, so it reads them on the host."""
        batch = out.masks[0].shape[0]
        if len(segments) != batch or len(labels) != batch:
            raise BadInputError(f"got {len(segments)} segment and {len(labels)} label tensors for a batch of {batch}")
        points = torch.cat(out.points)  # (P, 4)
        cls_targets, reg_targets = [], []
        for video_segments, video_labels in zip(segments, labels, strict=True):
            self._check_targets(video_segments, video_labels)
            cls_t, reg_t = assign_targets(
                points,
                video_segments.to(points.device),
                video_labels.to(points.device),
                self.num_classes,
                self.config.center_sample_radius,
            )
            cls_targets.append(cls_t)
            reg_targets.append(reg_t)
        return torch.stack(cls_targets), torch.stack(reg_targets)  # (B, P, K), (B, P, 2)

    def loss_from_targets(self, out: LocalizerOutput, cls_targets: torch.Tensor, reg_targets: torch.Tensor) -> dict:
        """`loss` given the targets of `targets`: tensor operations of fixed shapes only (no host synchronisation,
        and it runs under FakeTensorMode, which is how `re2tal memprofile` counts the localizer's memory)."""
        valid = torch.cat(out.masks, dim=1)  # (B, P)
        if self.training:
            with torch.no_grad():
                positive_count = (valid & (cls_targets.sum(-1) > 0)).sum()
                m = self.config.loss_normalizer_momentum
                self.loss_normalizer.mul_(m).add_((1 - m) * positive_count.clamp(min=1))
        cls_loss, reg_loss, num_positives = detection_losses(
            torch.cat(out.cls_logits, dim=1),
            torch.cat(out.offsets, dim=1),
            valid,
            cls_targets,
            reg_targets,
            self.loss_normalizer,
            focal_alpha=self.config.focal_alpha,
            focal_gamma=self.config.focal_gamma,
            label_smoothing=self.config.label_smoothing,
        )
        return {
            "loss": cls_loss + self.config.reg_loss_weight * reg_loss,
            "cls_loss": cls_loss,
            "reg_loss": reg_loss,
            "num_positives": num_positives,
        }

    @torch.no_grad()
    def predict(self, out: LocalizerOutput, **overrides) -> list[Detections]:
        """Per video: Detections (segments (M, 2) in feature steps, scores (M,), labels (M,)), best first, after
        NMS. Keyword arguments override fields of `config.postprocess` for this call (e.g. `nms_method="hard"`)."""
        config = self.postprocess_config(**overrides)
        detections = []
        for b in range(out.masks[0].shape[0]):
            candidates = decode_video(
                [x[b] for x in out.cls_logits],
                [x[b] for x in out.offsets],
                [m[b] for m in out.masks],
                out.points,
                config,
            )
            detections.append(postprocess_video(*candidates, config))
        return detections

    def postprocess_config(self, **overrides) -> PostprocessConfig:
        """`config.postprocess` with some fields replaced (validated; unknown names raise with a suggestion)."""
        known = {f.name for f in dataclasses.fields(PostprocessConfig)}
        for name in overrides:
            if name not in known:
                raise UnknownNameError("post-processing option", name, known)
        return dataclasses.replace(self.config.postprocess, **overrides)

    def _check_input(self, feats: torch.Tensor, mask: torch.Tensor) -> None:
        if feats.ndim != 3 or feats.shape[1] != self.in_channels:
            raise BadInputError(f"expected features (B, {self.in_channels}, T), got {tuple(feats.shape)}")
        if mask.shape != (feats.shape[0], feats.shape[2]) or mask.dtype != torch.bool:
            raise BadInputError(
                f"expected a bool mask of shape {(feats.shape[0], feats.shape[2])}, got "
                f"{mask.dtype} {tuple(mask.shape)}"
            )
        factor = self.config.downsample_factor
        if feats.shape[2] == 0 or feats.shape[2] % factor:
            raise BadInputError(
                f"sequence length {feats.shape[2]} must be a positive multiple of {factor} (2^num_branch_blocks); "
                f"pad with pad_features(..., multiple={factor})"
            )

    def _check_targets(self, segments: torch.Tensor, labels: torch.Tensor) -> None:
        """Shapes, label range and segment order; run on the tensors as given (usually CPU: no device sync)."""
        if segments.ndim != 2 or segments.shape[1] != 2 or labels.shape != (segments.shape[0],):
            raise BadInputError(
                f"expected segments (N, 2) and labels (N,), got {tuple(segments.shape)} and {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise BadInputError(f"labels must be integer class indices, got {labels.dtype}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise BadInputError(f"labels must be in [0, {self.num_classes}), got {sorted(set(labels.tolist()))}")
        if (segments[:, 1] < segments[:, 0]).any():
            raise BadInputError(f"segments must be [start, end] with start ≤ end, got {segments.tolist()}")


def pad_features(
    feats: list[torch.Tensor], multiple: int, max_length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch sequences (C, T_i) → features (B, C, T) zero-padded at the end, and mask (B, T) (True = valid step).

    T is the longest T_i rounded up to `multiple` (pass `config.downsample_factor`). With `max_length`, every batch
    gets the same T = max_length rounded up to `multiple` (fixed shapes, as the release trains with
    `max_seq_len`), and a longer sequence raises BadInputError: crop it first.
    """
    if not feats:
        raise BadInputError("pad_features needs at least one sequence")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple <= 0:
        raise BadInputError(f"multiple must be a positive integer, got {multiple!r}")
    channels = {x.shape[0] for x in feats}
    if any(x.ndim != 2 for x in feats) or len(channels) != 1:
        raise BadInputError(f"expected sequences (C, T_i) with one C, got {[tuple(x.shape) for x in feats]}")
    lengths = [x.shape[1] for x in feats]
    longest = max(lengths)
    if max_length is not None:
        if longest > max_length:
            raise BadInputError(f"a sequence has {longest} steps, more than max_length {max_length}: crop it")
        longest = max_length
    total = -(-max(longest, 1) // multiple) * multiple
    padded = torch.stack([F.pad(x, (0, total - x.shape[1])) for x in feats])
    steps = torch.arange(total, device=padded.device)
    mask = steps[None, :] < torch.tensor(lengths, device=padded.device)[:, None]
    return padded, mask
