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
import os
from typing import Callable

import numpy as np

from . import _dispatch, _native, _rules
from ._registry import CPU_BACKENDS
from ._timing import interleaved, lognormal_sizes, machine

#: Minimal bytes per float32 element (SPEC §7) and the ceiling's shape (arrays read, written).


def optim_traffic(rule: str) -> tuple[int, int, int]:
    """(bytes per float32 element, arrays read, arrays written) of one step of ``rule``: it
    reads the param, the grad and its state buffers and writes the param and the buffers."""
    n = len(_rules.get(rule).state)
    return 4 * (3 + 2 * n), 2 + n, 1 + n


#: The rules ``fastopt bench`` times by default: the headline (Adam) and the newest.
DEFAULT_RULES = ("adam", "lion", "adagrad")
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
    _C = _native.cpu()
    arrays = [np.full(total, 1e-3, np.float32) for _ in range(reads)]
    return lambda: _C.stream_update(arrays, writes)


def ceiling_read(total: int):
    _C = _native.cpu()
    x = np.full(total, 1e-3, np.float32)
    return lambda: _C.stream_read(x)


# -- optimizer cases -----------------------------------------------------------------------------

def _optimizer(rule, params, backend, **kw):
    from .optim import CLASSES

    cls = CLASSES[rule]
    # nonfinite="ignore": the pure update (28 B/element for Adam), as torch's fused step does;
    # the default non-finite check adds one 4 B/element read pass (bench/bench_norm.py).
    return cls(params, 1e-3, backend=backend, **{"nonfinite": "ignore", **kw})


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


#: rule -> the torch.optim class that computes the same update (timed as a peer)
TORCH_PEERS = {"adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad"}


def optim_case(rule, total, count, backends, peers=True, seed=0) -> Case:
    sizes = layouts(total, count)
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3) for n in sizes]
    c = Case("optim", f"{rule} f32 {_layout_name(total, count)}", "GB/s",
             total * optim_traffic(rule)[0], {})
    for b in backends:
        opt = _optimizer(rule, [np.zeros(n, np.float32) for n in sizes], b)
        c.contenders[f"fastopt[{b}]"] = (lambda o=opt: o.step(grads))
        if b != "numpy":
            c.checks[f"fastopt[{b}]"] = (lambda b=b: check_optim(rule, b, sizes))
    if peers and rule in TORCH_PEERS and have_module("torch"):
        import torch

        cls = getattr(torch.optim, TORCH_PEERS[rule])
        for mode in ("fused", "foreach"):
            params = [torch.zeros(n, requires_grad=True) for n in sizes]
            for p, g in zip(params, grads):
                p.grad = torch.from_numpy(g)
            try:
                c.contenders[f"torch {mode}"] = cls(params, lr=1e-3, **{mode: True}).step
            except (RuntimeError, ValueError, TypeError):  # this torch has no such mode
                pass
    if have("cpp"):
        c.contenders[CEILING] = ceiling_update(total, *optim_traffic(rule)[1:])
    return c


# -- global norm cases ---------------------------------------------------------------------------

def check_norm(backend, arrays) -> str | None:
    """None when ``backend`` gives the reference's bits (the norm is deterministic)."""
    from .norm import global_norm

    small = [a[:5000] for a in arrays[:8]]
    got, want = global_norm(small, backend=backend), global_norm(small, backend="numpy")
    return None if got == want else f"norm {got!r} differs from the reference {want!r}"


def norm_case(total, count, backends, peers=True, seed=0) -> Case:
    from .norm import global_norm

    sizes = layouts(total, count)
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(n, dtype=np.float32) for n in sizes]
    c = Case("norm", f"global_norm f32 {_layout_name(total, count)}", "GB/s", total * 4, {})
    for b in backends:
        c.contenders[f"fastopt[{b}]"] = (lambda b=b: global_norm(arrays, backend=b))
        if b != "numpy":
            c.checks[f"fastopt[{b}]"] = (lambda b=b: check_norm(b, arrays))
    if peers:
        c.contenders["numpy linalg.norm"] = (
            lambda: float(np.sqrt(sum(float(np.linalg.norm(a)) ** 2 for a in arrays))))
        c.contenders["numpy float64"] = (
            lambda: float(np.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in arrays))))
        if have_module("torch"):
            import torch

            ts = [torch.from_numpy(a) for a in arrays]
            if hasattr(torch.nn.utils, "get_total_norm"):
                c.contenders["torch get_total_norm"] = (
                    lambda: torch.nn.utils.get_total_norm(ts, foreach=True))
    if have("cpp"):
        c.contenders[CEILING] = ceiling_read(total)
    return c


