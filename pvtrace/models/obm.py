"""The one-byte-mutex patch (D24217) and its variants.

Every 4 KiB page gets its own lock, so pages no longer alias. Blocked threads still sleep on
turnstiles shared per frame (``superpage``) or per hash slot (``hash:N``): a release wakes the
waiters of sibling pages too, which block again (sibling wakeups). A superpage operation takes
the frame's 512 page locks in ascending order (assumed; the patch's code is not public).

- ``obm-pvc``: per-page exclusive locks; the pv chunk list lock as captured.
- ``obm``: ``obm-pvc`` without the per-domain pv chunk list lock (the patch's second step);
  the chunk-list work is kept, its lock and waits are gone.
- ``obm-rw``: ``obm`` with a shared mode on the page locks, which the author wanted.
"""

from pvtrace.models.base import PageLockDesign


class ObmPvc(PageLockDesign):
    name = "obm-pvc"
    summary = "per-4K-page exclusive locks, turnstiles shared per frame/slot; pv chunk lock kept"
    pv_shared_reads = False


class Obm(PageLockDesign):
    name = "obm"
    summary = "obm-pvc without the pv chunk list lock (the full patch)"
    pv_shared_reads = False
    removed_classes = frozenset({"pvc"})


class ObmRw(PageLockDesign):
    name = "obm-rw"
    summary = "obm with shared (reader) mode on the per-page locks"
    pv_shared_reads = True
    removed_classes = frozenset({"pvc"})
