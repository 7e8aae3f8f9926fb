"""GradNormMonitor and AutoClip under hostile input: every argument checked, every state-dict
field validated before anything changes (a refused load leaves the object exactly as it was),
thresholds that are only ever None or a positive finite float, and plots that fail before
drawing."""
import copy
import math
import os
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastopt
from fastopt import AutoClip, GradNormMonitor

INT64_MAX = np.iinfo(np.int64).max


def lognormal(n, seed=0):
    return np.random.default_rng(seed).lognormal(0.0, 1.0, n)


# -- objects whose state dicts exercise every field -----------------------------------------------

def full_monitor(seed=0):
    """Every step held; NaN and inf steps, clipped steps, and a warning that fired."""
    m = GradNormMonitor(threshold=1.0, window=4)
    norms = lognormal(30, seed)
    norms[5], norms[11], norms[20:26] = math.nan, math.inf, 5.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for v in norms:
            m.record(v)
    return m


def thinned_monitor(seed=0):
    """max_history=8 after 100 steps: one step in 16 held, per-step thresholds."""
    m = GradNormMonitor(window=5, max_history=8, warn=False)
    norms = lognormal(100, seed)
    norms[0], norms[80] = math.nan, 9.0  # a held non-finite step; a held clipped one
    for i, v in enumerate(norms):
        m.record(v, threshold=1.0 + i / 50 if i % 3 else None)
    return m


def blank_like(m):
    """A monitor configured like ``m`` with another (short) history: the target of a load."""
    b = GradNormMonitor(window=m.window, max_history=m.max_history, warn=False)
    for v in (0.25, 3.0):
        b.record(v, threshold=2.0)
    return b


def autoclip(count):
    c = AutoClip(75, window=6, warmup=3)
    for v in lognormal(count, count):
        c.update(v)
    return c


MONITORS = {"full": full_monitor, "thinned": thinned_monitor}
CLIPS = {"partial": lambda: autoclip(4), "wrapped": lambda: autoclip(20)}


# -- "unchanged": state, repr and behaviour -------------------------------------------------------

def same_sd(a, b):
    """The same keys, and per key the same dtype, shape and bytes."""
    return a.keys() == b.keys() and all(
        np.asarray(a[k]).dtype == np.asarray(b[k]).dtype
        and np.asarray(a[k]).shape == np.asarray(b[k]).shape
        and np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)


def behaviour(obj, seed=99):
    """What ``obj`` does next: its reports and state after more input (on a copy)."""
    obj = copy.deepcopy(obj)
    out = []
    for v in lognormal(12, seed):
        if isinstance(obj, AutoClip):
            out.append(obj.threshold())
            obj.update(v)
        else:
            obj.record(v)
            out.append((obj.percentile(50), obj.fraction_clipped(recent=True)))
    return out, obj.state_dict()


def refuses(obj, sd, key, exc=(TypeError, ValueError)):
    """Loading ``sd`` into ``obj`` raises ``exc`` naming ``key`` and changes nothing."""
    before, text, then = obj.state_dict(), repr(obj), behaviour(obj)
    with pytest.raises(exc) as e:
        obj.load_state_dict(sd)
    assert type(e.value) in (TypeError, ValueError), type(e.value)
    assert repr(key) in str(e.value), f"{e.value} does not name {key!r}"
    assert same_sd(obj.state_dict(), before)
    assert repr(obj) == text
    out, sd_after = behaviour(obj)
    assert out == then[0] and same_sd(sd_after, then[1])
    return e.value


