"""The compiled replay kernel and its steps: limits (packed keys must not overflow), the
scheduler, the packed step records, and steps built in groups of threads or reused memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pvtrace.errors import PvtraceError
from pvtrace.models import get_design
from pvtrace.replay.api import load_trace
from pvtrace.replay.build import (FIELDS, PARALLEL_RECORDS, STEP, Scratch, build_steps, records,
                                  unpack)
from pvtrace.replay.kernel import run_kernel, time_limit
from pvtrace.replay.run import _design_keys, make_params

PV = 0xFFFFF80001000000


def _events(rows: list[tuple[int, ...]]) -> pl.DataFrame:
    """(ts, tid, ev, lock[, ns]) rows of write acquisitions/releases (and waits) of the pmap
    class."""
    n = len(rows)
    return pl.DataFrame(
        {
            "ts": [r[0] for r in rows], "cpu": [0] * n, "tid": [r[1] for r in rows],
            "ev": [r[2] for r in rows], "cls": ["pmap"] * n, "lock": [r[3] for r in rows],
            "mode": ["w"] * n, "ns": [r[4] if len(r) > 4 else 0 for r in rows],
            "pa": [0] * n, "op": ["pmap_enter"] * n,
        },
        schema_overrides={"ts": pl.UInt64, "lock": pl.UInt64, "pa": pl.UInt64, "ns": pl.Int64},
    ).sort("ts", maintain_order=True)


def _steps(gaps: list[int], start: int = 0, nthreads: int = 1):
    """Raw kernel arguments: each thread acquires key 0, releases it, ends, after the given
    gaps (three per thread, or three for all)."""
    n = 3 * nthreads
    rec = records(n, kind=[0, 1, 3] * nthreads, gap=gaps if len(gaps) == n else gaps * nthreads,
                  acq=[t for t in range(nthreads) for _ in range(3)], acq_n=1)
    return (rec, np.arange(0, n, 3, dtype=np.int64), np.arange(3, n + 1, 3, dtype=np.int64),
            np.full(nthreads, start, np.int64), 1, np.zeros(1, np.int64), False, nthreads, 0, 0)


def test_limit_depends_on_threads():
    assert time_limit(1) == 2**61 - 1
    assert time_limit(64) == 2**56 - 1
    assert time_limit(65) == 2**55 - 1


def test_kernel_at_the_limit():
    lim = time_limit(2)
    # Both threads start at -5 and hold key 0 for 10 ns; thread 1 waits for thread 0. Times
    # count from the earliest start: thread 1 ends at 15 + gap, i.e. 20 + gap from it.
    wait, hold, _, _, t_end, forced, _ = run_kernel(
        *_steps([0, 10, lim - 21], start=-5, nthreads=2))
    assert list(wait) == [0, 10] and list(hold) == [10, 10]
    assert list(t_end) == [lim - 16, lim - 6] and forced == 0
    with pytest.raises(PvtraceError, match="replayed times exceed"):
        run_kernel(*_steps([0, 10, lim - 20], start=-5, nthreads=2))
    # The time of a waiter's next step, scheduled by its grant, is checked too: unblocked,
    # thread 1 would release at lim - 10 from the start; granted at 5, it releases at lim.
    assert time_limit(1) == lim
    assert run_kernel(*_steps([0, lim - 10, 0], start=-5))[1][0] == lim - 10   # the hold
    with pytest.raises(PvtraceError, match="replayed times exceed"):
        run_kernel(*_steps([0, 10, 0, 0, lim - 10, 0], start=-5, nthreads=2))


def test_replay_rejects_absurd_gap():
    from pvtrace.replay.run import replay_events

    ok = _events([(0, 101, "A", PV), (1000, 101, "R", PV)])
    assert replay_events(ok, captured_layout="superpage", model="stock")["makespan_ns"] == 1000
    # Within the timeline's span but past the kernel's packed-key limit (2^61 - 1 here).
    huge = _events([(0, 101, "A", PV), (1000, 101, "R", PV), (2**61, 101, "A", PV),
                    (2**61 + 10, 101, "R", PV)])
    with pytest.raises(PvtraceError, match="replayed times exceed"):
        replay_events(huge, captured_layout="superpage", model="stock")


@pytest.mark.parametrize("ts", [2**62, 2**63 + 5, 2**64 - 1])
def test_replay_refuses_a_timestamp_span_that_would_wrap(ts):
    # One corrupt ts (a bit flip, garbage digits) in a capture: at 2^63 or more it wrapped to a
    # negative relative time and every number was silently wrong.
    from pvtrace.replay.run import replay_events

    events = _events([(0, 101, "A", PV), (10, 101, "R", PV), (ts, 102, "A", PV)])
    with pytest.raises(PvtraceError, match=f"timestamps span {ts:,} ns .*corrupt ts"):
        replay_events(events, captured_layout="superpage", model="stock")


@pytest.mark.parametrize("waits", [
    [(101, "B", 2**63 - 1), (101, "S", 2**63 - 1)],  # one acquisition's: -2 once wrapped
    [(101 + k, "B", 2**60 - 1) for k in range(9)],   # nine threads': the total wrapped
])
def test_replay_refuses_recorded_waits_whose_sum_would_wrap(waits):
    # Each ns fits an int64; the replay reported negative waits, with exit status 0.
    from pvtrace.replay.run import replay_events

    tids = sorted({tid for tid, _, _ in waits})
    events = _events([(1000, tid, ev, PV, ns) for tid, ev, ns in waits]
                     + [(1000, tid, "A", PV) for tid in tids]
                     + [(2000 + k, tid, "R", PV) for k, tid in enumerate(tids)])
    total = sum(ns for _, _, ns in waits)
    with pytest.raises(PvtraceError, match=f"recorded waits .ns. add up to {total:,} ns, more "
                                           r"than 4,611,686,018,427,387,903 ns .146 years.: a "
                                           "corrupt ns field"):
        replay_events(events, captured_layout="superpage", model="stock")


def test_replay_refuses_events_out_of_time_order():
    from pvtrace.replay.run import replay_events

    events = _events([(0, 101, "A", PV), (20, 102, "A", PV), (50, 101, "R", PV),
                      (60, 102, "R", PV)])
    events = pl.concat([events[1:2], events[0:1], events[2:]])    # 20 before 0
    with pytest.raises(PvtraceError, match=r"not in time order \(1 records"):
        replay_events(events, captured_layout="superpage", model="stock")


def test_many_threads_alive_at_once():
    # 150 threads want one lock at 0, 1, 2, ... ns and hold it 10 ns each: FIFO grants at 0,
    # 10, 20, ..., so thread i waits 10 i - i. Then 150 more, one after the other, wait for
    # nothing (the live-thread list empties and fills again).
    from pvtrace.replay.run import replay_events

    n = 150
    crowd = [row for i in range(n)
             for row in ((i, 1000 + i, "A", PV), (i + 10, 1000 + i, "R", PV))]
    later = [row for i in range(n) for row in ((10_000 + 20 * i, 5000 + i, "A", PV),
                                                (10_005 + 20 * i, 5000 + i, "R", PV))]
    r = replay_events(_events(crowd + later).sort("ts", maintain_order=True),
                      captured_layout="superpage", model="stock", include_waits=True)
    assert r["waits"] == sorted([9 * i for i in range(n)] + [0] * n)
    assert r["makespan_ns"] == 10_000 + 20 * (n - 1) + 5
    assert r["anomalies"]["forced_grants"] == 0


def test_page_move_as_a_threads_last_step():
    # The kernel passes over a page move to the step after it, but never past the thread's
    # own steps: thread 0 ends on a page move (no END step); thread 1's steps follow it.
    # Thread 0 holds key 0 during 0..10; thread 1 asks at 5, waits 5 ns, holds 10 ns.
    rec = records(6, kind=[0, 1, 2, 0, 1, 3], gap=[0, 10, 5, 5, 10, 0],
                  acq=[0, 0, -1, 1, 1, -1], acq_n=[0, 1, 0, 0, 1, 0], flags=[1, 1, 1, 1, 1, 0],
                  page=[0x200000, 0, 0x201000, 0x201000, 0, 0])
    wait, hold, klass, _, t_end, forced, _ = run_kernel(
        rec, np.array([0, 3]), np.array([3, 6]), np.zeros(2, np.int64), 1,
        np.zeros(1, np.int64), False, 2, 0, 0)
    assert list(wait) == [0, 5] and list(hold) == [10, 10] and forced == 0
    assert t_end[1] == 20
    assert list(klass) == [0, 2]     # on page 0x200000 at 5, before its move at 15: false


def test_step_records_pack_their_small_fields_into_one_word():
    rng = np.random.default_rng(7)
    n = 1000
    kind = rng.integers(0, 4, n)
    fields = {"kind": kind, "mode": rng.integers(0, 2, n), "flags": rng.integers(0, 4, n),
              "is2m": rng.integers(0, 2, n).astype(bool),
              # pages are 4 KiB-aligned physical addresses; counts only on releases
              "page": np.where(kind == 1, 0, rng.integers(0, 2**40, n) << 12),
              "acq_n": np.where(kind == 1, rng.integers(1, 513, n), 0)}
    rec = records(n, gap=rng.integers(0, 2**62, n), key=rng.integers(0, 2**31, n),
                  acq=rng.integers(-1, 2**31, n), **fields)
    assert STEP.itemsize == 24 and set(fields) == set(FIELDS)
    for name, values in fields.items():
        assert np.array_equal(unpack(rec, name), values), name
    with pytest.raises(KeyError, match="not step fields"):
        records(1, colour=3)


SAMPLES = Path(__file__).parent.parent / "sample_traces"


def _sample_keys(sample: str, layout: str, names: tuple[str, ...], spin: int = 0,
                 wakeup: int = 0):
    """The timeline of a sample capture, the replay parameters, and per design name its
    design, keys, key count and turnstiles."""
    tl = load_trace(str(SAMPLES / sample), use_cache=False).timeline
    params = make_params(layout, None, spin, wakeup)
    designs = {}
    for name in names:
        design = get_design(name, params.layout)
        designs[name] = (design, *_design_keys(tl, design, params)[:3])
    return tl, params, designs


@pytest.mark.parametrize("groups", [2, 3, 7])
def test_threads_built_in_groups_give_the_same_steps_and_replay(groups):
    tl, params, designs = _sample_keys("buildkernel-stock-hash256.log.gz", "hash:256",
                                       ("stock", "obm"), 5000, 3)
    for design, dk, nkeys, turnstile in designs.values():
        one, many = build_steps(tl, dk, groups=1), build_steps(tl, dk, groups=groups)
        assert len(many.parts) == min(groups, tl.nthreads) and many.nsteps == one.nsteps
        assert np.array_equal(many.steps, one.steps)
        for k in ("thread_start", "thread_acq", "acq_cls", "acq_op", "acq_extra"):
            assert np.array_equal(getattr(many, k), getattr(one, k)), k
        assert (many.clamped_gaps, many.nested_pv) == (one.clamped_gaps, one.nested_pv)
        outs = [run_kernel(s.rec, s.thread_first, s.thread_end, s.thread_start, nkeys,
                           turnstile, design.shared_turnstiles, len(s.acq_cls), 5000, 3)
                for s in (one, many)]
        for a, b in zip(*outs):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_designs_built_in_reused_memory_give_the_same_steps():
    tl, _, designs = _sample_keys("buildkernel-obm-superpage.log.gz", "superpage",
                                  ("obm", "stock", "obm-pvc", "ideal"))
    assert len(tl.ev) < PARALLEL_RECORDS     # (groups: the test above)
    scratch = Scratch()
    seen = []
    for name in ("obm", "stock", "obm-pvc", "ideal", "obm"):
        dk = designs[name][1]
        fresh, reused = build_steps(tl, dk), build_steps(tl, dk, scratch=scratch)
        assert np.array_equal(reused.steps, fresh.steps), name
        assert np.array_equal(reused.acq_cls, fresh.acq_cls), name
        seen.append(reused.rec)
    # the last obm build is in the memory of the first (the largest)
    assert np.shares_memory(seen[0], seen[-1])
