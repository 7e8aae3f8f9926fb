"""Analysis of a quasi-random hyperparameter study's results (pure functions, no plotting).

A study is a set of trials, each trained once and measured at some steps. Its results are a
JSON Lines file (what :meth:`fastopt.QuasiRandomSearch.record` appends) or a CSV file, one
record per (trial, step)::

    results = load_results("results.jsonl", space="tuning_search_space.json")
    findings = analyse(results, "val_error", space="tuning_search_space.json")
    print("\\n".join(findings["findings"]))

:func:`analyse` answers the questions the exploration phase of tuning asks of a study: which
trial is best and at which step (retrospective checkpoint selection), whether the best step
says the training is too long or too short, whether the best trials crowd against a boundary of
the search space, which trials were infeasible, and whether the study has sampled enough (a
bootstrap of best-of-n over the trials). Its answer is a JSON-serialisable dict, the same for
the same input.
"""
from __future__ import annotations

import csv
import json
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .search import QuasiRandomSearch, _check_spec

__all__ = ["StudyError", "Results", "load_results", "space_for", "analyse"]

#: The progress callback is called once per this many records (and once at the end).
PROGRESS_EVERY = 10_000
#: Suffixes read as JSON Lines and as CSV; any other file is sniffed.
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv",)
#: Metric strings read as non-finite numbers (lower-cased before the look-up).
_NONFINITE = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf,
              "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf}
#: Quantiles of the bootstrap, in percent.
QUANTILES = (5, 25, 50, 75, 95)
#: Bootstrap draws of more index entries than this are made a block of rows at a time.
BOOT_BLOCK = 2**22
#: One decoder for every line (NaN and Infinity tokens are accepted as Python's json does).
_DECODER = json.JSONDecoder()
#: The outer band of a range, as a fraction of it, that the boundary check looks at.
EDGE = 0.1


class StudyError(ValueError):
    """A results file or an argument of the study analysis is malformed; the message is one
    line naming the file and, where one applies, the line."""


@dataclass(frozen=True)
class Results:
    """The records of a study, in file order.

    Attributes
    ----------
    source : str
        The file the records were read from.
    names : tuple of str
        Hyperparameter names, in the space's order (or the order of the first trial's params).
    params : dict
        Trial id -> hyperparameter name -> value.
    trial, step : numpy.ndarray of int64
        Trial id and step of each record.
    metrics : dict
        Metric name -> float64 array with one value per record, NaN where not measured.
    diverged : numpy.ndarray of bool
        Whether the record was flagged as diverged.
    metric_names : tuple of str
        Metric names in the order first seen.
    measured : dict or None
        Metric name -> bool array: the record carried a value (a NaN written as "nan" is
        measured, a null or empty cell is not). None: every non-NaN value is measured.
    """

    source: str
    names: tuple
    params: dict
    trial: np.ndarray
    step: np.ndarray
    metrics: dict
    diverged: np.ndarray
    metric_names: tuple
    measured: dict | None = None

    def __len__(self) -> int:
        return int(self.trial.shape[0])

    @property
    def trials(self) -> np.ndarray:
        """Sorted unique trial ids."""
        return np.unique(self.trial)

    def was_measured(self, metric: str) -> np.ndarray:
        """Boolean mask of the records that carry a value of ``metric``."""
        if self.measured is not None and metric in self.measured:
            return self.measured[metric]
        return ~np.isnan(self.metrics[metric])


# -- values ----------------------------------------------------------------------------------

