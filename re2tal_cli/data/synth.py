"""A synthetic TAL dataset, generated locally (no downloads): the project's default data.

Every action is an *actor* — a small disc drawn from one shared colour palette — doing a class-specific temporal
pattern: circling clockwise or anticlockwise, swinging, pulsing, blinking, cycling its hue, zig-zagging, at a slow or
fast tempo. A single frame shows a disc somewhere; only its motion over several frames tells the class (a clockwise
and an anticlockwise circle have the same frames, in a different order). Videos also hold:

- background motion: a drifting sinusoidal texture over a per-video colour, plus sensor noise;
- distractors: the same discs appearing for 1–20 s and wandering on smooth random (aperiodic) paths — they look like
  actions frame by frame but are not, so "a disc is present" does not localise actions.

Action lengths are log-uniform in [min_action, max_action] (default 1–30 s), so every length bin of THUMOS's DETAD
breakdown (XS ≤ 3 s … XL > 18 s) holds instances. Actions of a video do not overlap each other.

Layouts written to OUT: the TAL dataset (`annotations.json` + `videos/<id>.mp4`, subsets train/test) and a
clip-classification set for `finetune` (`clips/<subset>/<class>/<n>.mp4`, Kinetics style, 3 s clips of one action).

Deterministic: each video draws from its own child of `SeedSequence(seed)`, so the same seed gives the same
annotations and frames whatever the number of worker processes (x264 is deterministic for the same input).
See docs/synthetic.md.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from re2tal_cli.data.datasets import Segment, VideoEntry, save_annotations
from re2tal_cli.errors import BadInputError
from re2tal_cli.fileio import check_output_dir, write_json_atomic

__all__ = ["SynthConfig", "PATTERNS", "class_names", "generate", "render_video"]

# The temporal patterns, ordered so that the first classes include the pairs a single frame cannot separate.
PATTERNS = ("circle-cw", "circle-ccw", "swing-h", "swing-v", "pulse", "blink", "hue-cycle", "zigzag")
TEMPOS = {"slow": 2.0, "fast": 0.7}  # period in seconds
PALETTE = np.array(
    [[230, 60, 60], [60, 200, 80], [70, 110, 240], [240, 200, 50], [200, 80, 220], [60, 210, 210]], dtype=np.float32
)


def class_names(num_classes: int) -> list[str]:
    """`num_classes` names: every pattern at the slow tempo first, then at the fast one."""
    names = [f"{p}-{t}" for t in TEMPOS for p in PATTERNS]
    if not 1 <= num_classes <= len(names):
        raise BadInputError(f"`classes` must be between 1 and {len(names)}, got {num_classes}")
    return names[:num_classes]


@dataclass(frozen=True)
class SynthConfig:
    videos: int = 40  # untrimmed videos (TAL layout)
    classes: int = 6  # action classes (at most 16)
    seed: int = 0
    size: int = 64  # frame side in pixels (square)
    fps: int = 10
    min_action: float = 1.0  # seconds; action lengths are log-uniform in [min_action, max_action]
    max_action: float = 30.0
    actions_per_video: tuple[int, int] = (2, 5)  # inclusive range
    distractors_per_video: tuple[int, int] = (1, 3)
    test_fraction: float = 0.25  # share of videos in the "test" subset (the rest is "train")
    clips_per_class: int = 6  # clip-classification layout: train clips per class (plus a third as many for val)
    clip_seconds: float = 3.0


@dataclass
class _Event:
    start: int  # frame
    end: int  # frame (exclusive)
    kind: str  # a class name or "distractor"
    colour: np.ndarray
    radius: float
    centre: tuple[float, float]
    phase: float
    path: np.ndarray | None = None  # distractors: (end-start, 2) positions


def _plan_video(rng: np.random.Generator, cfg: SynthConfig, names: list[str]) -> tuple[int, list[_Event]]:
    """Choose the actions (non-overlapping, separated by background) and distractors of one video."""
    fps, size = cfg.fps, cfg.size
    n_actions = int(rng.integers(cfg.actions_per_video[0], cfg.actions_per_video[1] + 1))
    lo, hi = math.log(cfg.min_action), math.log(cfg.max_action)
    t = float(rng.uniform(2.0, 8.0))  # leading background
    events: list[_Event] = []
    for _ in range(n_actions):
        length = math.exp(rng.uniform(lo, hi))
        start, end = int(round(t * fps)), int(round((t + length) * fps))
        end = max(end, start + 2)
        margin = size * 0.3
        events.append(
            _Event(
                start=start,
                end=end,
                kind=names[int(rng.integers(len(names)))],
                colour=PALETTE[int(rng.integers(len(PALETTE)))],
                radius=float(rng.uniform(0.07, 0.1) * size),
                centre=(float(rng.uniform(margin, size - margin)), float(rng.uniform(margin, size - margin))),
                phase=float(rng.uniform(0, 2 * math.pi)),
            )
        )
        t = end / fps + float(rng.uniform(2.0, 10.0))
    num_frames = int(round(t * fps))
    n_distractors = int(rng.integers(cfg.distractors_per_video[0], cfg.distractors_per_video[1] + 1))
    for _ in range(n_distractors):
        length = int(round(rng.uniform(1.0, 20.0) * fps))
        start = int(rng.integers(0, max(num_frames - length, 1)))
        # a smooth aperiodic path: integrated, damped random accelerations, kept inside the frame
        vel = np.cumsum(rng.normal(0, 0.25, (length, 2)), axis=0)
        vel -= np.linspace(0, 1, length)[:, None] * vel[-1:]  # no net drift
        pos = np.cumsum(vel * 0.5, axis=0) + rng.uniform(size * 0.25, size * 0.75, 2)
        pos = size * 0.15 + np.abs((pos - size * 0.15) % (2 * size * 0.7) - size * 0.7)  # reflect at the borders
        events.append(
            _Event(
                start=start,
                end=start + length,
                kind="distractor",
                colour=PALETTE[int(rng.integers(len(PALETTE)))],
                radius=float(rng.uniform(0.07, 0.1) * size),
                centre=(0.0, 0.0),
                phase=0.0,
                path=pos,
            )
        )
    return num_frames, events


def _actor_state(event: _Event, frame: int, fps: int, size: int) -> tuple[float, float, float, np.ndarray] | None:
    """(x, y, radius, colour) of an event's disc at `frame`, or None when it is not drawn."""
    k = frame - event.start
    if event.path is not None:
        x, y = event.path[k]
        return float(x), float(y), event.radius, event.colour
    pattern, tempo = event.kind.rsplit("-", 1)
    w = 2 * math.pi / TEMPOS[tempo]
    a = w * k / fps + event.phase
    cx, cy = event.centre
    amp = size * 0.18
    r, colour = event.radius, event.colour
    if pattern == "circle-cw":
        return cx + amp * math.cos(a), cy + amp * math.sin(a), r, colour
    if pattern == "circle-ccw":
        return cx + amp * math.cos(-a), cy + amp * math.sin(-a), r, colour
    if pattern == "swing-h":
        return cx + amp * math.sin(a), cy, r, colour
    if pattern == "swing-v":
        return cx, cy + amp * math.sin(a), r, colour
    if pattern == "pulse":
        return cx, cy, r * (1.0 + 0.6 * math.sin(a)), colour
    if pattern == "blink":
        return (cx, cy, r, colour) if math.sin(a) > -0.3 else None
    if pattern == "hue-cycle":
        i = (a / (2 * math.pi)) * len(PALETTE)
        j, f = int(i) % len(PALETTE), i - math.floor(i)
        return cx, cy, r, (1 - f) * PALETTE[j] + f * PALETTE[(j + 1) % len(PALETTE)]
    if pattern == "zigzag":
        tri = 2 * abs((a / (2 * math.pi)) % 1.0 - 0.5) * 2 - 1  # triangle wave in [-1, 1]
        return cx + amp * tri, cy + amp * math.sin(2 * a), r, colour
    raise ValueError(f"unknown pattern {pattern!r}")


