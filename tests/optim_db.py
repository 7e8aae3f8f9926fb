"""The optimizer database: one record per rule, which every optimizer test reads.

A record (``OptimInfo``) holds what the tests need to know about a rule: its declaration
(``fastopt._rules.RULES``) and public class; valid hyperparameter rows (the defaults row ``{}``
first, then non-default ones); error rows ``(kwargs, exception type, message regex)`` for bad
hyperparameters; valid edge rows (the values at the ends of each declared range); and the CPU
backends and dtypes its kernel exists in (``fastopt._registry.KERNELS``). A new rule is tested
everywhere once it has a record: most of one is derived from the declaration (error rows and
edge rows from each ``Hyper``'s range, unknown-name rows from the other rules' hyperparameters,
backends and dtypes from the registry); only ``_HAND`` below is written by hand -- the
non-default rows, and errors no declaration states (torch's spellings of hyperparameters).
``tests/test_optim.py::test_every_rule_has_a_record`` fails for a rule with no ``_HAND`` entry.

The idea of PyTorch's ``OptimizerInfo``/``optim_db`` (torch/testing/_internal/
common_optimizers.py), not its code. This module imports neither pytest nor hypothesis (the
MPI workers import it too); ``hyper_strategy`` imports hypothesis when called.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

from fastopt import _registry
from fastopt._rules import RULES, Hyper, Rule
from fastopt.optim import CLASSES

__all__ = ["DB", "OptimInfo", "ErrorRow", "MISSING", "LR", "get"]


@dataclass(frozen=True)
class ErrorRow:
    """Keyword arguments (besides valid params, grads, state and step) that must be refused
    with ``exc`` whose message matches ``match`` (``re.search``) and names ``name``.
    ``unknown``: the rule does not take ``name`` at all (else its value is bad)."""
    kwargs: dict
    exc: type
    match: str
    name: str
    unknown: bool = False

    @property
    def id(self) -> str:
        return ",".join(f"{k}={_short(v)}" for k, v in self.kwargs.items())


@dataclass(frozen=True)
class OptimInfo:
    """One rule's record (see the module docstring)."""
    name: str
    decl: Rule
    cls: type | None
    rows: tuple[dict, ...]  # rows[0] == {}: the defaults
    errors: tuple[ErrorRow, ...]
    edges: tuple[dict, ...]  # one hyperparameter (or lr) at an end of its range: accepted
    backends: dict  # CPU backend -> dtypes, from KERNELS
    device_backends: dict  # device backend -> dtypes, from KERNELS
    complete: bool  # False: no hand-written entry (a new rule): the test of the db fails

    @property
    def kernel(self) -> str:
        return f"optim.{self.name}"

    @property
    def lr(self) -> float:
        """A learning rate for tests: the rule's default, else 1e-2."""
        return 1e-2 if self.decl.lr is None else self.decl.lr

    @property
    def hyper_names(self) -> tuple[str, ...]:
        return self.decl.hyper_names

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.decl.state_names

    @property
    def nonnegative(self) -> tuple[str, ...]:
        return self.decl.nonnegative

    def hyper(self, row: dict) -> dict:
        """Every hyperparameter for ``row``, the defaults filled in."""
        return {**self.decl.defaults(), **row}

    def cpu_pairs(self) -> list[tuple[str, object]]:
        """(backend, dtype) for every CPU backend and dtype the registry lists."""
        return [(b, dt) for b, dts in self.backends.items() for dt in dts]

    def accepts(self, name: str, value) -> bool:
        """Whether ``value`` is legal for ``name`` (``lr`` or a hyperparameter this rule takes),
        from the declared range alone: an independent oracle for the validation."""
        if name == "lr":
            return _in_range(value, 0, None, False, False)
        h = next((h for h in self.decl.hyper if h.name == name), None)
        if h is None:
            return False
        if isinstance(h.default, bool):
            return type(value) in (bool, int) and value in (0, 1)
        return _in_range(value, h.lo, h.hi, h.lo_open, h.hi_open)


# -- what cannot be derived: written by hand -------------------------------------------------------

