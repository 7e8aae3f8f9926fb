r"""PyTorch drop-in optimizers: ``torch.optim.Optimizer`` subclasses running fastopt's kernels.

``fastopt.torch.AdamW(model.parameters(), lr=1e-3)`` is a one-line swap for
``torch.optim.AdamW``: same arguments, same trajectory (to float tolerance), same
``state_dict()`` machinery (``torch.save``/``torch.load``), param groups and ``zero_grad``.
Each ``step()`` makes one native call per (param group, dtype, device), whatever the number of
parameter tensors, on zero-copy NumPy views of the CPU tensors (cached between steps) or on CUDA
tensors through fastopt's device backend.

``semantics="torch"`` (default) follows PyTorch's update rules; ``semantics="fastopt"`` the
source document's (``fastopt.functional``), e.g. RMSProp's v starting at 1 and eps inside the
root, and Adam's eps before bias correction.

Extra keyword options on every optimizer:

* ``max_grad_norm``: clip by the global norm of all gradients of all groups, computed in one
  read pass; the clip factor is folded into the update (gradients are not rewritten). The
  unclipped norm is returned by ``step()`` (when no closure is given) and kept in
  ``last_grad_norm``. Unlike ``torch.nn.utils.clip_grad_norm_`` there is no 1e-6 in the factor,
  and a non-finite norm clips nothing.
* ``monitor``: a ``fastopt.GradNormMonitor`` that records every step's norm (and clipping).
* ``backend``: a fastopt backend name, or None for the fastest available.

Not supported (refused with a ValueError): ``amsgrad``, centered RMSprop, ``capturable``,
``differentiable``, sparse gradients, non-contiguous parameters, and dtypes other than
float32/float64 on the CPU (float16/bfloat16 are accepted on CUDA, with float32 state).
This module imports torch; ``import fastopt`` does not.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import functional as F
from ._registry import OPTIM_STATE, Scalars

__all__ = ["Adam", "AdamW", "SGD", "RMSprop", "NAdam"]

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_SEMANTICS = ("torch", "fastopt")


def _refuse(flag, what):
    if flag:
        raise ValueError(f"fastopt.torch does not support {what}")


def _check_param(p: torch.Tensor, where: str) -> None:
    if p.is_sparse or p.layout != torch.strided:
        raise ValueError(f"{where}: only dense (strided) tensors are supported")
    if p.is_cuda:
        if p.dtype not in _CUDA_DTYPES:
            raise TypeError(f"{where}: dtype {p.dtype} is not supported on CUDA "
                            "(float32, float64, float16, bfloat16)")
    elif p.device.type == "cpu":
        if p.dtype not in _CPU_DTYPES:
            raise TypeError(f"{where}: dtype {p.dtype} is not supported on the CPU "
                            "(float32 or float64)")
    else:
        raise TypeError(f"{where}: device {p.device} is not supported (cpu or cuda)")
    if not p.is_contiguous():
        raise ValueError(f"{where}: the tensor is not contiguous; fastopt updates tensors in "
                         "place and will not update a copy (use .contiguous() before building "
                         "the model's parameters)")


def _view(t: torch.Tensor):
    """The array a kernel writes: a NumPy view sharing memory (CPU) or the tensor itself (CUDA)."""
    t = t.detach()
    return t if t.is_cuda else t.numpy()


class _Bucket:
    """Params of one group sharing (step, dtype, device): one kernel call."""
    __slots__ = ("idx", "params", "states", "tensors", "step_tensors")

    def __init__(self):
        self.idx, self.params, self.states, self.tensors, self.step_tensors = [], [], None, [], []


class _Optimizer(torch.optim.Optimizer):
    """Shared machinery; subclasses define ``_rule(group)`` and ``_scalars(group, t, scale)``."""

    def __init__(self, params, defaults, *, max_grad_norm=None, monitor=None, backend=None,
                 semantics="torch", maximize=False, foreach=None, fused=None, capturable=False,
                 differentiable=False):
        if semantics not in _SEMANTICS:
            raise ValueError(f"semantics must be one of {_SEMANTICS}, got {semantics!r}")
        _refuse(capturable, "capturable=True")
        _refuse(differentiable, "differentiable=True")
        if max_grad_norm is not None:
            max_grad_norm = float(max_grad_norm)
            if not max_grad_norm > 0 or not math.isfinite(max_grad_norm):
                raise ValueError(f"max_grad_norm must be a positive finite number, "
                                 f"got {max_grad_norm}")
        if semantics == "fastopt" and maximize:
            raise ValueError("maximize applies to semantics='torch'")
        defaults = dict(defaults, maximize=bool(maximize))
        self.semantics = semantics
        self.max_grad_norm = max_grad_norm
        self.monitor = monitor
        self.backend = backend
        self.last_grad_norm = None
        self._cache = {}
        super().__init__(params, defaults)

    # -- param groups and checkpoints -----------------------------------------------------------
    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for i, p in enumerate(group["params"]):
            _check_param(p, f"param group {len(self.param_groups) - 1}, param {i}")
        self._check_group(group)
        self._cache = {}

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for st in self.state.values():  # torch may keep the caller's tensors: own them
            for key, val in st.items():
                if torch.is_tensor(val):
                    st[key] = val.detach().clone(memory_format=torch.contiguous_format)
        self._cache = {}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._cache = {}

    def _check_group(self, group):  # subclasses refuse options they cannot run
        pass

    # -- state ---------------------------------------------------------------------------------
    def _state_names(self, group):
        """(kernel state name, torch state key, initial value), in kernel argument order."""
        raise NotImplementedError

    def _state_dtype(self, p):
        return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype

    def _init_state(self, p, group):
        st = self.state[p]
        if "step" not in st:
            st["step"] = torch.tensor(0.0, dtype=torch.float32)
        for _, key, init in self._state_names(group):
            if key not in st:
                st[key] = torch.full_like(p, init, dtype=self._state_dtype(p),
                                          memory_format=torch.contiguous_format)
        return st

    def _state_arrays(self, p, group):
        st = self._init_state(p, group)
        out = []
        for _, key, _ in self._state_names(group):
            s = st[key]
            if (s.shape != p.shape or s.device != p.device or s.dtype != self._state_dtype(p)
                    or not s.is_contiguous()):  # e.g. loaded from a checkpoint: fix it once
                s = st[key] = s.detach().to(device=p.device,
                                            dtype=self._state_dtype(p)).contiguous().clone()
            out.append(_view(s))
        return out

    # -- the cached per-group plan ---------------------------------------------------------------
    def _plan(self, gi, group, present):
        """Buckets for the params of ``group`` that have a gradient (indices ``present``).

        Cached on the identity and data pointers of those params (and the group's state
        layout); rebuilt only when one of them changes, so a steady training loop builds the
        NumPy views once."""
        params = group["params"]
        key = (tuple(present), tuple(params[i].data_ptr() for i in present),
               self._layout_key(group))
        hit = self._cache.get(gi)
        if hit is not None and hit[0] == key:
            return hit[1]
        by = {}
        for i in present:
            p = params[i]
            _check_param(p, f"param group {gi}, param {i}")
            st = self._init_state(p, group)
            t = int(st["step"].item())
            b = by.setdefault((t, p.dtype, str(p.device)), _Bucket())
            b.idx.append(i)
            b.tensors.append(p)
            b.params.append(_view(p))
            arrays = self._state_arrays(p, group)
            b.states = [[] for _ in arrays] if b.states is None else b.states
            for lst, a in zip(b.states, arrays):
                lst.append(a)
        buckets = []
        for (t, _, _), b in by.items():
            # one float32 tensor holds the bucket's step counts; each param's state['step'] is
            # a 0-d view of it, so counting a step is one in-place add
            steps = torch.full((len(b.idx),), float(t), dtype=torch.float32)
            for j, p in enumerate(b.tensors):
                self.state[p]["step"] = steps[j]
            b.step_tensors = steps
            buckets.append((t, b))
        self._cache[gi] = (key, buckets)
        return buckets

    def _layout_key(self, group):
        return tuple(key for _, key, _ in self._state_names(group))

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient.

        Returns the closure's loss when a closure is given, else the unclipped global gradient
        norm when ``max_grad_norm`` or ``monitor`` is set, else None."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            present = [i for i, p in enumerate(params) if p.grad is not None]
            if not present:
                continue
            grads = []  # views of this step's gradients: not cached, since caching them
            for i in present:  # would pin tensors that zero_grad(set_to_none) lets go
                g = params[i].grad
                if g.layout != torch.strided:
                    raise ValueError(f"param group {gi}, param {i}: sparse gradients are not "
                                     "supported")
                if g.dtype != params[i].dtype or not g.is_contiguous():
                    g = g.to(params[i].dtype).contiguous()
                grads.append(g if g.is_cuda else
                             (g.detach() if g.requires_grad else g).numpy())
            work.append((gi, group, present, grads))
        norm, scale, clipped = None, 1.0, False
        if self.max_grad_norm is not None or self.monitor is not None:
            from .norm import global_norm  # one read pass over every group's gradients

            all_grads = [g for _, _, _, gs in work for g in gs]
            norm = global_norm(all_grads, backend=self._norm_backend(all_grads)) if all_grads \
                else 0.0
            if (self.max_grad_norm is not None and math.isfinite(norm)
                    and norm > self.max_grad_norm):
                scale, clipped = self.max_grad_norm / norm, True
        for gi, group, present, grads in work:
            buckets = self._plan(gi, group, present)
            for t, b in buckets:
                k = self._scalars(group, t, scale)
                if len(b.idx) == len(present):
                    bg = grads
                else:
                    pos = {i: j for j, i in enumerate(present)}
                    bg = [grads[pos[i]] for i in b.idx]
                F.run(self._rule(group), b.params, bg, b.states, k, self.backend)
                b.step_tensors += 1.0
            # the counts moved together, so the cached plan stays valid for the next step
            self._cache[gi] = (self._cache[gi][0], [(t + 1, b) for t, b in buckets])
        self.last_grad_norm = norm
        if self.monitor is not None and norm is not None:
            self.monitor.record(norm, clipped=clipped, threshold=self.max_grad_norm)
        return loss if closure is not None else norm

    def _norm_backend(self, arrays):
        if self.backend is None or not arrays:
            return None
        device = not isinstance(arrays[0], np.ndarray)
        cpu = self.backend in ("cpp", "numba", "numpy")
        return self.backend if device != cpu else None

    # -- per-rule pieces -------------------------------------------------------------------------
    def _rule(self, group) -> str:
        raise NotImplementedError

    def _scalars(self, group, t, scale) -> Scalars:
        raise NotImplementedError

    def _gscale(self, group, scale):
        return -scale if group["maximize"] else scale


def _betas(betas):
    b1, b2 = (float(b) for b in betas)
    for name, b in (("betas[0]", b1), ("betas[1]", b2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {b}")
    return b1, b2


def _nonneg(value, name):
    value = float(value)
    if not value >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class _AdamBase(_Optimizer):
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, **kw):
        _refuse(amsgrad, "amsgrad=True")
        defaults = dict(lr=_nonneg(lr, "lr"), betas=_betas(betas), eps=_nonneg(eps, "eps"),
                        weight_decay=_nonneg(weight_decay, "weight_decay"), amsgrad=False)
        super().__init__(params, defaults, **kw)

    def _state_names(self, group):
        return (("m", "exp_avg", 0.0), ("v", "exp_avg_sq", 0.0))

    def _rule(self, group):
        return "adamw" if self._decoupled else "adam"

    def _scalars(self, group, t, scale):
        b1, b2 = group["betas"]
        return F.scalars(self._rule(group), lr=float(group["lr"]), step=t,
                         grad_scale=self._gscale(group, scale),
                         weight_decay=float(group["weight_decay"]), beta1=b1, beta2=b2,
                         eps=float(group["eps"]), torch_compat=self.semantics == "torch")

    def _check_group(self, group):
        _refuse(group.get("amsgrad"), "amsgrad=True")


class Adam(_AdamBase):
    """torch.optim.Adam's update (coupled L2 weight decay), on fastopt's kernels."""


class AdamW(_AdamBase):
    """torch.optim.AdamW's update (decoupled weight decay, default 1e-2)."""
    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, **kw):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kw)


