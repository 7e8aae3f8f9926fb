"""fastopt.torch: the PyTorch drop-in optimizers against torch.optim (foreach=False)."""
import inspect
import io
import math
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastopt.torch")

from fastopt import _dispatch  # noqa: E402

STEPS = 20
X = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
Y = torch.randn(32, 4, generator=torch.Generator().manual_seed(2))


def make_model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                               torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)


def train_step(model, opt, clip=None):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(X.to(next(model.parameters()).dtype)),
                                        Y.to(next(model.parameters()).dtype))
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    return opt.step()


def assert_same(a, b, rtol=1e-4, atol=1e-5):
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=rtol, atol=atol)


CASES = [
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=1e-2, maximize=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.3, betas=(0.5, 0.9))),
    ("SGD", dict(lr=5e-2)),
    ("SGD", dict(lr=5e-2, weight_decay=0.01)),
    ("SGD", dict(lr=2e-2, momentum=0.9)),
    ("SGD", dict(lr=2e-2, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=2e-2, momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-2, alpha=0.9, momentum=0.5, weight_decay=0.01)),
    ("NAdam", dict(lr=1e-2)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.01, momentum_decay=8e-3)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True)),
    ("Adagrad", dict(lr=1e-2)),
    ("Adagrad", dict(lr=5e-2, lr_decay=0.05, weight_decay=0.01, initial_accumulator_value=0.1,
                     eps=1e-6)),
    ("Adagrad", dict(lr=1e-2, maximize=True, weight_decay=0.1)),
]


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_trajectory_matches_torch(name, kw):
    a, b = make_model(), make_model()
    ref = getattr(torch.optim, name)(a.parameters(), foreach=False, **kw)
    opt = getattr(ft, name)(b.parameters(), **kw)
    for _ in range(STEPS):
        train_step(a, ref)
        train_step(b, opt)
    assert_same(a, b)
    # the state PyTorch keeps is there too, under the same names
    pa = next(iter(a.parameters()))
    pb = next(iter(b.parameters()))
    for key, val in ref.state[pa].items():
        if torch.is_tensor(val) and val.dim() > 0:
            # state can be large (RMSprop's buffer ~ g / sqrt(v)): tolerance relative to it
            torch.testing.assert_close(opt.state[pb][key], val, rtol=2e-3,
                                       atol=1e-5 * (1.0 + float(val.abs().max())))
    # the same state keys as torch's, and the same step count where torch keeps one (its SGD
    # does not)
    assert set(opt.state[pb]) == set(ref.state[pa])
    if "step" in ref.state[pa]:
        assert float(opt.state[pb]["step"]) == float(ref.state[pa]["step"]) == STEPS


def test_float64_matches_torch():
    a, b = make_model(torch.float64), make_model(torch.float64)
    ref = torch.optim.AdamW(a.parameters(), lr=1e-2, foreach=False)
    opt = ft.AdamW(b.parameters(), lr=1e-2)
    for _ in range(STEPS):
        train_step(a, ref)
        train_step(b, opt)
    assert_same(a, b, rtol=1e-10, atol=1e-12)


def test_updates_in_place_without_copies():
    m = make_model()
    p = next(iter(m.parameters()))
    ptr, before = p.data_ptr(), p.detach().clone()
    opt = ft.Adam(m.parameters(), lr=1e-2)
    train_step(m, opt)
    assert p.data_ptr() == ptr and not torch.equal(p, before)
    assert opt.state[p]["exp_avg"].data_ptr() == opt._cache[0].buckets[0].states[0][0].ctypes.data


def test_param_groups():
    a, b = make_model(), make_model()
    def groups(m):
        layers = [l for l in m if isinstance(l, torch.nn.Linear)]
        return [{"params": layers[0].parameters(), "lr": 3e-2, "weight_decay": 0.5},
                {"params": layers[1].parameters()},
                {"params": layers[2].parameters(), "lr": 1e-3, "betas": (0.5, 0.9)}]
    ref = torch.optim.AdamW(groups(a), lr=1e-2, foreach=False)
    opt = ft.AdamW(groups(b), lr=1e-2)
    for _ in range(STEPS):
        train_step(a, ref)
        train_step(b, opt)
    assert_same(a, b)


