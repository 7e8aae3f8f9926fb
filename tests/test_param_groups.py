"""Parameter groups in the NumPy API (fastopt.optim): torch-style lists of group dicts, each
group with its own learning rate (schedule) and hyperparameters.

A grouped optimizer must be, bit for bit (params and state), the separate optimizers of its
groups, on every CPU backend and for every rule of the optimizer database (tests/optim_db.py);
groups whose kernel scalars coincide share one native call per step; bad groups are refused,
naming the group and the key, with nothing written; ``fastopt.param_groups`` builds the usual
no-decay split."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastopt
from fastopt import _dispatch, schedules
from fastopt import functional as F

from conftest import cpu_cases, fastopt_env, fastopt_parent, snapshot
from optim_db import DB

SHAPES = [(5,), (3, 4), (129,), (7,), (2, 2, 2), (33,)]


def arrays(dtype=np.float32, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def copies(xs):
    return [x.copy() for x in xs]


def cases():
    """(rule, backend, dtype): every rule of the db on every CPU backend and dtype its record
    lists (a backend that cannot run here is skipped, with the reason)."""
    return [pytest.param(rec.name, *c.values, marks=c.marks, id=f"{rec.name}-{c.id}")
            for rec in DB.values() for c in cpu_cases(rec.kernel)]


def rule_backends():
    return [pytest.param(rec.name, *c.values[:1], marks=c.marks, id=f"{rec.name}-{c.values[0]}")
            for rec in DB.values() for c in cpu_cases(rec.kernel)
            if c.values[1] == np.float64]


def state_bytes(opts):
    """Every state array of the optimizers ``opts``, buffer by buffer, in order: a grouped
    optimizer numbers its state across its groups, so this is its own state's bytes."""
    names = DB[opts[0].rule].state_names
    return {n: [a.tobytes() for o in opts for a in o.state[n]] for n in names}


def other_value(h):
    """A valid value of hyperparameter ``h`` other than its default."""
    if isinstance(h.default, bool):
        return not h.default
    return h.default * 0.5 if h.default else 0.5


class Calls:
    """Records every optimizer kernel call of one backend (its module's optim_update)."""

    def __init__(self, monkeypatch, backend):
        mod = _dispatch.module(backend)
        real = mod.optim_update
        self.calls = []

        def counted(rule, params, grads, states, k):
            self.calls.append((rule, [id(p) for p in params], k))
            return real(rule, params, grads, states, k)
        monkeypatch.setattr(mod, "optim_update", counted)

    def take(self):
        out, self.calls = self.calls, []
        return out


# -- a grouped optimizer is its groups' separate optimizers ------------------------------------

@pytest.mark.parametrize("rule,backend,dtype", cases())
def test_groups_equal_separate_optimizers(rule, backend, dtype):
    """Three groups: one stating every hyperparameter (the defaults) over the constructor's
    non-default row, one with its own lr and the constructor's hyperparameters, one with a
    schedule and a row of its own. Four steps: the same bits as three optimizers."""
    rec = DB[rule]
    ctor = rec.rows[-1]
    own = rec.rows[1]
    sched = schedules.warmup_cosine(0.05, 2, 10)
    p = arrays(dtype)
    grads = [arrays(dtype, 10 + t) for t in range(4)]
    groups = [{"params": [p[0], p[1]], **rec.decl.defaults()},
              {"params": [p[2]], "lr": 2 * rec.lr},
              {"params": (p[3], p[4], p[5]), "lr": sched, **own}]
    specs = [([0, 1], rec.lr, rec.decl.defaults()), ([2], 2 * rec.lr, ctor),
             ([3, 4, 5], sched, {**ctor, **own})]
    q = copies(p)
    opt = rec.cls(groups, lr=rec.lr, backend=backend, **ctor)
    sep = [rec.cls([q[i] for i in idx], lr=lr, backend=backend, **hyper)
           for idx, lr, hyper in specs]
    for g in grads:
        assert not opt.step(g).skipped
        for o, (idx, _, _) in zip(sep, specs):
            o.step([g[i] for i in idx])
    assert not all(np.array_equal(a, b) for a, b in zip(p, arrays(dtype)))  # they moved
    assert snapshot(p) == snapshot(q)
    assert state_bytes([opt]) == state_bytes(sep)
    assert opt.step_count == 4
    # what the optimizer says its groups are
    pg = opt.param_groups
    assert len(pg) == 3 and [len(g["params"]) for g in pg] == [2, 1, 3]
    assert all(a is b for g, (idx, _, _) in zip(pg, specs)
               for a, b in zip(g["params"], [p[i] for i in idx]))
    assert pg[0]["lr"] is opt.lr and pg[2]["lr"] is sched and pg[1]["lr"](7) == 2 * rec.lr
    for g, (_, _, hyper) in zip(pg, specs):
        assert {k: v for k, v in g.items() if k not in ("params", "lr")} == rec.hyper(hyper)


