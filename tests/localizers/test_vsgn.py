"""VSGN: the graph conv against a dense reference, anchors, self-stitching, losses on hand-computed cases, padding
invariance, fake-tensor losses, and a tiny model that overfits."""

import math

import pytest
import torch

from re2tal_cli.errors import BadInputError
from re2tal_cli.localizers import VSGN, VSGNConfig, VSGNOutput, create_localizer
from re2tal_cli.localizers.postprocess import segment_iou
from re2tal_cli.localizers.vsgn import (
    EdgeGraphConv,
    balanced_bce_loss,
    boundary_targets,
    cross_scale_neighbours,
    decode_offsets,
    giou_loss_1d,
    make_anchors,
    match_segments,
)
from re2tal_cli.localizers.vsgn_stitch import Stitch, magnified_part, plan_stitch, stitch_sequence


def tiny_vsgn(**changes) -> VSGNConfig:
    """Strides 2, 4, 8 (stem stride 1), 16 channels, k = 4: fast on one thread."""
    fields = dict(
        embed_dim=16,
        stem_stride=1,
        num_levels=3,
        num_neighbours=4,
        head_num_layers=2,
        head_groups=4,
        anchor_scales=(1.0, 2.0),
        max_seq_len=64,
        stitch_gap=4,
    )
    fields.update(changes)
    return VSGNConfig(**fields)


# --- the graph convolution ------------------------------------------------------------------------------------


def _dense_edge_conv(x, linear, mask, part, k):
    """Reference: every pair's distance by a loop, neighbours chosen per step by sorting (its own part, then the
    other part's nearest when the window is stitched), Linear on the explicit concatenation, max."""
    batch, dim, length = x.shape
    out = torch.zeros(batch, linear.out_features, length)
    for b in range(batch):
        stitched = bool(part[b].any())
        for t in range(length):
            if not mask[b, t]:
                continue
            distance = torch.tensor([float(((x[b, :, t] - x[b, :, s]) ** 2).sum()) for s in range(length)])
            distance[t] = -1.0

            def nearest(candidates, count, t=t, distance=distance):
                chosen = sorted(candidates, key=lambda step: float(distance[step]))[:count]
                return chosen + [t] * (count - len(chosen))

            valid = [s for s in range(length) if mask[b, s]]
            if stitched:
                own = [s for s in valid if part[b, s] == part[b, t]]
                other = [s for s in valid if part[b, s] != part[b, t]]
                neighbours = nearest(own, k - k // 2) + nearest(other, k // 2)
            else:
                neighbours = nearest(valid, k)
            edges = torch.stack([torch.cat((x[b, :, j], x[b, :, t])) for j in neighbours])  # (k, 2D)
            out[b, :, t] = linear(edges).max(dim=0).values
    return out


@pytest.mark.parametrize("stitched", [False, True])
def test_graph_conv_matches_a_dense_reference(stitched):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 14)
    mask = torch.ones(2, 14, dtype=torch.bool)
    mask[1, 11:] = False
    if stitched:  # video 0: original 0..4, gap 5..6, copy 7..13; video 1 not stitched
        mask[0, 5:7] = False
    part = magnified_part(mask)
    assert part[0].any() == stitched and not part[1].any()
    conv = EdgeGraphConv(6)
    found = conv(x, cross_scale_neighbours(x, 4, mask, part))
    expected = _dense_edge_conv(x, conv.linear, mask, part, 4)
    assert torch.allclose(found * mask[:, None], expected, atol=1e-5)


# --- anchors, decoding, matching ------------------------------------------------------------------------------


def test_anchors_per_level_are_centred_on_the_steps_with_scaled_lengths():
    anchors = make_anchors([3, 2], (2, 4), (1.0, 1.5))
    expected = [
        [-1.0, 1.0], [-1.5, 1.5], [1.0, 3.0], [0.5, 3.5], [3.0, 5.0], [2.5, 5.5],  # stride 2, steps 0..2
        [-2.0, 2.0], [-3.0, 3.0], [2.0, 6.0], [1.0, 7.0],  # stride 4, steps 0..1
    ]  # fmt: skip
    assert anchors.tolist() == expected
    model = VSGN(4, 2, tiny_vsgn())
    out = model(torch.randn(1, 4, 64), torch.ones(1, 64, dtype=torch.bool))
    assert out.proposals.shape == (1, (32 + 16 + 8) * 2, 2)


