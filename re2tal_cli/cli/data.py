"""`re2tal data convert|synth|info`: dataset formats, the synthetic dataset, and a dataset's summary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from re2tal_cli.cli._errors import handle_errors

app = typer.Typer(
    name="data",
    help="Datasets: convert THUMOS-14 / ActivityNet-1.3 annotations, generate the synthetic set, summarise a dataset.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

CONVERT_EPILOG = """Examples:

  re2tal data convert thumos14 TH14_annotations/ --videos thumos/videos --out thumos/

  re2tal data convert thumos14 TH14_annotations/ --durations durations.json --out thumos/ --json

  re2tal data convert activitynet activity_net.v1-3.min.json --out anet/ --id-prefix v_
"""

SYNTH_EPILOG = """Examples:

  re2tal data synth data/synth

  re2tal data synth data/synth --videos 200 --classes 8 --seed 3 --workers 2 --force

  re2tal data synth /tmp/tiny --videos 4 --classes 2 --max-action 8 --json
"""

INFO_EPILOG = """Examples:

  re2tal data info data/synth

  re2tal data info thumos/ --bins thumos --json

  re2tal data info anet/ --no-check-videos
"""


def _progress(label: str, quiet: bool):
    """A rich progress bar on stderr, as a `progress(done, total)` callback; a no-op when quiet."""
    from contextlib import nullcontext

    if quiet:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )

    class _Bar:
        """Starts drawing at the first update, so an early error leaves stderr clean."""

        started = False

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            if self.started:
                progress.__exit__(*exc)
            return False

        def __call__(self, done: int, total: int) -> None:
            if not self.started:
                progress.__enter__()
                self.task = progress.add_task(label, total=total)
                self.started = True
            progress.update(self.task, completed=done, total=total)

    return _Bar()


def _check_out(out: Path, force: bool, keep: tuple[str, ...] = ()) -> None:
    from re2tal_cli.errors import OutputExistsError

    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a directory")
    if out.is_dir() and not force and (out / "annotations.json").exists():
        raise OutputExistsError(f"{out}/annotations.json: exists; pass --force to overwrite it")


@app.command("convert", epilog=CONVERT_EPILOG)
@handle_errors
def convert(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="thumos14 or activitynet.")],
    source: Annotated[
        Path, typer.Argument(help="THUMOS-14: folder of <Class>_val.txt / <Class>_test.txt; ActivityNet: the JSON.")
    ],
    out: Annotated[Path, typer.Option(help="Dataset directory to write annotations.json into.")],
    videos: Annotated[
        Path | None, typer.Option(help="THUMOS-14: folder of the videos, probed for durations and fps.")
    ] = None,
    durations: Annotated[
        Path | None, typer.Option(help="THUMOS-14: JSON {video id: seconds}, instead of probing --videos.")
    ] = None,
    id_prefix: Annotated[str, typer.Option(help="ActivityNet: prefix for video ids (files are v_<id>.mp4).")] = "",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing annotations.json.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON only.")] = False,
) -> None:
    """Convert THUMOS-14 or ActivityNet-1.3 annotations into re2tal's dataset format (annotations.json)."""
    from re2tal_cli.data.convert import convert_activitynet, convert_thumos14
    from re2tal_cli.data.datasets import save_annotations
    from re2tal_cli.errors import UnknownNameError

    formats = ("thumos14", "activitynet")
    if fmt not in formats:
        raise UnknownNameError("annotation format", fmt, formats)
    if fmt == "activitynet" and (videos or durations):
        raise typer.BadParameter("ActivityNet JSON has durations: drop --videos/--durations", param_hint="--videos")
    _check_out(out, force)
    if fmt == "thumos14":
        with _progress("probing videos", as_json or videos is None) as bar:
            result = convert_thumos14(source, videos_dir=videos, durations=durations, progress=bar)
    else:
        result = convert_activitynet(source, id_prefix=id_prefix)
    out.mkdir(parents=True, exist_ok=True)
    save_annotations(out / "annotations.json", result.entries, version=result.source, classes=result.classes)
    summary = {**result.summary(), "out": str(out / "annotations.json")}
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from rich.console import Console

    console = Console()
    subsets = ", ".join(f"{k} {v}" for k, v in summary["subsets"].items())
    console.print(
        f"wrote {summary['out']}: {summary['videos']} videos ({subsets}), {summary['classes']} classes, "
        f"{summary['instances']} instances, {summary['ambiguous_spans']} Ambiguous spans",
        highlight=False,
    )
    err = Console(stderr=True)
    for w in summary["warnings"]:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)


