"""Per-thread timelines: the design-independent part of a replay (docs/REPLAY.md section 1).

A capture is a global stream of records. The replay needs each thread's own story in order:
which acquisition each ``B``/``S`` wait belongs to (its captured request time is the ``A``
time minus the wait), which ``R`` ends which ``A`` (a stack per thread and lock, for recursive
read locks), and the records that have no partner because the capture started or ended while a
lock was held. This module computes those links once per trace, as arrays, so that every lock
design replayed afterwards shares them.

Records are regrouped by thread (stable, so time order is kept inside a thread) and coded as
small integers; the string dictionaries (lock classes, pmap operations) are kept for reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np
import polars as pl

from pvtrace.errors import PvtraceError

EV_CODES = {"A": 0, "R": 1, "B": 2, "S": 3, "P": 4, "E": 5, "X": 6}
EV_A, EV_R, EV_B, EV_S, EV_P, EV_E, EV_X = range(7)
MODE_CODES = {"w": 0, "r": 1, "4k": 2, "2m": 3, "-": 4}
MODE_W, MODE_R, MODE_4K, MODE_2M, MODE_NONE = range(5)


@dataclass(frozen=True, slots=True)
class LinkCounts:
    """Records without a partner, per docs/REPLAY.md section 1."""

    orphan_waits: int        # B/S followed by no A of the same lock
    held_at_start: int       # R with no A: lock taken before the capture began
    held_at_end: int         # A with no R: lock still held when the capture ended


@dataclass(frozen=True)
class Timeline:
    """Records regrouped by thread, coded, and linked. All arrays have one entry per record."""

    tid: np.ndarray          # int64, grouped: records of one thread are contiguous
    ts: np.ndarray           # int64, ns relative to t0
    ev: np.ndarray           # uint8 EV_*
    cls: np.ndarray          # int16 index into classes; -1 for P/E/X
    lock: np.ndarray         # uint64
    mode: np.ndarray         # uint8 MODE_*
    pa: np.ndarray           # uint64
    op: np.ndarray           # int32 index into ops
    wait: np.ndarray         # int64: for A, the attached B/S ns (observed wait); else 0
    spun: np.ndarray         # int64: for A, the attached S ns
    partner: np.ndarray      # int64: A -> its R, R -> its A, else -1
    next_rec: np.ndarray     # int64: next record of the thread that is not B/S, or -1
    thread_first: np.ndarray  # int64 per thread: index of its first record
    thread_end: np.ndarray   # int64 per thread: one past its last record
    thread_ids: np.ndarray   # int64 per thread: the kernel tid
    classes: list[str]
    ops: list[str]
    t0: int                  # absolute ts of the earliest record (ns since boot)
    t_last: int              # relative ts of the last record
    counts: LinkCounts

    @property
    def nthreads(self) -> int:
        return len(self.thread_ids)

    def class_code(self, name: str) -> int:
        return self.classes.index(name) if name in self.classes else -2

    @staticmethod
    def from_events(events: pl.DataFrame) -> Timeline:
        return build_timeline(events)


def _codes(col: pl.Series, mapping: dict[str, int] | None, default: int, dtype) -> tuple[
        np.ndarray, list[str]]:
    """Small-integer codes of a string or categorical column, without materializing strings.

    With ``mapping`` the codes are its values (unknown strings get ``default``); without, the
    distinct values are sorted and numbered. Returns the codes and the sorted distinct values.
    """
    if col.dtype in (pl.Categorical, pl.Enum):
        distinct = pl.DataFrame({"v": col.unique()}).with_columns(
            code=pl.col("v").to_physical().cast(pl.Int64), v=pl.col("v").cast(pl.String))
        values = sorted(distinct["v"].to_list())
        ours = mapping if mapping is not None else {v: i for i, v in enumerate(values)}
        lut = np.full(int(distinct["code"].max()) + 1, default, dtype)
        for v, c in distinct.iter_rows():
            lut[c] = ours.get(v, default)
        return lut[col.to_physical().to_numpy()], values
    col = col.cast(pl.String)
    values = sorted(col.unique().to_list())
    ours = mapping if mapping is not None else {v: i for i, v in enumerate(values)}
    return col.replace_strict(ours, default=default, return_dtype=pl.Int64).to_numpy().astype(
        dtype), values


def build_timeline(events: pl.DataFrame) -> Timeline:
    """Code, regroup by thread and link the records of an ``events`` table (sorted by ts)."""
    if events.height == 0:
        raise PvtraceError("the trace has no event records to replay")
    ev, ev_values = _codes(events["ev"], EV_CODES, -1, np.int8)
    if (ev < 0).any():
        bad = sorted(set(ev_values) - set(EV_CODES))
        raise PvtraceError(f"events table has unknown event letters {bad}")
    cls_all, cls_values = _codes(events["cls"], None, -1, np.int16)
    classes = [c for c in cls_values if c != "-"]
    remap = np.array([classes.index(c) if c != "-" else -1 for c in cls_values] or [-1],
                     np.int16)
    cls = remap[cls_all]
    mode, _ = _codes(events["mode"], MODE_CODES, MODE_NONE, np.uint8)
    op, ops = _codes(events["op"], None, 0, np.int32)
    tid_all = events["tid"].to_numpy().astype(np.int64)
    # Stable grouping by thread keeps each thread's records in capture (ts) order.
    order = (pl.DataFrame({"tid": tid_all}).with_row_index("i")
             .sort("tid", maintain_order=True)["i"].to_numpy())
    ts_all = events["ts"].to_numpy().astype(np.int64)
    t0 = int(ts_all.min())
    tid = tid_all[order]
    ts = ts_all[order] - t0
    ev = ev[order].astype(np.uint8)
    lock = events["lock"].to_numpy().astype(np.uint64)[order]
    ns = events["ns"].to_numpy().astype(np.int64)[order]
    pa = events["pa"].to_numpy().astype(np.uint64)[order]
    starts = np.flatnonzero(np.r_[True, tid[1:] != tid[:-1]]).astype(np.int64)
    ends = np.r_[starts[1:], len(tid)].astype(np.int64)
    wait, spun, partner, next_rec, counts = _link(starts, ends, ev, lock, ns)
    return Timeline(
        tid=tid, ts=ts, ev=ev, cls=cls[order], lock=lock, mode=mode[order], pa=pa,
        op=op[order], wait=wait, spun=spun, partner=partner, next_rec=next_rec, thread_first=starts, thread_end=ends, thread_ids=tid[starts],
        classes=classes, ops=ops, t0=t0, t_last=int(ts.max()),
        counts=LinkCounts(*(int(c) for c in counts)))


@nb.njit(cache=True)
def _link(starts, ends, ev, lock, ns):
    n = len(ev)
    wait = np.zeros(n, np.int64)
    spun = np.zeros(n, np.int64)
    partner = np.full(n, -1, np.int64)
    next_rec = np.full(n, -1, np.int64)
    orphan = 0
    held_start = 0
    held_end = 0
    stack_lock = np.zeros(64, np.uint64)
    stack_idx = np.zeros(64, np.int64)
    for t in range(len(starts)):
        s, e = starts[t], ends[t]
        # B/S attach to the next A of the same lock if only B/S of that lock stand between.
        pend_lock = np.uint64(0)
        pend_ns = 0
        pend_spin = 0
        pend_n = 0
        last = -1
        depth = 0
        for i in range(s, e):
            k = ev[i]
            if k == 2 or k == 3:
                if pend_n > 0 and lock[i] != pend_lock:
                    orphan += pend_n
                    pend_ns = 0
                    pend_spin = 0
                    pend_n = 0
                pend_lock = lock[i]
                pend_ns += ns[i]
                if k == 3:
                    pend_spin += ns[i]
                pend_n += 1
                continue
            if pend_n > 0:
                if k == 0 and lock[i] == pend_lock:
                    wait[i] = pend_ns
                    spun[i] = pend_spin
                else:
                    orphan += pend_n
                pend_ns = 0
                pend_spin = 0
                pend_n = 0
            if last >= 0:
                next_rec[last] = i
            last = i
            if k == 0:
                if depth == len(stack_lock):
                    stack_lock = np.concatenate((stack_lock, np.zeros(depth, np.uint64)))
                    stack_idx = np.concatenate((stack_idx, np.zeros(depth, np.int64)))
                stack_lock[depth] = lock[i]
                stack_idx[depth] = i
                depth += 1
            elif k == 1:
                j = depth - 1
                while j >= 0 and stack_lock[j] != lock[i]:
                    j -= 1
                if j < 0:
                    held_start += 1
                else:
                    partner[i] = stack_idx[j]
                    partner[stack_idx[j]] = i
                    for m in range(j, depth - 1):
                        stack_lock[m] = stack_lock[m + 1]
                        stack_idx[m] = stack_idx[m + 1]
                    depth -= 1
        orphan += pend_n
        held_end += depth
    return wait, spun, partner, next_rec, (orphan, held_start, held_end)
