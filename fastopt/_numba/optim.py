"""Numba optimizer kernels: the same per-element math and order as csrc/common/optim_math.h."""
from __future__ import annotations

import types

import numpy as np
from numba import carray, njit, prange
from numba import types as nbtypes
from numba.extending import intrinsic

from . import elements as E
from .._registry import OPTIM_KERNEL
from .._validate import check_optim_kernel_args, kernel_addresses

# error_model="numpy": x/0 gives inf/nan as in the reference (and keeps loops vectorisable).
_JIT = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")
# Below this many elements a parallel launch costs more than it saves: run on this thread.
SERIAL_BELOW = 1 << 16


def _twins(fn):
    """(parallel, serial) compilations of one kernel written with prange.

    The serial twin is a renamed copy so that the two do not share (and overwrite) one cache
    entry on disk."""
    serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                fn.__defaults__, fn.__closure__)
    serial.__qualname__ = fn.__qualname__ + "_serial"
    return njit(parallel=True, **_JIT)(fn), njit(parallel=False, **_JIT)(serial)


_e_sgd, _e_momentum, _e_rmsprop, _e_adam = (
    njit(inline="always", **_JIT)(f) for f in (E.sgd, E.momentum, E.rmsprop, E.adam))


def _sgd(p, g, lr, wd, gs):
    for i in prange(p.size):
        p[i] = _e_sgd(p[i], g[i], lr, wd, gs)


def _momentum(p, g, v, lr, wd, gs, mom, nesterov):
    for i in prange(p.size):
        p[i], v[i] = _e_momentum(p[i], g[i], v[i], lr, wd, gs, mom, nesterov)


def _rmsprop(p, g, v, m, lr, wd, gs, mom, rho, omrho, eps, eps_out, lr_out):
    for i in prange(p.size):
        p[i], v[i], m[i] = _e_rmsprop(p[i], g[i], v[i], m[i], lr, wd, gs, mom, rho, omrho, eps,
                                      eps_out, lr_out)


def _adam(p, g, m, v, wd, gs, b1, omb1, b2, omb2, eps, alpha, c, decay, nm, ng, nadam):
    for i in prange(p.size):
        p[i], m[i], v[i] = _e_adam(p[i], g[i], m[i], v[i], wd, gs, b1, omb1, b2, omb2, eps,
                                   alpha, c, decay, nm, ng, nadam)


_SGD, _MOMENTUM, _RMSPROP, _ADAM = map(_twins, (_sgd, _momentum, _rmsprop, _adam))
_sgd_s, _momentum_s, _rmsprop_s, _adam_s = (k[1] for k in (_SGD, _MOMENTUM, _RMSPROP, _ADAM))

#: Elements per chunk of the multi-array table (the C++ backend's chunk size).
CHUNK = 1 << 15
_RULE_ID = {"sgd": 0, "momentum": 1, "nesterov": 1, "rmsprop": 2, "adam": 3, "nadam": 3}


@intrinsic
def _pointer(typingctx, address, like):
    """The address of an array's data as a typed pointer (for numba.carray)."""
    sig = nbtypes.CPointer(like.dtype)(nbtypes.intp, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return sig, codegen


def _multi(rule, P, G, S0, S1, sizes, like, lr, wd, gs, mom, rho, omrho, eps, eps_out, lr_out,
           b1, omb1, b2, omb2, alpha, c, decay, nm, ng, flag):
    """One call for every array: a table of data addresses cut into chunks shared over threads
    (a typed list of arrays costs milliseconds to build; one launch per array is slower still).
    Each chunk runs the serial kernel above on its slice."""
    na = sizes.size
    first = np.zeros(na + 1, np.int64)
    for a in range(na):
        first[a + 1] = first[a] + (sizes[a] + CHUNK - 1) // CHUNK
    owner = np.zeros(first[na], np.int64)
    for a in range(na):
        owner[first[a]:first[a + 1]] = a
    size = like.itemsize
    for k in prange(first[na]):
        a = owner[k]
        b = (k - first[a]) * CHUNK
        n = min(sizes[a], b + CHUNK) - b
        p = carray(_pointer(P[a] + b * size, like), n)
        g = carray(_pointer(G[a] + b * size, like), n)
        if rule == 0:
            _sgd_s(p, g, lr, wd, gs)
            continue
        s0 = carray(_pointer(S0[a] + b * size, like), n)
        if rule == 1:
            _momentum_s(p, g, s0, lr, wd, gs, mom, flag)
            continue
        s1 = carray(_pointer(S1[a] + b * size, like), n)
        if rule == 2:
            _rmsprop_s(p, g, s0, s1, lr, wd, gs, mom, rho, omrho, eps, eps_out, lr_out)
        else:
            _adam_s(p, g, s0, s1, wd, gs, b1, omb1, b2, omb2, eps, alpha, c, decay, nm, ng,
                    flag)


_MULTI = _twins(_multi)


def optim_update(rule, params, grads, states, k):
    check_optim_kernel_args(rule, params, grads, states, k, arrays=False)
    # the kernel trusts the table: it is built only from arrays that passed the contract
    P, G, *S = kernel_addresses([("params", params, True), ("grads", grads, False)]
                                + [(f"states[{j}]", s, True) for j, s in enumerate(states)])
    if not params:
        return
    T = params[0].dtype.type  # scalars rounded to the storage dtype once, as in C++
    rule = OPTIM_KERNEL[rule]
    S0 = S[0] if S else P
    S1 = S[1] if len(S) > 1 else S0
    sizes = np.array([p.size for p in params], np.int64)
    run = _MULTI[int(sizes.sum()) < SERIAL_BELOW]
    run(_RULE_ID[rule], P, G, S0, S1, sizes, params[0].reshape(-1)[:0], T(k.lr), T(k.wd),
        T(k.gscale), T(k.momentum), T(k.rho), T(1.0 - k.rho), T(k.eps), T(k.eps_out),
        T(k.lr_out), T(k.beta1), T(1.0 - k.beta1), T(k.beta2), T(1.0 - k.beta2), T(k.alpha),
        T(k.c), T(k.decay), T(k.nm), T(k.ng), rule in ("nesterov", "nadam"))
