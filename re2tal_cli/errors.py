"""The exceptions a user can act on.

The CLI maps every `Re2talError` to one line on stderr and its `exit_code` (2: the input is wrong, 1: the run failed);
anything else is a bug and keeps its traceback. Messages name the file or value at fault and, where one exists, the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class Re2talError(Exception):
    """Base class: a failure that is not the user's input (exit code 1)."""

    exit_code = 1


class BadInputError(Re2talError):
    """The user's input is wrong: a file, an option, a value (exit code 2)."""

    exit_code = 2


class BadCheckpointError(BadInputError):
    """A checkpoint is missing, corrupt, truncated, or does not fit the architecture."""


class UnknownNameError(BadInputError):
    """A name (architecture, GPU, protocol, …) that no registry knows."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}"
        super().__init__(f"unknown {kind} {name!r}; {hint}")
        self.name = name
        self.suggestions = close


class BadRecipeError(BadInputError):
    """A recipe or config has an unknown key, a wrong type or an invalid value."""


class BadDataError(BadInputError):
    """A dataset directory, annotation, prediction or video file is malformed."""


class OutputExistsError(BadInputError):
    """The output directory exists and is not empty, and --force was not given."""


class NumericalError(Re2talError):
    """A numerical failure the engine could not recover from (exit code 1)."""
