"""fastopt.torch against torch.optim over a grid of configurations: the same trajectory
(parameters and state), and checkpoints that load both ways mid-trajectory and continue it."""
import copy
import io

import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastopt.torch")

from torch_snapshot import ReferenceLion  # noqa: E402

from fastopt import _dispatch  # noqa: E402

BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(_dispatch.unavailable_reason(b) is not None,
                                                     reason=str(_dispatch.unavailable_reason(b))))
            for b in ("cpp", "numba")]
DTYPES = [torch.float32, torch.float64]
#: per dtype: (rtol, atol relative to the largest magnitude of the compared tensor)
TOL = {torch.float32: (2e-4, 2e-5), torch.float64: (1e-10, 1e-12)}

#: (class, options of group 0, overrides of group 1)
CONFIGS = [
    ("Adam", dict(lr=1e-2), dict(lr=3e-3, betas=(0.8, 0.95))),
    ("Adam", dict(lr=1e-2, weight_decay=0.1, eps=1e-6), dict(weight_decay=0.0)),
    ("Adam", dict(lr=1e-2, maximize=True), dict(lr=2e-2)),
    ("Adam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
     dict(weight_decay=0.3)),
    ("AdamW", dict(lr=1e-2), dict(weight_decay=0.2, betas=(0.5, 0.9))),
    ("AdamW", dict(lr=1e-2, weight_decay=0.3, maximize=True), dict(lr=1e-3)),
    ("SGD", dict(lr=5e-2), dict(lr=1e-2)),
    ("SGD", dict(lr=5e-2, weight_decay=0.01, dampening=0.5), dict(weight_decay=0.1)),
    ("SGD", dict(lr=2e-2, momentum=0.9), dict(momentum=0.5)),
    ("SGD", dict(lr=2e-2, momentum=0.9, dampening=0.3, weight_decay=0.01), dict(dampening=0.7)),
    ("SGD", dict(lr=2e-2, momentum=0.9, nesterov=True, weight_decay=0.05), dict(momentum=0.7)),
    ("SGD", dict(lr=2e-2, momentum=0.8, maximize=True), dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-2), dict(alpha=0.9)),
    ("RMSprop", dict(lr=1e-2, momentum=0.5, weight_decay=0.01), dict(momentum=0.0)),
    ("RMSprop", dict(lr=1e-2, alpha=0.9, maximize=True), dict(momentum=0.3)),
    ("NAdam", dict(lr=1e-2), dict(betas=(0.8, 0.99))),
    ("NAdam", dict(lr=1e-2, weight_decay=0.01, momentum_decay=8e-3), dict(momentum_decay=0.0)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True), dict(lr=3e-3)),
    ("NAdam", dict(lr=1e-2, maximize=True), dict(weight_decay=0.1)),
    ("Adagrad", dict(lr=1e-2), dict(lr=3e-2, eps=1e-6)),
    ("Adagrad", dict(lr=5e-2, lr_decay=0.1, weight_decay=0.05), dict(lr_decay=0.0)),
    # torch reads no group's own initial_accumulator_value (a new sum takes the constructor's)
    ("Adagrad", dict(lr=2e-2, initial_accumulator_value=0.5, maximize=True),
     dict(initial_accumulator_value=3.0, maximize=False)),
]
IDS = [f"{n}-{i}" for i, (n, _, _) in enumerate(CONFIGS)]
#: Lion's, compared with Lion in plain torch ops (torch.optim has none), bit for bit
LION_CONFIGS = [
    (dict(lr=1e-3), dict(lr=3e-4, betas=(0.5, 0.9))),
    (dict(lr=3e-3, betas=(0.8, 0.95), weight_decay=0.3), dict(weight_decay=0.0)),
    (dict(lr=1e-3, weight_decay=1.0, maximize=True), dict(maximize=False)),
]

#: odd sizes, an empty tensor, a 2-D one, a one-element one, and many small ones
SHAPES = [(1,), (7, 3), (129,), (0,), (4097,)] + [(5,)] * 12


def make_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in SHAPES]


def groups_of(params, over):
    half = len(params) // 2
    return [{"params": params[:half]}, {"params": params[half:], **over}]


def set_grads(params, step):
    """Deterministic gradients that depend on the params (so trajectories can drift apart);
    param 2 has none at odd steps, param 3 never has one."""
    g = torch.Generator().manual_seed(1000 + step)
    for i, p in enumerate(params):
        if i == 3 or (i == 2 and step % 2):
            p.grad = None
            continue
        noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
        p.grad = (p.detach() * 0.3 + noise).clone()


def assert_close(actual, expected, dtype, what):
    rtol, atol = TOL[dtype]
    scale = 1.0 + (float(expected.abs().max()) if expected.numel() else 0.0)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, msg=what)


