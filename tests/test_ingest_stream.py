"""Event logs already in time order: their events are written while they are parsed
(pvtrace.ingest.stream), into the same bundle as the sort would write; anything else is
sorted as before."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvtrace import bundle
from pvtrace.errors import PvtraceError
from pvtrace.ingest import arrowcsv, run_ingest, stream

HEADER = "# pvtrace-log v1\n# ncpu=4\n# ndomains=1\n"
LOCK = "0xfffff80001000040"


def record(ts: int, cpu: int, tid: int, ev: str = "A", ns: int = 0) -> str:
    cls, lock, mode = ("pv", LOCK, "w") if ev in "ARBS" else ("-", "0", "-")
    return f"{ts} {cpu} {tid} {ev} {cls} {lock} {mode} {ns} 0x{0x200000 + tid * 4096:x} op{tid}\n"


def temporal(n: int = 120) -> str:
    """``n`` records in time order, A and R in turn on three threads and CPUs."""
    return "".join(record(1000 + 10 * i, i % 3, 100 + i % 3, "AR"[i // 3 % 2])
                   for i in range(n))


@pytest.fixture
def pieces(monkeypatch):
    """pyarrow's reader reads the log in pieces of about 400 bytes (several row groups)."""
    monkeypatch.setattr(arrowcsv, "PIECE_BYTES", 400)
    monkeypatch.setattr(arrowcsv, "MIN_PIECE_BYTES", 1)


def ingest(tmp_path: Path, text: str, name: str = "bundle", **kw) -> tuple[Path, dict]:
    log = tmp_path / f"{name}.log"
    log.write_text(text)
    out = tmp_path / name
    run_ingest([str(log)], str(out), **kw)
    return out, json.loads((out / "metadata.json").read_text())


def sorted_path(tmp_path: Path, text: str, monkeypatch) -> Path:
    """The bundle the sort writes for ``text`` (the stream gives up at once)."""
    with monkeypatch.context() as m:
        m.setattr(stream.EventStream, "add", lambda self, events: self.give_up("test"))
        out, meta = ingest(tmp_path, text, "sorted")
    assert meta["inputs"][0]["reader"]["events_written"] == "after sorting: test"
    return out


def events(out: Path) -> pl.DataFrame:
    df = pl.read_parquet(out / "events.parquet")
    return df.with_columns(pl.col(pl.Categorical).cast(pl.String))


def written(meta: dict) -> str:
    return meta["inputs"][0]["reader"]["events_written"]


def test_a_log_in_time_order_is_written_while_parsed(tmp_path, pieces, monkeypatch):
    text = HEADER + temporal()
    out, meta = ingest(tmp_path, text)
    assert written(meta) == "while parsing"
    assert meta["tables"]["events"]["rows"] == 120
    file = pq.ParquetFile(out / "events.parquet")
    assert file.metadata.num_row_groups > 3             # a row group per piece
    reference = sorted_path(tmp_path, text, monkeypatch)
    assert events(out).equals(events(reference))        # values, types, order, lines
    assert file.schema_arrow.equals(pq.read_schema(reference / "events.parquet"),
                                    check_metadata=True)
    assert events(out)["line"].to_list() == list(range(4, 124))
    # nothing left behind: the scratch directory (and the stream's file) is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "bundle.log", "sorted",
                                                          "sorted.log"]
    assert not [t for t in threading.enumerate() if t.name.startswith("pvtrace-stream")]


