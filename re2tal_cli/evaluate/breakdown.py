"""Error analysis by action length (Re²TAL Fig. 5, after DETAD): mAP and false-negative rate per length bin.

Ground-truth instances are binned by their length (end - start). For a bin, following DETAD's sensitivity analysis:
its ground truth is the only positive set; a prediction matched (at any threshold) to ground truth of another bin is
removed from the ranking; every other prediction keeps its status from the full evaluation. AP is the ordinary
interpolated AP with the bin's instance count as positives (DETAD's normalised AP_N is not used), averaged over the
classes that have ground truth in the bin. The false-negative rate is the fraction of the bin's instances that no
prediction matched. Both come per threshold and averaged over thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from re2tal_cli.evaluate.detection import Matching, Segments, average_precision_from_flags

# (name, upper edge in seconds); the lower edge is the previous upper edge, bins are right-closed, the first holds 0.
ANET_LENGTH_BINS = (("XS", 30.0), ("S", 60.0), ("M", 120.0), ("L", 180.0), ("XL", float("inf")))
# DETAD's bins for THUMOS-14, whose actions are a few seconds long (every one would fall into XS above).
THUMOS_LENGTH_BINS = (("XS", 3.0), ("S", 6.0), ("M", 12.0), ("L", 18.0), ("XL", float("inf")))


@dataclass(frozen=True)
class LengthBin:
    name: str
    low: float  # seconds, exclusive (except 0 for the first bin)
    high: float  # seconds, inclusive; inf for the last bin
    num_gt: int
    mAP: np.ndarray  # (T,) nan when the bin holds no ground truth
    fn_rate: np.ndarray  # (T,) nan when the bin holds no ground truth

    @property
    def average_mAP(self) -> float:
        return float(self.mAP.mean())

    @property
    def average_fn_rate(self) -> float:
        return float(self.fn_rate.mean())


def length_bin_index(ground_truth: Segments, bins: tuple[tuple[str, float], ...]) -> np.ndarray:
    """Bin of each ground-truth instance: (0, e1] -> 0 (zero-length included), (e1, e2] -> 1, ..."""
    upper = np.array([high for _, high in bins[:-1]])
    return np.searchsorted(upper, ground_truth.t_end - ground_truth.t_start, side="left")


def duration_breakdown(
    ground_truth: Segments,
    matching: Matching,
    num_classes: int,
    bins: tuple[tuple[str, float], ...] = ANET_LENGTH_BINS,
    ignored: np.ndarray | None = None,
) -> list[LengthBin]:
    """mAP and false-negative rate per length bin, from the matching of the full evaluation."""
    gt_bin = length_bin_index(ground_truth, bins)
    n_thr = matching.matched_gt.shape[0]
    ranked = matching.matched_gt[:, matching.order]  # (T, P) in ranking order
    tp_all = ranked >= 0
    # Bit b set: the prediction matched ground truth of bin b at some threshold.
    bins_hit = np.bitwise_or.reduce(np.where(tp_all, 1 << gt_bin[np.maximum(ranked, 0)], 0), axis=0)
    fp_all = ~tp_all if ignored is None else ~tp_all & ~ignored[matching.order][None, :]
    # Prediction-major copies: gathering the kept predictions of a class is then a row gather, not a column one.
    tp_rows, fp_rows = np.ascontiguousarray(tp_all.T), np.ascontiguousarray(fp_all.T)
    out = []
    low = 0.0
    for b, (name, high) in enumerate(bins):
        in_bin = gt_bin == b
        num_gt = int(in_bin.sum())
        if num_gt == 0:
            nan = np.full(n_thr, np.nan)
            out.append(LengthBin(name, low, high, 0, nan, nan))
            low = high
            continue
        npos = np.bincount(ground_truth.label[in_bin], minlength=num_classes)
        # DETAD drops a prediction matched to another bin's ground truth at any threshold.
        keep = (bins_hit & ~(1 << b)) == 0
        ap = []
        for c in np.flatnonzero(npos):
            lo, hi = matching.class_bounds[c], matching.class_bounds[c + 1]
            kept = np.flatnonzero(keep[lo:hi]) + lo
            ap.append(average_precision_from_flags(tp_rows[kept].T, fp_rows[kept].T, int(npos[c])))
        fn_rate = 1.0 - matching.gt_matched[:, in_bin].mean(axis=1)
        out.append(LengthBin(name, low, high, num_gt, np.mean(ap, axis=0), fn_rate))
        low = high
    return out


def per_class_ap(ap: np.ndarray, labels: tuple[str, ...], num_gt: np.ndarray) -> list[dict]:
    """One row per class: name, number of instances, AP per threshold and averaged over thresholds."""
    return [
        {"label": label, "num_gt": int(num_gt[c]), "ap": ap[:, c].tolist(), "average_ap": float(ap[:, c].mean())}
        for c, label in enumerate(labels)
    ]
