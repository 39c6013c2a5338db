"""Making a recompute see exactly what the forward saw: the same random draws, the same autocast, no second update of
BatchNorm running statistics.

A reversible backward runs every block a second time. Dropout and drop-path must draw the same masks as in the forward
(else the reconstructed activations and the gradients belong to a different network), yet the global generator must
continue as if the recompute never happened (else every later draw shifts, and two steps could repeat a mask). So we
save the generator state before each block's forward and, in the recompute, restore it inside `fork_rng`, which puts
the global state back afterwards. We never reseed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class RngState:
    """The CPU generator state and, for a CUDA tensor, its device's generator state."""

    cpu: torch.Tensor
    device: torch.device
    cuda: torch.Tensor | None

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), device, cuda)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body with the generators as they were at capture; restore the current states afterwards."""
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


@dataclass(frozen=True)
class AutocastState:
    """The autocast setting of the forward, to recompute in the same precision (not fp32, as RevLib does)."""

    device_type: str
    enabled: bool
    dtype: torch.dtype

    @classmethod
    def capture(cls, device: torch.device) -> AutocastState:
        device_type = device.type if device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
        return cls(device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))

    def __call__(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


@contextlib.contextmanager
def running_stats_frozen(*modules: nn.Module) -> Iterator[None]:
    """BatchNorm layers in training mode normalise with batch statistics; their running statistics stay as they are.

    The forward pass already updated them once; a recompute must not do it again. Momentum 0 makes the update keep
    the running values exactly ((1 − 0)·r + 0·batch = r), and the batch counter is put back. Switching the update
    off instead (`track_running_stats`) would change what `batch_norm` saves for its backward, which torch's
    checkpoint checks against the forward's; restoring the buffers afterwards would modify tensors the recompute's
    graph saved.
    """
    batchnorm = nn.modules.batchnorm._BatchNorm
    layers = [m for module in modules for m in module.modules() if isinstance(m, batchnorm) and m.training]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, batches) in zip(layers, saved, strict=True):
            m.momentum = momentum
            if batches is not None:
                m.num_batches_tracked.copy_(batches)
