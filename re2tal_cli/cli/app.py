"""The `re2tal` command: assembles the commands, nothing else.

Each command lives in its own module under `cli/`; it parses options, calls one core function and renders the result.
"""

from __future__ import annotations

import typer

from re2tal_cli.cli import data, evaluate, extract, memprofile, rewire
from re2tal_cli.cli._errors import handle_errors

app = typer.Typer(
    name="re2tal",
    help="Reversible video backbones for end-to-end temporal action localization.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    """Reversible video backbones for end-to-end temporal action localization."""
    if version:
        from re2tal_cli import __version__

        typer.echo(f"re2tal {__version__}")
        raise typer.Exit()


for command in (rewire, evaluate, extract, memprofile):
    app.command(name=command.NAME, help=command.main.__doc__, epilog=command.EPILOG)(handle_errors(command.main))

app.add_typer(data.app, name="data")


def main() -> None:
    app()
