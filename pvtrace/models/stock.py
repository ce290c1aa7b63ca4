"""``stock``: the captured kernel's pv-list rwlocks, under ``--layout``.

``superpage``: one rwlock per 2 MiB frame (NUMA kernels); ``hash:N``: ``(pa >> 21) % N``
(non-NUMA, N = MAXCPU). Read mode is shared; the pv chunk list and all other locks as captured.
Replaying a capture as ``stock`` under its own layout should reproduce its observed waits.
"""

from pvtrace.models.base import FrameLockDesign


class Stock(FrameLockDesign):
    name = "stock"
    summary = "stock pv-list rwlocks by --layout (frame or hash slot); everything else as captured"
