"""GradNormMonitor and AutoClip: the source document's clipping recipe, checked against NumPy."""
import math
import sys
import warnings

import numpy as np
import pytest

import fastopt
from fastopt import AutoClip, ClippingWarning, GradNormMonitor


def lognormal(n, seed=0):
    return np.random.default_rng(seed).lognormal(0.0, 1.0, n)


def feed(m, norms, **kw):
    for v in norms:
        m.record(v, **kw)


def same_sd(a, b):
    return a.keys() == b.keys() and all(
        np.asarray(a[k]).dtype == np.asarray(b[k]).dtype
        and np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)


# -- percentiles and fractions -------------------------------------------------------------------

def test_percentiles_match_numpy():
    norms = lognormal(1000)
    m = GradNormMonitor(window=50)
    feed(m, norms)
    for q in (0, 10, 50, 90, 99.5, 100):
        assert m.percentile(q) == np.percentile(norms, q)
    np.testing.assert_array_equal(m.percentile([25, 75]), np.percentile(norms, [25, 75]))
    assert m.suggested_threshold() == np.percentile(norms, 90)
    assert m.suggested_threshold(q=95) == np.percentile(norms, 95)
    assert m.percentile(90, recent=True) == np.percentile(norms[-50:], 90)
    np.testing.assert_array_equal(m.norms, norms)
    np.testing.assert_array_equal(m.steps, np.arange(1000))
    s = m.summary()
    assert s["steps"] == 1000 and s["p90"] == np.percentile(norms, 90)


def test_nonfinite_norms_are_counted_not_averaged():
    m = GradNormMonitor(threshold=1.0)
    feed(m, [0.5, math.nan, 2.0, math.inf, 3.0])
    assert m.count == 5 and m.nonfinite_count == 2 and m.clipped_count == 2
    assert m.percentile(50) == 2.0  # over the finite norms only
    assert m.fraction_clipped() == 2 / 3
    with pytest.raises(ValueError, match="no finite"):
        GradNormMonitor().percentile(50)


def test_fraction_clipped_by_threshold_or_flag():
    norms = lognormal(400, 1)
    m = GradNormMonitor(threshold=1.5, window=100, warn=False)
    feed(m, norms)
    assert m.fraction_clipped() == np.mean(norms > 1.5)
    assert m.fraction_clipped(recent=True) == np.mean(norms[-100:] > 1.5)
    np.testing.assert_array_equal(m.clipped, norms > 1.5)
    m2 = GradNormMonitor(warn=False)
    for i, v in enumerate(norms):
        m2.record(v, clipped=bool(i % 4 == 0))
    assert m2.fraction_clipped() == 0.25


# -- the warning --------------------------------------------------------------------------------

