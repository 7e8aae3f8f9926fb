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
import json
import math
import numbers
import os
import re
import sys
from typing import Any

import numpy as np

from . import _device, _dispatch
from ._registry import ALL_BACKENDS, DEVICE_BACKENDS, F64
from ._validate import integer, real
from .halton import INDEX_LIMIT, halton, memory_limit

try:  # POSIX: record() locks the file so that concurrent appends never interleave
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_APPEND alone
    fcntl = None

__all__ = ["QuasiRandomSearch", "adam_space", "adam_kwargs"]

_RANGE_KEYS = {"min", "max", "scaling", "type"}
_SCALINGS = ("linear", "log")
_TYPES = ("float", "int")
#: Largest search-space file read: AlgoPerf's are under 1 KB; this leaves room for long lists
#: of fixed points while a wrong path (a data set, /dev/zero) is refused at once.
MAX_FILE_BYTES = 16 * 2**20
#: Deepest nesting of lists and objects in a search-space file (the format needs 3 or 4):
#: deeper ones are refused before they could exhaust the recursion of a parser or encoder.
MAX_DEPTH = 32
#: Integer parameters' bounds: every integer up to 2**53 is a float64, and u has 53 bits.
INT_LIMIT = 2**53


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

    :meth:`record` appends a trial's measurements to a JSON Lines results file that many
    workers may share, which :func:`fastopt.study.load_results` reads back.

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
        for value, name in ((scramble, "scramble"), (shift, "shift")):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        if backend is not None and (not isinstance(backend, str) or backend not in ALL_BACKENDS):
            raise ValueError(f"backend must be None or one of {', '.join(ALL_BACKENDS)}, got "
                             f"{_short(backend)}")
        self.scramble, self.shift, self.backend = bool(scramble), bool(shift), backend

    @classmethod
    def from_json(cls, path, seed=0, **kwargs) -> QuasiRandomSearch:
        """The search over the space in the JSON file ``path`` (an AlgoPerf search-space file).

        Errors are TypeError or ValueError, naming the file: it must be readable UTF-8 JSON of
        at most MAX_FILE_BYTES, nested at most MAX_DEPTH deep, without duplicate keys or the
        non-JSON constants NaN and Infinity.
        """
        if isinstance(path, bool) or not isinstance(path, (str, bytes, os.PathLike)):
            # an int would be taken by open() as a file descriptor (0: standard input)
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        where = f"path {os.fsdecode(path)!r}"
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise ValueError(f"{where}: cannot read it ({e.strerror or e})") from None
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"{where}: larger than {MAX_FILE_BYTES >> 20} MiB; a search space "
                             "is a small JSON file")
        space = _load_json(data, where)
        try:
            return cls(space, seed, **kwargs)
        except (TypeError, ValueError) as e:
            if not str(e).startswith("space"):  # seed=, backend=: not the file's fault
                raise
            raise type(e)(f"{where}: {e}") from None

    @property
    def d(self) -> int:
        """The number of parameters (the dimension of the Halton sequence)."""
        return len(self.names)

    def unit(self, n: int, start: int = 0) -> np.ndarray:
        """Rows ``start .. start + n - 1`` of the sequence behind the trials, shape (n, d)."""
        return halton(n, self.d, seed=self.seed, scramble=self.scramble, shift=self.shift,
                      start=start, backend=self.backend)

    def trial(self, i: int) -> dict[str, Any]:
        """The hyperparameters of trial ``i`` (0-based); a function of (space, seed, i) alone.

        ``0 <= i < 2**64``; for a list of fixed points an IndexError beyond the list.
        """
        i = integer(i, "i", lo=0, hi=INDEX_LIMIT - 1)
        if self.points is not None:
            if i >= len(self.points):
                raise IndexError(f"trial {i} does not exist: the space lists "
                                 f"{len(self.points)} fixed points")
            return dict(self.points[i])
        return self._map(self._host(self.unit(1, i))[0])

    def trials(self, n: int, start: int = 0) -> list[dict[str, Any]]:
        """Trials ``start .. start + n - 1``: ``trials(n, start)[k] == trial(start + k)``.

        A list of n dicts costs about (200 + 100 d) bytes per trial; an n whose list would not
        fit in this machine's memory is refused before anything is computed.
        """
        n = integer(n, "n", lo=0)
        start = integer(start, "start", lo=0)
        if start + n > INDEX_LIMIT:
            raise ValueError(f"start + n must be <= 2**64, got start={_short(start)}, "
                             f"n={_short(n)}")
        if self.points is not None:
            # past the list, the first missing trial raises: never loop over an absurd n
            return [self.trial(i) for i in range(start, start + min(n, len(self.points) + 1))]
        if n * (200 + 108 * self.d) > memory_limit():
            raise ValueError(f"n={_short(n)} trials of {self.d} parameters would need about "
                             f"{n * (200 + 108 * self.d) / 2**30:.3g} GiB, more than this "
                             "machine's memory: ask for fewer at a time (start= continues)")
        return [self._map(row) for row in self._host(self.unit(n, start))]

    def record(self, path, trial, step, metrics, *, diverged=False) -> None:
        """Appends one record of trial ``trial`` at step ``step`` to the JSON Lines file
        ``path``: ``{"trial", "step", "params": self.trial(trial), "metrics"}``, with
        ``"diverged": true`` when set.

        ``metrics`` maps names (str) to real numbers; NaN and infinities are written as the
        strings "nan", "inf", "-inf" so the line stays strict JSON. The file is created if
        needed and locked (``flock``, where the platform has it) while the whole line is
        written, so many processes may append at once. Every argument is checked first: a
        TypeError or ValueError naming it leaves the file untouched.
        """
        if isinstance(path, bool) or not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        trial = integer(trial, "trial", lo=0, hi=INDEX_LIMIT - 1)
        step = integer(step, "step", lo=0)
        if not isinstance(metrics, dict):
            raise TypeError(f"metrics must be a dict of metric name -> number, got "
                            f"{type(metrics).__name__}")
        values = {}
        for name, value in metrics.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"metrics keys must be non-empty strings, got {_short(name)}")
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise TypeError(f"metrics[{name!r}] must be a real number, got "
                                f"{type(value).__name__}")
            try:
                v = float(value)
            except (OverflowError, ValueError, TypeError):
                raise ValueError(f"metrics[{name!r}] must be a real number within float64 "
                                 f"range, got {_short(value)}") from None
            values[name] = v if math.isfinite(v) else ("nan" if v != v else
                                                      ("inf" if v > 0 else "-inf"))
        if not isinstance(diverged, (bool, np.bool_)):
            raise TypeError(f"diverged must be a bool, got {type(diverged).__name__}")
        rec = {"trial": trial, "step": step, "params": self.trial(trial), "metrics": values}
        if diverged:
            rec["diverged"] = True
        try:
            data = (json.dumps(rec, allow_nan=False) + "\n").encode()
        except ValueError as e:
            raise ValueError(f"trial {trial}'s params cannot be written as JSON ({e})") from None
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @staticmethod
    def _host(x):
        return x if isinstance(x, np.ndarray) else _device.to_host(x)

    def _map(self, row) -> dict[str, Any]:
        return {name: _value(spec, float(u)) for (name, spec), u in zip(self.space.items(), row)}

    def __repr__(self):
        return f"QuasiRandomSearch({list(self.names)}, seed={self.seed})"


