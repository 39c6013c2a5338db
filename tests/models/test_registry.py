"""Every registered test architecture, whatever its family, through the same reversible checks."""

import copy

import pytest
import torch

from re2tal_cli.models import get_arch, list_archs
from re2tal_cli.reversible import Coupling, Execution
from re2tal_cli.reversible.check import check_reversibility
from tests.helpers import batchnorm_state, off_the_kinks

TINY = [arch.name for arch in list_archs() if arch.test_only]


def tiny_video(arch: str, batch: int = 2, dtype=torch.float64) -> torch.Tensor:
    spec = get_arch(arch).input
    return torch.randn(batch, 3, spec.num_frames, spec.image_size, spec.image_size, dtype=dtype)


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["drop-path", "drop-path+dropout"])
@pytest.mark.parametrize("arch", TINY)
def test_reversible_gradients_equal_autograd_fp64(arch, dropout):
    """Input and every parameter gradient to 1e-10 at Re²TAL's point and halfway, random draws replayed (without
    elementwise dropout the token-wise blocks are recomputed in pieces, with it whole)."""
    model = off_the_kinks(get_arch(arch).create(num_classes=3, drop_path=0.2, dropout=dropout)).double()
    video = tiny_video(arch)
    for coupling in (Coupling(0.0, 1.0), Coupling(0.5, 0.5)):
        report = check_reversibility(model, video, coupling)
        assert report.gradient_error_level < 1e-10, report
        assert report.output_error < 1e-12 and report.fallbacks == 0


@pytest.mark.parametrize("arch", TINY)
def test_every_parameter_gets_a_finite_gradient_through_reversible_stages(arch):
    model = get_arch(arch).create(num_classes=3).train()
    model.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)
    model(tiny_video(arch, dtype=torch.float32)).square().sum().backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("arch", TINY)
def test_feature_shapes(arch):
    model = get_arch(arch).create().eval()
    video = tiny_video(arch, batch=1, dtype=torch.float32)
    with torch.no_grad():
        maps = model.feature_maps(video)
        temporal = model.temporal_features(video)
    assert maps.shape[:3] == (1, model.out_channels, video.shape[2] // model.temporal_stride)
    assert temporal.shape == maps.shape[:3]


@pytest.mark.parametrize("arch", ["r3d-tiny", "slowfast-tiny"])
def test_batchnorm_in_training_mode_is_updated_once(arch):
    """BatchNorm left in training mode: after one reversible step the running statistics equal those after one
    ordinary-autograd step (the recompute in the backward does not update them again)."""
    base = get_arch(arch).create(frozen_bn=False).double().train()
    video = tiny_video(arch)
    states = {}
    for execution in (Execution.PLAIN, Execution.CHECKPOINT, Execution.REVERSIBLE):
        model = copy.deepcopy(base)
        model.set_wiring(Coupling(0.0, 1.0), execution)  # checkpoint and reversible recompute the outside layers
        model.feature_maps(video).square().sum().backward()
        states[execution] = batchnorm_state(model)
    before = batchnorm_state(base)
    assert any(not torch.equal(before[k], v) for k, v in states[Execution.PLAIN].items())
    for key, value in states[Execution.PLAIN].items():
        for execution in (Execution.CHECKPOINT, Execution.REVERSIBLE):
            assert torch.allclose(states[execution][key], value, rtol=0, atol=1e-12), (execution, key)


@pytest.mark.usefixtures("pieces_at_any_size")
@pytest.mark.parametrize("arch", TINY)
def test_long_clips_recompute_in_pieces_of_time_exactly(arch, monkeypatch):
    """A clip long enough that the stages' blocks and the layers outside them (stems, first blocks, fusions, patch
    embedding and merging) are recomputed in pieces of time, halos included: gradients still equal autograd's."""
    from re2tal_cli.reversible import pieces, stage

    split = {"stage": 0, "outside": 0}
    original = pieces.time_pieces

    def counting(where):
        def time_pieces(length, locality, count=pieces.PIECES):
            result = original(length, locality, count)
            split[where] += len(result) > 1
            return result

        return time_pieces

    monkeypatch.setattr(stage, "time_pieces", counting("stage"))
    monkeypatch.setattr(pieces, "time_pieces", counting("outside"))
    spec = get_arch(arch).input
    model = get_arch(arch).create(num_classes=3, drop_path=0.2).double()
    video = torch.randn(1, 3, 6 * spec.num_frames, spec.image_size, spec.image_size, dtype=torch.float64)
    report = check_reversibility(model, video, Coupling(0.0, 1.0))
    assert report.gradient_error_level < 1e-10 and report.fallbacks == 0, report
    assert split["stage"] > 0
    assert split["outside"] > 0 or arch.startswith("vit")  # ViT's patch embedding is recomputed whole


@pytest.mark.parametrize("arch", ["slowfast-tiny", "swin3d-tiny"])
def test_a_second_backward_through_a_retained_graph_remakes_what_the_first_freed(arch):
    """The first backward frees each stage's last pair; a second one (retain_graph) makes stage outputs and inputs
    again from the stages' kept inputs instead, and its gradients are the first's."""
    model = get_arch(arch).create(num_classes=3, drop_path=0.2).double().train()
    model.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)
    video = tiny_video(arch, dtype=torch.float64)
    out = model(video).square().sum()
    out.backward(retain_graph=True)
    first = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out.backward()
    for a, b in zip(first, (p.grad for p in model.parameters()), strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
