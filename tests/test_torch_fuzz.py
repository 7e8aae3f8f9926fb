"""Hypothesis drives fastopt.torch with random configurations, values and group edits: whatever
it accepts follows torch.optim's trajectory (Lion's: Lion in plain torch ops, torch having none);
whatever it refuses is a TypeError or ValueError that leaves params, state and groups
byte-identical."""
import math

import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastopt.torch")
from torch_snapshot import ReferenceLion, snapshot  # noqa: E402
hyp = pytest.importorskip("hypothesis")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

NUMERIC = {"lr": (0.0, 0.5), "eps": (0.0, 1e-2), "weight_decay": (0.0, 0.5),
           "momentum": (0.0, 0.95), "dampening": (0.0, 1.0), "alpha": (0.0, 0.999),
           "momentum_decay": (0.0, 0.1), "lr_decay": (0.0, 0.5),
           "initial_accumulator_value": (0.0, 1.0)}
FLAGS = ("maximize", "nesterov", "decoupled_weight_decay", "foreach", "fused", "amsgrad",
         "centered", "capturable", "differentiable")
JUNK = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 10**400, -(10**400), "1", None,
                        [0.1], (), b"x", 1j, object(), torch.tensor([1.0, 2.0]),
                        torch.tensor(math.nan), True, 2])


def torch_class(name):
    return ReferenceLion if name == "Lion" else getattr(torch.optim, name)


def option_names(name):
    return [n for n in torch_class(name)([torch.zeros(1, requires_grad=True)]).defaults]


def valid(option):
    if option in NUMERIC:
        lo, hi = NUMERIC[option]
        return st.floats(lo, hi)
    if option == "betas":
        return st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.999))
    return st.booleans()


@st.composite
def configs(draw):
    name = draw(st.sampled_from(["Adam", "AdamW", "SGD", "RMSprop", "NAdam", "Adagrad",
                                 "Lion"]))
    kw = {}
    for option in option_names(name):
        if draw(st.booleans()):
            kw[option] = draw(st.one_of(valid(option), JUNK) if draw(st.integers(0, 5)) == 0
                              else valid(option))
    shapes = draw(st.lists(st.sampled_from([(1,), (3,), (7, 3), (0,), (33,)]), min_size=1,
                           max_size=5))
    edit = draw(st.sampled_from(option_names(name)))
    edit_value = draw(st.one_of(valid(edit), JUNK))
    seed = draw(st.integers(0, 2**16))
    return name, kw, shapes, edit, edit_value, seed






def grads_for(params, step, seed):
    g = torch.Generator().manual_seed(seed * 31 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, equal_nan=True)


@given(configs())
def test_accepted_means_torchs_trajectory_refused_means_nothing_written(case):
    name, kw, shapes, edit, edit_value, seed = case
    g = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    pa = [t.clone().requires_grad_() for t in init]
    pb = [t.clone().requires_grad_() for t in init]
    try:
        ours = getattr(ft, name)(pa, **kw)
    except (TypeError, ValueError):
        return  # refused in the constructor: nothing existed to change
    if name == "Lion":
        theirs = ReferenceLion(pb, **kw)
    else:
        theirs = getattr(torch.optim, name)(pb, **{**kw, "foreach": False, "fused": None}
                                            if name in ("Adam", "AdamW", "SGD", "Adagrad") else
                                            {**kw, "foreach": False})
    for step in range(3):
        grads_for(pa, step, seed)
        grads_for(pb, step, seed)
        if step == 1:  # a group edited between steps, as schedulers and users do
            ours.param_groups[0][edit] = edit_value
            before = snapshot(ours)
            try:
                ours.step()
            except (TypeError, ValueError):
                assert snapshot(ours) == before
                return
            theirs.param_groups[0][edit] = edit_value
            try:
                theirs.step()
            except (KeyError, RuntimeError, TypeError, ValueError):
                return  # torch cannot take this edit (RMSprop's momentum from 0: no buffer)
        else:
            ours.step()
            theirs.step()
        for p, q in zip(pa, pb):
            close(p.detach(), q.detach())
