"""`re2tal detect`: the Typer glue for `re2tal_cli.detect.detect`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._options import Device, Json

NAME = "detect"
EPILOG = """Examples:

  re2tal detect runs/tal match.mp4

  re2tal detect runs/tal match.mp4 --plot timeline.png --gt data/synth --threshold 0.2

  re2tal detect runs/tal match.mkv --out detections.json --top-k 20 --json

  re2tal detect hf://org/tal-run match.mp4
"""


def main(
    run: Annotated[
        str, typer.Argument(metavar="RUN", help="A train-tal run directory, or hf://ORG/REPO[@REVISION] (hub push).")
    ],
    video: Annotated[
        Path, typer.Argument(metavar="VIDEO", help="A video file (any container PyAV opens) or a frame folder.")
    ],
    out: Annotated[Path | None, typer.Option(metavar="FILE.json", help="Also write the detections here.")] = None,
    plot: Annotated[
        Path | None, typer.Option(metavar="FILE.png", help="A timeline of the detections per class (needs matplotlib).")
    ] = None,
    gt: Annotated[
        Path | None,
        typer.Option(metavar="ANNOTATIONS", help="Ground truth to draw beside (annotations or dataset dir)."),
    ] = None,
    threshold: Annotated[float | None, typer.Option(metavar="S", help="Keep detections scoring above S.")] = None,
    top_k: Annotated[int | None, typer.Option(metavar="K", help="Keep the K best detections.")] = None,
    checkpoint: Annotated[str, typer.Option(metavar="NAME", help="best (default; else last) or last.")] = "best",
    device: Device = "cpu",
    as_json: Json = False,
) -> None:
    """Detect actions in one video with a trained run: segments in seconds with labels and scores."""
    from re2tal_cli.detect import detect

    result = detect(run, video, out=out, plot=plot, gt=gt, threshold=threshold, top_k=top_k, checkpoint=checkpoint,
                    device=device)  # fmt: skip
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from re2tal_cli.text import plural

    table = Table(title=f"{video.name}: {plural(len(result['detections']), 'detection')} ({result['duration']:.1f} s)")
    for name in ("start (s)", "end (s)", "label", "score"):
        table.add_column(name, justify="left" if name == "label" else "right")
    for d in result["detections"][:50]:
        table.add_row(f"{d['segment'][0]:.2f}", f"{d['segment'][1]:.2f}", d["label"], f"{d['score']:.3f}")
    console = Console()
    console.print(table)
    if len(result["detections"]) > 50:
        console.print(f"… {len(result['detections']) - 50} more (--json or --out for all)", markup=False)
    for what, path in (("detections", out), ("timeline", plot)):
        if path is not None:
            console.print(f"{what}: {path}", markup=False)