# -- Halton cases ---------------------------------------------------------------------------------

def check_halton(backend, d, seed) -> str | None:
    from .halton import halton

    n = 2048
    got, want = halton(n, d, seed=seed, backend=backend), halton(n, d, seed=seed, backend="numpy")
    if not np.array_equal(got, want):
        return "differs from the NumPy reference (must be bit-identical)"
    if have_module("scipy"):
        from scipy.stats import qmc

        if not np.array_equal(got, qmc.Halton(d, scramble=True, seed=seed).random(n)):
            return "differs from scipy.stats.qmc.Halton (must be bit-identical)"
    return None


def halton_case(n, d, backends, peers=True, seed=12345, threads=None) -> Case:
    from .halton import halton

    c = Case("halton", f"halton scrambled n={_pow2(n)} d={d}", "values/s", n * d, {})
    for b in backends:
        c.contenders[f"fastopt[{b}]"] = (lambda b=b: halton(n, d, seed=seed, backend=b))
        if b != "numpy":
            c.checks[f"fastopt[{b}]"] = (lambda b=b: check_halton(b, d, seed))
    if peers and have_module("scipy"):
        import os

        from scipy.stats import qmc

        engine = qmc.Halton(d, scramble=True, seed=seed)
        workers = threads or os.cpu_count() or 1

        def scipy_halton():
            engine.reset()
            return engine.random(n, workers=workers)
        c.contenders[f"scipy Halton (workers={workers})"] = scipy_halton
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


# -- compact precision (Adam) ----------------------------------------------------------------------
#
# One interleaved run per layout times Adam (AdamW with nonfinite="ignore": the pure update) in
# five storage configurations on fastopt's native backends, torch's fused AdamW on float32 and
# on bfloat16 params, and one streaming ceiling per configuration that moves that
# configuration's bytes: each configuration is judged against its own traffic.

@dataclasses.dataclass(frozen=True)
class PrecisionConfig:
    """One storage configuration of a compact step (fastopt/_precision.py); grads have the
    params' dtype."""
    name: str
    param: str                      # "float32" or "bfloat16"
    master: object = False          # False, True or "remainder"
    state_dtype: str = "float32"    # "float32", "bfloat16" or "int8"
    stochastic: bool = False

    def options(self) -> dict:
        return dict(master_weights=self.master, state_dtype=self.state_dtype,
                    stochastic_rounding=self.stochastic)

    @property
    def dtype(self) -> np.dtype:
        from ._precision import HOST_BF16

        return np.dtype(np.float32) if self.param == "float32" else HOST_BF16


PRECISION_CONFIGS = (
    PrecisionConfig("fp32", "float32"),
    PrecisionConfig("bf16+remainder+bf16 state", "bfloat16", "remainder", "bfloat16"),
    PrecisionConfig("bf16+SR+bf16 state", "bfloat16", False, "bfloat16", True),
    PrecisionConfig("bf16+remainder+int8", "bfloat16", "remainder", "int8"),
    PrecisionConfig("bf16+SR+int8", "bfloat16", False, "int8", True),
)
PRECISION = {c.name: c for c in PRECISION_CONFIGS}
PRECISION_RULE = "adamw"
#: the torch peers: label -> (param dtype, the configuration whose traffic it moves). torch's
#: fused AdamW keeps its state in the params' dtype, so on bfloat16 params it moves the 14
#: B/element of bf16 params + bf16 state, as "bf16+SR+bf16 state" does (it rounds to nearest).
TORCH_FP32, TORCH_BF16 = "torch fused fp32", "torch fused bf16"
PRECISION_PEERS = {TORCH_FP32: ("float32", "fp32"), TORCH_BF16: ("bfloat16", "bf16+SR+bf16 state")}


def _config(config) -> PrecisionConfig:
    return config if isinstance(config, PrecisionConfig) else PRECISION[config]


