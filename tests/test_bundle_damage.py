"""A bundle edited by hand or damaged is one line on stderr naming the file and what is wrong,
exit 2, never a traceback; and what ingest writes where: modes, symbolic links, parents.

The command runs in this process through :func:`pvtrace.cli.run`, the function behind the
``pvtrace`` script (a subprocess per case would take a second and a half each); one case runs
the real command too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import pvtrace.cli as cli
from pvtrace.bundle import check_target, is_bundle, open_bundle, write_bundle
from pvtrace.errors import PvtraceError
from pvtrace.ingest import run_ingest
from spec_example import SPEC_LOG

# Another capture, of 2 records (the SPEC example has 6): tells a replaced bundle apart.
SHORT_LOG = """\
# pvtrace-log v1
1000 0 101 A pv 0xfffff80001000040 w 0 0x200000 pmap_enter
2000 0 101 R pv 0xfffff80001000040 w 0 0x200000 pmap_enter
"""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("damage")
    (where / "spec.log").write_text(SPEC_LOG)
    run_ingest([str(where / "spec.log")], str(where / "b"))
    return where / "b"


@pytest.fixture
def bundle(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the SPEC example's bundle, to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "b"))


def pvtrace(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the command line; (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["pvtrace", *args])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        cli.run()
        status = 0
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def edit_metadata(bundle: Path, change) -> None:
    """Replace metadata.json by ``change(metadata)``: a dict (written as JSON) or the text."""
    file = bundle / "metadata.json"
    new = change(json.loads(file.read_text()))
    file.write_text(new if isinstance(new, str) else json.dumps(new))


DAMAGED = "{b}/metadata.json: damaged bundle metadata: "


@pytest.mark.parametrize("change, message", [
    (lambda m: {**m, "format": "pvtrace-bundle/x"},
     DAMAGED + "format 'pvtrace-bundle/x' is not pvtrace-bundle/MAJOR[.MINOR]"),
    (lambda m: {**m, "format": "pvtrace-bundle/"},
     DAMAGED + "format 'pvtrace-bundle/' is not pvtrace-bundle/MAJOR[.MINOR]"),
    (lambda m: {**m, "format": "pvtrace-bundle/1/2"},
     DAMAGED + "format 'pvtrace-bundle/1/2' is not pvtrace-bundle/MAJOR[.MINOR]"),
    (lambda m: {**m, "format": "pvtrace-bundle/-1"},
     DAMAGED + "format 'pvtrace-bundle/-1' is not pvtrace-bundle/MAJOR[.MINOR]"),
    # int() reads an Arabic-Indic one as 1; a format is ASCII
    (lambda m: {**m, "format": "pvtrace-bundle/\u0661"},
     DAMAGED + "format 'pvtrace-bundle/\u0661' is not pvtrace-bundle/MAJOR[.MINOR]"),
    (lambda m: {**m, "format": ["pvtrace-bundle/1"]},
     "{b}/metadata.json: not a pvtrace bundle metadata file"),
    (lambda m: {**m, "format": "pvtrace-bundle/99999999999999999999"},
     "{b}: bundle format pvtrace-bundle/99999999999999999999 is newer than this pvtrace "
     "(pvtrace-bundle/1); upgrade pvtrace"),
    (lambda m: "[1, 2]",
     "{b}/metadata.json: not a pvtrace bundle metadata file (a JSON list, not an object)"),
    (lambda m: "null",
     "{b}/metadata.json: not a pvtrace bundle metadata file (a JSON null, not an object)"),
    (lambda m: '"pvtrace-bundle/1"',
     "{b}/metadata.json: not a pvtrace bundle metadata file (a JSON string, not an object)"),
    (lambda m: "[" * 100000 + "]" * 100000,
     "{b}/metadata.json: unreadable bundle metadata: nested too deeply"),
    (lambda m: {**m, "layout": 123}, DAMAGED + "'layout' must be a string or an object"),
    (lambda m: {**m, "layout": ["superpage"]}, DAMAGED + "'layout' must be a string or an object"),
    (lambda m: {**m, "layout": {"effective": 256}},
     DAMAGED + "'layout.effective' must be a string"),
    (lambda m: {**m, "layout": {"effective": "superpage", "detected": ["x"]}},
     DAMAGED + "'layout.detected' must be a string"),
    (lambda m: {**m, "drops": [1, 2]}, DAMAGED + "'drops' must be an object"),
    (lambda m: {**m, "drops": {"per_cpu": "x", "total": "y"}},
     DAMAGED + "'drops.per_cpu' must be an object"),
    (lambda m: {**m, "drops": {"per_cpu": {"a": "b"}, "total": 5}},
     DAMAGED + "'drops.per_cpu.a' must be a count (an integer >= 0)"),
    (lambda m: {**m, "drops": {"per_cpu": {"1": -5}}},
     DAMAGED + "'drops.per_cpu.1' must be a count (an integer >= 0)"),
    (lambda m: {**m, "drops": {"per_cpu": {"1": 5}, "total": "many"}},
     DAMAGED + "'drops.total' must be a count (an integer >= 0)"),
    (lambda m: {**m, "drops": {"per_cpu": {}, "total": 0, "dynvar_drops": True}},
     DAMAGED + "'drops.dynvar_drops' must be a count (an integer >= 0)"),
    (lambda m: {**m, "capture": [1, 2]}, DAMAGED + "'capture' must be an object"),
    (lambda m: {**m, "tables": ["events"]}, DAMAGED + "'tables' must be an object of objects"),
    # each of these was a traceback or a message naming no file (a review's findings)
    (lambda m: {**m, "dtrace_messages": 5}, DAMAGED + "'dtrace_messages' must be a list of "
     "strings"),
    (lambda m: {**m, "dtrace_messages": "abc"}, DAMAGED + "'dtrace_messages' must be a list "
     "of strings"),
    (lambda m: {**m, "dtrace_message_lines": -1}, DAMAGED + "'dtrace_message_lines' must be "
     "a count (an integer >= 0)"),
    (lambda m: {**m, "layout": {"effective": "bogus"}}, DAMAGED + "'layout.effective': bad "
     "layout 'bogus': use superpage or hash:N with N from 1 to 16,777,216 (e.g. hash:256)"),
    (lambda m: {**m, "layout": "hash:0"}, DAMAGED + "'layout': bad layout 'hash:0': use "
     "superpage or hash:N with N from 1 to 16,777,216 (e.g. hash:256)"),
])
def test_damaged_metadata_is_one_line(bundle, monkeypatch, capsys, change, message):
    edit_metadata(bundle, change)
    for command in (["replay", str(bundle)], ["compare", str(bundle), "--json"]):
        status, out, err = pvtrace(monkeypatch, capsys, *command)
        assert (status, out, err) == (2, "", f"pvtrace: {message.format(b=bundle)}\n")


@pytest.mark.parametrize("change", [
    lambda m: {**m, "format": "pvtrace-bundle/1.9"},          # a newer minor format
    lambda m: {k: v for k, v in m.items() if k != "layout"},
    lambda m: {**m, "layout": {"effective": None}},
    lambda m: {k: v for k, v in m.items() if k not in ("drops", "capture", "tables")},
    lambda m: {**m, "inputs": 5, "pvtrace_version": 7, "ingested_at": ["x"]},
    lambda m: {**m, "inputs": [1, {"path": 3, "records": "x"}]},
])
def test_metadata_readers_do_without_still_replays(bundle, monkeypatch, capsys, change):
    """Keys may be missing (older bundles lack some) or newer: the replay is the same."""
    status, before, _ = pvtrace(monkeypatch, capsys, "replay", str(bundle), "--json")
    edit_metadata(bundle, change)
    status, after, err = pvtrace(monkeypatch, capsys, "replay", str(bundle), "--json")
    assert (status, err) == (0, "")
    before, after = json.loads(before), json.loads(after)
    assert (after["observed"], after["models"]) == (before["observed"], before["models"])
    assert after["observed"]["wait_ns"] == 9000 and after["models"][0]["makespan_ns"] == 10000
    # the provenance keeps what has the expected type
    assert after["trace"]["inputs"] in (before["trace"]["inputs"], [], [dict.fromkeys(
        ("path", "format", "compression", "records"))])
    assert set(after["trace"]["ingested"]) == {"pvtrace_version", "at"}


def test_valid_metadata_reaches_the_report(bundle, monkeypatch, capsys):
    """What open_bundle accepts is what the report shows: the layout, the drops note."""
    edit_metadata(bundle, lambda m: {**m, "layout": "hash:256",
                                     "drops": {"per_cpu": {"10": 5, "2": 2}, "total": 7,
                                               "dynvar_drops": 4}})
    status, out, err = pvtrace(monkeypatch, capsys, "replay", str(bundle), "--json")
    assert (status, err) == (0, "")
    trace = json.loads(out)["trace"]
    assert (trace["layout"], trace["layout_assumed"], trace["layout_detected"]) == (
        "hash:256", False, "hash:256")
    assert trace["drops"] == {"per_cpu": {"10": 5, "2": 2}, "total": 7, "dynvar_drops": 4}
    status, out, err = pvtrace(monkeypatch, capsys, "replay", str(bundle))
    assert (status, err) == (0, "")
    text = " ".join(out.split())
    assert ("the capture lost 7 records to DTrace drops on CPU(s) 2, 10: waits there may be "
            "understated") in text          # CPUs in numeric order
    assert ("the capture had 4 DTrace dynamic variable drops (raise -x dynvarsize): some "
            "records' pages and operations may be missing") in text


def _set_version(file: Path, version: bytes) -> None:
    table = pq.read_table(file)
    pq.write_table(table.replace_schema_metadata(
        {**table.schema.metadata, b"pvtrace.schema_version": version}), file)


@pytest.mark.parametrize("version, message", [
    (b"abc", "table events has a damaged schema version 'abc' (not MAJOR.MINOR)"),
    (b"\xff", "table events has a damaged schema version '\ufffd' (not MAJOR.MINOR)"),
    (b"2.0", "table events has schema version 2.0, newer than this pvtrace understands "
             "(1.0); upgrade pvtrace to read it"),
])
def test_damaged_table_version_is_one_line(bundle, monkeypatch, capsys, version, message):
    _set_version(bundle / "events.parquet", version)
    status, out, err = pvtrace(monkeypatch, capsys, "replay", str(bundle))
    assert (status, out, err) == (2, "", f"pvtrace: {bundle}/events.parquet: {message}\n")


def test_deleted_events_file_is_named(bundle, monkeypatch, capsys):
    """metadata.json lists an events table, so its absence is damage, not a lockstat-only
    bundle without events (which test_replay_cli covers)."""
    (bundle / "events.parquet").unlink()
    status, out, err = pvtrace(monkeypatch, capsys, "replay", str(bundle))
    assert (status, out, err) == (
        2, "", f"pvtrace: {bundle}/events.parquet: missing from the bundle, though "
               "metadata.json lists the events table; ingest the capture again\n")


@pytest.mark.parametrize("column, change, message", [
    ("ns", lambda c: pc.negate(c), "events column ns holds a negative wait (-9,000 ns)"),
    ("mode", lambda c: pa.array([{"w": "z"}.get(v, v) for v in c.to_pylist()]),
     "events table has unknown modes ['z']"),
])
def test_values_ingest_refuses_are_refused_by_the_replay(bundle, monkeypatch, capsys, column,
                                                         change, message):
    """A damaged events table with a negative wait or an unknown mode replayed without a
    word (the waits shortened, the mode read as '-'), where ingest refuses both."""
    file = bundle / "events.parquet"
    table = pq.read_table(file)
    i = table.schema.get_field_index(column)
    table = table.set_column(i, table.schema.field(i),
                             change(table.column(column)).cast(table.schema.field(i).type))
    pq.write_table(table, file)
    status, out, err = pvtrace(monkeypatch, capsys, "replay", str(bundle), "--no-cache")
    assert (status, out) == (2, "")
    assert err == f"pvtrace: {file}: {message}: not a table pvtrace ingest wrote\n"


def test_real_command_on_a_damaged_bundle(bundle):
    edit_metadata(bundle, lambda m: {**m, "drops": {"per_cpu": "x"}})
    proc = subprocess.run([sys.executable, "-m", "pvtrace", "replay", str(bundle)],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        2, "", f"pvtrace: {bundle}/metadata.json: damaged bundle metadata: 'drops.per_cpu' "
               "must be an object\n")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750), (0o077, 0o700),
                                         (0o002, 0o775)])
def test_bundle_mode_follows_the_umask(tmp_path, umask, mode):
    """Like a directory made with mkdir, not tempfile's 0700: colleagues can read it."""
    (tmp_path / "spec.log").write_text(SPEC_LOG)
    old = os.umask(umask)
    try:
        run_ingest([str(tmp_path / "spec.log")], str(tmp_path / "b"))
        # replacing keeps to the umask too
        run_ingest([str(tmp_path / "spec.log")], str(tmp_path / "b"), force=True)
    finally:
        os.umask(old)
    assert (tmp_path / "b").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b" / "metadata.json").stat().st_mode & 0o777 == mode & 0o666


