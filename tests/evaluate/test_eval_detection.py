"""Hand-computed AP on tiny inputs: each case pins one convention of the official ActivityNet evaluator."""

import json

import numpy as np
import pytest

from re2tal_cli.evaluate import evaluate, interpolated_prec_rec, segment_iou


def write(tmp_path, gt: dict, preds: dict, subset: str = "validation"):
    database = {
        vid: {
            "subset": v.get("subset", subset),
            "duration": 100.0,
            "annotations": [{"segment": list(seg), "label": label} for seg, label in v["ann"]],
        }
        for vid, v in gt.items()
    }
    results = {
        vid: [{"segment": list(seg), "label": label, "score": score} for seg, label, score in rows]
        for vid, rows in preds.items()
    }
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps({"database": database}))
    pred_path.write_text(json.dumps({"results": results}))
    return gt_path, pred_path


def test_segment_iou_values():
    gts = np.array([[5.0, 15.0], [20.0, 30.0], [0.0, 10.0]])
    np.testing.assert_allclose(segment_iou(np.array([0.0, 10.0]), gts), [5 / 15, 0.0, 1.0])
    # Two zero-length segments: 0/0. The official code keeps the NaN, and NaN is never "below" a threshold.
    assert np.isnan(segment_iou(np.array([5.0, 5.0]), np.array([[3.0, 3.0]]))[0])


def test_interpolated_prec_rec_by_hand():
    # envelope of [1, .5, 2/3] is [1, 2/3, 2/3]; recall steps 0->.5 (x1) and .5->1 (x2/3)
    assert interpolated_prec_rec(np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) == pytest.approx(5 / 6)
    # recall never reaches 1: the last step to 1 has precision 0
    assert interpolated_prec_rec(np.array([1.0]), np.array([0.5])) == pytest.approx(0.5)


def test_greedy_matching_and_class_without_predictions(tmp_path):
    gt = {
        "a": {"ann": [((0, 10), "X"), ((20, 30), "X")]},
        "b": {"ann": [((0, 5), "X"), ((10, 20), "Y")]},
    }
    preds = {
        "a": [((0, 10), "X", 0.9), ((0, 9), "X", 0.8), ((21, 30), "X", 0.6)],
        "b": [((0, 5), "X", 0.7)],
    }
    result = evaluate(*write(tmp_path, gt, preds), tiou=[0.5, 0.95])
    # tIoU 0.5: TP, FP (its best ground truth is taken), TP, TP -> prec 1, .5, 2/3, 3/4 over recall thirds
    # AP = 1/3 * 1 + 1/3 * 3/4 + 1/3 * 3/4 = 5/6.  tIoU 0.95: TP, FP, TP, FP (tIoU .9) -> 1/3 + 1/3 * 2/3 = 5/9.
    np.testing.assert_allclose(result.ap[:, 0], [5 / 6, 5 / 9])
    np.testing.assert_array_equal(result.ap[:, 1], [0.0, 0.0])  # Y has no prediction: AP 0, still in the mean
    np.testing.assert_allclose(result.mAP, [5 / 12, 5 / 18])
    assert result.warnings["classes_without_predictions"] == 1


def test_video_without_predictions_lowers_recall(tmp_path):
    gt = {"a": {"ann": [((0, 10), "X")]}, "b": {"ann": [((0, 10), "X")]}}
    result = evaluate(*write(tmp_path, gt, {"a": [((0, 10), "X", 0.5)]}), tiou=[0.5])
    assert result.ap[0, 0] == pytest.approx(0.5)
    assert result.warnings["videos_without_predictions"] == 1


def test_duplicate_predictions_are_false_positives_after_the_first(tmp_path):
    gt = {"a": {"ann": [((0, 10), "X"), ((50, 60), "X")]}}
    preds = {"a": [((0, 10), "X", 0.9), ((0, 10), "X", 0.8), ((50, 60), "X", 0.7)]}
    # TP, FP, TP: prec 1, .5, 2/3 at recall .5, .5, 1 -> 1/2 + 1/2 * 2/3
    assert evaluate(*write(tmp_path, gt, preds), tiou=[0.5]).ap[0, 0] == pytest.approx(5 / 6)


