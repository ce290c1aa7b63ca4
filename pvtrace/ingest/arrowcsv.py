"""The event log's first reader: pyarrow's CSV reader, over pieces of the file read in parallel.

pyarrow's reader types this log faster than polars' (:func:`.pvlog.parse` of the 5 M-line
bench log on two cores: 0.54-0.57 s against 0.83-0.88 s): it reads the four numbers as
numbers and the other six fields as bytes, which compiled passes turn into dictionaries (the
tokens, :mod:`.tokens`) and numbers (the addresses, :mod:`.hexfield`) in the reading thread.
It is also stricter, which is what makes it safe to try first: a field it cannot type
(``+5``, ``1e3``, a 65-bit number, invalid UTF-8 in a token) fails the whole read instead of
becoming a null, and then :mod:`.pvlog`'s polars reader reads the file, which types what it
can and leaves the rest to the slow path. A line with other than 10 fields (a ``#`` or
``dtrace:`` line, a damaged record) is skipped and numbered, and the slow path reads it.

Line numbers. Every record keeps its line number (SPEC's tie order, and the error messages
that name a line). A multi-threaded pyarrow reader cannot number the lines it skips, so the
file is cut at line ends into pieces, and each is read by a single-threaded reader (two
pieces at a time, one per core: as fast in all as one multi-threaded read), whose
invalid-row handler gets each skipped line's number within its piece. A record's line
number follows from its piece's first line and the skipped lines before it. That needs
every line to be a record, a skipped line or a blank one:

- a ``\\r`` ends a line for pyarrow but not for polars (whose line numbers the slow path
  uses), so a file holding one (a CRLF capture) is left to polars (:class:`Unsure`);
- pyarrow drops blank lines without a word (and does not count them in its numbers), and
  dtrace(1) prints them: a newline when tracing stops, after every record, and another one
  when it is interrupted, before the records it drains then (``dtrace.c``, ``main``). A
  compiled scan of each piece counts its lines and finds its blank ones (about 0.02 s for
  the 337 MB bench log); the caller checks that the file's lines add up all the same.
"""

from __future__ import annotations

import mmap
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pcsv
from numba import njit

from pvtrace.ingest import hexfield, tokens
from pvtrace.ingest.common import EVENTS, LINE_SEP, LOCK_EVENTS, NO_LINES, RECORD_FIELDS

PIECE_BYTES = 16 << 20        # the most a piece holds (a big log streams piece by piece) ...
MIN_PIECE_BYTES = 1 << 20     # ... and the least, unless the file is smaller
PIECES_PER_WORKER = 4         # pieces per core at least, so that the cores end together
MAX_TEXTS = 4096              # skipped lines per piece whose text is kept (see batches)

TOKENS = ("ev", "cls", "mode", "op")      # read as bytes, then dictionary-encoded
ADDRESSES = ("lock", "pa")                  # read as bytes, then decoded
_TYPES = {name: pa.binary() for name in RECORD_FIELDS} | {
    "ts": pa.uint64(), "cpu": pa.int32(), "tid": pa.int64(), "ns": pa.int64()}
# Every field is text as printed: no quoting, no escapes, no null spellings ("NULL" and
# "N/A" are tokens like any other).
_CONVERT = pcsv.ConvertOptions(column_types=_TYPES, strings_can_be_null=False,
                               quoted_strings_can_be_null=False, null_values=[])


class Unsure(Exception):
    """This reader cannot vouch for its result: polars' reader reads the file instead."""


