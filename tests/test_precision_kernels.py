"""Compact-precision kernels (fastopt/_precision.py): every backend's ``compact_update``
bit-identical to the NumPy reference -- params, masters, remainders, codes, absmax and state --
for every rule and storage configuration, over odd sizes, many arrays and several steps."""
from __future__ import annotations

import importlib
import itertools
import os

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
    (BF16, BF16, False, "bfloat16", False),
    (BF16, BF16, "remainder", "bfloat16", False),
    (BF16, BF16, "remainder", "bfloat16", True),
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


# -- every C++ instruction-set path and thread count: the reference's bytes ----------------------

def _combine(rule, configs, sizes, seed):
    """One call's arrays, the storage configurations mixed array by array (every param, grad,
    master and state kind side by side in one native call)."""
    params, grads, masters, states, absmax = [], [[], [], []], [], None, None
    for c, config in enumerate(configs):
        p, g, m, s, a = make(rule, config, sizes, seed=seed + c)
        params += p
        for t in range(3):
            grads[t] += g[t]
        masters += m if m is not None else [None] * len(p)
        states = s if states is None else [x + y for x, y in zip(states, s)]
        absmax = a if absmax is None else [x + y for x, y in zip(absmax, a)]
    return params, grads, masters, states, absmax


def _digest(arrays):
    import hashlib
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


#: chunk (32768) and block (256) boundaries inside arrays, ragged ends, a one-element array
MIXED_SIZES = (3 * 32768 + 5, 4097, 255, 1)


def mixed_digest(backend, rule="adam"):
    """Three stochastic steps over every configuration of CONFIGS in one call; the stream's
    seed, step and ids use their high 32 bits (an id >= 2^32 keys with its low 32 bits)."""
    params, grads, masters, states, absmax = _combine(rule, CONFIGS, MIXED_SIZES, seed=7)
    hyper = DB[rule].hyper(DB[rule].rows[-1])
    ids = [(1 << 32) + i if i % 4 == 0 else 5 + 3 * i for i in range(len(params))]
    for t in range(3):
        k = F.scalars(rule, lr=1e-2 / (1 + t), step=t, **hyper)
        _impl(backend)(rule, params, grads[t], masters, states, absmax, k,
                       ((1 << 63) + 99, (1 << 33) + t, ids))
    return _digest(_snapshot(params, [m for m in masters if m is not None], states, absmax))


def _edge_values(rng, n, nans):
    """float32 values at every rounding edge of bf16, fp16 and the 8-bit maps: signed zeros,
    float32 and float16 subnormals, float16's overflow threshold, ties, the largest floats,
    infinities, NaNs, and log-uniform values over the whole exponent range."""
    f32 = np.float32
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 3e-39, -1.17e-38, 2.0 ** -24, 2.0 ** -25,
                        -2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -14, 2.0 ** -14 - 2.0 ** -25,
                        2.0 ** -15 + 2.0 ** -25, 65504.0, 65519.0, 65520.0, -65520.0, 65536.0,
                        1e5, 3.3e38, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, -(1 + 2.0 ** -8),
                        1 - 2.0 ** -9, 1.0, -1.0, np.inf, -np.inf], f32)
    bits = np.array([0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0x3F808000, 0x3F818000,
                     0x00008000, 0x80018000, 0x477FEFFF, 0x477FF000, 0x387FFFFF, 0x38800000,
                     0x33800000, 0x33000001, 0x337FFFFF], np.uint32).view(f32)
    logu = (rng.choice([-1.0, 1.0], n) * 2.0 ** rng.uniform(-149, 127.99, n)).astype(f32)
    x = np.concatenate([special, bits, np.array(nans, np.uint32).view(f32), logu])
    return x[rng.permutation(x.size)]


