"""The ``fastopt`` command line.

  fastopt info                      what runs here: backends (and why not), SIMD, threads, GPUs
  fastopt bench [--quick] ...       check every kernel, then time it against this machine's ceiling
  fastopt search SPACE.json ...     quasi-random search trials for shell and job-array launchers
  fastopt report RESULTS ...        one HTML page of findings and plots from a study's results
"""
from __future__ import annotations

import argparse
import sys

from ._rules import RULES


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the option (``fastopt search: error: argument
    --trials: invalid int value: 'x'``), exit status 2; ``--help`` shows the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0] if message else ''}\n")


def _info(args) -> int:
    import json

    from .info import format_info, info

    d = info()
    print(json.dumps(d, indent=1) if args.json else format_info(d))
    return 0


def _bench(args) -> int:
    from .bench import cli

    try:
        return cli(args)
    except ValueError as e:  # a bad option, refused before any work: a usage error
        print(f"fastopt bench: error: {e}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastopt", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="backends available here (and why not), SIMD, threads, GPUs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_info)

    p = sub.add_parser("bench", help="check and time every kernel against this machine's ceiling")
    p.add_argument("--quick", action="store_true", help="small sizes: under a minute on 2 cores")
    p.add_argument("--kernels", help="comma list of optim,norm,halton,precision (default: "
                   "optim,norm,halton)")
    p.add_argument("--backends", help="comma list of cpp,numba,numpy (default: all available)")
    p.add_argument("--rules", help="comma list of optimizer rules to time (default: "
                   f"adam,lion,adagrad; any of {','.join(RULES)})")
    p.add_argument("--sizes", help="comma list of element counts, e.g. 2^20,2^24")
    p.add_argument("--repeats", type=int, help="timed repeats per contender (median reported)")
    p.add_argument("--no-peers", action="store_true", help="skip torch/SciPy/NumPy peers")
    p.add_argument("--json", metavar="OUT.json", help="write every figure with the machine")
    p.add_argument("--plot", metavar="OUT.png", help="bar chart of rates, ceiling as a line")
    p.set_defaults(handler=_bench)

    from .search import add_search_command
    add_search_command(sub)
    from .report import add_report_command
    add_report_command(sub)
    return parser


def main(argv=None) -> int:
    """Runs the command line on ``argv`` (a list of str; default ``sys.argv[1:]``)."""
    if argv is not None and (not isinstance(argv, (list, tuple))
                             or not all(isinstance(a, str) for a in argv)):
        raise TypeError(f"argv must be None or a list of str, got {type(argv).__name__}")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
