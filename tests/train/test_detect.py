"""`re2tal detect`: one video through a trained run (frames and features runs), its JSON, timeline and bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.train.conftest import invoke, ok, one_line_error


def _test_video(synth) -> str:
    database = json.loads((synth / "annotations.json").read_text())["database"]
    return next(vid for vid, v in sorted(database.items()) if v["subset"] == "test")


@pytest.mark.parametrize("which", ["end_to_end_run", "features_run"])
def test_detect_gives_what_the_run_evaluated(which, request, synth):
    """With the checkpoint the last evaluation used, a video's detections are the run's predictions for it."""
    run, _ = request.getfixturevalue(which)
    vid = _test_video(synth)
    result = json.loads(ok(invoke("detect", run, synth / "videos" / f"{vid}.mp4", "--checkpoint", "last",
                                  "--json")).stdout)  # fmt: skip
    evaluated = json.loads((run / "predictions.json").read_text())["results"][vid]
    assert result["checkpoint"]["name"] == "last" and result["checkpoint"]["weights"] == "model"
    assert len(result["detections"]) == len(evaluated)
    for mine, theirs in zip(result["detections"], evaluated, strict=True):
        assert mine["label"] == theirs["label"]
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)
        assert mine["segment"] == pytest.approx(theirs["segment"], abs=1e-3)


def test_detect_writes_json_and_a_timeline(end_to_end_run, synth, tmp_path):
    run, _ = end_to_end_run
    vid = _test_video(synth)
    out, plot = tmp_path / "found.json", tmp_path / "timeline.png"
    result = ok(invoke("detect", run, synth / "videos" / f"{vid}.mp4", "--out", out, "--plot", plot, "--gt", synth,
                       "--top-k", "5", "--threshold", "0.01"))  # fmt: skip
    written = json.loads(out.read_text())
    assert 0 < len(written["detections"]) <= 5 and all(d["score"] > 0.01 for d in written["detections"])
    scores = [d["score"] for d in written["detections"]]
    assert scores == sorted(scores, reverse=True)
    assert written["duration"] == pytest.approx(json.loads((synth / "annotations.json").read_text())["database"][vid]
                                                ["duration"], abs=0.2)  # fmt: skip
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    assert "timeline: " in result.stdout and written["detections"][0]["label"] in result.stdout


def test_detect_reads_any_container(end_to_end_run, videos, tmp_path):
    run, _ = end_to_end_run
    for kind in ("offset_mkv", "ts", "mpeg4_avi"):
        found = json.loads(ok(invoke("detect", run, videos[kind], "--json")).stdout)
        assert all(0 <= d["segment"][0] < d["segment"][1] <= found["duration"] for d in found["detections"])


def test_detect_bad_input_is_one_line(end_to_end_run, synth, tmp_path):
    run, _ = end_to_end_run
    video = synth / "videos" / f"{_test_video(synth)}.mp4"
    assert "--threshold" in one_line_error(invoke("detect", run, video, "--threshold", "1.5"))
    assert "--top-k" in one_line_error(invoke("detect", run, video, "--top-k", "0"))
    assert "not a train-tal run" in one_line_error(invoke("detect", tmp_path, video))
    assert "missing.mp4" in one_line_error(invoke("detect", run, tmp_path / "missing.mp4"))
    assert "/proc/re2tal" in one_line_error(invoke("detect", run, video, "--plot", "/proc/re2tal/t.png"))
    other = tmp_path / "other.mp4"
    shutil.copy(video, other)
    assert "no annotation for video 'other'" in one_line_error(invoke("detect", run, other, "--gt", synth))