#: rule -> (non-default valid rows, hand-written error rows as (kwargs, exc, regex, name)).
#: Rows kept from the tables the test files had before this database: tests/test_optim.py's
#: HYPER, tests/test_clip_fused.py's weight_decay=0.01, tests/test_native_boundary.py's
#: weight_decay=0.01 + momentum=0.9, tests/mpi_workers/checks.py's AdamW weight_decay=0.1 and
#: tests/test_bad_input.py's out-of-range values.
_HAND: dict[str, tuple[tuple[dict, ...], tuple]] = {
    "sgd": (({"weight_decay": 0.1}, {"weight_decay": 0.01}),
            ()),
    "momentum": (({"momentum": 0.5, "weight_decay": 0.01}, {"weight_decay": 0.01}),
                 ({"momentum": -0.5}, {"dampening": 0.1}, {"nesterov": True})),
    "nesterov": (({"momentum": 0.99, "weight_decay": 0.01}, {"weight_decay": 0.01}),
                 ({"dampening": 0.1}, {"nesterov": True})),
    "rmsprop": (({"rho": 0.5, "momentum": 0.9, "eps": 1e-3, "weight_decay": 0.01},
                 {"weight_decay": 0.01}, {"momentum": 0.9, "weight_decay": 0.01}),
                ({"alpha": 0.99}, {"centered": True})),
    "adam": (({"beta1": 0.5, "beta2": 0.9, "eps": 1e-3, "weight_decay": 0.1},
              {"torch_compat": True, "weight_decay": 0.01}, {"weight_decay": 0.01}),
             ({"beta2": -0.1}, {"eps": -1.0}, {"weight_decay": -1}, {"lr": -1e-3},
              {"betas": (0.9, 0.999)}, {"amsgrad": True})),
    "adamw": (({"weight_decay": 0.3, "beta1": 0.0}, {"torch_compat": True},
               {"weight_decay": 0.1}),
              ({"betas": (0.9, 0.999)}, {"amsgrad": True})),
    "nadam": (({"beta1": 0.8, "beta2": 0.95, "weight_decay": 0.05}, {"weight_decay": 0.01}),
              ({"betas": (0.9, 0.999)}, {"momentum_decay": 4e-3})),
    "lion": (({"beta1": 0.5, "beta2": 0.9, "weight_decay": 0.1}, {"weight_decay": 0.0},
              {"weight_decay": 0.01}),
             ({"betas": (0.9, 0.99)},)),
    "adagrad": (({"lr_decay": 0.1, "weight_decay": 0.01, "initial_accumulator_value": 0.5,
                  "eps": 1e-3}, {"weight_decay": 0.01}),
                ({"initial_accumulator": 0.1},)),
}

#: Practical fuzzing ranges for hyperparameters whose declared range has no upper end.
FUZZ_HI = {"weight_decay": 0.5, "momentum": 0.99, "eps": 1e-2, "lr_decay": 1.0,
           "initial_accumulator_value": 1.0}


# -- what is derived from the declarations ---------------------------------------------------------

#: lr is every rule's (not a Hyper): [0, inf), checked by the classes and functional.update.
LR = Hyper("lr", 1e-2, lo=0)
#: A message that names an argument the rule does not take: the classes ("Adam: got an
#: unexpected keyword argument 'x'"), functional ("adam does not take 'x'; ...") and groups.
_UNKNOWN = r"(does not take|unexpected keyword argument) (.*, )?'{}'"


def _short(v) -> str:
    if isinstance(v, numbers.Integral) and not isinstance(v, bool) and abs(v) > 10**30:
        return f"int{int(v).bit_length()}bits"
    return repr(v)


def _in_range(value, lo, hi, lo_open, hi_open) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        v = float(value)
    except (OverflowError, ValueError, TypeError):
        return False
    if not math.isfinite(v):
        return False
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    if hi is not None and (v >= hi if hi_open else v > hi):
        return False
    return True


def _interval(h: Hyper) -> str:
    """The interval as the validation words it: [0, 1), [0, inf)."""
    return ("(" if h.lo_open else "[") + ("-inf" if h.lo is None else repr(h.lo)) + ", " + \
        ("inf" if h.hi is None else repr(h.hi)) + (")" if h.hi_open or h.hi is None else "]")


