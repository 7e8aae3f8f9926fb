"""global_norm and clip_by_global_norm (SPEC §3): exactness against an exactly rounded reference,
bit-identical results across backends, thread counts and runs, NaN/inf rules, bad input."""
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastopt
from fastopt import _dispatch, _registry
from fastopt.norm import clip_by_global_norm, global_norm

from conftest import cpu_cases, fastopt_env, fastopt_parent, snapshot

BACKENDS = [b for b in _registry.KERNELS["norm.global_norm"] if b in _registry.CPU_BACKENDS]
CASES = cpu_cases("norm.global_norm")


def available(backends=BACKENDS):
    return [b for b in backends if _dispatch.unavailable_reason(b) is None]


def bits(x: float) -> str:
    return float(x).hex()


# -- an exactly rounded reference ----------------------------------------------------------------

def exact_norm(arrays) -> float:
    """sqrt of the correctly rounded sum of squares: each square split exactly into hi + lo
    (Veltkamp/Dekker, no FMA), summed by math.fsum, after an exact power-of-two scaling."""
    x = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in arrays] + [np.zeros(0)])
    if np.isnan(x).any():
        return math.nan
    if np.isinf(x).any():
        return math.inf
    m = float(np.max(np.abs(x), initial=0.0))
    if m == 0:
        return 0.0
    e = math.frexp(m)[1]
    y = np.ldexp(x, -e) if e >= -1000 else np.ldexp(np.ldexp(x, 600), -e - 600)  # |y| < 1
    hi = y * y
    c = y * 134217729.0  # 2**27 + 1
    yh = c - (c - y)
    yl = y - yh
    lo = ((yh * yh - hi) + 2 * yh * yl) + yl * yl
    s = math.fsum(np.concatenate([hi, lo]).tolist())
    with np.errstate(over="ignore"):
        return float(np.ldexp(math.sqrt(s), e))


def rel(a, b):
    if a == b:
        return 0.0
    return abs(a - b) / abs(b)


# -- inputs --------------------------------------------------------------------------------------

def random_arrays(dtype, seed=0, sizes=(0, 1, 7, 129, 4097, 16384, 16385, 100003)):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * rng.lognormal(0, 2)).astype(dtype) for n in sizes]


def adversarial(dtype):
    """name -> list of arrays, the hard cases of the issue."""
    rng = np.random.default_rng(1)
    big, small = (1e200, 1e-200) if dtype == np.float64 else (1e19, 1e-19)
    out = {
        "random": random_arrays(dtype),
        "huge": [np.array([3 * big, 4 * big], dtype)],
        "tiny": [np.array([3 * small, 4 * small], dtype)],
        "mixed magnitudes": [(rng.standard_normal(3000) * 10.0 ** rng.uniform(
            -300 if dtype == np.float64 else -36, 300 if dtype == np.float64 else 36, 3000))
            .astype(dtype) for _ in range(3)],
        "equal values": [np.full(100_003, 0.1, dtype), np.full(70_001, 0.1, dtype)],
        "one huge among small": [rng.standard_normal(50_000).astype(dtype),
                                 np.array([np.finfo(dtype).max / 4], dtype)],
        "subnormal": [np.full(1000, np.finfo(dtype).smallest_subnormal, dtype)],
        "zeros": [np.zeros(17, dtype), np.zeros(0, dtype)],
        "empty arrays": [np.zeros(0, dtype)],
    }
    if dtype == np.float64:
        out["near overflow"] = [np.array([1e308, 1e308])]
        out["overflowing norm"] = [np.array([1.7e308, 1.7e308])]
    return out


ADV = [(dt, name) for dt in (np.float32, np.float64) for name in adversarial(dt)]


@pytest.mark.parametrize("dtype,name", ADV, ids=[f"{np.dtype(d).name}-{n}" for d, n in ADV])
def test_accuracy_and_same_bits_on_every_backend(dtype, name):
    arrays = adversarial(dtype)[name]
    want = exact_norm(arrays)
    got = {b: global_norm(arrays, backend=b) for b in available()}
    assert len(set(map(bits, got.values()))) == 1, got
    g = got["numpy"]
    if math.isinf(want):
        assert g == math.inf
    else:
        assert math.isfinite(g)
        assert rel(g, want) <= 1e-14, (g, want)