def precision_traffic(config, sizes=None, rule=PRECISION_RULE) -> tuple[float, float]:
    """(bytes read, bytes written) per element of one step of ``rule`` in ``config``: the param
    (unless it has a float32 master) and the grad read, the param written, the master (4 B) or
    remainder (2 B) and every state
    buffer (4, 2 or 1 B) read and written, and each 8-bit buffer's block absmax (4 B per
    QBLOCK elements) read and written. Without ``sizes``: large arrays (every state quantised,
    whole blocks); with ``sizes``: exactly those arrays (arrays under QMIN_SIZE elements keep
    float32 state, partial blocks count whole)."""
    from . import _precision as P

    c = _config(config)
    r = _rules.get(rule)
    p = c.dtype.itemsize
    master = {False: 0, True: 4, "remainder": 2}[c.master] if c.param != "float32" else 0
    # the grad read, the param written; the param read too unless a float32 master replaces it
    # (a remainder needs its param: the two halves make the master)
    read, written = p + (0 if master == 4 else p) + master, p + master
    if sizes is None:
        per = {"float32": 4.0, "bfloat16": 2.0, "int8": 1 + 4 / P.QBLOCK}[c.state_dtype]
        return read + per * len(r.state), written + per * len(r.state)
    total = sum(sizes)
    state = 0
    for name in r.state_names:
        for n in sizes:
            dt = P.state_storage(r, name, n, c.dtype, c.state_dtype)
            state += n * dt.itemsize + (4 * P.nblocks(n) if dt in (P.I8, P.U8) else 0)
    return read + state / total, written + state / total


def precision_ceiling_shape(config) -> tuple[int, int, int]:
    """(u, arrays read, arrays written) of ``config``'s ceiling: float32 arrays of total * u / 4
    elements each, so that they move the configuration's bytes. u = gcd(read, written, 4) of
    the whole bytes per element (the 8-bit blocks' absmax, 1/64 B per buffer each way, is left
    out of the ceiling's shape)."""
    import math

    read, written = (int(b) for b in precision_traffic(config))
    u = math.gcd(read, written, 4)
    reads, writes = read // u, written // u
    if reads != writes + 1:  # _C.stream_update reads the written arrays and the last one only
        raise ValueError(f"{_config(config).name}: a ceiling of {reads} arrays read and {writes} "
                         "written is not one stream_update can run (it needs reads = writes + 1)")
    return u, reads, writes


def _bits_equal(a, b) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


def check_precision(config, backend, sizes, seed=1, steps=3) -> str | None:
    """None when ``backend`` gives the NumPy reference's bits -- params, masters or
    remainders, states, block absmax -- for ``steps`` steps of ``config`` on a slice of the
    layout (plus one array that is quantised and ends in a partial block)."""
    from . import _precision as P

    c = _config(config)
    rng = np.random.default_rng(seed)
    small = [min(n, 5000) for n in sizes[:8]] + [P.QMIN_SIZE + 257]
    p0 = [(rng.standard_normal(n, dtype=np.float32) * np.float32(0.5)).astype(c.dtype)
          for n in small]
    gs = [[rng.standard_normal(n, dtype=np.float32).astype(c.dtype) for n in small]
          for _ in range(steps)]
    out = {}
    for b in ("numpy", backend):
        p = [x.copy() for x in p0]
        try:
            opt = _optimizer(PRECISION_RULE, p, b, **c.options())
            for g in gs:
                opt.step(g)
        except Exception as e:  # noqa: BLE001 - a contender that cannot run is reported
            if b == "numpy":
                raise
            return f"raised {type(e).__name__}: {str(e)[:120]}"
        sd = opt.state_dict()
        out[b] = [("param", i, x) for i, x in enumerate(p)] + [
            (k, None, v) for k, v in sd.items() if isinstance(v, np.ndarray)]
    if [k for k, _, _ in out["numpy"]] != [k for k, _, _ in out[backend]]:
        return "its state holds other buffers than the NumPy reference's"
    for (k, i, want), (_, _, got) in zip(out["numpy"], out[backend]):
        if not _bits_equal(got, want):
            where = k if i is None else f"{k}[{i}]"
            return f"differs from the NumPy reference in {where} (must be bit-identical)"
    return None


@dataclasses.dataclass
class PrecisionCase:
    """Every contender of one layout, all configurations together (one interleaved run)."""
    name: str                                   # the layout, e.g. "adamw n=2^24 flat"
    total: int
    sizes: list
    configs: tuple
    contenders: dict                            # label -> callable
    checks: dict                                # label -> callable -> None or why not
    group: dict                                 # label -> (configuration name, contender)
    traffic: dict                               # configuration name -> bytes per element
    ceiling_bytes: dict                         # configuration name -> ceiling bytes per call
    family: str = "precision"


