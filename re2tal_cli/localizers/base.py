"""What a localizer is to the rest of re2tal: `train-tal`, `detect` and `memprofile --head` use only this.

    out = localizer(feats, mask)               feats (B, C, T), mask (B, T) bool; T a multiple of pad_multiple
    targets = localizer.targets(out, segments, labels)      on the host, from the output's shapes only
    losses = localizer.loss_from_targets(out, *targets)     {"loss": …, …}: fixed-shape tensor operations
    found = localizer.predict(out)             per video: Detections in feature steps, best first

Time is in feature steps on the grid ActionFormer's docstring defines (feature t centred at position t). `targets`
reads segments and labels, so it runs on real tensors; it may read the output's shapes and plain attributes but
not its tensors' values, which lets `re2tal memprofile` run it on real tensors beside a fake forward and count the
loss that follows as training computes it.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from re2tal_cli.errors import BadInputError, UnknownNameError
from re2tal_cli.localizers.postprocess import Detections, PostprocessConfig

__all__ = ["Localizer", "outputs_in_fp32", "pad_features"]


class Localizer(nn.Module):
    """Base of the localizers: input and target checks, the loss from targets, post-processing overrides.

    A subclass sets `config` (with `max_seq_len`, `pad_multiple` and `postprocess`) and implements `forward`,
    `targets`, `loss_from_targets` and `predict`; its output has `masks`, the valid steps: (B, T), or one (B, T_l)
    per pyramid level."""

    def __init__(self, in_channels: int, num_classes: int, config):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise BadInputError(f"{name} must be a positive integer, got {value!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.config = config

    @property
    def pad_multiple(self) -> int:
        """An input length T must be a multiple of this (pad with `pad_features`)."""
        return self.config.pad_multiple

    def training_batch(
        self, feats: torch.Tensor, mask: torch.Tensor, segments: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """A training batch as this localizer learns from it (VSGN stitches short videos); default: unchanged.
        Test-time transforms happen inside `forward` and `predict`."""
        return feats, mask, segments, labels

    def targets(self, out, segments: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def loss_from_targets(self, out, *targets: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, out, **overrides) -> list[Detections]:
        raise NotImplementedError

    def loss(self, out, segments: list[torch.Tensor], labels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training losses of a batch: segments[i] (N_i, 2) [start, end] in feature steps, labels[i] (N_i,) class
        indices in [0, K); N_i = 0 is a window without actions. Returns {"loss": the sum to backpropagate, and its
        parts}, scalar tensors."""
        first = out.masks[0] if isinstance(out.masks, list) else out.masks
        batch = first.shape[0]
        if len(segments) != batch or len(labels) != batch:
            raise BadInputError(f"got {len(segments)} segment and {len(labels)} label tensors for a batch of {batch}")
        for video_segments, video_labels in zip(segments, labels, strict=True):
            self.check_targets(video_segments, video_labels)
        device = first.device
        return self.loss_from_targets(out, *(t.to(device) for t in self.targets(out, segments, labels)))

    def postprocess_config(self, **overrides) -> PostprocessConfig:
        """`config.postprocess` with some fields replaced (validated; unknown names raise with a suggestion)."""
        known = {f.name for f in dataclasses.fields(PostprocessConfig)}
        for name in overrides:
            if name not in known:
                raise UnknownNameError("post-processing option", name, known)
        return dataclasses.replace(self.config.postprocess, **overrides)

    def check_input(self, feats: torch.Tensor, mask: torch.Tensor) -> None:
        if feats.ndim != 3 or feats.shape[1] != self.in_channels:
            raise BadInputError(f"expected features (B, {self.in_channels}, T), got {tuple(feats.shape)}")
        if mask.shape != (feats.shape[0], feats.shape[2]) or mask.dtype != torch.bool:
            raise BadInputError(
                f"expected a bool mask of shape {(feats.shape[0], feats.shape[2])}, got "
                f"{mask.dtype} {tuple(mask.shape)}"
            )
        multiple = self.pad_multiple
        if feats.shape[2] == 0 or feats.shape[2] % multiple:
            raise BadInputError(
                f"sequence length {feats.shape[2]} must be a positive multiple of {multiple} (the localizer's "
                f"coarsest stride); pad with pad_features(..., multiple={multiple})"
            )

    def check_targets(self, segments: torch.Tensor, labels: torch.Tensor) -> None:
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


def outputs_in_fp32(out):
    """A localizer's output (a dataclass) with its floating tensors, alone or in lists, in fp32: losses and
    post-processing run in fp32 after an autocast forward."""

    def fp32(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.float()
        if isinstance(value, list):
            return [fp32(v) for v in value]
        return value

    return dataclasses.replace(out, **{f.name: fp32(getattr(out, f.name)) for f in dataclasses.fields(out)})


def pad_features(
    feats: list[torch.Tensor], multiple: int, max_length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch sequences (C, T_i) → features (B, C, T) zero-padded at the end, and mask (B, T) (True = valid step).

    T is the longest T_i rounded up to `multiple` (pass the localizer's `pad_multiple`). With `max_length`, every
    batch gets the same T = max_length rounded up to `multiple` (fixed shapes, as the releases train with
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
