r"""The functional layer: in-place fused updates on arrays whose state you manage yourself.

``update(rule, params, grads, state, step=t, lr=eta_t, ...)`` applies one step of ``rule`` to
every array in one native call. ``state`` is ``init_state(rule, params)``'s dict of lists. The
rules (theta params, g = s*g + lambda*theta the scaled, L2-decayed gradient, t the steps taken):

* sgd:       theta <- theta - eta g
* momentum:  v <- gamma v + g;  theta <- theta - eta v
* nesterov:  v <- gamma v + g;  theta <- theta - eta (gamma v + g)
* rmsprop:   v <- rho v + (1-rho) g^2 (v starts at 1);  m <- gamma m + eta g / sqrt(v + eps);
             theta <- theta - m
* adam:      m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
             theta <- theta - eta b m / (sqrt(v) + eps),  b = sqrt(1-b2^(t+1)) / (1-b1^(t+1))
* adamw:     adam with decoupled decay: theta <- theta - eta lambda theta_old - (adam step)
* nadam:     adam with m replaced by b1 m + (1-b1) g in the update

``torch_compat=True`` (adam/adamw) uses PyTorch's placement of eps:
theta <- theta - eta m_hat / (sqrt(v_hat) + eps), m_hat = m/(1-b1^(t+1)), v_hat = v/(1-b2^(t+1)).
"""
from __future__ import annotations

import math

import numpy as np

from . import _device, _dispatch
from ._registry import OPTIM_STATE, OPTIMIZERS, Scalars
from ._validate import (as_list, check_float_arrays, check_matching, check_no_overlap, dtype_of,
                        is_device_array, real, state_dtype, check_step)

__all__ = ["update", "init_state", "scalars"]

_ADAM = ("adam", "adamw", "nadam")



def check_rule(rule) -> str:
    if rule not in OPTIMIZERS:
        raise ValueError(f"rule must be one of {', '.join(OPTIMIZERS)}, got {rule!r}")
    return rule


def check_hyper(rule, *, weight_decay=0.0, momentum=0.0, rho=0.9, beta1=0.9, beta2=0.999,
                eps=1e-8, torch_compat=False) -> dict:
    """Validated hyperparameters of ``rule`` (a ValueError naming the first one out of range)."""
    h = dict(weight_decay=real(weight_decay, "weight_decay", lo=0),
             momentum=real(momentum, "momentum", lo=0),
             rho=real(rho, "rho", lo=0, hi=1, hi_open=True),
             beta1=real(beta1, "beta1", lo=0, hi=1, hi_open=True),
             beta2=real(beta2, "beta2", lo=0, hi=1, hi_open=True),
             eps=real(eps, "eps", lo=0), torch_compat=bool(torch_compat))
    if torch_compat and rule not in ("adam", "adamw"):
        raise ValueError(f"torch_compat applies to adam and adamw, not {rule}")
    return h


def scalars(rule, *, lr, step, grad_scale=1.0, **hyper) -> Scalars:
    """The float64 scalars the kernels take, computed once on the host (SPEC §2), every
    argument checked as ``update`` checks it, except that ``grad_scale`` may be negative here
    (a maximizing step: torch's ``maximize=True``)."""
    rule = check_rule(rule)
    return _scalars(rule, lr=real(lr, "lr", lo=0), step=check_step(step, "step"),
                    grad_scale=real(grad_scale, "grad_scale"), **check_hyper(rule, **hyper))


