"""The reversible stage against ordinary autograd on the same rewired network."""

import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from re2tal_cli.models.layers import DropPath
from re2tal_cli.reversible import Coupling, Execution, ResidualStage, guard, pieces
from re2tal_cli.reversible import stage as stage_module
from re2tal_cli.reversible.check import gradient_error_level
from re2tal_cli.reversible.pieces import Piece, TimeLocality, recomputed_in_pieces, time_pieces
from re2tal_cli.reversible.schedule import DualResidualSchedule


class MlpBlock(nn.Module):
    def __init__(self, dim=8, drop_path=0.0, dropout=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        return self.drop_path(self.dropout(self.fc2(torch.tanh(self.fc1(self.norm(x))))))


class ConvBnBlock(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(channels)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    """Blocks registered under `blocks`; the stage only references them (as the backbones do)."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.stage = ResidualStage(list(self.blocks))

    def forward(self, x):
        return self.stage(x)


def mlp_net(depth, **kwargs):
    return Net([MlpBlock(**kwargs) for _ in range(depth)]).double()


def grads_of(net, x, coupling, execution, rng_state=None):
    """Input and parameter gradients of a fixed random projection of the output."""
    net.stage.set_wiring(coupling, execution)
    x = x.detach().requires_grad_(True)
    params = list(net.parameters())
    with torch.random.fork_rng(devices=[]):
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        out = net(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    return out, torch.autograd.grad((out * weights).sum(), [x, *params])


MIDPOINT = DualResidualSchedule(total_steps=10).coupling_at(5)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 7])
@pytest.mark.parametrize(
    "coupling", [Coupling(0.0, 1.0), Coupling(0.5, 0.5), MIDPOINT], ids=["re2tal", "half", "midpoint"]
)
def test_fp64_gradients_equal_autograd(depth, coupling):
    net = mlp_net(depth)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    out_ref, ref = grads_of(net, x, coupling, Execution.PLAIN)
    out_rev, rev = grads_of(net, x, coupling, Execution.REVERSIBLE)
    assert torch.allclose(out_rev, out_ref, rtol=0, atol=1e-12)
    assert len(ref) == 1 + len(list(net.parameters()))
    for a, b in zip(rev, ref, strict=True):
        assert (a - b).abs().max().item() < 1e-10
    assert net.stage.guard.fallbacks == 0


@pytest.mark.parametrize("tokens", [5, 400], ids=["output-smaller-than-parameters", "output-larger"])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("coupling", [Coupling(0.0, 1.0), Coupling(0.5, 0.5)], ids=["re2tal", "half"])
@pytest.mark.parametrize("walk", ["reversible", "exact"])
def test_fp64_gradients_equal_autograd_whichever_gradient_takes_the_output_scale(tokens, depth, coupling, walk):
    """The output's 1/(1+β) is applied to the incoming gradient when it is smaller than the stage's parameters, else
    to the parameter gradients at the end: both give autograd's gradients, in the reversible walk and in the
    fallback's exact one (a tolerance below any error forces it), and leave the given gradient untouched."""
    net = mlp_net(depth)
    x = torch.randn(2, tokens, 8, dtype=torch.float64, requires_grad=True)
    assert (x.numel() < sum(p.numel() for p in net.parameters())) == (tokens == 5)  # both sides of the choice
    grad_out = torch.randn(x.shape, dtype=torch.float64)
    grad_before = grad_out.clone()
    grads = {}
    for execution in (Execution.PLAIN, Execution.REVERSIBLE):
        net.stage.set_wiring(coupling, execution, tolerance=-1.0 if walk == "exact" else None)
        grads[execution] = torch.autograd.grad(net(x), [x, *net.parameters()], grad_out)
    assert torch.equal(grad_out, grad_before)
    assert net.stage.guard.fallbacks == (walk == "exact")
    for a, b in zip(grads[Execution.REVERSIBLE], grads[Execution.PLAIN], strict=True):
        assert (a - b).abs().max().item() < 1e-10


def test_original_coupling_is_the_residual_network_exactly():
    net = mlp_net(3)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    h = x
    for block in net.blocks:
        h = h + block(h)
    for coupling in (Coupling(1.0, 0.0),):
        net.stage.set_wiring(coupling, Execution.PLAIN)
        assert torch.equal(net(x), h)
    # the dual-residual formula at (1, 0) gives the same numbers, bit for bit
    x_, y_ = x, 0.0 * x
    for block in net.blocks:
        x_, y_ = block(x_) + 1.0 * x_ + y_, 0.0 * x_
    assert torch.equal((x_ + y_) / 1.0, h)


def test_checkpoint_execution_matches_autograd():
    net = mlp_net(3)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    for coupling in (Coupling(1.0, 0.0), Coupling(0.0, 1.0)):
        _, ref = grads_of(net, x, coupling, Execution.PLAIN)
        _, ckpt = grads_of(net, x, coupling, Execution.CHECKPOINT)
        assert gradient_error_level(ckpt, ref) < 1e-12


def test_reversible_needs_nonzero_beta():
    net = mlp_net(2)
    with pytest.raises(ValueError, match="beta > 0"):
        net.stage.set_wiring(Coupling(1.0, 0.0), Execution.REVERSIBLE)
    with pytest.raises(ValueError, match="alpha"):
        Coupling(float("nan"), 1.0)


@pytest.mark.parametrize("depth", [2, 3])
def test_dropout_and_drop_path_replay_the_same_draws(depth):
    net = mlp_net(depth, drop_path=0.5, dropout=0.3).train()
    x = torch.randn(6, 5, 8, dtype=torch.float64)
    state = torch.get_rng_state()
    _, ref = grads_of(net, x, Coupling(0.0, 1.0), Execution.PLAIN, rng_state=state)
    _, rev = grads_of(net, x, Coupling(0.0, 1.0), Execution.REVERSIBLE, rng_state=state)
    assert gradient_error_level(rev, ref) < 1e-10


def test_recompute_leaves_the_global_generator_where_autograd_does():
    """The backward's replay must neither reseed nor consume draws: the generator continues as after a plain step."""
    net = mlp_net(3, drop_path=0.5, dropout=0.3).train()
    x = torch.randn(6, 5, 8, dtype=torch.float64)
    after = {}
    for execution in (Execution.PLAIN, Execution.REVERSIBLE):
        net.stage.set_wiring(Coupling(0.0, 1.0), execution)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            net(x).sum().backward()
            after[execution] = torch.get_rng_state()
    assert torch.equal(after[Execution.PLAIN], after[Execution.REVERSIBLE])


def test_successive_steps_draw_different_masks():
    net = mlp_net(2, drop_path=0.5).train()
    net.stage.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)
    x = torch.randn(16, 5, 8, dtype=torch.float64)
    grads = []
    for _ in range(2):
        net.zero_grad()
        net(x).sum().backward()
        grads.append(net.blocks[0].fc1.weight.grad.clone())
    assert not torch.equal(grads[0], grads[1])


def test_batchnorm_running_stats_updated_once():
    torch.manual_seed(0)
    nets = [Net([ConvBnBlock() for _ in range(3)]).double().train() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    x = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64)
    for net, execution in zip(nets, (Execution.PLAIN, Execution.REVERSIBLE), strict=True):
        net.stage.set_wiring(Coupling(0.0, 1.0), execution)
        net(x).square().sum().backward()
    for (name, a), (_, b) in zip(nets[0].state_dict().items(), nets[1].state_dict().items(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), name
    assert int(nets[1].blocks[0].bn.num_batches_tracked) == 1
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert (a.grad - b.grad).abs().max() < 1e-10


def test_bf16_autocast_runs_and_reconstruction_error_is_measured():
    net = Net([MlpBlock(16) for _ in range(4)])
    x = torch.randn(4, 10, 16)
    net.stage.set_wiring(Coupling(0.0, 1.0), Execution.PLAIN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_out = net(x)
    ref_out.float().sum().backward()
    ref = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net.stage.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    out.float().sum().backward()
    guard = net.stage.guard
    assert guard.backward_passes == 1 and 0 < guard.max_error < 5e-2
    for a, p in zip(ref, net.parameters(), strict=True):
        assert torch.isfinite(p.grad).all()
        assert (p.grad - a).abs().max() <= 0.1 * a.abs().max() + 1e-3


@pytest.mark.parametrize("input_made_again", [False, True])
def test_small_beta_falls_back_to_exact_gradients_and_counts_it(input_made_again):
    """Whether the guard compares the whole kept stage input or, the input being made again, a sample of it."""
    net = RecomputedBefore(6) if input_made_again else mlp_net(6)
    with torch.no_grad():  # large weights: the inverse's division by β amplifies every rounding error
        for p in net.blocks.parameters():
            p.mul_(8)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    coupling = Coupling(1.0, 1e-6)
    _, ref = grads_of(net, x, coupling, Execution.PLAIN)
    net.stage.guard.reset()
    _, rev = grads_of(net, x, coupling, Execution.REVERSIBLE)
    assert net.stage.guard.fallbacks == 1
    assert net.stage.guard.max_error > net.stage.default_tolerance(x.dtype, _no_autocast())
    assert gradient_error_level(rev, ref) < 1e-10


def test_tolerance_is_configurable():
    net = mlp_net(2)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    net.stage.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE, tolerance=0.0)
    net(x.requires_grad_()).sum().backward()
    assert net.stage.guard.fallbacks == 1  # any nonzero rounding exceeds a zero tolerance


def test_parameter_gradients_visible_to_autograd_grad():
    """Weights are inputs of the Function, so torch.autograd.grad(loss, params) works (it would not with .backward()
    inside the Function's backward, as in the public implementations)."""
    net = mlp_net(3)
    net.stage.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    grads = torch.autograd.grad(net(x).sum(), list(net.parameters()))
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in net.parameters())


def test_frozen_parameters_and_input_without_grad():
    net = mlp_net(3)
    net.blocks[1].requires_grad_(False)
    net.stage.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    net(x).sum().backward()
    assert all(p.grad is None for p in net.blocks[1].parameters())
    assert all(p.grad is not None for p in net.blocks[0].parameters())


def test_saved_memory_does_not_grow_with_depth():
    """What a reversible stage keeps for backward is a fixed number of stage-sized tensors, whatever the depth."""

    def saved_bytes(depth, execution):
        net = mlp_net(depth)
        net.stage.set_wiring(Coupling(0.0, 1.0), execution)
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        x = torch.randn(4, 32, 8, dtype=torch.float64, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(x)
        return total

    stage_bytes = 4 * 32 * 8 * 8
    # the stage input through save_for_backward; the output and yₙ (two more) are held on ctx and freed early
    assert saved_bytes(3, Execution.REVERSIBLE) == saved_bytes(12, Execution.REVERSIBLE) == stage_bytes
    assert saved_bytes(12, Execution.PLAIN) > 4 * saved_bytes(3, Execution.PLAIN) / 1.5


def test_eval_without_grad_does_not_use_the_function():
    net = mlp_net(2)
    net.stage.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)
    with torch.no_grad():
        out = net(torch.randn(2, 5, 8, dtype=torch.float64))
    assert out.grad_fn is None and net.stage.guard.backward_passes == 0


def _no_autocast():
    from re2tal_cli.reversible.replay import AutocastState

    return AutocastState.capture(torch.device("cpu"))


def test_schedule_end_points_and_steps():
    schedule = DualResidualSchedule(total_steps=9, update_every=3)
    assert schedule.coupling_at(0) == Coupling(1.0, 0.1)
    assert schedule.coupling_at(2) == Coupling(1.0, 0.1)  # no update before η steps
    assert schedule.coupling_at(3).alpha == pytest.approx(2 / 3) and schedule.coupling_at(3).beta == pytest.approx(0.4)
    assert schedule.coupling_at(9) == Coupling(0.0, 1.0) == schedule.coupling_at(100)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_and_rng_replay(dtype):
    net = Net([MlpBlock(64, drop_path=0.3, dropout=0.1) for _ in range(5)]).cuda().train()
    x = torch.randn(8, 128, 64, device="cuda")
    grads = {}
    for execution in (Execution.PLAIN, Execution.REVERSIBLE):
        net.zero_grad()
        net.stage.set_wiring(Coupling(0.0, 1.0), execution)
        with torch.random.fork_rng(devices=[0]):
            torch.manual_seed(7)
            with torch.autocast("cuda", dtype=dtype):
                out = net(x)
            out.float().square().mean().backward()
        grads[execution] = [p.grad.clone() for p in net.parameters()]
    assert net.stage.guard.fallbacks == 0
    for a, b in zip(grads[Execution.REVERSIBLE], grads[Execution.PLAIN], strict=True):
        assert (a - b).abs().max() <= 0.05 * b.abs().max() + 1e-4


class PassThroughBlock(nn.Module):
    """F whose gradients are the incoming gradient itself (a full-shape additive parameter): aliasing trap."""

    def __init__(self, shape):
        super().__init__()
        self.offset = nn.Parameter(torch.randn(shape, dtype=torch.float64))

    def forward(self, x):
        return x.detach() * 0 + self.offset


def test_gradients_that_alias_the_incoming_gradient_are_not_corrupted():
    net = Net([PassThroughBlock((2, 5, 8)), MlpBlock(8).double(), PassThroughBlock((2, 5, 8))])
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    _, ref = grads_of(net, x, Coupling(0.3, 0.7), Execution.PLAIN)
    _, rev = grads_of(net, x, Coupling(0.3, 0.7), Execution.REVERSIBLE)
    assert gradient_error_level(rev, ref) < 1e-10


def test_second_backward_through_a_retained_graph():
    """The first backward frees the kept output and yₙ; a second one (retain_graph=True) recomputes from the kept
    input."""
    net = mlp_net(3, drop_path=0.5).train()
    x = torch.randn(4, 5, 8, dtype=torch.float64)
    grads = {}
    for execution in (Execution.PLAIN, Execution.REVERSIBLE):
        net.zero_grad()
        net.stage.set_wiring(Coupling(0.0, 1.0), execution)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            out = net(x).square().sum()
        out.backward(retain_graph=True)
        out.backward()
        grads[execution] = [p.grad.clone() for p in net.parameters()]
    assert gradient_error_level(grads[Execution.REVERSIBLE], grads[Execution.PLAIN]) < 1e-10


def test_the_stage_rebuilds_its_last_pair_from_the_output_the_next_layer_holds():
    """xₙ is made from the output: the stage holds no tensor beside the output and yₙ, and an output changed in place
    after the forward (what the rebuilt xₙ would silently follow) is an error, as for a tensor autograd saves."""
    net = mlp_net(3)
    net.stage.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    out = net(x)
    output_alias, y = out.grad_fn.last_pair
    assert output_alias.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
    out.square().sum().backward()
    assert out.grad_fn.last_pair is None  # freed in the backward
    out = net(x)
    out.mul_(2)
    with pytest.raises(RuntimeError, match="output of a reversible stage was modified in place"):
        out.sum().backward()


def test_coefficients_changed_between_forward_and_backward_do_not_corrupt_gradients():
    """A schedule may move (α, β) at any time: the backward inverts with the coefficients of its own forward."""
    net = mlp_net(3)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    _, ref = grads_of(net, x, Coupling(0.5, 0.5), Execution.PLAIN)
    net.stage.set_wiring(Coupling(0.5, 0.5), Execution.REVERSIBLE)
    x = x.detach().requires_grad_(True)
    out = net(x)
    net.stage.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    rev = torch.autograd.grad((out * weights).sum(), [x, *net.parameters()])
    assert gradient_error_level(rev, ref) < 1e-10


class TokenWiseBlock(MlpBlock):
    """The MLP block declared local along dim 1 (each token alone), recording the token counts it is called with."""

    time_locality = TimeLocality.same(1)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[1])
        return super().forward(x)


