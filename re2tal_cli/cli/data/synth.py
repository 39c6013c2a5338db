"""`re2tal data synth`: the Typer glue for `re2tal_cli.data.synth.generate`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._options import Json

NAME = "synth"
EPILOG = """Examples:

  re2tal data synth data/synth

  re2tal data synth data/synth --videos 200 --classes 8 --seed 3 --workers 2 --force

  re2tal data synth /tmp/tiny --videos 4 --classes 2 --max-action 8 --json
"""


def main(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Directory to write the dataset into (new or empty).")],
    videos: Annotated[int, typer.Option(metavar="N", help="Untrimmed videos (TAL layout).")] = 40,
    classes: Annotated[int, typer.Option(metavar="N", help="Action classes (1–16).")] = 6,
    seed: Annotated[int, typer.Option(metavar="N", help="Everything (annotations and pixels) follows from it.")] = 0,
    size: Annotated[int, typer.Option(metavar="S", help="Frame side in pixels.")] = 64,
    fps: Annotated[int, typer.Option(metavar="N", help="Frames per second.")] = 10,
    min_action: Annotated[float, typer.Option(metavar="SECONDS", help="Shortest action.")] = 1.0,
    max_action: Annotated[float, typer.Option(metavar="SECONDS", help="Longest action.")] = 30.0,
    clips_per_class: Annotated[int, typer.Option(metavar="N", help="Clip-classification train clips per class.")] = 6,
    test_fraction: Annotated[float, typer.Option(metavar="F", help="Share of videos in the test subset.")] = 0.25,
    workers: Annotated[int, typer.Option(metavar="N", help="Processes (0: one per CPU core).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty OUT.")] = False,
    as_json: Json = False,
) -> None:
    """Generate the synthetic TAL dataset (real H.264 files + annotations, no downloads); see docs/synthetic.md."""
    from re2tal_cli.cli._progress import ProgressBar
    from re2tal_cli.data.synth import SynthConfig, generate
    from re2tal_cli.text import plural

    cfg = SynthConfig(
        videos=videos,
        classes=classes,
        seed=seed,
        size=size,
        fps=fps,
        min_action=min_action,
        max_action=max_action,
        clips_per_class=clips_per_class,
        test_fraction=test_fraction,
    )
    workers = workers or min(os.cpu_count() or 1, 8)
    with ProgressBar("generating", quiet=as_json) as bar:
        summary = generate(out, cfg, workers=workers, force=force, progress=bar)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from rich.console import Console

    Console().print(
        f"wrote {out}: {plural(summary['videos'], 'video')} ({summary['frames']} frames, "
        f"{plural(summary['instances'], 'action')}, {plural(summary['distractors'], 'distractor')}), "
        f"{plural(summary['clips'], 'classification clip')}, "
        f"{plural(len(summary['classes']), 'class', 'classes')}: {', '.join(summary['classes'])}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