def _render_frames(
    rng: np.random.Generator, num_frames: int, events: list[_Event], fps: int, size: int
) -> Iterator[np.ndarray]:
    """Yield the (size, size, 3) uint8 frames: drifting background, noise, then the discs alive at that frame."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(60, 160, 3).astype(np.float32)
    kx, ky = rng.uniform(0.1, 0.35, 2)
    drift = rng.uniform(0.3, 1.0) * rng.choice([-1, 1])
    noise = [rng.normal(0, 4, (size, size, 1)).astype(np.float32) for _ in range(5)]
    tint = rng.uniform(-25, 25, 3).astype(np.float32)
    by_start = sorted(events, key=lambda e: e.start)
    for f in range(num_frames):
        wave = np.sin(kx * xx + ky * yy + drift * f / fps * 2.0)
        img = base + wave[..., None] * tint + noise[f % len(noise)]
        for e in by_start:
            if e.start <= f < e.end:
                state = _actor_state(e, f, fps, size)
                if state is None:
                    continue
                x, y, r, colour = state
                d2 = (xx - x) ** 2 + (yy - y) ** 2
                alpha = np.clip(r + 0.5 - np.sqrt(d2), 0.0, 1.0)[..., None]  # anti-aliased edge
                img = img * (1 - alpha) + alpha * colour
        yield np.clip(img, 0, 255).astype(np.uint8)


def render_video(path: Path, frames, fps: int, size: int) -> None:
    """Encode RGB frames to H.264 (yuv420p) with PyAV; written to a temp name, then renamed.

    x264 runs on one thread, and every frame is rendered before the encoder opens: with its thread pool, or with
    frames rendered between its encoding calls, the same frames gave different files from run to run. Even so its
    output depends on what its process did before, which is why `generate` encodes each file in a process of its
    own.
    """
    import av

    frames = list(frames)  # (size, size, 3) uint8 each; a 2-minute default video is 15 MB
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream(
            "libx264", rate=fps, options={"preset": "veryfast", "crf": "18", "g": str(fps * 2), "threads": "1"}
        )
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    os.replace(tmp, path)


def _make_video(args: tuple[Path, str, SynthConfig, list[str], np.random.SeedSequence]) -> dict[str, Any]:
    path, vid, cfg, names, ss = args
    rng = np.random.default_rng(ss)
    num_frames, events = _plan_video(rng, cfg, names)
    render_video(path, _render_frames(rng, num_frames, events, cfg.fps, cfg.size), cfg.fps, cfg.size)
    actions = [e for e in events if e.kind != "distractor"]
    return {
        "id": vid,
        "frames": num_frames,
        "segments": [(e.start / cfg.fps, e.end / cfg.fps, e.kind) for e in actions],
        "distractors": sum(e.kind == "distractor" for e in events),
    }


def _make_clip(args: tuple[Path, str, SynthConfig, np.random.SeedSequence]) -> dict[str, Any]:
    path, label, cfg, ss = args
    rng = np.random.default_rng(ss)
    n = int(round(cfg.clip_seconds * cfg.fps))
    margin = cfg.size * 0.3
    event = _Event(
        start=0,
        end=n,
        kind=label,
        colour=PALETTE[int(rng.integers(len(PALETTE)))],
        radius=float(rng.uniform(0.07, 0.1) * cfg.size),
        centre=(float(rng.uniform(margin, cfg.size - margin)), float(rng.uniform(margin, cfg.size - margin))),
        phase=float(rng.uniform(0, 2 * math.pi)),
    )
    render_video(path, _render_frames(rng, n, [event], cfg.fps, cfg.size), cfg.fps, cfg.size)
    return {"path": str(path), "label": label}


def generate(
    out: str | os.PathLike,
    cfg: SynthConfig = SynthConfig(),
    *,
    workers: int = 1,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the synthetic dataset to `out` (a new or empty directory, or any with force=True); returns a summary."""
    out = Path(out)
    if cfg.videos < 1:
        raise BadInputError(f"`videos` must be at least 1, got {cfg.videos}")
    if cfg.size < 16:
        raise BadInputError(f"`size` must be at least 16, got {cfg.size}")
    if cfg.fps < 1:
        raise BadInputError(f"`fps` must be at least 1, got {cfg.fps}")
    if not 0 < cfg.min_action <= cfg.max_action:
        raise BadInputError(f"need 0 < `min_action` ≤ `max_action`, got {cfg.min_action}, {cfg.max_action}")
    if cfg.clips_per_class < 0:
        raise BadInputError(f"`clips_per_class` must be at least 0, got {cfg.clips_per_class}")
    if not 0.0 <= cfg.test_fraction < 1.0:
        raise BadInputError(f"`test_fraction` must be in [0, 1), got {cfg.test_fraction}")
    if workers < 1:
        raise BadInputError(f"`workers` must be at least 1, got {workers}")
    names = class_names(cfg.classes)
    check_output_dir(out, force)
    if out.is_dir() and force:
        for sub in ("videos", "clips"):
            shutil.rmtree(out / sub, ignore_errors=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)

    root_ss = np.random.SeedSequence(cfg.seed)
    video_ss, clip_ss, split_ss = root_ss.spawn(3)
    width = len(str(cfg.videos))
    jobs = [
        (out / "videos" / f"synth_{i:0{width}d}.mp4", f"synth_{i:0{width}d}", cfg, names, ss)
        for i, ss in enumerate(video_ss.spawn(cfg.videos))
    ]
    n_val = max(1, cfg.clips_per_class // 3) if cfg.clips_per_class else 0
    clip_jobs = []
    for c, (label, ss) in enumerate(zip(names, clip_ss.spawn(len(names)), strict=True)):
        for k, css in enumerate(ss.spawn(cfg.clips_per_class + n_val)):
            subset = "train" if k < cfg.clips_per_class else "val"
            folder = out / "clips" / subset / label
            folder.mkdir(parents=True, exist_ok=True)
            clip_jobs.append((folder / f"{label}_{c:02d}_{k:03d}.mp4", label, cfg, css))
    total = len(jobs) + len(clip_jobs)

    # Each video and clip is encoded in a process of its own, forked from a fork server that does nothing else:
    # x264's output for the same frames depends on what its process did before (encoding, and even a training step
    # run by the caller), so workers that took several jobs, or children forked from the caller, made the bytes depend
    # on --workers and on the calling program's history. With the frames rendered before the encoder opens
    # (render_video), the bytes are the same for a seed whatever --workers and whoever calls this (docs/synthetic.md).
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["re2tal_cli.data.synth", "av"])  # imported once, in the server
    else:
        context = multiprocessing.get_context("spawn")
    done = 0

    def finished() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    with context.Pool(max(1, workers), maxtasksperchild=1) as pool:
        results = []
        for r in pool.imap(_make_video, jobs):
            results.append(r)
            finished()
        for _ in pool.imap(_make_clip, clip_jobs):
            finished()

    order = np.random.default_rng(split_ss).permutation(cfg.videos)
    n_test = int(round(cfg.test_fraction * cfg.videos)) if cfg.videos > 1 else 0
    test_ids = {results[i]["id"] for i in order[:n_test]}
    entries = {}
    for r in results:
        entries[r["id"]] = VideoEntry(
            id=r["id"],
            subset="test" if r["id"] in test_ids else "train",
            duration=r["frames"] / cfg.fps,
            fps=float(cfg.fps),
            segments=[Segment(s, e, label) for s, e, label in r["segments"]],
        )
    save_annotations(out / "annotations.json", entries, version="re2tal-synthetic-1", classes=names)
    summary = {
        "out": str(out),
        "videos": cfg.videos,
        "frames": sum(r["frames"] for r in results),
        "instances": sum(len(r["segments"]) for r in results),
        "distractors": sum(r["distractors"] for r in results),
        "clips": len(clip_jobs),
        "classes": names,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
    }
    write_json_atomic(out / "synth.json", summary)
    return summary
