"""The NumPy-API optimizers under hostile use: fixed params, transactional loading of every
corrupted field, bounded step counts, a checked clipping policy, and threads."""
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastopt
from fastopt import functional as F
from fastopt import _dispatch
from fastopt._validate import MAX_STEP

from conftest import snapshot
from optim_db import DB

CLASSES = {rule: rec.cls for rule, rec in DB.items()}
OPTIMIZERS = list(DB)
CPU = [b for b in ("cpp", "numba", "numpy") if not _dispatch.unavailable_reason(b)]


def arrays(seed=0, sizes=(5, 129, 1)):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for n in sizes]


def trained(rule="adam", steps=2, **kw):
    p = arrays()
    opt = CLASSES[rule](p, 0.01, **kw)
    for s in range(steps):
        opt.step(arrays(10 + s))
    return p, opt


def fingerprint(p, opt):
    sd = opt.state_dict()
    return snapshot(p), {k: (np.asarray(v).dtype.str, np.asarray(v).shape,
                             np.asarray(v).tobytes()) for k, v in sd.items()}


# -- params are fixed at construction ------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU)
def test_params_cannot_grow_under_the_optimizer(backend):
    """The issue's `o.params.append(x); o.step([g, g])` heap overflow: params is a tuple now,
    and even the private list, if changed, is refused by the kernel's own checks."""
    p = [np.zeros(4, np.float32)]
    o = fastopt.Adam(p, 0.1, backend=backend)
    assert isinstance(o.params, tuple) and o.params[0] is p[0]
    with pytest.raises(AttributeError):
        o.params.append(np.zeros(1 << 16, np.float32))
    big = np.zeros(1 << 16, np.float32)
    o._params.append(big)  # what a caller reaching into internals could still do
    before = snapshot(p + [big] + o.state["m"] + o.state["v"])
    with pytest.raises((TypeError, ValueError)):
        o.step([np.ones(4, np.float32), np.ones(1 << 16, np.float32)])
    assert snapshot(p + [big] + o.state["m"] + o.state["v"]) == before


@pytest.mark.parametrize("backend", CPU)
def test_replaced_state_array_is_refused(backend):
    p = [np.zeros(4, np.float32)]
    o = fastopt.Momentum(p, 0.1, backend=backend)
    o.state["v"][0] = np.zeros(2, np.float32)  # too short: the kernel would write past it
    with pytest.raises(ValueError):
        o.step([np.ones(4, np.float32)])
    assert np.all(p[0] == 0)


# -- transactional loading -------------------------------------------------------------------------

def corruptions(value, key="", rule=""):
    """Ways to spoil one state-dict value, each of which must be refused."""
    v = np.asarray(value)
    out = {"missing": None, "a string": np.array("x"), "an object": np.array(object(), object),
           "a ragged list": [[1.0], [1.0, 2.0]], "None": np.array(None)}
    if v.ndim == 0 and v.dtype.kind in "iu":  # the step count
        out.update({"negative": np.array(-1), "float": np.array(2.0), "NaN": np.array(np.nan),
                    "2**63-1": np.array(2**63 - 1), "beyond MAX_STEP": np.array(MAX_STEP + 1),
                    "1-d": np.array([2]), "bool": np.array(True), "uint64 max": np.uint64(2**64 - 1)})
    elif v.dtype.kind in "US":  # the rule name
        out.update({"another rule": np.array("sgd" if str(v) != "sgd" else "adam"),
                    "1-d": np.array([str(v)]), "an int": np.array(3)})
    else:  # a state array
        out.update({"float64": v.astype(np.float64), "shorter": v.reshape(-1)[:-1],
                    "longer": np.concatenate([v.reshape(-1), v.reshape(-1)]),
                    "2-d": v.reshape(1, -1), "0-d": np.array(v.reshape(-1)[0]),
                    "int": v.astype(np.int32), "empty": np.zeros(0, v.dtype)})
        if key.split(".")[0] in DB[rule].nonnegative:  # a sum or mean of squares
            out["negative second moment"] = -np.abs(v) - 1
    return out


@pytest.mark.parametrize("rule", OPTIMIZERS)
def test_every_corrupted_field_is_refused_and_changes_nothing(rule):
    p_src, src = trained(rule, steps=3)
    good = src.state_dict()
    p, opt = trained(rule, steps=1)
    twin_p, twin = trained(rule, steps=1)
    before = fingerprint(p, opt)
    tried = 0
    for key in list(good):
        for how, bad in corruptions(good[key], key, rule).items():
            sd = dict(good)
            if bad is None:
                del sd[key]
            else:
                sd[key] = bad
            with pytest.raises((TypeError, ValueError)) as e:
                opt.load_state_dict(sd)
            assert key in str(e.value) or "keys" in str(e.value), (key, how, e.value)
            assert fingerprint(p, opt) == before, (key, how)
            tried += 1
    for extra in ({**good, "m.99": good.get("m.0", np.zeros(5))}, {**good, 3: np.zeros(1)}):
        with pytest.raises(ValueError, match="unexpected"):
            opt.load_state_dict(extra)
    for not_a_dict in ([("step", 1)], "step", None, 3):
        with pytest.raises(TypeError, match="mapping"):
            opt.load_state_dict(not_a_dict)
    assert fingerprint(p, opt) == before and tried > 10
    # still usable, and exactly as if no load had been attempted
    g = arrays(99)
    opt.step(g)
    twin.step(g)
    assert fingerprint(p, opt) == fingerprint(twin_p, twin)
    opt.load_state_dict(good)  # and the good dict still loads
    assert opt.step_count == 3


