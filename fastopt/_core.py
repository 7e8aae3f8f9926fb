"""Backend-free definitions every layer shares: the kernels' calling convention (ABI), the
dtypes, and the checks of plain numbers. This module imports nothing from fastopt, so anything
may import it.
"""
from __future__ import annotations

import math
import numbers
from collections import namedtuple
from typing import NamedTuple

import numpy as np

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
F16 = np.dtype(np.float16)


class _NamedDtype(str):
    """A dtype NumPy lacks, named as the array libraries name it (str(d) and d.name alike)."""

    @property
    def name(self) -> str:
        return str(self)


#: bfloat16: device arrays only (torch.bfloat16, or CuPy with ml_dtypes); never equal to a
#: NumPy dtype, so no host kernel can be picked for it.
BF16 = _NamedDtype("bfloat16")

# -- The optimizer kernels' host scalars (csrc/common/optim_math.h's OptimScalar) --------------

#: Host-computed float64 scalars every optimizer kernel receives, in this order.
#: nm, ng: NAdam's numerator nm*m + ng*g (default beta1, 1-beta1; PyTorch's momentum-decay
#: schedule otherwise). eps_out, lr_out: RMSProp's m <- gamma m + lr g / (sqrt(v + eps) + eps_out),
#: theta <- theta - lr_out m (defaults 0 and 1 give the source document's rule; PyTorch's is
#: eps = 0, eps_out = eps, lr = 1, lr_out = eta). A rule reads only the ones it needs.
OPTIM_SCALARS = ("lr", "wd", "gscale", "momentum", "rho", "beta1", "beta2", "eps",
                 "alpha", "c", "decay", "nm", "ng", "eps_out", "lr_out")

#: The float64 scalars handed to an optimizer kernel (see csrc/common/optim_math.h).
Scalars = namedtuple("Scalars", OPTIM_SCALARS)

#: The coefficients the element math reads (csrc/common/optim_math.h's OptimCoef), each
#: computed in float64 from the Scalars and then rounded once to the arithmetic type.
COEF_FIELDS = ("lr", "wd", "gscale", "momentum", "rho", "omrho", "beta1", "omb1", "beta2",
               "omb2", "eps", "alpha", "c", "decay", "nm", "ng", "eps_out", "lr_out")


def coefficients(k: Scalars) -> tuple:
    """The float64 values of COEF_FIELDS for the scalars ``k`` (OptimCoef::make's arithmetic)."""
    return (k.lr, k.wd, k.gscale, k.momentum, k.rho, 1.0 - k.rho, k.beta1, 1.0 - k.beta1,
            k.beta2, 1.0 - k.beta2, k.eps, k.alpha, k.c, k.decay, k.nm, k.ng, k.eps_out,
            k.lr_out)


#: The coefficients as a record, each in the arithmetic type: what the Numba kernels' element
#: functions read (``c.lr``, ``c.omb1``...). A named tuple: passed by value, so a kernel's
#: loop never reloads it after a store.
Coef = namedtuple("Coef", COEF_FIELDS)


def coef(k: Scalars, T) -> Coef:
    """The kernels' coefficients for scalars ``k``, each rounded once to the scalar type T."""
    return Coef(*map(T, coefficients(k)))


def make_scalars(lr: float, grad_scale: float = 1.0, **fields) -> Scalars:
    """Scalars with the fields a rule does not read at neutral values (no decay, no momentum,
    unit bias corrections)."""
    base = dict(lr=lr, wd=0.0, gscale=grad_scale, momentum=0.0, rho=0.9, beta1=0.9,
                beta2=0.999, eps=1e-8, alpha=lr, c=1.0, decay=1.0, eps_out=0.0, lr_out=1.0)
    base.update(fields)
    base.setdefault("nm", base["beta1"])
    base.setdefault("ng", 1.0 - base["beta1"])
    return Scalars(**base)


# -- The norm kernels' calling convention (csrc/common/norm_math.h repeats these numbers) ------

#: Elements per block: every array is cut into blocks of this size from its first element.
NORM_BLOCK = 1 << 14
#: Accumulators per block: element i of a block goes to lane i mod NORM_LANES, each lane sums
#: sequentially, and lanes are folded in halves (lane j += lane j + L/2, ...), a fixed tree.
NORM_LANES = 16

# -- A guarded step on the device: the norm pass decides clip/skip/count without the host -------

