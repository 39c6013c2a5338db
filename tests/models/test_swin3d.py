"""Video Swin 3D: torchvision's model as the oracle, the two checkpoint layouts pinned, reversible gradients exact."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from re2tal_cli.checkpoint import build_from_state_dict, guess_arch, load_backbone
from re2tal_cli.cli.app import app
from re2tal_cli.errors import BadCheckpointError, BadInputError
from re2tal_cli.models import create_model, get_arch
from re2tal_cli.models import swin3d as swin
from re2tal_cli.models import swin_attention as attention
from re2tal_cli.models.base import IMAGENET_MEAN, IMAGENET_STD
from re2tal_cli.reversible import Coupling, Execution
from re2tal_cli.reversible.check import check_reversibility
from re2tal_cli.reversible.wiring import Wiring

ORACLE = "/work/shared/oracles/torchvision-video-models"
LAYOUTS = Path("/work/shared/oracles/checkpoint-layouts")
runner = CliRunner()


@pytest.fixture(scope="session")
def tv_swin():
    """torchvision's pure-Python Swin3D module, or a clean skip. The fake `torchvision` package is taken out of
    sys.modules and sys.path again, so no other test sees it."""
    before = set(sys.modules)
    try:
        done = subprocess.run([ORACLE], capture_output=True, text=True, timeout=300, check=True)
        sys.path.insert(0, done.stdout.strip().splitlines()[-1])
        try:
            from torchvision.models.video import swin_transformer
        finally:
            sys.path.pop(0)
            for name in set(sys.modules) - before:
                if name == "torchvision" or name.startswith("torchvision."):
                    del sys.modules[name]
    except Exception as error:  # no script, no network for the wheel, no pillow, …
        pytest.skip(f"torchvision oracle unavailable: {error}")
    return swin_transformer


def tiny_torchvision(tv_swin, depths=(2, 2), num_classes=5):
    """The torchvision twin of swin3d-tiny / swin3d-tiny-d3, with non-trivial bias tables and norms."""
    model = tv_swin.SwinTransformer3d(
        patch_size=[2, 4, 4],
        embed_dim=16,
        depths=list(depths),
        num_heads=[1, 2],
        window_size=[2, 4, 4],
        stochastic_depth_prob=0.0,
        num_classes=num_classes,
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or "norm" in name:
                p.normal_(mean=1.0 if name.endswith("norm1.weight") else 0.0, std=0.5)
    return model.eval()


def ours_from(tv_model, arch, dtype=torch.float32):
    """Our model loaded from the torchvision state dict, converted without rounding (built in `dtype` first)."""
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tv_model.state_dict().items()}
    converted = swin.convert_swin3d(sd)
    model = create_model(arch, num_classes=tv_model.head.out_features).to(dtype)
    model.load_state_dict(converted.state_dict, strict=True)
    return model.eval(), converted


def tv_tokens(tv_model, video):
    return tv_model.norm(tv_model.features(tv_model.patch_embed(video)))  # (B, T', H', W', C)


# Inputs: divisible; H/W not divisible by patch nor window (padding) with the shift active in all three axes; T' equal
# to the window (window and shift shrink along T); one frame pair (T' = 1).
SHAPES = [(2, 3, 8, 32, 32), (1, 3, 8, 36, 44), (1, 3, 4, 18, 30), (1, 3, 2, 20, 20)]


# --- torchvision oracle ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,depths", [("swin3d-tiny", (2, 2)), ("swin3d-tiny-d3", (3, 1))])
def test_torchvision_weights_give_torchvision_outputs(tv_swin, arch, depths):
    tv_model = tiny_torchvision(tv_swin, depths)
    model, converted = ours_from(tv_model, arch)
    assert converted.format == "torchvision"
    assert all(k.endswith("relative_position_index") for k in converted.dropped)
    with torch.no_grad():
        for shape in SHAPES:
            video = torch.randn(shape)
            expected, expected_tokens = tv_model(video), tv_tokens(tv_model, video)
            assert (model(video) - expected).abs().max() < 1e-5
            assert (model.tokens(video) - expected_tokens).abs().max() < 1e-5
            # rewired at α=1, β=0 (the original wiring), directly and through per-block checkpointing: still the same
            Wiring(1.0, 0.0).apply(model)
            assert (model(video) - expected).abs().max() < 1e-5
            model.set_wiring(Coupling(1.0, 0.0), Execution.CHECKPOINT)
            assert (model(video) - expected).abs().max() < 1e-5
            model.set_wiring(Coupling(1.0, 0.0), Execution.PLAIN)


def test_torchvision_fp64_outputs_and_gradients_agree(tv_swin):
    """Same function to rounding, and our attention's hand-written backward (bias-table gradient included) gives
    autograd's gradients through torchvision's explicit attention."""
    tv_model = tiny_torchvision(tv_swin).double()
    model, _ = ours_from(tv_model, "swin3d-tiny", torch.float64)
    video = torch.randn(2, 3, 8, 36, 44, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 5, dtype=torch.float64)
    tv_params, our_params = dict(tv_model.named_parameters()), dict(model.named_parameters())
    out_tv, out = tv_model(video), model(video)
    assert (out - out_tv).abs().max() < 1e-12
    grads_tv = torch.autograd.grad((out_tv * weights).sum(), [video, *tv_params.values()])
    grads = torch.autograd.grad((out * weights).sum(), [video, *our_params.values()])
    assert (grads[0] - grads_tv[0]).abs().max() < 1e-12
    tv_by_our_key = swin.convert_swin3d(dict(zip(tv_params, grads_tv[1:], strict=True))).state_dict
    assert tv_by_our_key.keys() == our_params.keys()
    for key, grad in zip(our_params, grads[1:], strict=True):
        assert (grad - tv_by_our_key[key]).abs().max() <= 1e-10 * (1 + grad.abs().max()), key


def test_torchvision_swin3d_t_layout_is_the_pinned_one(tv_swin):
    state = tv_swin.swin3d_t().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == torchvision_layout(96, (2, 2, 6, 2), (3, 6, 12, 24))


# --- pinned layouts ----------------------------------------------------------------------------------------------


def torchvision_layout(dim, depths, heads, classes=400, window=(8, 7, 7)):
    """torchvision.models.video.swin3d_* state-dict keys and shapes, written out from the published definition
    (torchvision/models/video/swin_transformer.py: `features` alternates stages of SwinTransformerBlock and
    PatchMerging; the MLP is torchvision.ops.MLP, whose Linear layers are `mlp.0` and `mlp.3`)."""
    n, rows = window[0] * window[1] * window[2], (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    keys = {"patch_embed.proj.weight": (dim, 3, 2, 4, 4), "patch_embed.proj.bias": (dim,)}
    keys |= {"patch_embed.norm.weight": (dim,), "patch_embed.norm.bias": (dim,)}
    for s, (depth, h) in enumerate(zip(depths, heads, strict=True)):
        c = dim * 2**s
        for i in range(depth):
            p = f"features.{2 * s}.{i}."
            keys |= {p + "norm1.weight": (c,), p + "norm1.bias": (c,)}
            keys |= {p + "attn.relative_position_bias_table": (rows, h), p + "attn.relative_position_index": (n, n)}
            keys |= {p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,)}
            keys |= {p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,)}
            keys |= {p + "norm2.weight": (c,), p + "norm2.bias": (c,)}
            keys |= {p + "mlp.0.weight": (4 * c, c), p + "mlp.0.bias": (4 * c,)}
            keys |= {p + "mlp.3.weight": (c, 4 * c), p + "mlp.3.bias": (c,)}
        if s < len(depths) - 1:
            p = f"features.{2 * s + 1}."
            keys |= {p + "reduction.weight": (2 * c, 4 * c), p + "norm.weight": (4 * c,), p + "norm.bias": (4 * c,)}
    c = dim * 2 ** (len(depths) - 1)
    return keys | {"norm.weight": (c,), "norm.bias": (c,), "head.weight": (classes, c), "head.bias": (classes,)}


def layout_state_dict(shapes: dict, window=(8, 7, 7)) -> dict:
    """Meta tensors of the given shapes (no memory), except the relative-position indices, which the converter
    checks by value."""
    index = attention.relative_position_index(window)
    return {k: index if k.endswith("index") else torch.empty(s, device="meta") for k, s in shapes.items()}


def our_layout(arch, num_classes):
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in create_model(arch, num_classes=num_classes).state_dict().items()}


@pytest.mark.parametrize(
    "arch,dim,depths,heads,params",
    [  # parameter counts: torchvision's published `num_params` of Swin3D_T/S/B_Weights.KINETICS400_V1
        ("swin3d-t", 96, (2, 2, 6, 2), (3, 6, 12, 24), 28_158_070),
        ("swin3d-s", 96, (2, 2, 18, 2), (3, 6, 12, 24), 49_816_678),
        ("swin3d-b", 128, (2, 2, 18, 2), (4, 8, 16, 32), 88_048_984),
    ],
)
def test_torchvision_layout_converts_to_ours(arch, dim, depths, heads, params):
    converted = swin.convert_swin3d(layout_state_dict(torchvision_layout(dim, depths, heads)))
    assert converted.format == "torchvision" and len(converted.dropped) == sum(depths)
    assert {k: tuple(v.shape) for k, v in converted.state_dict.items()} == our_layout(arch, 400)
    with torch.device("meta"):
        assert sum(p.numel() for p in create_model(arch, num_classes=400).parameters()) == params


@pytest.mark.parametrize("arch", ["swin3d-t", "swin3d-s", "swin3d-b"])
def test_mmaction_layout_converts_to_ours(arch):
    layout = json.loads((LAYOUTS / f"mmaction2_{arch}.json").read_text())["tensors"]
    converted = swin.convert_swin3d(layout_state_dict({k: tuple(shape) for k, (shape, _) in layout.items()}))
    assert converted.format == "mmaction2"
    assert converted.dropped and all(k.endswith(".attn.relative_position_index") for k in converted.dropped)
    assert {k: tuple(v.shape) for k, v in converted.state_dict.items()} == our_layout(arch, 400)


def test_official_video_swin_names_and_no_head():
    """The original Video-Swin-Transformer release (mmaction 0.x) calls the last norm `backbone.norm`; a backbone-only
    file has no `cls_head`."""
    layout = json.loads((LAYOUTS / "mmaction2_swin3d-t.json").read_text())["tensors"]
    shapes = {k.replace("norm3.", "norm."): tuple(s) for k, (s, _) in layout.items() if not k.startswith("cls_head")}
    converted = swin.convert_swin3d(layout_state_dict(shapes))
    assert {k: tuple(v.shape) for k, v in converted.state_dict.items()} == our_layout("swin3d-t", 0)


def test_wrong_relative_position_index_is_refused():
    sd = layout_state_dict(torchvision_layout(16, (2, 2), (1, 2), classes=5, window=(2, 4, 4)), window=(2, 4, 4))
    swin.convert_swin3d(sd)  # the right ones pass
    sd["features.2.1.attn.relative_position_index"] = attention.relative_position_index((2, 4, 4)).flip(0)
    with pytest.raises(BadCheckpointError, match=r"features\.2\.1\.attn\.relative_position_index"):
        swin.convert_swin3d(sd)


def test_own_layout_round_trips():
    model = create_model("swin3d-tiny", num_classes=3)
    converted = swin.convert_swin3d(model.state_dict())
    assert converted.format == "re2tal" and converted.state_dict.keys() == model.state_dict().keys()
    assert "layers.0.blocks.1.attn.norm.weight" in converted.state_dict  # stable names, whatever the wiring


@pytest.fixture(scope="module")
def mmaction_swin3d_t(tmp_path_factory) -> Path:
    """A seeded random checkpoint with the exact keys, shapes and dtypes of mmaction2's Swin3D-T recognizer."""
    out = tmp_path_factory.mktemp("mmaction") / "swin3d-t.safetensors"
    script = LAYOUTS / "make_state_dict.py"
    subprocess.run([sys.executable, script, LAYOUTS / "mmaction2_swin3d-t.json", out], check=True, capture_output=True)
    return out


