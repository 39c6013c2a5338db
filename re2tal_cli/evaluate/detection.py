"""Mean average precision for temporal action localization, equal to the ActivityNet detection evaluator.

The functions keep the official names (`segment_iou`, `interpolated_prec_rec`, `compute_average_precision_detection`)
so a reader can put them beside `Evaluation/eval_detection.py` of activitynet/ActivityNet and compare. The official
code walks predictions one pandas row at a time; here every step is a NumPy array operation, and only the greedy
matching keeps a loop — over the rank of a prediction inside its (class, video) group, which is short, because
matching in one video never touches the ground truth of another.

Conventions kept from the official evaluator, on purpose (each one changes numbers):

- Predictions of a class are ranked by `scores.argsort()[::-1]` over that class's predictions in file order, with
  NumPy's default (unstable) sort and the scores' dtype as read (int64 when every score in the file is an integer).
  Ties are therefore ordered exactly as the official code orders them on the same NumPy build.
- A prediction tries the ground truth of its video and class in the order `tiou.argsort()[::-1]` (NaN first, then
  descending), takes the first one not yet matched at that threshold, and stops at the first tIoU below it; a tIoU
  that is NaN (two zero-length or reversed segments) is never "below" and so matches, as in the official code.
- A prediction for a video that has no ground truth of its class (or is not in the subset) is a false positive.
- A class without predictions has AP 0; the mean runs over every class of the subset's ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segments:
    """Ground-truth instances or predictions as parallel arrays (one row per segment, in file order)."""

    video: np.ndarray  # int64: index into the subset's video table; -1 = a video absent from the ground truth
    label: np.ndarray  # int64: class index
    t_start: np.ndarray  # float64 seconds
    t_end: np.ndarray  # float64 seconds
    score: np.ndarray | None = None  # predictions only; dtype as read, because the tie order depends on it

    def __len__(self) -> int:
        return len(self.label)


@dataclass(frozen=True)
class Matching:
    """What the greedy matching decided, kept for the error analysis."""

    order: np.ndarray  # (P,) prediction indices, class by class, each class in ranking order
    class_bounds: np.ndarray  # (C + 1,) class c owns order[class_bounds[c]:class_bounds[c + 1]]
    matched_gt: np.ndarray  # (T, P) int64: ground-truth index a prediction matched at each threshold, or -1
    gt_matched: np.ndarray  # (T, G) bool: whether a ground truth was matched at each threshold


def segment_iou(target_segment: np.ndarray, candidate_segments: np.ndarray) -> np.ndarray:
    """Temporal IoU of target segment(s) with candidate segments; `[..., 0]` is the start, `[..., 1]` the end.

    Leading axes broadcast, so one call scores a whole block of (prediction, ground truth) pairs. The arithmetic is
    done in the official order (candidate length + target length - intersection), so values are bitwise equal to
    the official ones, including NaN for two zero-length segments and negative values for reversed ones.
    """
    target = np.asarray(target_segment, dtype=np.float64)
    candidates = np.asarray(candidate_segments, dtype=np.float64)
    intersection = (
        np.minimum(target[..., 1], candidates[..., 1]) - np.maximum(target[..., 0], candidates[..., 0])
    ).clip(0)
    union = (candidates[..., 1] - candidates[..., 0]) + (target[..., 1] - target[..., 0]) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersection / union


def interpolated_prec_rec(prec: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Interpolated AP (VOC 2011 devkit) along the last axis: area under the precision envelope.

    Precision is padded with 0 at both ends and recall with 0 and 1, precision is replaced by its maximum to the
    right, and the area is summed over the steps where recall moves (steps where it does not contribute 0).
    """
    prec = np.asarray(prec, dtype=np.float64)
    rec = np.asarray(rec, dtype=np.float64)
    pad = np.zeros(prec.shape[:-1] + (1,))
    mprec = np.concatenate([pad, prec, pad], axis=-1)
    mrec = np.concatenate([pad, rec, pad + 1.0], axis=-1)
    envelope = np.flip(np.maximum.accumulate(np.flip(mprec, -1), axis=-1), -1)
    return np.sum(np.diff(mrec, axis=-1) * envelope[..., 1:], axis=-1)


