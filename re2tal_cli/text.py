"""Small helpers for messages people read."""

from __future__ import annotations


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """'1 class', '2 classes', '0 videos'."""
    if count == 1:
        return f"{count} {singular}"
    suffix = "es" if singular.endswith(("s", "x", "sh", "ch")) else "s"
    return f"{count} {plural_form or singular + suffix}"


def one_of(choices: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"