@given(sizes=st.lists(st.integers(0, 40_000), min_size=0, max_size=4),
       exps=st.lists(st.integers(-1000, 1000), min_size=4, max_size=4),
       f32=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_property_exact_and_identical_everywhere(sizes, exps, f32, seed):
    """Random lists, each array at its own scale 2**e (float32: e clipped to its range)."""
    rng = np.random.default_rng(seed)
    dtype = np.float32 if f32 else np.float64
    lim = 100 if f32 else 1000
    arrays = [np.ldexp(rng.standard_normal(n), int(np.clip(e, -lim, lim))).astype(dtype)
              for n, e in zip(sizes, exps)]
    got = {b: global_norm(arrays, backend=b) for b in available()}
    assert len(set(map(bits, got.values()))) == 1, got
    want = exact_norm(arrays)
    assert rel(got["numpy"], want) <= 1e-14 or got["numpy"] == want == math.inf


def test_issue_examples():
    for b in available():
        assert rel(global_norm([np.array([3e200, 4e200])], backend=b), 5e200) <= 1e-15
        assert rel(global_norm([np.array([3e-200, 4e-200])], backend=b), 5e-200) <= 1e-15
        f = np.array([3e19, 4e19], np.float32)
        assert rel(global_norm(f, backend=b), 5e19) <= 1e-7  # float32(3e19) is not 3e19
        assert rel(global_norm(f, backend=b), exact_norm([f])) <= 1e-15
    with np.errstate(over="ignore"):
        assert np.linalg.norm(np.array([3e19, 4e19], np.float32)) == np.inf  # what we fix


def test_ten_million_equal_values():
    """1e7 equal values, the exact answer known in closed form: within 1e-12 (SPEC), in fact
    much closer thanks to the lanes and the pairwise folds."""
    n = 10_000_000
    for dtype in (np.float32, np.float64):
        x = np.full(n, 0.1, dtype)
        exact = float(Fraction(float(x[0])) ** 2 * n)
        want = math.sqrt(exact)
        got = {b: global_norm(x, backend=b) for b in available(["cpp", "numba"])}
        assert len(set(map(bits, got.values()))) == 1
        for g in got.values():
            assert rel(g, want) <= 1e-12


def test_same_bits_as_the_reference_on_random_lists():
    for seed in range(3):
        for dtype in (np.float32, np.float64):
            arrays = random_arrays(dtype, seed)
            ref = global_norm(arrays, backend="numpy")
            for b in available():
                assert bits(global_norm(arrays, backend=b)) == bits(ref)
                n, per = global_norm(arrays, per_array=True, backend=b)
                assert bits(n) == bits(ref)
                for a, v in zip(arrays, per):
                    assert bits(v) == bits(global_norm(a, backend="numpy"))


@pytest.mark.parametrize("backend,dtype", CASES)
def test_kernel_partials_match_reference_bitwise(backend, dtype):
    """The per-array partial sums themselves, with and without scaling and the max."""
    arrays = random_arrays(dtype, 5)
    ref = _dispatch.module("numpy")
    mod = _dispatch.module(backend)
    for scale in (1.0, 2.0 ** -20, 2.0 ** 40):
        for want_max in (False, True):
            s1, m1 = mod.norm_partials(arrays, scale, want_max)
            s0, m0 = ref.norm_partials(arrays, scale, want_max)
            np.testing.assert_array_equal(s1, s0)
            if want_max:
                np.testing.assert_array_equal(m1, m0)
                np.testing.assert_array_equal(m0, [np.abs(a).max(initial=0) for a in arrays])


@pytest.mark.parametrize("backend,dtype", CASES)
def test_many_full_blocks_match_reference_bitwise(backend, dtype):
    """Enough full blocks for the C++ kernel to sum them several at a time (more streams in
    flight): grouping must not change a bit."""
    B = _registry.NORM_BLOCK
    rng = np.random.default_rng(11)
    arrays = [rng.standard_normal(n).astype(dtype) for n in (70 * B + 3, 5 * B, 17, 33 * B)]
    want = _dispatch.module("numpy").norm_partials(arrays, 1.0, False)[0]
    np.testing.assert_array_equal(_dispatch.module(backend).norm_partials(arrays, 1.0, False)[0],
                                  want)
    np.testing.assert_array_equal(
        _dispatch.module(backend).norm_partials(arrays, 2.0 ** -3, False)[0], want / 64)


def test_cpp_baseline_and_avx2_loops_give_the_same_bits():
    """Run-time ISA choice: a machine without AVX2 runs the portable loops; same bits."""
    if _dispatch.unavailable_reason("cpp"):
        pytest.skip(_dispatch.unavailable_reason("cpp"))
    from fastopt import _C
    B = _registry.NORM_BLOCK
    for dtype in (np.float32, np.float64):
        arrays = random_arrays(dtype, 12, sizes=(70 * B + 3, 17, 0, 5 * B, 1))
        arrays[1][4] = np.nan
        for scale in (1.0, 2.0 ** -9):
            for want_max in (False, True):
                a = _C.norm_partials(arrays, scale, want_max)
                b = _C.norm_partials(arrays, scale, want_max, baseline=True)
                r = _dispatch.module("numpy").norm_partials(arrays, scale, want_max)
                np.testing.assert_array_equal(a[0], b[0])
                np.testing.assert_array_equal(a[0], r[0])
                if want_max:  # away from the NaN, the max is exact everywhere
                    np.testing.assert_array_equal(np.delete(a[1], 1), np.delete(b[1], 1))


def test_cpp_grouped_short_blocks_give_the_reference_bits():
    """Enough blocks for the C++ kernel to group them: the short last blocks of many arrays run
    four at a time up to the shortest, then alone; every block keeps its own lanes and order."""
    if _dispatch.unavailable_reason("cpp"):
        pytest.skip(_dispatch.unavailable_reason("cpp"))
    from fastopt import _C
    B = _registry.NORM_BLOCK
    rng = np.random.default_rng(5)
    sizes = [int(n) for n in rng.integers(0, 3 * B, 61)] + [1, 15, 16, 17, 31, B - 1, B + 1, 2 * B]
    for dtype in (np.float32, np.float64):
        arrays = [rng.standard_normal(n).astype(dtype) for n in sizes]
        for scale in (1.0, 2.0 ** -7):
            want = _dispatch.module("numpy").norm_partials(arrays, scale, False)[0]
            for baseline in (False, True):
                got = _C.norm_partials(arrays, scale, False, baseline=baseline)[0]
                np.testing.assert_array_equal(got, want)


def test_block_and_lane_constants_agree():
    from fastopt._numba import norm as nb  # noqa: F401  (checks its own copy at import)
    if _dispatch.unavailable_reason("cpp") is None:
        from fastopt import _C
        assert (_C.norm_block, _C.norm_lanes) == (_registry.NORM_BLOCK, _registry.NORM_LANES)


# -- determinism: threads, runs --------------------------------------------------------------------

_SCRIPT = r"""
import numpy as np, fastopt
from fastopt import _dispatch
rng = np.random.default_rng(7)
sizes = [int(s) for s in rng.lognormal(8, 2, 60).clip(1, 600_000)] + [(1 << 20) + 12345]
lists = {
    "f32": [(rng.standard_normal(n) * 3).astype(np.float32) for n in sizes],
    "f64": [rng.standard_normal(n) * 1e-3 for n in sizes],
    "f64 huge": [rng.standard_normal(n) * 1e300 for n in sizes[:20]],
    "f32 25 blocks": [rng.standard_normal(24 * 16384 + 5).astype(np.float32)],
}
out = []
for b in ("cpp", "numba", "numpy"):
    if _dispatch.unavailable_reason(b):
        continue
    for k, arrays in lists.items():
        if b == "numpy" and k != "f32":
            continue
        for _ in range(3):
            n, per = fastopt.global_norm(arrays, per_array=True, backend=b)
            out.append(f"{k} {n.hex()} {hash(tuple(per.tolist()))}")
if _dispatch.unavailable_reason("cpp") is None:
    from fastopt import _C
    print("threads", _C.num_threads())
import numba
print("numba", numba.get_num_threads())
print("\n".join(out))
"""


def _run(threads):
    env = fastopt_env(OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=fastopt_parent(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    return lines


@pytest.mark.slow
def test_bitwise_deterministic_across_thread_counts_runs_and_backends():
    one, two = _run(1), _run(2)
    if _dispatch.unavailable_reason("cpp") is None:
        assert "threads 1" in one and "threads 2" in two
    assert "numba 1" in one and "numba 2" in two
    r1 = [x for x in one if not x.startswith(("threads", "numba"))]
    r2 = [x for x in two if not x.startswith(("threads", "numba"))]
    assert r1 == r2
    by_list = {}
    for line in r1:  # every backend and every run gives the same bits for a list
        k, rest = line.rsplit(" ", 2)[0], line.rsplit(" ", 2)[1:]
        by_list.setdefault(k, set()).add(tuple(rest))
    assert all(len(v) == 1 for v in by_list.values()), by_list


def test_numba_thread_setting_in_process():
    if _dispatch.unavailable_reason("numba"):
        pytest.skip(_dispatch.unavailable_reason("numba"))
    import numba
    arrays = random_arrays(np.float32, 3, sizes=(1 << 18, 5, 70_000))
    old = numba.get_num_threads()
    try:
        got = set()
        for t in sorted({1, old}):
            numba.set_num_threads(t)
            got.add(bits(global_norm(arrays, backend="numba")))
    finally:
        numba.set_num_threads(old)
    assert got == {bits(global_norm(arrays, backend="numpy"))}


# -- NaN / inf ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,dtype", CASES)
def test_nan_and_inf(backend, dtype):
    x = np.ones(40_000, dtype)
    y = np.ones(3, dtype)
    for where in (0, 17, 39_999):
        for bad, want in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "inf")):
            a = x.copy()
            a[where] = bad
            n, per = global_norm([y, a], per_array=True, backend=backend)
            assert repr(n) == want and repr(float(per[1])) == want and per[0] == math.sqrt(3)
            m = global_norm([y, a], ord=math.inf, backend=backend)
            assert repr(m) == want
    a = x.copy()
    a[[3, 5]] = [np.inf, np.nan]  # NaN wins over inf
    assert math.isnan(global_norm(a, backend=backend))
    assert math.isnan(global_norm(a, ord=math.inf, backend=backend))


@pytest.mark.parametrize("backend,dtype", CASES)
def test_ord_inf_and_per_array(backend, dtype):
    arrays = random_arrays(dtype, 2)
    n, per = global_norm(arrays, ord=math.inf, per_array=True, backend=backend)
    assert n == max(float(np.abs(a).max(initial=0)) for a in arrays)
    np.testing.assert_array_equal(per, [np.abs(a).max(initial=0) for a in arrays])
    n2, per2 = global_norm(arrays, per_array=True, backend=backend)
    assert n2 == global_norm(arrays, backend=backend)
    for a, v in zip(arrays, per2):
        assert rel(v, exact_norm([a])) <= 1e-14


def test_per_array_with_pathological_neighbours():
    """Each array's own norm stays exact even when the shared pass was scaled for another."""
    arrays = [np.array([1e300, 1e300]), np.array([3e-300, 4e-300]), np.zeros(4),
              np.array([1.0, 2.0]), np.array([np.inf])]
    for b in available():
        n, per = global_norm(arrays, per_array=True, backend=b)
        assert n == math.inf
        assert rel(per[0], exact_norm(arrays[:1])) <= 1e-15
        assert rel(per[1], 5e-300) <= 1e-15
        assert per[2] == 0 and per[3] == math.sqrt(5) and per[4] == math.inf
        n, per = global_norm(arrays[:4], per_array=True, backend=b)
        assert rel(n, exact_norm(arrays[:4])) <= 1e-15


def test_inputs_that_are_read_only_or_laid_out_oddly():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 7))
    want = global_norm(np.ascontiguousarray(x[:, ::2]))
    assert global_norm(x[:, ::2]) == want  # read through a contiguous copy
    ro = x.copy()
    ro.flags.writeable = False
    assert global_norm(ro) == global_norm(x)
    h = rng.standard_normal(1000).astype(np.float16)
    assert global_norm(h) == global_norm(h.astype(np.float32))
    mixed = [x.astype(np.float32), x, h]
    assert rel(global_norm(mixed), exact_norm(mixed)) <= 1e-14
    for b in available():
        assert bits(global_norm(mixed, backend=b)) == bits(global_norm(mixed, backend="numpy"))
    assert global_norm([]) == 0.0 and global_norm(np.zeros(0)) == 0.0


