"""A slow, obviously-correct reference of the replay (docs/REPLAY.md), on SimPy.

The fast engine in ``pvtrace/replay/`` is checked against this file on many small random
traces, so this file trades speed for readability: plain Python objects, one SimPy process per
thread, and an explicit dispatcher for REPLAY.md section 4's global order.

The pipeline, following REPLAY.md section by section:

1. ``_split_threads``: per-thread records, ``B``/``S`` attached to their ``A`` (the wait and the
   captured request time), ``A``/``R`` paired with a stack per (thread, lock), unmatched records
   noted (held at start / held at end).
2. ``_walk``: one design applied to one thread, producing its list of ``Step`` objects: which
   keys it acquires and releases, where its current page changes, in which order, with which
   captured start and end time (section 2 rules 1-5).
3. ``_Engine``: runs every thread's steps on SimPy (section 3 time rules and section 4 grants,
   spin/block, wakeup, turnstiles, true/false blocks, forced grants) and gathers the numbers
   of section 5.

Readings of REPLAY.md that the text leaves open are marked ``READING:`` in the comments.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

import polars as pl
import simpy

from pvtrace.models.layout import PAGES_PER_FRAME, Layout, frame_of, page_of

MODELS = ("stock", "obm-pvc", "obm", "obm-rw", "ideal")
_OBM = ("obm-pvc", "obm", "obm-rw")
_WAIT_EVENTS = ("B", "S")


# ---------------------------------------------------------------- section 1: records per thread

@dataclass
class Rec:
    """One captured record, plus what section 1 learns about it."""

    idx: int                 # position in the thread's own stream
    ts: int
    ev: str
    cls: str
    lock: int
    mode: str
    ns: int
    pa: int
    op: str = "-"
    wait: int = 0            # A: sum of the ns of its B/S records
    first_wait_idx: int | None = None   # A: index of its first B/S record
    attached: bool = False   # B/S: belongs to an A
    pair: int | None = None  # A: index of its R; R: index of its A (None: unmatched)

    @property
    def request(self) -> int:
        return self.ts - self.wait


def _split_threads(events: pl.DataFrame) -> dict[int, list[Rec]]:
    threads: dict[int, list[Rec]] = defaultdict(list)
    for row in events.iter_rows(named=True):
        recs = threads[int(row["tid"])]
        recs.append(Rec(len(recs), int(row["ts"]), row["ev"], row["cls"], int(row["lock"]),
                        row["mode"], int(row["ns"]), int(row["pa"]), row["op"]))
    for recs in threads.values():
        _attach_waits(recs)
        _pair_holds(recs)
    return dict(threads)


def _attach_waits(recs: list[Rec]) -> None:
    """A B/S attaches to the next A of the same lock if only B/S of that lock stand between."""
    for i, rec in enumerate(recs):
        if rec.ev not in _WAIT_EVENTS:
            continue
        j = i + 1
        while j < len(recs) and recs[j].ev in _WAIT_EVENTS and recs[j].lock == rec.lock:
            j += 1
        if j < len(recs) and recs[j].ev == "A" and recs[j].lock == rec.lock:
            rec.attached = True
            a = recs[j]
            a.wait += rec.ns
            if a.first_wait_idx is None:
                a.first_wait_idx = i


def _pair_holds(recs: list[Rec]) -> None:
    stacks: dict[int, list[Rec]] = defaultdict(list)
    for rec in recs:
        if rec.ev == "A":
            stacks[rec.lock].append(rec)
        elif rec.ev == "R" and stacks[rec.lock]:
            a = stacks[rec.lock].pop()
            a.pair, rec.pair = rec.idx, a.idx


def _thread_start(recs: list[Rec]) -> int:
    """First record; when that record is an acquisition (or its B/S), its request time."""
    first = recs[0]
    if first.ev == "A":
        return first.request
    if first.ev in _WAIT_EVENTS and first.attached:
        j = first.idx
        while recs[j].ev != "A":
            j += 1
        return recs[j].request
    return first.ts


# ---------------------------------------------------------------- section 2: designs and keys

@dataclass(frozen=True)
class PageSet:
    """A thread's current page: one 4 KiB page, one 2 MiB frame, or unknown."""

    size: str      # "4k", "2m" or "unknown"
    number: int    # page number for 4k, frame number for 2m

    @staticmethod
    def of(pa: int, size: str) -> PageSet:
        if pa == 0:
            return PageSet("unknown", 0)
        return PageSet("2m", frame_of(pa)) if size == "2m" else PageSet("4k", page_of(pa))

    def intersects(self, other: PageSet) -> bool:
        if self.size == "unknown" or other.size == "unknown":
            return True
        if self.size == other.size:
            return self.number == other.number
        small, big = (self, other) if self.size == "4k" else (other, self)
        return small.number // PAGES_PER_FRAME == big.number


