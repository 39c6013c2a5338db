"""Temporal action localization: a localizer on a feature sequence, fed by a video backbone (end to end, or frozen)
or by extracted features — the three arms of Re²TAL's comparison share everything else.

    frames (B, 3, T, H, W) → backbone.temporal_features → (B, C, T / s) [→ resampled] → localizer
    features (B, C, N) ──────────────────────────────────────────────────────────────→ localizer

`losses` takes a batch of either kind and returns the localizer's losses; `detect_video` turns one whole
video into detections in seconds. Time axes and the grid are in `train/data.py`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from re2tal_cli.data.datasets import VideoEntry
from re2tal_cli.localizers.base import Localizer, outputs_in_fp32, pad_features
from re2tal_cli.models.base import InputSpec, VideoBackbone
from re2tal_cli.train.data import Grid, feature_mask, frames_grid, resample, resample_mask, segments_on
from re2tal_cli.train.loop import autocast_for


class TALModel(nn.Module):
    """A localizer, with the backbone that computes its features from frames (None: it reads features)."""

    def __init__(
        self,
        localizer: Localizer,
        backbone: VideoBackbone | None = None,
        input_spec: InputSpec | None = None,
        frozen: bool = False,
        feature_length: int | None = None,
    ):
        super().__init__()
        self.localizer = localizer
        self.backbone = backbone
        self.input_spec = input_spec  # the backbone's normalisation (mean, std)
        self.frozen = frozen
        self.feature_length = feature_length
        if backbone is not None and frozen:
            backbone.requires_grad_(False)
        for part in ("head", "fc_norm"):  # the backbone's classifier (ViT's with its norm): features never reach it
            classifier = getattr(backbone, part, None)
            if classifier is not None:
                classifier.requires_grad_(False)  # so neither the optimizer nor DDP waits for its gradients

    @property
    def unit(self) -> int:
        """Input frames per position of the coarsest pyramid level: a training window's length divides by it."""
        return self.backbone.temporal_stride * self.localizer.pad_multiple

    def train(self, mode: bool = True) -> TALModel:
        super().train(mode)
        if self.backbone is not None and self.frozen:  # a frozen backbone is a fixed feature extractor
            self.backbone.eval()
        return self

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) → (B, C, T / s), resampled to `feature_length` if set."""
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            feats = self.backbone.temporal_features(video)
        return feats if self.feature_length is None else resample(feats, self.feature_length)

    def localizer_inputs(self, batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, ...]:
        """A batch (frames or features) → (feats (B, C, T), mask (B, T), segments, labels) on the grid."""
        if self.backbone is None:
            segments = [s.to(device) for s in batch["segments"]]
            return batch["feats"].to(device), batch["mask"].to(device), segments, batch["labels"]
        stride = self.backbone.temporal_stride
        feats = self.features(batch["video"].to(device, non_blocking=True))
        mask = feature_mask(batch["times"], stride)
        segments = []
        for times, seconds, fps, valid in zip(
            batch["times"], batch["segments"], batch["fps"], mask.sum(1), strict=True
        ):
            grid = frames_grid(times.double(), float(fps), stride, int(valid))
            if self.feature_length is not None:
                grid = grid.resampled(mask.shape[1], self.feature_length)
            segments.append(segments_on(grid, seconds, feats.shape[-1])[0])
        if self.feature_length is not None:
            mask = resample_mask(mask, self.feature_length)
        return feats, mask.to(device), segments, batch["labels"]


def losses(model: TALModel, batch: dict[str, Any], device: torch.device, autocast) -> dict[str, torch.Tensor]:
    """The localizer's losses on a batch; the forward under `autocast`, the losses in fp32."""
    with autocast():
        feats, mask, segments, labels = model.localizer_inputs(batch, device)
        feats, mask, segments, labels = model.localizer.training_batch(feats, mask, segments, labels)
        out = model.localizer(feats, mask)
    return model.localizer.loss(outputs_in_fp32(out), segments, labels)


