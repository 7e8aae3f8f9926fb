"""The optimizer rules, each declared once (fastopt/_rules/<family>.py).

A declaration (``_base.Rule``) holds a rule's hyperparameters with their defaults and valid
ranges, its state buffers and their initial values, its float64 host scalars, its NumPy
reference, its element function for the Numba backends and its torch state keys. Everything
else reads it: the public classes, ``fastopt.functional``, validation, the dispatch tables, the
backends, ``fastopt.distributed``, ``fastopt bench`` and the tests. In C++ and CUDA a rule is one
struct in csrc/common/optim_math.h and one line of its FASTOPT_OPTIM_RULES list.

Adding a rule: a module here (or a Rule in a family's module) listed in _FAMILIES, its struct
and list line, and a thin public class in fastopt/optim.py.
"""
from __future__ import annotations

from . import adagrad, adam, lion, rmsprop, sgd
from ._base import Hyper, Rule

_FAMILIES = (sgd, rmsprop, adam, lion, adagrad)

#: rule name -> its declaration, in the order the documentation lists them
RULES: dict[str, Rule] = {r.name: r for fam in _FAMILIES for r in fam.RULES}
#: the element-math kernels (several rules may share one)
KERNELS: tuple[str, ...] = tuple(dict.fromkeys(r.kernel for r in RULES.values()))

__all__ = ["RULES", "KERNELS", "Hyper", "Rule", "get"]


def get(rule) -> Rule:
    """The declaration of ``rule``; a ValueError listing the rules if there is none."""
    r = RULES.get(rule) if isinstance(rule, str) else None
    if r is None:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r:.80}")
    return r
