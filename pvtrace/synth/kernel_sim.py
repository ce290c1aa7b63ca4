"""The ground-truth kernel: runs the thread programs under one lock design and logs what happens.

This is a discrete-event simulation of the pmap locks a FreeBSD kernel takes while the
programs of :mod:`pvtrace.synth.workload` run, one thread per CPU. It is written apart from
``pvtrace.replay`` on purpose (it never imports it): the replay *predicts* waits from a stock
capture, this module *measures* them by running the same work under the design itself, and the
tests compare the two. Both follow the lock rules of ``docs/REPLAY.md`` section 4:

- a thread has one pending step; the next one executed is the smallest
  ``(time, priority, thread)``, releases and page moves before acquisitions (priority 0 / 1);
- grants are FIFO by request time; readers share, but never overtake a queued writer;
- a wait of W ns spins ``min(W, L)`` and blocks the rest (``L`` = spin limit); a blocked
  waiter runs ``wakeup_ns`` after the release that granted it, and its wait (and the ``B``
  record's ns, as lockstat's sleep time) lasts until then;
- OBM keeps turnstiles per frame (``superpage``) or hash slot (``hash:N``): when a release
  frees page locks (one, or a 2 MiB run's 512 at one instant), every waiter asleep
  (``t - request > L``) on their turnstile whose own page that release did not free is one
  *sibling wakeup*;
- a pv wait is *true* when a thread holding or queued for the lock works on a page the waiter
  needs, *false* (aliasing) otherwise.

Designs (``kernel``):

- ``stock``: one rwlock per frame (``superpage``) or per ``frame % N`` (``hash:N``), read mode
  for queries; ``CHANGE_PV_LIST_LOCK_TO_PHYS`` switches only when the lock changes; one
  pv-chunk-list mutex per domain.
- ``obm-pvc``: a one-byte exclusive lock per 4 KiB page (a 2 MiB operation takes the frame's
  512 page locks in ascending order); chunk-list mutexes kept.
- ``obm``: as ``obm-pvc`` without the chunk-list mutexes (their work stays, their waits go).
"""

from __future__ import annotations

import heapq
from array import array
from collections import deque
from dataclasses import dataclass

import numpy as np

from pvtrace.errors import PvtraceError
from pvtrace.models.layout import PAGE_SHIFT, PAGES_PER_FRAME, PDR_SHIFT, Layout
from pvtrace.synth.workload import (ACQ_PMAP, ACQ_PVC, E, MODE_R, PV_REL, PV_TO, REL_PMAP,
                                    REL_PVC, SZ_2M, WITH_P, X, Workload)

KERNELS = ("stock", "obm-pvc", "obm")

# Record codes (the writer turns them into text).
EV_A, EV_R, EV_B, EV_S, EV_P, EV_E, EV_X = range(7)
EV_NAMES = ("A", "R", "B", "S", "P", "E", "X")
CLS_NONE, CLS_PV, CLS_PVC, CLS_PMAP = range(4)
CLS_NAMES = ("-", "pv", "pvc", "pmap")
M_NONE, M_W, M_R, M_4K, M_2M = range(5)
MODE_NAMES = ("-", "w", "r", "4k", "2m")

# Kernel virtual addresses of the locks, shaped like a real amd64 kernel's so that
# `pvtrace ingest`'s layout detector recognises the stock layouts.
PV_TABLE = 0xFFFFFE0001000000        # superpage: &pv_table[frame].pv_lock, 64-byte entries
PV_LIST_LOCKS = 0xFFFFFFFF81E3C000   # hash:N: &pv_list_locks[frame % N], 32-byte rwlocks
VM_PAGE_ARRAY = 0xFFFFFE0040000000   # obm: one-byte lock in md_page of struct vm_page ...
VM_PAGE_SIZE = 104                   # ... sizeof(struct vm_page) on amd64
MD_LOCK_OFFSET = 0x5A
PMAP_BASE = 0xFFFFF80003000000       # struct pmap (pm_mtx first) of each address space
PMAP_STRIDE = 0x1000
PV_CHUNKS = 0xFFFFFFFF81D1E000       # pv_chunks[domain].pvc_lock, cache-line aligned
PV_CHUNKS_STRIDE = 0x80

TS0 = 1_000_000_000_000              # the capture starts 1000 s after boot

