"""`detect`: one video of any length and container through a trained run — detections in seconds, and a timeline.

    from re2tal_cli.detect import detect
    result = detect("runs/tal", "match.mp4", plot="timeline.png")   # or a published run: "hf://org/tal-run"

The run says what it needs (RUN/config.yaml and its checkpoint's meta): a frames run (end to end or frozen) runs its
own backbone and localizer on the video's frames, arranged as in its evaluation; a features run first computes the
video's features as its `re2tal extract` output was made (the same backbone checkpoint and settings), then the
localizer. A run on features that no re2tal backbone made (`re2tal data features`) is refused: there is no backbone
to compute them with. The best checkpoint is used (else the last), with the EMA weights when the run kept them.
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
    from re2tal_cli.hub import resolve_folder
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
    source = open_video(video)
    ground_truth = _ground_truth(gt, Path(video)) if gt is not None else None
    model, cfg, meta = model_from_run(RunDir(resolve_folder(run)), checkpoint)
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
    if index.get("arch") is None:
        raise BadInputError(
            f"{Path(cfg.source.features) / 'index.json'}: the run's features were imported from {index['source']} "
            "(`re2tal data features`), not made by a re2tal backbone, so a new video's features cannot be computed; "
            "detect needs a run on frames or on `re2tal extract` features"
        )
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
    """A row per class that has detections or ground truth: the ground truth as outlined bars above, the detections
    below coloured by score (strongest drawn last, so on top; a colour bar gives the scale), the three best of each
    class labelled with their score."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from re2tal_cli.plotting import new_figure, save_figure

    detections, truth = result["detections"], ground_truth or []
    shown = [c for c in classes if any(d["label"] == c for d in detections + truth)] or classes[:1]
    per_class = 2 if ground_truth is not None else 1
    fig = new_figure(11, 0.8 + 0.5 * per_class * len(shown))
    ax = fig.subplots()
    cmap, norm = colormaps["viridis_r"], Normalize(0.0, 1.0)
    ticks, labels = [], []
    for k, name in enumerate(shown):
        y = k * per_class
        if ground_truth is not None:
            for g in (g for g in truth if g["label"] == name):
                s, e = g["segment"]
                ax.barh(y, e - s, left=s, height=0.6, fill=False, edgecolor="#d62728", linewidth=1.4)
            ticks.append(y)
            labels.append(f"{name} (truth)")
            y += 1
        mine = sorted((d for d in detections if d["label"] == name), key=lambda d: d["score"])
        for d in mine:
            s, e = d["segment"]
            ax.barh(y, e - s, left=s, height=0.6, color=cmap(norm(d["score"])), alpha=0.8, linewidth=0)
        for d in mine[-3:]:
            s, e = d["segment"]
            ax.text((s + e) / 2, y - 0.34, f"{d['score']:.2f}", ha="center", va="bottom", fontsize=7)
        ticks.append(y)
        labels.append(name)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_ylim(len(shown) * per_class - 0.5, -0.8)
    ax.set_xlim(0, result["duration"])
    ax.set_xlabel("seconds")
    ax.set_title(f"{Path(result['video']).name}: {len(detections)} detections", fontsize=10)
    ax.grid(axis="x", linestyle=":")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="score", fraction=0.03, pad=0.01)
    return save_figure(fig, path)
