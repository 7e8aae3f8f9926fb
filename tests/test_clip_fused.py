"""Clipping and the non-finite check fused into optimizer steps (SPEC §3): one norm pass, the
scale folded into the update as grad_scale, skipped steps that change no byte."""
import math
import warnings

import numpy as np
import pytest

import fastopt
from fastopt import _dispatch, _registry

from conftest import TOL, cpu_cases, snapshot
from optim_db import DB

CLASSES = fastopt.optim.CLASSES
SIZES = (1, 7, 129, 4097, 20_000)


def make(dtype, seed=0, steps=4, scale=1.0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    grads = [[(rng.standard_normal(n) * scale * (1 + 5 * (k % 2))).astype(dtype) for n in SIZES]
             for k in range(steps)]
    return params, grads


def cases():
    """(rule, backend, dtype) for every optimizer x backend x dtype both kernels support."""
    out = []
    for rec in DB.values():
        for p in cpu_cases(rec.kernel):
            backend, dtype = p.values
            if dtype in _registry.KERNELS["norm.global_norm"].get(backend, ()):
                out.append(pytest.param(rec.name, backend, dtype, marks=p.marks,
                                        id=f"{rec.name}-{backend}-{dtype.name}"))
    return out


def row_cases():
    """cases() x every hyperparameter row of the rule (optim_db)."""
    return [pytest.param(*c.values, j, marks=c.marks, id=f"{c.id}-row{j}")
            for c in cases() for j in range(len(DB[c.values[0]].rows))]


def same_sd(a, b):
    """Two state dicts hold the same keys and the same bytes (NaN equal to NaN)."""
    return a.keys() == b.keys() and all(
        np.asarray(a[k]).dtype == np.asarray(b[k]).dtype
        and np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)


def all_state(opt):
    return [a for arrays in opt.state.values() for a in arrays]


@pytest.mark.parametrize("rule,backend,dtype,row", row_cases())
def test_fused_clip_equals_clip_then_step(rule, backend, dtype, row):
    """Bit for bit on every backend: clipping rounds lambda/T to the dtype once, exactly as the
    kernels apply grad_scale. And the fused run matches the NumPy reference within TOL."""
    params, grads = make(dtype)
    lam = 0.5 * min(fastopt.global_norm(g) for g in grads)  # every step clips
    hyper = DB[rule].rows[row]

    p_fused = [p.copy() for p in params]
    fused = CLASSES[rule](p_fused, 0.01, backend=backend, max_grad_norm=lam, **hyper)
    p_two = [p.copy() for p in params]
    two = CLASSES[rule](p_two, 0.01, backend=backend, nonfinite="ignore", **hyper)
    p_ref = [p.copy() for p in params]
    ref = CLASSES[rule](p_ref, 0.01, backend="numpy", max_grad_norm=lam, **hyper)
    for g in grads:
        g_before = snapshot(g)
        r = fused.step(g)
        assert snapshot(g) == g_before  # the gradients are never rewritten
        assert r.clipped and not r.skipped
        assert r.grad_norm == fastopt.global_norm(g, backend="numpy")  # unclipped, same bits
        gc = [x.copy() for x in g]
        t = fastopt.clip_by_global_norm(gc, lam, backend=backend)
        assert t == r.grad_norm
        r2 = two.step(gc)
        assert r2.grad_norm is None  # "ignore" without clipping: no norm pass at all
        ref.step(g)
    assert snapshot(p_fused) == snapshot(p_two)
    assert snapshot(all_state(fused)) == snapshot(all_state(two))
    for a, b in zip(p_fused + all_state(fused), p_ref + all_state(ref)):
        np.testing.assert_allclose(a, b, **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("backend", [c.values[0] for c in cpu_cases("optim.adam")
                                     if c.values[1] == np.float32])
def test_no_clip_below_threshold_is_the_plain_step(backend):
    if _dispatch.unavailable_reason(backend):
        pytest.skip(_dispatch.unavailable_reason(backend))
    params, grads = make(np.float32)
    lam = 2 * max(fastopt.global_norm(g) for g in grads)
    pa, pb = [p.copy() for p in params], [p.copy() for p in params]
    a = fastopt.Adam(pa, 0.01, backend=backend, max_grad_norm=lam)
    b = fastopt.Adam(pb, 0.01, backend=backend, nonfinite="ignore")
    for g in grads:
        r = a.step(g)
        assert not r.clipped and r.grad_norm == fastopt.global_norm(g)
        b.step(g)
    assert snapshot(pa + all_state(a)) == snapshot(pb + all_state(b))


def poisoned(grads, value):
    bad = [x.copy() for x in grads]
    bad[3][1234] = value
    return bad


@pytest.mark.parametrize("rule,backend,dtype", cases())
def test_nonfinite_step_is_skipped_byte_for_byte(rule, backend, dtype):
    params, grads = make(dtype)
    p = [x.copy() for x in params]
    opt = CLASSES[rule](p, 0.01, backend=backend, max_grad_norm=1.0)
    opt.step(grads[0])
    for value in (np.nan, np.inf, -np.inf):
        before = snapshot(p) + snapshot(all_state(opt))
        with pytest.warns(RuntimeWarning, match="skipped step 1"):
            r = opt.step(poisoned(grads[1], value))
        assert r.skipped and not r.clipped
        assert (math.isnan(r.grad_norm) if np.isnan(value) else r.grad_norm == math.inf)
        assert snapshot(p) + snapshot(all_state(opt)) == before
        assert opt.step_count == 1
    # and the run goes on exactly as if the bad steps had never come
    opt.step(grads[1])
    q = [x.copy() for x in params]
    clean = CLASSES[rule](q, 0.01, backend=backend, max_grad_norm=1.0)
    clean.step(grads[0])
    clean.step(grads[1])
    assert snapshot(p) + snapshot(all_state(opt)) == snapshot(q) + snapshot(all_state(clean))


@pytest.mark.parametrize("backend", ["cpp", "numba", "numpy"])
def test_skip_is_the_default_even_without_clipping(backend):
    if _dispatch.unavailable_reason(backend):
        pytest.skip(_dispatch.unavailable_reason(backend))
    params, grads = make(np.float64)
    opt = fastopt.Momentum(params, 0.1, backend=backend)
    r = opt.step(grads[0])
    assert r.grad_norm == fastopt.global_norm(grads[0]) and not r.clipped
    before = snapshot(params) + snapshot(all_state(opt))
    with pytest.warns(RuntimeWarning):
        assert opt.step(poisoned(grads[1], np.nan)).skipped
    assert snapshot(params) + snapshot(all_state(opt)) == before and opt.step_count == 1


def test_raise_and_ignore():
    params, grads = make(np.float32)
    p = [x.copy() for x in params]
    opt = fastopt.Adam(p, 0.01, nonfinite="raise", max_grad_norm=1.0)
    before = snapshot(p) + snapshot(all_state(opt))
    with pytest.raises(FloatingPointError, match="nothing was updated"):
        opt.step(poisoned(grads[0], np.inf))
    assert snapshot(p) + snapshot(all_state(opt)) == before and opt.step_count == 0

    q = [x.copy() for x in params]
    opt = fastopt.SGD(q, 0.01, nonfinite="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = opt.step(poisoned(grads[0], np.nan))  # trusted: no check, no warning
    assert r.grad_norm is None and not r.skipped and opt.step_count == 1
    assert np.isnan(q[3][1234])
    # ignore + clipping: the norm is computed (for clipping); a non-finite one does not scale
    q = [x.copy() for x in params]
    opt = fastopt.SGD(q, 0.01, nonfinite="ignore", max_grad_norm=1.0)
    r = opt.step(poisoned(grads[0], np.inf))
    assert r.grad_norm == math.inf and not r.clipped and not r.skipped


class CountingKernels:
    """Counts norm kernel calls on the NumPy backend."""

    def __init__(self, monkeypatch):
        self.calls = 0
        mod = _dispatch.module("numpy")
        real = mod.norm_partials

        def counted(*a, **k):
            self.calls += 1
            return real(*a, **k)
        monkeypatch.setattr(mod, "norm_partials", counted)


def test_one_read_pass_per_step(monkeypatch):
    count = CountingKernels(monkeypatch)
    params, grads = make(np.float32)
    opt = fastopt.Adam([x.copy() for x in params], 0.01, backend="numpy", max_grad_norm=1.0)
    opt.step(grads[0])
    assert count.calls == 1
    opt = fastopt.Adam([x.copy() for x in params], 0.01, backend="numpy", nonfinite="ignore")
    opt.step(grads[0])
    assert count.calls == 1  # "ignore" and no clipping: no norm pass
    opt = fastopt.Adam([x.copy() for x in params], 0.01, backend="numpy")
    opt.step(grads[0])
    assert count.calls == 2  # the default check is that same single pass


def test_mixed_dtype_params_clip_on_the_joint_norm():
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(100).astype(np.float32), rng.standard_normal(50)]
    grads = [rng.standard_normal(100).astype(np.float32) * 10, rng.standard_normal(50) * 10]
    opt = fastopt.SGD(params, 0.1, max_grad_norm=1.0)
    r = opt.step(grads)
    assert r.clipped and r.grad_norm == fastopt.global_norm(grads)
    want = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    assert abs(r.grad_norm - want) <= 1e-12 * want


CTOR_BAD = [
    ({"max_grad_norm": 0}, ValueError, r"max_grad_norm"),
    ({"max_grad_norm": -1.0}, ValueError, r"max_grad_norm"),
    ({"max_grad_norm": math.inf}, ValueError, r"max_grad_norm"),
    ({"max_grad_norm": "sometimes"}, ValueError, r"max_grad_norm"),
    ({"max_grad_norm": [1.0]}, TypeError, r"max_grad_norm"),
    ({"nonfinite": "warn"}, ValueError, r"nonfinite must be one of"),
    ({"monitor": object()}, TypeError, r"monitor must be a fastopt.GradNormMonitor"),
]


@pytest.mark.parametrize("rule", list(DB))
@pytest.mark.parametrize("kw,exc,pattern", CTOR_BAD, ids=[str(c[0]) for c in CTOR_BAD])
def test_constructor_rejects(rule, kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        DB[rule].cls([np.ones(3)], 0.1, **kw)


@pytest.mark.parametrize("rule", list(DB))
def test_every_optimizer_takes_the_options(rule):
    m = fastopt.GradNormMonitor()
    opt = DB[rule].cls([np.ones(3)], 0.1, max_grad_norm="auto", nonfinite="raise", monitor=m)
    assert isinstance(opt.max_grad_norm, fastopt.AutoClip) and opt.nonfinite == "raise"
    opt.step([np.ones(3)])
    assert m.count == 1


def test_state_dict_keeps_old_keys_and_adds_flat_extras(tmp_path):
    params, grads = make(np.float32, steps=30)
    plain = fastopt.Adam([x.copy() for x in params], 0.01)
    assert set(plain.state_dict()) == {"optimizer", "step"} | {
        f"{n}.{i}" for n in ("m", "v") for i in range(len(SIZES))}

    def build(p):
        return fastopt.Adam(p, 0.01, max_grad_norm=fastopt.AutoClip(80, window=8, warmup=3),
                            monitor=fastopt.GradNormMonitor(window=5, max_history=16))
    pa = [x.copy() for x in params]
    a = build(pa)
    for g in grads[:20]:
        a.step(g)
    sd = a.state_dict()
    assert any(k.startswith("clip.") for k in sd) and any(k.startswith("monitor.") for k in sd)
    np.savez(tmp_path / "ckpt.npz", **sd)
    loaded = dict(np.load(tmp_path / "ckpt.npz", allow_pickle=False))
    pb = [x.copy() for x in pa]
    b = build(pb)
    b.load_state_dict(loaded)
    for g in grads[20:]:
        ra, rb = a.step(g), b.step(g)
        assert ra == rb
    assert snapshot(pa + all_state(a)) == snapshot(pb + all_state(b))
    assert same_sd(a.state_dict(), b.state_dict())


def test_load_state_dict_refuses_mismatch_whole():
    params, grads = make(np.float32)
    a = fastopt.Adam([x.copy() for x in params], 0.01, max_grad_norm="auto",
                     monitor=fastopt.GradNormMonitor())
    a.step(grads[0])
    sd = a.state_dict()
    b = fastopt.Adam([x.copy() for x in params], 0.01, max_grad_norm="auto",
                     monitor=fastopt.GradNormMonitor(window=7))  # a different monitor
    b.step(grads[1])
    before = b.state_dict()
    with pytest.raises(ValueError, match="window"):
        b.load_state_dict(sd)
    assert same_sd(before, b.state_dict())
    c = fastopt.Adam([x.copy() for x in params], 0.01)
    with pytest.raises(ValueError, match="unexpected"):
        c.load_state_dict(sd)  # extras this optimizer does not have
