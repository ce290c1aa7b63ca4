"""Parse a pvtrace event log, version 1 (SPEC section 1), into the ``events`` table.

An event log is what ``pvtrace.d`` prints: one record of 10 blank-separated fields per line,
``# ...`` metadata lines, and, when stderr was captured too, ``dtrace: ...`` diagnostics. Logs
hold millions of lines, so nothing here loops over lines in Python:

- Fast path: a native CSV reader splits the lines on single spaces and types the fields on
  the way in. pyarrow's goes first (:mod:`.arrowcsv`: faster, and strict: a field it cannot
  type hands the whole file to polars'); polars' reader types what it can (an 11th column
  catches lines with too many fields; whatever it cannot type becomes null). The two
  address fields, read as text, are decoded in a compiled pass over the reader's buffers
  (:mod:`.hexfield`). Checks are polars expressions; a line passing them all is a record.
  polars' reader reads strict UTF-8 (replacing invalid bytes would first decode the whole
  file into a copy, a large share of the read); only a file with invalid bytes is read
  again lossily.
- The reader also reads each line as ONE string column (the separator is the unit separator
  byte ``\\x1f``, which never occurs in a log; quoting off; invalid UTF-8 replaced; the reader
  strips the ``\\r`` of CRLF line ends). Blank lines come back as null rows in both reads, so
  row index + 1 is the line number and the two line up.
- Slow path, for the few lines the fast path refused: ``#`` metadata, ``dtrace:`` diagnostics,
  lines with tabs or runs of blanks (normalized by a regex, then split with
  ``str.splitn``), and malformed lines, whose reason text (a ``pl.when`` chain naming the
  first failed check) is built only for them.
- Files larger than :data:`ONE_BATCH_BYTES` are streamed (in pieces, or polars' streaming
  engine; batches of about :data:`BATCH_ROWS` lines), so their text is never all in memory
  at once; only the typed columns accumulate (in a spill file, see :func:`_spilled`). The
  slow path gets the text of the lines the fast path refused from pyarrow's reader, which
  hands over each line it skips; it reads back from the file only the others (records
  that failed a check, or lines polars' reader refused).

The last line of an input that ends without a newline and does not parse is a cut-off record
(the capture was interrupted): it is reported as ``CUT_OFF`` and skipped, not counted as
malformed. Records are NOT sorted by time here (they stay in line order);
:func:`pvtrace.ingest.run_ingest` sorts across inputs.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

from pvtrace import progress
from pvtrace.errors import PvtraceError
from pvtrace.ingest import arrowcsv, hexfield
from pvtrace.ingest.common import (EVENTS, LINE_SEP, LOCK_EVENTS, NO_LINES, RECORD_FIELDS,
                                   Format, Parsed, Problem, ProblemKind)

if TYPE_CHECKING:
    from pvtrace.ingest.stream import EventStream

LOG_MAJOR = 1                        # the event-log major version this module reads
ONE_BATCH_BYTES = 512 * 1024 * 1024  # larger files are streamed in batches ...
BATCH_ROWS = 1_000_000               # ... of this many lines: text is never all in memory
MAX_PROBLEMS = 1000                  # Problem objects kept per kind; totals go to meta
FEW_REFUSED = 64                     # up to this many refused lines in a batch are cut out


_HEADER_RE = r"^#\s*pvtrace-log\s+v(\d+)(?:\.\d+)?\s*$"
_LOOSE_HEADER = re.compile(r"^#\s*pvtrace-log(?![\w-])", re.IGNORECASE)
_KV_RE = r"^#\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*=(.*)$"

# dtrace(1) diagnostics: (kind, pattern, group of the count, group of the cpu)
_DTRACE_KINDS: list[tuple[str, str, int | None, int | None]] = [
    ("aggregation_drops", r"^dtrace: (\d+) aggregation drops? on CPU (\d+)", 1, 2),
    ("dynvar_drops", r"^dtrace: (\d+) dynamic variable drops?", 1, None),
    ("drops", r"^dtrace: (\d+) drops? on CPU (\d+)", 1, 2),
    ("error", r"^dtrace: (?:\d+ )?errors? on enabled probe ID", None, None),
    ("matched", r"^dtrace: (?:script|description) '.*' matched (\d+) probes?", 1, None),
]


def parse(path: Path, src: int, name: str, scratch: Path | None = None,
          stream: EventStream | None = None) -> Parsed:
    """Parse the plain-text event log at ``path`` (input number ``src``, shown as ``name``).
    A log read in batches (bigger than ONE_BATCH_BYTES) spills each batch's records to an
    Arrow file in ``scratch``, when given, and returns them memory-mapped from there. With
    ``stream``, the records are handed to it as they are read (by pyarrow's reader, the one
    that reads pieces in line order); the stream is told to give up when they are not all
    it gets, in line order (see :mod:`.stream`)."""
    n_lines = _count_lines(path, name)
    spill = (scratch / f"input-{src}" if scratch is not None
             and os.path.getsize(path) > ONE_BATCH_BYTES else None)
    if spill is not None:
        spill.mkdir(exist_ok=True)    # one directory per input: their batch files never meet
    reader: dict[str, str] = {}
    fast, refused, said, seen = _fast_read(path, f"parsing {name}", n_lines, spill, reader,
                                           stream)
    rows = pl.concat(refused) if refused else pl.Series(dtype=pl.UInt64)
    if seen != n_lines or rows.len() > BATCH_ROWS:
        if stream is not None:
            stream.give_up("the log was read line by line")
        # The two readers disagree on the lines, or most lines need the slow path (a log
        # with tabs, say): stream every line through the slow path instead.
        progress.stage(f"parsing {name} line by line", n_lines)
        reader["name"] = "line by line"
        parts = [_slow(_numbered(lines, first)) for first, lines in _line_batches(path, name)]
    else:
        events = pl.concat(fast) if len(fast) != 1 else fast[0]
        slow = _slow(_refused_lines(path, name, rows, said))
        if slow.events.height:  # keep line order: the ingest's stable sort by ts relies on it
            events = pl.concat([events, slow.events]).sort("line")
            if stream is not None:
                stream.give_up("records read from lines the first reader refused")
        parts = [_Batch(events, slow.bad, slow.meta, slow.diag)]
    parsed = _assemble(parts, src, name, n_lines, _ends_with_newline(path))
    parsed.meta["reader"] = reader
    return parsed


def _fast_read(path: Path, what: str, lines: int, spill: Path | None = None,
               reader_used: dict[str, str] | None = None, stream: EventStream | None = None
               ) -> tuple[list[pl.DataFrame], list[pl.Series], pl.DataFrame, int]:
    """The fast path over the whole file: (records per batch, refused 0-based rows per batch,
    the text of refused lines the reader kept (``line``, ``l``), lines read); lines read is
    -1 when the fast reader failed (the slow path takes over).

    pyarrow's reader goes first (:mod:`.arrowcsv`); when it cannot vouch for the file, or
    its lines do not add up to the file's (blank lines), polars' reader reads it. That one
    first insists on valid UTF-8, which is much cheaper than replacing invalid bytes (that
    decodes the whole file into a copy before the read); only a file that does hold invalid
    bytes is read again with them replaced. Progress: the stage ``what``, in ``lines``.
    With ``spill`` (a directory), each batch's records are spilled there. ``reader_used``
    gets the reader that read the file (``name``: ``pyarrow`` or ``polars``) and, when
    pyarrow gave up, why (``pyarrow_gave_up``): a log read twice takes longer, and the
    user can see why in metadata.json. ``stream`` gets pyarrow's records piece by piece
    (:mod:`.stream`), and is told to give up when another reader takes over.
    """
    used = reader_used if reader_used is not None else {}
    for reader in ("arrow", "utf8", "utf8-lossy"):
        progress.stage(what if reader != "utf8-lossy"
                       else f"{what} (invalid UTF-8 replaced)", lines)
        fast: list[pl.DataFrame] = []
        refused: list[pl.Series] = []
        said: list[pl.DataFrame] = []
        seen = 0
        streamed = stream if reader == "arrow" else None
        if stream is not None and streamed is None:     # another reader reads the file
            stream.give_up("pyarrow's reader gave up on the log")
        # With a stream, pyarrow's reader hands over every piece it reads; the records are
        # spilled (when they are) in batches of BATCH_ROWS all the same.
        held: list[pl.DataFrame] = []
        batches = _typed_batches(path, reader, by_piece=streamed is not None)
        try:
            for typed, skipped, text, height in batches:
                events, refused_rows = _fast(typed)
                del typed
                if streamed is not None:
                    if not streamed.rows and text.height:   # the header, in the first piece
                        streamed.expect_cpus(_stated_cpus(text))
                    streamed.add(events)
                if spill is not None:
                    held.append(events)
                    if streamed is None or sum(f.height for f in held) >= BATCH_ROWS:
                        fast.append(_spilled(pl.concat(held, rechunk=False),
                                             spill / f"{reader}-{len(fast)}.arrow"))
                        held = []
                else:
                    fast.append(events)
                del events
                refused.append(pl.concat([pl.Series(skipped), refused_rows]).sort()
                               if len(skipped) else refused_rows)
                if text.height:
                    said.append(text)
                seen += height
                progress.advance(height)
            if held:
                fast.append(_spilled(pl.concat(held, rechunk=False),
                                     spill / f"{reader}-{len(fast)}.arrow"))
                held = []
        except (pl.exceptions.PolarsError, arrowcsv.Unsure) as exc:
            _drop_spilled(fast, spill, reader)
            if reader == "arrow":
                used["pyarrow_gave_up"] = str(exc).splitlines()[0][:200]
            continue
        finally:
            # Now, in this thread, however the loop ended: the reader's generator holds a
            # thread pool, and one finalized later by the garbage collector, in any thread,
            # can deadlock (see bundle.close_iterator).
            batches.close()
        if reader == "arrow" and seen != lines:    # the readers disagree on the lines
            _drop_spilled(fast, spill, reader)
            used["pyarrow_gave_up"] = (f"pyarrow read {seen:,} lines where the file has "
                                       f"{lines:,}")
            continue
        used["name"] = "pyarrow" if reader == "arrow" else "polars"
        return fast or [_empty_events()], refused, pl.concat([NO_LINES, *said]), seen
    return [], [], NO_LINES, -1


def _drop_spilled(fast: list[pl.DataFrame], spill: Path | None, reader: str) -> None:
    """Delete what a reader that gave up had spilled (its frames go with ``fast``)."""
    fast.clear()
    if spill is not None:
        for file in spill.glob(f"{reader}-*.arrow"):
            file.unlink(missing_ok=True)


def _typed_batches(path: Path, reader: str, by_piece: bool = False):
    """(typed records with ``ok`` and ``line``, 0-based rows of lines the reader skipped,
    the text of those it kept (``line``, ``l``), lines in the batch) per batch, from
    :mod:`.arrowcsv` (``by_piece``: a batch per piece it reads) or :func:`_field_batches`."""
    if reader == "arrow":
        rows = (1 if by_piece else BATCH_ROWS if os.path.getsize(path) > ONE_BATCH_BYTES
                else 1 << 62)
        with contextlib.closing(arrowcsv.batches(path, rows)) as batches:
            yield from batches      # the records come checked (their ``ok``)
    else:
        for typed in _field_batches(path, reader):
            yield typed, _NO_ROWS, NO_LINES, typed.height


# --------------------------------------------------------------------------- reading

# The fast reader: fields split on single spaces by the CSV reader itself, typed on the way
# in; an 11th column catches lines with too many fields. Anything it cannot type becomes null,
# which sends that line to the slow path.
_FIELD_SCHEMA = {
    "ts": pl.UInt64, "cpu": pl.Int32, "tid": pl.Int64, "ev": pl.Categorical,
    "cls": pl.Categorical, "lock": pl.String, "mode": pl.Categorical, "ns": pl.Int64,
    "pa": pl.String, "op": pl.Categorical, "extra": pl.String,
}
# glob=False: a path is a file name, never a pattern (polars would read "cap1.log" for
# "cap[1].log", or nothing at all for "run[1]/cap.log").
_FIELD_READER: dict[str, Any] = dict(
    has_header=False, separator=" ", quote_char=None, schema=_FIELD_SCHEMA, ignore_errors=True,
    truncate_ragged_lines=True, missing_columns="insert", raise_if_empty=False, glob=False)
# A stray 0x1f byte (the separator here) splits its line: the second column catches what
# follows it (and truncate_ragged_lines anything after a second one) instead of the whole
# read failing, and _lines() puts the line back together, control byte included, so that it
# is reported as malformed.
_LINE_READER: dict[str, Any] = dict(has_header=False, separator=LINE_SEP, quote_char=None,
                                    schema={"l": pl.String, "more": pl.String},
                                    encoding="utf8-lossy", raise_if_empty=False, glob=False,
                                    truncate_ragged_lines=True, missing_columns="insert")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NO_ROWS = np.zeros(0, np.uint64)


def _read_error(exc: Exception, name: str) -> PvtraceError:
    return PvtraceError(f"cannot read: {exc}", path=name)


def _field_batches(path: Path, encoding: str):
    """Fast-read lines, typed and checked, with an ``ok`` column: one batch for files up to
    ONE_BATCH_BYTES, else streamed in batches of about BATCH_ROWS. The addresses are decoded
    by :mod:`.hexfield` (null where not valid hex). Raises PolarsError when the reader fails
    (invalid UTF-8 under ``encoding="utf8"``)."""
    query = (pl.scan_csv(path, **_FIELD_READER, encoding=encoding)
             .with_row_index("line")
             .with_columns(pl.col("line").cast(pl.UInt64) + 1))
    if os.path.getsize(path) <= ONE_BATCH_BYTES:
        batches = iter([query.collect()])   # one batch: about a tenth faster than streaming
    else:
        batches = query.collect_batches(chunk_size=BATCH_ROWS, maintain_order=True)
    for batch in batches:
        typed = hexfield.decode_columns(batch, ("lock", "pa"))
        del batch
        yield typed.with_columns((_valid() & pl.col("extra").is_null()).alias("ok"))


def _spilled(events: pl.DataFrame, file: Path) -> pl.DataFrame:
    """``events`` written to ``file`` (Arrow IPC, uncompressed) and memory-mapped back: the
    columns then live in the page cache, which the kernel can evict and write back, not in
    the process's own memory. A big log's records are most of an ingest's memory: this
    halves its peak.

    Categorical columns are spilled as their physical codes (indices into the process-wide
    categories, valid for as long as this process lives) and turned back into categoricals
    over the mapped codes without a copy. Spilled as Arrow dictionaries, they came back as
    new code arrays in anonymous memory: 2.4 GB for a 148 M-record capture."""
    cats = [name for name, dtype in events.schema.items() if dtype == pl.Categorical]
    try:
        events.with_columns(pl.col(cats).to_physical()).write_ipc(
            file, compression="uncompressed")
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise PvtraceError(f"cannot spill parsed records to {file.parent} (about 70 bytes "
                           f"per record are needed there until the ingest ends): "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
    back = pl.from_arrow(pa.ipc.open_file(pa.memory_map(str(file))).read_all())
    return back.with_columns(back.get_column(name).cat.to(pl.Categorical) for name in cats)


def _lines(path: Path) -> pl.LazyFrame:
    """Every line of ``path`` as one string column ``l`` (null for a blank line)."""
    more = pl.col("more")
    return pl.scan_csv(path, **_LINE_READER).select(
        pl.when(more.is_null()).then(pl.col("l"))
        .otherwise(pl.concat_str(pl.col("l").fill_null(""), pl.lit(LINE_SEP), more)).alias("l"))


def _line_batches(path: Path, name: str):
    """(first line number, one-string-per-line frame) batches of the whole file."""
    first = 1
    try:
        for lines in _lines(path).collect_batches(chunk_size=BATCH_ROWS, maintain_order=True):
            yield first, lines
            first += lines.height
            progress.advance(lines.height)
    except pl.exceptions.PolarsError as exc:
        raise _read_error(exc, name) from None


def _refused_lines(path: Path, name: str, rows: pl.Series, said: pl.DataFrame
                   ) -> pl.DataFrame:
    """The text (``line``, ``l``) of the lines at 0-based ``rows`` (few): from ``said``,
    the lines whose text the reader kept, the others from the file, which is read only up to
    the last of them."""
    rows = rows.filter(~(rows + 1).is_in(said.get_column("line").implode()))
    if rows.len() == 0:
        return said.sort("line")
    try:
        read = (_lines(path)
                .head(int(rows.max()) + 1)
                .with_row_index("i")
                .filter(pl.col("i").cast(pl.UInt64).is_in(rows.implode()))
                .select((pl.col("i").cast(pl.UInt64) + 1).alias("line"), pl.col("l"))
                .collect())
    except pl.exceptions.PolarsError as exc:
        raise _read_error(exc, name) from None
    return pl.concat([said, read]).sort("line")


def _count_lines(path: Path, name: str) -> int:
    try:
        return pl.scan_csv(path, **_LINE_READER).select(pl.len()).collect().item()
    except pl.exceptions.PolarsError as exc:
        raise _read_error(exc, name) from None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


# --------------------------------------------------------------------------- batches


class _Batch:
    __slots__ = ("events", "bad", "meta", "diag")

    def __init__(self, events: pl.DataFrame, bad: pl.DataFrame, meta: pl.DataFrame,
                 diag: pl.DataFrame):
        self.events, self.bad, self.meta, self.diag = events, bad, meta, diag


def hex_expr(field: pl.Expr) -> pl.Expr:
    """``0x``-prefixed hex (or a bare ``0``) as UInt64; null when it is neither, or when it
    does not fit 64 bits. The slow path's version of :func:`.hexfield.decode`."""
    digits = field.str.strip_prefix("0x")
    value = digits.str.to_integer(base=16, dtype=pl.UInt64, strict=False)
    # to_integer alone would also take a sign ("0x+1f")
    return pl.when((field == "0") | field.str.contains(r"^0x[0-9a-fA-F]+$")).then(value)


