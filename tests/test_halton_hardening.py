"""Halton under bad and extreme input: memory that follows the rows asked for, bounded
workers, absurd sizes refused before allocating, and native entry points that stay inside
their arrays whatever tables they are handed."""
import importlib
import threading
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastopt
from fastopt import _dispatch

from test_halton import BACKENDS, FAST, scipy_halton

halton_mod = importlib.import_module("fastopt.halton")  # the names are the functions'
ref_halton = importlib.import_module("fastopt._reference.halton")
halton = fastopt.halton


def available(name):
    return _dispatch.unavailable_reason(name) is None


# -- memory follows the rows asked for -----------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("start", [0, 2**40, 2**64 - 4])
def test_unscrambled_memory_does_not_grow_with_every_digit(backend, start):
    """4 rows of 2000 dimensions: 64 KB of output. The tables used to hold every digit a
    64-bit index can have, b wide, for every dimension: 1.3 GB and seconds."""
    halton(4, 2000, scramble=False, start=start, backend=backend)  # compiled, primes cached
    tracemalloc.start()
    t0 = time.perf_counter()
    got = halton(4, 2000, scramble=False, start=start, backend=backend)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 2**20, peak
    assert seconds < 2.0, seconds  # the reference's Python loop over 2000 dimensions
    if start < 2**63:  # SciPy's indices are int64
        assert np.array_equal(got, scipy_halton(2000, 4, scramble=False, start=start))
    else:
        assert np.array_equal(got, halton(4, 2000, scramble=False, start=start, backend="numpy"))


def test_unscrambled_tables_hold_min_b_n_entries_per_digit():
    bases = halton_mod.primes(50)
    for start, n in ((0, 4), (10**6, 4), (2**64 - 10, 10), (0, 1000)):
        t = halton_mod._plain_terms(bases, start, n)
        want = halton_mod._index_digits(start + n - 1, bases) * np.minimum(bases, n)
        assert np.array_equal(np.diff(t["offsets"]), want)


def test_scrambled_tables_at_large_d_are_built_once_in_place():
    """No second copy of the terms at any time: the peak is the tables themselves (SciPy
    stores its permutations as well, as int64)."""
    d = 600
    tracemalloc.start()
    tab = halton_mod._build(np.random.default_rng(0), d, True, False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    size = tab.terms.nbytes + sum(p.nbytes for p in tab.perms)
    assert peak < 1.1 * size + 2**20, (peak, size)


# -- workers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [halton_mod.WORKERS_LIMIT + 1, 2000, 10**30])
def test_absurd_workers_are_refused(workers):
    with pytest.raises(ValueError, match=r"\bworkers must be <= "):
        halton(10, 2, workers=workers)


def test_workers_beyond_the_cpus_run_on_the_cpus():
    """As in SciPy, more workers than CPUs is allowed; fastopt uses at most the CPUs."""
    n = halton_mod.max_workers()
    assert halton_mod._check_workers(n + 3) == n
    assert np.array_equal(halton(5000, 3, seed=1, workers=n + 3), halton(5000, 3, seed=1))


@pytest.mark.parametrize("workers", [True, 1.0, "2", np.float64(1)])
def test_workers_must_be_an_integer(workers):
    with pytest.raises(TypeError, match=r"\bworkers must be an integer"):
        halton(10, 2, workers=workers)


def test_numpy_integer_workers_and_start():
    want = halton(600, 3, seed=1, start=7, workers=1)
    assert np.array_equal(halton(600, 3, seed=1, start=np.uint64(7), workers=np.int8(1)), want)


@pytest.mark.skipif(not available("numba"), reason="numba not available")
def test_numba_thread_count_is_per_call_and_per_thread():
    """halton(workers=...) on numba leaves the calling thread's numba thread count as it was,
    and never disturbs another thread's, however the two calls interleave."""
    import numba

    before = numba.get_num_threads()
    halton(40000, 8, seed=0, backend="numba", workers=1)
    halton(40000, 8, seed=0, backend="numba", workers=numba.config.NUMBA_NUM_THREADS)
    assert numba.get_num_threads() == before
    seen, errors = [], []

    def other():
        try:
            numba.set_num_threads(1)
            for _ in range(20):
                seen.append(numba.get_num_threads())
                halton(20000, 4, seed=1, backend="numba")  # workers=None: its own count
                seen.append(numba.get_num_threads())
        except Exception as e:  # reported in the main thread
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    want = halton(40000, 8, seed=0, backend="numpy")
    for _ in range(10):
        got = halton(40000, 8, seed=0, backend="numba", workers=numba.config.NUMBA_NUM_THREADS)
        assert np.array_equal(got, want)
    t.join()
    assert not errors and seen == [1] * 40
    assert numba.get_num_threads() == before


# -- absurd sizes: refused before anything is allocated ------------------------------------------

@pytest.mark.parametrize("n,d,scramble", [
    (10**12, 10, True), (2**63, 1, False), (2**64 - 1, 3, True),
    (1, 10**9, True), (1, 10**9, False), (1, 10**6, True), (10**9, 10**4, False),
])
def test_absurd_sizes_are_refused_before_allocating(n, d, scramble):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"halton\(n={n}, d={d}\) needs more than .* GiB"):
        halton(n, d, scramble=scramble)
    assert time.perf_counter() - t0 < 5.0


