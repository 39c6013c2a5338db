"""`re2tal memprofile` through Typer's runner: JSON output, GPU verdicts, and bad input → one line, exit 2."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from re2tal_cli.cli.app import app
from re2tal_cli.memory.gpus import GPUS, get_gpu, verdict
from re2tal_cli.models import get_arch

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["memprofile", *args])


def test_json_has_every_component_and_a_verdict():
    result = _run("--arch", "vit-tiny", "--frames", "8", "--size", "32", "--gpu", "gtx-1080-ti", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [r["wiring"] for r in data["wirings"]] == ["plain", "checkpoint", "reversible"]
    for row in data["wirings"]:
        b = row["estimate"]["bytes"]
        for key in ("parameters", "gradients", "optimizer_state", "input", "activations_kept", "peak"):
            assert key in b
        assert row["gpu"]["verdict"] == "fits"


def test_outside_says_what_checkpoint_and_reversible_keep_of_the_other_layers():
    """Default: recomputed (plain keeps everything); --outside keep holds their activations: more kept, and in a
    SlowFast, whose stems, first blocks and fusions are most of what a reversible step would hold, far more."""
    args = ["--arch", "slowfast-tiny", "--frames", "16", "--size", "64", "--json"]
    rows = {}
    for outside in ("recompute", "keep"):
        data = json.loads(_run(*args, "--outside", outside).output)
        assert data["config"]["outside"] == outside
        rows[outside] = {r["wiring"]: r for r in data["wirings"]}
        assert [r["outside"] for r in data["wirings"]] == ["keep", outside, outside]
    kept = {k: v["reversible"]["estimate"]["bytes"]["activations_kept"]["backbone"] for k, v in rows.items()}
    assert kept["keep"] > 2 * kept["recompute"]
    assert _run(*args, "--outside", "maybe").exit_code == 2


def test_head_is_a_component_of_its_own_in_json_and_table():
    args = ["--arch", "vit-tiny", "--frames", "8", "--size", "32", "--wiring", "reversible", "--head", "actionformer"]
    data = json.loads(_run(*args, "--json").output)
    assert data["config"]["head"] == "actionformer"
    b = data["wirings"][0]["estimate"]["bytes"]
    assert set(b["parameters"]) == set(b["gradients"]) == set(b["activations_kept"]) == {"backbone", "head"}
    assert b["parameters"]["head"] > b["parameters"]["backbone"] > 0
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert "vit-tiny + actionformer" in result.output and "of which head" in result.output


def test_lofi_trains_on_a_quarter_of_the_pixels_at_about_the_same_memory_in_each_configuration():
    """--lofi s|t|st: the reduced input of each LoFi-E2E configuration (recorded with the full one); the three hold
    about the same memory, well below full fidelity."""
    args = ["--arch", "tsm-tiny", "--frames", "32", "--size", "128", "--wiring", "reversible", "--json"]
    peaks, inputs = {}, {}
    for mode in (None, "s", "t", "st"):
        data = json.loads(_run(*args, *(["--lofi", mode] if mode else [])).output)
        inputs[mode] = (data["config"]["frames"], data["config"]["size"])
        peaks[mode] = data["wirings"][0]["estimate"]["bytes"]["activations_kept"]["backbone"]
        assert data["config"]["lofi"] == (None if mode is None else {"mode": mode, "full_frames": 32, "full_size": 128})
    assert inputs == {None: (32, 128), "s": (32, 64), "t": (8, 128), "st": (16, 91)}
    reduced = [peaks[m] for m in ("s", "t", "st")]
    assert max(reduced) < 0.4 * peaks[None] and max(reduced) / min(reduced) < 1.15
    assert "would undo it" in _run(*args, "--lofi", "t", "--sweep", "frames").output
    assert "do not divide" in _run("--arch", "tsm-tiny", "--frames", "30", "--lofi", "t").output


def test_table_renders():
    result = _run("--arch", "vit-tiny", "--frames", "4", "--size", "32", "--wiring", "reversible", "--gpu-mem", "1")
    assert result.exit_code == 0, result.output
    assert "peak" in result.output and "fits" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "vit-nope"], "unknown architecture 'vit-nope'"),
        (["--arch", "vit-tiny", "--gpu", "a100-41gb"], "unknown GPU 'a100-41gb'; did you mean"),
        (["--arch", "vit-tiny", "--frames", "5"], "not a multiple of 2"),
        (["--arch", "vit-tiny", "--frames", "-4"], "--frames must be a positive integer"),
        (["--arch", "vit-tiny", "--batch", "0"], "--batch must be a positive integer"),
        (["--arch", "vit-tiny", "--gpu-mem", "-3"], "--gpu-mem must be a positive number"),
        (["--arch", "vit-tiny", "--wiring", "revers"], "--wiring must be"),
        (["--arch", "vit-tiny", "--amp", "fp8"], "--amp must be one of"),
        (["--arch", "vit-tiny", "--max", "frames"], "--max needs a GPU"),
        (["--arch", "vit-tiny", "--gpu", "h100", "--gpu-mem", "3"], "not both"),
        (["--arch", "vit-tiny", "--plot", "x.png"], "--plot draws a --sweep"),
        (["--arch", "vit-tiny", "--head", "bmn"], "--head must be none, actionformer"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message):
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_catalogue_and_verdicts():
    assert get_gpu("A100_40GB") is GPUS["a100-40gb"] and get_gpu("4090") is GPUS["rtx-4090"]
    g = GPUS["rtx-3090"]
    assert g.usable_bytes < 24 * 2**30  # the CUDA context comes off the nominal size
    assert verdict(g.usable_bytes + 1, g).label == "does not fit"
    assert verdict(g.usable_bytes - 1, g).label == "tight"
    assert verdict(g.usable_bytes // 2, g).label == "fits"


def test_max_frames_fits_and_the_next_step_does_not():
    from re2tal_cli.memory.estimate import estimate
    from re2tal_cli.memory.gpus import FRAGMENTATION, custom_gpu
    from re2tal_cli.memory.step import StepConfig
    from re2tal_cli.memory.sweep import max_fitting

    gpu = custom_gpu(0.05)
    limit = gpu.usable_bytes * (1 - FRAGMENTATION)
    for what, wiring in (("frames", "plain"), ("batch", "reversible")):
        c = StepConfig("vit-tiny", 8, 64, 1, wiring, device="cpu")
        n, e = max_fitting(c, gpu, what)
        unit = get_arch("vit-tiny").create(num_classes=0).min_frames if what == "frames" else 1
        assert n > 0 and n % unit == 0 and e.total_peak <= limit
        assert estimate(replace(c, **{what: n + unit})).total_peak > limit


def test_max_batch_is_found_where_the_line_from_short_clips_falls_short(monkeypatch):
    """Long clips can grow more slowly than the line through two short ones (more pieces): the search steps up."""
    from re2tal_cli.memory import sweep
    from re2tal_cli.memory.gpus import FRAGMENTATION, custom_gpu
    from re2tal_cli.memory.step import StepConfig

    gpu = custom_gpu(0.05)
    limit = gpu.usable_bytes * (1 - FRAGMENTATION)
    real = sweep.estimate_all

    def steeper(configs):  # the two short-clip estimates, made to look twice as steep
        first, second = real(configs)
        for phase in second.phases:
            second.phases[phase].total += second.phases[phase].total - first.phases[phase].total
        return first, second

    monkeypatch.setattr(sweep, "estimate_all", steeper)
    c = StepConfig("vit-tiny", 8, 64, 1, "plain", device="cpu")
    n, e = sweep.max_fitting(c, gpu, "batch")
    assert e.total_peak <= limit < sweep.estimate(replace(c, batch=n + 1)).total_peak


def test_long_requests_report_progress_and_json_stays_pure():
    from re2tal_cli.memprofile import memprofile

    calls = []
    report = memprofile(
        "vit-tiny", frames=8, size=32, sweep="frames", progress=lambda done, total, what: calls.append((done, total))
    )
    assert calls and calls[-1][0] == calls[-1][1] == len(report["points"]) * 3
    calls.clear()
    memprofile("vit-tiny", frames=8, size=32, gpu_mem=0.05, largest="frames", wiring="plain",
               progress=lambda done, total, what: calls.append((done, total, what)))  # fmt: skip
    assert any("largest frames" in what for *_, what in calls) and calls[-1][:2] == (1, 1)
    result = _run("--arch", "vit-tiny", "--frames", "8", "--size", "32", "--sweep", "frames", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["axis"] == "frames"


def test_depth_sweeps_a_variant_and_several_archs_side_by_side(tmp_path):
    """--sweep depth follows the arch's variant (Swin T/S/B; SlowFast 50/101/152 of one layout and rate); several
    archs give their series one after the other, several GPUs their lines on the figure (Re²TAL's Fig. 7)."""
    from re2tal_cli.memory.step import StepConfig
    from re2tal_cli.memory.sweep import sweep_points

    def names(arch):
        return [p[0] for p in sweep_points(StepConfig(arch, 32, 224), "depth")]

    assert names("swin3d-s") == ["swin3d-t", "swin3d-s", "swin3d-b"]
    assert names("slowfast-r101") == ["slowfast-r50", "slowfast-r101", "slowfast-r152"]
    assert names("slowfast-r50-4x16-mmaction")[-1] == "slowfast-r152-4x16-mmaction"
    assert names("r3d-18") == ["r3d-18"] and names("tsm-r50") == ["tsm-r18", "tsm-r50"]
    plot = tmp_path / "fig7.png"
    args = ["--arch", "swin3d-tiny,vit-tiny", "--frames", "8", "--size", "32", "--sweep", "depth", "--json"]
    result = _run(*args, "--gpu", "gtx-1080-ti,a100-80gb", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["points"] == ["swin3d-tiny", "vit-tiny"] and data["groups"] == [0, 1]
    assert [g["name"] for g in data["gpu"]] == ["gtx-1080-ti", "a100-80gb"] and plot.stat().st_size > 0
    assert _run("--arch", "swin3d-tiny,vit-tiny").exit_code == 2  # several archs need --sweep depth
    assert _run("--arch", "vit-tiny", "--gpu", "gtx-1080-ti,a100-80gb").exit_code == 2  # several GPUs need a sweep
