"""Argument checks shared by every public entry point.

Everything is validated here, in Python, before any kernel runs, so a rejected call writes
nothing. Errors are TypeError (wrong kind of thing) or ValueError (wrong value) and always name
the argument. Never ``assert``: it vanishes under ``python -O``.
"""
from __future__ import annotations

import math
import numbers
import threading

import numpy as np

from . import _device, _native
from ._device import DEVICE_DTYPES, is_device_array  # noqa: F401 - re-exported
from ._core import (BF16, F16, F32, F64, MAX_STEP, Scalars, _short, check_step,  # noqa: F401
                    integer, real)
from ._registry import OPTIM_STATE

FLOAT_DTYPES = (F32, F64)


def dtype_of(a):
    """The array's dtype as a NumPy dtype (or _registry.BF16), whatever library it is from."""
    if isinstance(a, np.ndarray):
        return a.dtype
    return _device.dtype(a) if is_device_array(a) else getattr(a, "dtype", None)


def state_dtype(dtype):
    """The dtype of optimizer state for params of ``dtype``: float32 for 16-bit storage."""
    return F32 if dtype in (F16, BF16) else dtype


def _where(a) -> str:
    return "a device (GPU) array" if is_device_array(a) else "a host array"


def as_list(arrays, name: str) -> list:
    """One array or a sequence of arrays -> a list (a single array is a list of one)."""
    if isinstance(arrays, np.ndarray) or is_device_array(arrays):
        return [arrays]
    if isinstance(arrays, (list, tuple)):
        return list(arrays)
    raise TypeError(f"{name} must be an array or a list/tuple of arrays, "
                    f"got {type(arrays).__name__}")


def check_float_arrays(arrays: list, name: str, *, writable: bool, dtypes=FLOAT_DTYPES,
                       device_dtypes=DEVICE_DTYPES):
    """Every item is a C-contiguous float array of a supported dtype (and writable if asked):
    all NumPy arrays (``dtypes``), or all device arrays on one device (``device_dtypes``)."""
    if arrays and any(is_device_array(a) for a in arrays):
        return _check_device_arrays(arrays, name, writable=writable, dtypes=device_dtypes)
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}[{i}] must be a numpy.ndarray or a device array, got "
                            f"{type(a).__name__}")
        if isinstance(a, np.ma.MaskedArray):  # the kernels read the data: the mask is lost
            raise TypeError(f"{name}[{i}] is a masked array; its mask would be ignored "
                            "(pass numpy.ma.filled(x, 0) or x.data)")
        if a.dtype not in dtypes:
            raise TypeError(f"{name}[{i}] has dtype {a.dtype}; supported: "
                            f"{', '.join(str(d) for d in dtypes)}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}[{i}] is not C-contiguous; fastopt never updates a copy "
                             "(pass numpy.ascontiguousarray(x) and keep that array)")
        if writable and not a.flags.writeable:
            raise ValueError(f"{name}[{i}] is read-only but would be written")


def _check_device_arrays(arrays, name, *, writable, dtypes):
    first_device = None
    for i, a in enumerate(arrays):
        if not is_device_array(a):
            j = next(k for k, b in enumerate(arrays) if is_device_array(b))
            raise TypeError(f"host and device arrays mixed: {name}[{i}] is {_where(a)} "
                            f"({type(a).__name__}) but {name}[{j}] is a device (GPU) array; "
                            "pass all of them on the same device")
        info = _device.describe(a)
        if info.dtype not in dtypes:
            raise TypeError(f"{name}[{i}] has dtype {info.dtype}; supported on the device: "
                            f"{', '.join(str(d) for d in dtypes)}")
        if not info.contiguous:
            raise ValueError(f"{name}[{i}] is not C-contiguous; fastopt never updates a copy "
                             "(pass a contiguous array, e.g. cupy.ascontiguousarray(x) or "
                             "x.contiguous(), and keep that array)")
        if writable and info.readonly:
            raise ValueError(f"{name}[{i}] is read-only but would be written")
        if info.device >= 0:
            if first_device is None:
                first_device = (i, info.device)
            elif info.device != first_device[1]:
                raise ValueError(f"{name}[{i}] is on device cuda:{info.device} but "
                                 f"{name}[{first_device[0]}] is on cuda:{first_device[1]}; "
                                 "all arrays of a call must be on one device")