# -- clip_by_global_norm -----------------------------------------------------------------------

@pytest.mark.parametrize("backend,dtype", cpu_cases("norm.scale"))
def test_clip_exactness(backend, dtype):
    arrays = random_arrays(dtype, 4)
    before = [a.copy() for a in arrays]
    t0 = global_norm(arrays, backend="numpy")
    lam = t0 / 3
    t = clip_by_global_norm(arrays, lam, backend=backend)
    assert bits(t) == bits(t0)  # the unclipped norm
    c = np.dtype(dtype).type(lam / t0)  # rounded once to the storage dtype
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, c * b)
    after = global_norm(arrays)
    eps = np.finfo(dtype).eps
    assert abs(after - lam) <= 2 * eps * lam  # ~1 ulp of the dtype: rounding of c and products


@pytest.mark.parametrize("backend,dtype", cpu_cases("norm.scale"))
def test_clip_writes_nothing_when_not_needed(backend, dtype):
    arrays = random_arrays(dtype, 6)
    t0 = global_norm(arrays)
    for lam in (t0, 2 * t0, 1e30):
        snap = snapshot(arrays)
        assert clip_by_global_norm(arrays, lam, backend=backend) == t0
        assert snapshot(arrays) == snap
    for bad, want in ((np.nan, "nan"), (np.inf, "inf")):
        a = [x.copy() for x in arrays]
        a[-1][5] = bad
        snap = snapshot(a)
        assert repr(clip_by_global_norm(a, 1e-3, backend=backend)) == want
        assert snapshot(a) == snap


