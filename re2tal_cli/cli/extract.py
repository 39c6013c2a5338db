"""`re2tal extract`: backbone features for feature-based TAL, one safetensors file per video, resumable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._options import Arch, Checkpoint, Device, Json

NAME = "extract"
EPILOG = """Examples:

  re2tal extract runs/ft --data thumos/ --out feats/

  re2tal extract runs/rw --data data/synth --out feats/ --mode snippet --clip 16 --stride 4 --batch 16

  re2tal extract runs/ft --data anet/ --out feats/ --mode frames --num-frames 768 --device cuda --amp --json

A rerun with the same settings skips the videos already extracted; failed videos are listed and make the exit code 1.
"""


def main(
    checkpoint: Checkpoint,
    data: Annotated[
        Path, typer.Option(metavar="DIR", help="Dataset directory (annotations.json + videos/), or a folder of videos.")
    ],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Output folder: <video id>.safetensors and index.json.")],
    arch: Arch = None,
    mode: Annotated[
        str, typer.Option(metavar="MODE", help="snippet (Fig. 4a: clips every --stride) or frames (Fig. 4b).")
    ] = "snippet",
    clip: Annotated[
        int | None, typer.Option(metavar="N", help="Snippet length in frames (default: the backbone's).")
    ] = None,
    stride: Annotated[
        int | None, typer.Option(metavar="N", help="Frames between snippet starts (default: clip/4).")
    ] = None,
    frame_step: Annotated[
        int, typer.Option(metavar="N", help="Source frames between the frames of a snippet/window.")
    ] = 1,
    num_frames: Annotated[
        int | None,
        typer.Option(metavar="N", help="Frames mode: this many frames evenly over each video (default: all)."),
    ] = None,
    window: Annotated[int, typer.Option(metavar="N", help="Frames mode: frames per backbone call.")] = 256,
    size: Annotated[
        int | None, typer.Option(metavar="S", help="Input side in pixels (default: the backbone's).")
    ] = None,
    batch: Annotated[int, typer.Option(metavar="N", help="Snippets per backbone call.")] = 8,
    subset: Annotated[
        str | None, typer.Option(metavar="NAME", help="Only this subset of the dataset (default: all).")
    ] = None,
    device: Device = "cpu",
    amp: Annotated[bool, typer.Option("--amp", help="Autocast (bf16 on CPU, fp16 on CUDA).")] = False,
    threads: Annotated[
        int,
        typer.Option(metavar="N", help="CPU threads for torch (0: torch's default; 1 is fastest on a busy machine)."),
    ] = 0,
    force: Annotated[bool, typer.Option("--force", help="Recompute outputs that already exist.")] = False,
    as_json: Json = False,
) -> None:
    """Extract backbone features of every video (snippet or frames input), skipping those already done."""
    import torch

    from re2tal_cli.cli._progress import ProgressBar
    from re2tal_cli.extract import ExtractSettings, extract_features
    from re2tal_cli.train.distributed import launched

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
    main_process = launched().is_main  # under torchrun, rank 0 alone draws its bar and reports; failures all do
    with ProgressBar("extracting", quiet=as_json or not main_process, transient=False) as bar:
        events = _Events(bar, arch_given=arch is not None or not main_process)
        result = extract_features(
            checkpoint, data, out, settings, arch=arch, subset=subset, force=force, progress=events
        )
    summary = result.to_dict()
    summary.update(written=len(result.written), skipped=len(result.skipped))
    if main_process and as_json:
        typer.echo(json.dumps(summary))
    elif main_process:
        from rich.console import Console

        processed = len(result.written) + len(result.failed)
        rates = (
            f"{result.frames} frames in {result.seconds:.1f} s, {result.frames / result.seconds:.0f} frames/s"
            if processed and result.seconds > 0
            else "nothing to extract"
        )
        failed = f"{len(result.failed)} failed (listed above)" if result.failed else "0 failed"
        Console().print(
            f"{out}: {len(result.written)} written, {len(result.skipped)} already done, {failed} ({rates})",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if result.failed:
        raise typer.Exit(code=1)


class _Events:
    """The core's progress events → the bar (videos, with the rate of the videos actually processed) and one line
    per failure, printed once, as it happens (also with --json: stdout keeps the JSON)."""

    def __init__(self, bar, arch_given: bool):
        self.bar, self.arch_given = bar, arch_given

    def __call__(self, event: dict) -> None:
        import time

        kind = event["event"]
        if kind == "start":
            if not self.arch_given:
                self.bar.log(f"architecture: {event['arch']} (from the {event['arch_from']})")
            self.total, self.done, self.processed, self.frames = event["videos"], 0, 0, 0
            self.t0 = time.perf_counter()
            self.bar(0, self.total)
            return
        if kind == "frames":
            self.frames += event["count"]
        elif kind == "video":
            self.done += 1
            self.processed += event["status"] != "skipped"
            if event["status"] == "failed":
                self.bar.log(f"failed {event['id']}: {event['error']}")
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rates = f"{self.processed / dt:.2f} videos/s, {self.frames / dt:.0f} frames/s" if self.processed else ""
        self.bar(self.done, self.total, rates)
