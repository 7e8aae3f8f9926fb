r"""PyTorch drop-in optimizers: subclasses of ``torch.optim``'s classes running fastopt's kernels.

``fastopt.torch.AdamW(model.parameters(), lr=1e-3)`` is a one-line swap for
``torch.optim.AdamW``: each class here subclasses its ``torch.optim`` namesake (``isinstance``
holds), takes the same arguments in the same order with the same defaults (its signature is
torch's, read with ``inspect``, plus the keyword-only options below), keeps the same param
groups and the same state under the same keys, and follows the same trajectory to float
tolerance. Each ``step()`` makes one native call per (param group, step count, dtype, device),
whatever the number of parameter tensors, on zero-copy NumPy views of the CPU tensors (cached
between steps) or on CUDA tensors through fastopt's device backend.

Classes and the torch options they honour (``semantics="torch"``, the default):

* ``Adam``, ``AdamW``: ``lr, betas, eps, weight_decay, maximize, decoupled_weight_decay``
  (Adam's ``decoupled_weight_decay=True`` is AdamW's rule, as in torch);
* ``SGD``: ``lr, momentum, dampening, weight_decay, nesterov, maximize``;
* ``RMSprop``: ``lr, alpha, eps, weight_decay, momentum, maximize`` (``alpha`` below 1: at 1
  the square average would never leave 0);
* ``NAdam``: ``lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize``
  (its ``mu_product`` is kept in the state, as torch keeps it);
* ``Adagrad``: ``lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize`` (its
  state is created in the constructor, as torch creates it; a new ``sum`` starts at the
  constructor's ``initial_accumulator_value`` whatever a param group says, as in torch);
* ``Lion`` (torch has none; it subclasses ``torch.optim.Optimizer``): ``Lion(params, lr=1e-4,
  betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False)``, the paper's rule with decoupled
  decay; its state is ``exp_avg`` only, with no step count (the rule needs none). It takes no
  ``foreach``, ``fused`` or ``differentiable`` (a TypeError, as an unknown argument).

``foreach`` and ``fused`` (where torch takes them) are accepted and stored but change nothing:
every step here is fused.
Refused with a ValueError naming the option, in the constructor, in ``add_param_group``, in a
loaded checkpoint and at ``step()`` if a group is edited to ask for it: ``amsgrad=True`` and
centered RMSprop (both need a state array our kernels do not keep), ``capturable=True`` (CUDA
graph capture of a host-driven step), ``differentiable=True`` (autograd through in-place
kernels), and any option of a newer torch set to other than its default. Also refused:
sparse or non-contiguous tensors, duplicated or memory-sharing parameters in one group, and
dtypes other than float32, float64, float16 and bfloat16 (16-bit CUDA params keep float32
state; 16-bit CPU params: see compact precision below).

Safety, whatever the caller does:

* Every hyperparameter is checked (finite, in range, of a sensible type; a one-element tensor
  is read as its value) in the constructor, in ``add_param_group``, when loading, and at every
  ``step()`` (schedulers and users edit groups between steps): a bad one is a TypeError or
  ValueError naming it, raised before anything is written.
* ``load_state_dict`` checks everything first (structure, group count and sizes, param ids,
  every state tensor's shape and dtype against its param, step counts: integral, finite,
  0 <= step <= 2**53, flags) and changes nothing when it refuses. Checkpoints load both ways
  with ``torch.optim``: older ones get torch's defaults for missing flags, a number ``step``
  is accepted, a torch SGD ``momentum_buffer`` means its first step was taken, a NAdam state
  without ``mu_product`` (fastopt.torch before it kept one) gets the product its step implies.
  Keys this module does not read are kept, as torch keeps them.
* A parameter whose shape, dtype, layout or storage no longer fits its state or its gradient
  (``p.data = ...`` on a live optimizer, state edited by hand) gets a clear error at
  ``step()``, with nothing written, rather than a kernel writing past an array.
* ``step()`` and ``load_state_dict()`` take one call at a time per optimizer: a concurrent
  second call (another thread, a hook) is a RuntimeError. Different optimizers in different
  threads are independent.
* ``copy.deepcopy`` and pickling (``torch.save(opt)``) keep every option; the copy steps on
  its own. Hooks are not copied, as in torch.

Once a CPU parameter has taken a step, the NumPy view the kernels write through makes torch
refuse to resize its storage (``untyped_storage().resize_``, as FSDP uses); a storage freed
before then is refused at ``step()``.

The state is torch's, key for key, except that ``step`` is a float64 count (exact up to 2**53;
torch's float32 count stops at 2**24).

Compact precision on the CPU (fastopt/_precision.py, docs/precision.md). CPU params may be
bfloat16 or float16, updated in place through zero-copy views. Each step loads the param (from
its master if it has one), the grad and the state as float32, applies the rule's float32
arithmetic (the same as for float32 params) and stores every result back to its storage. By
default a 16-bit param keeps **float32** state and its new value is rounded to nearest (torch.optim
keeps state of the param's dtype: bfloat16 moments there). A grad is the param's dtype or float32
(``param.grad_dtype = torch.float32`` makes autograd produce float32 grads); anything else is a
TypeError. Four keyword-only options, checked in the constructor and kept through deepcopy and
pickling, change the storage:

* ``master_weights``: ``False``; ``True``: a float32 master per 16-bit param, in
  ``state['master_param']``, the param being the master rounded to nearest; ``"remainder"``
  (bfloat16 params only): the master's low 16 bits in ``state['param_remainder']`` (int16),
  the param its high half rounded to nearest (ties away from zero), so param + remainder *is*
  the float32 master at 2 bytes a param. ``master_params()`` gives the masters (new float32
  tensors, every param in order).
* ``state_dtype``: ``"float32"``; ``"bfloat16"``; ``"int8"``: 8-bit codes (int8, or uint8 for
  buffers that are never negative: second moments, Adagrad's sum) with their blocks' float32
  maxima in ``state['<key>_absmax']`` (one per 256 elements), for params of at least 4096
  elements; smaller ones keep float32 state.
* ``stochastic_rounding``: 16-bit params without a master, and bfloat16 state, are rounded
  stochastically (unbiased: small updates are not lost) from a counter-based random stream
  keyed by ``seed`` (an integer in [0, 2**64)), the param's steps taken and its index in the
  flattened list of all groups' params (torch's state_dict numbering), so a reloaded
  checkpoint resumes the same bits. SGD and Lion, which keep no step count, then keep one in
  ``state['step']``.

Any of these options applies to CPU params of float32 and 16-bit dtypes: float64 and CUDA
params with them are refused (a ValueError naming the option). A checkpoint loads when its
buffers fit the options (a bfloat16 or float32 state widens exactly into float32 state, so
torch.optim's bfloat16 checkpoints load); one that does not fit (float32 state into bfloat16,
codes without their ``_absmax``, a master where there is none or none where there is one) is
refused with a ValueError naming the key and the option, and nothing is changed.

``semantics="fastopt"`` follows the source document's rules (``fastopt.functional``) instead:
RMSProp's v starting at 1 and eps inside the root, Adam's eps before bias correction, NAdam's
constant beta1 in the look-ahead; ``maximize`` and SGD's ``dampening`` are refused there.

Extra keyword-only options on every optimizer:

* ``max_grad_norm``: clip by the global norm of all gradients of all groups, computed in one
  read pass; the clip factor is folded into the update (gradients are not rewritten). The
  unclipped norm is returned by ``step()`` (when no closure is given) and kept in
  ``last_grad_norm``. Unlike ``torch.nn.utils.clip_grad_norm_`` there is no 1e-6 in the factor,
  and a non-finite norm clips nothing (see ``nonfinite``).
* ``nonfinite``: what a NaN or infinite norm does. ``"skip"``: the step is skipped (params,
  state and step counts untouched; a RuntimeWarning; ``last_step_skipped`` is True);
  ``"raise"``: a FloatingPointError, nothing written; ``"ignore"``: no check, the step is taken
  (torch.optim's behaviour: the non-finite values flow into the params). The default, None, is
  ``"skip"`` when the step takes the norm anyway (``max_grad_norm`` or ``monitor`` set: the
  check is free) and ``"ignore"`` otherwise, so that a plain step reads what torch's reads;
  ``"skip"`` or ``"raise"`` without them add one read pass over the grads (4 B per element).
* ``monitor``: a ``fastopt.GradNormMonitor`` that records every step's norm (and clipping).
* ``backend``: a fastopt backend name, or None for the fastest available.
* ``master_weights``, ``state_dtype``, ``stochastic_rounding``, ``seed``: compact precision on
  the CPU, above.

FSDP2 and other DTensor params (``torch.distributed.tensor.DTensor``, placed ``Shard(d)`` or
``Replicate()`` on a 1-D or n-D device mesh; fastopt/_torchdist.py). Each rank updates its own
shard in place: the kernels take zero-copy views of ``p.to_local()`` and ``p.grad.to_local()``,
in the same one native call per (group, dtype) as for plain tensors. A DTensor param's state
buffers (``exp_avg``, ..., masters) are DTensors of its mesh, placements, shape and stride, as
torch's optimizers keep them, so ``torch.distributed.checkpoint.state_dict`` saves and loads them
(a loaded DTensor's local shard is what is checked and copied; a plain tensor is refused for a
DTensor param, and a DTensor for a plain one). ``step`` stays a plain tensor.
Compact precision works on DTensor params as on plain ones (elementwise on the local shards,
so round-to-nearest storage gives the unsharded run's bits), except 8-bit state (below); under
``stochastic_rounding`` each shard's random streams are keyed by its local element index, so
the bits are reproducible at a given world size and differ (by rounding noise) at another.
Refused, before anything is written, with the param named: a ``Partial`` placement (or any but
Shard and Replicate); one param group holding DTensors of two meshes, or DTensor and plain
params; a grad that is not a DTensor of its param's mesh and placements (or a DTensor grad of a
plain param); ``state_dtype='int8'`` (its block maxima follow the local shard).
With ``max_grad_norm`` (or a ``monitor``) the norm is global over the mesh:

    norm = sqrt(sum over ranks r in rank order of S_r),

S_r the float64 sum of squares of the grad shards rank r counts, read in the same pass as
always; a shard ``Replicate()``-d on a mesh dimension counts only on the rank at coordinate 0
there (replicated data is counted once). The S_r are all-gathered and every rank adds them itself
in rank order, so every rank gets the same bits, run after run, and takes the same clip
decision; NaN and inf propagate, so a NaN in one rank's grads gives every rank a NaN norm (which
clips nothing, and which the default ``nonfinite`` skips, on every rank). The exchange carries a
failure flag: a rank that refuses its input raises its own error and the others a ValueError
saying another rank failed (none waits in the collective). All params of such an optimizer must then be DTensors of one mesh.

This module imports torch; ``import fastopt`` does not, and torch.distributed helpers
(fastopt/_torchdist.py) are imported only once a DTensor is seen.
"""
from __future__ import annotations

