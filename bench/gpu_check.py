"""The GPU check: build, GPU tests, GPU benchmarks, a short table last. One command:

    python bench/gpu_check.py            # a few minutes on an H100/H200-class GPU

It needs no network: the package is built with the machine's own numpy, pybind11, torch,
cupy and numba-cuda (``pip install --no-build-isolation --no-deps .``, with FASTOPT_CUDA=1 so a
failed CUDA build is an error). Then ``tests/test_cuda.py``'s GPU tests run (every kernel
against the NumPy reference on copies, fresh random inputs, outputs poisoned first), then the
benchmarks: CUDA-event medians, effective bandwidth against this run's device-to-device copy,
and PyTorch's fused Adam / clip_grad_norm_ on the same data as the peer.

Options: --skip-build, --skip-tests, --quick (2**24 instead of 2**28 elements).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = []  # (what, time ms, rate, of ceiling, peer ms, vs peer)


def step(title):
    print(f"\n== {title} ==", flush=True)


def build():
    step("build: pip install --no-build-isolation --no-deps . (FASTOPT_CUDA=1)")
    t = time.perf_counter()
    env = {**os.environ, "FASTOPT_CUDA": "1"}
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation",
                          "--no-deps", "--force-reinstall", "."], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    print((out.stdout + out.stderr)[-2500:])
    if out.returncode:
        sys.exit(f"build failed (exit {out.returncode})")
    print(f"built in {time.perf_counter() - t:.0f} s")


def tests():
    step("GPU tests: tests/test_cuda.py (no simulator run here)")
    # From tests/, so that the installed fastopt (with its extensions) is the one imported.
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--rootdir",
           str(ROOT), str(ROOT / "tests" / "test_cuda.py"), "-k", "not simulator"]
    out = subprocess.run(cmd, cwd=ROOT / "tests", capture_output=True, text=True)
    print(out.stdout[-6000:] + out.stderr[-2000:])
    last = (out.stdout.strip().splitlines() or ["?"])[-1]
    ROWS.append(("GPU tests", last, "", "", "", ""))
    return out.returncode == 0


# -- benchmarks --------------------------------------------------------------------------------

def median_time(fn, reps, torch):
    """Median seconds per call by CUDA events on the current stream, after a warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def gbs(nbytes, t):
    return nbytes / t / 1e9


def row(what, t, rate, unit, ceiling=None, peer=None):
    ROWS.append((what, f"{t * 1e3:8.3f}", f"{rate:9.1f} {unit}",
                 f"{100 * rate / ceiling:5.1f}%" if ceiling else "",
                 f"{peer * 1e3:8.3f}" if peer else "", f"{peer / t:5.2f}x" if peer else ""))
    print(ROWS[-1], flush=True)


