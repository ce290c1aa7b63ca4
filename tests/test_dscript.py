"""The capture script pvtrace.d and the `pvtrace dscript` command.

There is no DTrace here, so the script is checked as text: every printf that emits a record
must print exactly the 10 fields of SPEC section 1, and the lines it prints, filled with sample
values, must be what `pvtrace ingest` recognizes and parses without a malformed line. The
clause structure is checked against the rule that makes `dtrace -Z` work: a static pmap.c
helper that may be inlined (and then has no fbt probe) never shares a clause with another
function.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pvtrace.cli import app, dscript
from pvtrace.ingest.common import Format
from pvtrace.ingest.detect import sniff

SCRIPT = Path(__file__).resolve().parents[1] / "pvtrace" / "dscripts" / "pvtrace.d"

# SPEC section 1, one record, as pvtrace.d prints it (single blanks, lower-case hex).
STRICT_RE = re.compile(
    r"^(?P<ts>\d+) (?P<cpu>\d+) (?P<tid>\d+) (?P<ev>[ARBSPEX]) (?P<cls>\S+) (?P<lock>0x[0-9a-f]+|0)"
    r" (?P<mode>\S+) (?P<ns>\d+) (?P<pa>0x[0-9a-f]+|0) (?P<op>\S+)$"
)

# Public pmap functions (pmap.h KPI, called from vm/): never inlined, their probes always exist.
PUBLIC = {
    "pmap_enter", "pmap_enter_quick", "pmap_enter_object", "pmap_remove_all",
    "pmap_remove_write", "pmap_ts_referenced", "pmap_clear_modify", "pmap_is_modified",
    "pmap_is_referenced", "pmap_page_wired_mappings", "pmap_page_is_mapped",
    "pmap_page_exists_quick", "pmap_remove", "pmap_map_delete", "pmap_remove_pages",
    "pmap_protect", "pmap_copy", "pmap_advise", "pmap_unwire",
}
# Static helpers of sys/amd64/amd64/pmap.c (commit 1f1b2286) whose signatures the script uses.
STATIC = {
    "pmap_remove1", "pmap_page_test_mappings", "pmap_delayed_invl_wait_l",
    "pmap_delayed_invl_wait_u", "pmap_remove_pte", "pmap_remove_pde",
    "pmap_try_insert_pv_entry", "pmap_enter_quick_locked", "pmap_pv_insert_pde",
    "pmap_enter_pde", "pmap_demote_pde_locked", "pmap_pv_demote_pde", "pmap_promote_pde",
    "pmap_pv_promote_pde", "reclaim_pv_chunk", "reclaim_pv_chunk_domain",
}
SAMPLE_OP = "pmap_enter"


# ------------------------------------------------------------------------------- helpers


def _script() -> str:
    return SCRIPT.read_text(encoding="utf-8")


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)


def _split_args(text: str) -> list[str]:
    """Split a printf argument list at its top-level commas."""
    args, depth, cur, quoted = [], 0, [], False
    for i, ch in enumerate(text):
        if quoted:
            cur.append(ch)
            if ch == '"' and text[i - 1] != "\\":
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        args.append("".join(cur).strip())
    return args


def _printfs(text: str) -> list[tuple[str, list[str]]]:
    """Every printf(format, args...) of the script: (format as written, argument texts)."""
    out = []
    for m in re.finditer(r"\bprintf\(", text):
        i, depth, quoted = m.end(), 1, False
        while depth:
            ch = text[i]
            if quoted:
                if ch == '"' and text[i - 1] != "\\":
                    quoted = False
            elif ch == '"':
                quoted = True
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            i += 1
        parts = _split_args(text[m.end():i - 1])
        assert parts[0].startswith('"') and parts[0].endswith('"'), parts[0]
        out.append((parts[0][1:-1], parts[1:]))
    return out


def _record_printfs() -> list[tuple[str, list[str]]]:
    return [(f, a) for f, a in _printfs(_strip_comments(_script())) if not f.startswith("#")]


def _fill(fmt: str, args: list[str]) -> list[str]:
    """All lines a record printf can print with sample values: each %s argument that is a
    choice of string literals (a ternary) is tried with every literal."""
    convs = re.findall(r"%[a-z]", fmt)
    assert len(convs) == len(args), (fmt, args)
    choices: list[list[str]] = []
    for conv, arg in zip(convs, args):
        if conv in ("%u", "%d"):
            choices.append(["1234"])
        elif conv == "%x":
            choices.append(["fffff80001000040"])
        else:
            assert conv == "%s", (conv, fmt)
            literals = re.findall(r'"([^"]*)"', arg)
            choices.append(literals if literals else [SAMPLE_OP])
    lines = []
    for combo in itertools.product(*choices):
        it = iter(combo)
        line = re.sub(r"%[a-z]", lambda _m: next(it), fmt)
        assert line.endswith("\\n"), fmt
        lines.append(line[:-2])
    return lines


def _sample_log() -> str:
    head = [f for f, _ in _printfs(_strip_comments(_script())) if f.startswith("#")]
    lines = [re.sub(r"%[a-z]", "4", f)[:-2] for f in head]
    for fmt, args in _record_printfs():
        lines += _fill(fmt, args)
    return "\n".join(lines) + "\n"


def _clauses(text: str) -> list[tuple[list[str], str, str]]:
    """(probe descriptions, predicate, body) of every clause of the script."""
    text = _strip_comments(text)
    text = re.sub(r"^(?:#pragma|inline |self ).*$", "", text, flags=re.M)
    out, i = [], 0
    pat = re.compile(r"\s*([^{}/]+?)\s*(?:/(.*?)/\s*)?\{", re.S)
    while True:
        m = pat.match(text, i)
        if not m:
            assert not text[i:].strip(), text[i:i + 200]
            return out
        depth, j = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        descs = [d.strip() for d in m.group(1).split(",") if d.strip()]
        out.append((descs, (m.group(2) or "").strip(), text[m.end():j - 1]))
        i = j


# -------------------------------------------------------------------------------- command


def test_command_prints_the_packaged_script():
    result = CliRunner().invoke(app, ["dscript"])
    assert result.exit_code == 0, result.output
    assert result.stdout == _script()


def test_help_says_how_to_run_it():
    result = CliRunner().invoke(app, ["dscript", "--help"])
    assert result.exit_code == 0
    assert "dtrace -Z" in result.output
    assert "pvtrace ingest" in result.output


def test_output_file_and_duration(tmp_path):
    out = tmp_path / "pvtrace.d"
    result = CliRunner().invoke(app, ["dscript", "--output", str(out), "--duration", "30"])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert text.startswith(_script())
    assert re.search(r"^tick-30s\n\{\n\texit\(0\);\n\}\n$", text[len(_script()):], re.M)
    assert len(_clauses(text)) == len(_clauses(_script())) + 1


def test_duration_must_be_positive_and_at_most_a_week(monkeypatch, capsys):
    import sys

    from pvtrace.cli import run

    for bad in ("0", str(7 * 24 * 3600 + 1), "99999999999999999999999"):
        monkeypatch.setattr(sys, "argv", ["pvtrace", "dscript", "--duration", bad])
        with pytest.raises(SystemExit) as exit_:
            run()
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("pvtrace: "), (bad, err)
        assert err.count("\n") == 1 and "Traceback" not in err, bad


def test_output_dash_is_stdout_and_the_hint_quotes_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["dscript", "-o", "-"])
    assert result.exit_code == 0 and result.stdout == _script()
    assert not (tmp_path / "-").exists()
    result = CliRunner().invoke(app, ["dscript", "-o", "sub dir.d"])
    assert result.exit_code == 0 and (tmp_path / "sub dir.d").read_text() == _script()
    # the path as given, quoted for the shell (it said "-s sub dir.d", or only the base name)
    assert "run it with dtrace -Z -s 'sub dir.d'" in result.stderr


@pytest.mark.parametrize("output, message", [("", "--output is empty"),
                                             ("x.d/", "names a directory")])
def test_an_empty_or_directory_output_is_refused(tmp_path, monkeypatch, output, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["dscript", "-o", output])
    assert result.exit_code != 0 and message in str(result.exception)
    assert list(tmp_path.iterdir()) == []


def test_output_overwrites_an_old_script_but_nothing_else_without_force(tmp_path,
                                                                          monkeypatch):
    """`pvtrace dscript -o capture.log`, meant as `> capture.log`, must not destroy a
    capture; writing the script over an older pvtrace.d (or an empty file) is fine."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pvtrace.d").write_text(_script().replace("pmap_enter", "pmap_old"))
    (tmp_path / "empty.d").write_text("")
    (tmp_path / "capture.log").write_text("# pvtrace-log v1\n1 0 5 E - 0 - 0 0 op\n")
    assert _script().encode().startswith(dscript.SIGNATURE)
    for name in ("pvtrace.d", "empty.d"):
        result = CliRunner().invoke(app, ["dscript", "-o", name])
        assert result.exit_code == 0 and (tmp_path / name).read_text() == _script(), name
    result = CliRunner().invoke(app, ["dscript", "-o", "capture.log"])
    assert result.exit_code != 0
    assert "is not a pvtrace.d script: not overwritten" in str(result.exception)
    assert (tmp_path / "capture.log").read_text().startswith("# pvtrace-log v1")
    result = CliRunner().invoke(app, ["dscript", "-o", "capture.log", "--force"])
    assert result.exit_code == 0 and (tmp_path / "capture.log").read_text() == _script()