def test_lr_scheduler_and_missing_grads():
    a, b = make_model(), make_model()
    ref = torch.optim.RMSprop(a.parameters(), lr=1e-2, momentum=0.5, foreach=False)
    opt = ft.RMSprop(b.parameters(), lr=1e-2, momentum=0.5)
    sa = torch.optim.lr_scheduler.StepLR(ref, 5, 0.5)
    sb = torch.optim.lr_scheduler.StepLR(opt, 5, 0.5)
    for s in range(STEPS):
        for m, o, sch in ((a, ref, sa), (b, opt, sb)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(X), Y).backward()
            if s % 3 == 0:  # the first layer's bias gets no gradient: it is skipped, as in torch
                m[0].bias.grad = None
            o.step()
            sch.step()
    assert_same(a, b)


@pytest.mark.parametrize("name,kw", [("AdamW", dict(lr=1e-2)), ("NAdam", dict(lr=1e-2)),
                                     ("SGD", dict(lr=1e-2, momentum=0.9, dampening=0.5)),
                                     ("Adagrad", dict(lr=1e-2, lr_decay=0.1)),
                                     ("Lion", dict(lr=1e-3, weight_decay=0.1))])
def test_state_dict_round_trip(name, kw):
    a, b = make_model(), make_model()
    oa = getattr(ft, name)(a.parameters(), **kw)
    ob = getattr(ft, name)(b.parameters(), **kw)
    for _ in range(7):
        train_step(a, oa)
        train_step(b, ob)
    buf = io.BytesIO()
    torch.save({"model": b.state_dict(), "opt": ob.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf)
    c = make_model()
    c.load_state_dict(ck["model"])
    oc = getattr(ft, name)(c.parameters(), **kw)
    oc.load_state_dict(ck["opt"])
    for _ in range(8):
        train_step(a, oa)
        train_step(c, oc)
    for p, q in zip(a.parameters(), c.parameters()):
        assert torch.equal(p, q)
    if name not in ("SGD", "Lion"):  # torch's SGD (and so ours) keeps no step count, nor Lion
        assert float(oc.state[next(iter(c.parameters()))]["step"]) == 15


def test_torch_state_dict_loads_into_fastopt():
    a, b = make_model(), make_model()
    ref = torch.optim.Adam(a.parameters(), lr=1e-2, foreach=False)
    for _ in range(5):
        train_step(a, ref)
    b.load_state_dict(a.state_dict())
    opt = ft.Adam(b.parameters(), lr=1e-2)
    opt.load_state_dict(ref.state_dict())
    for _ in range(5):
        train_step(a, ref)
        train_step(b, opt)
    assert_same(a, b)


@pytest.mark.parametrize("clip", [0.05, 100.0])
def test_max_grad_norm_matches_clip_grad_norm(clip):
    a, b = make_model(), make_model()
    ref = torch.optim.Adam(a.parameters(), lr=1e-2, foreach=False)
    opt = ft.Adam(b.parameters(), lr=1e-2, max_grad_norm=clip)
    for _ in range(STEPS):
        train_step(a, ref, clip=clip)
        norm = train_step(b, opt)
        assert norm == opt.last_grad_norm and norm > 0
    assert_same(a, b)


def test_monitor_records_norms():
    from fastopt import GradNormMonitor

    mon = GradNormMonitor()
    m = make_model()
    opt = ft.SGD(m.parameters(), lr=1e-2, max_grad_norm=0.1, monitor=mon)
    norms = [train_step(m, opt) for _ in range(5)]
    assert len(mon.steps) == 5 and norms[0] > 0


# -- non-finite gradients (nonfinite=) -----------------------------------------------------------
NONFINITE_NAMES = ["Adam", "AdamW", "SGD", "RMSprop", "NAdam", "Adagrad", "Lion"]


def poisoned_step(model, opt, value=float("nan"), where=5):
    """A training step whose first param's grad holds ``value`` at flat index ``where``."""
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(X), Y).backward()
    next(model.parameters()).grad.view(-1)[where] = value
    return opt.step()


def snapshot(model, opt):
    import copy

    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.state_dict())


def assert_unchanged(model, opt, snap):
    params, sd = snap
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    now = opt.state_dict()
    assert now["param_groups"] == sd["param_groups"] and now["state"].keys() == sd["state"].keys()
    for k, entry in sd["state"].items():
        assert now["state"][k].keys() == entry.keys()
        for key, v in entry.items():
            w = now["state"][k][key]
            assert torch.equal(w, v) if torch.is_tensor(v) else w == v, (k, key)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("kw", [dict(max_grad_norm=1.0), dict(nonfinite="skip"),
                                dict(max_grad_norm=1.0, nonfinite="skip"), "monitor"],
                         ids=["clip-default", "skip", "clip-skip", "monitor-default"])
