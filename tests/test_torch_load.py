"""fastopt.torch's load_state_dict is transactional: every corrupted field of a checkpoint is
refused with nothing changed (params, state, groups byte-identical) and the optimizer steps on
as if nothing had happened; older and partial torch checkpoints load as torch loads them;
checkpoints asking for what fastopt does not implement are refused."""
import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastopt.torch")
from torch_snapshot import ReferenceLion, snapshot  # noqa: E402

#: class, options; the state keys it keeps, the group options it reads
SETUPS = {
    "Adam": dict(lr=0.01, weight_decay=0.1),
    "AdamW": dict(lr=0.01),
    "SGD": dict(lr=0.05, momentum=0.9, dampening=0.2),
    "RMSprop": dict(lr=0.01, momentum=0.5),
    "NAdam": dict(lr=0.01, decoupled_weight_decay=True, weight_decay=0.1),
    "Adagrad": dict(lr=0.01, lr_decay=0.1, initial_accumulator_value=0.1),
    "Lion": dict(lr=0.001, weight_decay=0.1),
}
SHAPES = [(3,), (4, 5), (17,), (2, 2)]


def torch_class(name):
    """torch.optim's class; for Lion, which torch lacks, Lion in plain torch ops."""
    return ReferenceLion if name == "Lion" else getattr(torch.optim, name)


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).requires_grad_() for s in SHAPES]


def set_grads(params, step):
    g = torch.Generator().manual_seed(7 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def groups(params):
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.003}]






def trained(name, steps=3):
    params = make_params()
    opt = getattr(ft, name)(groups(params), **SETUPS[name])
    for s in range(steps):
        set_grads(params, s)
        opt.step()
    return opt, params


def checkpoint(name):
    """A torch.optim checkpoint of the same setup, a little further along."""
    params = make_params(1)
    opt = torch_class(name)(groups(params), **SETUPS[name])
    for s in range(5):
        set_grads(params, 10 + s)
        opt.step()
    return opt.state_dict()


def _set(path, value):
    def edit(sd):
        *head, last = path
        obj = sd
        for k in head:
            obj = obj[k]
        if value is _DELETE:
            del obj[last]
        else:
            obj[last] = value(obj[last]) if callable(value) and not torch.is_tensor(value) \
                else value
        return sd
    return edit


_DELETE = object()
GROUP1_PARAM = 2  # the first param id of group 1: group 0 alone would load fine

STRUCTURE = {
    "not a dict": lambda sd: [sd],
    "None": lambda sd: None,
    "no state": _set(("state",), _DELETE),
    "no param_groups": _set(("param_groups",), _DELETE),
    "state a list": lambda sd: {**sd, "state": list(sd["state"].values())},
    "param_groups a dict": lambda sd: {**sd, "param_groups": dict(enumerate(sd["param_groups"]))},
    "a group not a dict": _set(("param_groups", 1), "group"),
    "a group fewer": lambda sd: {**sd, "param_groups": sd["param_groups"][:1]},
    "a group more": lambda sd: {**sd, "param_groups": sd["param_groups"] + [
        dict(sd["param_groups"][1], params=[])]},
    "params not a list": _set(("param_groups", 1, "params"), 3),
    "params missing": _set(("param_groups", 1, "params"), _DELETE),
    "a param fewer": _set(("param_groups", 1, "params"), lambda ids: ids[:-1]),
    "a param more": _set(("param_groups", 1, "params"), lambda ids: ids + [99]),
    "an id twice": _set(("param_groups", 1, "params"), lambda ids: [0] + ids[1:]),
    "an unhashable id": _set(("param_groups", 1, "params"), lambda ids: [[0]] + ids[1:]),
    "a bool id": _set(("param_groups", 1, "params"), lambda ids: [True] + ids[1:]),
    "state of an unknown id": _set(("state", 99), {"step": torch.tensor(1.0)}),
    "state entry not a dict": _set(("state", GROUP1_PARAM), 5),
    "state entry a list": _set(("state", GROUP1_PARAM), [torch.zeros(17)]),
}

STEP_VALUES = [_DELETE, math.nan, math.inf, -1, -1.0, 1.5, "3", None, 10**400, 2**60,
               torch.tensor([1.0, 2.0]), torch.tensor(1 + 1j), True, torch.tensor(math.nan),
               torch.tensor(-2.0), object(), np.float64(2.5)]
TENSOR_VALUES = [torch.zeros(18), torch.zeros(17, 1), torch.zeros(1, 17),
                 torch.zeros(17, dtype=torch.int64), torch.zeros(17, dtype=torch.complex64),
                 torch.zeros(17, dtype=torch.bool), "x", 0.0, np.zeros(17, np.float32),
                 torch.tensor(0.0), torch.zeros(17, device="meta"),
                 torch.zeros(17).to_sparse(), [0.0] * 17]
MU_VALUES = [math.nan, 2.0, -0.1, "x", torch.tensor([1.0, 2.0]), math.inf, None, 1j]