import copy
import inspect
import math
import numbers
import sys
import warnings
from collections import defaultdict
from collections.abc import Mapping
from itertools import compress, repeat
from operator import attrgetter, is_, is_not

import numpy as np
import torch

from . import _dispatch, _native
from . import functional as F
from . import _precision, _rules
from ._registry import ALL_BACKENDS, CPU_BACKENDS, Scalars
from ._validate import MAX_STEP, Exclusive, dtype_of, real
from .optim import _NONFINITE  # the policies fastopt's own optimizers take (SPEC §3)

__all__ = ["Adam", "AdamW", "SGD", "RMSprop", "NAdam", "Adagrad", "Lion"]

_HALF = (torch.float16, torch.bfloat16)
_CPU_DTYPES = (torch.float32, torch.float64) + _HALF
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
#: torch dtype <-> the NumPy dtype of its zero-copy view (_view)
_NP = {torch.float32: _precision.F32, torch.float64: np.dtype(np.float64),
       torch.float16: _precision.F16, torch.bfloat16: _precision.HOST_BF16,
       torch.int8: _precision.I8, torch.uint8: _precision.U8, torch.int16: _precision.I16}
_TORCH = {v: k for k, v in _NP.items()}
_CODES = (torch.int8, torch.uint8)
#: the compact-precision options (fastopt/_precision.py), keyword-only on every class
_PRECISION = (("master_weights", False), ("state_dtype", "float32"),
              ("stochastic_rounding", False), ("seed", 0))
#: where a param's float32 master lives: whole, or the low 16 bits beside a bfloat16 param
_MASTER_KEYS = {True: ("master_param", torch.float32),
                "remainder": ("param_remainder", torch.int16)}
_SEMANTICS = ("torch", "fastopt")
#: float64 counts are exact to MAX_STEP, where torch's float32 ones stop at 2**24
_STEP_DTYPE = torch.float64

# What each torch option name means here; names are shared by every class, as in torch.
_NUMBERS = {"lr": {}, "eps": {}, "weight_decay": {}, "momentum": {}, "dampening": {},
            "momentum_decay": {}, "alpha": dict(hi=1, hi_open=True), "lr_decay": {},
            "initial_accumulator_value": {}}
_FLAGS = ("maximize", "nesterov", "decoupled_weight_decay")
_IGNORED = ("foreach", "fused")  # how torch would run it; fastopt always runs fused
_REFUSED = {
    "amsgrad": "AMSGrad (it needs a max_exp_avg_sq state fastopt's Adam kernel does not keep)",
    "centered": "centered RMSprop (it needs a grad_avg state fastopt's kernel does not keep)",
    "capturable": "capturable steps (CUDA graph capture; fastopt's steps are driven from the "
                  "host; a capturable checkpoint runs the same algorithm with capturable=False)",
    "differentiable": "differentiable steps (autograd through the update; fastopt's kernels "
                      "update in place outside autograd)",
}


def _scalar_dtype():
    """torch's dtype for NAdam's mu_product: float64 only under a float64 default dtype."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


_TENSOR, _PARAM = torch.Tensor, torch.nn.Parameter
# getters for the plans' per-step checks (map over hundreds of tensors at C speed)
_LOCAL_TENSOR, _SPEC, _GRAD = attrgetter("_local_tensor"), attrgetter("_spec"), attrgetter("grad")
_MESH, _PLACEMENTS = attrgetter("mesh"), attrgetter("placements")
_SHAPE, _DTYPE, _LAYOUT = attrgetter("shape"), attrgetter("dtype"), attrgetter("layout")
_IS_CUDA, _REQUIRES_GRAD = attrgetter("is_cuda"), attrgetter("requires_grad")
_DATA_PTR, _IS_CONTIGUOUS, _NUMPY = _TENSOR.data_ptr, _TENSOR.is_contiguous, _TENSOR.numpy


_DTENSOR = []  # the DTensor class, once torch.distributed.tensor is loaded


def _is_dtensor(t) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (FSDP2's params and grads). No
    import: while that module is not loaded, no DTensor exists."""
    if type(t) is torch.Tensor or type(t) is torch.nn.Parameter:
        return False
    if not _DTENSOR:
        mod = sys.modules.get("torch.distributed.tensor")
        if mod is None:
            return False
        _DTENSOR.append(mod.DTensor)
    return isinstance(t, _DTENSOR[0])


_TORCHDIST = []


def _td():
    """fastopt/_torchdist.py, imported on first use (a DTensor has been seen)."""
    if not _TORCHDIST:
        from . import _torchdist
        _TORCHDIST.append(_torchdist)
    return _TORCHDIST[0]


def _local(t):
    """The tensor the kernels read and write: a DTensor's local shard (a plain tensor over the
    DTensor's own storage), any other tensor itself."""
    tt = type(t)
    if tt is _TENSOR or tt is _PARAM:
        return t
    if _DTENSOR and tt is _DTENSOR[0]:  # the step's hot path: hundreds of shards
        return t._local_tensor
    return _td().local(t) if _is_dtensor(t) else t


def _value(value, name):
    """A hyperparameter as a Python number (a one-element real tensor is read as its value)."""
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got a tensor "
                             f"of shape {tuple(value.shape)}")
        if value.is_complex() or value.dtype == torch.bool or value.device.type == "meta":
            raise TypeError(f"{name} must be a real number, got a {value.dtype} tensor on "
                            f"{value.device}")
        return value.item()
    return value


def _flag(value, name) -> bool:
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral)
                                                and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}"[:200])


def _betas(value, name):
    if torch.is_tensor(value) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a pair of numbers, got {type(value).__name__}")
    if len(value) != 2:
        raise ValueError(f"{name} must be a pair of numbers, got {len(value)} items")
    return tuple(real(_value(b, f"{name}[{i}]"), f"{name}[{i}]", lo=0, hi=1, hi_open=True)
                 for i, b in enumerate(value))


def _option(name, value, where, default):
    """One torch option, checked: numbers as floats, flags as bools (refused ones False)."""
    if name in _NUMBERS:
        return real(_value(value, where), where, lo=0, **_NUMBERS[name])
    if name == "betas":
        return _betas(value, where)
    if name in _FLAGS:
        return _flag(value, where)
    if name in _IGNORED:
        return None if value is None else _flag(value, where)
    if name in _REFUSED:
        if _flag(value, where):
            raise ValueError(f"{where}=True is not supported: fastopt.torch does not implement "
                             f"{_REFUSED[name]}")
        return False
    try:  # an option of a newer torch than this module knows: only its default is understood
        same = value is default or bool(value == default)
    except Exception:
        same = False
    if not same:
        raise ValueError(f"{where}={value!r} is not supported: fastopt.torch implements only "
                         f"its default, {default!r}"[:300])
    return value


def _count(value, name) -> int:
    """A step count from a checkpoint: an integral number (or 0-d tensor) in [0, MAX_STEP]."""
    v = _value(value, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a step count (a number or a one-element tensor), got "
                        f"{type(v).__name__}")
    if isinstance(v, numbers.Integral):
        n = int(v)
    else:
        f = float(v)
        if not math.isfinite(f) or not f.is_integer():
            raise ValueError(f"{name} must be a whole number of steps, got {v!r}")
        n = int(f)
    if not 0 <= n <= MAX_STEP:
        raise ValueError(f"{name} must be in [0, 2**53], got "
                         f"{n if abs(n) < 10**30 else f'an integer of {n.bit_length()} bits'}")
    return n


def _check_param(p, where: str) -> None:
    if not torch.is_tensor(p):
        raise TypeError(f"{where} must be a torch.Tensor, got {type(p).__name__}")
    if _is_dtensor(p):  # its placements, then its local shard as any tensor
        _td().check_placements(p, where)
        p = _td().local(p)
    if p.is_sparse or p.layout != torch.strided:
        raise ValueError(f"{where}: only dense (strided) tensors are supported")
    if p.is_cuda:
        if p.dtype not in _CUDA_DTYPES:
            raise TypeError(f"{where}: dtype {p.dtype} is not supported on CUDA "
                            "(float32, float64, float16, bfloat16)")
    elif p.device.type == "cpu":
        if p.dtype not in _CPU_DTYPES:
            raise TypeError(f"{where}: dtype {p.dtype} is not supported on the CPU "
                            "(float32, float64, float16, bfloat16)")
    else:
        raise TypeError(f"{where}: device {p.device} is not supported (cpu or cuda)")
    if not p.is_contiguous():
        raise ValueError(f"{where}: the tensor is not contiguous; fastopt updates tensors in "
                         "place and will not update a copy (use .contiguous() before building "
                         "the model's parameters)")
    _check_storage(p, where)


def _check_storage(t, where):
    """The tensor's storage holds its elements (one freed with untyped_storage().resize_(0),
    as FSDP does, does not: a kernel would write through a null pointer). Once a plan holds a
    NumPy view of it, torch refuses to resize that storage."""
    if t.numel() and t.untyped_storage().nbytes() < (t.storage_offset() + t.numel()) \
            * t.element_size():
        raise ValueError(f"{where}: its storage holds {t.untyped_storage().nbytes()} bytes, "
                         f"fewer than its shape {tuple(t.shape)} needs (was it freed?)")


