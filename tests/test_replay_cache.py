"""The bundle's timeline cache: a replay writes it, the next one maps it and reports the same
numbers; a stale, damaged or newer-version cache is rebuilt, never trusted and never fatal;
``--no-cache`` and raw captures leave the bundle alone."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from typer.testing import CliRunner

from pvtrace.cli import app
from pvtrace.ingest import run_ingest
from pvtrace.replay import cache
from pvtrace.replay.api import load_trace, replay_trace
from tests.test_timeline import ARRAYS, SAMPLE, same

DESIGNS = ["stock", "obm"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "bundle"
    run_ingest([str(SAMPLE)], str(out))
    return out


@pytest.fixture
def bundle(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the sample bundle, without a cache (copy2 keeps the events' mtime)."""
    return Path(shutil.copytree(pristine, tmp_path / "b"))


def _replay(bundle: Path, **kw) -> tuple[dict, str]:
    report = replay_trace(str(bundle), DESIGNS, spin_limit_ns=5000, **kw)
    return report, report["trace"].pop("timeline_cache")


def test_second_replay_maps_the_cache_and_reports_the_same(bundle: Path) -> None:
    cold, how = _replay(bundle)
    assert how == cache.WRITTEN
    assert sorted(p.name for p in (bundle / cache.CACHE_DIR).iterdir()) == [
        "timeline.arrow", "timeline_spins.arrow", "timeline_threads.arrow",
        "timeline_waits.arrow"]
    warm, how = _replay(bundle)
    assert how == cache.READ
    assert warm == cold
    built = load_trace(str(bundle), use_cache=False).timeline
    mapped = load_trace(str(bundle)).timeline
    same(built, mapped)
    # mapped from the file (copy-on-write, so the compiled passes see the writable arrays
    # they were compiled for), not copied into the process's memory
    for name in ("ts", "pa", "partner", "thread_first"):
        arr = getattr(mapped, name)
        assert arr.flags.writeable and not arr.flags.owndata
        assert not np.shares_memory(arr, getattr(built, name))


def test_a_changed_events_file_rebuilds_the_cache(bundle: Path) -> None:
    assert _replay(bundle)[1] == cache.WRITTEN
    events = bundle / "events.parquet"
    st = events.stat()
    os.utime(events, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert _replay(bundle)[1] == cache.WRITTEN
    assert _replay(bundle)[1] == cache.READ


def test_same_size_events_with_the_old_time_rebuild_the_cache(tmp_path: Path) -> None:
    """Another capture's events.parquet of the very same size, put in place with the old
    file's modification time (cp, touch -r), was served the old cache: the key now holds a
    digest of the file's ends."""
    from spec_example import SPEC_LOG
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    logs[0].write_text(SPEC_LOG)
    logs[1].write_text(SPEC_LOG.replace(" 9000 ", " 8000 "))
    a, b = (tmp_path / "a", tmp_path / "b")
    run_ingest([str(logs[0])], str(a))
    run_ingest([str(logs[1])], str(b))
    events = a / "events.parquet"
    assert events.stat().st_size == (b / "events.parquet").stat().st_size
    first = replay_trace(str(a), ["stock"])
    assert first["observed"]["wait_ns"] == 9000
    st = events.stat()
    shutil.copyfile(b / "events.parquet", events)
    os.utime(events, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = replay_trace(str(a), ["stock"])
    assert again["trace"]["timeline_cache"] == cache.WRITTEN
    assert again["observed"]["wait_ns"] == 8000


def test_a_killed_writes_directory_is_removed_by_the_next(bundle: Path) -> None:
    """A replay killed while writing the cache (SIGKILL: nothing can clean up) left its
    temporary directory, hundreds of MB at scale, for ever."""
    import socket
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = socket.gethostname()
    killed = bundle / f".cache.{host}.{int(dead.stdout)}.ab12cd34"
    running = bundle / f".cache.{host}.{os.getpid()}.ef56ab78"     # a write in progress
    for d in (killed, running):
        d.mkdir()
        (d / "timeline.arrow").write_bytes(b"x" * 1000)
    assert _replay(bundle)[1] == cache.WRITTEN
    assert not killed.exists() and running.exists()


def _rewrite_timeline(bundle: Path, change) -> None:
    """Rewrite the cache's timeline table with ``change(schema metadata)`` applied."""
    path = bundle / cache.CACHE_DIR / "timeline.arrow"
    table = ipc.open_file(pa.py_buffer(path.read_bytes())).read_all()   # not mapped: rewritten
    meta = dict(table.schema.metadata)
    change(meta)
    table = table.replace_schema_metadata(meta)
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, table.schema) as w:
        w.write_table(table)


def _column(bundle: Path, table: str, column: str) -> np.ndarray:
    path = bundle / cache.CACHE_DIR / f"{table}.arrow"
    return ipc.open_file(pa.py_buffer(path.read_bytes())).read_all().column(column).to_numpy()


def _poke(bundle: Path, table: str, column: str, rows: slice, value: int) -> None:
    """Overwrite ``rows`` of ``column`` in the cache file in place (the file's structure,
    schema and key stay intact: only values change, as a disk error or a hand edit would)."""
    path = bundle / cache.CACHE_DIR / f"{table}.arrow"
    chunk = ipc.open_file(pa.py_buffer(path.read_bytes())).read_all().column(column).chunk(0)
    data = bytearray(path.read_bytes())
    buf = pa.py_buffer(bytes(data))
    where = ipc.open_file(buf).read_all().column(column).chunk(0).buffers()[1].address
    start = where - buf.address
    values = np.frombuffer(data, chunk.type.to_pandas_dtype(), len(chunk), start)
    values[rows] = value
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing table", "newer version",
                                    "other events", "not arrow", "thread index out of range",
                                    "partner out of range", "lock out of range",
                                    "values zeroed", "wait index out of range",
                                    "counts of an older version", "values swapped",
                                    "waits swapped", "a fifo"])