def precision_case(total, count, backends, peers=True, configs=PRECISION_CONFIGS,
                   seed=0) -> PrecisionCase:
    """The contenders of one layout: per configuration fastopt[b] for each of ``backends``
    (checked bit for bit against the reference first, unless b is numpy) and its own ceiling
    (when the C++ extension is here); the torch fused AdamW peers on float32 and bf16."""
    configs = tuple(_config(c) for c in configs)
    sizes = layouts(total, count)
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(n, dtype=np.float32) * np.float32(0.02) for n in sizes]
    g32 = [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3) for n in sizes]
    grads = {"float32": g32}
    if any(c.param == "bfloat16" for c in configs) or peers:
        grads["bfloat16"] = [g.astype(PRECISION["bf16+SR+bf16 state"].dtype) for g in g32]
    traffic = {c.name: sum(precision_traffic(c, sizes)) for c in PRECISION_CONFIGS + configs}
    case = PrecisionCase(f"{PRECISION_RULE} {_layout_name(total, count)}", total, sizes,
                         configs, {}, {}, {}, traffic, {})

    def add(label, cfg, fn, check=None):
        key = f"{cfg} | {label}"
        case.contenders[key] = fn
        case.group[key] = (cfg, label)
        if check is not None:
            case.checks[key] = check

    for c in configs:
        for b in backends:
            opt = _optimizer(PRECISION_RULE, [v.astype(c.dtype) for v in values], b, **c.options())
            add(f"fastopt[{b}]", c.name, lambda o=opt, g=grads[c.param]: o.step(g),
                None if b == "numpy" else (lambda c=c, b=b: check_precision(c, b, sizes)))
        if peers and have_module("torch"):
            for label, (dtype, cfg) in PRECISION_PEERS.items():
                if cfg == c.name and (fn := _torch_adamw(values, grads[dtype], dtype)):
                    add(label, cfg, fn)
        if have("cpp"):
            u, reads, writes = precision_ceiling_shape(c)
            n = max(1, round(total * u / 4))
            add(CEILING, c.name, ceiling_update(n, reads, writes))
            case.ceiling_bytes[c.name] = 4 * n * (reads + writes)
    if peers and have_module("torch"):  # a peer whose configuration is not benchmarked
        for label, (dtype, cfg) in PRECISION_PEERS.items():
            if cfg not in {c.name for c in configs} and (
                    fn := _torch_adamw(values, grads[dtype], dtype)):
                add(label, cfg, fn)
    return case


def _torch_adamw(values, grads, dtype):
    """torch.optim.AdamW(fused=True) on ``dtype`` params (grads shared with ``grads``), its
    step, or None when this torch cannot run it."""
    import torch

    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    params = [torch.from_numpy(v).to(tdt, copy=True).requires_grad_() for v in values]
    for p, g in zip(params, grads):
        # zero-copy: a bfloat16 ndarray seen as int16, then as torch.bfloat16
        p.grad = torch.from_numpy(g) if dtype == "float32" else \
            torch.from_numpy(g.view(np.int16)).view(torch.bfloat16)
    try:
        opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
        opt.step()
    except (RuntimeError, ValueError, TypeError):  # this torch has no fused step for dtype
        return None
    if opt.state[params[0]]["exp_avg"].dtype != tdt:
        return None  # not the traffic we report
    return opt.step


