"""Write a simulated run as a pvtrace event log v1 (SPEC section 1), the way DTrace prints it.

DTrace keeps one buffer per CPU and, every ``switchrate`` interval, prints each CPU's buffer in
turn; so a real capture is ordered by (drain interval, CPU, time), not by time, and
``pvtrace ingest`` must sort it. The synthetic capture reproduces that order: each simulated
thread stays on its CPU, records fall into drain chunks of ``drain_ns`` from the capture start,
and lines are sorted stably by (chunk, CPU); within a CPU they are already in time order.

The header carries the facts a reader of the capture needs (``ncpu``, ``ndomains``,
``kernel=synth-<design>``, ``layout``, ``seed``, ``workload``, ``threads`` ...) and the
simulator's ground truth as ``# truth_*=`` keys.

The text is built column-wise with polars (hex strings are formatted once per distinct
address), so writing runs at millions of records per second.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl

from pvtrace.synth.kernel_sim import CLS_NAMES, EV_NAMES, MODE_NAMES, TS0, SimResult
from pvtrace.synth.workload import OPS

TID_BASE = 100_100        # kernel thread ids of the simulated threads: TID_BASE + cpu
DRAIN_NS = 10_000_000     # switchrate=100hz
CHUNK_ROWS = 200_000      # records rendered at a time


def flatten_truth(truth: dict) -> dict[str, int]:
    """The truth dict as flat ``truth_*`` header keys."""
    out: dict[str, int] = {}
    for key, val in truth.items():
        if isinstance(val, dict):
            for sub, v in val.items():
                if isinstance(v, dict):
                    for k3, v3 in v.items():
                        out[f"truth_{key}_{sub}_{k3}"] = v3
                else:
                    out[f"truth_{key}_{sub}"] = v
        else:
            out[f"truth_{key}"] = val
    return out


def _hex(values: np.ndarray) -> pl.Series:
    uniq, inv = np.unique(values, return_inverse=True)
    strs = pl.Series([("0x%x" % int(v)) if v else "0" for v in uniq], dtype=pl.String)
    return strs.gather(pl.Series(inv.astype(np.int64)))


def _names(codes: np.ndarray, names) -> pl.Series:
    return pl.Series(list(names), dtype=pl.String).gather(pl.Series(codes.astype(np.int64)))


def _header(header: dict) -> str:
    return "# pvtrace-log v1\n" + "".join(f"# {k}={v}\n" for k, v in header.items())


def render_pieces(result: SimResult, header: dict, drain_ns: int = DRAIN_NS,
                  rows: int = CHUNK_ROWS) -> Iterator[str]:
    """The capture as text, piece by piece: the header, then records in drained order."""
    c = result.columns
    chunk = (c["ts"] - TS0) // drain_ns
    order = np.lexsort((c["cpu"], chunk))          # stable: keeps each CPU's time order
    yield _header(header)
    for lo in range(0, len(order), rows):
        idx = order[lo:lo + rows]
        cols = {k: v[idx] for k, v in c.items()}
        df = pl.DataFrame({
            "ts": pl.Series(cols["ts"]).cast(pl.String),
            "cpu": pl.Series(cols["cpu"]).cast(pl.String),
            "tid": pl.Series(cols["cpu"].astype(np.int64) + TID_BASE).cast(pl.String),
            "ev": _names(cols["ev"], EV_NAMES),
            "cls": _names(cols["cls"], CLS_NAMES),
            "lock": _hex(cols["lock"]),
            "mode": _names(cols["mode"], MODE_NAMES),
            "ns": pl.Series(cols["ns"]).cast(pl.String),
            "pa": _hex(cols["pa"]),
            "op": _names(cols["op"], OPS),
        })
        line = df.select(pl.concat_str(pl.all(), separator=" ").alias("line"))["line"]
        yield line.str.join("\n").item() + "\n"


def render(result: SimResult, header: dict, drain_ns: int = DRAIN_NS) -> str:
    """The whole capture as one string."""
    return "".join(render_pieces(result, header, drain_ns))


@contextmanager
def _open(path: Path) -> Iterator[BinaryIO]:
    """A binary stream to `path`, compressed by its name (:func:`_compressed`). A regular
    file is written under a temporary name beside it and renamed into place when complete,
    so an interrupted or failed write leaves no half capture under the name (nor a damaged
    earlier one); anything else (``/dev/stdout``, a named pipe) is written as is."""
    if path.exists() and not path.is_file():
        with open(path, "wb") as raw, _compressed(path, raw) as out:
            yield out
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as raw, _compressed(path, raw) as out:
            yield out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _compressed(path: Path, raw: BinaryIO) -> Iterator[BinaryIO]:
    """``raw`` through gzip for a name ending ``.gz``, zstd for ``.zst`` (in any case), as
    is otherwise."""
    name = path.name.lower()
    if name.endswith(".gz"):
        # mtime=0 and no file name: the same capture gives the same bytes
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6,
                           mtime=0) as gz:
            yield gz
    elif name.endswith(".zst"):
        import zstandard

        with zstandard.ZstdCompressor(level=10).stream_writer(raw, closefd=False) as z:
            yield z
    else:
        yield raw


def write(path: str | Path, text: str) -> None:
    """Write a rendered capture (see :func:`_open` for compression)."""
    with _open(Path(path)) as out:
        out.write(text.encode("ascii"))


def write_capture(path: str | Path, result: SimResult, header: dict,
                  drain_ns: int = DRAIN_NS) -> None:
    """Render and write a capture piece by piece (memory stays bounded for large runs)."""
    with _open(Path(path)) as out:
        for piece in render_pieces(result, header, drain_ns):
            out.write(piece.encode("ascii"))