@pytest.mark.usefixtures("pieces_at_any_size")
@pytest.mark.parametrize("coupling", [Coupling(0.0, 1.0), Coupling(0.5, 0.5)], ids=["re2tal", "half"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_token_wise_blocks_recompute_in_pieces_exactly(coupling, dropout):
    blocks = [TokenWiseBlock(8, drop_path=0.5, dropout=dropout), MlpBlock(8), TokenWiseBlock(8, drop_path=0.5)]
    net = Net(blocks).double().train()
    x = torch.randn(3, 10, 8, dtype=torch.float64)
    state = torch.get_rng_state()
    _, ref = grads_of(net, x, coupling, Execution.PLAIN, rng_state=state)
    for block in (blocks[0], blocks[2]):
        block.calls.clear()
    _, rev = grads_of(net, x, coupling, Execution.REVERSIBLE, rng_state=state)
    assert gradient_error_level(rev, ref) < 1e-10
    assert blocks[2].calls == [3, 3, 3, 1] * 2  # the forward, then the recompute, in four pieces of ≤ 3 tokens
    # an active elementwise dropout draws per element: that block is run whole
    assert blocks[0].calls == ([10, 10] if dropout else [3, 3, 3, 1] * 2)


class TemporalConvBlock(nn.Module):
    """F on (B, T, C) that mixes time: a kernel-5 convolution along T (reach 2 frames each side), declared with
    `halo` frames."""

    def __init__(self, halo, channels=4, drop_path=0.0):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 5, padding=2)
        self.drop_path = DropPath(drop_path)
        self.time_locality = TimeLocality.same(1, halo=halo)
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[1])
        return self.drop_path(torch.tanh(self.conv(x.transpose(1, 2)).transpose(1, 2)))


