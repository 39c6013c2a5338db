"""`re2tal hub push`: the Typer glue for `re2tal_cli.hub_push.push`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._options import Json

NAME = "push"
EPILOG = """Examples:

  re2tal hub push runs/rw --repo my-org/vit-b-re2tal

  re2tal hub push runs/tal --repo my-org/tal-thumos --private --revision v1

  re2tal detect hf://my-org/tal-thumos@v1 match.mp4
"""


def main(
    src: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_OR_BACKBONE", help="A backbone directory (rewire output), or a train-tal or finetune run."
        ),
    ],
    repo: Annotated[str, typer.Option(metavar="ORG/NAME", help="The model repository (created when absent).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    revision: Annotated[
        str | None, typer.Option(metavar="BRANCH", help="Commit to this branch (created from main when absent).")
    ] = None,
    checkpoint: Annotated[
        str, typer.Option(metavar="NAME", help="A train-tal run's checkpoint: best (default; else last) or last.")
    ] = "best",
    as_json: Json = False,
) -> None:
    """Publish a backbone or a run on the Hugging Face Hub, with a model card; read it back with hf://."""
    from re2tal_cli.hub_push import push

    pushed = push(src, repo, private=private, revision=revision, checkpoint=checkpoint)
    if as_json:
        typer.echo(json.dumps(pushed, indent=2))
        return
    from rich.console import Console

    console = Console()
    for f in pushed["files"]:
        console.print(f"  {f['path']}  ({f['bytes']:,} bytes)", highlight=False, markup=False)
    console.print(
        f"{pushed['kind']} pushed to {pushed['repo']}@{pushed['revision']}, commit {pushed['commit'][:12]}: "
        f"hf://{pushed['repo']}" + (f"@{pushed['revision']}" if pushed["revision"] != "main" else ""),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
