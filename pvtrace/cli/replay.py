"""``pvtrace replay``, ``pvtrace compare`` and ``pvtrace models``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from pvtrace.cli import app, progress
from pvtrace.errors import PvtraceError
from pvtrace.report.table import escape

TraceArg = Annotated[str, typer.Argument(help="A trace bundle directory, or a raw capture "
                                               "(event log, .gz/.zst, or - for stdin).")]
LayoutOpt = Annotated[str | None, typer.Option(
    "--layout", help="How the replayed kernel maps a physical address to a pv-list lock: "
                     "superpage or hash:N (kernels without options NUMA: hash:256 before "
                     "FreeBSD 14, then hash:1024). Default: the captured layout from the "
                     "bundle.")]
SpinOpt = Annotated[int, typer.Option(
    "--spin-limit", metavar="NS", help="Waits up to NS ns spin on the CPU; longer waits block "
                                       "on a turnstile. 0: every wait blocks.")]
WakeOpt = Annotated[int, typer.Option(
    "--wakeup-ns", metavar="NS", help="Latency from a release to a blocked waiter running "
                                      "(turnstile wakeup); part of the sleeper's wait, as in a "
                                      "capture's B records. Default 0: no cost.")]
CacheOpt = Annotated[bool, typer.Option(
    "--no-cache", help="Neither read nor write the bundle's timeline cache (BUNDLE/cache: "
                       "written by a bundle's first replay, it makes later ones start at "
                       "once).")]
MaxBadOpt = Annotated[int, typer.Option(
    "--max-bad", metavar="N", help="For a raw capture: malformed lines skipped (and reported) "
                                   "before the capture is refused, as in `pvtrace ingest`.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the pvtrace-replay/1 JSON report "
                                                      "to stdout and nothing else.")]


def _run(trace: str, models: list[str], layout, spin_limit: int, wakeup_ns: int,
         no_cache: bool, max_bad: int, jobs: int = 1) -> dict:
    from pvtrace.replay.api import replay_trace

    if jobs < 1:
        raise PvtraceError("--jobs must be at least 1")
    if max_bad < 0:
        raise PvtraceError(f"--max-bad must be 0 or more, got {max_bad}")
    with progress.shown():
        return replay_trace(trace, models, layout=layout, spin_limit_ns=spin_limit,
                            wakeup_ns=wakeup_ns, jobs=jobs, use_cache=not no_cache,
                            max_bad=max_bad)


def _render(report: dict, *, detail: bool) -> None:
    from pvtrace.report import table

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # files and pipes get the whole table, not a squeezed one
    console.print(table.trace_line(report))
    for part in (*table.compare_tables(report, console.width),
                 *table.class_tables(report, console.width)):
        console.print(part)
    if detail:
        for m in report["models"]:
            console.print(table.op_table(m))
    for note in table.notes(report):
        console.print(f"[yellow]note:[/yellow] {escape(note)}")


@app.command()
def replay(trace: TraceArg,
           model: Annotated[str, typer.Option("--model", "-m", help="Lock design to replay "
                                                                    "(see `pvtrace models`).")] = "obm",
           layout: LayoutOpt = None, spin_limit: SpinOpt = 0, wakeup_ns: WakeOpt = 0,
           no_cache: CacheOpt = False, max_bad: MaxBadOpt = 10,
           json_out: JsonOpt = False) -> None:
    """Re-execute a capture under another lock design: same work, recomputed lock waits."""
    report = _run(trace, [model], layout, spin_limit, wakeup_ns, no_cache, max_bad)
    if json_out:
        print(json.dumps(report, indent=2))
    else:
        _render(report, detail=True)


@app.command()
def compare(trace: TraceArg,
            models: Annotated[str, typer.Option(
                "--models", help="Comma-separated designs.")] = "stock,obm-pvc,obm,obm-rw,ideal",
            layout: LayoutOpt = None, spin_limit: SpinOpt = 0, wakeup_ns: WakeOpt = 0,
            jobs: Annotated[int, typer.Option(
                "--jobs", "-j", help="Designs replayed at once, one per core. Each holds its "
                                     "own steps: peak memory grows by about 45 bytes per "
                                     "record per extra job.")] = 1,
            no_cache: CacheOpt = False, max_bad: MaxBadOpt = 10,
            json_out: JsonOpt = False) -> None:
    """Replay a capture under several designs and show them side by side."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise PvtraceError("--models is empty; name at least one design")
    twice = sorted({m for m in names if names.count(m) > 1})
    if twice:
        raise PvtraceError(f"--models names {', '.join(twice)} twice; name each design once")
    report = _run(trace, names, layout, spin_limit, wakeup_ns, no_cache, max_bad, jobs)
    if json_out:
        print(json.dumps(report, indent=2))
    else:
        _render(report, detail=False)


@app.command("models")
def list_models() -> None:
    """List the lock designs a capture can be replayed under."""
    from pvtrace.models import DESIGNS

    width = max(len(n) for n in DESIGNS)
    for name, cls in DESIGNS.items():
        print(f"{name:<{width}}  {cls.summary}")