def _short(value, limit: int = 60) -> str:
    """A value for a one-line error message."""
    text = repr(value).replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_number(value) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _same(a, b) -> bool:
    """Equality of two JSON values that keeps True apart from 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _value_problem(name: str, spec: dict, value) -> str | None:
    """Why ``value`` cannot be parameter ``name`` of the space (None when it can)."""
    if "feasible_points" in spec:
        if any(_same(value, p) for p in spec["feasible_points"]):
            return None
        return (f"hyperparameter {name!r} is {_short(value)}, not one of its feasible points "
                f"{_short(spec['feasible_points'])}")
    if not _is_number(value):
        return f"hyperparameter {name!r} is not a number: {_short(value)}"
    if not math.isfinite(value):
        return f"hyperparameter {name!r} is not finite: {_short(value)}"
    if not spec["min"] <= value <= spec["max"]:
        return (f"hyperparameter {name!r} is {value!r}, outside the space's range "
                f"[{spec['min']!r}, {spec['max']!r}]")
    return None


def _metric_value(value) -> float | None:
    """A JSON metric value as a float (None when missing); ValueError when it is none."""
    kind = type(value)
    if kind is float:  # the common cases first: a file of millions of records
        return value
    if kind is int and -2**1023 < value < 2**1023:
        return float(value)
    if value is None:
        return None
    if _is_number(value):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str) and value.strip().lower() in _NONFINITE:
        return _NONFINITE[value.strip().lower()]
    raise ValueError(_short(value))


def _step_value(value, what: str) -> int:
    """A trial id or a step: a non-negative integer of int64 (an integral float is accepted)."""
    if type(value) is int and 0 <= value < 2**63:
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} is not an integer: {_short(value)}")
    if value < 0:
        raise ValueError(f"{what} is negative: {value}")
    if value >= 2**63:
        raise ValueError(f"{what} is too large for a 64-bit integer: {_short(value)}")
    return value


# -- the space --------------------------------------------------------------------------------

def _file_space(space) -> dict | None:
    """The normalised space given as a dict or a JSON file path (None for no space, or for a
    file that lists fixed points and so has no ranges)."""
    if space is None:
        return None
    if isinstance(space, dict):
        if not space:
            raise StudyError("space has no parameters")
        return {k: _check_spec(k, v) for k, v in space.items()}
    if isinstance(space, list):
        return None
    if isinstance(space, (str, bytes, os.PathLike)):
        try:
            return QuasiRandomSearch.from_json(space).space
        except (TypeError, ValueError) as e:
            raise StudyError(str(e).replace("\n", " ")) from None
    raise TypeError(f"space must be None, a dict of parameter specifications or the path of a "
                    f"JSON search-space file, got {type(space).__name__}")


def _observed_spec(values: list) -> dict:
    """The spec a parameter's observed values imply (see :func:`space_for`)."""
    if values and all(_is_number(v) for v in values):
        lo, hi = min(values), max(values)
        if lo == hi:
            return {"feasible_points": [values[0]]}
        log = lo > 0 and hi / lo >= 100
        kind = "int" if all(isinstance(v, numbers.Integral) for v in values) else "float"
        return {"min": lo, "max": hi, "scaling": "log" if log else "linear", "type": kind}
    unique = {}
    for v in values:
        unique.setdefault(repr(v), v)
    return {"feasible_points": [unique[k] for k in sorted(unique)]}


def space_for(results: Results, space=None) -> tuple[dict, str]:
    """The normalised search space of a study and where it came from.

    ``space`` (a dict, or the path of a JSON file read by
    :meth:`fastopt.QuasiRandomSearch.from_json`) gives ``(space, "file")``; its names must be
    the results' and every trial's values must lie in it. Without one (or for a file that lists
    fixed points) the space is ``"observed"``: per hyperparameter, numbers give
    ``{"min", "max", "scaling", "type"}`` with the observed extremes, ``"log"`` scaling when all
    are positive and max/min >= 100, ``"int"`` type when all are integers; other values give
    ``{"feasible_points": sorted unique values}`` (sorted by repr); a single observed value
    gives ``{"feasible_points": [value]}``.
    """
    _check_results(results)
    given = _file_space(space)
    if given is not None:
        _check_names(results, tuple(given), results.source)
        for t in sorted(results.params):
            for name, spec in given.items():
                problem = _value_problem(name, spec, results.params[t][name])
                if problem:
                    raise StudyError(f"{results.source}: trial {t}: {problem}")
        return given, "file"
    trials = sorted(results.params)
    observed = {name: _observed_spec([results.params[t][name] for t in trials
                                      if name in results.params[t]])
                for name in results.names}
    return observed, "observed"


def _check_results(results) -> None:
    if not isinstance(results, Results):
        raise TypeError(f"results must be a fastopt.study.Results (from load_results), got "
                        f"{type(results).__name__}")


def _check_names(results: Results, names: tuple, where: str) -> None:
    unknown = [n for n in results.names if n not in names]
    missing = [n for n in names if n not in results.names]
    if unknown:
        raise StudyError(f"{where}: unknown hyperparameter {unknown[0]!r} (not in the space)")
    if missing:
        raise StudyError(f"{where}: hyperparameter {missing[0]!r} of the space is not in the "
                         "results")


# -- loading ----------------------------------------------------------------------------------

