"""Ingest: turn raw captures into one trace bundle (SPEC section 2).

:func:`run_ingest` is what ``pvtrace ingest INPUT... -o DIR`` does, for every input format:

1. open each input (:mod:`.source`: a path or ``-``; gzip/zstd recognised by content),
2. detect its format from its first lines (:mod:`.detect`),
3. hand it to the format's parser (:data:`PARSERS`, imported on demand), which returns a
   :class:`~pvtrace.ingest.common.Parsed`,
4. concatenate each table across inputs and sort ``events`` by ``ts`` (stable: ties by input
   order, then line order),
5. detect the stock pv-list lock layout (:mod:`.layout`); ``--layout`` overrides it, and when
   detection says ``unknown`` (an OBM capture has no stock lock addresses) or only guesses, a
   valid ``# layout=`` fact in the capture's header is used (``pvtrace synth`` writes one;
   pvtrace.d cannot know the layout); metadata records which one won and whether it is a
   guess,
6. refuse the whole ingest when more than ``max_bad`` lines are malformed,
7. write the bundle atomically with ``metadata.json`` (keys listed in :func:`_metadata`).

Steps 4 to 7 overlap: the events go to Arrow in time order one row group at a time
(:mod:`.order`, compiled, in a thread) while pyarrow encodes the previous one, and the facts
for the summary and ``metadata.json`` (step 5 included) are computed from the unsorted frame
meanwhile. A single event log that is in time order already (``dtrace -x temporal``) skips
step 4: its events are written while it is parsed (:mod:`.stream`), and the sort is only the
fallback when the stream gives up.

Several event logs in one call are merged into one trace. They are taken to be pieces of ONE
capture (for example split files, or per-CPU files) when they agree on ``# timestamp0=``;
thread ids are kept as printed. When their ``timestamp0`` differ (or some lack it) and the
same thread id appears in more than one of them, the ingest warns: those are different
threads (or different boots) that the replay would mistake for one.
"""

from __future__ import annotations

import contextlib
import filecmp
import importlib
import tempfile
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from numba import njit

import pvtrace
from pvtrace import bundle, progress, signals
from pvtrace.errors import PvtraceError
from pvtrace.ingest import detect, layout as layouts, order
from pvtrace.ingest.common import (RECORD_FIELDS, WAIT_EVENTS, Format, Parsed, Problem,
                                   ProblemKind)
from pvtrace.ingest.source import open_source
from pvtrace.ingest.stream import EventStream

PARSERS: dict[Format, str] = {
    Format.PVLOG: "pvtrace.ingest.pvlog",
    Format.LOCKSTAT: "pvtrace.ingest.lockstat",
    Format.LOCKSTAT_PARSABLE: "pvtrace.ingest.lockstat",
    Format.LOCKPROF: "pvtrace.ingest.lockprof",
}
MAX_PROBLEMS_IN_METADATA = 100
MAX_DTRACE_MESSAGES = 20
SHOWN_IN_ERROR = 5


@dataclass(frozen=True, slots=True)
class InputSummary:
    path: str
    format: str
    compression: str | None
    lines: int
    records: int
    malformed: int
    cut_off: int
    capture: dict[str, str]


@dataclass
class IngestResult:
    """Everything ``pvtrace ingest`` reports (and ``metadata.json`` records)."""

    out: Path
    inputs: list[InputSummary]
    records: int
    threads: int
    cpus: list[int]
    first_ts: int | None
    last_ts: int | None
    counts: dict[str, dict[str, int]]          # ev / cls / op -> value -> records
    drops_per_cpu: dict[int, int]              # dtrace "N drops on CPU M", summed
    other_drops: dict[str, int]                # dynvar_drops / aggregation_drops totals
    diagnostics: dict[str, int]                # diagnostic kind -> lines
    dtrace_messages: list[str]                 # the first distinct other/error dtrace lines
    dtrace_message_lines: int                  # all other/error dtrace lines of the logs
    layout_effective: str
    layout_detected: str
    layout_evidence: str
    layout_source: str                         # "--layout", "detected" or "capture"
    layout_assumed: bool                       # the effective layout is a guess
    problems: list[Problem]                    # the first ones, in input and line order
    problem_totals: dict[str, int]             # kind -> count over all inputs
    warnings: list[str] = field(default_factory=list)
    extra_lines: list[str] = field(default_factory=list)   # other formats' summary_lines
    tables: dict[str, int] = field(default_factory=dict)   # table -> rows written

    @property
    def duration_ns(self) -> int | None:
        if self.first_ts is None or self.last_ts is None:
            return None
        return self.last_ts - self.first_ts


