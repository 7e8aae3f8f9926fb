"""fastopt.torch under torch.distributed, on the CPU with gloo: FSDP2 (DTensor params), DDP,
ZeroRedundancyOptimizer, and ``fastopt.global_norm(..., group=...)``.

No launcher: :func:`run_ranks` starts the ranks itself (``multiprocessing`` "spawn", one free
port, ``init_process_group("gloo")``) and brings back each rank's return value or its traceback.
A rank that has not finished by the deadline is killed, with every other, and the test fails
saying which ranks hung: a collective that one rank never calls fails the test, it never hangs
CI. Starting a rank (importing torch) costs seconds on a 2-core CI machine, so, as in
tests/test_mpi.py, one launch per world size runs the regular checks in turn (a check that
fails on every rank is recorded and the next one runs; one that hangs fails the launch), and
each check is reported as its own test; the checks meant to fail or hang get launches of their
own.

Every sharded result is checked against the same model trained unsharded in this process with
the same optimizer class, the same hyperparameters and the full global batches.
"""
import contextlib
import math
import multiprocessing
import os
import pickle
import re
import socket
import tempfile
import time
import traceback
import warnings
from datetime import timedelta

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

if not dist.is_available():
    pytest.skip("torch.distributed is not available in this torch build",
                allow_module_level=True)
if not dist.is_gloo_available():
    pytest.skip("torch.distributed has no gloo backend in this torch build",
                allow_module_level=True)

import fastopt  # noqa: E402
import fastopt.torch as fot  # noqa: E402
from torch import nn  # noqa: E402

#: float32 agreement between a sharded run and the unsharded one: the only differences are the
#: order of float32 sums (per-rank batch means averaged by the collective vs one mean over the
#: global batch), a few ulps per step.
F32 = dict(rtol=1e-5, atol=1e-6)
GRACE_S = 5  # after one rank fails, how long the others get to finish before they are killed