def state_cases(name):
    cases = {}
    keys = {"Adam": ["exp_avg", "exp_avg_sq"], "AdamW": ["exp_avg", "exp_avg_sq"],
            "SGD": ["momentum_buffer"], "RMSprop": ["square_avg", "momentum_buffer"],
            "NAdam": ["exp_avg", "exp_avg_sq"], "Adagrad": ["sum"], "Lion": ["exp_avg"]}[name]
    if name not in ("SGD", "Lion"):  # torch's SGD keeps no step, nor does Lion
        for i, v in enumerate(STEP_VALUES):
            cases[f"step-{i}"] = _set(("state", GROUP1_PARAM, "step"), v)
    for key in keys:
        for i, v in enumerate(TENSOR_VALUES):
            cases[f"{key}-{i}"] = _set(("state", GROUP1_PARAM, key), v)
        if name not in ("SGD", "RMSprop", "Lion"):  # Lion's entry is then empty: a new param
            cases[f"{key}-missing"] = _set(("state", GROUP1_PARAM, key), _DELETE)
    if name == "NAdam":
        for i, v in enumerate(MU_VALUES):
            cases[f"mu_product-{i}"] = _set(("state", GROUP1_PARAM, "mu_product"), v)
    return cases


NUMBER_VALUES = [math.nan, math.inf, -1.0, 10**400, "0.1", None, torch.tensor([0.1, 0.2]), 1j,
                 True]
GROUP_VALUES = {
    "lr": NUMBER_VALUES + [_DELETE], "eps": NUMBER_VALUES, "weight_decay": NUMBER_VALUES,
    "momentum": NUMBER_VALUES, "dampening": NUMBER_VALUES, "momentum_decay": NUMBER_VALUES,
    "alpha": NUMBER_VALUES + [1.0], "lr_decay": NUMBER_VALUES,
    "initial_accumulator_value": NUMBER_VALUES,
    "betas": [(1.0, 0.9), (math.nan, 0.9), (0.9,), "ab", None, (0.9, -1.0), _DELETE],
    "maximize": ["yes", 2, None], "nesterov": ["yes", True], "decoupled_weight_decay": ["no"],
    "foreach": ["yes"], "fused": [2],
    "amsgrad": [True], "centered": [True], "capturable": [True], "differentiable": [True],
}


def group_cases(name):
    cases = {}
    for key in torch_class(name)([torch.zeros(1, requires_grad=True)]).defaults:
        for i, v in enumerate(GROUP_VALUES[key]):
            if name == "AdamW" and key == "decoupled_weight_decay":
                continue  # torch's AdamW sets it to True whatever the checkpoint says
            cases[f"group-{key}-{i}"] = _set(("param_groups", 1, key), v)
    return cases


CASES = [(name, label, edit) for name in SETUPS
         for label, edit in {**STRUCTURE, **state_cases(name), **group_cases(name)}.items()]


@pytest.mark.parametrize("name,label,edit", CASES,
                         ids=[f"{n}-{label}" for n, label, _ in CASES])
def test_corrupt_checkpoint_refused_and_nothing_changes(name, label, edit):
    opt, params = trained(name)
    ref = copy.deepcopy(opt)
    rparams = [p for g in ref.param_groups for p in g["params"]]
    good = checkpoint(name)
    bad = edit(copy.deepcopy(good))
    before = snapshot(opt)
    with pytest.raises((TypeError, ValueError)):
        opt.load_state_dict(bad)
    assert snapshot(opt) == before
    for s in range(3, 5):  # and it steps on as its untouched copy does
        set_grads(params, s)
        set_grads(rparams, s)
        opt.step()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(params, rparams))
    opt.load_state_dict(good)  # the good checkpoint still loads


@pytest.mark.parametrize("name", list(SETUPS))
def test_error_names_the_field(name):
    opt, _ = trained(name)
    bad = checkpoint(name)
    key = next(iter(bad["state"][GROUP1_PARAM]))
    bad["state"][GROUP1_PARAM][key] = torch.zeros(5)
    with pytest.raises((TypeError, ValueError), match=rf"\[{GROUP1_PARAM}\]\['{key}'\]"):
        opt.load_state_dict(bad)
    bad = checkpoint(name)
    bad["param_groups"][1]["lr"] = -1.0
    with pytest.raises(ValueError, match=r"\['param_groups'\]\[1\]\['lr'\]"):
        opt.load_state_dict(bad)


NEW_KEYS = ("maximize", "foreach", "capturable", "differentiable", "fused",
            "decoupled_weight_decay", "nesterov")


