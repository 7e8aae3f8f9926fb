"""numba-cuda Halton kernel: SPEC §4's digit loop on tabulated terms, bit for bit.

One thread per row; for each dimension x = ((0 + t_0[q_0]) + t_1[q_1]) + ... over the digits
q_k of the 64-bit index (csrc/common/halton_math.h's fold: additions only, nothing to fuse).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .. import _device
from .._reference.halton import check_tables
from ._common import THREADS, as_numba, blocks, stream_of

_NO_SHIFT = np.zeros(1)


@cuda.jit
def _rows(out, start, bases, ndig, ws, offsets, terms, shift, has_shift):
    r = cuda.grid(1)
    if r >= out.shape[0]:
        return
    i = np.uint64(start) + np.uint64(r)
    for j in range(out.shape[1]):
        b = np.uint64(bases[j])
        w = ws[j]
        narrow = w < bases[j]  # rows from start's digits on (halton_math.h's halton_slot)
        q = i
        qs = np.uint64(start)
        x = 0.0
        at = offsets[j]
        for k in range(ndig[j]):
            h = q // b
            e = q - h * b
            if narrow:
                hs = qs // b
                s = qs - hs * b
                e = e - s if e >= s else e + b - s
                qs = hs
            x += terms[at + k * w + np.int64(e)]
            q = h
        if has_shift:
            y = x + shift[j]
            x = y - 1.0 if y >= 1.0 else y
        out[r, j] = x


def halton(out, start, tab, ndig, workers):
    """Rows ``start ..`` into the (n, d) float64 device array ``out``."""
    if _device.dtype(out) != np.float64 or len(out.shape) != 2:
        raise TypeError("out must be a 2-D float64 device array")
    ws = check_tables(out.shape, start, tab, ndig)
    n = out.shape[0]
    if n == 0 or out.shape[1] == 0:
        return
    stream = stream_of(out)
    has_shift = tab.shift is not None
    tables = [cuda.to_device(np.ascontiguousarray(t), stream=stream) for t in
              (tab.bases, np.asarray(ndig, dtype=np.int64), ws, tab.offsets, tab.terms,
               tab.shift if has_shift else _NO_SHIFT)]
    _rows[blocks(n), THREADS, stream](as_numba(out), np.uint64(start), *tables, has_shift)
