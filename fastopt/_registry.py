"""Which kernel exists in which backend, for which dtypes.

This table is the single source of truth: ``_dispatch`` reads it to pick a backend and the
tests read it to decide what to check. A kernel missing here does not exist.
"""
from __future__ import annotations

from ._core import (BF16, F16, F32, F64, G_APPLIED, G_CLIPPED, G_EXP,  # noqa: F401
                    G_MAXABS, G_NORM, G_ROW, G_SCALE, G_SEQ, G_SKIPPED, GUARD_WIDTH,
                    GUARD_WINDOW, NORM_BLOCK, NORM_LANES, OPTIM_SCALARS, Scalars, _NamedDtype)
from ._rules import RULES

#: CPU backends, fastest first (the order dispatch tries them in).
CPU_BACKENDS = ("cpp", "numba", "numpy")
#: Device backends, fastest first.
DEVICE_BACKENDS = ("cuda", "numba-cuda")
ALL_BACKENDS = CPU_BACKENDS + DEVICE_BACKENDS

#: Optimizer update rules (fastopt/_rules declares each one).
OPTIMIZERS = tuple(RULES)

_CPU_FLOAT = {"cpp": (F32, F64), "numba": (F32, F64), "numpy": (F32, F64)}
#: On the device, 16-bit storage computes in float32 (optimizer state in float32 too).
_DEVICE_FLOAT = {"cuda": (F32, F64, F16, BF16), "numba-cuda": (F32, F64)}

#: kernel name -> {backend: supported dtypes}
KERNELS: dict[str, dict[str, tuple[np.dtype, ...]]] = {
    **{f"optim.{name}": {**_CPU_FLOAT, **_DEVICE_FLOAT} for name in OPTIMIZERS},
    # norm_partials(arrays, scale, want_max): per-array float64 sums of squares in the fixed
    # order below (and max |x|); fastopt.norm finishes them. norm_scale(arrays, s): x <- s x.
    "norm.global_norm": {**_CPU_FLOAT, **_DEVICE_FLOAT},
    "norm.scale": {**_CPU_FLOAT, **_DEVICE_FLOAT},
    # guarded_step(rule, params, grads, states, rows, t_lo, limit, skip_nonfinite, ctl, slot):
    # an optimizer step whose norm, clip, skip and step count stay on the device (see GUARD_*).
    "optim.guarded_step": {"numpy": (F32, F64), **_DEVICE_FLOAT},
    # guarded_norm(arrays, ctl): the norm into ctl[0, G_NORM] on the device, nothing read back.
    "norm.guarded": {"numpy": (F32, F64), **_DEVICE_FLOAT},
    "halton.halton": {"cpp": (F64,), "numba": (F64,), "numpy": (F64,), "cuda": (F64,),
                      "numba-cuda": (F64,)},
}


def backends_for(kernel: str) -> dict[str, tuple[np.dtype, ...]]:
    """The backends that implement ``kernel`` and their dtypes (KeyError if unknown)."""
    return KERNELS[kernel]

#: State buffers of each rule, in kernel argument order (fastopt/_rules).
OPTIM_STATE = {name: r.state_names for name, r in RULES.items()}
#: Rule -> the element-math kernel that runs it (AdamW is Adam with a decay factor).
OPTIM_KERNEL = {name: r.kernel for name, r in RULES.items()}
