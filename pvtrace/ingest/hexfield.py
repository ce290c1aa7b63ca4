"""Decode the event log's hexadecimal fields (``lock``, ``pa``) in one compiled pass.

SPEC section 1 writes addresses as ``0x`` and hex digits, or a bare ``0``. polars has no
reader for that: stripping the prefix with ``str.strip_prefix`` copies every string, and
``str.to_integer(base=16)`` then reads the copy: 0.26-0.29 s (0.5 s of CPU) of the 2 s
fast read of the 5 M-line bench log, where this takes 8-14 ns a value (0.04-0.07 s per
column; 30 ns a value when it went digit by digit). A compiled loop reads each string where the CSV reader left it (polars': Arrow string-view
buffers, where a view holds a string of up to 12 bytes inline, else its first bytes and
where the rest is; pyarrow's: binary arrays, offsets into one buffer), and writes the
value, or a null where the text is not a valid address: exactly what
:func:`pvtrace.ingest.pvlog.hex_expr` computes with polars expressions, which the slow path
uses and the property tests compare against.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pyarrow as pa
from numba import njit

from pvtrace.ingest.order import _load

MAX_DIGITS = 16          # significant hex digits of a 64-bit value (leading zeros are free)
_ZERO = np.uint8(0)


# Hex digit values by byte, -1 for a byte that is not one.
_DIGITS = np.full(256, -1, np.int64)
for _c in b"0123456789":
    _DIGITS[_c] = _c - 48
for _c in b"abcdef":
    _DIGITS[_c] = _c - 87
    _DIGITS[_c - 32] = _c - 87


def _bytes(b: int) -> np.uint64:
    """``b`` in every byte of a word."""
    return np.uint64(b * 0x0101010101010101)


# Word constants of _eight (numba reads module globals as compile-time constants).
_HIGH = _bytes(0x80)
_CASE = _bytes(0x20)
_LOW_NIBBLE = _bytes(0x0F)
_LETTER_BIT = _bytes(0x40)
_GE_DIGIT = _bytes(0x80 - 0x30)          # "0"
_LE_DIGIT = _bytes(0x39) | _HIGH          # "9"
_GE_LETTER = _bytes(0x80 - 0x61)         # "a"
_LE_LETTER = _bytes(0x66) | _HIGH         # "f"


@njit(nogil=True, cache=True, inline="always")
def _eight(x):
    """(value, valid) of 8 hex digits loaded as one little-endian word (the first digit in
    the lowest byte), all bytes at once: with every byte below 0x80, ``byte + (0x80 - a)``
    has its high bit set iff byte >= a, and ``(0x80 + b) - byte`` iff byte <= b, and no
    byte carries into the next."""
    folded = x | _CASE                                      # "A"-"F" -> "a"-"f"
    digit = (x + _GE_DIGIT) & (_LE_DIGIT - x)
    letter = (folded + _GE_LETTER) & (_LE_LETTER - folded)
    valid = ((digit | letter) & ~x & _HIGH) == _HIGH        # ~x: every byte ASCII
    v = (x & _LOW_NIBBLE) + ((folded & _LETTER_BIT) >> np.uint64(6)) * np.uint64(9)
    # Nibbles to a number, the first digit the most significant: pairs, then quads, then all.
    v = ((v << np.uint64(4)) | (v >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    v = ((v << np.uint64(8)) | (v >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    v = ((v << np.uint64(16)) | (v >> np.uint64(32))) & np.uint64(0x00000000FFFFFFFF)
    return v, valid


@njit(nogil=True, cache=True)
def _short_or_long(text, n, digits):
    """(value, valid) of the ``n`` bytes at ``text``, digit by digit (see :func:`_decode`)."""
    if n == 1:
        return np.uint64(0), _load(text, _ZERO) == 48                   # "0"
    if n < 3 or _load(text, _ZERO) != 48 or _load(text + 1, _ZERO) != 120:   # "0x"
        return np.uint64(0), False
    # No branch per digit: a bad byte makes ``bad`` negative. Digits beyond the 16 a
    # value holds must be leading zeros (shifted out, so they must add nothing).
    value = np.uint64(0)
    bad = np.int64(0)
    first = max(2, n - MAX_DIGITS)
    for p in range(2, first):
        bad |= -1 if _load(text + p, _ZERO) != 48 else 0
    for p in range(first, n):
        d = digits[_load(text + p, _ZERO)]
        bad |= d
        value = (value << np.uint64(4)) | np.uint64(d & 15)
    if bad < 0:
        return np.uint64(0), False
    return value, True


@njit(nogil=True, cache=True)
def _decode(views, bufs, offsets, data, validity, offset, digits, out, ok):
    """Decode ``len(out)`` strings of one Arrow array into ``out[i]`` and ``ok[i]`` (False
    for a null or invalid string). A string-view array (polars') when ``views`` (the byte
    address of its 16-byte views) is not 0, ``bufs`` the addresses of its data buffers;
    else a binary or string array (pyarrow's), 32-bit ``offsets`` into ``data``.
    ``validity`` is the address of the validity bitmap (0: no nulls), ``offset`` the
    array's offset into all of them, ``digits`` the table of digit values by byte.

    The usual address (9 to 16 digits) is read as two words, its first 8 digits and its
    last 8 (overlapping when fewer than 16), both inside the text: 2-3x faster than a loop
    over the digits. Other lengths take :func:`_short_or_long`. (The same code as an
    inlined helper made the whole loop several times slower.)"""
    for i in range(len(out)):
        j = offset + i
        if validity != 0 and (_load(validity + (j >> 3), _ZERO) >> (j & 7)) & 1 == 0:
            out[i] = 0
            ok[i] = False
            continue
        if views != 0:
            view = views + 16 * j
            n = np.int64(_load(view, np.uint32(0)))
            if n <= 12:
                text = view + 4
            else:
                text = (bufs[_load(view + 8, np.uint32(0))]
                        + np.int64(_load(view + 12, np.uint32(0))))
        else:
            start = np.int64(_load(offsets + 4 * j, np.int32(0)))
            n = np.int64(_load(offsets + 4 * j + 4, np.int32(0))) - start
            text = data + start
        if n == 1:      # a bare "0" (an event that names no lock): most of a lock column
            out[i] = 0
            ok[i] = _load(text, _ZERO) == 48
        elif n > 10 and n <= 2 + MAX_DIGITS and _load(text, np.uint16(0)) == 0x7830:   # "0x"
            first, ok_first = _eight(_load(text + 2, np.uint64(0)))
            last, ok_last = _eight(_load(text + n - 8, np.uint64(0)))
            valid = ok_first and ok_last
            value = ((first >> np.uint64(4 * (2 + MAX_DIGITS - n))) << np.uint64(32)) | last
            out[i] = value if valid else np.uint64(0)
            ok[i] = valid
        else:
            out[i], ok[i] = _short_or_long(text, n, digits)


_NO_BUFS = np.zeros(1, np.int64)


def _chunk_values(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid) of one Arrow string-view, string or binary chunk."""
    n = len(chunk)
    out = np.empty(n, np.uint64)
    ok = np.empty(n, np.bool_)
    if n:
        buffers = chunk.buffers()
        validity = buffers[0].address if buffers[0] is not None else 0
        if pa.types.is_string_view(chunk.type):
            bufs = np.array([b.address for b in buffers[2:]] or [0], np.int64)
            _decode(buffers[1].address, bufs, 0, 0, validity, chunk.offset, _DIGITS, out, ok)
        else:       # binary or string: 32-bit offsets, then the bytes
            data = buffers[2].address if buffers[2] is not None else 0
            _decode(0, _NO_BUFS, buffers[1].address, data, validity, chunk.offset, _DIGITS,
                    out, ok)
    return out, ok


def decode_arrow(chunk: pa.Array) -> pa.Array:
    """One Arrow string-view, string or binary chunk decoded as :func:`decode` does."""
    return decode_arrow_valid(chunk)[0]


def decode_arrow_valid(chunk: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """:func:`decode_arrow`, and as numpy arrays its values (0 where not valid) and which
    are valid."""
    values, ok = _chunk_values(chunk)
    mask = None if ok.all() else pa.py_buffer(np.packbits(ok, bitorder="little"))
    return (pa.Array.from_buffers(pa.uint64(), len(values), [mask, pa.py_buffer(values)]),
            values, ok)


def decode(column: pl.Series) -> pl.Series:
    """``column`` (strings) as UInt64 addresses, null where a string is null or not ``0x``
    and 1 to 16 significant hex digits, or ``0``. Chunks stay as they are."""
    parts = []
    for chunk in column.get_chunks():
        arrow = chunk.to_arrow(compat_level=pl.CompatLevel.newest())
        if not pa.types.is_string_view(arrow.type):
            arrow = arrow.cast(pa.string_view())
        parts.append(pl.from_arrow(decode_arrow(arrow)))
    if not parts:
        return pl.Series(column.name, [], pl.UInt64)
    return (pl.concat(parts, rechunk=False) if len(parts) > 1 else parts[0]).alias(column.name)


def decode_columns(frame: pl.DataFrame, names: tuple[str, ...]) -> pl.DataFrame:
    """``frame`` with its columns ``names`` decoded (see :func:`decode`), in parallel: the
    compiled loop frees the GIL."""
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        decoded = list(pool.map(decode, (frame.get_column(n) for n in names)))
    return frame.with_columns(decoded)
