"""The ``cpp`` backend: thin adapters over the C++ extension fastopt._C (``_native.cpu()``).

Every function here has the signature of its twin in ``fastopt._reference`` (the
``_registry.BackendModule`` contract).
"""
from __future__ import annotations

import numpy as np

from . import _native
from ._registry import OPTIM_KERNEL

_C = _native.cpu()


def unavailable_reason() -> str | None:
    reason = _native.missing("cpu")
    return None if reason is None else (
        f"{reason}; reinstall fastopt where a C++ compiler works: pip install --force-reinstall .")


def optim_update(rule, params, grads, states, k):
    # the extension knows kernels (csrc/common/optim_math.h's list); an unknown rule goes
    # through as it is, for the extension to refuse
    _C.optim_update(OPTIM_KERNEL.get(rule, rule), params, grads, [list(s) for s in states], list(k))


def norm_partials(arrays, scale, want_max):
    return _C.norm_partials(arrays, scale, want_max)


def norm_scale(arrays, factor):
    _C.norm_scale(arrays, factor)


_NO_SHIFT = np.zeros(0)  # the kernel reads an empty shift as "no shift"


def halton(out, start, tab, ndig, workers):
    shift = tab.shift if tab.shift is not None else _NO_SHIFT
    _C.halton(out, start, tab.bases, ndig, tab.terms, tab.offsets, shift, workers)


# Storage kinds of compact_update's arrays (csrc/cpu/compact.cpp's Kind): 16-bit arrays go as
# uint16 views (pybind11 knows no bfloat16); the kind tells C++ which format the bits hold.
# Looked up by dtype number (a dict of dtypes compares them, several times slower); C++ checks
# each array's dtype exactly (byte order too) against its kind.
_F32, _BF16, _F16, _I16, _I8, _U8, _NONE = range(7)
_KIND = {np.dtype(np.float32).num: _F32, np.dtype(np.float16).num: _F16,
         np.dtype(np.int16).num: _I16, np.dtype(np.int8).num: _I8, np.dtype(np.uint8).num: _U8}
try:
    import ml_dtypes
    _KIND[np.dtype(ml_dtypes.bfloat16).num] = _BF16
except ImportError:  # pragma: no cover - ml_dtypes is a dependency
    pass


def _kind(a):
    """(array as C++ takes it, its kind); anything else goes through for C++ to refuse."""
    if not isinstance(a, np.ndarray):
        return a, -1
    kind = _KIND.get(a.dtype.num, -1)
    return (a.view(np.uint16) if kind == _BF16 or kind == _F16 else a), kind


def _kinds(arrays):
    pairs = [_kind(a) for a in arrays]
    return [a for a, _ in pairs], [k for _, k in pairs]


def compact_update(rule, params, grads, masters, states, absmax, k, sr):
    p, pk = _kinds(params)
    g, gk = _kinds(grads)
    m, mk = [], []
    for a in masters or []:
        arr, kind = (None, _NONE) if a is None else _kind(a)
        m.append(arr)
        mk.append(kind)
    s, sk = [], []
    for buf in states:
        arrs, kinds = _kinds(buf)
        s.append(arrs)
        sk.append(kinds)
    ab = [list(a) for a in absmax] if absmax else []
    if sr is not None:
        sr = (sr[0], sr[1], list(sr[2]))
    _C.compact_update(OPTIM_KERNEL.get(rule, rule), p, pk, g, gk, m, mk, s, sk, ab, list(k), sr)
