#!/usr/bin/env python3
"""Benchmark the replay: kernel rate, end-to-end rate, peak memory, and a plain-Python baseline.

Generates bundles of a pmap-like workload (threads doing pmap_enter-style operations: pmap
mutex -> pv-list lock -> a page move -> releases, with recorded waits), then prints:

- steps/s and critical sections (acquisitions)/s of the compiled kernel alone (one core,
  compilation excluded): the best and the median of 5 runs on each of 3 builds of the steps
  (on this VM, the same kernel on the same steps runs up to 1.5x slower in one build of them
  than in another, all of its runs, as well as from one minute to the next);
- end-to-end seconds of ``pvtrace replay`` and ``pvtrace compare`` (5 designs) on two bundle
  sizes, and the marginal rate between them (fixed start-up costs excluded): for a bundle's
  first replay, which builds the timeline and writes its cache, and for a replay again, which
  maps the cache (the faster of two: the first of them computes the designs' keys and saves
  them next to the cache, ``cache/derived``, the second maps them too);
- the same replay written as a plain-Python heapq loop over the same steps (every rule of
  the kernel, checked to give the kernel's waits, holds, classes and sibling wakeups; best
  of 3), for comparison;
- peak RSS of the end-to-end replay against the bundle's in-memory Arrow size.

Usage: scripts/bench_replay.py [--ops N] (default 2,000,000 pmap operations, about 14 M records)
"""

from __future__ import annotations

import argparse
import heapq
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pvtrace.bundle import write_bundle