# ------------------------------------------------------------------------------------------------
# The harness
# ------------------------------------------------------------------------------------------------
class RanksFailed(AssertionError):
    """Some rank raised, died, or did not finish in time."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _child_env():
    """The environment the ranks start with (spawn copies it when a process starts): one
    thread each, since up to 3 ranks share CI's 2 cores."""
    new = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _rank_main(fn, rank, world, port, outdir, args, pg_timeout_s):
    """One rank: join the group, run ``fn``, leave, write ("ok", value) or ("error", text)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=pg_timeout_s))
        try:
            result = ("ok", fn(rank, world, *args))
        finally:
            dist.destroy_process_group()
        payload = pickle.dumps(result)
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        payload = pickle.dumps(("error", traceback.format_exc()))
    tmp = os.path.join(outdir, f"rank{rank}.tmp")
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, os.path.join(outdir, f"rank{rank}.pkl"))  # appears whole or not at all


def run_ranks(fn, world, *args, timeout=120):
    """Run ``fn(rank, world, *args)`` on ``world`` gloo ranks; return their values, by rank.

    ``fn`` must be a module-level function (it is pickled into each spawned process). Raises
    :class:`RanksFailed` with each failed rank's traceback, or the ranks that hung: every rank
    still running ``timeout`` seconds after the start, or ``GRACE_S`` seconds after another
    rank failed, is killed."""
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fastopt-ranks-") as outdir:
        procs = [ctx.Process(target=_rank_main, name=f"fastopt-rank{r}", daemon=True,
                             args=(fn, r, world, port, outdir, args, timeout + 60))
                 for r in range(world)]
        results, lost = {}, {}
        hung, failed_at = [], None
        try:
            with _child_env():
                for p in procs:
                    p.start()
            deadline = t0 + timeout
            while True:
                for r, p in enumerate(procs):
                    if r in results or r in lost:
                        continue
                    alive = p.is_alive()  # read before the file: a rank writes, then exits
                    path = os.path.join(outdir, f"rank{r}.pkl")
                    if os.path.exists(path):
                        p.join(10)
                        with open(path, "rb") as f:
                            results[r] = pickle.load(f)
                    elif not alive:
                        lost[r] = p.exitcode
                if len(results) + len(lost) == world:
                    break
                now = time.monotonic()
                if failed_at is None and (lost or any(s == "error" for s, _ in results.values())):
                    failed_at = now
                if now >= deadline or (failed_at is not None and now >= failed_at + GRACE_S):
                    hung = [r for r in range(world) if r not in results and r not in lost]
                    break
                time.sleep(0.05)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
            for p in procs:
                p.join(10)
    errors = [f"rank {r} raised:\n{v}" for r, (s, v) in sorted(results.items()) if s == "error"]
    errors += [f"rank {r} died (exit code {code}) without a result" for r, code in lost.items()]
    if hung:
        waited = time.monotonic() - t0
        why = (f"still running {GRACE_S} s after another rank failed (probably waiting in a "
               "collective it will never complete)" if failed_at is not None and errors
               else f"not finished after {timeout} s")
        errors.append(f"rank(s) {hung} of {world} hung: {why}; killed after {waited:.0f} s")
    if errors:
        raise RanksFailed(f"{getattr(fn, '__name__', fn)} on {world} ranks failed:\n"
                          + "\n".join(errors))
    return [results[r][1] for r in range(world)]


# ------------------------------------------------------------------------------------------------
# The harness, tested
# ------------------------------------------------------------------------------------------------
def _raise_on_rank1(rank, world):
    if rank == 1:
        raise ValueError("deliberate failure on rank 1 (harness check)")
    dist.barrier()  # waits for rank 1, which never comes: the harness must not wait for it
    return rank


def _collective_on_rank0_only(rank, world):
    if rank == 0:
        dist.all_reduce(torch.ones(1))  # rank 1 never joins it
    else:
        time.sleep(3600)
    return rank


@pytest.mark.slow
def test_harness_reports_the_child_traceback():
    t0 = time.monotonic()
    with pytest.raises(RanksFailed) as info:
        run_ranks(_raise_on_rank1, 2, timeout=120)
    msg = str(info.value)
    assert "rank 1 raised" in msg
    assert "Traceback (most recent call last)" in msg
    assert "_raise_on_rank1" in msg and "deliberate failure on rank 1" in msg
    # rank 0, stuck in (or failed out of) the barrier, did not hold the test to its deadline:
    # it was killed GRACE_S after rank 1's failure
    assert time.monotonic() - t0 < 90
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("fastopt-rank")]


@pytest.mark.slow
def test_harness_fails_a_missing_collective_as_hung():
    t0 = time.monotonic()
    with pytest.raises(RanksFailed, match="hung") as info:
        run_ranks(_collective_on_rank0_only, 2, timeout=20)
    elapsed = time.monotonic() - t0
    assert 20 <= elapsed < 20 + 30, elapsed
    assert re.search(r"rank\(s\) \[0, 1\] of 2 hung", str(info.value)), str(info.value)
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("fastopt-rank")]


# ------------------------------------------------------------------------------------------------
# The model, the data, the unsharded reference
# ------------------------------------------------------------------------------------------------
SIZES = (7, 13, 5, 3)  # odd sizes: FSDP2's dim-0 shards are uneven on 2 and 3 ranks
BATCH = 12  # global batch rows, split evenly over 2 or 3 ranks
STEPS = 20


def _mlp():
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(SIZES, SIZES[1:])):
        layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i < len(SIZES) - 2 else [])
    return nn.Sequential(*layers)


def _data(steps):
    g = torch.Generator().manual_seed(1234)
    return (torch.randn(steps, BATCH, SIZES[0], generator=g),
            torch.randn(steps, BATCH, SIZES[-1], generator=g))


def _rows(rank, world):
    n = BATCH // world
    return slice(rank * n, (rank + 1) * n)


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)  # the mean over the rows given


def _train_unsharded(cls, kw, steps, *, nan_at=None, monitor=None):
    """The reference: one process, full batches. ``nan_at=(step, param index, index)`` puts a
    NaN into that gradient element after backward. Returns the params after every step, and
    what each step() returned."""
    model = _mlp()
    opt = cls(model.parameters(), **kw, **({"monitor": monitor} if monitor is not None else {}))
    xs, ys = _data(steps)
    history, returned = [], []
    for t in range(steps):
        opt.zero_grad()
        _loss(model, xs[t], ys[t]).backward()
        if nan_at is not None and nan_at[0] == t:
            with torch.no_grad():
                list(model.parameters())[nan_at[1]].grad[nan_at[2]] = float("nan")
        with warnings.catch_warnings():  # the NaN step's skip warning (asserted per rank)
            warnings.simplefilter("ignore", RuntimeWarning)
            returned.append(opt.step())
        history.append([p.detach().clone() for p in model.parameters()])
    return history, returned


def _shard_fsdp2(model, mesh):
    from torch.distributed.fsdp import fully_shard

    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _full(p):
    p = p.detach()
    return (p.full_tensor() if hasattr(p, "full_tensor") else p).clone()


# ------------------------------------------------------------------------------------------------
# FSDP2: the same trajectory as unsharded training
# ------------------------------------------------------------------------------------------------
FSDP_CASES = {
    # name: (optimizer class, hyperparameters)
    "torch.optim.AdamW": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.01)),  # the control
    # 0.8, not 1.0: the global norm goes above it at 3 of the 20 steps (by 0.03 or more), so
    # the fused clip factor is exercised; at 1.0 no step would be clipped
    "AdamW": (fot.AdamW, dict(lr=1e-2, weight_decay=0.01, max_grad_norm=0.8)),
    "Adam": (fot.Adam, dict(lr=1e-2)),
    "SGD": (fot.SGD, dict(lr=1e-2, momentum=0.9)),
    # compact state on DTensors: bfloat16 moments, rounded to nearest (elementwise, so the
    # shards' rounding is the unsharded run's)
    "AdamW bf16 state": (fot.AdamW, dict(lr=1e-2, weight_decay=0.01, state_dtype="bfloat16")),
}


def _fsdp2_train(rank, world):
    """Each case: a fresh FSDP2 model, STEPS steps on this rank's rows of each global batch;
    returns the full params (or the case's traceback: every rank runs the same code, so a
    refusal happens on all of them and the next case can still run)."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    steps = STEPS
    xs, ys = _data(steps)
    rows = _rows(rank, world)
    out = {}
    for name, (cls, kw) in FSDP_CASES.items():
        try:
            model = _shard_fsdp2(_mlp(), mesh)
            opt = cls(model.parameters(), **kw)
            for t in range(steps):
                opt.zero_grad()
                _loss(model, xs[t, rows], ys[t, rows]).backward()
                opt.step()
            out[name] = ("ok", [_full(p) for p in model.parameters()])
        except Exception:  # noqa: BLE001
            out[name] = ("error", traceback.format_exc())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", list(FSDP_CASES))
