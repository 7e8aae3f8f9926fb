"""Quasi-random hyperparameter search over a scrambled, shifted Halton sequence (SPEC §4).

The exploration phase of tuning wants a search that is non-adaptive, reproducible and free of
coordination between workers: trial ``i`` is row ``i`` of ``halton(., d, seed=seed,
scramble=True, shift=True)`` mapped into the search space, so it depends on (space, seed, i)
alone and any worker of a job array can compute its own trial::

    search = QuasiRandomSearch.from_json("tuning_search_space.json", seed=0)
    hp = search.trial(int(os.environ["SLURM_ARRAY_TASK_ID"]))

or from the shell: ``fastopt search tuning_search_space.json --seed 0 --trial 7``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import numbers
import sys
from typing import Any

import numpy as np

from ._validate import integer, real
from .halton import halton

__all__ = ["QuasiRandomSearch", "adam_space", "adam_kwargs"]

_RANGE_KEYS = {"min", "max", "scaling", "type"}
_SCALINGS = ("linear", "log")
_TYPES = ("float", "int")


class QuasiRandomSearch:
    r"""Quasi-random search: trial :math:`i` is :math:`g(x(i))`, where :math:`x(i) \in [0,1)^d` is
    row :math:`i` of the seeded, scrambled and shifted Halton sequence and :math:`g` maps each
    coordinate :math:`u` into its parameter's range, parameters taken in the space's order:

    * ``{"min": a, "max": b, "scaling": "linear"}``: :math:`a + u (b - a)`;
    * ``{"min": a, "max": b, "scaling": "log"}`` (:math:`a > 0`):
      :math:`\exp(\ln a + u (\ln b - \ln a))`;
    * ``{"feasible_points": [p_0, ..., p_{m-1}]}``: :math:`p_{\min(\lfloor u m \rfloor, m-1)}`;
    * ``{"min": a, "max": b, "type": "int"}`` (integers :math:`a < b`): each of
      :math:`a, ..., b` equally likely, :math:`a + \min(\lfloor u (b - a + 1) \rfloor, b - a)`;
      with ``"scaling": "log"`` (:math:`a \ge 1`) the log map on :math:`[a - 1/2, b + 1/2]`,
      rounded to the nearest integer.

    ``scaling`` defaults to ``"linear"`` and ``type`` to ``"float"``. This is the format of the
    MLCommons AlgoPerf ``tuning_search_space.json`` files, which :meth:`from_json` reads as they
    are, including their other form, a list of fixed points (trial ``i`` is then point ``i``).

    Parameters
    ----------
    space : dict or list of dict
        Parameter name -> specification as above (JSON-compatible), or a list of fixed points.
    seed : int
        Seed of the sequence (default 0); ``seed=0`` is a seed like any other.
    scramble, shift : bool
        Scrambled and shifted by default, as the source document recommends.
    backend : str or None
        Backend of :func:`fastopt.halton` (the trials are the same on every backend).
    """

    def __init__(self, space, seed=0, *, scramble=True, shift=True, backend=None):
        if isinstance(space, list):
            self.points = [_check_point(p, i) for i, p in enumerate(space)]
            if not self.points:
                raise ValueError("space is an empty list of points")
            self.space = None
            self.names = tuple(dict.fromkeys(k for p in self.points for k in p))
        elif isinstance(space, dict):
            if not space:
                raise ValueError("space has no parameters")
            self.points = None
            self.space = {_check_name(k): _check_spec(k, v) for k, v in space.items()}
            self.names = tuple(self.space)
        else:
            raise TypeError(f"space must be a dict of parameter specifications or a list of "
                            f"points, got {type(space).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be a non-negative integer (a search is reproducible), "
                            f"got {type(seed).__name__}")
        self.seed = integer(seed, "seed", lo=0)
        self.scramble, self.shift, self.backend = bool(scramble), bool(shift), backend

    @classmethod
    def from_json(cls, path, seed=0, **kwargs) -> QuasiRandomSearch:
        """The search over the space in the JSON file ``path`` (an AlgoPerf search-space file)."""
        with open(path, encoding="utf-8") as f:
            try:
                space = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls(space, seed, **kwargs)

    @property
    def d(self) -> int:
        """The number of parameters (the dimension of the Halton sequence)."""
        return len(self.names)

    def unit(self, n: int, start: int = 0) -> np.ndarray:
        """Rows ``start .. start + n - 1`` of the sequence behind the trials, shape (n, d)."""
        return halton(n, self.d, seed=self.seed, scramble=self.scramble, shift=self.shift,
                      start=start, backend=self.backend)

    def trial(self, i: int) -> dict[str, Any]:
        """The hyperparameters of trial ``i`` (0-based); a function of (space, seed, i) alone."""
        i = integer(i, "i", lo=0)
        if self.points is not None:
            if i >= len(self.points):
                raise IndexError(f"trial {i} does not exist: the space lists "
                                 f"{len(self.points)} fixed points")
            return dict(self.points[i])
        return self._map(self.unit(1, i)[0])

    def trials(self, n: int, start: int = 0) -> list[dict[str, Any]]:
        """Trials ``start .. start + n - 1``: ``trials(n, start)[k] == trial(start + k)``."""
        n = integer(n, "n", lo=0)
        start = integer(start, "start", lo=0)
        if self.points is not None:
            return [self.trial(i) for i in range(start, start + n)]
        return [self._map(row) for row in self.unit(n, start)]

    def _map(self, row) -> dict[str, Any]:
        return {name: _value(spec, float(u)) for (name, spec), u in zip(self.space.items(), row)}

    def __repr__(self):
        return f"QuasiRandomSearch({list(self.names)}, seed={self.seed})"


def _value(spec: dict, u: float):
    if "feasible_points" in spec:
        pts = spec["feasible_points"]
        return pts[min(int(math.floor(u * len(pts))), len(pts) - 1)]
    a, b = spec["min"], spec["max"]
    log = spec.get("scaling", "linear") == "log"
    if spec.get("type", "float") == "int":
        a, b = int(a), int(b)
        if not log:
            return a + min(int(math.floor(u * (b - a + 1))), b - a)
        lo, hi = math.log(a - 0.5), math.log(b + 0.5)
        return min(max(round(math.exp(lo + u * (hi - lo))), a), b)
    if log:
        lo, hi = math.log(a), math.log(b)
        v = math.exp(lo + u * (hi - lo))
    else:
        v = a + u * (b - a)
    return min(max(v, float(a)), float(b))  # rounding must not step outside [a, b]


def _check_name(name):
    if not isinstance(name, str) or not name:
        raise TypeError(f"parameter names must be non-empty strings, got {name!r}")
    return name


def _check_spec(name: str, spec) -> dict:
    where = f"space[{name!r}]"
    if not isinstance(spec, dict):
        raise TypeError(f"{where} must be a dict such as {{'min': 1e-4, 'max': 1e-1, "
                        f"'scaling': 'log'}} or {{'feasible_points': [...]}}, got "
                        f"{type(spec).__name__}")
    if "feasible_points" in spec:
        extra = set(spec) - {"feasible_points"}
        if extra:
            raise ValueError(f"{where} mixes feasible_points with {sorted(extra)}")
        pts = spec["feasible_points"]
        if not isinstance(pts, (list, tuple)) or not pts:
            raise ValueError(f"{where}['feasible_points'] must be a non-empty list")
        return {"feasible_points": list(pts)}
    unknown = set(spec) - _RANGE_KEYS
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)}; a range has "
                         f"{sorted(_RANGE_KEYS)}, a discrete parameter 'feasible_points'")
    for key in ("min", "max"):
        if key not in spec:
            raise ValueError(f"{where} needs '{key}' (or 'feasible_points')")
    scaling = spec.get("scaling", "linear")
    if scaling not in _SCALINGS:
        raise ValueError(f"{where}['scaling'] must be one of {_SCALINGS}, got {scaling!r}")
    kind = spec.get("type", "float")
    if kind not in _TYPES:
        raise ValueError(f"{where}['type'] must be one of {_TYPES}, got {kind!r}")
    a = real(spec["min"], f"{where}['min']")
    b = real(spec["max"], f"{where}['max']")
    if not a < b:
        raise ValueError(f"{where}: min must be < max, got min={spec['min']!r}, "
                         f"max={spec['max']!r}")
    if kind == "int":
        if a != int(a) or b != int(b):
            raise ValueError(f"{where}: an int parameter needs integer min and max, got "
                             f"{spec['min']!r}, {spec['max']!r}")
        a, b = int(a), int(b)
        if scaling == "log" and a < 1:
            raise ValueError(f"{where}: log scaling needs min >= 1 for an int parameter, got {a}")
    elif scaling == "log" and a <= 0:
        raise ValueError(f"{where}: log scaling needs min > 0, got min={spec['min']!r}")
    return {"min": a, "max": b, "scaling": scaling, "type": kind}


def _check_point(point, i):
    if not isinstance(point, dict) or not point:
        raise TypeError(f"space[{i}] must be a non-empty dict of hyperparameter values")
    return {_check_name(k): v for k, v in point.items()}


def adam_space(budget: int, *, learning_rate=(1e-5, 1e-1), one_minus_beta1=(1e-2, 0.5),
               epsilon=(1e-10, 1e-2), one_minus_beta2=(1e-4, 1e-1), many: int = 100) -> dict:
    r"""The source document's Adam search space for a study of ``budget`` trials.

    * fewer than 10 trials: the learning rate :math:`\eta` only;
    * 10 to 24: :math:`\eta` and :math:`\beta_1`;
    * 25 or more: :math:`\eta`, :math:`\beta_1` and :math:`\epsilon`;
    * ``many`` (default 100) or more: also :math:`\beta_2`.

    Every parameter is on a log scale. :math:`\beta_1` and :math:`\beta_2` are searched as
    :math:`1 - \beta` (``one_minus_beta1``, ``one_minus_beta2``, as AlgoPerf does), which spreads
    trials evenly over 0.9, 0.99, 0.999 rather than bunching them near 1. Each keyword gives the
    (min, max) of its parameter. :func:`adam_kwargs` turns a trial into ``fastopt.Adam`` keywords.
    """
    budget = integer(budget, "budget", lo=1)
    many = integer(many, "many", lo=26)
    ranges = [("learning_rate", learning_rate)]
    if budget >= 10:
        ranges.append(("one_minus_beta1", one_minus_beta1))
    if budget >= 25:
        ranges.append(("epsilon", epsilon))
    if budget >= many:
        ranges.append(("one_minus_beta2", one_minus_beta2))
    space = {}
    for name, rng in ranges:
        if not isinstance(rng, (tuple, list)) or len(rng) != 2:
            raise TypeError(f"{name} must be a (min, max) pair, got {rng!r}")
        space[name] = {"min": rng[0], "max": rng[1], "scaling": "log"}
        _check_spec(name, space[name])
    return space


def adam_kwargs(trial: dict) -> dict:
    """``fastopt.Adam`` keywords (lr, beta1, beta2, eps) from a trial of :func:`adam_space`."""
    out = {"lr": trial["learning_rate"]}
    if "one_minus_beta1" in trial:
        out["beta1"] = 1.0 - trial["one_minus_beta1"]
    if "one_minus_beta2" in trial:
        out["beta2"] = 1.0 - trial["one_minus_beta2"]
    if "epsilon" in trial:
        out["eps"] = trial["epsilon"]
    return out


# -- fastopt search SPACE.json --seed S (--trial I | --trials N [--start K]) [--format F] -------

def add_search_command(sub) -> None:
    """Adds the ``search`` command to the ``fastopt`` command line's subparsers."""
    p = sub.add_parser(
        "search", help="print trials of a quasi-random search over a JSON search space",
        description="Print trials of a quasi-random hyperparameter search. Trial I depends only "
                    "on (SPACE, --seed, I), so each task of a job array can ask for its own. "
                    "JSON: one object per trial, one per line. CSV: a header, then one row per "
                    "trial, the trial index first.")
    p.add_argument("space", metavar="SPACE.json", help="search space (AlgoPerf format)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sequence (default 0)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, metavar="I", help="print trial I")
    which.add_argument("--trials", type=int, metavar="N", help="print N trials")
    p.add_argument("--start", type=int, default=None, metavar="K",
                   help="with --trials: the first trial (default 0)")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.set_defaults(handler=run_search_command)


def run_search_command(args, out=None) -> int:
    """Runs ``fastopt search`` on parsed arguments; returns the exit status."""
    out = out or sys.stdout
    try:
        for option in ("seed", "trial", "trials", "start"):
            value = getattr(args, option)
            if value is not None and value < 0:
                raise ValueError(f"--{option} must be >= 0, got {value}")
        if args.trial is not None and args.start is not None:
            raise ValueError("--start goes with --trials, not --trial")
        search = QuasiRandomSearch.from_json(args.space, seed=args.seed)
        if args.trial is not None:
            first, trials = args.trial, [search.trial(args.trial)]
        else:
            first = args.start or 0
            trials = search.trials(args.trials, first)
    except (OSError, TypeError, ValueError, IndexError) as e:
        print(f"fastopt search: error: {e}", file=sys.stderr)
        return 2
    if args.format == "json":
        for t in trials:
            out.write(json.dumps(t) + "\n")
    else:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["trial", *search.names])
        for k, t in enumerate(trials):
            w.writerow([first + k, *(t.get(name, "") for name in search.names)])
        out.write(buf.getvalue())
    return 0