class SGD(_Optimizer):
    """torch.optim.SGD: plain, heavy-ball momentum (with dampening) or Nesterov."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, **kw):
        defaults = dict(lr=_nonneg(lr, "lr"), momentum=_nonneg(momentum, "momentum"),
                        dampening=_nonneg(dampening, "dampening"),
                        weight_decay=_nonneg(weight_decay, "weight_decay"),
                        nesterov=bool(nesterov))
        super().__init__(params, defaults, **kw)

    def _check_group(self, group):
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        if self.semantics == "fastopt" and group["dampening"] != 0:
            raise ValueError("dampening applies to semantics='torch' (the source document's "
                             "momentum has none)")

    def _rule(self, group):
        if group["momentum"] == 0:
            return "sgd"
        return "nesterov" if group["nesterov"] else "momentum"

    def _state_names(self, group):
        return () if group["momentum"] == 0 else (("v", "momentum_buffer", 0.0),)

    def _scalars(self, group, t, scale):
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        s = self._gscale(group, scale)
        d = float(group["dampening"])
        if d and t > 0:  # PyTorch: buf <- mu buf + (1 - d) g, after a first buf = g
            s, wd = s * (1.0 - d), wd * (1.0 - d)
        return F.scalars(self._rule(group), lr=lr, step=t, grad_scale=s, weight_decay=wd,
                         momentum=float(group["momentum"]))


class RMSprop(_Optimizer):
    """torch.optim.RMSprop (v from 0, eps outside the root, lr outside the momentum buffer).

    ``semantics="fastopt"``: the source document's RMSProp (v from 1, m <- gamma m +
    lr g / sqrt(v + eps), theta <- theta - m), ``alpha`` being its rho."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, **kw):
        _refuse(centered, "centered=True (RMSprop)")
        a = float(alpha)
        if not 0.0 <= a < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {a}")
        defaults = dict(lr=_nonneg(lr, "lr"), alpha=a, eps=_nonneg(eps, "eps"),
                        weight_decay=_nonneg(weight_decay, "weight_decay"),
                        momentum=_nonneg(momentum, "momentum"), centered=False)
        super().__init__(params, defaults, **kw)

    def _check_group(self, group):
        _refuse(group.get("centered"), "centered=True (RMSprop)")

    def _rule(self, group):
        return "rmsprop"

    def _state_names(self, group):
        v0 = dict(OPTIM_STATE["rmsprop"])["v"] if self.semantics == "fastopt" else 0.0
        return (("v", "square_avg", v0), ("m", "momentum_buffer", 0.0))

    def _scalars(self, group, t, scale):
        lr, eps = float(group["lr"]), float(group["eps"])
        k = F.scalars("rmsprop", lr=lr, step=t, grad_scale=self._gscale(group, scale),
                      weight_decay=float(group["weight_decay"]),
                      momentum=float(group["momentum"]), rho=float(group["alpha"]), eps=eps)
        if self.semantics == "torch":
            k = k._replace(lr=1.0, eps=0.0, eps_out=eps, lr_out=lr)
        return k