def by_buffers(n: int = 240, ncpu: int = 3, drains: int = 6, idle: tuple[int, ...] = ()
               ) -> str:
    """``n`` records as dtrace prints them without ``-x temporal``: at every drain, each
    CPU's buffer in turn, CPU 0 first, each in time order. CPU c's buffer is taken a little
    after CPU c-1's, so it runs a little later: each drain's records of a CPU may be later
    than the next drain's of the CPUs before it. CPUs in ``idle`` record nothing."""
    cpus = [c for c in range(ncpu) if c not in idle]
    span = 10 * n
    drained = []
    for i in range(n):
        ts, cpu = 1000 + 10 * i, cpus[i % len(cpus)]
        drain = next(k for k in range(drains)
                     if ts < 1000 + span * (k + 1) // drains + 7 * cpu or k == drains - 1)
        drained.append((drain, cpu, ts, record(ts, cpu, 100 + cpu, "AR"[i // 3 % 2])))
    return "".join(line for *_, line in sorted(drained))


WAITED = ("after sorting: more than 100 records wait for the watermark (a CPU that records "
          "nothing, or buffers printed only at the end)")


def test_a_log_by_cpu_buffers_is_written_while_parsed(tmp_path, pieces, monkeypatch):
    text = HEADER.replace("ncpu=4", "ncpu=3") + by_buffers()
    out, meta = ingest(tmp_path, text)
    assert written(meta) == "while parsing"
    assert pq.ParquetFile(out / "events.parquet").metadata.num_row_groups > 3
    ts = events(out)["ts"].to_list()
    assert ts == sorted(ts) and len(ts) == 240
    assert events(out).equals(events(sorted_path(tmp_path, text, monkeypatch)))


def test_without_ncpu_a_log_by_cpu_buffers_is_sorted(tmp_path, pieces, monkeypatch):
    """Without the CPUs the header states, a CPU not seen yet could print records earlier
    than those written."""
    text = HEADER.replace("# ncpu=4\n", "") + by_buffers()
    out, meta = ingest(tmp_path, text)
    assert written(meta) == ("after sorting: the log is not in time order, and its header "
                             "states no ncpu to follow its CPUs' buffers")
    assert events(out).equals(events(sorted_path(tmp_path, text, monkeypatch)))


def test_a_cpu_that_prints_nothing_holds_the_records_back(tmp_path, pieces, monkeypatch):
    """The header names 4 CPUs and CPU 3 records nothing: the watermark never moves, and
    past HELD_ROWS records the stream gives up; below it, they are written at the end."""
    text = HEADER + by_buffers(idle=(3,))
    out, meta = ingest(tmp_path, text, "few")
    assert written(meta) == "while parsing"
    monkeypatch.setattr(stream, "HELD_ROWS", 100)
    out, meta = ingest(tmp_path, text)
    assert written(meta) == WAITED
    assert events(out).equals(events(sorted_path(tmp_path, text, monkeypatch)))


def test_a_log_of_buffers_drained_once_is_sorted(tmp_path, pieces, monkeypatch):
    # as dtrace prints buffers it drains only when tracing stops (-x bufpolicy=ring): CPU
    # 0's records, then CPU 1's from the start; the watermark moves only at the last CPU
    monkeypatch.setattr(stream, "HELD_ROWS", 100)
    text = HEADER.replace("ncpu=4", "ncpu=3") + by_buffers(drains=1)
    out, meta = ingest(tmp_path, text)
    assert written(meta) == WAITED
    ts = events(out)["ts"].to_list()
    assert ts == sorted(ts) and len(ts) == 240
    assert events(out).equals(events(sorted_path(tmp_path, text, monkeypatch)))


def test_a_piece_that_goes_back_in_time_is_sorted(tmp_path, pieces):
    # every piece in order, but the records after the first 60 start over earlier
    text = HEADER + temporal(60) + "".join(record(1005 + 10 * i, 3, 200) for i in range(60))
    out, meta = ingest(tmp_path, text)
    assert written(meta) == "after sorting: the log is in neither time nor CPU-buffer order"
    ts = events(out)["ts"].to_list()
    assert ts == sorted(ts) and len(ts) == 120
    # ties and order as the stable sort gives them: by line within equal times
    assert events(out).filter(pl.col("tid") == 200)["line"].to_list() == list(range(64, 124))


def test_a_record_only_the_line_reader_reads_makes_it_sort(tmp_path, pieces, monkeypatch):
    lines = temporal().splitlines(keepends=True)
    lines[50] = lines[50].replace(" ", "  ", 1)         # two blanks: pyarrow refuses it
    text = HEADER + "".join(lines)
    out, meta = ingest(tmp_path, text)
    assert written(meta) == "after sorting: records read from lines the first reader refused"
    assert events(out).height == 120 and 54 in events(out)["line"].to_list()
    assert events(out).equals(events(sorted_path(tmp_path, text, monkeypatch)))


def test_a_log_pyarrow_gives_up_on_is_sorted(tmp_path, pieces):
    out, meta = ingest(tmp_path, (HEADER + temporal()).replace("\n", "\r\n"))
    assert meta["inputs"][0]["reader"] == {
        "name": "polars", "pyarrow_gave_up": "carriage returns",
        "events_written": "after sorting: pyarrow's reader gave up on the log"}
    assert events(out).height == 120


def test_a_failed_write_falls_back_to_the_sort(tmp_path, pieces, monkeypatch):
    opened = bundle.open_part_writer

    def broken(path, name, part):      # the stream's writer fails, the bundle's does not
        if threading.current_thread().name.startswith("pvtrace-stream"):
            raise OSError(28, "No space left on device")
        return opened(path, name, part)
    monkeypatch.setattr(bundle, "open_part_writer", broken)
    out, meta = ingest(tmp_path, HEADER + temporal())
    assert written(meta) == "after sorting: OSError: [Errno 28] No space left on device"
    assert events(out).height == 120 and events(out)["line"].to_list() == list(range(4, 124))


def test_repeated_records_are_refused_as_by_the_sort(tmp_path, pieces, monkeypatch):
    lines = temporal().splitlines(keepends=True)
    text = HEADER + "".join(lines[:80]) + lines[79] + "".join(lines[80:])   # line 84 = 83
    with pytest.raises(PvtraceError) as streamed:
        ingest(tmp_path, text)
    monkeypatch.setattr(stream.EventStream, "add", lambda self, events: self.give_up("test"))
    with pytest.raises(PvtraceError) as by_sort:
        ingest(tmp_path, text, "sorted")
    assert "84 repeats" in streamed.value.message
    assert streamed.value.message == by_sort.value.message.replace("sorted.log", "bundle.log")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.log", "sorted.log"]


def test_too_many_malformed_lines_fail_after_the_stream(tmp_path, pieces):
    text = HEADER + temporal(60) + "junk\n" * 3 + temporal(60).replace("op1", "opx")
    with pytest.raises(PvtraceError, match="3 malformed lines, more than --max-bad 2"):
        ingest(tmp_path, text, max_bad=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.log"]
    assert not [t for t in threading.enumerate() if t.name.startswith("pvtrace-stream")]


def test_several_inputs_are_merged_by_the_sort(tmp_path):
    (tmp_path / "a.log").write_text(HEADER + temporal(30))
    (tmp_path / "b.log").write_text(HEADER + "".join(record(1003 + 10 * i, 3, 300)
                                                     for i in range(30)))
    run_ingest([str(tmp_path / "a.log"), str(tmp_path / "b.log")], str(tmp_path / "out"))
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert [i["reader"] for i in meta["inputs"]] == [{"name": "pyarrow"}] * 2
    ts = events(tmp_path / "out")["ts"].to_list()
    assert ts == sorted(ts) and len(ts) == 60


def test_the_parser_waits_for_a_slow_writer(tmp_path):
    """At most stream.QUEUED pieces wait for the writer: a slow disk holds the parser back
    instead of piling a big log's records up in memory."""
    from pvtrace.ingest import pvlog

    log = tmp_path / "x.log"
    log.write_text(HEADER + temporal(40))
    records = pvlog.parse(log, 0, "x").tables["events"].drop("src")
    gate = threading.Event()

    class Slow(stream.EventStream):
        def _write(self, events):
            gate.wait(10)
            super()._write(events)

    with Slow(tmp_path / "events.parquet", 0) as slow:
        adding = threading.Thread(
            target=lambda: [slow.add(records.slice(i, 10)) for i in range(0, 40, 10)])
        adding.start()
        adding.join(0.5)
        assert adding.is_alive() and slow.rows == 30     # the third piece waits
        gate.set()
        adding.join(10)
        done = slow.finish(40)
    assert done == bundle.Written(tmp_path / "events.parquet", 40)
    assert pl.read_parquet(done.path)["line"].to_list() == list(range(4, 44))


DAMAGE = st.one_of(
    st.tuples(st.just("junk"), st.integers(0, 200), st.sampled_from(
        ["junk\n", "\n", "dtrace: 3 drops on CPU 1\n", "# k=v\n", "1 2 3\n"])),
    st.tuples(st.just("blanks"), st.integers(0, 200), st.just("")),    # two blanks: line reader
    st.tuples(st.just("repeat"), st.integers(0, 200), st.just("")),
    st.tuples(st.just("swap"), st.integers(0, 200), st.just("")),      # back in time
    st.tuples(st.just("cr"), st.integers(0, 200), st.just("")),
)


def _damaged(n: int, damage: list[tuple[str, int, str]], drains: int = 0) -> str:
    """A log of ``n`` records in time order, or by CPU buffers drained ``drains`` times,
    damaged."""
    lines = (by_buffers(n, drains=drains) if drains else temporal(n)).splitlines(keepends=True)
    for kind, at, text in damage:
        i = at % len(lines)
        if kind == "junk":
            lines.insert(i, text)
        elif kind == "blanks":
            lines[i] = lines[i].replace(" ", "  ", 1)
        elif kind == "repeat":
            lines.insert(i, lines[i])
        elif kind == "swap" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        elif kind == "cr":
            lines[i] = lines[i].replace("\n", "\r\n")
    return (HEADER.replace("ncpu=4", "ncpu=3") if drains else HEADER) + "".join(lines)


def _outcome(tmp: Path, text: str, name: str, stream_on: bool):
    import contextlib

    with contextlib.ExitStack() as stack:
        if not stream_on:
            m = stack.enter_context(pytest.MonkeyPatch.context())
            m.setattr(stream.EventStream, "add", lambda self, events: self.give_up("off"))
        try:
            out, meta = ingest(tmp, text, name, max_bad=1000)
        except PvtraceError as exc:
            return exc.message.replace(f"{name}.log", "LOG")
        return events(out), meta["inputs"][0]["reader"].get("events_written")


# Few fixed examples in make test; PVTRACE_FUZZ_EXAMPLES=1500 draws that many random ones.
@settings(max_examples=int(os.environ.get("PVTRACE_FUZZ_EXAMPLES", 25)),
          derandomize="PVTRACE_FUZZ_EXAMPLES" not in os.environ, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 150), damage=st.lists(DAMAGE, max_size=4),
       piece=st.integers(60, 600), drains=st.sampled_from([0, 0, 1, 2, 5]))
def test_the_stream_and_the_sort_write_the_same_bundle(n, damage, piece, drains):
    """Whatever the log, in time order or by CPU buffers, writing while parsing gives what
    the sort gives (records, types, order, line numbers), or the same error. (1500 random
    examples passed when it was written.)"""
    text = _damaged(n, damage, drains)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as m:
        m.setattr(arrowcsv, "PIECE_BYTES", piece)
        m.setattr(arrowcsv, "MIN_PIECE_BYTES", 1)
        streamed = _outcome(Path(tmp), text, "a", True)
        by_sort = _outcome(Path(tmp), text, "b", False)
    if isinstance(streamed, str) or isinstance(by_sort, str):
        assert streamed == by_sort
        return
    assert streamed[0].equals(by_sort[0])
    assert by_sort[1].startswith("after sorting: ")
    # a log in time order that pyarrow reads whole, with no record only the line reader
    # reads, is written while parsed
    if not damage:
        assert streamed[1] == "while parsing"