def test_zero_length_segments(tmp_path):
    gt = {"a": {"ann": [((5, 5), "X"), ((0, 10), "X")]}}
    # Two zero-length segments give 0/0 = NaN, which the official loop treats as a match (NaN < threshold is false),
    # wherever they lie -- kept so numbers stay official. A zero-length segment against a proper one has tIoU 0.
    preds = {"a": [((7, 7), "X", 0.9), ((4, 4), "X", 0.8), ((0, 10), "X", 0.7)]}
    result = evaluate(*write(tmp_path, gt, preds), tiou=[0.5])
    # TP ([5, 5] via NaN), FP ([5, 5] taken, tIoU 0 with [0, 10]), TP: 1/2 * 1 + 1/2 * 2/3
    assert result.ap[0, 0] == pytest.approx(5 / 6)


def test_tied_scores_follow_the_official_order(tmp_path):
    gt = {"a": {"ann": [((0, 10), "X")]}}
    # Official ranking is scores.argsort()[::-1]: for two tied scores the later one in the file comes first.
    later_hits = {"a": [((50, 60), "X", 0.5), ((0, 10), "X", 0.5)]}
    assert evaluate(*write(tmp_path, gt, later_hits), tiou=[0.5]).ap[0, 0] == pytest.approx(1.0)
    earlier_hits = {"a": [((0, 10), "X", 0.5), ((50, 60), "X", 0.5)]}
    assert evaluate(*write(tmp_path, gt, earlier_hits), tiou=[0.5]).ap[0, 0] == pytest.approx(0.5)


def test_unknown_videos_are_false_positives_and_unknown_labels_ignored(tmp_path):
    gt = {"a": {"ann": [((0, 10), "X")]}, "t": {"subset": "training", "ann": [((0, 10), "X")]}}
    preds = {
        "zzz": [((0, 10), "X", 0.9)],  # not in the ground truth: false positive
        "t": [((0, 10), "X", 0.95)],  # training video, outside the subset: false positive too (official)
        "a": [((0, 10), "X", 0.8), ((0, 10), "Nope", 0.99)],  # label absent from the ground truth: ignored
    }
    result = evaluate(*write(tmp_path, gt, preds), tiou=[0.5])
    assert result.ap[0, 0] == pytest.approx(1 / 3)  # FP, FP, TP
    assert result.warnings["predictions_for_unknown_videos"] == 2
    assert result.warnings["predictions_with_unknown_labels"] == 1


def test_reversed_prediction_is_scored_like_the_official(tmp_path):
    gt = {"a": {"ann": [((0, 10), "X")]}}
    # [10, 0] against [0, 10]: intersection 0, union 10 + (-10) - 0 = 0 -> NaN -> a match in the official loop.
    result = evaluate(*write(tmp_path, gt, {"a": [((10, 0), "X", 0.9)]}), tiou=[0.5])
    assert result.ap[0, 0] == pytest.approx(1.0)
    assert result.warnings["reversed_prediction_segments"] == 1


def test_thumos_ambiguous(tmp_path):
    gt = {"a": {"ann": [((0, 10), "X"), ((20, 30), "Ambiguous")]}}
    preds = {"a": [((21, 29), "X", 0.9), ((0, 10), "X", 0.8), ((20, 30), "Ambiguous", 0.99)]}
    paths = write(tmp_path, gt, preds, subset="test")
    thumos = evaluate(*paths, protocol="thumos")
    # The unmatched detection over the Ambiguous segment is neither TP nor FP; Ambiguous is not a class.
    assert thumos.labels == ("X",) and thumos.subset == "test"
    np.testing.assert_allclose(thumos.mAP, np.ones(5))
    assert thumos.warnings["ambiguous_predictions_dropped"] == 1
    assert thumos.warnings["predictions_over_ambiguous_segments"] == 1
    # Under the ActivityNet protocol "Ambiguous" is an ordinary class.
    anet = evaluate(*paths, protocol="anet", tiou=[0.5])
    assert anet.labels == ("X", "Ambiguous")
    np.testing.assert_allclose(anet.ap[0], [0.5, 1.0])


def test_protocol_thresholds():
    from re2tal_cli.evaluate import PROTOCOLS

    assert len(PROTOCOLS["anet"].tiou) == 10 and PROTOCOLS["anet"].tiou[0] == 0.5
    np.testing.assert_allclose(PROTOCOLS["thumos"].tiou, [0.3, 0.4, 0.5, 0.6, 0.7])