def batches(path: Path, rows: int
            ) -> Iterator[tuple[pl.DataFrame, np.ndarray, pl.DataFrame, int]]:
    """The records of the log at ``path`` in batches of about ``rows`` rows, each as
    (typed records: the 10 fields, addresses decoded, null where not valid hex, and their
    1-based ``line``; 0-based indexes of the lines skipped in the batch; the text of the
    skipped lines the batch kept, as ``line`` and ``l``; lines in the batch). Raises
    :class:`Unsure` when this reader cannot read the file as polars' would; the caller must
    also check that the lines add up to the file's (blank lines).

    The reader hands each skipped line's text to its handler: the slow path reads those
    (``#`` and ``dtrace:`` lines, damaged records) from here instead of from the file, where
    dtrace's blank last line would make it read the whole file again. A piece with more than
    :data:`MAX_TEXTS` of them keeps none (a log that is mostly not records takes the
    line-by-line path anyway); the caller reads the missing ones from the file."""
    size = os.path.getsize(path)
    if size == 0:
        raise Unsure("empty file")
    workers = _workers()
    spans = _spans_of(path)
    try:
        # The whole file as one buffer over the map: each piece is a slice of it, read in
        # place. (``read_at`` copies: a 16 MiB piece took 10 ms to copy into fresh memory.)
        source = pa.memory_map(str(path)).read_buffer()
    except (OSError, pa.ArrowException) as exc:
        raise Unsure(f"cannot map the file: {exc}") from None
    first = 0                      # lines before the piece
    frames: list[pl.DataFrame] = []
    skipped: list[np.ndarray] = []
    texts: list[pl.DataFrame] = []
    lines = 0
    queue: deque[Future] = deque()
    todo = iter(spans)
    try:
        with ThreadPoolExecutor(workers) as pool, _quiet_decode_errors():
            for span in todo:
                queue.append(pool.submit(_read, source, *span))
                if len(queue) > workers:
                    break
            while queue:
                table, numbers, said, n, blanks = queue.popleft().result()
                span = next(todo, None)
                if span is not None:
                    queue.append(pool.submit(_read, source, *span))
                frame, where, text = _typed(table, numbers, said, n, blanks, first)
                del table
                first += n
                lines += n
                frames.append(frame)
                skipped.append(where)
                texts.append(text)
                if sum(f.height for f in frames) >= rows:
                    yield _batch(frames, skipped, texts, lines)
                    frames, skipped, texts, lines = [], [], [], 0
    except pa.ArrowException as exc:      # a field it cannot type, a line it cannot split
        raise Unsure(str(exc)) from None
    finally:
        for future in queue:
            future.cancel()
    if frames:      # a file of one byte or more has a piece, so a frame (maybe empty)
        yield _batch(frames, skipped, texts, lines)


def _workers() -> int:
    return max(min(os.cpu_count() or 1, 8), 1)


