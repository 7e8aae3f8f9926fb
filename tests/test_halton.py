"""Halton sequences (SPEC §4): known values, SciPy bit-equality, backends bit-equal, invariants."""
import importlib
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastopt
from fastopt import _dispatch, _registry
from fastopt.halton import halton

halton_mod = importlib.import_module("fastopt.halton")  # fastopt.halton is the function

KERNEL = "halton.halton"


def backend_params():
    """CPU backends the registry lists for the Halton kernel; unavailable ones skip, saying why."""
    out = []
    for b in _registry.KERNELS[KERNEL]:
        if b not in _registry.CPU_BACKENDS:
            continue
        reason = _dispatch.unavailable_reason(b)
        out.append(pytest.param(b, marks=[pytest.mark.skip(reason=reason)] if reason else [], id=b))
    return out


BACKENDS = backend_params()
FAST = [p for p in BACKENDS if p.values[0] != "numpy"]


def scipy_halton(d, n, *, seed=None, scramble=True, start=0, workers=1):
    qmc = pytest.importorskip("scipy.stats.qmc")
    eng = qmc.Halton(d, scramble=scramble, seed=seed) if scramble else qmc.Halton(d, scramble=False)
    if start <= 10**5:
        eng.fast_forward(start)
    else:  # SciPy's fast_forward draws and discards the points; its next index is this counter
        eng.num_generated = start
    return eng.random(n, workers=workers)


def spec_permutations(seed, d):
    """SPEC §4's drawing order, written out independently: per dimension, per digit, a shuffle."""
    rng = np.random.default_rng(seed)
    perms = []
    for b in halton_mod.primes(d):
        K = math.ceil(54 / math.log2(b)) - 1
        rows = []
        for _ in range(K):
            p = np.arange(b)
            rng.shuffle(p)
            rows.append(p)
        perms.append(rows)
    return perms, rng


# -- exact known values ------------------------------------------------------------------------

def radical_inverse(i, b):
    x, f = Fraction(0), Fraction(1, b)
    while i:
        i, r = divmod(i, b)
        x += r * f
        f /= b
    return x


#: The van der Corput sequence (base 2): exactly representable, so compared bit for bit.
VAN_DER_CORPUT = [0, 1 / 2, 1 / 4, 3 / 4, 1 / 8, 5 / 8, 3 / 8, 7 / 8,
                  1 / 16, 9 / 16, 5 / 16, 13 / 16, 3 / 16, 11 / 16, 7 / 16, 15 / 16]

#: First rows of the unscrambled 5-D sequence (bases 2, 3, 5, 7, 11), as exact fractions.
FIRST_ROWS_5D = [
    [Fraction(0)] * 5,
    [Fraction(1, 2), Fraction(1, 3), Fraction(1, 5), Fraction(1, 7), Fraction(1, 11)],
    [Fraction(1, 4), Fraction(2, 3), Fraction(2, 5), Fraction(2, 7), Fraction(2, 11)],
    [Fraction(3, 4), Fraction(1, 9), Fraction(3, 5), Fraction(3, 7), Fraction(3, 11)],
    [Fraction(1, 8), Fraction(4, 9), Fraction(4, 5), Fraction(4, 7), Fraction(4, 11)],
    [Fraction(5, 8), Fraction(7, 9), Fraction(1, 25), Fraction(5, 7), Fraction(5, 11)],
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_van_der_corput_exact(backend):
    got = halton(16, 1, scramble=False, backend=backend)
    assert got.shape == (16, 1) and got.dtype == np.float64
    assert got[:, 0].tolist() == VAN_DER_CORPUT
    # continuing: index 2**k is 2**-(k+1)
    for k in (10, 40, 62):
        assert halton(1, 1, scramble=False, start=2**k, backend=backend)[0, 0] == 2.0 ** -(k + 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [2, 5])
def test_first_unscrambled_rows(backend, d):
    got = halton(len(FIRST_ROWS_5D), d, scramble=False, backend=backend)
    want = np.array([[float(v) for v in row[:d]] for row in FIRST_ROWS_5D])
    assert np.array_equal(got[:, 0], want[:, 0])  # base 2: exact
    np.testing.assert_allclose(got, want, rtol=4e-16, atol=0)  # 1/3 / 3 may round differently
    assert got[0].tolist() == [0.0] * d  # row 0 is the origin


@pytest.mark.parametrize("backend", BACKENDS)
def test_unscrambled_matches_radical_inverse(backend):
    starts = (0, 12345, 2**33 + 7)
    for s in starts:
        got = halton(50, 7, scramble=False, start=s, backend=backend)
        for r in (0, 1, 17, 49):
            for j, b in enumerate(halton_mod.primes(7)):
                assert got[r, j] == pytest.approx(float(radical_inverse(s + r, int(b))), rel=1e-14)


def test_primes():
    assert halton_mod.primes(10).tolist() == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    p = halton_mod.primes(1000)
    assert len(p) == 1000 and p[-1] == 7919 and len(set(p.tolist())) == 1000


# -- bit-equality with SciPy -------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [1, 2, 5, 20, 50, 100])
def test_scrambled_equals_scipy(backend, d):
    for seed in (0, 1, 12345):
        for start in (0, 17, 2**20 + 3):
            want = scipy_halton(d, 600, seed=seed, start=start)
            got = halton(600, d, seed=seed, start=start, backend=backend)
            assert np.array_equal(got, want), (seed, start)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [1, 2, 5, 20, 50, 100])
