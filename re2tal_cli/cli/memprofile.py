"""`re2tal memprofile`: the Typer glue for `re2tal_cli.memprofile.memprofile`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._options import Csv, Json

NAME = "memprofile"
EPILOG = """Examples:

  re2tal memprofile --arch swin3d-t --frames 1024 --size 224 --gpu a100-40gb

  re2tal memprofile --arch vit-b --frames 512 --size 224 --batch 2 --amp bf16 --gpu rtx-4090 --max frames

  re2tal memprofile --arch swin3d-t,slowfast-r50 --frames 1024 --sweep depth --gpu gtx-1080-ti,a100-80gb --plot f7.png

  re2tal memprofile --arch swin3d-t --frames 1024 --size 224 --head actionformer --amp bf16 --gpu a100-80gb

  re2tal memprofile --arch vit-s --frames 16 --size 112 --measure --json

  re2tal memprofile --arch vit-b --frames 512 --sweep frames --csv frames.csv
"""


def main(
    arch: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help="Architecture name (e.g. vit-b, swin3d-t, slowfast-r50); with --sweep depth, several: a,b.",
        ),
    ],
    frames: Annotated[
        int | None, typer.Option(metavar="T", help="Frames per clip (default: the arch's pretraining T).")
    ] = None,
    size: Annotated[int | None, typer.Option(metavar="S", help="Crop side in pixels (default: the arch's).")] = None,
    batch: Annotated[int, typer.Option(metavar="B", help="Clips per step.")] = 1,
    wiring: Annotated[str, typer.Option(metavar="NAME", help="plain, checkpoint, reversible or all.")] = "all",
    amp: Annotated[str, typer.Option(metavar="MODE", help="Autocast: none, bf16 (CPU/CUDA) or fp16 (CUDA).")] = "none",
    optimizer: Annotated[
        str, typer.Option(metavar="NAME", help="adamw (2 states per parameter) or sgd (momentum: 1).")
    ] = "adamw",
    drop_path: Annotated[
        float, typer.Option(metavar="P", help="Backbone stochastic depth (it changes what is kept).")
    ] = 0.1,
    head: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help="Localizer trained on the features, in its default config: none, actionformer (THUMOS-14), vsgn or "
            "gtad (ActivityNet, 100 snippets).",
        ),
    ] = "none",
    outside: Annotated[
        str | None,
        typer.Option(
            metavar="WHAT",
            help="keep or recompute: what checkpoint and reversible steps keep of the layers outside the residual "
            "stages (stems, first blocks, fusions, patch merging). Default: recompute.",
        ),
    ] = None,
    lofi: Annotated[
        str | None,
        typer.Option(
            metavar="MODE",
            help="s, t or st: the input LoFi-E2E's configuration trains on (r_s 2; r_t 4; r_s √2 and r_t 2) instead "
            "of --frames × --size.",
        ),
    ] = None,
    gpu: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="GPU from the catalogue (docs/memprofile.md), e.g. a100-40gb; with --sweep, several: lines a,b.",
        ),
    ] = None,
    gpu_mem: Annotated[
        float | None, typer.Option(metavar="GIB", help="Usable GPU memory in GiB, instead of --gpu.")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            metavar="DEVICE",
            help="Device of the step: cuda (estimate default) or cpu (--measure default without CUDA).",
        ),
    ] = None,
    measure: Annotated[
        bool, typer.Option("--measure", help="Also run real training steps and report the measured peak.")
    ] = False,
    sweep: Annotated[
        str | None, typer.Option(metavar="AXIS", help="Series of estimates vs depth, frames or size.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(metavar="FILE.png", help="With --sweep: write the figure here (needs matplotlib).")
    ] = None,
    largest: Annotated[
        str | None,
        typer.Option("--max", metavar="WHAT", help="With --gpu/--gpu-mem: the largest frames or batch that fits."),
    ] = None,
    as_json: Json = False,
    csv: Csv = None,
) -> None:
    """Will this training configuration fit my GPU? Estimate (and measure) plain vs checkpoint vs reversible."""
    from re2tal_cli.cli._progress import ProgressBar
    from re2tal_cli.fileio import check_table_path, write_table_atomic
    from re2tal_cli.memprofile import memprofile, report_table

    if csv is not None:
        check_table_path(csv)

    with ProgressBar("memprofile", quiet=as_json) as bar:
        report = memprofile(
            arch,
            frames=frames,
            size=size,
            batch=batch,
            wiring=wiring,
            amp=amp,
            optimizer=optimizer,
            drop_path=drop_path,
            head=head,
            outside=outside,
            lofi=lofi,
            gpu=gpu,
            gpu_mem=gpu_mem,
            device=device,
            measure=measure,
            sweep=sweep,
            plot=plot,
            largest=largest,
            progress=lambda done, total, what: bar(done, total, what),
        )
    if csv is not None:
        write_table_atomic(csv, report_table(report))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    if sweep is not None:
        _render_sweep(report)
    else:
        _render(report)
    if csv is not None:
        typer.echo(f"table written to {csv}")


def _render_sweep(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    targets = report["gpu"] if isinstance(report["gpu"], list) else [report["gpu"]] if report["gpu"] else []
    target = min(targets, key=lambda t: t["usable_bytes"], default=None)
    title = f"memprofile sweep over {report['axis']}: peak GiB per wiring"
    if target is not None:
        title += f" (limit: {target['name']}, {target['usable_bytes'] / 2**30:.1f} GiB usable)"
    table = Table(title=title)
    table.add_column(report["axis"])
    for w in report["peak_bytes"]:
        table.add_column(w, justify="right")
    for i, point in enumerate(report["points"]):
        cells = []
        for peaks in report["peak_bytes"].values():
            over = target is not None and peaks[i] > target["usable_bytes"]
            cells.append(f"[red]{peaks[i] / 2**30:.2f} OOM[/red]" if over else f"{peaks[i] / 2**30:.2f}")
        table.add_row(point, *cells)
    Console().print(table)
    if report["plot"] is not None:
        Console().print(f"figure: {report['plot']}", markup=False)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}" if abs(n) >= 2**30 / 100 else f"{n / 2**20:.1f} MiB"


def _render(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = report["config"]
    title = (
        f"memprofile {c['arch']}: B={c['batch']} × {c['frames']} × {c['size']}², amp {c['amp']}, {c['optimizer']}, "
        f"{c['device']} allocator model — GiB; checkpoint and reversible {c['outside']} the layers outside the "
        "residual stages"
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
