import math

import pytest
import torch

from re2tal_cli.errors import BadInputError, BadRecipeError
from re2tal_cli.localizers import GTAD, GTADConfig, pad_features
from re2tal_cli.localizers.gtad import (
    GCNeXt,
    anchor_mask,
    anchor_segments,
    balanced_bce,
    balanced_l2,
    sub_graph_align,
)
from re2tal_cli.localizers.postprocess import segment_iou
from re2tal_cli.train.recipe import load_recipe


def tiny_gtad(**changes) -> GTADConfig:
    """16 channels, 8 anchor samples: a forward of a few ms on one thread."""
    fields = dict(hidden_dim=16, block_width=8, block_groups=4, inner_samples=6, context_samples=2, map_dim=16,
                  map_hidden_dim=16, max_seq_len=16)  # fmt: skip
    fields.update(changes)
    return GTADConfig(**fields)


def _interpolate(x: torch.Tensor, position: float) -> torch.Tensor:
    """Linear interpolation of x (C, T) at `position`, the sequence extended by zeros."""
    return sum(max(0.0, 1.0 - abs(position - j)) * x[:, j] for j in range(x.shape[1]))


@pytest.mark.parametrize(("samples", "extension"), [(4, 0.5), (3, 0.25), (32, 0.5)])
def test_sgalign_matches_a_loop_over_anchors_bins_and_points(samples, extension):
    torch.manual_seed(0)
    feats = torch.randn(2, 3, 9, dtype=torch.float64)
    duration = 6
    aligned = sub_graph_align(feats, duration, samples, extension)
    assert aligned.shape == (2, 3 * samples, duration, 9)
    for b in range(2):
        for d in range(1, duration + 1):
            for s in range(9):
                first, length = s - 0.5 - extension * d, d * (1 + 2 * extension)
                size = length / samples
                points = math.ceil(size)
                for k in range(samples):
                    values = [_interpolate(feats[b], first + k * size + (i + 0.5) * size / points)
                              for i in range(points)]  # fmt: skip
                    expected = sum(values) / points
                    got = aligned[b, [c * samples + k for c in range(3)], d - 1, s]
                    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def _dense_grouped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped 1×1 conv's weight (O, I / groups, 1, 1) as the dense (O, I) matrix it applies."""
    out_channels, per_group = weight.shape[:2]
    dense = torch.zeros(out_channels, per_group * groups, dtype=weight.dtype)
    rows = out_channels // groups
    for g in range(groups):
        block = slice(g * rows, (g + 1) * rows)
        dense[block, g * per_group : (g + 1) * per_group] = weight[block, :, 0, 0]
    return dense


def test_semantic_branch_matches_a_dense_reference():
    """Each valid step: its k nearest valid steps by sorting all distances, the edge MLP as matrices on
    concat(neighbour, step), the max over the k."""
    torch.manual_seed(0)
    block = GCNeXt(channels=6, width=8, groups=2, k=3).double()
    x = torch.randn(1, 6, 10, dtype=torch.float64)
    mask = torch.arange(10)[None] < 7
    got = block.semantic_branch(x, mask)
    first, middle, last = block.semantic[0], block.semantic[2], block.semantic[4]
    w1, w2, w3 = first.weight[:, :, 0, 0], _dense_grouped(middle.weight, 2), last.weight[:, :, 0, 0]
    for t in range(7):
        distance = torch.tensor([float(((x[0, :, j] - x[0, :, t]) ** 2).sum()) for j in range(7)])
        nearest = distance.argsort()[:3].tolist()
        assert nearest[0] == t
        edges = []
        for j in nearest:
            h = torch.relu(w1 @ torch.cat((x[0, :, j], x[0, :, t])) + first.bias)
            h = torch.relu(w2 @ h + middle.bias)
            edges.append(w3 @ h + last.bias)
        torch.testing.assert_close(got[0, :, t], torch.stack(edges).amax(dim=0), rtol=0, atol=1e-10)


def test_anchors_are_whole_steps_and_valid_where_their_steps_are():
    segments = anchor_segments(3, 4)
    assert segments.shape == (3, 4, 2)
    assert segments[0, 0].tolist() == [-0.5, 0.5] and segments[2, 1].tolist() == [0.5, 3.5]
    assert int(anchor_mask(torch.ones(1, 100, dtype=torch.bool), 100).sum()) == 5050  # the release's T = D = 100
    mask = torch.tensor([[True] * 5 + [False] * 2, [True] * 7])
    found = anchor_mask(mask, 3)
    for b, length in enumerate((5, 7)):
        for d in range(1, 4):
            for s in range(7):
                assert bool(found[b, d - 1, s]) == (s + d <= length), (b, d, s)
    holey = anchor_mask(torch.tensor([[True, True, False, True, True]]), 2)
    assert holey[0].tolist() == [[True, True, False, True, True], [True, False, False, True, False]]


