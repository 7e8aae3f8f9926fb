"""The numba-cuda backend on the Numba CUDA simulator: every kernel family against the NumPy
reference, on small odd sizes, parameters and state; bad device input writes nothing.

The simulator must be switched on before numba.cuda is first imported, so these tests run in a
process of their own: ``tests/test_cuda.py::test_simulator`` starts ``pytest`` on this file
with ``NUMBA_ENABLE_CUDASIM=1`` and fails when any test here fails. Collected in any other
process, they skip.
"""
import math
import os
import zlib

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("NUMBA_ENABLE_CUDASIM") != "1",
    reason="runs under NUMBA_ENABLE_CUDASIM=1, in the subprocess of test_cuda.py::test_simulator")

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    from numba import cuda

import fastopt  # noqa: E402
from fastopt import _device, _dispatch, _registry  # noqa: E402
from fastopt import functional as F  # noqa: E402
from fastopt._core import GuardedCall  # noqa: E402

BACKEND = "numba-cuda"
SIZES = (1, 7, 129, 300)
RULES = _registry.OPTIMIZERS
DTYPES = _registry.KERNELS["optim.adam"][BACKEND]
HYPER = {"momentum": dict(momentum=0.9), "nesterov": dict(momentum=0.9),
         "rmsprop": dict(momentum=0.5, rho=0.9, eps=1e-6)}


def dev(arrays):
    return [cuda.to_device(a) for a in arrays]


def host(arrays):
    return [a.copy_to_host() for a in arrays]


def test_backend_is_available_under_the_simulator():
    assert _dispatch.unavailable_reason(BACKEND) is None
    assert _dispatch.resolve("optim.adam", device=True) == BACKEND  # no GPU: no cuda backend


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rule", RULES)
def test_optim_matches_reference(rule, dtype):
    """Three steps on arrays of odd sizes: params and every state array equal the reference's
    bit for bit (the simulator computes in the storage dtype, in the kernels' order)."""
    rng = np.random.default_rng(zlib.crc32(f"{rule}{dtype}".encode()))
    hp = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    dp = dev(hp)
    hs, ds = F.init_state(rule, hp), F.init_state(rule, dp)
    for step in range(3):
        hg = [rng.standard_normal(n).astype(dtype) for n in SIZES]
        kw = dict(step=step, lr=0.01, weight_decay=0.01, grad_scale=0.5, **HYPER.get(rule, {}))
        F.update(rule, hp, hg, hs, backend="numpy", **kw)
        F.update(rule, dp, dev(hg), ds, backend=BACKEND, **kw)
    for want, got in zip(hp, host(dp)):
        np.testing.assert_array_equal(got, want)
    for name in hs:
        for want, got in zip(hs[name], host(ds[name])):
            np.testing.assert_array_equal(got, want, err_msg=f"state {name}")


if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    class Strict(FakeCUDAArray):
        """A simulated device array without the NumPy conveniences that the simulator's own
        arrays pass through (flags, copy, astype, ...): fastopt must treat it as a CuPy array
        or a PyTorch tensor would need, through fastopt._device only."""
        __module__ = "numba.cuda.simulator.strict"  # recognised as a simulator device array
        _ALLOWED = {"_ary", "shape", "dtype", "size", "nbytes", "strides", "ndim", "stream"}

        def __getattr__(self, name):
            if name in Strict._ALLOWED:
                return getattr(self._ary, name)
            raise AttributeError(f"a device array has no {name!r} here")


def strict(arrays):
    return [Strict(np.array(a)) for a in arrays]