@pytest.mark.parametrize("name", NONFINITE_NAMES)
def test_nonfinite_norm_skips_the_step_and_training_goes_on(name, kw, value):
    from fastopt import GradNormMonitor

    def make(model):
        opts = dict(monitor=GradNormMonitor()) if kw == "monitor" else dict(kw)
        return getattr(ft, name)(model.parameters(), lr=1e-2, **opts)

    a, b = make_model(), make_model()
    ours, ref = make(a), make(b)
    for first in (True, False):  # before any state exists, then with state
        snap = snapshot(a, ours)
        with pytest.warns(RuntimeWarning, match="skipped a step"):
            norm = poisoned_step(a, ours, value)
        assert ours.last_step_skipped and float(norm).hex() == float(value).hex()
        assert float(ours.last_grad_norm).hex() == float(value).hex()
        assert_unchanged(a, ours, snap)
        if kw == "monitor":
            assert ours.monitor.nonfinite_count == (1 if first else 2)
        for _ in range(3):  # the run that skipped is the run that never saw the bad batch
            assert math.isfinite(train_step(a, ours)) and not ours.last_step_skipped
            train_step(b, ref)
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    counted = ours.state_dict()["state"].get(0, {})
    if name not in ("SGD", "Lion"):  # (they count no steps)
        assert int(counted["step"]) == 6  # the two skipped steps were not counted


@pytest.mark.parametrize("name", NONFINITE_NAMES)
def test_nonfinite_raise_writes_nothing(name):
    m = make_model()
    opt = getattr(ft, name)(m.parameters(), lr=1e-2, nonfinite="raise")
    assert math.isfinite(train_step(m, opt))  # "raise" takes the norm: step() returns it
    snap = snapshot(m, opt)
    with pytest.raises(FloatingPointError, match="nothing was updated"):
        poisoned_step(m, opt, float("-inf"))
    assert_unchanged(m, opt, snap)
    assert math.isinf(opt.last_grad_norm)


@pytest.mark.parametrize("kw", [{}, dict(nonfinite="ignore", max_grad_norm=1.0)],
                         ids=["default-no-norm", "ignore"])
def test_nonfinite_ignored_takes_the_step_as_torch_does(kw):
    """No check: torch.optim's behaviour, the bad value flows into its own param element (a
    non-finite norm clips nothing), every other element takes its step."""
    a, b = make_model(), make_model()
    ours = ft.Adam(a.parameters(), lr=1e-2, **kw)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2, foreach=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no skip warning
        norm = poisoned_step(a, ours)
    poisoned_step(b, ref)
    assert not ours.last_step_skipped
    assert (norm is None) == (not kw) and (norm is None or math.isnan(norm))
    pa, pb = next(a.parameters()), next(b.parameters())
    assert torch.isnan(pa.view(-1)[5]) and torch.isnan(pb.view(-1)[5])
    assert int(torch.isnan(pa).sum()) == 1
    for p, q in zip(a.parameters(), b.parameters()):  # NaN where torch has NaN, same elsewhere
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_refuses_non_contiguous_params():
    w = torch.nn.Parameter(torch.randn(4, 6).t())
    assert not w.is_contiguous()
    with pytest.raises(ValueError, match="not contiguous"):
        ft.Adam([w])


def test_refuses_unsupported():
    with pytest.raises(TypeError, match="complex64"):
        ft.Adam([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))])
    p = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="amsgrad"):
        ft.Adam(p, amsgrad=True)
    with pytest.raises(ValueError, match="centered"):
        ft.RMSprop(p, centered=True)
    with pytest.raises(ValueError, match="Nesterov"):
        ft.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="semantics"):
        ft.SGD(p, semantics="optax")


