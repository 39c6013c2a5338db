"""Frame sampling (Fig. 4 arrangements) and tensor transforms/augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from re2tal_cli.data import sampling, transforms


def test_uniform_indices():
    idx = sampling.uniform_indices(100, 4)
    assert idx.tolist() == [12, 37, 62, 87]
    assert sampling.uniform_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]  # more frames asked than exist: repeats
    assert len(sampling.uniform_indices(18000, 512)) == 512
    with pytest.raises(ValueError, match="no frames"):
        sampling.uniform_indices(0, 4)


def test_window_and_starts():
    assert sampling.window_indices(100, 4, stride=3, start=10).tolist() == [10, 13, 16, 19]
    assert sampling.window_indices(10, 4, stride=4).tolist() == [0, 4, 8, 9]  # padded with the last frame
    starts = sampling.window_starts(100, 16, stride=2, overlap=0.5)
    assert starts[0] == 0 and starts[-1] == 100 - 32 and np.all(np.diff(starts) <= 16)
    assert sampling.window_starts(10, 16).tolist() == [0]


def test_fps_indices_use_timestamps():
    times = np.array([0.0, 0.1, 0.2, 0.35, 0.4, 0.5, 0.9, 1.0])  # variable rate
    assert sampling.fps_indices(times, fps=5).tolist() == [0, 2, 4, 5, 6, 7]
    assert sampling.fps_indices(times, fps=10, count=3, start=0.3).tolist() == [3, 4, 5]


def test_snippets():
    assert sampling.snippet_starts(100, 16, 8).tolist() == list(range(0, 85, 8))
    idx = sampling.snippet_indices(20, clip=8, stride=4)
    assert idx.shape == (4, 8) and idx[1].tolist() == list(range(4, 12))
    assert sampling.snippet_indices(5, clip=8, stride=4).tolist() == [[0, 1, 2, 3, 4, 4, 4, 4]]


def test_jitter_is_seeded_and_ordered():
    base = sampling.uniform_indices(300, 16)
    a = sampling.jitter_indices(base, 300, 0.5, np.random.default_rng(3))
    b = sampling.jitter_indices(base, 300, 0.5, np.random.default_rng(3))
    assert np.array_equal(a, b) and not np.array_equal(a, base)
    assert np.all(np.diff(a) >= 0) and a.min() >= 0 and a.max() < 300
    assert np.array_equal(sampling.jitter_indices(base, 300, 0.0, None), base)


def _clip(t=4, h=40, w=60):
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, t, h, w, generator=g)


def test_shapes_and_basic_ops():
    frames = (np.random.default_rng(0).random((4, 40, 60, 3)) * 255).astype(np.uint8)
    x = transforms.to_tensor(frames)
    assert x.shape == (3, 4, 40, 60) and x.max() <= 1.0
    assert transforms.resize_short(x, 20).shape == (3, 4, 20, 30)
    assert transforms.center_crop(x, 32).shape == (3, 4, 32, 32)
    assert torch.equal(transforms.hflip(transforms.hflip(x)), x)
    assert torch.allclose(transforms.rotate(x, 0.0), x)
    y = transforms.normalize(x, [0.5] * 3, [0.25] * 3)
    assert torch.allclose(y * 0.25 + 0.5, x, atol=1e-6)


def test_rotation_by_90_on_square_is_exact_permutation():
    x = _clip(h=32, w=32)
    r = transforms.rotate(x, 90.0)
    assert torch.allclose(r, torch.rot90(x, k=-1, dims=(-2, -1)), atol=1e-4) or torch.allclose(
        r, torch.rot90(x, k=1, dims=(-2, -1)), atol=1e-4
    )


def test_color_jitter_identity_and_range():
    x = _clip()
    assert torch.allclose(transforms.color_jitter(x.clone()), x)
    y = transforms.color_jitter(x.clone(), brightness=1.5, contrast=0.7, saturation=1.3, hue=0.1)
    assert y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, x)


def test_augment_seeded_and_consistent_over_frames():
    aug = transforms.Augment.re2tal(size=24)
    same = _clip()[:, :1].expand(3, 5, 40, 60).contiguous()  # five identical frames
    out1 = aug(same, torch.Generator().manual_seed(7))
    out2 = aug(same, torch.Generator().manual_seed(7))
    out3 = aug(same, torch.Generator().manual_seed(8))
    assert out1.shape == (3, 5, 24, 24)
    assert torch.equal(out1, out2)  # seeded
    assert not torch.equal(out1, out3)
    for t in range(1, 5):  # one transform for the whole clip: identical frames stay identical
        assert torch.equal(out1[:, t], out1[:, 0])
