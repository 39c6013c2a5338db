"""`re2tal train-tal`: the Typer glue for `re2tal_cli.train_tal.train_tal`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._options import Amp, Arch, Device, Epochs, Force, Json, Resume, Seed, Sets

NAME = "train-tal"
EPILOG = """Examples:

  re2tal train-tal --data data/synth --backbone runs/rw --out runs/tal                 # end to end, recipe synthetic

  re2tal train-tal --data data/synth --backbone runs/rw --frozen --out runs/tal-frozen

  re2tal train-tal --data data/synth --features runs/feats --out runs/tal-feats --set train.epochs=20

  re2tal train-tal --data thumos/ --backbone runs/ft/backbone --recipe re2tal-thumos-swin3d-t --device cuda --out run

  re2tal train-tal --out runs/tal --resume
"""


def main(
    out: Annotated[
        Path, typer.Option(metavar="RUN", help="Run directory (config.yaml, metrics.jsonl, checkpoints/, …).")
    ],
    data: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Dataset directory (annotations.json + videos/); not with --resume."),
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            metavar="CHECKPOINT",
            help="Train end to end on frames from this backbone (a rewire output, any checkpoint, hf://, or a "
            "train-tal run: the backbone it trained).",
        ),
    ] = None,
    arch: Arch = None,
    frozen: Annotated[
        bool, typer.Option("--frozen", help="Keep the backbone frozen: the localizer learns on its features.")
    ] = False,
    features: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Train on extracted features (a `re2tal extract` output) instead."),
    ] = None,
    recipe: Annotated[
        str | None, typer.Option(metavar="NAME|FILE", help="A recipe of recipes/ or a YAML file (default: synthetic).")
    ] = None,
    sets: Sets = None,
    epochs: Epochs = None,
    seed: Seed = None,
    device: Device = "cpu",
    amp: Amp = None,
    resume: Resume = False,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Train temporal action localization: end to end on frames (reversible backbone), frozen, or on features."""
    from re2tal_cli.cli._progress import ProgressBar, training_progress
    from re2tal_cli.train.distributed import launched
    from re2tal_cli.train_tal import train_tal

    main_process = launched().is_main  # under torchrun, rank 0 alone reports
    with ProgressBar("train-tal", quiet=as_json or not main_process) as bar:
        summary = train_tal(
            data,
            out,
            backbone=backbone,
            arch=arch,
            frozen=frozen,
            features=features,
            recipe=recipe,
            sets=sets or (),
            epochs=epochs,
            seed=seed,
            amp=amp,
            device=device,
            resume=resume,
            force=force,
            progress=training_progress(bar),
        )
    if not main_process:
        return
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _render(summary)


def _render(summary: dict) -> None:
    from rich.console import Console

    console = Console()
    for name in ("final", "best"):
        r = summary[name]
        if r is None:
            continue
        values = "  ".join(f"{t}: {100 * v:.2f}" for t, v in r["mAP"].items())
        console.print(
            f"{name:5s} epoch {r['epoch']:3d}: average mAP {100 * r['average_mAP']:.2f}  ({values})",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    console.print(
        f"{summary['run']}: {summary['mode']}, {summary['epochs']} epochs in {summary['seconds']:.0f} s, "
        f"predictions in {summary['predictions']} ({summary['protocol']}, subset {summary['subset']})",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
