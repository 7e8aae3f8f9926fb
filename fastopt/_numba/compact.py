"""Numba compact-precision kernel: fastopt/_precision.py's ``compact_update`` (16-bit params,
float32 masters or bfloat16 + int16 remainders, bfloat16 and 8-bit state, stochastic rounding),
bit for bit.

One compiled kernel per element-math kernel name (as fastopt._numba.optim): a table of data
addresses and per-array storage kinds, cut into CHUNK-element chunks from each array's start
and shared over threads. A chunk runs in tiles of QBLOCK elements -- one 8-bit block each, so a
block's new absmax is known before its codes are written: load every buffer of the tile as
float32, the rule's element step, store every buffer back to its storage. Each load and store
is a plain loop over one storage kind (the kind is per array), which LLVM vectorises; the
element step is the rule's ``element`` on float32 scalars, as for float32 params.

Conversions work on bit patterns (int64 holding 32 bits: Numba widens uint32 arithmetic to 64
bits, and a uint64 meeting an int64 would become float64), with the exact integer recipes of
the reference; the random word of element i, lane L (0: the param, 1 + j: state j) of the
array with id ``ids[a]`` is mix32((i & 0xFFFFFFFF) ^ stream_key(seed, step, id, L, i >> 32)),
the key computed once per chunk (a chunk never crosses a multiple of 2^32).
"""
from __future__ import annotations

import functools
import hashlib
import operator

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange
from numba import types as nbtypes
from numba.extending import intrinsic

from .. import _precision as P
from .. import _rules
from .._core import coef
from .._validate import check_optim_kernel_args, data_addresses
from ._jit import JIT, SERIAL_BELOW, compiled, pointer as _pointer, twins

#: Elements per chunk (a multiple of the tile) and per tile (one 8-bit block).
CHUNK = 1 << 15
TILE = 256
if TILE != P.QBLOCK:  # literal for the same reason as norm.py's: the cache sees this file only
    raise ImportError(f"fastopt._numba.compact has tile {TILE} but QBLOCK is {P.QBLOCK}")

#: Storage kinds (the kernel's per-array codes): params and grads F32/BF16/F16, masters F32
#: (a float32 master) or REM (an int16 remainder of a bfloat16 param), states F32/BF16/I8/U8;
#: NONE: no such buffer.
NONE, F32, BF16, F16, I8, U8, REM = -1, 0, 1, 2, 3, 4, 5
_KIND = {P.F32: F32, P.HOST_BF16: BF16, P.F16: F16, P.I8: I8, P.U8: U8, P.I16: REM}
_M = 0xFFFFFFFF

# zero-length arrays whose dtype types the pointers (see _jit.pointer)
_LF32, _LU16, _LU8 = np.empty(0, np.float32), np.empty(0, np.uint16), np.empty(0, np.uint8)
#: the 8-bit maps, indexed [kind - I8, code byte]: value of the code for absmax 1 (exactly
#: P.decode's, so map value * absmax is its float32 product)
MAPS = np.stack([P.map_values(P.I8), P.map_values(P.U8)]).astype(np.float32)


# -- bits <-> float32 ---------------------------------------------------------------------------

