"""Event-log ingest: tiny logs written here, exact expected tables."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvtrace.errors import PvtraceError
from pvtrace.ingest import hexfield, pvlog, run_ingest
from pvtrace.ingest.common import ProblemKind
from spec_example import SPEC_LOG

LOCK = 0xFFFFF80001000040
# (ts, cpu, tid, ev, cls, lock, mode, ns, pa, op, src, line)
SPEC_ROWS = [
    (1000, 0, 101, "E", "-", 0, "-", 0, 0x200000, "pmap_enter", 0, 4),
    (1000, 0, 101, "A", "pv", LOCK, "w", 0, 0x200000, "pmap_enter", 0, 5),
    (11000, 0, 101, "R", "pv", LOCK, "w", 0, 0x200000, "pmap_enter", 0, 6),
    (11000, 1, 102, "B", "pv", LOCK, "w", 9000, 0x201000, "pmap_enter", 0, 7),
    (11000, 1, 102, "A", "pv", LOCK, "w", 0, 0x201000, "pmap_enter", 0, 8),
    (16000, 1, 102, "R", "pv", LOCK, "w", 0, 0x201000, "pmap_enter", 0, 9),
]
COLUMNS = ["ts", "cpu", "tid", "ev", "cls", "lock", "mode", "ns", "pa", "op", "src", "line"]


def rows(df: pl.DataFrame) -> list[tuple]:
    return df.select(pl.col(c).cast(pl.String) if df.schema[c] == pl.Categorical
                     else pl.col(c) for c in COLUMNS).rows()


def bundle_events(out: Path) -> list[tuple]:
    return rows(pl.read_parquet(out / "events.parquet", glob=False))


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def ingest(tmp_path: Path, *texts: str | bytes, **kw):
    paths = [str(write(tmp_path, f"in{i}.log", t)) for i, t in enumerate(texts)]
    out = tmp_path / "bundle"
    result = run_ingest(paths, str(out), **kw)
    return result, out, json.loads((out / "metadata.json").read_text())


def test_spec_example(tmp_path):
    result, out, meta = ingest(tmp_path, SPEC_LOG)
    assert bundle_events(out) == SPEC_ROWS
    assert (result.records, result.threads, result.cpus) == (6, 2, [0, 1])
    assert (result.first_ts, result.last_ts, result.duration_ns) == (1000, 16000, 15000)
    assert meta["capture"] == {"ncpu": "4", "ndomains": "1"}
    assert meta["inputs"][0] | {"path": None} == {
        "path": None, "format": "pvlog", "compression": None, "lines": 9, "records": 6,
        "malformed": 0, "cut_off": 0, "capture": {"ncpu": "4", "ndomains": "1"},
        "log_version": "v1", "reader": {"name": "pyarrow", "events_written": "while parsing"}}
    assert meta["counts"] == {"ev": {"A": 2, "R": 2, "B": 1, "E": 1},
                              "cls": {"pv": 5, "-": 1}, "op": {"pmap_enter": 6}}
    assert meta["time"] == {"first_ts": 1000, "last_ts": 16000, "duration_ns": 15000}
    assert meta["threads"] == 2 and meta["cpus"] == {"count": 2, "ids": [0, 1]}
    assert meta["drops"] == {"per_cpu": {}, "total": 0}
    assert meta["problems"] == {"totals": {}, "first": []}
    assert meta["layout"]["effective"] == meta["layout"]["detected"] == "unknown"
    assert meta["pvtrace_version"] and meta["ingested_at"]
    assert pl.read_parquet(out / "diagnostics.parquet").height == 0


def test_per_cpu_order_is_sorted_by_ts_ties_by_line(tmp_path):
    log = ("# pvtrace-log v1\n"
           "5000 1 201 A pv 0x1040 w 0 0 pmap_enter\n"       # line 2
           "9000 1 201 R pv 0x1040 w 0 0 pmap_enter\n"       # line 3
           "1000 0 101 A pv 0x1000 r 0 0 pmap_is_modified\n"  # line 4
           "7000 0 101 R pv 0x1000 r 0 0 pmap_is_modified\n"  # line 5
           "5000 0 101 P - 0 4k 0 0x1000 pmap_is_modified\n")  # line 6
    _, out, _ = ingest(tmp_path, log)
    assert [(r[0], r[-1]) for r in bundle_events(out)] == [
        (1000, 4), (5000, 2), (5000, 6), (7000, 5), (9000, 3)]


def test_several_inputs_sorted_across_inputs(tmp_path):
    a = "# pvtrace-log v1\n# timestamp0=5\n3000 0 1 E - 0 - 0 0 pmap_enter\n"
    b = "# pvtrace-log v1\n# timestamp0=5\n1000 1 2 E - 0 - 0 0 pmap_enter\n" \
        "3000 1 2 X - 0 - 0 0 pmap_enter\n"
    result, out, meta = ingest(tmp_path, a, b)
    assert [(r[0], r[10], r[11]) for r in bundle_events(out)] == [
        (1000, 1, 3), (3000, 0, 3), (3000, 1, 4)]
    assert [i["records"] for i in meta["inputs"]] == [1, 2]
    assert result.warnings == []


def test_logs_of_different_kernels_warn(tmp_path):
    # A stock and an OBM capture (synth gives both one timestamp0) were merged silently.
    a = "# pvtrace-log v1\n# timestamp0=5\n# kernel=stock\n# ncpu=4\n" \
        "3000 0 7 E - 0 - 0 0 pmap_enter\n"
    b = "# pvtrace-log v1\n# timestamp0=5\n# kernel=obm\n# ncpu=4\n" \
        "1000 1 8 E - 0 - 0 0 pmap_enter\n"
    result, _, meta = ingest(tmp_path, a, b)
    paths = [i["path"] for i in meta["inputs"]]
    assert result.warnings == [f"the event logs disagree on 'kernel' ({paths[0]}: stock, "
                               f"{paths[1]}: obm): merged as one capture anyway; metadata "
                               "'capture' keeps the first"]
    assert meta["capture"]["kernel"] == "stock"


def test_different_captures_sharing_tids_warn(tmp_path):
    a = "# pvtrace-log v1\n# timestamp0=5\n3000 0 7 E - 0 - 0 0 pmap_enter\n"
    b = "# pvtrace-log v1\n# timestamp0=9\n1000 1 7 E - 0 - 0 0 pmap_enter\n"
    result, _, meta = ingest(tmp_path, a, b)
    assert len(result.warnings) == 1 and "1 thread ids" in result.warnings[0]
    assert meta["warnings"] == result.warnings


def test_dtrace_diagnostics(tmp_path):
    log = ("dtrace: script 'pvtrace.d' matched 57 probes\n"
           "# pvtrace-log v1\n"
           "1000 0 101 E - 0 - 0 0 pmap_enter\n"
           "dtrace: 138 drops on CPU 3\n"
           "dtrace: 2 drops on CPU 1\n"
           "dtrace: 12 drops on CPU 3\n"
           "dtrace: 5 dynamic variable drops with non-empty dirty list\n"
           "dtrace: 4 aggregation drops on CPU 0\n"
           "dtrace: 3 dynamic variable drops\n"
           "dtrace: 2 aggregation drops on CPU 1\n"
           "dtrace: error on enabled probe ID 7 (ID 71: fbt:kernel:pmap_enter:entry): "
           "invalid address (0x0) in action #3\n"
           "dtrace: something new\n")
    result, out, meta = ingest(tmp_path, log)
    diag = pl.read_parquet(out / "diagnostics.parquet")
    assert diag.select("src", "line", pl.col("kind").cast(pl.String), "cpu", "count").rows() == [
        (0, 1, "matched", None, 57), (0, 4, "drops", 3, 138), (0, 5, "drops", 1, 2),
        (0, 6, "drops", 3, 12), (0, 7, "dynvar_drops", None, 5),
        (0, 8, "aggregation_drops", 0, 4), (0, 9, "dynvar_drops", None, 3),
        (0, 10, "aggregation_drops", 1, 2), (0, 11, "error", None, None),
        (0, 12, "other", None, None)]
    assert diag["text"][1] == "dtrace: 138 drops on CPU 3"
    assert result.drops_per_cpu == {1: 2, 3: 150}
    assert meta["drops"] == {"per_cpu": {"1": 2, "3": 150}, "total": 152, "dynvar_drops": 8,
                             "aggregation_drops": 6}
    assert result.records == 1 and meta["problems"]["totals"] == {}


def test_a_lockstat_runs_drops_are_not_the_event_logs(tmp_path):
    # Ingested together, lockstat's "N drops on CPU M" warnings went into the bundle's drop
    # counts, and every replay said the event capture had lost records on those CPUs.
    report = ("\nR/W writer blocked by writer: 12000 events in 5.011 seconds (2395 events/sec)\n"
              "\nCount indv cuml rcnt     nsec Lock                   Caller\n" + "-" * 79 + "\n"
              " 6000  50%  50% 0.00     5230 pmap pv list           pmap_enter+0x2f1\n"
              + "-" * 79 + "\n" + "lockstat: warning: 12 drops on CPU 3\n")
    log = SPEC_LOG + "dtrace: 2 drops on CPU 1\n"
    result, out, meta = ingest(tmp_path, log, report)
    assert result.drops_per_cpu == {1: 2} and meta["drops"]["total"] == 2
    diag = pl.read_parquet(out / "diagnostics.parquet")
    assert diag.select("src", pl.col("kind").cast(pl.String), "cpu", "count").rows() == [
        (0, "drops", 1, 2), (1, "drops", 3, 12)]      # both kept in the table
    assert [(p.src, p.kind) for p in result.problems] == [(1, ProblemKind.WARNING)]


def test_crlf(tmp_path):
    _, out, meta = ingest(tmp_path, SPEC_LOG.replace("\n", "\r\n"))
    assert bundle_events(out) == SPEC_ROWS
    assert meta["capture"] == {"ncpu": "4", "ndomains": "1"}


def test_bare_carriage_returns_hide_no_records(tmp_path):
    """Lines ending in bare CRs read as one line: a # line swallowed every record after it,
    with nothing reported. A file of them is refused with the fix; a # line with a bare CR
    inside is malformed, not metadata."""
    with pytest.raises(PvtraceError, match="lines end in bare carriage returns"):
        ingest(tmp_path, SPEC_LOG.replace("\n", "\r"))
    glued = SPEC_LOG + "# note\r1000 3 555 E - 0 - 0 0x0 pmap_enter\n"
    result, out, _ = ingest(tmp_path, glued)
    assert bundle_events(out) == SPEC_ROWS
    (problem,) = result.problems
    assert problem.kind is ProblemKind.MALFORMED
    assert problem.line == len(SPEC_LOG.splitlines()) + 1
    assert "carriage return inside a # or dtrace: line" in problem.reason


@pytest.mark.parametrize("compress,name", [
    (gzip.compress, "gzip"),
    (lambda b: zstandard.ZstdCompressor().compress(b), "zstd"),
])
def test_compressed(tmp_path, compress, name):
    _, out, meta = ingest(tmp_path, compress(SPEC_LOG.encode()))
    assert bundle_events(out) == SPEC_ROWS
    assert meta["inputs"][0]["compression"] == name


def test_multi_member_gzip(tmp_path):
    half = SPEC_LOG.index("11000 1 102 B")
    data = gzip.compress(SPEC_LOG[:half].encode()) + gzip.compress(SPEC_LOG[half:].encode())
    _, out, _ = ingest(tmp_path, data)
    assert bundle_events(out) == SPEC_ROWS


@pytest.mark.parametrize("compress", [
    gzip.compress, lambda b: zstandard.ZstdCompressor().compress(b)])
def test_truncated_compressed_stream_keeps_decoded_part(tmp_path, compress):
    big = SPEC_LOG + "".join(f"{20000 + i} 2 103 E - 0 - 0 0 pmap_remove\n"
                             for i in range(20000))
    data = compress(big.encode())
    result, out, meta = ingest(tmp_path, data[: len(data) // 2])
    assert 6 < result.records < 20006
    assert bundle_events(out)[:6] == SPEC_ROWS
    kinds = [p.kind for p in result.problems]
    assert ProblemKind.CUT_OFF in kinds and ProblemKind.MALFORMED not in kinds
    # one cut, counted once: the stream's end explains the half line (it counted twice)
    assert meta["inputs"][0]["cut_off"] == 1 and result.problem_totals["cut_off"] == 1
    assert any("stream ends early" in p.reason for p in result.problems)


def test_a_stream_cut_too_short_to_recognise_says_so(tmp_path):
    """A gzip cut after a few lines of text, or before any: the error names the cut, not only
    an unrecognised or empty input."""
    data = gzip.compress(("# pvtrace" + "x" * 5000 + "\n").encode() * 20)
    with pytest.raises(PvtraceError, match=r"gzip stream ends early after \d+ bytes of text"):
        ingest(tmp_path, data[:60])
    with pytest.raises(PvtraceError, match="gzip stream ends before any text"):
        ingest(tmp_path, data[:12])


@pytest.mark.parametrize("tail", [b"x", b"garbage\n"])
def test_trailing_garbage_after_the_last_member_is_ignored_with_a_warning(tmp_path, tail):
    """Like gzip -d: every record kept, one warning, no cut-off (one byte after the member
    read as a truncated member; eight, as a corrupt one, refusing the capture)."""
    result, out, meta = ingest(tmp_path, gzip.compress(SPEC_LOG.encode()) + tail)
    assert bundle_events(out) == SPEC_ROWS
    assert [(p.kind, p.reason) for p in result.problems] == [(
        ProblemKind.WARNING, f"{len(tail)} bytes after the last gzip member are not gzip "
        "data: ignored, as gzip -d does")]
    assert meta["inputs"][0]["cut_off"] == 0


def test_pzstd_output_is_zstd(tmp_path):
    """pzstd starts with a skippable frame (magic 0x184D2A50) holding its frame sizes."""
    frame = zstandard.ZstdCompressor().compress(SPEC_LOG.encode())
    skippable = bytes.fromhex("502a4d18") + (4).to_bytes(4, "little") + b"\0\0\0\0"
    _, out, meta = ingest(tmp_path, skippable + frame)
    assert bundle_events(out) == SPEC_ROWS and meta["inputs"][0]["compression"] == "zstd"


def test_a_zero_filled_tail_is_a_cut_off_line(tmp_path):
    """A crash leaves the last blocks of a log zero-filled: on a short log they outnumbered
    its text and the whole capture was refused as binary data."""
    result, out, _ = ingest(tmp_path, SPEC_LOG + "\0" * 4096)
    assert bundle_events(out) == SPEC_ROWS
    assert [p.kind for p in result.problems] == [ProblemKind.CUT_OFF]
    with pytest.raises(PvtraceError, match="binary data"):
        ingest(tmp_path, "\0" * 4096, force=True)


def test_a_span_no_replay_can_hold_is_named_at_ingest(tmp_path):
    """A corrupt ts near 2^64 passed ingest in silence and then made every replay refuse the
    bundle; the ingest now names the two ends' lines."""
    lines = SPEC_LOG.splitlines(keepends=True)
    last = lines[-1].split(" ", 1)
    text = "".join(lines[:-1]) + f"{2**64 - 1} {last[1]}"
    result, _, _ = ingest(tmp_path, text)
    (warning,) = result.warnings
    assert warning.startswith("the records span 18,446,744,073,709,550,615 ns")
    log = tmp_path / "in0.log"
    assert f"ts 1000 at {log}:4 .. {2**64 - 1} at {log}:{len(lines)}" in warning
    assert "pvtrace replay will refuse this bundle" in warning
    assert ingest(tmp_path, SPEC_LOG, force=True)[0].warnings == []