def assert_same_run(ours, theirs, pa, pb, dtype):
    """Parameters and every piece of state torch keeps agree."""
    for i, (p, q) in enumerate(zip(pa, pb)):
        assert_close(p.detach(), q.detach(), dtype, f"param {i}")
        sa, sb = ours.state.get(p, {}), theirs.state.get(q, {})
        for key, val in sb.items():
            assert key in sa, f"param {i}: state lacks {key!r}"
            if key == "step":
                assert float(sa[key]) == float(val), f"param {i}: step"
            elif key == "mu_product":
                assert abs(float(sa[key]) - float(val)) <= 1e-6 * float(val) + 1e-30
            else:
                assert_close(sa[key], val, dtype, f"param {i}: state[{key!r}]")


def through_bytes(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # a checkpoint needs no pickled code


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name,kw,over", CONFIGS, ids=IDS)
def test_trajectory_and_checkpoints_both_ways(name, kw, over, dtype, backend):
    pa, pb = make_params(dtype), make_params(dtype)
    ours = getattr(ft, name)(groups_of(pa, over), backend=backend, **kw)
    theirs = getattr(torch.optim, name)(groups_of(pb, over), foreach=False, **kw)
    for s in range(6):
        set_grads(pa, s)
        set_grads(pb, s)
        ours.step()
        theirs.step()
        assert_same_run(ours, theirs, pa, pb, dtype)
    # mid-trajectory: torch's checkpoint into a fresh fastopt optimizer, ours into a fresh torch
    # one, over copies of the params; all four continue the same trajectory
    pc = [p.detach().clone().requires_grad_() for p in pb]
    pd = [p.detach().clone().requires_grad_() for p in pa]
    from_torch = getattr(ft, name)(groups_of(pc, over), backend=backend, **kw)
    from_torch.load_state_dict(through_bytes(theirs.state_dict()))
    from_ours = getattr(torch.optim, name)(groups_of(pd, over), foreach=False, **kw)
    from_ours.load_state_dict(through_bytes(ours.state_dict()))
    assert [dict(g, params=None) for g in from_torch.param_groups] == \
        [dict(g, params=None) for g in theirs.param_groups]
    for s in range(6, 12):
        for ps in (pa, pb, pc, pd):
            set_grads(ps, s)
        for o in (ours, theirs, from_torch, from_ours):
            o.step()
    assert_same_run(ours, theirs, pa, pb, dtype)
    assert_same_run(from_torch, theirs, pc, pb, dtype)
    # torch's own load casts NAdam's float32 mu_product to the param dtype, which moves a
    # float64 trajectory by float32 rounding (torch -> torch alike)
    assert_same_run(ours, from_ours, pa, pd, torch.float32 if name == "NAdam" else dtype)


def torch_class(name):
    """torch.optim's class of that name; Lion, which torch lacks, in plain torch ops."""
    return ReferenceLion if name == "Lion" else getattr(torch.optim, name)


@pytest.mark.parametrize("name,kw,over", CONFIGS + [("Lion", kw, over) for kw, over in
                                                    LION_CONFIGS],
                         ids=IDS + [f"Lion-{i}" for i in range(len(LION_CONFIGS))])
def test_round_trip_through_torch_and_back_is_exact(name, kw, over):
    """fastopt -> torch.optim (for Lion: a plain torch Lion) -> fastopt without a step between
    changes nothing: the resumed optimizer takes bit-identical steps."""
    pa, pb = make_params(torch.float32), make_params(torch.float32)
    a = getattr(ft, name)(groups_of(pa, over), **kw)
    for s in range(4):
        set_grads(pa, s)
        a.step()
    with torch.no_grad():
        for p, q in zip(pa, pb):
            q.copy_(p)
    middle = torch_class(name)(groups_of([p.detach().clone().requires_grad_() for p in pa],
                                         over), **kw)
    middle.load_state_dict(through_bytes(a.state_dict()))
    b = getattr(ft, name)(groups_of(pb, over), **kw)
    b.load_state_dict(through_bytes(middle.state_dict()))
    assert b.state_dict()["param_groups"] == a.state_dict()["param_groups"]
    for s in range(4, 8):
        set_grads(pa, s)
        set_grads(pb, s)
        a.step()
        b.step()
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)


@pytest.mark.parametrize("dampening", [0.0, 0.3, 0.9])
def test_torch_sgd_checkpoint_resumes_with_a_damped_step(dampening):
    """torch's SGD keeps no step count; its momentum_buffer means the first (undamped) step
    was taken, so the resumed step is a damped one."""
    pa, pb = make_params(torch.float64), make_params(torch.float64)
    theirs = torch.optim.SGD(pa, lr=0.1, momentum=0.9, dampening=dampening, foreach=False)
    set_grads(pa, 0)
    theirs.step()
    assert "step" not in theirs.state[pa[0]]
    with torch.no_grad():
        for p, q in zip(pa, pb):
            q.copy_(p)
    ours = ft.SGD(pb, lr=0.1, momentum=0.9, dampening=dampening)
    ours.load_state_dict(through_bytes(theirs.state_dict()))
    set_grads(pa, 1)
    set_grads(pb, 1)
    theirs.step()
    ours.step()
    for p, q in zip(pa, pb):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)


