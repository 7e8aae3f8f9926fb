r"""Watching the gradient norm, and clipping at a percentile of it (SPEC §3, the source document).

The document's recipe: log the unclipped norm ‖g_t‖ every step, look at its plot against the
step and at its histogram, clip near the 90th percentile, and treat clipping more than half of
the steps as a sign that the learning rate, not the clipping, should change. ``GradNormMonitor``
packages that recipe; ``AutoClip`` answers the document's open question about an adaptive
threshold:

.. math::

    \lambda_t = P_p\big(\{\|g_s\| : s \in \text{the last } W \text{ finite steps before } t\}\big)

once at least ``warmup`` norms are in (no clipping before). Both round-trip through flat
``state_dict``s of NumPy values (``numpy.savez`` stores them, no pickle needed to load), and
both check every field of a state dict before they change anything.
"""
from __future__ import annotations

import math
import numbers
import os
import uuid
import warnings

import numpy as np

from ._validate import integer, real

__all__ = ["GradNormMonitor", "AutoClip", "ClippingWarning"]

#: Counts (steps, norms) are stored as int64 in state dicts: the most any of them may reach.
COUNT_MAX = int(np.iinfo(np.int64).max)


class ClippingWarning(UserWarning):
    """More than the allowed fraction of recent steps had their gradients clipped."""


def _flag(value, name) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _norm_value(norm) -> float:
    """A norm as recorded: a real number >= 0, or NaN/+inf for a non-finite step."""
    if isinstance(norm, (bool, np.bool_)) or not isinstance(norm, numbers.Real):
        raise TypeError(f"norm must be a real number, got {type(norm).__name__}")
    try:
        norm = float(norm)
    except (OverflowError, ValueError, TypeError):  # an int beyond float range
        raise ValueError("norm must be a float (NaN/inf for a non-finite step), got an "
                         "integer beyond float range") from None
    if norm < 0:
        raise ValueError(f"norm must be >= 0 (or NaN/inf for a non-finite step), got {norm!r}")
    return norm


def _quantiles(q):
    """``q`` for numpy.percentile: a number or an array_like of numbers, each in [0, 100]."""
    if isinstance(q, numbers.Real) or (isinstance(q, np.ndarray) and q.ndim == 0
                                       and q.dtype.kind in "iuf"):
        return real(q.item() if isinstance(q, np.ndarray) else q, "q", lo=0, hi=100)
    try:
        a = np.asarray(q)
    except Exception:  # noqa: BLE001 - ragged sequences and odd objects alike
        a = None
    if a is None or a.dtype.kind not in "iuf":
        raise TypeError(f"q must be a number or a sequence of numbers in [0, 100], got "
                        f"{type(q).__name__}" + ("" if a is None else f" of dtype {a.dtype}"))
    a = a.astype(np.float64)
    if a.size == 0 or not np.all((a >= 0) & (a <= 100)):  # NaN fails both comparisons
        raise ValueError(f"q must be in [0, 100] (and not empty), got {q!r:.80}")
    return a


