"""The replay's timeline, cached in the bundle so that replaying a capture again starts at once.

Loading a bundle for a replay (:func:`pvtrace.timeline.build_timeline`: decode the events'
columns, regroup them by thread, link waits and releases) is design-independent and costs
as much as replaying a design: 1.2-1.3 s of a 3.6 s ``replay`` of 14 M records (2.1-2.5 s of
5-6 s when the cache was introduced; a replay from the cache takes 2.0 s). A user replays
the same capture again and again (other designs, layouts, spin limits, batch sweeps), so the
first replay of a bundle writes the timeline's arrays to ``BUNDLE/cache/`` as uncompressed
Arrow IPC files, and later replays memory-map them: no decoding, no copy, and the arrays live
in the page cache, which the kernel can evict, not in the process's own memory.

The cache is derived data. It is keyed by the size and modification time of
``events.parquet`` and by the tables' schema versions (``schemas/timeline*.json``); when any
differs, or a file is unreadable, the timeline is built from the events again and the cache
rewritten. It is written to a temporary sibling directory and renamed into place, so a reader
never sees half of one. Deleting ``BUNDLE/cache`` is always safe; ``--no-cache`` neither
reads nor writes it. It takes about 30 bytes per record (a few times the events file).

A cache is also checked against a digest written with it (per column its least and greatest
value, a wrapping sum and one weighted by position; every index must stay in range), compiled
loops that take 0.02 s for 14 M records: the replay's compiled loops trust the indices they
are given, so a damaged file (a disk error, a crash between the write and the rename, a hand
edit) crashed the replay with a segmentation fault or silently changed every number. A cache
that fails the check is built again, like a stale one.

Next to a cached timeline, :class:`Derived` keeps what each design's replay derives from it
before building steps (the pv-list records' keys), under the same rules.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import socket
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import astuple
from pathlib import Path

import numba as nb
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from pvtrace import schemas, signals
from pvtrace.bundle import temp_dir
from pvtrace.timeline import LinkCounts, Timeline

CACHE_DIR = "cache"
# table name -> the Timeline arrays it holds (its schema's columns, in order)
TABLES = {name: tuple(schemas.load(name).arrow.names)
          for name in ("timeline", "timeline_threads", "timeline_waits", "timeline_spins")}
_META = b"pvtrace.timeline"

# What a replay report says of the cache (``trace.timeline_cache``).
READ, WRITTEN, OFF = "read", "written", "off"


SAMPLE_BYTES = 1 << 20


def key(events_file: Path) -> dict:
    """What identifies the events a cache was built from: the file's size and modification
    time, and a digest of its first and last MiB (all of a file up to 2 MiB), which a file
    of the same size put in place with its predecessor's time (``touch -r``) still changes
    (a Parquet file's footer, at its end, holds every row group's sizes and offsets)."""
    st = events_file.stat()
    h = hashlib.sha256()
    with open(events_file, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if st.st_size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, st.st_size - SAMPLE_BYTES))
            h.update(f.read(SAMPLE_BYTES))
    return {"events_size": st.st_size, "events_mtime_ns": st.st_mtime_ns,
            "events_sample": h.hexdigest()[:32]}


def read(bundle: Path, events_key: dict) -> Timeline | None:
    """The cached timeline of ``bundle``, memory-mapped, or None when there is no cache or
    it is stale or unreadable (the caller builds the timeline instead)."""
    where = bundle / CACHE_DIR
    if not (where / "timeline.arrow").is_file():
        return None
    try:
        arrays: dict[str, np.ndarray] = {}
        facts = None
        for name, columns in TABLES.items():
            table, mapped = _map(where / f"{name}.arrow")
            expected = schemas.load(name).arrow
            if not table.schema.equals(expected, check_metadata=False) or (
                    table.schema.metadata or {}).get(b"pvtrace.schema_version") != \
                    expected.metadata[b"pvtrace.schema_version"]:
                return None
            if name == "timeline":
                facts = json.loads(table.schema.metadata[_META])
            for c in columns:
                arrays[c] = mapped(c)
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return None
    if not isinstance(facts, dict) or facts.get("key") != events_key:
        return None
    try:
        tl = Timeline(**arrays, nlocks=int(facts["nlocks"]), classes=list(facts["classes"]),
                      ops=list(facts["ops"]), t0=int(facts["t0"]), t_last=int(facts["t_last"]),
                      counts=LinkCounts(*(int(c) for c in facts["counts"])))
        found = digest(tl)
        if found is None or facts["digest"] != found:
            return None
        tl.cache[STORE] = Derived(where / DERIVED_DIR, {"events": events_key, "timeline": found})
        return tl
    except (KeyError, TypeError, ValueError):
        return None


# The per-record columns a cache digest covers (see digest).
_DIGESTED = ("ts", "ev", "cls", "lock", "mode", "pa", "op", "partner")


def digest(tl: Timeline) -> list[int] | None:
    """Per column of ``tl`` its least and greatest value, their sum and their sum weighted
    by position (wrapping at 2^64; see _stats), or None when an index points outside what it
    indexes."""
    n = len(tl.ev)
    out: list[int] = []
    span: dict[str, tuple[int, int]] = {}
    for name in _DIGESTED:
        values = getattr(tl, name)
        if len(values) != n:
            return None
        lo, hi, total, weighted = (int(v) for v in _stats(values)) if n else (0, 0, 0, 0)
        span[name] = (lo, hi)
        out += [lo, hi, total, weighted]
    within = {"ts": (0, tl.t_last), "ev": (0, 6), "cls": (-1, len(tl.classes) - 1),
              "lock": (0, max(tl.nlocks, 1) - 1), "mode": (0, 4),
              "op": (0, max(len(tl.ops), 1) - 1), "partner": (-1, n - 1)}
    if n and any(not (a <= span[c][0] and span[c][1] <= b) for c, (a, b) in within.items()):
        return None
    per_thread = _index_digest(tl.thread_first, tl.thread_end, tl.waited_idx, tl.spun_idx, n)
    if per_thread[4]:
        return None
    return out + [int(v) for v in per_thread[:4]] + [
        v for a in (tl.waited_ns, tl.spun_ns, tl.thread_ids) for v in _array_digest(a)[2:]]


@nb.njit(cache=True, nogil=True)
def _stats(values):
    """(least, greatest, sum, sum weighted by position) of a column, the sums wrapping at
    2^64: a loop the compiler vectorizes. The weighted sum changes when values trade places
    (two swapped values left the other three as they were, and the replay read the cache)."""
    lo = values[0]
    hi = values[0]
    total = np.uint64(0)
    weighted = np.uint64(0)
    for i in range(len(values)):
        v = values[i]
        lo = min(lo, v)
        hi = max(hi, v)
        total += np.uint64(v)
        weighted += np.uint64(v) * np.uint64(i + 1)
    return np.int64(lo), np.int64(hi), total, weighted


@nb.njit(cache=True, nogil=True)
def _index_digest(thread_first, thread_end, waited_idx, spun_idx, n):
    """Threads must tile ``[0, n)`` in order; the sparse indices ascend within it. Returns
    the sums of the four arrays and the number of violations."""
    sums = np.zeros(5, np.uint64)
    at = 0
    for t in range(len(thread_first)):
        sums[4] += thread_first[t] != at or thread_end[t] < thread_first[t]
        at = thread_end[t]
        sums[0] += np.uint64(thread_first[t])
        sums[1] += np.uint64(thread_end[t])
    sums[4] += at != n
    for idx, k in ((waited_idx, 2), (spun_idx, 3)):
        prev = -1
        for i in range(len(idx)):
            sums[4] += idx[i] <= prev or idx[i] >= n
            prev = idx[i]
            sums[k] += np.uint64(idx[i])
    return sums


def _regular(path: Path) -> Path:
    """``path``, when it is a regular file: opening a FIFO put in the cache's place would
    wait for a writer forever (the error makes the cache count as damaged)."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError(f"{path}: not a regular file")
    return path