def check_matching(ref: list, ref_name: str, other: list, name: str, *, state: bool = False):
    """``other`` matches ``ref`` item by item in length, shape, dtype and place (host or the
    same device). ``state=True``: ``other`` holds optimizer state, whose dtype is
    ``state_dtype`` of the matching ``ref`` item (float32 for 16-bit params)."""
    if len(other) != len(ref):
        raise ValueError(f"{name} has {len(other)} arrays but {ref_name} has {len(ref)}")
    for i, (a, b) in enumerate(zip(ref, other)):
        if is_device_array(a) != is_device_array(b):
            raise TypeError(f"host and device arrays mixed: {name}[{i}] is {_where(b)} but "
                            f"{ref_name}[{i}] is {_where(a)}")
        if tuple(b.shape) != tuple(a.shape):
            raise ValueError(f"{name}[{i}] has shape {tuple(b.shape)} but {ref_name}[{i}] has "
                             f"{tuple(a.shape)}")
        da, db = dtype_of(a), dtype_of(b)
        want = state_dtype(da) if state else da
        if db != want:
            raise TypeError(f"{name}[{i}] has dtype {db} but {ref_name}[{i}] has {da}"
                            + (f" (state must be {want})" if state else ""))
    if ref and other and is_device_array(ref[0]):
        da, db = _device.describe(ref[0]).device, _device.describe(other[0]).device
        if da >= 0 and db >= 0 and da != db:
            raise ValueError(f"{name}[0] is on device cuda:{db} but {ref_name}[0] is on "
                             f"cuda:{da}; all arrays of a call must be on one device")


_ext = _native.cpu()
if _ext is not None:  # the extension reads data pointers ~50x faster than __array_interface__
    _host_addresses, _kernel_addresses = _ext.data_addresses, _ext.kernel_addresses
else:
    _kernel_addresses = None

    def _host_addresses(arrays):
        return [a.__array_interface__["data"][0] for a in arrays]


def data_addresses(arrays) -> list:
    """Data addresses of validated arrays (all host or all device, as validation ensures)."""
    if arrays and is_device_array(arrays[0]):
        return _device.pointers(arrays)
    return _host_addresses(arrays)


def nbytes(a) -> int:
    return a.nbytes if isinstance(a, np.ndarray) else _device.nbytes(a)


def check_like(ref: list, ref_name: str, other: list, name: str):
    """``other`` are C-contiguous ndarrays matching ``ref`` item by item (read-only use).

    One tight loop for the common case; anything unusual goes through the detailed checks,
    which raise the precise error.
    """
    ok = len(other) == len(ref)
    if ok and ref and is_device_array(ref[0]):
        if _device.like(ref, other):
            return
        ok = False
    if ok:
        for a, b in zip(ref, other):
            if (type(b) is not np.ndarray or b.dtype is not a.dtype or b.shape != a.shape
                    or not b.flags.c_contiguous):
                ok = False
                break
    if not ok:
        check_float_arrays(other, name, writable=False)
        check_matching(ref, ref_name, other, name)


def check_no_overlap(written: dict, read: dict | None = None):
    """No written array shares memory with any other array of the call.

    ``written`` and ``read`` map an argument name to its list of arrays. Arrays that are only
    read may overlap each other. Contiguous arrays occupy one byte range each, so a sort and a
    sweep decide it in O(n log n).
    """
    spans = []
    for flag, group in ((True, written), (False, read or {})):
        for name, arrays in group.items():
            for i, (a, s) in enumerate(zip(arrays, data_addresses(arrays))):
                n = nbytes(a)
                if n:
                    spans.append((s, s + n, flag, name, i))
    spans.sort(key=lambda t: t[0])
    end_written = end_any = -1
    last_written = last_any = None
    for s, e, flag, name, i in spans:
        if s < end_written or (flag and s < end_any):
            other = last_written if s < end_written else last_any
            raise ValueError(f"{name}[{i}] shares memory with {other[0]}[{other[1]}]; arrays that "
                             "are written must not overlap any other array of the call")
        if e > end_any:
            end_any, last_any = e, (name, i)
        if flag and e > end_written:
            end_written, last_written = e, (name, i)


