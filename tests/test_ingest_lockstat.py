"""lockstat(1) report and -p parsing.

The printers below are lockstat.c's ``report_stats`` (and ``-D 0``, ``-p``) transcribed with the
exact printf formats, so a report they print is what lockstat prints for the same records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvtrace.errors import PvtraceError
from pvtrace.ingest import lockstat
from pvtrace.ingest.common import Format, ProblemKind
from pvtrace.ingest.detect import sniff
from pvtrace.ingest.lockstat_parse import EVENT_NAMES, parse_p_line
from pvtrace.schemas import conform

DATA = Path(__file__).parent / "data" / "lockstat"
_FIXTURE = [HealthCheck.function_scoped_fixture]   # each example overwrites one tmp file
SEP = "-" * 79 + "\n"


# ---------------------------------------------------------------------------- printers

@dataclass
class Rec:
    count: int
    lock: str
    caller: str
    time_ns: int = 0                  # ls_time, total
    refcnt: int = 0                   # ls_refcnt (FreeBSD: 0)
    hist: dict[int, int] = field(default_factory=dict)   # bucket index -> count
    frames: list[str] = field(default_factory=list)      # frames as printed


def print_report(desc: str, recs: list[Rec], *, total: int, elapsed_ns: int, mode: str = "t",
                 rates: bool = False, g: bool = False, W: bool = False, w: bool = False,
                 lhdr: str = "Lock", units: str = "nsec") -> str:
    """report_stats() for one event; mode is b (-b), t (default), h (-h) or s (-s N)."""
    out = []
    lh = ("Hottest " if W else "") + lhdr
    ch = ("Hottest " if w else "") + "Caller"
    out.append("\n%s: %.0f events in %.3f seconds (%.0f events/sec)\n\n"
               % (desc, float(total), elapsed_ns / 1e9, total * 1e9 / elapsed_ns))
    header = "%5s %4s %4s %4s %8s %-22s %-24s\n" % (
        "ops/s" if rates else "Count", "genr" if g else "indv", "cuml", "rcnt",
        "" if mode == "b" else units, lh, ch)
    if mode in "bt":
        out += [header, SEP]
    ptotal = 0.0
    for r in recs:
        if mode in "hs":
            out += [SEP, header]
        percent = r.count * 100.0 / total
        ptotal += percent
        buf = "" if mode == "b" else "%d" % (r.time_ns // r.count)
        out.append("%5d " % (r.count if not rates else r.count * 10**9 // elapsed_ns))
        out.append("%3.0f%% " % percent)
        out.append("---- " if g else "%3.0f%% " % ptotal)
        out.append("%4.2f %8s " % (r.refcnt / r.count, buf))
        out.append("%-22s " % r.lock)
        out.append("%-24s\n" % r.caller)
        if mode in "bt":
            continue
        out.append("\n")
        out.append("%10s %31s %-9s %-24s\n" % (units, "------ Time Distribution ------",
                                               "ops/s" if rates else "count",
                                               "Stack" if mode == "s" else ""))
        bins = sorted(r.hist)
        total_bin = sum(r.hist.values())
        frames = list(r.frames)
        for j in range(bins[0], bins[-1] + 1):
            n = r.hist.get(j, 0)
            depth = n * 30 // total_bin
            out.append("%10d |%s%s %-9d " % (1 << j, "@" * depth, " " * (30 - depth),
                                              n if not rates else n * 10**9 // elapsed_ns))
            out.append("%-24s\n" % frames.pop(0) if frames and mode == "s" else "\n")
        for f in frames if mode == "s" else []:
            out.append("%15s %-36s %-24s\n" % ("", "", f))
    out.append(SEP)
    return "".join(out)


def print_summary(desc: str, total: int) -> str:
    """-D 0: one line per event."""
    return "%20d %s\n" % (total, desc)


def print_p(event: int, recs: list[Rec], mode: str = "t") -> str:
    """-p: one line per record."""
    out = []
    for r in recs:
        s = "%d %d" % (event, r.count) + " %s" % r.lock + " %s" % r.caller
        s += " %f" % (r.refcnt / r.count)
        if mode != "b":
            s += " %d" % r.time_ns
        if mode in "hs":
            s += "".join(" %d" % r.hist.get(j, 0) for j in range(64))
        if mode == "s":
            s += "".join(" %s" % f for f in r.frames)
        out.append(s + "\n")
    return "".join(out)


# ---------------------------------------------------------------------------- helpers

def parse_text(tmp_path: Path, text: str, name: str = "in.txt"):
    path = tmp_path / name
    path.write_text(text)
    return lockstat.parse(path, 3, name)


def rows_of(parsed, *cols: str) -> list[tuple]:
    return parsed.tables["lockstat"].select(cols).rows()


def test_tables_conform_to_schemas(tmp_path):
    parsed = lockstat.parse(DATA / "pv_reports.txt", 0, "pv_reports.txt")
    for name in ("lockstat", "lockstat_hist", "lockstat_stack", "diagnostics"):
        conform(parsed.tables[name], name)


# ---------------------------------------------------------------------------- man pages

@pytest.mark.parametrize("name, fmt", [
    ("freebsd_manpage_sleep5.txt", Format.LOCKSTAT), ("illumos_manpage.txt", Format.LOCKSTAT),
    ("pv_reports.txt", Format.LOCKSTAT), ("pv_parsable.txt", Format.LOCKSTAT_PARSABLE)])
def test_detected_as_lockstat(name, fmt):
    assert sniff((DATA / name).read_text(), name) is fmt


def test_detects_parsable_basic_lines():
    assert sniff("1 100000 pv_chunks_mutex free_pv_chunk+0x44 0.000000\n", "x") is \
        Format.LOCKSTAT_PARSABLE


@pytest.mark.parametrize("name, rows, reports, hist, stack, unclosed", [
    ("freebsd_manpage_sleep5.txt", 23, 2, 0, 0, [24]),
    ("freebsd_manpage_H_D10.txt", 20, 2, 0, 0, []),
    ("freebsd_manpage_H_f_s50.txt", 2, 1, 7, 15, []),
    ("illumos_manpage.txt", 99, 8, 0, 0, [29, 43, 106, 116]),
])
def test_man_page_examples_parse_without_problems(name, rows, reports, hist, stack, unclosed):
    """The manual pages' examples parse whole. Some of them shorten a report (the sleep 5
    example shows 17 of its 41,411 events' rows) and drop its closing line of dashes, which
    lockstat always prints: each such report is pointed out, at the next title."""
    parsed = lockstat.parse(DATA / name, 0, name)
    assert [p.line for p in parsed.problems] == unclosed
    assert all(p.kind is ProblemKind.WARNING and "no closing line of dashes" in p.reason
               for p in parsed.problems)
    assert parsed.format is Format.LOCKSTAT
    assert parsed.records == rows
    assert parsed.meta["reports"] == reports
    assert len(parsed.tables["lockstat_hist"]) == hist
    assert len(parsed.tables["lockstat_stack"]) == stack


def test_man_page_sleep5_rows():
    parsed = lockstat.parse(DATA / "freebsd_manpage_sleep5.txt", 0, "x")
    cols = ("line", "report", "event", "event_index", "count", "indv", "cuml", "rcnt", "nsec",
            "total_ns", "lock", "caller", "events_total", "seconds", "events_per_sec")
    got = rows_of(parsed, *cols)
    assert got[0] == (6, 1, "Adaptive mutex spin", 0, 13750, 33, 33, 0.0, 72, 13750 * 72,
                      "vm_page_queue_free_mtx", "vm_page_free_toq+0x12e", 41411, 5.011, 8263)
    assert got[4] == (10, 1, "Adaptive mutex spin", 0, 618, 1, 84, 0.0, 31, 618 * 31,
                      "0xfffff8000cd83a88", "qsyncvp+0x37", 41411, 5.011, 8263)
    assert got[-1] == (33, 2, "Adaptive mutex block", 1, 1, 10, 100, 0.0, 7864, 7864,
                       "0xfffff8000cd83a88", "qsyncvp+0x37", 10, 5.011, 2)


def test_man_page_stack_example_exact_hist_and_stack():
    parsed = lockstat.parse(DATA / "freebsd_manpage_H_f_s50.txt", 0, "x")
    assert rows_of(parsed, "line", "row_id", "count", "nsec", "lock", "caller", "stack_depth",
                   "hist_buckets") == [
        (6, 0, 32, 1631, "0xfffff800686f50d8", "tcp_do_segment+0x284b", 7, 4),
        (18, 1, 29, 4851, "0xfffff800686f50d8", "sowakeup+0xf8", 8, 3)]
    assert parsed.tables["lockstat_hist"].select(
        "line", "bucket_line", "row_id", "bucket_ns", "count").rows() == [
        (6, 9, 0, 1024, 11), (6, 10, 0, 2048, 14), (6, 11, 0, 4096, 6), (6, 12, 0, 8192, 1),
        (18, 21, 1, 4096, 15), (18, 22, 1, 8192, 12), (18, 23, 1, 16384, 2)]
    stack = parsed.tables["lockstat_stack"]
    assert stack.filter(pl.col("row_id") == 0).select("line", "depth", "frame").rows() == [
        (9, 0, "tcp_input+0xf54"), (10, 1, "ip_input+0xc8"), (11, 2, "swi_net+0x192"),
        (12, 3, "intr_event_execute_handlers+0x93"), (13, 4, "ithread_loop+0xa6"),
        (14, 5, "fork_exit+0x84"), (15, 6, "0xffffffff808cf9ee")]
    assert stack.filter(pl.col("row_id") == 1)["frame"].to_list() == [
        "tcp_do_segment+0x2423", "tcp_input+0xf54", "ip_input+0xc8", "swi_net+0x192",
        "intr_event_execute_handlers+0x93", "ithread_loop+0xa6", "fork_exit+0x84",
        "0xffffffff808cf9ee"]


def test_illumos_flags_genr_hottest():
    parsed = lockstat.parse(DATA / "illumos_manpage.txt", 0, "x")
    df = parsed.tables["lockstat"]
    assert set(df["rcnt"].to_list()) == {1.0}
    genr = df.filter(pl.col("genr"))
    assert len(genr) == 20 and genr["cuml"].null_count() == 20
    assert genr.row(0, named=True)["indv"] == 100
    assert genr["lock_header"].unique().to_list() == ["Hottest CPU+PIL"]
    last = df.filter(pl.col("report") == 8)
    assert last["hottest_caller"].all() and not last["hottest_lock"].any()
    assert last.select("count", "lock", "caller").row(0) == (13641, "cpu[3]", "(usermode)")
    assert last["lock_header"][0] == "CPU+PIL"


# ---------------------------------------------------------------------------- own reports

E = 5_011_000_000   # elapsed ns

PV = [Rec(6000, "pmap pv list", "pmap_enter+0x2f1", 6000 * 5230),
      Rec(2500, "pmap pv list", "pmap_remove_all+0x8d", 2500 * 9120),
      Rec(900, "pmap pv chunk list", "get_pv_entry+0x1a0", 900 * 1400),
      Rec(600, "vm page", "vm_page_alloc+0x138", 600 * 333)]
WIDE = [Rec(1234567, "pv_list_locks+0x1c0", "pmap_remove_pages+0x4ff", 1234567 * 88),
        Rec(100000, "pv_chunks_mutex", "free_pv_chunk+0x44", 100000 * 61),
        Rec(4321, "0xfffff8000cd83a88", "qsyncvp+0x37", 4321 * 31)]
STACKED = [Rec(40, "pmap pv list", "pmap_enter+0x2f1", 40 * 3000,
               hist={10: 11, 11: 14, 13: 15},
               frames=["pmap_enter+0x2f1", "vm_fault+0x11a", "vm_fault_trap+0x60",
                       "trap_pfault+0x1f7", "trap+0x2b0", "calltrap+0x8"]),
           Rec(2, "pmap pv chunk list", "reclaim_pv_chunk+0x2c", 2 * 70000,
               hist={16: 2}, frames=["reclaim_pv_chunk+0x2c"])]


def own_reports() -> str:
    return "".join([
        print_report("R/W writer blocked by writer", PV, total=12000, elapsed_ns=E),
        "lockstat: warning: 12 drops on CPU 3\n",
        print_report("Adaptive mutex spin", WIDE, total=1400000, elapsed_ns=E),
        print_report("R/W writer hold", PV[:2], total=9000, elapsed_ns=E),
        print_report("R/W writer blocked by readers", STACKED, total=42, elapsed_ns=E, mode="s"),
        print_report("R/W reader blocked by writer", STACKED[1:], total=2, elapsed_ns=E,
                     mode="h"),
        print_summary("Adaptive mutex spin", 1400000),
        print_summary("R/W writer blocked by writer", 12000),
        print_report("Profiling interrupt", [Rec(97, "cpu[1]+TShar", "pmap_enter+0x2f1", 97 * 400)],
                     total=97, elapsed_ns=E, g=True, W=True, lhdr="CPU+Pri_Class"),
        print_report("Adaptive mutex block", WIDE[1:2], total=100000, elapsed_ns=E, w=True),
        print_report("R/W writer blocked by writer", PV[:1], total=12000, elapsed_ns=E,
                     rates=True),
        print_report("SX exclusive block", [Rec(7, "allproc", "kern_fork+0x3d2")], total=7,
                     elapsed_ns=E, mode="b"),
        "\n\n",
        "lockstat: warning: 1 drop on CPU 0\n",
        "lockstat: warning: ran out of data records (use -n for more)\n",
    ])


def test_own_reports_file_is_what_the_printer_prints():
    assert (DATA / "pv_reports.txt").read_text() == own_reports()


def test_own_reports_exact_rows():
    parsed = lockstat.parse(DATA / "pv_reports.txt", 0, "pv_reports.txt")
    assert [p.kind for p in parsed.problems] == [ProblemKind.WARNING] * 3
    assert [p.line for p in parsed.problems] == [11, 92, 93]
    cols = ("line", "report", "event", "summary", "count", "indv", "cuml", "nsec", "total_ns",
            "lock", "caller", "events_total", "rate", "genr", "hottest_lock", "hottest_caller",
            "basic", "lock_header", "units")
    ww = "R/W writer blocked by writer"
    flags = (False, False, False, False, False, "Lock", "nsec")
    assert rows_of(parsed, *cols) == [
        (6, 1, ww, False, 6000, 50, 50, 5230, 6000 * 5230, "pmap pv list", "pmap_enter+0x2f1",
         12000, *flags),
        (7, 1, ww, False, 2500, 21, 71, 9120, 2500 * 9120, "pmap pv list",
         "pmap_remove_all+0x8d", 12000, *flags),
        (8, 1, ww, False, 900, 8, 78, 1400, 900 * 1400, "pmap pv chunk list",
         "get_pv_entry+0x1a0", 12000, *flags),
        (9, 1, ww, False, 600, 5, 83, 333, 600 * 333, "vm page", "vm_page_alloc+0x138", 12000,
         *flags),
        (17, 2, "Adaptive mutex spin", False, 1234567, 88, 88, 88, 1234567 * 88,
         "pv_list_locks+0x1c0", "pmap_remove_pages+0x4ff", 1400000, *flags),
        (18, 2, "Adaptive mutex spin", False, 100000, 7, 95, 61, 100000 * 61, "pv_chunks_mutex",
         "free_pv_chunk+0x44", 1400000, *flags),
        (19, 2, "Adaptive mutex spin", False, 4321, 0, 96, 31, 4321 * 31, "0xfffff8000cd83a88",
         "qsyncvp+0x37", 1400000, *flags),
        (26, 3, "R/W writer hold", False, 6000, 67, 67, 5230, 6000 * 5230, "pmap pv list",
         "pmap_enter+0x2f1", 9000, *flags),
        (27, 3, "R/W writer hold", False, 2500, 28, 94, 9120, 2500 * 9120, "pmap pv list",
         "pmap_remove_all+0x8d", 9000, *flags),
        (34, 4, "R/W writer blocked by readers", False, 40, 95, 95, 3000, 40 * 3000,
         "pmap pv list", "pmap_enter+0x2f1", 42, *flags),
        (45, 4, "R/W writer blocked by readers", False, 2, 5, 100, 70000, 140000,
         "pmap pv chunk list", "reclaim_pv_chunk+0x2c", 42, *flags),
        (55, 5, "R/W reader blocked by writer", False, 2, 100, 100, 70000, 140000,
         "pmap pv chunk list", "reclaim_pv_chunk+0x2c", 2, *flags),
        (60, 6, "Adaptive mutex spin", True, 1400000, None, None, None, None, None, None,
         1400000, False, False, False, False, False, None, None),
        (61, 7, ww, True, 12000, None, None, None, None, None, None, 12000,
         False, False, False, False, False, None, None),
        (67, 8, "Profiling interrupt", False, 97, 100, None, 400, 97 * 400, "cpu[1]+TShar",
         "pmap_enter+0x2f1", 97, False, True, True, False, False, "Hottest CPU+Pri_Class",
         "nsec"),
        (74, 9, "Adaptive mutex block", False, 100000, 100, 100, 61, 100000 * 61,
         "pv_chunks_mutex", "free_pv_chunk+0x44", 100000, False, False, False, True, False,
         "Lock", "nsec"),
        (81, 10, ww, False, 1197, 50, 50, 5230, None, "pmap pv list", "pmap_enter+0x2f1",
         12000, True, False, False, False, False, "Lock", "nsec"),
        (88, 11, "SX exclusive block", False, 7, 100, 100, None, None, "allproc",
         "kern_fork+0x3d2", 7, False, False, False, False, True, "Lock", None),
    ]
    hist = parsed.tables["lockstat_hist"].select("line", "bucket_line", "report", "row_id",
                                                 "bucket_ns", "count").rows()
    assert hist == [(34, 37, 4, 9, 1024, 11), (34, 38, 4, 9, 2048, 14),
                    (34, 39, 4, 9, 4096, 0), (34, 40, 4, 9, 8192, 15),
                    (45, 48, 4, 10, 65536, 2), (55, 58, 5, 11, 65536, 2)]
    stack = parsed.tables["lockstat_stack"].select("line", "row_id", "depth", "frame").rows()
    assert stack == [(37, 9, 0, "pmap_enter+0x2f1"), (38, 9, 1, "vm_fault+0x11a"),
                     (39, 9, 2, "vm_fault_trap+0x60"), (40, 9, 3, "trap_pfault+0x1f7"),
                     (41, 9, 4, "trap+0x2b0"), (42, 9, 5, "calltrap+0x8"),
                     (48, 10, 0, "reclaim_pv_chunk+0x2c")]
    diag = parsed.tables["diagnostics"].select("line", "kind", "cpu", "count").rows()
    assert diag == [(11, "drops", 3, 12), (92, "drops", 0, 1),
                    (93, "out_of_records", None, None)]
    assert parsed.meta["events"] == sorted({e for (e,) in rows_of(parsed, "event")})


def test_summary_lines_pv_families():
    parsed = lockstat.parse(DATA / "pv_reports.txt", 0, "pv_reports.txt")
    lines = lockstat.summary_lines(parsed.tables)
    i = lines.index("lockstat R/W writer blocked by writer: 24000 events, "
                    "est. 55.640 ms in the rows listed")
    # The file's -D 0 totals count the same events again: the shares are of the report
    # with rows (lockstat's own 70.8%, not half of it).
    assert lines[i + 1:i + 7] == [
        "  (shares of the 12000 events of the reports with per-lock rows; 12000 more in -D 0 "
        "summaries without rows)",
        "  pv list: 8500 events (70.8% of all locks), est. 54.180 ms (97.4% of the time listed)",
        "  pv chunk list: 900 events (7.5% of all locks), est. 1.260 ms (2.3% of the time listed)",
        "lockstat R/W writer blocked by writer (-R rates): 2395 ops/s",
        "  pv list: 1197 ops/s (50.0% of all locks)",
        "  pv chunk list: 0 ops/s (0.0% of all locks)"]
    spin = lines.index("lockstat Adaptive mutex spin: 2800000 events, "
                       "est. 114.876 ms in the rows listed")
    assert lines[spin + 1:spin + 4] == [
        "  (shares of the 1400000 events of the reports with per-lock rows; 1400000 more in "
        "-D 0 summaries without rows)",
        "  pv list: 1234567 events (88.2% of all locks), est. 108.642 ms "
        "(94.6% of the time listed)",
        "  pv chunk list: 100000 events (7.1% of all locks), est. 6.100 ms "
        "(5.3% of the time listed)"]


def test_summary_lines_on_conformed_tables():
    parsed = lockstat.parse(DATA / "pv_reports.txt", 0, "pv_reports.txt")
    tables = {k: pl.from_arrow(conform(v, k)) for k, v in parsed.tables.items()}
    assert lockstat.summary_lines(tables) == lockstat.summary_lines(parsed.tables)


def test_summary_lines_summary_only(tmp_path):
    parsed = parse_text(tmp_path, print_summary("R/W writer blocked by writer", 77))
    assert lockstat.summary_lines(parsed.tables) == [
        "lockstat R/W writer blocked by writer: 77 events",
        "  (-D 0 summary only: no per-lock rows)"]


# ---------------------------------------------------------------------------- -p

def test_parsable_lines_exact(tmp_path):
    text = (print_p(4, PV) + print_p(1, WIDE[1:2], mode="b")
            + print_p(5, STACKED, mode="s") + print_p(6, STACKED[1:], mode="h"))
    parsed = parse_text(tmp_path, text)
    assert parsed.problems == []
    assert parsed.format is Format.LOCKSTAT_PARSABLE
    assert rows_of(parsed, "line", "report", "event", "event_index", "count", "rcnt", "nsec",
                   "total_ns", "total_ns_exact", "lock", "caller", "basic") == [
        (1, 1, "R/W writer blocked by writer", 4, 6000, 0.0, 5230, 6000 * 5230, True,
         "pmap pv list", "pmap_enter+0x2f1", False),
        (2, 1, "R/W writer blocked by writer", 4, 2500, 0.0, 9120, 2500 * 9120, True,
         "pmap pv list", "pmap_remove_all+0x8d", False),
        (3, 1, "R/W writer blocked by writer", 4, 900, 0.0, 1400, 900 * 1400, True,
         "pmap pv chunk list", "get_pv_entry+0x1a0", False),
        (4, 1, "R/W writer blocked by writer", 4, 600, 0.0, 333, 600 * 333, True, "vm page",
         "vm_page_alloc+0x138", False),
        (5, 2, "Adaptive mutex block", 1, 100000, 0.0, None, None, False, "pv_chunks_mutex",
         "free_pv_chunk+0x44", True),
        (6, 3, "R/W writer blocked by readers", 5, 40, 0.0, 3000, 120000, True, "pmap pv list",
         "pmap_enter+0x2f1", False),
        (7, 3, "R/W writer blocked by readers", 5, 2, 0.0, 70000, 140000, True,
         "pmap pv chunk list", "reclaim_pv_chunk+0x2c", False),
        (8, 4, "R/W reader blocked by writer", 6, 2, 0.0, 70000, 140000, True,
         "pmap pv chunk list", "reclaim_pv_chunk+0x2c", False),
    ]
    assert parsed.tables["lockstat_hist"].select("line", "row_id", "bucket_ns", "count").rows() == [
        (6, 5, 1024, 11), (6, 5, 2048, 14), (6, 5, 8192, 15), (7, 6, 65536, 2), (8, 7, 65536, 2)]
    assert parsed.tables["lockstat_stack"].filter(pl.col("row_id") == 5)["frame"].to_list() == \
        STACKED[0].frames
    assert parsed.tables["lockstat_stack"].filter(pl.col("row_id") == 7).is_empty()


def test_parsable_file_in_data_dir():
    parsed = lockstat.parse(DATA / "pv_parsable.txt", 0, "pv_parsable.txt")
    assert parsed.problems == []
    assert parsed.format is Format.LOCKSTAT_PARSABLE
    assert parsed.records == 8


@pytest.mark.parametrize("line, lock, caller", [
    ("4 10 pmap pv list pmap_enter+0x2f1 0.000000 52300", "pmap pv list", "pmap_enter+0x2f1"),
    ("4 10 em0  rx 7 foo+0x1 0.000000 52300", "em0  rx 7", "foo+0x1"),
    ("4 10 lock 1.5 foo 0.000000", "lock 1.5", "foo"),
])
def test_parsable_ambiguity_rule(line, lock, caller):
    p = parse_p_line(line)
    assert not isinstance(p, str)
    assert (p.lock, p.caller) == (lock, caller)


@pytest.mark.parametrize("line, why", [
    ("4 10 lock foo 0.000000 1 2 3", "3 numbers after rcnt"),
    ("4 10 lock foo bar", "no rcnt"),
    ("4 10 lk foo 0.000000 12 a b", "stack frames without"),
])
def test_parsable_bad_lines(line, why):
    p = parse_p_line(line)
    assert isinstance(p, str) and why in p


# ---------------------------------------------------------------------------- problems

def test_bad_lines_are_reported_with_line_numbers(tmp_path):
    good = print_report("Adaptive mutex spin", PV[:1], total=6000, elapsed_ns=E)
    text = ("garbage here\n" + good.replace(
        "\n" + SEP, "\n 12x  3% 4% 0.00 1 l c\n" + SEP, 1)
        + "Event  Time  Owner Lock Caller\n" + "     7 |@@@@ 2\n" + " 12  50%")
    parsed = parse_text(tmp_path, text)
    probs = [(p.line, p.kind) for p in parsed.problems]
    assert probs == [(1, ProblemKind.MALFORMED), (6, ProblemKind.MALFORMED),
                     (10, ProblemKind.MALFORMED), (11, ProblemKind.MALFORMED),
                     (12, ProblemKind.CUT_OFF)]
    assert "-T" in parsed.problems[2].reason
    assert "histogram" in parsed.problems[3].reason
    assert parsed.records == 1


def test_numbers_beyond_64_bits_are_malformed_lines(tmp_path):
    """A corrupt count, nsec or bucket (or a count x nsec product) past int64 is a malformed
    line with its number, not a crash while building the table."""
    good = print_report("Adaptive mutex spin", PV[:1], total=6000, elapsed_ns=E)
    lines = good.splitlines(keepends=True)
    row = next(i for i, ln in enumerate(lines) if "pmap_enter" in ln)
    fields = lines[row].split()
    huge = [" ".join(["9" * 25, *fields[1:]]) + "\n",                   # count
            " ".join([*fields[:4], "1" + "0" * 19, *fields[5:]]) + "\n",  # nsec
            " ".join(["10000000000", *fields[1:4], "10000000000", *fields[5:]]) + "\n"]
    parsed = parse_text(tmp_path, "".join(lines[:row + 1] + huge + lines[row + 1:]))
    assert [(p.line, p.kind) for p in parsed.problems] == [
        (row + 2, ProblemKind.MALFORMED), (row + 3, ProblemKind.MALFORMED),
        (row + 4, ProblemKind.MALFORMED)]
    assert "beyond the signed 64-bit range" in parsed.problems[0].reason
    assert "count x nsec" in parsed.problems[2].reason
    assert parsed.records == 1


TITLE = "\nR/W writer blocked by writer: 12000 events in 5.011 seconds (2395 events/sec)\n\n"
HDR = "Count indv cuml rcnt     nsec Lock                   Caller\n"
ROW = " 6000  50%  50% 0.00     5230 pmap pv list           pmap_enter+0x2f1\n"
HIST_HDR = "      nsec ------ Time Distribution ------ count     Stack\n"
MAL = ProblemKind.MALFORMED


def test_numbers_past_the_column_types_are_malformed_lines(tmp_path):
    """Numbers within 64 bits but past a narrower column (int32 percentages and CPUs, the -p
    event index) make malformed lines naming the column, not a crash building the table."""
    text = (TITLE + HDR + SEP + ROW                                                  # 1-6
            + " 6000  99999999999%  50% 0.00   5230 pmap pv list  pmap_enter+0x2f1\n"  # 7
            + " 6000  50%  4294967296% 0.00    5230 pmap pv list  pmap_enter+0x2f1\n"  # 8
            + SEP                                                                     # 9
            + "99999 6000 pmap pv list pmap_enter+0x2f1 0.000000 31380000\n"        # 10
            + "64 6000 pmap pv list pmap_enter+0x2f1 0.000000 31380000\n"           # 11
            + "lockstat: warning: 12 drops on CPU 99999999999\n"                    # 12
            + "lockstat: warning: 99999999999999999999 drops on CPU 1\n"            # 13
            + "lockstat: warning: 3 drops on CPU 2\n")                              # 14
    parsed = parse_text(tmp_path, text)
    assert [(p.line, p.kind, p.reason) for p in parsed.problems] == [
        (7, MAL, "99999999999 does not fit column lockstat.indv "
                 "(int32: -2147483648..2147483647; corrupt line?)"),
        (8, MAL, "4294967296 does not fit column lockstat.cuml "
                 "(int32: -2147483648..2147483647; corrupt line?)"),
        (10, MAL, "lockstat -p line: event index 99999 is not a lockstat event (0-63)"),
        (11, MAL, "lockstat -p line: event index 64 is not a lockstat event (0-63)"),
        (12, MAL, "lockstat: 12 drops on CPU 99999999999: 99999999999 does not fit column "
                  "diagnostics.cpu (int32: -2147483648..2147483647; corrupt line?)"),
        (13, MAL, "lockstat: 99999999999999999999 drops on CPU 1: 99999999999999999999 does "
                  "not fit column diagnostics.count (int64: -9223372036854775808.."
                  "9223372036854775807; corrupt line?)"),
        (14, ProblemKind.WARNING, "lockstat: 3 drops on CPU 2")]
    assert rows_of(parsed, "line", "report", "count") == [(6, 1, 6000)]
    assert parsed.tables["diagnostics"].select("line", "cpu", "count").rows() == [(14, 2, 3)]


def test_title_events_per_sec_that_int_refuses(tmp_path):
    """"²³" passes str.isdigit but not int(): the title keeps no events/sec, no crash."""
    parsed = parse_text(tmp_path, TITLE.replace("(2395 ", "(\u00b2\u00b3 ") + HDR + SEP + ROW
                        + SEP)
    assert parsed.problems == []
    assert rows_of(parsed, "line", "events_total", "events_per_sec") == [(6, 12000, None)]


def test_an_unterminated_last_row_is_kept_with_a_warning(tmp_path):
    # A row cut inside its caller ("pmap_enter+0x2f1" -> "pmap_en") lacks the caller's
    # padding: a cut-off line, not a row with a wrong caller.
    parsed = parse_text(tmp_path, TITLE + HDR + SEP + ROW.rstrip("\n")[:-9])
    assert rows_of(parsed, "line", "caller") == []
    assert [(p.line, p.kind) for p in parsed.problems] == [(6, ProblemKind.CUT_OFF)]
    # A -p line cut in its last field still parses: kept, not silently.
    parsed = parse_text(tmp_path, "4 6000 pmap pv list pmap_enter+0x2f1 0.000000 3138")
    assert rows_of(parsed, "line", "total_ns") == [(1, 3138)]
    assert [(p.line, p.kind) for p in parsed.problems] == [(1, ProblemKind.WARNING)]
    assert "no newline" in parsed.problems[0].reason
    # one that does not parse is the cut-off line, once (and the report is left unclosed);
    # a terminated file has no warning
    parsed = parse_text(tmp_path, TITLE + HDR + SEP + ROW + " 6000  50%")
    assert [(p.line, p.kind) for p in parsed.problems] == [(7, ProblemKind.CUT_OFF),
                                                           (7, ProblemKind.WARNING)]
    assert parse_text(tmp_path, TITLE + HDR + SEP + ROW + SEP).problems == []


def test_histogram_lines_of_a_row_not_kept_are_not_the_previous_rows(tmp_path):
    text = (TITLE + HDR + SEP + ROW                                                   # 1-6
            + " 6000  50%  4294967296% 0.00    5230 pmap pv list  pmap_enter+0x2f1\n"   # 7
            + "\n" + HIST_HDR + "      1024 |@@@@@@@@                       11\n"     # 8-10
            + SEP)
    parsed = parse_text(tmp_path, text)
    assert [(p.line, p.kind) for p in parsed.problems] == [(7, MAL), (9, MAL), (10, MAL)]
    assert parsed.problems[1].reason == "histogram header without a report row before it"
    assert rows_of(parsed, "line", "hist_buckets") == [(6, 0)]
    assert parsed.tables["lockstat_hist"].is_empty()


def test_a_65th_histogram_bucket_line_is_malformed(tmp_path):
    """lockstat has 64 buckets: bucket lines past them are reported, one by one."""
    buckets = "".join("%10d |@  1\n" % (1 << j) for j in range(62)) + "      1024 |@  1\n" * 4
    parsed = parse_text(tmp_path, TITLE + SEP + HDR + ROW + "\n" + HIST_HDR + buckets + SEP)
    reason = "histogram bucket line past the 64 buckets lockstat has, for the row of line 6"
    assert [(p.line, p.kind, p.reason) for p in parsed.problems] == [
        (73, MAL, reason), (74, MAL, reason)]
    assert rows_of(parsed, "hist_buckets", "stack_depth") == [(64, 0)]
    assert parsed.tables["lockstat_hist"]["bucket_line"].to_list() == list(range(9, 73))


def test_stack_frames_past_the_stack_depth_column_are_malformed(tmp_path, monkeypatch):
    """A row holds as many frames as lockstat.stack_depth (int16) counts; the cap is lowered
    to 3 here to keep the input tiny."""
    assert lockstat._MAX_FRAMES == 32767
    monkeypatch.setattr(lockstat, "_MAX_FRAMES", 3)
    text = (TITLE + SEP + HDR + ROW + "\n" + HIST_HDR                              # 1-8
            + "      1024 |@@@@@@@@                       11        f0\n"          # 9
            + "      2048 |@@@@@@@@                       11        f1\n"          # 10
            + " " * 53 + "f2\n" + " " * 53 + "f3\n"                                # 11-12
            + "      4096 |@                              1         f4\n"          # 13
            + SEP                                                                  # 14
            + print_p(5, [Rec(2, "pv", "f", 2, hist={1: 2}, frames=["a", "b", "c"])], "s")
            + print_p(5, [Rec(2, "pv", "f", 2, hist={1: 2}, frames=["a", "b", "c", "d"])],
                      "s"))                                                        # 15-16
    parsed = parse_text(tmp_path, text)
    reason = "stack frame past the 3 a row can hold, for the row of line 6 (corrupt report?)"
    assert [(p.line, p.kind, p.reason) for p in parsed.problems] == [
        (12, MAL, reason), (13, MAL, reason),
        (16, MAL, "lockstat -p line with 4 stack frames, more than the 3 a row can hold "
                  "(corrupt line?)")]
    assert rows_of(parsed, "line", "hist_buckets", "stack_depth") == [(6, 2, 3), (15, 1, 3)]
    assert parsed.tables["lockstat_stack"].select("line", "depth", "frame").rows() == [
        (9, 0, "f0"), (10, 1, "f1"), (11, 2, "f2"), (15, 0, "a"), (15, 1, "b"), (15, 2, "c")]


def test_totals_past_64_bits_are_summed_exactly(tmp_path):
    """Each count and total fits int64, their sums do not: the summary must not wrap."""
    m = 2**63 - 1
    parsed = parse_text(tmp_path, f"4 {m} pmap pv list pmap_enter+0x2f1 0.000000 {m}\n" * 2)
    assert parsed.problems == []
    assert parsed.meta["events_total"] == 2 * m
    assert lockstat.summary_lines(parsed.tables) == [
        f"lockstat R/W writer blocked by writer: {2 * m} events, 18446744073.710 s in the rows "
        "listed",
        f"  pv list: {2 * m} events (100.0% of all locks), 18446744073.710 s (100.0% of the "
        "time listed)",
        "  pv chunk list: 0 events (0.0% of all locks), 0 ns (0.0% of the time listed)"]
    row = f" {m}  50%  50% 0.00     1 pmap pv list           pmap_enter+0x2f1\n"
    parsed = parse_text(tmp_path, TITLE + HDR + SEP + row * 2 + SEP)
    assert [(p.line, p.kind) for p in parsed.problems] == [(6, ProblemKind.WARNING)]
    assert "more than the 12000 of its title" in parsed.problems[0].reason
    assert lockstat.summary_lines(parsed.tables)[:2] == [
        "lockstat R/W writer blocked by writer: 12000 events, est. 18446744073.710 s in the "
        "rows listed",
        f"  pv list: {2 * m} events (153722867280912928.0% of all locks), est. "
        "18446744073.710 s (100.0% of the time listed)"]


def test_several_runs_and_crlf(tmp_path):
    one = print_report("Adaptive mutex spin", PV[:2], total=8500, elapsed_ns=E)
    parsed = parse_text(tmp_path, (one + "\n\n" + one).replace("\n", "\r\n"))
    assert parsed.problems == []
    assert rows_of(parsed, "report", "lock", "caller") == [
        (1, "pmap pv list", "pmap_enter+0x2f1"), (1, "pmap pv list", "pmap_remove_all+0x8d"),
        (2, "pmap pv list", "pmap_enter+0x2f1"), (2, "pmap pv list", "pmap_remove_all+0x8d")]


# ---------------------------------------------------------------------------- properties

_WORD = st.text("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_.[]():/-", min_size=1, max_size=10)
_SYMBOL = st.builds(lambda s, off: s + (f"+0x{off:x}" if off else ""),
                    st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True),
                    st.integers(0, 0xffff))
_CALLER = st.one_of(_SYMBOL, st.integers(1 << 40, 1 << 64 - 1).map(lambda a: f"0x{a:x}"))
_LOCK = st.one_of(
    _CALLER,
    st.lists(_WORD, min_size=1, max_size=4).flatmap(
        lambda ws: st.lists(st.sampled_from([" ", "  "]), min_size=len(ws) - 1,
                            max_size=len(ws) - 1).map(
            lambda seps: "".join(w + s for w, s in zip(ws, seps + [""])))))


@st.composite
def _recs(draw, mode: str):
    n = draw(st.integers(1, 6))
    recs = []
    for _ in range(n):
        count = draw(st.integers(1, 10**7))
        hist: dict[int, int] = {}
        frames: list[str] = []
        if mode in "hs":
            idx = draw(st.lists(st.integers(0, 40), min_size=1, max_size=5, unique=True))
            hist = {i: draw(st.integers(1, 10**6)) for i in idx}
        if mode == "s":
            frames = draw(st.lists(_CALLER, max_size=8))
        recs.append(Rec(count, draw(_LOCK), draw(_CALLER), count * draw(st.integers(0, 10**6)),
                        draw(st.sampled_from([0, count])), hist, frames))
    return recs


@st.composite
def _report(draw):
    mode = draw(st.sampled_from("bths"))
    flags = {k: draw(st.booleans()) for k in ("g", "W", "w", "rates")}
    event = draw(st.sampled_from(sorted(EVENT_NAMES)))
    recs = draw(_recs(mode))
    total = sum(r.count for r in recs) + draw(st.integers(0, 1000))
    return event, mode, flags, recs, total


@settings(max_examples=80, deadline=None, suppress_health_check=_FIXTURE)
@given(reports=st.lists(_report(), min_size=1, max_size=3), warn=st.booleans())
def test_property_human_report_round_trip(tmp_path, reports, warn):
    text = (("lockstat: warning: 3 drops on CPU 1\n" if warn else "")
            + "".join(print_report(EVENT_NAMES[ev], recs, total=total, elapsed_ns=E, mode=mode,
                                   **flags) for ev, mode, flags, recs, total in reports))
    parsed = parse_text(tmp_path, text)
    assert [p.kind for p in parsed.problems] == [ProblemKind.WARNING] * warn
    df = parsed.tables["lockstat"]
    hist = parsed.tables["lockstat_hist"]
    stack = parsed.tables["lockstat_stack"]
    row_id = 0
    for number, (event, mode, flags, recs, total) in enumerate(reports, start=1):
        rate = (lambda n: n * 10**9 // E) if flags["rates"] else (lambda n: n)
        rep = df.filter(pl.col("report") == number)
        assert rep.select("count", "lock", "caller", "event", "event_index").rows() == [
            (rate(r.count), r.lock, r.caller, EVENT_NAMES[event], event) for r in recs]
        assert rep["nsec"].to_list() == [None if mode == "b" else r.time_ns // r.count
                                         for r in recs]
        assert rep["rcnt"].to_list() == [r.refcnt / r.count for r in recs]
        assert rep["events_total"].unique().to_list() == [total]
        assert rep["cuml"].null_count() == (len(recs) if flags["g"] else 0)
        assert rep["genr"].all() == flags["g"] and rep["hottest_lock"].all() == flags["W"]
        assert rep["hottest_caller"].all() == flags["w"] and rep["rate"].all() == flags["rates"]
        assert rep["basic"].all() == (mode == "b")
        ids = list(range(row_id, row_id + len(recs)))
        assert rep["row_id"].to_list() == ids
        want_hist = [(i, 1 << j, rate(r.hist.get(j, 0))) for i, r in zip(ids, recs) if r.hist
                     for j in range(min(r.hist), max(r.hist) + 1)]
        assert hist.filter(pl.col("report") == number).select(
            "row_id", "bucket_ns", "count").rows() == want_hist
        assert stack.filter(pl.col("row_id").is_in(ids)).select("row_id", "depth", "frame").rows() \
            == [(i, d, f) for i, r in zip(ids, recs) for d, f in enumerate(r.frames)]
        row_id += len(recs)


@settings(max_examples=60, deadline=None, suppress_health_check=_FIXTURE)
@given(data=st.data(), mode=st.sampled_from("bths"), event=st.sampled_from(sorted(EVENT_NAMES)))
def test_property_parsable_round_trip(tmp_path, data, mode, event):
    recs = data.draw(_recs(mode))
    parsed = parse_text(tmp_path, print_p(event, recs, mode))
    assert parsed.problems == []
    df = parsed.tables["lockstat"]
    assert df.select("event_index", "count", "lock", "caller", "total_ns").rows() == [
        (event, r.count, r.lock, r.caller, None if mode == "b" else r.time_ns) for r in recs]
    assert parsed.tables["lockstat_hist"].select("row_id", "bucket_ns", "count").rows() == [
        (i, 1 << j, n) for i, r in enumerate(recs) for j, n in sorted(r.hist.items())]
    assert parsed.tables["lockstat_stack"].select("row_id", "frame").rows() == [
        (i, f) for i, r in enumerate(recs) for f in r.frames]


@settings(max_examples=40, deadline=None, suppress_health_check=_FIXTURE)
@given(totals=st.lists(st.tuples(st.sampled_from(sorted(EVENT_NAMES)), st.integers(0, 10**15)),
                       min_size=1, max_size=5))
def test_property_summary_lines(tmp_path, totals):
    text = "".join(print_summary(EVENT_NAMES[e], n) for e, n in totals)
    parsed = parse_text(tmp_path, text)
    assert parsed.problems == []
    assert rows_of(parsed, "event", "count", "summary") == [
        (EVENT_NAMES[e], n, True) for e, n in totals]


# ---------------------------------------------------------------------------- damaged reports

def test_g_rows_overlap_so_no_shares(tmp_path):
    """lockstat -g counts an event once for every caller in its stack: rows overlap and add
    up past the title's total. The summary gives each family's largest row as a lower bound,
    never a share (summing gave 111% of all locks)."""
    recs = [Rec(10, "pmap pv list", "pmap_enter+0x2f1", 30000),
            Rec(10, "pmap pv list", "vm_fault+0x1f3", 30000),
            Rec(8, "vm object", "vm_object_deallocate+0x1", 8000),
            Rec(8, "vm object", "vm_map_delete+0x22", 8000)]
    parsed = parse_text(tmp_path, print_report("R/W writer blocked by writer", recs, total=18,
                                               elapsed_ns=E, g=True))
    assert parsed.problems == []
    assert lockstat.summary_lines(parsed.tables) == [
        "lockstat R/W writer blocked by writer: 18 events",
        "  pv list: at least 10 events (the largest -g row of its locks)",
        "  pv chunk list: at least 0 events (the largest -g row of its locks)",
        "  (-g rows overlap: each event counts once for every caller in its stack, so rows do "
        "not add up to shares; run lockstat without -g)"]


def test_a_lost_title_starts_an_unknown_report(tmp_path):
    """Rows under a header that follows a closed report without a title of its own are not
    the previous event's (a lost or overwritten title line)."""
    first = print_report("Adaptive mutex spin", [Rec(700, "pmap pv chunk list", "x+0x1", 700)],
                         total=700, elapsed_ns=E)
    second = print_report("R/W writer blocked by writer", PV[:1], total=6000, elapsed_ns=E)
    lines = second.splitlines(keepends=True)
    assert lines[1].startswith("R/W writer blocked")
    parsed = parse_text(tmp_path, first + "".join(lines[:1] + lines[2:]))
    assert rows_of(parsed, "line", "report", "event", "count") == [
        (6, 1, "Adaptive mutex spin", 700), (12, 2, None, 6000)]
    assert [(p.line, p.kind) for p in parsed.problems] == [(10, ProblemKind.WARNING)]
    assert "without a title line" in parsed.problems[0].reason
    summary = lockstat.summary_lines(parsed.tables)
    assert "lockstat Adaptive mutex spin: 700 events, est. 700 ns in the rows listed" in summary
    assert "lockstat (no title): 6000 events, est. 31.380 ms in the rows listed" in summary