def test_fsdp2_matches_unsharded(launches, world, name):
    per_rank = _results(launches, world, "fsdp2")
    cls, kw = FSDP_CASES[name]
    monitor = fastopt.GradNormMonitor() if "max_grad_norm" in kw else None
    history, returned = _train_unsharded(cls, kw, STEPS, monitor=monitor)
    expected = history[-1]
    if monitor is not None:  # the reference clips some steps, and none is a near-tie
        assert 0 < monitor.clipped.sum() < STEPS, monitor.clipped
        assert min(abs(n - kw["max_grad_norm"]) for n in returned) > 1e-3
    for rank, res in enumerate(per_rank):
        status, value = res[name]
        assert status == "ok", f"{name} under FSDP2 on rank {rank} of {world} raised:\n{value}"
        assert [tuple(v.shape) for v in value] == [tuple(e.shape) for e in expected]
        for i, (got, want) in enumerate(zip(value, expected)):
            torch.testing.assert_close(got, want, **F32,
                                       msg=lambda m: f"{name}, rank {rank}, param {i}: {m}")
    first = per_rank[0][name][1]
    for rank, res in enumerate(per_rank[1:], 1):  # every rank gathered the same full params
        for a, b in zip(first, res[name][1]):
            assert torch.equal(a, b), f"{name}: rank {rank}'s full params differ from rank 0's"
    # it trained: the params moved from their initial values
    init = [p.detach() for p in _mlp().parameters()]
    assert max((a - b).abs().max().item() for a, b in zip(first, init)) > 1e-3


# ------------------------------------------------------------------------------------------------
# FSDP2 with stochastic rounding: reproducible bits, and the unsharded run's trajectory up to
# the rounding noise (each shard's random streams are keyed by its local element index)
# ------------------------------------------------------------------------------------------------
SR_KW = dict(lr=1e-2, weight_decay=0.01, state_dtype="bfloat16", stochastic_rounding=True,
             seed=11)


def _fsdp2_sr(rank, world):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    xs, ys = _data(STEPS)
    rows = _rows(rank, world)
    runs = []
    for _ in range(2):  # twice, from scratch: the same bits
        model = _shard_fsdp2(_mlp(), mesh)
        params = list(model.parameters())
        opt = fot.AdamW(params, **SR_KW)
        for t in range(STEPS):
            opt.zero_grad()
            _loss(model, xs[t, rows], ys[t, rows]).backward()
            opt.step()
        runs.append(dict(params=[_full(p) for p in params],
                         exp_avg=[_full(opt.state[p]["exp_avg"]) for p in params]))
    return runs


@pytest.mark.slow
def test_fsdp2_stochastic_rounding_is_reproducible_and_tracks_unsharded(launches):
    per_rank = _results(launches, 2, "fsdp2_sr")
    history = _train_unsharded(fot.AdamW, SR_KW, STEPS)[0]
    plain = _train_unsharded(fot.AdamW, dict(lr=1e-2, weight_decay=0.01), STEPS)[0][-1]
    for rank, (a, b) in enumerate(per_rank):
        assert all(m.dtype == torch.bfloat16 for m in a["exp_avg"])
        for x, y in zip(a["params"] + a["exp_avg"], b["params"] + b["exp_avg"]):
            assert torch.equal(x, y), f"rank {rank}: two runs gave different bits"
        for x, y in zip(a["params"], per_rank[0][0]["params"]):
            assert torch.equal(x, y), f"rank {rank}'s full params differ from rank 0's"
        # the sharded run's rounding differs from the unsharded one's, but only by the noise
        # stochastic rounding adds: both stay as close to float32 state's trajectory
        for i, (x, y, z) in enumerate(zip(a["params"], history[-1], plain)):
            assert (x - z).abs().max() < 2e-3 and (y - z).abs().max() < 2e-3, i
            assert (x - z).abs().max() < 4 * (y - z).abs().max() + 1e-4, i
    assert any(not torch.equal(x, y) for x, y in zip(per_rank[0][0]["params"], history[-1]))


