"""`re2tal memprofile`: the Typer glue for `re2tal_cli.memory` (estimate, measure, sweep, GPU verdicts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

NAME = "memprofile"
EPILOG = """Examples:

  re2tal memprofile --arch swin3d-t --frames 1024 --size 224 --gpu a100-40gb

  re2tal memprofile --arch vit-b --frames 512 --size 224 --batch 2 --amp bf16 --gpu rtx-4090 --max frames

  re2tal memprofile --arch swin3d-t --frames 512 --size 224 --sweep depth --gpu gtx-1080-ti --plot fig7.png

  re2tal memprofile --arch swin3d-t --frames 1024 --size 224 --head actionformer --amp bf16 --gpu a100-80gb

  re2tal memprofile --arch vit-s --frames 16 --size 112 --measure --json
"""


def main(
    arch: Annotated[str, typer.Option(help="Architecture name (e.g. vit-b, swin3d-t, slowfast-r50).")],
    frames: Annotated[int | None, typer.Option(help="Frames per clip, T (default: the arch's pretraining T).")] = None,
    size: Annotated[int | None, typer.Option(help="Crop side S in pixels (default: the arch's).")] = None,
    batch: Annotated[int, typer.Option(help="Clips per step, B.")] = 1,
    wiring: Annotated[str, typer.Option(help="plain, checkpoint, reversible or all.")] = "all",
    amp: Annotated[str, typer.Option(help="Autocast: none, bf16 (CPU/CUDA) or fp16 (CUDA).")] = "none",
    optimizer: Annotated[str, typer.Option(help="adamw (2 states per parameter) or sgd (momentum: 1).")] = "adamw",
    drop_path: Annotated[float, typer.Option(help="Backbone stochastic depth (it changes what is kept).")] = 0.1,
    head: Annotated[
        str,
        typer.Option(help="Localizer trained on the features: none or actionformer (THUMOS-14 config, end to end)."),
    ] = "none",
    gpu: Annotated[
        str | None, typer.Option(help="GPU from the catalogue (docs/memprofile.md), e.g. a100-40gb.")
    ] = None,
    gpu_mem: Annotated[float | None, typer.Option(help="Usable GPU memory in GiB, instead of --gpu.")] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Device of the step: cuda (estimate default) or cpu (--measure default without CUDA)."),
    ] = None,
    measure: Annotated[bool, typer.Option(help="Also run real training steps and report the measured peak.")] = False,
    sweep: Annotated[str | None, typer.Option(help="Series of estimates vs depth, frames or size.")] = None,
    plot: Annotated[Path | None, typer.Option(help="With --sweep: write the figure here (needs matplotlib).")] = None,
    max_: Annotated[
        str | None, typer.Option("--max", help="With --gpu/--gpu-mem: the largest frames or batch that fits.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON, with every component.")] = False,
) -> None:
    """Will this training configuration fit my GPU? Estimate (and measure) plain vs checkpoint vs reversible."""
    from re2tal_cli.errors import BadInputError
    from re2tal_cli.memory import gpus
    from re2tal_cli.memory.heads import HeadName
    from re2tal_cli.memory.step import WIRINGS, StepConfig, WiringName
    from re2tal_cli.models import get_arch

    spec = get_arch(arch)
    for name, value in (("--frames", frames), ("--size", size), ("--batch", batch)):
        if value is not None and value <= 0:
            raise BadInputError(f"{name} must be a positive integer, got {value}")
    if gpu is not None and gpu_mem is not None:
        raise BadInputError("give --gpu or --gpu-mem, not both")
    target = gpus.get_gpu(gpu) if gpu is not None else gpus.custom_gpu(gpu_mem) if gpu_mem is not None else None
    if max_ is not None and target is None:
        raise BadInputError("--max needs a GPU: add --gpu NAME or --gpu-mem GiB")
    if plot is not None and sweep is None:
        raise BadInputError("--plot draws a --sweep: add --sweep depth|frames|size")
    if wiring == "all":
        wirings = list(WIRINGS)
    else:
        try:
            wirings = [WiringName(wiring)]
        except ValueError:
            raise BadInputError(f"--wiring must be plain, checkpoint, reversible or all, got {wiring!r}") from None
    if head != "none" and head not in {h.value for h in HeadName}:
        raise BadInputError(f"--head must be none or {', '.join(HeadName)}, got {head!r}")
    if device is None:
        import torch

        device = "cpu" if measure and not torch.cuda.is_available() else "cuda"
    base = StepConfig(
        arch,
        frames if frames is not None else spec.input.num_frames,
        size if size is not None else spec.input.image_size,
        batch,
        wirings[0],
        amp,
        optimizer,
        drop_path,
        device,
        None if head == "none" else head,
    )
    if sweep is not None:
        _sweep(base, sweep, wirings, target, plot, as_json)
        return
    report = _profile(base, wirings, target, measure, max_)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _render(report)


def _profile(base, wirings, target, measure: bool, max_: str | None) -> dict:
    from dataclasses import replace

    from re2tal_cli.memory import gpus
    from re2tal_cli.memory.estimate import estimate_all
    from re2tal_cli.memory.measure import measure as run_measure
    from re2tal_cli.memory.sweep import max_fitting

    configs = [replace(base, wiring=w) for w in wirings]
    rows = []
    for config, e in zip(configs, estimate_all(configs), strict=True):
        row = {"wiring": config.wiring.value, "estimate": e.to_json()}
        if target is not None:
            v = gpus.verdict(e.total_peak, target)
            row["gpu"] = {"verdict": v.label, "headroom_bytes": v.headroom, "usable_bytes": v.usable}
        if max_ is not None:
            n, _ = max_fitting(config, target, max_)
            row["max"] = {max_: n}
        if measure:
            _check_measurable(e.total_peak, config.device)
            m = run_measure(config)
            row["measured"] = m.to_json()
            row["relative_error"] = (e.total_peak - m.peak) / m.peak
        rows.append(row)
    return {
        "config": base.to_json() | {"wiring": [w.value for w in wirings]},
        "gpu": None if target is None else {"name": target.name, "usable_bytes": target.usable_bytes},
        "wirings": rows,
    }


def _check_measurable(peak: int, device: str) -> None:
    """Refuse a measured run that would not fit this machine (it would swap or be killed, not measure)."""
    from re2tal_cli.errors import BadInputError

    if device == "cpu":
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available = int(info["MemAvailable"].split()[0]) * 1024
    else:
        import torch

        available, _ = torch.cuda.mem_get_info()
    if peak > 0.8 * available:
        raise BadInputError(
            f"--measure: the estimated peak {peak / 2**30:.1f} GiB exceeds 80 % of the {available / 2**30:.1f} GiB "
            f"available on this {device}; measure a smaller configuration (--frames, --size, --batch)"
        )


def _sweep(base, axis: str, wirings, target, plot: Path | None, as_json: bool) -> None:
    from re2tal_cli.errors import BadInputError
    from re2tal_cli.memory.sweep import SweepAxis, sweep

    try:
        axis = SweepAxis(axis)
    except ValueError:
        raise BadInputError(f"--sweep must be depth, frames or size, got {axis!r}") from None
    series = sweep(base, axis, wirings)
    if plot is not None:
        _plot(series, target, plot)
    if as_json:
        data = series.to_json() | {
            "gpu": None if target is None else {"name": target.name, "usable_bytes": target.usable_bytes}
        }
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    title = f"memprofile sweep over {axis.value}: peak GiB per wiring"
    if target is not None:
        title += f" (limit: {target.name}, {target.usable_bytes / 2**30:.1f} GiB usable)"
    table = Table(title=title)
    table.add_column(axis.value)
    for w in series.estimates:
        table.add_column(w, justify="right")
    for i, point in enumerate(series.points):
        cells = []
        for es in series.estimates.values():
            peak = es[i].total_peak
            over = target is not None and peak > target.usable_bytes
            cells.append(f"[red]{peak / 2**30:.2f} OOM[/red]" if over else f"{peak / 2**30:.2f}")
        table.add_row(point, *cells)
    Console().print(table)
    if plot is not None:
        Console().print(f"figure: {plot}")


def _plot(series, target, out: Path) -> None:
    from re2tal_cli.errors import BadInputError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BadInputError("--plot needs matplotlib: pip install 're2tal[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    x = list(range(len(series.points)))
    for wiring, es in series.estimates.items():
        y = [e.total_peak / 2**30 for e in es]
        (line,) = ax.plot(x, y, marker="o", label=wiring)
        if target is not None:
            over = [(i, v) for i, v in zip(x, y, strict=True) if v * 2**30 > target.usable_bytes]
            if over:
                ax.scatter(*zip(*over, strict=True), marker="x", s=80, color=line.get_color(), zorder=3)
    if target is not None:
        ax.axhline(target.usable_bytes / 2**30, color="black", linestyle="--", label=f"{target.name} usable")
    ax.set_xticks(x, series.points, rotation=30 if series.axis.value == "depth" else 0)
    ax.set_xlabel({"depth": "backbone", "frames": "frames per clip", "size": "crop size"}[series.axis.value])
    ax.set_ylabel("peak training memory (GiB)")
    c = next(iter(series.estimates.values()))[0].config
    setting = f"B={c.batch}" + ("" if series.axis.value == "frames" else f", T={c.frames}")
    setting += "" if series.axis.value == "size" else f", {c.size}²"
    setting += f", amp {c.amp.value}, {c.optimizer.value}" + (f", + {c.head.value}" if c.head is not None else "")
    ax.set_title(f"estimated peak per training step (× = out of memory)\n{setting}", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}" if abs(n) >= 2**30 / 100 else f"{n / 2**20:.1f} MiB"


def _render(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = report["config"]
    title = (
        f"memprofile {c['arch']}: B={c['batch']} × {c['frames']} × {c['size']}², amp {c['amp']}, {c['optimizer']}, "
        f"{c['device']} allocator model — GiB"
    )
    if c["head"] is not None:
        title = title.replace(":", f" + {c['head']}:", 1)
    table = Table(title=title)
    table.add_column("component")
    for row in report["wirings"]:
        table.add_column(row["wiring"], justify="right")
    ests = [row["estimate"] for row in report["wirings"]]
    b = [e["bytes"] for e in ests]

    def add(label: str, values: list[int]) -> None:
        table.add_row(label, *(_gib(v) for v in values))

    with_head = "head" in b[0]["parameters"]
    add("parameters", [sum(x["parameters"].values()) for x in b])
    if with_head:
        add("  of which head", [x["parameters"]["head"] for x in b])
    add("gradients", [sum(x["gradients"].values()) for x in b])
    add("optimizer state", [x["optimizer_state"] for x in b])
    add("input clip", [x["input"] for x in b])
    add("activations kept for backward", [sum(x["activations_kept"].values()) for x in b])
    if with_head:
        add("  of which head", [x["activations_kept"]["head"] for x in b])
    add("  of which inside residual stages", [sum(x["activations_kept_per_stage"]) for x in b])
    add("backward working set", [x["backward_working_set"] for x in b])
    for phase in ("forward", "backward", "optimizer"):
        add(f"peak during {phase}", [e["phases"][phase]["peak"] for e in ests])
    table.add_row(
        "[bold]peak[/bold]",
        *(f"[bold]{_gib(x['peak'])}[/bold] ({e['peak_phase']})" for x, e in zip(b, ests, strict=True)),
    )
    rows = report["wirings"]
    if report["gpu"] is not None:
        g = report["gpu"]
        table.add_row(
            f"{g['name']} ({_gib(g['usable_bytes'])} usable)",
            *(_verdict_cell(r["gpu"]) for r in rows),
        )
    if any("max" in r for r in rows):
        table.add_row("largest that fits", *(", ".join(f"{k} {v}" for k, v in r["max"].items()) for r in rows))
    if any("measured" in r for r in rows):
        table.add_row("measured peak", *(_gib(r["measured"]["peak"]) for r in rows))
        table.add_row("estimate error", *(f"{100 * r['relative_error']:+.1f} %" for r in rows))
    Console().print(table)
    if any("measured" in r for r in rows):
        Console().print(f"note: measured with {rows[0]['measured']['method']} on {rows[0]['measured']['device']}")


def _verdict_cell(v: dict) -> str:
    color = {"fits": "green", "tight": "yellow", "does not fit": "red"}[v["verdict"]]
    return f"[{color}]{v['verdict']}[/{color}] ({_gib(v['headroom_bytes'])})"