def test_a_nonzero_ns_outside_b_and_s_is_named_at_ingest(tmp_path):
    """The log format has ns 0 on A, R, P, E and X records; a producer that puts a number
    there had it accepted without a word (the replay ignores it)."""
    text = (SPEC_LOG.replace("1000 0 101 A pv 0xfffff80001000040 w 0 ",
                             "1000 0 101 A pv 0xfffff80001000040 w 9000 ")
            .replace("11000 0 101 R pv 0xfffff80001000040 w 0 ",
                     "11000 0 101 R pv 0xfffff80001000040 w 7000 "))
    result, out, meta = ingest(tmp_path, text)
    warning = (f"2 records other than B and S have a nonzero ns (the first in time at "
               f"{tmp_path / 'in0.log'}:5), where the log format has 0: kept as read, not "
               "used by the replay")
    assert result.warnings == [warning] and meta["warnings"] == [warning]
    assert [r[7] for r in bundle_events(out)] == [0, 9000, 7000, 9000, 0, 0]
    one = ingest(tmp_path, SPEC_LOG.replace("1000 0 101 E - 0 - 0 ", "1000 0 101 E - 0 - 3 "),
                 force=True)[0]
    assert one.warnings == [f"a record other than B and S has a nonzero ns (the first in time "
                            f"at {tmp_path / 'in0.log'}:4), where the log format has 0: kept "
                            "as read, not used by the replay"]
    assert ingest(tmp_path, SPEC_LOG, force=True)[0].warnings == []