def test_rows_beyond_the_titles_total_are_pointed_out(tmp_path):
    text = print_report("R/W writer blocked by writer", PV[:1], total=5000, elapsed_ns=E)
    parsed = parse_text(tmp_path, text)
    assert [(p.line, p.kind) for p in parsed.problems] == [(6, ProblemKind.WARNING)]
    assert "add up to 6000 events, more than the 5000 of its title" in \
        parsed.problems[0].reason


def test_a_report_without_its_closing_dashes_was_cut(tmp_path):
    """report_stats ends every report with a line of dashes: a report cut at a line boundary
    is no longer silent, at the next title or at the end of the input."""
    whole = print_report("R/W writer blocked by writer", PV[:2], total=12000, elapsed_ns=E)
    cut = whole[:whole.rindex(SEP)]
    parsed = parse_text(tmp_path, cut + cut)
    assert [(p.line, p.kind) for p in parsed.problems] == [
        (9, ProblemKind.WARNING), (14, ProblemKind.WARNING)]
    assert "no closing line of dashes before the next title (line 9)" in \
        parsed.problems[0].reason
    assert "before the end of the input" in parsed.problems[1].reason
    assert "after its row of line 7" in parsed.problems[0].reason
    # -h/-s reports put dashes before each row's header: closed only by the last ones
    hist = print_report("Adaptive mutex spin", [Rec(5, "pmap pv list", "f+0x1", 500, hist={3: 5}),
                                                Rec(4, "vm object", "g+0x2", 40, hist={2: 4})],
                        total=9, elapsed_ns=E, mode="h")
    assert parse_text(tmp_path, hist).problems == []
    parsed = parse_text(tmp_path, hist[:hist.rindex(SEP)])
    assert [p.kind for p in parsed.problems] == [ProblemKind.WARNING]


