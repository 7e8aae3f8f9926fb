"""Numba compact-precision kernel: fastopt/_precision.py's ``compact_update`` (16-bit params,
float32 masters or bfloat16 + int16 remainders, bfloat16 and 8-bit state, stochastic rounding),
bit for bit.

One compiled kernel per element-math kernel name (as fastopt._numba.optim): a table of data
addresses and per-array storage kinds, cut into CHUNK-element chunks from each array's start
and shared over threads. A chunk runs in tiles of TILE elements: every buffer of the tile as
float32 (float32 memory in place, anything else converted into a tile buffer), the rule's
``element`` on float32 scalars as for float32 params, then every converted buffer stored back
(8-bit state block by block: a block's new absmax is known before its codes are written). Each
load and store is a plain loop over one storage kind (kinds are per array), which LLVM
vectorises.

Conversions are the reference's integer recipes on uint32 bit patterns (float16: the F16C
instructions where the compiled code may use them, as C++ does; the same bits). The random word
of element i, lane L (0: the param, 1 + j: state j) of the array with stream id ``ids[a]`` is
mix32((i & 0xFFFFFFFF) ^ stream_key(seed, step, id, L, i >> 32)), the key computed once per
chunk (a chunk never crosses a multiple of 2^32).
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

#: Elements per chunk, per tile (the float32 buffers: 4 x 4 KiB, in L1) and per 8-bit block;
#: each a multiple of the next, so tiles and blocks start at multiples from the array's start.
CHUNK, TILE, BLOCK = 1 << 15, 1 << 10, 256
#: The 8-bit maps' smallest normal exponents and mantissa bits, and the stream's first word.
EMIN_SIGNED, EMIN_UNSIGNED, MANT, STREAM_INIT = -14, -30, 3, 0x6A09E667
# Literals, not read from fastopt._precision, for the same reason as norm.py's: Numba's on-disk
# cache only notices edits to this file, so a changed reference must fail here instead of
# running stale compiled constants.
_HERE = (BLOCK, EMIN_SIGNED, EMIN_UNSIGNED, MANT, STREAM_INIT)
_REF = (P.QBLOCK, P.EMIN_SIGNED, P.EMIN_UNSIGNED, P.MANT, P.STREAM_INIT)
if _HERE != _REF:
    raise ImportError(f"fastopt._numba.compact has (block, emins, mantissa bits, stream init) "
                      f"{_HERE} but fastopt._precision says {_REF}; update this file")

#: Storage kinds (the kernel's per-array codes): params and grads F32/BF16/F16, masters F32
#: (a float32 master) or REM (an int16 remainder of a bfloat16 param), states F32/BF16/I8/U8;
#: NONE: no such buffer.
NONE, F32, BF16, F16, I8, U8, REM = -1, 0, 1, 2, 3, 4, 5
_KIND = {P.F32: F32, P.HOST_BF16: BF16, P.F16: F16, P.I8: I8, P.U8: U8, P.I16: REM}
_M = 0xFFFFFFFF

# zero-length arrays whose dtype types the pointers (see _jit.pointer)
_LF32, _LU16, _LU8 = np.empty(0, np.float32), np.empty(0, np.uint16), np.empty(0, np.uint8)


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
    """The bit pattern of a float32 as a uint32. Typed for float32 only: a float64 reaching
    here would mean the step ran in double, so it fails to compile instead."""
    if x != nbtypes.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return nbtypes.uint32(x), codegen


# The bit recipes below wrap every integer operation in U (uint32): Numba types uint32 op uint32
# as uint64 (and a uint64 meeting an int64 as float64), and the truncation back tells LLVM that
# 32-bit lanes suffice, so the loops vectorise 8 wide. Every intermediate is exact in 32 bits
# (or wraps only in a branch the NaN test discards).
U = np.uint32


@intrinsic
def _mix32(typingctx, x):
    """P.mix32 (lowbias32) of the low 32 bits of an integer, as a uint32. Written in 32-bit IR:
    from Numba's 64-bit arithmetic LLVM keeps the products in 64-bit lanes (half as many per
    vector, and no 64-bit vector multiply on AVX2)."""
    if not isinstance(x, nbtypes.Integer):
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        v = args[0]
        if x.bitwidth > 32:
            v = builder.trunc(v, i32)
        elif x.bitwidth < 32:
            v = builder.zext(v, i32)
        for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B)):
            v = builder.xor(v, builder.lshr(v, ir.Constant(i32, shift)))
            v = builder.mul(v, ir.Constant(i32, factor - (1 << 32) if factor >> 31 else factor))
        return builder.xor(v, builder.lshr(v, ir.Constant(i32, 16)))
    return nbtypes.uint32(x), codegen


@njit(**JIT)
def _stream_key(W, array, lane, hi):
    """P.stream_key: W = (flag, seed lo, seed hi, step lo, step hi), folded from STREAM_INIT;
    the words are < 2^32 (ids masked by the caller as mix32 masks them)."""
    h = _mix32(U(U(STREAM_INIT) ^ U(W[1])))
    h = _mix32(U(h ^ U(W[2])))
    h = _mix32(U(h ^ U(W[3])))
    h = _mix32(U(h ^ U(W[4])))
    h = _mix32(U(h ^ U(array)))
    h = _mix32(U(h ^ U(lane)))
    return _mix32(U(h ^ U(hi)))


@njit(inline="always", **JIT)
def _bf16_nan(M):
    """The canonical bfloat16 NaN with M's sign."""
    return U(U(U(M >> U(16)) & U(0x8000)) | U(0x7FC0))