def _check_disjoint(params, where):
    """No param of one kernel call shares memory with another: their updates would race."""
    seen = {}
    for i, p in enumerate(params):
        j = seen.setdefault(id(p), i)
        if j != i:
            raise ValueError(f"{where}: param {i} is param {j} again; list each parameter once")
    params = [_local(p) for p in params]  # DTensors: their local shards' memory
    # from the tensors, not NumPy views: a view would pin the storage's size from now on
    spans = sorted((p.data_ptr(), p.data_ptr() + p.numel() * p.element_size(), i)
                   for i, p in enumerate(params) if p.numel())
    for (_, end, i), (begin, _, j) in zip(spans, spans[1:]):
        if begin < end:
            raise ValueError(f"{where}: params {min(i, j)} and {max(i, j)} share memory (views "
                             "of one tensor?); their updates would race: put them in different "
                             "param groups")


def _check_meshes(params, where):
    """A group's params are all plain tensors, or all DTensors on one device mesh (one kernel
    call, one norm exchange). Purely local, and the same on every rank."""
    first = None
    for i, p in enumerate(params):
        if _is_dtensor(p) != _is_dtensor(params[0]):
            raise ValueError(f"{where}, param {i}: the group mixes DTensor and plain-tensor "
                             "params; put them in different param groups (or shard them all)")
        if first is None:
            first = p
        elif _is_dtensor(p) and p.device_mesh != first.device_mesh:
            raise ValueError(f"{where}, param {i}: its device mesh {p.device_mesh} is not that "
                             f"of the group's first param, {first.device_mesh}; one param group "
                             "holds DTensors of one mesh")


def _copy_held(val, p, dtype, name):
    """A new contiguous state tensor of ``p`` holding ``val`` (checked already): of the param's
    device, or a DTensor's local shard of ``val``'s local shard, wrapped as the param."""
    _check_same_kind(val, p, name)
    if _is_dtensor(p):
        td = _td()
        lp = td.local(p)
        return td.wrap(torch.empty_like(lp, dtype=dtype, memory_format=torch.contiguous_format)
                       .copy_(td.local(val)), p)
    return torch.empty_like(p, dtype=dtype, memory_format=torch.contiguous_format).copy_(val)


def _loaded_tensor(val, name, p, shape=None):
    """A checkpoint's tensor: dense, holding data, of the param's shape (or ``shape``)."""
    if not torch.is_tensor(val):
        raise TypeError(f"{name} must be a tensor, got {type(val).__name__}")
    if val.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got {val.dtype} ({val.layout})")
    if val.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on {val.device}, which holds no data to load")
    want = tuple(p.shape) if shape is None else tuple(shape)
    if tuple(val.shape) != want:
        raise ValueError(f"{name} has shape {tuple(val.shape)} but "
                         + (f"its param has {want}" if shape is None else f"should have {want}"))


def _check_same_kind(s, p, name, what=""):
    """A grad or state tensor ``s`` of a DTensor param is a DTensor of its mesh and placements;
    one of a plain param is no DTensor."""
    if _is_dtensor(p):
        _td().check_like(s, p, name, what)
    elif _is_dtensor(s):
        raise TypeError(f"{name} is a DTensor but its param is a plain tensor{what}")


def _check_held(s, p, dtype, name, shape=None):
    """A state tensor of ``p`` fits it: dense, of its shape (or ``shape``), of ``dtype``, on its
    device, contiguous, its storage there. A DTensor param's: a DTensor laid out as the param,
    whose local shard fits the param's."""
    if not torch.is_tensor(s) or s.layout != torch.strided:
        raise TypeError(f"{name} is not a dense tensor")
    _check_same_kind(s, p, name)
    if _is_dtensor(p):
        if tuple(s.shape) != tuple(p.shape):
            raise ValueError(f"{name} has shape {tuple(s.shape)}, but the param has shape "
                             f"{tuple(p.shape)}")
        s, p = _td().local(s), _td().local(p)
    want = tuple(p.shape) if shape is None else tuple(shape)
    if tuple(s.shape) != want:
        raise ValueError(f"{name} has shape {tuple(s.shape)}, but the param has shape "
                         f"{tuple(p.shape)}" + ("" if shape is None else f" (it needs {want})")
                         + " (was the param's data replaced? load a matching state or build "
                         "a new optimizer)")
    if s.dtype != dtype or s.device != p.device or not s.is_contiguous():
        raise ValueError(f"{name} is {s.dtype} on {s.device}"
                         f"{'' if s.is_contiguous() else ', not contiguous'}, but the "
                         f"param needs {dtype} on {p.device}")
    _check_storage(s, name)


def _state_dtype(p):
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


def _view(t: torch.Tensor):
    """The array a kernel uses: a NumPy view sharing memory (CPU; a bfloat16 tensor as an
    ``ml_dtypes.bfloat16`` array over its bytes) or the tensor itself (CUDA). A DTensor's is
    its local shard's."""
    t = _local(t).detach()
    if t.is_cuda:
        return t
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(_precision.HOST_BF16)
    return t.numpy()


def _active(opts) -> bool:
    """Whether compact-precision options change anything (a seed alone does not: it only keys
    stochastic rounding)."""
    return opts.master is not False or opts.state_dtype != "float32" or opts.stochastic


def _options_text(opts) -> str:
    """The options set to other than their defaults, as the caller wrote them."""
    return ", ".join(f"{n}={v!r}" for (n, d), v in zip(_PRECISION, opts) if v != d) \
        or "the default options"


class _Bucket:
    """Params of one group sharing (step count, mu_product, dtype, device): one kernel call.

    ``steps`` (and NAdam's ``mu``) hold the bucket's counts; each param's ``state['step']`` is
    a 0-d view of it, so counting a step is one in-place add. ``t`` is the count the rule's
    scalars take, ``n`` the stored one (the same, except for SGD and Lion, which store one only
    to key stochastic rounding's random streams).

    A ``compact`` bucket (16-bit CPU params, or compact-precision options) runs
    ``F.run_compact`` with its ``masters`` (per param: a float32 master, an int16 remainder or
    None; None for none at all), ``absmax`` (per state buffer, per param: 8-bit codes' block
    maxima or None) and ``ids`` (each param's index in the flattened list of all groups'
    params: its random streams' key)."""
    __slots__ = ("idx", "params", "states", "t", "n", "steps", "mu", "prod", "next_mu",
                 "compact", "masters", "absmax", "ids")

    def __init__(self, t, n, prod, compact=False):
        self.idx, self.params, self.states = [], [], None
        self.t, self.n, self.prod, self.steps, self.mu, self.next_mu = t, n, prod, None, None, None
        self.compact, self.masters, self.absmax, self.ids = compact, None, None, []

    def stale(self) -> bool:
        """True when someone changed the counts in place since the plan was made."""
        return ((self.steps is not None and bool(self.steps.ne(self.n).any()))
                or (self.mu is not None and bool(self.mu.ne(self.prod).any())))

    def advance(self):
        self.t += 1
        self.n += 1
        if self.steps is not None:
            self.steps += 1.0
        if self.mu is not None:
            self.mu *= self.next_mu  # the op torch's NAdam applies, so the same rounding
            self.prod = float(self.mu[0])


class _Plan:
    """A group's buckets, valid while its params, their storage and their state objects are
    the ones it was made from (checked at every step by identity, cheaply).

    The per-step checks (``valid``, ``grads``) run as C-level ``map``s over flat lists made
    here, not as a Python loop per tensor: a model has hundreds of tensors, and FSDP2 shards
    every one on every rank. Any mismatch sends the step to the per-tensor path, which says
    what is wrong or makes a new plan."""
    __slots__ = ("present", "layout", "offset", "params", "entries", "buckets", "counted",
                 "locals", "ptrs", "shapes", "dtypes", "dts", "dt_locals", "h_entries",
                 "h_keys", "h_objs", "h_locals", "h_ptrs", "h_dts", "h_dt_locals", "meshes",
                 "placements", "global_shapes", "host", "like")

    def __init__(self, present, layout, offset):
        self.present, self.layout, self.offset = present, layout, offset
        for k in self.__slots__[3:]:
            setattr(self, k, [])

    def watch(self, p, entry, keys, counted: bool):
        """Record param ``p`` (in ``present`` order), its state ``entry`` and the keys of the
        state tensors whose identity and memory are checked at every step."""
        lp = _local(p)
        self.params.append(p)
        self.entries.append(entry)
        self.counted.append(counted)
        self.locals.append(lp)
        self.like.append(_view(lp) if lp.device.type == "cpu" else None)
        self.ptrs.append(lp.data_ptr())
        self.shapes.append(lp.shape)
        self.dtypes.append(lp.dtype)
        if lp is not p:  # a DTensor: its shard, and the layout its grads must have
            self.dts.append(p)
            self.dt_locals.append(lp)
            self.meshes.append(p._spec.mesh)
            self.placements.append(p._spec.placements)
            self.global_shapes.append(p.shape)
        for k in keys:
            o = entry[k]
            lo = _local(o)
            self.h_entries.append(entry)
            self.h_keys.append(k)
            self.h_objs.append(o)
            self.h_locals.append(lo)
            self.h_ptrs.append(lo.data_ptr())
            if lo is not o:
                self.h_dts.append(o)
                self.h_dt_locals.append(lo)

    def seal(self, buckets):
        self.buckets = buckets
        # the grads' fast path: all plain or all DTensor params (a group mixes neither), on
        # the CPU, of dtypes NumPy views directly
        self.host = (not self.dts or len(self.dts) == len(self.params)) and all(
            lp.device.type == "cpu" and lp.dtype is not torch.bfloat16 for lp in self.locals)

    def valid(self, opt, params, present, layout, offset) -> bool:
        if present != self.present or layout != self.layout or offset != self.offset:
            return False
        locs = self.locals
        if not (all(map(is_, map(params.__getitem__, present), self.params))
                and all(map(is_, map(opt.state.get, self.params), self.entries))
                # a DTensor's shard is the same tensor, every shard over the same memory
                and all(map(is_, map(_LOCAL_TENSOR, self.dts), self.dt_locals))
                and list(map(_DATA_PTR, locs)) == self.ptrs
                and list(map(_SHAPE, locs)) == self.shapes
                and all(map(is_, map(_DTYPE, locs), self.dtypes))
                and all(map(_IS_CONTIGUOUS, locs))
                # the same state tensors (a DTensor's around the same shard), over the same
                # memory (not set_() away)
                and all(map(is_, map(dict.get, self.h_entries, self.h_keys), self.h_objs))
                and all(map(is_, map(_LOCAL_TENSOR, self.h_dts), self.h_dt_locals))
                and list(map(_DATA_PTR, self.h_locals)) == self.h_ptrs):
            return False
        return not any(b.stale() for b in self.buckets)

    def grads(self, all_grads):
        """NumPy views of the present params' grads (``all_grads``: the grads of every param of
        the group, None for none) when every one is what this plan expects
        (for a DTensor param: a DTensor of its mesh, placements and global shape around a
        plain shard; then: a contiguous dense CPU tensor of the param's local shape and dtype,
        not requiring grad), else None (the per-tensor path checks them and says what is
        wrong). Only for plans that ``host``."""
        gs = all_grads if len(self.present) == len(all_grads) else \
            list(map(all_grads.__getitem__, self.present))
        if self.dts:
            if not all(map(is_, map(type, gs), repeat(_DTENSOR[0]))):
                return None
            specs = list(map(_SPEC, gs))
            # identity first (FSDP2 builds grads with the param's own spec), else equality
            if not (all(map(is_, map(_MESH, specs), self.meshes))
                    or list(map(_MESH, specs)) == self.meshes):
                return None
            if not (all(map(is_, map(_PLACEMENTS, specs), self.placements))
                    or list(map(_PLACEMENTS, specs)) == self.placements):
                return None
            if list(map(_SHAPE, gs)) != self.global_shapes:
                return None
            gs = list(map(_LOCAL_TENSOR, gs))
        if (all(map(is_, map(type, gs), repeat(_TENSOR)))
                and all(map(is_, map(_DTYPE, gs), self.dtypes))
                and list(map(_SHAPE, gs)) == self.shapes
                and all(map(is_, map(_LAYOUT, gs), repeat(torch.strided)))
                and not any(map(_IS_CUDA, gs)) and not any(map(_REQUIRES_GRAD, gs))
                and all(map(_IS_CONTIGUOUS, gs))):
            ext = _native.cpu()
            if ext is None:  # no C++ extension: torch's own views
                return list(map(_NUMPY, gs))
            # views shaped and typed as the params' (checked just above), over each grad's
            # memory, each keeping its grad alive: torch's .numpy() costs a few us a tensor
            return ext.host_views(gs, list(map(_DATA_PTR, gs)), self.like)
        return None