def _map(path: Path):
    """The Arrow IPC file at ``path`` mapped copy-on-write: its table, and a function giving a
    column as a numpy view of the mapping. Copy-on-write, not read-only: the compiled passes
    are specialized on the arrays' writability, and read-only arrays would compile (and
    cache) a second copy of each; nothing writes to them, so no page is ever copied."""
    with open(_regular(path), "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    buf = pa.py_buffer(mm)
    table = ipc.open_file(buf).read_all()

    def column(name: str) -> np.ndarray:
        col = table.column(name)
        if col.num_chunks == 0:       # an empty table is written without a record batch
            return np.zeros(0, col.type.to_pandas_dtype())
        if col.num_chunks != 1 or col.null_count:
            raise ValueError(f"{path}: column {name} is not one chunk without nulls")
        chunk = col.chunk(0)
        dtype = np.dtype(chunk.type.to_pandas_dtype())
        offset = chunk.buffers()[1].address - buf.address + chunk.offset * dtype.itemsize
        return np.frombuffer(mm, dtype, len(chunk), offset)
    return table, column


def write(bundle: Path, events_key: dict, tl: Timeline) -> str:
    """Write ``tl`` as ``bundle``'s cache; returns :data:`WRITTEN`, or why it was not (a
    read-only bundle or a full disk is not an error: the replay goes on without a cache)."""
    facts = json.dumps({"key": events_key, "nlocks": tl.nlocks, "classes": tl.classes,
                        "ops": tl.ops, "t0": tl.t0, "t_last": tl.t_last,
                        "counts": list(astuple(tl.counts)), "digest": digest(tl)}).encode()
    tmp = None
    try:
        _remove_abandoned(bundle)
        # the bundle's mode, not 0700; named after this host and process (see below)
        tmp = temp_dir(bundle, f".{CACHE_DIR}.{socket.gethostname()}.{os.getpid()}.")
        for name, columns in TABLES.items():
            table = schemas.conform(pa.table({c: getattr(tl, c) for c in columns}), name)
            if name == "timeline":
                table = table.replace_schema_metadata({**table.schema.metadata, _META: facts})
            with pa.OSFile(str(tmp / f"{name}.arrow"), "wb") as sink, \
                    ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=max(table.num_rows, 1))
        final = bundle / CACHE_DIR
        if final.exists():
            old = bundle / f".{CACHE_DIR}.{socket.gethostname()}.{os.getpid()}.old"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        return WRITTEN
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return f"not written: {exc.strerror or exc}"
    except BaseException:       # interrupted: no half-written cache left in the bundle
        if tmp is not None:
            with signals.held():
                shutil.rmtree(tmp, ignore_errors=True)
        raise


