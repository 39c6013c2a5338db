"""The `re2tal` command: assembles the commands, nothing else.

Each command lives in its own module under `cli/` (a group's sub-commands in a folder, `cli/data/synth.py` for
`re2tal data synth`), exporting `NAME`, `EPILOG` and `main`: it parses options, calls one core function and renders
the result. Help is plain text (no rich markup, so a help string may contain brackets), `-h` is `--help`.
"""

from __future__ import annotations

from types import ModuleType

import typer

from re2tal_cli.cli import (
    demo,
    detect,
    evaluate,
    extract,
    finetune,
    import_checkpoint,
    memprofile,
    rewire,
    train_tal,
)
from re2tal_cli.cli._errors import handle_errors
from re2tal_cli.cli.data import convert, features, info, synth
from re2tal_cli.cli.hub import push

SETTINGS = dict(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app = typer.Typer(
    name="re2tal", help="Reversible video backbones for end-to-end temporal action localization.", **SETTINGS
)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    """Reversible video backbones for end-to-end temporal action localization."""
    if version:
        from re2tal_cli import __version__

        typer.echo(f"re2tal {__version__}")
        raise typer.Exit()


def _add(group: typer.Typer, command: ModuleType) -> None:
    # "\b" keeps a paragraph's lines as written (click's marker), so example commands are not re-wrapped
    epilog = "\n\n".join(f"\b\n{p}" for p in command.EPILOG.strip().split("\n\n"))
    group.command(name=command.NAME, help=command.main.__doc__, epilog=epilog)(handle_errors(command.main))


for _command in (rewire, finetune, extract, train_tal, import_checkpoint, evaluate, detect, memprofile, demo):
    _add(app, _command)

data = typer.Typer(
    name="data",
    help="Datasets: convert THUMOS-14 / ActivityNet-1.3 annotations and published features, generate the synthetic "
    "set, summarise a dataset.",
    **SETTINGS,
)
for _command in (convert, features, synth, info):
    _add(data, _command)
app.add_typer(data, name="data")

hub = typer.Typer(name="hub", help="The Hugging Face Hub: publish a backbone or a run (read back with hf://).",
                  **SETTINGS)  # fmt: skip
_add(hub, push)
app.add_typer(hub, name="hub")


def main() -> None:
    app()