def _spans_of(path: Path) -> list[tuple[int, int]]:
    """The pieces :func:`batches` reads: (start, end) byte offsets."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            per_piece = size // (PIECES_PER_WORKER * _workers())
            return _spans(mm, size, min(PIECE_BYTES, max(per_piece, MIN_PIECE_BYTES)))
    except (OSError, ValueError) as exc:     # a file system without mmap; the file emptied
        raise Unsure(f"cannot map the file: {exc}") from None


def _spans(mm: mmap.mmap, size: int, piece: int) -> list[tuple[int, int]]:
    """(start, end) byte offsets of pieces of about ``piece`` bytes, each ending with a
    line end (the last one: with the file)."""
    spans = []
    lo = 0
    while lo < size:
        cut = mm.find(b"\n", lo + piece - 1) if size - lo > piece else -1
        hi = size if cut < 0 else cut + 1
        spans.append((lo, hi))
        lo = hi
    return spans


def _read(source: pa.Buffer, lo: int, hi: int
          ) -> tuple[pa.Table, list[int | None], list[str], int, np.ndarray]:
    """The piece ``lo:hi`` read: its records, the 1-based numbers of the lines skipped
    (among its lines that are not blank: pyarrow counts no blank line) and their text (the
    first :data:`MAX_TEXTS`), its lines, and the 0-based indexes of its blank lines."""
    numbers: list[int | None] = []
    said: list[str] = []

    def skip(row: pcsv.InvalidRow) -> str:
        numbers.append(row.number)
        if len(said) < MAX_TEXTS:
            said.append(_as_polars_reads(row.text))
        return "skip"

    data = source.slice(lo, hi - lo)
    lines, blanks = _lines(np.frombuffer(data, np.uint8))     # raises for a "\r"
    table = pcsv.read_csv(
        pa.BufferReader(data),
        read_options=pcsv.ReadOptions(column_names=list(RECORD_FIELDS), use_threads=False,
                                      block_size=max(hi - lo + 1, 1 << 16)),
        parse_options=pcsv.ParseOptions(delimiter=" ", quote_char=False, double_quote=False,
                                        escape_char=False, newlines_in_values=False,
                                        ignore_empty_lines=True, invalid_row_handler=skip),
        convert_options=_CONVERT)
    return _decoded(table), numbers, said, lines, blanks


def _decoded(table: pa.Table) -> pa.Table:
    """The piece's token fields dictionary-encoded (:mod:`.tokens`), its addresses decoded
    (:mod:`.hexfield`), and an ``ok`` column: whether each record passes the checks of SPEC
    section 1 (:func:`_check`), here in the reading thread: the passes free the GIL. The
    checks were polars expressions, run in the thread that hands the pieces on."""
    table = table.combine_chunks()      # one block per piece: one chunk per column
    n = table.num_rows
    arrays = {name: (table.column(name).chunk(0) if table.column(name).num_chunks
                     else pa.array([], table.schema.field(name).type))
              for name in RECORD_FIELDS}
    values, valid = {}, {}
    for name in ADDRESSES:
        arrays[name], values[name], valid[name] = hexfield.decode_arrow_valid(arrays[name])
    for name in TOKENS:
        arrays[name] = tokens.encode(arrays[name])
    ok = np.empty(n, np.bool_)
    kinds = {name: np.array([_KINDS[name].get(v, 0)
                             for v in arrays[name].dictionary.to_pylist()] or [0], np.int8)
             for name in TOKENS}
    codes = {name: arrays[name].indices.to_numpy() for name in TOKENS}
    _check(ok, *(arrays[name].to_numpy() for name in ("cpu", "tid", "ns")),
           codes["ev"], kinds["ev"], codes["cls"], kinds["cls"], codes["mode"],
           kinds["mode"], codes["op"], kinds["op"], values["lock"], valid["lock"], valid["pa"])
    return pa.table({**{name: arrays[name] for name in RECORD_FIELDS}, "ok": ok})


# What each token value is, for _check (pvtrace.ingest.pvlog._valid says the same with
# polars expressions: the slow path's checks, and the polars reader's).
_LOCK_EVENT, _PAGE_MOVE, _OTHER_EVENT = 1, 2, 3      # ev (0: no event of SPEC section 1)
_DASH, _EMPTY = 1, 2                                 # cls and op (0: any other token)
_LOCK_MODE, _PAGE_SIZE, _NO_MODE = 1, 2, 3          # mode (0: anything else)
# Any value not listed is 0: no event, or any other token.
_KINDS = {
    "ev": {ev: (_LOCK_EVENT if ev in LOCK_EVENTS else _PAGE_MOVE if ev == "P"
                else _OTHER_EVENT) for ev in EVENTS},
    "cls": {"-": _DASH, "": _EMPTY},
    "mode": {"w": _LOCK_MODE, "r": _LOCK_MODE, "4k": _PAGE_SIZE, "2m": _PAGE_SIZE,
             "-": _NO_MODE},
    "op": {"": _EMPTY},
}


@njit(nogil=True, cache=True)
def _check(ok, cpu, tid, ns, ev, ev_kind, cls, cls_kind, mode, mode_kind, op, op_kind,
           lock, lock_valid, pa_valid):
    """``ok[i]``: record ``i`` passes every check of SPEC section 1 (the ``*_kind`` arrays
    say what each token's dictionary value is, see ``_KINDS``)."""
    for i in range(ok.size):
        kind = ev_kind[ev[i]]
        is_lock = kind == _LOCK_EVENT
        klass = cls_kind[cls[i]]
        wanted = _LOCK_MODE if is_lock else (_PAGE_SIZE if kind == _PAGE_MOVE else _NO_MODE)
        ok[i] = (kind != 0 and cpu[i] >= 0 and tid[i] >= 0 and ns[i] >= 0
                 and lock_valid[i] and pa_valid[i]
                 and is_lock == (klass != _DASH) and klass != _EMPTY
                 and is_lock == (lock[i] != 0)
                 and mode_kind[mode[i]] == wanted and op_kind[op[i]] != _EMPTY)


def _as_polars_reads(text: str) -> str:
    """A skipped line's text as polars' line reader reads it (:func:`.pvlog._lines`), so
    that both readers report a line alike: that reader splits a line at its unit separator
    bytes (``\\x1f``) and keeps what lies before the second one."""
    return text if LINE_SEP not in text else LINE_SEP.join(text.split(LINE_SEP, 2)[:2])


def _lines(text: np.ndarray) -> tuple[int, np.ndarray]:
    """The lines of ``text`` (whole lines; the last may lack its line end) and the 0-based
    indexes of the blank ones. Raises :class:`Unsure` when it holds a ``\\r`` (found in
    the same pass: a scan of the whole file for one, before the read, held the GIL for
    70 ms of the bench log's 1 s ingest)."""
    lines, blank, returns = _count_lines(text)
    if returns:
        raise Unsure("carriage returns")
    blanks = np.empty(blank, np.int64)
    if blank:
        _blank_lines(text, blanks)
    return lines, blanks


@njit(nogil=True, cache=True)
def _count_lines(text):
    """(lines, blank lines, carriage returns) of ``text``: sums with no branch and no value
    carried from one byte to the next, which the compiler turns into vector instructions."""
    n = text.size
    if n == 0:
        return 0, 0, 0
    ends = np.int64(text[0] == 10)
    blank = ends                     # a piece starts after a line end
    returns = np.int64(text[0] == 13)
    for i in range(1, n):
        end = text[i] == 10
        ends += end
        blank += end & (text[i - 1] == 10)
        returns += text[i] == 13
    return ends + (text[n - 1] != 10), blank, returns   # a last line without its end counts


@njit(nogil=True, cache=True)
def _blank_lines(text, out):
    """The 0-based indexes of the blank lines of ``text`` into ``out``."""
    line = 0
    k = 0
    previous = np.uint8(10)
    for i in range(text.size):
        if text[i] == 10:
            if previous == 10:
                out[k] = line
                k += 1
            line += 1
        previous = text[i]


def _typed(table: pa.Table, numbers: list[int | None], said: list[str], lines: int,
           blanks: np.ndarray, first: int) -> tuple[pl.DataFrame, np.ndarray, pl.DataFrame]:
    """A piece's records as polars' reader types them, with their line numbers (the
    piece starts after line ``first`` and has ``lines``, blank at ``blanks``), the
    0-based lines of the file skipped in it, and their text (``line``, ``l``) when the
    reader kept all of it (``said``, in the order of ``numbers``)."""
    if None in numbers:
        raise Unsure("a skipped line without its number")
    if table.num_rows + len(numbers) + len(blanks) != lines:
        raise Unsure("records, skipped and blank lines do not add up to the piece's lines")
    numbered = np.asarray(numbers, np.int64)
    by_line = np.argsort(numbered, kind="stable")
    within = numbered[by_line] - 1                   # among the lines not blank
    nonblank = lines - len(blanks)
    if len(within) and (within[0] < 0 or within[-1] >= nonblank
                        or (np.diff(within) == 0).any()):
        raise Unsure("skipped lines numbered outside their piece")
    # The 1-based line number in the file of each line of the piece that is not blank.
    place = np.arange(first + 1, first + 1 + lines, dtype=np.uint64)
    if len(blanks):
        place = np.delete(place, blanks)
    skipped = place[within] - np.uint64(1)
    line = np.delete(place, within) if len(within) else place
    frame = pl.from_arrow(table).with_columns(pl.Series("line", line))
    text = (pl.DataFrame({"line": skipped + np.uint64(1),
                          "l": pl.Series(said, dtype=pl.String).gather(by_line)})
            if numbers and len(said) == len(numbers) else NO_LINES)
    return frame, skipped, text


def _batch(frames: list[pl.DataFrame], skipped: list[np.ndarray], texts: list[pl.DataFrame],
           lines: int) -> tuple[pl.DataFrame, np.ndarray, pl.DataFrame, int]:
    frame = pl.concat(frames, rechunk=False) if len(frames) > 1 else frames[0]
    return frame, np.concatenate(skipped), pl.concat(texts), lines


@contextmanager
def _quiet_decode_errors():
    """pyarrow decodes a skipped line to text for the handler; invalid UTF-8 there is
    printed as an "Exception ignored" report, then the read fails (and polars' lossy reader
    takes over). The report is noise on the user's terminal: not printed."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not isinstance(unraisable.exc_value, UnicodeDecodeError):
            previous(unraisable)
    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
