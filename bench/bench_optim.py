"""Adam float32 step: fastopt backends vs the NumPy reference and torch fused/foreach, beside
a same-run streaming kernel with Adam's exact traffic (read 4 arrays, write 3) as the ceiling.

    python bench/bench_optim.py [--quick] [--rule adam] [--json out.json]
"""
import argparse
import json
import sys

from fastopt._timing import machine
from fastopt.bench import format_table, header, run_optim


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rule", default="adam")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    cases = (((1 << 20, 1), (1 << 18, 200)) if a.quick
             else ((1 << 24, 1), (1 << 20, 200), (1 << 24, 200)))
    rows = run_optim(a.rule, cases, repeats=5 if a.quick else 15)
    print(header())
    print(format_table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
