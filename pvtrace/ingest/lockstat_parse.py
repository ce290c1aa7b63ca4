"""Pieces shared by the lockstat(1) and LOCK_PROFILING parsers.

- lockstat's event table and its ``-p`` (parsable) lines, below;
- :func:`read_lines` (the input as lines, and whether the last one was cut off);
- :func:`frame`: rows as a DataFrame typed from ``schemas/<table>.json``;
- :class:`Diagnostics`: ``lockstat: warning: ...`` and ``dtrace: ...`` lines of a captured stderr;
- :func:`family_expr`: which lock family a lock column names (the pv-list locks, the pv-chunk-list
  lock, anything else), for the summaries after ingest; :func:`fmt_ns`.

lockstat numbers its events by their slot in ``g_event_info[]``
(``cddl/contrib/opensolaris/cmd/lockstat/lockstat.c``): ``-e`` takes those numbers and ``-p``
(parsable output) prints them instead of the description. :data:`EVENT_NAMES` is that table as
current FreeBSD has it (very old versions had fewer events, with the same numbers for 0-7 and
32-35); empty slots print as ``Unknown event (type N)``, as lockstat itself names them.

A ``-p`` line is what ``report_stats`` prints with ``g_pflag`` set::

    "%u %u" event count, " %s" lock, " %s" caller, " %f" rcnt,
    [" %llu" total ns]          unless -b
    [64 x " %u" buckets]        with -h or -s
    [" %s" frame ...]           with -s, innermost first, until the first null frame

The lock may contain spaces (newer FreeBSD prints lock names such as ``pmap pv list``), so the
line is parsed from the right. **Ambiguity rule**: stack frames are ``symbol``,
``symbol+0xoff`` or ``0xaddr`` and never a plain decimal number, so the trailing tokens that are
not decimal numbers are the frames; before them comes a run of plain integers that must be
empty (``-b``), one integer (the total, ``-t``) or 65 integers (total and 64 buckets,
``-h``/``-s``); the token before that run must be the ``%f`` rcnt, the one before it is the
caller, and everything between the count and the caller, spacing kept, is the lock. A lock
name that ends in a number is fine (the caller separates it from the rcnt); a caller that is a
plain number or a ``%f``-like float cannot be told from the numbers and is not accepted.
Buckets are kept only where non-zero (the human report prints every bucket from the first to
the last non-empty one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pvtrace import schemas
from pvtrace.ingest.common import Problem, ProblemKind

_KNOWN: dict[int, str] = {
    0: "Adaptive mutex spin",
    1: "Adaptive mutex block",
    2: "Spin lock spin",
    3: "Thread lock spin",
    4: "R/W writer blocked by writer",
    5: "R/W writer blocked by readers",
    6: "R/W reader blocked by writer",
    7: "R/W reader blocked by write wanted",
    8: "R/W writer spin on writer",
    9: "R/W writer spin on readers",
    10: "R/W reader spin on writer",
    11: "R/W reader spin on write wanted",
    12: "SX exclusive block",
    13: "SX shared block",
    14: "SX exclusive spin",
    15: "SX shared spin",
    32: "Adaptive mutex hold",
    33: "Spin lock hold",
    34: "R/W writer hold",
    35: "R/W reader hold",
    36: "SX shared hold",
    37: "SX exclusive hold",
    56: "Profiling interrupt",
    60: "Recursive lock entry detected",
    61: "Lockstat enter failure",
    62: "Lockstat exit failure",
    63: "Lockstat record failure",
}

LS_MAX_EVENTS = 64
EVENT_NAMES: dict[int, str] = {
    i: _KNOWN.get(i, f"Unknown event (type {i})") for i in range(LS_MAX_EVENTS)
}
EVENT_INDEX: dict[str, int] = {desc: i for i, desc in EVENT_NAMES.items()}
# What an event's time column holds (g_event_info's ev_units): nanoseconds, except for the
# error events 60, 61 and 63, whose column is no time ("(N/A)": a recursion count, say), and
# the empty slots ("units").
EVENT_UNITS: dict[int, str] = {
    i: ("(N/A)" if i in (60, 61, 63) else "nsec" if i in _KNOWN else "units")
    for i in range(LS_MAX_EVENTS)
}

HIST_BUCKETS = 64

_TOKEN = re.compile(r"\S+")
_INT = re.compile(r"\d+")
_FLOAT = re.compile(r"\d+\.\d+")
_LONG_NUMBER = re.compile(r"(?<![\w.])\d{19,}(?![\w.])")
INT64_MAX = 2**63 - 1


def too_big(text: str) -> str | None:
    """Why ``text`` cannot be a report line when it holds a decimal number beyond what the
    tables' signed 64-bit columns hold (2^63 - 1 ns is 292 years: a corrupt line), or None."""
    for m in _LONG_NUMBER.finditer(text):
        if int(m.group()) > INT64_MAX:
            return f"number {m.group()[:30]} is beyond the signed 64-bit range (corrupt line?)"
    return None


