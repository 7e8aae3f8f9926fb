"""What both Numba targets compile from plain Python: the norm's fold
(csrc/common/norm_math.h), a plain Python
function that ``fastopt._numba.norm`` compiles with ``njit`` and ``fastopt._numba_cuda.guard``
with ``cuda.jit(device=True)``. (The optimizers' element math is each rule's ``element``, in
fastopt/_rules.)

It also holds what makes one kernel source serve every rule: ``update_at``, the step of one
element, and ``with_globals``, which gives a copy of a function the rule's element function.
"""
from __future__ import annotations

import types


def fold_pairwise(v, lo, n):
    """The norm's fold in halves of v[lo:lo+n], in place (csrc/common/norm_math.h's
    norm_fold_pairwise; zero padding to a power of two implied)."""
    if n == 0:
        return 0.0
    w = 1
    while w < n:
        w *= 2
    while w > 1:
        h = w // 2
        for j in range(n - h):
            v[lo + j] = v[lo + j] + v[lo + j + h]
        if n > h:
            n = h
        w = h
    return v[lo]


def update_at(p, g, s0, s1, i, c):
    """Element i of one optimizer step: the rule's ELEMENT on p[i], g[i] and its NSTATES state
    buffers (globals of the per-rule copy, ``with_globals``; absent states alias p and are never
    written), with the coefficient record ``c``. Both Numba targets compile it."""
    if NSTATES == 0:  # noqa: F821
        p[i], _a, _b = ELEMENT(p[i], g[i], p[i], p[i], c)  # noqa: F821
    elif NSTATES == 1:  # noqa: F821
        p[i], s0[i], _b = ELEMENT(p[i], g[i], s0[i], s0[i], c)  # noqa: F821
    else:
        p[i], s0[i], s1[i] = ELEMENT(p[i], g[i], s0[i], s1[i], c)  # noqa: F821


def with_globals(fn, env: dict, name: str | None = None):
    """A copy of the Python function ``fn`` that sees the globals ``env`` besides its module's
    (and is named ``name``): how one kernel's source is compiled once per rule."""
    copy = types.FunctionType(fn.__code__, {**fn.__globals__, **env}, name or fn.__name__,
                              fn.__defaults__, fn.__closure__)
    copy.__qualname__ = name or fn.__qualname__
    return copy