def run_ingest(inputs: list[str], out: str, *, layout: str | None = None, max_bad: int = 10,
               force: bool = False) -> IngestResult:
    """Parse ``inputs`` and write one trace bundle to ``out``; see the module docstring."""
    if not inputs:
        raise PvtraceError("no inputs given")
    if "" in inputs:        # "$CAPTURE" unset: Path("") would be the current directory
        raise PvtraceError("an input is empty; name a capture file, or - for standard input")
    if out == "":
        raise PvtraceError("-o is empty; name the bundle directory to write")
    if layout is not None:
        layout = layouts.validate(layout)
    if max_bad < 0:
        raise PvtraceError(f"--max-bad must be 0 or more, got {max_bad}")
    if sum(arg == "-" for arg in inputs) > 1:
        raise PvtraceError("standard input ('-') can be given only once")
    bundle.check_target(out, force=force)   # before the work, not after
    started = datetime.now(timezone.utc)
    # Scratch space (decompressed inputs, records spilled by the parser) goes next to the
    # output, on the disk that will hold the bundle, rather than in a /tmp that may be RAM.
    parent = Path(out).absolute().parent
    try:
        scratch = tempfile.TemporaryDirectory(prefix=".pvtrace-ingest-",
                                              dir=parent if parent.is_dir() else None)
    except OSError as exc:
        raise PvtraceError(f"cannot write there: {exc.strerror or exc}", path=out) from None
    try:
        return _ingest(inputs, out, Path(scratch.name), layout, max_bad, force, started)
    finally:
        with signals.held():    # a scratch copy of a capture can be GBs: delete all of it
            scratch.cleanup()


def _ingest(inputs: list[str], out: str, scratch: Path, layout: str | None, max_bad: int,
            force: bool, started: datetime) -> IngestResult:
    with contextlib.ExitStack() as stack:
        return _ingest_in(stack, inputs, out, scratch, layout, max_bad, force, started)


