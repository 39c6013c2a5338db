"""Read and check ground truth (ActivityNet format) and predictions (ActivityNet submission format).

Every problem a user can fix is a `BadDataError` naming the file and the entry. What the official evaluator
tolerates (reversed predicted segments, predictions for unknown videos, labels absent from the ground truth) is
kept and counted, so the numbers stay official while the user still hears about it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from re2tal_cli.errors import BadDataError
from re2tal_cli.evaluate.detection import Segments
from re2tal_cli.fileio import read_json
from re2tal_cli.text import plural

GT_FILE = "annotations.json"
PRED_FILE = "predictions.json"
# Tried in this order when --subset is not given: ActivityNet's official default, then THUMOS-14's test split.
DEFAULT_SUBSETS = ("validation", "val", "test")  # the official files' name, `re2tal data convert`'s, then test


@dataclass(frozen=True)
class GroundTruth:
    """The ground truth of one subset: classes, videos and instances as arrays."""

    path: Path
    subset: str
    labels: tuple[str, ...]  # class index -> name, in order of first appearance (the official activity_index)
    videos: tuple[str, ...]  # video index -> id, every video of the subset in file order
    segments: Segments
    # THUMOS-14 "Ambiguous" segments (protocol thumos only): not positives, but they excuse overlapping detections.
    ambiguous: Segments


@dataclass(frozen=True)
class Predictions:
    """Predictions aligned with a ground truth, and what was tolerated on the way."""

    path: Path
    segments: Segments
    warnings: dict[str, int] = field(default_factory=dict)


def resolve_ground_truth(path: str | Path) -> Path:
    """A ground-truth JSON file, or a dataset directory holding annotations.json."""
    return _resolve(Path(path), GT_FILE, "ground truth")


def resolve_predictions(path: str | Path) -> Path:
    """A prediction JSON file, or a train-tal run directory holding predictions.json (hf:// for a published one)."""
    from re2tal_cli.hub import resolve_folder

    return _resolve(resolve_folder(path), PRED_FILE, "predictions")


def _resolve(path: Path, name: str, what: str) -> Path:
    if path.is_dir():
        if not (path / name).is_file():
            raise BadDataError(f"{path}: directory has no {name} ({what} expected there)")
        return path / name
    if not path.is_file():
        raise BadDataError(f"{path}: no such file or directory ({what})")
    return path


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _segment(path: Path, where: str, item: Any) -> tuple[float, float]:
    if not isinstance(item, dict):
        raise BadDataError(f"{path}: {where} must be an object, got {type(item).__name__}")
    seg = item.get("segment")
    if not (isinstance(seg, list | tuple) and len(seg) == 2 and all(_is_number(v) for v in seg)):
        raise BadDataError(f"{path}: {where}.segment must be two numbers [start, end], got {seg!r}")
    start, end = float(seg[0]), float(seg[1])
    if not (math.isfinite(start) and math.isfinite(end)):
        raise BadDataError(f"{path}: {where}.segment has a non-finite time {seg!r}")
    if start < 0 or end < 0:
        raise BadDataError(f"{path}: {where}.segment has a negative time {seg!r}")
    return start, end


def _label(path: Path, where: str, item: dict) -> str:
    label = item.get("label")
    if not isinstance(label, str) or not label:
        raise BadDataError(f"{path}: {where}.label must be a class name (non-empty string), got {label!r}")
    return label


def load_ground_truth(path: str | Path, subset: str | None = None, ambiguous_label: str | None = None) -> GroundTruth:
    """Load the instances of one subset; `subset=None` picks validation (or val), else test, else the only subset.

    `ambiguous_label` (protocol thumos: "Ambiguous") sets those segments apart instead of making them a class.
    """
    path = resolve_ground_truth(path)
    data = read_json(path)
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise BadDataError(f"{path}: not ActivityNet-format ground truth (no 'database' object at the top level)")
    subsets: dict[str, int] = {}
    for vid, video in database.items():
        if not isinstance(video, dict) or not isinstance(video.get("subset"), str):
            raise BadDataError(f"{path}: database[{vid!r}] must be an object with a string 'subset'")
        subsets[video["subset"]] = subsets.get(video["subset"], 0) + 1
    present = ", ".join(f"{name!r} ({plural(n, 'video')})" for name, n in subsets.items()) or "none"
    if subset is None:
        chosen = [s for s in DEFAULT_SUBSETS if s in subsets] or (list(subsets) if len(subsets) == 1 else [])
        if not chosen:
            raise BadDataError(f"{path}: choose one with `subset`; subsets present: {present}")
        subset = chosen[0]
    elif subset not in subsets:
        raise BadDataError(f"{path}: no video in subset {subset!r}; subsets present: {present}")

    labels: dict[str, int] = {}
    videos: list[str] = []
    rows: list[tuple[int, int, float, float]] = []
    ambiguous: list[tuple[int, float, float]] = []
    for vid, video in database.items():
        if video["subset"] != subset:
            continue
        vidx = len(videos)
        videos.append(vid)
        annotations = video.get("annotations")
        if not isinstance(annotations, list):
            raise BadDataError(f"{path}: database[{vid!r}].annotations must be a list, got {annotations!r}")
        for i, ann in enumerate(annotations):
            where = f"database[{vid!r}].annotations[{i}]"
            start, end = _segment(path, where, ann)
            if end < start:
                raise BadDataError(f"{path}: {where}.segment is reversed (end before start): {ann['segment']!r}")
            label = _label(path, where, ann)
            if label == ambiguous_label:
                ambiguous.append((vidx, start, end))
                continue
            cidx = labels.setdefault(label, len(labels))
            rows.append((vidx, cidx, start, end))
    if not rows:
        raise BadDataError(f"{path}: subset {subset!r} has no annotated segment to evaluate against")
    return GroundTruth(
        path=path,
        subset=subset,
        labels=tuple(labels),
        videos=tuple(videos),
        segments=_segments(rows),
        ambiguous=_segments([(v, 0, s, e) for v, s, e in ambiguous]),
    )


def _segments(rows: list[tuple[int, int, float, float]]) -> Segments:
    table = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return Segments(
        video=table[:, 0].astype(np.int64),
        label=table[:, 1].astype(np.int64),
        t_start=table[:, 2].copy(),
        t_end=table[:, 3].copy(),
    )


def _check_prediction(path: Path, where: str, item: Any) -> None:
    """Raise the error for one prediction, if it has one (the slow, precise path behind the bulk checks)."""
    _segment(path, where, item)
    _label(path, where, item)
    score = item.get("score")
    if not _is_number(score) or not math.isfinite(score):
        raise BadDataError(f"{path}: {where}.score must be a finite number, got {score!r}")


def _find_bad_prediction(path: Path, results: dict) -> BadDataError:
    """The bulk checks failed somewhere: walk the file to name the first bad entry."""
    for vid, items in results.items():
        for i, item in enumerate(items):
            _check_prediction(path, f"results[{vid!r}][{i}]", item)
    return BadDataError(f"{path}: malformed predictions")  # not reached: the bulk checks only fail on a bad entry


def load_predictions(path: str | Path, gt: GroundTruth, ambiguous_label: str | None = None) -> Predictions:
    """Load a submission and align it with `gt` (video and class indices).

    Kept as the official evaluator does, and counted: predictions for videos outside the subset (false positives),
    reversed segments (scored with the official tIoU formula). Dropped and counted: labels that are not a class of
    the subset (the official code has no class to put them in) and, for THUMOS, predictions labelled Ambiguous.
    Checks run on whole columns (half a million predictions is a normal file); only a failure walks entry by entry.
    """
    path = resolve_predictions(path)
    data = read_json(path)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict):
        raise BadDataError(f"{path}: not an ActivityNet submission (no 'results' object at the top level)")
    if not results:
        raise BadDataError(f"{path}: 'results' is empty, there is nothing to evaluate")
    video_index = {vid: i for i, vid in enumerate(gt.videos)}
    if not any(vid in video_index for vid in results):
        example = next(iter(results))
        raise BadDataError(
            f"{path}: no prediction is for a video of subset {gt.subset!r} of {gt.path} (e.g. {example!r}); "
            "predictions for another dataset, or the wrong `subset`?"
        )

    segs, labels, scores, counts = [], [], [], []
    for vid, items in results.items():
        if not isinstance(items, list):
            raise BadDataError(f"{path}: results[{vid!r}] must be a list of predictions, got {type(items).__name__}")
        try:
            segs.extend([item["segment"] for item in items])
            labels.extend([item["label"] for item in items])
            scores.extend([item["score"] for item in items])
        except (KeyError, TypeError):
            raise _find_bad_prediction(path, results) from None
        counts.append(len(items))
    try:
        span = np.array(segs, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise _find_bad_prediction(path, results) from None
    number_types = {int, float}
    label_types = set(map(type, labels))
    score_types = set(map(type, scores))
    if (
        len(span) != len(segs)
        or not set(map(type, segs)) <= {list}
        or not {type(v) for seg in segs for v in seg} <= number_types
        or not score_types <= number_types
        or not label_types <= {str}
        or "" in labels
    ):
        raise _find_bad_prediction(path, results)
    score = np.asarray(scores, dtype=np.float64)
    if not (np.isfinite(span).all() and np.isfinite(score).all()) or (span < 0).any():
        raise _find_bad_prediction(path, results)

    video = np.repeat(np.array([video_index.get(vid, -1) for vid in results], dtype=np.int64), counts)
    label_index = {label: i for i, label in enumerate(gt.labels)}
    if ambiguous_label is not None:
        label_index[ambiguous_label] = -2
    label = np.array([label_index.get(name, -1) for name in labels], dtype=np.int64)
    if not (label >= 0).any() and (label == -1).any():
        example = labels[int(np.argmax(label == -1))]
        raise BadDataError(
            f"{path}: no prediction label is a class of subset {gt.subset!r} of {gt.path} (e.g. {example!r}); "
            "labels must be the class names used in the ground truth"
        )
    keep = label >= 0
    # The official ranking sorts the score column as pandas built it from the whole file: int64 when every score is
    # an integer, float64 otherwise. The sort's tie order depends on that dtype.
    if score_types == {int}:
        score = np.asarray(scores, dtype=np.int64)
    segments = Segments(
        video=video[keep],
        label=label[keep],
        t_start=span[keep, 0].copy(),
        t_end=span[keep, 1].copy(),
        score=score[keep],
    )
    warnings = {
        "predictions_for_unknown_videos": int(np.sum(segments.video < 0)),
        "predictions_with_unknown_labels": int(np.sum(label == -1)),
        "reversed_prediction_segments": int(np.sum(segments.t_end < segments.t_start)),
        "ambiguous_predictions_dropped": int(np.sum(label == -2)),
        "videos_without_predictions": len(gt.videos) - len(np.unique(segments.video[segments.video >= 0])),
    }
    return Predictions(path=path, segments=segments, warnings={k: v for k, v in warnings.items() if v})
