"""Which format is this input? Decided from its first lines, never from the file name.

Signatures, checked line by line over the first 64 KiB; the first line that matches one decides:

- ``# pvtrace-log v1`` or a 10-field record whose 4th field is an event letter -> event log;
- ``debug.lock.prof.stats:`` or the LOCK_PROFILING header (``max wait_max total ...``, or
  ``max total ...`` from kernels before wait_max) -> lockprof;
- a lockstat title (``Adaptive mutex spin: 12 events in 1.003 seconds (...)``), the column
  header (``Count indv cuml rcnt ...``), a ``-D 0`` summary line, ``lockstat: warning:``, or
  ``lockstat -T``'s header (which that parser refuses, saying why) -> lockstat report;
- a line of ``-p`` output (event index, count, lock..., caller, rcnt, and unless ``-b`` total ns)
  -> lockstat -p.
"""

from __future__ import annotations

import re

from pvtrace.errors import PvtraceError
from pvtrace.ingest.common import Format

_SIGNATURES: list[tuple[re.Pattern[str], Format]] = [
    (re.compile(r"^# pvtrace-log v\d+"), Format.PVLOG),
    (re.compile(r"^\s*\d+\s+\d+\s+\d+\s+[ARBSPEX]\s+\S+\s+(0x[0-9a-fA-F]+|0)\s+\S+\s+\d+\s+"
                r"(0x[0-9a-fA-F]+|0)\s+\S+\s*$"), Format.PVLOG),
    (re.compile(r"^debug\.lock\.prof\.stats:"), Format.LOCKPROF),
    (re.compile(r"^\s*max\s+(wait_max\s+)?total\s+wait_total\s+count\s+avg\s+wait_avg"),
     Format.LOCKPROF),
    (re.compile(r"^.+: \d+ events in [0-9.]+ seconds \([0-9.]+ events/sec\)\s*$"),
     Format.LOCKSTAT),
    (re.compile(r"^\s*(Count|ops/s)\s+(indv|genr)\s+cuml\s+rcnt\s+"), Format.LOCKSTAT),
    (re.compile(r"^\s*\d+ (Adaptive mutex|Spin lock|Thread lock|R/W|SX|Profiling interrupt|"
                r"Recursive lock)"), Format.LOCKSTAT),
    (re.compile(r"^lockstat: warning:"), Format.LOCKSTAT),
    # lockstat -T's header: the lockstat parser refuses such output with its own message
    (re.compile(r"^\s*Event\s+Time\s+Owner\s+Lock\s+Caller\s*$"), Format.LOCKSTAT),
    (re.compile(r"^\d+ \d+ .+ \S+ \d+\.\d+( \d+)*( \S+)*\s*$"), Format.LOCKSTAT_PARSABLE),
]

SNIFF_BYTES = 64 * 1024


def looks_binary(head: str | bytes) -> bool:
    """Do these first bytes hold NULs, as binary files do? A stray one is a damaged line of
    a text capture (a disk error), which the parser reports as malformed: refusing the whole
    capture for it would lose every other record."""
    nul = "\x00" if isinstance(head, str) else b"\x00"
    # A run of NULs at the end is the tail of a capture cut by a crash (the file system
    # zero-fills the last blocks): that last line is a cut-off record, the rest is text.
    head = head.rstrip(nul) or head
    return head.count(nul) > max(8, len(head) // 1000)


def sniff(head: str, name: str) -> Format:
    """Return the format of an input whose first bytes (decoded) are ``head``."""
    if looks_binary(head):
        raise PvtraceError("binary data, not a text capture (gzip and zstd are read "
                           "transparently; other formats are not)", path=name)
    for line in head.splitlines()[:2000]:
        if not line.strip() or line.startswith("dtrace:"):
            continue
        for pattern, fmt in _SIGNATURES:
            if pattern.search(line):
                return fmt
    if not head.strip():
        raise PvtraceError("empty input: nothing to ingest", path=name)
    raise PvtraceError("unrecognised input: not a pvtrace event log, lockstat(1) report, "
                       "lockstat -p output or debug.lock.prof.stats dump", path=name)