def test_corrupt_gzip_is_an_error(tmp_path):
    data = bytearray(gzip.compress(SPEC_LOG.encode() * 50))
    data[30:60] = b"\xff" * 30
    with pytest.raises(PvtraceError, match="corrupt gzip"):
        ingest(tmp_path, bytes(data))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress])
def test_a_full_scratch_disk_is_not_a_read_error(tmp_path, compress):
    # The copy of a compressed capture (or of stdin) goes to scratch space; a full disk there
    # was reported as "cannot read" the capture. /dev/full answers every write with ENOSPC.
    from pvtrace.ingest.source import _decompress_to

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # the copy is named after the number of entries in scratch: this link's own name
    (scratch / "input-1.txt").symlink_to("/dev/full")
    src = tmp_path / "capture.log"
    src.write_bytes(compress(SPEC_LOG.encode()))
    with open(src, "rb") as f, pytest.raises(PvtraceError) as err:
        _decompress_to(f, str(src), scratch, copy_plain=True, path=src)
    assert "cannot write its" in err.value.message and "No space left" in err.value.message
    assert str(scratch) in err.value.message and "cannot read" not in err.value.message


def test_cut_off_last_line(tmp_path):
    result, out, meta = ingest(tmp_path, SPEC_LOG + "17000 1 102 E - 0")
    assert bundle_events(out) == SPEC_ROWS
    assert [(p.line, p.kind) for p in result.problems] == [(10, ProblemKind.CUT_OFF)]
    assert meta["inputs"][0]["cut_off"] == 1 and meta["inputs"][0]["malformed"] == 0
    assert meta["problems"]["totals"] == {"cut_off": 1}


def test_complete_last_line_without_newline_is_a_record(tmp_path):
    result, out, _ = ingest(tmp_path, SPEC_LOG + "17000 1 102 X - 0 - 0 0 pmap_enter")
    assert result.records == 7
    # kept, with a warning: a line cut inside its last field ("pmap_enter" -> "pm") parses too
    assert [(p.line, p.kind, p.reason) for p in result.problems] == [
        (10, ProblemKind.WARNING, "last line has no newline (capture interrupted?): kept as a "
                                  "record, but its last field may be cut short")]


def test_malformed_middle_line(tmp_path):
    lines = SPEC_LOG.splitlines(keepends=True)
    lines.insert(5, "1000 0 101 A pv 0xfffff80001000040 w 0\n")
    result, out, meta = ingest(tmp_path, "".join(lines))
    assert [r[:10] for r in bundle_events(out)] == [r[:10] for r in SPEC_ROWS]
    assert [(p.path.endswith("in0.log"), p.line, p.kind, p.reason) for p in result.problems] == [
        (True, 6, ProblemKind.MALFORMED, "expected 10 fields, got 8")]
    assert meta["problems"]["first"][0]["line"] == 6
    assert meta["inputs"][0]["malformed"] == 1


@pytest.mark.parametrize("line,reason", [
    ("x 0 1 E - 0 - 0 0 op", "bad ts 'x' (unsigned decimal ns)"),
    ("-5 0 1 E - 0 - 0 0 op", "bad ts '-5' (unsigned decimal ns)"),
    ("5 c 1 E - 0 - 0 0 op", "bad cpu 'c'"),
    ("5 0 -1 E - 0 - 0 0 op", "bad tid '-1'"),
    ("5 0 1 Q - 0 - 0 0 op", "unknown event letter Q"),
    ("5 0 1 A - 0x10 w 0 0 op", "lock class must not be - for A"),
    ("5 0 1 E pv 0 - 0 0 op", "lock class must be - for E, got 'pv'"),
    ("5 0 1 A pv 10 w 0 0 op", "bad lock '10' (hex with 0x)"),
    ("5 0 1 A pv 0 w 0 0 op", "lock address 0 for A"),
    ("5 0 1 P - 0x10 4k 0 0 op", "lock must be 0 for P, got '0x10'"),
    ("5 0 1 A pv 0x10 x 0 0 op", "mode must be w or r for A, got 'x'"),
    ("5 0 1 P - 0 w 0 0 op", "mode must be 4k or 2m for P, got 'w'"),
    ("5 0 1 X - 0 w 0 0 op", "mode must be - for X, got 'w'"),
    ("5 0 1 B pv 0x10 w -3 0 op", "bad ns '-3' (non-negative integer)"),
    ("5 0 1 E - 0 - 0 0xZZ op", "bad pa '0xZZ' (hex with 0x)"),
    ("5 0 1 E - 0 - 0 0 op extra", "expected 10 fields, got 11"),
])
def test_malformed_reasons(tmp_path, line, reason):
    path = write(tmp_path, "x.log", f"# pvtrace-log v1\n{line}\n")
    parsed = pvlog.parse(path, 0, "x.log")
    assert [(p.line, p.kind, p.reason) for p in parsed.problems] == [
        (2, ProblemKind.MALFORMED, reason)]
    assert parsed.records == 0


def test_blanks_and_tabs_between_fields(tmp_path):
    text = SPEC_LOG.replace(" 0 101 A", "\t0  101\t \tA")
    text = text.replace("11000 1 102 B", "  11000 1 102 B")
    text = text.replace("9000 0x201000 pmap_enter", "9000  0x201000 pmap_enter \t")
    _, out, meta = ingest(tmp_path, text)
    assert bundle_events(out) == SPEC_ROWS
    assert meta["problems"]["totals"] == {}


def test_blank_lines_keep_line_numbers(tmp_path):
    text = SPEC_LOG.replace("# ndomains=1\n", "# ndomains=1\n\n   \n")
    _, out, _ = ingest(tmp_path, text)
    assert [r[-1] for r in bundle_events(out)] == [6, 7, 8, 9, 10, 11]


def test_max_bad(tmp_path):
    bad = "".join(f"{i} 0 1 Q - 0 - 0 0 op\n" for i in range(12))
    with pytest.raises(PvtraceError) as exc:
        ingest(tmp_path, SPEC_LOG + bad)
    msg = exc.value.one_line()
    assert msg.startswith("12 malformed lines, more than --max-bad 10: ")
    assert "in0.log:10: unknown event letter Q" in msg and "raise --max-bad" in msg
    assert not (tmp_path / "bundle").exists()
    result, _, _ = ingest(tmp_path, SPEC_LOG + bad, max_bad=12)
    assert result.problem_totals == {"malformed": 12}


