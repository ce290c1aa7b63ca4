"""lockstat(1) reports: the human-readable report and the ``-p`` parsable form.

lockstat aggregates lockstat-provider events per (event, lock, caller[, stack]) and prints one
*report* per event type (``report_stats`` in ``cddl/contrib/opensolaris/cmd/lockstat/lockstat.c``)::

    <blank>
    R/W writer blocked by writer: 1234 events in 5.011 seconds (246 events/sec)   title
    <blank>
    Count indv cuml rcnt     nsec Lock                   Caller                     header
    -------------------------------------------------------------------------------
     1000  81%  81% 0.00     5230 pmap pv list           pmap_enter+0x2f1           rows
    -------------------------------------------------------------------------------

Rows are ``"%5llu "`` count, ``"%3.0f%% "`` indv, ``"%3.0f%% "`` cuml (``"---- "`` with ``-g``),
``"%4.2f %8s "`` rcnt and average, ``"%-22s "`` lock, ``"%-24s\\n"`` caller. Wide values push
the columns right, so a row is split on blanks, never by column: the leading numbers, the last
token is the caller, everything between is the lock (newer FreeBSD prints lock *names* such as
``pmap pv list``; older ones ``symbol+0xoff`` or a hex address). With ``-b`` the average is
printed as 8 blanks: the header (its ``nsec`` word is missing) says which layout follows.

With ``-h``/``-s N`` every row comes after its own separator and header and is followed by a
blank line, a histogram header and one line per power-of-two bucket, ``"%10llu |%s%s %-9u "``
(lower bound, a 30-column ``@`` bar, count), each optionally ending in a stack frame; frames left
over continue on lines of 53 blanks and the frame. ``-D 0`` prints one ``"%20llu %s"`` line per
event instead of a report (a row with ``summary`` true here). ``-p`` lines are parsed by
:mod:`pvtrace.ingest.lockstat_parse`; a file may hold several runs of either form concatenated,
plus the ``lockstat: warning: ...`` lines of stderr. Every line is a title, a header, a
separator, a row, a histogram or stack line, a summary, a warning, blank, or a problem.

The parser is a small state machine over lines (reports are thousands of lines, not millions):
the state is the current report (title facts), the current header's layout and flags, and the
row whose histogram and stack lines are being read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pvtrace import schemas
from pvtrace.errors import PvtraceError
from pvtrace.ingest.common import Format, Parsed, Problem, ProblemKind
from pvtrace.ingest.lockstat_parse import (EVENT_INDEX, EVENT_NAMES, EVENT_UNITS, HIST_BUCKETS,
                                           INT64_MAX, Diagnostics, PLine, family_expr, fmt_ns,
                                           frame, int_range, line_problem, looks_parsable,
                                           out_of_range, parse_p_line, read_lines, too_big,
                                           unterminated_row)

_TITLE = re.compile(r"^(?P<desc>\S.*?): (?P<n>\d+) events in (?P<sec>\d+(?:\.\d+)?) seconds "
                    r"\((?P<eps>\S+) events/sec\)\s*$")
_HEADER = re.compile(r"^\s*(?P<count>Count|ops/s)\s+(?P<indv>indv|genr)\s+cuml\s+rcnt\s+"
                     r"(?P<rest>.*?)\s*$")
_UNITS = {"nsec", "units", "(N/A)"}
_SEPARATOR = re.compile(r"^-{20,}\s*$")
_HIST_HEADER = re.compile(r"^\s*(?P<units>\S+)\s+-+ Time Distribution -+\s+(?:count|ops/s)"
                          r"(?:\s+Stack)?\s*$")
_BUCKET = re.compile(r"^\s*(?P<b>\d+) \|(?P<bar>@*) *(?P<n>\d+)(?: +(?P<frame>\S+))?\s*$")
_CONTINUATION = re.compile(r"^ {20,}(?P<frame>\S+)\s*$")
_SUMMARY = re.compile(r"^(?P<n>[ \d]{19}\d) (?P<desc>[A-Za-z].*?)\s*$")
_TRACE_HEADER = re.compile(r"^\s*Event\s+Time\s+Owner\s+Lock\s+Caller\s*$")
_TOKEN = re.compile(r"\S+")
_INT = re.compile(r"\d+")
_PCT = re.compile(r"(\d+)%")
_FLOAT = re.compile(r"\d+\.\d+")
_COLUMNS = [f.name for f in schemas.load("lockstat").arrow]
# Frames of one row: as many as lockstat.stack_depth holds. lockstat -s records a few dozen
# frames at most, so only a corrupt report (or lines glued on from elsewhere) gets here; the
# frames past it are malformed lines, each reported, not a count that wraps or fails.
_MAX_FRAMES = int_range("lockstat", "stack_depth")[1]
# A row's caller is printed "%-24s\n": a complete row whose caller is shorter ends in blanks.
_CALLER_WIDTH = 24


@dataclass
class _Header:
    """What the current column header says about the rows under it."""

    rate: bool = False
    genr: bool = False
    hottest_lock: bool = False
    hottest_caller: bool = False
    basic: bool | None = None          # None: no header seen, guess per row
    lock_header: str | None = None
    units: str | None = None


@dataclass
class _Report:
    number: int = 0
    event: str | None = None
    events_total: int | None = None
    seconds: float | None = None
    events_per_sec: int | None = None
    parsable_event: int | None = None   # event index of the -p run, when this is one
    line: int | None = None             # of its title


@dataclass
class _State:
    src: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    hist: list[dict[str, Any]] = field(default_factory=list)
    stack: list[dict[str, Any]] = field(default_factory=list)
    report: _Report = field(default_factory=_Report)
    header: _Header = field(default_factory=_Header)
    hist_row: dict[str, Any] | None = None   # row whose histogram/stack lines may follow
    in_hist: bool = False
    # The current report's rows in the human form, and the line of its last row while no
    # line of dashes has followed it: report_stats ends every report with one, so a report
    # still open at the next title or at the end of the input was cut short.
    report_rows: int = 0
    open_row: int | None = None
    trace_header: int | None = None          # line of a lockstat -T header
    warnings: list[tuple[int, str]] = field(default_factory=list)


def parse(path: Path, src: int, name: str) -> Parsed:
    """Parse a file of lockstat(1) reports and/or ``-p`` output."""
    lines, cut_off = read_lines(path)
    st = _State(src)
    diags = Diagnostics(src, name)
    problems: list[Problem] = []
    for no, text in enumerate(lines, start=1):
        reason = too_big(text) or _line(st, no, text)
        if reason is not None:
            reason = diags.take(no, text, reason)
        if reason is not None:
            problems.append(line_problem(src, name, no, reason, cut_off, len(lines)))
    if not st.rows and st.trace_header is not None:
        raise PvtraceError("lockstat -T (trace) output is not supported: run lockstat "
                           "without -T", path=name, line=st.trace_header)
    if cut_off and (why := _cut_row(st, lines[-1], len(lines))) is not None:
        problems.append(line_problem(src, name, len(lines), why, True, len(lines)))
    _end_report(st, len(lines), "the end of the input")
    problems.extend(diags.problems)
    problems.extend(unterminated_row(src, name, lines, cut_off, problems))
    problems.extend(Problem(src, name, no, ProblemKind.WARNING, why)
                    for no, why in st.warnings + _overfull_reports(st))
    problems.sort(key=lambda p: p.line or 0)
    rows = frame(st.rows, "lockstat")
    parsable = len(rows) > 0 and bool(rows["parsable"].all())
    fmt = Format.LOCKSTAT_PARSABLE if parsable else Format.LOCKSTAT
    body = rows.filter(~pl.col("summary"))
    meta = {
        "format": fmt.value,
        "reports": int(rows["report"].n_unique()) if len(rows) else 0,
        "rows": len(body),
        "summary_lines": len(rows) - len(body),
        "events": sorted({e for e in rows["event"].to_list() if e is not None}),
        "events_total": _events_total(rows),
        "seconds": sorted({s for s in rows["seconds"].to_list() if s is not None}),
    }
    tables = {"lockstat": rows, "lockstat_hist": frame(st.hist, "lockstat_hist"),
              "lockstat_stack": frame(st.stack, "lockstat_stack"), "diagnostics": diags.frame()}
    return Parsed(format=fmt, tables=tables,
                  problems=problems, meta=meta, records=len(rows), lines=len(lines))


def _line(st: _State, no: int, text: str) -> str | None:
    """Consume one line; return why it was not understood, or None."""
    if not text.strip():
        return None
    if st.in_hist:
        if (m := _BUCKET.match(text)) is not None:
            return _hist_line(st, no, (int(m["b"]), int(m["n"])), m["frame"])
        if (m := _CONTINUATION.match(text)) is not None:
            return _hist_line(st, no, None, m["frame"])
        st.in_hist = False
    if (m := _TITLE.match(text)) is not None:
        _end_report(st, no, f"the next title (line {no})")
        eps = m["eps"]   # isdecimal, not isdigit: int() refuses digits such as "²"
        st.report = _Report(st.report.number + 1, m["desc"], int(m["n"]), float(m["sec"]),
                            int(eps) if eps.isdecimal() else None, line=no)
        st.header = _Header()
        st.hist_row = None
        st.report_rows = 0
        return None
    if _SEPARATOR.match(text):
        st.open_row = None
        return None
    if (m := _HEADER.match(text)) is not None:
        return _header(st, no, m)
    if (m := _HIST_HEADER.match(text)) is not None:
        if st.hist_row is None or st.hist_row["hist_buckets"] or st.hist_row["parsable"]:
            return "histogram header without a report row before it"
        st.in_hist = True
        return None
    if (m := _SUMMARY.match(text)) is not None:
        return _summary(st, no, int(m["n"]), m["desc"])
    if looks_parsable(text):
        p = parse_p_line(text)
        if isinstance(p, str):
            return p
        return _p_row(st, no, p)
    if _BUCKET.match(text) or (st.hist_row is None and _CONTINUATION.match(text)):
        return "histogram or stack line without a row and histogram header before it"
    if _TRACE_HEADER.match(text):
        st.trace_header = st.trace_header or no
        return "lockstat -T (trace) output is not supported; run lockstat without -T"
    reason = _row(st, no, text)
    if reason is not None:
        # The histogram and stack lines after a row that is not kept are not the previous
        # row's: with no row to attach to, they are reported too.
        st.hist_row = None
    return reason


def _header(st: _State, no: int, m: re.Match[str]) -> str | None:
    words = m["rest"].split()
    units = None
    if words and words[0] in _UNITS:
        units = words.pop(0)
    if not words or words[-1] != "Caller":
        return "lockstat column header without the Caller column"
    words.pop()
    hottest_caller = bool(words) and words[-1] == "Hottest"
    if hottest_caller:
        words.pop()
    if not words:
        return "lockstat column header without the Lock column"
    lock_header = " ".join(words)
    if st.report_rows and not st.rows[-1]["hist_buckets"]:
        # Rows, their closing dashes, then a header: without -h/-s a report has one header,
        # under its title, so the title of a new report is missing (lost, or a line of
        # stderr written over it). Its rows are not the last title's event.
        st.warnings.append((no, "lockstat column header without a title line before it (lost, "
                                "or overwritten by other output?): the rows below it are not "
                                f"the {st.report.event or 'untitled'} report's and are kept "
                                "under an unknown event"))
        st.report = _Report(st.report.number + 1)
        st.report_rows = 0
    st.header = _Header(rate=m["count"] == "ops/s", genr=m["indv"] == "genr",
                        hottest_lock=lock_header.startswith("Hottest "),
                        hottest_caller=hottest_caller, basic=units is None,
                        lock_header=lock_header, units=units)
    return None


def _row(st: _State, no: int, text: str) -> str | None:
    toks = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]
    if len(toks) < 6 or not _INT.fullmatch(toks[0][0]):
        return "not a lockstat title, header, row, histogram or warning line"
    indv, cuml, rcnt = _PCT.fullmatch(toks[1][0]), toks[2][0], toks[3][0]
    cuml_m = _PCT.fullmatch(cuml)
    if indv is None or (cuml_m is None and cuml != "----") or not _FLOAT.fullmatch(rcnt):
        return "lockstat row: expected count, indv%, cuml% (or ----), rcnt as the first fields"
    basic = st.header.basic
    if basic is None:       # no header seen: a 5th integer and enough fields mean timing
        basic = not (len(toks) >= 7 and _INT.fullmatch(toks[4][0]))
    first = 4 if basic else 5
    if not basic and not _INT.fullmatch(toks[4][0]):
        return "lockstat row: the nsec field is not a number (the header says there is one)"
    if len(toks) < first + 2:
        return "lockstat row: missing the lock or the caller"
    count = int(toks[0][0])
    nsec = None if basic else int(toks[4][0])
    h = st.header
    if nsec is not None and count * nsec > INT64_MAX:
        return "lockstat row: count x nsec is beyond 64 bits (corrupt line?)"
    row = _append(st, no, st.report, h, summary=False, count=count, indv=int(indv[1]),
                  cuml=int(cuml_m[1]) if cuml_m else None, rcnt=float(rcnt), nsec=nsec,
                  total_ns=count * nsec if nsec is not None and not h.rate else None,
                  total_ns_exact=False, lock=text[toks[first][1]:toks[-2][2]],
                  caller=toks[-1][0], parsable=False, basic=basic)
    if isinstance(row, str):
        return row
    st.report_rows += 1
    st.open_row = no
    return None


def _end_report(st: _State, no: int, where: str) -> None:
    """The current report ends at line ``no`` (``where`` says what is there): a warning when
    its rows were not closed by a line of dashes."""
    if st.open_row is not None:
        title = f"report of line {st.report.line}" if st.report.line else "untitled report"
        st.warnings.append((no, f"lockstat {title} has no closing line of dashes before "
                                f"{where}: the report was cut short after its row of line "
                                f"{st.open_row}, rows after it may be missing"))
        st.open_row = None


def _cut_row(st: _State, text: str, no: int) -> str | None:
    """Why the unterminated last line, understood as a row, was cut inside its lock or
    caller (the row is then dropped), or None. lockstat pads a caller to 24 columns: a
    complete row whose caller is shorter ends in blanks, one cut short does not."""
    if not st.rows or st.rows[-1]["line"] != no or st.rows[-1]["parsable"]:
        return None
    row = st.rows[-1]
    if row["summary"]:
        if row["event"] in EVENT_INDEX:
            return None
        why = f"-D 0 summary line cut inside its event name {row['event']!r}"
    elif text[-1:].isspace() or len(row["caller"]) >= _CALLER_WIDTH:
        return None
    else:
        why = (f"row cut short: its caller {row['caller']!r} lacks the padding to "
               f"{_CALLER_WIDTH} columns, so the lock or caller read may be a fragment")
    st.rows.pop()
    st.hist_row = None
    st.open_row = None
    st.report_rows -= not row["summary"]
    return why


def _overfull_reports(st: _State) -> list[tuple[int, str]]:
    """Reports whose rows hold more events than their title counts: rows of another report
    ran into them. lockstat's rows never exceed the title's total, except with -g, where each
    event counts once per caller in its stack, and with -R, whose rows are rates."""
    counts: dict[int, int] = {}
    first: dict[int, dict[str, Any]] = {}
    for row in st.rows:
        if row["summary"] or row["parsable"] or row["genr"] or row["rate"] \
                or row["events_total"] is None:
            continue
        counts[row["report"]] = counts.get(row["report"], 0) + row["count"]
        first.setdefault(row["report"], row)
    return [(first[r]["line"], f"lockstat rows of the {first[r]['event']} report add up to "
             f"{n} events, more than the {first[r]['events_total']} of its title: rows of "
             "another report (whose title was lost?) are among them")
            for r, n in counts.items() if n > first[r]["events_total"]]


def _summary(st: _State, no: int, n: int, desc: str) -> str | None:
    row = _append(st, no, _Report(st.report.number + 1, desc, n), _Header(), summary=True,
                  count=n, parsable=False, basic=False, total_ns_exact=False)
    if isinstance(row, str):
        return row
    st.hist_row = None
    return None


def _p_row(st: _State, no: int, p: PLine) -> str | None:
    if len(p.frames) > _MAX_FRAMES:
        return f"lockstat -p line with {len(p.frames)} stack frames, more than the " \
               f"{_MAX_FRAMES} a row can hold (corrupt line?)"
    rep, h = st.report, st.header
    if rep.parsable_event != p.event_index:
        rep = _Report(rep.number + 1, EVENT_NAMES.get(p.event_index),
                      parsable_event=p.event_index)
        h = _Header(basic=p.total_ns is None)
    row = _append(st, no, rep, h, summary=False, count=p.count, rcnt=p.rcnt,
                  nsec=p.total_ns // p.count if p.total_ns is not None and p.count else None,
                  total_ns=p.total_ns, total_ns_exact=p.total_ns is not None, lock=p.lock,
                  caller=p.caller, parsable=True, basic=p.total_ns is None,
                  event_index=p.event_index)
    if isinstance(row, str):
        return row
    for j, n in enumerate(p.buckets):
        if n:
            _add_bucket(st, no, 1 << j, n)
    for f in p.frames:
        _add_frame(st, no, f)
    st.hist_row = row
    return None


def _append(st: _State, no: int, rep: _Report, h: _Header,
            **values: Any) -> dict[str, Any] | str:
    """Add a row under report ``rep`` and header ``h`` (which become the current ones), or
    return why its numbers do not fit the table (the state is then left as it was)."""
    row: dict[str, Any] = dict.fromkeys(_COLUMNS)
    row.update(src=st.src, line=no, report=rep.number, row_id=len(st.rows), event=rep.event,
               event_index=EVENT_INDEX.get(rep.event or ""), events_total=rep.events_total,
               seconds=rep.seconds, events_per_sec=rep.events_per_sec, rate=h.rate,
               genr=h.genr, hottest_lock=h.hottest_lock, hottest_caller=h.hottest_caller,
               lock_header=h.lock_header, units=h.units, stack_depth=0, hist_buckets=0)
    row.update(values)
    if row["summary"]:
        row.update(rate=False, genr=False, hottest_lock=False, hottest_caller=False)
    if (why := out_of_range("lockstat", row)) is not None:
        return why
    if rep.number != st.report.number:
        st.report_rows = 0
    st.report, st.header = rep, h
    st.rows.append(row)
    st.hist_row = row
    st.in_hist = False
    return row


def _hist_line(st: _State, no: int, bucket: tuple[int, int] | None,
               frame: str | None) -> str | None:
    """A human report's bucket line (``bucket``: lower bound and count) and/or stack frame for
    the current row, or why the line cannot be one."""
    row = st.hist_row
    assert row is not None
    # lockstat has 64 buckets and prints those from the first to the last non-empty one: a
    # 65th bucket line is no part of this row's histogram (a corrupt or spliced report).
    if bucket is not None and row["hist_buckets"] >= HIST_BUCKETS:
        return f"histogram bucket line past the {HIST_BUCKETS} buckets lockstat has, for " \
               f"the row of line {row['line']}"
    if frame is not None and row["stack_depth"] >= _MAX_FRAMES:
        return f"stack frame past the {_MAX_FRAMES} a row can hold, for the row of line " \
               f"{row['line']} (corrupt report?)"
    if bucket is not None:
        _add_bucket(st, no, *bucket)
    if frame is not None:
        _add_frame(st, no, frame)
    return None


def _add_bucket(st: _State, no: int, bucket: int, n: int) -> None:
    row = st.hist_row
    assert row is not None
    st.hist.append({"src": st.src, "line": row["line"], "bucket_line": no,
                    "report": row["report"], "row_id": row["row_id"], "bucket_ns": bucket,
                    "count": n})
    row["hist_buckets"] += 1


def _add_frame(st: _State, no: int, frame: str) -> None:
    row = st.hist_row
    assert row is not None
    st.stack.append({"src": st.src, "line": no, "row_id": row["row_id"],
                     "depth": row["stack_depth"], "frame": frame})
    row["stack_depth"] += 1


def _events_total(rows: pl.DataFrame) -> int:
    """Events of all reports: the titles' totals, or the rows' counts where there is no title."""
    if rows.is_empty():
        return 0
    # Summed in 128 bits, here and in summary_lines: every count fits int64, but their sum need
    # not (two rows of 2^63-1 passed the per-line checks), and int64 sums wrap negative.
    per_report = rows.filter(~pl.col("rate")).group_by("src", "report").agg(
        pl.col("events_total").first(), pl.col("count").cast(pl.Int128).sum())
    return int(per_report.select(
        pl.coalesce("events_total", "count").sum()).item() or 0)


def summary_lines(tables: dict[str, pl.DataFrame]) -> list[str]:
    """Per event type: the pv-list and pv-chunk-list lock families against all locks.

    "All locks" is the sum of the report titles' event counts (rows hidden by ``-D`` included;
    ``-p`` has no titles, so its rows are summed) over the reports that list rows: a ``-D 0``
    report (totals only) of the same events is counted in the event total and said apart. Times are count x average (``est.``), or the
    exact totals of ``-p``, over the rows listed. ``-R`` reports (rates) are summarised apart,
    against the titles' events/sec. Times are summed only for events whose column is in
    nanoseconds (not the error events' ``(N/A)`` counts). ``-g`` rows overlap (an event counts
    once for every caller in its stack): their families are counted but not put as shares.
    """
    rows = tables.get("lockstat")
    if rows is None or rows.is_empty():
        return []
    out: list[str] = []
    units = pl.coalesce("units", pl.col("event_index").replace_strict(
        EVENT_UNITS, default=None, return_dtype=pl.String))
    rows = rows.with_columns(family=family_expr(pl.col("lock")),
                             total_ns=pl.when(units.fill_null("nsec") == "nsec")
                             .then("total_ns"))
    keys = (rows.select("event", "event_index", "rate").unique()
            .sort("event_index", "event", "rate", nulls_last=True))
    for event, _, rate in keys.rows():
        ev = rows.filter(pl.col("event").eq_missing(event) & (pl.col("rate") == rate))
        unit = "ops/s" if rate else "events"
        title = "events_per_sec" if rate else "events_total"   # -R: the title's events/sec
        reports = ev.group_by("src", "report").agg(
            pl.col(title).first(), pl.col("count").cast(pl.Int128).sum(),
            (~pl.col("summary")).any().alias("has_rows"))
        per_report = reports.select(pl.coalesce(title, "count").alias("n"), "has_rows")
        total = int(per_report["n"].sum() or 0)
        # Shares are of the reports whose rows are listed: a -D 0 report of the same events
        # (a totals line) would otherwise count them twice and halve every share.
        with_rows = int(per_report.filter("has_rows")["n"].sum() or 0)
        listed = ev.filter(~pl.col("summary"))
        genr = bool(listed["genr"].any())       # overlapping rows: their times too
        all_ns = 0 if genr else int(listed["total_ns"].cast(pl.Int128).sum() or 0)
        est = "" if len(listed) and listed["total_ns_exact"].all() else "est. "
        head = f"lockstat {event or '(no title)'}{' (-R rates)' if rate else ''}: {total} {unit}"
        if all_ns:
            head += f", {est}{fmt_ns(all_ns)} in the rows listed"
        out.append(head)
        if listed.is_empty():
            out.append("  (-D 0 summary only: no per-lock rows)")
            continue
        if genr:
            for fam, label in (("pv", "pv list"), ("pvc", "pv chunk list")):
                n = int(listed.filter(pl.col("family") == fam)["count"].max() or 0)
                out.append(f"  {label}: at least {n} {unit} (the largest -g row of its locks)")
            out.append("  (-g rows overlap: each event counts once for every caller in its "
                       "stack, so rows do not add up to shares; run lockstat without -g)")
            continue
        if with_rows != total:
            out.append(f"  (shares of the {with_rows} {unit} of the reports with per-lock rows; "
                       f"{total - with_rows} more in -D 0 summaries without rows)")
        for fam, label in (("pv", "pv list"), ("pvc", "pv chunk list")):
            f = listed.filter(pl.col("family") == fam)
            n = int(f["count"].cast(pl.Int128).sum() or 0)
            line = f"  {label}: {n} {unit} ({_pct(n, with_rows)} of all locks)"
            if all_ns:
                ns = int(f["total_ns"].cast(pl.Int128).sum() or 0)
                line += f", {est}{fmt_ns(ns)} ({_pct(ns, all_ns)} of the time listed)"
            out.append(line)
    return out


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"
