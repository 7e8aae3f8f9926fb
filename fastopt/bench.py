"""``fastopt bench``: every kernel on every backend, checked, then timed against this machine's
own ceiling (shared by the CLI and the scripts in bench/).

Each *case* is one problem (a kernel family, a size, a layout) with contenders: fastopt's
backends, the installed peers (torch, SciPy, NumPy) and a streaming *ceiling* kernel that moves
the same bytes with trivial arithmetic. Contenders are first checked against the NumPy reference
(a wrong one is reported FAILED and never timed), then timed interleaved; we report medians,
effective bandwidth = minimal bytes / time (SPEC §7) or values/s, % of the same-run ceiling, and
how many times faster fastopt's fastest backend is.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from typing import Callable

import numpy as np

from . import _dispatch
from ._registry import CPU_BACKENDS
from ._timing import interleaved, lognormal_sizes, machine

#: Minimal bytes per float32 element (SPEC §7) and the ceiling's shape (arrays read, written).
OPTIM_TRAFFIC = {"sgd": (12, 2, 1), "momentum": (20, 3, 2), "nesterov": (20, 3, 2),
                 "rmsprop": (28, 4, 3), "adam": (28, 4, 3), "adamw": (28, 4, 3),
                 "nadam": (28, 4, 3)}
CEILING = "ceiling (stream)"


@dataclasses.dataclass
class Case:
    """One benchmark problem and everything that competes on it."""
    family: str
    name: str
    unit: str                                   # "GB/s" or "values/s"
    work: float                                 # bytes moved or values made per call
    contenders: dict[str, Callable[[], object]]
    checks: dict[str, Callable[[], str | None]] = dataclasses.field(default_factory=dict)


def have(backend: str) -> bool:
    return _dispatch.unavailable_reason(backend) is None


def have_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def layouts(total: int, count: int):
    """The arrays' sizes: one flat array, or ``count`` log-normal sizes summing to ``total``."""
    return [total] if count == 1 else lognormal_sizes(count, total)


def _pow2(n: int) -> str:
    return f"2^{n.bit_length() - 1}" if n & (n - 1) == 0 else str(n)


def _layout_name(total, count):
    return f"n={_pow2(total)} " + ("flat" if count == 1 else f"{count} arrays")


# -- ceilings ------------------------------------------------------------------------------------

def ceiling_update(total: int, reads: int, writes: int):
    """Streams ``reads`` float32 arrays of ``total`` elements, rewriting ``writes`` of them."""
    from . import _C

    arrays = [np.full(total, 1e-3, np.float32) for _ in range(reads)]
    return lambda: _C.stream_update(arrays, writes)


def ceiling_read(total: int):
    from . import _C

    x = np.full(total, 1e-3, np.float32)
    return lambda: _C.stream_read(x)


# -- optimizer cases -----------------------------------------------------------------------------

def _optimizer(rule, params, backend, **kw):
    from . import optim

    cls = {"sgd": optim.SGD, "momentum": optim.Momentum, "nesterov": optim.Nesterov,
           "rmsprop": optim.RMSProp, "adam": optim.Adam, "adamw": optim.AdamW,
           "nadam": optim.NAdam}[rule]
    return cls(params, 1e-3, backend=backend, **kw)


def check_optim(rule, backend, sizes, seed=1) -> str | None:
    """None when ``backend`` matches the NumPy reference for 2 steps on a slice of the layout."""
    rng = np.random.default_rng(seed)
    sizes = [min(n, 5000) for n in sizes[:8]]
    p0 = [rng.standard_normal(n, dtype=np.float32) for n in sizes]
    gs = [[rng.standard_normal(n, dtype=np.float32) for n in sizes] for _ in range(2)]
    out = {}
    for b in ("numpy", backend):
        p = [x.copy() for x in p0]
        opt = _optimizer(rule, p, b)
        for g in gs:
            opt.step(g)
        out[b] = p + [a for arrays in opt.state.values() for a in arrays]
    for want, got in zip(out["numpy"], out[backend]):
        if not np.allclose(got, want, rtol=1e-5, atol=1e-6):
            err = float(np.max(np.abs(got.astype(np.float64) - want)))
            return f"differs from the NumPy reference (max abs error {err:.3g})"
    return None


