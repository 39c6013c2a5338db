"""R3D / R(2+1)D / TSM: torchvision's models as the oracle, ReLU-in rewiring at both ends, TSM's shift inside F."""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from re2tal_cli.checkpoint import build_from_state_dict
from re2tal_cli.errors import BadCheckpointError, BadInputError
from re2tal_cli.models import create_model, get_arch
from re2tal_cli.models.resnet_blocks import TemporalShift
from re2tal_cli.reversible import Coupling, Execution
from re2tal_cli.reversible.check import check_reversibility
from re2tal_cli.reversible.recompute import checkpointed
from tests.helpers import batchnorm_state

ORACLE = "/work/shared/oracles/torchvision-video-models"


@pytest.fixture(scope="session")
def torchvision_models():
    """torchvision's pure-Python model code (video and 2-D ResNets), or a clean skip."""
    try:
        done = subprocess.run([ORACLE], capture_output=True, text=True, timeout=300, check=True)
        sys.path.insert(0, done.stdout.strip().splitlines()[-1])
        from torchvision.models import resnet
        from torchvision.models.video import resnet as video_resnet
    except Exception as error:  # no script, no network for the wheel, no pillow, …
        pytest.skip(f"torchvision oracle unavailable: {error}")
    return video_resnet, resnet


def randomise_batchnorm(model):
    """Non-trivial BatchNorm statistics and affine parameters, so a key mix-up cannot hide."""
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize(("arch", "builder"), [("r3d-18", "r3d_18"), ("r2plus1d-18", "r2plus1d_18")])
def test_torchvision_video_resnet_loads_and_matches(torchvision_models, arch, builder):
    reference = randomise_batchnorm(getattr(torchvision_models[0], builder)()).eval()
    model, converted = build_from_state_dict(get_arch(arch), reference.state_dict(), "torchvision")
    assert converted.format == "torchvision-video"
    model.eval()
    video = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        expected = reference(video)
        assert (model(video) - expected).abs().max() < 1e-5
        model.set_wiring(Coupling(1.0, 0.0), Execution.PLAIN)  # the rewired net at α=1, β=0 is the source network
        assert (model(video) - expected).abs().max() < 1e-5
        model.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)  # Re²TAL's end: a different (finite) network
        assert torch.isfinite(model(video)).all()


def tsm_reference(resnet_2d, video, div=8):
    """A TSM network as the TSM release builds it: a 2-D ResNet over (B·T) frames whose blocks' conv1 first shift
    channels across the T segments (view to (B, T, C, H, W), shift left/right, zero ends); logits averaged over T."""
    b, _, t, h, w = video.shape

    def shift(x):
        nt, c, hh, ww = x.shape
        x = x.view(nt // t, t, c, hh, ww)
        fold = c // div
        out = torch.zeros_like(x)
        out[:, :-1, :fold] = x[:, 1:, :fold]
        out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]
        out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
        return out.view(nt, c, hh, ww)

    net = copy.deepcopy(resnet_2d)
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            conv = block.conv1
            block.conv1 = torch.nn.Sequential(torch.nn.Module(), conv)
            block.conv1[0].forward = shift
    frames = video.transpose(1, 2).reshape(b * t, 3, h, w)
    return net(frames).view(b, t, -1).mean(1)


@pytest.mark.parametrize(("arch", "builder"), [("tsm-r18", "resnet18"), ("tsm-r50", "resnet50")])
def test_tsm_matches_shifted_2d_resnet_in_both_layouts(torchvision_models, arch, builder):
    resnet_2d = randomise_batchnorm(getattr(torchvision_models[1], builder)(num_classes=7)).eval()
    sd = resnet_2d.state_dict()
    release = {  # the TSM release: DataParallel prefix, base_model, shifted conv1 wrapped as `.net`, new_fc
        "module."
        + ("new_fc." + k[3:] if k.startswith("fc.") else "base_model." + k.replace(".conv1.", ".conv1.net.")): v
        for k, v in sd.items()
    }
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected = tsm_reference(resnet_2d, video)
        for layout, fmt in ((sd, "torchvision-2d"), (release, "tsm")):
            model, converted = build_from_state_dict(get_arch(arch), layout, "tsm")
            assert converted.format == fmt
            model.eval()
            scale = expected.abs().max()  # 2-D and 3-D conv kernels sum in another order: compare relative to scale
            assert (model(video) - expected).abs().max() < 1e-5 * scale
            model.set_wiring(Coupling(1.0, 0.0), Execution.PLAIN)
            assert (model(video) - expected).abs().max() < 1e-5 * scale


