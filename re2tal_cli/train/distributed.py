"""Several processes, one run: torchrun's environment, the process group, DistributedDataParallel around a task's
losses, and the few collectives the training loop and `extract` need.

    torchrun --nproc-per-node 4 -m re2tal_cli train-tal --data thumos/ --backbone runs/ft/backbone --out run

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address in the environment, WORLD_SIZE > 1),
`process_group` initialises the default group — NCCL with each process on the GPU of its LOCAL_RANK when the run
is on CUDA, gloo on CPU — and destroys it when the command ends. Without torchrun (or with one process) nothing is
initialised and every function here is the single-process identity, so a run is exactly what it was.

What each process does:

- every process builds the same model from the same seed, loads the same checkpoint on resume, and trains on its
  own slice of every epoch's shuffled order (`data.datasets.EpochSampler`); DDP averages the gradients;
- rank 0 alone writes: the run directory, config.yaml, metrics.jsonl (the losses averaged over processes), the
  checkpoints, TensorBoard, progress; it alone evaluates (the others wait at a barrier), and the summary it writes
  is handed to every process.

DDP wraps a module whose forward is the task's `losses`, so every training forward passes through DDP without the
tasks changing. Neither `find_unused_parameters` nor `static_graph` is set: the reversible stages return their
parameters' gradients from their autograd Function, so DDP's per-parameter hooks fire as for any layer, and frozen
parameters (requires_grad False) are not DDP's at all. A trainable parameter that a step does not use is an error
DDP reports (tests/train/test_distributed.py shows a reversible backbone with drop-path and a frozen part trains
without either option).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from re2tal_cli.errors import BadInputError

# rank 0 evaluates while the others wait at a barrier: long enough for a full validation pass
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Process:
    """This process's place in the run; (0, 1, 0) for a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that writes the outputs and reports progress."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world size): which slice of the data this process takes."""
        return self.rank, self.world_size


def current() -> Process:
    """This process in the initialised default group, or the single process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return Process()
    return Process(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def launched() -> Process:
    """This process as torchrun's environment describes it (RANK, WORLD_SIZE, LOCAL_RANK); a single process when
    they are absent."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if "WORLD_SIZE" not in os.environ:
        return Process()
    try:
        rank, world_size, local_rank = (int(os.environ.get(name, "0")) for name in names)
    except ValueError:
        shown = ", ".join(f"{n}={os.environ.get(n)!r}" for n in names)
        raise BadInputError(f"the launcher's environment is not integers: {shown}") from None
    if not 0 <= rank < world_size or local_rank < 0:
        raise BadInputError(f"the launcher's environment: RANK {rank} is not in [0, WORLD_SIZE {world_size})")
    return Process(rank, world_size, local_rank)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[tuple[Process, torch.device]]:
    """(this process, its device) for the block: under torchrun with several processes, the default group
    initialised for it (NCCL on CUDA, gloo on CPU) and destroyed after; `cuda` becomes cuda:LOCAL_RANK. A group
    already initialised by the caller is used as it is and left alone."""
    if dist.is_available() and dist.is_initialized():
        yield current(), _device_of(current(), device)
        return
    process = launched()
    if process.world_size == 1:
        yield process, device
        return
    device = _device_of(process, device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=process.rank, world_size=process.world_size, timeout=TIMEOUT,
                            device_id=device if device.type == "cuda" else None)  # fmt: skip
    try:
        yield process, device
    finally:
        # A DDP reducer freed after its group is destroyed drops the group's last reference, and gloo's destructor
        # then joins a worker thread that may need the GIL the freeing thread holds: a hang. Free unreachable ones
        # (reference cycles) while the group still holds its own reference.
        gc.collect()
        dist.destroy_process_group()


def _device_of(process: Process, device: torch.device) -> torch.device:
    if device.type != "cuda" or process.world_size == 1:
        return device
    if device.index is not None and device.index != process.local_rank:
        raise BadInputError(f"`device` {device}: under torchrun each process runs on the GPU of its LOCAL_RANK "
                            f"({process.local_rank} here); give cuda")  # fmt: skip
    return torch.device("cuda", process.local_rank)


class _LossesModule(nn.Module):
    """A task's `losses` as the forward of a module that holds the model, so that DDP sees each training step."""

    def __init__(self, model: nn.Module, losses: Callable[..., dict[str, torch.Tensor]]):
        super().__init__()
        self.model = model
        self.losses = losses

    def forward(self, batch: Any, autocast: Callable) -> dict[str, torch.Tensor]:
        return self.losses(batch, autocast)


class ParallelLosses:
    """`losses(batch, autocast)` through DistributedDataParallel when there are several processes (gradients
    averaged over them in the backward), or the task's own otherwise; `no_sync()` skips the averaging for the
    micro-steps of an accumulated update but its last."""

    def __init__(self, model: nn.Module, losses: Callable[..., dict[str, torch.Tensor]]):
        self._losses = losses
        self._ddp = None
        if current().world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            # device_ids None: the model sits on one device already; the task moves its batch there itself
            self._ddp = DistributedDataParallel(_LossesModule(model, losses), device_ids=None)

    def __call__(self, batch: Any, autocast: Callable) -> dict[str, torch.Tensor]:
        return self._losses(batch, autocast) if self._ddp is None else self._ddp(batch, autocast)

    def no_sync(self):
        return contextlib.nullcontext() if self._ddp is None else self._ddp.no_sync()


def mean_over_processes(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalars averaged over the processes (the same numbers on every one), as floats."""
    keys = list(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    world_size = current().world_size
    if world_size > 1:
        dist.all_reduce(stacked)  # a sum: gloo has no average
        stacked = stacked / world_size
    return dict(zip(keys, stacked.tolist(), strict=True))


def barrier() -> None:
    if current().world_size > 1:
        dist.barrier()


def from_main(value: Any) -> Any:
    """Rank 0's `value` on every process (a picklable object)."""
    if current().world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(value: Any) -> list[Any]:
    """Every process's `value`, in rank order (picklable objects)."""
    world_size = current().world_size
    if world_size == 1:
        return [value]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, value)
    return out


def seed_epoch(seed: int, epoch: int) -> None:
    """With several processes: the torch generators seeded from (seed, epoch, rank) at an epoch's start, so that
    drop-path, dropout and mixup draw differently on each process, and a run resumed at that epoch — on any number
    of processes — draws what an uninterrupted run on as many does. A single process keeps its generator running
    (resume restores it from the checkpoint)."""
    process = current()
    if process.world_size == 1:
        return
    import numpy as np

    state = np.random.SeedSequence([seed, epoch, process.rank]).generate_state(1, dtype=np.uint64)[0]
    torch.manual_seed(int(state) & ((1 << 63) - 1))