#: Steps the host may issue before it must read the device's step count: the kernels take one
#: row of scalars per step count still possible (t_lo .. t_lo + unread steps).
GUARD_WINDOW = 16
#: The control array: float64, GUARD_WINDOW + 1 rows of GUARD_WIDTH. Row 0 is live (the step
#: count and this step's decisions, which the update kernel reads); row s >= 1 keeps the
#: decisions of the step issued into slot s, until the host reads them.
GUARD_WIDTH = 8
(G_APPLIED, G_NORM, G_SCALE, G_SKIPPED, G_CLIPPED, G_ROW, G_EXP, G_MAXABS) = range(GUARD_WIDTH)
#: In a slot row, column G_EXP holds instead the step's issue number (1, 2, ...). The same row
#: also goes to a host-mapped mirror, when there is one, with the issue number written last: the
#: host can then read a finished step's decisions without waiting for anything.
G_SEQ = G_EXP


class GuardedCall(NamedTuple):
    """One guarded step, as every backend's ``guarded_step`` takes it: ``rule`` on ``params``
    with ``grads`` and ``states``; ``rows[j]`` the Scalars of step count ``t_lo + j`` (the device
    picks the row of its own count); clip at ``limit`` (inf: never); skip a non-finite norm if
    ``skip_nonfinite``; ``ctl`` the control array, ``slot`` the row that keeps this step's
    decisions for the host and ``seq`` its issue number; ``mirror`` host memory the device
    writes that row to (or None)."""
    rule: str
    params: list
    grads: list
    states: list
    rows: list
    t_lo: int
    limit: float
    skip_nonfinite: bool
    ctl: object
    slot: int
    seq: int
    mirror: object = None

# -- Plain numbers ----------------------------------------------------------------------------

#: The largest step count accepted anywhere (passed, set, loaded or asked of a schedule): every
#: count up to it is exact in float64, in which schedules and bias corrections are computed.
MAX_STEP = 2**53


def real(value, name: str, *, lo=None, hi=None, lo_open=False, hi_open=False) -> float:
    """A finite real number in the given interval, as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        v = float(value)
    except (OverflowError, ValueError, TypeError):  # an int beyond float range, an odd Real
        raise ValueError(f"{name} must be a finite real number, got {_short(value)}") from None
    bad = not math.isfinite(v)
    if lo is not None:
        bad |= v <= lo if lo_open else v < lo
    if hi is not None:
        bad |= v >= hi if hi_open else v > hi
    if bad:
        interval = (("(" if lo_open else "[") + ("-inf" if lo is None else repr(lo)) + ", "
                    + ("inf" if hi is None else repr(hi)) + (")" if hi_open or hi is None else "]"))
        raise ValueError(f"{name} must be finite and in {interval}, got {value!r}")
    return v


def integer(value, name: str, *, lo=None, hi=None) -> int:
    """An integer (Python or NumPy) in [lo, hi], as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    v = int(value)
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {_short(v)}")
    return v


def check_step(value, name: str) -> int:
    """A step count: an integer in [0, MAX_STEP]."""
    return integer(value, name, lo=0, hi=MAX_STEP)


def _short(value) -> str:
    """A value for an error message: huge integers by their size, not their 1000 digits."""
    if isinstance(value, numbers.Integral) and abs(int(value)) >= 10**30:
        return f"an integer of {int(value).bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- The norm's finishing math (SPEC §3), shared by fastopt.norm and every backend -------------

#: A sum of squares at least this large (and finite) is right as it stands: squares that
#: underflow (|x| < 2**-511) err by at most 2**-1075 each, n * 2**-1075 <= 2**-900 * 2**-120
#: for any n < 2**55. Below it, or at inf, the max |x| decides whether to rescale.
SAFE_SUM = 2.0 ** -900
#: Below this max |x|, float64 squares may underflow by enough to show: rescale. Elements
#: smaller than 2**-511 square to subnormals; with max |x| >= 2**-480 their total error stays
#: below 2**-1021 * n, which is under 1e-16 of max|x|**2 for any n < 2**40.
TINY = 2.0 ** -480
#: The rescaling exponent is clamped so that 2**exp is a normal double.
EXP_LIMIT = 1000


