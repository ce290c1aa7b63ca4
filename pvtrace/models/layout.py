"""How a physical address maps to pv-list lock keys (shared by the designs and the synthesizer).

FreeBSD amd64 (``sys/amd64/amd64/pmap.c``): ``pa_index(pa) = pa >> PDRSHIFT`` (2 MiB frame).

- ``superpage`` (NUMA kernels since 2019): one rwlock per 2 MiB frame (``pv_table[pa_index]``).
- ``hash:N`` (non-NUMA): ``pv_list_locks[pa_index(pa) % N]``, N = MAXCPU (256 before FreeBSD 14,
  then 1024): frames congruent modulo N alias to one lock.

The OBM patch gives every 4 KiB page its own lock (key ``pa >> 12``) but keeps turnstiles per
frame (``superpage``) or per hash slot (``hash:N``); this module gives those keys too.
All functions work elementwise on numpy ``uint64`` arrays as well as on Python ints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pvtrace.errors import PvtraceError

PAGE_SHIFT = 12          # 4 KiB pages
PDR_SHIFT = 21           # 2 MiB superpages
PAGES_PER_FRAME = 1 << (PDR_SHIFT - PAGE_SHIFT)   # 512
# The most pv-list locks a hash layout may have (the kernel's is MAXCPU, 256 or 1024): the
# replay keeps per-lock state, and a bigger N is a typo.
MAX_HASH_LOCKS = 1 << 24


@dataclass(frozen=True, slots=True)
class Layout:
    """A stock pv-list lock layout: ``superpage`` or ``hash:N``."""

    kind: str            # "superpage" or "hash"
    nlocks: int = 0      # N for hash layouts

    @staticmethod
    def parse(text: str) -> Layout:
        text = text.strip().lower()
        if text in ("superpage", "numa", "pv_table"):
            return Layout("superpage")
        m = re.fullmatch(r"hash:(\d{1,12})", text)
        if m and 0 < int(m.group(1)) <= MAX_HASH_LOCKS:
            return Layout("hash", int(m.group(1)))
        raise PvtraceError(f"bad layout {text[:40]!r}: use superpage or hash:N with N from 1 to "
                           f"{MAX_HASH_LOCKS:,} (e.g. hash:256)")

    def __str__(self) -> str:
        return "superpage" if self.kind == "superpage" else f"hash:{self.nlocks}"

    def slot(self, pa):
        """The stock lock (and OBM turnstile) a physical address maps to."""
        frame = np.right_shift(pa, PDR_SHIFT) if isinstance(pa, np.ndarray) else pa >> PDR_SHIFT
        return frame if self.kind == "superpage" else frame % self.nlocks


def frame_of(pa):
    """2 MiB frame number (``pa_index``)."""
    return np.right_shift(pa, PDR_SHIFT) if isinstance(pa, np.ndarray) else pa >> PDR_SHIFT


def page_of(pa):
    """4 KiB page number."""
    return np.right_shift(pa, PAGE_SHIFT) if isinstance(pa, np.ndarray) else pa >> PAGE_SHIFT
