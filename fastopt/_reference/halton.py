"""Reference Halton sequence (SPEC §4): the spec's digit loop, one dimension at a time.

Vectorised over points only; every float operation is the one the spec writes, in its order.
"""
from __future__ import annotations

import numpy as np


def halton(out, start, tab, ndig, workers):
    """Rows ``start .. start + n - 1`` of the sequence described by ``tab`` into ``out`` (n, d).

    ``ndig`` (how many digits the native kernels fold) and ``workers`` do not change the result;
    the reference follows the spec literally and runs on one thread.
    """
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