def _records(bundle: Path) -> int:
    return json.loads((bundle / "metadata.json").read_text())["records"]


def test_force_through_a_symlink_replaces_the_bundle_it_points_to(tmp_path, monkeypatch,
                                                                  capsys):
    """``-o LINK --force`` writes the bundle LINK points to and keeps the link, as ``cp`` or
    a shell's ``>`` would; nothing is left behind."""
    (tmp_path / "spec.log").write_text(SPEC_LOG)
    (tmp_path / "short.log").write_text(SHORT_LOG)
    run_ingest([str(tmp_path / "spec.log")], str(tmp_path / "real"))
    (tmp_path / "link").symlink_to("real")
    status, out, err = pvtrace(monkeypatch, capsys, "ingest", str(tmp_path / "short.log"),
                               "-o", str(tmp_path / "link"))
    assert (status, err) == (2, f"pvtrace: {tmp_path}/link: bundle exists; pass --force to "
                                "replace it\n")
    status, out, err = pvtrace(monkeypatch, capsys, "ingest", str(tmp_path / "short.log"),
                               "-o", str(tmp_path / "link"), "--force", "--quiet")
    assert (status, out, err) == (0, "", "")
    assert os.readlink(tmp_path / "link") == "real"
    assert _records(tmp_path / "real") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real", "short.log",
                                                         "spec.log"]