_K_PMAP, _K_PVC, _K_PV = 1 << 60, 2 << 60, 3 << 60
_KEY_MASK = (1 << 60) - 1
_PRIO_REL, _PRIO_ACQ = 0, 1


@dataclass(frozen=True, slots=True)
class SimParams:
    kernel: str = "stock"
    layout: str = "superpage"
    spin_limit_ns: int = 10_000      # see pvtrace.cli.synth: adaptive spinning on a running owner
    wakeup_ns: int = 0


@dataclass
class SimResult:
    """Records (column arrays, per thread in time order) and the ground truth."""

    columns: dict[str, np.ndarray]
    truth: dict
    ncpu: int


class _Lock:
    __slots__ = ("writer", "readers", "queue")

    def __init__(self) -> None:
        self.writer = -1
        self.readers: dict[int, int] = {}
        self.queue: deque[int] = deque()


def _percentiles(nonzero: list[int], zeros: int) -> dict[str, int]:
    names = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
    n = len(nonzero) + zeros
    if n == 0:
        return {k: 0 for k, _ in names} | {"max": 0}
    arr = np.concatenate([np.zeros(zeros, dtype=np.int64), np.sort(np.asarray(nonzero,
                                                                               dtype=np.int64))])
    out = {k: int(arr[max(int(np.ceil(q * n)) - 1, 0)]) for k, q in names}
    out["max"] = int(arr[-1])
    return out


