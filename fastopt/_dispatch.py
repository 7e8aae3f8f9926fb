"""Picks the backend for a kernel call. Public functions never branch on backends themselves.

Order of choice: an explicit ``backend=`` argument, else ``$FASTOPT_BACKEND``, else the fastest
backend in the registry that is available for the arrays' device and dtype.
"""
from __future__ import annotations

import importlib
import os

from . import _native, _registry

#: backend name -> None (available) or why not; probed once, until refresh()
_probed: dict[str, str | None] = {}


def unavailable_reason(name: str) -> str | None:
    """None when backend ``name`` can run here, else a sentence saying why it cannot.

    Probed from its ``_registry.Backend`` record: each package it requires must import, then
    its module, then the module's own ``unavailable_reason()`` (if any) must return None.
    The answer is kept until ``refresh()``: a package installed later in the same process is
    seen after ``fastopt.refresh_backends()``."""
    if name not in _probed:
        _probed[name] = _probe(name)
    return _probed[name]


def _probe(name: str) -> str | None:
    b = _registry.BACKEND.get(name)
    if b is None:
        return f"unknown backend {name!r}; known: {', '.join(_registry.ALL_BACKENDS)}"
    for package, install in b.requires:
        try:  # importing it, not just finding it: a broken install is not an available one
            importlib.import_module(package)
        except ImportError:
            return f"{package} is not installed ({install})"
        except Exception as e:  # noqa: BLE001 - any failure to import means: not available
            return f"{package} is installed but cannot be imported ({type(e).__name__}: {e})"
    try:
        mod = importlib.import_module(b.module)
    except ImportError as e:
        return f"the {name} backend could not be loaded ({e})"
    probe = getattr(mod, "unavailable_reason", None)
    return probe() if probe is not None else None


def refresh() -> None:
    """Probe every backend again on next use (after installing numba or a compiler, say)."""
    _probed.clear()
    _native.refresh()


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


def module(backend: str):
    """The module holding ``backend``'s kernels (a ``_registry.BackendModule``)."""
    mod = _modules.get(backend)
    if mod is None:
        mod = _modules[backend] = importlib.import_module(_registry.BACKEND[backend].module)
    return mod


_modules: dict = {}
