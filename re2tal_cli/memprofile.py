"""`memprofile`: will a training configuration fit a GPU? Estimates (fake tensors, seconds) and measurements (real
steps in a subprocess) of plain, checkpointed and reversible training steps, a sweep over depth, frames or size,
and the largest clip or batch that fits. The machinery is in `memory/`; this module turns a request into it.

    from re2tal_cli.memprofile import memprofile
    report = memprofile("swin3d-t", frames=1024, size=224, head="actionformer", gpu="a100-40gb")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from re2tal_cli.errors import BadInputError
from re2tal_cli.text import one_of

Progress = Callable[[int, int | None, str], None]


def memprofile(
    arch: str,
    frames: int | None = None,
    size: int | None = None,
    batch: int = 1,
    wiring: str = "all",
    amp: str = "none",
    optimizer: str = "adamw",
    drop_path: float = 0.1,
    head: str = "none",
    outside: str | None = None,
    lofi: str | None = None,
    gpu: str | None = None,
    gpu_mem: float | None = None,
    device: str | None = None,
    measure: bool = False,
    sweep: str | None = None,
    plot: str | os.PathLike | None = None,
    largest: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The memory report of one training configuration (every wiring of `wiring`), or with `sweep` the series of
    estimates along depth, frames or size (with `plot`: its figure). Everything is checked before any estimate.

    `outside` (keep or recompute): what checkpoint and reversible steps keep of the layers outside the residual
    stages (default: recompute; plain keeps everything). `lofi` (s, t or st): the input that LoFi-E2E configuration
    trains on (the paper's factors) instead of `frames` × `size`. `frames`/`size` default to the arch's pretraining
    input; `device` to cuda, or cpu for a measurement without CUDA. `largest` ("frames" or "batch", needs a GPU): the
    largest value that fits. `progress(done, total, what)` is told as estimates and measurements complete. The
    report's keys: config, gpu, wirings (or the sweep's)."""
    from re2tal_cli.memory import gpus
    from re2tal_cli.memory.head_loss import HeadName
    from re2tal_cli.memory.step import WIRINGS, StepConfig, WiringName
    from re2tal_cli.memory.sweep import SweepAxis
    from re2tal_cli.models import get_arch

    archs = arch.split(",")
    spec = get_arch(archs[0])
    for name in archs[1:]:
        get_arch(name)
    if gpu is not None and gpu_mem is not None:
        raise BadInputError("give `gpu` or `gpu_mem`, not both")
    targets = [gpus.get_gpu(name) for name in gpu.split(",")] if gpu is not None else []
    if gpu_mem is not None:
        targets = [gpus.custom_gpu(gpu_mem)]
    if len(targets) > 1 and sweep is None:
        raise BadInputError("several GPUs (`gpu` a, b) are lines on a `sweep`'s figure; a report takes one")
    if len(archs) > 1 and sweep != "depth":
        raise BadInputError("several archs (`arch` a, b) need `sweep` depth: each one's series, side by side")
    target = targets[0] if targets else None
    if largest is not None and target is None:
        raise BadInputError("`largest` needs a GPU: give `gpu` or `gpu_mem`")
    if largest is not None and largest not in ("frames", "batch"):
        raise BadInputError(f"`largest` must be frames or batch, got {largest!r}")
    if plot is not None and sweep is None:
        raise BadInputError("`plot` draws a `sweep`: give one (depth, frames or size)")
    if sweep is not None and (measure or largest is not None):
        raise BadInputError("`sweep` estimates a series: it takes neither `measure` nor `largest`")
    axis = _choice(SweepAxis, sweep, "sweep") if sweep is not None else None
    full_frames = frames if frames is not None else spec.input.num_frames
    full_size = size if size is not None else spec.input.image_size
    frames, size = full_frames, full_size
    if lofi is not None:
        if axis is not None and axis.value in ("frames", "size"):
            raise BadInputError(f"`lofi` reduces frames and size: `sweep` {axis.value} would undo it")
        frames, size = _lofi_input(lofi, full_frames, full_size)
    wirings = list(WIRINGS) if wiring == "all" else [_choice(WiringName, wiring, "wiring", extra=("all",))]
    head_name = None if head == "none" else _choice(HeadName, head, "head", extra=("none",))
    if plot is not None:
        from re2tal_cli.plotting import check_plot_path

        check_plot_path(plot)
    if device is None:
        import torch

        device = "cpu" if measure and not torch.cuda.is_available() else "cuda"
    base = StepConfig(
        archs[0],
        frames,
        size,
        batch,
        wirings[0],
        amp,
        optimizer,
        drop_path,
        device,
        head_name,
        outside,
    )
    gpu_json = None if target is None else {"name": target.name, "usable_bytes": target.usable_bytes}
    notify = progress or (lambda done, total, what: None)
    if axis is not None:
        from re2tal_cli.memory.sweep import sweep as run_sweep

        configs = [replace(base, arch=name) for name in archs]
        series = run_sweep(configs, axis, wirings, lambda done, total: notify(done, total, "estimates"))
        if plot is not None:
            from re2tal_cli.memory.plot import plot_sweep

            plot_sweep(series, targets, plot)
        if len(targets) > 1:
            gpu_json = [{"name": t.name, "usable_bytes": t.usable_bytes} for t in targets]
        return series.to_json() | {"gpu": gpu_json, "plot": None if plot is None else str(plot)}
    return {
        "config": base.to_json()
        | {
            "wiring": [w.value for w in wirings],
            "outside": outside or "recompute",
            "lofi": None if lofi is None else {"mode": lofi, "full_frames": full_frames, "full_size": full_size},
        },  # fmt: skip
        "gpu": gpu_json,
        "wirings": _profile(base, wirings, target, measure, largest, notify),
    }


