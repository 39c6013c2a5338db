"""`detect`: one video of any length and container through a trained run — detections in seconds, and a timeline.

    from re2tal_cli.detect import detect
    result = detect("runs/tal", "match.mp4", plot="timeline.png")

The run says what it needs (RUN/config.yaml and its checkpoint's meta): a frames run (end to end or frozen) runs its
own backbone and localizer on the video's frames, arranged as in its evaluation; a features run first computes the
video's features as its `re2tal extract` output was made (the same backbone checkpoint and settings), then the
localizer. The best checkpoint is used (else the last), with the EMA weights when the run kept them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from re2tal_cli.errors import BadInputError


def detect(
    run: str | os.PathLike,
    video: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    gt: str | os.PathLike | None = None,
    threshold: float | None = None,
    top_k: int | None = None,
    checkpoint: str = "best",
    device: str = "cpu",
) -> dict[str, Any]:
    """Detections of `video` ({"video", "duration", "run", "checkpoint", "detections": [{"segment": [s, e], "label",
    "score"}]}, best first); `threshold` drops lower scores, `top_k` keeps that many. `out`: also written as JSON;
    `plot`: a timeline PNG per class, with the ground truth of `gt` (annotations or a dataset directory) beside."""
    import torch

    from re2tal_cli.data.datasets import VideoEntry
    from re2tal_cli.data.video import open_video
    from re2tal_cli.fileio import check_creatable, write_json_atomic
    from re2tal_cli.train.recipe import Mode
    from re2tal_cli.train.run import RunDir
    from re2tal_cli.train.tal import detect_video, with_class_names
    from re2tal_cli.train_tal import frames_input, model_from_run

    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise BadInputError(f"`threshold` must be in [0, 1), got {threshold}")
    if top_k is not None and top_k < 1:
        raise BadInputError(f"`top_k` must be at least 1, got {top_k}")
    if checkpoint not in ("best", "last"):
        raise BadInputError(f"`checkpoint` must be best or last, got {checkpoint!r}")
    if out is not None:
        check_creatable(out)
    if plot is not None:
        from re2tal_cli.plotting import check_plot_path

        check_plot_path(plot)
    ground_truth = _ground_truth(gt, Path(video)) if gt is not None else None
    run_dir = RunDir(run)
    model, cfg, meta = model_from_run(run_dir, checkpoint)
    source = open_video(video)
    entry = VideoEntry(id=Path(video).stem, subset="-", duration=source.duration, fps=source.fps)
    device = torch.device(device)
    model.to(device)
    postprocess = {}
    if top_k is not None:
        postprocess["max_segments"] = top_k
    if cfg.source.mode is Mode.FEATURES:
        features = _video_features(cfg, source, device)
        found = detect_video(model, entry, features=features, device=device, amp=cfg.train.amp.value, **postprocess)
    else:
        found = detect_video(model, entry, source=source, frames=frames_input(cfg), device=device,
                             amp=cfg.train.amp.value, **postprocess)  # fmt: skip
    detections = with_class_names(found, meta["model"]["classes"])
    if threshold is not None:
        detections = [d for d in detections if d["score"] > threshold]
    result = {
        "video": str(video),
        "duration": round(source.duration, 3),
        "run": str(run),
        "checkpoint": {"name": meta["checkpoint"], "epoch": meta["epoch"], "weights": meta["weights"]},
        "detections": detections,
    }
    if out is not None:
        write_json_atomic(out, result, indent=2)
    if plot is not None:
        plot_timeline(result, meta["model"]["classes"], ground_truth, plot)
    return result


def _video_features(cfg, source, device) -> dict[str, Any]:
    """The video's features as the run's `re2tal extract` output was made (its index.json: checkpoint, settings)."""
    import torch

    from re2tal_cli.checkpoint import load_backbone
    from re2tal_cli.extract import ExtractSettings, features_of_video
    from re2tal_cli.train.data import Grid, read_feature_index, resample

    index = read_feature_index(cfg.source.features)
    loaded = load_backbone(index.get("checkpoint", index["source"]), index["arch"])
    backbone = loaded.model.eval().to(device)
    resolved = {k: v for k, v in index["settings"].items() if k not in ("arch", "source")}
    settings = ExtractSettings(mode=resolved["mode"], batch=8, device=str(device), amp=cfg.train.amp.value != "none")
    r = features_of_video(source, backbone, resolved, settings, loaded.input)
    feats, grid = r["feats"], Grid(float(r["times"][0]), float(r["stride"]) / source.fps)
    if cfg.data.resample_to is not None:
        grid, feats = grid.resampled(feats.shape[1], cfg.data.resample_to), resample(feats, cfg.data.resample_to)
    return {"feats": feats.to(torch.float32), "grid": grid}


def _ground_truth(gt, video: Path) -> list[dict[str, Any]]:
    from re2tal_cli.data.datasets import load_annotations

    entries = load_annotations(gt)
    entry = entries.get(video.stem)
    if entry is None:
        raise BadInputError(f"{gt}: no annotation for video {video.stem!r} (ids are file names without extension)")
    return [{"segment": [s.start, s.end], "label": s.label} for s in entry.segments]


def plot_timeline(result: dict[str, Any], classes: list[str], ground_truth: list[dict] | None, path) -> Path:
    """One row per class that has detections or ground truth: detections as bars shaded by score (their score
    written on the strongest), the ground truth as a row of outlined bars beside each class."""
    from re2tal_cli.plotting import new_figure, save_figure

    detections = result["detections"]
    shown = [c for c in classes if any(d["label"] == c for d in detections) or
             any(g["label"] == c for g in ground_truth or [])] or classes[:1]  # fmt: skip
    rows = len(shown) * (2 if ground_truth is not None else 1)
    fig = new_figure(10, 0.5 + 0.45 * rows)
    ax = fig.subplots()
    ticks, labels = [], []
    for k, name in enumerate(shown):
        y = k * (2 if ground_truth is not None else 1)
        mine = sorted((d for d in detections if d["label"] == name), key=lambda d: d["score"])
        for d in mine:
            s, e = d["segment"]
            ax.barh(y, e - s, left=s, height=0.7, color="#386cb0", alpha=0.15 + 0.85 * d["score"], linewidth=0)
        if mine:
            s, e = mine[-1]["segment"]
            ax.text(s, y, f"{mine[-1]['score']:.2f}", va="center", ha="left", fontsize=7, color="white")
        ticks.append(y)
        labels.append(f"{name}")
        if ground_truth is not None:
            for g in (g for g in ground_truth if g["label"] == name):
                s, e = g["segment"]
                ax.barh(y + 1, e - s, left=s, height=0.7, fill=False, edgecolor="#f0027f", linewidth=1.2)
            ticks.append(y + 1)
            labels.append(f"{name} (truth)")
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, result["duration"])
    ax.set_xlabel("seconds")
    ax.set_title(f"{Path(result['video']).name}: {len(detections)} detections", fontsize=10)
    ax.grid(axis="x", linestyle=":")
    return save_figure(fig, path)
