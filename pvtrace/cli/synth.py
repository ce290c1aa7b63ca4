"""``pvtrace synth``: write a synthetic capture whose ground truth is known."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import typer

from pvtrace.cli import app
from pvtrace.errors import PvtraceError


_MAX_MEM_GB = 16384
# The simulation keeps every record until it writes them: at most about this many records per
# thread per ms of work (the busiest workload and kernel, exits on obm, make 1,775) and this
# many bytes of memory per record (measured: 1.34 GB for 4.5 M records).
_RECORDS_PER_THREAD_MS = 2000
_BYTES_PER_RECORD = 300


@app.command()
def synth(
    output_arg: str = typer.Option(..., "-o", "--output",
                                   help="Capture file to write (.gz: gzip, .zst: zstd; -: "
                                   "standard output)."),
    kernel: str = typer.Option("stock", help="Simulated kernel: stock, obm-pvc or obm."),
    layout: str = typer.Option("superpage", help="Stock pv-list layout (and OBM turnstile "
                               "grouping): superpage or hash:N."),
    threads: int = typer.Option(8, help="Threads, one per CPU."),
    duration_ms: float = typer.Option(20.0, "--duration-ms",
                                      help="Work per thread, in ms of lock-free time."),
    seed: int = typer.Option(1, help="Random seed: the same seed gives every kernel the "
                             "same work."),
    mem_gb: float = typer.Option(16.0, "--mem-gb", help="Physical memory of the machine."),
    workload: str = typer.Option("buildkernel", help="buildkernel, faults or exits."),
    spin_limit: int = typer.Option(10_000, "--spin-limit",
                                   help="Waits up to NS spin, longer ones block (S/B split "
                                   "and sibling wakeups)."),
    wakeup_ns: int = typer.Option(0, "--wakeup-ns", help="Latency of waking a blocked "
                                  "waiter."),
    ndomains: int = typer.Option(0, help="NUMA domains, each with its own pv chunk list "
                                 "(0: 2 for superpage with 4 or more threads, else 1)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Simulate a workload on a stock or OBM kernel and write its pvtrace event log."""
    from pvtrace.report.table import count
    from pvtrace.synth import synthesize

    from pvtrace.replay.run import make_params

    if not output_arg:
        raise PvtraceError("--output is empty; name the capture file, or - for standard output")
    output = Path(output_arg)
    if ndomains < 0:
        raise PvtraceError("--ndomains must be >= 0")
    if ndomains > max(threads, 1):
        raise PvtraceError(f"--ndomains {ndomains}: a domain needs a CPU; use at most "
                           f"--threads ({threads})")
    # The replay's limits: a capture it could not replay with its own settings is no use.
    make_params("superpage", None, spin_limit, wakeup_ns)
    # Checked here because the generator turns these into integers (nan and inf do not convert)
    # and numpy takes only non-negative seeds; the other bounds are checked where they are used.
    for option, value in (("--duration-ms", duration_ms), ("--mem-gb", mem_gb)):
        if not math.isfinite(value):
            raise PvtraceError(f"{option} must be a finite number, not {value}")
    # The machine's 2 MiB frames are listed one by one (with 1e300 the list cannot even be
    # allocated): 16 TiB, more than any machine worth simulating, keeps it to a few hundred MB.
    if mem_gb > _MAX_MEM_GB:
        raise PvtraceError(f"--mem-gb {mem_gb:g} is too large: use at most {_MAX_MEM_GB}")
    if seed < 0:
        raise PvtraceError(f"--seed {seed}: use a seed >= 0")
    _check_size(threads, duration_ms)
    # Before the simulation, which can take minutes: a capture is easily overwritten by
    # mistake (a real one next to the synthetic ones, the same name twice in a script).
    if str(output) != "-" and output.is_file() and not force:
        raise PvtraceError("exists; use --force to replace it", path=str(output))
    # "dir/" names a directory even when there is none yet (Path drops the slash)
    if output.is_dir() or (output_arg != "-" and output_arg.endswith("/")):
        raise PvtraceError("is a directory, not a capture file", path=output_arg)
    t0 = time.perf_counter()
    cap = synthesize(kernel=kernel, layout=layout, threads=threads, duration_ms=duration_ms,
                     seed=seed, mem_gb=mem_gb, workload=workload, spin_limit_ns=spin_limit,
                     wakeup_ns=wakeup_ns, ndomains=ndomains or None)
    try:
        if str(output) == "-":          # standard output, plain text (for a pipe into ingest)
            sys.stdout.write(cap.text)
            sys.stdout.flush()
        else:
            cap.write(output)
    except BrokenPipeError:
        raise                           # the reader went away: exit 141, as a shell tool
    except OSError as exc:
        raise PvtraceError(f"cannot write: {exc.strerror}", path=str(output)) from exc
    t = cap.truth
    print(f"{output}: {count(cap.records, 'record')}, {count(threads, 'thread')}, kernel "
          f"{kernel}, layout {cap.header['layout']}, seed {seed}: wait {t['wait_ns']} ns in "
          f"{t['contended']} of {count(t['acquisitions'], 'acquisition')} "
          f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)


def _check_size(threads: int, duration_ms: float) -> None:
    """Refuse, before simulating for hours, a run whose records could not fit in this
    machine's memory (``--duration-ms 20000`` typed for 20)."""
    records = _RECORDS_PER_THREAD_MS * max(threads, 1) * max(duration_ms, 0.0)
    need = records * _BYTES_PER_RECORD
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):       # not every system can tell
        return
    if need > have:
        raise PvtraceError(
            f"--duration-ms {duration_ms:g} with --threads {threads} would simulate up to "
            f"{_big(records)} records, about {_big(need / 2**30)} GiB of memory, more than this "
            f"machine's {have / 2**30:,.0f} GiB; shorten --duration-ms or use fewer threads "
            f"(about {_RECORDS_PER_THREAD_MS:,} records per thread per ms)")


def _big(n: float) -> str:
    return f"{n:,.0f}" if n < 1e12 else f"{n:.3g}"
