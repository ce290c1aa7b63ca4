"""Thread programs for the synthetic kernel: what each CPU does, independent of the lock design.

A capture from ``pvtrace synth`` is meant to be ground truth for the replay: the same seed and
workload must give every simulated kernel (``stock``, ``obm-pvc``, ``obm``) exactly the same
work, so that the only thing that differs between kernels is how long threads wait for locks.
So the work is generated first, from the seed alone, as one *program* per thread; the kernel
simulator (:mod:`pvtrace.synth.kernel_sim`) then executes the programs under a lock design.

A program is a list of :data:`Instr` tuples ``(gap_ns, kind, a, b, c, op)``: the thread works
(runs, without locks it does not already hold) for ``gap_ns`` after the previous instruction
ended, then does ``kind``:

- ``E``/``X``: enters / returns from pmap function ``op``;
- ``ACQ_PMAP``/``REL_PMAP``: the pmap mutex of address space ``a``;
- ``ACQ_PVC``/``REL_PVC``: the pv-chunk-list mutex of NUMA domain ``a``;
- ``PV_TO``: ``CHANGE_PV_LIST_LOCK_TO_PHYS``: make the held pv-list lock the one covering page
  ``a`` (size ``b``: 4 KiB or 2 MiB, mode ``c``); if the design's key is the one already held
  nothing happens, otherwise the held lock is released and the new one acquired. When the
  instruction's op is set and ``c`` has :data:`WITH_P`, a ``P`` record (page touch) is emitted
  first, as the capture script does at ``pmap_remove_pte``-like entry points;
- ``PV_REL``: release the held pv-list lock.

The buildkernel model (:class:`BuildParams`): each CPU runs short compiler processes back to
back. A process maps shared text (the same physical pages in every process: the compiler and
libc in the page cache), faults anonymous memory from its own 2 MiB reservations (so its pages
cluster in few frames), occasionally runs page-daemon style queries, and at exit tears its
address space down with ``pmap_remove_pages``. All pages live in ``mem_gb`` of physical memory.
Variants: ``faults`` (processes that never exit within the capture: a fault storm) and
``exits`` (tiny processes: teardown dominates).

Where the stock kernel loses time in this model: the shared text sits in a few 2 MiB frames,
so under the stock layouts every text fault of every CPU takes one of a handful of frame (or
hash-slot) locks, and an exiting process holds each of them for its whole walk over the text
pages it mapped. Under OBM those are different locks unless the page is the same.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace

import numpy as np

from pvtrace.errors import PvtraceError
from pvtrace.models.layout import PAGE_SHIFT, PAGES_PER_FRAME, PDR_SHIFT

# Instruction kinds.
E, X, ACQ_PMAP, REL_PMAP, ACQ_PVC, REL_PVC, PV_TO, PV_REL = range(8)
SZ_4K, SZ_2M = 0, 1
MODE_W, MODE_R = 0, 1
WITH_P = 2                     # flag in PV_TO's mode field: emit a P record first

Instr = tuple[int, int, int, int, int, int]   # (gap_ns, kind, a, b, c, op)

OPS = ("-", "pmap_enter", "pmap_enter_quick", "pmap_enter_object", "pmap_promote_pde",
       "pmap_remove_pages", "pmap_ts_referenced", "pmap_is_modified",
       "pmap_page_exists_quick")
OP = {name: i for i, name in enumerate(OPS)}

PV_ENTRIES_PER_CHUNK = 168     # _NPCPV on amd64
WORKLOADS = ("buildkernel", "faults", "exits")


@dataclass(frozen=True, slots=True)
class BuildParams:
    """Parameters of the build-like workload, with the reasoning behind each default.

    Times are means of exponential draws unless said otherwise; they are what a ~3 GHz amd64
    core spends in each piece of ``vm_fault``/``pmap`` work, rounded.
    """

    # User mode between two page faults. A short-lived compiler faults in bursts (startup,
    # heap growth); 4 us between faults in those bursts gives the stock kernels of the seed
    # measurement a few per cent of CPU time waiting on pv-list locks, the regime in which
    # OBM's reported system-time savings are possible. Larger values give a quieter machine.
    user_gap_ns: int = 4_000
    # vm_fault work before pmap_enter: object lookup for a cached text page ...
    fault_text_ns: int = 1_500
    # ... and for an anonymous page, which also zeroes 4 KiB (about 1 us).
    fault_anon_ns: int = 2_500
    # Shared text actually executed: the hot part of cc1, libc and ld-elf, resident in the
    # page cache (8 MiB = 4 frames; file pages come from reservations too, so they are
    # contiguous within frames: under stock locks all its pages share 4 locks).
    text_pages: int = 2048
    # Popularity skew of text pages (Zipf exponent over a random permutation of the pool):
    # every process executes the same hot code, so hot pages are faulted by everyone.
    text_zipf: float = 1.05
    # Text faults (each followed by pmap_enter_quick on up to `prefault_pages` resident
    # neighbours, vm_fault_prefault) and anonymous pages per process (geometric / lognormal
    # means). A process whose heap fills a whole reservation gets it promoted.
    proc_text_faults: int = 120
    proc_anon_pages: int = 260
    anon_sigma: float = 0.9
    prefault_pages: int = 4
    # exec maps resident text with pmap_enter_object: runs of pages from the hot entry points.
    exec_object_runs: int = 2
    exec_object_pages: int = 32
    # Page-daemon and vm queries, per fault: pmap_ts_referenced (write, walks every mapping),
    # pmap_is_modified / pmap_page_exists_quick (read on the stock kernel).
    query_prob: float = 0.04
    # Work inside pmap functions.
    enter_pmap_ns: int = 250           # E -> pmap lock -> pv lock: pte lookup, ptp alloc
    enter_pv_hold_ns: int = 450        # pv entry insert, pte store, under the pv-list lock
    quick_pv_hold_ns: int = 300        # pmap_enter_quick_locked: no old mapping to check
    object_page_ns: int = 220          # per page of pmap_enter_object, under the pv lock
    chunk_alloc_hold_ns: int = 300     # pv chunk list manipulation under pvc
    promote_hold_ns: int = 8_000       # pmap_pv_promote_pde: 511 pv entries freed
    remove_page_ns: int = 130          # pmap_remove_pages per 4 KiB entry
    remove_2m_ns: int = 1_500          # pmap_remove_pages per 2 MiB entry
    chunk_free_ns: int = 40            # free_pv_chunk_batch per chunk, under pvc
    ts_ref_base_ns: int = 200          # pmap_ts_referenced: fixed part ...
    ts_ref_per_map_ns: int = 40        # ... plus per mapping (about one per running process)
    query_hold_ns: int = 180           # pmap_is_modified / pmap_page_exists_quick
    # Between processes: wait4, fork, exec of the next compiler.
    proc_gap_ns: int = 40_000


@dataclass(frozen=True, slots=True)
class Workload:
    """Everything the programs were generated from, and the programs themselves."""

    name: str
    seed: int
    threads: int
    duration_ms: float
    mem_gb: float
    ndomains: int
    programs: list[list[Instr]] = field(repr=False)
    processes: int = 0


class _Rand:
    """A thread's random stream, drawn in blocks (scalar numpy draws cost about a microsecond)."""

    BLOCK = 1 << 14

    def __init__(self, seed) -> None:
        self.gen = np.random.default_rng(seed)
        self._exp: list[float] = []
        self._uni: list[float] = []

    def exponential(self, mean: float) -> float:
        if not self._exp:
            self._exp = self.gen.standard_exponential(self.BLOCK).tolist()
        return mean * self._exp.pop()

    def random(self) -> float:
        if not self._uni:
            self._uni = self.gen.random(self.BLOCK).tolist()
        return self._uni.pop()

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def __getattr__(self, name):          # geometric, lognormal, integers, shuffle
        return getattr(self.gen, name)


