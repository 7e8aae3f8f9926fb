"""Which kernel exists in which backend, for which dtypes.

This table is the single source of truth: ``_dispatch`` reads it to pick a backend and the
tests read it to decide what to check. A kernel missing here does not exist.
"""
from __future__ import annotations

import numpy as np

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

#: CPU backends, fastest first (the order dispatch tries them in).
CPU_BACKENDS = ("cpp", "numba", "numpy")
#: Device backends, fastest first.
DEVICE_BACKENDS = ("cuda", "numba-cuda")
ALL_BACKENDS = CPU_BACKENDS + DEVICE_BACKENDS

#: Optimizer update rules (one fused kernel each; AdamW shares Adam's kernel).
OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw", "nadam")

_CPU_FLOAT = {"cpp": (F32, F64), "numba": (F32, F64), "numpy": (F32, F64)}

#: kernel name -> {backend: supported dtypes}
KERNELS: dict[str, dict[str, tuple[np.dtype, ...]]] = {
    **{f"optim.{name}": dict(_CPU_FLOAT) for name in OPTIMIZERS},
    "norm.global_norm": dict(_CPU_FLOAT),
    "norm.scale": dict(_CPU_FLOAT),
    "halton.halton": {"cpp": (F64,), "numba": (F64,), "numpy": (F64,)},
}


def backends_for(kernel: str) -> dict[str, tuple[np.dtype, ...]]:
    """The backends that implement ``kernel`` and their dtypes (KeyError if unknown)."""
    return KERNELS[kernel]

# -- The optimizer kernels' calling convention, shared by every backend ------------------------

#: State arrays of each rule, in kernel argument order, with their initial value.
OPTIM_STATE: dict[str, tuple[tuple[str, float], ...]] = {
    "sgd": (),
    "momentum": (("v", 0.0),),
    "nesterov": (("v", 0.0),),
    "rmsprop": (("v", 1.0), ("m", 0.0)),  # the source document starts v at 1
    "adam": (("m", 0.0), ("v", 0.0)),
    "adamw": (("m", 0.0), ("v", 0.0)),
    "nadam": (("m", 0.0), ("v", 0.0)),
}

#: Host-computed float64 scalars every optimizer kernel receives, in this order.
OPTIM_SCALARS = ("lr", "wd", "gscale", "momentum", "rho", "beta1", "beta2", "eps",
                 "alpha", "c", "decay")

#: Rule -> the kernel that runs it (AdamW is Adam with a decay factor).
OPTIM_KERNEL = {name: ("adam" if name == "adamw" else name) for name in OPTIMIZERS}

from collections import namedtuple  # noqa: E402

#: The float64 scalars handed to an optimizer kernel (see csrc/common/optim_math.h).
Scalars = namedtuple("Scalars", OPTIM_SCALARS)
