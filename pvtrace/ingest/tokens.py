"""Dictionary-encode the event log's token fields (``ev``, ``cls``, ``mode``, ``op``) in one
compiled pass.

pyarrow's CSV reader can build the dictionaries itself, but its memo table (a hash, then a
``memcmp`` per value) took a third of the time it spent reading the bench log: 38 ms of a
16 MiB piece, against 25 ms for the same fields read as plain bytes. A token field has a
handful of distinct values (seven events, four classes, five modes, a few dozen pmap
functions), so a small open-addressing table keyed by the token's bytes as words does the
same work in a few nanoseconds a value: a token of up to 16 bytes is its length and two
words (its first 8 bytes and its last 8, overlapping; bytes one by one below 8, since a
short token may end the buffer), compared whole; a longer one also compares the words
between. The dictionary keeps first appearances in row order, as pyarrow's does, and is
checked for valid UTF-8 (pyarrow's dictionaries are strings); a field with more distinct
values than the table takes (not a pvtrace.d log) is left to pyarrow's encoder.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from pvtrace.ingest.order import _load

TABLE_BITS = 9                   # slots of the table: 512 ...
MAX_DISTINCT = 1 << (TABLE_BITS - 1)   # ... at most half of them used
_ZERO = np.uint8(0)
_WORD = np.uint64(0)
_MIX = np.uint64(0x9E3779B97F4A7C15)


@njit(nogil=True, cache=True, inline="always")
def _words(text, n):
    """(first word, last word) of the ``n`` bytes at address ``text``; bytes one by one
    below 8 (the second word then 0)."""
    if n >= 8:
        return _load(text, _WORD), _load(text + n - 8, _WORD)
    a = np.uint64(0)
    for k in range(n):
        a |= np.uint64(_load(text + k, _ZERO)) << np.uint64(8 * k)
    return a, np.uint64(0)


@njit(nogil=True, cache=True)
def _encode(offsets, data, n_rows, codes, firsts, slot_a, slot_b, slot_n, slot_text,
            slot_code):
    """Codes of the ``n_rows`` values of a binary array (``offsets``: address of its 32-bit
    offsets, already at the array's offset; ``data``: address of its bytes) into ``codes``,
    and the row of each distinct value's first appearance into ``firsts``. Returns the
    number of distinct values, or -1 when there are more than :data:`MAX_DISTINCT`. The
    ``slot_*`` arrays are the table (``slot_code`` -1 where empty)."""
    mask = np.uint64(slot_code.size - 1)
    shift = np.uint64(64 - TABLE_BITS)
    distinct = 0
    for i in range(n_rows):
        start = np.int64(_load(offsets + 4 * i, np.int32(0)))
        n = np.int64(_load(offsets + 4 * i + 4, np.int32(0))) - start
        text = data + start
        a, b = _words(text, n)
        h = (((a ^ (b * _MIX) ^ np.uint64(n)) * _MIX) >> shift) & mask
        while True:
            code = slot_code[h]
            if code < 0:
                if distinct == MAX_DISTINCT:
                    return -1
                slot_code[h] = distinct
                slot_a[h], slot_b[h], slot_n[h], slot_text[h] = a, b, n, text
                firsts[distinct] = i
                codes[i] = distinct
                distinct += 1
                break
            if slot_a[h] == a and slot_b[h] == b and slot_n[h] == n:
                same = True
                other = slot_text[h]
                for k in range(8, n - 8, 8):      # the words between (tokens over 16 bytes)
                    if _load(text + k, _WORD) != _load(other + k, _WORD):
                        same = False
                        break
                if same:
                    codes[i] = code
                    break
            h = (h + np.uint64(1)) & mask
    return distinct


def encode(chunk: pa.Array) -> pa.DictionaryArray:
    """One binary chunk (no nulls) as a dictionary array of strings (int32 indices), the
    dictionary in order of first appearance. Raises ``pa.ArrowInvalid`` when a value is not
    valid UTF-8."""
    n = len(chunk)
    codes = np.empty(n, np.int32)
    firsts = np.empty(MAX_DISTINCT, np.int64)
    size = 1 << TABLE_BITS
    distinct = 0
    if n:
        buffers = chunk.buffers()
        if buffers[0] is not None and chunk.null_count:
            return pc.dictionary_encode(chunk.cast(pa.string()))
        data = buffers[2].address if buffers[2] is not None else 0
        distinct = _encode(buffers[1].address + 4 * chunk.offset, data, n, codes, firsts,
                           np.zeros(size, np.uint64), np.zeros(size, np.uint64),
                           np.zeros(size, np.int64), np.zeros(size, np.int64),
                           np.full(size, -1, np.int32))
        if distinct < 0:
            return pc.dictionary_encode(chunk.cast(pa.string()))
    dictionary = chunk.take(pa.array(firsts[:distinct])).cast(pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), dictionary)
