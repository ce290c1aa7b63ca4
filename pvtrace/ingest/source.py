"""Open one ingest input as a plain-text file on disk, whatever the user gave.

Parsers read a *path* (polars' native CSV reader is the fast way through millions of lines), so
this module turns every input into one:

- a plain file is used in place;
- a gzip (magic ``1f 8b``) or zstd (magic ``28 b5 2f fd``, or a skippable frame's, as pzstd
  writes) file, recognised by its first bytes and never by its name, is stream-decompressed
  into a temporary file, chunk by chunk;
- ``-`` (standard input), compressed or not, is copied into a temporary file the same way.

Problems the user must fix (missing file, a directory, no permission, empty input, binary data,
a corrupt compressed stream) raise :class:`~pvtrace.errors.PvtraceError` with the input's name.

A compressed stream that simply stops early (the capture or the copy was interrupted) is not an
error: everything decoded up to that point is kept, and :attr:`Source.truncated` says so; the
ingest reports it as a ``cut_off`` problem, and the event-log parser treats the half line at
the end as a cut-off record, like an uncompressed log whose writer was killed.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from pvtrace import progress
from pvtrace.errors import PvtraceError
from pvtrace.ingest.detect import SNIFF_BYTES, looks_binary

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20
STDIN = "-"
_NON_TEXT = re.compile("[\ufffd\x01-\x08\x0e-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Source:
    name: str                 # as the user gave it ("-" is shown as "<stdin>")
    path: Path                # a plain-text file to parse
    compression: str | None   # "gzip", "zstd" or None
    truncated: bool           # the compressed stream ended early; what was decoded is kept
    size: int                 # bytes of plain text
    trailing: int = 0         # bytes after the last compressed member, not one (ignored)

    def head(self) -> str:
        """64 KiB from the first line that is not blank or a ``dtrace:`` line, decoded
        (invalid UTF-8 replaced), for format detection. A log taken with ``2>&1`` can start
        with pages of drop messages (``cat capture.err capture.log``): the first 64 KiB alone
        held nothing to recognise."""
        with open(self.path, "rb") as f:
            at = 0
            for line in iter(lambda: f.readline(4096), b""):
                if line.strip() and not line.startswith(b"dtrace:"):
                    break
                at = f.tell()
            else:
                at = 0      # only dtrace lines (or nothing): show them as they are
            f.seek(at)
            return f.read(SNIFF_BYTES).decode("utf-8", errors="replace")


@contextmanager
def open_source(arg: str, tmpdir: Path) -> Iterator[Source]:
    """Yield ``arg`` (a path or ``-``) as a :class:`Source`; temporary files live in ``tmpdir``."""
    name = "<stdin>" if arg == STDIN else arg
    if arg == STDIN:
        if sys.stdin is None or sys.stdin.isatty():
            what = "closed" if sys.stdin is None else "a terminal"
            raise PvtraceError(f"standard input is {what}; pipe a capture into it "
                               "(e.g. zcat x.log.gz | pvtrace ingest - -o DIR)", path=name)
        stream: BinaryIO = sys.stdin.buffer
        yield _decompress_to(stream, name, tmpdir, copy_plain=True)
        return
    path = Path(arg)
    if not path.exists():
        raise PvtraceError("no such file", path=name)
    if path.is_dir():
        raise PvtraceError("is a directory, not a capture file", path=name)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise PvtraceError(f"cannot open: {exc.strerror or exc}", path=name) from None
    with f:
        # A named pipe or a process substitution (`ingest <(ssh box cat capture.log)`) has no
        # size and can be read once: copy it, as standard input is.
        yield _decompress_to(f, name, tmpdir, copy_plain=not path.is_file(), path=path)


def _decompress_to(stream: BinaryIO, name: str, tmpdir: Path, *, copy_plain: bool,
                   path: Path | None = None) -> Source:
    try:
        magic = _peek(stream, 4)
    except OSError as exc:
        raise PvtraceError(f"cannot read: {exc.strerror or exc}", path=name) from None
    compression = ("gzip" if magic.startswith(GZIP_MAGIC)
                   else "zstd" if _is_zstd(magic) else None)
    if compression is None and not copy_plain:
        assert path is not None
        source = Source(name, path, None, False, path.stat().st_size)
    else:
        progress.stage(f"{'decompressing' if compression else 'reading'} {name}",
                       path.stat().st_size if path is not None and path.is_file() else None)
        out = Path(tmpdir) / f"input-{len(os.listdir(tmpdir))}.txt"
        if compression is None:
            # Look before copying a stream of unknown length: /dev/zero would fill the disk.
            try:
                magic += _peek(stream, SNIFF_BYTES - len(magic))
            except OSError as exc:
                raise PvtraceError(f"cannot read: {exc.strerror or exc}", path=name) from None
            if looks_binary(magic):
                raise PvtraceError("binary data, not a text capture (gzip and zstd are read "
                                   "transparently; other formats are not)", path=name)
        # unbuffered: every write error is raised by a write below, none by the close
        with open(out, "wb", buffering=0) as file:
            sink = _Sink(file)
            try:
                if compression is None:
                    sink.write(magic)
                    shutil.copyfileobj(stream, sink, CHUNK)
                    truncated, trailing = False, 0
                elif compression == "gzip":
                    truncated, trailing = _gunzip(stream, sink, magic, name)
                else:
                    truncated, trailing = _unzstd(stream, sink, magic, name)
            except _WriteError as exc:
                # A full disk is not a damaged input: say where the copy was going.
                raise PvtraceError(f"cannot write its {'decompressed ' if compression else ''}"
                                   f"copy in {tmpdir} (scratch space next to the output "
                                   f"bundle): {exc.args[0].strerror or exc.args[0]}",
                                   path=name) from None
            except OSError as exc:
                raise PvtraceError(f"cannot read: {exc.strerror or exc}", path=name) from None
        source = Source(name, out, compression, truncated, out.stat().st_size, trailing)
    _check_text(source)
    return source


class _WriteError(Exception):
    """An OSError writing the scratch copy (args[0]), told apart from one reading the input."""


class _Sink:
    """The scratch copy's file, whose write errors are :class:`_WriteError`."""

    def __init__(self, file: BinaryIO):
        self._file = file

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        try:
            while view:             # a raw write may take part of it (a disk filling up)
                view = view[self._file.write(view):]
        except OSError as exc:
            raise _WriteError(exc) from None
        return len(data)