def rank_predictions(prediction: Segments, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Order predictions class by class, each class by descending score with the official tie order.

    Returns (order, class_bounds). The per-class sort must see exactly the official array (that class's scores in
    file order, dtype as read), because NumPy's default sort is not stable and its tie order depends on the input.
    """
    by_class = np.argsort(prediction.label, kind="stable")
    class_bounds = np.searchsorted(prediction.label[by_class], np.arange(num_classes + 1))
    order = np.empty_like(by_class)
    for c in range(num_classes):
        lo, hi = class_bounds[c], class_bounds[c + 1]
        members = by_class[lo:hi]
        order[lo:hi] = members[prediction.score[members].argsort()[::-1]]
    return order, class_bounds


def match_detections(
    ground_truth: Segments, prediction: Segments, tiou_thresholds: np.ndarray, num_classes: int
) -> Matching:
    """Greedy matching of the official evaluator, every threshold at once.

    Each prediction, in ranking order, takes the best unmatched ground truth of its class and video whose tIoU is at
    least the threshold. Matching within one (class, video) group never affects another, so all groups advance
    together: step r handles the r-th prediction of every group. Groups are bucketed by their ground-truth count G
    so the tIoU block is an exact (n, G) array — the row-wise argsort then equals the official per-row argsort.
    """
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64)
    n_thr, n_pred, n_gt = len(thresholds), len(prediction), len(ground_truth)
    order, class_bounds = rank_predictions(prediction, num_classes)
    matched_gt = np.full((n_thr, n_pred), -1, dtype=np.int64)
    gt_matched = np.zeros((n_thr, n_gt), dtype=bool)
    if n_pred == 0 or n_gt == 0:
        return Matching(order, class_bounds, matched_gt, gt_matched)

    n_videos = int(max(ground_truth.video.max(), prediction.video.max())) + 1
    gt_key = ground_truth.label * n_videos + ground_truth.video
    gt_by_key = np.argsort(gt_key, kind="stable")  # file order inside each group, like the official frame
    sorted_keys = gt_key[gt_by_key]
    pred_key = prediction.label * n_videos + prediction.video
    first = np.searchsorted(sorted_keys, pred_key, side="left")
    count = np.where(prediction.video >= 0, np.searchsorted(sorted_keys, pred_key, side="right") - first, 0)

    rank_in_class = np.empty(n_pred, dtype=np.int64)
    rank_in_class[order] = np.arange(n_pred)
    live = np.flatnonzero(count > 0)  # the others have no ground truth to match: false positives
    live = live[np.lexsort((rank_in_class[live], pred_key[live]))]
    new_group = np.r_[True, pred_key[live][1:] != pred_key[live][:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(live)), 0))
    rank_in_group = np.arange(len(live)) - group_start

    spans = np.stack([prediction.t_start, prediction.t_end], axis=-1)
    gt_spans = np.stack([ground_truth.t_start, ground_truth.t_end], axis=-1)
    thr_index = np.arange(n_thr)
    for size in np.unique(count[live]):
        in_bucket = count[live] == size
        members, ranks = live[in_bucket], rank_in_group[in_bucket]
        by_rank = np.argsort(ranks, kind="stable")
        members, ranks = members[by_rank], ranks[by_rank]
        candidates = gt_by_key[first[members][:, None] + np.arange(size)]  # (n, G) ground-truth indices
        tiou = segment_iou(spans[members][:, None, :], gt_spans[candidates])  # (n, G)
        by_tiou = np.argsort(tiou, axis=1)[:, ::-1]
        candidates = np.take_along_axis(candidates, by_tiou, axis=1)
        # "not below" rather than ">=": a NaN tIoU passes, as in the official loop.
        passes = ~(np.take_along_axis(tiou, by_tiou, axis=1)[:, None, :] < thresholds[None, :, None])  # (n, T, G)
        steps = np.searchsorted(ranks, np.arange(ranks[-1] + 2))
        for r in range(ranks[-1] + 1):
            lo, hi = steps[r], steps[r + 1]
            cand = candidates[lo:hi]
            free = passes[lo:hi] & ~gt_matched[:, cand].transpose(1, 0, 2)
            pick = free.argmax(axis=2)  # (n, T): first free candidate in tIoU order
            hit = np.take_along_axis(free, pick[..., None], axis=2)[..., 0]
            chosen = np.take_along_axis(cand, pick, axis=1)
            matched_gt[:, members[lo:hi]] = np.where(hit, chosen, -1).T
            gt_matched[np.broadcast_to(thr_index, hit.shape)[hit], chosen[hit]] = True
    return Matching(order, class_bounds, matched_gt, gt_matched)


def average_precision_from_flags(tp: np.ndarray, fp: np.ndarray, npos: int) -> np.ndarray:
    """AP per threshold from true/false-positive flags (T, n) in ranking order.

    A prediction with neither flag (THUMOS: an unmatched detection over an Ambiguous segment) is skipped: it repeats
    the previous precision/recall point, which adds no area, and a leading run of them gives precision 0/0, set to
    0 since recall is still 0 there.
    """
    if npos == 0 or tp.shape[-1] == 0:
        return np.zeros(tp.shape[0])
    tp_cumsum = np.cumsum(tp, axis=1, dtype=np.float64)
    fp_cumsum = np.cumsum(fp, axis=1, dtype=np.float64)
    recall = tp_cumsum / float(npos)
    with np.errstate(invalid="ignore"):
        precision = np.nan_to_num(tp_cumsum / (tp_cumsum + fp_cumsum), nan=0.0)
    return interpolated_prec_rec(precision, recall)


def compute_average_precision_detection(
    ground_truth: Segments,
    prediction: Segments,
    tiou_thresholds: np.ndarray,
    num_classes: int,
    ignored: np.ndarray | None = None,
) -> tuple[np.ndarray, Matching]:
    """AP of every class at every threshold: an array (T, C), plus the matching for the error analysis.

    `ignored` (P,) marks predictions that, when unmatched, count as neither true nor false positive (THUMOS-14's
    rule for detections over Ambiguous segments); None for the ActivityNet protocol.
    """
    matching = match_detections(ground_truth, prediction, tiou_thresholds, num_classes)
    npos = np.bincount(ground_truth.label, minlength=num_classes)
    tp = matching.matched_gt[:, matching.order] >= 0
    fp = ~tp if ignored is None else ~tp & ~ignored[matching.order][None, :]
    ap = np.zeros((len(tiou_thresholds), num_classes))
    for c in range(num_classes):
        lo, hi = matching.class_bounds[c], matching.class_bounds[c + 1]
        ap[:, c] = average_precision_from_flags(tp[:, lo:hi], fp[:, lo:hi], int(npos[c]))
    return ap, matching