class _Fused(torch.optim.Optimizer):
    """Shared machinery. A subclass names its torch class as a base and defines ``_rule``,
    ``_tensors`` and ``_scalars``; its signature and defaults are derived from torch's. A rule
    torch has no class for names instead a plain ``torch.optim.Optimizer`` subclass whose
    constructor declares the options and builds the defaults dict, as torch's would (Lion)."""

    _counted = True  # keeps state['step'] (torch's SGD does not)
    _mu = False      # keeps NAdam's state['mu_product']

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        # the first base that is an optimizer of its own: torch's namesake, or an options class
        base = next(c for c in cls.__mro__ if issubclass(c, torch.optim.Optimizer)
                    and not issubclass(c, _Fused) and c is not torch.optim.Optimizer)
        cls._torch = base
        cls._torch_signature = inspect.signature(base)
        # torch's own defaults dict (AdamW adds decoupled_weight_decay=True to its arguments)
        cls._torch_defaults = dict(base([torch.zeros(1, requires_grad=True)]).defaults)
        own = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
               for n, d in (("max_grad_norm", None), ("nonfinite", None), ("monitor", None),
                            ("backend", None), ("semantics", "torch")) + _PRECISION]
        cls.__signature__ = cls._torch_signature.replace(
            parameters=list(cls._torch_signature.parameters.values()) + own)

    def __init__(self, params, *args, max_grad_norm=None, nonfinite=None, monitor=None,
                 backend=None, semantics="torch", master_weights=False, state_dtype="float32",
                 stochastic_rounding=False, seed=0, **kwargs):
        bound = self._torch_signature.bind(params, *args, **kwargs)  # TypeError as in torch
        given = {n: v for n, v in bound.arguments.items() if n != "params"}
        opts = {n: given.get(n, p.default)
                for n, p in self._torch_signature.parameters.items() if n != "params"}
        if semantics not in _SEMANTICS:
            raise ValueError(f"semantics must be one of {_SEMANTICS}, got {semantics!r}"[:200])
        self.semantics = semantics
        h = {n: _option(n, v, n, self._torch_defaults.get(n)) for n, v in opts.items()}
        if h.get("foreach") and h.get("fused"):
            raise ValueError("foreach=True and fused=True cannot be combined (as in torch)")
        self._check_combination(dict(self._torch_defaults, **h), "")
        if max_grad_norm is not None:
            max_grad_norm = real(max_grad_norm, "max_grad_norm", lo=0, lo_open=True)
        if nonfinite is not None and (not isinstance(nonfinite, str)
                                      or nonfinite not in _NONFINITE):
            raise ValueError(f"nonfinite must be None or one of "
                             f"{', '.join(map(repr, _NONFINITE))}, got {nonfinite!r:.80}")
        if monitor is not None and not callable(getattr(monitor, "record", None)):
            raise TypeError("monitor must be a fastopt.GradNormMonitor (or have a record "
                            f"method), got {type(monitor).__name__}")
        if backend is not None:
            if backend not in ALL_BACKENDS:
                raise ValueError(f"backend must be None or one of {', '.join(ALL_BACKENDS)}, "
                                 f"got {backend!r}"[:200])
            reason = _dispatch.unavailable_reason(backend)
            if reason is not None:
                raise ValueError(f"backend={backend!r} is not available: {reason}")
        # checked before torch adds the groups: add_param_group checks each param against them
        self.precision = _precision.check(master_weights, state_dtype, stochastic_rounding,
                                          seed)
        self.max_grad_norm = max_grad_norm
        self.nonfinite = nonfinite
        self.last_step_skipped = False
        self.monitor = monitor
        self.backend = backend
        self.last_grad_norm = None
        self._cache = {}
        self._exclusive = Exclusive()
        super().__init__(params, *args, **kwargs)
        if self.precision.master is not False and not any(
                p.dtype in _HALF for g in self.param_groups for p in g["params"]):
            raise ValueError(f"master_weights={self.precision.master!r} keeps float32 masters "
                             "of 16-bit params, but no param is bfloat16 or float16")
        # torch's fused=True tells GradScaler that step() unscales the gradients itself; this
        # step does not, so GradScaler must unscale them first, as for any other optimizer
        self.__dict__.pop("_step_supports_amp_scaling", None)

    # -- checks ----------------------------------------------------------------------------------
    def _hyper(self, group, where) -> dict:
        """The group's options, checked, as Python numbers and bools."""
        h = {}
        for name, default in self._torch_defaults.items():
            if name not in group:
                raise ValueError(f"{where} lacks {name!r}")
            h[name] = _option(name, group[name], f"{where}[{name!r}]", default)
        self._check_combination(h, where)
        return h

    def _check_precision(self, p, where):
        """The compact-precision options fit this param: they run on CPU params of float32 and
        16-bit dtypes, and remainders complete bfloat16 values only."""
        opts = self.precision
        if not _active(opts):
            return
        if p.device.type != "cpu":
            raise ValueError(f"{_options_text(opts)}: compact-precision options run on CPU "
                             f"params, but {where} is on {p.device} (on CUDA, 16-bit params "
                             "keep float32 state; leave these options at their defaults)")
        if p.dtype == torch.float64:
            raise ValueError(f"{where} is float64, which takes no compact-precision option "
                             f"({_options_text(opts)}); those are for float32 and 16-bit params")
        if opts.state_dtype == "int8" and _is_dtensor(p):
            raise ValueError(f"state_dtype='int8' is not supported for DTensor params ({where}): "
                             "its per-block maxima follow the local shard, not the DTensor's "
                             "layout; use 'bfloat16' or 'float32'")
        if opts.master == "remainder" and p.dtype == torch.float16:
            raise ValueError(
                f"master_weights='remainder' needs bfloat16 params, but {where} is float16: a "
                "bfloat16 value is the high half of a float32, so 16 more bits complete it; a "
                "float16 value is not part of any float32's bits. Use master_weights=True for "
                "float16")

    def _check_combination(self, h, where):
        if self.semantics == "fastopt" and h.get("maximize"):
            raise ValueError(f"{where + '[' + repr('maximize') + ']' if where else 'maximize'}"
                             "=True applies to semantics='torch'")

    # -- param groups and checkpoints -----------------------------------------------------------
    def add_param_group(self, param_group):
        with self._exclusive("add_param_group()"):
            super().add_param_group(param_group)
            gi = len(self.param_groups) - 1
            try:  # validated after torch has normalised it; a refused group is taken out again
                group = self.param_groups[gi]
                for i, p in enumerate(group["params"]):
                    _check_param(p, f"param group {gi}, param {i}")
                    self._check_precision(p, f"param group {gi}, param {i}")
                _check_meshes(group["params"], f"param group {gi}")
                _check_disjoint(group["params"], f"param group {gi}")
                self._hyper(group, f"param_groups[{gi}]")
            except BaseException:
                del self.param_groups[gi]
                raise
            self._cache = {}

    def load_state_dict(self, state_dict):
        """torch's ``load_state_dict`` (hooks included), with everything checked first: a
        refused checkpoint raises and leaves the optimizer exactly as it was."""
        with self._exclusive("load_state_dict()"):
            if not isinstance(state_dict, Mapping):
                raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
            state_dict = dict(state_dict)
            for hook in self._optimizer_load_state_dict_pre_hooks.values():
                out = hook(self, state_dict)
                if out is not None:
                    state_dict = out
            state, groups = self._loaded(state_dict)
            self.state, self.param_groups = state, groups
            self._cache = {}
            for hook in self._optimizer_load_state_dict_post_hooks.values():
                hook(self)

    def _loaded(self, sd):
        """(state, param_groups) that loading ``sd`` gives, or an error; ``self`` untouched."""
        if not isinstance(sd, Mapping) or "state" not in sd or "param_groups" not in sd:
            raise ValueError("state_dict must have 'state' and 'param_groups' (from "
                             "optimizer.state_dict())")
        saved, saved_state = sd["param_groups"], sd["state"]
        if not isinstance(saved, (list, tuple)) or not all(isinstance(g, Mapping)
                                                           for g in saved):
            raise TypeError("state_dict['param_groups'] must be a list of dicts")
        if not isinstance(saved_state, Mapping):
            raise TypeError("state_dict['state'] must be a dict")
        if len(saved) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved)} param groups but the optimizer has "
                             f"{len(self.param_groups)}")
        id_map = {}
        for gi, (g, sg) in enumerate(zip(self.param_groups, saved)):
            ids = sg.get("params")
            if not isinstance(ids, (list, tuple)):
                raise TypeError(f"state_dict['param_groups'][{gi}]['params'] must be a list of "
                                "param ids")
            if len(ids) != len(g["params"]):
                raise ValueError(f"state_dict['param_groups'][{gi}] has {len(ids)} params but "
                                 f"param group {gi} has {len(g['params'])}")
            for j, (k, p) in enumerate(zip(ids, g["params"])):
                try:
                    dup = k in id_map
                except TypeError:
                    raise TypeError(f"state_dict['param_groups'][{gi}]['params'][{j}] must be "
                                    f"a param id, got {type(k).__name__}") from None
                if dup or isinstance(k, bool):
                    raise ValueError(f"state_dict['param_groups'][{gi}]['params'][{j}]: param "
                                     f"id {k!r} is invalid or listed twice"[:200])
                id_map[k] = (p, gi)
        for k in saved_state:
            try:
                known = k in id_map
            except TypeError:
                known = False
            if not known:
                raise ValueError(f"state_dict['state'] has an entry for param id {k!r}, which "
                                 "no param group lists (a checkpoint of another model?)"[:200])
        groups = []
        for g, sg in zip(self.param_groups, saved):
            ng = copy.deepcopy({k: v for k, v in sg.items() if k != "params"})
            ng["params"] = g["params"]
            if "param_names" in g and "param_names" not in ng:
                ng["param_names"] = g["param_names"]
            groups.append(ng)
        # torch's own __setstate__ gives older checkpoints the flags they lack, run here on a
        # stand-in object so that this optimizer changes only once everything has passed
        stand_in = object.__new__(type(self))
        super(_Fused, stand_in).__setstate__({"defaults": dict(self.defaults), "state": {},
                                              "param_groups": groups})
        hypers = [self._hyper(g, f"state_dict['param_groups'][{gi}]")
                  for gi, g in enumerate(groups)]
        state = defaultdict(dict)
        for k, entry in saved_state.items():
            p, gi = id_map[k]
            state[p] = self._loaded_entry(p, entry, hypers[gi], f"state_dict['state'][{k!r}]")
        return state, groups

    def _loaded_entry(self, p, entry, h, where):
        if not isinstance(entry, Mapping):
            raise TypeError(f"{where} must be a dict, got {type(entry).__name__}")
        out = {}
        if self._keeps_step and entry:
            if "step" in entry:
                out["step"] = torch.tensor(float(_count(entry["step"], f"{where}['step']")),
                                           dtype=_STEP_DTYPE)
            elif self._counted:
                raise ValueError(f"{where} lacks 'step'")
            else:  # SGD and Lion count steps only to key stochastic rounding's streams
                out["step"] = torch.tensor(0.0, dtype=_STEP_DTYPE)
        rule = _rules.get(self._rule(h))
        for name, key, _, required in self._tensors(h):
            if key is None:
                continue
            val, akey = entry.get(key), f"{key}_absmax"
            am = entry.get(akey)
            if val is None:
                out.pop(key, None)
                if required and entry:
                    raise ValueError(f"{where} lacks {key!r}")
                if am is not None:
                    raise ValueError(f"{where} holds {akey!r} (block maxima of 8-bit codes) but "
                                     f"no {key!r}")
                continue
            name_ = f"{where}[{key!r}]"
            want = self._storage(p, rule, name)
            _loaded_tensor(val, name_, p)
            if want in _CODES:
                if val.dtype != want:
                    raise ValueError(f"{name_} is {val.dtype}, but this optimizer keeps it as "
                                     f"{want} 8-bit codes ({self._why(p, want)}): the "
                                     "checkpoint was saved with other options")
                if am is None:
                    raise ValueError(f"{where} lacks {akey!r}, the block maxima of its 8-bit "
                                     f"codes {key!r} ({self._why(p, want)}): without them the "
                                     "codes mean nothing")
                nb = _precision.nblocks(p.numel())
                _loaded_tensor(am, f"{where}[{akey!r}]", p, (nb,))
                if am.dtype != torch.float32:
                    raise ValueError(f"{where}[{akey!r}] is {am.dtype}; block maxima are "
                                     "float32")
                if bool((am < 0).any()):
                    raise ValueError(f"{where}[{akey!r}] holds negative values; it is a "
                                     "block's largest magnitude, which is never negative")
                out[key] = torch.empty(p.shape, dtype=want).copy_(val)
                out[akey] = torch.empty((nb,), dtype=torch.float32).copy_(am)
                continue
            if am is not None:
                raise ValueError(f"{where} holds {akey!r}, the block maxima of 8-bit codes, "
                                 f"but this optimizer keeps {key!r} as {want} "
                                 f"({self._why(p, want)}): the checkpoint was saved with other "
                                 "options")
            if val.dtype in _CODES:
                raise ValueError(f"{name_} is {val.dtype} (8-bit codes, state_dtype='int8'), "
                                 f"but this optimizer keeps it as {want} "
                                 f"({self._why(p, want)}): the checkpoint was saved with other "
                                 "options")
            if not val.is_floating_point():
                raise TypeError(f"{name_} must be a dense floating-point tensor, got "
                                f"{val.dtype} ({val.layout})")
            if want == torch.bfloat16 and val.dtype != torch.bfloat16:
                raise ValueError(f"{name_} is {val.dtype}, but this optimizer keeps it as "
                                 "bfloat16 (state_dtype='bfloat16'); rounding it here would "
                                 "change it: load a checkpoint saved with the same options")
            out[key] = _copy_held(val, p, want, name_)
        mk = self._master_key(p)
        for k, _ in _MASTER_KEYS.values():
            if entry.get(k) is not None and (mk is None or mk[0] != k):
                raise ValueError(
                    f"{where} holds {k!r}, but this optimizer keeps "
                    + ("no master for this param" if mk is None else repr(mk[0]))
                    + f" (master_weights={self.precision.master!r}, a {p.dtype} param): the "
                    "checkpoint was saved with other options")
        if mk is not None and entry:
            k, dt = mk
            val = entry.get(k)
            if val is None:
                raise ValueError(
                    f"{where} lacks {k!r}: master_weights={self.precision.master!r} keeps the "
                    + ("param's float32 master there" if dt == torch.float32 else
                       "low 16 bits of the param's float32 master there")
                    + "; the checkpoint was saved with other options (the param alone is "
                    "its master rounded, which cannot be undone)")
            _loaded_tensor(val, f"{where}[{k!r}]", p)
            if val.dtype != dt:
                raise ValueError(f"{where}[{k!r}] is {val.dtype}; master_weights="
                                 f"{self.precision.master!r} keeps it as {dt}")
            out[k] = _copy_held(val, p, dt, f"{where}[{k!r}]")
        if self._mu and entry:
            if "mu_product" not in entry:  # fastopt.torch's NAdam kept none before
                mu = self._rebuilt_mu_product(int(out["step"]), h, where)
            else:
                mu = real(_value(entry["mu_product"], f"{where}['mu_product']"),
                          f"{where}['mu_product']", lo=0, hi=1)
            out["mu_product"] = torch.tensor(mu, dtype=_scalar_dtype())
        for key, val in entry.items():  # keys this class does not use are kept, as torch does
            if key not in out and val is not None:
                out[key] = val.detach().clone() if torch.is_tensor(val) else copy.deepcopy(val)
        return out

    def __getstate__(self):
        state = super().__getstate__()  # torch keeps defaults, state and param_groups only
        state["fastopt"] = {k: getattr(self, k, None) for k in
                            ("semantics", "max_grad_norm", "nonfinite", "monitor",
                             "backend", "last_grad_norm", "last_step_skipped")}
        state["fastopt"]["precision"] = tuple(getattr(self, "precision", _precision.DEFAULT))
        return state

    def __setstate__(self, state):
        state = dict(state)
        own = state.pop("fastopt", None)
        super().__setstate__(state)
        if own is not None:
            self.__dict__.update(own)
        for k, v in (("semantics", "torch"), ("max_grad_norm", None), ("nonfinite", None),
                     ("monitor", None), ("backend", None), ("last_grad_norm", None),
                     ("last_step_skipped", False),
                     ("precision", _precision.DEFAULT)):
            self.__dict__.setdefault(k, v)  # a pickle of an older fastopt.torch
        self.precision = _precision.check(*self.precision)
        self._cache = {}
        self._exclusive = Exclusive()

    # -- state -----------------------------------------------------------------------------------
    def _tensors(self, h):
        """(kernel state name, torch state key, initial value, required in a non-empty state),
        in kernel argument order; a key of None is scratch space, kept out of the state.
        By default: the rule's buffers under the torch keys its declaration names."""
        return self._declared(h, required=True)

    def _declared(self, h, *, required, init=None, keep=None):
        """The rule's state buffers (fastopt/_rules) with their declared torch keys; ``init``
        overrides initial values by name; buffers outside ``keep`` are scratch (key None)."""
        r = _rules.get(self._rule(h))
        init = init or {}
        return tuple((n, r.torch_state[n] if keep is None or n in keep else None,
                      init.get(n, 0.0 if isinstance(v, str) else v), required)
                     for n, v in r.state)

    @property
    def _keeps_step(self) -> bool:
        """Whether each param's state holds 'step': torch's count, or (SGD, Lion) a count kept
        only to key stochastic rounding's random streams."""
        return self._counted or self.precision.stochastic

    def _steps_taken(self, st) -> int:
        return int(st["step"]) if self._counted and st else 0

    def _stored_steps(self, st) -> int:
        return int(st["step"]) if self._keeps_step and st and "step" in st else 0

    def _is_compact(self, p) -> bool:
        """Whether p's steps run on compact storage (fastopt/_precision.py): a 16-bit CPU
        param, or any CPU param under compact-precision options."""
        return p.device.type == "cpu" and (p.dtype in _HALF or _active(self.precision))

    def _storage(self, p, rule, name):
        """The dtype of p's state buffer ``name`` of ``rule``."""
        if p.device.type != "cpu" or p.dtype == torch.float64:
            return _state_dtype(p)
        return _TORCH[_precision.state_storage(rule, name, p.numel(), _NP[p.dtype],
                                               self.precision.state_dtype)]

    def _why(self, p, dtype) -> str:
        """Why p's state buffers are ``dtype``: the option, in words."""
        sd = self.precision.state_dtype
        if sd == "int8" and dtype == torch.float32 and p.device.type == "cpu":
            return (f"state_dtype='int8' keeps arrays under {_precision.QMIN_SIZE} elements in "
                    "float32")
        if sd == "int8" and dtype in _CODES:
            return (f"state_dtype='int8' for params of >= {_precision.QMIN_SIZE} elements; "
                    "uint8 for buffers that are never negative")
        return f"state_dtype={sd!r}"

    def _master_key(self, p):
        """(state key, dtype) of p's master, or None: masters are kept for 16-bit CPU params."""
        m = self.precision.master
        if m is False or p.device.type != "cpu" or p.dtype not in _HALF:
            return None
        if m == "remainder" and p.dtype != torch.bfloat16:
            return None  # refused (_check_precision) before any step
        return _MASTER_KEYS[m]

    def _new_buffer(self, p, rule, name, init):
        """(a fresh state buffer of p at ``init``, its block maxima or None)."""
        want = self._storage(p, rule, name)
        if want in _CODES:  # (refused for DTensors: _check_precision)
            codes, am = _precision.quantise(np.full(p.numel(), init, np.float32), _NP[want])
            return (torch.from_numpy(codes.reshape(tuple(p.shape))).clone(),
                    torch.from_numpy(am).clone())
        if _is_dtensor(p):  # a DTensor of the param's layout around a new local buffer
            td = _td()
            return td.wrap(torch.full_like(td.local(p), init, dtype=want,
                                           memory_format=torch.contiguous_format), p), None
        return torch.full_like(p, init, dtype=want, memory_format=torch.contiguous_format), None

    def _fill_state(self, p, h, st):
        """Give p's state ``st`` what it lacks: the counts, the rule's buffers at their initial
        values (8-bit ones with their block maxima) and the master (the param widened, or a
        zero remainder: param + 0 is the param exactly)."""
        if self._keeps_step and "step" not in st:
            st["step"] = torch.tensor(0.0, dtype=_STEP_DTYPE)
        if self._mu and "mu_product" not in st:
            st["mu_product"] = torch.tensor(1.0, dtype=_scalar_dtype())
        rule = _rules.get(self._rule(h))
        for name, key, init, _ in self._tensors(h):
            if key is not None and st.get(key) is None:
                st[key], am = self._new_buffer(p, rule, name, init)
                if am is not None:
                    st[f"{key}_absmax"] = am
        mk = self._master_key(p)
        if mk is not None and st.get(mk[0]) is None:
            lp = _local(p)
            m = torch.empty(lp.shape, dtype=torch.float32).copy_(lp.detach()) \
                if mk[1] == torch.float32 else torch.zeros(lp.shape, dtype=torch.int16)
            st[mk[0]] = _td().wrap(m, p) if _is_dtensor(p) else m

    def _check_state(self, p, h, where):
        """The param's state fits the param (a param swapped under the optimizer does not)."""
        st = self.state.get(p)
        if not st:
            return
        if self._keeps_step:
            if not torch.is_tensor(st.get("step")):
                raise ValueError(f"{where}: its state lacks a 'step' tensor")
            _count(st["step"], f"{where}: state['step']")
        rule = _rules.get(self._rule(h))
        for name, key, _, required in self._tensors(h):
            if key is None:
                continue
            s = st.get(key)
            if s is None:
                if required:
                    raise ValueError(f"{where}: its state lacks {key!r}")
                continue
            want = self._storage(p, rule, name)
            _check_held(s, p, want, f"{where}: state[{key!r}]")
            if want in _CODES:
                akey = f"{key}_absmax"
                if st.get(akey) is None:
                    raise ValueError(f"{where}: its state lacks {akey!r}, the block maxima of "
                                     f"its 8-bit codes {key!r}")
                _check_held(st[akey], p, torch.float32, f"{where}: state[{akey!r}]",
                            (_precision.nblocks(p.numel()),))
        mk = self._master_key(p)
        if mk is not None:
            if st.get(mk[0]) is None:
                raise ValueError(f"{where}: its state lacks {mk[0]!r} (master_weights="
                                 f"{self.precision.master!r})")
            _check_held(st[mk[0]], p, mk[1], f"{where}: state[{mk[0]!r}]")
        if self._mu:
            if not torch.is_tensor(st.get("mu_product")):
                raise ValueError(f"{where}: its state lacks a 'mu_product' tensor")
            real(_value(st["mu_product"], f"{where}: state['mu_product']"),
                 f"{where}: state['mu_product']", lo=0, hi=1)

    def _build_plan(self, gi, group, present, h, layout, offset):
        """Buckets for the params of ``group`` that have a gradient (indices ``present``);
        new params get their state here. Everything was checked before. ``offset``: the
        number of params in the groups before this one (param i's random streams are keyed
        by offset + i)."""
        params = group["params"]
        by = {}
        plan = _Plan(present, layout, offset)
        specs = self._tensors(h)
        for i in present:
            p = params[i]
            st = self.state.get(p)
            mk = self._master_key(p)
            if specs or self._keeps_step or mk is not None:
                st = self.state[p]
                t, n = self._steps_taken(st), self._stored_steps(st)
                self._fill_state(p, h, st)
            else:
                t = n = 0
            prod = float(st["mu_product"]) if self._mu else None
            compact = self._is_compact(p)
            b = by.get((t, n, prod, p.dtype, p.device))
            if b is None:
                b = by[(t, n, prod, p.dtype, p.device)] = _Bucket(t, n, prod, compact)
                b.states = [[] for _ in specs]
                if compact:
                    b.absmax, b.masters = [[] for _ in specs], []
            b.idx.append(i)
            b.ids.append(offset + i)
            b.params.append(_view(p))
            for j, (_, key, init, _) in enumerate(specs):
                s = st[key] if key is not None else torch.full_like(  # scratch
                    _local(p), init, dtype=torch.float32 if compact else _state_dtype(p),
                    memory_format=torch.contiguous_format)
                b.states[j].append(_view(s))
                if compact:
                    b.absmax[j].append(_view(st[f"{key}_absmax"]) if s.dtype in _CODES
                                       else None)
            if compact:
                b.masters.append(None if mk is None else _view(st[mk[0]]))
        buckets = list(by.values())
        for b in buckets:
            if b.masters is not None and all(m is None for m in b.masters):
                b.masters = None
            tensors = [params[i] for i in b.idx]
            if self._keeps_step:
                b.steps = torch.full((len(b.idx),), float(b.n), dtype=_STEP_DTYPE)
                for j, p in enumerate(tensors):
                    self.state[p]["step"] = b.steps[j]
            if self._mu:
                b.mu = torch.full((len(b.idx),), b.prod, dtype=_scalar_dtype())
                b.prod = float(b.mu[0])  # the value as stored, which the staleness check reads
                for j, p in enumerate(tensors):
                    self.state[p]["mu_product"] = b.mu[j]
        base = (("step",) if self._keeps_step else ()) + (("mu_product",) if self._mu else ())
        for i in present:
            p = params[i]
            entry = self.state.get(p)
            counted = _td().counted(p) if _local(p) is not p else True
            if entry is None:
                plan.watch(p, entry, (), counted)
                continue
            keys = list(base)
            for _, key, _, _ in specs:
                if key is not None:
                    keys.append(key)
                    if entry[key].dtype in _CODES:
                        keys.append(f"{key}_absmax")
            mk = self._master_key(p)
            if mk is not None:
                keys.append(mk[0])
            plan.watch(p, entry, keys, counted)
        plan.seal(buckets)
        self._cache[gi] = plan
        return plan

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient.

        Returns the closure's loss when a closure is given, else the unclipped global gradient
        norm when the step takes it (``max_grad_norm``, ``monitor``, or ``nonfinite`` "skip"
        or "raise"), else None. Everything is checked before anything is written. A NaN or
        infinite norm is skipped or raised on (``nonfinite``) before anything is written."""
        with self._exclusive("step()"):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            policy = self.nonfinite
            need_norm = (self.max_grad_norm is not None or self.monitor is not None
                         or policy in ("skip", "raise"))
            if policy is None:  # the check rides on a norm pass that runs anyway
                policy = "skip" if need_norm else "ignore"
            # DTensor params: the norm is a collective over their mesh (None: a local norm)
            exchange = self._exchange() if need_norm else None
            try:
                work, norm_grads = self._collect(exchange is not None)
            except BaseException:
                if exchange is not None:  # the other ranks must not wait for this one
                    exchange.abandon("step()")
                raise
            # nothing has been written so far; from here on nothing can be refused (but a
            # distributed norm raises here, before any write, when another rank refused)
            norm, scale, clipped = None, 1.0, False
            if need_norm:
                from .norm import _norm_checked, global_norm  # one read pass over the grads

                backend = self._norm_backend(norm_grads)
                if exchange is not None:
                    norm = _norm_checked(norm_grads, backend, group=exchange)
                else:
                    norm = global_norm(norm_grads, backend=backend) if norm_grads else 0.0
                if not math.isfinite(norm) and policy != "ignore":
                    # every rank has the same norm (the exchange's sum), so every rank stops here
                    self.last_grad_norm, self.last_step_skipped = norm, policy == "skip"
                    if self.monitor is not None:
                        self.monitor.record(norm, clipped=False, threshold=self.max_grad_norm)
                    if policy == "raise":
                        raise FloatingPointError(f"the gradient norm is {norm}; nothing was "
                                                 "updated (nonfinite='raise')")
                    warnings.warn(f"skipped a step: the gradient norm is {norm}; params, state "
                                  "and step counts are unchanged", RuntimeWarning, stacklevel=3)
                    return loss if closure is not None else norm
                if (self.max_grad_norm is not None and math.isfinite(norm)
                        and norm > self.max_grad_norm):
                    scale, clipped = self.max_grad_norm / norm, True
            runs = []
            for gi, group, present, h, layout, plan, grads, group_offset in work:
                if plan is None:
                    plan = self._build_plan(gi, group, present, h, layout, group_offset)
                rule = self._rule(h)
                pos = {i: j for j, i in enumerate(present)}
                for b in plan.buckets:
                    bg = grads if len(b.idx) == len(present) else [grads[pos[i]] for i in b.idx]
                    runs.append((rule, b, bg, self._scalars(h, b, scale)))
            opts = self.precision
            for rule, b, bg, k in runs:
                if b.compact:
                    F.run_compact(rule, b.params, bg, b.masters, b.states, b.absmax, k,
                                  (opts.seed, b.n, b.ids) if opts.stochastic else None,
                                  self.backend)
                else:
                    F.run(rule, b.params, bg, b.states, k, self.backend)
                b.advance()
            self.last_grad_norm, self.last_step_skipped = norm, False
            if self.monitor is not None and norm is not None:
                self.monitor.record(norm, clipped=clipped, threshold=self.max_grad_norm)
            return loss if closure is not None else norm

    def _collect(self, distributed):
        """Everything checked, nothing written: [(gi, group, present, h, layout, plan or None,
        grads, group offset)] and the grads the norm reads (``distributed``: only the shards
        this rank counts, see _torchdist.counted)."""
        work, norm_grads = [], []
        offset = 0  # params in the groups before this one (random-stream keys)
        for gi, group in enumerate(self.param_groups):
            where = f"param_groups[{gi}]"
            h = self._hyper(group, where)
            params = group["params"]
            offset, group_offset = offset + len(params), offset
            all_grads = list(map(_GRAD, params))
            present = tuple(compress(range(len(params)), map(is_not, all_grads, repeat(None))))
            if not present:
                continue
            layout = tuple(key for _, key, _, _ in self._tensors(h))
            plan = self._cache.get(gi)
            if plan is None or not plan.valid(self, params, present, layout, group_offset):
                plan = None
                for i in present:
                    _check_param(params[i], f"param group {gi}, param {i}")
                    self._check_precision(params[i], f"param group {gi}, param {i}")
                    self._check_state(params[i], h, f"param group {gi}, param {i}")
                _check_meshes(params, f"param group {gi}")
                _check_disjoint([params[i] for i in present], f"param group {gi}")
            # the common case: every grad as the plan expects it, checked in a few maps
            grads = plan.grads(all_grads) if plan is not None and plan.host else None
            if grads is None:
                grads = []
                for i in present:
                    p = params[i]
                    g = p.grad
                    if (type(g) is torch.Tensor and g.layout is torch.strided
                            and g.dtype is p.dtype and g.shape == p.shape and not g.is_cuda
                            and not p.is_cuda and not g.requires_grad and g.is_contiguous()
                            and g.dtype is not torch.bfloat16
                            and (type(p) is _PARAM or type(p) is _TENSOR or not _is_dtensor(p))):
                        grads.append(g.numpy())  # a plain CPU grad, checked in one line
                    else:
                        grads.append(self._grad(p, gi, i))
            # a backend that cannot run some of them must fail before anything is written
            if plan is not None:
                firsts = [(b.compact, b.params[0]) for b in plan.buckets]
            else:
                kinds = {}
                for i in present:
                    kinds.setdefault((params[i].is_cuda, params[i].dtype), params[i])
                firsts = [(self._is_compact(p), _view(p)) for p in kinds.values()]
            for compact, a in firsts:
                _dispatch.resolve(f"{'compact' if compact else 'optim'}.{self._rule(h)}",
                                  self.backend, device=not isinstance(a, np.ndarray),
                                  dtype=dtype_of(a))
            work.append((gi, group, present, h, layout, plan, grads, group_offset))
            if not distributed:
                norm_grads += grads
            else:
                counted = plan.counted if plan is not None else \
                    [_td().counted(params[i]) for i in present]
                norm_grads += [g for c, g in zip(counted, grads) if c]
        return work, norm_grads

    def _exchange(self):
        """The norm's exchange over the mesh of the DTensor params, or None when there are
        none. Refused (the same on every rank, before any collective): DTensors on two meshes,
        or DTensor and plain params together (a plain param's share would be ambiguous)."""
        params = [p for g in self.param_groups for p in g["params"]]
        known = self.__dict__.get("_exchange_for")  # (params, their meshes, exchange)
        if (known is not None and len(known[0]) == len(params)
                and all(map(is_, params, known[0]))
                and all(map(is_, map(_MESH, map(_SPEC, params)), known[1]))):
            return known[2]
        dts = [p for p in params if type(p) is not _PARAM and type(p) is not _TENSOR
               and _is_dtensor(p)]
        if not dts:
            return None
        if len(dts) != len(params):
            raise ValueError("the global norm (max_grad_norm, monitor, nonfinite): the optimizer "
                             "holds DTensor and plain-tensor params; the global norm over the "
                             "ranks needs all params to be DTensors (or none)")
        _check_meshes(params, "the global norm (max_grad_norm, monitor, nonfinite): the "
                              "optimizer's params")
        exchange = _td().for_mesh(params[0].device_mesh)
        self._exchange_for = (params, [p._spec.mesh for p in params], exchange)
        return exchange

    def master_params(self) -> list:
        """The values the optimizer steps from, as new float32 tensors, one per param of every
        group in order (torch's state_dict numbering): the float32 master of a 16-bit param
        (``state['master_param']``, or the bfloat16 param joined with
        ``state['param_remainder']``, exactly), every other param widened (float64 params
        copied as they are). A param without state yet is its own master."""
        with self._exclusive("master_params()"):
            out = []
            for g in self.param_groups:
                for p in g["params"]:
                    mk = self._master_key(p)
                    m = (self.state.get(p) or {}).get(mk[0]) if mk is not None else None
                    if m is None:
                        out.append(p.detach().to(torch.float64 if p.dtype == torch.float64
                                                 else torch.float32, copy=True))
                    elif m.dtype == torch.float32:
                        out.append(m.detach().clone())
                    else:  # a DTensor's: its local shards joined, wrapped as the param
                        bits = _view(p).view(_precision.U16)
                        joined = torch.from_numpy(np.ascontiguousarray(
                            _precision.remainder_join(bits, _view(m)).reshape(
                                tuple(_local(p).shape))))
                        out.append(_td().wrap(joined, p) if _is_dtensor(p) else joined)
            return out

    @staticmethod
    def _grad(p, gi, i):
        """The gradient as the kernel reads it (a view, or a converted copy: it is only read).
        A DTensor param's grad is a DTensor of its mesh and placements, read by its local
        shard (which then has the local param's shape)."""
        g = p.grad
        where = f"param group {gi}, param {i}"
        if not torch.is_tensor(g) or g.layout != torch.strided:
            raise ValueError(f"{where}: sparse gradients are not supported")
        _check_same_kind(g, p, f"{where}: its grad")
        if _is_dtensor(p):
            if g.shape != p.shape:
                raise ValueError(f"{where}: its grad has shape {tuple(g.shape)} but the param "
                                 f"has {tuple(p.shape)}")
            g, p = _td().local(g), _td().local(p)
        if g.shape != p.shape:
            raise ValueError(f"{where}: its grad has shape {tuple(g.shape)} but the param has "
                             f"{tuple(p.shape)}")
        if g.device != p.device:
            raise ValueError(f"{where}: its grad is on {g.device} but the param on {p.device}")
        if g.dtype != p.dtype or not g.is_contiguous():
            if not g.is_floating_point():
                raise TypeError(f"{where}: its grad has dtype {g.dtype}")
            if p.device.type == "cpu" and (g.dtype in _HALF or p.dtype in _HALF) \
                    and g.dtype != p.dtype and not (p.dtype in _HALF and g.dtype == torch.float32):
                raise TypeError(f"{where}: its grad has dtype {g.dtype} but the param is "
                                f"{p.dtype}; a grad has its param's dtype, or float32 for a "
                                "16-bit param (a 16-bit grad of a float32 param would have "
                                "lost bits already; a float64 one of a 16-bit param would be "
                                "rounded here)")
            # a float32 grad of a 16-bit CPU param is read as it is
            g = g.contiguous() if p.dtype in _HALF and p.device.type == "cpu" \
                else g.to(p.dtype).contiguous()
        return _view(g)

    def _norm_backend(self, arrays):
        if self.backend is None or not arrays:
            return None
        device = not isinstance(arrays[0], np.ndarray)
        cpu = self.backend in CPU_BACKENDS
        return self.backend if device != cpu else None

    # -- per-rule pieces -------------------------------------------------------------------------
    def _rule(self, h) -> str:
        raise NotImplementedError

    def _scalars(self, h, b: _Bucket, scale) -> Scalars:
        raise NotImplementedError

    @staticmethod
    def _gscale(h, scale):
        return -scale if h["maximize"] else scale


class Adam(_Fused, torch.optim.Adam):
    """torch.optim.Adam on fastopt's kernels (coupled L2 decay; decoupled_weight_decay=True
    is AdamW)."""

    def _rule(self, h):
        return "adamw" if h["decoupled_weight_decay"] else "adam"

    def _scalars(self, h, b, scale):
        b1, b2 = h["betas"]
        return F.scalars(self._rule(h), lr=h["lr"], step=b.t,
                         grad_scale=self._gscale(h, scale), weight_decay=h["weight_decay"],
                         beta1=b1, beta2=b2, eps=h["eps"], torch_compat=self.semantics == "torch")


class AdamW(Adam, torch.optim.AdamW):
    """torch.optim.AdamW on fastopt's kernels (decoupled weight decay, default 1e-2)."""


class SGD(_Fused, torch.optim.SGD):
    """torch.optim.SGD: plain, heavy-ball momentum (with dampening) or Nesterov.

    Its state is torch's: a ``momentum_buffer`` per param once it has taken a step with
    momentum, no step count (but with ``stochastic_rounding=True``, whose random streams it
    keys); a buffer present means the first (undamped) step is done."""

    _counted = False

    def _check_combination(self, h, where):
        super()._check_combination(h, where)
        at = f"{where}: " if where else ""
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError(f"{at}Nesterov momentum requires a momentum and zero dampening")
        if self.semantics == "fastopt" and h["dampening"] != 0:
            raise ValueError(f"{at}dampening applies to semantics='torch' (the source "
                             "document's momentum has none)")

    def _steps_taken(self, st):
        return int(st.get("momentum_buffer") is not None) if st else 0

    def _rule(self, h):
        if h["momentum"] == 0:
            return "sgd"
        return "nesterov" if h["nesterov"] else "momentum"

    def _tensors(self, h):
        return self._declared(h, required=False)  # none without momentum

    def _scalars(self, h, b, scale):
        lr, wd, d = h["lr"], h["weight_decay"], h["dampening"]
        s = self._gscale(h, scale)
        if d and b.t > 0 and h["momentum"] != 0:  # torch: buf <- mu buf + (1 - d) g after buf = g
            s, wd = s * (1.0 - d), wd * (1.0 - d)
        rule = self._rule(h)
        mom = {} if rule == "sgd" else {"momentum": h["momentum"]}
        return F.scalars(rule, lr=lr, step=min(b.t, 1), grad_scale=s, weight_decay=wd, **mom)


class RMSprop(_Fused, torch.optim.RMSprop):
    """torch.optim.RMSprop (v from 0, eps outside the root, lr outside the momentum buffer).

    ``semantics="fastopt"``: the source document's RMSProp (v from 1, m <- gamma m +
    lr g / sqrt(v + eps), theta <- theta - m), ``alpha`` being its rho."""

    def _rule(self, h):
        return "rmsprop"

    def _tensors(self, h):
        # torch's v starts at 0, the declared rule's (semantics="fastopt") at 1. The kernel
        # always updates m; without momentum torch keeps no buffer, and m is then a scratch
        # array of the plan (its old value is multiplied by 0)
        v, m = self._declared(h, required=True,
                              init={} if self.semantics == "fastopt" else {"v": 0.0},
                              keep=("v", "m") if h["momentum"] > 0 else ("v",))
        return v, m[:3] + (False,)

    def _scalars(self, h, b, scale):
        lr, eps = h["lr"], h["eps"]
        k = F.scalars("rmsprop", lr=lr, step=b.t, grad_scale=self._gscale(h, scale),
                      weight_decay=h["weight_decay"], momentum=h["momentum"], rho=h["alpha"],
                      eps=eps)
        if self.semantics == "torch":
            k = k._replace(lr=1.0, eps=0.0, eps_out=eps, lr_out=lr)
        return k


class NAdam(_Fused, torch.optim.NAdam):
    """torch.optim.NAdam, with its momentum-decay schedule mu_t = b1 (1 - 0.96^(t psi) / 2)
    and the product of the mu_t kept in ``state['mu_product']`` as torch keeps it.

    ``semantics="fastopt"``: the source document's NAdam (constant b1 in the look-ahead)."""

    _mu = True

    def _rule(self, h):
        return "nadam"

    @staticmethod
    def _mu_at(b1, psi, n):
        return b1 * (1.0 - 0.5 * 0.96 ** (n * psi))

    def _rebuilt_mu_product(self, t, h, where):
        """prod_{i<=t} mu_i for a checkpoint without it, assuming its betas never changed."""
        if t > 1 << 20:
            raise ValueError(f"{where} lacks 'mu_product' and has too many steps ({t}) to "
                             "rebuild it")
        i = np.arange(1, t + 1, dtype=np.float64)
        return float(np.prod(self._mu_at(h["betas"][0], h["momentum_decay"], i)))

    def _scalars(self, h, b, scale):
        b1, b2 = h["betas"]
        lr, wd, eps = h["lr"], h["weight_decay"], h["eps"]
        s = self._gscale(h, scale)
        psi, n = h["momentum_decay"], b.t + 1
        mu = self._mu_at(b1, psi, n)
        b.next_mu = mu
        decay = 1.0
        if h["decoupled_weight_decay"]:
            wd, decay = 0.0, 1.0 - lr * wd
        if self.semantics == "fastopt":
            k = F.scalars("nadam", lr=lr, step=b.t, grad_scale=s, weight_decay=wd, beta1=b1,
                          beta2=b2, eps=eps)
            return k._replace(decay=decay)
        prod = float(b.mu[:1] * mu)  # torch's mu_product after this step, rounded as torch's
        mu_next = self._mu_at(b1, psi, n + 1)
        # theta <- decay theta - (nm m + ng g) / (sqrt(v) / c + eps)
        return Scalars(lr=lr, wd=wd, gscale=s, momentum=0.0, rho=0.9, beta1=b1, beta2=b2,
                       eps=eps, alpha=1.0, c=math.sqrt(1.0 - b2 ** n), decay=decay,
                       nm=lr * mu_next / (1.0 - prod * mu_next), ng=lr * (1.0 - mu) / (1.0 - prod),
                       eps_out=0.0, lr_out=1.0)


class Adagrad(_Fused, torch.optim.Adagrad):
    """torch.optim.Adagrad: s <- s + g^2; theta <- theta - lr / (1 + t lr_decay) g / (sqrt(s) +
    eps), with g = +-grad + weight_decay theta (coupled L2 decay) and t the steps already taken
    (torch's ``lr / (1 + (step - 1) lr_decay)`` once it has counted this one).

    As torch does, the constructor gives every param its state at once (``step`` 0 and ``sum``
    at ``initial_accumulator_value``), and a param that gets its state later (one of a group
    added afterwards, or without state in a loaded checkpoint) starts its ``sum`` at
    ``defaults['initial_accumulator_value']``, the constructor's value: torch reads no group's
    own value. ``semantics="fastopt"`` (``fastopt.Adagrad``'s rule, the same arithmetic) starts
    it at its group's value instead, and refuses ``maximize``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # torch's constructor made the state (a float32 step count, and a sum of the param's
        # dtype, 16-bit ones included): ours is a float64 count and the sum the options keep
        # (float32 for 16-bit params by default; bfloat16 or 8-bit codes with state_dtype),
        # filled with the checked value, and the master under master_weights
        for gi, group in enumerate(self.param_groups):
            h = self._hyper(group, f"param_groups[{gi}]")
            (_, key, _, _), = self._tensors(h)
            for p in group["params"]:
                st = self.state.get(p)
                if st:
                    st["step"] = torch.tensor(0.0, dtype=_STEP_DTYPE)
                    st.pop(key, None)  # torch's, of the param's dtype
                    self._fill_state(p, h, st)

    def _rule(self, h):
        return "adagrad"

    def _tensors(self, h):
        if self.semantics == "fastopt":
            init = h["initial_accumulator_value"]
        else:
            init = _option("initial_accumulator_value",
                           self.defaults.get("initial_accumulator_value", 0),
                           "defaults['initial_accumulator_value']", 0)
        return self._declared(h, required=True, init={"sum": init})

    def _scalars(self, h, b, scale):
        return F.scalars("adagrad", lr=h["lr"], step=b.t, grad_scale=self._gscale(h, scale),
                         lr_decay=h["lr_decay"], weight_decay=h["weight_decay"],
                         initial_accumulator_value=h["initial_accumulator_value"], eps=h["eps"])


class _LionOptions(torch.optim.Optimizer):
    """Lion's options and defaults dict, as a torch.optim class would declare them (torch has
    no Lion); ``Lion`` checks them and runs the steps."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *,
                 maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      maximize=maximize))

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # a checkpoint written without the flag
            group.setdefault("maximize", False)


