r"""Sharded optimizer state across MPI processes (ZeRO stage 1), and the flat parameter buffer.

Data-parallel training keeps a replica of the parameters on every process; the optimizer
state (Adam's m and v: twice the parameters) need not be replicated. Here the parameters live
in one flat, 64-byte aligned buffer, split evenly across the P ranks of a communicator, and each
rank keeps state for, and updates, only its own shard:

.. math::

    \text{full gradients: } g^{(r)} = \tfrac{1}{P}\sum_{q} g_q[\,b_r : b_{r+1}] \quad
    (\text{reduce-scatter}) \qquad
    \theta[\,b_r : b_{r+1}] \leftarrow \text{rule}(\theta^{(r)}, g^{(r)}) \qquad
    \theta \leftarrow \text{all-gather}_r\ \theta^{(r)}

The clipping norm is the global one, ``sqrt(sum_r ||g^(r)||^2)``, all-reduced in float64 by the
local optimizer's ``comm`` (SPEC §3), so every rank clips or skips alike. Per step and rank the
wire carries (P-1)/P of the flat buffer twice (reduce-scatter, all-gather) plus 16 bytes for the
norm; with pre-sharded gradients only the all-gather and the norm.

Transport is MPI through mpi4py (``pip install 'fastopt[mpi]'``), imported on first use:
``import fastopt`` does not need it. Everything is host (NumPy) memory.

Averaging: full gradients are **averaged** over the ranks (summed by ``Reduce_scatter``, then
divided by P), as PyTorch's DistributedDataParallel does, so each rank passes the gradient of
its own mean loss and the update equals the single-process update on the global mean loss.
``average=False`` keeps the sum. Gradients passed already sharded (``sharded=True``) are used as
given.

Reduction: ``reduction="mpi"`` (default) is MPI's ``Reduce_scatter`` (SUM); its summation order
is the MPI library's business. ``reduction="ordered"`` moves the slices with ``Alltoallv`` and
sums them on the owning rank in rank order 0, 1, ..., P-1 with NumPy: the same bits whatever
the MPI library and its algorithm choice, at the cost of a receive buffer as large as the flat
buffer. (With the MPICH wheel on 2 cores it was also faster: MPICH's reduction loop is slow.)

Checkpoints: ``state_dict()`` holds this rank's shard of the state plus ``shard.rank``,
``shard.world_size``, ``shard.bounds`` and ``shard.numel``; each rank saves its own. Loading into
a different world size (or another rank's file, or files saved at different steps) is refused
on every rank, with nothing changed on any; re-sharding is not supported.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from . import _mpi, optim
from ._registry import F32, F64
from ._validate import as_list, check_like, integer, is_device_array
from .monitor import COUNT_MAX, AutoClip, StateFields

__all__ = ["ALIGN", "FlatParams", "flatten", "shard_bounds", "ShardedOptimizer"]

#: Byte alignment of the flat buffer and of every shard boundary in it (a cache line, and the
#: widest SIMD load).
ALIGN = 64


def _aligned_empty(n: int, dtype) -> np.ndarray:
    """An uninitialised 1-D array of ``n`` items whose data starts on an ``ALIGN``-byte boundary."""
    dtype = np.dtype(dtype)
    raw = np.empty(n * dtype.itemsize + ALIGN, np.uint8)
    off = -raw.ctypes.data % ALIGN
    return raw[off:off + n * dtype.itemsize].view(dtype)


class FlatParams:
    """Arrays laid out back to back in one contiguous, 64-byte aligned buffer.

    ``buffer`` is the 1-D buffer; ``views[i]`` is an array of the i-th shape that is a view into
    it (elements ``offsets[i]:offsets[i+1]``), so writing either is writing both. One buffer
    gives one optimizer call perfect locality, and it is what the sharded optimizer splits.
    Iterating a ``FlatParams`` yields the views.
    """

    __slots__ = ("buffer", "views", "offsets")

    def __init__(self, buffer: np.ndarray, shapes):
        if not isinstance(buffer, np.ndarray) or isinstance(buffer, np.ma.MaskedArray):
            raise TypeError(f"buffer must be a numpy.ndarray, got {type(buffer).__name__}")
        if buffer.dtype not in (F32, F64):
            raise TypeError(f"buffer has dtype {buffer.dtype}; supported: float32, float64")
        if buffer.ndim != 1 or not buffer.flags.c_contiguous:
            raise ValueError("buffer must be a 1-D C-contiguous array (the views are into it)")
        if not isinstance(shapes, (list, tuple)) or not all(isinstance(t, (list, tuple))
                                                            for t in shapes):
            raise TypeError("shapes must be a list or tuple of shapes (tuples of ints)")
        shapes = [tuple(integer(d, f"shapes[{i}]", lo=0) for d in t)
                  for i, t in enumerate(shapes)]
        sizes = [math.prod(t) for t in shapes]  # Python ints: no overflow
        if sum(sizes) != buffer.size:
            # elements outside every view would be updated with whatever gradient memory holds
            raise ValueError(f"shapes cover {sum(sizes)} elements but buffer has {buffer.size}: "
                             "the views must cover the buffer exactly")
        self.buffer = buffer
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.views = [buffer[a:b].reshape(s) for a, b, s in
                      zip(self.offsets[:-1], self.offsets[1:], shapes)]

    @property
    def shapes(self):
        return [v.shape for v in self.views]

    def __len__(self):
        return len(self.views)

    def __iter__(self):
        return iter(self.views)

    def __getitem__(self, i):
        return self.views[i]

    def __repr__(self):
        return (f"FlatParams({len(self.views)} arrays, {self.buffer.size} x "
                f"{self.buffer.dtype})")


def _host_float_arrays(arrays, name, dtype=None):
    arrays = as_list(arrays, name)
    for i, a in enumerate(arrays):
        if is_device_array(a):
            raise TypeError(f"{name}[{i}] is a device (GPU) array; fastopt.distributed works on "
                            "host (NumPy) arrays")
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}[{i}] must be a numpy.ndarray, got {type(a).__name__}")
        if isinstance(a, np.ma.MaskedArray):  # copying the data would drop the mask silently
            raise TypeError(f"{name}[{i}] is a masked array; pass numpy.ma.filled(x, 0) or "
                            "x.data")
        if a.dtype not in (F32, F64):
            raise TypeError(f"{name}[{i}] has dtype {a.dtype}; supported: float32, float64")
    dts = {a.dtype for a in arrays}
    if dtype is None and len(dts) > 1:
        raise TypeError(f"{name} mix dtypes ({', '.join(sorted(map(str, dts)))}); one flat "
                        "buffer has one dtype: pass dtype= to convert")
    return arrays


def flatten(arrays, *, dtype=None) -> FlatParams:
    """Copy ``arrays`` into one new 64-byte aligned buffer, back to back in the given order.

    Args:
      arrays: an array or a list/tuple of NumPy float32/float64 arrays (any layout; copied).
      dtype: the buffer's dtype (float32 or float64); default: the arrays' common dtype.

    Returns:
      a :class:`FlatParams`: ``.buffer`` (1-D, ``sum(a.size)`` elements, equal to
      ``numpy.concatenate([a.ravel() for a in arrays])``) and ``.views`` shaped like ``arrays``.
      Use the views from then on: the original arrays are not linked to the buffer.
    """
    arrays = _host_float_arrays(arrays, "arrays", dtype)
    if dtype is None:
        dtype = arrays[0].dtype if arrays else F32
    try:
        ok = np.dtype(dtype) in (F32, F64)
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    dtype = np.dtype(dtype)
    flat = FlatParams(_aligned_empty(sum(a.size for a in arrays), dtype),
                      [a.shape for a in arrays])
    for v, a in zip(flat.views, arrays):
        np.copyto(v, a, casting="same_kind")
    return flat


def shard_bounds(numel: int, world_size: int, itemsize: int = 4) -> np.ndarray:
    """Element offsets b_0 = 0 <= b_1 <= ... <= b_P = numel: rank r owns [b_r, b_{r+1}).

    b_r = floor(r numel / P) rounded down to a multiple of ``ALIGN // itemsize`` elements, so
    every shard starts on a 64-byte boundary of an aligned buffer and shards differ in length by
    less than 64 bytes plus the tail (a rank may own nothing when numel is tiny).
    """
    numel = integer(numel, "numel", lo=0, hi=COUNT_MAX)
    world_size = integer(world_size, "world_size", lo=1, hi=2**31 - 1)  # MPI ranks are C ints
    itemsize = integer(itemsize, "itemsize", lo=1, hi=ALIGN)
    if ALIGN % itemsize:
        raise ValueError(f"itemsize must divide {ALIGN} (an element's bytes), got {itemsize}")
    a = ALIGN // itemsize
    r = np.arange(world_size + 1, dtype=np.int64)
    q, m = divmod(numel, world_size)
    b = (r * q + r * m // world_size) // a * a  # r numel / P, exactly, without int64 overflow
    b[-1] = numel
    return b


_BY_NAME = optim.CLASSES


def _optimizer_class(optimizer):
    if isinstance(optimizer, str):
        cls = _BY_NAME.get(optimizer.lower())
        if cls is None:
            raise ValueError(f"optimizer must be one of {', '.join(map(repr, _BY_NAME))} or a "
                             f"fastopt.Optimizer subclass, got {optimizer!r}")
        return cls
    if isinstance(optimizer, type) and issubclass(optimizer, optim.Optimizer) \
            and optimizer is not optim.Optimizer:
        return optimizer
    raise TypeError(f"optimizer must be a name such as 'adam' or a fastopt.Optimizer subclass, "
                    f"got {optimizer!r}")


def _shape_crc(shapes) -> int:
    return zlib.crc32(repr([tuple(int(d) for d in s) for s in shapes]).encode())


class ShardedOptimizer:
    """A fastopt optimizer whose state is sharded across the ranks of an MPI communicator.

    Every rank passes the same parameters (a data-parallel replica); they are laid out in one
    flat buffer (``flatten``; a :class:`FlatParams` is used in place, anything else is copied,
    and from then on ``self.params`` are the arrays to use). Rank r keeps the state of, and
    updates, elements ``bounds[r]:bounds[r+1]`` only, with one ``optimizer`` over that shard
    whose norm is global (``comm=``); ``step`` then all-gathers the updated shards in place, so
    every rank ends the step with the same parameters.

    Args:
      params: the parameter arrays (NumPy float32 or float64, one dtype), or a ``FlatParams``.
      optimizer: the name of a rule (``'adam'``, ``'lion'``...: ``fastopt.functional.rules()``)
        or a ``fastopt.Optimizer`` subclass.
      comm: an mpi4py intracommunicator (``MPI.COMM_WORLD``; ``MPI.COMM_SELF`` on one process).
      average: divide full gradients by the world size after summing them (default, as
        PyTorch DDP), or keep the sum.
      reduction: ``"mpi"`` (``Reduce_scatter``) or ``"ordered"`` (``Alltoallv``, then a sum in
        rank order: reproducible bits; see the module docstring).
      **kwargs: the optimizer's own arguments (``lr``, betas, ``max_grad_norm``, ``nonfinite``,
        ``monitor``, ``backend``, and the compact-state options ``state_dtype`` and
        ``stochastic_rounding``/``seed``, which shrink each rank's shard of the state; the
        params themselves stay float32 or float64 here, so ``master_weights`` is refused).

    Construction and ``step``/``load_state_dict`` are collective. Bad input on any rank
    (different parameter shapes across ranks, a wrong gradient) raises on every rank: the rank
    at fault its own error, the others a ``ValueError`` that says another rank failed. The
    ranks must also agree on the optimizer, its hyperparameters, ``average``, ``reduction``,
    ``nonfinite`` and ``max_grad_norm``, and on whether a step takes the norm (settings that
    differed would make the ranks disagree about the update, or wait in different collectives
    for ever); a ``monitor`` on some ranks only is fine unless it alone decides that.
    """

    def __init__(self, params, optimizer, comm, *, average=True, reduction="mpi", **kwargs):
        if comm is None:
            raise TypeError("comm is required: an mpi4py communicator such as MPI.COMM_WORLD "
                            "(MPI.COMM_SELF on one process)")
        self.comm = comm = _mpi.check_comm(comm)
        MPI = _mpi.load()
        self.rank, self.world_size = comm.Get_rank(), comm.Get_size()
        error, info = None, np.zeros(5, np.int64)
        self._grad_flat = self._recv = None
        try:
            cls = _optimizer_class(optimizer)
            for key in ("comm", "params"):
                if key in kwargs:
                    raise TypeError(f"{key} is the sharded optimizer's own argument; do not "
                                    "pass it among the optimizer's keyword arguments")
            if not isinstance(average, (bool, np.bool_)):
                raise TypeError(f"average must be a bool, got {type(average).__name__}")
            self.average = bool(average)
            if not isinstance(reduction, str):
                raise TypeError(f"reduction must be 'mpi' or 'ordered', got "
                                f"{type(reduction).__name__}")
            if reduction not in ("mpi", "ordered"):
                raise ValueError(f"reduction must be 'mpi' or 'ordered', got {reduction!r}")
            self.reduction = reduction
            if isinstance(params, FlatParams):
                self.flat = params
                if not self.flat.buffer.flags.writeable:
                    raise ValueError("params (a FlatParams) is read-only but would be written")
            else:
                self.flat = flatten(_host_float_arrays(params, "params"))
            buf = self.flat.buffer
            self.bounds = shard_bounds(buf.size, self.world_size, buf.itemsize)
            lo, hi = int(self.bounds[self.rank]), int(self.bounds[self.rank + 1])
            self.shard = buf[lo:hi]
            self.optimizer = cls([self.shard], comm=comm, **kwargs)
            self._mpi_type = MPI.FLOAT if buf.dtype == F32 else MPI.DOUBLE
            self._counts = np.diff(self.bounds)
            self._grad_shard = _aligned_empty(hi - lo, buf.dtype)
            # self._grad_flat: allocated on the first step with a list of gradients;
            # self._recv (reduction="ordered"): every rank's slice of this rank's shard
            info[:] = (buf.size, buf.itemsize, len(self.flat), _shape_crc(self.flat.shapes),
                       self._settings_crc())
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = e
        # One message settles all: did every rank succeed, do they hold the same layout, and
        # the same settings?
        every = _mpi.share(comm, error, info, "ShardedOptimizer")
        if (every[:, :4] != every[0, :4]).any():
            desc = "; ".join(f"rank {r}: {n} elements of {s} bytes in {k} arrays"
                             + (" (other shapes)" if c != every[0, 3] else "")
                             for r, (n, s, k, c, _) in enumerate(every))
            raise ValueError(f"params differ across ranks; every rank must pass the same "
                             f"parameter shapes and dtype ({desc})")
        if (every[:, 4] != every[0, 4]).any():
            odd = np.flatnonzero(every[:, 4] != every[0, 4]).tolist()
            raise ValueError(f"ShardedOptimizer settings differ across ranks: rank(s) {odd} "
                             "differ from rank 0 in the optimizer, its hyperparameters, "
                             "average, reduction, nonfinite, max_grad_norm or whether a step "
                             "takes the norm; every rank must pass the same")

    def _settings_crc(self) -> int:
        """What every rank must agree on, as one number (the lr schedule, a callable, is left
        out: it has no comparable form)."""
        o, m = self.optimizer, self.optimizer.max_grad_norm
        clip = m if m is None or isinstance(m, float) else \
            type(m).__qualname__ + (repr(m) if isinstance(m, AutoClip) else "")
        takes_norm = o.nonfinite != "ignore" or o.monitor is not None or isinstance(m, float)
        text = repr((type(o).__qualname__, sorted(o.hyper.items()), self.average,
                     self.reduction, o.nonfinite, clip, takes_norm, str(o.precision)))
        return zlib.crc32(text.encode())

    # -- the public view ----------------------------------------------------------------------
    @property
    def params(self) -> list:
        """The parameter arrays (views into ``flat.buffer``), identical on every rank."""
        return self.flat.views

    @property
    def step_count(self) -> int:
        return self.optimizer.step_count

    @property
    def shard_slice(self) -> slice:
        """This rank's elements of the flat buffer."""
        return slice(int(self.bounds[self.rank]), int(self.bounds[self.rank + 1]))

    def comm_bytes(self, sharded: bool = False) -> int:
        """Bytes this rank sends per step with a ring algorithm's schedule (a lower bound for
        any algorithm): (P-1)/P of the flat buffer for the reduce-scatter (not with
        ``sharded=True``), the same for the all-gather, and the norm's 16-byte all-reduce."""
        if not isinstance(sharded, (bool, np.bool_)):
            raise TypeError(f"sharded must be a bool, got {type(sharded).__name__}")
        p, n = self.world_size, self.flat.buffer.nbytes
        if p == 1:
            return 0
        move = n * (p - 1) // p
        return move * (1 if sharded else 2) + 16

    # -- a step -------------------------------------------------------------------------------
    def _full_grads(self, grads) -> np.ndarray:
        """The flat send buffer for full gradients (no copy for a flat array or a FlatParams)."""
        buf = self.flat.buffer
        if isinstance(grads, FlatParams):
            if grads.shapes != self.flat.shapes:  # same size, other order: the wrong gradients
                raise ValueError(f"grads (a FlatParams) has shapes {grads.shapes} but params "
                                 f"have {self.flat.shapes}")
            grads = grads.buffer
        if isinstance(grads, np.ndarray) and grads.ndim == 1 and grads.size == buf.size:
            check_like([buf], "params (flat)", [grads], "grads")
            return grads
        grads = as_list(grads, "grads")
        check_like(self.params, "params", grads, "grads")
        if self._grad_flat is None:
            self._grad_flat = _aligned_empty(buf.size, buf.dtype)
        out = self._grad_flat
        for a, b, g in zip(self.flat.offsets[:-1], self.flat.offsets[1:], grads):
            np.copyto(out[a:b], g.reshape(-1))
        return out

    def step(self, grads, *, sharded=False) -> optim.StepResult:
        """One update of every parameter, on every rank (collective).

        Args:
          grads: this rank's full gradients: a list shaped like ``params``, a ``FlatParams`` of
            them, or one flat 1-D array of ``flat.buffer.size`` elements (no copy for the last
            two). They are summed over the ranks (``Reduce_scatter``) and, with
            ``average=True``, divided by the world size. With ``sharded=True``: this rank's
            already-reduced gradient shard, a 1-D array of ``shard.size`` elements, used as is.

        Returns:
          the local optimizer's ``StepResult``: the global unclipped norm, ``clipped`` and
          ``skipped``, identical on every rank. A skipped step changes nothing anywhere and
          sends nothing after the norm.
        """
        comm, MPI = self.comm, _mpi.load()
        error = None
        try:
            if not isinstance(sharded, (bool, np.bool_)):
                raise TypeError(f"sharded must be a bool, got {type(sharded).__name__}")
            if sharded:
                if not isinstance(grads, np.ndarray) or grads.ndim != 1:
                    raise TypeError(f"grads (sharded=True) must be a 1-D numpy array of this "
                                    f"rank's {self.shard.size} elements, got "
                                    f"{getattr(grads, 'shape', type(grads).__name__)}")
                if grads.size != self.shard.size:
                    raise ValueError(f"grads (sharded=True) has {grads.size} elements but rank "
                                     f"{self.rank}'s shard has {self.shard.size} "
                                     f"(elements {self.shard_slice.start}:"
                                     f"{self.shard_slice.stop} of {self.flat.buffer.size})")
                g = grads
            else:
                send = self._full_grads(grads)
                g = self._grad_shard
            self.optimizer._check_grads([g])  # the checks the local step would make, up front
            # A schedule failing at this step must fail here: without a norm pass (nonfinite=
            # "ignore", no clipping) the local step has no collective to tell the other ranks,
            # which would wait in the all-gather.
            self.optimizer.lr_at(self.optimizer.step_count)
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = e
        _mpi.agree(comm, error, "ShardedOptimizer.step")
        if not sharded:
            self._reduce_scatter(send, g)
        result = self.optimizer.step([g])
        if not result.skipped:
            comm.Allgatherv(MPI.IN_PLACE, [self.flat.buffer, self._counts, self.bounds[:-1],
                                           self._mpi_type])
        return result

    def _reduce_scatter(self, send, g):
        """g <- sum over ranks q of send_q[shard] (divided by P with ``average``)."""
        comm, MPI, t, p = self.comm, _mpi.load(), self._mpi_type, self.world_size
        if self.reduction == "mpi":
            comm.Reduce_scatter([send, t], [g, t], recvcounts=self._counts, op=MPI.SUM)
        else:
            m = g.size
            if self._recv is None:
                self._recv = _aligned_empty(m * p, g.dtype)
            comm.Alltoallv([send, self._counts, self.bounds[:-1], t],
                           [self._recv, np.full(p, m), np.arange(p) * m, t])
            parts = self._recv.reshape(p, m)
            np.copyto(g, parts[0])
            for q in range(1, p):
                np.add(g, parts[q], out=g)
        if self.average and p > 1:
            np.divide(g, p, out=g)

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's optimizer state (its shard) and ``shard.*``: rank, world size, bounds,
        numel. Flat NumPy values: ``numpy.savez`` stores it; save one file per rank."""
        sd = self.optimizer.state_dict()
        sd.update({"shard.rank": np.array(self.rank, np.int64),
                   "shard.world_size": np.array(self.world_size, np.int64),
                   "shard.bounds": self.bounds.copy(),
                   "shard.numel": np.array(self.flat.buffer.size, np.int64)})
        return sd

    _SHARD_KEYS = ("shard.rank", "shard.world_size", "shard.bounds", "shard.numel")

    def _local_part(self, sd) -> dict:
        """``sd`` less its checked ``shard.*`` fields: what the local optimizer loads."""
        if not callable(getattr(sd, "keys", None)) or not hasattr(sd, "__getitem__"):
            raise TypeError(f"state dict must be a mapping, got {type(sd).__name__}")
        keys = list(sd.keys())
        mine = [k for k in keys if isinstance(k, str) and k.startswith("shard.")]
        if not mine:
            raise ValueError(f"state dict lacks {list(self._SHARD_KEYS)}: it is not from a "
                             "ShardedOptimizer")
        f = StateFields({k: sd[k] for k in mine}, self._SHARD_KEYS, "ShardedOptimizer")
        ws = f.integer("shard.world_size", lo=1)
        if ws != self.world_size:
            f.fail("shard.world_size", f"is {ws}, but this communicator has "
                   f"{self.world_size} ranks. Re-sharding is not supported: load the "
                   f"checkpoint on {ws} ranks")
        rank = f.integer("shard.rank", lo=0, hi=ws - 1)
        if rank != self.rank:
            f.fail("shard.rank", f"is {rank}: the file holds rank {rank}'s shard; this is rank "
                   f"{self.rank} (each rank loads its own file)")
        numel = f.integer("shard.numel", lo=0)
        if numel != self.flat.buffer.size:
            f.fail("shard.numel", f"is {numel}, but these params have "
                   f"{self.flat.buffer.size} elements")
        bounds = f.array("shard.bounds", "i", ws + 1, f"'shard.world_size'={ws} needs {ws + 1}")
        if not np.array_equal(bounds, self.bounds):
            f.fail("shard.bounds", f"is {bounds.tolist()}; these params are split at "
                   f"{self.bounds.tolist()}")
        return {k: sd[k] for k in keys if k not in mine}

    def _agreed(self) -> np.ndarray:
        """What must be the same on every rank after a load: the step count and the clipping
        policy's state (it decides, from the global norms, whether and where to clip)."""
        o = self.optimizer
        policy = o.max_grad_norm.state_dict() if hasattr(o.max_grad_norm, "state_dict") else {}
        crc = 0
        for k in sorted(policy):
            v = np.asarray(policy[k])
            crc = zlib.crc32(v.tobytes(), zlib.crc32(f"{k}:{v.dtype}:{v.shape}".encode(), crc))
        return np.array([o.step_count, crc], np.int64)

    def load_state_dict(self, sd) -> None:
        """Restore this rank's ``state_dict()`` (collective). Refuses, on every rank and
        without changing anything on any rank, a state dict from another world size, another
        rank or another layout, one whose fields the local optimizer rejects (each refusal a
        TypeError/ValueError naming the key), or files of different steps (or clipping
        states) on different ranks. No re-sharding."""
        error, before, row = None, None, np.zeros(2, np.int64)
        try:
            local = self._local_part(sd)
            before = self.optimizer.state_dict()
            self.optimizer.load_state_dict(local)
            row = self._agreed()
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = e
            before = None  # the local optimizer changed nothing
        try:
            every = _mpi.share(self.comm, error, row, "ShardedOptimizer.load_state_dict")
            if (every != every[0]).any():
                raise ValueError("the ranks' state dicts are from different steps or clipping "
                                 f"states (step per rank: {every[:, 0].tolist()}); load files "
                                 "saved at the same step, one per rank")
        except ValueError:  # RemoteError included
            if before is not None:  # this rank loaded, another refused: undo
                self.optimizer.load_state_dict(before)
            raise

    def __repr__(self):
        return (f"ShardedOptimizer({type(self.optimizer).__name__}, rank {self.rank} of "
                f"{self.world_size}, elements {self.shard_slice.start}:{self.shard_slice.stop} "
                f"of {self.flat.buffer.size})")
