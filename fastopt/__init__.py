"""fastopt: fused optimizer updates, deterministic gradient norms, scrambled Halton sequences.

Native kernels (C++/OpenMP, CUDA) with Numba fallbacks, each checked against a NumPy reference.
"""
from . import functional, schedules
from ._dispatch import available_backends as backends
from ._dispatch import refresh as refresh_backends
from .optim import (SGD, Adagrad, Adam, AdamW, Lion, Momentum, NAdam, Nesterov, Optimizer,
                    RMSProp, StepResult, param_groups)
from .halton import halton
from .search import QuasiRandomSearch
from .norm import clip_by_global_norm, global_norm
from .monitor import AutoClip, ClippingWarning, GradNormMonitor

__version__ = "0.1.0"

__all__ = ["backends", "refresh_backends", "functional", "schedules", "Optimizer", "StepResult",
           "SGD", "Momentum", "Nesterov", "RMSProp", "Adam", "AdamW", "NAdam", "Lion", "Adagrad",
           "param_groups"]
__all__ += ["global_norm", "clip_by_global_norm", "GradNormMonitor", "AutoClip",
            "ClippingWarning"]
__all__ += ["halton", "QuasiRandomSearch"]
