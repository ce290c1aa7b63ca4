"""The event log's first reader (pyarrow, in pieces): it must give exactly what polars'
reader gives, line numbers included, or hand the file over to it."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvtrace.ingest import arrowcsv, pvlog
from spec_example import SPEC_LOG

COLUMNS = ["ts", "cpu", "tid", "ev", "cls", "lock", "mode", "ns", "pa", "op", "src", "line"]


def rows(df: pl.DataFrame) -> list[tuple]:
    return df.select(pl.col(c).cast(pl.String) if df.schema[c] == pl.Categorical
                     else pl.col(c) for c in COLUMNS).rows()


@contextmanager
def small_pieces(size: int = 120):
    """Pieces of ``size`` bytes, so that a tiny log is read in several."""
    with mock.patch.object(arrowcsv, "PIECE_BYTES", size), \
            mock.patch.object(arrowcsv, "MIN_PIECE_BYTES", 1):
        yield


def _unsure(*args, **kwargs):
    raise arrowcsv.Unsure("test: polars' reader only")
    yield


def parse_both(path: Path):
    """(parse with pyarrow's reader first, with polars' reader only, which reader read
    the first parse: "pyarrow" or "polars", as metadata.json says)."""
    first = pvlog.parse(path, 0, "x.log")
    with mock.patch.object(arrowcsv, "batches", _unsure):
        polars = pvlog.parse(path, 0, "x.log")
    assert polars.meta["reader"] == {"name": "polars",
                                     "pyarrow_gave_up": "test: polars' reader only"}
    return first, polars, first.meta["reader"]["name"]


def assert_same(a, b):
    assert rows(a.tables["events"]) == rows(b.tables["events"])
    assert a.problems == b.problems
    assert a.lines == b.lines and a.records == b.records
    assert {**a.meta, "reader": None} == {**b.meta, "reader": None}
    assert a.tables["diagnostics"].equals(b.tables["diagnostics"])


def test_a_clean_log_is_read_by_pyarrow_in_pieces_with_its_line_numbers(tmp_path):
    """Headers, a dtrace line in the middle and a line of 3 fields are skipped by pyarrow
    and numbered; the records between them keep their lines across piece boundaries."""
    records = [f"{1000 + i} {i % 4} {100 + i % 3} E - 0 - 0 0x{i:x}000 pmap_enter"
               for i in range(40)]
    text = (SPEC_LOG + "\n".join(records[:15]) + "\ndtrace: 12 drops on CPU 2\n"
            + "\n".join(records[15:30]) + "\n1 2 3\n" + "\n".join(records[30:]) + "\n")
    path = tmp_path / "x.log"
    path.write_text(text)
    with small_pieces():
        assert len(arrowcsv._spans_of(path)) > 10
        first, polars, reader = parse_both(path)
    assert reader == "pyarrow"
    assert_same(first, polars)
    lines = first.tables["events"]["line"].to_list()
    assert lines == [*range(4, 10), *range(10, 25), *range(26, 41), *range(42, 52)]
    assert [(p.line, p.reason) for p in first.problems] == [(41, "expected 10 fields, got 3")]
    assert first.tables["diagnostics"]["line"].to_list() == [25]


def test_the_blank_lines_dtrace_prints_keep_the_line_numbers(tmp_path):
    """dtrace(1) prints a newline when tracing stops and, on an interrupt, another one
    before the records it drains then: pyarrow reads such a log, blank lines numbered."""
    lines = SPEC_LOG.splitlines()
    text = "\n".join(lines[:7]) + "\n\n" + "\n".join(lines[7:]) + "\n\n"
    path = tmp_path / "x.log"
    path.write_text("\n" + text)
    with small_pieces(60):
        first, polars, reader = parse_both(path)
    assert reader == "pyarrow"
    assert_same(first, polars)
    assert first.tables["events"]["line"].to_list() == [5, 6, 7, 8, 10, 11]
    assert first.lines == 12 and first.problems == []


def _log_with_skipped_lines(tmp_path: Path) -> Path:
    """The SPEC example with a dtrace line, a damaged record and dtrace's blank last line."""
    lines = SPEC_LOG.splitlines()
    path = tmp_path / "x.log"
    path.write_text("\n".join([*lines[:5], "dtrace: 3 drops on CPU 1", "1 2 3", *lines[5:]])
                    + "\n\n")
    return path


