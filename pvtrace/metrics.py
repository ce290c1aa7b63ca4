"""Counters, exact percentiles and HDR histograms of waits and hold times.

Percentiles in reports are exact nearest-rank values over the recorded nanoseconds (the value
at rank ``ceil(p/100 * N)``), so a one-event trace reports its own wait, not a bucket bound.
Distributions are HDR histograms (the ``hdrhistogram`` package, 3 significant digits, ns):
values are first counted per HDR bucket with numpy and then recorded as (value, count) pairs,
so millions of waits record in milliseconds. Reports carry them in the standard compressed
base64 encoding.

A set of values may carry ``extra_zeros``: acquisitions that the design performs but that
never wait (the untouched pages of a superpage run), counted without materializing them.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from hdrh.histogram import HdrHistogram

from pvtrace.replay.jit import bit_length

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
HDR_LOWEST = 1
HDR_HIGHEST = 3_600_000_000_000   # one hour in ns
HDR_DIGITS = 3
HDR_ENCODING = ("HdrHistogram V2 compressed, base64 (decode with any HdrHistogram library, "
                "e.g. hdrh.histogram.HdrHistogram.decode); values in ns, 3 significant digits")


def percentiles(values: np.ndarray, extra_zeros: int = 0, *,
                scratch: bool = False) -> dict[str, int]:
    """Exact nearest-rank p50/p90/p99/p99.9 and max of ``values`` plus ``extra_zeros`` zeros.

    ``scratch``: ``values`` is the caller's temporary and may be reordered (no copy is made).
    """
    n = len(values) + int(extra_zeros)
    out = {name: 0 for name, _ in PERCENTILES}
    out["max"] = 0
    if n == 0:
        return out
    ranks = [max(1, int(np.ceil(p / 100.0 * n - 1e-9))) for _, p in PERCENTILES]
    idx = np.array([r - 1 - extra_zeros for r in ranks] + [n - 1 - extra_zeros])
    valid = idx >= 0
    picked = np.zeros(len(idx), np.int64)
    if valid.any():
        kth = np.unique(idx[valid])
        if scratch:
            values.partition(kth)
            part = values
        else:
            part = np.partition(values, kth)
        picked[valid] = part[idx[valid]]
    for (name, _), v in zip(PERCENTILES, picked[:-1]):
        out[name] = int(v)
    out["max"] = int(picked[-1])
    return out


@nb.njit(cache=True, nogil=True)
def _hdr_counts(values, extra_zeros, mask, unit, half_mag, half, high, counts_len):
    """Counts per HdrHistogram counts index (the package's ``_counts_index_for``, compiled),
    with the smallest and largest value after clamping to [0, high]."""
    counts = np.zeros(counts_len, np.int64)
    counts[0] = extra_zeros
    vmin = high
    vmax = 0
    for x in values:
        v = np.int64(x)
        if v < 0:
            v = 0
        elif v > high:
            v = high
        vmin = min(vmin, v)
        vmax = max(vmax, v)
        bits = bit_length(v | mask)
        bucket = bits - unit - (half_mag + 1)
        counts[((bucket + 1) << half_mag) + (v >> (bucket + unit)) - half] += 1
    if extra_zeros:
        vmin = 0
    return counts, vmin, vmax


def hdr_histogram(values: np.ndarray, extra_zeros: int = 0) -> HdrHistogram:
    """An HDR histogram of ``values`` (ns) plus ``extra_zeros`` zeros; values above one hour
    are clamped to one hour.

    Values are counted per HDR bucket in one compiled pass; each non-empty bucket is then
    recorded once with its count (the exact smallest and largest values stand for their
    buckets, so min and max stay exact). Millions of values take milliseconds.
    """
    hist = HdrHistogram(HDR_LOWEST, HDR_HIGHEST, HDR_DIGITS)
    if len(values) == 0 and not extra_zeros:
        return hist
    counts, vmin, vmax = _hdr_counts(
        np.ascontiguousarray(values), int(extra_zeros), hist.sub_bucket_mask,
        hist.unit_magnitude, hist.sub_bucket_half_count_magnitude, hist.sub_bucket_half_count,
        HDR_HIGHEST, hist.counts_len)
    index_of = hist._counts_index_for      # the package's own mapping, for two values
    rep = {index_of(vmin): vmin, index_of(vmax): vmax}
    for i in np.flatnonzero(counts).tolist():
        value = rep.get(i, hist.get_value_from_index(i))
        if not hist.record_value(value, int(counts[i])):
            raise ValueError(f"HDR histogram refused value {value}")
    return hist


def hdr_encoded(values: np.ndarray, extra_zeros: int = 0) -> str:
    """:func:`hdr_histogram` in the standard compressed, base64 HdrHistogram encoding, which
    any HdrHistogram library decodes."""
    return hdr_histogram(values, extra_zeros).encode().decode("ascii")


def split_spin(waits: np.ndarray, spin_limit_ns: int) -> tuple[int, int]:
    """(spin_ns, block_ns) of waits under a spin limit: each spins min(W, L), blocks the rest."""
    spin = int(np.minimum(waits, spin_limit_ns).sum()) if spin_limit_ns > 0 else 0
    return spin, int(waits.sum()) - spin
