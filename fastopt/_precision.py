"""Compact precision (SPEC §2a, docs/precision.md): 16-bit params, fp32 masters, bf16 and 8-bit
moments, stochastic rounding -- the definitions every backend reproduces bit for bit, written
here in NumPy as the reference.

A compact step is the rule's float32 step between a *load* and a *store*:

* load: the param as float32 (from its master, from param + remainder, or from the 16-bit param
  itself), the grad as float32, each state buffer as float32 (bf16 widened, 8-bit codes
  decoded with their block's absmax);
* the rule's element math in float32, exactly as for float32 params (fastopt/_rules);
* store: the param rounded to its dtype (nearest-even, or stochastically), or the master and
  the param rounded to nearest from it, or param + remainder split from the float32 master;
  each state buffer rounded to its storage (bf16 nearest-even or stochastic; 8-bit: the block's
  new absmax, then each value to the nearest entry of the map).

Everything here is integer and float32 arithmetic with one correctly rounded result per
operation, so C++ (any instruction set), Numba and NumPy agree in every bit.
"""
from __future__ import annotations

import numpy as np

try:
    import ml_dtypes
    HOST_BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a dependency
    HOST_BF16 = None

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)
U16, U32 = np.dtype(np.uint16), np.dtype(np.uint32)
I8, U8, I16 = np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16)

#: elements per 8-bit block (one float32 absmax each), and the smallest array quantised to 8
#: bits (smaller arrays keep float32 state, as bitsandbytes does)
QBLOCK = 256
QMIN_SIZE = 4096
#: the maps' smallest normal exponent: signed (int8, first moments) and unsigned (uint8,
#: second moments, accumulators); both keep 3 mantissa bits
EMIN_SIGNED, EMIN_UNSIGNED = -14, -30
MANT = 3

MASTER_MODES = (False, True, "remainder")
STATE_DTYPES = ("float32", "bfloat16", "int8")
_M32 = np.uint64(0xFFFFFFFF)


def nblocks(n: int) -> int:
    return (int(n) + QBLOCK - 1) // QBLOCK


# -- the counter-based random stream ------------------------------------------------------------

def mix32(x):
    """A 32-bit integer hash (C. Wellons' lowbias32) on uint32 arrays or ints."""
    x = np.asarray(x, np.uint64) & _M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & _M32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & _M32
    x ^= x >> np.uint64(16)
    return x


STREAM_INIT = 0x6A09E667


def stream_key(seed: int, step: int, array: int, lane: int, hi: int) -> int:
    """The key of one random stream: the words seed (2 x 32 bits), step (2 x 32), array index,
    lane (0: the param, 1 + j: state buffer j) and the high 32 bits of the element index,
    folded in that order by h <- mix32(h ^ word) from STREAM_INIT."""
    h = STREAM_INIT
    for w in (seed & 0xFFFFFFFF, seed >> 32, step & 0xFFFFFFFF, step >> 32, array, lane, hi):
        h = int(mix32(h ^ w))
    return h


def random_bits(seed, step, array, lane, n):
    """uint32 random words of elements 0 .. n-1: mix32(low 32 bits of i ^ key(..., i >> 32))."""
    i = np.arange(n, dtype=np.uint64)
    out = np.empty(n, np.uint64)
    for hi in range(0, (n + (1 << 32) - 1) >> 32 or 1):
        sl = slice(hi << 32, min(n, (hi + 1) << 32))
        out[sl] = mix32((i[sl] & _M32) ^ np.uint64(stream_key(seed, step, array, lane, hi)))
    return out.astype(np.uint32)


# -- float32 <-> 16-bit ------------------------------------------------------------------------

def f32_bits(x):
    return np.ascontiguousarray(x, F32).view(U32).astype(np.uint64)


def _isnan_bits(M):
    return (M & np.uint64(0x7FFFFFFF)) > np.uint64(0x7F800000)


