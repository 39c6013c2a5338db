"""Temporal action localization metrics: official-equivalent mAP, protocols, and the duration error analysis.

from re2tal_cli.evaluate import evaluate
result = evaluate("thumos/annotations.json", "runs/tal/predictions.json", protocol="thumos")
result.average_mAP, result.to_dict()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from re2tal_cli.errors import BadInputError, UnknownNameError
from re2tal_cli.evaluate.breakdown import (
    ANET_LENGTH_BINS,
    THUMOS_LENGTH_BINS,
    LengthBin,
    duration_breakdown,
    per_class_ap,
)
from re2tal_cli.evaluate.detection import (
    Segments,
    compute_average_precision_detection,
    interpolated_prec_rec,
    segment_iou,
)
from re2tal_cli.evaluate.io import GroundTruth, load_ground_truth, load_predictions

__all__ = [
    "PROTOCOLS",
    "EvaluationResult",
    "LengthBin",
    "Protocol",
    "Segments",
    "compute_average_precision_detection",
    "evaluate",
    "interpolated_prec_rec",
    "load_ground_truth",
    "load_predictions",
    "segment_iou",
]


@dataclass(frozen=True)
class Protocol:
    name: str
    tiou: tuple[float, ...]
    ambiguous_label: str | None  # ground-truth label THUMOS-14 uses for "don't care" segments
    length_bins: tuple[tuple[str, float], ...]


# Thresholds come from np.linspace as in the official evaluator (0.5:0.95) and ActionFormer (0.3:0.7): the values
# are not the decimal ones (0.8999999999999999, 0.39999999999999997), and a tIoU on the boundary decides differently.
PROTOCOLS = {
    "anet": Protocol("anet", tuple(np.linspace(0.5, 0.95, 10).tolist()), None, ANET_LENGTH_BINS),
    "thumos": Protocol("thumos", tuple(np.linspace(0.3, 0.7, 5).tolist()), "Ambiguous", THUMOS_LENGTH_BINS),
}


@dataclass(frozen=True)
class EvaluationResult:
    protocol: str
    subset: str
    tiou: tuple[float, ...]
    mAP: np.ndarray  # (T,) mean over classes, fractions in [0, 1]
    ap: np.ndarray  # (T, C)
    labels: tuple[str, ...]
    num_gt: np.ndarray  # (C,)
    warnings: dict[str, int]
    breakdown: list[LengthBin] | None

    @property
    def average_mAP(self) -> float:
        return float(self.mAP.mean())

    def per_class(self) -> list[dict]:
        return per_class_ap(self.ap, self.labels, self.num_gt)

    def table(self):
        """Every number of the result as one long pandas DataFrame, a row per (table, name, tIoU):

        - table `mAP`: name `all`, `ap` the mAP, `num_gt` every instance;
        - table `class`: name the class, `ap` its AP, `num_gt` its instances;
        - table `length` (with the breakdown): name the bin, `ap` its mAP, `fn_rate` its false-negative rate,
          `low_s`/`high_s` its range (high empty for the last, unbounded bin).

        `tiou` is each threshold, then empty (NaN) on the row averaged over thresholds. Values are fractions, as in
        the JSON."""
        import pandas as pd

        def rows(table: str, name: str, num_gt: int, ap: np.ndarray, fn_rate: np.ndarray | None = None, **fixed):
            """One row per threshold, then the average over thresholds (tiou NaN)."""
            out = []
            for k, t in enumerate([*self.tiou, float("nan")]):
                averaged = k == len(self.tiou)
                row = {"table": table, "name": name, "tiou": t, "num_gt": num_gt, **fixed}
                row["ap"] = float(ap.mean() if averaged else ap[k])
                if fn_rate is not None:
                    row["fn_rate"] = float(fn_rate.mean() if averaged else fn_rate[k])
                out.append(row)
            return out

        records = rows("mAP", "all", int(self.num_gt.sum()), self.mAP)
        for c, label in enumerate(self.labels):
            records += rows("class", label, int(self.num_gt[c]), self.ap[:, c])
        for b in self.breakdown or []:
            high = None if np.isinf(b.high) else b.high
            records += rows("length", b.name, b.num_gt, b.mAP, b.fn_rate, low_s=b.low, high_s=high)
        columns = ["table", "name", "tiou", "num_gt", "ap", "fn_rate", "low_s", "high_s"]
        return pd.DataFrame.from_records(records, columns=columns)

    def to_dict(self, per_class: bool = False) -> dict:
        """Plain-JSON view: mAP as fractions like the official evaluator; thresholds rounded for reading."""
        out = {
            "protocol": self.protocol,
            "subset": self.subset,
            "tiou": [round(t, 6) for t in self.tiou],
            "mAP": self.mAP.tolist(),
            "average_mAP": self.average_mAP,
            "breakdown": None if self.breakdown is None else _breakdown_dict(self.breakdown),
            "warnings": dict(self.warnings),
        }
        if per_class:
            out["per_class"] = self.per_class()
        return out


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def _breakdown_dict(bins: list[LengthBin]) -> dict:
    return {
        b.name: {
            "range_s": [b.low, None if np.isinf(b.high) else b.high],
            "num_gt": b.num_gt,
            "mAP": _nan_to_none(b.mAP),
            "average_mAP": None if b.num_gt == 0 else b.average_mAP,
            "fn_rate": _nan_to_none(b.fn_rate),
            "average_fn_rate": None if b.num_gt == 0 else b.average_fn_rate,
        }
        for b in bins
    }


def check_tiou(tiou: Sequence[float]) -> tuple[float, ...]:
    """Thresholds must be in (0, 1]; a duplicate would count twice in the average."""
    values = tuple(float(t) for t in tiou)
    if not values:
        raise BadInputError("tIoU thresholds: give at least one")
    bad = [t for t in values if not 0.0 < t <= 1.0]
    if bad:
        raise BadInputError(f"tIoU thresholds must be in (0, 1], got {bad[0]}")
    if len(set(values)) != len(values):
        raise BadInputError(f"tIoU thresholds: duplicate in {list(values)}")
    return values


def _ambiguous_overlap(gt: GroundTruth, prediction: Segments) -> np.ndarray | None:
    """Predictions overlapping (positive intersection) an Ambiguous segment of their video, or None if none exist.

    THUMOS-14's TH14evalDet removes such detections from the false positives when they match no ground truth; its
    overlap function takes each interval as [min, max], so reversed predictions are straightened for this test.
    """
    amb = gt.ambiguous
    if len(amb) == 0:
        return None
    by_video = np.argsort(amb.video, kind="stable")
    amb_video = amb.video[by_video]
    first = np.searchsorted(amb_video, prediction.video, side="left")
    count = np.where(prediction.video >= 0, np.searchsorted(amb_video, prediction.video, side="right") - first, 0)
    pred_of_pair = np.repeat(np.arange(len(prediction)), count)
    offset = np.arange(len(pred_of_pair)) - np.repeat(np.cumsum(count) - count, count)
    amb_of_pair = by_video[first[pred_of_pair] + offset]
    p_lo = np.minimum(prediction.t_start, prediction.t_end)[pred_of_pair]
    p_hi = np.maximum(prediction.t_start, prediction.t_end)[pred_of_pair]
    overlap = np.minimum(p_hi, amb.t_end[amb_of_pair]) - np.maximum(p_lo, amb.t_start[amb_of_pair]) > 0
    return np.bincount(pred_of_pair[overlap], minlength=len(prediction)) > 0


def evaluate(
    ground_truth: str | Path,
    prediction: str | Path,
    protocol: str = "anet",
    tiou: Sequence[float] | None = None,
    subset: str | None = None,
    breakdown: bool = False,
    plot: str | Path | None = None,
) -> EvaluationResult:
    """mAP of a prediction file against ground truth under a protocol, optionally with the length breakdown.

    `ground_truth` is an annotations JSON or a dataset directory; `prediction` a submission JSON or a train-tal run
    directory. `tiou` replaces the protocol's thresholds; `subset=None` picks validation (or val), else test.
    `plot`: also write the length breakdown as a PNG there (checked before the work).
    """
    if protocol not in PROTOCOLS:
        raise UnknownNameError("protocol", protocol, PROTOCOLS, param="protocol")
    if plot is not None:
        from re2tal_cli.plotting import check_plot_path

        check_plot_path(plot)
        breakdown = True
    spec = PROTOCOLS[protocol]
    thresholds = spec.tiou if tiou is None else check_tiou(tiou)
    gt = load_ground_truth(ground_truth, subset, spec.ambiguous_label)
    pred = load_predictions(prediction, gt, spec.ambiguous_label)
    num_classes = len(gt.labels)
    ignored = _ambiguous_overlap(gt, pred.segments)
    ap, matching = compute_average_precision_detection(
        gt.segments, pred.segments, np.asarray(thresholds), num_classes, ignored
    )
    warnings = dict(pred.warnings)
    missing = int(np.sum(np.bincount(pred.segments.label, minlength=num_classes) == 0))
    if missing:
        warnings["classes_without_predictions"] = missing
    if ignored is not None and ignored.any():
        warnings["predictions_over_ambiguous_segments"] = int(ignored.sum())
    bins = None
    if breakdown:
        bins = duration_breakdown(gt.segments, matching, num_classes, spec.length_bins, ignored)
    result = EvaluationResult(
        protocol=protocol,
        subset=gt.subset,
        tiou=thresholds,
        mAP=ap.mean(axis=1),
        ap=ap,
        labels=gt.labels,
        num_gt=np.bincount(gt.segments.label, minlength=num_classes),
        warnings=warnings,
        breakdown=bins,
    )
    if plot is not None:
        from re2tal_cli.evaluate.plot import plot_breakdown

        plot_breakdown(result, plot)
    return result
