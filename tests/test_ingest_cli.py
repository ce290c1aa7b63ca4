"""``pvtrace ingest`` as users run it: the real command in a subprocess, on real files."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile

import polars as pl
import pytest
from typer.testing import CliRunner

from pvtrace.cli import app
from spec_example import SPEC_LOG


def pvtrace(*args: str, input: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pvtrace", *args], input=input,
                          capture_output=True, cwd=cwd, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("pvtrace: "), err
    for fragment in fragments:
        assert fragment in err, err


def test_summary(tmp_path):
    log = tmp_path / "spec.log"
    log.write_text(SPEC_LOG)
    proc = pvtrace("ingest", str(log), "-o", str(tmp_path / "b"))
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "records: 6   threads: 2   CPUs: 2" in out
    assert "time span: 1000 .. 16000 ns (15.000 µs)" in out
    assert "events: A 2, R 2, B 1, E 1" in out
    assert "lock classes: pv 5, - 1" in out
    assert "ops: pmap_enter 6" in out
    assert "layout: unknown (detected:" in out
    assert "malformed" not in out and "drops" not in out
    assert pl.read_parquet(tmp_path / "b" / "events.parquet").height == 6


def test_drops_and_problems_in_summary(tmp_path):
    log = tmp_path / "d.log"
    log.write_text(SPEC_LOG.replace("# ndomains=1\n", "# ndomains=1\nnot a record\n")
                   + "dtrace: 138 drops on CPU 3\n17000 1 102 R pv 0x")
    proc = pvtrace("ingest", str(log), "-o", str(tmp_path / "b"))
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "138 records dropped on CPU 3: waits near that time may be understated" in out
    assert "skipped: 1 malformed, 1 cut-off" in out
    assert f"{log}:4: malformed: expected 10 fields, got 3" in out
    assert f"{log}:12: cut_off: last line has no newline" in out


@pytest.mark.parametrize("compress", [False, True])
def test_stdin(tmp_path, compress):
    data = SPEC_LOG.encode()
    proc = pvtrace("ingest", "-", "-o", str(tmp_path / "b"),
                   input=gzip.compress(data) if compress else data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "<stdin>: pvlog" in proc.stdout.decode()
    events = pl.read_parquet(tmp_path / "b" / "events.parquet")
    assert events["ts"].to_list() == [1000, 1000, 11000, 11000, 11000, 16000]
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert meta["inputs"][0]["path"] == "<stdin>"
    assert meta["inputs"][0]["compression"] == ("gzip" if compress else None)


def test_too_many_malformed_lines(tmp_path):
    log = tmp_path / "bad.log"
    log.write_text(SPEC_LOG + "".join(f"{i} 0 1 Q - 0 - 0 0 op\n" for i in range(3)))
    proc = pvtrace("ingest", str(log), "-o", str(tmp_path / "b"), "--max-bad", "2")
    assert_one_line_error(proc, "3 malformed lines, more than --max-bad 2",
                          f"{log}:10: unknown event letter Q", "raise --max-bad")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("kind", ["missing", "directory", "binary", "empty", "empty-gzip"])
def test_input_errors(tmp_path, kind):
    path = tmp_path / "input"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 64)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "empty-gzip":
        path.write_bytes(gzip.compress(b""))
    proc = pvtrace("ingest", str(path), "-o", str(tmp_path / "b"))
    expected = {"missing": "no such file", "directory": "is a directory",
                "binary": "binary data", "empty": "empty input",
                "empty-gzip": "empty gzip-compressed input"}[kind]
    assert_one_line_error(proc, f"pvtrace: {path}: {expected}")


def test_existing_bundle_needs_force(tmp_path):
    log = tmp_path / "spec.log"
    log.write_text(SPEC_LOG)
    assert pvtrace("ingest", str(log), "-o", str(tmp_path / "b"), "--quiet").returncode == 0
    assert_one_line_error(pvtrace("ingest", str(log), "-o", str(tmp_path / "b")),
                          "bundle exists; pass --force")
    proc = pvtrace("ingest", str(log), "-o", str(tmp_path / "b"), "--force", "--quiet")
    assert proc.returncode == 0 and proc.stdout == b""


def test_force_never_deletes_what_pvtrace_did_not_write(tmp_path):
    """--force replaces a bundle directory whole: a capture copied in beside the bundle (here
    the very input of the command) or notes there would go with it, so it refuses, and the
    old bundle and the files stay. The replay cache is the bundle's own."""
    log = tmp_path / "spec.log"
    log.write_text(SPEC_LOG)
    out = tmp_path / "b"
    assert pvtrace("ingest", str(log), "-o", str(out), "--quiet").returncode == 0
    assert pvtrace("replay", str(out), "--json").returncode == 0       # writes out/cache
    (out / "capture.log").write_text(SPEC_LOG)
    (out / "notes").mkdir()
    assert_one_line_error(pvtrace("ingest", str(out / "capture.log"), "-o", str(out),
                                  "--force"),
                          "the bundle directory also holds capture.log, notes, which --force "
                          "would delete")
    assert sorted(p.name for p in out.iterdir()) == [
        "cache", "capture.log", "diagnostics.parquet", "events.parquet", "metadata.json",
        "notes"]
    (out / "capture.log").unlink()
    (out / "notes").rmdir()
    assert pvtrace("ingest", str(log), "-o", str(out), "--force", "--quiet").returncode == 0


