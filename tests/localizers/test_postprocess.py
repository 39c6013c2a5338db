import math

import pytest
import torch

from re2tal_cli.localizers.postprocess import (
    PostprocessConfig,
    batched_nms,
    decode_video,
    postprocess_video,
    score_voting,
    segment_iou,
)


def test_segment_iou():
    a = torch.tensor([[0.0, 10.0], [20.0, 30.0]])
    b = torch.tensor([[1.0, 10.0], [5.0, 25.0], [40.0, 41.0]])
    expected = torch.tensor([[9 / 10, 5 / 25, 0.0], [0.0, 5 / 25, 0.0]])
    torch.testing.assert_close(segment_iou(a, b), expected, atol=1e-6, rtol=0)


SEGMENTS = torch.tensor([[0.0, 10.0], [1.0, 10.0], [20.0, 30.0]])
SCORES = torch.tensor([0.9, 0.8, 0.5])


def test_soft_nms_hand_case():
    # B overlaps the best (A) with IoU 0.9: 0.8 · exp(-0.81 / 0.5); C overlaps nothing and keeps 0.5
    kept, scores = batched_nms(SEGMENTS, SCORES, torch.zeros(3, dtype=torch.long), PostprocessConfig(min_score=0.1))
    assert kept.tolist() == [0, 2, 1]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.5, 0.8 * math.exp(-0.81 / 0.5)]))
    kept, _ = batched_nms(SEGMENTS, SCORES, torch.zeros(3, dtype=torch.long), PostprocessConfig(min_score=0.2))
    assert kept.tolist() == [0, 2]  # 0.158 fell below min_score
    # in different classes nothing is decayed
    kept, scores = batched_nms(SEGMENTS, SCORES, torch.tensor([0, 1, 0]), PostprocessConfig(min_score=0.1))
    assert kept.tolist() == [0, 1, 2] and scores.tolist() == pytest.approx([0.9, 0.8, 0.5])


def test_hard_nms_and_no_nms():
    groups = torch.zeros(3, dtype=torch.long)
    kept, scores = batched_nms(SEGMENTS, SCORES, groups, PostprocessConfig(nms_method="hard", iou_threshold=0.5))
    assert kept.tolist() == [0, 2] and scores.tolist() == pytest.approx([0.9, 0.5])
    kept, _ = batched_nms(SEGMENTS, SCORES, groups, PostprocessConfig(nms_method="hard", iou_threshold=0.95))
    assert kept.tolist() == [0, 1, 2]
    kept, _ = batched_nms(SEGMENTS, SCORES, groups, PostprocessConfig(nms_method="none", max_segments=2))
    assert kept.tolist() == [0, 1]


def _reference_soft_nms(segments, scores, groups, sigma, min_score, max_segments):
    """The textbook loop, one group at a time, in Python floats."""
    kept = []
    for group in sorted(set(groups.tolist())):
        alive = [[float(scores[i]), i] for i in range(len(scores)) if groups[i] == group and scores[i] >= min_score]
        picked = 0
        while alive and picked < max_segments:
            best = max(range(len(alive)), key=lambda j: alive[j][0])
            score, i = alive.pop(best)
            kept.append((score, i))
            picked += 1
            s_i, e_i = segments[i].tolist()
            for entry in alive:
                s_j, e_j = segments[entry[1]].tolist()
                inter = max(0.0, min(e_i, e_j) - max(s_i, s_j))
                iou = inter / ((e_i - s_i + 1e-6) + (e_j - s_j + 1e-6) - inter)
                entry[0] *= math.exp(-iou * iou / sigma)
            alive = [entry for entry in alive if entry[0] >= min_score]
    kept.sort(key=lambda x: -x[0])
    return [i for _, i in kept], [s for s, _ in kept]