def test_fastopt_semantics_match_fastopt_optimizers():
    import numpy as np

    import fastopt

    m = make_model(torch.float64)
    params = [p.detach().numpy().copy() for p in m.parameters()]
    ref = fastopt.RMSProp(params, 1e-2, rho=0.9, momentum=0.5, nonfinite="ignore")
    opt = ft.RMSprop(m.parameters(), lr=1e-2, alpha=0.9, momentum=0.5, semantics="fastopt")
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(X.double()), Y.double()).backward()
        ref.step([p.grad.numpy() for p in m.parameters()])
        opt.step()
        for p, q in zip(m.parameters(), params):  # same data each step: copy ref's params in
            np.testing.assert_allclose(p.detach().numpy(), q, rtol=1e-12, atol=1e-14)
            q[...] = p.detach().numpy()


def test_one_native_call_per_group(monkeypatch):
    from fastopt import functional

    calls = []
    real = functional.run
    monkeypatch.setattr(functional, "run", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(300)]
    opt = ft.AdamW(params, lr=1e-3)
    for _ in range(3):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    assert calls == [300, 300, 300]


def test_import_fastopt_does_not_import_torch():
    code = "import sys, fastopt; fastopt.AdamW; print('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("rule", ["rmsprop", "nadam"])
def test_torch_variant_scalars_same_bits_on_every_cpu_backend(rule):
    """The host scalars PyTorch's RMSprop/NAdam need (eps_out, lr_out; nm, ng) run alike on
    every CPU backend, bit for bit, as the default rules do."""
    import numpy as np

    from fastopt import functional as F
    from fastopt._dispatch import available_backends

    hyper = {n: v for n, v in dict(weight_decay=0.01, momentum=0.5, beta1=0.8).items()
             if n in F.hyperparameters(rule)}
    k = F.scalars(rule, lr=1e-2, step=3, **hyper)
    k = k._replace(eps=0.0, eps_out=1e-6, lr=1.0, lr_out=3e-2, nm=0.71, ng=0.23, alpha=1.0,
                   c=0.5)
    sizes = [1, 7, 129, 4097]
    out = {}
    for b in [b for b in ("numpy", "numba", "cpp") if b in available_backends()]:
        r = np.random.default_rng(0)
        ps = [r.standard_normal(n).astype(np.float32) for n in sizes]
        gs = [r.standard_normal(n).astype(np.float32) for n in sizes]
        st = [[np.abs(r.standard_normal(n)).astype(np.float32) for n in sizes] for _ in range(2)]
        F.run(rule, ps, gs, st, k, b)
        out[b] = ps + st[0] + st[1]
    assert len(out) >= 2
    ref = out.pop("numpy")
    for b, arrays in out.items():
        for x, y in zip(ref, arrays):
            np.testing.assert_array_equal(y, x, err_msg=b)


# -- Adagrad and Lion over odd sizes and several param groups -----------------------------------
#: odd sizes, an empty tensor, a 3-D one, and a few that are the same size
ODD_SHAPES = [(1,), (7, 3), (129,), (0,), (4097,), (5,), (5,), (2, 3, 2)]
CPU_BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(
    _dispatch.unavailable_reason(b) is not None, reason=str(_dispatch.unavailable_reason(b))))
    for b in ("cpp", "numba", "numpy")]
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


def odd_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in ODD_SHAPES]


def odd_grads(params, step, holes=True):
    """Gradients that depend on the params; param 2 has none every third step."""
    g = torch.Generator().manual_seed(500 + step)
    for i, p in enumerate(params):
        if holes and i == 2 and step % 3 == 1:
            p.grad = None
            continue
        p.grad = (0.3 * p.detach() + torch.randn(p.shape, generator=g, dtype=p.dtype)).clone()


def three_groups(params, over):
    return [{"params": params[:3]}, {"params": params[3:6], **over[0]},
            {"params": params[6:], **over[1]}]


#: torch's addcmul_ and addcdiv_ round s + g*g and (-lr g) / d in another order than the kernel's
#: s + g*g and lr (g / d): an ulp or so per step, nothing more
ADAGRAD_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-13,
                                                                               atol=1e-14)}
ADAGRAD_RUNS = [
    (dict(lr=1e-2), ({"lr": 3e-2}, {"eps": 1e-3})),
    (dict(lr=5e-2, lr_decay=0.1, weight_decay=0.05),
     ({"lr_decay": 0.0}, {"weight_decay": 0.0, "lr": 1e-3})),
    # a group's own initial_accumulator_value is not read by torch (nor by us)
    (dict(lr=2e-2, initial_accumulator_value=0.5, eps=1e-6),
     ({"initial_accumulator_value": 3.0}, {"maximize": True})),
    (dict(lr=1e-2, maximize=True, lr_decay=0.01), ({"maximize": False}, {"weight_decay": 0.2})),
]


