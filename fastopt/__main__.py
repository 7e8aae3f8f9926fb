"""The ``fastopt`` command line: ``fastopt bench``, ``fastopt info``, ``fastopt search``."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastopt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="check and time every kernel against this machine's ceiling")
    bench.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from bench import bench_optim  # noqa: F401  (placeholder until the bench command lands)
    return 0


if __name__ == "__main__":
    sys.exit(main())