def _ingest_in(stack: contextlib.ExitStack, inputs: list[str], out: str, scratch: Path,
               layout: str | None, max_bad: int, force: bool, started: datetime
               ) -> IngestResult:
    parsed: list[tuple[Parsed, InputSummary]] = []
    # One event log: its records are written while it is parsed, if they come in time
    # order (:mod:`.stream`); else, as for several inputs, sorted once all are parsed.
    streamed: bundle.Written | None = None
    stream: tuple[EventStream, Parsed] | None = None     # and the input it wrote
    extra_problems: list[Problem] = []
    seen: dict[tuple[int, bytes, bytes], tuple[str, Path]] = {}
    for src, arg in enumerate(inputs):
        with open_source(arg, scratch) as source:
            _refuse_repeat(source.path, source.name, seen)
            try:
                fmt = detect.sniff(source.head(), source.name)
            except PvtraceError as exc:
                if not source.truncated:
                    raise
                # What a stream cut this short leaves is no format at all: say why.
                raise PvtraceError(f"{exc.message} ({source.compression} stream ends early "
                                   f"after {source.size} bytes of text: file truncated?)",
                                   path=source.name) from None
            if fmt is not Format.PVLOG:   # the event-log parser announces its line count
                progress.stage(f"parsing {source.name}")
            # An event log too big to parse in one go spills its records to scratch.
            extra: dict[str, Any] = {"scratch": scratch} if fmt is Format.PVLOG else {}
            if fmt is Format.PVLOG and len(inputs) == 1:
                extra["stream"] = stack.enter_context(EventStream(
                    scratch / "events.parquet", src, _RepeatCheck([source.name])))
            one = _parser(fmt, source.name).parse(source.path, src, source.name, **extra)
            if "stream" in extra:
                stream = (extra["stream"], one)
        totals = _totals(one)
        if source.trailing:
            extra_problems.append(Problem(
                src, source.name, None, ProblemKind.WARNING,
                f"{source.trailing} bytes after the last {source.compression} "
                f"{'member' if source.compression == 'gzip' else 'frame'} are not "
                f"{source.compression} data: ignored, as {source.compression} -d does"))
        if source.truncated:
            # One cut: the stream's end, and usually the half line it leaves, which the
            # parser reported already (then this is its explanation, not a second count).
            kind = (ProblemKind.WARNING if totals.get(ProblemKind.CUT_OFF.value)
                    else ProblemKind.CUT_OFF)
            extra_problems.append(Problem(
                src, source.name, None, kind,
                f"{source.compression} stream ends early (file truncated?): kept the "
                f"{source.size} bytes decoded"))
        parsed.append((one, InputSummary(
            path=source.name, format=one.format.value, compression=source.compression,
            lines=one.lines, records=one.records,
            malformed=totals.get(ProblemKind.MALFORMED.value, 0),
            cut_off=totals.get(ProblemKind.CUT_OFF.value, 0)
            + sum(p.src == src and p.kind is ProblemKind.CUT_OFF for p in extra_problems),
            capture=dict(one.meta.get("capture", {})))))

    problems = sorted([p for r, _ in parsed for p in r.problems] + extra_problems,
                      key=lambda p: (p.src, p.line or 0))
    problem_totals: Counter[str] = Counter()
    for r, _ in parsed:
        problem_totals.update(_totals(r))
    problem_totals.update(p.kind.value for p in extra_problems)
    malformed = problem_totals.get(ProblemKind.MALFORMED.value, 0)
    if malformed > max_bad:
        shown = [p for p in problems if p.kind is ProblemKind.MALFORMED][:SHOWN_IN_ERROR]
        raise PvtraceError(
            f"{malformed} malformed lines, more than --max-bad {max_bad}: "
            + "; ".join(f"{p.path}:{p.line}: {p.reason}" for p in shown)
            + ("; ..." if malformed > len(shown) else "")
            + f"; fix the input or raise --max-bad (e.g. --max-bad {malformed}) to skip them")

    tables: dict[str, Any] = _merge_tables([r for r, _ in parsed])
    events = tables.get("events")
    detected = counted = None
    if stream is not None:
        # The stream writes its last records while the summary is counted on the other core.
        writer, one = stream
        with ThreadPoolExecutor(max_workers=1) as pool:
            finishing = pool.submit(writer.finish, one.records)
            detected, counted = _detect(events), _event_facts(events)
            streamed = finishing.result()
        one.meta.setdefault("reader", {})["events_written"] = (
            "while parsing" if streamed is not None else f"after sorting: {writer.gave_up}")
    if streamed is not None:    # every record of the one input, written while parsed
        tables["events"] = streamed
    elif events is not None:
        # Put into time order as Arrow (what the bundle writes), one row group at a time, so
        # that no sorted copy of a big capture ever exists whole ...
        tables["events"] = _ordered_parts(events, recycle=True,
                                          names=[s.path for _, s in parsed])
        progress.stage("writing the events in time order", events.height)
    summaries = [s for _, s in parsed]
    with ThreadPoolExecutor(max_workers=1) as pool:
        # ... then write the tables (pyarrow encodes on one core, outside the GIL) while the
        # order-independent facts for metadata.json are computed from the unsorted frame on
        # the other; the writer waits for them before it writes metadata.json and renames.
        facts: Future[dict[str, Any]] = Future()
        written = pool.submit(bundle.write_bundle, out, tables, facts.result, force=force)
        try:
            if detected is None:
                detected = _detect(events)
            result = _result(Path(out), summaries, events, tables, detected, layout, problems,
                             dict(problem_totals), counted)
            result.warnings.extend(_capture_warnings(summaries, events))
            result.warnings.extend(_span_warning(result, events))
            result.warnings.extend(_stray_wait_warning(result, events))
            result.warnings.extend(_layout_line_warnings(summaries, detected, layout))
            result.extra_lines.extend(_extra_lines(parsed, tables))
            facts.set_result(_metadata(result, [r for r, _ in parsed], started))
        except BaseException as exc:
            facts.set_exception(exc)   # the writer gives up and removes its temporary files
            raise
        written.result()
    result.tables = {name: t.rows if isinstance(t, (bundle.Parts, bundle.Written)) else t.height
                     for name, t in tables.items()}
    return result


