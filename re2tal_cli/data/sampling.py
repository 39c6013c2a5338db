"""Which frames to read: frame numbers for the two input arrangements of Re²TAL (Fig. 4).

- frames input (Fig. 4b): the backbone sees one long clip: T frames evenly over the whole video (ActivityNet
  style, e.g. 512 or 768) or T consecutive frames at a fixed stride or rate over a window (THUMOS style, e.g. 1024
  at stride s);
- snippet input (Fig. 4a): clips of D frames every S frames, overlapping, one feature per clip (feature extraction).

All functions return int64 frame numbers in [0, num_frames); a request longer than the video repeats its last frame
(padding), so a batch keeps one shape.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "uniform_indices",
    "window_indices",
    "window_starts",
    "fps_indices",
    "snippet_starts",
    "snippet_indices",
    "jitter_indices",
    "random_crop",
]


def _check(num_frames: int, count: int) -> None:
    if num_frames <= 0:
        raise ValueError(f"the video has no frames (num_frames={num_frames})")
    if count <= 0:
        raise ValueError(f"need a positive number of frames, got {count}")


def uniform_indices(num_frames: int, count: int) -> np.ndarray:
    """`count` frames evenly over the whole video: the middle frame of each of `count` equal segments."""
    _check(num_frames, count)
    return np.minimum(((np.arange(count) + 0.5) * num_frames / count).astype(np.int64), num_frames - 1)


def window_indices(num_frames: int, count: int, stride: int = 1, start: int = 0) -> np.ndarray:
    """`count` frames from `start` every `stride` frames; past the end, the last frame repeats."""
    _check(num_frames, count)
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    return np.clip(start + stride * np.arange(count, dtype=np.int64), 0, num_frames - 1)


def window_starts(num_frames: int, count: int, stride: int = 1, overlap: float = 0.0) -> np.ndarray:
    """Starts of windows of `count` frames at `stride` covering the whole video, overlapping by `overlap` (0…<1)."""
    _check(num_frames, count)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    span = count * stride
    step = max(int(round(span * (1.0 - overlap))), 1)
    last = max(num_frames - span, 0)
    starts = list(range(0, last + 1, step))
    if starts[-1] < last:  # the tail is covered by a window that ends at the last frame
        starts.append(last)
    return np.asarray(starts, dtype=np.int64)


def fps_indices(times: np.ndarray, fps: float, count: int | None = None, start: float = 0.0) -> np.ndarray:
    """Frames nearest to `start, start + 1/fps, …` on the video's own timestamps (variable rate handled).

    `count=None` covers the video to its last timestamp.
    """
    times = np.asarray(times, dtype=np.float64)
    _check(len(times), count or 1)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if count is None:
        count = max(int(np.floor((times[-1] - start) * fps + 1e-9)) + 1, 1)
    wanted = start + np.arange(count) / fps
    right = np.clip(np.searchsorted(times, wanted), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    nearer_left = np.abs(times[left] - wanted) <= np.abs(times[right] - wanted)
    return np.where(nearer_left, left, right).astype(np.int64)


def snippet_starts(num_frames: int, clip: int, stride: int) -> np.ndarray:
    """First frame of each snippet of `clip` frames every `stride` frames; at least one snippet."""
    _check(num_frames, clip)
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    return np.arange(0, max(num_frames - clip, 0) + 1, stride, dtype=np.int64)


def snippet_indices(num_frames: int, clip: int, stride: int, frame_step: int = 1) -> np.ndarray:
    """(N, clip) frame numbers of the snippets (each `clip` frames `frame_step` apart), padded at the end."""
    starts = snippet_starts(num_frames, clip * frame_step - (frame_step - 1), stride)
    return np.minimum(starts[:, None] + frame_step * np.arange(clip)[None, :], num_frames - 1)


def jitter_indices(indices: np.ndarray, num_frames: int, amount: float, generator) -> np.ndarray:
    """Temporal jitter: move each sampled frame by up to ±amount × (gap to its neighbours), keeping the order.

    `generator` is a `numpy.random.Generator`; amount 0 returns the input.
    """
    idx = np.asarray(indices, dtype=np.int64)
    if amount <= 0 or len(idx) < 2:
        return idx
    gap = max(float(np.median(np.diff(idx))), 1.0)
    shift = np.rint(generator.uniform(-amount, amount, size=len(idx)) * gap).astype(np.int64)
    return np.clip(np.maximum.accumulate(idx + shift), 0, num_frames - 1)


def random_crop(
    length: int,
    crop: int,
    segments: np.ndarray,
    keep_fraction: float,
    generator: np.random.Generator,
    trials: int = 200,
) -> tuple[int, np.ndarray]:
    """(start, kept) of a random crop of `crop` units out of `length`, for (K, 2) `segments` in the same units: the
    first of `trials` draws that keeps at least one segment `keep_fraction` inside (`kept`: which segments are),
    else the last draw (ActionFormer's and OpenTAD's `random_trunc`)."""
    segments = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    start, kept = 0, np.zeros(len(segments), dtype=bool)
    for _ in range(trials):
        start = int(generator.integers(0, length - crop + 1))
        inside = np.clip(np.minimum(segments[:, 1], start + crop) - np.maximum(segments[:, 0], start), 0, None)
        kept = inside / np.maximum(segments[:, 1] - segments[:, 0], 1e-6) >= keep_fraction
        if kept.any():
            break
    return start, kept
