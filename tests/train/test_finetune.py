"""`re2tal finetune` through the CLI: the three schedules, α/β as logged = as used, resume after SIGKILL, the
backbone it writes, bad input; and `re2tal rewire --error-map`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import (
    invoke,
    killed_and_resumed,
    metrics_without_timing,
    ok,
    one_line_error,
    records,
    same_last_checkpoint,
)


@pytest.fixture(scope="module")
def dr2_run(tmp_path_factory, synth, plain_backbone, finetune_recipe):
    out = tmp_path_factory.mktemp("ft") / "dr2"
    result = ok(invoke("finetune", plain_backbone, "--data", synth / "clips", "--recipe", finetune_recipe,
                       "--out", out, "--json"))  # fmt: skip
    return out, json.loads(result.stdout)


def test_dr2_walks_the_diagonal_every_eta_updates_and_ends_reversible(dr2_run):
    run, summary = dr2_run
    steps = records(run, "step")
    assert len(steps) == 3 * 2  # 4 training clips, batch 2: 2 updates per epoch
    # end_epoch 2 = 4 updates, η = 1: (1, 0.1) at update 0, a quarter of the way per update, (0, 1) from update 4
    ts = (0.0, 0.25, 0.5, 0.75, 1.0, 1.0)
    assert [r["alpha"] for r in steps] == pytest.approx([1 - t for t in ts])
    assert [r["beta"] for r in steps] == pytest.approx([0.1 + 0.9 * t for t in ts])
    assert summary["final_coupling"] == {"alpha": 0.0, "beta": 1.0} and summary["schedule"] == "dr2"
    assert summary["fallbacks"] == 0 and summary["fully_reversible_from_step"] == 1
    for record in records(run, "epoch"):
        assert record["guard"]["backward_passes"] > 0
    evals = records(run, "eval")
    assert [e["epoch"] for e in evals] == [1, 2, 3] and all(0 <= e["top1"] <= e["top5"] <= 1 for e in evals)
    assert summary["final"]["top1"] == evals[-1]["top1"]


def test_the_coefficients_logged_are_the_ones_the_stages_ran_with(synth, plain_backbone, finetune_recipe, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    from re2tal_cli.finetune import FinetuneJob

    used, original = [], FinetuneJob.losses

    def recording(self, batch, autocast):
        used.append({(s.coupling.alpha, s.coupling.beta, s.execution.value) for s in self.model.residual_stages()})
        return original(self, batch, autocast)

    monkeypatch.setattr(FinetuneJob, "losses", recording)
    run = tmp_path / "run"
    ok(invoke("finetune", plain_backbone, "--data", synth / "clips", "--recipe", finetune_recipe, "--out", run,
              "--set", "schedule.update_every=2"))  # fmt: skip
    logged = [{(r["alpha"], r["beta"], "reversible")} for r in records(run, "step")]
    assert used == logged
    assert [r["alpha"] for r in records(run, "step")] == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.0, 0.0])


@pytest.mark.parametrize(("schedule", "coupling", "passes"), [("re2", (0.0, 1.0), True), ("none", (1.0, 0.0), False)])
def test_re2_and_none_keep_their_coupling(schedule, coupling, passes, synth, plain_backbone, finetune_recipe, tmp_path):
    run = tmp_path / schedule
    summary = json.loads(ok(invoke("finetune", plain_backbone, "--data", synth / "clips", "--recipe",
                                   finetune_recipe, "--out", run, "--schedule", schedule, "--epochs", "1",
                                   "--json")).stdout)  # fmt: skip
    assert {(r["alpha"], r["beta"]) for r in records(run, "step")} == {coupling}
    assert (records(run, "epoch")[0]["guard"]["backward_passes"] > 0) == passes
    assert (summary["fully_reversible_from_step"] is not None) == passes
    config = json.loads((run / "backbone" / "config.json").read_text())
    assert (config["wiring"]["alpha"], config["wiring"]["beta"]) == coupling


def test_the_backbone_it_writes_is_read_by_the_other_commands(dr2_run, synth, tmp_path):
    run, summary = dr2_run
    backbone = run / "backbone"
    config = json.loads((backbone / "config.json").read_text())
    assert config["arch"] == "r3d-tiny" and config["num_classes"] == 2
    assert config["classes"] == ["circle-ccw-slow", "circle-cw-slow"]  # the clips' folders, sorted
    assert config["finetune"]["run"] == str(run) and config["finetune"]["schedule"] == "dr2"
    checked = json.loads(ok(invoke("rewire", backbone, "--out", tmp_path / "rw", "--check", "--json")).stdout)
    assert checked["arch_from"] == "re2tal config.json" and checked["values_equal"]
    ok(invoke("extract", backbone, "--data", synth, "--out", tmp_path / "feats", "--mode", "frames", "--size", "32"))
    # a second finetune of its output keeps the classifier: the classes match by name
    again = tmp_path / "again"
    ok(invoke("finetune", backbone, "--data", synth / "clips", "--out", again, "--epochs", "1",
              "--set", "data.num_frames=8", "--set", "data.size=32"))  # fmt: skip


def test_a_finetune_killed_and_resumed_ends_as_one_never_interrupted(synth, plain_backbone, finetune_recipe, tmp_path):
    args = ["finetune", plain_backbone, "--data", synth / "clips", "--recipe", finetune_recipe, "--epochs", 4,
            "--set", "data.mixup=0.4", "--set", "data.cutmix=1.0", "--json"]  # fmt: skip
    whole, killed = killed_and_resumed(args, 4, tmp_path)
    assert metrics_without_timing(killed) == metrics_without_timing(whole)
    assert same_last_checkpoint(whole, killed)
    # compared as tensors: safetensors writes a file's metadata in an order of its own
    written = [load_file(run / "backbone" / "model.safetensors") for run in (whole, killed)]
    assert written[0].keys() == written[1].keys() and all(torch.equal(v, written[1][k]) for k, v in written[0].items())


@pytest.fixture
def clips(synth, tmp_path) -> Path:
    copy = tmp_path / "clips"
    shutil.copytree(synth / "clips", copy)
    return copy


def _unknown_val_class(clips: Path) -> str:
    shutil.copytree(clips / "val" / "circle-cw-slow", clips / "val" / "juggling")
    return "labels not in the class list: juggling"


def _missing_clip(clips: Path) -> str:
    (clips / "clips.csv").write_text("path,label\ntrain/circle-cw-slow/circle-cw-slow_00_000.mp4,circle-cw-slow\n"
                                     "train/nowhere.mp4,circle-ccw-slow\n")  # fmt: skip
    return "1 clip cannot be read: " and "nowhere.mp4 (missing)"


def _unreadable_clip(clips: Path) -> str:
    next((clips / "train" / "circle-cw-slow").iterdir()).write_bytes(b"not a video")
    return "(unreadable)"


def _empty_split(clips: Path) -> str:
    shutil.rmtree(clips / "val")
    (clips / "val").mkdir()
    return "val"


@pytest.mark.parametrize("breakage", [_unknown_val_class, _missing_clip, _unreadable_clip, _empty_split])
def test_bad_clips_are_one_line_before_training(breakage, clips, plain_backbone, finetune_recipe, tmp_path):
    expected = breakage(clips)
    run = tmp_path / "run"
    message = one_line_error(invoke("finetune", plain_backbone, "--data", clips, "--recipe", finetune_recipe,
                                    "--out", run))  # fmt: skip
    assert expected in message
    assert not run.exists()


def test_a_classifier_of_other_classes_needs_head_new(synth, plain_backbone, tmp_path):
    run = tmp_path / "run"
    message = one_line_error(invoke("finetune", plain_backbone, "--data", synth / "clips", "--out", run))
    assert "its classifier has 5 classes, the clips 2 classes; set head.new=true" in message
    assert not run.exists()
    bad = one_line_error(invoke("finetune", plain_backbone, "--data", synth / "clips", "--out", run,
                                "--set", "schedule.kind=dr3"))  # fmt: skip
    assert "schedule.kind must be one of re2, dr2, none" in bad
    assert "--epochs" in one_line_error(invoke("finetune", "--out", run, "--resume", "--epochs", "3"))


def test_error_map_of_a_tiny_arch(tmp_path):
    from tests.helpers import tiny_checkpoint

    source = tiny_checkpoint(tmp_path / "vit.safetensors")
    plot = tmp_path / "map.png"
    report = json.loads(ok(invoke("rewire", source, "--error-map", plot, "--grid", "3", "--check-frames", "4",
                                  "--check-size", "32", "--check-fp64", "--json")).stdout)  # fmt: skip
    m = report["error_map"]
    assert m["alphas"] == [0.0, 0.5, 1.0] and m["betas"] == pytest.approx([0.1, 0.55, 1.0])
    assert len(m["levels"]) == 3 and all(len(row) == 3 for row in m["levels"])
    assert all(0 <= v < 1e-6 for row in m["levels"] for v in row)  # float64: every point precise
    assert m["input_shape"] == [1, 3, 4, 32, 32] and m["dtype"] == "float64"
    assert report["out"] is None and not (tmp_path / "rw").exists()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "--out" in one_line_error(invoke("rewire", source))
    assert "--grid" in one_line_error(invoke("rewire", source, "--error-map", plot, "--grid", "1"))
