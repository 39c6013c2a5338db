"""What the localizer trains on: a feature sequence, its validity mask, and the actions on its grid.

Time axes. Every input becomes a sequence of features on a grid: position p is centred at `first + p·step` seconds
(ActionFormer's convention: feature t is centred at position t and covers [t - 0.5, t + 0.5]).

- Frames (end_to_end, frozen): a clip of frames goes through the backbone; feature k covers frames [k·s, (k+1)·s)
  of the clip (s: the backbone's temporal stride), and a frame at time τ lasts [τ, τ + 1/fps), so feature k is
  centred halfway between its first frame's start and its last frame's end. Frames repeated past a video's end
  (padding) make features of repeats only: those are masked. A `feature_length` resamples the backbone's features
  to that many (linear, align_corners=False, as OpenTAD's `Interpolate`), which rescales the grid.
- Features (`re2tal extract` outputs): each file's `times` are the centres of its features and its metadata the
  stride and fps; `resample_to` resamples every sequence to one length (ActivityNet), as ActionFormer does.

In training, feature sequences longer than the localizer's `max_seq_len` (or any, with `crop_ratio`) are cropped at
random, keeping a segment at least `trunc_thresh` inside the crop when one can be found in 200 tries (ActionFormer's
`truncate_feats`; like it, the last try is used otherwise).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from re2tal_cli.data.datasets import VideoEntry
from re2tal_cli.data.sampling import random_crop
from re2tal_cli.errors import BadDataError
from re2tal_cli.fileio import read_json
from re2tal_cli.text import plural


@dataclass(frozen=True)
class Grid:
    """Position p of a feature sequence is centred at `first + p·step` seconds."""

    first: float
    step: float

    def positions(self, seconds: torch.Tensor) -> torch.Tensor:
        return (seconds - self.first) / self.step

    def seconds(self, positions: torch.Tensor) -> torch.Tensor:
        return positions * self.step + self.first

    def resampled(self, length: int, new_length: int) -> Grid:
        """The grid of `length` features resampled to `new_length` (linear, align_corners=False): output j sits at
        input coordinate (j + 0.5)·length/new_length − 0.5."""
        ratio = length / new_length
        return Grid(self.first + (0.5 * ratio - 0.5) * self.step, self.step * ratio)


def frames_grid(times: torch.Tensor, fps: float, stride: int, valid: int) -> Grid:
    """The grid of a clip's features from its frame times (T,) (module docstring); `valid` features are real."""
    dt = 1.0 / fps
    centres = (times[::stride][:valid] + times[stride - 1 :: stride][:valid] + dt) / 2
    step = float(centres[-1] - centres[0]) / (valid - 1) if valid > 1 else stride * dt
    return Grid(float(centres[0]), step)


def feature_mask(times: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, T) frame times → (B, T / stride) valid features: a window past the video's end repeats its last frame,
    and a feature made only of repeats is padding."""
    fresh = torch.ones_like(times, dtype=torch.bool)
    fresh[:, 1:] = times[:, 1:] > times[:, :-1]
    return fresh.unflatten(1, (-1, stride)).any(-1)


def resample(feats: torch.Tensor, length: int) -> torch.Tensor:
    """(..., C, N) → (..., C, length), linear, align_corners=False."""
    if feats.shape[-1] == length:
        return feats
    shape = feats.shape
    out = F.interpolate(feats.reshape(-1, shape[-2], shape[-1]), size=length, mode="linear", align_corners=False)
    return out.reshape(*shape[:-1], length)


def resample_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    """A (B, N) mask of valid leading features → the (B, length) mask of the resampled sequence."""
    valid = mask.sum(1, keepdim=True).float() * length / mask.shape[1]
    return torch.arange(length, device=mask.device)[None] < valid.ceil()


def segments_on(grid: Grid, segments: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, 2) seconds → positions, dropping segments entirely outside the sequence [−0.5, length − 0.5]."""
    positions = grid.positions(segments.double()).float()
    inside = (positions[:, 1] > -0.5) & (positions[:, 0] < length - 0.5)
    return positions, inside