def _exp(rng: _Rand, mean: int) -> int:
    return int(rng.exponential(mean)) if mean > 0 else 0


class _Memory:
    """Physical 2 MiB frames handed out as reservations, never reused within a capture."""

    def __init__(self, rng: np.random.Generator, mem_gb: float):
        nframes = int(mem_gb * 1024 / 2)
        low = 64                       # the first 128 MiB belong to the kernel image
        if nframes < low + 64:
            raise PvtraceError(f"--mem-gb {mem_gb} is too small: use at least 1")
        self.free = list(rng.permutation(np.arange(low, nframes, dtype=np.int64)))

    def frame(self) -> int:
        if not self.free:
            raise PvtraceError("synthetic memory exhausted: raise --mem-gb or shorten "
                               "--duration-ms")
        return int(self.free.pop())


class _Program:
    """Builds one thread's instruction list and keeps its nominal clock."""

    def __init__(self) -> None:
        self.code: list[Instr] = []
        self.clock = 0
        self.gap = 0                   # work pending before the next instruction

    def work(self, ns: int) -> None:
        self.gap += ns

    def emit(self, kind: int, a: int = 0, b: int = 0, c: int = 0, op: int = 0) -> None:
        self.code.append((self.gap, kind, a, b, c, op))
        self.clock += self.gap
        self.gap = 0


