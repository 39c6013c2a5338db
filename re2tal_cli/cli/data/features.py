"""`re2tal data features`: the Typer glue for `re2tal_cli.data.features.import_features`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._options import Force, Json

NAME = "features"
EPILOG = """Examples:

  re2tal data features data/thumos/i3d_features --data thumos14/ --out feats/i3d --preset actionformer-thumos-i3d

  re2tal data features data/anet_1.3/tsp_features --data anet/ --out feats/tsp --preset actionformer-anet-tsp

  re2tal data features my_feats/ --data ds/ --out feats/mine --stride 8 --window 32 --fps 25 --layout ct --json

Videos without a feature file are listed and make the exit code 1; the others are written.
"""


def main(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="Folder of per-video .npy / .npz feature files.")],
    data: Annotated[Path, typer.Option(metavar="DIR", help="Dataset directory (annotations.json): ids, fps.")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Features directory to write (as `re2tal extract`'s).")],
    preset: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="actionformer-thumos-i3d or actionformer-anet-tsp: fills the settings."),
    ] = None,
    stride: Annotated[int | None, typer.Option(metavar="N", help="Frames between the starts of features.")] = None,
    window: Annotated[int | None, typer.Option(metavar="N", help="Frames behind one feature.")] = None,
    fps: Annotated[
        float | None, typer.Option(metavar="F", help="The features' frame rate for every video (default: annotated).")
    ] = None,
    layout: Annotated[
        str | None, typer.Option(metavar="tc|ct", help="Arrays are (time, channels) (default) or (channels, time).")
    ] = None,
    prefix: Annotated[
        str | None, typer.Option(metavar="PREFIX", help="File names are PREFIX<video id> (e.g. v_).")
    ] = None,
    key: Annotated[str | None, typer.Option(metavar="NAME", help="The array of an .npz file (default: feats).")] = None,
    subset: Annotated[
        list[str] | None, typer.Option(metavar="NAME", help="Only this subset (repeatable; default: all).")
    ] = None,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Convert published per-video features (ActionFormer, OpenTAD .npy files) into a features directory."""
    from rich.console import Console

    from re2tal_cli.cli._progress import ProgressBar
    from re2tal_cli.data.features import import_features
    from re2tal_cli.text import plural

    with ProgressBar("converting", quiet=as_json) as bar:
        summary = import_features(src, data, out, preset=preset, stride=stride, window=window, fps=fps, layout=layout,
                                  prefix=prefix, key=key, subsets=subset, force=force, progress=bar)  # fmt: skip
    err = Console(stderr=True)
    for vid, reason in summary["failed"].items():
        err.print(f"failed {vid}: {reason}", highlight=False, markup=False, soft_wrap=True)
    for warning in summary["warnings"]:
        err.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        Console().print(
            f"wrote {summary['out']}: {plural(summary['written'], 'video')} ({summary['channels']} channels, "
            f"{plural(summary['features'], 'feature')}), {len(summary['failed'])} failed",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if summary["failed"]:
        raise typer.Exit(code=1)