def stepped_together(a, b, pa, pb):
    """Steps optimizer a (over params pa) and b (over pb) on the same odd-size gradients STEPS
    times; after each step yields (step, index, a's param, b's param) for every param."""
    for s in range(STEPS):
        odd_grads(pa, s)
        odd_grads(pb, s)
        a.step()
        b.step()
        for i, (p, q) in enumerate(zip(pa, pb)):
            yield s, i, p, q


@DTYPES
@pytest.mark.parametrize("kw,over", ADAGRAD_RUNS, ids=[f"run{i}" for i in range(len(ADAGRAD_RUNS))])
def test_adagrad_matches_torch_over_groups_and_odd_sizes(kw, over, dtype):
    pa, pb = odd_params(dtype), odd_params(dtype)
    theirs = torch.optim.Adagrad(three_groups(pa, over), foreach=False, **kw)
    ours = ft.Adagrad(three_groups(pb, over), **kw)
    for s, i, p, q in stepped_together(theirs, ours, pa, pb):
        torch.testing.assert_close(q.detach(), p.detach(), **ADAGRAD_TOL[dtype],
                                   msg=f"step {s}, param {i}")
        a, b = ours.state[q], theirs.state[p]
        assert set(a) == set(b) == {"step", "sum"}
        assert float(a["step"]) == float(b["step"])
        assert a["sum"].dtype == b["sum"].dtype == dtype
        torch.testing.assert_close(a["sum"], b["sum"], **ADAGRAD_TOL[dtype])
    assert float(ours.state[pb[2]]["step"]) == STEPS - len(range(1, STEPS, 3))
    assert float(ours.state[pb[0]]["step"]) == STEPS
    assert not torch.equal(pb[1], odd_params(dtype)[1])


def test_adagrad_lr_decay_reads_the_steps_taken():
    """Step k (from 1) uses lr / (1 + (k - 1) lr_decay), as torch.optim.Adagrad: with a constant
    gradient 1, no eps and s from 0, p after n steps is -sum_k lr / (1 + (k-1) d) / sqrt(k)."""
    lr, d, n = 0.1, 0.5, 12
    for cls in (ft.Adagrad, torch.optim.Adagrad):
        p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = cls([p], lr=lr, lr_decay=d, eps=0.0)
        for k in range(1, n + 1):
            p.grad = torch.ones_like(p)
            opt.step()
            expect = -sum(lr / (1 + (i - 1) * d) / i ** 0.5 for i in range(1, k + 1))
            assert float(p.detach()) == pytest.approx(expect, rel=1e-14, abs=0), (cls, k)


def test_adagrad_state_is_made_in_the_constructor_as_torch_makes_it():
    pa, pb = odd_params(torch.float32), odd_params(torch.float32)
    ours = ft.Adagrad(three_groups(pa, ({}, {"initial_accumulator_value": 7.0})),
                      initial_accumulator_value=0.25)
    theirs = torch.optim.Adagrad(three_groups(pb, ({}, {"initial_accumulator_value": 7.0})),
                                 initial_accumulator_value=0.25)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert sorted(a["state"]) == sorted(b["state"]) == list(range(len(ODD_SHAPES)))
    for k in b["state"]:
        assert set(a["state"][k]) == set(b["state"][k]) == {"step", "sum"}
        assert float(a["state"][k]["step"]) == float(b["state"][k]["step"]) == 0
        assert torch.equal(a["state"][k]["sum"], b["state"][k]["sum"])
        assert torch.equal(a["state"][k]["sum"], torch.full(ODD_SHAPES[k], 0.25))
    # a group added later gets its state at its first step, from the constructor's value
    xa, xb = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    ours.add_param_group({"params": [xa], "initial_accumulator_value": 5.0})
    theirs.add_param_group({"params": [xb], "initial_accumulator_value": 5.0})
    assert not ours.state.get(xa) and not theirs.state.get(xb)
    for opt, x, ps in ((ours, xa, pa), (theirs, xb, pb)):
        odd_grads(ps, 0)
        x.grad = torch.full((3,), 2.0)
        opt.step()
    assert torch.equal(ours.state[xa]["sum"], theirs.state[xb]["sum"])
    assert torch.equal(ours.state[xa]["sum"], torch.full((3,), 4.25))
    # fresh state dicts load both ways
    pc, pd = odd_params(torch.float32, 1), odd_params(torch.float32, 1)
    fresh_theirs = torch.optim.Adagrad(pd, lr=0.03, initial_accumulator_value=0.5)
    fresh_ours = ft.Adagrad(pc, lr=0.03, initial_accumulator_value=0.5)
    ft.Adagrad(odd_params(torch.float32), lr=0.03).load_state_dict(fresh_theirs.state_dict())
    torch.optim.Adagrad(odd_params(torch.float32), lr=0.03).load_state_dict(
        fresh_ours.state_dict())
    for s in range(3):
        for opt, ps in ((fresh_ours, pc), (fresh_theirs, pd)):
            odd_grads(ps, s)
            opt.step()
    for p, q in zip(pc, pd):
        torch.testing.assert_close(p, q, **ADAGRAD_TOL[torch.float32])


