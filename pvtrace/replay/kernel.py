"""The replay kernel: a discrete-event loop over step records, compiled with numba.

Every thread has at most one pending step; the next one executed is the pending step with the
smallest ``(time, priority, tid)`` (releases, page moves and ends before acquisitions at the
same instant). That triple is packed into one int64 per thread,
``(time - base) << (B + 1) | priority << B | tid`` with ``B`` bits for the thread index, so one
integer comparison orders two steps. The scheduler is a winner (tournament) tree over the
threads: leaf ``tid`` holds the thread's packed key (``NONE``, the largest int64, while it
waits for a lock or after it ended), each inner node the minimum of its two children, so the
root is the next step. Executing a step rewrites one leaf and the mins on its path to the root
(branch-free, B levels); granting a lock to a waiter lowers its leaf and stops climbing as soon
as a node does not change. A page move gets no turn: it never waits, so the thread goes past it
to its next step, noting the move and its time for the pv-wait classification (below) to read.
Under the stock design that is one turn fewer per pv-list operation, 12% of the kernel's time.

Locks are keys with a reader count or a writer mark and a FIFO queue threaded through the
waiting threads; a key's state, queue head and tail and turnstile share one 16-byte record
(``kr``), so a lock operation touches one cache line. Under the OBM designs there are millions
of keys, visited at random, and the step records are read as one stream per thread: the loop
prefetches a thread's next lock records and step records when it schedules the thread, which
changes no result but removes most cache-miss stalls.

A contended pv wait is classified true or false against the threads that hold or wait for
its key, found among the live threads (started, not ended): a capture of a build holds tens of
thousands of short-lived tids. Scanning every thread at each such wait took the kernel 1.6 s
instead of 0.18 s on 2.6 M steps with 65,536 tids, 64 alive at once, and 10,000 pv waits.

Waits are split into spin and block with the spin limit; blocked waiters sleep on their key's
turnstile, which the OBM designs share between the pages of a frame or hash slot: when a
release frees keys, the asleep waiters on their turnstile whose own key it did not free are
woken for nothing (sibling wakeups, once per release: a 2m run frees 512 keys at once). See
docs/REPLAY.md section 4 for the rules.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from pvtrace.errors import PvtraceError
from pvtrace.replay.build import (W_CONT, W_PV, step_2m, step_count, step_kind, step_mode,
                                  step_page)
from pvtrace.replay.jit import NO_REFCOUNT

CLS_NONE, CLS_TRUE, CLS_FALSE, CLS_UNKNOWN = 0, 1, 2, 3
FRAME_SHIFT = 21
NONE = np.iinfo(np.int64).max   # leaf of a thread with no pending step
# Prefetch distances: a thread's step whose lock record, its step whose step-array entries, its
# acquisition whose result entries are requested when the thread advances.
KEY_AHEAD, STEP_AHEAD, ACQ_AHEAD = 5, 16, 8
# Every computed index into an array in the compiled loop goes through _u (unsigned). numba
# gives a signed index Python's negative-index meaning, two or three more instructions on every
# access that LLVM can rarely drop; an unsigned one it takes as is. No index here is ever
# negative: under NUMBA_BOUNDSCHECK=1 one would show as out of bounds, and the kernel and
# reference tests pass so. The kernel ran 10-13% faster. Only as an index: unsigned and signed
# integers in numba arithmetic give floats.
_u = np.uint64


def _tid_bits(nthr: int) -> int:
    """Bits of the thread index in a packed key (at least 1)."""
    return max(1, (max(nthr, 1) - 1).bit_length())


def time_limit(nthr: int) -> int:
    """Replayed times (ns after the earliest thread start) must stay below this to be packed
    with the priority and thread index into one int64 scheduling key."""
    return (1 << (62 - _tid_bits(nthr))) - 1


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to load ``arr[idx]`` into cache (no effect on results)."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i32 = ir.IntType(32)
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0")
        # read, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


@nb.njit(cache=True, inline="always")
def _overlap(p1, big1, p2, big2):
    """Do two page sets intersect? A page of 0 is unknown and intersects everything."""
    if p1 == 0 or p2 == 0:
        return True
    if big1 or big2:
        return (p1 >> FRAME_SHIFT) == (p2 >> FRAME_SHIFT)
    return (p1 >> 12) == (p2 >> 12)


@nb.njit(cache=True, inline="always")
def _hold_pv(th, s, k, rec, t_pvlo, t_pvhi, t_page, t_big):
    """Thread ``th`` now holds pv key ``k`` (step ``s``): extend its run or start a new one.
    Without branches (selects): whether an acquisition is a pv one follows no pattern the CPU
    can predict when threads interleave (see _run)."""
    w = rec[_u(s)].word
    pv = (w & W_PV) != 0
    new = pv and (w & W_CONT) == 0
    t_pvhi[_u(th)] = k if pv else t_pvhi[_u(th)]
    t_pvlo[_u(th)] = k if new else t_pvlo[_u(th)]
    t_page[_u(th)] = step_page(w) if new else t_page[_u(th)]
    t_big[_u(th)] = step_2m(w) if new else t_big[_u(th)]


@nb.njit(cache=True, inline="always")
def _set_leaf(tree, leaf0, th, v):
    """Leaf ``th`` becomes ``v``: recompute the mins up to the root (branch-free). Returns
    the root: the loop keeps it in a register instead of reading it back from memory."""
    i = leaf0 + th
    tree[_u(i)] = v
    while i > 1:
        o = tree[_u(i ^ 1)]
        v = v if v < o else o
        i >>= 1
        tree[_u(i)] = v
    return v


@nb.njit(cache=True, inline="always")
def _lower_leaf(tree, leaf0, th, v):
    """Leaf ``th`` (``NONE`` before) becomes ``v``: climb while the mins decrease."""
    i = leaf0 + th
    tree[_u(i)] = v
    i >>= 1
    while i >= 1 and tree[_u(i)] > v:
        tree[_u(i)] = v
        i >>= 1


@nb.njit(cache=True, nogil=True, **NO_REFCOUNT)
def _grant(w, t, k, rec, thread_end, spin_limit, wakeup_ns,
           a_req, a_rel, t_step, t_wkey, t_req, t_pvlo, t_pvhi, t_page, t_big, t_tsn, t_tsp,
           t_mvat, t_mvpage, t_mvbig, ts_head, kr, tree, leaf0, base, shift, bits, tmax):
    """Hand key ``k`` to waiter ``w`` at time ``t`` and schedule its next step. Returns False
    if the step's time does not fit a packed key."""
    s = t_step[_u(w)]
    a = rec[_u(s)].acq
    # The lock is the waiter's from the release; a blocked waiter runs wakeup_ns later. Its
    # wait and hold are the thread's, as lockstat measures them: the wait lasts until it runs
    # (a sleep's time includes the wakeup), the hold starts then.
    run_at = t + (wakeup_ns if t - t_req[_u(w)] > spin_limit else 0)
    a_req[_u(a)] = run_at - t_req[_u(w)]
    a_rel[_u(a)] = -1 - run_at       # held from run_at (see the end of _run)
    t_wkey[_u(w)] = -1
    tsid = kr[_u((np.int64(k) << 2) + 3)]
    if t_tsp[_u(w)] >= 0:
        t_tsn[_u(t_tsp[_u(w)])] = t_tsn[_u(w)]
    else:
        ts_head[_u(tsid)] = t_tsn[_u(w)]
    if t_tsn[_u(w)] >= 0:
        t_tsp[_u(t_tsn[_u(w)])] = t_tsp[_u(w)]
    t_tsn[_u(w)] = -1
    t_tsp[_u(w)] = -1
    _hold_pv(w, s, k, rec, t_pvlo, t_pvhi, t_page, t_big)
    s += 1
    t_step[_u(w)] = s
    if s < thread_end[_u(w)]:
        rel = run_at + rec[_u(s)].gap - base
        # Pass over a page move, as _run does. (Not a shared helper: numba compiled the loop
        # 1.5x slower with one, an inline function returning the step and its time.)
        if step_kind(rec[_u(s)].word) == 2 and s + 1 < thread_end[_u(w)]:
            t_mvat[_u(w)] = rel + base
            t_mvpage[_u(w)] = step_page(rec[_u(s)].word)
            t_mvbig[_u(w)] = step_2m(rec[_u(s)].word)
            s += 1
            rel += rec[_u(s)].gap
            t_step[_u(w)] = s
        if rel >= tmax or rel < 0:
            return False
        kd = step_kind(rec[_u(s)].word)
        if kd == 0:
            _prefetch(kr, np.int64(rec[_u(s)].key) << 2)
        _lower_leaf(tree, leaf0, w, (rel << shift) | (np.int64(kd == 0) << bits) | w)
    return True


