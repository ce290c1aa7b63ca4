"""Broken captures: whatever the bytes, ingest and replay end in a result or one PvtraceError.

Seeds are valid captures of each format; hypothesis damages them (bytes replaced, inserted or
deleted, tokens or numbers swapped for hostile ones, lines duplicated, the file cut short,
gzip on top) the way disks, copies and interrupted captures do.

In ``make test`` the examples are few and fixed (derandomized: CI stays reproducible). For a
fuzzing campaign, ``PVTRACE_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py`` draws that many
random ones per seed.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvtrace.errors import PvtraceError
from pvtrace.ingest import run_ingest
from pvtrace.replay.api import replay_trace
from spec_example import SPEC_LOG

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [
    SPEC_LOG.encode(),
    b"".join(gzip.decompress(sorted((ROOT / "sample_traces").glob("*.log.gz"))[0].read_bytes())
             .splitlines(keepends=True)[:200]),
    (ROOT / "tests/data/lockstat/freebsd_manpage_H_D10.txt").read_bytes()[:6000],
    (ROOT / "tests/data/lockstat/freebsd_manpage_sleep5.txt").read_bytes()[:6000],
    (ROOT / "tests/data/lockprof/pv_stats.txt").read_bytes()[:6000],
]
HOSTILE = [b"", b" ", b"\t", b"\r\n", b"\n\n", b"0", b"-1", b"0x", b"-", b"#", b"dtrace: ",
           b"99999999999999999999999", b"18446744073709551616", b"0xffffffffffffffff",
           b"\xff\xfe", b"\x00", b"A", b"R", b"B", b"P", b"2m", b"r", b"pv", b"nan", b"1e5"]

edits = st.one_of(
    st.tuples(st.just("replace"), st.integers(0), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("insert"), st.integers(0), st.sampled_from(HOSTILE)),
    st.tuples(st.just("delete"), st.integers(0), st.integers(1, 40)),
    st.tuples(st.just("token"), st.integers(0), st.sampled_from(HOSTILE)),
    st.tuples(st.just("number"), st.integers(0), st.sampled_from(HOSTILE[5:14])),
    st.tuples(st.just("dup-line"), st.integers(0), st.integers(0)),
    st.tuples(st.just("cut"), st.integers(0), st.just(0)),
)


def damaged(seed: bytes, changes, gz: bool) -> bytes:
    b = bytearray(seed)
    for kind, at, arg in changes:
        i = at % (len(b) + 1)
        if kind == "replace":
            b[i:i + len(arg)] = arg
        elif kind == "insert":
            b[i:i] = arg
        elif kind == "delete":
            del b[i:i + arg]
        elif kind == "token":
            tokens = bytes(b).split(b" ")
            tokens[at % len(tokens)] = arg
            b = bytearray(b" ".join(tokens))
        elif kind == "number":      # one of the numbers in the text
            spans = [m.span() for m in re.finditer(rb"\d+", b)]
            if spans:
                lo, hi = spans[at % len(spans)]
                b[lo:hi] = arg
        elif kind == "dup-line":
            lines = bytes(b).split(b"\n")
            lines.insert(arg % (len(lines) + 1), lines[at % len(lines)])
            b = bytearray(b"\n".join(lines))
        else:
            b = b[:i]
    return gzip.compress(bytes(b)) if gz else bytes(b)


@pytest.mark.parametrize("seed", range(len(SEEDS)))
@settings(max_examples=int(os.environ.get("PVTRACE_FUZZ_EXAMPLES", 15)),
          derandomize="PVTRACE_FUZZ_EXAMPLES" not in os.environ, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(changes=st.lists(edits, min_size=1, max_size=5), gz=st.booleans())
def test_damaged_captures_never_crash(tmp_path, seed, changes, gz):
    path = tmp_path / "capture.log"
    path.write_bytes(damaged(SEEDS[seed], changes, gz))
    out = tmp_path / "bundle"
    try:
        run_ingest([str(path)], str(out), max_bad=1000, force=True)
    except PvtraceError:
        return
    try:
        replay_trace(str(out), ["stock", "obm", "obm-rw"])
    except PvtraceError:
        pass
