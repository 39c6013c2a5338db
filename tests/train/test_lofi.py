"""LoFi-E2E: reduced batches keep their time axis, the cycles, equal pixels across configurations, and train-tal
running a cycle through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from re2tal_cli.train.data import feature_mask, frames_grid, segments_on
from re2tal_cli.train.lofi import Fidelity, fidelities, fidelity_at, reduce_batch, reduced_size
from re2tal_cli.train.recipe import Lofi, LofiMode
from tests.train.conftest import invoke, ok, one_line_error, records


def _batch(frames=64, size=32, fps=10.0):
    video = torch.rand(2, 3, frames, size, size)
    times = torch.arange(frames, dtype=torch.float32).expand(2, frames) / fps
    return {"video": video, "times": times, "fps": torch.tensor([fps, fps], dtype=torch.float64)}


def test_temporal_reduction_keeps_every_feature_on_the_span_of_frames_it_was_made_from():
    """r3d-like stride 8: at r_t = 2 a feature is made from 8 of 16 original frames and sits at their centre."""
    reduced = reduce_batch(_batch(), Fidelity("t", 1.0, 2))
    assert reduced["video"].shape == (2, 3, 32, 32, 32)
    times, fps = reduced["times"][0].double(), float(reduced["fps"][0])
    grid = frames_grid(times, fps, 8, int(feature_mask(reduced["times"], 8)[0].sum()))
    full = frames_grid(_batch()["times"][0].double(), 10.0, 8, 8)
    assert grid.seconds(torch.tensor([0.0, 3.0])).tolist() == pytest.approx([0.8, 5.6])  # frames [0, 16) → 0.8 s
    assert grid.step == pytest.approx(2 * full.step)
    # an action in seconds lands on the same time either way
    action = torch.tensor([[1.6, 4.0]], dtype=torch.float64)
    for g in (grid, full):
        assert g.seconds(segments_on(g, action, 8)[0].double()).tolist()[0] == pytest.approx([1.6, 4.0], abs=1e-5)


def test_spatial_reduction_resizes_with_antialiasing():
    batch = _batch()
    batch["video"][:] = 0.25
    reduced = reduce_batch(batch, Fidelity("s", 2.0, 1))
    assert reduced["video"].shape == (2, 3, 64, 16, 16) and reduced["video"].is_contiguous()
    assert torch.allclose(reduced["video"], torch.tensor(0.25))
    stripes = _batch()
    stripes["video"][..., ::2] = 1.0
    stripes["video"][..., 1::2] = 0.0
    # a 2-pixel pattern halved: antialiasing averages it (plain bilinear sampling would alias it to a constant 1 or 0)
    inside = reduce_batch(stripes, Fidelity("s", 2.0, 1))["video"][..., 1:-1]  # (the borders see half a filter)
    assert torch.allclose(inside, torch.tensor(0.5), atol=1e-6)
    assert reduce_batch(batch, None) is batch


def test_the_papers_configurations_keep_about_the_same_pixels_per_video():
    lofi = Lofi(mode=LofiMode.CYCLIC_LONG)
    pixels = []
    for fidelity in fidelities(lofi):
        frames, size = reduced_size(256, 224, fidelity)
        pixels.append(frames * size * size)
    assert [f.name for f in fidelities(lofi)] == ["s", "t", "st"]
    assert max(pixels) / min(pixels) < 1.01 and max(pixels) == 256 * 224 * 224 // 4


def test_cycles_follow_updates_or_epochs():
    short = Lofi(mode=LofiMode.CYCLIC_SHORT, short_cycle=2)
    assert [fidelity_at(short, step, 5).name for step in range(8)] == ["s", "s", "t", "t", "st", "st", "s", "s"]
    long = Lofi(mode=LofiMode.CYCLIC_LONG, long_cycle=1)
    assert [fidelity_at(long, step, 3).name for step in range(10)] == ["s"] * 3 + ["t"] * 3 + ["st"] * 3 + ["s"]
    assert fidelity_at(Lofi(mode=LofiMode.T), 7, 3).temporal == 4
    assert fidelity_at(Lofi(), 7, 3) is None


@pytest.fixture(scope="module")
def lofi_run(synth, rewired, recipe, tmp_path_factory):
    """LoFi-E2E's stage 2: end to end, cycling through s, t, st every update."""
    run = tmp_path_factory.mktemp("lofi") / "stage2"
    sets = ["lofi.mode=cyclic-short", "lofi.r_t=2", "lofi.short_cycle=1"]
    result = ok(invoke("train-tal", "--data", synth, "--backbone", rewired, "--recipe", recipe, "--out", run,
                       "--epochs", "1", *[a for s in sets for a in ("--set", s)], "--json"))  # fmt: skip
    return run, json.loads(result.stdout)


def test_train_tal_cycles_through_the_configurations(lofi_run):
    run, summary = lofi_run
    steps = records(run, "step")
    assert [r["lofi"] for r in steps] == (["s", "t", "st"] * 3)[: len(steps)] and len(steps) >= 3
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert summary["best"] is not None  # evaluated at full fidelity


def test_stage_three_trains_a_head_on_the_frozen_encoder_of_stage_two(lofi_run, synth, recipe, tmp_path):
    """`--backbone RUN --frozen`: the backbone a train-tal run trained, its weights exactly, kept fixed."""
    stage2, _ = lofi_run
    stage3 = tmp_path / "stage3"
    ok(invoke("train-tal", "--data", synth, "--backbone", stage2, "--frozen", "--recipe", recipe, "--out", stage3,
              "--epochs", "1"))  # fmt: skip
    trained = load_file(stage2 / "checkpoints" / "best" / "model.safetensors")
    head_only = load_file(stage3 / "checkpoints" / "last" / "model.safetensors")
    backbone_keys = [k for k in trained if k.startswith("backbone.")]
    assert backbone_keys and all(torch.equal(trained[k], head_only[k]) for k in backbone_keys)
    assert "names its backbone's architecture; give no --arch" in one_line_error(
        invoke("train-tal", "--data", synth, "--backbone", stage2, "--arch", "r3d-tiny", "--out", tmp_path / "x")
    )


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["lofi.mode=t"], "16 frames is not a multiple of 32"),
        (["lofi.mode=s", "lofi.r_s=0.5"], "lofi.r_s must be at least 1"),
        (["lofi.mode=fast"], "lofi.mode"),
    ],
)
def test_fidelities_a_run_cannot_take_are_refused_before_it_starts(sets, expected, synth, rewired, recipe, tmp_path):
    run = tmp_path / "run"
    message = one_line_error(invoke("train-tal", "--data", synth, "--backbone", rewired, "--recipe", recipe,
                                    "--out", run, *[a for s in sets for a in ("--set", s)]))  # fmt: skip
    assert expected in message
    assert not run.exists()
