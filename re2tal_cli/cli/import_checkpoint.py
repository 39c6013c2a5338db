"""`re2tal import`: the Typer glue for `re2tal_cli.importing.import_checkpoint`. (The module cannot be named
`import.py`, a Python keyword; the command can.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._options import Arch, Force, Json, Sets

NAME = "import"
EPILOG = """Examples:

  re2tal import actionformer/thumos_i3d/epoch_034.pth.tar --out runs/af --data thumos14/ --features feats/i3d

  re2tal import opentad/epoch_119.pth --out runs/re2tal --recipe re2tal-thumos-swin3d-t --data thumos14/

  re2tal import ckpt.pth --out runs/af --recipe my-recipe.yaml --classes classes.txt --json
"""


def main(
    src: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="An OpenTAD or ActionFormer-release training checkpoint (.pth, .pth.tar), or hf://ORG/REPO/FILE.",
        ),
    ],
    out: Annotated[Path, typer.Option(metavar="RUN", help="The train-tal run directory to write.")],
    recipe: Annotated[
        str | None,
        typer.Option(
            metavar="NAME|FILE",
            help="The localizer's settings: a recipe of recipes/ or a YAML file (default: actionformer-thumos-i3d "
            "for a features run, re2tal-thumos-swin3d-t for an OpenTAD detector with its backbone).",
        ),
    ] = None,
    sets: Sets = None,
    classes: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Class names, one per line, in the classifier's order.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Dataset directory: the class names, and the data further training uses."),
    ] = None,
    features: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Features directory (`re2tal extract`) of a features run: detect, training."),
    ] = None,
    arch: Arch = None,
    evaluate: Annotated[
        bool,
        typer.Option(
            "--evaluate",
            help="Then run the detector on the recipe's validation subset of --data: RUN/predictions.json for "
            "re2tal evaluate, and the average mAP.",
        ),
    ] = False,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Import an OpenTAD or ActionFormer checkpoint as a train-tal run (detect, evaluate, train further)."""
    from re2tal_cli.cli._progress import ProgressBar
    from re2tal_cli.importing import import_checkpoint

    with ProgressBar("evaluate", quiet=as_json) as bar:
        report = import_checkpoint(src, out, recipe=recipe, sets=sets or (), classes=classes, data=data,
                                   features=features, arch=arch, evaluate=evaluate, force=force,
                                   progress=lambda task, done, total, info: bar.update(task, done, total, info),
                                   )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    _render(report)


def _render(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"import {report.source}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("layout", report.layout)
    entries = ", ".join(report.entries)
    table.add_row("weights", f"{entries}; detect and evaluation use {report.evaluated}")
    backbone = f", backbone {report.arch} ({report.backbone_tensors} tensors)" if report.arch else ""
    table.add_row("run", f"{report.mode}{backbone}, localizer {report.localizer_tensors} tensors")
    if report.average_mAP is not None:
        table.add_row("evaluated", f"average mAP {100 * report.average_mAP:.2f} (RUN/predictions.json)")
    if report.wiring is not None:
        w = report.wiring
        table.add_row("wiring", f"α={w['alpha']:g}, β={w['beta']:g}, {w['execution']}")
    table.add_row("recipe", f"{report.recipe} (input channels {report.channels})")
    shown = ", ".join(report.classes[:5]) + (", …" if len(report.classes) > 5 else "")
    table.add_row("classes", f"{len(report.classes)} from the {report.classes_from}: {shown}")
    if report.not_in_source:
        table.add_row("not in the source", f"{', '.join(report.not_in_source)} (the recipe's initial value)")
    if report.unmapped:
        table.add_row("[yellow]not imported[/yellow]", f"{len(report.unmapped)} keys: {', '.join(report.unmapped)}")
    table.add_row("written", f"{report.out}/config.yaml, {report.out}/checkpoints/last/")
    Console().print(table)