def _valid() -> pl.Expr:
    """True for a record whose typed fields pass every check of SPEC section 1."""
    c = pl.col
    is_lock = c("ev").is_in(LOCK_EVENTS)
    is_p = c("ev") == "P"
    return (c("ts").is_not_null()
            & (c("cpu") >= 0) & (c("tid") >= 0)
            & c("ev").is_in(EVENTS)
            & (is_lock == (c("cls") != "-"))          # a class for lock events, - otherwise
            & (is_lock == (c("lock") != 0))           # an address for lock events, 0 otherwise
            & pl.when(is_lock).then(c("mode").is_in(("w", "r")))
                .when(is_p).then(c("mode").is_in(("4k", "2m")))
                .otherwise(c("mode") == "-")
            & (c("ns") >= 0)
            & c("pa").is_not_null()
            # pyarrow's reader reads two blanks in a row as an empty field between them
            & (c("cls") != "") & (c("op") != "")
            # the lossy reader makes a token with invalid UTF-8 null: the slow path reads it
            & c("op").is_not_null()).fill_null(False)


_EVENT_COLUMNS = (*RECORD_FIELDS, "line")


def _fast(typed: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series]:
    """Records among a batch from :func:`_field_batches`, and the 0-based rows it refused."""
    ok = pl.col("ok")
    # The categories a categorical column draws from (shared by the process's categoricals,
    # so a superset of this batch's tokens: free to get, where the batch's own distinct
    # values would cost a pass over it). Only when one holds a control byte are the rows
    # checked one by one.
    tokens = pl.concat([typed[c].dtype.categories.to_series() for c in ("cls", "op")])
    if tokens.str.contains(_CONTROL.pattern).any():
        # A tab or other control byte inside a free-text token (cls, op): slow path.
        ok = ok & ~pl.concat_str("cls", "op").str.contains(_CONTROL.pattern)
        typed = typed.with_columns(ok.alias("ok"))
    keep = typed.get_column("ok").fill_null(False)
    at = keep.not_().arg_true()      # positions of the refused lines
    refused = typed.get_column("line").gather(at) - 1
    records = typed.select(_EVENT_COLUMNS)
    if at.len() > FEW_REFUSED:
        return records.filter(keep), refused
    # The usual case: a few header lines. The records between them are zero-copy slices,
    # where a filter would copy every column of the batch.
    bounds = [-1, *at.to_list(), records.height]
    pieces = [records.slice(lo + 1, hi - lo - 1)
              for lo, hi in zip(bounds, bounds[1:]) if hi > lo + 1]
    return (pl.concat(pieces, rechunk=False) if pieces else records.clear()), refused


