r"""torch.distributed helpers: DTensor params (FSDP2) and the rank-order norm exchange.

Imported only when a DTensor or a ``group=`` is seen (``fastopt.torch``, ``fastopt.norm``):
``import fastopt`` never imports torch, and nothing here runs for plain tensors.

A DTensor parameter is updated through its local shard: ``to_local()`` is a plain tensor over
the DTensor's own storage, so fastopt's kernels update it in place, as any CPU or CUDA tensor.
Its state tensors are DTensors of the same mesh and placements, built around local buffers.

The distributed global norm. Rank ``r`` computes :math:`S_r`, the float64 sum of squares of the
shards it *counts*: a shard is counted unless its placement is ``Replicate()`` on some mesh
dimension where this rank's coordinate is not 0 (replicated data is counted once). Then

.. math::

    \|g\| = \Big(\sum_{r \text{ in rank order}} S_r\Big)^{1/2}

where each rank all-gathers the :math:`S_r` of its process group and adds them itself, left to
right in group rank order (an all-reduce would leave the order to the library). Every rank adds
the same numbers in the same order: the same bits on every rank and in every run. On an n-D mesh
the exchange runs over one mesh dimension at a time, the last one first, so the order is the
mesh's row-major order, nested: :math:`\sum_{i_0} \big(\sum_{i_1} S_{i_0 i_1}\big)` in 2-D.
Each message carries a failure flag beside the value: a rank that rejected its input takes part
with the flag set and raises its own error; the others raise :class:`RemoteError` (nobody waits
in a collective that will not come). NaN and inf propagate through the sums, so every rank sees
the same norm and takes the same decisions.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard

from ._mpi import RemoteError

try:  # FSDP2 + tensor parallel shards a dim twice: a Shard of its own kind (not a subclass)
    from torch.distributed.tensor.placement_types import _StridedShard
    _SHARDS = (Shard, _StridedShard)
except ImportError:  # pragma: no cover - older torch
    _SHARDS = (Shard,)

__all__ = ["RemoteError", "Exchange", "is_dtensor", "local", "wrap", "check_placements",
           "same_layout", "counted", "for_mesh", "for_group"]


def is_dtensor(t) -> bool:
    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard: a plain tensor sharing its storage (no copy, no autograd).
    ``to_local()`` without grad mode returns the DTensor's ``_local_tensor`` itself; reading
    the attribute directly skips its dispatch (a step asks for every param's, grad's and state
    buffer's shard: with hundreds of tensors that dispatch was most of the step's time)."""
    lt = getattr(t, "_local_tensor", None)
    if lt is not None:
        return lt
    with torch.no_grad():
        return t.to_local()


def wrap(local_tensor: torch.Tensor, like) -> torch.Tensor:
    """``local_tensor`` (this rank's shard) as a DTensor of ``like``'s mesh, placements, shape and
    stride, without communication (every rank builds its own shard of the same layout)."""
    with torch.no_grad():
        return DTensor.from_local(local_tensor, like.device_mesh, like.placements,
                                  shape=like.shape, stride=like.stride(), run_check=False)


def _placements_text(t) -> str:
    return "(" + ", ".join(str(pl) for pl in t.placements) + ")"


def check_placements(p, where: str) -> None:
    """Each placement of ``p`` shards or replicates its data: a ``Partial`` one (pending sums)
    holds no value of the tensor a kernel could update. This rank belongs to its mesh."""
    for d, pl in enumerate(p.placements):
        if not (isinstance(pl, _SHARDS) or isinstance(pl, Replicate)):
            raise ValueError(f"{where}: a DTensor with placement {pl} on mesh dimension {d}; "
                             "fastopt updates DTensors placed with Shard(dim) or Replicate() "
                             "only (redistribute it, or reduce a Partial grad, first)")
    if p.device_mesh.get_coordinate() is None:
        raise ValueError(f"{where}: this rank is not part of the param's device mesh")


def same_layout(a, b) -> bool:
    """Whether DTensors ``a`` and ``b`` have one mesh, one placement list and one global shape
    (then their local shards have one shape too)."""
    return (a.device_mesh == b.device_mesh and tuple(a.placements) == tuple(b.placements)
            and a.shape == b.shape)