def _lofi_input(mode: str, frames: int, size: int) -> tuple[int, int]:
    """(frames, size) of LoFi-E2E's configuration `mode` (s, t, st; the paper's factors) for a full input."""
    from re2tal_cli.train.lofi import fidelities, reduced_size
    from re2tal_cli.train.recipe import Lofi, LofiMode

    by_name = {f.name: f for f in fidelities(Lofi(mode=LofiMode.CYCLIC_LONG))}
    if mode not in by_name:
        raise BadInputError(f"`lofi` must be s, t or st, got {mode!r}")
    fidelity = by_name[mode]
    if frames % fidelity.temporal:
        raise BadInputError(f"`lofi` {mode} keeps every {fidelity.temporal}th frame: {frames} frames do not divide")
    return reduced_size(frames, size, fidelity)


def report_table(report: dict[str, Any]):
    """A `memprofile` report as a pandas DataFrame, in bytes.

    A sweep: one row per (point, wiring) — `point` (the arch, frame count or size), `x` (its value: parameters,
    frames, pixels), `group` (which arch of several), `wiring`, `peak_bytes`. A report: one row per wiring with the
    estimate's components, the peak of each phase, and, when asked for, the GPU verdict, the largest frames or batch
    that fits and the measured peak."""
    import pandas as pd

    if "axis" in report:
        records = [
            {"point": point, "x": x, "group": group, "wiring": wiring, "peak_bytes": peaks[k]}
            for wiring, peaks in report["peak_bytes"].items()
            for k, (point, x, group) in enumerate(zip(report["points"], report["x"], report["groups"], strict=True))
        ]
        return pd.DataFrame.from_records(records, columns=["point", "x", "group", "wiring", "peak_bytes"])
    records = []
    for row in report["wirings"]:
        estimate = row["estimate"]
        b = estimate["bytes"]
        record = {
            "wiring": row["wiring"],
            "outside": row["outside"],
            "parameters": sum(b["parameters"].values()),
            "gradients": sum(b["gradients"].values()),
            "optimizer_state": b["optimizer_state"],
            "input": b["input"],
            "activations_kept": sum(b["activations_kept"].values()),
            "activations_kept_in_stages": sum(b["activations_kept_per_stage"]),
            "backward_working_set": b["backward_working_set"],
            **{f"peak_{phase}": value["peak"] for phase, value in estimate["phases"].items()},
            "peak": b["peak"],
            "peak_phase": estimate["peak_phase"],
        }
        if "gpu" in row:
            record |= {"verdict": row["gpu"]["verdict"], "headroom_bytes": row["gpu"]["headroom_bytes"]}
        record |= {f"max_{what}": n for what, n in row.get("max", {}).items()}
        if "measured" in row:
            record |= {"measured_peak": row["measured"]["peak"], "relative_error": row["relative_error"]}
        records.append(record)
    return pd.DataFrame.from_records(records)


def _choice(kind, value: str, param: str, extra: tuple[str, ...] = ()):
    try:
        return kind(value)
    except ValueError:
        raise BadInputError(f"`{param}` must be {one_of([*extra, *(k.value for k in kind)])}, got {value!r}") from None


def _profile(base, wirings, target, measure: bool, largest: str | None, notify: Progress) -> list[dict[str, Any]]:
    from re2tal_cli.memory import gpus
    from re2tal_cli.memory.estimate import estimate_all
    from re2tal_cli.memory.measure import measure as run_measure
    from re2tal_cli.memory.sweep import max_fitting

    configs = [replace(base, wiring=w) for w in wirings]
    estimates = estimate_all(configs, progress=lambda done, total: notify(done, total, "estimates"))
    if measure:
        for e in estimates:
            check_measurable(e.total_peak, e.config.device)
    rows = []
    for k, (config, e) in enumerate(zip(configs, estimates, strict=True)):
        row: dict[str, Any] = {
            "wiring": config.wiring.value,
            "outside": config.backbone_wiring.outside.value,
            "estimate": e.to_json(),
        }
        if target is not None:
            v = gpus.verdict(e.total_peak, target)
            row["gpu"] = {"verdict": v.label, "headroom_bytes": v.headroom, "usable_bytes": v.usable}
        if largest is not None:
            notify(k, len(configs), f"largest {largest} that fits")
            n, _ = max_fitting(config, target, largest)
            row["max"] = {largest: n}
        if measure:
            notify(k, len(configs), f"measuring {config.wiring.value}")
            m = run_measure(config)
            row["measured"] = m.to_json()
            row["relative_error"] = (e.total_peak - m.peak) / m.peak
        rows.append(row)
    if largest is not None or measure:
        notify(len(configs), len(configs), "done")
    return rows


def check_measurable(peak: int, device: str) -> None:
    """Refuse a measured run that would not fit this machine (it would swap or be killed, not measure)."""
    if device == "cpu":
        available = _available_cpu_memory()
    else:
        import torch

        if not torch.cuda.is_available():
            raise BadInputError("`measure` on cuda: no CUDA device here; measure on cpu")
        available, _ = torch.cuda.mem_get_info()
    if peak > 0.8 * available:
        raise BadInputError(
            f"`measure`: the estimated peak {peak / 2**30:.1f} GiB exceeds 80 % of the {available / 2**30:.1f} GiB "
            f"available on this {device}; measure a smaller configuration (`frames`, `size`, `batch`)"
        )


def _available_cpu_memory() -> int:
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        info = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        return int(info["MemAvailable"].split()[0]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
