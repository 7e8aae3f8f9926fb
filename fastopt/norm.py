r"""Global gradient norm and clipping by it (SPEC §3), deterministic to the bit.

.. math::

    \|g\| = \Big(\sum_a \sum_i g_{a,i}^2\Big)^{1/2}, \qquad
    \operatorname{clip}(g, \lambda) = \begin{cases} \lambda\, g / \|g\| & \|g\| > \lambda \\
                                                   g & \text{otherwise} \end{cases}

The sum runs in float64 in one fixed order (blocks of ``NORM_BLOCK`` elements, ``NORM_LANES``
lanes, halves folded; see ``fastopt/_reference/norm.py``), so the result has the same bits for
any thread count, any run and every CPU backend. float32 squares cannot overflow or underflow in
float64; for float64 inputs a second pass with an exact power-of-two scaling (the scaled sum of
squares of BLAS ``nrm2``) keeps every finite input finite and accurate. Any NaN gives NaN; any
infinity (and no NaN) gives inf.

How it is computed, in steps that a sharded (data-parallel) caller can all-reduce between:
``_sum_of_squares`` reads the arrays once for the float64 sum of squares; only when that sum is
inf or below 2**-900 (overflow, underflow, an infinity or all zeros) does a second pass fetch the
max |x| and, if needed, a third take the sum again scaled by an exact power of two. ``_finish``
takes the root. With a communicator (``comm=``, mpi4py), the sum is all-reduced (sum, float64)
after each pass and the max (max) after the second, before each decision: NaN and inf propagate
through the sums, so every rank takes the same decisions (rescale, clip, skip) and returns the
same norm. Across ranks the result is within ~1e-15 relative of the single-process norm of the
concatenated arrays, not bitwise equal: each rank's partial sum follows its own block layout.

With a ``torch.distributed`` process group (``group=``, fastopt/_torchdist.py) the same steps run,
but each exchange is an all-gather of the ranks' float64 values (with a failure flag), which every
rank adds itself in group rank order: norm = sqrt(sum over ranks r in rank order of S_r), S_r the
float64 sum of squares of rank r's arrays. The order is fixed, so the bits are the same on every
rank and in every run (an all-reduce's summation order is the library's).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _device, _dispatch, _mpi
from ._core import (EXP_LIMIT, F32, F64, G_NORM, GUARD_WIDTH, GUARD_WINDOW, SAFE_SUM,  # noqa: F401
                    TINY, finish_norm, pairwise_sum, rescale_exp, sum_of_squares)
from ._precision import HOST_BF16
from ._validate import (as_list, check_float_arrays, check_no_overlap, dtype_of, is_device_array,
                        real)

__all__ = ["global_norm", "clip_by_global_norm"]

F16 = np.dtype(np.float16)
#: What the norm reads on the host: the kernels widen 16-bit storage element by element.
_HOST_DTYPES = (F16, F32, F64) + ((HOST_BF16,) if HOST_BF16 is not None else ())

_SAFE_SUM = SAFE_SUM  # (the names this module has always had, for its readers)
_rescale_exp = rescale_exp
_finish = finish_norm


class _Partials(NamedTuple):
    """What one read pass yields, per array (float64 arrays)."""
    sumsq: np.ndarray  # sum of (2**exp * x)**2 in the fixed order
    maxabs: np.ndarray | None  # max |x|, unscaled, if asked for; meaningless where sumsq is NaN
    exp: int


def _dtypes(arrays) -> list:
    # validated arrays are all NumPy or all device arrays; the first says which
    if arrays and isinstance(arrays[0], np.ndarray):
        return [a.dtype for a in arrays]
    return [dtype_of(a) for a in arrays]


def _pass(arrays, exp, backend, want_max=False) -> _Partials:
    """One read pass: one kernel call per dtype present (one in the common case)."""
    n = len(arrays)
    scale = math.ldexp(1.0, exp)
    dts = _dtypes(arrays)
    if len(set(dts)) <= 1:
        if not n:
            return _Partials(np.zeros(0), np.zeros(0) if want_max else None, exp)
        name = _dispatch.resolve("norm.global_norm", backend, device=is_device_array(arrays[0]),
                                 dtype=dts[0])
        s, m = _dispatch.module(name).norm_partials(arrays, scale, want_max)
        return _Partials(np.asarray(s, np.float64),
                         np.asarray(m, np.float64) if want_max else None, exp)
    sumsq, maxabs = np.zeros(n), np.zeros(n)
    for dt in sorted(set(dts), key=str):
        idx = [i for i, d in enumerate(dts) if d == dt]
        p = _pass([arrays[i] for i in idx], exp, backend, want_max)
        sumsq[idx] = p.sumsq
        if want_max:
            maxabs[idx] = p.maxabs
    return _Partials(sumsq, maxabs if want_max else None, exp)


def _sum_of_squares(arrays, backend, want_max=False, comm=None, group=None):
    """-> (total, max |x| or None, partials): the float64 sum over all arrays at scale
    2**partials.exp, exact to rounding for every finite input.

    One pass in the common case; a pass for the max when the sum is inf or tiny, and a scaled
    pass when that max says the squares overflowed or underflowed (float64 inputs only). With
    ``comm``, ``total`` (and the max) are all-reduced over the ranks right after each pass, so
    ``total``, the max and every decision are the same on all ranks (``partials`` stay local).
    ``group`` (a ``_torchdist.Exchange``) does the same with rank-order sums of all-gathers.
    """
    reduce_sum = reduce_max = None
    if group is not None:
        def reduce_sum(total):
            return group.sum(total, what="global norm")

        reduce_max = group.max
    elif comm is not None:
        def reduce_sum(total):
            return _mpi.allreduce_sum(comm, total, what="global norm")

        def reduce_max(value):
            return _mpi.allreduce_max(comm, value)
    last = []

    def read(exp, want):
        p = _pass(arrays, exp, backend, want)
        last[:] = [p]
        return p.sumsq, p.maxabs
    total, maxabs, _, _ = sum_of_squares(read, want_max, reduce_sum, reduce_max)
    return total, maxabs, last[0]


def _abandon(comm, what: str, group=None) -> None:
    """This rank rejected its input before the first all-reduce of ``_sum_of_squares``: take
    part in it with the failure flag set, so the other ranks raise instead of waiting."""
    if group is not None:
        group.abandon(what)
    else:
        _mpi.allreduce_sum(comm, 0.0, failed=True, what=what)


def _check_group(group, comm):
    """``group=`` as a ``_torchdist.Exchange`` (None for none); purely local checks. The
    optimizers pass an Exchange of their own (over a DTensor mesh), taken as it is."""
    if group is None:
        return None
    if comm is not None:
        raise ValueError("comm (mpi4py) and group (torch.distributed) cannot both be given: "
                         "pass one of them")
    from . import _torchdist  # imports torch.distributed: only when a group is given
    if isinstance(group, _torchdist.Exchange):
        return group
    return _torchdist.for_group(group)


def _per_array(arrays, p: _Partials, backend) -> np.ndarray:
    """Each array's 2-norm from a shared pass; an array whose own sum is inf or tiny at the
    shared scale (overflow, underflow, an infinity, all zeros) gets its own passes."""
    with np.errstate(over="ignore"):
        norms = np.ldexp(np.sqrt(p.sumsq), -p.exp)
    redo = ~np.isnan(p.sumsq) & ~((p.sumsq >= _SAFE_SUM) & (p.sumsq < np.inf))
    for i in np.flatnonzero(redo):
        total, maxabs, q = _sum_of_squares([arrays[i]], backend)
        norms[i] = _finish(total, maxabs, q.exp)
    return norms


def _norm_checked(arrays, backend, comm=None, group=None) -> float:
    """The global 2-norm of arrays that were validated already (the optimizers' norm pass);
    with ``comm`` (or ``group``, an Exchange), over the arrays of every rank."""
    total, maxabs, p = _sum_of_squares(arrays, backend, comm=comm, group=group)
    return _finish(total, maxabs, p.exp)


def _norm_on_device(arrays, backend):
    """The 2-norm as a 0-d float64 device array: a guarded step's norm pass into a control
    array of its own, nothing read back (mixed dtypes: the host's norm, copied over)."""
    dts = set(_dtypes(arrays))
    if len(dts) > 1:
        return _device.from_host(arrays[0], np.array(_norm_checked(arrays, backend)))
    dt = dts.pop()
    name = _dispatch.resolve("norm.global_norm", backend, device=True, dtype=dt)
    name = _dispatch.resolve("norm.guarded", name, device=True, dtype=dt)
    ctl = _device.from_host(arrays[0], np.zeros((GUARD_WINDOW + 1, GUARD_WIDTH)))
    _dispatch.module(name).guarded_norm(arrays, ctl)
    return _device.element(ctl, 0, G_NORM)


def _read_arrays(arrays, name):
    arrays = as_list(arrays, name)
    for a in arrays:  # the common case in one tight loop; anything else gets the full checks
        if type(a) is not np.ndarray or not a.flags.c_contiguous or (
                a.dtype is not F32 and a.dtype is not F64 and a.dtype is not F16
                and a.dtype is not HOST_BF16):
            break
    else:
        return arrays
    # Reading a copy is harmless: lay out non-contiguous host inputs. 16-bit ones are read as
    # they are (the kernels widen each element exactly to float32).
    arrays = [np.ascontiguousarray(a) if isinstance(a, np.ndarray) and not a.flags.c_contiguous
              else a for a in arrays]
    check_float_arrays(arrays, name, writable=False, dtypes=_HOST_DTYPES)
    return arrays


def global_norm(arrays, *, ord=2, per_array=False, backend=None, comm=None, group=None,
                as_array=False):
    r"""The norm of all elements of all arrays taken together, as a Python float.

    .. math::

        \text{ord}=2:\ \Big(\sum_a \sum_i x_{a,i}^2\Big)^{1/2} \qquad
        \text{ord}=\infty:\ \max_{a,i} |x_{a,i}|

    Args:
      arrays: an array or a list/tuple of arrays (float16, float32, float64, bfloat16 --
        ``ml_dtypes.bfloat16`` on the host; may be mixed), all NumPy or all on one GPU. Nothing
        is written; non-contiguous NumPy arrays are read through a contiguous copy. 16-bit
        arrays are read in place, each element widened exactly: the norm has the bits of the
        norm of their float32 copies.
      ord: 2 (default) or ``math.inf``.
      per_array: also return each array's norm (same ``ord``) as a float64 array.
      backend: ``"cpp"``, ``"numba"``, ``"numpy"`` or None (fastest available). All give the
        same bits.
      comm: an mpi4py intracommunicator (needs ``pip install 'fastopt[mpi]'``), or None. Each
        rank passes its own shard of the arrays and every rank gets the norm of all of them:
        the float64 squared sums are all-reduced (SUM, the max with MAX). Collective: every
        rank must call. A rank whose input is rejected raises its own error and the others a
        ``ValueError`` saying so (none waits forever). Not with ``per_array=True``.
      group: a ``torch.distributed`` ProcessGroup (or ``torch.distributed.group.WORLD``), or
        None: as ``comm`` (not both), over torch.distributed. Each rank passes its own NumPy
        arrays; each rank's float64 sum of squares S_r (with a failure flag) is all-gathered and
        every rank adds them itself in group rank order, norm = sqrt(sum_r S_r): the same bits
        on every rank and in every run (an all-reduce would not fix the order). At another
        world size the arrays are split differently, so the partial sums and their rounding
        differ: the value can change in the last bits there (~1e-16 relative per rank).
        Collective, with the same failure rule as ``comm``. Needs an initialized process group.
      as_array: return the 2-norm as a 0-d float64 array instead of a float: on device arrays
        a device array computed and kept on the device (same bits, no waiting), on NumPy
        arrays a NumPy one. Not with ``ord=inf``, ``per_array`` or ``comm``.

    Returns:
      the norm, or ``(norm, norms)`` with ``per_array=True``. The sum of squares is taken in
      float64 in a fixed order (deterministic), is exact to ~1e-15 relative for any finite
      input (no overflow or underflow), is NaN if any element is NaN and inf if any is ±inf.
    """
    group = _check_group(group, comm)  # first: comm and group together is a ValueError
    comm = _mpi.check_comm(comm)
    try:
        arrays = _read_arrays(arrays, "arrays")
        if isinstance(ord, bool) or ord not in (2, math.inf):
            raise ValueError(f"ord must be 2 or math.inf, got {ord!r}")
        if not isinstance(per_array, (bool, np.bool_)):
            raise TypeError(f"per_array must be a bool, got {type(per_array).__name__}")
        if per_array and (comm is not None or group is not None):
            raise ValueError("per_array=True cannot be combined with comm or group (each rank "
                             "holds its own arrays; call global_norm(..., per_array=True) "
                             "locally)")
        if not isinstance(as_array, (bool, np.bool_)):
            raise TypeError(f"as_array must be a bool, got {type(as_array).__name__}")
        if as_array and (ord != 2 or per_array or comm is not None or group is not None):
            raise ValueError("as_array=True gives the 2-norm alone: not with ord=inf, "
                             "per_array=True, comm or group")
    except Exception:
        if comm is not None or group is not None:
            _abandon(comm, "global_norm", group)
        raise
    if as_array:
        if arrays and is_device_array(arrays[0]):
            return _norm_on_device(arrays, backend)
        return np.array(_norm_checked(arrays, backend))
    total, maxabs, p = _sum_of_squares(arrays, backend, want_max=ord != 2, comm=comm,
                                       group=group)
    if ord == 2:
        norm = _finish(total, maxabs, p.exp)
        return (norm, _per_array(arrays, p, backend)) if per_array else norm
    norm = math.nan if math.isnan(total) else maxabs
    if not per_array:
        return norm
    return norm, np.where(np.isnan(p.sumsq), np.nan, p.maxabs)


def clip_by_global_norm(arrays, max_norm, *, backend=None, comm=None, group=None) -> float:
    r"""Scale every array in place so that the global norm is at most ``max_norm``.

    .. math::

        T = \|g\|, \qquad g \leftarrow \frac{\lambda}{T}\, g \quad \text{if } \lambda < T < \infty

    The factor λ/T is computed in float64 and rounded once to the arrays' dtype, as the
    optimizers apply ``grad_scale``; nothing is written when T <= λ or T is NaN or inf.

    Args:
      arrays: an array or a list/tuple of writable, C-contiguous float32/float64 arrays that do
        not overlap. 16-bit arrays are refused (TypeError): each scaled element would be rounded
        to 16 bits again; an optimizer's ``max_grad_norm`` clips them through its grad_scale.
      max_norm: λ > 0.
      backend: as for ``global_norm``.
      comm: as for ``global_norm``: T is the norm over every rank's arrays, the same on all
        ranks, so all of them scale by the same factor (or none does).
      group: as for ``global_norm`` (a torch.distributed ProcessGroup; not with ``comm``).

    Returns:
      T, the **unclipped** norm (NaN or inf as found).
    """
    group = _check_group(group, comm)  # first: comm and group together is a ValueError
    comm = _mpi.check_comm(comm)
    try:
        arrays = as_list(arrays, "arrays")
        check_float_arrays(arrays, "arrays", writable=True)
        check_no_overlap({"arrays": arrays})
        max_norm = real(max_norm, "max_norm", lo=0, lo_open=True)
    except Exception:
        if comm is not None or group is not None:
            _abandon(comm, "clip_by_global_norm", group)
        raise
    norm = _norm_checked(arrays, backend, comm, group)
    if math.isfinite(norm) and norm > max_norm:
        _scale(arrays, max_norm / norm, backend)
    return norm


def _scale(arrays, factor: float, backend) -> None:
    """x <- factor * x in place, one kernel call per dtype present (all resolved first, so a
    missing kernel writes nothing)."""
    dts = _dtypes(arrays)
    calls = []
    for dt in sorted(set(dts), key=str):
        group = [a for a, d in zip(arrays, dts) if d == dt]
        name = _dispatch.resolve("norm.scale", backend, device=is_device_array(group[0]), dtype=dt)
        calls.append((_dispatch.module(name).norm_scale, group))
    for fn, group in calls:
        fn(group, factor)
