"""Label assignment on hand-made cases; levels (strides 1, 2, 4) with ranges [0, 4], [4, 8], [8, inf), T = 16."""

import math

import torch

from re2tal_cli.localizers.assignment import assign_targets, make_points

RANGES = ((0.0, 4.0), (4.0, 8.0), (8.0, math.inf))


def _assign(segments, labels, num_classes=3, radius=1.5):
    points = torch.cat(make_points([16, 8, 4], RANGES))
    cls, reg = assign_targets(points, torch.tensor(segments), torch.tensor(labels), num_classes, radius)
    positive = cls.sum(-1) > 0
    # (level, position) of each positive point, in order
    level = points[:, 3].log2().long()
    where = [(int(level[i]), float(points[i, 0])) for i in positive.nonzero().squeeze(1)]
    return where, cls[positive], reg[positive], points


def test_make_points():
    levels = make_points([8, 4, 2], RANGES)
    assert levels[1].tolist() == [[0, 4, 8, 2], [2, 4, 8, 2], [4, 4, 8, 2], [6, 4, 8, 2]]
    assert levels[2][:, 0].tolist() == [0, 4] and math.isinf(levels[2][0, 2])


def test_short_segment_goes_to_the_finest_level_centre():
    # [2, 5]: centre 3.5, radius 1.5 × stride 1 → (2, 5) strictly: steps 3 and 4; farthest end 2 ∈ [0, 4]
    where, cls, reg, _ = _assign([[2.0, 5.0]], [1])
    assert where == [(0, 3.0), (0, 4.0)]
    assert cls.tolist() == [[0, 1, 0], [0, 1, 0]]
    assert reg.tolist() == [[1.0, 2.0], [2.0, 1.0]]


def test_long_segment_goes_to_coarse_levels_within_range():
    # [1, 13]: centre 7. Level 1 (stride 2): (4, 10) → points 6, 8, farthest 7 ∈ [4, 8].
    # Level 2 (stride 4): (1, 13) → points 4, 8, 12; farthest 9, 7, 11: 8 is out of [8, inf).
    where, cls, reg, _ = _assign([[1.0, 13.0]], [2])
    assert where == [(1, 6.0), (1, 8.0), (2, 4.0), (2, 12.0)]
    assert (cls[:, 2] == 1).all() and cls.sum() == 4
    # targets in stride units: (t - s, e - t) / stride
    assert reg.tolist() == [[2.5, 3.5], [3.5, 2.5], [0.75, 2.25], [2.75, 0.25]]


def test_without_centre_sampling_every_inside_point_in_range_is_positive():
    # [1, 13] on level 2 (stride 4): 4, 8, 12 inside; 8's farthest end 7 < 8. Level 1: 2..12 with max(t-1, 13-t) ≥ 4:
    # all of 2, 4, 6, 8, 10, 12 and ≤ 8: 6 ≤ 7 ≤ 8 → 2 (11 > 8 ✗), 4 (9 ✗), 6 (7 ✓), 8 (7 ✓), 10 (9 ✗), 12 (11 ✗)
    where, _, _, _ = _assign([[1.0, 13.0]], [0], radius=None)
    assert where == [(1, 6.0), (1, 8.0), (2, 4.0), (2, 12.0)]
    where, _, _, _ = _assign([[0.5, 3.0]], [0], radius=None)  # inside (0.5, 3): 1, 2; farthest 2, 1.5
    assert where == [(0, 1.0), (0, 2.0)]
    where, _, _, _ = _assign([[0.5, 3.0]], [0], radius=0.5)  # centre 1.75 ± 0.5 → (1.25, 2.25): 2 only
    assert where == [(0, 2.0)]


def test_ties_go_to_the_shortest_and_near_equal_lengths_share_the_point():
    # A [0, 8] (class 0), B [2, 6] (class 1), C [2.0005, 6] (class 2, 0.0005 shorter than B, within the 1e-3 tie).
    # Level 0, step 4: A (farthest 4, in [0, 4]), B and C claim it; C is shortest, B ties → classes {1, 2}, offsets
    # from C. Steps 3 and 5: A's farthest end is 5 > 4, so only B and C. Level 1 (stride 2): A's centre 4 ± 3 holds
    # points 2, 4, 6 with farthest ends 6, 4, 6 ∈ [4, 8]; B and C reach only point 4, farthest 2 ∉ [4, 8].
    where, cls, reg, _ = _assign([[0.0, 8.0], [2.0, 6.0], [2.0005, 6.0]], [0, 1, 2])
    assert where == [(0, 3.0), (0, 4.0), (0, 5.0), (1, 2.0), (1, 4.0), (1, 6.0)]
    assert cls.tolist() == [[0, 1, 1]] * 3 + [[1, 0, 0]] * 3
    expected = [[0.9995, 3.0], [1.9995, 2.0], [2.9995, 1.0], [1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]
    torch.testing.assert_close(reg, torch.tensor(expected))
    # without the near-tie, the shorter segment alone wins
    where, cls, reg, _ = _assign([[0.0, 8.0], [2.5, 5.5]], [0, 1])
    point_4 = where.index((0, 4.0))
    assert cls[point_4].tolist() == [0, 1, 0] and reg[point_4].tolist() == [1.5, 1.5]


def test_same_label_twice_stays_one_hot():
    where, cls, _, _ = _assign([[2.0, 5.0], [2.0, 5.0]], [1, 1])
    assert where == [(0, 3.0), (0, 4.0)] and cls.max() == 1


def test_no_segment_means_all_negative():
    points = torch.cat(make_points([16, 8, 4], RANGES))
    cls, reg = assign_targets(points, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 3, 1.5)
    assert cls.shape == (28, 3) and reg.shape == (28, 2) and cls.sum() == 0 and reg.sum() == 0