def test_a_damaged_or_foreign_cache_is_rebuilt(bundle: Path, damage: str) -> None:
    cold, _ = _replay(bundle)
    where = bundle / cache.CACHE_DIR
    if damage == "truncated":
        data = (where / "timeline.arrow").read_bytes()
        (where / "timeline.arrow").write_bytes(data[:len(data) // 2])
    elif damage == "empty":
        (where / "timeline_threads.arrow").write_bytes(b"")
    elif damage == "missing table":
        (where / "timeline_spins.arrow").unlink()
    elif damage == "newer version":
        _rewrite_timeline(bundle, lambda m: m.update({b"pvtrace.schema_version": b"9.0"}))
    elif damage == "other events":
        def other(m):
            facts = json.loads(m[b"pvtrace.timeline"])
            facts["key"]["events_size"] += 1
            m[b"pvtrace.timeline"] = json.dumps(facts).encode()
        _rewrite_timeline(bundle, other)
    elif damage == "counts of an older version":     # before mode_mismatch was counted
        def older(m):
            facts = json.loads(m[b"pvtrace.timeline"])
            facts["counts"] = facts["counts"][:3]
            m[b"pvtrace.timeline"] = json.dumps(facts).encode()
        _rewrite_timeline(bundle, older)
    elif damage == "not arrow":
        (where / "timeline.arrow").write_text("PAR1 not an Arrow file\n")
    # Values only: each of these crashed the replay (segmentation fault) or changed every
    # number with the cache reported as read, before the cache had a digest.
    elif damage == "thread index out of range":
        _poke(bundle, "timeline_threads", "thread_first", slice(0, 3), 10**9)
    elif damage == "partner out of range":
        _poke(bundle, "timeline", "partner", slice(5, 6), 2 * 10**9)
    elif damage == "lock out of range":
        _poke(bundle, "timeline", "lock", slice(5, 6), 2 * 10**9)
    elif damage == "values zeroed":     # in range, but not what was written
        _poke(bundle, "timeline", "ev", slice(100, 200), 0)
    elif damage in ("values swapped", "waits swapped"):
        # the least, the greatest and the sum stay as they were
        table, column = (("timeline", "ev") if damage == "values swapped"
                         else ("timeline_waits", "waited_ns"))
        values = _column(bundle, table, column)
        i = int(np.flatnonzero(values != values[0])[0])     # the first value to differ
        _poke(bundle, table, column, slice(0, 1), int(values[i]))
        _poke(bundle, table, column, slice(i, i + 1), int(values[0]))
    elif damage == "a fifo":            # opening it waited for a writer forever
        (where / "timeline_waits.arrow").unlink()
        os.mkfifo(where / "timeline_waits.arrow")
    else:
        _poke(bundle, "timeline_waits", "waited_idx", slice(0, 1), 2 * 10**9)
    again, how = _replay(bundle)
    assert how == cache.WRITTEN and again == cold
    assert _replay(bundle)[1] == cache.READ


def test_an_unwritable_bundle_replays_without_a_cache(bundle: Path, monkeypatch) -> None:
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(cache, "temp_dir", refuse)
    report, how = _replay(bundle)
    assert how == "not written: Permission denied"
    assert not (bundle / cache.CACHE_DIR).exists()
    assert report["models"][1]["model"] == "obm"


def test_a_full_disk_leaves_no_partial_cache(bundle: Path, monkeypatch) -> None:
    real = ipc.new_file
    calls = []

    def fail_on_second(sink, schema):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(sink, schema)
    monkeypatch.setattr(ipc, "new_file", fail_on_second)
    assert _replay(bundle)[1] == "not written: No space left on device"
    assert [p.name for p in bundle.iterdir() if "cache" in p.name] == []


def test_no_cache_and_raw_captures_leave_the_bundle_alone(bundle: Path) -> None:
    result = CliRunner().invoke(app, ["replay", str(bundle), "--no-cache", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["trace"]["timeline_cache"] == cache.OFF
    assert not (bundle / cache.CACHE_DIR).exists()
    assert _replay(bundle)[1] == cache.WRITTEN
    result = CliRunner().invoke(app, ["compare", str(bundle), "--no-cache", "--json"])
    assert json.loads(result.stdout)["trace"]["timeline_cache"] == cache.OFF
    assert replay_trace(str(SAMPLE), ["obm"])["trace"]["timeline_cache"] == cache.OFF


def test_the_cache_holds_every_timeline_array() -> None:
    held = {c for columns in cache.TABLES.values() for c in columns}
    assert held == set(ARRAYS)


def test_the_cache_gets_the_bundles_mode_not_0700(bundle: Path) -> None:
    old = os.umask(0o022)
    try:
        _replay(bundle)
    finally:
        os.umask(old)
    assert (bundle / cache.CACHE_DIR).stat().st_mode & 0o777 == 0o755


# --- Derived arrays (cache.Derived): each design's keys, kept with the cached timeline ---

@pytest.fixture
def key_work(monkeypatch) -> list[str]:
    """Records each computation of derived arrays (the pv records, a design's dense keys)."""
    from pvtrace.replay import run
    calls: list[str] = []
    real_positions, real_dense = run._pv_positions, run.dense_ids

    def positions(*a):
        calls.append("pv_records")
        return real_positions(*a)

    def dense(values):
        calls.append("dense_ids")
        return real_dense(values)
    monkeypatch.setattr(run, "_pv_positions", positions)
    monkeypatch.setattr(run, "dense_ids", dense)
    return calls


def _entries(bundle: Path) -> list[str]:
    return sorted(p.name for p in (bundle / cache.CACHE_DIR / cache.DERIVED_DIR).glob("*.json"))


def test_the_third_replay_maps_the_designs_keys(bundle: Path, key_work: list[str]) -> None:
    cold, _ = _replay(bundle)       # builds the timeline and writes its cache
    assert not (bundle / cache.CACHE_DIR / cache.DERIVED_DIR).exists()
    second, how = _replay(bundle)   # maps the timeline, computes the keys, saves them
    assert how == cache.READ and second == cold
    # the pv records, and one entry per key function: stock's slots, OBM's pages
    assert len(_entries(bundle)) == 3 and "pv_records.json" in _entries(bundle)
    key_work.clear()
    third, _ = _replay(bundle)
    assert key_work == [] and third == cold
    tl = load_trace(str(bundle)).timeline
    from pvtrace.replay.run import _pv_records
    idx, pvpos = _pv_records(tl)
    assert not idx.flags.owndata and idx.flags.writeable and len(pvpos) == len(tl.ev)
    assert key_work == []


def _npy_data(path: Path) -> tuple[bytearray, np.ndarray]:
    """The bytes of a .npy file and a writable view of its values in them."""
    data = bytearray(path.read_bytes())
    arr = np.load(path, mmap_mode="r")
    return data, np.frombuffer(data, arr.dtype, arr.size, arr.offset)


@pytest.mark.parametrize("damage", ["values changed", "truncated", "emptied", "json garbage",
                                    "array missing", "arrays gone from json",
                                    "turnstile gone from json", "other code",
                                    "key out of range", "run reversed",
                                    "pv index out of range", "values swapped", "a fifo"])
def test_damaged_or_stale_keys_are_computed_again(bundle: Path, key_work: list[str],
                                                  damage: str) -> None:
    cold, _ = _replay(bundle)
    _replay(bundle)
    where = bundle / cache.CACHE_DIR / cache.DERIVED_DIR
    obm = next(p for p in where.glob("pv_keys.*.json")
               if "turnstile" in json.loads(p.read_text())["arrays"])
    lo = obm.with_name(obm.name.replace(".json", ".lo.npy"))
    if damage == "values changed":      # in range, but not what was written
        data, values = _npy_data(lo)
        values[:10] = values[10]
        lo.write_bytes(bytes(data))
    elif damage == "values swapped":
        # Two records trade keys (each run whole: the range checks pass); each array's
        # least, greatest and sum stay as they were.
        i = int(np.flatnonzero(np.load(lo) != np.load(lo)[0])[0])
        for path in (lo, lo.with_name(lo.name.replace(".lo.", ".hi."))):
            data, values = _npy_data(path)
            values[[0, i]] = values[[i, 0]]
            path.write_bytes(bytes(data))
    elif damage == "a fifo":
        lo.unlink()
        os.mkfifo(lo)
    elif damage == "truncated":
        lo.write_bytes(lo.read_bytes()[:200])
    elif damage == "emptied":           # a crash right after the file was created
        lo.write_bytes(b"")
    elif damage in ("arrays gone from json", "turnstile gone from json"):
        meta = json.loads(obm.read_text())
        if damage == "arrays gone from json":
            meta["arrays"] = {}
        else:
            del meta["arrays"]["turnstile"]
        obm.write_text(json.dumps(meta))
    elif damage == "json garbage":
        obm.write_text("{not json")
    elif damage == "array missing":
        lo.unlink()
    elif damage == "other code":
        meta = json.loads(obm.read_text())
        meta["stamp"]["code"] = "0" * 32
        obm.write_text(json.dumps(meta))
    else:
        # Written with a matching digest (as a bug in an older pvtrace might have): only
        # the range checks stand between these and the compiled loops.
        tl = load_trace(str(bundle)).timeline
        store = tl.cache[cache.STORE]
        name = obm.name[:-len(".json")]
        if damage == "key out of range":
            arrays, scalars, _ = store.load(name)
            arrays = {**arrays, "lo": arrays["lo"] + np.int32(10**6)}
            store._write(name, arrays, scalars)
        elif damage == "run reversed":      # keys in range, but a run ends before it starts
            arrays, scalars, _ = store.load(name)
            lo = np.array(arrays["lo"])
            j = int(np.argmin(arrays["hi"]))
            lo[j] = arrays["hi"][j] + 1
            store._write(name, {**arrays, "lo": lo}, scalars)
        else:
            arrays, scalars, _ = store.load("pv_records")
            arrays = {**arrays, "pvpos": np.where(arrays["pvpos"] >= 0, arrays["pvpos"] + 7,
                                                  -1).astype(np.int32)}
            store._write("pv_records", arrays, scalars)
    key_work.clear()
    again, _ = _replay(bundle)
    assert again == cold
    assert ("pv_records" if damage == "pv index out of range" else "dense_ids") in key_work
    key_work.clear()
    assert _replay(bundle)[0] == cold and key_work == []      # written again, whole


def test_keys_that_cannot_be_saved_are_computed_each_time(bundle: Path, monkeypatch,
                                                          key_work: list[str]) -> None:
    cold, _ = _replay(bundle)

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "save", full)
    assert _replay(bundle)[0] == cold
    assert list((bundle / cache.CACHE_DIR / cache.DERIVED_DIR).iterdir()) == []
    key_work.clear()
    assert _replay(bundle)[0] == cold and "dense_ids" in key_work
