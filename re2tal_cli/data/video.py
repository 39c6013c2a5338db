"""Decoding video files with PyAV, and reading only the frames a sampler asks for.

A video is seen as its frames in presentation order, numbered 0…N-1. Frame timestamps come from the stream
(`pts × time_base`, relative to the first frame), never from an assumed frame rate, so variable-rate files and files
whose first pts is not 0 (MPEG-TS, edited MP4) are placed correctly on the annotation time axis.

`probe` builds that frame list by demuxing packets without decoding them (a few ms per minute of video): each video
packet carries one frame's pts and a keyframe flag. `read_frames` then decodes only what the requested frames need:

- dense requests decode the stream front to back and convert only the requested frames to RGB (conversion, not
  decoding, dominates a decode-all: see docs/benchmarks.md);
- sparse requests seek to the keyframe at or before each requested frame whenever that keyframe lies past the current
  decoding position, decode forward from there, and ask the decoder to skip non-reference frames that were not
  requested (nothing references them, so every other frame decodes to the same bits).

Both paths return frames bit-identical to decoding every frame (`decode_all`): a frame is selected by its pts, and a
decoder started at a keyframe of a closed GOP produces the same pictures as one that ran from the start. Open-GOP
leading pictures (pts before their keyframe) are reached from the previous keyframe, where their references exist.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from re2tal_cli.errors import BadDataError

__all__ = [
    "VIDEO_EXTENSIONS",
    "FRAME_EXTENSIONS",
    "VideoIndex",
    "VideoFile",
    "FrameFolder",
    "DecodedVideo",
    "open_video",
    "probe",
    "decode_all",
    "read_frames",
]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".ogv", ".3gp")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")

# Decoders whose `skip_frame=NONREF` drops only pictures no other picture references (checked bit-exact in tests).
_SKIP_NONREF_CODECS = frozenset({"h264", "hevc", "mpeg2video", "mpeg1video", "mpeg4"})
# Above this fraction of requested frames, decoding front to back beats seeking.
_DENSE_FRACTION = 0.5


def _av():
    import av  # imported lazily: `re2tal --help` must not pay for it

    return av


@dataclass(frozen=True)
class VideoIndex:
    """What `probe` learns about a video file without decoding it."""

    path: str
    pts: np.ndarray  # (N,) int64, presentation timestamps of the frames, sorted
    key_pts: np.ndarray  # (K,) int64, pts of the keyframes, sorted
    key_dts: np.ndarray  # (K,) int64, their decoding timestamps (some demuxers seek by dts)
    time_base: Fraction  # seconds per pts unit
    width: int
    height: int
    codec: str
    seekable: bool  # False: no usable pts in the packets, frames are read by decoding front to back
    nominal_fps: float  # the stream's declared rate (used only when pts are unusable)
    times: np.ndarray = field(init=False)  # (N,) float64 seconds from the first frame

    def __post_init__(self):
        if self.seekable:
            times = (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)
        else:
            times = np.arange(len(self.pts), dtype=np.float64) / self.nominal_fps
        object.__setattr__(self, "times", times)

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    @property
    def start_time(self) -> float:
        """Stream time of the first frame, in seconds (0 for most MP4 files, ~1.4 s for MPEG-TS)."""
        return float(self.pts[0] * self.time_base) if self.seekable else 0.0

    @property
    def fps(self) -> float:
        """Mean frame rate measured from the timestamps."""
        n = self.num_frames
        if n < 2 or self.times[-1] <= 0:
            return self.nominal_fps
        return (n - 1) / float(self.times[-1])

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end."""
        return float(self.times[-1]) + 1.0 / self.fps


def _bad(path: str | os.PathLike, what: str) -> BadDataError:
    return BadDataError(f"{path}: {what}")


def _open(path: str | os.PathLike):
    av = _av()
    p = Path(path)
    if not p.is_file():
        raise _bad(path, "no such video file")
    if p.stat().st_size == 0:
        raise _bad(path, "empty file (0 bytes)")
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except av.FFmpegError as error:
        raise _bad(path, f"not a readable video ({error.strerror or error})") from None
    if not container.streams.video:
        container.close()
        raise _bad(path, "has no video stream")
    return container