@njit(inline="always", **JIT)
def _is_nan(M):
    return U(M & U(0x7FFFFFFF)) > U(0x7F800000)


@njit(inline="always", **JIT)
def _bf16_rn(M):
    """P.bf16_nearest on the bits M: + 0x7FFF + the kept lsb, >> 16; NaN -> 0x7FC0 signed."""
    if _is_nan(M):
        return _bf16_nan(M)
    return U(U(M + U(0x7FFF) + U(U(M >> U(16)) & U(1))) >> U(16))


@njit(inline="always", **JIT)
def _bf16_sr(M, r):
    """P.bf16_stochastic: (M + (r & 0xFFFF)) >> 16 rounds up with probability dropped/2^16."""
    if _is_nan(M):
        return _bf16_nan(M)
    return U(U(M + U(r & U(0xFFFF))) >> U(16))


@njit(inline="always", **JIT)
def _f16_widen_bits(h):
    """float16 bits -> float32, exactly: normal numbers rebias the exponent by 127 - 15 = 112;
    inf/NaN keep their mantissa under exponent 255; subnormals are mantissa * 2^-24 (an exact
    int -> float32 conversion and power-of-two product)."""
    h = U(h)
    s = U(U(h & U(0x8000)) << U(16))
    e = U(h & U(0x7C00))
    b = U(U(h & U(0x7FFF)) << U(13))
    if e == U(0x7C00):
        return _f32(U(s | b | U(0x7F800000)))
    if e == U(0):
        return _f32(U(s | _bits(np.float32(np.int32(h & U(0x3FF))) * np.float32(2.0 ** -24))))
    return _f32(U(s | U(b + U(112 << 23))))


@njit(inline="always", **JIT)
def _f16_rn_bits(x):
    """float32 -> float16 bits, IEEE round to nearest even (P.f16_nearest; NaN -> 0x7E00
    signed). |x| >= 65536: inf. Below 2^-14 (float16 subnormal or zero): |x| + 0.5 in float32
    has ulp 2^-24, the float16 subnormal spacing, so the hardware's nearest-even addition
    rounds, and the low bits are the code. Else rebias (-112 << 23) and round the 13 dropped
    bits to nearest even (a carry into the exponent is right, up to 0x7C00 = inf)."""
    M = _bits(x)
    s = U(U(M >> U(16)) & U(0x8000))
    A = U(M & U(0x7FFFFFFF))
    if A > U(0x7F800000):
        return U(s | U(0x7E00))
    if A >= U(0x47800000):
        return U(s | U(0x7C00))
    if A < U(0x38800000):
        return U(s | U(_bits(_f32(A) + np.float32(0.5)) - U(0x3F000000)))
    return U(s | U(U(A - U(112 << 23) + U(0xFFF) + U(U(A >> U(13)) & U(1))) >> U(13)))


