"""numba settings shared by the compiled loops of the replay."""

from __future__ import annotations

import numba.core.options

# numba wraps arrays used through helpers and closures in reference counting: atomic
# increments and decrements (NRT_incref/NRT_decref) that took two thirds of the step builder's
# time and an eighth of the kernel's. A loop that allocates nothing can do without: numba's
# CPU target takes ``_nrt=False`` (numba/core/cpu.py lists it among its options; the user
# documentation does not). A numba without that option compiles the loops as usual, slower.
NO_REFCOUNT: dict[str, bool] = (
    {"_nrt": False} if "_nrt" in vars(numba.core.options.DefaultOptions) else {})
