"""Reference Halton sequence (SPEC §4): the spec's digit loop, one dimension at a time.

Vectorised over points only; every float operation is the one the spec writes, in its order.
"""
from __future__ import annotations

import numpy as np


def check_host_out(out) -> None:
    if type(out) is not np.ndarray or out.dtype != np.float64 or out.ndim != 2:
        raise TypeError("out must be a 2-D float64 numpy.ndarray")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out must be C-contiguous and writable")


def check_tables(shape, start, tab, ndig) -> np.ndarray:
    """The native-boundary contract of the Python Halton kernels (Numba, numba-cuda, this one),
    as csrc/common/halton_math.h's halton_check_dim states it for C++: whatever the caller
    passed, a kernel that accepts it reads and writes inside its arrays. ``shape`` is the
    output's (n, d). Returns each dimension's row width (see fastopt.halton.HaltonTables)."""
    n, d = (int(v) for v in shape)
    if not isinstance(start, (int, np.integer)) or not 0 <= int(start) <= 2**64 - max(n, 1):
        raise ValueError("start must be an integer with start + n <= 2**64")

    def table(a, name, dtype, size):
        if (type(a) is not np.ndarray or a.dtype != dtype or a.ndim != 1
                or not a.flags.c_contiguous or (size is not None and a.size != size)):
            raise ValueError(f"{name} must be a contiguous 1-D {np.dtype(dtype)} array"
                             + ("" if size is None else f" of {size} entries"))
        return a

    b = table(tab.bases, "bases", np.int64, d)
    k = table(ndig, "ndig", np.int64, d)
    o = table(tab.offsets, "offsets", np.int64, d + 1)
    terms = table(tab.terms, "terms", np.float64, None)
    if tab.shift is not None:
        table(tab.shift, "shift", np.float64, d)
    if ((b < 2) | (b >= 2**32)).any() or ((k < 0) | (k > 64)).any():
        raise ValueError("bases must be in [2, 2**32) and ndig in [0, 64]")
    span = np.diff(o)
    if d and (o[0] < 0 or (span < 0).any() or o[-1] > terms.size):
        raise ValueError("offsets must rise within terms")
    w = span // np.maximum(k, 1)
    rows = k > 0
    if (rows & ((w * k != span) | (w > b) | (w < np.minimum(b, n)))).any():
        raise ValueError("ndig, offsets and terms disagree (rows of min(b, n) to b entries each)")
    if tab.perms is not None:
        if (not isinstance(tab.perms, tuple) or len(tab.perms) != d
                or any(np.shape(p) != (int(kj), int(bj)) for p, kj, bj in zip(tab.perms, k, b))):
            raise ValueError("perms must hold a (ndig, b) array per dimension")
    return np.where(rows, w, 0)


def halton(out, start, tab, ndig, workers):
    """Rows ``start .. start + n - 1`` of the sequence described by ``tab`` into ``out`` (n, d).

    ``ndig`` (how many digits the native kernels fold) and ``workers`` do not change the result;
    the reference follows the spec literally and runs on one thread.
    """
    check_host_out(out)
    check_tables(out.shape, start, tab, ndig)
    n, d = out.shape
    for j in range(d):
        b = int(tab.bases[j])
        q = np.arange(n, dtype=np.uint64) + np.uint64(start)  # the point indices i
        x = np.zeros(n)
        f = 1.0 / b
        if tab.perms is not None:
            for perm in tab.perms[j]:  # K digit positions, lowest first
                x += perm[q % np.uint64(b)] * f
                f /= b
                q //= np.uint64(b)
        else:
            while q.any():  # unscrambled: pi = identity, stop when every q is 0
                x += (q % np.uint64(b)) * f
                f /= b
                q //= np.uint64(b)
        if tab.shift is not None:
            x = np.mod(x + tab.shift[j], 1.0)
        out[:, j] = x
