"""Scrambled, shifted Halton sequences, index-addressable and bit-identical on every backend."""
from __future__ import annotations

import functools
import math
import numbers
import os
from typing import NamedTuple

import numpy as np

from . import _device, _dispatch
from ._registry import DEVICE_BACKENDS, F64
from ._validate import integer

__all__ = ["halton"]

#: Largest index + 1 a point may have (indices are unsigned 64-bit).
INDEX_LIMIT = 2**64


def halton(n, d, *, seed=None, scramble=True, shift=False, start=0, backend=None, workers=None):
    r"""Rows ``start .. start + n - 1`` of the d-dimensional Halton sequence, shape (n, d).

    Dimension :math:`j` uses the :math:`j`-th prime :math:`b_j` (2, 3, 5, ...). Point :math:`i`
    has, in dimension :math:`j`, the radical inverse of :math:`i` in base :math:`b = b_j` with its
    digits permuted:

    .. math::

        x_j(i) = \sum_{k=0}^{K-1} \pi_{j,k}\big(q_k(i)\big)\, b^{-(k+1)},
        \qquad i = \sum_k q_k(i)\, b^k,\quad K = \lceil 54 / \log_2 b \rceil - 1,

    summed from :math:`k = 0` upward in float64 with the factor :math:`f_{k+1} = f_k / b`,
    :math:`f_0 = 1/b` (SPEC §4). The permutations :math:`\pi_{j,k}` are ``arange(b)`` shuffled
    by ``numpy.random.default_rng(seed).shuffle``, dimension by dimension and digit by digit, so
    the result equals ``scipy.stats.qmc.Halton(d, scramble=True, seed=seed).random(n)`` bit for
    bit. ``scramble=False`` uses :math:`\pi = \mathrm{id}` over all the digits of :math:`i`
    (row 0 is then the origin, as in SciPy). ``shift=True`` then draws
    :math:`u =` ``rng.random(d)`` from the same generator and returns :math:`(x_j + u_j) \bmod 1`.

    Parameters
    ----------
    n : int
        Number of rows, ``n >= 0``.
    d : int
        Dimension, ``d >= 1``.
    seed : int or None
        Seed of the permutations and the shift. ``seed=0`` is a seed like any other; ``None``
        draws fresh entropy. Tables for an integer seed are built once per (seed, d) and
        cached, so asking for one row at a time (one trial per worker) stays cheap.
    scramble, shift : bool
        Random digit permutations (default on) and random shift (default off).
    start : int
        Index of the first row: ``halton(n, d, start=k)`` equals rows ``k .. k + n - 1`` of
        ``halton(k + n, d)``, and skipping costs nothing. Indices are unsigned 64-bit
        (``start + n <= 2**64``; scrambled bases use only the first ``K`` digits of an index).
    backend : str or None
        ``"cpp"``, ``"numba"`` or ``"numpy"``; default: ``$FASTOPT_BACKEND`` or the fastest
        available. ``"cuda"`` or ``"numba-cuda"`` compute on the GPU and return a device array
        (CuPy if installed, else PyTorch, else Numba). Every backend returns the same bits.
    workers : int or None
        Threads to use (None or -1: all CPUs); up to 1024 may be asked for, and at most
        ``os.cpu_count()`` are used. The result does not depend on it.

    Returns
    -------
    numpy.ndarray (or a device array from a GPU backend)
        float64, shape (n, d), values in [0, 1).

    Raises
    ------
    TypeError, ValueError
        Naming the argument, before anything is allocated; also when the output (n*d*8
        bytes) and the tables would not fit in this machine's physical memory.
    """
    n = integer(n, "n", lo=0)
    d = integer(d, "d", lo=1)
    start = integer(start, "start", lo=0)
    if start + n > INDEX_LIMIT:
        raise ValueError(f"start + n must be <= 2**64 (64-bit point indices), got "
                         f"start={_num(start)}, n={_num(n)}")
    seed = _check_seed(seed)
    for value, name in ((scramble, "scramble"), (shift, "shift")):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    scramble, shift = bool(scramble), bool(shift)
    workers = _check_workers(workers)
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, got {type(backend).__name__}")
    device = (backend or os.environ.get("FASTOPT_BACKEND")) in DEVICE_BACKENDS
    name = _dispatch.resolve("halton.halton", backend, device=device, dtype=F64)
    if n:
        check_memory(n, d, start, scramble)
    out = _device.empty((n, d), F64) if device else np.empty((n, d), dtype=np.float64)
    if n:
        tab = tables(seed, d, scramble, shift)
        if not scramble:
            tab = tab._replace(**_plain_terms(tab.bases, start, n))
        _dispatch.module(name).halton(out, start, tab, tab.ndig, workers)
    return out


