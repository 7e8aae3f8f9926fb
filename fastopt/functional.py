r"""The functional layer: in-place fused updates on arrays whose state you manage yourself.

``update(rule, params, grads, state, step=t, lr=eta_t, ...)`` applies one step of ``rule`` to
every array in one native call. ``state`` is ``init_state(rule, params)``'s dict of lists. The
rules (theta params, g = s*g + lambda*theta the scaled, L2-decayed gradient, t the steps taken;
each is declared, with its hyperparameters and their ranges, in fastopt/_rules):

* sgd:       theta <- theta - eta g
* momentum:  v <- gamma v + g;  theta <- theta - eta v
* nesterov:  v <- gamma v + g;  theta <- theta - eta (gamma v + g)
* rmsprop:   v <- rho v + (1-rho) g^2 (v starts at 1);  m <- gamma m + eta g / sqrt(v + eps);
             theta <- theta - m
* adam:      m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
             theta <- theta - eta b m / (sqrt(v) + eps),  b = sqrt(1-b2^(t+1)) / (1-b1^(t+1))
* adamw:     adam with decoupled decay: theta <- theta - eta lambda theta_old - (adam step)
* nadam:     adam with m replaced by b1 m + (1-b1) g in the update
* lion:      u <- b1 m + (1-b1) g;  theta <- (1 - eta lambda) theta - eta sign(u);
             m <- b2 m + (1-b2) g   (decoupled decay, as optax.lion)
* adagrad:   s <- s + g^2;  theta <- theta - eta/(1 + t delta) g / (sqrt(s) + eps)
             (s starts at initial_accumulator_value; as torch.optim.Adagrad)

``torch_compat=True`` (adam/adamw) uses PyTorch's placement of eps:
theta <- theta - eta m_hat / (sqrt(v_hat) + eps), m_hat = m/(1-b1^(t+1)), v_hat = v/(1-b2^(t+1)).

A hyperparameter the rule does not take is a TypeError naming it (``update("sgd", ...,
beta1=0.5)`` is refused, not ignored); one out of its range a ValueError.
"""
from __future__ import annotations

import numpy as np

from . import _device, _dispatch, _registry, _rules
from ._core import Scalars
from . import _precision
from ._validate import (HOST16_DTYPES, as_list, check_float_arrays, check_grads16,
                        check_matching, check_no_overlap, dtype_of, is_device_array, real,
                        check_step)
from ._validate import state_dtype as _device_state_dtype

__all__ = ["update", "init_state", "scalars", "rules", "hyperparameters"]


def rules() -> tuple[str, ...]:
    """The names of the update rules."""
    return tuple(_rules.RULES)


def hyperparameters(rule) -> dict:
    """{name: default} of the hyperparameters ``rule`` takes (besides lr and grad_scale)."""
    return _rules.get(rule).defaults()


def check_rule(rule) -> str:
    return _rules.get(rule).name


def check_hyper(rule, **hyper) -> dict:
    """Every hyperparameter of ``rule``, checked, defaults filled in: a TypeError naming a
    name the rule does not take, a ValueError naming the first value out of range."""
    return _rules.get(rule).check_hyper(**hyper)


def scalars(rule, *, lr, step, grad_scale=1.0, **hyper) -> Scalars:
    """The float64 scalars the kernels take, computed once on the host (SPEC §2), every
    argument checked as ``update`` checks it, except that ``grad_scale`` may be negative here
    (a maximizing step: torch's ``maximize=True``)."""
    r = _rules.get(rule)
    return r.scalars(lr=real(lr, "lr", lo=0), step=check_step(step, "step"),
                     grad_scale=real(grad_scale, "grad_scale"), **r.check_hyper(**hyper))


def _scalars(rule, *, lr, step, grad_scale=1.0, **hyper) -> Scalars:
    """``scalars`` for arguments already checked, all hyperparameters given (the optimizers'
    per-step path)."""
    return _rules.RULES[rule].scalars(lr=lr, step=step, grad_scale=grad_scale, **hyper)


def init_state(rule, params, *, master_weights=False, state_dtype="float32", **hyper) -> dict:
    """Fresh state for ``rule``: {name: [array like each param]}, each buffer at its initial
    value (zeros; rmsprop's v: ones; adagrad's sum: ``initial_accumulator_value``).

    Device params get device state from the same library, float32 for 16-bit params.

    Host params may be bfloat16 (``ml_dtypes.bfloat16``) or float16, with the compact options
    of fastopt/_precision.py: ``master_weights`` (False, True: a float32 master per 16-bit
    param, "remainder": its low 16 bits beside a bfloat16 param) and ``state_dtype``
    ("float32", "bfloat16", "int8": 8-bit block codes for arrays of >= 4096 elements). The
    state then also holds "masters" (per param: None, the master or the remainder) and
    "absmax" ({name: [per-block absmax of 8-bit state, else None]})."""
    r = _rules.get(rule)
    params = as_list(params, "params")
    opts = _precision.check(master_weights, state_dtype)
    if params and not is_device_array(params[0]) and (
            not opts.default or any(_precision.is16(dtype_of(p)) for p in params)):
        check_float_arrays(params, "params", writable=True, dtypes=HOST16_DTYPES)
        _precision.check_params(params, opts)
        masters, states, absmax = _precision.init(r, params, opts, r.check_hyper(**hyper))
        return {**states, "masters": masters, "absmax": absmax}
    if not opts.default:
        raise ValueError(f"{opts}: compact-precision options run on host (CPU) arrays")
    return {name: [_device.full_like(p, init, _device_state_dtype(dtype_of(p)))
                   if is_device_array(p) else np.full_like(p, init) for p in params]
            for name, init in r.initial_values(r.check_hyper(**hyper))}


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