def _state(thread_first: np.ndarray, bits: int) -> tuple[np.ndarray, ...]:
    """The kernel's per-thread state and scheduler tree, allocated (here, not in the compiled
    loop: see _run) and initialized, in _run's argument order."""
    nthr = len(thread_first)
    return (
        thread_first.astype(np.int64),   # t_step: each thread's next step
        np.zeros(nthr, np.int64),        # t_end
        np.full(nthr, -1, np.int32),     # t_next: FIFO queue link
        np.full(nthr, -1, np.int32),     # t_tsn, t_tsp: turnstile list links
        np.full(nthr, -1, np.int32),
        np.full(nthr, -1, np.int64),     # t_wkey: the key waited for
        np.zeros(nthr, np.int64),        # t_req: its request time
        np.full(nthr, -1, np.int64),     # t_pvlo, t_pvhi: the pv hold's key run
        np.full(nthr, -1, np.int64),
        np.zeros(nthr, np.uint64),       # t_page, t_big: its page
        np.zeros(nthr, np.bool_),
        # a page move passed over (see the end of _run's loop): its time (-1: none), page,
        # is2m
        np.full(nthr, -1, np.int64),     # t_mvat
        np.zeros(nthr, np.uint64),       # t_mvpage
        np.zeros(nthr, np.bool_),        # t_mvbig
        # The live threads, between their first step and their end: act[0] of them in
        # act[1:], thread o at act_at[o]. A capture can hold tens of thousands of short-lived
        # tids, few alive at once: the scans for who blocks a pv wait and for the oldest
        # waiter go over the live threads when they are fewer than a sixteenth of all, else
        # over ``every`` thread in index order (read in order, the longer list is then the
        # faster one).
        np.zeros(nthr + 1, np.int32),    # act
        np.zeros(nthr, np.int32),        # act_at
        np.arange(nthr, dtype=np.int32),  # every
        # scheduler: winner tree, leaves at leaf0 + tid, root at 1
        np.full(2 << bits, NONE, np.int64),
    )


