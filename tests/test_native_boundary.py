"""The kernels' own entry points trust nothing (STYLE 16): whatever Python hands them, a kernel
raises rather than reads or writes outside an array, and a refused call writes nothing.

These tests call the backends' modules directly (below the public API's friendlier checks),
as a bug elsewhere in fastopt, or a user holding internals, would. The CI sanitizer job runs
this file under AddressSanitizer and UndefinedBehaviorSanitizer.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastopt import _dispatch, _registry, _rules
from fastopt._core import GuardedCall
from fastopt import functional as F

from conftest import snapshot
from optim_db import DB

CPU = [pytest.param(b, marks=pytest.mark.skipif(bool(_dispatch.unavailable_reason(b)),
                                                reason=str(_dispatch.unavailable_reason(b))))
       for b in _registry.CPU_BACKENDS]


def kernels(backend):
    return _dispatch.module(backend)


def adam_args(n=(5, 129), dtype=np.float32):
    p = [np.linspace(-1, 1, k).astype(dtype) for k in n]
    g = [np.full(k, 0.25, dtype) for k in n]
    s = [[np.zeros(k, dtype) for k in n], [np.zeros(k, dtype) for k in n]]
    return p, g, s


def reversed_view(k, dtype=np.float32):
    return np.ones(k, dtype)[::-1]  # data pointer at the last element: reading on overflows


def broadcast(k, dtype=np.float32):
    return np.broadcast_to(np.ones(1, dtype), (k,))  # k elements over one element of memory


# name -> edit(p, g, s) returning (p, g, s) to pass; every one must be refused.
OPTIM_CASES = {
    "grad longer than param (the heap overflow)": lambda p, g, s: (p, [np.ones(1 << 16, np.float32), g[1]], s),
    "grad shorter than param": lambda p, g, s: (p, [g[0][:3], g[1]], s),
    "state longer than param": lambda p, g, s: (p, g, [[np.zeros(1 << 16, np.float32), s[0][1]], s[1]]),
    "state shorter than param": lambda p, g, s: (p, g, [s[0], [s[1][0], s[1][1][:7]]]),
    "param longer than its state": lambda p, g, s: ([np.zeros(1 << 16, np.float32), p[1]],
                                                    [np.zeros(1 << 16, np.float32), g[1]], s),
    "one grad missing": lambda p, g, s: (p, g[:1], s),
    "one state array missing": lambda p, g, s: (p, g, [s[0][:1], s[1]]),
    "one grad too many": lambda p, g, s: (p, g + [g[0]], s),
    "a state list missing": lambda p, g, s: (p, g, s[:1]),
    "float64 grad for float32 params": lambda p, g, s: (p, [g[0].astype(np.float64), g[1]], s),
    "float64 state for float32 params": lambda p, g, s: (p, g, [[s[0][0].astype(np.float64), s[0][1]], s[1]]),
    "mixed param dtypes": lambda p, g, s: ([p[0], p[1].astype(np.float64)], g, s),
    "reversed grad view": lambda p, g, s: (p, [reversed_view(5), g[1]], s),
    "broadcast grad": lambda p, g, s: (p, [broadcast(5), g[1]], s),
    "strided state": lambda p, g, s: (p, g, [[np.zeros(10, np.float32)[::2], s[0][1]], s[1]]),
    "read-only state": lambda p, g, s: (p, g, [[broadcast(5), s[0][1]], s[1]]),
    "grad not an array": lambda p, g, s: (p, [[0.25] * 5, g[1]], s),
    "int grad": lambda p, g, s: (p, [g[0].astype(np.int32), g[1]], s),
    "grads not a list": lambda p, g, s: (p, 3.0, s),
}


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("case", list(OPTIM_CASES), ids=list(OPTIM_CASES))
def test_optim_kernel_refuses_and_writes_nothing(backend, case):
    p0, g0, s0 = adam_args()
    p, g, s = OPTIM_CASES[case](p0, g0, s0)
    k = F.scalars("adam", lr=0.1, step=0)
    written = [a for a in p + [x for lst in s for x in lst] if isinstance(a, np.ndarray)]
    before = snapshot(p0 + s0[0] + s0[1]) + snapshot(written)
    with pytest.raises((TypeError, ValueError)):
        kernels(backend).optim_update("adam", p, g, s, k)
    assert snapshot(p0 + s0[0] + s0[1]) + snapshot(written) == before


@pytest.mark.parametrize("backend", CPU)
def test_optim_kernel_refuses_bad_scalars(backend):
    p, g, s = adam_args()
    before = snapshot(p)
    with pytest.raises((TypeError, ValueError)):
        kernels(backend).optim_update("adam", p, g, s, list(F.scalars("adam", lr=0.1, step=0))[:-1])
    with pytest.raises(ValueError):
        kernels(backend).optim_update("lion?", p, g, s, F.scalars("adam", lr=0.1, step=0))
    assert snapshot(p) == before


@pytest.mark.parametrize("what", ["grad is a param", "grad overlaps a state array",
                                  "two params overlap", "state is a param"])
def test_cpp_kernel_refuses_aliased_outputs(what):
    """The C++ entry point also checks pointers against each other: an output that overlaps
    any other array of the call is refused (Python refuses it first, with names)."""
    if _dispatch.unavailable_reason("cpp"):
        pytest.skip(_dispatch.unavailable_reason("cpp"))
    from fastopt import _C
    base = np.zeros(16, np.float32)
    p, g, s = adam_args((5, 5))
    if what == "grad is a param":
        g = [p[1], g[1]]
    elif what == "grad overlaps a state array":
        big = np.zeros(8, np.float32)
        s = [[big[:5], s[0][1]], s[1]]
        g = [big[3:8], g[1]]
    elif what == "two params overlap":
        p = [base[:5], base[4:9]]
    else:
        s = [s[0], [p[0], s[1][1]]]
    before = snapshot(p + s[0] + s[1])
    with pytest.raises(ValueError, match="overlap"):
        _C.optim_update("adam", p, g, s, list(F.scalars("adam", lr=0.1, step=0)))
    assert snapshot(p + s[0] + s[1]) == before


NORM_CASES = {
    "mixed dtypes, float64 second": lambda: [np.ones(5, np.float32), np.ones(5)],
    "mixed dtypes, float32 second": lambda: [np.ones(5), np.ones(1 << 16, np.float32)],
    "reversed view": lambda: [reversed_view(1 << 15)],
    "broadcast": lambda: [broadcast(1 << 15)],
    "not an array": lambda: [[1.0, 2.0]],
    "int array": lambda: [np.ones(5, np.int64)],
}


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("case", list(NORM_CASES), ids=list(NORM_CASES))
def test_norm_kernels_refuse(backend, case):
    arrays = NORM_CASES[case]()
    if backend != "numpy":  # the reference reads through NumPy, which cannot overflow
        with pytest.raises((TypeError, ValueError)):
            kernels(backend).norm_partials(arrays, 1.0, False)
    before = snapshot([a for a in arrays if isinstance(a, np.ndarray)])
    with pytest.raises((TypeError, ValueError)):
        kernels(backend).norm_scale(arrays, 0.5)
    assert snapshot([a for a in arrays if isinstance(a, np.ndarray)]) == before


@pytest.mark.parametrize("backend", [b for b in CPU if b.values[0] != "numpy"])
def test_norm_scale_refuses_read_only(backend):
    a = np.ones(7, np.float32)
    a.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        kernels(backend).norm_scale([np.ones(3, np.float32), a], 0.5)
    assert np.all(a == 1)


# -- fuzz: random layouts through every native entry point -------------------------------------

# Sizes around the chunk (2**15) and norm-block (2**14) seams, and the vector widths.
SEAMS = [0, 1, 2, 3, 7, 8, 15, 16, 17, 129, (1 << 14) - 1, 1 << 14, (1 << 14) + 3,
         (1 << 15) - 1, 1 << 15, (1 << 15) + 1, 40000]
sizes = st.lists(st.sampled_from(SEAMS) | st.integers(0, 3000), min_size=1, max_size=12)
RULES = list(DB)
native = [b for b in ("cpp", "numba") if not _dispatch.unavailable_reason(b)]


def set_threads(backend, n):
    if backend == "cpp":
        from fastopt import _C
        _C.set_num_threads(n)
    else:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


@pytest.fixture(autouse=True)
def restore_threads():
    yield
    for b in native:
        import os
        set_threads(b, os.cpu_count() or 1)


@pytest.mark.skipif(not native, reason="no native CPU backend is available here")
@settings(max_examples=40)
@given(sizes=sizes, rule=st.sampled_from(RULES), f64=st.booleans(), threads=st.integers(1, 3),
       backend=st.sampled_from(native or ["numpy"]), seed=st.integers(0, 2**32 - 1),
       corrupt=st.sampled_from([None, None, "grow grad", "shrink state", "drop grad",
                                "dtype", "reverse", "alias"]), data=st.data())
def test_fuzz_optim_kernel(sizes, rule, f64, threads, backend, seed, corrupt, data):
    """Good random layouts give the reference's bits; corrupted ones raise and write nothing.
    The hyperparameters: one of the rule's rows in the optimizer database."""
    dtype = np.float64 if f64 else np.float32
    rng = np.random.default_rng(seed)
    p = [rng.standard_normal(n).astype(dtype) for n in sizes]
    g = [rng.standard_normal(n).astype(dtype) for n in sizes]
    r = _rules.RULES[rule]
    h = data.draw(st.sampled_from(DB[rule].rows), label="hyper")
    s = [[np.full(n, v, dtype) for n in sizes] for _, v in r.initial_values(r.check_hyper(**h))]
    k = F.scalars(rule, lr=0.01, step=3, **h)
    set_threads(backend, threads)
    if corrupt is None:
        ref_p, ref_s = [a.copy() for a in p], [[a.copy() for a in lst] for lst in s]
        kernels("numpy").optim_update(rule, ref_p, g, ref_s, k)
        kernels(backend).optim_update(rule, p, g, s, k)
        assert all(np.array_equal(a, b) for a, b in zip(p, ref_p))
        assert all(np.array_equal(a, b) for x, y in zip(s, ref_s) for a, b in zip(x, y))
        return
    i = int(rng.integers(len(sizes)))
    if corrupt == "grow grad":
        g[i] = np.ones(sizes[i] + 1 + int(rng.integers(1 << 16)), dtype)
    elif corrupt == "shrink state":
        if not s or sizes[i] == 0:
            s = s[:-1] if s else [[np.zeros(n, dtype) for n in sizes]]  # wrong list count
        else:
            s[0][i] = s[0][i][:-1].copy()
    elif corrupt == "drop grad":
        g = g[:-1]
    elif corrupt == "dtype":
        g[i] = g[i].astype(np.float32 if f64 else np.float64)
    elif corrupt == "reverse":
        # a reversed view of 0 or 1 elements is still C-contiguous: make it longer there
        g[i] = np.ones(sizes[i] + 1, dtype)[::-1] if sizes[i] <= 1 else g[i][::-1]
    else:  # alias: refused in C++; the Python kernels leave aliasing to the public checks
        if backend != "cpp" or sizes[i] == 0:
            return
        g[i] = p[i]
    before = snapshot(p + [a for lst in s for a in lst])
    with pytest.raises((TypeError, ValueError)):
        kernels(backend).optim_update(rule, p, g, s, k)
    assert snapshot(p + [a for lst in s for a in lst]) == before