def run_precision_case(case: PrecisionCase, *, repeats=11, budget_s=30.0) -> list[dict]:
    """Check, then time every contender of the layout in one interleaved run; one row per
    (configuration, contender): configuration bytes / median time, % of the configuration's
    own ceiling (ratio of rates), speedups over torch's fused fp32 and bf16 steps."""
    failed, timed = {}, {}
    for key, fn in case.contenders.items():
        check = case.checks.get(key)
        why = check() if check else None
        if why is None:
            timed[key] = fn
        else:
            failed[key] = why
    med = interleaved(timed, repeats=repeats, budget_s=budget_s) if timed else {}
    peer = {label: med.get(f"{cfg} | {label}") for label, (_, cfg) in PRECISION_PEERS.items()}
    ceil_rate = {cfg: case.ceiling_bytes[cfg] / med[f"{cfg} | {CEILING}"]
                 for cfg in case.ceiling_bytes if f"{cfg} | {CEILING}" in med}
    rows = []
    for key in case.contenders:
        cfg, label = case.group[key]
        bpe = case.traffic[cfg]
        row = dict(family=case.family, case=f"{cfg} {case.name}", layout=case.name, config=cfg,
                   contender=label, bytes_per_element=bpe, unit="GB/s", status="ok",
                   seconds=None, rate=None, pct_ceiling=None, vs_torch_fp32=None,
                   vs_torch_bf16=None)
        if key in failed:
            row["status"] = f"FAILED: {failed[key]}"
        else:
            sec = med[key]
            if label == CEILING:
                row["bytes_per_element"] = case.ceiling_bytes[cfg] / case.total
                row["rate"] = case.ceiling_bytes[cfg] / sec
            else:
                row["rate"] = case.total * bpe / sec
            row["seconds"] = sec
            if cfg in ceil_rate:
                row["pct_ceiling"] = 100 * row["rate"] / ceil_rate[cfg]
            if label != CEILING:
                for col, t in (("vs_torch_fp32", peer[TORCH_FP32]),
                               ("vs_torch_bf16", peer[TORCH_BF16])):
                    row[col] = None if t is None else t / sec
        rows.append(row)
    return rows


PRECISION_LAYOUTS = ((1 << 24, 1), (1 << 24, 200))


def precision_backends(backends=None) -> list:
    """The fastopt backends to time: those asked for that are available, or by default the
    native ones (the NumPy reference's compact step is far too slow to time at 2^24)."""
    if backends is None:
        backends = [b for b in CPU_BACKENDS if b != "numpy"]
    return [b for b in backends if have(b)]


def run_precision(cases=PRECISION_LAYOUTS, *, repeats=11, budget_s=30.0, backends=None,
                  peers=True, configs=PRECISION_CONFIGS):
    """The precision rows (used by bench/bench_precision.py): one interleaved run per layout."""
    backends = precision_backends(backends)
    rows = []
    for total, count in cases:
        case = precision_case(total, count, backends, peers, configs)
        rows += run_precision_case(case, repeats=repeats, budget_s=budget_s)
        del case
    return rows


def format_precision_table(rows) -> str:
    """Plain text, one line per (configuration, contender), grouped by layout."""
    head = (f"{'configuration':<26} {'B/elem':>6}  {'contender':<18} {'median ms':>10} "
            f"{'GB/s':>7} {'% ceil':>6} {'vs torch fp32':>13} {'vs torch bf16':>13}")
    lines = []
    for layout in dict.fromkeys(r["layout"] for r in rows):
        lines += [f"-- {layout}", head, "-" * len(head)]
        for r in (r for r in rows if r["layout"] == layout):
            start = f"{r['config']:<26} {r['bytes_per_element']:6.2f}  {r['contender']:<18}"
            if r["status"] != "ok":
                lines.append(f"{start} {r['status']}")
                continue

            def x(v):
                return "" if v is None else f"{v:.2f}x"
            pct = "" if r["pct_ceiling"] is None else f"{r['pct_ceiling']:.0f}%"
            lines.append(f"{start} {r['seconds'] * 1e3:10.3f} {r['rate'] / 1e9:7.2f} {pct:>6} "
                         f"{x(r['vs_torch_fp32']):>13} {x(r['vs_torch_bf16']):>13}")
    if any(r["contender"] == CEILING for r in rows):
        lines.append("ceiling: a float32 stream (_C.stream_update) moving the configuration's "
                     "bytes, less the 8-bit blocks' absmax (4 B per 256 elements per buffer, "
                     "each way); % ceil compares GB/s")
    return "\n".join(lines)


