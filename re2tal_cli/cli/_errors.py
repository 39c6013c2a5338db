"""Map the core's exceptions to one line on stderr and an exit code (set RE2TAL_TRACEBACK=1 for the traceback).

Core messages name parameters as `name` (re2tal_cli/errors.py); here each such name that is a parameter of the
command becomes the flag that sets it, so a user reads "--frames must be …" and a Python caller "`frames` must be …".
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import typing
from collections.abc import Callable
from typing import TypeVar

import typer

from re2tal_cli.errors import Re2talError

F = TypeVar("F", bound=Callable)

_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*)`")


def handle_errors(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Re2talError as error:
            if os.environ.get("RE2TAL_TRACEBACK"):
                raise
            print(f"Error: {one_line(error, flags_of(command))}", file=sys.stderr)
            raise typer.Exit(code=error.exit_code) from None

    return wrapper  # type: ignore[return-value]


def one_line(error: Exception, flags: dict[str, str]) -> str:
    """The error's message on one line, each `parameter` that has a flag shown as the flag."""
    message = " ".join(str(error).split())
    return _PARAMETER.sub(lambda m: flags.get(m[1], m[0]), message)


@functools.cache
def flags_of(command: Callable) -> dict[str, str]:
    """Parameter name → how a user writes it: the first flag of an option (`--json`), the metavar of an argument."""
    hints = typing.get_type_hints(command, include_extras=True)
    flags = {}
    for name in inspect.signature(command).parameters:
        info = next((m for m in getattr(hints.get(name), "__metadata__", ()) if hasattr(m, "param_decls")), None)
        if info is None:
            continue
        # inside Annotated, typer reads a leading "--flag" given as the first argument (`default`) as a declaration
        decls = [*(info.param_decls or ()), *([info.default] if isinstance(info.default, str) else [])]
        declared = [d.split("/")[0] for d in decls if d.startswith("-")]
        if isinstance(info, typer.models.ArgumentInfo):
            flags[name] = info.metavar or name.upper()
        else:
            flags[name] = next((d for d in declared if d.startswith("--")), f"--{name.replace('_', '-')}")
    return flags