def test_real_layout_swin3d_t_loads_runs_and_rewires(mmaction_swin3d_t, tmp_path):
    loaded = load_backbone(mmaction_swin3d_t, arch="swin3d-t")
    model = loaded.model.eval()
    assert loaded.source_format == "mmaction2" and model.head.out_features == 400
    assert [len(s.blocks) for s in model.residual_stages()] == [4, 4, 12, 4]
    video = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        logits, maps = model(video), model.feature_maps(video)
    assert logits.shape == (1, 400) and torch.isfinite(logits).all()
    assert maps.shape == (1, 768, 2, 2, 2)  # 64 → 16 → 8 → 4 → 2 spatially, 4 frames → 2 steps

    out = tmp_path / "rw"
    result = runner.invoke(app, ["rewire", str(mmaction_swin3d_t), "--arch", "swin3d-t", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["values_equal"] and report["source_format"] == "mmaction2"
    assert report["stages"] == [4, 4, 12, 4] and len(report["dropped_keys"]) == 12
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "swin3d-t" and config["wiring"]["execution"] == "reversible"


def test_slowfast_file_with_swin_arch_names_first_missing_and_unexpected_key(tmp_path):
    src = tmp_path / "slowfast.safetensors"
    script = LAYOUTS / "make_state_dict.py"
    subprocess.run(
        [sys.executable, script, LAYOUTS / "pyslowfast_slowfast-r50.json", src], check=True, capture_output=True
    )
    out = tmp_path / "rw"
    result = runner.invoke(app, ["rewire", str(src), "--arch", "swin3d-t", "--out", str(out)])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("Error: "), message
    assert "does not fit --arch swin3d-t" in message
    assert "missing keys (first: patch_embed.proj.weight)" in message
    assert "unexpected keys (first: s1.pathway0_stem" in message
    likely = guess_arch(load_file(src))
    if likely:  # the SlowFast family is registered: the hint names it
        assert f"it looks like --arch {likely[0]}" in message
    assert not out.exists()


# --- reversible --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["swin3d-tiny", "swin3d-tiny-d3"])
@pytest.mark.parametrize("coupling", [Coupling(0.0, 1.0), Coupling(0.5, 0.5)], ids=str)
def test_rewired_gradients_equal_autograd_fp64(arch, coupling):
    """Drop-path on (same draws replayed), padding and all three shift axes active, two samples."""
    model = create_model(arch, num_classes=3, drop_path=0.3)
    video = torch.randn(2, 3, 8, 20, 36, dtype=torch.float64)
    report = check_reversibility(model, video, coupling)
    assert report.gradient_error_level <= 1e-10, report
    assert report.output_error <= 1e-12 and report.fallbacks == 0
    assert report.backward_passes == len(model.residual_stages())


def test_drop_path_is_live_in_training():
    model = create_model("swin3d-tiny", drop_path=0.5).train()
    video = torch.randn(4, 3, 4, 16, 16)
    assert not torch.equal(model(video), model(video))


def test_original_wiring_is_the_unrewired_network():
    model = create_model("swin3d-tiny-d3", num_classes=4).eval()
    rewired = copy.deepcopy(model)
    video = torch.randn(1, 3, 8, 36, 44)
    rewired.set_wiring(Coupling(0.0, 1.0), Execution.REVERSIBLE)
    with torch.no_grad():
        assert not torch.allclose(rewired(video), model(video))  # a different network …
        rewired.set_wiring(Coupling(1.0, 0.0), Execution.PLAIN)
        assert torch.equal(rewired(video), model(video))  # … until wired back: exactly the same


def test_window_attention_backward_matches_gradcheck(monkeypatch):
    """The hand-written attention backward, with the shift mask and with several chunks per sample."""
    b, nw, heads, n, hd = 2, 3, 2, 8, 2
    monkeypatch.setattr(attention, "_CHUNK_BYTES", 2 * heads * n * n * 8)  # two windows per chunk: 2 chunks per sample
    qkv = torch.randn(b, nw, n, 3 * heads * hd, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(heads, n, n, dtype=torch.float64, requires_grad=True)
    regions = attention._region_ids((4, 4, 6), (2, 2, 2), (1, 1, 1))[:nw]
    assert regions.unique().numel() > 1  # the mask is not trivial
    for r in (regions, None):
        assert torch.autograd.gradcheck(lambda *t, r=r: attention.WindowAttention.apply(*t, r, heads, 0.5), (qkv, bias))


def test_window_attention_backward_in_float32_matches_float64_on_shifted_windows():
    """With the shift mask's −100 in the scores (whose exp the backward keeps from going subnormal), float32
    gradients are float64's to float32's precision."""
    heads, n, hd = 2, 8, 4
    regions = attention._region_ids((4, 4, 4), (2, 2, 2), (1, 1, 1))
    torch.manual_seed(0)
    qkv = torch.randn(1, regions.shape[0], n, 3 * heads * hd, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(heads, n, n, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, regions.shape[0], n, heads * hd, dtype=torch.float64)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        inputs = [t.detach().to(dtype).requires_grad_() for t in (qkv, bias)]
        attention.WindowAttention.apply(*inputs, regions, heads, 0.5).backward(g.to(dtype))
        grads[dtype] = [t.grad.double() for t in inputs]
    for low, high in zip(grads[torch.float32], grads[torch.float64], strict=True):
        torch.testing.assert_close(low, high, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_exp_stays_normal_on_cpu(dtype):
    """Scores far below their row's maximum (the shift mask's) give the smallest normal number's neighbour, not a
    subnormal; the others their exact exp."""
    scores = torch.tensor([0.0, -1.0, -50.0, -87.0, -100.0, -300.0], dtype=dtype)
    out = attention._exp_(scores.clone())
    assert out.float().min() >= torch.finfo(torch.float32).tiny
    torch.testing.assert_close(out[:4], scores[:4].exp())
    assert torch.equal(out[4:], torch.tensor(-87.0, dtype=dtype).exp().expand(2))


def test_softmax_exp_in_float64_is_exact():
    scores = torch.tensor([0.0, -100.0, -300.0], dtype=torch.float64)
    assert torch.equal(attention._exp_(scores.clone()), scores.exp())


def test_attention_chunks_are_every_one_unless_a_shape_only_run_asks_for_the_first(monkeypatch):
    """A real run takes every chunk of every sample; memprofile's fake run (its hook) only the first (the largest)."""
    monkeypatch.setattr(attention, "_CHUNK_BYTES", 5 * 100)  # 5 windows of 100 B: 18 windows are 5 + 5 + 5 + 3
    every = [(i, w0, min(w0 + 5, 18)) for i in range(3) for w0 in (0, 5, 10, 15)]
    assert list(attention._chunks(torch.empty(3, 18, 1, 3), 100)) == every
    monkeypatch.setattr(attention, "chunk_plan", attention.first_chunk)
    assert list(attention._chunks(torch.empty(3, 18, 1, 3), 100)) == [(0, 0, 5)]


# --- API ---------------------------------------------------------------------------------------------------------


def test_registered_archs_and_input_spec():
    for name in ("swin3d-t", "swin3d-s", "swin3d-b"):
        arch = get_arch(name)
        assert arch.family == "swin3d" and not arch.test_only
        assert (arch.input.num_frames, arch.input.image_size, arch.input.frame_stride) == (32, 224, 2)
        assert arch.input.mean == IMAGENET_MEAN and arch.input.std == IMAGENET_STD
    assert get_arch("swin3d-tiny").test_only and get_arch("swin3d-tiny-d3").test_only
    assert get_arch("swin3d-tiny-d3").create().cfg.depths == (3, 1)


def test_feature_maps_and_temporal_features_shapes():
    model = create_model("swin3d-tiny").eval()
    assert (model.out_channels, model.temporal_stride, model.min_frames) == (32, 2, 2)
    video = torch.randn(2, 3, 8, 36, 44)
    with torch.no_grad():
        maps, pooled = model.feature_maps(video), model(video)
        assert maps.shape == (2, 32, 4, 5, 6)  # 36×44 → 9×11 tokens → 5×6 after the (padded) patch merging
        assert model.temporal_features(video).shape == (2, 32, 4)
        assert pooled.shape == (2, 32) and torch.allclose(pooled, maps.mean(dim=(2, 3, 4)), atol=1e-6)
    with pytest.raises(BadInputError, match="multiple of 2"):
        model(torch.randn(1, 3, 5, 32, 32))


def test_build_overrides():
    model = create_model("swin3d-tiny", num_classes=7, drop_path=0.2)
    assert model.head.out_features == 7
    rates = [b.mlp.drop_path.drop_prob for layer in model.layers for b in layer.blocks]
    assert rates == pytest.approx([0.0, 0.2 / 3, 0.4 / 3, 0.2])  # linear over all blocks, as both references
    assert create_model("swin3d-tiny").head is None
    model, _ = build_from_state_dict(get_arch("swin3d-tiny"), model.state_dict(), "mem")  # head size from the file
    assert model.head.out_features == 7


@pytest.mark.usefixtures("pieces_at_any_size")
@pytest.mark.parametrize("window, frames", [((4, 4, 4), 390), ((8, 4, 4), 778), ((3, 4, 4), 298)])
def test_window_attention_recomputed_in_pieces_of_windows_exactly(window, frames, monkeypatch):
    """Long clips (token depth D not a multiple of the window, shifted and unshifted blocks): attention is
    recomputed a piece of whole windows at a time, with the halos its shift and padding need, and the gradients
    equal autograd's."""
    from re2tal_cli.reversible import pieces, stage

    split = []
    original = pieces.time_pieces

    def time_pieces(length, locality, count=pieces.PIECES):
        result = original(length, locality, count)
        split.append((locality.halo, len(result)))
        return result

    monkeypatch.setattr(stage, "time_pieces", time_pieces)
    cfg = swin.Swin3dConfig(embed_dim=8, depths=(2, 2), heads=(1, 2), window=window, drop_path=0.2)
    model = swin.SwinTransformer3d(cfg).double()
    video = torch.randn(1, 3, frames, 16, 16, dtype=torch.float64)
    report = check_reversibility(model, video, Coupling(0.0, 1.0))
    # pieces change the matrix products' shapes: with one thread their last bits may differ (1.7e-17 seen)
    assert report.gradient_error_level < 1e-10 and report.output_error < 1e-12 and report.fallbacks == 0, report
    assert {(2 * window[0], 4), (0, 4)} <= set(split)  # shifted and unshifted attention blocks both in pieces