@app.command("synth", epilog=SYNTH_EPILOG)
@handle_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Directory to write the dataset into (new or empty).")],
    videos: Annotated[int, typer.Option(help="Untrimmed videos (TAL layout).")] = 40,
    classes: Annotated[int, typer.Option(help="Action classes (1–16).")] = 6,
    seed: Annotated[int, typer.Option(help="Everything (annotations and pixels) follows from it.")] = 0,
    size: Annotated[int, typer.Option(help="Frame side in pixels.")] = 64,
    fps: Annotated[int, typer.Option(help="Frames per second.")] = 10,
    min_action: Annotated[float, typer.Option(help="Shortest action, seconds.")] = 1.0,
    max_action: Annotated[float, typer.Option(help="Longest action, seconds.")] = 30.0,
    clips_per_class: Annotated[int, typer.Option(help="Clip-classification train clips per class.")] = 6,
    test_fraction: Annotated[float, typer.Option(help="Share of videos in the test subset.")] = 0.25,
    workers: Annotated[int, typer.Option(help="Processes (0: one per CPU core).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty OUT.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON only.")] = False,
) -> None:
    """Generate the synthetic TAL dataset (real H.264 files + annotations, no downloads); see docs/synthetic.md."""
    from re2tal_cli.data.synthetic import SynthConfig, generate
    from re2tal_cli.errors import BadInputError

    if not 0.0 <= test_fraction < 1.0:
        raise BadInputError(f"--test-fraction must be in [0, 1), got {test_fraction}")
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
    with _progress("generating", as_json) as bar:
        summary = generate(out, cfg, workers=workers, force=force, progress=bar)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from rich.console import Console

    Console().print(
        f"wrote {out}: {summary['videos']} videos ({summary['frames']} frames, {summary['instances']} actions, "
        f"{summary['distractors']} distractors), {summary['clips']} classification clips, "
        f"{len(summary['classes'])} classes: {', '.join(summary['classes'])}",
        highlight=False,
    )


@app.command("info", epilog=INFO_EPILOG)
@handle_errors
def info(
    root: Annotated[Path, typer.Argument(help="Dataset directory (annotations.json + videos/ or frames/).")],
    bins: Annotated[str, typer.Option(help="Length bins: auto, thumos (XS ≤ 3 s …) or anet (XS ≤ 30 s …).")] = "auto",
    check_videos: Annotated[
        bool, typer.Option("--check-videos/--no-check-videos", help="Open every video (index only, no decoding).")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Summarise a dataset: videos, durations, classes, instances per length bin, missing or unreadable videos."""
    from re2tal_cli.data.info import dataset_info

    with _progress("checking videos", as_json or not check_videos) as bar:
        result = dataset_info(root, check_videos=check_videos, bins=bins, progress=bar)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _render_info(result)
    if result["missing"] or result["unreadable"]:
        raise typer.Exit(code=1)


def _render_info(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    d = r["duration_s"]
    console.print(
        f"[bold]{r['root']}[/]: {r['videos']} videos, {d['total'] / 3600:.2f} h "
        f"(mean {d['mean']:.1f} s, min {d['min']:.1f} s, max {d['max']:.1f} s), {len(r['classes'])} classes, "
        f"{r['instances']} instances (median length {r['instance_length_s']['median']:.1f} s)",
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
        t.add_row(name, str(n))
    console.print(t)
    if not r["checked_videos"]:
        console.print("videos not checked (--no-check-videos)")
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
            t.add_row(*row)
        console.print(t)
    else:
        console.print("[green]all videos present and readable[/]")
    if r["unannotated_videos"]:
        console.print(
            f"{len(r['unannotated_videos'])} video file(s) in videos/ have no annotation entry", highlight=False
        )
