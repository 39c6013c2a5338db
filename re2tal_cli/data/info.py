"""`re2tal data info`: what a dataset directory holds, and what is wrong with it.

Videos per subset, durations, classes and their instances, instances per length bin (XS…XL, DETAD's edges: those of
THUMOS-14 when the median action is short, those of ActivityNet otherwise), and the videos that are missing or that
PyAV cannot read. Reading a video here means indexing it (demuxing packets, no decoding), so a large dataset is
checked in seconds per thousand videos.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from re2tal_cli.data.datasets import find_media, load_annotations
from re2tal_cli.errors import BadDataError
from re2tal_cli.evaluate.breakdown import ANET_LENGTH_BINS, THUMOS_LENGTH_BINS  # one definition, shared

__all__ = ["dataset_info", "info_table", "length_bins"]

BIN_SCHEMES = {"thumos": THUMOS_LENGTH_BINS, "anet": ANET_LENGTH_BINS}


def length_bins(lengths: np.ndarray, scheme: str = "auto") -> tuple[str, tuple[tuple[str, float], ...]]:
    """The bin scheme to use: `auto` picks THUMOS's edges when the median action is under 30 s."""
    if scheme == "auto":
        scheme = "thumos" if len(lengths) == 0 or float(np.median(lengths)) < 30.0 else "anet"
    if scheme not in BIN_SCHEMES:
        raise BadDataError(f"`bins`: unknown bin scheme {scheme!r}; use auto, thumos or anet")
    return scheme, BIN_SCHEMES[scheme]


def dataset_info(
    root: str | os.PathLike,
    *,
    check_videos: bool = True,
    bins: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Summary of a dataset directory as a JSON-ready dict (see module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise BadDataError(f"{root}: not a directory")
    entries = load_annotations(root)

    subsets: dict[str, dict[str, Any]] = {}
    classes: dict[str, int] = {}
    lengths, missing, unreadable, mismatched = [], [], [], []
    for n, e in enumerate(entries.values(), start=1):
        s = subsets.setdefault(e.subset, {"videos": 0, "duration_s": 0.0, "instances": 0, "ambiguous_spans": 0})
        s["videos"] += 1
        s["duration_s"] += e.duration
        s["instances"] += len(e.segments)
        s["ambiguous_spans"] += len(e.ambiguous)
        for seg in e.segments:
            classes[seg.label] = classes.get(seg.label, 0) + 1
            lengths.append(seg.end - seg.start)
        if check_videos:
            media = find_media(root, e.id)
            if media is None:
                missing.append(e.id)
            else:
                try:
                    from re2tal_cli.data.video import open_video

                    source = open_video(media, e.fps)
                    if abs(source.duration - e.duration) > max(1.0, 0.02 * e.duration):
                        mismatched.append(
                            {"id": e.id, "annotated_s": round(e.duration, 3), "video_s": round(source.duration, 3)}
                        )
                except BadDataError as error:
                    unreadable.append({"id": e.id, "path": str(media), "error": str(error)})
        if progress:
            progress(n, len(entries))

    arr = np.asarray(lengths, dtype=np.float64)
    scheme, edges = length_bins(arr, bins)
    upper = np.array([high for _, high in edges[:-1]])
    which = np.searchsorted(upper, arr, side="left")
    counts, low = {}, 0.0
    bin_rows = []
    for b, (name, high) in enumerate(edges):
        counts[name] = int((which == b).sum())
        bin_rows.append({"name": name, "low_s": low, "high_s": None if np.isinf(high) else high, "count": counts[name]})
        low = high
    durations = np.asarray([e.duration for e in entries.values()], dtype=np.float64)
    extra_videos = []
    if check_videos and (root / "videos").is_dir():
        from re2tal_cli.data.video import VIDEO_EXTENSIONS

        known = set(entries)
        extra_videos = sorted(
            p.name for p in (root / "videos").iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.stem not in known
        )
    for s in subsets.values():
        s["duration_s"] = round(s["duration_s"], 3)
    return {
        "root": str(root),
        "videos": len(entries),
        "subsets": dict(sorted(subsets.items())),
        "duration_s": {
            "total": round(float(durations.sum()), 3),
            "mean": round(float(durations.mean()), 3) if len(durations) else 0.0,
            "min": round(float(durations.min()), 3) if len(durations) else 0.0,
            "max": round(float(durations.max()), 3) if len(durations) else 0.0,
        },
        "classes": dict(sorted(classes.items())),
        "instances": int(len(arr)),
        "instance_length_s": {
            "mean": round(float(arr.mean()), 3) if len(arr) else 0.0,
            "median": round(float(np.median(arr)), 3) if len(arr) else 0.0,
        },
        "length_bins": {"scheme": scheme, "bins": bin_rows},
        "checked_videos": check_videos,
        "missing": missing,
        "unreadable": unreadable,
        "duration_mismatch": mismatched,
        "unannotated_videos": extra_videos,
    }


def info_table(info: dict[str, Any]):
    """A `dataset_info` result's tables as one long pandas DataFrame: a row per subset (`table` subset: videos,
    duration_s, instances, ambiguous_spans), per length bin (`table` length_bin: instances, low_s, high_s — high
    empty for the unbounded last bin) and per class (`table` class: instances), each under `name`."""
    import pandas as pd

    records = [{"table": "subset", "name": name, **s} for name, s in info["subsets"].items()]
    records += [{"table": "length_bin", "name": b["name"], "instances": b["count"], "low_s": b["low_s"],
                 "high_s": b["high_s"]} for b in info["length_bins"]["bins"]]  # fmt: skip
    records += [{"table": "class", "name": name, "instances": n} for name, n in info["classes"].items()]
    columns = ["table", "name", "videos", "duration_s", "instances", "ambiguous_spans", "low_s", "high_s"]
    return pd.DataFrame.from_records(records, columns=columns)