@pytest.mark.parametrize("rule", list(DB))
def test_groups_of_two_dtypes(rule):
    """A float32 group and a float64 group: each is its own optimizer's bits."""
    rec = DB[rule]
    p32, p64 = arrays(np.float32, 1)[:3], arrays(np.float64, 2)[3:]
    opt = rec.cls([{"params": p32}, {"params": p64, "lr": rec.lr / 2, **rec.rows[1]}],
                  lr=rec.lr)
    q32, q64 = copies(p32), copies(p64)
    a, b = rec.cls(q32, lr=rec.lr), rec.cls(q64, lr=rec.lr / 2, **rec.rows[1])
    for t in range(3):
        g32, g64 = arrays(np.float32, 20 + t)[:3], arrays(np.float64, 30 + t)[3:]
        opt.step(g32 + g64)
        a.step(g32)
        b.step(g64)
    assert snapshot(p32 + p64) == snapshot(q32 + q64)
    assert state_bytes([opt]) == state_bytes([a, b])


@pytest.mark.parametrize("rule", list(DB))
def test_one_group_is_the_plain_optimizer(rule):
    rec = DB[rule]
    p, q = arrays(np.float64), arrays(np.float64)
    a = rec.cls([{"params": p, "lr": 0.03, **rec.rows[1]}], lr=1.0)
    b = rec.cls(q, lr=0.03, **rec.rows[1])
    for t in range(3):
        g = arrays(np.float64, 40 + t)
        assert a.step(g) == b.step(g)  # the same norm, decisions and learning rate
    assert snapshot(p) == snapshot(q) and state_bytes([a]) == state_bytes([b])


# -- one native call per set of scalars -----------------------------------------------------

@pytest.mark.parametrize("rule,backend", rule_backends())
def test_groups_with_equal_scalars_share_one_call(rule, backend, monkeypatch):
    rec = DB[rule]
    calls = Calls(monkeypatch, backend)
    p = arrays(np.float64)
    ids = [id(a) for a in p]
    g = arrays(np.float64, 3)

    # plain list: one call with every array
    rec.cls(p, lr=rec.lr, backend=backend).step(g)
    assert [c[1] for c in calls.take()] == [ids]
    # three groups with the same settings, stated or inherited: still one call, in order
    opt = rec.cls([{"params": p[:2], **rec.decl.defaults()}, {"params": p[2:3]},
                   {"params": p[3:], "lr": rec.lr}], lr=rec.lr, backend=backend)
    for _ in range(2):
        opt.step(g)
        assert [c[1] for c in calls.take()] == [ids]
    # groups 0 and 2 alike, group 1 at another rate: two calls, 0 and 2 together
    opt = rec.cls([{"params": p[:2]}, {"params": p[2:3], "lr": rec.lr / 4},
                   {"params": p[3:]}], lr=rec.lr, backend=backend)
    opt.step(g)
    assert sorted(c[1] for c in calls.take()) == sorted([ids[:2] + ids[3:], ids[2:3]])
    # an empty group costs nothing
    opt = rec.cls([{"params": []}, {"params": p, "lr": rec.lr}, {"params": [], "lr": 0.5}],
                  lr=rec.lr, backend=backend)
    opt.step(g)
    assert [c[1] for c in calls.take()] == [ids]