def memory_limit() -> int:
    """Bytes of physical memory here: no call may need more (it could only fail or swap)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # not POSIX: no bound we can know
        return 2**63


def check_memory(n: int, d: int, start: int, scramble: bool) -> None:
    """Refuses, naming n and d, a call whose output and tables exceed :func:`memory_limit`.

    Tables: scrambled, K_j b_j float64 terms and as many permutation entries per dimension
    (SciPy stores its permutations too); unscrambled, ndig_j min(b_j, n) terms. Since
    b_j >= j + 2, an absurd d is refused before the sieve of the primes is run.
    """
    limit = memory_limit()
    out = 8 * n * d
    need = out + d  # in integers first: d may be beyond float range
    if need <= limit:
        need = out + 9 * _sieve_limit(d) + (5 * d * (d + 3) if scramble else 0)
    if need <= limit:
        b = primes(d)
        if scramble:
            need = out + 10 * int(np.dot(np.ceil(54 / np.log2(b)) - 1, b))
        else:
            # 8 bytes per term and 40 more for the index arrays that place them
            need = out + 48 * int(np.dot(_index_digits(start + n - 1, b), np.minimum(b, n)))
        if need <= limit:
            return
    raise ValueError(f"halton(n={_num(n)}, d={_num(d)}) needs more than the "
                     f"{limit / 2**30:.3g} GiB of memory of this machine: n*d*8 = "
                     f"{_gib(out)} of output plus the {'permutation' if scramble else 'digit'} "
                     "tables of d dimensions; ask for fewer rows at a time (start= continues "
                     "the sequence) or fewer dimensions")


def _num(v: int) -> str:
    return str(v) if v < 10**30 else f"an integer of {v.bit_length()} bits"


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.3g} GiB" if nbytes < 2**1000 else f"2**{nbytes.bit_length()} bytes"


class HaltonTables(NamedTuple):
    """Everything a backend needs besides the row range; read-only, shared through the cache.

    Dimension j's terms are ``ndig[j]`` rows of ``w_j = (offsets[j+1] - offsets[j]) / ndig[j]``
    entries, row k holding t_k[e] = pi_k[e] * f_k. A full row (w_j = b_j) is indexed by the digit
    e itself; a narrower one (only unscrambled calls of n < b_j rows have them) holds the digits
    s_k, s_k + 1, ... (mod b_j) that the call's indices take, s_k being digit k of ``start``,
    so entry (e - s_k) mod b_j. Every backend follows this layout.
    """

    bases: np.ndarray  #: int64 (d,): the first d primes
    ndig: np.ndarray | None  #: int64 (d,): digit positions tabulated per dimension
    perms: tuple | None  #: per dimension a (K, b) array of permutations; None: unscrambled
    terms: np.ndarray | None  #: float64: the rows above, dimension after dimension
    offsets: np.ndarray | None  #: int64 (d + 1,): where each dimension's terms start
    shift: np.ndarray | None  #: float64 (d,) or None


def tables(seed, d: int, scramble: bool, shift: bool) -> HaltonTables:
    """The tables of one (seed, d, scramble, shift); cached unless fresh entropy is asked for.

    Unscrambled tables have no terms here: they depend on the rows asked for (_plain_terms).
    """
    if not scramble and not shift:
        return _cached(0, d, False, False)  # nothing random: the seed does not matter
    if seed is None:
        return _build(np.random.default_rng(), d, scramble, shift)
    return _cached(seed, d, scramble, shift)


@functools.lru_cache(maxsize=16)
def _cached(seed: int, d: int, scramble: bool, shift: bool) -> HaltonTables:
    if not shift:
        return _build(np.random.default_rng(seed), d, scramble, False)
    # The unshifted tables plus u, drawn after the permutations (redrawn here only to advance
    # the generator), so that both variants share one set of terms.
    base = _cached(seed if scramble else 0, d, scramble, False)
    rng = np.random.default_rng(seed)
    if scramble:
        _permutations(rng, base.bases)
    return base._replace(shift=_frozen(rng.random(d)))


def _build(rng: np.random.Generator, d: int, scramble: bool, shift: bool) -> HaltonTables:
    bases = primes(d)
    perms = _permutations(rng, bases) if scramble else None
    u = rng.random(d) if shift else None  # after the permutations, from the same generator
    if perms is None:
        return HaltonTables(bases, None, None, None, None, None if u is None else _frozen(u))
    ndig = np.array([len(p) for p in perms], dtype=np.int64)
    offsets = np.zeros(d + 1, dtype=np.int64)
    np.cumsum(ndig * bases, out=offsets[1:])
    terms = np.empty(offsets[-1])  # filled in place: no second copy at any time
    for j, b in enumerate(bases):
        t = terms[offsets[j]:offsets[j + 1]].reshape(perms[j].shape)
        f = 1.0 / int(b)
        for k in range(len(t)):
            t[k] = perms[j][k]  # exact: digits are below 2**32
            t[k] *= f  # the spec's product pi_k[e] * f_k
            f /= int(b)
    return HaltonTables(bases, _frozen(ndig), tuple(_frozen(p) for p in perms), _frozen(terms),
                        _frozen(offsets), None if u is None else _frozen(u))


def _plain_terms(bases: np.ndarray, start: int, n: int) -> dict:
    """The unscrambled terms e * f_k of the rows start .. start + n - 1, no more: the digits
    the last index has, and per digit position w = min(b, n) entries, from start's digit on
    when w < b (the layout of HaltonTables). Memory: sum_j ndig_j min(b_j, n) doubles."""
    ndig = _index_digits(start + n - 1, bases)
    w = np.minimum(bases, n)
    offsets = np.zeros(len(bases) + 1, dtype=np.int64)
    np.cumsum(ndig * w, out=offsets[1:])
    terms = np.empty(offsets[-1])
    q = np.full(len(bases), start, dtype=np.uint64)  # start // b^k: its digit k is the origin
    b = bases.astype(np.uint64)
    f = 1.0 / bases
    for k in range(int(ndig.max(initial=0))):
        live = np.flatnonzero(ndig > k)  # dimensions with a digit k
        wl = w[live]
        origin = np.where(wl < bases[live], (q[live] % b[live]).astype(np.int64), 0)
        first = np.repeat(np.cumsum(wl) - wl, wl)
        e = np.arange(first.size) - first  # 0 .. w - 1 within each dimension
        digit = (np.repeat(origin, wl) + e) % np.repeat(bases[live], wl)
        terms[np.repeat(offsets[live] + k * wl, wl) + e] = digit * np.repeat(f[live], wl)
        q //= b
        f = f / bases
    return dict(ndig=_frozen(ndig), terms=_frozen(terms), offsets=_frozen(offsets))


def _permutations(rng: np.random.Generator, bases) -> list[np.ndarray]:
    """SPEC §4: per dimension in order, per digit position in order, arange(b) shuffled."""
    out = []
    for b in bases:
        b = int(b)
        K = math.ceil(54 / math.log2(b)) - 1
        perm = np.empty((K, b), dtype=np.int64)
        for k in range(K):
            row = np.arange(b, dtype=np.int64)
            rng.shuffle(row)
            perm[k] = row
        out.append(perm.astype(np.min_scalar_type(b - 1)))
    return out


@functools.lru_cache(maxsize=64)
def _sieve_limit(d: int) -> int:
    """Rosser's bound p_d < d (ln d + ln ln d) on the d-th prime (d >= 6)."""
    return 16 if d < 6 else int(d * (math.log(d) + math.log(math.log(d)))) + 1


