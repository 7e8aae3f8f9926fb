"""The global norm on bfloat16 and float16 host arrays, read in place (SPEC §3): every backend
widens each element exactly to float32 and sums as for float32, so the partials and the norm
have the bits of the float32 copies' -- with no copy of the arrays."""
import math

import numpy as np
import pytest

import fastopt
from fastopt import _dispatch, _registry
from fastopt import norm as N

ml_dtypes = pytest.importorskip("ml_dtypes")

BF16, F16 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)
DTYPES = [pytest.param(BF16, id="bfloat16"), pytest.param(F16, id="float16")]
BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(bool(_dispatch.unavailable_reason(b)),
                                                     reason=str(_dispatch.unavailable_reason(b))))
            for b in ("cpp", "numba", "numpy")]
B = _registry.NORM_BLOCK
SCALES = (1.0, 2.0 ** -9, 2.0 ** 40, 2.0 ** -600)


def needs_cpp():
    if _dispatch.unavailable_reason("cpp"):
        pytest.skip(_dispatch.unavailable_reason("cpp"))
    from fastopt import _C
    return _C


def hexes(v):
    return [float(x).hex() for x in np.asarray(v, np.float64)]


def same(a, b):
    """Per-array partials equal bit for bit (every NaN reads "nan")."""
    assert hexes(a[0]) == hexes(b[0])
    assert hexes(a[1]) == hexes(b[1])


def wide(arrays):
    return [a.astype(np.float32) for a in arrays]