def _detect(events: pl.DataFrame | None) -> layouts.Layout:
    return (layouts.detect(events) if events is not None
            else layouts.Layout("unknown", "no event log among the inputs"))


def _refuse_repeat(path: Path, name: str,
                   seen: dict[tuple[int, bytes, bytes], tuple[str, Path]]) -> None:
    """Refuse an input whose content another input already had (the same file given twice,
    or a shell glob that matched a copy): its records would be counted twice and every
    replayed number would be wrong. Inputs whose size and 64 KiB at both ends agree are
    compared whole."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        f.seek(max(size - (1 << 16), 0))
        tail = f.read()
    key = (size, head, tail)
    if key in seen and filecmp.cmp(seen[key][1], path, shallow=False):
        raise PvtraceError(f"same content as {seen[key][0]}: its records would be counted "
                           "twice; give each capture once", path=name)
    seen.setdefault(key, (name, path))


ROW_GROUP_ROWS = 1 << 20     # rows per events row group (each put in time order on its own)


def _ordered_parts(events: pl.DataFrame, rows: int | None = None,
                   recycle: bool = False, names: list[str] | None = None) -> bundle.Parts:
    """``events`` in time order as bundle parts of ``rows`` rows (:mod:`.order`; with
    ``recycle``, a part's memory is reused two parts later: the bundle writer is done with a
    part when it asks for the next). With ``names`` (the inputs' names by ``src``), each part
    is checked for repeated records (:class:`_RepeatCheck`) in the thread that gathers it,
    off the writer's path (on the writer's, the checks cost the 5 M-record bench log's
    ingest about 0.1 s)."""
    check = _RepeatCheck(names) if names is not None else None
    parts, first = order.ordered_parts(events, rows or ROW_GROUP_ROWS, recycle, check)
    return bundle.Parts(parts, events.height, first)


class _RepeatCheck:
    """Called on each time-ordered part in turn: refuses the capture if a record repeats
    another one field for field: overlapping captures given together (a window saved twice,
    a log and a longer copy of it), or a log appended to itself. Whole-file repeats are
    refused before parsing (:func:`_refuse_repeat`); these are the partial ones. Every
    replayed number would count such records twice, and no capture holds two: a CPU's probes
    never fire twice in one nanosecond.

    A repeat has its original's time: each part's runs of equal ``ts`` are compared
    (:func:`_repeated_rows`), and the previous part's rows at its last ``ts`` with this
    part's first rows. Repeats found are confirmed on the decoded records, which also name
    them. The error ends the bundle writer, which then removes what it wrote."""

    def __init__(self, names: list[str]):
        self.names = names
        # The previous parts' rows at their last ts, as Arrow: decoded only when the next
        # part goes on at that time (each part's dictionaries are its own).
        self.carry: list[pa.Table] = []
        self.carry_ts: int | None = None
        self.seen = 0

    def __call__(self, part: pa.Table) -> None:
        self.seen += part.num_rows
        ts = part.column("ts").to_numpy()
        if not len(ts):
            return
        suspects = _repeated_rows(part)
        rows = np.zeros(0, np.int64)
        joined = bool(self.carry) and self.carry_ts == ts[0]
        if joined:      # the previous part's last time goes on here
            rows = np.arange(np.searchsorted(ts, ts[0], side="right"))
        if len(suspects) or joined:
            rows = np.union1d(suspects, rows)
            carried = ([_decoded(c, np.arange(c.num_rows)) for c in self.carry]
                       if joined else [])
            _refuse_repeated_records(pl.concat([*carried, _decoded(part, rows)]), self.names,
                                     self.seen)
        # a copy: the part's memory may be recycled for a later one (order.ordered_parts)
        last = part.take(np.arange(np.searchsorted(ts, ts[-1]), len(ts)))
        self.carry = [*self.carry, last] if joined and ts[-1] == ts[0] else [last]
        self.carry_ts = int(ts[-1])


def _repeated_rows(part: pa.Table) -> np.ndarray:
    """Rows of ``part`` equal in every record field to another row of it: each repeat and
    its original. Equal rows share a time, so only runs of equal ``ts`` are compared, row by
    row, in one compiled pass; dictionary columns compare by index (one dictionary per
    part). Grouping the decoded rows of those runs took 50 ms per million rows where a
    tenth of them share a time (the bench workload); this takes a few."""
    cols = []
    for name in RECORD_FIELDS:
        col = part.column(name)
        arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
        cols.append((arr.indices if pa.types.is_dictionary(arr.type) else arr).to_numpy())
    hit = np.zeros(part.num_rows, np.bool_)
    _mark_repeats(hit, *cols)
    return np.flatnonzero(hit)


@njit(nogil=True, cache=True)
def _mark_repeats(hit, ts, cpu, tid, ev, cls, lock, mode, ns, page, op):
    run = 0
    for i in range(1, len(ts)):
        if ts[i] != ts[i - 1]:
            run = i
            continue
        for j in range(run, i):
            if (cpu[i] == cpu[j] and tid[i] == tid[j] and ev[i] == ev[j] and cls[i] == cls[j]
                    and lock[i] == lock[j] and mode[i] == mode[j] and ns[i] == ns[j]
                    and page[i] == page[j] and op[i] == op[j]):
                hit[i] = True
                hit[j] = True


def _decoded(part: pa.Table, rows: np.ndarray) -> pl.DataFrame:
    """Rows ``rows`` of an Arrow part as a DataFrame with plain string columns (each part's
    dictionaries are its own)."""
    df = pl.from_arrow(part.select([*RECORD_FIELDS, "src", "line"]).take(rows))
    return df.with_columns(pl.col(pl.Categorical).cast(pl.String))


def _refuse_repeated_records(rows: pl.DataFrame, names: list[str], seen: int) -> None:
    """Raise if records among ``rows`` repeat (``seen``: the records in time order so far)."""
    groups = (rows.sort("src", "line")
              .group_by(RECORD_FIELDS, maintain_order=True)   # in order of the originals
              .agg("src", "line", pl.len().alias("n"))
              .filter(pl.col("n") > 1))
    if groups.height == 0:
        return
    repeats = int(groups["n"].sum()) - groups.height

    def at(src: int, line: int) -> str:
        return f"{names[src] if src < len(names) else src}:{line}"

    # Each group's first record in input order is the original; the others repeat it.
    pairs = sorted(((src[k], line[k]), (src[0], line[0]))
                   for src, line in groups.head(10 * SHOWN_IN_ERROR)
                   .select("src", "line").iter_rows()
                   for k in range(1, len(src)))
    shown = "; ".join(f"{at(*again)} repeats {at(*orig)}"
                      for again, orig in pairs[:SHOWN_IN_ERROR])
    more = f" and {repeats - SHOWN_IN_ERROR:,} more" if repeats > SHOWN_IN_ERROR else ""
    raise PvtraceError(
        f"records repeat others field for field (time, CPU, thread and all), {repeats:,} "
        f"among the first {seen:,} in time order: {shown}{more}; overlapping captures, or a "
        "log appended to itself? Give each record once; nothing was written")


def _parser(fmt: Format, name: str):
    module = PARSERS.get(fmt)
    if module is None:
        raise PvtraceError(f"no parser for {fmt.value} input", path=name)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise PvtraceError(f"{fmt.value} input is not supported by this pvtrace build",
                           path=name) from None


def _totals(parsed: Parsed) -> dict[str, int]:
    """Problem counts by kind; parsers that cap their problem list put totals in meta."""
    counted = Counter(p.kind.value for p in parsed.problems)
    return {**counted, **parsed.meta.get("problem_totals", {})}


def _merge_tables(parsed: list[Parsed]) -> dict[str, pl.DataFrame]:
    by_name: dict[str, list[pl.DataFrame]] = {}
    for r in parsed:
        for name, table in r.tables.items():
            by_name.setdefault(name, []).append(table)
    return {name: pl.concat(parts, how="diagonal_relaxed") if len(parts) > 1 else parts[0]
            for name, parts in by_name.items()}


def _result(out: Path, inputs: list[InputSummary], events: pl.DataFrame | None,
            tables: dict[str, pl.DataFrame], detected: layouts.Layout, override: str | None,
            problems: list[Problem], totals: dict[str, int],
            facts: EventFacts | None = None) -> IngestResult:
    counts, threads, cpus, first, last = facts or _event_facts(events)
    drops: dict[int, int] = {}
    other: dict[str, int] = {}
    kinds: dict[str, int] = {}
    messages: list[str] = []
    message_lines = 0
    diag = tables.get("diagnostics")
    if diag is not None and diag.height:
        kinds = dict(diag.group_by("kind").len().sort("kind").iter_rows())
        # Drops and messages of the event logs' dtrace runs: the replay reports them as the
        # capture's. A lockstat run's own drop warnings are about its report, not the events
        # (they stay in the diagnostics table and that input's warnings).
        logs = [i for i, s in enumerate(inputs) if s.format == Format.PVLOG]
        diag = diag.filter(pl.col("src").is_in(logs))
        # What dtrace said besides drops and probe counts ("processing aborted: ...", the
        # deadman stopping a capture early) must reach the user, not only the table.
        said = diag.filter(pl.col("kind").is_in(["other", "error"]))
        message_lines = said.height
        messages = (said.get_column("text").unique(maintain_order=True)
                    .head(MAX_DTRACE_MESSAGES).to_list())
        per_cpu = (diag.filter((pl.col("kind") == "drops") & pl.col("cpu").is_not_null())
                   .group_by("cpu").agg(pl.col("count").sum()).sort("cpu"))
        drops = {int(c): int(n) for c, n in per_cpu.iter_rows()}
        for kind in ("dynvar_drops", "aggregation_drops"):
            n = diag.filter(pl.col("kind") == kind)["count"].sum()
            if n:
                other[kind] = int(n)
    effective, source = _effective_layout(override, detected, inputs)
    return IngestResult(
        out=out, inputs=inputs, records=events.height if events is not None else 0,
        threads=threads, cpus=cpus, first_ts=first, last_ts=last, counts=counts,
        drops_per_cpu=drops, other_drops=other, diagnostics=kinds, dtrace_messages=messages,
        dtrace_message_lines=message_lines,
        layout_effective=effective, layout_detected=detected.layout,
        layout_evidence=detected.evidence, layout_source=source,
        layout_assumed=source == "detected" and detected.assumed,
        problems=problems, problem_totals=totals)


EventFacts = tuple[dict[str, dict[str, int]], int, list[int], int | None, int | None]


def _event_facts(events: pl.DataFrame | None) -> EventFacts:
    """(records per event, class and operation; threads; CPUs; first and last time)."""
    counts: dict[str, dict[str, int]] = {}
    if events is None or not events.height:
        return counts, 0, [], None, None
    # This runs while the events are written on the other core: cheap passes only (counting
    # categorical codes, not grouping the strings; marking ids in a table, not hashing them).
    for col in ("ev", "cls", "op"):
        counts[col] = _value_counts(events.get_column(col))
    return (counts, len(order.distinct_values(events.get_column("tid"))),
            order.distinct_values(events.get_column("cpu")).tolist(),
            events.get_column("ts").min(), events.get_column("ts").max())


def _value_counts(col: pl.Series) -> dict[str, int]:
    """Records per value of ``col``, most frequent first (ties by value)."""
    if col.dtype == pl.Categorical:
        categories = col.dtype.categories.to_series()
        per_code = order.code_counts(order.category_codes(col), categories.len())
        used = np.flatnonzero(per_code)
        pairs = zip(categories.gather(used).to_list(), per_code[used].tolist())
    else:
        pairs = col.value_counts().iter_rows()
    return dict(sorted(((str(k), int(n)) for k, n in pairs), key=lambda kv: (-kv[1], kv[0])))


def _effective_layout(override: str | None, detected: layouts.Layout,
                      inputs: list[InputSummary]) -> tuple[str, str]:
    """``--layout`` wins; then the detection, unless it only guessed from the lock spacing;
    then a valid ``# layout=`` fact of the capture's header (an OBM capture has no stock lock
    addresses to detect from); then the guess, if any."""
    if override is not None:
        return override, "--layout"
    if detected.layout != "unknown" and not detected.assumed:
        return detected.layout, "detected"
    stated = _stated_layouts(inputs)
    if len(stated) == 1:
        return stated.pop(), "capture"
    return detected.layout, "detected"


def _stated_layouts(inputs: list[InputSummary]) -> set[str]:
    """The valid layouts the inputs' ``# layout=`` lines state (canonical forms)."""
    out = set()
    for s in inputs:
        try:
            out.add(layouts.validate(s.capture["layout"]))
        except (KeyError, PvtraceError):
            pass
    return out