# ------------------------------------------------------------------------------------------------
# HSDP (FSDP2 on a 2-D mesh: Replicate() x Shard(0)): replicated shards counted once in the norm
# ------------------------------------------------------------------------------------------------
HSDP_KW = dict(lr=1e-2, weight_decay=0.01, max_grad_norm=0.8)


def _hsdp_train(rank, world):
    """FSDP2's hybrid sharding: the mesh's first dimension (2) replicates, its second
    (world / 2) shards. Returns the norms step() returned, the full params, and the params'
    placements."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
    model = _shard_fsdp2(_mlp(), mesh)
    params = list(model.parameters())
    opt = fot.AdamW(params, **HSDP_KW)
    xs, ys = _data(STEPS)
    rows = _rows(rank, world)
    norms = []
    for t in range(STEPS):
        opt.zero_grad()
        _loss(model, xs[t, rows], ys[t, rows]).backward()
        norms.append(float(opt.step()).hex())
    return dict(norms=norms, final=[_full(p) for p in params],
                placements=[tuple(str(pl) for pl in p.placements) for p in params])


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_hsdp_norm_counts_replicas_once_and_matches_unsharded(launches, world):
    per_rank = _results(launches, world, "hsdp")
    history, returned = _train_unsharded(fot.AdamW, HSDP_KW, STEPS)
    for rank, res in enumerate(per_rank):
        assert all(pl == ("R", "S(0)") for pl in res["placements"]), res["placements"]
        assert res["norms"] == per_rank[0]["norms"], f"rank {rank}'s norms differ from rank 0's"
        # the norm of the whole gradient: a replicated shard counted twice would give sqrt(2)x
        for t, (got, want) in enumerate(zip(res["norms"], returned)):
            assert math.isclose(float.fromhex(got), want, rel_tol=1e-5), (rank, t, got, want)
        for i, (got, want) in enumerate(zip(res["final"], history[-1])):
            torch.testing.assert_close(got, want, **F32,
                                       msg=lambda m: f"HSDP rank {rank}, param {i}: {m}")


# ------------------------------------------------------------------------------------------------
# FSDP2: clip and non-finite decisions are global, the same on every rank
# ------------------------------------------------------------------------------------------------
NAN_STEP, NAN_RANK, NAN_PARAM = 3, 1, 0  # rank 1's local shard of the first weight, at step 3
#: 0.65: the global norm is above it at steps 0, 1 and 3 and below at 2 (by more than 1e-3);
#: at step 1 it is above while each rank's own shard norm is below (0.35 and 0.57), and at
#: step 3 rank 0's finite shard norm (0.73) is above: a rank deciding from its own shard would
#: decide differently from the global rule.
CLIP_KW = dict(lr=1e-2, weight_decay=0.01, max_grad_norm=0.65)


def _local_norm(params):
    """This rank's own shard norm (float64), what a rank-local clip would look at."""
    return math.sqrt(sum(float((p.grad.to_local().double() ** 2).sum()) for p in params))


def _fsdp2_nan(rank, world):
    from torch.distributed.device_mesh import init_device_mesh

    steps = STEPS
    mesh = init_device_mesh("cpu", (world,))
    model = _shard_fsdp2(_mlp(), mesh)
    params = list(model.parameters())
    monitor = fastopt.GradNormMonitor(threshold=CLIP_KW["max_grad_norm"])
    opt = fot.AdamW(params, **CLIP_KW, monitor=monitor)
    xs, ys = _data(steps)
    rows = _rows(rank, world)
    norms, local_norms, nan_index, local_changed, after_nan = [], [], None, None, None
    skipped, warned = [], []
    for t in range(steps):
        opt.zero_grad()
        _loss(model, xs[t, rows], ys[t, rows]).backward()
        if t == NAN_STEP:
            grad = params[NAN_PARAM].grad
            if rank == NAN_RANK:
                with torch.no_grad():
                    grad.to_local()[0, 0] = float("nan")
            # where it landed in the full gradient (a collective: every rank calls it)
            nan_index = torch.nonzero(torch.isnan(grad.full_tensor())).tolist()
            before = [p.detach().to_local().clone() for p in params]
        local_norms.append(_local_norm(params))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            norm = opt.step()
        warned += [(t, str(w.message)) for w in caught if w.category is RuntimeWarning]
        skipped.append(opt.last_step_skipped)
        norms.append(float(norm).hex())
        if t == NAN_STEP:
            local_changed = [not torch.equal(b, p.detach().to_local()) if b.numel() else None
                             for b, p in zip(before, params)]
            after_nan = [_full(p) for p in params]
    return dict(norms=norms, local_norms=local_norms, nan_index=nan_index,
                local_changed=local_changed, after_nan=after_nan, skipped=skipped, warned=warned,
                final=[_full(p) for p in params], last=float(opt.last_grad_norm).hex(),
                monitor=dict(norms=[float(n).hex() for n in monitor.norms],
                             clipped=monitor.clipped.tolist(),
                             nonfinite=monitor.nonfinite_count))