def precision_targets(rows) -> list[dict]:
    """The targets, per layout: holds True/False, or None when a needed timing is missing.
    A configuration's figure is its fastest fastopt backend's."""
    out = []
    for layout in dict.fromkeys(r["layout"] for r in rows):
        ok = [r for r in rows if r["layout"] == layout and r["status"] == "ok"]

        def best(cfg):
            fast = [r for r in ok if r["config"] == cfg and r["contender"].startswith("fastopt[")]
            return min(fast, key=lambda r: r["seconds"]) if fast else None

        def add(target, value, holds, detail):
            out.append(dict(layout=layout, target=target, value=value, holds=holds,
                            detail=detail))

        for c in PRECISION_CONFIGS:
            r = best(c.name)
            t = f"{c.name} >= 90% of its own ceiling"
            if r is None or r["pct_ceiling"] is None:
                add(t, None, None, "no fastopt timing" if r is None else "no ceiling")
            else:
                add(t, r["pct_ceiling"], r["pct_ceiling"] >= 90,
                    f"{r['pct_ceiling']:.0f}% ({r['contender']})")
        for cfg, col, want in (("bf16+remainder+bf16 state", "vs_torch_fp32", 1.5),
                               ("bf16+SR+int8", "vs_torch_fp32", 2.0),
                               ("bf16+SR+int8", "vs_torch_bf16", 1.2)):
            r = best(cfg)
            peer = TORCH_FP32 if col == "vs_torch_fp32" else TORCH_BF16
            t = f"{cfg} >= {want}x {peer}"
            if r is None or r[col] is None:
                add(t, None, None, "no fastopt timing" if r is None else f"no {peer} timing")
            else:
                add(t, r[col], r[col] >= want, f"{r[col]:.2f}x ({r['contender']})")
        for c in PRECISION_CONFIGS:
            t = f"{c.name}: numba within 1.5x of cpp"
            sec = {r["contender"]: r["seconds"] for r in ok if r["config"] == c.name}
            if "fastopt[cpp]" not in sec or "fastopt[numba]" not in sec:
                add(t, None, None, "needs both timings")
            else:
                ratio = sec["fastopt[numba]"] / sec["fastopt[cpp]"]
                add(t, ratio, ratio <= 1.5, f"numba takes {ratio:.2f}x cpp's time")
    return out


def format_precision_targets(targets) -> str:
    lines = []
    for layout in dict.fromkeys(t["layout"] for t in targets):
        lines.append(f"targets, {layout}:")
        for t in (t for t in targets if t["layout"] == layout):
            mark = {True: "PASS", False: "MISS", None: "n/a "}[t["holds"]]
            lines.append(f"  {mark}  {t['target']:<52} {t['detail']}")
    return "\n".join(lines)


def header() -> str:
    m = machine()
    extra = ""
    if have("cpp"):
        _C = _native.cpu()
        extra = f", {_C.num_threads()} threads, SIMD {_C.simd_level()}"
    return f"# {m['cpu']}, {m['cores']} cores{extra}, Python {m['python']}"


# -- the command line ------------------------------------------------------------------------------

FAMILIES = ("optim", "norm", "halton", "precision")
#: what runs without --kernels (precision: asked for by name, --kernels precision)
DEFAULT_FAMILIES = ("optim", "norm", "halton")
DEFAULT_SIZES = {"optim": [(1 << 24, 1), (1 << 20, 200), (1 << 24, 200)],
                 "norm": [(1 << 24, 1), (1 << 24, 200)],
                 "halton": [(1 << 20, 8), (1 << 16, 64), (1 << 14, 256)],
                 "precision": list(PRECISION_LAYOUTS)}
QUICK_SIZES = {"optim": [(1 << 20, 1), (1 << 18, 200)],
               "norm": [(1 << 20, 1), (1 << 18, 200)],
               "halton": [(1 << 16, 8)],
               "precision": [(1 << 20, 1), (1 << 20, 200)]}


#: Bytes per element of the largest case, all contenders' arrays together (Adam: params and
#: two states per backend, torch's two modes, the grads, the ceiling's four arrays): a size
#: whose case would not fit in this machine's memory is refused before anything runs.
BYTES_PER_ELEMENT = 128
#: The same for the precision family, per element of a layout: every configuration's params,
#: masters and states on each of three backends (3 x 36 B), the float32 and bf16 grads (6),
#: torch's fp32 and bf16 params and states (18), the five ceilings (48) and the float32 values
#: the params start from (4), plus the 8-bit states' quantisation temporaries while an optimizer
#: is built: measured at 2^22 flat, 200 B/element held and 254 at the peak.
FAMILY_BYTES_PER_ELEMENT = {"precision": 288}


