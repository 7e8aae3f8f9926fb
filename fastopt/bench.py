"""Benchmarks measured against this machine's own ceiling (shared by bench/ and ``fastopt bench``).

Every kernel is judged by effective bandwidth = minimal bytes moved / time (SPEC §7), next to
a streaming kernel that moves the same bytes with trivial arithmetic, timed in the same run,
interleaved with the contenders.
"""
from __future__ import annotations

import numpy as np

from . import _dispatch
from ._timing import interleaved, lognormal_sizes

#: Minimal bytes per float32 element (SPEC §7) and the stream shape (arrays read, written).
OPTIM_TRAFFIC = {"sgd": (12, 2, 1), "momentum": (20, 3, 2), "nesterov": (20, 3, 2),
                 "rmsprop": (28, 4, 3), "adam": (28, 4, 3), "adamw": (28, 4, 3),
                 "nadam": (28, 4, 3)}


def layouts(total: int, count: int):
    """The arrays' sizes: one flat array, or ``count`` log-normal sizes summing to ``total``."""
    return [total] if count == 1 else lognormal_sizes(count, total)


def have(backend: str) -> bool:
    return _dispatch.unavailable_reason(backend) is None


def ceiling_update(total: int, reads: int, writes: int):
    """A zero-argument callable streaming ``reads`` float32 arrays and rewriting ``writes``."""
    from . import _C

    arrays = [np.full(total, 1e-3, np.float32) for _ in range(reads)]
    return lambda: _C.stream_update(arrays, writes)


def optim_contenders(rule: str, sizes, *, backends=("cpp", "numba", "numpy"), peers=True,
                     ceiling=True, seed=0):
    """name -> zero-argument callable doing one step of ``rule`` on float32 arrays of ``sizes``."""
    from . import optim

    cls = {"sgd": optim.SGD, "momentum": optim.Momentum, "nesterov": optim.Nesterov,
           "rmsprop": optim.RMSProp, "adam": optim.Adam, "adamw": optim.AdamW,
           "nadam": optim.NAdam}[rule]
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3) for n in sizes]
    out = {}
    for b in backends:
        if have(b):
            opt = cls([np.zeros(n, np.float32) for n in sizes], 1e-3, backend=b)
            out[f"fastopt[{b}]"] = (lambda o=opt: o.step(grads))
    if peers and rule in ("adam", "adamw"):
        out.update(torch_adam_contenders(rule, sizes, grads))
    if ceiling and have("cpp"):
        _, r, w = OPTIM_TRAFFIC[rule]
        out["ceiling (stream)"] = ceiling_update(sum(sizes), r, w)
    return out


def torch_adam_contenders(rule, sizes, grads):
    try:
        import torch
    except ImportError:
        return {}
    out = {}
    cls = torch.optim.Adam if rule == "adam" else torch.optim.AdamW
    for mode in ("fused", "foreach"):
        params = [torch.zeros(n, requires_grad=True) for n in sizes]
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g)
        opt = cls(params, lr=1e-3, **{mode: True})
        out[f"torch {mode}"] = opt.step
    return out


def run_optim(rule="adam", cases=((1 << 24, 1), (1 << 20, 200), (1 << 24, 200)), *,
              repeats=11, budget_s=30.0, backends=("cpp", "numba", "numpy"), peers=True,
              progress=None):
    """Rows of {case, contender, seconds, gbps, pct_ceiling, vs_fastopt} for each case."""
    rows = []
    nbytes = OPTIM_TRAFFIC[rule][0]
    for total, count in cases:
        sizes = layouts(total, count)
        fns = optim_contenders(rule, sizes, backends=backends, peers=peers)
        med = interleaved(fns, repeats=repeats, budget_s=budget_s)
        ceil = med.get("ceiling (stream)")
        best = med.get("fastopt[cpp]") or next(iter(med.values()))
        case = f"{rule} f32 {'flat' if count == 1 else f'{count} arrays'} n=2^{total.bit_length() - 1}"
        for name, sec in med.items():
            gbps = total * nbytes / sec / 1e9
            rows.append({"case": case, "contender": name, "seconds": sec, "gbps": gbps,
                         "pct_ceiling": None if ceil is None else 100 * ceil / sec,
                         "fastopt_speedup": sec / best})
        if progress:
            progress()
    return rows


def format_table(rows) -> str:
    """A plain-text table: time, GB/s, % of the same-run ceiling, fastopt[cpp]'s speedup."""
    head = f"{'case':<30} {'contender':<18} {'ms':>9} {'GB/s':>7} {'%ceil':>6} {'cpp is x faster':>15}"
    lines = [head, "-" * len(head)]
    for r in rows:
        pct = "" if r["pct_ceiling"] is None else f"{r['pct_ceiling']:.0f}%"
        unit = r.get("unit", "GB/s")
        val = f"{r['gbps']:.2f}" if unit == "GB/s" else f"{r['gbps']:.2e}"
        lines.append(f"{r['case']:<30} {r['contender']:<18} {r['seconds'] * 1e3:9.3f} "
                     f"{val:>7} {pct:>6} {r['fastopt_speedup']:15.2f}")
    return "\n".join(lines)