def _value(spec: dict, u: float):
    if "feasible_points" in spec:
        pts = spec["feasible_points"]
        return pts[min(int(math.floor(u * len(pts))), len(pts) - 1)]
    a, b = spec["min"], spec["max"]
    log = spec["scaling"] == "log"
    if spec["type"] == "int":
        if not log:
            return a + min(int(math.floor(u * (b - a + 1))), b - a)
        lo, hi = math.log(a - 0.5), math.log(b + 0.5)
        return min(max(round(math.exp(lo + u * (hi - lo))), a), b)
    if log:
        lo, hi = math.log(a), math.log(b)
        try:
            v = math.exp(lo + u * (hi - lo))
        except OverflowError:  # a rounding past ln(max) when max is near the float limit
            v = b
    else:
        v = a + u * (b - a)
    return min(max(v, a), b)  # rounding must not step outside [a, b]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_name(name, where="space"):
    if not isinstance(name, str) or not name:
        raise TypeError(f"{where}: parameter names must be non-empty strings, got "
                        f"{_short(name)}")
    return name


def _check_spec(name: str, spec) -> dict:
    where = f"space[{name!r}]"
    if not isinstance(spec, dict):
        raise TypeError(f"{where} must be a dict such as {{'min': 1e-4, 'max': 1e-1, "
                        f"'scaling': 'log'}} or {{'feasible_points': [...]}}, got "
                        f"{type(spec).__name__}")
    if "feasible_points" in spec:
        if len(spec) > 1:  # keys of any type: sorted by repr, never compared with each other
            extra = sorted((k for k in spec if k != "feasible_points"), key=repr)
            raise ValueError(f"{where} mixes feasible_points with {_short(extra)}")
        pts = spec["feasible_points"]
        if not isinstance(pts, (list, tuple)):
            raise TypeError(f"{where}['feasible_points'] must be a non-empty list, got "
                            f"{type(pts).__name__}")
        if not pts:
            raise ValueError(f"{where}['feasible_points'] must be a non-empty list")
        return {"feasible_points": list(pts)}
    unknown = [k for k in spec if k not in _RANGE_KEYS]
    if unknown:
        raise ValueError(f"{where} has unknown keys {_short(sorted(unknown, key=repr))}; a range "
                         f"has {sorted(_RANGE_KEYS)}, a discrete parameter 'feasible_points'")
    for key in ("min", "max"):
        if key not in spec:
            raise ValueError(f"{where} needs '{key}' (or 'feasible_points')")
    scaling, kind = spec.get("scaling", "linear"), spec.get("type", "float")
    for key, value, allowed in (("scaling", scaling, _SCALINGS), ("type", kind, _TYPES)):
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{where}['{key}'] must be one of {allowed}, got {_short(value)}")
    a = real(spec["min"], f"{where}['min']")
    b = real(spec["max"], f"{where}['max']")
    if not a < b:
        raise ValueError(f"{where}: min must be < max, got min={_short(spec['min'])}, "
                         f"max={_short(spec['max'])}")
    if kind == "int":
        if a != int(a) or b != int(b) or not -INT_LIMIT <= a < b <= INT_LIMIT:
            raise ValueError(f"{where}: an int parameter needs integer min and max within "
                             f"+-2**53, got {_short(spec['min'])}, {_short(spec['max'])}")
        a, b = int(a), int(b)
        if scaling == "log" and a < 1:
            raise ValueError(f"{where}: log scaling needs min >= 1 for an int parameter, got {a}")
    elif scaling == "log" and a <= 0:
        raise ValueError(f"{where}: log scaling needs min > 0, got min={_short(spec['min'])}")
    elif not math.isfinite(b - a):
        raise ValueError(f"{where}: max - min overflows a float64 (min={a!r}, max={b!r}); a "
                         "linear range must be narrower")
    return {"min": a, "max": b, "scaling": scaling, "type": kind}


