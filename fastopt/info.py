"""``fastopt info``: does it work here, which backend runs, what the machine offers."""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess

from . import __version__, _dispatch, _native, _registry
from ._timing import machine

PEERS = ("numpy", "numba", "scipy", "torch", "cupy", "mpi4py", "matplotlib", "tqdm")


def _version(dist: str) -> str | None:
    for name in (dist, f"{dist}-cuda12x", f"{dist}-cuda13x", f"{dist}-cuda11x"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def gpus() -> list[str]:
    """'name, memory' of each NVIDIA GPU nvidia-smi reports (empty without one)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _reason(backend: str) -> str:
    """Why ``backend`` cannot run, or "available". ``fastopt info`` is what one runs when
    something is broken, so a backend whose probe itself fails (numba refusing a bad
    NUMBA_NUM_THREADS at import) is reported, not raised."""
    try:
        return _dispatch.unavailable_reason(backend) or "available"
    except Exception as e:  # noqa: BLE001 - any failure of the probe is the answer
        return f"cannot be loaded here ({type(e).__name__}: {e})"


def info() -> dict:
    simd = threads = None
    backends = {b: _reason(b) for b in _registry.ALL_BACKENDS}
    if backends["cpp"] == "available":
        simd, threads = _native.cpu().simd_level(), _native.cpu().num_threads()
    return {
        "version": __version__,
        "machine": machine(),
        "backends": backends,
        "default_backend": {"host": next((b for b in _registry.CPU_BACKENDS
                                          if backends[b] == "available"), None)},
        "simd": simd,
        "threads": threads,
        "thread_settings": {k: os.environ.get(k) for k in
                            ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "FASTOPT_BACKEND")},
        "gpus": gpus(),
        "peers": {p: _version(p) for p in PEERS},
    }


def format_info(d: dict) -> str:
    m = d["machine"]
    lines = [f"fastopt {d['version']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}",
             "", "backends:"]
    for b, why in d["backends"].items():
        mark = "yes" if why == "available" else "no "
        lines.append(f"  {mark} {b:<11}" + ("" if why == "available" else f" {why}"))
    lines.append(f"  default on the host: {d['default_backend']['host']}"
                 "  (override: backend=... or FASTOPT_BACKEND)")
    lines += ["", f"CPU kernels: SIMD level {d['simd'] or 'n/a (no C++ extension)'}, "
                  f"{d['threads'] or 'n/a'} threads "
                  "(set OMP_NUM_THREADS for cpp, NUMBA_NUM_THREADS for numba)"]
    lines += ["", "GPUs: " + ("; ".join(d["gpus"]) if d["gpus"] else "none found")]
    lines += ["", "peers and optional parts:"]
    lines += [f"  {p:<11} {v or 'not installed'}" for p, v in d["peers"].items()]
    return "\n".join(lines)
