"""What every input-format parser returns, so ``pvtrace ingest`` can merge them into one bundle.

A parser reads one plain-text input (already decompressed, see :mod:`pvtrace.ingest.source`)
and returns a :class:`Parsed`: the rows it produced per table, every problem it found
(malformed lines with their line numbers, a cut-off last line, warnings printed by the capture
tool), and facts about the input for ``metadata.json``. Nothing is dropped silently: a line that
does not become a row becomes a :class:`Problem`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import polars as pl

from pvtrace.errors import printable


# The ten fields of an event-log record (SPEC section 1), in their order on a line.
RECORD_FIELDS = ("ts", "cpu", "tid", "ev", "cls", "lock", "mode", "ns", "pa", "op")
# The event letters of SPEC section 1, and those of lock events (which name a class, a lock
# and a mode w or r); P records name a page size, the others "-".
EVENTS = ("A", "R", "B", "S", "P", "E", "X")
LOCK_EVENTS = ("A", "R", "B", "S")
WAIT_EVENTS = ("B", "S")        # the records whose ns is a wait (0 on the others)
# The separator of the event-log parser's one-column line reader: the unit separator byte,
# which no log holds (pvtrace.ingest.pvlog._lines; arrowcsv reads skipped lines alike).
LINE_SEP = "\x1f"
# Lines as the slow path takes them (1-based ``line``, text ``l``), none of them.
NO_LINES = pl.DataFrame(schema={"line": pl.UInt64, "l": pl.String})


class Format(StrEnum):
    PVLOG = "pvlog"                      # pvtrace event log v1 (pvtrace.d output)
    LOCKSTAT = "lockstat"                # lockstat(1) human-readable report(s)
    LOCKSTAT_PARSABLE = "lockstat-p"     # lockstat -p output
    LOCKPROF = "lockprof"                # sysctl debug.lock.prof.stats


class ProblemKind(StrEnum):
    MALFORMED = "malformed"   # a line that is none of the things the format allows
    CUT_OFF = "cut_off"       # the last line ended without a newline and did not parse
    WARNING = "warning"       # the capture tool's own warning (drops, out of records, ...)


@dataclass(frozen=True, slots=True)
class Problem:
    src: int                 # index of the input in the ingest call
    path: str                # the input's name as the user gave it
    line: int | None         # 1-based line number, None when not about one line
    kind: ProblemKind
    reason: str

    def one_line(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return printable(f"{where}: {self.kind.value}: {self.reason}")


@dataclass
class Parsed:
    """The result of parsing one input."""

    format: Format
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    records: int = 0          # rows produced (the input's main table)
    lines: int = 0            # lines read

    @property
    def malformed(self) -> int:
        return sum(p.kind is ProblemKind.MALFORMED for p in self.problems)
