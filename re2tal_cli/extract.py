"""The core of `re2tal extract`: backbone features for feature-based TAL, one safetensors file per video.

Two input arrangements (Re²TAL Fig. 4):

- snippet (4a): clips of `clip` frames (`frame_step` apart) starting every `stride` frames, each pooled over time
  and space to one C-vector: N ≈ num_frames / stride features;
- frames (4b): the video's frames (every `frame_step`-th, or `num_frames` evenly) go through the backbone as long
  windows of `window` frames, whose temporal outputs are concatenated: one feature per `temporal_stride` input frames.

Each output `FEATS/<vid>.safetensors` holds `feats` (C, N) float32 and `times` (N,) — the centre, in seconds, of the
span of frames behind each feature (a frame at τ lasts [τ, τ + 1/fps)) — with string metadata: mode, stride and
window (source frames per step and per feature), fps, arch, source checkpoint, and the extraction settings.
`FEATS/index.json` lists every video's file and the failures. Outputs are written to a temp file and renamed, so an
existing file is complete: a rerun skips it (when its settings match) and extracts only what is missing. A missing
or undecodable video is recorded and skipped; it never stops the run.

Under torchrun (`train/distributed.py`) the videos are shared out over the processes — process r takes every
world-size-th video from the r-th, on the GPU of its LOCAL_RANK — and each writes its own videos' files; after all
have finished, rank 0 writes index.json for all of them, and every process returns the whole run's result. The
outputs are those of one process: each video's features depend on that video alone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from re2tal_cli.errors import BadDataError, BadInputError
from re2tal_cli.fileio import atomic_path, check_creatable, write_json_atomic

__all__ = ["ExtractSettings", "ExtractResult", "extract_features", "read_features"]

INDEX = "index.json"
FORMAT = "re2tal-features/2"  # /2: `times` are span centres (/1 had the mean of the frames' start times)


@dataclass(frozen=True)
class ExtractSettings:
    mode: str = "snippet"  # "snippet" (Fig. 4a) or "frames" (Fig. 4b)
    clip: int | None = None  # snippet: frames per clip (default: the backbone's pretraining clip length)
    stride: int | None = None  # snippet: source frames between clip starts (default: clip // 4, at least 1)
    frame_step: int = 1  # source frames between the frames of a clip/window
    num_frames: int | None = None  # frames mode: this many frames evenly over the video (default: every frame_step-th)
    window: int = 256  # frames mode: frames per backbone call (features are concatenated)
    size: int | None = None  # square input side (default: the backbone's pretraining size)
    batch: int = 8  # snippets per backbone call
    device: str = "cpu"
    amp: bool = False  # autocast (bf16 on CPU, fp16 on CUDA)


@dataclass
class ExtractResult:
    out: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # complete outputs from an earlier run
    failed: dict[str, str] = field(default_factory=dict)  # video id → one-line reason
    frames: int = 0
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _videos(data: Path, subset: str | None) -> list[tuple[str, Path | None, float | None]]:
    """(id, media path or None, annotated fps) for a dataset dir, or every video file of a plain folder."""
    from re2tal_cli.data.datasets import find_media, load_annotations
    from re2tal_cli.data.video import VIDEO_EXTENSIONS

    if (data / "annotations.json").is_file():
        entries = load_annotations(data)
        chosen = [e for e in entries.values() if subset is None or e.subset == subset]
        if not chosen:
            raise BadDataError(f"{data}: no videos in subset {subset!r}")
        return [(e.id, find_media(data, e.id), e.fps) for e in chosen]
    if subset is not None:
        raise BadInputError(f"{data}: `subset` needs a dataset directory with annotations.json")
    folder = data / "videos" if (data / "videos").is_dir() else data
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise BadDataError(f"{data}: no annotations.json and no video files")
    return [(p.stem, p, None) for p in files]


def check_settings(settings: ExtractSettings) -> None:
    """What can be checked without the backbone: modes, and that every given count is positive."""
    if settings.mode not in ("snippet", "frames"):
        raise BadInputError(f"`mode` must be snippet or frames, got {settings.mode!r}")
    for name in ("clip", "stride", "frame_step", "num_frames", "window", "size", "batch"):
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadInputError(f"`{name}` must be a positive integer, got {value!r}")


def resolve_settings(settings: ExtractSettings, model, spec) -> dict[str, Any]:
    """Fill defaults from the backbone's input spec and check them against the model's constraints."""
    size = settings.size or spec.image_size
    clip = settings.clip or spec.num_frames
    min_frames = max(getattr(model, "min_frames", 1), 1)
    r: dict[str, Any] = {"mode": settings.mode, "frame_step": settings.frame_step, "size": size}
    if settings.mode == "snippet":
        if clip % min_frames:
            raise BadInputError(f"`clip` {clip} must be a multiple of {min_frames} for this backbone")
        r.update(clip=clip, stride=settings.stride or max(clip // 4, 1), num_frames=None, window=None)
    else:
        window = settings.window
        unit = max(min_frames, model.temporal_stride)
        if window % unit:
            raise BadInputError(f"`window` {window} must be a positive multiple of {unit} for this backbone")
        if settings.num_frames is not None and settings.num_frames % model.temporal_stride:
            raise BadInputError(
                f"`num_frames` {settings.num_frames} must be a multiple of the backbone's temporal stride "
                f"{model.temporal_stride}"
            )
        r.update(clip=None, stride=None, num_frames=settings.num_frames, window=window)
    return r


def _plan(resolved: dict[str, Any], n: int, temporal_stride: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The backbone inputs of one video: (clips as arrays of frame numbers, per-feature frame groups)."""
    from re2tal_cli.data.sampling import snippet_indices, uniform_indices

    step = resolved["frame_step"]
    if resolved["mode"] == "snippet":
        clips = snippet_indices(n, resolved["clip"], resolved["stride"], step)  # (N, clip)
        return clips, [c for c in clips]
    if resolved["num_frames"]:
        frames = uniform_indices(n, resolved["num_frames"])
    else:
        frames = np.arange(0, n, step, dtype=np.int64)
        pad = (-len(frames)) % temporal_stride  # whole temporal steps: repeat the last frame
        frames = np.concatenate([frames, np.full(pad, frames[-1], dtype=np.int64)])
    w = resolved["window"]
    windows = [frames[i : i + w] for i in range(0, len(frames), w)]
    last = windows[-1]
    if len(last) % temporal_stride:  # cannot happen after the padding above; kept as a guard
        raise AssertionError("window length is not a multiple of the temporal stride")
    groups = [frames[i : i + temporal_stride] for i in range(0, len(frames), temporal_stride)]
    return windows, groups


