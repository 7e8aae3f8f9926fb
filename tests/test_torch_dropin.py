"""fastopt.torch as a drop-in for torch.optim: signatures, options, refusals that write nothing,
hooks, schedulers, copies, threads, and parameters changed under a live optimizer."""
import copy
import inspect
import io
import math
import pickle
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastopt.torch")
from torch_snapshot import ReferenceLion, snapshot  # noqa: E402

from fastopt import GradNormMonitor, _dispatch  # noqa: E402
from fastopt import functional as F  # noqa: E402

#: the classes with a torch.optim namesake, compared against it
TORCH_NAMES = ["Adam", "AdamW", "SGD", "RMSprop", "NAdam", "Adagrad"]
#: every class (Lion: torch has none; tests that need a torch namesake leave it out)
NAMES = TORCH_NAMES + ["Lion"]
BACKENDS = [b for b in ("cpp", "numba") if _dispatch.unavailable_reason(b) is None]
#: options that need another one to be valid
NEEDS = {"nesterov": dict(momentum=0.9), "dampening": dict(momentum=0.9)}
#: a value other than the default for every torch option; None: refused when set
ALT = {"lr": 0.05, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.1, "momentum": 0.5,
       "dampening": 0.2, "nesterov": True, "alpha": 0.9, "momentum_decay": 0.01,
       "maximize": True, "decoupled_weight_decay": True, "foreach": True, "fused": True,
       "lr_decay": 0.3, "initial_accumulator_value": 0.4,
       "amsgrad": None, "centered": None, "capturable": None, "differentiable": None}
OWN = ("max_grad_norm", "nonfinite", "monitor", "backend", "semantics", "master_weights", "state_dtype",
       "stochastic_rounding", "seed")


def torch_options(name):
    """The options of torch's class; for Lion, which torch lacks, those of ours (but fastopt's
    own keyword-only ones)."""
    cls = getattr(torch.optim, name) if name in TORCH_NAMES else getattr(ft, name)
    return [p for p in inspect.signature(cls).parameters.values()
            if p.name != "params" and not (name not in TORCH_NAMES and p.name in OWN)]


def torch_counterpart(name):
    """torch's class of that name; for Lion, which torch lacks, Lion in plain torch ops (the
    hooks, schedulers and the rest of torch.optim.Optimizer's machinery are torch's own)."""
    return ReferenceLion if name == "Lion" else getattr(torch.optim, name)


def make_params(dtype=torch.float32, seed=0, shapes=((3,), (4, 5), (17,), (2, 2))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def set_grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = (0.5 * p.detach() + torch.randn(p.shape, generator=g, dtype=p.dtype)).clone()


def run(opt, params, steps, start=0):
    for s in range(start, start + steps):
        set_grads(params, s)
        opt.step()


def twin(params):
    return [p.detach().clone().requires_grad_() for p in params]






def two_groups(params, **over):
    return [{"params": params[:2]}, {"params": params[2:], **over}]


# -- signatures and options --------------------------------------------------------------------
@pytest.mark.parametrize("name", TORCH_NAMES)
def test_signature_is_torchs_plus_keyword_only_options(name):
    ours = list(inspect.signature(getattr(ft, name)).parameters.values())
    theirs = list(inspect.signature(getattr(torch.optim, name)).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[:len(theirs)]] == \
        [(p.name, p.kind, p.default) for p in theirs]
    assert [p.name for p in ours[len(theirs):]] == list(OWN)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs):])
    assert issubclass(getattr(ft, name), getattr(torch.optim, name))


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_defaults_passed_positionally_as_torch_takes_them(name):
    """Every option torch takes positionally, given positionally at its default: the same
    groups as torch builds, and the same defaults dict."""
    opts = [p for p in torch_options(name) if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    args = [p.default for p in opts]
    ours = getattr(ft, name)(make_params(), *args)
    theirs = getattr(torch.optim, name)(make_params(), *args)
    assert ours.defaults == theirs.defaults
    assert [dict(g, params=None) for g in ours.param_groups] == \
        [dict(g, params=None) for g in theirs.param_groups]
    with pytest.raises(TypeError):
        getattr(ft, name)(make_params(), *args, 0.5)  # one more than torch takes
    with pytest.raises(TypeError, match="no_such_option"):
        getattr(ft, name)(make_params(), no_such_option=1)


@pytest.mark.parametrize("name,option", [(n, p.name) for n in TORCH_NAMES
                                         for p in torch_options(n)])
def test_every_torch_option(name, option):
    """Each option torch has: honoured (torch's trajectory), accepted and ignored (foreach,
    fused), or refused with a ValueError that names it, before anything is built."""
    assert option in ALT, f"torch has a new option {option!r}: decide what fastopt does with it"
    value = ALT[option]
    if value is None:
        with pytest.raises(ValueError, match=option):
            getattr(ft, name)(make_params(), **{option: True})
        return
    kw = {**NEEDS.get(option, {}), option: value}
    pa, pb = make_params(), make_params()
    ours = getattr(ft, name)(pa, **kw)
    theirs = getattr(torch.optim, name)(pb, **({"foreach": False} if option not in
                                                ("foreach", "fused") else {}), **kw)
    assert ours.param_groups[0][option] == theirs.param_groups[0][option]
    run(ours, pa, 4)
    run(theirs, pb, 4)
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("option", [p.name for p in torch_options("Lion")])
def test_every_lion_option(option):
    """Lion's options, each away from its default: the trajectory of Lion in plain torch ops,
    bit for bit."""
    pa, pb = make_params(), make_params()
    ours, theirs = ft.Lion(pa, **{option: ALT[option]}), ReferenceLion(pb, **{option: ALT[option]})
    assert ours.param_groups[0][option] == theirs.param_groups[0][option] == ALT[option]
    run(ours, pa, 4)
    run(theirs, pb, 4)
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)
    assert not torch.equal(pa[0], make_params()[0])


