"""Cleanup that a signal must not cut short.

The CLI turns SIGTERM into an exception, as Python does SIGINT, so that an ingest or a replay
that is stopped removes its scratch files and half-written outputs. But the exception is
raised wherever the main thread is, including inside that cleanup: a SIGTERM arriving while
the scratch copy of a capture is being deleted left most of it behind. :func:`held` defers
both signals over such a block and delivers them when it ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def held() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM noted, not acted on; then act on them."""
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
