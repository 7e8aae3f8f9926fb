"""Global gradient norm and clipping, float32, against this machine's own read ceiling.

    python bench/bench_norm.py [--quick] [--repeats N] [--json out.json]

Cases: 2**24 elements as one flat array and as 200 arrays of log-normal sizes (the same total).
Contenders, timed interleaved (fastopt._timing.interleaved) so a noisy machine slows them alike:
fastopt.global_norm on each native backend, numpy.linalg.norm (float32 accumulation), a NumPy
version accumulating in float64, torch.nn.utils.get_total_norm and clip_grad_norm_ (torch CPU,
if installed), fastopt.clip_by_global_norm, and the ceiling: fastopt._C.stream_read, a plain
vectorised, threaded float32 sum over the same number of bytes in one flat array. GB/s counts 4
bytes per element read (SPEC §7), whatever else a contender writes (clipping also rewrites 8);
"% ceil" is the ceiling's time over the contender's.

Then Adam on the same layouts: no norm pass (nonfinite="ignore"), the default non-finite check
(one norm pass), and max_grad_norm set (norm pass + grad_scale; clips every step), beside torch's
fused Adam with and without clip_grad_norm_. Target: Adam with max_grad_norm <= 1.2x without.
The summary also gives the best ratio this machine allows: (update ceiling + read ceiling) /
update ceiling, both streaming kernels timed in the same run.

torch runs with fastopt's OpenMP thread count (OMP_NUM_THREADS). On a machine shared with other
jobs, OMP_NUM_THREADS=1 gives steadier numbers: a parallel region waits for its slowest thread.
"""
import argparse
import json
import math
import sys

import numpy as np

import fastopt
from fastopt import _C
from fastopt._timing import interleaved, lognormal_sizes, machine

N = 1 << 24


def layouts(total, quick):
    count = 50 if quick else 200
    return {"flat": [total], f"{count} arrays": lognormal_sizes(count, total)}


def have(backend):
    return fastopt._dispatch.unavailable_reason(backend) is None


def norm_contenders(sizes, seed=0):
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(n, dtype=np.float32) for n in sizes]
    flat = np.ones(sum(sizes), np.float32)
    out = {}
    for b in ("cpp", "numba"):
        if have(b):
            out[f"fastopt global_norm [{b}]"] = (lambda b=b: fastopt.global_norm(grads, backend=b))
    out["numpy.linalg.norm"] = lambda: float(np.linalg.norm([np.linalg.norm(g) for g in grads]))
    out["numpy, float64 accum"] = lambda: math.sqrt(math.fsum(
        float(np.einsum("i,i->", g, g, dtype=np.float64)) for g in grads))
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        tensors = [torch.from_numpy(g) for g in grads]
        out["torch get_total_norm"] = lambda: torch.nn.utils.get_total_norm(tensors)
        params = [torch.zeros(n, requires_grad=True) for n in sizes]
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g.copy())
        # clips once to norm 1, then rescales by ~1/(1+1e-6) every call: it always writes
        out["torch clip_grad_norm_"] = lambda: torch.nn.utils.clip_grad_norm_(params, 1.0)
    if have("cpp"):
        mine = [g.copy() for g in grads]
        state = [0.999 * fastopt.global_norm(mine)]

        def clip():  # clips (reads + rewrites) on every call, by 0.999
            fastopt.clip_by_global_norm(mine, state[0], backend="cpp")
            state[0] *= 0.999
        out["fastopt clip_by_global_norm [cpp]"] = clip
        out["fastopt clip, no clipping needed"] = (
            lambda: fastopt.clip_by_global_norm(grads, 1e30, backend="cpp"))
        out["ceiling: stream_read (flat)"] = lambda: _C.stream_read(flat)
    return out