def test_the_slow_path_gets_skipped_lines_from_the_reader_not_the_file(tmp_path, monkeypatch):
    """pyarrow's handler hands over each skipped line's text: with dtrace's blank last line,
    reading them from the file would mean reading the whole file a second time."""
    path = _log_with_skipped_lines(tmp_path)
    expected = pvlog.parse(path, 0, "x.log")

    def no_second_read(*args):
        raise AssertionError("the file was read again for the refused lines")
    monkeypatch.setattr(pvlog, "_lines", no_second_read)
    with small_pieces(60):
        first = pvlog.parse(path, 0, "x.log")
    assert first.meta["reader"]["name"] == "pyarrow"
    assert_same(first, expected)
    assert [(p.line, p.reason) for p in first.problems] == [(7, "expected 10 fields, got 3")]
    assert first.tables["diagnostics"]["text"].to_list() == ["dtrace: 3 drops on CPU 1"]


def test_a_piece_with_more_skipped_lines_than_it_keeps_reads_them_from_the_file(
        tmp_path, monkeypatch):
    """Past MAX_TEXTS skipped lines a piece keeps none of their text (a log of mostly
    junk would pile them up): the slow path reads those lines from the file, alike."""
    path = _log_with_skipped_lines(tmp_path)
    expected = pvlog.parse(path, 0, "x.log")
    monkeypatch.setattr(arrowcsv, "MAX_TEXTS", 1)
    reads = []
    lines = pvlog._lines
    monkeypatch.setattr(pvlog, "_lines", lambda path: reads.append(path) or lines(path))
    first = pvlog.parse(path, 0, "x.log")
    assert first.meta["reader"]["name"] == "pyarrow" and len(reads) == 1
    assert_same(first, expected)
    assert len(first.problems) == 1 and first.tables["diagnostics"].height == 1


@pytest.mark.parametrize("damage", [
    pytest.param(lambda t: t.replace("\n", "\r\n"), id="crlf"),
    pytest.param(lambda t: t.replace("11000 1 102 B", "+11000 1 102 B"), id="plus-sign"),
    pytest.param(lambda t: t.replace("16000 1", "99999999999999999999 1"), id="65-bit"),
    pytest.param(lambda t: t + "\xff\xfe junk\n", id="invalid-utf8-in-a-skipped-line"),
    pytest.param(lambda t: t.replace(" pv ", " p\xffv ", 1), id="invalid-utf8-in-a-token"),
])
def test_what_pyarrow_cannot_vouch_for_is_read_by_polars(tmp_path, capfd, damage):
    """A ``\\r``, a field pyarrow cannot type, invalid UTF-8: polars reads the file, and
    the user sees only its result (no "Exception ignored" from pyarrow's handler)."""
    path = tmp_path / "x.log"
    path.write_bytes(damage(SPEC_LOG).encode("latin-1"))    # "\xff": one byte, not UTF-8
    first, polars, reader = parse_both(path)
    assert reader == "polars" and first.meta["reader"]["pyarrow_gave_up"]
    assert_same(first, polars)
    assert capfd.readouterr().err == ""


def test_an_empty_field_is_not_a_token(tmp_path):
    """pyarrow reads two blanks as an empty field between them: not a lock class."""
    path = tmp_path / "x.log"
    path.write_text(SPEC_LOG.replace(" A pv ", " A  "))
    first, polars, reader = parse_both(path)
    assert reader == "pyarrow"
    assert_same(first, polars)
    assert [(p.line, p.reason) for p in first.problems] == [(5, "expected 10 fields, got 9"),
                                                             (8, "expected 10 fields, got 9")]


# Lines of a damaged log: records, and what captures and damage put between them.
_RECORD = st.builds(
    lambda ts, cpu, tid, ev, lock, ns, pa, op: (
        f"{ts} {cpu} {tid} {ev} {'pv' if ev in 'ARBS' else '-'} "
        f"{hex(lock) if ev in 'ARBS' else '0'} {'w' if ev in 'ARBS' else '-'} {ns} "
        f"{hex(pa) if pa else '0'} {op}"),
    st.integers(0, 2**64 - 1), st.integers(0, 64), st.integers(0, 2**40),
    st.sampled_from("AREX"), st.integers(1, 2**64 - 1), st.integers(0, 10**6),
    st.integers(0, 2**52),
    st.sampled_from(["pmap_enter", "-", "NULL", "N/A", "pmap_enter_quick_locked_\u00e9"]))