@pytest.mark.usefixtures("pieces_at_any_size")
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("coupling", [Coupling(0.0, 1.0), Coupling(0.5, 0.5)], ids=["re2tal", "half"])
@pytest.mark.parametrize(
    ("piece_bytes", "calls"),
    [(None, [22, 24, 24, 22]), (640, [16, 18, 18, 18, 18, 12])],  # 640: 8 pieces asked, the halos allow 6
    ids=["4 pieces", "more pieces"],
)
def test_blocks_that_mix_time_recompute_in_pieces_with_halos_exactly(depth, coupling, piece_bytes, calls, monkeypatch):
    """Pieces read `halo` frames beyond their own on each side and their input gradients are summed where the halos
    overlap: equal to autograd at odd and even depths with drop-path. With too small a halo they are not (the
    test can tell)."""
    if piece_bytes is not None:
        monkeypatch.setattr(pieces, "PIECE_BYTES", piece_bytes)
    x = torch.randn(2, 80, 4, dtype=torch.float64)
    for halo, equal in ((2, True), (1, False)):
        torch.manual_seed(0)
        blocks = [TemporalConvBlock(halo, drop_path=0.3) for _ in range(depth)]
        net = Net(blocks).double().train()
        state = torch.get_rng_state()
        _, ref = grads_of(net, x, coupling, Execution.PLAIN, rng_state=state)
        blocks[-1].calls.clear()
        _, rev = grads_of(net, x, coupling, Execution.REVERSIBLE, rng_state=state)
        assert (gradient_error_level(rev, ref) < 1e-10) is equal, halo
        if halo == 2:  # forward and recompute: pieces of 20 (14) frames, each with up to 2 frames on either side
            assert blocks[-1].calls == calls * 2


