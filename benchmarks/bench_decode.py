"""Sparse frame sampling vs decoding every frame (issue #4's target: ≥ 5× faster, identical frames).

    .venv/bin/python benchmarks/bench_decode.py                    # 10-minute 30 fps 320×240 H.264, 512 frames
    .venv/bin/python benchmarks/bench_decode.py --minutes 1 --frames 64 --repeat 1   # quick check

Generates the video with PyAV (libx264 defaults: keyframes at scene cuts and every 250 frames, B-frames on), then times
(a) decoding every frame and converting each to RGB, keeping the 512 evenly sampled ones, and
(b) `re2tal_cli.data.video.read_frames` (seek to the keyframe before each frame, decode forward, skip unrequested
non-reference frames, convert only the requested ones), and checks that both give the same bits.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from re2tal_cli.data.sampling import uniform_indices  # noqa: E402
from re2tal_cli.data.video import _decode_sequential, probe, read_frames  # noqa: E402


def make_video(path: Path, seconds: float, fps: int = 30, width: int = 320, height: int = 240, seed: int = 0) -> None:
    """Smooth moving content with a cut every ~4 s (so keyframes fall where an encoder puts them in real footage)."""
    import av

    rng = np.random.default_rng(seed)
    x = np.arange(width, dtype=np.float32)
    y = np.arange(height, dtype=np.float32)
    noise = [rng.normal(0, 3, (height, width, 1)).astype(np.float32) for _ in range(7)]  # sensor noise, recycled
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        n = int(seconds * fps)
        scene = None
        for i in range(n):
            if i % (4 * fps) == 0:  # a new "shot": new colours, new objects, new motion
                scene = {
                    "colour": rng.uniform(40, 215, 3).astype(np.float32),
                    "freq": rng.uniform(0.01, 0.05, 2),
                    "boxes": [
                        (
                            rng.uniform(0, width),
                            rng.uniform(0, height),
                            rng.uniform(-3, 3),
                            rng.uniform(-3, 3),
                            rng.integers(0, 255, 3),
                        )
                        for _ in range(4)
                    ],
                }
            k = i % (4 * fps)
            wave = np.outer(np.cos(y * scene["freq"][1] - k * 0.03), np.sin(x * scene["freq"][0] + k * 0.05))
            img = scene["colour"] + 35 * wave[..., None] + noise[i % len(noise)]
            for bx, by, vx, vy, col in scene["boxes"]:
                cx, cy = int(bx + vx * k) % width, int(by + vy * k) % height
                img[max(cy - 15, 0) : cy + 15, max(cx - 20, 0) : cx + 20] = col
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def decode_every_frame(path: Path, wanted: np.ndarray) -> np.ndarray:
    """The baseline: decode and convert every frame to RGB (as `decode_all` does), keep the wanted ones.

    Kept frames only, so 10 minutes of video do not need 4 GiB of memory; the work is that of `decode_all`.
    """
    keep = {int(i): None for i in wanted}
    for i, frame in enumerate(_decode_sequential(path)):
        rgb = frame.to_ndarray(format="rgb24")
        if i in keep:
            keep[i] = rgb
    return np.stack([keep[int(i)] for i in wanted])


def decode_cost(path: Path, skip_nonref: bool) -> tuple[float, int]:
    """Seconds to decode every frame without RGB conversion (optionally skipping non-reference frames)."""
    import av

    t0 = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if skip_nonref:
            stream.codec_context.skip_frame = "NONREF"
        n = sum(1 for _ in container.decode(stream))
    return time.perf_counter() - t0, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--frames", default="512,64", help="frames sampled evenly over the video (comma-separated)")
    parser.add_argument("--repeat", type=int, default=2, help="timings are the best of this many runs")
    parser.add_argument("--video", type=Path, help="use this file instead of generating one")
    parser.add_argument("--keep", type=Path, help="also save the generated video here (to rerun with --video)")
    args = parser.parse_args()
    counts = [int(c) for c in args.frames.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        path = args.video or Path(tmp) / "bench.mp4"
        if args.video is None:
            t0 = time.perf_counter()
            make_video(path, args.minutes * 60)
            if args.keep:
                shutil.copyfile(path, args.keep)
            print(
                f"generated {path.name}: {args.minutes:g} min, {os.path.getsize(path) / 2**20:.1f} MiB "
                f"in {time.perf_counter() - t0:.1f}s"
            )
        index = probe(path)
        print(
            f"video: {index.num_frames} frames, {index.width}x{index.height}, {index.fps:.2f} fps, "
            f"{len(index.key_pts)} keyframes (one per {index.num_frames / len(index.key_pts):.0f} frames)"
        )
        dec, _ = min(decode_cost(path, False) for _ in range(args.repeat))
        ref, n_ref = min(decode_cost(path, True) for _ in range(args.repeat))
        print(f"decode every frame, no RGB:    {dec:7.2f} s")
        print(f"decode reference frames only:  {ref:7.2f} s   ({n_ref} of {index.num_frames} frames are references)")

        failed = False
        for count in counts:
            wanted = uniform_indices(index.num_frames, count)
            best_all = best_seek = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                reference = decode_every_frame(path, wanted)
                best_all = min(best_all, time.perf_counter() - t0)
                t0 = time.perf_counter()
                stats: dict = {}
                sampled = read_frames(path, wanted, index=probe(path), strategy="seek", stats=stats)  # probe timed
                best_seek = min(best_seek, time.perf_counter() - t0)
            identical = sampled.shape == reference.shape and bool(np.array_equal(sampled, reference))
            failed |= not identical
            print(f"-- {count} frames evenly (one per {index.num_frames / count:.0f} frames)")
            print(f"decode every frame + RGB:      {best_all:7.2f} s")
            print(
                f"seek + decode forward (ours):  {best_seek:7.2f} s   "
                f"({stats['seeks']} seeks, {stats['decoded']} frames decoded)"
            )
            print(f"speed ratio: {best_all / best_seek:.1f}x   identical frames: {identical}")
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
            f"PyAV {__import__('av').__version__}, numpy {np.__version__}"
        )
        if failed:
            sys.exit(1)


if __name__ == "__main__":
    main()
