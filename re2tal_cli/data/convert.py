"""Converters from published annotation formats to ours (ActivityNet-format `annotations.json`).

THUMOS-14 — the official temporal annotation files, one per class and split: `<Class>_val.txt` (validation set) and
`<Class>_test.txt` (test set), each line `<video id> <start s> <end s>`. Following common practice (and Re²TAL), the
validation set becomes our "train" subset and the test set our "test" subset.

"Ambiguous" (`Ambiguous_val.txt`, `Ambiguous_test.txt`) is not an action class: it marks spans where annotators could
not tell whether an action happens. The official evaluation (TH14evalDet) does not count detections that overlap an
ambiguous span as false positives and has no ground truth of that class. We keep these spans as annotations labelled
"Ambiguous" (the convention of the official files and of published THUMOS JSONs): `re2tal evaluate --protocol thumos`
excuses detections over them, and our dataset reader sets them apart (`VideoEntry.ambiguous`), never as a class. A
video annotated only with Ambiguous spans (one test video) is kept, with no actions, as the official test set keeps
it.

The files carry no durations: they come from probing the videos (`videos`) or from a JSON {video id: seconds}.

ActivityNet-1.3 — one JSON file: {"version", "taxonomy", "database": {id: {"subset": training|validation|testing,
"duration", "resolution", "url", "annotations": [{"segment": [s, e], "label"}]}}}. Subsets map to train/val/test;
ids get an optional prefix (video files are usually named `v_<id>.mp4`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from re2tal_cli.data.datasets import AMBIGUOUS, ANNOTATIONS, Segment, VideoEntry, save_annotations
from re2tal_cli.errors import BadDataError, BadInputError, UnknownNameError
from re2tal_cli.fileio import check_output_dir, read_json
from re2tal_cli.text import plural

__all__ = ["FORMATS", "ConvertResult", "convert", "convert_thumos14", "convert_activitynet"]

FORMATS = ("thumos14", "activitynet")

THUMOS_SPLITS = {"val": "train", "validation": "train", "test": "test"}
_THUMOS_FILE = re.compile(r"^(?P<cls>[A-Za-z]+)_(?P<split>val|validation|test)\.txt$")


@dataclass
class ConvertResult:
    entries: dict[str, VideoEntry]
    classes: list[str]
    source: str
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        subsets: dict[str, int] = {}
        for e in self.entries.values():
            subsets[e.subset] = subsets.get(e.subset, 0) + 1
        return {
            "source": self.source,
            "videos": len(self.entries),
            "subsets": dict(sorted(subsets.items())),
            "classes": len(self.classes),
            "instances": sum(len(e.segments) for e in self.entries.values()),
            "ambiguous_spans": sum(len(e.ambiguous) for e in self.entries.values()),
            "warnings": self.warnings,
        }


def _thumos_files(root: Path) -> list[tuple[Path, str, str]]:
    if not root.exists():
        raise BadDataError(f"{root}: no such file or directory")
    found = []
    for p in sorted(root.rglob("*.txt")) if root.is_dir() else [root]:
        m = _THUMOS_FILE.match(p.name)
        if m:
            found.append((p, m["cls"], THUMOS_SPLITS[m["split"]]))
    if not found:
        raise BadDataError(
            f"{root}: no THUMOS-14 annotation files found (expected <Class>_val.txt / <Class>_test.txt, "
            "e.g. BaseballPitch_val.txt)"
        )
    return found


def _load_durations(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): float(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError, TypeError) as error:
        raise BadDataError(f"{path}: expected a JSON object {{video id: duration in seconds}} ({error})") from None


def _probe_durations(
    videos_dir: Path, ids: list[str], progress: Callable[[int, int], None] | None
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    from re2tal_cli.data.datasets import find_media
    from re2tal_cli.data.video import probe

    durations, fps, missing = {}, {}, []
    root = videos_dir.parent if videos_dir.name == "videos" else None
    for n, vid in enumerate(ids, start=1):
        path = find_media(root, vid) if root is not None else None
        if path is None:
            candidates = [p for p in videos_dir.glob(f"{vid}.*") if p.is_file()]
            path = candidates[0] if candidates else None
        if path is None or path.is_dir():
            missing.append(vid)
        else:
            index = probe(path)
            durations[vid], fps[vid] = index.duration, index.fps
        if progress:
            progress(n, len(ids))
    return durations, fps, missing


def convert_thumos14(
    annotations: str | os.PathLike,
    *,
    videos: str | os.PathLike | None = None,
    durations: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertResult:
    """THUMOS-14 per-class annotation files (a directory searched recursively, or one file) → our entries."""
    files = _thumos_files(Path(annotations))
    per_video: dict[str, dict] = {}
    classes: set[str] = set()
    warnings: list[str] = []
    for path, cls, subset in files:
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                raise BadDataError(f"{path}:{lineno}: expected '<video> <start> <end>', got {line.strip()!r}")
            vid = parts[0]
            try:
                start, end = float(parts[1]), float(parts[2])
            except ValueError:
                raise BadDataError(f"{path}:{lineno}: start and end must be seconds, got {line.strip()!r}") from None
            if end <= start:
                warnings.append(f"{path.name}:{lineno}: {vid} has end {end} ≤ start {start}; dropped")
                continue
            entry = per_video.setdefault(vid, {"subset": subset, "segments": [], "ambiguous": []})
            if entry["subset"] != subset:
                raise BadDataError(f"{path}:{lineno}: video {vid} appears in both {entry['subset']} and {subset}")
            if cls == AMBIGUOUS:
                entry["ambiguous"].append((start, end))
            else:
                classes.add(cls)
                entry["segments"].append(Segment(start, end, cls))

    ids = sorted(per_video)
    if durations is not None:
        known = _load_durations(Path(durations))
        fps: dict[str, float] = {}
        missing = [v for v in ids if v not in known]
    elif videos is not None:
        known, fps, missing = _probe_durations(Path(videos), ids, progress)
    else:
        raise BadDataError(
            "THUMOS-14 annotation files carry no video durations: give `videos` (the folder of THUMOS videos, "
            "probed) or `durations` (a JSON file {video id: seconds})"
        )
    if missing:
        raise BadDataError(
            f"no duration for {plural(len(missing), 'annotated video')} (first: {missing[0]}); check that "
            "`videos` or `durations` covers the validation and test videos"
        )

    entries = {}
    for vid in ids:
        raw = per_video[vid]
        duration = known[vid]
        segments = sorted(raw["segments"], key=lambda s: (s.start, s.end, s.label))
        beyond = [s for s in segments if s.start >= duration]
        if beyond:
            warnings.append(f"{vid}: {len(beyond)} segment(s) start after the video's end ({duration:.2f}s); dropped")
        segments = [Segment(s.start, min(s.end, duration), s.label) for s in segments if s.start < duration]
        if not segments and not raw["ambiguous"]:
            continue
        if not segments:
            warnings.append(f"{vid}: only Ambiguous spans; kept with no actions (as the official test set keeps it)")
        entries[vid] = VideoEntry(
            id=vid,
            subset=raw["subset"],
            duration=duration,
            fps=fps.get(vid),
            segments=segments,
            ambiguous=sorted(raw["ambiguous"]),
        )
    return ConvertResult(entries, sorted(classes), "thumos14", warnings)


ANET_SUBSETS = {"training": "train", "validation": "val", "testing": "test"}


def convert_activitynet(path: str | os.PathLike, *, id_prefix: str = "") -> ConvertResult:
    """ActivityNet-1.3 JSON (activity_net.v1-3.min.json) → our entries."""
    path = Path(path)
    data = read_json(path)
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise BadDataError(f'{path}: not an ActivityNet file (no "database" object)')
    entries, classes, warnings = {}, set(), []
    for raw_id, raw in database.items():
        where = f"{path}: video {raw_id!r}"
        subset = raw.get("subset")
        if subset not in ANET_SUBSETS:
            raise BadDataError(f"{where}: subset {subset!r} is not one of {', '.join(ANET_SUBSETS)}")
        try:
            duration = float(raw["duration"])
        except (KeyError, TypeError, ValueError):
            raise BadDataError(f'{where}: missing or non-numeric "duration"') from None
        segments = []
        for k, ann in enumerate(raw.get("annotations", [])):
            try:
                s, e = (float(v) for v in ann["segment"])
                label = str(ann["label"])
            except (KeyError, TypeError, ValueError):
                raise BadDataError(f'{where}: annotation {k} needs "segment": [s, e] and "label"') from None
            s, e = max(s, 0.0), min(e, duration)
            if e <= s:
                warnings.append(f"{raw_id}: annotation {k} is empty inside [0, {duration}]; dropped")
                continue
            classes.add(label)
            segments.append(Segment(s, e, label))
        vid = f"{id_prefix}{raw_id}"
        entries[vid] = VideoEntry(id=vid, subset=ANET_SUBSETS[subset], duration=duration, segments=segments)
    return ConvertResult(entries, sorted(classes), "activitynet-1.3", warnings)


def convert(
    fmt: str,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    videos: str | os.PathLike | None = None,
    durations: str | os.PathLike | None = None,
    id_prefix: str = "",
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """`re2tal data convert`: the annotations of `source` in format `fmt` written as OUT/annotations.json (the
    directory may hold videos already); returns the conversion's summary."""
    if fmt not in FORMATS:
        raise UnknownNameError("annotation format", fmt, FORMATS, param="fmt")
    if fmt == "activitynet" and (videos or durations):
        raise BadInputError("an ActivityNet JSON has its durations: drop `videos` and `durations`")
    out = check_output_dir(out, force, marker=ANNOTATIONS)
    if fmt == "thumos14":
        result = convert_thumos14(source, videos=videos, durations=durations, progress=progress)
    else:
        result = convert_activitynet(source, id_prefix=id_prefix)
    out.mkdir(parents=True, exist_ok=True)
    save_annotations(out / ANNOTATIONS, result.entries, version=result.source, classes=result.classes)
    return {**result.summary(), "out": str(out / ANNOTATIONS)}
