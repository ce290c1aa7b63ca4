"""Counters, exact percentiles and HDR histograms of waits and hold times.

Percentiles in reports are exact nearest-rank values over the recorded nanoseconds (the value
at rank ``ceil(p/100 * N)``), so a one-event trace reports its own wait, not a bucket bound.
Distributions for files and plots are HDR histograms (the ``hdrhistogram`` package, 3
significant digits): values are first reduced to their HDR bucket with numpy and then recorded
as (value, count) pairs, so millions of waits record in milliseconds.

A set of values may carry ``extra_zeros``: acquisitions that the design performs but that
never wait (the untouched pages of a superpage run), counted without materializing them.
"""

from __future__ import annotations

import numpy as np
from hdrh.histogram import HdrHistogram

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
HDR_LOWEST = 1
HDR_HIGHEST = 3_600_000_000_000   # one hour in ns
HDR_DIGITS = 3


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


def _sub_bucket_shift(values: np.ndarray) -> np.ndarray:
    # HDR with 3 digits keeps 2048 sub-buckets (11 bits) per power of two.
    bits = np.zeros(len(values), np.int64)
    nz = values > 0
    bits[nz] = np.floor(np.log2(values[nz].astype(np.float64))).astype(np.int64) + 1
    return np.maximum(bits - 11, 0)


def hdr_histogram(values: np.ndarray) -> HdrHistogram:
    """An HDR histogram of ``values`` (ns); values above one hour are clamped to one hour."""
    hist = HdrHistogram(HDR_LOWEST, HDR_HIGHEST, HDR_DIGITS)
    if len(values) == 0:
        return hist
    v = np.clip(values.astype(np.int64), HDR_LOWEST, HDR_HIGHEST)
    shift = _sub_bucket_shift(v)
    reduced = (v >> shift) << shift
    uniq, counts = np.unique(reduced, return_counts=True)
    for value, count in zip(uniq.tolist(), counts.tolist()):
        if not hist.record_value(value, count):
            raise ValueError(f"HDR histogram refused value {value}")
    return hist


def split_spin(waits: np.ndarray, spin_limit_ns: int) -> tuple[int, int]:
    """(spin_ns, block_ns) of waits under a spin limit: each spins min(W, L), blocks the rest."""
    spin = int(np.minimum(waits, spin_limit_ns).sum()) if spin_limit_ns > 0 else 0
    return spin, int(waits.sum()) - spin
