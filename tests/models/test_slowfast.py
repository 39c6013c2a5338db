"""SlowFast: the PySlowFast / pytorchvideo / mmaction2 checkpoint layouts, ReLU-in rewiring at both ends, BatchNorm,
features, and the one-line error for a checkpoint of another architecture."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from re2tal_cli.checkpoint import build_from_state_dict
from re2tal_cli.cli.app import app
from re2tal_cli.errors import BadCheckpointError, BadInputError
from re2tal_cli.hub import read_state_dict
from re2tal_cli.models import create_model, get_arch, list_archs
from re2tal_cli.reversible import Coupling, Execution
from tests.helpers import batchnorm_state

LAYOUTS = Path("/work/shared/oracles/checkpoint-layouts")


def layout(name: str) -> dict[str, torch.Tensor]:
    """A checkpoint layout as meta tensors: key names, shapes and dtypes, no memory."""
    tensors = json.loads((LAYOUTS / f"{name}.json").read_text())["tensors"]
    return {k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for k, (shape, dtype) in tensors.items()}


@pytest.fixture(scope="session")
def written_layout(tmp_path_factory):
    """Write (once per session) a seeded random checkpoint in an exact layout with the oracle script."""
    cache = {}

    def write(name: str) -> Path:
        if not (LAYOUTS / f"{name}.json").is_file():
            pytest.skip(f"layout {name} unavailable")
        if name not in cache:
            out = tmp_path_factory.mktemp("layouts") / f"{name}.safetensors"
            cmd = [sys.executable, str(LAYOUTS / "make_state_dict.py"), str(LAYOUTS / f"{name}.json"), str(out)]
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
            cache[name] = out
        return cache[name]

    return write


@pytest.mark.parametrize(
    ("name", "arch", "fmt"),
    [
        ("pyslowfast_slowfast-r50", "slowfast-r50", "pyslowfast"),
        ("pyslowfast_slowfast-r101", "slowfast-r101", "pyslowfast"),
        ("pytorchvideo_slowfast-r50", "slowfast-r50", "pytorchvideo"),
        ("mmaction2_slowfast-r50", "slowfast-r50-mmaction", "mmaction2"),
    ],
)
def test_every_key_of_the_published_layouts_loads(name, arch, fmt):
    if not (LAYOUTS / f"{name}.json").is_file():
        pytest.skip(f"layout {name} unavailable")
    converted = get_arch(arch).convert(layout(name))
    assert converted.format == fmt
    with torch.device("meta"):
        expected = create_model(arch, num_classes=400).state_dict()
    got = {k: tuple(v.shape) for k, v in converted.state_dict.items()}
    assert got == {k: tuple(v.shape) for k, v in expected.items()}  # all keys load, none left over, same shapes


@pytest.mark.parametrize(
    ("name", "arch"), [("pyslowfast_slowfast-r50", "slowfast-r50"), ("mmaction2_slowfast-r50", "slowfast-r50-mmaction")]
)
def test_random_checkpoint_in_published_layout_runs(written_layout, name, arch):
    sd = read_state_dict(written_layout(name))
    model, _ = build_from_state_dict(get_arch(arch), sd, name)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 8, 64, 64))
        maps = model.feature_maps(torch.randn(1, 3, 8, 64, 64))
    assert logits.shape == (1, 400) and torch.isfinite(logits).all()
    assert maps.shape == (1, 2048 + 256, 2, 2, 2) and torch.isfinite(maps).all()
    if arch.endswith("mmaction"):  # mmaction2's head reads (fast, slow); ours reads (slow, fast)
        assert torch.equal(model.head.weight[:, :2048], sd["cls_head.fc_cls.weight"][:, 256:])
        assert torch.equal(model.head.weight[:, 2048:], sd["cls_head.fc_cls.weight"][:, :256])


def test_mmaction_checkpoint_for_a_pyslowfast_arch_names_the_right_arch():
    with pytest.raises(
        BadCheckpointError, match=r"without BatchNorm\+ReLU.*-mmaction.*looks like `arch` slowfast-r50-mmaction"
    ):
        build_from_state_dict(get_arch("slowfast-r50"), layout("mmaction2_slowfast-r50"), "mm.pth")


def test_wrong_arch_on_the_command_line_is_one_line_exit_2(written_layout, tmp_path):
    src = written_layout("mmaction2_swin3d-t")
    result = CliRunner().invoke(app, ["rewire", str(src), "--arch", "slowfast-r50", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "missing keys (first: slow.stem.conv1.weight)" in lines[0]
    assert "unexpected keys (first: backbone." in lines[0]
    if "swin3d-t" in {a.name for a in list_archs()}:
        assert "looks like --arch swin3d-t" in lines[0]
    assert not (tmp_path / "out").exists()


def plain_forward(model, video):
    """The source network computed block by block, ReLU(shortcut(h) + body(h)), without the residual stages."""

    def run(layer, x):
        for block in layer.children():
            if isinstance(block, torch.nn.Module) and hasattr(block, "body"):
                identity = x if block.shortcut is None else block.shortcut(x)
                x = F.relu(identity + block.body(x))
        return x

    slow = model.slow.stem(video[:, :, :: model.cfg.alpha])
    fast = model.fast.stem(video)
    for k in range(4):
        slow = torch.cat([slow, model.fuse[k](fast)], dim=1)
        slow, fast = run(getattr(model.slow, f"layer{k + 1}"), slow), run(getattr(model.fast, f"layer{k + 1}"), fast)
    return torch.cat([slow.mean((2, 3, 4)), fast.mean((2, 3, 4))], dim=1)


@pytest.mark.parametrize("arch", ["slowfast-tiny", "slowfast-tiny-mmaction"])
def test_original_wiring_is_the_source_network(arch):
    model = create_model(arch).double().eval()
    video = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = plain_forward(model, video)
        model.set_wiring(Coupling(1.0, 0.0), Execution.PLAIN)
        assert (model(video) - expected).abs().max() < 1e-12
        model.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)
        assert (model(video) - expected).abs().max() > 1e-6  # Re²TAL's end is another network (finetuned after)


@pytest.mark.parametrize("arch", ["slowfast-tiny", "slowfast-tiny-mmaction"])
def test_tiny_archs_rewire_odd_even_and_single_block_stages(arch):
    """Stages with 1 (odd), 2 (even) and 0 rewired blocks in both pathways; their gradients are checked for every
    tiny arch in test_registry.py."""
    model = create_model(arch)
    assert [len(s.blocks) for s in model.residual_stages()] == [1, 2, 1, 1, 2, 1]


def test_frozen_batchnorm_is_the_default():
    model = create_model("slowfast-tiny").train()
    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert model.training and layers and not any(m.training for m in layers)
    before = batchnorm_state(model)
    model(torch.randn(1, 3, 4, 32, 32)).sum().backward()
    assert all(torch.equal(v, before[k]) for k, v in batchnorm_state(model).items())
    assert all(m.weight.grad is not None for m in layers if m.weight.requires_grad)  # affine parameters train


def test_feature_shapes():
    model = create_model("slowfast-tiny").eval()  # α = 2, slow 256 + fast 64 channels, stride 32
    with torch.no_grad():
        assert model.feature_maps(torch.randn(1, 3, 6, 64, 32)).shape == (1, 320, 3, 2, 1)
        assert model.temporal_features(torch.randn(2, 3, 8, 32, 32)).shape == (2, 320, 4)
        assert model(torch.randn(2, 3, 4, 32, 32)).shape == (2, 320)
    assert (model.out_channels, model.temporal_stride) == (320, 2)
    with pytest.raises(BadInputError, match="multiple of 2"):
        model.feature_maps(torch.randn(1, 3, 5, 32, 32))
    real = get_arch("slowfast-r50")
    assert (real.input.num_frames, real.input.image_size, real.input.mean) == (32, 224, (0.45, 0.45, 0.45))
    assert get_arch("slowfast-r50-4x16").create().temporal_stride == 8


@pytest.mark.parametrize("execution", [Execution.CHECKPOINT, Execution.REVERSIBLE])
def test_the_stems_run_twice_per_step_their_outputs_kept_for_their_readers(execution):
    """A stem is recomputed once in the backward; its output, which the fused first block and (fast) the first fast
    block read, is kept for them rather than made again by each (what the other layers outside the stages do)."""
    model = create_model("slowfast-tiny", num_classes=3).train()
    model.set_wiring(Coupling(0.0, 1.0) if execution is Execution.REVERSIBLE else Coupling(), execution)
    runs = {"slow": [], "fast": []}
    for name in runs:
        stem = getattr(model, name).stem
        stem.register_forward_pre_hook(lambda m, args, name=name: runs[name].append(torch.is_grad_enabled()))
    spec = get_arch("slowfast-tiny").input
    model(torch.randn(1, 3, spec.num_frames, spec.image_size, spec.image_size)).square().sum().backward()
    assert runs == {"slow": [False, True], "fast": [False, True]}  # the forward, then its recompute with a graph
