"""The numba-cuda Halton kernel on the Numba CUDA simulator, on the cases the table layout
makes special: unscrambled calls of fewer rows than the base (narrow rows whose origin is
start's digit, across carries), bit for bit against the NumPy reference.

The simulator must be on before numba.cuda is imported, hence a process of its own.
"""
import subprocess
import sys

import pytest

from conftest import fastopt_env, fastopt_parent

SCRIPT = r"""
import numpy as np
import fastopt
cases = [(1, 1, 0), (3, 12, 2**40 + 5), (5, 30, 96), (6, 30, 2 * 97 * 97 - 3),
         (4, 9, 2**64 - 4), (40, 20, 2**32 - 17), (0, 3, 7)]
for n, d, start in cases:
    for scramble, shift in ((False, False), (False, True), (True, True)):
        kw = dict(seed=5, start=start, scramble=scramble, shift=shift)
        got = fastopt.halton(n, d, backend="numba-cuda", **kw).copy_to_host()
        want = fastopt.halton(n, d, backend="numpy", **kw)
        assert got.shape == want.shape and np.array_equal(got, want), (n, d, start, kw)
print("ok", len(cases))
"""


def test_numba_cuda_halton_narrow_rows_on_the_simulator():
    pytest.importorskip("numba")
    env = fastopt_env(NUMBA_ENABLE_CUDASIM="1")
    env.pop("FASTOPT_BACKEND", None)
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         env=env, cwd=fastopt_parent(), timeout=600)
    assert run.returncode == 0 and "ok 7" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