def test_adam_decoupled_weight_decay_is_adamw():
    pa, pb = make_params(), make_params()
    run(ft.Adam(pa, lr=0.01, weight_decay=0.3, decoupled_weight_decay=True), pa, 5)
    run(ft.AdamW(pb, lr=0.01, weight_decay=0.3), pb, 5)
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)


def test_foreach_and_fused_together_refused():
    with pytest.raises(ValueError, match="foreach.*fused"):
        ft.Adam(make_params(), foreach=True, fused=True)


def bad_numbers(lo_only=True):
    vals = [math.nan, math.inf, -math.inf, 10**400, "0.1", None, [0.1], b"1", 1j,
            torch.tensor([0.1, 0.2]), torch.tensor(1 + 1j), torch.tensor(True), True,
            np.float64("nan")]
    return vals + ([-1.0, -1e-300] if lo_only else [])


def bad_values(name, option):
    if option == "betas":
        return [(1.0, 0.9), (0.9, 1.0), (math.nan, 0.9), (0.9,), (0.9, 0.9, 0.9), "ab", 0.9,
                (0.9, 10**400), (-0.1, 0.9), None, torch.tensor([0.9, 0.99]), (0.9, "x")]
    if option == "alpha":
        return bad_numbers() + [1.0, 1.5]
    if option in ("lr", "eps", "weight_decay", "momentum", "dampening", "momentum_decay",
                  "lr_decay", "initial_accumulator_value"):
        return bad_numbers()
    if option in ("maximize", "nesterov", "decoupled_weight_decay"):
        return ["yes", 2, None, 0.5, torch.tensor(True)]
    if option in ("foreach", "fused"):
        return ["yes", 2, 0.5]
    return [True]  # refused flags


CTOR_CASES = [(n, p.name, v) for n in NAMES for p in torch_options(n)
              for v in bad_values(n, p.name)]


@pytest.mark.parametrize("name,option,value", CTOR_CASES,
                         ids=[f"{n}-{o}-{i}" for i, (n, o, _) in enumerate(CTOR_CASES)])
def test_bad_option_refused_everywhere_naming_it(name, option, value):
    """In the constructor, in add_param_group, and in a group edited before step(): a
    TypeError or ValueError naming the option, and nothing changed."""
    kw = NEEDS.get(option, {}) if option == "nesterov" else {}
    with pytest.raises((TypeError, ValueError), match=option):
        getattr(ft, name)(make_params(), **kw, **{option: value})
    params = make_params()
    ref_params = twin(params)
    opt = getattr(ft, name)(two_groups(params), **kw)
    run(opt, params, 2)
    before = snapshot(opt)
    extra = torch.zeros(3, requires_grad=True)
    with pytest.raises((TypeError, ValueError), match=option):
        opt.add_param_group({"params": [extra], option: value})
    assert snapshot(opt) == before
    group = opt.param_groups[1]
    good = group[option]
    group[option] = value
    set_grads(params, 2)
    with pytest.raises((TypeError, ValueError), match=option):
        opt.step()
    group[option] = good
    assert snapshot(opt) == before  # group 0 was fine, and still nothing was written
    ref = getattr(ft, name)(two_groups(ref_params), **kw)
    run(ref, ref_params, 2)
    run(opt, params, 2, start=2)
    run(ref, ref_params, 2, start=2)
    for p, q in zip(params, ref_params):
        assert torch.equal(p, q)