@pytest.mark.parametrize("header, why", [
    ("# pvtrace-log v2 extra", "unreadable event log header '# pvtrace-log v2 extra'"),
    ("# pvtrace-log  V2", "unreadable event log header"),
    ("#PVTRACE-LOG v1", "unreadable event log header"),
    ("# pvtrace-log v0", "event log version v0 does not exist"),
])
def test_a_header_this_reader_cannot_read_is_refused(tmp_path, header, why):
    """A header that names the format but not as v1 does (it may be a newer one) was taken
    for a comment, and the log read as v1 without a word."""
    with pytest.raises(PvtraceError, match=rf"in0.log:1: {why}"):
        ingest(tmp_path, SPEC_LOG.replace("# pvtrace-log v1", header))
    # a comment that only begins with the name is a comment
    result, _, _ = ingest(tmp_path, SPEC_LOG + "# pvtrace-logger was here\n")
    assert result.records == 6 and result.problems == []


def test_newer_log_version_refused(tmp_path):
    with pytest.raises(PvtraceError, match=r"in0.log:1: event log version v2 is newer"):
        ingest(tmp_path, SPEC_LOG.replace("v1", "v2"))
    huge = "9" * 30     # beyond any integer type: still a version, still newer
    with pytest.raises(PvtraceError, match=rf"version v{huge[:20]} is newer"):
        ingest(tmp_path, SPEC_LOG.replace("v1", f"v{huge}"))


def test_concatenated_captures(tmp_path):
    second = SPEC_LOG.replace("# ncpu=4", "# ncpu=8").replace("101", "301").replace("102", "302")
    result, _, meta = ingest(tmp_path, SPEC_LOG + second)
    assert result.records == 12
    assert [(p.line, p.kind) for p in result.problems] == [(10, ProblemKind.WARNING)]
    assert meta["inputs"][0]["captures"] == [{"ncpu": "4", "ndomains": "1"},
                                             {"ncpu": "8", "ndomains": "1"}]
    assert meta["capture"] == {"ncpu": "4", "ndomains": "1"}


def test_unknown_capture_keys_kept(tmp_path):
    text = SPEC_LOG.replace("# ndomains=1", "# ndomains=1\n# kernel=FreeBSD 14.1 #0\n# x.y=z")
    _, _, meta = ingest(tmp_path, text)
    assert meta["capture"] == {"ncpu": "4", "ndomains": "1", "kernel": "FreeBSD 14.1 #0",
                               "x.y": "z"}


@pytest.mark.parametrize("reader", ["arrow", "polars"])
def test_batches_give_the_same_result(tmp_path, monkeypatch, reader):
    from pvtrace.ingest import arrowcsv

    text = SPEC_LOG + "".join(f"{20000 + i} {i % 3} 103 E - 0 - 0 0 pmap_remove\n"
                              for i in range(300)) + "junk line\n\n17000 1 102 X - 0 - 0 0 op\n"
    path = write(tmp_path, "x.log", text)
    whole = pvlog.parse(path, 0, "x")
    monkeypatch.setattr(pvlog, "BATCH_ROWS", 50)
    monkeypatch.setattr(pvlog, "ONE_BATCH_BYTES", 0)  # stream in batches of 50 lines
    monkeypatch.setattr(arrowcsv, "PIECE_BYTES", 300)  # pyarrow's: in pieces of 300 bytes
    monkeypatch.setattr(arrowcsv, "MIN_PIECE_BYTES", 1)
    if reader == "polars":
        monkeypatch.setattr(arrowcsv, "batches", _no_arrow)
    batched = pvlog.parse(path, 0, "x")
    assert rows(batched.tables["events"].sort("line")) == rows(whole.tables["events"].sort("line"))
    assert batched.problems == whole.problems and batched.lines == whole.lines == 312
    assert [p.line for p in whole.problems] == [310]
    # With scratch space, each batch's records are spilled there and memory-mapped back.
    (tmp_path / "scratch").mkdir()
    spilled = pvlog.parse(path, 0, "x", scratch=tmp_path / "scratch")
    files = sorted((tmp_path / "scratch" / "input-0").glob("*.arrow"))
    # polars' batches of 50 lines; pyarrow's pieces gathered until a batch has 50 records
    prefix, batches = {"arrow": ("arrow-", 6), "polars": ("utf8-", 7)}[reader]
    assert len(files) == batches and all(f.name.startswith(prefix) for f in files)
    assert spilled.tables["events"].equals(batched.tables["events"])
    assert spilled.tables["events"].schema == batched.tables["events"].schema
    assert spilled.problems == whole.problems


def _no_arrow(*args, **kwargs):
    from pvtrace.ingest import arrowcsv

    raise arrowcsv.Unsure("test: polars' reader only")
    yield


def test_several_big_inputs_spill_apart(tmp_path, monkeypatch):
    """Two logs parsed in batches: each keeps its own spill files (the second must not
    overwrite the first's, which are still mapped), and the bundle equals the in-memory one."""
    logs = [write(tmp_path, f"{i}.log", "# pvtrace-log v1\n" + "".join(
        f"{1000 * j + i} {i} {100 + i} E - 0 - 0 0x{j:x}000 op{i}\n" for j in range(300)))
        for i in range(2)]
    run_ingest([str(p) for p in logs], str(tmp_path / "whole"))
    monkeypatch.setattr(pvlog, "BATCH_ROWS", 100)
    monkeypatch.setattr(pvlog, "ONE_BATCH_BYTES", 0)
    run_ingest([str(p) for p in logs], str(tmp_path / "spilled"))
    assert bundle_events(tmp_path / "spilled") == bundle_events(tmp_path / "whole")


def test_ingest_scratch_is_next_to_the_output_and_removed(tmp_path, monkeypatch):
    """A big log's records are spilled to a hidden directory beside the bundle (not /tmp),
    gone when the ingest ends, also when it fails; a full disk is one line, not a crash."""
    monkeypatch.setattr(pvlog, "ONE_BATCH_BYTES", 0)
    seen = []
    spilled = pvlog._spilled

    def spy(events, file):
        seen.append(file)
        return spilled(events, file)
    monkeypatch.setattr(pvlog, "_spilled", spy)
    path = write(tmp_path, "x.log", SPEC_LOG)
    (tmp_path / "out").mkdir()
    run_ingest([str(path)], str(tmp_path / "out" / "b"))
    assert seen and all(f.parents[2] == tmp_path / "out" for f in seen)
    assert seen[0].parents[1].name.startswith(".pvtrace-ingest-")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b"]

    def full(frame, file, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pl.DataFrame, "write_ipc", full)
    monkeypatch.setattr(pvlog, "_spilled", spilled)
    with pytest.raises(PvtraceError, match="cannot spill parsed records to .*No space left"):
        run_ingest([str(path)], str(tmp_path / "out" / "c"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b"]


# A record as values, and the text a capture could print for it with arbitrary blank runs.
records = st.tuples(
    st.integers(0, 2**64 - 1), st.integers(0, 1023), st.integers(0, 2**40),
    st.sampled_from("ARBSPEX"), st.sampled_from(["pv", "pvc", "pmap", "vm_page"]),
    st.integers(1, 2**64 - 1), st.sampled_from(["w", "r"]), st.sampled_from(["4k", "2m"]),
    st.integers(0, 2**63 - 1), st.integers(0, 2**52),
    st.sampled_from(["pmap_enter", "pmap_remove_all", "-", "pmap_promote_pde"]))


def _values(r):
    ts, cpu, tid, ev, cls, lock, lmode, pmode, ns, pa, op = r
    if ev in "ARBS":
        return (ts, cpu, tid, ev, cls, lock, lmode, ns, pa, op)
    return (ts, cpu, tid, ev, "-", 0, pmode if ev == "P" else "-", ns, pa, op)


def _text(v, blanks) -> str:
    fields = [str(v[0]), str(v[1]), str(v[2]), v[3], v[4], hex(v[5]) if v[5] else "0", v[6],
              str(v[7]), hex(v[8]) if v[8] else "0", v[9]]
    out = blanks[0][:-1] if blanks[0].strip(" ") == "" else ""   # optional leading spaces
    for i, f in enumerate(fields):
        out += f + (blanks[i + 1] if i < 9 else "")
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(records, st.lists(st.text(" \t", min_size=1, max_size=3),
                                            min_size=10, max_size=10)),
                min_size=1, max_size=20))
