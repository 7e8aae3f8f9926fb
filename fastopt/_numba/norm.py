"""Numba norm kernels: the block/lane summation order of fastopt/_reference/norm.py, bit for bit.

One compiled call for the whole list: the arrays travel as a table of data addresses and sizes
(a numba typed list of 200 arrays costs tens of milliseconds to build, and one parallel launch
per array is slow when the C++ backend's OpenMP threads are also about). Every block of every
array runs on any thread into its own slot, so the thread count cannot change the result.

16-bit arrays (float16, bfloat16) are read as their uint16 bits, a block at a time widened
exactly to float32 in a block-sized buffer, then summed by the float32 code: the bits of the
norm of a float32 copy, without the copy.
"""
from __future__ import annotations

import numpy as np
from numba import carray, njit, prange

from .._reference.norm import check_norm16
from .._registry import NORM_BLOCK, NORM_LANES
from .._validate import data_addresses, kernel_addresses
from . import elements as E
from ._jit import JIT as _JIT, SERIAL_BELOW, compiled as _compiled, pointer as _pointer, \
    twins as _twins

# Literal, not read from the registry: numba's on-disk cache only notices edits to this file, so
# a changed registry must fail here instead of running stale compiled constants.
_B, _L = 1 << 14, 16
if (_B, _L) != (NORM_BLOCK, NORM_LANES):
    raise ImportError(f"fastopt._numba.norm has block/lanes {(_B, _L)} but the registry says "
                      f"{(NORM_BLOCK, NORM_LANES)}; update this file")


@njit(**_JIT)
def _block(x, b, e, scale, want_max):
    """(sum of (scale*x)^2 over x[b:e] in lane order, max |x| or 0) as float64."""
    acc = np.zeros(_L)
    m = 0.0
    i = b
    while i + _L <= e:
        for j in range(_L):
            v = np.float64(x[i + j]) * scale
            acc[j] += v * v
        if want_max:
            for j in range(_L):
                a = np.float64(abs(x[i + j]))
                m = a if a > m else m
        i += _L
    j = 0
    while i < e:
        v = np.float64(x[i]) * scale
        acc[j] += v * v
        if want_max:
            a = np.float64(abs(x[i]))
            m = a if a > m else m
        i += 1
        j += 1
    h = _L // 2
    while h >= 1:
        for j in range(h):
            acc[j] += acc[j + h]
        h //= 2
    return acc[0], m


_fold = njit(**_JIT)(E.fold_pairwise)


# -- 16-bit storage: the bits of float16 / bfloat16, widened exactly to float32 bits ----------

@njit(**_JIT)
def _bf16_bits(h):
    return np.uint32(h) << np.uint32(16)  # the top half of a float32


@njit(**_JIT)
def _f16_bits(h):
    """IEEE half -> float32 bits: a normal's exponent rebiased (15 -> 127), a subnormal
    normalised (m 2^-24 is a normal float32), inf and NaN kept with their payload."""
    h = np.uint32(h)
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0x1F:
        return np.uint32(sign | 0x7F800000 | (m << 13))
    if e != 0:
        return np.uint32(sign | ((e + 112) << 23) | (m << 13))
    if m == 0:
        return np.uint32(sign)
    e = 113
    while m & 0x400 == 0:
        m <<= 1
        e -= 1
    return np.uint32(sign | (e << 23) | ((m & 0x3FF) << 13))


def _block16(x, b, e, scale, want_max):
    """_block of the 16-bit bits x[b:e] (WIDEN: their float32 bits), through a float32 buffer
    of one block (no copy of the array)."""
    buf = np.empty(e - b, np.uint32)
    for i in range(e - b):
        buf[i] = WIDEN(x[b + i])  # noqa: F821 - a global of the compiled copy
    return _block(buf.view(np.float32), 0, e - b, scale, want_max)


_block_bf16 = _compiled(_block16, "_block_bf16", {"WIDEN": _bf16_bits})
_block_f16 = _compiled(_block16, "_block_f16", {"WIDEN": _f16_bits})


def _partials(addresses, sizes, like, scale, want_max):
    na = addresses.size
    nb = (sizes + _B - 1) // _B
    first = np.zeros(na + 1, np.int64)  # first block of each array in the table
    for a in range(na):
        first[a + 1] = first[a] + nb[a]
    owner = np.zeros(first[na], np.int64)
    for a in range(na):
        owner[first[a]:first[a + 1]] = a
    sums = np.zeros(first[na])
    maxs = np.zeros(first[na])
    for k in prange(first[na]):  # every block of every array, each into its own slot
        a = owner[k]
        x = carray(_pointer(addresses[a], like), sizes[a])
        b = (k - first[a]) * _B
        sums[k], maxs[k] = _block(x, b, min(sizes[a], b + _B), scale, want_max)
    sumsq = np.zeros(na)
    maxabs = np.zeros(na)
    for a in range(na):
        m = 0.0
        for k in range(first[a], first[a + 1]):
            m = maxs[k] if maxs[k] > m else m
        maxabs[a] = m
        sumsq[a] = _fold(sums, first[a], nb[a])
    return sumsq, maxabs


def _scale(addresses, sizes, like, s):
    na = addresses.size
    nc = (sizes + _B - 1) // _B
    first = np.zeros(na + 1, np.int64)
    for a in range(na):
        first[a + 1] = first[a] + nc[a]
    owner = np.zeros(first[na], np.int64)
    for a in range(na):
        owner[first[a]:first[a + 1]] = a
    for k in prange(first[na]):
        a = owner[k]
        x = carray(_pointer(addresses[a], like), sizes[a])
        for i in range((k - first[a]) * _B, min(sizes[a], (k - first[a] + 1) * _B)):
            x[i] = s * x[i]


_partials_parallel, _partials_serial = _twins(_partials)
# the same traversal over uint16 bits, its _block one that widens first
_PARTIALS16 = {name: _twins(_partials, {"_block": block}, "_partials_" + name)
               for name, block in (("bf16", _block_bf16), ("f16", _block_f16))}
_scale_parallel, _scale_serial = _twins(_scale)


def _table(arrays, written=False):
    """Data addresses and sizes: the arrays stay alive (and in place) for the caller's call.
    The kernels read every array as the first one's dtype, so that is checked first."""
    addresses, = kernel_addresses([("arrays", arrays, written)])
    sizes = np.array([a.size for a in arrays], np.int64)
    return addresses, sizes


_U16 = np.zeros(0, np.uint16)  # 16-bit arrays are read as their bits


def norm_partials(arrays, scale, want_max):
    kind = check_norm16(arrays)  # None: float32/float64 (checked by _table)
    if not arrays:
        return np.zeros(0), np.zeros(0)
    if kind is None:
        addresses, sizes = _table(arrays)
        parallel, serial, like = _partials_parallel, _partials_serial, arrays[0].reshape(-1)[:0]
    else:
        addresses = np.array(data_addresses(arrays), np.intp)
        sizes = np.array([a.size for a in arrays], np.int64)
        (parallel, serial), like = _PARTIALS16[kind], _U16
    run = serial if sizes.sum() < SERIAL_BELOW else parallel
    return run(addresses, sizes, like, np.float64(scale), bool(want_max))


def norm_scale(arrays, factor):
    if arrays:
        addresses, sizes = _table(arrays, written=True)
        run = _scale_serial if sizes.sum() < SERIAL_BELOW else _scale_parallel
        run(addresses, sizes, arrays[0].reshape(-1)[:0], arrays[0].dtype.type(factor))
