"""The synthetic kernel: same work under every design, exact small scenarios, SPEC-valid output."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from pvtrace.ingest.common import Format
from pvtrace.ingest.detect import sniff
from pvtrace.synth import synthesize
from pvtrace.synth.kernel_sim import (PV_LIST_LOCKS, PV_TABLE, TS0, VM_PAGE_ARRAY,
                                      VM_PAGE_SIZE, MD_LOCK_OFFSET, SimParams, simulate)
from pvtrace.synth.workload import (ACQ_PMAP, ACQ_PVC, E, MODE_R, MODE_W, PV_REL, PV_TO,
                                    REL_PMAP, REL_PVC, SZ_2M, SZ_4K, WITH_P, X, Workload,
                                    generate)
from pvtrace.synth.writer import TID_BASE, render

RECORD = re.compile(r"^\d+ \d+ \d+ (?:[ARBS] (?:pv|pvc|pmap) 0x[0-9a-f]+ [wr] \d+ (?:0x[0-9a-f]+|0)"
                    r"|P - 0 (?:4k|2m) 0 0x[0-9a-f]+|[EX] - 0 - 0 0) [a-z_]+$")
KERNELS = ("stock", "obm-pvc", "obm")
FRAME = 0x300                       # a 2 MiB frame number used by the scenarios
PAGE = FRAME << 9                   # its first 4 KiB page number


def small(kernel: str, layout: str = "superpage", seed: int = 3, **kw):
    return synthesize(kernel=kernel, layout=layout, threads=4, duration_ms=3, seed=seed, **kw)


def records(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if not line.startswith("#")]


def run(programs, kernel="stock", layout="superpage", spin=0, wakeup=0):
    work = Workload("test", 0, len(programs), 1.0, 1.0, 1, programs)
    return simulate(work, SimParams(kernel, layout, spin_limit_ns=spin, wakeup_ns=wakeup))


def rows(res):
    """Records as (ts from 0, cpu, ev, cls, mode, ns, pa) tuples, in per-thread order."""
    c = res.columns
    out = []
    ev, cls, mode = "ARBSPEX", ["-", "pv", "pvc", "pmap"], ["-", "w", "r", "4k", "2m"]
    for k in range(len(c["ts"])):
        out.append((int(c["ts"][k]) - TS0, int(c["cpu"][k]), ev[c["ev"][k]], cls[c["cls"][k]],
                    mode[c["mode"][k]], int(c["ns"][k]), int(c["pa"][k])))
    return out


def pv_op(hold, page, start=0, mode=MODE_W, size=SZ_4K):
    """A thread that waits `start` ns, takes the pv lock of `page` and holds it `hold` ns."""
    return [(start, PV_TO, page, size, mode, 1), (hold, PV_REL, 0, 0, 0, 1)]


# --- same work under every kernel -------------------------------------------------------------

def test_programs_do_not_depend_on_the_kernel():
    caps = {k: small(k) for k in KERNELS}
    progs = [caps[k].workload.programs for k in KERNELS]
    assert progs[0] == progs[1] == progs[2]
    assert caps["stock"].header["kernel"] == "synth-stock"


@pytest.mark.parametrize("layout", ["superpage", "hash:256"])
def test_only_waits_differ_between_kernels(layout):
    """Per thread: the same E/X/P sequence, and span minus waits is the same lock-free work."""
    per_kernel = {}
    for k in KERNELS:
        c = small(k, layout).result.columns
        by_thread = {}
        for cpu in range(4):
            sel = c["cpu"] == cpu
            ev, ts = c["ev"][sel], c["ts"][sel]
            marks = np.isin(ev, (4, 5, 6))          # P, E, X
            waits = int(c["ns"][sel].sum())
            by_thread[cpu] = (ev[marks].tolist(), c["op"][sel][marks].tolist(),
                              c["pa"][sel][marks].tolist(), int(ts[-1] - ts[0]) - waits)
        per_kernel[k] = by_thread
    assert per_kernel["stock"] == per_kernel["obm-pvc"] == per_kernel["obm"]


def test_deterministic():
    a, b = small("stock", seed=11), small("stock", seed=11)
    assert a.text == b.text
    assert small("stock", seed=12).text != a.text


# --- the log format ---------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,layout", [("stock", "superpage"), ("stock", "hash:256"),
                                           ("obm", "superpage"), ("obm-pvc", "hash:256")])
def test_every_record_is_valid(kernel, layout):
    cap = small(kernel, layout)
    lines = cap.text.splitlines()
    assert lines[0] == "# pvtrace-log v1"
    meta = dict(line[2:].split("=", 1) for line in lines if line.startswith("# ") and "=" in line)
    for key in ("ncpu", "ndomains", "kernel", "layout", "seed", "workload", "threads",
                "truth_wait_ns", "truth_acquisitions", "truth_sibling_wakeups"):
        assert key in meta
    assert meta["kernel"] == f"synth-{kernel}" and meta["layout"] == layout
    assert int(meta["truth_wait_ns"]) == cap.truth["wait_ns"]
    body = [line for line in lines if not line.startswith("#")]
    assert len(body) == cap.records > 1000
    bad = [line for line in body if not RECORD.match(line)]
    assert bad == []
    assert sniff("\n".join(lines[:50]), "x") is Format.PVLOG
    assert sniff("\n".join(body[:50]), "x") is Format.PVLOG      # headerless too


def test_lock_addresses_follow_the_layouts():
    for layout, base, stride in (("superpage", PV_TABLE, 64), ("hash:256", PV_LIST_LOCKS, 32)):
        for r in records(small("stock", layout).text):
            if r[4] == "pv":
                frame = int(r[8], 16) >> 21
                slot = frame if layout == "superpage" else frame % 256
                assert int(r[5], 16) == base + stride * slot
    for r in records(small("obm").text):
        if r[4] == "pv":
            page = int(r[8], 16) >> 12
            assert int(r[5], 16) == VM_PAGE_ARRAY + VM_PAGE_SIZE * page + MD_LOCK_OFFSET
        assert r[4] != "pvc"                 # obm removes the chunk-list lock


def test_per_cpu_drained_order():
    cap = synthesize(kernel="stock", threads=4, duration_ms=25, seed=5)
    recs = records(cap.text)
    ts = np.array([int(r[0]) for r in recs])
    cpu = np.array([int(r[1]) for r in recs])
    assert np.any(np.diff(ts) < 0)                       # not in global time order
    chunk = (ts - TS0) // 10_000_000
    assert chunk.max() >= 2
    key = chunk * 1000 + cpu
    assert np.all(np.diff(key) >= 0)                     # (drain chunk, cpu) blocks in order
    for c in range(4):
        assert np.all(np.diff(ts[cpu == c]) >= 0)        # each CPU's records in time order
    assert all(int(r[2]) == TID_BASE + int(r[1]) for r in recs)


# --- exact scenarios --------------------------------------------------------------------------

def test_two_pages_of_one_frame_false_block_under_stock():
    # thread 0 holds page PAGE from t=0 for 1000 ns; thread 1 wants PAGE+1 at t=100
    progs = [pv_op(1000, PAGE), pv_op(500, PAGE + 1, start=100)]
    res = run(progs, "stock", "superpage", spin=300)
    lock = PV_TABLE + 64 * FRAME
    assert rows(res) == [
        (0, 0, "A", "pv", "w", 0, PAGE << 12),
        (1000, 0, "R", "pv", "w", 0, PAGE << 12),
        (1000, 1, "B", "pv", "w", 600, (PAGE + 1) << 12),     # the kernel's order: block,
        (1000, 1, "S", "pv", "w", 300, (PAGE + 1) << 12),     # spin, acquire
        (1000, 1, "A", "pv", "w", 0, (PAGE + 1) << 12),
        (1500, 1, "R", "pv", "w", 0, (PAGE + 1) << 12),
    ]
    assert set(res.columns["lock"].tolist()) == {lock}
    t = res.truth
    assert t["wait_ns"] == 900 and t["spin_ns"] == 300 and t["block_ns"] == 600
    assert t["false_block"] == {"count": 1, "wait_ns": 900}
    assert t["true_block"] == {"count": 0, "wait_ns": 0}
    assert t["makespan_ns"] == 1500
    assert t["contended_wait_percentiles_ns"]["p99"] == 900

    obm = run(progs, "obm", "superpage", spin=300)
    assert obm.truth["wait_ns"] == 0 and obm.truth["contended"] == 0
    assert obm.truth["makespan_ns"] == 1000


def test_same_page_is_a_true_block_everywhere():
    progs = [pv_op(1000, PAGE), pv_op(500, PAGE, start=100)]
    for kernel in KERNELS:
        t = run(progs, kernel).truth
        assert t["true_block"] == {"count": 1, "wait_ns": 900}, kernel


def test_hash_layout_aliases_congruent_frames():
    other = (FRAME + 256) << 9
    progs = [pv_op(1000, PAGE), pv_op(500, other, start=100)]
    assert run(progs, "stock", "hash:256").truth["false_block"]["wait_ns"] == 900
    assert run(progs, "stock", "superpage").truth["wait_ns"] == 0


def test_readers_share_under_stock_but_not_under_obm():
    progs = [pv_op(1000, PAGE, mode=MODE_R), pv_op(1000, PAGE, start=100, mode=MODE_R)]
    assert run(progs, "stock").truth["wait_ns"] == 0
    assert run(progs, "obm").truth["wait_ns"] == 900        # OBM has no shared mode


def test_reader_does_not_overtake_a_queued_writer():
    progs = [pv_op(1000, PAGE, mode=MODE_R),                 # reader holds 0..1000
             pv_op(100, PAGE + 1, start=100),                # writer queued at 100
             pv_op(100, PAGE + 2, start=200, mode=MODE_R)]   # reader queued behind it
    t = run(progs, "stock").truth
    # writer waits 900 (granted at 1000, holds to 1100); reader waits 1100 - 200 = 900
    assert t["wait_ns"] == 1800 and t["contended"] == 2


def test_sibling_wakeup_under_obm_turnstiles():
    progs = [pv_op(1000, PAGE), pv_op(2000, PAGE + 1),
             pv_op(10, PAGE, start=100), pv_op(10, PAGE + 1, start=100)]
    t = run(progs, "obm", "superpage").truth
    # PAGE becomes free at 1000 (thread 0) and at 1010 (thread 2): each time thread 3, asleep
    # on the same frame's turnstile for PAGE+1, wakes for nothing
    assert t["sibling_wakeups"] == 2
    assert t["wait_ns"] == 900 + 1900
    assert run(progs, "stock").truth["sibling_wakeups"] == 0
    # still asleep only after the spin limit: no sibling wakeup when it is still spinning
    assert run(progs, "obm", spin=1000).truth["sibling_wakeups"] == 0


def test_change_pv_list_lock_switches_only_on_key_change():
    other = (FRAME + 5) << 9
    walk = [(0, E, 0, 0, 0, 5), (0, ACQ_PMAP, 7, 0, 0, 5)]
    for page in (PAGE, PAGE + 1, PAGE + 2, other):
        walk += [(10, PV_TO, page, SZ_4K, MODE_W | WITH_P, 5)]
    walk += [(10, PV_REL, 0, 0, 0, 5), (0, ACQ_PVC, 0, 0, 0, 5), (50, REL_PVC, 0, 0, 0, 5),
             (0, REL_PMAP, 7, 0, 0, 5), (0, X, 0, 0, 0, 5)]
    seq = lambda res: "".join(r[2] + (r[3] if r[3] != "-" else "") for r in rows(res))  # noqa: E731
    stock = run([walk], "stock")
    assert seq(stock) == "EApmapPApvPPPRpvApvRpvApvcRpvcRpmapX"
    obm = run([walk], "obm")
    assert seq(obm) == "EApmapPApvPRpvApvPRpvApvPRpvApvRpvRpmapX"
    # the removed chunk-list lock keeps its work: same span
    assert stock.truth["makespan_ns"] == obm.truth["makespan_ns"] == 100


def test_superpage_ops_take_512_page_locks_under_obm():
    progs = [[(0, PV_TO, PAGE, SZ_2M, MODE_W | WITH_P, 4), (100, PV_REL, 0, 0, 0, 4)],
             pv_op(50, PAGE + 7, start=10)]
    obm = run(progs, "obm")
    t = obm.truth
    assert t["by_class"]["pv"]["acquisitions"] == 513
    assert t["true_block"] == {"count": 1, "wait_ns": 90}
    ev = obm.columns["ev"][obm.columns["cpu"] == 0]
    assert (ev == 0).sum() == 512 and (ev == 1).sum() == 512
    pages = obm.columns["pa"][(obm.columns["cpu"] == 0) & (obm.columns["ev"] == 0)] >> 12
    assert np.all(np.diff(pages.astype(np.int64)) == 1)     # ascending
    stock = run(progs, "stock")
    assert stock.truth["acquisitions"] == 2 and stock.truth["wait_ns"] == 90


def test_a_granted_superpage_run_takes_its_next_page_as_a_step_of_its_own():
    # 0 holds PAGE until 100; 2 asks for the frame at 10 and waits for PAGE; 1 asks for
    # PAGE + 1 at 100. 0's release at 100 grants PAGE to 2, whose next page is a step of its
    # own at 100, after 1's (ties by thread): 1 takes PAGE + 1 first and 2 waits for it
    # until 150 (REPLAY.md 4), as a replay of this capture computes.
    progs = [[(0, PV_TO, PAGE, SZ_4K, MODE_W | WITH_P, 4), (100, PV_REL, 0, 0, 0, 4)],
             [(100, PV_TO, PAGE + 1, SZ_4K, MODE_W | WITH_P, 4), (50, PV_REL, 0, 0, 0, 4)],
             [(10, PV_TO, PAGE, SZ_2M, MODE_W | WITH_P, 4), (1000, PV_REL, 0, 0, 0, 4)]]
    for wakeup in (0, 1):
        t = run(progs, "obm", wakeup=wakeup).truth
        assert t["wait_ns"] == 90 + 50 + wakeup, wakeup


def test_wakeup_cost_delays_blocked_waiters_only():
    progs = [pv_op(1000, PAGE), pv_op(500, PAGE, start=100)]
    t = run(progs, "stock", wakeup=50).truth
    # granted at 1000 after asking at 100, runs at 1050: a sleep lasts until the thread runs
    assert t["wait_ns"] == 950 and t["makespan_ns"] == 1550
    assert run(progs, "stock", spin=5000, wakeup=50).truth["makespan_ns"] == 1500


def test_workloads_and_errors():
    from pvtrace.errors import PvtraceError

    for wl in ("faults", "exits"):
        assert small("stock", workload=wl).records > 100
    with pytest.raises(PvtraceError):
        generate(seed=1, threads=2, duration_ms=1, workload="nope")
    with pytest.raises(PvtraceError):
        small("nope")
    with pytest.raises(PvtraceError):
        small("stock", layout="hash:x")


# --- command line and ingest ------------------------------------------------------------------

def test_cli_writes_gzip(tmp_path):
    from pvtrace.cli import app

    out = tmp_path / "c.log.gz"
    res = CliRunner().invoke(app, ["synth", "--kernel", "obm", "--layout", "hash:256",
                                   "--threads", "3", "--duration-ms", "2", "--seed", "4",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    text = gzip.decompress(out.read_bytes()).decode()
    assert text == small_text("obm", "hash:256", 3, 2, 4)
    assert "# kernel=synth-obm" in text and "# truth_wait_ns=" in text


def test_cli_dash_writes_standard_output(tmp_path, monkeypatch):
    from pvtrace.cli import app

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["synth", "-o", "-", "--threads", "2", "--duration-ms", "0.2",
                                   "--seed", "4"])
    assert res.exit_code == 0, res.output
    assert res.stdout == small_text("stock", "superpage", 2, 0.2, 4)
    assert list(tmp_path.iterdir()) == []       # not a file named "-"


@pytest.mark.parametrize("args, message", [
    (["--duration-ms", "nan"], "--duration-ms must be a finite number, not nan"),
    (["--duration-ms", "inf"], "--duration-ms must be a finite number, not inf"),
    (["--mem-gb", "nan"], "--mem-gb must be a finite number, not nan"),
    (["--mem-gb", "inf"], "--mem-gb must be a finite number, not inf"),
    (["--mem-gb", "1e300"], "--mem-gb 1e+300 is too large: use at most 16384"),
    (["--seed", "-1"], "--seed -1: use a seed >= 0"),
    # tracebacks (int64 overflow in the record array) or captures replay refuses, before
    (["--wakeup-ns", str(10**17)], "--wakeup-ns must be at most 1,000,000,000,000 ns (1000 s)"),
    (["--spin-limit", str(2**63)], "--spin-limit must be at most 4,611,686,018,427,387,903 "
                                   "ns (any limit longer than the capture already means: never "
                                   "block)"),
    (["--ndomains", str(2**31)], "--ndomains 2147483648: a domain needs a CPU; use at most "
                                 "--threads (8)"),
])
def test_cli_option_errors_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    import sys

    import pvtrace.cli as cli

    out = tmp_path / "s.log"
    monkeypatch.setattr(sys, "argv", ["pvtrace", "synth", "-o", str(out), *args])
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"pvtrace: {message}\n"
    assert not out.exists()



@pytest.mark.parametrize("args, estimate", [
    (["--duration-ms", "1e300"], "up to 1.6e+304 records, about 4.47e+297 GiB"),
    (["--duration-ms", "20000", "--threads", "64"], "up to 2,560,000,000 records, about 715 GiB"),
])
def test_cli_refuses_a_run_too_big_for_memory_before_simulating(tmp_path, monkeypatch, capsys,
                                                               args, estimate):
    import sys

    import pvtrace.cli as cli
    import pvtrace.synth as synth_mod

    # a 16 GiB machine, whatever this one has
    sysconf = {"SC_PHYS_PAGES": 4 * 2**20, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr("os.sysconf", sysconf.__getitem__)
    monkeypatch.setattr(synth_mod, "synthesize", lambda **kw: pytest.fail("simulated"))
    out = tmp_path / "s.log"
    monkeypatch.setattr(sys, "argv", ["pvtrace", "synth", "-o", str(out), *args])
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    assert exit_.value.code == 2
    threads = args[-1] if "--threads" in args else "8"
    assert capsys.readouterr().err == (
        f"pvtrace: --duration-ms {args[1] if args[1] != '1e300' else '1e+300'} with --threads "
        f"{threads} would simulate {estimate} of memory, more than this machine's 16 GiB; "
        "shorten --duration-ms or use fewer threads (about 2,000 records per thread per ms)\n")
    assert not out.exists()


def small_text(kernel, layout, threads, ms, seed):
    return synthesize(kernel=kernel, layout=layout, threads=threads, duration_ms=ms,
                      seed=seed).text


def test_ingest_reads_synthetic_captures_cleanly(tmp_path):
    ingest = pytest.importorskip("pvtrace.ingest")
    if not hasattr(ingest, "run_ingest"):
        pytest.skip("pvtrace.ingest.run_ingest not available")
    for kernel, layout in (("stock", "superpage"), ("stock", "hash:256"), ("obm", "superpage")):
        path = tmp_path / f"{kernel}-{layout.replace(':', '')}.log.gz"
        cap = small(kernel, layout)
        from pvtrace.synth import write
        write(path, cap.text)
        result = ingest.run_ingest([str(path)], str(tmp_path / path.name.split(".")[0]))
        summary = result.inputs[0]
        assert summary.malformed == 0 and summary.cut_off == 0
        assert summary.records == cap.records
        if kernel == "stock":
            assert result.layout_detected == layout


def test_render_of_empty_run():
    res = run([[(0, E, 0, 0, 0, 1), (5, X, 0, 0, 0, 1)]])
    text = render(res, {"ncpu": 1})
    assert text.splitlines()[2:] == [f"{TS0} 0 {TID_BASE} E - 0 - 0 0 pmap_enter",
                                     f"{TS0 + 5} 0 {TID_BASE} X - 0 - 0 0 pmap_enter"]


# --- invariants on random small workloads -----------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), threads=st.integers(1, 6),
       layout=st.sampled_from(["superpage", "hash:16", "hash:256"]),
       spin=st.sampled_from([0, 500, 10_000]), wakeup=st.sampled_from([0, 200]))
def test_invariants_on_random_workloads(seed, threads, layout, spin, wakeup):
    work = generate(seed=seed, threads=threads, duration_ms=0.4, workload="exits")
    spans = {}
    for kernel in KERNELS:
        res = simulate(work, SimParams(kernel, layout, spin_limit_ns=spin, wakeup_ns=wakeup))
        t, c = res.truth, res.columns
        assert t["spin_ns"] + t["block_ns"] == t["wait_ns"] == int(c["ns"].sum())
        assert t["false_block"]["wait_ns"] + t["true_block"]["wait_ns"] == \
            t["by_class"].get("pv", {}).get("wait_ns", 0)
        assert np.count_nonzero(c["ev"] == 0) == t["acquisitions"]      # one A per acquisition
        assert np.count_nonzero(c["ev"] == 1) == t["acquisitions"]      # and one R
        if kernel != "stock":
            assert t["false_block"]["count"] == 0                       # no aliasing in OBM
        else:
            assert t["sibling_wakeups"] == 0
        per = []
        for cpu in range(threads):
            sel = c["cpu"] == cpu
            ts = c["ts"][sel]
            if len(ts):     # (a B record's ns include the wakeup latency)
                per.append(int(ts[-1] - ts[0]) - int(c["ns"][sel].sum()))
        spans[kernel] = per
    assert spans["stock"] == spans["obm-pvc"] == spans["obm"]


def test_cli_keeps_an_existing_capture_unless_forced(tmp_path, monkeypatch, capsys):
    import sys

    import pvtrace.cli as cli

    def pvtrace(*args):
        monkeypatch.setattr(sys, "argv", ["pvtrace", *args])
        try:
            cli.run()
            return 0, capsys.readouterr().err
        except SystemExit as exc:
            return exc.code, capsys.readouterr().err

    out = tmp_path / "real.log"
    out.write_text("# pvtrace-log v1\n# a real capture\n")
    args = ["synth", "--threads", "2", "--duration-ms", "0.2", "-o", str(out)]
    assert pvtrace(*args) == (2, f"pvtrace: {out}: exists; use --force to replace it\n")
    assert out.read_text() == "# pvtrace-log v1\n# a real capture\n"
    assert pvtrace(*args, "--force")[0] == 0
    assert out.read_text() == small_text("stock", "superpage", 2, 0.2, 1)
    assert pvtrace("synth", "-o", str(tmp_path)) == (
        2, f"pvtrace: {tmp_path}: is a directory, not a capture file\n")


def test_a_failed_write_leaves_neither_a_half_capture_nor_a_temporary(tmp_path, monkeypatch):
    from pvtrace.synth import writer

    def pieces(*args):
        yield "# pvtrace-log v1\n"
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(writer, "render_pieces", pieces)
    cap = synthesize(kernel="stock", threads=2, duration_ms=0.2)
    with pytest.raises(OSError):
        cap.write(tmp_path / "c.log.zst")
    assert list(tmp_path.iterdir()) == []


def test_the_compression_suffix_is_read_in_any_case(tmp_path):
    cap = synthesize(kernel="stock", threads=2, duration_ms=0.2)
    cap.write(tmp_path / "C.LOG.GZ")
    assert gzip.decompress((tmp_path / "C.LOG.GZ").read_bytes()).decode() == cap.text


@pytest.mark.parametrize("output, message", [
    ("nodir/", "nodir/: is a directory, not a capture file"),     # wrote a file "nodir"
    ("", "--output is empty; name the capture file, or - for standard output"),
])
def test_cli_output_that_names_no_file(tmp_path, monkeypatch, capsys, output, message):
    import sys

    import pvtrace.cli as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pvtrace", "synth", "-o", output, "--threads", "2",
                                      "--duration-ms", "1"])
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    assert exit_.value.code == 2 and capsys.readouterr().err == f"pvtrace: {message}\n"
    assert list(tmp_path.iterdir()) == []
