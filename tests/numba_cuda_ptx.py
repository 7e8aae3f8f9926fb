"""Compile every numba-cuda optimizer kernel -- the plain update and the guarded one, each
rule, float32 and float64 -- to PTX for sm_80 with the real numba.cuda compiler (NVVM), no GPU
needed. The simulator runs these kernels as Python; this checks that the code the GPU would
run compiles. Run by tests/test_cuda.py::test_numba_cuda_kernels_compile_to_ptx in a process
of its own; prints one line per kernel, then "compiled N".
"""
import types

import numba
import numba.cuda.api
import numba.cuda.dispatcher
import numpy as np
from numba import cuda
from numba.core import types as nt

from fastopt import _core, _rules
from fastopt._numba.elements import with_globals
from fastopt._numba_cuda import guard, optim


def _device_cc():  # compile for sm_80 without a device to ask
    return types.SimpleNamespace(compute_capability=(8, 0))


numba.cuda.api.get_current_device = _device_cc
numba.cuda.dispatcher.get_current_device = _device_cc

count = 0
for dtype in (np.float32, np.float64):
    arr = numba.from_dtype(dtype)[::1]
    coef = numba.typeof(_core.coef(_core.make_scalars(0.1), dtype))
    rows = nt.UniTuple(coef, _core.GUARD_WINDOW)
    ctl = nt.float64[:, ::1]
    for name in dict.fromkeys(r.kernel for r in _rules.RULES.values()):
        env = optim.element_env(name)
        for fn, sig in ((optim._update, (arr, arr, arr, arr, coef)),
                        (guard._guarded_update, (arr, arr, arr, arr, rows, arr, ctl))):
            ptx, _ = cuda.compile_ptx(with_globals(fn, env), sig, cc=(8, 0))
            assert ".entry" in ptx or ".visible .entry" in ptx or ".func" in ptx
            print(f"{dtype.__name__} {name} {fn.__name__}: {len(ptx)} bytes of PTX")
            count += 1
print(f"compiled {count}")