def test_output_where_nothing_can_be_written(tmp_path):
    """Scratch space and the bundle go beside -o: a place that cannot hold them is one line."""
    log = tmp_path / "spec.log"
    log.write_text(SPEC_LOG)
    (tmp_path / "file").write_text("")
    for out in ("/proc/pvtrace-bundle", str(tmp_path / "file" / "b")):
        assert_one_line_error(pvtrace("ingest", str(log), "-o", out), out, "cannot write there")


def test_bad_layout_option(tmp_path):
    log = tmp_path / "spec.log"
    log.write_text(SPEC_LOG)
    assert_one_line_error(pvtrace("ingest", str(log), "-o", str(tmp_path / "b"),
                                  "--layout", "hash:0"), "bad layout 'hash:0'")


def test_usage_errors_and_help(tmp_path):
    proc = pvtrace()
    assert proc.returncode == 2 and b"Usage:" in proc.stdout + proc.stderr
    assert b"ingest" in proc.stdout + proc.stderr
    proc = pvtrace("ingest", "--no-such-option")
    assert proc.returncode == 2 and b"No such option" in proc.stderr
    assert b"Traceback" not in proc.stderr
    proc = pvtrace("ingest", "x.log")
    assert proc.returncode == 2 and b"Missing option" in proc.stderr
    assert pvtrace("ingest", "--help").returncode == 0


@pytest.mark.parametrize("command", ["ingest", "replay", "compare", "models", "synth",
                                     "dscript", None])
def test_help_shows_no_value_after_a_flag(command):
    """Flags take no value, and their help must not suggest one: typer 0.29 prints
    ``--json <bool>`` (hence the pin in pyproject.toml)."""
    result = CliRunner().invoke(app, [command, "--help"] if command else ["--help"],
                                env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output and "<bool>" not in result.output


def test_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    import pvtrace.cli as cli
    import pvtrace.ingest

    def exhausted(*args, **kwargs):
        raise MemoryError
    # The command imports run_ingest when it runs: replace it where it is imported from.
    monkeypatch.setattr(pvtrace.ingest, "run_ingest", exhausted)
    monkeypatch.setattr(sys, "argv", ["pvtrace", "ingest", "x.log", "-o", str(tmp_path / "b")])
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("pvtrace: out of memory") and "shorter window" in err


def test_layout_override_in_summary(tmp_path):
    log = tmp_path / "spec.log"
    log.write_text(SPEC_LOG)
    result = CliRunner().invoke(app, ["ingest", str(log), "-o", str(tmp_path / "b"),
                                      "--layout", "hash:256"])
    assert result.exit_code == 0, result.output
    assert "layout: hash:256 (set by --layout; detected unknown:" in result.output


def test_numba_cache_goes_to_tmp_when_nothing_else_is_writable(monkeypatch, tmp_path):
    """A system-wide install run by an account that can write neither beside the package nor
    in its home's cache failed at import with numba's "no locator available" traceback."""
    import pvtrace

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache" / "missing"))
    writable: set[str] = set()
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) in writable)
    expected = os.path.join(tempfile.gettempdir(), f"pvtrace-numba-{os.getuid()}")
    assert pvtrace._numba_cache_dir() == expected
    writable.add(str(tmp_path))            # the nearest existing parent of the user cache
    assert pvtrace._numba_cache_dir() is None
    writable.clear()
    writable.add(os.path.dirname(pvtrace.__file__))   # __pycache__ beside the sources
    assert pvtrace._numba_cache_dir() is None
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere")   # the user's choice stands
    writable.clear()
    assert pvtrace._numba_cache_dir() is None


def test_control_characters_of_a_bad_line_reach_the_terminal_escaped(tmp_path):
    """A colour escape in a damaged line (a build's coloured output mixed into the log) was
    printed raw in the error and the summary, recolouring the terminal."""
    log = tmp_path / "esc.log"
    log.write_text(SPEC_LOG + "\x1b[31mRED\x1b[0m 0 101 E - 0 - 0 0x0 pmap_enter\n")
    proc = pvtrace("ingest", str(log), "-o", str(tmp_path / "b"), "--max-bad", "0")
    assert_one_line_error(proc, "bad ts '\\x1b[31mRED\\x1b[0m'")
    assert b"\x1b" not in proc.stderr
    proc = pvtrace("ingest", str(log), "-o", str(tmp_path / "b"))
    assert proc.returncode == 0 and b"\x1b" not in proc.stdout + proc.stderr
    assert b"malformed: bad ts '\\x1b[31mRED" in proc.stdout


def test_a_capture_compressed_twice_says_so(tmp_path):
    path = tmp_path / "twice.gz"
    path.write_bytes(gzip.compress(gzip.compress(SPEC_LOG.encode())))
    assert_one_line_error(pvtrace("ingest", str(path), "-o", str(tmp_path / "b")),
                          "compressed twice: the gzip data holds gzip data")
