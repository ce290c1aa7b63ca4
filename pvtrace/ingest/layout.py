"""Which stock pv-list lock layout did the traced kernel use? Inferred from the ``pv`` records.

The stock amd64 kernel maps a physical address to its pv-list lock in one of two ways
(DOMAIN.md, ``PHYS_TO_PV_LIST_LOCK``):

- ``superpage`` (NUMA kernels): one 64-byte ``struct pmap_large_md_page`` per 2 MiB frame in
  ``pv_table``, indexed by ``pa >> 21``; so ``lock - 64 * (pa >> 21)`` is the same number (the
  address of ``pv_table``) for every record.
- ``hash:N`` (non-NUMA kernels): ``pv_list_locks[(pa >> 21) % N]``, 32-byte rwlocks; so
  ``lock - 32 * ((pa >> 21) % N)`` is constant. N is ``MAXCPU``: 256 before FreeBSD 14,
  1024 after; other powers of two are possible on custom kernels.

A candidate layout *fits* when that difference takes one value for at least
:data:`FIT_FRACTION` of the distinct (lock, frame) pairs of the ``pv`` acquisitions that
carry a page (the rest are outliers such as the dummy lock for addresses past the last
segment, or a page recorded a moment late). Among the fitting hash sizes the smallest is
reported: a trace whose frames all lie below N cannot tell N from 2N, and the evidence says
so. One frame fits every layout, so at least two are needed.

Without pages, the spacing of the distinct lock addresses decides: hash locks sit 32 bytes
apart, superpage locks 64 bytes (times the frame distance). Without pv traffic the layout is
``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pvtrace.models.layout import Layout as ReplayLayout

FIT_FRACTION = 0.95
HASH_SIZES = tuple(2 ** k for k in range(4, 15))   # 16 .. 16384
SUPERPAGE_STRIDE = 64
HASH_STRIDE = 32


@dataclass(frozen=True, slots=True)
class Layout:
    layout: str      # "superpage", "hash:N" or "unknown"
    evidence: str    # one sentence a user can check
    assumed: bool = False   # a guess (lock spacing without pages): a capture's own fact wins


def validate(layout: str) -> str:
    """Check a ``--layout`` value (or a capture's ``# layout=`` fact): its canonical form,
    ``superpage`` or ``hash:N``. One parser for ingest and replay: :meth:`Layout.parse
    <pvtrace.models.layout.Layout.parse>` (any N up to its limit: a kernel built with
    ``options MAXCPU=N`` has N pv-list locks)."""
    return str(ReplayLayout.parse(layout))


def detect(events: pl.DataFrame) -> Layout:
    """Infer the layout from the ``pv`` lock records of an events table."""
    if events.height == 0 or "cls" not in events.columns:
        return Layout("unknown", "no pv-list lock records")
    # Acquisitions only: their pa is the page the lock was taken for (a release may already
    # carry the next page), and they are a fifth of the records to look at.
    pv = events.lazy().filter((pl.col("ev") == "A") & (pl.col("cls") == "pv")
                              & (pl.col("lock") != 0))
    # One pass of distinct (lock, frame) pairs, frame null where the page is unknown; the
    # distinct locks follow from it.
    both = pv.select("lock", pl.when(pl.col("pa") != 0).then(pl.col("pa") // (1 << 21))
                     .alias("frame")).unique().collect()
    locks = np.unique(both["lock"].to_numpy())
    pairs = both.filter(pl.col("frame").is_not_null())
    if locks.size == 0:
        return Layout("unknown", "no pv-list lock records")
    if pairs.height:
        found = _from_pages(pairs["lock"].to_numpy(), pairs["frame"].to_numpy())
        if found is not None:
            return found
    return _from_spacing(locks, with_pages=pairs.height > 0)


def _fit(offset: np.ndarray) -> tuple[float, int]:
    """Share of the most common value of ``offset``, and that value."""
    values, counts = np.unique(offset, return_counts=True)
    best = int(np.argmax(counts))
    return counts[best] / offset.size, int(values[best])


def _from_pages(lock: np.ndarray, frame: np.ndarray) -> Layout | None:
    """Fit the layouts to distinct (lock, 2 MiB frame) pairs; None when no layout fits."""
    lock = lock.astype(np.uint64)
    frame = frame.astype(np.uint64)
    n = lock.size
    frames = np.unique(frame).size
    if frames < 2:          # one frame fits every layout
        return None
    share, base = _fit(lock - np.uint64(SUPERPAGE_STRIDE) * frame)   # wraps like the kernel
    if share >= FIT_FRACTION:
        return Layout("superpage", f"lock - 64*(pa>>21) is constant (pv_table at {base:#x}) "
                                   f"for {share:.1%} of {n} (lock, frame) pairs over "
                                   f"{frames} 2 MiB frames")
    fits = []
    for size in HASH_SIZES:
        slot = frame % np.uint64(size)
        share_h, base_h = _fit(lock - np.uint64(HASH_STRIDE) * slot)
        if share_h >= FIT_FRACTION:
            fits.append((size, share_h, base_h))
    if not fits:
        return None
    # The best fit, not the first size that passes: with few frames a smaller table passes
    # the threshold too (hash:32 fits 19 of 20 frames of a hash:1024 capture). Sizes that fit
    # equally well cannot be told apart: the smallest is taken, as a guess (for the frames
    # seen they alias alike), and a capture's own '# layout=' line wins over it.
    best = max(f[1] for f in fits)
    top = [f for f in fits if f[1] == best]
    size, share_h, base_h = top[0]
    text = (f"lock - 32*((pa>>21) % {size}) is constant (pv_list_locks at {base_h:#x}) for "
            f"{share_h:.1%} of {n} (lock, frame) pairs over {frames} 2 MiB frames")
    if len(top) > 1:
        span = int(frame.max() - frame.min()) + 1
        text += (f"; frames span only {span}, so hash sizes up to {top[-1][0]} fit as well "
                 "(assumed)")
    return Layout(f"hash:{size}", text, assumed=len(top) > 1)


def _from_spacing(locks: np.ndarray, *, with_pages: bool) -> Layout:
    why = ("pages span one 2 MiB frame or fit no stock layout" if with_pages
           else "no pages recorded")
    if locks.size < 2:
        return Layout("unknown", f"{why}; only one pv lock address seen")
    gaps = np.diff(locks.astype(np.uint64))
    near = gaps[gaps < np.uint64(1 << 20)]       # drop far outliers (the dummy lock)
    if near.size == 0:
        return Layout("unknown", f"{why}; pv lock addresses too far apart to compare")
    odd32 = np.mean(near % np.uint64(SUPERPAGE_STRIDE) == HASH_STRIDE)
    span = int(locks.max() - locks.min())
    if np.all(near % np.uint64(HASH_STRIDE) == 0) and odd32 > 0:
        size = next((s for s in (256, 1024, *HASH_SIZES) if span < s * HASH_STRIDE),
                    HASH_SIZES[-1])
        return Layout(f"hash:{size}", f"{why}; {locks.size} pv locks 32 bytes apart spanning "
                                      f"{span} bytes (fits {size} locks; assumed)", assumed=True)
    if np.all(near % np.uint64(SUPERPAGE_STRIDE) == 0):
        if locks.size > 1024 or span >= 1024 * HASH_STRIDE:
            return Layout("superpage", f"{why}; {locks.size} pv locks at multiples of 64 bytes "
                                       f"spanning {span} bytes: more than a hash table holds")
        return Layout("unknown", f"{why}; {locks.size} pv locks at multiples of 64 bytes: "
                                 "superpage or a sparse hash, cannot tell")
    return Layout("unknown", f"{why}; pv lock addresses are not 32-byte spaced")
