"""The exceptions a user can act on, and the one rule for raising them.

The rule, for every module outside `cli/`:

- Anything the caller's input can cause — a file, a name, a value, a recipe key, a shape — raises a `Re2talError`
  subclass below, never `ValueError`, `KeyError` or an assert, whether the caller is the CLI or a Python user.
  Anything else (a broken invariant) is a bug: let it raise whatever it raises, with its traceback.
- The message is one line that names the file or value at fault and the problem, and the fix where one exists.
- It never names a command-line flag. A message refers to a parameter of the function that was called (or a field
  of its config) by its Python name in backticks — "`frames` must be a positive integer, got 0" — and the CLI shows
  the flag that sets it instead ("--frames must be …"); names with no flag stay as they are.

The CLI (`cli/_errors.py`) maps every `Re2talError` to that line on stderr and its `exit_code` (2: the input is
wrong, 1: the run failed); the traceback is shown only with RE2TAL_TRACEBACK=1.
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
    """A name (architecture, GPU, protocol, …) that no registry knows; suggests the closest known ones."""

    def __init__(self, kind: str, name: str, known: Iterable[str], param: str | None = None):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}"
        prefix = f"`{param}`: " if param else ""
        super().__init__(f"{prefix}unknown {kind} {name!r}; {hint}")
        self.name = name
        self.suggestions = close


class BadRecipeError(BadInputError):
    """A recipe or config has an unknown key, a wrong type or an invalid value."""


class BadDataError(BadInputError):
    """A dataset directory, annotation, prediction or video file is malformed."""


class OutputExistsError(BadInputError):
    """The output exists and may not be replaced without `force`."""


class NumericalError(Re2talError):
    """A numerical failure the engine could not recover from (exit code 1)."""
