"""Trace bundles: a directory of Parquet tables plus ``metadata.json``.

A bundle is what ``pvtrace ingest`` writes and what every later stage reads (SPEC section 2)::

    DIR/events.parquet        one row per event-log record, sorted by ts
    DIR/diagnostics.parquet   dtrace: lines found in the input
    DIR/lockstat.parquet      lockstat(1) report rows (when such input was given)
    DIR/...                   other tables, each described by schemas/<name>.json
    DIR/metadata.json         inputs, record counts, malformed lines, drops, layout
    DIR/cache/                the replay's timeline, written by the first replay, mapped by
                              later ones (Arrow IPC; derived, safe to delete; see
                              pvtrace.replay.cache), and in cache/derived/ the designs' keys

Bundles are written atomically: everything goes to a temporary sibling directory which is then
renamed into place, so an interrupted ingest never leaves a half-written bundle behind.

``metadata.json`` may have been edited by hand or damaged; :func:`open_bundle` checks the shape
of every key a reader uses, so that damage is one error naming the file, not a crash later.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pvtrace import progress, schemas, signals
from pvtrace.errors import PvtraceError

BUNDLE_FORMAT = "pvtrace-bundle/1"
META_FILE = "metadata.json"
# "pvtrace-bundle/MAJOR" or ".../MAJOR.MINOR"; ASCII digits only (int() would take others)
_FORMAT = re.compile(r"pvtrace-bundle/(\d+)(?:\.\d+)?", re.ASCII)


def is_bundle(path: str | os.PathLike) -> bool:
    try:
        return Path(path, META_FILE).is_file()
    except OSError:     # is_file() raises EACCES: what cannot be looked at is not a bundle
        return False


def _foreign_entries(bundle: Path) -> list[str]:
    """Names in a bundle directory that no pvtrace wrote there: not a table's Parquet file,
    the metadata, the replay cache (``cache/``) or the temporary names of its atomic
    replacement (``.cache.*``)."""
    ours = {META_FILE, "cache", *(f"{name}.parquet" for name in schemas.names())}
    return sorted(p.name for p in bundle.iterdir()
                  if p.name not in ours and not p.name.startswith(".cache."))


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new empty directory in ``parent``, named ``prefix`` and a random suffix.

    Unlike ``tempfile.mkdtemp`` (mode 0700, for a shared /tmp) it gets the mode a plain
    ``mkdir`` gives, 0777 less the umask: it is renamed into place as a bundle (or its cache),
    which colleagues on a shared machine should be able to read as they can the user's other
    files. The umask applies in ``mkdir`` itself, so it is never changed (other threads run).
    """
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir(0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(17, "no unused temporary directory name", str(parent / prefix))


def check_target(out_dir: str | os.PathLike, *, force: bool = False) -> None:
    """Refuse an output that :func:`write_bundle` would refuse (callers check before work)."""
    out = Path(out_dir)
    try:
        # A file among the parents would make write_bundle's mkdir fail with "File exists".
        for parent in out.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise PvtraceError(f"cannot write there: {parent} is not a directory",
                                       path=str(out))
                break
        if out.exists():
            if not out.is_dir() or (any(out.iterdir()) and not is_bundle(out)):
                raise PvtraceError("exists and is not a pvtrace bundle; choose another -o",
                                   path=str(out))
            if is_bundle(out) and not force:
                raise PvtraceError("bundle exists; pass --force to replace it", path=str(out))
            if is_bundle(out) and (foreign := _foreign_entries(out)):
                # --force replaces the whole directory: never what pvtrace did not write
                # there (the capture itself, copied in beside its bundle, or notes).
                shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise PvtraceError(f"the bundle directory also holds {shown}, which --force "
                                   "would delete with the bundle; move them out or choose "
                                   "another -o", path=str(out))
    except OSError as exc:      # exists() and iterdir() raise in a directory we may not read
        raise PvtraceError(f"cannot write there: {exc.strerror or exc}", path=str(out)) from None


# Parquet writing. The events table is most of an ingest's write time and, read back, of a
# replay's load time, and pyarrow encodes it on one core, so each of its columns gets the
# encoding that is cheapest to write and to read while still compact, measured on the ingest
# and replay benchmarks' bundles (5 M and 14 M records): against zstd on every column, writing
# is about 2x faster and reading 1.4-2x faster, for a file 1.3-1.9x larger (still a fifth of
# the text log). Compression is spent only where the encoding leaves much to squeeze:
# - time, thread, CPU and line numbers mostly grow by small steps or repeat: delta-encoded,
#   which leaves little for a compressor (zstd on top took more time than it saved bytes);
# - dictionary columns and the lock addresses (a few thousand distinct values): dictionary
#   pages, whose bit-packed indices are already small;
# - page addresses (many distinct, high-entropy values): plain, with the fast lz4;
# - the mostly-zero wait ns and the constant input number: plain, zstd squeezes them to nothing.
# Other tables are small; their columns get the same rules by name and type.
DELTA_COLUMNS = ("ts", "cpu", "tid", "line")
DICTIONARY_COLUMNS = ("lock",)
COLUMN_COMPRESSION = {"pa": "lz4", "ns": "zstd", "src": "zstd"}
DEFAULT_COMPRESSION = "zstd"     # columns not named above and not delta or dictionary pages
COMPRESSION_LEVEL = -1           # zstd's fast negative levels
STATISTICS_COLUMNS = ("ts",)     # min/max only where a reader would filter: they cost time


@dataclass(frozen=True)
class Parts:
    """A table handed to :func:`write_bundle` as consecutive parts (each a ``pa.Table``), one
    Parquet row group each: the writer never needs the whole table at once, and is done with
    a part when it asks for the next (the producer may reuse its memory then). ``rows`` is
    the total; ``first`` is an empty table with the columns, written when there are no
    parts."""

    parts: Iterable[pa.Table]
    rows: int
    first: pa.Table


@dataclass(frozen=True)
class Written:
    """A table already written as a Parquet file of ``rows`` rows, outside the bundle (by
    :func:`open_part_writer`, which conforms it to its schema): :func:`write_bundle` moves
    it into place. The ingest writes the events of a log in time order so, while it parses
    the log (:mod:`pvtrace.ingest.stream`)."""

    path: Path
    rows: int


def write_bundle(out_dir: str | os.PathLike,
                 tables: dict[str, pl.DataFrame | pa.Table | Parts | Written],
                 metadata: dict[str, Any] | Callable[[], dict[str, Any]], *,
                 force: bool = False) -> Path:
    """Write ``tables`` (each conformed to its schema) and ``metadata`` to ``out_dir`` atomically.

    ``metadata`` may be a callable, called once the tables are written (so a caller can
    compute it in another thread meanwhile); when it raises, nothing is left behind.
    An existing bundle is replaced only with ``force``; an existing directory that is not a
    bundle is never touched. When ``out_dir`` is a symbolic link, the bundle it points to is
    written (or replaced) and the link is kept, as a shell's ``>`` or ``cp`` would do:
    renaming onto the link itself would replace the link and leave the old bundle untouched.
    """
    out = Path(out_dir)
    check_target(out, force=force)
    # The renames below work on what a link points to; errors name out_dir as given.
    dest = Path(os.path.realpath(out)) if out.is_symlink() else out
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(dest.parent, f".{dest.name}.")
    except OSError as exc:
        raise PvtraceError(f"cannot write there: {exc.strerror or exc}", path=str(out)) from None
    try:
        written: dict[str, Any] = {}
        for name, data in tables.items():
            path = tmp / f"{name}.parquet"
            if isinstance(data, Parts):
                rows = _write_parts(data, name, path)
            elif isinstance(data, Written):
                shutil.move(data.path, path)    # a rename: the ingest's scratch is a sibling
                rows = data.rows
            else:
                table = schemas.conform(data, name)
                _write_parquet(table, path)
                rows = table.num_rows
            written[name] = {"rows": rows, "schema_version": schemas.load(name).version}
        facts = metadata() if callable(metadata) else metadata
        meta = {"format": BUNDLE_FORMAT, **facts, "tables": written}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except OSError as exc:      # a full disk, a quota, a vanished directory: not a crash
        shutil.rmtree(tmp, ignore_errors=True)
        raise PvtraceError(f"cannot write the bundle: {exc.strerror or exc}; nothing was "
                           "written", path=str(out)) from None
    except BaseException:
        with signals.held():     # a second signal must not leave half a bundle behind
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """pyarrow writer options for ``schema``: per column an encoding and a codec (see above)."""
    names = set(schema.names)
    dict_cols = [f.name for f in schema
                 if pa.types.is_dictionary(f.type) or f.name in DICTIONARY_COLUMNS]
    delta = {c: "DELTA_BINARY_PACKED" for c in DELTA_COLUMNS
             if c in names and pa.types.is_integer(schema.field(c).type)}
    compression = {}
    for name in schema.names:
        if name in COLUMN_COMPRESSION:
            compression[name] = COLUMN_COMPRESSION[name]
        elif name in delta or name in dict_cols:
            compression[name] = "none"
        else:
            compression[name] = DEFAULT_COMPRESSION
    levels = {name: COMPRESSION_LEVEL for name, codec in compression.items() if codec == "zstd"}
    return dict(compression=compression, compression_level=levels or None,
                use_dictionary=dict_cols or False, column_encoding=delta or None,
                write_statistics=[c for c in STATISTICS_COLUMNS if c in names] or False)


def _write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, **parquet_options(table.schema))