def _has_f16c() -> bool:
    """Whether the code Numba generates may use F16C (x86's float16 <-> float32 conversions):
    the features it compiles for (NUMBA_CPU_FEATURES, else the host's)."""
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else \
        get_host_cpu_features()
    return "+f16c" in features.split(",")


@intrinsic
def _f16_fpext(typingctx, h):
    """float16 bits -> float32 by LLVM's fpext (one vcvtph2ps per 8 values): exact; a
    signalling NaN comes out quiet, which the step's arithmetic would make it anyway."""
    if not isinstance(h, nbtypes.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        v = builder.trunc(v, ir.IntType(16)) if h.bitwidth > 16 else v
        return builder.fpext(builder.bitcast(v, ir.HalfType()), ir.FloatType())
    return nbtypes.float32(h), codegen


@intrinsic
def _f16_fptrunc(typingctx, x):
    """float32 -> float16 bits (as a uint32) by LLVM's fptrunc: IEEE nearest even (vcvtps2ph);
    NaNs keep a payload, which _f16_rn_hw replaces."""
    if x != nbtypes.float32:
        return None

    def codegen(context, builder, sig, args):
        h = builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
        return builder.zext(h, ir.IntType(32))
    return nbtypes.uint32(x), codegen


@njit(inline="always", **JIT)
def _f16_rn_hw(x):
    """P.f16_nearest by the hardware, the NaN made canonical (0x7E00 with its sign)."""
    M = _bits(x)
    if _is_nan(M):
        return U(U(U(M >> U(16)) & U(0x8000)) | U(0x7E00))
    return _f16_fptrunc(x)


#: The float16 conversions: F16C where the compiled code may use it (what C++ uses too), else
#: the integer recipes (which LLVM would otherwise replace by calls to a runtime library).
F16C = _has_f16c()
_f16_widen, _f16_rn = (_f16_fpext, _f16_rn_hw) if F16C else (_f16_widen_bits, _f16_rn_bits)


@njit(inline="always", **JIT)
def _f16_sr(x, r):
    """P.f16_stochastic: with u = 2^ue the float16 spacing at |x| (ue = max(exponent, -14) -
    10, so 2^-ue and 2^ue have exponent fields 264 - t and t - 10, t = max(field, 113)) and
    q = |x| / u in [0, 2048), round up from floor(q) u iff (r & 0xFFFF) < frac(q) 2^16; the
    result, with x's sign, is a float16 value (or >= 65536: inf) that _f16_rn converts exactly.
    inf/NaN: _f16_rn(x)."""
    M = _bits(x)
    A = U(M & U(0x7FFFFFFF))
    finite = A < U(0x7F800000)
    if not finite:
        A = U(0)  # keeps the unused arithmetic below finite
    t = max(U(A >> U(23)), U(113))
    q = _f32(A) * _f32(U(U(U(264) - t) << U(23)))  # exact
    fl = np.float32(np.int32(q))  # q in [0, 2048): truncation is floor
    up = np.float32(np.int32(r & U(0xFFFF))) < (q - fl) * np.float32(65536.0)
    mag = (fl + (np.float32(1.0) if up else np.float32(0.0))) * _f32(U(U(t - U(10)) << U(23)))
    return _f16_rn(_f32(U(_bits(mag) | U(M & U(0x80000000)))) if finite else x)


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
            dst[i] = _f32(U(U(h[i]) << U(16)))
    elif kind == F16:
        h = carray(_pointer(addr + 2 * e0, _LU16), m)
        for i in range(m):
            dst[i] = _f16_widen(h[i])
    elif kind == I8 or kind == U8:
        q = carray(_pointer(addr + e0, _LU8), m)
        am = carray(_pointer(am_addr + 4 * (e0 // BLOCK), _LF32), (m + BLOCK - 1) // BLOCK)
        signed = kind == I8
        emin = EMIN_SIGNED if signed else EMIN_UNSIGNED
        sub = _f32(U((127 + emin - MANT) << 23))
        rebase = U((127 + emin - 1) << MANT)
        for j in range(am.size):
            s = am[j]
            qj, dj = q[j * BLOCK:], dst[j * BLOCK:]  # indexed from 0 (see _quantise)
            for i in range(min(BLOCK, m - j * BLOCK)):
                # P.decode: magnitude |code| = 8e + f -> 2^(e-1+emin) (1 + f/8), or f 2^(emin-3)
                c = U(qj[i])
                neg = signed and c >= U(128)
                mag = U(U(256) - c) if neg else c
                if mag >= U(8):
                    v = _f32(U(U(mag + rebase) << U(20)))
                else:
                    v = np.float32(np.int32(mag)) * sub
                dj[i] = (-v if neg else v) * s


@njit(**JIT)
def _quantise(src, j0, addr, kind, e0, m, am_addr):
    """P.quantise of the block src[j0:j0+m] (elements e0 .. of its array): absmax = max |x|
    (the largest |x| bit pattern: the same order for finite values; 0x7FC00000 if there is a
    NaN), then per value a = |x| / absmax to the nearest map magnitude: below 2^emin the
    subnormal steps 2^(emin-3) (a 2^(3-emin) < 8, rounded to nearest even by adding 2^23), else
    a's bits rounded to 3 mantissa bits, nearest even, rebased to the map's exponent. Branch
    free, so that it vectorises: signed codes negate as (mag ^ -s) + s, s the sign bit;
    unsigned codes of a nonzero a are at least 1."""
    src = src[j0:j0 + m]  # indexed from 0: an offset index would be range-checked per element
    big = U(0)
    for i in range(m):
        big = max(big, U(_bits(src[i]) & U(0x7FFFFFFF)))
    am = _f32(big if big <= U(0x7F800000) else U(0x7FC00000))  # a NaN: the canonical one
    carray(_pointer(am_addr + 4 * (e0 // BLOCK), _LF32), 1)[0] = am
    ok = big > U(0) and big < U(0x7F800000)
    scale = am if ok else np.float32(1.0)
    signed = kind == I8
    emin = EMIN_SIGNED if signed else EMIN_UNSIGNED
    tiny = _f32(U((127 + emin) << 23))
    up = _f32(U((127 + MANT - emin) << 23))
    rebase = U((127 + emin - 1) << MANT)
    sgn, least = (U(1), U(0)) if signed else (U(0), U(1))
    out = carray(_pointer(addr + e0, _LU8), m)
    for i in range(m):
        M = _bits(src[i])
        a = _f32(U(M & U(0x7FFFFFFF))) / scale
        if not (ok and a <= np.float32(1.0)):
            a = np.float32(0.0)
        A = _bits(a)
        if a < tiny:
            mag = U(_bits(a * up + np.float32(8388608.0)) - U(0x4B000000))
        else:
            mag = U(U(U(A + U(0x7FFFF) + U(U(A >> U(20)) & U(1))) >> U(20)) - rebase)
        mag = max(mag, least if A != U(0) else U(0))
        s = U(U(M >> U(31)) & sgn)
        out[i] = U(U(mag ^ U(U(0) - s)) + s)


@njit(**JIT)
def _store(src, addr, kind, e0, m, key, am_addr):
    """src[:m] into elements e0 .. of a stored array of ``kind``: float32 as is, 16 bits to
    nearest even (key < 0) or stochastically with the words mix32(index ^ key), 8 bits by
    block. e0 is a multiple of TILE and i < TILE, so (e0 + i) ^ key = (e0 ^ key) ^ i: a 32-bit
    base and a 32-bit counter (an int64 index would keep the hash in 64-bit lanes)."""
    base = U(U(e0) ^ U(key))
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
                h[i] = _bf16_sr(_bits(src[i]), _mix32(U(base ^ U(i))))
    elif kind == F16:
        h = carray(_pointer(addr + 2 * e0, _LU16), m)
        if key < 0:
            for i in range(m):
                h[i] = _f16_rn(src[i])
        else:
            for i in range(m):
                h[i] = _f16_sr(src[i], _mix32(U(base ^ U(i))))
    elif kind == I8 or kind == U8:
        for j0 in range(0, m, BLOCK):
            _quantise(src, j0, addr, kind, e0 + j0, min(BLOCK, m - j0), am_addr)


@njit(**JIT)
def _load_param(x, pa, ma, pk, mk, e0, m):
    """The 16-bit param as float32: bf16 param + remainder (P.remainder_join: the high half,
    less the carry the split's + 0x8000 put there when the remainder's top bit is set, above
    the remainder), or the param itself. (A float32 master or param is used in place.)"""
    if mk == REM:
        h = carray(_pointer(pa + 2 * e0, _LU16), m)
        lo = carray(_pointer(ma + 2 * e0, _LU16), m)
        for i in range(m):
            r = U(lo[i])
            hi = U(U(U(h[i]) - U(r >> U(15))) & U(0xFFFF))
            x[i] = _f32(U(U(hi << U(16)) | r))
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
            lo[i] = U(M & U(0xFFFF))
            h[i] = _bf16_nan(M) if _is_nan(M) else U(U(M + U(0x8000)) >> U(16))
    elif mk == F32:  # x is the master
        _store(x, pa, pk, e0, m, -1, 0)
    elif pk != F32:  # (a float32 param is x)
        _store(x, pa, pk, e0, m, key, 0)


@njit(inline="always", **JIT)
def _in_place(addr, e0, m):
    """Elements e0 .. e0+m-1 of a float32 array: the step reads and writes them there."""
    return carray(_pointer(addr + 4 * e0, _LF32), m)


# -- the kernel, per rule -----------------------------------------------------------------------

# Compiled per rule with the global ELEMENT (the rule's element function) and LOOP (the rule's
# compiled _loop); KEY, the element's code, is in both closures so that Numba's on-disk cache
# (keyed on code and closure) recompiles a kernel whose rule's element changed (optim.py).
def _factory(KEY):
    def _loop(T, K, a, b, n, k0, k1, k2, c, xb, gb, sb0, sb1):
        """Elements b .. b+n-1 of array a, tile by tile; k0/k1/k2: the stream keys of the
        param and the states (< 0: round to nearest); xb, gb, sb0, sb1: TILE float32 buffers
        for what is not float32 already (float32 memory is stepped in place, no copies)."""
        KEY  # noqa: B018 - part of the cache key (see above)
        pa, ga, ma, sa0, sa1 = T[a, 0], T[a, 1], T[a, 2], T[a, 3], T[a, 4]
        aa0, aa1 = T[a, 5], T[a, 6]
        pk, gk, mk, sk0, sk1 = K[a, 0], K[a, 1], K[a, 2], K[a, 3], K[a, 4]
        px = mk == F32 or (mk == NONE and pk == F32)  # the float32 param is in memory
        xa = ma if mk == F32 else pa
        for t in range(b, b + n, TILE):
            m = min(TILE, b + n - t)
            x = _in_place(xa, t, m) if px else xb[:m]
            g = _in_place(ga, t, m) if gk == F32 else gb[:m]
            s0 = _in_place(sa0, t, m) if sk0 == F32 else sb0[:m]
            s1 = _in_place(sa1, t, m) if sk1 == F32 else sb1[:m]
            if not px:
                _load_param(x, pa, ma, pk, mk, t, m)
            if gk != F32:
                _load(g, ga, gk, t, m, 0)
            if sk0 != F32:  # (NONE loads nothing: an absent state's tile is scratch the
                _load(s0, sa0, sk0, t, m, aa0)  # element ignores)
            if sk1 != F32:
                _load(s1, sa1, sk1, t, m, aa1)
            for i in range(m):
                x[i], s0[i], s1[i] = ELEMENT(x[i], g[i], s0[i], s1[i], c)  # noqa: F821
            _store_param(x, pa, ma, pk, mk, t, m, k0)
            if sk0 != F32:
                _store(s0, sa0, sk0, t, m, k1, aa0)
            if sk1 != F32:
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


def _kinds(arrays, name, allowed, what, sizes, written, of, rows=None):
    """The storage kinds of ``arrays`` (item k is ``name[rows[k]]``, rows default 0, 1, ..):
    C-contiguous ndarrays of ``sizes[k]`` elements (``of``: whose count that is, formatted
    with i), writable if ``written``. One tight pass; the first item that fails raises the
    error naming it (names are only formatted then: this runs on every step)."""
    kinds, get = [], _KIND.get
    for k, a in enumerate(arrays):
        if type(a) is np.ndarray:
            kind, f = get(a.dtype, NONE), a.flags
            if kind in allowed and a.size == sizes[k] and f.c_contiguous and (
                    f.writeable or not written):
                kinds.append(kind)
                continue
        i = k if rows is None else rows[k]
        where = f"{name}[{i}]"
        if type(a) is not np.ndarray:
            raise TypeError(f"{where} must be a numpy.ndarray, got {type(a).__name__}")
        if get(a.dtype, NONE) not in allowed:
            raise TypeError(f"{where} has dtype {a.dtype}; {what}")
        if a.size != sizes[k]:
            raise ValueError(f"{where} has {a.size} elements but must have {sizes[k]} "
                             f"({of.format(i=i)})")
        if not a.flags.c_contiguous:
            raise ValueError(f"{where} is not C-contiguous")
        raise ValueError(f"{where} is read-only")
    return kinds


def _list(x, name, n):
    if not isinstance(x, (list, tuple)) or len(x) != n:
        raise ValueError(f"{name} must be a list of {n} arrays, like params")
    return list(x)


def _absent_or_list(x, name, n, what):
    """None or an empty list/tuple (absent: None), else a list of n items."""
    if x is None or (isinstance(x, (list, tuple)) and not x):
        return None
    if not isinstance(x, (list, tuple)) or len(x) != n:
        raise ValueError(f"{name} must be None or a list of {n} {what}")
    return list(x)


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
    params = list(params)
    na, ns = len(params), len(states)
    grads = _list(grads, "grads", na)
    states = [_list(s, f"states[{j}]", na) for j, s in enumerate(states)]
    absmax = _absent_or_list(absmax, "absmax", ns, "lists, one per state buffer")
    sizes = [p.size if type(p) is np.ndarray else -1 for p in params]
    T = np.zeros((na, 7), np.intp)
    K = np.full((na, 6), NONE, np.int64)
    like = "as params[{i}]"
    K[:, 0] = pk = _kinds(params, "params", _PARAM,
                          "compact params are float32, bfloat16 or float16", sizes, True, like)
    K[:, 1] = gk = _kinds(grads, "grads", _GRAD, "grads are float32 or the param's dtype",
                          sizes, False, like)
    for i in range(na):
        if gk[i] != F32 and gk[i] != pk[i]:
            raise TypeError(f"grads[{i}] has dtype {grads[i].dtype}; grads are float32 or "
                            f"the param's dtype ({params[i].dtype})")
    T[:, 0], T[:, 1] = data_addresses(params), data_addresses(grads)
    masters = _absent_or_list(masters, "masters", na, "(arrays or None), one per param")
    rows = [i for i, m in enumerate(masters or []) if m is not None]
    if rows:
        ms = [masters[i] for i in rows]
        K[rows, 2] = mk = _kinds(ms, "masters", _MASTER, "a master is float32 (or int16: the "
                                 "remainder of a bfloat16 param)", [sizes[i] for i in rows],
                                 True, like, rows)
        for i, kind in zip(rows, mk):
            if kind == REM and pk[i] != BF16:
                raise TypeError(f"masters[{i}] is an int16 remainder but params[{i}] has dtype "
                                f"{params[i].dtype}; a remainder completes a bfloat16 param")
        T[rows, 2] = data_addresses(ms)
    for j, st in enumerate(states):
        K[:, 3 + j] = sk = _kinds(st, f"states[{j}]", _STATE,
                                  "state is float32, bfloat16, int8 or uint8 codes", sizes, True,
                                  like)
        T[:, 3 + j] = data_addresses(st)
        rows = [i for i in range(na) if sk[i] == I8 or sk[i] == U8]
        if rows:
            ab = absmax[j] if absmax else None
            if not isinstance(ab, (list, tuple)) or len(ab) != na:
                raise ValueError(f"absmax[{j}] must be a list of {na} arrays: "
                                 f"states[{j}][{rows[0]}] holds 8-bit codes")
            ab = [ab[i] for i in rows]
            _kinds(ab, f"absmax[{j}]", (F32,), "absmax is float32",
                   [P.nblocks(sizes[i]) for i in rows], True,
                   f"one per {BLOCK} elements of params[{{i}}]", rows)
            T[rows, 5 + j] = data_addresses(ab)
    return T, K, np.array(sizes, np.int64)


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
