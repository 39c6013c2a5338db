"""`re2tal rewire`: the Typer glue for `re2tal_cli.rewire.rewire`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._options import Arch, Checkpoint, Force, Json

NAME = "rewire"
EPILOG = """Examples:

  re2tal rewire hf://MCG-NJU/videomae-base-finetuned-kinetics --out runs/rw

  re2tal rewire videomae_b.pth --arch vit-b --out runs/rw --alpha 1 --beta 0.1   # Dr²Net's starting point

  re2tal rewire runs/src/model.safetensors --out runs/rw --check --json

  re2tal rewire runs/src/model.safetensors --error-map map.png --grid 6 --check-frames 8 --check-size 64
"""


def main(
    src: Checkpoint,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Output directory for model.safetensors and config.json (not needed with --error-map alone).",
        ),  # fmt: skip
    ] = None,
    arch: Arch = None,
    alpha: Annotated[
        float, typer.Option(metavar="A", help="Dual-residual α (1 with β=0 is the original network).")
    ] = 0.0,
    beta: Annotated[
        float, typer.Option(metavar="B", help="Dual-residual β (> 0 for a reversible network; 1 is Re²TAL).")
    ] = 1.0,
    outside: Annotated[
        str | None,
        typer.Option(
            metavar="WHAT",
            help="keep or recompute: what training keeps of the layers outside the residual stages (stems, first "
            "blocks, fusions, patch merging). Default: recompute.",
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Measure reconstruction and gradient error against ordinary autograd.")
    ] = False,
    check_frames: Annotated[
        int | None, typer.Option(metavar="T", help="Frames of the --check input (default: the arch's).")
    ] = None,
    check_size: Annotated[
        int | None, typer.Option(metavar="S", help="Side of the --check input (default: the arch's).")
    ] = None,
    check_fp64: Annotated[bool, typer.Option("--check-fp64", help="Run --check (and --error-map) in float64.")] = False,
    error_map: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE.png",
            help="Dr²Net's gradient error level over an α × β grid (α 0–1, β 0.1–1) at "
            "the --check input, as a heatmap here and numbers in the report (needs matplotlib).",
        ),  # fmt: skip
    ] = None,
    grid: Annotated[int, typer.Option(metavar="N", help="Points per axis of --error-map.")] = 5,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Rewire a pretrained backbone into a reversible one with the same parameters."""
    import torch

    from re2tal_cli.cli._progress import ProgressBar
    from re2tal_cli.rewire import rewire

    with ProgressBar("error map", quiet=as_json) as bar:
        report = rewire(
            src,
            out,
            arch=arch,
            alpha=alpha,
            beta=beta,
            outside=outside,
            force=force,
            check=check,
            check_frames=check_frames,
            check_size=check_size,
            check_dtype=torch.float64 if check_fp64 else torch.float32,
            error_map=error_map,
            grid=grid,
            progress=bar if error_map is not None else None,
        )
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    _render(report)


def _render(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"rewire {report.arch}: α={report.alpha:g}, β={report.beta:g}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("architecture", f"{report.arch} ({report.arch_from})")
    table.add_row("source", f"{report.source} ({report.source_format})")
    table.add_row("source sha256", report.source_sha256[:16] + "…")
    if report.source_weights is not None:
        ema = " (the EMA weights)" if report.source_weights == "state_dict_ema" else ""
        table.add_row("source weights", f"{report.source_weights}{ema}")
    table.add_row(
        "tensors reused",
        f"{report.source_tensors} tensors, {report.source_values:,} values ({report.parameters:,} parameters, "
        "the rest buffers such as BatchNorm statistics)",
    )
    table.add_row("tensors written", f"{report.written_tensors} tensors, {report.written_values:,} values")
    table.add_row("values equal to source", "yes" if report.values_equal else "[red]no[/red]")
    if report.dropped_keys:
        table.add_row("dropped (not backbone)", f"{len(report.dropped_keys)} keys, e.g. {report.dropped_keys[0]}")
    table.add_row(
        "stages rewired", f"{len(report.stages)} ({sum(report.stages)} blocks: {', '.join(map(str, report.stages))})"
    )
    if report.check is not None:
        c = report.check
        table.add_row("check input", f"{list(c.input_shape)} {c.dtype}")
        table.add_row("reconstruction error", f"{c.reconstruction_error:.2e} (relative, max over stages)")
        table.add_row("gradient error level", f"{c.gradient_error_level:.2e} (smallest atol, rtol=1e-5)")
        table.add_row("max |Δgrad|", f"{c.max_abs_gradient_error:.2e}")
        table.add_row("guard fallbacks", f"{c.fallbacks} of {c.backward_passes} stage backward passes")
    if report.error_map is not None:
        m = report.error_map
        low = min(min(row) for row in m.levels)
        high = max(max(row) for row in m.levels)
        table.add_row("error map", f"{len(m.betas)}×{len(m.alphas)} (β × α), input {list(m.input_shape)} {m.dtype}: "
                      f"levels {low:.1e} … {high:.1e}; at (α, β) = (0, 1): {m.levels[-1][0]:.1e}, at (1, "
                      f"{m.betas[0]:g}): {m.levels[0][-1]:.1e} → {report.error_map_plot}")  # fmt: skip
    if report.out is not None:
        table.add_row("written", f"{report.out}/model.safetensors, {report.out}/config.json")
    Console().print(table)
