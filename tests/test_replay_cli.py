"""The replay commands run for real on the SPEC example: JSON contract, golden text, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from pvtrace.cli import app
from pvtrace.report.table import fmt_ns
from spec_example import SPEC_LOG

GOLDEN = Path(__file__).parent / "golden"
ZERO = {"p50": 0, "p90": 0, "p99": 0, "p99.9": 0, "max": 0}


@pytest.fixture()
def spec_log(tmp_path: Path) -> Path:
    p = tmp_path / "spec.log"
    p.write_text(SPEC_LOG)
    return p


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pvtrace", *args], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"})


def test_replay_json_matches_spec_example(spec_log: Path) -> None:
    r = run_cli("replay", str(spec_log), "--model", "obm", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)          # stdout holds the JSON and nothing else
    assert report["schema"] == "pvtrace-replay/1"
    assert report["trace"]["events"] == 6 and report["trace"]["threads"] == 2
    # provenance: what replayed, from which capture, ingested (here, on the fly) by what
    import pvtrace
    assert report["pvtrace_version"] == pvtrace.__version__
    assert report["trace"]["inputs"] == [{"path": str(spec_log), "format": "pvlog",
                                          "compression": None, "records": 6}]
    assert report["trace"]["ingested"]["pvtrace_version"] == pvtrace.__version__
    assert report["trace"]["ingested"]["at"].endswith("+00:00")
    obs = report["observed"]
    assert (obs["acquisitions"], obs["contended"], obs["wait_ns"]) == (2, 1, 9000)
    assert obs["contended_wait_percentiles_ns"] == {"p50": 9000, "p90": 9000, "p99": 9000,
                                                    "p99.9": 9000, "max": 9000}
    (m,) = report["models"]
    assert m["model"] == "obm"
    assert m["params"]["layout"] == "superpage" and m["params"]["spin_limit_ns"] == 0
    assert (m["acquisitions"], m["contended"], m["wait_ns"], m["spin_ns"], m["block_ns"]) == (
        2, 0, 0, 0, 0)
    assert m["false_block"] == {"count": 0, "wait_ns": 0}
    assert m["true_block"]["count"] == 0 and m["sibling_wakeups"] == 0
    assert m["makespan_ns"] == 10000
    assert m["wait_percentiles_ns"] == ZERO and m["contended_wait_percentiles_ns"] == ZERO
    assert m["by_class"]["pv"]["acquisitions"] == 2 and m["by_class"]["pv"]["wait_ns"] == 0


def test_replay_without_stock_compares_with_the_capture(spec_log: Path) -> None:
    """A design is compared with the replayed stock kernel when there is one, else with the
    capture itself (never with itself): the SPEC example waited 9000 ns over a 15000 ns
    makespan; under obm nobody waits and the makespan is 10000 ns."""
    r = run_cli("replay", str(spec_log), "--model", "obm")
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines() if "┃ design" in line)
    assert "wait vs observed" in header and "makespan vs observed" in header
    row = next(line for line in r.stdout.splitlines() if line.startswith("│ obm "))
    assert [cell.strip() for cell in row.split("│")[-3:-1]] == ["-100.0%", "-33.3%"]
    r = run_cli("compare", str(spec_log), "--models", "obm,stock")
    assert "wait vs stock" in r.stdout


def test_compare_json_stock_reproduces_observed(spec_log: Path) -> None:
    r = run_cli("compare", str(spec_log), "--models", "stock,obm", "--json",
                "--spin-limit", "4000")
    assert r.returncode == 0, r.stderr
    stock, obm = json.loads(r.stdout)["models"]
    assert (stock["wait_ns"], stock["spin_ns"], stock["block_ns"]) == (9000, 4000, 5000)
    assert stock["false_block"] == {"count": 1, "wait_ns": 9000}   # pages 0x200000, 0x201000
    assert stock["makespan_ns"] == 15000 and obm["makespan_ns"] == 10000


def test_reports_carry_hdr_histograms(spec_log: Path) -> None:
    from hdrh.histogram import HdrHistogram

    r = run_cli("compare", str(spec_log), "--models", "stock,obm", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    for obj in [report["observed"], *report["models"]]:
        waits = HdrHistogram.decode(obj["histograms"]["wait_ns"])
        holds = HdrHistogram.decode(obj["histograms"]["hold_ns"])
        assert waits.get_total_count() == obj["acquisitions"] == 2
        assert holds.get_total_count() == 2
        # within the histogram's 3 significant digits of the exact maximum
        exact = obj["wait_percentiles_ns"]["max"]
        assert abs(waits.get_max_value() - exact) <= exact / 1000
    stock = report["models"][0]
    assert HdrHistogram.decode(stock["histograms"]["wait_ns"]).get_count_at_value(9000) == 1


def test_compare_in_parallel_gives_the_same_report() -> None:
    sample = Path(__file__).resolve().parents[1] / "sample_traces"
    log = sorted(sample.glob("*.log.gz"))[0]
    one, two = (run_cli("compare", str(log), "--json", "--jobs", j) for j in ("1", "2"))
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert json.loads(one.stdout)["models"] == json.loads(two.stdout)["models"]


def test_compare_text_golden(spec_log: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["compare", str(spec_log)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.output.replace(str(spec_log), "spec.log")
    golden = GOLDEN / "compare_spec.txt"
    if os.environ.get("PVTRACE_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("args, message", [
    (["replay", "{log}", "--model", "nosuch"], "unknown model 'nosuch'"),
    (["replay", "/nonexistent/trace.log"], "no such file"),
    (["replay", "{log}", "--layout", "hash:x"], "bad layout"),
    (["compare", "{log}", "--models", ","], "--models is empty"),
    (["replay", "{log}", "--spin-limit", "-1"], "--spin-limit must be >= 0, not -1"),
    (["replay", "{log}", "--wakeup-ns", "-5"], "--wakeup-ns must be >= 0, not -5"),
    (["replay", "{log}", "--layout", ""], "bad layout ''"),
    (["compare", "{log}", "--models", "obm, stock,obm"], "--models names obm twice"),
    (["compare", "{log}", "--jobs", "0"], "--jobs must be at least 1"),
    # values that overflowed int64 in the compiled loops (tracebacks before)
    (["replay", "{log}", "--spin-limit", "99999999999999999999"], "--spin-limit must be at most"),
    (["replay", "{log}", "--wakeup-ns", str(10**13)], "--wakeup-ns must be at most"),
    (["replay", "{log}", "--layout", "hash:99999999999999999999"], "N from 1 to 16,777,216"),
    (["ingest", "{log}", "-o", "{log}.b", "--layout", "hash:4294967296"], "bad layout"),
    # click's usage errors: one line too (they were four: usage, hint, blank, error)
    (["replay", "{log}", "--spin-limit", "abc"], "'abc' is not a valid int"),
    (["replay", "{log}", "--no-such-option"], "No such option: --no-such-option"),
    # "" was the current directory: an unset "$TRACE" replayed whatever bundle was there
    (["replay", ""], "TRACE is empty; name a bundle or a capture file, or - for standard input"),
    (["ingest", "", "-o", "{log}.b"], "an input is empty"),
    (["ingest", "{log}", "-o", ""], "-o is empty; name the bundle directory to write"),
])
def test_user_errors_are_one_line_exit_2(spec_log: Path, args: list[str], message: str) -> None:
    r = run_cli(*[a.format(log=spec_log) for a in args])
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_lockstat_bundle_cannot_be_replayed(tmp_path: Path) -> None:
    report = Path(__file__).parent / "data" / "lockstat" / "freebsd_manpage_sleep5.txt"
    assert run_cli("ingest", str(report), "-o", str(tmp_path / "b")).returncode == 0
    r = run_cli("replay", str(tmp_path / "b"))
    assert r.returncode == 2 and "no pvtrace event records to replay" in r.stderr


def test_models_lists_every_design() -> None:
    r = run_cli("models")
    assert r.returncode == 0
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == ["stock", "obm-pvc", "obm", "obm-rw", "ideal"]


def test_user_text_in_names_is_not_rich_markup(tmp_path: Path) -> None:
    # "[/x]" is a legal op name and "[/y]" a legal lock class (tokens without blanks): rich
    # read them as closing tags and the text report crashed; "[red]" in a path vanished.
    log = tmp_path / "[red]" / "m.log"
    log.parent.mkdir()
    log.write_text(SPEC_LOG.replace(" pv ", " [/y] ").replace("pmap_enter\n", "[/x]\n"))
    r = run_cli("replay", str(log), "--model", "stock")
    assert r.returncode == 0, r.stderr
    assert str(log) in r.stdout and "[/x]" in r.stdout and "[/y]" in r.stdout


def test_a_closed_or_full_stdout_is_one_line_or_silence(spec_log: Path) -> None:
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "pvtrace", "replay", str(spec_log), "--json"],
                           stdout=full, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 2
    assert r.stderr == "pvtrace: cannot write to standard output: No space left on device\n"


def _file_limit(nbytes: int):
    def limit() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


@pytest.mark.parametrize("args", [["dscript"], ["synth", "-o", "-", "--threads", "2",
                                                "--duration-ms", "2"]])
def test_stdout_cut_short_is_an_error_not_a_success(tmp_path: Path, args: list[str]) -> None:
    # A file that reaches ulimit -f (or fills the disk) took part of a large write: the rest
    # was dropped, the command exited 0 and synth reported every record written.
    with open(tmp_path / "out", "w") as out:
        r = subprocess.run([sys.executable, "-m", "pvtrace", *args], stdout=out,
                           stderr=subprocess.PIPE, text=True, preexec_fn=_file_limit(4096))
    assert r.returncode == 2
    assert r.stderr == "pvtrace: cannot write to standard output: File too large\n"


def test_a_reader_that_leaves_early_ends_synth_quietly() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pvtrace", "synth", "-o", "-", "--threads",
                             "4", "--duration-ms", "5"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"# pvtrace-log v1\n"
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141 and proc.stderr.read() == b""


def test_ctrl_c_stops_a_read_from_a_stalled_pipe(tmp_path: Path) -> None:
    # polars installs a SIGINT handler with SA_RESTART: the read was restarted and only
    # SIGKILL ended the command.
    import signal
    import time

    fifo = tmp_path / "capture.log"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "pvtrace", "ingest", str(fifo), "-o",
                             str(tmp_path / "b")], stderr=subprocess.PIPE, text=True)
    with open(fifo, "w") as writer:         # opened: pvtrace now waits in read()
        writer.write(SPEC_LOG[:40])
        writer.flush()
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "pvtrace: interrupted"


def test_sigterm_cleans_up_like_ctrl_c(tmp_path: Path) -> None:
    # A killed ingest (timeout(1), a batch scheduler) left its scratch copy of the capture
    # and a half-written bundle behind, hidden beside the output: GBs per attempt.
    import gzip
    import signal
    import time

    body = "".join(SPEC_LOG.splitlines(keepends=True)[3:])
    big = tmp_path / "big.log.gz"
    big.write_bytes(gzip.compress((SPEC_LOG + body * 300_000).encode(), compresslevel=1))
    (tmp_path / "out").mkdir()      # scratch goes beside the output when its parent exists
    proc = subprocess.Popen([sys.executable, "-m", "pvtrace", "ingest", str(big), "-o",
                             str(tmp_path / "out" / "b")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any((tmp_path / "out").glob(".pvtrace-ingest-*")) and time.monotonic() < deadline:
        time.sleep(0.05)        # wait until the scratch directory exists
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (143, 0), err       # 0: it finished first (a fast machine)
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    if proc.returncode == 143:
        assert err.strip().splitlines()[-1] == "pvtrace: terminated"
        assert not (tmp_path / "out" / "b").exists()


def test_a_raw_capture_reports_the_lines_its_ingest_skipped(tmp_path: Path) -> None:
    # Replaying a raw log ingests it into a temporary bundle: its malformed and cut-off lines
    # were not mentioned anywhere, and the --max-bad the error suggested did not exist here.
    log = tmp_path / "bad.log"
    log.write_text("junk line\n" + SPEC_LOG + "1 2 3\n" + SPEC_LOG.splitlines()[-1][:20])
    r = run_cli("replay", str(log), "--model", "stock", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["trace"]["skipped_lines"] == {"malformed": 2, "cut_off": 1}
    r = run_cli("replay", str(log), "--model", "stock")
    assert "note: ingest skipped 2 malformed and 1 cut-off lines" in r.stdout
    r = run_cli("compare", str(log), "--max-bad", "1")
    assert r.returncode == 2 and "2 malformed lines, more than --max-bad 1" in r.stderr


NESTED_LOG = """# pvtrace-log v1
1000 0 101 A pv 0xfffff80001000040 w 0 0x200000 pmap_enter
1100 0 101 A pv 0xfffff80001000080 w 0 0x400000 pmap_enter
2100 0 101 R pv 0xfffff80001000080 w 0 0x400000 pmap_enter
2200 0 101 R pv 0xfffff80001000040 w 0 0x200000 pmap_enter
1500 1 102 B pv 0xfffff80001000040 w 700 0x201000 pmap_enter
2200 1 102 A pv 0xfffff80001000040 w 0 0x201000 pmap_enter
2300 1 102 R pv 0xfffff80001000040 w 0 0x201000 pmap_enter
1000 2 103 A pmap 0xfffff80003000000 w 0 0 pmap_enter
2000 2 103 R pmap 0xfffff80003000000 w 0 0 pmap_enter
2000 2 103 B pmap 0xfffff80003000000 w 5000 0 pmap_enter
2500 2 103 A pmap 0xfffff80003000000 w 0 0 pmap_enter
2600 2 103 R pmap 0xfffff80003000000 w 0 0 pmap_enter
"""


def test_nested_holds_and_clamped_gaps_are_noted_in_the_tables(tmp_path: Path) -> None:
    # Only --json had them, and the stock row silently differed from the observed one.
    log = tmp_path / "nested.log"
    log.write_text(NESTED_LOG)
    report = json.loads(run_cli("replay", str(log), "--model", "stock", "--json").stdout)
    assert report["models"][0]["anomalies"]["nested_pv_holds"] == 1
    assert report["models"][0]["anomalies"]["clamped_gaps"] == 1
    out = run_cli("compare", str(log), "--models", "stock,obm").stdout
    assert "note: 1 pv-list lock taken while the thread held one" in out
    assert "note: 1 recorded wait longer than the time since the thread's previous record" \
        in out


def test_a_capture_of_malformed_lines_only_says_so(tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    log.write_text("# pvtrace-log v1\n"
                   "1000 0 -1 A pv 0xfffff80001000040 w 0 0x200000 pmap_enter\n" * 3)
    r = run_cli("replay", str(log))
    assert r.returncode == 2 and r.stderr == (
        f"pvtrace: {log}: the trace has no event records to replay (ingest skipped 3 "
        "malformed and 0 cut-off lines; `pvtrace ingest` lists them)\n")


def test_an_unknown_model_is_refused_before_the_capture_is_read(tmp_path: Path) -> None:
    r = run_cli("compare", str(tmp_path / "missing.log"), "--models", "stock,obmm")
    assert r.returncode == 2 and "unknown model 'obmm'" in r.stderr


@pytest.mark.parametrize("change, message", [
    (lambda t: t.set_column(0, "ts", t.column("ts").cast("string")),
     "events column ts holds string, not integers"),
    (lambda t: t.set_column(t.schema.get_field_index("ns"), "ns",
                            pa.array([None] * t.num_rows, pa.int64())),
     "events column ns has 6 empty values"),
    (lambda t: t.take(list(range(t.num_rows - 1, -1, -1))), "not in time order"),
])
def test_a_hand_made_events_table_gets_a_clear_error(tmp_path: Path, change, message) -> None:
    import pyarrow.parquet as pq

    log = tmp_path / "spec.log"
    log.write_text(SPEC_LOG)
    assert run_cli("ingest", str(log), "-o", str(tmp_path / "b")).returncode == 0
    file = tmp_path / "b" / "events.parquet"
    pq.write_table(change(pq.read_table(file)), file)
    r = run_cli("replay", str(tmp_path / "b"), "--no-cache")
    assert r.returncode == 2 and r.stderr.startswith(f"pvtrace: {file}: ")
    assert message in r.stderr and len(r.stderr.splitlines()) == 1


def test_signals_wait_for_cleanup_to_finish() -> None:
    # A SIGTERM arriving while the scratch copy of a capture was being deleted stopped the
    # deletion half-way; pvtrace.signals.held() delivers it after the block.
    import signal

    from pvtrace import signals

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append("handled"))
    try:
        with signals.held():
            signal.raise_signal(signal.SIGTERM)
            seen.append("block finished")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == ["block finished", "handled"]


_STOP_WHILE_LOADING = """
import os, signal, sys
stop = getattr(signal, sys.argv[1])
class Stop:             # the signal arrives while the CLI's modules load
    def find_spec(self, name, path, target=None):
        if name == "pvtrace.cli":
            os.kill(os.getpid(), stop)