def optim_case(rule, total, count, backends, peers=True, seed=0) -> Case:
    sizes = layouts(total, count)
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3) for n in sizes]
    c = Case("optim", f"{rule} f32 {_layout_name(total, count)}", "GB/s",
             total * OPTIM_TRAFFIC[rule][0], {})
    for b in backends:
        opt = _optimizer(rule, [np.zeros(n, np.float32) for n in sizes], b)
        c.contenders[f"fastopt[{b}]"] = (lambda o=opt: o.step(grads))
        if b != "numpy":
            c.checks[f"fastopt[{b}]"] = (lambda b=b: check_optim(rule, b, sizes))
    if peers and rule in ("adam", "adamw") and have_module("torch"):
        import torch

        cls = torch.optim.Adam if rule == "adam" else torch.optim.AdamW
        for mode in ("fused", "foreach"):
            params = [torch.zeros(n, requires_grad=True) for n in sizes]
            for p, g in zip(params, grads):
                p.grad = torch.from_numpy(g)
            c.contenders[f"torch {mode}"] = cls(params, lr=1e-3, **{mode: True}).step
    if have("cpp"):
        c.contenders[CEILING] = ceiling_update(total, *OPTIM_TRAFFIC[rule][1:])
    return c


# -- running and reporting -----------------------------------------------------------------------

def run_case(case: Case, *, repeats=11, budget_s=20.0) -> list[dict]:
    """Check, then time; one row per contender."""
    rows, timed = [], {}
    for label, fn in case.contenders.items():
        check = case.checks.get(label)
        why = check() if check else None
        if why is not None:
            rows.append(dict(family=case.family, case=case.name, contender=label,
                             status=f"FAILED: {why}", seconds=None, rate=None, unit=case.unit,
                             pct_ceiling=None, speedup=None))
        else:
            timed[label] = fn
    med = interleaved(timed, repeats=repeats, budget_s=budget_s) if timed else {}
    fast = [s for label, s in med.items() if label.startswith("fastopt[")]
    best = min(fast) if fast else None
    ceil = med.get(CEILING)
    for label, sec in med.items():
        rows.append(dict(family=case.family, case=case.name, contender=label, status="ok",
                         seconds=sec, rate=case.work / sec, unit=case.unit,
                         pct_ceiling=None if ceil is None or case.unit != "GB/s" else 100 * ceil / sec,
                         speedup=None if best is None else sec / best))
    return rows


def run_optim(rule="adam", cases=((1 << 24, 1), (1 << 20, 200), (1 << 24, 200)), *,
              repeats=11, budget_s=30.0, backends=None, peers=True):
    """The optimizer rows (used by bench/bench_optim.py)."""
    backends = [b for b in (backends or CPU_BACKENDS) if have(b)]
    rows = []
    for total, count in cases:
        rows += run_case(optim_case(rule, total, count, backends, peers), repeats=repeats,
                         budget_s=budget_s)
    return rows


def format_table(rows) -> str:
    """Plain text: median time, rate, % of the same-run ceiling, fastopt's speedup over it."""
    head = (f"{'case':<34} {'contender':<20} {'median ms':>10} {'rate':>14} {'% ceil':>7} "
            f"{'fastopt x':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['case']:<34} {r['contender']:<20} {r['status']}")
            continue
        rate = (f"{r['rate'] / 1e9:8.2f} GB/s" if r["unit"] == "GB/s"
                else f"{r['rate']:.3g} val/s")
        pct = "" if r["pct_ceiling"] is None else f"{r['pct_ceiling']:.0f}%"
        sp = "" if r["speedup"] is None else f"{r['speedup']:.2f}"
        lines.append(f"{r['case']:<34} {r['contender']:<20} {r['seconds'] * 1e3:10.3f} "
                     f"{rate:>14} {pct:>7} {sp:>9}")
    return "\n".join(lines)


def header() -> str:
    m = machine()
    extra = ""
    if have("cpp"):
        from . import _C

        extra = f", {_C.num_threads()} threads, SIMD {_C.simd_level()}"
    return f"# {m['cpu']}, {m['cores']} cores{extra}, Python {m['python']}"