def test_larger_inputs_are_split_into_more_pieces(monkeypatch):
    x = torch.empty(2, 80, 4, dtype=torch.float64)  # 5120 bytes
    assert pieces.piece_count([x]) == pieces.PIECES
    monkeypatch.setattr(pieces, "PIECE_BYTES", 640)
    assert pieces.piece_count([torch.empty(1), x]) == 8  # the largest input decides
    monkeypatch.setattr(pieces, "PIECE_BYTES", 1)
    assert pieces.piece_count([x]) == pieces.MAX_PIECES


def test_time_pieces_cover_the_output_on_aligned_boundaries():
    assert time_pieces(10, TimeLocality.same(1)) == [
        Piece(0, 3, 0, 3), Piece(3, 6, 3, 6), Piece(6, 9, 6, 9), Piece(9, 10, 9, 10)
    ]  # fmt: skip
    # windows of 4: boundaries on multiples of 4, halos rounded up to whole windows, clipped at the ends
    assert time_pieces(128, TimeLocality.same(1, halo=3, align=4)) == [
        Piece(0, 32, 0, 36), Piece(32, 64, 28, 68), Piece(64, 96, 60, 100), Piece(96, 128, 92, 128)
    ]  # fmt: skip
    assert time_pieces(4, TimeLocality.same(1, align=4)) == [Piece(0, 4, 0, 4)]  # one window: whole
    assert time_pieces(6, TimeLocality.same(1, min_frames=2)) == [
        Piece(0, 2, 0, 2),
        Piece(2, 4, 2, 4),
        Piece(4, 6, 4, 6),
    ]
    # a remainder shorter than min_frames joins the piece before it
    assert time_pieces(25, TimeLocality.same(1, align=4, min_frames=4))[-1] == Piece(16, 25, 16, 25)
    # halos that would compute more than MAX_HALO_COST times the frames: whole
    assert time_pieces(10, TimeLocality.same(1, halo=2)) == [Piece(0, 10, 0, 10)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_check_reversibility_on_cuda_draws_the_same_dropout_in_both_passes():
    """The model copy goes to the video's device and the CUDA generator starts both passes from the same state:
    with dropout active, a reversible step on the same draws matches ordinary autograd to fp32 rounding."""
    from re2tal_cli.reversible.check import check_reversibility

    net = Net([MlpBlock(64, drop_path=0.3, dropout=0.2) for _ in range(4)]).train()  # left on the CPU
    video = torch.randn(4, 64, 64, device="cuda")
    report = check_reversibility(net, video, Coupling(0.0, 1.0))
    assert report.gradient_error_level < 1e-4 and report.fallbacks == 0
    assert next(net.parameters()).device.type == "cpu"  # the caller's model is untouched


class RecomputedBefore(nn.Module):
    """A layer recomputed in the backward (as the layers outside a backbone's stages are) and then a stage: the
    stage's input is made again rather than kept, so its guard compares on a sample of it. Counts the layer's calls."""

    def __init__(self, depth, dim=8):
        super().__init__()
        self.embed = nn.Linear(dim, dim).double()
        self.blocks = nn.ModuleList(MlpBlock(dim).double() for _ in range(depth))
        self.stage = ResidualStage(list(self.blocks))
        self.embed_calls = 0

    def _embed(self, x):
        self.embed_calls += 1
        return self.embed(x)

    def forward(self, x):
        return self.stage(recomputed_in_pieces(self._embed, [x], [self.embed], TimeLocality.same(1)))


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_a_remade_stage_input_is_guarded_on_a_sample_without_being_made_again(depth, monkeypatch):
    monkeypatch.setattr(guard, "SAMPLED_ELEMENTS", 16)  # (stride 5 through the 80 elements: a true sample)
    monkeypatch.setattr(guard, "MIN_SAMPLE_STRIDE", 1)
    net = RecomputedBefore(depth)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    _, ref = grads_of(net, x, Coupling(0.0, 1.0), Execution.PLAIN)
    net.embed_calls = 0
    _, rev = grads_of(net, x, Coupling(0.0, 1.0), Execution.REVERSIBLE)
    assert gradient_error_level(rev, ref) < 1e-10
    assert net.stage.guard.backward_passes == 1 and net.stage.guard.fallbacks == 0
    assert 0 < net.stage.guard.max_error < 1e-12
    assert net.embed_calls == 2  # its forward and its own recompute: the guard did not make the stage input again


def test_the_guard_sample_spreads_over_every_position_of_every_dimension(monkeypatch):
    t = torch.arange(4 * 6 * 8 * 8).reshape(4, 6, 8, 8)
    assert guard.sampled(t).numel() == math.ceil(t.numel() / guard.MIN_SAMPLE_STRIDE)  # a small tensor: every 63rd
    monkeypatch.setattr(guard, "SAMPLED_ELEMENTS", 64)
    monkeypatch.setattr(guard, "MIN_SAMPLE_STRIDE", 1)
    taken = guard.sampled(t)  # stride 25: 62 elements
    assert 32 <= taken.numel() <= 64
    for dim in range(4):  # every index of every dimension is hit (an even stride would miss odd columns)
        positions = torch.stack(torch.unravel_index(taken, t.shape))[dim]
        assert positions.unique().numel() == t.shape[dim]


class DiffersOnceAtOneElement(nn.Module):
    """F = 0 in the forward and 1 at one element in every later call: a recompute that does not give the forward's
    F there, so the rebuilt stage input is wrong at that one element only (the guard's sample would miss it)."""

    def __init__(self, element):
        super().__init__()
        self.element, self.calls = element, 0

    def forward(self, x):
        bump = torch.zeros_like(x)
        bump.view(-1)[self.element] = float(self.calls > 0)
        self.calls += 1
        return x * 0 + bump


@pytest.mark.parametrize("odd_block", [0, 1], ids=["wrong-y0", "wrong-x0-and-y0"])
def test_the_guard_compares_every_element_of_a_kept_stage_input(odd_block):
    """Block 0's recompute makes y₀ wrong; block 1's makes y₁ = x₀ wrong too. Both are compared over every element
    (not the sample a made-again input is compared on), in the walk's own storage."""
    blocks = [MlpBlock(8).double(), MlpBlock(8).double()]
    blocks[odd_block] = DiffersOnceAtOneElement(element=1)  # (the sample of this small input starts at element 0)
    net = Net(blocks)
    net.stage.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)
    net(torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)).sum().backward()
    assert net.stage.guard.fallbacks == 1 and net.stage.guard.max_error > 1e-3