def _frames_stream(source, needed: np.ndarray, preprocess: Callable) -> Iterator[tuple[int, Any]]:
    """(frame number, preprocessed frame) for the needed frames, in order: decode front to back when dense,
    seek in chunks when sparse (both give the same frames)."""
    needed = np.unique(needed)
    if len(needed) > 0.5 * source.num_frames or not hasattr(source, "index"):
        want = set(needed.tolist())
        for i, frame in source.iter_frames():
            if i in want:
                yield i, preprocess(frame)
        return
    for k in range(0, len(needed), 64):
        chunk = needed[k : k + 64]
        for i, frame in zip(chunk.tolist(), source.read(chunk, strategy="seek"), strict=True):
            yield i, preprocess(frame)


def features_of_video(source, model, resolved: dict[str, Any], settings: ExtractSettings, spec, on_frames=None) -> dict:
    """One video's features as `resolved` (`resolve_settings`) arranges its frames: {"feats" (C, N), "times" (N,)
    centres in seconds, "stride" and "window" (source frames per step and per feature), "frames" decoded}."""
    import torch

    from re2tal_cli.data.transforms import eval_transform, normalize

    size = resolved["size"]

    def preprocess(frame: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(frame).permute(2, 0, 1)[:, None].float().div_(255.0)  # (3, 1, H, W)
        return (eval_transform(x, size)[:, 0] * 255.0).round_().to(torch.uint8)  # (3, size, size), kept small

    n = source.num_frames
    ts = model.temporal_stride
    clips, groups = _plan(resolved, n, ts)
    needed = np.concatenate([np.asarray(c) for c in clips])
    device = torch.device(settings.device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)
        if settings.amp
        else torch.autocast(device.type, enabled=False)
    )
    mean, std = spec.mean, spec.std

    def run(batch_clips: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(batch_clips).to(device, non_blocking=True).float().div_(255.0)  # (B, 3, T, H, W)
        x = normalize(x, mean, std)
        with torch.inference_mode(), autocast:
            y = model.temporal_features(x)  # (B, C, T')
        return y.float().cpu()

    buffer: dict[int, torch.Tensor] = {}
    outputs: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []
    next_clip = 0
    seen = 0
    last_needed = [int(np.max(c)) for c in clips]
    on_frames = on_frames or (lambda count: None)
    for i, frame in _frames_stream(source, needed, preprocess):
        buffer[i] = frame
        seen += 1
        if seen % 64 == 0:
            on_frames(64)
        while next_clip < len(clips) and last_needed[next_clip] <= i:
            clip = clips[next_clip]
            pending.append(torch.stack([buffer[int(j)] for j in clip], dim=1))  # (3, T, size, size)
            next_clip += 1
            if resolved["mode"] == "frames" or len(pending) == settings.batch:
                outputs.append(run(pending))
                pending = []
            if next_clip < len(clips):  # drop frames no later clip needs
                first = int(np.min(clips[next_clip]))
                for j in [j for j in buffer if j < first]:
                    del buffer[j]
    on_frames(seen % 64)
    if next_clip < len(clips):
        raise BadDataError(f"{source.path}: decoding stopped early (frames needed up to {last_needed[-1]}, of {n})")
    if pending:
        outputs.append(run(pending))
    if resolved["mode"] == "snippet":
        feats = torch.cat([o.mean(dim=-1) for o in outputs]).T  # (C, N)
    else:
        feats = torch.cat([o[0] for o in outputs], dim=-1)  # (C, N)
    # a frame at time τ lasts [τ, τ + 1/fps): a feature is centred halfway from its first frame's start to its last
    # frame's end (ActionFormer's convention: a clip's feature sits at its middle)
    times = np.asarray(source.times)
    ends = 1.0 / source.fps
    centres = np.array(
        [(times[int(np.min(g))] + times[int(np.max(g))] + ends) / 2 for g in groups[: feats.shape[1]]], dtype=np.float32
    )
    if len(centres) != feats.shape[1]:
        raise AssertionError(f"{len(centres)} feature times for {feats.shape[1]} features")
    if resolved["mode"] == "snippet":
        stride_frames = float(resolved["stride"])
        window_frames = float((resolved["clip"] - 1) * resolved["frame_step"] + 1)
    else:
        per_frame = n / resolved["num_frames"] if resolved["num_frames"] else resolved["frame_step"]
        stride_frames = float(per_frame * ts)
        window_frames = stride_frames
    return {
        "feats": feats.contiguous(),
        "times": torch.from_numpy(centres),
        "stride": stride_frames,
        "window": window_frames,
        "frames": seen,
    }


def _metadata_matches(path: Path, wanted: dict[str, str]) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "feats" not in f.keys():  # noqa: SIM118 - safe_open has no __contains__
                return False
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a complete output
        return False
    return all(meta.get(k) == v for k, v in wanted.items())


def _save_atomic(path: Path, tensors: dict, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def extract_features(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    settings: ExtractSettings = ExtractSettings(),
    *,
    arch: str | None = None,
    subset: str | None = None,
    force: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> ExtractResult:
    """Extract features of every video of `data` into `out` (see module docstring); never stops at a bad video.

    `progress` receives dicts: {"event": "start", "videos": n, "arch", "arch_from"} once, then {"event": "frames",
    "count": k} as frames are decoded, and {"event": "video", "id", "status": written|skipped|failed} per video.
    Under torchrun, `progress` reports this process's share of the videos.
    """
    from re2tal_cli.train import distributed
    from re2tal_cli.train.loop import resolve_device

    data, out = Path(data), Path(out)
    check_settings(settings)
    if not data.exists():
        raise BadDataError(f"{data}: no such dataset directory")
    check_creatable(out, directory=True)
    videos = _videos(data, subset)
    with distributed.process_group(resolve_device(settings.device, "none")) as (process, device):
        shard = videos[process.rank :: process.world_size]
        result, index_videos, model, loaded = _extract(checkpoint, shard, out, replace(settings, device=str(device)),
                                                       arch, force, progress)  # fmt: skip
        if process.world_size > 1:
            result, index_videos = _merged(distributed.gathered((result, index_videos)), [v[0] for v in videos])
        if process.is_main:
            write_json_atomic(
                out / INDEX,
                {
                    "format": FORMAT,
                    "arch": loaded.arch,
                    "source": str(checkpoint),
                    "checkpoint": str(checkpoint)
                    if str(checkpoint).startswith("hf://")
                    else str(Path(checkpoint).resolve()),
                    "settings": result.settings,
                    "channels": int(model.out_channels),
                    "videos": index_videos,
                    "failed": result.failed,
                },
            )
        distributed.barrier()  # index.json is there when any process returns
    return result


def _merged(shares: list[tuple[ExtractResult, dict]], order: list[str]) -> tuple[ExtractResult, dict[str, Any]]:
    """The processes' (result, index entries) as one, the videos in the dataset's order."""
    rank_of = {vid: rank for rank, (result, entries) in enumerate(shares) for vid in [*entries, *result.failed]}
    first = shares[0][0]
    merged = ExtractResult(out=first.out, settings=first.settings, frames=sum(r.frames for r, _ in shares),
                           seconds=max(r.seconds for r, _ in shares))  # fmt: skip
    entries: dict[str, Any] = {}
    for vid in order:
        result, share_entries = shares[rank_of[vid]]
        if vid in result.failed:
            merged.failed[vid] = result.failed[vid]
            continue
        entries[vid] = share_entries[vid]
        (merged.written if vid in result.written else merged.skipped).append(vid)
    return merged, entries


def _extract(checkpoint, videos, out: Path, settings: ExtractSettings, arch, force: bool, progress):
    """The features of `videos` (this process's share) written to `out`; (result, index entries, model, loaded)."""
    from re2tal_cli.checkpoint import load_backbone
    from re2tal_cli.data.video import open_video

    loaded = load_backbone(checkpoint, arch)
    model = loaded.model.eval().to(settings.device)
    spec = loaded.input
    resolved = resolve_settings(settings, model, spec)
    # what must match for an existing output to be reused
    tag = {
        "settings": json.dumps(resolved, sort_keys=True),
        "arch": loaded.arch,
        "source": str(checkpoint),
        "format": FORMAT,
    }
    out.mkdir(parents=True, exist_ok=True)
    notify = progress or (lambda event: None)
    notify({"event": "start", "videos": len(videos), "arch": loaded.arch, "arch_from": loaded.arch_from})
    result = ExtractResult(out=str(out), settings={**resolved, "arch": loaded.arch, "source": str(checkpoint)})
    index_videos: dict[str, Any] = {}
    t0 = time.perf_counter()
    for vid, media, fps in videos:
        target = out / f"{vid}.safetensors"
        if not force and target.is_file():
            if _metadata_matches(target, tag):
                result.skipped.append(vid)
                index_videos[vid] = {"file": target.name}
                notify({"event": "video", "id": vid, "status": "skipped"})
                continue
            if _metadata_matches(target, {}):  # a readable file from other settings (an unreadable one is replaced)
                raise BadInputError(
                    f"{target}: was extracted with other settings; pass `force` to overwrite it, or use another `out`"
                )
        try:
            if media is None:
                raise BadDataError(f"{vid}: no video file in videos/ or frames/")
            source = open_video(media, fps)
            r = features_of_video(
                source, model, resolved, settings, spec, lambda k: notify({"event": "frames", "count": k})
            )
        except BadDataError as error:
            result.failed[vid] = str(error)
            notify({"event": "video", "id": vid, "status": "failed", "error": str(error)})
            continue
        metadata = {
            **tag,
            "stride": f"{r['stride']:g}",
            "window": f"{r['window']:g}",
            "fps": f"{source.fps:.6g}",
            "num_video_frames": str(source.num_frames),
            "duration": f"{source.duration:.6g}",
        }
        _save_atomic(target, {"feats": r["feats"], "times": r["times"]}, metadata)
        result.written.append(vid)
        result.frames += r["frames"]
        index_videos[vid] = {"file": target.name, "num_features": int(r["feats"].shape[1])}
        notify({"event": "video", "id": vid, "status": "written"})
    result.seconds = time.perf_counter() - t0
    return result, index_videos, model, loaded


def read_features(path: str | os.PathLike) -> tuple[Any, dict[str, str]]:
    """(feats (C, N) tensor, metadata) of one extracted file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("feats"), dict(f.metadata() or {})
    except Exception as error:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise BadDataError(f"{path}: not a features file ({error})") from None
