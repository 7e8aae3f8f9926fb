"""numba-cuda Halton kernel: SPEC §4's digit loop on tabulated terms, bit for bit.

One thread per row; for each dimension x = ((0 + t_0[q_0]) + t_1[q_1]) + ... over the digits
q_k of the 64-bit index (csrc/common/halton_math.h's fold: additions only, nothing to fuse).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from ._common import THREADS, as_numba, blocks, stream_of

_NO_SHIFT = np.zeros(1)


@cuda.jit
def _rows(out, start, bases, ndig, offsets, terms, shift, has_shift):
    r = cuda.grid(1)
    if r >= out.shape[0]:
        return
    i = np.uint64(start) + np.uint64(r)
    for j in range(out.shape[1]):
        b = np.uint64(bases[j])
        q = i
        x = 0.0
        at = offsets[j]
        for k in range(ndig[j]):
            h = q // b
            x += terms[at + k * np.int64(b) + np.int64(q - h * b)]
            q = h
        if has_shift:
            y = x + shift[j]
            x = y - 1.0 if y >= 1.0 else y
        out[r, j] = x


def halton(out, start, tab, ndig, workers):
    """Rows ``start ..`` into the (n, d) float64 device array ``out``."""
    n = out.shape[0]
    stream = stream_of(out)
    has_shift = tab.shift is not None
    tables = [cuda.to_device(np.ascontiguousarray(t), stream=stream) for t in
              (tab.bases, np.asarray(ndig, dtype=np.int64), tab.offsets, tab.terms,
               tab.shift if has_shift else _NO_SHIFT)]
    _rows[blocks(n), THREADS, stream](as_numba(out), np.uint64(start), *tables, has_shift)
