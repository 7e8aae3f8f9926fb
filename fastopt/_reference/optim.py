"""Reference optimizer updates (SPEC §2), one array at a time, in the storage dtype.

Scalars arrive as float64 and are rounded to the storage dtype exactly once, as the native
kernels do; the order of operations below is the one every backend follows.
"""
from __future__ import annotations

import numpy as np

from .._registry import OPTIM_KERNEL


def _grad(p, g, k, T):
    # grad_scale and coupled (L2) weight decay: g <- s*g + wd*theta
    return T(k.gscale) * g + T(k.wd) * p


def sgd(p, g, k):
    T = p.dtype.type
    p[...] = p - T(k.lr) * _grad(p, g, k, T)


def momentum(p, g, v, k, nesterov=False):
    T = p.dtype.type
    g = _grad(p, g, k, T)
    v[...] = T(k.momentum) * v + g
    p[...] = p - T(k.lr) * (T(k.momentum) * v + g if nesterov else v)


def nesterov(p, g, v, k):
    momentum(p, g, v, k, nesterov=True)


def rmsprop(p, g, v, m, k):
    T = p.dtype.type
    g = _grad(p, g, k, T)
    v[...] = T(k.rho) * v + T(1.0 - k.rho) * (g * g)
    m[...] = T(k.momentum) * m + T(k.lr) * g / (np.sqrt(v + T(k.eps)) + T(k.eps_out))
    p[...] = p - T(k.lr_out) * m


def adam(p, g, m, v, k, nadam=False):
    """theta <- decay*theta - alpha * m_eff / (sqrt(v)/c + eps).

    Default: alpha = lr*sqrt(1-b2^(t+1))/(1-b1^(t+1)), c = 1. torch_compat: alpha = lr/(1-b1^(t+1)),
    c = sqrt(1-b2^(t+1)). AdamW: decay = 1 - lr*wd. NAdam: m_eff = nm*m + ng*g (default nm = b1, ng = 1-b1).
    """
    T = p.dtype.type
    g = _grad(p, g, k, T)
    m[...] = T(k.beta1) * m + T(1.0 - k.beta1) * g
    v[...] = T(k.beta2) * v + T(1.0 - k.beta2) * (g * g)
    mm = T(k.nm) * m + T(k.ng) * g if nadam else m
    p[...] = T(k.decay) * p - T(k.alpha) * mm / (np.sqrt(v) / T(k.c) + T(k.eps))


def nadam(p, g, m, v, k):
    adam(p, g, m, v, k, nadam=True)


_RULES = {"sgd": sgd, "momentum": momentum, "nesterov": nesterov, "rmsprop": rmsprop,
          "adam": adam, "nadam": nadam}


def optim_update(rule: str, params, grads, states, k):
    """Apply ``rule`` in place to every (param, grad, state...) triple; ``k`` is a Scalars."""
    fn = _RULES[OPTIM_KERNEL[rule]]
    for i, p in enumerate(params):
        fn(p, grads[i], *(s[i] for s in states), k)