class _Collector:
    """Accumulates records one at a time in linear time and memory."""

    def __init__(self, src: str, names: tuple | None, space: dict | None, progress):
        self.src, self.names, self.space, self.progress = src, names, space, progress
        self.params: dict[int, dict] = {}
        self.trial: list[int] = []
        self.step: list[int] = []
        self.diverged: list[bool] = []
        self.values: dict[str, list[float]] = {}
        self.seen: dict[str, list[bool]] = {}

    def fail(self, line: int | None, message: str):
        where = self.src if line is None else f"{self.src} line {line}"
        raise StudyError(f"{where}: {message}")

    def add(self, line: int, trial: int, step: int, params: dict | None,
            metrics: dict[str, float | None], diverged: bool) -> None:
        """One record; ``params`` None when the record carries none."""
        if params is not None:
            self._check_params(line, trial, params)
        elif trial not in self.params:
            self.fail(line, f"trial {trial} has no params (its first record must carry them)")
        n = len(self.trial)
        self.trial.append(trial)
        self.step.append(step)
        self.diverged.append(diverged)
        for name in metrics:
            if name not in self.values:
                self.values[name] = [math.nan] * n
                self.seen[name] = [False] * n
        seen = self.seen
        for name, column in self.values.items():
            v = metrics.get(name)
            if v is None:
                column.append(math.nan)
                seen[name].append(False)
            else:
                column.append(v)
                seen[name].append(True)
        if self.progress is not None and (n + 1) % PROGRESS_EVERY == 0:
            self.progress(n + 1)

    def _check_params(self, line: int, trial: int, params: dict) -> None:
        if self.names is None:
            self.names = tuple(params)
        unknown = [k for k in params if k not in self.names]
        if unknown:
            what = "(not in the space)" if self.space is not None else (
                "(not among the first trial's hyperparameters)")
            self.fail(line, f"unknown hyperparameter {unknown[0]!r} {what}")
        missing = [k for k in self.names if k not in params]
        if missing:
            self.fail(line, f"trial {trial} has no value for hyperparameter {missing[0]!r}")
        for name, value in params.items():
            if self.space is not None:
                problem = _value_problem(name, self.space[name], value)
            elif _is_number(value) and not math.isfinite(value):
                problem = f"hyperparameter {name!r} is not finite: {_short(value)}"
            else:
                problem = None
            if problem:
                self.fail(line, problem)
        ordered = {k: params[k] for k in self.names}
        if trial in self.params:
            if not _same(self.params[trial], ordered):
                self.fail(line, f"trial {trial} has params {_short(ordered)} but an earlier "
                                f"record gave {_short(self.params[trial])}")
        else:
            self.params[trial] = ordered

    def results(self) -> Results:
        n = len(self.trial)
        if n == 0:
            self.fail(None, "empty file (no records)")
        if self.progress is not None and n % PROGRESS_EVERY:
            self.progress(n)
        return Results(
            source=self.src, names=tuple(self.names or ()),
            params={t: self.params[t] for t in sorted(self.params)},
            trial=np.asarray(self.trial, dtype=np.int64),
            step=np.asarray(self.step, dtype=np.int64),
            metrics={k: np.asarray(v, dtype=np.float64) for k, v in self.values.items()},
            diverged=np.asarray(self.diverged, dtype=bool),
            metric_names=tuple(self.values),
            measured={k: np.asarray(v, dtype=bool) for k, v in self.seen.items()})


def _read_jsonl(lines, col: _Collector) -> None:
    """Feeds the records of a JSON Lines file to ``col``."""
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            rec = _DECODER.decode(text)
        except (ValueError, RecursionError) as e:
            col.fail(number, f"not JSON ({str(e).splitlines()[0] if str(e) else type(e)})")
        if not isinstance(rec, dict):
            col.fail(number, f"a record must be a JSON object, got {type(rec).__name__}")
        if "trial" not in rec or "step" not in rec or "metrics" not in rec:
            key = next(k for k in ("trial", "step", "metrics") if k not in rec)
            col.fail(number, f"record has no {key!r}")
        try:
            trial = _step_value(rec["trial"], "trial")
            step = _step_value(rec["step"], "step")
        except ValueError as e:
            col.fail(number, str(e))
        params = rec.get("params")
        if params is not None and not isinstance(params, dict):
            col.fail(number, f"params must be a JSON object, got {type(params).__name__}")
        raw = rec["metrics"]
        if not isinstance(raw, dict):
            col.fail(number, f"metrics must be a JSON object, got {type(raw).__name__}")
        metrics = {}
        for name, value in raw.items():
            try:
                metrics[name] = _metric_value(value)
            except ValueError as e:
                col.fail(number, f"metric {name!r} is not a number: {e}")
        diverged = rec.get("diverged", False)
        if diverged is False or diverged is True:
            pass
        elif diverged is None or (_is_number(diverged) and diverged in (0, 1)):
            diverged = bool(diverged)
        if not isinstance(diverged, bool):
            col.fail(number, f"diverged must be true or false, got {_short(diverged)}")
        col.add(number, trial, step, params, metrics, diverged)


def _csv_number(cell: str) -> int | float:
    """A CSV cell as an int when it spells one, else a float; ValueError otherwise."""
    text = cell.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)


