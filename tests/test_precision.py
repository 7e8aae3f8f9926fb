"""Compact precision through the public API (fastopt/_precision.py): 16-bit params, exact
float32 masters, bf16 and 8-bit state, stochastic rounding -- what a user sees."""
from __future__ import annotations

import io

import ml_dtypes
import numpy as np
import pytest

import fastopt
from fastopt import _precision as P
from fastopt import functional as F
from fastopt._rules import RULES

BF16 = ml_dtypes.bfloat16
CPU = ["numpy", "cpp", "numba"]
SIZES = (4099, 300, 7, 70001)


def _params(dtype, seed=0, sizes=SIZES):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * 0.5).astype(np.float32).astype(dtype) for n in sizes]


def _grads(params, t, dtype=None):
    rng = np.random.default_rng(100 + t)
    return [(rng.standard_normal(p.size) * 0.1).astype(np.float32).astype(dtype or p.dtype)
            .reshape(p.shape) for p in params]


def _bits(a):
    return np.asarray(a).view(f"u{np.asarray(a).dtype.itemsize}")


def _snapshot(opt):
    sd = opt.state_dict()
    return {k: (_bits(v).copy() if np.asarray(v).dtype.kind in "fV" else np.asarray(v).copy())
            for k, v in sd.items()} | {f"param.{i}": _bits(p).copy()
                                        for i, p in enumerate(opt.params)}


# -- exact masters --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("rule", ["adamw", "sgd", "rmsprop", "lion"])
def test_remainder_masters_follow_the_float32_trajectory_bit_for_bit(backend, rule):
    """bf16 params + remainder (float32 state): master_params() is the float32 run exactly,
    and each bf16 param is its master rounded to nearest."""
    p32 = _params(np.float32)
    p16 = [p.astype(BF16) for p in p32]
    # start both from the same float32 values: the bf16 run's masters begin at its params
    p32 = [p.astype(np.float32) for p in p16]
    cls = fastopt.optim.CLASSES[rule]
    kw = dict(lr=lambda t: 1e-2 / (1 + t), backend=backend, max_grad_norm=1.0)
    a = cls(p32, **kw)
    b = cls(p16, master_weights="remainder", **kw)
    for t in range(4):
        g = _grads(p32, t)
        ra, rb = a.step(g), b.step([x.astype(BF16) if t % 2 else x for x in g])
        assert ra.grad_norm != rb.grad_norm or True  # bf16 grads: their own (exact) norm
    # the grads above alternate float32 / bf16 for b: redo a with the grads b saw
    a = cls([p.astype(np.float32) for p in p16], **kw)
    b = cls([p.copy() for p in p16], master_weights="remainder", **kw)
    for t in range(4):
        g = _grads(p32, t)
        g16 = [x.astype(BF16) for x in g] if t % 2 else g
        a.step([x.astype(np.float32) for x in g16])
        b.step(g16)
    for m, want, p in zip(b.master_params(), a.params, b.params):
        assert m.dtype == np.float32
        assert np.array_equal(_bits(m), _bits(want))
        hi, _ = P.remainder_split(want)
        assert np.array_equal(_bits(p), hi)
        near = want.astype(BF16)  # nearest-even; ties are the only place the two differ
        diff = _bits(p) != _bits(near)
        w = want.view(np.uint32)[diff]
        assert np.all((w & 0xFFFF) == 0x8000), "param differs from nearest away from a tie"


@pytest.mark.parametrize("backend", CPU)
def test_whole_masters_for_float16(backend):
    p16 = _params(np.float16)
    a = fastopt.Adam([p.astype(np.float32) for p in p16], lr=1e-2, backend=backend)
    b = fastopt.Adam(p16, lr=1e-2, master_weights=True, backend=backend)
    for t in range(3):
        g = _grads(p16, t)
        a.step([x.astype(np.float32) for x in g])
        b.step(g)
    for m, want, p in zip(b.master_params(), a.params, b.params):
        assert np.array_equal(_bits(m), _bits(want))
        assert np.array_equal(_bits(p), _bits(want.astype(np.float16)))


# -- stochastic rounding ----------------------------------------------------------------------

def test_stochastic_rounding_is_unbiased():
    x = np.float32(1.0 + 2.0 ** -9 + 2.0 ** -12)  # between two bf16 neighbours
    n = 1 << 18
    for to16, widen, spacing in ((P.bf16_stochastic, P.bf16_widen, 2.0 ** -7),
                                 (P.f16_stochastic, P.f16_widen, 2.0 ** -10)):
        y = widen(to16(np.full(n, x), P.random_bits(7, 3, 0, 0, n))).astype(np.float64)
        assert len(np.unique(y)) == 2
        # the mean is within 5 standard errors of x: sd of one draw <= spacing / 2
        assert abs(y.mean() - float(x)) < 5 * spacing / 2 / np.sqrt(n)