def test_adagrad_fastopt_semantics_is_fastopt_adagrad_bit_for_bit():
    """semantics="fastopt": fastopt.Adagrad's rule, a group's initial_accumulator_value read."""
    import numpy as np

    import fastopt

    params = odd_params(torch.float64)
    arrays = [p.detach().numpy().copy() for p in params]
    over = ({"lr_decay": 0.2, "initial_accumulator_value": 2.0}, {"weight_decay": 0.1})
    ours = ft.Adagrad(three_groups(params, over), lr=0.05, eps=1e-8, semantics="fastopt")
    assert torch.equal(ours.state[params[4]]["sum"], torch.full(ODD_SHAPES[4], 2.0,
                                                                dtype=torch.float64))
    ref = fastopt.Adagrad(three_groups(arrays, ({"lr_decay": 0.2, "initial_accumulator_value":
                                                 2.0}, {"weight_decay": 0.1})),
                          lr=0.05, eps=1e-8, nonfinite="ignore")
    for s in range(STEPS):
        odd_grads(params, s, holes=False)
        ours.step()
        ref.step([p.grad.numpy() for p in params])
        for p, a in zip(params, arrays):
            assert np.array_equal(p.detach().numpy(), a)
    for p, s in zip(params, ref.state["sum"]):
        assert np.array_equal(ours.state[p]["sum"].numpy(), s)
    with pytest.raises(ValueError, match="maximize"):
        ft.Adagrad(odd_params(torch.float64), maximize=True, semantics="fastopt")


LION_RUNS = [dict(lr=1e-3), dict(lr=3e-3, betas=(0.8, 0.95), weight_decay=0.3),
             dict(lr=1e-3, weight_decay=1.0, maximize=True)]
