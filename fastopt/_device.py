"""Device (GPU) arrays from any library, seen one way: address, shape, dtype, device, stream.

CuPy arrays, PyTorch CUDA tensors, Numba device arrays (real or simulated) and anything else
with ``__cuda_array_interface__`` are read here and nowhere else. Nothing imports CuPy,
PyTorch or Numba unless an array of theirs was passed (or a new device array is asked for).
"""
from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np

from . import _native
from ._core import BF16, F16, F32, F64

#: Device dtypes fastopt knows (the registry says which backend runs which).
DEVICE_DTYPES = (F32, F64, F16, BF16)


class Info(NamedTuple):
    """What validation and the kernels need to know about one device array."""
    ptr: int
    shape: tuple
    size: int
    dtype: object  # a NumPy dtype, or _registry.BF16
    contiguous: bool
    readonly: bool
    device: int  # CUDA ordinal; -1 when the library does not say (generic interface)


def _lib(a) -> str:
    mod = type(a).__module__
    if mod.startswith("cupy"):
        return "cupy"
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("numba.cuda.simulator"):
        return "sim"
    return "cai"


def is_device_array(a) -> bool:
    """True for GPU arrays: CuPy, PyTorch CUDA tensors, Numba device arrays (also simulated)."""
    if isinstance(a, np.ndarray):
        return False
    lib = _lib(a)
    if lib == "torch":  # bfloat16 tensors raise TypeError from __cuda_array_interface__
        return bool(getattr(a, "is_cuda", False))
    if lib == "sim":  # the Numba CUDA simulator's arrays have no __cuda_array_interface__
        return hasattr(a, "copy_to_host")
    return hasattr(a, "__cuda_array_interface__")


_DTYPES: dict = {}  # library dtype object -> NumPy dtype or BF16 (read on every step)


def _dtype(dtype):
    """NumPy dtype, or BF16, from a library's dtype object; None if fastopt knows no such."""
    try:
        return _DTYPES[dtype]
    except KeyError:
        pass
    except TypeError:  # unhashable
        return None
    name = (getattr(dtype, "name", None) or str(dtype)).replace("torch.", "")
    if name == "bfloat16":
        out = BF16
    else:
        try:
            out = np.dtype(name)
        except TypeError:
            out = None
    _DTYPES[dtype] = out
    return out


def dtype(a):
    """The dtype of a device array as a NumPy dtype (or BF16)."""
    return _dtype(a.dtype) if _lib(a) in ("cupy", "torch", "sim") else describe(a).dtype


def like(ref: list, other: list) -> bool:
    """A quick yes for ``other`` matching ``ref`` item by item (same library, shape, dtype,
    device, C-contiguous); False means: let the detailed checks decide and explain."""
    if len(ref) != len(other) or not ref:
        return len(ref) == len(other)
    t, lib = type(ref[0]), _lib(ref[0])
    if lib == "torch":  # dtypes are singletons; get_device() is the cheapest device read
        for a, b in zip(ref, other):
            if (type(b) is not t or b.dtype is not a.dtype or b.shape != a.shape
                    or not b.is_contiguous() or b.get_device() != a.get_device()):
                return False
        return True
    if lib == "cupy":
        for a, b in zip(ref, other):
            if (type(b) is not t or b.dtype != a.dtype or b.shape != a.shape
                    or not b.flags.c_contiguous or b.data.device_id != a.data.device_id):
                return False
        return True
    return False