@nb.njit(cache=True, nogil=True, **NO_REFCOUNT)
def _run(rec, thread_first, thread_end, thread_start, turnstile, shared_ts, spin_limit,
         wakeup_ns, bits, tmax, a_req, a_rel, a_class, a_sib, kr, ts_head, ts_mark,
         t_step, t_end, t_next, t_tsn, t_tsp, t_wkey, t_req, t_pvlo, t_pvhi, t_page, t_big,
         t_mvat, t_mvpage, t_mvbig, act, act_at, every, tree):
    """The event loop. The caller allocates every array: the per-acquisition ones (zeroed),
    the per-key ones, the threads' state (:func:`_state`). numpy backs large arrays with
    transparent huge pages, far cheaper to fault in than numba's own allocations, and without
    allocations the loop compiles without numba's reference counting (jit.NO_REFCOUNT), whose
    atomic increments and decrements took an eighth of its time. Returns the forced grants,
    the sibling wakeups and False if a time fell outside ``[0, tmax)`` after the earliest
    start (the run stops there). On return ``a_req`` holds
    each acquisition's wait and ``a_rel`` its hold time (-1: never released). During the run
    ``a_req`` holds the request time until the grant, then the wait; ``a_rel`` holds
    ``-1 - start`` from the grant (the hold starts at the grant, or when a sleeper runs after
    its wakeup), and adding ``release time + 1`` makes it the hold: two
    arrays, not three, stream through the cache (the loop's other memory traffic is the step
    records), and no pass over them is needed at the end. Every acquisition is granted by the
    end of a run (the oldest waiter is granted by force when all wait)."""
    nthr = len(thread_first)
    nsteps = len(rec)
    nacq = len(a_req)
    ts_head[:] = -1
    # per key, one 16-byte record: state (>0 readers, -1 writer, 0 free), FIFO queue head and
    # tail, turnstile
    nkeys = len(kr) >> 2
    nts_in = len(turnstile)
    for k in range(nkeys):
        kr[_u(4 * k)] = 0
        kr[_u(4 * k + 1)] = -1
        kr[_u(4 * k + 2)] = -1
        kr[_u(4 * k + 3)] = turnstile[_u(k)] if k < nts_in else 0
    shift = bits + 1
    leaf0 = 1 << bits
    tmask = leaf0 - 1
    base = np.int64(0)
    for th in range(nthr):
        t0 = thread_start[_u(th)] + rec[_u(thread_first[_u(th)])].gap
        if th == 0 or t0 < base:
            base = t0
    for th in range(nthr):
        s = thread_first[_u(th)]
        rel = thread_start[_u(th)] + rec[_u(s)].gap - base
        if rel >= tmax or rel < 0:
            return 0, 0, False
        kd = step_kind(rec[_u(s)].word)
        _lower_leaf(tree, leaf0, th, (rel << shift) | (np.int64(kd == 0) << bits) | th)
    nwaiting = 0
    forced = 0
    sib_total = 0
    released = 0
    now = base
    ok = True
    top = tree[1]
    while True:
        if top == NONE:
            if nwaiting == 0:
                break
            # Every remaining thread waits: grant the oldest request by force.
            best = -1
            who = act[1:act[0] + 1] if act[0] * 16 < nthr else every   # waiters are live
            for j in range(len(who)):
                o = who[_u(j)]
                if t_wkey[_u(o)] >= 0 and (best < 0 or t_req[_u(o)] < t_req[_u(best)]
                                           or (t_req[_u(o)] == t_req[_u(best)] and o < best)):
                    best = o
            k = t_wkey[_u(best)]
            prev = -1
            k4 = np.int64(k) << 2
            cur = kr[_u(k4 + 1)]
            while cur != best:
                prev = cur
                cur = t_next[_u(cur)]
            if prev < 0:
                kr[_u(k4 + 1)] = t_next[_u(best)]
            else:
                t_next[_u(prev)] = t_next[_u(best)]
            if kr[_u(k4 + 2)] == best:
                kr[_u(k4 + 2)] = prev
            t_next[_u(best)] = -1
            forced += 1
            bm = step_mode(rec[_u(t_step[_u(best)])].word)
            kr[_u(k4)] = -1 if bm == 0 else max(kr[_u(k4)], 0) + 1
            nwaiting -= 1
            if not _grant(best, now, k, rec, thread_end,
                          spin_limit, wakeup_ns, a_req, a_rel, t_step, t_wkey, t_req, t_pvlo,
                          t_pvhi, t_page, t_big, t_tsn, t_tsp, t_mvat, t_mvpage, t_mvbig,
                          ts_head, kr, tree, leaf0, base, shift, bits, tmax):
                ok = False
                break
            top = tree[1]
            continue
        th = top & tmask
        t = (top >> shift) + base
        now = t
        s = t_step[_u(th)]
        # Branch-free, as are the other tests below of what kind of step or lock a turn has:
        # the scheduler picks threads in no order the CPU can learn, so such a branch missed
        # about every other time (15-20 cycles each, out of about 100 per turn). The kind of
        # a step is in its key (the priority bit: acquisitions come last at an instant), so
        # that branch does not wait for the step record.
        mv = t_mvat[_u(th)] >= 0            # a page move passed over on the way here happened
        t_page[_u(th)] = t_mvpage[_u(th)] if mv else t_page[_u(th)]
        t_big[_u(th)] = t_mvbig[_u(th)] if mv else t_big[_u(th)]
        t_mvat[_u(th)] = -1
        if s == thread_first[_u(th)]:       # the thread starts
            n_act = act[0] + 1
            act[_u(n_act)] = th
            act_at[_u(th)] = n_act
            act[0] = n_act
        kd = 0 if (top >> bits) & 1 else step_kind(rec[_u(s)].word)
        nxt = NONE          # the thread's next packed key
        if kd == 0:
            k = rec[_u(s)].key
            m = step_mode(rec[_u(s)].word)
            a = rec[_u(s)].acq
            k4 = np.int64(k) << 2
            st = kr[_u(k4)]
            if kr[_u(k4 + 1)] < 0 and (st == 0 or (m == 1 and st > 0)):
                kr[_u(k4)] = -1 if m == 0 else st + 1
                a_req[_u(a)] = 0
                a_rel[_u(a)] = -1 - t
                _hold_pv(th, s, k, rec, t_pvlo, t_pvhi, t_page, t_big)
            else:
                # Join the FIFO queue; classify a pv wait by who stands in the way.
                a_req[_u(a)] = t
                if kr[_u(k4 + 2)] < 0:
                    kr[_u(k4 + 1)] = th
                else:
                    t_next[_u(kr[_u(k4 + 2)])] = th
                kr[_u(k4 + 2)] = th
                t_wkey[_u(th)] = k
                t_req[_u(th)] = t
                nwaiting += 1
                tsid = kr[_u(k4 + 3)]
                t_tsp[_u(th)] = -1
                t_tsn[_u(th)] = ts_head[_u(tsid)]
                if ts_head[_u(tsid)] >= 0:
                    t_tsp[_u(ts_head[_u(tsid)])] = th
                ts_head[_u(tsid)] = th
                if rec[_u(s)].word & W_PV:
                    wp = step_page(rec[_u(s)].word)
                    wb = step_2m(rec[_u(s)].word)
                    if rec[_u(s)].word & W_CONT:
                        wp = t_page[_u(th)]
                        wb = t_big[_u(th)]
                    cls = CLS_FALSE
                    unknown = wp == 0
                    who = act[1:act[0] + 1] if act[0] * 16 < nthr else every
                    for j in range(len(who)):
                        o = who[_u(j)]
                        if o == th:
                            continue
                        if (t_pvlo[_u(o)] >= 0 and t_pvlo[_u(o)] <= k and k <= t_pvhi[_u(o)]) or \
                                (t_wkey[_u(o)] == k):
                            op_ = t_page[_u(o)]
                            ob = t_big[_u(o)]
                            if 0 <= t_mvat[_u(o)] <= t:     # its passed-over move has happened
                                op_ = t_mvpage[_u(o)]
                                ob = t_mvbig[_u(o)]
                            if t_wkey[_u(o)] == k and not (t_pvlo[_u(o)] <= k <= t_pvhi[_u(o)]):
                                ws = t_step[_u(o)]
                                own = not (rec[_u(ws)].word & W_CONT)
                                op_ = step_page(rec[_u(ws)].word) if own else t_page[_u(o)]
                                ob = step_2m(rec[_u(ws)].word) if own else t_big[_u(o)]
                            if op_ == 0:
                                unknown = True
                            if _overlap(wp, wb, op_, ob):
                                cls = CLS_TRUE
                    if cls == CLS_TRUE and unknown:
                        cls = CLS_UNKNOWN
                    a_class[_u(a)] = cls
                top = _set_leaf(tree, leaf0, th, NONE)
                continue
        elif kd == 1:
            a0 = rec[_u(s)].acq
            for j in range(step_count(rec[_u(s)].word)):
                a_rel[_u(a0 + j)] += t + 1      # -1 - start becomes the hold
            released += step_count(rec[_u(s)].word)
            pv = (rec[_u(s)].word & W_PV) != 0
            t_pvlo[_u(th)] = -1 if pv else t_pvlo[_u(th)]
            t_pvhi[_u(th)] = -1 if pv else t_pvhi[_u(th)]
            k0 = rec[_u(s)].key
            k1 = k0 + step_count(rec[_u(s)].word)
            if shared_ts:
                # Release every key of the step first: a sibling wakeup is counted once per
                # release (a 2m run frees 512 keys at one instant) and only for a sleeper
                # whose own key this release did not free (else its own lock woke it).
                for k in range(k0, k1):
                    k4 = np.int64(k) << 2
                    st = kr[_u(k4)]
                    kr[_u(k4)] = 0 if st <= 1 else st - 1
                for k in range(k0, k1):
                    k4 = np.int64(k) << 2
                    tsid = kr[_u(k4 + 3)]
                    if kr[_u(k4)] != 0 or ts_mark[_u(tsid)] == s:
                        continue
                    ts_mark[_u(tsid)] = s       # each turnstile once per release
                    o = ts_head[_u(tsid)]
                    while o >= 0:
                        wk = t_wkey[_u(o)]
                        own = k0 <= wk < k1 and kr[_u(np.int64(wk) << 2)] == 0
                        if not own and t - t_req[_u(o)] > spin_limit:
                            a_sib[_u(rec[_u(t_step[_u(o)])].acq)] += 1
                            sib_total += 1
                        o = t_tsn[_u(o)]
            for k in range(k0, k1):
                k4 = np.int64(k) << 2
                if not shared_ts:
                    # (Here, not in a loop of its own as above: stock's releases are one key
                    # each, and that loop cost the kernel 6-10% in same-process A/B runs.)
                    st = kr[_u(k4)]
                    kr[_u(k4)] = 0 if st <= 1 else st - 1
                # Grant from the head of the queue.
                w = kr[_u(k4 + 1)]
                while w >= 0:
                    wm = step_mode(rec[_u(t_step[_u(w)])].word)
                    if wm == 0:
                        if kr[_u(k4)] != 0:
                            break
                        kr[_u(k4)] = -1
                    else:
                        if kr[_u(k4)] < 0:
                            break
                        kr[_u(k4)] += 1
                    nw = t_next[_u(w)]
                    kr[_u(k4 + 1)] = nw
                    if nw < 0:
                        kr[_u(k4 + 2)] = -1
                    t_next[_u(w)] = -1
                    nwaiting -= 1
                    if not _grant(w, t, k, rec, thread_end,
                                  spin_limit, wakeup_ns, a_req, a_rel, t_step, t_wkey, t_req,
                                  t_pvlo, t_pvhi, t_page, t_big, t_tsn, t_tsp, t_mvat,
                                  t_mvpage, t_mvbig, ts_head, kr, tree, leaf0, base, shift,
                                  bits, tmax):
                        ok = False
                    if wm == 0:
                        break
                    w = nw
            if not ok:
                break
        elif kd == 2:
            t_page[_u(th)] = step_page(rec[_u(s)].word)
            t_big[_u(th)] = step_2m(rec[_u(s)].word)
        else:
            t_end[_u(th)] = t
            last = act[_u(act[0])]           # the thread ends
            act[_u(act_at[_u(th)])] = last
            act_at[_u(last)] = act_at[_u(th)]
            act[0] -= 1
            top = _set_leaf(tree, leaf0, th, NONE)
            continue
        # Advance this thread to its next step.
        s += 1
        t_step[_u(th)] = s
        if s < thread_end[_u(th)]:
            rel = t + rec[_u(s)].gap - base
            if step_kind(rec[_u(s)].word) == 2 and s + 1 < thread_end[_u(th)]:
                # A page move needs no turn of its own: it never waits, and only the
                # classification of other threads' pv waits reads the page, as of their
                # time. Note it as pending at its time and go on to the next step, which
                # applies it (the END step at the latest). (Branch-free, this ran slower:
                # the next step's record then waits for the test.)
                t_mvat[_u(th)] = rel + base
                t_mvpage[_u(th)] = step_page(rec[_u(s)].word)
                t_mvbig[_u(th)] = step_2m(rec[_u(s)].word)
                s += 1
                rel += rec[_u(s)].gap
                t_step[_u(th)] = s
            if rel >= tmax or rel < 0:
                ok = False
                break
            kd = step_kind(rec[_u(s)].word)
            # Nothing below changes a result. 64 threads interleave, so the step records are
            # read as 64 streams, too many for the hardware prefetcher, and lock records
            # (millions under OBM) at random: ask for the lines a few steps ahead. The key's
            # line whatever the kind: a release uses it too, and a test would be a branch.
            _prefetch(kr, np.int64(max(rec[_u(s)].key, 0)) << 2)
            # (the thread's own step: ``rec`` may hold unused space between groups of
            # threads, see build_steps, whose keys mean nothing)
            if s + KEY_AHEAD < thread_end[_u(th)]:
                _prefetch(kr, np.int64(rec[_u(s + KEY_AHEAD)].key) << 2)
            if s + STEP_AHEAD < nsteps:
                _prefetch(rec, s + STEP_AHEAD)
            a_next = rec[_u(s)].acq + ACQ_AHEAD
            if 0 <= a_next < nacq:
                _prefetch(a_req, a_next)
                _prefetch(a_rel, a_next)
            nxt = (rel << shift) | (np.int64(kd == 0) << bits) | th
        top = _set_leaf(tree, leaf0, th, nxt)
    if ok and released < nacq:
        # Not every acquisition was released (the step builder releases every lock still held
        # at the end of the capture, so this does not happen; when all are, as usual, this
        # pass over the results is not needed).
        for a in range(nacq):
            if a_rel[_u(a)] < 0:
                a_rel[_u(a)] = -1
    return forced, sib_total, ok