def _layout_line_warnings(inputs: list[InputSummary], detected: layouts.Layout,
                          override: str | None) -> list[str]:
    """A ``# layout=`` fact that is no layout is ignored, and facts that disagree with each
    other or with what the lock addresses show are not used: say so, or it goes unseen."""
    out = []
    for s in inputs:
        stated = s.capture.get("layout")
        if stated is None:
            continue
        try:
            layouts.validate(stated)
        except PvtraceError:
            out.append(f"{s.path}: its '# layout={stated[:40]}' line is not a layout "
                       "(superpage or hash:N): ignored")
    stated = _stated_layouts(inputs)
    if override is not None or not stated:
        return out
    if len(stated) > 1:
        out.append(f"the inputs' '# layout=' lines disagree ({', '.join(sorted(stated))}): "
                   "none is used")
    elif detected.layout != "unknown" and not detected.assumed and stated != {detected.layout}:
        out.append(f"the capture's '# layout={stated.pop()}' line disagrees with its lock "
                   f"addresses ({detected.layout}): the addresses are used (--layout decides)")
    return out


# Facts about the machine and kernel a capture was taken on: event logs merged into one
# bundle should agree on them (their times and truths differ by nature; disagreeing layout
# lines have their own warning).
_IDENTITY_FACTS = ("kernel", "osreldate", "ncpu", "ndomains")