def _is_zstd(magic: bytes) -> bool:
    """A zstd frame, or a skippable frame (magic 0x184D2A50-5F) before one, as pzstd writes
    first (its frame sizes) and the decoder passes over."""
    return magic.startswith(ZSTD_MAGIC) or (
        len(magic) >= 4 and 0x50 <= magic[0] <= 0x5F and magic[1:4] == b"\x2a\x4d\x18")


def _peek(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _gunzip(stream: BinaryIO, sink: _Sink, first: bytes, name: str) -> tuple[bool, int]:
    """Decompress (possibly multi-member) gzip: see :func:`_inflate`."""
    return _inflate(stream, sink, first, name, lambda: zlib.decompressobj(wbits=31),
                    zlib.error, "gzip", lambda head: head.startswith(GZIP_MAGIC),
                    padding=b"\x00")


def _unzstd(stream: BinaryIO, sink: _Sink, first: bytes, name: str) -> tuple[bool, int]:
    """Decompress (possibly multi-frame) zstd: see :func:`_inflate`."""
    dctx = zstandard.ZstdDecompressor()
    return _inflate(stream, sink, first, name, dctx.decompressobj, zstandard.ZstdError, "zstd",
                    _is_zstd)


def _inflate(stream: BinaryIO, sink: _Sink, first: bytes, name: str, new_decoder,
             errors: type[Exception], label: str, is_member, padding: bytes = b""
             ) -> tuple[bool, int]:
    """Stream ``stream`` through decoders from ``new_decoder`` into ``sink``, one decoder per
    member/frame. Returns whether the input ends inside a member (a truncated file), and how
    many bytes after the last member are not a member (``is_member`` says from the first 4
    bytes): trailing garbage, which gzip -d also ignores with a warning."""
    dec = new_decoder()
    pending = first
    started = False
    try:
        while True:
            data = pending or stream.read(CHUNK)
            pending = b""
            progress.advance(len(data))
            if not data:
                return started and not dec.eof, 0
            while data:
                if not started:
                    while len(data) < 4 and (more := stream.read(CHUNK)):
                        data += more
                    if not is_member(data[:4]):
                        return False, len(data) + _drain(stream)
                started = True
                sink.write(dec.decompress(data))
                if not dec.eof:
                    break
                # What follows the member: the next member, or padding after the last one.
                data = dec.unused_data.lstrip(padding) if padding else dec.unused_data
                dec = new_decoder()
                started = False
    except errors as exc:
        raise PvtraceError(f"corrupt {label} data: {exc}", path=name) from None


def _drain(stream: BinaryIO) -> int:
    """Bytes left in ``stream``, read to its end."""
    n = 0
    while more := stream.read(CHUNK):
        n += len(more)
    return n


def _check_text(source: Source) -> None:
    """Refuse empty inputs and binary data before any parser sees them."""
    what = f"{source.compression}-compressed input" if source.compression else "input"
    if source.size == 0:
        cut = (f" ({source.compression} stream ends before any text: file truncated?)"
               if source.truncated else "")
        raise PvtraceError(f"empty {what}: nothing to ingest{cut}", path=source.name)
    head = source.head()
    if source.compression is not None:
        with open(source.path, "rb") as f:
            inner = f.read(4)
        if inner.startswith(GZIP_MAGIC) or _is_zstd(inner):
            raise PvtraceError(f"compressed twice: the {source.compression} data holds "
                               f"{'gzip' if inner.startswith(GZIP_MAGIC) else 'zstd'} data, "
                               "not text; decompress it once first", path=source.name)
    if looks_binary(head):
        raise PvtraceError("binary data, not a text capture (gzip and zstd are read "
                           "transparently; other formats are not)", path=source.name)
    if "\r" in head and "\n" not in head.rstrip("\n") and len(head) > 200:
        # One line of 200 bytes and more, broken only by carriage returns: classic Mac line
        # ends, which no reader here splits on (its records would be one malformed line).
        raise PvtraceError("lines end in bare carriage returns, not newlines: convert them "
                           "first, e.g. tr '\\r' '\\n' < in > out", path=source.name)
    odd = len(_NON_TEXT.findall(head))
    if odd > len(head) // 10:
        raise PvtraceError("binary data, not a text capture (mostly non-text bytes)",
                           path=source.name)
