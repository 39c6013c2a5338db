"""`re2tal data features`: published per-video feature files (the ActionFormer release's, OpenTAD's) made a features
directory in `re2tal extract`'s format (extract.py), which `train-tal --features` and `import --features` read.

Published features are one file per video, `<prefix><video id>.npy` (or `.npz`, the array named `key`; OpenTAD names
it `feats`), shaped (T, C): time first, as the ActionFormer release and OpenTAD store them (`layout` ct for (C, T)).
Feature i was computed from the frames [i·stride, i·stride + window) of the video at `fps` frames per second, and
its time is the centre of their span, (i·stride + window/2) / fps seconds: where ActionFormer and OpenTAD place it
(their grid position of a time t is (t·fps − window/2) / stride). `fps`, when given, applies to every video, as
ActionFormer's `default_fps` does (TSP features were computed on videos re-encoded at 15 fps); otherwise each
video's annotated fps is used.

Presets (the ActionFormer release's README and configs, which OpenTAD's configs repeat):

- actionformer-thumos-i3d: `i3d_features/<video id>.npy`, (T, 2048), clips of 16 frames every 4 frames at each
  video's own frame rate (thumos14.json's per-video "fps", about 30);
- actionformer-anet-tsp: `tsp_features/v_<video id>.npy`, (T, 512), clips of 16 frames every 16 frames at 15 fps.

The output is written under a temporary name and renamed, so it appears whole or not at all. A video whose file is
missing or unreadable is recorded in index.json under `failed` and skipped; files whose channel counts differ stop
the run (they are not one kind of feature, or `layout` is wrong). No re2tal backbone made these features, and
index.json says so (`arch` null): a run trained on them trains and evaluates like any features run, but `detect`,
which computes a new video's features with the backbone that made them, cannot use it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from re2tal_cli.errors import BadDataError, BadInputError, UnknownNameError
from re2tal_cli.text import plural

__all__ = ["PRESETS", "FeatureSettings", "import_features", "feature_settings"]

LAYOUTS = ("tc", "ct")
EXTENSIONS = (".npy", ".npz")
MADE_BY = "re2tal data features"


@dataclass(frozen=True)
class FeatureSettings:
    stride: int | None = None  # source frames between the starts of consecutive features
    window: int | None = None  # source frames behind one feature
    fps: float | None = None  # every video's frame rate (None: each video's annotated fps)
    layout: str = "tc"  # tc: arrays are (time, channels); ct: (channels, time)
    prefix: str = ""  # file name = prefix + video id (unless the id already starts with it)
    key: str = "feats"  # the array of an .npz file


PRESETS = {
    "actionformer-thumos-i3d": FeatureSettings(stride=4, window=16),
    "actionformer-anet-tsp": FeatureSettings(stride=16, window=16, fps=15.0, prefix="v_"),
}


def feature_settings(preset: str | None = None, **given: Any) -> FeatureSettings:
    """A preset's settings (or none) with every `given` value that is not None in its place, checked."""
    if preset is not None and preset not in PRESETS:
        raise UnknownNameError("preset", preset, PRESETS, param="preset")
    settings = replace(PRESETS[preset] if preset else FeatureSettings(),
                       **{k: v for k, v in given.items() if v is not None})  # fmt: skip
    for name in ("stride", "window"):
        value = getattr(settings, name)
        if value is None:
            raise BadInputError(f"`{name}` is needed (source frames per feature step and per feature): give it, "
                                f"or a `preset` ({', '.join(PRESETS)})")  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInputError(f"`{name}` must be a positive integer, got {value!r}")
    if settings.fps is not None and not settings.fps > 0:
        raise BadInputError(f"`fps` must be positive, got {settings.fps!r}")
    if settings.layout not in LAYOUTS:
        raise BadInputError(f"`layout` must be tc (time, channels) or ct (channels, time), got {settings.layout!r}")
    return settings


def _file_name(vid: str, prefix: str) -> str:
    """A video's file name without extension: the prefix and its id, unless the id already starts with it (ids
    converted with `re2tal data convert activitynet --id-prefix v_` are the TSP files' names)."""
    return vid if vid.startswith(prefix) else prefix + vid


def _file_of(src: Path, vid: str, prefix: str) -> Path | None:
    name = _file_name(vid, prefix)
    return next((p for p in (src / f"{name}{ext}" for ext in EXTENSIONS) if p.is_file()), None)