sys.meta_path.insert(0, Stop())
sys.argv[1:] = ["ingest", "capture.log", "-o", "b"]
from pvtrace.__main__ import main
main()
"""


@pytest.mark.parametrize("signame, status, said", [("SIGINT", 130, "interrupted"),
                                                   ("SIGTERM", 143, "terminated")])
def test_a_signal_while_the_cli_loads_is_one_line(tmp_path: Path, signame: str, status: int,
                                                  said: str) -> None:
    # Ctrl-C in the first tenth of a second printed the traceback of an import.
    proc = subprocess.run([sys.executable, "-c", _STOP_WHILE_LOADING, signame],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (status, "", f"pvtrace: {said}\n")


def test_a_signal_inside_llvmlite_is_raised_once_out_of_it(monkeypatch) -> None:
    # Raised inside llvmlite's object-cache callback (numba loading compiled code), the
    # KeyboardInterrupt was printed as "Exception ignored" and lost: the ingest went on, or
    # died of a segmentation fault.
    import signal
    import time
    import types

    from pvtrace import signals

    monkeypatch.setattr(signals, "received", [])
    in_llvmlite = types.SimpleNamespace(f_globals={"__name__": "llvmlite.binding.ffi"})
    previous = signal.getsignal(signal.SIGALRM)
    try:
        signals.on_signal(signal.SIGINT, in_llvmlite)     # returns: not raised in there
        with pytest.raises(KeyboardInterrupt):
            time.sleep(5)                                # raised here, a moment later
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert signals.received == [signal.SIGINT]


def test_an_interrupt_that_polars_turned_into_a_panic_is_one_line(monkeypatch, capsys) -> None:
    # Ctrl-C while polars ran Python code (pl.from_arrow) came out as a pyo3 PanicException
    # with 240 lines of traceback.
    import signal

    import pvtrace.cli as cli
    from pvtrace import signals

    class PanicException(BaseException):
        pass

    def panics(**kw):
        raise PanicException("called `Result::unwrap()` on an `Err` value: KeyboardInterrupt")

    monkeypatch.setattr(cli, "app", panics)
    monkeypatch.setattr(signals, "received", [signal.SIGINT])
    with pytest.raises(SystemExit) as stop:
        cli.run()
    assert stop.value.code == 130 and capsys.readouterr().err == "pvtrace: interrupted\n"
    monkeypatch.setattr(signals, "received", [])    # a panic of its own is not hidden
    with pytest.raises(PanicException):
        cli.run()


def test_the_script_skips_interpreter_teardown_but_no_output(tmp_path: Path) -> None:
    # pvtrace.cli.main ends the process without Python's teardown (os._exit): stdout must
    # still be whole when it is a pipe, a few MB of it.
    r = run_cli("synth", "-o", "-", "--threads", "4", "--duration-ms", "40")
    assert r.returncode == 0, r.stderr
    ref = tmp_path / "s.log"
    result = CliRunner().invoke(app, ["synth", "-o", str(ref), "--threads", "4",
                                      "--duration-ms", "40"])
    assert result.exit_code == 0, result.output
    assert len(r.stdout) > 1_000_000 and r.stdout == ref.read_text()
    r = run_cli("replay", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.startswith("pvtrace: ") and r.stderr.count("\n") == 1


def test_the_script_waits_for_threads_it_would_otherwise_cut_short() -> None:
    import threading

    from pvtrace import cli
    release = threading.Event()
    worker = threading.Thread(target=release.wait)     # not a daemon: Python waits for it
    worker.start()
    try:
        with pytest.raises(SystemExit) as ended:       # the usual exit, not os._exit
            cli._end(3)
        assert ended.value.code == 3
    finally:
        release.set()
        worker.join()


@pytest.mark.parametrize("ns, text", [
    (0, "0 ns"), (66, "66 ns"), (999.4, "999 ns"), (999.5, "1.00 us"), (2950, "2.95 us"),
    (9994, "9.99 us"), (9995, "10.0 us"), (99_950, "100 us"), (452_000, "452 us"),
    (999_500, "1.00 ms"), (5_000_000, "5.00 ms"), (5_090_000, "5.09 ms"), (3.6e12, "3600 s"),
    (-2950, "-2.95 us")])
def test_table_durations_keep_three_significant_digits(ns, text):
    # "5.00 ms" next to "5.09 ms": a dropped trailing zero read as a coarser figure
    assert fmt_ns(ns) == text


def test_the_text_report_names_the_capture_files_of_a_bundle(tmp_path, spec_log):
    # A table pasted into a mail keeps where its numbers came from.
    from pvtrace.ingest import run_ingest
    from pvtrace.replay.api import replay_trace
    from pvtrace.report.table import trace_line

    later = tmp_path / "later.log"
    later.write_text(SPEC_LOG.replace("1000 ", "91000 ").replace("6000 ", "96000 "))
    for inputs, shown in (([spec_log], f"capture file: {spec_log}"),
                          ([spec_log, later], f"capture files: {spec_log}, {later}")):
        run_ingest([str(p) for p in inputs], str(tmp_path / "b"), force=True)
        line = trace_line(replay_trace(str(tmp_path / "b"), ["obm"]))
        assert line.splitlines()[1] == f"  {shown}"
    # a raw log is its own capture file: no second line
    assert "\n" not in trace_line(replay_trace(str(spec_log), ["obm"]))


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_tables_split_to_fit_a_narrow_terminal(spec_log: Path, width: int) -> None:
    # A terminal narrower than the table cut every cell to "...", design names and numbers
    # alike; the table now comes in parts that each fit, the design column first in each.
    from rich.console import Console

    from pvtrace.replay.api import replay_trace
    from pvtrace.report.table import class_tables, compare_tables

    report = replay_trace(str(spec_log), ["stock", "obm-pvc", "obm", "obm-rw", "ideal"])
    console = Console(width=width, record=True, file=open(os.devnull, "w"))
    parts = compare_tables(report, width)
    for part in (*parts, *class_tables(report, width)):
        console.print(part)
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    headers = [c.header for part in parts for c in part.columns[1:]]
    assert len(headers) == 12 and len(set(headers)) == 12
    assert all(part.columns[0].header == "design" for part in parts)
    assert (len(parts) == 1) == (width >= 200)
    for name in ("observed", "obm-pvc", "obm-rw", "ideal"):
        assert name in text


def test_escape_sequences_of_a_capture_are_shown_not_sent(tmp_path: Path) -> None:
    # A dtrace line holding an ESC recoloured the terminal through ingest's summary and the
    # replay's notes.
    log = tmp_path / "esc.log"
    log.write_text(SPEC_LOG + "dtrace: error on enabled probe ID 7 \x1b[31mRED\x1b[0m at 0x1\n")
    for args in (["replay", str(log), "--model", "stock"],
                 ["ingest", str(log), "-o", str(tmp_path / "b")]):
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        text = r.stdout + r.stderr
        assert "\x1b" not in text and "\\x1b[31mRED\\x1b[0m" in text, args


def test_op_table_lists_the_operations_that_waited_most_first() -> None:
    from rich.console import Console

    from pvtrace.report.table import op_table

    def op(wait: int, p99_wait: int, p99_hold: int) -> dict:
        return {"acquisitions": 10, "contended": 2, "wait_ns": wait,
                "contended_wait_percentiles_ns": {"p99": p99_wait},
                "hold_percentiles_ns": {"p99": p99_hold}}

    model = {"model": "obm", "by_op": {"pmap_enter": op(1_000, 900, 5_000),
                                       "pmap_remove_all": op(70_000, 40_000, 123_000),
                                       "pmap_ts_referenced": op(0, 0, 77)}}
    console = Console(width=120, record=True, file=open(os.devnull, "w"))
    console.print(op_table(model))
    rows = [line for line in console.export_text().splitlines() if "pmap_" in line]
    assert [r.split()[1] for r in rows] == ["pmap_remove_all", "pmap_enter",
                                            "pmap_ts_referenced"]
    cells = rows[0].replace("│", " ").split()
    # op, acquisitions, contended, wait, p99 cont. wait, p99 hold
    assert cells[-6:] == ["70.0", "us", "40.0", "us", "123", "us"]