def pairwise_sum(values) -> float:
    """Fold-in-halves sum of float64 values: pad with zeros to a power of two, v[j] += v[j+h]."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return 0.0
    width = 1 << (v.size - 1).bit_length()
    v = np.concatenate([v, np.zeros(width - v.size)])
    while v.size > 1:
        h = v.size // 2
        v = v[:h] + v[h:]
    return float(v[0])


def rescale_exp(total: float, maxabs: float) -> int:
    """0 when sqrt(total) is already right, else the exponent e that puts 2**e * max|x| near 1.

    Plain scalar code: the numba-cuda guard compiles it as it stands."""
    if math.isnan(total) or math.isinf(maxabs) or maxabs == 0:
        return 0
    if math.isinf(total) or maxabs < TINY:
        e = math.frexp(maxabs)[1]  # maxabs = f * 2**e, 0.5 <= f < 1
        return max(-EXP_LIMIT, min(EXP_LIMIT, -e))
    return 0


def finish_norm(total: float, maxabs: float | None, exp: int) -> float:
    """The norm from the all-array sum of squares taken at scale 2**exp."""
    if math.isnan(total):
        return math.nan
    if maxabs is not None and math.isinf(maxabs):
        return math.inf
    try:
        return math.ldexp(math.sqrt(total), -exp)
    except OverflowError:  # a true norm above the largest double
        return math.inf


def sum_of_squares(read, want_max=False, allreduce_sum=None, allreduce_max=None):
    """-> (total, max |x| or None, exp, sumsq): the float64 sum of squares over all arrays at
    scale 2**exp, exact to rounding for every finite input (SPEC §3).

    ``read(exp, want_max)`` is one read pass: (per-array float64 sums of squares of 2**exp x,
    per-array max |x| or None). One pass in the common case; a pass for the max when the sum is
    inf or tiny, and a scaled pass when that max says the squares overflowed or underflowed.
    ``allreduce_sum``/``allreduce_max`` (a sharded caller's all-reduce) are applied right after
    each pass, so every decision is the same on all ranks."""
    sumsq, maxabs_arr = read(0, want_max)
    total = pairwise_sum(sumsq)
    if allreduce_sum is not None:
        total = allreduce_sum(total)
    if math.isnan(total) or (SAFE_SUM <= total < math.inf and not want_max):
        return total, None, 0, sumsq
    if maxabs_arr is None:
        sumsq, maxabs_arr = read(0, True)
    maxabs = float(np.fmax.reduce(np.asarray(maxabs_arr, np.float64), initial=0.0))
    if allreduce_max is not None:  # no NaN here: a NaN anywhere made the total NaN above
        maxabs = allreduce_max(maxabs)
    exp = rescale_exp(total, maxabs)
    if exp:
        sumsq, _ = read(exp, True)
        total = pairwise_sum(sumsq)
        if allreduce_sum is not None:
            total = allreduce_sum(total)
    return total, maxabs, exp, sumsq


# -- A guarded step's decisions (the device kernels take the same ones) ------------------------

def guard_outcome(applied, norm, nrows, t_lo, limit, skip_nonfinite):
    """(skip, clipped, scale, row) of a guarded step with this norm, after ``applied`` steps:
    plain scalar float64 code, which the numba-cuda kernel compiles as it stands."""
    skip = skip_nonfinite and not math.isfinite(norm)
    clipped = (not skip) and math.isfinite(norm) and norm > limit
    scale = limit / norm if clipped else 1.0
    row = min(max(applied - t_lo, 0.0), nrows - 1.0)
    return skip, clipped, scale, row


def guard_decide(ctl, norm, nrows, t_lo, limit, skip_nonfinite, slot, seq, mirror=None):
    """A guarded step's decisions from its unclipped norm, into the control array ``ctl``
    (GUARD_*): skip when the norm is not finite and ``skip_nonfinite``; else clip when
    norm > limit (scale = limit / norm, float64); the scalars row is the step count minus
    ``t_lo``; the count goes up unless skipped. Row ``slot`` keeps a copy for the host, with the
    issue number ``seq``; so does the same row of ``mirror`` (host memory), if given, seq last."""
    applied = float(ctl[0, G_APPLIED])
    skip, clipped, scale, row = guard_outcome(applied, norm, float(nrows), t_lo, limit,
                                              bool(skip_nonfinite))
    ctl[slot, :] = 0.0
    for c in (0, slot):
        ctl[c, G_NORM], ctl[c, G_SCALE], ctl[c, G_ROW] = norm, scale, row
        ctl[c, G_SKIPPED], ctl[c, G_CLIPPED] = float(skip), float(clipped)
    ctl[slot, G_APPLIED], ctl[slot, G_SEQ] = applied, seq
    ctl[0, G_APPLIED] = applied + (0.0 if skip else 1.0)
    ctl[0, G_EXP] = ctl[0, G_MAXABS] = 0.0
    if mirror is not None:
        mirror[slot, :G_SEQ] = ctl[slot, :G_SEQ]
        mirror[slot, G_SEQ + 1:] = ctl[slot, G_SEQ + 1:]
        mirror[slot, G_SEQ] = seq