def test_decoding_zero_offsets_gives_the_anchor_and_offsets_shift_and_scale():
    anchors = torch.tensor([[2.0, 6.0]])
    assert torch.allclose(decode_offsets(torch.zeros(1, 2), anchors), anchors)
    shifted = decode_offsets(torch.tensor([[10.0 * 0.25, 5.0 * math.log(2.0)]]), anchors)  # centre + 1, length × 2
    assert torch.allclose(shifted, torch.tensor([[1.0, 9.0]]))


def test_matching_takes_the_threshold_and_each_segments_best_candidate():
    candidates = torch.tensor([[[0.0, 10.0], [0.0, 4.0], [20.0, 24.0], [50.0, 52.0]]])
    segments = torch.tensor([[[0.0, 9.0], [30.0, 40.0], [0.0, 0.0]]])
    segment_valid = torch.tensor([[True, True, False]])
    positive, matched = match_segments(candidates, segments, segment_valid, torch.ones(1, 4, dtype=torch.bool), 0.5)
    # IoU 0.9 above the threshold; [0, 4] has IoU 4/9 with the first but is not its best; [20, 24] touches nothing,
    # yet segment 2 ([30, 40]) has no candidate with IoU > 0, so nothing is matched to it
    assert positive.tolist() == [[True, False, False, False]]
    assert matched[0, 0] == 0
    low = match_segments(
        candidates, torch.tensor([[[21.0, 30.0]]]), torch.tensor([[True]]), torch.ones(1, 4).bool(), 0.9
    )
    assert low[0].tolist() == [[False, False, True, False]]  # below 0.9 but the segment's best: a low-quality match


# --- losses ---------------------------------------------------------------------------------------------------


def test_giou_loss_by_hand():
    pred = torch.tensor([[0.0, 4.0], [0.0, 2.0], [6.0, 2.0]])
    target = torch.tensor([[2.0, 6.0], [4.0, 6.0], [2.0, 6.0]])
    # 1: IoU 2/6, enclosing 6 = union → 1 - 1/3; 2: IoU 0, enclosing 6, union 4 → 1 + 2/6; 3: reversed ends = equal
    assert torch.allclose(giou_loss_1d(pred, target), torch.tensor([2 / 3, 4 / 3, 0.0]), atol=1e-6)


def test_balanced_bce_weighs_positives_and_negatives_half_each():
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0, 5.0]])
    targets = torch.tensor([[0.9, 0.2, 0.0, 0.1, 0.7]])
    valid = torch.tensor([[True, True, True, True, False]])
    bce = [math.log(2), math.log(1 + math.e), math.log(1 + math.exp(-1)), math.log(1 + math.exp(2))]
    # one positive, three negatives among four valid: weights 0.5·4/1 and 0.5·4/3, mean over the four
    expected = (2.0 * bce[0] + (2 / 3) * (bce[1] + bce[2] + bce[3])) / 4
    assert math.isclose(float(balanced_bce_loss(logits, targets, valid, 0.5)), expected, rel_tol=1e-6)
    only_negative = balanced_bce_loss(logits, torch.zeros(1, 5), valid, 0.5)
    assert math.isclose(float(only_negative), sum(bce[1:] + [math.log(2)]) / 4, rel_tol=1e-6)


def test_boundary_targets_cover_cells_of_the_boundary_regions():
    targets = boundary_targets(torch.tensor([[[2.0, 5.5]]]), torch.tensor([[True]]), 8, width=3.0)
    start, end, action = targets[0].tolist()
    assert start == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # region [0.5, 3.5]
    assert end == [0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 0.5]  # region [4, 7]
    assert action == [0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0]  # [2, 5.5]: cell 2 half, cell 5 whole


def test_balanced_cross_entropy_by_hand():
    """One positive and the rest negatives: mean CE of the positives plus mean CE of the valid negatives."""
    model = VSGN(4, 2, tiny_vsgn(self_stitching=False))
    out = model(torch.randn(1, 4, 64), torch.ones(1, 64, dtype=torch.bool))
    out.cls_logits = torch.randn_like(out.cls_logits)
    targets = model.targets(out, [torch.tensor([[10.0, 20.0]])], [torch.tensor([1])])
    losses = model.loss_from_targets(out, *targets)
    cls_targets = targets[0][0]
    log_probs = out.cls_logits[0].log_softmax(-1)
    ce = [-float(log_probs[a, int(cls_targets[a])]) for a in range(len(cls_targets))]
    positives = [c for c, t in zip(ce, cls_targets.tolist(), strict=True) if t > 0]
    negatives = [c for c, t in zip(ce, cls_targets.tolist(), strict=True) if t == 0]
    assert positives and set(cls_targets[cls_targets > 0].tolist()) == {2}  # class 1 + background
    expected = sum(positives) / len(positives) + sum(negatives) / len(negatives)
    assert math.isclose(float(losses["cls_loss"]), expected, rel_tol=1e-5)


