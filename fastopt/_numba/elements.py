"""The per-element optimizer math of csrc/common/optim_math.h (and the norm's fold), once, for
both Numba targets.

Plain Python functions of scalars: ``fastopt._numba.optim`` compiles them with ``njit`` (inlined
into its CPU loops) and ``fastopt._numba_cuda.optim`` with ``cuda.jit(device=True)``. Same
operations in the same order as the C++ and the NumPy reference, so every backend gives the
same bits. ``math.sqrt`` keeps float32 in float32 on both targets.
"""
import math


def sgd(p, g, lr, wd, gs):
    return p - lr * (gs * g + wd * p)


def momentum(p, g, v, lr, wd, gs, mom, nesterov):
    gg = gs * g + wd * p
    v = mom * v + gg
    if nesterov:
        return p - lr * (mom * v + gg), v
    return p - lr * v, v


def rmsprop(p, g, v, m, lr, wd, gs, mom, rho, omrho, eps, eps_out, lr_out):
    gg = gs * g + wd * p
    v = rho * v + omrho * (gg * gg)
    m = mom * m + lr * gg / (math.sqrt(v + eps) + eps_out)
    return p - lr_out * m, v, m


def adam(p, g, m, v, wd, gs, b1, omb1, b2, omb2, eps, alpha, c, decay, nm, ng, nadam):
    gg = gs * g + wd * p
    m = b1 * m + omb1 * gg
    v = b2 * v + omb2 * (gg * gg)
    mm = nm * m + ng * gg if nadam else m
    return decay * p - alpha * mm / (math.sqrt(v) / c + eps), m, v


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


def scalar_args(rule, k, T):
    """The element function's scalar arguments for kernel ``rule``, rounded to T once."""
    if rule == "sgd":
        return (T(k.lr), T(k.wd), T(k.gscale))
    if rule in ("momentum", "nesterov"):
        return (T(k.lr), T(k.wd), T(k.gscale), T(k.momentum), rule == "nesterov")
    if rule == "rmsprop":
        return (T(k.lr), T(k.wd), T(k.gscale), T(k.momentum), T(k.rho), T(1.0 - k.rho),
                T(k.eps), T(k.eps_out), T(k.lr_out))
    return (T(k.wd), T(k.gscale), T(k.beta1), T(1.0 - k.beta1), T(k.beta2), T(1.0 - k.beta2),
            T(k.eps), T(k.alpha), T(k.c), T(k.decay), T(k.nm), T(k.ng), rule == "nadam")
