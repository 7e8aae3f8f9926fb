"""numba-cuda optimizer kernels: the per-element math and order of csrc/common/optim_math.h.

Scalars are rounded to the storage dtype once on the host (the kernels' ``OptimCoef``), so
float32 arrays compute in float32 and float64 arrays in float64, as on every other backend.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .._numba import elements as E
from .._registry import OPTIM_KERNEL
from ._common import THREADS, as_numba, blocks, stream_of


_e_sgd, _e_momentum, _e_rmsprop, _e_adam = (
    cuda.jit(device=True, inline=True)(f) for f in (E.sgd, E.momentum, E.rmsprop, E.adam))


@cuda.jit
def _sgd(p, g, lr, wd, gs):
    i = cuda.grid(1)
    if i < p.size:
        p[i] = _e_sgd(p[i], g[i], lr, wd, gs)


@cuda.jit
def _momentum(p, g, v, lr, wd, gs, mom, nesterov):
    i = cuda.grid(1)
    if i < p.size:
        p[i], v[i] = _e_momentum(p[i], g[i], v[i], lr, wd, gs, mom, nesterov)


@cuda.jit
def _rmsprop(p, g, v, m, lr, wd, gs, mom, rho, omrho, eps, eps_out, lr_out):
    i = cuda.grid(1)
    if i < p.size:
        p[i], v[i], m[i] = _e_rmsprop(p[i], g[i], v[i], m[i], lr, wd, gs, mom, rho, omrho, eps,
                                      eps_out, lr_out)


@cuda.jit
def _adam(p, g, m, v, wd, gs, b1, omb1, b2, omb2, eps, alpha, c, decay, nm, ng, nadam):
    i = cuda.grid(1)
    if i < p.size:
        p[i], m[i], v[i] = _e_adam(p[i], g[i], m[i], v[i], wd, gs, b1, omb1, b2, omb2, eps,
                                   alpha, c, decay, nm, ng, nadam)


def optim_update(rule, params, grads, states, k):
    if not params:
        return
    T = np.dtype(params[0].dtype).type
    kernel = OPTIM_KERNEL[rule]
    extra = E.scalar_args(kernel, k, T)
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