def adam_contenders(sizes, seed=1):
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3) for n in sizes]
    out = {}

    def fo(**kw):
        opt = fastopt.Adam([np.zeros(n, np.float32) for n in sizes], 1e-3, backend="cpp", **kw)
        return lambda: opt.step(grads)
    out["fastopt Adam, no norm pass"] = fo(nonfinite="ignore")
    out["fastopt Adam, default check"] = fo()
    out["fastopt Adam, max_grad_norm=1"] = fo(max_grad_norm=1.0)  # norm ~4: clips every step
    try:
        import torch
    except ImportError:
        return out, grads
    for clip in (False, True):
        params = [torch.zeros(n, requires_grad=True) for n in sizes]
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g.copy())
        opt = torch.optim.Adam(params, lr=1e-3, fused=True)

        def step(opt=opt, params=params, clip=clip):
            if clip:
                torch.nn.utils.clip_grad_norm_(params, 1e30)  # norm + (always) rescale by 1
            opt.step()
        out[f"torch fused Adam{' + clip_grad_norm_' if clip else ''}"] = step
    arrays = [np.full(sum(sizes), 1e-3, np.float32) for _ in range(4)]
    out["ceiling: stream 4 read/3 write"] = lambda: _C.stream_update(arrays, 3)
    # the norm pass's own ceiling, so the best possible ratio comes from this run too
    out["ceiling: stream_read"] = lambda: _C.stream_read(arrays[0])
    return out, grads


def table(title, med, total, ref, ceiling, bytes_per, bytes_of=None):
    lines = [f"\n## {title}",
             f"{'contender':<36} {'ms':>8} {'GB/s':>7} {'% ceil':>7} "
             f"{ref[:20] + ' is x faster':>32}"]
    for name, sec in med.items():
        gbps = total * (bytes_of or {}).get(name, bytes_per) / sec / 1e9
        other_ceiling = name.startswith("ceiling") and name != ceiling
        pct = f"{100 * med[ceiling] / sec:.0f}%" if ceiling in med and not other_ceiling else ""
        lines.append(f"{name:<36} {sec * 1e3:8.3f} {gbps:7.2f} {pct:>7} {sec / med[ref]:32.2f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2**20 elements, few repeats")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--only", choices=("norm", "adam"), help="run one part")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    total = (1 << 20) if a.quick else N
    repeats = 5 if a.quick else a.repeats
    try:
        import torch
        torch.set_num_threads(_C.num_threads())  # the same thread count for both
        tinfo = f"torch {torch.__version__} threads={torch.get_num_threads()}"
    except ImportError:
        tinfo = "torch not installed"
    print(f"# {machine()}\n# fastopt cpp threads={_C.num_threads()} simd={_C.simd_level()}; "
          f"{tinfo}; n = 2^{total.bit_length() - 1} float32; medians of {repeats} interleaved runs")
    record = {"machine": machine(), "threads": _C.num_threads(), "rows": []}
    summary = []
    for lay, sizes in layouts(total, a.quick).items():
        if a.only == "adam":
            break
        med = interleaved(norm_contenders(sizes), repeats=repeats, warmup=2)
        ref = "fastopt global_norm [cpp]"
        print(table(f"global norm, {lay}", med, total, ref, "ceiling: stream_read (flat)", 4))
        for k, v in med.items():
            record["rows"].append({"case": f"norm {lay}", "contender": k, "seconds": v})
        pct = 100 * med["ceiling: stream_read (flat)"] / med[ref]
        summary.append(f"norm {lay}: {pct:.0f}% of the read ceiling"
                       + (f"; {med['torch clip_grad_norm_'] / med[ref]:.2f}x faster than torch "
                          f"clip_grad_norm_, {med['torch get_total_norm'] / med[ref]:.2f}x than "
                          "get_total_norm" if "torch get_total_norm" in med else ""))
    for lay, sizes in layouts(total, a.quick).items():
        if a.only == "norm":
            break
        fns, _ = adam_contenders(sizes)
        med = interleaved(fns, repeats=repeats, warmup=2)
        ref = "fastopt Adam, no norm pass"
        print(table(f"Adam step, {lay} (GB/s at 28 B/element)", med, total, ref,
                    "ceiling: stream 4 read/3 write", 28, {"ceiling: stream_read": 4}))
        for k, v in med.items():
            record["rows"].append({"case": f"adam {lay}", "contender": k, "seconds": v})
        r = med["fastopt Adam, max_grad_norm=1"] / med[ref]
        d = med["fastopt Adam, default check"] / med[ref]
        up, rd = med["ceiling: stream 4 read/3 write"], med["ceiling: stream_read"]
        summary.append(f"Adam {lay}: max_grad_norm costs {r:.2f}x the step without a norm pass "
                       f"(target <= 1.2x); default check {d:.2f}x; a read pass and an update "
                       f"pass at their same-run ceilings would cost {(up + rd) / up:.2f}x")
    print("\n## summary\n" + "\n".join(summary))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