def _csv_param(cell: str, spec: dict | None):
    """A hyperparameter's CSV cell as a value: a number where the cell spells one, else the
    feasible point it names, else the text itself."""
    try:
        number = _csv_number(cell)
    except ValueError:
        number = None
    if spec is not None and "feasible_points" in spec:
        for p in spec["feasible_points"]:
            if (number is not None and _is_number(p) and p == number) or str(p) == cell or (
                    json.dumps(p) == cell):
                return p
        return cell
    if number is None or (spec is None and not math.isfinite(number)):
        return cell
    return number


def _read_csv(lines, col: _Collector, params_arg: tuple | None) -> None:
    """Feeds the records of a CSV file to ``col``."""
    reader = csv.reader(lines)
    header = None
    for row in reader:
        if not row or not any(c.strip() for c in row):
            continue
        if header is None:
            header = [c.strip() for c in row]
            break
    if header is None:
        col.fail(None, "empty file (no records)")
    seen: set = set()
    dup = next((h for h in header if h in seen or seen.add(h)), None)
    if dup is not None:
        col.fail(reader.line_num, f"column {dup!r} appears twice in the header")
    names = params_arg if params_arg is not None else (
        tuple(col.space) if col.space is not None else None)
    if names is None:
        col.fail(None, "cannot tell hyperparameter columns from metric columns: pass params= "
                       "(their names) or a space")
    if col.space is not None:
        _names_match(col, names)
    for need in ("trial", "step", *names):
        if need not in header:
            col.fail(None, f"missing column {need!r}")
    col.names = names
    at = {h: i for i, h in enumerate(header)}
    metric_cols = [h for h in header if h not in ("trial", "step", "diverged", *names)]
    for row in reader:
        number = reader.line_num
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            col.fail(number, f"{len(row)} fields where the header has {len(header)}")
        try:
            trial = _step_value(_csv_int(row[at["trial"]]), "trial")
            step = _step_value(_csv_int(row[at["step"]]), "step")
        except ValueError as e:
            col.fail(number, str(e))
        cells = {n: row[at[n]] for n in names}
        filled = [n for n in names if cells[n].strip()]
        if filled and len(filled) < len(names):
            empty = next(n for n in names if not cells[n].strip())
            col.fail(number, f"column {empty!r} is empty while other hyperparameters are given")
        params = None
        if filled:
            params = {}
            for n in names:
                spec = col.space[n] if col.space is not None else None
                value = _csv_param(cells[n], spec)
                if spec is not None and "feasible_points" not in spec and not _is_number(value):
                    col.fail(number, f"column {n!r} is not a number: {_short(cells[n])}")
                params[n] = value
        metrics = {}
        for h in metric_cols:
            cell = row[at[h]].strip()
            if not cell:
                metrics[h] = None
                continue
            try:
                metrics[h] = float(cell)
            except ValueError:
                col.fail(number, f"column {h!r} is not a number: {_short(cell)}")
        diverged = False
        if "diverged" in at:
            flag = row[at["diverged"]].strip().lower()
            if flag not in ("", "true", "false", "1", "0"):
                col.fail(number, f"column 'diverged' must be true, false, 1, 0 or empty, got "
                                 f"{_short(row[at['diverged']])}")
            diverged = flag in ("true", "1")
        col.add(number, trial, step, params, metrics, diverged)


def _csv_int(cell: str):
    """A trial or step cell: the int it spells, else the float or text (rejected later)."""
    try:
        return _csv_number(cell)
    except ValueError:
        return cell


def _names_match(col: _Collector, names: tuple) -> None:
    unknown = [n for n in names if n not in col.space]
    if unknown:
        col.fail(None, f"unknown hyperparameter {unknown[0]!r} (not in the space)")
    missing = [n for n in col.space if n not in names]
    if missing:
        col.fail(None, f"hyperparameter {missing[0]!r} of the space is not among params=")


def _format_of(path) -> str:
    """"jsonl" or "csv": by the file's suffix, else by its first non-blank character."""
    lower = os.fsdecode(path).lower()
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    return "jsonl" if _first_char(path) == "{" else "csv"


def _first_char(path) -> str:
    with open(path, encoding="utf-8-sig") as f:
        for text in f:
            if text.strip():
                return text.strip()[0]
    return ""