def test_corrupted_monitor_or_policy_part_changes_nothing():
    """An optimizer with a monitor and an adaptive threshold: spoiling their keys leaves all
    three (optimizer, monitor, policy) as they were."""
    p, opt = trained("adamw", steps=4, max_grad_norm="auto", monitor=fastopt.GradNormMonitor())
    good = opt.state_dict()
    before = fingerprint(p, opt)
    sub = [k for k in good if k.startswith(("clip.", "monitor."))]
    assert sub
    for key in sub:
        for how, bad in {"a string": np.array("x"), "2-d": np.zeros((2, 2, 2)),
                         "missing": None}.items():
            sd = dict(good)
            if bad is None:
                del sd[key]
            else:
                sd[key] = bad
            with pytest.raises((TypeError, ValueError)):
                opt.load_state_dict({**sd, "step": np.array(9)})
            assert fingerprint(p, opt) == before, (key, how)


@settings(max_examples=60)
@given(rule=st.sampled_from(OPTIMIZERS), data=st.data())
def test_random_corruption_is_refused_whole(rule, data):
    p_src, src = trained(rule, steps=2)
    good = src.state_dict()
    p, opt = trained(rule, steps=1)
    before = fingerprint(p, opt)
    key = data.draw(st.sampled_from(sorted(good)))
    how = data.draw(st.sampled_from(sorted(corruptions(good[key], key, rule))))
    sd = dict(good)
    bad = corruptions(good[key], key, rule)[how]
    if bad is None:
        del sd[key]
    else:
        sd[key] = bad
    with pytest.raises((TypeError, ValueError)):
        opt.load_state_dict(sd)
    assert fingerprint(p, opt) == before


# -- bounded numbers ---------------------------------------------------------------------------------

def test_step_counts_are_bounded_everywhere():
    p, opt = trained("adam", steps=1)
    before = fingerprint(p, opt)
    for bad in (MAX_STEP + 1, 2**63, 10**400):
        with pytest.raises(ValueError, match="step_count"):
            opt.step_count = bad
        with pytest.raises(ValueError, match="step"):
            F.update("adam", p, arrays(1), F.init_state("adam", p), step=bad, lr=0.1)
    for bad in (-1,):
        with pytest.raises(ValueError, match="step_count"):
            opt.step_count = bad
    for bad in (1.5, "3", None, True):
        with pytest.raises(TypeError, match="step_count"):
            opt.step_count = bad
    assert fingerprint(p, opt) == before
    opt.step_count = MAX_STEP  # the largest count loads, steps and saves
    opt.step(arrays(3))
    assert int(opt.state_dict()["step"]) == MAX_STEP + 1


@pytest.mark.parametrize("bad", [10**400, -(10**400), float("nan"), float("inf"), -1.0])
def test_huge_or_non_finite_hyperparameters_name_the_argument(bad):
    p = arrays()
    for make, name in ((lambda: fastopt.Adam(p, bad), "lr"),
                       (lambda: fastopt.Adam(p, 0.1, beta1=bad), "beta1"),
                       (lambda: fastopt.AdamW(p, 0.1, weight_decay=bad), "weight_decay"),
                       (lambda: fastopt.SGD(p, 0.1, max_grad_norm=bad), "max_grad_norm"),
                       (lambda: F.update("sgd", p, arrays(1), {}, step=0, lr=bad), "lr"),
                       (lambda: F.update("sgd", p, arrays(1), {}, step=0, lr=0.1,
                                         grad_scale=bad), "grad_scale"),
                       (lambda: fastopt.global_norm(p) and fastopt.clip_by_global_norm(p, bad),
                        "max_norm")):
        with pytest.raises(ValueError, match=name):
            make()
    assert snapshot(p) == snapshot(arrays())


def test_schedule_returning_a_huge_int_writes_nothing():
    p = arrays()
    opt = fastopt.SGD(p, lambda t: 10**400)
    with pytest.raises(ValueError, match=r"lr\(0\)"):
        opt.step(arrays(1))
    assert snapshot(p) == snapshot(arrays()) and opt.step_count == 0


class Policy:
    """An AutoClip-style policy that answers whatever it is told to."""

    def __init__(self, value):
        self.value, self.seen = value, []

    def threshold(self):
        return self.value

    def update(self, norm):
        self.seen.append(norm)


@pytest.mark.parametrize("value,exc", [(-1.0, ValueError), (0.0, ValueError),
                                       (float("nan"), ValueError), (float("inf"), ValueError),
                                       (10**400, ValueError), ("1", TypeError),
                                       (True, TypeError)])
