"""Issue 5 acceptance: replaying a synthetic stock capture predicts each design's ground truth.

For several seeds and both stock layouts, the same work runs on the simulated ``stock``,
``obm-pvc`` and ``obm`` kernels. Replaying the stock capture as ``stock`` must reproduce its
own waits within 1 %; replaying it as ``obm-pvc``/``obm`` must predict the waits the simulated
kernel of that design measured within 5 % (total) and 10 % (p99 of contended waits).
The full table: ``scripts/synth_accuracy.py``.
"""

from __future__ import annotations

import pytest

from pvtrace.synth import synthesize, write

try:
    from pvtrace.bundle import open_bundle
    from pvtrace.ingest import run_ingest
    from pvtrace.replay.run import observed_events, replay_events
except ImportError as exc:  # the replay or ingest is not there yet
    pytest.skip(f"replay/ingest API not importable ({exc}): pvtrace.replay.run.replay_events "
                "is needed", allow_module_level=True)

DESIGNS = ("stock", "obm-pvc", "obm")


# wakeup: the latency of a sleeper's wakeup, which lockstat's sleep times (B records) include
@pytest.mark.parametrize("seed,layout,spin_limit,wakeup", [
    (1, "superpage", 10_000, 0), (2, "superpage", 0, 2_000), (3, "superpage", 10_000, 500),
    (1, "hash:256", 0, 0), (2, "hash:256", 10_000, 2_000), (3, "hash:256", 0, 0),
])
def test_replay_predicts_ground_truth(tmp_path, seed, layout, spin_limit, wakeup):
    caps = {d: synthesize(kernel=d, layout=layout, threads=8, duration_ms=4, seed=seed,
                          spin_limit_ns=spin_limit, wakeup_ns=wakeup) for d in DESIGNS}
    log = tmp_path / "stock.log.gz"
    write(log, caps["stock"].text)
    run_ingest([str(log)], str(tmp_path / "b"))
    events = open_bundle(str(tmp_path / "b")).table("events")
    assert observed_events(events)["wait_ns"] == caps["stock"].truth["wait_ns"]
    assert caps["stock"].truth["wait_ns"] > 0
    for design in DESIGNS:
        truth = caps[design].truth
        pred = replay_events(events, captured_layout=layout, model=design,
                             spin_limit_ns=spin_limit, wakeup_ns=wakeup)
        # The synthetic capture records every page (see sample_traces/README.md for how a
        # real one differs): the replay then predicts the simulated design exactly.
        for k in ("acquisitions", "contended", "wait_ns", "spin_ns", "block_ns",
                  "sibling_wakeups", "makespan_ns", "contended_wait_percentiles_ns"):
            assert pred[k] == truth[k], (design, k, pred[k], truth[k])


TRUTH = ("acquisitions", "contended", "wait_ns", "spin_ns", "block_ns", "sibling_wakeups",
         "makespan_ns", "contended_wait_percentiles_ns")


# (threads, ms, seed, spin limit, wakeup): spins, sleeps and wakeups occur; the second is a
# case where a thread asked for a lock while its holder, granted, was still waking up (the
# simulator had applied the holder's coming page moves ahead of their time, and logged
# sleeps without their wakeup: true/false blocks and waits differed)
RUNS = [(6, 1.5, 7, 1_000, 700), (3, 0.5, 4, 0, 5_000)]


@pytest.mark.parametrize("workload", ["buildkernel", "faults", "exits"])
@pytest.mark.parametrize("layout", ["superpage", "hash:256"])
@pytest.mark.parametrize("kernel", DESIGNS)
@pytest.mark.parametrize("run", RUNS)
def test_replaying_the_simulated_design_reproduces_every_number(tmp_path, run, kernel, layout,
                                                                 workload):
    threads, ms, seed, spin, wakeup = run
    cap = synthesize(kernel=kernel, layout=layout, threads=threads, duration_ms=ms, seed=seed,
                     workload=workload, spin_limit_ns=spin, wakeup_ns=wakeup)
    log = tmp_path / "c.log"
    write(log, cap.text)
    run_ingest([str(log)], str(tmp_path / "b"))
    events = open_bundle(str(tmp_path / "b")).table("events")
    got = replay_events(events, captured_layout=layout, model=kernel, spin_limit_ns=spin,
                        wakeup_ns=wakeup)
    truth = cap.truth
    assert truth["contended"] > 0 or kernel != "stock"   # (OBM faults may not wait at all)
    assert {k: got[k] for k in TRUTH} == {k: truth[k] for k in TRUTH}
    for kind in ("false_block", "true_block"):
        assert (got[kind]["count"], got[kind]["wait_ns"]) == \
            (truth[kind]["count"], truth[kind]["wait_ns"]), kind


def test_promotions_are_recorded_as_pvtrace_d_records_them_and_replay_exactly(tmp_path):
    # pvtrace.d prints no E/X for pmap_promote_pde (it runs inside pmap_enter, holding its pv
    # lock): a P 2m named after it, then a P back to the page mapped, then pmap_enter's R.
    caps = {d: synthesize(kernel=d, layout="superpage", threads=8, duration_ms=8, seed=5,
                          workload="faults") for d in DESIGNS}
    rows = [line.split() for line in caps["stock"].text.splitlines()
            if not line.startswith("#")]
    promote = [k for k, r in enumerate(rows) if r[3] == "P" and r[9] == "pmap_promote_pde"]
    assert promote and all(rows[k][6] == "2m" for k in promote)
    assert not any(r[3] in ("E", "X") and r[9] == "pmap_promote_pde" for r in rows)
    for k in promote:               # the same thread's next record: the P back to its page
        nxt = next(r for r in rows[k + 1:] if r[2] == rows[k][2])
        assert (nxt[3], nxt[6], nxt[9]) == ("P", "4k", "pmap_enter")
    log = tmp_path / "stock.log"
    write(log, caps["stock"].text)
    run_ingest([str(log)], str(tmp_path / "b"))
    events = open_bundle(str(tmp_path / "b")).table("events")
    for design in DESIGNS:
        pred = replay_events(events, captured_layout="superpage", model=design,
                             spin_limit_ns=10_000)
        truth = caps[design].truth
        assert {k: pred[k] for k in TRUTH} == {k: truth[k] for k in TRUTH}, design
