"""The timeline is the same whatever shape the events table arrives in: string or dictionary
columns, one chunk or many, dictionaries holding values no record uses, a bundle written with
small row groups. Compared field by field against the plain in-memory table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pvtrace.errors import PvtraceError
from pvtrace.ingest import run_ingest
from pvtrace.replay.api import load_trace
from pvtrace.timeline import Timeline

SAMPLE = sorted((Path(__file__).resolve().parents[1] / "sample_traces").glob("*.log.gz"))[0]
ARRAYS = ("ts", "ev", "cls", "lock", "mode", "pa", "op", "waited_idx", "waited_ns", "spun_idx",
          "spun_ns", "partner", "thread_first", "thread_end", "thread_ids")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tl") / "bundle"
    run_ingest([str(SAMPLE)], str(out))
    return out


@pytest.fixture(scope="module")
def events(bundle: Path) -> pl.DataFrame:
    return pl.read_parquet(bundle / "events.parquet")


def same(a: Timeline, b: Timeline) -> None:
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    for name in ("classes", "ops", "t0", "t_last", "counts", "nlocks"):
        assert getattr(a, name) == getattr(b, name), name


def test_string_columns_give_the_same_timeline(events: pl.DataFrame) -> None:
    strings = events.with_columns(pl.col("ev", "cls", "mode", "op").cast(pl.String))
    same(Timeline.from_events(events), Timeline.from_events(strings))


def test_many_chunks_and_unused_dictionary_values(events: pl.DataFrame) -> None:
    table = events.to_arrow()
    pieces = []
    for lo in range(0, table.num_rows, 997):       # ragged chunks
        piece = table.slice(lo, 997)
        cols = []
        for name in piece.column_names:
            col = piece.column(name).combine_chunks()
            if name in ("cls", "op"):
                # Each chunk its own dictionary, with a value that no record uses.
                col = col.cast(pa.string())
                values = pa.array(["zz-unused"] + sorted(set(col.to_pylist())))
                col = pa.DictionaryArray.from_arrays(
                    pa.compute.index_in(col, value_set=values).cast(pa.int32()), values)
            cols.append(col)
        pieces.append(pa.table(cols, names=piece.column_names))
    chunked = {name: pa.chunked_array([p.column(name).chunk(0) for p in pieces])
               for name in table.column_names}
    tl = Timeline.from_columns(lambda name: chunked[name], table.num_rows)
    same(Timeline.from_events(events), tl)
    assert "zz-unused" not in tl.classes and "zz-unused" not in tl.ops


@pytest.mark.parametrize("bad_index", [5, -1])
def test_dictionary_codes_past_the_dictionary_are_refused(events: pl.DataFrame, bad_index):
    # A damaged table whose reader did not validate its dictionary indices: not a crash or
    # a wrong class.
    table = events.to_arrow()
    cls = table.column("cls").combine_chunks().cast(pa.string())
    values = pa.array(sorted(set(cls.to_pylist())))
    idx = pa.compute.index_in(cls, value_set=values).cast(pa.int32()).to_numpy().copy()
    idx[len(idx) // 2] = bad_index if bad_index < 0 else len(values) + bad_index
    bad = pa.DictionaryArray.from_arrays(pa.array(idx), values, safe=False)
    cols = {name: table.column(name) for name in table.column_names}
    cols["cls"] = bad
    with pytest.raises(PvtraceError, match="codes past its dictionary"):
        Timeline.from_columns(lambda name: cols[name], table.num_rows)


def test_bundle_with_small_row_groups(bundle: Path, events: pl.DataFrame, tmp_path: Path):
    small = tmp_path / "small"
    small.mkdir()
    (small / "metadata.json").write_bytes((bundle / "metadata.json").read_bytes())
    pq.write_table(pq.read_table(bundle / "events.parquet"), small / "events.parquet",
                   row_group_size=1000)
    assert pq.ParquetFile(small / "events.parquet").num_row_groups > 10
    same(Timeline.from_events(events), load_trace(str(small)).timeline)


def test_a_release_in_the_other_mode_is_paired_and_counted() -> None:
    # Thread 7 takes lock L for reading and releases it as a writer (its read release and a
    # write acquisition were dropped); thread 8 takes it for reading twice (recursion) and
    # releases both as a reader; thread 9's mutex has no mode to disagree on.
    L, M = 0xFFFFF80001000000, 0xFFFFF80002000000
    rows = [(10, 7, "A", "pv", L, "r"), (20, 7, "R", "pv", L, "w"),
            (30, 8, "A", "pv", L, "r"), (40, 8, "A", "pv", L, "r"),
            (50, 8, "R", "pv", L, "r"), (60, 8, "R", "pv", L, "r"),
            (70, 9, "A", "pmap", M, "w"), (80, 9, "R", "pmap", M, "w")]
    events = pl.DataFrame({
        "ts": [r[0] for r in rows], "cpu": [0] * 8, "tid": [r[1] for r in rows],
        "ev": [r[2] for r in rows], "cls": [r[3] for r in rows], "lock": [r[4] for r in rows],
        "mode": [r[5] for r in rows], "ns": [0] * 8, "pa": [0x200000] * 8,
        "op": ["pmap_enter"] * 8,
    }, schema_overrides={"ts": pl.UInt64, "lock": pl.UInt64, "pa": pl.UInt64, "ns": pl.Int64})
    tl = Timeline.from_events(events)
    assert tl.counts.mode_mismatch == 1
    assert list(tl.partner) == [1, 0, 5, 4, 3, 2, 7, 6]
    from pvtrace.report.table import notes
    from pvtrace.replay.run import observed
    obs = observed(tl)
    assert obs["unmatched"] == {"orphan_waits": 0, "held_at_start": 0, "held_at_end": 0,
                                "mode_mismatch": 1}
    assert notes({"trace": {}, "observed": obs, "models": []}) == [
        "1 release in the other mode (w, r) than the acquisition paired with it: records "
        "between them were lost, and each such hold spans two acquisitions (docs/REPLAY.md "
        "section 1)"]


def test_waits_attach_to_their_acquisitions_from_the_sparse_ns_column() -> None:
    # Two threads interleaved in time (the timeline regroups them): B and S before an A add
    # up; a B of 0 ns attaches without a wait; a B followed by an A of another lock is an
    # orphan; an ns on an A record (not a B/S one) is ignored.
    rows = [  # ts, tid, ev, lock, ns
        (10, 101, "B", 1, 100), (11, 101, "S", 1, 40), (12, 101, "A", 1, 0),
        (13, 102, "S", 1, 5), (20, 101, "R", 1, 0), (21, 102, "A", 1, 0),
        (25, 102, "R", 1, 0), (30, 101, "B", 2, 0), (31, 101, "A", 2, 0),
        (40, 101, "R", 2, 0), (50, 101, "B", 3, 70), (51, 101, "A", 4, 999),
        (60, 101, "R", 4, 0),
    ]
    n = len(rows)
    events = pl.DataFrame(
        {"ts": [r[0] for r in rows], "cpu": [0] * n, "tid": [r[1] for r in rows],
         "ev": [r[2] for r in rows], "cls": ["pmap"] * n, "lock": [r[3] for r in rows],
         "mode": ["w"] * n, "ns": [r[4] for r in rows], "pa": [0] * n,
         "op": ["pmap_enter"] * n},
        schema_overrides={"ts": pl.UInt64, "lock": pl.UInt64, "pa": pl.UInt64, "ns": pl.Int64})
    tl = Timeline.from_events(events)
    # 101's ten records first (B S A R B A R B A R), then 102's (S A R)
    assert tl.thread_ids.tolist() == [101, 102]
    assert tl.waited_idx.tolist() == [2, 11] and tl.waited_ns.tolist() == [140, 5]
    assert tl.spun_idx.tolist() == [2, 11] and tl.spun_ns.tolist() == [40, 5]
    assert tl.counts.orphan_waits == 1
    assert tl.partner.tolist() == [-1, -1, 3, 2, -1, 6, 5, -1, 9, 8, -1, 12, 11]