# --- self-stitching -------------------------------------------------------------------------------------------


def test_stitch_plan_only_for_short_windows():
    assert plan_stitch(40, 100, 0.4, 10) == Stitch(40, 50, 50)
    assert plan_stitch(41, 100, 0.4, 10) is None  # not short
    assert plan_stitch(40, 100, 0.4, 25) is None  # the copy (35) would be shorter than the original


def test_stitching_round_trip_maps_the_copy_back_to_the_original_times():
    stitch = plan_stitch(10, 64, 0.4, 4)
    times = torch.tensor([[-0.5, 9.5], [2.0, 5.5], [0.0, 9.0]])
    assert torch.allclose(stitch.to_stitched(times[:1]), torch.tensor([[13.5, 63.5]]))  # the copy spans its part
    assert torch.allclose(stitch.to_original(stitch.to_stitched(times)), times)
    ramp = torch.arange(10.0)[None]  # feature value = its position: the copy's value = the original time
    feats, mask = stitch_sequence(ramp, stitch, 64)
    assert mask.tolist() == [True] * 10 + [False] * 4 + [True] * 50
    inside = torch.arange(20, 58)  # away from the copy's ends, where interpolation clamps
    assert torch.allclose(feats[0, inside], stitch.to_original(inside.float()), atol=1e-5)


def test_training_batch_stitches_short_windows_with_copies_of_their_segments():
    model = VSGN(1, 2, tiny_vsgn())
    feats = torch.arange(64.0).expand(2, 1, 64).clone()
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 10:] = False
    segments = [torch.tensor([[3.0, 40.0]]), torch.tensor([[2.0, 5.5]])]
    labels = [torch.tensor([0]), torch.tensor([1])]
    f, m, s, lab = model.training_batch(feats, mask, segments, labels)
    assert f.shape == feats.shape and torch.equal(f[0], feats[0]) and torch.equal(s[0], segments[0])
    stitch = plan_stitch(10, 64, 0.4, 4)
    assert torch.equal(m[1], magnified_part(m)[1] | (torch.arange(64) < 10))
    assert torch.allclose(s[1], torch.cat([segments[1], stitch.to_stitched(segments[1])]))
    assert lab[1].tolist() == [1, 1]


def test_predict_maps_detections_of_the_copy_back_and_merges_them():
    """A hand-made output: one anchor's refined segment in the original part, one in the copy (the same action);
    after mapping back both are the same segment and NMS keeps one."""
    model = VSGN(1, 1, tiny_vsgn(cls_loss="focal"))
    stitch = plan_stitch(10, 64, 0.4, 4)
    action = torch.tensor([2.0, 6.0])
    refined = torch.tensor([[[2.0, 6.0], [0.0, 1.0]]])
    refined[0, 1] = stitch.to_stitched(action)
    masks = [torch.ones(1, 2, dtype=torch.bool)]
    mask = torch.ones(1, 64, dtype=torch.bool)
    out = VSGNOutput(
        cls_logits=torch.tensor([[[2.0], [3.0]]]),
        proposals=refined.clone(),
        refined=refined,
        boundary_logits=torch.full((1, 3, 64), 10.0),
        masks=masks,
        input_mask=mask,
        stitches=[stitch],
    )
    model.config = tiny_vsgn(cls_loss="focal", anchor_scales=(1.0,))  # one anchor per step of the one level
    (found,) = model.predict(out, nms_method="hard", iou_threshold=0.5, voting_threshold=0.0)
    assert len(found.scores) == 1 and torch.allclose(found.segments[0], action, atol=1e-5)
    assert math.isclose(float(found.scores[0]), torch.tensor(3.0).sigmoid().item() * torch.tensor(10.0).sigmoid() ** 2)