class StateFields:
    """The fields of a loaded state dict, each read and checked on request.

    ``load_state_dict`` reads every field through one of these *before* it changes anything,
    so a refused dict leaves the object as it was; every refusal is a TypeError (wrong kind:
    dtype, strings, objects) or a ValueError (shape, range, disagreement between fields)
    whose message names the key. Shared by GradNormMonitor, AutoClip and
    fastopt.distributed.ShardedOptimizer.
    """

    def __init__(self, sd, keys, owner: str):
        if not callable(getattr(sd, "keys", None)) or not hasattr(sd, "__getitem__"):
            raise TypeError(f"{owner} state dict must be a mapping, got {type(sd).__name__}")
        got = list(sd.keys())
        missing = [k for k in keys if k not in got]
        extra = [k for k in got if k not in keys]
        if missing or extra:
            raise ValueError(f"{owner} state dict keys do not match: missing {missing}, "
                             f"unexpected {extra}")
        self.owner, self._sd = owner, sd

    def fail(self, key, why, exc=ValueError):
        raise exc(f"{self.owner} state dict {key!r} {why}")

    def _read(self, key) -> np.ndarray:
        try:
            v = np.asarray(self._sd[key])
        except Exception as e:  # noqa: BLE001 - ragged lists, odd objects: name the key
            self.fail(key, f"cannot be read as an array: {e}")
        if v.dtype.kind not in "biuf":  # strings, and objects: None, ints beyond int64, ...
            self.fail(key, f"must be numeric, got dtype {v.dtype}", TypeError)
        return v

    def integer(self, key, *, lo=None, hi=COUNT_MAX) -> int:
        """A 0-d integer in [lo, hi], as a Python int."""
        v = self._read(key)
        if v.dtype.kind not in "iu":
            self.fail(key, f"must be an integer, got dtype {v.dtype}", TypeError)
        if v.ndim:
            self.fail(key, f"must be a 0-d integer, got shape {v.shape}")
        x = int(v)
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            self.fail(key, f"must be in [{lo}, {hi}], got {x}")
        return x

    def real(self, key, *, lo=None, nan=False) -> float:
        """A 0-d float64, finite and > lo (or NaN if ``nan``), as a Python float."""
        v = self._read(key)
        if v.dtype != np.float64:
            self.fail(key, f"must be a float64, got dtype {v.dtype}", TypeError)
        if v.ndim:
            self.fail(key, f"must be a 0-d float64, got shape {v.shape}")
        x = float(v)
        if not (nan and math.isnan(x)) and not (math.isfinite(x) and (lo is None or x > lo)):
            self.fail(key, f"must be finite{'' if lo is None else f' and > {lo}'}"
                      f"{' (or NaN)' if nan else ''}, got {x!r}")
        return x

    def array(self, key, kind: str, size: int, why: str = "") -> np.ndarray:
        """A 1-d array of ``size`` values, copied: ``kind`` "f" is float64, "b" bool, "i" any
        integer dtype with values in int64 (returned as int64). ``why`` says where ``size``
        comes from, for the message."""
        v = self._read(key)
        want = {"f": "float64", "b": "bool", "i": "an integer dtype"}[kind]
        if (v.dtype.kind not in "iu") if kind == "i" else (v.dtype != np.dtype(want)):
            self.fail(key, f"must have dtype {want}, got {v.dtype}", TypeError)
        if v.ndim != 1:
            self.fail(key, f"must be 1-d, got shape {v.shape}")
        if v.size != size:
            self.fail(key, f"has {v.size} values but {why or f'{size} are expected'}")
        if kind == "i" and v.size and (v.min() < -COUNT_MAX - 1 or v.max() > COUNT_MAX):
            self.fail(key, "holds values beyond int64")
        return v.astype({"f": np.float64, "b": bool, "i": np.int64}[kind])  # a copy


class _Ring:
    """The last ``size`` values of a float64 series, oldest first on read. Memory grows with
    the values pushed, up to ``size``: a huge window costs nothing until it fills."""

    def __init__(self, size):
        self.size = size
        self.buf = np.zeros(min(size, 64))
        self.n = 0  # values ever pushed

    def push(self, v):
        if self.n < self.size:
            if self.n == self.buf.size:
                grown = np.zeros(min(2 * self.buf.size, self.size))
                grown[:self.n] = self.buf
                self.buf = grown
            self.buf[self.n] = v
        else:
            self.buf[self.n % self.size] = v
        self.n += 1

    def values(self) -> np.ndarray:
        if self.n <= self.size:
            return self.buf[:self.n].copy()
        k = self.n % self.size
        return np.concatenate([self.buf[k:], self.buf[:k]])

    @classmethod
    def holding(cls, size, values, n):
        """A ring holding ``values`` (min(n, size) of them) as the last of ``n`` pushes."""
        ring = cls(size)
        if n <= size:
            ring.buf = np.zeros(max(n, ring.buf.size))
            ring.buf[:n] = values
        else:
            k = n % size
            ring.buf = np.empty(size)
            ring.buf[k:], ring.buf[:k] = values[:size - k], values[size - k:]
        ring.n = n
        return ring