def probe(path: str | os.PathLike) -> VideoIndex:
    """Index a video's frames (pts, keyframes) by demuxing it; raises BadDataError if it is unreadable or has none."""
    av = _av()
    container = _open(path)
    try:
        stream = container.streams.video[0]
        pts: list[int] = []
        keys: list[tuple[int, int]] = []
        missing_pts = False
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end of the stream
                    continue
                if packet.pts is None:
                    missing_pts = True
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append((packet.pts, packet.pts if packet.dts is None else packet.dts))
        except av.FFmpegError as error:
            if not pts:
                raise _bad(path, f"cannot read packets ({error})") from None
            # a truncated file: index what could be read
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        nominal = float(rate) if rate else 30.0
        width, height = ctx.width, ctx.height
        codec = ctx.name
        time_base = stream.time_base or Fraction(1, 1)
    finally:
        container.close()

    arr = np.asarray(sorted(pts), dtype=np.int64)
    seekable = not missing_pts and len(arr) > 0 and len(np.unique(arr)) == len(arr) and len(keys) > 0
    if not seekable:
        # Count frames by decoding: slow, but only for streams without per-packet timestamps.
        count = sum(1 for _ in _decode_sequential(path))
        if count == 0:
            raise _bad(path, "contains no decodable video frames")
        arr = np.arange(count, dtype=np.int64)
        keys = [(0, 0)]
    if width <= 0 or height <= 0:
        raise _bad(path, "video stream has no frame size")
    return VideoIndex(
        path=str(path),
        pts=arr,
        key_pts=np.asarray([k for k, _ in sorted(keys)], dtype=np.int64),
        key_dts=np.asarray([d for _, d in sorted(keys)], dtype=np.int64),
        time_base=Fraction(time_base),
        width=width,
        height=height,
        codec=codec,
        seekable=seekable,
        nominal_fps=nominal,
    )


def _to_rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _decode_sequential(path: str | os.PathLike) -> Iterator:
    """Every decoded frame of the first video stream, in presentation order."""
    av = _av()
    container = _open(path)
    try:
        stream = container.streams.video[0]
        try:
            yield from container.decode(stream)
        except av.FFmpegError as error:
            raise _bad(path, f"decoding failed ({error})") from None
    finally:
        container.close()


