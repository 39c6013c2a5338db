"""Map the core's exceptions to one line on stderr and an exit code (set RE2TAL_TRACEBACK=1 for the traceback)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from re2tal_cli.errors import Re2talError

F = TypeVar("F", bound=Callable)


def handle_errors(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Re2talError as error:
            if os.environ.get("RE2TAL_TRACEBACK"):
                raise
            print(f"Error: {error}", file=sys.stderr)
            raise typer.Exit(code=error.exit_code) from None

    return wrapper  # type: ignore[return-value]
