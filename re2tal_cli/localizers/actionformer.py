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

from dataclasses import dataclass

import torch

from re2tal_cli.localizers.assignment import assign_targets, make_points
from re2tal_cli.localizers.base import Localizer
from re2tal_cli.localizers.config import ActionFormerConfig
from re2tal_cli.localizers.encoder import ConvTransformerEncoder
from re2tal_cli.localizers.heads import ClassificationHead, RegressionHead
from re2tal_cli.localizers.losses import detection_losses
from re2tal_cli.localizers.neck import IdentityNeck
from re2tal_cli.localizers.postprocess import Detections, decode_video, postprocess_video

__all__ = ["ActionFormer", "ActionFormerOutput"]


@dataclass
class ActionFormerOutput:
    """What `ActionFormer.forward` returns; one list entry per pyramid level l (T_l = T / 2^l)."""

    cls_logits: list[torch.Tensor]  # (B, T_l, K) per-class logits (independent sigmoids, no background class)
    offsets: list[torch.Tensor]  # (B, T_l, 2) distances (left, right) ≥ 0 to the segment's ends, in stride units
    masks: list[torch.Tensor]  # (B, T_l) bool, True = valid step
    points: list[torch.Tensor]  # (T_l, 4) per step: position (feature steps), regression range low, high, stride


class ActionFormer(Localizer):
    """ActionFormer on pre-computed (or end-to-end computed) features (B, C, T); see the module docstring."""

    def __init__(self, in_channels: int, num_classes: int, config: ActionFormerConfig | None = None):
        super().__init__(in_channels, num_classes, config or ActionFormerConfig())
        config = self.config
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

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> ActionFormerOutput:
        """feats (B, C, T) float, mask (B, T) bool (True = valid step; padding anywhere is ignored, usually at the
        end). T must be a multiple of `config.downsample_factor` (2^(levels-1)): pad with `pad_features`."""
        self.check_input(feats, mask)
        level_feats, level_masks = self.encoder(feats, mask)
        level_feats = self.neck(level_feats)
        points = make_points([m.shape[1] for m in level_masks], self.config.regression_ranges, feats.device)
        return ActionFormerOutput(
            cls_logits=self.cls_head(level_feats, level_masks),
            offsets=self.reg_head(level_feats, level_masks),
            masks=level_masks,
            points=points,
        )

    def targets(
        self, out: ActionFormerOutput, segments: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Label assignment of a batch (`Localizer.loss`'s arguments), on the host: class targets (B, P, K) and
        offsets (B, P, 2) of every point of every level (`assignment.py`), points made again from the levels'
        lengths (the output's shapes)."""
        points = torch.cat(make_points([m.shape[1] for m in out.masks], self.config.regression_ranges))  # (P, 4)
        cls_targets, reg_targets = [], []
        for video_segments, video_labels in zip(segments, labels, strict=True):
            cls_t, reg_t = assign_targets(
                points,
                video_segments.detach().cpu().float(),
                video_labels.cpu(),
                self.num_classes,
                self.config.center_sample_radius,
            )
            cls_targets.append(cls_t)
            reg_targets.append(reg_t)
        return torch.stack(cls_targets), torch.stack(reg_targets)  # (B, P, K), (B, P, 2)

    def loss_from_targets(self, out: ActionFormerOutput, cls_targets: torch.Tensor, reg_targets: torch.Tensor) -> dict:
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
    def predict(self, out: ActionFormerOutput, **overrides) -> list[Detections]:
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