def corruptions(value, valid=()):
    """Wrong versions of one state-dict field, by kind, less the ``valid`` ones (each other is
    invalid for every field here: the test objects are set up so that -1 and 0 are out of
    range or inconsistent)."""
    v = np.asarray(value)
    out = {"str": np.array("1"), "None": None, "object": object(), "ragged": [[1.0], [1.0, 2.0]],
           "huge int": 2**70, "uint64 max": np.uint64(2**64 - 1), "bool": np.True_}
    if v.ndim == 0:
        out["1-d"] = v.reshape(1)
        if v.dtype.kind in "iu":
            out.update({"float dtype": v.astype(np.float64), "nan": np.float64(math.nan),
                        "-2**63": np.int64(-2**63), "int64 max": np.int64(INT64_MAX)})
            for x in (-1, 0):
                if x != v.item():
                    out[f"{x}"] = np.int64(x)
        else:
            out.update({"int dtype": np.int64(1), "-1": np.float64(-1.0), "0": np.float64(0.0),
                        "inf": np.float64(math.inf), "-inf": np.float64(-math.inf),
                        "longdouble": np.longdouble(1.0)})
    else:
        out.update({"0-d": v[0] if v.size else v.dtype.type(0), "2-d": v.reshape(1, -1),
                    "one more": np.concatenate([v, v[-1:]]), "str array": v.astype(str)})
        if v.size:
            out["one fewer"] = v[:-1]
        if v.dtype.kind == "f":
            out["int array"] = np.zeros(v.shape, np.int64)
            out["float32 array"] = v.astype(np.float32)
            bad = v.copy()
            bad[-1] = -1.0
            out["negative"] = bad
        elif v.dtype.kind == "b":
            out["float array"] = v.astype(np.float64)
        else:
            out["float array"] = v.astype(np.float64)
            bad = v.copy()
            bad[-1] += 1
            out["shifted"] = bad
    return {k: v for k, v in out.items() if k not in valid}


# -- GradNormMonitor: arguments -------------------------------------------------------------------

