"""Replay a timeline under a lock design and measure it (SPEC section 3).

The pipeline for one design:

1. the design maps every lock record and page move to a key (vectorized, ``pvtrace.models``);
2. keys are made dense: lock addresses, stock slots and OBM pages each get a block of ids,
   pages sorted so that a frame's pages are contiguous and a superpage run is an id range;
3. :mod:`pvtrace.replay.build` writes each thread's steps; :mod:`pvtrace.replay.kernel`
   executes them;
4. per-acquisition results become the counters, percentiles and per-class/per-op tables below.

``observed`` numbers come straight from the capture's ``B``/``S`` records, so the user can see
how well replaying the captured design reproduces them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba as nb
import numpy as np
import polars as pl

from pvtrace import metrics
from pvtrace.errors import PvtraceError
from pvtrace.models import get_design
from pvtrace.models.base import SPACE_PAGE, SPACE_SLOT, Design
from pvtrace.models.layout import PAGES_PER_FRAME, Layout
from pvtrace.replay import cache
from pvtrace.replay.build import Acquisitions, DesignKeys, Scratch, build_steps, thread_facts
from pvtrace.replay.dense import dense_ids
from pvtrace.replay.kernel import CLS_FALSE, CLS_TRUE, CLS_UNKNOWN, run_kernel
from pvtrace.timeline import EV_A, EV_E, EV_P, EV_R, EV_S, EV_X, MODE_2M, Timeline


@dataclass(frozen=True, slots=True)
class ReplayParams:
    """Parameters shared by every design of one replay."""

    layout: Layout                  # the design's pv-list layout (and OBM turnstile grouping)
    captured_layout: Layout         # the layout of the kernel the capture was taken on
    spin_limit_ns: int = 0          # waits up to this spin; longer ones block on a turnstile
    wakeup_ns: int = 0              # latency of waking a blocked waiter


@dataclass(frozen=True)
class DesignRun:
    """Raw arrays of one design's replay, before aggregation."""

    design: Design
    params: ReplayParams
    acqs: Acquisitions
    nkeys: int
    wait: np.ndarray          # int64 per acquisition
    hold: np.ndarray          # int64 per acquisition; -1: not released
    klass: np.ndarray
    sibling: np.ndarray
    thread_end: np.ndarray
    forced_grants: int
    unknown_page: int