def test_a_row_cut_inside_its_lock_is_dropped(tmp_path):
    """lockstat pads the caller to 24 columns: an unterminated last row whose short caller has
    no padding was cut, and what it read as lock and caller are fragments ("pmap", "pv")."""
    body = print_report("R/W writer blocked by writer", PV[:1], total=12000, elapsed_ns=E)
    body = body[:body.rindex(SEP)]
    parsed = parse_text(tmp_path, body + " 6000  50% 100% 0.00     5230 pmap pv")
    assert rows_of(parsed, "line", "lock") == [(6, "pmap pv list")]
    assert [(p.line, p.kind) for p in parsed.problems] == [(7, ProblemKind.CUT_OFF)]
    assert "lacks the padding" in parsed.problems[0].reason
    # with its padding the row is whole
    parsed = parse_text(tmp_path, body + ROW.rstrip("\n").ljust(79) + " ")
    assert rows_of(parsed, "line", "caller")[-1] == (7, "pmap_enter+0x2f1")
    # a -D 0 line cut inside its event name
    parsed = parse_text(tmp_path, print_summary("Adaptive mutex spin", 5) + "%20d R/W wri" % 7)
    assert rows_of(parsed, "event") == [("Adaptive mutex spin",)]
    assert [(p.line, p.kind) for p in parsed.problems] == [(2, ProblemKind.CUT_OFF)]


