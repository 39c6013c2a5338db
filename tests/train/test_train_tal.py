"""`re2tal train-tal` through the CLI: the run directory, the three sources, resume after SIGKILL, the NaN stop, bad
input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from re2tal_cli.evaluate import evaluate
from re2tal_cli.train.recipe import read_yaml, recipe_from_mapping
from tests.train.conftest import (
    invoke,
    killed_and_resumed,
    metrics_without_timing,
    ok,
    one_line_error,
    records,
    same_last_checkpoint,
)


def test_end_to_end_run_writes_a_complete_run_directory(end_to_end_run, synth, rewired):
    run, summary = end_to_end_run
    for name in ("config.yaml", "metrics.jsonl", "predictions.json", "summary.json"):
        assert (run / name).is_file(), name
    for checkpoint in ("last", "best"):
        assert {p.name for p in (run / "checkpoints" / checkpoint).iterdir()} == {
            "model.safetensors", "state.pt", "meta.json"}  # fmt: skip
    config = recipe_from_mapping(read_yaml(run / "config.yaml"))  # every field written, and it reads back
    assert config.source.mode.value == "end_to_end" and config.source.backbone == str(rewired.resolve())
    assert config.train.epochs == 2 and config.backbone.drop_path == 0.1
    steps = records(run, "step")
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)) and {s["epoch"] for s in steps} == {1, 2}
    for record in steps:
        assert math.isfinite(record["loss"]) and record["lr"] > 0 and record["backbone_lr"] > 0
        assert record["grad_norm"] > 0 and record["peak_memory_bytes"] > 0 and record["steps_per_s"] > 0
    assert steps[0]["lr"] < steps[-2]["lr"]  # warm-up over the first epoch
    epochs = records(run, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2]
    for record in epochs:  # the rewired backbone ran reversibly, every stage's guard passed
        assert record["guard"]["backward_passes"] > 0 and record["guard"]["fallbacks"] == 0
        assert record["guard"]["max_error"] < 1e-3
    assert [e["epoch"] for e in records(run, "eval")] == [1, 2]
    assert summary == json.loads((run / "summary.json").read_text())
    assert summary["mode"] == "end_to_end" and summary["final"]["epoch"] == 2


def test_summary_map_is_what_re2tal_evaluate_says_of_the_run(end_to_end_run, synth):
    run, summary = end_to_end_run
    result = ok(invoke("evaluate", synth, run, "--protocol", "thumos", "--subset", "test", "--json"))
    report = json.loads(result.stdout)
    assert report["average_mAP"] == summary["final"]["average_mAP"]
    direct = evaluate(synth, run / "predictions.json", protocol="thumos", subset="test")
    assert direct.average_mAP == summary["final"]["average_mAP"]
    predictions = json.loads((run / "predictions.json").read_text())["results"]
    annotations = json.loads((synth / "annotations.json").read_text())["database"]
    assert set(predictions) == {v for v, a in annotations.items() if a["subset"] == "test"}
    for vid, detections in predictions.items():
        assert detections
        for d in detections:
            assert 0.0 <= d["segment"][0] < d["segment"][1] <= annotations[vid]["duration"]
            assert d["label"] in ("circle-cw-slow", "circle-ccw-slow") and 0.0 <= d["score"] <= 1.0


def test_end_to_end_trains_the_backbone_and_frozen_does_not(end_to_end_run, synth, rewired, recipe, tmp_path):
    source = load_file(rewired / "model.safetensors")
    run, _ = end_to_end_run
    trained = load_file(run / "checkpoints" / "last" / "model.safetensors")
    changed = [k for k, v in source.items() if v.is_floating_point() and not torch.equal(trained[f"backbone.{k}"], v)]
    assert changed
    frozen = tmp_path / "frozen"
    ok(invoke("train-tal", "--data", synth, "--backbone", rewired, "--frozen", "--recipe", recipe, "--out", frozen,
              "--epochs", "1"))  # fmt: skip
    kept = load_file(frozen / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.equal(kept[f"backbone.{k}"], v) for k, v in source.items())
    assert records(frozen, "epoch")[0]["guard"]["backward_passes"] == 0  # no backward through the backbone


def test_features_run_reads_stride_and_fps_from_the_features(features_run, synth):
    run, summary = features_run
    assert summary["mode"] == "features" and summary["final"]["epoch"] == 3
    assert "backbone_lr" not in records(run, "step")[0]
    predictions = json.loads((run / "predictions.json").read_text())["results"]
    annotations = json.loads((synth / "annotations.json").read_text())["database"]
    for vid, detections in predictions.items():
        assert detections and all(0 <= d["segment"][0] < d["segment"][1] <= annotations[vid]["duration"]
                                  for d in detections)  # fmt: skip


def test_existing_run_is_refused_without_resume_or_force(end_to_end_run, synth, rewired, recipe):
    run, _ = end_to_end_run
    before = (run / "metrics.jsonl").read_bytes()
    message = one_line_error(invoke("train-tal", "--data", synth, "--backbone", rewired, "--recipe", recipe,
                                    "--out", run))  # fmt: skip
    assert "--resume" in message and "--force" in message
    assert (run / "metrics.jsonl").read_bytes() == before


def test_a_run_killed_and_resumed_ends_as_one_never_interrupted(synth, rewired, recipe, tmp_path):
    """SIGKILL during epoch 2 or 3 of 3, then --resume: the same metrics and weights, bit for bit (CPU, same seed)."""
    args = ["train-tal", "--data", synth, "--backbone", rewired, "--recipe", recipe, "--epochs", 3, "--json"]
    whole, killed = killed_and_resumed(args, 3, tmp_path)
    assert metrics_without_timing(killed) == metrics_without_timing(whole)
    assert same_last_checkpoint(whole, killed)
    whole_summary, resumed_summary = (json.loads((r / "summary.json").read_text()) for r in (whole, killed))
    assert all(whole_summary[k] == resumed_summary[k] for k in ("final", "best"))


def test_resume_takes_no_recipe_options(end_to_end_run):
    run, _ = end_to_end_run
    message = one_line_error(invoke("train-tal", "--out", run, "--resume", "--epochs", "5"))
    assert "config.yaml" in message and "--epochs" in message


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(synth, rewired, recipe, tmp_path, monkeypatch):
    import re2tal_cli.train.tal as tal

    real, calls = tal.losses, []

    def losses_going_nan(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) > 3:  # epoch 1 has 3 steps (5 training videos × 2 windows / batch 2 ... = 3 batches)
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(tal, "losses", losses_going_nan)
    run = tmp_path / "run"
    message = one_line_error(invoke("train-tal", "--data", synth, "--backbone", rewired, "--recipe", recipe,
                                    "--out", run), code=1)  # fmt: skip
    assert "epoch 2, step 4: the loss is nan" in message and "epoch 1" in message
    assert json.loads((run / "checkpoints" / "last" / "meta.json").read_text())["epoch"] == 1
    assert not (run / "summary.json").exists()


@pytest.fixture
def broken_set(synth, tmp_path):
    """A copy of the synthetic set to break."""
    copy = tmp_path / "data"
    shutil.copytree(synth, copy)
    return copy


def _annotations(root: Path) -> dict:
    return json.loads((root / "annotations.json").read_text())


def _write_annotations(root: Path, data: dict) -> None:
    (root / "annotations.json").write_text(json.dumps(data))


def _missing_videos(root: Path) -> str:
    for vid in list(_annotations(root)["database"])[:2]:
        (root / "videos" / f"{vid}.mp4").unlink()
    return "2 videos cannot be read"


def _unreadable_video(root: Path) -> str:
    vid = next(iter(_annotations(root)["database"]))
    (root / "videos" / f"{vid}.mp4").write_bytes(b"not a video")
    return f"{vid} (unreadable)"


def _unknown_label(root: Path) -> str:
    data = _annotations(root)
    test = next(v for v in data["database"].values() if v["subset"] == "test")
    test["annotations"][0]["label"] = "juggling"
    _write_annotations(root, data)
    return "1 label not in the class list: juggling ("


def _no_validation_subset(root: Path) -> str:
    data = _annotations(root)
    for video in data["database"].values():
        video["subset"] = "train"
    _write_annotations(root, data)
    return "no videos in subset 'test' (subsets: train)"


@pytest.mark.parametrize("breakage", [_missing_videos, _unreadable_video, _unknown_label, _no_validation_subset])
def test_bad_datasets_are_one_line_before_training(breakage, broken_set, rewired, recipe, tmp_path):
    expected = breakage(broken_set)
    run = tmp_path / "run"
    message = one_line_error(invoke("train-tal", "--data", broken_set, "--backbone", rewired, "--recipe", recipe,
                                    "--out", run))  # fmt: skip
    assert expected in message
    assert not run.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "train.epoch=3"], "unknown recipe key train.epoch; did you mean train.epochs,"),
        (["--set", "train.lr=fast"], "recipe key train.lr must be a number, got 'fast'"),
        (["--set", "data.augment.flip=[1, 2]"], "recipe key data.augment.flip must be a number"),
        (["--set", "model.actionformer.num_heads=3"], "embed_dim 16 must be divisible by num_heads 3"),
        (["--set", "data.num_frames=60"], "data.num_frames (60) must be a multiple of 32"),
        (["--set", "nonsense"], "expected KEY=VALUE"),
        (["--amp", "fp16"], "fp16 needs CUDA"),
        (["--epochs", "0"], "train.epochs must be at least 1"),
    ],
)
def test_recipe_errors_name_the_key(args, expected, synth, rewired, recipe, tmp_path):
    run = tmp_path / "run"
    message = one_line_error(invoke("train-tal", "--data", synth, "--backbone", rewired, "--recipe", recipe,
                                    "--out", run, *args))  # fmt: skip
    assert expected in message
    assert not run.exists()


def test_source_options_are_checked(synth, rewired, tmp_path):
    run = tmp_path / "run"
    both = one_line_error(invoke("train-tal", "--data", synth, "--backbone", rewired, "--features", tmp_path,
                                 "--out", run))  # fmt: skip
    assert "--backbone" in both and "--features" in both
    assert "--backbone" in one_line_error(invoke("train-tal", "--data", synth, "--frozen", "--out", run))
    assert "unknown recipe 'thumos'" in one_line_error(
        invoke("train-tal", "--data", synth, "--backbone", rewired, "--recipe", "thumos", "--out", run)
    )
    missing = one_line_error(invoke("train-tal", "--data", synth, "--features", tmp_path / "none", "--out", run))
    assert "not a features directory" in missing
    assert not run.exists()


def test_recipe_says_what_the_backbone_keeps_outside_its_stages(rewired, recipe):
    """backbone.outside overrides what the checkpoint's wiring says (rewire's default: recompute); a plain wiring
    keeps everything unless told otherwise."""
    from re2tal_cli.reversible.recompute import Outside
    from re2tal_cli.train.recipe import Recipe, load_recipe
    from re2tal_cli.train_tal import load_tal_backbone

    for sets, expected in (
        ([], Outside.RECOMPUTE),
        (["backbone.outside=keep"], Outside.KEEP),
        (["backbone.wiring=plain"], Outside.KEEP),
        (["backbone.wiring=plain", "backbone.outside=recompute"], Outside.RECOMPUTE),
    ):
        cfg = load_recipe(str(recipe), sets, Recipe)
        cfg.source.backbone = str(rewired)
        assert load_tal_backbone(cfg).model.outside is expected, sets


def test_gtad_trains_end_to_end_and_detects_what_it_evaluated(synth, rewired, recipe, tmp_path):
    """The G-TAD localizer through the same CLI: a reversible end-to-end run, then `detect` on a test video."""
    gtad = ("model.localizer=gtad", "model.gtad={hidden_dim: 16, block_width: 8, block_groups: 4, map_dim: 16, "
            "map_hidden_dim: 16, inner_samples: 8, context_samples: 2, max_seq_len: 8}")  # fmt: skip
    sets = [arg for s in (*gtad, "train.epochs=1") for arg in ("--set", s)]
    run = tmp_path / "gtad"
    summary = json.loads(ok(invoke("train-tal", "--data", synth, "--backbone", rewired, "--recipe", recipe,
                                   "--out", run, "--json", *sets)).stdout)  # fmt: skip
    assert summary["final"]["epoch"] == 1
    steps = records(run, "step")
    assert steps and all(math.isfinite(s["loss"]) and s["iou_reg_loss"] >= 0 for s in steps)
    assert recipe_from_mapping(read_yaml(run / "config.yaml")).model.gtad.hidden_dim == 16
    database = json.loads((synth / "annotations.json").read_text())["database"]
    vid = next(v for v, entry in sorted(database.items()) if entry["subset"] == "test")
    found = json.loads(ok(invoke("detect", run, synth / "videos" / f"{vid}.mp4", "--json")).stdout)["detections"]
    evaluated = json.loads((run / "predictions.json").read_text())["results"][vid]
    assert found and len(found) == len(evaluated)
    for mine, theirs in zip(found, evaluated, strict=True):
        assert mine["label"] == theirs["label"] and mine["score"] == pytest.approx(theirs["score"], abs=1e-5)
