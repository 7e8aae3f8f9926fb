"""Which kernel exists in which backend, for which dtypes.

This table is the single source of truth: ``_dispatch`` reads it to pick a backend and the
tests read it to decide what to check. A kernel missing here does not exist.
"""
from __future__ import annotations

import numpy as np

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
F16 = np.dtype(np.float16)


class _NamedDtype(str):
    """A dtype NumPy lacks, named as the array libraries name it (str(d) and d.name alike)."""

    @property
    def name(self) -> str:
        return str(self)


#: bfloat16: device arrays only (torch.bfloat16, or CuPy with ml_dtypes); never equal to a
#: NumPy dtype, so no host kernel can be picked for it.
BF16 = _NamedDtype("bfloat16")

#: CPU backends, fastest first (the order dispatch tries them in).
CPU_BACKENDS = ("cpp", "numba", "numpy")
#: Device backends, fastest first.
DEVICE_BACKENDS = ("cuda", "numba-cuda")
ALL_BACKENDS = CPU_BACKENDS + DEVICE_BACKENDS

#: Optimizer update rules (one fused kernel each; AdamW shares Adam's kernel).
OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw", "nadam")

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
#: nm, ng: NAdam's numerator nm*m + ng*g (default beta1, 1-beta1; PyTorch's momentum-decay
#: schedule otherwise). eps_out, lr_out: RMSProp's m <- gamma m + lr g / (sqrt(v + eps) + eps_out),
#: theta <- theta - lr_out m (defaults 0 and 1 give the source document's rule; PyTorch's is
#: eps = 0, eps_out = eps, lr = 1, lr_out = eta).
OPTIM_SCALARS = ("lr", "wd", "gscale", "momentum", "rho", "beta1", "beta2", "eps",
                 "alpha", "c", "decay", "nm", "ng", "eps_out", "lr_out")

#: Rule -> the kernel that runs it (AdamW is Adam with a decay factor).
OPTIM_KERNEL = {name: ("adam" if name == "adamw" else name) for name in OPTIMIZERS}

# -- The norm kernels' calling convention (csrc/common/norm_math.h repeats these numbers) ------

#: Elements per block: every array is cut into blocks of this size from its first element.
NORM_BLOCK = 1 << 14
#: Accumulators per block: element i of a block goes to lane i mod NORM_LANES, each lane sums
#: sequentially, and lanes are folded in halves (lane j += lane j + L/2, ...), a fixed tree.
NORM_LANES = 16

from collections import namedtuple  # noqa: E402

#: The float64 scalars handed to an optimizer kernel (see csrc/common/optim_math.h).
Scalars = namedtuple("Scalars", OPTIM_SCALARS)

# -- A guarded step on the device: the norm pass decides clip/skip/count without the host -------

#: Steps the host may issue before it must read the device's step count: the kernels take one
#: row of scalars per step count still possible (t_lo .. t_lo + unread steps).
GUARD_WINDOW = 16
#: The control array: float64, GUARD_WINDOW + 1 rows of GUARD_WIDTH. Row 0 is live (the step
#: count and this step's decisions, which the update kernel reads); row s >= 1 keeps the
#: decisions of the step issued into slot s, until the host reads them.
GUARD_WIDTH = 8
(G_APPLIED, G_NORM, G_SCALE, G_SKIPPED, G_CLIPPED, G_ROW, G_EXP, G_MAXABS) = range(GUARD_WIDTH)
#: In a slot row, column G_EXP holds instead the step's issue number (1, 2, ...). The same row
#: also goes to a host-mapped mirror, when there is one, with the issue number written last: the
#: host can then read a finished step's decisions without waiting for anything.
G_SEQ = G_EXP
