"""Random inputs checked against a reference written here with plain loops, independently of re2tal's code.

The reference follows the official evaluator's rules one prediction at a time: classes in order of first appearance;
a class's predictions ranked by NumPy's default argsort of their scores in file order, reversed (the official tie
order); each prediction walks its video's ground truth of the same class by descending tIoU (NaN first) and takes
the first one not yet matched, stopping at the first tIoU below the threshold; VOC-2011 interpolated AP.
"""

import json
import math

import numpy as np
import pytest

from re2tal_cli.evaluate import evaluate


def iou(p, g):
    inter = max(0.0, min(p[1], g[1]) - max(p[0], g[0]))
    union = (g[1] - g[0]) + (p[1] - p[0]) - inter
    return inter / union if union != 0 else math.nan


def voc_ap(flags, npos):
    """flags: 'tp' / 'fp' / None (not counted) in ranking order."""
    tp = fp = 0
    prec, rec = [], []
    for f in flags:
        if f is None:
            continue
        tp += f == "tp"
        fp += f == "fp"
        prec.append(tp / (tp + fp))
        rec.append(tp / npos)
    mprec, mrec = [0.0, *prec, 0.0], [0.0, *rec, 1.0]
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mprec[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def reference(database, results, subset, thresholds, ambiguous=None):
    gts, amb = [], []  # (video, label, start, end)
    for vid, v in database.items():
        if v["subset"] != subset:
            continue
        for a in v["annotations"]:
            (amb if a["label"] == ambiguous else gts).append((vid, a["label"], *a["segment"]))
    classes = list(dict.fromkeys(g[1] for g in gts))
    preds = [(vid, r["label"], *r["segment"], r["score"]) for vid, rows in results.items() for r in rows]
    ap = np.zeros((len(thresholds), len(classes)))
    for c, label in enumerate(classes):
        cls_gt = [g for g in gts if g[1] == label]
        cls_pred = [p for p in preds if p[1] == label]
        if not cls_pred:
            continue
        ranking = np.array([p[4] for p in cls_pred]).argsort()[::-1]
        for t, thr in enumerate(thresholds):
            taken, flags = set(), []
            for i in ranking:
                p = cls_pred[i]
                cands = [j for j, g in enumerate(cls_gt) if g[0] == p[0]]
                ious = np.array([iou(p[2:4], cls_gt[j][2:4]) for j in cands])
                flag = "fp"
                for k in ious.argsort()[::-1]:
                    if ious[k] < thr:
                        break
                    if cands[k] not in taken:
                        taken.add(cands[k])
                        flag = "tp"
                        break
                lo, hi = min(p[2:4]), max(p[2:4])
                if flag == "fp" and any(a[0] == p[0] and min(hi, a[3]) - max(lo, a[2]) > 0 for a in amb):
                    flag = None
                flags.append(flag)
            ap[t, c] = voc_ap(flags, len(cls_gt))
    return classes, ap


def random_case(seed):
    rng = np.random.default_rng(seed)
    labels = ["A", "B", "C", "D"]
    database, results = {}, {}
    for v in range(12):
        vid = f"v{v}"
        anns = []
        for _ in range(rng.integers(0, 5)):
            s = int(rng.integers(0, 40))
            anns.append(
                {"segment": [s, s + int(rng.integers(0, 15))], "label": str(rng.choice(labels + ["Ambiguous"]))}
            )
        database[vid] = {"subset": "test" if v < 10 else "train", "annotations": anns}
    for v in range(14):  # v12, v13: videos absent from the ground truth
        rows = []
        for _ in range(rng.integers(0, 10)):
            s = int(rng.integers(0, 40))
            e = s + int(rng.integers(-2, 15))  # a few reversed and zero-length segments
            score = round(float(rng.random()), 1)  # coarse scores: many ties
            rows.append({"segment": [s, max(e, 0)], "label": str(rng.choice(labels)), "score": score})
        if v != 3:  # v3 has no predictions at all
            results[f"v{v}"] = rows
    return database, results


@pytest.mark.parametrize("protocol", ["anet", "thumos"])
def test_random_inputs_match_the_reference(tmp_path, protocol):
    ambiguous = "Ambiguous" if protocol == "thumos" else None
    thresholds = [0.1, 0.3, 0.5, 0.7, 0.9]
    checked = 0
    for seed in range(40):
        database, results = random_case(seed)
        if not any(
            a["label"] != ambiguous for v in database.values() if v["subset"] == "test" for a in v["annotations"]
        ):
            continue
        (tmp_path / "gt.json").write_text(json.dumps({"database": database}))
        (tmp_path / "pred.json").write_text(json.dumps({"results": results}))
        result = evaluate(tmp_path / "gt.json", tmp_path / "pred.json", protocol, thresholds, subset="test")
        classes, ap = reference(database, results, "test", thresholds, ambiguous)
        assert list(result.labels) == classes, seed
        np.testing.assert_allclose(result.ap, ap, rtol=0, atol=1e-12, err_msg=f"seed {seed}")
        checked += 1
    assert checked > 30