@pytest.mark.parametrize(
    ("num_groups", "sigma", "min_score", "max_segments"),
    [(1, 0.5, 0.001, 200), (4, 0.5, 0.05, 200), (3, 0.75, 0.01, 5)],
)
def test_soft_nms_matches_a_reference_loop(num_groups, sigma, min_score, max_segments):
    generator = torch.Generator().manual_seed(num_groups)
    starts = torch.rand(80, generator=generator) * 50
    segments = torch.stack((starts, starts + 1 + torch.rand(80, generator=generator) * 10), dim=1)
    scores = torch.rand(80, generator=generator)
    groups = torch.randint(num_groups, (80,), generator=generator)
    config = PostprocessConfig(sigma=sigma, min_score=min_score, max_segments=max_segments)
    kept, kept_scores = batched_nms(segments, scores, groups, config)
    expected, expected_scores = _reference_soft_nms(segments, scores, groups, sigma, min_score, max_segments)
    assert kept.tolist() == expected
    torch.testing.assert_close(kept_scores, torch.tensor(expected_scores), rtol=1e-5, atol=1e-7)


def test_score_voting_averages_overlapping_candidates_by_score():
    refined = score_voting(SEGMENTS[:1], torch.zeros(1, dtype=torch.long), SEGMENTS, SCORES, torch.zeros(3), 0.7)
    torch.testing.assert_close(refined, torch.tensor([[0.8 / 1.7, 10.0]]))
    # another class does not vote
    refined = score_voting(SEGMENTS[:1], torch.zeros(1), SEGMENTS, SCORES, torch.tensor([0, 1, 0]), 0.7)
    torch.testing.assert_close(refined, SEGMENTS[:1])


def test_decode_video_hand_case():
    # level 0: 4 steps, 2 classes; level 1: 2 steps (stride 2). Only two (point, class) pairs pass the threshold.
    logits = [torch.full((4, 2), -10.0), torch.full((2, 2), -10.0)]
    logits[0][1, 1] = 0.0  # p = 0.5 at step 1, class 1
    logits[1][1, 0] = 2.0  # p ≈ 0.88 at level-1 step 1 (position 2), class 0
    logits[0][3, 0] = 5.0  # masked out: padding
    offsets = [torch.ones(4, 2), torch.tensor([[0.0, 0.0], [1.5, 2.0]])]
    masks = [torch.tensor([True, True, True, False]), torch.tensor([True, True])]
    points = [
        torch.tensor([[0.0, 0, 4, 1], [1, 0, 4, 1], [2, 0, 4, 1], [3, 0, 4, 1]]),
        torch.tensor([[0.0, 4, 8, 2], [2, 4, 8, 2]]),
    ]
    segments, scores, labels = decode_video(logits, offsets, masks, points, PostprocessConfig(pre_nms_threshold=0.01))
    torch.testing.assert_close(segments, torch.tensor([[0.0, 2.0], [2 - 3.0, 2 + 4.0]]))
    torch.testing.assert_close(scores, torch.tensor([0.5, torch.tensor(2.0).sigmoid().item()]))
    assert labels.tolist() == [1, 0]
    # too short: 2 steps long is not > min_duration 2
    segments, _, _ = decode_video(logits, offsets, masks, points, PostprocessConfig(min_duration=2.0))
    assert segments.tolist() == [[-1.0, 6.0]]


def test_postprocess_video_caps_and_sorts():
    generator = torch.Generator().manual_seed(0)
    starts = torch.rand(50, generator=generator) * 40
    segments = torch.stack((starts, starts + 2), dim=1)
    scores, labels = torch.rand(50, generator=generator), torch.randint(3, (50,), generator=generator)
    detections = postprocess_video(segments, scores, labels, PostprocessConfig(max_segments=10, voting_threshold=0.5))
    assert len(detections.scores) == 10 and (detections.scores[:-1] >= detections.scores[1:]).all()
    agnostic = postprocess_video(segments, scores, labels, PostprocessConfig(multiclass=False))
    assert len(agnostic.scores) < len(postprocess_video(segments, scores, labels, PostprocessConfig()).scores)
    empty = postprocess_video(torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.long), PostprocessConfig())
    assert empty.segments.shape == (0, 2) and empty.labels.shape == (0,)
