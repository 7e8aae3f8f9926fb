"""fastopt.distributed under hostile input, on one process (``MPI.COMM_SELF``): flatten,
FlatParams and shard_bounds check their arguments; ShardedOptimizer refuses bad settings and
gradients whole, and loads a state dict transactionally: every corrupted field is refused with
the object byte-identical. The many-rank versions are in tests/mpi_workers/checks.py."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastopt
from optim_db import DB
from test_monitor_trust import _corrupt_value, corruptions, same_sd

MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed (pip install '.[mpi]')")
from fastopt import distributed as D  # noqa: E402

COMM = MPI.COMM_SELF
SHAPES = [(3,), (2, 5), (1,), (17,)]


def model(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def sharded(steps=3, **kw):
    kw = {"lr": 1e-2, "max_grad_norm": fastopt.AutoClip(80, window=4, warmup=2),
          "monitor": fastopt.GradNormMonitor(window=3, warn=False), **kw}
    sh = D.ShardedOptimizer(model(), "adam", COMM, **kw)
    for t in range(steps):
        sh.step(model(seed=10 + t))
    return sh


def fingerprint(sh):
    return sh.flat.buffer.tobytes(), sh.state_dict(), repr(sh), sh.step_count


def same(a, b):
    return a[0] == b[0] and same_sd(a[1], b[1]) and a[2:] == b[2:]


def unchanged(sh, twin, before):
    """``sh`` is as ``before`` and still behaves as ``twin`` (loaded with the same state)."""
    assert same(fingerprint(sh), before)
    for t in range(2):
        g = model(seed=50 + t)
        assert sh.step(g) == twin.step(g)
    assert same(fingerprint(sh), fingerprint(twin))


def twin_of(good):
    twin = sharded(0)
    twin.load_state_dict(good)
    return twin


def names(key, err):
    """The message names the key: as such, or a policy's or monitor's own key for 'clip.*' or
    'monitor.*' (they load their part of the dict themselves), or, for the local optimizer's
    own keys, at least mentions it."""
    text = str(err)
    if key.startswith(("clip.", "monitor.")) and repr(key.split(".", 1)[1]) in text:
        return True
    return repr(key) in text or (not key.startswith("shard.") and key in text)


# -- flatten, FlatParams, shard_bounds -------------------------------------------------------------

@pytest.mark.parametrize("args, exc, pattern", [
    ((-1, 2), ValueError, "numel"), ((1.5, 2), TypeError, "numel"), (("10", 2), TypeError, "numel"),
    ((True, 2), TypeError, "numel"), ((2**63, 2), ValueError, "numel"),
    ((10, 0), ValueError, "world_size"), ((10, "2"), TypeError, "world_size"),
    ((10, 2.0), TypeError, "world_size"), ((10, 2**40), ValueError, "world_size"),
    ((10, 2, 0), ValueError, "itemsize"), ((10, 2, 3), ValueError, "itemsize"),
    ((10, 2, -4), ValueError, "itemsize"), ((10, 2, 128), ValueError, "itemsize"),
    ((10, 2, "4"), TypeError, "itemsize"),
])
def test_shard_bounds_arguments(args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        D.shard_bounds(*args)


@pytest.mark.parametrize("numel", [2**62, 2**63 - 1, 10**18 + 7])
@pytest.mark.parametrize("world", [3, 7, 1000])
def test_shard_bounds_do_not_overflow(numel, world):
    """r * numel overflowed int64 for large buffers: bounds went negative."""
    b = D.shard_bounds(numel, world, 8)
    want = [r * numel // world // 8 * 8 for r in range(world)] + [numel]
    assert b.dtype == np.int64 and b.tolist() == want


@pytest.mark.parametrize("buffer, shapes, exc, pattern", [
    ([0.0] * 4, [(4,)], TypeError, "buffer"),
    (np.zeros((2, 2)), [(4,)], ValueError, "buffer"),
    (np.zeros(8)[::2], [(4,)], ValueError, "buffer"),
    (np.zeros(4, np.int32), [(4,)], TypeError, "buffer"),
    (np.zeros(4, np.float16), [(4,)], TypeError, "buffer"),
    (np.zeros(10), [(3,)], ValueError, "cover"),
    (np.zeros(2), [(3,)], ValueError, "cover"),
    (np.zeros(4), [(-2, -2)], ValueError, "shapes"),
    (np.zeros(4), [(2.0, 2)], TypeError, "shapes"),
    (np.zeros(4), "4", TypeError, "shapes"),
    (np.zeros(4), [4], TypeError, "shapes"),
])
def test_flat_params_arguments(buffer, shapes, exc, pattern):
    with pytest.raises(exc, match=pattern):
        D.FlatParams(buffer, shapes)


@pytest.mark.parametrize("arrays, kw, exc, pattern", [
    ([np.ones(3)], {"dtype": "banana"}, TypeError, "dtype"),
    ([np.ones(3)], {"dtype": np.int32}, TypeError, "dtype"),
    ([np.ma.masked_array(np.ones(3), [0, 1, 0])], {}, TypeError, "masked"),
    ([np.ones(3), None], {}, TypeError, r"arrays\[1\]"),
    (iter([np.ones(3)]), {}, TypeError, "arrays"),
])
def test_flatten_arguments(arrays, kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        D.flatten(arrays, **kw)


# -- construction and steps ------------------------------------------------------------------------

@pytest.mark.parametrize("args, kw, exc, pattern", [
    (("adam", COMM), {"average": 1}, TypeError, "average"),
    (("adam", COMM), {"reduction": np.array("mpi")}, TypeError, "reduction"),
    (("adam", COMM), {"reduction": "MPI"}, ValueError, "reduction"),
    (("adam", COMM), {"params": []}, TypeError, "params"),
    (("adam", COMM), {"foo": 1}, TypeError, "foo"),
    (("adam", COMM), {"lr": -1.0}, ValueError, "lr"),
    (("adam", COMM), {"monitor": "yes"}, TypeError, "monitor"),
    (("adamax", COMM), {}, ValueError, "optimizer"),
    ((b"adam", COMM), {}, TypeError, "optimizer"),
    ((fastopt.Optimizer, COMM), {}, TypeError, "optimizer"),
    ((int, COMM), {}, TypeError, "optimizer"),
    (("adam", "COMM_WORLD"), {}, TypeError, "comm"),
])
def test_construction_refused(args, kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        D.ShardedOptimizer(model(), *args, **kw)


@pytest.mark.parametrize("rule,row", [pytest.param(rec.name, e, id=f"{rec.name}-{e.id}")
                                      for rec in DB.values() for e in rec.errors])
def test_error_rows_refused(rule, row):
    """Every error row of the optimizer database, by name and by class: the row's exception
    and message (the sharded optimizer passes the local optimizer's errors on as they are),
    and the caller's arrays untouched."""
    for optimizer in (rule, DB[rule].cls):
        arrays = model()
        before = [a.tobytes() for a in arrays]
        with pytest.raises(row.exc, match=row.match):
            D.ShardedOptimizer(arrays, optimizer, COMM, **{"lr": DB[rule].lr, **row.kwargs})
        assert [a.tobytes() for a in arrays] == before


@pytest.mark.parametrize("rule", list(DB))
def test_every_rule_and_row_steps_as_the_local_optimizer(rule):
    """On one process the sharded optimizer is the local one on the flat buffer: the same
    bits, for every hyperparameter row of every rule."""
    for row in DB[rule].rows:
        sh = D.ShardedOptimizer(model(), rule, COMM, lr=DB[rule].lr, **row)
        flat = np.concatenate([a.ravel() for a in model()])
        ref = DB[rule].cls([flat], lr=DB[rule].lr, **row)
        for t in range(3):
            g = model(seed=20 + t)
            assert sh.step(g) == ref.step([np.concatenate([a.ravel() for a in g])])
        assert sh.flat.buffer.tobytes() == flat.tobytes(), row
        assert all(sh.optimizer.state[k][0].tobytes() == ref.state[k][0].tobytes()
                   for k in ref.state), row


def test_a_flat_params_must_cover_its_buffer():
    """FlatParams(zeros(10), [(3,)]) used to be taken: the 7 uncovered elements got
    uninitialised memory as their gradient."""
    buf = np.zeros(10)
    with pytest.raises(ValueError, match="cover"):
        D.ShardedOptimizer(D.FlatParams(buf, [(3,)]), "sgd", COMM, lr=1.0)
    assert not buf.any()


def bad_grads(sh):
    g = model(seed=7)
    flat = np.concatenate([x.ravel() for x in g])
    yield "too few", g[:-1]
    yield "float32", [x.astype(np.float32) for x in g]
    yield "shape", [g[0], g[1].T.copy(), g[2], g[3]]
    yield "non-contiguous", [g[0], np.ones((2, 10))[:, ::2], g[2], g[3]]
    yield "flat float32", flat.astype(np.float32)
    yield "flat 2-d", flat.reshape(1, -1)
    yield "flat too long", np.concatenate([flat, [1.0]])
    yield "other layout", D.flatten([g[3], g[0], g[1], g[2]])  # same size, other order
    yield "None", None
    yield "string", "grads"
    yield "nan list", [np.array([math.nan, 1, 2])] + g[1:]  # valid: skipped, nothing changes


def test_bad_grads_change_nothing():
    sh = sharded()
    for how, g in bad_grads(sh):
        before = fingerprint(sh)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                r = sh.step(g)
            except (TypeError, ValueError) as e:
                assert "grads" in str(e), (how, e)
            else:
                assert how == "nan list" and r.skipped
        assert same(fingerprint(sh), before) or how == "nan list", how
        assert sh.flat.buffer.tobytes() == before[0], how


@pytest.mark.parametrize("g, exc, pattern", [
    (np.zeros(3), ValueError, "shard has"), (np.zeros((1, 31)), TypeError, "1-D"),
    (np.zeros(31, np.float32), TypeError, "dtype"), (np.zeros(62)[::2], ValueError, "contiguous"),
    ([np.zeros(31)], TypeError, "1-D"),
])
def test_bad_sharded_grads_change_nothing(g, exc, pattern):
    sh = sharded()
    assert sh.shard.size == 31
    before = fingerprint(sh)
    with pytest.raises(exc, match=pattern):
        sh.step(g, sharded=True)
    assert same(fingerprint(sh), before)


def test_flags_are_bools():
    sh = sharded(0)
    with pytest.raises(TypeError, match="sharded"):
        sh.step(model(), sharded="no")
    with pytest.raises(TypeError, match="sharded"):
        sh.comm_bytes(sharded=1)


def test_a_failing_schedule_is_caught_before_the_exchange():
    """An lr that fails at step t fails before any collective, so no rank can be left waiting
    in the all-gather (nonfinite='ignore' without clipping has no norm pass to carry it)."""
    sh = D.ShardedOptimizer(model(), "sgd", COMM, lr=lambda t: 0.1 if t < 1 else -1.0,
                            nonfinite="ignore")
    sh.step(model(seed=1))
    before = fingerprint(sh)
    with pytest.raises(ValueError, match=r"lr\(1\)"):
        sh.step(model(seed=2))
    assert same(fingerprint(sh), before)


# -- loading ---------------------------------------------------------------------------------------

def test_every_corrupted_field_is_refused_whole():
    sh = sharded()
    good = sh.state_dict()
    target = sharded(1)
    twin = sharded(1)
    for key in good:
        valid = {"step": ("0",), "m.0": ("negative",), "v.0": ("negative",)}.get(key, ())
        for how, bad in corruptions(good[key], valid).items():
            before = fingerprint(target)
            with pytest.raises((TypeError, ValueError)) as e:
                target.load_state_dict(dict(good, **{key: bad}))
            assert type(e.value) in (TypeError, ValueError), (key, how, e.value)
            assert names(key, e.value), (key, how, str(e.value))
            assert same(fingerprint(target), before), (key, how)
    for key in good:  # missing keys
        with pytest.raises(ValueError) as e:
            target.load_state_dict({k: v for k, v in good.items() if k != key})
        assert key in str(e.value) or names(key, e.value)
    with pytest.raises(ValueError, match="shard.extra"):
        target.load_state_dict(dict(good, **{"shard.extra": np.int64(0)}))
    with pytest.raises(TypeError, match="mapping"):
        target.load_state_dict([("step", 1)])
    unchanged(target, twin, fingerprint(twin))
    target.load_state_dict(good)
    assert same_sd(target.state_dict(), good)


@pytest.mark.parametrize("key, value, pattern", [
    ("shard.world_size", np.array("1"), "shard.world_size"),
    ("shard.world_size", np.array(1.7), "shard.world_size"),
    ("shard.world_size", np.array(np.nan), "shard.world_size"),
    ("shard.world_size", np.array(2), "Re-sharding is not supported"),
    ("shard.rank", np.array([0]), "shard.rank"),
    ("shard.rank", np.array(1), "shard.rank"),
    ("shard.numel", np.array(30), "shard.numel"),
    ("shard.bounds", np.array([0, 30]), "shard.bounds"),
    ("shard.bounds", np.array([0.0, 31.0]), "shard.bounds"),
    ("shard.bounds", np.array([[0, 31]]), "shard.bounds"),
])
def test_shard_fields_refused(key, value, pattern):
    good = sharded().state_dict()
    target, twin = sharded(1), sharded(1)
    before = fingerprint(target)
    with pytest.raises((TypeError, ValueError), match=pattern):
        target.load_state_dict(dict(good, **{key: value}))
    unchanged(target, twin, before)


@given(data=st.data())
def test_random_corruptions_are_refused_whole(data):
    good = SHARDED_GOOD
    key = data.draw(st.sampled_from(sorted(good)))
    bad = dict(good, **{key: _corrupt_value(data.draw, good[key])})
    target = sharded(1)
    before = fingerprint(target)
    try:
        target.load_state_dict(bad)
    except (TypeError, ValueError) as e:
        assert names(key, e), (key, str(e))
        assert same(fingerprint(target), before)
        unchanged(target, sharded(1), before)
    else:  # a corruption that is a valid state: held exactly
        assert same_sd(target.state_dict(), {k: np.asarray(v) for k, v in bad.items()})


SHARDED_GOOD = sharded().state_dict()
