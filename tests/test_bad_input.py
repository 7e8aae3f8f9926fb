"""SPEC §6 as a table: input -> exception type -> message pattern; nothing is ever written."""
import numpy as np
import pytest

import fastopt
from fastopt import functional as F

from conftest import snapshot
from optim_db import DB


def setup(n=5):
    p = [np.arange(n, dtype=np.float32), np.ones(3, np.float32)]
    g = [np.full(n, 0.5, np.float32), np.ones(3, np.float32)]
    return p, g


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


# (name, make(p, g) -> grads to pass, exception, pattern): the optimizer is built on p.
STEP_CASES = [
    ("float64 grad for float32 param", lambda p, g: [g[0].astype(np.float64), g[1]], TypeError,
     r"grads\[0\] has dtype float64"),
    ("fewer grads", lambda p, g: g[:1], ValueError, r"grads has 1 arrays but params has 2"),
    ("shape", lambda p, g: [g[0][:-1], g[1]], ValueError, r"grads\[0\] has shape"),
    ("non-contiguous grad", lambda p, g: [np.ones(10, np.float32)[::2], g[1]], ValueError,
     r"grads\[0\] is not C-contiguous"),
    ("grad is the param", lambda p, g: [p[0], g[1]], ValueError, r"grads\[0\] shares memory"),
    ("grad overlaps state", None, ValueError, r"shares memory"),
    ("int grad", lambda p, g: [g[0].astype(np.int32), g[1]], TypeError, r"grads\[0\] has dtype"),
    ("not an array", lambda p, g: [list(g[0]), g[1]], TypeError, r"grads\[0\] must be a numpy"),
    ("not a list", lambda p, g: 3.0, TypeError, r"grads must be an array or a list"),
]


