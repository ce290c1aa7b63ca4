"""Steps: a thread's timeline rewritten for one lock design (docs/REPLAY.md sections 2 and 3).

The engine executes, per thread, a list of *steps*: acquire a key, release a run of keys, move
to another page (which matters for true/false classification), end. Each step carries the
captured work that precedes it (its *gap*); only lock waits change in a replay.

This module turns the linked timeline (:mod:`pvtrace.timeline`) plus the design's key for each
record into those steps, in one compiled pass. The design-specific part is entirely in the key
arrays computed beforehand; the walk below applies the same rules to every design:
``CHANGE_PV_LIST_LOCK_TO_PHYS`` switch pairs that become no-ops when both pages share a key,
page moves (``P``) that force a switch the captured kernel did not need, removed lock classes,
locks held at the start or end of the capture.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba as nb
import numpy as np

from pvtrace.replay.jit import NO_REFCOUNT

STEP_ACQ, STEP_REL, STEP_PAGE, STEP_END = 0, 1, 2, 3
FLAG_PV = 1          # a pv-list step (classified true/false, page-tracked)
FLAG_CONT = 2        # continues a superpage run: extends the held range

# One step, one 24-byte record. The engine reads a thread's steps in order while 64 or more
# threads interleave: one stream of records per thread stays within what the hardware can
# prefetch, where ten arrays made ten streams per thread. The small fields share one word:
# bits 0-1 the kind, bit 2 the mode, bits 3-4 the flags, bit 5 the superpage mark, and the
# bits from 12 either the page (a physical address, 4 KiB-aligned: its low bits are the
# fields) or, for a release, the number of keys it releases. Packed so, the records of a
# 14 M-record capture took 240 MB instead of 320 (a third of a replay's fresh memory), and
# the kernel reads a quarter fewer cache lines.
STEP = np.dtype([
    ("gap", np.int64),      # ns of captured work before the step
    ("word", np.uint64),    # kind, mode, flags, is2m; page (ACQ, PAGE) or count (REL)
    ("key", np.int32),      # ACQ key, REL first key
    ("acq", np.int32),      # ACQ its acquisition id; REL first acquisition released; else -1
])
W_KIND = np.uint64(3)               # STEP_*
W_READ = np.uint64(4)               # mode: 0 write, 1 read
W_PV = np.uint64(FLAG_PV << 3)      # FLAG_PV
W_CONT = np.uint64(FLAG_CONT << 3)  # FLAG_CONT
W_2M = np.uint64(32)                # the page is a superpage's
W_SHIFT = np.uint64(12)
W_PAGE = ~np.uint64(0xFFF)          # the page, or the count << W_SHIFT
# The unpacked fields, as a dict of arrays or from one word (Steps.__getattr__ and tests).
FIELDS = ("kind", "mode", "flags", "is2m", "page", "acq_n")


@nb.njit(cache=True, inline="always")
def pack(kind, mode, flags, is2m, high):
    """The word of a step: ``high`` is the page (its low 12 bits are dropped) or a count."""
    return ((np.uint64(high) & W_PAGE) | (np.uint64(kind) & W_KIND)
            | (W_READ if mode else np.uint64(0)) | (np.uint64(flags & 3) << np.uint64(3))
            | (W_2M if is2m else np.uint64(0)))


@nb.njit(cache=True, inline="always")
def step_kind(w):
    return np.int64(w & W_KIND)


@nb.njit(cache=True, inline="always")
def step_mode(w):
    """0 write, 1 read."""
    return np.int64((w >> np.uint64(2)) & np.uint64(1))


@nb.njit(cache=True, inline="always")
def step_page(w):
    return w & W_PAGE


@nb.njit(cache=True, inline="always")
def step_2m(w):
    return (w & W_2M) != np.uint64(0)


@nb.njit(cache=True, inline="always")
def step_count(w):
    """A release's number of keys."""
    return np.int64(w >> W_SHIFT)