def load_results(path, *, space=None, params=None,
                 progress: Callable[[int], Any] | None = None) -> Results:
    """Reads a study's results: a JSON Lines or CSV file, one record per (trial, step).

    JSON Lines: one object per line, ``{"trial": 3, "step": 1200, "params": {...},
    "metrics": {"val_error": 0.21}}`` with an optional ``"diverged": true``; ``params`` needs
    to appear only on a trial's first record (repeated, it must be equal). Metric values are
    numbers, null (not measured) or the strings "nan", "inf", "-inf". CSV: a header with
    ``trial``, ``step``, one column per hyperparameter (those named by ``params``, else the
    space's), one per metric and an optional ``diverged`` column (true/false/1/0/empty); an
    empty cell is not measured. The format follows the suffix (.jsonl, .json, .ndjson, .csv),
    else the first non-blank character (``{``: JSON Lines).

    With a ``space`` (dict or JSON file path), each trial's params must name exactly the
    space's parameters, with values in their ranges or among their feasible points; without
    one every trial must name the same parameters as the first. ``progress``, if given, is
    called with the number of records read so far every PROGRESS_EVERY records and at the end.
    The file is read once, line by line. Errors are :class:`StudyError`, one line naming the
    file and the line.
    """
    if isinstance(path, bool) or not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    src = os.fsdecode(path)
    given = _file_space(space)
    if params is not None:
        if isinstance(params, str) or not all(isinstance(p, str) and p for p in params):
            raise TypeError("params must be a list of hyperparameter names (non-empty strings)")
        params = tuple(params)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, got {type(progress).__name__}")
    names = tuple(given) if given is not None else params
    col = _Collector(src, names, given, progress)
    if given is not None and params is not None:
        _names_match(col, params)
    try:
        kind = _format_of(path)
        with open(path, encoding="utf-8-sig", newline="") as f:
            if kind == "jsonl":
                _read_jsonl(f, col)
            else:
                _read_csv(f, col, params)
    except UnicodeDecodeError as e:
        raise StudyError(f"{src}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise StudyError(f"{src}: cannot read it ({e.strerror or e})") from None
    except csv.Error as e:
        raise StudyError(f"{src}: not valid CSV ({e})") from None
    return col.results()


# -- analysis ---------------------------------------------------------------------------------

def _num(x) -> float | None:
    """A float for JSON: None when not finite."""
    x = float(x)
    return x if math.isfinite(x) else None


def _g(x: float) -> str:
    """A number with 4 significant digits."""
    return f"{x:.4g}"


def _render(value) -> str:
    """A hyperparameter value, compactly: numbers with 4 significant digits."""
    if isinstance(value, bool) or not _is_number(value):
        return str(value) if isinstance(value, str) else json.dumps(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return _g(value)


def _render_params(params: dict) -> str:
    return ", ".join(f"{k}={_render(v)}" for k, v in params.items())


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.3g} %"


def _segments(results: Results):
    """Records sorted by (trial, step, file order): (order, trial ids, segment index of each
    sorted record, start of each segment)."""
    ids, inverse = np.unique(results.trial, return_inverse=True)
    order = np.lexsort((np.arange(len(results)), results.step, inverse))
    seg = inverse[order]
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    return order, ids, seg, starts


def _first_flagged(flag: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    """Per segment, the sorted position of the first flagged record, or -1."""
    out = np.full(n, -1, dtype=np.int64)
    where = np.flatnonzero(flag)
    segs, first = np.unique(seg[where], return_index=True)
    out[segs] = where[first]
    return out


def _per_trial(results: Results, objective: str, goal: str, diverge_metric, diverge_above):
    """Best value and step, max step and infeasibility reasons of every trial."""
    order, ids, seg, starts = _segments(results)
    n = len(ids)
    obj = results.metrics[objective][order]
    measured = results.was_measured(objective)[order]
    step = results.step[order]
    finite = np.isfinite(obj)
    key = np.where(finite, obj if goal == "min" else -obj, np.inf)
    best_key = np.minimum.reduceat(key, starts)
    best_pos = _first_flagged(finite & (key == best_key[seg]), seg, n)
    max_step = np.maximum.reduceat(step, starts)
    reasons: list[list[str]] = [[] for _ in range(n)]
    bad = _first_flagged(measured & ~finite, seg, n)
    for i in np.flatnonzero(bad >= 0):
        p = bad[i]
        reasons[i].append(f"{objective} is {float(obj[p])} at step {int(step[p])}")
    flagged = _first_flagged(results.diverged[order], seg, n)
    for i in np.flatnonzero(flagged >= 0):
        reasons[i].append(f"it is flagged as diverged at step {int(step[flagged[i]])}")
    if diverge_above is not None:
        d = results.metrics[diverge_metric][order]
        over = results.was_measured(diverge_metric)[order] & ~(d <= diverge_above)
        first = _first_flagged(over, seg, n)
        for i in np.flatnonzero(first >= 0):
            p = first[i]
            reasons[i].append(f"{diverge_metric} is {float(d[p]):.4g} at step {int(step[p])}, "
                              f"above {diverge_above:.4g}")
    for i in np.flatnonzero(best_pos < 0):
        if not reasons[i]:
            reasons[i].append(f"it has no finite {objective}")
    rows = []
    for i, t in enumerate(ids):
        feasible = not reasons[i]
        p = best_pos[i]
        rows.append({"trial": int(t), "feasible": feasible,
                     "best_value": float(obj[p]) if feasible else None,
                     "best_step": int(step[p]) if feasible else None,
                     "max_step": int(max_step[i]),
                     "reason": None if feasible else (
                         f"Trial {int(t)} is infeasible: " + "; ".join(reasons[i]) + ".")})
    return rows


def _ranked(rows: list, goal: str) -> list:
    """Feasible rows, best first (ties: the lower trial id)."""
    sign = 1.0 if goal == "min" else -1.0
    return sorted((r for r in rows if r["feasible"]),
                  key=lambda r: (sign * r["best_value"], r["trial"]))


def _best_section(row: dict, params: dict) -> dict:
    """The best trial with the best-step warnings."""
    step, top = row["best_step"], row["max_step"]
    fraction = step / top if top > 0 else None
    warnings = []
    if fraction is not None:
        where = (f"Trial {row['trial']} reached its best value at step {step} of {top} "
                 f"({_pct(fraction)} of its training)")
        if fraction <= 0.10:
            warnings.append(f"{where}, within the first 10 %: max_train_steps is probably "
                            "larger than it needs to be.")
        elif fraction > 0.75:
            warnings.append(f"{where}, within the last 25 %: a longer training run would "
                            "probably do better.")
    return {"trial": row["trial"], "step": step, "value": _num(row["best_value"]),
            "max_step": top, "fraction": fraction, "params": params, "warnings": warnings}


def _position(spec: dict, x: float) -> float:
    """Where ``x`` lies in the spec's range, in its own scale: 0 at min, 1 at max."""
    a, b = float(spec["min"]), float(spec["max"])
    if spec["scaling"] == "log":
        if x <= 0:
            return math.nan
        return (math.log(x) - math.log(a)) / (math.log(b) - math.log(a))
    return (float(x) - a) / (b - a)


def _side(position: float) -> str | None:
    if position < EDGE:
        return "lower"
    if position > 1 - EDGE:
        return "upper"
    return None


def _boundary(space: dict, ranked: list, params: dict, k: int) -> dict:
    """Per range parameter: where the top-k trials sit and a warning when they crowd an edge."""
    out = {}
    if not ranked:
        return out
    top = ranked[:k]
    for name, spec in space.items():
        if "feasible_points" in spec:
            continue
        positions = [_position(spec, params[r["trial"]][name]) for r in top]
        side = _side(positions[0]) if math.isfinite(positions[0]) else None
        warning = None
        if side is not None:
            near = sum(1 for p in positions if math.isfinite(p) and _side(p) == side)
            if 2 * near >= len(top):
                bound = spec["min"] if side == "lower" else spec["max"]
                direction = "below" if side == "lower" else "above"
                warning = (f"The best {name} values crowd the {side} boundary: the best trial's "
                           f"{name}={_render(params[top[0]['trial']][name])} and {near} of the "
                           f"top {len(top)} trials lie in the {side} 10 % of the range "
                           f"[{_render(spec['min'])}, {_render(spec['max'])}]; extend the "
                           f"search space {direction} {name}={_render(bound)}.")
        out[name] = {"scaling": spec["scaling"], "best_position": _num(positions[0]),
                     "top_positions": [_num(p) for p in positions], "side": side,
                     "warning": warning}
    return out


def _edges(spec: dict) -> np.ndarray:
    """11 bin edges over [min, max], equally spaced in the parameter's scale."""
    a, b = float(spec["min"]), float(spec["max"])
    if spec["scaling"] == "log":
        edges = np.exp(np.linspace(math.log(a), math.log(b), 11))
    else:
        edges = np.linspace(a, b, 11)
    edges[0], edges[-1] = a, b
    return edges


def _isolation(space: dict, ranked: list, params: dict) -> dict:
    """Per range parameter: the best feasible trial in each of 10 bins of its range."""
    out = {}
    for name, spec in space.items():
        if "feasible_points" in spec:
            continue
        best: list = [None] * 10
        trial: list = [None] * 10
        for r in ranked:  # best first: the first trial to reach a bin is its best
            p = _position(spec, params[r["trial"]][name])
            if not math.isfinite(p):
                continue
            i = min(max(int(math.floor(p * 10)), 0), 9)
            if trial[i] is None:
                best[i], trial[i] = _num(r["best_value"]), r["trial"]
        out[name] = {"edges": [_num(e) for e in _edges(spec)], "best": best, "trial": trial}
    return out


def _budgets(n: int) -> list:
    """1, 2, 4, ... below n, with n // 2 and n."""
    out = {n, n // 2}
    b = 1
    while b < n:
        out.add(b)
        b *= 2
    return sorted(v for v in out if v >= 1)


def _best_of(rng, values: np.ndarray, n_boot: int, n: int, goal: str) -> np.ndarray:
    """Best of n values drawn with replacement, n_boot times: ``rng.integers(0, N, size=
    (n_boot, n))``, drawn a block of rows at a time when large (the same numbers)."""
    reduce = np.min if goal == "min" else np.max
    rows = max(1, BOOT_BLOCK // n)
    out = np.empty(n_boot)
    for at in range(0, n_boot, rows):
        m = min(rows, n_boot - at)
        out[at:at + m] = reduce(values[rng.integers(0, len(values), size=(m, n))], axis=1)
    return out


def _bootstrap(values: np.ndarray, goal: str, n_boot: int, seed: int) -> dict:
    """Quantiles of the best-of-n value over bootstrap resamples of the trials, per budget."""
    rng = np.random.default_rng(seed)
    budgets = _budgets(len(values))
    qs = {str(q): [] for q in QUANTILES}
    iqr = []
    with np.errstate(invalid="ignore"):
        for n in budgets:
            best = _best_of(rng, values, n_boot, n, goal)
            q = np.quantile(best, [q / 100 for q in QUANTILES])
            for name, v in zip(qs, q):
                qs[name].append(_num(v))
            iqr.append(_num(q[3] - q[1]))
    at = dict(zip(budgets, iqr))
    n = len(values)
    return {"budgets": budgets, "quantiles": qs, "iqr": iqr, "iqr_full": at.get(n),
            "iqr_half": at.get(n // 2), "n_boot": n_boot, "seed": seed}


def _bootstrap_sentence(boot: dict, n: int) -> str:
    full, half = boot["iqr_full"], boot["iqr_half"]
    if n < 2:
        return ("With a single trial the bootstrap cannot tell whether the study has sampled "
                "enough.")
    head = f"With {n} trials the best value's interquartile range over bootstrap resamples is "
    if full is None:
        return (head + "not finite (too many resamples hold only infeasible trials): the study "
                "needs more feasible trials.")
    if half is None:
        return (head + f"{_g(full)}, against an unbounded one with {n // 2} (resamples of "
                "infeasible trials only): more trials would still narrow it.")
    tail = ("more trials would still narrow it" if full < 0.5 * half
            else "the study has sampled enough to pin the best value down")
    return head + f"{_g(full)}, against {_g(half)} with {n // 2}: {tail}."


def _grad_norm(results: Results, trial: int) -> dict:
    v = results.metrics["grad_norm"][results.trial == trial]
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"trial": trial, "count": 0, "p90": None, "median": None}
    return {"trial": trial, "count": int(v.size), "p90": _num(np.percentile(v, 90)),
            "median": _num(np.median(v))}


def _check_options(results, objective, goal, diverge_metric, diverge_above, top_k, n_boot,
                   seed, curves):
    """Validated (diverge_metric, diverge_above) of :func:`analyse`'s arguments."""
    _check_results(results)
    metrics = ", ".join(repr(m) for m in results.metric_names) or "none"
    if not isinstance(objective, str) or objective not in results.metrics:
        raise StudyError(f"{results.source}: the objective {_short(objective)} is not a "
                         f"metric of the results; the metrics are {metrics}")
    if goal not in ("min", "max"):
        raise ValueError(f"goal must be 'min' or 'max', got {_short(goal)}")
    for value, name, lo in ((top_k, "top_k", 1), (n_boot, "n_boot", 1), (seed, "seed", 0),
                            (curves, "curves", 0)):
        if value is None and name == "top_k":
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
        if value < lo:
            raise ValueError(f"{name} must be >= {lo}, got {value}")
    if diverge_above is None:
        if diverge_metric is not None:
            raise ValueError("diverge_metric needs diverge_above (the threshold it is "
                             "compared with)")
        return None, None
    if not _is_number(diverge_above) or math.isnan(diverge_above):
        raise ValueError(f"diverge_above must be a number, got {_short(diverge_above)}")
    if diverge_metric is None:
        diverge_metric = "train_loss" if "train_loss" in results.metrics else objective
    elif diverge_metric not in results.metrics:
        raise StudyError(f"{results.source}: diverge_metric {_short(diverge_metric)} is not a "
                         f"metric of the results; the metrics are {metrics}")
    return diverge_metric, float(diverge_above)


def analyse(results: Results, objective: str, *, goal: str = "min", space=None,
            diverge_metric: str | None = None, diverge_above: float | None = None,
            top_k: int | None = None, n_boot: int = 2000, seed: int = 0,
            curves: int = 5) -> dict:
    """The findings of a study: a JSON-serialisable dict, identical for identical input.

    Parameters
    ----------
    results : Results
        From :func:`load_results`.
    objective : str
        The metric to optimise; ``goal`` says whether lower ("min") or higher ("max") is better.
    space : dict, path or None
        The search space (see :func:`space_for`); None: the observed ranges.
    diverge_metric, diverge_above : str, float
        A trial whose ``diverge_metric`` (default "train_loss" when logged, else the objective)
        exceeds ``diverge_above`` (or is NaN) at any record is infeasible.
    top_k : int or None
        How many of the best trials the boundary check looks at; default
        max(3, ceil(feasible / 10)), at most the feasible count.
    n_boot, seed : int
        Bootstrap resamples and the seed of their generator.
    curves : int
        How many of the best trials to list for learning-curve plots.

    Returns
    -------
    dict with keys ``objective, goal, source, n_records, n_trials, n_feasible, space,
    space_from, infeasible, infeasible_reasons, trials, best, boundary, bootstrap, isolation,
    curves, grad_norm, findings``. A trial is infeasible when a record has a non-finite
    objective (a missing one does not count), is flagged diverged, or exceeds
    ``diverge_above``, or when the trial has no finite objective. Non-finite numbers are None.
    """
    diverge_metric, diverge_above = _check_options(
        results, objective, goal, diverge_metric, diverge_above, top_k, n_boot, seed, curves)
    space, space_from = space_for(results, space)
    rows = _per_trial(results, objective, goal, diverge_metric, diverge_above)
    ranked = _ranked(rows, goal)
    params = results.params
    n_trials, n_feasible = len(rows), len(ranked)
    infeasible = [r for r in rows if not r["feasible"]]
    k = min(top_k if top_k is not None else max(3, math.ceil(n_feasible / 10)), n_feasible)

    worst = math.inf if goal == "min" else -math.inf
    values = np.array([r["best_value"] if r["feasible"] else worst for r in rows], dtype=float)
    boot = _bootstrap(values, goal, int(n_boot), int(seed))
    best = _best_section(ranked[0], dict(params[ranked[0]["trial"]])) if ranked else None
    boundary = _boundary(space, ranked, params, k)
    grad = (_grad_norm(results, best["trial"])
            if best is not None and "grad_norm" in results.metrics else None)

    findings = []
    if best is not None:
        findings.append(f"The best {objective} ({goal}imised) is {_g(best['value'])}, at step "
                        f"{best['step']} of trial {best['trial']} "
                        f"({_render_params(best['params'])}).")
        findings += best["warnings"]
    else:
        findings.append(f"No trial is feasible: each of the {n_trials} trials diverged or "
                        f"never reached a finite {objective}.")
    findings += [b["warning"] for b in boundary.values() if b["warning"]]
    if infeasible:
        ids = [r["trial"] for r in infeasible]
        listed = ", ".join(map(str, ids[:10])) + (f" and {len(ids) - 10} more"
                                                  if len(ids) > 10 else "")
        findings.append(f"{len(ids)} of {n_trials} trials are infeasible and left out of the "
                        f"analysis: {listed}.")
    else:
        findings.append(f"All {n_trials} trials are feasible.")
    findings.append(_bootstrap_sentence(boot, n_trials))
    if space_from == "observed":
        findings.append("No search space was given: the ranges are the observed ones, so the "
                        "boundary check only says where the best trials sit among those tried.")
    if grad is not None:
        if grad["count"]:
            findings.append(f"The best trial's gradient norm has median {_g(grad['median'])} "
                            f"and 90th percentile {_g(grad['p90'])} over {grad['count']} "
                            "records; a clipping threshold near the 90th percentile would clip "
                            "about one step in ten.")
        else:
            findings.append("The best trial logged no finite grad_norm.")

    return {
        "objective": objective, "goal": goal, "source": results.source,
        "n_records": len(results), "n_trials": n_trials, "n_feasible": n_feasible,
        "space": space, "space_from": space_from,
        "infeasible": [r["trial"] for r in infeasible],
        "infeasible_reasons": {str(r["trial"]): r["reason"] for r in infeasible},
        "trials": [{"trial": r["trial"], "params": dict(params[r["trial"]]),
                    "feasible": r["feasible"], "best_value": _num(r["best_value"])
                    if r["feasible"] else None, "best_step": r["best_step"],
                    "max_step": r["max_step"]} for r in rows],
        "best": best, "boundary": boundary, "bootstrap": boot,
        "isolation": _isolation(space, ranked, params),
        "curves": {"trials": [r["trial"] for r in ranked[:curves]]},
        "grad_norm": grad, "findings": findings,
    }