def test_property_records_round_trip(recs):
    values = [_values(r) for r, _ in recs]
    text = "# pvtrace-log v1\n" + "".join(_text(v, b) + "\n" for v, (_, b) in zip(values, recs))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "p.log")
        path.write_text(text)
        parsed = pvlog.parse(path, 0, "p.log")
    assert parsed.problems == []
    got = rows(parsed.tables["events"].with_columns(pl.lit(0).alias("x")).sort("line"))
    assert [g[:10] for g in got] == values
    assert [g[11] for g in got] == list(range(2, len(values) + 2))


def test_slow_path_for_everything_gives_the_same_result(tmp_path, monkeypatch):
    text = SPEC_LOG.replace(" 0 101 A", "\t0  101 A") + "dtrace: 3 drops on CPU 0\nbad\n"
    path = write(tmp_path, "x.log", text)
    fast = pvlog.parse(path, 0, "x")
    monkeypatch.setattr(pvlog, "BATCH_ROWS", 4)
    monkeypatch.setattr(pvlog, "_field_batches", lambda path, encoding: iter(()))  # readers disagree
    slow = pvlog.parse(path, 0, "x")
    assert rows(slow.tables["events"]) == rows(fast.tables["events"])
    assert [r[:10] for r in rows(fast.tables["events"])] == [r[:10] for r in SPEC_ROWS]
    assert slow.problems == fast.problems and slow.lines == fast.lines == 11
    assert slow.tables["diagnostics"].equals(fast.tables["diagnostics"])
    # pyarrow cannot type "1000\t0": polars' reader reads the file, and the user is told why
    fast_reader, slow_reader = fast.meta.pop("reader"), slow.meta.pop("reader")
    assert fast_reader["name"] == "polars" and slow_reader["name"] == "line by line"
    assert "1000\t0" in fast_reader["pyarrow_gave_up"]
    assert slow.meta == fast.meta


def test_tab_separated_log_streams_through_the_slow_path(tmp_path, monkeypatch):
    monkeypatch.setattr(pvlog, "BATCH_ROWS", 3)
    path = write(tmp_path, "t.log", SPEC_LOG.replace(" ", "\t").replace("#\t", "# "))
    parsed = pvlog.parse(path, 0, "t")
    assert [r[:10] for r in rows(parsed.tables["events"])] == [r[:10] for r in SPEC_ROWS]
    assert parsed.meta["capture"] == {"ncpu": "4", "ndomains": "1"}
    assert parsed.problems == []


def test_tab_inside_last_field_is_a_separator(tmp_path):
    text = SPEC_LOG.replace("9000 0x201000 pmap_enter", "9000 0x201000 pmap_enter\t")
    text = text.replace("16000 1 102 R pv 0xfffff80001000040 w 0 0x201000 pmap_enter",
                        "16000 1 102 R pv 0xfffff80001000040 w 0 0x201000 pmap_enter\tjunk")
    path = write(tmp_path, "x.log", text)
    parsed = pvlog.parse(path, 0, "x")
    assert [r[:10] for r in rows(parsed.tables["events"])] == [r[:10] for r in SPEC_ROWS[:5]]
    assert [(p.line, p.reason) for p in parsed.problems] == [(9, "expected 10 fields, got 11")]


def test_invalid_utf8_in_a_record_falls_back_to_replacing_it(tmp_path):
    # The fast reader insists on valid UTF-8 first; a file with a bad byte is read again with
    # it replaced, and the line is a record (op is free text) with U+FFFD in it.
    data = SPEC_LOG.encode().replace(b"16000 1 102 R pv 0xfffff80001000040 w 0 0x201000 "
                                     b"pmap_enter", b"16000 1 102 R pv 0xfffff80001000040 w 0 "
                                                    b"0x201000 pmap_\xffenter")
    assert b"\xff" in data
    result, out, _ = ingest(tmp_path, data)
    got = bundle_events(out)
    assert got[:-1] == SPEC_ROWS[:-1]
    assert got[-1][:9] == SPEC_ROWS[-1][:9] and got[-1][9] == "pmap_\ufffdenter"
    assert result.problem_totals == {}