def _blocks_8bit(rng):
    """Blocks of 256 at the 8-bit edges: a NaN, an inf, all zeros, float32 subnormals only, a
    2^60 dynamic range (the maps' subnormal codes), -inf, the ties between map entries of both
    maps (absmax 1); then a ragged block."""
    f32 = np.float32
    blocks = [rng.standard_normal(256).astype(f32) for _ in range(7)]
    blocks[0][17] = np.nan
    blocks[1][200] = np.inf
    blocks[2][:] = 0.0
    blocks[2][::3] = -0.0
    blocks[3] = (rng.uniform(-1, 1, 256) * 1e-39).astype(f32)
    blocks[4] = (rng.choice([-1.0, 1.0], 256) * 2.0 ** rng.uniform(-60, 0, 256)).astype(f32)
    blocks[5][3] = -np.inf
    ties = [(1 + (2 * f + 1) / 16) * 2.0 ** e for e in range(-29, 0) for f in range(8)]
    ties += [(j + 0.5) * 2.0 ** -17 for j in range(8)] + [(j + 0.5) * 2.0 ** -33 for j in range(8)]
    blocks[6][:len(ties) + 1] = np.array([1.0] + ties) * rng.choice([-1.0, 1.0], len(ties) + 1)
    ragged = (rng.choice([-1.0, 1.0], 100) * 2.0 ** rng.uniform(-40, 10, 100)).astype(f32)
    ragged[:4] = [0.0, -0.0, 1e-40, -3e-42]
    return np.concatenate(blocks + [ragged])


def edge_digest(backend):
    """Edge values through every store: SGD with lr = 1 from zero params stores -g (to bf16
    and fp16 params, nearest and stochastic, to a remainder pair and beside a master); momentum
    0 with lr 0 stores v = g (to bf16 state, stochastic, and 8-bit codes)."""
    rng = np.random.default_rng(21)
    fn = _impl(backend)
    out = []
    g = _edge_values(rng, 3000, [0x7FC00000, 0xFFC00000, 0x7FC00123, 0x7F800001, 0xFFFFFFFF])
    n = g.size
    k = F.scalars("sgd", lr=1.0, step=0)
    for sr in (None, (2 ** 64 - 1, 0, [0, 1, 2, 3, 4])):
        params = [np.zeros(n, np.float16), np.zeros(n, BF16), np.zeros(n, BF16),
                  np.zeros(n, np.float16), np.zeros(n, BF16)]
        masters = [None, None, np.zeros(n, np.int16), np.zeros(n, np.float32),
                   np.zeros(n, np.float32)]
        fn("sgd", params, [g] * 5, masters, [], [], k, sr)
        out += params + masters[2:]
    g8 = _blocks_8bit(rng)
    n = g8.size
    k = F.scalars("momentum", lr=1.0, step=0)._replace(lr=0.0, momentum=0.0)
    params = [np.zeros(n, np.float32) for _ in range(3)]
    states = [[np.zeros(n, BF16), np.zeros(n, np.int8), np.zeros(n, np.uint8)]]
    absmax = [[np.zeros(0, np.float32)] + [np.zeros(P.nblocks(n), np.float32)] * 2]
    absmax[0][2] = absmax[0][2].copy()
    fn("momentum", params, [g8] * 3, None, states, absmax, k, (5, 6, [7, 8, 9]))
    out += params + states[0] + absmax[0]
    return _digest(_bits(a) for a in out)


def bf16_edge_digest(backend):
    """The all-bfloat16 layout (bf16 params bare or with remainders, bf16 grads and states: the
    C++ fused loop) at its edges: grads and params holding NaNs with payloads, infinities,
    subnormals and ties, ragged lengths, two steps of SGD, momentum and Adam, nearest and
    stochastic. NaN arithmetic runs only where its result is stored canonical (no remainder)."""
    rng = np.random.default_rng(33)
    fn = _impl(backend)
    out = []
    nan16 = np.array([0x7FC1, 0xFF81, 0x7F81, 0xFFFF, 0x7F80, 0xFF80], np.uint16)
    for n in (16 * 37 + 5, 4099):
        g = _edge_values(rng, n - 64, [0x7FC00000, 0xFFC00123]).astype(BF16)
        g.view(np.uint16)[rng.choice(g.size, nan16.size, replace=False)] = nan16
        for rule, remainder in (("sgd", False), ("sgd", True), ("momentum", True),
                                ("momentum", False), ("adam", False)):
            for sr in (None, (3, 4, [5])):
                params = [(rng.standard_normal(g.size) * 0.5).astype(BF16)]
                if not remainder:
                    params[0].view(np.uint16)[rng.choice(g.size, nan16.size, False)] = nan16
                masters = [rng.integers(-2 ** 15, 2 ** 15, g.size).astype(np.int16)] \
                    if remainder else None
                states = [[np.abs(rng.standard_normal(g.size) * 0.1).astype(BF16)]
                          for _ in RULES[rule].state_names]
                absmax = [[np.zeros(0, np.float32)] for _ in states]
                for t in range(2):
                    k = F.scalars(rule, lr=0.1, step=t)
                    fn(rule, params, [g], masters, states, absmax, k, sr)
                out += params + (masters or []) + [s[0] for s in states]
    return _digest(_bits(a) for a in out)


