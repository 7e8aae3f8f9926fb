"""RMSProp as the source document writes it (SPEC §2):

v <- rho v + (1-rho) g^2 (v starts at 1);  m <- gamma m + eta g / (sqrt(v + eps) + eps_out);
theta <- theta - lr_out m

with eps_out = 0 and lr_out = 1. PyTorch's variant (v from 0, eps outside the root, lr outside
the buffer) is the same kernel with lr = 1, eps = 0, eps_out = eps, lr_out = eta.
"""
from __future__ import annotations

import math

import numpy as np

from .._core import make_scalars
from ._base import Hyper, Rule
from .sgd import WEIGHT_DECAY, _grad


def reference(p, g, v, m, k):
    T = p.dtype.type
    g = _grad(p, g, k, T)
    v[...] = T(k.rho) * v + T(1.0 - k.rho) * (g * g)
    m[...] = T(k.momentum) * m + T(k.lr) * g / (np.sqrt(v + T(k.eps)) + T(k.eps_out))
    p[...] = p - T(k.lr_out) * m


def element(p, g, v, m, c):
    gg = c.gscale * g + c.wd * p
    v = c.rho * v + c.omrho * (gg * gg)
    m = c.momentum * m + c.lr * gg / (math.sqrt(v + c.eps) + c.eps_out)
    return p - c.lr_out * m, v, m


def scalars(*, lr, step, grad_scale=1.0, rho, momentum, eps, weight_decay):
    return make_scalars(lr, grad_scale, wd=weight_decay, momentum=momentum, rho=rho, eps=eps)


RULES = (
    Rule("rmsprop", "rmsprop",
         (Hyper("rho", 0.9, lo=0, hi=1, hi_open=True), Hyper("momentum", 0.0, lo=0),
          Hyper("eps", 1e-8, lo=0), WEIGHT_DECAY),
         (("v", 1.0), ("m", 0.0)), scalars, reference, element,
         "v <- rho v + (1-rho) g^2 (v starts at 1); m <- gamma m + eta g / sqrt(v + eps); "
         "theta <- theta - m",
         nonnegative=("v",), torch_state={"v": "square_avg", "m": "momentum_buffer"}),
)