def _numbered(raw: pl.DataFrame, first_line: int) -> pl.DataFrame:
    return raw.select((pl.int_range(pl.len(), dtype=pl.UInt64) + first_line).alias("line"),
                      pl.col("l"))


def _slow(df: pl.DataFrame) -> _Batch:
    """Lines the fast path refused: blank, metadata, diagnostics, odd blanks, malformed."""
    l = pl.col("l")
    df = df.filter(l.is_not_null())  # blank lines; blank-only lines are dropped below
    is_meta = l.str.starts_with("#")
    is_diag = l.str.starts_with("dtrace: ")
    # A bare carriage return inside a # or dtrace: line (classic Mac line ends, or a line
    # glued on) would hide what follows it in that line: records, unseen. Such lines are
    # malformed, not metadata.
    glued = (is_meta | is_diag) & l.str.contains("\r", literal=True)
    cr_bad = df.filter(glued).select(
        "line", pl.lit("a carriage return inside a # or dtrace: line (bare CR line ends?): "
                       "records after it on the line would be lost").alias("reason"))
    df = df.filter(~glued)
    meta = df.filter(is_meta)
    diag = df.filter(is_diag)
    rec = df.filter(~(is_meta | is_diag))

    # Normalize blank runs and tabs, only on the lines that have them.
    needs = (l.str.contains("  ", literal=True) | l.str.contains("\t", literal=True)
             | l.str.starts_with(" ") | l.str.ends_with(" ") | l.str.contains("\r", literal=True))
    mask = rec.select(needs).to_series()
    if mask.any():
        idx = mask.arg_true()
        lines = rec.get_column("l")
        fixed = (lines.gather(idx).str.replace_all(r"[ \t\r]+", " ")
                 .str.strip_chars(" "))
        rec = rec.with_columns(lines.scatter(idx, fixed)).filter(l != "")

    f = [pl.col("f").struct.field(f"field_{i}") for i in range(11)]
    typed = (rec.lazy()
             .select(pl.col("line"), l, l.str.splitn(" ", 11).alias("f"))
             .select(pl.col("line"), l,
                     (f[9].is_not_null() & f[10].is_null()).alias("ok_n"),
                     f[0].cast(pl.UInt64, strict=False).alias("ts"),
                     f[1].cast(pl.Int32, strict=False).alias("cpu"),
                     f[2].cast(pl.Int64, strict=False).alias("tid"),
                     f[3].alias("ev"), f[4].alias("cls"), hex_expr(f[5]).alias("lock"),
                     f[6].alias("mode"), f[7].cast(pl.Int64, strict=False).alias("ns"),
                     hex_expr(f[8]).alias("pa"), f[9].alias("op"))
             .with_columns((pl.col("ok_n") & _valid() & ~_has_control()).alias("ok"))
             .collect())
    events = typed.filter(pl.col("ok")).select(
        pl.col(n).cast(pl.Categorical) if n in ("ev", "cls", "mode", "op") else pl.col(n)
        for n in _EVENT_COLUMNS)
    bad = _reasons(typed.filter(~pl.col("ok")))
    if cr_bad.height:
        bad = pl.concat([bad, cr_bad.cast(bad.schema)]).sort("line")
    return _Batch(events, bad, meta, diag)


