"""Graphs over a feature sequence whose edges join steps close in feature space (G-TAD's semantic edges, VSGN's
xGN): k nearest neighbours by Euclidean distance, recomputed from the features each layer sees.

Padded steps (mask False) are never anyone's neighbour; a valid step is its own nearest neighbour (distance 0), as
in the releases, so with k = 1 a graph convolution reduces to a per-step one; where a sequence has fewer than k
valid steps, the step itself fills the missing neighbours. `neighbour_features` gathers
(B, C, T, k) from the indices; an edge convolution then maps concat(neighbour, centre) and takes the max over k.
"""

from __future__ import annotations

import torch

__all__ = ["knn_indices", "neighbour_features"]


def knn_indices(feats: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """feats (B, C, T), mask (B, T) bool → (B, T, k) long: each step's k nearest steps (itself first), padded steps
    excluded. With fewer than k valid steps the step itself fills the rest. Shape-only control flow (no host
    read), so it runs under FakeTensorMode."""
    x = feats.detach().float()
    squared = (x * x).sum(1)  # (B, T)
    distance = squared[:, :, None] + squared[:, None, :] - 2 * torch.einsum("bct,bcs->bts", x, x)
    distance.diagonal(dim1=1, dim2=2).fill_(-1.0)  # itself first, whatever the rounding of ‖x‖² - 2x·x
    if mask is not None:
        distance = distance.masked_fill(~mask[:, None, :], torch.inf)
    distances, nearest = distance.topk(min(k, feats.shape[2]), dim=2, largest=False)  # (B, T, k')
    nearest = torch.where(distances.isinf(), nearest[:, :, :1], nearest)  # padded neighbours → the step itself
    if nearest.shape[2] < k:  # a sequence shorter than k: the step itself fills the rest
        nearest = torch.cat([nearest, nearest[:, :, :1].expand(-1, -1, k - nearest.shape[2])], dim=2)
    return nearest


def neighbour_features(feats: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """feats (B, C, T), indices (B, T, k) → (B, C, T, k): the features of each step's neighbours."""
    batch, channels, length = feats.shape
    k = indices.shape[2]
    flat = indices.reshape(batch, 1, length * k).expand(batch, channels, length * k)
    return feats.gather(2, flat).reshape(batch, channels, length, k)
