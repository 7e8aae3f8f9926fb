"""The ``numba`` backend: @njit twins of the C++ kernels, for machines with no compiler.

Imported lazily (importing numba takes a while); every function has the signature of its twin
in ``fastopt._reference``.
"""
from .optim import optim_update  # noqa: F401
from .norm import norm_partials, norm_scale  # noqa: F401
from .halton import halton  # noqa: F401
from .compact import compact_update  # noqa: F401
