r"""Learning-rate schedules: functions of the step t (0 for the first update) returning eta_t.

Any callable ``t -> float`` works wherever fastopt takes a schedule; these are the common ones,
as picklable objects (so a schedule can travel to worker processes).
"""
from __future__ import annotations

import math

from ._validate import MAX_STEP, check_step, integer, real

__all__ = ["constant", "linear_warmup", "linear_decay", "cosine_decay", "warmup_then",
           "warmup_cosine"]


class Schedule:
    """Base class: a picklable callable ``t -> eta_t``."""

    def __call__(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class constant(Schedule):
    r"""eta_t = lr."""

    def __init__(self, lr: float):
        self.lr = real(lr, "lr", lo=0)

    def __call__(self, t):
        check_step(t, "t")
        return self.lr


class linear_warmup(Schedule):
    r"""The source document's warmup: eta_t = lr * t / warmup_steps for t < warmup_steps, then lr.

    Ramps from 0 to ``lr`` over ``warmup_steps``, then holds ``lr`` (the document trains
    ``post_warmup_steps`` more at the constant rate; ``total_steps`` is their sum).
    """

    def __init__(self, lr: float, warmup_steps: int, post_warmup_steps: int = 0):
        self.lr = real(lr, "lr", lo=0)
        self.warmup_steps = integer(warmup_steps, "warmup_steps", lo=1, hi=MAX_STEP)
        self.post_warmup_steps = integer(post_warmup_steps, "post_warmup_steps", lo=0,
                                         hi=MAX_STEP)

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.post_warmup_steps

    def __call__(self, t):
        t = check_step(t, "t")
        return self.lr * min(t, self.warmup_steps) / self.warmup_steps


class linear_decay(Schedule):
    r"""eta_t = lr + (end_lr - lr) * min(t, decay_steps) / decay_steps."""

    def __init__(self, lr: float, decay_steps: int, end_lr: float = 0.0):
        self.lr = real(lr, "lr", lo=0)
        self.decay_steps = integer(decay_steps, "decay_steps", lo=1, hi=MAX_STEP)
        self.end_lr = real(end_lr, "end_lr", lo=0)

    def __call__(self, t):
        t = check_step(t, "t")
        return self.lr + (self.end_lr - self.lr) * min(t, self.decay_steps) / self.decay_steps


class cosine_decay(Schedule):
    r"""eta_t = lr * ((1 - alpha) * (1 + cos(pi * min(t, T) / T)) / 2 + alpha), T = decay_steps."""

    def __init__(self, lr: float, decay_steps: int, alpha: float = 0.0):
        self.lr = real(lr, "lr", lo=0)
        self.decay_steps = integer(decay_steps, "decay_steps", lo=1, hi=MAX_STEP)
        self.alpha = real(alpha, "alpha", lo=0, hi=1)

    def __call__(self, t):
        frac = min(check_step(t, "t"), self.decay_steps) / self.decay_steps
        return self.lr * ((1 - self.alpha) * 0.5 * (1 + math.cos(math.pi * frac)) + self.alpha)


class warmup_then(Schedule):
    r"""Linear warmup from 0 to ``after(0)`` over ``warmup_steps``, then ``after(t - warmup_steps)``.

    The decay's step count starts after warmup.
    """

    def __init__(self, warmup_steps: int, after):
        self.warmup_steps = integer(warmup_steps, "warmup_steps", lo=0, hi=MAX_STEP)
        if not callable(after):
            raise TypeError(f"after must be a schedule (callable t -> lr), got {type(after).__name__}")
        self.after = after

    def __call__(self, t):
        t = check_step(t, "t")
        if t < self.warmup_steps:
            return self.after(0) * t / self.warmup_steps
        return self.after(t - self.warmup_steps)


def warmup_cosine(lr: float, warmup_steps: int, total_steps: int, alpha: float = 0.0) -> warmup_then:
    """Warmup over ``warmup_steps`` joined to a cosine decay over the remaining steps."""
    warmup_steps = integer(warmup_steps, "warmup_steps", lo=0, hi=MAX_STEP)
    total_steps = integer(total_steps, "total_steps", lo=warmup_steps + 1)
    return warmup_then(warmup_steps, cosine_decay(lr, total_steps - warmup_steps, alpha))


def as_schedule(lr, name: str = "lr"):
    """A float becomes ``constant``; a callable is used as is."""
    if callable(lr):
        return lr
    return constant(real(lr, name, lo=0))