def test_sizes_beyond_float_range_are_refused_by_size():
    for n, d in ((1, 10**400), (10**400, 1)):
        with pytest.raises(ValueError, match=r"an integer of \d+ bits"):
            halton(n, d, scramble=False) if n == 1 else halton(n, d, start=0)


def test_no_rows_cost_nothing_whatever_d():
    assert halton(0, 10**12).shape == (0, 10**12)


def test_memory_bound_is_the_machines_memory(monkeypatch):
    monkeypatch.setattr(halton_mod, "memory_limit", lambda: 10**6)
    with pytest.raises(ValueError, match=r"n\*d\*8 = "):
        halton(100000, 2)
    assert halton(100, 2).shape == (100, 2)


# -- bad arguments ----------------------------------------------------------------------------

BAD = [  # (kwargs, exception, pattern)
    (dict(n=3, d=2, backend=1), TypeError, r"\bbackend must be a str"),
    (dict(n=3, d=2, backend=np.array(["cpp", "numba"])), TypeError, r"\bbackend must be a str"),
    (dict(n=3, d=2, backend=["cpp"]), TypeError, r"\bbackend must be a str"),
    (dict(n=np.float64(3), d=2), TypeError, r"\bn must be an integer"),
    (dict(n=np.bool_(True), d=2), TypeError, r"\bn must be an integer"),
    (dict(n=3, d=2, start=2**64), ValueError, r"start \+ n must be <= 2\*\*64"),
    (dict(n=3, d=2, start=2**200), ValueError, r"start \+ n must be <= 2\*\*64"),
    (dict(n=3, d=2, seed=True), TypeError, r"\bseed must be"),
    (dict(n=3, d=2, seed=np.float64(1)), TypeError, r"\bseed must be"),
    (dict(n=3, d=2, scramble=None), TypeError, r"\bscramble must be a bool"),
    (dict(n=3, d=2, workers=-2), ValueError, r"\bworkers must be >= 1"),
]


@pytest.mark.parametrize("kwargs,exc,pattern", BAD, ids=[str(b[0])[:50] for b in BAD])
def test_bad_input(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        halton(**kwargs)


def test_any_integer_seed_is_a_seed():
    for seed in (2**64, 2**200, np.uint64(2**64 - 1)):
        a = halton(5, 3, seed=seed)
        assert np.array_equal(a, halton(5, 3, seed=seed)) and a.min() >= 0 and a.max() < 1


_NAMES = {"n", "d", "seed", "start", "workers", "backend", "scramble", "shift"}
_ANY = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                 st.text(max_size=3), st.just(np.int64(3)), st.just(np.float32(1.5)),
                 st.just([1]), st.just(np.arange(3)), st.just(2**64), st.just(10**400))


@given(kw=st.fixed_dictionaries({}, optional={k: _ANY for k in _NAMES}))
def test_random_bad_arguments_only_raise_named_errors(kw):
    kw.setdefault("n", 3)
    kw.setdefault("d", 2)
    try:
        out = halton(**kw)
    except (TypeError, ValueError) as e:
        msg = str(e)
        assert any(name in msg for name in _NAMES), msg
        return
    assert out.shape == (int(kw["n"]), int(kw["d"]))


