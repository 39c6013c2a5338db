"""`re2tal demo`: the Typer glue for `re2tal_cli.demo.demo`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._options import Json

NAME = "demo"
EPILOG = """Examples:

  re2tal demo                          # the whole pipeline in runs/demo (under 10 minutes on 2 CPU cores)

  re2tal demo --quick --out /tmp/demo  # a smaller set and fewer epochs: a smoke test

Running it again resumes: finished steps (OUT/demo.json) are kept.
"""


def main(
    out: Annotated[Path, typer.Option(metavar="DIR", help="Where each step writes its run directory.")] = Path(
        "runs/demo"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="Fewer videos, clips and epochs (a smoke test).")] = False,
    as_json: Json = False,
) -> None:
    """The pipeline on built-in synthetic data, offline: synth → pretrain → rewire → finetune → extract → train-tal
    (features and end to end) → evaluate → detect → memprofile, then one summary table."""
    from re2tal_cli.cli._progress import ProgressBar
    from re2tal_cli.demo import demo

    with ProgressBar("demo", quiet=as_json) as bar:
        result = demo(out, quick=quick, progress=lambda task, done, total, info: bar.update(task, done, total, info))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    _render(result)


def _render(result: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"re2tal demo ({'quick' if result['quick'] else 'full'}): {result['out']}"))
    table.add_column("what")
    table.add_column("value", justify="right")
    for row in result["table"]:
        what, value = row["what"], row["value"]
        shown = f"{value:.1e}" if "error" in what else f"{value:.1f}" if "MiB" in what else f"{100 * value:.1f} %"
        table.add_row(escape(what), shown)
    console = Console()
    console.print(table)
    console.print(f"timeline: {result['steps']['detect']['timeline']}/timeline.png", markup=False, highlight=False)
