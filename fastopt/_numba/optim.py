"""Numba optimizer kernels: the same per-element math and order as csrc/common/optim_math.h."""
from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

from .._registry import OPTIM_KERNEL

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


def _sgd(p, g, lr, wd, gs):
    for i in prange(p.size):
        gg = gs * g[i] + wd * p[i]
        p[i] = p[i] - lr * gg


def _momentum(p, g, v, lr, wd, gs, mom, nesterov):
    for i in prange(p.size):
        gg = gs * g[i] + wd * p[i]
        vi = mom * v[i] + gg
        v[i] = vi
        if nesterov:
            p[i] = p[i] - lr * (mom * vi + gg)
        else:
            p[i] = p[i] - lr * vi


def _rmsprop(p, g, v, m, lr, wd, gs, mom, rho, omrho, eps, eps_out, lr_out):
    for i in prange(p.size):
        gg = gs * g[i] + wd * p[i]
        vi = rho * v[i] + omrho * (gg * gg)
        v[i] = vi
        mi = mom * m[i] + lr * gg / (np.sqrt(vi + eps) + eps_out)
        m[i] = mi
        p[i] = p[i] - lr_out * mi


def _adam(p, g, m, v, wd, gs, b1, omb1, b2, omb2, eps, alpha, c, decay, nm, ng, nadam):
    for i in prange(p.size):
        gg = gs * g[i] + wd * p[i]
        mi = b1 * m[i] + omb1 * gg
        vi = b2 * v[i] + omb2 * (gg * gg)
        m[i] = mi
        v[i] = vi
        if nadam:
            mi = nm * mi + ng * gg
        p[i] = decay * p[i] - alpha * mi / (np.sqrt(vi) / c + eps)


_SGD, _MOMENTUM, _RMSPROP, _ADAM = map(_twins, (_sgd, _momentum, _rmsprop, _adam))


def optim_update(rule, params, grads, states, k):
    if not params:
        return
    T = params[0].dtype.type  # scalars rounded to the storage dtype once, as in C++
    lr, wd, gs, mom = T(k.lr), T(k.wd), T(k.gscale), T(k.momentum)
    rule = OPTIM_KERNEL[rule]
    for i, p in enumerate(params):
        p, g = p.reshape(-1), grads[i].reshape(-1)
        s = [st[i].reshape(-1) for st in states]
        serial = p.size < SERIAL_BELOW
        if rule == "sgd":
            _SGD[serial](p, g, lr, wd, gs)
        elif rule in ("momentum", "nesterov"):
            _MOMENTUM[serial](p, g, s[0], lr, wd, gs, mom, rule == "nesterov")
        elif rule == "rmsprop":
            _RMSPROP[serial](p, g, s[0], s[1], lr, wd, gs, mom, T(k.rho), T(1.0 - k.rho),
                             T(k.eps), T(k.eps_out), T(k.lr_out))
        else:
            _ADAM[serial](p, g, s[0], s[1], wd, gs, T(k.beta1), T(1.0 - k.beta1), T(k.beta2),
                          T(1.0 - k.beta2), T(k.eps), T(k.alpha), T(k.c), T(k.decay),
                          T(k.nm), T(k.ng), rule == "nadam")
