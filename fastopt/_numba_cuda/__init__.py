"""The ``numba-cuda`` backend: numba.cuda twins of the CUDA kernels, for when the CUDA
extension is absent. Its tests run on the Numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).

Imported lazily (numba.cuda takes a while); every function has the signature of its twin in
``fastopt._reference`` and takes device arrays. One launch per array: this is the fallback.
"""
from __future__ import annotations


def unavailable_reason() -> str | None:
    """None when numba-cuda can launch kernels here (a GPU, or the simulator), else why not."""
    try:
        from numba import cuda
    except ImportError as e:
        return f"numba-cuda is not installed ({e}); pip install numba-cuda"
    except Exception as e:  # noqa: BLE001 - e.g. NUMBA_NUM_THREADS=0 fails numba's import
        return f"numba cannot be imported ({type(e).__name__}: {e})"
    try:
        ok = cuda.is_available()
    except Exception as e:  # noqa: BLE001 - a broken driver install says so in its own words
        return f"numba-cuda cannot use the GPU ({type(e).__name__}: {e})"
    if not ok:
        return "no CUDA GPU visible to numba-cuda (numba.cuda.is_available() is False)"
    return None


def optim_update(rule, params, grads, states, k):
    from .._validate import check_device_optim_args
    from .optim import optim_update as run
    check_device_optim_args(rule, params, grads, states, k)  # the same contract as cuda's
    run(rule, params, grads, states, k)


def guarded_step(call):
    from .._validate import check_device_optim_args
    from .guard import guarded_step as run
    for k in call.rows:
        check_device_optim_args(call.rule, call.params, call.grads, call.states, k)
    run(call)


def guarded_norm(arrays, ctl):
    from .guard import guarded_norm as run
    run(arrays, ctl)


def norm_partials(arrays, scale, want_max):
    from .norm import norm_partials as run
    return run(arrays, scale, want_max)


def norm_scale(arrays, factor):
    from .norm import norm_scale as run
    run(arrays, factor)


def halton(out, start, tab, ndig, workers):
    from .halton_rows import halton as run
    run(out, start, tab, ndig, workers)