def simulate(work: Workload, params: SimParams) -> SimResult:
    """Run every program under ``params.kernel`` and return the records and the truth."""
    if params.kernel not in KERNELS:
        raise PvtraceError(f"unknown kernel {params.kernel!r}: use one of {', '.join(KERNELS)}")
    layout = Layout.parse(params.layout)
    obm = params.kernel != "stock"
    no_pvc = params.kernel == "obm"
    spin_limit, wakeup = int(params.spin_limit_ns), int(params.wakeup_ns)
    if spin_limit < 0 or wakeup < 0:
        raise PvtraceError("--spin-limit and --wakeup-ns must be >= 0")
    hashed = layout.kind == "hash"
    nlocks = layout.nlocks
    progs = work.programs
    n = len(progs)

    recs = array("Q")                  # 9 fields per record, flat: compact and fast to extend
    emit = recs.extend
    locks: dict[int, _Lock] = {}
    heap: list[tuple[int, int, int]] = []
    # per-thread state
    pc = [0] * n
    held: list[list[int]] = [[] for _ in range(n)]     # pv keys held (ascending)
    held_cover: list[int | None] = [None] * n
    held_mode = [M_W] * n
    cur_lo, cur_hi = [0] * n, [0] * n                  # pages the thread works on
    # page moves a thread's advance() passed on its way to its next lock step, each applied
    # at its own time (when another thread's wait is classified, or the thread's next step)
    pend: list[deque] = [deque() for _ in range(n)]
    want_lo, want_hi = [0] * n, [0] * n
    acq_keys: list[list[int]] = [[] for _ in range(n)]
    acq_idx, acq_mode, acq_cls, acq_op = [0] * n, [M_W] * n, [0] * n, [0] * n
    acq_pv_cover: list[int | None] = [None] * n
    acquiring = [False] * n
    switching = [False] * n
    wait_req, wait_true = [0] * n, [False] * n
    # turnstile -> {tid: (key, request)} of waiters for obm page locks
    turnstiles: dict[int, dict[int, tuple[int, int]]] = {}
    st = {"acq": [0, 0, 0, 0], "cont": [0, 0, 0, 0], "wait": [0, 0, 0, 0],
          "spin": 0, "block": 0, "true": [0, 0], "false": [0, 0], "sib": 0}
    nonzero: list[int] = []
    acq_cnt = st["acq"]

    addr_cache: dict[int, int] = {}

    def lock_addr(key: int) -> int:
        addr = addr_cache.get(key)
        if addr is None:
            addr = addr_cache[key] = _lock_addr(key)
        return addr

    def _lock_addr(key: int) -> int:
        kind, v = key & ~_KEY_MASK, key & _KEY_MASK
        if kind == _K_PV:
            if obm:
                return VM_PAGE_ARRAY + VM_PAGE_SIZE * v + MD_LOCK_OFFSET
            return PV_LIST_LOCKS + 32 * v if hashed else PV_TABLE + 64 * v
        if kind == _K_PMAP:
            return PMAP_BASE + PMAP_STRIDE * v
        return PV_CHUNKS + PV_CHUNKS_STRIDE * v

    def pv_cover(page: int, size: int) -> int:
        """Which lock (set) covers a page: equal covers mean CHANGE_PV_LIST_LOCK does nothing."""
        frame = page >> (PDR_SHIFT - PAGE_SHIFT)
        if not obm:
            return frame % nlocks if hashed else frame
        return -(frame + 1) if size == SZ_2M else page

    def pv_keys(page: int, size: int) -> list[int]:
        """The pv lock keys a page needs under this design (a superpage: 512, ascending)."""
        frame = page >> (PDR_SHIFT - PAGE_SHIFT)
        if not obm:
            return [_K_PV | (frame % nlocks if hashed else frame)]
        if size == SZ_2M:
            base = frame << (PDR_SHIFT - PAGE_SHIFT)
            return [_K_PV | (base + j) for j in range(PAGES_PER_FRAME)]
        return [_K_PV | page]

    def turnstile(key: int) -> int:
        frame = (key & _KEY_MASK) >> (PDR_SHIFT - PAGE_SHIFT)
        return frame % nlocks if hashed else frame

    def advance(i: int, t: int) -> None:
        """Run thread i's private instructions from pc+1 on; queue its next lock step."""
        prog = progs[i]
        k = pc[i] + 1
        while k < len(prog):
            gap, kind, a, b, c, op = prog[k]
            t += gap
            if kind == E or kind == X:
                emit((t, i, EV_E if kind == E else EV_X, CLS_NONE, 0, M_NONE, 0, 0, op))
            elif (kind == ACQ_PVC or kind == REL_PVC) and no_pvc:
                pass
            elif kind == PV_TO:
                if pv_cover(a, b) == held_cover[i]:   # same lock: CHANGE_PV_LIST_LOCK is a no-op
                    move(i, t, a, b, c, op, later=True)
                else:
                    pc[i] = k
                    heapq.heappush(heap, (t, _PRIO_REL if held[i] else _PRIO_ACQ, i))
                    return
            else:
                pc[i] = k
                rel = kind in (REL_PMAP, REL_PVC, PV_REL)
                heapq.heappush(heap, (t, _PRIO_REL if rel else _PRIO_ACQ, i))
                return
            k += 1
        pc[i] = k

    def move(i, t, page, size, c, op, log=True, later=False):
        """The thread works on `page` from t: log the P record when the program says so.
        ``later``: t is ahead of the simulation's clock (see ``pend``)."""
        if log and c & WITH_P:
            emit((t, i, EV_P, CLS_NONE, 0, M_2M if size == SZ_2M else M_4K, 0,
                  page << PAGE_SHIFT, op))
        lo = page & ~(PAGES_PER_FRAME - 1) if size == SZ_2M else page
        hi = lo + PAGES_PER_FRAME - 1 if size == SZ_2M else page
        if later:
            pend[i].append((t, lo, hi))
        else:
            cur(i, t)
            cur_lo[i], cur_hi[i] = lo, hi

    def cur(i, now):
        """The pages thread i works on at ``now``."""
        q = pend[i]
        while q and q[0][0] <= now:
            _, cur_lo[i], cur_hi[i] = q.popleft()
        return cur_lo[i], cur_hi[i]

    def start_acquire(i, t, keys, mode, cls, op, cover):
        acq_keys[i], acq_idx[i], acq_mode[i], acq_cls[i], acq_op[i] = keys, 0, mode, cls, op
        acq_pv_cover[i] = cover
        acquiring[i] = True
        try_acquire(i, t)

    def try_acquire(i, t):
        """Request acq_keys[i][acq_idx[i]] at t: grant now or queue."""
        while True:
            key = acq_keys[i][acq_idx[i]]
            lk = locks.get(key)
            if lk is None:
                lk = locks[key] = _Lock()
            mode = acq_mode[i]
            if not lk.queue and lk.writer < 0 and (not lk.readers or mode == M_R):
                take(lk, i, mode)
                if not granted(i, t, t):
                    return
                continue                       # next key of a 2 MiB run, same instant
            wait_req[i] = t
            lk.queue.append(i)
            if acq_cls[i] == CLS_PV:
                wait_true[i] = is_true(lk, i, t)
                if obm:
                    turnstiles.setdefault(turnstile(key), {})[i] = (key, t)
            return

    def is_true(lk: _Lock, i: int, now: int) -> bool:
        lo, hi = want_lo[i], want_hi[i]
        for b in [lk.writer, *lk.readers]:
            if b < 0:
                continue
            b_lo, b_hi = cur(b, now)
            if b_lo <= hi and lo <= b_hi:
                return True
        for b in lk.queue:
            if b != i and want_lo[b] <= hi and lo <= want_hi[b]:
                return True
        return False

    def take(lk: _Lock, i: int, mode: int) -> None:
        if mode == M_R:
            lk.readers[i] = lk.readers.get(i, 0) + 1
        else:
            lk.writer = i

    def granted(i, t_grant, t_req) -> bool:
        """Account a grant of the current key at t_grant; return True if more keys follow."""
        key = acq_keys[i][acq_idx[i]]
        cls = acq_cls[i]
        w = t_grant - t_req
        t_a = t_grant
        if w > spin_limit:
            # Asleep: the thread runs wakeup ns after the grant, and its wait (lockstat's
            # sleep time, which the B record carries) lasts until then.
            t_a += wakeup
            w += wakeup
        addr = lock_addr(key)
        kv = key & _KEY_MASK
        if cls == CLS_PV:
            pa = (kv << PAGE_SHIFT) if obm else (want_lo[i] << PAGE_SHIFT)
        else:
            pa = 0
        mode = acq_mode[i]
        acq_cnt[cls] += 1
        if w > 0:
            spin = min(w, spin_limit)
            block = w - spin
            st["cont"][cls] += 1
            st["wait"][cls] += w
            st["spin"] += spin
            st["block"] += block
            nonzero.append(w)
            if cls == CLS_PV:
                tf = st["true"] if wait_true[i] else st["false"]
                tf[0] += 1
                tf[1] += w
            # In the kernel's order: __rw_wlock_hard, __rw_rlock_hard and __mtx_lock_sleep
            # fire the block probe, then the spin probe, then the acquire.
            if block:
                emit((t_a, i, EV_B, cls, addr, mode, block, pa, acq_op[i]))
            if spin:
                emit((t_a, i, EV_S, cls, addr, mode, spin, pa, acq_op[i]))
        emit((t_a, i, EV_A, cls, addr, mode, 0, pa, acq_op[i]))
        if acq_idx[i] + 1 < len(acq_keys[i]):
            acq_idx[i] += 1
            if t_a != t_grant:                 # woke up later: continue from the heap
                heapq.heappush(heap, (t_a, _PRIO_ACQ, i))
                return False
            return True
        acquiring[i] = False
        if cls == CLS_PV:
            held[i] = acq_keys[i]
            held_cover[i] = acq_pv_cover[i]
            held_mode[i] = mode
        advance(i, t_a)
        return False

    def release(i, t, key, cls, pa, op, mode):
        """Thread i releases ``key`` at t and grants its waiters; True when the key is free
        after i's release (before the grants)."""
        lk = locks[key]
        emit((t, i, EV_R, cls, lock_addr(key), mode, 0, pa, op))
        if lk.writer == i:
            lk.writer = -1
        else:
            cnt = lk.readers[i] - 1
            if cnt:
                lk.readers[i] = cnt
            else:
                del lk.readers[i]
        if lk.writer >= 0 or lk.readers:
            return False
        q = lk.queue
        while q and lk.writer < 0:
            j = q[0]
            if acq_mode[j] != M_R and lk.readers:
                break
            q.popleft()
            take(lk, j, acq_mode[j])
            if cls == CLS_PV and obm:
                del turnstiles[turnstile(key)][j]
            resume(j, t)
            if acq_mode[j] != M_R:
                break
        return True

    def resume(j, t):
        """Waiter j was granted by a release at t."""
        if granted(j, t, wait_req[j]):
            # The next page of its 2 MiB run is a step of its own, ordered with this
            # instant's other acquisitions (REPLAY.md 4), not taken inside the release.
            heapq.heappush(heap, (t, _PRIO_ACQ, j))

    def release_pv(i, t, op):
        keys = held[i]
        mode = held_mode[i]
        page, _ = cur(i, t)
        freed = {key for key in keys
                 if release(i, t, key, CLS_PV,
                            ((key & _KEY_MASK) << PAGE_SHIFT) if obm else (page << PAGE_SHIFT),
                            op, mode)}
        if obm and freed:
            # Once per release, on each turnstile of a freed page, for the sleepers whose own
            # page it did not free (the granted ones have left their turnstile already).
            for ts in {turnstile(key) for key in freed}:
                for wkey, req in turnstiles.get(ts, {}).values():
                    if wkey not in freed and t - req > spin_limit:
                        st["sib"] += 1
        held[i] = []
        held_cover[i] = None

    # start every thread at its first instruction
    for i in range(n):
        pc[i] = -1
        advance(i, 0)
    while heap:
        t, _prio, i = heapq.heappop(heap)
        if acquiring[i]:
            try_acquire(i, t)
            continue
        gap, kind, a, b, c, op = progs[i][pc[i]]
        if kind == PV_TO:
            if not switching[i]:
                if held[i]:
                    # CHANGE_PV_LIST_LOCK_TO_PHYS: P, release (R names the old page), and the
                    # acquisition as its own step, ordered with this instant's acquisitions.
                    if c & WITH_P:
                        emit((t, i, EV_P, CLS_NONE, 0, M_2M if b == SZ_2M else M_4K, 0,
                              a << PAGE_SHIFT, op))
                    release_pv(i, t, op)
                    move(i, t, a, b, c, op, log=False)
                    switching[i] = True
                    heapq.heappush(heap, (t, _PRIO_ACQ, i))
                    continue
                move(i, t, a, b, c, op)
            switching[i] = False
            want_lo[i], want_hi[i] = cur(i, t)
            mode = M_R if (not obm and (c & MODE_R)) else M_W
            start_acquire(i, t, pv_keys(a, b), mode, CLS_PV, op, pv_cover(a, b))
        elif kind == ACQ_PMAP:
            want_lo[i] = want_hi[i] = -1
            start_acquire(i, t, [_K_PMAP | a], M_W, CLS_PMAP, op, None)
        elif kind == ACQ_PVC:
            want_lo[i] = want_hi[i] = -1
            start_acquire(i, t, [_K_PVC | a], M_W, CLS_PVC, op, None)
        elif kind == REL_PMAP:
            release(i, t, _K_PMAP | a, CLS_PMAP, 0, op, M_W)
            advance(i, t)
        elif kind == REL_PVC:
            release(i, t, _K_PVC | a, CLS_PVC, 0, op, M_W)
            advance(i, t)
        elif kind == PV_REL:
            release_pv(i, t, op)
            advance(i, t)
    for i in range(n):
        if acquiring[i] or held[i]:
            raise PvtraceError("synthetic kernel deadlocked (a bug in pvtrace synth)")
    return _finish(recs, n, st, nonzero)


