"""Synthetic captures with known ground truth: ``pvtrace synth``.

:func:`synthesize` generates the thread programs from a seed (:mod:`.workload`), runs them on
the simulated kernel (:mod:`.kernel_sim`) and renders the event log (:mod:`.writer`). The same
seed and workload give every kernel the same work, so a stock capture replayed as ``obm`` can
be checked against the ``obm`` capture's measured waits (its ``# truth_*`` header keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from pvtrace.models.layout import Layout
from pvtrace.synth.kernel_sim import KERNELS, SimParams, SimResult, simulate
from pvtrace.synth.workload import BuildParams, Workload, generate
from pvtrace.synth.writer import flatten_truth, render, write, write_capture

__all__ = ["KERNELS", "Capture", "synthesize", "generate", "simulate", "BuildParams",
           "SimParams", "write", "write_capture"]


@dataclass(frozen=True)
class Capture:
    workload: Workload
    result: SimResult
    header: dict

    @cached_property
    def text(self) -> str:
        """The event log as one string (rendered on first use)."""
        return render(self.result, self.header)

    def write(self, path) -> None:
        """Write the event log to `path`, streaming (gzip for .gz, zstd for .zst)."""
        write_capture(path, self.result, self.header)

    @property
    def truth(self) -> dict:
        return self.result.truth

    @property
    def records(self) -> int:
        return len(self.result.columns["ts"])


def synthesize(*, kernel: str = "stock", layout: str = "superpage", threads: int = 8,
               duration_ms: float = 20.0, seed: int = 1, mem_gb: float = 16.0,
               workload: str = "buildkernel", spin_limit_ns: int = 10_000,
               wakeup_ns: int = 0, ndomains: int | None = None,
               params: BuildParams | None = None) -> Capture:
    """Generate, simulate and render one capture (the programs depend on the seed only)."""
    lay = Layout.parse(layout)
    if ndomains is None:                 # superpage locks come with NUMA kernels
        ndomains = 2 if lay.kind == "superpage" and threads >= 4 else 1
    work = generate(seed=seed, threads=threads, duration_ms=duration_ms, mem_gb=mem_gb,
                    ndomains=ndomains, workload=workload, params=params)
    res = simulate(work, SimParams(kernel=kernel, layout=str(lay), spin_limit_ns=spin_limit_ns,
                                   wakeup_ns=wakeup_ns))
    header = {"ncpu": threads, "ndomains": ndomains, "kernel": f"synth-{kernel}",
              "layout": str(lay), "seed": seed, "workload": workload, "threads": threads,
              "duration_ms": f"{duration_ms:g}", "mem_gb": f"{mem_gb:g}",
              "spin_limit_ns": spin_limit_ns,
              "wakeup_ns": wakeup_ns, "timestamp0": res.columns["ts"].min()
              if len(res.columns["ts"]) else 0, "processes": work.processes}
    header |= flatten_truth(res.truth)
    return Capture(work, res, header)
