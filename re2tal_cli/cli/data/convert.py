"""`re2tal data convert`: the Typer glue for `re2tal_cli.data.convert.convert`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._options import Json

NAME = "convert"
EPILOG = """Examples:

  re2tal data convert thumos14 TH14_annotations/ --videos thumos/videos --out thumos/

  re2tal data convert thumos14 TH14_annotations/ --durations durations.json --out thumos/ --json

  re2tal data convert activitynet activity_net.v1-3.min.json --out anet/ --id-prefix v_
"""


def main(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="thumos14 or activitynet.")],
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SOURCE", help="THUMOS-14: folder of <Class>_val.txt / <Class>_test.txt; ActivityNet: the JSON."
        ),
    ],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Dataset directory to write annotations.json into.")],
    videos: Annotated[
        Path | None, typer.Option(metavar="DIR", help="THUMOS-14: folder of the videos, probed for durations and fps.")
    ] = None,
    durations: Annotated[
        Path | None, typer.Option(metavar="FILE", help="THUMOS-14: JSON {video id: seconds}, instead of --videos.")
    ] = None,
    id_prefix: Annotated[
        str, typer.Option(metavar="PREFIX", help="ActivityNet: prefix for video ids (files are v_<id>.mp4).")
    ] = "",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing annotations.json.")] = False,
    as_json: Json = False,
) -> None:
    """Convert THUMOS-14 or ActivityNet-1.3 annotations into re2tal's dataset format (annotations.json)."""
    from re2tal_cli.cli._progress import ProgressBar
    from re2tal_cli.data.convert import convert
    from re2tal_cli.text import plural

    with ProgressBar("probing videos", quiet=as_json or videos is None) as bar:
        summary = convert(
            fmt, source, out, videos=videos, durations=durations, id_prefix=id_prefix, force=force, progress=bar
        )
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from rich.console import Console

    subsets = ", ".join(f"{k} {v}" for k, v in summary["subsets"].items())
    Console().print(
        f"wrote {summary['out']}: {plural(summary['videos'], 'video')} ({subsets}), "
        f"{plural(summary['classes'], 'class', 'classes')}, {plural(summary['instances'], 'instance')}, "
        f"{plural(summary['ambiguous_spans'], 'Ambiguous span')}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    err = Console(stderr=True)
    for w in summary["warnings"]:
        err.print(f"warning: {w}", highlight=False, markup=False)