# -- bad input: SPEC §6 as rows; nothing is written ------------------------------------------

def _arrays():
    return [np.arange(6, dtype=np.float32), np.ones(3, np.float32)]


def _ro():
    a = np.ones(4, np.float32)
    a.flags.writeable = False
    return a


_shared = np.ones(20, np.float32)

BAD = [
    ("norm: not arrays", lambda a: global_norm(5), TypeError, r"arrays must be an array or a list"),
    ("norm: list item", lambda a: global_norm([a[0], [1.0]]), TypeError,
     r"arrays\[1\] must be a numpy"),
    ("norm: int dtype", lambda a: global_norm([np.arange(3)]), TypeError, r"arrays\[0\] has dtype"),
    ("norm: ord", lambda a: global_norm(a, ord=1), ValueError, r"ord must be 2 or math.inf"),
    ("norm: per_array", lambda a: global_norm(a, per_array="yes"), TypeError, r"per_array"),
    ("norm: backend", lambda a: global_norm(a, backend="fortran"), ValueError,
     r"backend='fortran'"),
    ("clip: max_norm 0", lambda a: clip_by_global_norm(a, 0.0), ValueError, r"max_norm"),
    ("clip: max_norm < 0", lambda a: clip_by_global_norm(a, -1), ValueError, r"max_norm"),
    ("clip: max_norm nan", lambda a: clip_by_global_norm(a, math.nan), ValueError, r"max_norm"),
    ("clip: max_norm str", lambda a: clip_by_global_norm(a, "1"), TypeError, r"max_norm"),
    ("clip: read-only", lambda a: clip_by_global_norm([a[0], _ro()], 1e-3), ValueError,
     r"arrays\[1\] is read-only"),
    ("clip: non-contiguous", lambda a: clip_by_global_norm([a[0], np.ones(8, np.float32)[::2]],
                                                           1e-3), ValueError,
     r"arrays\[1\] is not C-contiguous"),
    ("clip: overlapping", lambda a: clip_by_global_norm([a[0], _shared[:10], _shared[5:15]], 1e-3),
     ValueError, r"shares memory"),
    ("clip: float16", lambda a: clip_by_global_norm([a[0], np.ones(3, np.float16)], 1e-3),
     TypeError, r"arrays\[1\] has dtype float16"),
    ("clip: backend", lambda a: clip_by_global_norm(a, 1e-3, backend="nope"), ValueError,
     r"backend='nope'"),
    ("clip: not arrays", lambda a: clip_by_global_norm("x", 1.0), TypeError, r"arrays must be"),
]