def _capture_warnings(inputs: list[InputSummary], events: pl.DataFrame | None) -> list[str]:
    """Warn when event logs disagree on the machine or kernel they were captured on, and when
    logs from different captures share thread ids (see module docs)."""
    logs = [(i, s) for i, s in enumerate(inputs) if s.format == Format.PVLOG and s.records]
    out = []
    for key in _IDENTITY_FACTS:
        said = {s.path: s.capture[key] for _, s in logs if key in s.capture}
        if len(set(said.values())) > 1:
            out.append(f"the event logs disagree on '{key}' ("
                       + ", ".join(f"{p}: {v[:40]}" for p, v in said.items())
                       + "): merged as one capture anyway; metadata 'capture' keeps the first")
    stamps = {s.capture.get("timestamp0") for _, s in logs}
    if len(logs) < 2 or events is None or (len(stamps) == 1 and None not in stamps):
        return out
    shared = (events.group_by("tid").agg(pl.col("src").n_unique().alias("n"))
              .filter(pl.col("n") > 1).height)
    if not shared:
        return out
    names = ", ".join(s.path for _, s in logs)
    return out + [f"inputs {names} do not share one timestamp0 (different captures?) yet "
                  f"{shared} thread ids appear in more than one: they are merged as the same "
                  "threads"]