def run_kernel(rec, thread_first, thread_end, thread_start, nkeys, turnstile, shared_ts,
               nacq, spin_limit, wakeup_ns):
    """Execute all steps (``rec``: :data:`pvtrace.replay.build.STEP` records, each thread's
    from ``thread_first`` to ``thread_end``). Returns per-acquisition and per-thread arrays
    (see replay.run):
    ``wait, hold, klass, sibling, t_end, forced, sib_total`` (hold -1: never released)."""
    nthr = len(thread_first)
    bits = _tid_bits(nthr)
    tmax = time_limit(nthr)
    nts = int(turnstile.max()) + 1 if len(turnstile) > 0 else 1
    a_req, a_rel = np.zeros(nacq, np.int64), np.zeros(nacq, np.int64)
    a_class, a_sib = np.zeros(nacq, np.int8), np.zeros(nacq, np.int32)
    state = _state(thread_first, bits)
    forced, sib_total, ok = _run(
        rec, thread_first, thread_end, thread_start, turnstile, shared_ts, spin_limit,
        wakeup_ns, bits, tmax, a_req, a_rel, a_class, a_sib, np.empty(4 * nkeys, np.int32),
        np.empty(nts, np.int32), np.full(nts, -1, np.int64), *state)
    if not ok:
        raise PvtraceError(f"replayed times exceed {tmax:,} ns (about {tmax / 3.6e12:,.0f} h) "
                           f"after the first thread start with {nthr:,} threads (or precede "
                           "it): the capture's timestamps or waits are implausible")
    return a_req, a_rel, a_class, a_sib, state[1], forced, sib_total
