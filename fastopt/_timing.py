"""The one timer every benchmark uses (bench/ scripts and ``fastopt bench``).

Contenders are run interleaved (round-robin, after warm-up) so that a noisy, shared machine
slows them alike; we report medians and ratios of medians, never single timings.
"""
from __future__ import annotations

import statistics
import time


def interleaved(contenders: dict, *, repeats: int = 15, warmup: int = 2,
                budget_s: float | None = None, gap_s: float = 0.002, before=None) -> dict:
    """Median seconds per call of each zero-argument callable, measured round-robin.

    ``budget_s`` caps the wall time: repeats stop early (at least 3) once it is spent.
    ``gap_s`` of idle time separates calls: OpenMP runtimes (ours, numba's, torch's) keep their
    threads spinning for a while after a parallel region, which would otherwise steal the cores
    from the next contender.
    ``before``, if given, is called (untimed) right before every timed call: an MPI barrier, so
    that the ranks of a collective start it together and one's lateness is not timed as the
    next collective's cost.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    start = time.perf_counter()
    for r in range(repeats):
        for name, fn in contenders.items():
            time.sleep(gap_s)
            if before is not None:
                before()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}


def lognormal_sizes(count: int, total: int, *, lo: int = 9, hi: int = 1 << 20, seed: int = 0):
    """``count`` array sizes, log-normally spread in [lo, hi], summing exactly to ``total``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    raw = rng.lognormal(mean=0.0, sigma=2.0, size=count)
    sizes = np.clip(np.round(raw / raw.sum() * total), lo, hi).astype(np.int64)
    # fix the sum exactly by adjusting the largest arrays (within [lo, hi])
    for i in np.argsort(-sizes):
        diff = total - int(sizes.sum())
        if diff == 0:
            break
        sizes[i] = int(np.clip(sizes[i] + diff, lo, hi))
    if int(sizes.sum()) != total:
        raise ValueError(f"cannot split {total} into {count} sizes within [{lo}, {hi}]")
    return [int(s) for s in sizes]


def machine() -> dict:
    """A short description of this machine, stored beside every figure."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}
