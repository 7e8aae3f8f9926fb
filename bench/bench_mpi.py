"""Sharded Adam with clipping (ZeRO-1 over MPI) against the single-process step, and the share of
its time spent communicating.

    mpiexec -n 2 python bench/bench_mpi.py [--numel 16777216] [--repeats 15] [--json out.json]

Every rank runs one OpenMP thread (``OMP_NUM_THREADS`` defaults to 1 here), so P ranks use P
cores. Timed on every rank in lockstep with the project's one timer (``_timing.interleaved``),
each call after an (untimed) barrier: the whole sharded step (full float32 gradients:
reduce-scatter and averaging, global-norm all-reduce, Adam on the shard, all-gather) with
either reduction, and each part alone; the table shows the slowest rank's medians. The
single-process baselines run while the other ranks sleep: Adam with clipping on all
parameters in rank 0 (one thread) and in a fresh process given every core. Bytes are those each
rank sends with a ring schedule, the minimum for these collectives.
"""
import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before the extension loads its OpenMP runtime

import numpy as np  # noqa: E402

import fastopt  # noqa: E402
from fastopt._timing import interleaved, machine  # noqa: E402


def data(numel, seed=0):
    rng = np.random.default_rng(seed)
    params = rng.standard_normal(numel, dtype=np.float32)
    grads = rng.standard_normal(numel, dtype=np.float32)  # norm ~ 4096 >> 1: clipped each step
    return params, grads


def single(numel, repeats):
    """Median seconds of one Adam step with clipping on all ``numel`` parameters, here."""
    params, grads = data(numel)
    opt = fastopt.Adam([params], 1e-3, max_grad_norm=1.0)
    return interleaved({"single": lambda: opt.step([grads])}, repeats=repeats)["single"]


def idle_until_released(comm):
    """Wait for rank 0 without spinning on a core (MPI's blocking waits poll)."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.005)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1 << 24)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json")
    ap.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.single:  # the all-cores baseline, in a process of its own
        print(json.dumps({"seconds": single(a.numel, a.repeats)}))
        return 0

    from mpi4py import MPI

    from fastopt import _mpi
    from fastopt.distributed import ShardedOptimizer

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    params, grads = data(a.numel)
    grads *= np.float32(1 + rank)  # every rank its own gradient
    sh = ShardedOptimizer([params], "adam", comm, lr=1e-3, max_grad_norm=1.0)
    sho = ShardedOptimizer([params], "adam", comm, lr=1e-3, max_grad_norm=1.0,
                           reduction="ordered")
    counts, displs = sh._counts, sh.bounds[:-1]
    g = sh._grad_shard

    parts = {
        "sharded step, reduction='mpi'": lambda: sh.step(grads),
        "  Reduce_scatter + average": lambda: sh._reduce_scatter(grads, g),
        "  norm all-reduce (16 B)": lambda: _mpi.allreduce_sum(comm, 1.0),
        "  Adam on the shard (incl. norm)": lambda: sh.optimizer.step([g]),
        "  Allgatherv (in place)": lambda: comm.Allgatherv(
            MPI.IN_PLACE, [sh.flat.buffer, counts, displs, MPI.FLOAT]),
        "sharded step, reduction='ordered'": lambda: sho.step(grads),
        "  Alltoallv + rank-order sum + avg": lambda: sho._reduce_scatter(grads, sho._grad_shard),
    }
    sh._reduce_scatter(grads, g)
    # no idle gap: one thread per rank (nothing spins after a call), and ranks stay in lockstep
    med = interleaved(parts, repeats=a.repeats, gap_s=0.0, before=comm.Barrier)
    slowest = {k: comm.allreduce(v, op=MPI.MAX) for k, v in med.items()}

    base = {}
    if rank == 0:
        base["single process, 1 thread"] = single(a.numel, a.repeats)
        env = dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count()))
        for k in [k for k in env if k.startswith(("PMI_", "MPI", "HYDRA"))]:
            del env[k]  # a plain process, not an MPI rank
        try:
            out = subprocess.run([sys.executable, __file__, "--single", "--numel", str(a.numel),
                                  "--repeats", str(a.repeats)], env=env, capture_output=True,
                                 text=True, timeout=600, check=True).stdout
            base[f"single process, {os.cpu_count()} threads"] = json.loads(out)["seconds"]
        except (subprocess.SubprocessError, ValueError) as e:
            print(f"# all-cores baseline failed: {e}", file=sys.stderr)
        comm.Ibarrier().Wait()
    else:
        idle_until_released(comm)

    if rank != 0:
        return 0
    itemsize = 4
    moved = sh.flat.buffer.nbytes * (size - 1) // size
    sent = {"sharded step, reduction='mpi'": sh.comm_bytes(),
            "  Reduce_scatter + average": moved, "  norm all-reduce (16 B)": 16 if size > 1 else 0,
            "  Allgatherv (in place)": moved, "sharded step, reduction='ordered'": sh.comm_bytes(),
            "  Alltoallv + rank-order sum + avg": moved}
    m = machine()
    print(f"# {m['cpu']}, {m['cores']} cores, {size} ranks x OMP_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']}, MPI: {MPI.Get_library_version().splitlines()[0]}")
    print(f"# Adam float32, max_grad_norm=1 (clips every step), {a.numel} parameters "
          f"({a.numel * itemsize / 2**20:.0f} MiB), full gradients, median of {a.repeats}")
    head = (f"{'what':<36} {'median ms':>10} {'MB sent/rank':>13} {'GB/s':>7} "
            f"{'vs mpi step':>11}")
    print(head + "\n" + "-" * len(head))
    step = slowest["sharded step, reduction='mpi'"]
    for k, v in list(slowest.items()) + list(base.items()):
        b = sent.get(k)
        bw = f"{b / v / 1e9:7.2f}" if b and k.startswith("  ") else ""
        print(f"{k:<36} {v * 1e3:10.2f} {'' if b is None else f'{b / 1e6:13.1f}':>13} "
              f"{bw:>7} {v / step:11.0%}")
    local = slowest["  Adam on the shard (incl. norm)"]
    comm_s = {"mpi": slowest["  Reduce_scatter + average"] + slowest["  Allgatherv (in place)"],
              "ordered": (slowest["  Alltoallv + rank-order sum + avg"]
                          + slowest["  Allgatherv (in place)"])}
    for r, c in comm_s.items():
        st = slowest[f"sharded step, reduction='{r}'"]
        print(f"communication share, reduction='{r}': {c / st:.0%} of the step (its collectives "
              f"timed alone, incl. the reduction arithmetic); step minus local update: "
              f"{(st - local) / st:.0%}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": m, "ranks": size, "numel": a.numel, "median_s": slowest,
                       "bytes_sent_per_rank": sent, "baselines_s": base,
                       "comm_s": comm_s}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
