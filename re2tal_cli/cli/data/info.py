"""`re2tal data info`: the Typer glue for `re2tal_cli.data.info.dataset_info`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._options import Csv, Json

NAME = "info"
EPILOG = """Examples:

  re2tal data info data/synth

  re2tal data info thumos/ --bins thumos --json

  re2tal data info anet/ --no-check-videos

  re2tal data info thumos/ --csv thumos-info.csv
"""


def main(
    root: Annotated[
        Path, typer.Argument(metavar="DIR", help="Dataset directory (annotations.json + videos/ or frames/).")
    ],
    bins: Annotated[
        str, typer.Option(metavar="SCHEME", help="Length bins: auto, thumos (XS ≤ 3 s …) or anet (XS ≤ 30 s …).")
    ] = "auto",
    check_videos: Annotated[
        bool, typer.Option("--check-videos/--no-check-videos", help="Open every video (index only, no decoding).")
    ] = True,
    as_json: Json = False,
    csv: Csv = None,
) -> None:
    """Summarise a dataset: videos, durations, classes, instances per length bin, missing or unreadable videos."""
    from re2tal_cli.cli._progress import ProgressBar
    from re2tal_cli.data.info import dataset_info, info_table
    from re2tal_cli.fileio import check_table_path, write_table_atomic

    if csv is not None:
        check_table_path(csv)

    with ProgressBar("checking videos", quiet=as_json or not check_videos) as bar:
        result = dataset_info(root, check_videos=check_videos, bins=bins, progress=bar)
    if csv is not None:
        write_table_atomic(csv, info_table(result))
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _render(result)
        if csv is not None:
            typer.echo(f"table written to {csv}")
    if result["missing"] or result["unreadable"]:
        raise typer.Exit(code=1)


def _render(r: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from re2tal_cli.text import plural

    console = Console()
    d = r["duration_s"]
    console.print(
        f"[bold]{escape(str(r['root']))}[/]: {plural(r['videos'], 'video')}, {d['total'] / 3600:.2f} h "
        f"(mean {d['mean']:.1f} s, min {d['min']:.1f} s, max {d['max']:.1f} s), "
        f"{plural(len(r['classes']), 'class', 'classes')}, {plural(r['instances'], 'instance')} "
        f"(median length {r['instance_length_s']['median']:.1f} s)",
        highlight=False,
    )
    t = Table(title="subsets")
    for col in ("subset", "videos", "hours", "instances", "Ambiguous"):
        t.add_column(col, justify="right" if col != "subset" else "left")
    for name, s in r["subsets"].items():
        t.add_row(
            name, str(s["videos"]), f"{s['duration_s'] / 3600:.2f}", str(s["instances"]), str(s["ambiguous_spans"])
        )
    console.print(t)
    t = Table(title=f"instances per length bin ({r['length_bins']['scheme']})")
    for b in r["length_bins"]["bins"]:
        hi = "∞" if b["high_s"] is None else f"{b['high_s']:g}"
        t.add_column(f"{b['name']}\n({b['low_s']:g}, {hi}] s", justify="right")
    t.add_row(*(str(b["count"]) for b in r["length_bins"]["bins"]))
    console.print(t)
    t = Table(title="classes")
    t.add_column("class")
    t.add_column("instances", justify="right")
    for name, n in r["classes"].items():
        t.add_row(escape(name), str(n))
    console.print(t)
    if not r["checked_videos"]:
        console.print("videos not checked (--no-check-videos)", markup=False)
        return
    problems = [("missing", v, "no file in videos/ or frames/") for v in r["missing"]]
    problems += [("unreadable", u["id"], u["error"]) for u in r["unreadable"]]
    problems += [
        ("duration", m["id"], f"annotated {m['annotated_s']} s, video {m['video_s']} s") for m in r["duration_mismatch"]
    ]
    if problems:
        t = Table(title="problems", title_style="bold red")
        for col in ("problem", "video", "detail"):
            t.add_column(col)
        for row in problems:
            t.add_row(*map(escape, row))
        console.print(t)
    else:
        console.print("[green]all videos present and readable[/]")
    if r["unannotated_videos"]:
        console.print(
            f"{plural(len(r['unannotated_videos']), 'video file')} in videos/ without an annotation entry",
            highlight=False,
        )