def test_tsm_shift_lives_inside_f():
    """A rewired TSM block is h + F(h) = ReLU(h + body(shift(h))): F mixes neighbouring frames, the identity path does
    not, and the reversible backward (which recomputes the block) is exact."""
    model = create_model("tsm-tiny").double().eval()
    block = model.layer2.stage.blocks[0]
    assert isinstance(block.shift, TemporalShift)
    h = torch.randn(1, 8, 4, 4, 4, dtype=torch.float64)
    assert torch.equal(block(h), F.relu(h + block.body(block.shift(h))))
    nudged = h.clone()
    nudged[:, 0, 2] += 1.0  # channel 0 is in the first fold: frame 1 reads frame 2
    assert not torch.equal(block(nudged)[:, :, 1], block(h)[:, :, 1])
    report = check_reversibility(model, torch.randn(1, 3, 4, 32, 32, dtype=torch.float64), Coupling(0.0, 1.0))
    assert report.gradient_error_level < 1e-10


@pytest.mark.parametrize("arch", ["tsm-tiny", "tsm-tiny-bottleneck"])
@pytest.mark.parametrize("execution", [Execution.PLAIN, Execution.CHECKPOINT])
def test_original_wiring_computes_each_block_as_the_original_network(arch, execution):
    """At α=1, β=0 a stage of ReLU-in blocks runs ReLU(h + branch) per block: the original network's operations,
    forward and backward, bit for bit — not h + (ReLU(h + branch) − h), the same function with two more passes over
    each block's output forward and three backward."""
    model = create_model(arch, drop_path=0.0).train()
    stage = model.layer2.stage
    stage.set_wiring(Coupling(1.0, 0.0), execution)
    blocks = stage.blocks
    a = torch.randn(2, blocks[0].conv1.in_channels, 4, 6, 6, requires_grad=True)

    def original_network(h):
        for block in blocks:
            h = block(h) if execution is Execution.PLAIN else checkpointed(block, h, modules=[block])
        return h

    def run(fn):
        with OperatorLog() as log:
            out = fn(a)
            (grad_a,) = torch.autograd.grad(out, a, torch.ones_like(out))
        return out, grad_a, log.elementwise

    out, grad_a, operators = run(stage)
    expected, expected_grad_a, expected_operators = run(original_network)
    assert torch.equal(out, expected) and torch.equal(grad_a, expected_grad_a)
    assert operators == expected_operators and "aten.sub.Tensor" not in operators


