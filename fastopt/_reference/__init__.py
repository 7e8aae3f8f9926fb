"""The NumPy reference backend: plain NumPy written to read like the spec, slow on purpose.

Every other backend is tested against these functions element by element.
"""
from .optim import guarded_step, optim_update  # noqa: F401
from .._precision import compact_update  # noqa: F401
from .norm import guarded_norm, norm_partials, norm_scale  # noqa: F401
from .halton import halton  # noqa: F401