@pytest.mark.parametrize("name,call,exc,pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_input_rejected_before_anything_is_written(name, call, exc, pattern):
    a = _arrays()
    snap = snapshot(a) + snapshot([_shared])
    with pytest.raises(exc, match=pattern):
        call(a)
    assert snapshot(a) + snapshot([_shared]) == snap


def test_native_layer_refuses_copies():
    """The last line of defence: the extension raises rather than converting an array."""
    if _dispatch.unavailable_reason("cpp"):
        pytest.skip(_dispatch.unavailable_reason("cpp"))
    from fastopt import _C
    with pytest.raises(TypeError):
        _C.norm_scale([np.ones(3, np.float32), np.ones(3)], 0.5)
    with pytest.raises(ValueError):
        _C.norm_scale([np.ones(8, np.float32)[::2]], 0.5)
    ro = _ro()
    with pytest.raises(ValueError):
        _C.norm_scale([ro], 0.5)


def test_public_names():
    for name in ("global_norm", "clip_by_global_norm", "GradNormMonitor", "AutoClip"):
        assert hasattr(fastopt, name) and name in fastopt.__all__


def test_as_array_on_host_and_its_bad_input():
    """as_array=True on NumPy arrays: a 0-d float64 array with the float's value; refused with
    ord=inf, per_array or a non-bool, before anything runs."""
    x = [np.array([3.0, 4.0], np.float32), np.ones(2)]
    got = fastopt.global_norm(x, as_array=True)
    assert isinstance(got, np.ndarray) and got.shape == () and got.dtype == np.float64
    assert float(got) == fastopt.global_norm(x) == math.sqrt(27)
    for kw, exc in ((dict(ord=math.inf), ValueError), (dict(per_array=True), ValueError),
                    (dict(as_array=1), TypeError)):
        with pytest.raises(exc, match="as_array"):
            fastopt.global_norm(x, **{"as_array": True, **kw})
