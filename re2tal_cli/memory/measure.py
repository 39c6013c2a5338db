"""Measure the memory of real training steps (the step of `memory/step.py`), in a fresh subprocess.

- CUDA: `torch.cuda.max_memory_allocated`, reset after the warm-up step, and per phase.
- CPU: PyTorch's CPU allocator reports every allocation and free to the profiler (`profile_memory=True`); the profiler
  runs from before the model is built, so the running sum of those events is the bytes live in torch tensors, and its
  maximum over the measured step is the CPU counterpart of `max_memory_allocated` (kernel-internal scratch included,
  which the estimate cannot see). The subprocess's peak RSS growth is reported beside it: coarser (the C library's
  heap keeps freed pages, the interpreter and libraries move too), but independent of torch's own bookkeeping.

Each measurement runs in its own process so one run's caches and heap cannot inflate the next.

    python -m re2tal_cli.memory.measure '{"arch": "vit-tiny", "frames": 8, "size": 64, "device": "cpu"}'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field

from re2tal_cli.errors import Re2talError
from re2tal_cli.memory.step import StepConfig

PHASES = ("forward", "backward", "optimizer")


@dataclass
class Measurement:
    config: StepConfig
    device: str  # e.g. "cpu" or "cuda: NVIDIA H100 80GB HBM3"
    method: str  # how `peak` was taken
    peak: int  # bytes allocated at the peak of the measured steps
    phases: dict[str, int]  # peak per phase
    before_step: int  # allocated before the measured step (model, optimizer state, caches)
    reserved: int | None = None  # CUDA: the caching allocator's reserved peak
    rss_growth: int | None = None  # CPU: peak RSS minus RSS before the first step
    seconds_per_step: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {**asdict(self), "config": self.config.to_json()}


def measure(config: StepConfig, steps: int = 2, timeout: float | None = 1800) -> Measurement:
    """Run `steps` training steps (the first is the warm-up) in a subprocess and return the measured peak."""
    if steps < 2:
        raise ValueError("steps must be ≥ 2: the first one is a warm-up")
    cmd = [sys.executable, "-m", "re2tal_cli.memory.measure", json.dumps({**config.to_json(), "steps": steps})]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise Re2talError(f"measured run failed (exit {proc.returncode}): " + " | ".join(tail))
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["config"] = StepConfig.from_json(data["config"])
    return Measurement(**data)


def _run(config: StepConfig, steps: int) -> Measurement:
    """In the subprocess: build, warm up, measure."""
    import torch

    if config.device == "cuda":
        if not torch.cuda.is_available():
            raise Re2talError("`measure` on cuda: no CUDA device")
        return _run_cuda(config, steps)
    return _run_cpu(config, steps)


def _run_cuda(config: StepConfig, steps: int) -> Measurement:
    import time

    import torch

    from re2tal_cli.memory.step import Observer, build_model, check_input_shape, setup, train_step

    class PhasePeaks(Observer):
        def __init__(self):
            self.current, self.peaks = None, {}

        def phase(self, name):
            if self.current in PHASES:
                self.peaks[self.current] = max(self.peaks.get(self.current, 0), torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
            self.current = name

    device = torch.device("cuda")
    with device:
        backbone, head = build_model(config)
    check_input_shape(config, backbone)
    s = setup(config, backbone, head)
    train_step(s, device)  # warm-up: optimizer state, cuDNN/cuBLAS handles, caches
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    observer = PhasePeaks()
    start = time.perf_counter()
    for _ in range(steps - 1):
        train_step(s, device, observer)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / (steps - 1)
    peak = max(observer.peaks.values())
    return Measurement(
        config,
        f"cuda: {torch.cuda.get_device_name()}",
        "torch.cuda.max_memory_allocated",
        peak,
        observer.peaks,
        before,
        reserved=torch.cuda.max_memory_reserved(),
        seconds_per_step=seconds,
    )


def _run_cpu(config: StepConfig, steps: int) -> Measurement:
    import resource
    import time

    from torch.profiler import ProfilerActivity, profile

    from re2tal_cli.memory.step import Observer, build_model, check_input_shape, setup, train_step

    class Markers(Observer):
        def __init__(self, step: int):
            self.step = step

        def phase(self, name):
            mark_phase(self.step, name)

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        backbone, head = build_model(config)
        check_input_shape(config, backbone)
        s = setup(config, backbone, head)
        train_step(s, "cpu", Markers(0))  # warm-up
        rss_before = _rss()
        start = time.perf_counter()
        for k in range(1, steps):
            train_step(s, "cpu", Markers(k))
        seconds = (time.perf_counter() - start) / (steps - 1)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    phases, before = allocator_peaks(prof)
    return Measurement(
        config,
        "cpu",
        "CPU allocator events (torch.profiler profile_memory)",
        max(phases.values()),
        phases,
        before,
        rss_growth=max(0, rss_peak - rss_before),
        seconds_per_step=seconds,
    )


def mark_phase(step: int, phase: str) -> None:
    """A marker in the profile: `phase` (zero_grad, forward, backward, optimizer) of training step `step` begins;
    step 0 is the warm-up, which `allocator_peaks` does not count."""
    from torch.profiler import record_function

    with record_function(f"memprofile:{step}:{phase}"):
        pass


def allocator_peaks(prof) -> tuple[dict[str, int], int]:
    """From a CPU profile with `profile_memory=True` that ran from before the model was built, and `mark_phase`
    markers: (the peak bytes live in torch tensors during each phase of the measured steps, the bytes live when step
    1 began)."""
    events = sorted(
        ((e.start_ns(), e.name(), e.nbytes()) for e in prof.profiler.kineto_results.events()), key=lambda e: e[0]
    )
    live, before, current = 0, None, None
    phases: dict[str, int] = {}
    for _, name, nbytes in events:
        if name == "[memory]":
            live += nbytes
            if current in PHASES:
                phases[current] = max(phases.get(current, 0), live)
        elif name.startswith("memprofile:"):
            _, step, phase = name.split(":")
            if step == "1" and phase == "zero_grad":
                before = live
            current = phase if step != "0" else None
            if current in PHASES:
                phases[current] = max(phases.get(current, 0), live)
    return phases, before or 0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _main(argv: list[str]) -> int:
    data = json.loads(argv[1])
    steps = int(data.pop("steps", 2))
    m = _run(StepConfig.from_json(data), steps)
    print(json.dumps(m.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
