"""The source document's tuning loop, end to end, on scikit-learn's bundled handwritten digits.

    PYTHONPATH=. python examples/tune_digits.py [--trials 16] [--steps 1500] [--workers 2]
                                                 [--out DIR]

1. A quasi-random search (``fastopt.QuasiRandomSearch``, scrambled and shifted Halton) over the
   learning rate, 1 - beta1 and the weight decay of ``fastopt.AdamW`` training a small NumPy MLP
   (64-128-10, forward and backward by hand) with a linear warmup + cosine schedule. Trials run
   in parallel worker processes; each worker is given only its trial index and computes the
   trial's hyperparameters itself (``search.trial(i)`` depends on the space, seed and i alone).
2. Every trial has a ``fastopt.GradNormMonitor`` on. The validation error is measured every
   ``--eval-every`` steps and appended, with the batch loss and gradient norm, to one shared
   ``results.jsonl`` by ``search.record`` (safe with many worker processes writing at once).
3. The document's checks, read back from that file by ``fastopt.study`` and written as the
   study report (``report/index.html``, the page ``fastopt report`` makes): the best trial by
   its best step (retrospective checkpoint selection), where in training that step fell, whether
   the best trials sit at the edge of the search space, "have we sampled enough?", axis,
   isolation and training-curve plots, and the gradient norms.
4. The best configuration is trained again with clipping at the 90th percentile of its
   gradient norms (the monitor's ``suggested_threshold``), and once more with a threshold set
   deliberately too low, so that the monitor's "more than half of the steps clipped" warning
   shows.

Writes to ``--out`` (default ``tune_digits_out``): ``trials.csv``, ``results.jsonl``,
``report/index.html`` with ``report/findings.json``, and ``grad_norms.png`` (the final clipped
run's gradient norm curve and histogram, from ``GradNormMonitor.plot``). Needs scikit-learn,
matplotlib and jinja2 (``pip install 'fastopt[examples]'``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np

SPACE = {
    "learning_rate": {"min": 1e-4, "max": 1e-1, "scaling": "log"},
    "one_minus_beta1": {"min": 1e-2, "max": 0.5, "scaling": "log"},
    "weight_decay": {"min": 1e-5, "max": 1e-1, "scaling": "log"},
}
SEARCH_SEED = 0
HIDDEN = 128


# -- data and model ---------------------------------------------------------------------------

def load_data(seed=0):
    """Digits (1797 8x8 images, 10 classes) scaled to [0, 1]: train 1200 / val 300 / test 297."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(y))
    tr, va, te = idx[:1200], idx[1200:1500], idx[1500:]
    return (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te])


def init_params(seed, n_in=64, hidden=HIDDEN, n_out=10):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n_in, hidden)) * math.sqrt(2.0 / n_in)).astype(np.float32),
            np.zeros(hidden, np.float32),
            (rng.standard_normal((hidden, n_out)) * math.sqrt(1.0 / hidden)).astype(np.float32),
            np.zeros(n_out, np.float32)]


def forward(params, x):
    w1, b1, w2, b2 = params
    h = np.maximum(x @ w1 + b1, 0.0)
    return h, h @ w2 + b2


def loss_and_grads(params, x, y):
    """Mean softmax cross-entropy and its gradients (written out by hand)."""
    w1, b1, w2, b2 = params
    h, z = forward(params, x)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(p[np.arange(n), y] + 1e-12).mean())
    dz = p
    dz[np.arange(n), y] -= 1.0
    dz /= n
    dh = (dz @ w2.T) * (h > 0)
    return loss, [x.T @ dh, dh.sum(axis=0), h.T @ dz, dz.sum(axis=0)]


def error_rate(params, x, y) -> float:
    return float((forward(params, x)[1].argmax(axis=1) != y).mean())


# -- one training run -------------------------------------------------------------------------

