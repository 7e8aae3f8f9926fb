"""numba-cuda optimizer kernels: the per-element math and order of csrc/common/optim_math.h.

Scalars are rounded to the storage dtype once on the host (the kernels' ``OptimCoef``), so
float32 arrays compute in float32 and float64 arrays in float64, as on every other backend.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .._registry import OPTIM_KERNEL
from ._common import THREADS, as_numba, blocks, stream_of


@cuda.jit
def _sgd(p, g, lr, wd, gs):
    i = cuda.grid(1)
    if i < p.size:
        gg = gs * g[i] + wd * p[i]
        p[i] = p[i] - lr * gg


@cuda.jit
def _momentum(p, g, v, lr, wd, gs, mom, nesterov):
    i = cuda.grid(1)
    if i < p.size:
        gg = gs * g[i] + wd * p[i]
        vi = mom * v[i] + gg
        v[i] = vi
        if nesterov:
            p[i] = p[i] - lr * (mom * vi + gg)
        else:
            p[i] = p[i] - lr * vi


@cuda.jit
def _rmsprop(p, g, v, m, lr, wd, gs, mom, rho, omrho, eps, eps_out, lr_out):
    i = cuda.grid(1)
    if i < p.size:
        gg = gs * g[i] + wd * p[i]
        vi = rho * v[i] + omrho * (gg * gg)
        v[i] = vi
        mi = mom * m[i] + lr * gg / (math.sqrt(vi + eps) + eps_out)
        m[i] = mi
        p[i] = p[i] - lr_out * mi


@cuda.jit
def _adam(p, g, m, v, wd, gs, b1, omb1, b2, omb2, eps, alpha, c, decay, nm, ng, nadam):
    i = cuda.grid(1)
    if i < p.size:
        gg = gs * g[i] + wd * p[i]
        mi = b1 * m[i] + omb1 * gg
        vi = b2 * v[i] + omb2 * (gg * gg)
        m[i] = mi
        v[i] = vi
        if nadam:
            mi = nm * mi + ng * gg
        p[i] = decay * p[i] - alpha * mi / (math.sqrt(vi) / c + eps)


def optim_update(rule, params, grads, states, k):
    if not params:
        return
    T = np.dtype(params[0].dtype).type
    kernel = OPTIM_KERNEL[rule]
    if kernel == "sgd":
        extra = (T(k.lr), T(k.wd), T(k.gscale))
    elif kernel in ("momentum", "nesterov"):
        extra = (T(k.lr), T(k.wd), T(k.gscale), T(k.momentum), kernel == "nesterov")
    elif kernel == "rmsprop":
        extra = (T(k.lr), T(k.wd), T(k.gscale), T(k.momentum), T(k.rho), T(1.0 - k.rho),
                 T(k.eps), T(k.eps_out), T(k.lr_out))
    else:
        extra = (T(k.wd), T(k.gscale), T(k.beta1), T(1.0 - k.beta1), T(k.beta2),
                 T(1.0 - k.beta2), T(k.eps), T(k.alpha), T(k.c), T(k.decay),
                 T(k.nm), T(k.ng), kernel == "nadam")
    fn = {"sgd": _sgd, "momentum": _momentum, "nesterov": _momentum, "rmsprop": _rmsprop,
          "adam": _adam, "nadam": _adam}[kernel]
    stream = stream_of(params[0])
    for i, p in enumerate(params):
        n = int(p.size)
        if n == 0:
            continue
        arrays = [as_numba(p).reshape(n), as_numba(grads[i]).reshape(n)]
        arrays += [as_numba(s[i]).reshape(n) for s in states]
        fn[blocks(n), THREADS, stream](*arrays, *extra)
