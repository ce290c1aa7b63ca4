#!/usr/bin/env python3
"""Benchmark the replay: kernel rate, end-to-end rate, peak memory, and a plain-Python baseline.

Generates bundles of a pmap-like workload (threads doing pmap_enter-style operations: pmap
mutex -> pv-list lock -> a page move -> releases, with recorded waits), then prints:

- steps/s and critical sections (acquisitions)/s of the compiled kernel alone (one core,
  compilation excluded);
- end-to-end seconds of ``pvtrace replay`` and ``pvtrace compare`` (5 designs) on two bundle
  sizes, and the marginal rate between them (fixed start-up costs excluded);
- the same replay written as a plain-Python heapq loop over the same steps, for comparison;
- peak RSS of the end-to-end replay against the bundle's in-memory Arrow size.

Usage: scripts/bench_replay.py [--ops N] (default 2,000,000 pmap operations, about 14 M records)
"""

from __future__ import annotations

import argparse
import heapq
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pvtrace.bundle import write_bundle


def make_events(nops: int, nthreads: int = 64, seed: int = 1) -> pl.DataFrame:
    """A pmap_enter-like workload: E, A pmap, A pv (+B sometimes), P, R pv, R pmap, X."""
    rng = np.random.default_rng(seed)
    per = nops // nthreads
    nops = per * nthreads
    tid = np.repeat(np.arange(100, 100 + nthreads), per)
    gaps = rng.integers(200, 4000, nops)
    start = np.concatenate([np.cumsum(g) for g in gaps.reshape(nthreads, per)])
    frames = rng.integers(0, 4096, nops).astype(np.uint64)
    pages = (frames << np.uint64(21)) | (rng.integers(0, 512, nops).astype(np.uint64) << np.uint64(12))
    page2 = (frames << np.uint64(21)) | (rng.integers(0, 512, nops).astype(np.uint64) << np.uint64(12))
    pv_lock = np.uint64(0xFFFFFE0000000000) + frames * np.uint64(64)
    pmap_lock = np.uint64(0xFFFFF80000100000) + (tid % 16).astype(np.uint64) * np.uint64(0x1000)
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
            "cpu": (tid[sel] % 32).astype(np.int32),
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


def python_replay(steps, spin_limit: int = 0) -> int:
    """The same replay as the kernel, as a plain-Python heapq loop (no page classification)."""
    kind, key, key_hi, mode, gap = (steps.kind.tolist(), steps.key.tolist(),
                                    steps.key_hi.tolist(), steps.mode.tolist(), steps.gap.tolist())
    first, end, start = (steps.thread_first.tolist(), steps.thread_end.tolist(),
                         steps.thread_start.tolist())
    state: dict[int, int] = {}
    queues: dict[int, list] = {}
    step = list(first)
    req = [0] * len(first)
    heap = [(start[t] + gap[first[t]], 1 if kind[first[t]] == 0 else 0, t)
            for t in range(len(first))]
    heapq.heapify(heap)
    waits = []

    def advance(t: int, now: int) -> None:
        step[t] += 1
        if step[t] < end[t]:
            s = step[t]
            heapq.heappush(heap, (now + gap[s], 1 if kind[s] == 0 else 0, t))

    executed = 0
    while heap:
        now, _, t = heapq.heappop(heap)
        executed += 1
        s = step[t]
        k = kind[s]
        if k == 0:
            st = state.get(key[s], 0)
            q = queues.setdefault(key[s], [])
            if not q and (st == 0 or (mode[s] == 1 and st > 0)):
                state[key[s]] = -1 if mode[s] == 0 else st + 1
                waits.append(0)
                advance(t, now)
            else:
                q.append(t)
                req[t] = now
        elif k == 1:
            for kk in range(key[s], key_hi[s] + 1):
                st = state.get(kk, 0)
                st = 0 if st <= 1 else st - 1
                state[kk] = st
                q = queues.get(kk)
                while q:
                    w = q[0]
                    wm = mode[step[w]]
                    if wm == 0 and state[kk] != 0 or wm == 1 and state[kk] < 0:
                        break
                    q.pop(0)
                    state[kk] = -1 if wm == 0 else state[kk] + 1
                    waits.append(now - req[w])
                    advance(w, now)
                    if wm == 0:
                        break
            advance(t, now)
        else:
            advance(t, now)
    return executed


