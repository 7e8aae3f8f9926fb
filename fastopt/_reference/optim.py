"""Reference optimizer updates (SPEC §2), one array at a time, in the storage dtype.

Scalars arrive as float64 and are rounded to the storage dtype exactly once, as the native
kernels do; the order of operations below is the one every backend follows.
"""
from __future__ import annotations

import math

import numpy as np

from .._validate import check_optim_kernel_args
from .._registry import (G_APPLIED, G_CLIPPED, G_EXP, G_MAXABS, G_NORM, G_ROW, G_SCALE,
                         G_SEQ, G_SKIPPED, OPTIM_KERNEL)


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
    check_optim_kernel_args(rule, params, grads, states, k)  # no silent broadcasting either
    fn = _RULES[OPTIM_KERNEL[rule]]
    for i, p in enumerate(params):
        fn(p, grads[i], *(s[i] for s in states), k)


def guard_outcome(applied, norm, nrows, t_lo, limit, skip_nonfinite):
    """(skip, clipped, scale, row) of a guarded step with this norm, after ``applied`` steps:
    plain scalar float64 code, which the numba-cuda kernel compiles as it stands."""
    skip = skip_nonfinite and not math.isfinite(norm)
    clipped = (not skip) and math.isfinite(norm) and norm > limit
    scale = limit / norm if clipped else 1.0
    row = min(max(applied - t_lo, 0.0), nrows - 1.0)
    return skip, clipped, scale, row


def guard_decide(ctl, norm, nrows, t_lo, limit, skip_nonfinite, slot, seq, mirror=None):
    """A guarded step's decisions from its unclipped norm, into the control array ``ctl``
    (``_registry.GUARD_*``): skip when the norm is not finite and ``skip_nonfinite``; else clip
    when norm > limit (scale = limit / norm, float64); the scalars row is the step count minus
    ``t_lo``; the count goes up unless skipped. Row ``slot`` keeps a copy for the host, with the
    issue number ``seq``; so does the same row of ``mirror`` (host memory), if given, seq last."""
    applied = float(ctl[0, G_APPLIED])
    skip, clipped, scale, row = guard_outcome(applied, norm, float(nrows), t_lo, limit,
                                              bool(skip_nonfinite))
    ctl[slot, :] = 0.0
    for c in (0, slot):
        ctl[c, G_NORM], ctl[c, G_SCALE], ctl[c, G_ROW] = norm, scale, row
        ctl[c, G_SKIPPED], ctl[c, G_CLIPPED] = float(skip), float(clipped)
    ctl[slot, G_APPLIED], ctl[slot, G_SEQ] = applied, seq
    ctl[0, G_APPLIED] = applied + (0.0 if skip else 1.0)
    ctl[0, G_EXP] = ctl[0, G_MAXABS] = 0.0
    if mirror is not None:
        mirror[slot, :G_SEQ] = ctl[slot, :G_SEQ]
        mirror[slot, G_SEQ + 1:] = ctl[slot, G_SEQ + 1:]
        mirror[slot, G_SEQ] = seq


def guarded_step(rule, params, grads, states, rows, t_lo, limit, skip_nonfinite, ctl, slot,
                 seq, mirror=None):
    """One step whose norm, clip, skip and count live in ``ctl``: the device kernels' contract.

    ``rows[j]`` are the Scalars for step count t_lo + j (gscale ignored); the norm of ``grads``
    is ``fastopt.global_norm``'s, bit for bit; ``guard_decide`` takes the decisions; unless the
    step is skipped, ``rule`` runs with rows[row] and grad_scale = the decided scale. ``mirror``
    is a ``_device.Mapped`` (host memory the device writes) or None.
    """
    from ..norm import _norm_checked  # the host norm, the one every backend must match
    norm = _norm_checked(grads, "numpy")
    guard_decide(ctl, norm, len(rows), t_lo, limit, skip_nonfinite, slot, seq,
                 None if mirror is None else mirror.host)
    if not ctl[0, G_SKIPPED]:
        k = rows[int(ctl[0, G_ROW])]._replace(gscale=float(ctl[0, G_SCALE]))
        optim_update(rule, params, grads, states, k)
