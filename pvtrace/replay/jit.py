"""numba settings and intrinsics shared by the compiled loops of the replay."""

from __future__ import annotations

import numba.core.options
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

# numba wraps arrays used through helpers and closures in reference counting: atomic
# increments and decrements (NRT_incref/NRT_decref) that took two thirds of the step builder's
# time and an eighth of the kernel's. A loop that allocates nothing can do without: numba's
# CPU target takes ``_nrt=False`` (numba/core/cpu.py lists it among its options; the user
# documentation does not). A numba without that option compiles the loops as usual, slower.
NO_REFCOUNT: dict[str, bool] = (
    {"_nrt": False} if "_nrt" in vars(numba.core.options.DefaultOptions) else {})


@intrinsic
def bit_length(typingctx, x):
    """``int(x).bit_length()`` of an int64 >= 0 in compiled code: 64 minus LLVM's count of
    leading zeros, one instruction (``math.frexp`` of the value as a float, the other way to
    get it in numba, is a libm call: the HDR bucket pass took 1.8x as long)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        value = context.cast(builder, args[0], signature.args[0], types.int64)
        ctlz = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]), "llvm.ctlz.i64")
        zeros = builder.call(ctlz, [value, ir.Constant(ir.IntType(1), 0)])  # 0 -> 64
        return builder.sub(ir.Constant(i64, 64), zeros)

    return types.int64(x), codegen