def bf16_nearest(x):
    """float32 -> bfloat16 bits (uint16), round to nearest even; NaN -> 0x7FC0 with its sign."""
    M = f32_bits(x)
    r = (M + np.uint64(0x7FFF) + ((M >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    nan = (M >> np.uint64(16)) & np.uint64(0x8000) | np.uint64(0x7FC0)
    return np.where(_isnan_bits(M), nan, r).astype(U16)


def bf16_stochastic(x, r):
    """float32 -> bfloat16 bits, rounding up (in magnitude) with probability equal to the
    dropped fraction: (bits + (r & 0xFFFF)) >> 16; NaN as ``bf16_nearest``."""
    M = f32_bits(x)
    out = (M + (np.asarray(r, np.uint64) & np.uint64(0xFFFF))) >> np.uint64(16)
    nan = (M >> np.uint64(16)) & np.uint64(0x8000) | np.uint64(0x7FC0)
    return np.where(_isnan_bits(M), nan, out).astype(U16)


def bf16_widen(bits):
    """bfloat16 bits -> float32 (exact)."""
    return (np.asarray(bits, U16).astype(U32) << np.uint32(16)).view(F32)


def f16_nearest(x):
    """float32 -> float16 bits, round to nearest even (IEEE); NaN -> 0x7E00 with its sign."""
    x = np.asarray(x, F32)
    with np.errstate(over="ignore", invalid="ignore"):
        h = x.astype(F16).view(U16)
    nan = (f32_bits(x) >> np.uint64(16)).astype(U16) & U16.type(0x8000) | U16.type(0x7E00)
    return np.where(np.isnan(x), nan, h).astype(U16)


def f16_stochastic(x, r):
    """float32 -> float16 bits, stochastically: with u the float16 spacing at |x| (2^(e-10),
    e = max(exponent of |x|, -14)), lo = floor(|x|/u) u and frac = |x|/u - floor(|x|/u), round
    up to lo + u iff (r & 0xFFFF) < frac * 65536, keep x's sign. Beyond the float16 range this
    gives inf, as rounding up from 65504 does; NaN and inf as ``f16_nearest``."""
    x = np.asarray(x, F32)
    a = np.abs(x)
    e = ((f32_bits(a) >> np.uint64(23)).astype(np.int64) - 127)
    ue = np.maximum(e, -14) - 10
    inv = ((127 - ue) << 23).astype(np.uint32).view(F32)  # 2^-ue: exact scaling
    u = ((127 + ue) << 23).astype(np.uint32).view(F32)
    q = a * inv
    fl = np.floor(q)
    frac = q - fl
    up = (np.asarray(r, np.uint64) & np.uint64(0xFFFF)).astype(F32) < frac * F32.type(65536)
    mag = (fl + up.astype(F32)) * u
    y = np.where(np.signbit(x), -mag, mag).astype(F32)
    with np.errstate(over="ignore"):
        out = y.astype(F16).view(U16)
    return np.where(np.isfinite(x), out, f16_nearest(x)).astype(U16)


def f16_widen(bits):
    return np.asarray(bits, U16).view(F16).astype(F32)


def remainder_split(x):
    """float32 master -> (bfloat16 bits, int16 remainder) with param = the master rounded to
    nearest, ties away from zero ((bits + 0x8000) >> 16), and remainder = its low 16 bits, so
    that ``remainder_join`` gives the master back exactly. (Nearest-even could not be undone:
    a tie and the value just below it would leave the same 16 bits.) NaN: 0x7FC0 with its sign."""
    M = f32_bits(x)
    hi = (M + np.uint64(0x8000)) >> np.uint64(16)
    nan = (M >> np.uint64(16)) & np.uint64(0x8000) | np.uint64(0x7FC0)
    hi = np.where(_isnan_bits(M), nan, hi)
    return hi.astype(U16), (M & np.uint64(0xFFFF)).astype(U16).view(I16)


def remainder_join(bits, rem):
    """(bfloat16 bits, int16 remainder) -> the float32 master: ((bits - (r >> 15)) << 16) | r,
    r the remainder's 16 bits unsigned."""
    r = np.asarray(rem, I16).view(U16).astype(np.uint64)
    hi = np.asarray(bits, U16).astype(np.uint64)
    M = (((hi - (r >> np.uint64(15))) & np.uint64(0xFFFF)) << np.uint64(16)) | r
    return M.astype(U32).view(F32)


# -- the 8-bit maps -------------------------------------------------------------------------------

def _emin(codes_dtype):
    return EMIN_SIGNED if codes_dtype == I8 else EMIN_UNSIGNED


def map_values(codes_dtype) -> np.ndarray:
    """The 256 entries of a map (index = the code's byte as unsigned): magnitude m = |code| =
    8e + f (f < 8): 2^(e - 1 + emin) (1 + f/8) for e >= 1, f 2^(emin - 3) for e = 0; int8 codes
    carry the sign (emin = -14), uint8 codes are unsigned (emin = -30)."""
    codes = np.arange(256, dtype=np.uint8).view(codes_dtype)
    return decode(codes, np.ones(nblocks(256), F32))


def _magnitude_value(mag, emin):
    mag = mag.astype(np.int64)
    normal = ((mag + ((127 + emin - 1) << MANT)) << (23 - MANT)).astype(np.uint32).view(F32)
    sub = mag.astype(F32) * F32.type(2.0 ** (emin - MANT))
    return np.where(mag >= (1 << MANT), normal, sub).astype(F32)


def decode(codes, absmax):
    """8-bit codes of one array -> float32: map value times its block's absmax."""
    codes = np.asarray(codes)
    mag = np.abs(codes.astype(np.int64))
    v = _magnitude_value(mag, _emin(codes.dtype))
    v = np.where(codes.astype(np.int64) < 0, -v, v).astype(F32)
    scale = np.repeat(np.asarray(absmax, F32), QBLOCK)[:codes.size]
    return (v * scale).astype(F32)


def _quantise_magnitude(a, emin):
    """a in [0, 1] (float32) -> the nearest map magnitude, ties to the even one."""
    small = a < F32.type(2.0 ** emin)
    k = np.rint(a * F32.type(2.0 ** (MANT - emin))).astype(np.int64)  # exact scaling, then RNE
    A = f32_bits(a).astype(np.int64)
    half = (1 << (22 - MANT)) - 1
    R = (A + half + ((A >> (23 - MANT)) & 1)) >> (23 - MANT)
    return np.where(small, k, R - ((127 + emin - 1) << MANT))


def block_absmax(x):
    """Per block of QBLOCK: max |x|; the canonical NaN (0x7FC00000) if the block holds a NaN."""
    x = np.asarray(x, F32)
    pad = (-x.size) % QBLOCK
    b = np.abs(np.concatenate([x, np.zeros(pad, F32)])).reshape(-1, QBLOCK)
    m = b.max(axis=1).astype(F32)  # np.max propagates some NaN: which one, it does not say
    return np.where(np.isnan(m), np.float32(np.nan), m).astype(F32)


def quantise(x, codes_dtype):
    """float32 values of one array -> (codes, absmax per block). a = |x| / absmax (float32),
    the nearest map entry to a; codes 0 in a block whose absmax is 0 or not finite (it then
    decodes to 0 * absmax); an unsigned code of a nonzero a is at least 1 (a second moment
    never becomes 0, which would turn m / (sqrt(v) + eps) into a huge step)."""
    x = np.asarray(x, F32)
    absmax = block_absmax(x)
    scale = np.repeat(absmax, QBLOCK)[:x.size]
    ok = np.isfinite(scale) & (scale > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(ok, np.abs(x) / np.where(ok, scale, F32.type(1)), F32.type(0)).astype(F32)
    a = np.where(a <= 1, a, F32.type(0))  # NaN x in a finite block cannot happen; be total
    emin = _emin(codes_dtype)
    mag = _quantise_magnitude(a, emin)
    if codes_dtype == I8:
        codes = np.where(np.signbit(x), -mag, mag)
    else:
        codes = np.where(a > 0, np.maximum(mag, 1), mag)
    return codes.astype(codes_dtype), absmax


# -- a compact step, one array at a time ---------------------------------------------------------

def load(a, absmax=None):
    """Any storage of a param or state (float32, bfloat16, float16, 8-bit codes) -> float32."""
    dt = a.dtype
    if dt == F32:
        return a.astype(F32)
    if dt == HOST_BF16:
        return bf16_widen(a.view(U16))
    if dt == F16:
        return a.astype(F32)
    if dt in (I8, U8):
        return decode(a.reshape(-1), absmax).reshape(a.shape)
    raise TypeError(f"no compact storage of dtype {dt}")


def store(dst, x, bits=None, absmax=None):
    """float32 ``x`` into ``dst`` (its storage); ``bits``: uint32 random words for stochastic
    rounding of 16-bit storage, or None for nearest-even."""
    dt = dst.dtype
    flat = x.reshape(-1)
    if dt == F32:
        dst[...] = x
    elif dt == HOST_BF16:
        dst.view(U16).reshape(-1)[:] = bf16_nearest(flat) if bits is None \
            else bf16_stochastic(flat, bits)
    elif dt == F16:
        dst.view(U16).reshape(-1)[:] = f16_nearest(flat) if bits is None \
            else f16_stochastic(flat, bits)
    elif dt in (I8, U8):
        codes, am = quantise(flat, dt)
        dst.reshape(-1)[:] = codes
        absmax[...] = am
    else:
        raise TypeError(f"no compact storage of dtype {dt}")


def compact_update(rule, params, grads, masters, states, absmax, k, sr=None):
    """The reference compact step (module docstring). ``masters[i]``: None, a float32 master or
    an int16 remainder; ``states[j][i]``: float32, bfloat16 or 8-bit codes (int8: signed map,
    uint8: unsigned) with ``absmax[j][i]`` their blocks' absmax; ``sr``: None or
    (seed, step, ids), ids[i] the array index keying param i's random streams."""
    from ._rules import RULES
    ref = RULES[rule].reference
    for i, p in enumerate(params):
        m = masters[i] if masters else None
        if m is None:
            x = load(p)
        elif m.dtype == F32:
            x = m.astype(F32)
        else:
            x = remainder_join(p.view(U16), m)
        x = x.reshape(-1).copy()
        g = load(grads[i]).reshape(-1)
        s = [load(st[i], ab[i] if ab else None).reshape(-1).copy()
             for st, ab in zip(states, absmax or [None] * len(states))]
        ref(x, g, *s, k)

        def bits(lane, n=x.size):
            return None if sr is None else random_bits(sr[0], sr[1], int(sr[2][i]), lane, n)
        if m is None:
            store(p, x.reshape(p.shape), bits(0) if p.dtype != F32 else None)
        elif m.dtype == F32:
            m[...] = x.reshape(m.shape)
            store(p, x.reshape(p.shape))
        else:
            hi, rem = remainder_split(x)
            p.view(U16).reshape(-1)[:] = hi
            m.reshape(-1)[:] = rem
        for j, st in enumerate(states):
            st_bits = bits(1 + j) if st[i].dtype == HOST_BF16 else None
            store(st[i], s[j].reshape(st[i].shape), st_bits,
                  absmax[j][i] if absmax and st[i].dtype in (I8, U8) else None)


# -- the options, and the buffers they give each param --------------------------------------------

def is16(dtype) -> bool:
    return dtype == F16 or (HOST_BF16 is not None and dtype == HOST_BF16)


class Options(tuple):
    """(master_weights, state_dtype, stochastic_rounding, seed), checked (``check``)."""
    __slots__ = ()
    master = property(lambda self: self[0])
    state_dtype = property(lambda self: self[1])
    stochastic = property(lambda self: self[2])
    seed = property(lambda self: self[3])

    @property
    def default(self) -> bool:
        return self == DEFAULT

    def __str__(self):
        return (f"master_weights={self.master!r}, state_dtype={self.state_dtype!r}, "
                f"stochastic_rounding={self.stochastic}, seed={self.seed}")


def check(master_weights=False, state_dtype="float32", stochastic_rounding=False, seed=0):
    """The compact-precision options, checked: TypeError/ValueError naming the argument."""
    if master_weights is not True and master_weights is not False \
            and master_weights != "remainder":
        raise ValueError(f"master_weights must be False, True or 'remainder', got "
                         f"{master_weights!r:.80}")
    if not isinstance(state_dtype, str) or state_dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be one of {', '.join(map(repr, STATE_DTYPES))}, "
                         f"got {state_dtype!r:.80}")
    if stochastic_rounding is not True and stochastic_rounding is not False:
        raise TypeError(f"stochastic_rounding must be True or False, got "
                        f"{stochastic_rounding!r:.80}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= int(seed) < 1 << 64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r:.80}")
    return Options((master_weights, state_dtype, stochastic_rounding, int(seed)))


DEFAULT = Options((False, "float32", False, 0))


def check_params(params, opts: Options, where="params"):
    """The options fit these (host) params: 16-bit masters need 16-bit params, remainders
    bfloat16 ones, and float64 params take no compact option."""
    dts = [a.dtype for a in params]
    if opts.master is not False and not any(is16(d) for d in dts):
        raise ValueError(f"master_weights={opts.master!r} keeps float32 masters of 16-bit "
                         f"params, but no param is bfloat16 or float16")
    if opts.master == "remainder":
        for i, d in enumerate(dts):
            if d == F16:
                raise ValueError(
                    f"master_weights='remainder' needs bfloat16 params, but {where}[{i}] is "
                    "float16: a bfloat16 value is the high half of a float32, so 16 more bits "
                    "complete it; a float16 value (5 exponent bits) is not part of any "
                    "float32's bits. Use master_weights=True for float16")
    if not opts.default:
        for i, d in enumerate(dts):
            if d == np.float64:
                raise ValueError(f"{where}[{i}] is float64, which takes no compact-precision "
                                 f"option ({opts}); those are for float32 and 16-bit params")


def state_storage(rule, name, n, param_dtype, state_dtype):
    """The dtype of state buffer ``name`` of an ``n``-element param."""
    if param_dtype == np.float64:
        return np.dtype(np.float64)
    if state_dtype == "bfloat16":
        return HOST_BF16
    if state_dtype == "int8" and n >= QMIN_SIZE:
        return U8 if name in rule.nonnegative else I8
    return F32


def init(rule, params, opts: Options, hyper):
    """(masters or None, {name: [storage]}, {name: [absmax or None]}) for fresh state."""
    masters = None
    if opts.master is not False:
        masters = []
        for p in params:
            if not is16(p.dtype):
                masters.append(None)
            elif opts.master is True:
                masters.append(load(p))
            else:
                masters.append(np.zeros(p.shape, I16))  # param + 0 is the param exactly
    states, absmax = {}, {}
    for name, value in rule.initial_values(hyper):
        states[name], absmax[name] = [], []
        for p in params:
            dt = state_storage(rule, name, p.size, p.dtype, opts.state_dtype)
            if dt in (I8, U8):
                codes, am = quantise(np.full(p.size, value, F32), dt)
                states[name].append(codes.reshape(p.shape))
                absmax[name].append(am)
            else:
                states[name].append(np.full(p.shape, value, dt))
                absmax[name].append(None)
    return masters, states, absmax


def master_value(p, master):
    """The float32 value the optimizer steps from: the master, param + remainder, or the
    param widened."""
    if master is None:
        return load(p) if p.dtype != np.float64 else p.copy()
    if master.dtype == F32:
        return master.copy()
    return remainder_join(p.view(U16), master).reshape(p.shape)


def check_layout(rule, params, masters, states, absmax):
    """Buffers handed to a compact step fit the params: per param, a master of float32 (any
    16-bit param) or int16 (bfloat16 only) or None; each state buffer float32, bfloat16 or
    8-bit codes of the param's shape, codes with a float32 absmax of one entry per block."""
    n = len(params)
    if masters is not None and len(masters) != n:
        raise ValueError(f"state['masters'] has {len(masters)} entries but params has {n}")
    for i, p in enumerate(params):
        m = None if masters is None else masters[i]
        if m is not None:
            if not isinstance(m, np.ndarray) or m.shape != p.shape or not m.flags.c_contiguous \
                    or not m.flags.writeable:
                raise ValueError(f"state['masters'][{i}] must be a writable C-contiguous "
                                 f"ndarray of shape {p.shape}")
            if not (is16(p.dtype) and (m.dtype == F32 or (m.dtype == I16
                                                         and p.dtype == HOST_BF16))):
                raise TypeError(f"state['masters'][{i}] has dtype {m.dtype}: a master is "
                                f"float32 (16-bit params) or an int16 remainder (bfloat16 "
                                f"params); params[{i}] is {p.dtype}")
    for name, arrays in states.items():
        if len(arrays) != n or len(absmax[name]) != n:
            raise ValueError(f"state[{name!r}] must hold {n} arrays, like params")
        for i, (p, s, a) in enumerate(zip(params, arrays, absmax[name])):
            where = f"state[{name!r}][{i}]"
            if not isinstance(s, np.ndarray) or s.shape != p.shape or not s.flags.c_contiguous \
                    or not s.flags.writeable:
                raise ValueError(f"{where} must be a writable C-contiguous ndarray of shape "
                                 f"{p.shape}")
            ok = (F32, HOST_BF16, I8, U8) if p.dtype != np.float64 else (np.dtype(np.float64),)
            if s.dtype not in ok:
                raise TypeError(f"{where} has dtype {s.dtype}; state of a {p.dtype} param is "
                                f"{', '.join(map(str, ok))}")
            if s.dtype in (I8, U8):
                if not isinstance(a, np.ndarray) or a.dtype != F32 or a.shape != (
                        nblocks(p.size),) or not a.flags.writeable:
                    raise ValueError(f"state['absmax'][{name!r}][{i}] must be a writable "
                                     f"float32 array of {nblocks(p.size)} block maxima")
            elif a is not None:
                raise ValueError(f"state['absmax'][{name!r}][{i}] must be None: {where} is "
                                 f"{s.dtype}, not 8-bit codes")