class DiffersInOnePiece(nn.Module):
    """F = 0, token-wise, except at one element of one call (`call`-th, counting the forward's pieces): a recompute
    that differs from the forward in one piece only."""

    time_locality = TimeLocality.same(1)

    def __init__(self, call, element):
        super().__init__()
        self.call, self.element, self.calls = call, element, 0

    def forward(self, x):
        bump = torch.zeros_like(x)
        bump.view(-1)[self.element] = float(self.calls == self.call)
        self.calls += 1
        return x * 0 + bump


@pytest.mark.usefixtures("pieces_at_any_size")
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("input_made_again", [False, True])
@pytest.mark.parametrize(
    ("call", "kept_element", "sampled_element"),
    [(4, 1, 0), (7, 6, 27)],  # pieces of 3, 3, 3, 1 tokens: calls 0-3 the forward, 4-7 the recompute
    ids=["first-piece", "last-piece"],
)
def test_the_last_block_in_pieces_compares_y0_before_making_the_gradient_in_it(
    depth, input_made_again, call, kept_element, sampled_element, monkeypatch
):
    """At the walk's last block the input gradient is made in y₀'s storage, a piece at a time: each piece's frames are
    compared first — every element of a kept stage input (1 and 78 are not sample positions), the sample of one made
    again (positions 0 and 315, stride 21) — so a recompute that differs from the forward at one element of any
    piece still falls back."""
    made_in_y0, in_frames = [], stage_module._GradientInFrames
    monkeypatch.setattr(guard, "SAMPLED_ELEMENTS", 16)  # stride 21 through the 320 elements
    monkeypatch.setattr(guard, "MIN_SAMPLE_STRIDE", 1)
    monkeypatch.setattr(stage_module, "_GradientInFrames", lambda *args: made_in_y0.append(1) or in_frames(*args))
    net = RecomputedBefore(depth) if input_made_again else mlp_net(depth)
    net.blocks[0] = DiffersInOnePiece(call, sampled_element if input_made_again else kept_element)
    net.stage = ResidualStage(list(net.blocks))
    x = torch.randn(4, 10, 8, dtype=torch.float64)  # more elements than the stage's parameters: grad_out not copied
    grads_of(net, x, Coupling(0.0, 1.0), Execution.REVERSIBLE)
    assert made_in_y0 == [1]  # the reversible walk's last block (not the fallback's)
    assert net.blocks[0].calls > 8  # the fallback's recompute ran
    assert net.stage.guard.fallbacks == 1 and net.stage.guard.max_error > 0.1


