"""Series of estimates (memory vs depth, frames or size, one line per wiring — the shape of Re²TAL's Fig. 7), and the
largest frame count or batch that fits a GPU."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from re2tal_cli.errors import BadInputError
from re2tal_cli.memory.estimate import Estimate, estimate, estimate_all
from re2tal_cli.memory.gpus import FRAGMENTATION, Gpu
from re2tal_cli.memory.step import StepConfig, WiringName, build_model
from re2tal_cli.models import get_arch, list_archs


class SweepAxis(enum.StrEnum):
    DEPTH = "depth"  # the archs of --arch's variant at every depth or size, smallest to largest
    FRAMES = "frames"  # halvings of --frames
    SIZE = "size"  # multiples of 32 up to --size


@dataclass
class Series:
    axis: SweepAxis
    points: list[str]  # x labels
    values: list[int | float]  # x values (parameter count for depth)
    estimates: dict[str, list[Estimate]]  # wiring → one estimate per point
    groups: list[int]  # per point: which of the swept configurations it comes from (several archs: one each)

    def to_json(self) -> dict:
        return {
            "axis": self.axis.value,
            "points": self.points,
            "groups": self.groups,
            "x": self.values,
            "peak_bytes": {w: [e.total_peak for e in es] for w, es in self.estimates.items()},
            "estimates": {w: [e.to_json() for e in es] for w, es in self.estimates.items()},
        }


def sweep_points(config: StepConfig, axis: SweepAxis) -> list[tuple[str, float, StepConfig]]:
    axis = SweepAxis(axis)
    if axis is SweepAxis.DEPTH:
        swept = get_arch(config.arch)
        points = []
        for arch in list_archs(include_test=swept.test_only):
            if _variant(arch.name) == _variant(swept.name):
                with torch.device("meta"):
                    n = sum(p.numel() for p in arch.create(num_classes=0).parameters())
                points.append((arch.name, float(n), replace(config, arch=arch.name)))
        return sorted(points, key=lambda p: p[1])
    if axis is SweepAxis.FRAMES:
        with torch.device("meta"):
            m = build_model(config)[0].min_frames
        frames, t = [], config.frames
        while t >= m and t % m == 0 and len(frames) < 6:
            frames.insert(0, t)
            t //= 2
        return [(str(t), float(t), replace(config, frames=t)) for t in frames]
    sizes = sorted({s for s in range(96, config.size + 1, 32)} | {config.size})[-6:]
    return [(f"{s}²", float(s), replace(config, size=s)) for s in sizes]


def _variant(name: str) -> str:
    """An arch's name with its size or depth token starred: the archs of one variant differ only in it (swin3d-t,
    -s, -b; slowfast-r50, -r101, -r152, but not slowfast-r50-4x16 or -mmaction; r3d-18 and r2plus1d-18 differ)."""
    return re.sub(r"(?<=-)(r?\d+|[tsblh])(?=-|$)", "*", name, count=1)


def sweep(
    configs: list[StepConfig],
    axis: SweepAxis,
    wirings: list[WiringName],
    progress: Callable[[int, int], None] | None = None,
) -> Series:
    """The estimates along `axis` from each of `configs` (several archs: their series one after the other, as
    Re²TAL's Fig. 7 sets Swin and SlowFast side by side), every wiring of `wirings`, in one `estimate_all`."""
    per_config = [sweep_points(config, axis) for config in configs]
    points = [point for group in per_config for point in group]
    flat = iter(estimate_all([replace(c, wiring=w) for w in wirings for _, _, c in points], progress=progress))
    estimates = {w.value: [next(flat) for _ in points] for w in wirings}
    groups = [k for k, group in enumerate(per_config) for _ in group]
    return Series(SweepAxis(axis), [p[0] for p in points], [p[1] for p in points], estimates, groups)


def max_fitting(config: StepConfig, gpu: Gpu, what: str) -> tuple[int, Estimate | None]:
    """The largest frame count (a multiple of the backbone's) or batch whose estimated peak keeps the fragmentation
    margin below the GPU's usable memory; (0, None) when not even the smallest fits.

    Memory is close to affine in clip frames B·T (activations grow with it, model states do not): two B=1 estimates
    on short clips give each phase's line and the line a candidate. Long clips grow more slowly than the line (their
    recomputes run in more pieces), so the candidate may be short of the largest as well as past it: estimates step
    from it (~5 % at a time) up to a value that does not fit, or down to one that does, and bisect between the two."""
    if what not in ("frames", "batch"):
        raise BadInputError(f"`largest` must be frames or batch, got {what!r}")
    limit = gpu.usable_bytes * (1 - FRAGMENTATION)
    with torch.device("meta"):
        m = build_model(config)[0].min_frames
    t1 = math.lcm(m, 16)
    e1, e2 = estimate_all([replace(config, batch=1, frames=t1), replace(config, batch=1, frames=2 * t1)])
    x_max = math.inf
    for phase in e1.phases:
        a, b = e1.phases[phase].total, e2.phases[phase].total
        slope = (b - a) / t1
        if slope > 0:
            x_max = min(x_max, t1 + (limit - a) / slope)
        elif a > limit:
            return 0, None
    if x_max == math.inf:
        raise BadInputError("memory does not grow with the clip: no largest frame count or batch")
    unit = m if what == "frames" else 1
    per = config.batch if what == "frames" else config.frames
    n = max(unit, int(x_max // per) // unit * unit)
    step = unit * max(1, n // (20 * unit))

    def fitting(value: int) -> Estimate | None:
        e = estimate(replace(config, **{what: value}))
        return e if e.total_peak <= limit else None

    best = fitting(n)
    if best is not None:
        low, high = n, n + step
        while (e := fitting(high)) is not None:
            low, best, high = high, e, high + step
    else:
        low, high = n - step, n
        while low >= unit and (best := fitting(low)) is None:
            low, high = low - step, low
        low = max(low, 0)  # (0: nothing known to fit yet)
    while high - low > unit:
        middle = low + (high - low) // (2 * unit) * unit
        if (e := fitting(middle)) is not None:
            low, best = middle, e
        else:
            high = middle
    return (low, best) if best is not None else (0, None)