def _ordered(events, rows=None, recycle=False):
    from pvtrace.ingest import ROW_GROUP_ROWS, _ordered_parts

    parts = _ordered_parts(events, rows, recycle)
    # A recycled part is valid until the next one is asked for: keep a copy of each.
    tables = [t.take(pa.array(range(t.num_rows))) if recycle else t for t in parts.parts]
    assert sum(t.num_rows for t in tables) == parts.rows == events.height
    # Parts of at most ``rows`` rows, and a short first one that gets the writer going.
    limit = rows or ROW_GROUP_ROWS
    assert all(t.num_rows <= limit for t in tables)
    if len(tables) > 1:
        assert tables[0].num_rows == max(limit // 8, 1)
    return pa.concat_tables(tables) if tables else parts.first


def test_ordered_arrow_matches_a_stable_polars_sort(tmp_path):
    from pvtrace.ingest import order

    text = "# pvtrace-log v1\n" + "".join(
        f"{(i * 7919) % 50} {i % 4} {100 + i % 5} {'APRX'[i % 4]} {'-' if i % 4 % 2 else 'pv'} "
        f"{'0' if i % 4 % 2 else '0x1040'} {'4k' if i % 4 == 1 else '-' if i % 4 == 3 else 'w'} "
        f"0 0x{i:x} op{i % 3}\n" for i in range(400))
    # A category used by no record (from a malformed line) must not reach the dictionary.
    events = pvlog.parse(write(tmp_path, "x.log", text + "1 0 1 Q - 0 - 0 0 zzz\n"), 0, "x")
    events = events.tables["events"]
    assert events.height == 400 and not events["ts"].is_sorted()
    expect = rows(events.sort("ts", maintain_order=True))
    chunked = pl.concat([events.slice(i, 37) for i in range(0, 400, 37)], rechunk=False)
    assert chunked.n_chunks() > 10
    for frame in (events, chunked):
        for part_rows in (None, 7, 400, 399):     # one part; many, ragged; exact; two
            for recycle in (False, True):
                table = _ordered(frame, part_rows, recycle)
                assert rows(pl.from_arrow(table)) == expect
                assert "zzz" not in table.column("op").chunk(0).dictionary.to_pylist()
    assert _ordered(events.head(0)).num_rows == 0
    # Rows in time order already: the numeric columns' parts are their chunks, sliced.
    in_order = events.sort("ts", maintain_order=True)
    in_order = pl.concat([in_order.slice(i, 37) for i in range(0, 400, 37)], rechunk=False)
    for part_rows in (None, 7, 64):
        table = _ordered(in_order, part_rows)
        assert rows(pl.from_arrow(table)) == expect
        assert "zzz" not in table.column("op").chunk(0).dictionary.to_pylist()
    parts, _ = order.ordered_parts(in_order, 64)
    first = next(parts)
    assert first.column("ts").num_chunks == 1
    assert (first.column("ts").chunk(0).buffers()[1].address
            == in_order.get_column("ts").get_chunks()[0].to_arrow().buffers()[1].address)


def test_recycled_parts_reuse_the_memory_of_the_part_before_last(monkeypatch):
    """With ``recycle`` the gather writes a part into the buffers of the part two before it
    (the one the writer finished when it asked for the previous part), where they fit."""
    from pvtrace.ingest import order

    reused = []
    take = order._Group.take

    def spy(self, chunk, local, buffer=None):
        arrays, used = take(self, chunk, local, buffer)
        reused.append(used is buffer)
        return arrays, used
    monkeypatch.setattr(order._Group, "take", spy)
    n = 100
    events = pl.DataFrame({"ts": list(range(n, 0, -1)), "cpu": [i % 3 for i in range(n)],
                           "op": [f"op{i % 4}" for i in range(n)]},
                          schema={"ts": pl.UInt64, "cpu": pl.Int32, "op": pl.Categorical})
    for recycle in (False, True):
        reused.clear()
        parts, _ = order.ordered_parts(events, 16, recycle)
        seen = [part.column("ts").to_pylist() for part in parts]
        assert sum(seen, []) == list(range(1, n + 1))
        assert len(seen) == 8 and len(reused) == 2 * 8   # two groups: ts; cpu and op codes
        # Parts of 2, 16, ..., 16, 2 rows: the third does not fit in the first's buffers;
        # every later part reuses those of the part two before it.
        assert reused == ([False] * 6 + [True] * 10 if recycle else [False] * 16)


def test_ordered_parts_sort_on_first_step_with_a_short_first_part(monkeypatch):
    """The sort runs when the writer asks for the first part (in its thread, while the
    ingest's main thread counts the summary), and the first part is short."""
    import numpy as np

    from pvtrace.ingest import order

    sorts, argsort = [], np.argsort
    monkeypatch.setattr(np, "argsort", lambda *a, **k: sorts.append(1) or argsort(*a, **k))
    events = pl.DataFrame({"ts": [3, 1, 2], "line": [1, 2, 3]},
                          schema={"ts": pl.UInt64, "line": pl.UInt64})
    parts, first = order.ordered_parts(events, 2)
    assert first.num_rows == 0 and sorts == []
    assert next(parts).column("ts").to_pylist() == [1]
    assert sorts == [1]
    assert [p.column("ts").to_pylist() for p in parts] == [[2, 3]]


def test_events_written_in_row_groups_read_back_whole(tmp_path, monkeypatch):
    """The bundle writer takes the time-ordered events part by part (one row group each):
    with tiny parts, the file holds many row groups and the same rows as with one."""
    import pyarrow.parquet as pq

    import pvtrace.ingest as ingest
    from pvtrace.ingest import stream

    # the sort's row groups, not the stream's (which writes the sample while parsing)
    monkeypatch.setattr(stream.EventStream, "add", lambda self, events: self.give_up("test"))
    sample = sorted((Path(__file__).resolve().parents[1] / "sample_traces").glob("*.log.gz"))[0]
    ingest.run_ingest([str(sample)], str(tmp_path / "one"))
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", 1000)
    result = ingest.run_ingest([str(sample)], str(tmp_path / "many"))
    one, many = (pq.ParquetFile(tmp_path / d / "events.parquet") for d in ("one", "many"))
    assert one.metadata.num_row_groups == 1 and many.metadata.num_row_groups > 10

    def decoded(f):  # dictionaries may list their values in another order: compare values
        return pl.from_arrow(f.read()).with_columns(pl.col(pl.Categorical).cast(pl.String))

    assert decoded(many).equals(decoded(one))
    assert result.tables["events"] == one.metadata.num_rows
    meta = json.loads((tmp_path / "many" / "metadata.json").read_text())
    assert meta["tables"]["events"]["rows"] == one.metadata.num_rows


# The fast path's compiled address decoder and the slow path's polars expression must agree
# on every string: valid hex of either case, leading zeros, overflow, signs, odd prefixes.
hex_tokens = st.one_of(
    st.integers(0, 2**64 - 1).map(hex),
    st.integers(0, 2**64 - 1).map(lambda v: hex(v).upper().replace("0X", "0x")),
    st.tuples(st.integers(0, 12), st.integers(0, 2**64 - 1))
    .map(lambda zv: "0x" + "0" * zv[0] + format(zv[1], "x")),
    st.integers(2**64, 2**80).map(hex),
    st.text("0x+-Xfg9 ", max_size=24),
    st.text(max_size=30),
    # 9 to 16 digits (decoded a word of 8 at a time) with one character replaced: the
    # neighbours of the digit and letter ranges, control bytes, non-ASCII.
    st.tuples(st.integers(2**32, 2**64 - 1), st.integers(0, 15),
              st.one_of(st.sampled_from("/:@G`g\x10\x19\x7f\x80\xe9\u20ac\x00"),
                        st.characters(exclude_categories=("Cs",))))
    .map(lambda t: "0x" + (h := format(t[0], "x"))[:t[1] % len(h)] + t[2]
         + h[t[1] % len(h) + 1:]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), hex_tokens), max_size=40))