@pytest.mark.slow
def test_fsdp2_clip_and_nonfinite_decisions_are_global(launches):
    world, thr = 2, CLIP_KW["max_grad_norm"]
    per_rank = _results(launches, world, "fsdp2_nan")
    r0 = per_rank[0]
    # every rank saw the same global norm at every step, to the bit, and recorded the same
    for rank, res in enumerate(per_rank[1:], 1):
        for key in ("norms", "last", "monitor", "nan_index", "skipped"):
            assert res[key] == r0[key], f"rank {rank}'s {key} differs from rank 0's"
    assert r0["last"] == r0["norms"][-1]
    assert r0["monitor"]["norms"] == r0["norms"]
    # the NaN is in rank 1's shard only, yet every rank's step() returned a NaN norm
    assert len(r0["nan_index"]) == 1
    row, col = r0["nan_index"][0]
    assert col == 0 and row == math.ceil(SIZES[1] / world) * NAN_RANK
    norms = [float.fromhex(h) for h in r0["norms"]]
    assert all(math.isfinite(n) for n in norms[:NAN_STEP]) and math.isnan(norms[NAN_STEP])
    assert math.isfinite(r0["local_norms"][NAN_STEP]) and r0["local_norms"][NAN_STEP] > thr
    assert math.isnan(per_rank[NAN_RANK]["local_norms"][NAN_STEP])
    # a step the global rule clips though no rank's own shard is above the threshold
    assert any(norms[t] > thr and all(res["local_norms"][t] <= thr for res in per_rank)
               for t in range(NAN_STEP)), (norms, [res["local_norms"] for res in per_rank])

    monitor = fastopt.GradNormMonitor(threshold=thr)
    history, returned = _train_unsharded(fot.AdamW, CLIP_KW, STEPS, monitor=monitor,
                                         nan_at=(NAN_STEP, NAN_PARAM, (row, col)))
    # the unsharded run made the same decisions: clipped or not, non-finite or not
    clipped = monitor.clipped.tolist()
    assert r0["monitor"]["clipped"] == clipped
    assert r0["monitor"]["nonfinite"] == monitor.nonfinite_count >= 1
    assert 0 < sum(clipped[:NAN_STEP]) < NAN_STEP, clipped  # some steps clipped, not all
    assert min(abs(n - thr) for n in returned if math.isfinite(n)) > 1e-3  # no near-ties
    for t, (got, n) in enumerate(zip(norms, returned)):
        assert (math.isnan(got) and math.isnan(n)) or math.isclose(got, n, rel_tol=1e-5), \
            (t, got, n)
    # the params on every rank, just after the NaN step and at the end, are the unsharded
    # run's (NaN where it has NaN): whatever the non-finite policy, it acted the same way on the
    # rank whose shard was finite as on the rank that held the NaN
    for rank, res in enumerate(per_rank):
        for when, got, want in (("after the NaN step", res["after_nan"], history[NAN_STEP]),
                                ("at the end", res["final"], history[-1])):
            for i, (a, b) in enumerate(zip(got, want)):
                torch.testing.assert_close(a, b, **F32, equal_nan=True,
                                           msg=lambda m: f"rank {rank}, param {i} {when}: {m}")
    # the default policy with max_grad_norm (nonfinite=None: "skip") skipped that step, and
    # only that one, on every rank, each rank saying so, and the unsharded run skipped it too
    assert r0["skipped"] == [t == NAN_STEP for t in range(STEPS)]
    assert all(torch.equal(a, b) for a, b in zip(history[NAN_STEP], history[NAN_STEP - 1]))
    for rank, res in enumerate(per_rank):
        assert [t for t, _ in res["warned"]] == [NAN_STEP], (rank, res["warned"])
        assert "skipped a step" in res["warned"][0][1]
        assert not any(res["local_changed"]), f"rank {rank} wrote during the skipped step"
        assert all(torch.isfinite(p).all() for p in res["final"])
        assert any(not torch.equal(a, b) for a, b in zip(res["final"], res["after_nan"]))


# ------------------------------------------------------------------------------------------------
# fastopt.global_norm over a torch.distributed group
# ------------------------------------------------------------------------------------------------
def _rank_arrays(world):
    rng = np.random.default_rng(7 + world)
    out = []
    for r in range(world):
        arrays = [rng.standard_normal(rng.integers(1, 2000)).astype(np.float32),
                  (rng.standard_normal((rng.integers(1, 40), 3)) * 10.0 ** r),
                  rng.standard_normal(17).astype(np.float32) * 1e-3]
        if r == world - 1:
            arrays.append(np.zeros(0, np.float32))  # an empty shard, as FSDP2 makes
        out.append(arrays)
    return out