@pytest.mark.parametrize("rule,backend", rule_backends())
def test_groups_differing_in_one_hyperparameter(rule, backend, monkeypatch):
    """Two groups that differ in one hyperparameter: one call when the kernel scalars are the
    same (Adagrad's initial_accumulator_value only sets the state's start), else two; either
    way each group is its own optimizer's bits."""
    rec = DB[rule]
    calls = Calls(monkeypatch, backend)
    for h in rec.decl.hyper:
        alt = other_value(h)
        p = arrays(np.float64, 5)
        q = copies(p)
        opt = rec.cls([{"params": p[:3]}, {"params": p[3:], h.name: alt}], lr=rec.lr,
                      backend=backend)
        a = rec.cls(q[:3], lr=rec.lr, backend=backend)
        b = rec.cls(q[3:], lr=rec.lr, backend=backend, **{h.name: alt})
        calls.take()
        for t in range(2):
            g = arrays(np.float64, 50 + t)
            opt.step(g)
            n = len(calls.take())
            a.step(g[:3])
            b.step(g[3:])
            calls.take()
            same = F.scalars(rule, lr=rec.lr, step=t) == \
                F.scalars(rule, lr=rec.lr, step=t, **{h.name: alt})
            assert n == (1 if same else 2), (h.name, t, n)
        assert snapshot(p) == snapshot(q), h.name
        assert state_bytes([opt]) == state_bytes([a, b]), h.name


def test_calls_follow_the_schedules_step_by_step(monkeypatch):
    """Rates that coincide at some steps and not at others: one call, then two, then one."""
    calls = Calls(monkeypatch, "numpy")
    p = arrays(np.float64)
    opt = fastopt.Adam([{"params": p[:2]}, {"params": p[2:], "lr": lambda t: 0.1 * (1 + t % 2)}],
                       lr=0.1, backend="numpy")
    counts = []
    for t in range(4):
        opt.step(arrays(np.float64, t))
        counts.append(len(calls.take()))
    assert counts == [1, 2, 1, 2]


def test_one_call_per_dtype(monkeypatch):
    calls = Calls(monkeypatch, "numpy")
    p = arrays(np.float32)[:3] + arrays(np.float64)[3:]
    opt = fastopt.SGD([{"params": p[:2]}, {"params": p[2:4]}, {"params": p[4:]}], lr=0.1,
                      backend="numpy")
    opt.step([np.ones_like(a) for a in p])
    assert sorted(len(c[1]) for c in calls.take()) == [3, 3]


# -- learning rates per group ------------------------------------------------------------------

def test_per_group_lr_schedules():
    """SGD on ones, float64, rates that are powers of two: each group's params move by exactly
    its own schedule's rates, each schedule is asked once per step with t, and the result's
    lr is the first group's rate."""
    seen = {0: [], 2: []}

    def logged(j, f):
        def lr(t):
            seen[j].append(t)
            return f(t)
        return lr

    p = [np.zeros(3), np.zeros(4), np.zeros(2)]
    opt = fastopt.SGD([{"params": [p[0]], "lr": logged(0, lambda t: 2.0 ** -t)},
                       {"params": [p[1]]},
                       {"params": [p[2]], "lr": logged(2, lambda t: 0.25 * (t + 1))}],
                      lr=0.5)
    results = [opt.step([np.ones(3), np.ones(4), np.ones(2)]) for _ in range(3)]
    assert seen == {0: [0, 1, 2], 2: [0, 1, 2]}
    assert np.all(p[0] == -(1 + 0.5 + 0.25))
    assert np.all(p[1] == -1.5)
    assert np.all(p[2] == -(0.25 + 0.5 + 0.75))
    assert [r.lr for r in results] == [1.0, 0.5, 0.25]


def test_groups_without_lr_follow_the_constructors_schedule():
    sched = schedules.linear_warmup(1.0, warmup_steps=4)
    p = [np.zeros(2), np.zeros(2)]
    opt = fastopt.SGD([{"params": [p[0]]}, {"params": [p[1]], "lr": 0.125}], lr=sched)
    for _ in range(4):
        opt.step([np.ones(2), np.ones(2)])
    assert np.all(p[0] == -(0 + 0.25 + 0.5 + 0.75)) and np.all(p[1] == -0.5)
    assert opt.param_groups[0]["lr"] is sched


def test_a_failing_group_schedule_writes_nothing():
    """A group's schedule that answers a negative rate is refused by group and step, before
    anything is written (params, state, step count)."""
    p = arrays(np.float64)
    opt = fastopt.Adam([{"params": p[:2]}, {"params": p[2:], "lr": lambda t: 0.1 - 0.1 * t}],
                       lr=0.1)
    opt.step(arrays(np.float64, 1))
    opt.step(arrays(np.float64, 2))  # lr 0 at t=1 is fine
    before = snapshot(p) + snapshot([a for v in opt.state.values() for a in v])
    with pytest.raises(ValueError, match=r"param_groups\[1\] lr\(2\) must be"):
        opt.step(arrays(np.float64, 3))
    assert snapshot(p) + snapshot([a for v in opt.state.values() for a in v]) == before
    assert opt.step_count == 2


