"""Reference optimizer updates (SPEC §2), one array at a time, in the storage dtype.

Each rule's NumPy reference lives in its declaration (fastopt/_rules): scalars arrive as
float64 and are rounded to the storage dtype exactly once, as the native kernels do, and the
order of operations there is the one every backend follows.
"""
from __future__ import annotations

from .._validate import check_optim_kernel_args
from .._core import (G_ROW, G_SCALE, G_SKIPPED, GuardedCall, guard_decide,  # noqa: F401
                     guard_outcome)
from .._rules import RULES


def optim_update(rule: str, params, grads, states, k):
    """Apply ``rule`` in place to every (param, grad, state...) triple; ``k`` is a Scalars."""
    check_optim_kernel_args(rule, params, grads, states, k)  # no silent broadcasting either
    fn = RULES[rule].reference
    for i, p in enumerate(params):
        fn(p, grads[i], *(s[i] for s in states), k)


def guarded_step(call: GuardedCall):
    """One step whose norm, clip, skip and count live in ``call.ctl``: the device kernels'
    contract.

    ``call.rows[j]`` are the Scalars for step count t_lo + j (gscale ignored); the norm of the
    grads is ``fastopt.global_norm``'s, bit for bit; ``guard_decide`` takes the decisions;
    unless the step is skipped, the rule runs with rows[row] and grad_scale = the decided scale.
    ``call.mirror`` is a ``_device.Mapped`` (host memory the device writes) or None.
    """
    (rule, params, grads, states, rows, t_lo, limit, skip_nonfinite, ctl, slot, seq,
     mirror) = call
    from .norm import norm_value  # the reference norm, the one every backend must match
    norm = norm_value(grads)
    guard_decide(ctl, norm, len(rows), t_lo, limit, skip_nonfinite, slot, seq,
                 None if mirror is None else mirror.host)
    if not ctl[0, G_SKIPPED]:
        k = rows[int(ctl[0, G_ROW])]._replace(gscale=float(ctl[0, G_SCALE]))
        optim_update(rule, params, grads, states, k)