def test_bf16_edge_values_match_reference_bit_for_bit():
    _cpp_or_skip()
    with np.errstate(all="ignore"):
        want = bf16_edge_digest("numpy")
        assert bf16_edge_digest("cpp") == want
        assert bf16_edge_digest("numba") == want


def _cpp_or_skip():
    from fastopt import _dispatch
    reason = _dispatch.unavailable_reason("cpp")
    if reason:
        pytest.skip(reason)


def sweep_digest(backend):
    """Every float16 widened (SGD, lr = 1, from zero float32 params: p = -g), and every float16
    and bfloat16 midpoint with its float32 neighbours rounded to nearest and stochastically
    (p = -g from zero 16-bit params), through the kernels' own conversion loops."""
    out = []
    h = np.arange(1 << 16, dtype=np.uint16)
    k = F.scalars("sgd", lr=1.0, step=0)
    fn = _impl(backend)
    params = [np.zeros(h.size, np.float32)]
    fn("sgd", params, [h.view(np.float16)], None, [], [], k, None)
    out += params
    for dt, widen in ((np.float16, P.f16_widen), (BF16, P.bf16_widen)):
        v = widen(h)
        v = np.sort(v[np.isfinite(v)].astype(np.float64))
        mid = ((v[:-1] + v[1:]) / 2).astype(np.float32)  # exact: the ties
        x = np.concatenate([mid, np.nextafter(mid, np.float32(np.inf)),
                            np.nextafter(mid, np.float32(-np.inf))])
        for sr in (None, (11, 12, [13])):
            params = [np.zeros(x.size, dt)]
            fn("sgd", params, [-x], None, [], [], k, sr)
            out += params
    return _digest(_bits(a) for a in out)


def test_cpp_edge_values_match_reference_bit_for_bit():
    _cpp_or_skip()
    with np.errstate(all="ignore"):
        assert edge_digest("cpp") == edge_digest("numpy")
        assert sweep_digest("cpp") == sweep_digest("numpy")


_LEVEL_SCRIPT = "import json; from fastopt import _C; print(json.dumps(_C.simd_level()))"
_PATHS_SCRIPT = """
import json, numpy as np
from fastopt import _C
import test_precision_kernels as T
with np.errstate(all="ignore"):
    print(json.dumps([_C.simd_level(), _C.num_threads(), T.mixed_digest("cpp"),
                      T.edge_digest("cpp"), T.sweep_digest("cpp"), T.bf16_edge_digest("cpp")]))
"""


def _in_subprocess(script, **env):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import fastopt_env, fastopt_parent
    here = str(Path(__file__).resolve().parent)
    env = fastopt_env(**env)
    env["PYTHONPATH"] = os.pathsep.join([here, env["PYTHONPATH"]])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env=env, cwd=fastopt_parent())
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_cpp_every_simd_path_and_thread_count_gives_the_reference_bytes():
    """FASTOPT_SIMD caps the instruction set (a cap above the CPU's gives the CPU's); every
    path and thread count must write the NumPy reference's bytes, on a multi-array call mixing
    every storage kind over chunk boundaries and on the edge values."""
    _cpp_or_skip()
    with np.errstate(all="ignore"):
        want = [mixed_digest("numpy"), edge_digest("numpy"), sweep_digest("numpy"),
                bf16_edge_digest("numpy")]
    native = _in_subprocess(_LEVEL_SCRIPT, FASTOPT_SIMD="")  # this process may run capped
    rank = ["baseline", "avx2", "avx512"]
    for simd in rank:
        for threads in (1, 2):
            level, nthreads, *got = _in_subprocess(_PATHS_SCRIPT, FASTOPT_SIMD=simd,
                                                   OMP_NUM_THREADS=str(threads))
            assert level == rank[min(rank.index(simd), rank.index(native))], (simd, level)
            assert nthreads == threads
            assert got == want, (simd, threads)


