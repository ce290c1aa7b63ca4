"""The replay kernel: a discrete-event loop over step arrays, compiled with numba.

Every thread has at most one pending step; the next one executed is the pending step with the
smallest ``(time, priority, tid)`` (releases, page moves and ends before acquisitions at the
same instant). A binary heap of threads, keyed that way, is the only scheduler state. A thread
whose next step still comes before the heap's top runs on without touching the heap, which is
the common case and keeps the loop at tens of millions of steps per second.

Locks are keys with a reader count or a writer mark and a FIFO queue threaded through the
waiting threads. Waits are split into spin and block with the spin limit; blocked waiters sleep
on their key's turnstile, which the OBM designs share between the pages of a frame or hash
slot: when a key becomes free, asleep waiters for other keys on that turnstile are woken for
nothing (sibling wakeups). See docs/REPLAY.md section 4 for the rules.
"""

from __future__ import annotations

import numba as nb
import numpy as np

CLS_NONE, CLS_TRUE, CLS_FALSE, CLS_UNKNOWN = 0, 1, 2, 3
FRAME_SHIFT = 21


@nb.njit(cache=True, inline="always")
def _less(t1, p1, h1, t2, p2, h2):
    if t1 != t2:
        return t1 < t2
    if p1 != p2:
        return p1 < p2
    return h1 < h2


@nb.njit(cache=True)
def _push(ht, hp, hh, size, t, p, h):
    i = size
    ht[i] = t
    hp[i] = p
    hh[i] = h
    while i > 0:
        parent = (i - 1) >> 1
        if _less(ht[i], hp[i], hh[i], ht[parent], hp[parent], hh[parent]):
            ht[i], ht[parent] = ht[parent], ht[i]
            hp[i], hp[parent] = hp[parent], hp[i]
            hh[i], hh[parent] = hh[parent], hh[i]
            i = parent
        else:
            break
    return size + 1


@nb.njit(cache=True)
def _pop(ht, hp, hh, size):
    size -= 1
    ht[0] = ht[size]
    hp[0] = hp[size]
    hh[0] = hh[size]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        c = left
        right = left + 1
        if right < size and _less(ht[right], hp[right], hh[right], ht[left], hp[left], hh[left]):
            c = right
        if _less(ht[c], hp[c], hh[c], ht[i], hp[i], hh[i]):
            ht[i], ht[c] = ht[c], ht[i]
            hp[i], hp[c] = hp[c], hp[i]
            hh[i], hh[c] = hh[c], hh[i]
            i = c
        else:
            break
    return size


@nb.njit(cache=True, inline="always")
def _overlap(p1, big1, p2, big2):
    """Do two page sets intersect? A page of 0 is unknown and intersects everything."""
    if p1 == 0 or p2 == 0:
        return True
    if big1 or big2:
        return (p1 >> FRAME_SHIFT) == (p2 >> FRAME_SHIFT)
    return (p1 >> 12) == (p2 >> 12)


@nb.njit(cache=True, inline="always")
def _hold_pv(th, s, k, flags, page, is2m, t_pvlo, t_pvhi, t_page, t_big):
    """Thread ``th`` now holds pv key ``k`` (step ``s``): extend its run or start a new one."""
    if flags[s] & 1:
        if flags[s] & 2:
            t_pvhi[th] = k
        else:
            t_pvlo[th] = k
            t_pvhi[th] = k
            t_page[th] = page[s]
            t_big[th] = is2m[s]


