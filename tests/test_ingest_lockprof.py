"""LOCK_PROFILING (sysctl debug.lock.prof.stats) parsing.

``print_stats`` is ``dump_lock_prof_stats``/``lock_prof_output`` of ``sys/kern/subr_lock.c``
with the exact printf formats (current and pre-wait_max layouts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvtrace.ingest import lockprof
from pvtrace.ingest.common import Format, ProblemKind
from pvtrace.ingest.detect import sniff
from pvtrace.schemas import conform

DATA = Path(__file__).parent / "data" / "lockprof"
_FIXTURE = [HealthCheck.function_scoped_fixture]   # each example overwrites one tmp file


@dataclass
class Point:
    file: str
    line: int
    lock_class: str
    lock_name: str
    max_ns: int = 0
    wait_max_ns: int = 0
    tot_ns: int = 0
    wait_ns: int = 0
    cnt: int = 0
    contested: int = 0

    def expected(self, old: bool = False) -> tuple:
        avg = self.tot_ns // (self.cnt * 1000) if self.cnt else 0
        wavg = self.wait_ns // (self.cnt * 1000) if self.cnt else 0
        return (self.max_ns // 1000, None if old else self.wait_max_ns // 1000,
                self.tot_ns // 1000, self.wait_ns // 1000, self.cnt, avg, wavg, 0,
                self.contested, f"{self.file}:{self.line} ({self.lock_class}:{self.lock_name})",
                self.file, self.line, self.lock_class, self.lock_name)


COLS = ("max", "wait_max", "total", "wait_total", "count", "avg", "wait_avg", "cnt_hold",
        "cnt_lock", "name", "file", "line", "lock_class", "lock_name")


def print_stats(points: list[Point], *, prefix: bool = True, old: bool = False) -> str:
    """sysctl debug.lock.prof.stats: the sysctl prefix, the header, one row per point."""
    if old:   # before wait_max (assumed header: the same words without wait_max)
        out = ["\n%6s %12s %12s %11s %5s %5s %12s %12s %s\n" % (
            "max", "total", "wait_total", "count", "avg", "wait_avg", "cnt_hold", "cnt_lock",
            "name")]
    else:
        out = ["\n%8s %9s %11s %11s %11s %6s %6s %2s %6s %s\n" % (
            "max", "wait_max", "total", "wait_total", "count", "avg", "wait_avg", "cnt_hold",
            "cnt_lock", "name")]
    for p in points:
        avg = p.tot_ns // (p.cnt * 1000) if p.cnt else 0
        wavg = p.wait_ns // (p.cnt * 1000) if p.cnt else 0
        if old:
            out.append("%6d %12d %12d %11d %5d %5d %12d %12d %s:%d (%s:%s)\n" % (
                p.max_ns // 1000, p.tot_ns // 1000, p.wait_ns // 1000, p.cnt, avg, wavg, 0,
                p.contested, p.file, p.line, p.lock_class, p.lock_name))
        else:
            out.append("%8d %9d %11d %11d %11d %6d %6d %2d %6d %s:%d (%s:%s)\n" % (
                p.max_ns // 1000, p.wait_max_ns // 1000, p.tot_ns // 1000, p.wait_ns // 1000,
                p.cnt, avg, wavg, 0, p.contested, p.file, p.line, p.lock_class, p.lock_name))
    return ("debug.lock.prof.stats: " if prefix else "") + "".join(out)


def parse_text(tmp_path: Path, text: str):
    path = tmp_path / "stats.txt"
    path.write_text(text)
    return lockprof.parse(path, 1, "stats.txt")


def test_data_file_exact():
    parsed = lockprof.parse(DATA / "pv_stats.txt", 0, "pv_stats.txt")
    assert parsed.problems == []
    assert parsed.format is Format.LOCKPROF
    df = parsed.tables["lockprof"]
    conform(df, "lockprof")
    assert df.select("line_no", "dump", *COLS).rows()[:3] == [
        (3, 1, 14, 351, 1824375, 4826503, 3521108, 0, 1, 0, 61202,
         "amd64/amd64/pmap.c:4210 (rw:pmap pv list)", "amd64/amd64/pmap.c", 4210, "rw",
         "pmap pv list"),
        (4, 1, 9, 207, 913004, 1729938, 1866502, 0, 0, 0, 30577,
         "amd64/amd64/pmap.c:5067 (rw:pmap pv list)", "amd64/amd64/pmap.c", 5067, "rw",
         "pmap pv list"),
        (5, 1, 6, 98, 101342, 310227, 427601, 0, 0, 0, 9021,
         "amd64/amd64/pmap.c:4563 (sleep mutex:pmap pv chunk list)", "amd64/amd64/pmap.c",
         4563, "sleep mutex", "pmap pv chunk list")]
    assert df.select("lock_class", "lock_name").rows()[-2:] == [
        ("sx", "vm map (user)"), ("spin mutex", "sched lock 3")]


@pytest.mark.parametrize("old, prefix", [(False, True), (False, False), (True, False)])
def test_detected_as_lockprof(old, prefix):
    p = Point("a.c", 1, "rw", "pmap pv list", 1000, 1000, 1000, 1000, 1, 0)
    assert sniff(print_stats([p], old=old, prefix=prefix), "x") is Format.LOCKPROF


def test_summary_lines():
    parsed = lockprof.parse(DATA / "pv_stats.txt", 0, "pv_stats.txt")
    assert lockprof.summary_lines(parsed.tables) == [
        "lock profiling: 10303433 acquisitions, 220169 contested, wait 26.911 s, "
        "hold 15.739 s (all locks)",
        "  pv list: wait 6.556 s (24.4%), 5387610 acquisitions (52.3%), 91779 contested "
        "(41.7%), hold 2.737 s (17.4%)",
        "  pv chunk list: wait 332.228 ms (1.2%), 858811 acquisitions (8.3%), 9431 contested "
        "(4.3%), hold 153.673 ms (1.0%)"]


def test_summary_lines_on_conformed_tables():
    parsed = lockprof.parse(DATA / "pv_stats.txt", 0, "pv_stats.txt")
    tables = {k: pl.from_arrow(conform(v, k)) for k, v in parsed.tables.items()}
    assert lockprof.summary_lines(tables) == lockprof.summary_lines(parsed.tables)


def test_old_layout_without_wait_max(tmp_path):
    pts = [Point("amd64/amd64/pmap.c", 2210, "rw", "pmap pv list", 5000, 0, 90_000_000,
                 30_000_000, 4000, 12)]
    parsed = parse_text(tmp_path, print_stats(pts, old=True))
    assert parsed.problems == []
    assert parsed.tables["lockprof"].select(COLS).rows() == [pts[0].expected(old=True)]


def test_several_dumps_and_bad_lines(tmp_path):
    p = Point("kern/vfs_subr.c", 2937, "sleep mutex", "vnode interlock", 1000, 2000, 3000, 4000,
              5, 1)
    text = (print_stats([p]) + "garbage\n" + print_stats([p, p], prefix=False)
            + "      12        3 short row\n" + "       1         2           3 4 5 6 7 8 9 x\n"
            + "       1         2           3 4 5 6 7 8 9 f:1 (x")
    parsed = parse_text(tmp_path, text)
    df = parsed.tables["lockprof"]
    assert df.select("line_no", "dump").rows() == [(3, 1), (7, 2), (8, 2)]
    assert [(q.line, q.kind) for q in parsed.problems] == [
        (4, ProblemKind.MALFORMED), (6, ProblemKind.WARNING), (9, ProblemKind.MALFORMED),
        (10, ProblemKind.MALFORMED), (11, ProblemKind.CUT_OFF)]
    assert "file:line (class:name)" in parsed.problems[3].reason
    assert "dump 2 counts at least what dump 1 did" in parsed.problems[1].reason


def test_numbers_beyond_64_bits_are_malformed_lines(tmp_path):
    p = Point("a.c", 1, "rw", "x", 1000, 1000, 1000, 1000, 1, 0)
    text = print_stats([p]) + "       1 " + "9" * 20 + "           3 4 5 6 7 8 9 a.c:1 (rw:x)\n"
    parsed = parse_text(tmp_path, text)
    assert [(q.line, q.kind) for q in parsed.problems] == [(4, ProblemKind.MALFORMED)]
    assert "beyond the signed 64-bit range" in parsed.problems[0].reason
    assert parsed.tables["lockprof"].height == 1


def test_numbers_past_the_column_types_are_malformed_lines(tmp_path):
    """A source line past int32 (the kernel prints it with %d) or a drop line's CPU past int32
    is a malformed line naming the column, not a crash building the table."""
    p = Point("a.c", 1, "rw", "x", 1000, 1000, 1000, 1000, 1, 0)
    text = (print_stats([p])                                                      # 1-3
            + "       1 2 3 4 5 6 7 8 9 a.c:99999999999 (rw:x)\n"                 # 4
            + "dtrace: 5 drops on CPU 4294967296\n"                               # 5
            + "dtrace: 5 drops on CPU 3\n")                                       # 6
    parsed = parse_text(tmp_path, text)
    assert [(q.line, q.kind, q.reason) for q in parsed.problems] == [
        (4, ProblemKind.MALFORMED, "LOCK_PROFILING row: 99999999999 does not fit column "
                                   "lockprof.line (int32: -2147483648..2147483647; corrupt line?)"),
        (5, ProblemKind.MALFORMED, "dtrace: 5 drops on CPU 4294967296: 4294967296 does not fit "
                                   "column diagnostics.cpu (int32: -2147483648..2147483647; "
                                   "corrupt line?)"),
        (6, ProblemKind.WARNING, "dtrace: 5 drops on CPU 3")]
    assert parsed.tables["lockprof"]["line_no"].to_list() == [3]
    assert parsed.tables["diagnostics"].select("line", "cpu", "count").rows() == [(6, 3, 5)]


def test_totals_past_64_bits_are_summed_exactly(tmp_path):
    """Each number fits int64, their sums do not: the summary and metadata must not wrap."""
    m = 2**63 - 1
    p = Point("a.c", 1, "rw", "pmap pv list", 0, 0, 0, 0, m, m)
    parsed = parse_text(tmp_path, print_stats([p, p]))
    assert parsed.problems == []
    assert (parsed.meta["acquisitions"], parsed.meta["contested"]) == (2 * m, 2 * m)
    assert lockprof.summary_lines(parsed.tables) == [
        f"lock profiling: {2 * m} acquisitions, {2 * m} contested, wait 0 ns, hold 0 ns "
        "(all locks)",
        f"  pv list: wait 0 ns (n/a), {2 * m} acquisitions (100.0%), {2 * m} contested "
        "(100.0%), hold 0 ns (n/a)",
        "  pv chunk list: wait 0 ns (n/a), 0 acquisitions (0.0%), 0 contested (0.0%), "
        "hold 0 ns (n/a)"]


def test_wrong_number_of_columns_for_header(tmp_path):
    p = Point("a.c", 1, "rw", "x", 1000, 1000, 1000, 1000, 1, 0)
    text = print_stats([p]) + print_stats([p], old=True).splitlines(keepends=True)[2]
    parsed = parse_text(tmp_path, text)
    assert [(q.line, q.kind) for q in parsed.problems] == [(4, ProblemKind.MALFORMED)]
    assert "8 numbers" in parsed.problems[0].reason


_NAME = st.text("abcdefghijklmnopqrstuvwxyzABC0123456789_ ()[]:-./#", min_size=1,
                max_size=24).map(str.strip).filter(bool)
_FILE = st.from_regex(r"(\.\./)*[a-z0-9_]{1,8}(/[a-z0-9_]{1,8}){0,3}\.[ch]", fullmatch=True) \
    .map(lambda f: f.replace("../", ""))
_POINT = st.builds(
    Point, _FILE, st.integers(0, 100000),
    st.sampled_from(["sleep mutex", "spin mutex", "rw", "sx", "lockmgr", "rm", "rmslock"]),
    _NAME, st.integers(0, 10**12), st.integers(0, 10**12), st.integers(0, 10**15),
    st.integers(0, 10**15), st.integers(0, 10**9), st.integers(0, 10**9))


@settings(max_examples=80, deadline=None, suppress_health_check=_FIXTURE)
@given(points=st.lists(_POINT, max_size=8), old=st.booleans(), prefix=st.booleans())
def test_property_round_trip(tmp_path, points, old, prefix):
    parsed = parse_text(tmp_path, print_stats(points, old=old, prefix=prefix))
    assert parsed.problems == []
    assert parsed.tables["lockprof"].select(COLS).rows() == [p.expected(old) for p in points]
    conform(parsed.tables["lockprof"], "lockprof")


@pytest.mark.parametrize("lock, family", [
    ("pmap pv list", "pv"), ("pmap pv list dummy", "pv"), ("pmap pv chunk list", "pvc"),
    ("pmap", "other")])
def test_families(tmp_path, lock, family):
    p = Point("amd64/amd64/pmap.c", 1, "rw", lock, 0, 0, 0, 5000, 10, 2)
    parsed = parse_text(tmp_path, print_stats([p]))
    lines = lockprof.summary_lines(parsed.tables)
    pv = "wait 5.000 us (100.0%)" in lines[1]
    pvc = "wait 5.000 us (100.0%)" in lines[2]
    assert (pv, pvc) == (family == "pv", family == "pvc")


def test_dumps_are_summarised_one_by_one(tmp_path):
    """The counters run from the last reset: two dumps in one file overlap unless the profile
    was reset between them, so they are never summed. A dump that counts at least the one
    before it everywhere (no reset, or one dump saved twice) is pointed out."""
    pv = Point("amd64/amd64/pmap.c", 4210, "rw", "pmap pv list", 120_000, 3_400_000,
               900_000_000, 450_000_000, 100_000, 5000)
    pvc = Point("amd64/amd64/pmap.c", 5012, "sleep mutex", "pmap pv chunk list", 80_000,
                900_000, 300_000_000, 120_000_000, 50_000, 2000)
    parsed = parse_text(tmp_path, print_stats([pv, pvc]) + print_stats([pv, pvc]))
    assert [(q.line, q.kind) for q in parsed.problems] == [(6, ProblemKind.WARNING)]
    assert lockprof.summary_lines(parsed.tables) == [
        "lock profiling: 2 dumps, each on its own (the counters run from the last reset, so "
        "dumps taken without one between them overlap, and their sum would count events twice)",
        "dump 1 of input 2 (from line 3): 150000 acquisitions, 7000 contested, wait 570.000 ms, "
        "hold 1.200 s (all locks)",
        "  pv list: wait 450.000 ms (78.9%), 100000 acquisitions (66.7%), 5000 contested "
        "(71.4%), hold 900.000 ms (75.0%)",
        "  pv chunk list: wait 120.000 ms (21.1%), 50000 acquisitions (33.3%), 2000 contested "
        "(28.6%), hold 300.000 ms (25.0%)",
        "dump 2 of input 2 (from line 7): 150000 acquisitions, 7000 contested, wait 570.000 ms, "
        "hold 1.200 s (all locks)",
        "  pv list: wait 450.000 ms (78.9%), 100000 acquisitions (66.7%), 5000 contested "
        "(71.4%), hold 900.000 ms (75.0%)",
        "  pv chunk list: wait 120.000 ms (21.1%), 50000 acquisitions (33.3%), 2000 contested "
        "(28.6%), hold 300.000 ms (25.0%)"]
    # after a reset: fewer events at a point, no warning
    pv_less = Point(**{**pv.__dict__, "cnt": 10, "wait_ns": 1000})
    parsed = parse_text(tmp_path, print_stats([pv, pvc]) + print_stats([pv_less, pvc]))
    assert parsed.problems == []