def test_targets_by_hand():
    model = GTAD(8, 3, tiny_gtad(max_seq_len=8))
    out = model(*pad_features([torch.randn(8, 8)], 1))
    start, end, iou, classes = model.targets(out, [torch.tensor([[1.5, 4.5]])], [torch.tensor([2])])
    # starts at left edges t - 0.5 within 1.5 of 1.5: t = 1, 2, 3; ends at right edges t + 0.5 near 4.5: t = 3, 4, 5
    assert start[0].tolist() == [0, 1, 1, 1, 0, 0, 0, 0] and end[0].tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    assert iou.shape == (1, 8, 8) and classes.shape == (1, 8, 8)
    assert iou[0, 2, 2] == pytest.approx(1.0) and iou[0, 1, 2] == pytest.approx(2 / 3, abs=1e-5)
    assert iou[0, 0, 6] == 0 and classes[0, 2, 2] == 2 and classes[0, 0, 6] == -1
    assert classes[0, 1, 2] == 2  # IoU 2/3 ≥ 0.5
    assert classes[0, 0, 2] == -1  # IoU 1/3
    empty = model.targets(out, [torch.zeros(0, 2)], [torch.zeros(0, dtype=torch.long)])
    assert all(t.shape == u.shape for t, u in zip(empty, (start, end, iou, classes), strict=True))
    assert empty[0].sum() == 0 and empty[2].sum() == 0 and (empty[3] == -1).all()


def test_balanced_bce_by_hand():
    logits = torch.tensor([0.0, math.log(3), -math.log(3), 2.0])
    positive = torch.tensor([True, True, False, False])
    valid = torch.tensor([True, True, True, False])
    # positives: -log σ(0) = log 2, -log σ(log 3) = log 4/3; the valid negative: -log(1 - σ(-log 3)) = log 4/3
    expected = 0.5 * (math.log(2) + math.log(4 / 3)) / 2 + 0.5 * math.log(4 / 3)
    assert float(balanced_bce(logits, positive, valid)) == pytest.approx(expected, rel=1e-6)
    # the release's form on probabilities: -(mean of coef_1·log p·pos + coef_0·log(1-p)·neg) over the N entries
    p, n, pos = logits[:3].sigmoid(), 3, 2
    coef_1, coef_0 = 0.5 * n / pos, 0.5 * n / (n - pos)
    release = -(coef_1 * p.log() * positive[:3] + coef_0 * (1 - p).log() * ~positive[:3]).mean()
    assert float(balanced_bce(logits, positive, valid)) == pytest.approx(float(release), rel=1e-6)
    # no positives: only the negatives' half, no division by zero
    no_positive = balanced_bce(logits, torch.zeros(4, dtype=torch.bool), valid)
    assert float(no_positive) == pytest.approx(0.5 * (math.log(2) + math.log(4) + math.log(4 / 3)) / 3, rel=1e-6)


def test_balanced_l2_by_hand():
    target = torch.tensor([0.8, 0.5, 0.6, 0.2, 0.0, 0.9])
    prediction = torch.tensor([0.5, 0.5, 0.1, 0.4, 0.7, 0.0])
    valid = torch.tensor([True, True, True, True, True, False])
    uniform = torch.tensor([0.9, 0.7, 0.2, 0.3, 0.99, 0.99])
    # high: {0}; medium {1, 2} kept with probability 1/2: uniform > 0.5 keeps 1; low {3} with probability 1: kept;
    # IoU 0 (4) and the invalid anchor (5) never enter
    expected = 0.5 * ((0.8 - 0.5) ** 2 + 0.0 + (0.2 - 0.4) ** 2) / 3
    assert float(balanced_l2(prediction, target, valid, uniform)) == pytest.approx(expected, rel=1e-6)
    assert float(balanced_l2(prediction, torch.zeros(6), valid, uniform)) == 0.0