@nb.njit(cache=True)
def run_kernel(kind, key, key_hi, mode, gap, flags, page, is2m, acq, acq_n,
               thread_first, thread_end, thread_start, nkeys, turnstile, shared_ts,
               nacq, spin_limit, wakeup_ns):
    """Execute all steps. Returns per-acquisition and per-thread arrays (see replay.run)."""
    nthr = len(thread_first)
    # per acquisition
    a_req = np.zeros(nacq, np.int64)
    a_grant = np.zeros(nacq, np.int64)
    a_wait = np.zeros(nacq, np.int64)
    a_rel = np.full(nacq, -1, np.int64)
    a_class = np.zeros(nacq, np.int8)
    a_sib = np.zeros(nacq, np.int32)
    # per key
    k_state = np.zeros(nkeys, np.int32)        # >0 readers, -1 writer, 0 free
    q_head = np.full(nkeys, -1, np.int32)
    q_tail = np.full(nkeys, -1, np.int32)
    nts = 1
    if len(turnstile) > 0:
        nts = turnstile.max() + 1
    ts_head = np.full(nts, -1, np.int32)
    # per thread
    t_step = thread_first.copy()
    t_end = np.zeros(nthr, np.int64)
    t_next = np.full(nthr, -1, np.int32)       # FIFO queue link
    t_tsn = np.full(nthr, -1, np.int32)        # turnstile list links
    t_tsp = np.full(nthr, -1, np.int32)
    t_wkey = np.full(nthr, -1, np.int64)
    t_req = np.zeros(nthr, np.int64)
    t_pvlo = np.full(nthr, -1, np.int64)
    t_pvhi = np.full(nthr, -1, np.int64)
    t_page = np.zeros(nthr, np.uint64)
    t_big = np.zeros(nthr, np.bool_)
    ht = np.zeros(nthr + 1, np.int64)
    hp = np.zeros(nthr + 1, np.int8)
    hh = np.zeros(nthr + 1, np.int32)
    size = 0
    for th in range(nthr):
        s = thread_first[th]
        size = _push(ht, hp, hh, size, thread_start[th] + gap[s], 1 if kind[s] == 0 else 0, th)
    nwaiting = 0
    forced = 0
    sib_total = 0
    now = 0
    while size > 0 or nwaiting > 0:
        if size == 0:
            # Every remaining thread waits: grant the oldest request by force.
            best = -1
            for o in range(nthr):
                if t_wkey[o] >= 0 and (best < 0 or t_req[o] < t_req[best]):
                    best = o
            k = t_wkey[best]
            prev = -1
            cur = q_head[k]
            while cur != best:
                prev = cur
                cur = t_next[cur]
            if prev < 0:
                q_head[k] = t_next[best]
            else:
                t_next[prev] = t_next[best]
            if q_tail[k] == best:
                q_tail[k] = prev
            t_next[best] = -1
            forced += 1
            k_state[k] = -1 if mode[t_step[best]] == 0 else max(k_state[k], 0) + 1
            nwaiting -= 1
            size = _grant(best, now, k, kind, key, mode, gap, flags, page, is2m, acq,
                          thread_end, spin_limit, wakeup_ns, a_grant, a_wait, t_step, t_wkey,
                          t_req, t_pvlo, t_pvhi, t_page, t_big, t_tsn, t_tsp, ts_head,
                          turnstile, ht, hp, hh, size, t_end)
            continue
        t = ht[0]
        th = hh[0]
        size = _pop(ht, hp, hh, size)
        while True:
            now = t
            s = t_step[th]
            kd = kind[s]
            if kd == 0:
                k = key[s]
                m = mode[s]
                a = acq[s]
                a_req[a] = t
                st = k_state[k]
                if q_head[k] < 0 and (st == 0 or (m == 1 and st > 0)):
                    k_state[k] = -1 if m == 0 else st + 1
                    a_grant[a] = t
                    _hold_pv(th, s, k, flags, page, is2m, t_pvlo, t_pvhi, t_page, t_big)
                else:
                    # Join the FIFO queue; classify a pv wait by who stands in the way.
                    if q_tail[k] < 0:
                        q_head[k] = th
                    else:
                        t_next[q_tail[k]] = th
                    q_tail[k] = th
                    t_wkey[th] = k
                    t_req[th] = t
                    nwaiting += 1
                    tsid = turnstile[k]
                    t_tsp[th] = -1
                    t_tsn[th] = ts_head[tsid]
                    if ts_head[tsid] >= 0:
                        t_tsp[ts_head[tsid]] = th
                    ts_head[tsid] = th
                    if flags[s] & 1:
                        wp = page[s]
                        wb = is2m[s]
                        if flags[s] & 2:
                            wp = t_page[th]
                            wb = t_big[th]
                        cls = CLS_FALSE
                        unknown = wp == 0
                        for o in range(nthr):
                            if o == th:
                                continue
                            if (t_pvlo[o] >= 0 and t_pvlo[o] <= k and k <= t_pvhi[o]) or \
                                    (t_wkey[o] == k):
                                op_ = t_page[o]
                                ob = t_big[o]
                                if t_wkey[o] == k and not (t_pvlo[o] <= k <= t_pvhi[o]):
                                    ws = t_step[o]
                                    op_ = page[ws] if not (flags[ws] & 2) else t_page[o]
                                    ob = is2m[ws] if not (flags[ws] & 2) else t_big[o]
                                if op_ == 0:
                                    unknown = True
                                if _overlap(wp, wb, op_, ob):
                                    cls = CLS_TRUE
                        if cls == CLS_TRUE and unknown:
                            cls = CLS_UNKNOWN
                        a_class[a] = cls
                    break
            elif kd == 1:
                a0 = acq[s]
                for j in range(acq_n[s]):
                    a_rel[a0 + j] = t
                if flags[s] & 1:
                    t_pvlo[th] = -1
                    t_pvhi[th] = -1
                for k in range(key[s], key_hi[s] + 1):
                    st = k_state[k]
                    st = 0 if st < 0 else st - 1
                    if st < 0:
                        st = 0
                    k_state[k] = st
                    # Grant from the head of the queue.
                    while q_head[k] >= 0:
                        w = q_head[k]
                        wm = mode[t_step[w]]
                        if wm == 0:
                            if k_state[k] != 0:
                                break
                            k_state[k] = -1
                        else:
                            if k_state[k] < 0:
                                break
                            k_state[k] += 1
                        q_head[k] = t_next[w]
                        if q_head[k] < 0:
                            q_tail[k] = -1
                        t_next[w] = -1
                        nwaiting -= 1
                        size = _grant(w, t, k, kind, key, mode, gap, flags, page, is2m, acq,
                                      thread_end, spin_limit, wakeup_ns, a_grant, a_wait,
                                      t_step, t_wkey, t_req, t_pvlo, t_pvhi, t_page, t_big,
                                      t_tsn, t_tsp, ts_head, turnstile, ht, hp, hh, size, t_end)
                        if wm == 0:
                            break
                    if shared_ts and st == 0:
                        o = ts_head[turnstile[k]]
                        while o >= 0:
                            if t_wkey[o] != k and t - t_req[o] > spin_limit:
                                a_sib[acq[t_step[o]]] += 1
                                sib_total += 1
                            o = t_tsn[o]
            elif kd == 2:
                t_page[th] = page[s]
                t_big[th] = is2m[s]
            else:
                t_end[th] = t
                break
            # Advance this thread; keep running it while it stays ahead of the heap.
            s += 1
            t_step[th] = s
            if s >= thread_end[th]:
                break
            t = t + gap[s]
            p = 1 if kind[s] == 0 else 0
            if size > 0 and not _less(t, p, th, ht[0], hp[0], hh[0]):
                size = _push(ht, hp, hh, size, t, p, th)
                break
    for a in range(nacq):
        a_wait[a] = a_grant[a] - a_req[a] if a_grant[a] > a_req[a] else 0
    return a_req, a_grant, a_wait, a_rel, a_class, a_sib, t_end, forced, sib_total


