"""The ``cuda`` backend: thin adapters over the CUDA extension fastopt._C_cuda.

Every function has the signature of its twin in ``fastopt._reference`` and takes device arrays
(validated already): their addresses, sizes, device and the producer's current stream go to
the extension; nothing is copied and nothing waits, except ``norm_partials``, whose caller asked
for numbers on the host.
"""
from __future__ import annotations

import numpy as np

from . import _device, _native
from ._registry import OPTIM_KERNEL
from ._validate import check_device_optim_args

_NO_SHIFT = np.zeros(0)  # the kernel reads an empty shift as "no shift"


_ext = _native.cuda


def unavailable_reason() -> str | None:
    """None when the extension is built and a CUDA device is visible, else why not."""
    ext = _ext()
    if ext is None:
        return (f"{_native.missing('cuda')}; install fastopt where nvcc works: "
                "FASTOPT_CUDA=1 pip install --force-reinstall .")
    count, error = ext.device_count()
    if count == 0:
        return f"no CUDA device ({error})"
    return None


def _where(arrays):
    """(device, dtype name, stream) of a validated, non-empty list."""
    info = _device.describe(arrays[0])
    device = info.device if info.device >= 0 else _device.current_device()
    return device, str(info.dtype), _device.stream(arrays[0])


def optim_update(rule, params, grads, states, k):
    check_device_optim_args(rule, params, grads, states, k)  # the kernels take params' sizes
    if not params:
        return
    device, dtype, stream = _where(params)
    _ext().optim_update(device, OPTIM_KERNEL[rule], dtype, _device.pointers(params), _device.pointers(grads),
                        [_device.pointers(s) for s in states], _device.sizes(params), list(k),
                        stream)


def guarded_step(call):
    (rule, params, grads, states, rows, t_lo, limit, skip_nonfinite, ctl, slot, seq,
     mirror) = call
    for k in rows:  # the kernels take params' sizes for every list
        check_device_optim_args(rule, params, grads, states, k)
    if not params:
        return
    device, dtype, stream = _where(params)
    _ext().guarded_step(device, OPTIM_KERNEL[rule], dtype, _device.pointers(params), _device.pointers(grads),
                        [_device.pointers(s) for s in states], _device.sizes(params),
                        [list(k) for k in rows], int(t_lo), float(limit), bool(skip_nonfinite),
                        _device.pointers([ctl])[0], int(slot), float(seq),
                        0 if mirror is None else mirror.address, stream)


def guarded_norm(arrays, ctl):
    if not arrays:
        return
    device, dtype, stream = _where(arrays)
    _ext().guarded_norm(device, dtype, _device.pointers(arrays), _device.sizes(arrays),
                        _device.pointers([ctl])[0], stream)


def norm_partials(arrays, scale, want_max):
    if not arrays:
        return np.zeros(0), np.zeros(0)
    device, dtype, stream = _where(arrays)
    return _ext().norm_partials(device, dtype, _device.pointers(arrays), _device.sizes(arrays),
                                float(scale), bool(want_max), stream)


def norm_scale(arrays, factor):
    if not arrays:
        return
    device, dtype, stream = _where(arrays)
    _ext().norm_scale(device, dtype, _device.pointers(arrays), _device.sizes(arrays),
                      float(factor), stream)


def halton(out, start, tab, ndig, workers):
    """Rows into the (n, d) float64 device array ``out``; ``workers`` has no meaning here."""
    n, d = out.shape
    device, _, stream = _where([out])
    shift = tab.shift if tab.shift is not None else _NO_SHIFT
    _ext().halton(device, _device.pointers([out])[0], n, d, int(start), tab.bases,
                  np.ascontiguousarray(ndig, dtype=np.int64), tab.terms, tab.offsets, shift,
                  stream)