def test_fastopt_nadam_checkpoint_loads_into_torch():
    pa = make_params(torch.float32)
    ours = ft.NAdam(pa, lr=1e-2)
    set_grads(pa, 0)
    ours.step()
    sd = ours.state_dict()
    assert float(sd["state"][0]["mu_product"]) == pytest.approx(0.9 * (1 - 0.5 * 0.96 ** 0.004))
    theirs = torch.optim.NAdam([p.detach().clone().requires_grad_() for p in pa], lr=1e-2)
    theirs.load_state_dict(through_bytes(sd))  # torch needs mu_product
    set_grads(theirs.param_groups[0]["params"], 1)
    theirs.step()


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "RMSprop", "NAdam", "Adagrad"])
def test_state_dict_is_torch_shaped(name):
    """Same group keys and values as torch's, and state under torch's keys."""
    kw = dict(lr=0.01, momentum=0.9) if name in ("SGD", "RMSprop") else dict(lr=0.01)
    pa, pb = make_params(torch.float32), make_params(torch.float32)
    ours, theirs = getattr(ft, name)(pa, **kw), getattr(torch.optim, name)(pb, **kw)
    assert ours.defaults == theirs.defaults
    for o, ps in ((ours, pa), (theirs, pb)):
        set_grads(ps, 0)
        o.step()
    a, b = ours.state_dict(), theirs.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert sorted(a["state"]) == sorted(b["state"])
    for k in b["state"]:
        assert set(a["state"][k]) == set(b["state"][k])
        assert {key: v.dtype for key, v in a["state"][k].items() if key != "step"} == \
            {key: v.dtype for key, v in b["state"][k].items() if key != "step"}


def test_named_parameters_round_trip():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    ours = ft.Adam(m.named_parameters(), lr=0.1)
    assert ours.param_groups[0]["param_names"] == ["weight", "bias"]
    m(torch.randn(4, 3)).sum().backward()
    ours.step()
    theirs = torch.optim.Adam(copy.deepcopy(m).named_parameters(), lr=0.1)
    theirs.load_state_dict(through_bytes(ours.state_dict()))
    assert theirs.param_groups[0]["param_names"] == ["weight", "bias"]
    ours.load_state_dict(through_bytes(theirs.state_dict()))


def assert_same_lion(ours, theirs, pa, pb):
    for i, (p, q) in enumerate(zip(pa, pb)):
        assert torch.equal(p, q), f"param {i}"
        sa, sb = ours.state.get(p, {}), theirs.state.get(q, {})
        assert set(sa) == set(sb), f"param {i}: state keys"
        if sb:
            assert torch.equal(sa["exp_avg"], sb["exp_avg"]), f"param {i}: exp_avg"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kw,over", LION_CONFIGS, ids=[f"Lion-{i}" for i in
                                                       range(len(LION_CONFIGS))])
def test_lion_trajectory_and_checkpoints_both_ways(kw, over, dtype, backend):
    """As test_trajectory_and_checkpoints_both_ways, against Lion in plain torch ops: the same
    trajectory bit for bit, and checkpoints that load both ways mid-run and continue it."""
    pa, pb = make_params(dtype), make_params(dtype)
    ours = ft.Lion(groups_of(pa, over), backend=backend, **kw)
    theirs = ReferenceLion(groups_of(pb, over), **kw)
    for s in range(6):
        set_grads(pa, s)
        set_grads(pb, s)
        ours.step()
        theirs.step()
        assert_same_lion(ours, theirs, pa, pb)
    pc = [p.detach().clone().requires_grad_() for p in pb]
    pd = [p.detach().clone().requires_grad_() for p in pa]
    from_ref = ft.Lion(groups_of(pc, over), backend=backend, **kw)
    from_ref.load_state_dict(through_bytes(theirs.state_dict()))
    from_ours = ReferenceLion(groups_of(pd, over), **kw)
    from_ours.load_state_dict(through_bytes(ours.state_dict()))
    assert [dict(g, params=None) for g in from_ref.param_groups] == \
        [dict(g, params=None) for g in theirs.param_groups]
    assert from_ref.state_dict()["state"].keys() == theirs.state_dict()["state"].keys()
    for s in range(6, 12):
        for ps in (pa, pb, pc, pd):
            set_grads(ps, s)
        for o in (ours, theirs, from_ref, from_ours):
            o.step()
    assert_same_lion(ours, theirs, pa, pb)
    assert_same_lion(from_ref, theirs, pc, pb)
    assert_same_lion(ours, from_ours, pa, pd)
    assert "exp_avg" in ours.state[pa[2]] and not ours.state.get(pa[3])  # 3 never had a grad