FASTOPT_BAD = [("max_grad_norm", v) for v in [0, -1.0, math.nan, math.inf, "1", 10**400, True]] \
    + [("semantics", v) for v in ["optax", 1, None]] \
    + [("backend", v) for v in ["gpu", 3, "CPP"]] + [("monitor", v) for v in [object(), 1]] \
    + [("nonfinite", v) for v in ["Skip", "warn", 1, True, ["skip"]]]


@pytest.mark.parametrize("option,value", FASTOPT_BAD)
def test_bad_fastopt_option_refused_naming_it(option, value):
    with pytest.raises((TypeError, ValueError), match=option):
        ft.Adam(make_params(), **{option: value})


def test_tensor_lr_and_betas():
    pa, pb = make_params(), make_params()
    ours = ft.Adam(pa, lr=torch.tensor(0.02), betas=(torch.tensor(0.8), torch.tensor(0.9)))
    theirs = torch.optim.Adam(pb, lr=torch.tensor(0.02), foreach=False,
                              betas=(torch.tensor(0.8), torch.tensor(0.9)))
    sa = torch.optim.lr_scheduler.StepLR(ours, 2, 0.5)
    sb = torch.optim.lr_scheduler.StepLR(theirs, 2, 0.5)
    for s in range(6):
        for o, ps, sch in ((ours, pa, sa), (theirs, pb, sb)):
            set_grads(ps, s)
            o.step()
            sch.step()
    assert torch.is_tensor(ours.param_groups[0]["lr"])
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# -- add_param_group ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad,err", [
    (lambda: torch.zeros(3, dtype=torch.int32), TypeError),  # 16-bit: test_torch_precision
    (lambda: torch.zeros(4, 6).t().requires_grad_(), ValueError),
    (lambda: torch.zeros(3, dtype=torch.complex64, requires_grad=True), TypeError),
])
@pytest.mark.parametrize("name", NAMES)
def test_add_param_group_refusal_keeps_nothing(name, bad, err):
    params = make_params()
    ref_params = twin(params)
    opt = getattr(ft, name)(params, lr=0.01)
    run(opt, params, 1)
    before = snapshot(opt)
    with pytest.raises(err):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True), bad()]})
    assert snapshot(opt) == before and len(opt.param_groups) == 1
    ref = getattr(ft, name)(ref_params, lr=0.01)
    run(ref, ref_params, 1)
    run(opt, params, 1, start=1)  # the next step updates group 0, and does not raise
    run(ref, ref_params, 1, start=1)
    for p, q in zip(params, ref_params):
        assert torch.equal(p, q)


def test_parameters_listed_twice_or_sharing_memory_refused():
    w = torch.zeros(6, requires_grad=True)
    # torch warns that duplicates will be an error some day; here they are one already
    with pytest.warns(UserWarning, match="duplicate"), pytest.raises(ValueError, match="again"):
        ft.Adam([w, w])
    base = torch.zeros(8)
    a, b = base[:5].requires_grad_(), base[3:].requires_grad_()
    with pytest.raises(ValueError, match="memory"):
        ft.SGD([{"params": [a, b]}], lr=0.1)
    opt = ft.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="more than one"):  # torch's own check
        opt.add_param_group({"params": [a]})