def test_policy_thresholds_are_checked_before_anything_is_written(value, exc):
    """A negative threshold would move params up the gradient, 0 would zero the update."""
    p = arrays()
    opt = fastopt.SGD(p, 0.1, max_grad_norm=Policy(value))
    with pytest.raises(exc, match="threshold"):
        opt.step(arrays(1))
    assert snapshot(p) == snapshot(arrays()) and opt.step_count == 0
    assert opt.max_grad_norm.seen == []


def test_a_policy_is_fed_even_with_nonfinite_ignore():
    """AutoClip needs the norms of its warm-up steps: with nonfinite='ignore' (no check of its
    own) the norm pass must still run while the policy has no threshold yet."""
    p = arrays()
    policy = Policy(None)
    opt = fastopt.SGD(p, 0.1, max_grad_norm=policy, nonfinite="ignore")
    opt.step(arrays(1))
    assert policy.seen == [pytest.approx(fastopt.global_norm(arrays(1)))]


def test_policy_none_means_no_clipping():
    p = arrays()
    q = [a.copy() for a in p]
    fastopt.SGD(p, 0.1, max_grad_norm=Policy(None)).step(arrays(1))
    fastopt.SGD(q, 0.1).step(arrays(1))
    assert snapshot(p) == snapshot(q)


# -- threads -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU)
def test_two_threads_two_optimizers_match_the_sequential_run(backend):
    sizes = (1 << 17, 1 << 16, 333)
    grads = [arrays(s, sizes) for s in range(20)]

    def run(p, opt):
        for g in grads:
            opt.step(g)

    seq = [arrays(1, sizes), arrays(2, sizes)]
    for p in seq:
        run(p, fastopt.AdamW(p, 0.01, backend=backend, max_grad_norm=1.0))
    par = [arrays(1, sizes), arrays(2, sizes)]
    opts = [fastopt.AdamW(p, 0.01, backend=backend, max_grad_norm=1.0) for p in par]
    threads = [threading.Thread(target=run, args=(p, o)) for p, o in zip(par, opts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [snapshot(p) for p in par] == [snapshot(p) for p in seq]
    assert [o.step_count for o in opts] == [20, 20]


def test_a_second_thread_stepping_the_same_optimizer_is_refused():
    """While one step runs (here: held inside the lr schedule), another thread's step raises
    a RuntimeError and changes nothing; the first step then completes normally."""
    inside, release = threading.Event(), threading.Event()

    def lr(t):
        if t == 0:
            inside.set()
            release.wait(10)
        return 0.1

    p = arrays()
    opt = fastopt.SGD(p, lr)
    first = threading.Thread(target=opt.step, args=(arrays(1),))
    first.start()
    assert inside.wait(10)
    errors = []
    for call in (lambda: opt.step(arrays(2)), lambda: opt.load_state_dict(opt.state_dict()),
                 opt.state_dict):
        try:
            call()
        except RuntimeError as e:
            errors.append(str(e))
    release.set()
    first.join()
    assert len(errors) == 3 and all("already running" in e for e in errors)
    q = arrays()
    fastopt.SGD(q, 0.1).step(arrays(1))
    assert opt.step_count == 1 and snapshot(p) == snapshot(q)


def test_many_threads_hammering_one_optimizer_never_corrupt_it():
    """Each step either runs whole or is refused: the count equals the steps that ran, and the
    params equal a sequential run of that many steps (the gradient is the same every time)."""
    p = [np.zeros(1 << 18, np.float32)]
    opt = fastopt.SGD(p, 0.5)
    g = [np.ones(1 << 18, np.float32)]
    ran = []

    def hammer():
        for _ in range(50):
            try:
                opt.step(g)
                ran.append(1)
            except RuntimeError:
                pass

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert opt.step_count == len(ran) > 0
    assert np.all(p[0] == np.float32(-0.5) * len(ran))


def test_copies_and_pickles_continue_independently():
    import copy
    import pickle

    p = arrays()
    opt = fastopt.AdamW(p, fastopt.schedules.warmup_cosine(0.1, 2, 10), max_grad_norm="auto",
                        monitor=fastopt.GradNormMonitor())
    opt.step(arrays(1))
    copies = [copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))]
    for o in [opt] + copies:
        o.step(arrays(2))
    assert all(snapshot(o.params) == snapshot(p) for o in copies)
    assert all(o.params[0] is not p[0] and o.step_count == 2 for o in copies)


def test_a_negative_second_moment_beyond_float32_is_refused_without_a_warning():
    """float64 state is checked for negative values through a float32 cast (the storage of
    16-bit and float32 optimizers); a value beyond float32's range must not warn on the way."""
    import warnings

    import fastopt

    p = [np.ones(5)]
    opt = fastopt.Adam(p, 1e-3)
    opt.step([np.full(5, 0.5)])
    sd = opt.state_dict()
    sd["v.0"] = np.full(5, -1e300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="negative"):
            opt.load_state_dict(sd)