def benchmarks(n_flat, reps):
    import torch

    import fastopt
    step(f"benchmarks on {torch.cuda.get_device_name()} ({n_flat} elements)")
    torch.manual_seed(0)
    dev = "cuda"

    # The ceiling: a device-to-device copy, read + write bytes per second.
    src = torch.randn(n_flat, device=dev)
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), reps, torch)
    ceiling = gbs(8 * n_flat, t)
    row("d2d copy (ceiling)", t, ceiling, "GB/s")
    t_read = median_time(lambda: torch.sum(src), reps, torch)
    row("read: torch.sum", t_read, gbs(4 * n_flat, t_read), "GB/s", ceiling)
    del dst

    # Adam float32, one flat array: 28 B/element (p, g, m, v read; p, m, v written).
    def adam_case(label, sizes, dtype, bytes_per, clip=False):
        p = [torch.randn(n, device=dev, dtype=dtype) for n in sizes]
        g = [torch.randn(n, device=dev, dtype=dtype) for n in sizes]
        # clip: a guarded step (norm, clip decision and count on the device; results unread)
        opt = (fastopt.Adam(p, lr=1e-3, max_grad_norm=1.0) if clip
               else fastopt.Adam(p, lr=1e-3, nonfinite="ignore"))
        t = median_time(lambda: opt.step(g), reps, torch)
        peer = None
        try:
            q = [x.clone().requires_grad_() for x in p]
            for x, y in zip(q, g):
                x.grad = y.clone()
            topt = torch.optim.Adam(q, lr=1e-3, fused=True)

            def peer_step():
                if clip:
                    torch.nn.utils.clip_grad_norm_(q, 1.0)
                topt.step()
            peer = median_time(peer_step, reps, torch)
            del q, topt
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"torch fused Adam failed: {e}")
        row(label, t, gbs(bytes_per * sum(sizes), t), "GB/s", ceiling, peer)
        del p, g, opt
        torch.cuda.empty_cache()

    adam_case("Adam fp32 flat", [n_flat], torch.float32, 28)
    import numpy as np
    rng = np.random.default_rng(0)
    w = rng.lognormal(0, 1.5, size=1000)
    sizes = [max(1, int(x)) for x in w / w.sum() * n_flat]
    adam_case("Adam fp32 1000 arrays", sizes, torch.float32, 28)
    # + max_grad_norm, against fused Adam after clip_grad_norm_: 4 more B/element read
    adam_case("Adam fp32 1000 arrays, clipped", sizes, torch.float32, 32, clip=True)
    # bf16 params and grads, fp32 state: 2 + 2 + 2 + 16 = 22 B/element (torch keeps bf16 state)
    adam_case("Adam bf16 p, fp32 state", [n_flat], torch.bfloat16, 22)

    # Global norm: 4 B/element read; the peer computes the same 2-norm.
    x = torch.randn(n_flat, device=dev)
    t = median_time(lambda: fastopt.global_norm(x), reps, torch)
    peer = median_time(lambda: torch.linalg.vector_norm(x).item(), reps, torch)
    row("global norm fp32", t, gbs(4 * n_flat, t), "GB/s", ceiling, peer)
    # Clipping that clips: norm pass + rewrite, 4 + 8 B/element, against clip_grad_norm_.
    # Each call halves the norm (so every call clips; 2**-25 is far from float32's range end).
    target = [0.5 * fastopt.global_norm(x)]

    def clip():
        fastopt.clip_by_global_norm(x, target[0])
        target[0] *= 0.5
    t = median_time(clip, reps, torch)
    y = x.clone().requires_grad_()
    y.grad = x.clone()
    peer = median_time(lambda: torch.nn.utils.clip_grad_norm_([y], 1e-3), reps, torch)
    row("clip_by_global_norm fp32", t, gbs(12 * n_flat, t), "GB/s", ceiling, peer)
    del x, y, src
    torch.cuda.empty_cache()

    # Halton (2**24, 16): values per second (compute-bound).
    n, d = (1 << 24), 16
    fastopt.halton(16, d, seed=0, backend="cuda")  # tables cached
    t = median_time(lambda: fastopt.halton(n, d, seed=0, backend="cuda"), reps, torch)
    row(f"Halton ({n}, {d}) scrambled", t, n * d / t / 1e9, "Gval/s")


def table():
    step("summary")
    head = ("what", "time ms", "rate", "of copy", "peer ms", "vs peer")
    widths = [max(len(str(r[i])) for r in ROWS + [head]) for i in range(6)]
    for r in [head] + ROWS:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print("targets: Adam >= 85% of copy and >= 1.0x torch fused (>= 1.5x on 1000 arrays); "
          "norm >= 85%; Halton >= 20 Gval/s (H200-class)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--quick", action="store_true", help="2**24 elements instead of 2**28")
    args = ap.parse_args()
    if not args.skip_build:
        build()
    ok = True
    if not args.skip_tests:
        ok = tests()
    # Import the installed package, not the source tree beside this script.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]
    try:
        benchmarks(1 << (24 if args.quick else 28), 10 if args.quick else 20)
    except Exception as e:  # noqa: BLE001 - the table still prints what was measured
        import traceback
        traceback.print_exc()
        ROWS.append(("benchmarks stopped", f"{type(e).__name__}: {e}"[:80], "", "", "", ""))
        ok = False
    table()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
