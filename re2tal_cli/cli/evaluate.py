"""`re2tal evaluate`: mAP of a prediction file, official-equivalent, with the duration error analysis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from re2tal_cli.cli._options import Csv, Json

if TYPE_CHECKING:
    from re2tal_cli.evaluate import EvaluationResult

NAME = "evaluate"
EPILOG = """Examples:

  re2tal evaluate thumos/ runs/tal --protocol thumos

  re2tal evaluate activity_net.v1-3.json preds.json --subset validation --breakdown --plot fig5.png

  re2tal evaluate gt.json preds.json --tiou 0.1,0.3,0.5 --json

  re2tal evaluate thumos/ runs/tal --protocol thumos --breakdown --csv eval.csv
"""


def _parse_tiou(values: list[str] | None) -> list[float] | None:
    if not values:
        return None
    parts = [p for v in values for p in v.replace(",", " ").split()]
    try:
        return [float(p) for p in parts]
    except ValueError:
        from re2tal_cli.errors import BadInputError

        raise BadInputError(f"`tiou` thresholds must be numbers, got {' '.join(values)!r}") from None


def main(
    ground_truth: Annotated[
        Path,
        typer.Argument(metavar="GROUND_TRUTH", help="ActivityNet-format annotations JSON, or a dataset directory."),
    ],
    predictions: Annotated[
        str,
        typer.Argument(
            metavar="PREDICTIONS",
            help="Submission JSON ({'results': ...}), a train-tal run dir, or a published run: hf://ORG/REPO[@REV].",
        ),
    ],
    protocol: Annotated[
        str, typer.Option(metavar="NAME", help="anet: tIoU 0.5:0.05:0.95; thumos: 0.3:0.1:0.7 + Ambiguous.")
    ] = "anet",
    tiou: Annotated[
        list[str] | None,
        typer.Option(metavar="T,…", help="Thresholds replacing the protocol's, e.g. 0.3,0.5,0.7 (repeatable)."),
    ] = None,
    subset: Annotated[
        str | None, typer.Option(metavar="NAME", help="Ground-truth subset (default: validation, else test).")
    ] = None,
    breakdown: Annotated[
        bool, typer.Option("--breakdown", help="mAP and false-negative rate per action length.")
    ] = False,
    per_class: Annotated[bool, typer.Option("--per-class", help="AP of every class.")] = False,
    as_json: Json = False,
    plot: Annotated[
        Path | None, typer.Option(metavar="FILE.png", help="Write the length breakdown as a PNG (needs matplotlib).")
    ] = None,
    csv: Csv = None,
) -> None:
    """Mean average precision of temporal action localization predictions, equal to the ActivityNet evaluator."""
    from re2tal_cli.evaluate import evaluate
    from re2tal_cli.fileio import check_table_path, write_table_atomic

    if csv is not None:
        check_table_path(csv)

    result = evaluate(
        ground_truth,
        predictions,
        protocol=protocol,
        tiou=_parse_tiou(tiou),
        subset=subset,
        breakdown=breakdown,
        plot=plot,
    )

    from rich.console import Console

    err = Console(stderr=True)
    for name, count in result.warnings.items():
        err.print(f"warning: {count} {name.replace('_', ' ')}", highlight=False, markup=False)
    if csv is not None:
        write_table_atomic(csv, result.table())
    if as_json:
        typer.echo(json.dumps(result.to_dict(per_class=per_class)))
        return
    _render(result, per_class, plot)
    if csv is not None:
        typer.echo(f"table written to {csv}")


def _render(result: EvaluationResult, per_class: bool, plot: Path | None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from re2tal_cli.text import plural

    out = Console()
    classes = plural(len(result.labels), "class", "classes")
    table = Table(title=escape(f"mAP ({result.protocol}, subset {result.subset}, {classes})"))
    table.add_column("tIoU", justify="right")
    table.add_column("mAP (%)", justify="right")
    for t, m in zip(result.tiou, result.mAP, strict=True):
        table.add_row(f"{t:.2f}", f"{100 * m:.2f}")
    table.add_section()
    table.add_row("average", f"{100 * result.average_mAP:.2f}", style="bold")
    out.print(table)

    if result.breakdown is not None:
        table = Table(title="By action length (average over tIoU)")
        for name in ("bin", "length (s)", "#GT", "mAP (%)", "false negatives (%)"):
            table.add_column(name, justify="right")
        for b in result.breakdown:
            span = f"> {b.low:g}" if b.high == float("inf") else f"({b.low:g}, {b.high:g}]"
            empty = b.num_gt == 0
            mAP = "-" if empty else f"{100 * b.average_mAP:.2f}"
            fn = "-" if empty else f"{100 * b.average_fn_rate:.1f}"
            table.add_row(b.name, span, str(b.num_gt), mAP, fn)
        out.print(table)

    if per_class:
        table = Table(title="AP per class (average over tIoU)")
        for name in ("class", "#GT", "AP (%)"):
            table.add_column(name, justify="left" if name == "class" else "right")
        for row in result.per_class():
            table.add_row(escape(row["label"]), str(row["num_gt"]), f"{100 * row['average_ap']:.2f}")
        out.print(table)
    if plot is not None:
        out.print(f"plot written to {plot}", markup=False)