def parse_size(text: str, per_element: int = BYTES_PER_ELEMENT) -> int:
    """'2^20', '1048576' or '1M' -> int, at least 1 and small enough to fit in memory."""
    from .halton import memory_limit

    t = text.strip().lower()
    try:
        if "^" in t:
            base, exp = (int(v) for v in t.split("^"))
            if not (2 <= base <= 1 << 20 and 0 <= exp <= 64):  # no giant power is computed
                raise ValueError
            n = base ** exp
        else:
            mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(t[-1:], 1)
            n = int(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise ValueError(f"--sizes: cannot read {text!r} (use e.g. 2^20, 1048576 or 1M)") from None
    if n < 1:
        raise ValueError(f"--sizes: {text!r} must be at least 1 element")
    if n * per_element > memory_limit():
        raise ValueError(f"--sizes: {text!r} would need about {n * per_element / 2**30:.3g} "
                         f"GiB, more than this machine's {memory_limit() / 2**30:.3g} GiB")
    return n


def check_output(path: str, option: str) -> None:
    """Refuses, before any work, an output path that could not be written at the end."""
    import os

    if not path:
        raise ValueError(f"{option}: the path is empty")
    if os.path.isdir(path):
        raise ValueError(f"{option}: {path} is a directory; name a file in it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{option}: the directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path)
                                                   and not os.access(path, os.W_OK)):
        raise ValueError(f"{option}: {path} cannot be written (permission denied)")


def check_plot_path(path: str) -> None:
    check_output(path, "--plot")
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from None
    kinds = FigureCanvasBase.get_supported_filetypes()
    ext = path.rpartition(".")[2].lower() if "." in path.rpartition("/")[2] else ""
    if ext not in kinds:
        raise ValueError(f"--plot: {path} must end in one of "
                         f"{', '.join('.' + k for k in sorted(kinds))}")


def plan(kernels, sizes=None, quick=False, rules=DEFAULT_RULES):
    """[(family, args)] to build lazily, one case at a time (big cases are not all in memory).
    Optimizer cases run for each of ``rules``; precision cases are Adam's (all configurations
    of a layout in one case)."""
    table = QUICK_SIZES if quick else DEFAULT_SIZES
    out = []
    for fam in kernels:
        if sizes is None:
            specs = table[fam]
        elif fam == "halton":
            specs = [(n, 8) for n in sizes]
        else:
            specs = [(n, count) for n in sizes for count in (1, 200) if n >= 200 * 9 or count == 1]
        if fam == "optim":
            specs = [(rule, *s) for rule in rules for s in specs]
        out += [(fam, s) for s in specs]
    return out


def build(family, spec, backends, peers=True) -> Case:
    if family == "optim":
        return optim_case(*spec, backends=backends, peers=peers)
    if family == "norm":
        return norm_case(*spec, backends=backends, peers=peers)
    if family == "precision":
        return precision_case(*spec, backends=backends, peers=peers)
    return halton_case(*spec, backends=backends, peers=peers)


def plot(rows, path, fmt=None):
    """A PNG (or ``fmt``): one panel per case, a bar per contender (GB/s or values/s), the
    ceiling as a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from e
    cases = list(dict.fromkeys(r["case"] for r in rows))
    cols = min(3, len(cases))
    nrows = -(-len(cases) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.6 * nrows), squeeze=False)
    for ax, case in zip(axes.flat, cases):
        rs = [r for r in rows if r["case"] == case and r["status"] == "ok" and r["contender"] != CEILING]
        ceil = [r for r in rows if r["case"] == case and r["contender"] == CEILING]
        scale, unit = (1e9, "GB/s") if (rs and rs[0]["unit"] == "GB/s") else (1.0, "values/s")
        colors = ["tab:blue" if r["contender"].startswith("fastopt") else "tab:gray" for r in rs]
        ax.bar(range(len(rs)), [r["rate"] / scale for r in rs], color=colors)
        ax.set_xticks(range(len(rs)), [r["contender"] for r in rs], rotation=35, ha="right",
                      fontsize=7)
        if ceil:
            ax.axhline(ceil[0]["rate"] / scale, color="tab:red", ls="--", lw=1,
                       label=f"same-run ceiling {ceil[0]['rate'] / scale:.1f} {unit}")
            ax.legend(fontsize=7, loc="upper right")
        if unit == "values/s":
            ax.set_yscale("log")
        ax.set_ylabel(unit)
        ax.set_title(case, fontsize=9)
    for ax in list(axes.flat)[len(cases):]:
        ax.axis("off")
    fig.suptitle(header().lstrip("# "), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # the title's own strip
    fig.savefig(path, dpi=110, format=fmt)
    plt.close(fig)


def _progress(total):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="fastopt bench", unit="case", leave=False)
    except ImportError:
        return None


def cli(args) -> int:
    """Run ``fastopt bench``; exit status 1 when any kernel FAILED its check."""
    import json
    import sys

    from .info import info

    # every option is checked before any work, outputs included: a long run must never end in
    # an error that loses its results
    kernels = (list(dict.fromkeys(args.kernels.split(","))) if args.kernels
               else list(DEFAULT_FAMILIES))
    bad = [k for k in kernels if k not in FAMILIES]
    if bad:
        raise ValueError(f"--kernels: unknown {', '.join(map(repr, bad))}; choose from "
                         f"{', '.join(FAMILIES)}")
    wanted = list(dict.fromkeys(args.backends.split(","))) if args.backends else list(CPU_BACKENDS)
    bad = [b for b in wanted if b not in CPU_BACKENDS]
    if bad:
        raise ValueError(f"--backends: unknown {', '.join(map(repr, bad))}; choose from "
                         f"{', '.join(CPU_BACKENDS)}")
    backends = [b for b in wanted if have(b)]
    # the precision family times the NumPy reference only when --backends names it
    precision = precision_backends(backends if args.backends else None)
    rules = list(dict.fromkeys(args.rules.split(","))) if args.rules else list(DEFAULT_RULES)
    bad = [r for r in rules if r not in _rules.RULES]
    if bad:
        raise ValueError(f"--rules: unknown {', '.join(map(repr, bad))}; choose from "
                         f"{', '.join(_rules.RULES)}")
    per_element = max(FAMILY_BYTES_PER_ELEMENT.get(k, BYTES_PER_ELEMENT) for k in kernels)
    sizes = [parse_size(s, per_element) for s in args.sizes.split(",")] if args.sizes else None
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.json is not None:
        check_output(args.json, "--json")
    if args.plot is not None:
        check_plot_path(args.plot)
    if args.json is not None and args.plot is not None and (
            os.path.abspath(args.json) == os.path.abspath(args.plot)):
        raise ValueError("--json and --plot name the same file")
    todo = plan(kernels, sizes, args.quick, rules)
    repeats = args.repeats or (5 if args.quick else 11)
    budget = 4.0 if args.quick else 20.0
    bar = _progress(len(todo))
    rows = []
    for fam, spec in todo:
        if bar is None:
            print(f"  running {fam} {spec} ...", file=sys.stderr, flush=True)
        case = build(fam, spec, precision if fam == "precision" else backends,
                     peers=not args.no_peers)
        rows += (run_precision_case if fam == "precision" else run_case)(
            case, repeats=repeats, budget_s=budget)
        del case
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    print(header())
    skipped = [b for b in wanted if not have(b)]
    for b in skipped:
        print(f"# backend {b} skipped: {_dispatch.unavailable_reason(b)}")
    for fam in kernels:
        traffic = ", ".join(f"{r} {optim_traffic(r)[0]}" for r in rules)
        title = {"optim": f"optimizer steps (B/element: {traffic}), ceiling = a stream that "
                          "reads and writes as many arrays",
                 "norm": "global norm (4 B/element, float64 accumulation), ceiling = stream read",
                 "halton": "scrambled Halton (compute-bound: values/s)",
                 "precision": "Adam (AdamW, nonfinite='ignore') in compact storage, B/element "
                              "per configuration, each against a ceiling moving its bytes"}[fam]
        print(f"\n== {fam}: {title}")
        fam_rows = [r for r in rows if r["family"] == fam]
        if fam == "precision":
            print(format_precision_table(fam_rows))
            print(format_precision_targets(precision_targets(fam_rows)))
        else:
            print(format_table(fam_rows))
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"\n{len(rows) - len(failed)} timed, {len(failed)} FAILED")
    if args.json is not None:
        text = json.dumps({"machine": machine(), "info": info(), "rows": rows,
                           "args": {k: v for k, v in vars(args).items() if k != "handler"}},
                          indent=1)
        _write(args.json, "--json", lambda tmp: _write_text(tmp, text))
    if args.plot is not None:
        fmt = args.plot.rpartition(".")[2].lower()
        _write(args.plot, "--plot", lambda tmp: plot(rows, tmp, fmt=fmt))
    return 1 if failed else 0


def _write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def _write(path, option, write):
    """Writes through a temporary file beside ``path``: a failed write (a full disk) leaves no
    half-written file, and is one line naming the option (the tables above are printed)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise ValueError(f"{option}: cannot write {path} ({e.strerror or e})") from None
    print(f"wrote {path}")
