"""What one optimizer step did (``StepResult``), and guarded steps on the device
(``DevicePipeline``): the norm pass, the clip/skip decision and the step count stay on the
device, so ``step`` queues its kernels and returns at once.

The host cannot know whether earlier guarded steps were skipped, so it hands the kernels the
scalars of every step count still possible (t_lo .. t_lo + unread steps) and the device picks
the row of its own count (``_core.GuardedCall``). Each step's decisions land in its slot row of
the control array and, with the issue number written last, in host-mapped memory (the
mirror): finished steps are read from there without waiting. After GUARD_WINDOW unread steps
the host waits for the device once to narrow the window.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from . import _device
from ._core import (G_APPLIED, G_CLIPPED, G_NORM, G_SEQ, G_SKIPPED, GUARD_WIDTH, GUARD_WINDOW,
                    GuardedCall, Scalars)


class StepResult:
    """What one ``step`` did: the unclipped gradient norm (None when not computed), whether the
    gradients were scaled down, whether the step was skipped, and the learning rate used.

    A guarded step on device arrays (see ``Optimizer.step``) returns at once and fills these in
    from the device when one of them is first read; ``pending`` says whether that is still to
    come (reading waits for the device)."""

    __slots__ = ("_grad_norm", "_clipped", "_skipped", "_lr", "_owner")

    def __init__(self, grad_norm, clipped, skipped, lr, *, _owner=None):
        self._grad_norm, self._clipped, self._skipped, self._lr = grad_norm, clipped, skipped, lr
        self._owner = _owner

    def _get(self, field):
        if self._owner is not None:
            self._owner.settle(self)
        return getattr(self, field)

    grad_norm = property(lambda self: self._get("_grad_norm"))
    clipped = property(lambda self: self._get("_clipped"))
    skipped = property(lambda self: self._get("_skipped"))
    lr = property(lambda self: self._get("_lr"))
    pending = property(lambda self: self._owner is not None)

    def _fields(self):
        return (self.grad_norm, self.clipped, self.skipped, self.lr)

    def __eq__(self, other):  # a NaN norm equals a NaN norm: the same outcome
        if not isinstance(other, StepResult):
            return NotImplemented
        return all(a == b or (a != a and b != b) for a, b in zip(self._fields(), other._fields()))

    __hash__ = None

    def __repr__(self):
        if self.pending:
            return "StepResult(<on the device>)"
        return (f"StepResult(grad_norm={self._grad_norm!r}, clipped={self._clipped!r}, "
                f"skipped={self._skipped!r}, lr={self._lr!r})")


class DevicePipeline:
    """The guarded steps of one optimizer: the control array (``_core.GUARD_*``) on the
    params' device, its host-mapped mirror (None if the array library has no pinned memory),
    the step count the host knows (``count``: t_lo) and the results not read yet.

    ``scalars_at(t)``: the Scalars of step count t; ``lr_at(t)``: the learning rate a
    StepResult reports for it."""

    def __init__(self, like, step_count: int, *, scalars_at: Callable[[int], Scalars],
                 lr_at: Callable[[int], float]):
        ctl = np.zeros((GUARD_WINDOW + 1, GUARD_WIDTH))
        ctl[0, G_APPLIED] = step_count
        self.ctl = _device.from_host(like, ctl)
        self.mirror = _device.mapped(like, ctl.shape)
        self.count = step_count
        self.pending = []  # (StepResult, slot, issue number) in issue order
        self.issued = 0
        self._scalars_at, self._lr_at = scalars_at, lr_at
        self._rows: dict[int, Scalars] = {}

    def issue(self, backend, rule, params, grads, states, limit, skip_nonfinite) -> StepResult:
        """Queue one guarded step on ``backend`` (a BackendModule); a pending StepResult."""
        if self.pending:
            self.harvest()  # finished steps narrow the window (and warn) without waiting
            if len(self.pending) + 1 > GUARD_WINDOW:
                self.settle()  # the device is a whole window behind: waiting costs nothing
        rows = [self._row(t) for t in range(self.count, self.count + len(self.pending) + 1)]
        slot, seq = 1 + self.issued % GUARD_WINDOW, self.issued + 1
        backend.guarded_step(GuardedCall(rule, params, grads, states, rows, self.count, limit,
                                         skip_nonfinite, self.ctl, slot, seq, self.mirror))
        self.issued = seq
        result = StepResult(None, None, None, None, _owner=self)
        self.pending.append((result, slot, seq))
        return result

    def _row(self, t) -> Scalars:
        """The Scalars of step count t (cached: each step needs a window of them)."""
        k = self._rows.get(t)
        if k is None:
            if len(self._rows) > 4 * GUARD_WINDOW:
                self._rows = {u: v for u, v in self._rows.items() if u >= self.count}
            k = self._rows[t] = self._scalars_at(t)
        return k

    def _fill(self, result, d):
        """A pending StepResult from its decisions row ``d``; warns if the step was skipped."""
        t = int(d[G_APPLIED])  # the count before this step
        result._grad_norm = float(d[G_NORM])
        result._clipped, result._skipped = bool(d[G_CLIPPED]), bool(d[G_SKIPPED])
        result._lr = self._lr_at(t)
        result._owner = None
        if result._skipped:
            warnings.warn(f"skipped step {t}: the gradient norm is {result._grad_norm}; "
                          "parameters, state and step count are unchanged", RuntimeWarning,
                          stacklevel=4)

    def harvest(self):
        """Take the decisions of the steps that have finished, oldest first, from the mirror:
        no waiting. A row counts once its issue number is there (the device writes that
        last)."""
        if self.mirror is None:
            return
        host = self.mirror.host
        while self.pending:
            result, slot, seq = self.pending[0]
            if host[slot, G_SEQ] != seq:  # read before the row: x86 keeps loads in order
                return
            d = host[slot].copy()
            self._fill(result, d)
            self.pending.pop(0)
            self.count = int(d[G_APPLIED]) + (0 if d[G_SKIPPED] else 1)

    def settle(self, result=None):
        """Read the decisions of every unread step (``result``: at least up to that one), fill
        in their StepResults, warn about skipped steps, and take the step count. Finished steps
        come from the mirror; the rest wait for the device."""
        if not self.pending:
            return
        self.harvest()
        if not self.pending or (result is not None and result._owner is None):
            return
        _device.synchronize(self.ctl)  # the steps may have run on streams other than this one
        ctl = _device.to_host(self.ctl)
        for result, slot, _ in self.pending:
            self._fill(result, ctl[slot])
        self.pending.clear()
        self.count = int(ctl[0, G_APPLIED])
