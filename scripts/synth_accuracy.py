#!/usr/bin/env python3
"""How well does the replay predict a design from a stock capture? Checked against ground truth.

For each seed and stock layout, ``pvtrace synth`` runs the same build-like work under the
``stock``, ``obm-pvc`` and ``obm`` kernels (the programs depend on the seed only). The stock
capture is ingested and replayed as each design; the prediction is compared with what the
simulated kernel of that design measured (its ``truth``):

- ``stock`` replayed as ``stock`` must reproduce the capture's own waits within 1 %;
- ``obm-pvc`` and ``obm`` must be predicted within 5 % (total wait) and 10 % (p99 of the
  contended waits).

The captures are synthetic: this checks the replay's logic, not the simulator's realism.

    python scripts/synth_accuracy.py --seeds 1,2,3 --threads 16 --duration-ms 20
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

DESIGNS = ("stock", "obm-pvc", "obm")
TOLERANCE = {"stock": (1.0, 1.0), "obm-pvc": (5.0, 10.0), "obm": (5.0, 10.0)}


def err_pct(pred: int, truth: int) -> float:
    if truth == 0:
        return 0.0 if pred == 0 else 100.0
    return 100.0 * (pred - truth) / truth


def accuracy_rows(seeds, layouts, *, threads: int, duration_ms: float, spin_limit_ns: int,
                  workdir: Path, workload: str = "buildkernel") -> list[dict]:
    """One row per (seed, layout, design): truth, prediction, errors, pass/fail."""
    rows = []
    for seed in seeds:
        for layout in layouts:
            caps = {d: synthesize(kernel=d, layout=layout, threads=threads,
                                  duration_ms=duration_ms, seed=seed, workload=workload,
                                  spin_limit_ns=spin_limit_ns) for d in DESIGNS}
            tag = f"s{seed}-{layout.replace(':', '')}"
            log = workdir / f"{tag}-stock.log"
            write(log, caps["stock"].text)
            run_ingest([str(log)], str(workdir / tag))
            events = open_bundle(str(workdir / tag)).table("events")
            obs = observed_events(events)
            for design in DESIGNS:
                pred = replay_events(events, captured_layout=layout, model=design,
                                     spin_limit_ns=spin_limit_ns)
                truth = caps[design].truth
                tw, pw = truth["wait_ns"], pred["wait_ns"]
                t99 = truth["contended_wait_percentiles_ns"]["p99"]
                p99 = pred["contended_wait_percentiles_ns"]["p99"]
                ew, e99 = err_pct(pw, tw), err_pct(p99, t99)
                tol_w, tol_99 = TOLERANCE[design]
                rows.append({
                    "seed": seed, "layout": layout, "design": design,
                    "observed_wait_ns": obs["wait_ns"] if design == "stock" else None,
                    "truth_wait_ns": tw, "pred_wait_ns": pw, "wait_err_pct": ew,
                    "truth_p99_ns": t99, "pred_p99_ns": p99, "p99_err_pct": e99,
                    "truth_contended": truth["contended"], "pred_contended": pred["contended"],
                    "truth_sibling": truth["sibling_wakeups"],
                    "pred_sibling": pred["sibling_wakeups"],
                    "ok": abs(ew) <= tol_w and abs(e99) <= tol_99,
                })
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--layouts", default="superpage,hash:256")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--duration-ms", type=float, default=20.0)
    ap.add_argument("--spin-limit", type=int, default=10_000)
    ap.add_argument("--workload", default="buildkernel")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="pvtrace-acc-") as tmp:
        rows = accuracy_rows(seeds, a.layouts.split(","), threads=a.threads,
                             duration_ms=a.duration_ms, spin_limit_ns=a.spin_limit,
                             workdir=Path(tmp), workload=a.workload)
    print(f"synthetic captures: {a.threads} threads, {a.duration_ms} ms, workload "
          f"{a.workload}, spin limit {a.spin_limit} ns; truth = the simulated kernel's "
          "measured waits, predicted = replay of the stock capture")
    hdr = (f"{'seed':>4} {'layout':<9} {'design':<8} {'truth wait':>12} {'predicted':>12} "
           f"{'err %':>7} {'truth p99':>10} {'pred p99':>10} {'err %':>7} "
           f"{'sibl t/p':>11}  ok")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['seed']:>4} {r['layout']:<9} {r['design']:<8} {r['truth_wait_ns']:>12} "
              f"{r['pred_wait_ns']:>12} {r['wait_err_pct']:>7.2f} {r['truth_p99_ns']:>10} "
              f"{r['pred_p99_ns']:>10} {r['p99_err_pct']:>7.2f} "
              f"{str(r['truth_sibling']) + '/' + str(r['pred_sibling']):>11}  "
              f"{'yes' if r['ok'] else 'NO'}")
    bad = sum(not r["ok"] for r in rows)
    print(f"{len(rows) - bad}/{len(rows)} within tolerance (stock 1 %; obm-pvc/obm 5 % total, "
          "10 % p99)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
