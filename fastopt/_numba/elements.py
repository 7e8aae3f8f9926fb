"""The norm's fold (csrc/common/norm_math.h), once, for both Numba targets: a plain Python
function that ``fastopt._numba.norm`` compiles with ``njit`` and ``fastopt._numba_cuda.guard``
with ``cuda.jit(device=True)``. (The optimizers' element math is each rule's ``element``, in
fastopt/_rules.)
"""


def fold_pairwise(v, lo, n):
    """The norm's fold in halves of v[lo:lo+n], in place (csrc/common/norm_math.h's
    norm_fold_pairwise; zero padding to a power of two implied)."""
    if n == 0:
        return 0.0
    w = 1
    while w < n:
        w *= 2
    while w > 1:
        h = w // 2
        for j in range(n - h):
            v[lo + j] = v[lo + j] + v[lo + j + h]
        if n > h:
            n = h
        w = h
    return v[lo]
