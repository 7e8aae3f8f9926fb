"""SGD and the momentum rules (SPEC §2).

sgd:       theta <- theta - eta g
momentum:  v <- gamma v + g;  theta <- theta - eta v
nesterov:  v <- gamma v + g;  theta <- theta - eta (gamma v + g)

with g = s g + lambda theta (grad_scale s, coupled L2 decay lambda) throughout.
"""
from __future__ import annotations

from .._core import make_scalars
from ._base import Hyper, Rule

WEIGHT_DECAY = Hyper("weight_decay", 0.0, lo=0, doc="coupled L2 decay: g <- g + lambda theta")
MOMENTUM = Hyper("momentum", 0.9, lo=0, doc="gamma")


def _grad(p, g, k, T):
    return T(k.gscale) * g + T(k.wd) * p  # grad_scale, then coupled (L2) decay


def sgd_reference(p, g, k):
    T = p.dtype.type
    p[...] = p - T(k.lr) * _grad(p, g, k, T)


def _momentum_reference(p, g, v, k, nesterov):
    T = p.dtype.type
    g = _grad(p, g, k, T)
    v[...] = T(k.momentum) * v + g
    p[...] = p - T(k.lr) * (T(k.momentum) * v + g if nesterov else v)


def momentum_reference(p, g, v, k):
    _momentum_reference(p, g, v, k, False)


def nesterov_reference(p, g, v, k):
    _momentum_reference(p, g, v, k, True)


def sgd_element(p, g, a, b, c):
    return p - c.lr * (c.gscale * g + c.wd * p), a, b


def momentum_element(p, g, v, b, c):
    gg = c.gscale * g + c.wd * p
    v = c.momentum * v + gg
    return p - c.lr * v, v, b


def nesterov_element(p, g, v, b, c):
    gg = c.gscale * g + c.wd * p
    v = c.momentum * v + gg
    return p - c.lr * (c.momentum * v + gg), v, b


def sgd_scalars(*, lr, step, grad_scale=1.0, weight_decay):
    return make_scalars(lr, grad_scale, wd=weight_decay)


def momentum_scalars(*, lr, step, grad_scale=1.0, weight_decay, momentum):
    return make_scalars(lr, grad_scale, wd=weight_decay, momentum=momentum)


RULES = (
    Rule("sgd", "sgd", (WEIGHT_DECAY,), (), sgd_scalars, sgd_reference, sgd_element,
         "theta <- theta - eta (g + lambda theta)"),
    Rule("momentum", "momentum", (MOMENTUM, WEIGHT_DECAY), (("v", 0.0),), momentum_scalars,
         momentum_reference, momentum_element,
         "heavy ball: v <- gamma v + g; theta <- theta - eta v (v starts at 0)",
         torch_state={"v": "momentum_buffer"}),
    Rule("nesterov", "nesterov", (MOMENTUM, WEIGHT_DECAY), (("v", 0.0),), momentum_scalars,
         nesterov_reference, nesterov_element,
         "v <- gamma v + g; theta <- theta - eta (gamma v + g)",
         torch_state={"v": "momentum_buffer"}),
)
