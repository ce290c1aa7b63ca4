#!/usr/bin/env python3
"""Ingest and replay a big capture: seconds and peak memory of each, per record.

Writes a pvtrace event log of about ``--gb`` GB (the pmap_enter-like workload of
``bench_replay.py``, 64 threads, generated in blocks of ``--block-ops`` operations, each block
shifted in time after the previous one), then runs ``pvtrace ingest`` and ``pvtrace replay
--model obm --json`` (twice: the first builds the timeline cache, the second maps it) on it in
fresh processes and prints wall seconds and peak RSS (VmHWM)
for both, per record, next to the machine's memory. This is the check that a capture of the
size users bring (10 GB) goes through on a 24 GB machine; it takes minutes, not seconds.

    .venv/bin/python scripts/bench_scale.py --gb 10 --dir /var/tmp/pvscale
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replay import make_events, time_cli  # noqa: E402

HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def hex_column(values: np.ndarray) -> pl.Series:
    """``0x``-prefixed, zero-padded 16-digit hex of uint64 values ("0" for zero), vectorized:
    the event-log parser reads hex with or without leading zeros."""
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    digits = HEX[((values[:, None] >> shifts) & np.uint64(0xF)).astype(np.intp)]
    text = np.char.add(b"0x", digits.view("S16").ravel())
    text[values == 0] = b"0"
    return pl.Series(text.astype(str))


def write_log(path: Path, gb: float, block_ops: int) -> int:
    """Append time-shifted blocks of the workload until the file holds ``gb`` GB; returns
    the records written."""
    records = 0
    shift = 0
    with open(path, "wb") as f:
        f.write(b"# pvtrace-log v1\n# ncpu=32\n# ndomains=2\n# timestamp0=0\n")
        seed = 1
        while f.tell() < gb * 1e9:
            ev = make_events(block_ops, seed=seed)
            span = int(ev["ts"].max()) + 10_000
            text = ev.select(
                (pl.col("ts") + shift).alias("ts"), "cpu", "tid", "ev", "cls",
                pl.Series("lock", hex_column(ev["lock"].to_numpy())), "mode", "ns",
                pl.Series("pa", hex_column(ev["pa"].to_numpy())), "op")
            text.write_csv(f, separator=" ", include_header=False, quote_style="never")
            records += ev.height
            shift += span
            seed += 1
            print(f"  {f.tell() / 1e9:.1f} GB, {records:,} records", end="\r", flush=True)
    print()
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=10.0, help="size of the generated log")
    ap.add_argument("--block-ops", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/var/tmp/pvtrace-scale",
                    help="work directory (needs about 1.9x --gb free; removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the log and the bundle")
    args = ap.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    log, bundle = work / "capture.log", work / "bundle"
    try:
        t0 = time.perf_counter()
        records = write_log(log, args.gb, args.block_ops)
        size = log.stat().st_size
        print(f"log: {size / 1e9:.2f} GB, {records:,} records, written in "
              f"{time.perf_counter() - t0:.0f} s")
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        print(f"machine: {os.cpu_count()} cores, {mem / 2**30:.1f} GiB RAM")
        for name, cmd in (("ingest", ["ingest", str(log), "-o", str(bundle), "--force", "-q"]),
                          ("replay --model obm", ["replay", str(bundle), "--model", "obm",
                                                  "--json"]),
                          # the first replay wrote the bundle's timeline cache; this maps it
                          ("replay --model obm, again", ["replay", str(bundle), "--model",
                                                         "obm", "--json"])):
            secs, rss_kib, anon_kib, user, system = time_cli(cmd)
            rss, anon = rss_kib * 1024, anon_kib * 1024
            print(f"{name}: {secs:.0f} s = {records / secs / 1e6:.2f} M records/s (CPU user "
                  f"{user:.0f} s, system {system:.0f} s); peak anonymous memory "
                  f"{anon / 2**30:.2f} GiB = {anon / records:.0f} B/record (peak RSS, page "
                  f"cache it maps included, {rss / 2**30:.2f} GiB)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