class FeatureDataset:
    """The videos of one subset with their extracted features (`re2tal extract` output): an item is {feats (C, N),
    segments (K, 2) positions, labels (K,), grid, video_id, duration}. Training items are cropped (module docstring)."""

    def __init__(
        self,
        features: str | os.PathLike,
        entries: list[VideoEntry],
        classes: list[str],
        *,
        train: bool,
        max_seq_len: int,
        trunc_thresh: float = 0.5,
        crop_ratio: tuple[float, float] | None = (0.9, 1.0),
        resample_to: int | None = None,
        seed: int = 0,
    ):
        self.root = Path(features)
        self.entries, self.classes, self.train = entries, classes, train
        self.max_seq_len, self.trunc_thresh, self.crop_ratio = max_seq_len, trunc_thresh, crop_ratio
        self.resample_to, self.seed, self.epoch = resample_to, seed, 0
        self.files = {e.id: self.root / f"{e.id}.safetensors" for e in entries}
        missing = [vid for vid, path in self.files.items() if not path.is_file()]
        if missing:
            raise BadDataError(
                f"{self.root}: {plural(len(missing), 'video')} without a features file (first: {missing[0]}); "
                "make them with `re2tal extract` (or `re2tal data features` from published files)"
            )
        self.channels = self._read(entries[0].id)[0].shape[0]

    def _read(self, vid: str) -> tuple[torch.Tensor, Grid]:
        from safetensors import safe_open

        path = self.files[vid]
        try:
            with safe_open(str(path), framework="pt") as f:
                feats, times, meta = f.get_tensor("feats"), f.get_tensor("times"), f.metadata() or {}
            step = float(meta["stride"]) / float(meta["fps"])
        except Exception as error:  # noqa: BLE001 - unreadable or not ours: one message
            raise BadDataError(f"{path}: not a features file ({error})") from None
        grid = Grid(float(times[0]), step)
        if self.resample_to is not None:
            grid = grid.resampled(feats.shape[1], self.resample_to)
            feats = resample(feats.float(), self.resample_to)
        return feats.float(), grid

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, item = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))
        entry = self.entries[item]
        feats, grid = self._read(entry.id)
        segments = torch.tensor([[s.start, s.end] for s in entry.segments], dtype=torch.float64).reshape(-1, 2)
        labels = torch.tensor([self.classes.index(s.label) for s in entry.segments], dtype=torch.int64)
        positions, inside = segments_on(grid, segments, feats.shape[1])
        positions, labels = positions[inside], labels[inside]
        if self.train:
            feats, grid, positions, labels = self._crop(feats, grid, positions, labels, epoch, item)
        return {
            "feats": feats,
            "segments": positions,
            "labels": labels,
            "grid": grid,
            "video_id": entry.id,
            "duration": entry.duration,
        }

    def _crop(self, feats, grid: Grid, positions, labels, epoch: int, item: int):
        length = feats.shape[1]
        crop = length
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, item]))
        if length > self.max_seq_len:
            crop = self.max_seq_len
        elif self.crop_ratio is not None:
            low, high = (max(round(r * length), 1) for r in self.crop_ratio)
            crop = int(rng.integers(low, min(high, length) + 1))
        if crop == length or len(positions) == 0 and length <= self.max_seq_len:
            return feats, grid, positions, labels
        start, kept = random_crop(length, crop, positions.numpy(), self.trunc_thresh, rng,
                                  trials=200 if len(positions) else 1)  # fmt: skip
        kept = torch.from_numpy(kept)
        positions = (positions[kept] - start).clamp(min=-0.5, max=crop - 0.5)
        return feats[:, start : start + crop], Grid(grid.first + start * grid.step, grid.step), positions, labels[kept]


def read_feature_index(features: str | os.PathLike) -> dict[str, Any]:
    """The index.json of an extract output: arch, source checkpoint, settings, channels."""
    path = Path(features) / "index.json"
    if not path.is_file():
        raise BadDataError(
            f"{features}: not a features directory (no index.json): made by `re2tal extract` or `re2tal data features`"
        )
    return read_json(path)


def subset_entries(annotations: dict[str, VideoEntry], subset: str, where) -> list[VideoEntry]:
    """The entries of one subset of `annotations` (read from `where`), which must have some."""
    entries = [e for e in annotations.values() if e.subset == subset]
    if not entries:
        present = sorted({e.subset for e in annotations.values()})
        raise BadDataError(f"{where}: no videos in subset {subset!r} (subsets: {', '.join(present)})")
    return entries


def collate_features(batch: list[dict[str, Any]], multiple: int, max_length: int | None) -> dict[str, Any]:
    """Feature items → feats (B, C, T) zero-padded, mask (B, T), and per-video lists of the rest."""
    from re2tal_cli.localizers.base import pad_features

    feats, mask = pad_features([b["feats"] for b in batch], multiple, max_length)
    out = {"feats": feats, "mask": mask}
    for key in ("segments", "labels", "grid", "video_id", "duration"):
        out[key] = [b[key] for b in batch]
    return out