def test_numa_dummy_lock_symbol_is_a_pv_list_lock(tmp_path):
    """pv_dummy_large (pmap.c) holds the pv lock of pages past the last segment at offset 0:
    lockstat prints its bare symbol, or with -c its size."""
    recs = [Rec(30, "pv_list_locks[8192]", "pmap_enter+0x2f1", 90000),
            Rec(20, "pv_dummy_large", "pmap_enter+0x2f1", 60000),
            Rec(10, "pv_chunks+0x40", "get_pv_entry+0x11", 10000)]
    parsed = parse_text(tmp_path, print_report("R/W writer blocked by writer", recs, total=60,
                                               elapsed_ns=E))
    assert lockstat.summary_lines(parsed.tables)[1:] == [
        "  pv list: 50 events (83.3% of all locks), est. 150.000 us (93.8% of the time listed)",
        "  pv chunk list: 10 events (16.7% of all locks), est. 10.000 us (6.2% of the time "
        "listed)"]


def test_error_events_column_is_no_time(tmp_path):
    """The error events' column is "(N/A)" (a recursion count, say): not summed as time, in
    the human report (its header says so) or in -p (by the event's number)."""
    recs = [Rec(10, "pmap pv list", "pmap_enter+0x2f1", 30000),
            Rec(5, "pmap pv chunk list", "get_pv_entry+0x11", 5000)]
    human = print_report("Recursive lock entry detected", recs, total=15, elapsed_ns=E,
                         units="(N/A)")
    for text in (human, print_p(60, recs)):
        parsed = parse_text(tmp_path, text)
        assert parsed.problems == []
        assert lockstat.summary_lines(parsed.tables) == [
            "lockstat Recursive lock entry detected: 15 events",
            "  pv list: 10 events (66.7% of all locks)",
            "  pv chunk list: 5 events (33.3% of all locks)"]


def test_trace_output_is_refused_in_one_line(tmp_path):
    """lockstat -T prints report_trace's own header and rows: detected as lockstat, refused
    with the reason, not as an unrecognised input."""
    text = ("%5s  %7s  %11s  %-24s  %-24s\n" % ("Event", "Time", "Owner", "Lock", "Caller")
            + SEP + "%2d  %10d  %11s  %-24s  %-24s\n" % (4, 52300, "0xfffff80012345000",
                                                         "pmap pv list", "pmap_enter+0x2f1"))
    assert sniff(text, "t") is Format.LOCKSTAT
    with pytest.raises(PvtraceError) as err:
        parse_text(tmp_path, text, name="t.txt")
    assert err.value.one_line() == ("t.txt:1: lockstat -T (trace) output is not supported: "
                                    "run lockstat without -T")
