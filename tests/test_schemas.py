"""Every table ingest writes reads back with exactly its schemas/ schema and version."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pvtrace import schemas
from pvtrace.bundle import open_bundle
from pvtrace.errors import PvtraceError
from pvtrace.ingest import run_ingest

LOG = """\
# pvtrace-log v1
# ncpu=2
dtrace: script 'pvtrace.d' matched 12 probes
1000 0 101 E - 0 - 0 0x200000 pmap_enter
1000 0 101 A pv 0xfffff80001000040 w 0 0x200000 pmap_enter
1500 0 101 P - 0 4k 0 0x201000 pmap_enter
11000 0 101 R pv 0xfffff80001000040 w 0 0x200000 pmap_enter
dtrace: 3 drops on CPU 1
"""


@pytest.fixture
def bundle_dir(tmp_path):
    log = tmp_path / "x.log"
    log.write_text(LOG)
    out = tmp_path / "b"
    run_ingest([str(log)], str(out))
    return out


def test_schema_files_load():
    assert {"events", "diagnostics"} <= set(schemas.names())
    for name in schemas.names():
        s = schemas.load(name)
        assert s.arrow.metadata == {b"pvtrace.table": name.encode(),
                                    b"pvtrace.schema_version": s.version.encode()}


def test_written_tables_match_their_schemas(bundle_dir):
    written = sorted(p.stem for p in bundle_dir.glob("*.parquet"))
    assert written == ["diagnostics", "events"]
    meta = json.loads((bundle_dir / "metadata.json").read_text())
    for name in written:
        table = pq.read_table(bundle_dir / f"{name}.parquet")
        expected = schemas.load(name)
        assert table.schema.equals(expected.arrow, check_metadata=True), name
        assert meta["tables"][name]["schema_version"] == expected.version
    assert meta["tables"]["events"]["rows"] == 4
    assert meta["tables"]["diagnostics"]["rows"] == 2


def test_bundle_reads_back(bundle_dir):
    b = open_bundle(bundle_dir)
    assert b.table("events")["ts"].to_list() == [1000, 1000, 1500, 11000]
    assert b.table("diagnostics")["count"].to_list() == [12, 3]


def _rewrite_version(path, version: str) -> None:
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    meta[b"pvtrace.schema_version"] = version.encode()
    pq.write_table(table.replace_schema_metadata(meta), path)


def test_newer_major_table_version_refused(bundle_dir):
    _rewrite_version(bundle_dir / "events.parquet", "2.0")
    with pytest.raises(PvtraceError, match=r"schema version 2\.0, newer than this pvtrace"):
        open_bundle(bundle_dir).table("events")


def test_newer_minor_table_version_accepted(bundle_dir):
    _rewrite_version(bundle_dir / "events.parquet", "1.7")
    assert open_bundle(bundle_dir).table("events").height == 4


@pytest.mark.parametrize("version", [b"1", b"1.0", b"1.7", b"1.0.3"])
def test_same_major_version_forms_accepted(version):
    schemas.check_version({b"pvtrace.schema_version": version}, "events", "x.parquet")


@pytest.mark.parametrize("version, shown", [
    (b"abc", "'abc'"), (b"", "''"), (b"1.", "'1.'"), (b"-1.0", "'-1.0'"), (b" 1.0", "' 1.0'"),
    (b"\xff", "'\ufffd'"), ("\u0661.0".encode(), "'\u0661.0'"),   # int() reads that as 1
])
def test_damaged_table_version_is_an_error_naming_the_file(version, shown):
    with pytest.raises(PvtraceError) as err:
        schemas.check_version({b"pvtrace.schema_version": version}, "events", "x.parquet")
    assert err.value.one_line() == (f"x.parquet: table events has a damaged schema version "
                                    f"{shown} (not MAJOR.MINOR)")


def test_newer_bundle_format_refused(bundle_dir):
    meta_file = bundle_dir / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["format"] = "pvtrace-bundle/2"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(PvtraceError, match="newer than this pvtrace"):
        open_bundle(bundle_dir)


def test_conform_rejects_unknown_columns():
    with pytest.raises(ValueError, match="not in schemas/events.json"):
        schemas.conform(pa.table({"bogus": [1]}), "events")


def test_metadata_failure_leaves_nothing_behind(tmp_path):
    from pvtrace.bundle import write_bundle
    import polars as pl

    def broken():
        raise RuntimeError("facts failed")

    with pytest.raises(RuntimeError, match="facts failed"):
        write_bundle(tmp_path / "b", {"diagnostics": pl.DataFrame(
            schema={"src": pl.UInt16, "line": pl.UInt64, "kind": pl.String, "cpu": pl.Int32,
                    "count": pl.Int64, "text": pl.String})}, broken)
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_one_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    sample = sorted((Path(__file__).resolve().parents[1] / "sample_traces").glob("*.log.gz"))[0]
    with pytest.raises(PvtraceError, match="b: cannot write the bundle: No space left"):
        run_ingest([str(sample)], str(tmp_path / "b"))
    assert list(tmp_path.iterdir()) == []


def test_events_written_with_time_statistics_and_per_column_encodings(bundle_dir):
    meta = pq.ParquetFile(bundle_dir / "events.parquet").metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    col = {name: meta.row_group(0).column(i) for i, name in enumerate(names)}
    for name in ("ts", "cpu", "tid", "line"):
        assert "DELTA_BINARY_PACKED" in col[name].encodings, name
        assert col[name].compression == "UNCOMPRESSED", name
    for name in ("ev", "cls", "lock", "mode", "op"):
        assert "RLE_DICTIONARY" in col[name].encodings, name
    assert col["pa"].compression == "LZ4" and col["ns"].compression == "ZSTD"
    assert (col["ts"].statistics.min, col["ts"].statistics.max) == (1000, 11000)
    assert not col["pa"].is_stats_set


def test_events_and_lockstat_schemas_keep_specs_column_types():
    # SPEC section 2 fixes these types; the write test checks tables against the schema
    # files, so a type changed in a file would pass it.
    events = schemas.load("events").arrow
    assert events.field("ts").type in (pa.int64(), pa.uint64())
    for name in ("cpu", "tid"):
        assert pa.types.is_integer(events.field(name).type), name
    assert events.field("lock").type == events.field("pa").type == pa.uint64()
    assert events.field("ns").type == pa.int64()
    def text(t: pa.DataType) -> bool:          # strings, or a dictionary of them
        return pa.types.is_string(t) or pa.types.is_large_string(t) or (
            pa.types.is_dictionary(t) and pa.types.is_string(t.value_type))

    for name in ("ev", "cls", "mode", "op"):
        assert text(events.field(name).type), name
    lockstat = schemas.load("lockstat").arrow
    for name in ("event", "lock", "caller"):
        assert text(lockstat.field(name).type), name
    for name in ("count", "nsec"):
        assert pa.types.is_integer(lockstat.field(name).type), name
    assert {"events_total", "seconds"} <= set(lockstat.names)