def test_optimizer_class_on_device_arrays():
    """fastopt.AdamW on device arrays: same trajectory as on the host, state_dict in NumPy,
    load_state_dict back onto the device."""
    rng = np.random.default_rng(5)
    hp = [rng.standard_normal(n).astype(np.float32) for n in (3, 130)]
    dp = strict(hp)
    ho, do = fastopt.AdamW(hp, lr=0.01, backend="numpy"), fastopt.AdamW(dp, lr=0.01)
    for _ in range(2):
        hg = [rng.standard_normal(p.shape).astype(np.float32) for p in hp]
        ho.step(hg)
        do.step(strict(hg))
    for want, got in zip(hp, host(dp)):
        np.testing.assert_array_equal(got, want)
    sd = do.state_dict()
    assert all(isinstance(v, np.ndarray) for k, v in sd.items() if k[:2] in ("m.", "v."))
    hsd = ho.state_dict()
    for k in hsd:
        np.testing.assert_array_equal(np.asarray(sd[k]), np.asarray(hsd[k]), err_msg=k)
    fresh = fastopt.AdamW(strict(hp), lr=0.01)
    fresh.load_state_dict(sd)
    assert fresh.step_count == 2
    for a, b in zip(fresh.state["m"], do.state["m"]):
        np.testing.assert_array_equal(a.copy_to_host(), b.copy_to_host())


# -- guarded steps: norm, clip, skip and step count decided on the device ------------------------

GUARD_SIZES = (1, 7, 300)  # small: the simulator runs every thread in Python


def guard_grads(rng, dtype, kind, sizes=GUARD_SIZES):
    dtype = np.dtype(dtype).type
    g = [rng.standard_normal(n).astype(dtype) for n in sizes]
    if kind == "nan":
        g[-1][5] = np.nan
    elif kind == "inf":
        g[1][0] = -np.inf
    elif kind == "huge":  # float64 only: the squares overflow, the rescaled pass decides
        g = [x * dtype(1e200) for x in g]
    elif kind == "tiny":
        g = [x * dtype(1e-200) for x in g]
    return g


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rule", RULES)
def test_guarded_step_matches_reference(rule, dtype):
    """The backend's guarded_step against the reference's, step after step: params, state and
    the whole control array (norm, scale, flags, row, count, per-slot copies) bit for bit,
    through clipped, unclipped, skipped (NaN, inf) and, in float64, rescaled-norm steps."""
    rng = np.random.default_rng(zlib.crc32(f"guard{rule}{dtype}".encode()))
    kinds = ["clip", "nan", "free", "clip"] + (["huge", "tiny"] if dtype == np.float64 else [])
    kinds += ["inf"]  # not skipped (skip_nonfinite off): params turn non-finite, so last
    hp = [rng.standard_normal(n).astype(dtype) for n in GUARD_SIZES]
    dp = dev(hp)
    hs, ds = F.init_state(rule, hp), F.init_state(rule, dp)
    W = _registry.GUARD_WINDOW
    hctl = np.zeros((W + 1, _registry.GUARD_WIDTH))
    hctl[0, _registry.G_APPLIED] = 3  # as if resumed at step 3
    dctl = cuda.to_device(hctl)
    hmirror = _device.Mapped(np.zeros_like(hctl), 0, None, None)
    dmirror = _device.mapped(dctl, hctl.shape)
    ref, mod = _dispatch.module("numpy"), _dispatch.module(BACKEND)
    t_lo = 2  # the host's window starts one below the true count: row 1 must be picked
    for i, kind in enumerate(kinds):
        hg = guard_grads(rng, dtype, kind)
        rows = [F.scalars(rule, lr=0.01 * (t + 1), step=t, weight_decay=0.01,
                          **HYPER.get(rule, {})) for t in range(t_lo, t_lo + 3 + i)]
        limit = {"free": math.inf, "huge": 1e199}.get(kind, 5.0)
        args = (rows, t_lo, limit, kind != "inf", )
        ref.guarded_step(GuardedCall(rule, hp, hg, [hs[k] for k in hs], *args, hctl, 1 + i % W,
                                     i + 1, hmirror))
        mod.guarded_step(GuardedCall(rule, dp, dev(hg), [ds[k] for k in ds], *args, dctl,
                                     1 + i % W, i + 1, dmirror))
        np.testing.assert_array_equal(dctl.copy_to_host(), hctl, err_msg=f"step {i} ({kind})")
        np.testing.assert_array_equal(dmirror.host, hmirror.host)
        np.testing.assert_array_equal(hmirror.host[1:i + 2], hctl[1:i + 2])  # slot rows
        for want, got in zip(hp, host(dp)):
            np.testing.assert_array_equal(got, want, err_msg=f"step {i} ({kind})")
        for name in hs:
            for want, got in zip(hs[name], host(ds[name])):
                np.testing.assert_array_equal(got, want, err_msg=f"state {name}, step {i}")
    G = _registry
    assert hctl[0, G.G_APPLIED] == 3 + len(kinds) - 1  # the NaN step was skipped, inf not
    assert hctl[2, G.G_SKIPPED] == 1 and hctl[len(kinds), G.G_SKIPPED] == 0
    assert hctl[1, G.G_CLIPPED] == 1 and hctl[3, G.G_CLIPPED] == 0