def _global_norm_ranks(rank, world):
    n = fastopt.global_norm(_rank_arrays(world)[rank], group=dist.group.WORLD)
    return type(n).__name__, float(n).hex()


def _global_norm_bad_input(rank, world):
    arrays = [np.ones(5, np.float32)]
    if rank == 1:
        arrays = [np.ones(5, np.int64)]  # refused on this rank only
    try:
        fastopt.global_norm(arrays, group=dist.group.WORLD)
    except (TypeError, ValueError) as e:
        return type(e).__name__, str(e)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_global_norm_over_a_group(launches, world):
    per_rank_arrays = _rank_arrays(world)
    got = _results(launches, world, "global_norm")
    assert all(kind == "float" for kind, _ in got), got
    assert len({h for _, h in got}) == 1, f"the ranks' norms differ in their bits: {got}"
    norm = float.fromhex(got[0][1])
    partial = [math.fsum(float(v) ** 2 for a in arrays for v in a.astype(np.float64).ravel())
               for arrays in per_rank_arrays]
    total = 0.0
    for s in partial:  # in rank order
        total += s
    assert math.isclose(norm, math.sqrt(total), rel_tol=1e-15, abs_tol=0), (norm, total)
    everything = [a for arrays in per_rank_arrays for a in arrays]
    assert math.isclose(norm, fastopt.global_norm(everything), rel_tol=1e-15)


@pytest.mark.slow
def test_global_norm_bad_input_on_one_rank_fails_every_rank():
    got = run_ranks(_global_norm_bad_input, 2, timeout=60)
    assert all(g is not None for g in got), f"a rank returned a norm: {got}"
    assert got[1][0] == "TypeError" or "int64" in got[1][1] or "dtype" in got[1][1], got[1]
    assert "rank" in got[0][1], got[0]  # rank 0's error points at the other rank


# ------------------------------------------------------------------------------------------------
# DDP and ZeroRedundancyOptimizer: fastopt.torch.AdamW follows torch.optim.AdamW
# ------------------------------------------------------------------------------------------------
DDP_STEPS = 10


def _ddp_train(rank, world):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    steps = DDP_STEPS
    xs, ys = _data(steps)
    rows = _rows(rank, world)
    makers = {
        "ddp-fastopt": lambda ps: fot.AdamW(ps, lr=1e-2, weight_decay=0.01),
        "ddp-torch": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01),
        "zero-fastopt": lambda ps: ZeroRedundancyOptimizer(ps, optimizer_class=fot.AdamW,
                                                           lr=1e-2),
        "zero-torch": lambda ps: ZeroRedundancyOptimizer(ps, optimizer_class=torch.optim.AdamW,
                                                         lr=1e-2),
    }
    out = {}
    for name, make in makers.items():
        try:
            model = DDP(_mlp())
            opt = make(model.parameters())
            for t in range(steps):
                opt.zero_grad()
                _loss(model, xs[t, rows], ys[t, rows]).backward()
                opt.step()
            local = getattr(opt, "optim", opt)  # ZeRO's own optimizer, on this rank's shard
            out[name] = ("ok", [p.detach().clone() for p in model.module.parameters()],
                         f"{type(local).__module__}.{type(local).__name__}")
        except Exception:  # noqa: BLE001
            out[name] = ("error", traceback.format_exc())
    return out


def _check_pair(per_rank, mine, theirs, reference):
    for rank, res in enumerate(per_rank):
        for name in (mine, theirs):
            assert res[name][0] == "ok", f"{name} on rank {rank} raised:\n{res[name][1]}"
        assert res[mine][2] == "fastopt.torch.AdamW", res[mine][2]
        assert res[theirs][2] == "torch.optim.adamw.AdamW", res[theirs][2]
        for i, (a, b, c) in enumerate(zip(res[mine][1], res[theirs][1], reference)):
            torch.testing.assert_close(a, b, **F32, msg=lambda m: f"rank {rank}, param {i}: {m}")
            torch.testing.assert_close(a, c, **F32,
                                       msg=lambda m: f"rank {rank}, param {i} vs unsharded: {m}")
    for a, b in zip(per_rank[0][mine][1], per_rank[1][mine][1]):
        assert torch.equal(a, b), "the replicas differ between ranks"


@pytest.mark.slow
def test_ddp_fastopt_adamw_follows_torch(launches):
    reference = _train_unsharded(fot.AdamW, dict(lr=1e-2, weight_decay=0.01), DDP_STEPS)[0][-1]
    _check_pair(_results(launches, 2, "ddp"), "ddp-fastopt", "ddp-torch", reference)