@nb.njit(cache=True)
def _grant(w, t, k, kind, key, mode, gap, flags, page, is2m, acq, thread_end, spin_limit,
           wakeup_ns, a_grant, a_wait, t_step, t_wkey, t_req, t_pvlo, t_pvhi, t_page, t_big,
           t_tsn, t_tsp, ts_head, turnstile, ht, hp, hh, size, t_end):
    """Hand key ``k`` to waiter ``w`` at time ``t`` and schedule its next step."""
    s = t_step[w]
    a = acq[s]
    waited = t - t_req[w]
    # The lock is the waiter's from the release; a blocked waiter runs wakeup_ns later.
    run_at = t + (wakeup_ns if waited > spin_limit else 0)
    a_grant[a] = t
    t_wkey[w] = -1
    tsid = turnstile[k]
    if t_tsp[w] >= 0:
        t_tsn[t_tsp[w]] = t_tsn[w]
    else:
        ts_head[tsid] = t_tsn[w]
    if t_tsn[w] >= 0:
        t_tsp[t_tsn[w]] = t_tsp[w]
    t_tsn[w] = -1
    t_tsp[w] = -1
    _hold_pv(w, s, k, flags, page, is2m, t_pvlo, t_pvhi, t_page, t_big)
    s += 1
    t_step[w] = s
    if s < thread_end[w]:
        size = _push(ht, hp, hh, size, run_at + gap[s], 1 if kind[s] == 0 else 0, w)
    return size