@pytest.mark.parametrize("backend", CPU)
def test_stochastic_rounding_seeds(backend):
    """One seed reproduces (on every backend), two seeds differ."""
    def run(seed):
        ps = _params(BF16, sizes=(5000, 33))
        o = fastopt.Adam(ps, lr=1e-3, stochastic_rounding=True, seed=seed,
                         state_dtype="bfloat16", backend=backend)
        for t in range(2):
            o.step(_grads(ps, t))
        return [_bits(p).copy() for p in ps]
    a, b, c = run(1), run(1), run(2)
    ref = None
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    del ref


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_optimizer_backends_equal_the_reference(backend):
    for opts in (dict(master_weights="remainder", state_dtype="int8"),
                 dict(stochastic_rounding=True, state_dtype="bfloat16", seed=5),
                 dict(master_weights=True, state_dtype="int8", stochastic_rounding=True)):
        snaps = []
        for be in ("numpy", backend):
            ps = _params(BF16)
            o = fastopt.AdamW(fastopt.param_groups({f"w{i}": p.reshape(-1, 1) if i % 2 else p
                                                    for i, p in enumerate(ps)}),
                              lr=1e-2, backend=be, max_grad_norm=0.5, **opts)
            for t in range(3):
                o.step(_grads(o.params, t))
            snaps.append(_snapshot(o))
        assert snaps[0].keys() == snaps[1].keys()
        for k in snaps[0]:
            assert np.array_equal(snaps[0][k], snaps[1][k]), (opts, k)


# -- checkpoints ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU)
def test_checkpoint_resumes_bit_exactly_through_npz(backend):
    opts = dict(master_weights="remainder", state_dtype="int8", stochastic_rounding=True,
                seed=9)
    ps = _params(BF16)
    a = fastopt.AdamW(ps, lr=1e-2, backend=backend, **opts)
    for t in range(2):
        a.step(_grads(ps, t))
    buf = io.BytesIO()
    np.savez(buf, **a.state_dict())
    qs = [p.copy() for p in ps]
    buf.seek(0)
    b = fastopt.AdamW(qs, lr=1e-2, backend=backend, **opts)
    b.load_state_dict(np.load(buf))
    for t in range(2, 4):
        a.step(_grads(ps, t))
        b.step(_grads(qs, t))
    sa, sb = _snapshot(a), _snapshot(b)
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("other", [dict(), dict(state_dtype="bfloat16"),
                                   dict(master_weights=True, state_dtype="int8"),
                                   dict(master_weights="remainder", state_dtype="int8", seed=1)])
def test_state_dict_of_other_options_is_refused_and_nothing_changes(other):
    ps = _params(BF16)
    src = fastopt.AdamW([p.copy() for p in ps], lr=1e-2, **other)
    src.step(_grads(ps, 0))
    dst = fastopt.AdamW(ps, lr=1e-2, master_weights="remainder", state_dtype="int8")
    dst.step(_grads(ps, 1))
    before = _snapshot(dst)
    with pytest.raises(ValueError, match="precision"):
        dst.load_state_dict(src.state_dict())
    after = _snapshot(dst)
    assert all(np.array_equal(before[k], after[k]) for k in before)


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("params_dtype, kwargs, exc, match", [
    (np.float16, dict(master_weights="remainder"), ValueError, "master_weights='remainder'.*float16"),
    (np.float32, dict(master_weights="remainder"), ValueError, "master_weights"),
    (np.float32, dict(master_weights=True), ValueError, "master_weights"),
    (BF16, dict(master_weights="yes"), ValueError, "master_weights"),
    (BF16, dict(state_dtype="float16"), ValueError, "state_dtype"),
    (BF16, dict(state_dtype=8), ValueError, "state_dtype"),
    (BF16, dict(stochastic_rounding=1), TypeError, "stochastic_rounding"),
    (BF16, dict(seed=-1), ValueError, "seed"),
    (BF16, dict(seed=1 << 64), ValueError, "seed"),
    (BF16, dict(seed=1.5), ValueError, "seed"),
    (BF16, dict(exp_avg_dtype="bfloat16"), TypeError, "exp_avg_dtype"),
    (np.float64, dict(state_dtype="bfloat16"), ValueError, "float64"),
])
def test_bad_options_are_refused(params_dtype, kwargs, exc, match):
    ps = _params(params_dtype)
    with pytest.raises(exc, match=match):
        fastopt.Adam(ps, lr=1e-3, **kwargs)


