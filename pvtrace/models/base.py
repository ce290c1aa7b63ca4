"""The lock-design interface: how a design turns a lock request into lock keys.

A design answers, for every request of the capture, "which locks would this kernel take?":

- pv-list requests (class ``pv``) are keyed by the page they work on: a stock kernel by the
  page's 2 MiB frame or hash slot, the OBM patch by the 4 KiB page itself (a ``2m`` request then
  takes the run of the frame's page locks);
- a design may remove a lock class altogether (OBM removes the pv chunk list lock);
- a design says whether pv read requests share, and whether blocked waiters sleep on a
  turnstile per lock or on one shared by the pages of a frame / hash slot (sibling wakeups).

Everything else (the pmap mutex, other locks) is keyed by its captured lock address. The replay
engine (``pvtrace.replay``) knows nothing of any particular design: adding one is adding a small
subclass of :class:`Design` to this package and naming it in ``pvtrace.models.DESIGNS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pvtrace.models.layout import PAGES_PER_FRAME, Layout, page_of

# Key spaces: a lock key is (space, value); values of different spaces never meet.
SPACE_LOCK = 0    # the captured lock address
SPACE_SLOT = 1    # a stock pv-list lock: frame or hash slot
SPACE_PAGE = 2    # an OBM per-page lock: 4 KiB page number


@dataclass(frozen=True, slots=True)
class PvKeys:
    """Keys of pv-list requests, one entry per request (numpy arrays)."""

    space: int                  # SPACE_SLOT or SPACE_PAGE
    value: np.ndarray           # uint64 key value (for a range: the frame's first page)
    is_range: np.ndarray        # bool: a 2m request taking the frame's 512 page locks
    turnstile: np.ndarray | None  # uint64 turnstile value per request; None: per lock


class Design(ABC):
    """Base of all lock designs. Subclasses set the class attributes and ``pv_keys``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    removed_classes: ClassVar[frozenset[str]] = frozenset()
    pv_shared_reads: ClassVar[bool] = True
    # What a pv-list lock covers: "slot" (a frame or hash slot: a hold without a page is
    # keyed by its lock) or "page" (a hold without a page holds no key: REPLAY.md 2).
    pv_locks: ClassVar[str] = "slot"

    def __init__(self, layout: Layout):
        self.layout = layout

    @property
    def shared_turnstiles(self) -> bool:
        return False

    @abstractmethod
    def pv_keys(self, pa: np.ndarray, is2m: np.ndarray) -> PvKeys:
        """Keys of pv-list requests for pages ``pa`` (``is2m``: the request is a superpage)."""

    def acquisitions_per_request(self, is_range: np.ndarray) -> np.ndarray:
        """How many lock acquisitions the design performs for each pv request."""
        return np.where(is_range, PAGES_PER_FRAME, 1)


class FrameLockDesign(Design):
    """Stock pv-list locks: one rwlock per frame or hash slot, turnstile per lock."""

    def pv_keys(self, pa: np.ndarray, is2m: np.ndarray) -> PvKeys:
        return PvKeys(SPACE_SLOT, self.layout.slot(pa).astype(np.uint64, copy=False),
                      np.zeros(len(pa), bool), None)


class PageLockDesign(Design):
    """OBM-style pv-list locks: one lock per 4 KiB page, turnstiles per frame or hash slot."""

    pv_locks = "page"

    @property
    def shared_turnstiles(self) -> bool:
        return True

    def pv_keys(self, pa: np.ndarray, is2m: np.ndarray) -> PvKeys:
        # In place where it can be (these are millions of values, and each fresh array costs
        # page faults): a superpage's key is its frame's first page, its page number with the
        # low 9 bits cleared.
        value = np.asarray(page_of(pa), np.uint64)
        np.bitwise_and(value, ~np.uint64(PAGES_PER_FRAME - 1), out=value, where=is2m)
        return PvKeys(SPACE_PAGE, value, is2m.astype(bool, copy=False),
                      self.layout.slot(pa).astype(np.uint64, copy=False))
