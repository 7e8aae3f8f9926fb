"""What the Numba CPU kernels share: JIT options, typed pointers from addresses, and
compiling one Python function into several independently cached kernels."""
from __future__ import annotations

from numba import njit
from numba import types as nbtypes
from numba.extending import intrinsic

from .elements import with_globals

# error_model="numpy": x/0 gives inf/nan as in the reference (and keeps loops vectorisable).
JIT = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")
# Below this many elements a parallel launch costs more than it saves: run on this thread.
SERIAL_BELOW = 1 << 16


@intrinsic
def pointer(typingctx, address, like):
    """The address of an array's data as a typed pointer (for numba.carray)."""
    sig = nbtypes.CPointer(like.dtype)(nbtypes.intp, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return sig, codegen


def compiled(fn, name: str, env: dict | None = None, **options):
    """``fn`` jitted as a copy named ``name`` with the globals ``env`` added: its own entry in
    Numba's on-disk cache (which is keyed on the qualified name), its own globals."""
    return njit(**options, **JIT)(with_globals(fn, env or {}, name))


def twins(fn, env: dict | None = None, name: str | None = None):
    """(parallel, serial) compilations of one kernel written with prange."""
    name = name or fn.__name__
    return (compiled(fn, name, env, parallel=True),
            compiled(fn, name + "_serial", env, parallel=False))