def _read_array(path: Path, settings: FeatureSettings) -> np.ndarray:
    """One published file's features as (C, T) float32."""
    import zipfile

    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if settings.key not in loaded.files:
                    raise BadDataError(f"{path}: no array {settings.key!r} (arrays: {', '.join(loaded.files)})")
                loaded = loaded[settings.key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise BadDataError(f"{path}: not a NumPy file ({error})") from None
    if loaded.ndim != 2 or not np.issubdtype(loaded.dtype, np.number):
        raise BadDataError(f"{path}: expected a 2-D numeric array, got shape {loaded.shape} of {loaded.dtype}")
    feats = loaded.T if settings.layout == "tc" else loaded
    if feats.shape[1] == 0:
        raise BadDataError(f"{path}: no features (shape {loaded.shape})")
    if not np.isfinite(feats).all():
        raise BadDataError(f"{path}: holds NaN or infinite values")
    return np.ascontiguousarray(feats, dtype=np.float32)


def feature_times(count: int, stride: int, window: int, fps: float) -> np.ndarray:
    """The centres in seconds of `count` features, feature i made of frames [i·stride, i·stride + window)."""
    return ((np.arange(count) * stride + window / 2) / fps).astype(np.float32)


def import_features(
    src: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset: str | None = None,
    stride: int | None = None,
    window: int | None = None,
    fps: float | None = None,
    layout: str | None = None,
    prefix: str | None = None,
    key: str | None = None,
    subsets: Sequence[str] | None = None,
    force: bool = False,
    progress: Callable[[int, int | None, str], None] | None = None,
) -> dict[str, Any]:
    """Convert the published feature files in `src` of the videos of the dataset directory `data` (its `subsets`,
    or all) into the features directory `out` (see the module docstring); `preset` fills the settings that are not
    given. Returns {"out", "source", "written", "features", "channels", "settings", "failed": {video: reason},
    "warnings"}; `progress(done, total, info)` follows the videos."""
    from safetensors.numpy import save_file

    from re2tal_cli.data.datasets import ANNOTATIONS, load_annotations
    from re2tal_cli.extract import FORMAT, INDEX
    from re2tal_cli.fileio import atomic_dir, check_output_dir, write_json_atomic
    from re2tal_cli.train.data import subset_entries

    settings = feature_settings(preset, stride=stride, window=window, fps=fps, layout=layout, prefix=prefix, key=key)
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise BadDataError(f"{src}: no such folder of feature files")
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents:
        raise BadInputError(f"{out}: would replace the source folder {src}; choose another `out`")
    annotations = load_annotations(data)
    where = Path(data) / ANNOTATIONS
    entries = ([e for s in dict.fromkeys(subsets) for e in subset_entries(annotations, s, where)] if subsets
               else list(annotations.values()))  # fmt: skip
    if settings.fps is None:
        unknown = [e.id for e in entries if not e.fps]
        if unknown:
            raise BadDataError(f"{where}: {plural(len(unknown), 'video')} without an \"fps\" (first: {unknown[0]}); "
                               "give the features' `fps`")  # fmt: skip
    check_output_dir(out, force)
    files = {e.id: _file_of(src, e.id, settings.prefix) for e in entries}
    if not any(files.values()):
        example = _file_name(entries[0].id, settings.prefix)
        raise BadDataError(f"{src}: no feature file for any of the {plural(len(entries), 'video')} "
                           f"(looked for {example}.npy or .npz, …; is `prefix` right?)")  # fmt: skip
    notify = progress or (lambda done, total, info="": None)
    failed: dict[str, str] = {}
    videos: dict[str, Any] = {}
    first: tuple[Path, int] | None = None
    long_or_short: list[str] = []
    with atomic_dir(out) as tmp:
        for k, entry in enumerate(entries):
            notify(k, len(entries), entry.id)
            path = files[entry.id]
            try:
                if path is None:
                    raise BadDataError(f"{src}: no {_file_name(entry.id, settings.prefix)}.npy or .npz")
                feats = _read_array(path, settings)
            except BadDataError as error:
                failed[entry.id] = str(error)
                continue
            if first is None:
                first = (path, feats.shape[0])
            elif feats.shape[0] != first[1]:
                order = "(time, channels)" if settings.layout == "tc" else "(channels, time)"
                raise BadDataError(f"{path}: {feats.shape[0]} channels, but {first[0]} has {first[1]} "
                                   f"(`layout` {settings.layout} reads an array as {order})")  # fmt: skip
            video_fps = settings.fps or entry.fps
            count = feats.shape[1]
            span = ((count - 1) * settings.stride + settings.window) / video_fps
            if abs(span - entry.duration) > 0.1 * entry.duration + settings.window / video_fps:
                long_or_short.append(f"{entry.id} ({span:.1f} s of features, {entry.duration:.1f} s annotated)")
            metadata = {
                "format": FORMAT,
                "made_by": MADE_BY,
                "source": str(path.resolve()),
                "stride": f"{settings.stride:g}",
                "window": f"{settings.window:g}",
                "fps": f"{video_fps:.10g}",
                "duration": f"{entry.duration:.6g}",
            }
            times = feature_times(count, settings.stride, settings.window, video_fps)
            save_file({"feats": feats, "times": times}, str(tmp / f"{entry.id}.safetensors"), metadata=metadata)
            videos[entry.id] = {"file": f"{entry.id}.safetensors", "num_features": count}
        notify(len(entries), len(entries), "")
        if first is None:
            raise BadDataError(f"{src}: no readable feature file (first failure: {next(iter(failed.values()))})")
        recorded = {"preset": preset, **asdict(settings)}
        write_json_atomic(tmp / INDEX, {
            "format": FORMAT,
            "made_by": MADE_BY,
            "arch": None,  # no re2tal backbone made these features
            "source": str(src.resolve()),
            "settings": recorded,
            "channels": first[1],
            "videos": videos,
            "failed": failed,
        })  # fmt: skip
    warnings = []
    if long_or_short:
        warnings.append(f"{plural(len(long_or_short), 'video')} whose features' span and annotated duration differ by "
                        f"over 10 % (first: {long_or_short[0]}): check the stride, window and fps")  # fmt: skip
    return {
        "out": str(out),
        "source": str(src),
        "written": len(videos),
        "features": sum(v["num_features"] for v in videos.values()),
        "channels": first[1],
        "settings": recorded,
        "failed": failed,
        "warnings": warnings,
    }