class AutoClip:
    r"""Adaptive clipping threshold: the ``percentile``-th percentile of the last ``window``
    unclipped finite norms, once ``warmup`` of them have been seen.

    .. math:: \lambda_t = P_p(\|g_{t-W}\|, \dots, \|g_{t-1}\|), \qquad \lambda_t = \infty
              \text{ (no clipping) while fewer than } \texttt{warmup} \text{ norms are in}

    ``percentile`` in (0, 100]; ``window`` >= 1 and ``warmup`` in [1, window], both at most
    2**63 - 1 (memory grows with the norms seen, not with ``window``).

    Pass it as ``max_grad_norm=AutoClip(...)`` (``max_grad_norm="auto"`` is ``AutoClip()``), or
    drive it by hand: ``threshold()`` before the step, ``update(norm)`` after.
    """

    def __init__(self, percentile=90.0, *, window=1000, warmup=20):
        self._percentile = real(percentile, "percentile", lo=0, hi=100, lo_open=True)
        self._window = integer(window, "window", lo=1, hi=COUNT_MAX)
        self._warmup = integer(warmup, "warmup", lo=1, hi=COUNT_MAX)
        if self._warmup > self._window:
            raise ValueError(f"warmup ({self._warmup}) must not exceed window ({self._window})")
        self._ring = _Ring(self._window)
        self._cached = None

    percentile = property(lambda self: self._percentile, doc="p, in (0, 100].")
    window = property(lambda self: self._window, doc="W: how many recent norms count.")
    warmup = property(lambda self: self._warmup, doc="Norms needed before any clipping.")

    @property
    def count(self) -> int:
        """Finite norms seen so far."""
        return self._ring.n

    def threshold(self) -> float | None:
        """λ for the next step: None (no clipping) or a finite float > 0, never anything else.

        None during the warm-up, and also while the percentile is 0 (the recent norms are
        mostly zero): a threshold of 0 would zero every update instead of bounding it."""
        if self._ring.n < self._warmup:
            return None
        if self._cached is None:
            self._cached = float(np.percentile(self._ring.values(), self._percentile))
        return self._cached if 0 < self._cached < math.inf else None

    def update(self, norm) -> None:
        """Feed the unclipped norm of a step; non-finite norms (skipped steps) are ignored."""
        norm = _norm_value(norm)
        if math.isfinite(norm):
            if self._ring.n >= COUNT_MAX:
                raise OverflowError("AutoClip cannot take more norms: its count is at the "
                                    "int64 limit of its state dict")
            self._ring.push(norm)
            self._cached = None

    _KEYS = ("percentile", "window", "warmup", "count", "norms")

    def state_dict(self) -> dict:
        return {"percentile": np.float64(self._percentile), "window": np.int64(self._window),
                "warmup": np.int64(self._warmup), "count": np.int64(self._ring.n),
                "norms": self._ring.values()}

    def load_state_dict(self, sd) -> None:
        """Restore ``state_dict()`` output; refuses (TypeError/ValueError naming the key) a
        dict from another configuration or with any bad field, without changing anything."""
        f = StateFields(sd, self._KEYS, "AutoClip")
        for key, got in (("percentile", f.real("percentile", lo=0)),
                         ("window", f.integer("window", lo=1)),
                         ("warmup", f.integer("warmup", lo=1))):
            if got != getattr(self, key):
                f.fail(key, f"is {got}, but this policy has {key}={getattr(self, key)}")
        count = f.integer("count", lo=0)
        norms = f.array("norms", "f", min(count, self._window),
                        f"'count'={count} and window={self._window} need "
                        f"{min(count, self._window)}")
        if not np.all(np.isfinite(norms) & (norms >= 0)):
            f.fail("norms", "must be finite and >= 0 (only finite norms are kept)")
        self._ring = _Ring.holding(self._window, norms, count)
        self._cached = None

    def __repr__(self):
        return (f"AutoClip(percentile={self._percentile:g}, window={self._window}, "
                f"warmup={self._warmup})")