_OTHER = st.sampled_from([
    "# k=v", "# pvtrace-log v1", "dtrace: 5 drops on CPU 1", "dtrace: 2 dynamic variable drops",
    "1 2 3", "junk", "1 0 5 A pv 0x10 w 0 0x1000 op extra", "1 0 5 A pv 0xzz w 0 0x1000 op",
    "1 0 5 A - 0x10 w 0 0x1000 op", "1 0 5 Q pv 0x10 w 0 0x1000 op", "1 -1 5 E - 0 - 0 0 op",
    "1 0 5 E - 0 - -3 0 op", "1 0 5 A pv 0 w 0 0x1000 op", "1 0 5 P - 0 9k 0 0x1000 op",
    "1 0 5 E - 0 - 0 0 op\x1b[1m", "1 0 5 E - 0 - 0 0 op\x00", "1 0 5 E - 0 - 0 0 op ",
    " 1 0 5 E - 0 - 0 0 op", "1  0 5 E - 0 - 0 0 op", "1 0 5 E - 0 - 0 0", "", "",
    # the line reader's separator byte, in a record's token and in a skipped line
    "1 0 5 E - 0 - 0 0 op\x1fx", "# k=\x1fv", "junk\x1f \x1f",
    # 10 fields pyarrow cannot type: it gives the whole file to polars' reader
    "x 0 5 E - 0 - 0 0 op", "+1 0 5 E - 0 - 0 0 op", "1 0 5 E - 0 - 1.5 0 op",
    "1 99999999999 5 E - 0 - 0 0 op",
])


# 80 fixed examples in make test; PVTRACE_FUZZ_EXAMPLES=N draws that many random ones.
@settings(max_examples=int(os.environ.get("PVTRACE_FUZZ_EXAMPLES", 80)),
          derandomize="PVTRACE_FUZZ_EXAMPLES" not in os.environ, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(_RECORD, _RECORD, _OTHER), min_size=1, max_size=40),
       end=st.sampled_from(["\n", "", "\n\n", "\n\n\n"]), piece=st.integers(40, 400),
       lead=st.sampled_from(["", "\n"]), texts=st.sampled_from([arrowcsv.MAX_TEXTS, 1, 0]))
def test_property_pyarrow_and_polars_read_a_damaged_log_alike(lines, end, piece, lead, texts):
    """... also when pieces keep the text of few or none of the lines they skip (the slow
    path then reads those from the file, the others from the reader)."""
    text = lead + "# pvtrace-log v1\n" + "\n".join(lines) + end
    with tempfile.TemporaryDirectory() as tmp, small_pieces(piece), \
            mock.patch.object(arrowcsv, "MAX_TEXTS", texts):
        path = Path(tmp, "x.log")
        path.write_text(text)
        first, polars, _ = parse_both(path)
    assert_same(first, polars)


def test_a_file_that_cannot_be_mapped_is_read_by_polars(tmp_path, monkeypatch):
    """Some file systems cannot map files into memory: polars' reader reads them."""
    path = tmp_path / "x.log"
    path.write_text(SPEC_LOG)

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")
    monkeypatch.setattr(arrowcsv.mmap, "mmap", refuse)
    first, polars, reader = parse_both(path)
    assert first.meta["reader"] == {"name": "polars",
                                    "pyarrow_gave_up": "cannot map the file: [Errno 19] No "
                                                       "such device"}
    assert_same(first, polars)
    assert len(first.tables["events"]) == 6


def test_metadata_names_the_reader_of_each_input_and_why_pyarrow_gave_up(tmp_path):
    import json

    from pvtrace.ingest import run_ingest

    (tmp_path / "a.log").write_text(SPEC_LOG)
    other = SPEC_LOG.replace(" 101 ", " 201 ").replace(" 102 ", " 202 ")  # other threads
    (tmp_path / "b.log").write_bytes(other.replace("\n", "\r\n").encode())
    run_ingest([str(tmp_path / "a.log"), str(tmp_path / "b.log")], str(tmp_path / "out"))
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert [i["reader"] for i in meta["inputs"]] == [
        {"name": "pyarrow"}, {"name": "polars", "pyarrow_gave_up": "carriage returns"}]


def test_a_failed_spill_leaves_no_reader_thread_behind(tmp_path, monkeypatch):
    """The reader's pieces are read on a thread pool held by a generator: abandoned when a
    batch cannot be spilled (a full disk), it is closed at once, not left to the garbage
    collector (which may run it in any thread, where joining threads can deadlock)."""
    import gc
    import threading

    from pvtrace.errors import PvtraceError

    path = tmp_path / "x.log"
    path.write_text(SPEC_LOG + "".join(f"{20000 + i} 0 103 E - 0 - 0 0 op\n"
                                       for i in range(200)))
    monkeypatch.setattr(pvlog, "ONE_BATCH_BYTES", 0)
    monkeypatch.setattr(pvlog, "BATCH_ROWS", 20)

    def full(frame, file, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pl.DataFrame, "write_ipc", full)
    (tmp_path / "scratch").mkdir()
    before = set(threading.enumerate())
    gc.disable()
    try:
        with small_pieces(200), pytest.raises(PvtraceError, match="No space left"):
            pvlog.parse(path, 0, "x.log", scratch=tmp_path / "scratch")
        assert set(threading.enumerate()) - before == set()
    finally:
        gc.enable()
