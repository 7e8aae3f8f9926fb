"""The ``cpp`` backend: thin adapters over the pybind11 extension fastopt._C.

Every function here has the signature of its twin in ``fastopt._reference``.
"""
from __future__ import annotations

from . import _C


def optim_update(rule, params, grads, states, k):
    _C.optim_update(rule, params, grads, [list(s) for s in states], list(k))
