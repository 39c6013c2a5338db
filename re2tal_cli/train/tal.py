"""Temporal action localization trained on frames: a video backbone and ActionFormer, end to end or with the
backbone frozen (Re²TAL's frames input, Fig. 4b).

    frames (B, 3, T, H, W) → backbone.temporal_features → (B, C, T / s) → ActionFormer → losses / detections

The same loop serves both arms of the comparison the paper makes: `freeze_backbone=True` trains the localizer on
the features a frozen backbone gives (run under `no_grad`, nothing of it kept for backward), `False` trains both.
Everything else — data, windows, augmentation, localizer, schedule — is shared, so a difference in mAP is the
difference end-to-end training makes.

Time axes. Training windows are `num_frames` consecutive frames every `frame_stride` frames at a random start;
feature t of a window covers its frames [t·s, (t+1)·s) (s: the backbone's temporal stride). On ActionFormer's grid
(localizers/actionformer.py) feature t is centred at position t, so a time τ in seconds maps to position
(τ - t₀)·fps / (s·frame_stride) - 1/2, t₀ being the time of the window's first frame. At test time the whole video
goes through the backbone in windows of `num_frames` and the localizer sees the whole sequence, as ActionFormer
does on THUMOS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from re2tal_cli.data.datasets import TALDataset, load_annotations, make_loader
from re2tal_cli.errors import BadInputError, NumericalError
from re2tal_cli.localizers.actionformer import ActionFormer, pad_features
from re2tal_cli.models.base import InputSpec, VideoBackbone

__all__ = ["TALTrainConfig", "TALModel", "train_tal", "predict_dataset", "EpochStats"]


@dataclass(frozen=True)
class TALTrainConfig:
    num_frames: int = 256  # frames per training window (and per backbone call at test time)
    frame_stride: int = 1  # take every frame_stride-th frame of the video
    size: int = 64  # frames are resized (short side) and centre-cropped to size × size
    windows_per_video: int = 1  # random windows drawn from each training video per epoch
    batch_size: int = 2
    epochs: int = 30
    warmup_epochs: float = 2.0  # linear warm-up, then cosine decay to 0 (ActionFormer's schedule)
    lr: float = 1e-3  # localizer learning rate (AdamW)
    backbone_lr: float = 1e-3  # backbone learning rate when trained end to end
    weight_decay: float = 0.05  # on weights of rank ≥ 2 only (not on norms, biases, scales)
    clip_grad: float = 1.0  # max gradient norm; 0 = no clipping
    freeze_backbone: bool = False  # True: the localizer learns on frozen backbone features
    seed: int = 0
    workers: int = 0  # DataLoader worker processes
    in_memory: bool = False  # keep decoded videos in memory (small sets, many epochs)

    def __post_init__(self):
        for name in ("num_frames", "frame_stride", "size", "windows_per_video", "batch_size", "epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadInputError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "backbone_lr"):
            if not getattr(self, name) > 0:
                raise BadInputError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_epochs", "weight_decay", "clip_grad"):
            if not getattr(self, name) >= 0:
                raise BadInputError(f"{name} must be ≥ 0, got {getattr(self, name)}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class TALModel(nn.Module):
    """A backbone followed by ActionFormer on its temporal features."""

    def __init__(
        self, backbone: VideoBackbone, localizer: ActionFormer, input_spec: InputSpec, freeze_backbone: bool = False
    ):
        super().__init__()
        self.backbone = backbone
        self.localizer = localizer
        self.input_spec = input_spec  # the backbone's normalisation (mean, std)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            backbone.requires_grad_(False)

    @property
    def unit(self) -> int:
        """Input frames per localizer position at the coarsest pyramid level: window lengths are multiples of it."""
        return self.backbone.temporal_stride * self.localizer.config.downsample_factor

    def train(self, mode: bool = True) -> TALModel:
        super().train(mode)
        if self.freeze_backbone:  # a frozen backbone is a fixed feature extractor: no dropout, no BN updates
            self.backbone.eval()
        return self

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) → (B, C, T / s)."""
        if self.freeze_backbone:
            with torch.no_grad():
                return self.backbone.temporal_features(video)
        return self.backbone.temporal_features(video)


@dataclass
class EpochStats:
    epoch: int
    loss: float
    cls_loss: float
    reg_loss: float
    lr: float
    steps: int


def _feature_mask(times: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, T) frame times → (B, T / stride) valid features: a window past the video's end repeats its last frame,
    and a feature made only of repeats is padding."""
    fresh = torch.ones_like(times, dtype=torch.bool)
    fresh[:, 1:] = times[:, 1:] > times[:, :-1]
    return fresh.unflatten(1, (-1, stride))[:, :, 0]


def seconds_to_positions(seconds: torch.Tensor, first_time: float, fps: float, frames_per_position: int):
    """Times in a window (seconds) → positions on the localizer's grid (module docstring)."""
    return (seconds - first_time) * fps / frames_per_position - 0.5


def positions_to_seconds(positions: torch.Tensor, first_time: float, fps: float, frames_per_position: int):
    return (positions + 0.5) * frames_per_position / fps + first_time


