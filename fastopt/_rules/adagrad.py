"""Adagrad (Duchi et al. 2011), as torch.optim.Adagrad computes it:

eta_t = eta / (1 + t delta);  s <- s + g^2 (s starts at initial_accumulator_value);
theta <- theta - eta_t (g / (sqrt(s) + eps))

with g = s_g g + lambda theta (coupled L2 decay), t the steps already taken and delta the
``lr_decay``.
"""
from __future__ import annotations

import math

import numpy as np

from .._core import make_scalars
from ._base import Hyper, Rule
from .sgd import _grad


def reference(p, g, s, k):
    T = p.dtype.type
    g = _grad(p, g, k, T)
    s[...] = s + g * g
    p[...] = p - T(k.lr) * (g / (np.sqrt(s) + T(k.eps)))


def element(p, g, s, b, c):
    gg = c.gscale * g + c.wd * p
    s = s + gg * gg
    return p - c.lr * (gg / (math.sqrt(s) + c.eps)), s, b


def scalars(*, lr, step, grad_scale=1.0, lr_decay, weight_decay, initial_accumulator_value,
            eps):
    return make_scalars(lr / (1.0 + step * lr_decay), grad_scale, wd=weight_decay, eps=eps)


RULES = (
    Rule("adagrad", "adagrad",
         (Hyper("lr_decay", 0.0, lo=0), Hyper("weight_decay", 0.0, lo=0),
          Hyper("initial_accumulator_value", 0.0, lo=0), Hyper("eps", 1e-10, lo=0)),
         (("sum", "initial_accumulator_value"),), scalars, reference, element,
         "s <- s + g^2; theta <- theta - eta / (1 + t delta) g / (sqrt(s) + eps)",
         lr=1e-2, nonnegative=("sum",), torch_state={"sum": "sum"}),
)