@dataclass(frozen=True, slots=True)
class PLine:
    """One ``-p`` line, split."""

    event_index: int
    count: int
    lock: str
    caller: str
    rcnt: float
    total_ns: int | None          # None with -b
    buckets: tuple[int, ...]      # 64 counts with -h/-s, else empty
    frames: tuple[str, ...]       # with -s


def looks_parsable(line: str) -> bool:
    """Cheap test: two leading integers, as only a ``-p`` line has."""
    toks = line.split(None, 2)
    return len(toks) == 3 and toks[0].isdigit() and toks[1].isdigit()


def parse_p_line(line: str) -> PLine | str:
    """Split one ``-p`` line; on failure return the reason (for a MALFORMED problem)."""
    toks = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(line)]
    if len(toks) < 5:
        return f"lockstat -p line with {len(toks)} fields, expected at least 5 " \
               "(event count lock caller rcnt)"
    if not (_INT.fullmatch(toks[0][0]) and _INT.fullmatch(toks[1][0])):
        return "lockstat -p line does not start with the event index and count"
    if int(toks[0][0]) >= LS_MAX_EVENTS:
        # -p prints the event's slot in g_event_info[LS_MAX_EVENTS]: nothing else is a lockstat
        # event, and a bigger number is a corrupt line (it would not fit event_index either).
        return f"lockstat -p line: event index {toks[0][0][:30]} is not a lockstat event " \
               f"(0-{LS_MAX_EVENTS - 1})"
    j = len(toks)
    while j > 4 and not _INT.fullmatch(toks[j - 1][0]) and not _FLOAT.fullmatch(toks[j - 1][0]):
        j -= 1
    frames = tuple(t[0] for t in toks[j:])
    k = 0
    while j - k - 1 > 3 and _INT.fullmatch(toks[j - k - 1][0]):
        k += 1
    r = j - k - 1                       # index of the rcnt token
    if not _FLOAT.fullmatch(toks[r][0]) or r < 4:
        return "lockstat -p line: no rcnt (%f) field before the numbers at its end"
    if k not in (0, 1, 1 + HIST_BUCKETS):
        return f"lockstat -p line: {k} numbers after rcnt, expected 0 (-b), 1 (total ns) " \
               f"or {1 + HIST_BUCKETS} (total ns and {HIST_BUCKETS} histogram buckets)"
    if frames and k != 1 + HIST_BUCKETS:
        return "lockstat -p line: stack frames without the 64 histogram buckets"
    nums = [int(t[0]) for t in toks[r + 1:j]]
    caller = toks[r - 1]
    lock = line[toks[2][1]:toks[r - 2][2]]
    return PLine(
        event_index=int(toks[0][0]), count=int(toks[1][0]), lock=lock, caller=caller[0],
        rcnt=float(toks[r][0]), total_ns=nums[0] if nums else None,
        buckets=tuple(nums[1:]), frames=frames)