# -- hooks, closures, schedulers ---------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_hooks_fire_in_torchs_order(name):
    logs = []
    for cls in (getattr(ft, name), torch_counterpart(name)):
        log = []
        params = make_params()
        opt = cls(params, lr=0.01)
        opt.register_step_pre_hook(lambda o, a, k: log.append(("pre", _steps(o))))
        opt.register_step_post_hook(lambda o, a, k: log.append(("post", _steps(o))))
        opt.register_state_dict_pre_hook(lambda o: log.append("sd_pre"))
        opt.register_state_dict_post_hook(lambda o, sd: log.append("sd_post"))
        opt.register_load_state_dict_pre_hook(lambda o, sd: log.append("load_pre"))
        opt.register_load_state_dict_post_hook(lambda o: log.append("load_post"))
        run(opt, params, 2)
        opt.load_state_dict(opt.state_dict())
        logs.append(log)
    assert logs[0] == logs[1]
    first = 0 if name == "Adagrad" else None  # torch's Adagrad makes its state in __init__
    assert logs[0][:4] == [("pre", first), ("post", 1), ("pre", 1), ("post", 2)] or \
        name in ("SGD", "Lion")  # no step count kept
    assert logs[0][4:] == ["sd_pre", "sd_post", "load_pre", "load_post"]


def _steps(opt):
    st = opt.state.get(opt.param_groups[0]["params"][0], {})
    return int(st["step"]) if "step" in st else None


@pytest.mark.parametrize("name", NAMES)
def test_step_pre_hook_changes_are_respected(name):
    """A pre-hook that rescales gradients and edits the rate: the step uses what it left."""
    def hook(opt, args, kwargs):
        for g in opt.param_groups:
            g["lr"] = 0.03
            for p in g["params"]:
                p.grad.mul_(-2.0)

    pa, pb = make_params(), make_params()
    ours, theirs = getattr(ft, name)(pa, lr=0.01), torch_counterpart(name)(pb, lr=0.01)
    for o in (ours, theirs):
        o.register_step_pre_hook(hook)
    run(ours, pa, 3)
    run(theirs, pb, 3)
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_state_dict_hooks_can_replace_the_dict():
    params = make_params()
    opt = ft.Adam(params, lr=0.01)
    run(opt, params, 1)
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    assert opt.state_dict()["extra"] == 1

    def lower_lr(o, sd):
        sd = copy.deepcopy(sd)
        sd["param_groups"][0]["lr"] = 0.001
        return sd

    opt.register_load_state_dict_pre_hook(lower_lr)
    opt.load_state_dict(opt.state_dict())
    assert opt.param_groups[0]["lr"] == 0.001
    opt.register_load_state_dict_pre_hook(lambda o, sd: {**sd, "param_groups": []})
    before = snapshot(opt)
    with pytest.raises(ValueError, match="param groups"):  # checked after the hooks ran
        opt.load_state_dict(opt.state_dict())
    assert snapshot(opt) == before


def test_closure_loss_as_torch():
    pa, pb = make_params(), make_params()
    ours, theirs = ft.SGD(pa, lr=0.1, momentum=0.9), torch.optim.SGD(pb, lr=0.1, momentum=0.9)
    for _ in range(3):
        for o, ps in ((ours, pa), (theirs, pb)):
            def closure(ps=ps, o=o):
                o.zero_grad()
                loss = sum(((p - 1) ** 2).sum() for p in ps)
                loss.backward()
                return loss
            out = o.step(closure)
        assert torch.is_tensor(out)
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0 / (1 + e)),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 8, 1e-4),
    # cycling momentum (or beta1) where the optimizer has one: Adagrad has neither
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.05, total_steps=12,
        cycle_momentum=any(k in o.defaults for k in ("momentum", "betas"))),
    "ReduceLROnPlateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=1,
                                                                              factor=0.5),
}
SCHED_OPTS = [("Adam", {}), ("AdamW", {}), ("SGD", dict(momentum=0.9)),
              ("SGD", dict(momentum=0.9, nesterov=True)), ("RMSprop", dict(momentum=0.5)),
              ("NAdam", {}), ("Adagrad", dict(lr_decay=0.1)), ("Lion", dict(weight_decay=0.5))]


@pytest.mark.parametrize("sched", list(SCHEDULERS))
@pytest.mark.parametrize("name,kw", SCHED_OPTS, ids=[f"{n}-{i}" for i, (n, _) in
                                                     enumerate(SCHED_OPTS)])
