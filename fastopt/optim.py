r"""Optimizers: fused single-pass updates over any number of arrays, updated in place.

Each class keeps its state (NumPy arrays) and the step counter t; ``step(grads)`` applies the
rule of ``fastopt.functional`` with eta_t = lr(t) in one native call. Every optimizer takes
``weight_decay`` (coupled L2, g <- g + lambda theta; decoupled for AdamW), and a ``backend``.

Every optimizer also takes the gradient-norm options of SPEC §3:

* ``max_grad_norm`` lambda (a number, ``"auto"`` or an ``AutoClip``-style policy): one read pass
  computes T = ||g|| (``fastopt.global_norm``); if T > lambda the update pass runs with
  grad_scale = lambda / T, so g' = lambda g / T is never written anywhere.
* ``nonfinite``: a NaN/inf norm ``"skip"``s the step (params, state and step count untouched, a
  RuntimeWarning, ``StepResult.skipped``), or ``"raise"``s FloatingPointError; ``"ignore"``
  trusts the gradients and, when nothing else needs the norm, saves the read pass.
* ``monitor``: a ``fastopt.GradNormMonitor`` fed the unclipped norm of every step.
* On device arrays (CuPy, PyTorch CUDA, Numba) a step that takes the norm is **guarded**: the
  norm pass, the clip/skip decision and the step count stay on the device, so ``step`` queues
  its kernels and returns without waiting; its ``StepResult`` is filled in (one wait) when a
  field is first read, or after GUARD_WINDOW = 16 unread steps. Reading ``step_count`` or the
  state dict waits too. A monitor, ``max_grad_norm="auto"``, ``nonfinite="raise"`` or a ``comm``
  need the norm on the host every step, and take it there (one wait per step).
* ``comm``: an mpi4py communicator when each process holds a shard of the parameters (see
  ``fastopt.distributed``): the norm is then the global one over every rank's gradients
  (float64 all-reduce), so ``grad_norm``, ``clipped`` and ``skipped`` agree on every rank.
  ``step`` is then collective whenever it takes the norm.
"""
from __future__ import annotations

import inspect
import math
import warnings
from types import MappingProxyType

import numpy as np

from . import _rules
from . import functional as F
from . import norm as _norm
from .monitor import AutoClip, GradNormMonitor
from ._pipeline import DevicePipeline, StepResult
from . import _dispatch
from . import _device, _mpi, _native, _precision
from ._precision import HOST_BF16 as BF16
from ._validate import (HOST16_DTYPES, Exclusive, as_list, check_float_arrays, check_grads16,
                        check_like, check_no_overlap, check_step, data_addresses, dtype_of,
                        is_device_array, nbytes, real)
from .schedules import as_schedule

__all__ = ["Optimizer", "StepResult", "SGD", "Momentum", "Nesterov", "RMSProp", "Adam", "AdamW",
           "NAdam", "Lion", "Adagrad", "param_groups", "CLASSES"]


_NONFINITE = ("skip", "raise", "ignore")
_P = inspect.Parameter


def _any_negative(v) -> bool:
    """Whether a float state array holds a value below 0 once read as float32 (a tiny negative
    float64 reads as -0.0, which is fine; one beyond float32's range reads as -inf, which is
    not, and must not warn on the way)."""
    with np.errstate(over="ignore"):
        return bool(np.any(v.astype(np.float32) < 0))


#: The arguments every optimizer takes besides the rule's own (keyword-only).
_COMMON = (("backend", None), ("max_grad_norm", None), ("nonfinite", "skip"), ("monitor", None),
           ("comm", None), ("master_weights", False), ("state_dtype", "float32"),
           ("stochastic_rounding", False), ("seed", 0))
_PRECISION = ("master_weights", "state_dtype", "stochastic_rounding", "seed")

# the per-step argument check's fast path; without the extension, Python's checks
_like_addresses = getattr(_native.cpu(), "like_addresses", None)


def _check_max_grad_norm(value):
    """None, a float lambda > 0, or a policy with threshold() and update(norm) ("auto" is
    AutoClip())."""
    if value is None:
        return None
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"max_grad_norm must be a number > 0, 'auto', a policy such as "
                             f"fastopt.AutoClip, or None; got {value!r}")
        return AutoClip()
    if callable(getattr(value, "threshold", None)) and callable(getattr(value, "update", None)):
        return value
    return real(value, "max_grad_norm", lo=0, lo_open=True)


