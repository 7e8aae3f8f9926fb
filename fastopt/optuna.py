r"""An Optuna sampler that draws fastopt's scrambled, shifted Halton points.

Optuna is an optional dependency: this module needs it (``pip install optuna``), while
``import fastopt`` never imports it. Import this module explicitly::

    import fastopt.optuna
    study = optuna.create_study(sampler=fastopt.optuna.QuasiRandomSampler(seed=0))

Trial number :math:`i` of the study takes row :math:`i` of the sequence, so the parameters of a
trial do not depend on the values of any other trial: the search is non-adaptive, reproducible,
and gives the same trials whatever the order in which they finish.
"""
from __future__ import annotations

import math
import numbers
import os
import secrets
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

try:
    from optuna.distributions import (BaseDistribution, CategoricalDistribution,
                                      FloatDistribution, IntDistribution)
    from optuna.samplers import BaseSampler
except ImportError as e:  # pragma: no cover - exercised only where optuna is missing
    raise ImportError("fastopt.optuna needs Optuna, an optional dependency of fastopt: "
                      "pip install optuna") from e

from .halton import halton
from .search import QuasiRandomSearch

__all__ = ["QuasiRandomSampler"]

#: Rows (or mapped trials) kept per sampler, keyed by trial number: enough for the trials that
#: run at once with ``n_jobs > 1``; an evicted row is only recomputed, never different.
CACHE_SIZE = 64