class StageSizedTensorsMade(TorchDispatchMode):
    """The operators run under it that make a new tensor of `shape` (not an alias of one of their inputs)."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.made = shape, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        made = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.shape == self.shape]
        self.made += [str(func) for t in made if not any(torch._C._is_alias_of(t, i) for i in inputs)]
        return out


@pytest.mark.usefixtures("pieces_at_any_size")
@pytest.mark.parametrize("depth", [1, 2])
def test_the_last_block_in_pieces_makes_the_input_gradient_in_y0s_storage(depth):
    """Where gy₁ is the incoming gradient (one- and two-block stages), ∂L/∂x₀ is made in y₀'s frames once they are
    compared, not in a tensor of its own: the backward makes one stage-sized tensor (xₙ = 2·out − yₙ, which the walk
    turns into yₙ₋₁, …, y₀ and then ∂L/∂x₀), and at depth 2 the first block's input gradient."""
    net = Net([TemporalConvBlock(halo=2, channels=16) for _ in range(depth)]).double().train()
    net.stage.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)
    x = torch.randn(4, 80, 16, dtype=torch.float64, requires_grad=True)  # more elements than the stage's parameters
    out = net(x)
    grad_out = torch.randn_like(out)
    with StageSizedTensorsMade(x.shape) as log:
        out.backward(grad_out)
    assert len(log.made) == depth, log.made
    assert net.stage.guard.fallbacks == 0


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("coupling", [Coupling(0.0, 1.0), Coupling(0.5, 0.5)], ids=["re2tal", "half"])
def test_the_backward_leaves_the_stage_input_and_the_incoming_gradient_untouched(depth, coupling):
    """The guard's comparison and the input gradient's scaling run in place, in tensors the walk owns: never in
    the stage input (x₀ of a one-block stage at β=1 *is* the input) or in the gradient it is given."""
    net = mlp_net(depth)
    net.stage.set_wiring(coupling, Execution.REVERSIBLE)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    x_before = x.detach().clone()
    out = net(x)
    grad_out = torch.randn_like(out)
    grad_before = grad_out.clone()
    out.backward(grad_out)
    assert torch.equal(x.detach(), x_before) and torch.equal(grad_out, grad_before)
    assert net.stage.guard.fallbacks == 0 and net.stage.guard.max_error < 1e-12


