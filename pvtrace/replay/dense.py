"""Dense ids of 64-bit keys (lock addresses, frame and page numbers), in one compiled pass.

The replay turns every lock key into a small integer so that lock state lives in flat arrays.
Ids follow the sorted order of the values, so a frame's pages get contiguous ids and a
superpage run is an id range. Two methods, chosen by the spread of the values:

- *bitmap*: page and frame numbers are bounded by physical memory, so a bitmap over
  ``[min, max]`` (32 MiB for 1 TiB of RAM in pages) marks the values present and a running
  popcount per 64-bit word turns a value into its rank. No sort at all.
- *hash*: anything else (kernel virtual addresses of locks) goes through an open-addressing
  table; only the distinct values are sorted.

Both are exact; they replace a general sort of millions of values.
"""

from __future__ import annotations

import numba as nb
import numpy as np

# Use the bitmap when it costs at most this many bits per value (or is small anyway).
_BITMAP_BITS_PER_VALUE = 64
_BITMAP_SMALL = 1 << 24


def dense_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, distinct)``: ``ids[i]`` is the rank of ``values[i]`` among the sorted distinct
    values ``distinct`` (int32 ids, uint64 distinct)."""
    values = np.ascontiguousarray(values, dtype=np.uint64)
    if len(values) == 0:
        return np.zeros(0, np.int32), values
    lo, hi = _minmax(values)
    spread = int(hi) - int(lo) + 1
    if spread <= max(_BITMAP_SMALL, _BITMAP_BITS_PER_VALUE * len(values)):
        return _bitmap_ids(values, np.uint64(lo), spread)
    return _hash_ids(values)


@nb.njit(cache=True, nogil=True)
def _minmax(values):
    lo = values[0]
    hi = values[0]
    for v in values:
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    return lo, hi


@nb.njit(cache=True, inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    m2 = np.uint64(0x3333333333333333)
    x = (x & m2) + ((x >> np.uint64(2)) & m2)
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@nb.njit(cache=True, nogil=True)
def _bitmap_ids(values, lo, spread):
    nwords = (spread + 63) >> 6
    bits = np.zeros(nwords, np.uint64)
    for v in values:
        off = np.int64(v - lo)
        bits[off >> 6] |= np.uint64(1) << np.uint64(off & 63)
    below = np.empty(nwords, np.int64)         # distinct values in the words before
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
    ids = np.empty(len(values), np.int32)
    for i in range(len(values)):
        off = np.int64(values[i] - lo)
        w = off >> 6
        mask = (np.uint64(1) << np.uint64(off & 63)) - np.uint64(1)
        ids[i] = below[w] + _popcount(bits[w] & mask)
    return ids, distinct


@nb.njit(cache=True, nogil=True)
def _hash_ids(values):
    cap = 1024
    slots = np.full(cap, -1, np.int32)
    distinct = np.zeros(cap, np.uint64)
    nd = 0
    ids = np.empty(len(values), np.int32)
    mult = np.uint64(0x9E3779B97F4A7C15)
    for i in range(len(values)):
        v = values[i]
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
                ids[i] = nd
                nd += 1
                break
            if distinct[d] == v:
                ids[i] = d
                break
            j = (j + 1) & (cap - 1)
    order = np.argsort(distinct[:nd])
    rank = np.empty(nd, np.int32)
    for r in range(nd):
        rank[order[r]] = r
    for i in range(len(values)):
        ids[i] = rank[ids[i]]
    return ids, distinct[:nd][order]