def _check_point(point, i):
    if not isinstance(point, dict) or not point:
        raise TypeError(f"space[{i}] must be a non-empty dict of hyperparameter values")
    return {_check_name(k, f"space[{i}]"): v for k, v in point.items()}


def _load_json(data: bytes, where: str):
    """A search space from the bytes of a file: strict JSON, never deeper than MAX_DEPTH."""
    def no_duplicates(pairs):
        out = dict(pairs)
        if len(out) != len(pairs):
            seen = set()
            dup = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise ValueError(f"the key {_short(dup)} appears twice in one object")
        return out

    def no_constant(name):
        raise ValueError(f"{name} is not JSON (numbers must be finite)")

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    # brackets outside strings, counted before the recursive parser meets them
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", text).encode()
    step = np.frombuffer(bare, np.uint8)
    step = np.isin(step, (91, 123)).astype(np.int64) - np.isin(step, (93, 125))
    deepest = int(np.cumsum(step).max(initial=0))
    if deepest > MAX_DEPTH:
        raise ValueError(f"{where}: nested {deepest} deep; a search space nests at most "
                         f"{MAX_DEPTH} deep")
    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except ValueError as e:  # JSONDecodeError, the hooks above, an integer of 5000 digits
        raise ValueError(f"{where}: not valid JSON ({e})") from None


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
    if not isinstance(trial, dict):
        raise TypeError(f"trial must be a dict from adam_space's search, got "
                        f"{type(trial).__name__}")
    if "learning_rate" not in trial:
        raise ValueError("trial has no 'learning_rate' (a trial of adam_space's search has)")
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