def test_guarded_step_multi_block_norm():
    """Arrays of several norm blocks: the device folds each array's block sums, then the
    arrays', in the host's order (float64, with and without the rescaled pass)."""
    rng = np.random.default_rng(4)
    sizes = (2 * _registry.NORM_BLOCK + 3, 5)
    G = _registry
    for kind in ("clip", "huge"):
        hg = guard_grads(rng, np.float64, kind, sizes)
        hctl = np.zeros((G.GUARD_WINDOW + 1, G.GUARD_WIDTH))
        dctl = cuda.to_device(hctl)
        rows = [F.scalars("sgd", lr=0.0, step=0)]
        hp, dp = [np.zeros(n) for n in sizes], dev([np.zeros(n) for n in sizes])
        _dispatch.module("numpy").guarded_step(
            GuardedCall("sgd", hp, hg, [], rows, 0, 1.0, True, hctl, 1, 1))
        _dispatch.module(BACKEND).guarded_step(
            GuardedCall("sgd", dp, dev(hg), [], rows, 0, 1.0, True, dctl, 1, 1))
        np.testing.assert_array_equal(dctl.copy_to_host(), hctl)
        assert hctl[1, G.G_NORM] == fastopt.global_norm(hg) and hctl[1, G.G_CLIPPED] == 1


def outcome(r):
    return (str(r.grad_norm), r.clipped, r.skipped, r.lr)  # str: NaN equals NaN


@pytest.mark.parametrize("mirror", [True, False], ids=["mirror", "no-mirror"])
def test_optimizer_guarded_steps_equal_host_steps(mirror, monkeypatch):
    """fastopt.AdamW on device arrays with clipping and a schedule: step() returns without
    reading the device (pending results); after GUARD_WINDOW unread steps the host takes the
    finished ones from the host-mapped mirror without waiting (or, with no mirror, waits once);
    params, state, step count and every StepResult equal the host optimizer's bit for bit,
    skipped NaN steps included; the skip warning comes when the results are read."""
    import warnings
    if mirror:  # every simulated step has finished: nothing may wait for the device
        def no_wait(a):
            raise AssertionError("waited for the device")
        monkeypatch.setattr(_device, "synchronize", no_wait)
        monkeypatch.setattr(_device, "to_host", no_wait)
    else:
        monkeypatch.setattr(_device, "mapped", lambda like, shape: None)
    rng = np.random.default_rng(8)
    hp = [rng.standard_normal(n).astype(np.float32) for n in GUARD_SIZES]
    dp = strict(hp)
    sched = fastopt.schedules.warmup_cosine(0.01, warmup_steps=5, total_steps=30)
    kw = dict(lr=sched, weight_decay=0.01, max_grad_norm=3.0)
    ho, do = fastopt.AdamW(hp, **kw, backend="numpy"), fastopt.AdamW(dp, **kw)
    W = _registry.GUARD_WINDOW
    want, got = [], []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for i in range(W + 7):
            hg = guard_grads(rng, np.float32, "nan" if i in (3, 4, W + 2) else "clip")
            want.append(ho.step(hg))
            r = do.step(strict(hg))
            assert r.pending and r._owner is do._guard
            got.append(r)
            # finished steps are taken from the mirror at the next step; else one wait per W
            assert len(do._guard.pending) == (1 if mirror else i % W + 1)
        # the host optimizer warned 3 times; the device one when it read steps 3 and 4 (and,
        # from the mirror, W + 2)
        assert sum("skipped step" in str(w.message) for w in seen) == 3 + 2 + mirror
        assert not got[0].pending and got[-1].pending
        assert [outcome(r) for r in got] == [outcome(r) for r in want]
        assert sum("skipped step" in str(w.message) for w in seen) == 3 + 3  # and step W + 2
    assert got == want and do.step_count == ho.step_count == W + 7 - 3
    for a, b in zip(hp, host(dp)):
        np.testing.assert_array_equal(b, a)
    for name in ho.state:
        for a, b in zip(ho.state[name], host(do.state[name])):
            np.testing.assert_array_equal(b, a)
    monkeypatch.undo()  # the state dict copies device arrays to the host
    sd = do.state_dict()
    assert int(sd["step"]) == W + 4
    do.load_state_dict(ho.state_dict())  # the device count starts afresh from the dict
    hg = guard_grads(rng, np.float32, "clip")
    assert do.step(strict(hg)) == ho.step(hg) and do.step_count == ho.step_count