LION_OVER = ({"lr": 3e-4}, {"betas": (0.5, 0.9), "weight_decay": 0.0})


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@DTYPES
@pytest.mark.parametrize("kw", LION_RUNS, ids=[f"run{i}" for i in range(len(LION_RUNS))])
def test_lion_matches_a_plain_torch_lion_bit_for_bit(kw, dtype, backend):
    from torch_snapshot import ReferenceLion

    pa, pb = odd_params(dtype), odd_params(dtype)
    ours = ft.Lion(three_groups(pa, LION_OVER), backend=backend, **kw)
    theirs = ReferenceLion(three_groups(pb, LION_OVER), **kw)
    for s, i, p, q in stepped_together(ours, theirs, pa, pb):
        assert torch.equal(p, q), f"step {s}, param {i}"
        assert set(ours.state[p]) == set(theirs.state[q]) == {"exp_avg"}
        assert torch.equal(ours.state[p]["exp_avg"], theirs.state[q]["exp_avg"])
    # it did move the params (by +-lr per step and element: a one-element one may come back)
    assert all(not torch.equal(p, q) for p, q in zip(pa, odd_params(dtype)) if p.numel() > 1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@DTYPES
def test_lion_matches_fastopt_lion_bit_for_bit(dtype, backend):
    """fastopt.torch.Lion over groups is the NumPy class fastopt.Lion (NumPy reference backend),
    bit for bit, params and momentum; semantics="fastopt" is the same rule."""
    import numpy as np

    import fastopt

    params = odd_params(dtype)
    same = [p.detach().clone().requires_grad_() for p in params]
    arrays = [p.detach().numpy().copy() for p in params]
    over = ({"lr": 3e-4}, {"betas": (0.5, 0.9), "weight_decay": 0.0})
    ours = ft.Lion(three_groups(params, over), lr=2e-3, betas=(0.8, 0.95), weight_decay=0.2,
                   backend=backend)
    alike = ft.Lion(three_groups(same, over), lr=2e-3, betas=(0.8, 0.95), weight_decay=0.2,
                    semantics="fastopt")
    ref = fastopt.Lion(three_groups(arrays, ({"lr": 3e-4}, {"beta1": 0.5, "beta2": 0.9,
                                                            "weight_decay": 0.0})),
                       lr=2e-3, beta1=0.8, beta2=0.95, weight_decay=0.2, backend="numpy",
                       nonfinite="ignore")
    for s in range(STEPS):
        odd_grads(params, s, holes=False)
        for p, q in zip(params, same):
            q.grad = p.grad.clone()
        ours.step()
        alike.step()
        ref.step([p.grad.numpy() for p in params])
        for p, q, a in zip(params, same, arrays):
            assert np.array_equal(p.detach().numpy(), a) and torch.equal(p, q)
    for p, m in zip(params, ref.state["m"]):
        assert np.array_equal(ours.state[p]["exp_avg"].numpy(), m)


def test_lion_signature_defaults_and_options():
    P = inspect.Parameter
    sig = list(inspect.signature(ft.Lion).parameters.values())
    assert [(p.name, p.kind, p.default) for p in sig] == [
        ("params", P.POSITIONAL_OR_KEYWORD, P.empty), ("lr", P.POSITIONAL_OR_KEYWORD, 1e-4),
        ("betas", P.POSITIONAL_OR_KEYWORD, (0.9, 0.99)),
        ("weight_decay", P.POSITIONAL_OR_KEYWORD, 0.0), ("maximize", P.KEYWORD_ONLY, False),
        ("max_grad_norm", P.KEYWORD_ONLY, None), ("nonfinite", P.KEYWORD_ONLY, None),
        ("monitor", P.KEYWORD_ONLY, None),
        ("backend", P.KEYWORD_ONLY, None), ("semantics", P.KEYWORD_ONLY, "torch"),
        ("master_weights", P.KEYWORD_ONLY, False), ("state_dtype", P.KEYWORD_ONLY, "float32"),
        ("stochastic_rounding", P.KEYWORD_ONLY, False), ("seed", P.KEYWORD_ONLY, 0)]
    assert issubclass(ft.Lion, torch.optim.Optimizer)
    p = torch.zeros(3, requires_grad=True)
    # no decay unless asked for, as torch's optimizers (fastopt.Lion follows optax: 1e-3)
    assert ft.Lion([p]).defaults == dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0,
                                         maximize=False)
    opt = ft.Lion([p], 1e-3, (0.5, 0.6), 0.1, maximize=True)
    assert {k: v for k, v in opt.param_groups[0].items() if k != "params"} == \
        dict(lr=1e-3, betas=(0.5, 0.6), weight_decay=0.1, maximize=True)
    for option in ("foreach", "fused", "differentiable", "capturable", "amsgrad"):
        with pytest.raises(TypeError, match=option):
            ft.Lion([p], **{option: False})
    with pytest.raises(TypeError):
        ft.Lion([p], 1e-3, (0.9, 0.99), 0.0, False)  # maximize is keyword-only
    with pytest.raises(ValueError, match="maximize"):
        ft.Lion([p], maximize=True, semantics="fastopt")


def test_lion_closure_max_grad_norm_and_monitor():
    """The options every class has: the closure's loss back; the clip factor folded into the
    gradient (sign-invariant, but the momentum sees it), the unclipped norm returned."""
    from fastopt import GradNormMonitor

    from torch_snapshot import ReferenceLion

    a, b = make_model(), make_model()
    mon = GradNormMonitor()
    ours = ft.Lion(a.parameters(), lr=1e-3, max_grad_norm=0.05, monitor=mon)
    theirs = ReferenceLion(b.parameters(), lr=1e-3)
    for _ in range(5):
        norm = train_step(a, ours)
        train_step(b, theirs, clip=0.05)
        assert norm == ours.last_grad_norm > 0.05
    assert len(mon.steps) == 5
    assert_same(a, b, rtol=1e-5, atol=1e-6)

    def closure():
        ours.zero_grad()
        loss = torch.nn.functional.mse_loss(a(X), Y)
        loss.backward()
        return loss
    assert torch.is_tensor(ours.step(closure))