@pytest.mark.skipif(not native, reason="no native CPU backend is available here")
@settings(max_examples=30)
@given(sizes=sizes, f64=st.booleans(), threads=st.integers(1, 3), want_max=st.booleans(),
       backend=st.sampled_from(native or ["numpy"]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_norm_kernels(sizes, f64, threads, want_max, backend, seed):
    """Random layouts and thread counts: the same bits as the reference, for sums, max and
    the in-place scale."""
    dtype = np.float64 if f64 else np.float32
    rng = np.random.default_rng(seed)
    x = [rng.standard_normal(n).astype(dtype) for n in sizes]
    set_threads(backend, threads)
    got = kernels(backend).norm_partials(x, 1.0, want_max)
    ref = kernels("numpy").norm_partials(x, 1.0, want_max)
    assert np.array_equal(got[0], ref[0])
    if want_max:
        assert np.array_equal(got[1], ref[1])
    y = [a.copy() for a in x]
    kernels(backend).norm_scale(x, 0.375)
    kernels("numpy").norm_scale(y, 0.375)
    assert all(np.array_equal(a, b) for a, b in zip(x, y))


# -- the device adapters (no GPU needed: the checks run before anything reaches a device) -----

class FakeDeviceArray:
    """Just enough of __cuda_array_interface__ for fastopt to take it as a device array."""

    def __init__(self, n, typestr="<f4", ptr=0x1000):
        self.size, self.shape = n, (n,)
        self.__cuda_array_interface__ = {"shape": (n,), "typestr": typestr, "strides": None,
                                         "data": (ptr, False), "version": 3}


def device_cases():
    f = FakeDeviceArray
    p = [f(5), f(129)]
    return {
        "grad longer": (p, [f(1 << 16), f(129)], [[f(5), f(129)], [f(5), f(129)]], "65536 elements"),
        "state shorter": (p, [f(5), f(129)], [[f(5), f(128)], [f(5), f(129)]], "128 elements"),
        "grad missing": (p, [f(5)], [[f(5), f(129)], [f(5), f(129)]], "grads must be a list"),
        "state list missing": (p, [f(5), f(129)], [[f(5), f(129)]], "states must hold 2"),
        "float64 grad": (p, [f(5, "<f8"), f(129)], [[f(5), f(129)], [f(5), f(129)]], "dtype"),
        "host grad": (p, [np.ones(5, np.float32), f(129)], [[f(5), f(129)], [f(5), f(129)]],
                      "device arrays only"),
    }


@pytest.mark.parametrize("module", ["fastopt._cuda", "fastopt._numba_cuda"])
@pytest.mark.parametrize("case", list(device_cases()))
def test_device_adapters_check_counts_sizes_and_dtypes(module, case):
    import importlib
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        pytest.skip(f"{module}: {e}")
    p, g, s, pattern = device_cases()[case]
    k = F.scalars("adam", lr=0.1, step=0)
    with pytest.raises((TypeError, ValueError), match=pattern):
        mod.optim_update("adam", p, g, s, k)
    with pytest.raises((TypeError, ValueError), match=pattern):
        mod.guarded_step(GuardedCall("adam", p, g, s, [k], 0, 1.0, True,
                                     FakeDeviceArray(136, "<f8"), 1, 1.0))


@pytest.mark.skipif(bool(_dispatch.unavailable_reason("numba")), reason="numba is not installed")
@pytest.mark.parametrize("case", list(OPTIM_CASES), ids=list(OPTIM_CASES))
def test_numba_boundary_without_the_extension(case, monkeypatch):
    """On a machine with no compiler the Numba kernels' table is checked in Python instead of
    by the extension: the same refusals."""
    from fastopt import _validate
    monkeypatch.setattr(_validate, "_kernel_addresses", None)
    test_optim_kernel_refuses_and_writes_nothing("numba", case)
    p, g, s = adam_args()
    ref_p, ref_s = [a.copy() for a in p], [[a.copy() for a in x] for x in s]
    k = F.scalars("adam", lr=0.1, step=0)
    kernels("numba").optim_update("adam", p, g, s, k)
    kernels("numpy").optim_update("adam", ref_p, g, ref_s, k)
    assert snapshot(p) == snapshot(ref_p)
