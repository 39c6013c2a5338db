"""The localizer memprofile can put on the backbone: what end-to-end TAL training adds to a step.

`--head actionformer` runs ActionFormer (the THUMOS-14 configuration of `localizers/`, 20 classes) on the backbone's
temporal features and backpropagates its real training loss — focal and DIoU on assigned targets — so its
parameters, gradients, optimizer state and activations are counted like the backbone's. Features are padded to the
pyramid's multiple with a mask, as training pads them.

The targets are fixed (one action over the middle half of the sequence): memory depends on their shapes, which the
assignment fixes at (B, points, classes), not on their values. The assignment reads values, so it runs on real CPU
tensors even inside FakeTensorMode; its result is copied per video onto the step's device, which a fake run counts
as a real one does, and what follows has fixed shapes.
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from re2tal_cli.localizers.actionformer import ActionFormer
from re2tal_cli.localizers.assignment import assign_targets, make_points
from re2tal_cli.localizers.config import ActionFormerConfig

__all__ = ["HeadName", "ActionFormerLoss", "create_head"]

THUMOS_CLASSES = 20


class HeadName(enum.StrEnum):
    ACTIONFORMER = "actionformer"  # ActionFormer, THUMOS-14 configuration (the localizer Re²TAL trains end to end)


class ActionFormerLoss(nn.Module):
    """Backbone features (B, C, T) → ActionFormer's training loss (a scalar) on fixed targets."""

    def __init__(self, in_channels: int, num_classes: int = THUMOS_CLASSES, config: ActionFormerConfig | None = None):
        super().__init__()
        self.localizer = ActionFormer(in_channels, num_classes, config)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, _, length = features.shape
        padded = length + (-length) % self.localizer.config.downsample_factor
        features = F.pad(features, (0, padded - length))  # (B, C, padded)
        mask = (torch.arange(padded, device=features.device) < length).expand(batch, padded)
        out = self.localizer(features, mask)
        # one copy per video, as a batch of targets is (a real tensor's copy made under FakeTensorMode is fake)
        cls_targets, reg_targets = (t.repeat(batch, 1, 1).to(features.device) for t in self._targets(padded, length))
        return self.localizer.loss_from_targets(out, cls_targets, reg_targets)["loss"]

    def _targets(self, padded: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets (1, P, K), (1, P, 2) of one action over the middle half of `length` valid steps, on the host."""
        config = self.localizer.config
        with unset_fake_temporarily():
            lengths = [padded // stride for stride in config.level_strides]
            points = torch.cat(make_points(lengths, config.regression_ranges))
            segments = torch.tensor([[0.25 * length, 0.75 * length]])
            labels = torch.zeros(1, dtype=torch.long)
            cls_targets, reg_targets = assign_targets(
                points, segments, labels, self.localizer.num_classes, config.center_sample_radius
            )
        return cls_targets[None], reg_targets[None]


def create_head(name: HeadName, in_channels: int) -> nn.Module:
    """The head `name` for a backbone of `in_channels` feature channels."""
    if name is HeadName.ACTIONFORMER:
        return ActionFormerLoss(in_channels)
    raise ValueError(f"unknown head {name!r}")