ABANDONED_AFTER_S = 24 * 3600


def _remove_abandoned(bundle: Path) -> None:
    """Remove the temporary directories of cache writes that were killed (SIGKILL, a crash:
    nothing else could clean up; at scale, gigabytes): those of this host whose process is
    gone, and any a day old (another host's, or an older pvtrace's). A write in progress in
    another process, here or on another host sharing the bundle, is left alone."""
    host = socket.gethostname()
    for entry in bundle.glob(f".{CACHE_DIR}.*"):
        try:
            stale = time.time() - entry.stat().st_mtime > ABANDONED_AFTER_S
        except OSError:
            continue
        parts = entry.name.split(".")        # "", "cache", host..., pid, suffix
        if len(parts) >= 5 and parts[-2].isdecimal() and ".".join(parts[2:-2]) == host:
            stale = stale or not _alive(int(parts[-2]))
        if stale:
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:         # another user's process (EPERM): alive
        return True
    return True


# --- Derived arrays ------------------------------------------------------------------------

DERIVED_DIR = "derived"
STORE = "derived_store"     # where a Timeline from the cache keeps its Derived (tl.cache)
# The modules whose code computes derived arrays: a change to any of them retires them all.
_DERIVED_CODE = ("pvtrace/models", "pvtrace/replay/run.py", "pvtrace/replay/dense.py",
                 "pvtrace/replay/cache.py", "pvtrace/timeline.py")