class QuasiRandomSampler(BaseSampler):
    r"""Optuna sampler over the seeded, scrambled and shifted Halton sequence of
    :func:`fastopt.halton` (the sequence behind :class:`fastopt.QuasiRandomSearch`).

    Usage: ``optuna.create_study(sampler=fastopt.optuna.QuasiRandomSampler(seed=0))``.

    Trial number :math:`i` takes row :math:`i`, :math:`x(i) \in [0, 1)^d`, of
    ``halton(., d, seed=seed, scramble=True, shift=True)``; each parameter has one dimension
    :math:`j` of it, and all parameters of a trial (continuous, integer and categorical) come
    from that one row: there is no random fallback. The coordinate :math:`u = x_j(i)` is mapped
    into the distribution Optuna asks for:

    * ``FloatDistribution(low=a, high=b)``: :math:`a + u (b - a)`;
    * ``FloatDistribution(a, b, log=True)``: :math:`\exp(\ln a + u (\ln b - \ln a))`;
    * ``FloatDistribution(a, b, step=s)``: the grid :math:`a, a + s, ..., b` of
      :math:`m = (b - a) / s + 1` points, point :math:`\min(\lfloor u m \rfloor, m - 1)`;
    * ``IntDistribution(a, b)``: :math:`a + \min(\lfloor u (b - a + 1) \rfloor, b - a)`, each
      integer equally likely;
    * ``IntDistribution(a, b, log=True)``: the log map on :math:`[a - 1/2, b + 1/2]`, rounded to
      the nearest integer;
    * ``IntDistribution(a, b, step=s)`` (:math:`s > 1`): the grid :math:`a, a + s, ..., b`,
      indexed as for a stepped float;
    * ``CategoricalDistribution(choices)`` (:math:`m` choices):
      ``choices[min(floor(u m), m - 1)]``.

    Values are clamped to :math:`[a, b]` so that rounding never leaves the range.

    **With a search space** (``space``: a fastopt/AlgoPerf search-space dict, or the path of
    its JSON file), the dimensions are the space's parameters in the space's order and
    :math:`d` is their number, so ``study.trials[i].params == QuasiRandomSearch(space,
    seed).trial(i)``: the study reproduces ``fastopt search`` trial for trial. The objective
    must ask for each parameter with the matching distribution: ``suggest_float(name, min,
    max, log=...)`` (no ``step``) for a float range, ``suggest_int(name, min, max, log=...)``
    (step 1) for an int range, ``suggest_categorical(name, feasible_points)`` for a discrete
    one; any other distribution, or a parameter the space does not have, raises a ValueError
    naming it.

    **Without a search space**, dimensions are assigned to parameter names in the order of
    their first appearance in the study (:attr:`dimensions` records it) and :math:`d` is fixed
    to ``max_dims``, so trial :math:`i` is a function of (the order in which the objective asks
    for its parameters, ``seed``, :math:`i`). ``max_dims`` is fixed up front because the
    shifted sequence is not nested in its dimension: the first :math:`k` columns of
    ``halton(n, d, seed=s)`` differ from ``halton(n, k, seed=s)`` (the random shift is drawn
    after the permutations of all :math:`d` dimensions), so every row is computed with the
    same :math:`d` and only its first columns are used. More than ``max_dims`` distinct
    parameters raise a ValueError. Parameters fixed by ``study.enqueue_trial`` take the
    enqueued value (Optuna never asks the sampler for them) and keep their place in the order
    of first appearance. In a study shared by several processes, each process records its own
    order: they agree when the objective asks for its parameters in a fixed order. A
    distribution with a single value (``low == high``, one choice) never reaches the sampler
    and takes no dimension.

    Parameters
    ----------
    space : dict, str, os.PathLike or None
        Parameter name -> specification (the format of :class:`fastopt.QuasiRandomSearch`), or
        the path of such a JSON file; None (default) builds the space from Optuna's
        distributions. A list of fixed points is refused: enqueue them with
        ``study.enqueue_trial`` instead.
    seed : int or None
        Seed of the sequence (default 0). None draws a random seed, recorded in :attr:`seed`
        so the study can be reproduced.
    max_dims : int
        Dimension of the sequence without a space (default 32); ignored with a space.

    Attributes
    ----------
    seed : int
        The seed of the sequence.
    search : QuasiRandomSearch or None
        The search over ``space``, when one is given.
    dimensions : dict
        Parameter name -> dimension index (in order of first appearance without a space; the
        space's order with one).
    """

    def __init__(self, space=None, seed: int | None = 0, *, max_dims: int = 32):
        if seed is None:
            seed = secrets.randbits(63)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be a non-negative integer or None, got "
                            f"{type(seed).__name__}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer or None, got {seed}")
        if isinstance(max_dims, bool) or not isinstance(max_dims, numbers.Integral):
            raise TypeError(f"max_dims must be a positive integer, got {type(max_dims).__name__}")
        if max_dims < 1:
            raise ValueError(f"max_dims must be >= 1, got {max_dims}")
        self.seed = int(seed)
        if space is None:
            self.search = None
            self.max_dims = int(max_dims)
        else:
            if isinstance(space, (str, bytes, os.PathLike)):
                search = QuasiRandomSearch.from_json(space, seed=self.seed)
            elif isinstance(space, dict):
                search = QuasiRandomSearch(space, seed=self.seed)
            elif isinstance(space, list):
                raise ValueError("space is a list of fixed points: there is nothing to sample; "
                                 "pass each point to study.enqueue_trial instead")
            else:
                raise TypeError(f"space must be None, a dict of parameter specifications or the "
                                f"path of a JSON search-space file, got {type(space).__name__}")
            if search.points is not None:  # a JSON file holding a list of points
                raise ValueError("space is a list of fixed points: there is nothing to sample; "
                                 "pass each point to study.enqueue_trial instead")
            self.search = search
            self.max_dims = search.d
        self.dimensions: dict[str, int] = ({name: j for j, name in enumerate(self.search.names)}
                                           if self.search is not None else {})
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()

    # -- BaseSampler ------------------------------------------------------------------------

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        """Always empty: every parameter is sampled by :meth:`sample_independent`."""
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        """Always empty: the sampler has no relative sampling."""
        return {}

    def sample_independent(self, study, trial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """The value of ``param_name`` in trial ``trial.number``: its coordinate of row
        ``trial.number`` mapped into ``param_distribution`` (see the class docstring)."""
        i = trial.number
        if self.search is not None:
            if param_name not in self.dimensions:
                raise ValueError(f"parameter {param_name!r} is not in the sampler's search space "
                                 f"(its parameters: {', '.join(self.search.names)})")
            _check_compatible(param_name, self.search.space[param_name], param_distribution)
            return self._row(i)[param_name]
        j = self._dimension(param_name, trial)
        return _map(float(self._row(i)[j]), param_distribution)

    def reseed_rng(self) -> None:
        """Does nothing, on purpose: the sampler has no random state, its points are a function
        of (seed, trial number) alone. Optuna calls this for ``n_jobs > 1`` so that copies of a
        random sampler stop repeating each other's draws; here every trial number already has
        its own row, and reseeding would break reproducibility."""

    # -- internals --------------------------------------------------------------------------

    def _dimension(self, name: str, trial) -> int:
        """The dimension of ``name``; new names are numbered in order of first appearance.

        Parameters the trial already holds (fixed by enqueue_trial, which bypass the sampler)
        are numbered first, in the order the trial suggested them.
        """
        j = self.dimensions.get(name)
        if j is not None:
            return j
        with self._lock:
            for known in (*trial.distributions, name):
                if known not in self.dimensions:
                    if len(self.dimensions) >= self.max_dims:
                        raise ValueError(
                            f"parameter {known!r} would be dimension {len(self.dimensions) + 1} "
                            f"of the sequence, more than max_dims={self.max_dims}: create the "
                            f"sampler with a larger max_dims")
                    self.dimensions[known] = len(self.dimensions)
            return self.dimensions[name]

    def _row(self, i: int):
        """Row ``i`` of the sequence (without a space) or trial ``i`` (with one), cached."""
        with self._lock:
            hit = self._cache.get(i)
            if hit is not None:
                self._cache.move_to_end(i)
                return hit
        if self.search is not None:
            value = self.search.trial(i)
        else:
            row = halton(1, self.max_dims, seed=self.seed, scramble=True, shift=True, start=i)
            if not isinstance(row, np.ndarray):  # a device backend chosen by FASTOPT_BACKEND
                from . import _device
                row = _device.to_host(row)
            value = [float(u) for u in row[0]]
        with self._lock:
            self._cache[i] = value
            self._cache.move_to_end(i)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return value

    def __repr__(self):
        where = f"space={list(self.search.names)}, " if self.search is not None else ""
        return f"QuasiRandomSampler({where}seed={self.seed}, max_dims={self.max_dims})"


def _index(u: float, m: int) -> int:
    """Index in 0 .. m-1 of the cell of [0, 1) that holds u, each cell of width 1/m."""
    return min(int(math.floor(u * m)), m - 1)


def _map(u: float, dist: BaseDistribution) -> Any:
    """The value of distribution ``dist`` at the unit coordinate ``u``."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[_index(u, len(dist.choices))]
    if isinstance(dist, IntDistribution):
        a, b, step = int(dist.low), int(dist.high), int(dist.step)
        if dist.log:  # Optuna allows log only with step 1
            lo, hi = math.log(a - 0.5), math.log(b + 0.5)
            return min(max(int(round(math.exp(lo + u * (hi - lo)))), a), b)
        m = (b - a) // step + 1
        return a + step * _index(u, m)
    if isinstance(dist, FloatDistribution):
        a, b = float(dist.low), float(dist.high)
        if dist.step is not None:
            step = float(dist.step)
            m = int(round((b - a) / step)) + 1
            return min(a + step * _index(u, m), b)
        if dist.log:
            lo, hi = math.log(a), math.log(b)
            try:
                v = math.exp(lo + u * (hi - lo))
            except OverflowError:
                v = b
        else:
            v = a + u * (b - a)
            if not math.isfinite(v):  # b - a beyond the float range
                v = (1.0 - u) * a + u * b
        return min(max(v, a), b)
    raise ValueError(f"QuasiRandomSampler cannot sample {type(dist).__name__} (Float-, Int- and "
                     f"CategoricalDistribution only)")


def _check_compatible(name: str, spec: dict, dist: BaseDistribution) -> None:
    """Raises a ValueError naming ``name`` unless ``dist`` is the distribution of ``spec``."""
    if "feasible_points" in spec:
        points = spec["feasible_points"]
        ok = isinstance(dist, CategoricalDistribution) and list(dist.choices) == list(points)
        want = f"suggest_categorical({name!r}, {points!r})"
    else:
        a, b, log = spec["min"], spec["max"], spec["scaling"] == "log"
        if spec["type"] == "int":
            ok = (isinstance(dist, IntDistribution) and dist.step == 1 and dist.low == a
                  and dist.high == b and bool(dist.log) == log)
            want = f"suggest_int({name!r}, {a!r}, {b!r}, log={log})"
        else:
            ok = (isinstance(dist, FloatDistribution) and dist.step is None and dist.low == a
                  and dist.high == b and bool(dist.log) == log)
            want = f"suggest_float({name!r}, {a!r}, {b!r}, log={log})"
    if not ok:
        raise ValueError(f"parameter {name!r}: the objective asks for {dist!r}, which does not "
                         f"match the sampler's search space {spec!r}; ask for it with {want}")

