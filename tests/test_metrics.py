"""Percentiles, HDR histograms and dense key ids: exact values on small inputs, and property
tests against numpy's obviously correct (and slower) equivalents."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hdrh.histogram import HdrHistogram

from pvtrace import metrics
from pvtrace.replay.dense import _bitmap_ids, _hash_ids, dense_ids


def test_nearest_rank_percentiles():
    v = np.arange(1, 1001, dtype=np.int64)[::-1].copy()      # 1000..1
    p = metrics.percentiles(v)
    assert p == {"p50": 500, "p90": 900, "p99": 990, "p99.9": 999, "max": 1000}
    assert list(v[:3]) == [1000, 999, 998]                   # not reordered


def test_percentiles_with_extra_zeros():
    # 4 values plus 6 zeros: p50 is rank 5, still a zero; p90 is rank 9: the 3rd value.
    p = metrics.percentiles(np.array([10, 20, 30, 40]), extra_zeros=6)
    assert p == {"p50": 0, "p90": 30, "p99": 40, "p99.9": 40, "max": 40}
    assert metrics.percentiles(np.zeros(0, np.int64)) == {
        "p50": 0, "p90": 0, "p99": 0, "p99.9": 0, "max": 0}


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 10**12), min_size=1, max_size=300), st.integers(0, 50))
def test_percentiles_scratch_matches_sorting(values, extra):
    v = np.array(values, np.int64)
    ordered = np.sort(np.r_[np.zeros(extra, np.int64), v])
    expect = {name: int(ordered[max(1, int(np.ceil(q / 100 * len(ordered) - 1e-9))) - 1])
              for name, q in metrics.PERCENTILES}
    expect["max"] = int(ordered[-1])
    assert metrics.percentiles(v.copy(), extra) == expect
    assert metrics.percentiles(v.copy(), extra, scratch=True) == expect


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 2 * metrics.HDR_HIGHEST), max_size=300), st.integers(0, 20))
def test_hdr_histogram_equals_recording_one_by_one(values, extra):
    ref = HdrHistogram(metrics.HDR_LOWEST, metrics.HDR_HIGHEST, metrics.HDR_DIGITS)
    for v in values:
        assert ref.record_value(min(v, metrics.HDR_HIGHEST))
    if extra:
        assert ref.record_value(0, extra)
    h = metrics.hdr_histogram(np.array(values, np.int64), extra)
    assert list(h.counts) == list(ref.counts) and h.get_total_count() == ref.get_total_count()
    if values or extra:
        assert (h.min_value, h.max_value) == (ref.min_value, ref.max_value)
    back = HdrHistogram.decode(metrics.hdr_encoded(np.array(values, np.int64), extra))
    assert back.get_total_count() == len(values) + extra


def test_hdr_histogram_counts_every_value():
    v = np.array([1, 5, 5, 1000, 123_456_789], np.int64)
    h = metrics.hdr_histogram(v)
    assert h.get_total_count() == 5
    assert h.get_value_at_percentile(100) >= 123_456_789 * 0.999
    assert h.get_value_at_percentile(40) == 5


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=200),
       st.sampled_from(["auto", "bitmap", "hash"]), st.integers(0, 2**40))
def test_dense_ids_match_numpy_unique(values, method, offset):
    v = np.array(values, np.uint64)
    if method == "bitmap":       # the bitmap needs a bounded spread: use small values
        v = (v % np.uint64(5000)) + np.uint64(offset)
    ids, distinct = {"auto": dense_ids,
                     "bitmap": lambda x: _bitmap_ids(x, x.min(), int(x.max() - x.min()) + 1),
                     "hash": _hash_ids}[method](v)
    u, inv = np.unique(v, return_inverse=True)
    assert distinct.tolist() == u.tolist()
    assert ids.tolist() == inv.ravel().tolist()
    assert ids.dtype == np.int32


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=200),
       st.lists(st.integers(0, 200), max_size=4), st.booleans(),
       st.sampled_from([5000, 200_000, None]))
def test_dense_ids_of_chunks_with_a_flip_match_numpy_unique(values, cuts, flip, spread):
    """A column's chunks taken as one, each value XORed with ``flip`` (the sign bit: int64
    order), by each method: values within 5,000 of each other take the table, within 200,000
    the bitmap, any the hash."""
    v = np.array(values, np.int64)
    if spread:
        v %= spread
    chunks = np.split(v, sorted(c % (len(v) + 1) for c in cuts))
    ids, distinct = dense_ids(chunks, flip=1 << 63 if flip else 0)
    if flip:        # flipped, the ranks are those of the signed values
        u, inv = np.unique(v, return_inverse=True)
        assert (distinct ^ np.uint64(1 << 63)).view(np.int64).tolist() == u.tolist()
    else:
        u, inv = np.unique(v.view(np.uint64), return_inverse=True)
        assert distinct.tolist() == u.tolist()
    assert ids.tolist() == inv.ravel().tolist()


def _group_stats_by_hand(names, codes, waits, extra, holds, spin_limit):
    """Per group, the obvious way: a boolean mask per code."""
    out = {}
    for g, name in enumerate(names):
        sel = codes == g
        if not sel.any():
            continue
        w, h = waits[sel], holds[sel]
        spin = int(np.minimum(w, spin_limit).sum()) if spin_limit > 0 else 0
        out[name] = {
            "acquisitions": int(sel.sum() + extra[sel].sum()),
            "contended": int((w > 0).sum()), "wait_ns": int(w.sum()),
            "spin_ns": spin, "block_ns": int(w.sum()) - spin,
            "contended_wait_percentiles_ns": metrics.percentiles(w[w > 0]),
            "hold_percentiles_ns": metrics.percentiles(h[h >= 0]),
        }
    return out


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3) | st.integers(0, 10**9),
                          st.integers(0, 511), st.integers(-1, 10**6)), max_size=200),
       st.sampled_from([0, 1, 500, 10**6]))
def test_group_stats_match_masks_per_group(rows, spin_limit):
    from pvtrace.replay.run import _group_stats

    names = ["pv", "pvc", "pmap", "op_a", "op_b"]
    codes, waits, extra, holds = (np.array([r[i] for r in rows], dtype)
                                  for i, dtype in enumerate((np.int16, np.int64, np.int16,
                                                             np.int64)))
    got = _group_stats(names, codes, waits, extra, holds, spin_limit)
    assert got == _group_stats_by_hand(names, codes, waits, extra, holds, spin_limit)
    assert list(got) == [n for g, n in enumerate(names) if (codes == g).any()]   # code order
