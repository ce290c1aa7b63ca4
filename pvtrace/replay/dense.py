"""Dense ids of 64-bit keys (lock addresses, frame and page numbers), in compiled passes.

The replay turns every lock key into a small integer so that lock state lives in flat arrays.
Ids follow the sorted order of the values, so a frame's pages get contiguous ids and a
superpage run is an id range. Three methods, chosen by the spread of the values:

- *table*: a spread of at most 65,536 values (a capture's thread ids) gets a table of the rank
  of every value in it: one lookup per value.
- *bitmap*: page and frame numbers are bounded by physical memory, so a bitmap over
  ``[min, max]`` (32 MiB for 1 TiB of RAM in pages) marks the values present and a running
  popcount per 64-bit word turns a value into its rank. No sort at all.
- *hash*: anything else (kernel virtual addresses of locks) goes through an open-addressing
  table; only the distinct values are sorted.

All three are exact; they replace a general sort of millions of values.
"""

from __future__ import annotations

import numba as nb
import numpy as np

# Use a table of ranks (an int32 per value in the spread) when it fits in a core's cache (a
# capture's thread ids; a larger one, 8 MB for 2 M pages, made the lookups twice as slow as
# the bitmap's); else the bitmap when it costs at most this many bits per value (or is small
# anyway).
_TABLE_SMALL = 1 << 16
_BITMAP_BITS_PER_VALUE = 64
_BITMAP_SMALL = 1 << 24


