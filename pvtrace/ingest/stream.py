"""The events of a log already in time order, written while the log is parsed.

A bundle's events are in time order, and pyarrow encodes a Parquet file on one core, so an
ingest that sorts must parse the whole log before it writes the first row group: the write
(0.6-0.75 s for the 5 M-record bench log) comes after the parse. A log that is in time order
already, as ``dtrace -x temporal`` prints it (the capture command pvtrace.d's help gives),
needs no sort: :class:`EventStream` writes each piece of it as the parser hands it over, on
a thread of its own, while the parser reads the next pieces on the others.

It is only a shortcut to the same bundle. The records, their order and their types are the
sorted path's (parts made by :func:`pvtrace.ingest.order.ordered_parts`, which takes rows in
order as they are, checked for repeats by the same check); only the row groups differ (one
per piece of the log). Whatever the stream cannot vouch for, it gives up on, deletes what it
wrote, and the ingest sorts and writes the events as for any log:

- a piece that goes back in time (a log printed CPU buffer by CPU buffer, without
  ``-x temporal``), or goes back from the piece before it;
- the first reader giving up on the file (polars' reader then reads it again);
- a record recovered by the line-by-line reader from a line the first reader refused (it
  belongs between records already written);
- any error while writing (a repeated record, a full disk): the sorted path meets it again
  and reports it as it always does, in its place among the ingest's checks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pvtrace import bundle
from pvtrace.ingest import order


QUEUED = 2     # pieces handed over and not yet written, at most


class EventStream:
    """Writes the records of one input, handed over piece by piece in line order with
    :meth:`add`, to the events table at ``path``, as long as they stay in time order.
    ``src`` is the input's number (the ``src`` column); ``check`` is called on each part
    before it is written (the ingest's repeated-record check). :meth:`finish` says whether
    the file holds every record; use as a context manager (its thread ends on exit)."""

    def __init__(self, path: Path, src: int, check: Callable[[pa.Table], None] | None = None):
        self.path = path
        self.src = src
        self.check = check
        self.rows = 0                    # records handed over so far
        self.gave_up: str | None = None  # why the stream stopped, once it has
        self._last_ts: int | None = None
        self._writer: pq.ParquetWriter | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pvtrace-stream")
        self._pending: deque[Future] = deque()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, events: pl.DataFrame) -> None:
        """Hand over the next records (the parser's columns, without ``src``)."""
        if self.gave_up is not None or events.height == 0:
            return
        ts = events.get_column("ts")
        first, last = ts[0], ts[-1]
        if not ts.is_sorted() or (self._last_ts is not None and first < self._last_ts):
            self.give_up("the log is not in time order")
            return
        self._last_ts = last
        self.rows += events.height
        if len(self._pending) >= QUEUED:
            # The parser waits for the writer (a slow disk) rather than hold the pieces.
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, events))

    def _write(self, events: pl.DataFrame) -> None:
        if self.gave_up is not None:
            return
        try:
            events = events.with_columns(pl.lit(self.src, dtype=pl.UInt16).alias("src"))
            parts, _ = order.ordered_parts(events, events.height, check=self.check,
                                           small_first=False)
            for part in parts:
                if self._writer is None:
                    self._writer = bundle.open_part_writer(self.path, "events", part)
                bundle.write_part(self._writer, "events", part)
        except Exception as exc:        # noqa: BLE001 - the sorted path meets it again
            self.give_up(f"{type(exc).__name__}: {exc}".splitlines()[0][:200])

    def give_up(self, why: str) -> None:
        """Stop writing (the first reason is kept); what was written is deleted by
        :meth:`finish` or :meth:`close`."""
        if self.gave_up is None:
            self.gave_up = why

    def finish(self, records: int) -> bundle.Written | None:
        """The written table, if it holds exactly the ``records`` records the input has;
        else None (the stream gave up, or the parser kept records it never handed over)."""
        self._drain()
        if self.gave_up is None and self.rows != records:
            self.gave_up = f"{records - self.rows:,} records were not handed over"
        if self.gave_up is None and self._writer is None:
            self.gave_up = "no records"
        if self.gave_up is not None:
            self._discard()
            return None
        writer, self._writer = self._writer, None
        try:
            writer.close()      # the footer: a full disk may fail it too
        except Exception as exc:        # noqa: BLE001 - the sorted path meets it again
            self.gave_up = f"cannot write: {exc}".splitlines()[0][:200]
            self._discard()
            return None
        return bundle.Written(self.path, self.rows)

    def close(self) -> None:
        """End the writing thread; a table not finished is deleted."""
        self._drain()
        if self._writer is not None:
            self.gave_up = self.gave_up or "the ingest ended first"
            self._discard()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _drain(self) -> None:
        """Wait for the parts handed over (_write keeps its errors)."""
        while self._pending:
            self._pending.popleft().result()

    def _discard(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:           # noqa: BLE001 - the file is deleted anyway
                pass
        self.path.unlink(missing_ok=True)