class NAdam(_Optimizer):
    """torch.optim.NAdam, with its momentum-decay schedule mu_t = b1 (1 - 0.96^(t psi) / 2).

    ``semantics="fastopt"``: the source document's NAdam (constant b1 in the look-ahead)."""

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, *, decoupled_weight_decay=False, **kw):
        defaults = dict(lr=_nonneg(lr, "lr"), betas=_betas(betas), eps=_nonneg(eps, "eps"),
                        weight_decay=_nonneg(weight_decay, "weight_decay"),
                        momentum_decay=_nonneg(momentum_decay, "momentum_decay"),
                        decoupled_weight_decay=bool(decoupled_weight_decay))
        self._mu_products = {}
        super().__init__(params, defaults, **kw)

    def _state_names(self, group):
        return (("m", "exp_avg", 0.0), ("v", "exp_avg_sq", 0.0))

    def _rule(self, group):
        return "nadam"

    def _mu_product(self, b1, psi, n):
        """prod_{i=1..n} mu_i in float64, memoised per (b1, psi)."""
        prods = self._mu_products.setdefault((b1, psi), [1.0])
        while len(prods) <= n:
            i = len(prods)
            prods.append(prods[-1] * b1 * (1.0 - 0.5 * 0.96 ** (i * psi)))
        return prods[n]

    def _scalars(self, group, t, scale):
        b1, b2 = group["betas"]
        lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
        s = self._gscale(group, scale)
        if self.semantics == "fastopt":
            return F.scalars("nadam", lr=lr, step=t, grad_scale=s, weight_decay=wd, beta1=b1,
                             beta2=b2, eps=eps)
        psi, n = float(group["momentum_decay"]), t + 1
        mu = b1 * (1.0 - 0.5 * 0.96 ** (n * psi))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((n + 1) * psi))
        prod = self._mu_product(b1, psi, n)
        decay = 1.0
        if group["decoupled_weight_decay"]:
            wd, decay = 0.0, 1.0 - lr * wd
        # theta <- decay theta - (nm m + ng g) / (sqrt(v) / c + eps)
        return Scalars(lr=lr, wd=wd, gscale=s, momentum=0.0, rho=0.9, beta1=b1, beta2=b2,
                       eps=eps, alpha=1.0, c=math.sqrt(1.0 - b2 ** n), decay=decay,
                       nm=lr * mu_next / (1.0 - prod * mu_next), ng=lr * (1.0 - mu) / (1.0 - prod),
                       eps_out=0.0, lr_out=1.0)
