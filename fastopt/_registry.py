"""Which backends exist, and which kernel each runs for which dtypes: declared once, in
``BACKENDS``.

Everything else reads this list: ``_dispatch`` picks a backend from it and probes its
availability, ``fastopt info`` and ``fastopt bench`` list it, ``fastopt.torch``, ``halton`` and
``search`` check ``backend=`` against it, and the tests read ``KERNELS`` (derived from it) to
decide what to check. A kernel missing here does not exist.

A backend is a module implementing ``BackendModule`` for the kernels it declares (the contract
``tests/test_backends.py`` holds every backend to), plus an optional ``unavailable_reason()``
for what only the running machine can tell (a GPU, say).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

import numpy as np

from ._core import (BF16, F16, F32, F64, G_APPLIED, G_CLIPPED, G_EXP,  # noqa: F401
                    G_MAXABS, G_NORM, G_ROW, G_SCALE, G_SEQ, G_SKIPPED, GUARD_WIDTH,
                    GUARD_WINDOW, NORM_BLOCK, NORM_LANES, OPTIM_SCALARS, Scalars, _NamedDtype)
from ._rules import RULES

#: Optimizer update rules (fastopt/_rules declares each one).
OPTIMIZERS = tuple(RULES)


class BackendModule(Protocol):
    """What a backend module provides: the function ``ENTRY[kernel]`` for each kernel its
    ``Backend`` record declares, with these parameters. Arrays arrive validated by the public
    layer; each function still checks the counts, sizes and dtypes it passes to native code."""

    def optim_update(self, rule, params, grads, states, k):
        """Rule ``rule`` in place on every (param, grad, *states) triple; ``k``: Scalars."""

    def compact_update(self, rule, params, grads, masters, states, absmax, k, sr):
        """Rule ``rule`` on compact storage (16-bit params, masters, bf16 or 8-bit state,
        stochastic rounding): ``fastopt._precision.compact_update``'s contract."""

    def norm_partials(self, arrays, scale, want_max):
        """(per-array float64 sums of squares of scale * x in the fixed block/lane order,
        per-array max |x| or None)."""

    def norm_scale(self, arrays, factor):
        """x <- factor x in place."""

    def guarded_step(self, call):
        """An optimizer step whose norm, clip, skip and count stay on the device (GUARD_*):
        ``call`` is a ``_core.GuardedCall``."""

    def guarded_norm(self, arrays, ctl):
        """The norm into ctl[0, G_NORM] on the device, nothing read back."""

    def halton(self, out, start, tab, ndig, workers):
        """Rows start .. start + len(out) of the Halton tables ``tab`` into ``out``."""


#: kernel family -> the BackendModule function that runs it ("optim.<rule>" -> optim_update)
ENTRY = {"optim": "optim_update", "compact": "compact_update", "optim.guarded_step": "guarded_step",
         "norm.global_norm": "norm_partials", "norm.scale": "norm_scale",
         "norm.guarded": "guarded_norm", "halton.halton": "halton"}


def entry(kernel: str) -> str:
    """The BackendModule function that runs ``kernel``."""
    return ENTRY.get(kernel) or ENTRY[kernel.split(".")[0]]


@dataclass(frozen=True)
class Backend:
    """One backend: its name, whether it takes device (GPU) arrays, the module implementing
    it, the Python packages it needs (probed by importing them, with how to install each), and
    kernel -> the storage dtypes it runs."""
    name: str
    device: bool
    module: str
    kernels: Mapping[str, tuple]
    requires: tuple[tuple[str, str], ...] = ()  # (importable name, how to install it)
    doc: str = ""


_HOST = (F32, F64)
#: Compact steps (fastopt/_precision.py) and the norm also read 16-bit host arrays.
_HOST16 = (F32, F16, BF16)
_NORM_HOST = (F32, F64, F16, BF16)
#: On the device, 16-bit storage computes in float32 (optimizer state in float32 too).
_CUDA = (F32, F64, F16, BF16)


def _optim(dtypes):
    return {f"optim.{rule}": dtypes for rule in RULES}


def _compact():
    return {f"compact.{rule}": _HOST16 for rule in RULES}


#: Every backend, fastest first within the host and the device ones (dispatch's order).
BACKENDS: tuple[Backend, ...] = (
    Backend("cpp", False, "fastopt._cpp",
            {**_optim(_HOST), **_compact(), "norm.global_norm": _NORM_HOST,
             "norm.scale": _HOST, "halton.halton": (F64,)},
            doc="C++ kernels (OpenMP, SIMD chosen at run time), the extension fastopt._C"),
    Backend("numba", False, "fastopt._numba",
            {**_optim(_HOST), **_compact(), "norm.global_norm": _NORM_HOST,
             "norm.scale": _HOST, "halton.halton": (F64,)},
            requires=(("numba", "pip install numba"),),
            doc="the same kernels JIT-compiled by Numba, for machines without a compiler"),
    Backend("numpy", False, "fastopt._reference",
            {**_optim(_HOST), **_compact(), "norm.global_norm": _NORM_HOST,
             "norm.scale": _HOST,
             # the guarded step's contract, on host arrays: what the device backends match
             "optim.guarded_step": _HOST, "norm.guarded": _HOST, "halton.halton": (F64,)},
            doc="the NumPy reference every other backend is tested against"),
    Backend("cuda", True, "fastopt._cuda",
            {**_optim(_CUDA), "norm.global_norm": _CUDA, "norm.scale": _CUDA,
             "optim.guarded_step": _CUDA, "norm.guarded": _CUDA, "halton.halton": (F64,)},
            doc="CUDA kernels, the extension fastopt._C_cuda"),
    Backend("numba-cuda", True, "fastopt._numba_cuda",
            {**_optim(_HOST), "norm.global_norm": _HOST, "norm.scale": _HOST,
             "optim.guarded_step": _HOST, "norm.guarded": _HOST, "halton.halton": (F64,)},
            doc="numba.cuda kernels, for device arrays when the CUDA extension is absent"),
)
BACKEND = {b.name: b for b in BACKENDS}

#: Host (CPU) backends, fastest first (the order dispatch tries them in).
CPU_BACKENDS = tuple(b.name for b in BACKENDS if not b.device)
#: Device backends, fastest first.
DEVICE_BACKENDS = tuple(b.name for b in BACKENDS if b.device)
ALL_BACKENDS = CPU_BACKENDS + DEVICE_BACKENDS

#: kernel name -> {backend: supported dtypes}: the capability table (derived from BACKENDS)
KERNELS: dict[str, dict[str, tuple[np.dtype, ...]]] = {
    kernel: {b.name: b.kernels[kernel] for b in BACKENDS if kernel in b.kernels}
    for kernel in dict.fromkeys(k for b in BACKENDS for k in b.kernels)}


def backends_for(kernel: str) -> dict[str, tuple[np.dtype, ...]]:
    """The backends that implement ``kernel`` and their dtypes (KeyError if unknown)."""
    return KERNELS[kernel]


#: State buffers of each rule, in kernel argument order (fastopt/_rules).
OPTIM_STATE = {name: r.state_names for name, r in RULES.items()}
#: Rule -> the element-math kernel that runs it (AdamW is Adam with a decay factor).
OPTIM_KERNEL = {name: r.kernel for name, r in RULES.items()}