class Exclusive:
    """Guards a method that mutates shared state (an optimizer's ``step``, its loading): a
    second entry while one is running, from another thread or re-entered from a hook, raises
    a RuntimeError instead of interleaving two updates of the same arrays and step count.

    ``with self._exclusive("step()"):``. Copying or pickling the owner makes a fresh guard.
    """

    __slots__ = ("_lock", "_holder")

    def __init__(self):
        self._lock = threading.Lock()
        self._holder = None

    def __call__(self, what: str):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(f"{what} was called while {self._holder} is already running on "
                               "this object (in another thread, or re-entered from a hook or "
                               "callback); one object takes one call at a time: use one "
                               "optimizer per thread, or a lock")
        self._holder = what
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._lock.release()
        return False

    def __reduce__(self):
        return (Exclusive, ())


def check_kernel_arrays(lists):
    """The native-boundary contract of the Python kernels (Numba, the NumPy reference), as
    csrc/cpu/cpu_common.h's take_arrays states it for C++: whatever the caller passed, a kernel
    never reads or writes outside an array. ``lists`` is ``[(name, arrays, written), ...]``;
    every item must be a C-contiguous ndarray of the first array's dtype with as many elements
    as the matching item of the first list, and writable when written. Python's detailed checks
    ran before (they give the friendlier messages); this is the last line of defence, so it is
    cheap (one pass, no per-array call) and it raises."""
    ref_name, ref, _ = lists[0]
    if not isinstance(ref, list):
        raise TypeError(f"{ref_name} must be a list of arrays")
    if not ref:
        if any(arrays for _, arrays, _ in lists):
            raise ValueError(f"{ref_name} is empty but other arrays were passed")
        return
    nd = np.ndarray
    dt = getattr(ref[0], "dtype", None)
    if type(ref[0]) is not nd or dt not in FLOAT_DTYPES:
        raise TypeError(f"{ref_name}[0] must be a float32 or float64 ndarray")
    try:
        sizes = [a.size for a in ref]
    except AttributeError:
        sizes = None
    for name, arrays, written in lists:
        if (sizes is not None and isinstance(arrays, list) and len(arrays) == len(ref)
                and all(type(a) is nd and a.dtype is dt and a.size == n and a.flags.c_contiguous
                        and (not written or a.flags.writeable)
                        for a, n in zip(arrays, sizes))):
            continue
        _kernel_arrays_error(name, arrays, written, ref_name, ref)


def kernel_addresses(lists) -> list:
    """``check_kernel_arrays(lists)``, then each list's data addresses (np.intp arrays): the
    table the Numba kernels work from. With the C++ extension the checks and the addresses come
    from one native pass over the arrays (take_arrays, the C++ kernels' own contract)."""
    if _kernel_addresses is not None:
        names, arrays, written = zip(*lists)
        if all(type(a) is list for a in arrays):
            return [a.astype(np.intp, copy=False)
                    for a in _kernel_addresses(list(arrays), list(names), list(written))]
    check_kernel_arrays(lists)
    return [np.array(_host_addresses(a), np.intp) for _, a, _ in lists]


def _kernel_arrays_error(name, arrays, written, ref_name, ref):
    if not isinstance(arrays, list) or len(arrays) != len(ref):
        raise ValueError(f"{name} must be a list of {len(ref)} arrays, like {ref_name}")
    dt = getattr(ref[0], "dtype", None)
    for i, (a, r) in enumerate(zip(arrays, ref)):
        if type(a) is not np.ndarray or type(r) is not np.ndarray:
            raise TypeError(f"{name}[{i}] is not an ndarray" if type(a) is not np.ndarray
                            else f"{ref_name}[{i}] is not an ndarray")
        if a.dtype != dt:
            raise TypeError(f"{name}[{i}] has dtype {a.dtype}, not {dt}")
        if a.size != r.size:
            raise ValueError(f"{name}[{i}] has {a.size} elements but {ref_name}[{i}] has "
                             f"{r.size}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}[{i}] is not C-contiguous")
        if written and not a.flags.writeable:
            raise ValueError(f"{name}[{i}] is read-only")
    # only a dtype equal to, but not the same object as, the first one's gets here


