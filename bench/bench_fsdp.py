"""fastopt.torch.AdamW against torch.optim.AdamW on FSDP2-sharded (DTensor) parameters, CPU/gloo.

    python bench/bench_fsdp.py [--nproc 2] [--quick] [--repeats 15] [--json out.json]
    torchrun --nproc_per_node 2 bench/bench_fsdp.py [--quick] [--json out.json]

The first form (the default; no torchrun needed) spawns the ranks itself with
torch.multiprocessing on a free local port; it kills every rank and exits non-zero if one dies
or the run exceeds --timeout. Backend gloo, device mesh init_device_mesh("cpu", (world,)).

The model is transformer-shaped: a token embedding, 24 blocks of (q, k, v, o projections with
biases, two MLP matrices with biases, two LayerNorms' weight and bias) and a final LayerNorm:
387 float32 tensors, d_model 384 and vocab 8192, ~45.7M parameters (--quick: d_model 128,
~5.8M). Every block and the root are wrapped with fully_shard, so each parameter is a DTensor
sharded on dim 0. Each contender steps its own copy of the model (same init, same gradients;
its own m and v). Gradients are DTensors with the params' placements, filled once with random
values and reused every step: only the optimizer step (and the clipping, where named) is timed.

Contenders: fastopt.torch.AdamW with and without max_grad_norm=1.0, torch.optim.AdamW
(fused=True) and (foreach=True), each without clipping and with
torch.nn.utils.clip_grad_norm_(params, 1.0) before the step (that row times clip + step), and
the same-run memory ceiling: fastopt.bench.ceiling_update(local elements, 4, 3) on every rank,
a flat float32 stream reading 4 and rewriting 3 arrays of this rank's shard size, the 28 B per
local element an AdamW step must move. All are timed interleaved (round-robin each repeat,
after warm-ups), every call started after an untimed barrier on all ranks and followed by one;
a step's time is the slowest rank's, and we report its median over the repeats. A contender
that raises (on any rank) is reported as FAILED with the first line of its error, and the
others still run. "vs torch fused" compares like with like: a clipped contender against
torch fused AdamW + clip_grad_norm_, an unclipped one against torch fused AdamW.
Targets: fastopt.torch.AdamW with clipping >= 3x torch fused AdamW + clip_grad_norm_, and
fastopt's (unclipped) step >= 80 % of the ceiling. The report also prints the best clipped
ratio this machine allows: torch's clipped time over the ceiling scaled to 32 B per element
(a clipped step must read the grads for the norm before its update pass can start).

Each rank runs OMP_NUM_THREADS threads (default: cores // ranks) in torch and in fastopt.
"""
import argparse
import datetime
import gc
import json
import os
import socket
import statistics
import sys
import time
import traceback

import torch

BYTES = 28  # AdamW: read param, grad, m, v; write param, m, v (float32)
CLIP_BYTES = 32  # and the norm's read of the grad before the update
CEILING = "ceiling (stream 4r/3w)"
FUSED, FUSED_CLIP = "torch AdamW fused", "torch AdamW fused + clip"
FASTOPT, FASTOPT_CLIP = "fastopt.torch.AdamW", "fastopt.torch.AdamW clip=1"
LR = dict(lr=1e-4, weight_decay=0.01)


# -- the model -----------------------------------------------------------------------------------

class Block(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)