@pytest.mark.parametrize("kw, exc, pattern", [
    ({"threshold": 0}, ValueError, "threshold"), ({"threshold": -1.0}, ValueError, "threshold"),
    ({"threshold": math.nan}, ValueError, "threshold"),
    ({"threshold": math.inf}, ValueError, "threshold"),
    ({"threshold": "1"}, TypeError, "threshold"), ({"threshold": True}, TypeError, "threshold"),
    ({"threshold": 10**400}, ValueError, "threshold"),
    ({"window": 0}, ValueError, "window"), ({"window": 2.0}, TypeError, "window"),
    ({"window": True}, TypeError, "window"), ({"window": 2**63}, ValueError, "window"),
    ({"window": 2**70}, ValueError, "window"),
    ({"max_history": 1}, ValueError, "max_history"),
    ({"max_history": 2**64}, ValueError, "max_history"),
    ({"max_history": "8"}, TypeError, "max_history"),
    ({"warn_fraction": 1.0}, ValueError, "warn_fraction"),
    ({"warn_fraction": -0.1}, ValueError, "warn_fraction"),
    ({"warn_fraction": math.nan}, ValueError, "warn_fraction"),
    ({"warn": 1}, TypeError, "warn"), ({"warn": "no"}, TypeError, "warn"),
])
def test_monitor_arguments(kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        GradNormMonitor(**kw)


def test_huge_windows_and_histories_cost_nothing_until_used():
    """window and max_history are bounds, not allocations: 2**62 must not ask for 32 EiB."""
    m = GradNormMonitor(window=2**62, max_history=2**62, warn=False)
    a = AutoClip(window=2**62, warmup=2)
    for v in lognormal(300):
        m.record(v)
        a.update(v)
    assert m.percentile(90, recent=True) == np.percentile(lognormal(300), 90)
    assert a.threshold() == np.percentile(lognormal(300), 90)
    b = GradNormMonitor(window=2**62, max_history=2**62)
    b.load_state_dict(m.state_dict())
    assert same_sd(b.state_dict(), m.state_dict())


@pytest.mark.parametrize("args, kw, exc, pattern", [
    (("1.0",), {}, TypeError, "norm"), ((True,), {}, TypeError, "norm"),
    ((None,), {}, TypeError, "norm"), ((-1.0,), {}, ValueError, "norm"),
    ((-math.inf,), {}, ValueError, "norm"), ((10**400,), {}, ValueError, "norm"),
    ((np.array([1.0]),), {}, TypeError, "norm"),
    ((1.0,), {"clipped": 1}, TypeError, "clipped"),
    ((1.0,), {"clipped": "yes"}, TypeError, "clipped"),
    ((1.0,), {"threshold": 0.0}, ValueError, "threshold"),
    ((1.0,), {"threshold": -2.0}, ValueError, "threshold"),
    ((1.0,), {"threshold": math.nan}, ValueError, "threshold"),
    ((1.0,), {"threshold": "2"}, TypeError, "threshold"),
])
def test_record_arguments_refused_and_nothing_recorded(args, kw, exc, pattern):
    m = full_monitor()
    before = m.state_dict()
    with pytest.raises(exc, match=pattern):
        m.record(*args, **kw)
    assert same_sd(m.state_dict(), before)
    a = autoclip(5)
    if not kw:
        before = a.state_dict()
        with pytest.raises(exc, match=pattern):
            a.update(*args)
        assert same_sd(a.state_dict(), before)


def test_record_takes_nonfinite_and_numpy_norms():
    m = GradNormMonitor(threshold=1.0, warn=False)
    for v in (math.nan, math.inf, np.float32(2.0), np.int64(3), 0, np.float64(0.5)):
        m.record(v)
    assert m.count == 6 and m.nonfinite_count == 2 and m.clipped_count == 2
    assert m.percentile(50) == np.percentile([2.0, 3.0, 0.0, 0.5], 50)


@pytest.mark.parametrize("q, exc", [
    (-1, ValueError), (100.5, ValueError), (math.nan, ValueError), (math.inf, ValueError),
    ("50", TypeError), (True, TypeError), (None, TypeError), (10**400, ValueError),
    ([50, "x"], TypeError), ([50, math.nan], ValueError), ([], ValueError), (object(), TypeError),
    ([True, False], TypeError),
])
def test_percentile_q_refused(q, exc):
    m = full_monitor()
    with pytest.raises(exc, match="q"):
        m.percentile(q)
    with pytest.raises(exc, match="q"):
        m.suggested_threshold(q)


def test_report_flags_are_bools():
    m = full_monitor()
    with pytest.raises(TypeError, match="recent"):
        m.percentile(50, recent="no")
    with pytest.raises(TypeError, match="recent"):
        m.fraction_clipped(recent=1)


def test_settings_are_checked_or_read_only():
    m = full_monitor()
    before = m.state_dict()
    for name, bad, exc in (("threshold", -1.0, ValueError), ("threshold", "1", TypeError),
                           ("warn", 0, TypeError), ("warn_fraction", 2.0, ValueError)):
        with pytest.raises(exc, match=name):
            setattr(m, name, bad)
    for name in ("window", "max_history", "count", "clipped_count", "nonfinite_count"):
        with pytest.raises(AttributeError):
            setattr(m, name, 3)
    assert same_sd(m.state_dict(), before)
    m.threshold = None  # still settable to something valid
    m.threshold = 2
    assert m.threshold == 2.0
    a = AutoClip()
    for name in ("percentile", "window", "warmup"):
        with pytest.raises(AttributeError):
            setattr(a, name, 3)


def test_counts_stop_at_int64():
    """A state at the int64 limit loads; one more step is an error that records nothing
    (the count must stay storable in the state dict's int64)."""
    m = GradNormMonitor(window=1, max_history=2)
    sd = m.state_dict()
    sd.update(count=np.int64(INT64_MAX), stride=np.int64(2**62),
              steps=np.array([0, 2**62], np.int64), norms=np.array([1.0, 2.0]),
              clipped=np.zeros(2, bool), thresholds=np.full(2, math.nan),
              recent_norms=np.array([3.0]), recent_clipped=np.array([0.0]))
    m.load_state_dict(sd)
    assert m.count == INT64_MAX
    with pytest.raises(OverflowError, match="steps"):
        m.record(1.0)
    assert same_sd(m.state_dict(), sd)
    a = AutoClip(window=2, warmup=1)
    asd = dict(a.state_dict(), count=np.int64(INT64_MAX), norms=np.array([1.0, 2.0]))
    a.load_state_dict(asd)
    with pytest.raises(OverflowError, match="norms"):
        a.update(1.0)
    assert same_sd(a.state_dict(), asd)


# -- GradNormMonitor: loading ---------------------------------------------------------------------

def test_stride_zero_is_refused_before_it_can_divide():
    """The reported defect: stride=0 loaded, and the next record divided by zero."""
    m = full_monitor()
    sd = m.state_dict()
    target = blank_like(m)
    refuses(target, dict(sd, stride=np.int64(0)), "stride")
    target.record(1.0)  # still usable


@pytest.mark.parametrize("config", sorted(MONITORS))
def test_every_corrupted_monitor_field_is_refused_whole(config):
    good = MONITORS[config]().state_dict()
    target = blank_like(MONITORS[config]())
    for key in good:
        for how, bad in corruptions(good[key]).items():
            try:
                refuses(target, dict(good, **{key: bad}), key)
            except BaseException as e:
                raise AssertionError(f"{config}: {key} <- {how}: {e!r}") from e
    target.load_state_dict(good)  # and the untouched dict still loads
    assert same_sd(target.state_dict(), good)


def _set(a, i, v):
    a = np.array(a)
    a[i] = v
    return a


def _inconsistent(name, sd):
    """Fields each valid alone that disagree with the others: (key to be named, dict)."""
    n, c, st_, w = sd["norms"].size, int(sd["count"]), int(sd["stride"]), int(sd["window"])
    cases = [
        ("stride", dict(sd, stride=np.int64(3))),
        ("stride", dict(sd, stride=np.int64(st_ * 2))),
        ("steps", dict(sd, steps=sd["steps"][::-1].copy())),
        ("count", dict(sd, count=np.int64(c + 1))),
        ("clipped_count", dict(sd, clipped_count=np.int64(c))),
        ("nonfinite_count", dict(sd, nonfinite_count=np.int64(c))),
        ("nonfinite_count", dict(sd, nonfinite_count=np.int64(0))),
        ("last_warned", dict(sd, last_warned=np.int64(c))),
        ("last_warned", dict(sd, last_warned=np.int64(w - 2))),
        ("thresholds", dict(sd, thresholds=_set(sd["thresholds"], 0, math.inf))),
        ("thresholds", dict(sd, thresholds=_set(sd["thresholds"], 0, 0.0))),
        ("norms", dict(sd, norms=_set(sd["norms"], n - 1, -math.inf))),
        ("clipped", dict(sd, clipped=_set(sd["clipped"], int(np.flatnonzero(
            ~np.isfinite(sd["norms"]))[0]), True))),
        ("recent_clipped", dict(sd, recent_clipped=_set(sd["recent_clipped"], 0, 0.5))),
        ("recent_clipped", dict(sd, recent_clipped=_set(sd["recent_clipped"], 0, 2.0))),
        ("recent_norms", dict(sd, recent_norms=_set(sd["recent_norms"], -1, -1.0))),
        ("max_history", dict(sd, max_history=np.int64(64))),
        ("window", dict(sd, window=np.int64(w + 1))),
    ]
    # the last held step is also in the recent window: the two copies must agree
    cases.append(("recent_norms", dict(sd, recent_norms=_set(
        sd["recent_norms"], int(sd["steps"][-1]) - (c - sd["recent_norms"].size), 0.125))))
    if name == "full":  # all steps held: the counts are exact
        cases.append(("clipped_count", dict(sd, clipped_count=np.int64(sd["clipped"].sum() - 1))))
        cases.append(("clipped", dict(sd, clipped=_set(sd["clipped"], 0, not sd["clipped"][0]))))
    else:
        cases.append(("stride", dict(sd, stride=np.int64(1))))
        cases.append(("stride", dict(sd, stride=np.int64(st_ * 4),
                                     steps=np.arange(0, c, st_ * 4))))
    return cases


@pytest.mark.parametrize("config", sorted(MONITORS))
def test_inconsistent_monitor_fields_are_refused(config):
    good = MONITORS[config]().state_dict()
    target = blank_like(MONITORS[config]())
    for key, sd in _inconsistent(config, good):
        try:
            refuses(target, sd, key)
        except BaseException as e:
            raise AssertionError(f"{config}: {key}: {e!r}") from e


def test_monitor_keys_and_mapping():
    good = full_monitor().state_dict()
    target = blank_like(full_monitor())
    for key in good:
        refuses(target, {k: v for k, v in good.items() if k != key}, key)
    refuses(target, dict(good, extra=np.int64(1)), "extra")
    e = refuses(target, {**good, 3: np.int64(1)}, 3)
    assert "unexpected" in str(e)
    for bad in (None, [("count", 1)], "count"):
        with pytest.raises(TypeError, match="mapping"):
            target.load_state_dict(bad)


def test_a_state_dict_array_is_copied_not_kept():
    a = full_monitor()
    sd = a.state_dict()
    b = blank_like(a)
    b.load_state_dict(sd)
    for v in sd.values():
        if isinstance(v, np.ndarray):
            v[...] = 0
    assert same_sd(b.state_dict(), a.state_dict())


# -- AutoClip -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, exc, pattern", [
    ({"percentile": 0}, ValueError, "percentile"), ({"percentile": -5}, ValueError, "percentile"),
    ({"percentile": 100.01}, ValueError, "percentile"),
    ({"percentile": math.nan}, ValueError, "percentile"),
    ({"percentile": "90"}, TypeError, "percentile"), ({"percentile": True}, TypeError,
                                                      "percentile"),
    ({"percentile": 10**400}, ValueError, "percentile"),
    ({"window": 0}, ValueError, "window"), ({"window": -3}, ValueError, "window"),
    ({"window": 2**63}, ValueError, "window"), ({"window": 10.0}, TypeError, "window"),
    ({"warmup": 0}, ValueError, "warmup"), ({"warmup": 2**70}, ValueError, "warmup"),
    ({"warmup": None}, TypeError, "warmup"), ({"warmup": 11, "window": 10}, ValueError, "warmup"),
])
def test_autoclip_arguments(kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        AutoClip(**kw)


def test_autoclip_threshold_is_none_or_positive_finite():
    """All-zero recent norms give a 0th..pth percentile of 0: a threshold of 0 would zero every
    update, so there is no clipping (None) until a positive percentile appears."""
    c = AutoClip(50, window=4, warmup=2)
    for _ in range(3):
        c.update(0.0)
        assert c.threshold() is None or c.threshold() > 0
    assert c.threshold() is None
    c.update(0.0)
    c.update(8.0)
    c.update(8.0)
    assert c.threshold() == 4.0
    p = [np.zeros(3)]
    opt = fastopt.SGD(p, 1.0, max_grad_norm=AutoClip(50, window=4, warmup=2))
    for _ in range(3):
        opt.step([np.zeros(3)])
    opt.step([np.ones(3)])  # a zero threshold would have zeroed (or refused) this step
    np.testing.assert_array_equal(p[0], -np.ones(3))


@pytest.mark.parametrize("config", sorted(CLIPS))
def test_every_corrupted_autoclip_field_is_refused_whole(config):
    good = CLIPS[config]().state_dict()
    target = autoclip(2)
    wrapped = good["count"] >= good["window"]
    for key in good:
        valid = ("int64 max",) if key == "count" and wrapped else ()  # a longer run, as valid
        for how, bad in corruptions(good[key], valid).items():
            try:
                refuses(target, dict(good, **{key: bad}), key)
            except BaseException as e:
                raise AssertionError(f"{config}: {key} <- {how}: {e!r}") from e
    for key, sd in (("norms", dict(good, norms=_set(good["norms"], 0, math.nan))),
                    ("norms", dict(good, norms=_set(good["norms"], 0, math.inf))),
                    ("percentile", dict(good, percentile=np.float64(80))),
                    ("window", dict(good, window=np.int64(7))),
                    ("warmup", dict(good, warmup=np.int64(4))),
                    ("count", dict(good, count=np.int64(good["count"] + 1)))):
        if key == "count" and wrapped:
            continue  # a full window: any larger count is consistent
        refuses(target, sd, key)
    for key in good:
        refuses(target, {k: v for k, v in good.items() if k != key}, key)
    refuses(target, dict(good, bogus=1), "bogus")
    target.load_state_dict(good)
    assert same_sd(target.state_dict(), good)


def test_negative_norms_in_a_state_dict_cannot_make_a_negative_threshold():
    """The reported defect: loaded negative norms gave a negative threshold, which moves the
    params up the gradient."""
    c = AutoClip(90, window=5, warmup=2)
    sd = dict(c.state_dict(), count=np.int64(2), norms=np.array([-1.0, -2.0]))
    refuses(c, sd, "norms")
    assert c.threshold() is None


# -- the plot -------------------------------------------------------------------------------------

class _NoDrawing:
    def __init__(self, *a, **k):
        raise AssertionError("drawing started before the path was checked")


@pytest.fixture
def no_drawing(monkeypatch):
    mpl = pytest.importorskip("matplotlib.figure")
    monkeypatch.setattr(mpl, "Figure", _NoDrawing)


@pytest.mark.parametrize("where, exc", [
    ("missing/dir/x.png", FileNotFoundError), ("afile/x.png", NotADirectoryError),
    (".", IsADirectoryError)])
def test_plot_into_a_bad_path_fails_before_drawing(tmp_path, no_drawing, where, exc):
    (tmp_path / "afile").write_text("")
    m = full_monitor()
    with pytest.raises(exc, match="path"):
        m.plot(tmp_path / where)
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_plot_into_an_unwritable_place_fails_before_drawing(no_drawing):
    target = "/proc/fastopt-plot-test.png"  # not writable even by root
    with pytest.raises(OSError, match="path"):
        full_monitor().plot(target)


@pytest.mark.parametrize("kw, exc", [({"q": 101}, ValueError), ({"q": "90"}, TypeError),
                                     ({"title": 3}, TypeError)])
def test_plot_arguments_fail_before_drawing(tmp_path, no_drawing, kw, exc):
    with pytest.raises(exc):
        full_monitor().plot(tmp_path / "x.png", **kw)
    with pytest.raises(TypeError, match="path"):
        full_monitor().plot(3)
    assert not os.listdir(tmp_path)


def test_plot_failing_midway_leaves_no_file(tmp_path, monkeypatch):
    mpl = pytest.importorskip("matplotlib.figure")

    class Broken(mpl.Figure):
        def savefig(self, *a, **k):
            raise RuntimeError("disk on fire")

    monkeypatch.setattr(mpl, "Figure", Broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        full_monitor().plot(tmp_path / "x.png")
    assert not os.listdir(tmp_path)


def test_plot_without_matplotlib_fails_first(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="matplotlib"):
        full_monitor().plot(tmp_path / "x.png")
    assert not os.listdir(tmp_path)


# -- properties -----------------------------------------------------------------------------------

def _corrupt_value(draw, value):
    """A random replacement for one field: a perturbation of it, or anything at all."""
    v = np.asarray(value)
    anything = st.one_of(
        st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=3), st.booleans(), st.none(),
        st.lists(st.floats(-10, 10), max_size=4).map(np.array),
        st.lists(st.integers(-5, 200), max_size=4).map(lambda x: np.array(x, np.int64)))
    if v.ndim == 1 and v.size and draw(st.booleans()):
        out = v.copy()
        i = draw(st.integers(0, v.size - 1))
        if v.dtype.kind == "f":
            out[i] = draw(st.floats(allow_nan=True, allow_infinity=True))
        elif v.dtype.kind == "b":
            out[i] = not out[i]
        else:
            out[i] = draw(st.integers(-2**63, INT64_MAX))
        return out
    if v.ndim == 0 and v.dtype.kind in "iu" and draw(st.booleans()):
        return np.int64(v.item() + draw(st.integers(-3, 3)))
    return draw(anything)


def _check_random_corruption(obj, good, data):
    key = data.draw(st.sampled_from(sorted(good)))
    bad = dict(good, **{key: _corrupt_value(data.draw, good[key])})
    before, then = obj.state_dict(), behaviour(obj)
    try:
        obj.load_state_dict(bad)
    except (TypeError, ValueError) as e:
        assert repr(key) in str(e), (key, str(e))
        assert same_sd(obj.state_dict(), before)
        out, sd = behaviour(obj)
        assert out == then[0] and same_sd(sd, then[1])
    else:  # a corruption that happens to be a valid state: it is held exactly and usable
        assert same_sd(obj.state_dict(), {k: np.asarray(v) for k, v in bad.items()})
        behaviour(obj)


@given(config=st.sampled_from(sorted(MONITORS)), data=st.data())
def test_random_monitor_corruptions(config, data):
    src = MONITORS[config]()
    _check_random_corruption(blank_like(src), src.state_dict(), data)


@given(config=st.sampled_from(sorted(CLIPS)), data=st.data())
def test_random_autoclip_corruptions(config, data):
    _check_random_corruption(autoclip(2), CLIPS[config]().state_dict(), data)


norms_st = st.lists(st.one_of(st.floats(0, 1e300), st.sampled_from([math.nan, math.inf, 0.0])),
                    min_size=1, max_size=300)


@given(norms=norms_st, window=st.integers(1, 40), max_history=st.one_of(
    st.none(), st.integers(2, 50)), q=st.floats(0, 100))
def test_percentiles_match_numpy_and_states_round_trip(norms, window, max_history, q):
    m = GradNormMonitor(window=window, max_history=max_history, warn=False)
    for v in norms:
        m.record(v)
    a = np.array(norms)
    held = a if max_history is None else a[m.steps]
    assert np.array_equal(m.norms, held, equal_nan=True)
    fin, recent = held[np.isfinite(held)], a[-window:][np.isfinite(a[-window:])]
    if fin.size:
        assert m.percentile(q) == np.percentile(fin, q)
    if recent.size:
        assert m.percentile(q, recent=True) == np.percentile(recent, q)
    b = GradNormMonitor(window=window, max_history=max_history)
    b.load_state_dict(m.state_dict())  # every reachable state is a loadable one
    assert same_sd(b.state_dict(), m.state_dict())


@given(norms=norms_st, window=st.integers(1, 40), p=st.floats(0, 100, exclude_min=True),
       warmup=st.integers(1, 40))
def test_autoclip_threshold_matches_numpy(norms, window, p, warmup):
    warmup = min(warmup, window)
    c = AutoClip(p, window=window, warmup=warmup)
    seen = []
    for v in norms:
        t = c.threshold()
        if len(seen) < warmup:
            assert t is None
        else:
            want = np.percentile(seen[-window:], p)
            assert t == (want if want > 0 else None)
        assert t is None or (isinstance(t, float) and 0 < t < math.inf)
        c.update(v)
        if math.isfinite(v):
            seen.append(v)
    d = AutoClip(p, window=window, warmup=warmup)
    d.load_state_dict(c.state_dict())
    assert same_sd(d.state_dict(), c.state_dict()) and d.threshold() == c.threshold()