@pytest.mark.parametrize("arch", ["tsm-tiny", "tsm-tiny-bottleneck"])
@pytest.mark.parametrize("execution", list(Execution))
@pytest.mark.parametrize("coupling", [Coupling(0.0, 1.0), Coupling(0.3, 0.6)])
def test_rewired_stage_is_the_dual_residual_of_f_without_computing_f(arch, execution, coupling):
    """Rewired, a stage of ReLU-in blocks computes the dual residual of F(h) = ReLU(h + branch) − h, forward and
    backward, but runs each block as it is with α − 1: F's −h is never computed, and its gradient's −g is never held
    beside the block's backward (no `neg`, no `sub`; the reversible walk adds −gₓ in place)."""
    model = create_model(arch, drop_path=0.0).double().train()
    stage = model.layer2.stage
    blocks = stage.blocks
    a = torch.randn(2, blocks[0].conv1.in_channels, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    params = stage.parameters_of_blocks()
    weights = torch.randn_like(a)

    def dual_residual_of_f(h):
        alpha, beta = coupling.alpha, coupling.beta
        x, y = h, beta * h
        for block in blocks:
            x, y = (block(x) - x) + y + alpha * x, beta * x
        return (x + y) / (1 + beta)

    def run(fn):
        with OperatorLog() as log:
            out = fn(a)
            grads = torch.autograd.grad(out, [a, *params], weights)
        return out, grads, log.elementwise

    stage.set_wiring(coupling, execution)
    out, grads, operators = run(stage)
    expected, expected_grads, _ = run(dual_residual_of_f)
    assert (out - expected).abs().max() < 1e-12
    assert all((g - e).abs().max() < 1e-11 for g, e in zip(grads, expected_grads, strict=True))
    assert "aten.neg.default" not in operators and "aten.sub.Tensor" not in operators


class OperatorLog(TorchDispatchMode):
    """The elementwise add / sub / neg / relu operators run under it on tensors (not the guard's scalars), in order
    (the convolutions are the same either way; checkpointing's recompute adds its own, on both sides)."""

    NAMES = ("add", "sub", "neg", "relu", "threshold_backward")

    def __init__(self):
        super().__init__()
        self.elementwise: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0].rstrip("_") in self.NAMES and out.dim():
            self.elementwise.append(str(func))
        return out


@pytest.mark.parametrize("arch", ["r3d-tiny", "r2plus1d-tiny", "tsm-tiny", "tsm-tiny-bottleneck"])
def test_tiny_archs_rewire_odd_even_and_single_block_stages(arch):
    """Stages with 1 (odd), 2 (even) and 0 rewired blocks (a one-block layer has only its ordinary first block);
    their gradients are checked for every tiny arch in test_registry.py."""
    model = create_model(arch)
    assert [len(s.blocks) for s in model.residual_stages()] == [1, 2, 1]


def test_frozen_batchnorm_is_the_default():
    model = create_model("tsm-tiny").train()
    assert model.training
    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert layers and not any(m.training for m in layers)
    assert all(m.weight.requires_grad for m in layers)  # affine parameters still train
    before = batchnorm_state(model)
    model(torch.randn(1, 3, 4, 32, 32)).sum().backward()
    assert all(torch.equal(v, before[k]) for k, v in batchnorm_state(model).items())


def test_feature_shapes():
    r3d = create_model("r3d-tiny").eval()
    tsm = create_model("tsm-tiny").eval()
    with torch.no_grad():
        assert r3d.feature_maps(torch.randn(1, 3, 16, 32, 32)).shape == (1, 16, 2, 2, 2)
        assert r3d.temporal_features(torch.randn(1, 3, 16, 32, 32)).shape == (1, 16, 2)
        assert tsm.feature_maps(torch.randn(1, 3, 5, 64, 32)).shape == (1, 16, 5, 2, 1)
        assert tsm(torch.randn(2, 3, 5, 32, 32)).shape == (2, 16)
    assert (r3d.temporal_stride, tsm.temporal_stride) == (8, 1)
    with pytest.raises(BadInputError, match="multiple of 8"):
        r3d.feature_maps(torch.randn(1, 3, 12, 32, 32))


def test_another_familys_checkpoint_is_rejected_without_building_the_model():
    """A layout the family does not know fails in the converter, naming our first key and the checkpoint's first
    foreign key (cheap: `guess_arch` tries every arch on every bad checkpoint)."""
    foreign = {"s1.pathway0_stem.conv.weight": torch.zeros(1), "head.projection.weight": torch.zeros(1)}
    with pytest.raises(
        BadCheckpointError,
        match=r"r3d-18.*missing keys \(first: stem\.conv1\.weight\); unexpected keys \(first: s1\.pathway0_stem",
    ):
        get_arch("r3d-18").convert(foreign)
