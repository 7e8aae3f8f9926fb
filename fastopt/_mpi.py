"""The few MPI operations fastopt needs, through mpi4py, imported only when a ``comm`` is given.

``import fastopt`` never imports mpi4py. Every helper here is *collective*: all ranks of the
communicator must call it, in the same order. Errors that only some ranks see (bad input on one
rank) are shared with the others through :func:`agree` or the flag slot of
:func:`allreduce_sum`, so every rank raises instead of some waiting forever in a collective.
"""
from __future__ import annotations

import numpy as np

_INSTALL = ("fastopt's comm= and fastopt.distributed need mpi4py and an MPI library; install "
            "them with: pip install 'fastopt[mpi]'  (or: pip install mpi4py mpich)")


def load():
    """The ``mpi4py.MPI`` module, or an ImportError that says what to install."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{_INSTALL} ({e})") from e
    return MPI


def check_comm(comm, name: str = "comm"):
    """``comm`` is a usable mpi4py intracommunicator; returns it. Purely local (no messages):
    every rank passing a wrong object raises the same TypeError on its own."""
    if comm is None:
        return None
    try:
        MPI = load()
    except ImportError as e:
        raise ImportError(f"{name} was given, but {e}") from None
    if not isinstance(comm, MPI.Intracomm):
        kind = ("an intercommunicator" if isinstance(comm, MPI.Comm)
                else type(comm).__module__ + "." + type(comm).__qualname__)
        raise TypeError(f"{name} must be an mpi4py intracommunicator such as "
                        f"mpi4py.MPI.COMM_WORLD, got {kind}")
    if comm == MPI.COMM_NULL:
        raise ValueError(f"{name} is MPI.COMM_NULL (this process is not part of it)")
    return comm


class RemoteError(ValueError):
    """Another rank rejected its input; this rank raised too so that none waits forever."""


def _remote(n: int, what: str) -> RemoteError:
    return RemoteError(f"{what}: {n} other rank(s) of the communicator rejected their input "
                       "(their own error says why); nothing was changed here either")


def agree(comm, error: BaseException | None, what: str) -> None:
    """Collective: share whether any rank failed. A failed rank re-raises its ``error``; the
    others raise :class:`RemoteError`. Costs one 8-byte all-reduce."""
    MPI = load()
    out = np.zeros(1, np.int64)
    comm.Allreduce(np.array([1 if error is not None else 0], np.int64), out, op=MPI.SUM)
    if error is not None:
        raise error
    if out[0]:
        raise _remote(int(out[0]), what)


def share(comm, error: BaseException | None, row, what: str) -> np.ndarray:
    """Collective: every rank's int64 ``row`` (the same length on every rank), as a
    (world size, len(row)) table, with a failure flag in the same message. A failed rank
    re-raises its ``error``, the others raise :class:`RemoteError`, as in :func:`agree`."""
    load()
    mine = np.concatenate([[0 if error is None else 1], np.asarray(row, np.int64)])
    table = np.zeros((comm.Get_size(), mine.size), np.int64)
    comm.Allgather(mine, table)
    if error is not None:
        raise error
    failed = int(table[:, 0].sum())
    if failed:
        raise _remote(failed, what)
    return table[:, 1:]


def allreduce_sum(comm, value: float, *, failed: bool = False, what: str = "") -> float:
    """Collective: the float64 sum of ``value`` over ranks (NaN and inf propagate), with a
    failure flag in the same message. A rank passing ``failed=True`` gets None back and must
    raise its own error; if any rank failed, the others raise :class:`RemoteError`."""
    MPI = load()
    out = np.zeros(2, np.float64)
    comm.Allreduce(np.array([value, 1.0 if failed else 0.0], np.float64), out, op=MPI.SUM)
    if failed:
        return None
    if out[1]:
        raise _remote(int(out[1]), what)
    return float(out[0])


def allreduce_max(comm, value: float) -> float:
    """Collective: the float64 max over ranks (inf propagates; callers never pass NaN)."""
    MPI = load()
    out = np.zeros(1, np.float64)
    comm.Allreduce(np.array([value], np.float64), out, op=MPI.MAX)
    return float(out[0])
