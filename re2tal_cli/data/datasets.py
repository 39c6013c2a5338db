"""Dataset formats: the TAL dataset directory, clip classification datasets, and DataLoader helpers.

TAL dataset directory (the contract every command relies on, docs/data.md):

    DIR/annotations.json   {"database": {vid: {"subset", "duration", "fps"?,
                                                "annotations": [{"segment": [s, e], "label"}]}}}
    DIR/videos/<vid>.<ext> (any container PyAV opens)   or   DIR/frames/<vid>/*.jpg

Segments labelled "Ambiguous" (THUMOS-14's "don't care" spans, kept by the converter as the official files have
them) are not a class: they are read into `VideoEntry.ambiguous`, never into `segments`; `re2tal evaluate
--protocol thumos` excuses detections overlapping them, as the official evaluation does.

Clip classification (for `finetune`): a CSV `path,label[,start,end]` (paths relative to the CSV, times in seconds), or
a class-per-folder tree `ROOT/<class>/<video>` (Kinetics style).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from re2tal_cli.data.video import (
    FRAME_EXTENSIONS,
    VIDEO_EXTENSIONS,
    DecodedVideo,
    FrameFolder,
    VideoFile,
    open_video,
)
from re2tal_cli.errors import BadDataError
from re2tal_cli.fileio import read_json, write_json_atomic

__all__ = [
    "Segment",
    "VideoEntry",
    "load_annotations",
    "save_annotations",
    "find_media",
    "class_names",
    "TALDataset",
    "ClipDataset",
    "EpochSampler",
    "make_loader",
    "SUBSETS",
]

ANNOTATIONS = "annotations.json"
AMBIGUOUS = "Ambiguous"
SUBSETS = ("train", "val", "test")


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    label: str


@dataclass
class VideoEntry:
    id: str
    subset: str
    duration: float
    fps: float | None = None
    segments: list[Segment] = field(default_factory=list)
    ambiguous: list[tuple[float, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"subset": self.subset, "duration": round(float(self.duration), 6)}
        if self.fps:
            out["fps"] = round(float(self.fps), 6)
        out["annotations"] = [
            {"segment": [round(s.start, 6), round(s.end, 6)], "label": s.label} for s in self.segments
        ] + [{"segment": [round(s, 6), round(e, 6)], "label": AMBIGUOUS} for s, e in self.ambiguous]
        return out


def _annotation_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / ANNOTATIONS if p.is_dir() else p


def load_annotations(path: str | os.PathLike) -> dict[str, VideoEntry]:
    """Read and validate an ActivityNet-format annotation file (or a dataset directory holding one)."""
    file = _annotation_file(path)
    if not file.is_file():
        raise BadDataError(f"{file}: no annotation file (a dataset directory needs {ANNOTATIONS})")
    data = read_json(file)
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise BadDataError(f'{file}: expected an object with a "database" mapping video ids to entries')
    entries = {}
    for vid, raw in database.items():
        where = f"{file}: video {vid!r}"
        if not isinstance(raw, dict):
            raise BadDataError(f"{where}: entry must be an object")
        try:
            duration = float(raw["duration"])
        except (KeyError, TypeError, ValueError):
            raise BadDataError(f'{where}: missing or non-numeric "duration"') from None
        fps = raw.get("fps")
        segments, ambiguous = [], []
        for k, ann in enumerate(raw.get("annotations", [])):
            try:
                s, e = (float(v) for v in ann["segment"])
                label = str(ann["label"])
            except (KeyError, TypeError, ValueError):
                raise BadDataError(f'{where}: annotation {k} needs "segment": [start, end] and "label"') from None
            if not e > s:
                raise BadDataError(f"{where}: annotation {k} has end {e} ≤ start {s}")
            if label == AMBIGUOUS:
                ambiguous.append((s, e))
            else:
                segments.append(Segment(s, e, label))
        entries[vid] = VideoEntry(
            id=vid,
            subset=str(raw.get("subset", "train")),
            duration=duration,
            fps=float(fps) if fps else None,
            segments=segments,
            ambiguous=ambiguous,
        )
    return entries


def save_annotations(path: str | os.PathLike, entries: dict[str, VideoEntry], **extra: Any) -> None:
    data = {**extra, "database": {vid: e.to_json() for vid, e in entries.items()}}
    write_json_atomic(_annotation_file(path) if Path(path).is_dir() else path, data)


def find_media(root: str | os.PathLike, vid: str) -> Path | None:
    """`videos/<vid>.<ext>` or `frames/<vid>/`, whichever exists (video files first)."""
    root = Path(root)
    videos = root / "videos"
    for ext in VIDEO_EXTENSIONS:
        p = videos / f"{vid}{ext}"
        if p.is_file():
            return p
    if videos.is_dir():  # an unusual extension: any file named <vid>.*
        for p in videos.glob(f"{vid}.*"):
            if p.is_file():
                return p
    frames = root / "frames" / vid
    if frames.is_dir():
        return frames
    return None


def class_names(entries: dict[str, VideoEntry]) -> list[str]:
    return sorted({s.label for e in entries.values() for s in e.segments})


def declared_classes(path: str | os.PathLike) -> list[str] | None:
    """The class list an annotation file declares ("classes": the converters and `data synth` write one), in its
    order, or None."""
    file = _annotation_file(path)
    try:
        classes = json.loads(file.read_text(encoding="utf-8")).get("classes")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None  # load_annotations reports what is wrong with the file
    if classes is None:
        return None
    names = isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    if not names or len(set(classes)) < len(classes):
        raise BadDataError(f'{file}: "classes" must be a list of distinct names')
    return classes


def _epoch_and_item(key: int | tuple[int, int], default_epoch: int) -> tuple[int, int]:
    return (int(key[0]), int(key[1])) if isinstance(key, tuple) else (default_epoch, int(key))


def _rng(seed: int, epoch: int, item: int) -> tuple[np.random.Generator, Any]:
    """Per-sample generators (numpy for frame choice, torch for augmentation) from (seed, epoch, item)."""
    import torch

    ss = np.random.SeedSequence([seed, epoch, item])
    gen = torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    return np.random.default_rng(ss), gen


class _Sources:
    """Per-process cache of opened videos (indexing a file demuxes it once; workers each keep their own); with
    `in_memory`, of decoded videos (`DecodedVideo`)."""

    def __init__(self, in_memory: bool = False):
        self.in_memory = in_memory
        self._cache: dict[str, VideoFile | FrameFolder | DecodedVideo] = {}

    def get(self, path: Path, fps: float | None = None) -> VideoFile | FrameFolder | DecodedVideo:
        key = str(path)
        if key not in self._cache:
            self._cache[key] = open_video(path, fps, self.in_memory)
        return self._cache[key]


class TALDataset:
    """Untrimmed videos with their action segments, read as one long clip each (Re²TAL's frames input, Fig. 4b).

    sampling="uniform": `num_frames` frames evenly over the whole video (ActivityNet style);
    sampling="window": `num_frames` consecutive frames every `stride` frames (THUMOS style); with windows="random"
    one window per video at a random start (training), with windows="all" every window covering the video;
    `windows_per_video` random windows of each video per epoch, each its own draw; `keep_fraction`: a random window
    is drawn (up to 200 times, as OpenTAD's `random_trunc`) to hold at least this fraction of one action, and the
    actions with less inside are dropped from its targets. `in_memory`: videos decoded once per process and kept
    (`DecodedVideo`), for small sets trained over many epochs.

    An item is a dict: video (3, T, size, size) float (normalised with mean/std), times (T,) seconds of the frames
    actually read, segments (K, 2) seconds and labels (K,) int64 of the actions overlapping the clip (clipped to it),
    video_id, duration, fps.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        subset: str | None = "train",
        *,
        num_frames: int = 64,
        sampling: str = "uniform",
        stride: int = 1,
        windows: str = "random",
        overlap: float = 0.0,
        size: int = 112,
        augment=None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        classes: Sequence[str] | None = None,
        seed: int = 0,
        windows_per_video: int = 1,
        keep_fraction: float | None = None,
        in_memory: bool = False,
        entries: Sequence[VideoEntry] | None = None,
    ):
        from re2tal_cli.data.sampling import window_starts

        if sampling not in ("uniform", "window"):
            raise ValueError(f"sampling must be 'uniform' or 'window', got {sampling!r}")
        if windows not in ("random", "all"):
            raise ValueError(f"windows must be 'random' or 'all', got {windows!r}")
        if windows_per_video < 1 or (windows_per_video > 1 and (sampling, windows) != ("window", "random")):
            raise ValueError("windows_per_video > 1 needs sampling='window' with windows='random'")
        self.root = Path(root)
        if entries is None:  # else: the caller's entries (relabelled, say), read from this directory's annotations
            everything = load_annotations(self.root)
            entries = [e for e in everything.values() if subset is None or e.subset == subset]
            if not entries:
                known = sorted({e.subset for e in everything.values()})
                raise BadDataError(f"{self.root}: no videos in subset {subset!r} (subsets: {', '.join(known)})")
        self.entries = list(entries)
        self.classes = list(classes) if classes is not None else class_names({e.id: e for e in self.entries})
        self.media = {}
        missing = []
        for e in self.entries:
            m = find_media(self.root, e.id)
            if m is None:
                missing.append(e.id)
            self.media[e.id] = m
        if missing:
            raise BadDataError(
                f"{self.root}: {len(missing)} video(s) of subset {subset!r} have no file in videos/ or frames/ "
                f"(first: {missing[0]}); run `re2tal data info {self.root}`"
            )
        self.num_frames, self.sampling, self.stride, self.windows = num_frames, sampling, stride, windows
        self.size, self.augment, self.mean, self.std, self.seed = size, augment, tuple(mean), tuple(std), seed
        self.keep_fraction = keep_fraction if (sampling, windows) == ("window", "random") else None
        self.epoch = 0
        self._sources = _Sources(in_memory)
        self.items: list[tuple[int, int | None]] = []
        for k, e in enumerate(self.entries):
            if sampling == "window" and windows == "all":
                n = self._source(e).num_frames
                self.items += [(k, int(s)) for s in window_starts(n, num_frames, stride, overlap)]
            else:
                self.items.append((k, None))
        self.items *= windows_per_video  # each copy draws its own window: the draw is seeded by the item's index

    def _source(self, entry: VideoEntry):
        return self._sources.get(self.media[entry.id], entry.fps)

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the random draws (window starts, augmentation) for items indexed by a plain int; a loader
        from `make_loader` passes (epoch, item) keys instead, which reach worker processes too."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def frame_indices(self, item: int, rng: np.random.Generator | None = None) -> np.ndarray:
        from re2tal_cli.data.sampling import jitter_indices, random_crop, uniform_indices, window_indices

        k, start = self.items[item]
        entry = self.entries[k]
        source = self._source(entry)
        n = source.num_frames
        if self.sampling == "uniform":
            idx = uniform_indices(n, self.num_frames)
        else:
            span = self.num_frames * self.stride
            if start is None and rng is None:
                start = 0
            elif start is None and self.keep_fraction is not None and entry.segments and n > span:
                frames = np.searchsorted(np.asarray(source.times), [[s.start, s.end] for s in entry.segments])
                start, _ = random_crop(n, span, frames, self.keep_fraction, rng)
            elif start is None:
                start = int(rng.integers(0, max(n - span, 0) + 1))
            idx = window_indices(n, self.num_frames, self.stride, start)
        jitter = getattr(self.augment, "temporal_jitter", 0.0)
        if rng is not None and jitter:
            idx = jitter_indices(idx, n, jitter, rng)
        return idx

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        import torch

        from re2tal_cli.data.transforms import eval_transform, normalize, to_tensor

        epoch, item = _epoch_and_item(key, self.epoch)
        k, _ = self.items[item]
        entry = self.entries[k]
        source = self._source(entry)
        rng, gen = _rng(self.seed, epoch, item)
        idx = self.frame_indices(item, rng if self.augment is not None or self.windows == "random" else None)
        x = to_tensor(source.read(idx))
        x = self.augment(x, gen) if self.augment is not None else eval_transform(x, self.size)
        x = normalize(x, self.mean, self.std)
        times = np.asarray(source.times)[idx]
        lo, hi = float(times[0]), float(times[-1]) + 1.0 / source.fps
        segs, labels = [], []
        for s in entry.segments:
            inside = min(s.end, hi) - max(s.start, lo)
            if inside > 0 and s.label in self.classes and inside >= (self.keep_fraction or 0.0) * (s.end - s.start):
                segs.append([max(s.start, lo), min(s.end, hi)])
                labels.append(self.classes.index(s.label))
        return {
            "video": x,
            "times": torch.as_tensor(times, dtype=torch.float32),
            "segments": torch.as_tensor(segs, dtype=torch.float32).reshape(-1, 2),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
            "video_id": entry.id,
            "duration": entry.duration,
            "fps": source.fps,
        }


@dataclass(frozen=True)
class ClipSample:
    path: Path
    label: int
    start: float | None = None
    end: float | None = None


def _read_clip_csv(file: Path) -> tuple[list[tuple[Path, str, float | None, float | None]], Path]:
    rows = []
    with open(file, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row or row[0].startswith("#"):
                continue
            if n == 1 and row[0].strip().lower() == "path":  # header
                continue
            if len(row) not in (2, 4):
                raise BadDataError(f"{file}:{n}: expected path,label or path,label,start,end; got {len(row)} fields")
            start = end = None
            if len(row) == 4:
                try:
                    start, end = float(row[2]), float(row[3])
                except ValueError:
                    raise BadDataError(
                        f"{file}:{n}: start and end must be seconds, got {row[2]!r}, {row[3]!r}"
                    ) from None
                if not end > start:
                    raise BadDataError(f"{file}:{n}: end {end} ≤ start {start}")
            rows.append((file.parent / row[0].strip(), row[1].strip(), start, end))
    if not rows:
        raise BadDataError(f"{file}: no clips listed")
    return rows, file.parent


def _read_clip_folders(root: Path) -> list[tuple[Path, str, None, None]]:
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for p in sorted(class_dir.iterdir()):
            if p.suffix.lower() in VIDEO_EXTENSIONS or (
                p.is_dir() and any(q.suffix.lower() in FRAME_EXTENSIONS for q in p.iterdir())
            ):
                rows.append((p, class_dir.name, None, None))
    if not rows:
        raise BadDataError(f"{root}: no videos found in <class>/ folders (expected ROOT/<class>/<video>.mp4)")
    return rows


class ClipDataset:
    """Trimmed clips with one label each, for finetuning a backbone (Kinetics style).

    `source`: a CSV file (`path,label[,start,end]`), a directory holding `clips.csv` (or `<subset>.csv`), or a
    class-per-folder directory. An item is {"video": (3, T, size, size), "label": int}: `num_frames` frames every
    `frame_stride` frames from within [start, end], at a random position when training, centred otherwise.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        subset: str | None = None,
        num_frames: int = 16,
        frame_stride: int = 2,
        size: int = 112,
        augment=None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        classes: Sequence[str] | None = None,
        train: bool = True,
        seed: int = 0,
    ):
        src = Path(source)
        if src.is_file():
            rows, _ = _read_clip_csv(src)
        elif src.is_dir():
            csvs = [src / f"{subset}.csv"] if subset else []
            csvs.append(src / "clips.csv")
            found = next((c for c in csvs if c.is_file()), None)
            if found is not None:
                rows, _ = _read_clip_csv(found)
            else:
                rows = _read_clip_folders(src / subset if subset and (src / subset).is_dir() else src)
        else:
            raise BadDataError(f"{src}: no such clip list or directory")
        self.classes = list(classes) if classes is not None else sorted({r[1] for r in rows})
        unknown = sorted({r[1] for r in rows} - set(self.classes))
        if unknown:
            raise BadDataError(f"{src}: labels not in the class list: {', '.join(unknown[:5])}")
        self.samples = [ClipSample(p, self.classes.index(lab), s, e) for p, lab, s, e in rows]
        self.num_frames, self.frame_stride, self.size, self.augment = num_frames, frame_stride, size, augment
        self.mean, self.std, self.train, self.seed = tuple(mean), tuple(std), train, seed
        self.epoch = 0
        self._sources = _Sources()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        import torch

        from re2tal_cli.data.sampling import window_indices
        from re2tal_cli.data.transforms import eval_transform, normalize, to_tensor

        epoch, item = _epoch_and_item(key, self.epoch)
        sample = self.samples[item]
        source = self._sources.get(sample.path)
        times = np.asarray(source.times)
        first = 0 if sample.start is None else int(np.searchsorted(times, sample.start))
        last = source.num_frames - 1 if sample.end is None else int(np.searchsorted(times, sample.end, "right")) - 1
        first, last = min(first, source.num_frames - 1), max(last, first)
        span = self.num_frames * self.frame_stride
        room = max(last - first + 1 - span, 0)
        rng, gen = _rng(self.seed, epoch, item)
        start = first + (int(rng.integers(0, room + 1)) if self.train else room // 2)
        idx = np.minimum(window_indices(source.num_frames, self.num_frames, self.frame_stride, start), last)
        x = to_tensor(source.read(idx))
        x = self.augment(x, gen) if self.augment is not None and self.train else eval_transform(x, self.size)
        return {"video": normalize(x, self.mean, self.std), "label": torch.tensor(sample.label)}


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape (video, times, label); keep per-video lists for the rest (segments differ)."""
    import torch

    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if (
            isinstance(values[0], torch.Tensor)
            and all(v.shape == values[0].shape for v in values)
            and key != "segments"
        ):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out


class EpochSampler:
    """The samples of one epoch as (epoch, index) keys, shuffled by (seed, epoch).

    The order and, through the key, every sample's random draws (window start, augmentation) are functions of the
    seed and the epoch alone: they reach persistent worker processes (which hold their own copy of the dataset, so
    `set_epoch` on the dataset would not), and a run resumed at epoch k draws what an uninterrupted one does.

    `shard` (rank, world size): the process's slice of the epoch's order — every world-size-th key from its rank,
    the order first repeated from its start up to a multiple of the world size (as torch's DistributedSampler), so
    that every process takes as many steps. Batch b of one process with batch size B·W then holds the samples of
    step b of the W processes with batch size B; the order itself does not depend on the shard, so a run resumed on
    another number of processes shares out each later epoch as one started there would."""

    def __init__(self, size: int, shuffle: bool = False, seed: int = 0, shard: tuple[int, int] = (0, 1)):
        rank, world_size = shard
        if not 0 <= rank < world_size:
            raise ValueError(f"shard {shard}: rank must be in [0, world size)")  # a caller's bug, not the user's
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.world_size)

    def __iter__(self):
        order = np.arange(self.size)
        if self.shuffle:
            order = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch])).permutation(self.size)
        padded = np.resize(order, len(self) * self.world_size)  # repeats from the start
        return iter([(self.epoch, int(i)) for i in padded[self.rank :: self.world_size]])


def make_loader(
    dataset,
    batch_size: int = 1,
    *,
    shuffle: bool = False,
    workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    collate_fn: Callable | None = None,
    shard: tuple[int, int] = (0, 1),
):
    """A DataLoader over (epoch, index) keys from an `EpochSampler` (`loader.sampler.set_epoch(e)` before epoch e),
    with worker processes and pinned memory when CUDA is present; `shard` (rank, world size): this process's slice
    of every epoch."""
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), shuffle, seed, shard),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        drop_last=drop_last,
        collate_fn=collate_fn or collate,
    )
