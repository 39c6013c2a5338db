"""Layers shared by the backbone families."""

from __future__ import annotations

import torch
from torch import nn

from re2tal_cli.errors import BadInputError


class DropPath(nn.Module):
    """Stochastic depth: zero a whole sample's branch with probability `drop_prob`, scale survivors by 1/(1-p).

    Draws from the global generator, so a reversible recompute replays it by restoring the generator state.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise BadInputError(f"`drop_path` must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask.div_(keep)  # scale the (B, 1, …) mask, not the activation: one temporary, not two

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:g}"


def drop_path_rates(total: float, n: int) -> list[float]:
    """The usual linear stochastic-depth schedule over n layers (`torch.linspace(0, total, n)`)."""
    return [total * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