def check_like(t, p, name: str, what: str = "") -> None:
    """``t`` (a grad or a state tensor of DTensor param ``p``) is a DTensor laid out as ``p``."""
    if not is_dtensor(t):
        raise TypeError(f"{name} is a plain {type(t).__name__} but its param is a DTensor"
                        f"{what}: it must be a DTensor with the param's mesh and placements")
    if t.device_mesh != p.device_mesh or tuple(t.placements) != tuple(p.placements):
        raise ValueError(f"{name} is a DTensor placed {_placements_text(t)} on mesh "
                         f"{t.device_mesh}, but its param is placed {_placements_text(p)} on "
                         f"mesh {p.device_mesh}{what}: they must match")


def counted(p) -> bool:
    """Whether this rank's shard of ``p`` enters the norm: not when ``p`` is replicated on a mesh
    dimension where this rank's coordinate is not 0 (a copy another rank counts)."""
    coord = p.device_mesh.get_coordinate()
    return all(c == 0 for pl, c in zip(p.placements, coord) if isinstance(pl, Replicate))


def _device(kind: str) -> torch.device:
    if kind == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)


class Exchange:
    """The norm's collectives over ``groups`` (innermost first); see the module docstring."""
    __slots__ = ("groups", "device")

    def __init__(self, groups, device):
        self.groups, self.device = list(groups), device

    def _gather(self, group, row) -> np.ndarray:
        """Every rank's float64 ``row``, as a (group size, len(row)) table in group rank order."""
        mine = torch.tensor(row, dtype=torch.float64, device=self.device)
        out = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(out, mine, group=group)
        return torch.stack(out).cpu().numpy()

    def sum(self, value: float, *, failed: bool = False, what: str = "") -> float | None:
        """Collective: sum over ranks r in rank order of ``value``_r (NaN and inf propagate),
        with a failure flag in the same message. A rank passing ``failed=True`` gets None and
        must raise its own error; if any rank failed, the others raise :class:`RemoteError`."""
        total, flags = float(value), 1.0 if failed else 0.0
        for group in self.groups:
            table = self._gather(group, [total, flags])
            total = float(table[0, 0])
            for v in table[1:, 0]:  # left to right: the same additions on every rank
                total += float(v)
            flags = float(table[:, 1].sum())  # small integers: exact
        if failed:
            return None
        if flags:
            raise RemoteError(f"{what}: {int(flags)} other rank(s) of the process group "
                              "rejected their input (their own error says why); nothing was "
                              "changed here either")
        return total

    def max(self, value: float) -> float:
        """Collective: the float64 max over ranks (callers never pass NaN)."""
        for group in self.groups:
            value = float(self._gather(group, [value])[:, 0].max())
        return value

    def abandon(self, what: str) -> None:
        """This rank rejected its input before the first exchange: take part in it with the
        failure flag set, so that the other ranks raise instead of waiting."""
        self.sum(0.0, failed=True, what=what)


def for_mesh(mesh) -> Exchange:
    """The exchange over every rank of ``mesh``: one all-gather per mesh dimension, the last
    dimension first (nested row-major order)."""
    groups = [mesh.get_group(d) for d in reversed(range(mesh.ndim))]
    return Exchange(groups, _device(mesh.device_type))


def for_group(group, name: str = "group") -> Exchange:
    """The exchange over a ``torch.distributed`` process group (``torch.distributed.group.WORLD``
    included), checked: purely local, so every rank passing a wrong one raises on its own."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(f"{name} was given, but torch.distributed is not initialized "
                         "(call torch.distributed.init_process_group first)")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"{name} must be a torch.distributed ProcessGroup (such as "
                        "torch.distributed.group.WORLD), got "
                        f"{type(group).__module__}.{type(group).__qualname__}")
    if dist.get_rank(group) < 0:
        raise ValueError(f"{name}: this rank is not a member of the process group")
    backend = str(dist.get_backend(group)).lower()
    kind = "cuda" if "nccl" in backend and "gloo" not in backend else "cpu"
    return Exchange([group], _device(kind))