def test_lr_schedulers_give_torchs_trajectory(name, kw, sched):
    """OneCycleLR also cycles Adam's, NAdam's and Lion's beta1 and SGD's/RMSprop's momentum
    every step (NAdam's mu_product then follows the changing beta1, as torch's does). Lion is
    compared with Lion in plain torch ops."""
    pa, pb = make_params(torch.float64), make_params(torch.float64)
    ours = getattr(ft, name)(pa, lr=0.01, **kw)
    theirs = torch_counterpart(name)(pb, lr=0.01, **({} if name == "Lion" else
                                                      dict(foreach=False)), **kw)
    sa, sb = SCHEDULERS[sched](ours), SCHEDULERS[sched](theirs)
    for s in range(12):
        for o, ps, sch in ((ours, pa, sa), (theirs, pb, sb)):
            set_grads(ps, s)
            o.step()
            sch.step(1.0) if sched == "ReduceLROnPlateau" else sch.step()
    assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8)
    if name == "NAdam":
        p, q = pa[0], pb[0]
        assert float(ours.state[p]["mu_product"]) == float(theirs.state[q]["mu_product"])


def test_grad_scaler_unscales_for_us_even_with_fused():
    """torch's fused=True tells GradScaler the step unscales; ours does not, so GradScaler must
    still unscale: the trajectory is torch's."""
    pa, pb = make_params(), make_params()
    ours = ft.Adam(pa, lr=0.01, fused=True)
    theirs = torch.optim.Adam(pb, lr=0.01, foreach=False)
    for o, ps in ((ours, pa), (theirs, pb)):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        for _ in range(3):
            o.zero_grad()
            scaler.scale(sum(((p - 1) ** 2).sum() for p in ps)).backward()
            scaler.step(o)
            scaler.update()
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# -- copies --------------------------------------------------------------------------------------
def _torch_save(opt):
    buf = io.BytesIO()
    torch.save(opt, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("make_copy", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o)),
                                       _torch_save], ids=["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("name", NAMES)
def test_copies_keep_options_and_continue_independently(name, make_copy):
    params = make_params()
    opt = getattr(ft, name)(two_groups(params, lr=0.003), lr=0.01, max_grad_norm=0.5,
                            monitor=GradNormMonitor(), backend=BACKENDS[-1], nonfinite="raise")
    run(opt, params, 3)
    dup = make_copy(opt)
    assert (dup.max_grad_norm, dup.backend, dup.semantics, dup.nonfinite) == \
        (0.5, BACKENDS[-1], "torch", "raise")
    assert isinstance(dup.monitor, GradNormMonitor) and dup.monitor is not opt.monitor
    dparams = [p for g in dup.param_groups for p in g["params"]]
    assert all(p is not q and torch.equal(p, q) for p, q in zip(params, dparams))
    before = [p.detach().clone() for p in params]
    run(dup, dparams, 2, start=3)  # the copy steps alone: the original does not move
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    run(opt, params, 2, start=3)
    for p, q in zip(params, dparams):
        assert torch.equal(p, q)
    assert len(dup.monitor.steps) == len(opt.monitor.steps) == 5


def test_pickle_of_an_older_fastopt_torch_steps():
    """An object pickled before our options travelled with it (torch's state only)."""
    params = make_params()
    opt = ft.Adam(params, lr=0.01)
    run(opt, params, 1)
    state = opt.__getstate__()
    del state["fastopt"]
    old = object.__new__(ft.Adam)
    old.__setstate__(copy.deepcopy(state))
    oparams = old.param_groups[0]["params"]
    run(old, oparams, 1, start=1)
    run(opt, params, 1, start=1)
    assert all(torch.equal(p, q) for p, q in zip(params, oparams))


# -- threads -------------------------------------------------------------------------------------
def test_concurrent_step_on_one_optimizer_refused(monkeypatch):
    params = make_params()
    opt = ft.Adam(params, lr=0.01)
    set_grads(params, 0)
    inside, release = threading.Event(), threading.Event()
    real_run = F.run

    def slow_run(*a, **k):
        inside.set()
        release.wait(10)
        return real_run(*a, **k)

    monkeypatch.setattr(F, "run", slow_run)
    t = threading.Thread(target=opt.step)
    t.start()
    assert inside.wait(10)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            opt.step()
        with pytest.raises(RuntimeError, match="already running"):
            opt.load_state_dict(opt.state_dict())
    finally:
        release.set()
        t.join()
    assert float(opt.state[params[0]]["step"]) == 1
    opt.step()  # the guard was released
    assert float(opt.state[params[0]]["step"]) == 2


def test_threads_hammering_one_optimizer_count_right():
    params = [torch.zeros(4096, requires_grad=True) for _ in range(4)]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = ft.Adam(params, lr=0.01)
    ok = [0, 0]

    def work(k):
        for _ in range(40):
            try:
                opt.step()
                ok[k] += 1
            except RuntimeError:
                pass

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = sum(ok)
    assert all(float(opt.state[p]["step"]) == n for p in params)
    ref = [torch.zeros(4096, requires_grad=True) for _ in range(4)]
    for p in ref:
        p.grad = torch.ones_like(p)
    ropt = ft.Adam(ref, lr=0.01)
    for _ in range(n):
        ropt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, ref))


