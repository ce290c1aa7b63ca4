"""pvtrace: replay FreeBSD pmap lock captures under other lock designs.

The data flows one way::

    raw text --ingest--> trace bundle (Parquet) --timeline--> per-thread steps
             --model--> lock keys --replay kernel--> waits/holds --metrics--> report

Nothing in the package imports :mod:`pvtrace.cli`.
"""

import os

__version__ = "0.1.0"


def _numba_cache_dir() -> str | None:
    """Where numba must keep pvtrace's compiled code, or None where its own choice works.

    numba caches compiled functions in ``__pycache__`` beside their source, else in the
    user's cache directory; with neither writable (a system-wide install run by a service
    account whose home is read-only) every compiled function failed at import with a
    traceback. A directory in the temporary directory, per user, then takes them."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    if os.access(os.path.dirname(os.path.abspath(__file__)), os.W_OK):
        return None
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    while not os.path.exists(cache) and os.path.dirname(cache) != cache:
        cache = os.path.dirname(cache)      # numba creates what is missing below
    if os.access(cache, os.W_OK):
        return None
    import tempfile     # not at the top: the console script handles Ctrl-C once this is loaded

    return os.path.join(tempfile.gettempdir(), f"pvtrace-numba-{os.getuid()}")


# Before any pvtrace module imports numba, which reads the variable at its import.
if (_cache := _numba_cache_dir()) is not None:
    os.environ["NUMBA_CACHE_DIR"] = _cache