class GradNormMonitor:
    r"""Records the unclipped global gradient norm of every step and reports on it.

    Fed by an optimizer (``Adam(..., monitor=m)``) or by hand (``m.record(norm)``). Keeps:

    * the history of (step, norm, clipped, threshold) — all of it, or with ``max_history=N`` at
      most N points: when full, every other point is dropped and from then on only every 2nd
      (4th, ...) step is kept, an evenly spaced sample of the whole run in bounded memory;
    * exact counts of steps, clipped steps and non-finite (skipped) steps;
    * the last ``window`` steps exactly, for the warning: when more than ``warn_fraction`` of
      them were clipped, a ``ClippingWarning`` (at most once per ``window`` steps) says that
      clipping this often is a lower learning rate in disguise.

    ``threshold`` (None or a finite float > 0) is the clipping threshold used to decide
    "clipped" for norms recorded by hand without an explicit ``clipped=``. ``window`` >= 1,
    ``max_history`` >= 2 (both at most 2**63 - 1; memory grows with what is recorded),
    ``warn_fraction`` in [0, 1).
    """

    def __init__(self, threshold=None, *, window=100, max_history=None, warn_fraction=0.5,
                 warn=True):
        self.threshold = threshold
        self._window = integer(window, "window", lo=1, hi=COUNT_MAX)
        self._max_history = None if max_history is None else integer(
            max_history, "max_history", lo=2, hi=COUNT_MAX)
        self.warn_fraction = warn_fraction
        self.warn = warn
        self.reset()

    # -- settings: checked when set; the ones the recorded state depends on are read-only -------
    window = property(lambda self: self._window, doc="Steps the recent statistics cover.")
    max_history = property(lambda self: self._max_history, doc="Most points held, or None.")
    count = property(lambda self: self._count, doc="Steps recorded.")
    clipped_count = property(lambda self: self._clipped_count, doc="Clipped steps recorded.")
    nonfinite_count = property(lambda self: self._nonfinite_count,
                               doc="Non-finite (skipped) steps recorded.")

    @property
    def threshold(self) -> float | None:
        return self._threshold

    @threshold.setter
    def threshold(self, value):
        self._threshold = None if value is None else real(value, "threshold", lo=0,
                                                          lo_open=True)

    @property
    def warn_fraction(self) -> float:
        return self._warn_fraction

    @warn_fraction.setter
    def warn_fraction(self, value):
        self._warn_fraction = real(value, "warn_fraction", lo=0, hi=1, hi_open=True)

    @property
    def warn(self) -> bool:
        return self._warn

    @warn.setter
    def warn(self, value):
        self._warn = _flag(value, "warn")

    def reset(self) -> None:
        """Forget everything recorded."""
        self._set_history(*self._empty_history(0), n=0, stride=1)
        self._count = self._clipped_count = self._nonfinite_count = 0
        self._recent_norm = _Ring(self._window)
        self._recent_clip = _Ring(self._window)
        self._last_warned = -self._window

    def _empty_history(self, n):
        cap = max(n, 64 if self._max_history is None else min(64, self._max_history))
        return np.zeros(cap, np.int64), np.zeros(cap), np.zeros(cap, bool), np.zeros(cap)

    def _set_history(self, steps, norms, clipped, thr, *, n, stride):
        self._steps, self._norms, self._clipped, self._thr = steps, norms, clipped, thr
        self._n = n  # points held
        self._stride = stride  # a step is held iff step % stride == 0

    # -- recording ------------------------------------------------------------------------------
    def record(self, norm, *, clipped=None, threshold=None) -> None:
        """Record one step's unclipped norm (NaN/inf for a non-finite, skipped step).

        ``clipped`` (a bool) defaults to ``norm > threshold``, ``threshold`` (None or a finite
        float > 0) to the monitor's own. Bad arguments record nothing.
        """
        norm = _norm_value(norm)
        if threshold is not None:
            threshold = real(threshold, "threshold", lo=0, lo_open=True)
        else:
            threshold = self._threshold
        finite = math.isfinite(norm)
        if clipped is None:
            clipped = finite and threshold is not None and norm > threshold
        clipped = _flag(clipped, "clipped") and finite
        if self._count >= COUNT_MAX:
            raise OverflowError("GradNormMonitor cannot record more steps: its count is at the "
                                "int64 limit of its state dict")
        step = self._count
        self._count += 1
        self._clipped_count += clipped
        self._nonfinite_count += not finite
        if step % self._stride == 0:
            self._hold(step, norm, clipped, math.nan if threshold is None else threshold)
        self._recent_norm.push(norm)
        self._recent_clip.push(float(clipped))
        self._maybe_warn(step)

    def _hold(self, step, norm, clipped, thr):
        if self._n == self._norms.size:
            limit = self._max_history
            if limit is None or self._n < limit:  # grow by doubling (up to max_history)
                size = self._n * 2 if limit is None else min(self._n * 2, limit)
                for name in ("_steps", "_norms", "_clipped", "_thr"):
                    old = getattr(self, name)
                    new = np.zeros(size, old.dtype)
                    new[:old.size] = old
                    setattr(self, name, new)
            else:  # keep every other point and the steps that will keep aligning with them
                self._stride *= 2
                keep = np.flatnonzero(self._steps[:self._n] % self._stride == 0)
                for name in ("_steps", "_norms", "_clipped", "_thr"):
                    a = getattr(self, name)
                    a[:keep.size] = a[keep]
                self._n = keep.size
                if step % self._stride:
                    return
        i = self._n
        self._steps[i], self._norms[i], self._clipped[i], self._thr[i] = step, norm, clipped, thr
        self._n += 1

    def _maybe_warn(self, step):
        if not self._warn or self._recent_clip.n < self._window:
            return
        frac = self.fraction_clipped(recent=True)
        if frac > self._warn_fraction and step - self._last_warned >= self._window:
            self._last_warned = step
            warnings.warn(
                f"{frac:.0%} of the last {self._window} steps had their gradients clipped (more "
                f"than {self._warn_fraction:.0%}): clipping this aggressively is in effect a "
                "lower learning rate; consider lowering the learning rate or raising the "
                f"threshold (the 90th percentile of the norms so far is {self._p90_text()})",
                ClippingWarning, stacklevel=3)

    def _p90_text(self):
        try:
            return f"{self.suggested_threshold():.4g}"
        except ValueError:
            return "unknown"

    # -- reports --------------------------------------------------------------------------------
    @property
    def steps(self) -> np.ndarray:
        """Step index (0, 1, ...) of each held point."""
        return self._steps[:self._n].copy()

    @property
    def norms(self) -> np.ndarray:
        """Unclipped norm of each held point (NaN/inf for skipped steps)."""
        return self._norms[:self._n].copy()

    @property
    def clipped(self) -> np.ndarray:
        """Whether each held point was clipped."""
        return self._clipped[:self._n].copy()

    @property
    def thresholds(self) -> np.ndarray:
        """Threshold in effect at each held point (NaN: none)."""
        return self._thr[:self._n].copy()

    def _finite(self, recent):
        v = self._recent_norm.values() if _flag(recent, "recent") else self._norms[:self._n]
        return v[np.isfinite(v)]

    def percentile(self, q, *, recent=False):
        """``numpy.percentile`` of the finite norms held (the last ``window`` if ``recent``);
        ``q`` a number or a sequence of numbers in [0, 100]."""
        qa = _quantiles(q)
        v = self._finite(recent)
        if v.size == 0:
            raise ValueError("no finite gradient norms recorded yet")
        out = np.percentile(v, qa)
        return float(out) if np.ndim(out) == 0 else out

    def suggested_threshold(self, q=90) -> float:
        """The source document's starting point for a clipping threshold: the q-th percentile
        of the unclipped norms (q = 90)."""
        return self.percentile(q)

    def fraction_clipped(self, *, recent=False) -> float:
        """Clipped steps / steps with a finite norm (over the last ``window`` if ``recent``)."""
        if _flag(recent, "recent"):
            norms, clip = self._recent_norm.values(), self._recent_clip.values()
            finite = np.isfinite(norms)
            return float(clip[finite].sum() / finite.sum()) if finite.any() else 0.0
        finite = self._count - self._nonfinite_count
        return self._clipped_count / finite if finite else 0.0

    def summary(self) -> dict:
        """Counts, clipped fractions and the 50/90/99th percentiles, as a dict of floats."""
        out = {"steps": self._count, "nonfinite": self._nonfinite_count,
               "fraction_clipped": self.fraction_clipped(),
               "fraction_clipped_recent": self.fraction_clipped(recent=True)}
        if self._finite(False).size:
            for q, v in zip((50, 90, 99), self.percentile([50, 90, 99])):
                out[f"p{q}"] = float(v)
        return out

    def __repr__(self):
        return (f"GradNormMonitor({self._count} steps, {self._clipped_count} clipped, "
                f"{self._nonfinite_count} non-finite, window={self._window}, "
                f"max_history={self._max_history})")

    # -- the plot the document asks for ---------------------------------------------------------
    def plot(self, path, *, q=90, title=None):
        """Write a PNG: the norm against the step (log y) and the histogram of the norms, with
        the threshold(s) in effect and the q-th percentile marked. Needs matplotlib.

        Every check comes before any drawing: the arguments, matplotlib, and that ``path`` can
        be written (a missing or unwritable directory raises the matching OSError, naming
        ``path``). The PNG is drawn into a temporary file beside ``path`` and moved there
        when complete, so a failure leaves no partial file (and an older plot in place)."""
        if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        if title is not None and not isinstance(title, str):
            raise TypeError(f"title must be a str or None, got {type(title).__name__}")
        qv = _quantiles(q)
        if np.ndim(qv):
            raise TypeError("q must be one number for the plot")
        try:
            from matplotlib.figure import Figure
        except ImportError as e:
            raise ImportError("GradNormMonitor.plot needs matplotlib, which is not installed: "
                              "pip install matplotlib (or pip install 'fastopt[plot]')") from e
        steps, norms = self.steps, self.norms
        finite = np.isfinite(norms) & (norms > 0)
        if not finite.any():
            raise ValueError("nothing to plot: no finite, positive gradient norms recorded yet")
        pq = self.percentile(qv)
        out, tmp = _open_beside(path)
        try:
            with tmp:
                self._draw(Figure(figsize=(11, 4), constrained_layout=True), tmp, steps, norms,
                           finite, qv, pq, title)
            os.replace(tmp.name, out)
        except BaseException:
            os.unlink(tmp.name)
            raise
        return path

    def _draw(self, fig, file, steps, norms, finite, q, pq, title):
        ax, hx = fig.subplots(1, 2, gridspec_kw={"width_ratios": (2, 1)})
        clip = self.clipped
        ax.plot(steps[finite], norms[finite], lw=0.8, color="C0", label="unclipped norm")
        if clip.any():
            ax.plot(steps[clip], norms[clip], ".", ms=3, color="C3", label="clipped step")
        thr = self.thresholds
        if np.isfinite(thr).any():
            ax.plot(steps, thr, lw=1, color="C1", drawstyle="steps-post", label="threshold")
        ax.axhline(pq, ls="--", lw=1, color="k", label=f"{q:g}th percentile ({pq:.3g})")
        bad = ~np.isfinite(norms)
        if bad.any():
            for s in steps[bad]:
                ax.axvline(s, color="C3", lw=0.5, alpha=0.5)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("global gradient norm (unclipped)")
        ax.legend(loc="best", fontsize="small")
        v = norms[finite]
        lo, hi = v.min(), v.max()
        bins = np.geomspace(lo, hi, 41) if hi > lo else np.array([lo * 0.9, hi * 1.1])
        hx.hist(v, bins=bins, color="C0")
        hx.set_xscale("log")
        hx.axvline(pq, ls="--", lw=1, color="k", label=f"{q:g}th percentile")
        if np.isfinite(thr).any():
            hx.axvline(thr[np.isfinite(thr)][-1], lw=1, color="C1", label="threshold (latest)")
        hx.legend(loc="best", fontsize="small")
        hx.set_xlabel("global gradient norm")
        hx.set_ylabel("steps")
        fig.suptitle(title or (f"{self.count} steps, {self.fraction_clipped():.0%} clipped, "
                               f"{self.nonfinite_count} non-finite"))
        fig.savefig(file, format="png", dpi=100)

    # -- checkpoints ----------------------------------------------------------------------------
    _KEYS = ("window", "max_history", "threshold", "count", "clipped_count", "nonfinite_count",
             "stride", "last_warned", "steps", "norms", "clipped", "thresholds", "recent_norms",
             "recent_clipped")

    def state_dict(self) -> dict:
        """Flat dict of NumPy values (copies); ``numpy.savez`` stores it."""
        return {"window": np.int64(self._window),
                "max_history": np.int64(-1 if self._max_history is None else self._max_history),
                "threshold": np.float64(math.nan if self._threshold is None
                                        else self._threshold),
                "count": np.int64(self._count), "clipped_count": np.int64(self._clipped_count),
                "nonfinite_count": np.int64(self._nonfinite_count),
                "stride": np.int64(self._stride), "last_warned": np.int64(self._last_warned),
                "steps": self.steps, "norms": self.norms, "clipped": self.clipped,
                "thresholds": self.thresholds, "recent_norms": self._recent_norm.values(),
                "recent_clipped": self._recent_clip.values()}

    def load_state_dict(self, sd) -> None:
        """Restore ``state_dict()`` output. Every field is checked first, alone and against
        the others (lengths, the held steps against ``count`` and ``stride``, the recent window
        against the history, the counts against both); a refused dict (TypeError/ValueError
        naming the key) leaves the monitor exactly as it was."""
        f = StateFields(sd, self._KEYS, "GradNormMonitor")
        w, mh = self._window, self._max_history
        for key, got, have in (("window", f.integer("window", lo=1), w),
                               ("max_history", f.integer("max_history", lo=-1),
                                -1 if mh is None else mh)):
            if got != have:
                f.fail(key, f"is {got}, but this monitor has {key}={have} (-1: None)")
        thr = f.real("threshold", lo=0, nan=True)
        count = f.integer("count", lo=0)
        stride = f.integer("stride", lo=1)
        if stride & (stride - 1):
            f.fail("stride", f"must be a power of two, got {stride}")
        n = -(-count // stride)  # the steps 0, stride, 2 stride, ... below count
        if mh is None and stride != 1:
            f.fail("stride", f"must be 1 without max_history, got {stride}")
        if mh is not None and (n > mh or (stride > 1 and count <= mh * (stride // 2))):
            f.fail("stride", f"{stride} does not follow from 'count'={count} and max_history="
                   f"{mh} (the history thins to the least power of two that fits)")
        why = f"'count'={count} and 'stride'={stride} hold {n}"
        steps = f.array("steps", "i", n, why)
        if not np.array_equal(steps, np.arange(0, count, stride, dtype=np.int64)):
            f.fail("steps", f"must be 0, {stride}, {2 * stride}, ... up to 'count'={count}")
        norms = f.array("norms", "f", n, why)
        clipped = f.array("clipped", "b", n, why)
        thresholds = f.array("thresholds", "f", n, why)
        r = min(count, w)
        why = f"'count'={count} and window={w} need {r}"
        recent_norms = f.array("recent_norms", "f", r, why)
        recent_clipped = f.array("recent_clipped", "f", r, why)
        for key, v in (("norms", norms), ("recent_norms", recent_norms)):
            if (v < 0).any():  # -inf included; NaN and +inf are non-finite steps
                f.fail(key, "holds a negative norm")
        if not np.all(np.isnan(thresholds) | (np.isfinite(thresholds) & (thresholds > 0))):
            f.fail("thresholds", "must each be NaN (none) or finite and > 0")
        if not np.all((recent_clipped == 0) | (recent_clipped == 1)):
            f.fail("recent_clipped", "must hold 0.0 or 1.0 per step")
        recent_clip = recent_clipped == 1
        for key, c, v in (("clipped", clipped, norms), ("recent_clipped", recent_clip,
                                                        recent_norms)):
            if (c & ~np.isfinite(v)).any():
                f.fail(key, "marks a non-finite (skipped) step as clipped")
        # The held steps inside the recent window are stored twice: the copies must agree.
        first = count - r
        inside = steps >= first
        at = steps[inside] - first
        if not (np.array_equal(norms[inside], recent_norms[at], equal_nan=True)
                and np.array_equal(clipped[inside], recent_clip[at])):
            f.fail("recent_norms", f"and 'recent_clipped' (steps {first}.."
                   f"{count - 1} of 'count'={count}) disagree with 'norms' and 'clipped' at "
                   "the held steps they share")
        nonfinite = f.integer("nonfinite_count", lo=0)
        clipped_count = f.integer("clipped_count", lo=0)
        if nonfinite + clipped_count > count:
            f.fail("clipped_count", f"+ 'nonfinite_count' ({clipped_count} + {nonfinite}) "
                   f"exceed 'count'={count} (a clipped step is a finite one)")
        for key, total, held, recent, shown in (
                ("clipped_count", clipped_count, clipped, recent_clip,
                 "'clipped' and 'recent_clipped'"),
                ("nonfinite_count", nonfinite, ~np.isfinite(norms), ~np.isfinite(recent_norms),
                 "'norms' and 'recent_norms'")):
            known = int(held.sum()) + int(recent.sum()) - int(held[inside].sum())
            if total < known or (n == count and total != int(held.sum())):
                f.fail(key, f"is {total}, but {shown} show {known} such steps"
                       + (" (and all steps are held)" if n == count else ""))
        last = f.integer("last_warned", lo=-COUNT_MAX)
        if last != -w and not w - 1 <= last < count:
            f.fail("last_warned", f"must be -window ({-w}) or a step in [{w - 1}, {count}), "
                   f"got {last}")
        # Everything checked: now change the monitor (nothing below can fail).
        history = self._empty_history(n)
        for a, v in zip(history, (steps, norms, clipped, thresholds)):
            a[:n] = v
        self._threshold = None if math.isnan(thr) else thr
        self._set_history(*history, n=n, stride=stride)
        self._count, self._clipped_count, self._nonfinite_count = count, clipped_count, nonfinite
        self._last_warned = last
        self._recent_norm = _Ring.holding(w, recent_norms, count)
        self._recent_clip = _Ring.holding(w, recent_clipped, count)


def _open_beside(path):
    """(path, a new file beside it opened for writing): an unwritable place fails here,
    before any drawing, with the OSError that says why."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise IsADirectoryError(f"cannot write the plot: path {p!r} is a directory")
    d, name = os.path.split(os.path.abspath(p))
    tmp = os.path.join(d, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        return p, open(tmp, "xb")  # as any new file: mode 0o666 less the umask
    except OSError as e:
        raise type(e)(e.errno, f"cannot write the plot to path {p!r}: {e.strerror}") from None