def time_cli(args: list[str]) -> tuple[float, int, int]:
    """Wall seconds, peak RSS and peak anonymous memory (KiB) of one pvtrace command in a
    fresh process."""
    # Peak RSS is the process's VmHWM: getrusage's ru_maxrss would include this (big) parent,
    # whose pages the forked child counts until it execs. VmHWM also counts page-cache pages
    # the process maps (a memory-mapped spill file), which the kernel can evict: the peak of
    # RssAnon, sampled every 20 ms, is the memory the process really needs.
    code = ("import sys, time, threading; from pvtrace.cli import main\n"
            "def status(key):\n"
            "    return int([x for x in open('/proc/self/status') if x.startswith(key)][0]"
            ".split()[1])\n"
            "anon = [0]\n"
            "def sample():\n"
            "    while True:\n"
            "        anon[0] = max(anon[0], status('RssAnon')); time.sleep(0.02)\n"
            "threading.Thread(target=sample, daemon=True).start()\n"
            f"sys.argv = ['pvtrace'] + {args!r}; t = time.perf_counter()\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('@@', time.perf_counter() - t, status('VmHWM'), anon[0], file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"pvtrace {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    line = [x for x in r.stderr.splitlines() if x.startswith("@@")][-1].split()
    return float(line[1]), int(line[2]), int(line[3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=2_000_000)
    args = ap.parse_args()
    from pvtrace.models import get_design
    from pvtrace.replay.run import _design_keys, make_params
    from pvtrace.replay.build import build_steps
    from pvtrace.replay.kernel import run_kernel
    from pvtrace.timeline import Timeline

    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp, "big"), Path(tmp, "small")
        events = make_events(args.ops)
        write(big, events)
        small_events = make_events(args.ops // 4)
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
        steps = build_steps(tl, dk)
        kargs = (steps.kind, steps.key, steps.key_hi, steps.mode, steps.gap, steps.flags,
                 steps.page, steps.is2m, steps.acq, steps.acq_n, steps.thread_first,
                 steps.thread_end, steps.thread_start, nkeys, turnstile, False,
                 len(steps.acq_cls), 0, 0)
        run_kernel(*kargs)  # compile / load from cache
        best = min(_timed(run_kernel, kargs) for _ in range(3))
        nsteps, nacq = len(steps.kind), len(steps.acq_cls)
        print(f"kernel: {nsteps:,} steps ({nacq:,} acquisitions) in {best:.3f} s = "
              f"{nsteps / best / 1e6:.1f} M steps/s, {nacq / best / 1e6:.1f} M critical sections "
              "(acquisitions) /s")

        # Plain Python on the first steps of every thread (it is slow), scaled per step.
        t0 = time.perf_counter()
        n_py = _python_subset(steps, 10_000)
        t_py = time.perf_counter() - t0
        py_rate = n_py / t_py
        print(f"plain-Python heapq replay: {n_py:,} steps in {t_py:.2f} s = "
              f"{py_rate / 1e6:.2f} M steps/s")

        # End to end, two sizes: marginal rate excludes start-up.
        n_small = len(small_events)
        designs = ["--models", "stock,obm-pvc,obm,obm-rw,ideal"]
        for cmd, extra in (("replay", ["--model", "obm"]), ("compare", designs),
                           ("compare", [*designs, "--jobs", "2"])):
            ts_, _, _ = time_cli([cmd, str(small), *extra, "--json"])
            tb, rss, _ = time_cli([cmd, str(big), *extra, "--json"])
            ndesign = 1 if cmd == "replay" else 5
            marginal = (events.height - n_small) / (tb - ts_) if tb > ts_ else float("inf")
            steps_per_record = nsteps / events.height
            print(f"{' '.join([cmd, *extra[2:]])}: {tb:.2f} s for {events.height:,} records ({ts_:.2f} s for "
                  f"{n_small:,}); marginal {marginal / 1e6:.2f} M records/s = "
                  f"{marginal * steps_per_record * ndesign / py_rate:.0f}x plain Python per "
                  f"step; peak RSS {rss / 1024:.0f} MiB = {rss * 1024 / arrow_bytes:.2f}x Arrow")
        print(json.dumps({"records": events.height, "steps": nsteps, "acquisitions": nacq,
                          "kernel_s": best}))


def _timed(fn, args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def _python_subset(steps, per_thread: int) -> int:
    """Run the Python replay on the first ``per_thread`` steps of every thread (all threads
    contend, as in the kernel run, over a shorter window); returns the steps executed."""
    from dataclasses import replace

    parts = [np.arange(f, min(f + per_thread, e)) for f, e in
             zip(steps.thread_first.tolist(), steps.thread_end.tolist())]
    idx = np.concatenate(parts)
    lengths = np.array([len(p) for p in parts])
    first = np.r_[0, np.cumsum(lengths)[:-1]]
    sub = replace(steps, thread_first=first, thread_end=first + lengths,
                  kind=steps.kind[idx], key=steps.key[idx], key_hi=steps.key_hi[idx],
                  mode=steps.mode[idx], gap=steps.gap[idx])
    return python_replay(sub)


if __name__ == "__main__":
    main()