def _zipf_weights(n: int, s: float, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    w = w[rng.permutation(n)]
    return w / w.sum()


def generate(*, seed: int, threads: int, duration_ms: float, mem_gb: float = 16.0,
             ndomains: int = 1, workload: str = "buildkernel",
             params: BuildParams | None = None) -> Workload:
    """Generate every thread's program from the seed (the lock design plays no part)."""
    if workload not in WORKLOADS:
        raise PvtraceError(f"unknown workload {workload!r}: use one of {', '.join(WORKLOADS)}")
    if threads < 1 or threads > 1024:
        raise PvtraceError(f"--threads {threads}: use 1..1024")
    if duration_ms <= 0:
        raise PvtraceError("--duration-ms must be positive")
    p = params or BuildParams()
    if workload == "faults":           # fault storm: no exits within the capture
        p = replace(p, proc_anon_pages=100_000, proc_text_faults=100_000)
    elif workload == "exits":          # short processes: teardown dominates
        p = replace(p, proc_anon_pages=60, proc_text_faults=30, user_gap_ns=5_000)
    rng = np.random.default_rng(seed)
    mem = _Memory(rng, mem_gb)
    text_frames = [mem.frame() for _ in range((p.text_pages + PAGES_PER_FRAME - 1)
                                              // PAGES_PER_FRAME)]
    text = np.array([(text_frames[i // PAGES_PER_FRAME] << (PDR_SHIFT - PAGE_SHIFT))
                     + i % PAGES_PER_FRAME for i in range(p.text_pages)], dtype=np.int64)
    cdf = np.cumsum(_zipf_weights(p.text_pages, p.text_zipf, rng))
    pool = _TextPool(text, cdf)
    end_ns = int(duration_ms * 1_000_000)
    programs, nproc = [], 0
    for cpu in range(threads):
        trng = _Rand([seed, cpu])
        prog = _Program()
        prog.work(int(trng.uniform(0, p.user_gap_ns + p.proc_gap_ns)))
        domain = cpu * ndomains // threads
        pid = 0
        while prog.clock + prog.gap < end_ns:
            _process(prog, trng, mem, pool, p, (cpu << 20) + pid, domain, threads, end_ns)
            pid += 1
            nproc += 1
            prog.work(_exp(trng, p.proc_gap_ns))
        programs.append(prog.code)
    return Workload(workload, seed, threads, duration_ms, mem_gb, ndomains, programs, nproc)


class _TextPool:
    """The shared text pages and their popularity (cumulative weights)."""

    def __init__(self, pages: np.ndarray, cdf: np.ndarray):
        self.pages = pages
        self.cdf = cdf.tolist()
        self.set = {int(x) for x in pages}

    def pick_index(self, rng: _Rand) -> int:
        return min(bisect.bisect_right(self.cdf, rng.random()), len(self.pages) - 1)

    def pick(self, rng: _Rand) -> int:
        return int(self.pages[self.pick_index(rng)])


def _process(prog: _Program, rng: _Rand, mem: _Memory, text: _TextPool, p: BuildParams,
             pid: int, domain: int, nthreads: int, end_ns: int) -> None:
    """One process: exec prefault, faults, queries, exit (unless the capture ends first)."""
    entries: list[tuple[int, int]] = []     # pv entries in allocation order: (page, size)
    mapped: set[int] = set()
    chunks = 0

    def new_entry(page: int) -> None:
        nonlocal chunks
        entries.append((page, SZ_4K))
        mapped.add(page)
        if len(entries) > chunks * PV_ENTRIES_PER_CHUNK:   # get_pv_entry: new chunk
            chunks += 1
            prog.work(60)
            prog.emit(ACQ_PVC, domain, op=cur_op)
            prog.work(_exp(rng, p.chunk_alloc_hold_ns))
            prog.emit(REL_PVC, domain, op=cur_op)

    def enter(page: int, op: str, hold: int, promote_frame: int = -1) -> None:
        nonlocal cur_op
        cur_op = OP[op]
        prog.emit(E, op=cur_op)
        prog.work(80)
        prog.emit(ACQ_PMAP, pid, op=cur_op)
        prog.work(_exp(rng, p.enter_pmap_ns))
        new_entry(page)
        prog.emit(PV_TO, page, SZ_4K, MODE_W, op=cur_op)
        prog.work(_exp(rng, hold))
        if promote_frame >= 0:
            # pmap_promote_pde(), called by pmap_enter() with its pv lock: pvtrace.d prints no
            # E/X for it, names it as the operation of its records, and at its return prints a
            # P back to the page just mapped; pmap_enter() then releases the lock.
            cur_op = OP["pmap_promote_pde"]
            prog.work(300)
            prog.emit(PV_TO, promote_frame << (PDR_SHIFT - PAGE_SHIFT), SZ_2M,
                      MODE_W | WITH_P, op=cur_op)
            prog.work(_exp(rng, p.promote_hold_ns))
            cur_op = OP[op]
            prog.emit(PV_TO, page, SZ_4K, MODE_W | WITH_P, op=cur_op)
            prog.work(100)
        prog.emit(PV_REL, op=cur_op)
        prog.work(60)
        prog.emit(REL_PMAP, pid, op=cur_op)
        prog.work(40)
        prog.emit(X, op=cur_op)

    def query() -> None:
        nonlocal cur_op
        u = rng.random()
        if u < 0.4:
            name, page, mode = "pmap_ts_referenced", text.pick(rng), MODE_W
            hold = p.ts_ref_base_ns + p.ts_ref_per_map_ns * nthreads
        elif u < 0.7 or not anon_pages:
            name, page, mode = "pmap_page_exists_quick", text.pick(rng), MODE_R
            hold = p.query_hold_ns
        else:
            page = anon_pages[int(rng.random() * len(anon_pages))]
            name, mode = "pmap_is_modified", MODE_R
            hold = p.query_hold_ns
        cur_op = OP[name]
        prog.emit(E, op=cur_op)
        prog.work(100)
        prog.emit(PV_TO, page, SZ_4K, mode, op=cur_op)
        prog.work(_exp(rng, hold))
        prog.emit(PV_REL, op=cur_op)
        prog.work(50)
        prog.emit(X, op=cur_op)

    cur_op = 0
    anon_pages: list[int] = []
    # exec: pmap_enter_object over runs of resident text from hot entry points.
    for _ in range(p.exec_object_runs):
        start = text.pick_index(rng)
        run = [int(x) for x in text.pages[start:start + p.exec_object_pages]
               if int(x) not in mapped]
        if not run:
            continue
        cur_op = OP["pmap_enter_object"]
        prog.work(_exp(rng, p.fault_text_ns))
        prog.emit(E, op=cur_op)
        prog.work(80)
        prog.emit(ACQ_PMAP, pid, op=cur_op)
        for page in run:
            prog.work(_exp(rng, 60))
            new_entry(page)
            prog.emit(PV_TO, page, SZ_4K, MODE_W | WITH_P, op=cur_op)
            prog.work(_exp(rng, p.object_page_ns))
        prog.emit(PV_REL, op=cur_op)
        prog.work(60)
        prog.emit(REL_PMAP, pid, op=cur_op)
        prog.work(40)
        prog.emit(X, op=cur_op)

    ntext = int(rng.geometric(1.0 / max(p.proc_text_faults, 1)))
    nanon = int(rng.lognormal(np.log(max(p.proc_anon_pages, 1)), p.anon_sigma))
    kinds = np.array([0] * ntext + [1] * nanon)
    rng.shuffle(kinds)
    heap = stack = None                  # current reservations: [frame, next page index]
    for kind in kinds:
        prog.work(_exp(rng, p.user_gap_ns))
        if prog.clock + prog.gap >= end_ns:
            return                       # the capture ends while this process runs
        if kind == 0:
            page = text.pick(rng)
            if page in mapped:
                continue                 # already mapped: no fault
            prog.work(_exp(rng, p.fault_text_ns))
            enter(page, "pmap_enter", p.enter_pv_hold_ns)
            for nb in range(page + 1, page + 1 + p.prefault_pages):
                if nb in text.set and nb not in mapped:
                    prog.work(_exp(rng, 150))
                    enter(nb, "pmap_enter_quick", p.quick_pv_hold_ns)
        else:
            use_heap = rng.random() < 0.85
            res = heap if use_heap else stack
            if res is None or res[1] >= PAGES_PER_FRAME:
                res = [mem.frame(), 0]
                if use_heap:
                    heap = res
                else:
                    stack = res
            page = (res[0] << (PDR_SHIFT - PAGE_SHIFT)) + res[1]
            res[1] += 1
            prog.work(_exp(rng, p.fault_anon_ns))
            full = res[1] == PAGES_PER_FRAME
            enter(page, "pmap_enter", p.enter_pv_hold_ns, res[0] if full else -1)
            anon_pages.append(page)
            if full:                     # the frame's 512 pv entries become one
                first = res[0] << (PDR_SHIFT - PAGE_SHIFT)
                entries[:] = [e for e in entries if not (first <= e[0] < first + 512)]
                entries.append((first, SZ_2M))
        if rng.random() < p.query_prob:
            prog.work(_exp(rng, 500))
            query()
    if not entries:
        return
    # exit: pmap_remove_pages walks the chunks newest first, entries in chunk order.
    cur_op = OP["pmap_remove_pages"]
    prog.work(_exp(rng, 5_000))
    prog.emit(E, op=cur_op)
    prog.work(100)
    prog.emit(ACQ_PMAP, pid, op=cur_op)
    order = [entries[i:i + PV_ENTRIES_PER_CHUNK]
             for i in range(0, len(entries), PV_ENTRIES_PER_CHUNK)][::-1]
    for chunk in order:
        prog.work(50)
        for page, size in chunk:
            prog.work(30)
            prog.emit(PV_TO, page, size, MODE_W | WITH_P, op=cur_op)
            prog.work(_exp(rng, p.remove_2m_ns if size == SZ_2M else p.remove_page_ns))
    prog.emit(PV_REL, op=cur_op)
    prog.work(80)
    prog.emit(ACQ_PVC, domain, op=cur_op)        # free_pv_chunk_batch, one domain
    prog.work(150 + p.chunk_free_ns * len(order))
    prog.emit(REL_PVC, domain, op=cur_op)
    prog.work(60)
    prog.emit(REL_PMAP, pid, op=cur_op)
    prog.work(40)
    prog.emit(X, op=cur_op)


def page_pa(page: int) -> int:
    """Physical address of a 4 KiB page number."""
    return page << PAGE_SHIFT
