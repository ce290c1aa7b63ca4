"""Per-thread timelines: the design-independent part of a replay (docs/REPLAY.md section 1).

A capture is a global stream of records. The replay needs each thread's own story in order:
which acquisition each ``B``/``S`` wait belongs to (its captured request time is the ``A``
time minus the wait), which ``R`` ends which ``A`` (a stack per thread and lock, for recursive
read locks), and the records that have no partner because the capture started or ended while a
lock was held. This module computes those links once per trace, as arrays, so that every lock
design replayed afterwards shares them.

Records are regrouped by thread (stable, so time order is kept inside a thread) and coded as
small integers; the string dictionaries (lock classes, pmap operations) are kept for reports.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numba as nb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pvtrace.errors import PvtraceError
from pvtrace.replay.dense import dense_ids

EV_CODES = {"A": 0, "R": 1, "B": 2, "S": 3, "P": 4, "E": 5, "X": 6}
EV_A, EV_R, EV_B, EV_S, EV_P, EV_E, EV_X = range(7)
MODE_CODES = {"w": 0, "r": 1, "4k": 2, "2m": 3, "-": 4}
MODE_W, MODE_R, MODE_4K, MODE_2M, MODE_NONE = range(5)
# Longest time span a trace may have (about 146 years): relative times must fit an int64, and
# the replay has bits to spare for its packed scheduling keys.
MAX_SPAN_NS = (1 << 62) - 1


@dataclass(frozen=True, slots=True)
class LinkCounts:
    """Records without a partner, per docs/REPLAY.md section 1, and pairs that cannot be."""

    orphan_waits: int        # B/S followed by no A of the same lock
    held_at_start: int       # R with no A: lock taken before the capture began
    held_at_end: int         # A with no R: lock still held when the capture ended
    mode_mismatch: int       # R paired with an A of the other mode (w, r): records between
                             # them were lost, so the pair's hold spans two acquisitions


@dataclass(frozen=True)
class Timeline:
    """Records regrouped by thread, coded, and linked. All arrays have one entry per record."""

    ts: np.ndarray           # int64, ns relative to t0; records of a thread are contiguous
    ev: np.ndarray           # uint8 EV_*
    cls: np.ndarray          # int16 index into classes; -1 for P/E/X
    lock: np.ndarray         # int32 dense id of the lock address (sorted order), see nlocks
    mode: np.ndarray         # uint8 MODE_*
    pa: np.ndarray           # uint64
    op: np.ndarray           # int16 index into ops
    waited_idx: np.ndarray   # int32, ascending: the A records with attached B/S ns ...
    waited_ns: np.ndarray    # int64: ... and that observed wait (sparse: most never wait)
    spun_idx: np.ndarray     # int32, ascending: the A records with attached S ns (spin) ...
    spun_ns: np.ndarray      # int64: ... and that spin
    partner: np.ndarray      # int32: A -> its R, R -> its A, else -1
    thread_first: np.ndarray  # int64 per thread: index of its first record
    thread_end: np.ndarray   # int64 per thread: one past its last record
    thread_ids: np.ndarray   # int64 per thread: the kernel tid
    nlocks: int              # distinct lock addresses (ids 0..nlocks-1)
    classes: list[str]
    ops: list[str]
    t0: int                  # absolute ts of the earliest record (ns since boot)
    t_last: int              # relative ts of the last record
    counts: LinkCounts
    # Design-independent derived arrays, computed on first use (see replay.run).
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def nthreads(self) -> int:
        return len(self.thread_ids)

    def class_code(self, name: str) -> int:
        return self.classes.index(name) if name in self.classes else -2

    @staticmethod
    def from_events(events: pl.DataFrame) -> Timeline:
        """The timeline of an in-memory ``events`` table (sorted by ts)."""
        return build_timeline(lambda name: events[name].to_arrow(), events.height)

    @staticmethod
    def from_columns(read: Callable[[str], pa.Array | pa.ChunkedArray], nrows: int) -> Timeline:
        """The timeline of an ``events`` table read one column at a time by ``read(name)``
        (e.g. from Parquet), so the whole table is never in memory next to the timeline."""
        return build_timeline(read, nrows)


def _chunks(arr: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]


def _arrays(arr: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """The chunks of a numeric column as numpy arrays (views of Arrow's memory)."""
    return [c.to_numpy() for c in _chunks(arr)]


def _dictionary_chunks(arr: pa.Array | pa.ChunkedArray) -> list[pa.DictionaryArray]:
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    return _chunks(arr)


def _codes(arr: pa.Array | pa.ChunkedArray, mapping: dict[str, int] | None,
           default: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Small-integer codes of a string or dictionary column, without materializing strings.

    Returns ``(parts, values)``: per chunk of the column, its dictionary indices and a lookup
    table (the code of a record is ``lut[index]``), so the mapping is applied in the compiled
    scatter instead of in a separate array. With ``mapping`` the codes are its values (unknown
    strings get ``default``); without, the distinct values present are sorted and numbered.
    ``values``: the sorted distinct strings present.
    """
    chunks = _dictionary_chunks(arr)
    seen: set[str] = set()
    raw = []
    for c in chunks:
        dictionary = c.dictionary.to_pylist()
        indices = c.indices.to_numpy()
        # A dictionary may hold values no record uses (a shared category list): skip those.
        present = np.zeros(len(dictionary), np.bool_)
        if not _present(indices, present):
            raise PvtraceError("a dictionary column has codes past its dictionary: a damaged "
                               "table")
        seen.update(v for v, p in zip(dictionary, present) if p)
        raw.append((indices, dictionary))
    values = sorted(seen)
    ours = mapping if mapping is not None else {v: i for i, v in enumerate(values)}
    parts = [(indices, np.array([ours.get(v, default) for v in d] or [default], np.int64))
             for indices, d in raw]
    return parts, values


@nb.njit(cache=True, nogil=True)
def _present(indices, out):
    """Mark the dictionary entries ``indices`` uses (np.bincount first copied the indices to
    intp: 0.2 s over the four coded columns of 14 M records)."""
    n = len(out)
    for i in range(len(indices)):
        j = indices[i]
        if j < 0 or j >= n:
            return False
        out[j] = True
    return True


def build_timeline(read: Callable[[str], pa.Array | pa.ChunkedArray], nrows: int) -> Timeline:
    """Code, regroup by thread and link the records of an ``events`` table (sorted by ts),
    read column by column with ``read``.

    Once the thread of every record is known, each column is read, decoded and scattered to
    its place independently of the others: two columns at a time, on two threads (Parquet
    decoding and the compiled passes release the GIL). On the 14 M-record bench bundle that
    took the load from 1.4-1.7 s (one thread decoding a column ahead of one scattering) to
    1.0-1.2 s."""
    if nrows == 0:
        raise PvtraceError("the trace has no event records to replay")
    if nrows >= 2**31 - 1:
        raise PvtraceError(f"{nrows:,} records: the replay handles fewer than 2^31")
    with ThreadPoolExecutor(2) as pool:
        try:
            return _build_timeline(read, nrows, pool)
        except BaseException:
            pool.shutdown(cancel_futures=True)      # the columns not started yet
            raise


def _build_timeline(read, nrows: int, pool: ThreadPoolExecutor) -> Timeline:
    # Every column's task reads (decodes) its column, then waits for the records' places.
    places: Future = Future()

    def placed(name: str, place):
        def task():
            col = read(name)
            return place(places.result(), col)
        return task

    def coded(mapping, default, dtype, renumber=None, known=None):
        def place(pos, col):
            parts, values = _codes(col, mapping, default)
            if known is not None and (bad := sorted(set(values) - set(known))):
                # ingest writes only these; another value is a damaged table, which the
                # replay would take for "-" silently
                raise PvtraceError(f"events table has unknown modes {bad[:5]}: not a table "
                                   "pvtrace ingest wrote")
            if renumber is not None:
                codes = renumber(values)
                parts = [(i, codes[np.maximum(lut, 0)]) for i, lut in parts]
            return _scatter_codes(pos, parts, dtype), values
        return place

    def classes_of(values):
        # The luts number every value including "-"; renumber without it, "-" -> -1.
        names = _class_names(values)
        return np.array([names.index(c) if c != "-" else -1 for c in values] or [-1])

    def locks(pos, col):
        lock_ids, lock_vals = dense_ids(_arrays(col))
        return _scatter(pos, 0, lock_ids, np.empty(nrows, np.int32)), len(lock_vals)

    ev_col, tid_col = pool.submit(read, "ev"), pool.submit(read, "tid")
    # numba's first call of a compiled function in a process imports and registers its
    # typing and lowering modules (0.3 s): here, while the first two columns are read, not
    # after.
    _present(np.zeros(0, np.uint32), np.zeros(0, np.bool_))
    # The largest columns first, so that the two threads finish together.
    jobs = {
        "lock": pool.submit(placed("lock", locks)),
        "pa": pool.submit(placed("pa", lambda pos, c: _scatter_numeric(pos, c, np.uint64))),
        "ts": pool.submit(placed("ts", _times)),
        "ns": pool.submit(placed("ns", _sparse)),
        "cls": pool.submit(placed("cls", coded(None, -1, np.int16, classes_of))),
        "mode": pool.submit(placed("mode", coded(MODE_CODES, MODE_NONE, np.uint8,
                                                 known=MODE_CODES))),
        "op": pool.submit(placed("op", coded(None, 0, np.int16))),
    }
    try:
        ev_parts, ev_values = _codes(ev_col.result(), EV_CODES, -1)
        del ev_col
        bad = sorted(set(ev_values) - set(EV_CODES))
        if bad:
            raise PvtraceError(f"events table has unknown event letters {bad}")
        thread_ids, thr = _thread_index(_arrays(tid_col.result()))
        del tid_col
        pos, starts, ends = _positions(thr, len(thread_ids))
        del thr
    except BaseException as exc:
        places.set_exception(exc)       # the column tasks waiting for them stop
        raise
    places.set_result(pos)
    ev = _scatter_codes(pos, ev_parts, np.uint8)
    del ev_parts, pos
    done = {name: job.result() for name, job in jobs.items()}
    places = jobs = None
    _release_arrow_memory()
    lock, nlocks = done["lock"]
    ts, t0 = done["ts"]
    cls, cls_values = done["cls"]
    mode, _ = done["mode"]
    op, ops = done["op"]
    waited_idx, waited_ns, spun_idx, spun_ns, partner, counts = _linked(starts, ends, ev, lock,
                                                                        mode, *done["ns"])
    return Timeline(
        ts=ts, ev=ev, cls=cls, lock=lock, mode=mode, pa=done["pa"], op=op,
        waited_idx=waited_idx, waited_ns=waited_ns, spun_idx=spun_idx, spun_ns=spun_ns,
        partner=partner, thread_first=starts, thread_end=ends, thread_ids=thread_ids,
        nlocks=nlocks, classes=_class_names(cls_values), ops=ops, t0=t0,
        t_last=int(ts.max()), counts=LinkCounts(*(int(c) for c in counts)))


def _class_names(values: list[str]) -> list[str]:
    """The lock classes among a ``cls`` column's values ("-" marks P/E/X records)."""
    return [c for c in values if c != "-"]


def _times(pos: np.ndarray, col) -> tuple[np.ndarray, int]:
    """The time column scattered as ns after its least value, and that value."""
    t0, t_max = int(pc.min(col).as_py()), int(pc.max(col).as_py())
    if t_max - t0 > MAX_SPAN_NS:
        # Relative times are int64 (and the replay packs them with a thread index): a span
        # this long is a corrupt ts, which would otherwise wrap and skew every number.
        raise PvtraceError(f"the events' timestamps span {t_max - t0:,} ns ({t0:,} .. "
                           f"{t_max:,}), more than {MAX_SPAN_NS:,} ns: a corrupt ts field?")
    ts, unsorted = _scatter_times(pos, col, t0)
    if unsorted:
        raise PvtraceError(f"the events table is not in time order ({unsorted:,} records "
                           "earlier than the one before them): not as pvtrace ingest writes "
                           "it; ingest the capture again")
    return ts, t0


def _sparse(pos: np.ndarray, arr) -> tuple[np.ndarray, np.ndarray]:
    """The places of a column's nonzero values (ascending) and the values (int64). For the
    ``ns`` column, nonzero only on B/S records (a few percent): scattering all of it took the
    load 0.1-0.2 s of CPU and an array as large as ``ts``."""
    at, values = [], []
    off = 0
    for c in _arrays(arr):
        nz = np.flatnonzero(c)
        at.append(pos[off + nz])
        values.append(c[nz].astype(np.int64, copy=False))
        off += len(c)
    at, values = np.concatenate(at), np.concatenate(values)
    if len(values) and values.min() < 0:
        # ingest refuses a negative wait; a damaged table's would shorten waits silently
        raise PvtraceError(f"events column ns holds a negative wait ({int(values.min()):,} "
                           "ns): not a table pvtrace ingest wrote")
    # Every total of recorded waits the replay reports (an acquisition's B and S, a class's,
    # the capture's) is a part of this sum: below 2^62 none of them wraps around in int64.
    # (A float sum: its rounding is far below the margin to 2^63.)
    if float(np.sum(values, dtype=np.float64)) > MAX_SPAN_NS:
        total = sum(values.tolist())        # exact, to say
        raise PvtraceError(f"the events' recorded waits (ns) add up to {total:,} ns, more "
                           f"than {MAX_SPAN_NS:,} ns (146 years): a corrupt ns field?")
    order = np.argsort(at, kind="stable")
    return at[order], values[order]


def _scatter_numeric(pos: np.ndarray, arr, dtype) -> np.ndarray:
    """Scatter a numeric column chunk by chunk (no concatenated copy)."""
    out = np.empty(len(pos), dtype)
    off = 0
    for c in _chunks(arr):
        src = c.to_numpy()
        _scatter(pos, off, src, out)
        off += len(src)
    return out


def _scatter_times(pos: np.ndarray, arr, t0: int) -> tuple[np.ndarray, int]:
    """Scatter the time column as int64 ns after ``t0``, chunk by chunk; also returns how many
    records are earlier than the one before them (a table not in time order)."""
    out = np.empty(len(pos), np.int64)
    off = 0
    unsorted = 0
    prev = np.uint64(t0)
    for c in _chunks(arr):
        # unsigned, as the schema has it: mixing signed and unsigned would go via float
        src = c.to_numpy().astype(np.uint64, copy=False)
        unsorted += _scatter_sub(pos, off, src, np.uint64(t0), prev, out)
        if len(src):
            prev = src[-1]
        off += len(src)
    return out, unsorted


def _scatter_codes(pos: np.ndarray, parts, dtype) -> np.ndarray:
    out = np.empty(len(pos), dtype)
    off = 0
    for indices, lut in parts:
        _scatter_lut(pos, off, indices, lut.astype(dtype), out)
        off += len(indices)
    return out


def _release_arrow_memory() -> None:
    """Hand the columns Arrow read back to the system: its allocator keeps freed memory for
    reuse, which would count against the replay's peak."""
    pa.default_memory_pool().release_unused()


_SIGN = np.uint64(1 << 63)


def _thread_index(tid: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct tids, and each record's thread index (threads numbered by
    ascending tid, which is also the replay's tie order). ``tid``: the column's chunks (64-bit
    integers). Flipping the sign bit maps int64 order onto uint64 order for the dense
    ranking."""
    ids, distinct = dense_ids([c.astype(np.int64, copy=False) for c in tid], flip=_SIGN)
    return (distinct ^ _SIGN).view(np.int64), ids


@nb.njit(cache=True, nogil=True)
def _positions(thr, nthr):
    """Counting sort by thread (stable, so time order is kept inside a thread): the place of
    every record, and each thread's first and one-past-last place."""
    n = len(thr)
    counts = np.zeros(nthr + 1, np.int64)
    for i in range(n):
        counts[thr[i] + 1] += 1
    for t in range(nthr):
        counts[t + 1] += counts[t]
    starts = counts[:nthr].copy()
    ends = counts[1:].copy()
    nxt = counts[:nthr].copy()
    pos = np.empty(n, np.int32)
    for i in range(n):
        t = thr[i]
        pos[i] = nxt[t]
        nxt[t] += 1
    return pos, starts, ends


# One column at a time: scattering all of them in one loop would write to (threads x columns)
# places at once and thrash the cache.
@nb.njit(cache=True, nogil=True)
def _scatter(pos, off, src, out):
    for i in range(len(src)):
        out[pos[off + i]] = src[i]
    return out


@nb.njit(cache=True, nogil=True)
def _scatter_lut(pos, off, idx, lut, out):
    for i in range(len(idx)):
        out[pos[off + i]] = lut[idx[i]]


@nb.njit(cache=True, nogil=True)
def _scatter_sub(pos, off, src, t0, prev, out):
    """Scatter ``src - t0``; returns how many values are below the one before them (the
    first compared with ``prev``)."""
    unsorted = 0
    for i in range(len(src)):
        v = src[i]
        unsorted += v < prev
        prev = v
        out[pos[off + i]] = np.int64(v - t0)
    return unsorted


def _linked(starts, ends, ev, lock, mode, ns_at, ns):
    """Attach B/S waits to their A and pair each A with its R: the waits and spins (sparse:
    A record, ns), ``partner`` and the unmatched counts. ``ns_at``, ``ns``: the records with
    a nonzero ``ns`` (ascending) and that value (see _sparse).

    The compiled pass gets its buffers from here, each as large as it could need: numpy's
    zeros are calloc'ed, so the pages never written never become resident, and a buffer
    grown inside the loop would cost far more than its memory (numba cannot keep an array
    reassigned in a loop in registers: the pass ran 13x slower that way).
    """
    n_bs = int(np.count_nonzero((ev == EV_B) | (ev == EV_S)))
    n_s = int(np.count_nonzero(ev == EV_S))
    longest = int((ends - starts).max()) if len(starts) else 0
    waited_idx, spun_idx = np.zeros(n_bs, np.int32), np.zeros(n_s, np.int32)
    waited_ns, spun_ns = np.zeros(n_bs, np.int64), np.zeros(n_s, np.int64)
    stack_lock, stack_idx = np.zeros(longest, np.int64), np.zeros(longest, np.int64)
    partner = np.full(len(ev), -1, np.int32)
    nwaited, nspun, orphan, held_start, held_end, mismatch = _link(
        starts, ends, ev, lock, mode, ns_at, ns, partner, waited_idx, waited_ns, spun_idx,
        spun_ns, stack_lock, stack_idx)
    return (waited_idx[:nwaited].copy(), waited_ns[:nwaited].copy(), spun_idx[:nspun].copy(),
            spun_ns[:nspun].copy(), partner, (orphan, held_start, held_end, mismatch))


@nb.njit(cache=True, nogil=True)
def _link(starts, ends, ev, lock, mode, ns_at, ns, partner, waited_idx, waited_ns, spun_idx,
          spun_ns, stack_lock, stack_idx):
    nwaited = 0
    c = 0               # the next nonzero ns: records are visited in ascending order
    nns = len(ns_at)
    nspun = 0
    orphan = 0
    held_start = 0
    held_end = 0
    mismatch = 0
    for t in range(len(starts)):
        s, e = starts[t], ends[t]
        # B/S attach to the next A of the same lock if only B/S of that lock stand between.
        pend_lock = -1
        pend_ns = 0
        pend_spin = 0
        pend_n = 0
        depth = 0
        for i in range(s, e):
            k = ev[i]
            if k == 2 or k == 3:
                if pend_n > 0 and lock[i] != pend_lock:
                    orphan += pend_n
                    pend_ns = 0
                    pend_spin = 0
                    pend_n = 0
                pend_lock = lock[i]
                while c < nns and ns_at[c] < i:
                    c += 1
                v = ns[c] if c < nns and ns_at[c] == i else 0
                pend_ns += v
                if k == 3:
                    pend_spin += v
                pend_n += 1
                continue
            if pend_n > 0:
                if k == 0 and lock[i] == pend_lock:
                    if pend_ns != 0:
                        waited_idx[nwaited] = i
                        waited_ns[nwaited] = pend_ns
                        nwaited += 1
                    if pend_spin > 0:
                        spun_idx[nspun] = i
                        spun_ns[nspun] = pend_spin
                        nspun += 1
                else:
                    orphan += pend_n
                pend_ns = 0
                pend_spin = 0
                pend_n = 0
            if k == 0:
                stack_lock[depth] = lock[i]
                stack_idx[depth] = i
                depth += 1
            elif k == 1:
                j = depth - 1
                while j >= 0 and stack_lock[j] != lock[i]:
                    j -= 1
                if j < 0:
                    held_start += 1
                else:
                    partner[i] = stack_idx[j]
                    a_mode = mode[stack_idx[j]]
                    if a_mode <= 1 and mode[i] <= 1 and a_mode != mode[i]:    # w and r
                        mismatch += 1
                    partner[stack_idx[j]] = i
                    for m in range(j, depth - 1):
                        stack_lock[m] = stack_lock[m + 1]
                        stack_idx[m] = stack_idx[m + 1]
                    depth -= 1
        orphan += pend_n
        held_end += depth
    return nwaited, nspun, orphan, held_start, held_end, mismatch
