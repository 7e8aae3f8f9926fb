"""numba-cuda norm kernels: csrc/common/norm_math.h's fixed order, bit for bit.

One launch per array: block b of the array is one thread block of NORM_LANES threads, thread j
adding the squares of elements j, j + L, ... of the block in turn (float64, products never
fused into the sums), then the lanes fold in halves. The array's block sums fold in halves on
the host (``pairwise_sum``, the same order as norm_fold_pairwise).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from .._core import G_EXP, GUARD_WIDTH, NORM_BLOCK, NORM_LANES, pairwise_sum
from ._common import THREADS, as_numba, blocks, dadd, dmul, stream_of

B, L = NORM_BLOCK, NORM_LANES


@cuda.jit
def _partials(x, scale, scaled, want_max, bsum, bmax, ctl, scale_on_device):
    if scale_on_device:  # a guarded step's rescaled pass: 2**exp from the device, 0 = no pass
        e = ctl[0, G_EXP]
        if e == 0:
            return
        scale = math.ldexp(1.0, int(e))
    blk = cuda.blockIdx.x
    lane = cuda.threadIdx.x
    begin = blk * B
    n = min(B, x.size - begin)
    acc = 0.0
    m = 0.0  # max |x| in float64: the conversion is exact and monotonic, so it is T's max
    i = lane
    while i < n:
        v = float64(x[begin + i])
        if scaled:
            v = dmul(v, scale)
        acc = dadd(acc, dmul(v, v))
        if want_max:
            a = abs(float64(x[begin + i]))
            m = a if a > m else m  # skips NaN, as the native max does
        i += L
    sums = cuda.shared.array(L, float64)
    maxs = cuda.shared.array(L, float64)
    sums[lane] = acc
    maxs[lane] = m
    cuda.syncthreads()
    h = L // 2
    while h >= 1:  # norm_fold_lanes
        if lane < h:
            sums[lane] = dadd(sums[lane], sums[lane + h])
            o = maxs[lane + h]
            maxs[lane] = o if o > maxs[lane] else maxs[lane]
        cuda.syncthreads()
        h //= 2
    if lane == 0:
        bsum[blk] = sums[0]
        bmax[blk] = maxs[0]


_NO_CTL = np.zeros((1, GUARD_WIDTH))


def _no_ctl(stream):
    """A stand-in control array for passes whose scale comes from the host: made per call, in
    the current context (a cached one would belong to whichever context ran first)."""
    return cuda.to_device(_NO_CTL, stream=stream)


def norm_partials(arrays, scale, want_max):
    """Per array: (sum of (scale*x)^2 in the fixed order, max |x| or 0), float64 host arrays."""
    sumsq = np.zeros(len(arrays))
    maxabs = np.zeros(len(arrays))
    for i, a in enumerate(arrays):
        n = int(a.size)
        if n == 0:
            continue
        nb = -(-n // B)
        stream = stream_of(a)
        bsum = cuda.device_array(nb, np.float64, stream=stream)
        bmax = cuda.device_array(nb, np.float64, stream=stream)
        _partials[nb, L, stream](as_numba(a).reshape(n), np.float64(scale), scale != 1.0,
                                 bool(want_max), bsum, bmax, _no_ctl(stream), False)
        sums, maxes = bsum.copy_to_host(stream=stream), bmax.copy_to_host(stream=stream)
        if stream:
            stream.synchronize()
        sumsq[i] = pairwise_sum(sums)
        if want_max:
            maxabs[i] = float(maxes.max())
    return sumsq, maxabs


@cuda.jit
def _scale(x, s):
    i = cuda.grid(1)
    if i < x.size:
        x[i] = s * x[i]


def norm_scale(arrays, factor):
    """x <- s x in place, s = ``factor`` rounded once to the storage dtype."""
    for a in arrays:
        n = int(a.size)
        if n:
            s = np.dtype(a.dtype).type(factor)
            _scale[blocks(n), THREADS, stream_of(a)](as_numba(a).reshape(n), s)
