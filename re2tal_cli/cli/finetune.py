"""`re2tal finetune`: the Typer glue for `re2tal_cli.finetune.finetune`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._options import Amp, Arch, Device, Epochs, Force, Json, Resume, Seed, Sets

NAME = "finetune"
EPILOG = """Examples:

  re2tal finetune runs/rw --data runs/data/clips --out runs/ft                      # Re²TAL: α=0, β=1 throughout

  re2tal finetune runs/rw --data runs/data/clips --out runs/ft-dr2 --schedule dr2   # Dr²Net: (1, 0.1) → (0, 1)

  re2tal finetune swin_t_k400.pth --data kinetics/ --recipe re2tal-kinetics-swin3d-t --device cuda --out runs/ft

  re2tal finetune --out runs/ft --resume
"""


def main(
    checkpoint: Annotated[
        str | None,
        typer.Argument(
            metavar="CHECKPOINT",
            help="The backbone: a rewire output, any local checkpoint or hf://ORG/REPO[/FILE][@REVISION]; "
            "not with --resume.",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(metavar="RUN", help="Run directory (config.yaml, metrics.jsonl, backbone/, …).")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            metavar="CLIPS",
            help="Clips: a CSV (path,label[,start,end]) or a directory (CSV per subset, or "
            "class-per-folder with train/ and val/).",
        ),  # fmt: skip
    ] = None,
    arch: Arch = None,
    schedule: Annotated[
        str | None, typer.Option(metavar="KIND", help="re2, dr2 or none: shortcut for --set schedule.kind=KIND.")
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(metavar="NAME|FILE", help="A recipe of recipes/finetune/ or a YAML file (default: synthetic)."),
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
    """Finetune a (rewired) backbone on clip classification, with Re²TAL's or Dr²Net's α/β schedule."""
    from re2tal_cli.cli._progress import ProgressBar, training_progress
    from re2tal_cli.errors import BadInputError
    from re2tal_cli.finetune import finetune
    from re2tal_cli.train.distributed import launched

    if out is None:
        raise BadInputError("give the run directory (`out`)")
    main_process = launched().is_main  # under torchrun, rank 0 alone reports
    with ProgressBar("finetune", quiet=as_json or not main_process) as bar:
        summary = finetune(
            checkpoint,
            data,
            out,
            arch=arch,
            schedule=schedule,
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
    from rich.console import Console

    console = Console()
    for name in ("final", "best"):
        r = summary[name]
        if r is not None:
            console.print(f"{name:5s} epoch {r['epoch']:3d}: top-1 {100 * r['top1']:.2f}  top-5 {100 * r['top5']:.2f}",
                          highlight=False, markup=False)  # fmt: skip
    reversible = summary["fully_reversible_from_step"]
    console.print(
        f"{summary['run']}: schedule {summary['schedule']}, {summary['epochs']} epochs in {summary['seconds']:.0f} s, "
        f"{summary['fallbacks']} guard fallbacks"
        + (f", fully reversible from step {reversible}" if reversible is not None else "")
        + f"; backbone in {summary['backbone']}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
