"""fastopt.torch.AdamW against torch.optim.AdamW on a 100M-parameter model's parameter list.

    python bench/bench_torch.py [--quick] [--repeats N] [--json out.json]

The layout is a GPT-style decoder's: token and position embeddings, 24 layers of (qkv weight
and bias, output projection and bias, two MLP matrices and biases, two layer norms' weight and
bias), a final layer norm: 292 float32 tensors, ~101.7M parameters (--quick: a quarter of the
width, ~25M). Every contender steps the same parameters and gradients (each has its own m and
v), so the arrays' placement is the same for all; they are timed interleaved
(fastopt._timing.interleaved), medians reported. Contenders: fastopt.torch.AdamW,
torch.optim.AdamW(fused=True) and (foreach=True), DeepSpeed's DeepSpeedCPUAdam if it is
importable, and the machine's streaming ceiling measured in the same run:
fastopt.bench.ceiling_update(total, 4, 3), a flat read of 4 and write of 3 float32 arrays, the
28 B/parameter an AdamW step must move. GB/s counts 28 B/parameter for everyone.
Target: fastopt.torch.AdamW >= 1.3x torch fused.

torch runs with the same number of threads as fastopt's OpenMP (OMP_NUM_THREADS if set).
"""
import argparse
import gc
import json
import os
import sys

import torch

import fastopt.torch as ft
from fastopt.bench import ceiling_update
from fastopt._timing import interleaved, machine

BYTES = 28  # AdamW: read param, grad, m, v; write param, m, v (float32)


def gpt_shapes(d=512, layers=24, vocab=50257, ctx=1024):
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,),
                   (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return shapes + [(d,), (d,)]


def contenders(params):
    lr = dict(lr=1e-4, weight_decay=0.01)
    makers = {
        "fastopt.torch.AdamW": lambda: ft.AdamW(params, **lr),
        "torch AdamW fused": lambda: torch.optim.AdamW(params, fused=True, **lr),
        "torch AdamW foreach": lambda: torch.optim.AdamW(params, foreach=True, **lr),
    }
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # noqa: F401

        makers["DeepSpeedCPUAdam"] = lambda: DeepSpeedCPUAdam(params, adamw_mode=True, **lr)
    except Exception:  # not installed (or its extension does not build here)
        pass
    return {name: make().step for name, make in makers.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the width (~25M params)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count()))
    torch.set_num_threads(threads)
    shapes = gpt_shapes(d=256, vocab=25000) if args.quick else gpt_shapes()
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    total = sum(p.numel() for p in params)
    fns = contenders(params)
    fns["ceiling (stream 4r/3w)"] = ceiling_update(total, 4, 3)
    gc.collect()
    med = interleaved(fns, repeats=args.repeats, warmup=2, budget_s=120)
    fused = med["torch AdamW fused"]
    print(f"# {len(params)} tensors, {total / 1e6:.1f}M float32 params, {threads} threads; "
          f"{machine()['cpu']}")
    print(f"{'contender':28s} {'ms/step':>9s} {'GB/s':>7s} {'vs torch fused':>15s} "
          f"{'% ceiling':>10s}")
    rows = []
    for name, t in med.items():
        row = dict(contender=name, ms=t * 1e3, gbps=BYTES * total / t / 1e9,
                   speedup_vs_fused=fused / t, pct_ceiling=100 * med["ceiling (stream 4r/3w)"] / t)
        rows.append(row)
        print(f"{name:28s} {row['ms']:9.1f} {row['gbps']:7.2f} {row['speedup_vs_fused']:14.2f}x "
              f"{row['pct_ceiling']:9.0f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "tensors": len(params), "params": total,
                       "threads": threads, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
