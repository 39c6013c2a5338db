"""Tiny real videos written with PyAV (the `videos` fixture, made once per test session, is in tests/conftest.py)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def frame_image(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Frame i: a level that encodes i (recoverable after lossy coding) plus a moving bar, so frames differ."""
    img = np.full((height, width, 3), (i * 7) % 200 + 20, dtype=np.uint8)
    x = (i * 3) % width
    img[:, x : x + 6] = (250, 30, 30)
    return img


def write_video(
    path: Path,
    frames: int = 60,
    *,
    fps: int = 10,
    width: int = 64,
    height: int = 48,
    codec: str = "libx264",
    options: dict | None = None,
    pts_offset: int = 0,
    fmt: str | None = None,
) -> Path:
    import av

    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            frame.pts = i + pts_offset
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    gop = {"g": "12", "bf": "3"}  # short GOPs with B-frames: several keyframes in a few seconds
    out = {
        "mp4": write_video(d / "bframes.mp4", 90, options=gop),
        "offset_mkv": write_video(d / "offset.mkv", 50, options=gop, pts_offset=37),
        "ts": write_video(d / "stream.ts", 40, options=gop, fmt="mpegts"),
        "mpeg4_avi": write_video(d / "old.avi", 30, codec="mpeg4", options={"g": "8"}),
    }
    good = out["mp4"].read_bytes()
    (d / "zero.mp4").write_bytes(b"")
    (d / "garbage.mp4").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    (d / "truncated.mp4").write_bytes(good[: len(good) // 3])
    out.update(zero=d / "zero.mp4", garbage=d / "garbage.mp4", truncated=d / "truncated.mp4")
    return out