def unpack(rec: np.ndarray, field: str) -> np.ndarray:
    """One of :data:`FIELDS` of every record in ``rec``, as its own array."""
    w = rec["word"]
    if field == "kind":
        return (w & W_KIND).astype(np.int8)
    if field == "mode":
        return ((w >> np.uint64(2)) & np.uint64(1)).astype(np.int8)
    if field == "flags":
        return ((w >> np.uint64(3)) & np.uint64(3)).astype(np.int8)
    if field == "is2m":
        return (w & W_2M) != 0
    rel = (w & W_KIND) == STEP_REL
    if field == "page":
        return np.where(rel, np.uint64(0), w & W_PAGE)
    if field == "acq_n":
        return np.where(rel, w >> W_SHIFT, np.uint64(0)).astype(np.int32)
    raise KeyError(field)


def records(n: int, **fields) -> np.ndarray:
    """``n`` step records from per-field values (``gap``, ``key``, ``acq`` and
    :data:`FIELDS`; scalars or sequences; the others 0): for tests and tools."""
    rec = np.zeros(n, STEP)
    for name in ("gap", "key", "acq"):
        if name in fields:
            rec[name] = fields.pop(name)
    f = {name: np.broadcast_to(np.asarray(fields.pop(name, 0)), (n,)) for name in FIELDS}
    if fields:
        raise KeyError(f"not step fields: {sorted(fields)}")
    high = np.where(f["kind"] == STEP_REL, f["acq_n"], f["page"]).astype(np.uint64)
    high = np.where(f["kind"] == STEP_REL, high << W_SHIFT, high)
    rec["word"] = ((high & W_PAGE) | (f["kind"].astype(np.uint64) & W_KIND)
                   | np.where(f["mode"] != 0, W_READ, np.uint64(0))
                   | ((f["flags"].astype(np.uint64) & np.uint64(3)) << np.uint64(3))
                   | np.where(f["is2m"].astype(bool), W_2M, np.uint64(0)))
    return rec


@dataclass(frozen=True)
class Steps:
    """Per-step and per-acquisition arrays for one design. The per-step fields are in the
    records (``steps.gap`` is ``steps.steps["gap"]``, ``steps.kind`` is unpacked from their
    ``word``, see :data:`STEP`)."""

    rec: np.ndarray           # STEP records, threads one after the other (see parts)
    thread_first: np.ndarray  # int64 per thread
    thread_end: np.ndarray    # int64 per thread
    thread_start: np.ndarray  # int64 per thread: replay start time (captured)
    thread_acq: np.ndarray    # int64 per thread: its first acquisition (they are contiguous)
    # per acquisition
    acq_cls: np.ndarray     # int16 class code
    acq_op: np.ndarray      # int16 op code
    acq_extra: np.ndarray   # int16 acquisitions the design performs but need not execute
    clamped_gaps: int
    nested_pv: int
    nsteps: int
    # The slices of ``rec`` that hold steps, in thread order: build_steps leaves unused space
    # between groups of threads built at once. The kernel reads ``rec`` whole.
    parts: list[tuple[int, int]]

    @property
    def steps(self) -> np.ndarray:
        """Every step record, contiguous (a copy when ``rec`` has unused space)."""
        if len(self.parts) == 1 and self.parts[0] == (0, len(self.rec)):
            return self.rec
        return np.concatenate([self.rec[lo:hi] for lo, hi in self.parts])

    def __getattr__(self, name: str) -> np.ndarray:
        if name in STEP.names:
            return self.steps[name]
        if name in FIELDS:
            return unpack(self.steps, name)
        raise AttributeError(name)


