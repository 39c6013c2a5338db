"""`re2tal extract`: backbone features for feature-based TAL, one safetensors file per video, resumable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

NAME = "extract"
EPILOG = """Examples:

  re2tal extract runs/ft --data thumos/ --out feats/

  re2tal extract runs/rw --data data/synth --out feats/ --mode snippet --clip 16 --stride 4 --batch 16

  re2tal extract runs/ft --data anet/ --out feats/ --mode frames --num-frames 768 --device cuda --amp --json

A rerun with the same settings skips the videos already extracted; failed videos are listed and make the exit code 1.
"""


def main(
    checkpoint: Annotated[str, typer.Argument(help="Backbone checkpoint: a re2tal run dir or checkpoint file.")],
    data: Annotated[Path, typer.Option(help="Dataset directory (annotations.json + videos/), or a folder of videos.")],
    out: Annotated[Path, typer.Option(help="Output folder: <video id>.safetensors per video and index.json.")],
    mode: Annotated[str, typer.Option(help="snippet (Fig. 4a: clips every --stride) or frames (Fig. 4b).")] = "snippet",
    clip: Annotated[int | None, typer.Option(help="Snippet length in frames (default: the backbone's).")] = None,
    stride: Annotated[int | None, typer.Option(help="Frames between snippet starts (default: clip/4).")] = None,
    frame_step: Annotated[int, typer.Option(help="Source frames between the frames of a snippet/window.")] = 1,
    num_frames: Annotated[
        int | None, typer.Option(help="Frames mode: this many frames evenly over each video (default: all).")
    ] = None,
    window: Annotated[int, typer.Option(help="Frames mode: frames per backbone call.")] = 256,
    size: Annotated[int | None, typer.Option(help="Input side in pixels (default: the backbone's).")] = None,
    batch: Annotated[int, typer.Option(help="Snippets per backbone call.")] = 8,
    subset: Annotated[str | None, typer.Option(help="Only this subset of the dataset (default: all).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, …")] = "cpu",
    amp: Annotated[bool, typer.Option("--amp", help="Autocast (bf16 on CPU, fp16 on CUDA).")] = False,
    threads: Annotated[
        int, typer.Option(help="CPU threads for torch (0: torch's default; 1 is fastest on a busy machine).")
    ] = 0,
    force: Annotated[bool, typer.Option("--force", help="Recompute outputs that already exist.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON only.")] = False,
) -> None:
    """Extract backbone features of every video (snippet or frames input), skipping those already done."""
    import torch

    from re2tal_cli.data.extract import ExtractSettings, extract_features

    if threads > 0:
        torch.set_num_threads(threads)

    settings = ExtractSettings(
        mode=mode,
        clip=clip,
        stride=stride,
        frame_step=frame_step,
        num_frames=num_frames,
        window=window,
        size=size,
        batch=batch,
        device=device,
        amp=amp,
    )
    from rich.console import Console

    err = Console(stderr=True)
    with _Progress(err, quiet=as_json) as progress:
        result = extract_features(checkpoint, data, out, settings, subset=subset, force=force, progress=progress)
    summary = result.to_dict()
    summary.update(written=len(result.written), skipped=len(result.skipped))
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        console = Console()
        rate = result.frames / result.seconds if result.seconds > 0 else 0.0
        console.print(
            f"{out}: {len(result.written)} written, {len(result.skipped)} already done, {len(result.failed)} failed "
            f"({result.frames} frames in {result.seconds:.1f} s, {rate:.0f} frames/s)",
            highlight=False,
        )
        for vid, reason in result.failed.items():
            err.print(f"[red]failed[/] {vid}: {reason}", highlight=False)
    if result.failed:
        raise typer.Exit(code=1)


class _Progress:
    """Turns the core's progress events into a rich bar with videos/s and frames/s (on stderr)."""

    def __init__(self, console, quiet: bool):
        self.console, self.quiet = console, quiet
        self.progress = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False

    def __call__(self, event: dict) -> None:
        import time

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if self.quiet:
            if event["event"] == "video" and event["status"] == "failed":
                self.console.print(f"failed {event['id']}: {event['error']}", highlight=False)
            return
        if event["event"] == "start":
            self.progress = Progress(
                TextColumn("extracting"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rates]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("extract", total=event["videos"], rates="")
            self.t0, self.videos, self.frames = time.perf_counter(), 0, 0
            return
        if event["event"] == "frames":
            self.frames += event["count"]
        elif event["event"] == "video":
            self.videos += 1
            if event["status"] == "failed":
                self.progress.console.print(f"[red]failed[/] {event['id']}: {event['error']}", highlight=False)
            self.progress.advance(self.task)
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, rates=f"{self.videos / dt:.2f} videos/s, {self.frames / dt:.0f} frames/s")