def _has_control() -> pl.Expr:
    """A control byte in the free-text fields (the fast path sends such lines here): a
    damaged line, not a lock class or operation."""
    return pl.concat_str("cls", "op").str.contains(_CONTROL.pattern).fill_null(False)


def _reasons(bad: pl.DataFrame) -> pl.DataFrame:
    """Why each malformed line failed: the first check it fails, in field order."""
    if bad.height == 0:  # also the empty result for a batch without malformed lines
        return pl.DataFrame(schema={"line": pl.UInt64, "reason": pl.String})
    c = pl.col
    fields = pl.col("l").str.split(" ")
    tok = [fields.list.get(i, null_on_oob=True) for i in range(10)]
    is_lock = c("ev").is_in(LOCK_EVENTS)
    is_p = c("ev") == "P"
    q = lambda i: pl.concat_str(pl.lit("'"), tok[i], pl.lit("'"))  # noqa: E731
    reason = (
        pl.when(~c("ok_n")).then(pl.format("expected 10 fields, got {}", fields.list.len()))
        .when(c("ts").is_null()).then(pl.format("bad ts {} (unsigned decimal ns)", q(0)))
        .when(c("cpu").is_null() | (c("cpu") < 0)).then(pl.format("bad cpu {}", q(1)))
        .when(c("tid").is_null() | (c("tid") < 0)).then(pl.format("bad tid {}", q(2)))
        .when(~c("ev").is_in(EVENTS)).then(pl.format("unknown event letter {}", c("ev")))
        .when(is_lock & (c("cls") == "-"))
        .then(pl.format("lock class must not be - for {}", c("ev")))
        .when(~is_lock & (c("cls") != "-"))
        .then(pl.format("lock class must be - for {}, got {}", c("ev"), q(4)))
        .when(c("lock").is_null()).then(pl.format("bad lock {} (hex with 0x)", q(5)))
        .when(is_lock & (c("lock") == 0)).then(pl.format("lock address 0 for {}", c("ev")))
        .when(~is_lock & (c("lock") != 0))
        .then(pl.format("lock must be 0 for {}, got {}", c("ev"), q(5)))
        .when(is_lock & ~c("mode").is_in(("w", "r")))
        .then(pl.format("mode must be w or r for {}, got {}", c("ev"), q(6)))
        .when(is_p & ~c("mode").is_in(("4k", "2m")))
        .then(pl.format("mode must be 4k or 2m for P, got {}", q(6)))
        .when(~is_lock & ~is_p & (c("mode") != "-"))
        .then(pl.format("mode must be - for {}, got {}", c("ev"), q(6)))
        .when(c("ns").is_null() | (c("ns") < 0))
        .then(pl.format("bad ns {} (non-negative integer)", q(7)))
        .when(c("pa").is_null()).then(pl.format("bad pa {} (hex with 0x)", q(8)))
        .when(_has_control())
        .then(pl.lit("control byte (NUL, escape, ...) in the lock class or op field"))
        .otherwise(pl.lit("unparsable record"))
    )
    return bad.select(c("line"), reason.alias("reason"))