@pytest.mark.parametrize("step_as", [float, int])
@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop", "NAdam", "Adagrad", "Lion"])
def test_older_checkpoint_loads_as_torch_loads_it(name, step_as):
    """Without the newer group keys, with a Python-number step (NAdam: and mu_product):
    torch's defaults fill in and both continue alike (Lion: without maximize; it keeps no
    step)."""
    old = checkpoint(name)
    for g in old["param_groups"]:
        for k in NEW_KEYS:
            g.pop(k, None)
    for st in old["state"].values():
        for k in ("step", "mu_product"):
            if k in st:
                st[k] = step_as(st[k].item()) if k == "step" else st[k].item()
    pa, pb = make_params(2), make_params(2)
    ours = getattr(ft, name)(groups(pa), **SETUPS[name])
    theirs = torch_class(name)(groups(pb), **SETUPS[name],
                               **({} if name == "Lion" else dict(foreach=False)))
    ours.load_state_dict(copy.deepcopy(old))
    theirs.load_state_dict(copy.deepcopy(old))
    assert [dict(g, params=None) for g in ours.param_groups] == \
        [dict(g, params=None) for g in theirs.param_groups]
    for s in range(4):
        for o, ps in ((ours, pa), (theirs, pb)):
            set_grads(ps, 20 + s)
            o.step()
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_empty_and_partial_state_load():
    """An empty entry is a fresh param; a state for only some params is fine."""
    ck = checkpoint("Adam")
    ck["state"][0] = {}
    del ck["state"][3]
    pa, pb = make_params(3), make_params(3)
    ours = ft.Adam(groups(pa), **SETUPS["Adam"])
    theirs = torch.optim.Adam(groups(pb), foreach=False, **SETUPS["Adam"])
    ours.load_state_dict(copy.deepcopy(ck))
    theirs.load_state_dict(copy.deepcopy(ck))
    for s in range(3):
        for o, ps in ((ours, pa), (theirs, pb)):
            set_grads(ps, s)
            o.step()
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_state_of_another_dtype_is_cast_as_torch_casts_it():
    ck = checkpoint("Adam")
    for st in ck["state"].values():
        for k in ("exp_avg", "exp_avg_sq"):
            st[k] = st[k].double()
    opt = ft.Adam(groups(make_params()), **SETUPS["Adam"])
    opt.load_state_dict(ck)
    p = opt.param_groups[0]["params"][0]
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    assert opt.state[p]["exp_avg"].data_ptr() != ck["state"][0]["exp_avg"].data_ptr()


@pytest.mark.parametrize("name,flag", [("Adam", "amsgrad"), ("AdamW", "amsgrad"),
                                       ("RMSprop", "centered"), ("Adam", "capturable"),
                                       ("NAdam", "capturable"), ("RMSprop", "capturable"),
                                       ("Adam", "differentiable"), ("SGD", "differentiable"),
                                       ("Adagrad", "differentiable")])
def test_checkpoint_of_an_algorithm_we_do_not_run_refused(name, flag):
    """A torch checkpoint made with a flag fastopt does not implement would load and then run
    a different algorithm: refused, naming the flag, nothing changed."""
    tp = make_params(1)
    theirs = getattr(torch.optim, name)(groups(tp), **SETUPS[name], **{flag: True})
    if flag in ("amsgrad", "centered"):
        for s in range(2):
            set_grads(tp, s)
            theirs.step()
    opt, _ = trained(name)
    before = snapshot(opt)
    with pytest.raises(ValueError, match=flag):
        opt.load_state_dict(theirs.state_dict())
    assert snapshot(opt) == before


@pytest.mark.parametrize("name,into", [("Adam", "Adam"), ("Adam", "AdamW"), ("AdamW", "Adam"),
                                       ("NAdam", "NAdam")])
def test_checkpoint_flags_we_implement_are_honoured(name, into):
    """decoupled_weight_decay from the checkpoint wins (torch's AdamW forces it on)."""
    kw = dict(lr=0.01, weight_decay=0.2)
    if name != "AdamW":
        kw["decoupled_weight_decay"] = True
    tp = make_params(1)
    src = getattr(torch.optim, name)(tp, **kw, maximize=True)
    for s in range(2):
        set_grads(tp, s)
        src.step()
    pa, pb = make_params(2), make_params(2)
    ours = getattr(ft, into)(pa, lr=0.01)
    theirs = getattr(torch.optim, into)(pb, lr=0.01, foreach=False)
    ours.load_state_dict(src.state_dict())
    theirs.load_state_dict(src.state_dict())
    assert ours.param_groups[0]["maximize"] and ours.param_groups[0]["decoupled_weight_decay"] \
        == theirs.param_groups[0]["decoupled_weight_decay"]
    for s in range(3):
        for o, ps in ((ours, pa), (theirs, pb)):
            set_grads(ps, 5 + s)
            o.step()
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_nadam_checkpoint_without_mu_product_rebuilds_it():
    """fastopt.torch's NAdam kept no mu_product before; such a checkpoint continues with the
    product of the mu_t its step count implies."""
    ck = checkpoint("NAdam")
    expect = {k: float(st["mu_product"]) for k, st in ck["state"].items()}
    for st in ck["state"].values():
        del st["mu_product"]
    opt = ft.NAdam(groups(make_params()), **SETUPS["NAdam"])
    opt.load_state_dict(ck)
    for k, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        assert float(opt.state[p]["mu_product"]) == pytest.approx(expect[k], rel=1e-6)
