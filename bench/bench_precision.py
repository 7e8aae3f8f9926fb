"""Adam in compact precision: fp32, bf16 params with remainders or stochastic rounding, bf16 or
8-bit state -- fastopt cpp and numba beside torch's fused AdamW (fp32 and bf16), each
configuration against a same-run streaming ceiling that moves its own bytes.

    python bench/bench_precision.py [--quick] [--json out.json] [--backends cpp,numba]

Every contender of one layout (2^24 elements flat, and in 200 arrays) is timed in one
interleaved run; fastopt's contenders are first checked bit for bit against the NumPy
reference. The targets are printed last, PASS or MISS with the figures (a MISS is information:
the exit status is 1 only when a contender FAILED its check).
"""
import argparse
import json
import sys

from fastopt._timing import machine
from fastopt.bench import (PRECISION_LAYOUTS, format_precision_table, format_precision_targets,
                           header, precision_targets, run_precision)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2^20 elements: a minute or so")
    ap.add_argument("--backends", help="comma list (default: the native ones available)")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    cases = ((1 << 20, 1), (1 << 20, 200)) if a.quick else PRECISION_LAYOUTS
    backends = a.backends.split(",") if a.backends else None
    rows = run_precision(cases, repeats=5 if a.quick else 15, budget_s=10 if a.quick else 60,
                         backends=backends)
    print(header())
    print(format_precision_table(rows))
    targets = precision_targets(rows)
    print()
    print(format_precision_targets(targets))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(), "rows": rows, "targets": targets}, f, indent=1)
    return 1 if any(r["status"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
