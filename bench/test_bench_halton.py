"""pytest-benchmark suite for the Halton kernel (developers; not part of `pytest tests`).

    pytest bench/test_bench_halton.py --benchmark-group-by=param:shape

fastopt's backends and SciPy run with the same thread count (all cores); bench/bench_halton.py
prints the interleaved comparison with ratios and the bit check.
"""
import pytest

from fastopt.bench import halton_case, have

SHAPES = {"2^20x8": (1 << 20, 8), "2^16x64": (1 << 16, 64), "2^14x256": (1 << 14, 256)}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("contender", ["cpp", "numba", "scipy"])
def test_halton(benchmark, contender, shape):
    case = halton_case(*SHAPES[shape], backends=[b for b in ("cpp", "numba") if have(b)])
    fns = {("scipy" if k.startswith("scipy") else k[len("fastopt["):-1]): fn
           for k, fn in case.contenders.items()}
    if contender not in fns:
        pytest.skip(f"{contender} is not available here")
    check = case.checks.get(f"fastopt[{contender}]")
    assert check is None or check() is None  # bit-identical before it is timed
    benchmark(fns[contender])
