"""Stopping a command: SIGINT and SIGTERM as exceptions, and cleanup they must not cut short.

The CLI turns SIGTERM into an exception, as Python does SIGINT (:func:`install`), so that an
ingest or a replay that is stopped removes its scratch files and half-written outputs. But the
exception is raised wherever the main thread is, including inside that cleanup: a SIGTERM
arriving while the scratch copy of a capture is being deleted left most of it behind.
:func:`held` defers both signals over such a block and delivers them when it ends.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

# held() notes SIGALRM too: it raises a signal that arrived inside llvmlite (on_signal)
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)
RETRY_S = 0.02      # how soon a signal that arrived inside llvmlite is raised again


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout(1), a batch scheduler), raised in the main thread like Ctrl-C so
    that the same cleanup runs: no scratch copy of a capture, no half-written bundle left."""


received: list[int] = []    # the signals acted on, in order: what stopped the command
_pending: list[int] = []    # a signal to raise once the main thread is out of llvmlite


def on_signal(signum: int, frame) -> None:
    """The CLI's handler of SIGINT and SIGTERM: raise KeyboardInterrupt (:class:`Terminated`)
    in the main thread. Not inside llvmlite: numba loads compiled code through a callback
    that native code makes into llvmlite's Python, and an exception raised there was printed
    as "Exception ignored" and lost (the command went on as if never interrupted, or died of
    a segmentation fault). There the signal is raised again a moment later (SIGALRM)."""
    if signum not in received:
        received.append(signum)
    if frame is not None and str(frame.f_globals.get("__name__", "")).startswith("llvmlite"):
        _pending[:] = [signum]
        signal.signal(signal.SIGALRM, _retry)
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    _pending.clear()
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _retry(signum: int, frame) -> None:
    if _pending:
        on_signal(_pending[0], frame)


def install() -> None:
    """Handle SIGTERM, and SIGINT unless it is ignored (``nohup``, a background job), with
    :func:`on_signal`."""
    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, on_signal):
        signal.signal(signal.SIGINT, on_signal)


def exit_stopped() -> NoReturn:
    """Say which signal stopped the command; exit with the status a shell gives it."""
    if signal.SIGTERM in received:
        print("pvtrace: terminated", file=sys.stderr)
        sys.exit(143)
    print("pvtrace: interrupted", file=sys.stderr)
    sys.exit(130)


@contextmanager
def held() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM (and SIGALRM) noted, not acted on; then act on
    them."""
    if threading.current_thread() is not threading.main_thread():
        yield       # handlers run in the main thread only, and can be set only there
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in caught[:1]:
            handler = previous[s]
            if callable(handler):
                handler(s, None)