def _stray_wait_warning(result: IngestResult, events: pl.DataFrame | None) -> list[str]:
    """Warn when records other than B and S carry a nonzero ns, where the log format has 0
    (pvtrace.d prints 0; another producer may not): kept in the bundle as read, and not
    used by the replay, which takes waits from B and S alone (3 ms per 5 M records)."""
    if events is None or not events.height:
        return []
    stray = (pl.col("ns") != 0) & ~pl.col("ev").is_in(list(WAIT_EVENTS))
    count = events.select(stray.sum()).item()
    if not count:
        return []
    src, line = events.filter(stray).select("src", "line").row(0)
    some = f"{count:,} records other than B and S have" if count > 1 else \
        "a record other than B and S has"
    return [f"{some} a nonzero ns (the first in time at {result.inputs[src].path}:{line}), "
            "where the log format has 0: kept as read, not used by the replay"]


def _span_warning(result: IngestResult, events: pl.DataFrame | None) -> list[str]:
    """Warn when the records span more time than a replay of this many threads can hold (a
    corrupt ts field, usually): the ingest is the place to name its line, not the replay."""
    from pvtrace.replay.kernel import time_limit

    span = result.duration_ns
    if events is None or span is None or span <= time_limit(result.threads):
        return []
    where = []
    for ts in (result.first_ts, result.last_ts):
        src, line = events.filter(pl.col("ts") == ts).select("src", "line").row(0)
        where.append(f"{ts} at {result.inputs[src].path}:{line}")
    return [f"the records span {span:,} ns ({span / 3.6e12:,.1f} h: ts {where[0]} .. "
            f"{where[1]}), more than a replay of {result.threads:,} threads holds "
            f"({time_limit(result.threads):,} ns): a corrupt ts field? pvtrace replay will "
            "refuse this bundle"]


