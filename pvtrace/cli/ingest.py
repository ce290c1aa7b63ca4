"""``pvtrace ingest INPUT... -o DIR``: raw captures in, one trace bundle out, and a short summary.

The work is :func:`pvtrace.ingest.run_ingest`; this module only parses options and renders
the :class:`~pvtrace.ingest.IngestResult` for a person: what was read, what the trace covers,
and what the user should worry about (drops, malformed or cut-off lines, the layout guess).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from pvtrace.cli import app, progress
from pvtrace.report.table import escape

if TYPE_CHECKING:
    from pvtrace.ingest import IngestResult

SHOWN_PROBLEMS = 10
SHOWN_VALUES = 6


@app.command()
def ingest(
    inputs: Annotated[list[str], typer.Argument(
        metavar="INPUT...",
        help="Capture files: pvtrace event logs, lockstat(1) reports, lockstat -p output or "
             "debug.lock.prof.stats dumps; gzip/zstd are read transparently; - is stdin.")],
    output: Annotated[str, typer.Option("-o", "--output", metavar="DIR",
                                        help="Bundle directory to write.")],
    layout: Annotated[str | None, typer.Option(
        "--layout", metavar="superpage|hash:N",
        help="Stock pv-list lock layout of the traced kernel: superpage (NUMA kernels) or "
             "hash:N (N pv_list_locks = MAXCPU, 256 before FreeBSD 14, then 1024). Default: "
             "detected.")] = None,
    max_bad: Annotated[int, typer.Option(
        "--max-bad", metavar="N", min=0,
        help="Fail when more than N lines are malformed.")] = 10,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Read captures and write a trace bundle (Parquet tables + metadata.json)."""
    # Imported here, not above: the ingest pulls in polars, pyarrow and numba (most of a
    # second), which `pvtrace --help`, `pvtrace dscript` and `pvtrace models` do not need.
    from pvtrace.ingest import run_ingest

    with progress.shown(quiet=quiet):
        result = run_ingest(inputs, output, layout=layout, max_bad=max_bad, force=force)
    if not quiet:
        console = Console(highlight=False, soft_wrap=True)
        for line in summary(result):
            console.print(line)


def _ns(ns: int) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3f} {unit}"
    return f"{ns} ns"


def _top(counts: dict[str, int]) -> str:
    items = list(counts.items())
    text = ", ".join(f"{escape(k)} {n:,}" for k, n in items[:SHOWN_VALUES])
    return text + (f", ... ({len(items) - SHOWN_VALUES} more)" if len(items) > SHOWN_VALUES
                   else "")


def summary(r: IngestResult) -> list[str]:
    """The lines ``pvtrace ingest`` prints (rich markup)."""
    from pvtrace.ingest.common import ProblemKind

    out = [f"[bold]wrote {escape(str(r.out))}[/bold] "
           f"({', '.join(f'{name} {rows:,} rows' for name, rows in r.tables.items())})"]
    for s in r.inputs:
        how = f", {s.compression}" if s.compression else ""
        out.append(f"  {escape(s.path)}: {s.format}{how}, {s.lines:,} lines, "
                   f"{s.records:,} records")
    if r.records:
        span = (f"{r.first_ts} .. {r.last_ts} ns ({_ns(r.duration_ns or 0)})"
                if r.first_ts is not None else "-")
        out.append(f"records: {r.records:,}   threads: {r.threads:,}   CPUs: {len(r.cpus)}")
        out.append(f"time span: {span}")
        out.append(f"events: {_top(r.counts.get('ev', {}))}")
        out.append(f"lock classes: {_top(r.counts.get('cls', {}))}")
        out.append(f"ops: {_top(r.counts.get('op', {}))}")
        how = {"--layout": f"set by --layout; detected {escape(r.layout_detected)}",
               "capture": "from the capture's # layout= line; detected "
                          f"{escape(r.layout_detected)}",
               "detected": "detected"}[r.layout_source]
        out.append(f"layout: [bold]{escape(r.layout_effective)}[/bold] ({how}: "
                   f"{escape(r.layout_evidence)})")
    for cpu, n in r.drops_per_cpu.items():
        out.append(f"[yellow]drops: {n:,} records dropped on CPU {cpu}: waits near that time "
                   "may be understated[/yellow]")
    for kind, n in r.other_drops.items():
        what = kind.replace("_", " ").replace("dynvar", "dynamic variable")
        out.append(f"[yellow]{what}: {n:,} (thread-local state lost: some records may "
                   "be missing or mislabelled)[/yellow]")
    if r.diagnostics.get("error"):
        out.append(f"[yellow]dtrace errors: {r.diagnostics['error']:,} lines "
                   "(see the diagnostics table)[/yellow]")
    for text in r.dtrace_messages[:SHOWN_PROBLEMS]:
        out.append(f"[yellow]{escape(text)}[/yellow]")
    totals = r.problem_totals
    bad = totals.get(ProblemKind.MALFORMED.value, 0)
    cut = totals.get(ProblemKind.CUT_OFF.value, 0)
    if bad or cut:
        out.append(f"[yellow]skipped: {bad:,} malformed, {cut:,} cut-off[/yellow]")
    shown = [p for p in r.problems if p.kind is not ProblemKind.WARNING][:SHOWN_PROBLEMS]
    shown += [p for p in r.problems if p.kind is ProblemKind.WARNING][:SHOWN_PROBLEMS]
    for p in shown:
        out.append(f"  {escape(p.one_line())}")
    if bad + cut > len([p for p in shown if p.kind is not ProblemKind.WARNING]):
        out.append("  ... (the first 100 are in metadata.json under problems)")
    for w in r.warnings:
        out.append(f"[yellow]warning: {escape(w)}[/yellow]")
    out.extend(escape(line) for line in r.extra_lines)
    return out