# --------------------------------------------------------------------------- assembly


def _assemble(parts: list[_Batch], src: int, name: str, total_lines: int,
              ends_with_newline: bool) -> Parsed:
    events = pl.concat([p.events for p in parts]) if parts else _empty_events()
    bad = (pl.concat([p.bad for p in parts]) if parts
           else pl.DataFrame(schema={"line": pl.UInt64, "reason": pl.String}))
    meta_lines = pl.concat([p.meta for p in parts]) if parts else pl.DataFrame()
    diag_lines = pl.concat([p.diag for p in parts]) if parts else pl.DataFrame()

    problems: list[Problem] = []
    totals: dict[str, int] = {}
    cut_off = 0
    if bad.height and not ends_with_newline and bad["line"][-1] == total_lines:
        cut_off = 1
        problems.append(Problem(src, name, total_lines, ProblemKind.CUT_OFF,
                                "last line has no newline and does not parse (capture "
                                f"interrupted?): {bad['reason'][-1]}; skipped"))
        bad = bad.head(bad.height - 1)
    elif (not ends_with_newline and events.height
          and events.get_column("line").max() == total_lines):
        # It parses, but a capture cut inside its last field parses too ("... pmap_enter"
        # cut to "... pm"): kept, and the user told to look at it.
        problems.append(Problem(src, name, total_lines, ProblemKind.WARNING,
                                "last line has no newline (capture interrupted?): kept as a "
                                "record, but its last field may be cut short"))
        totals[ProblemKind.WARNING.value] = 1
    if cut_off:
        totals[ProblemKind.CUT_OFF.value] = cut_off
    if bad.height:
        totals[ProblemKind.MALFORMED.value] = bad.height
        for line, reason in bad.head(MAX_PROBLEMS).iter_rows():
            problems.append(Problem(src, name, line, ProblemKind.MALFORMED, reason))

    meta, header_problems = _metadata(meta_lines, src, name)
    problems.extend(header_problems)
    if header_problems:
        totals[ProblemKind.WARNING.value] = (totals.get(ProblemKind.WARNING.value, 0)
                                             + len(header_problems))
    problems.sort(key=lambda p: (p.line or 0))
    meta["problem_totals"] = totals

    events = events.with_columns(pl.lit(src, dtype=pl.UInt16).alias("src"))
    diagnostics = _diagnostics(diag_lines, src)
    meta["diagnostic_lines"] = diagnostics.height
    return Parsed(format=Format.PVLOG,
                  tables={"events": events, "diagnostics": diagnostics},
                  problems=problems, meta=meta, records=events.height, lines=total_lines)


