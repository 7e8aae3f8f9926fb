"""The Adam family (SPEC §2): m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;

theta <- decay theta - alpha m_eff / (sqrt(v) / c + eps)

adam:  alpha = eta sqrt(1-b2^(t+1)) / (1-b1^(t+1)), c = 1, m_eff = m, decay = 1
       (torch_compat: alpha = eta / (1-b1^(t+1)), c = sqrt(1-b2^(t+1)): eps after the bias
       correction, as torch.optim.Adam);
adamw: adam with decay = 1 - eta lambda (decoupled) instead of the coupled L2 term;
nadam: adam with m_eff = nm m + ng g, nm = b1, ng = 1-b1 (PyTorch's momentum-decay schedule
       gives other nm, ng: fastopt.torch computes them).
"""
from __future__ import annotations

import math

import numpy as np

from .._core import make_scalars
from ._base import Hyper, Rule
from .sgd import _grad

BETA1 = Hyper("beta1", 0.9, lo=0, hi=1, hi_open=True)
BETA2 = Hyper("beta2", 0.999, lo=0, hi=1, hi_open=True)
EPS = Hyper("eps", 1e-8, lo=0)
TORCH_COMPAT = Hyper("torch_compat", False, doc="eps after the bias correction, as torch")


def _reference(p, g, m, v, k, nadam):
    T = p.dtype.type
    g = _grad(p, g, k, T)
    m[...] = T(k.beta1) * m + T(1.0 - k.beta1) * g
    v[...] = T(k.beta2) * v + T(1.0 - k.beta2) * (g * g)
    mm = T(k.nm) * m + T(k.ng) * g if nadam else m
    p[...] = T(k.decay) * p - T(k.alpha) * mm / (np.sqrt(v) / T(k.c) + T(k.eps))


def adam_reference(p, g, m, v, k):
    _reference(p, g, m, v, k, False)


def nadam_reference(p, g, m, v, k):
    _reference(p, g, m, v, k, True)


def adam_element(p, g, m, v, c):
    gg = c.gscale * g + c.wd * p
    m = c.beta1 * m + c.omb1 * gg
    v = c.beta2 * v + c.omb2 * (gg * gg)
    return c.decay * p - c.alpha * m / (math.sqrt(v) / c.c + c.eps), m, v


def nadam_element(p, g, m, v, c):
    gg = c.gscale * g + c.wd * p
    m = c.beta1 * m + c.omb1 * gg
    v = c.beta2 * v + c.omb2 * (gg * gg)
    mm = c.nm * m + c.ng * gg
    return c.decay * p - c.alpha * mm / (math.sqrt(v) / c.c + c.eps), m, v


def _scalars(lr, step, grad_scale, beta1, beta2, eps, torch_compat, **decay):
    bc1, bc2 = 1.0 - beta1 ** (step + 1), 1.0 - beta2 ** (step + 1)
    alpha, c = (lr / bc1, math.sqrt(bc2)) if torch_compat else (lr * math.sqrt(bc2) / bc1, 1.0)
    return make_scalars(lr, grad_scale, beta1=beta1, beta2=beta2, eps=eps, alpha=alpha, c=c,
                        **decay)


def adam_scalars(*, lr, step, grad_scale=1.0, beta1, beta2, eps, weight_decay,
                 torch_compat=False):
    return _scalars(lr, step, grad_scale, beta1, beta2, eps, torch_compat, wd=weight_decay)


def adamw_scalars(*, lr, step, grad_scale=1.0, beta1, beta2, eps, weight_decay,
                  torch_compat=False):
    return _scalars(lr, step, grad_scale, beta1, beta2, eps, torch_compat,
                    decay=1.0 - lr * weight_decay)


def nadam_scalars(*, lr, step, grad_scale=1.0, beta1, beta2, eps, weight_decay):
    return _scalars(lr, step, grad_scale, beta1, beta2, eps, False, wd=weight_decay)


_STATE = (("m", 0.0), ("v", 0.0))
_TORCH = {"m": "exp_avg", "v": "exp_avg_sq"}
RULES = (
    Rule("adam", "adam", (BETA1, BETA2, EPS, Hyper("weight_decay", 0.0, lo=0), TORCH_COMPAT),
         _STATE, adam_scalars, adam_reference, adam_element,
         "m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2; theta <- theta - eta b m / (sqrt(v) + "
         "eps), b = sqrt(1 - b2^(t+1)) / (1 - b1^(t+1))",
         lr=1e-3, nonnegative=("v",), torch_state=_TORCH),
    Rule("adamw", "adam", (BETA1, BETA2, EPS, Hyper("weight_decay", 1e-2, lo=0), TORCH_COMPAT),
         _STATE, adamw_scalars, adam_reference, adam_element,
         "Adam with decoupled weight decay: theta <- theta - eta lambda theta_old - (Adam step)",
         lr=1e-3, nonnegative=("v",), torch_state=_TORCH),
    Rule("nadam", "nadam", (BETA1, BETA2, EPS, Hyper("weight_decay", 0.0, lo=0)),
         _STATE, nadam_scalars, nadam_reference, nadam_element,
         "Adam with Nesterov momentum: theta <- theta - eta b (b1 m + (1-b1) g) / (sqrt(v) + eps)",
         lr=1e-3, nonnegative=("v",), torch_state=_TORCH),
)
