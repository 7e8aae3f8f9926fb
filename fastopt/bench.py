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


def header() -> str:
    m = machine()
    extra = ""
    if have("cpp"):
        _C = _native.cpu()
        extra = f", {_C.num_threads()} threads, SIMD {_C.simd_level()}"
    return f"# {m['cpu']}, {m['cores']} cores{extra}, Python {m['python']}"


# -- the command line ------------------------------------------------------------------------------

FAMILIES = ("optim", "norm", "halton")
DEFAULT_SIZES = {"optim": [(1 << 24, 1), (1 << 20, 200), (1 << 24, 200)],
                 "norm": [(1 << 24, 1), (1 << 24, 200)],
                 "halton": [(1 << 20, 8), (1 << 16, 64), (1 << 14, 256)]}
QUICK_SIZES = {"optim": [(1 << 20, 1), (1 << 18, 200)],
               "norm": [(1 << 20, 1), (1 << 18, 200)],
               "halton": [(1 << 16, 8)]}


#: Bytes per element of the largest case, all contenders' arrays together (Adam: params and
#: two states per backend, torch's two modes, the grads, the ceiling's four arrays): a size
#: whose case would not fit in this machine's memory is refused before anything runs.
BYTES_PER_ELEMENT = 128


def parse_size(text: str) -> int:
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
    if n * BYTES_PER_ELEMENT > memory_limit():
        raise ValueError(f"--sizes: {text!r} would need about {n * BYTES_PER_ELEMENT / 2**30:.3g} "
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
    Optimizer cases run for each of ``rules``."""
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
    kernels = list(dict.fromkeys(args.kernels.split(","))) if args.kernels else list(FAMILIES)
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
    rules = list(dict.fromkeys(args.rules.split(","))) if args.rules else list(DEFAULT_RULES)
    bad = [r for r in rules if r not in _rules.RULES]
    if bad:
        raise ValueError(f"--rules: unknown {', '.join(map(repr, bad))}; choose from "
                         f"{', '.join(_rules.RULES)}")
    sizes = [parse_size(s) for s in args.sizes.split(",")] if args.sizes else None
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
        case = build(fam, spec, backends, peers=not args.no_peers)
        rows += run_case(case, repeats=repeats, budget_s=budget)
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
                 "halton": "scrambled Halton (compute-bound: values/s)"}[fam]
        print(f"\n== {fam}: {title}")
        print(format_table([r for r in rows if r["family"] == fam]))
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
