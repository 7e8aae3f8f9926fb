"""Random bad input at the public boundary (SPEC §6): optimizers, the functional layer, norms and
schedules raise only TypeError/ValueError, the message names the argument, and nothing is
written. Hypothesis draws the junk; the profile is in conftest.py."""
import inspect
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastopt
from fastopt import functional as F
from fastopt import schedules as S

from conftest import snapshot
from optim_db import DB

#: Values that no scalar hyperparameter, count or flag of fastopt accepts as they are.
junk = st.one_of(
    st.sampled_from([None, "0.1", b"1", [], [0.1], {}, (), object(), 10**400, -10**400,
                     -(2**63), float("nan"), float("inf"), -float("inf"), -1, -1e-300,
                     np.array([0.1, 0.2]), np.float64("nan"), complex(1, 0), 1j]),
    st.integers(max_value=-1), st.integers(min_value=2**1024), st.floats(max_value=-1e-300),
    st.text(max_size=3))

#: (rule, argument) pairs whose every junk value must be refused with the argument named
#: (unless the rule's declared range takes it): lr, every hyperparameter of every rule of the
#: optimizer database, and max_grad_norm.
OPTIM_ARGS = [(rule, name) for rule, rec in DB.items()
              for name in ("lr",) + rec.hyper_names + ("max_grad_norm",)]
#: Every hyperparameter name some rule takes.
HYPER_NAMES = sorted({n for rec in DB.values() for n in rec.hyper_names})


def nonneg_number(value, hi=math.inf) -> bool:
    """Whether value is a finite real in [0, hi] (junk may be legal for some arguments)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return False
    try:
        return math.isfinite(float(value)) and 0 <= value <= hi
    except OverflowError:
        return False


def params():
    return [np.linspace(-1, 1, 7).astype(np.float32), np.ones(3, np.float32)]


def grads():
    return [np.full(7, 0.5, np.float32), np.full(3, 0.5, np.float32)]


def refused(call, name):
    with pytest.raises((TypeError, ValueError)) as e:
        call()
    assert name in str(e.value), f"{name!r} not named in {e.value!r}"


@settings(max_examples=120)
@given(which=st.sampled_from(OPTIM_ARGS), value=junk)
def test_optimizer_hyperparameters(which, value):
    rule, name = which
    if DB[rule].accepts(name, value):
        return  # legal in the declared range (an odd but valid choice)
    if name == "max_grad_norm" and value is None:
        return  # None: no clipping
    p = params()
    before = snapshot(p)
    refused(lambda: DB[rule].cls(p, **{"lr": 0.1, name: value}).step(grads()), name)
    assert snapshot(p) == before


@settings(max_examples=80)
@given(name=st.sampled_from(["step", "lr", "grad_scale"] + HYPER_NAMES),
       value=junk, rule=st.sampled_from(list(DB)))
def test_functional_update_scalars(name, value, rule):
    """Junk for the step, lr, grad_scale or any rule's hyperparameter: refused, named (a
    hyperparameter this rule does not take is refused whatever its value)."""
    if name in ("lr", "grad_scale") + DB[rule].hyper_names and DB[rule].accepts(
            "lr" if name == "grad_scale" else name, value):
        return  # legal (grad_scale has lr's range, [0, inf))
    p = params()
    state = F.init_state(rule, p)
    before = snapshot(p) + [snapshot(v) for v in state.values()]
    kw = {"step": 0, "lr": 0.1, name: value}
    refused(lambda: F.update(rule, p, grads(), state, **kw), name)
    assert snapshot(p) + [snapshot(v) for v in state.values()] == before


bad_arrays = st.sampled_from([
    ("not a list", lambda p: 3.0), ("a dict", lambda p: {"a": p[0]}),
    ("a list of lists", lambda p: [list(p[0]), p[1]]),
    ("ints", lambda p: [a.astype(np.int64) for a in p]),
    ("complex", lambda p: [a.astype(np.complex64) for a in p]),
    ("object", lambda p: [a.astype(object) for a in p]),
    ("float16", lambda p: [a.astype(np.float16) for a in p]),
    ("strided", lambda p: [np.repeat(a, 2)[::2] for a in p]),
    ("reversed", lambda p: [a[::-1] for a in p]),
    ("too few", lambda p: p[:1]), ("too many", lambda p: p + p),
    ("wrong shape", lambda p: [a.reshape(1, -1) for a in p]),
    ("a masked-array subclass", lambda p: [np.ma.asarray(a) for a in p]),
    ("big-endian", lambda p: [a.astype(">f4") for a in p]),
    ("None inside", lambda p: [None, p[1]])])


@settings(max_examples=60)
@given(bad=bad_arrays, rule=st.sampled_from(list(DB)))
def test_optimizer_step_arrays(bad, rule):
    p = params()
    opt = DB[rule].cls(p, 0.1)
    before = snapshot(p) + [snapshot(v) for v in opt.state.values()]
    refused(lambda: opt.step(bad[1](grads())), "grads")
    assert snapshot(p) + [snapshot(v) for v in opt.state.values()] == before
    assert opt.step_count == 0


@settings(max_examples=40)
@given(bad=bad_arrays)
def test_norm_arrays(bad):
    g = grads()
    before = snapshot(g)
    if bad[0] in ("too few", "too many", "float16", "big-endian", "wrong shape", "reversed",
                  "strided"):
        return  # fine for a norm: any float32/float64 arrays, any shapes, read only
    refused(lambda: fastopt.global_norm(bad[1](g)), "arrays")
    refused(lambda: fastopt.clip_by_global_norm(bad[1](g), 1.0), "arrays")
    assert snapshot(g) == before


@settings(max_examples=60)
@given(name=st.sampled_from(["ord", "per_array", "as_array", "backend", "max_norm"]),
       value=junk)
def test_norm_options(name, value):
    g = grads()
    before = snapshot(g)
    if name == "max_norm":
        refused(lambda: fastopt.clip_by_global_norm(g, value), name)
    else:
        if (name == "ord" and value in (2, math.inf)) or (name == "backend" and (value is None or value in fastopt.backends())):
            return
        refused(lambda: fastopt.global_norm(g, **{name: value}), name)
    assert snapshot(g) == before


SCHEDULES = [(S.constant, {"lr": 0.1}), (S.linear_warmup, {"lr": 0.1, "warmup_steps": 10}),
             (S.linear_decay, {"lr": 0.1, "decay_steps": 10}),
             (S.cosine_decay, {"lr": 0.1, "decay_steps": 10}),
             (S.warmup_cosine, {"lr": 0.1, "warmup_steps": 2, "total_steps": 10})]


@settings(max_examples=80)
@given(which=st.sampled_from(SCHEDULES), data=st.data(), value=junk)
def test_schedule_arguments_and_steps(which, data, value):
    fn, kw = which
    names = [n for n in inspect.signature(fn).parameters] + ["t"]
    name = data.draw(st.sampled_from(names))
    if name == "t":
        refused(lambda: fn(**kw)(value), "t")
        return
    if nonneg_number(value, 2**53):
        return  # may be legal, depending on the argument
    refused(lambda: fn(**{**kw, name: value})(3), name)
