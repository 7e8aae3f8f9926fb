"""Numba Halton kernel: the twin of csrc/cpu/halton.cpp (same folds, same order of additions).

A run of consecutive points that share their high digits is the prefix table (the fold over
the m low digits) plus the same constants, added one by one; numba's prange shares blocks of
rows out over threads, and LLVM vectorises the additions across the points of a run.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .._reference.halton import check_host_out, check_tables

_JIT = dict(cache=True, fastmath=False, nogil=True)
MAX_PREFIX = 4096  # entries of a prefix table, as in C++
ROWS = 512  # rows per block: the unit of work of a thread
SERIAL_BELOW = 1 << 15  # fewer values than this: one thread (a launch costs more than the work)


@njit(**_JIT)
def _build_prefix(S, terms, b, m):
    # S_{k+1}[lo + e b^k] = S_k[lo] + t_k[e]; e = 0 last, as it overwrites S_k in place
    S[0] = 0.0
    size = 1
    for k in range(m):
        for e in range(b - 1, -1, -1):
            t = terms[k * b + e]
            for lo in range(size):
                S[e * size + lo] = S[lo] + t
        size *= b


@njit(**_JIT)
def _plan(bases, ndig, n):
    """Per dimension the low digits m of the prefix table and L = b^m (as in C++), and where
    each table starts in one flat array (m <= 1 needs none: row 0 of the terms is its table)."""
    d = bases.size
    ms = np.zeros(d, dtype=np.int64)
    Ls = np.ones(d, dtype=np.int64)
    pre_at = np.zeros(d + 1, dtype=np.int64)
    for j in range(d):
        b = bases[j]
        cap = max(b, min(MAX_PREFIX, n))
        while ms[j] < ndig[j] and Ls[j] * b <= cap:
            Ls[j] *= b
            ms[j] += 1
        pre_at[j + 1] = pre_at[j] + (Ls[j] if ms[j] >= 2 else 0)
    return ms, Ls, pre_at


@njit(**_JIT)
def _slot(e, s, b):
    # row entry of digit e in a row that starts at digit s (halton_math.h's halton_slot)
    return e - s if e >= s else e + b - s


@njit(**_JIT)
def _block(out, r0, r1, start, bases, ndig, ws, ms, Ls, terms, offsets, prefix, pre_at, shift,
           has_shift, c, v):
    """Rows r0..r1-1, every dimension; c and v are this thread's scratch."""
    d = out.shape[1]
    for j in range(d):
        b = np.uint64(bases[j])
        L = np.uint64(Ls[j])
        w = ws[j]
        narrow = ndig[j] > 0 and w < bases[j]  # then m = 1 and L = b, as n < b
        m = ms[j]
        nc = ndig[j] - m
        t0 = offsets[j]
        p0 = pre_at[j]
        u = shift[j] if has_shift else 0.0
        start_hi = start // L
        start_lo = start - start_hi * L
        r = r0
        i = start + np.uint64(r0)
        while r < r1:
            hi = i // L
            lo = i - hi * L
            ln = min(np.int64(L - lo), r1 - r)
            q = hi
            qs = start_hi
            for t in range(nc):  # the run's high digits -> its constants
                h = q // b
                e = q - h * b
                if narrow:
                    hs = qs // b
                    e = _slot(e, qs - hs * b, b)
                    qs = hs
                c[t] = terms[t0 + (m + t) * w + np.int64(e)]
                q = h
            if m >= 2:
                for p in range(ln):
                    v[p] = prefix[p0 + np.int64(lo) + p]
            elif m == 1:  # row 0 of the terms is the table (0.0 + t is t: terms are >= 0)
                at = t0 + np.int64(_slot(lo, start_lo, b) if narrow else lo)
                for p in range(ln):
                    v[p] = terms[at + p]
            else:
                for p in range(ln):
                    v[p] = 0.0
            for t in range(nc):
                ct = c[t]
                for p in range(ln):
                    v[p] += ct
            if has_shift:
                for p in range(ln):
                    y = v[p] + u
                    v[p] = y - 1.0 if y >= 1.0 else y
            for p in range(ln):
                out[r + p, j] = v[p]
            r += ln
            i += np.uint64(ln)


@njit(parallel=True, **_JIT)
def _run_parallel(out, start, bases, ndig, ws, ms, Ls, terms, offsets, prefix, pre_at, shift,
                  has_shift):
    n = out.shape[0]
    for j in prange(bases.size):
        if ms[j] >= 2:
            _build_prefix(prefix[pre_at[j]:pre_at[j + 1]], terms[offsets[j]:], bases[j], ms[j])
    blocks = (n + ROWS - 1) // ROWS
    for blk in prange(blocks):
        r0 = blk * ROWS
        _block(out, r0, min(n, r0 + ROWS), start, bases, ndig, ws, ms, Ls, terms, offsets,
               prefix, pre_at, shift, has_shift, np.empty(64), np.empty(ROWS))


@njit(**_JIT)
def _run_serial(out, start, bases, ndig, ws, ms, Ls, terms, offsets, prefix, pre_at, shift,
                has_shift):
    n = out.shape[0]
    for j in range(bases.size):
        if ms[j] >= 2:
            _build_prefix(prefix[pre_at[j]:pre_at[j + 1]], terms[offsets[j]:], bases[j], ms[j])
    c, v = np.empty(64), np.empty(min(n, ROWS))
    for r0 in range(0, n, ROWS):
        _block(out, r0, min(n, r0 + ROWS), start, bases, ndig, ws, ms, Ls, terms, offsets,
               prefix, pre_at, shift, has_shift, c, v)


def halton(out, start, tab, ndig, workers):
    check_host_out(out)
    ws = check_tables(out.shape, start, tab, ndig)
    n, d = out.shape
    if n == 0 or d == 0:
        return
    ms, Ls, pre_at = _plan(tab.bases, ndig, n)
    prefix = np.empty(pre_at[-1])
    has_shift = tab.shift is not None
    args = (out, np.uint64(start), tab.bases, ndig, ws, ms, Ls, tab.terms, tab.offsets, prefix,
            pre_at, tab.shift if has_shift else np.zeros(d), has_shift)
    if n * d < SERIAL_BELOW or workers == 1 or n <= ROWS:
        return _run_serial(*args)
    if not workers:
        return _run_parallel(*args)
    # numba's thread count belongs to the calling thread (the threading layer keeps it in
    # thread-local storage): setting it here and restoring it after cannot touch the calls
    # of other threads, nor other kernels of this one
    before = numba.get_num_threads()
    numba.set_num_threads(min(int(workers), numba.config.NUMBA_NUM_THREADS))
    try:
        _run_parallel(*args)
    finally:
        numba.set_num_threads(before)
