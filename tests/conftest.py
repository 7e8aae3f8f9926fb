import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from fastopt import _dispatch, _registry

settings.register_profile("fastopt", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fastopt"))

#: Tolerances, stated once per dtype, for backends compared against the NumPy reference.
TOL = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-14)}


def cpu_cases(kernel):
    """(backend, dtype) pairs the registry lists for ``kernel`` on the CPU, as pytest params;
    a backend that cannot run here is skipped with the dispatcher's reason."""
    out = []
    for backend, dtypes in _registry.KERNELS[kernel].items():
        if backend not in _registry.CPU_BACKENDS:
            continue
        reason = _dispatch.unavailable_reason(backend)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        out += [pytest.param(backend, dt, marks=marks, id=f"{backend}-{dt.name}") for dt in dtypes]
    return out


def snapshot(arrays):
    return [a.tobytes() for a in arrays]


def fastopt_env(**extra) -> dict:
    """Environment for a subprocess that must import the same fastopt as this process (the
    installed one in CI, not the source tree of the clone without its extension)."""
    from pathlib import Path

    import fastopt

    parent = str(Path(fastopt.__file__).resolve().parents[1])
    return {**os.environ, **extra,
            "PYTHONPATH": os.pathsep.join([parent, os.environ.get("PYTHONPATH", "")])}


#: A working directory for such subprocesses: the folder that holds the imported fastopt.
def fastopt_parent():
    from pathlib import Path

    import fastopt

    return Path(fastopt.__file__).resolve().parents[1]


# tests/test_cuda_sim.py runs only inside test_cuda.py::test_simulator's subprocess (the Numba
# CUDA simulator must be switched on before numba.cuda is imported); elsewhere it is not
# collected at all, rather than reported as skipped.
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["test_cuda_sim.py"]