def train(hp, *, steps, batch=64, eval_every=25, max_grad_norm=None, seed=0, window=100,
          record=None):
    """Train with fastopt.AdamW; returns the validation curve, the best checkpoint, the monitor
    and any ClippingWarning messages. ``record(step, metrics)``, if given, is called at every
    evaluation with the validation error, the last batch's loss and gradient norm."""
    import fastopt

    (xtr, ytr), (xva, yva), _ = load_data()
    params = init_params(seed)
    monitor = fastopt.GradNormMonitor(window=window)
    warmup = max(1, steps // 20)
    opt = fastopt.AdamW(params, lr=fastopt.schedules.warmup_cosine(hp["learning_rate"], warmup,
                                                                    steps),
                        beta1=1.0 - hp["one_minus_beta1"], weight_decay=hp["weight_decay"],
                        max_grad_norm=max_grad_norm, monitor=monitor)
    rng = np.random.default_rng(seed + 1)
    curve, best = [], (math.inf, -1, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", fastopt.ClippingWarning)
        for t in range(steps):
            i = rng.integers(0, len(ytr), batch)
            loss, grads = loss_and_grads(params, xtr[i], ytr[i])
            opt.step(grads)
            if (t + 1) % eval_every == 0 or t + 1 == steps:
                err = error_rate(params, xva, yva)
                curve.append((t + 1, err))
                if record is not None:
                    record(t + 1, {"val_error": err, "train_loss": loss,
                                   "grad_norm": float(monitor.norms[-1])})
                if err < best[0]:  # retrospective checkpoint selection: keep the best step
                    best = (err, t + 1, [p.copy() for p in params])
    msgs = [str(w.message) for w in caught if issubclass(w.category, fastopt.ClippingWarning)]
    return dict(curve=curve, best_err=best[0], best_step=best[1], checkpoint=best[2],
                final_err=curve[-1][1], monitor=monitor, warnings=msgs)


def run_trial(i, steps, eval_every, results_path):
    """A worker: computes trial i's hyperparameters itself, trains, appends its evaluations to
    the shared results file (``search.record``: safe with many writers), reports (picklable)."""
    import fastopt

    search = fastopt.QuasiRandomSearch(SPACE, seed=SEARCH_SEED)
    hp = search.trial(i)
    t0 = time.perf_counter()
    r = train(hp, steps=steps, eval_every=eval_every, window=min(100, max(10, steps // 5)),
              record=lambda step, metrics: search.record(results_path, i, step, metrics))
    mon = r.pop("monitor")
    r.pop("checkpoint")
    return dict(trial=i, hp=hp, seconds=time.perf_counter() - t0, norms=mon.norms,
                p90=mon.suggested_threshold(90), **r)


# -- main -------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", default="tune_digits_out")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()

    # 1. the search: each worker gets only its trial index
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per worker process
    import multiprocessing as mp

    results_path = os.path.join(args.out, "results.jsonl")
    if os.path.exists(results_path):
        os.remove(results_path)  # the workers append to it
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        results = list(pool.map(run_trial, range(args.trials), [args.steps] * args.trials,
                                [args.eval_every] * args.trials,
                                [results_path] * args.trials))
    best = min(results, key=lambda r: (r["best_err"], r["trial"]))

    print(f"quasi-random search: {args.trials} trials x {args.steps} steps "
          f"(AdamW, warmup + cosine, {args.workers} worker processes)")
    head = (f"{'trial':>5} {'lr':>9} {'1-beta1':>8} {'wd':>9} {'best val err':>12} "
            f"{'best step':>9} {'final err':>9} {'p90 |g|':>8}")
    print(head)
    print("-" * len(head))
    with open(os.path.join(args.out, "trials.csv"), "w") as f:
        f.write("trial,learning_rate,one_minus_beta1,weight_decay,best_val_error,best_step,"
                "final_val_error,p90_grad_norm\n")
        for r in results:
            hp = r["hp"]
            mark = "  <- best" if r is best else ""
            print(f"{r['trial']:5d} {hp['learning_rate']:9.3g} {hp['one_minus_beta1']:8.3g} "
                  f"{hp['weight_decay']:9.3g} {r['best_err']:12.4f} {r['best_step']:9d} "
                  f"{r['final_err']:9.4f} {r['p90']:8.3g}{mark}")
            f.write(f"{r['trial']},{hp['learning_rate']!r},{hp['one_minus_beta1']!r},"
                    f"{hp['weight_decay']!r},{r['best_err']},{r['best_step']},"
                    f"{r['final_err']},{r['p90']!r}\n")
    hp = best["hp"]
    print(f"\nbest configuration: trial {best['trial']}: learning_rate={hp['learning_rate']:.4g}, "
          f"beta1={1 - hp['one_minus_beta1']:.4g}, weight_decay={hp['weight_decay']:.4g}; "
          f"validation error {best['best_err']:.4f} at step {best['best_step']}")

    # 2. the document's checks, read back from the results file: the study report
    from fastopt import report, study

    res = study.load_results(results_path, space=SPACE)
    findings = study.analyse(res, "val_error", space=SPACE)
    page = report.write_report(res, findings, os.path.join(args.out, "report"))
    print("study report (fastopt.study):")
    for line in findings["findings"]:
        print(f"  {line}")

    # 3. final run: clip at the 90th percentile of the best trial's (unclipped) norms
    import fastopt

    window = min(100, max(10, args.steps // 5))
    thr = best["p90"]
    final = train(hp, steps=args.steps, eval_every=args.eval_every, max_grad_norm=thr,
                  window=window)
    _, _, (xte, yte) = load_data()
    test_err = error_rate(final["checkpoint"], xte, yte)
    mon = final["monitor"]
    print(f"\nfinal run, max_grad_norm = p90 of the best trial's norms = {thr:.4g}: "
          f"{mon.fraction_clipped():.0%} of steps clipped; best validation error "
          f"{final['best_err']:.4f} at step {final['best_step']}; test error of that "
          f"checkpoint {test_err:.4f}")
    for m in final["warnings"]:
        print(f"ClippingWarning: {m}")
    if final["warnings"]:
        print("  (the norms shrink as training converges, so a threshold at the whole run's p90 "
              "clips most of the early steps: see grad_norms.png)")
    mon.plot(os.path.join(args.out, "grad_norms.png"),
             title=f"best config (trial {best['trial']}), clipped at the p90 threshold {thr:.3g}")

    # 4. a threshold set far too low: the monitor warns
    low = 0.1 * thr
    bad = train(hp, steps=args.steps, eval_every=args.eval_every, max_grad_norm=low,
                window=window)
    print(f"\ndeliberately too low a threshold ({low:.3g}, a tenth of the p90): "
          f"{bad['monitor'].fraction_clipped():.0%} of steps clipped; best validation error "
          f"{bad['best_err']:.4f}")
    for m in bad["warnings"][:1]:
        print(f"ClippingWarning: {m}")
    if not bad["warnings"]:
        print("(no ClippingWarning: the run was shorter than the monitor's window)")

    print(f"\nwrote {args.out}/trials.csv, results.jsonl, grad_norms.png and the study report "
          f"{page} in {time.perf_counter() - t0:.1f} s (fastopt {fastopt.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