def primes(d: int) -> np.ndarray:
    """The first d primes (int64), by a sieve up to Rosser's bound."""
    limit = _sieve_limit(d)
    sieve = np.ones(limit + 1, dtype=bool)
    sieve[:2] = False
    for p in range(2, math.isqrt(limit) + 1):
        if sieve[p]:
            sieve[p * p::p] = False
    return _frozen(np.flatnonzero(sieve)[:d].astype(np.int64))


def _index_digits(index: int, bases) -> np.ndarray:
    """How many base-b digits ``index`` has, for each base (0 for index 0)."""
    q = np.full(len(bases), index, dtype=np.uint64)
    b = np.asarray(bases, dtype=np.uint64)
    count = np.zeros(len(bases), dtype=np.int64)
    while q.any():
        count += q > 0
        q //= b
    return count


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be a non-negative integer or None, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed}")
    return int(seed)


#: The largest ``workers`` a call may ask for (as SciPy does, more than the CPUs is allowed).
WORKERS_LIMIT = 1024


def max_workers() -> int:
    """The most threads a call uses: the CPUs of this machine. More cannot speed up a
    compute-bound kernel, and thousands of threads can exhaust what the process may create."""
    return os.cpu_count() or 1


def _check_workers(workers) -> int:
    """0 (all CPUs) for None or -1, else ``workers`` in [1, WORKERS_LIMIT] capped at the CPUs:
    the result never depends on it, so asking for more than the machine has is not an error."""
    if workers is None or (not isinstance(workers, bool) and isinstance(workers, numbers.Integral)
                           and workers == -1):
        return 0  # all threads
    return min(integer(workers, "workers", lo=1, hi=WORKERS_LIMIT), max_workers())