@pytest.mark.slow
def test_zero_redundancy_optimizer_with_fastopt_adamw(launches):
    reference = _train_unsharded(torch.optim.AdamW, dict(lr=1e-2), DDP_STEPS)[0][-1]
    _check_pair(_results(launches, 2, "ddp"), "zero-fastopt", "zero-torch", reference)


# ------------------------------------------------------------------------------------------------
# Bad DTensor param groups: refused before anything is written
# ------------------------------------------------------------------------------------------------
def _attempt(params, groups=None):
    """Build an AdamW on ``params`` (in param ``groups`` of these sizes, if given) and step it;
    the ValueError's text (None if none), and whether anything (params, state) was written."""
    before = [p.detach().to_local().clone() if hasattr(p, "to_local") else p.detach().clone()
              for p in params]
    opt, msg = None, None
    arg = params if groups is None else \
        [{"params": params[sum(groups[:i]):sum(groups[:i + 1])]} for i in range(len(groups))]
    try:
        opt = fot.AdamW(arg, lr=1e-2, max_grad_norm=1.0)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    except ValueError as e:
        msg = str(e)
    after = [p.detach().to_local() if hasattr(p, "to_local") else p.detach() for p in params]
    written = any(not torch.equal(a, b) for a, b in zip(before, after)) or \
        (opt is not None and len(opt.state) > 0)
    return msg, written


def _bad_groups(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world, 1), mesh_dim_names=("dp", "tp"))
    dp, tp = mesh["dp"], mesh["tp"]  # two meshes: both ranks, and this rank alone
    torch.manual_seed(0)

    def on(m, *shape, placement=None):
        return nn.Parameter(distribute_tensor(torch.randn(*shape), m, [placement or Shard(0)]))

    return dict(
        mixed=_attempt([on(dp, 5, 3), on(dp, 7), nn.Parameter(torch.randn(2, 2))]),
        two_meshes=_attempt([on(dp, 5, 3), on(dp, 7), on(tp, 4, placement=Replicate())]),
        # each group is fine on its own; the global norm over both is not
        mixed_groups=_attempt([on(dp, 5, 3), on(dp, 7), nn.Parameter(torch.randn(2, 2))],
                              groups=(2, 1)),
        ok=_attempt([on(dp, 5, 3), on(dp, 7)]),
    )


@pytest.mark.slow
def test_bad_dtensor_param_groups_are_refused(launches):
    for rank, res in enumerate(_results(launches, 2, "bad_groups")):
        msg, written = res["mixed"]
        assert msg is not None, f"rank {rank}: a group of DTensor and plain params was accepted"
        assert "param" in msg.lower() and re.search(r"\b2\b", msg), msg  # names param 2
        assert not written, f"rank {rank}: something was written before the refusal"
        msg, written = res["two_meshes"]
        assert msg is not None, f"rank {rank}: params on two meshes in one group were accepted"
        assert "mesh" in msg.lower(), msg
        assert not written, f"rank {rank}: something was written before the refusal"
        msg, written = res["mixed_groups"]
        assert msg is not None and "DTensor and plain-tensor params" in str(msg), (rank, msg)
        assert not written, f"rank {rank}: something was written before the refusal"
        msg, written = res["ok"]  # the control: one mesh, all DTensors, steps
        assert msg is None and written, (rank, msg)