@dataclass(frozen=True)
class DesignKeys:
    """What the step builder needs to know of a design, in compact form.

    Lock records keep their timeline lock id unless they are page-keyed (pv-list records with
    a known page, and page moves): those point through ``pvpos`` into per-pv-record key runs.
    Keys are dense ids: lock addresses first (``nlocks`` of them), then the design's pv keys.
    """

    pvpos: np.ndarray         # int32 per record: index into the pv arrays, -1 if not page-keyed
    pv_lo: np.ndarray         # int32 per pv record: first key of its run
    pv_hi: np.ndarray         # int32 per pv record: last key (> pv_lo for a superpage run)
    pv_range: np.ndarray      # bool per pv record: the run is a superpage's page locks
    pv_2m: np.ndarray         # bool per pv record: a superpage request or move (run._pv_2m)
    lock_key: np.ndarray      # int32 per lock id: the key of its records that are not
    #                           page-keyed (itself, or the stock slot of a pv lock: run.py)
    cap_slot: np.ndarray      # int64 per lock id: the captured layout's slot (frame, or
    #                           frame mod N) of a pv lock whose records with a page all name
    #                           one, else -1: keyC of the lock's records without a page
    removed_cls: np.ndarray   # bool per class code: the design has no such lock
    pv_removed: bool          # the design has no pv-list lock (page moves do nothing)
    pv_exclusive: bool        # pv-list read requests take the lock exclusively
    pv_pageless_free: bool    # a pv hold without a page takes no key (per-page designs) until
    #                           a P names its page
    captured_hash: int        # the captured layout: N for hash:N, 0 for superpage
    pv_code: int              # class code of pv-list locks


@dataclass(frozen=True)
class Acquisitions:
    """What the reports need of a replay's steps once the kernel has run: the per-acquisition
    and per-thread facts (the step records, most of the memory, can go)."""

    cls: np.ndarray           # int16 class code per acquisition
    op: np.ndarray            # int16 op code per acquisition
    extra: np.ndarray         # int16 acquisitions performed but not executed (superpage runs)
    thread_acq: np.ndarray    # int64 per thread: its first acquisition
    thread_start: np.ndarray  # int64 per thread: replay start time
    nsteps: int
    clamped_gaps: int
    nested_pv: int

    @staticmethod
    def of(steps: Steps) -> Acquisitions:
        return Acquisitions(steps.acq_cls, steps.acq_op, steps.acq_extra, steps.thread_acq,
                            steps.thread_start, steps.nsteps, steps.clamped_gaps,
                            steps.nested_pv)