def decode_all(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Decode every frame: (N, H, W, 3) uint8 RGB and their (N,) pts. The reference `read_frames` is checked against."""
    frames, pts = [], []
    for frame in _decode_sequential(path):
        frames.append(_to_rgb(frame))
        pts.append(-1 if frame.pts is None else frame.pts)
    if not frames:
        raise _bad(path, "contains no decodable video frames")
    return np.stack(frames), np.asarray(pts, dtype=np.int64)


def iter_frames(path: str | os.PathLike, index: VideoIndex | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(frame number, RGB frame) for every frame front to back; memory stays one frame."""
    index = index or probe(path)
    position = {int(p): i for i, p in enumerate(index.pts)} if index.seekable else None
    n = 0
    for frame in _decode_sequential(path):
        if position is not None:
            i = position.get(frame.pts)
            if i is None:
                continue
        else:
            i = n
        n += 1
        yield i, _to_rgb(frame)


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray,
    *,
    index: VideoIndex | None = None,
    strategy: str = "auto",
    stats: dict | None = None,
) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) of a video as (T, H, W, 3) uint8 RGB.

    strategy: "auto" (seek for sparse requests, front-to-back for dense ones), "seek" or "sequential"; all three
    return the same bits. `stats`, if given, receives the strategy used, the number of seeks and of decoded frames.
    """
    index = index or probe(path)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        return np.zeros((0, index.height, index.width, 3), dtype=np.uint8)
    if idx.min() < 0 or idx.max() >= index.num_frames:
        raise ValueError(f"frame indices must lie in [0, {index.num_frames}); got {idx.min()}…{idx.max()}")
    wanted = np.unique(idx)
    if strategy not in ("auto", "seek", "sequential"):
        raise ValueError(f"unknown strategy {strategy!r}")
    if strategy == "auto":
        strategy = "sequential" if len(wanted) > _DENSE_FRACTION * index.num_frames else "seek"
    if not index.seekable:
        strategy = "sequential"
    stats = {} if stats is None else stats
    stats.update(strategy=strategy, seeks=0, decoded=0)
    if strategy == "sequential":
        got = _read_sequential(path, index, wanted, stats)
    else:
        got = _read_seek(path, index, wanted, stats)
    return np.stack([got[int(i)] for i in idx])


def _read_sequential(path, index: VideoIndex, wanted: np.ndarray, stats: dict) -> dict[int, np.ndarray]:
    want = set(wanted.tolist())
    got: dict[int, np.ndarray] = {}
    if index.seekable:
        position = {int(p): i for i, p in enumerate(index.pts)}
        for frame in _decode_sequential(path):
            stats["decoded"] += 1
            i = position.get(frame.pts)
            if i in want:
                got[i] = _to_rgb(frame)
                if len(got) == len(want):
                    break
    else:
        for i, frame in enumerate(_decode_sequential(path)):
            stats["decoded"] += 1
            if i in want:
                got[i] = _to_rgb(frame)
                if len(got) == len(want):
                    break
    _check_complete(path, index, want, got)
    return got


def _check_complete(path, index: VideoIndex, want: set[int], got: dict[int, np.ndarray]) -> None:
    lost = sorted(want - got.keys())
    if lost:
        t = float(index.times[lost[0]])
        raise _bad(path, f"{len(lost)} frame(s) could not be decoded (first: frame {lost[0]} at {t:.3f}s)")


def _read_seek(path, index: VideoIndex, wanted: np.ndarray, stats: dict) -> dict[int, np.ndarray]:
    """Seek to the keyframe before each requested frame when it lies past the decoding position, decode forward."""
    av = _av()
    targets = [int(index.pts[i]) for i in wanted]  # sorted, as `wanted` is
    pts_to_index = {p: int(i) for p, i in zip(targets, wanted, strict=True)}
    target_set = set(targets)
    keys = index.key_pts.tolist()
    got: dict[int, np.ndarray] = {}

    container = _open(path)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        skip_nonref = ctx.name in _SKIP_NONREF_CODECS
        packets: Iterator | None = None
        position = None  # pts the decoder has reached (last output frame, or the keyframe it was sought to)
        t = 0
        while t < len(targets):
            target = targets[t]
            if pts_to_index[target] in got:
                t += 1
                continue
            k = max(bisect.bisect_right(keys, target) - 1, 0)
            key = keys[k]
            if packets is None or position is None or key > position:
                # A keyframe lies between where the decoder is and the target: jump to it.
                packets = _seek(container, stream, key, int(index.key_dts[k]))
                stats["seeks"] += 1
                position = key
            reached = _decode_until(
                packets, ctx, target, target_set, pts_to_index, got, skip_nonref, av, path, index, stats
            )
            if reached is None:  # end of stream before the target came out
                break
            if reached > target and pts_to_index[target] not in got and position == key:
                # The seek overshot (an imprecise container index): fall back to a front-to-back read.
                rest = {pts_to_index[p] for p in targets[t:] if pts_to_index[p] not in got}
                got.update(_read_sequential(path, index, np.asarray(sorted(rest)), stats))
                break
            position = reached
            t += 1
    finally:
        container.close()
    _check_complete(path, index, set(wanted.tolist()), got)
    return got


def _seek(container, stream, key: int, key_dts: int) -> Iterator:
    """Packets from the keyframe `key` on (or from an earlier one where the demuxer cannot land exactly)."""
    ctx = stream.codec_context
    # Demuxers index by pts (Matroska) or by dts (MP4): try the pts, then the dts, then a second earlier.
    second = int(1 / stream.time_base) if stream.time_base else 1
    for offset in (key, key_dts, key_dts - second):
        container.seek(offset, stream=stream, backward=True, any_frame=False)
        ctx.flush_buffers()
        packets = container.demux(stream)
        first = next(packets, None)
        if first is None:
            return iter(())
        if first.pts is None or first.pts <= key:
            return itertools.chain([first], packets)
    container.seek(0, stream=stream, backward=True, any_frame=False)
    ctx.flush_buffers()
    return container.demux(stream)


def _decode_until(
    packets: Iterator,
    ctx,
    target: int,
    target_set: set[int],
    pts_to_index: dict[int, int],
    got: dict[int, np.ndarray],
    skip_nonref: bool,
    av,
    path,
    index: VideoIndex,
    stats: dict,
) -> int | None:
    """Feed packets until a frame with pts ≥ target comes out; keep every requested frame seen. Returns that pts."""
    for packet in packets:
        if skip_nonref:
            # A requested picture is always decoded; the others only if something may reference them.
            ctx.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in target_set else "NONREF"
        try:
            frames = ctx.decode(packet if packet.size else None)
        except av.FFmpegError as error:
            raise _bad(path, f"decoding failed near {_seconds(packet.pts, index):.3f}s ({error})") from None
        reached = None
        for frame in frames:
            stats["decoded"] += 1
            if frame.pts in pts_to_index and pts_to_index[frame.pts] not in got:
                got[pts_to_index[frame.pts]] = _to_rgb(frame)
            if frame.pts is not None and frame.pts >= target:
                reached = frame.pts if reached is None else max(reached, frame.pts)
        if reached is not None:
            return reached
    return None


def _seconds(pts: int | None, index: VideoIndex) -> float:
    if pts is None:
        return float("nan")
    return float((pts - index.pts[0]) * index.time_base)


# ----------------------------------------------------------------------------------------------------------------------
# Sources: one interface over video files and folders of extracted frames


class VideoFile:
    """A video file, indexed once; picklable (holds no open container), so DataLoader workers can share it."""

    def __init__(self, path: str | os.PathLike, index: VideoIndex | None = None):
        self.path = str(path)
        self.index = index or probe(path)

    num_frames = property(lambda self: self.index.num_frames)
    times = property(lambda self: self.index.times)
    fps = property(lambda self: self.index.fps)
    duration = property(lambda self: self.index.duration)
    size = property(lambda self: (self.index.height, self.index.width))

    def read(self, indices: Sequence[int] | np.ndarray, strategy: str = "auto") -> np.ndarray:
        return read_frames(self.path, indices, index=self.index, strategy=strategy)

    def iter_frames(self) -> Iterator[tuple[int, np.ndarray]]:
        return iter_frames(self.path, self.index)


class FrameFolder:
    """`frames/<id>/*.jpg`: frames sorted by file name, at `fps` (from the annotation; images carry no timestamps)."""

    def __init__(self, path: str | os.PathLike, fps: float | None = None):
        self.path = str(path)
        folder = Path(path)
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
        if not self.files:
            raise _bad(path, "frame folder holds no .jpg/.png images")
        self.fps = float(fps) if fps else 30.0
        self.times = np.arange(len(self.files), dtype=np.float64) / self.fps
        first = self._load(0)
        self.size = first.shape[:2]

    num_frames = property(lambda self: len(self.files))
    duration = property(lambda self: len(self.files) / self.fps)

    def _load(self, i: int) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as image:
                return np.asarray(image.convert("RGB"))
        except OSError as error:
            raise _bad(self.files[i], f"unreadable image ({error})") from None

    def read(self, indices: Sequence[int] | np.ndarray, strategy: str = "auto") -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        cache: dict[int, np.ndarray] = {}
        out = []
        for i in idx.tolist():
            if i not in cache:
                cache[i] = self._load(i)
            out.append(cache[i])
        return np.stack(out) if out else np.zeros((0, *self.size, 3), dtype=np.uint8)

    def iter_frames(self) -> Iterator[tuple[int, np.ndarray]]:
        for i in range(len(self.files)):
            yield i, self._load(i)


class DecodedVideo:
    """A source decoded once and kept in memory as uint8 RGB (T × H × W × 3 bytes): for small sets trained over many
    epochs, where decoding a window costs more than the training step on it (64² synthetic video on CPU: ~5×)."""

    def __init__(self, source: VideoFile | FrameFolder):
        self.path, self.fps, self.times, self.size = source.path, source.fps, source.times, source.size
        self.frames = source.read(range(source.num_frames))
        self.duration = source.duration

    num_frames = property(lambda self: len(self.frames))

    def read(self, indices: Sequence[int] | np.ndarray, strategy: str = "auto") -> np.ndarray:
        return self.frames[np.asarray(indices, dtype=np.int64).reshape(-1)]

    def iter_frames(self) -> Iterator[tuple[int, np.ndarray]]:
        return enumerate(self.frames)


def open_video(
    path: str | os.PathLike, fps: float | None = None, in_memory: bool = False
) -> VideoFile | FrameFolder | DecodedVideo:
    """A video file or a frame folder behind one interface (`num_frames`, `times`, `fps`, `read`, `iter_frames`);
    with `in_memory`, decoded once and served from memory."""
    source = FrameFolder(path, fps) if Path(path).is_dir() else VideoFile(path)
    return DecodedVideo(source) if in_memory else source


ProgressCallback = Callable[[int], None]


def check_readable(where, media: dict[str, tuple[Path | None, float | None]], what: str, hint: str = "") -> None:
    """Every named video present (a path, not None) and opening with its fps (the index read, nothing decoded); one
    `BadDataError` from `where` listing the first that are not, e.g. "2 videos cannot be read: a (missing), …"."""
    from re2tal_cli.text import plural

    problems = []
    for name, (path, fps) in media.items():
        if path is None or not Path(path).exists():
            problems.append(f"{name} (missing)")
            continue
        try:
            open_video(path, fps)
        except BadDataError:
            problems.append(f"{name} (unreadable)")
    if problems:
        shown = ", ".join(problems[:5]) + (", …" if len(problems) > 5 else "")
        raise BadDataError(f"{where}: {plural(len(problems), what)} cannot be read: {shown}{hint}")