# -- narrow rows (unscrambled, n < b) on every backend ------------------------------------------

@given(n=st.integers(1, 60), d=st.integers(1, 40), start=st.integers(0, 2**64 - 61),
       shift=st.booleans(), seed=st.integers(0, 2**32))
def test_unscrambled_few_rows_bit_equal_reference(n, d, start, shift, seed):
    kw = dict(seed=seed, start=start, scramble=False, shift=shift)
    want = halton(n, d, backend="numpy", **kw)
    for p in FAST:
        if not p.marks:
            assert np.array_equal(halton(n, d, backend=p.values[0], **kw), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_few_rows_across_a_carry_equal_scipy(backend):
    """The rows' digits wrap past b - 1 (start's digit is the origin of a narrow row)."""
    for start in (96, 2 * 97 * 97 - 3, 97**5 - 2, 2**63 - 7):
        want = scipy_halton(30, 6, scramble=False, start=start)
        assert np.array_equal(halton(6, 30, scramble=False, start=start, backend=backend), want)


# -- native and kernel entry points: inside their arrays, whatever they are given ---------------

def layout_model(n, d, start, bases, ndig, offsets, terms, shift):
    """HaltonTables' layout, read literally: what any kernel must compute from any terms."""
    out = np.empty((n, d))
    for j in range(d):
        b, k = int(bases[j]), int(ndig[j])
        w = (int(offsets[j + 1]) - int(offsets[j])) // k if k else 0
        for r in range(n):
            q, qs, x = start + r, start, 0.0
            for t in range(k):
                e, s = q % b, qs % b if w < b else 0
                x += terms[int(offsets[j]) + t * w + (e - s) % b]
                q, qs = q // b, qs // b
            if shift is not None:
                y = x + shift[j]
                x = y - 1.0 if y >= 1.0 else y
            out[r, j] = x
    return out


def random_tables(data, n, d):
    bases = np.array(data.draw(st.lists(st.sampled_from([2, 3, 5, 7, 11, 13, 257, 65537]),
                                        min_size=d, max_size=d)), dtype=np.int64)
    ndig = np.array(data.draw(st.lists(st.integers(0, 6), min_size=d, max_size=d)),
                    dtype=np.int64)
    ws = [data.draw(st.integers(min(int(b), n), int(b))) for b in bases]
    offsets = np.zeros(d + 1, dtype=np.int64)
    np.cumsum(ndig * np.array(ws, dtype=np.int64), out=offsets[1:])
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    terms = rng.random(int(offsets[-1])) * 0.1
    shift = rng.random(d) if data.draw(st.booleans()) else None
    return bases, ndig, offsets, terms, shift


def kernels():
    out = []
    if available("cpp"):
        from fastopt import _cpp
        out.append(("cpp", _cpp.halton))
    if available("numba"):
        out.append(("numba", importlib.import_module("fastopt._numba.halton").halton))
    return out


@given(data=st.data())
def test_kernels_follow_the_layout_for_any_terms(data):
    """Random terms make any misplaced index a wrong value, narrow rows included."""
    n, d = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 5))
    start = data.draw(st.one_of(st.integers(0, 10**6), st.integers(0, 2**64 - n)))
    bases, ndig, offsets, terms, shift = random_tables(data, n, d)
    tab = halton_mod.HaltonTables(bases, ndig, None, terms, offsets, shift)
    want = layout_model(n, d, start, bases, ndig, offsets, terms, shift)
    for name, run in kernels():
        out = np.full((n, d), np.nan)
        run(out, start, tab, ndig, 1)
        assert np.array_equal(out, want), name


