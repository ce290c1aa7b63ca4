"""The command line's progress display: the library's stages (:mod:`pvtrace.progress`) as
rich progress bars on stderr, only when stderr is a terminal. The display is transient: it
disappears when the command is done, so what remains on the screen is the command's output,
the same as in a pipe or a file."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID,
                           TextColumn, TimeElapsedColumn)

from pvtrace import progress


class RichListener:
    """Each stage a line: spinner, description, bar (pulsing when the total is unknown),
    count, and the time the stage took; a finished stage stops its clock."""

    def __init__(self, bars: Progress):
        self.bars = bars
        self.task: TaskID | None = None
        self.lock = threading.Lock()     # the bundle writer reports from its own thread

    def stage(self, what: str, total: int | None) -> None:
        with self.lock:
            self._finish()
            self.task = self.bars.add_task(what, total=total)

    def advance(self, amount: int) -> None:
        with self.lock:
            if self.task is not None:
                self.bars.advance(self.task, amount)

    def _finish(self) -> None:
        if self.task is not None:    # stages are sequential: the current one is the last
            total = self.bars.tasks[-1].total
            if total is not None:
                self.bars.update(self.task, completed=total)
            self.bars.stop_task(self.task)

    def close(self) -> None:
        with self.lock:
            self._finish()
            self.task = None


@contextmanager
def shown(*, quiet: bool = False, console: Console | None = None) -> Iterator[None]:
    """Show the library's progress on ``console`` (default: stderr) while the block runs,
    unless ``quiet`` or the console is not a terminal."""
    console = console or Console(stderr=True)
    if quiet or not console.is_terminal:
        yield
        return
    bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                    transient=True, redirect_stdout=False, redirect_stderr=False)
    listener = RichListener(bars)
    with bars, progress.listening(listener):
        try:
            yield
        finally:
            listener.close()
