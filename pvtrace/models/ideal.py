"""``ideal``: no pv-list and no pv chunk list locks at all.

Not a kernel anyone could build: the bound on what any pv-list design could gain. The pmap
mutex and other locks stay, so contention that moves there still shows.
"""

from pvtrace.models.base import FrameLockDesign


class Ideal(FrameLockDesign):
    name = "ideal"
    summary = "no pv-list or pv chunk list locks: the bound on any design's gain"
    removed_classes = frozenset({"pv", "pvc"})