@dataclass(frozen=True)
class FramesInput:
    """How a whole video's frames reach the backbone at test time (the training recipe's data section)."""

    sampling: str  # "window": consecutive windows of num_frames covering the video; "uniform": num_frames over it
    num_frames: int
    frame_stride: int
    size: int


@torch.no_grad()
def detect_video(
    model: TALModel,
    entry: VideoEntry,
    *,
    source=None,
    frames: FramesInput | None = None,
    features: dict[str, Any] | None = None,
    device: torch.device,
    amp: str = "none",
    **postprocess,
) -> list[dict[str, Any]]:
    """One video's detections in seconds, best first ({"segment": [s, e], "score", "label": class index}).

    Frames (`source`, a video source, and `frames`): the whole video through the backbone in windows of
    `num_frames` (or `num_frames` evenly, uniform), as `re2tal extract --mode frames` computes it; features
    (`features`, an item of `FeatureDataset`): the sequence as it is. `postprocess` overrides fields of the
    localizer's post-processing (threshold, top-k, NMS)."""
    if features is not None:
        feats, grid = features["feats"], features["grid"]
    else:
        feats, grid = _whole_video_features(model, source, frames, device, amp)
    padded, mask = pad_features([feats.to(device)], model.localizer.pad_multiple)
    model.localizer.eval()
    with autocast_for(device, amp)():
        out = model.localizer(padded, mask)
    (found,) = model.localizer.predict(outputs_in_fp32(out), **postprocess)
    seconds = grid.seconds(found.segments.cpu().double()).clamp(0.0, entry.duration)
    return [
        {"segment": [round(s, 3), round(e, 3)], "score": score, "label": label}
        for (s, e), score, label in zip(seconds.tolist(), found.scores.tolist(), found.labels.tolist(), strict=True)
        if e > s
    ]


def _whole_video_features(model: TALModel, source, frames: FramesInput, device, amp: str) -> tuple[torch.Tensor, Grid]:
    from re2tal_cli.extract import ExtractSettings, features_of_video, resolve_settings

    uniform = frames.sampling == "uniform"
    settings = ExtractSettings(
        mode="frames",
        frame_step=frames.frame_stride,
        num_frames=frames.num_frames if uniform else None,
        window=frames.num_frames,
        size=frames.size,
        batch=1,
        device=str(device),
        amp=amp != "none",
    )
    backbone = model.backbone.eval()
    r = features_of_video(source, backbone, resolve_settings(settings, backbone, model.input_spec), settings,
                          model.input_spec)  # fmt: skip
    feats, times = r["feats"], r["times"].double()
    grid = Grid(float(times[0]), float(r["stride"]) / source.fps)
    if model.feature_length is not None:
        per_window = frames.num_frames // backbone.temporal_stride
        length = max(1, math.ceil(feats.shape[1] * model.feature_length / per_window))
        grid, feats = grid.resampled(feats.shape[1], length), resample(feats, length)
    return feats, grid


def fuse_external_scores(
    detections: list[dict[str, Any]], scores: list[float], classes: list[str], topk: int, fusion: str
) -> list[dict[str, Any]]:
    """Class-agnostic detections × the video's `topk` best external classes (ActivityNet): each detection becomes
    `topk`, labelled with those classes, scored sqrt(class score × score) (ActionFormer) or their product (OpenTAD)."""
    order = sorted(range(len(scores)), key=lambda k: -scores[k])[:topk]
    fused = []
    for k in order:
        for d in detections:
            product = scores[k] * d["score"]
            fused.append({**d, "label": classes[k], "score": math.sqrt(product) if fusion == "sqrt" else product})
    return sorted(fused, key=lambda d: -d["score"])


def with_class_names(detections: list[dict[str, Any]], classes: list[str]) -> list[dict[str, Any]]:
    return [{**d, "label": classes[d["label"]]} for d in detections]