def make_events(nops: int, nthreads: int = 64, seed: int = 1,
                lifetimes: int = 1) -> pl.DataFrame:
    """A pmap_enter-like workload: E, A pmap, A pv (+B sometimes), P, R pv, R pmap, X. With
    ``lifetimes`` > 1, each of the ``nthreads`` runs its operations as that many threads one
    after the other (distinct tids), as a build's short-lived processes do."""
    rng = np.random.default_rng(seed)
    per = nops // nthreads
    nops = per * nthreads
    thread = np.repeat(np.arange(nthreads), per)
    tid = 100 + thread * lifetimes + np.tile(np.arange(per) * lifetimes // per, nthreads)
    gaps = rng.integers(200, 4000, nops)
    start = np.concatenate([np.cumsum(g) for g in gaps.reshape(nthreads, per)])
    frames = rng.integers(0, 4096, nops).astype(np.uint64)
    pages, page2 = ((frames << np.uint64(21))
                    | (rng.integers(0, 512, nops).astype(np.uint64) << np.uint64(12))
                    for _ in range(2))
    pv_lock = np.uint64(0xFFFFFE0000000000) + frames * np.uint64(64)
    pmap_lock = (np.uint64(0xFFFFF80000100000)
                 + ((100 + thread) % 16).astype(np.uint64) * np.uint64(0x1000))
    waited = rng.random(nops) < 0.05
    wait_ns = np.where(waited, rng.integers(100, 5000, nops), 0)
    base = start * 8
    # offsets inside an operation (ns), one row per record of the template
    tmpl = [  # ev, cls, lock, mode, ns, pa, offset
        ("E", "-", None, "-", None, pages, 0),
        ("A", "pmap", pmap_lock, "w", None, pages, 10),
        ("B", "pv", pv_lock, "w", wait_ns, pages, 30),
        ("A", "pv", pv_lock, "w", None, pages, 30),
        ("P", "-", None, "4k", None, page2, 200),
        ("R", "pv", pv_lock, "w", None, page2, 400),
        ("R", "pmap", pmap_lock, "w", None, page2, 420),
        ("X", "-", None, "-", None, page2, 430),
    ]
    parts = []
    for ev, cls, lock, mode, ns, pa, off in tmpl:
        sel = waited if ev == "B" else np.ones(nops, bool)
        parts.append(pl.DataFrame({
            "ts": (base + off)[sel].astype(np.uint64),
            "cpu": ((100 + thread[sel]) % 32).astype(np.int32),
            "tid": tid[sel].astype(np.int64),
            "ev": ev, "cls": cls,
            "lock": (lock[sel] if lock is not None else np.zeros(sel.sum(), np.uint64)),
            "mode": mode,
            "ns": (ns[sel] if ns is not None else np.zeros(sel.sum(), np.int64)).astype(np.int64),
            "pa": pa[sel],
            "op": "pmap_enter",
        }))
    df = pl.concat(parts).with_row_index("line").sort("ts", maintain_order=True)
    return df.with_columns(pl.lit(0, pl.UInt16).alias("src"), pl.col("line").cast(pl.UInt64) + 1)


def write(path: Path, events: pl.DataFrame) -> None:
    write_bundle(path, {"events": events},
                 {"layout": {"effective": "superpage", "detected": "superpage"}}, force=True)


def python_replay(steps, nkeys: int, turnstile, shared_ts: bool, nacq: int,
                  spin_limit: int = 0, wakeup_ns: int = 0):
    """The kernel's replay (pvtrace.replay.kernel._run, same rules, same results) as a plain
    Python heapq loop: FIFO grants, reader/writer keys, key runs, true/false classification of
    pv waits, turnstiles and sibling wakeups, spin limit and wakeup cost, forced grants.
    Returns (steps executed, wait, hold, class, sibling) per acquisition (lists of ``nacq``)."""
    kind, key, mode, gap, flags, page, is2m, acq, acq_n = (
        a.tolist() for a in (steps.kind, steps.key, steps.mode, steps.gap, steps.flags,
                             steps.page, steps.is2m, steps.acq, steps.acq_n))
    first, end, start = (steps.thread_first.tolist(), steps.thread_end.tolist(),
                         steps.thread_start.tolist())
    turnstile = turnstile.tolist()
    nthr = len(first)
    state = [0] * nkeys
    queue: dict[int, deque] = defaultdict(deque)    # FIFO per key (millions under OBM)
    asleep: dict[int, set] = {}
    a_req, a_grant, a_rel = [0] * nacq, [0] * nacq, [-1] * nacq
    a_class, a_sib = [0] * nacq, [0] * nacq
    step = list(first)
    wkey, req = [-1] * nthr, [0] * nthr
    pvlo, pvhi, tpage, tbig = [-1] * nthr, [-1] * nthr, [0] * nthr, [False] * nthr
    heap = [(start[t] + gap[first[t]], 1 if kind[first[t]] == 0 else 0, t)
            for t in range(nthr) if first[t] < end[t]]
    heapq.heapify(heap)

    def hold_pv(t, s, k):
        if flags[s] & 1:
            if flags[s] & 2:
                pvhi[t] = k
            else:
                pvlo[t], pvhi[t], tpage[t], tbig[t] = k, k, page[s], is2m[s]

    def advance(t, at):
        step[t] += 1
        s = step[t]
        if s < end[t]:
            heapq.heappush(heap, (at + gap[s], 1 if kind[s] == 0 else 0, t))

    def grant(w, t, k):
        s = step[w]
        run_at = t + (wakeup_ns if t - req[w] > spin_limit else 0)
        a_grant[acq[s]] = run_at        # wait and hold are the thread's: until / from it runs
        wkey[w] = -1
        asleep[turnstile[k]].discard(w)
        hold_pv(w, s, k)
        advance(w, run_at)

    executed = 0
    now = 0
    while True:
        if not heap:
            waiting = [o for o in range(nthr) if wkey[o] >= 0]
            if not waiting:
                break
            w = min(waiting, key=lambda o: (req[o], o))      # forced grant
            k = wkey[w]
            queue[k].remove(w)
            if not queue[k]:
                del queue[k]
            state[k] = -1 if mode[step[w]] == 0 else max(state[k], 0) + 1
            grant(w, now, k)
            continue
        now, _, t = heapq.heappop(heap)
        executed += 1
        s = step[t]
        k_ = kind[s]
        if k_ == 0:
            k, m, a = key[s], mode[s], acq[s]
            a_req[a] = now
            if k not in queue and (state[k] == 0 or (m == 1 and state[k] > 0)):
                state[k] = -1 if m == 0 else state[k] + 1
                a_grant[a] = now
                hold_pv(t, s, k)
                advance(t, now)
                continue
            queue[k].append(t)
            wkey[t], req[t] = k, now
            asleep.setdefault(turnstile[k], set()).add(t)
            if flags[s] & 1:                      # who stands in the way: same page or not
                wp, wb = (tpage[t], tbig[t]) if flags[s] & 2 else (page[s], is2m[s])
                cls, unknown = 2, wp == 0
                for o in range(nthr):
                    holds = pvlo[o] >= 0 and pvlo[o] <= k <= pvhi[o]
                    if o == t or not (holds or wkey[o] == k):
                        continue
                    op_, ob = tpage[o], tbig[o]
                    if wkey[o] == k and not holds:
                        ws = step[o]
                        op_, ob = (tpage[o], tbig[o]) if flags[ws] & 2 else (page[ws], is2m[ws])
                    unknown = unknown or op_ == 0
                    if wp == 0 or op_ == 0 or (
                            (wp >> 21) == (op_ >> 21) if wb or ob else (wp >> 12) == (op_ >> 12)):
                        cls = 1
                a_class[a] = 3 if cls == 1 and unknown else cls
        elif k_ == 1:
            for j in range(acq_n[s]):
                a_rel[acq[s] + j] = now
            if flags[s] & 1:
                pvlo[t], pvhi[t] = -1, -1
            freed = set()
            for k in range(key[s], key[s] + acq_n[s]):
                st = state[k]
                st = state[k] = 0 if st <= 1 else st - 1
                if st == 0:
                    freed.add(k)
                q = queue.get(k)
                while q:
                    w = q[0]
                    wm = mode[step[w]]
                    if (wm == 0 and state[k] != 0) or (wm == 1 and state[k] < 0):
                        break
                    q.popleft()
                    state[k] = -1 if wm == 0 else state[k] + 1
                    grant(w, now, k)
                    if wm == 0:
                        break
                if q is not None and not q:
                    del queue[k]
            if shared_ts and freed:     # once per release, not for sleepers it freed
                for ts in {turnstile[k] for k in freed}:
                    for o in asleep.get(ts, ()):
                        if wkey[o] not in freed and now - req[o] > spin_limit:
                            a_sib[acq[step[o]]] += 1
            advance(t, now)
        elif k_ == 2:
            tpage[t], tbig[t] = page[s], is2m[s]
            advance(t, now)
    wait = [max(g - r, 0) for g, r in zip(a_grant, a_req)]
    hold = [r - g if r >= 0 else -1 for g, r in zip(a_grant, a_rel)]
    return executed, wait, hold, a_class, a_sib


def time_cli(args: list[str]) -> tuple[float, int, int, float, float]:
    """Wall seconds, peak RSS and peak anonymous memory (KiB), user and system CPU seconds of
    one pvtrace command in a fresh process."""
    # Peak RSS is the process's VmHWM: getrusage's ru_maxrss would include this (big) parent,
    # whose pages the forked child counts until it execs. VmHWM also counts page-cache pages
    # the process maps (a memory-mapped spill file), which the kernel can evict: the peak of
    # RssAnon, sampled every 20 ms, is the memory the process really needs.
    code = ("import sys, time, threading; from pvtrace.cli import run\n"
            "def status(key):\n"
            "    return int([x for x in open('/proc/self/status') if x.startswith(key)][0]"
            ".split()[1])\n"
            "anon = [0]\n"
            "def sample():\n"
            "    while True:\n"
            "        anon[0] = max(anon[0], status('RssAnon')); time.sleep(0.02)\n"
            "threading.Thread(target=sample, daemon=True).start()\n"
            f"sys.argv = ['pvtrace'] + {args!r}; t = time.perf_counter()\n"
            "try:\n    run()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "c = __import__('os').times()\n"
            "print('@@', time.perf_counter() - t, status('VmHWM'), anon[0], c.user, c.system,"
            " file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"pvtrace {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    line = [x for x in r.stderr.splitlines() if x.startswith("@@")][-1].split()
    return float(line[1]), int(line[2]), int(line[3]), float(line[4]), float(line[5])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=2_000_000)
    ap.add_argument("--lifetimes", type=int, default=1, metavar="L",
                    help="run each of the 64 threads' operations as L short-lived threads one "
                         "after the other (64 L distinct tids, 64 alive at once)")
    args = ap.parse_args()
    from pvtrace.models import get_design
    from pvtrace.replay.run import _design_keys, make_params
    from pvtrace.replay.build import STEP_PAGE, build_steps
    from pvtrace.replay.kernel import run_kernel
    from pvtrace.timeline import Timeline

    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp, "big"), Path(tmp, "small")
        events = make_events(args.ops, lifetimes=args.lifetimes)
        write(big, events)
        small_events = make_events(args.ops // 4, lifetimes=args.lifetimes)
        write(small, small_events)
        # The bundle's Arrow size: its events table as read back (all columns, dictionary
        # encoded as stored), the table a user would otherwise load to work on.
        arrow_bytes = pq.read_table(big / "events.parquet").nbytes
        print(f"bundle: {events.height:,} records, Arrow {arrow_bytes / 2**20:.0f} MiB")

        # Kernel alone.
        tl = Timeline.from_events(events)
        params = make_params("superpage", None, 0, 0)
        design = get_design("stock", params.layout)
        dk, nkeys, turnstile, _ = _design_keys(tl, design, params)
        times = []
        for _ in range(3):
            steps = None        # the previous build's memory first
            steps = build_steps(tl, dk)
            kargs = (steps.rec, steps.thread_first, steps.thread_end, steps.thread_start,
                     nkeys, turnstile, False, len(steps.acq_cls), 0, 0)
            run_kernel(*kargs)  # compile / load from cache; fault the arrays in
            times += [_timed(run_kernel, kargs) for _ in range(5)]
            del kargs
        best, median = min(times), float(np.median(times))
        nsteps, nacq = len(steps.kind), len(steps.acq_cls)
        # The kernel passes over page moves without a scheduler turn (see its docstring).
        moves = int(np.count_nonzero(steps.kind == STEP_PAGE))
        print(f"kernel: {nsteps:,} steps ({nacq:,} acquisitions; {moves:,} page moves, which "
              f"take no scheduler turn) in {best:.3f} s = {nsteps / best / 1e6:.1f} M steps/s, "
              f"{nacq / best / 1e6:.1f} M critical sections (acquisitions) /s at best; median "
              f"{median:.3f} s = {nacq / median / 1e6:.1f} M sections/s (3 builds x 5 runs)")

        # Plain Python on the first steps of every thread (it is slow), per step, under a
        # design without and one with shared turnstiles; checked against the kernel on the
        # same steps. The faster of the two rates is the baseline.
        py_rate = 0.0
        for name in ("stock", "obm"):
            d = get_design(name, params.layout)
            if name != "stock":     # stock's steps are the kernel run's, above
                dk, nkeys, turnstile, _ = _design_keys(tl, d, params)
                steps = build_steps(tl, dk)
                del dk
            sub = _subset(steps, 10_000)
            del steps
            nacq_d = len(sub.acq_cls)
            t_py = float("inf")
            for _ in range(3):      # the fastest of three: the baseline is not handicapped
                t0 = time.perf_counter()
                n_py, *py_out = python_replay(sub, nkeys, turnstile, d.shared_turnstiles,
                                              nacq_d)
                t_py = min(t_py, time.perf_counter() - t0)
            def agrees(py_results, spin_limit=0, wakeup_ns=0):
                """The Python replay's waits, holds, classes and sibling wakeups are the
                kernel's on the same steps."""
                k_out = run_kernel(sub.rec, sub.thread_first, sub.thread_end,
                                   sub.thread_start, nkeys, turnstile, d.shared_turnstiles,
                                   nacq_d, spin_limit, wakeup_ns)[:4]
                return all(np.array_equal(np.asarray(p_, np.int64), np.asarray(k_, np.int64))
                           for p_, k_ in zip(py_results, k_out))

            if not agrees(py_out):
                sys.exit(f"the plain-Python replay disagrees with the kernel under {name}")
            # The rules for sleepers too: a spin limit and a wakeup cost (not timed).
            if d.shared_turnstiles and not agrees(python_replay(
                    sub, nkeys, turnstile, True, nacq_d, 60, 3)[1:], 60, 3):
                sys.exit(f"the plain-Python replay disagrees with the kernel under {name} "
                         "with a spin limit and a wakeup cost")
            contended = int(np.count_nonzero(np.asarray(py_out[0])))
            print(f"plain-Python heapq replay, {name}: {n_py:,} steps in {t_py:.2f} s = "
                  f"{n_py / t_py / 1e6:.2f} M steps/s ({contended:,} waits; waits, holds, "
                  "classes and sibling wakeups equal to the kernel's"
                  + (", also with a spin limit and a wakeup cost)" if d.shared_turnstiles
                     else ")"))
            py_rate = max(py_rate, n_py / t_py)

        # End to end, two sizes: marginal rate excludes start-up.
        touch = first_touch()
        print(f"this machine: a new process first writes 1 GiB of memory in {min(touch):.2f}-"
              f"{max(touch):.2f} s (3 runs; the kernel zeroing the pages and, in a VM, the "
              "host backing them): most of the system CPU time below")
        n_small = len(small_events)
        designs = ["--models", "stock,obm-pvc,obm,obm-rw,ideal"]
        for cmd, extra in (("replay", ["--model", "obm"]), ("compare", designs),
                           ("compare", [*designs, "--jobs", "2"])):
            # A bundle's first replay builds the timeline and writes its cache; later ones
            # map the cache (pvtrace.replay.cache). Both, the faster of two runs each (the
            # machine's load varies; both big runs are printed); RSS of the big one.
            for first in (True, False):
                def run(bundle: Path):
                    if first:
                        shutil.rmtree(bundle / "cache", ignore_errors=True)
                    return time_cli([cmd, str(bundle), *extra, "--json"])
                ts_ = min(run(small)[0] for _ in range(2))
                runs = [run(big) for _ in range(2)]
                fastest = min(runs)
                tb, rss = fastest[0], max(r[1] for r in runs)
                ndesign = 1 if cmd == "replay" else 5
                marginal = (events.height - n_small) / (tb - ts_) if tb > ts_ else float("inf")
                steps_per_record = nsteps / events.height
                print(f"{' '.join([cmd, *extra[2:]])}, "
                      f"{'first (builds the timeline cache)' if first else 'again (maps it)'}: "
                      f"{tb:.2f} s for {events.height:,} records (runs "
                      f"{' and '.join(f'{r[0]:.2f}' for r in runs)} s; {ts_:.2f} s for "
                      f"{n_small:,}); marginal {marginal / 1e6:.2f} M records/s"
                      f" = {marginal * steps_per_record * ndesign / py_rate:.0f}x plain Python "
                      f"per step; CPU user {fastest[3]:.2f} s, system {fastest[4]:.2f} s; "
                      f"peak RSS {rss / 1024:.0f} MiB = {rss * 1024 / arrow_bytes:.2f}x Arrow "
                      f"(anonymous {fastest[2] / 1024:.0f} MiB)")
        print(json.dumps({"records": events.height, "steps": nsteps, "acquisitions": nacq,
                          "kernel_s": best}))


def first_touch() -> list[float]:
    """Seconds each of three fresh processes takes to write 1 GiB of newly allocated memory:
    what each byte of a command's peak memory costs it once. In a VM that hands freed memory
    back to its host (virtio-balloon free page reporting) this varies with how recently the
    pages were freed, and is several times what it is on bare metal."""
    code = ("import time, numpy as np; t = time.perf_counter(); a = np.empty(1 << 27, np.int64);"
            " a.fill(1); print(time.perf_counter() - t)")
    return [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout) for _ in range(3)]


def _timed(fn, args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def _subset(steps, per_thread: int):
    """The first ``per_thread`` steps of every thread (all threads contend, as in the kernel
    run, over a shorter window), their acquisitions renumbered densely in order. When there
    are more threads than the 64 alive at once (``--lifetimes``), the threads that start
    first, whole, up to about as many steps: cutting each short-lived thread short would leave
    its locks held for ever."""
    from dataclasses import replace

    from pvtrace.replay.build import unpack

    first, end = steps.thread_first, steps.thread_end
    sel = np.arange(len(first))
    if len(sel) > 64:
        by_start = np.argsort(steps.thread_start, kind="stable")
        total = np.cumsum((end - first)[by_start])
        sel = np.sort(by_start[:int(np.searchsorted(total, 64 * per_thread)) + 1])
    parts = [np.arange(f, min(f + per_thread, e))
             for f, e in zip(first[sel].tolist(), end[sel].tolist())]
    idx = np.concatenate(parts)
    lengths = np.array([len(p) for p in parts])
    new_first = np.r_[0, np.cumsum(lengths)[:-1]]
    rec = steps.rec[idx]
    # A thread releases only what it acquired before, so the kept releases refer to kept
    # acquisitions; a run's acquisitions stay contiguous.
    kept = np.unique(rec["acq"][unpack(rec, "kind") == 0])
    has = rec["acq"] >= 0
    rec["acq"][has] = np.searchsorted(kept, rec["acq"][has])
    return replace(steps, rec=rec, nsteps=len(rec), parts=[(0, len(rec))],
                   thread_first=new_first, thread_end=new_first + lengths,
                   thread_start=steps.thread_start[sel], acq_cls=steps.acq_cls[kept],
                   acq_op=steps.acq_op[kept], acq_extra=steps.acq_extra[kept])


if __name__ == "__main__":
    main()
