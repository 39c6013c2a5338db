"""Options that several commands share, declared once so they read and behave the same everywhere.

Every option that takes a value has a metavar naming what it takes (PATH, N, NAME, …); flags have none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Checkpoint = Annotated[
    str,
    typer.Argument(
        metavar="CHECKPOINT",
        help="Backbone checkpoint: a re2tal output directory, a local .safetensors/.pth/.pt/.bin file or folder, "
        "or hf://ORG/REPO[/FILE][@REVISION].",
    ),
]
Arch = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Architecture (docs/models.md). Default: from the checkpoint's config.json (re2tal or transformers), "
        "else from its keys and shapes.",
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Replace existing outputs.")]
Json = Annotated[bool, typer.Option("--json", help="Print only JSON on stdout (progress and warnings on stderr).")]
Device = Annotated[str, typer.Option(metavar="DEVICE", help="cpu, cuda, cuda:1, …")]
Csv = Annotated[
    Path | None,
    typer.Option("--csv", metavar="FILE.csv", help="Also write the table(s) as CSV: pandas.read_csv(FILE) loads it."),
]

# the options of a training run (train-tal, finetune)
Sets = Annotated[
    list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override a recipe key (repeatable).")
]
Epochs = Annotated[int | None, typer.Option(metavar="N", help="Shortcut for --set train.epochs=N.")]
Seed = Annotated[int | None, typer.Option(metavar="N", help="Shortcut for --set seed=N.")]
Amp = Annotated[str | None, typer.Option(metavar="MODE", help="none, bf16 or fp16: shortcut for --set train.amp=MODE.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue RUN from its last complete checkpoint.")]