def _pv_records(tl: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """The page-keyed records (pv-list lock records with a known page, and page moves) and,
    per record, its index among them (-1 for the others)."""
    arrays, _ = _pv_entry(tl)
    return arrays["idx"], arrays["pvpos"]


def _pv_2m(tl: Timeline) -> np.ndarray:
    """Per page-keyed record: a superpage (2 MiB) request or move. A ``P 2m`` is one; so is
    the pv-list ``A`` (with its ``B``/``S``) that takes the lock of the frame the thread's
    latest ``P 2m`` announced (pvtrace.d prints the P at the entry of pmap_remove_pde and
    its kin, before CHANGE_PV_LIST_LOCK_TO_PHYS; the A, when the captured lock changes)."""
    return _pv_entry(tl)[0]["is2m"]


def _pv_entry(tl: Timeline) -> tuple[dict, dict]:
    """:func:`_pv_records`' arrays and the count of pv-list acquisitions without a page.
    Design-independent: computed once per timeline (kept with a cached one, see
    cache.Derived)."""
    def compute():
        n = len(tl.ev)
        # numpy's allocations: idx is sized for the worst case, and only the pages written
        # become resident before the copy of its used part.
        idx, pvpos = np.empty(n, np.int32), np.empty(n, np.int32)
        is2m = np.empty(n, np.bool_)
        npv, unknown = _pv_positions(tl.ev, tl.cls, tl.pa, tl.mode, tl.class_code("pv"),
                                     tl.thread_first, tl.thread_end, idx, pvpos, is2m)
        return ({"idx": idx[:npv].copy(), "pvpos": pvpos, "is2m": is2m[:npv].copy()},
                {"unknown_page": int(unknown)})

    def check(arrays, scalars, spans):
        n, npv = len(tl.ev), len(arrays["idx"])
        return (len(arrays["pvpos"]) == n and len(arrays["is2m"]) == npv
                and _within(spans["idx"], 0, n - 1)
                and _within(spans["pvpos"], -1, npv - 1)
                and isinstance(scalars.get("unknown_page"), int))

    return cache.derived(tl, "pv_records", compute, check)


@nb.njit(cache=True, nogil=True)
def _pv_pages(pa, idx):
    """The page-keyed records' pages, in one compiled pass (numpy's gathers first copied the
    int32 indices to intp: 0.1 s at 6 M records)."""
    pages = np.empty(len(idx), np.uint64)
    for j in range(len(idx)):
        pages[j] = pa[idx[j]]
    return pages


@nb.njit(cache=True, nogil=True)
def _per_key(ids, base, turnstile, out):
    """``out[ids[j] - base] = turnstile[j]``: each key's turnstile (numpy's fancy assignment
    took 0.08-0.1 s at 6 M records)."""
    for j in range(len(ids)):
        out[ids[j] - base] = turnstile[j]
    return out


@nb.njit(cache=True, nogil=True)
def _runs_ok(lo, hi):
    """Every key run ascends and spans at most a frame's pages (a damaged cache's may not:
    the step builder would write past the acquisitions it counted)."""
    for j in range(len(lo)):
        if hi[j] < lo[j] or hi[j] - lo[j] >= PAGES_PER_FRAME:
            return False
    return True


def _within(span: tuple[int, int], lo: int, hi: int) -> bool:
    """A loaded array's values (``span``: its least and greatest) lie in ``[lo, hi]``."""
    return lo <= span[0] and span[1] <= hi


@nb.njit(cache=True, nogil=True)
def _pv_positions(ev, cls, pa, mode, pv_code, starts, ends, idx, pvpos, is2m):
    """One pass for :func:`_pv_entry` (eight numpy passes took 0.2 s at 14 M records): the
    page-keyed records and their superpage marks (see :func:`_pv_2m`), and the count of
    pv-list acquisitions without a page. Each thread's records in order: a ``P 2m`` stays
    pending until the thread's next pv-list ``A``, ``E`` or ``X``."""
    n = 0
    unknown = 0
    for t in range(len(starts)):
        pend = np.uint64(0)         # frame of a pending P 2m (0: none)
        for i in range(starts[t], ends[t]):
            e = ev[i]
            pv_lock = e <= EV_S and cls[i] == pv_code
            if pa[i] != 0 and (pv_lock or e == EV_P):
                idx[n] = i
                pvpos[i] = n
                is2m[n] = (mode[i] == MODE_2M if e == EV_P
                           else e != EV_R and pend != 0 and pa[i] == pend)
                n += 1
            else:
                pvpos[i] = -1
                unknown += pa[i] == 0 and e == EV_A and pv_lock
            if e == EV_P:
                pend = pa[i] if mode[i] == MODE_2M else np.uint64(0)
            elif (e == EV_A and pv_lock) or e == EV_E or e == EV_X:
                pend = np.uint64(0)
    return n, unknown


def _page_keys(tl: Timeline, design: Design) -> dict:
    """Dense key runs of the page-keyed records under ``design`` and the keys' turnstiles,
    computed once per key function and layout (the three OBM designs share theirs; kept with
    a cached timeline, see cache.Derived)."""
    fn = type(design).pv_keys
    name = "pv_keys." + hashlib.sha256(
        f"{fn.__module__}.{fn.__qualname__}:{design.layout}".encode()).hexdigest()[:16]

    def compute():
        idx, _ = _pv_records(tl)
        pk = design.pv_keys(_pv_pages(tl.pa, idx), _pv_2m(tl))
        ids, vals = dense_ids(pk.value)
        ids += np.int32(tl.nlocks)
        lo = hi = ids       # the same array, unless a superpage run widens hi (read only)
        if pk.space == SPACE_PAGE and pk.is_range.any():
            r = pk.is_range
            last = pk.value[r] + np.uint64(PAGES_PER_FRAME)
            hi = lo.copy()
            hi[r] = tl.nlocks + np.searchsorted(vals, last) - 1
        arrays = {"lo": lo, "hi": hi, "is_range": pk.is_range}
        if pk.turnstile is not None:
            # The design's turnstile of each key (all requests for a key share its turnstile).
            per_key = _per_key(lo, tl.nlocks, np.ascontiguousarray(pk.turnstile, np.uint64),
                               np.empty(len(vals), np.uint64))
            arrays["turnstile"], _ = dense_ids(per_key)
        return arrays, {"nvals": len(vals), "space": int(pk.space),
                        "turnstiles": pk.turnstile is not None}

    def check(arrays, scalars, spans):
        npv, nvals = len(_pv_records(tl)[0]), scalars.get("nvals")
        if not isinstance(nvals, int) or not isinstance(scalars.get("space"), int) \
                or any(len(arrays[k]) != npv
                                             for k in ("lo", "hi", "is_range")):
            return False
        keys = (tl.nlocks, tl.nlocks + nvals - 1)
        return (npv == 0 or (_within(spans["lo"], *keys) and _within(spans["hi"], *keys)
                             and _runs_ok(arrays["lo"], arrays["hi"]))) and \
            ("turnstile" in arrays) == scalars.get("turnstiles") and \
            ("turnstile" not in arrays or (len(arrays["turnstile"]) == nvals and (
                nvals == 0 or _within(spans["turnstile"], 0, nvals - 1))))

    arrays, scalars = cache.derived(tl, name, compute, check)
    return {**arrays, "turnstile": arrays.get("turnstile"), "nvals": scalars["nvals"],
            "space": scalars["space"]}


def _design_keys(tl: Timeline, design: Design, params: ReplayParams):
    """The design's keys for the step builder, the number of keys, each key's turnstile, and
    the acquisitions whose page is unknown."""
    _, pvpos = _pv_records(tl)
    pk = _page_keys(tl, design)
    if design.shared_turnstiles and pk["turnstile"] is None:
        raise PvtraceError(f"design {design.name} shares turnstiles but its pv_keys give none")
    removed_cls = np.array([c in design.removed_classes for c in tl.classes] or [False])
    cap = params.captured_layout
    lock_key = np.arange(tl.nlocks, dtype=np.int32)
    if pk["space"] == SPACE_SLOT and params.layout == cap:
        # A pv record without a page is keyed by its lock address; under the captured layout
        # that lock is the slot its records with a page name, so it joins that slot's key:
        # its holder and a waiter with a page meet, as they did in the captured kernel.
        _slot_of_locks(_pv_records(tl)[0], tl.ev, tl.lock, pk["lo"], lock_key)
    cap_slot = _captured_slots(tl, cap.nlocks if cap.kind == "hash" else 0)
    dk = DesignKeys(pvpos, pk["lo"], pk["hi"], pk["is_range"], _pv_2m(tl), lock_key,
                    cap_slot, removed_cls,
                    "pv" in design.removed_classes, not design.pv_shared_reads,
                    design.pv_locks == "page" and pk["space"] == SPACE_PAGE,
                    cap.nlocks if cap.kind == "hash" else 0, tl.class_code("pv"))
    nlock = tl.nlocks
    nkeys = nlock + pk["nvals"]
    if design.shared_turnstiles:
        turnstile = np.concatenate([np.arange(nlock, dtype=np.int64),
                                    nlock + pk["turnstile"].astype(np.int64)])
    else:
        turnstile = np.arange(nkeys, dtype=np.int64)
    unknown_page = 0 if "pv" in design.removed_classes else _unknown_page_acquisitions(tl)
    return dk, nkeys, turnstile, unknown_page


@nb.njit(cache=True, nogil=True)
def _slot_of_locks(idx, ev, lock, lo, lock_key):
    """``lock_key[l]``: the key of the records with a page of lock ``l`` (the page-keyed lock
    records ``idx`` with keys ``lo``), when they all have one; else left as ``l``."""
    seen = np.full(len(lock_key), -1, np.int64)       # -1 none yet, -2 several
    for j in range(len(idx)):
        i = idx[j]
        if ev[i] > EV_S:
            continue                                   # a page move: no lock of its own
        lid = lock[i]
        if seen[lid] == -1:
            seen[lid] = lo[j]
        elif seen[lid] != lo[j]:
            seen[lid] = -2
    for lid in range(len(lock_key)):
        if seen[lid] >= 0:
            lock_key[lid] = seen[lid]


def _captured_slots(tl: Timeline, cap_hash: int) -> np.ndarray:
    """Per lock id, its captured slot (see :func:`_captured_slot_of_locks`), computed once
    per timeline and captured layout: every design of a replay uses the same (30 ms a
    design on the 14 M-record bench bundle)."""
    key = ("captured_slots", cap_hash)
    if key not in tl.cache:
        out = np.full(tl.nlocks, -1, np.int64)
        _captured_slot_of_locks(_pv_records(tl)[0], tl.ev, tl.lock, tl.pa, cap_hash, out)
        tl.cache[key] = out
    return tl.cache[key]


@nb.njit(cache=True, nogil=True)
def _captured_slot_of_locks(idx, ev, lock, pa, cap_hash, out):
    """``out[l]``: the captured layout's slot (frame, or frame mod ``cap_hash``) that the
    records with a page of pv lock ``l`` (the page-keyed records ``idx``) all name; left -1
    when they name several (the layout does not describe the capture) or none."""
    for j in range(len(idx)):
        i = idx[j]
        if ev[i] > EV_S:
            continue                                   # a page move: no lock of its own
        frame = np.int64(pa[i] >> np.uint64(21))
        slot = frame % cap_hash if cap_hash > 0 else frame
        lid = lock[i]
        if out[lid] == -1:
            out[lid] = slot
        elif out[lid] != slot:
            out[lid] = -2
    for lid in range(len(out)):
        if out[lid] < 0:
            out[lid] = -1


def _unknown_page_acquisitions(tl: Timeline) -> int:
    """pv-list acquisitions captured without a page."""
    return _pv_entry(tl)[1]["unknown_page"]


def warm_caches(tl: Timeline, designs: list[Design], params: ReplayParams) -> None:
    """Compute the design-independent and shared key arrays of ``designs`` now, once, so that
    designs replayed in parallel threads do not each compute them."""
    for design in designs:
        _design_keys(tl, design, params)
    thread_facts(tl)


def run_design(tl: Timeline, design: Design, params: ReplayParams,
               built: Callable[[], object] | None = None,
               scratch: Scratch | None = None) -> DesignRun:
    """Replay ``tl`` under ``design``: the raw per-acquisition arrays. ``built`` is called
    once the steps are built, before the kernel runs on this thread alone (a caller starts
    other work on the second core then: the builder uses both). ``scratch``: memory for the
    steps, reused by the caller's next design (see build.Scratch)."""
    dk, nkeys, turnstile, unknown = _design_keys(tl, design, params)
    steps = build_steps(tl, dk, scratch=scratch)
    del dk
    if built is not None:
        built()
    nacq = len(steps.acq_cls)
    wait, hold, klass, sib, t_end, forced, _ = run_kernel(
        steps.rec, steps.thread_first, steps.thread_end, steps.thread_start, max(nkeys, 1),
        turnstile, design.shared_turnstiles, nacq, params.spin_limit_ns, params.wakeup_ns)
    # No wait total of the report (per class, operation, thread) wraps around in int64: the
    # kernel keeps every replayed time below time_limit(nthreads), a thread's waits come one
    # after another within that, and nthreads * time_limit(nthreads) < 2^62.
    # Keep what the reports need; the step records are most of the memory.
    return DesignRun(design, params, Acquisitions.of(steps), nkeys, wait, hold, klass, sib,
                     t_end, int(forced), unknown)


def _group_stats(names: list[str], codes: np.ndarray, waits: np.ndarray, extra: np.ndarray,
                 holds: np.ndarray, spin_limit_ns: int) -> dict[str, dict]:
    """Counters and percentiles per group (lock class or pmap operation), in code order. One
    compiled pass counts and sums per group; a second puts each group's contended waits and
    holds in a slice of their own (a counting sort), whose percentiles are then taken."""
    out: dict[str, dict] = {}
    if len(codes) == 0:
        return out
    (count, acquisitions, contended, wait_ns, spin_ns, cont_at, cont, hold_at,
     held) = _grouped(np.ascontiguousarray(codes), len(names), waits, extra, holds,
                      spin_limit_ns)
    for g in np.flatnonzero(count).tolist():
        out[names[g]] = {
            "acquisitions": int(acquisitions[g]),
            "contended": int(contended[g]),
            "wait_ns": int(wait_ns[g]),
            "spin_ns": int(spin_ns[g]),
            "block_ns": int(wait_ns[g] - spin_ns[g]),
            "contended_wait_percentiles_ns": metrics.percentiles(
                cont[cont_at[g]:cont_at[g + 1]], scratch=True),
            "hold_percentiles_ns": metrics.percentiles(held[hold_at[g]:hold_at[g + 1]],
                                                       scratch=True),
        }
    return out


@nb.njit(cache=True, nogil=True)
def _grouped(codes, ngroups, waits, extra, holds, spin_limit):
    """Per group code: acquisitions (with ``extra``), contended ones, wait and spin ns; and
    every contended wait and every hold (>= 0), grouped (group g's at ``[at[g], at[g+1])``)."""
    count = np.zeros(ngroups, np.int64)
    acquisitions = np.zeros(ngroups, np.int64)
    contended = np.zeros(ngroups, np.int64)
    wait_ns = np.zeros(ngroups, np.int64)
    spin_ns = np.zeros(ngroups, np.int64)
    nheld = np.zeros(ngroups, np.int64)
    for i in range(len(codes)):
        g = codes[i]
        count[g] += 1
        acquisitions[g] += 1 + extra[i]
        w = waits[i]
        if w > 0:
            contended[g] += 1
            wait_ns[g] += w
            if spin_limit > 0:
                spin_ns[g] += min(w, spin_limit)
        if holds[i] >= 0:
            nheld[g] += 1
    cont_at = np.zeros(ngroups + 1, np.int64)
    hold_at = np.zeros(ngroups + 1, np.int64)
    for g in range(ngroups):
        cont_at[g + 1] = cont_at[g] + contended[g]
        hold_at[g + 1] = hold_at[g] + nheld[g]
    cont = np.empty(cont_at[ngroups], waits.dtype)
    held = np.empty(hold_at[ngroups], holds.dtype)
    ci = cont_at[:ngroups].copy()
    hi = hold_at[:ngroups].copy()
    for i in range(len(codes)):
        g = codes[i]
        if waits[i] > 0:
            cont[ci[g]] = waits[i]
            ci[g] += 1
        if holds[i] >= 0:
            held[hi[g]] = holds[i]
            hi[g] += 1
    return (count, acquisitions, contended, wait_ns, spin_ns, cont_at, cont, hold_at, held)


def _histograms(contended: np.ndarray, zeros: int, holds: np.ndarray) -> dict:
    """Every acquisition's wait (the contended ones and ``zeros`` without a wait, counted, not
    recorded one by one: most acquisitions) and every hold, as HDR histograms."""
    return {"encoding": metrics.HDR_ENCODING,
            "wait_ns": metrics.hdr_encoded(contended, zeros),
            "hold_ns": metrics.hdr_encoded(holds)}


def summarize(run: DesignRun, tl: Timeline) -> dict:
    """The SPEC section 3 model object for one design. The per-class and per-operation
    groups are counted on a second thread meanwhile (the compiled pass and numpy's partition
    release the GIL): each half is a few passes over every acquisition."""
    st, p = run.acqs, run.params
    w = run.wait
    extra = st.extra
    holds = run.hold
    with ThreadPoolExecutor(1) as pool:
        groups = pool.submit(lambda: (
            _group_stats(tl.classes, st.cls, w, extra, holds, p.spin_limit_ns),
            _group_stats(tl.ops, st.op, w, extra, holds, p.spin_limit_ns)))
        report = _summary(run, tl)
        report["by_class"], report["by_op"] = groups.result()
    return report


def _summary(run: DesignRun, tl: Timeline) -> dict:
    """:func:`summarize` but for ``by_class`` and ``by_op``, which it leaves as None (their
    place in the report's key order)."""
    st, p = run.acqs, run.params
    w = run.wait
    extra = st.extra
    held = run.hold[run.hold >= 0]
    spin, block = metrics.split_spin(w, p.spin_limit_ns)
    pv_code = tl.class_code("pv")
    pv_cont = (st.cls == pv_code) & (w > 0)
    false_ = pv_cont & (run.klass == CLS_FALSE)
    true_ = pv_cont & ((run.klass == CLS_TRUE) | (run.klass == CLS_UNKNOWN))
    contended = w[w > 0]
    zeros = len(w) - len(contended) + int(extra.sum())    # acquisitions without a wait
    # A thread's acquisitions are numbered contiguously: per-thread sums are segment sums.
    per_acq = np.diff(np.r_[st.thread_acq, len(w)])
    busy = np.flatnonzero(per_acq > 0)
    first = st.thread_acq[busy]
    per_thread = zip(tl.thread_ids[busy].tolist(),
                     np.add.reduceat(w, first).tolist() if len(first) else [],
                     np.add.reduceat((w > 0).astype(np.int64), first).tolist()
                     if len(first) else [])
    return {
        "model": run.design.name,
        "params": {
            "layout": str(p.layout),
            "captured_layout": str(p.captured_layout),
            "spin_limit_ns": p.spin_limit_ns,
            "wakeup_ns": p.wakeup_ns,
            "shared_turnstiles": run.design.shared_turnstiles,
            "removed_classes": sorted(run.design.removed_classes),
            "pv_locks": run.design.pv_locks,
        },
        "acquisitions": int(len(w) + extra.sum()),
        "contended": int(len(contended)),
        "wait_ns": int(w.sum()),
        "spin_ns": spin,
        "block_ns": block,
        "false_block": {"count": int(false_.sum()), "wait_ns": int(w[false_].sum())},
        "true_block": {"count": int(true_.sum()), "wait_ns": int(w[true_].sum()),
                       "unknown_page": int((pv_cont & (run.klass == CLS_UNKNOWN)).sum())},
        "sibling_wakeups": int(run.sibling.sum()),
        "makespan_ns": int(run.thread_end.max() - st.thread_start.min()),
        # Waits are >= 0: all waits rank as the uncontended ones' zeros, then ``contended``
        # (which these reorder in place, as the next reorders ``held``: the histograms count)
        "wait_percentiles_ns": metrics.percentiles(contended, zeros, scratch=True),
        "contended_wait_percentiles_ns": metrics.percentiles(contended, scratch=True),
        "hold_percentiles_ns": metrics.percentiles(held, scratch=True),
        "histograms": _histograms(contended, zeros, held),
        "by_class": None,
        "by_op": None,
        "per_thread": {str(t): {"wait_ns": int(ws), "contended": int(c)}
                       for t, ws, c in per_thread},
        "anomalies": {
            "forced_grants": run.forced_grants,
            "unknown_page_acquisitions": run.unknown_page,
            "clamped_gaps": st.clamped_gaps,
            "nested_pv_holds": st.nested_pv,
        },
        "steps": st.nsteps,
    }


def observed(tl: Timeline) -> dict:
    """What the capture itself shows: its acquisitions and recorded B/S waits.

    It runs on the second core while a design replays, so its memory adds to the replay's
    peak: one compiled pass gives each acquisition's wait, hold, class and operation (20
    bytes per acquisition; numpy's gathers took 50, 1.5 GB more peak memory on a 148 M-record
    capture)."""
    # Locks held when the capture began or ended count as the replay counts them: taken
    # at the holder's start (the capture's start), released at the capture's end. A replay
    # of the captured design then has the capture's acquisitions and holds.
    t_start, held_idx, _ = thread_facts(tl)
    nacq = _count_acquisitions(tl.ev) + len(held_idx)
    w, holds = np.empty(nacq, np.int64), np.empty(nacq, np.int64)
    cls_a, op_a = np.empty(nacq, tl.cls.dtype), np.empty(nacq, tl.op.dtype)
    _acquisitions(tl.ev, tl.ts, tl.partner, tl.cls, tl.op, tl.waited_idx, tl.waited_ns,
                  tl.t_last, w, holds, cls_a, op_a)
    _held_at_start(tl.thread_first, tl.thread_end, t_start, tl.ev, tl.ts, tl.partner, tl.cls,
                   tl.op, nacq - len(held_idx), w, holds, cls_a, op_a)
    # The threads start as the replay starts them (a recorded wait longer than the time
    # since the thread's previous record does not start it earlier): a replay of the
    # captured design then has the capture's makespan.
    first = int(t_start.min())
    contended = w[w > 0]
    none_extra = np.zeros(len(w), np.int16)
    with ThreadPoolExecutor(1) as pool:     # as in summarize
        groups = pool.submit(lambda: (
            _group_stats(tl.classes, cls_a, w, none_extra, holds, 0),
            _group_stats(tl.ops, op_a, w, none_extra, holds, 0)))
        report = _observed_totals(tl, w, contended, holds, first)
        by_class, report["by_op"] = groups.result()
    # Spins are sparse (only the acquisitions with S records): sum them per class and per
    # operation directly.
    for groups_, codes, names in ((by_class, tl.cls, tl.classes), (report["by_op"], tl.op,
                                                                   tl.ops)):
        spun = codes[tl.spun_idx]
        spun_by = {c: int(tl.spun_ns[spun == k].sum()) for k, c in enumerate(names)}
        for name, d in groups_.items():
            d["spin_ns"] = spun_by.get(name, 0)
            d["block_ns"] = d["wait_ns"] - d["spin_ns"]
    report["by_class"] = by_class
    return report


@nb.njit(cache=True, nogil=True)
def _count_acquisitions(ev):
    n = 0
    for e in ev:
        n += e == EV_A
    return n


@nb.njit(cache=True, nogil=True)
def _acquisitions(ev, ts, partner, cls, op, waited_idx, waited_ns, t_last, w, holds, cls_a,
                  op_a):
    """For each acquisition (``A`` record), in record order: its captured wait, its hold
    (until ``t_last``, the capture's end, when not released), class and operation.
    ``waited_idx`` are ``A`` records, ascending."""
    j = 0
    q = 0
    for i in range(len(ev)):
        t = ts[i]
        if ev[i] != EV_A:
            continue
        wait = 0
        if q < len(waited_idx) and waited_idx[q] == i:
            wait = waited_ns[q]
            q += 1
        w[j] = wait
        r = partner[i]
        holds[j] = ts[r] - t if r >= 0 else t_last - t
        cls_a[j] = cls[i]
        op_a[j] = op[i]
        j += 1


@nb.njit(cache=True, nogil=True)
def _held_at_start(t_first, t_end, t_start, ev, ts, partner, cls, op, j, w, holds, cls_a,
                   op_a):
    """From index ``j`` on: an acquisition without wait for each release without an
    acquire, held from its thread's start."""
    for t in range(len(t_first)):
        for i in range(t_first[t], t_end[t]):
            if ev[i] == EV_R and partner[i] < 0:
                w[j] = 0
                holds[j] = ts[i] - t_start[t]
                cls_a[j] = cls[i]
                op_a[j] = op[i]
                j += 1


def _observed_totals(tl: Timeline, w: np.ndarray, contended: np.ndarray, holds: np.ndarray,
                     first: int) -> dict:
    """:func:`observed` but for ``by_class`` and ``by_op``, left as None."""
    spun = int(tl.spun_ns.sum())
    # a copy: the percentiles reorder it in place while the groups read ``holds`` on the
    # other core
    held = holds.copy()
    # All waits rank as the uncontended ones' zeros, then ``contended`` (reordered in place,
    # as the next call reorders it anyway), when no wait is negative (ingest refuses
    # those; an in-memory table might hold one): no partition of every acquisition's wait.
    zeros = len(w) - len(contended)
    all_waits = (metrics.percentiles(contended, zeros, scratch=True)
                 if np.all(tl.waited_ns >= 0) else metrics.percentiles(w))
    return {
        "acquisitions": len(w),
        "contended": int(len(contended)),
        "wait_ns": int(w.sum()),
        "spin_ns": spun,
        "block_ns": int(w.sum()) - spun,
        "makespan_ns": int(tl.t_last - first),
        "wait_percentiles_ns": all_waits,
        "contended_wait_percentiles_ns": metrics.percentiles(contended, scratch=True),
        # reorders ``held`` in place, which the histogram (counts) does not mind
        "hold_percentiles_ns": metrics.percentiles(held, scratch=True),
        "histograms": _histograms(contended, zeros, held),
        "by_class": None,
        "by_op": None,
        "unmatched": {
            "orphan_waits": tl.counts.orphan_waits,
            "held_at_start": tl.counts.held_at_start,
            "held_at_end": tl.counts.held_at_end,
            "mode_mismatch": tl.counts.mode_mismatch,
        },
    }


MAX_SPIN_LIMIT_NS = (1 << 62) - 1
MAX_WAKEUP_NS = 10**12


def make_params(captured_layout: str, layout: str | None, spin_limit_ns: int,
                wakeup_ns: int) -> ReplayParams:
    for option, value in (("--spin-limit", spin_limit_ns), ("--wakeup-ns", wakeup_ns)):
        if value < 0:
            raise PvtraceError(f"{option} must be >= 0, not {value}")
    # Both go into int64 arithmetic in the compiled loops, and a wakeup is added to replayed
    # times: a bigger spin limit means "never block" anyway, a longer wakeup is no kernel's.
    if spin_limit_ns > MAX_SPIN_LIMIT_NS:
        raise PvtraceError(f"--spin-limit must be at most {MAX_SPIN_LIMIT_NS:,} ns (any limit "
                           "longer than the capture already means: never block)")
    if wakeup_ns > MAX_WAKEUP_NS:
        raise PvtraceError(f"--wakeup-ns must be at most {MAX_WAKEUP_NS:,} ns (1000 s)")
    cap = Layout.parse(captured_layout if captured_layout not in (None, "", "unknown")
                       else "superpage")
    return ReplayParams(Layout.parse(layout) if layout is not None else cap, cap, spin_limit_ns,
                        wakeup_ns)


def replay_events(events: pl.DataFrame, *, captured_layout: str, model: str,
                  layout: str | None = None, spin_limit_ns: int = 0,
                  wakeup_ns: int = 0, include_waits: bool = False) -> dict:
    """Replay an ``events`` table under one design; returns the SPEC model object.

    ``include_waits`` adds ``waits`` and ``holds``: every executed acquisition's wait and
    hold, sorted (for tests and small traces; a capture has millions).
    """
    tl = Timeline.from_events(events)
    params = make_params(captured_layout, layout, spin_limit_ns, wakeup_ns)
    run = run_design(tl, get_design(model, params.layout), params)
    out = summarize(run, tl)
    if include_waits:
        out["waits"] = sorted(int(w) for w in run.wait)
        out["holds"] = sorted(int(h) for h in run.hold if h >= 0)
    return out


def observed_events(events: pl.DataFrame) -> dict:
    """The ``observed`` object of an ``events`` table."""
    return observed(Timeline.from_events(events))