def _scalars(rule, *, lr, step, grad_scale=1.0, weight_decay=0.0, momentum=0.0, rho=0.9,
             beta1=0.9, beta2=0.999, eps=1e-8, torch_compat=False) -> Scalars:
    """``scalars`` for arguments already checked (the optimizers' per-step path)."""
    wd, decay, alpha, c = weight_decay, 1.0, lr, 1.0
    if rule == "adamw":  # decoupled: theta <- (1 - lr*wd) theta - (adam step)
        wd, decay = 0.0, 1.0 - lr * weight_decay
    if rule in _ADAM:
        bc1, bc2 = 1.0 - beta1 ** (step + 1), 1.0 - beta2 ** (step + 1)
        if torch_compat:
            alpha, c = lr / bc1, math.sqrt(bc2)
        else:
            alpha = lr * math.sqrt(bc2) / bc1
    return Scalars(lr=lr, wd=wd, gscale=grad_scale, momentum=momentum, rho=rho, beta1=beta1,
                   beta2=beta2, eps=eps, alpha=alpha, c=c, decay=decay, nm=beta1, ng=1.0 - beta1,
                   eps_out=0.0, lr_out=1.0)


def init_state(rule, params) -> dict:
    """Fresh state for ``rule``: {name: [array like each param]}, zeros (rmsprop's v: ones).

    Device params get device state from the same library, float32 for 16-bit params."""
    params = as_list(params, "params")
    return {name: [_device.full_like(p, init, state_dtype(dtype_of(p))) if is_device_array(p)
                   else np.full_like(p, init) for p in params]
            for name, init in OPTIM_STATE[check_rule(rule)]}


def run(rule, params, grads, states, k: Scalars, backend=None):
    """Validated arrays -> one kernel call per dtype present (one in the common case)."""
    if not params:
        return
    first = getattr(params[0], "dtype", None)  # the library's own dtype: cheap to compare
    if first is not None and (all(p.dtype is first for p in params)  # NumPy's are shared
                              or all(p.dtype == first for p in params)):
        name = _dispatch.resolve(f"optim.{rule}", backend, device=is_device_array(params[0]),
                                 dtype=dtype_of(params[0]))
        _dispatch.module(name).optim_update(rule, params, grads, states, k)
        return
    dtypes = [dtype_of(p) for p in params]
    groups = {dt: [i for i, d in enumerate(dtypes) if d == dt] for dt in dict.fromkeys(dtypes)}
    device = is_device_array(params[0])
    # Every group's backend first: a dtype no backend runs must fail before anything is written.
    names = {dt: _dispatch.resolve(f"optim.{rule}", backend, device=device, dtype=dt)
             for dt in groups}
    for dt, idx in groups.items():
        _dispatch.module(names[dt]).optim_update(
            rule, [params[i] for i in idx], [grads[i] for i in idx],
            [[s[i] for i in idx] for s in states], k)


def update(rule, params, grads, state, *, step, lr, grad_scale=1.0, backend=None, **hyper):
    """One fused in-place step of ``rule`` on every array (see the module docstring).

    ``state`` maps each state name of the rule (``init_state``) to a list like ``params``;
    ``step`` is the number of steps already taken; ``lr`` is eta_t for this step.
    """
    rule = check_rule(rule)
    h = check_hyper(rule, **hyper)
    step = check_step(step, "step")
    lr = real(lr, "lr", lo=0)
    grad_scale = real(grad_scale, "grad_scale", lo=0)
    params, grads = as_list(params, "params"), as_list(grads, "grads")
    check_float_arrays(params, "params", writable=True)
    check_float_arrays(grads, "grads", writable=False)
    check_matching(params, "params", grads, "grads")
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of lists (init_state), got {type(state).__name__}")
    names = [n for n, _ in OPTIM_STATE[rule]]
    if sorted(state) != sorted(names):
        raise ValueError(f"state for {rule} must have keys {names}, got {sorted(state)}")
    states = []
    for n in names:
        s = as_list(state[n], f"state[{n!r}]")
        check_float_arrays(s, f"state[{n!r}]", writable=True)
        check_matching(params, "params", s, f"state[{n!r}]", state=True)
        states.append(s)
    check_no_overlap({"params": params, **{f"state[{n!r}]": s for n, s in zip(names, states)}},
                     {"grads": grads})
    run(rule, params, grads, states, _scalars(rule, lr=lr, step=step, grad_scale=grad_scale, **h),
        backend)