def test_output_to_a_fifo_is_written_not_read(tmp_path):
    """Only a regular file is checked before it is overwritten: reading a FIFO (or a
    terminal, as /dev/stdout) to check it would block."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got, results = [], []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    writer = threading.Thread(target=lambda: results.append(
        CliRunner().invoke(app, ["dscript", "-o", str(fifo)])), daemon=True)
    reader.start()
    writer.start()
    writer.join(timeout=30)     # a check that read the FIFO would block here for good
    reader.join(timeout=30)
    assert results and results[0].exit_code == 0 and got == [_script()]


def test_unwritable_output_is_a_user_error(tmp_path):
    result = CliRunner().invoke(app, ["dscript", "-o", str(tmp_path / "no" / "such" / "x.d")])
    assert result.exit_code != 0
    assert "cannot write" in str(result.exception)


# ---------------------------------------------------------------------------- the records


def test_every_record_printf_has_ten_fields():
    records = _record_printfs()
    assert len(records) > 20
    for fmt, args in records:
        assert fmt.endswith("\\n") and "\\n" not in fmt[:-2], fmt
        fields = fmt[:-2].split(" ")
        assert len(fields) == 10, fmt
        assert all(fields), f"double blank in {fmt!r}"
        assert fields[:3] == ["%u", "%d", "%d"], fmt
        assert args[:3] == ["timestamp", "cpu", "tid"], args


def test_filled_records_match_the_spec_grammar():
    for fmt, args in _record_printfs():
        for line in _fill(fmt, args):
            m = STRICT_RE.match(line)
            assert m, line
            ev, cls, mode, ns, lock = m["ev"], m["cls"], m["mode"], m["ns"], m["lock"]
            if ev in "ARBS":
                assert cls in ("pv", "pvc", "pmap") and lock.startswith("0x"), line
                assert mode in ("w", "r"), line
                if ev in "AR":
                    assert ns == "0", line
            elif ev == "P":
                assert (cls, lock, mode, ns) == ("-", "0", mode, "0") and mode in ("4k", "2m")
            else:
                assert (cls, lock, mode, ns) == ("-", "0", "-", "0"), line


def test_all_events_and_classes_appear():
    lines = _sample_log().splitlines()
    recs = [STRICT_RE.match(x) for x in lines if not x.startswith("#")]
    assert {m["ev"] for m in recs} == set("ARBSPEX")
    assert {m["cls"] for m in recs if m["ev"] in "ARBS"} == {"pv", "pvc", "pmap"}
    assert {(m["ev"], m["mode"]) for m in recs if m["ev"] == "P"} == {("P", "4k"), ("P", "2m")}
    # pv locks are rw locks: both modes; mutexes are always w.
    assert {m["mode"] for m in recs if m["cls"] == "pv"} == {"w", "r"}
    assert {m["mode"] for m in recs if m["cls"] in ("pvc", "pmap")} == {"w"}


def test_lock_mode_and_ns_come_from_the_right_lockstat_arguments():
    for fmt, args in _record_printfs():
        ev = fmt.split(" ")[3]
        if ev in "AR" and " pv " in fmt:
            assert args[4] == 'arg1 == 0 ? "w" : "r"', args     # LOCKSTAT_WRITER == 0
        if ev in "BS" and " pv " in fmt:
            assert args[4] == 'arg2 == 0 ? "w" : "r"', args     # mode the waiter wanted
            assert args[5] == "arg1", args                       # ns blocked / spun
        if ev in "BS" and (" pvc " in fmt or " pmap " in fmt):
            assert args[4] == "arg1", args
        if ev in "ARBS":
            assert args[3] == "arg0", args                       # the lock address
            assert args[-2:] == ["self->pa", "opname[self->cur]"], args


def test_header():
    text = _strip_comments(_script())
    heads = [f for f, _ in _printfs(text) if f.startswith("#")]
    assert heads[0] == "# pvtrace-log v1\\n"
    for key in ("ncpu", "ndomains", "timestamp0", "walltimestamp0", "kernel"):
        assert any(h.startswith(f"# {key}=") for h in heads), key
    assert 'printf("# ncpu=%d\\n", `mp_ncpus);' in text
    assert 'printf("# ndomains=%d\\n", `vm_ndomains);' in text


def test_sniffed_as_a_pvtrace_log():
    assert sniff(_sample_log(), "capture.log") is Format.PVLOG
    first_record = next(x for x in _sample_log().splitlines() if not x.startswith("#"))
    assert sniff(first_record + "\n", "capture.log") is Format.PVLOG


def test_ingest_parses_the_sample_without_malformed_lines(tmp_path):
    pvlog = pytest.importorskip("pvtrace.ingest.pvlog")
    log = tmp_path / "capture.log"
    text = _sample_log()
    log.write_text(text, encoding="utf-8")
    parsed = pvlog.parse(log, 0, "capture.log")
    assert parsed.malformed == 0, [p.one_line() for p in parsed.problems]
    assert parsed.records == sum(1 for x in text.splitlines() if not x.startswith("#"))


# ------------------------------------------------------------------------------ structure


def test_clause_structure_suits_dtrace_Z():
    clauses = _clauses(_script())
    funcs_seen = set()
    for descs, _pred, body in clauses:
        funcs = []
        for d in descs:
            if d.startswith("fbt::"):
                func, kind = d[len("fbt::"):].split(":")
                assert kind in ("entry", "return"), d
                funcs.append(func)
            else:
                assert d in ("BEGIN", "END") or d.startswith("lockstat:::"), d
        funcs_seen.update(funcs)
        # A probe description that matches nothing is only tolerated on its own.
        if len(funcs) > 1:
            assert set(funcs) <= PUBLIC, funcs
        assert "stack(" not in body and "@" not in body, body
    assert funcs_seen == PUBLIC | STATIC


def test_lockstat_clauses_filter_by_lock_name():
    names = {"pv": "pmap pv list", "pvc": "pmap pv chunk list", "pmap": "pmap"}
    n = 0
    for descs, pred, body in _clauses(_script()):
        if not descs[0].startswith("lockstat:::") or "printf" not in body:
            continue
        fmt = _printfs(body)[0][0]
        if fmt.split(" ")[3] == "X":      # the X closing an operation at its PMAP_UNLOCK
            assert pred == "self->opmap != 0 && arg0 == self->opmap"
            continue
        cls = fmt.split(" ")[4]
        assert pred == f'stringof(args[0]->lock_object.lo_name) == "{names[cls]}"', pred
        kind = "rw" if cls == "pv" else "adaptive"
        assert descs[0].startswith(f"lockstat:::{kind}-")
        n += 1
    assert n == 12


def test_every_operation_has_a_name():
    text = _strip_comments(_script())
    ids = dict(re.findall(r"^inline int (OP_\w+) = (\d+);", text, re.M))
    named = set(re.findall(r"opname\[(OP_\w+)\] = \"(\w+)\";", text))
    assert {k for k, _ in named} == set(ids)
    assert len(set(ids.values())) == len(ids)
    assert 'opname[0] = "-";' in text
    names = {v for _, v in named}
    assert PUBLIC <= names
    for key, value in re.findall(r'opid\["(\w+)"\] = (OP_\w+);', text):
        assert (value, key) in named