def _empty_events() -> pl.DataFrame:
    return pl.DataFrame(schema={
        "ts": pl.UInt64, "cpu": pl.Int32, "tid": pl.Int64, "ev": pl.Categorical,
        "cls": pl.Categorical, "lock": pl.UInt64, "mode": pl.Categorical, "ns": pl.Int64,
        "pa": pl.UInt64, "op": pl.Categorical, "line": pl.UInt64})


def _stated_cpus(lines: pl.DataFrame) -> int:
    """The CPUs a ``# ncpu=N`` among ``lines`` (``l``) states, 0 if none does."""
    values = lines.filter(pl.col("l").str.extract(_KV_RE, 1) == "ncpu").select(
        pl.col("l").str.extract(_KV_RE, 2).str.strip_chars()).to_series()
    return next((int(v) for v in values if v.isascii() and v.isdigit()), 0)


def _metadata(lines: pl.DataFrame, src: int, name: str) -> tuple[dict[str, Any], list[Problem]]:
    """``# pvtrace-log vN`` headers and ``# key=value`` facts (a handful of lines)."""
    meta: dict[str, Any] = {"log_version": None, "capture": {}}
    problems: list[Problem] = []
    if lines.height == 0:
        return meta, problems
    parsed = lines.select(
        pl.col("line"),
        pl.col("l").str.extract(_HEADER_RE, 1).alias("major"),   # digits, any length
        pl.col("l").str.extract(_KV_RE, 1).alias("key"),
        pl.col("l").str.extract(_KV_RE, 2).str.strip_chars().alias("value"),
        pl.col("l"))
    captures: list[dict[str, str]] = []
    comments: list[str] = []
    headers = 0
    for line, digits, key, value, text in parsed.iter_rows():
        if digits is None and _LOOSE_HEADER.match(text):
            # A header this reader does not understand ("v2 extra", "V2") names a format
            # that may not be v1: reading it as v1 without a word could misread every line.
            raise PvtraceError(f"unreadable event log header {text[:60]!r}: expected "
                               f"'# pvtrace-log v{LOG_MAJOR}'", path=name, line=line)
        if digits is not None:
            major = int(digits)
            if major < 1:
                raise PvtraceError(f"event log version v{digits[:20]} does not exist (this "
                                   f"pvtrace reads v{LOG_MAJOR})", path=name, line=line)
            if major > LOG_MAJOR:
                raise PvtraceError(
                    f"event log version v{digits[:20]} is newer than this pvtrace reads "
                    f"(v{LOG_MAJOR}); upgrade pvtrace", path=name, line=line)
            if meta["log_version"] is None:
                meta["log_version"] = f"v{major}"
            if headers:
                problems.append(Problem(
                    src, name, line, ProblemKind.WARNING,
                    "another '# pvtrace-log' header: captures concatenated in one file; "
                    "read as one"))
            if headers or not captures:   # the first header adopts facts printed before it
                captures.append({})
            headers += 1
        elif key is not None:
            if not captures:
                captures.append({})
            captures[-1].setdefault(key, value)
        elif len(comments) < 20:
            comments.append(text)
    merged: dict[str, str] = {}
    for facts in captures:
        for k, v in facts.items():
            merged.setdefault(k, v)
    meta["capture"] = merged
    if len(captures) > 1:
        meta["captures"] = captures
    if comments:
        meta["comments"] = comments
    return meta, problems


