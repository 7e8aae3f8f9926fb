"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"; optax.lion):

u <- b1 m + (1-b1) g;  theta <- (1 - eta lambda) theta - eta sign(u);  m <- b2 m + (1-b2) g

One state buffer, the momentum m (from 0); the decay is decoupled, as in optax and the paper;
sign(0) = 0 and sign(NaN) = NaN. eta sign(u) is computed exactly (+-eta), so the step is one
rounding away from the real-number rule. The paper advises a learning rate 3-10x below AdamW's
and a weight decay 3-10x above it.
"""
from __future__ import annotations

import numpy as np

from .._core import make_scalars
from ._base import Hyper, Rule
from .sgd import _grad


def reference(p, g, m, k):
    T = p.dtype.type
    g = _grad(p, g, k, T)
    u = T(k.beta1) * m + T(1.0 - k.beta1) * g
    lr = T(k.lr)
    step = np.where(u > 0, lr, np.where(u < 0, -lr, u * lr))
    m[...] = T(k.beta2) * m + T(1.0 - k.beta2) * g
    p[...] = T(k.decay) * p - step


def element(p, g, m, b, c):
    gg = c.gscale * g + c.wd * p
    u = c.beta1 * m + c.omb1 * gg
    if u > 0:
        step = c.lr
    elif u < 0:
        step = -c.lr
    else:
        step = u * c.lr  # a signed zero, or NaN
    return c.decay * p - step, c.beta2 * m + c.omb2 * gg, b


def scalars(*, lr, step, grad_scale=1.0, beta1, beta2, weight_decay):
    return make_scalars(lr, grad_scale, beta1=beta1, beta2=beta2, decay=1.0 - lr * weight_decay)


RULES = (
    Rule("lion", "lion",
         (Hyper("beta1", 0.9, lo=0, hi=1), Hyper("beta2", 0.99, lo=0, hi=1, hi_open=True),
          Hyper("weight_decay", 1e-3, lo=0, doc="decoupled: theta <- (1 - eta lambda) theta")),
         (("m", 0.0),), scalars, reference, element,
         "u <- b1 m + (1-b1) g; theta <- (1 - eta lambda) theta - eta sign(u); "
         "m <- b2 m + (1-b2) g",
         lr=1e-4, torch_state={"m": "exp_avg"}),
)
