"""Put parsed events into time order, one Arrow part (a Parquet row group) at a time.

The parsers keep line order and inputs are concatenated in order, so a stable sort on ``ts``
alone breaks ties by (src, line), as SPEC section 1 asks. The permutation is numpy's stable
argsort (a timsort, quick on the few long sorted runs of per-CPU output); each part then
gathers its rows straight from the parsed frame's chunks, so that no sorted copy of a big
capture ever exists whole and no contiguous copy of a chunked column is made (the chunks may
be a memory-mapped spill file, see :mod:`pvtrace.ingest.pvlog`).

The gather is compiled: for each row of a part, which chunk holds it and where (computed once
per part and per distinct chunking, as columns may be chunked differently), then one call per
group of columns with that chunking and element width, loading each value from its chunk's
buffer by address (categorical codes renumbered on the way), a column at a time. A per-chunk
numpy gather costs a Python call per (chunk, column) pair and two fancy-index passes per
value; on 5 M records in 162 chunks it took about twice as long as the Parquet writer it
feeds. One numpy pass per column, with a numpy lookup for the codes, took 1.45 s in all;
one compiled call per group, 0.94 s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pyarrow as pa
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _load(typingctx, addr, like):
    """The value of ``like``'s type stored at byte address ``addr``."""
    if not isinstance(addr, types.Integer) or not isinstance(like, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(signature.return_type)
        return builder.load(builder.inttoptr(args[0], ty.as_pointer()))
    return like(addr, like), codegen


@njit(nogil=True, cache=True)
def _locate(idx, bounds, chunk, local):
    """For each row number ``idx[i]``: its chunk (``bounds`` are the chunks' first rows, then
    the total) and its row within that chunk, by bisection in the few bounds."""
    last = len(bounds) - 2
    for i in range(idx.size):
        r = idx[i]
        lo, hi = 0, last
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            if bounds[mid] <= r:
                lo = mid
            else:
                hi = mid - 1
        chunk[i] = lo
        local[i] = r - bounds[lo]


@njit(nogil=True, cache=True)
def _gather(out, bases, chunk, local, luts, has_lut):
    """``out[j, i]`` = element ``local[i]`` of column ``j``'s chunk ``chunk[i]``, whose buffer
    starts at byte address ``bases[j, chunk[i]]`` (elements of ``out``'s width), mapped
    through ``luts[j]`` where ``has_lut[j]``. One column at a time: the part's rows come
    from a few dozen sorted runs (one per CPU), a few dozen streams of reads the prefetcher
    follows; reading a row's columns together made it follow six times as many, and took
    2.5-3x as long (26 against 10 ms for a million rows of six 64-bit columns)."""
    ncols = out.shape[0]
    width = out.itemsize
    zero = out.dtype.type(0)
    chunked = chunk.size > 0        # else every row is in the one chunk (see _ONE_CHUNK)
    for j in range(ncols):
        mapped = has_lut[j]
        for i in range(out.shape[1]):
            v = _load(bases[j, chunk[i] if chunked else 0] + local[i] * width, zero)
            out[j, i] = luts[j, v] if mapped else v


_ONE_CHUNK = np.zeros(0, np.int64)     # the chunk of every row, when a group has one chunk

FIRST_PART_DIVISOR = 8    # the first part has an eighth of the rows of the others

_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class _Group:
    """Columns gathered together: the same chunk lengths and the same element width. Numeric
    columns move their bits; categorical ones their codes, renumbered through a lookup table
    into the values the column uses, which become the part's dictionary (the same for every
    part). ``_alive`` holds the chunk arrays (or polars' converted copies) whose addresses
    the compiled gather reads."""

    def __init__(self, bounds: np.ndarray, width: int):
        self.bounds = bounds
        self.bits = np.dtype(_UNSIGNED[width])
        self.names: list[str] = []
        self.dtypes: list[np.dtype] = []
        self.dictionaries: list[pa.Array | None] = []
        self.luts: list[np.ndarray | None] = []
        self._alive: list[list[np.ndarray]] = []

    def add(self, name: str, chunks: list[np.ndarray], dictionary: pa.Array | None = None,
            lut: np.ndarray | None = None) -> None:
        self.names.append(name)
        self.dtypes.append(chunks[0].dtype)
        self.dictionaries.append(dictionary)
        self.luts.append(lut)
        self._alive.append(chunks)

    def seal(self) -> None:
        self.bases = np.array([[c.ctypes.data for c in chunks] for chunks in self._alive],
                              dtype=np.int64)
        width = max([len(lut) for lut in self.luts if lut is not None] or [1])
        self.lut = np.zeros((len(self.names), width), self.bits)
        for j, lut in enumerate(self.luts):
            if lut is not None:
                self.lut[j, :len(lut)] = lut
        self.has_lut = np.array([lut is not None for lut in self.luts])

    def take(self, chunk: np.ndarray, local: np.ndarray,
             buffer: np.ndarray | None = None) -> tuple[list[pa.Array], np.ndarray]:
        """The rows at (``chunk``, ``local``) of the group's columns, gathered into
        ``buffer`` when it is large enough; returns the arrays and the buffer used."""
        size = len(self.names) * len(local)
        if buffer is None or buffer.size < size:
            buffer = np.empty(size, self.bits)
        out = buffer[:size].reshape(len(self.names), len(local))
        _gather(out, self.bases, chunk, local, self.lut, self.has_lut)
        # Each row of ``out`` is one column, contiguous: Arrow takes it without a copy.
        arrays = []
        for j, (dtype, dictionary) in enumerate(zip(self.dtypes, self.dictionaries)):
            if dictionary is None:
                arrays.append(pa.array(out[j].view(dtype)))
            else:
                arrays.append(pa.DictionaryArray.from_arrays(pa.array(out[j]), dictionary))
        return arrays, buffer


def _gather_plan(events: pl.DataFrame, in_order: bool = False
                 ) -> tuple[list[_Group], list[tuple[str, pl.Series]], list[str]]:
    """The groups of columns the compiled gather takes, the columns it cannot (with nulls,
    or of another type: a polars gather takes them), and, when the rows are ``in_order``
    already, the numeric columns whose parts are slices of their chunks (no copy at all:
    a gather of the 5 M-record bench log's in time order cost 0.45 s of CPU, most of it
    moving numbers that were in place)."""
    groups: dict[tuple[tuple[int, ...], int], _Group] = {}
    bounds: dict[tuple[int, ...], np.ndarray] = {}    # one array per chunking (see _parts)
    others = []
    sliced = []
    for col in events.iter_columns():
        if col.null_count() or not (col.dtype.is_numeric() or col.dtype == pl.Categorical):
            others.append((col.name, col))
            continue
        if in_order and col.dtype.is_numeric():
            sliced.append(col.name)
            continue
        dictionary = lut = None
        if col.dtype == pl.Categorical:
            # Physical codes index the process-wide categories; keep only the values this
            # column uses, renumbered, as the dictionary.
            chunks = category_codes(col)
            categories = col.dtype.categories.to_series()
            used = code_counts(chunks, categories.len()) > 0
            lut = (np.cumsum(used, dtype=np.uint32) - 1).astype(np.uint32)
            dictionary = (categories.filter(pl.Series(used)).cast(pl.String).to_arrow()
                          .cast(pa.string()))
        else:
            chunks = [np.ascontiguousarray(c.to_numpy()) for c in col.get_chunks()]
        lengths = tuple(len(c) for c in chunks)
        key = (lengths, chunks[0].dtype.itemsize)
        if key not in groups:
            if lengths not in bounds:
                bounds[lengths] = np.cumsum((0,) + lengths, dtype=np.int64)
            groups[key] = _Group(bounds[lengths], key[1])
        groups[key].add(col.name, chunks, dictionary, lut)
    for group in groups.values():
        group.seal()
    return list(groups.values()), others, sliced


def category_codes(col: pl.Series) -> list[np.ndarray]:
    """The physical codes of a categorical column, one contiguous array per chunk. They
    index the process-wide categories, ``col.dtype.categories``."""
    return [np.ascontiguousarray(c.to_numpy()) for c in col.to_physical().get_chunks()]


def code_counts(codes: list[np.ndarray], ncategories: int) -> np.ndarray:
    """Records per category code over the chunks ``codes`` (see :func:`category_codes`).
    (np.bincount would first copy each chunk's 32-bit codes to 64 bits.)"""
    counts = np.zeros((_LANES, ncategories), np.int64)
    for chunk in codes:
        _count_codes(chunk, counts)
    return counts.sum(axis=0)


_LANES = 4


@njit(nogil=True, cache=True)
def _count_codes(codes, counts):
    """Counts into ``_LANES`` rows of ``counts`` in turn: a column's codes come in runs of
    one value (``-`` for every E, P and X record), and one counter bumped again and again
    waits for its last store each time; four take turns (5.9 -> 2.0 ms for the 5 M class
    codes of the bench log)."""
    n = codes.size
    head = n - n % _LANES
    for i in range(0, head, _LANES):
        for lane in range(_LANES):
            counts[lane, codes[i + lane]] += 1
    for i in range(head, n):
        counts[0, codes[i]] += 1


DISTINCT_SPAN = 1 << 24     # distinct_values marks values in a table up to this wide


def distinct_values(col: pl.Series) -> np.ndarray:
    """The distinct values of the integer column ``col`` (no nulls), sorted: marked in a
    table over the column's range, one compiled pass per chunk, when that range is
    narrow (CPU numbers; FreeBSD's thread ids, which count up from 100000); else by polars
    (a hash or a sort of every value, several times slower)."""
    lo, hi = col.min(), col.max()
    if lo is None:
        return np.zeros(0, np.int64)
    if hi - lo >= DISTINCT_SPAN:
        return col.unique().sort().to_numpy().astype(np.int64)
    seen = np.zeros(hi - lo + 1, np.bool_)
    for chunk in col.get_chunks():
        _mark(chunk.to_numpy(), np.int64(lo), seen)
    return np.flatnonzero(seen) + np.int64(lo)


@njit(nogil=True, cache=True)
def _mark(values, lo, seen):
    for i in range(values.size):
        seen[np.int64(values[i]) - lo] = True


def ordered_parts(events: pl.DataFrame, rows: int, recycle: bool = False,
                  check: Callable[[pa.Table], None] | None = None, small_first: bool = True,
                  order: np.ndarray | None = None) -> tuple[Iterator[pa.Table], pa.Table]:
    """``events`` in time order as Arrow tables of ``rows`` rows each (the last one shorter),
    and an empty table of their schema; see the module docstring. Categorical columns become
    dictionary arrays over the values the column uses. The sort itself happens on the first
    step of the iterator, in whichever thread consumes it (the ingest's writer thread, while
    the main thread computes the summary); the next part is gathered in another thread (the
    compiled gather frees the GIL) while the caller writes the current one.

    With ``recycle``, a part is valid only until the caller asks for the next one: the part
    after that is gathered into its memory. Fresh memory costs the kernel a page fault and
    zeroing per page on first write: on the 5 M-record bench log, writing the events took
    1.25-1.45 s with recycling and 1.47-2.3 s without.

    ``check``, when given, is called on each part in order, in the thread that gathers it;
    what it raises reaches the caller when it asks for that part. ``small_first``: the first
    part is smaller than the others (see _parts). ``order``: the rows to take, in time
    order (the caller sorted them, and may take only some); by default all of them, sorted
    here."""
    n = events.height if order is None else len(order)
    if n == 0:
        return iter(()), events.head(0).to_arrow()
    return (_parts(events, rows, recycle, check, small_first, order),
            events.head(0).to_arrow())


def _parts(events: pl.DataFrame, rows: int, recycle: bool,
           check: Callable[[pa.Table], None] | None, small_first: bool,
           order: np.ndarray | None) -> Iterator[pa.Table]:
    if order is None:
        n = events.height
        ts = events.get_column("ts")
        order = None if ts.is_sorted() else np.argsort(ts.to_numpy(), kind="stable")
        del ts
    else:
        n = len(order)
    groups, others, sliced = _gather_plan(events, in_order=order is None)
    names = events.columns

    def part(lo: int, hi: int, spare: list[np.ndarray] | None
             ) -> tuple[pa.Table, list[np.ndarray]]:
        """Rows ``lo:hi`` of the time order, gathered into ``spare`` buffers (reused, see
        ``recycle``) where given; returns the table and its buffers."""
        idx = np.arange(lo, hi) if order is None else order[lo:hi]
        arrays = {}
        spare = spare or []
        buffers = []
        # Columns may be chunked differently (the parser's constant ``src`` is one chunk):
        # each distinct chunking locates the part's rows once.
        located: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for j, group in enumerate(groups):
            where = located.get(id(group.bounds))
            if where is None and len(group.bounds) == 2:      # one chunk: no place to look up
                where = (_ONE_CHUNK, idx)
            elif where is None:
                where = (np.empty(len(idx), np.int64), np.empty(len(idx), np.int64))
                _locate(idx, group.bounds, *where)
            located[id(group.bounds)] = where
            taken, buffer = group.take(*where, spare[j] if j < len(spare) else None)
            arrays.update(zip(group.names, taken))
            buffers.append(buffer)
        for name, col in others:
            arrays[name] = col.gather(idx).to_arrow()
        for name in sliced:
            arrays[name] = pa.chunked_array(
                [c.to_arrow() for c in events.get_column(name).slice(lo, hi - lo).get_chunks()])
        table = pa.Table.from_arrays([arrays[name] for name in names], names=names)
        if check is not None:
            check(table)
        return table, buffers

    # The writer idles until the first part is gathered, so that one is small: the
    # gathering of the next part then overlaps its write from the start.
    first = min(max(rows // FIRST_PART_DIVISOR, 1), n) if small_first else min(rows, n)
    cuts = [0, *range(first, n, rows), n]
    spans = [(lo, hi) for lo, hi in zip(cuts, cuts[1:]) if hi > lo]
    if len(spans) == 1:         # nothing to overlap (the stream's parts): no thread
        yield part(*spans[0], None)[0]
        return
    spare = None        # buffers of a part the caller is done with (``recycle``)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(part, *spans[0], None)
        for k in range(len(spans)):
            current, buffers = pending.result()
            if k + 1 < len(spans):
                pending = pool.submit(part, *spans[k + 1], spare)
            yield current
            del current
            # The caller asks for the next part: it is done with this one.
            spare = buffers if recycle else None
