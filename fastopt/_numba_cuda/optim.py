"""numba-cuda optimizer kernels: each rule's element function (its declaration in
fastopt/_rules), in the order of csrc/common/optim_math.h, one launch per array.

Scalars are rounded to the storage dtype once on the host (``_core.Coef``, the kernels'
``OptimCoef``), so float32 arrays compute in float32 and float64 arrays in float64, as on every
other backend. The kernels are built per element-math kernel from its declaration on first use.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from .. import _rules
from .._core import coef
from .._numba.elements import update_at, with_globals
from ._common import THREADS, as_numba, blocks, stream_of


def _update(p, g, s0, s1, c):
    """One element per thread; unused states alias p and are never written."""
    i = cuda.grid(1)
    if i < p.size:
        UPDATE_AT(p, g, s0, s1, i, c)  # noqa: F821 - a global of the compiled copy (jit_with)


def jit_with(fn, env, **options):
    """``fn`` compiled by cuda.jit with the globals ``env`` added (one copy per rule)."""
    return cuda.jit(**options)(with_globals(fn, env))


@functools.lru_cache(maxsize=None)
def element_env(name: str) -> dict:
    """UPDATE_AT of element-math kernel ``name``: elements.update_at with the rule's element
    function, as a device function."""
    rule = next(r for r in _rules.RULES.values() if r.kernel == name)
    at = with_globals(update_at, dict(ELEMENT=cuda.jit(device=True, inline=True)(rule.element),
                                      NSTATES=len(rule.state)))
    return dict(UPDATE_AT=cuda.jit(device=True, inline=True)(at))


@functools.lru_cache(maxsize=None)
def kernel(name: str):
    return jit_with(_update, element_env(name))


def optim_update(rule, params, grads, states, k):
    if not params:
        return
    c = coef(k, np.dtype(params[0].dtype).type)
    fn = kernel(_rules.RULES[rule].kernel)
    stream = stream_of(params[0])
    for i, p in enumerate(params):
        n = int(p.size)
        if n == 0:
            continue
        fn[blocks(n), THREADS, stream](*arrays_of(n, p, grads[i], [s[i] for s in states]), c)


def arrays_of(n, p, g, states):
    """(p, g, s0, s1) as flat Numba device arrays; an absent state is p (or s0), never written."""
    p = as_numba(p).reshape(n)
    s = [as_numba(x).reshape(n) for x in states] or [p]
    return p, as_numba(g).reshape(n), s[0], s[-1]
