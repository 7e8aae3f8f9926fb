r"""Reference norm kernels (SPEC §3): the summation order every backend reproduces bit for bit.

For one array x (flattened, C order), multiplied by a power of two ``scale`` (exact), in float64:

* blocks: x[0:B], x[B:2B], ... with B = NORM_BLOCK (the last one may be short);
* inside a block: lane j (0 <= j < L = NORM_LANES) holds ((0 + y_j^2) + y_{j+L}^2) + ..., the
  elements i = j mod L in order; then the lanes fold in halves: lane j += lane j + L/2 for
  j < L/2, then L/4, ... down to lane 0, the block sum;
* the block sums of an array fold in halves too (``pairwise_sum``: zero-padded to a power of two,
  v[j] += v[j + h]), which gives the array's sum of squares.

Adding +0.0 leaves a sum of squares unchanged bit for bit, so zero padding anywhere in this order
is harmless; that is what lets NumPy vectorise across blocks and lanes below and still follow it.
"""
from __future__ import annotations

import math

import numpy as np

from .._core import (NORM_BLOCK, NORM_LANES, finish_norm, guard_decide, pairwise_sum,  # noqa: F401
                     sum_of_squares)
from .._validate import check_kernel_arrays


def _block_sums(arrays, scale):
    """float64 sum of squares of every block of every array, in array then block order."""
    B, L = NORM_BLOCK, NORM_LANES
    counts = [-(-a.size // B) for a in arrays]
    if sum(counts) == 0:
        return np.zeros(0), counts
    # Columns needed: a full block if any array has one, else the longest (short) array.
    width = max(min(a.size, B) for a in arrays)
    width = -(-width // L) * L
    y = np.zeros((sum(counts), width))
    row = 0
    for a, nb in zip(arrays, counts):
        if nb == 0:
            continue
        flat = a.reshape(-1).astype(np.float64) * scale  # exact: scale is a power of two
        full = a.size // B
        if full:
            y[row:row + full, :B] = flat[:full * B].reshape(full, B)
        if full < nb:
            tail = flat[full * B:]
            y[row + full, :tail.size] = tail
        row += nb
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN propagate, as they should
        y = (y * y).reshape(y.shape[0], width // L, L)
    acc = np.zeros((y.shape[0], L))
    for r in range(y.shape[1]):  # sequential within each lane, vectorised across blocks/lanes
        acc += y[:, r, :]
    while acc.shape[1] > 1:  # fold the lanes in halves
        h = acc.shape[1] // 2
        acc = acc[:, :h] + acc[:, h:]
    return acc[:, 0], counts


def norm_partials(arrays, scale, want_max):
    """Per array: (sum of (scale*x)^2 in the fixed order above, max |x|), both float64 arrays.

    ``arrays`` share one dtype; ``scale`` is a power of two (1.0 for none). The max is computed
    only if ``want_max`` (else 0) and ignores NaN (a NaN shows in the sum of squares instead), as
    the native kernels' max instruction does.
    """
    check_kernel_arrays([("arrays", arrays, False)])  # the contract every backend keeps
    sums, counts = _block_sums(arrays, np.float64(scale))
    sumsq = np.zeros(len(arrays))
    maxabs = np.zeros(len(arrays))
    start = 0
    for i, (a, nb) in enumerate(zip(arrays, counts)):
        sumsq[i] = pairwise_sum(sums[start:start + nb])
        start += nb
        if want_max and a.size:
            maxabs[i] = np.fmax.reduce(np.abs(a.reshape(-1)), initial=0)
    return sumsq, maxabs


def norm_scale(arrays, factor):
    """x <- s x in place for every array, s = ``factor`` rounded once to the storage dtype
    (as the optimizer kernels apply ``grad_scale``)."""
    check_kernel_arrays([("arrays", arrays, True)])
    for a in arrays:
        np.multiply(a, a.dtype.type(factor), out=a)


def guarded_norm(arrays, ctl):
    """The norm of ``arrays`` into ctl[0, G_NORM] (and ctl[1], a guarded step's slot row, as
    the device kernels do), deciding nothing else: fastopt.global_norm(as_array=True)."""
    guard_decide(ctl, norm_value(arrays), 1, 0, math.inf, False, 1, 0)


def norm_value(arrays) -> float:
    """The global 2-norm of validated host arrays by this backend's passes (SPEC §3): what
    ``fastopt.global_norm`` returns, bit for bit."""
    def read(exp, want_max):
        s, m = norm_partials(arrays, math.ldexp(1.0, exp), want_max)
        return np.asarray(s, np.float64), (np.asarray(m, np.float64) if want_max else None)
    total, maxabs, exp, _ = sum_of_squares(read)
    return finish_norm(total, maxabs, exp)
