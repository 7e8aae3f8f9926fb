"""Scrambled Halton throughput: fastopt's backends beside scipy.stats.qmc.Halton, same threads.

    PYTHONPATH=. python bench/bench_halton.py [--quick] [--threads 1,2] [--repeats 15] [--json F]

Halton is compute-bound, so the figure is values (n * d) per second. Every contender runs the
same (n, d) with the same thread count (SciPy's ``workers=``, fastopt's ``workers=``); repeats
are interleaved by the shared timer (fastopt._timing.interleaved) so that a noisy, shared
machine slows them alike, and the median is reported with the ratio of SciPy's median to it.
Each output is first checked bit for bit against SciPy's. Setup (SciPy's engine with its
permutations, fastopt's cached tables, Numba's compilation) stays outside the timed region; the
output allocation is inside for everyone.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

import fastopt
from fastopt import _dispatch
from fastopt._timing import interleaved, machine

CASES = ((2**20, 8), (2**16, 64), (2**14, 256))
QUICK = ((2**16, 8), (2**12, 64), (2**10, 256))
SEED = 0


def contenders(n, d, threads):
    """name -> a call producing the (n, d) sample, for the backends that run here and SciPy."""
    out = {}
    try:
        from scipy.stats import qmc
    except ImportError:
        qmc = None
    if qmc is not None:
        eng = qmc.Halton(d, scramble=True, seed=SEED)  # permutations drawn here, untimed

        def scipy_call():
            eng.reset()  # back to index 0, permutations kept
            return eng.random(n, workers=threads)
        out["scipy"] = scipy_call
    for b in ("cpp", "numba"):
        if _dispatch.unavailable_reason(b) is None:
            out[b] = (lambda b=b: fastopt.halton(n, d, seed=SEED, backend=b, workers=threads))
    return out


def run_case(n, d, threads, repeats):
    calls = contenders(n, d, threads)
    ref = calls["scipy"]() if "scipy" in calls else fastopt.halton(n, d, seed=SEED,
                                                                    backend="numpy")
    identical = {name: bool(np.array_equal(call(), ref)) for name, call in calls.items()}
    med = interleaved(calls, repeats=repeats, warmup=1)
    base = med.get("scipy")
    return [dict(n=n, d=d, threads=threads, contender=name, median_s=t, values_per_s=n * d / t,
                 vs_scipy=None if base is None else base / t, bit_identical=identical[name],
                 repeats=repeats) for name, t in med.items()]


def simd():
    if _dispatch.unavailable_reason("cpp") is None:
        from fastopt import _C
        return _C.simd_level()
    return "n/a"


def format_table(rows, header=True):
    head = f"{'n':>8} {'d':>4} {'thr':>3} {'contender':<9} {'median ms':>10} {'Mvalues/s':>10} " \
           f"{'vs scipy':>8} {'bits':>5}"
    lines = [head, "-" * len(head)] if header else []
    for r in rows:
        ratio = "" if r["vs_scipy"] is None else f"{r['vs_scipy']:.1f}x"
        lines.append(f"{r['n']:>8} {r['d']:>4} {r['threads']:>3} {r['contender']:<9} "
                     f"{r['median_s'] * 1e3:>10.2f} {r['values_per_s'] / 1e6:>10.1f} {ratio:>8} "
                     f"{'same' if r['bit_identical'] else 'DIFF':>5}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    ap.add_argument("--threads", default=None,
                    help="comma list of thread counts (default: 1 and all cores)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (median reported)")
    ap.add_argument("--json", metavar="OUT.json")
    a = ap.parse_args(argv)
    threads = ([int(t) for t in a.threads.split(",")] if a.threads
               else sorted({1, os.cpu_count() or 1}))
    repeats = a.repeats or (3 if a.quick else 15)
    info = {**machine(), "simd": simd(), "numpy": np.__version__,
            "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    print("# " + "  ".join(f"{k}={v}" for k, v in info.items()))
    print(format_table([]))
    rows = []
    for n, d in (QUICK if a.quick else CASES):
        for t in threads:
            new = run_case(n, d, t, repeats)
            print(format_table(new, header=False), flush=True)
            rows += new
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)
    return 0 if all(r["bit_identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