def test_eval_forward_stitches_short_videos_and_records_where():
    model = VSGN(4, 2, tiny_vsgn()).eval()
    feats, mask = torch.randn(2, 4, 64), torch.ones(2, 64, dtype=torch.bool)
    mask[1, 12:] = False
    out = model(feats, mask)
    assert out.stitches == [None, plan_stitch(12, 64, 0.4, 4)]
    assert out.input_mask[1, 12:16].logical_not().all() and out.input_mask[1, 16:].all()


# --- padding, fake tensors, config ----------------------------------------------------------------------------


def test_outputs_at_valid_steps_do_not_depend_on_padding():
    torch.manual_seed(0)
    model = VSGN(4, 3, tiny_vsgn())  # training mode: no test-time stitching, so the windows differ in padding only
    feats = torch.randn(1, 4, 40)
    short, long = torch.nn.functional.pad(feats, (0, 24)), torch.nn.functional.pad(feats, (0, 88))
    mask_short = torch.arange(64)[None] < 40
    mask_long = torch.arange(128)[None] < 40
    a, b = model(short, mask_short), model(long, mask_long)
    valid_a, valid_b = model.anchor_mask(a)[0], model.anchor_mask(b)[0]
    assert valid_a.sum() == valid_b.sum()
    for name in ("cls_logits", "proposals", "refined"):
        assert torch.allclose(getattr(a, name)[0][valid_a], getattr(b, name)[0][valid_b], atol=1e-5), name
    assert torch.allclose(a.boundary_logits[..., :40], b.boundary_logits[..., :40], atol=1e-5)
    segments, labels = [torch.tensor([[5.0, 20.0]])], [torch.tensor([2])]
    model.eval()  # the normalisers stay put
    assert torch.allclose(model.loss(a, segments, labels)["loss"], model.loss(b, segments, labels)["loss"], atol=1e-5)


def test_loss_from_targets_runs_on_fake_tensors_as_memprofile_runs_it():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from re2tal_cli.memory.head_loss import LocalizerLoss

    config = tiny_vsgn()
    with FakeTensorMode(allow_non_fake_inputs=True):
        head = LocalizerLoss("vsgn", 8, num_classes=3, config=config)
        loss = head(torch.randn(2, 8, 50))
        loss.backward()
    assert loss.shape == () and all(p.grad is not None for p in head.parameters())
    real = LocalizerLoss("vsgn", 8, num_classes=3, config=config)(torch.randn(2, 8, 50))
    assert torch.isfinite(real)


def test_config_is_validated():
    assert VSGNConfig().pad_multiple == 64 and VSGNConfig().level_strides == (4, 8, 16, 32, 64)
    with pytest.raises(BadInputError, match="max_seq_len"):
        VSGNConfig(max_seq_len=1000)
    with pytest.raises(BadInputError, match="cls_loss"):
        VSGNConfig(cls_loss="softmax")
    with pytest.raises(BadInputError, match="head_groups"):
        VSGNConfig(embed_dim=48)
    assert isinstance(create_localizer("vsgn", 4, 1, tiny_vsgn()), VSGN)


# --- a tiny model learns ----------------------------------------------------------------------------------------

ACTIONS = [[(5, 17, 0), (30, 34, 1)], [(10, 40, 1)], [(2, 8, 0)]]  # the third is short: it gets stitched


def test_tiny_model_overfits_and_predict_recovers_the_segments():
    generator = torch.Generator().manual_seed(1)
    feats, segments, labels = torch.zeros(3, 4, 64), [], []
    mask = torch.ones(3, 64, dtype=torch.bool)
    mask[2, 20:] = False
    for b, actions in enumerate(ACTIONS):
        feats[b] = 0.1 * torch.randn(4, 64, generator=generator)
        for start, end, label in actions:
            feats[b, label, start : end + 1] += 1.0
        segments.append(torch.tensor([[float(s), float(e)] for s, e, _ in actions]))
        labels.append(torch.tensor([label for *_, label in actions]))
    feats = feats * mask[:, None]
    torch.manual_seed(0)
    model = VSGN(4, 2, tiny_vsgn(init_loss_normalizer=5.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    batch = model.training_batch(feats, mask, segments, labels)
    for _ in range(100):
        losses = model.loss(model(*batch[:2]), *batch[2:])
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    model.eval()
    found = model.predict(model(feats, mask))
    for detections, video_segments, video_labels in zip(found, segments, labels, strict=True):
        for segment, label in zip(video_segments, video_labels, strict=True):
            same_class = detections.labels == label
            best = detections.segments[same_class][: len(video_segments)]
            assert segment_iou(segment[None], best).max() > 0.6, (segment, detections)
