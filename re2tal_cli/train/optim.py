"""Optimizer pieces of a training run: parameter groups, the learning-rate schedule, the weights' EMA."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn


def param_groups(parts: list[tuple[str, nn.Module, float, float]]) -> list[dict]:
    """Optimizer groups for (name, module, lr, weight decay) parts: weight decay only on weights of rank ≥ 2 (not on
    norms, biases, scales: ActionFormer's and OpenTAD's rule), each group with its part's `name` and its `base_lr` for
    the schedule."""
    groups = []
    for name, module, lr, weight_decay in parts:
        params = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups += [
            {"params": decay, "lr": lr, "base_lr": lr, "weight_decay": weight_decay, "name": name},
            {"params": no_decay, "lr": lr, "base_lr": lr, "weight_decay": 0.0, "name": name},
        ]
    return [g for g in groups if g["params"]]


def make_optimizer(kind: str, parts: list[tuple[str, nn.Module, float, float]]) -> torch.optim.Optimizer:
    """AdamW, Adam (weight decay added to the gradient), or SGD with momentum 0.9, over `param_groups(parts)`."""
    groups = param_groups(parts)
    if kind == "adamw":
        return torch.optim.AdamW(groups)
    if kind == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=0.9)


def lr_factor(step: int, warmup: int, horizon: int) -> float:
    """Linear warm-up over `warmup` steps (the first step already at 1/warmup, not 0 as in ActionFormer's release,
    whose first update does nothing), then cosine decay from 1 to 0 at step `horizon`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(horizon - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def lr_scale(rule: str, global_batch: int, reference_batch: int) -> float:
    """The factor on every learning rate of a run whose global batch differs from the one its recipe's rates were
    set for: 1 (none), the ratio (linear) or its square root (sqrt)."""
    ratio = global_batch / reference_batch
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


class WeightsEMA:
    """Exponential moving average of a model's weights and buffers (ActionFormer's and OpenTAD's `ModelEma`, decay
    0.999, updated after every optimizer step), kept as tensors beside the model rather than a second module, and
    swapped in for evaluation."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            average = self.state[key]
            if average.is_floating_point():
                average.lerp_(value.detach(), 1.0 - self.decay)
            else:
                average.copy_(value)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The model with the averaged weights inside the block, its own afterwards."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(own)