class Model(torch.nn.Module):
    def __init__(self, d, layers, vocab):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList(Block(d) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(d)


def sharded_model(cfg, mesh):
    """A fresh model (seed 0: every call gives the same init), every block and the root
    wrapped with fully_shard."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = Model(**cfg)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def random_grads(params, seed):
    """One local gradient shard per param (this rank's shape), random, float32."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.to_local().shape, generator=gen) * 1e-2 for p in params]


def set_grads(params, local_grads):
    from torch.distributed.tensor import DTensor

    for p, g in zip(params, local_grads):
        p.grad = DTensor.from_local(g.clone(), p.device_mesh, p.placements, run_check=False,
                                    shape=p.shape, stride=p.stride())


# -- contenders ----------------------------------------------------------------------------------

def make_step(name, params):
    """The zero-argument step of contender ``name`` on ``params`` (may raise)."""
    if name == FASTOPT or name == FASTOPT_CLIP:
        import fastopt.torch as ft

        clip = dict(max_grad_norm=1.0) if name == FASTOPT_CLIP else {}
        return ft.AdamW(params, **LR, **clip).step
    mode = "fused" if name.startswith(FUSED) else "foreach"
    opt = torch.optim.AdamW(params, **LR, **{mode: True})
    if not name.endswith("+ clip"):
        return opt.step

    def clipped():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return clipped


NAMES = (FASTOPT, FASTOPT_CLIP, FUSED, FUSED_CLIP, "torch AdamW foreach",
         "torch AdamW foreach + clip")


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


# -- one rank ------------------------------------------------------------------------------------

def agree(ok: bool, why: str | None):
    """All ranks' verdict on a call: (True, None), or (False, the first failing rank's first
    line). One all_reduce (it doubles as the barrier after a timed call)."""
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if flag.item():
        return True, None
    whys = [None] * dist.get_world_size()
    dist.all_gather_object(whys, why)
    return False, next((f"rank {r}: {w}" for r, w in enumerate(whys) if w), "another rank failed")


def attempt(fn):
    try:
        return True, None, fn()
    except Exception as e:  # a contender's failure is reported, never fatal
        if os.environ.get("BENCH_FSDP_TRACEBACK"):
            traceback.print_exc()
        return False, first_line(e), None


def time_all(fns, repeats, warmup, gap_s, failed):
    """Per-step seconds on this rank: {name: [s, ...]}, round-robin, each call between
    barriers. A call that raises on any rank removes its contender (into ``failed``)."""
    import torch.distributed as dist

    live = dict(fns)
    for name, fn in list(live.items()):
        for _ in range(warmup):
            dist.barrier()
            ok, why, _ = attempt(fn)
            ok, why = agree(ok, why)
            if not ok:
                failed[name] = why
                del live[name]
                break
    times = {name: [] for name in live}
    for _ in range(repeats):
        for name, fn in list(live.items()):
            time.sleep(gap_s)  # let the previous contender's OpenMP threads go idle
            dist.barrier()
            t0 = time.perf_counter()
            ok, why, _ = attempt(fn)
            dt = time.perf_counter() - t0
            ok, why = agree(ok, why)  # the barrier after
            if not ok:
                failed[name] = why
                del live[name], times[name]
                continue
            times[name].append(dt)
    return times


def rank_main(rank, world, port, args):
    import torch.distributed as dist

    threads = int(os.environ.get("OMP_NUM_THREADS", max(1, (os.cpu_count() or 1) // world)))
    torch.set_num_threads(threads)
    if port is not None:  # spawned: we set up the rendezvous ourselves
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world,
                                timeout=datetime.timedelta(seconds=args.pg_timeout))
    else:  # torchrun: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.pg_timeout))
    try:
        return run(rank, dist.get_world_size(), threads, args)
    finally:
        dist.destroy_process_group()


def log(rank, msg, t0=[time.perf_counter()]):
    if rank == 0:
        print(f"[{time.perf_counter() - t0[0]:6.1f} s] {msg}", file=sys.stderr, flush=True)


def run(rank, world, threads, args):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from fastopt._timing import machine

    mesh = init_device_mesh("cpu", (world,))
    cfg = dict(d=128, layers=24, vocab=8192) if args.quick else dict(d=384, layers=24, vocab=8192)
    fns, failed, local, tensors, total = {}, {}, None, None, None
    grads = None
    log(rank, f"building {len(NAMES)} sharded models")
    for name in NAMES:
        model = sharded_model(cfg, mesh)
        params = list(model.parameters())
        if grads is None:
            tensors, total = len(params), sum(p.numel() for p in params)
            local = sum(p.to_local().numel() for p in params)
            grads = random_grads(params, seed=1000 + rank)
        set_grads(params, grads)
        ok, why, fn = attempt(lambda: make_step(name, params))
        ok, why = agree(ok, why)
        if ok:
            fns[name] = fn
        else:
            failed[name] = why
    del grads
    gc.collect()
    from fastopt.bench import ceiling_update

    ok, why, fn = attempt(lambda: ceiling_update(local, 4, 3))
    ok, why = agree(ok, why)
    if ok:
        fns[CEILING] = fn
    else:
        failed[CEILING] = why

    log(rank, f"timing {len(fns)} contenders: {args.warmup} warm-ups, {args.repeats} repeats")
    times = time_all(fns, args.repeats, args.warmup, args.gap, failed)
    # every rank's per-step times -> the slowest rank's per step, then the median
    names = [n for n in fns if n in times]
    mine = torch.tensor([times[n] for n in names], dtype=torch.float64).reshape(len(names), args.repeats)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    locals_ = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(locals_, torch.tensor([local], dtype=torch.int64))
    if rank != 0:
        return 0
    stacked = torch.stack(every)  # (rank, contender, step)
    slowest = stacked.max(dim=0).values
    med = {n: statistics.median(slowest[i].tolist()) for i, n in enumerate(names)}
    rank_med = {n: [statistics.median(stacked[r, i].tolist()) for r in range(world)]
                for i, n in enumerate(names)}
    report(args, dict(machine=machine(), world=world, threads=threads, tensors=tensors,
                      params=total, local_elements=[int(x.item()) for x in locals_],
                      torch=torch.__version__, config=cfg, repeats=args.repeats,
                      warmup=args.warmup),
           med, rank_med, {n: slowest[i].tolist() for i, n in enumerate(names)}, failed)
    return 0


# -- report (rank 0) -----------------------------------------------------------------------------

def report(args, info, med, rank_med, steps, failed):
    ceil = med.get(CEILING)
    m = info["machine"]
    print(f"# {m['cpu']}, {m['cores']} cores; torch {info['torch']}, gloo, FSDP2 fully_shard "
          f"on {info['world']} ranks x {info['threads']} threads")
    print(f"# {info['tensors']} float32 tensors, {info['params'] / 1e6:.2f}M params; local "
          f"elements per rank: {', '.join(f'{n / 1e6:.2f}M' for n in info['local_elements'])}; "
          f"median of {info['repeats']} interleaved repeats (slowest rank per step)")
    head = (f"{'contender':30s} {'median ms':>10s} {'GB/s/rank':>10s} {'% ceiling':>10s} "
            f"{'vs torch fused':>15s}")
    print(head + "\n" + "-" * len(head))
    local = max(info["local_elements"])
    rows = []
    for name in list(NAMES) + [CEILING]:
        if name in failed:
            rows.append(dict(contender=name, status=f"FAILED: {failed[name]}"))
            print(f"{name:30s} FAILED: {failed[name]}")
            continue
        if name not in med:
            continue
        t = med[name]
        base = med.get(FUSED_CLIP if "clip" in name else FUSED)
        row = dict(contender=name, status="ok", ms=t * 1e3, gbps_per_rank=BYTES * local / t / 1e9,
                   pct_ceiling=None if ceil is None else 100 * ceil / t,
                   vs_torch_fused=None if base is None or name == CEILING else base / t,
                   vs_torch_fused_no_clip=None if FUSED not in med else med[FUSED] / t,
                   vs_torch_fused_clip=None if FUSED_CLIP not in med else med[FUSED_CLIP] / t,
                   rank_median_ms=[x * 1e3 for x in rank_med[name]],
                   step_ms=[x * 1e3 for x in steps[name]])
        rows.append(row)
        pct = "" if row["pct_ceiling"] is None else f"{row['pct_ceiling']:.0f}%"
        vs = "" if row["vs_torch_fused"] is None else f"{row['vs_torch_fused']:.2f}x"
        print(f"{name:30s} {row['ms']:10.2f} {row['gbps_per_rank']:10.2f} {pct:>10s} {vs:>15s}")
    print("(GB/s/rank counts 28 B per element of the largest local shard; 'vs torch fused' "
          "compares clipped rows with fused + clip_grad_norm_, unclipped rows with fused)")
    targets = {}

    def target(key, label, want, needed, value, shown):
        """One target line: PASS/MISS with the figure, or why it was not measured."""
        if value is not None:
            targets[key] = dict(value=value, target=want, met=value >= want)
            verdict = f"{'PASS' if value >= want else 'MISS'} ({shown})"
        else:
            why = ", ".join(f"{n} {'FAILED' if n in failed else 'not timed'}"
                            for n in needed if n not in med)
            targets[key] = dict(value=None, target=want, met=False, why=why)
            verdict = f"MISS (not measured: {why})"
        print(f"{label}: {verdict}")

    # what the clipped ratio can be at best on this machine: a clipped step reads the grads
    # once for the norm before the update can start (4 + 28 B per element), so it cannot beat
    # the ceiling scaled to that traffic
    bound = med[FUSED_CLIP] / (ceil * CLIP_BYTES / BYTES) if FUSED_CLIP in med and ceil \
        else None
    if bound is not None:
        print(f"attainable at best with clipping: {bound:.2f}x torch fused + clip_grad_norm_ "
              f"(its time over the ceiling scaled to {CLIP_BYTES} B/element)")
    x = med[FUSED_CLIP] / med[FASTOPT_CLIP] if FASTOPT_CLIP in med and FUSED_CLIP in med \
        else None
    target("clip_speedup", "fastopt.torch.AdamW with clipping >= 3x torch fused AdamW + "
           "clip_grad_norm_", 3.0, (FASTOPT_CLIP, FUSED_CLIP), x, x is not None and f"{x:.2f}")
    p = 100 * ceil / med[FASTOPT] if FASTOPT in med and ceil is not None else None
    target("pct_ceiling", "fastopt step >= 80 % of the ceiling", 80.0, (FASTOPT, CEILING), p,
           p is not None and f"{p:.0f} %, {FASTOPT} without clipping")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**info, "bytes_per_element": BYTES, "ceiling_ms": None if ceil is None
                       else ceil * 1e3, "clip_ratio_bound": bound, "rows": rows,
                       "targets": targets}, f, indent=1)
        print(f"wrote {args.json}")


# -- launching -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(rank, world, port, args):  # torch.multiprocessing's entry point (picklable)
    sys.exit(rank_main(rank, world, port, args))


def spawn(args) -> int:
    """Runs ``args.nproc`` ranks here; kills them all if one dies or time runs out."""
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    ctx = mp.start_processes(_spawned, args=(args.nproc, free_port(), args), nprocs=args.nproc,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + args.timeout
    try:
        while not ctx.join(timeout=1.0):  # raises (killing the others) when a rank fails
            if time.monotonic() > deadline:
                print(f"bench_fsdp: timed out after {args.timeout:.0f} s; killing the ranks",
                      file=sys.stderr)
                return 124
    except Exception as e:  # ProcessRaisedException, ProcessExitedException
        print(f"bench_fsdp: a rank failed; the others were stopped:\n{e}", file=sys.stderr)
        return 1
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
        for p in ctx.processes:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2,
                    help="ranks to spawn (default 2; ignored under torchrun)")
    ap.add_argument("--quick", action="store_true", help="d_model 128 (~5.8M params)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (15; --quick 21)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per contender first")
    ap.add_argument("--gap", type=float, default=0.002, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="spawn mode: kill every rank after this many seconds (default 900)")
    ap.add_argument("--pg-timeout", type=float, default=300.0,
                    help="a collective waiting longer than this raises (default 300 s)")
    ap.add_argument("--json", help="write every figure here (rank 0)")
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 21 if args.quick else 15
    if args.repeats < 1 or args.warmup < 0 or args.nproc < 1:
        ap.error("--repeats and --nproc must be >= 1, --warmup >= 0")
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder):
            ap.error(f"--json: the directory {folder} does not exist")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun
        return rank_main(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), None, args)
    return spawn(args)


if __name__ == "__main__":
    sys.exit(main())
