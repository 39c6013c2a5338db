"""The one progress bar of the CLI: rich, on stderr (stdout stays clean for --json), drawn from the first update on."""

from __future__ import annotations


class ProgressBar:
    """A `progress(done, total, info="")` callback for core functions, shown as a rich bar on stderr.

    It starts drawing at its first update, so an error raised before any work leaves stderr to the one-line error; a
    quiet bar draws nothing. `log` prints a line above the bar (or plainly when no bar is drawn), so messages during
    the work neither break the bar nor get lost.
    """

    def __init__(self, label: str, quiet: bool = False, transient: bool = True):
        self.label, self.quiet, self.transient = label, quiet, transient
        self._progress = None
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> bool:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None
        return False

    def __call__(self, done: int, total: int | None, info: str = "") -> None:
        self.update(self.label, done, total, info)

    def update(self, task: str, done: int, total: int | None, info: str = "") -> None:
        """Progress of one of several tasks (a bar each, in the order first seen: epochs, steps, evaluation)."""
        if self.quiet:
            return
        if self._progress is None:
            self._start()
        if task not in self._tasks:
            self._tasks[task] = self._progress.add_task(task, total=total, info="")
        self._progress.update(self._tasks[task], completed=done, total=total, info=info)

    def log(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, highlight=False, markup=False)
        else:
            from rich.console import Console

            Console(stderr=True).print(message, highlight=False, markup=False)

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}", markup=False),
            console=Console(stderr=True),
            transient=self.transient,
        )
        self._progress.__enter__()


def training_progress(bar: ProgressBar):
    """The training loop's progress callback (`train.loop.Progress`): a bar per task, its notes as lines above."""

    def progress(task: str, done: int, total: int | None, info: str) -> None:
        if task == "note":
            bar.log(info)
        else:
            bar.update(task, done, total, info)

    return progress
