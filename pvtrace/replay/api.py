"""Replay a trace (a bundle, or a raw capture ingested on the fly) under several designs.

This is the one entry point the CLI and scripts use: it loads the events once, links the
timeline once, and replays it under every requested design, returning the SPEC section 3
report object (``schema: pvtrace-replay/1``).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import pvtrace
from pvtrace import progress
from pvtrace.bundle import Bundle, is_bundle, open_bundle
from pvtrace.errors import PvtraceError
from pvtrace.models import DESIGNS, get_design
from pvtrace.models.layout import Layout
from pvtrace.replay import cache
from pvtrace.replay.build import Scratch
from pvtrace.replay.run import make_params, observed, run_design, summarize, warm_caches
from pvtrace.timeline import Timeline

REPORT_SCHEMA = "pvtrace-replay/1"
# The replay reads these columns of the events table; cpu, src and line stay on disk.
REPLAY_COLUMNS = ["ts", "tid", "ev", "cls", "lock", "mode", "ns", "pa", "op"]
INTEGER_COLUMNS = ["ts", "tid", "lock", "ns", "pa"]
NO_EVENTS = ("no pvtrace event records to replay (lockstat and LOCK_PROFILING inputs "
             "summarize, they cannot be replayed; capture with `pvtrace dscript`)")


@dataclass(frozen=True)
class LoadedTrace:
    path: str
    timeline: Timeline
    nevents: int
    metadata: dict[str, Any]
    cache: str | None = None     # how the timeline cache served (cache.READ, OFF), if it did
    cache_todo: tuple[Path, dict] | None = None    # (bundle, events key) to write it for

    @property
    def layout_known(self) -> bool:
        """Ingest found the captured layout (not unknown, not a guess from lock spacing)."""
        lay = self.metadata.get("layout")
        if isinstance(lay, dict):
            assumed = lay.get("assumed")
            if assumed is None:     # a bundle from before the key: its evidence said so
                assumed = lay.get("source") == "detected" and \
                    str(lay.get("evidence", "")).endswith("assumed)")
            if assumed is True:
                return False
            lay = lay.get("effective")
        return bool(lay) and lay != "unknown"

    @property
    def captured_layout(self) -> str:
        """The captured kernel's layout (ingest's guess, if it is one); superpage when ingest
        could not tell."""
        lay = self.metadata.get("layout")
        if isinstance(lay, dict):
            lay = lay.get("effective")
        return lay if isinstance(lay, str) and lay and lay != "unknown" else "superpage"


def load_trace(path: str, *, use_cache: bool = True, max_bad: int = 10) -> LoadedTrace:
    """The timeline of a bundle, or of a raw capture (file or ``-``) ingested into a temporary
    bundle. The events table is read one column at a time into the timeline, never whole.
    With ``use_cache``, a bundle's cached timeline is used when it is current (see
    :mod:`pvtrace.replay.cache`); when it is not, the returned trace says so
    (``cache_todo``) and :func:`write_cache` writes it."""
    if path == "":          # "$TRACE" unset: Path("") would be the current directory
        raise PvtraceError("TRACE is empty; name a bundle or a capture file, or - for "
                           "standard input")
    if path != "-" and (is_bundle(path) or Path(path).is_dir()):
        # a directory that is not a bundle gets open_bundle's "not a pvtrace bundle"
        return _from_bundle(path, open_bundle(path), use_cache)
    if path != "-" and not Path(path).exists():
        raise PvtraceError("no such file or directory", path=path)
    from pvtrace.ingest import run_ingest

    with tempfile.TemporaryDirectory(prefix="pvtrace-") as tmp:
        out = Path(tmp) / "bundle"
        run_ingest([path], str(out), max_bad=max_bad)
        try:
            return _from_bundle(path, open_bundle(out), False)
        except PvtraceError as exc:
            # the temporary bundle is gone when the user reads this: name their capture
            if exc.path is not None and exc.path.startswith(tmp):
                raise PvtraceError(exc.message, path=path) from None
            raise


def _from_bundle(path: str, bundle: Bundle, use_cache: bool) -> LoadedTrace:
    if not bundle.has("events"):
        raise PvtraceError(NO_EVENTS, path=path)
    nrows = bundle.arrow("events", []).num_rows      # also checks the schema version
    if nrows == 0:
        skipped = _skipped_lines(bundle.metadata)
        why = (f" (ingest skipped {skipped['malformed']:,} malformed and {skipped['cut_off']:,} "
               "cut-off lines; `pvtrace ingest` lists them)" if any(skipped.values()) else "")
        raise PvtraceError(f"the trace has no event records to replay{why}", path=path)
    file = bundle.path / "events.parquet"
    if use_cache:
        events_key = cache.key(file)
        tl = cache.read(bundle.path, events_key)
        if tl is not None:
            return LoadedTrace(path, tl, nrows, bundle.metadata, cache.READ)
    try:
        parquet = pq.ParquetFile(file)
        schema = parquet.schema_arrow
        missing = set(REPLAY_COLUMNS) - set(schema.names)
        if missing:
            raise PvtraceError(f"events table lacks columns {sorted(missing)}", path=str(file))
        for name in INTEGER_COLUMNS:
            if not pa.types.is_integer(schema.field(name).type):
                raise PvtraceError(f"events column {name} holds {schema.field(name).type}, not "
                                   "integers: not a table pvtrace ingest wrote", path=str(file))
        progress.stage(f"loading {nrows:,} events", len(REPLAY_COLUMNS))

        def read(name: str) -> pa.ChunkedArray:
            # A file object per column: the timeline reads two columns at once, and one
            # ParquetFile read from two threads fails (its read-ahead cache is shared).
            column = pq.ParquetFile(file).read(columns=[name]).column(0)
            if column.null_count:
                raise PvtraceError(f"events column {name} has {column.null_count:,} empty "
                                   "values: not a table pvtrace ingest wrote", path=str(file))
            progress.advance(1)
            return column
        tl = Timeline.from_columns(read, nrows)
    except (OSError, pa.ArrowException) as exc:
        raise PvtraceError(f"cannot read table: {exc}", path=str(file)) from None
    except PvtraceError as exc:
        if exc.path is None:        # the timeline's own checks name no file: this is it
            raise PvtraceError(exc.message, path=str(file)) from None
        raise
    if not use_cache:
        return LoadedTrace(path, tl, nrows, bundle.metadata, cache.OFF)
    return LoadedTrace(path, tl, nrows, bundle.metadata, None, (bundle.path, events_key))


def write_cache(trace: LoadedTrace) -> str:
    """Write the timeline cache ``trace`` was loaded without; the cache status to report."""
    if trace.cache_todo is None:
        return trace.cache
    return cache.write(*trace.cache_todo, trace.timeline)


def replay_trace(path: str, models: list[str], *, layout: str | None = None,
                 spin_limit_ns: int = 0, wakeup_ns: int = 0, jobs: int = 1,
                 use_cache: bool = True, max_bad: int = 10) -> dict:
    """Replay the trace at ``path`` under each of ``models``; the SPEC report object.
    ``use_cache``: read and write a bundle's timeline cache (:mod:`pvtrace.replay.cache`);
    ``max_bad``: malformed lines a raw capture may have (as ``pvtrace ingest --max-bad``)."""
    # Options first: a raw capture is ingested before anything else, which can take minutes.
    for m in models:
        if m not in DESIGNS:
            get_design(m, Layout("superpage"))   # raises the one-line error
    make_params("superpage", layout, spin_limit_ns, wakeup_ns)
    trace = load_trace(path, use_cache=use_cache, max_bad=max_bad)
    params = make_params(trace.captured_layout, layout, spin_limit_ns, wakeup_ns)
    designs = [get_design(m, params.layout) for m in models]  # validate names first
    tl, nevents, meta, layout_known = (trace.timeline, trace.nevents, trace.metadata,
                                       trace.layout_known)
    # The cache is written and the captured waits summarized on the second core while the
    # designs replay: all only read the timeline, and the compiled passes and Arrow's writer
    # release the GIL. The summary starts once the first design's steps are built (the
    # builder uses both cores; the kernel, one).
    with ThreadPoolExecutor(2) as pool:
        cached = pool.submit(write_cache, trace)
        seen: list[Future] = []
        once = threading.Lock()     # designs replayed in parallel (jobs) call it too

        def start_observed() -> None:
            with once:
                if not seen:
                    seen.append(pool.submit(observed, tl))
        models_ = replay_designs(tl, designs, params, jobs, built=start_observed)
        start_observed()
        cache.flush_derived(tl)
        obs = seen[0].result()
        cache_status = cached.result()
    messages = [m for m in (meta.get("dtrace_messages") or []) if isinstance(m, str)][:20]
    report = {
        "schema": REPORT_SCHEMA,
        "pvtrace_version": pvtrace.__version__,
        "trace": {
            "path": path,
            "events": nevents,
            "threads": tl.nthreads,
            "layout": str(params.captured_layout),
            "layout_assumed": not layout_known,
            "layout_detected": (meta.get("layout") or {}).get("detected")
            if isinstance(meta.get("layout"), dict) else meta.get("layout"),
            "span_ns": int(tl.t_last),
            "classes": tl.classes,
            "capture": meta.get("capture", {}),
            "drops": meta.get("drops", {}),
            "skipped_lines": _skipped_lines(meta),
            "dtrace_messages": messages,
            # every such line (a probe error lost that probe's record): the messages above
            # are the first distinct ones
            # (open_bundle checked both keys' shapes; an older bundle lacks the count)
            "dtrace_message_lines": max(meta.get("dtrace_message_lines", 0), len(messages)),
            "timeline_cache": cache_status,
            **_provenance(meta),
        },
        "observed": obs,
        "models": models_,
    }
    return report


def replay_designs(tl: Timeline, designs: list, params, jobs: int = 1,
                   built: Callable[[], object] | None = None) -> list[dict]:
    """The model objects of ``designs``, replayed ``jobs`` at a time (the compiled passes
    release the GIL; each design in flight holds its own steps, so memory grows with jobs).
    ``built``: see :func:`run_design`."""
    def one(design, scratch: Scratch | None = None) -> dict:
        report = summarize(run_design(tl, design, params, built, scratch), tl)
        progress.advance(1)
        return report

    if jobs <= 1 or len(designs) <= 1:
        reports = []
        scratch = Scratch()     # one design at a time: each reuses the last one's memory
        for design in designs:
            progress.stage(f"replaying {design.name}")
            reports.append(one(design, scratch))
        return reports
    progress.stage(f"replaying {', '.join(d.name for d in designs)}, {jobs} at a time",
                   len(designs))
    warm_caches(tl, designs, params)
    with ThreadPoolExecutor(min(jobs, len(designs))) as pool:
        return list(pool.map(one, designs))


def _provenance(meta: dict) -> dict[str, Any]:
    """Where the bundle came from, from its metadata (which may be damaged: only values of
    the expected types are kept, others are null): ``inputs`` (each capture's path, format,
    compression and records) and ``ingested`` (by which pvtrace version, when)."""
    inputs = []
    listed = meta.get("inputs")
    for one in listed if isinstance(listed, list) else []:
        if isinstance(one, dict):
            inputs.append({k: one.get(k) if isinstance(one.get(k), kind) else None
                           for k, kind in (("path", str), ("format", str),
                                           ("compression", str), ("records", int))})
    ingested = {k: meta.get(m) if isinstance(meta.get(m), str) else None
                for k, m in (("pvtrace_version", "pvtrace_version"), ("at", "ingested_at"))}
    return {"inputs": inputs, "ingested": ingested}


def _skipped_lines(meta: dict) -> dict[str, int]:
    """Lines ingest skipped (malformed, cut off), from the bundle's metadata."""
    problems = meta.get("problems")
    totals = problems.get("totals", {}) if isinstance(problems, dict) else {}
    out = {}
    for kind in ("malformed", "cut_off"):
        n = totals.get(kind, 0) if isinstance(totals, dict) else 0
        out[kind] = n if isinstance(n, int) and n >= 0 else 0
    return out
