"""What the numba-cuda kernels share: taking any device array, and the stream to run on."""
from __future__ import annotations

from numba import config, cuda

from .. import _device

#: True under the Numba CUDA simulator (kernels then run as Python, on NumPy scalars).
SIMULATOR = bool(config.ENABLE_CUDASIM)

THREADS = 256


def as_numba(a):
    """A Numba view of any device array (no copy)."""
    if SIMULATOR or hasattr(a, "copy_to_host"):
        return a
    return cuda.as_cuda_array(a)


def stream_of(a):
    """The producer's current stream as a Numba stream (the default stream when it is 0)."""
    if SIMULATOR:
        return 0
    handle = _device.stream(a)
    return cuda.external_stream(handle) if handle else cuda.default_stream()


def blocks(n, threads=THREADS):
    return max(1, (n + threads - 1) // threads)


if SIMULATOR:  # NumPy float64 arithmetic: exact IEEE operations, nothing fused
    import numpy as np

    def dmul(a, b):
        with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN as on the device
            return a * b

    def dadd(a, b):
        with np.errstate(over="ignore", invalid="ignore"):
            return a + b
else:  # the .rn intrinsics are never contracted into a fused multiply-add
    from numba.cuda import libdevice

    dmul, dadd = libdevice.dmul_rn, libdevice.dadd_rn
