import math

import pytest
import torch

from re2tal_cli.errors import BadInputError, UnknownNameError
from re2tal_cli.localizers import ActionFormer, ActionFormerConfig, pad_features
from tests.localizers.helpers import tiny_config


def _batch(lengths, channels=8):
    return pad_features([torch.randn(channels, t) for t in lengths], multiple=4)


@pytest.mark.parametrize("length", [4, 12, 64, 100])
def test_shapes_per_level(tiny, length):
    model = ActionFormer(8, 3, tiny)
    feats, mask = _batch([length, max(1, length // 2)])
    out = model(feats, mask)
    t = feats.shape[2]
    assert t % 4 == 0 and t >= length
    for level, stride in enumerate((1, 2, 4)):
        assert out.cls_logits[level].shape == (2, t // stride, 3)
        assert out.offsets[level].shape == (2, t // stride, 2)
        assert out.masks[level].shape == (2, t // stride)
        assert out.points[level].shape == (t // stride, 4)
        assert torch.equal(out.points[level][:, 0], torch.arange(t // stride) * float(stride))
        assert (out.points[level][:, 3] == stride).all()
        assert (out.offsets[level] >= 0).all()
        # a level-l step is valid when input step i·2^l is
        assert torch.equal(out.masks[level], mask[:, ::stride])


def test_default_config_is_the_thumos_one():
    config = ActionFormerConfig()
    assert (config.embed_dim, config.num_heads, config.window_size) == (512, 4, 19)
    assert (config.num_embed_convs, config.num_stem_blocks, config.num_branch_blocks) == (2, 2, 5)
    assert config.num_levels == 6 and config.downsample_factor == 32 and config.max_seq_len == 2304
    assert config.regression_ranges[0] == (0, 4) and config.regression_ranges[-1] == (64, math.inf)
    assert (config.center_sample_radius, config.path_drop, config.head_kernel_size) == (1.5, 0.1, 3)
    model = ActionFormer(512, 20)
    assert sum(p.numel() for p in model.parameters()) == 26_892_316


def test_every_parameter_gets_a_gradient(tiny):
    model = ActionFormer(8, 3, tiny_config(layer_scale_init=1e-4))
    feats, mask = _batch([40, 25])
    out = model(feats, mask)
    losses = model.loss(
        out,
        [torch.tensor([[3.0, 9.0], [20.0, 37.0]]), torch.tensor([[1.0, 2.5]])],
        [
            torch.tensor([0, 2]),
            torch.tensor([1]),
        ],
    )
    losses["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_window_without_actions(tiny):
    model = ActionFormer(8, 3, tiny)
    feats, mask = _batch([32, 32])
    out = model(feats, mask)
    empty = torch.zeros(0, 2)
    losses = model.loss(out, [empty, empty], [torch.zeros(0, dtype=torch.long)] * 2)
    assert losses["num_positives"] == 0 and losses["reg_loss"] == 0
    assert losses["cls_loss"] > 0 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert model.cls_head.output.bias.grad.abs().sum() > 0


def test_loss_normalizer_is_an_ema_of_positives_in_training_only(tiny):
    model = ActionFormer(8, 3, tiny_config(init_loss_normalizer=100.0))
    feats, mask = _batch([32])
    out = model(feats, mask)
    segments, labels = [torch.tensor([[4.0, 12.0]])], [torch.tensor([1])]
    first = model.loss(out, segments, labels)
    positives = float(first["num_positives"])
    assert positives > 0
    assert model.loss_normalizer.item() == pytest.approx(0.9 * 100 + 0.1 * positives)
    model.eval()
    model.loss(out, segments, labels)
    assert model.loss_normalizer.item() == pytest.approx(0.9 * 100 + 0.1 * positives)
    model.train()
    model.loss(out, [torch.zeros(0, 2)], [torch.zeros(0, dtype=torch.long)])  # max(positives, 1)
    assert model.loss_normalizer.item() == pytest.approx(0.9 * (0.9 * 100 + 0.1 * positives) + 0.1)


def test_valid_steps_ignore_padding(tiny):
    """Outputs at valid steps are the same whether the sequence is padded or not (and whatever the padding holds)."""
    model = ActionFormer(8, 3, tiny_config(window_size=(5, 3, -1))).eval()
    feats = torch.randn(1, 8, 24)
    out = model(feats, torch.ones(1, 24, dtype=torch.bool))
    padded = torch.cat((feats, 100 * torch.randn(1, 8, 16)), dim=2)
    out_padded = model(padded, torch.arange(40)[None] < 24)
    for level in range(3):
        valid = out.masks[level].shape[1]
        for a, b in ((out.cls_logits, out_padded.cls_logits), (out.offsets, out_padded.offsets)):
            torch.testing.assert_close(b[level][:, :valid], a[level], rtol=0, atol=1e-6)


def test_predict_returns_sorted_detections_in_feature_steps(tiny):
    model = ActionFormer(8, 3, tiny).eval()
    feats, mask = _batch([40, 13])
    detections = model.predict(model(feats, mask), max_segments=7)
    assert len(detections) == 2
    for det in detections:
        assert det.segments.shape[1] == 2 and len(det.segments) == len(det.scores) == len(det.labels) <= 7
        assert (det.scores[:-1] >= det.scores[1:]).all()
        assert ((det.labels >= 0) & (det.labels < 3)).all()


def test_predict_rejects_unknown_overrides(tiny):
    model = ActionFormer(8, 3, tiny).eval()
    out = model(*_batch([8]))
    with pytest.raises(UnknownNameError, match="max_segments"):
        model.predict(out, max_segment=3)
    with pytest.raises(BadInputError, match="nms_method"):
        model.predict(out, nms_method="softer")


def test_pad_features():
    feats, mask = pad_features([torch.ones(3, 5), torch.ones(3, 9)], multiple=4)
    assert feats.shape == (2, 3, 12) and mask.sum(1).tolist() == [5, 9]
    assert feats[0, :, 5:].abs().sum() == 0 and feats[0, :, :5].eq(1).all()
    feats, mask = pad_features([torch.ones(3, 5)], multiple=32, max_length=64)
    assert feats.shape == (1, 3, 64)
    with pytest.raises(BadInputError, match="max_length"):
        pad_features([torch.ones(3, 70)], multiple=32, max_length=64)
    with pytest.raises(BadInputError):
        pad_features([torch.ones(3, 5), torch.ones(4, 5)], multiple=4)


def test_forward_rejects_bad_input(tiny):
    model = ActionFormer(8, 3, tiny)
    with pytest.raises(BadInputError, match="multiple of 4"):
        model(torch.randn(1, 8, 10), torch.ones(1, 10, dtype=torch.bool))
    with pytest.raises(BadInputError, match=r"\(B, 8, T\)"):
        model(torch.randn(1, 7, 12), torch.ones(1, 12, dtype=torch.bool))
    with pytest.raises(BadInputError, match="bool mask"):
        model(torch.randn(1, 8, 12), torch.ones(1, 12))


def test_loss_rejects_bad_targets(tiny):
    model = ActionFormer(8, 3, tiny)
    out = model(*_batch([12]))
    with pytest.raises(BadInputError, match=r"labels must be in \[0, 3\), got \[3\]"):
        model.loss(out, [torch.tensor([[1.0, 4.0]])], [torch.tensor([3])])
    with pytest.raises(BadInputError, match="start ≤ end"):
        model.loss(out, [torch.tensor([[4.0, 1.0]])], [torch.tensor([0])])
    with pytest.raises(BadInputError, match="integer class"):
        model.loss(out, [torch.tensor([[1.0, 4.0]])], [torch.tensor([0.0])])
    with pytest.raises(BadInputError, match="batch of 1"):
        model.loss(out, [], [])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(embed_dim=30, num_heads=4), "divisible by num_heads"),
        (dict(window_size=4), "odd"),
        (dict(window_size=(5, 5)), "3 levels"),
        (dict(regression_ranges=((0, 4), (4, 8))), "3 levels"),
        (dict(regression_ranges=((0, 4), (8, 4), (8, 16))), "low < high"),
        (dict(max_seq_len=66), "divisible by downsample_factor 4"),
        (dict(path_drop=1.0), r"path_drop must be in \[0, 1\)"),
        (dict(cls_prior_prob=0.0), "cls_prior_prob"),
        (dict(center_sample_radius=0), "center_sample_radius"),
        (dict(num_heads=True), "num_heads"),
        (dict(head_kernel_size=2), "odd"),
        (dict(reg_loss_weight=-1.0), "reg_loss_weight"),
        (dict(postprocess=dict(sigma=0)), "sigma"),
        (dict(postprocess=dict(max_segments=0)), "max_segments"),
    ],
)
def test_bad_config_raises(changes, message):
    with pytest.raises(BadInputError, match=message):
        tiny_config(**changes)


def test_runs_under_bf16_autocast(tiny):
    model = ActionFormer(8, 3, tiny)
    feats, mask = _batch([32, 20])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(feats, mask)
        losses = model.loss(
            out,
            [torch.tensor([[3.0, 9.0]]), torch.zeros(0, 2)],
            [
                torch.tensor([1]),
                torch.zeros(0, dtype=torch.long),
            ],
        )
    assert out.cls_logits[0].dtype == torch.bfloat16 and losses["loss"].dtype == torch.float32
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert len(model.eval().predict(out)) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(tiny):
    model = ActionFormer(8, 3, tiny).eval()
    feats, mask = _batch([40, 17])
    out = model(feats, mask)
    out_cuda = model.cuda()(feats.cuda(), mask.cuda())
    for a, b in zip(out.cls_logits + out.offsets, out_cuda.cls_logits + out_cuda.offsets, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)
    segments = [torch.tensor([[3.0, 9.0]]), torch.tensor([[1.0, 12.0]])]
    labels = [torch.tensor([1]), torch.tensor([2])]
    loss_cpu = model.cpu().loss(out, segments, labels)["loss"]
    loss_cuda = model.cuda().loss(out_cuda, segments, labels)["loss"]
    torch.testing.assert_close(loss_cuda.cpu(), loss_cpu, rtol=1e-4, atol=1e-5)
    for det, det_cuda in zip(model.predict(out), model.predict(out_cuda), strict=True):
        torch.testing.assert_close(det_cuda.scores.cpu(), det.scores, rtol=1e-3, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_bf16 = model(feats.cuda(), mask.cuda())
        model.train().loss(out_bf16, segments, labels)["loss"].backward()


def test_absolute_position_embedding():
    from re2tal_cli.localizers.encoder import sinusoidal_embedding

    table = sinusoidal_embedding(5, 4)
    t = torch.arange(5.0)
    torch.testing.assert_close(table, torch.stack((t.sin(), t.cos(), (t / 100).sin(), (t / 100).cos())))
    model = ActionFormer(8, 3, tiny_config(abs_position_embedding=True, max_seq_len=16)).eval()
    constant = torch.ones(1, 8, 16)
    logits = model(constant, torch.ones(1, 16, dtype=torch.bool)).cls_logits[0]
    assert not torch.allclose(logits[0, 7], logits[0, 8])  # position now matters (both are far from the ends)
    longer = model(torch.ones(1, 8, 32), torch.ones(1, 32, dtype=torch.bool))  # > max_seq_len: stretched table
    assert longer.cls_logits[0].shape == (1, 32, 3)


def test_loss_from_targets_runs_on_fake_tensors_with_the_same_shapes(tiny):
    """The loss after assignment has fixed shapes (no boolean indexing): it runs under FakeTensorMode, as memprofile
    runs it, and agrees with `loss` on real tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = ActionFormer(8, 3, tiny)
    feats, mask = _batch([32, 20])
    segments = [torch.tensor([[2.0, 9.0], [12.0, 30.0]]), torch.zeros(0, 2)]
    labels = [torch.tensor([0, 2]), torch.zeros(0, dtype=torch.long)]
    out = model(feats, mask)
    targets = model.targets(out, segments, labels)
    model.eval()  # the normaliser stays put, so both calls divide by the same value
    assert torch.equal(model.loss(out, segments, labels)["loss"], model.loss_from_targets(out, *targets)["loss"])
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_model = ActionFormer(8, 3, tiny)
        fake_out = fake_model(mode.from_tensor(feats), mode.from_tensor(mask))
        losses = fake_model.loss_from_targets(fake_out, *(mode.from_tensor(t) for t in targets))
        losses["loss"].backward()
    assert losses["loss"].shape == () and all(p.grad is not None for p in fake_model.parameters())
