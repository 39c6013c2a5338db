"""Length breakdown by hand: DETAD's rule drops predictions matched to another bin's ground truth."""

import json

import numpy as np
import pytest

from re2tal_cli.evaluate import evaluate


def test_breakdown_by_hand(tmp_path):
    database = {
        "a": {
            "subset": "validation",
            "annotations": [
                {"segment": [0, 10], "label": "X"},  # XS
                {"segment": [100, 150], "label": "X"},  # S
                {"segment": [200, 350], "label": "X"},  # L, never found
            ],
        }
    }
    results = {
        "a": [
            {"segment": [400, 410], "label": "X", "score": 0.95},  # false positive everywhere
            {"segment": [100, 150], "label": "X", "score": 0.9},
            {"segment": [0, 10], "label": "X", "score": 0.8},
        ]
    }
    (tmp_path / "gt.json").write_text(json.dumps({"database": database}))
    (tmp_path / "p.json").write_text(json.dumps({"results": results}))
    result = evaluate(tmp_path / "gt.json", tmp_path / "p.json", tiou=[0.5, 0.7], breakdown=True)
    bins = {b.name: b for b in result.breakdown}
    assert [b.num_gt for b in result.breakdown] == [1, 1, 0, 1, 0]
    # XS: FP, (S match dropped), TP -> precision 1/2 at recall 1. S likewise. L: FP only -> 0.
    np.testing.assert_allclose(bins["XS"].mAP, [0.5, 0.5])
    np.testing.assert_allclose(bins["S"].mAP, [0.5, 0.5])
    np.testing.assert_allclose(bins["L"].mAP, [0.0, 0.0])
    assert np.isnan(bins["M"].mAP).all() and bins["M"].num_gt == 0
    np.testing.assert_allclose([bins[n].average_fn_rate for n in ("XS", "S", "L")], [0.0, 0.0, 1.0])
    # whole set: FP, TP, TP with 3 positives -> 1/3 * 2/3 + 1/3 * 2/3
    assert result.mAP[0] == pytest.approx(4 / 9)
    assert (bins["XS"].low, bins["XS"].high, bins["XL"].high) == (0.0, 30.0, float("inf"))
