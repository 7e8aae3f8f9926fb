"""numba-cuda guarded step (``fastopt._reference.optim.guarded_step``): the norm pass, the
clip/skip/count decisions and the update, all on the device; nothing is read back.

The norm follows csrc/common/norm_math.h's order as ``norm.py`` does, but the block sums stay on
the device: one thread folds them (this is the fallback backend) and takes the decisions that
``fastopt.norm`` takes on the host, in the same float64 operations. float64 gradients get the
rescaled pass of SPEC §3 when the device says so; narrower ones never need it (their squares
cannot overflow or underflow in float64).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .. import _rules
from .._core import (COEF_FIELDS, G_APPLIED, G_CLIPPED, G_EXP, G_MAXABS, G_NORM, G_ROW,
                     G_SCALE, G_SEQ, G_SKIPPED, NORM_BLOCK, NORM_LANES, SAFE_SUM, coef,
                     guard_outcome, rescale_exp)
from .._numba import elements as E
from ._common import SIMULATOR, THREADS, as_numba, blocks, stream_of
from .norm import _partials
from .optim import arrays_of, element_env, jit_with

_fold = cuda.jit(device=True)(E.fold_pairwise)
_rescale_exp = cuda.jit(device=True)(rescale_exp)
_outcome = cuda.jit(device=True)(guard_outcome)


@cuda.jit(device=True)
def _finish(total, maxabs, exp):
    """fastopt.norm._finish, with ldexp's inf for the host's OverflowError."""
    if math.isnan(total):
        return math.nan
    if math.isinf(maxabs):
        return math.inf
    return math.ldexp(math.sqrt(total), -exp)


@cuda.jit
def _decide(bsum, bmax, first, sums, second, ctl, nrows, t_lo, limit, skip_nonfinite, slot,
            seq, gs, mirror, has_mirror):
    """One thread: the block sums -> the norm -> the decisions (guard_decide)."""
    if cuda.grid(1) != 0:
        return
    na = sums.size
    for a in range(na):
        sums[a] = _fold(bsum, first[a], first[a + 1] - first[a])
    total = _fold(sums, 0, na)
    if not second:
        mx = 0.0
        for b in range(first[na]):
            mx = bmax[b] if bmax[b] > mx else mx
        safe = math.isnan(total) or SAFE_SUM <= total < math.inf  # as fastopt.norm decides
        exp = 0 if safe else _rescale_exp(total, mx)
        ctl[0, G_EXP] = exp
        ctl[0, G_MAXABS] = mx
        if exp != 0:
            return  # the rescaled pass decides
        norm = _finish(total, mx, 0)
    else:
        if ctl[0, G_EXP] == 0:
            return  # decided after the first pass
        norm = _finish(total, ctl[0, G_MAXABS], int(ctl[0, G_EXP]))
    applied = ctl[0, G_APPLIED]
    skip, clipped, scale, row = _outcome(applied, norm, nrows, t_lo, limit, skip_nonfinite)
    for c in range(ctl.shape[1]):
        ctl[slot, c] = 0.0
    ctl[slot, G_APPLIED] = applied
    ctl[slot, G_SEQ] = seq
    for r in (0, slot):
        ctl[r, G_NORM] = norm
        ctl[r, G_SCALE] = scale
        ctl[r, G_ROW] = row
        ctl[r, G_SKIPPED] = 1.0 if skip else 0.0
        ctl[r, G_CLIPPED] = 1.0 if clipped else 0.0
    ctl[0, G_APPLIED] = applied if skip else applied + 1.0
    ctl[0, G_EXP] = 0.0
    ctl[0, G_MAXABS] = 0.0
    gs[0] = scale  # rounded once to the storage dtype, as the host's T(grad_scale)
    if has_mirror:  # the row for the host, its issue number last and after a fence
        for c in range(ctl.shape[1]):
            if c != G_SEQ:
                mirror[slot, c] = ctl[slot, c]
        if not SIMULATOR:
            cuda.threadfence_system()
        mirror[slot, G_SEQ] = seq


# The update kernel: the rule's element function with the device's row of scalars, whose
# gscale is the scale the device decided (rounded once to the storage dtype, in gs[0]).

def _guarded_update(p, g, s0, s1, rows, gs, ctl):
    i = cuda.grid(1)
    if i < p.size and ctl[0, G_SKIPPED] == 0:
        r = rows[int(ctl[0, G_ROW])]
        # UPDATE_AT: a global of the compiled copy (optim.jit_with)
        UPDATE_AT(p, g, s0, s1, i, _with_gscale(r, gs[0]))  # noqa: F821


if SIMULATOR:
    def _with_gscale(c, s):
        return c._replace(gscale=s)
else:
    from numba.cpython.unsafe.tuple import tuple_setitem

    _GSCALE = COEF_FIELDS.index("gscale")

    @cuda.jit(device=True, inline=True)
    def _with_gscale(c, s):
        """The record ``c`` with its gscale replaced by ``s`` (a new record, by value)."""
        return tuple_setitem(c, _GSCALE, s)


@functools.lru_cache(maxsize=None)
def _update_kernel(name):
    return jit_with(_guarded_update, element_env(name))


def _norm_passes(grads, ctl, nrows, t_lo, limit, skip_nonfinite, slot, seq, mirror):
    """The norm of ``grads`` and the decisions, on the device -> (flat grads, typed scale)."""
    T = np.dtype(grads[0].dtype).type
    stream = stream_of(grads[0])
    flat = [as_numba(g).reshape(int(g.size)) for g in grads]
    counts = [-(-int(g.size) // NORM_BLOCK) for g in grads]
    first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    nb = max(1, int(first[-1]))
    bsum = cuda.device_array(nb, np.float64, stream=stream)
    bmax = cuda.device_array(nb, np.float64, stream=stream)
    sums = cuda.device_array(len(grads), np.float64, stream=stream)
    dfirst = cuda.to_device(first, stream=stream)
    gs = cuda.device_array(1, T, stream=stream)
    ctl = as_numba(ctl)
    passes = (False, True) if T is np.float64 else (False,)
    for second in passes:
        for x, c, lo in zip(flat, counts, first):
            if c:
                _partials[c, NORM_LANES, stream](x, np.float64(1.0), second, not second,
                                                 bsum[lo:lo + c], bmax[lo:lo + c], ctl, second)
        _decide[1, 1, stream](bsum, bmax, dfirst, sums, second, ctl, float(nrows),
                              float(t_lo), float(limit), bool(skip_nonfinite), slot,
                              float(seq), gs, ctl if mirror is None else mirror.device,
                              mirror is not None)
    return flat, gs


def guarded_norm(arrays, ctl):
    if arrays:
        _norm_passes(arrays, ctl, 1, 0, math.inf, False, 1, 0, None)


def guarded_step(call):
    (rule, params, grads, states, rows, t_lo, limit, skip_nonfinite, ctl, slot, seq,
     mirror) = call
    if not params:
        return
    T = np.dtype(grads[0].dtype).type
    stream = stream_of(grads[0])
    flat, gs = _norm_passes(grads, ctl, len(rows), t_lo, limit, skip_nonfinite, slot, seq,
                            mirror)
    ctl = as_numba(ctl)
    rows = tuple(coef(k, T) for k in rows)  # a tuple of records: the device picks one
    fn = _update_kernel(_rules.RULES[rule].kernel)
    for i, p in enumerate(params):
        n = int(p.size)
        if n:
            fn[blocks(n), THREADS, stream](*arrays_of(n, p, flat[i], [s[i] for s in states]),
                                           rows, gs, ctl)
