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