# ------------------------------------------------------------------------------------------------
# A step's cached plan against DTensors changed under it
# ------------------------------------------------------------------------------------------------
def _plan_changes(rank, world):
    """After steps that built the optimizer's plan (and its per-step fast checks): a grad of
    another layout is refused, a grad the fast checks do not take (non-contiguous shard) is
    read through the per-tensor path, and a state buffer swapped for another is the one used."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate

    mesh = init_device_mesh("cpu", (world,))
    model = _shard_fsdp2(_mlp(), mesh)
    params = list(model.parameters())
    opt = fot.AdamW(params, lr=1e-2, betas=(0.5, 0.9), max_grad_norm=100.0)
    gen = torch.Generator().manual_seed(rank)

    def set_grads():
        for p in params:
            p.grad = DTensor.from_local(torch.randn(p.to_local().shape, generator=gen),
                                        mesh, p.placements, shape=p.shape, stride=p.stride())
    for _ in range(2):
        set_grads()
        opt.step()
    out = {}
    # 1. a grad replicated where its param is sharded: refused on every rank, nothing written
    set_grads()
    w = params[0]
    w.grad = DTensor.from_local(torch.zeros(w.shape), mesh, [Replicate()], run_check=False)
    before = [p.detach().to_local().clone() for p in params]
    try:
        opt.step()
        out["placement"] = None
    except ValueError as e:
        out["placement"] = str(e)
    out["placement_wrote"] = any(not torch.equal(b, p.detach().to_local())
                                 for b, p in zip(before, params))
    # 2. a non-contiguous local grad shard: read through a copy, the same step as a contiguous
    set_grads()
    w = next(p for p in params if p.ndim == 2 and p.to_local().shape[0] > 1)
    g = w.grad.to_local().clone()
    w.grad = DTensor.from_local(g.t().contiguous().t(), mesh, w.placements, shape=w.shape,
                                stride=w.stride(), run_check=False)
    assert not w.grad.to_local().is_contiguous()
    m0 = opt.state[w]["exp_avg"].to_local().clone()
    opt.step()
    out["noncontig"] = torch.equal(opt.state[w]["exp_avg"].to_local(), 0.5 * m0 + 0.5 * g)
    # 3. a state buffer replaced by another DTensor of the same layout: the step reads it
    set_grads()
    st = opt.state[w]
    st["exp_avg"] = DTensor.from_local(torch.zeros(w.to_local().shape), mesh, w.placements,
                                       shape=w.shape, stride=w.stride())
    g = w.grad.to_local().clone()
    opt.step()
    out["swapped"] = torch.equal(opt.state[w]["exp_avg"].to_local(), 0.5 * g)
    return out


@pytest.mark.slow
def test_fsdp2_plan_notices_changed_grads_and_state(launches):
    for rank, res in enumerate(_results(launches, 2, "plan_changes")):
        assert res["placement"] is not None, f"rank {rank}: a replicated grad was accepted"
        assert "param 0" in res["placement"] and "placed (R)" in res["placement"], res
        assert not res["placement_wrote"], f"rank {rank} wrote before refusing"
        assert res["noncontig"], f"rank {rank}: the non-contiguous grad was misread"
        assert res["swapped"], f"rank {rank}: the step did not read the swapped-in exp_avg"


# ------------------------------------------------------------------------------------------------
# The launches: one per world size, running every check above
# ------------------------------------------------------------------------------------------------
CHECKS = {"fsdp2": _fsdp2_train, "fsdp2_nan": _fsdp2_nan, "global_norm": _global_norm_ranks,
          "ddp": _ddp_train, "bad_groups": _bad_groups, "plan_changes": _plan_changes,
          "hsdp": _hsdp_train, "fsdp2_sr": _fsdp2_sr}
SUITES = {2: ("fsdp2", "fsdp2_nan", "global_norm", "ddp", "bad_groups", "plan_changes", "hsdp",
              "fsdp2_sr"),
          3: ("fsdp2", "global_norm"), 4: ("hsdp",)}
SUITE_TIMEOUT_S = 240  # a few seconds of work, and up to ~30 s of imports on a busy machine


def _suite(rank, world, names):
    """Run the named checks in order; each one's ("ok", value) or ("error", traceback). A check
    that fails on every rank (a refusal) leaves no collective half-done and the next one runs;
    one that fails on some ranks only leaves the others waiting, and the launch times out."""
    out = {}
    for name in names:
        try:
            out[name] = ("ok", CHECKS[name](rank, world))
        except Exception:  # noqa: BLE001
            out[name] = ("error", traceback.format_exc())
    return out


@pytest.fixture(scope="module")
def launches():
    return {}


def _results(launches, world, check):
    """``check``'s value on every rank of the ``world``-rank launch (started on first use)."""
    if world not in launches:
        try:
            launches[world] = run_ranks(_suite, world, SUITES[world], timeout=SUITE_TIMEOUT_S)
        except RanksFailed as e:
            launches[world] = str(e)
    got = launches[world]
    if isinstance(got, str):
        raise RanksFailed(got)
    per_rank = []
    for rank, res in enumerate(got):
        status, value = res[check]
        if status != "ok":
            raise AssertionError(f"{check} raised on rank {rank} of {world}:\n{value}")
        per_rank.append(value)
    return per_rank


# ------------------------------------------------------------------------------------------------
# bench/bench_fsdp.py runs end to end (figures are not asserted: they are measured, not tested)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_fsdp_runs_every_contender(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import fastopt_env, fastopt_parent

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "fsdp.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "bench", "bench_fsdp.py"), "--quick", "--repeats",
         "2", "--warmup", "1", "--timeout", "240", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=fastopt_env(), cwd=fastopt_parent())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(out.read_text())
    assert got["world"] == 2 and got["tensors"] == 387
    rows = {r["contender"]: r for r in got["rows"]}
    assert len(rows) == 7 and all(r["status"] == "ok" for r in rows.values()), rows
    for r in rows.values():
        assert r["ms"] > 0 and len(r["step_ms"]) == 2 and len(r["rank_median_ms"]) == 2
    ceiling = rows["ceiling (stream 4r/3w)"]["ms"]
    assert got["ceiling_ms"] == ceiling and got["clip_ratio_bound"] == pytest.approx(
        rows["torch AdamW fused + clip"]["ms"] / (ceiling * 32 / 28))
    assert set(got["targets"]) == {"clip_speedup", "pct_ceiling"}
    for line in ("fastopt.torch.AdamW with clipping >= 3x", "fastopt step >= 80 % of the ceiling",
                 "attainable at best with clipping"):
        assert line in proc.stdout, proc.stdout
