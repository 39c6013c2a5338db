"""`re2tal extract`: shapes and metadata, equality with the backbone, failures, resume, atomic outputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from re2tal_cli.cli.app import app
from re2tal_cli.data.datasets import VideoEntry, save_annotations
from re2tal_cli.data.sampling import snippet_starts
from re2tal_cli.data.video import decode_all
from re2tal_cli.extract import read_features

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from re2tal_cli.checkpoint import save_backbone
    from re2tal_cli.models.registry import create_model
    from re2tal_cli.reversible.wiring import Wiring

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("ckpt")
    save_backbone(
        create_model("vit-tiny"),
        out,
        {"arch": "vit-tiny", "wiring": Wiring().to_json(), "source": {"uri": "random-init"}},
    )
    return out


@pytest.fixture
def dataset(tmp_path, videos):
    root = tmp_path / "ds"
    (root / "videos").mkdir(parents=True)
    shutil.copy(videos["mp4"], root / "videos" / "a.mp4")  # 90 frames
    shutil.copy(videos["offset_mkv"], root / "videos" / "b.mkv")  # 50 frames
    shutil.copy(videos["garbage"], root / "videos" / "bad.mp4")
    entries = {
        vid: VideoEntry(id=vid, subset="test", duration=d)
        for vid, d in (("a", 9.0), ("b", 5.0), ("bad", 3.0), ("gone", 3.0))
    }
    save_annotations(root / "annotations.json", entries)
    return root


def _run(*args):
    return runner.invoke(app, ["extract", *map(str, args)])


def test_snippets_failures_and_resume(checkpoint, dataset, tmp_path):
    out = tmp_path / "feats"
    r = _run(checkpoint, "--data", dataset, "--out", out, "--clip", 4, "--stride", 2, "--batch", 3, "--json")
    assert r.exit_code == 1  # two videos failed, the others were extracted
    summary = json.loads(r.stdout)
    assert sorted(summary["failed"]) == ["bad", "gone"] and summary["written"] == 2
    assert "not a readable video" in summary["failed"]["bad"] and "no video file" in summary["failed"]["gone"]
    assert "failed bad" in r.stderr

    feats, meta = read_features(out / "a.safetensors")
    assert feats.shape == (32, len(snippet_starts(90, 4, 2)))  # (C, N), C = vit-tiny's width
    assert meta["arch"] == "vit-tiny" and meta["stride"] == "2" and meta["window"] == "4" and meta["fps"] == "10"
    assert meta["source"] == str(checkpoint) and json.loads(meta["settings"])["mode"] == "snippet"
    index = json.loads((out / "index.json").read_text())
    assert sorted(index["videos"]) == ["a", "b"] and sorted(index["failed"]) == ["bad", "gone"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind

    # the first snippet's feature is the backbone's output on frames 0..3, preprocessed as documented
    from re2tal_cli.checkpoint import load_backbone
    from re2tal_cli.data.transforms import eval_transform, normalize, to_tensor

    loaded = load_backbone(checkpoint)
    frames, _ = decode_all(dataset / "videos" / "a.mp4")
    x = to_tensor(frames[2:6])
    x = torch.stack([(eval_transform(x[:, t : t + 1], 32) * 255).round() / 255 for t in range(4)], 1)[:, :, 0]
    with torch.inference_mode():
        want = loaded.model.eval().temporal_features(normalize(x, loaded.input.mean, loaded.input.std)[None]).mean(-1)
    torch.testing.assert_close(feats[:, 1], want[0], rtol=1e-4, atol=1e-5)

    # resume: finished outputs are kept as they are, only the failures are retried
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    r = _run(checkpoint, "--data", dataset, "--out", out, "--clip", 4, "--stride", 2, "--batch", 3, "--json")
    assert r.exit_code == 1
    again = json.loads(r.stdout)
    assert again["written"] == 0 and again["skipped"] == 2 and sorted(again["failed"]) == ["bad", "gone"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")} == before

    # once the bad videos are gone from the dataset, the run succeeds
    save_annotations(dataset / "annotations.json", {v: VideoEntry(id=v, subset="test", duration=5) for v in ("a", "b")})
    r = _run(checkpoint, "--data", dataset, "--out", out, "--clip", 4, "--stride", 2, "--batch", 3)
    assert r.exit_code == 0, r.output
    assert "0 written, 2 already done, 0 failed" in " ".join(r.stdout.split())

    # other settings into the same folder: refused with the fix
    r = _run(checkpoint, "--data", dataset, "--out", out, "--clip", 4, "--stride", 3)
    assert r.exit_code == 2 and "was extracted with other settings; pass --force" in r.stderr


def test_frames_mode(checkpoint, dataset, tmp_path):
    save_annotations(dataset / "annotations.json", {"a": VideoEntry(id="a", subset="test", duration=9.0)})
    out = tmp_path / "feats"
    r = _run(checkpoint, "--data", dataset, "--out", out, "--mode", "frames", "--window", 16, "--json")
    assert r.exit_code == 0, r.output
    feats, meta = read_features(out / "a.safetensors")
    assert feats.shape == (32, 45)  # 90 frames, temporal stride 2
    assert meta["stride"] == "2" and meta["window"] == "2"
    from safetensors.torch import load_file

    times = load_file(out / "a.safetensors")["times"]
    np.testing.assert_allclose(
        times[:3].numpy(), [0.1, 0.3, 0.5], atol=1e-6
    )  # centres of frame pairs [0, 0.2) … at 10 fps

    out2 = tmp_path / "feats2"
    r = _run(checkpoint, "--data", dataset, "--out", out2, "--mode", "frames", "--num-frames", 32, "--window", 16)
    assert r.exit_code == 0, r.output
    assert read_features(out2 / "a.safetensors")[0].shape == (32, 16)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "clips"], "--mode must be snippet or frames"),
        (["--mode", "frames", "--window", "3"], "--window 3 must be a positive multiple of 2"),
        (["--clip", "3"], "--clip 3 must be a multiple of 2"),
        (["--device", "cuda:7"], "CUDA is not available"),
    ],
)
def test_bad_options(checkpoint, dataset, tmp_path, args, message):
    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("CUDA present")
    r = _run(checkpoint, "--data", dataset, "--out", tmp_path / "f", *args)
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: ") and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_data_and_checkpoint(checkpoint, tmp_path):
    r = _run(checkpoint, "--data", tmp_path / "nope", "--out", tmp_path / "f")
    assert r.exit_code == 2 and "no such dataset directory" in r.stderr
    r = _run(tmp_path / "no_ckpt", "--data", tmp_path, "--out", tmp_path / "f")
    assert r.exit_code == 2
