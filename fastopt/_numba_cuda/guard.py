"""numba-cuda guarded step (``fastopt._reference.optim.guarded_step``): the norm pass, the
clip/skip/count decisions and the update, all on the device; nothing is read back.

The norm follows csrc/common/norm_math.h's order as ``norm.py`` does, but the block sums stay on
the device: one thread folds them (this is the fallback backend) and takes the decisions that
``fastopt.norm`` takes on the host, in the same float64 operations. float64 gradients get the
rescaled pass of SPEC §3 when the device says so; narrower ones never need it (their squares
cannot overflow or underflow in float64).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .._numba import elements as E
from .._registry import (G_APPLIED, G_CLIPPED, G_EXP, G_MAXABS, G_NORM, G_ROW, G_SCALE,
                         G_SEQ, G_SKIPPED, NORM_BLOCK, NORM_LANES, OPTIM_KERNEL)
from .. import norm as norm_host
from .._reference.optim import guard_outcome
from ..norm import _SAFE_SUM
from ._common import SIMULATOR, THREADS, as_numba, blocks, stream_of
from .norm import _partials
from .optim import _e_adam, _e_momentum, _e_rmsprop, _e_sgd


_fold = cuda.jit(device=True)(E.fold_pairwise)


_rescale_exp = cuda.jit(device=True)(norm_host._rescale_exp)
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
        safe = math.isnan(total) or _SAFE_SUM <= total < math.inf  # as fastopt.norm decides
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


# The update kernels: the rule's element function with the device's row of scalars and scale.
# coef[r] is E.scalar_args(rule, rows[r], T) without its trailing flag (gscale's slot unused).

@cuda.jit
def _sgd(p, g, coef, gs, ctl):
    i = cuda.grid(1)
    if i < p.size and ctl[0, G_SKIPPED] == 0:
        c = coef[int(ctl[0, G_ROW])]
        p[i] = _e_sgd(p[i], g[i], c[0], c[1], gs[0])


@cuda.jit
def _momentum(p, g, v, coef, gs, ctl, nesterov):
    i = cuda.grid(1)
    if i < p.size and ctl[0, G_SKIPPED] == 0:
        c = coef[int(ctl[0, G_ROW])]
        p[i], v[i] = _e_momentum(p[i], g[i], v[i], c[0], c[1], gs[0], c[3], nesterov)


@cuda.jit
def _rmsprop(p, g, v, m, coef, gs, ctl):
    i = cuda.grid(1)
    if i < p.size and ctl[0, G_SKIPPED] == 0:
        c = coef[int(ctl[0, G_ROW])]
        p[i], v[i], m[i] = _e_rmsprop(p[i], g[i], v[i], m[i], c[0], c[1], gs[0], c[3], c[4],
                                      c[5], c[6], c[7], c[8])


@cuda.jit
def _adam(p, g, m, v, coef, gs, ctl, nadam):
    i = cuda.grid(1)
    if i < p.size and ctl[0, G_SKIPPED] == 0:
        c = coef[int(ctl[0, G_ROW])]
        p[i], m[i], v[i] = _e_adam(p[i], g[i], m[i], v[i], c[0], gs[0], c[2], c[3], c[4], c[5],
                                   c[6], c[7], c[8], c[9], c[10], c[11], nadam)


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


def guarded_step(rule, params, grads, states, rows, t_lo, limit, skip_nonfinite, ctl, slot, seq,
                 mirror=None):
    if not params:
        return
    kernel = OPTIM_KERNEL[rule]
    T = np.dtype(grads[0].dtype).type
    stream = stream_of(grads[0])
    flat, gs = _norm_passes(grads, ctl, len(rows), t_lo, limit, skip_nonfinite, slot, seq,
                            mirror)
    ctl = as_numba(ctl)
    coef = np.array([E.scalar_args(kernel, k, T)[:_NCOEF[kernel]] for k in rows], dtype=T)
    coef = cuda.to_device(coef, stream=stream)
    for i, p in enumerate(params):
        n = int(p.size)
        if n == 0:
            continue
        arrays = [as_numba(p).reshape(n), flat[i]] + [as_numba(s[i]).reshape(n) for s in states]
        launch = (blocks(n), THREADS, stream)
        if kernel == "sgd":
            _sgd[launch](*arrays, coef, gs, ctl)
        elif kernel in ("momentum", "nesterov"):
            _momentum[launch](*arrays, coef, gs, ctl, kernel == "nesterov")
        elif kernel == "rmsprop":
            _rmsprop[launch](*arrays, coef, gs, ctl)
        else:
            _adam[launch](*arrays, coef, gs, ctl, kernel == "nadam")


_NCOEF = {"sgd": 3, "momentum": 4, "nesterov": 4, "rmsprop": 9, "adam": 12, "nadam": 12}