def test_loss_is_the_weighted_sum_of_its_parts_and_every_parameter_learns():
    torch.manual_seed(0)
    model = GTAD(8, 3, tiny_gtad())
    out = model(*pad_features([torch.randn(8, 16), torch.randn(8, 11)], 1))
    segments, labels = [torch.tensor([[2.5, 9.5]]), torch.tensor([[0.5, 3.5], [5.5, 10.5]])], [
        torch.tensor([1]), torch.tensor([0, 2])]  # fmt: skip
    losses = model.loss(out, segments, labels)
    assert set(losses) == {"loss", "boundary_loss", "iou_reg_loss", "iou_cls_loss", "class_loss"}
    total = losses["boundary_loss"] + 10 * losses["iou_reg_loss"] + losses["iou_cls_loss"] + losses["class_loss"]
    torch.testing.assert_close(losses["loss"], total)
    losses["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    agnostic = GTAD(8, 1, tiny_gtad())
    out = agnostic(*pad_features([torch.randn(8, 16)], 1))
    assert out.class_logits is None
    assert "class_loss" not in agnostic.loss(out, segments[:1], [torch.tensor([0])])


def test_window_without_actions_has_a_finite_loss():
    model = GTAD(8, 3, tiny_gtad())
    out = model(*pad_features([torch.randn(8, 16)], 1))
    losses = model.loss(out, [torch.zeros(0, 2)], [torch.zeros(0, dtype=torch.long)])
    assert losses["iou_reg_loss"] == 0 and losses["class_loss"] == 0
    assert torch.isfinite(losses["loss"]) and losses["boundary_loss"] > 0
    losses["loss"].backward()


def test_padding_at_the_end_changes_no_valid_output():
    torch.manual_seed(0)
    model = GTAD(8, 3, tiny_gtad(max_seq_len=10)).eval()
    feats = torch.randn(1, 8, 13)
    out = model(feats, torch.ones(1, 13, dtype=torch.bool))
    padded = torch.cat((feats, 100 * torch.randn(1, 8, 7)), dim=2)
    out_padded = model(padded, torch.arange(20)[None] < 13)
    valid = anchor_mask(torch.ones(1, 13, dtype=torch.bool), 10)[0]
    assert out.iou_logits.shape[2] == out_padded.iou_logits.shape[2] == 10
    torch.testing.assert_close(out_padded.start_logits[:, :13], out.start_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out_padded.end_logits[:, :13], out.end_logits, rtol=0, atol=1e-5)
    for a, b in ((out.iou_logits, out_padded.iou_logits), (out.class_logits, out_padded.class_logits)):
        torch.testing.assert_close(b[..., :13][..., valid], a[..., valid], rtol=0, atol=1e-5)
    found, found_padded = model.predict(out)[0], model.predict(out_padded)[0]
    torch.testing.assert_close(found_padded.segments, found.segments)
    torch.testing.assert_close(found_padded.scores, found.scores, rtol=1e-4, atol=1e-6)


def test_predict_returns_sorted_detections_inside_the_video():
    torch.manual_seed(0)
    for fusion in ("filter", "product"):
        model = GTAD(8, 3, tiny_gtad(score_fusion=fusion)).eval()
        detections = model.predict(model(*pad_features([torch.randn(8, 16), torch.randn(8, 9)], 1)), max_segments=7)
        for det, length in zip(detections, (16, 9), strict=True):
            assert 0 < len(det.scores) <= 7 and det.segments.shape == (len(det.scores), 2)
            assert (det.scores[:-1] >= det.scores[1:]).all() and ((det.labels >= 0) & (det.labels < 3)).all()
            assert det.segments.min() >= -0.5 and det.segments.max() <= length - 0.5
            lengths = det.segments[:, 1] - det.segments[:, 0]
            assert torch.equal(lengths, lengths.round()) and (lengths >= 1).all()


def test_overfits_a_tiny_set():
    """Three sequences, one action each: the loss drops and each sequence's best detection is its action."""
    torch.manual_seed(0)
    model = GTAD(8, 2, tiny_gtad(max_seq_len=24))
    feats, mask = pad_features([torch.randn(8, 24), torch.randn(8, 24), torch.randn(8, 18)], 1)
    segments = [torch.tensor([[3.5, 11.5]]), torch.tensor([[13.5, 20.5]]), torch.tensor([[-0.5, 5.5]])]
    labels = [torch.tensor([0]), torch.tensor([1]), torch.tensor([1])]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = model.loss(model(feats, mask), segments, labels)["loss"]
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.3 * first
    model.eval()
    for det, truth, label in zip(model.predict(model(feats, mask)), segments, labels, strict=True):
        assert float(segment_iou(det.segments[:1], truth)) > 0.7 and det.labels[0] == label


def test_loss_from_targets_runs_on_fake_tensors_as_memprofile_runs_it():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from re2tal_cli.memory.head_loss import LocalizerLoss

    model = GTAD(8, 3, tiny_gtad())
    feats, mask = pad_features([torch.randn(8, 16), torch.randn(8, 12)], 1)
    segments = [torch.tensor([[2.0, 9.0], [10.0, 14.0]]), torch.zeros(0, 2)]
    labels = [torch.tensor([0, 2]), torch.zeros(0, dtype=torch.long)]
    out = model(feats, mask)
    targets = model.targets(out, segments, labels)
    torch.manual_seed(1)
    direct = model.loss(out, segments, labels)["loss"]
    torch.manual_seed(1)
    assert torch.equal(direct, model.loss_from_targets(out, *targets)["loss"])
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_model = GTAD(8, 3, tiny_gtad())
        fake_out = fake_model(mode.from_tensor(feats), mode.from_tensor(mask))
        losses = fake_model.loss_from_targets(fake_out, *(mode.from_tensor(t) for t in targets))
        losses["loss"].backward()
        assert losses["loss"].shape == () and all(p.grad is not None for p in fake_model.parameters())
        head = LocalizerLoss("gtad", 32)  # the default configuration, 20 classes, as `memprofile --head gtad`
        loss = head(torch.randn(2, 32, 12))
        loss.backward()
    assert loss.shape == () and all(p.grad is not None for p in head.parameters())


def test_default_config_is_the_releases_activitynet_one():
    config = GTADConfig()
    assert (config.hidden_dim, config.k, config.block_width, config.block_groups) == (256, 3, 128, 32)
    assert (config.inner_samples, config.context_samples, config.anchor_extension) == (32, 4, 0.5)
    assert (config.map_dim, config.map_hidden_dim, config.max_seq_len, config.duration) == (512, 128, 100, 100)
    post = config.postprocess
    assert (post.nms_method.value, post.sigma, post.max_segments) == ("soft", 0.8, 100)
    # the release's layers on 400-d features (its ActivityNet input), counted by hand: input conv, 4 GCNeXt blocks
    # (temporal 1×1, grouped k3, 1×1; semantic 1×1 on 2C, grouped 1×1, 1×1), 2 boundary outputs, the map's 1×1 convs
    block = (256 * 128 + 128) + (4 * 128 * 3 + 128) + (128 * 256 + 256)
    block += (512 * 128 + 128) + (4 * 128 + 128) + (128 * 256 + 256)
    anchor_map = (256 * 36 * 512 + 512) + (512 * 128 + 128) + 2 * (128 * 128 + 128) + (128 * 2 + 2)
    expected = (100 * 256 * 3 + 256) + 4 * block + 2 * 257 + anchor_map
    assert sum(p.numel() for p in GTAD(400, 1).parameters()) == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(block_width=100), "divisible by block_groups"),
        (dict(k=0), "k must be an integer ≥ 1"),
        (dict(score_fusion="sum"), "score_fusion must be one of filter, product"),
        (dict(max_duration=0), "max_duration"),
        (dict(anchor_extension=-1.0), "anchor_extension"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(BadInputError, match=message):
        GTADConfig(**changes)


def test_input_must_divide_into_the_input_groups():
    with pytest.raises(BadInputError, match="in_channels 6 must be divisible"):
        GTAD(6, 1)


def test_recipes_configure_gtad_with_overrides_validated():
    recipe = load_recipe("synthetic-gtad", sets=["model.gtad.k=5", "model.gtad.postprocess.sigma=0.5"])
    assert recipe.model.localizer == "gtad" and recipe.model.gtad.k == 5 and recipe.model.gtad.postprocess.sigma == 0.5
    with pytest.raises(BadRecipeError, match="recipe section model.gtad: block_width"):
        load_recipe("synthetic-gtad", sets=["model.gtad.block_width=7"])
    with pytest.raises(BadRecipeError, match="model.gtad.kk"):
        load_recipe("synthetic-gtad", sets=["model.gtad.kk=5"])
    anet = load_recipe("gtad-anet-tsp")
    assert (anet.data.resample_to, anet.model.gtad.max_seq_len, anet.data.class_agnostic) == (100, 100, True)
    assert (anet.train.optimizer.value, anet.train.lr, anet.train.weight_decay) == ("adam", 4e-3, 1e-4)
    assert (anet.train.batch_size, anet.train.epochs, anet.data.crop_ratio) == (16, 10, None)
