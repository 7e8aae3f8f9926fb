"""Argument checks shared by every public entry point.

Everything is validated here, in Python, before any kernel runs, so a rejected call writes
nothing. Errors are TypeError (wrong kind of thing) or ValueError (wrong value) and always name
the argument. Never ``assert``: it vanishes under ``python -O``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._registry import F32, F64

FLOAT_DTYPES = (F32, F64)


def is_device_array(a) -> bool:
    """True for GPU arrays: CuPy, PyTorch CUDA tensors, Numba device arrays (also simulated)."""
    if isinstance(a, np.ndarray):
        return False
    if hasattr(a, "__cuda_array_interface__"):
        return True
    # The Numba CUDA simulator's device arrays have no __cuda_array_interface__.
    return type(a).__module__.startswith("numba.cuda.simulator")


def as_list(arrays, name: str) -> list:
    """One array or a sequence of arrays -> a list (a single array is a list of one)."""
    if isinstance(arrays, np.ndarray) or is_device_array(arrays):
        return [arrays]
    if isinstance(arrays, (list, tuple)):
        return list(arrays)
    raise TypeError(f"{name} must be an array or a list/tuple of arrays, "
                    f"got {type(arrays).__name__}")


def check_float_arrays(arrays: list, name: str, *, writable: bool, dtypes=FLOAT_DTYPES):
    """Every item is a C-contiguous ndarray of a supported float dtype (and writable if asked)."""
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            if is_device_array(a):
                raise TypeError(f"{name}[{i}] is a device (GPU) array but this call runs on the "
                                "host; pass NumPy arrays, or build fastopt with CUDA")
            raise TypeError(f"{name}[{i}] must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype not in dtypes:
            raise TypeError(f"{name}[{i}] has dtype {a.dtype}; supported: "
                            f"{', '.join(str(d) for d in dtypes)}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}[{i}] is not C-contiguous; fastopt never updates a copy "
                             "(pass numpy.ascontiguousarray(x) and keep that array)")
        if writable and not a.flags.writeable:
            raise ValueError(f"{name}[{i}] is read-only but would be written")


def check_matching(ref: list, ref_name: str, other: list, name: str):
    """``other`` matches ``ref`` item by item in length, shape and dtype."""
    if len(other) != len(ref):
        raise ValueError(f"{name} has {len(other)} arrays but {ref_name} has {len(ref)}")
    for i, (a, b) in enumerate(zip(ref, other)):
        if b.shape != a.shape:
            raise ValueError(f"{name}[{i}] has shape {b.shape} but {ref_name}[{i}] has {a.shape}")
        if b.dtype != a.dtype:
            raise TypeError(f"{name}[{i}] has dtype {b.dtype} but {ref_name}[{i}] has {a.dtype}")


try:  # the extension reads data pointers ~50x faster than __array_interface__ (per array)
    from ._C import data_addresses
except ImportError:
    def data_addresses(arrays):
        return [a.__array_interface__["data"][0] for a in arrays]


def check_like(ref: list, ref_name: str, other: list, name: str):
    """``other`` are C-contiguous ndarrays matching ``ref`` item by item (read-only use).

    One tight loop for the common case; anything unusual goes through the detailed checks,
    which raise the precise error.
    """
    ok = len(other) == len(ref)
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
                if a.nbytes:
                    spans.append((s, s + a.nbytes, flag, name, i))
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


def real(value, name: str, *, lo=None, hi=None, lo_open=False, hi_open=False) -> float:
    """A finite real number in the given interval, as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
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


def integer(value, name: str, *, lo=None) -> int:
    """An integer (Python or NumPy) >= lo, as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    v = int(value)
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v
