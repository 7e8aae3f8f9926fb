"""Numba optimizer kernels: each rule's element function (its declaration in fastopt/_rules),
in the same order of operations as csrc/common/optim_math.h, over a table of arrays.

One compiled kernel per element-math kernel name, built from the declaration on first use:
the traversal below is written once; the rule's element function and state count are the
globals it is compiled with. The scalars arrive as one record (``_core.Coef``), never as
positional lists.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np
from numba import carray, njit, prange

from .. import _rules
from .._core import coef
from .._validate import check_optim_kernel_args, kernel_addresses
from .elements import update_at, with_globals
from ._jit import JIT, SERIAL_BELOW, compiled, pointer as _pointer, twins

#: Elements per chunk of the multi-array table (the C++ backend's chunk size).
CHUNK = 1 << 15


# The traversal, written once. Compiled per rule with these globals: UPDATE_AT (elements.
# update_at with the rule's element function) and LOOP (the rule's own compiled _loop). The
# closure variable KEY is the code of both: Numba's on-disk cache keys on a function's code
# and closure, so editing a rule's element (or update_at) recompiles its kernel.

def _factory(KEY):
    def _loop(p, g, s0, s1, c):
        """One chunk: p, g and the states are the same length (unused states alias p)."""
        KEY  # noqa: B018 - part of the cache key (see above)
        for i in range(p.size):
            UPDATE_AT(p, g, s0, s1, i, c)  # noqa: F821 - a global of the compiled copy

    def _multi(P, G, S0, S1, sizes, like, c):
        """Every array in one call: a table of data addresses cut into CHUNK-element chunks
        shared over threads (a typed list of arrays costs milliseconds to build; one launch per
        array is slower still)."""
        KEY  # noqa: B018
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
            off = b * size
            LOOP(carray(_pointer(P[a] + off, like), n), carray(_pointer(G[a] + off, like), n),  # noqa: F821,E501
                 carray(_pointer(S0[a] + off, like), n), carray(_pointer(S1[a] + off, like), n),
                 c)
    return _loop, _multi


@functools.lru_cache(maxsize=None)
def kernel(name: str):
    """(parallel, serial) multi-array kernels of element-math kernel ``name``."""
    rule = next(r for r in _rules.RULES.values() if r.kernel == name)
    key = hashlib.sha256(b"".join(f.__code__.co_code + repr(f.__code__.co_consts).encode()
                                  for f in (rule.element, update_at))).hexdigest()
    loop, multi = _factory(key)
    at = with_globals(update_at, dict(ELEMENT=njit(inline="always", **JIT)(rule.element),
                                      NSTATES=len(rule.state)), f"_update_at_{name}")
    env = dict(UPDATE_AT=njit(inline="always", **JIT)(at))
    env["LOOP"] = compiled(loop, f"_loop_{name}", env)
    return twins(multi, env, f"_multi_{name}")


def optim_update(rule, params, grads, states, k):
    check_optim_kernel_args(rule, params, grads, states, k, arrays=False)
    # the kernel trusts the table: it is built only from arrays that passed the contract
    P, G, *S = kernel_addresses([("params", params, True), ("grads", grads, False)]
                                + [(f"states[{j}]", s, True) for j, s in enumerate(states)])
    if not params:
        return
    S0 = S[0] if S else P  # read in place of an absent state, never written
    S1 = S[1] if len(S) > 1 else S0
    sizes = np.array([p.size for p in params], np.int64)
    run = kernel(_rules.RULES[rule].kernel)[int(sizes.sum()) < SERIAL_BELOW]
    # the scalars rounded to the storage dtype once, as in C++
    run(P, G, S0, S1, sizes, params[0].reshape(-1)[:0], coef(k, params[0].dtype.type))