def _extra_lines(parsed: list[tuple[Parsed, InputSummary]],
                 tables: dict[str, pl.DataFrame]) -> list[str]:
    """Summary lines of the non-event-log formats, from their own modules."""
    lines: list[str] = []
    done: set[str] = set()
    for r, _ in parsed:
        module_name = PARSERS[r.format]
        if r.format is Format.PVLOG or module_name in done:
            continue
        done.add(module_name)
        module = importlib.import_module(module_name)
        if hasattr(module, "summary_lines"):
            mine = {name: tables[name] for rr, _ in parsed if PARSERS[rr.format] == module_name
                    for name in rr.tables}
            lines.extend(module.summary_lines(mine))
    return lines


def _metadata(result: IngestResult, parsed: list[Parsed], started: datetime) -> dict[str, Any]:
    """``metadata.json`` contents (besides ``format`` and ``tables``, added by the bundle).

    Keys: ``pvtrace_version``, ``ingested_at`` (UTC), ``inputs`` (per input: path, format,
    compression, lines, records, malformed, cut_off, capture facts, log_version, captures when
    one file holds several, ``reader``: the event-log reader that read it and why pyarrow's
    gave up), ``capture`` (``# key=value`` facts, first value wins), ``records``, ``time``
    (first_ts, last_ts, duration_ns), ``threads``, ``cpus`` (count, ids), ``counts`` (records
    per ev / cls / op), ``drops`` (per_cpu, total, dynvar_drops, aggregation_drops),
    ``diagnostics`` (lines per kind), ``problems`` (totals per kind, the first 100 in full),
    ``layout`` (effective, detected, evidence, source), ``warnings``.
    """
    capture: dict[str, str] = {}
    for s in result.inputs:
        for k, v in s.capture.items():
            capture.setdefault(k, v)
    return {
        "pvtrace_version": pvtrace.__version__,
        "ingested_at": started.isoformat(timespec="seconds"),
        "inputs": [
            {"path": s.path, "format": s.format, "compression": s.compression,
             "lines": s.lines, "records": s.records, "malformed": s.malformed,
             "cut_off": s.cut_off, "capture": s.capture,
             **({"log_version": r.meta["log_version"]} if "log_version" in r.meta else {}),
             **({"captures": r.meta["captures"]} if "captures" in r.meta else {}),
             **({"reader": r.meta["reader"]} if r.meta.get("reader") else {})}
            for s, r in zip(result.inputs, parsed)],
        "capture": capture,
        "records": result.records,
        "time": {"first_ts": result.first_ts, "last_ts": result.last_ts,
                 "duration_ns": result.duration_ns},
        "threads": result.threads,
        "cpus": {"count": len(result.cpus), "ids": result.cpus},
        "counts": result.counts,
        "drops": {"per_cpu": {str(c): n for c, n in result.drops_per_cpu.items()},
                  "total": sum(result.drops_per_cpu.values()), **result.other_drops},
        "diagnostics": result.diagnostics,
        "dtrace_messages": result.dtrace_messages,
        "dtrace_message_lines": result.dtrace_message_lines,
        "problems": {
            "totals": result.problem_totals,
            "first": [{"src": p.src, "path": p.path, "line": p.line, "kind": p.kind.value,
                       "reason": p.reason}
                      for p in result.problems[:MAX_PROBLEMS_IN_METADATA]]},
        "layout": {"effective": result.layout_effective, "detected": result.layout_detected,
                   "evidence": result.layout_evidence,
                   "source": result.layout_source, "assumed": result.layout_assumed},
        "warnings": result.warnings,
    }
