"""The localizer memprofile can put on the backbone: what end-to-end TAL training adds to a step.

`--head NAME` runs a localizer of `localizers/` (its default configuration, 20 classes as THUMOS-14) on the
backbone's temporal features and backpropagates its real training loss on assigned targets, so its parameters,
gradients, optimizer state and activations are counted like the backbone's. Features are padded to the
localizer's multiple with a mask, as training pads them.

The targets are fixed (one action over the middle half of the sequence): memory depends on their shapes, which the
localizer's assignment fixes, not on their values. The assignment reads values, so it runs on real CPU tensors even
inside FakeTensorMode (`Localizer.targets` reads only the output's shapes); its result is copied onto the step's
device, which a fake run counts as a real one does, and what follows has fixed shapes.
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from re2tal_cli.localizers import LOCALIZERS, create_localizer

__all__ = ["HeadName", "LocalizerLoss", "create_head"]

THUMOS_CLASSES = 20

HeadName = enum.StrEnum("HeadName", {name.upper(): name for name in LOCALIZERS})


class LocalizerLoss(nn.Module):
    """Backbone features (B, C, T) → the localizer's training loss (a scalar) on fixed targets."""

    def __init__(self, name: str, in_channels: int, num_classes: int = THUMOS_CLASSES, config=None):
        super().__init__()
        self.localizer = create_localizer(name, in_channels, num_classes, config)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, _, length = features.shape
        padded = length + (-length) % self.localizer.pad_multiple
        features = F.pad(features, (0, padded - length))  # (B, C, padded)
        mask = (torch.arange(padded, device=features.device) < length).expand(batch, padded)
        out = self.localizer(features, mask)
        with unset_fake_temporarily():
            segments = [torch.tensor([[0.25 * length, 0.75 * length]])] * batch
            labels = [torch.zeros(1, dtype=torch.long)] * batch
            targets = self.localizer.targets(out, segments, labels)
        # copied onto the step's device (a real tensor's copy made under FakeTensorMode is fake)
        return self.localizer.loss_from_targets(out, *(t.to(features.device) for t in targets))["loss"]


def create_head(name: HeadName, in_channels: int) -> nn.Module:
    """The head `name` for a backbone of `in_channels` feature channels."""
    return LocalizerLoss(HeadName(name).value, in_channels)
