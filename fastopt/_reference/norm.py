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

16-bit host arrays (float16, ``ml_dtypes.bfloat16``) are widened exactly to float32 first: the
sums and the max are those of a float32 copy, bit for bit.
"""
from __future__ import annotations

import math

import numpy as np

from .._core import (NORM_BLOCK, NORM_LANES, finish_norm, guard_decide, pairwise_sum,  # noqa: F401
                     sum_of_squares)
from .._precision import HOST_BF16
from .._validate import check_kernel_arrays

#: The 16-bit host dtypes the norm reads, by the names the kernels know them by.
NORM16 = {np.dtype(np.float16): "f16", **({HOST_BF16: "bf16"} if HOST_BF16 is not None else {})}


def check_norm16(arrays):
    """The kernels' contract for a 16-bit list, as ``check_kernel_arrays`` (which knows float32
    and float64 only) holds it for the others: every item a C-contiguous ndarray of exactly
    arrays[0]'s dtype. Returns "f16" or "bf16" for such a list, None for any other (which the
    caller checks as before)."""
    if not (isinstance(arrays, list) and arrays and type(arrays[0]) is np.ndarray):
        return None
    kind = NORM16.get(arrays[0].dtype)
    if kind is not None:
        dt = arrays[0].dtype
        for i, a in enumerate(arrays):
            if type(a) is not np.ndarray:
                raise TypeError(f"arrays[{i}] is not an ndarray")
            if a.dtype != dt:
                raise TypeError(f"arrays[{i}] has dtype {a.dtype}, not {dt}")
            if not a.flags.c_contiguous:
                raise ValueError(f"arrays[{i}] is not C-contiguous")
    return kind


def widened(a):
    """``a`` flattened, 16-bit storage widened exactly to float32 (bfloat16: its bits << 16;
    NumPy's float16 cast is exact); float32/float64 as they are."""
    flat = a.reshape(-1)
    if flat.dtype == np.float16:
        return flat.astype(np.float32)
    if flat.dtype == HOST_BF16:
        return (flat.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return flat


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
        with np.errstate(invalid="ignore"):  # a signalling NaN is quietly a NaN
            flat = widened(a).astype(np.float64) * scale  # exact: scale is a power of two
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
    if check_norm16(arrays) is None:  # the contract every backend keeps
        check_kernel_arrays([("arrays", arrays, False)])
    sums, counts = _block_sums(arrays, np.float64(scale))
    sumsq = np.zeros(len(arrays))
    maxabs = np.zeros(len(arrays))
    start = 0
    for i, (a, nb) in enumerate(zip(arrays, counts)):
        sumsq[i] = pairwise_sum(sums[start:start + nb])
        start += nb
        if want_max and a.size:
            maxabs[i] = np.fmax.reduce(np.abs(widened(a)), initial=0)
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