def dense_ids(values, flip: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, distinct)``: ``ids[i]`` is the rank of ``values[i] ^ flip`` among the sorted
    distinct values ``distinct`` (of ``values ^ flip``; int32 ids, uint64 distinct).

    ``values``: an array of 64-bit integers, or a list of them taken as one (the chunks of a
    column read from Parquet: no concatenated copy). ``flip``: XORed into every value first,
    e.g. the sign bit so that int64 order becomes uint64 order (no flipped copy either; on
    the 14 M-record bench capture the two copies of the thread ids cost the timeline load
    0.1 s)."""
    chunks = [_u64(c) for c in (values if isinstance(values, (list, tuple)) else [values])]
    n = sum(len(c) for c in chunks)
    flip = np.uint64(flip)
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.uint64)
    bounds = [_minmax(c, flip) for c in chunks if len(c)]
    lo, hi = min(int(b[0]) for b in bounds), max(int(b[1]) for b in bounds)
    spread = hi - lo + 1
    lo = np.uint64(lo)      # (a Python int would be typed int64 by numba)
    if spread <= _TABLE_SMALL:
        return _by_table(chunks, n, lo, spread, flip)
    if spread <= max(_BITMAP_SMALL, _BITMAP_BITS_PER_VALUE * n):
        return _by_bitmap(chunks, n, lo, spread, flip)
    return _by_hash(chunks, n, flip)


def _by_table(chunks, n, lo, spread, flip):
    present = np.zeros(spread, np.uint8)
    for c in chunks:
        _table_mark(c, lo, flip, present)
    rank, distinct = _table_rank(present, lo)
    ids = np.empty(n, np.int32)
    off = 0
    for c in chunks:
        _table_assign(c, lo, flip, rank, ids, off)
        off += len(c)
    return ids, distinct


def _by_bitmap(chunks, n, lo, spread, flip):
    bits = np.zeros((spread + 63) >> 6, np.uint64)
    for c in chunks:
        _bitmap_mark(c, lo, flip, bits)
    below, distinct = _bitmap_rank(bits, lo)
    ids = np.empty(n, np.int32)
    off = 0
    for c in chunks:
        _bitmap_assign(c, lo, flip, bits, below, ids, off)
        off += len(c)
    return ids, distinct


def _by_hash(chunks, n, flip):
    table = (np.full(1024, -1, np.int32), np.zeros(1024, np.uint64), 0)
    ids = np.empty(n, np.int32)
    off = 0
    for c in chunks:
        table = _hash_chunk(c, flip, *table, ids, off)
        off += len(c)
    _, distinct, nd = table
    return ids, _rank(distinct[:nd], ids)


def _u64(values) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind in "iu" and values.dtype.itemsize == 8:
        return np.ascontiguousarray(values).view(np.uint64)
    return np.ascontiguousarray(values, dtype=np.uint64)


@nb.njit(cache=True, nogil=True)
def _minmax(values, flip):
    lo = values[0] ^ flip
    hi = lo
    for v in values:
        v ^= flip
        lo = min(lo, v)
        hi = max(hi, v)
    return lo, hi


@nb.njit(cache=True, nogil=True)
def _table_mark(values, lo, flip, present):
    for v in values:
        present[np.int64((v ^ flip) - lo)] = 1


@nb.njit(cache=True, nogil=True)
def _table_rank(present, lo):
    """Per offset in the spread, the rank of its value among those present; and the values
    present, ascending."""
    total = 0
    for x in present:
        total += x
    distinct = np.empty(total, np.uint64)
    rank = np.empty(len(present), np.int32)
    k = 0
    for j in range(len(present)):
        rank[j] = k
        if present[j]:
            distinct[k] = lo + np.uint64(j)
            k += 1
    return rank, distinct


@nb.njit(cache=True, nogil=True)
def _table_assign(values, lo, flip, rank, ids, at):
    for i in range(len(values)):
        ids[at + i] = rank[np.int64((values[i] ^ flip) - lo)]


@nb.njit(cache=True, inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    m2 = np.uint64(0x3333333333333333)
    x = (x & m2) + ((x >> np.uint64(2)) & m2)
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@nb.njit(cache=True, nogil=True)
def _bitmap_mark(values, lo, flip, bits):
    for v in values:
        off = np.int64((v ^ flip) - lo)
        bits[off >> 6] |= np.uint64(1) << np.uint64(off & 63)


@nb.njit(cache=True, nogil=True)
def _bitmap_rank(bits, lo):
    """Per word, the distinct values in the words before it; and the distinct values."""
    nwords = len(bits)
    below = np.empty(nwords, np.int64)
    total = 0
    for w in range(nwords):
        below[w] = total
        total += _popcount(bits[w])
    distinct = np.empty(total, np.uint64)
    k = 0
    for w in range(nwords):
        word = bits[w]
        while word:
            b = _popcount((word & (~word + np.uint64(1))) - np.uint64(1))
            distinct[k] = lo + np.uint64(w * 64 + b)
            k += 1
            word &= word - np.uint64(1)
    return below, distinct


@nb.njit(cache=True, nogil=True)
def _bitmap_assign(values, lo, flip, bits, below, ids, at):
    for i in range(len(values)):
        off = np.int64((values[i] ^ flip) - lo)
        w = off >> 6
        mask = (np.uint64(1) << np.uint64(off & 63)) - np.uint64(1)
        ids[at + i] = below[w] + _popcount(bits[w] & mask)


def _bitmap_ids(values, lo, spread):
    """The bitmap method alone on one array (for tests)."""
    values = _u64(values)
    return _by_bitmap([values], len(values), np.uint64(lo), spread, np.uint64(0))


@nb.njit(cache=True, nogil=True)
def _hash_chunk(values, flip, slots, distinct, nd, ids, at):
    """Number the values of one chunk in order of first appearance, in an open-addressing
    table (``slots``: index into ``distinct``) carried from chunk to chunk; grows it when half
    full. Returns the table."""
    cap = len(slots)
    mult = np.uint64(0x9E3779B97F4A7C15)
    for i in range(len(values)):
        v = values[i] ^ flip
        j = np.int64((v * mult) >> np.uint64(32)) & (cap - 1)
        while True:
            d = slots[j]
            if d < 0:
                if 2 * (nd + 1) > cap:
                    cap *= 2
                    slots = np.full(cap, -1, np.int32)
                    grown = np.zeros(cap, np.uint64)
                    grown[:nd] = distinct[:nd]
                    distinct = grown
                    for q in range(nd):
                        jq = np.int64((distinct[q] * mult) >> np.uint64(32)) & (cap - 1)
                        while slots[jq] >= 0:
                            jq = (jq + 1) & (cap - 1)
                        slots[jq] = q
                    j = np.int64((v * mult) >> np.uint64(32)) & (cap - 1)
                    continue
                slots[j] = nd
                distinct[nd] = v
                ids[at + i] = nd
                nd += 1
                break
            if distinct[d] == v:
                ids[at + i] = d
                break
            j = (j + 1) & (cap - 1)
    return slots, distinct, nd


@nb.njit(cache=True, nogil=True)
def _rank(distinct, ids):
    """Renumber ids of first appearance by the sorted order of their values; the values
    sorted."""
    nd = len(distinct)
    order = np.argsort(distinct)
    rank = np.empty(nd, np.int32)
    for r in range(nd):
        rank[order[r]] = r
    for i in range(len(ids)):
        ids[i] = rank[ids[i]]
    return distinct[order]


def _hash_ids(values):
    """The hash method alone on one array (for tests)."""
    values = _u64(values)
    return _by_hash([values], len(values), np.uint64(0))