def thread_facts(tl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Design-independent facts of each thread (see :func:`_threads`), cached on ``tl``."""
    if "build_threads" not in tl.cache:
        tl.cache["build_threads"] = _threads(tl.thread_first, tl.thread_end, tl.ev, tl.ts,
                                             tl.lock, tl.waited_idx, tl.waited_ns, tl.partner)
    return tl.cache["build_threads"]


# Below this many records the threads are built in one group (see build_steps).
PARALLEL_RECORDS = 1 << 18


class Scratch:
    """Memory a design's steps need only while the design replays, kept for the next design
    of the same replay (``compare`` replays its designs one after the other). Fresh memory
    costs a page fault and a cleared page at its first touch, which here is most of the
    builder's time (see docs/PERFORMANCE.md): the step records and the builder's
    per-record scratch of the bench bundle are 300 MB per design. Arrays handed out are
    uninitialized and valid until the next design asks for the same name."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def empty(self, name: str, n: int, dtype) -> np.ndarray:
        """An uninitialized array of ``n`` ``dtype``, in the memory of the last one named
        ``name`` when that is large enough."""
        nbytes = n * np.dtype(dtype).itemsize
        buf = self._buffers.get(name)
        if buf is None or len(buf) < nbytes:
            self._buffers.pop(name, None)       # freed before its successor is allocated
            buf = self._buffers[name] = np.empty(max(nbytes, 1), np.uint8)
        return buf[:nbytes].view(dtype)


def build_steps(tl, dk: DesignKeys, groups: int | None = None,
                scratch: Scratch | None = None) -> Steps:
    """Build the steps of every thread under the design described by ``dk``.

    The threads are built in ``groups`` groups of about equal records (by default two, from
    :data:`PARALLEL_RECORDS` records on, else one), at once on as many threads: the
    builder releases the GIL, and half the steps' fresh memory is faulted in on each core.
    Each group writes into its own part of one record array, starting at the previous
    group's bound on its steps, so that no step is moved afterwards: between the groups lies
    unused space, never written and so never resident (the kernel finds each thread's steps
    by ``thread_first``/``thread_end``; ``nsteps`` counts the steps). Acquisitions are
    numbered across the groups once all are built. On the 14 M-record bench bundle the
    builder took 0.17-0.30 s instead of 0.43-0.89 s in a fresh process. With ``scratch``,
    the step records live in its memory (valid until the next design's build)."""
    ev = tl.ev
    nthr = tl.nthreads
    if groups is None:
        groups = 2 if len(ev) >= PARALLEL_RECORDS and nthr >= 2 else 1
    # Group boundaries: threads split where their records reach each 1/groups of all.
    cuts = [0, *np.searchsorted(tl.thread_end, [len(ev) * g // groups
                                                for g in range(1, groups)], side="right")
            .tolist(), nthr]
    cuts = sorted(set(min(max(c, 0), nthr) for c in cuts))
    spans = list(zip(cuts, cuts[1:])) or [(0, 0)]
    # A tight bound on each group's steps: an A, R or P yields its key run plus one release
    # (every group is given every run's length, a bound that costs address space only).
    runs = int((dk.pv_hi - dk.pv_lo).sum())
    caps = []
    for lo, hi in spans:
        e = ev[tl.thread_first[lo]:tl.thread_end[hi - 1]] if hi > lo else ev[:0]
        caps.append(2 * (int(np.count_nonzero(e <= 1)) + int(np.count_nonzero(e == 4)))
                    + runs + 2 * (hi - lo) + 16)
    offsets = np.cumsum([0, *caps])
    # Pages beyond the steps actually written never become resident (fresh memory is mapped
    # on first touch), so the bounds cost address space only. Every field of a step is
    # written: the records need no clearing.
    if scratch is not None:
        rec = scratch.empty("rec", int(offsets[-1]), STEP)
        ev_acq = scratch.empty("ev_acq", len(ev), np.int32)
        ev_acq.fill(-1)
    else:
        rec = np.empty(int(offsets[-1]), STEP)
        ev_acq = np.full(len(ev), -1, np.int32)
    t_start, held_idx, held_off = thread_facts(tl)
    # ev_acq is scratch for _build, allocated here (see timeline._linked): an acquisition's
    # id per record (each group writes its own records' entries).
    longest = int((tl.thread_end - tl.thread_first).max()) if nthr else 0
    # per thread: first step, end, start time, first acquisition
    tfirst, tend, tstart, tacq = (np.zeros(nthr, np.int64) for _ in range(4))

    def group(g: int):
        lo, hi = spans[g]
        part = rec[offsets[g]:offsets[g + 1]]
        acls, aop, aextra = (np.zeros(caps[g], np.int16) for _ in range(3))
        # a thread's open non-pv acquisitions (at most its records)
        open_keys, open_acq = np.zeros(longest, np.int64), np.zeros(longest, np.int64)
        # the group's waited acquisitions, from its first record on
        w0 = int(np.searchsorted(tl.waited_idx, tl.thread_first[lo])) if hi > lo else 0
        n, na, clamped, nested = _build(
            tl.thread_first[lo:hi], tl.thread_end[lo:hi], t_start[lo:hi], held_idx,
            held_off[lo:hi + 1], ev, tl.ts, tl.waited_idx[w0:], tl.waited_ns[w0:],
            tl.partner, tl.pa, tl.mode, tl.cls, tl.op, tl.t_last, tl.lock, dk.pvpos,
            dk.pv_lo, dk.pv_hi, dk.pv_range, dk.pv_2m, dk.lock_key, dk.cap_slot,
            dk.removed_cls, dk.pv_removed, dk.pv_exclusive, dk.pv_pageless_free,
            dk.captured_hash, dk.pv_code, part, acls, aop, aextra, ev_acq, open_keys,
            open_acq, tfirst[lo:hi], tend[lo:hi], tstart[lo:hi], tacq[lo:hi])
        return n, na, clamped, nested, acls[:na], aop[:na], aextra[:na]

    if len(spans) == 1:
        built = [group(0)]
    else:
        with ThreadPoolExecutor(len(spans) - 1) as pool:
            others = [pool.submit(group, g) for g in range(1, len(spans))]
            built = [group(0)] + [f.result() for f in others]
    # Steps and acquisitions were numbered within each group: place them.
    acq_base = 0
    for g, ((lo, hi), b) in enumerate(zip(spans, built)):
        tfirst[lo:hi] += offsets[g]
        tend[lo:hi] += offsets[g]
        tacq[lo:hi] += acq_base
        if acq_base:
            _shift_acquisitions(rec, offsets[g], offsets[g] + b[0], acq_base)
        acq_base += b[1]
    if len(built) == 1:
        rec = rec[:built[0][0]]
    return Steps(rec, tfirst, tend, tstart, tacq, *(np.concatenate([b[k] for b in built])
                                                      for k in (4, 5, 6)),
                 sum(int(b[2]) for b in built), sum(int(b[3]) for b in built),
                 sum(int(b[0]) for b in built), [(int(offsets[g]), int(offsets[g] + b[0]))
                                                 for g, b in enumerate(built)])


@nb.njit(cache=True, nogil=True)
def _shift_acquisitions(rec, lo, hi, base):
    """Add ``base`` to the acquisition ids of steps ``lo:hi`` (those that have one)."""
    for i in range(lo, hi):
        if rec[i].acq >= 0:
            rec[i].acq += base


@nb.njit(cache=True, nogil=True)
def _threads(t_first, t_end, ev, ts, lock, waited_idx, waited_ns, partner):
    """Design-independent facts of each thread: its start, and the releases without an
    acquire (locks held when the capture began) as record indices with per-thread offsets.

    A thread starts at its first record, or at the earlier request time of an acquisition
    that is its first record; a thread that holds a lock when the capture begins, at the
    capture's first record: it held the lock from then on (waiters recorded before its
    release waited for it), and its work until its first record is kept."""
    nthr = len(t_first)
    t_start = np.zeros(nthr, np.int64)
    held_off = np.zeros(nthr + 1, np.int64)
    nheld = 0
    for i in range(len(ev)):
        if ev[i] == 1 and partner[i] < 0:
            nheld += 1
    held_idx = np.zeros(nheld, np.int32)
    q = 0
    for t in range(nthr):
        t_start[t] = ts[t_first[t]]
        for i in range(t_first[t], t_end[t]):
            if ev[i] == 1 and partner[i] < 0:
                held_idx[q] = i
                q += 1
        held_off[t + 1] = q
    # A thread's records are in time order, so only a waited acquisition can start earlier
    # than its first record: its request time is the acquisition's minus the wait, when
    # nothing but its own B/S records comes before it. After any other record, the request
    # is clamped to that record's time (REPLAY.md 3): a recorded wait longer than the time
    # since the thread's previous record does not move the thread's start before it.
    t = 0
    for q in range(len(waited_idx)):
        i = waited_idx[q]
        while t_end[t] <= i:
            t += 1
        j = i       # its own B/S: those of its lock right before it (timeline._link)
        while j > t_first[t] and (ev[j - 1] == 2 or ev[j - 1] == 3) and lock[j - 1] == lock[i]:
            j -= 1
        if j == t_first[t]:
            t_start[t] = min(t_start[t], ts[i] - waited_ns[q])
    if nheld:
        first = ts[t_first[0]]
        for t in range(nthr):
            first = min(first, ts[t_first[t]])
        for t in range(nthr):
            if held_off[t + 1] > held_off[t]:
                t_start[t] = min(t_start[t], first)
    return t_start, held_idx, held_off


@nb.njit(cache=True, inline="always")
def _emit_rel(rec, n, lo, a0, count, pv, g):
    """Append a release of the ``count`` keys from ``lo`` (acquisitions a0..a0+count-1; a run
    acquires one key per acquisition); returns the new n."""
    r = rec[n]
    r.word = pack(STEP_REL, 0, FLAG_PV if pv else 0, False, np.uint64(count) << W_SHIFT)
    r.key = lo
    r.acq = a0
    r.gap = g
    return n + 1


@nb.njit(cache=True, inline="always")
def _emit_acq(rec, acls, aop, aextra, n, na, lo, hi, m, pv, pg, big, c, o, run, g):
    """Append acquisitions of keys lo..hi, ascending (a superpage run when ``run``): the first
    carries the gap, the others continue it. Returns the new (n, na)."""
    for k in range(lo, hi + 1):
        r = rec[n]
        r.word = pack(STEP_ACQ, m, (FLAG_PV if pv else 0) | (FLAG_CONT if k > lo else 0), big,
                      pg)
        r.key = k
        r.acq = na
        r.gap = g if k == lo else 0
        acls[na] = c
        aop[na] = o
        if k == lo and run:
            aextra[na] = 512 - (hi - lo + 1)
        n += 1
        na += 1
    return n, na


@nb.njit(cache=True, inline="always")
def _emit_page(rec, n, pg, big, g):
    """Append a page move of a pv hold to page ``pg``; returns the new n."""
    r = rec[n]
    r.word = pack(STEP_PAGE, 0, FLAG_PV, big, pg)
    r.key = 0
    r.acq = -1
    r.gap = g
    return n + 1


@nb.njit(cache=True, nogil=True, **NO_REFCOUNT)   # see _build's doc
def _build(t_first, t_end, t_start, held_idx, held_off, ev, ts, waited_idx, waited_ns, partner,
           pa, rmode, cls, op, t_last, lock,
           pvpos, pv_lo, pv_hi, pv_range, pv_2m, lock_key, cap_slot, removed_cls, pv_removed,
           pv_exclusive, pageless_free, cap_hash,
           pv_code, rec, acls, aop, aextra, ev_acq, open_keys, open_acq, tfirst, tend, tstart,
           tacq):
    """Write each thread's steps under the design into ``rec`` (with the per-acquisition
    ``acls``/``aop``/``aextra`` and the per-thread arrays); returns the step and acquisition
    counts, the clamped gaps and the nested pv holds.

    Every array is the caller's, because this is compiled without numba's reference counting
    (:data:`~pvtrace.replay.jit.NO_REFCOUNT`), which cannot allocate: with it, each use of an
    array inside the helper closures below took an atomic increment and decrement, two thirds
    of the run time (0.53 s against 0.16 s on a 14 M-record bench trace)."""
    # The design's view of record i (see DesignKeys), computed where needed rather than
    # stored per record: at tens of millions of records, every per-record array counts.
    def is_pv(i):
        return (ev[i] <= 3 and cls[i] == pv_code) or (ev[i] == 4 and pa[i] != 0)

    def removed(i):
        if ev[i] <= 3:
            return cls[i] >= 0 and removed_cls[cls[i]]
        return pv_removed and ev[i] == 4 and pa[i] != 0

    def klo(i):
        j = pvpos[i]
        if j >= 0:
            return np.int64(pv_lo[j])
        return np.int64(lock_key[lock[i]]) if ev[i] <= 3 else np.int64(-1)

    def khi(i):
        j = pvpos[i]
        if j >= 0:
            return np.int64(pv_hi[j])
        return np.int64(lock_key[lock[i]]) if ev[i] <= 3 else np.int64(-1)

    def keyless(i):             # a pv lock record without a page that takes no key
        return pageless_free and pvpos[i] < 0 and ev[i] <= 3

    def krange(i):
        j = pvpos[i]
        return j >= 0 and pv_range[j]

    def big(i):                 # a superpage request or move: its page set is the frame
        j = pvpos[i]
        return j >= 0 and pv_2m[j]

    def kmode(i):
        if rmode[i] != 1:
            return 0
        return 0 if pv_exclusive and ev[i] <= 3 and cls[i] == pv_code else 1

    def keyc(i):                # the captured kernel's lock slot of record i's page
        if pvpos[i] < 0:
            # No page: the slot of its captured lock, when the lock's other records tell it
            # (a hold taken without a page whose P then names a page of that same lock: the
            # captured kernel kept the lock, a page-keyed design must switch, rule 3).
            return np.int64(cap_slot[lock[i]]) if ev[i] <= 3 else np.int64(-1)
        frame = np.int64(pa[i] >> np.uint64(21))
        return frame % cap_hash if cap_hash > 0 else frame

    nthr = len(t_first)
    n = 0
    na = 0
    clamped = 0
    nested = 0
    # The waited acquisitions, ascending: every A record passes below in order.
    wq = 0
    nwaited = len(waited_idx)
    next_w = waited_idx[0] if nwaited else -1
    for t in range(nthr):
        s, e = t_first[t], t_end[t]
        tfirst[t] = n
        tacq[t] = na
        s0 = t_start[t]
        tstart[t] = s0
        prev_e = s0
        pending = 0
        # The pv hold under the design: key run, first acquisition, mode, superpage run.
        h_lo = -1
        h_hi = -1
        h_acq = -1
        h_n = 0
        h_mode = 0
        h_range = False
        pv_open = False          # a captured pv hold is open (even if the design removes it)
        prev_keyc = -1
        skip_a = -1
        h_src = -1               # the record that opened the captured hold H (its A, or R)
        nopen = 0
        # Locks held when the capture began: taken, without wait, at the thread's start.
        for q in range(held_off[t], held_off[t + 1]):
            i = held_idx[q]
            if removed(i):
                continue
            if is_pv(i):
                if pv_open:
                    nested += 1
                    continue
                pv_open = True
                h_lo, h_hi, h_acq = klo(i), khi(i), na
                h_n = h_hi - h_lo + 1
                h_mode, h_range, prev_keyc = kmode(i), krange(i), keyc(i)
                h_src = i
                if keyless(i):
                    h_lo = -1
                    h_hi = -1
                    continue
            ev_acq[i] = na
            n, na = _emit_acq(rec, acls, aop, aextra, n, na, klo(i), khi(i), kmode(i),
                              is_pv(i), pa[i], False, cls[i], op[i], krange(i), 0)
        for i in range(s, e):
            k_ev = ev[i]
            if k_ev == 2 or k_ev == 3:
                continue
            start_i = ts[i]
            if i == next_w:              # a waited acquisition: it asked earlier
                start_i -= waited_ns[wq]
                wq += 1
                next_w = waited_idx[wq] if wq < nwaited else -1
            seg = start_i - prev_e
            if seg < 0:
                clamped += 1
                seg = 0
            pending += seg
            prev_e = ts[i]
            if k_ev == 0:                                   # acquire
                if removed(i):
                    if is_pv(i):
                        pv_open = True
                    continue
                if is_pv(i):
                    if i == skip_a:
                        # The switch pair kept the same key: only the page changes.
                        prev_keyc = keyc(i)
                        h_src = i
                        n = _emit_page(rec, n, pa[i], big(i), pending)
                        pending = 0
                        continue
                    if pv_open:
                        nested += 1
                        if h_lo >= 0:
                            n = _emit_rel(rec, n, h_lo, h_acq, h_n, True, pending)
                            pending = 0
                    pv_open = True
                    h_lo, h_hi, h_acq = klo(i), khi(i), na
                    h_n = h_hi - h_lo + 1
                    h_mode, h_range, prev_keyc = kmode(i), krange(i), keyc(i)
                    h_src = i
                    if keyless(i):
                        # Its pages are unknown: under per-page locks it would hold each
                        # only while working on it. No key (and no wait) until a P names one.
                        h_lo = -1
                        h_hi = -1
                        continue
                ev_acq[i] = na
                n, na = _emit_acq(rec, acls, aop, aextra, n, na, klo(i), khi(i), kmode(i),
                                  is_pv(i), pa[i], big(i), cls[i], op[i], krange(i), pending)
                pending = 0
                if not is_pv(i) and partner[i] < 0:
                    open_keys[nopen] = klo(i)
                    open_acq[nopen] = ev_acq[i]
                    nopen += 1
            elif k_ev == 1:                                 # release
                if removed(i):
                    if is_pv(i):
                        pv_open = False
                    continue
                if is_pv(i):
                    if not pv_open:
                        continue
                    if (partner[i] if partner[i] >= 0 else i) != h_src:
                        # The R of a hold a nested A already released (records were lost):
                        # the open hold is another one, which its own R releases.
                        continue
                    if h_lo < 0:                            # a hold without a key ends
                        pv_open = False
                        continue
                    j = i + 1        # the thread's next record but B/S
                    while j < e and (ev[j] == 2 or ev[j] == 3):
                        j += 1
                    # A switch pair names two captured locks: CHANGE_PV_LIST_LOCK never
                    # releases a lock to take it again, so an R and an A of one lock are a
                    # real release, and the work between them is done without it.
                    if (j < e and ev[j] == 0 and is_pv(j) and not removed(j)
                            and lock[j] != lock[i] and klo(j) == h_lo and khi(j) == h_hi
                            and krange(j) == h_range and kmode(j) == h_mode):
                        skip_a = j                          # CHANGE_PV_LIST_LOCK no-op
                        continue
                    n = _emit_rel(rec, n, h_lo, h_acq, h_n, True, pending)
                    pending = 0
                    pv_open = False
                    h_lo = -1
                    h_hi = -1
                else:
                    a = partner[i] if partner[i] >= 0 else i
                    if ev_acq[a] < 0:
                        continue
                    n = _emit_rel(rec, n, klo(a), ev_acq[a], 1, False, pending)
                    pending = 0
            elif k_ev == 4:                                 # page move
                if not pv_open or removed(i) or not is_pv(i):
                    continue
                if h_lo < 0:
                    if pageless_free and keyc(i) == prev_keyc and keyc(i) >= 0:
                        # A hold without a key learns its page, under the lock the captured
                        # kernel kept: it takes that page's key here (rule 3).
                        h_lo, h_hi, h_acq = klo(i), khi(i), na
                        h_n = h_hi - h_lo + 1
                        h_range = krange(i)
                        n, na = _emit_acq(rec, acls, aop, aextra, n, na, klo(i), khi(i),
                                          h_mode, True, pa[i], big(i), pv_code, op[i],
                                          krange(i), pending)
                        pending = 0
                    prev_keyc = keyc(i)
                    continue
                if ((klo(i) != h_lo or khi(i) != h_hi or krange(i) != h_range)
                        and keyc(i) == prev_keyc and keyc(i) >= 0):
                    # The captured kernel kept its lock here; this design must switch.
                    n = _emit_rel(rec, n, h_lo, h_acq, h_n, True, pending)
                    pending = 0
                    h_lo, h_hi, h_acq = klo(i), khi(i), na
                    h_n = h_hi - h_lo + 1
                    h_range = krange(i)
                    n, na = _emit_acq(rec, acls, aop, aextra, n, na, klo(i), khi(i), h_mode,
                                      True, pa[i], big(i), pv_code, op[i], krange(i), 0)
                else:
                    n = _emit_page(rec, n, pa[i], big(i), pending)
                    pending = 0
                prev_keyc = keyc(i)
        # The thread lives until its last record, also when that is a B/S no A follows (the
        # capture ended while it waited): the loop above passed over those.
        if e > s and ts[e - 1] > prev_e:
            pending += ts[e - 1] - prev_e
            prev_e = ts[e - 1]
        # Locks still held when the capture ended are released at its last timestamp.
        if (pv_open and h_lo >= 0) or nopen > 0:
            seg = t_last - prev_e
            pending += seg if seg > 0 else 0
            if pv_open and h_lo >= 0:
                n = _emit_rel(rec, n, h_lo, h_acq, h_n, True, pending)
                pending = 0
            for m in range(nopen - 1, -1, -1):
                n = _emit_rel(rec, n, open_keys[m], open_acq[m], 1, False,
                              pending)
                pending = 0
        r = rec[n]
        r.word = pack(STEP_END, 0, 0, False, 0)
        r.key = 0
        r.acq = -1
        r.gap = pending
        n += 1
        tend[t] = n
    return n, na, clamped, nested