def test_property_hex_decoder_matches_the_slow_path(tokens):
    col = pl.Series("a", tokens, dtype=pl.String)
    # Two chunks, one sliced: views at an offset, a validity bitmap or none.
    col = pl.concat([col.slice(0, len(tokens) // 2), col.slice(len(tokens) // 2)],
                    rechunk=False)
    expected = col.to_frame().select(pvlog.hex_expr(pl.col("a"))).to_series()
    assert hexfield.decode(col).to_list() == expected.to_list()
    # pyarrow's reader gives binary arrays (offsets into one buffer): decoded alike.
    binary = pa.array([t if t is None else t.encode() for t in tokens], pa.binary())
    for part in (binary, binary.slice(len(tokens) // 3)):
        assert (hexfield.decode_arrow(part).to_pylist()
                == expected.to_list()[len(tokens) - len(part):])


def test_hex_decoder_exact_values():
    tokens = ["0", "0x0", "0x1F", "0xfffff80001000040", "0x" + "0" * 20 + "1",
              "0xffffffffffffffff", "0x10000000000000000", "0x", "0X1", "00", "0x+1",
              "0x1 ", "", None]
    assert hexfield.decode(pl.Series("a", tokens)).to_list() == [
        0, 0, 31, 0xFFFFF80001000040, 1, 2**64 - 1, None, None, None, None, None, None,
        None, None]


def test_paths_with_glob_characters_are_file_names(tmp_path):
    # polars reads a path as a glob pattern unless told not to: "cap[1].log" would read
    # cap1.log, and "run[1]/cap.log" nothing at all (0 records, exit 0).
    (tmp_path / "cap1.log").write_text(SPEC_LOG + SPEC_LOG.split("\n", 4)[4])
    (tmp_path / "cap[1].log").write_text(SPEC_LOG)
    (tmp_path / "run[1]").mkdir()
    (tmp_path / "run[1]" / "cap.log.gz").write_bytes(gzip.compress(SPEC_LOG.encode()))
    for name in ("cap[1].log", "run[1]/cap.log.gz"):
        result = run_ingest([str(tmp_path / name)], str(tmp_path / "run[1]" / "b"), force=True)
        assert result.records == 6 and result.inputs[0].lines == 9
        assert bundle_events(tmp_path / "run[1]" / "b") == SPEC_ROWS


def test_a_named_pipe_is_read_like_standard_input(tmp_path):
    # `pvtrace ingest <(ssh box cat capture.log)`: a pipe has size 0 and was refused as
    # "empty input".
    import os
    import threading

    fifo = tmp_path / "capture.pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(SPEC_LOG))
    writer.start()
    result = run_ingest([str(fifo)], str(tmp_path / "b"))
    writer.join()
    assert result.records == 6 and bundle_events(tmp_path / "b") == SPEC_ROWS


def test_an_endless_binary_stream_is_refused_before_it_is_copied(tmp_path):
    with pytest.raises(PvtraceError, match="binary data"):
        run_ingest(["/dev/zero"], str(tmp_path / "b"))


def test_the_same_capture_twice_is_refused(tmp_path):
    # `pvtrace ingest capture.log capture*.log` gave every record twice, with no warning (the
    # two share their timestamp0), and every replayed number was wrong.
    a = write(tmp_path, "a.log", SPEC_LOG)
    b = write(tmp_path, "copy.log", SPEC_LOG)
    for inputs in ([a, a], [a, b]):
        with pytest.raises(PvtraceError, match="same content as .*a.log: its records would be "
                                               "counted twice"):
            run_ingest([str(p) for p in inputs], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_log_after_pages_of_dtrace_messages_is_recognised(tmp_path):
    # `cat capture.err capture.log`, or heavy early drops with 2>&1: format detection looked at
    # the first 64 KiB only, all of them dtrace lines, and refused the input.
    text = "dtrace: 12 drops on CPU 3\n" * 3000 + SPEC_LOG
    result, out, meta = ingest(tmp_path, text)
    assert result.records == 6 and result.drops_per_cpu == {3: 36000}


def test_what_dtrace_said_besides_drops_reaches_the_user(tmp_path):
    # The deadman aborting a capture early was only a row of the diagnostics table.
    text = SPEC_LOG + ("dtrace: processing aborted: Abort due to systemic unresponsiveness\n"
                       "dtrace: 2 speculative drops\n")
    result, out, meta = ingest(tmp_path, text)
    said = ["dtrace: processing aborted: Abort due to systemic unresponsiveness",
            "dtrace: 2 speculative drops"]
    assert result.dtrace_messages == said and meta["dtrace_messages"] == said
    from pvtrace.replay.api import replay_trace
    from pvtrace.report.table import notes
    report = replay_trace(str(out), ["stock"])
    assert report["trace"]["dtrace_messages"] == said
    assert f"during the capture, {said[0]}" in notes(report)


def test_how_many_dtrace_errors_there_were_reaches_the_replay(tmp_path):
    # The replay showed 3 of 30 probe errors, and its report 20, with no total.
    text = SPEC_LOG + "".join(
        f"dtrace: error on enabled probe ID {k} (ID 7: lockstat:::adaptive-block): invalid "
        "address (0x0) in action #3 at DIF offset 12\n" for k in range(30))
    result, out, meta = ingest(tmp_path, text)
    assert meta["dtrace_message_lines"] == 30 and len(meta["dtrace_messages"]) == 20
    from pvtrace.replay.api import replay_trace
    from pvtrace.report.table import notes
    report = replay_trace(str(out), ["stock"])
    assert report["trace"]["dtrace_message_lines"] == 30
    assert any(n.startswith("dtrace printed 30 lines besides drops") for n in notes(report))


def test_a_stray_control_byte_is_one_malformed_line_not_a_binary_file(tmp_path):
    # One NUL (a disk error) in the first 64 KiB refused the whole capture as binary, and a
    # control byte later in the file became part of a new operation name.
    lines = SPEC_LOG.splitlines(keepends=True)
    lines[4] = lines[4].replace("pmap_enter", "pmap_en\x00ter")
    lines[5] = lines[5].replace("pmap_enter", "pmap_\x1b[31menter")
    result, out, meta = ingest(tmp_path, "".join(lines))
    assert result.records == 4
    assert [(p.line, p.reason) for p in result.problems if p.kind is ProblemKind.MALFORMED] == [
        (5, "control byte (NUL, escape, ...) in the lock class or op field"),
        (6, "control byte (NUL, escape, ...) in the lock class or op field")]


def test_a_stray_unit_separator_byte_is_one_malformed_line(tmp_path):
    # The line reader splits on 0x1f (a byte no log holds): one such byte failed the whole
    # capture as binary, whatever --max-bad said.
    lines = SPEC_LOG.splitlines(keepends=True)
    lines[4] = lines[4].replace("pmap_enter", "pmap_\x1fenter")
    result, out, meta = ingest(tmp_path, "".join(lines))
    assert result.records == 5
    assert [(p.line, p.reason) for p in result.problems if p.kind is ProblemKind.MALFORMED] == [
        (5, "control byte (NUL, escape, ...) in the lock class or op field")]


def test_different_inputs_with_equal_size_and_ends_are_not_refused_as_copies(tmp_path):
    # The whole-file check compares size and 64 KiB at both ends first; equal ones are
    # compared whole, so two different captures are never refused as copies. (These two
    # share all but one record: the record check refuses them, naming the first repeat.)
    filler = "".join(f"{20000 + i} 2 103 E - 0 - 0 0 pmap_remove\n" for i in range(5000))
    other = filler.replace(" 103 ", " 105 ")
    a = SPEC_LOG + filler + "90000 3 104 E - 0 - 0 0 pmap_enter\n" + other
    b = SPEC_LOG + filler + "90000 3 104 E - 0 - 0 0 pmap_xnter\n" + other
    assert len(a) == len(b)
    with pytest.raises(PvtraceError, match=r"records repeat others field for field .*10,006 "
                                           r"among the first 20,014 in time order: "
                                           r"\S*in1.log:4 repeats \S*in0.log:4;"):
        ingest(tmp_path, a, b)


def _repeat_error(tmp_path, *texts, rows=None):
    """The message ingest refuses ``texts`` with (as in0.log, in1.log, ...), written in
    parts of ``rows`` rows when given."""
    import pvtrace.ingest as ing

    paths = [str(write(tmp_path, f"in{i}.log", t)) for i, t in enumerate(texts)]
    if rows is not None:
        original = ing._ordered_parts
        ing._ordered_parts = lambda events, **kw: original(events, rows=rows, **kw)
    try:
        with pytest.raises(PvtraceError) as err:
            run_ingest(paths, str(tmp_path / "out"))
    finally:
        if rows is not None:
            ing._ordered_parts = original
    assert not (tmp_path / "out").exists()
    return str(err.value)


def test_overlapping_captures_are_refused_with_the_repeated_lines(tmp_path):
    # Two windows of one capture saved with an overlap: the shared records counted twice,
    # silently (only whole copies were caught).
    lines = SPEC_LOG.splitlines(keepends=True)    # 3 header lines, then 6 records
    first, second = "".join(lines[:7]), "".join(lines[:3] + lines[5:])
    a, b = tmp_path / "in0.log", tmp_path / "in1.log"
    assert _repeat_error(tmp_path, first, second) == (
        "records repeat others field for field (time, CPU, thread and all), 2 among the "
        f"first 8 in time order: {b}:4 repeats {a}:6; {b}:5 repeats {a}:7; overlapping "
        "captures, or a log appended to itself? Give each record once; nothing was written")


def test_a_log_appended_to_itself_is_refused_in_any_part(tmp_path):
    # Parts of 1, 2 and 4 rows: a repeat lands in the same part as its original, in the
    # next one, or across a part boundary inside a run of equal times.
    twice = SPEC_LOG + "".join(SPEC_LOG.splitlines(keepends=True)[3:])
    # The error comes with the first part holding a repeat: the count is of the parts so far
    # (in parts of one row, the third holds the first repeat, of a row two parts back).
    for rows, (repeats, seen) in {1: (1, 3), 2: (1, 3), 4: (2, 5), None: (6, 12)}.items():
        msg = _repeat_error(tmp_path, twice, rows=rows)
        assert msg.startswith("records repeat others field for field (time, CPU, thread and "
                              f"all), {repeats} among the first {seen} in time order: "
                              f"{tmp_path / 'in0.log'}:10 repeats {tmp_path / 'in0.log'}:4")


def test_a_refused_write_leaves_no_thread_behind(tmp_path):
    # The time-ordering generator gathers the next part on a thread of its own. Abandoned by
    # the refusal, it lived on in a reference cycle until the garbage collector ran it, at any
    # point in any thread: once inside threading's bookkeeping as another thread started,
    # where joining its thread deadlocked (the fuzz tests hung). It is closed at once now.
    import gc
    import threading

    twice = SPEC_LOG + "".join(SPEC_LOG.splitlines(keepends=True)[3:])
    before = set(threading.enumerate())
    gc.disable()
    try:
        for rows in (1, None):
            _repeat_error(tmp_path, twice, rows=rows)
            assert set(threading.enumerate()) - before == set()
    finally:
        gc.enable()


_RECORD = st.tuples(st.integers(1000, 1003), st.integers(0, 1), st.integers(100, 101),
                    st.sampled_from(["E", "X"]), st.sampled_from(["0", "0x1000"]),
                    st.sampled_from(["pmap_enter", "pmap_remove"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(records=st.lists(_RECORD, min_size=1, max_size=12), rows=st.integers(1, 5))
def test_a_capture_is_refused_exactly_when_a_record_repeats(tmp_path, records, rows):
    # Few distinct times, CPUs and threads: many equal times, across part boundaries too.
    import pvtrace.ingest as ing

    text = "# pvtrace-log v1\n" + "".join(f"{ts} {cpu} {tid} {ev} - 0 - 0 {pa} {op}\n"
                                           for ts, cpu, tid, ev, pa, op in records)
    path = write(tmp_path, "in.log", text)
    original = ing._ordered_parts
    ing._ordered_parts = lambda events, **kw: original(events, rows=rows, **kw)
    try:
        result = run_ingest([str(path)], str(tmp_path / "out"), force=True)
        assert len(set(records)) == len(records)
        assert result.records == len(records)
    except PvtraceError as exc:
        assert len(set(records)) < len(records)
        assert str(exc).startswith("records repeat others field for field")
    finally:
        ing._ordered_parts = original


def test_equal_times_of_different_records_are_not_repeats(tmp_path):
    # Synthetic captures (and coarse clocks) give many records one timestamp.
    log = ("# pvtrace-log v1\n"
           "1000 0 101 E - 0 - 0 0x1000 pmap_enter\n"
           "1000 1 102 E - 0 - 0 0x2000 pmap_enter\n"
           "1000 0 101 A pv 0xfffff80001000040 w 0 0x1000 pmap_enter\n"
           "1000 0 101 R pv 0xfffff80001000040 w 0 0x1000 pmap_enter\n")
    result, out, meta = ingest(tmp_path, log)
    assert result.records == 4


def test_an_invalid_layout_line_is_reported_not_dropped(tmp_path):
    text = SPEC_LOG.replace("# ncpu=4\n", "# ncpu=4\n# layout=hash:0\n")
    result, out, meta = ingest(tmp_path, text)
    assert result.layout_source == "detected"
    assert any("'# layout=hash:0' line is not a layout" in w for w in result.warnings)


def _pv_log(locks_pas: list[tuple[int, int]], header: str = "") -> str:
    lines = ["# pvtrace-log v1", "# ncpu=2"] + ([header] if header else [])
    ts = 1000
    for lock, page in locks_pas:
        for ev in "AR":
            lines.append(f"{ts} 0 101 {ev} pv {lock:#x} w 0 {page:#x} pmap_enter")
            ts += 100
    return "\n".join(lines) + "\n"


HASH_BASE = 0xFFFFFFFF81A00000
# three pv locks 32 bytes apart, pages in one 2 MiB frame: a hash table, size unknown
HASH_GUESS = [(HASH_BASE + 32 * k, 0x200000 + 0x1000 * k) for k in range(3)]


def test_a_layout_guessed_from_lock_spacing_is_marked_assumed(tmp_path):
    result, out, meta = ingest(tmp_path, _pv_log(HASH_GUESS))
    assert (result.layout_effective, result.layout_source) == ("hash:256", "detected")
    assert meta["layout"]["assumed"] is True and result.layout_assumed
    from pvtrace.replay.api import replay_trace
    from pvtrace.report.table import notes

    report = replay_trace(str(out), ["stock"])
    assert report["trace"]["layout"] == "hash:256" and report["trace"]["layout_assumed"]
    assert any("hash:256 is a guess from the spacing" in n for n in notes(report))


@pytest.mark.parametrize("layout_meta, known, captured", [
    ({"effective": "hash:256", "source": "detected", "assumed": True}, False, "hash:256"),
    ({"effective": "hash:256", "source": "detected", "assumed": False}, True, "hash:256"),
    # a bundle from before the "assumed" key: the evidence of a spacing guess says it
    ({"effective": "hash:256", "source": "detected",
      "evidence": "no pages recorded; 3 pv locks 32 bytes apart (fits 256 locks; assumed)"},
     False, "hash:256"),
    ({"effective": "hash:256", "source": "detected", "evidence": "lock - 32*... constant"},
     True, "hash:256"),
    ({"effective": "unknown"}, False, "superpage"),
    ("hash:1024", True, "hash:1024")])
def test_which_bundle_layouts_the_replay_calls_known(layout_meta, known, captured):
    from pvtrace.replay.api import LoadedTrace

    trace = LoadedTrace("b", None, 0, {"layout": layout_meta})
    assert (trace.layout_known, trace.captured_layout) == (known, captured)


def test_the_captures_layout_line_beats_a_guess(tmp_path):
    # synth --layout hash:4 was ingested as the guess hash:256: every stock number wrong
    result, out, meta = ingest(tmp_path, _pv_log(HASH_GUESS, "# layout=hash:4"))
    assert (result.layout_effective, result.layout_source) == ("hash:4", "capture")
    assert meta["layout"]["assumed"] is False and result.warnings == []


def test_a_layout_line_against_certain_detection_is_a_warning(tmp_path):
    pv_table = 0xFFFFFE0001000000
    frames = [(pv_table + 64 * f, f << 21) for f in (1, 2, 5)]
    result, out, meta = ingest(tmp_path, _pv_log(frames, "# layout=hash:256"))
    assert (result.layout_effective, result.layout_source) == ("superpage", "detected")
    assert result.warnings == ["the capture's '# layout=hash:256' line disagrees with its "
                               "lock addresses (superpage): the addresses are used (--layout "
                               "decides)"]


def test_a_garbled_drop_line_is_shown_not_counted_as_zero(tmp_path):
    # A count or CPU too big for its column came out null: "0 records dropped on CPU 1", or
    # the drops vanished from the report.
    text = SPEC_LOG + ("dtrace: 99999999999999999999 drops on CPU 1\n"
                       "dtrace: 5 drops on CPU 99999999999\n"
                       "dtrace: 7 drops on CPU 2\n")
    result, out, meta = ingest(tmp_path, text)
    assert result.drops_per_cpu == {2: 7}
    assert result.dtrace_messages == ["dtrace: 99999999999999999999 drops on CPU 1",
                                      "dtrace: 5 drops on CPU 99999999999"]


@pytest.mark.parametrize("span", [10, 1 << 40], ids=["narrow: marked", "wide: polars"])
def test_distinct_values_and_code_counts_over_chunks(span):
    """The ingest summary's threads and CPUs: distinct values over a chunked column, marked
    in a table over a narrow range or left to polars over a wide one, alike; and records per
    categorical code."""
    from pvtrace.ingest import order

    values = [100_000 + span, 100_000, 100_003, 100_000, 100_000 + span, 100_001]
    col = pl.concat([pl.Series("tid", values[:4], pl.Int64), pl.Series("tid", values[4:],
                                                                      pl.Int64)], rechunk=False)
    assert col.n_chunks() == 2
    got = order.distinct_values(col)
    assert got.tolist() == sorted(set(values)) and got.dtype == "int64"
    assert order.distinct_values(pl.Series("cpu", [3, 1, 3], pl.Int32)).tolist() == [1, 3]
    assert order.distinct_values(pl.Series("cpu", [], pl.Int32)).tolist() == []
    ev = pl.concat([pl.Series(["A", "R", "A"], dtype=pl.Categorical),
                    pl.Series(["X", "A"], dtype=pl.Categorical)], rechunk=False)
    categories = ev.dtype.categories.to_series()
    counts = order.code_counts(order.category_codes(ev), categories.len())
    assert {categories[i]: n for i, n in enumerate(counts) if n} == {"A": 3, "R": 1, "X": 1}
    # counted in four lanes: chunks longer than four, of any length
    ev = pl.concat([pl.Series(list("AARRAXAARAX"), dtype=pl.Categorical),
                    pl.Series(list("RRRRRRRR"), dtype=pl.Categorical)], rechunk=False)
    categories = ev.dtype.categories.to_series()
    counts = order.code_counts(order.category_codes(ev), categories.len())
    assert {categories[i]: n for i, n in enumerate(counts) if n} == {"A": 6, "R": 11, "X": 2}