def test_cpp_simd_level_honours_fastopt_simd():
    _cpp_or_skip()
    script = _LEVEL_SCRIPT
    native = _in_subprocess(script, FASTOPT_SIMD="")
    assert native in ("baseline", "avx2", "avx512")
    assert _in_subprocess(script, FASTOPT_SIMD="baseline") == "baseline"
    assert _in_subprocess(script, FASTOPT_SIMD="avx2") == ("baseline" if native == "baseline"
                                                         else "avx2")
    assert _in_subprocess(script, FASTOPT_SIMD="avx512") == native
    assert _in_subprocess(script, FASTOPT_SIMD="no-such-level") == native  # unknown: no cap


# -- the C++ boundary trusts nothing --------------------------------------------------------------

def _native_args(n=1000):
    """A valid direct call of fastopt._C.compact_update (adam: bf16 param + remainder, f32 grad,
    int8 m, uint8 v), as keyword arguments."""
    from fastopt import _cpp
    return dict(kernel="adam", params=[np.ones(n, BF16).view(np.uint16)], param_kinds=[_cpp._BF16],
                grads=[np.ones(n, np.float32)], grad_kinds=[_cpp._F32],
                masters=[np.zeros(n, np.int16)], master_kinds=[_cpp._I16],
                states=[[np.zeros(n, np.int8)], [np.zeros(n, np.uint8)]],
                state_kinds=[[_cpp._I8], [_cpp._U8]],
                absmax=[[np.ones(4, np.float32)], [np.ones(4, np.float32)]],
                scalars=list(F.scalars("adam", lr=1e-3, step=0)), sr=None)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


_shared = np.zeros(2000, np.int16)
#: name -> edit of the valid arguments; every one must be refused, writing nothing
NATIVE_CASES = {
    "float64 grad": lambda a: a.update(grads=[np.ones(1000)]),
    "short grad": lambda a: a.update(grads=[np.ones(999, np.float32)]),
    "strided grad": lambda a: a.update(grads=[np.ones(2000, np.float32)[::2]]),
    "read-only param": lambda a: a.update(params=[_read_only(a["params"][0])]),
    "float16 array declared bfloat16": lambda a: a.update(params=[np.ones(1000, np.float16)]),
    "big-endian bits": lambda a: a.update(params=[a["params"][0].astype(">u2")]),
    "remainder beside a float16 param": lambda a: a.update(param_kinds=[2]),
    "array where no master is declared": lambda a: a.update(master_kinds=[6]),
    "int8 codes declared uint8": lambda a: a.update(state_kinds=[[5], [5]]),
    "float16 state": lambda a: a.update(state_kinds=[[2], [5]]),
    "unknown kind": lambda a: a.update(grad_kinds=[99]),
    "kinds missing": lambda a: a.update(param_kinds=[]),
    "a state list missing": lambda a: a.update(states=a["states"][:1], state_kinds=[[4]]),
    "short absmax": lambda a: a.update(absmax=[[np.ones(3, np.float32)], a["absmax"][1]]),
    "float64 absmax": lambda a: a.update(absmax=[[np.ones(4)], a["absmax"][1]]),
    "read-only absmax": lambda a: a.update(absmax=[[_read_only(a["absmax"][0][0])],
                                                   a["absmax"][1]]),
    "no absmax for codes": lambda a: a.update(absmax=[]),
    "param is its remainder": lambda a: a.update(params=[_shared[:1000].view(np.uint16)],
                                                 masters=[_shared[:1000]]),
    "remainder overlaps a state": lambda a: a.update(
        masters=[_shared[400:1400]], states=[[_shared[:500].view(np.int8)], a["states"][1]]),
    "absmax inside the codes": lambda a: a.update(
        absmax=[[a["states"][0][0][16:32].view(np.float32)], a["absmax"][1]]),
    "negative seed": lambda a: a.update(sr=(-1, 0, [0])),
    "seed 2^64": lambda a: a.update(sr=(1 << 64, 0, [0])),
    "negative id": lambda a: a.update(sr=(1, 0, [-3])),
    "ids missing": lambda a: a.update(sr=(1, 0, [])),
    "sr not a tuple": lambda a: a.update(sr=[1, 0, [0]]),
    "wrong number of scalars": lambda a: a.update(scalars=a["scalars"][:-1]),
    "unknown kernel": lambda a: a.update(kernel="nope"),
}