#: Trials computed and written at a time: memory stays flat whatever --trials asks for.
CHUNK = 4096


def run_search_command(args, out=None) -> int:
    """Runs ``fastopt search`` on parsed arguments; returns the exit status.

    Every error is one line on stderr naming the option or SPACE.json, status 2, before any
    trial is written. Trials are computed and written CHUNK at a time, so --trials may be as
    large as the 64-bit index range allows; a reader that stops early (``| head``) ends the
    command quietly with status 1.
    """
    out = out or sys.stdout

    def fail(message):
        print(f"fastopt search: error: {message}", file=sys.stderr)
        return 2

    for option in ("seed", "trial", "trials", "start"):
        value = getattr(args, option)
        if value is not None and value < 0:
            return fail(f"--{option} must be >= 0, got {value}")
    if args.trial is not None and args.start is not None:
        return fail("--start goes with --trials, not --trial")
    if args.trial is not None:
        first, count = args.trial, 1
        if first >= INDEX_LIMIT:
            return fail(f"--trial must be < 2**64 (64-bit trial indices), got {_short(first)}")
    else:
        first, count = args.start or 0, args.trials
        if first + count > INDEX_LIMIT:
            return fail(f"--start + --trials must be <= 2**64 (64-bit trial indices), got "
                        f"{_short(first)} + {_short(count)}")
    env = os.environ.get("FASTOPT_BACKEND")
    if env:
        try:
            _dispatch.resolve("halton.halton", device=env in DEVICE_BACKENDS, dtype=F64)
        except (TypeError, ValueError) as e:
            return fail(f"FASTOPT_BACKEND: {e}")
    try:
        search = QuasiRandomSearch.from_json(args.space, seed=args.seed)
    except (TypeError, ValueError) as e:
        return fail(f"SPACE.json: {e}")
    if search.points is not None and first + count > len(search.points):
        what = "--trial" if args.trial is not None else "--start + --trials"
        return fail(f"{what} goes past the {len(search.points)} fixed points that "
                    f"{args.space} lists")
    try:
        if args.format == "csv":
            w = csv.writer(out, lineterminator="\n")
            w.writerow(["trial", *search.names])
        for at in range(first, first + count, CHUNK):
            trials = search.trials(min(CHUNK, first + count - at), at)
            if args.format == "json":
                out.write("".join(json.dumps(t) + "\n" for t in trials))
            else:
                w.writerows([at + k, *(t.get(name, "") for name in search.names)]
                            for k, t in enumerate(trials))
        out.flush()
    except (TypeError, ValueError) as e:  # checked above; the machine may still refuse
        return fail(str(e))
    except BrokenPipeError:
        if out is sys.__stdout__:  # no second error when the interpreter flushes it at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 1
    return 0