def test_two_optimizers_in_two_threads_match_sequential():
    def job(name, seed):
        params = make_params(seed=seed, shapes=((3000,), (7,), (129, 3)))
        opt = getattr(ft, name)(params, lr=0.01)
        run(opt, params, 30)
        return params

    expected = [job("Adam", 1), job("NAdam", 2)]
    got = [None, None]

    def work(k, name, seed):
        got[k] = job(name, seed)

    threads = [threading.Thread(target=work, args=(0, "Adam", 1)),
               threading.Thread(target=work, args=(1, "NAdam", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e, g in zip(expected, got):
        assert all(torch.equal(p, q) for p, q in zip(e, g))


# -- params and state changed under the optimizer ------------------------------------------------
CHANGES = {
    "bigger": lambda p: torch.zeros(1 << 16, dtype=p.dtype),
    "same storage, fewer elements": lambda p: p.data[:2],
    "another dtype": lambda p: p.data.double(),
    "not contiguous": lambda p: p.data.reshape(4, 5).t(),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("name", NAMES)
def test_param_replaced_under_the_optimizer_refused(name, change, backend):
    params = make_params()
    kw = dict(momentum=0.9) if name in ("SGD", "RMSprop") else {}
    opt = getattr(ft, name)(two_groups(params), lr=0.01, backend=backend, **kw)
    run(opt, params, 2)
    p = params[1]  # shape (4, 5), in group 0
    p.data = CHANGES[change](p)
    for q in params:
        q.grad = torch.ones_like(q)
    before = snapshot(opt)
    with pytest.raises((TypeError, ValueError), match="shape|dtype|contiguous|float"):
        opt.step()
    assert snapshot(opt) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_sgd_param_replaced_with_a_stale_grad_refused(backend):
    """Without state the grad's shape is what must match."""
    params = make_params()
    opt = ft.SGD(params, lr=0.1, backend=backend)
    run(opt, params, 1)
    params[2].data = torch.zeros(1 << 16)  # its grad is still the old (17,)
    before = snapshot(opt)
    with pytest.raises(ValueError, match="grad has shape"):
        opt.step()
    assert snapshot(opt) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_param_with_freed_storage_refused(backend):
    """A storage resized to 0 (as FSDP frees params) under a shape that still claims elements:
    refused before a kernel writes through its null pointer (torch itself would crash)."""
    params = make_params()
    opt = ft.Adam(params, lr=0.01, backend=backend)
    for p in params:
        p.grad = torch.ones_like(p)
    params[2].untyped_storage().resize_(0)
    before = snapshot(opt)
    with pytest.raises(ValueError, match="storage"):
        opt.step()
    assert snapshot(opt) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_of_a_smaller_models_state_refused(backend):
    small = ft.Adam([torch.zeros(4, requires_grad=True)], backend=backend)
    small.param_groups[0]["params"][0].grad = torch.ones(4)
    small.step()
    big = ft.Adam([torch.zeros(65536, requires_grad=True)], backend=backend)
    before = snapshot(big)
    with pytest.raises(ValueError, match="shape"):
        big.load_state_dict(small.state_dict())
    assert snapshot(big) == before
    big.param_groups[0]["params"][0].grad = torch.ones(65536)
    big.step()


@pytest.mark.parametrize("edit,match", [
    (lambda st: st.__setitem__("exp_avg", torch.zeros(3)), "shape"),
    (lambda st: st.__setitem__("exp_avg", torch.zeros(4, 5, dtype=torch.float64)), "float"),
    (lambda st: st.__setitem__("exp_avg_sq", torch.zeros(5, 4).t()), "shape|contiguous"),
    (lambda st: st.__setitem__("step", torch.tensor(math.nan)), "step"),
    (lambda st: st.__setitem__("step", torch.tensor(-3.0)), "step"),
    (lambda st: st.pop("exp_avg"), "exp_avg"),
    (lambda st: st["exp_avg"].set_(torch.zeros(3)), "shape"),  # same object, other memory
    (lambda st: st["step"].set_(torch.tensor([1.0, 2.0], dtype=st["step"].dtype)), "step"),
])
def test_state_edited_by_hand_refused(edit, match):
    params = make_params()
    opt = ft.Adam(params, lr=0.01)
    run(opt, params, 1)
    edit(opt.state[params[1]])
    set_grads(params, 1)
    before = snapshot(opt)
    with pytest.raises((TypeError, ValueError), match=match):
        opt.step()
    assert snapshot(opt) == before


EDITS = {
    "shape": lambda st, key: st.__setitem__(key, torch.zeros(3)),
    "float": lambda st, key: st.__setitem__(key, torch.zeros(4, 5, dtype=torch.float64)),
    "lacks": lambda st, key: st.pop(key),  # Lion's state is then empty: a fresh param's
    "other memory": lambda st, key: st[key].set_(torch.zeros(3)),
}
EDIT_CASES = [("Adagrad", "sum", e) for e in EDITS] + [("Lion", "exp_avg", e) for e in EDITS
                                                       if e != "lacks"]


@pytest.mark.parametrize("name,key,edit", EDIT_CASES)
def test_state_edited_by_hand_refused_adagrad_lion(name, key, edit):
    match = "shape" if edit == "other memory" else edit
    edit = EDITS[edit]
    params = make_params()
    opt = getattr(ft, name)(params, lr=0.01)
    run(opt, params, 1)
    edit(opt.state[params[1]], key)
    set_grads(params, 1)
    before = snapshot(opt)
    with pytest.raises((TypeError, ValueError), match=match):
        opt.step()
    assert snapshot(opt) == before


def test_step_count_edited_in_place_is_read():
    """torch reads state['step'] at every step; so do we, even when it is edited in place."""
    pa, pb = make_params(), make_params()
    ours, theirs = ft.Adam(pa, lr=0.01), torch.optim.Adam(pb, lr=0.01, foreach=False)
    run(ours, pa, 2)
    run(theirs, pb, 2)
    for o, ps in ((ours, pa), (theirs, pb)):
        o.state[ps[0]]["step"].fill_(0)
    run(ours, pa, 2, start=2)
    run(theirs, pb, 2, start=2)
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert float(ours.state[pa[0]]["step"]) == 2 and float(ours.state[pa[1]]["step"]) == 4


def test_fastopt_semantics_nadam_decouples_weight_decay():
    """semantics='fastopt' with decoupled_weight_decay: theta <- (1 - lr wd) theta - update,
    the update being the one without decay (it was coupled L2 decay before)."""
    p0 = make_params(torch.float64)
    pd, pn, pc = twin(p0), twin(p0), twin(p0)
    lr, wd = 0.01, 0.3
    for ps, kw in ((pd, dict(weight_decay=wd, decoupled_weight_decay=True)), (pn, {}),
                   (pc, dict(weight_decay=wd))):
        opt = ft.NAdam(ps, lr=lr, semantics="fastopt", **kw)
        set_grads(ps, 0)
        for p, q in zip(ps, p0):  # the same gradient for all three
            p.grad = (0.5 * q.detach() + 1.0).clone()
        opt.step()
    for d, n, c, q in zip(pd, pn, pc, p0):
        torch.testing.assert_close(d, n - lr * wd * q.detach(), rtol=1e-12, atol=1e-14)
        assert not torch.allclose(d, c)


@pytest.mark.parametrize("params,err", [
    (lambda: torch.zeros(3, requires_grad=True), TypeError),  # a tensor, not a list of them
    (lambda: [], ValueError),
    (lambda: [1.0, 2.0], TypeError),
    (lambda: None, TypeError),
    (lambda: [{"params": {torch.zeros(2, requires_grad=True)}}], TypeError),  # sets: no order
    (lambda: [torch.zeros(2, requires_grad=True) * 2], ValueError),  # not a leaf
    (lambda: [torch.zeros(2, dtype=torch.int64)], TypeError),
    (lambda: [{"params": [torch.zeros(2, requires_grad=True)], "lr": math.nan}], ValueError),
])
@pytest.mark.parametrize("name", NAMES)
def test_bad_params_refused(name, params, err):
    with pytest.raises(err):
        getattr(ft, name)(params())