def check_optim_kernel_args(rule, params, grads, states, k, *, arrays=True):
    """``check_kernel_arrays`` for an optimizer kernel call: the rule's number of state lists,
    each like params, and the host scalars (``arrays=False``: all but the arrays, which the
    caller checks with ``kernel_addresses``)."""
    if rule not in OPTIM_STATE:
        raise ValueError(f"unknown optimizer rule {rule!r}")
    if not isinstance(states, (list, tuple)) or len(states) != len(OPTIM_STATE[rule]):
        raise ValueError(f"states must hold {len(OPTIM_STATE[rule])} lists for {rule}")
    if not isinstance(k, Scalars):
        raise TypeError(f"scalars must be a _registry.Scalars, got {type(k).__name__}")
    if arrays:
        check_kernel_arrays([("params", params, True), ("grads", grads, False)]
                            + [(f"states[{j}]", s, True) for j, s in enumerate(states)])


def check_device_kernel_arrays(lists):
    """``check_kernel_arrays`` for the device kernels (cuda, numba-cuda), which take addresses
    and the first list's element counts: ``lists`` is ``[(name, arrays, is_state), ...]``;
    every list as long as the first, every array with as many elements as its match there, of
    the first array's dtype (state: ``state_dtype`` of it, float32 for 16-bit params). Device
    arrays' contiguity is checked by the validation before (reading it costs microseconds per
    array on every step; the counts and dtypes here cost a list comparison)."""
    ref_name, ref, _ = lists[0]
    if not ref:
        if any(arrays for _, arrays, _ in lists):
            raise ValueError(f"{ref_name} is empty but other arrays were passed")
        return
    if not all(is_device_array(a) for a in ref):
        raise TypeError(f"{ref_name} must hold device arrays only")
    sizes = _device.sizes(ref)
    dt = dtype_of(ref[0])
    for name, arrays, is_state in lists:
        if not isinstance(arrays, (list, tuple)) or len(arrays) != len(ref):
            raise ValueError(f"{name} must be a list of {len(ref)} arrays, like {ref_name}")
        if not all(is_device_array(a) for a in arrays):
            raise TypeError(f"{name} must hold device arrays only")
        got = _device.sizes(arrays)
        if got != sizes:
            i = next(i for i, (a, b) in enumerate(zip(got, sizes)) if a != b)
            raise ValueError(f"{name}[{i}] has {got[i]} elements but {ref_name}[{i}] has "
                             f"{sizes[i]}")
        want = state_dtype(dt) if is_state else dt
        for i, a in enumerate(arrays):
            if dtype_of(a) != want:
                raise TypeError(f"{name}[{i}] has dtype {dtype_of(a)}, not {want}")


def check_device_optim_args(rule, params, grads, states, k):
    """``check_optim_kernel_args`` for device arrays."""
    if rule not in OPTIM_STATE:
        raise ValueError(f"unknown optimizer rule {rule!r}")
    if not isinstance(states, (list, tuple)) or len(states) != len(OPTIM_STATE[rule]):
        raise ValueError(f"states must hold {len(OPTIM_STATE[rule])} lists for {rule}")
    if k is not None and not isinstance(k, Scalars):
        raise TypeError(f"scalars must be a _registry.Scalars, got {type(k).__name__}")
    check_device_kernel_arrays([("params", params, False), ("grads", grads, False)]
                               + [(f"states[{j}]", s, True) for j, s in enumerate(states)])


#: Host params of a compact step (fastopt/_precision.py): 16-bit storage too.
HOST16_DTYPES = (F32, F64, F16, BF16)


def check_grads16(params: list, grads: list, name: str = "grads"):
    """Host grads for params that may be 16-bit: C-contiguous ndarrays, one per param, of its
    shape and of its dtype or float32 (a bfloat16 grad of a float32 param would lose bits the
    caller had)."""
    check_float_arrays(grads, name, writable=False, dtypes=HOST16_DTYPES)
    if len(grads) != len(params):
        raise ValueError(f"{name} has {len(grads)} arrays but params has {len(params)}")
    for i, (p, g) in enumerate(zip(params, grads)):
        if tuple(g.shape) != tuple(p.shape):
            raise ValueError(f"{name}[{i}] has shape {tuple(g.shape)} but params[{i}] has "
                             f"{tuple(p.shape)}")
        if g.dtype != p.dtype and not (g.dtype == F32 and p.dtype in (F16, BF16)):
            raise TypeError(f"{name}[{i}] has dtype {g.dtype} but params[{i}] has {p.dtype}; a "
                            "grad has its param's dtype, or float32 for a 16-bit param")