def test_unscrambled_equals_scipy(backend, d):
    for start in (0, 1000, 2**31 + 11):
        want = scipy_halton(d, 500, scramble=False, start=start)
        assert np.array_equal(halton(500, d, scramble=False, start=start, backend=backend), want)


@pytest.mark.parametrize("backend", FAST)
def test_large_calls_equal_scipy(backend):
    """Many runs of points and blocks of rows, threads on, odd sizes around the table sizes."""
    for n, d, start in ((20011, 8, 4093), (4097, 70, 0), (9000, 3, 2**40 - 4500)):
        want = scipy_halton(d, n, seed=7, start=start, workers=2)
        assert np.array_equal(halton(n, d, seed=7, start=start, backend=backend), want)


def test_scipy_at_64_bit_index():
    want = scipy_halton(6, 100, seed=3, start=2**40)
    for b in _dispatch.available_backends():
        if b in _registry.KERNELS[KERNEL]:
            assert np.array_equal(halton(100, 6, seed=3, start=2**40, backend=b), want), b


# -- all backends bit-identical ----------------------------------------------------------------

CASES = [  # (n, d, start, scramble, shift)
    (1, 1, 0, True, False), (7, 3, 5, True, True), (129, 9, 2**40, True, True),
    (4097, 2, 123, False, True), (1000, 70, 2**62 + 1, True, True),
    (300, 17, 2**64 - 300, False, False),
    (2049, 33, 2**32 - 1000, False, True), (5, 200, 77, True, False),
]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}-d{}-s{}-{}{}".format(
    c[0], c[1], c[2], "scr" if c[3] else "plain", "-shift" if c[4] else ""))
def test_backend_bit_equal_to_reference(backend, case):
    n, d, start, scramble, shift = case
    kw = dict(seed=2024, start=start, scramble=scramble, shift=shift)
    want = halton(n, d, backend="numpy", **kw)
    assert np.array_equal(halton(n, d, backend=backend, **kw), want)
    assert np.array_equal(halton(n, d, backend=backend, workers=1, **kw), want)


@given(n=st.integers(0, 300), d=st.integers(1, 12), start=st.integers(0, 2**63),
       seed=st.integers(0, 2**32), scramble=st.booleans(), shift=st.booleans())
def test_backends_bit_equal_property(n, d, start, seed, scramble, shift):
    kw = dict(seed=seed, start=start, scramble=scramble, shift=shift)
    want = halton(n, d, backend="numpy", **kw)
    for p in FAST:
        if not p.marks:
            assert np.array_equal(halton(n, d, backend=p.values[0], **kw), want)


