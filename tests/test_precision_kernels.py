"""Compact-precision kernels (fastopt/_precision.py): every backend's ``compact_update``
bit-identical to the NumPy reference -- params, masters, remainders, codes, absmax and state --
for every rule and storage configuration, over odd sizes, many arrays and several steps."""
from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest

from fastopt import _precision as P
from fastopt import functional as F
from fastopt._rules import RULES

from optim_db import DB

BF16 = P.HOST_BF16
SIZES = (1, 7, 255, 256, 257, 4095, 4096, 9001, 40000)

#: backend -> its module's compact_update
MODULES = {"cpp": "fastopt._cpp", "numba": "fastopt._numba"}


def _impl(backend):
    if backend == "numpy":
        return P.compact_update
    mod = importlib.import_module(MODULES[backend])
    return mod.compact_update


#: (param dtype, grad dtype, master, state storage, stochastic rounding)
CONFIGS = [
    (BF16, BF16, False, "float32", False),
    (BF16, BF16, False, "bfloat16", True),
    (BF16, np.float32, "remainder", "bfloat16", False),
    (BF16, BF16, "remainder", "int8", False),
    (BF16, BF16, False, "int8", True),
    (BF16, BF16, True, "float32", True),
    (np.float16, np.float16, False, "float32", True),
    (np.float16, np.float32, True, "bfloat16", True),
    (np.float16, np.float16, False, "int8", False),
    (np.float32, np.float32, False, "bfloat16", True),
    (np.float32, np.float32, False, "int8", False),
]


def _cid(c):
    pd, gd, m, s, sr = c
    return f"{np.dtype(pd).name}-g{np.dtype(gd).name}-m{m}-{s}-{'sr' if sr else 'rn'}"


def _state_storage(rule, name, n, state_dtype):
    if state_dtype == "bfloat16":
        return BF16
    if state_dtype == "int8" and n >= P.QMIN_SIZE:
        return P.U8 if name in RULES[rule].nonnegative else P.I8
    return np.float32


def make(rule, config, sizes, seed=0, hyper=None):
    """(params, grads per step, masters, states, absmax) for one configuration."""
    pd, gd, master, sdt, _ = config
    rng = np.random.default_rng(seed)
    params = [(rng.standard_normal(n) * 0.5).astype(np.float32) for n in sizes]
    masters = None
    if master is True:
        masters = [p.copy() for p in params]
    params16 = [p.astype(pd) for p in params]
    if master == "remainder":
        masters = []
        for i, p in enumerate(params):
            hi, rem = P.remainder_split(p)
            params16[i] = hi.view(BF16)
            masters.append(rem)
    init = F.init_state(rule, params, **(hyper or {}))
    states, absmax = [], []
    for name in RULES[rule].state_names:
        st, ab = [], []
        for p, s0 in zip(params, init[name]):
            dt = np.dtype(_state_storage(rule, name, p.size, sdt))
            if dt in (P.I8, P.U8):
                codes, am = P.quantise(s0.reshape(-1), dt)
                st.append(codes)
                ab.append(am)
            else:
                st.append(s0.astype(dt))
                ab.append(np.zeros(0, np.float32))
            # state grows over steps: start from a realistic nonzero state
        states.append(st)
        absmax.append(ab)
    grads = [[(rng.standard_normal(n) * 0.1).astype(gd) for n in sizes] for _ in range(3)]
    return params16, grads, masters, states, absmax


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint8) if a.dtype.itemsize == 1 else a.view(f"u{a.dtype.itemsize}")


def _snapshot(params, masters, states, absmax):
    out = [_bits(p).copy() for p in params]
    out += [_bits(m).copy() for m in masters or []]
    out += [_bits(s).copy() for st in states for s in st]
    out += [_bits(a).copy() for ab in absmax for a in ab]
    return out


def _run(backend, rule, config, sizes, steps=3):
    params, grads, masters, states, absmax = make(rule, config, sizes)
    fn = _impl(backend)
    row = DB[rule].rows[-1]  # a non-default row: every term of the rule exercised
    hyper = DB[rule].hyper(row)
    for t in range(steps):
        k = F.scalars(rule, lr=1e-2 / (1 + t), step=t, **hyper)
        sr = (12345 + (1 << 40), t, list(range(3, 3 + len(sizes)))) if config[4] else None
        fn(rule, params, grads[t], masters, states, absmax, k, sr)
    return _snapshot(params, masters, states, absmax)


@pytest.mark.parametrize("backend", ["cpp", "numba"])
@pytest.mark.parametrize("config", CONFIGS, ids=_cid)
@pytest.mark.parametrize("rule", list(RULES))
def test_backend_matches_reference_bit_for_bit(backend, config, rule):
    sizes = SIZES[:6] if rule not in ("adam", "adamw") else SIZES
    want = _run("numpy", rule, config, sizes)
    got = _run(backend, rule, config, sizes)
    for j, (w, g) in enumerate(zip(want, got)):
        assert np.array_equal(w, g), f"buffer {j}: {np.flatnonzero(w != g)[:10]}"


def test_reference_compact_step_changes_something():
    """The oracle itself moves params and state (a reference that does nothing would make
    every comparison above pass)."""
    config = (BF16, BF16, "remainder", "int8", False)
    params, grads, masters, states, absmax = make("adam", config, (9001,))
    before = _snapshot(params, masters, states, absmax)
    k = F.scalars("adam", lr=1e-2, step=0)
    P.compact_update("adam", params, grads[0], masters, states, absmax, k)
    after = _snapshot(params, masters, states, absmax)
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
