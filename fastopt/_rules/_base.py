"""What a rule declaration is made of (see fastopt/_rules/__init__.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .._core import Scalars, real


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter: its name, default and valid interval (``real``'s bounds), or a
    bool when ``default`` is one."""
    name: str
    default: float | bool
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    doc: str = ""

    def check(self, value, where: str = ""):
        name = where + self.name
        if isinstance(self.default, bool):
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise TypeError(f"{name} must be True or False, got {value!r:.80}")
            return bool(value)
        return real(value, name, lo=self.lo, hi=self.hi, lo_open=self.lo_open,
                    hi_open=self.hi_open)


@dataclass(frozen=True)
class Rule:
    """One optimizer rule, declared once.

    ``kernel``: the name of the element math in csrc/common/optim_math.h's rule list and of its
    Numba element function (rules that differ only in their host scalars share one, as AdamW
    shares Adam's). ``state``: (name, initial value) per buffer in kernel order; a str initial
    value names the hyperparameter that gives it. ``scalars(lr=, step=, grad_scale=, **hyper)``:
    the kernel's float64 host scalars for step count ``step`` (steps already taken).
    ``reference(p, g, *states, k)``: the NumPy oracle, in place, in the storage dtype.
    ``element(p, g, a, b, c)``: one element on scalars, returning (p, a, b) (``c`` a record of
    ``_core.COEF_FIELDS`` in the arithmetic type) -- compiled by both Numba backends.
    ``nonnegative``: buffers no step can make negative (a checkpoint with negatives there is
    refused). ``torch_state``: fastopt buffer name -> the key torch.optim keeps it under.
    """
    name: str
    kernel: str
    hyper: tuple[Hyper, ...]
    state: tuple[tuple[str, float | str], ...]
    scalars: Callable[..., Scalars]
    reference: Callable
    element: Callable
    doc: str
    lr: float | None = None  # the default learning rate; None: lr must be given
    nonnegative: tuple[str, ...] = ()
    torch_state: dict = field(default_factory=dict)

    @property
    def hyper_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hyper)

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.state)

    def defaults(self) -> dict:
        return {h.name: h.default for h in self.hyper}

    def check_hyper(self, where: str = "", **given) -> dict:
        """Every hyperparameter of the rule, checked, defaults filled in. A name the rule does
        not take is a TypeError naming it; a value out of range a ValueError naming it."""
        unknown = [n for n in given if n not in self.hyper_names]
        if unknown:
            raise TypeError(f"{self.name} does not take {', '.join(map(repr, unknown))}; its "
                            f"hyperparameters are {', '.join(self.hyper_names) or 'none'}")
        return {h.name: h.check(given.get(h.name, h.default), where) for h in self.hyper}

    def initial_values(self, hyper: dict) -> tuple[tuple[str, float], ...]:
        """(buffer, initial value) for checked hyperparameters ``hyper``."""
        return tuple((n, float(hyper[v]) if isinstance(v, str) else v) for n, v in self.state)
