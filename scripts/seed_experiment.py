#!/usr/bin/env python3
"""The seed's experiment, redone on synthetic captures: how much pv-list spinning does OBM save?

The OBM patch review (D24217) reported system time for ``buildkernel -s -j 40``:

- 16 cores / 32 threads, non-NUMA (stock pv locks: ``hash:256``): stock 567.74 s, OBM 307.43 s;
- a larger NUMA machine (stock pv locks: ``superpage``): stock 446.20 s, OBM alone 438.05 s,
  OBM plus removal of the pv-chunk-list lock 429.60 s.

This script writes a 32-thread build-like capture with ``pvtrace synth`` on a stock kernel of
each layout, ingests it, and replays it as ``obm-pvc`` (OBM alone) and ``obm`` (OBM plus the
chunk-lock removal). Lock spin time stands in for system time: it is the CPU time the designs
differ in (the rest of the kernel's work is the same under every design). The captures are
SYNTHETIC: the absolute numbers say nothing about a real machine; the direction and the
relative size of the changes are what can be compared with the published figures.

    python scripts/seed_experiment.py --duration-ms 20 --seed 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pvtrace.bundle import open_bundle
from pvtrace.ingest import run_ingest
from pvtrace.replay.run import observed_events, replay_events
from pvtrace.synth import synthesize, write

PUBLISHED = {   # system time in seconds, first run of each (DOMAIN.md)
    "hash:256": {"box": "32-thread non-NUMA", "stock": 567.74, "obm-pvc": None, "obm": 307.43},
    "superpage": {"box": "NUMA", "stock": 446.20, "obm-pvc": 438.05, "obm": 429.60},
}


def pct(new: float, old: float) -> str:
    return f"{100.0 * (new - old) / old:+.1f}%" if old else "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--duration-ms", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--spin-limit", type=int, default=10_000,
                    help="waits up to this spin (ns); longer ones block")
    a = ap.parse_args()
    print(f"SYNTHETIC captures (pvtrace synth, workload buildkernel, {a.threads} threads, "
          f"{a.duration_ms:g} ms, seed {a.seed}), not measurements of a real machine.")
    print("Spin time of all lock waits is the system-time proxy; published = system time of "
          "buildkernel -s -j 40 (D24217).\n")
    hdr = (f"{'stock layout':<13} {'design':<8} {'spin ns':>12} {'vs stock':>9} "
           f"{'wait ns':>12} {'false-block ns':>15} {'pvc wait ns':>12} {'makespan ns':>12} "
           f"{'published sys s':>16} {'vs stock':>9}")
    print(hdr)
    print("-" * len(hdr))
    with tempfile.TemporaryDirectory(prefix="pvtrace-seed-") as tmp:
        for layout in ("hash:256", "superpage"):
            cap = synthesize(kernel="stock", layout=layout, threads=a.threads,
                             duration_ms=a.duration_ms, seed=a.seed,
                             spin_limit_ns=a.spin_limit)
            log = Path(tmp) / f"stock-{layout.replace(':', '')}.log"
            write(log, cap.text)
            bundle = Path(tmp) / log.stem
            run_ingest([str(log)], str(bundle))
            events = open_bundle(str(bundle)).table("events")
            results = {"observed": observed_events(events)}
            for model in ("stock", "obm-pvc", "obm"):
                results[model] = replay_events(events, captured_layout=layout, model=model,
                                               spin_limit_ns=a.spin_limit)
            base = results["stock"]["spin_ns"]
            pub = PUBLISHED[layout]
            for name in ("observed", "stock", "obm-pvc", "obm"):
                r = results[name]
                p = pub.get(name) if name != "observed" else None
                pvc = r.get("by_class", {}).get("pvc", {}).get("wait_ns", 0)
                false_ns = r.get("false_block", {}).get("wait_ns", "")
                print(f"{layout:<13} {name:<8} {r['spin_ns']:>12} "
                      f"{pct(r['spin_ns'], base) if name != 'observed' else '':>9} "
                      f"{r['wait_ns']:>12} {false_ns!s:>15} {pvc:>12} "
                      f"{r.get('makespan_ns', 0):>12} "
                      f"{(f'{p:.2f}' if p else '-'):>16} "
                      f"{pct(p, pub['stock']) if p and name != 'stock' else '':>9}")
            print(f"{'':<13} (published box: {pub['box']})")
    print("\nReading: in this synthetic workload almost every stock wait is a false block on "
          "the few frames holding the\nshared compiler text, which both stock layouts alias, "
          "so OBM removes nearly all spinning under both.\nThe published NUMA box lost only "
          "2-4 % of system time, so its stock kernel spun far less than this model does:\n"
          "the synthetic workload does not reproduce the difference between the two boxes.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
