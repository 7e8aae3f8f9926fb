"""The one module that imports fastopt's compiled extensions: ``fastopt._C`` (C++ CPU kernels)
and ``fastopt._C_cuda`` (CUDA kernels). Every other module reaches them through ``cpu()`` and
``cuda()`` -- the backends ``fastopt._cpp`` and ``fastopt._cuda``, and the fast paths of
validation, benchmarking and ``fastopt info``.

A missing extension is remembered with the reason until ``refresh()``, which
``fastopt.refresh_backends()`` calls after an install in a running process.
"""
from __future__ import annotations

import importlib

_loaded: dict = {}  # "cpu"/"cuda" -> (module or None, reason or None)


def _load(which: str):
    if which not in _loaded:
        try:
            if which == "cpu":
                from . import _C as ext
            else:
                from . import _C_cuda as ext
            _loaded[which] = (ext, None)
        except ImportError as e:
            name = "fastopt._C" if which == "cpu" else "fastopt._C_cuda"
            _loaded[which] = (None, f"the extension {name} is not built ({e})")
    return _loaded[which]


def cpu():
    """fastopt._C, or None when it is not built."""
    return _load("cpu")[0]


def cuda():
    """fastopt._C_cuda, or None when it is not built."""
    return _load("cuda")[0]


def missing(which: str) -> str | None:
    """None when extension ``which`` ("cpu" or "cuda") imports, else why it does not."""
    return _load(which)[1]


def refresh() -> None:
    """Forget what failed to import, so that the next call looks again (after an install)."""
    for which in [w for w, (mod, _) in _loaded.items() if mod is None]:
        del _loaded[which]
    importlib.invalidate_caches()