def test_dangling_symlink_gets_the_bundle_where_it_points(tmp_path):
    (tmp_path / "spec.log").write_text(SPEC_LOG)
    (tmp_path / "link").symlink_to("sub/new")
    run_ingest([str(tmp_path / "spec.log")], str(tmp_path / "link"))
    assert os.readlink(tmp_path / "link") == "sub/new"
    assert _records(tmp_path / "sub" / "new") == 6


def test_output_under_a_file_says_not_a_directory(tmp_path, monkeypatch, capsys):
    """Not mkdir's "File exists", which blames the wrong thing."""
    (tmp_path / "spec.log").write_text(SPEC_LOG)
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile" / "sub", tmp_path / "afile" / "x" / "sub"):
        status, _, err = pvtrace(monkeypatch, capsys, "ingest", str(tmp_path / "spec.log"),
                                 "-o", str(out))
        assert (status, err) == (2, f"pvtrace: {out}: cannot write there: {tmp_path}/afile "
                                    "is not a directory\n")


def test_write_bundle_refuses_a_parent_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(PvtraceError, match="afile is not a directory"):
        write_bundle(tmp_path / "afile" / "b", {}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_path_in_a_directory_that_cannot_be_searched(tmp_path, monkeypatch):
    """stat() of a path under a directory without search permission fails with EACCES,
    which Path.exists() raises (faked: the tests may run as root, who is never refused)."""
    real = Path.stat

    def refused(self, *args, **kwargs):
        if self.parent.name == "private":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, "stat", refused)
    (tmp_path / "private").mkdir()
    out = tmp_path / "private" / "b"
    with pytest.raises(PvtraceError) as err:
        check_target(out)
    assert err.value.one_line() == f"{out}: cannot write there: Permission denied"
    assert not is_bundle(out)
    with pytest.raises(PvtraceError) as err:
        open_bundle(out)
    assert err.value.one_line() == f"{out}: cannot read: Permission denied"