NORM_SIZES = (1, 7, 16385, 20000)  # short, a full block plus one, two blocks


def norm_arrays(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) for n in NORM_SIZES]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_norm_partials_bits_equal_reference(dtype):
    """The kernel's per-array sums of squares and max |x| are the reference's, bit for bit."""
    from fastopt import _numba_cuda, _reference
    arrays = norm_arrays(dtype)
    arrays[1][3] = 1e30 if dtype == np.float32 else 1e200  # overflows when squared
    for scale, want_max in ((1.0, False), (2.0 ** -20, True)):
        want = _reference.norm_partials(arrays, scale, want_max)
        got = _numba_cuda.norm_partials(dev(arrays), scale, want_max)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_global_norm_bits_equal_host(dtype):
    arrays = norm_arrays(dtype, seed=1)
    d = dev(arrays)
    assert fastopt.global_norm(d) == fastopt.global_norm(arrays, backend="numpy")
    n, per = fastopt.global_norm(d, per_array=True)
    n0, per0 = fastopt.global_norm(arrays, per_array=True, backend="numpy")
    assert n == n0 and np.array_equal(per, per0)
    assert fastopt.global_norm(d, ord=math.inf) == fastopt.global_norm(arrays, ord=math.inf,
                                                                        backend="numpy")


def test_global_norm_nonfinite_and_huge():
    a = np.ones(9, np.float32)
    for bad, want in ((np.nan, math.isnan), (np.inf, math.isinf), (-np.inf, math.isinf)):
        b = a.copy()
        b[4] = bad
        assert want(fastopt.global_norm(dev([a, b])))
    big = fastopt.global_norm(cuda.to_device(np.array([3e200, 4e200])))
    assert big == pytest.approx(5e200, rel=1e-15)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_global_norm_as_device_array(dtype):
    """as_array=True: a 0-d float64 device array, the host float's bits, for ordinary, huge,
    tiny (float64), NaN and inf inputs; mixed dtypes too (through the host)."""
    rng = np.random.default_rng(3)
    cases = [norm_arrays(dtype)]
    if dtype == np.float64:
        cases += [[np.array([3e200, 4e200]), np.ones(3)], [np.array([3e-200, 4e-200])]]
    for bad in (np.nan, np.inf):
        c = [rng.standard_normal(n).astype(dtype) for n in (5, 40)]
        c[1][7] = bad
        cases.append(c)
    for arrays in cases:
        got = fastopt.global_norm(dev(arrays), as_array=True)
        assert _device.is_device_array(got) and got.shape == () and got.dtype == np.float64
        assert float(got.copy_to_host()).hex() == fastopt.global_norm(arrays).hex()
    mixed = [np.ones(3, np.float32), np.full(2, 2.0)]
    got = fastopt.global_norm(dev(mixed), as_array=True)
    assert float(got.copy_to_host()) == fastopt.global_norm(mixed) == math.sqrt(11)


def test_clip_by_global_norm_on_device():
    arrays = norm_arrays(np.float32, seed=2)
    d = dev(arrays)
    t = fastopt.clip_by_global_norm(d, 1.0)
    t0 = fastopt.clip_by_global_norm(arrays, 1.0, backend="numpy")
    assert t == t0
    for want, got in zip(arrays, host(d)):
        np.testing.assert_array_equal(got, want)


HALTON_CASES = [  # (n, d, start, scramble, shift)
    (1, 1, 0, True, False), (7, 3, 5, True, True), (33, 5, 2**40, False, False),
    (40, 17, 2**64 - 40, True, True), (20, 4, 2**32 - 10, False, True),
]


