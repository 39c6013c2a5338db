"""`re2tal evaluate` through Typer's runner: outputs, the length breakdown, and one-line errors with exit code 2."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from re2tal_cli.cli.app import app

runner = CliRunner()


@pytest.fixture
def dataset(tmp_path):
    """A dataset dir and a run dir; instance lengths 10 s (XS), 45 s (S), 200 s (XL)."""
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    run.mkdir()
    database = {
        "a": {
            "subset": "validation",
            "annotations": [{"segment": [0, 10], "label": "X"}, {"segment": [20, 65], "label": "X"}],
        },
        "b": {"subset": "validation", "annotations": [{"segment": [0, 200], "label": "Y"}]},
        "c": {"subset": "training", "annotations": [{"segment": [0, 5], "label": "X"}]},
    }
    results = {
        "a": [{"segment": [0, 10], "label": "X", "score": 0.9}, {"segment": [100, 120], "label": "X", "score": 0.8}],
        "b": [{"segment": [150, 160], "label": "Y", "score": 0.7}],
    }
    (data / "annotations.json").write_text(json.dumps({"database": database}))
    (run / "predictions.json").write_text(json.dumps({"results": results}))
    return data, run


def test_json_output(dataset):
    data, run = dataset
    res = runner.invoke(app, ["evaluate", str(data), str(run), "--json", "--breakdown", "--per-class", "--tiou", "0.5"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["tiou"] == [0.5] and out["subset"] == "validation"
    # X: TP, FP with 2 positives -> 1/2; Y: FP -> 0
    assert out["mAP"] == [pytest.approx(0.25)] and out["average_mAP"] == pytest.approx(0.25)
    bins = out["breakdown"]
    assert [bins[b]["num_gt"] for b in ("XS", "S", "M", "L", "XL")] == [1, 1, 0, 0, 1]
    assert bins["XS"]["average_mAP"] == pytest.approx(1.0) and bins["XS"]["average_fn_rate"] == 0.0
    assert bins["S"]["average_mAP"] == 0.0 and bins["S"]["average_fn_rate"] == 1.0
    assert bins["M"]["average_mAP"] is None
    assert [row["label"] for row in out["per_class"]] == ["X", "Y"]


def test_table_output_and_plot(dataset, tmp_path):
    data, run = dataset
    png = tmp_path / "fig" / "breakdown.png"
    res = runner.invoke(app, ["evaluate", str(data / "annotations.json"), str(run), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "average" in res.stdout and "By action length" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_anet_thresholds(dataset):
    data, run = dataset
    out = json.loads(runner.invoke(app, ["evaluate", str(data), str(run), "--json"]).stdout)
    assert out["tiou"] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert out["breakdown"] is None
    np.testing.assert_allclose(out["average_mAP"], np.mean(out["mAP"]))


def _error(args):
    res = runner.invoke(app, ["evaluate", *map(str, args)])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def _pred(tmp_path, rows, vid="a"):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"results": {vid: rows}}))
    return path


def test_bad_inputs_give_one_line(dataset, tmp_path):
    data, run = dataset
    gt = data / "annotations.json"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "bad.json: malformed JSON" in _error([gt, bad])
    assert "no 'results'" in _error([gt, gt])
    assert "p.json" in (msg := _error([gt, _pred(tmp_path, [{"segment": [0, 1], "label": "X"}])])) and "score" in msg
    nan = '{"results": {"a": [{"segment": [0, 1], "label": "X", "score": NaN}]}}'
    (tmp_path / "nan.json").write_text(nan)
    assert "nan.json" in (msg := _error([gt, tmp_path / "nan.json"])) and "finite" in msg
    assert "negative" in _error([gt, _pred(tmp_path, [{"segment": [-1, 1], "label": "X", "score": 1}])])
    assert "another dataset" in _error([gt, _pred(tmp_path, [{"segment": [0, 1], "label": "X", "score": 1}], vid="zz")])
    assert "must be a class name" in _error([gt, _pred(tmp_path, [{"segment": [0, 1], "label": 3, "score": 1}])])
    assert "class names used" in _error([gt, _pred(tmp_path, [{"segment": [0, 1], "label": "Nope", "score": 1}])])
    msg = _error([gt, run, "--subset", "testing"])
    assert "annotations.json" in msg and "'validation'" in msg and "'training'" in msg
    assert "unknown protocol 'thumso'" in _error([gt, run, "--protocol", "thumso"])
    assert "tIoU thresholds must be in (0, 1], got 1.5" in _error([gt, run, "--tiou", "0.5,1.5"])
    assert "no predictions.json" in _error([gt, tmp_path])
    assert "no such file" in _error([tmp_path / "missing.json", run])


def test_bad_ground_truth(tmp_path, dataset):
    _, run = dataset
    gt = tmp_path / "gt.json"
    gt.write_text(
        json.dumps({"database": {"a": {"subset": "validation", "annotations": [{"segment": [5, 1], "label": "X"}]}}})
    )
    msg = _error([gt, run])
    assert "gt.json" in msg and "reversed" in msg and "annotations[0]" in msg
    gt.write_text(json.dumps({"version": 1}))
    assert "no 'database'" in _error([gt, run])


def test_plot_without_matplotlib_says_so(dataset, tmp_path, monkeypatch):
    import sys

    data, run = dataset
    for name in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib... raises ImportError
    res = runner.invoke(app, ["evaluate", str(data), str(run), "--plot", str(tmp_path / "x.png")])
    assert res.exit_code == 1
    assert res.stderr.strip() == "Error: --plot needs matplotlib: pip install 're2tal[plot]'"
    assert not (tmp_path / "x.png").exists()


def test_default_subset_is_val_as_data_convert_writes_activitynet(dataset):
    """`re2tal data convert activitynet` names the validation set `val` and keeps an unannotated `test`."""
    data, run = dataset
    annotations = json.loads((data / "annotations.json").read_text())
    for video in annotations["database"].values():
        video["subset"] = {"validation": "val", "training": "train"}[video["subset"]]
    annotations["database"]["d"] = {"subset": "test", "annotations": []}
    (data / "annotations.json").write_text(json.dumps(annotations))
    result = runner.invoke(app, ["evaluate", str(data), str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["subset"] == "val"
