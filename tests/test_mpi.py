"""MPI: the global norm across processes and the sharded optimizer (issue 7).

The checks themselves live in ``tests/mpi_workers/checks.py``; each world size is one
``mpiexec -n P`` launch that runs all of them (MPI start-up costs about a second), and each check
is reported here as its own test. A launch that hangs is killed after ``TIMEOUT_S`` and fails.
They skip, with the reason, where mpi4py or ``mpiexec`` is missing (``pip install '.[mpi]'``).
"""
import ast
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt

ROOT = Path(__file__).resolve().parents[1]  # the working directory of every launch
WORKER = Path(__file__).resolve().parent / "mpi_workers" / "checks.py"
TIMEOUT_S = 120
WORLD_SIZES = (1, 2, 3)  # 3: uneven shards, and more ranks than CI's 2 cores


def _mpiexec():
    """The mpiexec beside this Python (the mpich wheel puts it there), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def _skip_reason():
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install '.[mpi]')"
    if _mpiexec() is None:
        return "no mpiexec found (pip install mpich, or a system MPI)"
    return None


def _check_names():
    """The worker's checks (functions decorated @check), read without importing mpi4py."""
    tree = ast.parse(WORKER.read_text())
    return [f.name for f in tree.body if isinstance(f, ast.FunctionDef)
            and any(isinstance(d, ast.Name) and d.id == "check" for d in f.decorator_list)]


def _env():
    env = dict(os.environ)
    # The ranks import the fastopt this test process imported (the checkout or site-packages).
    here = str(Path(fastopt.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"  # up to 3 ranks share 2 cores
    # Harmless for MPICH; lets Open MPI run as root (CI) and put 3 ranks on 2 cores.
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    env.setdefault("PRTE_MCA_rmaps_default_mapping_policy", ":oversubscribe")
    return env


def launch(n, out_dir, *checks):
    """Run the worker under ``mpiexec -n n``; returns {rank: results}. Kills the whole process
    group (mpiexec and its ranks) on timeout, so a hang fails the test instead of blocking."""
    cmd = [_mpiexec(), "-n", str(n), sys.executable, str(WORKER), str(out_dir), *checks]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"mpiexec -n {n} hung (killed after {TIMEOUT_S} s):\n{output[-4000:]}")
    results = {}
    for r in range(n):
        f = Path(out_dir) / f"rank{r}.json"
        if not f.exists():
            pytest.fail(f"mpiexec -n {n}: rank {r} wrote no results (exit {proc.returncode})"
                        f":\n{output[-4000:]}")
        d = json.loads(f.read_text())
        if d["size"] != n:
            pytest.fail(f"mpiexec -n {n} started processes in a world of {d['size']}: the "
                        f"mpiexec found ({_mpiexec()}) is not the MPI that mpi4py uses")
        results[r] = d["results"]
    return results


_RUNS = {}


@pytest.fixture(scope="module")
def mpi_results(tmp_path_factory):
    def get(n):
        if n not in _RUNS:
            _RUNS[n] = launch(n, tmp_path_factory.mktemp(f"mpi{n}"))
        return _RUNS[n]
    return get


needs_mpi = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@needs_mpi
@pytest.mark.parametrize("check", _check_names())
@pytest.mark.parametrize("n", WORLD_SIZES, ids=lambda n: f"np{n}")
def test_mpi(mpi_results, n, check):
    results = mpi_results(n)
    failed = {r: res.get(check, "missing") for r, res in results.items()
              if res.get(check) != "ok"}
    assert not failed, "\n".join(f"rank {r}: {msg}" for r, msg in failed.items())


# -- without MPI ---------------------------------------------------------------------------------
def _python(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=_env())


def test_import_fastopt_does_not_import_mpi4py():
    r = _python("import sys, fastopt, fastopt.distributed; "
                "print('mpi4py' in sys.modules)")
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_missing_mpi4py_says_what_to_install():
    r = _python("import sys; sys.modules['mpi4py'] = None\n"
                "import numpy as np, fastopt\n"
                "from fastopt import distributed\n"
                "for call in (lambda: fastopt.global_norm([np.ones(2)], comm=object()),\n"
                "             lambda: fastopt.Adam([np.ones(2)], comm=object()),\n"
                "             lambda: distributed.ShardedOptimizer([np.ones(2)], 'adam',\n"
                "                                                  object())):\n"
                "    try:\n"
                "        call()\n"
                "    except ImportError as e:\n"
                "        print(e)\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and all("pip install 'fastopt[mpi]'" in x for x in lines), r.stdout


def test_flatten_is_concatenation_with_views():
    from fastopt.distributed import ALIGN, flatten

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(1,), (7,), (3, 5), (129,)]]
    flat = flatten(arrays)
    assert flat.buffer.ctypes.data % ALIGN == 0
    np.testing.assert_array_equal(flat.buffer, np.concatenate([a.ravel() for a in arrays]))
    for v, a in zip(flat, arrays):
        assert v.shape == a.shape and np.shares_memory(v, flat.buffer)
    flat.views[2][1, 1] = 42.0
    assert flat.buffer[1 + 7 + 5 + 1] == 42.0
    assert flatten(arrays, dtype=np.float64).buffer.dtype == np.float64


@pytest.mark.parametrize("arrays, exc, pattern", [
    ([np.ones(2, np.float32), np.ones(2)], TypeError, "mix dtypes"),
    ([np.ones(2, np.int64)], TypeError, r"arrays\[0\] has dtype int64"),
    ([[1.0, 2.0]], TypeError, r"arrays\[0\] must be a numpy.ndarray"),
    ("x", TypeError, "arrays must be an array or a list"),
])
def test_flatten_bad_input(arrays, exc, pattern):
    from fastopt.distributed import flatten

    with pytest.raises(exc, match=pattern):
        flatten(arrays)


@pytest.mark.parametrize("numel", [0, 1, 15, 16, 17, 100, 4097, 1 << 20])
@pytest.mark.parametrize("world", [1, 2, 3, 7])
@pytest.mark.parametrize("itemsize", [4, 8])
def test_shard_bounds(numel, world, itemsize):
    from fastopt.distributed import ALIGN, shard_bounds

    b = shard_bounds(numel, world, itemsize)
    sizes = np.diff(b)
    assert b[0] == 0 and b[-1] == numel and len(b) == world + 1 and (sizes >= 0).all()
    assert (b[:-1] * itemsize % ALIGN == 0).all()  # every shard starts on a 64-byte boundary
    a = ALIGN // itemsize
    assert sizes.max() - sizes[:-1].min(initial=sizes.max()) <= a + numel % a + a