@pytest.mark.parametrize("case", HALTON_CASES, ids=str)
def test_halton_bits_equal_reference(case):
    n, d, start, scramble, shift = case
    kw = dict(seed=2024, start=start, scramble=scramble, shift=shift)
    got = fastopt.halton(n, d, backend=BACKEND, **kw)
    assert not isinstance(got, np.ndarray)  # a device array
    want = fastopt.halton(n, d, backend="numpy", **kw)
    assert np.array_equal(got.copy_to_host(), want)


# -- bad device input: a clear error before anything is written -------------------------------

def snapshot(arrays):
    return [a.copy_to_host().tobytes() if hasattr(a, "copy_to_host") else a.tobytes()
            for a in arrays]


BAD = [  # (name, make(params, grads) -> (params, grads), exception, message)
    ("host grads", lambda p, g: (p, [a.copy_to_host() for a in g]), TypeError,
     "host and device arrays mixed"),
    ("host param among device", lambda p, g: ([p[0].copy_to_host()] + p[1:], g), TypeError,
     "host and device arrays mixed"),
    ("int32", lambda p, g: ([cuda.to_device(np.zeros(7, np.int32))] + p[1:], g), TypeError,
     "dtype int32"),
    ("float16 (no numba-cuda kernel)",
     lambda p, g: ([cuda.to_device(np.zeros(7, np.float16))] + p[1:],
                   [cuda.to_device(np.zeros(7, np.float16))] + g[1:]), (TypeError, ValueError),
     "float16"),
    ("non-contiguous", lambda p, g: ([cuda.to_device(np.zeros(14, np.float32))[::2]] + p[1:], g),
     ValueError, "C-contiguous"),
    ("shape", lambda p, g: (p, [cuda.to_device(np.zeros(8, np.float32))] + g[1:]), ValueError,
     "shape"),
]


@pytest.mark.parametrize("make, exc, msg", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_device_input_writes_nothing(make, exc, msg):
    p = dev([np.ones(7, np.float32), np.ones(3, np.float32)])
    g = dev([np.ones(7, np.float32), np.ones(3, np.float32)])
    params, grads = make(p, g)
    before = snapshot(params)
    with pytest.raises(exc, match=msg):
        F.update("sgd", params, grads, {}, step=0, lr=0.1, backend=BACKEND)
    assert snapshot(params) == before


def test_bad_input_to_norm_and_optimizer():
    d = dev([np.ones(5, np.float32)])
    with pytest.raises(TypeError, match="host and device arrays mixed"):
        fastopt.global_norm([d[0], np.ones(3, np.float32)])
    with pytest.raises(TypeError, match="host and device arrays mixed"):
        fastopt.clip_by_global_norm([d[0], np.ones(3, np.float32)], 1.0)
    before = snapshot(d)
    opt = fastopt.SGD(d, lr=0.1)
    with pytest.raises(TypeError, match="host and device arrays mixed"):
        opt.step([np.ones(5, np.float32)])
    assert snapshot(d) == before and opt.step_count == 0
    with pytest.raises(ValueError, match="cannot run on device"):
        fastopt.SGD(d, lr=0.1, backend="numpy").step(dev([np.ones(5, np.float32)]))
    assert snapshot(d) == before


def test_guarded_step_reports_the_schedules_rate():
    """StepResult.lr of a guarded step is the rate the schedule gave, as on the host, even for
    a rule whose kernel scalars fold more into lr (Adagrad's lr_decay)."""
    rng = np.random.default_rng(9)
    hp = [rng.standard_normal(n).astype(np.float32) for n in GUARD_SIZES]
    dp = strict(hp)
    kw = dict(lr=0.1, lr_decay=0.5, max_grad_norm=3.0)
    ho, do = fastopt.Adagrad(hp, **kw, backend="numpy"), fastopt.Adagrad(dp, **kw)
    for _ in range(3):
        hg = guard_grads(rng, np.float32, "clip")
        want, got = ho.step(hg), do.step(strict(hg))
        assert got.pending
        assert outcome(got) == outcome(want) and got.lr == 0.1
    for a, b in zip(hp, host(dp)):
        np.testing.assert_array_equal(b, a)