def _finish(recs, n, st, nonzero) -> SimResult:
    arr = np.frombuffer(recs, dtype=np.uint64).reshape(-1, 9)
    cols = {
        "ts": arr[:, 0].astype(np.int64) + TS0,
        "cpu": arr[:, 1].astype(np.int32),
        "ev": arr[:, 2].astype(np.int8),
        "cls": arr[:, 3].astype(np.int8),
        "lock": arr[:, 4],
        "mode": arr[:, 5].astype(np.int8),
        "ns": arr[:, 6].astype(np.int64),
        "pa": arr[:, 7],
        "op": arr[:, 8].astype(np.int8),
    }
    # threads run from their first record to their last; records are in time order per thread
    makespan = int(arr[:, 0].max() - arr[:, 0].min()) if len(arr) else 0
    acq, cont, wait = st["acq"], st["cont"], st["wait"]
    zeros = sum(acq) - len(nonzero)
    truth = {
        "acquisitions": sum(acq),
        "contended": sum(cont),
        "wait_ns": sum(wait),
        "spin_ns": st["spin"],
        "block_ns": st["block"],
        "false_block": {"count": st["false"][0], "wait_ns": st["false"][1]},
        "true_block": {"count": st["true"][0], "wait_ns": st["true"][1]},
        "sibling_wakeups": st["sib"],
        "makespan_ns": int(makespan),
        "wait_percentiles_ns": _percentiles(nonzero, zeros),
        "contended_wait_percentiles_ns": _percentiles(nonzero, 0),
        "by_class": {CLS_NAMES[c]: {"acquisitions": acq[c], "contended": cont[c],
                                     "wait_ns": wait[c]}
                     for c in (CLS_PV, CLS_PVC, CLS_PMAP) if acq[c]},
    }
    return SimResult(cols, truth, n)