def _c_contiguous(shape, strides, itemsize) -> bool:
    expected = itemsize
    for n, s in zip(reversed(shape), reversed(strides)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def describe(a) -> Info:
    """Info of one device array (is_device_array(a) must hold)."""
    lib = _lib(a)
    if lib == "cupy":
        return Info(a.data.ptr, tuple(a.shape), a.size, _dtype(a.dtype), a.flags.c_contiguous,
                    False, a.device.id)
    if lib == "torch":
        return Info(a.data_ptr(), tuple(a.shape), a.numel(), _dtype(a.dtype), a.is_contiguous(),
                    False, a.device.index if a.device.index is not None else -1)
    if lib == "sim":
        host = a._ary  # the simulator keeps the data in a NumPy array
        return Info(host.__array_interface__["data"][0], tuple(a.shape), a.size, a.dtype,
                    a.is_c_contiguous(), False, 0)
    cai = a.__cuda_array_interface__
    shape = tuple(cai["shape"])
    dtype = _dtype(np.dtype(cai["typestr"]))
    strides = cai.get("strides")
    size = int(np.prod(shape, dtype=np.int64))
    contiguous = strides is None or _c_contiguous(shape, strides, np.dtype(cai["typestr"]).itemsize)
    ptr, readonly = cai["data"]
    return Info(int(ptr), shape, size, dtype, contiguous, bool(readonly), _pointer_device(ptr))


def _pointer_device(ptr) -> int:
    ext = _native.cuda()
    return ext.pointer_device(int(ptr)) if ext is not None and ptr else -1


def pointers(arrays) -> list[int]:
    """Device addresses of a validated list (one library), fast for the common libraries."""
    if not arrays:
        return []
    lib = _lib(arrays[0])
    if lib == "cupy":
        return [a.data.ptr for a in arrays]
    if lib == "torch":
        return [a.data_ptr() for a in arrays]
    return [describe(a).ptr for a in arrays]


def sizes(arrays) -> list[int]:
    if arrays and _lib(arrays[0]) == "torch":
        return [a.numel() for a in arrays]
    return [int(a.size) for a in arrays]


def nbytes(a) -> int:
    if _lib(a) in ("cupy", "torch", "sim"):
        return a.nbytes
    i = describe(a)
    return i.size * (2 if i.dtype is BF16 else i.dtype.itemsize)


def stream(a) -> int:
    """The stream to run on, as a cudaStream_t integer: the producer's current stream (CuPy's,
    PyTorch's), or the one the interface names (1 = the legacy default stream), else 0."""
    lib = _lib(a)
    if lib == "cupy":
        import cupy
        return cupy.cuda.get_current_stream().ptr
    if lib == "torch":
        import torch
        return torch.cuda.current_stream(a.device).cuda_stream
    if lib == "sim":
        return 0
    s = a.__cuda_array_interface__.get("stream")
    return int(s) if s else 0


def current_device() -> int:
    if "cupy" in sys.modules:
        return sys.modules["cupy"].cuda.Device().id
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        return sys.modules["torch"].cuda.current_device()
    return 0


# -- new device arrays -------------------------------------------------------------------------

def full_like(a, value, dtype) -> object:
    """A new C-contiguous device array shaped like ``a``, of ``dtype``, filled with ``value``,
    from the same library and on the same device."""
    lib = _lib(a)
    shape = tuple(a.shape)
    if lib == "cupy":
        import cupy
        with cupy.cuda.Device(a.device.id):
            return cupy.full(shape, value, dtype=dtype)
    if lib == "torch":
        import torch
        return torch.full(shape, value, dtype=getattr(torch, str(dtype)), device=a.device)
    if lib == "sim" or hasattr(a, "copy_to_host"):  # Numba device arrays, real or simulated
        from numba import cuda
        return cuda.to_device(np.full(shape, value, dtype=dtype))
    return empty(shape, dtype, fill=value)


def from_host(like, src: np.ndarray) -> object:
    """A new device array holding a copy of the NumPy array ``src``, from the library of the
    device array ``like`` and on its device."""
    lib = _lib(like)
    src = np.array(src, order="C")  # a copy; keeps a 0-d shape (ascontiguousarray does not)
    if lib == "cupy":
        import cupy
        with cupy.cuda.Device(like.device.id):
            return cupy.asarray(src)
    if lib == "torch":
        import torch
        return torch.from_numpy(src).to(like.device)
    if lib == "sim" or hasattr(like, "copy_to_host"):
        from numba import cuda
        return cuda.to_device(src)
    out = empty(src.shape, src.dtype)
    copy_from_host(out, src)
    return out


def empty(shape, dtype, *, fill=None, prefer=("cupy", "torch", "numba")) -> object:
    """A new device array on the current device: CuPy if installed, else PyTorch, else Numba."""
    for lib in prefer:
        if lib == "cupy" and _importable("cupy"):
            import cupy
            return cupy.empty(shape, dtype) if fill is None else cupy.full(shape, fill, dtype)
        if lib == "torch" and _importable("torch"):
            import torch
            if torch.cuda.is_available():
                t = getattr(torch, np.dtype(dtype).name)
                return (torch.empty(shape, dtype=t, device="cuda") if fill is None
                        else torch.full(shape, fill, dtype=t, device="cuda"))
        if lib == "numba" and _importable("numba"):
            from numba import cuda
            if fill is None:
                return cuda.device_array(shape, dtype)
            return cuda.to_device(np.full(shape, fill, dtype))
    raise RuntimeError("a new device array needs CuPy, PyTorch with CUDA, or numba-cuda")


def _importable(name) -> bool:
    if name in sys.modules:
        return True
    import importlib.util
    return importlib.util.find_spec(name) is not None


class Mapped(NamedTuple):
    """Pinned host memory that kernels write directly (with unified addressing, as on every
    64-bit CUDA system, a pinned allocation's device address is its host address)."""
    host: np.ndarray  # the NumPy view the host reads
    address: int  # what the CUDA kernels take
    device: object  # what numba-cuda kernels take
    owner: object  # keeps the allocation alive


def mapped(like, shape) -> Mapped | None:
    """Zeroed float64 host memory of ``shape`` that kernels on ``like``'s device can write, from
    ``like``'s library; None where that library offers none."""
    lib = _lib(like)
    n = int(np.prod(shape))
    if lib == "cupy":
        import cupy
        mem = cupy.cuda.alloc_pinned_memory(n * 8)
        host = np.frombuffer(mem, np.float64, n).reshape(shape)
        host[...] = 0.0
        return Mapped(host, int(mem.ptr), None, mem)
    if lib == "torch":
        import torch
        t = torch.zeros(tuple(shape), dtype=torch.float64, pin_memory=True)
        return Mapped(t.numpy(), int(t.data_ptr()), None, t)
    if lib == "sim" or hasattr(like, "copy_to_host"):
        from numba import cuda
        a = cuda.mapped_array(tuple(shape), np.float64)
        host = a._ary if lib == "sim" else a
        host[...] = 0.0
        return Mapped(host, int(host.ctypes.data), a, a)
    return None


def element(a, i, j):
    """a[i, j] of a 2-d device array as a 0-d device array (a view; nothing is copied)."""
    if _lib(a) in ("cupy", "torch"):
        return a[i, j]
    return a[i, j:j + 1].reshape(())


def synchronize(a) -> None:
    """Wait for all work queued on the device of array ``a``, whatever the stream."""
    lib = _lib(a)
    if lib == "cupy":
        a.device.synchronize()
    elif lib == "torch":
        import torch
        torch.cuda.synchronize(a.device)
    elif lib != "sim":
        from numba import cuda
        cuda.synchronize()


def to_host(a) -> np.ndarray:
    """A NumPy copy of a device array (float16/32/64)."""
    lib = _lib(a)
    if lib == "cupy":
        return a.get()
    if lib == "torch":
        return a.detach().cpu().numpy()
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    from numba import cuda
    return cuda.as_cuda_array(a).copy_to_host()


def copy_from_host(dst, src: np.ndarray) -> None:
    """dst[...] = src for a device array ``dst`` and a NumPy array of its shape and dtype."""
    lib = _lib(dst)
    src = np.ascontiguousarray(src)
    if lib == "cupy":
        dst.set(src)
    elif lib == "torch":
        import torch
        dst.copy_(torch.from_numpy(src))
    elif hasattr(dst, "copy_to_device"):
        dst.copy_to_device(src)
    else:
        from numba import cuda
        cuda.as_cuda_array(dst).copy_to_device(src)
