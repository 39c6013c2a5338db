"""Estimate the memory of one training step without running the model or allocating its memory.

How: the model is built on the meta device, materialised as fake CPU tensors inside `FakeTensorMode` (shapes and
dtypes, no data), and the training step of `memory/step.py` — the one `--measure` runs for real — runs twice under a
`StorageTracker`: the first step creates optimizer state and caches, the second is the steady state we report. The
tracker counts every storage an operator creates, rounded to the allocator's block (512 B on CUDA), by component.

Why fake CPU, not meta, not fake CUDA: the meta device decomposes scaled-dot-product attention into its math path and
would count an N×N attention matrix the fused kernels never store; fake CUDA tensors need a CUDA build. What this
cannot see: memory a kernel allocates inside itself (cuDNN/cuBLAS workspaces, oneDNN scratch), the CUDA context, and
the caching allocator's fragmentation (reserved − allocated). Those are what `gpus.py`'s usable memory and the
verdict's margin are for. Under autocast the CPU autocast op lists stand in for CUDA's (they agree on the matmul-like
ops that hold most activations).

Cost: a fake run costs per operator (≈ 0.07 ms under `FakeTensorMode`), not per byte, and no backbone's operator
count grows with the clip (Swin's attention, which loops over chunks of windows, runs only its first chunk on fake
tensors: `_shape_only`), so a 2×1024×224² step is estimated as fast as a 1×16×224² one and every configuration runs
exactly.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from re2tal_cli.memory.parallel import default_workers, run_forked
from re2tal_cli.memory.step import StepConfig, TrainingSetup, build_model, check_input_shape, setup, train_step
from re2tal_cli.memory.tracker import (
    ACTIVATIONS,
    BACKWARD_TEMPORARIES,
    BUFFERS,
    GRADIENTS,
    INPUT,
    OPTIMIZER_STATE,
    OPTIMIZER_TEMPORARIES,
    PARAMETERS,
    PERSISTENT,
    Snapshot,
    StorageTracker,
    cpu_kernel_workspace,
)
from re2tal_cli.models import swin_attention
from re2tal_cli.reversible import pieces
from re2tal_cli.reversible.guard import GuardStats


@dataclass
class PhasePeak:
    total: int
    components: dict[str, int]

    @classmethod
    def of(cls, snap: Snapshot) -> PhasePeak:
        return cls(snap.total, snap.by_category())


@dataclass
class Estimate:
    """Bytes of one steady-state training step, by component. `block`: the allocator granularity modelled."""

    config: StepConfig
    block: int
    parameter_count: dict[str, int]  # backbone / head
    parameters: dict[str, int]  # bytes, backbone / head
    buffers: int
    gradients: dict[str, int]  # backbone / head, after backward
    optimizer_state: int
    persistent: int  # caches kept across steps (e.g. position tables)
    input: int
    activations: dict[str, int]  # kept for backward at the end of the forward: backbone / head
    stage_activations: list[int]  # of the backbone's, those made inside each residual stage
    backward_working_set: int  # backward temporaries at the backward peak (reversible: one block's recompute + grads)
    phases: dict[str, PhasePeak]  # forward / backward / optimizer peaks
    peak: PhasePeak
    peak_phase: str
    seconds: float  # what the estimate took
    operators: int  # operators it dispatched on fake tensors (what `seconds` is proportional to)

    @property
    def total_peak(self) -> int:
        return self.peak.total

    @property
    def model_states(self) -> int:
        """What `accelerate estimate-memory` counts: parameters, gradients, optimizer state."""
        return sum(self.parameters.values()) + sum(self.gradients.values()) + self.optimizer_state

    def to_json(self) -> dict:
        return {
            "config": self.config.to_json(),
            "allocator_block_bytes": self.block,
            "parameter_count": self.parameter_count,
            "bytes": {
                "parameters": self.parameters,
                "buffers": self.buffers,
                "gradients": self.gradients,
                "optimizer_state": self.optimizer_state,
                "persistent_caches": self.persistent,
                "input": self.input,
                "activations_kept": self.activations,
                "activations_kept_per_stage": self.stage_activations,
                "backward_working_set": self.backward_working_set,
                "model_states": self.model_states,
                "peak": self.peak.total,
            },
            "peak_phase": self.peak_phase,
            "peak_components": self.peak.components,
            "phases": {k: {"peak": v.total, "components": v.components} for k, v in self.phases.items()},
            "seconds": round(self.seconds, 3),
            "operators": self.operators,
        }


def estimate(config: StepConfig, block: int | None = None) -> Estimate:
    """The memory of one training step of `config`, by component, in seconds and without allocating it.

    `block`: allocator granularity; default 512 B for CUDA (its caching allocator's smallest block), exact bytes for
    CPU.
    """
    return estimate_all([config], block)[0]


def estimate_all(
    configs: Sequence[StepConfig],
    block: int | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Estimate]:
    """`estimate` of each configuration, making what they share once and their steps in parallel.

    Every step of one architecture, head, optimizer and device starts from the same state, whatever its wiring, clip,
    batch, precision or drop-path: the parameters and buffers, and the optimizer's state after its warm-up. That state
    (materialising the fake tensors, warming the optimizer up: about a quarter of an estimate) is made once; each step
    then runs on a module of its own (its wiring, its caches) given those very tensors, under a tracker that starts
    from what the warm-up left live, so the estimates are those of separate runs.

    A step on fake tensors is one Python thread's work, so the steps after a group's first run in up to `workers`
    processes at once, forked once the first has filled `FakeTensorMode`'s cache of operator results, which they
    inherit. By default that is twice the usable CPUs (steps differ in length, a reversible one is about twice a
    plain one) on Linux with more than one CPU; elsewhere the steps run one after the other in this process. An
    estimate's `seconds` and `operators` are its step's, plus the shared work's for the first configuration of its
    group. `progress(done, total)` is called as estimates complete.
    """
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)  # one for all: the shared tensors are its own
    owners = [_build(config) for config in configs]  # every input shape checked before any work
    groups: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault((config.arch, config.head, config.optimizer, config.device), []).append(i)
    results: list[Estimate] = [None] * len(configs)  # type: ignore[list-item]
    done = 0

    def finished(_: int = 0) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, len(configs))

    for indices in groups.values():
        start = time.perf_counter()
        with fake_mode:
            warm = _warm_start(configs[indices[0]], owners[indices[0]], block)
        shared_seconds = time.perf_counter() - start
        steps = [partial(_estimate_step, configs[i], owners[i], warm, fake_mode) for i in indices]
        first = steps[0]()
        finished()
        estimates = [first, *run_forked(steps[1:], default_workers() if workers is None else workers, finished)]
        estimates[0].seconds += shared_seconds
        estimates[0].operators += warm.tracker.operators
        for i, e in zip(indices, estimates, strict=True):
            results[i] = e
    return results


def _build(config: StepConfig) -> dict[str, nn.Module]:
    """The backbone (and head) of `config` on the meta device, by owner; the clip's shape checked against it."""
    with torch.device("meta"):
        backbone, head = build_model(config)
    check_input_shape(config, backbone)
    return {"backbone": backbone} | ({"head": head} if head is not None else {})


@dataclass
class _WarmStart:
    """Where every step of one architecture, head, optimizer and device starts: the fake parameters and buffers of
    `modules`, the optimizer warmed up on them, and a tracker holding what is then live, by category."""

    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    tracker: StorageTracker


def _warm_start(config: StepConfig, owners: dict[str, nn.Module], block: int | None) -> _WarmStart:
    """Materialise `owners` as fake CPU tensors and warm their optimizer up: it creates its state at its first step.
    Only the optimizer runs (on zero gradients): a full warm-up step would double the cost and change nothing the
    reported step sees but caches a forward keeps (e.g. a position table), which that step then counts as made."""
    block = block if block is not None else (512 if config.device == "cuda" else 1)
    for module in owners.values():
        module.to_empty(device="cpu")
    optimizer = setup(config, owners["backbone"], owners.get("head")).optimizer
    tracker = StorageTracker(block, cpu_kernel_workspace if config.device == "cpu" else None)
    owner_of = {}  # id of a parameter → backbone / head
    for owner, module in owners.items():
        for p in module.parameters():
            owner_of[id(p)] = owner
            tracker.track(p, PARAMETERS, owner)
        for b in module.buffers():
            tracker.track(b, BUFFERS, owner)
    with tracker:
        for p in optimizer.param_groups[0]["params"]:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for p, state in optimizer.state.items():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                tracker.track(value, OPTIMIZER_STATE, owner_of[id(p)])
    for category in (ACTIVATIONS, BACKWARD_TEMPORARIES, OPTIMIZER_TEMPORARIES, PERSISTENT):
        tracker.retag(category, PERSISTENT)
    return _WarmStart(owners, optimizer, tracker)


def _share_tensors(module: nn.Module, source: nn.Module) -> None:
    """Give `module` the very parameters and buffers of `source`, a module built the same way (so the optimizer's
    state and the tracker's records are theirs too)."""
    for m, src in zip(module.modules(), source.modules(), strict=True):
        for name, tensor in [*src.named_parameters(recurse=False), *src.named_buffers(recurse=False)]:
            setattr(m, name, tensor)


def _run_step(config: StepConfig, owners: dict[str, nn.Module], warm: _WarmStart) -> StorageTracker:
    """The steady-state step of `config` on `owners` (holding the warm start's tensors), tracked from that state."""
    s = TrainingSetup(config, owners["backbone"], owners.get("head"), warm.optimizer)
    tracker = warm.tracker.copy()
    handles = [
        p.register_post_accumulate_grad_hook(_grad_hook(tracker, owner))
        for owner, module in owners.items()
        for p in module.parameters()
    ]
    stages = owners["backbone"].residual_stages()
    handles += [h for i, stage in enumerate(stages) for h in _stage_scope_hooks(tracker, stage, f"stage{i}")]
    try:
        with tracker, _shape_only(owners):
            train_step(s, "cpu", tracker)
    finally:
        for h in handles:
            h.remove()
        warm.optimizer.zero_grad(set_to_none=True)  # the next step starts, as this one did, without gradients
    return tracker


class _AcceptingGuard(GuardStats):
    """The guard of a step on fake tensors: there is no value to check, so every reversible backward stands."""

    def accept(self, error: torch.Tensor, tolerance: float) -> bool:
        return True


@contextlib.contextmanager
def _shape_only(owners: dict[str, nn.Module]) -> Iterator[None]:
    """The hooks the engine and the models offer for a run on tensors without values: the stages' guards accept
    without reading an error, Swin's attention computes only its first chunk of windows, and a recompute in pieces of
    time only one piece of each shape (every chunk or piece frees what it makes before the next and none makes more
    than the first chunk or the piece of its shape, so the peaks are the full loop's, at a cost that does not grow
    with the clip)."""
    for stage in owners["backbone"].residual_stages():
        stage.guard = _AcceptingGuard()
    saved = swin_attention.chunk_plan, pieces.piece_plan
    swin_attention.chunk_plan, pieces.piece_plan = swin_attention.first_chunk, pieces.one_of_each_shape
    try:
        yield
    finally:
        swin_attention.chunk_plan, pieces.piece_plan = saved


def _estimate_step(
    config: StepConfig, owners: dict[str, nn.Module], warm: _WarmStart, fake_mode: FakeTensorMode
) -> Estimate:
    start = time.perf_counter()
    with fake_mode:
        for name, module in owners.items():
            _share_tensors(module, warm.modules[name])
        tracker = _run_step(config, owners, warm)
    return _report(config, tracker, owners, time.perf_counter() - start, tracker.operators)


def _report(
    config: StepConfig, tracker: StorageTracker, owners: dict[str, nn.Module], seconds: float, operators: int
) -> Estimate:
    fwd_end = tracker.at_phase_start["backward"]  # live at the end of the forward: what backward will read
    bwd_end = tracker.at_phase_start["optimizer"]
    bwd_peak = tracker.phase_peaks["backward"]
    names = list(owners)
    phases = {k: PhasePeak.of(v) for k, v in tracker.phase_peaks.items() if k in ("forward", "backward", "optimizer")}
    peak_phase = max(phases, key=lambda k: phases[k].total)
    return Estimate(
        config=config,
        block=tracker.block,
        parameter_count={k: sum(p.numel() for p in m.parameters()) for k, m in owners.items()},
        parameters={k: fwd_end.get(PARAMETERS, k) for k in names},
        buffers=fwd_end.get(BUFFERS),
        gradients={k: bwd_end.get(GRADIENTS, k) for k in names},
        optimizer_state=fwd_end.get(OPTIMIZER_STATE),
        persistent=fwd_end.get(PERSISTENT),
        input=fwd_end.get(INPUT),
        activations={k: fwd_end.get(ACTIVATIONS, k) for k in names},
        stage_activations=[
            fwd_end.get(ACTIVATIONS, f"backbone/stage{i}") for i in range(len(owners["backbone"].residual_stages()))
        ],
        backward_working_set=bwd_peak.get(BACKWARD_TEMPORARIES),
        phases=phases,
        peak=phases[peak_phase],
        peak_phase=peak_phase,
        seconds=seconds,
        operators=operators,
    )


def _grad_hook(tracker: StorageTracker, owner: str):
    def hook(p: torch.Tensor) -> None:
        if p.grad is not None:
            tracker.track(p.grad, GRADIENTS, owner)

    return hook


def _stage_scope_hooks(tracker: StorageTracker, stage: nn.Module, name: str):
    """Activations made inside a residual stage's forward are owned by `backbone/stageN`."""
    contexts = []

    def enter(module, args):
        cm = tracker.scope(name)
        cm.__enter__()
        contexts.append(cm)

    def leave(module, args, output):
        contexts.pop().__exit__(None, None, None)

    return [stage.register_forward_pre_hook(enter), stage.register_forward_hook(leave)]