def _loaded_array(sd, key) -> np.ndarray:
    """sd[key] as an array, or a ValueError naming the key (ragged lists, odd objects)."""
    try:
        return np.asarray(sd[key])
    except Exception as e:  # noqa: BLE001 - whatever the mapping or NumPy raised, name the key
        raise ValueError(f"state dict {key!r} cannot be read as an array: {e}") from None


class _Group:
    """One parameter group: a slice of the optimizer's arrays with its own learning rate
    (schedule) and hyperparameters."""
    __slots__ = ("lo", "hi", "lr", "hyper")

    def __init__(self, lo, hi, lr, hyper):
        self.lo, self.hi, self.lr, self.hyper = lo, hi, lr, hyper


#: rule -> fastopt's class for it, filled in as the classes below are defined
_CLASSES: dict = {}


class Optimizer:
    """Base class; use the concrete optimizers below (one per rule of fastopt/_rules, whose
    signature is derived from the rule's declaration).

    ``params`` is a list of arrays, or a list of parameter groups as in torch.optim: dicts
    ``{"params": [arrays], "lr": ..., <hyperparameter>: ...}`` whose missing entries take the
    constructor's values (``fastopt.param_groups`` builds the usual no-decay split). Each
    group computes its own scalars; groups whose scalars coincide share one native call.
    State arrays are numbered across the groups in order (``state_dict``'s ``m.<i>``), and
    the state dict records the groups' sizes: it loads only into an optimizer grouped the same
    way. The groups' settings are not saved (nor are an ungrouped optimizer's): the loading
    optimizer keeps its own. ``StepResult.lr`` is the first group's rate."""

    rule = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        r = _rules.RULES.get(cls.rule)
        if r is None:
            return
        if cls.__module__ == __name__:  # fastopt's own class for the rule (not a user's)
            _CLASSES[cls.rule] = cls
        args = [_P("params", _P.POSITIONAL_OR_KEYWORD),
                _P("lr", _P.POSITIONAL_OR_KEYWORD, **({} if r.lr is None else {"default": r.lr}))]
        args += [_P(h.name, _P.POSITIONAL_OR_KEYWORD, default=h.default) for h in r.hyper]
        args += [_P(n, _P.KEYWORD_ONLY, default=d) for n, d in _COMMON]
        cls.__signature__ = inspect.Signature(args)

    def __init__(self, *args, **kwargs):
        rule = _rules.RULES.get(self.rule)
        if rule is None:
            raise TypeError("fastopt.Optimizer is a base class; use SGD, Adam, ... instead")
        try:
            bound = type(self).__signature__.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{type(self).__name__}: {e}") from None
        bound.apply_defaults()
        a = dict(bound.arguments)
        params, lr = a.pop("params"), a.pop("lr")
        common = {n: a.pop(n) for n, _ in _COMMON}
        self.comm = _mpi.check_comm(common["comm"])
        self._exclusive = Exclusive()
        self.lr = as_schedule(lr)
        self.hyper = rule.check_hyper(**a)
        # A private list: the kernels take exactly these arrays, whatever is done to the
        # public tuple (a list that callers could append to would desynchronise the state).
        self._params, self._groups = self._take_groups(rule, params)
        check_float_arrays(self._params, "params", writable=True, dtypes=HOST16_DTYPES)
        check_no_overlap({"params": self._params})
        self.precision = _precision.check(**{n: common[n] for n in _PRECISION})
        p = self._params
        # compact steps (fastopt/_precision.py): 16-bit host params, or any non-default option
        self._compact = bool(p) and not is_device_array(p[0]) and (
            not self.precision.default or any(_precision.is16(a.dtype) for a in p))
        if p and is_device_array(p[0]) and not self.precision.default:
            raise ValueError(f"{self.precision}: compact-precision options run on host (CPU) "
                             "arrays; on device arrays 16-bit params keep float32 state")
        if self._compact:
            _precision.check_params(p, self.precision)
        self.backend = common["backend"]
        self.max_grad_norm = _check_max_grad_norm(common["max_grad_norm"])
        nonfinite = common["nonfinite"]
        if nonfinite not in _NONFINITE:
            raise ValueError(f"nonfinite must be one of {', '.join(map(repr, _NONFINITE))}, "
                             f"got {nonfinite!r:.80}")
        self.nonfinite = nonfinite
        monitor = common["monitor"]
        if monitor is not None and not isinstance(monitor, GradNormMonitor):
            raise TypeError(f"monitor must be a fastopt.GradNormMonitor or None, got "
                            f"{type(monitor).__name__}")
        self.monitor = monitor
        self.state = {n: [] for n in rule.state_names}
        self._absmax = {n: [] for n in rule.state_names}  # 8-bit state: per-block absmax
        self._masters = None  # per param: None, a float32 master or an int16 remainder
        for g in self._groups:
            if self._compact:
                masters, states, absmax = _precision.init(
                    rule, self._params[g.lo:g.hi], self.precision, g.hyper or self.hyper)
                if masters is not None:
                    self._masters = (self._masters or []) + masters
                for n in rule.state_names:
                    self.state[n] += states[n]
                    self._absmax[n] += absmax[n]
                continue
            for n, arrays in F.init_state(self.rule, self._params[g.lo:g.hi],
                                          **(g.hyper or self.hyper)).items():
                self.state[n] += arrays
                self._absmax[n] += [None] * len(arrays)
        self._step_count = 0
        self._guard = None  # a DevicePipeline, once a guarded step ran on device arrays
        # params never change device or dtype: whether they could take guarded steps at all
        self._guardable = bool(p) and is_device_array(p[0]) and len(self._groups) == 1 and \
            len({str(dtype_of(a)) for a in p}) == 1
        # Params and state never move: remember their byte ranges once, so each step only has
        # to place the gradients among them (bisect) instead of re-sorting everything.
        written = list(self._written())
        spans = sorted((s, s + nbytes(a)) for a, s in zip(written, data_addresses(written))
                       if nbytes(a))
        self._nbytes = np.array([nbytes(p) for p in self._params], np.int64)
        self._starts = np.array([s for s, _ in spans], np.int64)
        self._ends = np.array([e for _, e in spans], np.int64)

    def _take_groups(self, rule, params):
        """(all arrays, [_Group]) from a list of arrays or a list of group dicts."""
        if isinstance(params, dict):
            raise TypeError("params must be a list of arrays or a list of param-group dicts, "
                            "got a dict (wrap one group in a list)")
        items = as_list(params, "params") if not isinstance(params, (list, tuple)) \
            else list(params)
        if not items or not all(isinstance(g, dict) for g in items):
            if any(isinstance(g, dict) for g in items):
                raise TypeError("params must be all arrays or all param-group dicts")
            arrays = as_list(params, "params")
            return arrays, [_Group(0, len(arrays), None, None)]  # None: the optimizer's own
        arrays, groups = [], []
        for j, g in enumerate(items):
            where = f"param_groups[{j}]"
            if "params" not in g:
                raise ValueError(f"{where} has no 'params'")
            unknown = [k for k in g if k not in ("params", "lr") + rule.hyper_names]
            if unknown:
                raise TypeError(f"{where}: {self.rule} does not take "
                                f"{', '.join(map(repr, unknown))}; a group may set 'params', "
                                f"'lr' and {', '.join(rule.hyper_names) or 'nothing else'}")
            ga = as_list(g["params"], f"{where}['params']")
            hyper = rule.check_hyper(f"{where}.", **{**self.hyper, **{
                k: v for k, v in g.items() if k not in ("params", "lr")}})
            lr = as_schedule(g["lr"], f"{where}.lr") if "lr" in g else None  # None: self.lr
            groups.append(_Group(len(arrays), len(arrays) + len(ga), lr, hyper))
            arrays += ga
        return arrays, groups

    @property
    def param_groups(self) -> list:
        """[{"params": (arrays...), "lr": schedule, <hyperparameter>: value}] per group, as
        read-only mappings: settings are fixed at construction (setting ``group["lr"]``, as
        with torch.optim, is refused rather than ignored)."""
        return [MappingProxyType({"params": tuple(self._params[g.lo:g.hi]),
                                  "lr": self.lr if g.lr is None else g.lr,
                                  **(g.hyper or self.hyper)}) for g in self._groups]

    def _group_lr(self, j, t) -> float:
        """Group j's learning rate at step count t, checked."""
        g = self._groups[j]
        return self.lr_at(t) if g.lr is None else real(g.lr(t), f"param_groups[{j}] lr({t})",
                                                       lo=0)

    def _run(self, grads, t, lrs, scale):
        """The update of step count t (group j at rate lrs[j]): one native call per distinct
        set of group scalars."""
        if self._compact:
            return self._run_compact(grads, t, lrs, scale)
        if len(self._groups) == 1:  # one group: its own hyperparameters (a dict may set them)
            k = F._scalars(self.rule, lr=lrs[0], step=t, grad_scale=scale,
                           **(self._groups[0].hyper or self.hyper))
            F.run(self.rule, self._params, grads, self._states(), k, self.backend)
            return
        runs = {}
        for g, glr in zip(self._groups, lrs):
            k = F._scalars(self.rule, lr=glr, step=t, grad_scale=scale,
                           **(g.hyper or self.hyper))
            runs.setdefault(k, []).extend(range(g.lo, g.hi))
        states = self._states()
        for k, idx in runs.items():
            F.run(self.rule, [self._params[i] for i in idx], [grads[i] for i in idx],
                  [[s[i] for i in idx] for s in states], k, self.backend)

    def _run_compact(self, grads, t, lrs, scale):
        """``_run`` on compact storage: the same grouping, with each array's own index keying
        its random streams (so the bits do not depend on how the groups are split)."""
        runs = {}
        for g, glr in zip(self._groups, lrs):
            k = F._scalars(self.rule, lr=glr, step=t, grad_scale=scale,
                           **(g.hyper or self.hyper))
            runs.setdefault(k, []).extend(range(g.lo, g.hi))
        names = _rules.RULES[self.rule].state_names
        for k, idx in runs.items():
            sr = (self.precision.seed, t, idx) if self.precision.stochastic else None
            F.run_compact(self.rule, [self._params[i] for i in idx], [grads[i] for i in idx],
                          None if self._masters is None else [self._masters[i] for i in idx],
                          [[self.state[n][i] for i in idx] for n in names],
                          [[self._absmax[n][i] for i in idx] for n in names], k, sr,
                          self.backend)

    def master_params(self) -> list:
        """The values the optimizer steps from, as new float32 arrays: the float32 masters of
        16-bit params (whole, or bfloat16 param + remainder, exactly), the other params
        widened (float64 params copied as they are)."""
        with self._exclusive("master_params()"):
            self._settle()
            if self._compact:
                return [_precision.master_value(p, None if self._masters is None
                                                else self._masters[i])
                        for i, p in enumerate(self._params)]
            return [(_device.to_host(p) if is_device_array(p) else p).astype(
                np.float64 if dtype_of(p) == np.float64 else np.float32)
                for p in self._params]

    @property
    def params(self) -> tuple:
        """The arrays this optimizer updates in place (fixed at construction)."""
        return tuple(self._params)

    def _written(self):
        yield from self._params
        for _, _, a in self._buffers():
            yield a

    def _buffers(self):
        """(key, i, array) of every buffer a checkpoint holds: each rule state, the 8-bit
        states' block absmax (``<name>_absmax``), the masters (``master``) or remainders
        (``remainder``)."""
        for name, arrays in self.state.items():
            for i, a in enumerate(arrays):
                yield name, i, a
        for name, arrays in self._absmax.items():
            for i, a in enumerate(arrays):
                if a is not None:
                    yield f"{name}_absmax", i, a
        for i, m in enumerate(self._masters or ()):
            if m is not None:
                yield ("master" if m.dtype == np.float32 else "remainder"), i, m

    def _states(self):
        return [self.state[name] for name in _rules.RULES[self.rule].state_names]

    def _check_grads(self, grads) -> list:
        grads = as_list(grads, "grads")
        if self._compact:  # 16-bit storage, float32 grads of 16-bit params
            check_grads16(self._params, grads)
            start = np.array(data_addresses(grads), np.int64) if grads else None
            return self._place_grads(grads, start)
        # the common case in one native pass (C++ extension built, NumPy arrays that match)
        start = _like_addresses(self._params, grads) if _like_addresses else None
        if start is None:
            check_like(self._params, "params", grads, "grads")
            for i, p in enumerate(self._params):
                if isinstance(p, np.ndarray) and not p.flags.writeable:
                    raise ValueError(f"params[{i}] became read-only")
        return self._place_grads(grads, start)

    def _place_grads(self, grads, start):
        if len(self._starts) and grads:
            # place each gradient's byte range among the (sorted, disjoint) written ranges
            if start is None:
                start = np.array(data_addresses(grads), np.int64)
            end = start + np.array([nbytes(g) for g in grads], np.int64) \
                if self._compact else start + self._nbytes  # grads match params (checked)
            j = np.searchsorted(self._starts, end - 1, side="right") - 1
            bad = (end > start) & (j >= 0) & (self._ends[np.maximum(j, 0)] > start)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(f"grads[{i}] shares memory with a parameter or state array; "
                                 "arrays that are written must not overlap any other array")
        return grads

    @property
    def step_count(self) -> int:
        """Steps taken (skipped ones not counted); waits for the device after guarded steps."""
        self._settle()
        return self._step_count

    @step_count.setter
    def step_count(self, value):
        value = check_step(value, "step_count")
        with self._exclusive("setting step_count"):
            self._set_step_count(value)

    def _set_step_count(self, value):
        self._settle()
        self._step_count = value
        self._guard = None  # the device copy of the count starts afresh

    def lr_at(self, t: int) -> float:
        """eta_t, checked (a schedule returning a negative or non-finite rate is an error)."""
        return real(self.lr(t), f"lr({t})", lo=0)

    def clip_threshold(self) -> float | None:
        """lambda for the next step: ``max_grad_norm``, the policy's current value, or None.
        A policy must answer None or a finite number > 0 (anything else would move the
        params up the gradient, or zero the update, without a word)."""
        m = self.max_grad_norm
        if m is None or isinstance(m, float):
            return m
        t = m.threshold()
        return None if t is None else real(t, f"max_grad_norm policy {type(m).__name__}"
                                           ".threshold()", lo=0, lo_open=True)

    def step(self, grads) -> StepResult:
        """Apply one update in place with ``grads`` (same structure as params).

        With clipping or the non-finite check on, one read pass computes T = ||grads|| first;
        the update pass then uses grad_scale = lambda / T when T > lambda. A non-finite T with
        ``nonfinite="skip"`` leaves everything as it was and returns ``skipped=True``.

        With ``comm``, T is the norm over all ranks' gradients and the call is collective; a
        rank whose ``grads`` are rejected raises its error and the others a ValueError.

        On device arrays the step is guarded (see the module docstring): the same decisions
        and bits, taken on the device; the result, and the skip warning, come when read.

        One call at a time: a second ``step`` on the same optimizer while one runs (another
        thread) raises RuntimeError rather than interleave two updates. Separate optimizers
        in separate threads are independent.
        """
        with self._exclusive("step()"):
            return self._step(grads)

    def _step(self, grads) -> StepResult:
        limit = self.clip_threshold()
        # a policy (AutoClip) is fed every step's norm, also before it has a threshold
        need_norm = (self.max_grad_norm is not None or self.nonfinite != "ignore"
                     or self.monitor is not None)
        if need_norm and self._guarded():
            return self._guarded_step(self._check_grads(grads), limit)
        try:
            grads = self._check_grads(grads)
            self._settle()
            t = self._step_count
            lrs = [self._group_lr(j, t) for j in range(len(self._groups))]
            lr = lrs[0]  # StepResult.lr: the first group's rate
        except Exception:
            if self.comm is not None and need_norm:
                _norm._abandon(self.comm, "step")
            raise
        norm, scale, clipped = None, 1.0, False
        if need_norm:
            norm = _norm._norm_checked(grads, self.backend, self.comm)
            if not math.isfinite(norm) and self.nonfinite != "ignore":
                if self.nonfinite == "raise":
                    raise FloatingPointError(f"the gradient norm at step {t} is {norm}; nothing "
                                             "was updated (nonfinite='raise')")
                warnings.warn(f"skipped step {t}: the gradient norm is {norm}; parameters, state "
                              "and step count are unchanged", RuntimeWarning, stacklevel=2)
                self._observe(norm, False, limit)
                return StepResult(grad_norm=norm, clipped=False, skipped=True, lr=lr)
            if limit is not None and math.isfinite(norm) and norm > limit:
                scale, clipped = limit / norm, True
        self._run(grads, t, lrs, scale)
        self._step_count = t + 1
        if self._guard is not None:
            self._guard = None  # the host path moved the count on
        self._observe(norm, clipped, limit)
        return StepResult(grad_norm=norm, clipped=clipped, skipped=False, lr=lr)

    # -- guarded steps: norm, clip, skip and step count on the device, no waiting -------------
    def _guarded(self) -> bool:
        """Whether this step can run guarded: device params of one dtype, a fixed (or no)
        clipping threshold, nonfinite "skip"/"ignore", and nothing that needs the norm on the
        host every step (a monitor, an adaptive threshold, a communicator)."""
        return (self._guardable and self.nonfinite != "raise"
                and self.monitor is None and self.comm is None
                and (self.max_grad_norm is None or isinstance(self.max_grad_norm, float)))

    def _guarded_step(self, grads, limit) -> StepResult:
        """One device-decided step (fastopt._pipeline): it returns at once, pending."""
        name = _dispatch.resolve(f"optim.{self.rule}", self.backend, device=True,
                                 dtype=dtype_of(self._params[0]))
        name = _dispatch.resolve("optim.guarded_step", name, device=True,
                                 dtype=dtype_of(self._params[0]))
        if self._guard is None:
            self._guard = DevicePipeline(self._params[0], self._step_count,
                                         scalars_at=self._guarded_scalars,
                                         lr_at=lambda t: self._group_lr(0, t))
        return self._guard.issue(_dispatch.module(name), self.rule, self._params, grads,
                                 self._states(), math.inf if limit is None else limit,
                                 self.nonfinite == "skip")

    def _guarded_scalars(self, t):
        """The Scalars of step count t for a guarded step, which runs on one group: its own
        settings."""
        g0 = self._groups[0]
        return F._scalars(self.rule, lr=self._group_lr(0, t), step=t, **(g0.hyper or self.hyper))

    def _settle(self, result=None):
        """The device's decisions for every unread guarded step (``result``: at least up to
        that one) read back, and its step count taken (see DevicePipeline.settle)."""
        if self._guard is not None:
            self._guard.settle(result)
            self._step_count = self._guard.count

    def _observe(self, norm, clipped, limit):
        if norm is None:
            return
        if self.max_grad_norm is not None and not isinstance(self.max_grad_norm, float):
            self.max_grad_norm.update(norm)
        if self.monitor is not None:
            self.monitor.record(norm, clipped=clipped, threshold=limit)

    def _extras(self) -> dict:
        """Sub-state dicts kept with the optimizer's: the clipping policy's and the monitor's."""
        out = {}
        if hasattr(self.max_grad_norm, "state_dict"):
            out["clip"] = self.max_grad_norm
        if self.monitor is not None:
            out["monitor"] = self.monitor
        return out

    # -- checkpoints: a flat dict of NumPy arrays and scalars, so numpy.savez stores it -------
    def _group_sizes(self):
        """The arrays per group, for an optimizer built from param-group dicts (else None)."""
        if self._groups[0].hyper is None:
            return None
        return np.array([g.hi - g.lo for g in self._groups], np.int64)

    def state_dict(self) -> dict:
        """{'optimizer': rule, 'step': t, '<state>.<i>': array} and, when built from
        param-group dicts, 'groups': the number of arrays in each group. Copies, safe to keep.
        Settings (lr, hyperparameters) are not saved: the loading optimizer keeps its own."""
        with self._exclusive("state_dict()"):
            sd = {"optimizer": np.array(self.rule), "step": np.array(self.step_count, np.int64)}
            sizes = self._group_sizes()
            if sizes is not None:
                sd["groups"] = sizes
            if not self.precision.default:
                sd["precision"] = np.array(str(self.precision))
            for name, i, a in self._buffers():
                sd[f"{name}.{i}"] = _device.to_host(a) if is_device_array(a) else a.copy()
            for prefix, obj in self._extras().items():  # 'clip.*' (AutoClip), 'monitor.*'
                sd.update({f"{prefix}.{k}": v for k, v in obj.state_dict().items()})
            return sd

    def load_state_dict(self, sd) -> None:
        """Restore ``state_dict()`` output (e.g. from numpy.load). Everything is checked
        before anything changes: a refused dict (TypeError/ValueError naming the key) leaves
        the optimizer exactly as it was."""
        with self._exclusive("load_state_dict()"):
            self._load_state_dict(sd)

    def _load_state_dict(self, sd) -> None:
        self._settle()
        if not callable(getattr(sd, "keys", None)) or not hasattr(sd, "__getitem__"):
            raise TypeError(f"state dict must be a mapping, got {type(sd).__name__}")
        extras = self._extras()
        sizes = self._group_sizes()
        if ("groups" in sd.keys()) != (sizes is not None):
            raise ValueError("state dict 'groups': the checkpoint was saved by an optimizer "
                             + ("with param groups, this one has none" if sizes is None else
                                "without param groups, this one has groups"))
        expected = {"optimizer", "step"} | {f"{n}.{i}" for n, i, _ in self._buffers()}
        expected |= set() if self.precision.default else {"precision"}
        if ("precision" in sd.keys()) != (not self.precision.default) or (
                "precision" in sd.keys() and str(_loaded_array(sd, "precision"))
                != str(self.precision)):
            got = str(_loaded_array(sd, "precision")) if "precision" in sd.keys() \
                else str(_precision.DEFAULT)
            raise ValueError(f"state dict 'precision': the checkpoint was saved with {got}; "
                             f"this optimizer has {self.precision}")
        expected |= set() if sizes is None else {"groups"}
        expected |= {f"{p}.{k}" for p, obj in extras.items() for k in obj.state_dict()}
        keys = set(sd.keys())
        if keys != expected:
            missing = sorted(expected - keys)
            extra = sorted(map(repr, keys - expected))
            raise ValueError(f"state dict keys do not match this optimizer: missing {missing}, "
                             f"unexpected [{', '.join(extra)}]")
        vals = {k: _loaded_array(sd, k) for k in sorted(expected)}  # an NpzFile reads lazily
        rule = vals["optimizer"]
        if rule.shape != () or rule.dtype.kind not in "US":
            raise ValueError(f"state dict 'optimizer' must be the rule's name, got {rule!r:.80}")
        if str(rule) != self.rule:
            raise ValueError(f"state dict 'optimizer' is {str(rule)!r}, not {self.rule!r}")
        step = vals["step"]
        if step.shape != () or step.dtype.kind not in "iu":
            raise TypeError(f"state dict 'step' must be a 0-d integer array, got shape "
                            f"{step.shape} and dtype {step.dtype}")
        step = check_step(step.item(), "state dict 'step'")
        if sizes is not None:
            got = vals["groups"]
            if got.dtype.kind not in "iu" or got.shape != sizes.shape or np.any(got != sizes):
                raise ValueError(f"state dict 'groups' is {got.tolist()!r:.80}: groups of that "
                                 f"many arrays; this optimizer's groups hold {sizes.tolist()}")
        for name, i, a in self._buffers():
            v = vals[f"{name}.{i}"]
            if v.dtype.kind == "V" and v.dtype.itemsize == 2 and dtype_of(a) == BF16:
                v = vals[f"{name}.{i}"] = v.view(BF16)  # numpy.savez keeps bfloat16 as |V2
            if v.shape != tuple(a.shape) or v.dtype != dtype_of(a):
                raise ValueError(f"state dict '{name}.{i}' has shape {v.shape} and dtype "
                                 f"{v.dtype}; expected {tuple(a.shape)} and {dtype_of(a)}")
            if (name in _rules.RULES[self.rule].nonnegative or name.endswith("_absmax")) \
                    and v.dtype.kind == "f" and _any_negative(v):
                raise ValueError(f"state dict '{name}.{i}' holds negative values; it is "
                                 + ("a block's largest magnitude" if name.endswith("_absmax")
                                    else "a running mean of squares") +
                                 ", which no step makes negative")
        # The policy and the monitor check their own parts; undo the first if the second fails.
        before = {p: obj.state_dict() for p, obj in extras.items()}
        try:
            for p, obj in extras.items():
                try:
                    obj.load_state_dict({k[len(p) + 1:]: v for k, v in vals.items()
                                         if k.startswith(p + ".")})
                except (TypeError, ValueError) as e:  # name the key as it is in this dict
                    raise type(e)(f"state dict '{p}.*': {e}") from e
        except Exception:
            for p, obj in extras.items():
                obj.load_state_dict(before[p])
            raise
        for name, i, a in self._buffers():
            if is_device_array(a):
                _device.copy_from_host(a, vals[f"{name}.{i}"])
            else:
                np.copyto(a, vals[f"{name}.{i}"])
        self._set_step_count(step)

    def __repr__(self):
        h = ", ".join(f"{k}={v}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({len(self._params)} arrays, lr={self.lr!r}, {h})"


# -- The optimizers: one thin class per rule; arguments and defaults come from fastopt/_rules --

class SGD(Optimizer):
    r"""theta <- theta - eta_t (g + lambda theta)."""
    rule = "sgd"


class Momentum(Optimizer):
    r"""Heavy ball: v <- gamma v + g; theta <- theta - eta_t v (v starts at 0)."""
    rule = "momentum"


class Nesterov(Momentum):
    r"""v <- gamma v + g; theta <- theta - eta_t (gamma v + g)."""
    rule = "nesterov"


class RMSProp(Optimizer):
    r"""v <- rho v + (1-rho) g^2 (v starts at 1); m <- gamma m + eta_t g / sqrt(v + eps);
    theta <- theta - m."""
    rule = "rmsprop"


class Adam(Optimizer):
    r"""m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
    theta <- theta - eta_t b m / (sqrt(v) + eps), b = sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)).

    ``torch_compat=True``: theta <- theta - eta_t m_hat / (sqrt(v_hat) + eps), as torch.optim.Adam
    (eps then acts after bias correction).
    """
    rule = "adam"


class AdamW(Adam):
    r"""Adam with decoupled weight decay: theta <- theta - eta_t lambda theta_old - (Adam step)."""
    rule = "adamw"


class NAdam(Optimizer):
    r"""Adam with Nesterov momentum: theta <- theta - eta_t b (b1 m + (1-b1) g) / (sqrt(v) + eps)."""
    rule = "nadam"


class Lion(Optimizer):
    r"""Lion (Chen et al. 2023; optax.lion): u <- b1 m + (1-b1) g;
    theta <- (1 - eta_t lambda) theta - eta_t sign(u); m <- b2 m + (1-b2) g (m starts at 0).

    The decay is decoupled (default lambda = 1e-3, as optax; fastopt.torch.Lion defaults to
    0, as torch users' Lion code does). Use a learning rate 3-10x below AdamW's."""
    rule = "lion"


class Adagrad(Optimizer):
    r"""Adagrad, as torch.optim.Adagrad: s <- s + g^2 (s starts at
    ``initial_accumulator_value``); theta <- theta - eta_t / (1 + t lr_decay) g / (sqrt(s) + eps),
    with coupled L2 decay g <- g + lambda theta."""
    rule = "adagrad"


#: rule name -> its optimizer class (each class registers itself when defined)
CLASSES = _CLASSES


def _no_decay_default(name, array) -> bool:
    return np.ndim(array) <= 1


def param_groups(named_arrays, *, no_decay=_no_decay_default, weight_decay=None) -> list:
    """The usual two parameter groups: arrays that decay, and those that don't (biases and
    norm scales: by default every array with ndim <= 1), the second with weight_decay=0.

    ``named_arrays``: a mapping name -> array, or (name, array) pairs (``model.items()``).
    ``no_decay(name, array)`` says which arrays are exempt. ``weight_decay``, if given, is set on
    the decaying group (else it takes the optimizer's). Empty groups are left out.
    ``fastopt.AdamW(fastopt.param_groups(params), lr=1e-3)``."""
    if not callable(no_decay):
        raise TypeError(f"no_decay must be a callable (name, array) -> bool, got "
                        f"{type(no_decay).__name__}")
    items = list(named_arrays.items() if hasattr(named_arrays, "items") else named_arrays)
    for j, item in enumerate(items):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"named_arrays[{j}] must be a (name, array) pair, got "
                            f"{type(item).__name__}")
    decay = [a for n, a in items if not no_decay(n, a)]
    exempt = [a for n, a in items if no_decay(n, a)]
    out = []
    if decay:
        out.append({"params": decay} if weight_decay is None
                   else {"params": decay, "weight_decay": weight_decay})
    if exempt:
        out.append({"params": exempt, "weight_decay": 0.0})
    return out