@pytest.mark.parametrize("case", NATIVE_CASES)
def test_cpp_compact_kernel_refuses_and_writes_nothing(case):
    _cpp_or_skip()
    from fastopt import _C
    args = _native_args()
    NATIVE_CASES[case](args)
    arrays = [x for key in ("params", "masters", "grads") for x in args[key]]
    arrays += [x for lst in args["states"] + args["absmax"] for x in lst]
    before = [np.array(x, copy=True) for x in arrays]
    with pytest.raises((TypeError, ValueError)):
        _C.compact_update(**args)
    assert all(np.array_equal(b, x, equal_nan=True) for b, x in zip(before, arrays))
    _C.compact_update(**_native_args())  # and the valid call goes through


# -- the numba backend: thread counts, and its float16 recipes for CPUs without F16C ------------

def _numba_or_skip():
    from fastopt import _dispatch
    reason = _dispatch.unavailable_reason("numba")
    if reason:
        pytest.skip(reason)


_NUMBA_SCRIPT = """
import json, numba, numpy as np
import test_precision_kernels as T
with np.errstate(all="ignore"):
    print(json.dumps([numba.get_num_threads(), T.mixed_digest("numba"), T.edge_digest("numba")]))
"""


@pytest.mark.slow
def test_numba_thread_count_gives_the_reference_bytes():
    """NUMBA_NUM_THREADS 1 and 2 write the NumPy reference's bytes: the mixed call is large
    enough for the parallel kernel (chunks shared over threads), the edge calls run the serial
    one."""
    _numba_or_skip()
    with np.errstate(all="ignore"):
        want = [mixed_digest("numpy"), edge_digest("numpy")]
    for threads in (1, 2):
        nthreads, *got = _in_subprocess(_NUMBA_SCRIPT, NUMBA_NUM_THREADS=str(threads))
        assert nthreads == threads
        assert got == want, threads


def test_numba_float16_integer_recipes_match_reference():
    """Where the compiled code may not use F16C the numba kernel converts float16 with integer
    recipes (fastopt._numba.compact's _f16_widen_bits, _f16_rn_bits), which this machine's
    kernel may never run: they must give the reference's bits for every float16, and for every
    float16 midpoint, its float32 neighbours and the edge values."""
    _numba_or_skip()
    from numba import njit

    from fastopt._numba import compact as C

    @njit
    def convert(h, x, wide, narrow):
        for i in range(h.size):
            wide[i] = C._f16_widen_bits(h[i])
        for i in range(x.size):
            narrow[i] = C._f16_rn_bits(x[i])

    h = np.arange(1 << 16, dtype=np.uint16)
    v = P.f16_widen(h[(h & 0x7C00) != 0x7C00]).astype(np.float64)  # the finite ones
    v.sort()
    mid = ((v[:-1] + v[1:]) / 2).astype(np.float32)  # exact in float32: the ties
    x = np.concatenate([mid, np.nextafter(mid, np.float32(np.inf)),
                        np.nextafter(mid, np.float32(-np.inf)),
                        _edge_values(np.random.default_rng(5), 200000,
                                     [0x7FC00000, 0xFFC00001, 0x7F800001, 0xFFFFFFFF])])
    wide, narrow = np.empty(h.size, np.float32), np.empty(x.size, np.uint16)
    convert(h, x, wide, narrow)
    assert np.array_equal(wide.view(np.uint32), P.f16_widen(h).view(np.uint32))
    with np.errstate(all="ignore"):
        assert np.array_equal(narrow, P.f16_nearest(x))


# -- a NaN in an 8-bit block: every backend stores the canonical NaN as its absmax ---------------

@pytest.mark.parametrize("backend", ["numpy", "cpp", "numba"])
def test_nan_payload_in_a_block_gives_the_canonical_absmax(backend):
    config = (BF16, np.float32, False, "int8", False)
    params, grads, masters, states, absmax = make("lion", config, (5000,))
    g = grads[0][0]
    g.view(np.uint32)[300] = 0x7FC01234  # a NaN with a payload, in block 1
    g.view(np.uint32)[3000] = 0xFFC00777  # and a negative one, in block 11
    k = F.scalars("lion", lr=1e-3, step=0)
    _impl(backend)("lion", params, grads[0], masters, states, absmax, k, None)
    am = absmax[0][0].view(np.uint32)
    assert am[1] == 0x7FC00000 and am[11] == 0x7FC00000
    assert np.isfinite(absmax[0][0][[0, 2, 10, 12]]).all()
