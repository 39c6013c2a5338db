"""THUMOS-14 and ActivityNet-1.3 converters on small hand-written annotation files."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from re2tal_cli.cli.app import app
from re2tal_cli.data.convert import convert_activitynet, convert_thumos14
from re2tal_cli.data.datasets import load_annotations
from re2tal_cli.errors import BadDataError

runner = CliRunner()


@pytest.fixture
def thumos(tmp_path):
    val = tmp_path / "TH14" / "annotation"
    test = tmp_path / "TH14" / "test_annotation"
    val.mkdir(parents=True)
    test.mkdir(parents=True)
    (val / "BaseballPitch_val.txt").write_text(
        "video_validation_0000051 67.5 75.9\nvideo_validation_0000051 85.9 90.6 \n\nvideo_validation_0000052 1.0 2.5\n"
    )
    (val / "CliffDiving_val.txt").write_text("video_validation_0000052 10.2 13.0\n")
    (val / "Diving_val.txt").write_text("video_validation_0000052 10.2 13.0\n")  # CliffDiving is also Diving
    (val / "Ambiguous_val.txt").write_text("video_validation_0000051 80.0 81.5\n")
    (test / "BaseballPitch_test.txt").write_text("video_test_0000004 0.2 1.1\nvideo_test_0000004 118.0 125.0\n")
    (test / "Ambiguous_test.txt").write_text("video_test_0001292 3.0 7.0\nvideo_test_0000004 5 6\n")
    durations = tmp_path / "durations.json"
    durations.write_text(
        json.dumps(
            {
                "video_validation_0000051": 120.0,
                "video_validation_0000052": 30.0,
                "video_test_0000004": 120.0,
                "video_test_0001292": 60.0,
            }
        )
    )
    return tmp_path / "TH14", durations


def test_thumos(thumos):
    root, durations = thumos
    result = convert_thumos14(root, durations=durations)
    e = result.entries
    assert sorted(e) == [
        "video_test_0000004",
        "video_test_0001292",
        "video_validation_0000051",
        "video_validation_0000052",
    ]
    assert result.classes == ["BaseballPitch", "CliffDiving", "Diving"]  # Ambiguous is not a class
    v51 = e["video_validation_0000051"]
    assert v51.subset == "train" and v51.duration == 120.0  # validation → train
    assert [(s.start, s.end, s.label) for s in v51.segments] == [
        (67.5, 75.9, "BaseballPitch"),
        (85.9, 90.6, "BaseballPitch"),
    ]
    assert v51.ambiguous == [(80.0, 81.5)]
    assert {s.label for s in e["video_validation_0000052"].segments} == {"BaseballPitch", "CliffDiving", "Diving"}
    t4 = e["video_test_0000004"]
    assert t4.subset == "test"
    assert [(s.start, s.end) for s in t4.segments] == [(0.2, 1.1), (118.0, 120.0)]  # clipped to the duration
    only_amb = e["video_test_0001292"]
    assert only_amb.segments == [] and only_amb.ambiguous == [(3.0, 7.0)]  # kept, as the official test set keeps it
    assert any("only Ambiguous" in w for w in result.warnings)


def test_thumos_cli_roundtrip(thumos, tmp_path):
    root, durations = thumos
    out = tmp_path / "ds"
    r = runner.invoke(
        app, ["data", "convert", "thumos14", str(root), "--durations", str(durations), "--out", str(out), "--json"]
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["videos"] == 4 and summary["instances"] == 7 and summary["ambiguous_spans"] == 3
    raw = json.loads((out / "annotations.json").read_text())
    labels = {a["label"] for v in raw["database"].values() for a in v["annotations"]}
    assert "Ambiguous" in labels  # written as the evaluator's THUMOS protocol expects them
    entries = load_annotations(out)
    assert entries["video_validation_0000051"].ambiguous == [(80.0, 81.5)]
    assert all(s.label != "Ambiguous" for e in entries.values() for s in e.segments)
    # a second run refuses to overwrite without --force
    r = runner.invoke(app, ["data", "convert", "thumos14", str(root), "--durations", str(durations), "--out", str(out)])
    assert r.exit_code == 2 and "pass --force" in r.stderr


def test_thumos_probes_videos(thumos, tmp_path, videos):
    import shutil

    root, _ = thumos
    vids = tmp_path / "thumos_videos"
    vids.mkdir()
    for name in ("video_validation_0000051", "video_validation_0000052", "video_test_0000004", "video_test_0001292"):
        shutil.copy(videos["mp4"], vids / f"{name}.mp4")
    result = convert_thumos14(root, videos=vids)
    assert result.entries["video_validation_0000052"].duration == pytest.approx(9.0)  # 90 frames at 10 fps
    assert result.entries["video_validation_0000052"].fps == pytest.approx(10.0)
    # everything past the (short) video is dropped, with a warning
    assert result.entries["video_validation_0000051"].segments == []
    assert any("start after the video's end" in w for w in result.warnings)


def test_thumos_errors(thumos, tmp_path):
    root, durations = thumos
    with pytest.raises(BadDataError, match="no video durations"):
        convert_thumos14(root)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "HighJump_val.txt").write_text("video_validation_0000001 3.0\n")
    with pytest.raises(BadDataError, match=r"HighJump_val.txt:1: expected '<video> <start> <end>'"):
        convert_thumos14(bad, durations=durations)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("not an annotation file")
    with pytest.raises(BadDataError, match="no THUMOS-14 annotation files found"):
        convert_thumos14(empty, durations=durations)
    with pytest.raises(BadDataError, match="no such file or directory"):
        convert_thumos14(tmp_path / "nowhere", durations=durations)
    r = runner.invoke(app, ["data", "convert", "thumos14", str(root), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("Error: THUMOS-14 annotation files carry no video durations")


def test_activitynet(tmp_path):
    src = tmp_path / "anet.json"
    src.write_text(
        json.dumps(
            {
                "version": "VERSION 1.3",
                "taxonomy": [{"nodeName": "Long jump", "parentName": "Track and field"}],
                "database": {
                    "abc123": {
                        "subset": "training",
                        "duration": 40.5,
                        "resolution": "640x360",
                        "url": "https://www.youtube.com/watch?v=abc123",
                        "annotations": [
                            {"segment": [3.2, 20.0], "label": "Long jump"},
                            {"segment": [30, 44], "label": "Long jump"},
                        ],
                    },
                    "def456": {
                        "subset": "validation",
                        "duration": 12.0,
                        "annotations": [{"segment": [0.0, 5.0], "label": "Shot put"}],
                    },
                    "ghi789": {"subset": "testing", "duration": 50.0, "annotations": []},
                },
            }
        )
    )
    result = convert_activitynet(src, id_prefix="v_")
    e = result.entries
    assert sorted(e) == ["v_abc123", "v_def456", "v_ghi789"]
    assert [x.subset for x in (e["v_abc123"], e["v_def456"], e["v_ghi789"])] == ["train", "val", "test"]
    assert [(s.start, s.end) for s in e["v_abc123"].segments] == [(3.2, 20.0), (30.0, 40.5)]
    assert result.classes == ["Long jump", "Shot put"]
    out = tmp_path / "anet"
    r = runner.invoke(app, ["data", "convert", "activitynet", str(src), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["subsets"] == {"test": 1, "train": 1, "val": 1}
    assert load_annotations(out)["abc123"].duration == 40.5


def test_activitynet_errors(tmp_path):
    src = tmp_path / "a.json"
    src.write_text(json.dumps({"database": {"x": {"subset": "train", "duration": 3}}}))
    with pytest.raises(BadDataError, match="subset 'train' is not one of training, validation, testing"):
        convert_activitynet(src)
    src.write_text("{not json")
    r = runner.invoke(app, ["data", "convert", "activitynet", str(src), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "malformed JSON" in r.stderr
    r = runner.invoke(app, ["data", "convert", "kinetics", str(src), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown annotation format 'kinetics'" in r.stderr
