"""LOCK_PROFILING dumps: ``sysctl debug.lock.prof.stats`` (``sys/kern/subr_lock.c``).

A kernel built with ``options LOCK_PROFILING`` counts, per acquisition point (file, line, lock
name), how long the lock was held and waited for. ``dump_lock_prof_stats`` prints a header and
one row per point (``lock_prof_output``)::

    "\\n%8s %9s %11s %11s %11s %6s %6s %2s %6s %s\\n"     max wait_max total wait_total count
                                                        avg wait_avg cnt_hold cnt_lock name
    "%8ju %9ju %11ju %11ju %11ju %6ju %6ju %2ju %6ju %s:%d (%s:%s)\\n"

Times are measured in ns and printed in microseconds, truncated; ``count`` counts
acquisitions, ``cnt_lock`` the contested ones, ``cnt_hold`` is always 0. ``sysctl`` prefixes the
value with ``debug.lock.prof.stats:`` (``sysctl -n`` does not). Kernels before ``wait_max`` was
added print 8 numbers (``%6ju %12ju %12ju %11ju %5ju %5ju %12ju %12ju``: max total wait_total
count avg wait_avg cnt_hold cnt_lock); such rows get a null ``wait_max``. The header tells which
layout follows; without one, the number of leading integers does.

The name column is ``file:line (class:name)``; the lock class has no colon ("sleep mutex",
"spin mutex", "rw", "sx", "lockmgr"), the lock name may contain spaces, colons and parentheses,
so the split is: the file up to the first ``:<digits> (``, the class up to the next colon, the
name up to the final ``)``. Rows are parsed with one regex per line; anything else is a problem.

The counters run from the last ``debug.lock.prof.reset``: two dumps in one file (``sysctl ... >>
file`` twice) overlap unless the profile was reset between them, and a sum of their rows would
count the first one twice. Each dump keeps its number (``dump``), the summary takes them one by
one, and a dump whose every point counts at least what the dump before it did (no reset between
them, or the same dump saved twice) is pointed out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import polars as pl

from pvtrace.ingest.common import Format, Parsed, Problem, ProblemKind
from pvtrace.ingest.lockstat_parse import (Diagnostics, family_expr, fmt_ns, frame,
                                           line_problem, out_of_range, read_lines, too_big)

_PREFIX = re.compile(r"^debug\.lock\.prof\.stats:\s*$")
_HEADER = re.compile(r"^(?:debug\.lock\.prof\.stats:)?\s*max\s+(?P<wm>wait_max\s+)?total\s+"
                     r"wait_total\s+count\s+avg\s+wait_avg\s+cnt_hold\s+cnt_lock\s+name\s*$")
_ROW = re.compile(r"^\s*(?P<nums>\d+(?:\s+\d+){7,8}) (?P<name>\S.*?)\s*$")
_NAME = re.compile(r"^(?P<file>.*?):(?P<line>\d+) \((?P<cls>[^:]*):(?P<lock>.*)\)$")
_NUM_COLS = ["max", "wait_max", "total", "wait_total", "count", "avg", "wait_avg", "cnt_hold",
             "cnt_lock"]


def parse(path: Path, src: int, name: str) -> Parsed:
    """Parse one or more ``debug.lock.prof.stats`` dumps."""
    lines, cut_off = read_lines(path)
    diags = Diagnostics(src, name)
    problems: list[Problem] = []
    rows: list[dict[str, Any]] = []
    dump, wide = 0, None          # wide: the header has wait_max (9 numbers); None: no header
    headers: dict[int, int] = {}  # dump -> line of its header
    for no, text in enumerate(lines, start=1):
        if not text.strip() or _PREFIX.match(text):
            continue
        if (m := _HEADER.match(text)) is not None:
            dump, wide = dump + 1, m["wm"] is not None
            headers[dump] = no
            continue
        reason = too_big(text) or _row(rows, src, no, max(dump, 1), wide, text)
        if reason is not None:
            reason = diags.take(no, text, reason)
        if reason is not None:
            problems.append(line_problem(src, name, no, reason, cut_off, len(lines)))
    problems.extend(diags.problems)
    df = frame(rows, "lockprof")
    problems.extend(Problem(src, name, headers.get(d), ProblemKind.WARNING,
                            f"LOCK_PROFILING dump {d} counts at least what dump {d - 1} did at "
                            f"every point: the profile was not reset between them (or one dump "
                            f"was saved twice), so it contains dump {d - 1}; the summary takes "
                            "each dump on its own")
                    for d in _cumulative_dumps(df))
    problems.sort(key=lambda p: p.line or 0)
    meta = {
        "format": Format.LOCKPROF.value, "dumps": dump, "rows": len(df),
        "acquisitions": _sum(df["count"]), "contested": _sum(df["cnt_lock"]),
        "wait_total_us": _sum(df["wait_total"]),
    }
    return Parsed(format=Format.LOCKPROF, tables={"lockprof": df, "diagnostics": diags.frame()},
                  problems=problems, meta=meta, records=len(df), lines=len(lines))


def _row(rows: list[dict[str, Any]], src: int, no: int, dump: int, wide: bool | None,
         text: str) -> str | None:
    m = _ROW.match(text)
    if m is None:
        return "not a LOCK_PROFILING header or row (9 numbers, then file:line (class:name))"
    nums = [int(x) for x in m["nums"].split()]
    if wide is None:
        wide = len(nums) == 9
    if len(nums) != (9 if wide else 8):
        return f"LOCK_PROFILING row with {len(nums)} numbers, the header announces " \
               f"{9 if wide else 8}"
    if not wide:
        nums.insert(1, None)      # type: ignore[arg-type]  # no wait_max before it existed
    n = _NAME.match(m["name"])
    if n is None:
        return "LOCK_PROFILING row: name is not file:line (class:name)"
    row = {"src": src, "line_no": no, "dump": dump, **dict(zip(_NUM_COLS, nums)),
           "name": m["name"], "file": n["file"], "line": int(n["line"]),
           "lock_class": n["cls"], "lock_name": n["lock"]}
    # The kernel prints the source line as %d: a bigger one is a corrupt line, like any number
    # past its column's type.
    if (why := out_of_range("lockprof", row)) is not None:
        return f"LOCK_PROFILING row: {why}"
    rows.append(row)
    return None


def _cumulative_dumps(df: pl.DataFrame) -> list[int]:
    """Dumps (after the first) whose acquisitions and waits at every point of the dump before
    them are at least that dump's: counters that ran on without a reset."""
    out = []
    key = ["name"]
    for d in range(2, int(df["dump"].max() or 0) + 1):
        before = df.filter(pl.col("dump") == d - 1).group_by(key).agg(
            pl.col("count", "wait_total").sum())
        now = df.filter(pl.col("dump") == d).group_by(key).agg(
            pl.col("count", "wait_total").sum())
        if before.is_empty() or now.is_empty():
            continue
        joined = before.join(now, on=key, how="left", suffix="_now")
        if (joined["count_now"].is_not_null().all()
                and (joined["count_now"] >= joined["count"]).all()
                and (joined["wait_total_now"] >= joined["wait_total"]).all()):
            out.append(d)
    return out