@pytest.mark.parametrize("backend", ["cpp", "numba", "numpy"])
@pytest.mark.parametrize("name,make,exc,pattern", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_step_rejects_and_writes_nothing(name, make, exc, pattern, backend):
    if fastopt._dispatch.unavailable_reason(backend):
        pytest.skip(fastopt._dispatch.unavailable_reason(backend))
    p, g = setup()
    opt = fastopt.Adam(p, 0.1, backend=backend)
    opt.step(g)
    grads = [opt.state["m"][0], g[1]] if make is None else make(p, g)
    before = snapshot(p) + snapshot(opt.state["m"] + opt.state["v"])
    with pytest.raises(exc, match=pattern):
        opt.step(grads)
    assert snapshot(p) + snapshot(opt.state["m"] + opt.state["v"]) == before
    assert opt.step_count == 1


CTOR_CASES = [
    ("read-only param", lambda: ([readonly(np.ones(3, np.float32))], {}), ValueError,
     r"params\[0\] is read-only"),
    ("non-contiguous param", lambda: ([np.ones((4, 4), np.float32)[:, 1]], {}), ValueError,
     r"params\[0\] is not C-contiguous"),
    ("aliased params", lambda: ([np.ones(8)[:4], np.ones(8)], {}), None, None),
    ("same array twice", None, ValueError, r"params\[1\] shares memory with params\[0\]"),
    ("int32 param", lambda: ([np.ones(3, np.int32)], {}), TypeError,
     r"params\[0\] has dtype int32"),  # float16 and bfloat16 params: tests/test_precision.py
    # bad hyperparameters (lr included): every rule's error rows, test_error_rows_* below
    ("unknown backend", lambda: ([np.ones(3)], {"backend": "fortran"}), ValueError,
     r"backend='fortran' is unknown"),
]


@pytest.mark.parametrize("name,make,exc,pattern", CTOR_CASES, ids=[c[0] for c in CTOR_CASES])
def test_constructor_rejects(name, make, exc, pattern):
    if name == "same array twice":
        a = np.ones(3)
        with pytest.raises(exc, match=pattern):
            fastopt.Adam([a, a], 0.1)
        return
    params, kw = make()
    kw = {"lr": 0.1, **kw}
    backend = kw.pop("backend", None)
    if exc is None:  # disjoint views of one buffer are fine
        fastopt.Adam(params, backend=backend, **kw)
        return
    with pytest.raises(exc, match=pattern):
        opt = fastopt.Adam(params, backend=backend, **kw)
        opt.step([np.ones_like(p) for p in params])  # backend errors surface at the first step


ERROR_ROWS = [pytest.param(rec.name, e, id=f"{rec.name}-{e.id}")
              for rec in DB.values() for e in rec.errors]
EDGE_ROWS = [pytest.param(rec.name, edge, id=f"{rec.name}-{edge}")
             for rec in DB.values() for edge in rec.edges]


def stepped(rule, dtype=np.float32):
    """Params, grads and the state of one step of ``rule``: nothing at its initial value."""
    p, g = setup()
    p = [a.astype(dtype) for a in p]
    g = [a.astype(dtype) for a in g]
    state = F.init_state(rule, p)
    F.update(rule, p, g, state, step=0, lr=DB[rule].lr)
    return p, g, state


def fingerprint(p, state):
    return snapshot(p), {k: snapshot(v) for k, v in state.items()}


@pytest.mark.parametrize("rule,row", ERROR_ROWS)
def test_error_rows_refused_by_class_and_functional(rule, row):
    """Every error row of the optimizer database (bad lr or hyperparameter, a hyperparameter
    the rule does not take) through the class constructor and functional.update: the
    exception and message of the row, naming the argument, and not a byte written."""
    rec = DB[rule]
    kw = {"lr": rec.lr, **row.kwargs}
    p, g, state = stepped(rule)
    before = fingerprint(p, state)
    with pytest.raises(row.exc, match=row.match) as e:
        rec.cls(p, **kw)
    assert row.name in str(e.value)
    assert fingerprint(p, state) == before
    with pytest.raises(row.exc, match=row.match) as e:
        F.update(rule, p, g, state, step=1, **kw)
    assert row.name in str(e.value)
    assert fingerprint(p, state) == before
    with pytest.raises(row.exc, match=row.match):  # checked before the arrays are looked at
        F.scalars(rule, step=1, **kw)


@pytest.mark.parametrize("rule,edge", EDGE_ROWS)
def test_edge_rows_accepted_by_class_and_functional(rule, edge):
    """The ends of each declared range (closed ends, or the nearest double inside an open
    one) are accepted: the error rows' bounds are exact, not off by one. One step each way
    gives the same bits."""
    rec = DB[rule]
    kw = {"lr": rec.lr, **edge}
    p, g, state = stepped(rule, np.float64)
    q, sq = [a.copy() for a in p], {k: [a.copy() for a in v] for k, v in state.items()}
    opt = rec.cls(p, **kw, backend="numpy", nonfinite="ignore")
    for name, arrays in opt.state.items():  # continue from the same state
        for a, b in zip(arrays, state[name]):
            a[...] = b
    opt.step_count = 1
    with np.errstate(all="ignore"):
        opt.step(g)
        F.update(rule, q, g, sq, step=1, backend="numpy", **kw)
    assert snapshot(p) == snapshot(q)
    assert all(snapshot(opt.state[k]) == snapshot(sq[k]) for k in sq)


def test_schedule_returning_negative_lr_writes_nothing():
    p = np.ones(4)
    opt = fastopt.SGD(p, lambda t: 0.1 if t == 0 else -0.1)
    opt.step(np.ones(4))
    before = p.copy()
    with pytest.raises(ValueError, match=r"lr\(1\) must be"):
        opt.step(np.ones(4))
    assert np.array_equal(p, before) and opt.step_count == 1


def test_functional_rejects_and_writes_nothing():
    p, g = setup()
    st = F.init_state("momentum", p)
    before = snapshot(p) + snapshot(st["v"])
    cases = [
        (dict(rule="lion?"), ValueError, "rule must be one of"),
        (dict(step=-1), ValueError, "step must be >= 0"),
        (dict(step=1.5), TypeError, "step must be an integer"),
        (dict(grad_scale=-1.0), ValueError, "grad_scale must be"),
        (dict(state={"m": st["v"]}), ValueError, r"state for momentum must have keys \['v'\]"),
        (dict(state={"v": [st["v"][0]]}), ValueError, r"state\['v'\] has 1 arrays"),
        (dict(state={"v": [st["v"][0], p[1]]}), ValueError, "shares memory"),
        (dict(state=[1]), TypeError, "state must be a dict"),
    ]
    for over, exc, pattern in cases:
        kw = dict(rule="momentum", params=p, grads=g, state=st, step=0, lr=0.1)
        kw.update(over)
        with pytest.raises(exc, match=pattern):
            F.update(kw.pop("rule"), kw.pop("params"), kw.pop("grads"), kw.pop("state"), **kw)
        assert snapshot(p) + snapshot(st["v"]) == before


def test_native_boundary_refuses_copies():
    """The extension itself never converts: a wrong dtype or a view raises instead of copying."""
    if fastopt._dispatch.unavailable_reason("cpp"):
        pytest.skip("no C++ extension")
    from fastopt import _C
    k = list(F.scalars("sgd", lr=0.1, step=0))
    p = np.ones(4, np.float32)
    with pytest.raises(TypeError, match="wrong dtype"):
        _C.optim_update("sgd", [p], [np.ones(4, np.float64)], [], k)
    with pytest.raises(ValueError, match="not C-contiguous"):
        _C.optim_update("sgd", [np.ones(8, np.float32)[::2]], [p], [], k)
    ro = np.ones(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _C.optim_update("sgd", [ro], [p], [], k)
    assert np.all(p == 1) and np.all(ro == 1)


def test_native_fast_check_accepts_only_exact_matches():
    """The optimizers' one-pass native check (_C.like_addresses) says yes only for exact
    ndarrays of the params' dtype and shape, C-contiguous, with writable params; anything else
    goes to the detailed Python checks, which name the problem."""
    if fastopt._dispatch.unavailable_reason("cpp"):
        pytest.skip(fastopt._dispatch.unavailable_reason("cpp"))
    from fastopt import _C
    from fastopt._validate import data_addresses
    p = [np.zeros(5, np.float32), np.zeros((2, 3))]
    g = [np.ones(5, np.float32), np.ones((2, 3))]
    assert list(_C.like_addresses(p, g)) == data_addresses(g)
    bad = {"length": g[:1], "dtype": [g[0].astype(np.float64), g[1]],
           "shape": [g[0], np.ones((3, 2))], "strided": [np.ones(10, np.float32)[::2], g[1]],
           "subclass": [np.ma.ones(5, np.float32), g[1]], "byte order": [g[0].astype(">f4"), g[1]],
           "not an array": [1.0, g[1]]}
    for what, grads in bad.items():
        assert _C.like_addresses(p, grads) is None, what
    ro = [a.copy() for a in p]
    ro[1].flags.writeable = False
    assert _C.like_addresses(ro, g) is None


def test_native_host_views_view_the_memory_and_keep_it_alive():
    """_C.host_views (fastopt.torch's grads without torch's .numpy()): view i has like[i]'s
    dtype and shape over ptrs[i], keeps owners[i] alive, and mismatched lists are refused."""
    if fastopt._dispatch.unavailable_reason("cpp"):
        pytest.skip(fastopt._dispatch.unavailable_reason("cpp"))
    import gc
    import weakref

    from fastopt import _C
    from fastopt._validate import data_addresses

    class Owner:  # stands for a torch tensor: something whose lifetime holds the memory
        def __init__(self, a):
            self.a = a

    like = [np.zeros((2, 3), np.float32), np.zeros(4), np.zeros(0, np.float16)]
    src = [np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(4.0), np.zeros(0, np.float16)]
    owners = [Owner(a) for a in src]
    views = _C.host_views(owners, data_addresses(src), like)
    for v, a, w, o in zip(views, src, like, owners):
        assert type(v) is np.ndarray and v.dtype == w.dtype and v.shape == w.shape
        assert v.flags.c_contiguous and np.array_equal(v, a) and v.base is o
    views[0][1, 2] = 42.0  # the same memory
    assert src[0][1, 2] == 42.0
    ref = weakref.ref(owners[1])
    del owners, src
    gc.collect()
    assert ref() is not None and np.array_equal(views[1], np.arange(4.0))  # kept alive
    del views
    gc.collect()
    assert ref() is None
    with pytest.raises(ValueError, match="one entry per view"):
        _C.host_views([Owner(1)], [1, 2], like[:1])
    with pytest.raises(TypeError, match="ndarrays"):
        _C.host_views([Owner(1)], [1], [[1.0]])
    with pytest.raises(ValueError, match="null"):
        _C.host_views([Owner(1)], [0], like[:1])
