"""The events of a log, written while the log is parsed, when the log allows it.

A bundle's events are in time order, and pyarrow encodes a Parquet file on one core, so an
ingest that sorts must parse the whole log before it writes the first row group: the write
(0.35 s for the 5 M-record bench log) comes after the parse. The logs dtrace(1) prints need
no such wait, in either of its two orders (``dt_consume.c``, ``dtrace_consume``):

- with ``-x temporal`` (the capture command pvtrace.d's help gives), in time order:
  :class:`EventStream` writes each piece as the parser hands it over, on a thread of its own,
  while the parser reads the next pieces on the others;
- by default, CPU buffer by CPU buffer: every ``switchrate`` tick (1 s by default) dtrace
  takes each CPU's buffer in turn, CPU 0 first, and prints its records, which are in time
  order. Each CPU's records are then in time order through the whole log, so a record
  that comes later in the log can be no earlier than the last one seen of its CPU: every
  record up to the earliest of the CPUs' latest times (the *watermark*) is final. The stream
  holds the records above it, and writes the others, sorted, as the watermark moves on. It
  needs the header's ``# ncpu=`` (which pvtrace.d prints) and every CPU to have shown a
  record (those ``ncpu`` names, and any other it meets): a CPU that records nothing holds
  the watermark back, and the stream gives up once :data:`HELD_ROWS` records wait, as it
  does on a log printed from buffers drained only when tracing stops (``-x bufpolicy=ring``
  or ``fill``).

It is only a shortcut to the same bundle. The records, their order and their types are the
sorted path's (parts made by :func:`pvtrace.ingest.order.ordered_parts`, which sorts them
stably by time, so that ties keep line order, and checks them for repeats by the same
check); only the row groups differ. Nothing it assumes about the order goes unchecked: a
record earlier than what was written already makes it give up, delete what it wrote, and
the ingest sorts and writes the events as for any log. It gives up on:

- a record earlier than the watermark last used (not a dtrace log, or two captures
  concatenated), too many records held, or a log out of time order whose header states no
  ``ncpu`` (a CPU not seen yet could print records earlier than those written);
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

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from numba import njit

from pvtrace import bundle
from pvtrace.ingest import order


QUEUED = 2              # pieces handed over and not yet written, at most
HELD_ROWS = 2_000_000   # records held above the watermark, at most, before giving up
MAX_CPUS = 1 << 16      # CPU numbers the watermark follows (a log with more is sorted)


class EventStream:
    """Writes the records of one input, handed over piece by piece in line order with
    :meth:`add`, to the events table at ``path``, in time order, as long as the log's order
    allows it (see the module docstring). ``src`` is the input's number (the ``src``
    column); ``check`` is called on each part before it is written (the ingest's
    repeated-record check). :meth:`finish` says whether the file holds every record; use
    as a context manager (its thread ends on exit)."""

    def __init__(self, path: Path, src: int, check: Callable[[pa.Table], None] | None = None):
        self.path = path
        self.src = src
        self.check = check
        self.rows = 0                    # records handed over so far
        self.gave_up: str | None = None  # why the stream stopped, once it has
        self._floor: int | None = None   # no record may come before this time any more
        self._merging = False            # records are held (a log by CPU buffers)
        self._stated = 0                 # CPUs the header names (0: none)
        self._latest = np.zeros(0, np.uint64)    # per CPU: its latest time so far ...
        self._seen = np.zeros(0, np.bool_)       # ... once it has shown a record
        self._held: list[pl.DataFrame] = []      # the writer's records above the watermark
        self._held_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pvtrace-stream")
        self._pending: deque[Future] = deque()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def expect_cpus(self, ncpu: int) -> None:
        """The header's ``# ncpu=``: CPUs 0 to ``ncpu - 1`` may print records, so the
        watermark waits for each of them."""
        if 0 < ncpu <= MAX_CPUS and not self.rows:
            self._stated = ncpu
            self._grow(ncpu)

    def add(self, events: pl.DataFrame) -> None:
        """Hand over the next records (the parser's columns, without ``src``)."""
        if self.gave_up is not None or events.height == 0:
            return
        ts = events.get_column("ts").to_numpy()
        cpu = events.get_column("cpu").to_numpy()
        top = int(cpu.max())
        if top >= MAX_CPUS or int(cpu.min()) < 0:
            self.give_up(f"CPU numbers beyond {MAX_CPUS}")
            return
        self._grow(top + 1)
        first, last, in_order, one_cpu = _follow(ts, cpu, self._latest, self._seen)
        if self._floor is not None and first < self._floor:
            self.give_up("the log is in neither time nor CPU-buffer order")
            return
        self.rows += events.height
        if not self._merging and in_order and not one_cpu:
            # In time order, as -x temporal prints it: written whole. (A piece holding only
            # one CPU's records is in order too, and may be one CPU buffer of many: it waits
            # for the watermark.)
            self._floor = last
            self._submit(self._write, events)
            return
        if not self._stated:
            # Which CPUs may print records is unknown: records held for the CPUs seen so
            # far could be overtaken by one not seen yet.
            self.give_up("the log is not in time order, and its header states no ncpu "
                         "to follow its CPUs' buffers")
            return
        self._merging = True
        expected = self._seen.copy()
        expected[:self._stated] = True
        mark = int(self._latest[expected].min()) if self._seen[expected].all() else None
        if mark is not None:
            self._floor = mark if self._floor is None else max(self._floor, mark)
        self._submit(self._merge, events, mark)

    def _grow(self, n: int) -> None:
        if n > self._latest.size:
            self._latest = np.concatenate([self._latest,
                                           np.zeros(n - self._latest.size, np.uint64)])
            self._seen = np.concatenate([self._seen, np.zeros(n - self._seen.size, np.bool_)])

    def _submit(self, fn: Callable, *args: object) -> None:
        if len(self._pending) >= QUEUED:
            # The parser waits for the writer (a slow disk) rather than hold the pieces.
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    def _merge(self, events: pl.DataFrame, mark: int | None) -> None:
        """In the writer's thread: hold ``events`` with the records held before, and write
        those up to the watermark ``mark`` (None: not known yet), sorted."""
        if self.gave_up is not None:
            return
        self._held.append(events)
        self._held_rows += events.height
        if mark is None:
            self._hold_no_more()
            return
        held = pl.concat(self._held, rechunk=False) if len(self._held) > 1 else self._held[0]
        # Sorted once, stably (ties keep line order): the records up to the watermark are
        # written in that order, the others held in it (they precede, in line order, all
        # the records still to come, so the next sort keeps ties in line order too).
        ts = held.get_column("ts").to_numpy()
        order = np.argsort(ts, kind="stable")
        ready = int(np.searchsorted(ts[order], np.uint64(mark), side="right"))
        self._held = [held[order[ready:]]] if ready < held.height else []
        self._held_rows = held.height - ready
        if ready:
            self._write(held, order[:ready])
        self._hold_no_more()

    def _hold_no_more(self) -> None:
        if self._held_rows > HELD_ROWS:
            self.give_up(f"more than {HELD_ROWS:,} records wait for the watermark (a CPU "
                         "that records nothing, or buffers printed only at the end)")
            self._held = []

    def _write(self, events: pl.DataFrame, rows: np.ndarray | None = None) -> None:
        """Write ``events`` (the ``rows`` of them, in that order; default: all, in time
        order) as one row group."""
        if self.gave_up is not None:
            return
        try:
            parts, _ = order.ordered_parts(
                events, events.height if rows is None else len(rows), small_first=False,
                order=rows)
            for part in parts:
                # the input's number, the same on every row: added, not gathered
                part = part.append_column("src", pa.array(
                    np.full(part.num_rows, self.src, np.uint16)))
                if self.check is not None:
                    self.check(part)
                if self._writer is None:
                    self._writer = bundle.open_part_writer(self.path, "events", part)
                bundle.write_part(self._writer, "events", part)
        except Exception as exc:        # noqa: BLE001 - the sorted path meets it again
            self.give_up(f"{type(exc).__name__}: {exc}".splitlines()[0][:200])

    def _flush(self) -> None:
        """In the writer's thread, at the end: every record held is final."""
        held, self._held = self._held, []
        if held and self.gave_up is None:
            self._write(pl.concat(held, rechunk=False) if len(held) > 1 else held[0])

    def give_up(self, why: str) -> None:
        """Stop writing (the first reason is kept); what was written is deleted by
        :meth:`finish` or :meth:`close`."""
        if self.gave_up is None:
            self.gave_up = why

    def finish(self, records: int) -> bundle.Written | None:
        """The written table, if it holds exactly the ``records`` records the input has;
        else None (the stream gave up, or the parser kept records it never handed over)."""
        if self.gave_up is None:
            self._submit(self._flush)
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
        self._held = []
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


@njit(nogil=True, cache=True)
def _follow(ts, cpu, latest, seen):
    """One pass over a piece: each CPU's latest time into ``latest`` (``seen`` once it has
    one); returns (earliest time, latest time, whether the piece is in time order, whether
    it holds one CPU's records only)."""
    first = ts[0]
    last = ts[0]
    in_order = True
    one_cpu = True
    for i in range(ts.size):
        t = ts[i]
        c = cpu[i]
        if not seen[c] or t > latest[c]:
            latest[c] = t
            seen[c] = True
        if t < first:
            first = t
        if t > last:
            last = t
        if i and t < ts[i - 1]:
            in_order = False
        if c != cpu[0]:
            one_cpu = False
    return first, last, in_order, one_cpu
