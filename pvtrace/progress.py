"""Progress of the long stages (parsing a 10 GB log, writing its bundle, replaying it).

The library announces stages and advances through them; whoever listens draws them. The
command line installs a rich progress bar on a terminal (:mod:`pvtrace.cli.progress`); with no
listener, as in tests, scripts and pipes, the calls do nothing. A module-level listener rather
than a parameter threaded through every function: stages are announced deep inside the parser
and the bundle writer, and one pvtrace command runs at a time in a process.

A stage has a description and, when its size is known in advance, a total in its own units
(lines, rows, designs); advancing past the total is harmless. Calls may come from worker
threads (the bundle writer runs in one): listeners must be thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Listener(Protocol):
    def stage(self, what: str, total: int | None) -> None:
        """A new stage begins (the previous one, if any, is over)."""

    def advance(self, amount: int) -> None:
        """``amount`` more units of the current stage are done."""


_listener: Listener | None = None


def stage(what: str, total: int | None = None) -> None:
    """Announce a stage: ``what`` is shown as is (e.g. ``"parsing capture.log"``)."""
    if _listener is not None:
        _listener.stage(what, total)


def advance(amount: int = 1) -> None:
    """Report ``amount`` more units of the current stage done."""
    if _listener is not None:
        _listener.advance(amount)


@contextmanager
def listening(listener: Listener | None) -> Iterator[None]:
    """Send stages to ``listener`` inside the block (None: to nobody)."""
    global _listener
    previous, _listener = _listener, listener
    try:
        yield
    finally:
        _listener = previous