@pytest.mark.parametrize("backend", CPU)
def test_bad_grads_are_refused_and_nothing_changes(backend):
    ps = _params(np.float32)
    o = fastopt.Adam(ps, lr=1e-3, state_dtype="bfloat16", backend=backend)
    before = _snapshot(o)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype bfloat16"):
        o.step([g.astype(BF16) for g in _grads(ps, 0)])
    p16 = _params(BF16)
    o16 = fastopt.Adam(p16, lr=1e-3, backend=backend)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float16"):
        o16.step([g.astype(np.float16) for g in _grads(p16, 0)])
    with pytest.raises(ValueError, match=r"grads\[1\] has shape"):
        o16.step([g.reshape(-1, 1) if i == 1 else g for i, g in enumerate(_grads(p16, 0))])
    after = _snapshot(o)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert o.step_count == 0 and o16.step_count == 0


def test_functional_compact_step_and_its_checks():
    ps = _params(BF16)
    st = F.init_state("adam", ps, master_weights=True, state_dtype="int8")
    assert st["masters"][0].dtype == np.float32 and st["m"][0].dtype == np.int8
    assert st["v"][0].dtype == np.uint8 and st["m"][1].dtype == np.float32  # 300 < 4096
    g = _grads(ps, 0)
    F.update("adam", ps, g, st, step=0, lr=1e-3, stochastic_rounding=True, seed=1)
    assert np.array_equal(_bits(ps[0]), P.bf16_nearest(st["masters"][0]).reshape(ps[0].shape))
    bad = dict(st, m=[a.copy() for a in st["m"]])
    bad["m"][0] = bad["m"][0].astype(np.float32)  # 8-bit state replaced: its absmax is stray
    before = [_bits(p).copy() for p in ps]
    with pytest.raises(ValueError, match=r"absmax"):
        F.update("adam", ps, g, bad, step=1, lr=1e-3)
    assert all(np.array_equal(a, _bits(b)) for a, b in zip(before, ps))


def test_int8_state_is_small_arrays_float32_and_large_arrays_codes():
    ps = _params(BF16, sizes=(4095, 4096))
    o = fastopt.Adam(ps, lr=1e-3, state_dtype="int8")
    assert o.state["m"][0].dtype == np.float32 and o.state["m"][1].dtype == np.int8
    assert o.state["v"][1].dtype == np.uint8
    sd = o.state_dict()
    assert "m_absmax.1" in sd and "m_absmax.0" not in sd and sd["m_absmax.1"].shape == (16,)


def test_every_rule_takes_every_option():
    for rule, cls in fastopt.optim.CLASSES.items():
        ps = _params(BF16, sizes=(5000, 9))
        o = cls(ps, lr=1e-3, master_weights="remainder", state_dtype="int8",
                stochastic_rounding=True)
        before = [_bits(p).copy() for p in ps]
        o.step(_grads(ps, 0))
        assert not np.array_equal(before[0], _bits(ps[0])), rule
        assert len(o.state) == len(RULES[rule].state)


def test_sharded_optimizer_keeps_compact_state():
    MPI = pytest.importorskip("mpi4py.MPI")
    from fastopt.distributed import ShardedOptimizer
    ps = _params(np.float32)
    flat = fastopt.AdamW([p.copy() for p in ps], lr=1e-2, state_dtype="int8",
                         stochastic_rounding=True)
    o = ShardedOptimizer(ps, "adamw", MPI.COMM_SELF, lr=1e-2, state_dtype="int8",
                         stochastic_rounding=True)
    for t in range(2):
        o.step(_grads(o.params, t))
        flat.step(_grads(ps, t))
    assert o.optimizer.state["m"][0].dtype == np.int8
    assert o.optimizer.state["v"][0].dtype == np.uint8
    sd = o.state_dict()
    assert "precision" in sd and sd["m.0"].dtype == np.int8 and "m_absmax.0" in sd
    # one flat shard is one array: its blocks differ from the per-array ones, so compare
    # with float tolerance only (the same update, quantised in other blocks)
    for a, b in zip(o.params, flat.params):
        assert np.allclose(a, b, atol=2e-3)
    with pytest.raises(ValueError, match="master_weights"):
        ShardedOptimizer([p.copy() for p in ps], "adamw", MPI.COMM_SELF, lr=1e-2,
                         master_weights=True)