def test_default_backend_is_the_registry_choice():
    a = halton(100, 4, seed=1)
    assert np.array_equal(a, halton(100, 4, seed=1, backend=_dispatch.resolve(KERNEL)))


# -- index-addressable, seeds, shift -----------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scramble,shift",
                         [(True, False), (True, True), (False, False), (False, True)])
def test_start_continues_the_sequence(backend, scramble, shift):
    kw = dict(seed=5, scramble=scramble, shift=shift, backend=backend)
    whole = halton(3000, 6, **kw)
    for k in (0, 1, 999, 2187, 2999):
        assert np.array_equal(halton(3000 - k, 6, start=k, **kw), whole[k:])
    parts = [halton(m, 6, start=s, **kw) for s, m in ((0, 1), (1, 510), (511, 2489))]
    assert np.array_equal(np.concatenate(parts), whole)
    assert halton(0, 6, start=17, **kw).shape == (0, 6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_2_pow_40_is_row_2_pow_40(backend):
    """64-bit indices: the row at 2**40 is computed from the index's digits, not wrapped."""
    got = halton(3, 4, seed=9, start=2**40, backend=backend)
    perms, _ = spec_permutations(9, 4)
    for r in range(3):
        for j, b in enumerate(halton_mod.primes(4)):
            q, x, f = 2**40 + r, 0.0, 1.0 / int(b)
            for perm in perms[j]:
                x += perm[q % b] * f
                f /= b
                q //= int(b)
            assert got[r, j] == x
    assert not np.array_equal(got, halton(3, 4, seed=9, start=2**40 % 2**32, backend=backend))


def test_seeds_zero_is_a_seed_like_any_other():
    a = halton(64, 5, seed=0)
    halton_mod._cached.cache_clear()
    assert np.array_equal(halton(64, 5, seed=0), a)  # reproducible, also when rebuilt
    for other in (1, 2, 2**40):
        assert not np.array_equal(halton(64, 5, seed=other), a)
    assert not np.array_equal(halton(64, 5, seed=None), a)
    assert not np.array_equal(halton(64, 5, seed=None), halton(64, 5, seed=None))  # fresh entropy
    # numpy integers are seeds too
    assert np.array_equal(halton(64, 5, seed=np.int64(0)), a)


def test_tables_are_cached_per_seed_and_d():
    halton_mod._cached.cache_clear()
    halton(1, 7, seed=11)
    t = halton_mod.tables(11, 7, True, False)
    halton(1, 7, seed=11, start=5)
    assert halton_mod.tables(11, 7, True, False) is t
    info = halton_mod._cached.cache_info()
    assert info.misses == 1 and info.hits >= 2
    assert not t.terms.flags.writeable  # shared tables cannot be changed by a caller
    assert halton_mod.tables(None, 7, True, False) is not halton_mod.tables(None, 7, True, False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_permutations_and_shift_drawn_as_the_spec_says(backend):
    d, seed = 4, 31
    perms, rng = spec_permutations(seed, d)
    u = rng.random(d)  # after every permutation, from the same generator
    tab = halton_mod.tables(seed, d, True, True)
    for j in range(d):
        assert np.array_equal(np.asarray(tab.perms[j]), np.array(perms[j]))
    assert np.array_equal(tab.shift, u)
    x = halton(500, d, seed=seed, backend=backend)
    shifted = halton(500, d, seed=seed, shift=True, backend=backend)
    assert np.array_equal(shifted, np.mod(x + u, 1.0))
    # unscrambled: the shift is the generator's first draw
    u0 = np.random.default_rng(seed).random(d)
    x0 = halton(500, d, scramble=False, backend=backend)
    assert np.array_equal(halton(500, d, seed=seed, scramble=False, shift=True, backend=backend),
                          np.mod(x0 + u0, 1.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_in_unit_interval(backend):
    for kw in (dict(shift=True), dict(shift=False), dict(scramble=False, shift=True)):
        for seed in (0, 1, 2):
            x = halton(4096, 10, seed=seed, backend=backend, **kw)
            assert x.min() >= 0.0 and x.max() < 1.0
    # the wrap-around happens: shifted coordinates are not all above their shift
    x = halton(4096, 3, seed=0, shift=True, backend=backend)
    u = halton_mod.tables(0, 3, True, True).shift
    assert (x < u).any(axis=0).all() and (x >= u).any(axis=0).all()


@pytest.mark.parametrize("backend", FAST)
def test_workers_do_not_change_the_bits(backend):
    a = halton(50000, 8, seed=3, shift=True, backend=backend, workers=1)
    for w in (2, halton_mod.max_workers(), -1, None):
        assert np.array_equal(halton(50000, 8, seed=3, shift=True, backend=backend, workers=w), a)


def test_discrepancy_far_below_iid():
    qmc = pytest.importorskip("scipy.stats.qmc")
    for seed in (0, 1):
        x = halton(4096, 8, seed=seed)
        iid = np.random.default_rng(seed).random((4096, 8))
        assert qmc.discrepancy(x) * 10 <= qmc.discrepancy(iid)


def test_marginals_are_stratified():
    """n = b^k consecutive points put exactly one point in each interval [m/n, (m+1)/n)."""
    x = halton(3**7, 2, seed=4, start=3**7 * 5)
    for j, n in ((0, 2**11), (1, 3**7)):  # 2**11 <= 3**7 rows: one per cell at most in base 2
        cells = np.floor(x[:n, j] * n).astype(int)
        assert len(set(cells.tolist())) == n


# -- bad input ---------------------------------------------------------------------------------

BAD = [  # (kwargs, exception, message pattern)
    (dict(n=-1, d=2), ValueError, r"\bn must be >= 0"),
    (dict(n=3, d=0), ValueError, r"\bd must be >= 1"),
    (dict(n=3, d=2, start=-1), ValueError, r"\bstart must be >= 0"),
    (dict(n=2.5, d=2), TypeError, r"\bn must be an integer"),
    (dict(n=3, d="2"), TypeError, r"\bd must be an integer"),
    (dict(n=3, d=2, start=1.0), TypeError, r"\bstart must be an integer"),
    (dict(n=True, d=2), TypeError, r"\bn must be an integer"),
    (dict(n=2, d=2, start=2**64 - 1), ValueError, r"start \+ n must be <= 2\*\*64"),
    (dict(n=3, d=2, seed=-1), ValueError, r"\bseed must be a non-negative integer"),
    (dict(n=3, d=2, seed=1.5), TypeError, r"\bseed must be"),
    (dict(n=3, d=2, seed="0"), TypeError, r"\bseed must be"),
    (dict(n=3, d=2, scramble=1), TypeError, r"\bscramble must be a bool"),
    (dict(n=3, d=2, shift="yes"), TypeError, r"\bshift must be a bool"),
    (dict(n=3, d=2, workers=0), ValueError, r"\bworkers must be >= 1"),
    (dict(n=3, d=2, backend="fortran"), ValueError, r"backend='fortran' is unknown"),
]


@pytest.mark.parametrize("kwargs,exc,pattern", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_input(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fastopt.halton(**kwargs)


def test_native_boundary_refuses_what_it_cannot_write():
    if _dispatch.unavailable_reason("cpp"):
        pytest.skip(_dispatch.unavailable_reason("cpp"))
    from fastopt import _C
    tab = halton_mod.tables(0, 3, True, False)
    args = (tab.bases, tab.ndig, tab.terms, tab.offsets, np.zeros(0), 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.halton(np.zeros((3, 10))[:, ::3], 0, *args)
    with pytest.raises(TypeError):
        _C.halton(np.zeros((10, 3), np.float32), 0, *args)  # never converted to a copy
    ro = np.zeros((10, 3))
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _C.halton(ro, 0, *args)
    with pytest.raises(ValueError, match="bases"):
        _C.halton(np.zeros((10, 4)), 0, *args)
