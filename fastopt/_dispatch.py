"""Picks the backend for a kernel call. Public functions never branch on backends themselves.

Order of choice: an explicit ``backend=`` argument, else ``$FASTOPT_BACKEND``, else the fastest
backend in the registry that is available for the arrays' device and dtype.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os

from . import _registry

#: backend name -> module that implements its kernels (imported lazily, on first use)
_MODULES = {
    "cpp": "fastopt._cpp",
    "numba": "fastopt._numba",
    "numpy": "fastopt._reference",
    "cuda": "fastopt._cuda",
    "numba-cuda": "fastopt._numba_cuda",
}


@functools.lru_cache(maxsize=None)
def unavailable_reason(name: str) -> str | None:
    """None when backend ``name`` can run here, else a sentence saying why it cannot."""
    if name == "numpy":
        return None
    if name == "cpp":
        try:
            importlib.import_module("fastopt._C")
        except ImportError as e:
            return (f"the C++ extension fastopt._C is not built ({e}); reinstall fastopt "
                    "where a C++ compiler works: pip install --force-reinstall .")
        return None
    if name == "numba":
        try:  # importing it, not just finding it: a broken install is not an available one
            importlib.import_module("numba")
        except ImportError:
            return "numba is not installed (pip install numba)"
        except Exception as e:  # noqa: BLE001 - any failure to import means: not available
            return f"numba is installed but cannot be imported ({type(e).__name__}: {e})"
        return None
    if name in ("cuda", "numba-cuda"):
        try:
            mod = importlib.import_module(_MODULES[name])
        except ImportError as e:
            return f"the {name} backend could not be loaded ({e})"
        return mod.unavailable_reason()
    return f"unknown backend {name!r}; known: {', '.join(_registry.ALL_BACKENDS)}"


def available_backends() -> list[str]:
    """Names of the backends that can run here, fastest first."""
    return [b for b in _registry.ALL_BACKENDS if unavailable_reason(b) is None]


def _reasons(names) -> str:
    return "; ".join(f"{b}: {unavailable_reason(b) or 'available'}" for b in names)


def resolve(kernel: str, backend: str | None = None, *, device: bool = False, dtype=None) -> str:
    """The backend that will run ``kernel``; a ValueError saying what is available if none can."""
    table = _registry.backends_for(kernel)
    wanted = backend if backend is not None else os.environ.get("FASTOPT_BACKEND") or None
    pool = _registry.DEVICE_BACKENDS if device else _registry.CPU_BACKENDS
    if wanted is not None:
        if wanted not in _registry.ALL_BACKENDS:
            raise ValueError(f"backend={wanted!r} is unknown; known backends: "
                             f"{', '.join(_registry.ALL_BACKENDS)}")
        if wanted not in pool:
            where = "device (GPU)" if device else "host (CPU)"
            raise ValueError(f"backend={wanted!r} cannot run on {where} arrays; "
                             f"use one of {', '.join(pool)}")
        if wanted not in table:
            raise ValueError(f"backend={wanted!r} does not implement {kernel}; it exists in "
                             f"{', '.join(table)}")
        if dtype is not None and dtype not in table[wanted]:
            raise TypeError(f"backend={wanted!r} has no {kernel} kernel for dtype {dtype}")
        reason = unavailable_reason(wanted)
        if reason is not None:
            raise ValueError(f"backend={wanted!r} is not available: {reason}. "
                             f"Available: {', '.join(available_backends())}")
        return wanted
    for name in pool:
        if name in table and (dtype is None or dtype in table[name]) \
                and unavailable_reason(name) is None:
            return name
    raise ValueError(f"no available backend implements {kernel}"
                     f"{'' if dtype is None else f' for dtype {dtype}'}: {_reasons(pool)}")


@functools.lru_cache(maxsize=None)
def module(backend: str):
    """The module holding ``backend``'s kernels (each exposes the same functions)."""
    return importlib.import_module(_MODULES[backend])