def test_splits_with_halos_or_strided_pieces_need_larger_inputs_than_contiguous_ones():
    """A split whose pieces overlap on halos computes frames twice, and one whose pieces are strided in memory (a
    convolution's (B, C, T, H, W) along T) copies them and runs short clips: both are worth their cost only on larger
    inputs than contiguous pieces (tokens (1, N, C) along N)."""
    mlp, conv = nn.Linear(8, 8), nn.Conv3d(8, 8, (3, 1, 1), padding=(1, 0, 0))
    tokens, frames, with_halo = TimeLocality.same(1), TimeLocality.same(2), TimeLocality.same(2, halo=1)
    for nbytes, splits in ((pieces.MIN_SPLIT_BYTES - 32, (False, False, False)),
                           (pieces.MIN_SPLIT_BYTES, (True, False, False)),
                           (pieces.MIN_HALO_SPLIT_BYTES, (True, True, True))):  # fmt: skip
        token_input = torch.empty(1, nbytes // 32, 8)
        clip = torch.empty(1, 8, nbytes // 32, 1, 1)  # (B, C, T, H, W): pieces along T are strided
        found = (pieces.split_ok([mlp], [token_input], tokens), pieces.split_ok([mlp], [clip], frames),
                 pieces.split_ok([conv], [clip], with_halo))  # fmt: skip
        assert found == splits
    assert pieces.split_ok([mlp], [torch.empty(2, pieces.MIN_SPLIT_BYTES // 64, 8)], tokens) is False  # batch 2
    assert pieces.MIN_SPLIT_BYTES < pieces.MIN_HALO_SPLIT_BYTES
    assert not pieces.split_ok([nn.BatchNorm3d(8).train()], [torch.empty(pieces.MIN_HALO_SPLIT_BYTES)], with_halo)
