"""Time axes of the localizer's inputs (train/data.py) and the optimizer pieces (train/optim.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from re2tal_cli.data.sampling import random_crop
from re2tal_cli.train.data import (
    Grid,
    feature_mask,
    frames_grid,
    resample,
    resample_mask,
    segments_on,
)
from re2tal_cli.train.optim import WeightsEMA, lr_factor, param_groups


def test_frames_grid_puts_each_feature_at_the_centre_of_its_frames():
    # 10 fps, 2 frames per feature, the clip starts at 3.0 s: feature 0 covers [3.0, 3.2) s, centred at 3.1 s
    times = 3.0 + torch.arange(8, dtype=torch.float64) / 10
    grid = frames_grid(times, 10.0, 2, valid=4)
    assert (grid.first, grid.step) == pytest.approx((3.1, 0.2))
    assert grid.positions(torch.tensor([3.1, 3.3, 3.0])).tolist() == pytest.approx([0.0, 1.0, -0.5])
    seconds = torch.tensor([0.0, 2.25, 7.5], dtype=torch.float64)
    assert grid.seconds(grid.positions(seconds)).tolist() == pytest.approx(seconds.tolist())


def test_frames_grid_of_a_strided_window_follows_the_frame_times():
    # every 3rd frame at 30 fps, 4 frames per feature: a feature spans 4 sampled frames = 0.4 s of video
    times = torch.arange(0, 48, 3, dtype=torch.float64) / 30
    grid = frames_grid(times, 30.0, 4, valid=4)
    assert grid.step == pytest.approx(0.4)
    assert grid.first == pytest.approx((times[0] + times[3] + 1 / 30).item() / 2)


def test_feature_mask_marks_features_made_only_of_repeated_tail_frames():
    times = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    # row 0's video ends at frame 4: feature 2 (frames 4, 5) holds one real frame, feature 3 none
    assert feature_mask(times, 2).tolist() == [[True, True, True, False], [True, True, True, True]]


def test_a_resampled_grid_maps_positions_as_interpolation_moves_features():
    grid = Grid(first=0.5, step=1.0)  # features centred at 0.5, 1.5, … s
    feats = torch.arange(8, dtype=torch.float32).reshape(1, 1, 8) + 0.5  # each feature's value = its centre time
    for length in (4, 16, 5):
        out = resample(feats, length)[0, 0]
        new = grid.resampled(8, length)
        centres = new.seconds(torch.arange(length, dtype=torch.float64))
        inside = (centres >= 0.5) & (centres <= 7.5)  # linear interpolation reproduces a linear signal inside
        assert out[inside].tolist() == pytest.approx(centres[inside].tolist(), abs=1e-5)


def test_resample_mask_keeps_the_valid_fraction():
    mask = torch.tensor([[True] * 6 + [False] * 2, [True] * 8])
    assert resample_mask(mask, 4).tolist() == [[True, True, True, False], [True] * 4]


def test_segments_outside_the_sequence_are_dropped():
    grid = Grid(first=0.0, step=1.0)
    positions, inside = segments_on(grid, torch.tensor([[1.0, 2.0], [-3.0, -1.0], [9.5, 12.0], [7.0, 11.0]]), 10)
    assert inside.tolist() == [True, False, False, True]
    assert positions[0].tolist() == [1.0, 2.0]


def test_random_crop_keeps_a_segment_when_one_fits():
    segments = np.array([[80.0, 90.0]])
    rng = np.random.default_rng(0)
    for _ in range(20):
        start, kept = random_crop(100, 20, segments, 0.75, rng)
        assert kept.tolist() == [True] and start <= 82.5 and start + 20 >= 87.5


def test_lr_warms_up_from_the_first_step_then_decays_to_zero_at_the_horizon():
    values = [lr_factor(s, 10, 100) for s in range(120)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
    assert values[55] == pytest.approx(0.5) and values[100] == pytest.approx(0.0) and values[119] == 0.0
    longer = [lr_factor(s, 10, 1000) for s in range(120)]  # OpenTAD's horizon past the run: lr stays high
    assert longer[119] > 0.95


def test_weight_decay_only_on_weights_and_each_part_at_its_own_rate():
    head, body = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), nn.Linear(4, 2)
    groups = param_groups([("head", head, 1e-3, 0.05), ("body", body, 1e-5, 0.01)])
    described = [(g["name"], g["lr"], g["weight_decay"], sorted(tuple(p.shape) for p in g["params"])) for g in groups]
    assert described == [
        ("head", 1e-3, 0.05, [(4, 4)]),
        ("head", 1e-3, 0.0, [(4,), (4,), (4,)]),
        ("body", 1e-5, 0.01, [(2, 4)]),
        ("body", 1e-5, 0.0, [(2,)]),
    ]


def test_ema_averages_and_is_swapped_in_only_inside_the_block():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightsEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert ema.state["weight"].tolist() == [[0.5, 0.5]]
    with ema.applied(model):
        assert model.weight.tolist() == [[0.5, 0.5]]
    assert model.weight.tolist() == [[1.0, 1.0]]