def open_part_writer(path: Path, name: str, part: pa.Table) -> pq.ParquetWriter:
    """A Parquet writer of table ``name`` at ``path``, with the schema and options
    :func:`write_bundle` gives it, for parts like ``part`` (each conformed to the schema
    with :func:`pvtrace.schemas.conform` and written as a row group)."""
    schema = schemas.conform(part.slice(0, 0), name).schema
    return pq.ParquetWriter(path, schema, **parquet_options(schema))


def write_part(writer: pq.ParquetWriter, name: str, part: pa.Table) -> int:
    """Write ``part`` of table ``name``, conformed to its schema, as one row group; returns
    its rows."""
    table = schemas.conform(part, name)
    writer.write_table(table, row_group_size=max(table.num_rows, 1))
    return table.num_rows


def close_iterator(iterator: Iterator[Any]) -> None:
    """Close ``iterator`` now if it can be closed (a generator: its ``finally`` blocks and
    context managers run at once; see :func:`_write_parts`)."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _write_parts(data: Parts, name: str, path: Path) -> int:
    """Write ``data`` part by part (a row group each); returns the rows written.

    The parts' iterator is closed however the write ends. A generator of parts may hold
    threads (the ingest gathers the next part on another one): left suspended by an error,
    it would only be finalized by the garbage collector, at any later point in any thread,
    and joining a thread there can deadlock (it did inside ``threading``'s own bookkeeping
    while another thread started: the fuzz tests hung)."""
    rows = 0
    parts = data.parts
    try:
        with open_part_writer(path, name, data.first) as writer:
            for part in parts:
                n = write_part(writer, name, part)
                rows += n
                progress.advance(n)
            if rows == 0:
                writer.write_table(schemas.conform(data.first, name))
    finally:
        close_iterator(parts)
    if rows != data.rows:
        raise ValueError(f"table {name}: {rows} rows written, {data.rows} announced")
    return rows


@dataclass
class Bundle:
    """A bundle opened for reading; tables are loaded on first use."""

    path: Path
    metadata: dict[str, Any]
    _cache: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False)

    def has(self, name: str) -> bool:
        """Whether the bundle has table ``name``. When ``metadata.json`` lists the table but
        its file is gone, the bundle is damaged and this raises: the user must hear of the
        missing file, not of a bundle without that table (as a lockstat-only bundle is
        without events)."""
        if (self.path / f"{name}.parquet").is_file():
            return True
        self._check_listed(name)
        return False

    def _check_listed(self, name: str) -> None:
        if name in self.metadata.get("tables", {}):
            raise PvtraceError(f"missing from the bundle, though {META_FILE} lists the {name} "
                               "table; ingest the capture again",
                               path=str(self.path / f"{name}.parquet"))

    def arrow(self, name: str, columns: list[str] | None = None) -> pa.Table:
        file = self.path / f"{name}.parquet"
        if not file.is_file():
            self._check_listed(name)
            raise PvtraceError(f"bundle has no {name} table", path=str(self.path))
        try:
            table = pq.read_table(file, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise PvtraceError(f"cannot read table: {exc}", path=str(file)) from None
        schemas.check_version(table.schema.metadata, name, str(file))
        return table

    def table(self, name: str, columns: list[str] | None = None) -> pl.DataFrame:
        """Table ``name`` as a DataFrame (all columns are cached; a column subset is not)."""
        if columns is not None:
            return pl.from_arrow(self.arrow(name, columns))
        if name not in self._cache:
            self._cache[name] = pl.from_arrow(self.arrow(name))
        return self._cache[name]


def open_bundle(path: str | os.PathLike) -> Bundle:
    """Open a bundle directory, refusing a bundle format newer than this pvtrace and a
    ``metadata.json`` whose keys readers use do not have the shape this pvtrace writes."""
    p = Path(path)
    file = p / META_FILE
    try:
        if not p.exists():
            raise PvtraceError("no such file or directory", path=str(p))
    except OSError as exc:
        raise PvtraceError(f"cannot read: {exc.strerror or exc}", path=str(p)) from None
    if not is_bundle(p):
        raise PvtraceError(f"not a pvtrace bundle (no {META_FILE})", path=str(p))
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise PvtraceError(f"unreadable bundle metadata: {exc}", path=str(file)) from None
    except RecursionError:      # json recurses once per nesting level: "[" * 100000
        raise PvtraceError("unreadable bundle metadata: nested too deeply",
                           path=str(file)) from None
    if not isinstance(meta, dict):
        kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
            type(meta), "number")
        raise PvtraceError(f"not a pvtrace bundle metadata file (a JSON {kind}, not an object)",
                           path=str(file))
    fmt = meta.get("format")
    if not isinstance(fmt, str) or not fmt.startswith("pvtrace-bundle/"):
        raise PvtraceError("not a pvtrace bundle metadata file", path=str(file))
    version = _FORMAT.fullmatch(fmt)
    if version is None:
        raise PvtraceError(f"damaged bundle metadata: format {fmt!r} is not "
                           "pvtrace-bundle/MAJOR[.MINOR]", path=str(file))
    if int(version.group(1)) > int(BUNDLE_FORMAT.split("/")[1]):
        raise PvtraceError(f"bundle format {fmt} is newer than this pvtrace ({BUNDLE_FORMAT}); "
                           "upgrade pvtrace", path=str(p))
    problem = _metadata_problem(meta)
    if problem:
        raise PvtraceError(f"damaged bundle metadata: {problem}", path=str(file))
    return Bundle(p, meta)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _layout_problem(layout: str) -> str | None:
    """Why ``layout`` (a captured layout the bundle records) is not one, or None. "unknown"
    is what ingest records when it could not detect one."""
    if layout in ("", "unknown"):
        return None
    from pvtrace.models.layout import Layout

    try:
        Layout.parse(layout)
    except PvtraceError as exc:
        return exc.message
    return None


def _metadata_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the keys of ``metadata.json`` that readers use (the replay report
    copies them, its text notes add the drops up), or None. Each may be missing (older
    bundles lack some), but when present it must have the shape :func:`write_bundle`'s
    callers write; keys readers do not use are not checked."""
    tables = meta.get("tables", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        return "'tables' must be an object of objects"
    layout = meta.get("layout")
    if isinstance(layout, dict):
        for key in ("effective", "detected"):
            if not isinstance(layout.get(key), (str, type(None))):
                return f"'layout.{key}' must be a string"
    elif not isinstance(layout, (str, type(None))):
        return "'layout' must be a string or an object"
    if isinstance(layout, dict) and isinstance(layout.get("effective"), str):
        problem = _layout_problem(layout["effective"])
        if problem:
            return f"'layout.effective': {problem}"
    elif isinstance(layout, str) and (problem := _layout_problem(layout)):
        return f"'layout': {problem}"
    if not isinstance(meta.get("capture", {}), dict):
        return "'capture' must be an object"
    said = meta.get("dtrace_messages", [])
    if not isinstance(said, list) or not all(isinstance(m, str) for m in said):
        return "'dtrace_messages' must be a list of strings"
    if "dtrace_message_lines" in meta and not _is_count(meta["dtrace_message_lines"]):
        return "'dtrace_message_lines' must be a count (an integer >= 0)"
    drops = meta.get("drops", {})
    if not isinstance(drops, dict):
        return "'drops' must be an object"
    per_cpu = drops.get("per_cpu", {})
    if not isinstance(per_cpu, dict):
        return "'drops.per_cpu' must be an object"
    for cpu, n in per_cpu.items():
        if not _is_count(n):
            return f"'drops.per_cpu.{cpu}' must be a count (an integer >= 0)"
    for key in ("total", "dynvar_drops", "aggregation_drops"):
        if key in drops and not _is_count(drops[key]):
            return f"'drops.{key}' must be a count (an integer >= 0)"
    return None