def every_pattern(dt, width):
    """All 65536 bit patterns of dt (NaN, inf, subnormals, -0 included), width per array: 16
    fills the SIMD rows, an odd width the tails."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    bits = bits[:bits.size // width * width]
    return [np.ascontiguousarray(r) for r in bits.view(dt).reshape(-1, width)]


def finite_patterns(dt, seed=0):
    """Every finite value of dt in one array (shuffled), and its odd-length pieces."""
    x = np.arange(1 << 16, dtype=np.uint16).view(dt)
    x = x[np.isfinite(x.astype(np.float32))]
    x = x[np.random.default_rng(seed).permutation(x.size)]
    return [x, x[:B + 17].copy(), x[5:40].copy(), x[:1].copy(), x[:0].copy()]


def random_lists(dt, seed=0):
    rng = np.random.default_rng(seed)
    sizes = (0, 1, 7, 15, 16, 17, 129, 4097, B - 1, B, B + 1, 3 * B + 5, 100_003)
    arrays = [(rng.standard_normal(n) * rng.lognormal(0, 3)).astype(dt) for n in sizes]
    arrays += [(rng.standard_normal(int(n)) * 1e-3).astype(dt) for n in rng.integers(0, 300, 60)]
    arrays[3][4], arrays[8][100], arrays[9][-1] = np.nan, np.inf, -np.inf
    return arrays


# -- the kernels: 16-bit in, the float32 copy's bits out ---------------------------------------

@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_partials_equal_the_float32_copys(backend, dt):
    mod = _dispatch.module(backend)
    lists = [(random_lists(dt, 1), SCALES), (finite_patterns(dt), SCALES),
             (every_pattern(dt, 16), (1.0, 2.0 ** -600))]
    for arrays, scales in lists:
        for scale in scales:
            for want_max in (False, True):
                same(mod.norm_partials(arrays, scale, want_max),
                     mod.norm_partials(wide(arrays), scale, want_max))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_many_full_blocks_equal_the_float32_copys(backend, dt):
    """Enough blocks for the C++ kernel to sum them several at a time (one thread)."""
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(n).astype(dt) for n in (40 * B + 3, 5 * B, 17, 21 * B - 1)]
    arrays += [rng.standard_normal(int(n)).astype(dt) for n in rng.integers(0, 3 * B, 30)]
    mod = _dispatch.module(backend)
    threads = [None]
    if backend == "cpp":
        _C = needs_cpp()
        threads = [1, _C.num_threads()]
    for t in threads:
        if t is not None:
            old = _C.num_threads()
            _C.set_num_threads(t)
        try:
            for scale in (1.0, 2.0 ** -3):
                same(mod.norm_partials(arrays, scale, False),
                     mod.norm_partials(wide(arrays), scale, False))
        finally:
            if t is not None:
                _C.set_num_threads(old)


@pytest.mark.parametrize("dt", DTYPES)
def test_cpp_baseline_and_avx2_loops_give_the_same_bits(dt):
    _C = needs_cpp()
    old = _C.num_threads()
    lists = [random_lists(dt, 2), finite_patterns(dt, 1)] + [every_pattern(dt, w)
                                                             for w in (16, 3)]
    try:
        for t in sorted({1, old}):
            _C.set_num_threads(t)
            for arrays in lists:
                for scale in SCALES:
                    for want_max in (False, True):
                        a = _C.norm_partials(arrays, scale, want_max)
                        same(a, _C.norm_partials(arrays, scale, want_max, baseline=True))
                        same(a, _C.norm_partials(wide(arrays), scale, want_max))
    finally:
        _C.set_num_threads(old)


# -- the public norm ---------------------------------------------------------------------------

@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_global_norm_equals_the_float32_copys(backend, dt):
    arrays = random_lists(dt, 4)
    arrays[3][4] = arrays[8][100] = arrays[9][-1] = 1  # finite: the numbers themselves count
    for lst in (arrays, finite_patterns(dt, 2), [np.zeros(5, dt)], []):
        w = wide(lst)
        assert N._read_arrays(lst, "arrays") == lst  # read in place: no widened copy
        assert all(x is y for x, y in zip(N._read_arrays(lst, "arrays"), lst))
        assert fastopt.global_norm(lst, backend=backend).hex() == \
            fastopt.global_norm(w, backend=backend).hex()
        assert float(N._norm_checked(lst, backend)).hex() == \
            float(N._norm_checked(w, backend)).hex()  # the optimizers' clip/skip pass
        for ord in (2, math.inf):
            n, per = fastopt.global_norm(lst, ord=ord, per_array=True, backend=backend)
            n0, per0 = fastopt.global_norm(w, ord=ord, per_array=True, backend=backend)
            assert n.hex() == n0.hex() and hexes(per) == hexes(per0)
    for v, want in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "inf")):
        bad = [np.ones(5, dt), np.ones(B + 3, dt)]
        bad[1][B + 1] = v
        assert repr(fastopt.global_norm(bad, backend=backend)) == want
        assert repr(fastopt.global_norm(bad, ord=math.inf, backend=backend)) == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_and_odd_layouts(backend):
    """A list may mix float32, float64, float16 and bfloat16 (one kernel call per dtype): the
    norm of the list with its 16-bit arrays widened, bit for bit, on every backend."""
    rng = np.random.default_rng(6)
    f32 = rng.standard_normal(3 * B + 7).astype(np.float32)
    bf = (rng.standard_normal((300, 7)) * 5).astype(BF16)
    h = rng.standard_normal(1001).astype(F16)
    f64 = rng.standard_normal(99) * 1e-3
    mixed = [f32, bf, h, f64, bf[:, ::2], h[::-1], bf.T]  # views: read through a laid-out copy
    w = [a.astype(np.float32) if a.dtype in (BF16, F16) else a for a in mixed]
    got = fastopt.global_norm(mixed, backend=backend)
    assert got.hex() == fastopt.global_norm(w, backend=backend).hex()
    assert got.hex() == fastopt.global_norm(mixed, backend="numpy").hex()
    n, per = fastopt.global_norm(mixed, per_array=True, backend=backend)
    n0, per0 = fastopt.global_norm(w, per_array=True, backend=backend)
    assert n.hex() == got.hex() and hexes(per) == hexes(per0)
    m, pm = fastopt.global_norm(mixed, ord=math.inf, per_array=True, backend=backend)
    assert m == max(float(np.abs(a.astype(np.float64)).max()) for a in mixed)
    assert hexes(pm) == hexes([np.abs(a.astype(np.float64)).max() for a in mixed])
    assert float(fastopt.global_norm(mixed, as_array=True, backend=backend)).hex() == got.hex()


def test_default_backend_reads_16_bit_lists():
    x = np.linspace(-3, 3, 1001).astype(BF16)
    assert fastopt.global_norm(x) == fastopt.global_norm(x.astype(np.float32))
    assert fastopt.global_norm([x.astype(F16)]) == fastopt.global_norm(
        x.astype(F16).astype(np.float32))


# -- bad input: still refused, clearly -----------------------------------------------------------

def _swapped_f16():
    return np.ones(4, F16).astype(F16.newbyteorder())


KERNEL_BAD = {
    "bf16 then float16": lambda: [np.ones(5, BF16), np.ones(5, F16)],
    "float16 then bf16": lambda: [np.ones(5, F16), np.ones(1 << 16, BF16)],
    "float32 then bf16": lambda: [np.ones(5, np.float32), np.ones(5, BF16)],
    "bf16 then float32": lambda: [np.ones(5, BF16), np.ones(5, np.float32)],
    "float16 then float64": lambda: [np.ones(5, F16), np.ones(5)],
    "strided bf16": lambda: [np.ones(5, BF16), np.ones(64, BF16)[::2]],
    "reversed float16": lambda: [np.ones(1 << 15, F16)[::-1]],
    "bf16 then a list": lambda: [np.ones(5, BF16), [1.0, 2.0]],
    "int16": lambda: [np.ones(5, np.int16)],
    "uint16": lambda: [np.ones(5, np.uint16)],
    "byte-swapped float16": lambda: [_swapped_f16()],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(KERNEL_BAD), ids=list(KERNEL_BAD))
def test_kernels_refuse(backend, case):
    mod = _dispatch.module(backend)
    with pytest.raises((TypeError, ValueError)):
        mod.norm_partials(KERNEL_BAD[case](), 1.0, True)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_norm_scale_stays_float32_float64(backend, dt):
    """Scaling in place stays float32/float64: refused (and nothing written) for 16-bit."""
    x = np.linspace(-1, 1, 33).astype(dt)
    before = x.tobytes()
    with pytest.raises(TypeError):
        _dispatch.module(backend).norm_scale([x], 0.5)
    with pytest.raises(TypeError, match=rf"arrays\[1\] has dtype {dt.name}"):
        fastopt.clip_by_global_norm([np.ones(3, np.float32), x], 1e-3, backend=backend)
    assert x.tobytes() == before


def test_cpp_errors_name_the_array():
    _C = needs_cpp()
    with pytest.raises(TypeError, match=r"arrays\[1\] has the wrong dtype \(arrays\[0\] is "
                                        r"bfloat16\)"):
        _C.norm_partials([np.ones(3, BF16), np.ones(3, F16)], 1.0, False)
    with pytest.raises(ValueError, match=r"arrays\[1\] is not C-contiguous"):
        _C.norm_partials([np.ones(3, F16), np.ones(6, F16)[::2]], 1.0, False)
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        _C.norm_partials([np.ones(3, np.uint16)], 1.0, False)
    with pytest.raises(TypeError, match="float32 or float64"):
        _C.norm_scale([np.ones(3, BF16)], 0.5)


@pytest.mark.parametrize("bad,pattern", [
    (lambda: [np.ones(3, np.uint16)], r"arrays\[0\] has dtype uint16"),
    (lambda: [np.ones(3, BF16), _swapped_f16()], r"arrays\[1\] has dtype >f2"),
    (lambda: [np.ones(3, F16), np.ma.masked_array(np.ones(3, BF16))], r"arrays\[1\] is a masked"),
])
def test_global_norm_refuses(bad, pattern):
    with pytest.raises(TypeError, match=pattern):
        fastopt.global_norm(bad())
