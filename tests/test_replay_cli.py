"""The replay commands run for real on the SPEC example: JSON contract, golden text, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pvtrace.cli import app
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
    (["replay", "{log}", "--spin-limit", "-1"], "must be >= 0"),
    (["compare", "{log}", "--jobs", "0"], "--jobs must be at least 1"),
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