def line_problem(src: int, name: str, no: int, reason: str, cut_off: bool,
                 nlines: int) -> Problem:
    """A line that is no row: cut off when it is the unterminated last line, else malformed."""
    last = cut_off and no == nlines
    return Problem(src, name, no, ProblemKind.CUT_OFF if last else ProblemKind.MALFORMED,
                   ("last line cut off: " if last else "") + reason)


def unterminated_row(src: int, name: str, lines: list[str], cut_off: bool,
                     problems: list[Problem]) -> list[Problem]:
    """A warning for an unterminated last line that was understood: a report cut inside its
    last field (a caller ``vm_fault+0x1f3`` cut to ``vm_fa``) still parses, so it is kept and
    the user told to look at it."""
    if not cut_off or not lines or not lines[-1].strip() \
            or any(p.line == len(lines) for p in problems):
        return []
    return [Problem(src, name, len(lines), ProblemKind.WARNING,
                    "last line has no newline (capture interrupted?): kept, but its last field "
                    "may be cut short")]


def read_lines(path: Path) -> tuple[list[str], bool]:
    """The input's lines without their ends, and True when the last one has no newline."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    cut_off = bool(text) and not text.endswith("\n")
    return [ln.rstrip("\r") for ln in text.split("\n")[:None if cut_off else -1]], cut_off


@cache
def _polars_schema(table: str) -> dict[str, pl.DataType]:
    """Column types of ``schemas/<table>.json`` (dictionary strings as plain strings)."""
    empty = pl.from_arrow(schemas.load(table).arrow.empty_table())
    assert isinstance(empty, pl.DataFrame)
    return {c: pl.String() if isinstance(t, pl.Categorical) else t
            for c, t in empty.schema.items()}


@cache
def _int_ranges(table: str) -> dict[str, tuple[int, int, str]]:
    """Lowest and highest value, and type name, of each integer column of a table."""
    out: dict[str, tuple[int, int, str]] = {}
    for f in schemas.load(table).arrow:
        if pa.types.is_integer(f.type):
            bits = f.type.bit_width
            signed = pa.types.is_signed_integer(f.type)
            out[f.name] = ((-(1 << bits - 1), (1 << bits - 1) - 1) if signed
                           else (0, (1 << bits) - 1)) + (str(f.type),)
    return out


def int_range(table: str, column: str) -> tuple[int, int]:
    """The values ``table.column`` can hold (an integer column of the schema)."""
    lo, hi, _ = _int_ranges(table)[column]
    return lo, hi


def out_of_range(table: str, row: dict[str, Any]) -> str | None:
    """Why ``row`` cannot become a row of ``table``: a number its column's type cannot hold.

    A corrupt line can carry any number, and the schema's columns are narrower than Python's
    ints (int16 event indexes, int32 percentages and CPUs, ...). Checked per line, such a line
    becomes a malformed line with its number and line number, instead of failing the whole
    table when it is built.
    """
    ranges = _int_ranges(table)
    for column, value in row.items():
        if column in ranges and isinstance(value, int):
            lo, hi, kind = ranges[column]
            if not lo <= value <= hi:
                return f"{str(value)[:30]} does not fit column {table}.{column} ({kind}: " \
                       f"{lo}..{hi}; corrupt line?)"
    return None


def frame(rows: list[dict[str, Any]], table: str) -> pl.DataFrame:
    """``rows`` (dicts with the table's columns) as a DataFrame of the schema's types."""
    return pl.DataFrame(rows, schema=_polars_schema(table), orient="row")


# What a capture tool prints on stderr, as kinds of the diagnostics table.
_DIAG = re.compile(r"^(?P<tool>lockstat|dtrace): (?:warning: )?(?P<msg>.*?)\s*$")
_DIAG_KINDS = [
    (re.compile(r"^(?P<n>\d+) drops? on CPU (?P<cpu>\d+)"), "drops"),
    (re.compile(r"^(?P<n>\d+) dynamic variable drops?"), "dynvar_drops"),
    (re.compile(r"^(?P<n>\d+) aggregation drops? on CPU (?P<cpu>\d+)"), "aggregation_drops"),
    (re.compile(r"^ran out of data records"), "out_of_records"),
    (re.compile(r"^error "), "error"),
    (re.compile(r"^script .* matched (?P<n>\d+) probes?"), "matched"),
]


@dataclass
class Diagnostics:
    """Collects the capture tool's own lines: a diagnostics row and a WARNING problem each."""

    src: int
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def take(self, no: int, text: str, reason: str) -> str | None:
        """Record ``text`` if it is a ``lockstat:``/``dtrace:`` line and return None; otherwise
        return why the line is a problem: the parser's ``reason`` when it is no such line, or
        why the numbers of one that is cannot be recorded."""
        m = _DIAG.match(text)
        if m is None:
            return reason
        kind, n, cpu = "other", None, None
        for pattern, k in _DIAG_KINDS:
            if (d := pattern.match(m["msg"])) is not None:
                kind = k
                groups = d.groupdict()
                n = int(groups["n"]) if groups.get("n") else None
                cpu = int(groups["cpu"]) if groups.get("cpu") else None
                break
        row = {"src": self.src, "line": no, "kind": kind, "cpu": cpu, "count": n, "text": text}
        # dtrace prints a CPU as %d and counts as 64-bit numbers: one past the column's type
        # is a corrupt line, counted as malformed rather than recorded as a wrong number.
        if (why := out_of_range("diagnostics", row)) is not None:
            return f"{m['tool']}: {m['msg']}: {why}"
        self.rows.append(row)
        if kind != "matched":
            self.problems.append(Problem(self.src, self.name, no, ProblemKind.WARNING,
                                         f"{m['tool']}: {m['msg']}"))
        return None

    def frame(self) -> pl.DataFrame:
        return frame(self.rows, "diagnostics")


# Lock families for the summaries. pv list: the lock name "pmap pv list" (and the NUMA kernel's
# "pmap pv list dummy"), or in older output the symbols of the lock arrays, pv_list_locks
# (hashed kernels) and pv_table (per-superpage kernels), and pv_dummy_large, the NUMA kernel's
# lock of pages past the last segment (its pv_lock is at offset 0, so lockstat prints the bare
# symbol; pv_dummy is pmap.c's name for its md page), with +0xoff or -c's [size].
# pv chunk list: "pmap pv chunk list", or the pv_chunks_mutex / pv_chunks symbols.
_SUFFIX = r"(?:\+0x[0-9a-fA-F]+)?(?:\[\d+\])?"
PV_LIST = re.compile(rf"^(?:pmap pv list(?: dummy)?|(?:pv_list_locks|pv_table|pv_dummy(?:_large)?){_SUFFIX})$")
PV_CHUNK = re.compile(rf"^(?:pmap pv chunk list|(?:pv_chunks_mutex|pv_chunks){_SUFFIX})$")


def family_expr(lock: pl.Expr) -> pl.Expr:
    """``"pv"``, ``"pvc"`` or ``"other"`` for a lock column (null stays null)."""
    return (pl.when(lock.str.contains(PV_LIST.pattern)).then(pl.lit("pv"))
            .when(lock.str.contains(PV_CHUNK.pattern)).then(pl.lit("pvc"))
            .when(lock.is_not_null()).then(pl.lit("other")))


def fmt_ns(ns: float) -> str:
    """A duration for people: 812 ns, 3.402 ms, 12.500 s."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(ns) >= scale:
            return f"{ns / scale:.3f} {unit}"
    return f"{ns:.0f} ns"