def run_compact(rule, params, grads, masters, states, absmax, k: Scalars, sr=None,
                backend=None):
    """Validated host arrays on compact storage (fastopt/_precision.py) -> one kernel call."""
    if not params:
        return
    dts = list(dict.fromkeys(str(p.dtype) for p in params))
    name = _dispatch.resolve(f"compact.{rule}", backend, dtype=params[0].dtype)
    for p in params:  # a backend that runs the first dtype but not another: refuse up front
        if p.dtype not in _registry.KERNELS[f"compact.{rule}"][name]:
            raise TypeError(f"backend {name!r} has no compact {rule} kernel for {p.dtype} "
                            f"(dtypes here: {', '.join(dts)})")
    _dispatch.module(name).compact_update(rule, params, grads, masters, states, absmax, k, sr)


def update(rule, params, grads, state, *, step, lr, grad_scale=1.0, backend=None,
           stochastic_rounding=False, seed=0, **hyper):
    """One fused in-place step of ``rule`` on every array (see the module docstring).

    ``state`` maps each state name of the rule (``init_state``) to a list like ``params``;
    ``step`` is the number of steps already taken; ``lr`` is eta_t for this step.
    ``stochastic_rounding``: 16-bit params without a master, and bfloat16 state, round with
    the random stream keyed by (``seed``, ``step``, array index, element index).
    """
    r = _rules.get(rule)
    h = r.check_hyper(**hyper)
    step = check_step(step, "step")
    lr = real(lr, "lr", lo=0)
    grad_scale = real(grad_scale, "grad_scale", lo=0)
    opts = _precision.check(stochastic_rounding=stochastic_rounding, seed=seed)
    params, grads = as_list(params, "params"), as_list(grads, "grads")
    if isinstance(state, dict) and ("masters" in state or "absmax" in state or (
            params and not is_device_array(params[0])
            and any(_precision.is16(dtype_of(p)) for p in params)) or opts.stochastic):
        return _update_compact(r, params, grads, state, step, lr, grad_scale, backend, opts, h)
    check_float_arrays(params, "params", writable=True)
    check_float_arrays(grads, "grads", writable=False)
    check_matching(params, "params", grads, "grads")
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of lists (init_state), got {type(state).__name__}")
    names = list(r.state_names)
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
    run(r.name, params, grads, states, r.scalars(lr=lr, step=step, grad_scale=grad_scale, **h),
        backend)


def _update_compact(r, params, grads, state, step, lr, grad_scale, backend, opts, h):
    """``update`` on compact storage: every buffer checked against a fresh ``init_state``'s
    layout for these params (dtype and shape), so nothing is written unless all fit."""
    check_float_arrays(params, "params", writable=True, dtypes=HOST16_DTYPES)
    check_grads16(params, grads)
    names = list(r.state_names)
    want = sorted(names + ["masters", "absmax"])
    if sorted(state) != want:
        raise ValueError(f"state for {r.name} must have keys {want} (init_state with 16-bit "
                         f"params or compact options), got {sorted(state)}")
    masters = state["masters"]
    absmax = state["absmax"]
    if masters is not None:
        masters = as_list(masters, "state['masters']") if not isinstance(masters, list) \
            else masters
    if not isinstance(absmax, dict) or sorted(absmax) != sorted(names):
        raise ValueError(f"state['absmax'] must be a dict with keys {names}")
    _precision.check_layout(r, params, masters, {n: state[n] for n in names}, absmax)
    written = {"params": params, **{f"state[{n!r}]": list(state[n]) for n in names}}
    written["state['masters']"] = [m for m in masters or () if m is not None]
    written["state['absmax']"] = [a for n in names for a in absmax[n] if a is not None]
    check_no_overlap(written, {"grads": grads})
    sr = (opts.seed, step, list(range(len(params)))) if opts.stochastic else None
    run_compact(r.name, params, grads, masters, [list(state[n]) for n in names],
                [list(absmax[n]) for n in names],
                r.scalars(lr=lr, step=step, grad_scale=grad_scale, **h), sr, backend)