class Derived:
    """Arrays a replay derives from a cached timeline, kept in ``BUNDLE/cache/derived/``.

    Before the step builder runs, a replay maps every pv-list record and page move to its key
    under the design (``replay.run._design_keys``): 0.5 s and 170 MB of fresh memory at 14 M
    records, a quarter of a replay from the cache, the same at every replay of a design. The
    first replay of a design on a cached timeline computes them as usual and saves them here
    as ``.npy`` files (in a background thread, while the design replays); later ones map
    them copy-on-write, like the timeline.

    An entry is ``NAME.json`` (the stamp, scalars, and per array its dtype, length and
    digest) and ``NAME.ARRAY.npy``; the JSON is written last, so an entry without it is
    ignored. The stamp ties entries to the timeline (the events file's key and the timeline's
    digest) and to the code that computed them (a digest of its modules' source: a new
    pvtrace version recomputes them). Entries live inside the timeline's cache directory,
    which a rebuilt timeline replaces whole. Like the timeline, an entry is checked on load
    (the digest, and the caller's range checks: the compiled loops trust the keys they index
    with); one that fails is computed again. Writing is best effort: a read-only bundle or a
    full disk only means the arrays are computed every time.
    """

    def __init__(self, where: Path, timeline: dict):
        self.where = where
        self.stamp = {**timeline, "code": _code_digest()}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def load(self, name: str) -> tuple[dict[str, np.ndarray], dict, dict] | None:
        """Entry ``name``'s arrays (mapped), scalars and per array its least and greatest
        value, or None when absent, stale or damaged."""
        try:
            meta = json.loads(_regular(self.where / f"{name}.json").read_text())
            if not isinstance(meta, dict) or meta.get("stamp") != self.stamp:
                return None
            arrays, spans = {}, {}
            for key, (dtype, length, expected) in meta["arrays"].items():
                arr = np.load(_regular(self.where / f"{name}.{key}.npy"), mmap_mode="c",
                              allow_pickle=False)
                arr = np.asarray(arr)       # a plain ndarray view of the mapping
                if str(arr.dtype) != dtype or arr.shape != (length,) or \
                        _array_digest(arr) != expected:
                    return None
                arrays[key] = arr
                spans[key] = tuple(expected[:2])
            return arrays, meta["scalars"], spans
        except Exception:       # noqa: BLE001 - any damage (an empty .npy is an EOFError)
            return None         # means: compute the entry again

    def save(self, name: str, arrays: dict[str, np.ndarray], scalars: dict) -> None:
        """Write entry ``name`` in the background (see :meth:`flush`)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="pvtrace-derived")
        self._pending.append(self._pool.submit(self._write, name, arrays, scalars))

    def flush(self) -> None:
        """Wait for the entries being written (and let their thread go)."""
        for fut in self._pending:
            fut.result()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _write(self, name: str, arrays: dict[str, np.ndarray], scalars: dict) -> None:
        tmp = f".tmp.{os.getpid()}.{threading.get_ident()}"
        try:
            self.where.mkdir(exist_ok=True)
            meta = {"stamp": self.stamp, "scalars": scalars, "arrays": {}}
            for key, arr in arrays.items():
                arr = np.ascontiguousarray(arr)
                path = self.where / f"{name}.{key}.npy"
                np.save(path.with_name(path.name + tmp), arr, allow_pickle=False)
                os.replace(path.with_name(path.name + tmp + ".npy"), path)
                meta["arrays"][key] = [str(arr.dtype), len(arr), _array_digest(arr)]
            final = self.where / f"{name}.json"
            final.with_name(final.name + tmp).write_text(json.dumps(meta))
            os.replace(final.with_name(final.name + tmp), final)
        except OSError:
            for stale in self.where.glob(f"*{tmp}*"):
                stale.unlink(missing_ok=True)


def derived(tl: Timeline, name: str, compute, check) -> tuple[dict[str, np.ndarray], dict]:
    """Entry ``name`` of ``tl``'s derived arrays: from memory, from the bundle's cache (when
    ``check(arrays, scalars, spans)`` holds, ``spans`` giving each array's least and
    greatest value), or ``compute()``d (and saved when ``tl`` came from a cache). Returns
    ``(arrays, scalars)``."""
    if name in tl.cache:
        return tl.cache[name]
    store = tl.cache.get(STORE)
    loaded = store.load(name) if store is not None else None
    got = loaded[:2] if loaded is not None and _holds(check, loaded) else None
    if got is None:
        got = compute()
        if store is not None:
            store.save(name, *got)
    tl.cache[name] = got
    return got


def _holds(check, loaded) -> bool:
    """``check`` on a loaded entry; an entry it cannot even look at (a key missing from a
    damaged file) does not hold."""
    try:
        return bool(check(*loaded))
    except Exception:       # noqa: BLE001
        return False


def flush_derived(tl: Timeline) -> None:
    """Wait for ``tl``'s derived arrays being saved, if any."""
    store = tl.cache.get(STORE)
    if store is not None:
        store.flush()


def _array_digest(arr: np.ndarray) -> list[int]:
    if len(arr) == 0:
        return [0, 0, 0, 0]
    view = arr.view(np.uint8) if arr.dtype == np.bool_ else arr
    return [int(v) for v in _stats(view)]


_CODE_DIGEST: str | None = None


def _code_digest() -> str:
    """A digest of the source of the modules that compute derived arrays."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        root = Path(__file__).resolve().parents[2]
        h = hashlib.sha256()
        for entry in _DERIVED_CODE:
            path = root / entry
            for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
                h.update(f.relative_to(root).as_posix().encode())
                h.update(f.read_bytes())
        _CODE_DIGEST = h.hexdigest()[:32]
    return _CODE_DIGEST