def param_groups(model: TALModel, config: TALTrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: backbone and localizer at their learning rates, weight decay only on weights of rank ≥ 2."""
    groups = []
    parts = [(model.localizer, config.lr)]
    if not model.freeze_backbone:
        parts.append((model.backbone, config.backbone_lr))
    for module, lr in parts:
        params = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups += [
            {"params": decay, "lr": lr, "base_lr": lr, "weight_decay": config.weight_decay},
            {"params": no_decay, "lr": lr, "base_lr": lr, "weight_decay": 0.0},
        ]
    return [g for g in groups if g["params"]]


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def training_set(root: str | Path, model: TALModel, config: TALTrainConfig, subset: str = "train", augment=None):
    spec = model.input_spec
    if config.num_frames % model.unit:
        raise BadInputError(
            f"num_frames {config.num_frames} must be a multiple of {model.unit} (the backbone's temporal stride × "
            f"the localizer's downsampling)"
        )
    return TALDataset(
        root,
        subset,
        num_frames=config.num_frames,
        sampling="window",
        stride=config.frame_stride,
        windows="random",
        size=config.size,
        augment=augment,
        mean=spec.mean,
        std=spec.std,
        seed=config.seed,
        windows_per_video=config.windows_per_video,
        in_memory=config.in_memory,
    )


def _targets(batch: dict[str, Any], frames_per_position: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    segments = []
    for segs, times, fps in zip(batch["segments"], batch["times"], batch["fps"], strict=True):
        segments.append(seconds_to_positions(segs, float(times[0]), float(fps), frames_per_position))
    return segments, list(batch["labels"])


def train_tal(
    model: TALModel,
    dataset: TALDataset,
    config: TALTrainConfig,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> Iterator[EpochStats]:
    """Train `model` on `dataset` (from `training_set`); yields each epoch's statistics (the caller evaluates,
    saves, stops). `on_step(step, total, losses)` is called after every optimizer step (progress bars)."""
    device = torch.device(device)
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, config))
    loader = make_loader(dataset, config.batch_size, shuffle=True, workers=config.workers, seed=config.seed)
    steps_per_epoch = len(loader)
    total = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    frames_per_position = model.backbone.temporal_stride * config.frame_stride
    step = 0
    for epoch in range(config.epochs):
        loader.sampler.set_epoch(epoch)
        model.train()
        sums = {"loss": 0.0, "cls_loss": 0.0, "reg_loss": 0.0}
        for batch in loader:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_factor(step, total, warmup)
            video = batch["video"].to(device, non_blocking=True)
            feats = model.features(video)  # (B, C, T / s)
            mask = _feature_mask(batch["times"], model.backbone.temporal_stride).to(device)
            segments, labels = _targets(batch, frames_per_position)
            losses = model.localizer.loss(model.localizer(feats, mask), segments, labels)
            if not torch.isfinite(losses["loss"]):
                raise NumericalError(f"epoch {epoch + 1}, step {step + 1}: the loss is {losses['loss'].item()}")
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if config.clip_grad:
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.clip_grad)
            optimizer.step()
            values = {k: losses[k].item() for k in sums}
            for k in sums:
                sums[k] += values[k]
            step += 1
            if on_step is not None:
                on_step(step, total, values)
        yield EpochStats(
            epoch=epoch + 1,
            **{k: v / steps_per_epoch for k, v in sums.items()},
            lr=optimizer.param_groups[0]["lr"],
            steps=steps_per_epoch,
        )


@torch.no_grad()
def video_features(model: TALModel, source, config: TALTrainConfig, device: torch.device) -> tuple[torch.Tensor, int]:
    """The whole video through the backbone, `num_frames` at a time: features (C, N) and the number of valid ones.

    The frame list is padded (last frame repeated) to a multiple of `model.unit` so the localizer's pyramid
    divides it; features made only of padding are the invalid tail."""
    from re2tal_cli.data.transforms import eval_transform, normalize, to_tensor

    spec = model.input_spec
    frames = np.arange(0, source.num_frames, config.frame_stride, dtype=np.int64)
    real = len(frames)
    frames = np.concatenate([frames, np.full((-real) % model.unit, frames[-1], dtype=np.int64)])
    outputs = []
    for start in range(0, len(frames), config.num_frames):
        x = to_tensor(source.read(frames[start : start + config.num_frames]))
        x = normalize(eval_transform(x, config.size), spec.mean, spec.std)
        outputs.append(model.backbone.temporal_features(x[None].to(device))[0].float())
    feats = torch.cat(outputs, dim=-1)  # (C, N)
    return feats, math.ceil(real / model.backbone.temporal_stride)


@torch.no_grad()
def predict_dataset(
    model: TALModel,
    root: str | Path,
    classes: list[str],
    config: TALTrainConfig,
    subset: str = "test",
    device: torch.device | str = "cpu",
    on_video: Callable[[str], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Detections for every video of `subset`, in the ActivityNet results format (seconds, clipped to the video)."""
    from re2tal_cli.data.datasets import find_media
    from re2tal_cli.data.video import open_video

    device = torch.device(device)
    model.to(device).eval()
    root = Path(root)
    entries = [e for e in load_annotations(root).values() if e.subset == subset]
    frames_per_position = model.backbone.temporal_stride * config.frame_stride
    results: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        media = find_media(root, entry.id)
        if media is None:
            raise BadInputError(f"{root}: video {entry.id} has no file in videos/ or frames/")
        source = open_video(media, entry.fps)
        feats, valid = video_features(model, source, config, device)
        padded, mask = pad_features([feats], model.localizer.config.downsample_factor)
        mask[:, valid:] = False
        (detections,) = model.localizer.predict(model.localizer(padded, mask))
        first_time = float(source.times[0])
        seconds = positions_to_seconds(detections.segments.cpu().double(), first_time, source.fps, frames_per_position)
        seconds = seconds.clamp(0.0, entry.duration)
        found = zip(seconds.tolist(), detections.scores.tolist(), detections.labels.tolist(), strict=True)
        results[entry.id] = [
            {"segment": [round(s, 3), round(e, 3)], "score": score, "label": classes[label]}
            for (s, e), score, label in found
            if e > s
        ]
        if on_video is not None:
            on_video(entry.id)
    return results