# -- clipping, skipping: one norm over every group ----------------------------------------------

@pytest.mark.parametrize("rule,backend", rule_backends())
def test_clipping_takes_one_norm_over_every_group(rule, backend):
    """max_grad_norm with groups clips on the joint norm: bit for bit the separate optimizers
    of the groups fed the gradients clipped together (clip_by_global_norm)."""
    rec = DB[rule]
    p = arrays(np.float64, 7)
    q = copies(p)
    opt = rec.cls([{"params": p[:2], **rec.rows[1]}, {"params": p[2:], "lr": rec.lr / 2}],
                  lr=rec.lr, backend=backend, max_grad_norm=1.0)
    a = rec.cls(q[:2], lr=rec.lr, backend=backend, nonfinite="ignore", **rec.rows[1])
    b = rec.cls(q[2:], lr=rec.lr / 2, backend=backend, nonfinite="ignore")
    for t in range(3):
        g = arrays(np.float64, 60 + t)
        r = opt.step(g)
        assert r.clipped and r.grad_norm == fastopt.global_norm(g, backend=backend)
        c = copies(g)
        fastopt.clip_by_global_norm(c, 1.0, backend=backend)
        a.step(c[:2])
        b.step(c[2:])
    assert snapshot(p) == snapshot(q)
    assert state_bytes([opt]) == state_bytes([a, b])


def test_a_nonfinite_gradient_in_one_group_skips_every_group():
    p = arrays(np.float32)
    opt = fastopt.AdamW([{"params": p[:2], "weight_decay": 0.0}, {"params": p[2:], "lr": 0.01}],
                        lr=1e-3)
    opt.step(arrays(np.float32, 1))
    before = snapshot(p) + snapshot([a for v in opt.state.values() for a in v])
    bad = arrays(np.float32, 2)
    bad[4][0, 1, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="skipped step 1"):
        assert opt.step(bad).skipped
    assert snapshot(p) + snapshot([a for v in opt.state.values() for a in v]) == before
    assert opt.step_count == 1


# -- refused groups: named, nothing written ----------------------------------------------------

GROUP_ERRORS = [pytest.param(rec.name, e, id=f"{rec.name}-{e.id}")
                for rec in DB.values() for e in rec.errors]


@pytest.mark.parametrize("rule,row", GROUP_ERRORS)
def test_bad_group_values_and_keys_are_refused(rule, row):
    """Every error row of the db as an entry of the second group: its exception, a message
    matching the row's that names the group (``param_groups[1].<name>`` for a bad value,
    ``param_groups[1]`` and the key for a key the rule does not take); the arrays and the
    caller's dicts untouched."""
    rec = DB[rule]
    p = arrays()
    groups = [{"params": p[:2]}, {"params": p[2:], **row.kwargs}]
    kept = [dict(g) for g in groups]
    before = snapshot(p)
    with pytest.raises(row.exc, match=row.match) as e:
        rec.cls(groups, lr=rec.lr)
    msg = str(e.value)
    if row.unknown:
        assert "param_groups[1]" in msg and f"'{row.name}'" in msg, msg
    else:
        assert f"param_groups[1].{row.name}" in msg, msg
    assert snapshot(p) == before
    assert all(g.keys() == k.keys() and all(g[n] is k[n] for n in g)
               for g, k in zip(groups, kept))


def test_every_unknown_key_is_named():
    with pytest.raises(TypeError, match=r"param_groups\[0\]: adam does not take 'foo', 'bar'"):
        fastopt.Adam([{"params": [np.ones(3)], "foo": 1, "bar": 2, "beta1": 0.5}])