def test_warns_when_more_than_half_of_recent_steps_clip():
    m = GradNormMonitor(threshold=1.0, window=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feed(m, [2.0, 0.5] * 5)  # exactly half: no warning
        feed(m, [0.5] * 10)
    with pytest.warns(ClippingWarning, match=r"60% of the last 10 steps"):
        feed(m, [2.0] * 6)
    with warnings.catch_warnings(record=True) as w:  # at most once per window
        warnings.simplefilter("always")
        feed(m, [2.0] * 9)
    assert not [x for x in w if issubclass(x.category, ClippingWarning)]
    with pytest.warns(ClippingWarning):
        feed(m, [2.0])
    quiet = GradNormMonitor(threshold=1.0, window=10, warn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feed(quiet, [2.0] * 50)


def test_warning_comes_from_an_optimizer_too():
    m = GradNormMonitor(window=5)
    opt = fastopt.SGD([np.zeros(10)], 0.1, max_grad_norm=1e-3, monitor=m)
    with pytest.warns(ClippingWarning, match="lower learning rate"):
        for _ in range(5):
            opt.step([np.ones(10)])


# -- bounded memory -------------------------------------------------------------------------------

def test_bounded_history_keeps_an_even_sample_and_exact_counts():
    norms = lognormal(10_000, 2)
    m = GradNormMonitor(threshold=2.0, max_history=64, warn=False)
    feed(m, norms)
    steps = m.steps
    assert 32 <= steps.size <= 64 and steps[0] == 0
    stride = steps[1] - steps[0]
    assert np.all(np.diff(steps) == stride) and stride & (stride - 1) == 0  # a power of two
    np.testing.assert_array_equal(m.norms, norms[steps])
    assert m.count == 10_000 and m.clipped_count == int(np.sum(norms > 2.0))
    assert m.percentile(90) == np.percentile(norms[steps], 90)
    assert m.percentile(50, recent=True) == np.percentile(norms[-m.window:], 50)


# -- the plot -------------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image
    m = GradNormMonitor(threshold=3.0, warn=False)
    feed(m, lognormal(300, 3))
    m.record(math.nan)
    out = m.plot(tmp_path / "norms.png")
    data = (tmp_path / "norms.png").read_bytes()
    assert data[:8] == PNG and len(data) > 5000
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300
    auto = GradNormMonitor(warn=False)
    for i, v in enumerate(lognormal(100, 4)):
        auto.record(v, threshold=1.0 + i / 100)  # a varying (adaptive) threshold
    auto.plot(tmp_path / "auto.png")
    assert (tmp_path / "auto.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="nothing to plot"):
        GradNormMonitor().plot(tmp_path / "empty.png")


def test_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    m = GradNormMonitor()
    m.record(1.0)
    with pytest.raises(ImportError, match=r"pip install matplotlib"):
        m.plot(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# -- checkpoints -----------------------------------------------------------------------------------

@pytest.mark.parametrize("max_history", [None, 16])
def test_monitor_state_round_trip(tmp_path, max_history):
    norms = lognormal(200, 5)
    a = GradNormMonitor(threshold=1.2, window=7, max_history=max_history, warn=False)
    feed(a, norms[:150])
    a.record(math.inf)
    np.savez(tmp_path / "m.npz", **a.state_dict())
    b = GradNormMonitor(window=7, max_history=max_history, warn=False)
    b.load_state_dict(dict(np.load(tmp_path / "m.npz", allow_pickle=False)))
    assert same_sd(a.state_dict(), b.state_dict())
    feed(a, norms[150:])
    feed(b, norms[150:])
    assert same_sd(a.state_dict(), b.state_dict())
    assert a.percentile(90, recent=True) == b.percentile(90, recent=True)


def test_monitor_load_refuses_mismatch_and_changes_nothing():
    a = GradNormMonitor(window=5)
    feed(a, [1.0, 2.0])
    b = GradNormMonitor(window=6)
    feed(b, [3.0])
    before = b.state_dict()
    with pytest.raises(ValueError, match="window"):
        b.load_state_dict(a.state_dict())
    sd = a.state_dict()
    del sd["norms"]
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict(sd)
    assert same_sd(before, b.state_dict())


# -- AutoClip -------------------------------------------------------------------------------------

def test_autoclip_threshold_is_the_percentile_of_the_window():
    norms = lognormal(300, 6)
    c = AutoClip(90, window=50, warmup=10)
    for i, v in enumerate(norms):
        t = c.threshold()
        if i < 10:
            assert t is None  # warm-up: no clipping
        else:
            assert t == np.percentile(norms[max(0, i - 50):i], 90)
        c.update(v)
    c.update(math.nan)  # skipped steps do not move the threshold
    assert c.threshold() == np.percentile(norms[-50:], 90) and c.count == 300


def test_autoclip_state_round_trip_and_checks():
    norms = lognormal(80, 7)
    a = AutoClip(75, window=20, warmup=5)
    for v in norms[:60]:
        a.update(v)
    b = AutoClip(75, window=20, warmup=5)
    b.load_state_dict(a.state_dict())
    for v in norms[60:]:
        assert a.threshold() == b.threshold()
        a.update(v)
        b.update(v)
    with pytest.raises(ValueError, match="window"):
        AutoClip(75, window=21, warmup=5).load_state_dict(a.state_dict())
    for kw, exc in (({"percentile": 0}, ValueError), ({"percentile": 101}, ValueError),
                    ({"window": 0}, ValueError), ({"warmup": 30, "window": 10}, ValueError),
                    ({"window": 2.5}, TypeError)):
        with pytest.raises(exc):
            AutoClip(**kw)
    for bad, exc in ((-1.0, ValueError), ("1", TypeError)):
        with pytest.raises(exc, match="norm"):
            a.update(bad)
        with pytest.raises(exc, match="norm"):
            GradNormMonitor().record(bad)


def test_auto_clipping_in_an_optimizer_equals_clipping_by_hand():
    """max_grad_norm=AutoClip(...): lambda_t from the norms before t; the same trajectory as
    computing the percentile by hand and clipping the gradients, bit for bit."""
    rng = np.random.default_rng(8)
    params = [rng.standard_normal(300), rng.standard_normal(20)]
    grads = [[rng.standard_normal(300) * s, rng.standard_normal(20) * s]
             for s in rng.lognormal(0, 1, 40)]
    grads[25] = [g * 100 for g in grads[25]]  # a spike
    pa = [p.copy() for p in params]
    m = GradNormMonitor(warn=False)
    opt = fastopt.Adam(pa, 0.01, max_grad_norm=AutoClip(90, window=10, warmup=5), monitor=m)
    pb = [p.copy() for p in params]
    hand = fastopt.Adam(pb, 0.01, nonfinite="ignore")
    seen = []
    for k, g in enumerate(grads):
        r = opt.step(g)
        t = fastopt.global_norm(g)
        assert r.grad_norm == t
        lam = np.percentile(seen[-10:], 90) if len(seen) >= 5 else None
        gb = [x.copy() for x in g]
        if lam is not None:
            fastopt.clip_by_global_norm(gb, lam)
        assert r.clipped == (lam is not None and t > lam)
        hand.step(gb)
        seen.append(t)
    assert [x.tobytes() for x in pa] == [x.tobytes() for x in pb]
    assert m.count == 40 and m.clipped_count >= 1 and m.clipped[25]
    np.testing.assert_array_equal(m.norms, seen)


def test_auto_clipping_trajectory_bitwise():
    rng = np.random.default_rng(9)
    params = [rng.standard_normal(1000).astype(np.float32)]
    grads = [[(rng.standard_normal(1000) * s).astype(np.float32)]
             for s in rng.lognormal(0, 1, 30)]
    pa, pb = [params[0].copy()], [params[0].copy()]
    opt = fastopt.SGD(pa, 0.1, max_grad_norm="auto")
    hand = fastopt.SGD(pb, 0.1, nonfinite="ignore")
    seen = []
    for g in grads:
        opt.step(g)
        gb = [g[0].copy()]
        if len(seen) >= 20:  # AutoClip() defaults: p=90, window=1000, warmup=20
            fastopt.clip_by_global_norm(gb, float(np.percentile(seen[-1000:], 90)))
        hand.step(gb)
        seen.append(fastopt.global_norm(g))
    assert pa[0].tobytes() == pb[0].tobytes()


def test_monitor_fed_by_optimizer_records_unclipped_norms_and_skips():
    m = GradNormMonitor(warn=False)
    p = [np.zeros(50, np.float32)]
    opt = fastopt.Momentum(p, 0.1, max_grad_norm=1.0, monitor=m)
    results = []
    for s in (0.01, 10.0, 0.1):  # norms 0.07, 70.7, 0.71
        results.append(opt.step([np.full(50, s, np.float32)]))
    with pytest.warns(RuntimeWarning):
        results.append(opt.step([np.full(50, np.nan, np.float32)]))
    assert m.count == 4 and m.nonfinite_count == 1
    np.testing.assert_array_equal(m.norms[:3], [r.grad_norm for r in results[:3]])
    np.testing.assert_array_equal(m.clipped, [False, True, False, False])
    np.testing.assert_array_equal(m.thresholds, [1.0] * 4)