@dataclass(frozen=True)
class KeySpec:
    """What a hold holds under a design: a single key, or a 2m run of page keys.

    ``keys`` are the keys actually executed (REPLAY.md 2.5), ``count`` the acquisitions the
    design performs for it (512 for an OBM 2m run).
    """

    keys: tuple
    count: int


# A pv hold without a page under a per-page design: it holds no key until a P names its page
# (REPLAY.md 2).
KEYLESS = KeySpec((), 0)


@dataclass
class Design:
    model: str
    captured: Layout
    layout: Layout
    touched_pages: frozenset     # every 4 KiB page number some record of the trace names
    lock_slot: dict = field(default_factory=dict)   # stock, captured layout: see pv_key
    captured_slot: dict = field(default_factory=dict)   # see key_c

    def pv_key(self, pa: int, size: str, lock: int) -> KeySpec | None:
        """keyD of a pv request; None when the design removes the pv lock."""
        if self.model == "ideal":
            # READING: "keyed by its lock address under every design" vs. the table's "removed"
            # for ideal; SPEC 3 says a design without a lock performs none on it: removed.
            return None
        if pa == 0:
            # Under stock with the captured layout, a pv lock whose records with a page all
            # name one slot is that slot: its page-less records take that key (REPLAY.md 2).
            if lock in self.lock_slot:
                return KeySpec((("pv", self.lock_slot[lock]),), 1)
            if self.model != "stock":
                return KEYLESS
            return KeySpec((("lock", lock),), 1)
        if self.model == "stock":
            return KeySpec((("pv", self.layout.slot(pa)),), 1)
        if size == "2m":
            frame = frame_of(pa)
            first = frame * PAGES_PER_FRAME
            pages = sorted({first} | {p for p in self.touched_pages
                                      if p // PAGES_PER_FRAME == frame})
            return KeySpec(tuple(("pg", p) for p in pages), PAGES_PER_FRAME)
        return KeySpec((("pg", page_of(pa)),), 1)

    def pv_mode(self, mode: str) -> str:
        return mode if self.model in ("stock", "obm-rw") else "w"

    def other_key(self, cls: str, lock: int) -> KeySpec | None:
        if cls == "pvc" and self.model in ("obm", "obm-rw", "ideal"):
            return None
        return KeySpec((("lock", lock),), 1)

    def key_c(self, pa: int, lock: int):
        """keyC: the captured kernel's pv lock slot for a page. For an unknown page (pa 0),
        the slot of the hold's lock when the lock's records with a page all name one slot
        of the captured layout, else the lock address."""
        if pa == 0:
            if lock in self.captured_slot:
                return ("slot", self.captured_slot[lock])
            return ("lock", lock)
        return ("slot", self.captured.slot(pa))

    def turnstile(self, key) -> tuple:
        if key[0] == "pg":
            return ("ts", self.layout.slot(key[1] << 12))
        return key


# ---------------------------------------------------------------- steps of one thread

@dataclass
class Step:
    """One thing a thread does at one instant (REPLAY.md 3 and 4).

    ``cap_start``/``cap_end``: captured start and end (an acquisition starts at its captured
    request time and ends at its captured ``A`` time). Acquisitions have priority 1, everything
    else 0.
    """

    kind: str                      # "acquire", "release", "move", "cut", "end"
    cap_start: int
    cap_end: int
    key: tuple | None = None       # acquire: the one key requested
    mode: str = "w"
    cls: str = ""
    op: str = "-"                  # acquire: the pmap operation it counts for
    page: PageSet | None = None    # new current page (set before anything else of the step)
    releases: tuple = ()           # keys released by this step, in this order

    @property
    def priority(self) -> int:
        return 1 if self.kind == "acquire" else 0


@dataclass
class Hold:
    """A captured hold (A..R) and what the design holds for it right now."""

    cls: str
    lock: int
    mode: str                      # mode under the design
    spec: KeySpec | None           # None: the design removes this lock


@dataclass
class ThreadPlan:
    tid: int
    start: int
    steps: list[Step]
    acquisitions: dict[str, int]   # per class, what the design performs
    op_acquisitions: dict[str, int]    # the same per pmap operation


def _acquire_steps(spec: KeySpec, mode: str, cls: str, start: int, end: int,
                   page: PageSet | None, op: str) -> list[Step]:
    """A 2m run is acquired one page at a time, each page its own step (REPLAY.md 2.5)."""
    steps = []
    for n, key in enumerate(spec.keys):
        first = n == 0
        steps.append(Step("acquire", start if first else end, end, key=key, mode=mode, cls=cls,
                          op=op, page=page if first else None))
    return steps


def _sizes(recs: list[Rec]) -> dict[int, str]:
    """The size of each pv-list A: "2m" when it takes the frame the thread's latest P 2m
    announced (no pv A, E or X between; REPLAY.md 2, rule 1), else "4k"."""
    sizes: dict[int, str] = {}
    pending = None
    for r in recs:
        if r.ev == "P":
            pending = r.pa if r.mode == "2m" and r.pa else None
        elif r.ev == "A" and r.cls == "pv":
            sizes[r.idx] = "2m" if pending is not None and r.pa == pending else "4k"
            pending = None
        elif r.ev in ("E", "X"):
            pending = None
    return sizes


def _walk(tid: int, recs: list[Rec], design: Design, capture_start: int,
          capture_end: int) -> ThreadPlan:
    tid_start = _thread_start(recs)
    if any(r.ev == "R" and r.pair is None for r in recs):
        # It held a lock when the capture began: from the capture's first record on.
        tid_start = min(tid_start, capture_start)
    size_of = _sizes(recs)
    steps: list[Step] = []
    acq: dict[str, int] = defaultdict(int)
    acq_op: dict[str, int] = defaultdict(int)
    holds: dict[int, Hold] = {}            # open holds by the index of their A (or R)
    open_order: list[int] = []             # open holds, oldest first
    carried: KeySpec | None = None         # pv key kept across a switch pair (rule 2)
    cur_pa = 0                             # current page (REPLAY.md 2.3: "previous page")

    def design_hold(cls: str, lock: int, mode: str, pa: int, size: str = "4k") -> Hold:
        if cls == "pv":
            return Hold(cls, lock, design.pv_mode(mode), design.pv_key(pa, size, lock))
        return Hold(cls, lock, mode, design.other_key(cls, lock))

    def acquire(hold: Hold, start: int, end: int, page: PageSet | None, op: str) -> None:
        if hold.spec is None or hold.spec == KEYLESS:
            # A removed lock keeps the work and loses the wait: the timeline is cut at the
            # captured request time and resumes from the captured A time.
            steps.append(Step("cut", start, end))
            return
        acq[hold.cls] += hold.spec.count
        acq_op[op] += hold.spec.count
        steps.extend(_acquire_steps(hold.spec, hold.mode, hold.cls, start, end, page, op))

    def open_pv() -> Hold | None:
        for k in reversed(open_order):
            if holds[k].cls == "pv":
                return holds[k]
        return None

    # Held at start: synthesized acquisitions without wait at the thread's start.
    # READING: in reverse order of their R records (the last released was taken first).
    unmatched_r = [r for r in recs if r.ev == "R" and r.pair is None]
    # READING: pmap.c holds one pv lock at a time; of several pv locks held at the start
    # (records lost), the one released first is held, the others' releases do nothing.
    first_pv = next((r for r in unmatched_r if r.cls == "pv"), None)
    for r in reversed(unmatched_r):
        if r.cls == "pv" and r is not first_pv:
            continue
        hold = design_hold(r.cls, r.lock, r.mode, r.pa)
        holds[r.idx] = hold
        open_order.append(r.idx)
        page = PageSet.of(r.pa, "4k") if r.cls == "pv" else None
        if r.cls == "pv":
            cur_pa = r.pa
        acquire(hold, tid_start, tid_start, page, r.op)

    def prev_record(a: Rec) -> Rec | None:
        i = (a.first_wait_idx if a.first_wait_idx is not None else a.idx) - 1
        return recs[i] if i >= 0 else None

    def next_record(r: Rec) -> Rec | None:
        for j in range(r.idx + 1, len(recs)):
            if recs[j].ev not in _WAIT_EVENTS:
                return recs[j]
        return None

    for rec in recs:
        if rec.ev == "A":
            size = size_of.get(rec.idx, "4k")
            hold = design_hold(rec.cls, rec.lock, rec.mode, rec.pa, size)
            holds[rec.idx] = hold
            open_order.append(rec.idx)
            if rec.cls != "pv":
                acquire(hold, rec.request, rec.ts, None, rec.op)
                continue
            cur_pa = rec.pa
            page = PageSet.of(rec.pa, size)
            prev = prev_record(rec)
            switch_pair = prev is not None and prev.ev == "R" and prev.cls == "pv"
            # READING (FORMATS.md, nested_pv_holds): a pv lock taken while one is held
            # (records were lost) releases the held one first; its R then does nothing.
            nested = next((k for k in reversed(open_order[:-1]) if holds[k].cls == "pv"),
                          None)
            if nested is not None:
                old = holds.pop(nested)
                open_order.remove(nested)
                if old.spec is not None:
                    steps.append(Step("release", rec.request, rec.request,
                                      releases=old.spec.keys))
            if hold.spec is None or hold.spec == KEYLESS:
                steps.append(Step("cut", rec.request, rec.ts))
            elif switch_pair and carried is not None and hold.spec == carried:
                # Rule 1: no switch under this design; the captured wait disappears.
                steps.append(Step("move", rec.request, rec.ts, page=page))
            else:
                acquire(hold, rec.request, rec.ts, page, rec.op)
            carried = None
        elif rec.ev == "R":
            key_idx = rec.pair if rec.pair is not None else rec.idx
            if key_idx not in holds:        # its hold was released by a nested A
                continue
            hold = holds.pop(key_idx)
            open_order.remove(key_idx)
            if hold.spec is None or hold.spec == KEYLESS:
                continue
            if rec.cls == "pv":
                nxt = next_record(rec)
                # READING: a switch pair names two captured locks (CHANGE_PV_LIST_LOCK never
                # releases a lock to take it again): an R and an A of one lock are real.
                if (nxt is not None and nxt.ev == "A" and nxt.cls == "pv"
                        and nxt.lock != rec.lock
                        and design.pv_key(nxt.pa, size_of[nxt.idx], nxt.lock) == hold.spec
                        and design.pv_mode(nxt.mode) == hold.mode):
                    carried = hold.spec      # rule 2: nothing happens
                    continue
            steps.append(Step("release", rec.ts, rec.ts, releases=hold.spec.keys))
        elif rec.ev == "P":
            hold = open_pv()
            if hold is None:
                continue
            size = "2m" if rec.mode == "2m" else "4k"
            page = PageSet.of(rec.pa, size)
            new = design.pv_key(rec.pa, size, hold.lock)
            if hold.spec == KEYLESS:
                steps.append(Step("move", rec.ts, rec.ts, page=page))
                if design.key_c(rec.pa, hold.lock) == design.key_c(cur_pa, hold.lock):
                    # It learns its page under the lock the captured kernel kept: it takes
                    # that page's key (rule 3 without a key to release).
                    hold.spec = new
                    acq["pv"] += new.count
                    acq_op[rec.op] += new.count
                    steps.extend(_acquire_steps(new, hold.mode, "pv", rec.ts, rec.ts, None,
                                                rec.op))
                cur_pa = rec.pa
                continue
            if (new != hold.spec
                    and design.key_c(rec.pa, hold.lock) == design.key_c(cur_pa, hold.lock)):
                # Rule 3: the captured kernel kept its lock, this design switches.
                steps.append(Step("move", rec.ts, rec.ts, page=page, releases=hold.spec.keys))
                hold.spec = new
                acq["pv"] += new.count
                acq_op[rec.op] += new.count
                steps.extend(_acquire_steps(new, hold.mode, "pv", rec.ts, rec.ts, None, rec.op))
            else:
                steps.append(Step("move", rec.ts, rec.ts, page=page))
            cur_pa = rec.pa

    # Held at end: released at the capture's last timestamp, innermost first.
    for k in reversed(open_order):
        hold = holds[k]
        if hold.spec is not None:
            steps.append(Step("release", capture_end, capture_end, releases=hold.spec.keys))
    last = recs[-1].ts
    steps.append(Step("end", last, last))
    return ThreadPlan(tid, tid_start, steps, dict(acq), dict(acq_op))


# ---------------------------------------------------------------- sections 3 and 4: the engine

@dataclass
class Waiter:
    tid: int
    key: tuple
    mode: str
    cls: str
    op: str
    request: int
    granted: simpy.Event
    true_block: bool = False


@dataclass
class KeyState:
    holders: list = field(default_factory=list)     # [(tid, mode, start)], one per hold
    queue: deque = field(default_factory=deque)     # of Waiter

    def free(self) -> bool:
        return not self.holders

    def read_held(self) -> bool:
        return bool(self.holders) and all(m == "r" for _, m, _ in self.holders)


class _Engine:
    def __init__(self, plans: list[ThreadPlan], design: Design, spin_limit_ns: int,
                 wakeup_ns: int):
        self.env = simpy.Environment()
        self.design = design
        self.L = spin_limit_ns
        self.wakeup = wakeup_ns
        self.plans = {p.tid: p for p in plans}
        self.keys: dict[tuple, KeyState] = defaultdict(KeyState)
        self.page: dict[int, PageSet] = {}        # current page per thread
        self.agenda: list[tuple[int, int, Step, simpy.Event]] = []   # (priority, tid, ...)
        self.waiting: dict[int, Waiter] = {}
        self.ended: dict[int, int] = {}
        # results
        self.waits: list[int] = []
        self.holds: list[int] = []
        self.class_waits: dict[str, list[int]] = defaultdict(list)
        self.op_waits: dict[str, list[int]] = defaultdict(list)
        self.thread_waits: dict[int, list[int]] = defaultdict(list)
        self.spin = self.block = 0
        self.true_count = self.true_ns = self.false_count = self.false_ns = 0
        self.sibling = 0
        self.forced = 0

    # -- SimPy processes

    def thread(self, plan: ThreadPlan):
        env = self.env
        yield env.timeout(plan.start - env.now)
        prev_cap_end = plan.start
        for step in plan.steps:
            yield env.timeout(max(0, step.cap_start - prev_cap_end))
            done = env.event()
            self.agenda.append((step.priority, plan.tid, step, done))
            wait = yield done
            if step.kind == "acquire" and wait > self.L:
                yield env.timeout(self.wakeup)
            prev_cap_end = step.cap_end
        self.ended[plan.tid] = env.now

    def dispatcher(self):
        """Executes pending steps in (time, priority, tid) order, one at a time.

        SimPy orders same-time events by scheduling order, so before each choice the dispatcher
        lets every other event of the current instant run (threads whose gap ends now register
        their step in the agenda); only then it executes the smallest (priority, tid).
        """
        env = self.env
        while True:
            while env.peek() == env.now:
                yield env.timeout(0)
            if self.agenda:
                entry = min(self.agenda, key=lambda e: (e[0], e[1]))
                self.agenda.remove(entry)
                _, tid, step, done = entry
                self.execute(tid, step, done)
                continue
            if env.peek() == float("inf"):
                if not self.waiting:
                    return
                self.force_grant()
                continue
            yield env.timeout(env.peek() - env.now)

    # -- steps

    def execute(self, tid: int, step: Step, done: simpy.Event) -> None:
        if step.page is not None:
            self.page[tid] = step.page
        freed = [key for key in step.releases if self.release(tid, key)]
        if freed:
            self.sibling_wakeups(freed)
        if step.kind == "acquire":
            self.request(tid, step, done)
        else:
            done.succeed(0)

    def request(self, tid: int, step: Step, done: simpy.Event) -> None:
        state = self.keys[step.key]
        w = Waiter(tid, step.key, step.mode, step.cls, step.op, self.env.now, done)
        if not state.queue and (state.free() or (state.read_held() and step.mode == "r")):
            state.holders.append((tid, step.mode, self.env.now))
            self.record(w, 0)
            done.succeed(0)
            return
        if step.cls == "pv":
            mine = self.page.get(tid, PageSet("unknown", 0))
            blockers = [t for t, _, _ in state.holders] + [q.tid for q in state.queue]
            w.true_block = any(self.page.get(b, PageSet("unknown", 0)).intersects(mine)
                               for b in blockers)
        state.queue.append(w)
        self.waiting[tid] = w

    def release(self, tid: int, key: tuple) -> bool:
        """``tid`` releases ``key`` and its waiters are granted; True when the release left
        the key free (a reader leaving other readers behind frees nothing)."""
        state = self.keys[key]
        # the thread's latest hold of the key (a recursive read lock pairs last in, first out)
        for i in range(len(state.holders) - 1, -1, -1):
            holder, _, start = state.holders[i]
            if holder == tid:
                del state.holders[i]
                self.holds.append(self.env.now - start)
                break
        else:
            raise AssertionError(f"thread {tid} releases {key} it does not hold")
        became_free = state.free()
        while state.queue:
            head = state.queue[0]
            if head.mode == "w" and state.free():
                self.grant(state.queue.popleft())
                break
            if head.mode == "r" and not any(m == "w" for _, m, _ in state.holders):
                self.grant(state.queue.popleft())
                continue
            break
        return became_free

    def sibling_wakeups(self, freed: list[tuple]) -> None:
        """One release (one key, or a 2m run's) freed ``freed``: every asleep waiter on their
        turnstiles whose own key it did not free is woken for nothing, once (REPLAY.md 4)."""
        turnstiles = {self.design.turnstile(k) for k in freed}
        for w in self.waiting.values():
            if (w.key not in freed and self.design.turnstile(w.key) in turnstiles
                    and self.env.now - w.request > self.L):
                self.sibling += 1

    def grant(self, w: Waiter) -> None:
        del self.waiting[w.tid]
        wait = self.env.now - w.request
        if wait > self.L:       # asleep: the wait lasts until the thread runs (REPLAY.md 4)
            wait += self.wakeup
        # the lock is its own from the grant; its hold starts when it runs
        self.keys[w.key].holders.append((w.tid, w.mode, w.request + wait))
        self.record(w, wait)
        w.granted.succeed(wait)

    def force_grant(self) -> None:
        w = min(self.waiting.values(), key=lambda q: (q.request, q.tid))
        self.keys[w.key].queue.remove(w)
        self.forced += 1
        self.grant(w)

    def record(self, w: Waiter, wait: int) -> None:
        self.waits.append(wait)
        self.thread_waits[w.tid].append(wait)
        self.class_waits[w.cls].append(wait)
        self.op_waits[w.op].append(wait)
        spin = min(wait, self.L)
        self.spin += spin
        self.block += wait - spin
        if wait > 0 and w.cls == "pv":
            if w.true_block:
                self.true_count += 1
                self.true_ns += wait
            else:
                self.false_count += 1
                self.false_ns += wait

    def run(self) -> None:
        for plan in self.plans.values():
            self.env.process(self.thread(plan))
        self.env.process(self.dispatcher())
        self.env.run()
        missing = set(self.plans) - set(self.ended)
        assert not missing, f"threads never ended: {missing}"


# ---------------------------------------------------------------- entry point

def reference_replay(events: pl.DataFrame, *, captured_layout: str, model: str,
                     layout: str | None = None, spin_limit_ns: int = 0,
                     wakeup_ns: int = 0) -> dict:
    """Replay ``events`` (a bundle's events table, sorted by ts) under one design."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}")
    captured = Layout.parse(captured_layout)
    # READING: the pages "some record touches" are those of pv lock records and P records
    # (the only records whose page can become a key); E/X and other classes' pages are not.
    touching = events.filter(((pl.col("cls") == "pv") | (pl.col("ev") == "P"))
                             & (pl.col("pa") != 0))
    replayed = Layout.parse(layout) if layout else captured
    slots: dict[int, set] = defaultdict(set)
    for lock, pa in events.filter(
            (pl.col("cls") == "pv") & pl.col("ev").is_in(["A", "R", "B", "S"])
            & (pl.col("pa") != 0)).select("lock", "pa").iter_rows():
        slots[lock].add(captured.slot(pa))
    captured_slot = {lock: next(iter(s)) for lock, s in slots.items() if len(s) == 1}
    lock_slot = captured_slot if model == "stock" and replayed == captured else {}
    design = Design(model, captured, replayed,
                    frozenset(page_of(int(pa)) for pa in touching["pa"].to_list()), lock_slot,
                    captured_slot)
    threads = _split_threads(events)
    capture_end = int(events["ts"].max()) if events.height else 0
    capture_start = int(events["ts"].min()) if events.height else 0
    plans = [_walk(tid, recs, design, capture_start, capture_end)
             for tid, recs in sorted(threads.items())]
    engine = _Engine(plans, design, spin_limit_ns, wakeup_ns)
    engine.run()

    acquisitions: dict[str, int] = defaultdict(int)
    for plan in plans:
        for cls, n in plan.acquisitions.items():
            acquisitions[cls] += n
    by_class = {}
    for cls, n in sorted(acquisitions.items()):
        if n == 0:
            continue
        waits = engine.class_waits.get(cls, [])
        by_class[cls] = {"acquisitions": n, "contended": sum(1 for w in waits if w > 0),
                         "wait_ns": sum(waits)}
    by_op = {}
    op_acquisitions: dict[str, int] = defaultdict(int)
    for plan in plans:
        for op, n in plan.op_acquisitions.items():
            op_acquisitions[op] += n
    for op, n in sorted(op_acquisitions.items()):
        if n:
            waits = engine.op_waits.get(op, [])
            by_op[op] = {"acquisitions": n, "contended": sum(1 for w in waits if w > 0),
                         "wait_ns": sum(waits)}
    starts = [p.start for p in plans]
    return {
        "acquisitions": sum(acquisitions.values()),
        "contended": sum(1 for w in engine.waits if w > 0),
        "wait_ns": sum(engine.waits),
        "spin_ns": engine.spin,
        "block_ns": engine.block,
        "false_block": {"count": engine.false_count, "wait_ns": engine.false_ns},
        "true_block": {"count": engine.true_count, "wait_ns": engine.true_ns},
        "sibling_wakeups": engine.sibling,
        "makespan_ns": (max(engine.ended.values()) - min(starts)) if plans else 0,
        "by_class": by_class,
        "by_op": by_op,
        "waits": sorted(engine.waits),
        "holds": sorted(engine.holds),
        "forced_grants": engine.forced,
        # every executed acquisition's wait, per lock class, operation and thread (the engine's
        # percentiles and per-thread totals are checked against these)
        "class_waits": {c: sorted(w) for c, w in engine.class_waits.items()},
        "op_waits": {o: sorted(w) for o, w in engine.op_waits.items()},
        "thread_waits": {t: sorted(w) for t, w in engine.thread_waits.items()},
    }