@pytest.mark.parametrize("params,exc,pattern", [
    ([{"params": [np.ones(3)]}, {"lr": 0.1}], ValueError, r"param_groups\[1\] has no 'params'"),
    ([{"params": [np.ones(3)]}, np.ones(3)], TypeError, "all arrays or all param-group dicts"),
    ([np.ones(3), {"params": [np.ones(3)]}], TypeError, "all arrays or all param-group dicts"),
    ({"params": [np.ones(3)]}, TypeError, "got a dict"),
    ([{"params": 3.0}], TypeError, r"param_groups\[0\]\['params'\] must be an array"),
    ([{"params": [[1.0, 2.0]]}], TypeError, r"params\[0\] must be a numpy.ndarray"),
    ([{"params": [np.ones(2)]}, {"params": [np.ones(3, np.int32)]}], TypeError,
     r"params\[1\] has dtype int32"),
])
def test_malformed_groups_are_refused(params, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fastopt.Adam(params, lr=0.1)


def test_an_array_in_two_groups_is_refused():
    a = np.ones(4)
    with pytest.raises(ValueError, match=r"params\[1\] shares memory with params\[0\]"):
        fastopt.SGD([{"params": [a]}, {"params": [a], "lr": 0.5}], lr=0.1)
    b = np.zeros(8)
    with pytest.raises(ValueError, match="shares memory"):
        fastopt.SGD([{"params": [b[:5]]}, {"params": [b[4:]]}], lr=0.1)
    assert not b.any() and np.all(a == 1)


def test_param_groups_cannot_be_changed_through_the_property():
    """torch users set ``group["lr"]`` to change a rate: here the property's groups are
    read-only views, so that is refused instead of silently doing nothing."""
    p = [np.zeros(2), np.zeros(3)]
    opt = fastopt.SGD([{"params": [p[0]]}, {"params": [p[1]], "lr": 0.25}], lr=0.5)
    for key, value in (("lr", 1.0), ("weight_decay", 0.1), ("params", ())):
        with pytest.raises(TypeError):
            opt.param_groups[1][key] = value
    opt.step([np.ones(2), np.ones(3)])
    assert np.all(p[0] == -0.5) and np.all(p[1] == -0.25)


# -- fastopt.param_groups: the no-decay split ------------------------------------------------------

def model(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {"embed.weight": rng.standard_normal((6, 4)).astype(dtype),
            "layer.weight": rng.standard_normal((4, 4)).astype(dtype),
            "layer.bias": rng.standard_normal(4).astype(dtype),
            "norm.scale": rng.standard_normal(4).astype(dtype),
            "head.weight": rng.standard_normal((4, 3)).astype(dtype),
            "temperature": np.asarray(rng.standard_normal(), dtype),  # 0-d
            "head.bias": rng.standard_normal(3).astype(dtype)}


def test_param_groups_default_split_mapping_and_pairs():
    m = model()
    for named in (m, list(m.items()), tuple(m.items())):
        groups = fastopt.param_groups(named)
        assert [sorted(g) for g in groups] == [["params"], ["params", "weight_decay"]]
        assert [id(a) for a in groups[0]["params"]] == [
            id(m[k]) for k in ("embed.weight", "layer.weight", "head.weight")]
        assert [id(a) for a in groups[1]["params"]] == [
            id(m[k]) for k in ("layer.bias", "norm.scale", "temperature", "head.bias")]
        assert groups[1]["weight_decay"] == 0.0


def test_param_groups_custom_rule_and_weight_decay():
    m = model()
    groups = fastopt.param_groups(m, no_decay=lambda n, a: n.endswith(".bias") or "embed" in n,
                                  weight_decay=0.05)
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert [id(a) for a in groups[0]["params"]] == [
        id(m[k]) for k in ("layer.weight", "norm.scale", "head.weight", "temperature")]
    assert [id(a) for a in groups[1]["params"]] == [
        id(m[k]) for k in ("embed.weight", "layer.bias", "head.bias")]
    # empty groups are left out
    assert fastopt.param_groups(m, no_decay=lambda n, a: False) == [
        {"params": list(m.values())}]
    only = fastopt.param_groups(m, no_decay=lambda n, a: True)
    assert len(only) == 1 and only[0]["weight_decay"] == 0.0
    assert fastopt.param_groups({}) == [] and fastopt.param_groups([]) == []


@pytest.mark.parametrize("named,kw,exc,pattern", [
    ({"w": np.ones(3)}, {"no_decay": "bias"}, TypeError, "no_decay must be a callable"),
    ([("w", np.ones(3)), np.ones(3)], {}, TypeError, r"named_arrays\[1\] must be a \(name, "),
    ([(1, np.ones(3))], {}, TypeError, r"named_arrays\[0\]"),
    ([("w", np.ones(3), 1)], {}, TypeError, r"named_arrays\[0\]"),
])
def test_param_groups_bad_input(named, kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fastopt.param_groups(named, **kw)


@pytest.mark.parametrize("rule", list(DB))
def test_param_groups_split_equals_two_optimizers(rule):
    """rec.cls(fastopt.param_groups(model), lr) is the decaying arrays' optimizer and the
    exempt arrays' one with weight_decay=0, bit for bit."""
    rec = DB[rule]
    m = model(np.float32)
    names = list(m)
    opt = rec.cls(fastopt.param_groups(m, weight_decay=0.1), lr=rec.lr)
    ref = model(np.float32)
    decay = [k for k in names if np.ndim(m[k]) > 1]
    exempt = [k for k in names if np.ndim(m[k]) <= 1]
    a = rec.cls([ref[k] for k in decay], lr=rec.lr, weight_decay=0.1)
    b = rec.cls([ref[k] for k in exempt], lr=rec.lr, weight_decay=0.0)
    for t in range(3):
        g = model(np.float32, seed=10 + t)
        opt.step([g[k] for k in decay + exempt])
        a.step([g[k] for k in decay])
        b.step([g[k] for k in exempt])
    assert snapshot(list(m.values())) == snapshot(list(ref.values()))
    assert state_bytes([opt]) == state_bytes([a, b])


# -- checkpoints -------------------------------------------------------------------------------

def grouped(rec, p):
    """Two groups with other settings than the constructor's (and Adagrad's accumulators
    starting apart)."""
    return rec.cls([{"params": p[:2], **rec.rows[1]},
                    {"params": p[2:], "lr": rec.lr / 2, **rec.decl.defaults()}],
                   lr=rec.lr, **rec.rows[-1])


@pytest.mark.parametrize("rule", list(DB))
def test_state_dict_round_trip_with_groups(rule, tmp_path):
    """What state_dict stores with groups (the rule, the step, the groups' sizes, the state
    numbered across the groups in order), and that 3 steps, numpy.savez, a fresh grouped
    optimizer, numpy.load and 3 more steps are 6 steps straight, bit for bit."""
    rec = DB[rule]
    grads = [arrays(np.float32, 70 + t) for t in range(6)]
    p = arrays(np.float32)
    straight = grouped(rec, p)
    for g in grads:
        straight.step(g)
    q = arrays(np.float32)
    first = grouped(rec, q)
    for g in grads[:3]:
        first.step(g)
    sd = first.state_dict()
    assert set(sd) == {"optimizer", "step", "groups"} | {f"{n}.{i}" for n in rec.state_names
                                                         for i in range(len(SHAPES))}
    assert sd["groups"].tolist() == [len(g["params"]) for g in first.param_groups]
    for n in rec.state_names:
        assert all(sd[f"{n}.{i}"].tobytes() == a.tobytes()
                   for i, a in enumerate(first.state[n]))
    np.savez(tmp_path / "ckpt.npz", **sd)
    second = grouped(rec, q)
    with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as z:
        second.load_state_dict(z)
    assert second.step_count == 3
    for g in grads[3:]:
        second.step(g)
    assert snapshot(p) == snapshot(q)
    assert state_bytes([straight]) == state_bytes([second])


def test_state_dict_keeps_the_grouping_not_the_settings():
    """A checkpoint holds state and the groups' sizes, not settings (as for an optimizer
    without groups, whose lr and betas are not saved either): it loads into an optimizer
    grouped the same way with other settings, which then steps with its own. Torch restores
    saved group settings instead; a NumPy optimizer's lr may be any Python callable, which an
    array checkpoint cannot hold. Another grouping, or none, is refused and changes nothing."""
    p = arrays(np.float64)
    src = fastopt.Adam([{"params": p[:2], "beta1": 0.5}, {"params": p[2:], "lr": 0.1}], lr=1e-3)
    for t in range(2):
        src.step(arrays(np.float64, t))
    sd = src.state_dict()
    target = fastopt.Adam([{"params": arrays(np.float64)[:2], "beta2": 0.9},
                           {"params": arrays(np.float64)[2:]}], lr=1e-2)
    settings = [{k: v for k, v in g.items() if k != "params"} for g in target.param_groups]
    target.load_state_dict(sd)
    assert state_bytes([target]) == state_bytes([src]) and target.step_count == 2
    assert [{k: v for k, v in g.items() if k != "params"}
            for g in target.param_groups] == settings  # its own, not src's
    # it continues with its own settings: as a copy built with them and given the state
    twin_p = [a.copy() for a in target.params]
    twin = fastopt.Adam([{"params": twin_p[:2], "beta2": 0.9}, {"params": twin_p[2:]}], lr=1e-2)
    twin.load_state_dict(sd)
    g = arrays(np.float64, 9)
    target.step(g)
    twin.step(g)
    assert snapshot(list(target.params)) == snapshot(twin_p)
    refusals = [
        (fastopt.Adam(arrays(np.float64), lr=1e-2), "saved by an optimizer with param groups"),
        (fastopt.Adam([{"params": arrays(np.float64)[:4]}, {"params": arrays(np.float64)[4:]}],
                      lr=1e-2), r"'groups' is \[2, 4\].*hold \[4, 2\]"),
        (fastopt.Adam([{"params": arrays(np.float64)[:5]}], lr=1e-2), "missing"),
    ]
    for other, match in refusals:
        before = state_bytes([other])
        with pytest.raises(ValueError, match=match):
            other.load_state_dict(sd)
        assert state_bytes([other]) == before and other.step_count == 0
    plain = fastopt.Adam(arrays(np.float64), lr=1e-2).state_dict()
    with pytest.raises(ValueError, match="saved by an optimizer without param groups"):
        fastopt.Adam([{"params": arrays(np.float64)}], lr=1e-2).load_state_dict(plain)
    bad = dict(sd, groups=np.array([2.0, 4.0]))
    with pytest.raises(ValueError, match="'groups'"):
        fastopt.Adam([{"params": arrays(np.float64)[:2]}, {"params": arrays(np.float64)[2:]}],
                     lr=1e-2).load_state_dict(bad)


# -- the guarded (device) path takes the group's settings ---------------------------------------

@pytest.mark.parametrize("rule", list(DB))
def test_one_group_scalars_for_the_guarded_step(rule):
    """A guarded step (device params, one group) computes its scalars host-side for a window
    of step counts (``_guarded_scalars``): they must be the group's, not the constructor's."""
    rec = DB[rule]
    row = rec.rows[-1]
    opt = rec.cls([{"params": [np.ones(3)], "lr": lambda t: 0.5 / (t + 1), **row}],
                  lr=1e-3, **rec.decl.defaults())
    for t in range(3):
        assert opt._guarded_scalars(t) == F.scalars(rule, lr=0.5 / (t + 1), step=t, **row), t


SIM_SCRIPT = r"""
import json, sys
import numpy as np
from numba import cuda
import fastopt
sys.path.insert(0, sys.argv[1])
from optim_db import DB
out = {}
for rec in DB.values():
    row = rec.rows[-1]
    rng = np.random.default_rng(0)
    hp = [rng.standard_normal(n) for n in (7, 129)]
    dp = [cuda.to_device(a) for a in hp]
    groups = lambda ps: [{"params": ps, "lr": lambda t: 0.05 * (t + 1), **row}]
    dev = rec.cls(groups(dp), lr=1e-3, max_grad_norm=1.0)
    host = rec.cls(groups(hp), lr=1e-3, max_grad_norm=1.0, backend="numpy")
    lrs = []
    for t in range(3):
        g = [rng.standard_normal(a.shape) for a in hp]
        r = dev.step([cuda.to_device(a) for a in g])
        h = host.step(g)
        lrs.append((r.lr, h.lr, r.clipped, h.clipped))
    out[rec.name] = dict(guarded=dev._guardable, lrs=lrs, same=all(
        a.copy_to_host().tobytes() == b.tobytes() for a, b in zip(dp, hp)))
print(json.dumps(out))
"""


def test_one_group_on_the_device_simulator():
    """End to end on the Numba CUDA simulator (a process of its own): one group with its own
    lr schedule and hyperparameters on device arrays takes guarded steps with the group's
    settings, the same bits as the host optimizer."""
    pytest.importorskip("numba")
    env = fastopt_env(NUMBA_ENABLE_CUDASIM="1")
    env.pop("FASTOPT_BACKEND", None)
    r = subprocess.run([sys.executable, "-c", SIM_SCRIPT, os.path.dirname(__file__)],
                       capture_output=True, text=True, env=env, cwd=fastopt_parent(),
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out) == set(DB)
    for rule, res in out.items():
        assert res["guarded"], rule
        assert res["same"], (rule, res)
        for t, (dev_lr, host_lr, dev_clip, host_clip) in enumerate(res["lrs"]):
            assert dev_lr == host_lr == 0.05 * (t + 1) and dev_clip == host_clip, (rule, res)
