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
