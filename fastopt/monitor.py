r"""Watching the gradient norm, and clipping at a percentile of it (SPEC §3, the source document).

The document's recipe: log the unclipped norm ‖g_t‖ every step, look at its plot against the
step and at its histogram, clip near the 90th percentile, and treat clipping more than half of
the steps as a sign that the learning rate, not the clipping, should change. ``GradNormMonitor``
packages that recipe; ``AutoClip`` answers the document's open question about an adaptive
threshold:

.. math::

    \lambda_t = P_p\big(\{\|g_s\| : s \in \text{the last } W \text{ finite steps before } t\}\big)

once at least ``warmup`` norms are in (no clipping before). Both round-trip through flat
``state_dict``s of NumPy values (``numpy.savez`` stores them, no pickle needed to load).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ._validate import integer, real

__all__ = ["GradNormMonitor", "AutoClip", "ClippingWarning"]


class ClippingWarning(UserWarning):
    """More than the allowed fraction of recent steps had their gradients clipped."""


def _flag(value, name) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _norm_value(norm) -> float:
    if isinstance(norm, bool) or not isinstance(norm, (int, float, np.floating, np.integer)):
        raise TypeError(f"norm must be a real number, got {type(norm).__name__}")
    norm = float(norm)
    if norm < 0:
        raise ValueError(f"norm must be >= 0 (or NaN/inf for a non-finite step), got {norm!r}")
    return norm


def _load_checked(sd, keys, owner):
    if not hasattr(sd, "keys"):
        raise TypeError(f"state dict must be a mapping, got {type(sd).__name__}")
    got = set(sd.keys())
    if got != set(keys):
        raise ValueError(f"{owner} state dict keys do not match: missing "
                         f"{sorted(set(keys) - got)}, unexpected {sorted(got - set(keys))}")
    return {k: np.asarray(sd[k]) for k in keys}


class _Ring:
    """The last ``size`` values of a float64 series, oldest first on read."""

    def __init__(self, size):
        self.buf = np.zeros(size)
        self.n = 0  # values ever pushed

    def push(self, v):
        self.buf[self.n % self.buf.size] = v
        self.n += 1

    def values(self) -> np.ndarray:
        if self.n <= self.buf.size:
            return self.buf[:self.n].copy()
        k = self.n % self.buf.size
        return np.concatenate([self.buf[k:], self.buf[:k]])

    def load(self, values, n):
        """Hold ``values`` as the last of ``n`` pushes."""
        self.buf[:] = 0
        start = n - len(values)
        for i, v in enumerate(values):
            self.buf[(start + i) % self.buf.size] = v
        self.n = n


class AutoClip:
    r"""Adaptive clipping threshold: the ``percentile``-th percentile of the last ``window``
    unclipped finite norms, once ``warmup`` of them have been seen.

    .. math:: \lambda_t = P_p(\|g_{t-W}\|, \dots, \|g_{t-1}\|), \qquad \lambda_t = \infty
              \text{ (no clipping) while fewer than } \texttt{warmup} \text{ norms are in}

    Pass it as ``max_grad_norm=AutoClip(...)`` (``max_grad_norm="auto"`` is ``AutoClip()``), or
    drive it by hand: ``threshold()`` before the step, ``update(norm)`` after.
    """

    def __init__(self, percentile=90.0, *, window=1000, warmup=20):
        self.percentile = real(percentile, "percentile", lo=0, hi=100, lo_open=True)
        self.window = integer(window, "window", lo=1)
        self.warmup = integer(warmup, "warmup", lo=1)
        if self.warmup > self.window:
            raise ValueError(f"warmup ({self.warmup}) must not exceed window ({self.window})")
        self._ring = _Ring(self.window)
        self._cached = None

    @property
    def count(self) -> int:
        """Finite norms seen so far."""
        return self._ring.n

    def threshold(self) -> float | None:
        """λ for the next step, or None (no clipping) during the warm-up."""
        if self._ring.n < self.warmup:
            return None
        if self._cached is None:
            self._cached = float(np.percentile(self._ring.values(), self.percentile))
        return self._cached

    def update(self, norm) -> None:
        """Feed the unclipped norm of a step; non-finite norms (skipped steps) are ignored."""
        norm = _norm_value(norm)
        if math.isfinite(norm):
            self._ring.push(norm)
            self._cached = None

    _KEYS = ("percentile", "window", "warmup", "count", "norms")

    def state_dict(self) -> dict:
        return {"percentile": np.float64(self.percentile), "window": np.int64(self.window),
                "warmup": np.int64(self.warmup), "count": np.int64(self._ring.n),
                "norms": self._ring.values()}

    def load_state_dict(self, sd) -> None:
        v = _load_checked(sd, self._KEYS, "AutoClip")
        for k in ("percentile", "window", "warmup"):
            if v[k].item() != getattr(self, k):
                raise ValueError(f"AutoClip state dict has {k}={v[k].item()}, this policy has "
                                 f"{getattr(self, k)}")
        count = integer(v["count"].item(), "AutoClip state dict 'count'", lo=0)
        norms = np.asarray(v["norms"], np.float64).reshape(-1)
        if norms.size != min(count, self.window):
            raise ValueError(f"AutoClip state dict 'norms' has {norms.size} values for "
                             f"count={count} and window={self.window}")
        self._ring.load(norms, count)
        self._cached = None

    def __repr__(self):
        return (f"AutoClip(percentile={self.percentile:g}, window={self.window}, "
                f"warmup={self.warmup})")


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

    ``threshold`` is the clipping threshold used to decide "clipped" for norms recorded by hand
    without an explicit ``clipped=``.
    """

    def __init__(self, threshold=None, *, window=100, max_history=None, warn_fraction=0.5,
                 warn=True):
        self.threshold = None if threshold is None else real(threshold, "threshold", lo=0,
                                                             lo_open=True)
        self.window = integer(window, "window", lo=1)
        self.max_history = None if max_history is None else integer(max_history, "max_history",
                                                                    lo=2)
        self.warn_fraction = real(warn_fraction, "warn_fraction", lo=0, hi=1, hi_open=True)
        self.warn = _flag(warn, "warn")
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded."""
        cap = 64 if self.max_history is None else self.max_history
        self._steps = np.zeros(cap, np.int64)
        self._norms = np.zeros(cap)
        self._clipped = np.zeros(cap, bool)
        self._thr = np.zeros(cap)
        self._n = 0  # points held
        self._stride = 1  # with max_history: a step is held iff step % stride == 0
        self.count = 0  # steps recorded
        self.clipped_count = 0
        self.nonfinite_count = 0
        self._recent_norm = _Ring(self.window)
        self._recent_clip = _Ring(self.window)
        self._last_warned = -self.window

    # -- recording ------------------------------------------------------------------------------
    def record(self, norm, *, clipped=None, threshold=None) -> None:
        """Record one step's unclipped norm (NaN/inf for a non-finite, skipped step).

        ``clipped`` defaults to ``norm > threshold``, ``threshold`` to the monitor's own.
        """
        norm = _norm_value(norm)
        if threshold is not None:
            threshold = real(threshold, "threshold", lo=0, lo_open=True)
        else:
            threshold = self.threshold
        finite = math.isfinite(norm)
        if clipped is None:
            clipped = finite and threshold is not None and norm > threshold
        clipped = _flag(clipped, "clipped") and finite
        step = self.count
        self.count += 1
        self.clipped_count += clipped
        self.nonfinite_count += not finite
        if step % self._stride == 0:
            self._hold(step, norm, clipped, math.nan if threshold is None else threshold)
        self._recent_norm.push(norm)
        self._recent_clip.push(float(clipped))
        self._maybe_warn(step)

    def _hold(self, step, norm, clipped, thr):
        if self._n == self._norms.size:
            if self.max_history is None:  # grow by doubling
                for name in ("_steps", "_norms", "_clipped", "_thr"):
                    old = getattr(self, name)
                    new = np.zeros(2 * old.size, old.dtype)
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
        if not self.warn or self._recent_clip.n < self.window:
            return
        frac = self.fraction_clipped(recent=True)
        if frac > self.warn_fraction and step - self._last_warned >= self.window:
            self._last_warned = step
            warnings.warn(
                f"{frac:.0%} of the last {self.window} steps had their gradients clipped (more "
                f"than {self.warn_fraction:.0%}): clipping this aggressively is in effect a lower "
                "learning rate; consider lowering the learning rate or raising the threshold "
                f"(the 90th percentile of the norms so far is {self._p90_text()})",
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
        v = self._recent_norm.values() if recent else self._norms[:self._n]
        return v[np.isfinite(v)]

    def percentile(self, q, *, recent=False):
        """``numpy.percentile`` of the finite norms held (the last ``window`` if ``recent``);
        ``q`` a number or a sequence of numbers in [0, 100]."""
        qa = np.asarray(q, dtype=np.float64)
        if qa.size == 0 or not np.all((qa >= 0) & (qa <= 100)):
            raise ValueError(f"q must be in [0, 100], got {q!r}")
        v = self._finite(recent)
        if v.size == 0:
            raise ValueError("no finite gradient norms recorded yet")
        out = np.percentile(v, qa)
        return float(out) if out.ndim == 0 else out

    def suggested_threshold(self, q=90) -> float:
        """The source document's starting point for a clipping threshold: the q-th percentile
        of the unclipped norms (q = 90)."""
        return self.percentile(q)

    def fraction_clipped(self, *, recent=False) -> float:
        """Clipped steps / steps with a finite norm (over the last ``window`` if ``recent``)."""
        if recent:
            norms, clip = self._recent_norm.values(), self._recent_clip.values()
            finite = np.isfinite(norms)
            return float(clip[finite].sum() / finite.sum()) if finite.any() else 0.0
        finite = self.count - self.nonfinite_count
        return self.clipped_count / finite if finite else 0.0

    def summary(self) -> dict:
        """Counts, clipped fractions and the 50/90/99th percentiles, as a dict of floats."""
        out = {"steps": self.count, "nonfinite": self.nonfinite_count,
               "fraction_clipped": self.fraction_clipped(),
               "fraction_clipped_recent": self.fraction_clipped(recent=True)}
        if self._finite(False).size:
            for q, v in zip((50, 90, 99), self.percentile([50, 90, 99])):
                out[f"p{q}"] = float(v)
        return out

    def __repr__(self):
        return (f"GradNormMonitor({self.count} steps, {self.clipped_count} clipped, "
                f"{self.nonfinite_count} non-finite, window={self.window}, "
                f"max_history={self.max_history})")

    # -- the plot the document asks for ---------------------------------------------------------
    def plot(self, path, *, q=90, title=None):
        """Write a PNG: the norm against the step (log y) and the histogram of the norms, with
        the threshold(s) in effect and the q-th percentile marked. Needs matplotlib."""
        try:
            from matplotlib.figure import Figure
        except ImportError as e:
            raise ImportError("GradNormMonitor.plot needs matplotlib, which is not installed: "
                              "pip install matplotlib (or pip install 'fastopt[plot]')") from e
        steps, norms = self.steps, self.norms
        finite = np.isfinite(norms) & (norms > 0)
        if not finite.any():
            raise ValueError("nothing to plot: no finite, positive gradient norms recorded yet")
        pq = self.percentile(q)
        fig = Figure(figsize=(11, 4), constrained_layout=True)
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
        fig.savefig(path, format="png", dpi=100)
        return path

    # -- checkpoints ----------------------------------------------------------------------------
    _KEYS = ("window", "max_history", "threshold", "count", "clipped_count", "nonfinite_count",
             "stride", "last_warned", "steps", "norms", "clipped", "thresholds", "recent_norms",
             "recent_clipped")

    def state_dict(self) -> dict:
        """Flat dict of NumPy values (copies); ``numpy.savez`` stores it."""
        return {"window": np.int64(self.window),
                "max_history": np.int64(-1 if self.max_history is None else self.max_history),
                "threshold": np.float64(math.nan if self.threshold is None else self.threshold),
                "count": np.int64(self.count), "clipped_count": np.int64(self.clipped_count),
                "nonfinite_count": np.int64(self.nonfinite_count),
                "stride": np.int64(self._stride), "last_warned": np.int64(self._last_warned),
                "steps": self.steps, "norms": self.norms, "clipped": self.clipped,
                "thresholds": self.thresholds, "recent_norms": self._recent_norm.values(),
                "recent_clipped": self._recent_clip.values()}

    def load_state_dict(self, sd) -> None:
        """Restore ``state_dict()`` output; refuses a mismatch without changing anything."""
        v = _load_checked(sd, self._KEYS, "GradNormMonitor")
        mh = -1 if self.max_history is None else self.max_history
        if v["window"].item() != self.window or v["max_history"].item() != mh:
            raise ValueError("GradNormMonitor state dict was saved with window="
                             f"{v['window'].item()}, max_history={v['max_history'].item()}; this "
                             f"monitor has window={self.window}, max_history={mh}")
        count = integer(v["count"].item(), "state dict 'count'", lo=0)
        n = v["norms"].size
        if not (v["steps"].size == v["clipped"].size == v["thresholds"].size == n) or (
                self.max_history is not None and n > self.max_history):
            raise ValueError("GradNormMonitor state dict history arrays disagree in length")
        r = min(count, self.window)
        if v["recent_norms"].size != r or v["recent_clipped"].size != r:
            raise ValueError("GradNormMonitor state dict recent arrays have the wrong length")
        thr = float(v["threshold"])
        self.threshold = None if math.isnan(thr) else thr
        self.reset()
        cap = max(n, 64) if self.max_history is None else self.max_history
        self._steps = np.zeros(cap, np.int64)
        self._norms = np.zeros(cap)
        self._clipped = np.zeros(cap, bool)
        self._thr = np.zeros(cap)
        self._steps[:n] = v["steps"].reshape(-1)
        self._norms[:n] = v["norms"].reshape(-1)
        self._clipped[:n] = v["clipped"].reshape(-1)
        self._thr[:n] = v["thresholds"].reshape(-1)
        self._n = n
        self._stride = int(v["stride"])
        self.count = count
        self.clipped_count = int(v["clipped_count"])
        self.nonfinite_count = int(v["nonfinite_count"])
        self._last_warned = int(v["last_warned"])
        self._recent_norm.load(v["recent_norms"].reshape(-1), count)
        self._recent_clip.load(v["recent_clipped"].reshape(-1), count)
