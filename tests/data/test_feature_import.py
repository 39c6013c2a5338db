"""`re2tal data features`: published per-video .npy/.npz features made a features directory that train-tal reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from re2tal_cli.cli.app import app
from re2tal_cli.data.datasets import Segment, VideoEntry, save_annotations
from tests.train.conftest import TINY_RECIPE

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, ["data", "features", *map(str, args)])


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("Error: ") and "Traceback" not in message, message
    return message


def _read(path):
    with safe_open(str(path), framework="np") as f:
        return f.get_tensor("feats"), f.get_tensor("times"), f.metadata()


@pytest.fixture
def dataset(tmp_path):
    """Four videos (a at 30 fps, b at 25 fps, c and d at 10 fps), one action each, and (T, 8) features of a, b, d."""
    root = tmp_path / "ds"
    entries = {
        "a": VideoEntry("a", "train", 3.0, 30.0, [Segment(2.0, 2.8, "jump")]),
        "b": VideoEntry("b", "test", 2.0, 25.0, [Segment(0.5, 1.5, "run")]),
        "c": VideoEntry("c", "train", 4.0, 10.0, [Segment(1.0, 2.0, "run")]),
        "d": VideoEntry("d", "test", 4.0, 10.0, [Segment(1.0, 3.0, "jump")]),
    }
    save_annotations(root / "annotations.json", entries)
    src = tmp_path / "i3d_features"
    src.mkdir()
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((20, 8)), "b": rng.standard_normal((10, 8)).astype(np.float16),
              "d": rng.standard_normal((7, 8))}  # fmt: skip
    for vid, array in arrays.items():
        np.save(src / f"{vid}.npy", array)
    return root, src, arrays


def test_times_are_span_centres_at_each_videos_fps_and_missing_videos_are_listed(dataset, tmp_path):
    root, src, arrays = dataset
    out = tmp_path / "feats"
    r = _run(src, "--data", root, "--out", out, "--preset", "actionformer-thumos-i3d", "--json")
    assert r.exit_code == 1, r.output  # c has no file
    summary = json.loads(r.stdout)
    assert summary["written"] == 3 and summary["channels"] == 8 and summary["features"] == 37
    assert list(summary["failed"]) == ["c"] and "c.npy" in summary["failed"]["c"] and "failed c:" in r.stderr
    feats, times, meta = _read(out / "a.safetensors")
    np.testing.assert_array_equal(feats, arrays["a"].T.astype(np.float32))
    # feature i: frames [4i, 4i + 16) at 30 fps, centred at (4i + 8) / 30 s
    np.testing.assert_allclose(times[:3], [8 / 30, 12 / 30, 16 / 30], rtol=1e-6)
    np.testing.assert_allclose(times[-1], (4 * 19 + 8) / 30, rtol=1e-6)
    assert (meta["stride"], meta["window"], float(meta["fps"])) == ("4", "16", 30.0)
    feats, times, meta = _read(out / "b.safetensors")
    assert feats.dtype == np.float32 and feats.shape == (8, 10)
    np.testing.assert_allclose(times[:2], [0.32, 0.48], rtol=1e-6)  # 25 fps: 8/25, 12/25
    index = json.loads((out / "index.json").read_text())
    assert index["arch"] is None and index["channels"] == 8 and index["source"] == str(src.resolve())
    assert index["settings"]["preset"] == "actionformer-thumos-i3d" and index["settings"]["stride"] == 4
    assert set(index["videos"]) == {"a", "b", "d"} and list(index["failed"]) == ["c"]


def test_the_training_grid_places_segments_as_actionformer_does(dataset, tmp_path):
    from re2tal_cli.data.datasets import load_annotations
    from re2tal_cli.train.data import FeatureDataset

    root, src, _ = dataset
    out = tmp_path / "feats"
    _run(src, "--data", root, "--out", out, "--stride", 4, "--window", 16, "--subset", "train", "--subset", "test")
    entries = [e for e in load_annotations(root).values() if e.id in ("a", "b")]
    items = FeatureDataset(out, entries, ["jump", "run"], train=False, max_seq_len=64)
    # ActionFormer's thumos14.py: position = (t·fps − window/2) / stride
    np.testing.assert_allclose(items[0]["segments"].numpy(), [[(2.0 * 30 - 8) / 4, (2.8 * 30 - 8) / 4]], rtol=1e-5)
    np.testing.assert_allclose(items[1]["segments"].numpy(), [[(0.5 * 25 - 8) / 4, (1.5 * 25 - 8) / 4]], rtol=1e-5)


def test_anet_preset_prefix_fixed_fps_and_npz_in_channels_first_layout(tmp_path):
    root = tmp_path / "anet"
    entries = {"v_x1": VideoEntry("v_x1", "val", 6.0, 29.97), "y2": VideoEntry("y2", "val", 40.0)}
    save_annotations(root / "annotations.json", entries)
    src = tmp_path / "tsp_features"
    src.mkdir()
    np.savez(src / "v_x1.npz", feats=np.ones((4, 6)))  # (C, T): ct
    np.savez(src / "v_y2.npz", feats=np.zeros((4, 3)), other=np.zeros(2))
    out = tmp_path / "feats"
    r = _run(src, "--data", root, "--out", out, "--preset", "actionformer-anet-tsp", "--layout", "ct", "--json")
    assert r.exit_code == 0, r.output
    assert set(json.loads((out / "index.json").read_text())["videos"]) == {"v_x1", "y2"}
    (warning,) = json.loads(r.stdout)["warnings"]  # y2: 3 features span 3.2 s of its 40 s
    assert warning.startswith("1 video ") and "y2 (3.2 s" in warning and "stride, window and fps" in warning
    feats, times, meta = _read(out / "v_x1.safetensors")
    assert feats.shape == (4, 6)
    # 15 fps for every video (the annotated 29.97 is the source video's rate): (16i + 8) / 15
    np.testing.assert_allclose(times[:3], [8 / 15, 24 / 15, 40 / 15], rtol=1e-6)
    assert meta["fps"] == "15" and meta["stride"] == "16"
    r = _run(src, "--data", root, "--out", tmp_path / "other", "--preset", "actionformer-anet-tsp", "--key", "x")
    assert "no array 'x'" in _one_line_error(r)  # every file lacks it: nothing is written
    assert not (tmp_path / "other").exists()


def test_mismatched_channels_stop_the_run_in_one_line_and_write_nothing(dataset, tmp_path):
    root, src, _ = dataset
    np.save(src / "c.npy", np.zeros((40, 6)))
    out = tmp_path / "feats"
    message = _one_line_error(_run(src, "--data", root, "--out", out, "--stride", 4, "--window", 16))
    assert "c.npy: 6 channels, but" in message and "has 8" in message and "--layout tc" in message
    assert not out.exists()


def test_bad_settings_are_refused_before_any_work(dataset, tmp_path):
    root, src, _ = dataset
    out = tmp_path / "feats"
    assert "--stride is needed" in _one_line_error(_run(src, "--data", root, "--out", out, "--window", 16))
    assert "did you mean" in _one_line_error(_run(src, "--data", root, "--out", out, "--preset", "actionformer"))
    assert "--prefix" in _one_line_error(_run(src, "--data", root, "--out", out, "--stride", 4, "--window", 16,
                                              "--prefix", "v_"))  # fmt: skip
    assert "source folder" in _one_line_error(_run(src, "--data", root, "--out", src, "--stride", 4, "--window", 16,
                                                   "--force"))  # fmt: skip
    entries = {"a": VideoEntry("a", "train", 3.0)}
    save_annotations(root / "annotations.json", entries)
    assert "--fps" in _one_line_error(_run(src, "--data", root, "--out", out, "--stride", 4, "--window", 16))
    assert not out.exists() and sorted(p.name for p in src.iterdir()) == ["a.npy", "b.npy", "d.npy"]


def test_train_tal_trains_on_imported_features_and_detect_refuses_the_run(dataset, tmp_path, videos):
    root, src, _ = dataset
    np.save(src / "c.npy", np.random.default_rng(1).standard_normal((9, 8)))
    feats = tmp_path / "feats"
    assert _run(src, "--data", root, "--out", feats, "--preset", "actionformer-thumos-i3d").exit_code == 0
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    run = tmp_path / "run"
    r = runner.invoke(app, ["train-tal", "--data", str(root), "--features", str(feats), "--recipe", str(recipe),
                            "--out", str(run), "--epochs", "1", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["mode"] == "features" and summary["final"]["epoch"] == 1
    predictions = json.loads((run / "predictions.json").read_text())["results"]
    assert set(predictions) == {"b", "d"}
    message = _one_line_error(runner.invoke(app, ["detect", str(run), str(videos["mp4"])]))
    assert "index.json" in message and "re2tal data features" in message and str(src.resolve()) in message