def _diagnostics(lines: pl.DataFrame, src: int) -> pl.DataFrame:
    schema = {"src": pl.UInt16, "line": pl.UInt64, "kind": pl.String, "cpu": pl.Int32,
              "count": pl.Int64, "text": pl.String}
    if lines.height == 0:
        return pl.DataFrame(schema=schema)
    text = pl.col("l").str.strip_chars_end(" \t\r")
    kind: Any = pl.lit("other")
    count: Any = pl.lit(None, dtype=pl.Int64)
    cpu: Any = pl.lit(None, dtype=pl.Int32)
    for name, pattern, count_group, cpu_group in reversed(_DTRACE_KINDS):
        hit = text.str.contains(pattern)
        kind = pl.when(hit).then(pl.lit(name)).otherwise(kind)
        if count_group is not None:
            count = pl.when(hit).then(
                text.str.extract(pattern, count_group).cast(pl.Int64, strict=False)
            ).otherwise(count)
        if cpu_group is not None:
            cpu = pl.when(hit).then(
                text.str.extract(pattern, cpu_group).cast(pl.Int32, strict=False)
            ).otherwise(cpu)
    out = lines.select(pl.lit(src, dtype=pl.UInt16).alias("src"), pl.col("line"),
                       kind.alias("kind"), cpu.alias("cpu"), count.alias("count"),
                       text.alias("text"))
    # A count or CPU too big for its column (a garbled line) came out null, and the drops
    # were summed as 0 or vanished: such a line is kept as an "other" message, which the
    # ingest summary shows as printed.
    garbled = ((pl.col("kind") == "drops") & (pl.col("count").is_null() | pl.col("cpu").is_null())
               | pl.col("kind").is_in(["dynvar_drops", "aggregation_drops"])
               & pl.col("count").is_null())
    return out.with_columns(pl.when(garbled).then(pl.lit("other")).otherwise(pl.col("kind"))
                            .alias("kind"))
