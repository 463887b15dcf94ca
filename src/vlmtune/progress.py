"""Progress bars for long work (training, evaluation), drawn on stderr with rich."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def update(self, *, completed: int | None = None, advance: int = 0, status: str = "") -> None:
        if self._progress is not None and self._task is not None:
            kwargs = {"status": status}
            if completed is not None:
                kwargs["completed"] = completed
            else:
                kwargs["advance"] = advance
            self._progress.update(self._task, **kwargs)


def _enabled() -> bool:
    return os.environ.get("VLMTUNE_PROGRESS", "1") != "0"


@contextmanager
def progress_bar(description: str, total: int, completed: int = 0) -> Iterator[Bar]:
    """A bar with count, elapsed and remaining time, and a free-text status (e.g. the loss)."""
    if not _enabled():
        yield Bar(None, None)
        return
    console = Console(file=sys.stderr)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed, status="")
        yield Bar(progress, task)
