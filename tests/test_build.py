"""Packaging: no compiler -> a working install on the Numba backend; 64-bit indices."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_install_without_a_compiler_runs_on_numba(tmp_path):
    if fastopt._dispatch.unavailable_reason("numba"):
        pytest.skip("numba is not installed")
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        "build", "*.so", "__pycache__", ".git", "*.egg-info", ".pytest_cache", ".hypothesis"))
    target = tmp_path / "site"
    env = {**os.environ, "CC": "false", "CXX": "false", "FASTOPT_CUDA": "0"}
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation",
                          "--no-deps", "-v", "--target", str(target), str(src)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert log.count("fastopt: native build of fastopt._C skipped") == 1, log[-3000:]
    code = ("import numpy as np, fastopt\n"
            "p = [np.ones(7, np.float32), np.ones(129, np.float32)]\n"
            "r = fastopt.Adam(p, 0.1).step([np.ones(7, np.float32), np.ones(129, np.float32)])\n"
            "print(fastopt.backends(), fastopt._dispatch.resolve('optim.adam'), float(p[0][0]))\n")
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    names, chosen, value = run.stdout.rsplit("]", 1)[0] + "]", *run.stdout.rsplit("]", 1)[1].split()
    assert "cpp" not in names and chosen == "numba", run.stdout
    assert float(value) == pytest.approx(0.9, rel=1e-6)


def _mem_available():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.mark.bigmem
@pytest.mark.skipif(_mem_available() < 20 * 2**30, reason="needs ~20 GB of free memory")
def test_sgd_beyond_32_bit_indices():
    """2**31 + 8 float32 elements (~17 GB with the gradient): both ends and the 2**31 seam."""
    if fastopt._dispatch.unavailable_reason("cpp"):
        pytest.skip("no C++ extension")
    n = 2**31 + 8
    p = np.zeros(n, np.float32)
    g = np.ones(n, np.float32)
    for i in (0, 2**31 - 1, 2**31, n - 1):
        g[i] = 4.0
    fastopt.SGD(p, 0.5, backend="cpp").step(g)
    assert [p[i] for i in (0, 1, 2**31 - 1, 2**31, 2**31 + 1, n - 1)] == [-2, -0.5, -2, -2, -0.5, -2]