def mangled(data, n, d):
    """Tables that are right, then one thing is made wrong."""
    bases, ndig, offsets, terms, shift = random_tables(data, max(n, 1), d)
    what = data.draw(st.sampled_from(["bases", "ndig", "offsets", "terms", "shift", "start",
                                      "dtype", "width", "none"]))
    start = data.draw(st.integers(0, 2**64 - max(n, 1)))
    if what == "bases":
        bases[data.draw(st.integers(0, d - 1))] = data.draw(st.sampled_from([-1, 0, 1, 2**32]))
    elif what == "ndig":
        ndig[data.draw(st.integers(0, d - 1))] = data.draw(st.sampled_from([-1, 65, 10**6]))
    elif what == "offsets":
        offsets[data.draw(st.integers(0, d))] += data.draw(st.sampled_from([-1, 1, 10**9]))
    elif what == "terms":
        terms = terms[:max(len(terms) - data.draw(st.integers(1, 3)), 0)]
    elif what == "shift":
        shift = np.zeros(d + 1)
    elif what == "start":
        start = 2**64 - data.draw(st.integers(0, 1)) if n > 1 else start
    elif what == "dtype":
        offsets = offsets.astype(np.int32)
    elif what == "width":  # rows one entry narrower than min(b, n)
        j = data.draw(st.integers(0, d - 1))
        ndig[j] = 2
        offsets[j + 1:] += 2 * (min(int(bases[j]), max(n, 1)) - 1) - (offsets[j + 1] - offsets[j])
        terms = np.zeros(int(offsets[-1]))
    return start, bases, ndig, offsets, terms, shift


@given(data=st.data())
def test_entry_points_refuse_inconsistent_tables(data):
    """Each mangled call either raises TypeError/ValueError or was consistent after all and
    then matches the layout; no kernel reads past what it was given (the ASan job runs this)."""
    n, d = data.draw(st.integers(0, 30)), data.draw(st.integers(1, 4))
    start, bases, ndig, offsets, terms, shift = mangled(data, n, d)
    tab = halton_mod.HaltonTables(bases, ndig, None, terms, offsets, shift)
    for name, run in kernels():
        out = np.zeros((n, d))
        try:
            run(out, start, tab, ndig, 1)
        except (TypeError, ValueError):
            continue
        assert np.array_equal(out, layout_model(n, d, start, bases, ndig, offsets, terms,
                                                shift)), name


def test_cpp_refuses_misaligned_and_aliased_arrays():
    if not available("cpp"):
        pytest.skip(_dispatch.unavailable_reason("cpp"))
    from fastopt import _C
    tab = halton_mod.tables(0, 3, True, False)
    raw = np.zeros(3 * 8 + 1, dtype=np.uint8)[1:].view(np.int64)  # misaligned, C-contiguous
    raw[:] = tab.bases
    with pytest.raises(ValueError, match="bases is not aligned"):
        _C.halton(np.zeros((4, 3)), 0, raw, tab.ndig, tab.terms, tab.offsets, np.zeros(0), 1)
    terms = tab.terms.copy()
    out = terms[:12].reshape(4, 3)  # writing out would rewrite the terms it reads
    with pytest.raises(ValueError, match="out overlaps"):
        _C.halton(out, 0, tab.bases, tab.ndig, terms, tab.offsets, np.zeros(0), 1)
    args = (tab.bases, tab.ndig, tab.terms, tab.offsets, np.zeros(0))
    with pytest.raises(ValueError, match="workers is out of range"):
        _C.halton(np.zeros((4, 3)), 0, *args, 100000)
    for start, exc in ((2**64, ValueError), (-1, ValueError), ("0", TypeError), (1.0, TypeError)):
        with pytest.raises(exc, match=r"^start (is out of range|must be an integer)"):
            _C.halton(np.zeros((4, 3)), start, *args, 1)  # never pybind11's signature dump
    out = np.zeros((4, 3))
    _C.halton(out, np.uint64(5), *args, np.int8(1))  # NumPy integers are integers
    assert np.array_equal(out, halton(4, 3, seed=0, start=5, backend="numpy"))


def test_reference_entry_refuses_what_it_cannot_follow():
    tab = halton_mod.tables(0, 3, True, False)
    with pytest.raises(TypeError, match="out must be"):
        ref_halton.halton(np.zeros((4, 3), np.float32), 0, tab, tab.ndig, 1)
    with pytest.raises(ValueError, match="perms"):
        ref_halton.halton(np.zeros((4, 3)), 0, tab._replace(perms=tab.perms[:2]), tab.ndig, 1)
    with pytest.raises(ValueError, match="start"):
        ref_halton.halton(np.zeros((4, 3)), 2**64 - 2, tab, tab.ndig, 1)
