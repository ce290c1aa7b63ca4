"""Stock pv-list lock layout detection from lock addresses and pages."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from pvtrace.errors import PvtraceError
from pvtrace.ingest import layout, run_ingest

PV_TABLE = 0xFFFFF80010000000
PV_LOCKS = 0xFFFFFFFF81E00000
DUMMY = 0xFFFFFFFF82000000


def events(locks, pas, cls="pv", ev="A") -> pl.DataFrame:
    n = len(locks)
    return pl.DataFrame({
        "ev": [ev] * n, "cls": [cls] * n,
        "lock": pl.Series(np.asarray(locks, dtype=np.uint64)),
        "pa": pl.Series(np.asarray(pas, dtype=np.uint64)),
    }).with_columns(pl.col("ev", "cls").cast(pl.Categorical))


def pages(frames, rng):
    frames = np.asarray(frames, dtype=np.uint64)
    return (frames << np.uint64(21)) + (rng.integers(0, 512, frames.size).astype(np.uint64) << 12)


def test_superpage_with_dummy_outliers():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 40000, 2000).astype(np.uint64)
    locks = np.uint64(PV_TABLE) + np.uint64(64) * frames
    locks[:20] = DUMMY                                  # pages past the last segment
    found = layout.detect(events(locks, pages(frames, rng)))
    assert found.layout == "superpage"
    assert f"{PV_TABLE:#x}" in found.evidence


def test_a_layout_fits_with_exactly_the_fit_fraction():
    # 19 of 20 (lock, frame) pairs fit the hash (95 %, "at least" FIT_FRACTION); the other
    # lock is pv_dummy-like. With ">" instead of ">=" the detection fell back to spacing.
    assert layout.FIT_FRACTION == 0.95
    frames = list(range(1, 21))
    locks = [PV_LOCKS + 32 * (f % 256) for f in frames[:19]] + [DUMMY]
    found = layout.detect(events(locks, [f << 21 for f in frames]))
    assert found.layout == "hash:32" and "for 95.0% of 20 (lock, frame) pairs" in found.evidence


@pytest.mark.parametrize("n,span", [(256, 900), (1024, 5000), (64, 300)])
def test_hash(n, span):
    rng = np.random.default_rng(2)
    frames = rng.integers(0, span, 3000).astype(np.uint64)
    locks = np.uint64(PV_LOCKS) + np.uint64(32) * (frames % np.uint64(n))
    found = layout.detect(events(locks, pages(frames, rng)))
    assert found.layout == f"hash:{n}" and not found.assumed
    assert f"{PV_LOCKS:#x}" in found.evidence


def test_hash_with_frames_below_n_says_larger_sizes_fit():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 200, 500).astype(np.uint64)
    locks = np.uint64(PV_LOCKS) + np.uint64(32) * frames
    found = layout.detect(events(locks, pages(frames, rng)))
    assert found.layout == "hash:256" and found.assumed
    assert "hash sizes up to 16384 fit as well (assumed)" in found.evidence


def test_hash_best_fit_not_the_first_size_past_the_threshold():
    # A hash:1024 capture touching frames 1..19 and 515: hash:32 fits 19 of 20 frames (95 %,
    # the threshold) and was taken; 1024 (and every larger size) fits all of them.
    frames = np.array(list(range(1, 20)) + [515], dtype=np.uint64)
    locks = np.uint64(PV_LOCKS) + np.uint64(32) * (frames % np.uint64(1024))
    found = layout.detect(events(locks, frames << np.uint64(21)))
    assert found.layout == "hash:1024" and found.assumed


def test_without_pages_hash_spacing():
    locks = np.uint64(PV_LOCKS) + np.uint64(32) * np.arange(0, 200, 3, dtype=np.uint64)
    found = layout.detect(events(locks, np.zeros(locks.size)))
    assert found.layout == "hash:256" and "no pages recorded" in found.evidence


def test_without_pages_superpage_spacing():
    locks = np.uint64(PV_TABLE) + np.uint64(64) * np.arange(0, 3000, 2, dtype=np.uint64)
    assert layout.detect(events(locks, np.zeros(locks.size))).layout == "superpage"


def test_without_pages_one_lock_is_unknown():
    assert layout.detect(events([PV_LOCKS] * 5, [0] * 5)).layout == "unknown"


def test_no_pv_traffic_is_unknown():
    assert layout.detect(events([0x10, 0x20], [0, 0], cls="pmap")).layout == "unknown"
    assert layout.detect(events([], [])).layout == "unknown"


@pytest.mark.parametrize("value,canonical", [
    ("superpage", "superpage"), ("hash:256", "hash:256"), ("hash:1024", "hash:1024"),
    ("hash:384", "hash:384"),       # options MAXCPU=384: the replay takes it, so does ingest
    (" Hash:256 ", "hash:256"), ("hash:", None), ("hash:0", None), ("hash:-4", None),
    (f"hash:{(1 << 24) + 1}", None), ("superpages", None)])
def test_validate(value, canonical):
    if canonical:
        assert layout.validate(value) == canonical
    else:
        with pytest.raises(PvtraceError, match="bad layout"):
            layout.validate(value)


def test_override_recorded_with_detection(tmp_path):
    lines = ["# pvtrace-log v1"]
    for f in range(0, 40):
        lock = PV_TABLE + 64 * f
        lines.append(f"{1000 + f} 0 7 A pv {lock:#x} w 0 {f << 21:#x} pmap_enter")
        lines.append(f"{1001 + f} 0 7 R pv {lock:#x} w 0 {f << 21:#x} pmap_enter")
    log = tmp_path / "l.log"
    log.write_text("\n".join(lines) + "\n")
    result = run_ingest([str(log)], str(tmp_path / "b"), layout="hash:256")
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert (result.layout_effective, result.layout_detected) == ("hash:256", "superpage")
    assert meta["layout"]["effective"] == "hash:256"
    assert meta["layout"]["detected"] == "superpage"
    assert meta["layout"]["source"] == "--layout"


def test_capture_fact_used_when_detection_is_unknown(tmp_path):
    log = tmp_path / "obm.log"
    log.write_text("# pvtrace-log v1\n# layout=hash:1024\n"
                   "1000 0 7 A pv 0xfffff80001000041 w 0 0x200000 pmap_enter\n"
                   "1001 0 7 R pv 0xfffff80001000041 w 0 0x200000 pmap_enter\n")
    result = run_ingest([str(log)], str(tmp_path / "b"))
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert (result.layout_effective, result.layout_detected) == ("hash:1024", "unknown")
    assert meta["layout"]["source"] == "capture"