@intrinsic
def _f32(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of the integer ``bits``."""
    if not isinstance(bits, nbtypes.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if bits.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif bits.bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())
    return nbtypes.float32(bits), codegen


@intrinsic
def _bits(typingctx, x):
    """The bit pattern of a float32 as an int64 in [0, 2^32). Typed for float32 only: a float64
    reaching here would mean the step ran in double, so it fails to compile instead."""
    if x != nbtypes.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.zext(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(64))
    return nbtypes.int64(x), codegen


@njit(inline="always", **JIT)
def _mix32(x):
    """P.mix32 on 0 <= x < 2^32 in int64 (a product wraps modulo 2^64; only its low 32 bits,
    which wrapping keeps, are used)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M
    return x ^ (x >> 16)


@njit(**JIT)
def _stream_key(W, array, lane, hi):
    """P.stream_key: W = (flag, seed lo, seed hi, step lo, step hi), folded from STREAM_INIT."""
    h = _mix32(0x6A09E667 ^ W[1])
    h = _mix32(h ^ W[2])
    h = _mix32(h ^ W[3])
    h = _mix32(h ^ W[4])
    h = _mix32(h ^ array)
    h = _mix32(h ^ lane)
    return _mix32(h ^ hi)


@njit(inline="always", **JIT)
def _bf16_rn(M):
    """P.bf16_nearest on the bits M: + 0x7FFF + the kept lsb, >> 16; NaN -> 0x7FC0 signed."""
    if (M & 0x7FFFFFFF) > 0x7F800000:
        return ((M >> 16) & 0x8000) | 0x7FC0
    return (M + 0x7FFF + ((M >> 16) & 1)) >> 16


@njit(inline="always", **JIT)
def _bf16_sr(M, r):
    """P.bf16_stochastic: (M + (r & 0xFFFF)) >> 16 rounds up with probability dropped/2^16."""
    if (M & 0x7FFFFFFF) > 0x7F800000:
        return ((M >> 16) & 0x8000) | 0x7FC0
    return (M + (r & 0xFFFF)) >> 16


@njit(inline="always", **JIT)
def _f16_widen(h):
    """float16 bits -> float32, exactly: normal numbers rebias the exponent by 127 - 15 = 112;
    inf/NaN keep their mantissa under exponent 255; subnormals are mantissa * 2^-24 (an exact
    int -> float32 conversion and power-of-two product)."""
    s = (h & 0x8000) << 16
    e = h & 0x7C00
    b = (h & 0x7FFF) << 13
    if e == 0x7C00:
        return _f32(s | b | 0x7F800000)
    if e == 0:
        v = np.float32(h & 0x3FF) * np.float32(2.0 ** -24)
        return -v if s else v
    return _f32(s | (b + (112 << 23)))


@njit(inline="always", **JIT)
def _f16_rn(x):
    """float32 -> float16 bits, IEEE round to nearest even (P.f16_nearest; NaN -> 0x7E00
    signed). |x| >= 65536: inf. Below 2^-14 (float16 subnormal or zero): |x| + 0.5 in float32
    has ulp 2^-24, the float16 subnormal spacing, so the hardware's nearest-even addition
    rounds, and the low bits are the code. Else rebias (-112 << 23) and round the 13 dropped
    bits to nearest even (a carry into the exponent is right, up to 0x7C00 = inf)."""
    M = _bits(x)
    s = (M >> 16) & 0x8000
    A = M & 0x7FFFFFFF
    if A > 0x7F800000:
        return s | 0x7E00
    if A >= 0x47800000:
        return s | 0x7C00
    if A < 0x38800000:
        return s | (_bits(_f32(A) + np.float32(0.5)) - 0x3F000000)
    return s | ((A - (112 << 23) + 0xFFF + ((A >> 13) & 1)) >> 13)


@njit(inline="always", **JIT)
def _f16_sr(x, r):
    """P.f16_stochastic: with u the float16 spacing at |x| and q = |x| / u in [0, 2048),
    round up from floor(q) u iff (r & 0xFFFF) < frac(q) 2^16; the result is a float16 value (or
    >= 65536: inf), converted exactly by _f16_rn. inf/NaN: _f16_rn(x)."""
    M = _bits(x)
    A = M & 0x7FFFFFFF
    if A >= 0x7F800000:
        return _f16_rn(x)
    ue = max((A >> 23) - 127, -14) - 10
    q = _f32(A) * _f32((127 - ue) << 23)  # exact: times 2^-ue
    fl = np.float32(np.int32(q))  # q < 2048, >= 0: truncation is floor
    up = np.float32(r & 0xFFFF) < (q - fl) * np.float32(65536.0)
    mag = (fl + (np.float32(1.0) if up else np.float32(0.0))) * _f32((127 + ue) << 23)
    return _f16_rn(-mag if M >> 31 else mag)


# -- one tile: load and store -------------------------------------------------------------------

@njit(**JIT)
def _load(dst, addr, kind, e0, m, am_addr):
    """Elements e0 .. e0+m-1 of a stored array of ``kind`` as float32 into dst[:m] (8-bit:
    the map value times the block's absmax, as P.decode)."""
    if kind == F32:
        src = carray(_pointer(addr + 4 * e0, _LF32), m)
        for i in range(m):
            dst[i] = src[i]
    elif kind == BF16:
        h = carray(_pointer(addr + 2 * e0, _LU16), m)
        for i in range(m):
            dst[i] = _f32(np.int64(h[i]) << 16)
    elif kind == F16:
        h = carray(_pointer(addr + 2 * e0, _LU16), m)
        for i in range(m):
            dst[i] = _f16_widen(np.int64(h[i]))
    elif kind == I8 or kind == U8:
        q = carray(_pointer(addr + e0, _LU8), m)
        s = carray(_pointer(am_addr + 4 * (e0 // TILE), _LF32), 1)[0]
        row = MAPS[kind - I8]
        for i in range(m):
            dst[i] = row[q[i]] * s


@njit(**JIT)
def _quantise(src, addr, kind, e0, m, am_addr):
    """P.quantise of one block: absmax = max |x| (the largest |x| bit pattern: the same order
    for finite values, and a NaN if there is one), then per value a = |x| / absmax to the
    nearest map magnitude: below 2^emin the subnormal steps 2^(emin-3) (a * 2^(3-emin) < 8,
    rounded to nearest even by adding 2^23), else a's bits rounded to 3 mantissa bits, nearest
    even, rebased to the map's exponent."""
    big = 0
    for i in range(m):
        big = max(big, _bits(src[i]) & 0x7FFFFFFF)
    am = _f32(big)
    carray(_pointer(am_addr + 4 * (e0 // TILE), _LF32), 1)[0] = am
    ok = big > 0 and big < 0x7F800000
    scale = am if ok else np.float32(1.0)
    signed = kind == I8
    emin = P.EMIN_SIGNED if signed else P.EMIN_UNSIGNED
    tiny = np.float32(2.0 ** emin)
    up = np.float32(2.0 ** (P.MANT - emin))
    rebase = (127 + emin - 1) << P.MANT
    out = carray(_pointer(addr + e0, _LU8), m)
    for i in range(m):
        M = _bits(src[i])
        a = _f32(M & 0x7FFFFFFF) / scale
        if not ok or not a <= np.float32(1.0):
            a = np.float32(0.0)
        A = _bits(a)
        if a < tiny:
            mag = _bits(a * up + np.float32(8388608.0)) - 0x4B000000
        else:
            mag = ((A + 0x7FFFF + ((A >> 20) & 1)) >> 20) - rebase
        if signed:
            out[i] = (-mag if M >> 31 else mag) & 0xFF
        else:
            out[i] = max(mag, 1) if A != 0 else mag


@njit(**JIT)
def _store(src, addr, kind, e0, m, key, am_addr):
    """src[:m] into elements e0 .. of a stored array of ``kind``: float32 as is, 16 bits to
    nearest even (key < 0) or stochastically with the words mix32(i ^ key), 8 bits by block."""
    if kind == F32:
        dst = carray(_pointer(addr + 4 * e0, _LF32), m)
        for i in range(m):
            dst[i] = src[i]
    elif kind == BF16:
        h = carray(_pointer(addr + 2 * e0, _LU16), m)
        if key < 0:
            for i in range(m):
                h[i] = _bf16_rn(_bits(src[i]))
        else:
            for i in range(m):
                h[i] = _bf16_sr(_bits(src[i]), _mix32(((e0 + i) & _M) ^ key))
    elif kind == F16:
        h = carray(_pointer(addr + 2 * e0, _LU16), m)
        if key < 0:
            for i in range(m):
                h[i] = _f16_rn(src[i])
        else:
            for i in range(m):
                h[i] = _f16_sr(src[i], _mix32(((e0 + i) & _M) ^ key))
    elif kind == I8 or kind == U8:
        _quantise(src, addr, kind, e0, m, am_addr)


@njit(**JIT)
def _load_param(x, pa, ma, pk, mk, e0, m):
    """The param as float32: its master, bf16 param + remainder (P.remainder_join: the high
    half, less the borrow the split's + 0x8000 added when the remainder's top bit is set,
    above the remainder), or the param itself."""
    if mk == REM:
        h = carray(_pointer(pa + 2 * e0, _LU16), m)
        lo = carray(_pointer(ma + 2 * e0, _LU16), m)
        for i in range(m):
            r = np.int64(lo[i])
            x[i] = _f32((((np.int64(h[i]) - (r >> 15)) & 0xFFFF) << 16) | r)
    elif mk == F32:
        _load(x, ma, F32, e0, m, 0)
    else:
        _load(x, pa, pk, e0, m, 0)


@njit(**JIT)
def _store_param(x, pa, ma, pk, mk, e0, m, key):
    """The param back: master and the param to nearest from it; P.remainder_split (ties away
    from zero, so that the join undoes it); or the param itself (stochastic if key >= 0)."""
    if mk == REM:
        h = carray(_pointer(pa + 2 * e0, _LU16), m)
        lo = carray(_pointer(ma + 2 * e0, _LU16), m)
        for i in range(m):
            M = _bits(x[i])
            lo[i] = M & 0xFFFF
            if (M & 0x7FFFFFFF) > 0x7F800000:
                h[i] = ((M >> 16) & 0x8000) | 0x7FC0
            else:
                h[i] = (M + 0x8000) >> 16
    elif mk == F32:
        _store(x, ma, F32, e0, m, -1, 0)
        _store(x, pa, pk, e0, m, -1, 0)
    else:
        _store(x, pa, pk, e0, m, key, 0)


# -- the kernel, per rule -----------------------------------------------------------------------

# Compiled per rule with the global ELEMENT (the rule's element function) and LOOP (the rule's
# compiled _loop); KEY, the element's code, is in both closures so that Numba's on-disk cache
# (keyed on code and closure) recompiles a kernel whose rule's element changed (optim.py).
def _factory(KEY):
    def _loop(T, K, a, b, n, k0, k1, k2, c, x, g, s0, s1):
        """Elements b .. b+n-1 of array a, tile by tile; k0/k1/k2: the stream keys of the
        param and the states (< 0: round to nearest)."""
        KEY  # noqa: B018 - part of the cache key (see above)
        pa, ga, ma, sa0, sa1, aa0, aa1 = T[a, 0], T[a, 1], T[a, 2], T[a, 3], T[a, 4], T[a, 5], T[a, 6]  # noqa: E501
        pk, gk, mk, sk0, sk1 = K[a, 0], K[a, 1], K[a, 2], K[a, 3], K[a, 4]
        for t in range(b, b + n, TILE):
            m = min(TILE, b + n - t)
            _load_param(x, pa, ma, pk, mk, t, m)
            _load(g, ga, gk, t, m, 0)
            _load(s0, sa0, sk0, t, m, aa0)
            _load(s1, sa1, sk1, t, m, aa1)
            for i in range(m):  # absent states: their tiles are scratch the element ignores
                x[i], s0[i], s1[i] = ELEMENT(x[i], g[i], s0[i], s1[i], c)  # noqa: F821
            _store_param(x, pa, ma, pk, mk, t, m, k0)
            _store(s0, sa0, sk0, t, m, k1, aa0)
            _store(s1, sa1, sk1, t, m, k2, aa1)

    def _multi(T, K, sizes, W, c):
        """Every chunk of every array in one parallel loop (each chunk writes only its own
        elements and blocks, so the thread count cannot change a bit)."""
        KEY  # noqa: B018
        na = sizes.size
        first = np.zeros(na + 1, np.int64)
        for a in range(na):
            first[a + 1] = first[a] + (sizes[a] + CHUNK - 1) // CHUNK
        owner = np.zeros(first[na], np.int64)
        for a in range(na):
            owner[first[a]:first[a + 1]] = a
        for q in prange(first[na]):
            a = owner[q]
            b = (q - first[a]) * CHUNK
            n = min(sizes[a], b + CHUNK) - b
            k0 = k1 = k2 = -1
            if W[0]:  # the lanes that round stochastically
                if K[a, 2] == NONE and K[a, 0] != F32:
                    k0 = _stream_key(W, K[a, 5], 0, b >> 32)
                if K[a, 3] == BF16:
                    k1 = _stream_key(W, K[a, 5], 1, b >> 32)
                if K[a, 4] == BF16:
                    k2 = _stream_key(W, K[a, 5], 2, b >> 32)
            x = np.zeros(TILE, np.float32)
            g = np.zeros(TILE, np.float32)
            s0 = np.zeros(TILE, np.float32)
            s1 = np.zeros(TILE, np.float32)
            LOOP(T, K, a, b, n, k0, k1, k2, c, x, g, s0, s1)  # noqa: F821
    return _loop, _multi


@functools.lru_cache(maxsize=None)
def kernel(name: str):
    """(parallel, serial) compact kernels of element-math kernel ``name``."""
    rule = next(r for r in _rules.RULES.values() if r.kernel == name)
    code = rule.element.__code__
    key = hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()
    loop, multi = _factory(key)
    env = dict(ELEMENT=njit(inline="always", **JIT)(rule.element))
    env["LOOP"] = compiled(loop, f"_compact_loop_{name}", env)
    return twins(multi, env, f"_compact_{name}")


# -- the call -----------------------------------------------------------------------------------

_PARAM, _GRAD = (F32, BF16, F16), (F32, BF16, F16)
_STATE, _MASTER = (F32, BF16, I8, U8), (F32, REM)


def _kind(a, name, allowed, what, size, written):
    """The storage kind of a C-contiguous ndarray of ``size`` elements (writable if
    ``written``), or the error naming it."""
    if type(a) is not np.ndarray:
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    kind = _KIND.get(a.dtype, NONE)
    if kind not in allowed:
        raise TypeError(f"{name} has dtype {a.dtype}; {what}")
    if a.size != size:
        raise ValueError(f"{name} has {a.size} elements but must have {size}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous")
    if written and not a.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return kind


def _list(x, name, n):
    if not isinstance(x, (list, tuple)) or len(x) != n:
        raise ValueError(f"{name} must be a list of {n} arrays, like params")
    return x


def _u64(v, name):
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}") from None
    if not 0 <= v < 1 << 64:
        raise ValueError(f"{name} must be in [0, 2^64), got {v}")
    return v


def _table(params, grads, masters, states, absmax):
    """(addresses (na, 7): param, grad, master, state 0, state 1, absmax 0, absmax 1; kinds
    (na, 6): param, grad, master, state 0, state 1 and the stream id (filled by the caller);
    sizes), every array checked against the contract first: the kernel trusts the table."""
    if not isinstance(params, (list, tuple)):
        raise TypeError("params must be a list of arrays")
    na = len(params)
    _list(grads, "grads", na)
    masters = _list(masters, "masters", na) if masters else [None] * na
    ns = len(states)
    st = [_list(s, f"states[{j}]", na) for j, s in enumerate(states)]
    if absmax:
        if not isinstance(absmax, (list, tuple)) or len(absmax) != ns:
            raise ValueError(f"absmax must hold {ns} lists, one per state buffer")
    T = np.zeros((na, 7), np.intp)
    K = np.full((na, 6), NONE, np.int64)
    sizes = np.zeros(na, np.int64)
    cols = [[] for _ in range(7)]  # per column: (row, array) whose address goes there
    for i, p in enumerate(params):
        if type(p) is not np.ndarray:
            raise TypeError(f"params[{i}] must be a numpy.ndarray, got {type(p).__name__}")
        n = p.size
        sizes[i] = n
        K[i, 0] = pk = _kind(p, f"params[{i}]", _PARAM,
                             "compact params are float32, bfloat16 or float16", n, True)
        gk = _kind(grads[i], f"grads[{i}]", _GRAD, "grads are float32 or the param's dtype",
                   n, False)
        if gk != F32 and gk != pk:
            raise TypeError(f"grads[{i}] has dtype {grads[i].dtype}; grads are float32 or "
                            f"the param's dtype ({p.dtype})")
        K[i, 1] = gk
        cols[0].append((i, p))
        cols[1].append((i, grads[i]))
        m = masters[i]
        if m is not None:
            K[i, 2] = _kind(m, f"masters[{i}]", _MASTER,
                            "a master is float32 (or int16: the remainder of a bfloat16 param)",
                            n, True)
            if K[i, 2] == REM and pk != BF16:
                raise TypeError(f"masters[{i}] is an int16 remainder but params[{i}] has dtype "
                                f"{p.dtype}; a remainder completes a bfloat16 param")
            cols[2].append((i, m))
        for j in range(ns):
            s = st[j][i]
            K[i, 3 + j] = sk = _kind(s, f"states[{j}][{i}]", _STATE,
                                     "state is float32, bfloat16, int8 or uint8 codes", n, True)
            cols[3 + j].append((i, s))
            if sk in (I8, U8):
                ab = absmax[j] if absmax else None
                if not isinstance(ab, (list, tuple)) or len(ab) != na:
                    raise ValueError(f"absmax[{j}] must be a list of {na} arrays: "
                                     f"states[{j}][{i}] holds 8-bit codes")
                _kind(ab[i], f"absmax[{j}][{i}]", (F32,), "absmax is float32",
                      P.nblocks(n), True)
                cols[5 + j].append((i, ab[i]))
    for col, pairs in enumerate(cols):
        if pairs:
            rows, arrays = zip(*pairs)
            T[list(rows), col] = data_addresses(list(arrays))
    return T, K, sizes


def compact_update(rule, params, grads, masters, states, absmax, k, sr):
    """The compact step of fastopt._precision.compact_update, in place, bit for bit."""
    check_optim_kernel_args(rule, params, grads, states, k, arrays=False)
    T, K, sizes = _table(params, grads, masters, states, absmax)
    W = np.zeros(5, np.int64)
    if sr is not None:
        if not isinstance(sr, (list, tuple)) or len(sr) != 3:
            raise TypeError("sr must be None or (seed, step, ids)")
        seed, step = _u64(sr[0], "sr seed"), _u64(sr[1], "sr step")
        ids = sr[2]
        if not hasattr(ids, "__len__") or len(ids) != len(params):
            raise ValueError(f"sr ids must hold one integer per param ({len(params)})")
        # the key folds the ids in 32 bits (P.stream_key's mix32 masks h ^ id)
        K[:, 5] = [_u64(v, f"sr ids[{i}]") & _M for i, v in enumerate(ids)]
        W[:] = (1, seed & _M, seed >> 32, step & _M, step >> 32)
    if not params:
        return
    run = kernel(_rules.RULES[rule].kernel)[int(sizes.sum()) < SERIAL_BELOW]
    run(T, K, sizes, W, coef(k, np.float32))