class Lion(_Fused, _LionOptions):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), with the
    paper's decoupled weight decay, per step:

        theta <- (1 - lr weight_decay) theta;  u <- sign(b1 m + (1 - b1) g);
        theta <- theta - lr u;  m <- b2 m + (1 - b2) g

    (g = -grad with ``maximize=True``; sign(0) = 0). State: ``exp_avg`` (m, from 0) per param,
    and no step count, as the rule needs none (but with ``stochastic_rounding=True``, whose
    random streams it keys).

    The signature, the defaults and the state layout are those of the PyTorch Lion that torch
    users know, the paper authors' own PyTorch code (and lion-pytorch, which follows it):
    ``weight_decay`` defaults to 0.0 there, as it does in most torch.optim classes, so swapping
    this Lion in for one of those adds no decay the code did not ask for. optax's lion (and
    ``fastopt.Lion``, the NumPy class) default to 1e-3 instead. The paper advises a learning
    rate 3-10x below AdamW's and a weight decay 3-10x above it, so that lr * weight_decay stays
    about the same: set both explicitly.

    torch-only options (``foreach``, ``fused``, ``differentiable``, ...) are not taken: a
    TypeError, as for any argument a torch.optim class does not take.
    ``semantics="fastopt"`` is the same rule (``fastopt.Lion``'s) and refuses ``maximize``."""

    _counted = False

    def _rule(self, h):
        return "lion"

    def _scalars(self, h, b, scale):
        b1, b2 = h["betas"]
        return F.scalars("lion", lr=h["lr"], step=0, grad_scale=self._gscale(h, scale),
                         beta1=b1, beta2=b2, weight_decay=h["weight_decay"])