def _sum(col: pl.Series) -> int:
    """Exact sum of an int64 column: summed in 128 bits, since every value fits int64 but
    their sum need not, and int64 sums wrap negative."""
    return int(col.cast(pl.Int128).sum() or 0)


def summary_lines(tables: dict[str, pl.DataFrame]) -> list[str]:
    """The pv-list and pv-chunk-list families against all locks: waits, acquisitions, contention."""
    df = tables.get("lockprof")
    if df is None or df.is_empty():
        return []
    df = df.with_columns(family=family_expr(pl.col("lock_name")))
    dumps = df.select("src", "dump").unique().sort("src", "dump").rows()
    if len(dumps) == 1:
        return _dump_lines(df, "lock profiling")
    out = [f"lock profiling: {len(dumps)} dumps, each on its own (the counters run from the "
           "last reset, so dumps taken without one between them overlap, and their sum would "
           "count events twice)"]
    for src, dump in dumps:
        one = df.filter((pl.col("src") == src) & (pl.col("dump") == dump))
        out += _dump_lines(one, f"dump {dump} of input {src + 1} (from line "
                                f"{one['line_no'].min()})")
    return out


def _dump_lines(df: pl.DataFrame, what: str) -> list[str]:
    """The summary of one dump's rows (or of all rows, when there is one dump)."""
    tot = [_sum(df[c]) for c in ("wait_total", "count", "cnt_lock", "total")]
    out = [f"{what}: {tot[1]} acquisitions, {tot[2]} contested, "
           f"wait {fmt_ns(tot[0] * 1000)}, hold {fmt_ns(tot[3] * 1000)} (all locks)"]
    for fam, label in (("pv", "pv list"), ("pvc", "pv chunk list")):
        fd = df.filter(pl.col("family") == fam)
        f = [_sum(fd[c]) for c in ("wait_total", "count", "cnt_lock", "total")]
        out.append(f"  {label}: wait {fmt_ns((f[0] or 0) * 1000)} ({_pct(f[0], tot[0])}), "
                   f"{f[1] or 0} acquisitions ({_pct(f[1], tot[1])}), "
                   f"{f[2] or 0} contested ({_pct(f[2], tot[2])}), "
                   f"hold {fmt_ns((f[3] or 0) * 1000)} ({_pct(f[3], tot[3])})")
    return out


def _pct(part: int | None, whole: int | None) -> str:
    return f"{100.0 * (part or 0) / whole:.1f}%" if whole else "n/a"
