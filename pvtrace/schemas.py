"""Table schemas, loaded from the repository's ``schemas/`` directory (the single source of truth).

Each ``schemas/<name>.json`` describes one table of a trace bundle::

    {"name": "events", "version": "1.0", "doc": "...",
     "fields": [{"name": "ts", "type": "uint64", "doc": "..."}, ...]}

Types are ``int8``..``int64``, ``uint8``..``uint64``, ``float64``, ``bool``, ``string``,
``dict<string>`` (dictionary-encoded strings) and ``list<T>``. Fields are nullable unless
``"nullable": false``. Every table written carries ``pvtrace.table`` and
``pvtrace.schema_version`` in its Arrow schema metadata; readers refuse a newer major version.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import polars as pl
import pyarrow as pa

from pvtrace.errors import PvtraceError

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
# A table's pvtrace.schema_version as readers accept it: "MAJOR.MINOR" (ASCII digits; a bare
# MAJOR or a third part was always accepted, and still is)
_VERSION = re.compile(r"(\d+)(?:\.\d+)*", re.ASCII)

_SCALARS = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "uint8": pa.uint8(), "uint16": pa.uint16(), "uint32": pa.uint32(), "uint64": pa.uint64(),
    "float64": pa.float64(), "bool": pa.bool_(), "string": pa.large_string(),
    # Dictionary values are plain (32-bit offset) strings: Parquet gives dictionaries back
    # with those whatever was written, and a bundle must read back with its own schema.
    "dict<string>": pa.dictionary(pa.uint32(), pa.string()),
}


def _arrow_type(spec: str) -> pa.DataType:
    if spec in _SCALARS:
        return _SCALARS[spec]
    if spec.startswith("list<") and spec.endswith(">"):
        return pa.large_list(_arrow_type(spec[5:-1]))
    raise ValueError(f"unknown schema type {spec!r}")


@dataclass(frozen=True, slots=True)
class TableSchema:
    name: str
    version: str
    doc: str
    arrow: pa.Schema

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


@cache
def load(name: str) -> TableSchema:
    """Load ``schemas/<name>.json`` as a :class:`TableSchema`."""
    path = SCHEMA_DIR / f"{name}.json"
    spec = json.loads(path.read_text())
    fields = [
        pa.field(f["name"], _arrow_type(f["type"]), nullable=f.get("nullable", True),
                 metadata={"doc": f.get("doc", "")})
        for f in spec["fields"]
    ]
    meta = {"pvtrace.table": spec["name"], "pvtrace.schema_version": spec["version"]}
    return TableSchema(spec["name"], spec["version"], spec.get("doc", ""),
                       pa.schema(fields, metadata=meta))


def names() -> list[str]:
    """All table names that have a schema file."""
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.json"))


def conform(data: pl.DataFrame | pa.Table, name: str) -> pa.Table:
    """Cast ``data`` to table ``name``'s schema: its columns, in its order, with its metadata.

    Extra columns are an error in the code that built them, not in user input, so they raise
    ``ValueError``; a missing nullable column is filled with nulls.
    """
    schema = load(name).arrow
    table = data.to_arrow() if isinstance(data, pl.DataFrame) else data
    extra = set(table.column_names) - set(schema.names)
    if extra:
        raise ValueError(f"table {name}: columns not in schemas/{name}.json: {sorted(extra)}")
    cols = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if pa.types.is_dictionary(field.type) and not pa.types.is_dictionary(col.type):
                col = col.cast(field.type.value_type).dictionary_encode()
            cols.append(col.cast(field.type))
        elif field.nullable:
            cols.append(pa.nulls(table.num_rows, field.type))
        else:
            raise ValueError(f"table {name}: required column {field.name!r} missing")
    return pa.Table.from_arrays(cols, schema=schema)


def check_version(metadata: dict[bytes, bytes] | None, name: str, where: str) -> None:
    """Refuse a table written with a newer major schema version than this pvtrace knows."""
    ours = load(name)
    theirs = (metadata or {}).get(b"pvtrace.schema_version")
    if theirs is None:
        raise PvtraceError(f"table {name} has no pvtrace schema version; not a pvtrace bundle",
                           path=where)
    # The version is whatever bytes the file holds: a damaged or hand-made file may hold
    # anything, which is an error naming the file, not a crash.
    text = theirs.decode("utf-8", "replace")
    version = _VERSION.fullmatch(text)
    if version is None:
        raise PvtraceError(f"table {name} has a damaged schema version {text!r} (not "
                           "MAJOR.MINOR)", path=where)
    if int(version.group(1)) > ours.major:
        raise PvtraceError(
            f"table {name} has schema version {version.group(0)}, newer than this pvtrace "
            f"understands ({ours.version}); upgrade pvtrace to read it", path=where)