def _range_error(h: Hyper, value) -> ErrorRow:
    """The row for ``h = value``, a value outside its declared range (or not a number)."""
    n = re.escape(h.name)
    if isinstance(h.default, bool):
        return ErrorRow({h.name: value}, TypeError, rf"{n} must be True or False", h.name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return ErrorRow({h.name: value}, TypeError, rf"{n} must be a real number", h.name)
    try:
        float(value)
    except OverflowError:
        return ErrorRow({h.name: value}, ValueError, rf"{n} must be a finite real number",
                        h.name)
    return ErrorRow({h.name: value}, ValueError,
                    rf"{n} must be finite and in {re.escape(_interval(h))}, got", h.name)


def _bad_values(h: Hyper) -> list:
    """Values outside ``h``'s declared range, each end probed at its nearest double."""
    if isinstance(h.default, bool):
        return ["yes", 2, -1, 0.5, None]
    out = []
    if h.lo is not None:
        if h.lo_open:
            out.append(h.lo)
        out += [math.nextafter(h.lo, -math.inf), h.lo - 1]
    if h.hi is not None:
        if h.hi_open:
            out.append(h.hi)
        out += [math.nextafter(h.hi, math.inf), h.hi + 1]
    return out + [math.nan, math.inf, -math.inf, 10**400, "0.1", None, True]


def _edge_values(h: Hyper) -> list:
    """Values at the ends of ``h``'s declared range, inside it."""
    if isinstance(h.default, bool):
        return [True, False, 1, 0]
    out = []
    if h.lo is not None:
        out.append(math.nextafter(h.lo, math.inf) if h.lo_open else h.lo)
    if h.hi is not None:
        out.append(math.nextafter(h.hi, -math.inf) if h.hi_open else h.hi)
    else:
        out.append(1e6)
    return out


def _unknown(rule: str, name: str, value) -> ErrorRow:
    return ErrorRow({name: value}, TypeError, _UNKNOWN.format(re.escape(name)), name, True)


def _dedup(rows):
    seen, out = set(), []
    for r in rows:
        key = repr(sorted(r.items())) if isinstance(r, dict) else repr((r.kwargs, r.exc))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _record(name: str, decl: Rule) -> OptimInfo:
    hand = _HAND.get(name)
    extra_rows, extra_errors = hand if hand is not None else ((), ())
    # valid rows: the defaults first; rows that set the same values as another are dropped
    rows, seen = [], []
    for row in ({},) + tuple(extra_rows):
        full = {**decl.defaults(), **row}
        if full not in seen:
            seen.append(full)
            rows.append(dict(row))
    errors = [_range_error(LR, v) for v in _bad_values(LR)]
    for h in decl.hyper:
        errors += [_range_error(h, v) for v in _bad_values(h)]
    # the names other rules take and this one does not, each with a value legal there
    others = {h.name: h.default for r in RULES.values() for h in r.hyper
              if h.name not in decl.hyper_names}
    errors += [_unknown(name, n, v) for n, v in others.items()]
    for kwargs in extra_errors:
        (k, v), = kwargs.items()
        h = LR if k == "lr" else next((h for h in decl.hyper if h.name == k), None)
        errors.append(_unknown(name, k, v) if h is None else _range_error(h, v))
    edges = [{"lr": v} for v in _edge_values(LR)]
    edges += [{h.name: v} for h in decl.hyper for v in _edge_values(h)]
    table = _registry.KERNELS.get(f"optim.{name}", {})
    return OptimInfo(
        name=name, decl=decl, cls=CLASSES.get(name), rows=tuple(rows),
        errors=tuple(_dedup(errors)), edges=tuple(_dedup(edges)),
        backends={b: tuple(d) for b, d in table.items() if b in _registry.CPU_BACKENDS},
        device_backends={b: tuple(d) for b, d in table.items()
                         if b in _registry.DEVICE_BACKENDS},
        complete=hand is not None and name in CLASSES)


#: rule -> its record, in the order of fastopt._rules.RULES (a record for every rule: for one
#: without a hand-written entry the derived parts still run, and the db's own test fails).
DB: dict[str, OptimInfo] = {name: _record(name, decl) for name, decl in RULES.items()}
#: Rules with no hand-written entry or no public class (must be empty).
MISSING = tuple(n for n, r in DB.items() if not r.complete)
#: Hand-written entries for rules that do not exist (must be empty).
STALE = tuple(n for n in _HAND if n not in RULES)


def get(rule: str) -> OptimInfo:
    return DB[rule]


def hyper_strategy(rec: OptimInfo):
    """A hypothesis strategy drawing a full hyperparameter row for ``rec`` inside each declared
    range (bounded above by ``FUZZ_HI`` where the declaration has no upper end)."""
    from hypothesis import strategies as st

    parts = {}
    for h in rec.decl.hyper:
        if isinstance(h.default, bool):
            parts[h.name] = st.booleans()
            continue
        lo = 0.0 if h.lo is None else float(h.lo)
        hi = FUZZ_HI.get(h.name, max(1.0, 10 * float(h.default))) if h.hi is None \
            else float(h.hi)
        parts[h.name] = st.floats(lo, hi, exclude_min=h.lo_open,
                                  exclude_max=h.hi is not None and h.hi_open)
    return st.fixed_dictionaries(parts)
