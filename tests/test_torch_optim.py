"""fastopt.torch: the PyTorch drop-in optimizers against torch.optim (foreach=False)."""
import io
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastopt.torch")

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
                                     ("SGD", dict(lr=1e-2, momentum=0.9, dampening=0.5))])
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
    if name != "SGD":  # torch's SGD (and so ours) keeps no step count
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


def test_refuses_non_contiguous_params():
    w = torch.nn.Parameter(torch.randn(4, 6).t())
    assert not w.is_contiguous()
    with pytest.raises(ValueError, match="not contiguous"):
        ft.Adam([w])


def test_refuses_unsupported():
    with pytest.raises(TypeError, match="float16"):
        ft.Adam([torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))])
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
