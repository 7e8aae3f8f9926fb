"""pytest-benchmark suite for the optimizer kernels (developers; not part of `pytest tests`).

    pytest bench/test_bench_optim.py --benchmark-group-by=param:layout
"""
import pytest

from fastopt._registry import CPU_BACKENDS
from fastopt.bench import have, optim_case

LAYOUTS = {"flat-2^22": (1 << 22, 1), "200-arrays-2^20": (1 << 20, 200)}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "numpy"] + ["torch", "ceiling"])
@pytest.mark.parametrize("rule", ["sgd", "momentum", "adam", "nadam"])
def test_step(benchmark, rule, backend, layout):
    case = optim_case(rule, *LAYOUTS[layout], backends=[b for b in CPU_BACKENDS if have(b) and b != "numpy"])
    fns = case.contenders
    name = {"torch": "torch fused", "ceiling": "ceiling (stream)"}.get(backend, f"fastopt[{backend}]")
    if name not in fns:
        pytest.skip(f"{name} is not available here")
    benchmark(fns[name])
