"""Every optimizer kernel on every CPU backend against the NumPy reference: params and state."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastopt
from fastopt import functional as F
from fastopt import schedules
from fastopt._registry import KERNELS, OPTIMIZERS
from fastopt._rules import RULES

from conftest import TOL, cpu_cases
from optim_db import DB, MISSING, STALE, hyper_strategy

CLASSES = fastopt.optim.CLASSES

LAYOUTS = {"one": (1000,), "odd": (1, 7, 129, 4097, 100003), "shaped": ((3, 5), (17, 1, 4), (33,))}


def make(layout, dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in LAYOUTS[layout]]
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in params] for _ in range(4)]
    return params, grads


def trajectory(rule, backend, params, grads, hyper, lr):
    params = [p.copy() for p in params]
    opt = CLASSES[rule](params, lr, backend=backend, **hyper)
    for g in grads:
        res = opt.step(g)
        assert not res.skipped
    assert opt.step_count == len(grads)
    return params, opt.state


def assert_close(got, want, dtype):
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **TOL[np.dtype(dtype)])


def assert_backends_follow(rule, cases, dtype, params, grads, hyper, lr, want_p, want_s):
    """Each native (backend, dtype) case of ``dtype`` takes the reference's trajectory."""
    for backend, dt in cases:
        if backend == "numpy" or dt != np.dtype(dtype):
            continue
        got_p, got_s = trajectory(rule, backend, params, grads, hyper, lr)
        assert_close(got_p, want_p, dtype)
        for name in want_s:
            assert_close(got_s[name], want_s[name], dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rule", list(DB))
def test_matches_reference(rule, layout):
    """All backends x dtypes x hyperparameter rows, 4 steps with a warmup+cosine schedule."""
    lr = schedules.warmup_cosine(0.05, warmup_steps=2, total_steps=10)
    cases = [c.values for c in cpu_cases(f"optim.{rule}")
             if not c.marks and c.values[0] != "numpy"]
    assert cases, "no native backend to test"
    for hyper in DB[rule].rows:
        for dtype in (np.float32, np.float64):
            params, grads = make(layout, dtype)
            want_p, want_s = trajectory(rule, "numpy", params, grads, hyper, lr)
            assert not np.array_equal(want_p[0], params[0])  # the reference did move
            assert_backends_follow(rule, cases, dtype, params, grads, hyper, lr, want_p, want_s)


def test_every_rule_has_its_public_class():
    """Each declared rule gets a class in fastopt (registered as it is defined), whose
    signature is the declaration's: lr, then the rule's hyperparameters with their defaults."""
    import inspect
    from fastopt import _rules
    assert set(CLASSES) == set(_rules.RULES)
    for rule, cls in CLASSES.items():
        assert cls.rule == rule and getattr(fastopt, cls.__name__) is cls
        params = inspect.signature(cls).parameters
        hyper = [n for n in params if n not in ("params", "lr") and
                 params[n].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        assert hyper == list(_rules.RULES[rule].hyper_names)
        assert all(params[h.name].default == h.default for h in _rules.RULES[rule].hyper)


def test_registry_lists_every_optimizer_on_every_cpu_backend():
    for rule in OPTIMIZERS:
        assert set(KERNELS[f"optim.{rule}"]) >= {"cpp", "numba", "numpy"}
        assert set(DB[rule].backends) == {"cpp", "numba", "numpy"}  # the db reads the registry


def test_every_rule_has_a_record():
    """tests/optim_db.py has a hand-written entry and fastopt.optim a class for every rule of
    fastopt/_rules (a new rule fails here until its record is added), and no stale entry."""
    assert list(DB) == list(RULES)
    assert not MISSING, f"rules without a record in tests/optim_db.py (or a class): {MISSING}"
    assert not STALE, f"records for rules that do not exist: {STALE}"


@pytest.mark.parametrize("rule", list(DB))
def test_record_is_consistent_with_the_declaration(rule):
    """Each record's rows are valid for its rule, distinct, the defaults first; its error rows
    cover every hyperparameter, lr and an unknown name; its class runs the rule; its backends
    and dtypes are the registry's."""
    rec = DB[rule]
    assert rec.cls is CLASSES[rule] and rec.cls.rule == rule and rec.decl is RULES[rule]
    assert rec.rows[0] == {} and len(rec.rows) >= 2  # defaults plus at least one other row
    full = [rec.decl.check_hyper(**row) for row in rec.rows]
    assert all(a != b for i, a in enumerate(full) for b in full[:i])
    assert full[0] == rec.decl.defaults()
    named = {e.name for e in rec.errors if not e.unknown}
    assert named == {"lr", *rec.hyper_names}
    assert any(e.unknown for e in rec.errors) or len(RULES) == 1
    assert all(e.name not in rec.hyper_names for e in rec.errors if e.unknown)
    assert all(e.exc in (TypeError, ValueError) for e in rec.errors)
    assert {e.name for e in rec.errors if e.exc is ValueError} >= {
        h.name for h in rec.decl.hyper if not isinstance(h.default, bool)} | {"lr"}
    assert rec.backends == {b: tuple(d) for b, d in KERNELS[rec.kernel].items()
                            if b in ("cpp", "numba", "numpy")}
    for edge in rec.edges:
        (name, value), = edge.items()
        assert rec.accepts(name, value), edge
    for e in rec.errors:
        (name, value), = e.kwargs.items()
        assert not rec.accepts(name, value), e


def test_rules_by_hand():
    """One step of each rule written out with Python floats (float64), no shared code."""
    p0, g = 0.5, 0.25
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.01

    def one(cls, **kw):
        p = np.array([p0])
        opt = cls(p, lr, **kw)
        opt.step(np.array([g]))
        opt.step(np.array([g]))
        return p[0], opt

    # SGD with L2
    p, _ = one(fastopt.SGD, weight_decay=wd)
    x = p0
    for _ in range(2):
        x = x - lr * (g + wd * x)
    assert p == pytest.approx(x, rel=1e-15)
    # Momentum / Nesterov
    for cls, nest in ((fastopt.Momentum, False), (fastopt.Nesterov, True)):
        p, _ = one(cls, momentum=0.9)
        x, v = p0, 0.0
        for _ in range(2):
            v = 0.9 * v + g
            x -= lr * (0.9 * v + g if nest else v)
        assert p == pytest.approx(x, rel=1e-15)
    # RMSProp: v starts at 1, eps inside the root
    p, opt = one(fastopt.RMSProp, rho=0.9, momentum=0.5, eps=1e-6)
    x, v, m = p0, 1.0, 0.0
    for _ in range(2):
        v = 0.9 * v + 0.1 * g * g
        m = 0.5 * m + lr * g / (v + 1e-6) ** 0.5
        x -= m
    assert p == pytest.approx(x, rel=1e-15) and opt.state["v"][0][0] == pytest.approx(v)
    # Adam (source-document placement of eps), AdamW, NAdam
    for cls, kw in ((fastopt.Adam, {}), (fastopt.AdamW, {"weight_decay": wd}), (fastopt.NAdam, {})):
        p, _ = one(cls, beta1=b1, beta2=b2, eps=eps, **kw)
        x, m, v = p0, 0.0, 0.0
        for t in range(2):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            b = (1 - b2 ** (t + 1)) ** 0.5 / (1 - b1 ** (t + 1))
            mm = b1 * m + (1 - b1) * g if cls is fastopt.NAdam else m
            x = x - lr * kw.get("weight_decay", 0.0) * x - lr * b * mm / (v ** 0.5 + eps)
        assert p == pytest.approx(x, rel=1e-14), cls.__name__


@pytest.mark.parametrize("backend,dtype", cpu_cases("optim.adam"))
def test_functional_update_with_grad_scale(backend, dtype):
    params, grads = make("odd", dtype, seed=3)
    want = [p.copy() for p in params]
    st_want = F.init_state("adam", want)
    F.update("adam", want, [g * dtype.type(0.25) for g in grads[0]], st_want, step=0, lr=0.01,
             backend="numpy")
    got = [p.copy() for p in params]
    st_got = F.init_state("adam", got)
    F.update("adam", got, grads[0], st_got, step=0, lr=0.01, grad_scale=0.25, backend=backend)
    assert_close(got, want, dtype)
    assert_close(st_got["v"], st_want["v"], dtype)


@pytest.mark.parametrize("backend,dtype", cpu_cases("optim.adam"))
def test_grads_are_never_written(backend, dtype):
    params, grads = make("odd", dtype)
    before = [g.copy() for g in grads[0]]
    for g in grads[0]:
        g.flags.writeable = False  # a read-only gradient is fine: it is only read
    fastopt.Adam(params, 0.1, backend=backend).step(grads[0])
    assert all(np.array_equal(a, b) for a, b in zip(before, grads[0]))


@pytest.mark.parametrize("rule", list(DB))
def test_checkpoint_continues_bit_for_bit(rule, tmp_path):
    """6 steps straight == 3 steps, numpy.savez, fresh optimizer, numpy.load, 3 steps (every
    hyperparameter row of the rule)."""
    params, grads = make("odd", np.float32)
    grads = grads + grads[:2]
    lr = schedules.warmup_cosine(0.05, 2, 10)
    for hyper in DB[rule].rows:
        a = [p.copy() for p in params]
        oa = CLASSES[rule](a, lr, **hyper)
        for g in grads:
            oa.step(g)
        b = [p.copy() for p in params]
        ob = CLASSES[rule](b, lr, **hyper)
        for g in grads[:3]:
            ob.step(g)
        np.savez(tmp_path / "ckpt.npz", **ob.state_dict())
        np.savez(tmp_path / "params.npz", *b)
        with np.load(tmp_path / "params.npz", allow_pickle=False) as z:
            c = [z[f"arr_{i}"].copy() for i in range(len(b))]
        oc = CLASSES[rule](c, lr, **hyper)
        with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as z:
            oc.load_state_dict(z)
        assert oc.step_count == 3
        for g in grads[3:]:
            oc.step(g)
        assert all(np.array_equal(x, y) for x, y in zip(a, c)), hyper
        for name in oa.state:
            assert all(np.array_equal(x, y) for x, y in zip(oa.state[name], oc.state[name]))


def test_load_state_dict_refuses_mismatch_and_changes_nothing():
    params, grads = make("odd", np.float32)
    opt = fastopt.Adam(params, 0.1)
    opt.step(grads[0])
    good = opt.state_dict()
    before = {k: v.copy() for k, v in opt.state_dict().items()}
    bad_cases = [
        ({**good, "m.0": good["m.0"].astype(np.float64)}, "dtype"),
        ({**good, "v.4": good["v.4"][:-1]}, "shape"),
        ({k: v for k, v in good.items() if k != "m.2"}, "missing"),
        ({**good, "extra": np.zeros(1)}, "unexpected"),
        ({**good, "optimizer": np.array("sgd")}, "optimizer"),
        ({**good, "step": np.array(-1)}, "step"),
        ({**{k: v for k, v in good.items()}, "step": np.array(2.5)}, "step"),
    ]
    modified = {**good, "m.1": good["m.1"] + 1, "step": np.array(7)}
    for sd, word in bad_cases:
        sd = {**sd, **{k: modified[k] for k in ("m.1",) if k in sd}}
        with pytest.raises((ValueError, TypeError), match=word):
            opt.load_state_dict(sd)
        after = opt.state_dict()
        assert all(np.array_equal(before[k], after[k]) for k in before)


def test_step_counter_and_lr_schedule():
    p = np.zeros(3)
    seen = []
    opt = fastopt.SGD(p, lambda t: seen.append(t) or 0.5)
    for _ in range(3):
        res = opt.step(np.ones(3))
    assert seen == [0, 1, 2] and opt.step_count == 3 and res.lr == 0.5
    np.testing.assert_array_equal(p, -1.5)


def test_schedules():
    w = schedules.linear_warmup(1.0, warmup_steps=4, post_warmup_steps=8)
    assert [w(t) for t in (0, 2, 4, 100)] == [0.0, 0.5, 1.0, 1.0] and w.total_steps == 12
    d = schedules.linear_decay(1.0, 10, end_lr=0.1)
    assert d(0) == 1.0 and d(10) == pytest.approx(0.1) and d(20) == pytest.approx(0.1)
    c = schedules.cosine_decay(2.0, 10)
    assert c(0) == 2.0 and c(5) == pytest.approx(1.0) and c(10) == pytest.approx(0.0, abs=1e-15)
    wc = schedules.warmup_cosine(2.0, 4, 14)
    assert wc(0) == 0.0 and wc(2) == 1.0 and wc(4) == 2.0 and wc(9) == pytest.approx(1.0)
    assert wc(14) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="warmup_steps"):
        schedules.linear_warmup(1.0, 0)
    with pytest.raises(ValueError, match="lr"):
        schedules.constant(-1.0)


@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=6),
       rule=st.sampled_from(list(DB)), lr=st.floats(0.0, 1.0), data=st.data(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_random_shapes_and_hyperparameters(sizes, rule, lr, data, dtype, seed):
    """Every hyperparameter of the rule drawn inside its declared range (optim_db)."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(2)]
    hyper = data.draw(hyper_strategy(DB[rule]), label="hyper")
    want_p, want_s = trajectory(rule, "numpy", params, grads, hyper, lr)
    cases = [c.values for c in cpu_cases(f"optim.{rule}") if not c.marks]
    assert_backends_follow(rule, cases, dtype, params, grads, hyper, lr, want_p, want_s)


def test_no_temporaries_the_size_of_the_arrays():
    """Peak extra memory of a native step is O(threads), not O(N) (NumPy allocations traced)."""
    import tracemalloc

    n = 1 << 20
    params = [np.ones(n, np.float32)]
    grads = [np.full(n, 0.5, np.float32)]
    for backend in ("cpp", "numba"):
        if fastopt._dispatch.unavailable_reason(backend):
            continue
        opt = fastopt.Adam([p.copy() for p in params], 0.1, backend=backend)
        opt.step(grads)  # warm up (JIT, caches)
        tracemalloc.start()
        opt.step(grads)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < n * 4 // 16, (backend, peak)
